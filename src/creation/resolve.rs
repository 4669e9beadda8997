//! Turning a validated spec into exactly what will be made: every path
//! absolute, every pool checked, every disk with its format, bus and target,
//! the boot ISO as a read-only cdrom. Pure logic over a [`StorageView`], so it
//! is unit-tested without libvirt and shared by creation and the dry run.
//!
//! Path rules (seed 000): an absolute path is used as is; a relative path is
//! a file in the disk's `storage_pool`, else in `storage.default_pool`; an
//! empty path gets a generated name in that pool. Pools must exist and be
//! active. Volumes are only ever created inside pools.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::boot::{self, is_i440fx, ResolvedBoot};
use super::spec::{Accel, CloudInitSpec, DiskAction, DiskSpec, GraphicsSpec, NetworkSpec, VmSpec};
use crate::{Error, Result};

/// What resolution needs to know about one storage pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    /// libvirt's pool type: `dir`, `fs`, `netfs`, `logical`, `disk`, …
    pub kind: String,
    /// The pool's directory (dir/fs pools) or device path prefix.
    pub target: String,
    pub active: bool,
    pub capacity_bytes: u64,
    /// Free space, as libvirt last saw it.
    pub available_bytes: u64,
}

/// The host's own bounds on one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Physical memory.
    pub memory_mib: u64,
    /// The hypervisor's vCPU maximum for this kind of guest.
    pub max_vcpus: u32,
}

impl HostLimits {
    /// No bound (for hosts that cannot tell).
    pub const NONE: HostLimits = HostLimits {
        memory_mib: u64::MAX,
        max_vcpus: u32::MAX,
    };
}

/// What resolution needs to know about a volume or file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// `qcow2`, `raw`, `iso` …, as libvirt reports it.
    pub format: String,
    pub capacity_bytes: u64,
    /// The pool holding it, when it is a libvirt volume.
    pub pool: Option<String>,
}

/// Read-only questions about host storage (libvirt in the daemon, a map in tests).
pub trait StorageView {
    fn pool(&self, name: &str) -> Option<PoolInfo>;
    fn pools(&self) -> Vec<PoolInfo>;
    /// The volume at this path, if libvirt knows one.
    fn volume(&self, path: &str) -> Option<VolumeInfo>;
    /// Whether anything exists at this path on the host.
    fn path_exists(&self, path: &str) -> bool;
    /// The path with symlinks resolved (as given when it does not exist).
    fn canonical(&self, path: &str) -> String {
        path.to_owned()
    }
    /// The backing files below a qcow2 image (empty for others).
    fn backing_chain(&self, _path: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// The host's own bounds on one VM.
    fn host_limits(&self) -> HostLimits {
        HostLimits::NONE
    }
}

/// One disk as it will be made and attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedDisk {
    /// Where it came from in the request (`storage.disks[1]`, `storage.boot_iso`).
    pub field: String,
    pub action: DiskAction,
    pub path: String,
    /// The pool it is created in (create, clone, backing) or lives in.
    pub pool: Option<String>,
    /// Volume name inside `pool` for volumes vapord creates.
    pub volume: Option<String>,
    pub size_gib: Option<u64>,
    pub format: String,
    pub device: String,
    pub bus: String,
    pub target: String,
    pub readonly: bool,
    /// Allocated in full now (else sparse).
    pub preallocate: bool,
    pub boot_order: Option<u32>,
    /// Clone source / backing image, absolute.
    pub source: Option<String>,
    pub source_format: Option<String>,
}

impl ResolvedDisk {
    /// Whether creation makes this volume (and so must remove it on failure).
    pub fn is_created(&self) -> bool {
        self.action != DiskAction::Attach
    }
}

/// The cloud-init seed ISO creation will build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedSeed {
    pub pool: String,
    pub volume: String,
    pub path: String,
    pub target: String,
    pub bus: String,
}

/// A fully resolved creation request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved {
    pub name: String,
    pub template: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub machine: String,
    pub uefi: bool,
    pub secure_boot: bool,
    pub tpm: bool,
    pub cpu_mode: String,
    /// Asked-for acceleration; the domain type follows from it and the
    /// host ([`boot::domain_type`]).
    pub accel: Accel,
    /// Direct kernel boot, if asked for.
    pub kernel_boot: Option<ResolvedBoot>,
    pub os_variant: Option<String>,
    pub autostart: bool,
    pub start: bool,
    pub disks: Vec<ResolvedDisk>,
    pub cloud_init_seed: Option<ResolvedSeed>,
    /// The seed's content (built at creation, not in the dry run).
    pub cloud_init: Option<CloudInitSpec>,
    pub networks: Vec<NetworkSpec>,
    pub graphics: Vec<GraphicsSpec>,
    pub metadata: BTreeMap<String, String>,
    /// Every pool the request creates something in (for polkit).
    pub pools_used: Vec<String>,
    /// Every pool the VM reads existing volumes from (attach, boot ISO,
    /// clone and backing sources, their backing chains): authorized per pool.
    pub pools_read: Vec<String>,
    /// Host files outside every pool the VM would use (attach, boot ISO,
    /// backing chains): authorized separately, since a guest can read
    /// whatever it is given.
    pub host_paths: Vec<String>,
    /// Host PCI devices, planned by a [`PciPlanner`] (None without any).
    pub pci: Option<ResolvedPci>,
}

pub const DEFAULT_MEMORY_MIB: u64 = 1024;
pub const DEFAULT_VCPUS: u32 = 1;

fn target_prefix(bus: &str) -> &'static str {
    match bus {
        "virtio" => "vd",
        "ide" => "hd",
        _ => "sd",
    }
}

/// The first free target name for `bus`, given those already taken.
pub fn next_target(bus: &str, taken: &HashSet<String>) -> Option<String> {
    let prefix = target_prefix(bus);
    let limit = if bus == "ide" { 4 } else { 26 };
    (b'a'..b'a' + limit)
        .map(|c| format!("{prefix}{}", c as char))
        .find(|t| !taken.contains(t))
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{field}: {msg}"))
}

/// Pools whose volumes are files in a directory anyone with write access to
/// it could replace with a link.
fn is_file_pool(kind: &str) -> bool {
    matches!(kind, "dir" | "fs" | "netfs")
}

/// Where a path really lands: symlinks resolved (a file that does not exist
/// yet by its resolved directory), and the pool whose directory directly
/// holds it, if any. Pool directories are compared resolved too.
fn locate(view: &dyn StorageView, path: &str) -> (String, Option<String>) {
    // In pools of devices (LVM, disks, iSCSI…) a volume's path is a link
    // the system made (`/dev/vg/lv` → `/dev/dm-3`), not one a pool user
    // planted: libvirt's own answer decides there.
    let parent = Path::new(path).parent();
    if let Some(pool) = view
        .volume(path)
        .and_then(|v| v.pool)
        .and_then(|p| view.pool(&p))
    {
        if !is_file_pool(&pool.kind) && parent == Some(Path::new(&pool.target)) {
            return (path.to_owned(), Some(pool.name));
        }
    }
    let real = if view.path_exists(path) {
        view.canonical(path)
    } else {
        match (Path::new(path).parent(), Path::new(path).file_name()) {
            (Some(dir), Some(file)) => {
                let dir = view.canonical(&dir.to_string_lossy());
                format!("{}/{}", dir.trim_end_matches('/'), file.to_string_lossy())
            }
            _ => path.to_owned(),
        }
    };
    let parent = Path::new(&real).parent().map(Path::to_path_buf);
    let owner = view
        .pools()
        .into_iter()
        .find(|p| {
            parent.as_deref() == Some(Path::new(&view.canonical(&p.target)))
                || parent.as_deref() == Some(Path::new(&p.target))
        })
        .map(|p| p.name);
    (real, owner)
}

/// Whether a resolved path still lands where it did when it was resolved
/// (no link planted on the way since).
pub fn lands_on_itself(view: &dyn StorageView, path: &str) -> bool {
    locate(view, path).0 == path
}

/// A path as the request spells it, made absolute per the seed's rules (a
/// plain name is a file in the pool), without following anything.
fn spelled_path(
    view: &dyn StorageView,
    field: &str,
    path: &str,
    pool: Option<&str>,
) -> Result<String> {
    if Path::new(path).is_absolute() {
        use std::path::Component;
        let odd = path.ends_with('/')
            || path.contains("//")
            || Path::new(path)
                .components()
                .any(|c| matches!(c, Component::CurDir | Component::ParentDir));
        if odd {
            return Err(invalid(
                field,
                format!(
                    "'{path}' must be a plain absolute path (no '.', '..', '//' or trailing '/')"
                ),
            ));
        }
        return Ok(path.to_owned());
    }
    if path.contains('/') || path == "." || path == ".." {
        return Err(invalid(
            field,
            format!("'{path}' must be an absolute path or a plain file name in a pool"),
        ));
    }
    let pool = pool.ok_or_else(|| {
        invalid(
            field,
            format!(
                "'{path}' is relative but neither storage_pool nor storage.default_pool is set"
            ),
        )
    })?;
    let info = checked_pool(view, field, pool)?;
    Ok(format!("{}/{path}", info.target.trim_end_matches('/')))
}

/// Resolve a path of an existing file and judge it by where it really lands:
/// a name in a pool that is a symlink to a file elsewhere is that file,
/// exactly as if the caller had written its path (so outside the pools it
/// needs `storage-host-path`). Returns the resolved absolute path and the
/// pool whose directory holds it (if any).
pub(super) fn resolve_path(
    view: &dyn StorageView,
    field: &str,
    path: &str,
    pool: Option<&str>,
) -> Result<(String, Option<String>)> {
    Ok(locate(view, &spelled_path(view, field, path, pool)?))
}

fn checked_pool(view: &dyn StorageView, field: &str, pool: &str) -> Result<PoolInfo> {
    let info = view
        .pool(pool)
        .ok_or_else(|| Error::NotFound(format!("{field}: storage pool '{pool}' does not exist")))?;
    if !info.active {
        return Err(Error::InvalidState(format!(
            "{field}: storage pool '{pool}' is not active (virsh pool-start {pool})"
        )));
    }
    Ok(info)
}

fn format_for_path(path: &str) -> &'static str {
    if path.ends_with(".qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

/// Resolve one disk entry (targets are assigned later, for all disks at once).
fn resolve_disk(
    view: &dyn StorageView,
    vm: &str,
    index: usize,
    d: &DiskSpec,
    default_pool: Option<&str>,
    machine: &str,
    cdrom_bus: &str,
) -> Result<ResolvedDisk> {
    let field = format!("storage.disks[{index}]");
    let pool_name = d.storage_pool.as_deref().or(default_pool);
    let device = d.device.clone().unwrap_or_else(|| "disk".into());
    if device == "cdrom" && d.action != DiskAction::Attach {
        return Err(invalid(
            &format!("{field}.device"),
            "a cdrom can only be attached",
        ));
    }
    match (d.action, d.size) {
        (DiskAction::Create, None) => {
            return Err(invalid(
                &format!("{field}.size"),
                "is required for action create",
            ))
        }
        (DiskAction::Attach, Some(_)) => {
            return Err(invalid(
                &format!("{field}.size"),
                "only create, clone and backing disks have a size",
            ))
        }
        _ if d.action == DiskAction::Attach && d.preallocate.is_some() => {
            return Err(invalid(
                &format!("{field}.preallocate"),
                "only create, clone and backing disks are allocated",
            ))
        }
        _ => {}
    }
    let creates = d.action != DiskAction::Attach;
    let default_format = match d.action {
        DiskAction::Create | DiskAction::Backing => "qcow2",
        _ => "",
    };
    let path_field = format!("{field}.path");
    let (path, pool, volume) = match d.path.as_deref().filter(|p| !p.is_empty()) {
        None if !creates => return Err(invalid(&path_field, "is required for action attach")),
        None => {
            let pool = pool_name.ok_or_else(|| {
                invalid(
                    &path_field,
                    "is empty and no storage_pool or storage.default_pool is set",
                )
            })?;
            let info = checked_pool(view, &field, pool)?;
            let ext = d.format.as_deref().unwrap_or(if default_format.is_empty() {
                "qcow2"
            } else {
                default_format
            });
            let volume = format!("{vm}-disk{index}.{ext}");
            (
                format!("{}/{volume}", info.target.trim_end_matches('/')),
                Some(info.name),
                Some(volume),
            )
        }
        Some(p) if creates => {
            // The new file's own name is never followed: anything already
            // there, a symlink included, is a conflict.
            let given = spelled_path(view, &path_field, p, pool_name)?;
            if view.path_exists(&given) || view.volume(&given).is_some() {
                return Err(Error::Conflict(format!(
                    "{path_field}: {given} already exists"
                )));
            }
            let volume = Path::new(&given)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned());
            let (_, pool) = locate(view, &given);
            let Some(pool) = pool else {
                return Err(invalid(
                    &path_field,
                    format!(
                        "{given} is not inside any storage pool; vapord creates volumes only in pools"
                    ),
                ));
            };
            // Spelled as libvirt will make it: the pool's directory and the name.
            let info = checked_pool(view, &path_field, &pool)?;
            let name = volume.clone().unwrap_or_default();
            (
                format!("{}/{name}", info.target.trim_end_matches('/')),
                Some(info.name),
                volume,
            )
        }
        Some(p) => {
            let (abs, pool) = resolve_path(view, &path_field, p, pool_name)?;
            (abs, pool, None)
        }
    };
    if creates {
        if view.path_exists(&path) || view.volume(&path).is_some() {
            return Err(Error::Conflict(format!(
                "{path_field}: {path} already exists"
            )));
        }
    } else if view.volume(&path).is_none() && !view.path_exists(&path) {
        return Err(Error::NotFound(format!(
            "{path_field}: {path} does not exist"
        )));
    }

    let (source, source_format, source_capacity) = match d.action {
        DiskAction::Clone | DiskAction::Backing => {
            let sf = format!("{field}.source");
            let src = d
                .source
                .as_deref()
                .ok_or_else(|| invalid(&sf, "is required for clone and backing disks"))?;
            let (abs, _) = resolve_path(view, &sf, src, pool_name)?;
            let vol = view.volume(&abs).ok_or_else(|| {
                Error::NotFound(format!(
                    "{sf}: {abs} is not a volume in a libvirt storage pool"
                ))
            })?;
            (Some(abs), Some(vol.format), Some(vol.capacity_bytes))
        }
        _ => (None, None, None),
    };
    let format = match (d.format.as_deref(), d.action) {
        (Some("raw"), DiskAction::Backing) => {
            return Err(invalid(
                &format!("{field}.format"),
                "a copy-on-write overlay is always qcow2",
            ))
        }
        (Some(f), _) => f.to_owned(),
        (None, DiskAction::Clone) => source_format.clone().unwrap_or_else(|| "qcow2".into()),
        (None, DiskAction::Attach) => view
            .volume(&path)
            .map(|v| {
                if v.format == "iso" {
                    "raw".into()
                } else {
                    v.format
                }
            })
            .unwrap_or_else(|| format_for_path(&path).into()),
        (None, _) => default_format.to_owned(),
    };
    // Other formats can name further files (a vmdk's parent, for one) that
    // vapord does not follow, so they are not given to guests.
    if !matches!(format.as_str(), "raw" | "qcow2") {
        return Err(invalid(
            &format!("{field}.format"),
            format!("{path} is a {format} image; only raw and qcow2 are supported"),
        ));
    }
    if let (Some(size), Some(cap)) = (d.size, source_capacity) {
        if size.saturating_mul(1 << 30) < cap {
            return Err(invalid(
                &format!("{field}.size"),
                format!(
                    "{size} GiB is smaller than the source ({} bytes); disks can only grow",
                    cap
                ),
            ));
        }
    }
    let bus = d.bus.clone().unwrap_or_else(|| {
        if device == "cdrom" {
            cdrom_bus.into()
        } else {
            "virtio".into()
        }
    });
    if device == "cdrom" && bus == "virtio" {
        return Err(invalid(
            &format!("{field}.bus"),
            "a cdrom cannot be on virtio (use sata, scsi or ide)",
        ));
    }
    if bus == "ide" && !is_i440fx(machine) {
        return Err(invalid(
            &format!("{field}.bus"),
            format!("machine {machine} has no IDE controller (use scsi or sata)"),
        ));
    }
    Ok(ResolvedDisk {
        field,
        action: d.action,
        path,
        pool,
        volume: if creates { volume } else { None },
        size_gib: d.size,
        format,
        readonly: d.readonly.unwrap_or(device == "cdrom"),
        preallocate: d.preallocate.unwrap_or(false),
        device,
        bus,
        target: d.target.clone().unwrap_or_default(),
        boot_order: d.boot_order,
        source,
        source_format,
    })
}

/// One host PCI device as it will be given to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedHostdev {
    pub host_address: String,
    /// Guest address, or None for libvirt to choose.
    pub guest_address: Option<String>,
    pub multifunction: bool,
    pub rom_file: Option<String>,
    pub primary_gpu: bool,
    /// The exact `<hostdev>` element.
    pub xml: String,
}

/// The PCI part of a creation: hostdevs, memory locking, vIOMMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedPci {
    pub hostdevs: Vec<ResolvedHostdev>,
    /// `<memtune><hard_limit>` in KiB (libvirt's VFIO rule).
    pub memlock_kib: u64,
    /// An emulated IOMMU for the guest (q35).
    pub viommu: bool,
    /// A passed-through GPU is the primary display: no emulated video.
    pub primary_gpu: bool,
}

/// Plans `pci_devices` for a creation: validation (every reason, naming
/// `pci_devices[i].<field>`) and guest placement. Implemented by the PCI
/// service; kept as a trait so creation does not depend on sysfs.
pub trait PciPlanner: Send + Sync {
    fn plan(
        &self,
        vm_name: &str,
        memory_mib: u64,
        machine: &str,
        devices: &[super::spec::PciDeviceSpec],
    ) -> Result<ResolvedPci>;
}

/// Defaults the daemon supplies where the spec is silent, and its limits.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub cpu_mode: String,
    /// `[limits]` from the configuration (unset: the host's own).
    pub limits: crate::config::Limits,
}

/// Resolve a merged, validated spec for the VM `name`.
pub fn resolve(
    view: &dyn StorageView,
    spec: &VmSpec,
    name: &str,
    defaults: &Defaults,
) -> Result<Resolved> {
    let machine = spec.machine.clone().unwrap_or_else(|| "q35".into());
    let secure_boot = spec.secure_boot.unwrap_or(false);
    let uefi = spec.uefi.unwrap_or(false) || secure_boot;
    if spec.uefi == Some(false) && secure_boot {
        return Err(invalid("secure_boot", "needs uefi (uefi is false)"));
    }
    if secure_boot && is_i440fx(&machine) {
        return Err(invalid(
            "secure_boot",
            format!("needs machine q35 (got {machine})"),
        ));
    }
    let storage = spec.storage.clone().unwrap_or_default();
    let default_pool = storage.default_pool.as_deref();
    if let Some(p) = default_pool {
        checked_pool(view, "storage.default_pool", p)?;
    }
    let cdrom_bus = boot::cdrom_bus(
        &machine,
        spec.os_variant.as_deref(),
        storage.cdrom_bus.as_deref(),
    )?;
    let mut disks = Vec::new();
    for (i, d) in storage.disks.iter().flatten().enumerate() {
        disks.push(resolve_disk(
            view,
            name,
            i,
            d,
            default_pool,
            &machine,
            cdrom_bus,
        )?);
    }
    let mut seen = HashSet::new();
    for d in &disks {
        if !seen.insert(d.path.clone()) {
            return Err(invalid(
                &format!("{}.path", d.field),
                format!("{} is used twice", d.path),
            ));
        }
    }

    if let Some(iso) = storage.boot_iso.as_deref() {
        let (path, pool) = resolve_path(view, "storage.boot_iso", iso, default_pool)?;
        if view.volume(&path).is_none() && !view.path_exists(&path) {
            return Err(Error::NotFound(format!(
                "storage.boot_iso: {path} does not exist"
            )));
        }
        if let Some(dup) = disks.iter().find(|d| d.device == "cdrom" && d.path == path) {
            return Err(invalid(
                "storage.boot_iso",
                format!("{path} is already attached as a cdrom in {}", dup.field),
            ));
        }
        let any_boot_order = disks.iter().any(|d| d.boot_order.is_some());
        if !any_boot_order {
            if let Some(first) = disks.iter_mut().find(|d| d.device == "disk") {
                first.boot_order = Some(2);
            }
        }
        disks.push(ResolvedDisk {
            field: "storage.boot_iso".into(),
            action: DiskAction::Attach,
            path,
            pool,
            volume: None,
            size_gib: None,
            format: "raw".into(),
            device: "cdrom".into(),
            bus: cdrom_bus.into(),
            target: String::new(),
            readonly: true,
            preallocate: false,
            boot_order: (!any_boot_order).then_some(1),
            source: None,
            source_format: None,
        });
    }

    // Targets: explicit ones first (refusing duplicates), then the next free.
    let mut taken = HashSet::new();
    for d in disks.iter().filter(|d| !d.target.is_empty()) {
        if !taken.insert(d.target.clone()) {
            return Err(invalid(
                &format!("{}.target", d.field),
                format!("{} is used twice", d.target),
            ));
        }
        if !d.target.starts_with(target_prefix(&d.bus)) {
            return Err(invalid(
                &format!("{}.target", d.field),
                format!(
                    "{} does not fit bus {} (expected {}…)",
                    d.target,
                    d.bus,
                    target_prefix(&d.bus)
                ),
            ));
        }
    }
    for d in disks.iter_mut().filter(|d| d.target.is_empty()) {
        d.target = next_target(&d.bus, &taken)
            .ok_or_else(|| invalid(&d.field, format!("no free target left on bus {}", d.bus)))?;
        taken.insert(d.target.clone());
    }

    let cloud_init_seed = match &spec.cloud_init {
        None => None,
        Some(ci) => {
            super::cloud_init::check(ci)?;
            let pool = default_pool
                .map(String::from)
                .or_else(|| disks.iter().find_map(|d| d.pool.clone()))
                .ok_or_else(|| {
                    invalid(
                        "cloud_init",
                        "needs storage.default_pool to store its seed ISO",
                    )
                })?;
            let info = checked_pool(view, "cloud_init", &pool)?;
            let volume = format!("{name}-cidata.iso");
            let path = format!("{}/{volume}", info.target.trim_end_matches('/'));
            if view.path_exists(&path) || view.volume(&path).is_some() {
                return Err(Error::Conflict(format!(
                    "cloud_init: {path} already exists"
                )));
            }
            let bus = cdrom_bus.to_owned();
            let target = next_target(&bus, &taken).ok_or_else(|| {
                invalid("cloud_init", format!("no free target left on bus {bus}"))
            })?;
            Some(ResolvedSeed {
                pool: info.name,
                volume,
                path,
                target,
                bus,
            })
        }
    };

    let mut pools_used: Vec<String> = disks
        .iter()
        .filter(|d| d.is_created())
        .filter_map(|d| d.pool.clone())
        .chain(cloud_init_seed.iter().map(|s| s.pool.clone()))
        .collect();
    pools_used.sort();
    pools_used.dedup();

    // What the VM reads: the files it is given and everything below them,
    // each judged by where it really lands.
    let mut pools_read = Vec::new();
    let mut host_paths = Vec::new();
    let mut note = |p: &str| match locate(view, p) {
        (_, Some(pool)) => pools_read.push(pool),
        (real, None) => host_paths.push(real),
    };
    for d in &disks {
        let read: Vec<&str> = match d.action {
            DiskAction::Attach => vec![d.path.as_str()],
            DiskAction::Clone | DiskAction::Backing => {
                d.source.iter().map(String::as_str).collect()
            }
            DiskAction::Create => Vec::new(),
        };
        for p in read {
            note(p);
            let below = view.backing_chain(p).map_err(|e| e.context(&d.field))?;
            for below in below {
                note(&below);
            }
        }
    }
    let kernel_boot = spec
        .boot
        .as_ref()
        .map(|b| boot::resolve_boot(view, b, default_pool))
        .transpose()?;
    for (_, p) in kernel_boot.iter().flat_map(ResolvedBoot::files) {
        note(p);
    }
    pools_read.sort();
    pools_read.dedup();
    host_paths.sort();
    host_paths.dedup();

    let resolved = Resolved {
        name: name.to_owned(),
        template: spec.template.clone(),
        memory_mib: spec.memory.unwrap_or(DEFAULT_MEMORY_MIB),
        vcpus: spec.vcpus.unwrap_or(DEFAULT_VCPUS),
        machine,
        uefi,
        secure_boot,
        tpm: spec.tpm.unwrap_or(false),
        cpu_mode: spec
            .cpu_mode
            .clone()
            .unwrap_or_else(|| defaults.cpu_mode.clone()),
        accel: spec.accel.unwrap_or_default(),
        kernel_boot,
        os_variant: spec.os_variant.clone(),
        autostart: spec.autostart.unwrap_or(false),
        start: spec.start.unwrap_or(false),
        disks,
        cloud_init_seed,
        cloud_init: spec.cloud_init.clone(),
        networks: spec.networks.clone().unwrap_or_default(),
        graphics: spec.graphics.clone().unwrap_or_default(),
        metadata: spec.metadata.clone().unwrap_or_default(),
        pools_used,
        pools_read,
        host_paths,
        pci: None,
    };
    super::limits::check(view, &resolved, &defaults.limits)?;
    Ok(resolved)
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
