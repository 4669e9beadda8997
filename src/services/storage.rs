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
//! The pure rules it applies live in [`super::storage_rules`], the transfer
//! limits and progress bridge in [`super::storage_transfers`], and the
//! volume operations in `storage_volumes.rs` (a child module sharing the
//! service's private state).
//!
//! This module knows nothing about D-Bus or polkit.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedReceiver;

use super::references::References;
use super::storage_ownership::{self, canonical, Verdict};
use super::storage_rules::{check_pool_deletion, in_removal_scope, NOT_FILE_POOLS};
use crate::intent::IntentLog;
use crate::libvirt::storage::{PoolRecord, VolumeRecord};
use crate::libvirt::Hypervisor;
use crate::storage::spec::{self, PoolSpec};
use crate::store::{Change, Keyed, Store};
use crate::{Error, Result};

use super::storage_rules::{canonical_existing, in_backup_repository};
pub use super::storage_rules::{
    forbidden_target, iso_label, iso_label_of, pool_host_paths, volume_path_problem, PathFacts,
    LIBVIRT_DIR, LIBVIRT_IMAGES, POOL_ROOTS,
};
pub use super::storage_transfers::{
    TransferSlot, Transfers, MAX_TRANSFERS, MAX_TRANSFERS_PER_CALLER,
};

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
    /// vapord's backup repository (once found) and the pool configured
    /// to hold it: no pool may lie in the one or take the other's name.
    backups: Mutex<(Vec<PathBuf>, Option<String>)>,
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
            backups: Mutex::new((Vec::new(), None)),
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
        let internal: HashSet<String> = listing
            .pools
            .iter()
            .filter(|p| super::storage_rules::internal_pool(&p.name))
            .map(|p| p.uuid.clone())
            .collect();
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
            .filter(|p| in_removal_scope(&skipped, &p.uuid) && !internal.contains(&p.uuid))
            .map(|p| {
                let vols = by_pool.get(&p.uuid).map(Vec::as_slice).unwrap_or(&[]);
                Self::pool_view(p, vols)
            })
            .collect();
        let volumes: Vec<VolumeView> = off_worker(|| {
            listing
                .volumes
                .into_iter()
                .filter(|v| {
                    in_removal_scope(&skipped, &v.pool_uuid) && !internal.contains(&v.pool_uuid)
                })
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
        let listing = self
            .hv
            .pool_listing(uuid)
            .await?
            .filter(|(rec, _)| !super::storage_rules::internal_pool(&rec.name));
        match listing {
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
        let protected = self.backup_places().0;
        tokio::task::spawn_blocking(move || {
            let target = PathBuf::from(canonical_existing(&spec.target));
            if let Some(why) = in_backup_repository(&target, &protected) {
                return Err(Error::InvalidArgument(format!(
                    "target: {} {why}",
                    spec.target
                )));
            }
            pool_host_paths(&spec, POOL_ROOTS, &state_dir)
        })
        .await
        .map_err(|e| Error::Failed(format!("path check failed: {e}")))?
    }

    /// Keep pools out of vapord's backup repository at `root` (canonical),
    /// and the name of the pool configured to hold it for the administrator.
    pub fn protect_backups(&self, root: Option<PathBuf>, pool: Option<String>) {
        let mut b = self.backups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = root {
            if !b.0.contains(&r) {
                b.0.push(r);
            }
        }
        if pool.is_some() {
            b.1 = pool;
        }
    }

    fn backup_places(&self) -> (Vec<PathBuf>, Option<String>) {
        self.backups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Define (and build, start, autostart as asked) a pool: all or nothing.
    /// A target no pool may have is refused here too, whoever asks.
    pub async fn create_pool(&self, spec: &PoolSpec) -> Result<String> {
        self.pool_host_paths(spec).await?;
        if self.backup_places().1.as_deref() == Some(spec.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "name: '{}' is the pool vapord.toml names for the backup repository \
                 (backup_pool); only an administrator defines it",
                spec.name
            )));
        }
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
        super::vm::running_among(&self.hv, &users).await
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
        if let Some(d) = vols
            .iter()
            .find(|v| matches!(v.rec.kind.as_str(), "dir" | "netdir"))
        {
            // Volume calls never delete directories (a backup repository,
            // say): the pool would be left half emptied.
            return Err(Error::InvalidState(format!(
                "storage pool '{}' was left as it is: it holds the directory '{}', which \
                 vapord does not delete",
                pool.rec.name, d.rec.name
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

    /// Refuse a volume that cannot be handed to a VM (a symlink, or a path
    /// out of its pool: see [`Self::ensure_in_pool`]).
    pub async fn check_usable(&self, v: &VolumeView) -> Result<()> {
        self.ensure_in_pool(v).await
    }

    /// Refuse a volume of a file pool whose path is a symlink or leads out
    /// of the pool's directory (see [`volume_path_problem`]); read off the
    /// async workers.
    async fn ensure_in_pool(&self, v: &VolumeView) -> Result<()> {
        if matches!(v.rec.kind.as_str(), "dir" | "netdir") {
            // A directory in a pool (vapord's backup repository, say).
            return Err(Error::InvalidState(format!(
                "volume '{}' is a directory, not a disk image",
                v.rec.name
            )));
        }
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
}

#[path = "storage_volumes.rs"]
mod volumes;

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
