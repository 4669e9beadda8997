//! The domain XML for a resolved request. Written, never read back: every
//! value is escaped, every element is one libvirt documents
//! (https://libvirt.org/formatdomain.html).

use std::fmt::Write;

pub use crate::libvirt::xml::escape as esc;

use super::resolve::{Resolved, ResolvedDisk};
use crate::libvirt::xml::{METADATA_NS, METADATA_PREFIX};

/// PCIe root ports defined for a new q35 VM: its own devices take some
/// (libvirt puts them there), the rest are free for hotplugged disks and
/// NICs. virt-install defines 14 as well.
pub const HOTPLUG_ROOT_PORTS: usize = 14;

/// Who asked, and the identity the new domain gets.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub uid: u32,
    /// `kvm`, or `qemu` where the host has no usable KVM.
    pub domain_type: &'static str,
    /// Chosen up front so a failed creation can always find what it defined.
    pub uuid: &'a str,
}

/// vapord's own metadata element: template, creator and owned volumes.
pub fn metadata_element(r: &Resolved, uid: u32) -> String {
    let p = METADATA_PREFIX;
    let mut m = format!("<{p}:vm xmlns:{p}='{}'>", esc(METADATA_NS));
    let _ = write!(m, "<{p}:created-by uid='{uid}'/>");
    if let Some(t) = &r.template {
        let _ = write!(m, "<{p}:template name='{}'/>", esc(t));
    }
    if let Some(os) = &r.os_variant {
        let _ = write!(m, "<{p}:os-variant id='{}'/>", esc(os));
    }
    for d in r.disks.iter().filter(|d| d.is_created()) {
        let _ = write!(m, "<{p}:volume path='{}'/>", esc(&d.path));
    }
    if let Some(seed) = &r.cloud_init_seed {
        let _ = write!(m, "<{p}:volume path='{}'/>", esc(&seed.path));
    }
    for (k, v) in &r.metadata {
        let _ = write!(m, "<{p}:custom key='{}'>{}</{p}:custom>", esc(k), esc(v));
    }
    m.push_str(&format!("</{p}:vm>"));
    m
}

fn disk_xml(out: &mut String, d: &ResolvedDisk) {
    let _ = write!(
        out,
        "    <disk type='file' device='{}'>\n      <driver name='qemu' type='{}'/>\n      <source file='{}'/>\n      <target dev='{}' bus='{}'/>\n",
        esc(&d.device),
        esc(&d.format),
        esc(&d.path),
        esc(&d.target),
        esc(&d.bus)
    );
    if d.readonly {
        out.push_str("      <readonly/>\n");
    }
    if let Some(o) = d.boot_order {
        let _ = writeln!(out, "      <boot order='{o}'/>");
    }
    out.push_str("    </disk>\n");
}

fn cpu_xml(mode: &str) -> String {
    match mode {
        "none" => String::new(),
        "host-model" | "host-passthrough" => format!("  <cpu mode='{mode}'/>\n"),
        m => match m.strip_prefix("custom:") {
            Some(model) => format!(
                "  <cpu mode='custom' match='exact' check='none'>\n    <model fallback='allow'>{}</model>\n  </cpu>\n",
                esc(model)
            ),
            None => String::new(),
        },
    }
}

/// The complete `<domain>` document.
pub fn domain_xml(r: &Resolved, origin: Origin<'_>) -> String {
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='{}'>", origin.domain_type);
    let _ = writeln!(x, "  <name>{}</name>", esc(&r.name));
    let _ = writeln!(x, "  <uuid>{}</uuid>", esc(origin.uuid));
    let _ = writeln!(
        x,
        "  <metadata>\n    {}\n  </metadata>",
        metadata_element(r, origin.uid)
    );
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", r.memory_mib);
    let _ = writeln!(
        x,
        "  <currentMemory unit='MiB'>{}</currentMemory>",
        r.memory_mib
    );
    if let Some(pci) = &r.pci {
        let _ = writeln!(
            x,
            "  <memtune>\n    <hard_limit unit='KiB'>{}</hard_limit>\n  </memtune>",
            pci.memlock_kib
        );
    }
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", r.vcpus);
    if r.uefi {
        x.push_str("  <os firmware='efi'>\n");
    } else {
        x.push_str("  <os>\n");
    }
    let _ = writeln!(
        x,
        "    <type arch='x86_64' machine='{}'>hvm</type>",
        esc(&r.machine)
    );
    if r.uefi {
        let sb = if r.secure_boot { "yes" } else { "no" };
        let _ = writeln!(
            x,
            "    <firmware>\n      <feature enabled='{sb}' name='enrolled-keys'/>\n      <feature enabled='{sb}' name='secure-boot'/>\n    </firmware>"
        );
    }
    if let Some(b) = &r.kernel_boot {
        let _ = writeln!(x, "    <kernel>{}</kernel>", esc(&b.kernel));
        if let Some(initrd) = &b.initrd {
            let _ = writeln!(x, "    <initrd>{}</initrd>", esc(initrd));
        }
        if let Some(cmdline) = &b.cmdline {
            let _ = writeln!(x, "    <cmdline>{}</cmdline>", esc(cmdline));
        }
    }
    x.push_str("  </os>\n  <features>\n    <acpi/>\n    <apic/>\n");
    if r.secure_boot {
        x.push_str("    <smm state='on'/>\n");
    }
    if r.pci.as_ref().is_some_and(|p| p.viommu) {
        let _ = writeln!(x, "    {}", crate::pci::hostdev::ioapic_feature_xml());
    }
    x.push_str("  </features>\n");
    x.push_str(&cpu_xml(&r.cpu_mode));
    x.push_str("  <clock offset='utc'/>\n  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  <devices>\n");
    // One virtio-scsi controller for every disk and cdrom on bus scsi
    // (else libvirt would add a controller of its own choosing).
    let scsi = r.disks.iter().any(|d| d.bus == "scsi")
        || r.cloud_init_seed.as_ref().is_some_and(|s| s.bus == "scsi");
    if scsi {
        x.push_str("    <controller type='scsi' index='0' model='virtio-scsi'/>\n");
    }
    // On q35 every hotplugged PCIe device needs an empty root port; libvirt
    // adds ports only for the devices defined (and one more), so ports are
    // defined up front, as virt-install does, for disks and NICs added later.
    if !super::boot::is_i440fx(&r.machine) {
        x.push_str("    <controller type='pci' index='0' model='pcie-root'/>\n");
        for _ in 0..HOTPLUG_ROOT_PORTS {
            x.push_str(
                "    <controller type='pci' model='pcie-root-port'/>
",
            );
        }
    }
    for d in &r.disks {
        disk_xml(&mut x, d);
    }
    if let Some(seed) = &r.cloud_init_seed {
        let _ = write!(
            x,
            "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='{}' bus='{}'/>\n      <readonly/>\n    </disk>\n",
            esc(&seed.path),
            esc(&seed.target),
            esc(&seed.bus)
        );
    }
    for n in &r.networks {
        let (kind, attr) = if n.kind == "bridge" {
            ("bridge", "bridge")
        } else {
            ("network", "network")
        };
        let _ = writeln!(x, "    <interface type='{kind}'>");
        let _ = writeln!(x, "      <source {attr}='{}'/>", esc(&n.source));
        if let Some(mac) = &n.mac {
            let _ = writeln!(x, "      <mac address='{}'/>", esc(mac));
        }
        let _ = writeln!(
            x,
            "      <model type='{}'/>\n    </interface>",
            esc(n.model.as_deref().unwrap_or("virtio"))
        );
    }
    for g in &r.graphics {
        let autoport = g.autoport.unwrap_or(g.port.is_none());
        let _ = write!(
            x,
            "    <graphics type='{}' autoport='{}'",
            esc(&g.kind),
            if autoport { "yes" } else { "no" }
        );
        if let (Some(p), false) = (g.port, autoport) {
            let _ = write!(x, " port='{p}'");
        }
        let listen = g.listen.as_deref().unwrap_or("127.0.0.1");
        let _ = writeln!(
            x,
            ">\n      <listen type='address' address='{}'/>\n    </graphics>",
            esc(listen)
        );
    }
    let primary_gpu = r.pci.as_ref().is_some_and(|p| p.primary_gpu);
    if let Some(pci) = &r.pci {
        for h in &pci.hostdevs {
            let _ = writeln!(x, "    {}", h.xml);
        }
        if pci.viommu {
            let _ = writeln!(x, "    {}", crate::pci::hostdev::iommu_xml());
        }
    }
    if primary_gpu {
        // The passed-through GPU is the display: no emulated video card.
        let _ = writeln!(x, "    {}", crate::pci::hostdev::NO_VIDEO_XML);
        if !r.graphics.is_empty() {
            x.push_str("    <input type='tablet' bus='usb'/>\n");
        }
    } else if !r.graphics.is_empty() {
        let model = if r.graphics.iter().any(|g| g.kind == "spice") {
            "qxl"
        } else {
            "virtio"
        };
        let _ = writeln!(
            x,
            "    <video>\n      <model type='{model}'/>\n    </video>"
        );
        x.push_str("    <input type='tablet' bus='usb'/>\n");
    }
    if r.tpm {
        x.push_str("    <tpm model='tpm-crb'>\n      <backend type='emulator' version='2.0'/>\n    </tpm>\n");
    }
    x.push_str(
        "    <serial type='pty'/>\n    <console type='pty'/>\n    <channel type='unix'>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>\n    </channel>\n    <memballoon model='virtio'/>\n    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n    </rng>\n  </devices>\n</domain>\n",
    );
    x
}
