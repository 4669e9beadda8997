//! Hotplug requests: what a caller's disk or interface document asks for,
//! checked, and the device XML it becomes. Pure.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::creation::resolve::next_target;
use crate::libvirt::xml::{escape as esc, Element};
use crate::storage::spec::{check_object_name, parse_size};
use crate::text::{self, TextRule};
use crate::{Error, Result};

fn invalid(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{field}: {msg}"))
}

/// Where a new disk's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOrigin {
    /// A volume of a pool, by pool name and volume name.
    Volume { pool: String, volume: String },
    /// A path on the host (a volume of a pool once resolved, or not).
    Path(String),
    /// A new volume created in a pool for this VM (owned by it).
    Create {
        pool: String,
        name: Option<String>,
        bytes: u64,
        format: String,
    },
}

/// `AttachDisk`'s document, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRequest {
    pub origin: DiskOrigin,
    /// `disk` or `cdrom`.
    pub device: String,
    pub bus: String,
    pub target: Option<String>,
    pub readonly: bool,
    pub shareable: bool,
}

/// `AttachInterface`'s document, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRequest {
    /// `network` or `bridge`.
    pub kind: String,
    pub source: String,
    pub model: String,
    pub mac: Option<String>,
    pub link_up: bool,
}

fn object(what: &str, json: &str) -> Result<Map<String, Value>> {
    let doc = text::parse_json_strict(what, json, 64 * 1024)?;
    text::check_json(what, &doc, |_| TextRule::LINE)?;
    match doc {
        Value::Object(m) => Ok(m),
        _ => Err(invalid(what, "must be a JSON object")),
    }
}

fn known(what: &str, m: &Map<String, Value>, keys: &[&str]) -> Result<()> {
    for k in m.keys() {
        if !keys.contains(&k.as_str()) {
            return Err(invalid(
                &format!("{what}.{}", text::for_bus(k)),
                format!("unknown field (known: {})", keys.join(", ")),
            ));
        }
    }
    Ok(())
}

fn string<'a>(what: &str, m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(&format!("{what}.{key}"), "must be a string")),
    }
}

fn flag(what: &str, m: &Map<String, Value>, key: &str) -> Result<bool> {
    match m.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(&format!("{what}.{key}"), "must be true or false")),
    }
}

fn one_of(field: &str, v: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        ))
    }
}

/// Parse `AttachDisk`'s document: exactly one of `volume` (with `pool`),
/// `path`, or `create` (an object: `size`, optional `name`, `format`, with
/// `pool`); then `device`, `bus`, `target`, `readonly`, `shareable`.
pub fn parse_disk(json: &str) -> Result<DiskRequest> {
    let w = "disk";
    let m = object(w, json)?;
    known(
        w,
        &m,
        &[
            "pool",
            "volume",
            "path",
            "create",
            "device",
            "bus",
            "target",
            "readonly",
            "shareable",
        ],
    )?;
    let pool = string(w, &m, "pool")?;
    let sources = ["volume", "path", "create"]
        .iter()
        .filter(|k| m.contains_key(**k))
        .count();
    if sources != 1 {
        return Err(invalid(
            w,
            "give exactly one of volume (with pool), path, or create (with pool)",
        ));
    }
    let origin = if let Some(v) = string(w, &m, "volume")? {
        let pool = pool.ok_or_else(|| invalid("disk.pool", "is required with volume"))?;
        check_object_name("disk.pool", pool)?;
        check_object_name("disk.volume", v)?;
        DiskOrigin::Volume {
            pool: pool.into(),
            volume: v.into(),
        }
    } else if let Some(p) = string(w, &m, "path")? {
        if pool.is_some() {
            return Err(invalid("disk.pool", "does not go with path"));
        }
        if !p.starts_with('/') {
            return Err(invalid("disk.path", "must be an absolute path"));
        }
        text::check("disk.path", p, TextRule::LINE)?;
        DiskOrigin::Path(p.into())
    } else {
        let pool = pool.ok_or_else(|| invalid("disk.pool", "is required with create"))?;
        check_object_name("disk.pool", pool)?;
        let Some(Value::Object(c)) = m.get("create") else {
            return Err(invalid(
                "disk.create",
                "must be an object with size, and optionally name and format",
            ));
        };
        known("disk.create", c, &["size", "name", "format"])?;
        let size = c
            .get("size")
            .ok_or_else(|| invalid("disk.create.size", "is required"))?;
        let bytes = parse_size("disk.create.size", size)?;
        if bytes < 1024 * 1024 {
            return Err(invalid("disk.create.size", "must be at least 1 MiB"));
        }
        let name = string("disk.create", c, "name")?;
        if let Some(n) = name {
            check_object_name("disk.create.name", n)?;
        }
        let format = string("disk.create", c, "format")?.unwrap_or("qcow2");
        one_of("disk.create.format", format, &["qcow2", "raw"])?;
        DiskOrigin::Create {
            pool: pool.into(),
            name: name.map(Into::into),
            bytes,
            format: format.into(),
        }
    };
    let device = string(w, &m, "device")?.unwrap_or("disk");
    one_of("disk.device", device, &["disk", "cdrom"])?;
    let default_bus = if device == "cdrom" { "scsi" } else { "virtio" };
    let bus = string(w, &m, "bus")?.unwrap_or(default_bus);
    one_of("disk.bus", bus, &["virtio", "scsi", "sata", "usb"])?;
    if device == "cdrom" && bus == "virtio" {
        return Err(invalid(
            "disk.bus",
            "a cdrom cannot be on virtio; use scsi, sata or usb",
        ));
    }
    if device == "cdrom" && matches!(origin, DiskOrigin::Create { .. }) {
        return Err(invalid(
            "disk.create",
            "a cdrom cannot be created empty; give a volume or path",
        ));
    }
    let target = string(w, &m, "target")?;
    if let Some(t) = target {
        check_target("disk.target", t, bus)?;
    }
    Ok(DiskRequest {
        origin,
        device: device.into(),
        bus: bus.into(),
        target: target.map(Into::into),
        readonly: flag(w, &m, "readonly")? || device == "cdrom",
        shareable: flag(w, &m, "shareable")?,
    })
}

/// `ChangeMedia`'s document: `{"path": …}` or `{"pool": …, "volume": …}`.
pub fn parse_media(json: &str) -> Result<DiskRequest> {
    let m = object("media", json)?;
    known("media", &m, &["pool", "volume", "path"])?;
    let mut req = parse_disk(json).map_err(|e| match e {
        Error::InvalidArgument(msg) => Error::InvalidArgument(msg.replacen("disk", "media", 1)),
        e => e,
    })?;
    req.device = "cdrom".into();
    req.readonly = true;
    Ok(req)
}

/// A disk target (`vdb`, `sdc`) that fits its bus.
pub fn check_target(field: &str, t: &str, bus: &str) -> Result<()> {
    let prefix = if bus == "virtio" { "vd" } else { "sd" };
    let ok = t.len() >= 3
        && t.len() <= 5
        && t.starts_with(prefix)
        && t[2..].bytes().all(|b| b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must look like {prefix}b on bus {bus}"),
        ))
    }
}

/// The targets a domain's definitions already use.
pub fn taken_targets<'a>(defs: impl Iterator<Item = &'a Element>) -> HashSet<String> {
    defs.flat_map(crate::libvirt::xml::domain_disks)
        .filter_map(|d| d.target)
        .collect()
}

/// The target for a new disk: the requested one when free, else the next free one.
pub fn choose_target(req: &DiskRequest, taken: &HashSet<String>) -> Result<String> {
    match &req.target {
        Some(t) if taken.contains(t) => Err(Error::Conflict(format!(
            "disk.target: {t} is already in use"
        ))),
        Some(t) => Ok(t.clone()),
        None => next_target(&req.bus, taken).ok_or_else(|| {
            invalid(
                "disk.bus",
                format!("no free target left on bus {}", req.bus),
            )
        }),
    }
}

/// The `<disk>` element for a file or block device at `path`.
pub fn disk_xml(req: &DiskRequest, path: &str, block: bool, format: &str, target: &str) -> String {
    let (kind, attr) = if block {
        ("block", "dev")
    } else {
        ("file", "file")
    };
    let mut x = format!(
        "<disk type='{kind}' device='{}'><driver name='qemu' type='{}'/><source {attr}='{}'/><target dev='{}' bus='{}'/>",
        esc(&req.device),
        esc(format),
        esc(path),
        esc(target),
        esc(&req.bus)
    );
    if req.readonly {
        x.push_str("<readonly/>");
    }
    if req.shareable {
        x.push_str("<shareable/>");
    }
    x.push_str("</disk>");
    x
}

/// Whether a definition has a virtio-scsi controller.
pub fn has_scsi_controller(def: &Element) -> bool {
    def.child("devices").is_some_and(|d| {
        d.children_named("controller")
            .any(|c| c.attr("type") == Some("scsi"))
    })
}

pub const SCSI_CONTROLLER_XML: &str = "<controller type='scsi' model='virtio-scsi'/>";

/// A MAC address a caller may give: six hex pairs, unicast, not all zero.
pub fn check_mac(field: &str, mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(invalid(field, "must look like 52:54:00:12:34:56"));
    }
    let first = u8::from_str_radix(parts[0], 16).expect("checked hex");
    if first & 1 == 1 {
        return Err(invalid(
            field,
            "must be a unicast address (first byte even)",
        ));
    }
    if parts.iter().all(|p| *p == "00") {
        return Err(invalid(field, "must not be all zero"));
    }
    Ok(mac.to_ascii_lowercase())
}

/// A new locally administered MAC in QEMU's range, from 3 random bytes.
pub fn new_mac(random: [u8; 3]) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        random[0], random[1], random[2]
    )
}

/// Parse `AttachInterface`'s document: `network` or `bridge` (one), `model`,
/// `mac`, `link` (`up` or `down`).
pub fn parse_nic(json: &str) -> Result<NicRequest> {
    let w = "interface";
    let m = object(w, json)?;
    known(w, &m, &["network", "bridge", "model", "mac", "link"])?;
    let (kind, source) = match (string(w, &m, "network")?, string(w, &m, "bridge")?) {
        (Some(n), None) => ("network", n),
        (None, Some(b)) => ("bridge", b),
        _ => return Err(invalid(w, "give exactly one of network or bridge")),
    };
    check_object_name(&format!("interface.{kind}"), source)?;
    let model = string(w, &m, "model")?.unwrap_or("virtio");
    one_of(
        "interface.model",
        model,
        &["virtio", "e1000e", "e1000", "rtl8139"],
    )?;
    let mac = string(w, &m, "mac")?
        .map(|s| check_mac("interface.mac", s))
        .transpose()?;
    let link = string(w, &m, "link")?.unwrap_or("up");
    one_of("interface.link", link, &["up", "down"])?;
    Ok(NicRequest {
        kind: kind.into(),
        source: source.into(),
        model: model.into(),
        mac,
        link_up: link == "up",
    })
}

/// The `<interface>` element for a request with its MAC chosen.
pub fn nic_xml(req: &NicRequest, mac: &str) -> String {
    format!(
        "<interface type='{k}'><mac address='{}'/><source {k}='{}'/><model type='{}'/><link state='{}'/></interface>",
        esc(mac),
        esc(&req.source),
        esc(&req.model),
        if req.link_up { "up" } else { "down" },
        k = req.kind,
    )
}

/// The interface with this MAC in a definition.
pub fn find_nic<'a>(def: &'a Element, mac: &str) -> Option<&'a Element> {
    def.child("devices")?.children_named("interface").find(|i| {
        i.child("mac")
            .and_then(|m| m.attr("address"))
            .is_some_and(|a| a.eq_ignore_ascii_case(mac))
    })
}

/// The disk with this target in a definition.
pub fn find_disk<'a>(def: &'a Element, target: &str) -> Option<&'a Element> {
    def.child("devices")?
        .children_named("disk")
        .find(|d| d.child("target").and_then(|t| t.attr("dev")) == Some(target))
}

/// A cdrom element with new media (`None`: ejected), everything else kept.
pub fn cdrom_with_media(cdrom: &Element, path: Option<&str>, block: bool) -> Element {
    let mut el = cdrom.clone();
    el.remove_children("source");
    el.remove_children("backingStore");
    match path {
        Some(p) => {
            let (kind, attr) = if block {
                ("block", "dev")
            } else {
                ("file", "file")
            };
            el.set_attr("type", kind);
            let at = el
                .children
                .iter()
                .position(|c| c.local_name() == "driver")
                .map_or(0, |i| i + 1);
            el.children.insert(at, Element::new("source", &[(attr, p)]));
            if let Some(d) = el.child_mut("driver") {
                d.set_attr("type", "raw");
            }
        }
        None => el.set_attr("type", "file"),
    }
    el
}

/// An interface element with its link set up or down, everything else kept.
pub fn nic_with_link(nic: &Element, up: bool) -> Element {
    let mut el = nic.clone();
    el.remove_children("link");
    el.children.push(Element::new(
        "link",
        &[("state", if up { "up" } else { "down" })],
    ));
    el
}

#[cfg(test)]
#[path = "vm_devices_spec_tests.rs"]
mod tests;
