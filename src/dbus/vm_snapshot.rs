//! The snapshot methods of `org.vapor.Virtualization.VirtualMachine`:
//! GetSnapshotCapabilities and CreateSnapshot (declared in the interface
//! in `vm.rs`, which this file is a child module of). The snapshot objects
//! themselves are in `snapshot.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::VirtualMachine;
use crate::dbus::options;
use crate::dbus::polkit::Action;
use crate::dbus::snapshot::export_snapshot;
use crate::dbus::Error;
use crate::progress::Progress;
use crate::services::snapshot::NewSnapshot;
use crate::services::snapshot_rules::{Capabilities, Request, Requested, Verdict};

type Options = HashMap<String, OwnedVariant>;

fn verdict(v: &Verdict) -> OwnedVariant {
    let mut m: HashMap<&str, Variant<'_>> = HashMap::new();
    m.insert("possible", Variant::from(v.possible));
    m.insert("reason", Variant::from(v.reason.as_str()));
    OwnedVariant::try_from(Variant::from(m)).expect("no file descriptors")
}

/// The capabilities as a{sv}: each kind → {possible: b, reason: s}, and
/// `auto`: what CreateSnapshot picks with no options.
fn capabilities_dict(c: &Capabilities, auto: &str) -> HashMap<String, OwnedVariant> {
    let mut m = HashMap::new();
    for (k, v) in [
        ("internal", &c.internal),
        ("external", &c.external_disk_only),
        ("external_memory", &c.external_memory),
        ("revert_internal", &c.revert_internal),
        ("delete_internal", &c.delete_internal),
        ("revert_external", &c.revert_external),
        ("delete_external", &c.delete_external),
        ("quiesce", &c.quiesce),
    ] {
        m.insert(k.to_owned(), verdict(v));
    }
    m.insert(
        "auto".to_owned(),
        OwnedVariant::try_from(Variant::from(auto)).expect("no file descriptors"),
    );
    m
}

impl VirtualMachine {
    pub(super) async fn snapshot_capabilities(
        &self,
        header: &Header<'_>,
    ) -> Result<HashMap<String, OwnedVariant>, Error> {
        let rec = self.authorize(header, Action::Read, "read").await?;
        let caps = self.ctx.snapshots.snapshots.capabilities(&rec.uuid).await?;
        let running = rec.state.is_active();
        let auto = crate::services::snapshot_rules::choose(
            &caps,
            running,
            Request {
                kind: Requested::Auto,
                memory: None,
                quiesce: false,
            },
        )
        .map_or("none", |c| c.as_str());
        Ok(capabilities_dict(&caps, auto))
    }

    pub(super) async fn create_snapshot_as(
        &self,
        header: &Header<'_>,
        server: &zbus::ObjectServer,
        opts: &Options,
    ) -> Result<OwnedObjectPath, Error> {
        options::known(opts, &["name", "description", "memory", "quiesce", "kind"])?;
        let name = options::string(opts, "name")?;
        if let Some(n) = &name {
            crate::services::snapshot_rules::check_name(n)?;
        }
        let description = options::string(opts, "description")?.unwrap_or_default();
        options::text(
            "description",
            &description,
            crate::text::TextRule::DESCRIPTION,
        )?;
        let kind = match options::string(opts, "kind")? {
            None => Requested::Auto,
            Some(k) => Requested::parse(&k)?,
        };
        let request = Request {
            kind,
            memory: options::maybe_flag(opts, "memory")?,
            quiesce: options::flag(opts, "quiesce")?,
        };
        let verb = match &name {
            Some(n) => format!("make the snapshot '{n}' of"),
            None => "make a snapshot of".to_owned(),
        };
        let rec = self
            .authorize(header, Action::SnapshotManage, &verb)
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let svc = self.ctx.snapshots.snapshots.clone();
        let uuid = rec.uuid.clone();
        let new = NewSnapshot {
            name,
            description,
            request,
        };
        let id = crate::dbus::job::run_job(
            server,
            &self.ctx.auth,
            crate::dbus::job::JobSpec {
                operation: "snapshot-create",
                objects: vec![super::vm_path(&rec.uuid)],
                uid,
                // One libvirt call: it cannot stop part way.
                cancelable: false,
            },
            |job| async move { svc.create(&uuid, new, job as Arc<dyn Progress>).await },
        )
        .await?;
        self.sync_from_model(&rec.uuid);
        export_snapshot(&self.ctx.snapshots, server, &id).await
    }
}
