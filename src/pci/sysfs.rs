//! The one place that reads and writes sysfs for PCI. The root is
//! configurable (`/` on a host; a fake tree in tests), and writes can be
//! observed by a [`KernelHook`] so tests can emulate how the kernel reacts
//! (unbind, drivers_probe, driver_override) — libvirt's virpcimock does the
//! same with LD_PRELOAD.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::address::PciAddress;

/// Emulates the kernel's reaction to a sysfs write (tests only; the real
/// kernel needs none).
pub trait KernelHook: Send + Sync {
    /// Called after `value` was written to `path` (inside the fake root).
    fn after_write(&self, sysfs: &Sysfs, path: &Path, value: &str) -> io::Result<()>;
}

#[derive(Clone)]
pub struct Sysfs {
    root: PathBuf,
    hook: Option<Arc<dyn KernelHook>>,
}

impl std::fmt::Debug for Sysfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sysfs").field("root", &self.root).finish()
    }
}

impl Sysfs {
    /// Sysfs under `root` (`/` for the real one).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            hook: None,
        }
    }

    /// With a fake kernel reacting to writes.
    pub fn with_hook(root: impl Into<PathBuf>, hook: Arc<dyn KernelHook>) -> Self {
        Self {
            root: root.into(),
            hook: Some(hook),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<rel>` for an absolute-looking `rel` like `/sys/bus/pci`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn devices_dir(&self) -> PathBuf {
        self.path("/sys/bus/pci/devices")
    }

    pub fn device_dir(&self, addr: &PciAddress) -> PathBuf {
        self.devices_dir().join(addr.to_string())
    }

    pub fn drivers_dir(&self) -> PathBuf {
        self.path("/sys/bus/pci/drivers")
    }

    /// Every PCI device present, sorted.
    pub fn list_devices(&self) -> io::Result<Vec<PciAddress>> {
        let mut v: Vec<PciAddress> = std::fs::read_dir(self.devices_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        v.sort();
        Ok(v)
    }

    pub fn exists(&self, addr: &PciAddress) -> bool {
        self.device_dir(addr).exists()
    }

    /// A device attribute, trimmed; `None` if absent or unreadable.
    pub fn read_attr(&self, addr: &PciAddress, name: &str) -> Option<String> {
        std::fs::read_to_string(self.device_dir(addr).join(name))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// A `0x…` hexadecimal attribute (vendor, device, class …).
    pub fn read_hex(&self, addr: &PciAddress, name: &str) -> Option<u32> {
        let s = self.read_attr(addr, name)?;
        u32::from_str_radix(s.trim_start_matches("0x"), 16).ok()
    }

    fn link_name(path: &Path) -> Option<String> {
        std::fs::read_link(path)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The driver bound now, if any.
    pub fn driver(&self, addr: &PciAddress) -> Option<String> {
        Self::link_name(&self.device_dir(addr).join("driver"))
    }

    /// The driver named in `driver_override`, if one is set (the kernel
    /// shows `(null)` when none is).
    pub fn driver_override(&self, addr: &PciAddress) -> Option<String> {
        self.read_attr(addr, "driver_override")
            .filter(|s| !s.is_empty() && s != "(null)")
    }

    /// The IOMMU group number, if the IOMMU is on for this device.
    pub fn iommu_group(&self, addr: &PciAddress) -> Option<u32> {
        Self::link_name(&self.device_dir(addr).join("iommu_group")).and_then(|n| n.parse().ok())
    }

    /// The devices of an IOMMU group, sorted.
    pub fn iommu_group_members(&self, group: u32) -> Vec<PciAddress> {
        let dir = self.path(&format!("/sys/kernel/iommu_groups/{group}/devices"));
        let mut v: Vec<PciAddress> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether the kernel has an IOMMU enabled (any group exists).
    pub fn iommu_enabled(&self) -> bool {
        std::fs::read_dir(self.path("/sys/kernel/iommu_groups"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Whether a PCI driver is registered (e.g. `vfio-pci`).
    pub fn driver_registered(&self, name: &str) -> bool {
        self.drivers_dir().join(name).is_dir()
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        std::fs::write(path, value)?;
        if let Some(h) = &self.hook {
            h.after_write(self, path, value)?;
        }
        Ok(())
    }

    /// Write a device attribute (`driver_override`, `remove`, `uevent` …).
    pub fn write_attr(&self, addr: &PciAddress, name: &str, value: &str) -> io::Result<()> {
        self.write(&self.device_dir(addr).join(name), value)
    }

    /// Unbind the device from its current driver (no-op when unbound).
    pub fn unbind(&self, addr: &PciAddress) -> io::Result<()> {
        if self.driver(addr).is_none() {
            return Ok(());
        }
        self.write(
            &self.device_dir(addr).join("driver/unbind"),
            &addr.to_string(),
        )
    }

    /// Ask the kernel to probe drivers for the device (honours driver_override).
    pub fn drivers_probe(&self, addr: &PciAddress) -> io::Result<()> {
        self.write(&self.path("/sys/bus/pci/drivers_probe"), &addr.to_string())
    }

    /// Rescan the PCI bus (devices removed with `remove` come back).
    pub fn rescan(&self) -> io::Result<()> {
        self.write(&self.path("/sys/bus/pci/rescan"), "1")
    }
}
