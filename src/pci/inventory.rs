//! What the host has: one [`PciDeviceInfo`] per PCI function, read from
//! sysfs and named from pci.ids.

use std::fs;

use serde::Serialize;

use super::address::PciAddress;
use super::critical::HostCritical;
use super::ids::PciIds;
use super::sysfs::Sysfs;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciDeviceInfo {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    /// From pci.ids; empty when unknown.
    pub vendor_name: String,
    pub device_name: String,
    pub subsystem_vendor_id: u16,
    pub subsystem_device_id: u16,
    /// The 24-bit class code `0xCCSSPP`.
    pub class: u32,
    pub class_name: String,
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
    /// The other members of the IOMMU group, sorted.
    pub iommu_group_members: Vec<PciAddress>,
    /// `None` when the kernel has no NUMA information (absent or -1).
    pub numa_node: Option<i32>,
    pub sriov_total_vfs: u32,
    pub sriov_num_vfs: u32,
    /// For a virtual function: its physical function (`physfn`).
    pub physical_function: Option<PciAddress>,
    /// A PCI bridge / port: never assignable.
    pub is_bridge: bool,
    /// From `reset_method`; empty when the kernel does not say.
    pub reset_methods: Vec<String>,
    /// Bound to a vfio (variant) driver exposing `vfio-dev/`.
    pub vfio_variant: bool,
    /// Why the host needs this device; empty = not host-critical.
    pub host_critical: Vec<String>,
}

impl PciDeviceInfo {
    /// `PCI_ID`-style `10de:2206`.
    pub fn pci_id(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor_id, self.device_id)
    }

    pub fn is_virtual_function(&self) -> bool {
        self.physical_function.is_some()
    }
}

/// Class codes of bridges (base class 0x06): PCI-to-PCI (0x0604) and
/// semi-transparent PCI-to-PCI (0x0609).
fn bridge_class(class: u32) -> bool {
    matches!(class >> 8, 0x0604 | 0x0609)
}

/// The header type (config byte 0x0e, without the multi-function bit), if
/// `config` can be read.
pub fn header_type(sysfs: &Sysfs, addr: &PciAddress) -> Option<u8> {
    let bytes = fs::read(sysfs.device_dir(addr).join("config")).ok()?;
    bytes.get(0x0e).map(|b| b & 0x7f)
}

/// Everything about one device; `None` if it is not there (or has no
/// readable vendor ID — it is going away).
pub fn read_device(
    sysfs: &Sysfs,
    ids: &PciIds,
    critical: &HostCritical,
    addr: &PciAddress,
) -> Option<PciDeviceInfo> {
    let dir = sysfs.device_dir(addr);
    let vendor_id = sysfs.read_hex(addr, "vendor")? as u16;
    let device_id = sysfs.read_hex(addr, "device").unwrap_or(0) as u16;
    let class = sysfs.read_hex(addr, "class").unwrap_or(0) & 0xff_ffff;
    let iommu_group = sysfs.iommu_group(addr);
    let iommu_group_members = iommu_group
        .map(|g| {
            sysfs
                .iommu_group_members(g)
                .into_iter()
                .filter(|m| m != addr)
                .collect()
        })
        .unwrap_or_default();
    let numa_node = sysfs
        .read_attr(addr, "numa_node")
        .and_then(|s| s.parse::<i32>().ok())
        .filter(|n| *n >= 0);
    let count = |name: &str| {
        sysfs
            .read_attr(addr, name)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let physical_function = fs::read_link(dir.join("physfn"))
        .ok()
        .and_then(|t| t.file_name()?.to_str()?.parse().ok());
    let is_bridge = bridge_class(class)
        || dir.join("pci_bus").is_dir()
        || header_type(sysfs, addr).is_some_and(|h| h != 0);
    let reset_methods = sysfs
        .read_attr(addr, "reset_method")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    Some(PciDeviceInfo {
        address: *addr,
        vendor_id,
        device_id,
        vendor_name: ids.vendor_name(vendor_id).unwrap_or_default().to_owned(),
        device_name: ids
            .device_name(vendor_id, device_id)
            .unwrap_or_default()
            .to_owned(),
        subsystem_vendor_id: sysfs.read_hex(addr, "subsystem_vendor").unwrap_or(0) as u16,
        subsystem_device_id: sysfs.read_hex(addr, "subsystem_device").unwrap_or(0) as u16,
        class,
        class_name: ids.class_name(class),
        driver: sysfs.driver(addr),
        iommu_group,
        iommu_group_members,
        numa_node,
        sriov_total_vfs: count("sriov_totalvfs"),
        sriov_num_vfs: count("sriov_numvfs"),
        physical_function,
        is_bridge,
        reset_methods,
        vfio_variant: dir.join("vfio-dev").is_dir(),
        host_critical: critical.reasons(addr).to_vec(),
    })
}

/// Every PCI device present, sorted by address. Fails only if the device
/// list itself cannot be read (no sysfs).
pub fn scan(
    sysfs: &Sysfs,
    ids: &PciIds,
    critical: &HostCritical,
) -> std::io::Result<Vec<PciDeviceInfo>> {
    Ok(sysfs
        .list_devices()?
        .iter()
        .filter_map(|a| read_device(sysfs, ids, critical, a))
        .collect())
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
