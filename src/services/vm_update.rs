//! `VirtualMachine.Update`: what a change document does to a domain. Pure.
//!
//! [`plan`] takes the validated changes, the persistent definition as
//! libvirt gave it (a whole [`Element`] tree) and a few facts, and returns the
//! edited tree (defined back in one call, so the configuration changes all
//! at once or not at all), the steps that apply to the running VM at once,
//! and the fields that only take effect at its next start. Nothing in the
//! definition that vapord does not model is touched.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::libvirt::xml::Element;
use crate::{Error, Result};

/// The update document (`dbus/schemas/vm-update.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmChanges {
    pub name: Option<String>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub vcpus: Option<u32>,
    pub max_vcpus: Option<u32>,
    /// MiB.
    pub memory: Option<u64>,
    /// MiB.
    pub max_memory: Option<u64>,
    pub cpu: Option<CpuChange>,
    pub boot_order: Option<Vec<BootDevice>>,
    pub firmware: Option<FirmwareChange>,
    pub graphics: Option<GraphicsChange>,
    pub video: Option<String>,
    pub autostart: Option<bool>,
    /// A string sets a key, `null` removes it.
    pub metadata: Option<BTreeMap<String, Option<String>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuChange {
    pub mode: String,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    Disk,
    Cdrom,
    Network,
}

impl BootDevice {
    fn libvirt(self) -> &'static str {
        match self {
            Self::Disk => "hd",
            Self::Cdrom => "cdrom",
            Self::Network => "network",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareChange {
    #[serde(rename = "type")]
    pub kind: String,
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphicsChange {
    #[serde(rename = "type")]
    pub kind: String,
    pub listen: Option<String>,
}

/// What the plan needs to know besides the definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub running: bool,
    /// The running VM's vCPU maximum (0 when not running).
    pub live_max_vcpus: u32,
    /// The running VM's memory maximum in KiB (0 when not running).
    pub live_max_memory_kib: u64,
    /// The most vCPUs and memory (MiB) the host allows one VM.
    pub host_max_vcpus: u32,
    pub host_memory_mib: u64,
    /// A number no earlier firmware-variables file of this VM carries
    /// (random), for a fresh one when the firmware changes.
    pub fresh_id: u32,
}

/// A change made to the running VM after the definition is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveStep {
    Vcpus(u32),
    MemoryKib(u64),
    Title(String),
    Description(String),
    /// vapord's metadata element, as XML.
    Metadata(String),
}

/// Everything an update does, in order: define `config` (when any field of
/// the definition changes), rename, apply `live`, set autostart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdatePlan {
    pub config: Option<Element>,
    pub rename: Option<String>,
    pub live: Vec<LiveStep>,
    pub autostart: Option<bool>,
    /// The fields the document changes.
    pub changed: Vec<&'static str>,
    /// Those of them that take effect only at the next start.
    pub pending: Vec<&'static str>,
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{field}: {msg}"))
}

/// Parse a libvirt memory element (`unit` attribute, default KiB) into KiB.
pub fn memory_kib(el: &Element) -> Option<u64> {
    let n: u64 = el.text.trim().parse().ok()?;
    let factor: u64 = match el.attr("unit").unwrap_or("KiB") {
        "b" | "bytes" => return Some(n / 1024),
        "KB" => return Some(n * 1000 / 1024),
        "k" | "KiB" => 1,
        "MB" => return Some(n * 1_000_000 / 1024),
        "M" | "MiB" => 1024,
        "GB" => return Some(n * 1_000_000_000 / 1024),
        "G" | "GiB" => 1024 * 1024,
        "T" | "TiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn set_kib(el: &mut Element, kib: u64) {
    el.attrs = vec![("unit".into(), "KiB".into())];
    el.text = kib.to_string();
}

/// Plan `changes` against the persistent definition `config`.
pub fn plan(changes: &VmChanges, config: &Element, facts: &Facts) -> Result<UpdatePlan> {
    let mut p = UpdatePlan::default();
    let mut doc = config.clone();
    let mut edited = false;
    let running = facts.running;
    let pending = |p: &mut UpdatePlan, f: &'static str| {
        if running && !p.pending.contains(&f) {
            p.pending.push(f);
        }
    };

    if let Some(name) = &changes.name {
        p.changed.push("name");
        if running {
            return Err(Error::InvalidState(
                "name: a VM can only be renamed while it is shut off".into(),
            ));
        }
        if config.child_text("name") != Some(name.as_str()) {
            p.rename = Some(name.clone());
        }
    }
    if let Some(title) = &changes.title {
        p.changed.push("title");
        set_text_child(&mut doc, "title", title, &["name", "uuid", "genid"]);
        edited = true;
        if running {
            p.live.push(LiveStep::Title(title.clone()));
        }
    }
    if let Some(text) = &changes.description {
        p.changed.push("description");
        set_text_child(
            &mut doc,
            "description",
            text,
            &["name", "uuid", "genid", "title"],
        );
        edited = true;
        if running {
            p.live.push(LiveStep::Description(text.clone()));
        }
    }
    if changes.vcpus.is_some() || changes.max_vcpus.is_some() {
        edit_vcpus(changes, &mut doc, facts, &mut p)?;
        edited = true;
    }
    if changes.memory.is_some() || changes.max_memory.is_some() {
        edit_memory(changes, &mut doc, facts, &mut p)?;
        edited = true;
    }
    if let Some(cpu) = &changes.cpu {
        p.changed.push("cpu");
        edit_cpu(cpu, &mut doc)?;
        edited = true;
        pending(&mut p, "cpu");
    }
    if let Some(order) = &changes.boot_order {
        p.changed.push("boot_order");
        edit_boot_order(order, &mut doc);
        edited = true;
        pending(&mut p, "boot_order");
    }
    if let Some(fw) = &changes.firmware {
        p.changed.push("firmware");
        edit_firmware(fw, &mut doc, facts.fresh_id)?;
        edited = true;
        pending(&mut p, "firmware");
    }
    if let Some(g) = &changes.graphics {
        p.changed.push("graphics");
        edit_graphics(g, &mut doc)?;
        edited = true;
        pending(&mut p, "graphics");
    }
    if let Some(model) = &changes.video {
        p.changed.push("video");
        edit_video(model, &mut doc);
        edited = true;
        pending(&mut p, "video");
    }
    if let Some(m) = &changes.metadata {
        p.changed.push("metadata");
        let el = merge_metadata(&mut doc, m)?;
        edited = true;
        if running {
            p.live.push(LiveStep::Metadata(el));
        }
    }
    if let Some(on) = changes.autostart {
        p.changed.push("autostart");
        p.autostart = Some(on);
    }
    if edited {
        p.config = Some(doc);
    }
    Ok(p)
}

fn set_text_child(doc: &mut Element, name: &str, text: &str, after: &[&str]) {
    if text.is_empty() {
        doc.remove_children(name);
    } else {
        let el = doc.ensure_child(name, after);
        el.text = text.to_owned();
        el.children.clear();
    }
}

fn edit_vcpus(c: &VmChanges, doc: &mut Element, f: &Facts, p: &mut UpdatePlan) -> Result<()> {
    let el = doc.child("vcpu");
    let old_max: u32 = el.and_then(|e| e.text.trim().parse().ok()).unwrap_or(1);
    let old_cur: u32 = el
        .and_then(|e| e.attr("current"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(old_max);
    // Asking for more vCPUs than the maximum raises the maximum with them.
    let new_max = c
        .max_vcpus
        .unwrap_or_else(|| c.vcpus.map_or(old_max, |v| v.max(old_max)));
    let new_cur = c.vcpus.unwrap_or(old_cur.min(new_max));
    if new_cur > new_max {
        return Err(invalid(
            "vcpus",
            format!("{new_cur} is more than max_vcpus ({new_max})"),
        ));
    }
    if new_max > f.host_max_vcpus {
        let field = if c.max_vcpus.is_some() {
            "max_vcpus"
        } else {
            "vcpus"
        };
        return Err(Error::LimitExceeded(format!(
            "{field}: {new_max} is more than the hypervisor's maximum ({})",
            f.host_max_vcpus
        )));
    }
    if c.vcpus.is_some() {
        p.changed.push("vcpus");
    }
    if new_max != old_max {
        if !p.changed.contains(&"max_vcpus") {
            p.changed.push("max_vcpus");
        }
        if f.running {
            p.pending.push("max_vcpus");
        }
        // A per-vCPU list and a topology must match the new maximum.
        doc.remove_children("vcpus");
        if let Some(cpu) = doc.child_mut("cpu") {
            if let Some(t) = cpu.child_mut("topology") {
                fix_topology(t, new_max);
            }
        }
    } else if c.max_vcpus.is_some() {
        p.changed.push("max_vcpus");
    }
    let v = doc.ensure_child(
        "vcpu",
        &[
            "memory",
            "currentMemory",
            "maxMemory",
            "memoryBacking",
            "blkiotune",
            "memtune",
        ],
    );
    if v.attr("placement").is_none() {
        v.set_attr("placement", "static");
    }
    v.text = new_max.to_string();
    if new_cur == new_max {
        v.remove_attr("current");
    } else {
        v.set_attr("current", &new_cur.to_string());
    }
    if f.running && c.vcpus.is_some() {
        if new_cur <= f.live_max_vcpus {
            p.live.push(LiveStep::Vcpus(new_cur));
        } else {
            p.pending.push("vcpus");
        }
    }
    Ok(())
}

/// Keep cores and threads per socket when they divide the new count, else
/// one core of one thread per socket.
fn fix_topology(t: &mut Element, vcpus: u32) {
    let get = |k: &str| {
        t.attr(k)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1)
            .max(1)
    };
    let (dies, cores, threads) = (get("dies"), get("cores"), get("threads"));
    let per_socket = dies * cores * threads;
    if vcpus.is_multiple_of(per_socket) {
        t.set_attr("sockets", &(vcpus / per_socket).to_string());
    } else {
        t.set_attr("sockets", &vcpus.to_string());
        for k in ["dies", "clusters", "cores", "threads"] {
            if t.attr(k).is_some() {
                t.set_attr(k, "1");
            }
        }
        t.set_attr("cores", "1");
        t.set_attr("threads", "1");
    }
}

fn edit_memory(c: &VmChanges, doc: &mut Element, f: &Facts, p: &mut UpdatePlan) -> Result<()> {
    let old_max = doc.child("memory").and_then(memory_kib).unwrap_or(0);
    let old_cur = doc
        .child("currentMemory")
        .and_then(memory_kib)
        .unwrap_or(old_max);
    let want = c.memory.map(|m| m * 1024);
    let new_max = c
        .max_memory
        .map(|m| m * 1024)
        .unwrap_or_else(|| want.map_or(old_max, |w| w.max(old_max)));
    let new_cur = want.unwrap_or(old_cur.min(new_max));
    if new_cur > new_max {
        return Err(invalid(
            "memory",
            format!(
                "{} MiB is more than max_memory ({} MiB)",
                new_cur / 1024,
                new_max / 1024
            ),
        ));
    }
    if new_max / 1024 > f.host_memory_mib {
        let field = if c.max_memory.is_some() {
            "max_memory"
        } else {
            "memory"
        };
        return Err(Error::LimitExceeded(format!(
            "{field}: {} MiB is more than the host's memory ({} MiB)",
            new_max / 1024,
            f.host_memory_mib
        )));
    }
    if c.memory.is_some() {
        p.changed.push("memory");
    }
    if new_max != old_max || c.max_memory.is_some() {
        p.changed.push("max_memory");
        if f.running && new_max != old_max {
            p.pending.push("max_memory");
        }
    }
    set_kib(
        doc.ensure_child(
            "memory",
            &[
                "name",
                "uuid",
                "genid",
                "title",
                "description",
                "metadata",
                "maxMemory",
            ],
        ),
        new_max,
    );
    set_kib(doc.ensure_child("currentMemory", &["memory"]), new_cur);
    if f.running && want.is_some() {
        if new_cur <= f.live_max_memory_kib {
            p.live.push(LiveStep::MemoryKib(new_cur));
        } else {
            p.pending.push("memory");
        }
    }
    Ok(())
}

// The edits of the definition's larger parts: cpu, boot, firmware,
// graphics, video and vapord's metadata.
#[path = "vm_update_edits.rs"]
mod edits;
use edits::{edit_boot_order, edit_cpu, edit_firmware, edit_graphics, edit_video, merge_metadata};

#[cfg(test)]
#[path = "vm_update_tests.rs"]
mod tests;
