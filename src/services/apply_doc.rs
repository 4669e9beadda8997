//! The declarative document `Manager.Apply` takes
//! (`dbus/schemas/apply.schema.json`): the VMs a caller wants, each with
//! how to make it when it is missing, its CPU and memory, how long to wait
//! for its guest agent, NFS shares, files to inject and the final snapshot
//! (the seed's `phoenix_vm_configs.json`). Parsed and checked here, as a
//! pure function, field by field: every refusal names its place
//! (`vms[1].file_injections[0].destination: …`) before anything is done.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use super::guest::files::{check_guest_path, check_owner};
use super::nfs_rules::NfsShare;
use crate::{Error, Result};

/// The most VMs one document may declare, shares per VM, and files in all.
pub const MAX_VMS: usize = 64;
pub const MAX_SHARES: usize = 64;
pub const MAX_FILES: usize = 256;
/// The snapshot made when an apply changed something, unless told.
pub const DEFAULT_SNAPSHOT: &str = "final-form";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    vms: Vec<RawVm>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    #[serde(default)]
    spec: Option<Value>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    overrides: Option<Value>,
    #[serde(default)]
    clone: Option<RawClone>,
    #[serde(default)]
    vcpus: Option<u32>,
    #[serde(default)]
    memory: Option<u64>,
    #[serde(default)]
    agent_timeout_secs: Option<u32>,
    #[serde(default)]
    nfs_shares: Vec<RawShare>,
    #[serde(default)]
    file_injections: Vec<RawFile>,
    /// Absent: the default name; `null` is refused like any other
    /// non-name.
    #[serde(default = "yes")]
    final_snapshot: Value,
}

fn yes() -> Value {
    Value::Bool(true)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClone {
    source: String,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShare {
    host_path: String,
    guest_path: String,
    #[serde(default)]
    options: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    source: String,
    destination: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

/// How a missing VM is made.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A creation spec (its `name` is the VM's).
    Spec(Value),
    /// A template with overrides.
    Template { name: String, overrides: Value },
    /// A clone of another VM (`linked`: overlays on its disks).
    Clone { source: String, linked: bool },
}

/// One file to put into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInjection {
    /// A host path (authorized as storage-host-path), or the name under
    /// which the caller passed a file descriptor.
    pub source: String,
    pub destination: String,
    pub mode: u32,
    pub owner: Option<String>,
}

/// One VM as declared, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VmDecl {
    pub name: String,
    /// `None`: it must exist already.
    pub origin: Option<Origin>,
    pub vcpus: Option<u32>,
    /// MiB.
    pub memory: Option<u64>,
    /// 0: vapord's default.
    pub agent_timeout_secs: u32,
    pub nfs_shares: Vec<NfsShare>,
    pub files: Vec<FileInjection>,
    /// `None`: no final snapshot.
    pub final_snapshot: Option<String>,
}

/// A document, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyDoc {
    pub vms: Vec<VmDecl>,
}

fn bad<T>(msg: String) -> Result<T> {
    Err(Error::InvalidArgument(msg))
}

/// A snapshot name as the document may give it: 1-64 letters, digits,
/// `.`, `_`, `-`, starting with a letter or digit. Pure.
fn snapshot_name(at: &str, v: &Value) -> Result<Option<String>> {
    match v {
        Value::Bool(true) => Ok(Some(DEFAULT_SNAPSHOT.into())),
        Value::Bool(false) => Ok(None),
        Value::String(s)
            if !s.is_empty()
                && s.len() <= 64
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            Ok(Some(s.clone()))
        }
        _ => bad(format!(
            "{at}.final_snapshot: a snapshot name (1-64 letters, digits, . _ -), true or false"
        )),
    }
}

fn check_vm(i: usize, mut raw: RawVm) -> Result<VmDecl> {
    let at = format!("vms[{i}]");
    if !crate::creation::template::valid_name(&raw.name) {
        return bad(format!(
            "{at}.name: '{}' is not a VM name (1-64 letters, digits, . _ + -)",
            crate::text::for_bus(&raw.name)
        ));
    }
    if let Some(c) = raw.clone.take() {
        if raw.spec.is_some() || raw.template.is_some() || raw.overrides.is_some() {
            return bad(format!("{at}: give one of spec, template and clone"));
        }
        if !crate::creation::template::valid_name(&c.source) {
            return bad(format!(
                "{at}.clone.source: '{}' is not a VM name",
                crate::text::for_bus(&c.source)
            ));
        }
        if c.source == raw.name {
            return bad(format!("{at}.clone.source: a VM cannot be its own clone"));
        }
        let linked = match c.mode.as_deref() {
            None | Some("full") => false,
            Some("linked") => true,
            Some(_) => return bad(format!("{at}.clone.mode: full or linked")),
        };
        raw.spec = None;
        return check_rest(
            at,
            raw,
            Some(Origin::Clone {
                source: c.source,
                linked,
            }),
        );
    }
    let origin = match (raw.spec.take(), raw.template.take(), raw.overrides.take()) {
        (Some(_), Some(_), _) => {
            return bad(format!("{at}: give spec or template, not both"));
        }
        (Some(Value::Object(mut spec)), None, None) => {
            match spec.get("name") {
                None => {
                    spec.insert("name".into(), Value::String(raw.name.clone()));
                }
                Some(Value::String(n)) if *n == raw.name => {}
                Some(_) => return bad(format!("{at}.spec.name: must be the VM's name or absent")),
            }
            Some(Origin::Spec(Value::Object(spec)))
        }
        (Some(_), None, None) => return bad(format!("{at}.spec: must be an object")),
        (Some(_), None, Some(_)) => return bad(format!("{at}.overrides: only with template")),
        (None, Some(t), o) => {
            if !crate::creation::template::valid_name(&t) {
                return bad(format!(
                    "{at}.template: '{}' is not a template name",
                    crate::text::for_bus(&t)
                ));
            }
            let overrides = match o.unwrap_or_else(|| Value::Object(Default::default())) {
                Value::Object(mut m) => {
                    m.insert("name".into(), Value::String(raw.name.clone()));
                    Value::Object(m)
                }
                _ => return bad(format!("{at}.overrides: must be an object")),
            };
            Some(Origin::Template { name: t, overrides })
        }
        (None, None, Some(_)) => return bad(format!("{at}.overrides: only with template")),
        (None, None, None) => None,
    };
    check_rest(at, raw, origin)
}

/// The rest of a VM's declaration, once its origin is known.
fn check_rest(at: String, raw: RawVm, origin: Option<Origin>) -> Result<VmDecl> {
    if raw.vcpus == Some(0) || raw.vcpus.is_some_and(|v| v > 4096) {
        return bad(format!("{at}.vcpus: between 1 and 4096"));
    }
    if raw
        .memory
        .is_some_and(|m| !(16..=16 * 1024 * 1024).contains(&m))
    {
        return bad(format!("{at}.memory: MiB between 16 and 16777216"));
    }
    let agent_timeout_secs = raw.agent_timeout_secs.unwrap_or(0);
    if agent_timeout_secs > 86_400 {
        return bad(format!("{at}.agent_timeout_secs: at most 86400"));
    }
    if raw.nfs_shares.len() > MAX_SHARES {
        return bad(format!("{at}.nfs_shares: at most {MAX_SHARES}"));
    }
    let mut points = BTreeSet::new();
    let mut nfs_shares = Vec::new();
    for (j, s) in raw.nfs_shares.into_iter().enumerate() {
        let share = NfsShare::checked(
            &format!("{at}.nfs_shares[{j}]"),
            &s.host_path,
            &s.guest_path,
            s.options.as_deref(),
        )?;
        if !points.insert(share.guest_path.clone()) {
            return bad(format!(
                "{at}.nfs_shares[{j}].guest_path: {} is declared twice",
                share.guest_path
            ));
        }
        nfs_shares.push(share);
    }
    if raw.file_injections.len() > MAX_FILES {
        return bad(format!("{at}.file_injections: at most {MAX_FILES}"));
    }
    let mut files = Vec::new();
    let mut destinations = BTreeSet::new();
    for (j, f) in raw.file_injections.into_iter().enumerate() {
        let fat = format!("{at}.file_injections[{j}]");
        let named = |e: Error, field: &str| {
            Error::InvalidArgument(format!(
                "{fat}.{field}: {}",
                e.to_string()
                    .split_once(": ")
                    .map_or(e.to_string(), |(_, m)| m.to_owned())
            ))
        };
        check_guest_path(&f.destination).map_err(|e| named(e, "destination"))?;
        if !destinations.insert(f.destination.clone()) {
            return bad(format!(
                "{fat}.destination: {} is declared twice",
                f.destination
            ));
        }
        // An absolute host path (no . or .. parts), or the plain name under
        // which the caller passed a descriptor: never something between.
        let src = &f.source;
        let host_path = src.strip_prefix('/').is_some_and(|rest| {
            rest.split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
        });
        let passed_name = !src.is_empty() && !src.contains('/') && src != "." && src != "..";
        if src.len() > 4096 || src.chars().any(char::is_control) || !(host_path || passed_name) {
            return bad(format!(
                "{fat}.source: an absolute host path or the plain name of a passed file"
            ));
        }
        let octal =
            |m: &str| (1..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b));
        let mode = match f.mode.as_deref() {
            None => 0o644,
            Some(m) if octal(m) => u32::from_str_radix(m, 8).unwrap_or(0o644),
            Some(_) => return bad(format!("{fat}.mode: an octal mode such as \"0644\"")),
        };
        if let Some(o) = &f.owner {
            check_owner(o).map_err(|e| named(e, "owner"))?;
        }
        files.push(FileInjection {
            source: f.source,
            destination: f.destination,
            mode,
            owner: f.owner,
        });
    }
    Ok(VmDecl {
        name: raw.name,
        origin,
        vcpus: raw.vcpus,
        memory: raw.memory,
        agent_timeout_secs,
        nfs_shares,
        files,
        final_snapshot: snapshot_name(&at, &raw.final_snapshot)?,
    })
}

/// Why `v` is not a `T`, if it is not.
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Option<String> {
    serde_json::from_value::<T>(v.clone())
        .err()
        .map(|e| e.to_string())
}

type Check = fn(&Value) -> Option<String>;

/// The first field of the object `v` whose value is of the wrong type,
/// placed (`{at}.{field}: invalid type …`).
fn wrong_field(at: &str, v: &Value, fields: &[(&str, Check)]) -> Option<String> {
    let obj = v.as_object()?;
    fields.iter().find_map(|(k, check)| {
        obj.get(*k)
            .filter(|x| !x.is_null())
            .and_then(|x| check(x).map(|e| format!("{at}.{k}: {e}")))
    })
}

/// Where in the document serde's complaint `e` is: the VM, the share or
/// file, the field. Pure.
fn placed(doc: &Value, e: serde_json::Error) -> String {
    let Some(vms) = doc.get("vms").and_then(Value::as_array) else {
        return match doc.get("vms") {
            Some(_) => "vms: must be a list".into(),
            None => format!("document: {e}"),
        };
    };
    let strings: &[(&str, Check)] = &[
        ("host_path", typed::<String>),
        ("guest_path", typed::<String>),
        ("options", typed::<String>),
        ("source", typed::<String>),
        ("destination", typed::<String>),
        ("mode", typed::<String>),
        ("owner", typed::<String>),
    ];
    for (i, vm) in vms.iter().enumerate() {
        let at = format!("vms[{i}]");
        if !vm.is_object() {
            return format!("{at}: must be an object");
        }
        let Some(err) = typed::<RawVm>(vm) else {
            continue;
        };
        let scalars: &[(&str, Check)] = &[
            ("name", typed::<String>),
            ("template", typed::<String>),
            ("vcpus", typed::<u32>),
            ("memory", typed::<u64>),
            ("agent_timeout_secs", typed::<u32>),
            ("clone", typed::<RawClone>),
            ("nfs_shares", typed::<Vec<Value>>),
            ("file_injections", typed::<Vec<Value>>),
        ];
        if let Some(m) = wrong_field(&at, vm, scalars) {
            return m;
        }
        for (list, check) in [
            ("nfs_shares", typed::<RawShare> as Check),
            ("file_injections", typed::<RawFile> as Check),
        ] {
            for (j, item) in vm[list].as_array().into_iter().flatten().enumerate() {
                let item_at = format!("{at}.{list}[{j}]");
                if !item.is_object() {
                    return format!("{item_at}: must be an object");
                }
                if let Some(m) = wrong_field(&item_at, item, strings) {
                    return m;
                }
                if let Some(m) = check(item) {
                    return format!("{item_at}: {m}");
                }
            }
        }
        return format!("{at}: {err}");
    }
    format!("document: {e}")
}

impl ApplyDoc {
    /// Parse and check a document. Pure.
    pub fn parse(text: &str) -> Result<Self> {
        // Strictly: at most 4 MiB, no key given twice, acceptable text.
        let doc = crate::text::parse_json_strict("document", text, 4 * 1024 * 1024)?;
        let raw: RawDoc = serde_json::from_value(doc.clone())
            .map_err(|e| Error::InvalidArgument(placed(&doc, e)))?;
        if raw.vms.is_empty() || raw.vms.len() > MAX_VMS {
            return bad(format!("vms: between 1 and {MAX_VMS} VMs"));
        }
        let mut names = BTreeSet::new();
        let mut vms = Vec::new();
        for (i, v) in raw.vms.into_iter().enumerate() {
            let vm = check_vm(i, v)?;
            if !names.insert(vm.name.clone()) {
                return bad(format!("vms[{i}].name: '{}' is declared twice", vm.name));
            }
            vms.push(vm);
        }
        // Each destination is a polkit question before anything is done.
        if vms.iter().map(|v| v.files.len()).sum::<usize>() > MAX_FILES {
            return bad(format!("vms: at most {MAX_FILES} file_injections in all"));
        }
        Ok(ApplyDoc { vms })
    }
}

#[cfg(test)]
#[path = "apply_doc_tests.rs"]
mod tests;
