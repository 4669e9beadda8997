//! `org.vapor.Virtualization.Snapshot`: one object per snapshot, below its
//! VM's object (`…/vm/<uuid>/snapshot/<name>`). Owns the snapshot kind
//! ([`Snapshots`]: its property table and path) and the methods of one
//! snapshot (Revert, Delete: polkit `snapshot-manage` with the VM's
//! details and `snapshot.name`, each a Job). Making snapshots and asking
//! what a VM allows are methods of the VM (`vm_snapshot.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{interface, OwnedObjectPath, OwnedVariant, Variant};

use super::object::{fixed, object_path, prop, shown, text, Kind, Prop, Shown};
use super::options;
use super::polkit::{Action, Authorizer, Target};
use super::storage::escape_path_element;
use super::{vm_path, Error};
use crate::libvirt::snapshot::{RevertTo, SnapshotDelete, SnapshotRevert};
use crate::services::snapshot::{SnapshotService, SnapshotView};

/// The object path of a VM's snapshot.
pub fn snapshot_path(vm_uuid: &str, name: &str) -> String {
    format!(
        "{}/snapshot/{}",
        vm_path(vm_uuid),
        escape_path_element(name)
    )
}

impl Target for SnapshotView {
    fn describe(&self) -> String {
        format!(
            "the snapshot '{}' of the virtual machine '{}'",
            self.rec.name, self.vm_name
        )
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("vm.name", self.vm_name.clone()),
            ("vm.uuid", self.vm_uuid.clone()),
            ("snapshot.name", self.rec.name.clone()),
        ]
    }
}

/// What every snapshot object shares.
pub struct SnapshotContext {
    pub snapshots: Arc<SnapshotService>,
    pub auth: Arc<Authorizer>,
}

/// The snapshot kind (its record: [`SnapshotView`]).
pub struct Snapshots(pub Arc<SnapshotContext>);

fn relative(s: &SnapshotView, name: &str) -> OwnedObjectPath {
    object_path(if name.is_empty() {
        "/".into()
    } else {
        snapshot_path(&s.vm_uuid, name)
    })
}

impl Kind for Snapshots {
    type Record = SnapshotView;
    type Methods = Snapshot;
    const PROPERTIES: &'static [Prop<SnapshotView>] = &[
        fixed("Name", |s| text(&s.rec.name)),
        fixed("VirtualMachine", |s| {
            Variant::from(object_path(vm_path(&s.vm_uuid)))
        }),
        prop("Description", |s| text(&s.rec.description)),
        // Seconds since the epoch.
        prop("CreatedAt", |s| Variant::from(s.rec.created_at)),
        // running, paused, shutoff, disk-snapshot …
        prop("StateAtSnapshot", |s| text(&s.rec.state)),
        // `/` for a root.
        prop("Parent", |s| Variant::from(relative(s, &s.rec.parent))),
        prop("Children", |s| {
            Variant::from(
                s.children
                    .iter()
                    .map(|c| relative(s, c))
                    .collect::<Vec<_>>(),
            )
        }),
        prop("IsCurrent", |s| Variant::from(s.rec.current)),
        prop("HasMemory", |s| Variant::from(s.rec.has_memory())),
        // internal or external.
        prop("Kind", |s| Variant::from(s.rec.kind())),
        // (target, internal|external|no, overlay file of an external one).
        prop("Disks", |s| {
            Variant::from(
                s.rec
                    .disks
                    .iter()
                    .map(|d| {
                        (
                            crate::text::for_bus(&d.target).into_owned(),
                            crate::text::for_bus(&d.mode).into_owned(),
                            crate::text::for_bus(&d.file).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        }),
    ];

    fn path(s: &SnapshotView) -> String {
        snapshot_path(&s.vm_uuid, &s.rec.name)
    }

    fn methods(self: &Arc<Self>, shown: Shown<SnapshotView>) -> Snapshot {
        Snapshot {
            shown,
            ctx: self.0.clone(),
        }
    }

    fn current(&self, s: &SnapshotView) -> Option<Arc<SnapshotView>> {
        self.0.snapshots.snapshot(&s.id)
    }
}

/// The object of a snapshot just made, exported now so the path returned
/// works at once.
pub async fn export_snapshot(
    ctx: &Arc<SnapshotContext>,
    server: &ObjectServer,
    id: &str,
) -> Result<OwnedObjectPath, Error> {
    let s = ctx
        .snapshots
        .snapshot(id)
        .ok_or_else(|| Error::Failed(format!("snapshot {id} vanished right after it was made")))?;
    let path = object_path(snapshot_path(&s.vm_uuid, &s.rec.name));
    super::object::export(server, &Arc::new(Snapshots(ctx.clone())), s).await;
    Ok(path)
}

/// The methods of one snapshot object.
pub struct Snapshot {
    shown: Shown<SnapshotView>,
    ctx: Arc<SnapshotContext>,
}

impl Snapshot {
    async fn authorize(&self, header: &Header<'_>, verb: &str) -> Result<Arc<SnapshotView>, Error> {
        let s = shown(&self.shown);
        self.ctx
            .auth
            .check(header, Action::SnapshotManage, &*s, verb)
            .await?;
        Ok(s)
    }
}

impl Snapshot {
    /// Authorize `verb` on this snapshot, then run `work` on it as a Job
    /// `operation` (one libvirt call: it cannot stop part way).
    async fn as_job<F, Fut>(
        &self,
        header: &Header<'_>,
        server: &ObjectServer,
        verb: &str,
        operation: &str,
        step: &'static str,
        work: F,
    ) -> Result<(), Error>
    where
        F: FnOnce(Arc<SnapshotService>, String) -> Fut,
        Fut: std::future::Future<Output = crate::Result<()>>,
    {
        let s = self.authorize(header, verb).await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let svc = self.ctx.snapshots.clone();
        let id = s.id.clone();
        super::job::run_job(
            server,
            &self.ctx.auth,
            super::job::JobSpec {
                operation,
                objects: vec![vm_path(&s.vm_uuid), snapshot_path(&s.vm_uuid, &s.rec.name)],
                uid,
                cancelable: false,
            },
            |job| async move {
                crate::progress::Progress::update(&*job, step, 0, 0);
                work(svc, id).await
            },
        )
        .await
    }
}

/// `state` of a Revert.
fn revert_to(opts: &HashMap<String, OwnedVariant>) -> Result<RevertTo, Error> {
    match options::string(opts, "state")?.as_deref() {
        None | Some("as-taken") => Ok(RevertTo::AsTaken),
        Some("running") => Ok(RevertTo::Running),
        Some("paused") => Ok(RevertTo::Paused),
        Some(other) => Err(Error::InvalidArgument(format!(
            "state: '{}' is not one of as-taken, running, paused",
            crate::text::for_bus(other)
        ))),
    }
}

#[interface(name = "org.vapor.Virtualization.Snapshot")]
impl Snapshot {
    /// Bring the VM back to this snapshot, as a Job. Options: `state` (s:
    /// as-taken, running, paused; default as-taken), `force` (b: revert
    /// where libvirt calls it risky, e.g. across a configuration change).
    async fn revert(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["state", "force"])?;
        let how = SnapshotRevert {
            to: revert_to(&options)?,
            force: options::flag(&options, "force")?,
        };
        self.as_job(
            &header,
            server,
            "revert to",
            "snapshot-revert",
            "reverting",
            move |svc, id| async move { svc.revert(&id, how).await },
        )
        .await
    }

    /// Delete this snapshot, as a Job (merging an external one's overlay
    /// can take a while). Options: `children` (b: its descendants too),
    /// `metadata_only` (b: forget libvirt's record, leave the images).
    async fn delete(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["children", "metadata_only"])?;
        let how = SnapshotDelete {
            children: options::flag(&options, "children")?,
            metadata_only: options::flag(&options, "metadata_only")?,
        };
        self.as_job(
            &header,
            server,
            "delete",
            "snapshot-delete",
            "deleting",
            move |svc, id| async move { svc.delete(&id, how).await },
        )
        .await
    }
}
