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

use crate::libvirt::volume::Volume;
use crate::libvirt::xml::{domain_disks, nvram_path, Disk, DiskSource, Element};
use crate::libvirt::{DomainRef, Session};
use crate::{Error, Result};

pub use crate::fsutil::canonical;

/// The outcome of planning: what to delete and what to keep (with why).
pub struct StoragePlan {
    pub delete: Vec<(String, Volume)>,
    pub kept: Vec<(String, String)>,
    /// Whether the NVRAM file may go with the domain (else why not).
    pub nvram_kept: Option<String>,
}

/// Every path a domain's definitions use (disks, NVRAM, whole backing
/// chains), canonical. A definition that cannot be read is an error: then
/// no one can prove the domain does not use some piece of storage.
pub fn domain_paths(s: &Session, d: &DomainRef) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for root in domain_definitions(d)? {
        out.extend(definition_paths_of(s, &root)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The live and the persistent definition of a domain (one when they are
/// the same); none for a domain undefined meanwhile.
pub fn domain_definitions(d: &DomainRef) -> std::result::Result<Vec<Element>, String> {
    match d.definitions() {
        Ok(defs) => Ok(defs.into_vec()),
        // A domain undefined meanwhile uses nothing any more.
        Err(Error::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// The paths one definition uses, canonical.
pub fn definition_paths_of(
    s: &Session,
    root: &Element,
) -> std::result::Result<Vec<String>, String> {
    let mut paths: Vec<String> = nvram_path(root).into_iter().collect();
    for disk in domain_disks(root) {
        let path = resolve_path(s, &disk.source);
        // A stopped domain's XML shows no backing chain: read it from the image.
        if disk.backing.is_empty() && disk.format.as_deref() == Some("qcow2") {
            if let Some(p) = &path {
                paths.extend(crate::image::backing_chain_paths(p)?);
            }
        }
        paths.extend(path);
        paths.extend(disk.backing);
    }
    Ok(paths.iter().map(|p| canonical(p)).collect())
}

/// Every path domains use (canonical), mapped to the names of their users,
/// leaving out `except` (the VM being deleted). Fails if any domain's
/// definition cannot be read.
pub fn paths_in_use(s: &Session, except: Option<&str>) -> Result<HashMap<String, Vec<String>>> {
    let mut used: HashMap<String, Vec<String>> = HashMap::new();
    let doms = s.domains().map_err(|e| e.context("cannot list domains"))?;
    for d in doms {
        if except.is_some() && d.uuid().ok().as_deref() == except {
            continue;
        }
        let name = d.name().unwrap_or_default();
        let paths = domain_paths(s, &d).map_err(|e| {
            Error::Failed(format!(
                "cannot make sure VM '{name}' does not use this storage, so nothing was deleted: {e}"
            ))
        })?;
        for p in paths {
            let users = used.entry(p).or_default();
            if !users.contains(&name) {
                users.push(name.clone());
            }
        }
    }
    Ok(used)
}

/// Who else needs storage, as the deletion rules see it (all domains but
/// `except`, and every volume layered on another).
pub fn other_users(s: &Session, except: Option<&str>) -> Result<OtherUsers> {
    Ok(OtherUsers {
        domains: paths_in_use(s, except)?,
        backing_of: backing_files(s)
            .into_iter()
            .map(|(b, child)| (canonical(&b), child))
            .collect(),
    })
}

/// Backing file path → the volume that is layered on it, over all active pools.
fn backing_files(s: &Session) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for v in s.active_pool_volumes() {
        if !v.backing_store.is_empty() {
            map.entry(v.backing_store).or_default().push(v.path);
        }
    }
    map
}

/// Whether a pool of this type holds devices (LVM, disks, iSCSI …) rather
/// than files in a directory. Pure.
pub fn is_device_pool(kind: &str) -> bool {
    !matches!(kind, "dir" | "fs" | "netfs")
}

/// Whether a volume lives in a pool of devices.
fn in_device_pool(vol: &Volume) -> bool {
    vol.pool_kind().is_some_and(|k| is_device_pool(&k))
}

/// The host path of a disk source, if it has one.
pub fn resolve_path(s: &Session, source: &DiskSource) -> Option<String> {
    match source {
        DiskSource::Path(p) => Some(p.clone()),
        DiskSource::Volume { pool, volume } => s.volume_in(pool, volume).ok()?.path().ok(),
        DiskSource::Network(_) | DiskSource::Empty => None,
    }
}

/// What the deletion rules need to know about one piece of storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The path as the VM names it (or as vapord recorded it).
    pub path: String,
    /// The same path with symlinks resolved: the file itself.
    pub canonical: String,
    /// How the VM attaches it; None for a volume vapord created for the VM
    /// that is no longer attached.
    pub disk: Option<DiskUse>,
    /// Listed in the VM's vapord metadata as created for it.
    pub created_for_vm: bool,
    /// A volume in a libvirt storage pool (bare files are never deleted).
    pub is_volume: bool,
}

/// How a disk is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUse {
    pub device: String,
    pub readonly: bool,
    pub shareable: bool,
}

/// Who else needs storage, keyed by canonical path.
#[derive(Debug, Clone, Default)]
pub struct OtherUsers {
    /// Paths other domains use (disks, NVRAM, backing chains) → their names.
    pub domains: HashMap<String, Vec<String>>,
    /// Backing files of volumes in active pools → the volumes on top.
    pub backing_of: HashMap<String, Vec<String>>,
}

/// What deleting the VM does with one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delete,
    Keep(String),
    /// Nothing to report (a recorded volume that is already gone).
    Skip,
}

/// The deletion rule, for one candidate. `remove_foreign` is the caller's
/// explicit (and separately authorized) wish to delete storage vapord did
/// not create for this VM.
pub fn decide(c: &Candidate, remove_foreign: bool, others: &OtherUsers) -> Verdict {
    if let Some(users) = others.domains.get(&c.canonical).filter(|u| !u.is_empty()) {
        let names: Vec<String> = users.iter().map(|n| format!("'{n}'")).collect();
        let vms = if names.len() == 1 { "VM" } else { "VMs" };
        return Verdict::Keep(format!("also used by {vms} {}", names.join(", ")));
    }
    if let Some(child) = others.backing_of.get(&c.canonical).and_then(|v| v.first()) {
        return Verdict::Keep(format!("backing file of volume {child}"));
    }
    if !c.is_volume {
        return match c.disk {
            None => Verdict::Skip,
            Some(_) => Verdict::Keep("not a volume in a libvirt storage pool".into()),
        };
    }
    if c.created_for_vm {
        return Verdict::Delete;
    }
    let Some(d) = &c.disk else {
        return Verdict::Skip;
    };
    if !remove_foreign {
        return Verdict::Keep(
            "not created by vapord for this VM (remove_foreign_storage deletes it)".into(),
        );
    }
    if d.device != "disk" {
        Verdict::Keep(format!("{} media is never deleted", d.device))
    } else if d.readonly {
        Verdict::Keep("read-only disk".into())
    } else if d.shareable {
        Verdict::Keep("shareable disk".into())
    } else {
        Verdict::Delete
    }
}

/// Whether a volume may be deleted on its own (Volume.Delete, or a pool's
/// contents): the VM deletion rules, applied to a volume the caller names
/// explicitly — never while a VM or another volume needs it.
pub fn decide_volume(canonical: &str, others: &OtherUsers) -> Verdict {
    let c = Candidate {
        path: canonical.to_owned(),
        canonical: canonical.to_owned(),
        disk: None,
        created_for_vm: true,
        is_volume: true,
    };
    decide(&c, false, others)
}

/// Decide, disk by disk, what deleting this VM may delete: vapord's own
/// volumes for it always (when no one else uses them), other storage only
/// with `remove_foreign`.
pub fn plan(
    s: &Session,
    uuid: &str,
    disks: &[Disk],
    owned: &[String],
    nvram: Option<&str>,
    remove_foreign: bool,
) -> Result<StoragePlan> {
    let others = other_users(s, Some(uuid))?;

    let mut plan = StoragePlan {
        delete: Vec::new(),
        kept: Vec::new(),
        nvram_kept: nvram
            .and_then(|p| others.domains.get(&canonical(p)))
            .and_then(|users| users.first())
            .map(|other| format!("firmware variables also used by VM '{other}'")),
    };
    // Attached disks, then volumes vapord made for the VM that are no longer attached.
    let mut candidates: Vec<(String, Option<DiskUse>)> = Vec::new();
    for disk in disks {
        let label = disk.target.clone().unwrap_or_else(|| "?".into());
        match &disk.source {
            DiskSource::Empty => {}
            DiskSource::Network(n) => plan
                .kept
                .push((n.clone(), "network disk: not local storage".into())),
            src => match resolve_path(s, src) {
                Some(p) => candidates.push((
                    p,
                    Some(DiskUse {
                        device: disk.device.clone(),
                        readonly: disk.readonly,
                        shareable: disk.shareable,
                    }),
                )),
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
    let mut judged = Vec::new();
    for (path, disk) in candidates {
        let key = canonical(&path);
        if !seen.insert(key.clone()) {
            continue;
        }
        let vol = s.volume_at(&path).ok();
        // Ownership goes by the path vapord recorded, exactly, and only while
        // no link sits there: replacing one's own volume with a link to
        // someone else's must not make theirs "created for this VM".
        // (In pools of devices — LVM, disks — volume paths are links the
        // system made, /dev/vg/lv → /dev/dm-3: those count as themselves.)
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        let planted_link = is_link && !vol.as_ref().is_some_and(in_device_pool);
        let candidate = Candidate {
            created_for_vm: owned.contains(&path) && !planted_link,
            canonical: key,
            is_volume: vol.is_some(),
            disk,
            path,
        };
        judged.push((candidate, vol));
    }
    let candidates: Vec<Candidate> = judged.iter().map(|(c, _)| c.clone()).collect();
    for (i, verdict) in decide_all(&candidates, remove_foreign, &others) {
        let (candidate, vol) = &judged[i];
        match (verdict, vol) {
            (Verdict::Delete, Some(vol)) => plan.delete.push((candidate.path.clone(), vol.clone())),
            (Verdict::Keep(why), _) => plan.kept.push((candidate.path.clone(), why)),
            _ => {}
        }
    }
    Ok(plan)
}

/// [`decide`] for all of one VM's candidates at once: a volume kept only as
/// the backing file of another volume this same deletion removes (a linked
/// clone's source on its own overlay, say) goes too, after it. Returns
/// (index, verdict) in the order to act on them. Pure.
pub fn decide_all(
    cands: &[Candidate],
    remove_foreign: bool,
    others: &OtherUsers,
) -> Vec<(usize, Verdict)> {
    let mut others = others.clone();
    let mut out: Vec<(usize, Verdict)> = Vec::new();
    let mut done = vec![false; cands.len()];
    loop {
        let mut deleting = Vec::new();
        for (i, c) in cands.iter().enumerate().filter(|(i, _)| !done[*i]) {
            if decide(c, remove_foreign, &others) == Verdict::Delete {
                deleting.push(i);
            }
        }
        if deleting.is_empty() {
            break;
        }
        for &i in &deleting {
            done[i] = true;
            out.push((i, Verdict::Delete));
        }
        // What those were the backing file of no longer holds it.
        let gone: Vec<&Candidate> = deleting.iter().map(|&i| &cands[i]).collect();
        for children in others.backing_of.values_mut() {
            children.retain(|child| {
                !gone
                    .iter()
                    .any(|c| *child == c.canonical || *child == c.path)
            });
        }
        others.backing_of.retain(|_, children| !children.is_empty());
    }
    for (i, c) in cands.iter().enumerate().filter(|(i, _)| !done[*i]) {
        out.push((i, decide(c, remove_foreign, &others)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(device: &str, readonly: bool, shareable: bool) -> Option<DiskUse> {
        Some(DiskUse {
            device: device.into(),
            readonly,
            shareable,
        })
    }

    fn cand(path: &str, disk: Option<DiskUse>, created: bool, is_volume: bool) -> Candidate {
        Candidate {
            path: path.into(),
            canonical: path.into(),
            disk,
            created_for_vm: created,
            is_volume,
        }
    }

    fn keep(why: &str) -> Verdict {
        Verdict::Keep(why.into())
    }

    #[test]
    fn a_base_image_only_this_deletion_still_needs_goes_after_its_overlay() {
        let mut others = OtherUsers::default();
        others
            .backing_of
            .insert("/p/base.qcow2".into(), vec!["/p/top.qcow2".into()]);
        let base = cand("/p/base.qcow2", None, true, true);
        let top = cand("/p/top.qcow2", disk("disk", false, false), true, true);
        let order = decide_all(&[base.clone(), top.clone()], false, &others);
        assert_eq!(order, vec![(1, Verdict::Delete), (0, Verdict::Delete)]);
        // An overlay someone else has keeps its base.
        others.backing_of.insert(
            "/p/base.qcow2".into(),
            vec!["/p/top.qcow2".into(), "/p/clone.qcow2".into()],
        );
        let order = decide_all(&[base, top], false, &others);
        assert_eq!(
            order,
            vec![
                (1, Verdict::Delete),
                (0, keep("backing file of volume /p/clone.qcow2"))
            ]
        );
    }

    #[test]
    fn volumes_vapord_created_for_the_vm_are_deleted() {
        let none = OtherUsers::default();
        let c = cand("/p/a.qcow2", disk("disk", false, false), true, true);
        assert_eq!(decide(&c, false, &none), Verdict::Delete);
        // Even detached, and even read-only or a cdrom (the seed ISO).
        let c = cand("/p/a.qcow2", None, true, true);
        assert_eq!(decide(&c, false, &none), Verdict::Delete);
        let c = cand("/p/seed.iso", disk("cdrom", true, false), true, true);
        assert_eq!(decide(&c, false, &none), Verdict::Delete);
    }

    #[test]
    fn attached_storage_is_kept_without_remove_foreign_storage() {
        let none = OtherUsers::default();
        let c = cand(
            "/mnt/share/common-data.qcow2",
            disk("disk", false, false),
            false,
            true,
        );
        assert_eq!(
            decide(&c, false, &none),
            keep("not created by vapord for this VM (remove_foreign_storage deletes it)")
        );
        assert_eq!(decide(&c, true, &none), Verdict::Delete);
    }

    #[test]
    fn foreign_media_read_only_and_shareable_disks_are_never_deleted() {
        let none = OtherUsers::default();
        let cases = [
            (disk("cdrom", true, false), "cdrom media is never deleted"),
            (
                disk("floppy", false, false),
                "floppy media is never deleted",
            ),
            (disk("disk", true, false), "read-only disk"),
            (disk("disk", false, true), "shareable disk"),
        ];
        for (d, why) in cases {
            let c = cand("/p/x", d, false, true);
            assert_eq!(decide(&c, true, &none), keep(why));
        }
    }

    #[test]
    fn storage_anyone_else_uses_is_kept_even_when_vapord_made_it() {
        let mut others = OtherUsers::default();
        others
            .domains
            .insert("/p/a.qcow2".into(), vec!["web".into()]);
        others
            .backing_of
            .insert("/p/base.qcow2".into(), vec!["/p/top.qcow2".into()]);
        let c = cand("/p/a.qcow2", disk("disk", false, false), true, true);
        assert_eq!(decide(&c, true, &others), keep("also used by VM 'web'"));
        let c = cand("/p/base.qcow2", None, true, true);
        assert_eq!(
            decide(&c, true, &others),
            keep("backing file of volume /p/top.qcow2")
        );
    }

    #[test]
    fn a_volume_deleted_on_its_own_follows_the_same_rules() {
        let mut others = OtherUsers::default();
        assert_eq!(decide_volume("/p/free.qcow2", &others), Verdict::Delete);
        others
            .domains
            .insert("/p/a.qcow2".into(), vec!["web".into(), "db".into()]);
        others
            .backing_of
            .insert("/p/base.qcow2".into(), vec!["/p/top.qcow2".into()]);
        assert_eq!(
            decide_volume("/p/a.qcow2", &others),
            keep("also used by VMs 'web', 'db'")
        );
        assert_eq!(
            decide_volume("/p/base.qcow2", &others),
            keep("backing file of volume /p/top.qcow2")
        );
    }

    #[test]
    fn bare_files_are_never_deleted() {
        let none = OtherUsers::default();
        let c = cand("/srv/disk.img", disk("disk", false, false), true, false);
        assert_eq!(
            decide(&c, true, &none),
            keep("not a volume in a libvirt storage pool")
        );
        // A recorded volume that is gone already: nothing to say.
        let c = cand("/p/gone.qcow2", None, true, false);
        assert_eq!(decide(&c, true, &none), Verdict::Skip);
    }

    #[test]
    fn only_file_pools_hold_files() {
        for kind in ["dir", "fs", "netfs"] {
            assert!(!is_device_pool(kind), "{kind}");
        }
        for kind in ["logical", "disk", "iscsi", "scsi", "mpath", "zfs"] {
            assert!(is_device_pool(kind), "{kind}");
        }
    }

    #[test]
    fn others_are_matched_by_the_file_not_the_spelling() {
        let mut others = OtherUsers::default();
        others
            .domains
            .insert("/real/a.qcow2".into(), vec!["db".into(), "web".into()]);
        let mut c = cand("/p/link.qcow2", disk("disk", false, false), true, true);
        c.canonical = "/real/a.qcow2".into();
        assert_eq!(
            decide(&c, true, &others),
            keep("also used by VMs 'db', 'web'")
        );
    }
}
