//! A fake sysfs tree for tests, modelled on libvirt's `tests/virpcimock.c`:
//! a directory laid out like `/sys` (and the bits of `/dev` and `/proc` the
//! daemon reads), plus [`FakeKernel`], a [`KernelHook`](super::sysfs::KernelHook)
//! that reacts to writes the way the kernel does.
//!
//! Layout under the root:
//! - `sys/devices/pci<DDDD>:<BB>/[<bridge>/]<addr>/` with `vendor`, `device`,
//!   `class`, `subsystem_vendor`, `subsystem_device`, `numa_node`,
//!   `driver_override` (`(null)` when unset, like the kernel), `config` (64
//!   bytes), `reset_method`, `uevent`, `remove`, and as configured `driver`,
//!   `iommu_group`, `pci_bus/`, `sriov_totalvfs`/`sriov_numvfs`/`virtfnN`,
//!   `physfn`, `boot_vga`; `sys/bus/pci/devices/<addr>` links to it;
//! - `sys/bus/pci/drivers/<drv>/` with `bind`, `unbind`, `new_id`,
//!   `remove_id` and a link per bound device; `sys/bus/pci/drivers_probe`,
//!   `sys/bus/pci/rescan`;
//! - `sys/kernel/iommu_groups/<N>/devices/<addr>`; `dev/vfio/<N>` while a
//!   member is bound to a vfio driver (`dev/vfio/vfio` once vfio-pci exists);
//! - `fake-kernel/`: the fake's own state (device specs, removed devices,
//!   `new_id`s, vfio variant drivers, and `log`, one line per kernel action:
//!   `bind <addr> <drv>`, `unbind …`, `remove <addr>`, `add <addr>`,
//!   `change <addr>`, `probe-failed <addr> <drv>`). The state lives on disk,
//!   so [`FakeKernel`] is stateless and any process can drive the tree.
//!
//! Host context for [`HostCritical`](super::critical::HostCritical):
//! [`FakeSysfs::block_device`], [`FakeSysfs::net_interface`],
//! [`FakeSysfs::proc_file`], [`FakeSysfs::vtconsole`] …

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::address::PciAddress;
use super::sysfs::Sysfs;

#[path = "fake_kernel.rs"]
mod kernel;
pub use kernel::FakeKernel;

/// A small pci.ids covering [`FakeSysfs::gpu_workstation`] (see
/// [`FakeSysfs::write_pci_ids`]).
pub const FAKE_PCI_IDS: &str = "\
10de  NVIDIA Corporation
\t1aef  GA102 High Definition Audio Controller
\t2206  GA102 [GeForce RTX 3080]
1b21  ASMedia Technology Inc.
\t1242  ASM1142 USB 3.1 Host Controller
8086  Intel Corporation
\t10ed  82599 Ethernet Controller Virtual Function
\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection
\t1533  I210 Gigabit Network Connection
\t7c38  Z790 PCIe Root Port
C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
C 04  Multimedia controller
\t03  Audio device
C 06  Bridge
\t04  PCI bridge
C 0c  Serial bus controller
\t03  USB controller
";

/// One fake PCI function; a builder, and the spec the fake kernel keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeDevice {
    pub address: PciAddress,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    /// -1 = no NUMA information (the file then reads `-1`, as on the kernel).
    pub numa_node: i32,
    /// The bridge this device sits behind (its directory nests under it).
    pub parent: Option<PciAddress>,
    /// The device's own driver: bound at creation (unless
    /// `start_unbound`) and by `drivers_probe` when no override is set.
    pub native_driver: Option<String>,
    pub start_unbound: bool,
    pub iommu_group: Option<u32>,
    pub bridge: bool,
    pub sriov_total_vfs: Option<u32>,
    pub sriov_num_vfs: u32,
    pub physfn: Option<PciAddress>,
    /// Empty = no `reset_method` file.
    pub reset_methods: Vec<String>,
    pub boot_vga: Option<bool>,
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap_or_else(|e| panic!("fake PCI device: {e}"))
}

impl FakeDevice {
    /// An endpoint at `address` (panics on a malformed address — test input).
    pub fn new(address: &str, vendor: u16, device: u16, class: u32) -> Self {
        FakeDevice {
            address: addr(address),
            vendor,
            device,
            class,
            subsystem_vendor: vendor,
            subsystem_device: device,
            numa_node: -1,
            parent: None,
            native_driver: None,
            start_unbound: false,
            iommu_group: None,
            bridge: false,
            sriov_total_vfs: None,
            sriov_num_vfs: 0,
            physfn: None,
            reset_methods: vec!["flr".into(), "bus".into()],
            boot_vga: None,
        }
    }

    /// A PCI bridge / root port: class 0x060400, header type 1, `pci_bus/`.
    pub fn new_bridge(address: &str, vendor: u16, device: u16) -> Self {
        let mut d = Self::new(address, vendor, device, 0x060400);
        d.bridge = true;
        d.reset_methods = vec![];
        d
    }

    pub fn behind(mut self, bridge: &str) -> Self {
        self.parent = Some(addr(bridge));
        self
    }

    /// The native driver, bound at creation.
    pub fn driver(mut self, name: &str) -> Self {
        self.native_driver = Some(name.into());
        self
    }

    /// Keep the device unbound at creation (the native driver still applies
    /// to a later `drivers_probe`).
    pub fn unbound(mut self) -> Self {
        self.start_unbound = true;
        self
    }

    pub fn iommu_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    pub fn subsystem(mut self, vendor: u16, device: u16) -> Self {
        (self.subsystem_vendor, self.subsystem_device) = (vendor, device);
        self
    }

    pub fn numa_node(mut self, node: i32) -> Self {
        self.numa_node = node;
        self
    }

    /// An SR-IOV physical function.
    pub fn sriov_pf(mut self, total_vfs: u32, num_vfs: u32) -> Self {
        (self.sriov_total_vfs, self.sriov_num_vfs) = (Some(total_vfs), num_vfs);
        self
    }

    /// A virtual function of `pf` (added before it); placed next to the PF.
    pub fn vf_of(mut self, pf: &str) -> Self {
        self.physfn = Some(addr(pf));
        self
    }

    pub fn reset_methods(mut self, methods: &[&str]) -> Self {
        self.reset_methods = methods.iter().map(|m| m.to_string()).collect();
        self
    }

    pub fn boot_vga(mut self, yes: bool) -> Self {
        self.boot_vga = Some(yes);
        self
    }

    fn uevent(&self, driver: Option<&str>) -> String {
        let drv = driver.map(|d| format!("DRIVER={d}\n")).unwrap_or_default();
        format!(
            "{drv}PCI_CLASS={:X}\nPCI_ID={:04X}:{:04X}\nPCI_SUBSYS_ID={:04X}:{:04X}\nPCI_SLOT_NAME={}\n\
             MODALIAS=pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}\n",
            self.class,
            self.vendor,
            self.device,
            self.subsystem_vendor,
            self.subsystem_device,
            self.address,
            self.vendor,
            self.device,
            self.subsystem_vendor,
            self.subsystem_device,
            self.class >> 16,
            (self.class >> 8) & 0xff,
            self.class & 0xff
        )
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 64];
        c[0..2].copy_from_slice(&self.vendor.to_le_bytes());
        c[2..4].copy_from_slice(&self.device.to_le_bytes());
        c[9] = self.class as u8;
        c[10] = (self.class >> 8) as u8;
        c[11] = (self.class >> 16) as u8;
        c[0x0e] = u8::from(self.bridge);
        if !self.bridge {
            c[0x2c..0x2e].copy_from_slice(&self.subsystem_vendor.to_le_bytes());
            c[0x2e..0x30].copy_from_slice(&self.subsystem_device.to_le_bytes());
        }
        c
    }
}

/// The on-disk tree; shared by the builder and the fake kernel.
#[derive(Debug, Clone)]
struct Tree {
    root: PathBuf,
}

fn write(path: &Path, content: impl AsRef<[u8]>) -> io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, content)
}

/// Create (replacing) a relative symlink at `link` pointing at `target`.
fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    let base = link.parent().expect("link has a parent");
    std::fs::create_dir_all(base)?;
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    rel.extend(&t[common..]);
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(rel, link)
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl Tree {
    fn new(root: &Path) -> io::Result<Tree> {
        std::fs::create_dir_all(root)?;
        Ok(Tree {
            root: std::fs::canonicalize(root)?,
        })
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn spec_path(&self, state: &str, a: &PciAddress) -> PathBuf {
        self.p(&format!("fake-kernel/{state}/{a}.json"))
    }

    fn spec(&self, a: &PciAddress) -> io::Result<FakeDevice> {
        let text = std::fs::read_to_string(self.spec_path("devices", a))
            .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        serde_json::from_str(&text).map_err(|e| other(e.to_string()))
    }

    fn save_spec(&self, d: &FakeDevice) -> io::Result<()> {
        let json = serde_json::to_string_pretty(d).map_err(|e| other(e.to_string()))?;
        write(&self.spec_path("devices", &d.address), json)
    }

    fn bus_link(&self, a: &PciAddress) -> PathBuf {
        self.p(&format!("sys/bus/pci/devices/{a}"))
    }

    /// The device's real directory, if present.
    fn dev_dir(&self, a: &PciAddress) -> Option<PathBuf> {
        std::fs::canonicalize(self.bus_link(a)).ok()
    }

    fn driver_dir(&self, drv: &str) -> PathBuf {
        self.p(&format!("sys/bus/pci/drivers/{drv}"))
    }

    fn driver_of(&self, a: &PciAddress) -> Option<String> {
        let l = std::fs::read_link(self.bus_link(a).join("driver")).ok()?;
        l.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    fn log(&self, line: &str) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.p("fake-kernel/log"))?;
        writeln!(f, "{line}")
    }

    fn skeleton(&self) -> io::Result<()> {
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/devices",
            "sys/kernel/iommu_groups",
            "dev",
            "fake-kernel/devices",
            "fake-kernel/removed",
            "fake-kernel/new_ids",
            "fake-kernel/variants",
        ] {
            std::fs::create_dir_all(self.p(d))?;
        }
        for f in [
            "sys/bus/pci/drivers_probe",
            "sys/bus/pci/rescan",
            "fake-kernel/log",
        ] {
            if !self.p(f).exists() {
                write(&self.p(f), "")?;
            }
        }
        write(&self.p("sys/bus/pci/drivers_autoprobe"), "1\n")
    }

    fn register_driver(&self, name: &str) -> io::Result<()> {
        let dir = self.driver_dir(name);
        for f in ["bind", "unbind", "new_id", "remove_id"] {
            if !dir.join(f).exists() {
                write(&dir.join(f), "")?;
            }
        }
        if name == "vfio-pci" {
            write(&self.p("dev/vfio/vfio"), "")?;
        }
        Ok(())
    }

    fn is_vfio_driver(&self, drv: &str) -> bool {
        drv == "vfio-pci" || self.p(&format!("fake-kernel/variants/{drv}")).exists()
    }

    /// Create the device's directory and links (unbound), and remember it.
    fn materialize(&self, d: &FakeDevice) -> io::Result<()> {
        let a = d.address;
        if self.dev_dir(&a).is_some() {
            return Err(other(format!("fake PCI device {a} already exists")));
        }
        let parent_dir = match (d.parent, d.physfn) {
            (Some(p), _) => {
                let pd = self
                    .dev_dir(&p)
                    .ok_or_else(|| other(format!("{a}: parent bridge {p} does not exist")))?;
                std::fs::create_dir_all(
                    pd.join(format!("pci_bus/{:04x}:{:02x}", a.domain, a.bus)),
                )?;
                pd
            }
            (None, Some(pf)) => self
                .dev_dir(&pf)
                .and_then(|p| p.parent().map(Path::to_owned))
                .ok_or_else(|| other(format!("{a}: physical function {pf} does not exist")))?,
            (None, None) => self.p(&format!("sys/devices/pci{:04x}:{:02x}", a.domain, a.bus)),
        };
        let dir = parent_dir.join(a.to_string());
        std::fs::create_dir_all(&dir)?;
        let hex4 = |v: u16| format!("0x{v:04x}\n");
        write(&dir.join("vendor"), hex4(d.vendor))?;
        write(&dir.join("device"), hex4(d.device))?;
        write(&dir.join("subsystem_vendor"), hex4(d.subsystem_vendor))?;
        write(&dir.join("subsystem_device"), hex4(d.subsystem_device))?;
        write(&dir.join("class"), format!("0x{:06x}\n", d.class))?;
        write(&dir.join("numa_node"), format!("{}\n", d.numa_node))?;
        write(&dir.join("driver_override"), "(null)\n")?;
        write(&dir.join("config"), d.config())?;
        write(&dir.join("uevent"), d.uevent(None))?;
        write(&dir.join("remove"), "")?;
        write(&dir.join("rescan"), "")?;
        if !d.reset_methods.is_empty() {
            write(
                &dir.join("reset_method"),
                format!("{}\n", d.reset_methods.join(" ")),
            )?;
        }
        if let Some(v) = d.boot_vga {
            write(&dir.join("boot_vga"), format!("{}\n", u8::from(v)))?;
        }
        if d.bridge {
            std::fs::create_dir_all(dir.join("pci_bus"))?;
        }
        if let Some(total) = d.sriov_total_vfs {
            write(&dir.join("sriov_totalvfs"), format!("{total}\n"))?;
            write(&dir.join("sriov_numvfs"), format!("{}\n", d.sriov_num_vfs))?;
        }
        if let Some(pf) = d.physfn {
            let pf_dir = self.dev_dir(&pf).expect("checked above");
            symlink(&pf_dir, &dir.join("physfn"))?;
            let n = (0..)
                .find(|n| !pf_dir.join(format!("virtfn{n}")).exists())
                .unwrap_or(0);
            symlink(&dir, &pf_dir.join(format!("virtfn{n}")))?;
        }
        if let Some(g) = d.iommu_group {
            let gdir = self.p(&format!("sys/kernel/iommu_groups/{g}"));
            symlink(&dir, &gdir.join(format!("devices/{a}")))?;
            if !gdir.join("type").exists() {
                write(&gdir.join("type"), "DMA\n")?;
            }
            symlink(&gdir, &dir.join("iommu_group"))?;
        }
        symlink(&dir, &self.bus_link(&a))?;
        self.save_spec(d)
    }

    /// Bind `a` to `drv` the way a successful probe does. vfio drivers fail
    /// to probe a device without an IOMMU group, as on the real kernel.
    fn bind(&self, a: &PciAddress, drv: &str) -> io::Result<bool> {
        let d = self.spec(a)?;
        let dir = self
            .dev_dir(a)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        let vfio = self.is_vfio_driver(drv);
        if vfio && d.iommu_group.is_none() {
            self.log(&format!("probe-failed {a} {drv}"))?;
            return Ok(false);
        }
        symlink(&self.driver_dir(drv), &dir.join("driver"))?;
        symlink(&dir, &self.driver_dir(drv).join(a.to_string()))?;
        write(&dir.join("uevent"), d.uevent(Some(drv)))?;
        if vfio {
            write(
                &self.p(&format!("dev/vfio/{}", d.iommu_group.unwrap_or(0))),
                "",
            )?;
            if drv != "vfio-pci" {
                std::fs::create_dir_all(dir.join("vfio-dev/vfio0"))?;
            }
        }
        self.log(&format!("bind {a} {drv}"))?;
        Ok(true)
    }

    fn unbind(&self, a: &PciAddress) -> io::Result<()> {
        let Some(drv) = self.driver_of(a) else {
            return Ok(());
        };
        let d = self.spec(a)?;
        let dir = self
            .dev_dir(a)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        std::fs::remove_file(dir.join("driver"))?;
        let _ = std::fs::remove_file(self.driver_dir(&drv).join(a.to_string()));
        let _ = std::fs::remove_dir_all(dir.join("vfio-dev"));
        write(&dir.join("uevent"), d.uevent(None))?;
        if let (true, Some(g)) = (self.is_vfio_driver(&drv), d.iommu_group) {
            let still = self
                .group_members(g)
                .iter()
                .any(|m| self.driver_of(m).is_some_and(|x| self.is_vfio_driver(&x)));
            if !still {
                let _ = std::fs::remove_file(self.p(&format!("dev/vfio/{g}")));
            }
        }
        self.log(&format!("unbind {a} {drv}"))
    }

    fn group_members(&self, g: u32) -> Vec<PciAddress> {
        Sysfs::new(&self.root).iommu_group_members(g)
    }
}

/// Builder for a fake tree under a directory the test owns.
#[derive(Debug, Clone)]
pub struct FakeSysfs {
    tree: Tree,
}

impl FakeSysfs {
    /// An empty tree (no devices, no drivers, no IOMMU) under `root`.
    /// Panics if the directory cannot be set up (test fixture).
    pub fn new(root: &Path) -> FakeSysfs {
        let tree = Tree::new(root).expect("create fake sysfs root");
        tree.skeleton().expect("create fake sysfs skeleton");
        FakeSysfs { tree }
    }

    /// The (canonical) root: use it as the sysfs root and the procfs root.
    pub fn root(&self) -> &Path {
        &self.tree.root
    }

    /// A [`Sysfs`] on this tree with a [`FakeKernel`] reacting to writes.
    pub fn sysfs(&self) -> Sysfs {
        Sysfs::with_hook(&self.tree.root, Arc::new(FakeKernel::new()))
    }

    /// Add a device (its parent bridge or PF must exist already); binds it
    /// to its native driver unless it starts unbound.
    pub fn add(&self, dev: FakeDevice) -> io::Result<&Self> {
        self.tree.materialize(&dev)?;
        if let (Some(drv), false) = (&dev.native_driver, dev.start_unbound) {
            self.tree.register_driver(drv)?;
            self.tree.bind(&dev.address, drv)?;
        }
        Ok(self)
    }

    /// Make a PCI driver exist (`sys/bus/pci/drivers/<name>/`); for
    /// `vfio-pci` also `dev/vfio/vfio`.
    pub fn register_driver(&self, name: &str) -> io::Result<&Self> {
        self.tree.register_driver(name)?;
        Ok(self)
    }

    /// A vfio variant driver (like `mlx5_vfio_pci`): registered, and a bound
    /// device gets `vfio-dev/` and `dev/vfio/<group>`.
    pub fn register_vfio_variant_driver(&self, name: &str) -> io::Result<&Self> {
        write(&self.tree.p(&format!("fake-kernel/variants/{name}")), "")?;
        self.register_driver(name)
    }

    /// Remove a driver (`modprobe -r`): its devices are unbound first.
    pub fn unregister_driver(&self, name: &str) -> io::Result<&Self> {
        let sysfs = Sysfs::new(self.root());
        for a in sysfs.list_devices()? {
            if sysfs.driver(&a).as_deref() == Some(name) {
                self.tree.unbind(&a)?;
            }
        }
        let _ = std::fs::remove_dir_all(self.tree.driver_dir(name));
        if name == "vfio-pci" {
            let _ = std::fs::remove_file(self.tree.p("dev/vfio/vfio"));
        }
        Ok(self)
    }

    /// The kernel actions so far, one per line (see the module doc).
    pub fn kernel_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.tree.p("fake-kernel/log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Write [`FAKE_PCI_IDS`] to `<root>/pci.ids` and return its path.
    pub fn write_pci_ids(&self) -> io::Result<PathBuf> {
        let p = self.tree.p("pci.ids");
        write(&p, FAKE_PCI_IDS)?;
        Ok(p)
    }
}

#[path = "fake_host.rs"]
mod host;

#[cfg(test)]
#[path = "fake_tests.rs"]
mod tests;
