//! Which of a VM's disks belong to it alone, and may be deleted with it.
//!
//! `virsh undefine --remove-all-storage` deletes every disk, including one
//! another VM shares. vapord deletes a disk only when all of these hold:
//! - it resolves to a volume in a libvirt storage pool (never a bare file);
//! - vapord created it for this VM (listed in the VM's vapord metadata), or it
//!   is a writable, non-shareable `device='disk'` (never a cdrom or floppy,
//!   never `<readonly/>` or `<shareable/>`);
//! - no other domain references it, as a disk source or in a backing chain;
//! - no volume in any active pool uses it as its backing file.
//!
//! Everything else is reported back as kept, with the reason.

use std::collections::HashMap;

use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt_sys as sys;

use crate::libvirt::errors::from_virt;
use crate::libvirt::xml::{domain_disks, Disk, DiskSource, Element};
use crate::Result;

/// The outcome of planning: what to delete and what to keep (with why).
pub struct StoragePlan {
    pub delete: Vec<(String, StorageVol)>,
    pub kept: Vec<(String, String)>,
}

/// Every path other domains use, mapped to one user's name.
fn paths_used_by_others(conn: &Connect, own_uuid: &str) -> Result<HashMap<String, String>> {
    let mut used = HashMap::new();
    let doms = conn
        .list_all_domains(0)
        .map_err(|e| from_virt(e, "cannot list domains"))?;
    for d in doms {
        if d.uuid_string().ok().as_deref() == Some(own_uuid) {
            continue;
        }
        let name = d.name().unwrap_or_default();
        let mut docs = Vec::new();
        if let Ok(x) = d.xml_desc(0) {
            docs.push(x);
        }
        if d.is_active().unwrap_or(false) && d.is_persistent().unwrap_or(false) {
            if let Ok(x) = d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE) {
                docs.push(x);
            }
        }
        for xml in docs {
            let Ok(root) = Element::parse(&xml) else {
                continue;
            };
            for disk in domain_disks(&root) {
                if let Some(p) = resolve_path(conn, &disk.source) {
                    used.entry(p).or_insert_with(|| name.clone());
                }
                for b in disk.backing {
                    used.entry(b).or_insert_with(|| name.clone());
                }
            }
        }
    }
    Ok(used)
}

/// Backing file path → the volume that is layered on it, over all active pools.
fn backing_files(conn: &Connect) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(pools) = conn.list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE) else {
        return out;
    };
    for pool in pools {
        let _ = pool.refresh(0);
        let Ok(vols) = pool.list_all_volumes(0) else {
            continue;
        };
        for v in vols {
            let (Ok(xml), Ok(path)) = (v.xml_desc(0), v.path()) else {
                continue;
            };
            let Ok(root) = Element::parse(&xml) else {
                continue;
            };
            if let Some(b) = root
                .child("backingStore")
                .and_then(|b| b.child_text("path"))
            {
                out.insert(b.to_owned(), path);
            }
        }
    }
    out
}

/// The host path of a disk source, if it has one.
pub fn resolve_path(conn: &Connect, source: &DiskSource) -> Option<String> {
    match source {
        DiskSource::Path(p) => Some(p.clone()),
        DiskSource::Volume { pool, volume } => conn
            .lookup_storage_pool_by_name(pool)
            .ok()?
            .lookup_storage_vol_by_name(volume)
            .ok()?
            .path()
            .ok(),
        DiskSource::Network(_) | DiskSource::Empty => None,
    }
}

/// Decide, disk by disk, what deleting this VM may delete.
pub fn plan(conn: &Connect, uuid: &str, disks: &[Disk], owned: &[String]) -> Result<StoragePlan> {
    let others = paths_used_by_others(conn, uuid)?;
    let backing = backing_files(conn);
    let mut plan = StoragePlan {
        delete: Vec::new(),
        kept: Vec::new(),
    };
    for disk in disks {
        let label = disk.target.clone().unwrap_or_else(|| "?".into());
        let path = match &disk.source {
            DiskSource::Empty => continue,
            DiskSource::Network(n) => {
                plan.kept
                    .push((n.clone(), "network disk: not local storage".into()));
                continue;
            }
            src => match resolve_path(conn, src) {
                Some(p) => p,
                None => {
                    plan.kept
                        .push((label, "its volume no longer exists in its pool".into()));
                    continue;
                }
            },
        };
        if plan.delete.iter().any(|(p, _)| *p == path) || plan.kept.iter().any(|(p, _)| *p == path)
        {
            continue;
        }
        let created_by_vapord = owned.contains(&path);
        let reason = if !created_by_vapord && disk.device != "disk" {
            Some(format!("{} media is never deleted", disk.device))
        } else if !created_by_vapord && disk.readonly {
            Some("read-only disk".into())
        } else if !created_by_vapord && disk.shareable {
            Some("shareable disk".into())
        } else if let Some(other) = others.get(&path) {
            Some(format!("also used by VM '{other}'"))
        } else {
            backing
                .get(&path)
                .map(|child| format!("backing file of volume {child}"))
        };
        if let Some(r) = reason {
            plan.kept.push((path, r));
            continue;
        }
        match conn.lookup_storage_vol_by_path(&path) {
            Ok(vol) => plan.delete.push((path, vol)),
            Err(_) => plan
                .kept
                .push((path, "not a volume in a libvirt storage pool".into())),
        }
    }
    Ok(plan)
}
