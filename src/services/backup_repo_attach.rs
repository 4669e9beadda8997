//! Finding the backup repository (a directory, or `vapor-backups` in a
//! libvirt pool's target) and, the first time it is found, rolling back
//! what a dead vapord left of backups it was making: libvirt backup jobs
//! still writing into the repository are aborted, the checkpoints made for
//! the half-written backups deleted (each keeps a dirty bitmap in every
//! disk of its VM for nothing), and the half-written backups removed.
//! Only what provably belongs to this repository is touched: another
//! vapord's (or a person's) backups and checkpoints stay.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{blocking, BackupService, CHECKPOINT_PREFIX};
use crate::config::BackupLocation;
use crate::libvirt::storage_records::PoolRecord;
use crate::libvirt::xml::Element;
use crate::services::backup_repo::Repository;
use crate::{Error, Result};

/// The directory in a pool's target that holds the repository.
pub const POOL_SUBDIR: &str = "vapor-backups";

/// Where the repository is in `pool`, or why it cannot be there. Pure.
pub fn pool_root(pool: &PoolRecord) -> Result<PathBuf> {
    let name = &pool.name;
    if !matches!(pool.kind.as_str(), "dir" | "fs" | "netfs") {
        return Err(Error::Unavailable(format!(
            "backup_pool '{name}' is a {} pool; the repository needs a directory \
             (a dir, fs or netfs pool)",
            pool.kind
        )));
    }
    if pool.state != "running" {
        return Err(Error::Unavailable(format!(
            "backup_pool '{name}' is {}; start it (and mark it autostart)",
            pool.state
        )));
    }
    let target = Path::new(&pool.target_path);
    if !target.is_absolute() {
        return Err(Error::Unavailable(format!(
            "backup_pool '{name}' has no target directory"
        )));
    }
    Ok(target.join(POOL_SUBDIR))
}

/// The files a backup job writes (its `<target file=…>`s). Pure.
pub fn backup_target_files(backup_xml: &str) -> Vec<String> {
    let Ok(doc) = Element::parse(backup_xml) else {
        return Vec::new();
    };
    doc.child("disks")
        .into_iter()
        .flat_map(|d| d.children_named("disk"))
        .filter_map(|d| d.child("target")?.attr("file"))
        .map(str::to_owned)
        .collect()
}

/// The checkpoints of a VM that vapord made for the backups left half
/// written (`partial`: their ids). Pure.
pub fn orphan_checkpoints(names: &[String], partial: &HashSet<String>) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            n.strip_prefix(CHECKPOINT_PREFIX)
                .is_some_and(|id| partial.contains(id))
        })
        .cloned()
        .collect()
}

impl BackupService {
    /// The repository, found now if it was not yet (a pool started since).
    pub(super) async fn repository(&self) -> Result<Repository> {
        match self.repo() {
            Ok(r) => Ok(r),
            Err(_) => self.attach().await,
        }
    }

    /// Find the repository (if not yet found); the first time, roll back
    /// what a dead vapord left and read the backups. Logged, not fatal:
    /// until it is found every backup call says why it cannot run.
    pub async fn attach(&self) -> Result<Repository> {
        let _one = self.attaching.lock().await;
        if let Ok(r) = self.repo() {
            return Ok(r);
        }
        let found = self.find_repository().await;
        match found {
            Ok(repo) => {
                self.recover(&repo).await;
                *self.repo.write().unwrap_or_else(|e| e.into_inner()) = Ok(repo.clone());
                log::info!("backup repository: {}", repo.root().display());
                self.resync();
                Ok(repo)
            }
            Err(e) => {
                log::warn!("backups are not available: {e}");
                *self.repo.write().unwrap_or_else(|e| e.into_inner()) = Err(e.to_string());
                Err(e)
            }
        }
    }

    async fn find_repository(&self) -> Result<Repository> {
        let (root, strict) = match &self.location {
            BackupLocation::Dir(d) => (d.clone(), false),
            BackupLocation::Pool(name) => {
                let n = name.clone();
                let pool = self
                    .hv()
                    .session(move |s| s.pool_by_name(&n))
                    .await
                    .map_err(|e| match e {
                        Error::NotFound(_) => Error::Unavailable(format!(
                            "backup_pool '{name}' does not exist on this host"
                        )),
                        e => e,
                    })?;
                (pool_root(&pool)?, true)
            }
        };
        blocking(move || Repository::open(&root, strict)).await
    }

    /// Roll back what a dead vapord left in `repo` (see the module).
    async fn recover(&self, repo: &Repository) {
        let root = repo.root().to_owned();
        let partial: HashSet<String> = repo.partial_ids().into_iter().collect();
        let r = self
            .hv()
            .session(move |s| {
                for d in s.domains()? {
                    let name = d.name().unwrap_or_default();
                    if let Some(xml) = d.running_backup_xml() {
                        if backup_target_files(&xml)
                            .iter()
                            .any(|f| Path::new(f).starts_with(&root))
                        {
                            log::warn!("aborting a backup of {name} a dead vapord had started");
                            let _ = d.abort_job();
                            // Checkpoints cannot be deleted while it winds down.
                            for _ in 0..50 {
                                if !matches!(d.job_progress(), Ok(Some(_))) {
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(200));
                            }
                        }
                    }
                    let active = d.is_active().unwrap_or(true);
                    for c in orphan_checkpoints(&d.checkpoints().unwrap_or_default(), &partial) {
                        log::warn!(
                            "deleting the checkpoint {c} of {name}: its backup never completed"
                        );
                        // A stopped VM's bitmaps libvirt may not edit: then
                        // the record alone goes (as Backup.Delete does).
                        if let Err(e) = d.delete_checkpoint(&c) {
                            if active {
                                log::warn!("cannot delete the checkpoint {c} of {name}: {e}");
                            } else {
                                let _ = d.delete_checkpoint_metadata(&c);
                            }
                        }
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            log::warn!("cannot look for what a dead vapord left of its backups: {e}");
        }
        for id in repo.sweep_partial() {
            log::warn!("removed the unfinished backup {id} (vapord stopped while making it)");
        }
    }
}
