//! The typed libvirt port for storage: the blocking calls that list,
//! define, build, start, stop, refresh and remove pools and create, clone,
//! resize, wipe and delete volumes. Pools are named by UUID, volumes by key;
//! a missing one is `Error::NotFound` ("… no longer exists").
//!
//! Everything runs through [`Hypervisor::run`], on the blocking pool. XML
//! comes in ready made (see `crate::storage::spec`); the records and the
//! reading of libvirt's XML back live in [`super::storage_records`], the
//! upload and download streams in [`super::stream`].

use virt::connect::Connect;
use virt::error::ErrorNumber as N;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt_sys as sys;

use super::errors::{bare, from_virt, is_not_found};
use super::storage_records::{lists_volumes, size_of, state_name};
use super::xml::Element;
use super::{Hypervisor, Session};
use crate::{Error, Result};

pub use super::storage_records::{
    parse_pool_xml, parse_volume_xml, PoolRecord, StorageListing, VolumeRecord,
};
pub use super::stream::IDLE_LIMIT;

pub(super) type VirtResult = std::result::Result<(), virt::error::Error>;

/// `value` when `on`, else no flags.
fn flag(on: bool, value: u32) -> u32 {
    if on {
        value
    } else {
        0
    }
}

fn pool_by_uuid(c: &Connect, uuid: &str) -> Result<StoragePool> {
    c.lookup_storage_pool_by_uuid_string(uuid).map_err(|e| {
        if is_not_found(&e) {
            Error::NotFound(format!("storage pool {uuid} no longer exists"))
        } else {
            from_virt(e, format!("cannot look up storage pool {uuid}"))
        }
    })
}

pub(super) fn volume_by_key(c: &Connect, key: &str) -> Result<StorageVol> {
    c.lookup_storage_vol_by_key(key).map_err(|e| {
        if is_not_found(&e) {
            Error::NotFound(format!("volume {key} no longer exists"))
        } else {
            from_virt(e, format!("cannot look up volume {key}"))
        }
    })
}

fn pool_record(pool: &StoragePool) -> Result<PoolRecord> {
    let uuid = pool
        .uuid_string()
        .map_err(|e| from_virt(e, "cannot read a storage pool's UUID"))?;
    let ctx = |what: &'static str| {
        let uuid = uuid.clone();
        move |e| from_virt(e, format!("cannot read the {what} of storage pool {uuid}"))
    };
    let name = pool.name().map_err(ctx("name"))?;
    let (kind, target_path) = parse_pool_xml(&pool.xml_desc(0).map_err(ctx("definition"))?)?;
    let info = pool.info().map_err(ctx("state"))?;
    Ok(PoolRecord {
        name,
        kind,
        state: state_name(info.state),
        autostart: pool.autostart().map_err(ctx("autostart flag"))?,
        persistent: pool.is_persistent().map_err(ctx("persistence"))?,
        target_path,
        capacity: info.capacity,
        allocation: info.allocation,
        available: info.available,
        uuid,
    })
}

pub(super) fn volume_record_of(vol: &StorageVol, pool_uuid: &str) -> Result<VolumeRecord> {
    let xml = vol
        .xml_desc(0)
        .map_err(|e| from_virt(e, "cannot read a volume's definition"))?;
    let mut rec = parse_volume_xml(&xml, pool_uuid)?;
    if rec.key.is_empty() {
        rec.key = vol
            .key()
            .map_err(|e| from_virt(e, "cannot read a volume's key"))?;
    }
    if rec.path.is_empty() {
        rec.path = vol
            .path()
            .map_err(|e| from_virt(e, "cannot read a volume's path"))?;
    }
    Ok(rec)
}

/// How [`volumes_of`] treats a volume it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    /// Leave it out.
    Skip,
    /// Fail the whole listing, unless the volume is gone (`NotFound`): a
    /// cache must not forget a volume over a transient error.
    Fail,
}

/// Whether a volume that could not be read fails a listing: only a
/// `Fail` listing, and never for a volume that is gone. Pure.
fn fails_listing(mode: Unreadable, e: &Error) -> bool {
    mode == Unreadable::Fail && !matches!(e, Error::NotFound(_))
}

/// The volumes of an active pool, sorted by name; one that cannot be read is
/// left out or fails the listing, as `mode` says.
fn volumes_of(pool: &StoragePool, pool_uuid: &str, mode: Unreadable) -> Result<Vec<VolumeRecord>> {
    let vols = pool
        .list_all_volumes(0)
        .map_err(|e| from_virt(e, format!("cannot list the volumes of pool {pool_uuid}")))?;
    let mut out = Vec::with_capacity(vols.len());
    for v in &vols {
        match volume_record_of(v, pool_uuid) {
            Ok(r) => out.push(r),
            Err(e) if fails_listing(mode, &e) => return Err(e),
            Err(e) => log::debug!("skipping a volume of pool {pool_uuid}: {e}"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn volume_record_by_key(c: &Connect, key: &str) -> Result<VolumeRecord> {
    let vol = volume_by_key(c, key)?;
    let pool = vol
        .lookup_storage_pool()
        .map_err(|e| from_virt(e, format!("cannot find the pool of volume {key}")))?;
    let pool_uuid = pool
        .uuid_string()
        .map_err(|e| from_virt(e, "cannot read a storage pool's UUID"))?;
    volume_record_of(&vol, &pool_uuid)
}

/// libvirt's "already exists" and "conflicts with pool …" come as
/// OPERATION_FAILED: they are conflicts; a pool type this libvirtd was built
/// without is an internal error: it is not supported.
fn define_error(e: virt::error::Error) -> Error {
    let m = e.message().to_ascii_lowercase();
    let conflict = e.code().unwrap_or(N::InternalError) == N::OperationFailed
        && ["already exists", "already defined", "conflict"]
            .iter()
            .any(|w| m.contains(w));
    let what = "cannot define the storage pool";
    if conflict {
        Error::Conflict(format!("{what}: {}", e.message()))
    } else if m.contains("missing backend for pool type") {
        Error::NotSupported(format!("{what}: {}", e.message()))
    } else {
        from_virt(e, what)
    }
}

/// Flags for creating a volume from `xml`: qcow2 with an allocation asks
/// qemu-img to preallocate.
fn create_flags(xml: &str) -> u32 {
    let Ok(el) = Element::parse(xml) else {
        return 0;
    };
    let qcow2 = el
        .child("target")
        .and_then(|t| t.child("format"))
        .and_then(|f| f.attr("type"))
        == Some("qcow2");
    let allocated = size_of(el.child("allocation")).unwrap_or(0) > 0;
    if qcow2 && allocated {
        sys::VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA
    } else {
        0
    }
}

/// How a new volume's space is set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// What the storage API offers: besides what `<allocation>` gives a raw
    /// file, a qcow2 image with an `<allocation>` is preallocated too
    /// (`VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA`, see [`create_flags`]).
    FromXml,
    /// Only what `<allocation>` gives a raw file; a qcow2 image stays
    /// sparse (VM creation, whose qcow2 disks may sit on a backing file,
    /// which qemu-img will not preallocate).
    RawOnly,
}

impl Preallocation {
    fn flags(self, xml: &str) -> u32 {
        match self {
            Self::FromXml => create_flags(xml),
            Self::RawOnly => 0,
        }
    }
}

/// Define `xml`, then build, start and mark autostart as asked; any failure
/// destroys and undefines the pool again.
fn define_blocking(c: &Connect, xml: &str, build: bool, start: bool, auto: bool) -> Result<String> {
    let pool = c.define_storage_pool_xml(xml, 0).map_err(define_error)?;
    let steps = || -> Result<String> {
        let uuid = pool
            .uuid_string()
            .map_err(|e| from_virt(e, "cannot read the new pool's UUID"))?;
        if build && !start {
            pool.build(sys::VIR_STORAGE_POOL_BUILD_NEW)
                .map_err(|e| from_virt(e, "cannot build the storage pool"))?;
        }
        if start {
            pool.create(flag(build, sys::VIR_STORAGE_POOL_CREATE_WITH_BUILD))
                .map_err(|e| from_virt(e, "cannot start the storage pool"))?;
        }
        if auto {
            pool.set_autostart(true)
                .map_err(|e| from_virt(e, "cannot mark the storage pool autostart"))?;
        }
        Ok(uuid)
    };
    steps().inspect_err(|_| {
        if pool.is_active().unwrap_or(false) {
            if let Err(e) = pool.destroy() {
                log::warn!("cannot stop a half-created storage pool: {e}");
            }
        }
        if let Err(e) = pool.undefine() {
            log::warn!("cannot undefine a half-created storage pool: {e}");
        }
    })
}

fn undefine_blocking(c: &Connect, uuid: &str, delete_directory: bool) -> Result<()> {
    let pool = pool_by_uuid(c, uuid)?;
    let ctx = |what: &'static str| {
        let uuid = uuid.to_owned();
        move |e| from_virt(e, format!("cannot {what} storage pool {uuid}"))
    };
    if delete_directory {
        let xml = pool.xml_desc(0).map_err(ctx("read"))?;
        if parse_pool_xml(&xml)?.0 != "dir" {
            return Err(Error::InvalidArgument(
                "delete_directory: only a dir pool's directory can be removed".into(),
            ));
        }
        if !pool.is_persistent().map_err(ctx("read"))? {
            return Err(Error::InvalidState(format!(
                "storage pool {uuid} is transient: its directory cannot be removed"
            )));
        }
    }
    let was_active = pool.is_active().map_err(ctx("read"))?;
    if was_active {
        pool.destroy().map_err(ctx("stop"))?;
    }
    if delete_directory {
        if let Err(e) = pool.delete(sys::VIR_STORAGE_POOL_DELETE_NORMAL) {
            if was_active {
                if let Err(r) = pool.create(0) {
                    log::warn!("cannot restart storage pool {uuid}: {r}");
                }
            }
            return Err(from_virt(
                e,
                format!("cannot remove the directory of pool {uuid}"),
            ));
        }
    }
    match pool.undefine() {
        Err(e) if is_not_found(&e) => Ok(()), // transient: gone once stopped
        r => r.map_err(ctx("undefine")),
    }
}

impl Hypervisor {
    /// Every pool and the volumes of the active ones, sorted by name. A pool
    /// gone meanwhile is left out; one whose record or volumes cannot be
    /// read is left out too, and named in `skipped` (and logged).
    pub async fn storage_listing(&self) -> Result<StorageListing> {
        self.run(|c| {
            let pools = c
                .list_all_storage_pools(0)
                .map_err(|e| from_virt(e, "cannot list storage pools"))?;
            let mut out = StorageListing::default();
            for pool in &pools {
                let read = pool_record(pool).and_then(|rec| {
                    let vols = if lists_volumes(rec.state) {
                        volumes_of(pool, &rec.uuid, Unreadable::Fail)?
                    } else {
                        Vec::new()
                    };
                    Ok((rec, vols))
                });
                match read {
                    Ok((rec, vols)) => {
                        out.volumes.extend(vols);
                        out.pools.push(rec);
                    }
                    Err(Error::NotFound(_)) => {} // gone meanwhile
                    Err(e) => match pool.uuid_string() {
                        Ok(uuid) => {
                            log::debug!("cannot read storage pool {uuid} now: {e}");
                            out.skipped.push(uuid);
                        }
                        Err(u) => log::debug!("skipping a storage pool: {e} ({u})"),
                    },
                }
            }
            out.pools.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// One pool and its volumes (none when inactive); `None` if it is gone.
    /// Volumes that cannot be read (other than gone) are an error, never an
    /// empty list.
    pub async fn pool_listing(
        &self,
        uuid: &str,
    ) -> Result<Option<(PoolRecord, Vec<VolumeRecord>)>> {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            let found = pool_by_uuid(c, &uuid).and_then(|p| Ok((pool_record(&p)?, p)));
            let (rec, pool) = match found {
                Ok(f) => f,
                Err(Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let volumes = if lists_volumes(rec.state) {
                match volumes_of(&pool, &uuid, Unreadable::Fail) {
                    Ok(v) => v,
                    Err(Error::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
            } else {
                Vec::new()
            };
            Ok(Some((rec, volumes)))
        })
        .await
    }

    /// Define a pool from `xml` and build, start and mark it autostart as
    /// asked: all or nothing. Returns its UUID. A name or source already
    /// taken is `Conflict`.
    pub async fn define_pool(
        &self,
        xml: String,
        build: bool,
        start: bool,
        autostart: bool,
    ) -> Result<String> {
        self.run(move |c| define_blocking(c, &xml, build, start, autostart))
            .await
    }

    /// Run `f` on the pool with this UUID; its error reads "cannot <what>
    /// storage pool <uuid>: …".
    async fn storage_pool_op<F>(&self, uuid: &str, what: &'static str, f: F) -> Result<()>
    where
        F: FnOnce(&StoragePool) -> VirtResult + Send + 'static,
    {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            f(&pool_by_uuid(c, &uuid)?)
                .map_err(|e| from_virt(e, format!("cannot {what} storage pool {uuid}")))
        })
        .await
    }

    /// Run `f` on the volume with this key; its error reads "cannot <what>
    /// volume <key>: …".
    async fn storage_vol_op<F>(&self, key: &str, what: &'static str, f: F) -> Result<()>
    where
        F: FnOnce(&StorageVol) -> VirtResult + Send + 'static,
    {
        let key = key.to_owned();
        self.run(move |c| {
            f(&volume_by_key(c, &key)?)
                .map_err(|e| from_virt(e, format!("cannot {what} volume {key}")))
        })
        .await
    }

    /// Start a pool, building it first when `build`.
    pub async fn start_pool(&self, uuid: &str, build: bool) -> Result<()> {
        let flags = flag(build, sys::VIR_STORAGE_POOL_CREATE_WITH_BUILD);
        self.storage_pool_op(uuid, "start", move |p| p.create(flags))
            .await
    }

    /// Stop (destroy) a pool; its data stays.
    pub async fn stop_pool(&self, uuid: &str) -> Result<()> {
        self.storage_pool_op(uuid, "stop", |p| p.destroy()).await
    }

    /// Re-read a pool's volumes from its storage.
    pub async fn refresh_pool(&self, uuid: &str) -> Result<()> {
        self.storage_pool_op(uuid, "refresh", |p| p.refresh(0))
            .await
    }

    pub async fn set_pool_autostart(&self, uuid: &str, on: bool) -> Result<()> {
        self.storage_pool_op(uuid, "set autostart of", move |p| p.set_autostart(on))
            .await
    }

    /// Remove a pool: stop it if active, remove its (empty) directory when
    /// `delete_directory` (dir pools only), then undefine it. If the
    /// directory cannot be removed, the pool is restarted and stays defined.
    pub async fn undefine_pool(&self, uuid: &str, delete_directory: bool) -> Result<()> {
        let uuid = uuid.to_owned();
        self.run(move |c| undefine_blocking(c, &uuid, delete_directory))
            .await
    }

    /// Create a volume in a pool from `xml`; a name already taken is `Conflict`.
    pub async fn create_volume(&self, pool_uuid: &str, xml: String) -> Result<VolumeRecord> {
        let pool_uuid = pool_uuid.to_owned();
        self.session(move |s| s.create_volume(&pool_uuid, &xml, Preallocation::FromXml))
            .await
    }

    /// Create a volume in a pool from `xml`, filled with a copy of the volume
    /// `source_key` (which may be in another pool).
    pub async fn clone_volume(
        &self,
        pool_uuid: &str,
        xml: String,
        source_key: &str,
    ) -> Result<VolumeRecord> {
        let pool_uuid = pool_uuid.to_owned();
        let source_key = source_key.to_owned();
        self.session(move |s| s.clone_volume(&pool_uuid, &xml, &source_key, Preallocation::FromXml))
            .await
    }

    /// A volume's record, or `None` if it no longer exists.
    pub async fn volume_record(&self, key: &str) -> Result<Option<VolumeRecord>> {
        let key = key.to_owned();
        self.run(move |c| match volume_record_by_key(c, &key) {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Set a volume's capacity; shrinking only when `shrink`.
    pub async fn resize_volume(&self, key: &str, capacity: u64, shrink: bool) -> Result<()> {
        let key = key.to_owned();
        self.session(move |s| s.resize_volume(&key, capacity, shrink))
            .await
    }

    /// Overwrite a volume's data with zeros.
    pub async fn wipe_volume(&self, key: &str) -> Result<()> {
        self.storage_vol_op(key, "wipe", |v| v.wipe(0)).await
    }

    pub async fn delete_volume(&self, key: &str) -> Result<()> {
        self.storage_vol_op(key, "delete", |v| v.delete(0)).await
    }
}

/// The storage operations for one blocking section (see [`Session`]); the
/// async ones above are these, run on the blocking pool. Their errors say
/// what was being done, as the async ones' do (but a pool that
/// [`Session::pool_by_name`] cannot find is libvirt's own `NotFound`).
impl Session<'_> {
    /// The pool with this name; `NotFound` (libvirt's message) when there
    /// is none.
    pub fn pool_by_name(&self, name: &str) -> Result<PoolRecord> {
        let pool = self.conn.lookup_storage_pool_by_name(name).map_err(bare)?;
        pool_record(&pool)
    }

    /// Every pool; one that cannot be read is left out (and logged).
    pub fn pools(&self) -> Result<Vec<PoolRecord>> {
        let pools = self
            .conn
            .list_all_storage_pools(0)
            .map_err(|e| from_virt(e, "cannot list storage pools"))?;
        Ok(pools
            .iter()
            .filter_map(|p| match pool_record(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    log::debug!("skipping a storage pool: {e}");
                    None
                }
            })
            .collect())
    }

    /// Every volume of every active pool, each pool refreshed first (so a
    /// volume made behind libvirt's back counts); what cannot be read is
    /// left out.
    pub fn active_pool_volumes(&self) -> Vec<VolumeRecord> {
        let Ok(pools) = self
            .conn
            .list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pool in pools {
            let _ = pool.refresh(0);
            let Ok(uuid) = pool.uuid_string() else {
                continue;
            };
            out.extend(volumes_of(&pool, &uuid, Unreadable::Skip).unwrap_or_default());
        }
        out
    }

    /// Create a volume in a pool from `xml`, its space set aside as
    /// `prealloc` says; a name already taken is `Conflict`.
    pub fn create_volume(
        &self,
        pool_uuid: &str,
        xml: &str,
        prealloc: Preallocation,
    ) -> Result<VolumeRecord> {
        let pool = pool_by_uuid(self.conn, pool_uuid)?;
        let vol = StorageVol::create_xml(&pool, xml, prealloc.flags(xml))
            .map_err(|e| from_virt(e, format!("cannot create a volume in pool {pool_uuid}")))?;
        volume_record_of(&vol, pool_uuid)
    }

    /// Create a volume in a pool from `xml`, filled with a copy of the
    /// volume `source_key` (which may be in another pool).
    pub fn clone_volume(
        &self,
        pool_uuid: &str,
        xml: &str,
        source_key: &str,
        prealloc: Preallocation,
    ) -> Result<VolumeRecord> {
        let pool = pool_by_uuid(self.conn, pool_uuid)?;
        let src = volume_by_key(self.conn, source_key)?;
        let vol = StorageVol::create_xml_from(&pool, xml, &src, prealloc.flags(xml))
            .map_err(|e| from_virt(e, format!("cannot copy volume {source_key}")))?;
        volume_record_of(&vol, pool_uuid)
    }

    /// Start a transient directory pool over `path` (gone when stopped);
    /// its UUID.
    pub fn start_transient_dir_pool(&self, name: &str, path: &str) -> Result<String> {
        let xml = format!(
            "<pool type='dir'><name>{}</name><target><path>{}</path></target></pool>",
            super::xml::escape(name),
            super::xml::escape(path)
        );
        let pool = self
            .conn
            .create_storage_pool_xml(&xml, 0)
            .map_err(|e| from_virt(e, format!("cannot start a pool over {path}")))?;
        pool.uuid_string().map_err(bare)
    }

    /// Stop a pool (a transient one disappears); its files stay.
    pub fn stop_pool_by_uuid(&self, uuid: &str) -> Result<()> {
        pool_by_uuid(self.conn, uuid)?
            .destroy()
            .map_err(|e| from_virt(e, format!("cannot stop pool {uuid}")))
    }

    /// Set a volume's capacity; shrinking only when `shrink`.
    pub fn resize_volume(&self, key: &str, capacity: u64, shrink: bool) -> Result<()> {
        let flags = flag(shrink, sys::VIR_STORAGE_VOL_RESIZE_SHRINK);
        volume_by_key(self.conn, key)?
            .resize(capacity, flags)
            .map_err(|e| from_virt(e, format!("cannot resize volume {key}")))
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
