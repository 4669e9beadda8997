//! Restoring a backup over the VM it is of (`Restore` with `replace`): the
//! VM must be shut off and have no snapshots; its disks are restored into
//! new images in the target pool, its definition replaced by the backed-up
//! one (same name, UUID and MAC addresses), its checkpoints forgotten (they
//! describe the old images, so the next backup is full), and the images
//! vapord had made for it and that the restore replaced are deleted, as is
//! its old UEFI variables file.

use std::path::Path;
use std::sync::Arc;

use super::{
    copy_from_backup, nvram_for, pool_dir, restored_definition, BackupService, Restored, NVRAM_DIR,
};
use crate::libvirt::xml::{domain_disks, DiskSource, Element};
use crate::libvirt::Session;
use crate::progress::Progress;
use crate::services::backup_repo::{self as repo, BackupRecord};
use crate::services::rollback;
use crate::{Error, Result};

impl BackupService {
    /// Restore backup `id` over its VM, writing the disks into
    /// `target_pool`; the VM's UUID.
    pub async fn restore_replace(
        self: &Arc<Self>,
        id: &str,
        target_pool: String,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let top = self.existing(id)?;
        let uuid = top.manifest.vm_uuid.clone();
        let _turn = self.turn(&uuid).await;
        let top = self.existing(id)?;
        // Said early; checked again under the VM's lock once the chain
        // is verified (the VM is not held while that runs).
        match self.model.get(&uuid) {
            None => {
                return Err(Error::NotFound(format!(
                    "replace: the VM '{}' no longer exists; restore it with new_name",
                    top.manifest.vm_name
                )))
            }
            Some(r) if r.state.is_active() => {
                return Err(Error::InvalidState(format!(
                    "replace: the VM '{}' must be shut off",
                    r.name
                )))
            }
            Some(_) => {}
        }
        let tp = target_pool.clone();
        self.hv()
            .session(move |s| pool_dir(s, &tp).map(|_| ()))
            .await?;
        let (done, total) = self.verify_chain(id, &progress).await?;
        let _locked = self.model.lock_vm(&uuid).await;
        progress.update("restoring", done, total);
        let dir = self.repository().await?.dir(top.id());
        let intents = self.intents.clone();
        let rec = (*top).clone();
        let p = progress.clone();
        let (pool, replaced) = self
            .hv()
            .session(move |s| {
                let mut intent =
                    intents.begin("backup-restore-replace", &rec.manifest.vm_name, uid)?;
                let r = replace_blocking(s, &rec, &dir, &target_pool, uid, &mut intent, &*p);
                rollback::conclude(s, intent, r, "the restore")
            })
            .await?;
        // The images vapord had made for the VM that the restore replaced.
        let gone = self
            .hv()
            .session(move |s| {
                let mut left = Vec::new();
                for p in replaced {
                    if let Err(e) = s.volume_at(&p).and_then(|v| v.delete()) {
                        left.push(format!("{p}: {e}"));
                    }
                }
                Ok(left)
            })
            .await?;
        for problem in gone {
            log::warn!(vm_uuid = uuid.as_str(); "a replaced image stays: {problem}");
        }
        let _ = self.hv().refresh_pool(&pool).await;
        let _ = self.model.refresh_domain(&uuid).await;
        progress.update("restored", total, total);
        Ok(uuid)
    }
}

/// (the target pool's UUID, the VM's own images the restore replaced).
fn replace_blocking(
    s: &Session<'_>,
    rec: &BackupRecord,
    dir: &Path,
    target_pool: &str,
    uid: u32,
    intent: &mut crate::intent::Intent,
    progress: &dyn Progress,
) -> Result<(String, Vec<String>)> {
    let d = s.domain(&rec.manifest.vm_uuid)?;
    if d.is_active()? {
        return Err(Error::InvalidState(
            "replace: the VM must be shut off".into(),
        ));
    }
    if !d.snapshots()?.is_empty() {
        return Err(Error::InvalidState(
            "replace: the VM has snapshots, which describe its current images; delete them \
             first (or restore with new_name)"
                .into(),
        ));
    }
    let current = d.editable_definition()?;
    let name = d.name()?;
    let md = d.vapor_metadata();
    let (target_dir, pool_uuid) = pool_dir(s, target_pool)?;
    let tag = rec.id().to_owned();
    let file = |t: &str| format!("{name}-{t}-{tag}.qcow2");
    let (dir_text, (made, files)) = copy_from_backup(
        s,
        rec,
        dir,
        (&target_dir, &pool_uuid, target_pool),
        &file,
        intent,
        progress,
    )?;
    let xml = std::fs::read_to_string(dir.join(repo::DOMAIN_XML))
        .map_err(|e| Error::Failed(format!("cannot read the backed-up definition: {e}")))?;
    let mut doc = Element::parse(&xml)?;
    // The files the restored disks replace; those vapord made go after.
    let replaced: Vec<String> = domain_disks(&current)
        .into_iter()
        .filter(|disk| {
            disk.target
                .as_ref()
                .is_some_and(|t| files.iter().any(|(ft, _)| ft == t))
        })
        .filter_map(|disk| match disk.source {
            DiskSource::Path(p) => Some(p),
            _ => None,
        })
        .filter(|p| md.owned_volumes.contains(p))
        .collect();
    let mut owned = made;
    owned.extend(
        md.owned_volumes
            .iter()
            .filter(|p| !replaced.contains(p))
            .cloned(),
    );
    let nvram = nvram_for(rec, &dir_text, &format!("{name}-{tag}"))?;
    restored_definition(
        &mut doc,
        &Restored {
            name: &name,
            uuid: &rec.manifest.vm_uuid,
            files: &files,
            nvram: nvram.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
            uid: md.created_by_uid.unwrap_or(uid),
            owned: &owned,
            new_identity: false,
        },
    );
    // The checkpoints describe the old images: forgotten, so the next
    // backup is a full one.
    for c in d.checkpoints()? {
        if let Err(e) = d.delete_checkpoint_metadata(&c) {
            log::warn!("cannot forget checkpoint {c}: {e}");
        }
    }
    s.define_domain(&doc.to_xml())
        .map_err(|e| e.context("cannot redefine the VM from its backup"))?;
    // The UEFI variables file the old definition used goes too (libvirt
    // writes the restored one at the first start); only a file libvirt
    // keeps, never one the definition pointed elsewhere.
    if let Some(old) = crate::libvirt::xml::nvram_path(&current) {
        let new = nvram.as_ref().map(|(p, _)| p.as_str());
        let libvirts = Path::new(&old).parent() == Some(Path::new(NVRAM_DIR));
        let plain = Path::new(&old)
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_file());
        let canonical = std::fs::canonicalize(&old)
            .map_or_else(|_| old.clone(), |p| p.to_string_lossy().into_owned());
        let others =
            crate::services::storage_ownership::paths_in_use(s, Some(&rec.manifest.vm_uuid));
        let unused = match others {
            Ok(o) => !o.contains_key(&canonical) && !o.contains_key(&old),
            Err(e) => {
                log::warn!("keeping the replaced UEFI variables {old}: {e}");
                false
            }
        };
        if libvirts && plain && unused && new != Some(old.as_str()) {
            if let Err(e) = std::fs::remove_file(&old) {
                log::warn!("cannot remove the replaced UEFI variables {old}: {e}");
            }
        }
    }
    Ok((pool_uuid, replaced))
}
