//! The `Backup` method of `org.vapor.Virtualization.VirtualMachine`
//! (declared in the interface in `vm.rs`, which this file is a child module
//! of). The backup objects are in `backup.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::{OwnedObjectPath, OwnedVariant};

use super::VirtualMachine;
use crate::dbus::backup::export_backup;
use crate::dbus::options;
use crate::dbus::polkit::Action;
use crate::dbus::Error;
use crate::progress::Progress;
use crate::services::backup::{BackupRequest, Wanted};

impl VirtualMachine {
    pub(super) async fn backup_as(
        &self,
        header: &Header<'_>,
        server: &zbus::ObjectServer,
        opts: &HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, Error> {
        options::known(opts, &["kind", "quiesce", "keep"])?;
        let kind = match options::string(opts, "kind")? {
            None => Wanted::Auto,
            Some(k) => Wanted::parse(&k)?,
        };
        let keep = match options::uint(opts, "keep")? {
            None => None,
            Some(k) if (1..=10_000).contains(&k) => Some(k as u32),
            Some(k) => {
                return Err(Error::InvalidArgument(format!(
                    "keep: {k} is not between 1 and 10000"
                )))
            }
        };
        let req = BackupRequest {
            kind,
            quiesce: options::flag(opts, "quiesce")?,
            keep,
        };
        let rec = self
            .authorize(header, Action::BackupCreate, "back up")
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let svc = self.ctx.backups.backups.clone();
        let uuid = rec.uuid.clone();
        let id = crate::dbus::job::run(
            server,
            &self.ctx.auth,
            "vm-backup",
            vec![super::vm_path(&rec.uuid)],
            uid,
            |job| async move { svc.backup(&uuid, req, job as Arc<dyn Progress>).await },
        )
        .await?;
        export_backup(&self.ctx.backups, server, &id).await
    }
}
