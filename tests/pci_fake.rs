//! PCI passthrough against a fake sysfs tree (this machine has no IOMMU and
//! no GPU): vapord runs with `--sysfs-root` on a tree built by
//! `vapor::pci::fake` (a GPU + HDMI audio in one IOMMU group behind a root
//! port, a NIC sharing its group with a USB controller on another driver, an
//! SR-IOV PF/VF pair, vfio-pci registered) whose fake kernel reacts to
//! driver_override/unbind/drivers_probe like the real one. The libvirt side
//! (definitions) is real. Its own test binary: its vapord uses the fake root.

#[path = "integration/common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use common::*;
use serde_json::json;
use zbus::{OwnedObjectPath, OwnedVariant, Proxy};

const PCI: &str = "org.vapor.Virtualization.PciDevice";
/// Tests that change the VF's driver take turns.
static VF: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fake {
    root: std::path::PathBuf,
    rom: String,
}

/// The fake tree and a vapord on it (once per binary).
fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let root = std::path::PathBuf::from(format!(
            "{}/pci-fake-{}",
            env!("CARGO_TARGET_TMPDIR"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let tree = vapor::pci::fake::FakeSysfs::gpu_workstation(&root).unwrap();
        let ids = tree.write_pci_ids().unwrap();
        let rom = format!("{}/rtx3080.rom", root.display());
        std::fs::write(&rom, vec![0x55u8, 0xaa, 0, 0]).unwrap();
        let root_s = tree.root().to_string_lossy().into_owned();
        daemon_with(&[
            "--sysfs-root",
            &root_s,
            "--fake-kernel",
            "--pci-ids",
            &ids.to_string_lossy(),
        ]);
        Fake {
            root: tree.root().to_owned(),
            rom,
        }
    })
}

fn pci_path(addr: &str) -> String {
    format!("{ROOT}/pci/{}", addr.replace([':', '.'], "_"))
}

async fn props(conn: &zbus::Connection, addr: &str) -> HashMap<String, OwnedVariant> {
    let p = Proxy::new(
        conn,
        BUS_NAME,
        pci_path(addr),
        "org.freedesktop.DBus.Properties",
    )
    .await
    .unwrap();
    p.call("GetAll", &(PCI,)).await.unwrap()
}

fn s(v: &OwnedVariant) -> String {
    String::try_from(v.clone()).unwrap()
}

fn driver_link(root: &std::path::Path, addr: &str) -> Option<String> {
    std::fs::read_link(root.join(format!("sys/bus/pci/devices/{addr}/driver")))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

async fn check(
    conn: &zbus::Connection,
    addr: &str,
    vm: &str,
    opts: HashMap<&str, zbus::Variant<'_>>,
) -> Vec<(String, String)> {
    let p = Proxy::new(conn, BUS_NAME, pci_path(addr), PCI)
        .await
        .unwrap();
    p.call("CheckAssignment", &(vm, opts)).await.unwrap()
}

#[tokio::test]
async fn fake_devices_are_published_with_groups_drivers_and_names() {
    fake();
    let conn = bus().await;
    let gpu = props(&conn, "0000:01:00.0").await;
    assert_eq!(s(&gpu["Driver"]), "nouveau");
    assert_eq!(i32::try_from(&gpu["IommuGroup"]).unwrap(), 1);
    assert_eq!(
        Vec::<String>::try_from(gpu["IommuGroupMembers"].clone()).unwrap(),
        vec!["0000:01:00.1"]
    );
    assert_eq!(u16::try_from(&gpu["VendorId"]).unwrap(), 0x10de);
    assert!(!s(&gpu["ClassName"]).is_empty());
    let bridge = props(&conn, "0000:00:01.0").await;
    assert!(bool::try_from(&bridge["IsBridge"]).unwrap());
    let vf = props(&conn, "0000:03:10.0").await;
    assert_eq!(s(&vf["PhysicalFunction"]), "0000:03:00.0");
    let pf = props(&conn, "0000:03:00.0").await;
    assert_eq!(u32::try_from(&pf["SriovTotalVfs"]).unwrap(), 4);
}

#[tokio::test]
async fn check_explains_every_reason_a_device_cannot_be_assigned() {
    fake();
    let conn = bus().await;
    let d = TestDomain::define("pcicheck");
    wait_for_object(&conn, &d.path()).await;
    // The audio function alone: the GPU in its group stays on nouveau.
    let problems = check(&conn, "0000:01:00.1", &d.name, HashMap::new()).await;
    assert!(
        problems.iter().any(|(c, m)| c == "group-member-not-viable"
            && m.contains("0000:01:00.0")
            && m.contains("nouveau")),
        "{problems:?}"
    );
    // With the GPU in the same request the group is viable.
    let with: HashMap<&str, zbus::Variant<'_>> = [("with", vec!["0000:01:00.0"].into())].into();
    assert!(check(&conn, "0000:01:00.1", &d.name, with).await.is_empty());
    // The NIC shares its group with a USB controller on xhci_hcd.
    let problems = check(&conn, "0000:02:00.0", &d.name, HashMap::new()).await;
    assert!(
        problems
            .iter()
            .any(|(_, m)| m.contains("0000:02:00.1") && m.contains("xhci_hcd")),
        "{problems:?}"
    );
    // A bridge is never assigned.
    let problems = check(&conn, "0000:00:01.0", &d.name, HashMap::new()).await;
    assert!(problems.iter().any(|(c, _)| c == "bridge"), "{problems:?}");
    // A missing ROM file.
    let rom: HashMap<&str, zbus::Variant<'_>> =
        [("rom_file", "/nonexistent/vbios.rom".into())].into();
    let problems = check(&conn, "0000:03:10.0", &d.name, rom).await;
    assert!(
        problems.iter().any(|(c, _)| c == "rom-file"),
        "{problems:?}"
    );
}

#[tokio::test]
async fn seed_example_with_the_fake_gpu_defines_hostdevs_rom_and_memlock() {
    let f = fake();
    let conn = bus().await;
    let pool = TestPool::new("gpu");
    let name = unique_name("gpu-workstation");
    let spec = json!({
        "name": name,
        "memory": 16384,
        "vcpus": 8,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 100, "path": "system.qcow2"}]},
        "pci_devices": [
            {"host_address": "0000:01:00.0", "rom_file": f.rom, "primary_gpu": true},
            {"host_address": "0000:01:00.1"}
        ],
        "graphics": [{"type": "vnc", "autoport": true, "listen": "0.0.0.0"}],
        "autostart": true
    });
    let m = Proxy::new(&conn, BUS_NAME, ROOT, MANAGER).await.unwrap();
    let path: OwnedObjectPath = m
        .call("CreateVirtualMachine", &(spec.to_string(),))
        .await
        .map_err(error_name)
        .unwrap();
    let xml = virsh(&["dumpxml", "--inactive", &name]);
    let _cleanup = scopeguard(&name);
    assert_eq!(
        xml.matches("<hostdev mode='subsystem' type='pci' managed='yes'>")
            .count(),
        2,
        "{xml}"
    );
    assert!(
        xml.contains("<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>"),
        "{xml}"
    );
    assert!(
        xml.contains("<address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>"),
        "{xml}"
    );
    assert!(xml.contains(&format!("file='{}'", f.rom)), "{xml}");
    assert!(xml.contains("multifunction='on'"), "{xml}");
    // 16 GiB guest, two VFIO devices behind a vIOMMU: 2 × 16 GiB + 1 GiB.
    assert!(
        xml.contains("<hard_limit unit='KiB'>34603008</hard_limit>"),
        "{xml}"
    );
    assert!(xml.contains("<iommu model='intel'>"), "{xml}");
    assert!(
        xml.contains("<model type='none'/>"),
        "primary GPU: no emulated video: {xml}"
    );
    assert_eq!(prop_string(&conn, path.as_str(), "State").await, "shutoff");
    // The GPU now reports the VM in AssignedTo.
    let mut tries = 0;
    loop {
        let gpu = props(&conn, "0000:01:00.0").await;
        let names = Vec::<String>::try_from(gpu["AssignedToNames"].clone()).unwrap();
        if names.contains(&name) {
            break;
        }
        tries += 1;
        assert!(tries < 600, "AssignedTo never listed {name}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A second VM may not have it: in use, naming the first.
    let d = TestDomain::define("pcisecond");
    wait_for_object(&conn, &d.path()).await;
    let problems = check(&conn, "0000:01:00.0", &d.name, HashMap::new()).await;
    assert!(
        problems
            .iter()
            .any(|(c, m)| c == "in-use" && m.contains(&name)),
        "{problems:?}"
    );
    // Validation errors at creation name the field.
    let bad =
        json!({"name": unique_name("badpci"), "pci_devices": [{"host_address": "0000:00:01.0"}]});
    let err = error_name(
        m.call::<_, _, OwnedObjectPath>("CreateVirtualMachine", &(bad.to_string(),))
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("pci_devices[0].host_address") && err.contains("bridge"),
        "{err}"
    );

    // A third device attached later raises the explicit limit: 3 × 16 GiB + 1 GiB.
    let _vf = VF.lock().await;
    let vm = Proxy::new(&conn, BUS_NAME, path.as_str(), VM)
        .await
        .unwrap();
    config_only(&vm, "AttachPciDevice", "0000:03:10.0")
        .await
        .unwrap();
    let xml = virsh(&["dumpxml", "--inactive", &name]);
    assert!(
        xml.contains("<hard_limit unit='KiB'>51380224</hard_limit>"),
        "{xml}"
    );
    config_only(&vm, "DetachPciDevice", "0000:03:10.0")
        .await
        .unwrap();
}

/// Attach or detach a host device in the persistent definition only.
async fn config_only(vm: &Proxy<'_>, method: &str, addr: &str) -> Result<(), String> {
    let opts: HashMap<&str, zbus::Variant<'_>> =
        [("config", true.into()), ("live", false.into())].into();
    vm.call::<_, _, ()>(method, &(addr, opts))
        .await
        .map_err(error_name)
}

struct Undefine(String);
impl Drop for Undefine {
    fn drop(&mut self) {
        virsh_quiet(&["undefine", "--remove-all-storage", &self.0]);
    }
}
fn scopeguard(name: &str) -> Undefine {
    Undefine(name.to_owned())
}

#[tokio::test]
async fn bind_to_vfio_and_restore_round_trip_through_the_fake_kernel() {
    let f = fake();
    let _vf = VF.lock().await;
    let conn = bus().await;
    let p = Proxy::new(&conn, BUS_NAME, pci_path("0000:03:10.0"), PCI)
        .await
        .unwrap();
    let opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let moved: Vec<(String, String)> = p
        .call("BindToVfio", &(opts,))
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(
        moved,
        vec![("0000:03:10.0".to_string(), "ixgbevf".to_string())]
    );
    assert_eq!(
        driver_link(&f.root, "0000:03:10.0").as_deref(),
        Some("vfio-pci")
    );
    let vf = props(&conn, "0000:03:10.0").await;
    assert_eq!(s(&vf["Driver"]), "vfio-pci");
    assert_eq!(s(&vf["OriginalDriver"]), "ixgbevf");
    let driver: String = p
        .call("RestoreDriver", &())
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(driver, "ixgbevf");
    assert_eq!(
        driver_link(&f.root, "0000:03:10.0").as_deref(),
        Some("ixgbevf")
    );
    assert_eq!(s(&props(&conn, "0000:03:10.0").await["OriginalDriver"]), "");
}

#[tokio::test]
async fn pci_assign_needs_an_explicit_rule() {
    let f = fake();
    let _conn = bus().await;
    // Group vapor gets everything but pci-assign; the test rules grant it
    // only for devices on bus 0000:01 (the GPU).
    let call = |user: &str, addr: &str| {
        as_user(
            user,
            &[
                "busctl",
                "--system",
                "call",
                BUS_NAME,
                &pci_path(addr),
                PCI,
                "BindToVfio",
                "a{sv}",
                "0",
            ],
        )
    };
    let out = call(ALICE, "0000:03:00.0");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pci-assign"));
    assert_eq!(
        driver_link(&f.root, "0000:03:00.0").as_deref(),
        Some("ixgbe")
    );
    let out = call(BOB, "0000:01:00.1");
    assert!(!out.status.success());
    let out = call(ALICE, "0000:01:00.1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        driver_link(&f.root, "0000:01:00.1").as_deref(),
        Some("vfio-pci")
    );
    let out = as_user(
        ALICE,
        &[
            "busctl",
            "--system",
            "call",
            BUS_NAME,
            &pci_path("0000:01:00.1"),
            PCI,
            "RestoreDriver",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        driver_link(&f.root, "0000:01:00.1").as_deref(),
        Some("snd_hda_intel")
    );
}

#[tokio::test]
async fn attach_and_detach_change_the_persistent_definition_and_assigned_to() {
    let f = fake();
    let _vf = VF.lock().await;
    let conn = bus().await;
    // Bound to vfio-pci by hand first: released after the detach, it goes
    // back to its own driver by itself.
    let p = Proxy::new(&conn, BUS_NAME, pci_path("0000:03:10.0"), PCI)
        .await
        .unwrap();
    let none: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    p.call::<_, _, Vec<(String, String)>>("BindToVfio", &(none,))
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(
        driver_link(&f.root, "0000:03:10.0").as_deref(),
        Some("vfio-pci")
    );
    let d = TestDomain::define("pciattach");
    wait_for_object(&conn, &d.path()).await;
    let vm = Proxy::new(&conn, BUS_NAME, d.path(), VM).await.unwrap();
    config_only(&vm, "AttachPciDevice", "0000:03:10.0")
        .await
        .unwrap();
    let xml = virsh(&["dumpxml", "--inactive", &d.name]);
    assert!(
        xml.contains("<address domain='0x0000' bus='0x03' slot='0x10' function='0x0'/>"),
        "{xml}"
    );
    // AssignedTo follows the definition.
    let mut tries = 0;
    while !Vec::<String>::try_from(props(&conn, "0000:03:10.0").await["AssignedToNames"].clone())
        .unwrap()
        .contains(&d.name)
    {
        tries += 1;
        assert!(tries < 600, "AssignedTo never listed the VM");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Attaching it again, or a bridge, is refused with the reason.
    let err = config_only(&vm, "AttachPciDevice", "0000:03:10.0")
        .await
        .unwrap_err();
    assert!(err.contains("already assigned"), "{err}");
    let err = config_only(&vm, "AttachPciDevice", "0000:00:01.0")
        .await
        .unwrap_err();
    assert!(err.contains("bridge"), "{err}");
    let err = config_only(&vm, "AttachPciDevice", "0000:01:00:0")
        .await
        .unwrap_err();
    assert!(
        err.contains("InvalidArgument") && err.contains("host_address"),
        "{err}"
    );

    config_only(&vm, "DetachPciDevice", "0000:03:10.0")
        .await
        .unwrap();
    assert!(!virsh(&["dumpxml", "--inactive", &d.name]).contains("bus='0x03' slot='0x10'"));
    let err = config_only(&vm, "DetachPciDevice", "0000:03:10.0")
        .await
        .unwrap_err();
    assert!(
        err.contains("NotFound") && err.contains("not assigned"),
        "{err}"
    );
}

#[tokio::test]
async fn persistent_override_is_reapplied_when_the_device_comes_back() {
    let f = fake();
    let conn = bus().await;
    let p = Proxy::new(&conn, BUS_NAME, pci_path("0000:03:00.0"), PCI)
        .await
        .unwrap();
    let opts: HashMap<&str, zbus::Variant<'_>> = [("persistent", true.into())].into();
    p.call::<_, _, Vec<(String, String)>>("BindToVfio", &(opts,))
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(
        s(&props(&conn, "0000:03:00.0").await["PersistentOverride"]),
        "vfio-pci"
    );
    // The kernel forgets driver_override on remove + rescan; vapord re-applies
    // it when told the device is back (udev add on a real host).
    let sysfs = vapor::pci::Sysfs::with_hook(
        &f.root,
        std::sync::Arc::new(vapor::pci::fake::FakeKernel::new()),
    );
    let addr: vapor::pci::PciAddress = "0000:03:00.0".parse().unwrap();
    sysfs.write_attr(&addr, "remove", "1").unwrap();
    sysfs.rescan().unwrap();
    assert_eq!(
        driver_link(&f.root, "0000:03:00.0").as_deref(),
        Some("ixgbe"),
        "the kernel probed its own driver"
    );
    let store = vapor::pci::vfio::DriverStore::open(state_dir()).unwrap();
    assert!(vapor::pci::vfio::reapply_override(&sysfs, &store, &addr).unwrap());
    assert_eq!(
        driver_link(&f.root, "0000:03:00.0").as_deref(),
        Some("vfio-pci")
    );
    let driver: String = p
        .call("RestoreDriver", &())
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(driver, "ixgbe");
    assert_eq!(
        s(&props(&conn, "0000:03:00.0").await["PersistentOverride"]),
        ""
    );
}
