//! What cloning a VM copies and how its definition changes. Pure.
//!
//! Each disk the VM owns (a writable disk whose volume vapord created for
//! it) is copied whole or given a qcow2 overlay ("linked"); its cloud-init
//! seed is made anew (new instance-id, the new name as hostname); every
//! other disk stays shared. The new definition is the old one, whole, with
//! a new name and UUID, no MAC addresses (libvirt picks new ones), no
//! generation ID, no firmware-variables path (the clone gets its own from
//! the template), and vapord's metadata naming the clone's own volumes.

use crate::libvirt::xml::{disk_facts, DiskSource, Element};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMode {
    Full,
    Linked,
}

/// How one disk is carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskCopy {
    /// A copy (or overlay) of the volume at `source` (read as `format`),
    /// named `name` in its pool.
    Volume {
        target: String,
        source: String,
        name: String,
        format: String,
    },
    /// A new cloud-init seed in place of the one at `source`.
    Seed {
        target: String,
        source: String,
        name: String,
    },
}

impl DiskCopy {
    pub fn target(&self) -> &str {
        match self {
            Self::Volume { target, .. } | Self::Seed { target, .. } => target,
        }
    }
}

/// The new volume name for a file of the old VM: its name with the old VM's
/// name replaced by the new one where it starts with it, else prefixed.
pub fn new_volume_name(file_name: &str, old_vm: &str, new_vm: &str, mode: CloneMode) -> String {
    let base = match file_name.strip_prefix(old_vm) {
        Some(rest) => format!("{new_vm}{rest}"),
        None => format!("{new_vm}-{file_name}"),
    };
    match mode {
        CloneMode::Full => base,
        CloneMode::Linked => {
            let stem = base
                .rsplit_once('.')
                .map_or(base.as_str(), |(s, _)| s)
                .to_owned();
            format!("{stem}.qcow2")
        }
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Decide disk by disk. `owned`: the volumes vapord made for the VM
/// (canonical paths), `canonical` resolves a path.
pub fn plan_disks(
    def: &Element,
    owned: &[String],
    canonical: &dyn Fn(&str) -> String,
    new_vm: &str,
    mode: CloneMode,
) -> Result<Vec<DiskCopy>> {
    let old_vm = def.child_text("name").unwrap_or_default();
    let mut out = Vec::new();
    let Some(devices) = def.child("devices") else {
        return Ok(out);
    };
    for el in devices.children_named("disk") {
        let d = disk_facts(el);
        let shared_ok = d.readonly || d.shareable || d.device == "cdrom";
        let refuse = |what: &str| {
            Error::InvalidState(format!(
                "disk {}: {what}, and it is writable: the clone would write to the same \
                 image as this VM; detach it (or make it read-only or shareable) first",
                d.target.as_deref().unwrap_or("?")
            ))
        };
        let DiskSource::Path(path) = &d.source else {
            match d.source {
                DiskSource::Empty => continue,
                _ if shared_ok => continue,
                _ => return Err(refuse("it is not a file vapord made for this VM")),
            }
        };
        let real = canonical(path);
        if !owned.iter().any(|o| *o == real || o == path) {
            if shared_ok {
                continue;
            }
            return Err(refuse("vapord did not make it for this VM"));
        }
        let Some(target) = d.target.clone() else {
            return Err(Error::Failed(format!("disk {path} has no target")));
        };
        if d.device == "cdrom" {
            if file_name(path).ends_with("-cidata.iso") {
                out.push(DiskCopy::Seed {
                    target,
                    source: path.clone(),
                    name: format!("{new_vm}-cidata.iso"),
                });
            }
            continue;
        }
        if d.readonly || d.shareable {
            continue;
        }
        out.push(DiskCopy::Volume {
            target,
            source: path.clone(),
            name: new_volume_name(file_name(path), old_vm, new_vm, mode),
            // As the VM reads it, never as probed: a guest can write any
            // header into its own raw disk.
            format: d.format.clone().unwrap_or_else(|| "raw".into()),
        });
    }
    Ok(out)
}

/// The clone's definition: `def` with the new identity, the disks at
/// `targets → new paths` (and `formats` where a copy changes it), and
/// vapord's metadata (`uid` created it, from `source_uuid`, owning `owned`).
pub struct NewIdentity<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub uid: u32,
    pub source_uuid: &'a str,
    /// (target, new path, new format).
    pub disks: &'a [(String, String, String)],
    /// Every volume the clone owns.
    pub owned: &'a [String],
}

pub fn clone_definition(def: &Element, id: &NewIdentity<'_>) -> Element {
    let mut doc = def.clone();
    doc.ensure_child("name", &[]).text = id.name.to_owned();
    doc.ensure_child("uuid", &["name"]).text = id.uuid.to_owned();
    if let Some(g) = doc.child_mut("genid") {
        g.text.clear();
    }
    if let Some(sys) = doc.child_mut("sysinfo") {
        for section in &mut sys.children {
            section
                .children
                .retain(|e| !matches!(e.attr("name"), Some("uuid") | Some("serial")));
        }
    }
    if let Some(os) = doc.child_mut("os") {
        os.remove_children("nvram");
    }
    if let Some(devices) = doc.child_mut("devices") {
        for dev in &mut devices.children {
            match dev.local_name() {
                "interface" => {
                    dev.remove_children("mac");
                    dev.remove_children("target");
                }
                "graphics" if dev.attr("autoport") == Some("no") => {
                    dev.set_attr("autoport", "yes");
                    dev.remove_attr("port");
                    dev.remove_attr("tlsPort");
                }
                _ => {}
            }
        }
    }
    set_disk_sources(&mut doc, id.disks);
    set_metadata(&mut doc, id);
    doc
}

/// Point the disks at `targets` to new files: (target, path, format).
pub fn set_disk_sources(doc: &mut Element, disks: &[(String, String, String)]) {
    let Some(devices) = doc.child_mut("devices") else {
        return;
    };
    for dev in devices
        .children
        .iter_mut()
        .filter(|d| d.local_name() == "disk")
    {
        let target = dev
            .child("target")
            .and_then(|t| t.attr("dev"))
            .map(str::to_owned);
        let Some((_, path, format)) = disks
            .iter()
            .find(|(t, _, _)| Some(t.as_str()) == target.as_deref())
        else {
            continue;
        };
        dev.remove_children("backingStore");
        dev.set_attr("type", "file");
        let src = dev.ensure_child("source", &["driver"]);
        src.attrs = vec![("file".into(), path.clone())];
        src.children.clear();
        if let Some(drv) = dev.child_mut("driver") {
            drv.set_attr("type", format);
        }
    }
}

/// The source VM of a linked clone, moved onto overlays of its own so the
/// images both now read are never written again: `disks` (target, overlay,
/// "qcow2"), the overlays recorded as its own volumes.
pub fn source_on_overlays(def: &Element, disks: &[(String, String, String)]) -> Element {
    let mut doc = def.clone();
    set_disk_sources(&mut doc, disks);
    let vm = doc.vapor_metadata_mut();
    for (_, path, _) in disks {
        let volume = vm.new_child("volume", &[("path", path)]);
        vm.children.push(volume);
    }
    doc
}

fn set_metadata(doc: &mut Element, id: &NewIdentity<'_>) {
    let vm = doc.vapor_metadata_mut();
    vm.children
        .retain(|c| !matches!(c.local_name(), "volume" | "created-by" | "cloned-from"));
    let uid = id.uid.to_string();
    let created_by = vm.new_child("created-by", &[("uid", &uid)]);
    vm.children.insert(0, created_by);
    let cloned_from = vm.new_child("cloned-from", &[("uuid", id.source_uuid)]);
    vm.children.push(cloned_from);
    for o in id.owned {
        let volume = vm.new_child("volume", &[("path", o)]);
        vm.children.push(volume);
    }
}

#[cfg(test)]
#[path = "vm_clone_plan_tests.rs"]
mod tests;
