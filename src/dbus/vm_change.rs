//! The change methods of `org.vapor.Virtualization.VirtualMachine`: Update,
//! SetVcpus, SetMemory, and hotplug of disks, cdrom media and network
//! interfaces (declared in the interface in `vm.rs`, which this file is a
//! child module of). Each parses and checks its arguments first, authorizes
//! `vm-modify` with details naming what changes, then asks the services.

use std::collections::HashMap;

use zbus::message::Header;
use zbus::OwnedVariant;

use super::VirtualMachine;
use crate::dbus::options;
use crate::dbus::polkit::Action;
use crate::dbus::Error;
use crate::libvirt::{DeviceScope, DomainRecord};
use crate::services::vm_clone::CloneRequest;
use crate::services::vm_clone_plan::CloneMode;
use crate::services::vm_devices::{scope_for, DiskPlan};
use crate::services::vm_devices_spec::{self as spec, DiskOrigin};
use crate::services::vm_update::VmChanges;

type Options = HashMap<String, OwnedVariant>;

/// `live` / `config` of a hotplug call, checked against the VM.
fn scope(opts: &Options, rec: &DomainRecord) -> Result<DeviceScope, Error> {
    Ok(scope_for(
        options::maybe_flag(opts, "live")?,
        options::maybe_flag(opts, "config")?,
        rec.state.is_active(),
        rec.persistent,
    )?)
}

fn scope_text(s: DeviceScope) -> &'static str {
    match (s.live, s.config) {
        (true, true) => "live,config",
        (true, false) => "live",
        _ => "config",
    }
}

/// What a clone of `src` as `new_name` needs from polkit: `vm-modify` on
/// the source, and `vm-create` for each pool its copies go to, as a
/// creation has it (a clone of a VM with no disks of its own: once).
pub(crate) async fn authorize_clone(
    ctx: &super::VmContext,
    header: &Header<'_>,
    src: &DomainRecord,
    new_name: &str,
    mode: CloneMode,
) -> Result<(), Error> {
    let mode_text = if mode == CloneMode::Full {
        "full"
    } else {
        "linked"
    };
    let details = [("vm.clone.name", new_name), ("vm.clone.mode", mode_text)];
    let verb = format!("clone ({mode_text}) as '{new_name}'");
    ctx.auth
        .check_with(header, Action::VmModify, src, &verb, &details)
        .await?;
    let pools = ctx.clones.pools_for(&src.uuid, mode).await?;
    let verb = format!("create the VM '{new_name}' as a clone of");
    for pool in pools
        .iter()
        .map(String::as_str)
        .chain(pools.is_empty().then_some(""))
    {
        let mut d = details.to_vec();
        d.push(("pool.name", pool));
        ctx.auth
            .check_with(header, Action::VmCreate, src, &verb, &d)
            .await?;
    }
    Ok(())
}

impl VirtualMachine {
    /// `Update`: parse, validate, authorize with the changed fields, apply.
    pub(super) async fn update_vm(
        &self,
        header: &Header<'_>,
        changes_json: &str,
        opts: &Options,
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        options::known(opts, &[])?;
        let doc = crate::creation::validate::parse_json(changes_json).map_err(|e| match e {
            crate::Error::InvalidArgument(m) => crate::Error::InvalidArgument(
                m.strip_prefix("spec")
                    .map_or(m.clone(), |rest| format!("changes{rest}")),
            ),
            e => e,
        })?;
        let changes: VmChanges = crate::creation::validate::validate_update(&doc)?;
        let fields: Vec<&str> = doc
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let fields = fields.join(",");
        // The values a rule may want to judge: a new name, and where a
        // display listens (0.0.0.0 opens it to the network).
        let mut details = vec![("vm.update.fields", fields.as_str())];
        if let Some(n) = &changes.name {
            details.push(("vm.update.name", n));
        }
        if let Some(l) = changes.graphics.as_ref().and_then(|g| g.listen.as_deref()) {
            details.push(("vm.update.graphics.listen", l));
        }
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("change {fields} of"),
                &details,
            )
            .await?;
        let report = self.ctx.vms.update(&rec.uuid, changes).await;
        self.sync_from_model(&rec.uuid);
        let report = report?;
        Ok((report.changed, report.pending))
    }

    pub(super) async fn set_vcpus_of(
        &self,
        header: &Header<'_>,
        count: u32,
        opts: &Options,
    ) -> Result<(), Error> {
        options::known(opts, &["live", "config"])?;
        if count == 0 || count > 4096 {
            return Err(Error::InvalidArgument("count: must be 1 to 4096".into()));
        }
        let sc = scope(opts, &self.record())?;
        let n = count.to_string();
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("set {count} vCPUs ({}) of", scope_text(sc)),
                &[("vm.vcpus", &n), ("vm.scope", scope_text(sc))],
            )
            .await?;
        let r = self.ctx.vms.set_vcpus(&rec.uuid, count, sc).await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    pub(super) async fn set_memory_of(
        &self,
        header: &Header<'_>,
        mib: u64,
        opts: &Options,
    ) -> Result<(), Error> {
        options::known(opts, &["live", "config"])?;
        if !(16..=4_194_304).contains(&mib) {
            return Err(Error::InvalidArgument(
                "memory_mib: must be 16 to 4194304".into(),
            ));
        }
        let sc = scope(opts, &self.record())?;
        let m = mib.to_string();
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("set {mib} MiB of memory ({}) of", scope_text(sc)),
                &[("vm.memory_mib", &m), ("vm.scope", scope_text(sc))],
            )
            .await?;
        let r = self.ctx.vms.set_memory(&rec.uuid, mib, sc).await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    /// Authorize a disk document, then resolve it: vm-modify first (with
    /// the source as given: nothing of the caller's path is touched before
    /// polkit agrees), then, off the async workers, the path and every image
    /// below it; storage-host-path for each of those outside every pool.
    async fn authorized_disk(
        &self,
        header: &Header<'_>,
        req: spec::DiskRequest,
        verb: &str,
        sc: DeviceScope,
    ) -> Result<(std::sync::Arc<DomainRecord>, DiskPlan), Error> {
        let (source, pool) = match &req.origin {
            DiskOrigin::Volume { pool, volume } => (format!("{pool}/{volume}"), pool.clone()),
            DiskOrigin::Path(p) => (p.clone(), String::new()),
            DiskOrigin::Create { pool, .. } => {
                (format!("a new volume in pool {pool}"), pool.clone())
            }
        };
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("{verb} {source} ({}) to", scope_text(sc)),
                &[
                    ("vm.device", "disk"),
                    ("storage.path", &source),
                    ("pool.name", &pool),
                    ("vm.scope", scope_text(sc)),
                ],
            )
            .await?;
        let devices = self.ctx.devices.clone();
        let uuid = rec.uuid.clone();
        let plan = tokio::task::spawn_blocking(move || devices.plan_disk(&uuid, req))
            .await
            .map_err(|e| crate::Error::Failed(format!("resolving the disk failed: {e}")))??;
        for p in &plan.host_paths {
            self.authorize_with(
                header,
                Action::StorageHostPath,
                &format!("give the host file {p} to"),
                &[("storage.path", p)],
            )
            .await?;
        }
        Ok((rec, plan))
    }

    pub(super) async fn attach_disk_to(
        &self,
        header: &Header<'_>,
        disk_json: &str,
        opts: &Options,
    ) -> Result<String, Error> {
        options::known(opts, &["live", "config"])?;
        let req = spec::parse_disk(disk_json)?;
        let sc = scope(opts, &self.record())?;
        let (rec, plan) = self.authorized_disk(header, req, "attach", sc).await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let progress = std::sync::Arc::new(crate::progress::NoProgress);
        let r = self
            .ctx
            .devices
            .attach_disk(&rec.uuid, plan, sc, uid, progress)
            .await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    pub(super) async fn detach_disk_from(
        &self,
        header: &Header<'_>,
        target: &str,
        opts: &Options,
    ) -> Result<(Vec<String>, Vec<(String, String)>), Error> {
        options::known(opts, &["live", "config", "remove_storage"])?;
        options::text("target", target, crate::text::TextRule::NAME)?;
        let remove = options::flag(opts, "remove_storage")?;
        let sc = scope(opts, &self.record())?;
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("detach disk {target} ({}) from", scope_text(sc)),
                &[
                    ("vm.device", "disk"),
                    ("vm.device.target", target),
                    ("vm.scope", scope_text(sc)),
                    (
                        "vm.detach.remove_storage",
                        if remove { "true" } else { "false" },
                    ),
                ],
            )
            .await?;
        if remove {
            // Deleting data: the VM-delete action, as Delete asks for it.
            self.authorize_with(
                header,
                Action::VmDelete,
                &format!("delete the storage of disk {target} of"),
                &[
                    ("vm.device.target", target),
                    ("vm.detach.remove_storage", "true"),
                ],
            )
            .await?;
        }
        let r = self
            .ctx
            .devices
            .detach_disk(&rec.uuid, target, sc, remove)
            .await;
        self.sync_from_model(&rec.uuid);
        let r = r?;
        Ok((r.removed, r.kept))
    }

    pub(super) async fn resize_disk_of(
        &self,
        header: &Header<'_>,
        target: &str,
        size: &str,
        opts: &Options,
    ) -> Result<(), Error> {
        options::known(opts, &[])?;
        options::text("target", target, crate::text::TextRule::NAME)?;
        let bytes = crate::storage::spec::parse_size("size", &serde_json::Value::from(size))?;
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("grow disk {target} to {bytes} bytes in"),
                &[("vm.device.target", target), ("vm.disk.size", size)],
            )
            .await?;
        let r = self.ctx.devices.resize_disk(&rec.uuid, target, bytes).await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    pub(super) async fn change_media_of(
        &self,
        header: &Header<'_>,
        target: &str,
        media_json: &str,
        opts: &Options,
    ) -> Result<(), Error> {
        options::known(opts, &["live", "config"])?;
        options::text("target", target, crate::text::TextRule::NAME)?;
        let sc = scope(opts, &self.record())?;
        if media_json.is_empty() {
            let rec = self
                .authorize_with(
                    header,
                    Action::VmModify,
                    &format!("eject the media of {target} in"),
                    &[("vm.device.target", target), ("vm.scope", scope_text(sc))],
                )
                .await?;
            let r = self
                .ctx
                .devices
                .change_media(&rec.uuid, target, None, sc)
                .await;
            self.sync_from_model(&rec.uuid);
            return Ok(r?);
        }
        let req = spec::parse_media(media_json)?;
        let (rec, plan) = self.authorized_disk(header, req, "insert", sc).await?;
        let r = self
            .ctx
            .devices
            .change_media(&rec.uuid, target, Some(plan), sc)
            .await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    pub(super) async fn attach_nic_to(
        &self,
        header: &Header<'_>,
        nic_json: &str,
        opts: &Options,
    ) -> Result<String, Error> {
        options::known(opts, &["live", "config"])?;
        let req = spec::parse_nic(nic_json)?;
        let sc = scope(opts, &self.record())?;
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!(
                    "attach an interface on {} {} ({}) to",
                    req.kind,
                    req.source,
                    scope_text(sc)
                ),
                &[
                    ("vm.device", "interface"),
                    ("vm.interface.type", &req.kind),
                    ("network.name", &req.source),
                    ("vm.scope", scope_text(sc)),
                ],
            )
            .await?;
        if req.kind == "bridge" {
            // A host bridge is the host's own network (its LAN, say): not a
            // decision a VM's owner makes alone.
            self.authorize_with(
                header,
                Action::NetworkManage,
                &format!("put on the host bridge {} an interface of", req.source),
                &[
                    ("vm.interface.type", "bridge"),
                    ("network.bridge", &req.source),
                ],
            )
            .await?;
        }
        let r = self.ctx.devices.attach_nic(&rec.uuid, req, sc).await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    pub(super) async fn detach_nic_from(
        &self,
        header: &Header<'_>,
        mac: &str,
        opts: &Options,
    ) -> Result<(), Error> {
        options::known(opts, &["live", "config"])?;
        let mac = spec::check_mac("mac", mac)?;
        let sc = scope(opts, &self.record())?;
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("detach interface {mac} ({}) from", scope_text(sc)),
                &[
                    ("vm.device", "interface"),
                    ("vm.device.mac", &mac),
                    ("vm.scope", scope_text(sc)),
                ],
            )
            .await?;
        let r = self.ctx.devices.detach_nic(&rec.uuid, &mac, sc).await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    pub(super) async fn set_link_of(
        &self,
        header: &Header<'_>,
        mac: &str,
        up: bool,
        opts: &Options,
    ) -> Result<(), Error> {
        options::known(opts, &["live", "config"])?;
        let mac = spec::check_mac("mac", mac)?;
        let sc = scope(opts, &self.record())?;
        let state = if up { "up" } else { "down" };
        let rec = self
            .authorize_with(
                header,
                Action::VmModify,
                &format!("set the link of {mac} {state} ({}) in", scope_text(sc)),
                &[
                    ("vm.device", "interface"),
                    ("vm.device.mac", &mac),
                    ("vm.link", state),
                ],
            )
            .await?;
        let r = self.ctx.devices.set_link(&rec.uuid, &mac, up, sc).await;
        self.sync_from_model(&rec.uuid);
        Ok(r?)
    }

    /// `Clone`: authorize vm-modify (and vm-create: a new VM appears), run
    /// the copy as a Job, publish the new VM.
    pub(super) async fn clone_as(
        &self,
        header: &Header<'_>,
        server: &zbus::ObjectServer,
        new_name: &str,
        opts: &Options,
    ) -> Result<zbus::OwnedObjectPath, Error> {
        options::known(opts, &["mode"])?;
        crate::storage::spec::check_object_name("new_name", new_name)?;
        let mode = match options::string(opts, "mode")?.as_deref() {
            None | Some("full") => CloneMode::Full,
            Some("linked") => CloneMode::Linked,
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "options.mode: must be full or linked".into(),
                ))
            }
        };
        let rec = self.record();
        authorize_clone(&self.ctx, header, &rec, new_name, mode).await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let req = CloneRequest {
            source_uuid: rec.uuid.clone(),
            new_name: new_name.to_owned(),
            mode,
            uid,
        };
        let clones = self.ctx.clones.clone();
        let objects = vec![super::vm_path(&rec.uuid)];
        let uuid = crate::dbus::job::run(
            server,
            &self.ctx.auth,
            "vm-clone",
            objects,
            uid,
            |state| async move { clones.clone_vm(req, state).await },
        )
        .await?;
        if let Some(new) = self.ctx.vms.model().get(&uuid) {
            crate::dbus::object::export(server, &self.ctx, new).await;
        }
        Ok(zbus::OwnedObjectPath::try_from(super::vm_path(&uuid))
            .expect("VM paths are valid object paths"))
    }
}
