use super::*;
use crate::pci::fake::{FakeDevice, FakeSysfs};

fn a(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn ws() -> (tempfile::TempDir, FakeSysfs) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::gpu_workstation(dir.path()).unwrap();
    (dir, fake)
}

fn detect(fake: &FakeSysfs) -> HostCritical {
    HostCritical::detect(&fake.sysfs(), fake.root())
}

#[test]
fn nothing_is_critical_on_a_bare_workstation() {
    let (_d, fake) = ws();
    assert_eq!(detect(&fake), HostCritical::none());
}

#[test]
fn root_disk_through_a_by_uuid_link_and_its_upstream_port() {
    let (_d, fake) = ws();
    fake.add(
        FakeDevice::new("0000:01:00.2", 0x144d, 0xa808, 0x010802)
            .behind("0000:00:01.0")
            .driver("nvme"),
    )
    .unwrap()
    .block_device("nvme0n1", Some("0000:01:00.2"), "259:0")
    .unwrap()
    .partition("nvme0n1", "nvme0n1p2", "259:2")
    .unwrap()
    .dev_link("/dev/disk/by-uuid/1234-abcd", "nvme0n1p2")
    .unwrap()
    .mount("/", "/dev/disk/by-uuid/1234-abcd", "259:2")
    .unwrap()
    .mount("/mnt/my disk", "/dev/nvme0n1p2", "259:2")
    .unwrap();
    let hc = detect(&fake);
    assert_eq!(
        hc.reasons(&a("0000:01:00.2")),
        [
            "backs the mounted filesystem / (/dev/disk/by-uuid/1234-abcd)",
            "backs the mounted filesystem /mnt/my disk (/dev/nvme0n1p2)"
        ]
    );
    assert_eq!(
        hc.reasons(&a("0000:00:01.0"))[0],
        "is upstream of 0000:01:00.2, which backs the mounted filesystem / (/dev/disk/by-uuid/1234-abcd)"
    );
    assert!(!hc.is_critical(&a("0000:01:00.0")));
    assert_eq!(hc.all().len(), 2);
}

#[test]
fn device_mapper_md_swap_and_dev_root() {
    let (_d, fake) = ws();
    fake.add(FakeDevice::new("0000:05:00.0", 0x1b4b, 0x9230, 0x010601).driver("ahci"))
        .unwrap()
        .add(FakeDevice::new("0000:06:00.0", 0x1b4b, 0x9230, 0x010601).driver("ahci"))
        .unwrap()
        .add(FakeDevice::new("0000:07:00.0", 0x1b4b, 0x9230, 0x010601).driver("ahci"))
        .unwrap()
        .block_device("sda", Some("0000:05:00.0"), "8:0")
        .unwrap()
        .partition("sda", "sda1", "8:1")
        .unwrap()
        .block_device("sdb", Some("0000:06:00.0"), "8:16")
        .unwrap()
        .block_device("sdc", Some("0000:07:00.0"), "8:32")
        .unwrap()
        .partition("sdc", "sdc1", "8:33")
        .unwrap()
        // LUKS/LVM on an md RAID1 of sda1 + sdb.
        .stacked_block_device("md0", "9:0", &["sda1", "sdb"], None)
        .unwrap()
        .stacked_block_device("dm-0", "253:0", &["md0"], Some("vg-root"))
        .unwrap()
        .mount("/", "/dev/mapper/vg-root", "253:0")
        .unwrap()
        .mount("/proc", "proc", "0:21")
        .unwrap()
        .proc_file(
            "swaps",
            "Filename\tType\tSize\tUsed\tPriority\n/dev/sdc1   partition\t100\t0\t-2\n/swapfile  file\t100\t0\t-3\n",
        )
        .unwrap();
    let hc = detect(&fake);
    let root = ["backs the mounted filesystem / (/dev/mapper/vg-root)"];
    assert_eq!(hc.reasons(&a("0000:05:00.0")), root);
    assert_eq!(hc.reasons(&a("0000:06:00.0")), root);
    assert_eq!(
        hc.reasons(&a("0000:07:00.0")),
        ["backs the active swap area /dev/sdc1"]
    );
    assert_eq!(hc.all().len(), 3);

    // `/dev/root` names nothing in /dev: the device number finds it.
    let (_d2, fake) = ws();
    fake.add(FakeDevice::new("0000:05:00.0", 0x1af4, 0x1042, 0x018000).driver("virtio-pci"))
        .unwrap()
        .block_device("vda", Some("0000:05:00.0"), "254:0")
        .unwrap()
        .mount("/", "/dev/root", "254:0")
        .unwrap();
    assert!(detect(&fake).is_critical(&a("0000:05:00.0")));
}

#[test]
fn default_routes_through_bridges_and_bonds() {
    let (_d, fake) = ws();
    fake.net_interface("eth0", "0000:02:00.0")
        .unwrap()
        .net_interface("eth1", "0000:03:00.0")
        .unwrap()
        .net_interface("eth2", "0000:03:10.0")
        .unwrap()
        .stacked_net_interface("bond0", &["eth1"], false)
        .unwrap()
        .stacked_net_interface("br0", &["bond0"], true)
        .unwrap()
        .default_route("br0")
        .unwrap()
        .proc_file(
            "net/ipv6_route",
            "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
             00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
             fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth2\n",
        )
        .unwrap();
    let hc = detect(&fake);
    assert_eq!(
        hc.reasons(&a("0000:03:00.0")),
        ["carries the default route (br0 via eth1)"]
    );
    assert_eq!(
        hc.reasons(&a("0000:02:00.0")),
        ["carries the default route (eth0)"]
    );
    assert!(!hc.is_critical(&a("0000:03:10.0")));
    assert!(!hc.is_critical(&a("0000:02:00.1")));
}

#[test]
fn console_rules() {
    let (_d, fake) = ws();
    // Only the dummy console: the boot VGA is free to go.
    fake.add(
        FakeDevice::new("0000:00:02.0", 0x8086, 0xa780, 0x030000)
            .driver("i915")
            .boot_vga(true),
    )
    .unwrap()
    .vtconsole("(S) dummy device", true)
    .unwrap();
    assert!(!detect(&fake).is_critical(&a("0000:00:02.0")));
    // A bound framebuffer console: the boot VGA and every fb / DRM card.
    fake.vtconsole("(M) frame buffer device", true)
        .unwrap()
        .display("graphics", "fb0", "0000:01:00.0")
        .unwrap()
        .display("drm", "card1", "0000:01:00.0")
        .unwrap()
        .display("drm", "card1-HDMI-A-1", "0000:01:00.1")
        .unwrap();
    let hc = detect(&fake);
    assert_eq!(
        hc.reasons(&a("0000:00:02.0")),
        ["drives the active console"]
    );
    assert_eq!(
        hc.reasons(&a("0000:01:00.0")),
        ["drives the active console"]
    );
    assert_eq!(
        hc.reasons(&a("0000:00:01.0")),
        ["is upstream of 0000:01:00.0, which drives the active console"]
    );
    assert!(!hc.is_critical(&a("0000:01:00.1")));
}

#[test]
fn vga_text_console_makes_only_the_boot_vga_critical() {
    let (_d, fake) = ws();
    fake.add(
        FakeDevice::new("0000:00:02.0", 0x8086, 0xa780, 0x030000)
            .driver("i915")
            .boot_vga(true),
    )
    .unwrap()
    .vtconsole("(S) VGA+", true)
    .unwrap()
    .display("graphics", "fb0", "0000:01:00.0")
    .unwrap();
    let hc = detect(&fake);
    assert!(hc.is_critical(&a("0000:00:02.0")));
    assert!(!hc.is_critical(&a("0000:01:00.0")));
}

#[test]
fn helpers() {
    assert_eq!(unescape(r"/mnt/my\040disk\\x\0"), r"/mnt/my disk\\x\0");
    assert_eq!(
        pci_chain(Path::new(
            "/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1"
        )),
        [a("0000:00:1d.0"), a("0000:3d:00.0")]
    );
    assert!(pci_chain(Path::new("/sys/devices/virtual/block/loop0")).is_empty());
}

/// On the real host: something backs `/` (unless / is not on a PCI disk),
/// and the harmless rng of the development VMs is never critical.
#[test]
fn real_host() {
    let sysfs = Sysfs::new("/");
    if !sysfs.devices_dir().is_dir() {
        return;
    }
    let hc = HostCritical::detect(&sysfs, Path::new("/"));
    let rng = a("0000:00:05.0");
    let hex = |n| sysfs.read_hex(&rng, n);
    if hex("vendor") == Some(0x1af4) && hex("device") == Some(0x1044) {
        assert!(!hc.is_critical(&rng), "{:?}", hc.reasons(&rng));
    }
    let root_on_block = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.split(' ').nth(4) == Some("/")
                && l.contains(" - ")
                && l.rsplit(" - ")
                    .next()
                    .unwrap_or("")
                    .split(' ')
                    .nth(1)
                    .is_some_and(|s| s.starts_with("/dev/"))
        });
    let backs_root = hc.all().iter().any(|(_, r)| {
        r.iter()
            .any(|x| x.starts_with("backs the mounted filesystem / ("))
    });
    if root_on_block {
        assert!(backs_root, "{:?}", hc.all());
    }
}
