use super::*;

fn a(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn ws() -> (tempfile::TempDir, FakeSysfs, Sysfs) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::gpu_workstation(dir.path()).unwrap();
    let sysfs = fake.sysfs();
    (dir, fake, sysfs)
}

#[test]
fn workstation_topology_is_laid_out_like_sysfs() {
    let (_d, fake, s) = ws();
    let all: Vec<String> = s
        .list_devices()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    assert_eq!(
        all,
        [
            "0000:00:01.0",
            "0000:01:00.0",
            "0000:01:00.1",
            "0000:02:00.0",
            "0000:02:00.1",
            "0000:03:00.0",
            "0000:03:10.0"
        ]
    );
    let gpu = a("0000:01:00.0");
    assert_eq!(
        std::fs::canonicalize(s.device_dir(&gpu)).unwrap(),
        fake.root()
            .join("sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0")
    );
    assert!(fake
        .root()
        .join("sys/devices/pci0000:00/0000:00:01.0/pci_bus/0000:01")
        .is_dir());
    // Links are relative, as in the real sysfs.
    let l = std::fs::read_link(s.devices_dir().join("0000:01:00.0")).unwrap();
    assert!(l.is_relative(), "{l:?}");
    assert_eq!(s.driver(&gpu).as_deref(), Some("nouveau"));
    assert_eq!(s.iommu_group(&gpu), Some(1));
    assert_eq!(s.iommu_group_members(1), [gpu, a("0000:01:00.1")]);
    assert_eq!(
        s.iommu_group_members(2),
        [a("0000:02:00.0"), a("0000:02:00.1")]
    );
    assert!(s.iommu_enabled());
    assert!(s.driver_registered("vfio-pci"));
    assert_eq!(s.driver_override(&gpu), None);
    assert_eq!(
        s.read_attr(&gpu, "driver_override").as_deref(),
        Some("(null)")
    );
    assert_eq!(s.read_hex(&gpu, "class"), Some(0x030000));
    assert_eq!(s.read_attr(&gpu, "reset_method").as_deref(), Some("bus"));
    let cfg = std::fs::read(s.device_dir(&gpu).join("config")).unwrap();
    assert_eq!((cfg.len(), cfg[0], cfg[1], cfg[0x0e]), (64, 0xde, 0x10, 0));
    let cfg = std::fs::read(s.device_dir(&a("0000:00:01.0")).join("config")).unwrap();
    assert_eq!(cfg[0x0e], 1);
    let ue = s.read_attr(&gpu, "uevent").unwrap();
    assert!(
        ue.contains("DRIVER=nouveau") && ue.contains("PCI_ID=10DE:2206"),
        "{ue}"
    );
    let vf = s.device_dir(&a("0000:03:10.0"));
    assert_eq!(
        std::fs::read_link(vf.join("physfn"))
            .unwrap()
            .file_name()
            .unwrap(),
        "0000:03:00.0"
    );
    let pf = s.device_dir(&a("0000:03:00.0"));
    assert_eq!(
        std::fs::read_link(pf.join("virtfn0"))
            .unwrap()
            .file_name()
            .unwrap(),
        "0000:03:10.0"
    );
    assert!(fake.root().join("dev/vfio/vfio").exists());
    assert!(fake.kernel_log().iter().all(|l| l.starts_with("bind ")));
}

#[test]
fn bind_to_vfio_and_restore_like_the_kernel() {
    let (_d, fake, s) = ws();
    let gpu = a("0000:01:00.0");
    s.write_attr(&gpu, "driver_override", "vfio-pci").unwrap();
    assert_eq!(s.driver_override(&gpu).as_deref(), Some("vfio-pci"));
    // Probing a bound device changes nothing.
    s.drivers_probe(&gpu).unwrap();
    assert_eq!(s.driver(&gpu).as_deref(), Some("nouveau"));
    s.unbind(&gpu).unwrap();
    assert_eq!(s.driver(&gpu), None);
    assert!(!s.read_attr(&gpu, "uevent").unwrap().contains("DRIVER="));
    assert!(!fake
        .root()
        .join("sys/bus/pci/drivers/nouveau/0000:01:00.0")
        .exists());
    s.drivers_probe(&gpu).unwrap();
    assert_eq!(s.driver(&gpu).as_deref(), Some("vfio-pci"));
    assert!(fake.root().join("dev/vfio/1").exists());
    assert!(fake
        .root()
        .join("sys/bus/pci/drivers/vfio-pci/0000:01:00.0")
        .exists());
    // Restore: clear the override with a lone newline, unbind, probe.
    s.write_attr(&gpu, "driver_override", "\n").unwrap();
    assert_eq!(
        s.read_attr(&gpu, "driver_override").as_deref(),
        Some("(null)")
    );
    s.unbind(&gpu).unwrap();
    assert!(!fake.root().join("dev/vfio/1").exists());
    s.drivers_probe(&gpu).unwrap();
    assert_eq!(s.driver(&gpu).as_deref(), Some("nouveau"));
    let log = fake.kernel_log();
    let tail: Vec<&str> = log.iter().rev().take(4).rev().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "unbind 0000:01:00.0 nouveau",
            "bind 0000:01:00.0 vfio-pci",
            "unbind 0000:01:00.0 vfio-pci",
            "bind 0000:01:00.0 nouveau"
        ]
    );
}

#[test]
fn unbind_with_the_wrong_address_fails_and_changes_nothing() {
    let (_d, _fake, s) = ws();
    let gpu = a("0000:01:00.0");
    let err = s
        .write_attr(&gpu, "driver/unbind", "0000:02:00.0")
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    assert_eq!(s.driver(&gpu).as_deref(), Some("nouveau"));
    assert_eq!(s.driver(&a("0000:02:00.0")).as_deref(), Some("igb"));
    // Probing a device that does not exist fails like the kernel.
    assert_eq!(
        s.drivers_probe(&a("0000:09:00.0"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENODEV)
    );
}

#[test]
fn override_to_a_missing_driver_leaves_the_device_unbound() {
    let (_d, fake, s) = ws();
    fake.unregister_driver("vfio-pci").unwrap();
    assert!(!s.driver_registered("vfio-pci"));
    assert!(!fake.root().join("dev/vfio/vfio").exists());
    let nic = a("0000:02:00.0");
    s.write_attr(&nic, "driver_override", "vfio-pci").unwrap();
    s.unbind(&nic).unwrap();
    s.drivers_probe(&nic).unwrap();
    assert_eq!(s.driver(&nic), None);
    // Once the module is loaded, the same probe binds it.
    fake.register_driver("vfio-pci").unwrap();
    s.drivers_probe(&nic).unwrap();
    assert_eq!(s.driver(&nic).as_deref(), Some("vfio-pci"));
    assert!(fake.root().join("dev/vfio/2").exists());
}

#[test]
fn vfio_probe_fails_without_an_iommu_group() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    fake.add(FakeDevice::new("0000:00:05.0", 0x1af4, 0x1044, 0xffff00).driver("virtio-pci"))
        .unwrap()
        .register_driver("vfio-pci")
        .unwrap();
    let s = fake.sysfs();
    let rng = a("0000:00:05.0");
    assert!(!s.iommu_enabled());
    s.write_attr(&rng, "driver_override", "vfio-pci\n").unwrap();
    s.unbind(&rng).unwrap();
    s.drivers_probe(&rng).unwrap();
    assert_eq!(s.driver(&rng), None);
    assert_eq!(
        fake.kernel_log().last().unwrap(),
        "probe-failed 0000:00:05.0 vfio-pci"
    );
}

#[test]
fn variant_drivers_expose_vfio_dev() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    fake.register_vfio_variant_driver("mlx5_vfio_pci").unwrap();
    fake.add(
        FakeDevice::new("0000:04:00.1", 0x15b3, 0x101e, 0x020000)
            .driver("mlx5_core")
            .iommu_group(7),
    )
    .unwrap();
    let s = fake.sysfs();
    let vf = a("0000:04:00.1");
    s.write_attr(&vf, "driver_override", "mlx5_vfio_pci")
        .unwrap();
    s.unbind(&vf).unwrap();
    s.drivers_probe(&vf).unwrap();
    assert_eq!(s.driver(&vf).as_deref(), Some("mlx5_vfio_pci"));
    assert!(s.device_dir(&vf).join("vfio-dev").is_dir());
    assert!(fake.root().join("dev/vfio/7").exists());
}

/// A write the way `Sysfs` does it: the file, then the kernel's reaction.
fn write_raw(s: &Sysfs, rel: &str, value: &str) -> std::io::Result<()> {
    use crate::pci::sysfs::KernelHook;
    let path = s.path(rel);
    std::fs::write(&path, value)?;
    FakeKernel::new().after_write(s, &path, value)
}

#[test]
fn bind_and_new_id_through_the_driver_directory() {
    let (_d, _fake, s) = ws();
    let usb = a("0000:02:00.1");
    s.unbind(&usb).unwrap();
    // bind: only a matching driver may take it.
    let e = write_raw(&s, "/sys/bus/pci/drivers/vfio-pci/bind", "0000:02:00.1").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    assert_eq!(s.driver(&usb), None);
    write_raw(&s, "/sys/bus/pci/drivers/xhci_hcd/bind", "0000:02:00.1").unwrap();
    assert_eq!(s.driver(&usb).as_deref(), Some("xhci_hcd"));
    let e = write_raw(&s, "/sys/bus/pci/drivers/xhci_hcd/bind", "0000:02:00.1").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    // unbind through the driver directory checks the driver.
    let e = write_raw(&s, "/sys/bus/pci/drivers/igb/unbind", "0000:02:00.1").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    write_raw(&s, "/sys/bus/pci/drivers/xhci_hcd/unbind", "0000:02:00.1").unwrap();
    assert_eq!(s.driver(&usb), None);
    // new_id attaches unbound devices with that id.
    write_raw(&s, "/sys/bus/pci/drivers/vfio-pci/new_id", "1b21 1242").unwrap();
    assert_eq!(s.driver(&usb).as_deref(), Some("vfio-pci"));
    assert_eq!(s.driver(&a("0000:02:00.0")).as_deref(), Some("igb"));
}

#[test]
fn remove_and_rescan_bring_devices_back_on_their_drivers() {
    let (_d, fake, s) = ws();
    let gpu = a("0000:01:00.0");
    s.write_attr(&gpu, "driver_override", "vfio-pci").unwrap();
    // Removing the root port removes everything behind it.
    s.write_attr(&a("0000:00:01.0"), "remove", "1").unwrap();
    assert!(!s.exists(&gpu) && !s.exists(&a("0000:01:00.1")) && !s.exists(&a("0000:00:01.0")));
    assert!(s.iommu_group_members(1).is_empty());
    assert!(s.exists(&a("0000:02:00.0")));
    s.rescan().unwrap();
    assert!(s.exists(&gpu));
    // The override died with the device: back on the native driver.
    assert_eq!(s.driver_override(&gpu), None);
    assert_eq!(s.driver(&gpu).as_deref(), Some("nouveau"));
    assert_eq!(s.driver(&a("0000:00:01.0")).as_deref(), Some("pcieport"));
    assert_eq!(s.iommu_group_members(1), [gpu, a("0000:01:00.1")]);
    let log = fake.kernel_log();
    let pos = |l: &str| {
        log.iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("{l} in {log:?}"))
    };
    assert!(pos("remove 0000:01:00.0") < pos("remove 0000:00:01.0"));
    assert!(pos("add 0000:00:01.0") < pos("add 0000:01:00.0"));
    assert!(
        pos("add 0000:01:00.0")
            < log
                .iter()
                .rposition(|x| x == "bind 0000:01:00.0 nouveau")
                .unwrap()
    );
}

#[test]
fn removing_a_pf_takes_its_vfs_and_uevent_writes_are_changes() {
    let (_d, fake, s) = ws();
    let (pf, vf) = (a("0000:03:00.0"), a("0000:03:10.0"));
    s.write_attr(&pf, "remove", "1").unwrap();
    assert!(!s.exists(&pf) && !s.exists(&vf));
    s.rescan().unwrap();
    assert!(s.exists(&pf) && s.exists(&vf));
    assert_eq!(s.driver(&vf).as_deref(), Some("ixgbevf"));
    let pfdir = s.device_dir(&pf);
    assert_eq!(
        std::fs::read_link(pfdir.join("virtfn0"))
            .unwrap()
            .file_name()
            .unwrap(),
        "0000:03:10.0"
    );
    s.write_attr(&vf, "uevent", "change").unwrap();
    assert!(s
        .read_attr(&vf, "uevent")
        .unwrap()
        .contains("PCI_SLOT_NAME=0000:03:10.0"));
    assert_eq!(fake.kernel_log().last().unwrap(), "change 0000:03:10.0");
}

#[test]
fn pci_ids_file_names_the_workstation() {
    let (_d, fake, _s) = ws();
    let ids = crate::pci::ids::PciIds::load(&fake.write_pci_ids().unwrap()).unwrap();
    assert_eq!(
        ids.device_name(0x10de, 0x2206),
        Some("GA102 [GeForce RTX 3080]")
    );
    assert_eq!(ids.class_name(0x060400), "PCI bridge");
}
