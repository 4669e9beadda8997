//! The guest side of PCI passthrough: where each assigned device sits in the
//! guest, its `<hostdev>` XML, and the memory-locking limit and vIOMMU XML a
//! domain with VFIO devices needs. Pure functions: no sysfs, no libvirt.
//!
//! Guest addresses. Left out, libvirt picks one (on q35 a pcie-root-port of
//! its own, so the device stays hot-unpluggable) — that is what a lone
//! device gets. Functions of one host slot assigned together (a GPU and its
//! audio) must share one guest slot, which libvirt will not arrange, so
//! vapord places such a group itself on bus 0x00 (pci.0 on i440fx, pcie.0 on
//! q35, where libvirt accepts them as integrated endpoints), in the first
//! slot of 0x10..=0x19 no explicit address uses, host function numbers kept,
//! `multifunction='on'` on function 0. The range stays clear of what libvirt
//! and the chipset put on bus 0 themselves (0x01/0x02 on i440fx; root ports
//! from 0x01, ICH9 functions at 0x1a..=0x1f on q35), and libvirt reserves
//! explicit addresses before assigning its own. Such devices are not
//! hot-unpluggable, which a GPU+audio pair rarely needs.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::address::PciAddress;
use crate::libvirt::xml::escape as esc;
use crate::{Error, Result};

/// One device to give to a guest, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostdevRequest {
    pub host: PciAddress,
    /// Where the guest sees it; `None` = decide (see the module comment).
    pub guest: Option<PciAddress>,
    /// `<rom file=…>`: an absolute path on the host.
    pub rom_file: Option<String>,
    /// `<rom bar=on|off>`; `None` leaves libvirt's default.
    pub rom_bar: Option<bool>,
    /// Force `multifunction='on'` on its guest address.
    pub multifunction: bool,
    /// The guest's primary display: the domain gets no emulated video
    /// ([`NO_VIDEO_XML`]); the hostdev itself is unchanged.
    pub primary_gpu: bool,
}

/// A request with its guest placement decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedHostdev {
    pub host: PciAddress,
    /// `None`: libvirt assigns the address.
    pub guest: Option<PciAddress>,
    pub multifunction: bool,
    pub rom_file: Option<String>,
    pub rom_bar: Option<bool>,
    pub primary_gpu: bool,
}

/// Guest slots on bus 0 vapord may use for multi-function groups.
pub const GUEST_SLOT_POOL: std::ops::RangeInclusive<u8> = 0x10..=0x19;

/// Place every request (same order out as in); errors name the request as
/// `pci_devices[i].<field>`. Requested functions of one host slot share a
/// guest slot; a lone device is left to libvirt even when its host slot has
/// more functions (the others stay on the host), so how many functions the
/// host slot has (`_slot_functions`) does not change the plan — grouping
/// follows what is requested, and viability of the rest is
/// `vfio::check_assignable`'s business. A lone request with `multifunction`
/// gets a planned slot, since the attribute needs an address to sit on.
pub fn plan_hostdevs(
    reqs: &[HostdevRequest],
    _slot_functions: &dyn Fn(&PciAddress) -> usize,
) -> Result<Vec<PlannedHostdev>> {
    let field = |i: usize, f: &str| format!("pci_devices[{i}].{f}");
    // Hosts listed once.
    let mut seen_host: BTreeMap<PciAddress, usize> = BTreeMap::new();
    for (i, r) in reqs.iter().enumerate() {
        if let Some(j) = seen_host.insert(r.host, i) {
            return Err(Error::InvalidArgument(format!(
                "{}: {} is already listed as pci_devices[{j}]",
                field(i, "host_address"),
                r.host
            )));
        }
        if let Some(rom) = &r.rom_file {
            if !rom.starts_with('/') || rom.chars().any(char::is_control) {
                return Err(Error::InvalidArgument(format!(
                    "{}: must be an absolute path without control characters",
                    field(i, "rom_file")
                )));
            }
        }
    }

    // Explicit guest addresses: valid, unique, function 0 present in shared slots.
    let mut guest_used: BTreeMap<PciAddress, usize> = BTreeMap::new();
    for (i, r) in reqs.iter().enumerate() {
        let Some(g) = r.guest else { continue };
        let f = field(i, "guest_address");
        if g.domain != 0 {
            return Err(Error::InvalidArgument(format!(
                "{f}: {g}: the guest PCI domain must be 0000"
            )));
        }
        if g.bus == 0 && g.slot == 0 {
            return Err(Error::InvalidArgument(format!(
                "{f}: {g}: slot 0 of bus 0 is the guest's host bridge"
            )));
        }
        if let Some(j) = guest_used.insert(g, i) {
            return Err(Error::InvalidArgument(format!(
                "{f}: {g} is already used by pci_devices[{j}]"
            )));
        }
    }
    let mut explicit_slots: BTreeMap<(u8, u8), Vec<usize>> = BTreeMap::new();
    for (g, i) in &guest_used {
        explicit_slots.entry((g.bus, g.slot)).or_default().push(*i);
    }
    for idxs in explicit_slots.values() {
        let has_f0 = idxs
            .iter()
            .any(|i| reqs[*i].guest.is_some_and(|g| g.function == 0));
        if idxs.len() > 1 && !has_f0 {
            let i = idxs[0];
            let g = reqs[i].guest.unwrap_or(reqs[i].host);
            return Err(Error::InvalidArgument(format!(
                "{}: guest slot {:02x}:{:02x} has several functions but no function 0, which the guest needs to find them",
                field(i, "guest_address"),
                g.bus,
                g.slot
            )));
        }
    }

    // Requests without a guest address, grouped by host slot.
    let mut groups: BTreeMap<(u16, u8, u8), Vec<usize>> = BTreeMap::new();
    for (i, r) in reqs.iter().enumerate() {
        if r.guest.is_none() {
            groups
                .entry((r.host.domain, r.host.bus, r.host.slot))
                .or_default()
                .push(i);
        }
    }
    let mut free = GUEST_SLOT_POOL.filter(|s| !explicit_slots.contains_key(&(0, *s)));
    let mut placed: Vec<Option<PciAddress>> = reqs.iter().map(|r| r.guest).collect();
    for idxs in groups.values() {
        let first = &reqs[idxs[0]];
        let needs_slot = idxs.len() > 1 || idxs.iter().any(|i| reqs[*i].multifunction);
        if !needs_slot {
            continue;
        }
        let slot = free.next().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: no free guest slot left on bus 00 (0x{:02x}..0x{:02x}) for the functions of {}; give guest addresses",
                field(idxs[0], "guest_address"),
                GUEST_SLOT_POOL.start(),
                GUEST_SLOT_POOL.end(),
                first.host
            ))
        })?;
        // Keep host function numbers, unless function 0 is missing: the
        // guest only scans a slot whose function 0 exists, so then number
        // them from 0 in host order.
        let mut sorted = idxs.clone();
        sorted.sort_by_key(|i| reqs[*i].host.function);
        let keep = reqs[sorted[0]].host.function == 0;
        for (n, i) in sorted.iter().enumerate() {
            let function = if keep {
                reqs[*i].host.function
            } else {
                n as u8
            };
            placed[*i] = Some(PciAddress {
                domain: 0,
                bus: 0,
                slot,
                function,
            });
        }
    }

    // multifunction='on' on function 0 of every guest slot with several functions.
    let mut per_slot: BTreeMap<(u8, u8), usize> = BTreeMap::new();
    for g in placed.iter().flatten() {
        *per_slot.entry((g.bus, g.slot)).or_default() += 1;
    }
    Ok(reqs
        .iter()
        .zip(placed)
        .map(|(r, guest)| {
            let shared = guest.is_some_and(|g| {
                g.function == 0 && per_slot.get(&(g.bus, g.slot)).copied().unwrap_or(0) > 1
            });
            PlannedHostdev {
                host: r.host,
                guest,
                multifunction: r.multifunction || shared,
                rom_file: r.rom_file.clone(),
                rom_bar: r.rom_bar,
                primary_gpu: r.primary_gpu,
            }
        })
        .collect())
}

fn address_attrs(a: &PciAddress) -> String {
    format!(
        "domain='0x{:04x}' bus='0x{:02x}' slot='0x{:02x}' function='0x{:x}'",
        a.domain, a.bus, a.slot, a.function
    )
}

/// The `<hostdev>` element (managed: libvirt binds vfio-pci at start and
/// gives the device back at stop).
pub fn hostdev_xml(h: &PlannedHostdev) -> String {
    let mut x =
        String::from("<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/>");
    let _ = write!(x, "<source><address {}/></source>", address_attrs(&h.host));
    if let Some(g) = &h.guest {
        let _ = write!(x, "<address type='pci' {}", address_attrs(g));
        if h.multifunction {
            x.push_str(" multifunction='on'");
        }
        x.push_str("/>");
    }
    if h.rom_bar.is_some() || h.rom_file.is_some() {
        x.push_str("<rom");
        if let Some(bar) = h.rom_bar {
            let _ = write!(x, " bar='{}'", if bar { "on" } else { "off" });
        }
        if let Some(f) = &h.rom_file {
            let _ = write!(x, " file='{}'", esc(f));
        }
        x.push_str("/>");
    }
    x.push_str("</hostdev>");
    x
}

/// The `<video>` of a guest whose primary display is an assigned GPU
/// (libvirt has no x-vga).
pub const NO_VIDEO_XML: &str = "<video><model type='none'/></video>";

const GIB_IN_KIB: u64 = 1024 * 1024;

/// libvirt's `qemuDomainGetMemLockLimitBytes` for VFIO: `None` without VFIO
/// devices; else factor × guest memory + 1 GiB, factor 1 without a vIOMMU
/// and the number of VFIO devices with one (each device may pin all memory
/// through its own address space).
pub fn memlock_limit_kib(guest_memory_kib: u64, vfio_devices: usize, viommu: bool) -> Option<u64> {
    if vfio_devices == 0 {
        return None;
    }
    let factor = if viommu { vfio_devices as u64 } else { 1 };
    Some(
        factor
            .saturating_mul(guest_memory_kib)
            .saturating_add(GIB_IN_KIB),
    )
}

/// `<memtune>` with the locked-memory hard limit.
pub fn memtune_xml(limit_kib: u64) -> String {
    format!("<memtune><hard_limit unit='KiB'>{limit_kib}</hard_limit></memtune>")
}

/// An emulated Intel vIOMMU for q35 with interrupt remapping and the caching
/// mode VFIO needs. `intremap` requires the split irqchip: put
/// [`ioapic_feature_xml`] inside the domain's `<features>`.
pub fn iommu_xml() -> &'static str {
    "<iommu model='intel'><driver intremap='on' caching_mode='on'/></iommu>"
}

/// The element for inside `<features>` (i.e. `<features>…<ioapic
/// driver='qemu'/></features>`) that [`iommu_xml`]'s interrupt remapping needs.
pub fn ioapic_feature_xml() -> &'static str {
    "<ioapic driver='qemu'/>"
}

#[cfg(test)]
#[path = "hostdev_tests.rs"]
mod tests;
