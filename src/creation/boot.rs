//! How a new guest starts, purely: the domain type its accelerator asks for,
//! the bus its cdroms sit on, and direct kernel boot (`<kernel>`,
//! `<initrd>`, `<cmdline>`) with the kernel and initrd judged like any other
//! file the guest is given.

use serde::Serialize;

use super::resolve::{resolve_path, StorageView};
use super::spec::{Accel, BootSpec};
use crate::text::{self, TextRule};
use crate::{Error, Result};

/// Longest accepted kernel command line, in bytes.
pub const MAX_CMDLINE_BYTES: usize = 4096;

fn invalid(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{field}: {msg}"))
}

/// Whether `machine` is an i440fx (`pc`) machine.
pub fn is_i440fx(machine: &str) -> bool {
    machine == "pc" || machine.starts_with("pc-i440fx")
}

/// The `<domain type>` for `accel` on a host that does or does not offer
/// KVM: `auto` takes KVM where there is one, `tcg` never does, and `kvm`
/// without it is refused naming `accel`.
pub fn domain_type(accel: Accel, host_offers_kvm: bool) -> Result<&'static str> {
    match (accel, host_offers_kvm) {
        (Accel::Auto, true) | (Accel::Kvm, true) => Ok("kvm"),
        (Accel::Auto, false) | (Accel::Tcg, _) => Ok("qemu"),
        (Accel::Kvm, false) => Err(invalid(
            "accel",
            "this host does not offer KVM (use tcg or auto)",
        )),
    }
}

/// The default bus for a cdrom: IDE on i440fx (which has no AHCI), SATA on
/// q35 for Windows (which has no virtio-scsi driver of its own), else
/// virtio-scsi (Linux cloud kernels, Debian's included, have no AHCI
/// driver, so a seed or ISO on SATA would be invisible to them).
pub fn default_cdrom_bus(machine: &str, os_variant: Option<&str>) -> &'static str {
    if is_i440fx(machine) {
        "ide"
    } else if os_variant.is_some_and(|os| os.starts_with("win")) {
        "sata"
    } else {
        "scsi"
    }
}

/// The bus for cdroms that name none: `configured` (`storage.cdrom_bus`)
/// checked against the machine, else [`default_cdrom_bus`].
pub fn cdrom_bus(
    machine: &str,
    os_variant: Option<&str>,
    configured: Option<&str>,
) -> Result<&'static str> {
    let field = "storage.cdrom_bus";
    let Some(bus) = configured else {
        return Ok(default_cdrom_bus(machine, os_variant));
    };
    let bus = match bus {
        "ide" => "ide",
        "sata" => "sata",
        "scsi" => "scsi",
        "usb" => "usb",
        _ => return Err(invalid(field, "must be one of ide, sata, scsi, usb")),
    };
    if bus == "ide" && !is_i440fx(machine) {
        return Err(invalid(
            field,
            format!("machine {machine} has no IDE controller (use scsi or sata)"),
        ));
    }
    Ok(bus)
}

/// Direct kernel boot as it will be written: absolute, resolved paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedBoot {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

impl ResolvedBoot {
    /// The host files the guest reads (kernel, then initrd).
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &str)> {
        std::iter::once(("boot.kernel", self.kernel.as_str()))
            .chain(self.initrd.as_deref().map(|i| ("boot.initrd", i)))
    }
}

/// One existing file: the path rules of an attached disk (absolute, or a
/// plain name in `default_pool`), symlinks resolved.
fn boot_file(
    view: &dyn StorageView,
    field: &str,
    path: &str,
    default_pool: Option<&str>,
) -> Result<String> {
    let (abs, _) = resolve_path(view, field, path, default_pool)?;
    if view.volume(&abs).is_none() && !view.path_exists(&abs) {
        return Err(Error::NotFound(format!("{field}: {abs} does not exist")));
    }
    Ok(abs)
}

/// Resolve `boot`: the kernel and initrd must exist (where they land decides
/// their authorization, as for attached disks: see `Resolved::pools_read`
/// and `host_paths`); the command line is one line of at most 4 KiB.
pub fn resolve_boot(
    view: &dyn StorageView,
    boot: &BootSpec,
    default_pool: Option<&str>,
) -> Result<ResolvedBoot> {
    let kernel = boot_file(view, "boot.kernel", &boot.kernel, default_pool)?;
    let initrd = boot
        .initrd
        .as_deref()
        .map(|p| boot_file(view, "boot.initrd", p, default_pool))
        .transpose()?;
    if let Some(c) = &boot.cmdline {
        text::check(
            "boot.cmdline",
            c,
            TextRule {
                max_bytes: MAX_CMDLINE_BYTES,
                ..TextRule::LINE
            },
        )?;
    }
    Ok(ResolvedBoot {
        kernel,
        initrd,
        cmdline: boot.cmdline.clone(),
    })
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
