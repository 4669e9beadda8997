use super::*;
use crate::pci::fake::{FakeDevice, FakeSysfs};

const GPU: &str = "0000:01:00.0";
const AUDIO: &str = "0000:01:00.1";
const NIC: &str = "0000:02:00.0";
const USB: &str = "0000:02:00.1";
const ROOT_PORT: &str = "0000:00:01.0";

fn a(s: &str) -> PciAddress {
    s.parse().unwrap()
}

struct Host {
    _dir: tempfile::TempDir,
    fake: FakeSysfs,
    sysfs: Sysfs,
    critical: HostCritical,
    state: tempfile::TempDir,
}

impl Host {
    fn workstation() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::gpu_workstation(dir.path()).unwrap();
        Host::from(dir, fake)
    }

    fn from(dir: tempfile::TempDir, fake: FakeSysfs) -> Host {
        let sysfs = fake.sysfs();
        Host {
            _dir: dir,
            fake,
            sysfs,
            critical: HostCritical::none(),
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn check(&self, addr: &str, ctx: &AssignContext) -> Vec<Problem> {
        let ids = PciIds::empty();
        let devices = |x: &PciAddress| inventory::read_device(&self.sysfs, &ids, &self.critical, x);
        check_assignable(&self.sysfs, &devices, &a(addr), ctx)
    }

    fn store(&self) -> DriverStore {
        DriverStore::open(self.state.path()).unwrap()
    }

    fn driver(&self, addr: &str) -> Option<String> {
        self.sysfs.driver(&a(addr))
    }

    fn stored_json(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.state.path().join(DRIVER_STORE_FILE)).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn ctx(vm: &str) -> AssignContext {
    AssignContext {
        vm_name: vm.into(),
        ..Default::default()
    }
}

fn codes(p: &[Problem]) -> Vec<&'static str> {
    p.iter().map(|p| p.code).collect()
}

#[test]
fn gpu_and_audio_assigned_together_are_viable() {
    let h = Host::workstation();
    let mut c = ctx("win11");
    c.also_assigned = vec![a(AUDIO)];
    assert_eq!(h.check(GPU, &c), vec![]);
    c.also_assigned = vec![a(GPU)];
    assert_eq!(h.check(AUDIO, &c), vec![]);
}

#[test]
fn audio_alone_is_refused_because_the_gpu_is_on_nouveau() {
    let h = Host::workstation();
    let p = h.check(AUDIO, &ctx("win11"));
    assert_eq!(codes(&p), ["group-member-not-viable"]);
    assert!(
        p[0].message.contains(GPU) && p[0].message.contains("nouveau"),
        "{}",
        p[0].message
    );
    assert!(p[0].message.contains("IOMMU group 1"), "{}", p[0].message);
}

#[test]
fn nic_is_refused_while_its_group_mate_usb_is_on_xhci() {
    let h = Host::workstation();
    let p = h.check(NIC, &ctx("router"));
    assert_eq!(codes(&p), ["group-member-not-viable"]);
    assert!(
        p[0].message.contains(USB) && p[0].message.contains("xhci_hcd"),
        "{}",
        p[0].message
    );
}

#[test]
fn group_members_unbound_on_pci_stub_vfio_or_a_variant_are_viable() {
    let h = Host::workstation();
    h.sysfs.unbind(&a(USB)).unwrap();
    assert_eq!(h.check(NIC, &ctx("router")), vec![]);
    for drv in ["pci-stub", "vfio-pci", "xhci_vfio_pci"] {
        if drv == "xhci_vfio_pci" {
            h.fake.register_vfio_variant_driver(drv).unwrap();
        } else {
            h.fake.register_driver(drv).unwrap();
        }
        h.sysfs.unbind(&a(USB)).unwrap();
        h.sysfs.write_attr(&a(USB), "driver_override", drv).unwrap();
        h.sysfs.drivers_probe(&a(USB)).unwrap();
        assert_eq!(h.driver(USB).as_deref(), Some(drv));
        assert_eq!(h.check(NIC, &ctx("router")), vec![], "{drv}");
    }
}

#[test]
fn a_bridge_in_the_group_may_stay_on_pcieport() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    fake.add(
        FakeDevice::new_bridge("0000:00:1c.0", 0x8086, 0x7c38)
            .driver("pcieport")
            .iommu_group(7),
    )
    .unwrap()
    .add(
        FakeDevice::new("0000:05:00.0", 0x8086, 0x1533, 0x020000)
            .behind("0000:00:1c.0")
            .driver("igb")
            .iommu_group(7),
    )
    .unwrap()
    .register_driver("vfio-pci")
    .unwrap();
    let h = Host::from(dir, fake);
    assert_eq!(h.check("0000:05:00.0", &ctx("router")), vec![]);
    let p = h.check("0000:00:1c.0", &ctx("router"));
    assert_eq!(codes(&p), ["bridge", "group-member-not-viable"], "{p:?}");
    assert!(p[1].message.contains("0000:05:00.0") && p[1].message.contains("igb"));
}

#[test]
fn bridges_are_refused() {
    let h = Host::workstation();
    let p = h.check(ROOT_PORT, &ctx("vm"));
    assert_eq!(codes(&p), ["bridge"]);
    assert!(p[0].message.contains(ROOT_PORT));
}

#[test]
fn missing_device_is_not_found() {
    let h = Host::workstation();
    let p = h.check("0000:09:00.0", &ctx("vm"));
    assert_eq!(codes(&p), ["not-found"]);
    assert!(p[0].message.contains("0000:09:00.0"));
    assert!(matches!(problems_error(&p), Some(Error::NotFound(_))));
    assert_eq!(problems_error(&[]), None);
}

#[test]
fn iommu_off_says_how_to_turn_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    fake.add(FakeDevice::new(NIC, 0x8086, 0x1533, 0x020000).driver("igb"))
        .unwrap()
        .register_driver("vfio-pci")
        .unwrap();
    let h = Host::from(dir, fake);
    let p = h.check(NIC, &ctx("vm"));
    assert_eq!(codes(&p), ["iommu-off"]);
    assert_eq!(
        p[0].message,
        "the IOMMU is off: boot the host with intel_iommu=on or amd_iommu=on"
    );
    let e = bind_group_to_vfio(&h.sysfs, &h.store(), &a(NIC)).unwrap_err();
    assert_eq!(e, Error::NotSupported(IOMMU_OFF.into()));
    assert_eq!(h.driver(NIC).as_deref(), Some("igb"));
}

/// IOMMU on, one device outside any group; vfio-pci refuses to probe it.
fn host_with_ungrouped_nic() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    fake.add(
        FakeDevice::new(GPU, 0x10de, 0x2206, 0x030000)
            .driver("nouveau")
            .iommu_group(1),
    )
    .unwrap()
    .add(FakeDevice::new(NIC, 0x8086, 0x1533, 0x020000).driver("igb"))
    .unwrap()
    .register_driver("vfio-pci")
    .unwrap();
    Host::from(dir, fake)
}

#[test]
fn device_outside_any_iommu_group_is_refused() {
    let h = host_with_ungrouped_nic();
    assert_eq!(codes(&h.check(NIC, &ctx("vm"))), ["no-iommu-group"]);
}

#[test]
fn without_vfio_pci_nothing_is_unbound() {
    let h = Host::workstation();
    h.fake.unregister_driver("vfio-pci").unwrap();
    let log_before = h.fake.kernel_log();
    let mut c = ctx("win11");
    c.also_assigned = vec![a(AUDIO)];
    let p = h.check(GPU, &c);
    assert_eq!(codes(&p), ["vfio-unavailable"]);
    assert_eq!(p[0].message, VFIO_UNAVAILABLE);

    let store = h.store();
    let e = bind_to_vfio(&h.sysfs, &store, &a(GPU)).unwrap_err();
    assert_eq!(e, Error::NotSupported(VFIO_UNAVAILABLE.into()));
    let e = bind_group_to_vfio(&h.sysfs, &store, &a(GPU)).unwrap_err();
    assert_eq!(e, Error::NotSupported(VFIO_UNAVAILABLE.into()));
    assert_eq!(h.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(
        h.sysfs.read_attr(&a(GPU), "driver_override").as_deref(),
        Some("(null)")
    );
    assert_eq!(h.fake.kernel_log(), log_before);
    assert!(!store.path().exists(), "nothing remembered");
}

#[test]
fn a_loadable_vfio_pci_module_is_not_a_problem_but_a_fake_root_is_never_modprobed() {
    let h = Host::workstation();
    h.fake.unregister_driver("vfio-pci").unwrap();
    let dir = h.fake.root().join("lib/modules/6.1.0-fake");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("modules.dep"),
        "kernel/drivers/vfio/vfio.ko.zst:\nkernel/drivers/vfio/pci/vfio-pci.ko.zst: kernel/drivers/vfio/pci/vfio-pci-core.ko.zst\n",
    )
    .unwrap();
    assert!(vfio_module_available(&h.sysfs));
    let mut c = ctx("win11");
    c.also_assigned = vec![a(AUDIO)];
    assert_eq!(h.check(GPU, &c), vec![]);
    let e = bind_to_vfio(&h.sysfs, &h.store(), &a(GPU)).unwrap_err();
    assert!(matches!(e, Error::NotSupported(_)));
    assert_eq!(h.driver(GPU).as_deref(), Some("nouveau"));
}

#[test]
fn module_lists_are_matched_by_file_name() {
    assert!(names_vfio_pci("kernel/drivers/vfio/pci/vfio-pci.ko"));
    assert!(names_vfio_pci(
        "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/x.ko"
    ));
    assert!(names_vfio_pci("updates/vfio_pci.ko"));
    assert!(!names_vfio_pci(
        "kernel/drivers/vfio/pci/vfio-pci-core.ko.zst:"
    ));
    assert!(!names_vfio_pci(
        "kernel/drivers/vfio/pci/mlx5/mlx5-vfio-pci.ko:"
    ));
}

#[test]
fn in_use_names_the_other_vm_also_for_group_members() {
    let h = Host::workstation();
    let mut c = ctx("linux");
    c.in_use.insert(a(GPU), "win11".into());
    c.also_assigned = vec![a(AUDIO)];
    let p = h.check(GPU, &c);
    assert_eq!(codes(&p), ["in-use"]);
    assert!(p[0].message.contains("'win11'"), "{}", p[0].message);
    assert!(matches!(problems_error(&p), Some(Error::Conflict(_))));

    c.also_assigned.clear();
    let p = h.check(AUDIO, &c);
    assert_eq!(codes(&p), ["in-use", "group-member-not-viable"]);
    assert!(p[0].message.contains(GPU) && p[0].message.contains("'win11'"));

    // The VM's own hostdevs are not "in use".
    let mut own = ctx("win11");
    own.in_use.insert(a(GPU), "win11".into());
    own.also_assigned = vec![a(AUDIO)];
    assert_eq!(h.check(GPU, &own), vec![]);
}

#[test]
fn rom_file_must_be_an_existing_absolute_regular_file() {
    let h = Host::workstation();
    let mut c = ctx("win11");
    c.also_assigned = vec![a(AUDIO)];
    let rom = h.state.path().join("vbios.rom");
    fs::write(&rom, b"\x55\xaa").unwrap();
    for (path, ok, says) in [
        (PathBuf::from("vbios.rom"), false, "absolute"),
        (h.state.path().join("missing.rom"), false, "does not exist"),
        (h.state.path().to_owned(), false, "not a regular file"),
        (rom, true, ""),
    ] {
        c.rom_file = Some(path.clone());
        let p = h.check(GPU, &c);
        if ok {
            assert_eq!(p, vec![], "{path:?}");
        } else {
            assert_eq!(codes(&p), ["rom-file"], "{path:?}");
            assert!(p[0].message.contains(says), "{}", p[0].message);
        }
    }
}

#[test]
fn host_critical_devices_need_force() {
    let mut h = Host::workstation();
    h.critical
        .insert(a(NIC), "carries the default route (eth0)");
    h.sysfs.unbind(&a(USB)).unwrap();
    let mut c = ctx("router");
    let p = h.check(NIC, &c);
    assert_eq!(codes(&p), ["host-critical"]);
    assert!(
        p[0].message.contains("carries the default route (eth0)"),
        "{}",
        p[0].message
    );
    c.force_host_critical = true;
    assert_eq!(h.check(NIC, &c), vec![]);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut h = Host::workstation();
    h.fake.unregister_driver("vfio-pci").unwrap();
    h.critical.insert(a(AUDIO), "is the boot console");
    let mut c = ctx("linux");
    c.in_use.insert(a(AUDIO), "win11".into());
    c.rom_file = Some("rel.rom".into());
    let p = h.check(AUDIO, &c);
    assert_eq!(
        codes(&p),
        [
            "in-use",
            "group-member-not-viable",
            "host-critical",
            "vfio-unavailable",
            "rom-file"
        ]
    );
}

#[test]
fn bind_and_restore_round_trip() {
    let h = Host::workstation();
    let store = h.store();
    let out = bind_to_vfio(&h.sysfs, &store, &a(GPU)).unwrap();
    assert_eq!(
        out,
        BindOutcome {
            address: a(GPU),
            previous_driver: Some("nouveau".into()),
            changed: true
        }
    );
    assert_eq!(h.driver(GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(
        h.sysfs.read_attr(&a(GPU), "driver_override").as_deref(),
        Some("vfio-pci")
    );
    assert_eq!(
        h.stored_json(),
        serde_json::json!({GPU: {"original_driver": "nouveau", "persistent_override": null}})
    );
    assert!(h.fake.root().join("dev/vfio/1").exists());

    // Binding again changes nothing.
    let log = h.fake.kernel_log();
    let again = bind_to_vfio(&h.sysfs, &store, &a(GPU)).unwrap();
    assert!(!again.changed);
    assert_eq!(h.fake.kernel_log(), log);

    assert_eq!(
        restore_driver(&h.sysfs, &store, &a(GPU))
            .unwrap()
            .as_deref(),
        Some("nouveau")
    );
    assert_eq!(h.driver(GPU).as_deref(), Some("nouveau"));
    assert_eq!(
        h.sysfs.read_attr(&a(GPU), "driver_override").as_deref(),
        Some("(null)")
    );
    assert_eq!(store.original_driver(&a(GPU)), None);
    assert_eq!(h.stored_json(), serde_json::json!({}));
    let tail: Vec<String> = h.fake.kernel_log().into_iter().skip(log.len()).collect();
    assert_eq!(
        tail,
        [
            format!("unbind {GPU} vfio-pci"),
            format!("bind {GPU} nouveau")
        ]
    );
}

#[test]
fn the_original_driver_survives_a_restart() {
    let h = Host::workstation();
    bind_to_vfio(&h.sysfs, &h.store(), &a(AUDIO)).unwrap();
    let reopened = h.store();
    assert_eq!(
        reopened.original_driver(&a(AUDIO)).as_deref(),
        Some("snd_hda_intel")
    );
    assert_eq!(
        restore_driver(&h.sysfs, &reopened, &a(AUDIO))
            .unwrap()
            .as_deref(),
        Some("snd_hda_intel")
    );
    assert_eq!(h.store().record(&a(AUDIO)), None);
}

#[test]
fn a_failed_bind_puts_the_device_back() {
    let h = host_with_ungrouped_nic();
    let store = h.store();
    let e = bind_to_vfio(&h.sysfs, &store, &a(NIC)).unwrap_err();
    let Error::Failed(m) = e else { panic!("{e:?}") };
    assert!(
        m.contains("bound to no driver") && m.contains("put back (bound to igb)"),
        "{m}"
    );
    assert_eq!(h.driver(NIC).as_deref(), Some("igb"));
    assert_eq!(
        h.sysfs.read_attr(&a(NIC), "driver_override").as_deref(),
        Some("(null)")
    );
    assert_eq!(store.record(&a(NIC)), None);
}

#[test]
fn restore_reports_a_device_that_did_not_come_back() {
    let h = Host::workstation();
    let store = h.store();
    store.remember_original(&a(AUDIO), "snd_hda_codec").unwrap();
    bind_to_vfio(&h.sysfs, &store, &a(AUDIO)).unwrap();
    let e = restore_driver(&h.sysfs, &store, &a(AUDIO)).unwrap_err();
    assert_eq!(
        e,
        Error::Failed(format!(
            "{AUDIO} did not come back to its driver snd_hda_codec: it is bound to snd_hda_intel"
        ))
    );
    assert_eq!(
        store.original_driver(&a(AUDIO)).as_deref(),
        Some("snd_hda_codec"),
        "kept for a retry"
    );
}

#[test]
fn unbound_device_binds_and_restores_without_a_record() {
    let h = Host::workstation();
    h.sysfs.unbind(&a(USB)).unwrap();
    let store = h.store();
    let out = bind_to_vfio(&h.sysfs, &store, &a(USB)).unwrap();
    assert_eq!(out.previous_driver, None);
    assert_eq!(store.record(&a(USB)), None);
    // Nothing remembered: the kernel picks the device's own driver.
    assert_eq!(
        restore_driver(&h.sysfs, &store, &a(USB))
            .unwrap()
            .as_deref(),
        Some("xhci_hcd")
    );
}

#[test]
fn bind_group_moves_every_endpoint_and_skips_bridges() {
    let h = Host::workstation();
    let store = h.store();
    let out = bind_group_to_vfio(&h.sysfs, &store, &a(AUDIO)).unwrap();
    assert_eq!(
        out.iter().map(|o| o.address).collect::<Vec<_>>(),
        [a(GPU), a(AUDIO)]
    );
    assert_eq!(h.driver(GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(h.driver(AUDIO).as_deref(), Some("vfio-pci"));

    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::new(dir.path());
    fake.add(
        FakeDevice::new_bridge("0000:00:1c.0", 0x8086, 0x7c38)
            .driver("pcieport")
            .iommu_group(7),
    )
    .unwrap()
    .add(
        FakeDevice::new("0000:05:00.0", 0x8086, 0x1533, 0x020000)
            .behind("0000:00:1c.0")
            .driver("igb")
            .iommu_group(7),
    )
    .unwrap()
    .register_driver("vfio-pci")
    .unwrap();
    let h = Host::from(dir, fake);
    let out = bind_group_to_vfio(&h.sysfs, &h.store(), &a("0000:05:00.0")).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(h.driver("0000:00:1c.0").as_deref(), Some("pcieport"));
    assert_eq!(h.driver("0000:05:00.0").as_deref(), Some("vfio-pci"));
}

#[test]
fn missing_device_cannot_be_bound_or_restored() {
    let h = Host::workstation();
    let store = h.store();
    let x = a("0000:09:00.0");
    assert!(matches!(
        bind_to_vfio(&h.sysfs, &store, &x),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        restore_driver(&h.sysfs, &store, &x),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn persistent_override_is_reapplied_after_remove_and_rescan() {
    let h = Host::workstation();
    let store = h.store();
    assert!(
        !reapply_override(&h.sysfs, &store, &a(GPU)).unwrap(),
        "no override yet"
    );
    store.set_persistent_override(&a(GPU), "vfio-pci").unwrap();
    assert!(reapply_override(&h.sysfs, &store, &a(GPU)).unwrap());
    assert_eq!(h.driver(GPU).as_deref(), Some("vfio-pci"));
    assert!(
        !reapply_override(&h.sysfs, &store, &a(GPU)).unwrap(),
        "already there"
    );

    // Hot-unplug and back: the kernel forgets driver_override, the device
    // comes back on nouveau; a restarted vapord puts it on vfio-pci again.
    h.sysfs.write_attr(&a(GPU), "remove", "1").unwrap();
    assert!(!h.sysfs.exists(&a(GPU)));
    h.sysfs.rescan().unwrap();
    assert_eq!(h.driver(GPU).as_deref(), Some("nouveau"));
    drop(store);
    let store = h.store();
    assert_eq!(
        store.persistent_override(&a(GPU)).as_deref(),
        Some("vfio-pci")
    );
    assert!(reapply_override(&h.sysfs, &store, &a(GPU)).unwrap());
    assert_eq!(h.driver(GPU).as_deref(), Some("vfio-pci"));
    assert_eq!(store.original_driver(&a(GPU)).as_deref(), Some("nouveau"));

    assert!(store.clear_persistent_override(&a(GPU)).unwrap());
    assert!(!store.clear_persistent_override(&a(GPU)).unwrap());
    assert!(!reapply_override(&h.sysfs, &store, &a(GPU)).unwrap());
    assert_eq!(
        restore_driver(&h.sysfs, &store, &a(GPU))
            .unwrap()
            .as_deref(),
        Some("nouveau")
    );
    assert_eq!(h.stored_json(), serde_json::json!({}));
}

#[test]
fn override_to_an_unregistered_driver_touches_nothing() {
    let h = Host::workstation();
    let store = h.store();
    store.set_persistent_override(&a(USB), "pci-stub").unwrap();
    let e = reapply_override(&h.sysfs, &store, &a(USB)).unwrap_err();
    assert!(
        matches!(e, Error::NotSupported(ref m) if m.contains("pci-stub")),
        "{e:?}"
    );
    assert_eq!(h.driver(USB).as_deref(), Some("xhci_hcd"));
}

#[test]
fn driver_store_refuses_bad_names_and_corrupt_files() {
    let h = Host::workstation();
    let store = h.store();
    for bad in ["", "../x", "vfio pci", "a\nb", ".."] {
        assert!(
            matches!(
                store.set_persistent_override(&a(GPU), bad),
                Err(Error::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    assert!(!store.path().exists(), "nothing written");
    fs::write(h.state.path().join(DRIVER_STORE_FILE), "{not json").unwrap();
    let e = DriverStore::open(h.state.path()).unwrap_err();
    assert!(
        matches!(e, Error::Failed(ref m) if m.contains(DRIVER_STORE_FILE)),
        "{e:?}"
    );
}

#[test]
fn driver_store_keeps_both_fields_per_device() {
    let h = Host::workstation();
    let store = h.store();
    assert!(store.remember_original(&a(NIC), "igb").unwrap());
    assert!(
        !store.remember_original(&a(NIC), "e1000e").unwrap(),
        "first one wins"
    );
    assert!(!store.remember_original(&a(USB), "vfio-pci").unwrap());
    store.set_persistent_override(&a(NIC), "vfio-pci").unwrap();
    assert_eq!(
        h.stored_json(),
        serde_json::json!({NIC: {"original_driver": "igb", "persistent_override": "vfio-pci"}})
    );
    store.forget_original(&a(NIC)).unwrap();
    assert_eq!(
        DriverStore::open(h.state.path()).unwrap().record(&a(NIC)),
        Some(DriverRecord {
            original_driver: None,
            persistent_override: Some("vfio-pci".into())
        })
    );
    let leftovers: Vec<_> = fs::read_dir(h.state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, [DRIVER_STORE_FILE], "no temp files left behind");
}
