use super::*;

fn a(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn req(host: &str) -> HostdevRequest {
    HostdevRequest {
        host: a(host),
        guest: None,
        rom_file: None,
        rom_bar: None,
        multifunction: false,
        primary_gpu: false,
    }
}

fn two_functions(_: &PciAddress) -> usize {
    2
}

fn err_msg(r: Result<Vec<PlannedHostdev>>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn lone_device_without_guest_address_is_left_to_libvirt() {
    let p = plan_hostdevs(&[req("0000:02:00.0")], &two_functions).unwrap();
    assert_eq!(p[0].guest, None);
    assert!(!p[0].multifunction);
    assert_eq!(
        hostdev_xml(&p[0]),
        "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/><source><address domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></source></hostdev>"
    );
}

#[test]
fn gpu_and_audio_share_one_guest_slot_on_bus_0_with_multifunction_on_function_0() {
    let p = plan_hostdevs(&[req("0000:01:00.1"), req("0000:01:00.0")], &two_functions).unwrap();
    assert_eq!(p[0].host, a("0000:01:00.1"), "order kept");
    assert_eq!(p[0].guest, Some(a("0000:00:10.1")));
    assert!(!p[0].multifunction);
    assert_eq!(p[1].guest, Some(a("0000:00:10.0")));
    assert!(p[1].multifunction);
    assert_eq!(
        hostdev_xml(&p[1]),
        "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source><address type='pci' domain='0x0000' bus='0x00' slot='0x10' function='0x0' multifunction='on'/></hostdev>"
    );
}

#[test]
fn planned_slots_skip_explicit_ones_and_each_host_slot_gets_its_own() {
    let mut nic = req("0000:05:00.0");
    nic.guest = Some(a("0000:00:10.0"));
    let p = plan_hostdevs(
        &[
            nic,
            req("0000:01:00.0"),
            req("0000:01:00.1"),
            req("0000:03:00.0"),
            req("0000:03:00.1"),
        ],
        &two_functions,
    )
    .unwrap();
    assert_eq!(p[0].guest, Some(a("0000:00:10.0")));
    assert!(!p[0].multifunction, "alone in its guest slot");
    assert_eq!(p[1].guest, Some(a("0000:00:11.0")));
    assert_eq!(p[2].guest, Some(a("0000:00:11.1")));
    assert_eq!(p[3].guest, Some(a("0000:00:12.0")));
    assert_eq!(p[4].guest, Some(a("0000:00:12.1")));
    assert!(p[1].multifunction && p[3].multifunction);
}

#[test]
fn group_without_host_function_0_is_numbered_from_0() {
    let p = plan_hostdevs(&[req("0000:04:00.3"), req("0000:04:00.2")], &|_| 4).unwrap();
    assert_eq!(p[1].guest, Some(a("0000:00:10.0")));
    assert!(p[1].multifunction);
    assert_eq!(p[0].guest, Some(a("0000:00:10.1")));
}

#[test]
fn requested_multifunction_gets_an_address_to_sit_on() {
    let mut r = req("0000:02:00.0");
    r.multifunction = true;
    let p = plan_hostdevs(&[r], &|_| 1).unwrap();
    assert_eq!(p[0].guest, Some(a("0000:00:10.0")));
    assert!(p[0].multifunction);
}

#[test]
fn explicit_guest_addresses_sharing_a_slot_get_multifunction() {
    let mut g = req("0000:01:00.0");
    g.guest = Some(a("0000:00:05.0"));
    let mut s = req("0000:01:00.1");
    s.guest = Some(a("0000:00:05.1"));
    let p = plan_hostdevs(&[g, s], &two_functions).unwrap();
    assert!(p[0].multifunction);
    assert!(!p[1].multifunction);
}

#[test]
fn explicit_guest_address_errors_name_the_index() {
    let mut x = req("0000:01:00.0");
    x.guest = Some(a("0000:00:05.0"));
    let mut y = req("0000:02:00.0");
    y.guest = Some(a("0000:00:05.0"));
    let m = err_msg(plan_hostdevs(&[x.clone(), y], &two_functions));
    assert_eq!(
        m,
        "pci_devices[1].guest_address: 0000:00:05.0 is already used by pci_devices[0]"
    );

    let mut z = req("0000:02:00.0");
    z.guest = Some(a("0001:00:05.0"));
    let m = err_msg(plan_hostdevs(&[z], &two_functions));
    assert!(
        m.starts_with("pci_devices[0].guest_address: ") && m.contains("0000"),
        "{m}"
    );

    let mut h = req("0000:02:00.0");
    h.guest = Some(a("0000:00:00.0"));
    let m = err_msg(plan_hostdevs(&[h], &two_functions));
    assert!(m.contains("host bridge"), "{m}");

    let mut f1 = req("0000:02:00.0");
    f1.guest = Some(a("0000:00:07.1"));
    let mut f2 = req("0000:03:00.0");
    f2.guest = Some(a("0000:00:07.2"));
    let m = err_msg(plan_hostdevs(&[f1, f2], &two_functions));
    assert!(
        m.starts_with("pci_devices[0].guest_address: ") && m.contains("no function 0"),
        "{m}"
    );
}

#[test]
fn duplicate_hosts_and_relative_rom_files_are_refused() {
    let m = err_msg(plan_hostdevs(
        &[req("0000:01:00.0"), req("0000:01:00.0")],
        &two_functions,
    ));
    assert_eq!(
        m,
        "pci_devices[1].host_address: 0000:01:00.0 is already listed as pci_devices[0]"
    );
    let mut r = req("0000:01:00.0");
    r.rom_file = Some("vbios.rom".into());
    let m = err_msg(plan_hostdevs(&[r], &two_functions));
    assert!(m.starts_with("pci_devices[0].rom_file: "), "{m}");
}

#[test]
fn guest_slot_pool_runs_out_with_a_clear_error() {
    let mut reqs = Vec::new();
    for bus in 1..=11u8 {
        reqs.push(req(&format!("0000:{bus:02x}:00.0")));
        reqs.push(req(&format!("0000:{bus:02x}:00.1")));
    }
    let m = err_msg(plan_hostdevs(&reqs, &two_functions));
    assert!(
        m.starts_with("pci_devices[20].guest_address: no free guest slot"),
        "{m}"
    );
}

#[test]
fn rom_settings_are_written_and_escaped() {
    let h = PlannedHostdev {
        host: a("0000:01:00.0"),
        guest: Some(a("0000:00:10.0")),
        multifunction: false,
        rom_file: Some("/var/lib/vbios/it's<&>.rom".into()),
        rom_bar: Some(false),
        primary_gpu: true,
    };
    assert_eq!(
        hostdev_xml(&h),
        "<hostdev mode='subsystem' type='pci' managed='yes'><driver name='vfio'/><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source><address type='pci' domain='0x0000' bus='0x00' slot='0x10' function='0x0'/><rom bar='off' file='/var/lib/vbios/it&apos;s&lt;&amp;&gt;.rom'/></hostdev>"
    );
    let bar_only = PlannedHostdev {
        rom_file: None,
        rom_bar: Some(true),
        guest: None,
        ..h
    };
    assert!(hostdev_xml(&bar_only).ends_with("</source><rom bar='on'/></hostdev>"));
}

#[test]
fn memlock_follows_libvirt() {
    let four_gib = 4 * 1024 * 1024;
    assert_eq!(memlock_limit_kib(four_gib, 0, true), None);
    assert_eq!(memlock_limit_kib(four_gib, 2, false), Some(5 * 1024 * 1024));
    assert_eq!(memlock_limit_kib(four_gib, 2, true), Some(9 * 1024 * 1024));
    assert_eq!(memlock_limit_kib(four_gib, 1, true), Some(5 * 1024 * 1024));
    assert_eq!(memlock_limit_kib(u64::MAX, 3, true), Some(u64::MAX));
}

#[test]
fn memtune_and_viommu_xml() {
    assert_eq!(
        memtune_xml(5242880),
        "<memtune><hard_limit unit='KiB'>5242880</hard_limit></memtune>"
    );
    assert_eq!(
        iommu_xml(),
        "<iommu model='intel'><driver intremap='on' caching_mode='on'/></iommu>"
    );
    assert_eq!(ioapic_feature_xml(), "<ioapic driver='qemu'/>");
    assert_eq!(NO_VIDEO_XML, "<video><model type='none'/></video>");
}
