//! The fake kernel: reacts to sysfs writes in a [`FakeSysfs`](super::FakeSysfs)
//! tree like Linux does (drivers/base/bus.c, drivers/pci/pci-sysfs.c,
//! pci-driver.c). The written value has already landed in the file.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use super::{FakeDevice, Tree};
use crate::pci::address::PciAddress;
use crate::pci::sysfs::{KernelHook, Sysfs};

fn enodev() -> io::Error {
    io::Error::from_raw_os_error(libc::ENODEV)
}

fn parse_addr(value: &str) -> io::Result<PciAddress> {
    value.trim().parse().map_err(|_| enodev())
}

/// [`KernelHook`] for fake trees. Stateless (the state is in the tree), so
/// one instance serves any number of trees; writes are serialised.
#[derive(Debug, Default)]
pub struct FakeKernel {
    lock: Mutex<()>,
}

impl FakeKernel {
    pub fn new() -> Self {
        Self::default()
    }
}

impl KernelHook for FakeKernel {
    fn after_write(&self, sysfs: &Sysfs, path: &Path, value: &str) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let tree = Tree::new(sysfs.root())?;
        let name = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let file = name(Some(path));
        let parent = name(path.parent());
        let grandparent = name(path.parent().and_then(Path::parent));
        let parent_addr = || parent.parse::<PciAddress>().map_err(|_| enodev());
        match (file.as_str(), parent.as_str(), grandparent.as_str()) {
            ("drivers_probe", "pci", _) => probe(&tree, &parse_addr(value)?),
            ("rescan", _, _) => {
                if value.trim() == "1" {
                    rescan(&tree)?;
                }
                Ok(())
            }
            ("driver_override", _, _) => {
                // Like the kernel: one trailing newline is dropped; empty clears.
                parent_addr()?;
                let v = value.strip_suffix('\n').unwrap_or(value);
                let shown = if v.is_empty() { "(null)" } else { v };
                std::fs::write(path, format!("{shown}\n"))
            }
            ("unbind", "driver", dev) => {
                let dev: PciAddress = dev.parse().map_err(|_| enodev())?;
                let drv = tree.driver_of(&dev).ok_or_else(enodev)?;
                unbind_from(&tree, &drv, &parse_addr(value)?)
            }
            ("unbind", drv, "drivers") => unbind_from(&tree, drv, &parse_addr(value)?),
            ("bind", drv, "drivers") => bind_to(&tree, drv, &parse_addr(value)?),
            ("new_id", drv, "drivers") => new_id(&tree, drv, value),
            ("remove", _, _) => {
                let a = parent_addr()?;
                if value.trim() == "1" {
                    remove(&tree, &a)
                } else {
                    std::fs::write(path, "")
                }
            }
            ("uevent", _, _) => {
                let a = parent_addr()?;
                let d = tree.spec(&a)?;
                std::fs::write(path, d.uevent(tree.driver_of(&a).as_deref()))?;
                tree.log(&format!("change {a}"))
            }
            _ => Ok(()),
        }
    }
}

fn override_of(tree: &Tree, a: &PciAddress) -> Option<String> {
    let dir = tree.dev_dir(a)?;
    let v = std::fs::read_to_string(dir.join("driver_override")).ok()?;
    let v = v.trim();
    (!v.is_empty() && v != "(null)").then(|| v.to_owned())
}

fn new_ids(tree: &Tree, drv: &str) -> Vec<(u16, u16)> {
    std::fs::read_to_string(tree.p(&format!("fake-kernel/new_ids/{drv}")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let v = u16::from_str_radix(f.next()?, 16).ok()?;
            let d = u16::from_str_radix(f.next()?, 16).ok()?;
            Some((v, d))
        })
        .collect()
}

/// Whether `drv` would take `d` (the kernel's `pci_match_device`): an
/// override names the only driver that may; else the native driver or a
/// dynamic id added with `new_id`.
fn matches(tree: &Tree, d: &FakeDevice, drv: &str) -> bool {
    match override_of(tree, &d.address) {
        Some(o) => o == drv,
        None => {
            d.native_driver.as_deref() == Some(drv)
                || new_ids(tree, drv).contains(&(d.vendor, d.device))
        }
    }
}

fn registered(tree: &Tree, drv: &str) -> bool {
    tree.driver_dir(drv).is_dir()
}

/// `drivers_probe`: bind an unbound device to the first driver that matches.
fn probe(tree: &Tree, a: &PciAddress) -> io::Result<()> {
    let d = tree.spec(a)?;
    if tree.driver_of(a).is_some() {
        return Ok(());
    }
    let mut candidates: Vec<String> = vec![];
    if let Some(o) = override_of(tree, a) {
        candidates.push(o);
    } else {
        candidates.extend(d.native_driver.clone());
        if let Ok(rd) = std::fs::read_dir(tree.p("fake-kernel/new_ids")) {
            let mut dynamic: Vec<String> = rd
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect();
            dynamic.sort();
            candidates.extend(dynamic);
        }
    }
    for drv in candidates {
        if registered(tree, &drv) && matches(tree, &d, &drv) && tree.bind(a, &drv)? {
            return Ok(());
        }
    }
    Ok(())
}

fn unbind_from(tree: &Tree, drv: &str, a: &PciAddress) -> io::Result<()> {
    if tree.driver_of(a).as_deref() != Some(drv) {
        return Err(enodev());
    }
    tree.unbind(a)
}

fn bind_to(tree: &Tree, drv: &str, a: &PciAddress) -> io::Result<()> {
    let d = tree.spec(a)?;
    if !matches(tree, &d, drv) {
        return Err(enodev());
    }
    if tree.driver_of(a).is_some() {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    if tree.bind(a, drv)? {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// `new_id` (`"10de 2206"`): remember the id and attach matching unbound devices.
fn new_id(tree: &Tree, drv: &str, value: &str) -> io::Result<()> {
    let mut f = value.split_whitespace();
    let (Some(v), Some(dv)) = (f.next(), f.next()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let (Ok(v), Ok(dv)) = (u16::from_str_radix(v, 16), u16::from_str_radix(dv, 16)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let path = tree.p(&format!("fake-kernel/new_ids/{drv}"));
    let mut ids = std::fs::read_to_string(&path).unwrap_or_default();
    ids.push_str(&format!("{v:04x} {dv:04x}\n"));
    std::fs::write(&path, ids)?;
    for a in Sysfs::new(&tree.root).list_devices()? {
        let d = tree.spec(&a)?;
        if (d.vendor, d.device) == (v, dv) && tree.driver_of(&a).is_none() && matches(tree, &d, drv)
        {
            tree.bind(&a, drv)?;
        }
    }
    Ok(())
}

/// `remove`: the device and everything below it (devices behind a bridge,
/// the VFs of a PF) disappear, remembered for `rescan`.
fn remove(tree: &Tree, a: &PciAddress) -> io::Result<()> {
    let dir = tree.dev_dir(a).ok_or_else(enodev)?;
    let mut gone: Vec<(usize, FakeDevice)> = vec![];
    for b in Sysfs::new(&tree.root).list_devices()? {
        let d = tree.spec(&b)?;
        let bdir = tree.dev_dir(&b).ok_or_else(enodev)?;
        if bdir.starts_with(&dir) || d.physfn == Some(*a) {
            gone.push((bdir.components().count(), d));
        }
    }
    gone.sort_by_key(|(depth, d)| (std::cmp::Reverse(*depth), d.address));
    for (_, d) in &gone {
        let b = d.address;
        tree.unbind(&b)?;
        let bdir = tree.dev_dir(&b).ok_or_else(enodev)?;
        if let Some(g) = d.iommu_group {
            let gdir = tree.p(&format!("sys/kernel/iommu_groups/{g}"));
            let _ = std::fs::remove_file(gdir.join(format!("devices/{b}")));
            if tree.group_members(g).is_empty() {
                let _ = std::fs::remove_dir_all(&gdir);
            }
        }
        if let Some(pf) = d.physfn.and_then(|pf| tree.dev_dir(&pf)) {
            for e in std::fs::read_dir(&pf)?.flatten() {
                let is_link = e.file_name().to_string_lossy().starts_with("virtfn");
                if is_link && std::fs::canonicalize(e.path()).ok().as_ref() == Some(&bdir) {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
        std::fs::remove_file(tree.bus_link(&b))?;
        std::fs::remove_dir_all(&bdir)?;
        std::fs::rename(tree.spec_path("devices", &b), tree.spec_path("removed", &b))?;
        tree.log(&format!("remove {b}"))?;
    }
    Ok(())
}

/// `rescan`: removed devices come back (parents first, unbound, overrides
/// cleared), then each is probed.
fn rescan(tree: &Tree) -> io::Result<()> {
    let mut pending: Vec<FakeDevice> = vec![];
    for e in std::fs::read_dir(tree.p("fake-kernel/removed"))?.flatten() {
        let text = std::fs::read_to_string(e.path())?;
        pending.push(serde_json::from_str(&text).map_err(|e| io::Error::other(e.to_string()))?);
        std::fs::remove_file(e.path())?;
    }
    pending.sort_by_key(|d| d.address);
    let mut added = vec![];
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = vec![];
        for d in pending {
            let ready = [d.parent, d.physfn]
                .iter()
                .flatten()
                .all(|p| tree.dev_dir(p).is_some());
            if ready {
                tree.materialize(&d)?;
                tree.log(&format!("add {}", d.address))?;
                added.push(d.address);
            } else {
                rest.push(d);
            }
        }
        if rest.len() == before {
            // Orphans (their parent is gone for good): keep them removed.
            for d in &rest {
                let json =
                    serde_json::to_string_pretty(d).map_err(|e| io::Error::other(e.to_string()))?;
                std::fs::write(tree.spec_path("removed", &d.address), json)?;
            }
            break;
        }
        pending = rest;
    }
    for a in added {
        probe(tree, &a)?;
    }
    Ok(())
}
