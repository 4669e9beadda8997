//! Storage pools and volumes: the event-fed cache behind their bus objects,
//! and every change a caller may ask for.
//!
//! The cache follows libvirt's pool lifecycle and refresh events, re-reads a
//! pool after every operation vapord performs on it, re-reads everything
//! after a (re)connect, and recomputes `UsedBy`/`OwnedBy` whenever what the
//! domains use changes ([`References`]). Deleting a volume follows the VM
//! deletion rules ([`storage_ownership::decide_volume`]). Work that makes a
//! volume (create, clone, upload) is recorded as an intent first, so a crash
//! part way is undone at the next start.
//!
//! This module knows nothing about D-Bus or polkit.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedReceiver;

use super::references::References;
use super::rollback::{undo, Undoer};
use super::storage_ownership::{self, canonical, Verdict};
use crate::intent::{now_ns, IntentLog, Step};
use crate::libvirt::storage::{PoolRecord, VolumeRecord};
use crate::libvirt::Hypervisor;
use crate::progress::Progress;
use crate::storage::spec::{self, PoolKind, PoolSpec, VolumeFormat, VolumeSpec};
use crate::store::{Change, Keyed, Store};
use crate::{Error, Result};

/// A pool as published: libvirt's record and the names of its volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolView {
    pub rec: PoolRecord,
    /// Keys ([`volume_key`]) of its volumes, sorted.
    pub volumes: Vec<String>,
}

impl Keyed for PoolView {
    fn key(&self) -> &str {
        &self.rec.uuid
    }
}

/// A volume as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeView {
    /// `<pool uuid>/<volume name>`: stable and unique.
    pub id: String,
    pub rec: VolumeRecord,
    pub pool_name: String,
    /// `rec.path` with symlinks resolved, as read when the record was (the
    /// key into what the domains use).
    pub real_path: String,
    /// The ISO 9660 volume label, "" when none.
    pub label: String,
    /// Domains (uuid, name) using it, backing chains included.
    pub used_by: Vec<(String, String)>,
    /// The domain vapord created it for.
    pub owned_by: Option<String>,
}

impl Keyed for VolumeView {
    fn key(&self) -> &str {
        &self.id
    }
}

/// The stable identity of a volume: its pool and its name.
pub fn volume_key(pool_uuid: &str, name: &str) -> String {
    format!("{pool_uuid}/{name}")
}

/// The ISO 9660 volume label of an image file (primary volume descriptor
/// at 32 KiB: type 1, "CD001", label at byte 40, 32 characters). Only a
/// regular file is read: the path is opened without following a final
/// symlink and without waiting (a FIFO put in a pool never blocks).
pub fn iso_label(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    f.seek(SeekFrom::Start(32768)).ok()?;
    let mut pvd = [0u8; 72];
    f.read_exact(&mut pvd).ok()?;
    iso_label_of(&pvd)
}

/// The label from the first 72 bytes of a primary volume descriptor.
pub fn iso_label_of(pvd: &[u8]) -> Option<String> {
    if pvd.len() < 72 || pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    let label: String = pvd[40..72]
        .iter()
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    Some(label.trim().to_owned()).filter(|l| !l.is_empty())
}

/// libvirt's own directory: its domain, network and driver state. No pool
/// may lie in it but in [`LIBVIRT_IMAGES`].
pub const LIBVIRT_DIR: &str = "/var/lib/libvirt";
/// The one part of [`LIBVIRT_DIR`] meant for pools.
pub const LIBVIRT_IMAGES: &str = "/var/lib/libvirt/images";

/// Why no pool may have its target at `target`, if so (all paths
/// canonical; pure). A pool's files can be created, overwritten and deleted
/// by whoever may manage storage, so no pool may be vapord's state
/// directory, hold it or lie in it (except in a pool root inside it), nor
/// lie among libvirt's own files (`libvirt` but for `images`).
pub fn forbidden_target(
    target: &Path,
    state_dir: &Path,
    roots: &[PathBuf],
    libvirt: &Path,
    images: &Path,
) -> Option<String> {
    let state = state_dir.display();
    if state_dir == target {
        return Some(format!("is vapord's state directory {state}"));
    }
    if state_dir.starts_with(target) {
        return Some(format!("would hold vapord's state directory {state}"));
    }
    let in_root_inside_state = roots
        .iter()
        .any(|r| r != state_dir && r.starts_with(state_dir) && target.starts_with(r));
    if target.starts_with(state_dir) && !in_root_inside_state {
        return Some(format!("lies inside vapord's state directory {state}"));
    }
    if target.starts_with(libvirt) && !target.starts_with(images) {
        return Some(format!(
            "lies among libvirt's own files in {} (only {} is for pools)",
            libvirt.display(),
            images.display()
        ));
    }
    None
}

/// Why creating this pool needs the `storage-host-path` action, if it
/// does: it puts a pool (where callers then create and delete files) on a
/// host path outside `roots`, takes host devices, or mounts or attaches
/// what a remote server decides. A target no pool may have at all (see
/// [`forbidden_target`]; `state_dir` is vapord's) is `InvalidArgument`
/// naming `target`. Paths are compared with symlinks followed for the part
/// that exists.
pub fn pool_host_paths(
    spec: &PoolSpec,
    roots: &[&str],
    state_dir: &Path,
) -> Result<Option<String>> {
    let real = |p: &str| PathBuf::from(canonical_existing(p));
    let target = real(&spec.target);
    let real_roots: Vec<PathBuf> = roots.iter().map(|r| real(r)).collect();
    let state = real(&state_dir.to_string_lossy());
    let (libvirt, images) = (real(LIBVIRT_DIR), real(LIBVIRT_IMAGES));
    if let Some(why) = forbidden_target(&target, &state, &real_roots, &libvirt, &images) {
        return Err(Error::InvalidArgument(format!(
            "target: {} {why}",
            spec.target
        )));
    }
    let inside = real_roots.iter().any(|r| target.starts_with(r));
    let host = |s: &Option<String>| s.as_deref().unwrap_or("?").to_owned();
    Ok(match spec.kind {
        PoolKind::Dir if inside => None,
        PoolKind::Dir => Some(format!(
            "a pool at {} (outside {})",
            spec.target,
            roots.join(", ")
        )),
        PoolKind::Fs => Some(format!(
            "a pool on the host device {}",
            spec.source.device.join(", ")
        )),
        PoolKind::Netfs => Some(format!(
            "a pool mounting {}:{} at {} (the remote side decides what appears on the host)",
            host(&spec.source.host),
            host(&spec.source.dir),
            spec.target
        )),
        PoolKind::Logical => Some(format!(
            "the host volume group {}",
            spec.source.name.as_deref().unwrap_or(&spec.target)
        )),
        PoolKind::Iscsi => Some(format!(
            "a pool attaching the iSCSI target {} of {} (the remote side decides what appears on the host)",
            host(&spec.source.target_iqn),
            host(&spec.source.host)
        )),
    })
}

/// The real path of `p`: symlinks followed for the part that exists.
fn canonical_existing(p: &str) -> String {
    let mut path = Path::new(p).to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&path) {
            let mut out = real;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out.to_string_lossy().into_owned();
        }
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                path = parent.to_path_buf();
            }
            _ => return p.to_owned(),
        }
    }
}

/// Where pools may be put without `storage-host-path`.
pub const POOL_ROOTS: &[&str] = &[LIBVIRT_IMAGES, "/var/lib/vapor/pools"];

/// Pool types whose volumes are not files in the pool's directory: block
/// devices (their paths are links under /dev the system made) or network
/// objects. Every other type's volumes are checked (see
/// [`volume_path_problem`]).
const NOT_FILE_POOLS: &[&str] = &[
    "logical",
    "iscsi",
    "iscsi-direct",
    "disk",
    "scsi",
    "mpath",
    "zfs",
    "rbd",
    "sheepdog",
    "gluster",
];

/// What the file system says about a volume's path and its pool's target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathFacts {
    /// The path itself is a symbolic link (lstat).
    pub symlink: bool,
    /// The path with every symlink resolved; `None` if it cannot be.
    pub real: Option<PathBuf>,
    /// The pool's target path resolved; `None` if it cannot be.
    pub pool_real: Option<PathBuf>,
}

impl PathFacts {
    /// Read them (blocking: file system calls).
    pub fn read(path: &str, pool_target: &str) -> Self {
        let resolve = |p: &str| {
            (!p.is_empty())
                .then(|| std::fs::canonicalize(p).ok())
                .flatten()
        };
        PathFacts {
            symlink: std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()),
            real: resolve(path),
            pool_real: resolve(pool_target),
        }
    }
}

/// Why vapord may not read, write or delete a volume at `path` of a pool
/// of type `pool_kind`, if so (pure). A file pool's volume must be a file
/// (not a symlink) that really lies in the pool's directory: otherwise an
/// upload, wipe, resize or delete would act on whatever the link (or a
/// linked directory on the way) leads to.
pub fn volume_path_problem(pool_kind: &str, path: &str, facts: &PathFacts) -> Option<String> {
    if NOT_FILE_POOLS.contains(&pool_kind) {
        return None;
    }
    if facts.symlink {
        return Some(format!("{path} is a symbolic link"));
    }
    let Some(pool) = &facts.pool_real else {
        return Some(format!(
            "the directory of the pool of {path} cannot be resolved"
        ));
    };
    match &facts.real {
        None => Some(format!("{path} cannot be resolved")),
        Some(real) if real != pool && real.starts_with(pool) => None,
        Some(real) => Some(format!(
            "{path} leads to {}, outside the pool's directory {}",
            real.display(),
            pool.display()
        )),
    }
}

/// At most this many transfers (uploads and downloads) run at once for
/// one caller …
pub const MAX_TRANSFERS_PER_CALLER: usize = 4;
/// … and in all.
pub const MAX_TRANSFERS: usize = 16;

/// Counts of running transfers, so no caller can tie up every daemon
/// thread with descriptors it never serves.
#[derive(Debug)]
pub struct Transfers {
    per_caller: usize,
    total: usize,
    running: Mutex<HashMap<u32, usize>>,
}

/// One running transfer; its slot is given back on drop.
#[derive(Debug)]
pub struct TransferSlot<'a> {
    transfers: &'a Transfers,
    uid: u32,
}

impl Transfers {
    pub fn new(per_caller: usize, total: usize) -> Self {
        Transfers {
            per_caller,
            total,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more transfer of caller `uid`, or `LimitExceeded`
    /// naming the limit reached.
    pub fn take(&self, uid: u32) -> Result<TransferSlot<'_>> {
        let mut running = self.running();
        let total: usize = running.values().sum();
        let mine = running.get(&uid).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(Error::LimitExceeded(format!(
                "at most {} uploads and downloads may run at once per caller; wait for one to finish",
                self.per_caller
            )));
        }
        if total >= self.total {
            return Err(Error::LimitExceeded(format!(
                "at most {} uploads and downloads may run at once; try again later",
                self.total
            )));
        }
        *running.entry(uid).or_insert(0) += 1;
        Ok(TransferSlot {
            transfers: self,
            uid,
        })
    }

    /// Transfers running now: (this caller's, all).
    pub fn count(&self, uid: u32) -> (usize, usize) {
        let running = self.running();
        (
            running.get(&uid).copied().unwrap_or(0),
            running.values().sum(),
        )
    }
}

impl Drop for TransferSlot<'_> {
    fn drop(&mut self) {
        let mut running = self.transfers.running();
        if let Some(n) = running.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.uid);
            }
        }
    }
}

/// Whether growing a volume by `growth` bytes fits the free space of its
/// pool (pure).
fn growth_fits(what: &str, growth: u64, pool: &PoolRecord) -> Result<()> {
    if growth > pool.available {
        return Err(Error::LimitExceeded(format!(
            "{what} grows the volume by {growth} bytes, more than pool '{}' has free ({} bytes)",
            pool.name, pool.available
        )));
    }
    Ok(())
}

/// Whether a pool may be deleted as asked (pure): its volumes go only with
/// `delete_volumes`, and only from a started pool (an inactive pool's
/// volumes cannot be listed, so nobody could check who uses them).
fn check_pool_deletion(pool: &PoolRecord, delete_volumes: bool, volumes: usize) -> Result<()> {
    if delete_volumes && !pool.is_active() {
        return Err(Error::InvalidState(format!(
            "storage pool '{}' is not running: start the pool first so its volumes can be checked",
            pool.name
        )));
    }
    if volumes > 0 && !delete_volumes {
        return Err(Error::InvalidState(format!(
            "storage pool '{}' still holds {volumes} volume(s); delete them first or pass delete_volumes",
            pool.name
        )));
    }
    Ok(())
}

/// The path an intent records for a volume about to be made in a pool with
/// this target: only an absolute one (a relative path would name a file
/// relative to wherever recovery runs); otherwise the volume is recorded
/// once libvirt returns its real path (pure).
fn expected_volume_path(target: &str, name: &str) -> Option<String> {
    let target = Path::new(target);
    target
        .is_absolute()
        .then(|| target.join(name).to_string_lossy().into_owned())
}

/// Whether a pool's previous records are replaced by a new listing: not
/// when the listing could not read it (pure).
fn in_removal_scope(skipped: &HashSet<String>, pool_uuid: &str) -> bool {
    !skipped.contains(pool_uuid)
}

/// Run blocking work (file system reads) from async code without stalling
/// the tasks that share its worker: `block_in_place` on the multi-thread
/// runtime vapord uses, simply in place on any other (a current-thread
/// runtime in tests) or outside one.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub struct StorageService {
    hv: Arc<Hypervisor>,
    refs: Arc<References>,
    intents: Arc<IntentLog>,
    pools: Store<PoolView>,
    volumes: Store<VolumeView>,
    /// Serialises read-then-apply so an older reading never wins.
    refresh_lock: tokio::sync::Mutex<()>,
    /// ISO labels by (path, capacity): read once per image.
    labels: Mutex<HashMap<(String, u64), String>>,
    /// vapord's state directory: no pool may touch it.
    state_dir: PathBuf,
    /// Uploads and downloads running.
    transfers: Transfers,
}

pub type PoolChange = Change<PoolView>;
pub type VolumeChange = Change<VolumeView>;

impl StorageService {
    pub fn new(
        hv: Arc<Hypervisor>,
        refs: Arc<References>,
        intents: Arc<IntentLog>,
        state_dir: PathBuf,
    ) -> (
        Arc<Self>,
        UnboundedReceiver<PoolChange>,
        UnboundedReceiver<VolumeChange>,
    ) {
        let tickets = Arc::new(AtomicU64::new(1));
        let (pools, prx) = Store::new(tickets.clone());
        let (volumes, vrx) = Store::new(tickets);
        let svc = Arc::new(Self {
            hv,
            refs,
            intents,
            pools,
            volumes,
            refresh_lock: tokio::sync::Mutex::new(()),
            labels: Mutex::new(HashMap::new()),
            state_dir,
            transfers: Transfers::new(MAX_TRANSFERS_PER_CALLER, MAX_TRANSFERS),
        });
        (svc, prx, vrx)
    }

    // ----- reading -----

    pub fn pool(&self, uuid: &str) -> Option<Arc<PoolView>> {
        self.pools.get(uuid)
    }

    /// A pool by UUID or name.
    pub fn find_pool(&self, name_or_uuid: &str) -> Option<Arc<PoolView>> {
        self.pools
            .get(name_or_uuid)
            .or_else(|| self.pools.find(|p| p.rec.name == name_or_uuid))
    }

    /// Every pool, by name.
    pub fn pools(&self) -> Vec<Arc<PoolView>> {
        let mut v = self.pools.all();
        v.sort_by(|a, b| a.rec.name.cmp(&b.rec.name));
        v
    }

    pub fn volume(&self, id: &str) -> Option<Arc<VolumeView>> {
        self.volumes.get(id)
    }

    /// A pool's volume by name.
    pub fn volume_named(&self, pool_uuid: &str, name: &str) -> Option<Arc<VolumeView>> {
        self.volumes.get(&volume_key(pool_uuid, name))
    }

    /// The volume at a host path (canonical comparison; blocking: it
    /// resolves `path`).
    pub fn volume_at(&self, path: &str) -> Option<Arc<VolumeView>> {
        let real = canonical(path);
        self.volumes
            .find(|v| v.rec.path == path || v.real_path == real)
    }

    pub fn volumes(&self) -> Vec<Arc<VolumeView>> {
        self.volumes.all()
    }

    fn need_pool(&self, uuid: &str) -> Result<Arc<PoolView>> {
        self.pool(uuid)
            .ok_or_else(|| Error::NotFound(format!("storage pool {uuid} no longer exists")))
    }

    fn need_volume(&self, id: &str) -> Result<Arc<VolumeView>> {
        self.volume(id)
            .ok_or_else(|| Error::NotFound(format!("volume {id} no longer exists")))
    }

    // ----- keeping the cache current -----

    /// A volume's view (blocking: it resolves the path and may read the
    /// ISO label; see [`off_worker`]).
    fn view_of(&self, rec: VolumeRecord, pool_name: &str) -> VolumeView {
        let real = canonical(&rec.path);
        let label = self.label_of(&rec);
        VolumeView {
            id: volume_key(&rec.pool_uuid, &rec.name),
            pool_name: pool_name.to_owned(),
            label,
            used_by: self.refs.users_of_path(&real),
            owned_by: self.refs.owner_of(&real),
            real_path: real,
            rec,
        }
    }

    fn label_of(&self, rec: &VolumeRecord) -> String {
        if rec.kind != "file" || !matches!(rec.format.as_str(), "raw" | "iso" | "") {
            return String::new();
        }
        let key = (rec.path.clone(), rec.capacity);
        if let Some(l) = self
            .labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return l.clone();
        }
        let label = iso_label(Path::new(&rec.path)).unwrap_or_default();
        self.labels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, label.clone());
        label
    }

    fn pool_view(rec: PoolRecord, vols: &[VolumeRecord]) -> PoolView {
        let mut volumes: Vec<String> = vols
            .iter()
            .map(|v| volume_key(&v.pool_uuid, &v.name))
            .collect();
        volumes.sort();
        PoolView { rec, volumes }
    }

    /// Re-read every pool and volume.
    pub async fn resync(&self) -> Result<()> {
        let _serial = self.refresh_lock.lock().await;
        let ticket = self.pools.ticket();
        let listing = self.hv.storage_listing().await?;
        let skipped: HashSet<String> = listing.skipped.iter().cloned().collect();
        let names: HashMap<String, String> = listing
            .pools
            .iter()
            .map(|p| (p.uuid.clone(), p.name.clone()))
            .collect();
        let mut by_pool: HashMap<String, Vec<VolumeRecord>> = HashMap::new();
        for v in &listing.volumes {
            by_pool
                .entry(v.pool_uuid.clone())
                .or_default()
                .push(v.clone());
        }
        let pools: Vec<PoolView> = listing
            .pools
            .into_iter()
            .filter(|p| in_removal_scope(&skipped, &p.uuid))
            .map(|p| {
                let vols = by_pool.get(&p.uuid).map(Vec::as_slice).unwrap_or(&[]);
                Self::pool_view(p, vols)
            })
            .collect();
        let volumes: Vec<VolumeView> = off_worker(|| {
            listing
                .volumes
                .into_iter()
                .filter(|v| in_removal_scope(&skipped, &v.pool_uuid))
                .map(|v| {
                    let pool = names.get(&v.pool_uuid).cloned().unwrap_or_default();
                    self.view_of(v, &pool)
                })
                .collect()
        });
        // A pool libvirt could not read now keeps what was known of it.
        let pool_scope = |p: &PoolView| in_removal_scope(&skipped, &p.rec.uuid);
        let volume_scope = |v: &VolumeView| in_removal_scope(&skipped, &v.rec.pool_uuid);
        self.pools.replace_scope(pools, pool_scope, ticket);
        self.volumes.replace_scope(volumes, volume_scope, ticket);
        Ok(())
    }

    /// Re-read one pool and its volumes (after an event or an operation).
    pub async fn resync_pool(&self, uuid: &str) -> Result<()> {
        let _serial = self.refresh_lock.lock().await;
        let ticket = self.pools.ticket();
        let in_pool = |v: &VolumeView| v.rec.pool_uuid == uuid;
        match self.hv.pool_listing(uuid).await? {
            None => {
                self.pools.apply(uuid, None, ticket);
                self.volumes.replace_scope(Vec::new(), in_pool, ticket);
            }
            Some((rec, vols)) => {
                let name = rec.name.clone();
                self.pools
                    .apply(uuid, Some(Self::pool_view(rec, &vols)), ticket);
                let views =
                    off_worker(|| vols.into_iter().map(|v| self.view_of(v, &name)).collect());
                self.volumes.replace_scope(views, in_pool, ticket);
            }
        }
        Ok(())
    }

    /// What the domains use changed: recompute UsedBy and OwnedBy (from
    /// each volume's path as resolved when it was read: no file system
    /// access; the matching runs off the async worker all the same, it
    /// grows with volumes × domains).
    pub fn references_changed(&self) {
        let ticket = self.volumes.ticket();
        off_worker(|| {
            for v in self.volumes.all() {
                let used_by = self.refs.users_of_path(&v.real_path);
                let owned_by = self.refs.owner_of(&v.real_path);
                if used_by != v.used_by || owned_by != v.owned_by {
                    let mut new = (*v).clone();
                    new.used_by = used_by;
                    new.owned_by = owned_by;
                    self.volumes.apply(&v.id, Some(new), ticket);
                }
            }
        });
    }

    /// Re-read a pool after an operation; failures only delay the update
    /// (the next event or resync brings it).
    async fn settle(&self, pool_uuid: &str) {
        if let Err(e) = self.resync_pool(pool_uuid).await {
            log::debug!("cannot re-read storage pool {pool_uuid}: {e}");
        }
    }

    // ----- pools -----

    /// The pool XML a spec becomes (the dry run).
    pub fn plan_pool(&self, spec: &PoolSpec) -> String {
        spec::pool_xml(spec)
    }

    /// Why the pool needs `storage-host-path`, if it does; a target no
    /// pool may have is `InvalidArgument` (see [`pool_host_paths`], with
    /// [`POOL_ROOTS`] and vapord's state directory). Resolves paths off the
    /// async workers.
    pub async fn pool_host_paths(&self, spec: &PoolSpec) -> Result<Option<String>> {
        let (spec, state_dir) = (spec.clone(), self.state_dir.clone());
        tokio::task::spawn_blocking(move || pool_host_paths(&spec, POOL_ROOTS, &state_dir))
            .await
            .map_err(|e| Error::Failed(format!("path check failed: {e}")))?
    }

    /// Define (and build, start, autostart as asked) a pool: all or nothing.
    /// A target no pool may have is refused here too, whoever asks.
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<String> {
        self.pool_host_paths(spec).await?;
        if self.pools.find(|p| p.rec.name == spec.name).is_some() {
            return Err(Error::Conflict(format!(
                "name: a storage pool named '{}' already exists",
                spec.name
            )));
        }
        let uuid = self
            .hv
            .define_pool(spec::pool_xml(spec), spec.build, spec.start, spec.autostart)
            .await?;
        self.settle(&uuid).await;
        Ok(uuid)
    }

    pub async fn start_pool(&self, uuid: &str, build: bool) -> Result<()> {
        self.need_pool(uuid)?;
        let r = self.hv.start_pool(uuid, build).await;
        self.settle(uuid).await;
        r
    }

    /// Running VMs using any volume of the pool, by name (asked of libvirt).
    async fn running_users_of_pool(&self, uuid: &str) -> Vec<String> {
        let mut users: Vec<(String, String)> = self
            .volumes
            .all()
            .iter()
            .filter(|v| v.rec.pool_uuid == uuid)
            .flat_map(|v| v.used_by.clone())
            .collect();
        users.sort();
        users.dedup();
        let running = super::network::running_now(&self.hv, &users).await;
        super::network::running_users(&users, &running)
    }

    pub async fn stop_pool(&self, uuid: &str) -> Result<()> {
        let pool = self.need_pool(uuid)?;
        let users = self.running_users_of_pool(uuid).await;
        if !users.is_empty() {
            return Err(Error::InvalidState(format!(
                "storage pool '{}' is in use by running VMs: {}",
                pool.rec.name,
                users.join(", ")
            )));
        }
        let r = self.hv.stop_pool(uuid).await;
        self.settle(uuid).await;
        r
    }

    pub async fn refresh_pool(&self, uuid: &str) -> Result<()> {
        self.need_pool(uuid)?;
        let r = self.hv.refresh_pool(uuid).await;
        self.settle(uuid).await;
        r
    }

    pub async fn set_pool_autostart(&self, uuid: &str, on: bool) -> Result<()> {
        self.need_pool(uuid)?;
        let r = self.hv.set_pool_autostart(uuid, on).await;
        self.settle(uuid).await;
        r
    }

    /// Remove a pool. Refused while it holds volumes unless
    /// `delete_volumes`; then every volume must be free to delete (the same
    /// rules as [`Self::delete_volume`]) or nothing is deleted at all.
    pub async fn delete_pool(
        &self,
        uuid: &str,
        delete_volumes: bool,
        delete_directory: bool,
    ) -> Result<()> {
        self.resync_pool(uuid).await?;
        let pool = self.need_pool(uuid)?;
        let vols: Vec<Arc<VolumeView>> = pool
            .volumes
            .iter()
            .filter_map(|id| self.volume(id))
            .collect();
        check_pool_deletion(&pool.rec, delete_volumes, vols.len())?;
        let paths: Vec<String> = vols.iter().map(|v| v.rec.path.clone()).collect();
        let kept = self.check_free(paths).await?;
        if !kept.is_empty() {
            return Err(Error::InvalidState(format!(
                "storage pool '{}' was left as it is: {}",
                pool.rec.name,
                kept.join("; ")
            )));
        }
        for v in &vols {
            self.hv.delete_volume(&v.rec.key).await?;
        }
        let r = self.hv.undefine_pool(uuid, delete_directory).await;
        self.settle(uuid).await;
        r
    }

    /// For each path, why it may not be deleted or overwritten now (empty:
    /// all free), read fresh from libvirt (not the cache).
    async fn check_free(&self, paths: Vec<String>) -> Result<Vec<String>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        self.hv
            .session(move |s| {
                let others = storage_ownership::other_users(s, None)?;
                Ok(paths
                    .iter()
                    .filter_map(|p| {
                        match storage_ownership::decide_volume(&canonical(p), &others) {
                            Verdict::Keep(why) => Some(format!("{p}: {why}")),
                            _ => None,
                        }
                    })
                    .collect())
            })
            .await
    }

    async fn ensure_free(&self, v: &VolumeView, what: &str) -> Result<()> {
        let kept = self.check_free(vec![v.rec.path.clone()]).await?;
        match kept.first() {
            None => Ok(()),
            Some(why) => Err(Error::InvalidState(format!(
                "cannot {what} volume '{}': {why}",
                v.rec.name
            ))),
        }
    }

    /// Refuse a volume of a file pool whose path is a symlink or leads out
    /// of the pool's directory (see [`volume_path_problem`]); read off the
    /// async workers.
    async fn ensure_in_pool(&self, v: &VolumeView) -> Result<()> {
        let pool = self.need_pool(&v.rec.pool_uuid)?;
        if NOT_FILE_POOLS.contains(&pool.rec.kind.as_str()) {
            return Ok(());
        }
        let (path, target) = (v.rec.path.clone(), pool.rec.target_path.clone());
        let facts = tokio::task::spawn_blocking(move || PathFacts::read(&path, &target))
            .await
            .map_err(|e| Error::Failed(format!("path check failed: {e}")))?;
        match volume_path_problem(&pool.rec.kind, &v.rec.path, &facts) {
            None => Ok(()),
            Some(why) => Err(Error::InvalidState(format!(
                "volume '{}' cannot be used: {why}",
                v.rec.name
            ))),
        }
    }

    // ----- volumes -----

    /// Resolve a spec's backing volume (a name in the same pool, or a
    /// volume id) to (path, format); it must pass [`Self::ensure_in_pool`].
    async fn backing_of(&self, pool_uuid: &str, backing: &str) -> Result<(String, String)> {
        let v = self
            .volume_named(pool_uuid, backing)
            .or_else(|| self.volume(backing))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "backing_volume: no volume '{backing}' in this pool"
                ))
            })?;
        self.ensure_in_pool(&v)
            .await
            .map_err(|e| e.context("backing_volume"))?;
        let format = match v.rec.format.as_str() {
            "" => "raw".to_owned(),
            f => f.to_owned(),
        };
        Ok((v.rec.path.clone(), format))
    }

    /// Run `make` (which creates the volume `name` in the pool) under an
    /// intent record, so a crash part way removes what it made; `fill` then
    /// runs on the made volume. On failure everything made is removed.
    async fn make_volume<M, F, Fut>(
        &self,
        operation: &str,
        pool: &PoolView,
        name: &str,
        uid: u32,
        make: M,
        fill: F,
    ) -> Result<String>
    where
        M: std::future::Future<Output = Result<VolumeRecord>>,
        F: FnOnce(VolumeRecord) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if self.volume_named(&pool.rec.uuid, name).is_some() {
            return Err(Error::Conflict(format!(
                "name: pool '{}' already has a volume named '{name}'",
                pool.rec.name
            )));
        }
        let expected = expected_volume_path(&pool.rec.target_path, name);
        let mut intent = self.intents.begin(operation, name, uid)?;
        if let Some(path) = &expected {
            intent.record(Step::Volume {
                path: path.clone(),
                not_before_ns: now_ns(),
                made: false,
            })?;
        }
        let outcome = async {
            let rec = make.await?;
            if expected.as_deref() == Some(rec.path.as_str()) {
                intent.volume_made(&rec.path)?;
            } else if Path::new(&rec.path).is_absolute() {
                intent.record(Step::Volume {
                    path: rec.path.clone(),
                    not_before_ns: 0,
                    made: true,
                })?;
            }
            let id = volume_key(&rec.pool_uuid, &rec.name);
            fill(rec).await.map(|()| id)
        }
        .await;
        match outcome {
            Ok(id) => {
                intent.complete()?;
                self.settle(&pool.rec.uuid).await;
                Ok(id)
            }
            Err(e) => {
                let steps = intent.steps().to_vec();
                let left = self
                    .hv
                    .session(move |s| Ok(undo(s, &steps, Undoer::InProcess)))
                    .await
                    .unwrap_or_else(|e| vec![e.to_string()]);
                let _ = intent.finish();
                self.settle(&pool.rec.uuid).await;
                if left.is_empty() {
                    Err(e)
                } else {
                    Err(Error::Failed(format!(
                        "{e}; and left behind: {}",
                        left.join("; ")
                    )))
                }
            }
        }
    }

    /// Create a volume from a spec. Preallocated volumes must fit the pool.
    pub async fn create_volume(
        &self,
        pool_uuid: &str,
        spec: &VolumeSpec,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let pool = self.need_pool(pool_uuid)?;
        if spec.preallocate && spec.capacity > pool.rec.available {
            return Err(Error::LimitExceeded(format!(
                "capacity: {} bytes do not fit in pool '{}' ({} bytes free)",
                spec.capacity, pool.rec.name, pool.rec.available
            )));
        }
        let backing = match &spec.backing_volume {
            Some(b) => Some(self.backing_of(pool_uuid, b).await?),
            None => None,
        };
        let xml = spec::volume_xml(
            spec,
            backing.as_ref().map(|(p, f)| (p.as_str(), f.as_str())),
        );
        progress.update("creating the volume", 0, spec.capacity);
        let make = self.hv.create_volume(pool_uuid, xml);
        self.make_volume("volume-create", &pool, &spec.name, uid, make, |_| async {
            Ok(())
        })
        .await
    }

    /// Copy a volume into a new one in the same pool.
    pub async fn clone_volume(
        &self,
        id: &str,
        name: &str,
        format: Option<VolumeFormat>,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        spec::check_object_name("name", name)?;
        let src = self.need_volume(id)?;
        self.ensure_in_pool(&src).await?;
        let pool = self.need_pool(&src.rec.pool_uuid)?;
        let format = match format {
            Some(f) => f,
            None => match src.rec.format.as_str() {
                "qcow2" => VolumeFormat::Qcow2,
                "iso" => VolumeFormat::Iso,
                _ => VolumeFormat::Raw,
            },
        };
        let spec = VolumeSpec {
            name: name.to_owned(),
            capacity: src.rec.capacity,
            format,
            backing_volume: None,
            preallocate: false,
        };
        progress.update("copying the volume", 0, src.rec.capacity);
        let make =
            self.hv
                .clone_volume(&pool.rec.uuid, spec::volume_xml(&spec, None), &src.rec.key);
        self.make_volume("volume-clone", &pool, name, uid, make, |_| async { Ok(()) })
            .await
    }

    /// Create volume `name` and fill it from `src` (`length` bytes).
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_new(
        &self,
        pool_uuid: &str,
        name: &str,
        format: VolumeFormat,
        src: std::fs::File,
        length: u64,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        spec::check_object_name("name", name)?;
        let pool = self.need_pool(pool_uuid)?;
        let _slot = self.transfers.take(uid)?;
        if length > pool.rec.available {
            return Err(Error::LimitExceeded(format!(
                "the upload ({length} bytes) does not fit in pool '{}' ({} bytes free)",
                pool.rec.name, pool.rec.available
            )));
        }
        let spec = VolumeSpec {
            name: name.to_owned(),
            capacity: length.max(1),
            format,
            backing_volume: None,
            preallocate: false,
        };
        let make = self
            .hv
            .create_volume(pool_uuid, spec::volume_xml(&spec, None));
        self.make_volume("volume-upload", &pool, name, uid, make, |rec| {
            self.stream_in(rec.key, src, length, progress)
        })
        .await
    }

    async fn stream_in(
        &self,
        key: String,
        src: std::fs::File,
        length: u64,
        progress: Arc<dyn Progress>,
    ) -> Result<()> {
        let (report, cancel) = bridge(progress, "uploading", length);
        self.hv
            .upload_volume(&key, src, length, report, cancel)
            .await
            .map(|_| ())
    }

    /// Replace a volume's contents (no VM may use it); a longer upload
    /// grows the volume, if its pool has the room.
    pub async fn upload(
        &self,
        id: &str,
        src: std::fs::File,
        length: u64,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        let _slot = self.transfers.take(uid)?;
        self.ensure_free(&v, "overwrite").await?;
        if length > v.rec.capacity {
            let pool = self.need_pool(&v.rec.pool_uuid)?;
            growth_fits("the upload", length - v.rec.capacity, &pool.rec)?;
            self.hv.resize_volume(&v.rec.key, length, false).await?;
        }
        let r = self
            .stream_in(v.rec.key.clone(), src, length, progress)
            .await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }

    /// Write a volume's contents to `dst`.
    pub async fn download(
        &self,
        id: &str,
        dst: std::fs::File,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<u64> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        let _slot = self.transfers.take(uid)?;
        let (report, cancel) = bridge(progress, "downloading", v.rec.capacity);
        self.hv
            .download_volume(&v.rec.key, dst, report, cancel)
            .await
    }

    /// Grow (or, with `shrink`, shrink) a volume. Shrinking is refused while
    /// any VM uses it.
    pub async fn resize(&self, id: &str, capacity: u64, shrink: bool) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        if capacity == 0 {
            return Err(Error::InvalidArgument("capacity: must be above 0".into()));
        }
        if capacity < v.rec.capacity {
            if !shrink {
                return Err(Error::InvalidArgument(format!(
                    "capacity: {capacity} is below the current {} bytes; shrinking loses data and needs the shrink option",
                    v.rec.capacity
                )));
            }
            self.ensure_free(&v, "shrink").await?;
        }
        let r = self.hv.resize_volume(&v.rec.key, capacity, shrink).await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }

    pub async fn wipe(&self, id: &str, progress: Arc<dyn Progress>) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        self.ensure_free(&v, "wipe").await?;
        progress.update("wiping", 0, v.rec.capacity);
        let r = self.hv.wipe_volume(&v.rec.key).await;
        progress.update("wiped", v.rec.capacity, v.rec.capacity);
        self.settle(&v.rec.pool_uuid).await;
        r
    }

    /// Delete a volume: refused while any VM (or another volume) uses it,
    /// naming them.
    pub async fn delete_volume(&self, id: &str) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        self.ensure_free(&v, "delete").await?;
        let r = self.hv.delete_volume(&v.rec.key).await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }
}

/// How often a transfer's cancel flag is brought up to date with its job
/// while no chunk moves (a caller's pipe that sends nothing).
const CANCEL_WATCH: std::time::Duration = std::time::Duration::from_millis(250);

/// Set `flag` once `progress` is cancelled, looking every `every`, for as
/// long as anyone else holds the flag.
async fn follow_cancel(
    progress: Arc<dyn Progress>,
    flag: std::sync::Weak<AtomicBool>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(flag) = flag.upgrade() else {
            return;
        };
        if progress.cancelled() {
            flag.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// Turn a job's progress into the stream's report and cancel flag. The
/// flag follows the job even while nothing moves, so a transfer waiting on
/// an idle descriptor stops within a second of a Cancel.
fn bridge(
    progress: Arc<dyn Progress>,
    step: &'static str,
    total: u64,
) -> (Arc<dyn Fn(u64) + Send + Sync>, Arc<AtomicBool>) {
    let cancel = Arc::new(AtomicBool::new(progress.cancelled()));
    tokio::spawn(follow_cancel(
        progress.clone(),
        Arc::downgrade(&cancel),
        CANCEL_WATCH,
    ));
    let flag = cancel.clone();
    let report = Arc::new(move |done: u64| {
        progress.update(step, done, total);
        if progress.cancelled() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    (report, cancel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::spec::PoolSource;

    fn pvd(label: &str) -> Vec<u8> {
        let mut v = vec![0u8; 72];
        v[0] = 1;
        v[1..6].copy_from_slice(b"CD001");
        let mut l = label.as_bytes().to_vec();
        l.resize(32, b' ');
        v[40..72].copy_from_slice(&l);
        v
    }

    #[test]
    fn iso_labels_are_read_from_the_primary_volume_descriptor() {
        assert_eq!(
            iso_label_of(&pvd("DEBIAN_12")).as_deref(),
            Some("DEBIAN_12")
        );
        assert_eq!(iso_label_of(&pvd("cidata")).as_deref(), Some("cidata"));
        assert_eq!(iso_label_of(&pvd("")), None);
        let mut bad = pvd("X");
        bad[1] = b'X';
        assert_eq!(iso_label_of(&bad), None);
        assert_eq!(iso_label_of(&[1, b'C']), None);
        // Control characters never reach the bus.
        assert_eq!(iso_label_of(&pvd("A\u{1b}[2J")).as_deref(), Some("A[2J"));
    }

    fn dir_pool(target: &str) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            kind: PoolKind::Dir,
            target: target.into(),
            source: PoolSource::default(),
            autostart: true,
            start: true,
            build: true,
        }
    }

    const STATE: &str = "/var/lib/vapor";

    fn host_paths(spec: &PoolSpec) -> Result<Option<String>> {
        pool_host_paths(spec, POOL_ROOTS, Path::new(STATE))
    }

    #[test]
    fn pools_outside_the_pool_roots_need_the_host_path_action() {
        assert_eq!(
            host_paths(&dir_pool("/var/lib/libvirt/images/isos")).unwrap(),
            None
        );
        assert_eq!(
            host_paths(&dir_pool("/var/lib/libvirt/images")).unwrap(),
            None
        );
        assert_eq!(
            host_paths(&dir_pool("/var/lib/vapor/pools/p")).unwrap(),
            None
        );
        assert!(host_paths(&dir_pool("/etc")).unwrap().is_some());
        assert!(host_paths(&dir_pool("/var/lib/libvirtfoo"))
            .unwrap()
            .is_some());
        assert!(host_paths(&dir_pool("/var/lib/vapor-tests/p"))
            .unwrap()
            .is_some());
        assert!(host_paths(&dir_pool("/var/lib/libvirt/imagesfoo"))
            .unwrap_err()
            .to_string()
            .starts_with("target: "));
        let mut fs = dir_pool("/var/lib/vapor/pools/fs");
        fs.kind = PoolKind::Fs;
        fs.source.device = vec!["/dev/sdb1".into()];
        assert!(host_paths(&fs).unwrap().unwrap().contains("/dev/sdb1"));
    }

    #[test]
    fn remote_pools_need_the_host_path_action_even_inside_the_roots() {
        let mut netfs = dir_pool("/var/lib/vapor/pools/nfs");
        netfs.kind = PoolKind::Netfs;
        netfs.source.host = Some("nas.example".into());
        netfs.source.dir = Some("/export/vms".into());
        let why = host_paths(&netfs).unwrap().unwrap();
        assert!(why.contains("nas.example:/export/vms"), "{why}");
        assert!(why.contains("remote side decides"), "{why}");
        let mut iscsi = dir_pool("/dev/disk/by-path");
        iscsi.kind = PoolKind::Iscsi;
        iscsi.source.host = Some("10.0.0.5".into());
        iscsi.source.target_iqn = Some("iqn.2004-04.com.example:d1".into());
        let why = host_paths(&iscsi).unwrap().unwrap();
        assert!(why.contains("iqn.2004-04.com.example:d1"), "{why}");
        assert!(why.contains("10.0.0.5"), "{why}");
    }

    #[test]
    fn no_pool_may_touch_the_state_directory_or_libvirts_own_files() {
        for target in [
            "/var/lib/vapor",
            "/var/lib/vapor/intents",
            "/var/lib/vapor/templates/x",
            "/var/lib/vapor/poolsx",
            "/var/lib",
            "/var",
            "/",
            "/var/lib/libvirt",
            "/var/lib/libvirt/qemu",
            "/var/lib/libvirt/qemu/nvram",
            "/var/lib/libvirt/dnsmasq",
        ] {
            for kind in PoolKind::ALL {
                let mut spec = dir_pool(target);
                spec.kind = kind;
                let e = host_paths(&spec).unwrap_err();
                assert!(matches!(e, Error::InvalidArgument(_)), "{target}: {e}");
                assert!(e.to_string().starts_with("target: "), "{target}: {e}");
            }
        }
    }

    #[test]
    fn forbidden_targets_are_judged_on_canonical_paths() {
        let p = |s: &str| PathBuf::from(s);
        let roots = [p("/var/lib/libvirt/images"), p("/srv/state/pools")];
        let state = p("/srv/state");
        let (libvirt, images) = (p("/var/lib/libvirt"), p("/var/lib/libvirt/images"));
        let judge = |t: &str| forbidden_target(&p(t), &state, &roots, &libvirt, &images);
        assert!(judge("/srv/state")
            .unwrap()
            .starts_with("is vapord's state"));
        assert!(judge("/srv").unwrap().starts_with("would hold"));
        assert!(judge("/srv/state/intents")
            .unwrap()
            .starts_with("lies inside"));
        assert!(judge("/var/lib/libvirt/qemu")
            .unwrap()
            .contains("libvirt's own"));
        assert_eq!(judge("/srv/state/pools"), None);
        assert_eq!(judge("/srv/state/pools/a"), None);
        assert_eq!(judge("/srv/statex"), None);
        assert_eq!(judge("/var/lib/libvirt/images/a"), None);
        assert_eq!(judge("/etc"), None); // storage-host-path decides
                                         // A root that holds the state directory opens nothing inside it.
        let wide = [p("/srv")];
        let judge = |t: &str| forbidden_target(&p(t), &state, &wide, &libvirt, &images);
        assert!(judge("/srv/state/intents").is_some());
        assert_eq!(judge("/srv/other"), None);
    }

    #[test]
    fn a_pool_root_reached_through_a_symlink_is_judged_by_its_target() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("root/escape")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("state"), dir.path().join("root/state"))
            .unwrap();
        let root = dir.path().join("root").to_string_lossy().into_owned();
        let state = dir.path().join("state");
        let inside = format!("{root}/new/pool");
        let escape = format!("{root}/escape/pool");
        let judge = |t: &str| pool_host_paths(&dir_pool(t), &[&root], &state);
        assert_eq!(judge(&inside).unwrap(), None);
        assert!(judge(&escape).unwrap().is_some());
        // The state directory reached through a link in a root is refused.
        let e = judge(&format!("{root}/state/sub")).unwrap_err();
        assert!(e.to_string().starts_with("target: "), "{e}");
    }

    fn facts(symlink: bool, real: Option<&str>, pool: Option<&str>) -> PathFacts {
        PathFacts {
            symlink,
            real: real.map(PathBuf::from),
            pool_real: pool.map(PathBuf::from),
        }
    }

    #[test]
    fn file_pool_volumes_must_really_lie_in_the_pool() {
        let pool = Some("/srv/pool");
        let ok = facts(false, Some("/srv/pool/a.qcow2"), pool);
        for kind in ["dir", "fs", "netfs", "vstorage", "someday"] {
            assert_eq!(volume_path_problem(kind, "/srv/pool/a.qcow2", &ok), None);
            let link = facts(true, Some("/srv/pool/b"), pool);
            let why = volume_path_problem(kind, "/srv/pool/a", &link).unwrap();
            assert!(why.contains("/srv/pool/a is a symbolic link"), "{why}");
            // A linked directory on the way leads out.
            let out = facts(false, Some("/etc/shadow"), pool);
            let why = volume_path_problem(kind, "/srv/pool/d/shadow", &out).unwrap();
            assert!(why.contains("/etc/shadow") && why.contains("/srv/pool/d/shadow"));
            let sibling = facts(false, Some("/srv/poolx/a"), pool);
            assert!(volume_path_problem(kind, "/srv/pool/a", &sibling).is_some());
            let itself = facts(false, Some("/srv/pool"), pool);
            assert!(volume_path_problem(kind, "/srv/pool/.", &itself).is_some());
            let gone = facts(false, None, pool);
            assert!(volume_path_problem(kind, "/srv/pool/a", &gone).is_some());
            let no_pool = facts(false, Some("/srv/pool/a"), None);
            assert!(volume_path_problem(kind, "/srv/pool/a", &no_pool).is_some());
        }
    }

    #[test]
    fn device_pool_volumes_are_not_path_checked() {
        let link = facts(true, Some("/dev/dm-3"), Some("/dev/vg"));
        for kind in ["logical", "iscsi", "disk", "scsi", "mpath", "rbd"] {
            assert_eq!(volume_path_problem(kind, "/dev/vg/lv", &link), None);
        }
    }

    #[test]
    fn path_facts_see_links_and_where_they_lead() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        std::fs::create_dir(&pool).unwrap();
        std::fs::write(pool.join("a.raw"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", pool.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", pool.join("d")).unwrap();
        let target = pool.to_string_lossy().into_owned();
        let at = |n: &str| pool.join(n).to_string_lossy().into_owned();
        let judge = |n: &str| volume_path_problem("dir", &at(n), &PathFacts::read(&at(n), &target));
        assert_eq!(judge("a.raw"), None);
        assert!(judge("link").unwrap().contains("symbolic link"));
        assert!(judge("d/passwd").unwrap().contains("outside the pool"));
        assert!(judge("missing").unwrap().contains("cannot be resolved"));
        let f = PathFacts::read(&at("link"), "");
        assert!(f.symlink && f.pool_real.is_none());
    }

    #[test]
    fn transfers_are_capped_per_caller_and_in_all() {
        let t = Transfers::new(2, 3);
        let a1 = t.take(1000).unwrap();
        let _a2 = t.take(1000).unwrap();
        let e = t.take(1000).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded(_)));
        assert!(e.to_string().contains("at most 2") && e.to_string().contains("per caller"));
        let _b1 = t.take(1001).unwrap();
        let e = t.take(1002).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded(_)));
        assert!(e.to_string().contains("at most 3"), "{e}");
        assert_eq!(t.count(1000), (2, 3));
        // A finished transfer gives its slot back.
        drop(a1);
        assert_eq!(t.count(1000), (1, 2));
        let _c1 = t.take(1002).unwrap();
        assert_eq!(t.count(1002), (1, 3));
    }

    #[test]
    fn the_daemon_caps_transfers_at_four_per_caller_and_sixteen_in_all() {
        let t = Transfers::new(MAX_TRANSFERS_PER_CALLER, MAX_TRANSFERS);
        let mut held: Vec<_> = (0..4).map(|_| t.take(7).unwrap()).collect();
        assert!(t.take(7).unwrap_err().to_string().contains("at most 4"));
        for uid in 100..103 {
            held.extend((0..4).map(|_| t.take(uid).unwrap()));
        }
        assert!(t.take(200).unwrap_err().to_string().contains("at most 16"));
        held.clear();
        assert_eq!(t.count(7), (0, 0));
    }

    fn pool_rec(state: &'static str, available: u64) -> PoolRecord {
        PoolRecord {
            uuid: "u".into(),
            name: "p".into(),
            kind: "dir".into(),
            state,
            autostart: true,
            persistent: true,
            target_path: "/srv/pool".into(),
            capacity: 100,
            allocation: 0,
            available,
        }
    }

    #[test]
    fn an_upload_may_grow_a_volume_only_into_free_space() {
        let pool = pool_rec("running", 10);
        assert!(growth_fits("the upload", 10, &pool).is_ok());
        assert!(growth_fits("the upload", 0, &pool).is_ok());
        let e = growth_fits("the upload", 11, &pool).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded(_)), "{e}");
        assert!(e.to_string().contains("11 bytes") && e.to_string().contains("(10 bytes)"));
    }

    #[test]
    fn deleting_a_pools_volumes_needs_the_pool_started() {
        let running = pool_rec("running", 0);
        let stopped = pool_rec("inactive", 0);
        assert!(check_pool_deletion(&running, true, 3).is_ok());
        assert!(check_pool_deletion(&running, false, 0).is_ok());
        assert!(check_pool_deletion(&stopped, false, 0).is_ok());
        let e = check_pool_deletion(&running, false, 2).unwrap_err();
        assert!(matches!(e, Error::InvalidState(_)) && e.to_string().contains("2 volume(s)"));
        // An inactive pool lists no volumes: nothing could be checked.
        let e = check_pool_deletion(&stopped, true, 0).unwrap_err();
        assert!(matches!(e, Error::InvalidState(_)));
        assert!(e
            .to_string()
            .contains("start the pool first so its volumes can be checked"));
    }

    #[test]
    fn intents_record_only_absolute_expected_paths() {
        assert_eq!(
            expected_volume_path("/srv/pool", "a.qcow2").as_deref(),
            Some("/srv/pool/a.qcow2")
        );
        assert_eq!(expected_volume_path("relative/dir", "a.qcow2"), None);
        assert_eq!(expected_volume_path("", "a.qcow2"), None);
        assert_eq!(expected_volume_path("rbdpool", "a"), None);
    }

    fn volume_view(pool: &str, name: &str) -> VolumeView {
        VolumeView {
            id: volume_key(pool, name),
            rec: VolumeRecord {
                pool_uuid: pool.into(),
                name: name.into(),
                key: format!("/{pool}/{name}"),
                path: format!("/{pool}/{name}"),
                format: "raw".into(),
                kind: "file".into(),
                capacity: 1,
                allocation: 1,
                backing_store: String::new(),
            },
            pool_name: pool.into(),
            real_path: format!("/{pool}/{name}"),
            label: String::new(),
            used_by: Vec::new(),
            owned_by: None,
        }
    }

    #[test]
    fn pools_a_listing_could_not_read_keep_their_records() {
        let (volumes, _rx) = Store::<VolumeView>::new(Arc::new(AtomicU64::new(1)));
        let t = volumes.ticket();
        volumes.replace_scope(
            vec![volume_view("ok", "a"), volume_view("flaky", "b")],
            |_| true,
            t,
        );
        // The next listing could not read "flaky" and "ok" lost "a".
        let skipped: HashSet<String> = ["flaky".to_owned()].into();
        assert!(in_removal_scope(&skipped, "ok"));
        assert!(!in_removal_scope(&skipped, "flaky"));
        let t = volumes.ticket();
        volumes.replace_scope(
            Vec::new(),
            |v| in_removal_scope(&skipped, &v.rec.pool_uuid),
            t,
        );
        assert!(volumes.get("ok/a").is_none());
        assert!(volumes.get("flaky/b").is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_transfer_learns_of_a_cancel_while_nothing_moves() {
        use crate::progress::CancelFlag;
        use std::time::Duration;
        struct Job(CancelFlag);
        impl Progress for Job {
            fn update(&self, _: &str, _: u64, _: u64) {}
            fn cancelled(&self) -> bool {
                self.0.is_set()
            }
        }
        let job = Arc::new(Job(CancelFlag::default()));
        let flag = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis(10);
        let watcher = tokio::spawn(follow_cancel(job.clone(), Arc::downgrade(&flag), every));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!flag.load(Ordering::SeqCst));
        job.0.cancel();
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap();
        assert!(flag.load(Ordering::SeqCst));
        // And it stops watching once the transfer let go of the flag.
        let gone = Arc::new(AtomicBool::new(false));
        let never = Arc::new(Job(CancelFlag::default()));
        let watcher = tokio::spawn(follow_cancel(never, Arc::downgrade(&gone), every));
        drop(gone);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn blocking_work_runs_in_place_on_a_current_thread_runtime() {
        assert_eq!(off_worker(|| 7), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn blocking_work_frees_the_worker_on_the_multi_thread_runtime() {
        use std::time::{Duration, Instant};
        let flag = Arc::new(AtomicBool::new(false));
        // The one worker blocks until another task ran: only possible if
        // the blocking work gave the worker up.
        let blocked = {
            let flag = flag.clone();
            tokio::spawn(async move {
                off_worker(|| {
                    let start = Instant::now();
                    while !flag.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(5) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    flag.load(Ordering::SeqCst)
                })
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let setter = {
            let flag = flag.clone();
            tokio::spawn(async move { flag.store(true, Ordering::SeqCst) })
        };
        setter.await.unwrap();
        assert!(blocked.await.unwrap());
    }

    #[test]
    fn blocking_work_runs_outside_a_runtime() {
        assert_eq!(off_worker(|| 7), 7);
    }

    #[test]
    fn iso_labels_are_read_only_from_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("a.iso");
        let mut data = vec![0u8; 32768];
        data.extend(pvd("LABEL"));
        std::fs::write(&iso, &data).unwrap();
        assert_eq!(iso_label(&iso).as_deref(), Some("LABEL"));
        let link = dir.path().join("link.iso");
        std::os::unix::fs::symlink(&iso, &link).unwrap();
        assert_eq!(iso_label(&link), None);
        // A FIFO is neither waited on nor read.
        let fifo = dir.path().join("fifo.iso");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(iso_label(&fifo), None);
        assert_eq!(iso_label(dir.path()), None);
    }
}
