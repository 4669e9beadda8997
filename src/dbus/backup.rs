//! `org.vapor.Virtualization.Backup`: one object per complete backup in
//! vapord's repository (`/org/vapor/Virtualization/backup/<id>`), whether
//! its VM still exists or not. Owns the backup kind ([`Backups`]: its
//! property table and path) and the methods of one backup: Restore (polkit
//! `backup-restore`, and `vm-create` for the pool written to), Verify
//! (`read`) and Delete (`backup-delete`), each with the VM's details. The
//! VM's own `Backup` method is in `vm_backup.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{interface, OwnedObjectPath, OwnedVariant, Variant};

use super::object::{fixed, object_path, prop, shown, text, Kind, Prop, Shown};
use super::options;
use super::polkit::{Action, Authorizer, Target};
use super::{vm_path, Error, ROOT_PATH};
use crate::progress::Progress;
use crate::services::backup::{BackupService, RestoreRequest};
use crate::services::backup_repo::BackupRecord;

/// The object path of a backup.
pub fn backup_path(id: &str) -> String {
    format!("{ROOT_PATH}/backup/{id}")
}

impl Target for BackupRecord {
    fn describe(&self) -> String {
        format!(
            "the backup {} of the virtual machine '{}'",
            self.id(),
            self.manifest.vm_name
        )
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("vm.name", self.manifest.vm_name.clone()),
            ("vm.uuid", self.manifest.vm_uuid.clone()),
            ("backup.id", self.id().to_owned()),
        ]
    }
}

/// What every backup object shares.
pub struct BackupContext {
    pub backups: Arc<BackupService>,
    pub auth: Arc<Authorizer>,
    /// The VMs, to export a restored one at once (set once both exist).
    pub vms: std::sync::OnceLock<std::sync::Weak<super::vm::VmContext>>,
}

/// The backup kind (its record: [`BackupRecord`]).
pub struct Backups(pub Arc<BackupContext>);

impl Kind for Backups {
    type Record = BackupRecord;
    type Methods = Backup;
    const PROPERTIES: &'static [Prop<BackupRecord>] = &[
        fixed("Id", |b| text(b.id())),
        // The VM's object path (it may have been deleted since).
        fixed("VirtualMachine", |b| {
            Variant::from(object_path(vm_path(&b.manifest.vm_uuid)))
        }),
        fixed("VmName", |b| text(&b.manifest.vm_name)),
        fixed("VmUuid", |b| text(&b.manifest.vm_uuid)),
        // Seconds since the epoch.
        fixed("CreatedAt", |b| Variant::from(b.manifest.created_at)),
        // full or incremental.
        fixed("Kind", |b| text(&b.manifest.kind)),
        // The backup an incremental one builds on ("/" for a full one).
        fixed("Parent", |b| {
            Variant::from(object_path(
                b.manifest
                    .parent
                    .as_deref()
                    .map_or_else(|| "/".into(), backup_path),
            ))
        }),
        fixed("SizeBytes", |b| Variant::from(b.size_bytes())),
        // (target, size the guest sees).
        fixed("Disks", |b| {
            Variant::from(
                b.manifest
                    .disks
                    .iter()
                    .map(|d| (crate::text::for_bus(&d.target).into_owned(), d.virtual_size))
                    .collect::<Vec<_>>(),
            )
        }),
        // Whether the last Verify found every file intact (false: never
        // verified, or damaged).
        prop("Verified", |b| Variant::from(b.verified == Some(true))),
    ];

    fn path(b: &BackupRecord) -> String {
        backup_path(b.id())
    }

    fn methods(self: &Arc<Self>, shown: Shown<BackupRecord>) -> Backup {
        Backup {
            shown,
            ctx: self.0.clone(),
        }
    }

    fn current(&self, b: &BackupRecord) -> Option<Arc<BackupRecord>> {
        self.0.backups.backup_record(b.id())
    }
}

/// The object of a backup just made, exported now so the path returned
/// works at once.
pub async fn export_backup(
    ctx: &Arc<BackupContext>,
    server: &ObjectServer,
    id: &str,
) -> Result<OwnedObjectPath, Error> {
    let b = ctx
        .backups
        .backup_record(id)
        .ok_or_else(|| Error::Failed(format!("backup {id} vanished right after it was made")))?;
    super::object::export(server, &Arc::new(Backups(ctx.clone())), b).await;
    Ok(object_path(backup_path(id)))
}

/// The methods of one backup object.
pub struct Backup {
    shown: Shown<BackupRecord>,
    ctx: Arc<BackupContext>,
}

impl Backup {
    async fn authorize(
        &self,
        header: &Header<'_>,
        action: Action,
        verb: &str,
        extra: &[(&str, &str)],
    ) -> Result<Arc<BackupRecord>, Error> {
        let b = shown(&self.shown);
        self.ctx
            .auth
            .check_with(header, action, &*b, verb, extra)
            .await?;
        Ok(b)
    }
}

#[interface(name = "org.vapor.Virtualization.Backup")]
impl Backup {
    /// Restore as a new VM, or with `replace` over the backup's own VM
    /// (shut off, without snapshots), as a Job: every file of the chain is
    /// verified first. Options: `new_name` (s), `replace` (b),
    /// `target_pool` (s: a directory pool the disks are written to). The
    /// VM.
    #[zbus(out_args("vm"))]
    async fn restore(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, Error> {
        options::known(&options, &["new_name", "target_pool", "replace"])?;
        let replace = options::flag(&options, "replace")?;
        let new_name = options::string(&options, "new_name")?;
        let pool = options::string(&options, "target_pool")?
            .ok_or_else(|| Error::InvalidArgument("target_pool: required".into()))?;
        crate::storage::spec::check_object_name("target_pool", &pool)?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let svc = self.ctx.backups.clone();
        let id = shown(&self.shown).id().to_owned();
        // Cancelable while the chain is checked and between disks; what
        // was made is undone.
        let spec = |operation| super::job::JobSpec {
            operation,
            objects: vec![backup_path(&id)],
            uid,
            cancelable: true,
        };
        let uuid = match (replace, new_name) {
            (true, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "new_name: not with replace (which restores over the backup's own VM)".into(),
                ))
            }
            (false, None) => {
                return Err(Error::InvalidArgument(
                    "new_name: required (or replace, to restore over the backup's VM)".into(),
                ))
            }
            (true, None) => {
                let b = self
                    .authorize(
                        &header,
                        Action::BackupRestoreReplace,
                        "restore over its VM",
                        &[("pool.name", &pool)],
                    )
                    .await?;
                let id = b.id().to_owned();
                super::job::run_job(
                    server,
                    &self.ctx.auth,
                    spec("backup-restore"),
                    |job| async move {
                        svc.restore_replace(&id, pool, uid, job as Arc<dyn Progress>)
                            .await
                    },
                )
                .await?
            }
            (false, Some(new_name)) => {
                crate::storage::spec::check_object_name("new_name", &new_name)?;
                self.authorize(
                    &header,
                    Action::BackupRestore,
                    &format!("restore as the new VM '{new_name}'"),
                    &[("restore.new_name", &new_name), ("pool.name", &pool)],
                )
                .await?;
                self.authorize(
                    &header,
                    Action::VmCreate,
                    &format!("create the VM '{new_name}' from"),
                    &[("pool.name", &pool)],
                )
                .await?;
                let req = RestoreRequest {
                    new_name,
                    target_pool: pool,
                    uid,
                };
                let id = id.clone();
                super::job::run_job(
                    server,
                    &self.ctx.auth,
                    spec("backup-restore"),
                    |job| async move { svc.restore(&id, req, job as Arc<dyn Progress>).await },
                )
                .await?
            }
        };
        if let Some(vms) = self.ctx.vms.get().and_then(std::sync::Weak::upgrade) {
            if let Some(new) = vms.vms.model().get(&uuid) {
                super::object::export(server, &vms, new).await;
            }
        }
        Ok(object_path(vm_path(&uuid)))
    }

    /// Check every file against the manifest, as a Job: (intact, the
    /// problems found). The result shows in `Verified`.
    #[zbus(out_args("intact", "problems"))]
    async fn verify(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(bool, Vec<String>), Error> {
        let b = self.authorize(&header, Action::Read, "verify", &[]).await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let svc = self.ctx.backups.clone();
        let id = b.id().to_owned();
        let problems = super::job::run_job(
            server,
            &self.ctx.auth,
            super::job::JobSpec {
                operation: "backup-verify",
                objects: vec![backup_path(&id)],
                uid,
                cancelable: true,
            },
            |job| async move {
                svc.verify(&id, job as Arc<dyn crate::progress::Progress>)
                    .await
            },
        )
        .await?;
        if let Some(new) = self.ctx.backups.backup_record(b.id()) {
            super::object::refresh_shown(&self.shown, Some(new));
        }
        Ok((problems.is_empty(), problems))
    }

    /// Delete the backup. Refused when incremental backups build on it,
    /// unless `dependents` (b) is set, which deletes them too. The ids
    /// deleted.
    #[zbus(out_args("deleted"))]
    async fn delete(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<Vec<String>, Error> {
        options::known(&options, &["dependents"])?;
        let dependents = options::flag(&options, "dependents")?;
        let b = self
            .authorize(&header, Action::BackupDelete, "delete", &[])
            .await?;
        Ok(self.ctx.backups.delete(b.id(), dependents).await?)
    }
}
