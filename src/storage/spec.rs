//! Storage pool and volume specs: the JSON documents `CreateStoragePool` and
//! `CreateVolume` take, checked field by field, and the libvirt XML they
//! become. Pure: nothing here talks to libvirt or touches the host.
//!
//! The parsers accept exactly what `dbus/schemas/pool-spec.schema.json` and
//! `dbus/schemas/volume-spec.schema.json` describe. Every problem is reported
//! at once, as `<field path>: <problem>` (sorted, joined with `; `), e.g.
//! `source.hots: unknown field (known: …)`; values are never echoed, only
//! unknown field names.

use std::net::IpAddr;

use serde_json::{Map, Value};

use crate::libvirt::xml::escape;
use crate::text::{self, TextRule};
use crate::{Error, Result};

/// Largest volume a spec may ask for: 64 TiB.
pub const MAX_VOLUME_CAPACITY: u64 = 64 << 40;

/// At most this many problems are listed; the rest are counted.
const MAX_REPORTED: usize = 100;

/// At most this many source devices (logical pools).
const MAX_DEVICES: usize = 64;

// Known fields, space-separated and sorted (as error messages list them).
const POOL_FIELDS: &str = "autostart build name source start target type";
const SOURCE_FIELDS: &str = "device dir format host initiator name target";
const VOLUME_FIELDS: &str = "backing_volume capacity format name preallocate";

const FS_FORMATS: &[&str] = &[
    "auto", "ext2", "ext3", "ext4", "ufs", "iso9660", "udf", "gfs", "gfs2", "vfat", "hfs+", "xfs",
    "ocfs2", "vmfs",
];
const NETFS_FORMATS: &[&str] = &["auto", "nfs", "glusterfs"];
const LOGICAL_FORMATS: &[&str] = &["auto", "lvm2"];

/// The pool types vapord creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// A directory on the host.
    Dir,
    /// A block device with a file system, mounted on `target`.
    Fs,
    /// A network file system (NFS, GlusterFS) mounted on `target`.
    Netfs,
    /// An LVM volume group.
    Logical,
    /// The LUNs of an iSCSI target.
    Iscsi,
}

impl PoolKind {
    pub const ALL: [PoolKind; 5] = [
        PoolKind::Dir,
        PoolKind::Fs,
        PoolKind::Netfs,
        PoolKind::Logical,
        PoolKind::Iscsi,
    ];

    /// libvirt's name for the type (`<pool type=…>`).
    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Dir => "dir",
            PoolKind::Fs => "fs",
            PoolKind::Netfs => "netfs",
            PoolKind::Logical => "logical",
            PoolKind::Iscsi => "iscsi",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether `build` defaults to true: building these only creates the
    /// target directory; building the others writes to devices.
    pub fn builds_by_default(self) -> bool {
        matches!(self, PoolKind::Dir | PoolKind::Fs | PoolKind::Netfs)
    }

    /// The fields a pool of this type must have.
    fn required(self) -> &'static [&'static str] {
        match self {
            PoolKind::Dir => &["target"],
            PoolKind::Fs => &["source.device", "target"],
            PoolKind::Netfs => &["source.dir", "source.host", "target"],
            PoolKind::Logical => &["source.name"],
            PoolKind::Iscsi => &["source.host", "source.target"],
        }
    }

    /// The `source.format` values this type takes, and the default.
    fn formats(self) -> (&'static [&'static str], Option<&'static str>) {
        match self {
            PoolKind::Fs => (FS_FORMATS, Some("auto")),
            PoolKind::Netfs => (NETFS_FORMATS, Some("nfs")),
            PoolKind::Logical => (LOGICAL_FORMATS, None),
            PoolKind::Dir | PoolKind::Iscsi => (&[], None),
        }
    }

    /// The `source` fields this type takes.
    fn source_fields(self) -> &'static [&'static str] {
        match self {
            PoolKind::Dir => &[],
            PoolKind::Fs => &["device", "format"],
            PoolKind::Netfs => &["dir", "format", "host"],
            PoolKind::Logical => &["device", "format", "name"],
            PoolKind::Iscsi => &["host", "initiator", "target"],
        }
    }
}

/// Where a pool's storage comes from (fields by type; see [`parse_pool_spec`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSource {
    /// netfs, iscsi: the server (a host name or an IP address).
    pub host: Option<String>,
    /// netfs: the exported directory.
    pub dir: Option<String>,
    /// fs: the one block device; logical: the physical volumes.
    pub device: Vec<String>,
    /// logical: the volume group.
    pub name: Option<String>,
    /// fs, netfs, logical: the file system or LVM format.
    pub format: Option<String>,
    /// iscsi: the initiator's IQN (`source.initiator`).
    pub iqn: Option<String>,
    /// iscsi: the target's IQN (`source.target`).
    pub target_iqn: Option<String>,
}

/// A validated pool request, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub kind: PoolKind,
    /// The target path (defaulted for logical and iscsi pools).
    pub target: String,
    pub source: PoolSource,
    pub autostart: bool,
    pub start: bool,
    pub build: bool,
}

/// The formats a new volume may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeFormat {
    Raw,
    Qcow2,
    /// An ISO image: a raw volume to libvirt.
    Iso,
}

impl VolumeFormat {
    pub const ALL: [VolumeFormat; 3] = [VolumeFormat::Raw, VolumeFormat::Qcow2, VolumeFormat::Iso];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Raw => "raw",
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Iso => "iso",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The format written in the volume XML (`iso` is `raw` there).
    pub fn libvirt_format(self) -> &'static str {
        match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw | VolumeFormat::Iso => "raw",
        }
    }
}

/// A validated volume request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    /// Bytes, 1 to [`MAX_VOLUME_CAPACITY`].
    pub capacity: u64,
    pub format: VolumeFormat,
    /// A volume name in the same pool, or a volume's D-Bus object path.
    pub backing_volume: Option<String>,
    pub preallocate: bool,
}

/// Problems found so far, reported together.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: &str, what: impl std::fmt::Display) {
        let shown = if path.is_empty() { "spec" } else { path };
        self.0.push(format!("{shown}: {what}"));
    }

    /// Keep the message of a failed check (it already names its field).
    fn absorb(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.0.push(e.to_string());
        }
    }

    fn finish<T>(mut self, value: impl FnOnce() -> Option<T>) -> Result<T> {
        if self.0.is_empty() {
            if let Some(v) = value() {
                return Ok(v);
            }
            self.0.push("spec: is incomplete".into());
        }
        self.0.sort();
        self.0.dedup();
        let more = self.0.len().saturating_sub(MAX_REPORTED);
        self.0.truncate(MAX_REPORTED);
        if more > 0 {
            self.0.push(format!("… and {more} more"));
        }
        Err(Error::InvalidArgument(self.0.join("; ")))
    }
}

/// A key as it appears in a path: bare when a short identifier, else quoted.
fn join(parent: &str, key: &str) -> String {
    let plain = key.len() <= 64
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => {
            let short: String = key.chars().take(64).collect();
            let cut = if short.len() < key.len() { "…" } else { "" };
            let shown = format!("{}{cut}", short.escape_debug());
            format!("{parent}[\"{}\"]", text::for_bus(&shown))
        }
    }
}

/// One JSON object being read, with the path to it.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// `v` as an object whose keys are all in `known` (each other key is a problem).
    fn of(p: &mut Problems, path: &str, v: &'a Value, known: &str) -> Option<Self> {
        let Value::Object(map) = v else {
            p.add(path, "must be an object");
            return None;
        };
        for key in map.keys().filter(|k| !known.split(' ').any(|f| f == *k)) {
            let known = known.replace(' ', ", ");
            p.add(&join(path, key), format!("unknown field (known: {known})"));
        }
        Some(Fields {
            path: path.to_owned(),
            map,
        })
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn str(&self, p: &mut Problems, key: &str) -> Option<&'a str> {
        match self.map.get(key)? {
            Value::String(s) => Some(s),
            _ => {
                p.add(&self.path(key), "must be a string");
                None
            }
        }
    }

    fn bool(&self, p: &mut Problems, key: &str) -> Option<bool> {
        match self.map.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => {
                p.add(&self.path(key), "must be a boolean");
                None
            }
        }
    }
}

/// Parse a spec strictly: at most 1 MiB, no duplicate keys, every key and
/// string one line of acceptable text.
fn parse_doc(json: &str) -> Result<Value> {
    let doc = text::parse_json_strict("spec", json, TextRule::DOCUMENT.max_bytes)?;
    text::check_json("", &doc, |_| TextRule::LINE)?;
    Ok(doc)
}

/// `InvalidArgument("<field>: <problem>")` when there is a problem.
fn refuse(field: &str, problem: Option<&str>) -> Result<()> {
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::InvalidArgument(format!(
            "{}: {p}",
            text::for_bus(field)
        ))),
    }
}

/// Check the name of a pool, volume or network: one line of acceptable text
/// of at most 256 bytes that is usable as a file name and safe in XML: not
/// empty, `.` or `..`, no `/`, no leading `-` or `.`, none of `<>&'"`, no
/// whitespace at either end.
pub fn check_object_name(field: &str, name: &str) -> Result<()> {
    text::check(field, name, TextRule::NAME)?;
    let problem = if name.is_empty() {
        Some("must not be empty")
    } else if name == "." || name == ".." {
        Some("must not be . or ..")
    } else if name.contains('/') {
        Some("must not contain '/'")
    } else if name.starts_with('-') {
        Some("must not start with '-'")
    } else if name.starts_with('.') {
        Some("must not start with '.'")
    } else if name.contains(['<', '>', '&', '\'', '"']) {
        Some("must not contain <, >, &, ' or \"")
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Some("must not start or end with whitespace")
    } else {
        None
    };
    refuse(field, problem)
}

/// An absolute, normalised path: no empty, `.` or `..` components, no
/// trailing `/`; `/` itself only when `allow_root`.
fn check_path(field: &str, path: &str, allow_root: bool) -> Result<()> {
    text::check(field, path, TextRule::LINE)?;
    let problem = if !path.starts_with('/') {
        Some("must be an absolute path")
    } else if path == "/" {
        (!allow_root).then_some("must not be /")
    } else if path.contains("//") {
        Some("must not contain //")
    } else if path.ends_with('/') {
        Some("must not end with /")
    } else if path.split('/').any(|c| c == "." || c == "..") {
        Some("must not contain . or .. components")
    } else {
        None
    };
    refuse(field, problem)
}

/// A host name (RFC 1123 labels) or an IPv4 or IPv6 literal.
fn check_host(field: &str, host: &str) -> Result<()> {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = host.parse::<IpAddr>().is_ok() || (host.len() <= 253 && host.split('.').all(label_ok));
    refuse(
        field,
        (!ok).then_some("must be a host name or an IP address"),
    )
}

/// An iSCSI qualified name: `iqn.YYYY-MM.<reversed domain>[:<id>]`,
/// `eui.<16 hex>` or `naa.<16 or 32 hex>`; at most 223 bytes.
fn check_iqn(field: &str, name: &str) -> Result<()> {
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    let iqn = |s: &str| {
        let b = s.as_bytes();
        b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.'
            && b[8].is_ascii_alphanumeric()
            && b[8..]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b".:_-".contains(c))
    };
    let ok = name.len() <= 223
        && match name.split_once('.') {
            Some(("iqn", rest)) => iqn(rest),
            Some(("eui", rest)) => hex(rest, &[16]),
            Some(("naa", rest)) => hex(rest, &[16, 32]),
            _ => false,
        };
    let words = "must be an iSCSI name like iqn.2004-01.org.example:disk1";
    refuse(field, (!ok).then_some(words))
}

/// A volume group name as LVM accepts it (and a safe name).
fn check_vg_name(field: &str, name: &str) -> Result<()> {
    let ok = name.len() <= 127
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c));
    let words = "must be a volume group name: letters, digits, '+', '_', '.', '-'";
    refuse(field, (!ok).then_some(words)).and_then(|()| check_object_name(field, name))
}

/// A D-Bus object path other than `/`: `/`-separated non-empty segments of
/// `[A-Za-z0-9_]`.
fn is_object_path(s: &str) -> bool {
    s.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|seg| {
            !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// A size: an integer number of bytes, or a string of digits with an
/// optional binary unit (`K`, `M`, `G`, `T`, `P`, `E`, any case, optionally
/// followed by `B` or `iB`; a bare `B` means bytes): `"10G"`, `"512MiB"`.
pub fn parse_size(field: &str, v: &Value) -> Result<u64> {
    let bad = || {
        Error::InvalidArgument(format!(
            "{}: must be a number of bytes or a size like 512M, 10G or 1T",
            text::for_bus(field)
        ))
    };
    let s = match v {
        Value::Number(n) => return n.as_u64().ok_or_else(bad),
        Value::String(s) => s,
        _ => return Err(bad()),
    };
    text::check(field, s, TextRule::LINE)?;
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let (shift, suffix) = match unit.get(..1).map(str::to_ascii_uppercase).as_deref() {
        None | Some("B") => (0, unit),
        Some(u) => match "KMGTPE".find(u) {
            Some(i) => (10 * (i as u32 + 1), &unit[1..]),
            None => return Err(bad()),
        },
    };
    let suffix_ok =
        matches!(suffix, "" | "B" | "b") || (shift > 0 && matches!(suffix, "iB" | "ib"));
    if digits.is_empty() || !suffix_ok {
        return Err(bad());
    }
    let too_big = || Error::InvalidArgument(format!("{}: is too large", text::for_bus(field)));
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}

/// Read, check and complete a pool spec.
pub fn parse_pool_spec(json: &str) -> Result<PoolSpec> {
    let doc = parse_doc(json)?;
    let mut p = Problems::default();
    let Some(root) = Fields::of(&mut p, "", &doc, POOL_FIELDS) else {
        return p.finish(|| None);
    };
    let name = root.str(&mut p, "name");
    match name {
        Some(n) => p.absorb(check_object_name("name", n)),
        None if root.get("name").is_none() => p.add("name", "is required"),
        None => {}
    }
    let kind = match root.str(&mut p, "type") {
        Some(t) => {
            let k = PoolKind::from_name(t);
            if k.is_none() {
                p.add("type", "must be one of dir, fs, netfs, logical, iscsi");
            }
            k
        }
        None if root.get("type").is_none() => {
            p.add("type", "is required");
            None
        }
        None => None,
    };
    let target = root.str(&mut p, "target");
    if let Some(t) = target {
        p.absorb(check_path("target", t, false));
    }
    let autostart = root.bool(&mut p, "autostart").unwrap_or(true);
    let start = root.bool(&mut p, "start").unwrap_or(true);
    let build = root.bool(&mut p, "build");

    let src = root
        .get("source")
        .and_then(|v| Fields::of(&mut p, "source", v, SOURCE_FIELDS));
    let field = |p: &mut Problems, key: &str, check: fn(&str, &str) -> Result<()>| {
        let (s, v) = src.as_ref().and_then(|s| Some((s, s.str(p, key)?)))?;
        p.absorb(check(&s.path(key), v));
        Some(v.to_owned())
    };
    let mut source = PoolSource {
        host: field(&mut p, "host", check_host),
        dir: field(&mut p, "dir", |f, v| check_path(f, v, true)),
        device: src.as_ref().map(|s| devices(&mut p, s)).unwrap_or_default(),
        name: field(&mut p, "name", check_vg_name),
        format: field(&mut p, "format", |_, _| Ok(())),
        iqn: field(&mut p, "initiator", check_iqn),
        target_iqn: field(&mut p, "target", check_iqn),
    };
    let Some(kind) = kind else {
        return p.finish(|| None);
    };
    let build = build.unwrap_or(kind.builds_by_default());
    let type_name = kind.as_str();
    if let Some(s) = &src {
        for key in s.map.keys() {
            let key = key.as_str();
            if SOURCE_FIELDS.split(' ').any(|f| f == key) && !kind.source_fields().contains(&key) {
                p.add(&s.path(key), format!("is not used by {type_name} pools"));
            }
        }
    }
    let given = |field: &str| match field.strip_prefix("source.") {
        Some(key) => src.as_ref().is_some_and(|s| s.get(key).is_some()),
        None => root.get(field).is_some(),
    };
    for &field in kind.required().iter().filter(|f| !given(f)) {
        p.add(field, format!("is required for {type_name} pools"));
    }
    let (formats, default_format) = kind.formats();
    match source.format.as_deref() {
        Some(f) if !formats.is_empty() && !formats.contains(&f) => {
            let formats = formats.join(", ");
            let words = format!("must be one of {formats} for {type_name} pools");
            p.add("source.format", words);
        }
        Some(_) => {}
        None => source.format = default_format.map(String::from),
    }
    let listed = src.as_ref().and_then(|s| s.get("device"));
    if kind == PoolKind::Fs
        && listed
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1)
    {
        p.add("source.device", "an fs pool takes exactly one device");
    }
    if kind == PoolKind::Logical && build && !given("source.device") {
        let words = "is required to build a logical pool (or set build to false)";
        p.add("source.device", words);
    }
    let target = target.map(String::from).or_else(|| match kind {
        PoolKind::Logical => source.name.as_ref().map(|vg| format!("/dev/{vg}")),
        PoolKind::Iscsi => Some("/dev/disk/by-path".into()),
        _ => None,
    });
    p.finish(|| {
        Some(PoolSpec {
            name: name?.to_owned(),
            kind,
            target: target?,
            source,
            autostart,
            start,
            build,
        })
    })
}

/// `source.device`: one path or an array of them (not empty).
fn devices(p: &mut Problems, s: &Fields<'_>) -> Vec<String> {
    let field = s.path("device");
    let items: Vec<(String, &Value)> = match s.get("device") {
        None => return Vec::new(),
        Some(v @ Value::String(_)) => vec![(field, v)],
        Some(Value::Array(a)) if a.is_empty() => {
            p.add(&field, "must not be empty");
            return Vec::new();
        }
        Some(Value::Array(a)) if a.len() > MAX_DEVICES => {
            p.add(&field, format!("must have at most {MAX_DEVICES} devices"));
            return Vec::new();
        }
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{field}[{i}]"), v))
            .collect(),
        Some(_) => {
            p.add(&field, "must be a path or an array of paths");
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (path, v) in items {
        match v {
            Value::String(d) => {
                p.absorb(check_path(&path, d, false));
                out.push(d.clone());
            }
            _ => p.add(&path, "must be a string"),
        }
    }
    out
}

/// The pool XML libvirt is given for a spec (no UUID: libvirt makes one).
pub fn pool_xml(spec: &PoolSpec) -> String {
    let s = &spec.source;
    let el = |tag: &str, attr: &str, v: &str| format!("    <{tag} {attr}='{}'/>\n", escape(v));
    let mut src = String::new();
    src.extend(s.host.as_deref().map(|h| el("host", "name", h)));
    src.extend(s.dir.as_deref().map(|d| el("dir", "path", d)));
    src.extend(s.device.iter().map(|d| el("device", "path", d)));
    src.extend(s.target_iqn.as_deref().map(|t| el("device", "path", t)));
    src.extend(
        s.name
            .as_deref()
            .map(|n| format!("    <name>{}</name>\n", escape(n))),
    );
    src.extend(s.format.as_deref().map(|f| el("format", "type", f)));
    if let Some(i) = &s.iqn {
        let iqn = format!("<initiator><iqn name='{}'/></initiator>", escape(i));
        src.push_str(&format!("    {iqn}\n"));
    }
    let source = if src.is_empty() {
        String::new()
    } else {
        format!("  <source>\n{src}  </source>\n")
    };
    format!(
        "<pool type='{}'>\n  <name>{}</name>\n{source}  <target>\n    <path>{}</path>\n  \
         </target>\n</pool>\n",
        spec.kind.as_str(),
        escape(&spec.name),
        escape(&spec.target),
    )
}

/// Read and check a volume spec.
pub fn parse_volume_spec(json: &str) -> Result<VolumeSpec> {
    let doc = parse_doc(json)?;
    let mut p = Problems::default();
    let Some(root) = Fields::of(&mut p, "", &doc, VOLUME_FIELDS) else {
        return p.finish(|| None);
    };
    let name = root.str(&mut p, "name");
    match name {
        Some(n) => p.absorb(check_object_name("name", n)),
        None if root.get("name").is_none() => p.add("name", "is required"),
        None => {}
    }
    let capacity = match root.get("capacity") {
        None => {
            p.add("capacity", "is required");
            None
        }
        Some(v) => match parse_size("capacity", v) {
            Ok(0) => {
                p.add("capacity", "must be more than 0");
                None
            }
            Ok(c) if c > MAX_VOLUME_CAPACITY => {
                p.add("capacity", "must be at most 64 TiB");
                None
            }
            Ok(c) => Some(c),
            Err(e) => {
                p.absorb(Err(e));
                None
            }
        },
    };
    let format = match root.str(&mut p, "format") {
        None => Some(VolumeFormat::Qcow2).filter(|_| root.get("format").is_none()),
        Some(f) => {
            let v = VolumeFormat::from_name(f);
            if v.is_none() {
                p.add("format", "must be one of raw, qcow2, iso");
            }
            v
        }
    };
    let backing = root.str(&mut p, "backing_volume");
    if let Some(b) = backing {
        if b.starts_with('/') {
            if !is_object_path(b) {
                p.add(
                    "backing_volume",
                    "must be a volume name or a volume object path",
                );
            }
        } else {
            p.absorb(check_object_name("backing_volume", b));
        }
        if format.is_some_and(|f| f != VolumeFormat::Qcow2) {
            p.add("backing_volume", "only a qcow2 volume can have one");
        }
    }
    let preallocate = root.bool(&mut p, "preallocate").unwrap_or(false);
    if preallocate && backing.is_some() {
        p.add("preallocate", "is not possible with backing_volume");
    }
    p.finish(|| {
        Some(VolumeSpec {
            name: name?.to_owned(),
            capacity: capacity?,
            format: format?,
            backing_volume: backing.map(String::from),
            preallocate,
        })
    })
}

/// The volume XML libvirt is given: sparse (allocation 0) unless
/// `preallocate`; `backing` is the backing file's path and format.
pub fn volume_xml(spec: &VolumeSpec, backing: Option<(&str, &str)>) -> String {
    let allocation = if spec.preallocate { spec.capacity } else { 0 };
    let backing = match backing {
        Some((path, format)) => format!(
            "  <backingStore>\n    <path>{}</path>\n    <format type='{}'/>\n  </backingStore>\n",
            escape(path),
            escape(format)
        ),
        None => String::new(),
    };
    format!(
        "<volume>\n  <name>{}</name>\n  <capacity unit='bytes'>{}</capacity>\n  \
         <allocation unit='bytes'>{allocation}</allocation>\n  <target>\n    \
         <format type='{}'/>\n  </target>\n{backing}</volume>\n",
        escape(&spec.name),
        spec.capacity,
        spec.format.libvirt_format(),
    )
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
