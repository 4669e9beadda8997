//! Storage pool and volume records ([`PoolRecord`], [`VolumeRecord`],
//! [`StorageListing`]) and reading them from libvirt's XML
//! ([`parse_pool_xml`], [`parse_volume_xml`], both pure), with libvirt's
//! size units and pool state names.

use virt_sys as sys;

use super::xml::Element;
use crate::{Error, Result};

/// One storage pool as libvirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    pub uuid: String,
    pub name: String,
    /// The pool type: "dir", "fs", "netfs", "logical", "iscsi", "disk", …
    pub kind: String,
    /// "inactive", "building", "running", "degraded" or "inaccessible".
    pub state: &'static str,
    pub autostart: bool,
    pub persistent: bool,
    /// `<target><path>`, "" if none.
    pub target_path: String,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

impl PoolRecord {
    /// Whether the pool is started (running, degraded or inaccessible).
    pub fn is_active(&self) -> bool {
        lists_volumes(self.state)
    }
}

/// One volume of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub pool_uuid: String,
    pub name: String,
    pub key: String,
    pub path: String,
    /// `<target><format type=…>`, "" if none.
    pub format: String,
    /// "file", "block", "dir", "network", "netdir" or "ploop".
    pub kind: String,
    pub capacity: u64,
    pub allocation: u64,
    /// `<backingStore><path>`, "" if none.
    pub backing_store: String,
}

/// Every pool, and the volumes of the active ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageListing {
    pub pools: Vec<PoolRecord>,
    pub volumes: Vec<VolumeRecord>,
    /// UUIDs of pools whose record or volumes could not be read (a
    /// transient libvirt error): neither they nor their volumes are in
    /// `pools` and `volumes`, and what was known of them should stay.
    pub skipped: Vec<String>,
}

fn malformed(what: &str) -> Error {
    Error::Failed(format!("malformed {what} XML from libvirt"))
}

/// The pool's type and target path, from its XML.
pub fn parse_pool_xml(xml: &str) -> Result<(String, String)> {
    let root = Element::parse(xml)?;
    if root.local_name() != "pool" {
        return Err(malformed("storage pool"));
    }
    let kind = root.attr("type").ok_or_else(|| malformed("storage pool"))?;
    let target = root.child("target").and_then(|t| t.child_text("path"));
    Ok((kind.to_owned(), target.unwrap_or("").to_owned()))
}

/// A size element (`<capacity unit='bytes'>…`) in bytes; absent is 0.
pub(super) fn size_of(el: Option<&Element>) -> Result<u64> {
    let Some(el) = el else { return Ok(0) };
    let n: u64 = el.text.trim().parse().map_err(|_| malformed("volume"))?;
    // libvirt's units: bytes, or K…E alone or with "iB" (powers of 1024)
    // or with "B" (powers of 1000).
    let unit = el.attr("unit").unwrap_or("bytes");
    let scale = match unit {
        "b" | "B" | "byte" | "bytes" => Some(1),
        _ => {
            let prefix = unit.get(..1).filter(|p| !p.is_empty()).unwrap_or("?");
            let rest = unit.get(1..).unwrap_or("?");
            let power = "KMGTPE"
                .find(&prefix.to_ascii_uppercase())
                .map(|i| i as u32 + 1);
            match (power, rest) {
                (Some(p), "" | "iB") => 1024u64.checked_pow(p),
                (Some(p), "B") => 1000u64.checked_pow(p),
                _ => None,
            }
        }
    };
    let scale = scale.ok_or_else(|| malformed("volume"))?;
    n.checked_mul(scale).ok_or_else(|| malformed("volume"))
}

/// A volume's record from its XML (`virStorageVolGetXMLDesc`); the pool is
/// the caller's to say.
pub fn parse_volume_xml(xml: &str, pool_uuid: &str) -> Result<VolumeRecord> {
    let root = Element::parse(xml)?;
    if root.local_name() != "volume" {
        return Err(malformed("volume"));
    }
    let name = root
        .child_text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| malformed("volume"))?;
    let target = root.child("target");
    let path = target.and_then(|t| t.child_text("path")).unwrap_or("");
    let format = target
        .and_then(|t| t.child("format"))
        .and_then(|f| f.attr("type"))
        .unwrap_or("");
    let backing = root
        .child("backingStore")
        .and_then(|b| b.child_text("path"))
        .unwrap_or("");
    Ok(VolumeRecord {
        pool_uuid: pool_uuid.to_owned(),
        name: name.to_owned(),
        key: root.child_text("key").unwrap_or("").to_owned(),
        path: path.to_owned(),
        format: format.to_owned(),
        kind: root.attr("type").unwrap_or("file").to_owned(),
        capacity: size_of(root.child("capacity"))?,
        allocation: size_of(root.child("allocation"))?,
        backing_store: backing.to_owned(),
    })
}

pub(super) fn state_name(state: u32) -> &'static str {
    match state {
        sys::VIR_STORAGE_POOL_INACTIVE => "inactive",
        sys::VIR_STORAGE_POOL_BUILDING => "building",
        sys::VIR_STORAGE_POOL_RUNNING => "running",
        sys::VIR_STORAGE_POOL_DEGRADED => "degraded",
        _ => "inaccessible",
    }
}

/// Whether a pool in this state may have volumes to list.
pub(super) fn lists_volumes(state: &str) -> bool {
    matches!(state, "running" | "degraded" | "inaccessible")
}

#[cfg(test)]
#[path = "storage_records_tests.rs"]
mod tests;
