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
use std::sync::atomic::Ordering;
use std::sync::Arc;

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

/// The files a backup job writes (its `<target file=…>`s, and in pull
/// mode its `<scratch file=…>`s). Pure.
pub fn backup_target_files(backup_xml: &str) -> Vec<String> {
    let Ok(doc) = Element::parse(backup_xml) else {
        return Vec::new();
    };
    doc.child("disks")
        .into_iter()
        .flat_map(|d| d.children_named("disk"))
        .flat_map(|d| ["target", "scratch"].map(|k| d.child(k).and_then(|e| e.attr("file"))))
        .flatten()
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

    fn needs_attach(&self) -> bool {
        self.repo().is_err() || self.recovery_pending.load(Ordering::SeqCst)
    }

    /// Look for the repository again whenever libvirt (re)connects or a
    /// pool changes, while it is missing or its recovery is unfinished.
    pub fn follow(self: &Arc<Self>) {
        let this = self.clone();
        let mut connected = self.model.connected();
        let mut pools = self.model.pools_touched();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = connected.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if !*connected.borrow() {
                            continue;
                        }
                    }
                    r = pools.recv() => {
                        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            return;
                        }
                    }
                }
                if this.needs_attach() {
                    let _ = this.attach().await;
                }
            }
        });
    }

    /// Find the repository (if not yet found) and, until it has fully
    /// succeeded once, roll back what a dead vapord left. Logged, not
    /// fatal: until it is found every backup call says why it cannot run.
    pub async fn attach(&self) -> Result<Repository> {
        let _one = self.attaching.lock().await;
        let repo = match self.repo() {
            Ok(r) => r,
            Err(_) => match self.find_repository().await {
                Ok(repo) => {
                    *self.repo.write().unwrap_or_else(|e| e.into_inner()) = Ok(repo.clone());
                    self.storage
                        .protect_backups(std::fs::canonicalize(repo.root()).ok(), None);
                    log::info!("backup repository: {}", repo.root().display());
                    repo
                }
                Err(e) => {
                    log::warn!("backups are not available: {e}");
                    *self.repo.write().unwrap_or_else(|e| e.into_inner()) = Err(e.to_string());
                    return Err(e);
                }
            },
        };
        if self.recovery_pending.load(Ordering::SeqCst) && self.recover(&repo).await {
            self.recovery_pending.store(false, Ordering::SeqCst);
        }
        self.resync();
        Ok(repo)
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

    /// Roll back what a dead vapord left in `repo` (see the module), but
    /// never a backup this vapord is making. A half-written backup goes
    /// only once its job is over and its checkpoint gone; whether all of
    /// it could be done (else it is tried again at the next connect).
    async fn recover(&self, repo: &Repository) -> bool {
        let root = repo.root().to_owned();
        let making = self
            .making
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let partial: HashSet<String> = repo
            .partial_ids()
            .into_iter()
            .filter(|id| !making.contains(id))
            .collect();
        let ours: Vec<PathBuf> = making.iter().map(|id| repo.partial_dir(id)).collect();
        let p = partial.clone();
        let r = self
            .hv()
            .session(move |s| {
                let mut unclean = HashSet::new();
                for d in s.domains()? {
                    let name = d.name().unwrap_or_default();
                    if let Some(xml) = d.running_backup_xml() {
                        let files = backup_target_files(&xml);
                        let stray = files.iter().any(|f| {
                            let f = Path::new(f);
                            f.starts_with(&root) && !ours.iter().any(|o| f.starts_with(o))
                        });
                        if stray {
                            log::warn!("aborting a backup of {name} a dead vapord had started");
                            let _ = d.abort_job();
                            // Checkpoints cannot be deleted while it winds down.
                            for _ in 0..150 {
                                if d.running_backup_xml().is_none() {
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(200));
                            }
                        }
                    }
                    let active = d.is_active().unwrap_or(true);
                    for c in orphan_checkpoints(&d.checkpoints()?, &p) {
                        log::warn!(
                            "deleting the checkpoint {c} of {name}: its backup never completed"
                        );
                        // A stopped VM's bitmaps libvirt may not edit: then
                        // the record alone goes (as Backup.Delete does).
                        let gone = d.delete_checkpoint(&c).or_else(|e| {
                            if active {
                                Err(e)
                            } else {
                                d.delete_checkpoint_metadata(&c)
                            }
                        });
                        if let Err(e) = gone {
                            log::warn!("cannot delete the checkpoint {c} of {name} yet: {e}");
                            if let Some(id) = c.strip_prefix(CHECKPOINT_PREFIX) {
                                unclean.insert(id.to_owned());
                            }
                        }
                    }
                }
                Ok(unclean)
            })
            .await;
        let unclean = match r {
            Ok(u) => u,
            Err(e) => {
                log::warn!("cannot look for what a dead vapord left of its backups yet: {e}");
                return false;
            }
        };
        for id in partial.iter().filter(|id| !unclean.contains(*id)) {
            repo.discard(&repo.partial_dir(id));
            log::warn!("removed the unfinished backup {id} (vapord stopped while making it)");
        }
        unclean.is_empty()
    }
}
