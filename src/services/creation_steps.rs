//! The blocking side of a creation, in one [`Session`]: the host storage as
//! resolution sees it ([`LibvirtView`]), and the steps that make the
//! volumes, the cloud-init seed and the domain, each recorded before it is
//! taken and undone ([`rollback::undo`]) if a later one fails.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::Plan;
use crate::creation::cloud_init;
use crate::creation::domain_xml::esc;
use crate::creation::resolve::{
    self, Defaults, HostLimits, PciPlanner, PoolInfo, Resolved, StorageView, VolumeInfo,
};
use crate::creation::spec::{CloudInitSpec, DiskAction, VmSpec};
use crate::intent::{self, Intent, IntentLog, Step};
use crate::libvirt::storage::{PoolRecord, Preallocation, VolumeRecord};
use crate::libvirt::xml::nvram_path;
use crate::libvirt::{Definition, Session};
use crate::progress::Progress;
use crate::services::rollback;
use crate::{Error, Result};

/// Host storage as libvirt sees it, for the resolver.
pub(super) struct LibvirtView<'a>(pub(super) &'a Session<'a>);

/// What resolution needs of a pool: those without a target path (rbd,
/// gluster …) hold no files and are left out.
fn pool_info(p: PoolRecord) -> Option<PoolInfo> {
    if p.target_path.is_empty() {
        return None;
    }
    Some(PoolInfo {
        active: p.is_active(),
        name: p.name,
        kind: p.kind,
        target: p.target_path,
        capacity_bytes: p.capacity,
        available_bytes: p.available,
    })
}

impl StorageView for LibvirtView<'_> {
    fn pool(&self, name: &str) -> Option<PoolInfo> {
        self.0.pool_by_name(name).ok().and_then(pool_info)
    }

    fn pools(&self) -> Vec<PoolInfo> {
        self.0
            .pools()
            .map(|ps| ps.into_iter().filter_map(pool_info).collect())
            .unwrap_or_default()
    }

    fn volume(&self, path: &str) -> Option<VolumeInfo> {
        let vol = self.0.volume_at(path).ok()?;
        let rec = vol.record().ok()?;
        Some(VolumeInfo {
            format: if rec.format.is_empty() {
                "raw".to_owned()
            } else {
                rec.format
            },
            capacity_bytes: rec.capacity,
            pool: vol.pool_name(),
        })
    }

    fn path_exists(&self, path: &str) -> bool {
        Path::new(path).symlink_metadata().is_ok()
    }

    fn canonical(&self, path: &str) -> String {
        crate::fsutil::canonical(path)
    }

    fn backing_chain(&self, path: &str) -> Result<Vec<String>> {
        if !Path::new(path).is_file() {
            return Ok(Vec::new());
        }
        // Read from the image headers by vapord itself: only local files are
        // accepted, and nothing named in an image is ever connected to.
        crate::image::backing_chain_paths(path).map_err(Error::InvalidArgument)
    }

    fn host_limits(&self) -> HostLimits {
        HostLimits {
            memory_mib: self.0.host_memory_kib().map_or(u64::MAX, |kib| kib / 1024),
            max_vcpus: self.0.max_vcpus().unwrap_or(u32::MAX),
        }
    }
}

fn gib(n: u64) -> u64 {
    n.saturating_mul(1 << 30)
}

/// A volume definition. Sparse unless `preallocate`: without an
/// `<allocation>` libvirt would allocate (and write) the whole capacity.
pub(in crate::services) fn volume_xml(
    name: &str,
    capacity: u64,
    format: &str,
    backing: Option<(&str, &str)>,
    preallocate: bool,
) -> String {
    let allocation = if preallocate { capacity } else { 0 };
    let mut x = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
         <allocation unit='bytes'>{allocation}</allocation><target><format type='{}'/></target>",
        esc(name),
        esc(format)
    );
    if let Some((path, fmt)) = backing {
        x.push_str(&format!(
            "<backingStore><path>{}</path><format type='{}'/></backingStore>",
            esc(path),
            esc(fmt)
        ));
    }
    x.push_str("</volume>");
    x
}

/// Conflict when a domain of this name exists.
pub(in crate::services) fn check_name_free(s: &Session, name: &str) -> Result<()> {
    match s.domain_named(name) {
        Ok(_) => Err(Error::Conflict(format!(
            "name: a VM named '{name}' already exists"
        ))),
        Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.context("cannot check the name")),
    }
}

/// Storage resolution plus the PCI plan, if the spec has devices.
pub(super) fn resolve_all(
    s: &Session,
    spec: &VmSpec,
    name: &str,
    defaults: &Defaults,
    pci: Option<&dyn PciPlanner>,
) -> Result<Resolved> {
    let mut resolved = resolve::resolve(&LibvirtView(s), spec, name, defaults)?;
    if let Some(devices) = spec.pci_devices.as_deref().filter(|d| !d.is_empty()) {
        let planner = pci.ok_or_else(|| {
            Error::NotSupported("pci_devices: this vapord has no PCI support".into())
        })?;
        resolved.pci = Some(planner.plan(name, resolved.memory_mib, &resolved.machine, devices)?);
    }
    Ok(resolved)
}

pub(super) fn create_blocking(
    s: &Session,
    plan: Plan,
    uid: u32,
    intents: &IntentLog,
    defaults: &Defaults,
    pci: Option<&dyn PciPlanner>,
    progress: &dyn Progress,
) -> Result<String> {
    // The host may have changed while the caller was being authorized.
    let again = resolve_all(s, &plan.spec, &plan.resolved.name, defaults, pci)?;
    if again != plan.resolved {
        return Err(Error::Conflict(
            "the host's storage changed while the request was being authorized; nothing was made, try again"
                .into(),
        ));
    }
    // Every step is recorded before it is taken: if vapord dies half way,
    // the next start rolls the creation back (services::rollback::recover).
    let mut intent = intents.begin("vm-create", &plan.resolved.name, uid)?;
    let result = create_steps(s, &plan, progress, &mut intent);
    rollback::conclude(s, intent, result, "creation")
}

/// The volume a clone or a backing file is made from.
fn source_volume(s: &Session, path: &str, what: &str) -> Result<VolumeRecord> {
    s.volume_at(path)
        .and_then(|v| v.record())
        .map_err(|e| e.context(what))
}

fn create_steps(
    s: &Session,
    plan: &Plan,
    progress: &dyn Progress,
    intent: &mut Intent,
) -> Result<String> {
    let r = &plan.resolved;
    check_name_free(s, &r.name)?;
    let total: u64 = r
        .disks
        .iter()
        .filter(|d| d.is_created())
        .map(|d| gib(d.size_gib.unwrap_or(0)))
        .sum();
    let mut done = 0u64;
    let check_cancel = || {
        if progress.cancelled() {
            Err(Error::Failed(
                "creation was cancelled; everything it made was removed".into(),
            ))
        } else {
            Ok(())
        }
    };
    let to_make = r.disks.iter().filter(|d| d.is_created()).count();
    for (i, d) in r.disks.iter().filter(|d| d.is_created()).enumerate() {
        check_cancel()?;
        let (Some(pool_name), Some(vol_name)) = (&d.pool, &d.volume) else {
            return Err(Error::Failed(format!(
                "{}: no pool to create {} in",
                d.field, d.path
            )));
        };
        let what = format!("{}: cannot create {}", d.field, d.path);
        // Steps name no paths: Job properties are readable by everyone.
        progress.update(
            &format!("creating disk {} of {to_make}", i + 1),
            done,
            total,
        );
        let pool = s.pool_by_name(pool_name).map_err(|e| e.context(&what))?;
        intent.record(Step::Volume {
            path: d.path.clone(),
            not_before_ns: intent::now_ns(),
            made: false,
        })?;
        // Checked once more right before libvirt makes it: nothing (a
        // planted symlink included) may sit at the new name.
        if Path::new(&d.path).symlink_metadata().is_ok() {
            return Err(Error::Conflict(format!(
                "{what}: something appeared at {} meanwhile; nothing was kept",
                d.path
            )));
        }
        // A source must stay the file that was authorized while it is read.
        let source_before = d.source.as_deref().map(file_identity).transpose()?;
        // Made as written: a qcow2 disk is never preallocated by qemu-img
        // (which refuses that on a backing file).
        let as_written = Preallocation::RawOnly;
        let made = match d.action {
            DiskAction::Create => {
                let xml = volume_xml(
                    vol_name,
                    gib(d.size_gib.unwrap_or(1)),
                    &d.format,
                    None,
                    d.preallocate,
                );
                s.create_volume(&pool.uuid, &xml, as_written)
            }
            DiskAction::Clone => {
                let src_path = d.source.as_deref().unwrap_or_default();
                let src = source_volume(s, src_path, &what)?;
                let xml = volume_xml(vol_name, src.capacity, &d.format, None, d.preallocate);
                s.clone_volume(&pool.uuid, &xml, &src.key, as_written)
            }
            DiskAction::Backing => {
                let src_path = d.source.as_deref().unwrap_or_default();
                let src = source_volume(s, src_path, &what)?;
                let cap = src.capacity.max(gib(d.size_gib.unwrap_or(0)));
                let fmt = d.source_format.as_deref().unwrap_or("qcow2");
                let xml = volume_xml(vol_name, cap, "qcow2", Some((src_path, fmt)), d.preallocate);
                s.create_volume(&pool.uuid, &xml, as_written)
            }
            DiskAction::Attach => continue,
        }
        .map_err(|e| e.context(&what))?;
        // Undo by the path libvirt really used, and refuse if it is not the planned one.
        if made.path != d.path {
            intent.record(Step::Volume {
                path: made.path.clone(),
                not_before_ns: 0,
                made: true,
            })?;
            return Err(Error::Conflict(format!(
                "{what}: libvirt created it at {} instead (has the pool changed?)",
                made.path
            )));
        }
        intent.volume_made(&made.path)?;
        if let (Some(src), Some(before)) = (d.source.as_deref(), source_before) {
            if file_identity(src)? != before {
                return Err(Error::Conflict(format!(
                    "{what}: its source {src} was replaced while it was read; nothing was kept"
                )));
            }
        }
        if d.action == DiskAction::Clone {
            if let Some(size) = d.size_gib {
                s.resize_volume(&made.key, gib(size), false)
                    .map_err(|e| e.context(&what))?;
            }
        }
        done += gib(d.size_gib.unwrap_or(0));
        progress.update(&format!("created disk {} of {to_make}", i + 1), done, total);
    }

    if let (Some(seed), Some(ci)) = (&r.cloud_init_seed, plan_cloud_init(plan)) {
        check_cancel()?;
        progress.update("building the cloud-init seed", done, total);
        // Built in a private directory under the state directory: the seed
        // holds the user data, which can carry secrets.
        let dir = intent.scratch_dir()?;
        let tmp = dir.join("seed.iso");
        let built = cloud_init::build_seed_iso(&ci, &r.name, &tmp);
        let uploaded =
            built.and_then(|_| upload_file(s, &seed.pool, &seed.volume, &tmp, intent, &seed.path));
        let _ = std::fs::remove_dir_all(&dir);
        uploaded.map_err(|e| e.context("cloud_init"))?;
    }

    check_cancel()?;
    progress.update("defining the domain", done, total);
    // The files the guest will be given must still be the ones authorized:
    // no path may have turned into a symlink since it was resolved.
    recheck_paths(s, plan)?;
    let uuid = plan.uuid.clone();
    // An NVRAM file that already exists (left by an earlier VM of this name)
    // is not ours to delete on undo. Recorded as kept until we know better.
    intent.record(Step::Domain {
        uuid: uuid.clone(),
        keep_nvram: true,
    })?;
    let dom = s
        .define_domain(&plan.xml)
        .map_err(|e| e.context("libvirt refused the domain definition"))?;
    let nvram = dom
        .definition(Definition::Inactive)
        .ok()
        .and_then(|root| nvram_path(&root));
    match nvram {
        // libvirt would hand the new VM the firmware variables (boot entries,
        // enrolled keys) an earlier VM of this name left: not its to have.
        Some(p) if Path::new(&p).exists() => {
            return Err(Error::Conflict(format!(
                "name: firmware variables of an earlier VM named '{}' remain at {p}; \
                 delete them (or that VM with remove_storage) or choose another name",
                r.name
            )));
        }
        _ => intent.record(Step::Domain {
            uuid: uuid.clone(),
            keep_nvram: false,
        })?,
    }
    if r.autostart {
        dom.set_autostart(true)
            .map_err(|e| e.context("cannot enable autostart"))?;
    }
    if r.start {
        check_cancel()?;
        progress.update("starting", done, total);
        dom.start()
            .map_err(|e| e.context("the new VM failed to start"))?;
    }
    progress.update("done", total, total);
    Ok(uuid)
}

/// Which file `path` leads to (device and inode).
fn file_identity(path: &str) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Conflict(format!("{path} changed meanwhile: {e}")))?;
    Ok((meta.dev(), meta.ino()))
}

/// Refuse to go on if a path the guest will be given has become a symlink
/// (or moved) since the plan resolved it: what was authorized is what is used.
fn recheck_paths(s: &Session, plan: &Plan) -> Result<()> {
    let view = LibvirtView(s);
    for d in &plan.resolved.disks {
        let given = (!d.is_created()).then_some(&d.path);
        for p in given.into_iter().chain(d.source.iter()) {
            if !resolve::lands_on_itself(&view, p) {
                return Err(Error::Conflict(format!(
                    "{}: {p} changed (it now leads elsewhere) while the request was being \
                     carried out; nothing was kept, try again",
                    d.field
                )));
            }
        }
    }
    let kernel_files = plan.resolved.kernel_boot.iter().flat_map(|b| b.files());
    for (field, p) in kernel_files {
        if !resolve::lands_on_itself(&view, p) {
            return Err(Error::Conflict(format!(
                "{field}: {p} changed (it now leads elsewhere) while the request was being \
                 carried out; nothing was kept, try again"
            )));
        }
    }
    Ok(())
}

fn plan_cloud_init(plan: &Plan) -> Option<CloudInitSpec> {
    plan.resolved.cloud_init.clone()
}

/// Create a raw volume and fill it with a local file through libvirt.
pub(in crate::services) fn upload_file(
    s: &Session,
    pool: &str,
    volume: &str,
    file: &Path,
    intent: &mut Intent,
    path: &str,
) -> Result<()> {
    let unreadable =
        |e: std::io::Error| Error::Failed(format!("cannot read {}: {e}", file.display()));
    let src = std::fs::File::open(file).map_err(unreadable)?;
    let length = src.metadata().map_err(unreadable)?.len();
    let what = format!("cannot store {path}");
    let pool = s.pool_by_name(pool).map_err(|e| e.context(&what))?;
    intent.record(Step::Volume {
        path: path.to_owned(),
        not_before_ns: intent::now_ns(),
        made: false,
    })?;
    let xml = volume_xml(volume, length, "raw", None, true);
    let made = s
        .create_volume(&pool.uuid, &xml, Preallocation::RawOnly)
        .map_err(|e| e.context(&what))?;
    intent.volume_made(path)?;
    let never = Arc::new(AtomicBool::new(false));
    s.upload_volume(&made.key, src, length, Arc::new(|_| {}), never)
        .map(|_| ())
        .map_err(|e| e.context(&what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_volumes_are_sparse_unless_preallocated() {
        let sparse = volume_xml("a&b.qcow2", 1 << 30, "qcow2", None, false);
        assert!(sparse.contains("<name>a&amp;b.qcow2</name>"), "{sparse}");
        assert!(sparse.contains("<capacity unit='bytes'>1073741824</capacity>"));
        assert!(sparse.contains("<allocation unit='bytes'>0</allocation>"));
        assert!(!sparse.contains("backingStore"));
        let full = volume_xml("a.raw", 4096, "raw", None, true);
        assert!(
            full.contains("<allocation unit='bytes'>4096</allocation>"),
            "{full}"
        );
        let layered = volume_xml("top", 1, "qcow2", Some(("/p/base.raw", "raw")), false);
        assert!(
            layered.contains(
                "<backingStore><path>/p/base.raw</path><format type='raw'/></backingStore>"
            ),
            "{layered}"
        );
    }

    #[test]
    fn pools_without_a_target_hold_no_files() {
        let rec = PoolRecord {
            uuid: "u".into(),
            name: "default".into(),
            kind: "dir".into(),
            state: "running",
            autostart: true,
            persistent: true,
            target_path: "/var/lib/libvirt/images".into(),
            capacity: 100,
            allocation: 40,
            available: 60,
        };
        let info = pool_info(rec.clone()).unwrap();
        assert_eq!(
            info,
            PoolInfo {
                name: "default".into(),
                kind: "dir".into(),
                target: "/var/lib/libvirt/images".into(),
                active: true,
                capacity_bytes: 100,
                available_bytes: 60,
            }
        );
        let stopped = PoolRecord {
            state: "inactive",
            ..rec.clone()
        };
        assert!(!pool_info(stopped).unwrap().active);
        let rbd = PoolRecord {
            target_path: String::new(),
            ..rec
        };
        assert_eq!(pool_info(rbd), None);
    }
}
