//! VFIO: whether a device can be given to a guest ([`check_assignable`], the
//! one place that decides), and the driverctl/libvirt sysfs sequence that
//! moves a device to `vfio-pci` and back, with the original driver and
//! persistent overrides remembered in a [`DriverStore`] so a restarted vapord
//! can still put things back.
//!
//! Nothing here runs unless asked: `check_assignable` has no side effects, and
//! the bind/restore functions refuse before the first write when they cannot
//! finish (no vfio-pci, no such device). Everything here blocks (sysfs
//! writes, `modprobe`, a short wait for the probe on a real root): call it
//! from `spawn_blocking`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::address::PciAddress;
use super::critical::HostCritical;
use super::ids::PciIds;
use super::inventory::{self, PciDeviceInfo};
use super::sysfs::Sysfs;
use crate::{Error, Result};

pub const VFIO_PCI: &str = "vfio-pci";

/// The message when vfio-pci is neither registered nor loadable.
pub const VFIO_UNAVAILABLE: &str =
    "vfio-pci is not available: the kernel has no vfio-pci driver and the module cannot be loaded";

/// The message when the host has no IOMMU groups at all.
pub const IOMMU_OFF: &str = "the IOMMU is off: boot the host with intel_iommu=on or amd_iommu=on";

/// What else is true while deciding whether one device can go to one VM.
#[derive(Debug, Clone, Default)]
pub struct AssignContext {
    /// The VM that wants the device.
    pub vm_name: String,
    /// Devices referenced by other domains' `<hostdev>` (defined, running or
    /// not) → that domain's name. Entries naming `vm_name` are ignored.
    pub in_use: HashMap<PciAddress, String>,
    /// Assign even if the host seems to need the device.
    pub force_host_critical: bool,
    /// `<rom file=…>` requested for this device.
    pub rom_file: Option<PathBuf>,
    /// The other devices of the same request (libvirt rebinds those too).
    pub also_assigned: Vec<PciAddress>,
}

/// One reason a device cannot be assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `not-found`, `bridge`, `iommu-off`, `no-iommu-group`,
    /// `group-member-not-viable`, `in-use`, `vfio-unavailable`, `rom-file`,
    /// `host-critical`.
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The error for a non-empty list of problems: the first problem's kind, all
/// messages joined. `None` when there are none.
pub fn problems_error(problems: &[Problem]) -> Option<Error> {
    let first = problems.first()?;
    let msg = problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some(match first.code {
        "not-found" => Error::NotFound(msg),
        "in-use" => Error::Conflict(msg),
        "iommu-off" | "vfio-unavailable" | "no-iommu-group" => Error::NotSupported(msg),
        "rom-file" => Error::InvalidArgument(msg),
        _ => Error::InvalidState(msg),
    })
}

/// Every reason `addr` cannot be given to `ctx.vm_name`; empty when it can.
/// Reads only. `devices` looks a device up (normally the inventory).
pub fn check_assignable(
    sysfs: &Sysfs,
    devices: &dyn Fn(&PciAddress) -> Option<PciDeviceInfo>,
    addr: &PciAddress,
    ctx: &AssignContext,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let iommu_on = sysfs.iommu_enabled();
    let in_use_by = |a: &PciAddress| ctx.in_use.get(a).filter(|vm| **vm != ctx.vm_name);

    match devices(addr) {
        None => out.push(Problem::new(
            "not-found",
            format!("PCI device {addr} does not exist on this host"),
        )),
        Some(info) => {
            if info.is_bridge {
                out.push(Problem::new(
                    "bridge",
                    format!("{addr} is a PCI bridge, not an endpoint device; bridges cannot be assigned to a VM"),
                ));
            }
            if let Some(vm) = in_use_by(addr) {
                out.push(Problem::new(
                    "in-use",
                    format!("{addr} is already assigned to VM '{vm}'"),
                ));
            }
            if !iommu_on {
                out.push(Problem::new("iommu-off", IOMMU_OFF));
            } else {
                match info.iommu_group.or_else(|| sysfs.iommu_group(addr)) {
                    None => out.push(Problem::new(
                        "no-iommu-group",
                        format!("{addr} is in no IOMMU group, so it cannot be isolated for a VM"),
                    )),
                    Some(group) => check_group(sysfs, devices, addr, group, ctx, &mut out),
                }
            }
            if !info.host_critical.is_empty() && !ctx.force_host_critical {
                out.push(Problem::new(
                    "host-critical",
                    format!(
                        "{addr} is needed by the host ({}); assign it only with force",
                        info.host_critical.join("; ")
                    ),
                ));
            }
        }
    }

    if !sysfs.driver_registered(VFIO_PCI) && !vfio_module_available(sysfs) {
        out.push(Problem::new("vfio-unavailable", VFIO_UNAVAILABLE));
    }
    if let Some(rom) = &ctx.rom_file {
        if !rom.is_absolute() {
            out.push(Problem::new(
                "rom-file",
                format!("ROM file '{}' must be an absolute path", rom.display()),
            ));
        } else if !fs::metadata(rom).map(|m| m.is_file()).unwrap_or(false) {
            out.push(Problem::new(
                "rom-file",
                format!(
                    "ROM file '{}' does not exist or is not a regular file",
                    rom.display()
                ),
            ));
        }
    }
    out
}

/// The kernel's (≥ 5.19) group viability rule plus "in use", for the other
/// members of `addr`'s group.
fn check_group(
    sysfs: &Sysfs,
    devices: &dyn Fn(&PciAddress) -> Option<PciDeviceInfo>,
    addr: &PciAddress,
    group: u32,
    ctx: &AssignContext,
    out: &mut Vec<Problem>,
) {
    for m in sysfs.iommu_group_members(group) {
        if m == *addr || ctx.also_assigned.contains(&m) {
            continue;
        }
        if let Some(vm) = ctx.in_use.get(&m).filter(|vm| **vm != ctx.vm_name) {
            out.push(Problem::new(
                "in-use",
                format!("{m}, in the same IOMMU group {group} as {addr}, is assigned to VM '{vm}'"),
            ));
        }
        let info = devices(&m);
        let driver = match &info {
            Some(i) => i.driver.clone(),
            None => sysfs.driver(&m),
        };
        let Some(driver) = driver else { continue };
        let variant = info.as_ref().map(|i| i.vfio_variant).unwrap_or(false)
            || sysfs.device_dir(&m).join("vfio-dev").is_dir();
        let bridge = info
            .as_ref()
            .map(|i| i.is_bridge)
            .unwrap_or_else(|| is_bridge(sysfs, &m));
        let viable = driver == VFIO_PCI
            || driver == "pci-stub"
            || variant
            || (bridge && driver == "pcieport");
        if !viable {
            out.push(Problem::new(
                "group-member-not-viable",
                format!(
                    "{m} (driver {driver}) shares IOMMU group {group} with {addr}: assign it to the VM too, or unbind it from {driver}"
                ),
            ));
        }
    }
}

/// Bridges are never assigned; the inventory's rule decides what one is.
fn is_bridge(sysfs: &Sysfs, addr: &PciAddress) -> bool {
    inventory::read_device(sysfs, &PciIds::empty(), &HostCritical::none(), addr)
        .is_some_and(|i| i.is_bridge)
}

/// Whether `modprobe vfio-pci` could work: the module is listed in
/// `<root>/lib/modules/<release>/modules.dep` or `modules.builtin`. On a fake
/// root every release directory there counts.
pub fn vfio_module_available(sysfs: &Sysfs) -> bool {
    let mut dirs = Vec::new();
    for base in ["/lib/modules", "/usr/lib/modules"] {
        let base = sysfs.path(base);
        if let Some(r) = kernel_release() {
            dirs.push(base.join(r));
        }
        if sysfs.root() != Path::new("/") {
            if let Ok(rd) = fs::read_dir(&base) {
                dirs.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
    }
    dirs.iter().any(|d| {
        ["modules.dep", "modules.builtin"].iter().any(|f| {
            fs::read_to_string(d.join(f))
                .map(|t| t.lines().any(names_vfio_pci))
                .unwrap_or(false)
        })
    })
}

/// `kernel/drivers/vfio/pci/vfio-pci.ko.zst: …` → true.
fn names_vfio_pci(line: &str) -> bool {
    let module = line.split(':').next().unwrap_or("").trim();
    let file = module.rsplit('/').next().unwrap_or("");
    file.starts_with("vfio-pci.ko") || file.starts_with("vfio_pci.ko")
}

fn kernel_release() -> Option<String> {
    // SAFETY: uname fills the zeroed struct; the release is NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return None;
        }
        let r = std::ffi::CStr::from_ptr(u.release.as_ptr());
        Some(r.to_string_lossy().into_owned())
    }
}

/// Make sure `driver` is registered: on the real root try `modprobe`; on a
/// fake root only look. Refuses with NotSupported (before any write).
fn ensure_driver(sysfs: &Sysfs, driver: &str) -> Result<()> {
    if sysfs.driver_registered(driver) {
        return Ok(());
    }
    if sysfs.root() == Path::new("/") {
        let modprobe = [
            "/usr/sbin/modprobe",
            "/sbin/modprobe",
            "/usr/bin/modprobe",
            "/bin/modprobe",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists());
        if let Some(mp) = modprobe {
            let mut cmd = std::process::Command::new(mp);
            cmd.arg(driver);
            let what = format!("loading the kernel module {driver}");
            let ok = match crate::process::run(cmd, Duration::from_secs(30), &what) {
                Ok(out) => out.status.success(),
                Err(e) => {
                    log::warn!("{e}");
                    false
                }
            };
            if ok && sysfs.driver_registered(driver) {
                return Ok(());
            }
        }
    }
    Err(Error::NotSupported(if driver == VFIO_PCI {
        VFIO_UNAVAILABLE.to_owned()
    } else {
        format!("the PCI driver {driver} is not available: it is not registered and its module cannot be loaded")
    }))
}

/// Wait (real root only, briefly) for the kernel to finish probing.
fn driver_after_probe(sysfs: &Sysfs, addr: &PciAddress, want: Option<&str>) -> Option<String> {
    let mut now = sysfs.driver(addr);
    if sysfs.root() == Path::new("/") {
        for _ in 0..20 {
            if now.as_deref() == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            now = sysfs.driver(addr);
        }
    }
    now
}

fn describe(driver: &Option<String>) -> String {
    match driver {
        Some(d) => format!("bound to {d}"),
        None => "bound to no driver".to_owned(),
    }
}

fn io_err(addr: &PciAddress, what: &str, e: io::Error) -> Error {
    Error::Failed(format!("{addr}: {what} failed: {e}"))
}

/// What [`bind_to_vfio`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindOutcome {
    pub address: PciAddress,
    /// The driver before (None: unbound).
    pub previous_driver: Option<String>,
    /// False when the device was already on vfio-pci (nothing written).
    pub changed: bool,
}

/// Move `addr` to vfio-pci: `driver_override`, unbind, `drivers_probe`,
/// verify. The original driver is remembered in `store` first; on failure it
/// is put back and the error says what happened.
pub fn bind_to_vfio(sysfs: &Sysfs, store: &DriverStore, addr: &PciAddress) -> Result<BindOutcome> {
    if !sysfs.exists(addr) {
        return Err(Error::NotFound(format!(
            "PCI device {addr} does not exist on this host"
        )));
    }
    ensure_driver(sysfs, VFIO_PCI)?;
    let previous = sysfs.driver(addr);
    if previous.as_deref() == Some(VFIO_PCI) {
        return Ok(BindOutcome {
            address: *addr,
            previous_driver: previous,
            changed: false,
        });
    }
    let recorded_here = match &previous {
        Some(d) => store.remember_original(addr, d)?,
        None => false,
    };
    let attempt = (|| -> io::Result<()> {
        sysfs.write_attr(addr, "driver_override", VFIO_PCI)?;
        sysfs.unbind(addr)?;
        sysfs.drivers_probe(addr)
    })();
    let now = driver_after_probe(sysfs, addr, Some(VFIO_PCI));
    if attempt.is_ok() && now.as_deref() == Some(VFIO_PCI) {
        return Ok(BindOutcome {
            address: *addr,
            previous_driver: previous,
            changed: true,
        });
    }
    // Put it back the way it was.
    let what = match &attempt {
        Err(e) => format!("a sysfs write failed ({e})"),
        Ok(()) => format!("after drivers_probe it is {}", describe(&now)),
    };
    let rollback = (|| -> io::Result<()> {
        sysfs.write_attr(addr, "driver_override", "\n")?;
        if sysfs.driver(addr).as_deref() == Some(VFIO_PCI) {
            sysfs.unbind(addr)?;
        }
        if previous.is_some() && sysfs.driver(addr).is_none() {
            sysfs.drivers_probe(addr)?;
        }
        Ok(())
    })();
    let back = driver_after_probe(sysfs, addr, previous.as_deref());
    let restored = match (&rollback, back == previous) {
        (Ok(()), true) => {
            if recorded_here {
                store.forget_original(addr)?;
            }
            format!("it was put back ({})", describe(&back))
        }
        (Err(e), _) => format!(
            "putting it back failed too ({e}); it is {}",
            describe(&back)
        ),
        (Ok(()), false) => format!(
            "putting it back failed too: it is {}, it was {}",
            describe(&back),
            describe(&previous)
        ),
    };
    Err(Error::Failed(format!(
        "{addr}: binding to vfio-pci failed: {what}; {restored}"
    )))
}

/// Bind every member of `addr`'s IOMMU group (bridges skipped) to vfio-pci.
/// If one fails, those bound by this call are restored. Validate with
/// [`check_assignable`] first: this does not look at host-critical devices.
pub fn bind_group_to_vfio(
    sysfs: &Sysfs,
    store: &DriverStore,
    addr: &PciAddress,
) -> Result<Vec<BindOutcome>> {
    if !sysfs.exists(addr) {
        return Err(Error::NotFound(format!(
            "PCI device {addr} does not exist on this host"
        )));
    }
    if !sysfs.iommu_enabled() {
        return Err(Error::NotSupported(IOMMU_OFF.to_owned()));
    }
    let group = sysfs.iommu_group(addr).ok_or_else(|| {
        Error::NotSupported(format!(
            "{addr} is in no IOMMU group, so it cannot be isolated for a VM"
        ))
    })?;
    ensure_driver(sysfs, VFIO_PCI)?;
    let mut done = Vec::new();
    for m in sysfs.iommu_group_members(group) {
        if is_bridge(sysfs, &m) {
            continue;
        }
        match bind_to_vfio(sysfs, store, &m) {
            Ok(o) => done.push(o),
            Err(e) => {
                let mut undone = Vec::new();
                for o in done.iter().rev().filter(|o| o.changed) {
                    if let Err(re) = restore_driver(sysfs, store, &o.address) {
                        undone.push(format!("{}: {re}", o.address));
                    }
                }
                return Err(if undone.is_empty() {
                    e
                } else {
                    Error::Failed(format!(
                        "{e}; restoring the rest of the group failed: {}",
                        undone.join("; ")
                    ))
                });
            }
        }
    }
    Ok(done)
}

/// Give `addr` back to its own driver: clear `driver_override`, unbind from
/// vfio-pci, `drivers_probe`, verify it is on the remembered driver (if one
/// was remembered), forget it. Returns the driver bound now.
pub fn restore_driver(
    sysfs: &Sysfs,
    store: &DriverStore,
    addr: &PciAddress,
) -> Result<Option<String>> {
    if !sysfs.exists(addr) {
        return Err(Error::NotFound(format!(
            "PCI device {addr} does not exist on this host"
        )));
    }
    let remembered = store.original_driver(addr);
    sysfs
        .write_attr(addr, "driver_override", "\n")
        .map_err(|e| io_err(addr, "clearing driver_override", e))?;
    if sysfs.driver(addr).as_deref() == Some(VFIO_PCI) {
        sysfs
            .unbind(addr)
            .map_err(|e| io_err(addr, "unbinding from vfio-pci", e))?;
    }
    if sysfs.driver(addr).is_none() {
        sysfs
            .drivers_probe(addr)
            .map_err(|e| io_err(addr, "drivers_probe", e))?;
    }
    let now = driver_after_probe(sysfs, addr, remembered.as_deref());
    if let Some(want) = &remembered {
        if now.as_deref() != Some(want.as_str()) {
            return Err(Error::Failed(format!(
                "{addr} did not come back to its driver {want}: it is {}",
                describe(&now)
            )));
        }
        store.forget_original(addr)?;
    }
    Ok(now)
}

/// driverctl on device (re)appearance: if a persistent override exists and the
/// device is not on that driver, bind it there. True when something changed.
pub fn reapply_override(sysfs: &Sysfs, store: &DriverStore, addr: &PciAddress) -> Result<bool> {
    let Some(want) = store.persistent_override(addr) else {
        return Ok(false);
    };
    if !sysfs.exists(addr) {
        return Err(Error::NotFound(format!(
            "PCI device {addr} does not exist on this host"
        )));
    }
    let current = sysfs.driver(addr);
    if current.as_deref() == Some(want.as_str()) {
        return Ok(false);
    }
    ensure_driver(sysfs, &want)?;
    if let Some(d) = &current {
        store.remember_original(addr, d)?;
    }
    (|| -> io::Result<()> {
        sysfs.write_attr(addr, "driver_override", &want)?;
        sysfs.unbind(addr)?;
        sysfs.drivers_probe(addr)
    })()
    .map_err(|e| io_err(addr, &format!("applying the persistent override {want}"), e))?;
    let now = driver_after_probe(sysfs, addr, Some(&want));
    if now.as_deref() != Some(want.as_str()) {
        return Err(Error::Failed(format!(
            "{addr}: the persistent override {want} did not take: it is {}",
            describe(&now)
        )));
    }
    Ok(true)
}

#[path = "vfio_store.rs"]
mod store;
pub use store::{DriverRecord, DriverStore, DRIVER_STORE_FILE};

#[cfg(test)]
#[path = "vfio_tests.rs"]
mod tests;
