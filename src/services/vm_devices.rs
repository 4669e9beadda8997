//! Hotplug: disks (attach an existing volume or path, or a new volume made
//! for the VM; detach, removing what vapord made for it only on request and
//! by the VM-deletion rules; online resize), cdrom media, and network
//! interfaces (attach, detach, link up/down). Each call says where it
//! applies: the running VM (`live`), the definition (`config`), or both.
//!
//! What changes shows up in `Describe` (which reads libvirt) at once, and
//! in the VM object through libvirt's device events, the same way as a
//! change made with `virsh`. No VM property describes NICs or media, so
//! those calls do not re-read the VM before they reply.

use std::sync::Arc;
use std::time::Duration;

use super::storage::{StorageService, VolumeView};
use super::storage_ownership::{self, Verdict};
use super::vm_devices_spec::{self as spec, DiskOrigin, DiskRequest};
use crate::libvirt::xml::{disk_facts, Element};
use crate::libvirt::{DeviceScope, DomainRef, Hypervisor};
use crate::model::Model;
use crate::progress::Progress;
use crate::storage::spec::{VolumeFormat, VolumeSpec};
use crate::{Error, Result};

/// What a disk request resolved to, for authorization before anything is done.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub req: DiskRequest,
    /// An existing volume of a pool.
    pub volume: Option<Arc<VolumeView>>,
    /// A host path outside every pool, canonical.
    pub host_path: Option<String>,
    /// Every file the guest would read that lies outside every pool (the
    /// host path, backing files of its image): each needs storage-host-path.
    pub host_paths: Vec<String>,
    /// The pool (name, uuid) a new volume is made in.
    pub create_in: Option<(String, String)>,
}

impl DiskPlan {
    /// For polkit details and messages.
    pub fn source_text(&self) -> String {
        match (&self.volume, &self.host_path, &self.create_in) {
            (Some(v), _, _) => v.rec.path.clone(),
            (_, Some(p), _) => p.clone(),
            (_, _, Some((pool, _))) => format!("a new volume in pool {pool}"),
            _ => String::new(),
        }
    }
}

/// What detaching a disk did with its storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetachReport {
    pub removed: Vec<String>,
    pub kept: Vec<(String, String)>,
}

/// The hotplug operations.
pub struct DeviceService {
    model: Arc<Model>,
    storage: Arc<StorageService>,
    /// One disk attachment at a time, from the check of who uses the image
    /// to the attachment (two VMs must not both get one image writable).
    attaching: tokio::sync::Mutex<()>,
}

fn hv(model: &Model) -> &Arc<Hypervisor> {
    model.hypervisor()
}

/// The scope a call asked for, checked against the VM: `live` (default:
/// it runs) and `config` (default: it is persistent), at least one.
pub fn scope_for(
    live: Option<bool>,
    config: Option<bool>,
    running: bool,
    persistent: bool,
) -> Result<DeviceScope> {
    let s = DeviceScope {
        live: live.unwrap_or(running),
        config: config.unwrap_or(persistent),
    };
    if s.live && !running {
        return Err(Error::InvalidState("live: the VM is not running".into()));
    }
    if s.config && !persistent {
        return Err(Error::InvalidState(
            "config: the VM is transient (not defined)".into(),
        ));
    }
    if !s.live && !s.config {
        return Err(Error::InvalidArgument(
            "live, config: at least one must be true".into(),
        ));
    }
    Ok(s)
}

impl DeviceService {
    pub fn new(model: Arc<Model>, storage: Arc<StorageService>) -> Self {
        Self {
            model,
            storage,
            attaching: tokio::sync::Mutex::new(()),
        }
    }

    fn name_of(&self, uuid: &str) -> Result<String> {
        self.model
            .get(uuid)
            .map(|r| r.name.clone())
            .ok_or_else(|| Error::NotFound(format!("no virtual machine with UUID {uuid}")))
    }

    /// Resolve a disk request's source (blocking: paths are resolved).
    pub fn plan_disk(&self, uuid: &str, req: DiskRequest) -> Result<DiskPlan> {
        let mut plan = DiskPlan {
            req,
            volume: None,
            host_path: None,
            host_paths: Vec::new(),
            create_in: None,
        };
        match &plan.req.origin {
            DiskOrigin::Volume { pool, volume } => {
                let p = self.storage.find_pool(pool).ok_or_else(|| {
                    Error::NotFound(format!("disk.pool: no storage pool named '{pool}'"))
                })?;
                let v = self
                    .storage
                    .volume_named(&p.rec.uuid, volume)
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "disk.volume: pool '{pool}' has no volume named '{volume}'"
                        ))
                    })?;
                plan.volume = Some(v);
            }
            DiskOrigin::Path(path) => {
                let real = storage_ownership::canonical(path);
                match self.storage.volume_at(&real) {
                    Some(v) => plan.volume = Some(v),
                    None => {
                        let meta = std::fs::metadata(&real).map_err(|e| {
                            Error::InvalidArgument(format!("disk.path: cannot use {path}: {e}"))
                        })?;
                        use std::os::unix::fs::FileTypeExt;
                        if !(meta.is_file() || meta.file_type().is_block_device()) {
                            return Err(Error::InvalidArgument(format!(
                                "disk.path: {path} is not a regular file or a block device"
                            )));
                        }
                        plan.host_path = Some(real);
                    }
                }
            }
            DiskOrigin::Create { pool, .. } => {
                let p = self.storage.find_pool(pool).ok_or_else(|| {
                    Error::NotFound(format!("disk.pool: no storage pool named '{pool}'"))
                })?;
                if !p.rec.is_active() {
                    return Err(Error::InvalidState(format!(
                        "disk.pool: pool '{pool}' is not active"
                    )));
                }
                plan.create_in = Some((p.rec.name.clone(), p.rec.uuid.clone()));
            }
        }
        // Two VMs writing one image corrupt it: a volume another VM uses
        // (as a disk or below one) is given only read-only or shareable.
        if let Some(v) = &plan.volume {
            let writable = !(plan.req.readonly || plan.req.shareable);
            if let (true, Some((_, other))) = (writable, v.used_by.iter().find(|(u, _)| u != uuid))
            {
                return Err(Error::Conflict(format!(
                    "disk: {} is in use by VM '{other}'; attach it readonly or shareable, or \
                     detach it there first",
                    v.rec.path
                )));
            }
        }
        // What QEMU would open below the image (a backing file written into
        // the image by a guest, say) is read as if given directly.
        let top = match (&plan.volume, &plan.host_path) {
            (Some(v), _) => Some(v.rec.path.clone()),
            (_, Some(p)) => Some(p.clone()),
            _ => None,
        };
        if let Some(top) = top {
            plan.host_paths.extend(plan.host_path.clone());
            let below = crate::image::backing_chain_paths(&top)
                .map_err(|e| Error::InvalidArgument(format!("disk: {top}: {e}")))?;
            for p in below {
                if self.storage.volume_at(&p).is_none() && !plan.host_paths.contains(&p) {
                    plan.host_paths.push(p);
                }
            }
        }
        Ok(plan)
    }

    /// Refuse to attach writable an image another VM uses (as a disk, or
    /// below one), asked of libvirt now: the plan's check reads the
    /// event-fed cache, which may not have seen a VM defined a moment ago.
    async fn ensure_unused(&self, uuid: &str, plan: &DiskPlan) -> Result<()> {
        let writable = !(plan.req.readonly || plan.req.shareable);
        let existing = plan
            .volume
            .as_ref()
            .map(|v| v.rec.path.clone())
            .or_else(|| plan.host_path.clone());
        let (true, Some(path)) = (writable, existing) else {
            return Ok(());
        };
        let u = uuid.to_owned();
        let users = hv(&self.model)
            .session(move |s| storage_ownership::paths_in_use(s, Some(&u)))
            .await
            .map_err(|e| {
                Error::Unavailable(format!("disk: cannot tell which VMs use {path} now: {e}"))
            })?;
        match users.get(&storage_ownership::canonical(&path)) {
            Some(names) => Err(Error::Conflict(format!(
                "disk: {path} is in use by VM '{}'; attach it readonly or shareable, or \
                 detach it there first",
                names.join("', '")
            ))),
            None => Ok(()),
        }
    }

    /// Attach the disk of `plan` in `scope`; returns its target.
    pub async fn attach_disk(
        &self,
        uuid: &str,
        plan: DiskPlan,
        scope: DeviceScope,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let _locked = self.model.lock_vm(uuid).await;
        let name = self.name_of(uuid)?;
        if let Some(v) = &plan.volume {
            self.storage.check_usable(v).await?;
        }
        let _one = self.attaching.lock().await;
        self.ensure_unused(uuid, &plan).await?;
        let req = plan.req.clone();
        let defs = hv(&self.model)
            .on_domain(uuid, |_, d| {
                Ok((d.definitions()?, d.editable_definition()?))
            })
            .await?;
        let (definitions, config) = defs;
        let all: Vec<&Element> = definitions.all().chain(std::iter::once(&config)).collect();
        let taken = spec::taken_targets(all.iter().copied());
        let target = spec::choose_target(&req, &taken)?;
        let needs_controller =
            req.bus == "scsi" && !all.iter().all(|d| spec::has_scsi_controller(d));

        // The source: an existing volume or path, or a volume made now.
        let mut created: Option<Arc<VolumeView>> = None;
        let (path, block, format) = if let Some(v) = &plan.volume {
            (
                v.rec.path.clone(),
                v.rec.kind == "block",
                disk_format(&v.rec.format),
            )
        } else if let Some(p) = &plan.host_path {
            let block = std::fs::metadata(p).map(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device()
            });
            (p.clone(), block.unwrap_or(false), "raw".to_owned())
        } else {
            let DiskOrigin::Create {
                name: vol_name,
                bytes,
                format,
                ..
            } = &req.origin
            else {
                return Err(Error::Failed("disk plan without a source".into()));
            };
            let (_, pool_uuid) = plan.create_in.clone().expect("create plan has a pool");
            let ext = if format == "raw" { "img" } else { "qcow2" };
            let vol_name = vol_name
                .clone()
                .unwrap_or_else(|| format!("{name}-{target}.{ext}"));
            let vspec = VolumeSpec {
                name: vol_name,
                capacity: *bytes,
                format: if format == "raw" {
                    VolumeFormat::Raw
                } else {
                    VolumeFormat::Qcow2
                },
                backing_volume: None,
                preallocate: false,
            };
            let id = self
                .storage
                .create_volume(&pool_uuid, &vspec, uid, progress)
                .await?;
            let v = self
                .storage
                .volume(&id)
                .ok_or_else(|| Error::Failed("the new volume vanished".into()))?;
            created = Some(v.clone());
            (v.rec.path.clone(), v.rec.kind == "block", format.clone())
        };
        let xml = spec::disk_xml(&req, &path, block, &format, &target);
        let owned = created.as_ref().map(|v| v.rec.path.clone());
        let what = format!("cannot attach {target} to VM '{name}'");
        let result = hv(&self.model)
            .on_domain(uuid, move |_, d| {
                if needs_controller {
                    d.attach_device(spec::SCSI_CONTROLLER_XML, scope)
                        .map_err(|e| {
                            e.context(format!("{what}: cannot add a virtio-scsi controller"))
                        })?;
                }
                // Recorded as the VM's own before it is attached (so deleting
                // the VM, or detaching with remove_storage, may remove it):
                // a failure after this point never leaves an attached disk
                // whose volume the rollback then deletes.
                if let Some(p) = &owned {
                    change_owned(d, p, true)?;
                }
                let attached = d
                    .attach_device(&xml, scope)
                    .map_err(|e| hint_slots(e.context(&what)));
                if let (Err(_), Some(p)) = (&attached, &owned) {
                    if let Err(e) = change_owned(d, p, false) {
                        log::warn!("cannot forget {p} in the VM's metadata: {e}");
                    }
                }
                attached
            })
            .await;
        if let Err(e) = result {
            if let Some(v) = created {
                if let Err(e2) = self.storage.delete_volume(&v.id).await {
                    log::error!(vm_name = name.as_str(); "cannot remove {} after a failed attach: {e2}", v.rec.path);
                }
            }
            return Err(e);
        }
        self.settle(uuid).await;
        log::info!(vm_name = name.as_str(), vm_uuid = uuid; "attached {target} ({path})");
        Ok(target)
    }

    /// Detach the disk at `target` in `scope`; with `remove_storage`, delete
    /// the volume vapord made for this VM when nothing else uses it.
    pub async fn detach_disk(
        &self,
        uuid: &str,
        target: &str,
        scope: DeviceScope,
        remove_storage: bool,
    ) -> Result<DetachReport> {
        let _locked = self.model.lock_vm(uuid).await;
        let name = self.name_of(uuid)?;
        if remove_storage && !(scope.config && (scope.live || !self.running(uuid))) {
            return Err(Error::InvalidArgument(
                "remove_storage: the disk must go from both the running VM and its definition"
                    .into(),
            ));
        }
        let t = target.to_owned();
        let what = format!("cannot detach {target} from VM '{name}'");
        let (path, owned) = hv(&self.model)
            .on_domain(uuid, move |s, d| {
                let def = d.definition(scope.definition())?;
                let disk = spec::find_disk(&def, &t)
                    .ok_or_else(|| Error::NotFound(format!("target: VM has no disk {t}")))?
                    .clone();
                let source = disk_facts(&disk).source;
                let path = storage_ownership::resolve_path(s, &source);
                let owned = d.vapor_metadata().owned_volumes;
                let ident = identify_disk(&disk);
                if scope.live {
                    d.detach_device(
                        &ident,
                        DeviceScope {
                            live: true,
                            config: false,
                        },
                    )
                    .map_err(|e| e.context(&what))?;
                }
                if scope.config {
                    d.detach_device(&ident, DeviceScope::CONFIG)
                        .map_err(|e| e.context(&what))?;
                }
                Ok((path, owned))
            })
            .await?;
        let mut report = DetachReport::default();
        if scope.live {
            // The guest releases the disk in its own time.
            if !self.wait_gone(uuid, target).await {
                if let Some(p) = &path {
                    report
                        .kept
                        .push((p.clone(), "the guest has not released the disk yet".into()));
                }
                self.settle(uuid).await;
                return Ok(report);
            }
        }
        match (remove_storage, path) {
            (true, Some(p)) => self.remove_owned(uuid, &p, &owned, &mut report).await,
            (false, Some(p)) => report
                .kept
                .push((p, "storage kept (remove_storage not set)".into())),
            (_, None) => {}
        }
        self.settle(uuid).await;
        log::info!(vm_name = name.as_str(), vm_uuid = uuid; "detached {target}; removed {:?}", report.removed);
        Ok(report)
    }

    async fn remove_owned(
        &self,
        uuid: &str,
        path: &str,
        owned: &[String],
        report: &mut DetachReport,
    ) {
        let real = storage_ownership::canonical(path);
        let is_owned = owned
            .iter()
            .any(|o| o == path || storage_ownership::canonical(o) == real);
        if !is_owned {
            report.kept.push((
                path.to_owned(),
                "vapord did not create it for this VM".into(),
            ));
            return;
        }
        let u = uuid.to_owned();
        let others = hv(&self.model)
            .session(move |s| storage_ownership::other_users(s, Some(&u)))
            .await;
        let verdict = match others {
            Ok(o) => storage_ownership::decide_volume(&real, &o),
            Err(e) => Verdict::Keep(format!("cannot tell who else uses it: {e}")),
        };
        match verdict {
            Verdict::Delete => {
                let r = match self.storage.volume_at(&real) {
                    Some(v) => self.storage.delete_volume(&v.id).await,
                    None => Err(Error::NotFound("not a volume of any pool".into())),
                };
                match r {
                    Ok(()) => {
                        report.removed.push(path.to_owned());
                        let p = path.to_owned();
                        let _ = hv(&self.model)
                            .on_domain(uuid, move |_, d| change_owned(d, &p, false))
                            .await;
                    }
                    Err(e) => report
                        .kept
                        .push((path.to_owned(), format!("deleting failed: {e}"))),
                }
            }
            Verdict::Keep(why) => report.kept.push((path.to_owned(), why)),
            Verdict::Skip => {}
        }
    }

    fn running(&self, uuid: &str) -> bool {
        self.model.get(uuid).is_some_and(|r| r.state.is_active())
    }

    /// Wait (a bounded while) until the running VM no longer has `target`.
    async fn wait_gone(&self, uuid: &str, target: &str) -> bool {
        for _ in 0..100 {
            let t = target.to_owned();
            let present = hv(&self.model)
                .on_domain(uuid, move |_, d| {
                    if !d.is_active()? {
                        return Ok(false);
                    }
                    let live = d.definition(crate::libvirt::Definition::Live)?;
                    Ok(spec::find_disk(&live, &t).is_some())
                })
                .await
                .unwrap_or(false);
            if !present {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Grow the disk at `target` to `bytes`: online through QEMU while the VM
    /// runs, else its volume.
    pub async fn resize_disk(&self, uuid: &str, target: &str, bytes: u64) -> Result<()> {
        let _locked = self.model.lock_vm(uuid).await;
        let name = self.name_of(uuid)?;
        let t = target.to_owned();
        let what = format!("cannot resize {target} of VM '{name}'");
        if bytes == 0 {
            return Err(Error::InvalidArgument("size: must be more than 0".into()));
        }
        let (running, path, current) = hv(&self.model)
            .on_domain(uuid, move |s, d| {
                let running = d.is_active()?;
                let def = d.definition(crate::libvirt::Definition::Live)?;
                let disk = spec::find_disk(&def, &t)
                    .ok_or_else(|| Error::NotFound(format!("target: VM has no disk {t}")))?;
                if disk.attr("device") != Some("disk") {
                    return Err(Error::InvalidArgument(format!("target: {t} is not a disk")));
                }
                if disk.child("readonly").is_some() {
                    return Err(Error::InvalidArgument(format!("target: {t} is read-only")));
                }
                let path = storage_ownership::resolve_path(s, &disk_facts(disk).source);
                // What the guest sees now, as QEMU (running) or the image says.
                let now = if running {
                    Some(d.block_capacity(&t)?)
                } else {
                    None
                };
                Ok((running, path, now))
            })
            .await?;
        let vol = path.as_deref().and_then(|p| self.storage.volume_at(p));
        let current = current.or(vol.as_ref().map(|v| v.rec.capacity));
        match current {
            Some(c) if bytes < c => {
                return Err(Error::InvalidArgument(format!(
                    "size: {bytes} bytes is smaller than the disk ({c} bytes); disks only grow"
                )))
            }
            _ => {}
        }
        if running {
            let t = target.to_owned();
            hv(&self.model)
                .on_domain(uuid, move |_, d| {
                    d.block_resize(&t, bytes).map_err(|e| e.context(&what))
                })
                .await?;
        } else {
            let v = vol.ok_or_else(|| {
                Error::NotSupported(format!(
                    "{what}: it is not a volume of a pool, and the VM is not running"
                ))
            })?;
            self.storage
                .resize(&v.id, bytes, false)
                .await
                .map_err(|e| e.context(&what))?;
        }
        if let Some(p) = &path {
            if let Some(v) = self.storage.volume_at(p) {
                let _ = self.storage.resync_pool(&v.rec.pool_uuid).await;
            }
        }
        self.settle(uuid).await;
        Ok(())
    }

    async fn settle(&self, uuid: &str) {
        if let Err(e) = self.model.refresh_domain(uuid).await {
            log::warn!(vm_uuid = uuid; "cannot re-read VM after a device change: {e}");
        }
    }
}

/// libvirt's "No more available PCI slots" with what to do about it.
fn hint_slots(e: Error) -> Error {
    let text = e.to_string();
    if text.contains("No more available PCI slots") {
        Error::InvalidState(format!(
            "{text}: the VM has no free PCIe root port for another device; add one to its \
             definition (<controller type='pci' model='pcie-root-port'/>) and restart it"
        ))
    } else {
        e
    }
}

/// The format a volume is attached with (libvirt's driver type).
fn disk_format(volume_format: &str) -> String {
    match volume_format {
        "qcow2" | "raw" | "vmdk" | "vdi" | "vpc" | "qed" => volume_format.to_owned(),
        _ => "raw".to_owned(),
    }
}

/// The XML that identifies a disk to detach: the element as defined.
fn identify_disk(disk: &Element) -> String {
    disk.to_xml()
}

/// Add (or remove) a path from the volumes vapord made for this VM.
pub(crate) fn change_owned(d: &DomainRef, path: &str, add: bool) -> Result<()> {
    let mut def = d.editable_definition()?;
    let vm = def.vapor_metadata_mut();
    vm.children
        .retain(|c| !(c.local_name() == "volume" && c.attr("path") == Some(path)));
    if add {
        let volume = vm.new_child("volume", &[("path", path)]);
        vm.children.push(volume);
    }
    d.set_vapor_metadata(&vm.without_namespaces().to_xml())
}

// Media and network interfaces.
#[path = "vm_devices_nic.rs"]
mod nic;

#[cfg(test)]
mod tests {
    use super::scope_for;

    #[test]
    fn scope_defaults_follow_the_vm_and_impossible_scopes_are_refused() {
        let s = scope_for(None, None, true, true).unwrap();
        assert!(s.live && s.config);
        let s = scope_for(None, None, false, true).unwrap();
        assert!(!s.live && s.config);
        assert!(scope_for(Some(true), None, false, true)
            .unwrap_err()
            .to_string()
            .contains("live: the VM is not running"));
        assert!(scope_for(None, Some(true), true, false)
            .unwrap_err()
            .to_string()
            .contains("config: the VM is transient"));
        assert!(scope_for(Some(false), Some(false), true, true)
            .unwrap_err()
            .to_string()
            .contains("at least one"));
    }
}
