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

use std::collections::HashMap;
use std::path::Path;
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
/// at 32 KiB: type 1, "CD001", label at byte 40, 32 characters).
pub fn iso_label(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
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

/// Why creating this pool needs the `storage-host-path` action, if it
/// does: it puts a pool (where callers then create and delete files) on a
/// host path outside the roots meant for pools, or takes host devices.
pub fn pool_host_paths(spec: &PoolSpec, roots: &[&str]) -> Option<String> {
    let inside = |p: &str| {
        let real = canonical_existing(p);
        roots
            .iter()
            .any(|r| Path::new(&real).starts_with(Path::new(&canonical_existing(r))))
    };
    match spec.kind {
        PoolKind::Dir | PoolKind::Netfs if inside(&spec.target) => None,
        PoolKind::Dir | PoolKind::Netfs => Some(format!(
            "a pool at {} (outside {})",
            spec.target,
            roots.join(", ")
        )),
        PoolKind::Fs => Some(format!(
            "a pool on the host device {}",
            spec.source.device.join(", ")
        )),
        PoolKind::Logical => Some(format!(
            "the host volume group {}",
            spec.source.name.as_deref().unwrap_or(&spec.target)
        )),
        PoolKind::Iscsi => None, // remote LUNs under /dev/disk/by-path
    }
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
pub const POOL_ROOTS: &[&str] = &["/var/lib/libvirt", "/var/lib/vapor"];

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
}

pub type PoolChange = Change<PoolView>;
pub type VolumeChange = Change<VolumeView>;

impl StorageService {
    pub fn new(
        hv: Arc<Hypervisor>,
        refs: Arc<References>,
        intents: Arc<IntentLog>,
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

    /// The volume at a host path (canonical comparison).
    pub fn volume_at(&self, path: &str) -> Option<Arc<VolumeView>> {
        let real = canonical(path);
        self.volumes
            .find(|v| v.rec.path == path || canonical(&v.rec.path) == real)
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

    fn view_of(&self, rec: VolumeRecord, pool_name: &str) -> VolumeView {
        let real = canonical(&rec.path);
        let label = self.label_of(&rec);
        VolumeView {
            id: volume_key(&rec.pool_uuid, &rec.name),
            pool_name: pool_name.to_owned(),
            label,
            used_by: self.refs.users_of_path(&real),
            owned_by: self.refs.owner_of(&real),
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
            .map(|p| {
                let vols = by_pool.get(&p.uuid).map(Vec::as_slice).unwrap_or(&[]);
                Self::pool_view(p, vols)
            })
            .collect();
        let volumes: Vec<VolumeView> = listing
            .volumes
            .into_iter()
            .map(|v| {
                let pool = names.get(&v.pool_uuid).cloned().unwrap_or_default();
                self.view_of(v, &pool)
            })
            .collect();
        self.pools.replace_scope(pools, |_| true, ticket);
        self.volumes.replace_scope(volumes, |_| true, ticket);
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
                let views = vols.into_iter().map(|v| self.view_of(v, &name)).collect();
                self.volumes.replace_scope(views, in_pool, ticket);
            }
        }
        Ok(())
    }

    /// What the domains use changed: recompute UsedBy and OwnedBy.
    pub fn references_changed(&self) {
        let ticket = self.volumes.ticket();
        for v in self.volumes.all() {
            let real = canonical(&v.rec.path);
            let used_by = self.refs.users_of_path(&real);
            let owned_by = self.refs.owner_of(&real);
            if used_by != v.used_by || owned_by != v.owned_by {
                let mut new = (*v).clone();
                new.used_by = used_by;
                new.owned_by = owned_by;
                self.volumes.apply(&v.id, Some(new), ticket);
            }
        }
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

    /// Define (and build, start, autostart as asked) a pool: all or nothing.
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<String> {
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
        if !vols.is_empty() && !delete_volumes {
            return Err(Error::InvalidState(format!(
                "storage pool '{}' still holds {} volume(s); delete them first or pass delete_volumes",
                pool.rec.name,
                vols.len()
            )));
        }
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

    // ----- volumes -----

    /// Resolve a spec's backing volume (a name in the same pool, or a
    /// volume id) to (path, format).
    fn backing_of(&self, pool_uuid: &str, backing: &str) -> Result<(String, String)> {
        let v = self
            .volume_named(pool_uuid, backing)
            .or_else(|| self.volume(backing))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "backing_volume: no volume '{backing}' in this pool"
                ))
            })?;
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
        let expected = Path::new(&pool.rec.target_path)
            .join(name)
            .to_string_lossy()
            .into_owned();
        let mut intent = self.intents.begin(operation, name, uid)?;
        intent.record(Step::Volume {
            path: expected.clone(),
            not_before_ns: now_ns(),
            made: false,
        })?;
        let outcome = async {
            let rec = make.await?;
            if rec.path == expected {
                intent.volume_made(&rec.path)?;
            } else {
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
            Some(b) => Some(self.backing_of(pool_uuid, b)?),
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

    /// Replace a volume's contents (no VM may use it).
    pub async fn upload(
        &self,
        id: &str,
        src: std::fs::File,
        length: u64,
        progress: Arc<dyn Progress>,
    ) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_free(&v, "overwrite").await?;
        if length > v.rec.capacity {
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
        progress: Arc<dyn Progress>,
    ) -> Result<u64> {
        let v = self.need_volume(id)?;
        let (report, cancel) = bridge(progress, "downloading", v.rec.capacity);
        self.hv
            .download_volume(&v.rec.key, dst, report, cancel)
            .await
    }

    /// Grow (or, with `shrink`, shrink) a volume. Shrinking is refused while
    /// any VM uses it.
    pub async fn resize(&self, id: &str, capacity: u64, shrink: bool) -> Result<()> {
        let v = self.need_volume(id)?;
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
        self.ensure_free(&v, "delete").await?;
        let r = self.hv.delete_volume(&v.rec.key).await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }
}

/// Turn a job's progress into the stream's report and cancel flag.
fn bridge(
    progress: Arc<dyn Progress>,
    step: &'static str,
    total: u64,
) -> (Arc<dyn Fn(u64) + Send + Sync>, Arc<AtomicBool>) {
    let cancel = Arc::new(AtomicBool::new(progress.cancelled()));
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

    #[test]
    fn pools_outside_the_pool_roots_need_the_host_path_action() {
        let roots = ["/var/lib/libvirt", "/var/lib/vapor"];
        assert_eq!(
            pool_host_paths(&dir_pool("/var/lib/libvirt/images/isos"), &roots),
            None
        );
        assert!(pool_host_paths(&dir_pool("/etc"), &roots).is_some());
        assert!(pool_host_paths(&dir_pool("/var/lib/libvirtfoo"), &roots).is_some());
        let mut fs = dir_pool("/var/lib/vapor/fs");
        fs.kind = PoolKind::Fs;
        fs.source.device = vec!["/dev/sdb1".into()];
        assert!(pool_host_paths(&fs, &roots).unwrap().contains("/dev/sdb1"));
    }

    #[test]
    fn a_pool_root_reached_through_a_symlink_is_judged_by_its_target() {
        let dir = std::env::temp_dir().join(format!("vapor-roots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("root/escape")).unwrap();
        let root = dir.join("root").to_string_lossy().into_owned();
        let inside = format!("{root}/new/pool");
        let escape = format!("{root}/escape/pool");
        assert_eq!(pool_host_paths(&dir_pool(&inside), &[&root]), None);
        assert!(pool_host_paths(&dir_pool(&escape), &[&root]).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
