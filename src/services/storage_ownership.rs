//! Which of a VM's disks belong to it alone, and may be deleted with it.
//!
//! `virsh undefine --remove-all-storage` deletes every disk, including one
//! another VM shares. vapord deletes a disk only when all of these hold:
//! - it resolves to a volume in a libvirt storage pool (never a bare file);
//! - vapord created it for this VM (listed in the VM's vapord metadata), or it
//!   is a writable, non-shareable `device='disk'` (never a cdrom or floppy,
//!   never `<readonly/>` or `<shareable/>`);
//! - no other domain references it, as a disk source, NVRAM file, or anywhere
//!   in a backing chain (read from the image itself for stopped domains);
//! - no volume in any active pool uses it as its backing file.
//!
//! Paths are compared after resolving symlinks, so two spellings of one file
//! are one file. If another VM's definition cannot be read, nothing is
//! deleted (we cannot prove the storage is not shared). The VM's firmware
//! variables (NVRAM) follow the same "not used by another VM" rule, and
//! volumes vapord created for the VM count even when no longer attached.
//! Everything else is reported back as kept, with the reason.

use std::collections::HashMap;

use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt_sys as sys;

use crate::libvirt::errors::{from_virt, is_not_found};
use crate::libvirt::xml::{domain_disks, Disk, DiskSource, Element};
use crate::{Error, Result};

/// The outcome of planning: what to delete and what to keep (with why).
pub struct StoragePlan {
    pub delete: Vec<(String, StorageVol)>,
    pub kept: Vec<(String, String)>,
    /// Whether the NVRAM file may go with the domain (else why not).
    pub nvram_kept: Option<String>,
}

/// A path with symlinks resolved (as given when it does not exist).
pub fn canonical(path: &str) -> String {
    std::fs::canonicalize(path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_owned())
}

/// The NVRAM file of a domain definition, in either XML form.
pub fn nvram_path(domain: &Element) -> Option<String> {
    let nv = domain.child("os")?.child("nvram")?;
    let text = nv.text.trim();
    if !text.is_empty() {
        return Some(text.to_owned());
    }
    nv.child("source")
        .and_then(|s| s.attr("file"))
        .map(String::from)
}

/// Every path other domains use (canonical), mapped to one user's name.
/// Fails if any other domain's definition cannot be read.
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
        let unreadable = |e: String| {
            Error::Failed(format!(
                "cannot make sure VM '{name}' does not share this storage, so nothing was deleted: {e}"
            ))
        };
        // A domain undefined meanwhile uses nothing any more; any other
        // failure means we cannot prove the storage is unshared.
        let mut docs = Vec::new();
        let mut flags = vec![0];
        if d.is_active().unwrap_or(false) && d.is_persistent().unwrap_or(false) {
            flags.push(sys::VIR_DOMAIN_XML_INACTIVE);
        }
        for f in flags {
            match d.xml_desc(f) {
                Ok(x) => docs.push(x),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(unreadable(e.message().to_owned())),
            }
        }
        for xml in docs {
            let root = Element::parse(&xml).map_err(|e| unreadable(e.to_string()))?;
            let mut paths: Vec<String> = nvram_path(&root).into_iter().collect();
            for disk in domain_disks(&root) {
                let path = resolve_path(conn, &disk.source);
                // A stopped domain's XML shows no backing chain: read it from the image.
                if disk.backing.is_empty() && disk.format.as_deref() == Some("qcow2") {
                    if let Some(p) = &path {
                        paths.extend(image_backing_chain(p).map_err(unreadable)?);
                    }
                }
                paths.extend(path);
                paths.extend(disk.backing);
            }
            for p in paths {
                used.entry(canonical(&p)).or_insert_with(|| name.clone());
            }
        }
    }
    Ok(used)
}

/// The files below a qcow2 image (backing files and external data files,
/// symlinks resolved), read from the image headers by [`crate::image`]
/// without running qemu-img; empty when the image does not exist. A chain
/// that names a non-local file, loops, is too deep or cannot be read is an
/// error (nothing is opened over the network).
pub fn image_backing_chain(path: &str) -> std::result::Result<Vec<String>, String> {
    crate::image::backing_chain(std::path::Path::new(path))
        .map(|links| links.into_iter().map(|l| l.path).collect())
        .map_err(|e| e.to_string())
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
pub fn plan(
    conn: &Connect,
    uuid: &str,
    disks: &[Disk],
    owned: &[String],
    nvram: Option<&str>,
) -> Result<StoragePlan> {
    let others = paths_used_by_others(conn, uuid)?;
    let backing = backing_files(conn);
    let owned_canonical: Vec<String> = owned.iter().map(|p| canonical(p)).collect();
    let mut plan = StoragePlan {
        delete: Vec::new(),
        kept: Vec::new(),
        nvram_kept: nvram
            .and_then(|p| others.get(&canonical(p)))
            .map(|other| format!("firmware variables also used by VM '{other}'")),
    };
    // Attached disks, then volumes vapord made for the VM that are no longer attached.
    let mut candidates: Vec<(String, Option<&Disk>)> = Vec::new();
    for disk in disks {
        let label = disk.target.clone().unwrap_or_else(|| "?".into());
        match &disk.source {
            DiskSource::Empty => {}
            DiskSource::Network(n) => plan
                .kept
                .push((n.clone(), "network disk: not local storage".into())),
            src => match resolve_path(conn, src) {
                Some(p) => candidates.push((p, Some(disk))),
                None => plan
                    .kept
                    .push((label, "its volume no longer exists in its pool".into())),
            },
        }
    }
    for p in owned {
        if !candidates.iter().any(|(c, _)| canonical(c) == canonical(p)) {
            candidates.push((p.clone(), None));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (path, disk) in candidates {
        let key = canonical(&path);
        if !seen.insert(key.clone()) {
            continue;
        }
        let created_by_vapord = owned_canonical.contains(&key);
        let reason = match disk {
            Some(d) if !created_by_vapord && d.device != "disk" => {
                Some(format!("{} media is never deleted", d.device))
            }
            Some(d) if !created_by_vapord && d.readonly => Some("read-only disk".into()),
            Some(d) if !created_by_vapord && d.shareable => Some("shareable disk".into()),
            _ => None,
        }
        .or_else(|| {
            others
                .get(&key)
                .map(|other| format!("also used by VM '{other}'"))
        })
        .or_else(|| {
            backing
                .get(&key)
                .map(|child| format!("backing file of volume {child}"))
        });
        if let Some(r) = reason {
            plan.kept.push((path, r));
            continue;
        }
        match conn.lookup_storage_vol_by_path(&path) {
            Ok(vol) => plan.delete.push((path, vol)),
            Err(_) if disk.is_none() => {} // an owned volume already gone
            Err(_) => plan
                .kept
                .push((path, "not a volume in a libvirt storage pool".into())),
        }
    }
    Ok(plan)
}
