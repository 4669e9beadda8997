use super::*;
use crate::pci::fake::{FakeDevice, FakeSysfs};

fn a(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn find<'a>(v: &'a [PciDeviceInfo], addr: &str) -> &'a PciDeviceInfo {
    v.iter().find(|d| d.address == a(addr)).unwrap()
}

#[test]
fn scan_of_the_fake_workstation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::gpu_workstation(dir.path()).unwrap();
    let ids = PciIds::load(&fake.write_pci_ids().unwrap()).unwrap();
    let mut critical = HostCritical::none();
    critical.insert(a("0000:02:00.0"), "carries the default route (eth0)");
    let all = scan(&fake.sysfs(), &ids, &critical).unwrap();
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].address < w[1].address));

    let gpu = find(&all, "0000:01:00.0");
    assert_eq!(
        (gpu.vendor_id, gpu.device_id, gpu.class),
        (0x10de, 0x2206, 0x030000)
    );
    assert_eq!(gpu.pci_id(), "10de:2206");
    assert_eq!(gpu.vendor_name, "NVIDIA Corporation");
    assert_eq!(gpu.device_name, "GA102 [GeForce RTX 3080]");
    assert_eq!(gpu.class_name, "VGA compatible controller");
    assert_eq!(
        (gpu.subsystem_vendor_id, gpu.subsystem_device_id),
        (0x10de, 0x2206)
    );
    assert_eq!(gpu.driver.as_deref(), Some("nouveau"));
    assert_eq!(gpu.iommu_group, Some(1));
    assert_eq!(gpu.iommu_group_members, [a("0000:01:00.1")]);
    assert_eq!(gpu.numa_node, Some(0));
    assert_eq!(gpu.reset_methods, ["bus"]);
    assert!(!gpu.is_bridge && !gpu.vfio_variant && !gpu.is_virtual_function());
    assert!(gpu.host_critical.is_empty());

    let port = find(&all, "0000:00:01.0");
    assert!(port.is_bridge);
    assert_eq!(port.driver.as_deref(), Some("pcieport"));
    assert_eq!(port.class_name, "PCI bridge");
    assert!(port.reset_methods.is_empty());
    assert!(port.iommu_group_members.is_empty());

    let nic = find(&all, "0000:02:00.0");
    assert_eq!(nic.iommu_group_members, [a("0000:02:00.1")]);
    assert_eq!(nic.numa_node, None);
    assert_eq!(nic.reset_methods, ["flr", "bus"]);
    assert_eq!(nic.host_critical, ["carries the default route (eth0)"]);

    let usb = find(&all, "0000:02:00.1");
    assert_eq!(usb.class_name, "USB controller");
    assert_eq!(usb.driver.as_deref(), Some("xhci_hcd"));

    let pf = find(&all, "0000:03:00.0");
    assert_eq!((pf.sriov_total_vfs, pf.sriov_num_vfs), (4, 1));
    let vf = find(&all, "0000:03:10.0");
    assert_eq!(vf.physical_function, Some(a("0000:03:00.0")));
    assert_eq!(vf.driver.as_deref(), Some("ixgbevf"));
    assert_eq!(vf.device_name, "82599 Ethernet Controller Virtual Function");
    assert_eq!((vf.sriov_total_vfs, vf.sriov_num_vfs), (0, 0));

    let json = serde_json::to_value(gpu).unwrap();
    assert_eq!(json["address"], "0000:01:00.0");
    assert_eq!(json["iommu_group_members"][0], "0000:01:00.1");
}

#[test]
fn unknown_names_bridges_by_header_and_missing_devices() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    let mut odd = FakeDevice::new_bridge("0000:00:1e.0", 0xabcd, 0x0001);
    odd.class = 0x088000; // a bridge only by its header type
    fake.add(odd).unwrap();
    fake.add(FakeDevice::new("0000:00:02.0", 0xabcd, 0x0002, 0x123456).reset_methods(&[]))
        .unwrap();
    let s = fake.sysfs();
    std::fs::remove_dir(s.device_dir(&a("0000:00:1e.0")).join("pci_bus")).unwrap();
    let (ids, hc) = (PciIds::empty(), HostCritical::none());
    let b = read_device(&s, &ids, &hc, &a("0000:00:1e.0")).unwrap();
    assert!(b.is_bridge);
    assert_eq!(header_type(&s, &b.address), Some(1));
    let d = read_device(&s, &ids, &hc, &a("0000:00:02.0")).unwrap();
    assert!(!d.is_bridge);
    assert_eq!((d.vendor_name.as_str(), d.device_name.as_str()), ("", ""));
    assert_eq!(d.class_name, "Unknown class 0x123456");
    assert_eq!(
        (d.driver.clone(), d.iommu_group, d.reset_methods.len()),
        (None, None, 0)
    );
    assert_eq!(read_device(&s, &ids, &hc, &a("0000:07:00.0")), None);
}

#[test]
fn scan_of_the_real_sysfs() {
    let s = Sysfs::new("/");
    if !s.devices_dir().is_dir() {
        return;
    }
    let ids = PciIds::load_default();
    let all = scan(&s, &ids, &HostCritical::none()).unwrap();
    assert!(!all.is_empty());
    // The rng of the development VMs: found with the IDs its files show.
    let rng_addr = a("0000:00:05.0");
    let raw =
        |n: &str| std::fs::read_to_string(s.device_dir(&rng_addr).join(n)).unwrap_or_default();
    if raw("vendor").trim() == "0x1af4" && raw("device").trim() == "0x1044" {
        let rng = all
            .iter()
            .find(|d| d.address == rng_addr)
            .expect("rng scanned");
        assert_eq!((rng.vendor_id, rng.device_id), (0x1af4, 0x1044));
        assert!(!rng.is_bridge && rng.physical_function.is_none());
        assert!(rng.host_critical.is_empty());
        if !ids.is_empty() {
            assert_eq!(rng.device_name, "Virtio 1.0 RNG");
            assert_eq!(rng.vendor_name, "Red Hat, Inc.");
        }
    }
}
