//! Vendor, device and class names from the `pci.ids` database (the file
//! `lspci` uses). Parsed once into hash maps of spans over the file's text,
//! so loading the ~1.4 MB file costs a few milliseconds and no per-name
//! allocation. A missing file gives an empty database: callers then show
//! hexadecimal IDs ([`PciIds::vendor_label`], [`PciIds::device_label`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where Debian (`pciutils`, `hwdata`) and most distributions install it.
pub const DEFAULT_PATHS: &[&str] = &["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// A byte range of a name inside [`PciIds::text`].
type Span = (u32, u32);

#[derive(Debug, Default, Clone)]
pub struct PciIds {
    text: String,
    source: Option<PathBuf>,
    vendors: HashMap<u16, Span>,
    /// Key: `vendor << 16 | device`.
    devices: HashMap<u32, Span>,
    classes: HashMap<u8, Span>,
    /// Key: `class << 8 | subclass`.
    subclasses: HashMap<u16, Span>,
}

impl PciIds {
    /// An empty database: every lookup misses.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The first of [`DEFAULT_PATHS`] that can be read, or an empty database.
    pub fn load_default() -> Self {
        DEFAULT_PATHS
            .iter()
            .find_map(|p| Self::load(Path::new(p)).ok())
            .unwrap_or_default()
    }

    /// `path` if given and readable, else the defaults, else empty.
    pub fn load_or_default(path: Option<&Path>) -> Self {
        match path {
            Some(p) => Self::load(p).unwrap_or_else(|e| {
                log::warn!(
                    "cannot read PCI ID database {}: {e}; showing numeric IDs",
                    p.display()
                );
                Self::empty()
            }),
            None => Self::load_default(),
        }
    }

    /// Parse the file at `path`.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        // pci.ids is UTF-8 today; older copies were Latin-1 — don't fail on those.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        let mut ids = Self::parse(text);
        ids.source = Some(path.to_owned());
        Ok(ids)
    }

    /// Parse `pci.ids` text.
    pub fn parse(text: String) -> Self {
        let mut ids = PciIds {
            vendors: HashMap::with_capacity(2600),
            devices: HashMap::with_capacity(40000),
            ..Default::default()
        };
        enum Section {
            None,
            Vendor(u16),
            Class(u8),
        }
        let mut section = Section::None;
        let mut offset = 0usize;
        for raw in text.split_inclusive('\n') {
            let start = offset;
            offset += raw.len();
            let line = raw.trim_end_matches(['\n', '\r']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let tabs = line.bytes().take_while(|b| *b == b'\t').count();
            let body = &line[tabs..];
            let body_start = start + tabs;
            match tabs {
                0 => {
                    section = Section::None;
                    if let Some(rest) = body.strip_prefix("C ") {
                        if let Some((id, span)) = id_and_name(rest, 2, body_start + 2) {
                            let class = id as u8;
                            ids.classes.insert(class, span);
                            section = Section::Class(class);
                        }
                    } else if let Some((id, span)) = id_and_name(body, 4, body_start) {
                        ids.vendors.insert(id as u16, span);
                        section = Section::Vendor(id as u16);
                    }
                }
                1 => match section {
                    Section::Vendor(v) => {
                        if let Some((d, span)) = id_and_name(body, 4, body_start) {
                            ids.devices.insert(u32::from(v) << 16 | d, span);
                        }
                    }
                    Section::Class(c) => {
                        if let Some((s, span)) = id_and_name(body, 2, body_start) {
                            ids.subclasses.insert(u16::from(c) << 8 | s as u16, span);
                        }
                    }
                    Section::None => {}
                },
                // Subsystems and programming interfaces: not needed.
                _ => {}
            }
        }
        ids.text = text;
        ids
    }

    /// The file this was loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.vendors.is_empty() && self.classes.is_empty()
    }

    fn get(&self, span: Option<&Span>) -> Option<&str> {
        span.map(|(s, l)| &self.text[*s as usize..(*s + *l) as usize])
    }

    pub fn vendor_name(&self, vendor: u16) -> Option<&str> {
        self.get(self.vendors.get(&vendor))
    }

    pub fn device_name(&self, vendor: u16, device: u16) -> Option<&str> {
        self.get(
            self.devices
                .get(&(u32::from(vendor) << 16 | u32::from(device))),
        )
    }

    /// The vendor's name, or `0x10de` when unknown.
    pub fn vendor_label(&self, vendor: u16) -> String {
        self.vendor_name(vendor)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{vendor:#06x}"))
    }

    /// The device's name, or `0x2206` when unknown.
    pub fn device_label(&self, vendor: u16, device: u16) -> String {
        self.device_name(vendor, device)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{device:#06x}"))
    }

    /// For a 24-bit class code `0xCCSSPP`: the subclass name if known, else
    /// the class name, else `Unknown class 0xCCSSPP`.
    pub fn class_name(&self, class: u32) -> String {
        let c = (class >> 16) as u8;
        let sub = (class >> 8) as u16;
        self.get(self.subclasses.get(&sub))
            .or_else(|| self.get(self.classes.get(&c)))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("Unknown class {:#08x}", class & 0xff_ffff))
    }
}

/// `XXXX  Name` → (id, span of Name); `digits` hex digits then whitespace.
fn id_and_name(body: &str, digits: usize, body_start: usize) -> Option<(u32, Span)> {
    let hex = body.get(..digits)?;
    let id = u32::from_str_radix(hex, 16).ok()?;
    let rest = &body[digits..];
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let name = rest.trim_start();
    let name = name.trim_end();
    if name.is_empty() {
        return None;
    }
    let name_start = body_start + digits + (rest.len() - rest.trim_start().len());
    Some((id, (name_start as u32, name.len() as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
#\tcomment with tab
10de  NVIDIA Corporation
\t1aef  GA102 High Definition Audio Controller
\t2206  GA102 [GeForce RTX 3080]
\t\t1043 87b3  ROG Strix RTX 3080
1af4  Red Hat, Inc.
\t1044  Virtio 1.0 RNG
8086  Intel Corporation
\t1533  I210 Gigabit Network Connection

C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
C 0c  Serial bus controller
\t03  USB controller
\t\t30  XHCI
";

    #[test]
    fn parses_vendors_devices_and_classes() {
        let ids = PciIds::parse(SAMPLE.to_owned());
        assert_eq!(ids.vendor_name(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(
            ids.device_name(0x10de, 0x2206),
            Some("GA102 [GeForce RTX 3080]")
        );
        assert_eq!(
            ids.device_name(0x10de, 0x1aef),
            Some("GA102 High Definition Audio Controller")
        );
        assert_eq!(ids.device_name(0x1af4, 0x1044), Some("Virtio 1.0 RNG"));
        // A device ID under another vendor does not leak.
        assert_eq!(ids.device_name(0x8086, 0x2206), None);
        assert_eq!(ids.vendor_name(0x1234), None);
        assert_eq!(ids.class_name(0x030000), "VGA compatible controller");
        assert_eq!(ids.class_name(0x0c0330), "USB controller");
        assert_eq!(ids.class_name(0x020000), "Ethernet controller");
        assert_eq!(ids.class_name(0x0280ff), "Network controller");
        assert_eq!(ids.class_name(0xffff00), "Unknown class 0xffff00");
        assert_eq!(ids.class_name(0x000001), "Unknown class 0x000001");
    }

    #[test]
    fn labels_fall_back_to_hex_and_missing_file_is_empty() {
        let ids = PciIds::load_or_default(Some(Path::new("/nonexistent/pci.ids")));
        assert!(ids.is_empty());
        assert_eq!(ids.vendor_label(0x10de), "0x10de");
        assert_eq!(ids.device_label(0x10de, 0x0a), "0x000a");
        assert_eq!(ids.class_name(0x030000), "Unknown class 0x030000");
        let ids = PciIds::parse(SAMPLE.to_owned());
        assert_eq!(ids.vendor_label(0x10de), "NVIDIA Corporation");
    }

    #[test]
    fn tolerates_crlf_and_garbage_lines() {
        let text = "zzzz  not hex\r\n\tzzzz nope\r\n8086  Intel\r\n\t1533  I210\r\n\tbad\r\nC xx  bad class\r\n\t00  orphan\r\n";
        let ids = PciIds::parse(text.to_owned());
        assert_eq!(ids.vendor_name(0x8086), Some("Intel"));
        assert_eq!(ids.device_name(0x8086, 0x1533), Some("I210"));
        assert!(ids.classes.is_empty() && ids.subclasses.is_empty());
    }

    #[test]
    fn real_database_if_installed() {
        let Some(path) = DEFAULT_PATHS.iter().map(Path::new).find(|p| p.exists()) else {
            return;
        };
        let ids = PciIds::load(path).unwrap();
        assert_eq!(ids.source(), Some(path));
        assert_eq!(ids.vendor_name(0x1af4), Some("Red Hat, Inc."));
        assert_eq!(ids.device_name(0x1af4, 0x1044), Some("Virtio 1.0 RNG"));
        assert_eq!(ids.class_name(0x010802), "Non-Volatile memory controller");
        assert_eq!(ids.class_name(0xffff00), "Unassigned class");
    }
}
