//! The migration methods of `org.vapor.Virtualization.VirtualMachine`:
//! Migrate and MigrateStartPostcopy (declared in the interface in `vm.rs`,
//! which this file is a child module of).

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::OwnedVariant;

use super::VirtualMachine;
use crate::dbus::options;
use crate::dbus::polkit::Action;
use crate::dbus::Error;
use crate::progress::Progress;
use crate::services::migration::MigrationOptions;
use crate::services::migration_rules::{check_compression, check_data_uri, CopyStorage};

const OPTIONS: &[&str] = &[
    "live",
    "persistent",
    "undefine_source",
    "copy_storage",
    "tunnelled",
    "p2p",
    "auto_converge",
    "postcopy",
    "bandwidth",
    "compression",
    "migrate_uri",
];

fn parse(opts: &HashMap<String, OwnedVariant>) -> Result<MigrationOptions, Error> {
    options::known(opts, OPTIONS)?;
    let copy_storage = match options::string(opts, "copy_storage")? {
        None => CopyStorage::None,
        Some(c) => CopyStorage::parse(&c)?,
    };
    let bandwidth_mib = options::uint(opts, "bandwidth")?.unwrap_or(0);
    if bandwidth_mib > 1_000_000 {
        return Err(Error::InvalidArgument(format!(
            "bandwidth: {bandwidth_mib} MiB/s is more than 1000000"
        )));
    }
    let compression = match options::string(opts, "compression")? {
        None => Vec::new(),
        Some(c) => check_compression(&c)?,
    };
    let data_uri = options::string(opts, "migrate_uri")?;
    if let Some(u) = &data_uri {
        check_data_uri(u)?;
    }
    Ok(MigrationOptions {
        live: options::maybe_flag(opts, "live")?,
        persistent: options::flag_or(opts, "persistent", true)?,
        undefine_source: options::flag_or(opts, "undefine_source", true)?,
        copy_storage,
        tunnelled: options::flag(opts, "tunnelled")?,
        p2p: options::flag_or(opts, "p2p", true)?,
        auto_converge: options::flag(opts, "auto_converge")?,
        postcopy: options::flag(opts, "postcopy")?,
        bandwidth_mib,
        compression,
        data_uri,
    })
}

impl VirtualMachine {
    pub(super) async fn migrate_to(
        &self,
        header: &Header<'_>,
        server: &zbus::ObjectServer,
        destination: &str,
        opts: &HashMap<String, OwnedVariant>,
    ) -> Result<String, Error> {
        let o = parse(opts)?;
        // A destination vapord will not reach is refused only once the
        // caller may migrate: the refusal lists the configured hosts.
        let resolved = self.ctx.migrations.resolve(destination);
        let shown = crate::text::for_bus(destination).into_owned();
        let uri_detail = resolved.as_deref().unwrap_or_default();
        let rec = self
            .authorize_with(
                header,
                Action::Migrate,
                &format!("migrate to {shown}"),
                &[
                    ("migrate.destination", destination),
                    ("migrate.uri", uri_detail),
                ],
            )
            .await?;
        resolved?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let svc = self.ctx.migrations.clone();
        let uuid = rec.uuid.clone();
        let dest = destination.to_owned();
        let report = crate::dbus::job::run(
            server,
            &self.ctx.auth,
            "vm-migrate",
            vec![super::vm_path(&rec.uuid)],
            uid,
            |job| async move {
                let path = job.path.clone();
                svc.migrate(&uuid, &dest, o, path, job as Arc<dyn Progress>)
                    .await
            },
        )
        .await?;
        self.sync_from_model(&rec.uuid);
        Ok(report.summary)
    }

    pub(super) async fn start_postcopy(&self, header: &Header<'_>) -> Result<(), Error> {
        let rec = self
            .authorize(
                header,
                Action::Migrate,
                "switch to post-copy the migration of",
            )
            .await?;
        Ok(self.ctx.migrations.start_postcopy(&rec.uuid).await?)
    }
}
