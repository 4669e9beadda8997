//! Volumes found by where they are (a host path, or a pool and a name)
//! rather than by key, for one blocking section (see [`Session`]): what
//! deletion, rollback and VM creation ask of a disk's file. The volume
//! operations by key live in [`super::storage`].
//!
//! Errors carry libvirt's own message and kind ([`super::errors::bare`]; a
//! volume that is not there is `Error::NotFound`): say what was being done
//! with [`Error::context`](crate::Error::context).

use virt::storage_vol::StorageVol;

use super::errors::bare;
use super::storage::{parse_pool_xml, volume_record_of, VolumeRecord};
use super::Session;
use crate::Result;

/// One volume, to act on inside a blocking section.
#[derive(Clone)]
pub struct Volume {
    vol: StorageVol,
}

impl Volume {
    /// The host path libvirt gives it.
    pub fn path(&self) -> Result<String> {
        self.vol.path().map_err(bare)
    }

    /// Its record (format, capacity, backing store …), read from its XML.
    pub fn record(&self) -> Result<VolumeRecord> {
        let pool = self.vol.lookup_storage_pool().map_err(bare)?;
        let pool_uuid = pool.uuid_string().map_err(bare)?;
        volume_record_of(&self.vol, &pool_uuid)
    }

    /// The name of the pool holding it, when that can be read.
    pub fn pool_name(&self) -> Option<String> {
        self.vol.lookup_storage_pool().ok()?.name().ok()
    }

    /// The type of the pool holding it (`dir`, `fs`, `logical`, `disk` …),
    /// when that can be read.
    pub fn pool_kind(&self) -> Option<String> {
        let pool = self.vol.lookup_storage_pool().ok()?;
        let xml = pool.xml_desc(0).ok()?;
        parse_pool_xml(&xml).ok().map(|(kind, _)| kind)
    }

    /// Delete it (its data and its entry in the pool).
    pub fn delete(&self) -> Result<()> {
        self.vol.delete(0).map_err(bare)
    }
}

impl Session<'_> {
    /// The volume at a host path; `NotFound` when libvirt knows none there.
    pub fn volume_at(&self, path: &str) -> Result<Volume> {
        let vol = self.conn.lookup_storage_vol_by_path(path).map_err(bare)?;
        Ok(Volume { vol })
    }

    /// The volume `name` in the pool named `pool`; `NotFound` when either
    /// is not there.
    pub fn volume_in(&self, pool: &str, name: &str) -> Result<Volume> {
        let pool = self.conn.lookup_storage_pool_by_name(pool).map_err(bare)?;
        let vol = pool.lookup_storage_vol_by_name(name).map_err(bare)?;
        Ok(Volume { vol })
    }
}
