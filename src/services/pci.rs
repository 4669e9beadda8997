//! Host PCI devices as a service: the inventory (from sysfs, kept current by
//! udev events), which VMs reference which device (from domain definitions,
//! kept current by libvirt events), the one viability check, driver control
//! (vfio-pci and back) and attaching/detaching devices to VMs.
//! Knows nothing about D-Bus.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::libvirt::xml::Element;
use crate::libvirt::{Definition, DeviceScope, DomainRef, Hypervisor};
use crate::pci::critical::HostCritical;
use crate::pci::hostdev::{self, HostdevRequest};
use crate::pci::ids::PciIds;
use crate::pci::inventory::{self, PciDeviceInfo};
use crate::pci::udev::PciEvent;
use crate::pci::vfio::DriverStore;
use crate::pci::vfio::{self, AssignContext, Problem};
use crate::pci::{PciAddress, Sysfs};
use crate::store::Store;
use crate::{Error, Result};

/// What is published about one host PCI device: the inventory's reading
/// and what vapord knows about its use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciRecord {
    pub key: String,
    pub info: PciDeviceInfo,
    /// VMs (uuid, name) whose definitions reference the device, by name.
    pub assigned_to: Vec<(String, String)>,
    /// The driver vapord remembered before moving it to vfio-pci ("" none).
    pub original_driver: String,
    /// A driver re-applied whenever the device appears ("" none).
    pub persistent_override: String,
}

impl crate::store::Keyed for PciRecord {
    fn key(&self) -> &str {
        &self.key
    }
}

/// A difference in the published devices, for the bus.
pub type PciChange = crate::store::Change<PciRecord>;

/// Where the service finds the host.
#[derive(Debug, Clone)]
pub struct PciConfig {
    /// `/` on a host; a fake tree in tests.
    pub sysfs_root: PathBuf,
    /// Where `proc/` is (for mounts and routes).
    pub procfs_root: PathBuf,
    /// pci.ids; `None` = the usual places.
    pub ids_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Emulate the kernel's reactions to writes under `sysfs_root` (a fake
    /// tree of the tests; only builds with the `test-fakes` feature can).
    pub fake_kernel: bool,
}

/// Options of an attach or detach: change the running VM (`live`), the
/// persistent definition (`config`), or both.
pub use crate::libvirt::DeviceScope as AttachScope;

pub struct PciService {
    sysfs: Sysfs,
    procfs_root: PathBuf,
    ids: PciIds,
    critical: RwLock<HostCritical>,
    store: DriverStore,
    devices: RwLock<BTreeMap<PciAddress, PciDeviceInfo>>,
    /// Domain UUID → (name, host PCI addresses its definitions reference).
    hostdevs: RwLock<HashMap<String, (String, Vec<PciAddress>)>>,
    records: Store<PciRecord>,
    hv: Arc<Hypervisor>,
    /// One driver change (bind, restore, re-applied override) at a time.
    driver_ops: std::sync::Mutex<()>,
    /// One assignment (attach) at a time: check and act without a race.
    assign_ops: tokio::sync::Mutex<()>,
}

fn lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn lock_mut<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Host PCI addresses referenced by `<hostdev type='pci'>` in a domain document.
pub fn domain_hostdevs(domain: &Element) -> Vec<PciAddress> {
    let Some(devices) = domain.child("devices") else {
        return Vec::new();
    };
    devices
        .children_named("hostdev")
        .filter(|h| h.attr("type") == Some("pci"))
        .filter_map(|h| {
            let a = h.child("source")?.child("address")?;
            let num = |k: &str| {
                let v = a.attr(k)?;
                u32::from_str_radix(v.trim_start_matches("0x"), 16).ok()
            };
            Some(PciAddress {
                domain: num("domain").unwrap_or(0) as u16,
                bus: num("bus")? as u8,
                slot: num("slot")? as u8,
                function: num("function")? as u8,
            })
        })
        .collect()
}

impl PciService {
    pub fn new(
        cfg: &PciConfig,
        hv: Arc<Hypervisor>,
    ) -> Result<(Arc<Self>, UnboundedReceiver<PciChange>)> {
        if cfg.fake_kernel && cfg.sysfs_root == std::path::Path::new("/") {
            return Err(Error::InvalidArgument(
                "a fake kernel needs a fake sysfs root, never /".into(),
            ));
        }
        #[cfg(feature = "test-fakes")]
        let sysfs = if cfg.fake_kernel {
            log::warn!(
                "sysfs root {} is a fake tree: emulating the kernel's reactions",
                cfg.sysfs_root.display()
            );
            Sysfs::with_hook(
                &cfg.sysfs_root,
                Arc::new(crate::pci::fake::FakeKernel::new()),
            )
        } else {
            Sysfs::new(&cfg.sysfs_root)
        };
        #[cfg(not(feature = "test-fakes"))]
        let sysfs = if cfg.fake_kernel {
            return Err(Error::NotSupported(
                "this build has no fake kernel (the test-fakes feature)".into(),
            ));
        } else {
            Sysfs::new(&cfg.sysfs_root)
        };
        Self::with_sysfs(sysfs, cfg, hv)
    }

    /// With a given sysfs (tests pass one with a fake kernel).
    pub fn with_sysfs(
        sysfs: Sysfs,
        cfg: &PciConfig,
        hv: Arc<Hypervisor>,
    ) -> Result<(Arc<Self>, UnboundedReceiver<PciChange>)> {
        let (records, rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let store = match DriverStore::open(&cfg.state_dir) {
            Ok(s) => s,
            Err(e) => {
                // A damaged record file must not keep the whole daemon down:
                // set it aside (for a person to read) and start afresh.
                let file = cfg.state_dir.join(crate::pci::vfio::DRIVER_STORE_FILE);
                let aside = file.with_extension("json.damaged");
                log::error!(
                    "{e}; moving it to {} and starting with no remembered drivers",
                    aside.display()
                );
                std::fs::rename(&file, &aside).map_err(|e| {
                    Error::Failed(format!("cannot move {} aside: {e}", file.display()))
                })?;
                DriverStore::open(&cfg.state_dir)?
            }
        };
        let svc = Arc::new(Self {
            ids: PciIds::load_or_default(cfg.ids_path.as_deref()),
            critical: RwLock::new(HostCritical::none()),
            procfs_root: cfg.procfs_root.clone(),
            sysfs,
            store,
            devices: RwLock::new(BTreeMap::new()),
            hostdevs: RwLock::new(HashMap::new()),
            records,
            hv,
            driver_ops: std::sync::Mutex::new(()),
            assign_ops: tokio::sync::Mutex::new(()),
        });
        Ok((svc, rx))
    }

    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// Read every device (call after subscribing to udev). Emits nothing.
    pub fn load(&self) -> Result<()> {
        let critical = HostCritical::detect(&self.sysfs, &self.procfs_root);
        let found = match inventory::scan(&self.sysfs, &self.ids, &critical) {
            Ok(found) => found,
            // A host (or container) without a PCI bus simply has no devices.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(Error::Failed(format!(
                    "cannot read PCI devices from sysfs: {e}"
                )))
            }
        };
        *lock_mut(&self.critical) = critical;
        *lock_mut(&self.devices) = found.into_iter().map(|d| (d.address, d)).collect();
        let addrs: Vec<PciAddress> = lock(&self.devices).keys().copied().collect();
        for addr in &addrs {
            self.publish(addr);
        }
        // Like driverctl at boot: devices present before vapord started get
        // their persistent overrides now.
        for (addr, rec) in self.store.records() {
            if rec.persistent_override.is_some() && self.sysfs.exists(&addr) {
                let _serial = self.driver_ops.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = vfio::reapply_override(&self.sysfs, &self.store, &addr) {
                    log::warn!(pci_address = addr.to_string().as_str(); "cannot re-apply the persistent driver override: {e}");
                }
                drop(_serial);
                self.refresh(&addr);
            }
        }
        Ok(())
    }

    /// HostCritical as of now (mounts and routes change; recomputed for every
    /// decision that could unbind something).
    fn fresh_critical(&self) -> HostCritical {
        let c = HostCritical::detect(&self.sysfs, &self.procfs_root);
        *lock_mut(&self.critical) = c.clone();
        c
    }

    pub fn device(&self, addr: &PciAddress) -> Option<PciDeviceInfo> {
        lock(&self.devices).get(addr).cloned()
    }

    pub fn all(&self) -> Vec<PciDeviceInfo> {
        lock(&self.devices).values().cloned().collect()
    }

    /// The driver vapord remembered for a device it moved to vfio-pci.
    pub fn original_driver(&self, addr: &PciAddress) -> Option<String> {
        self.store.original_driver(addr)
    }

    /// The persistent driver override (driverctl style), if any.
    pub fn persistent_override(&self, addr: &PciAddress) -> Option<String> {
        self.store.record(addr).and_then(|r| r.persistent_override)
    }

    /// VMs (uuid, name) whose definitions reference the device.
    pub fn assigned_to(&self, addr: &PciAddress) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = lock(&self.hostdevs)
            .iter()
            .filter(|(_, (_, addrs))| addrs.contains(addr))
            .map(|(uuid, (name, _))| (uuid.clone(), name.clone()))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    }

    /// Re-read one device and publish what changed.
    pub fn refresh(&self, addr: &PciAddress) {
        let critical = lock(&self.critical).clone();
        // Read under the lock: two refreshes can never store an older reading last.
        let mut devices = lock_mut(&self.devices);
        let now = inventory::read_device(&self.sysfs, &self.ids, &critical, addr);
        match now {
            Some(d) => devices.insert(*addr, d),
            None => devices.remove(addr),
        };
        drop(devices);
        self.publish(addr);
    }

    /// The published record of a device now (`None`: no such device).
    pub fn record(&self, addr: &PciAddress) -> Option<Arc<PciRecord>> {
        self.records.get(&addr.to_string())
    }

    /// Publish what is known about one device now (nothing if unchanged).
    fn publish(&self, addr: &PciAddress) {
        let ticket = self.records.ticket();
        let rec = self.device(addr).map(|info| PciRecord {
            key: addr.to_string(),
            info,
            assigned_to: self.assigned_to(addr),
            original_driver: self.original_driver(addr).unwrap_or_default(),
            persistent_override: self.persistent_override(addr).unwrap_or_default(),
        });
        self.records.apply(&addr.to_string(), rec, ticket);
    }

    /// Follow one udev event.
    pub fn on_udev(&self, ev: &PciEvent) {
        let addr = ev.address();
        // Group mates list each other: an add or remove changes theirs too.
        let mates: Vec<PciAddress> = self
            .device(&addr)
            .map(|d| d.iommu_group_members)
            .unwrap_or_default();
        if let PciEvent::Added(_) = ev {
            let _serial = self.driver_ops.lock().unwrap_or_else(|e| e.into_inner());
            match vfio::reapply_override(&self.sysfs, &self.store, &addr) {
                Ok(true) => {
                    log::info!(pci_address = addr.to_string().as_str(); "re-applied the persistent driver override")
                }
                Ok(false) => {}
                Err(e) => {
                    log::warn!(pci_address = addr.to_string().as_str(); "cannot re-apply the driver override: {e}")
                }
            }
        }
        self.refresh(&addr);
        if matches!(ev, PciEvent::Added(_) | PciEvent::Removed(_)) {
            let now: Vec<PciAddress> = self
                .device(&addr)
                .map(|d| d.iommu_group_members)
                .unwrap_or_default();
            for m in mates.iter().chain(&now) {
                self.refresh(m);
            }
        }
    }

    /// Read which devices every domain references (persistent and live).
    pub async fn load_hostdevs(&self) -> Result<()> {
        let all = self
            .hv
            .session(|s| {
                let doms = s.domains().map_err(|e| e.context("cannot list domains"))?;
                Ok(doms
                    .iter()
                    .filter_map(|d| Some((d.uuid().ok()?, domain_pci(d))))
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut touched = Vec::new();
        {
            let mut map = lock_mut(&self.hostdevs);
            for (_, (_, addrs)) in map.iter() {
                touched.extend(addrs.iter().copied());
            }
            map.clear();
            for (uuid, entry) in all.into_iter() {
                if let Some(e) = entry {
                    touched.extend(e.1.iter().copied());
                    map.insert(uuid, e);
                }
            }
        }
        self.announce(touched);
        Ok(())
    }

    /// Re-read one domain's references (after a libvirt event for it).
    pub async fn refresh_hostdevs(&self, uuid: &str) {
        let u = uuid.to_owned();
        // Only a domain libvirt says is gone loses its references; any other
        // failure keeps what we knew (an empty map would let a second VM
        // take a device that is in use).
        let now = match self
            .hv
            .session(move |s| match s.domain(&u) {
                Ok(d) => Ok(Some(domain_pci(&d))),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e.context("cannot look up the domain")),
            })
            .await
        {
            Ok(Some(Some(entry))) => Some(entry),
            Ok(Some(None)) | Err(_) => {
                log::warn!(vm_uuid = uuid; "cannot re-read which PCI devices this VM uses; keeping what was known");
                return;
            }
            Ok(None) => None,
        };
        let mut touched = Vec::new();
        {
            let mut map = lock_mut(&self.hostdevs);
            if let Some((_, old)) = map.get(uuid) {
                touched.extend(old.iter().copied());
            }
            match now {
                Some(e) if !e.1.is_empty() => {
                    touched.extend(e.1.iter().copied());
                    map.insert(uuid.to_owned(), e);
                }
                _ => {
                    map.remove(uuid);
                }
            }
        }
        // Restoring a driver writes sysfs and may wait for the probe.
        tokio::task::block_in_place(|| self.release_unused(&touched));
        self.announce(touched);
    }

    /// A device vapord moved to vfio-pci by hand goes back to its own driver
    /// once no VM references it any more ("released"), unless its owner made
    /// the binding persistent.
    fn release_unused(&self, addrs: &[PciAddress]) {
        for a in addrs {
            let released = self.assigned_to(a).is_empty()
                && self.store.original_driver(a).is_some()
                && self.store.persistent_override(a).is_none()
                && self.sysfs.driver(a).as_deref() == Some(vfio::VFIO_PCI);
            if !released {
                continue;
            }
            let _serial = self.driver_ops.lock().unwrap_or_else(|e| e.into_inner());
            match vfio::restore_driver(&self.sysfs, &self.store, a) {
                Ok(d) => log::info!(pci_address = a.to_string().as_str();
                    "released by every VM: back on {}", d.unwrap_or_else(|| "no driver".into())),
                Err(e) => {
                    log::warn!(pci_address = a.to_string().as_str(); "released, but cannot restore its driver: {e}")
                }
            }
            drop(_serial);
            self.refresh(a);
        }
    }

    fn announce(&self, mut addrs: Vec<PciAddress>) {
        addrs.sort();
        addrs.dedup();
        for a in addrs {
            self.publish(&a);
        }
    }

    /// Devices referenced by domains other than `except_uuid` → domain name.
    fn in_use(&self, except_uuid: Option<&str>) -> HashMap<PciAddress, String> {
        let mut m = HashMap::new();
        for (uuid, (name, addrs)) in lock(&self.hostdevs).iter() {
            if Some(uuid.as_str()) == except_uuid {
                continue;
            }
            for a in addrs {
                m.insert(*a, name.clone());
            }
        }
        m
    }

    /// Every reason `addr` cannot go to the VM (`vm_uuid`, `vm_name`); no side effects.
    pub fn check(
        &self,
        addr: &PciAddress,
        vm_uuid: Option<&str>,
        vm_name: &str,
        rom_file: Option<PathBuf>,
        also: &[PciAddress],
        force_host_critical: bool,
    ) -> Vec<Problem> {
        let ctx = AssignContext {
            vm_name: vm_name.to_owned(),
            in_use: self.in_use(vm_uuid),
            force_host_critical,
            rom_file,
            also_assigned: also.to_vec(),
        };
        let critical = self.fresh_critical();
        let lookup = |a: &PciAddress| {
            self.device(a).map(|mut d| {
                // Decide on what is true now, not on the last event.
                d.driver = self.sysfs.driver(a);
                d.host_critical = critical.reasons(a).to_vec();
                d
            })
        };
        vfio::check_assignable(&self.sysfs, &lookup, addr, &ctx)
    }

    /// Bind a device (or its whole IOMMU group) to vfio-pci, remembering the
    /// original drivers; optionally make it persistent (re-applied when the
    /// device reappears). Returns (address, previous driver) per device moved.
    pub async fn bind_vfio(
        self: &Arc<Self>,
        addr: PciAddress,
        whole_group: bool,
        persistent: bool,
    ) -> Result<Vec<(PciAddress, String)>> {
        tokio::task::block_in_place(|| self.precheck_bind(&addr, whole_group))?;
        let this = self.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<Vec<(PciAddress, String)>> {
            let _serial = this.driver_ops.lock().unwrap_or_else(|e| e.into_inner());
            let outcomes = if whole_group {
                vfio::bind_group_to_vfio(&this.sysfs, &this.store, &addr)?
            } else {
                vec![vfio::bind_to_vfio(&this.sysfs, &this.store, &addr)?]
            };
            if persistent {
                for o in &outcomes {
                    this.store
                        .set_persistent_override(&o.address, vfio::VFIO_PCI)?;
                }
            }
            Ok(outcomes
                .into_iter()
                .map(|o| (o.address, o.previous_driver.unwrap_or_default()))
                .collect())
        })
        .await
        .map_err(|e| Error::Failed(format!("driver task failed: {e}")))??;
        for (a, _) in &out {
            self.refresh(a);
        }
        Ok(out)
    }

    /// What must hold before any driver is unbound: the device is an endpoint
    /// in an IOMMU group, and neither it nor (for a group bind) any member
    /// that would be moved is needed by the host right now.
    fn precheck_bind(&self, addr: &PciAddress, whole_group: bool) -> Result<()> {
        let dev = self.device(addr).ok_or_else(|| {
            Error::NotFound(format!("PCI device {addr} does not exist on this host"))
        })?;
        // Every reason at once; the first decides the error's kind.
        type ErrorKind = fn(String) -> Error;
        let mut problems: Vec<(ErrorKind, String)> = Vec::new();
        if !self.sysfs.driver_registered(vfio::VFIO_PCI)
            && !vfio::vfio_module_available(&self.sysfs)
        {
            problems.push((Error::NotSupported, vfio::VFIO_UNAVAILABLE.to_owned()));
        }
        if !self.sysfs.iommu_enabled() {
            problems.push((Error::NotSupported, vfio::IOMMU_OFF.to_owned()));
        } else if dev.iommu_group.is_none() {
            problems.push((Error::NotSupported, format!("{addr} is in no IOMMU group")));
        }
        if dev.is_bridge {
            problems.push((
                Error::InvalidArgument,
                format!("{addr} is a bridge: bridges are never given to guests"),
            ));
        }
        let critical = self.fresh_critical();
        let mut affected = vec![*addr];
        if whole_group {
            affected.extend(
                dev.iommu_group_members
                    .iter()
                    .filter(|m| !self.device(m).is_some_and(|d| d.is_bridge)),
            );
        }
        let needed: Vec<String> = affected
            .iter()
            .filter(|a| critical.is_critical(a))
            .map(|a| format!("{a} ({})", critical.reasons(a).join("; ")))
            .collect();
        if !needed.is_empty() {
            problems.push((
                Error::InvalidState,
                format!(
                    "refusing to unbind what the host needs: {}",
                    needed.join(", ")
                ),
            ));
        }
        match problems.first() {
            None => Ok(()),
            Some((kind, _)) => Err(kind(
                problems
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// Give a device back to its own driver and drop any persistent override.
    /// Refused while a running VM uses it (QEMU holds it through vfio).
    pub async fn restore_driver(self: &Arc<Self>, addr: PciAddress) -> Result<String> {
        let running: Vec<String> = {
            let users = self.assigned_to(&addr);
            let uuids: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
            let active = self
                .hv
                .session(move |s| {
                    Ok(uuids
                        .iter()
                        .filter(|u| s.domain(u).and_then(|d| d.is_active()).unwrap_or(false))
                        .cloned()
                        .collect::<Vec<_>>())
                })
                .await?;
            users
                .into_iter()
                .filter(|(u, _)| active.contains(u))
                .map(|(_, n)| n)
                .collect()
        };
        if !running.is_empty() {
            return Err(Error::InvalidState(format!(
                "{addr} is in use by the running VM '{}'; stop it or detach the device first",
                running.join("', '")
            )));
        }
        let this = self.clone();
        let driver = tokio::task::spawn_blocking(move || -> Result<Option<String>> {
            let _serial = this.driver_ops.lock().unwrap_or_else(|e| e.into_inner());
            let driver = vfio::restore_driver(&this.sysfs, &this.store, &addr)?;
            this.store.clear_persistent_override(&addr)?;
            Ok(driver)
        })
        .await
        .map_err(|e| Error::Failed(format!("driver task failed: {e}")))??;
        self.refresh(&addr);
        Ok(driver.unwrap_or_default())
    }

    /// Vendor and device id as 4 hex digits (empty when unknown), for polkit.
    pub fn ids_of(&self, addr: &PciAddress) -> (String, String) {
        self.device(addr)
            .map(|d| {
                (
                    format!("{:04x}", d.vendor_id),
                    format!("{:04x}", d.device_id),
                )
            })
            .unwrap_or_default()
    }

    /// Whether the device is needed by the host right now (and why).
    pub fn host_critical_now(&self, addr: &PciAddress) -> Vec<String> {
        self.fresh_critical().reasons(addr).to_vec()
    }

    /// Attach a host device to a VM (managed='yes': libvirt moves it to
    /// vfio-pci at start and back at stop), after the full viability check.
    pub async fn attach(
        &self,
        vm_uuid: &str,
        vm_name: &str,
        req: HostdevRequest,
        scope: AttachScope,
        force_host_critical: bool,
    ) -> Result<()> {
        if !scope.live && !scope.config {
            return Err(Error::InvalidArgument(
                "options: at least one of live and config must be true".into(),
            ));
        }
        let _serial = self.assign_ops.lock().await;
        let problems = self.check(
            &req.host,
            Some(vm_uuid),
            vm_name,
            req.rom_file.as_ref().map(PathBuf::from),
            &[],
            force_host_critical,
        );
        if let Some(e) = vfio::problems_error(&problems) {
            return Err(e);
        }
        if self
            .assigned_to(&req.host)
            .iter()
            .any(|(u, _)| u == vm_uuid)
        {
            return Err(Error::Conflict(format!(
                "{} is already assigned to VM '{vm_name}'",
                req.host
            )));
        }
        let planned = hostdev::plan_hostdevs(std::slice::from_ref(&req), &|_| 1)?;
        let xml = hostdev::hostdev_xml(&planned[0]);
        let uuid = vm_uuid.to_owned();
        let what = format!("cannot attach {} to VM '{vm_name}'", req.host);
        self.hv
            .on_domain(&uuid, move |_, d| {
                d.attach_device(&xml, scope).map_err(|e| e.context(&what))?;
                if scope.config {
                    raise_memlock(d)?;
                }
                Ok(())
            })
            .await?;
        self.refresh_hostdevs(vm_uuid).await;
        Ok(())
    }

    /// Detach a host device from a VM.
    pub async fn detach(
        &self,
        vm_uuid: &str,
        vm_name: &str,
        addr: PciAddress,
        scope: AttachScope,
    ) -> Result<()> {
        if !scope.live && !scope.config {
            return Err(Error::InvalidArgument(
                "options: at least one of live and config must be true".into(),
            ));
        }
        let what = format!("cannot detach {addr} from VM '{vm_name}'");
        let name = vm_name.to_owned();
        self.hv
            .on_domain(vm_uuid, move |_, d| {
                let root = d
                    .definition(scope.definition())
                    .map_err(|e| e.context(&what))?;
                if !domain_hostdevs(&root).contains(&addr) {
                    return Err(Error::NotFound(format!(
                        "{addr} is not assigned to VM '{name}'"
                    )));
                }
                let dev = hostdev::hostdev_xml(&hostdev::PlannedHostdev {
                    host: addr,
                    guest: None,
                    multifunction: false,
                    rom_file: None,
                    rom_bar: None,
                    primary_gpu: false,
                });
                d.detach_device(&dev, scope).map_err(|e| e.context(&what))
            })
            .await?;
        self.refresh_hostdevs(vm_uuid).await;
        Ok(())
    }
}

/// A definition with an explicit `<memtune><hard_limit>` (vapord writes one
/// at creation) keeps that limit even when devices are added, so raise it to
/// libvirt's VFIO rule for the devices it has now. Without one libvirt
/// computes the limit itself.
fn raise_memlock(d: &DomainRef) -> Result<()> {
    let root = d
        .definition(Definition::Inactive)
        .map_err(|e| e.context("cannot read the definition"))?;
    let kib = |el: Option<&Element>| el.and_then(|e| e.text.trim().parse::<u64>().ok());
    let Some(limit) = kib(root.child("memtune").and_then(|m| m.child("hard_limit"))) else {
        return Ok(());
    };
    let memory = kib(root.child("memory")).unwrap_or(0);
    let devices = domain_hostdevs(&root).len();
    let viommu = root
        .child("devices")
        .and_then(|d| d.child("iommu"))
        .is_some();
    match hostdev::memlock_limit_kib(memory, devices, viommu) {
        Some(needed) if needed > limit => d
            .set_memory_hard_limit(needed, DeviceScope::CONFIG)
            .map_err(|e| e.context("cannot raise the memory-locking limit")),
        _ => Ok(()),
    }
}

/// (name, referenced addresses) of a domain, from its live and persistent
/// XML (none when they cannot be read).
fn domain_pci(d: &DomainRef) -> Option<(String, Vec<PciAddress>)> {
    let name = d.name().ok()?;
    let mut addrs = Vec::new();
    if let Ok(definitions) = d.definitions() {
        for root in definitions.all() {
            addrs.extend(domain_hostdevs(root));
        }
    }
    addrs.sort();
    addrs.dedup();
    Some((name, addrs))
}

impl crate::creation::resolve::PciPlanner for PciService {
    /// Validate every requested device (all problems, naming
    /// `pci_devices[i].<field>`), place them in the guest, and compute the
    /// memory-locking limit with a vIOMMU on q35.
    fn plan(
        &self,
        vm_name: &str,
        memory_mib: u64,
        machine: &str,
        devices: &[crate::creation::spec::PciDeviceSpec],
    ) -> Result<crate::creation::resolve::ResolvedPci> {
        use crate::creation::resolve::{ResolvedHostdev, ResolvedPci};
        let mut reqs = Vec::new();
        for (i, d) in devices.iter().enumerate() {
            let field = |f: &str| format!("pci_devices[{i}].{f}");
            let host: PciAddress = d
                .host_address
                .parse()
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", field("host_address"))))?;
            let guest = d
                .guest_address
                .as_deref()
                .map(|g| {
                    g.parse::<PciAddress>().map_err(|e| {
                        Error::InvalidArgument(format!("{}: {e}", field("guest_address")))
                    })
                })
                .transpose()?;
            reqs.push(HostdevRequest {
                host,
                guest,
                // The file QEMU will really read: what is authorized and used.
                rom_file: d.rom_file.as_deref().map(crate::fsutil::canonical),
                rom_bar: None,
                multifunction: d.multifunction.unwrap_or(false),
                primary_gpu: d.primary_gpu.unwrap_or(false),
            });
        }
        let hosts: Vec<PciAddress> = reqs.iter().map(|r| r.host).collect();
        let mut messages = Vec::new();
        let mut first_kind = None;
        for (i, r) in reqs.iter().enumerate() {
            let others: Vec<PciAddress> = hosts.iter().copied().filter(|h| *h != r.host).collect();
            let problems = self.check(
                &r.host,
                None,
                vm_name,
                r.rom_file.as_ref().map(PathBuf::from),
                &others,
                false,
            );
            for p in problems {
                let f = if p.code == "rom-file" {
                    "rom_file"
                } else {
                    "host_address"
                };
                if first_kind.is_none() {
                    first_kind = vfio::problems_error(std::slice::from_ref(&p));
                }
                messages.push(format!("pci_devices[{i}].{f}: {}", p.message));
            }
        }
        if !messages.is_empty() {
            let msg = messages.join("; ");
            return Err(match first_kind {
                Some(Error::NotFound(_)) => Error::NotFound(msg),
                Some(Error::Conflict(_)) => Error::Conflict(msg),
                Some(Error::NotSupported(_)) => Error::NotSupported(msg),
                Some(Error::InvalidArgument(_)) => Error::InvalidArgument(msg),
                _ => Error::InvalidState(msg),
            });
        }
        let planned = hostdev::plan_hostdevs(&reqs, &|_| 1)?;
        let viommu = !(machine == "pc" || machine.starts_with("pc-i440fx"));
        let memlock_kib =
            hostdev::memlock_limit_kib(memory_mib * 1024, planned.len(), viommu).unwrap_or(0);
        Ok(ResolvedPci {
            primary_gpu: planned.iter().any(|h| h.primary_gpu),
            hostdevs: planned
                .iter()
                .map(|h| ResolvedHostdev {
                    host_address: h.host.to_string(),
                    guest_address: h.guest.map(|g| g.to_string()),
                    multifunction: h.multifunction,
                    rom_file: h.rom_file.clone(),
                    primary_gpu: h.primary_gpu,
                    xml: hostdev::hostdev_xml(h),
                })
                .collect(),
            memlock_kib,
            viommu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostdev_addresses_are_read_from_the_domain() {
        let root = Element::parse(
            "<domain><devices>\
             <hostdev mode='subsystem' type='pci' managed='yes'><source>\
             <address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/></source></hostdev>\
             <hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>\
             </devices></domain>",
        )
        .unwrap();
        assert_eq!(
            domain_hostdevs(&root),
            vec!["0000:01:00.1".parse().unwrap()]
        );
    }
}
