//! Reading libvirt XML documents without losing anything.
//!
//! vapord never rewrites a whole domain through a partial model; it parses the
//! XML libvirt gives it into a generic [`Element`] tree and asks questions of
//! it (which disks, which sources, vapord's metadata), or turns the whole tree
//! into JSON for `Describe`.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// XML namespace of vapord's own element in a domain's `<metadata>`.
pub const METADATA_NS: &str = "https://vapor.dev/xmlns/domain/1";
/// Prefix used when vapord writes that element.
pub const METADATA_PREFIX: &str = "vapor";

/// Escape text for an XML attribute (quoted either way) or element.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// One XML element with its attributes, text and children, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Qualified name as written (`disk`, `vapor:vm`).
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// Parse a document and return its root element.
    pub fn parse(xml: &str) -> Result<Element> {
        let mut reader = Reader::from_str(xml);
        let mut stack: Vec<Element> = Vec::new();
        let bad =
            |e: &dyn std::fmt::Display| Error::Failed(format!("malformed XML from libvirt: {e}"));
        loop {
            match reader.read_event().map_err(|e| bad(&e))? {
                Event::Start(s) => stack.push(Self::open(&s).map_err(|e| bad(&e))?),
                Event::Empty(s) => {
                    let el = Self::open(&s).map_err(|e| bad(&e))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::End(_) => {
                    let el = stack.pop().ok_or_else(|| bad(&"unbalanced end tag"))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::Text(t) => {
                    if let Some(cur) = stack.last_mut() {
                        cur.text.push_str(&t.xml10_content());
                    }
                }
                Event::CData(t) => {
                    if let Some(cur) = stack.last_mut() {
                        cur.text.push_str(&t.into_inner());
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(cur) = stack.last_mut() {
                        cur.text.push_str(&resolve_entity(&r.into_inner()));
                    }
                }
                Event::Eof => return Err(bad(&"document ended early")),
                _ => {}
            }
        }
    }

    fn open(s: &quick_xml::events::BytesStart<'_>) -> std::result::Result<Element, String> {
        let name = s.name().as_ref().to_owned();
        let mut attrs = Vec::new();
        for a in s.attributes() {
            let a = a.map_err(|e| e.to_string())?;
            let key = a.key.as_ref().to_owned();
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?
                .into_owned();
            attrs.push((key, value));
        }
        Ok(Element {
            name,
            attrs,
            ..Default::default()
        })
    }

    /// The name without its namespace prefix.
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.local_name() == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.local_name() == name)
    }

    /// Trimmed text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// The element as JSON: attributes as `@name`, text as `#text`, children by
    /// name (an array when a name repeats). Nothing is dropped.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        for (k, v) in &self.attrs {
            m.insert(format!("@{k}"), Value::String(v.clone()));
        }
        let text = self.text.trim();
        if !text.is_empty() {
            if self.attrs.is_empty() && self.children.is_empty() {
                return Value::String(text.to_owned());
            }
            m.insert("#text".into(), Value::String(text.to_owned()));
        }
        for c in &self.children {
            let v = c.to_json();
            match m.get_mut(&c.name) {
                Some(Value::Array(a)) if self.children_named(c.local_name()).count() > 1 => {
                    a.push(v)
                }
                Some(existing) => {
                    let prev = existing.take();
                    *existing = Value::Array(vec![prev, v]);
                }
                None => {
                    m.insert(c.name.clone(), v);
                }
            }
        }
        Value::Object(m)
    }
}

fn resolve_entity(name: &str) -> String {
    match name {
        "amp" => "&".into(),
        "lt" => "<".into(),
        "gt" => ">".into(),
        "quot" => "\"".into(),
        "apos" => "'".into(),
        n => {
            let code = n
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| n.strip_prefix('#').and_then(|d| d.parse().ok()));
            code.and_then(char::from_u32)
                .map(String::from)
                .unwrap_or_else(|| format!("&{n};"))
        }
    }
}

/// Where a disk's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A file or block device path on the host.
    Path(String),
    /// A volume named through a libvirt pool.
    Volume { pool: String, volume: String },
    /// A network protocol source (rbd, nbd, iscsi …): never a local file.
    Network(String),
    /// No media (an empty cdrom drive).
    Empty,
}

/// The facts about one `<disk>` that deletion and description need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    pub source: DiskSource,
    pub target: Option<String>,
    pub bus: Option<String>,
    pub format: Option<String>,
    pub readonly: bool,
    pub shareable: bool,
    /// Paths of the backing chain libvirt reported (running domains only).
    pub backing: Vec<String>,
}

fn source_of(disk_type: &str, src: Option<&Element>) -> DiskSource {
    let Some(src) = src else {
        return DiskSource::Empty;
    };
    match disk_type {
        "file" => src.attr("file").map(|p| DiskSource::Path(p.into())),
        "block" => src.attr("dev").map(|p| DiskSource::Path(p.into())),
        "dir" => src.attr("dir").map(|p| DiskSource::Path(p.into())),
        "volume" => match (src.attr("pool"), src.attr("volume")) {
            (Some(p), Some(v)) => Some(DiskSource::Volume {
                pool: p.into(),
                volume: v.into(),
            }),
            _ => None,
        },
        "network" => Some(DiskSource::Network(format!(
            "{}:{}",
            src.attr("protocol").unwrap_or("?"),
            src.attr("name").unwrap_or("")
        ))),
        _ => None,
    }
    .unwrap_or(DiskSource::Empty)
}

fn backing_chain(disk_type_el: &Element, out: &mut Vec<String>) {
    if let Some(b) = disk_type_el.child("backingStore") {
        let t = b.attr("type").unwrap_or("file");
        if let DiskSource::Path(p) = source_of(t, b.child("source")) {
            out.push(p);
        }
        backing_chain(b, out);
    }
}

/// The disks of a domain document, in order.
pub fn domain_disks(domain: &Element) -> Vec<Disk> {
    let Some(devices) = domain.child("devices") else {
        return Vec::new();
    };
    devices.children_named("disk").map(disk_facts).collect()
}

/// The facts of one `<disk>` element.
pub fn disk_facts(d: &Element) -> Disk {
    let mut backing = Vec::new();
    backing_chain(d, &mut backing);
    Disk {
        device: d.attr("device").unwrap_or("disk").to_owned(),
        source: source_of(d.attr("type").unwrap_or("file"), d.child("source")),
        target: d
            .child("target")
            .and_then(|t| t.attr("dev"))
            .map(Into::into),
        bus: d
            .child("target")
            .and_then(|t| t.attr("bus"))
            .map(Into::into),
        format: d
            .child("driver")
            .and_then(|t| t.attr("type"))
            .map(Into::into),
        readonly: d.child("readonly").is_some(),
        shareable: d.child("shareable").is_some(),
        backing,
    }
}

/// vapord's own record in a domain's `<metadata>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VaporMetadata {
    /// The template the VM was created from.
    pub template: Option<String>,
    /// UID of the person who created it through vapord.
    pub created_by_uid: Option<u32>,
    /// Paths of volumes vapord created for this VM alone (disks, seed ISOs).
    pub owned_volumes: Vec<String>,
    /// Free-form key/value pairs from the creation spec.
    pub custom: std::collections::BTreeMap<String, String>,
}

impl VaporMetadata {
    /// Read vapord's element (`<vm xmlns="METADATA_NS">…`) as returned by
    /// `virDomainGetMetadata`.
    pub fn from_element(el: &Element) -> Self {
        let mut md = VaporMetadata::default();
        for c in &el.children {
            match c.local_name() {
                "template" => md.template = c.attr("name").map(Into::into),
                "created-by" => md.created_by_uid = c.attr("uid").and_then(|u| u.parse().ok()),
                "volume" => md.owned_volumes.extend(c.attr("path").map(String::from)),
                "custom" => {
                    if let Some(k) = c.attr("key") {
                        md.custom.insert(k.into(), c.text.trim().into());
                    }
                }
                _ => {}
            }
        }
        md
    }

    /// Find vapord's element inside a whole domain document.
    pub fn from_domain(domain: &Element) -> Option<Self> {
        let meta = domain.child("metadata")?;
        meta.children
            .iter()
            .find(|c| {
                c.local_name() == "vm"
                    && c.attrs
                        .iter()
                        .any(|(k, v)| k.starts_with("xmlns") && v == METADATA_NS)
            })
            .map(Self::from_element)
    }
}

/// The NVRAM (firmware variables) file of a domain definition, in either
/// XML form (`<nvram>path</nvram>` or `<nvram><source file='path'/>`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvram_is_found_in_either_form() {
        let text =
            "<domain><os><nvram template='/t.fd'> /var/lib/n/a_VARS.fd </nvram></os></domain>";
        assert_eq!(
            nvram_path(&Element::parse(text).unwrap()).as_deref(),
            Some("/var/lib/n/a_VARS.fd")
        );
        let source =
            "<domain><os><nvram type='file'><source file='/n/b.fd'/></nvram></os></domain>";
        assert_eq!(
            nvram_path(&Element::parse(source).unwrap()).as_deref(),
            Some("/n/b.fd")
        );
        assert_eq!(nvram_path(&Element::parse(DOMAIN).unwrap()), None);
    }

    const DOMAIN: &str = r#"<domain type='kvm'>
  <name>web &amp; db</name>
  <uuid>0b7f5a2e-0000-4000-8000-000000000001</uuid>
  <metadata>
    <vapor:vm xmlns:vapor="https://vapor.dev/xmlns/domain/1">
      <vapor:template name="ubuntu-server"/>
      <vapor:created-by uid="1000"/>
      <vapor:volume path="/pool/web-seed.iso"/>
      <vapor:custom key="owner">team-a</vapor:custom>
    </vapor:vm>
  </metadata>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/pool/web.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/pool/base.qcow2'/><backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='data' volume='shared.raw'/>
      <target dev='vdb' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn disks_carry_device_source_and_flags() {
        let d = domain_disks(&Element::parse(DOMAIN).unwrap());
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].source, DiskSource::Path("/pool/web.qcow2".into()));
        assert_eq!(d[0].backing, vec!["/pool/base.qcow2".to_string()]);
        assert_eq!(d[0].format.as_deref(), Some("qcow2"));
        assert!(d[1].shareable);
        assert_eq!(
            d[1].source,
            DiskSource::Volume {
                pool: "data".into(),
                volume: "shared.raw".into()
            }
        );
        assert_eq!(d[2].device, "cdrom");
        assert!(d[2].readonly);
        assert_eq!(d[2].source, DiskSource::Empty);
    }

    #[test]
    fn metadata_is_found_by_namespace_not_prefix() {
        let md = VaporMetadata::from_domain(&Element::parse(DOMAIN).unwrap()).unwrap();
        assert_eq!(md.template.as_deref(), Some("ubuntu-server"));
        assert_eq!(md.created_by_uid, Some(1000));
        assert_eq!(md.owned_volumes, vec!["/pool/web-seed.iso".to_string()]);
        assert_eq!(md.custom.get("owner").map(String::as_str), Some("team-a"));
    }

    #[test]
    fn json_keeps_attributes_text_and_repeated_children() {
        let j = Element::parse(DOMAIN).unwrap().to_json();
        assert_eq!(j["name"], "web & db");
        assert_eq!(j["@type"], "kvm");
        let disks = j["devices"]["disk"].as_array().unwrap();
        assert_eq!(disks.len(), 3);
        assert_eq!(disks[0]["source"]["@file"], "/pool/web.qcow2");
    }

    #[test]
    fn malformed_xml_is_an_error_not_a_panic() {
        assert!(Element::parse("<domain><name>x</domain>").is_err());
        assert!(Element::parse("<domain>").is_err());
    }
}
