//! The running VM of the NIC rows of the change table: `vapor-bench-nic`, a
//! transient TCG guest that boots the test guest's kernel and initrd with no
//! disk (its initramfs waits a day for a root device), attached to nothing
//! but the isolated network `vapor-bench-net` the bench creates (no
//! `<forward>`, no `<ip>`). A guest kernel is needed because a PCI unplug
//! completes only when the guest acknowledges it: in a firmware-only VM
//! libvirt gives up after 5 s and the device stays.

use std::path::Path;
use std::time::Instant;

use virt::connect::Connect;
use virt::domain::Domain;

/// The isolated network the NICs are attached to.
pub const NET: &str = "vapor-bench-net";
/// The running VM of the NIC rows (transient).
pub const NIC_VM: &str = "vapor-bench-nic";
/// Copies of the guest kernel and initrd: libvirt relabels these, not the
/// test environment's cache.
const BOOT_DIR: &str = "/var/lib/libvirt/images/vapor-bench-nic";
/// The guest's kernel and initrd, in `--guest-dir` and in `BOOT_DIR`.
const FILES: [&str; 2] = ["vmlinuz", "initrd.img"];
/// VIR_DOMAIN_AFFECT_LIVE.
pub const AFFECT_LIVE: u32 = 1;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A virtio NIC on `NET`, as both services attach it.
pub fn nic_xml(mac: &str) -> String {
    format!(
        "<interface type='network'><mac address='{mac}'/><source network='{NET}'/>\
         <model type='virtio'/><link state='up'/></interface>"
    )
}

/// Whether the live definition has an interface with this MAC.
pub fn has_nic(dom: &Domain, mac: &str) -> Res<bool> {
    Ok(dom
        .xml_desc(0)?
        .contains(&format!("<mac address='{mac}'/>")))
}

/// The NIC VM's XML: TCG (a stock kernel does not run on every KVM here),
/// ACPI for PCI hot-plug, the kernel waiting a day for a root disk it lacks.
fn guest_xml() -> String {
    format!(
        "<domain type='qemu'><name>{NIC_VM}</name><memory unit='MiB'>128</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type>\
         <kernel>{BOOT_DIR}/vmlinuz</kernel><initrd>{BOOT_DIR}/initrd.img</initrd>\
         <cmdline>console=ttyS0 quiet root=/dev/vda rootdelay=86400</cmdline></os>\
         <features><acpi/></features>\
         <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>\
         </cpu><devices><serial type='null'/><memballoon model='none'/></devices></domain>"
    )
}

/// Attaches and detaches probe NICs until one is gone when its detach
/// returns: the guest kernel then answers unplug requests. Each try that
/// is too early costs libvirt's 5 s unplug timeout.
fn wait_unplug_works(dom: &Domain) -> Res<()> {
    for i in 0..20u8 {
        let mac = format!("52:54:00:b7:01:{i:02x}");
        let xml = nic_xml(&mac);
        dom.attach_device_flags(&xml, AFFECT_LIVE)?;
        dom.detach_device_flags(&xml, AFFECT_LIVE)?;
        if !has_nic(dom, &mac)? {
            return Ok(());
        }
    }
    Err(format!("the guest kernel in {NIC_VM} did not complete a NIC unplug in 20 tries").into())
}

/// Creates the isolated network and starts the NIC VM from copies of
/// `guest_dir`'s `vmlinuz` and `initrd.img`; waits until unplug works.
pub fn start(conn: &Connect, guest_dir: &Path) -> Res<Domain> {
    for f in FILES.map(|f| guest_dir.join(f)) {
        if !f.is_file() {
            return Err(format!(
                "no guest kernel: {} is missing (tests/env/guest-image.sh builds it; see --guest-dir)",
                f.display()
            )
            .into());
        }
    }
    cleanup(conn)?;
    std::fs::create_dir_all(BOOT_DIR)?;
    for f in FILES {
        std::fs::copy(guest_dir.join(f), Path::new(BOOT_DIR).join(f))?;
    }
    conn.create_network_xml(&format!("<network><name>{NET}</name></network>"))?;
    let dom = conn.create_domain_xml(&guest_xml(), 0)?;
    let t = Instant::now();
    wait_unplug_works(&dom)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!("{NIC_VM} answers NIC unplugs {secs:.1} s after its start");
    Ok(dom)
}

/// Stops the NIC VM and the network (both transient: that removes them) and
/// removes the kernel copies. Persistent objects of these names are not
/// ours: an error.
pub fn cleanup(conn: &Connect) -> Res<()> {
    if let Ok(d) = conn.lookup_domain_by_name(NIC_VM) {
        if d.is_persistent()? {
            return Err(
                format!("a persistent domain {NIC_VM} exists; it is not the bench's").into(),
            );
        }
        d.destroy()?;
    }
    if let Ok(n) = conn.lookup_network_by_name(NET) {
        if n.is_persistent()? {
            return Err(format!("a persistent network {NET} exists; it is not the bench's").into());
        }
        n.destroy()?;
    }
    for f in FILES {
        let _ = std::fs::remove_file(Path::new(BOOT_DIR).join(f));
    }
    let _ = std::fs::remove_dir(BOOT_DIR);
    Ok(())
}
