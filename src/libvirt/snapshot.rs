//! The typed port for domain snapshots: every snapshot of a domain with its
//! facts, making one from a description, reverting to one and deleting one,
//! and what this libvirt supports. libvirt's snapshot XML is read by pure
//! functions here ([`parse_snapshot`]); the XML vapord writes is decided in
//! the service layer.

use virt::domain::Domain;
use virt::error::ErrorNumber as N;
use virt_sys as sys;

use super::conn::Session;
use super::domain::DomainRef;
use super::errors::bare;
use super::xml::Element;
use crate::{Error, Result};

/// One disk of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotDisk {
    /// The disk's target (`vda`).
    pub target: String,
    /// `internal`, `external`, `manual` or `no`.
    pub mode: String,
    /// For an external snapshot, the overlay file made then ("" otherwise).
    pub file: String,
}

/// One snapshot as libvirt describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub name: String,
    pub description: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// The state the VM was in (`running`, `shutoff`, `disk-snapshot` …).
    pub state: String,
    /// The parent snapshot's name ("" for a root).
    pub parent: String,
    /// Whether it is the domain's current snapshot.
    pub current: bool,
    /// `no`, `internal` or `external`: where the memory went, if anywhere.
    pub memory: String,
    /// The memory file of an external snapshot with memory ("" otherwise).
    pub memory_file: String,
    pub disks: Vec<SnapshotDisk>,
}

impl SnapshotRecord {
    /// `internal` when everything lives inside the disk images, else `external`.
    pub fn kind(&self) -> &'static str {
        if self.memory == "external" || self.disks.iter().any(|d| d.mode == "external") {
            "external"
        } else {
            "internal"
        }
    }

    /// Whether the VM's memory was saved with it (reverting resumes it).
    pub fn has_memory(&self) -> bool {
        matches!(self.memory.as_str(), "internal" | "external")
    }
}

/// Read one `<domainsnapshot>` document. Pure.
pub fn parse_snapshot(xml: &str) -> Result<SnapshotRecord> {
    let el = Element::parse(xml)?;
    if el.local_name() != "domainsnapshot" {
        return Err(Error::Failed(format!(
            "libvirt described a snapshot as <{}>",
            el.local_name()
        )));
    }
    let text = |name: &str| el.child_text(name).unwrap_or("").trim().to_owned();
    let memory = el.child("memory");
    let disks = el
        .child("disks")
        .map(|d| {
            d.children_named("disk")
                .map(|disk| SnapshotDisk {
                    target: disk.attr("name").unwrap_or("").to_owned(),
                    mode: disk.attr("snapshot").unwrap_or("").to_owned(),
                    file: disk
                        .child("source")
                        .and_then(|s| s.attr("file").or_else(|| s.attr("dev")))
                        .unwrap_or("")
                        .to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(SnapshotRecord {
        name: text("name"),
        description: text("description"),
        created_at: text("creationTime").parse().unwrap_or(0),
        state: text("state"),
        parent: el
            .child("parent")
            .and_then(|p| p.child_text("name"))
            .unwrap_or("")
            .trim()
            .to_owned(),
        current: false,
        memory: memory
            .and_then(|m| m.attr("snapshot"))
            .unwrap_or("no")
            .to_owned(),
        memory_file: memory.and_then(|m| m.attr("file")).unwrap_or("").to_owned(),
        disks,
    })
}

/// How to make a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotCreate {
    /// Disks only, no memory (external).
    pub disk_only: bool,
    /// Freeze the guest's file systems through its agent meanwhile.
    pub quiesce: bool,
}

/// What state the VM is left in after a revert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RevertTo {
    /// As the snapshot was taken.
    #[default]
    AsTaken,
    Running,
    Paused,
}

/// How to revert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotRevert {
    pub to: RevertTo,
    /// Revert even where libvirt calls it risky.
    pub force: bool,
}

/// How to delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotDelete {
    /// The snapshot's descendants go too.
    pub children: bool,
    /// Forget libvirt's record only; the images stay as they are.
    pub metadata_only: bool,
}

/// What this libvirt can do with snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotSupport {
    /// libvirt's version, major * 1,000,000 + minor * 1,000 + micro.
    pub version: u32,
    /// Reverting to and deleting external snapshots (domain capabilities'
    /// `externalSnapshot`, or libvirt ≥ 9.9 which has it without saying so).
    pub external_revert_delete: bool,
}

/// Whether domain capabilities announce external snapshot support. Pure.
pub fn announces_external_snapshots(domcaps: &Element) -> bool {
    fn walk(e: &Element) -> bool {
        (e.local_name() == "externalSnapshot" && e.attr("supported") != Some("no"))
            || e.children.iter().any(walk)
    }
    walk(domcaps)
}

/// libvirt's error for a revert it calls risky, in words a caller can act on.
fn revert_error(e: virt::error::Error, name: &str) -> Error {
    if e.code().unwrap_or(N::InternalError) == N::SnapshotRevertRisky {
        Error::InvalidState(format!(
            "reverting to snapshot '{name}' needs force: {}",
            e.message()
        ))
    } else {
        bare(e)
    }
}

impl DomainRef {
    /// Every snapshot, with which one is current.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let snaps = self.dom.list_all_snapshots(0).map_err(bare)?;
        let mut out = Vec::with_capacity(snaps.len());
        for s in snaps {
            let xml = match s.xml_desc(0) {
                Ok(x) => x,
                // Deleted since the listing.
                Err(e) if e.code().unwrap_or(N::InternalError) == N::NoDomainSnapshot => continue,
                Err(e) => return Err(bare(e)),
            };
            let mut rec = parse_snapshot(&xml)?;
            rec.current = s.is_current(0).unwrap_or(false);
            out.push(rec);
        }
        Ok(out)
    }

    /// Make a snapshot from its description; its name back.
    pub fn create_snapshot(&self, xml: &str, how: SnapshotCreate) -> Result<String> {
        let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
        if how.disk_only {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY;
        }
        if how.quiesce {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE;
        }
        let s = self.dom.create_snapshot_xml(xml, flags).map_err(bare)?;
        s.name().map_err(bare)
    }

    /// Revert to the snapshot `name`.
    pub fn revert_snapshot(&self, name: &str, how: SnapshotRevert) -> Result<()> {
        let s = Domain::lookup_snapshot_by_name(&self.dom, name, 0).map_err(bare)?;
        let mut flags = match how.to {
            RevertTo::AsTaken => 0,
            RevertTo::Running => sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING,
            RevertTo::Paused => sys::VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED,
        };
        if how.force {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_REVERT_FORCE;
        }
        s.revert(flags).map_err(|e| revert_error(e, name))
    }

    /// Delete the snapshot `name`.
    pub fn delete_snapshot(&self, name: &str, how: SnapshotDelete) -> Result<()> {
        let s = Domain::lookup_snapshot_by_name(&self.dom, name, 0).map_err(bare)?;
        let mut flags = 0;
        if how.children {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN;
        }
        if how.metadata_only {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY;
        }
        s.delete(flags).map_err(bare)
    }
}

impl Session<'_> {
    /// What this libvirt can do with snapshots of a domain of `virt_type`
    /// (`kvm`, `qemu`).
    pub fn snapshot_support(&self, virt_type: &str) -> Result<SnapshotSupport> {
        let version = self.conn.lib_version().map_err(bare)?;
        let announced = self
            .conn
            .domain_capabilities(None, None, None, Some(virt_type), 0)
            .ok()
            .and_then(|x| Element::parse(&x).ok())
            .is_some_and(|caps| announces_external_snapshots(&caps));
        Ok(SnapshotSupport {
            version,
            external_revert_delete: announced || version >= 9_009_000,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTERNAL: &str = "<domainsnapshot>\n  <name>s2</name>\n  <description>before the upgrade</description>\n  <state>running</state>\n  <parent>\n    <name>s1</name>\n  </parent>\n  <creationTime>1796024217</creationTime>\n  <memory snapshot='external' file='/pool/d.s2.mem'/>\n  <disks>\n    <disk name='vda' snapshot='external' type='file'>\n      <driver type='qcow2'/>\n      <source file='/pool/d.s2'/>\n    </disk>\n    <disk name='sda' snapshot='no'/>\n  </disks>\n  <domain type='qemu'><name>web</name><devices><disk><source file='/elsewhere'/></disk></devices></domain>\n</domainsnapshot>";

    #[test]
    fn an_external_snapshot_with_memory_reads_whole() {
        let r = parse_snapshot(EXTERNAL).unwrap();
        assert_eq!(r.name, "s2");
        assert_eq!(r.description, "before the upgrade");
        assert_eq!(r.state, "running");
        assert_eq!(r.parent, "s1");
        assert_eq!(r.created_at, 1796024217);
        assert_eq!(r.memory, "external");
        assert_eq!(r.memory_file, "/pool/d.s2.mem");
        assert!(r.has_memory());
        assert_eq!(r.kind(), "external");
        assert_eq!(
            r.disks,
            vec![
                SnapshotDisk {
                    target: "vda".into(),
                    mode: "external".into(),
                    file: "/pool/d.s2".into()
                },
                SnapshotDisk {
                    target: "sda".into(),
                    mode: "no".into(),
                    file: String::new()
                },
            ]
        );
    }

    #[test]
    fn an_internal_root_snapshot_of_a_stopped_vm() {
        let xml = "<domainsnapshot><name>s1</name><state>shutoff</state><creationTime>5</creationTime><memory snapshot='no'/><disks><disk name='vda' snapshot='internal'/></disks></domainsnapshot>";
        let r = parse_snapshot(xml).unwrap();
        assert_eq!(r.parent, "");
        assert_eq!(r.description, "");
        assert!(!r.has_memory());
        assert_eq!(r.kind(), "internal");
    }

    #[test]
    fn other_documents_are_refused() {
        assert!(parse_snapshot("<domain><name>x</name></domain>").is_err());
        assert!(parse_snapshot("not xml").is_err());
    }

    #[test]
    fn external_snapshot_support_is_found_where_domain_capabilities_put_it() {
        let yes = Element::parse("<domainCapabilities><features><externalSnapshot supported='yes'/></features></domainCapabilities>").unwrap();
        let no = Element::parse("<domainCapabilities><features><backup supported='yes'/></features></domainCapabilities>").unwrap();
        assert!(announces_external_snapshots(&yes));
        assert!(!announces_external_snapshots(&no));
    }
}
