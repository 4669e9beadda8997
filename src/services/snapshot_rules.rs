//! The decisions behind snapshots, as pure functions: what kinds of
//! snapshot a VM allows now and why not ([`capabilities`]), which kind a
//! request gets ([`choose`]), the description libvirt is given
//! ([`snapshot_xml`]) and the checks on a snapshot's name.

use crate::libvirt::snapshot::SnapshotSupport;
use crate::libvirt::xml::{escape, Disk, DiskSource, Element};
use crate::{Error, Result};

/// libvirt that can make internal snapshots of VMs with UEFI variables in
/// pflash (10.9) …
const PFLASH_CREATE: u32 = 10_009_000;
/// … and revert to and delete them (10.10).
const PFLASH_REVERT: u32 = 10_010_000;
/// The longest snapshot name vapord makes (it becomes part of file names).
pub const NAME_MAX: usize = 64;

/// What the decisions need to know about a VM, read from its (live, when
/// running) definition and libvirt.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFacts {
    pub running: bool,
    pub disks: Vec<Disk>,
    /// UEFI variables in a pflash device (`<loader type='pflash'>`).
    pub pflash: bool,
    /// Host PCI devices given to the guest.
    pub vfio: bool,
    /// The guest agent's channel is connected.
    pub agent_connected: bool,
    pub support: SnapshotSupport,
}

/// Read the facts from a domain document. Pure.
pub fn facts_from_domain(dom: &Element, running: bool, support: SnapshotSupport) -> SnapshotFacts {
    let os = dom.child("os");
    let pflash = os
        .and_then(|o| o.child("loader"))
        .is_some_and(|l| l.attr("type") == Some("pflash"));
    let devices = dom.child("devices");
    let vfio = devices.is_some_and(|d| {
        d.children_named("hostdev")
            .any(|h| h.attr("type") == Some("pci"))
    });
    let agent_connected = running
        && devices.is_some_and(|d| {
            d.children_named("channel").any(|c| {
                c.child("target").is_some_and(|t| {
                    t.attr("name") == Some("org.qemu.guest_agent.0")
                        && t.attr("state") == Some("connected")
                })
            })
        });
    SnapshotFacts {
        running,
        disks: crate::libvirt::xml::domain_disks(dom),
        pflash,
        vfio,
        agent_connected,
        support,
    }
}

/// Whether one thing is possible, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub possible: bool,
    /// Why not ("" when possible).
    pub reason: String,
}

impl Verdict {
    fn yes() -> Self {
        Self {
            possible: true,
            reason: String::new(),
        }
    }
    fn no(reason: impl Into<String>) -> Self {
        Self {
            possible: false,
            reason: reason.into(),
        }
    }
    fn first_of(problems: impl IntoIterator<Item = Option<String>>) -> Self {
        problems
            .into_iter()
            .flatten()
            .next()
            .map_or_else(Self::yes, Self::no)
    }
}

/// What a VM allows now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Inside the qcow2 images (with memory when running).
    pub internal: Verdict,
    /// New overlay files for the disks, no memory.
    pub external_disk_only: Verdict,
    /// New overlay files and a memory file (running VMs).
    pub external_memory: Verdict,
    pub revert_internal: Verdict,
    pub delete_internal: Verdict,
    pub revert_external: Verdict,
    pub delete_external: Verdict,
    /// File systems frozen through the guest agent (with disk-only external).
    pub quiesce: Verdict,
}

/// Whether a disk takes part in a snapshot (writable disks do).
pub fn snapshotted(d: &Disk) -> bool {
    d.device == "disk" && !d.readonly && !d.shareable && d.source != DiskSource::Empty
}

fn target(d: &Disk) -> &str {
    d.target.as_deref().unwrap_or("?")
}

fn version(v: u32) -> String {
    format!("{}.{}", v / 1_000_000, (v / 1_000) % 1_000)
}

/// What the VM allows now, each with its reason when not. Pure.
pub fn capabilities(f: &SnapshotFacts) -> Capabilities {
    let disks: Vec<&Disk> = f.disks.iter().filter(|d| snapshotted(d)).collect();
    let no_disks = disks
        .is_empty()
        .then(|| "the VM has no writable disk to snapshot".to_owned());
    let not_qcow2 = disks
        .iter()
        .find(|d| d.format.as_deref() != Some("qcow2"))
        .map(|d| {
            format!(
                "disk {} is {}: internal snapshots need every writable disk in qcow2 format",
                target(d),
                d.format.as_deref().unwrap_or("of unknown format")
            )
        });
    let pflash = (f.pflash && f.support.version < PFLASH_CREATE).then(|| {
        format!(
            "the VM keeps its UEFI variables in pflash, which needs libvirt 10.9 (this host has {})",
            version(f.support.version)
        )
    });
    let vfio_running = (f.running && f.vfio)
        .then(|| "the running VM has host PCI devices, whose state cannot be saved".to_owned());
    let not_file = disks
        .iter()
        .find(|d| !matches!(d.source, DiskSource::Path(_)))
        .map(|d| {
            format!(
                "disk {} is not a file or block device: external snapshots need one",
                target(d)
            )
        });
    let external_revert = (!f.support.external_revert_delete).then(|| {
        format!(
            "reverting to and deleting external snapshots needs libvirt 9.9 (this host has {})",
            version(f.support.version)
        )
    });
    let pflash_later = |what: &str| {
        (f.pflash && f.support.version < PFLASH_REVERT).then(|| {
            format!(
                "the VM keeps its UEFI variables in pflash; {what} its internal snapshots \
                 needs libvirt 10.10 (this host has {})",
                version(f.support.version)
            )
        })
    };
    let stopped =
        (!f.running).then(|| "the VM is not running: there is no memory to save".to_owned());
    let external_disk_only = Verdict::first_of([no_disks.clone(), not_file.clone()]);
    Capabilities {
        internal: Verdict::first_of([no_disks.clone(), not_qcow2, pflash, vfio_running.clone()]),
        external_memory: Verdict::first_of([stopped, no_disks, not_file, vfio_running]),
        revert_internal: Verdict::first_of([pflash_later("reverting to")]),
        delete_internal: Verdict::first_of([pflash_later("deleting")]),
        revert_external: Verdict::first_of([external_revert.clone()]),
        delete_external: Verdict::first_of([external_revert]),
        quiesce: if !f.running {
            Verdict::no("the VM is not running")
        } else if !f.agent_connected {
            Verdict::no("the guest agent is not connected")
        } else if !external_disk_only.possible {
            Verdict::no(format!(
                "quiescing needs a disk-only external snapshot: {}",
                external_disk_only.reason
            ))
        } else {
            Verdict::yes()
        },
        external_disk_only,
    }
}

/// The kind of snapshot a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    Auto,
    Internal,
    External,
}

impl Requested {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "internal" => Ok(Self::Internal),
            "external" => Ok(Self::External),
            other => Err(Error::InvalidArgument(format!(
                "kind: '{other}' is not one of auto, internal, external"
            ))),
        }
    }
}

/// The kind of snapshot made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Internal,
    ExternalDiskOnly,
    ExternalMemory,
}

impl Chosen {
    pub fn as_str(self) -> &'static str {
        match self {
            Chosen::Internal => "internal",
            Chosen::ExternalDiskOnly => "external disk-only",
            Chosen::ExternalMemory => "external with memory",
        }
    }
}

/// What a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: Requested,
    /// Save the memory (default: when the VM runs).
    pub memory: Option<bool>,
    pub quiesce: bool,
}

fn refuse(field: &str, v: &Verdict) -> Error {
    Error::NotSupported(format!("{field}: {}", v.reason))
}

/// The kind a request gets, or why it cannot be had. Pure.
pub fn choose(caps: &Capabilities, running: bool, req: Request) -> Result<Chosen> {
    let memory = req.memory.unwrap_or(running);
    if memory && !running {
        return Err(Error::InvalidState(
            "memory: the VM is not running, so there is no memory to save".into(),
        ));
    }
    if req.quiesce {
        if memory {
            return Err(Error::InvalidArgument(
                "quiesce: only a snapshot without memory can be quiesced (set memory to false)"
                    .into(),
            ));
        }
        if req.kind == Requested::Internal {
            return Err(Error::InvalidArgument(
                "quiesce: only external snapshots can be quiesced".into(),
            ));
        }
        if !caps.quiesce.possible {
            return Err(refuse("quiesce", &caps.quiesce));
        }
        return Ok(Chosen::ExternalDiskOnly);
    }
    let external = || {
        if memory {
            caps.external_memory
                .possible
                .then_some(Chosen::ExternalMemory)
                .ok_or_else(|| refuse("kind", &caps.external_memory))
        } else {
            caps.external_disk_only
                .possible
                .then_some(Chosen::ExternalDiskOnly)
                .ok_or_else(|| refuse("kind", &caps.external_disk_only))
        }
    };
    // An internal snapshot holds the memory exactly when the VM runs.
    let internal_fits = memory == running;
    match req.kind {
        Requested::Internal if !internal_fits => Err(Error::InvalidArgument(
            "memory: an internal snapshot of a running VM always includes its memory".into(),
        )),
        Requested::Internal if !caps.internal.possible => Err(refuse("kind", &caps.internal)),
        Requested::Internal => Ok(Chosen::Internal),
        Requested::External => external(),
        Requested::Auto if internal_fits && caps.internal.possible => Ok(Chosen::Internal),
        // Memory was only the default: a disk-only snapshot is the best
        // left when neither kind can save it (host PCI devices).
        Requested::Auto
            if req.memory.is_none()
                && !caps.external_memory.possible
                && caps.external_disk_only.possible =>
        {
            Ok(Chosen::ExternalDiskOnly)
        }
        Requested::Auto => external(),
    }
}

/// Whether a snapshot of `kind` (`internal`/`external`) may be reverted
/// to (or deleted, when `delete`) now; the reason when not. Pure.
pub fn may_revert_or_delete(caps: &Capabilities, kind: &str, delete: bool) -> Result<()> {
    let v = match (kind == "external", delete) {
        (false, false) => &caps.revert_internal,
        (false, true) => &caps.delete_internal,
        (true, false) => &caps.revert_external,
        (true, true) => &caps.delete_external,
    };
    if v.possible {
        Ok(())
    } else {
        Err(Error::NotSupported(v.reason.clone()))
    }
}

/// Check a snapshot name vapord is asked to make: it becomes part of the
/// overlay and memory file names of an external snapshot.
pub fn check_name(name: &str) -> Result<()> {
    crate::text::check("name", name, crate::text::TextRule::NAME)?;
    let problem = if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if name.len() > NAME_MAX {
        Some(format!("is longer than {NAME_MAX} bytes"))
    } else if name.starts_with(['.', '-']) {
        Some("must not start with '.' or '-'".to_owned())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("may hold only letters, digits, '.', '_' and '-' (not {c:?})"))
    };
    match problem {
        Some(p) => Err(Error::InvalidArgument(format!("name: '{}' {p}", name))),
        None => Ok(()),
    }
}

/// A snapshot name from the time (`snap-20261130-081502`). Pure.
pub fn default_name(unix_secs: i64) -> String {
    let (y, mo, d, h, mi, se) = crate::text::civil_utc(unix_secs);
    format!("snap-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{se:02}")
}

/// The files to record as the VM's own after a snapshot operation, given
/// each disk's (target, file) and the owned files before and after it:
/// each disk's new file where its old one was owned, `extra` (a memory
/// file) when any disk's was, and files owned before that the record lost
/// (a revert restores the snapshot's older record) and that still `exist`.
/// Pure.
pub fn ownership_after(
    disks_before: &[(String, String)],
    owned_before: &[String],
    disks_after: &[(String, String)],
    owned_after: &[String],
    extra: Option<String>,
    exists: impl Fn(&str) -> bool,
) -> Vec<String> {
    let owned = |f: &String| owned_before.contains(f) || owned_after.contains(f);
    let mut out: Vec<String> = owned_before
        .iter()
        .filter(|f| !owned_after.contains(f) && exists(f))
        .cloned()
        .collect();
    for (t, f) in disks_after {
        let replaced_own = disks_before
            .iter()
            .any(|(bt, bf)| bt == t && bf != f && owned(bf));
        if replaced_own && !owned(f) && !out.contains(f) {
            out.push(f.clone());
        }
    }
    if disks_before.iter().any(|(_, f)| owned(f)) {
        out.extend(extra);
    }
    out
}

/// `base`, or `base-2`, `base-3` … whichever is not `taken`. Pure.
pub fn unused_name(base: &str, taken: &[String]) -> String {
    let free = |n: &String| !taken.contains(n);
    std::iter::once(base.to_owned())
        .chain((2..).map(|i| format!("{base}-{i}")))
        .find(free)
        .expect("an unbounded sequence has a free name")
}

/// The memory file of an external snapshot with memory: beside the first
/// snapshotted disk, named as libvirt names the overlays. Pure.
pub fn memory_file(disks: &[Disk], name: &str) -> Option<String> {
    let path = disks
        .iter()
        .filter(|d| snapshotted(d))
        .find_map(|d| match &d.source {
            DiskSource::Path(p) => Some(p.clone()),
            _ => None,
        })?;
    let p = std::path::Path::new(&path);
    let dir = p.parent()?.to_str()?;
    let stem = p.file_stem()?.to_str()?;
    Some(format!("{dir}/{stem}.{name}.mem"))
}

/// The `<domainsnapshot>` libvirt is given. Pure.
pub fn snapshot_xml(
    name: &str,
    description: &str,
    chosen: Chosen,
    running: bool,
    disks: &[Disk],
    memory_file: Option<&str>,
) -> String {
    let mut x = format!("<domainsnapshot><name>{}</name>", escape(name));
    if !description.is_empty() {
        x.push_str(&format!(
            "<description>{}</description>",
            escape(description)
        ));
    }
    match (chosen, memory_file) {
        (Chosen::ExternalMemory, Some(f)) => x.push_str(&format!(
            "<memory snapshot='external' file='{}'/>",
            escape(f)
        )),
        (Chosen::Internal, _) if running => x.push_str("<memory snapshot='internal'/>"),
        _ => x.push_str("<memory snapshot='no'/>"),
    }
    x.push_str("<disks>");
    for d in disks {
        let Some(t) = &d.target else { continue };
        let mode = match (snapshotted(d), chosen) {
            (false, _) => "no",
            (true, Chosen::Internal) => "internal",
            (true, _) => "external",
        };
        x.push_str(&format!("<disk name='{}' snapshot='{mode}'/>", escape(t)));
    }
    x.push_str("</disks></domainsnapshot>");
    x
}

#[cfg(test)]
#[path = "snapshot_rules_tests.rs"]
mod tests;
