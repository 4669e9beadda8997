//! Which PCI devices the host itself needs — never to be detached for a
//! guest. Found by generic rules, never by a list of addresses:
//!
//! - **storage**: every mounted filesystem (`proc/self/mountinfo`, else
//!   `proc/mounts`) and active swap partition (`proc/swaps`) on a block
//!   device. The device is resolved through `/dev/disk/by-*` and other
//!   symlinks, `/dev/mapper` names, the mount's `major:minor`, and then
//!   device-mapper / md `slaves/` down to the disks; each disk's sysfs path
//!   names the PCI controller behind it;
//! - **network**: the interfaces of the IPv4 and IPv6 default routes
//!   (`proc/net/route`, `proc/net/ipv6_route`), through bonds, bridges and
//!   VLANs (`lower_*` links, `brif/`) down to the PCI NIC;
//! - **console**: when a virtual console is bound to a real driver
//!   (`/sys/class/vtconsole/vtcon*/bind` = 1 and not the dummy console), the
//!   boot VGA device (`boot_vga` = 1); with a framebuffer console also every
//!   PCI device behind `/sys/class/graphics/fb*` and `/sys/class/drm/card*`.
//!
//! Every bridge / upstream port above a critical device is critical too.
//! Sysfs paths are under the [`Sysfs`] root; `/proc` and `/dev` paths under
//! `procfs_root` (both `/` on a real host).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::address::PciAddress;
use super::sysfs::Sysfs;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCritical {
    reasons: HashMap<PciAddress, Vec<String>>,
}

impl HostCritical {
    /// Nothing is critical (for tests, or when detection is switched off).
    pub fn none() -> Self {
        Self::default()
    }

    /// Apply all rules to the host under `sysfs` / `procfs_root`. Never
    /// fails: unreadable sources just contribute nothing.
    pub fn detect(sysfs: &Sysfs, procfs_root: &Path) -> HostCritical {
        let mut hc = HostCritical::default();
        detect_storage(&mut hc, sysfs, procfs_root);
        detect_network(&mut hc, sysfs, procfs_root);
        detect_console(&mut hc, sysfs);
        hc
    }

    /// Why the host needs `addr`; empty when it does not.
    pub fn reasons(&self, addr: &PciAddress) -> &[String] {
        self.reasons.get(addr).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_critical(&self, addr: &PciAddress) -> bool {
        !self.reasons(addr).is_empty()
    }

    /// Every critical device, sorted, with its reasons.
    pub fn all(&self) -> Vec<(PciAddress, &[String])> {
        let mut v: Vec<_> = self
            .reasons
            .iter()
            .map(|(a, r)| (*a, r.as_slice()))
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// Record a reason (duplicates are dropped).
    pub fn insert(&mut self, addr: PciAddress, reason: impl Into<String>) {
        let reason = reason.into();
        let list = self.reasons.entry(addr).or_default();
        if !list.contains(&reason) {
            list.push(reason);
        }
    }

    /// `chain` is the PCI path from the root complex down to the device that
    /// `what` describes ("backs the mounted filesystem / (/dev/vda1)").
    fn insert_chain(&mut self, chain: &[PciAddress], what: &str) {
        let Some((dev, upstream)) = chain.split_last() else {
            return;
        };
        self.insert(*dev, what);
        for up in upstream {
            self.insert(*up, format!("is upstream of {dev}, which {what}"));
        }
    }
}

/// The PCI addresses named by the components of a (canonical) sysfs path,
/// from the root complex down.
pub fn pci_chain(path: &Path) -> Vec<PciAddress> {
    path.components()
        .filter_map(|c| c.as_os_str().to_str())
        .filter(|n| n.len() == 12)
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn chain_of(link: &Path) -> Vec<PciAddress> {
    fs::canonicalize(link)
        .map(|p| pci_chain(&p))
        .unwrap_or_default()
}

/// Undo the octal escapes of mountinfo / mounts (`\040` = space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 4]).ok())
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A mounted filesystem: (mount point, source, major:minor if known).
fn mounts(procfs_root: &Path) -> Vec<(String, String, Option<String>)> {
    let proc = procfs_root.join("proc");
    if let Ok(text) = fs::read_to_string(proc.join("self/mountinfo")) {
        return text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let sep = f.iter().position(|x| *x == "-")?;
                let source = f.get(sep + 2)?;
                Some((
                    unescape(f.get(4)?),
                    unescape(source),
                    Some(f.get(2)?.to_string()),
                ))
            })
            .collect();
    }
    fs::read_to_string(proc.join("mounts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let source = unescape(f.next()?);
            Some((unescape(f.next()?), source, None))
        })
        .collect()
}

/// The kernel name of the block device a `/dev/...` path designates
/// (`/dev/disk/by-uuid/…` → `vda1`, `/dev/mapper/root` → `dm-0`).
fn block_name(sysfs: &Sysfs, procfs_root: &Path, dev: &str) -> Option<String> {
    let rel = dev.strip_prefix("/dev/")?;
    let mut p = procfs_root.join("dev").join(rel);
    for _ in 0..32 {
        match fs::read_link(&p) {
            Ok(t) if t.is_absolute() => {
                p = procfs_root.join(t.strip_prefix("/").unwrap_or(&t));
            }
            Ok(t) => p = p.parent()?.join(t),
            Err(_) => break,
        }
    }
    let name = p.file_name()?.to_str()?.to_owned();
    let class = sysfs.path("/sys/class/block");
    if class.join(&name).exists() {
        return Some(name);
    }
    // A /dev/mapper node that is not a symlink: match the dm name.
    if let Some(dm) = rel.strip_prefix("mapper/") {
        for e in fs::read_dir(&class).ok()?.flatten() {
            let n = fs::read_to_string(e.path().join("dm/name")).unwrap_or_default();
            if n.trim() == dm {
                return e.file_name().to_str().map(str::to_owned);
            }
        }
    }
    None
}

/// The PCI chains behind a block device, following `slaves/` (dm, md, …).
fn block_chains(dev_dir: &Path, seen: &mut HashSet<PathBuf>) -> Vec<Vec<PciAddress>> {
    let Ok(canon) = fs::canonicalize(dev_dir) else {
        return vec![];
    };
    if !seen.insert(canon.clone()) {
        return vec![];
    }
    let mut out = vec![];
    let own = pci_chain(&canon);
    if !own.is_empty() {
        out.push(own);
    }
    // Slaves hang off the whole disk; a partition's are its disk's.
    for dir in [
        canon.clone(),
        canon.parent().map(Path::to_owned).unwrap_or_default(),
    ] {
        if let Ok(rd) = fs::read_dir(dir.join("slaves")) {
            for e in rd.flatten() {
                out.extend(block_chains(&e.path(), seen));
            }
        }
        if !canon.join("partition").exists() {
            break;
        }
    }
    out
}

fn detect_block(
    hc: &mut HostCritical,
    sysfs: &Sysfs,
    procfs_root: &Path,
    source: &str,
    majmin: Option<&str>,
    what: &str,
) {
    let dir = block_name(sysfs, procfs_root, source)
        .map(|n| sysfs.path("/sys/class/block").join(n))
        .or_else(|| {
            let mm = majmin.filter(|m| !m.starts_with("0:"))?;
            let p = sysfs.path("/sys/dev/block").join(mm);
            p.exists().then_some(p)
        });
    let Some(dir) = dir else { return };
    for chain in block_chains(&dir, &mut HashSet::new()) {
        hc.insert_chain(&chain, what);
    }
}

fn detect_storage(hc: &mut HostCritical, sysfs: &Sysfs, procfs_root: &Path) {
    for (point, source, majmin) in mounts(procfs_root) {
        if !source.starts_with("/dev/") && majmin.is_none() {
            continue;
        }
        let what = format!("backs the mounted filesystem {point} ({source})");
        detect_block(hc, sysfs, procfs_root, &source, majmin.as_deref(), &what);
    }
    let swaps = fs::read_to_string(procfs_root.join("proc/swaps")).unwrap_or_default();
    for line in swaps.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(name), Some("partition")) = (f.next(), f.next()) else {
            continue;
        };
        let name = unescape(name);
        let what = format!("backs the active swap area {name}");
        detect_block(hc, sysfs, procfs_root, &name, None, &what);
    }
}

/// Interfaces carrying a default route, IPv4 then IPv6.
fn default_route_interfaces(procfs_root: &Path) -> Vec<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    let mut out: Vec<String> = vec![];
    let v4 = fs::read_to_string(procfs_root.join("proc/net/route")).unwrap_or_default();
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flags = f
            .get(3)
            .and_then(|x| u32::from_str_radix(x, 16).ok())
            .unwrap_or(0);
        if f.len() >= 8
            && f[1] == "00000000"
            && f[7] == "00000000"
            && flags & RTF_UP != 0
            && flags & RTF_REJECT == 0
        {
            out.push(f[0].to_owned());
        }
    }
    let v6 = fs::read_to_string(procfs_root.join("proc/net/ipv6_route")).unwrap_or_default();
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let flags = u32::from_str_radix(f[8], 16).unwrap_or(0);
        if f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && flags & RTF_UP != 0
            && flags & RTF_REJECT == 0
        {
            out.push(f[9].to_owned());
        }
    }
    out.retain(|i| i != "lo");
    let mut seen = HashSet::new();
    out.retain(|i| seen.insert(i.clone()));
    out
}

/// The PCI chains behind a network interface, through stacked devices.
fn net_chains(
    sysfs: &Sysfs,
    ifname: &str,
    seen: &mut HashSet<String>,
) -> Vec<(String, Vec<PciAddress>)> {
    if !seen.insert(ifname.to_owned()) {
        return vec![];
    }
    let dir = sysfs.path("/sys/class/net").join(ifname);
    let mut out = vec![];
    let own = chain_of(&dir);
    if !own.is_empty() {
        out.push((ifname.to_owned(), own));
    }
    let mut lower: Vec<String> = vec![];
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            if let Some(n) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("lower_"))
            {
                lower.push(n.to_owned());
            }
        }
    }
    if let Ok(rd) = fs::read_dir(dir.join("brif")) {
        lower.extend(
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned)),
        );
    }
    lower.sort();
    for l in lower {
        out.extend(net_chains(sysfs, &l, seen));
    }
    out
}

fn detect_network(hc: &mut HostCritical, sysfs: &Sysfs, procfs_root: &Path) {
    for ifname in default_route_interfaces(procfs_root) {
        for (port, chain) in net_chains(sysfs, &ifname, &mut HashSet::new()) {
            let what = if port == ifname {
                format!("carries the default route ({ifname})")
            } else {
                format!("carries the default route ({ifname} via {port})")
            };
            hc.insert_chain(&chain, &what);
        }
    }
}

/// (any real console bound, a framebuffer console bound)
fn console_state(sysfs: &Sysfs) -> (bool, bool) {
    let (mut any, mut fb) = (false, false);
    if let Ok(rd) = fs::read_dir(sysfs.path("/sys/class/vtconsole")) {
        for e in rd.flatten() {
            let bound = fs::read_to_string(e.path().join("bind")).unwrap_or_default();
            if bound.trim() != "1" {
                continue;
            }
            let name = fs::read_to_string(e.path().join("name")).unwrap_or_default();
            if name.contains("dummy") {
                continue;
            }
            any = true;
            fb |= name.contains("frame buffer");
        }
    }
    (any, fb)
}

fn detect_console(hc: &mut HostCritical, sysfs: &Sysfs) {
    let (active, fbcon) = console_state(sysfs);
    if !active {
        return;
    }
    let what = "drives the active console";
    if let Ok(devs) = sysfs.list_devices() {
        for a in devs {
            if sysfs.read_attr(&a, "boot_vga").as_deref() == Some("1") {
                hc.insert_chain(&chain_of(&sysfs.device_dir(&a)), what);
            }
        }
    }
    if !fbcon {
        return;
    }
    for (class, prefix) in [("/sys/class/graphics", "fb"), ("/sys/class/drm", "card")] {
        let Ok(rd) = fs::read_dir(sysfs.path(class)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // card0, not card0-HDMI-A-1 (a connector of the same card).
            if name
                .strip_prefix(prefix)
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
            {
                hc.insert_chain(&chain_of(&e.path().join("device")), what);
            }
        }
    }
}

#[cfg(test)]
#[path = "critical_tests.rs"]
mod tests;
