//! Ready-made machines and host context in a fake tree — disks, mounts,
//! network interfaces, routes, consoles — for
//! [`HostCritical`](crate::pci::critical::HostCritical).

use std::io;
use std::path::{Path, PathBuf};

use super::{addr, symlink, write, FakeDevice, FakeSysfs};

impl FakeSysfs {
    /// The standard test machine (all in domain 0000):
    ///
    /// | address      | what                          | ids       | class    | driver        | group |
    /// |--------------|-------------------------------|-----------|----------|---------------|-------|
    /// | 0000:00:01.0 | PCIe root port (bridge)       | 8086:7c38 | 0x060400 | pcieport      | 0     |
    /// | 0000:01:00.0 | GPU, behind 00:01.0, NUMA 0   | 10de:2206 | 0x030000 | nouveau       | 1     |
    /// | 0000:01:00.1 | its HDMI audio, NUMA 0        | 10de:1aef | 0x040300 | snd_hda_intel | 1     |
    /// | 0000:02:00.0 | NIC                           | 8086:1533 | 0x020000 | igb           | 2     |
    /// | 0000:02:00.1 | USB controller (same group)   | 1b21:1242 | 0x0c0330 | xhci_hcd      | 2     |
    /// | 0000:03:00.0 | SR-IOV PF, 4 VFs max, 1 on    | 8086:10fb | 0x020000 | ixgbe         | 3     |
    /// | 0000:03:10.0 | its VF (`physfn` → 03:00.0)   | 8086:10ed | 0x020000 | ixgbevf       | 4     |
    ///
    /// Buses 02 and 03 are root buses of their own (`sys/devices/pci0000:02`,
    /// `pci0000:03`) as on multi-root-complex machines, so 00:01.0 is the only
    /// bridge. `reset_method`: `bus` for the GPU, none for the root port,
    /// `flr bus` for the others. The GPU has `boot_vga` 0. `vfio-pci` is
    /// registered; no console, mount or route makes anything host-critical. Names: [`FakeSysfs::write_pci_ids`].
    pub fn gpu_workstation(root: &Path) -> io::Result<FakeSysfs> {
        let f = FakeSysfs::new(root);
        f.add(
            FakeDevice::new_bridge("0000:00:01.0", 0x8086, 0x7c38)
                .driver("pcieport")
                .iommu_group(0),
        )?
        .add(
            FakeDevice::new("0000:01:00.0", 0x10de, 0x2206, 0x030000)
                .behind("0000:00:01.0")
                .driver("nouveau")
                .iommu_group(1)
                .numa_node(0)
                .boot_vga(false)
                .reset_methods(&["bus"]),
        )?
        .add(
            FakeDevice::new("0000:01:00.1", 0x10de, 0x1aef, 0x040300)
                .behind("0000:00:01.0")
                .driver("snd_hda_intel")
                .iommu_group(1)
                .numa_node(0),
        )?
        .add(
            FakeDevice::new("0000:02:00.0", 0x8086, 0x1533, 0x020000)
                .driver("igb")
                .iommu_group(2),
        )?
        .add(
            FakeDevice::new("0000:02:00.1", 0x1b21, 0x1242, 0x0c0330)
                .driver("xhci_hcd")
                .iommu_group(2),
        )?
        .add(
            FakeDevice::new("0000:03:00.0", 0x8086, 0x10fb, 0x020000)
                .driver("ixgbe")
                .iommu_group(3)
                .sriov_pf(4, 1),
        )?
        .add(
            FakeDevice::new("0000:03:10.0", 0x8086, 0x10ed, 0x020000)
                .vf_of("0000:03:00.0")
                .driver("ixgbevf")
                .iommu_group(4),
        )?
        .register_driver("vfio-pci")?;
        Ok(f)
    }

    /// The PCI device's directory, or `sys/devices/virtual` for `None`.
    fn device_path(&self, on: Option<&str>) -> io::Result<PathBuf> {
        match on {
            Some(a) => self
                .tree
                .dev_dir(&addr(a))
                .ok_or_else(|| io::Error::other(format!("fake PCI device {a} does not exist"))),
            None => Ok(self.tree.p("sys/devices/virtual")),
        }
    }

    fn block_links(&self, dir: &Path, name: &str, majmin: &str) -> io::Result<()> {
        write(&dir.join("dev"), format!("{majmin}\n"))?;
        std::fs::create_dir_all(dir.join("slaves"))?;
        symlink(dir, &self.tree.p(&format!("sys/class/block/{name}")))?;
        symlink(dir, &self.tree.p(&format!("sys/dev/block/{majmin}")))?;
        write(&self.tree.p(&format!("dev/{name}")), "")
    }

    /// A disk `name` (`vda`, `nvme0n1`) with device number `majmin`
    /// (`254:0`) on the PCI device `on`, or virtual (`None`): its sysfs
    /// directory, `sys/class/block/<name>`, `sys/dev/block/<majmin>` and a
    /// stand-in `dev/<name>`.
    pub fn block_device(&self, name: &str, on: Option<&str>, majmin: &str) -> io::Result<&Self> {
        let dir = self.device_path(on)?.join(format!("block/{name}"));
        std::fs::create_dir_all(&dir)?;
        self.block_links(&dir, name, majmin)?;
        Ok(self)
    }

    /// Partition `name` of `disk` (which must exist).
    pub fn partition(&self, disk: &str, name: &str, majmin: &str) -> io::Result<&Self> {
        let disk_dir = std::fs::canonicalize(self.tree.p(&format!("sys/class/block/{disk}")))?;
        let dir = disk_dir.join(name);
        let number: String = name
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        let number: String = number.chars().rev().collect();
        write(&dir.join("partition"), format!("{number}\n"))?;
        self.block_links(&dir, name, majmin)?;
        Ok(self)
    }

    /// A virtual block device (`dm-0`, `md0`) over `slaves` (existing block
    /// devices). With `dm_name`: `dm/name` and the `dev/mapper/<dm_name>`
    /// symlink, as udev makes it.
    pub fn stacked_block_device(
        &self,
        name: &str,
        majmin: &str,
        slaves: &[&str],
        dm_name: Option<&str>,
    ) -> io::Result<&Self> {
        self.block_device(name, None, majmin)?;
        let dir = self.tree.p(&format!("sys/devices/virtual/block/{name}"));
        for s in slaves {
            let sdir = std::fs::canonicalize(self.tree.p(&format!("sys/class/block/{s}")))?;
            symlink(&sdir, &dir.join(format!("slaves/{s}")))?;
            symlink(&dir, &sdir.join(format!("holders/{name}")))?;
        }
        if let Some(n) = dm_name {
            write(&dir.join("dm/name"), format!("{n}\n"))?;
            self.dev_link(&format!("/dev/mapper/{n}"), name)?;
        }
        Ok(self)
    }

    /// A symlink in the fake `/dev` (`/dev/disk/by-uuid/1234` → `vda1`).
    pub fn dev_link(&self, link: &str, target_name: &str) -> io::Result<&Self> {
        let link = self.tree.p(link.trim_start_matches('/'));
        symlink(&self.tree.p(&format!("dev/{target_name}")), &link)?;
        Ok(self)
    }

    /// A network interface on the PCI device `on`: `<dev>/net/<name>` and
    /// `sys/class/net/<name>` (with the `device` link, as the kernel has).
    pub fn net_interface(&self, name: &str, on: &str) -> io::Result<&Self> {
        let dev = self.device_path(Some(on))?;
        let dir = dev.join(format!("net/{name}"));
        std::fs::create_dir_all(&dir)?;
        symlink(&dev, &dir.join("device"))?;
        symlink(&dir, &self.tree.p(&format!("sys/class/net/{name}")))?;
        Ok(self)
    }

    /// A virtual interface over existing ones: a bridge (`brif/<port>`) or a
    /// bond / VLAN (`lower_<port>`).
    pub fn stacked_net_interface(
        &self,
        name: &str,
        lower: &[&str],
        bridge: bool,
    ) -> io::Result<&Self> {
        let dir = self.tree.p(&format!("sys/devices/virtual/net/{name}"));
        std::fs::create_dir_all(&dir)?;
        for l in lower {
            let ldir = std::fs::canonicalize(self.tree.p(&format!("sys/class/net/{l}")))?;
            if bridge {
                std::fs::create_dir_all(ldir.join("brport"))?;
                symlink(&ldir.join("brport"), &dir.join(format!("brif/{l}")))?;
            } else {
                symlink(&ldir, &dir.join(format!("lower_{l}")))?;
            }
            symlink(&dir, &ldir.join(format!("upper_{name}")))?;
        }
        symlink(&dir, &self.tree.p(&format!("sys/class/net/{name}")))?;
        Ok(self)
    }

    /// Write `<root>/proc/<rel>` (`self/mountinfo`, `swaps`, `net/route` …).
    pub fn proc_file(&self, rel: &str, content: &str) -> io::Result<&Self> {
        write(&self.tree.p(&format!("proc/{rel}")), content)?;
        Ok(self)
    }

    fn append_proc(&self, rel: &str, header: &str, line: &str) -> io::Result<&Self> {
        let path = self.tree.p(&format!("proc/{rel}"));
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| header.to_owned());
        text.push_str(line);
        text.push('\n');
        write(&path, text)?;
        Ok(self)
    }

    /// Append a `proc/self/mountinfo` line mounting `source` (device number
    /// `majmin`) on `mount_point` as ext4.
    pub fn mount(&self, mount_point: &str, source: &str, majmin: &str) -> io::Result<&Self> {
        let id = 100
            + std::fs::read_to_string(self.tree.p("proc/self/mountinfo"))
                .map(|t| t.lines().count())
                .unwrap_or(0);
        let esc = |s: &str| s.replace(' ', "\\040");
        let line = format!(
            "{id} 1 {majmin} / {} rw,relatime - ext4 {} rw",
            esc(mount_point),
            esc(source)
        );
        self.append_proc("self/mountinfo", "", &line)
    }

    /// Append an IPv4 default route via `ifname` to `proc/net/route`.
    pub fn default_route(&self, ifname: &str) -> io::Result<&Self> {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let line = format!("{ifname}\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0");
        self.append_proc("net/route", header, &line)
    }

    /// A virtual console `vtcon<N>` named `name` (`"(M) frame buffer
    /// device"`, `"(S) VGA+"`, `"(S) dummy device"`), bound or not.
    pub fn vtconsole(&self, name: &str, bound: bool) -> io::Result<&Self> {
        let base = self.tree.p("sys/class/vtconsole");
        let n = (0..)
            .find(|n| !base.join(format!("vtcon{n}")).exists())
            .unwrap_or(0);
        let dir = base.join(format!("vtcon{n}"));
        write(&dir.join("name"), format!("{name}\n"))?;
        write(&dir.join("bind"), format!("{}\n", u8::from(bound)))?;
        Ok(self)
    }

    /// A framebuffer `fb<N>` (or DRM `card<N>`, by `class` = `graphics` /
    /// `drm`) on the PCI device `on`.
    pub fn display(&self, class: &str, name: &str, on: &str) -> io::Result<&Self> {
        let dev = self.device_path(Some(on))?;
        let dir = dev.join(format!("{class}/{name}"));
        std::fs::create_dir_all(&dir)?;
        symlink(&dev, &dir.join("device"))?;
        symlink(&dir, &self.tree.p(&format!("sys/class/{class}/{name}")))?;
        Ok(self)
    }
}
