//! `org.vapor.Virtualization.PciDevice`: one object per host PCI device at
//! `/org/vapor/Virtualization/pci/<DDDD_BB_SS_F>`. Properties come from the
//! service's udev-fed inventory; every driver action is polkit `pci-assign`
//! with the device's address, vendor and device ids as details.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use zbus::interface;
use zbus::message::Header;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::options;
use super::polkit::{Action, Authorizer};
use super::{vm_path, Error, ROOT_PATH};
use crate::model::Model;
use crate::pci::inventory::PciDeviceInfo;
use crate::pci::PciAddress;
use crate::services::pci::PciService;

/// Object path of a PCI device.
pub fn pci_path(addr: &PciAddress) -> String {
    format!("{ROOT_PATH}/pci/{}", addr.path_element())
}

/// What every PCI object shares.
pub struct PciContext {
    pub pci: Arc<PciService>,
    pub model: Arc<Model>,
    pub auth: Arc<Authorizer>,
}

pub struct PciDevice {
    addr: PciAddress,
    ctx: Arc<PciContext>,
    /// What the last PropertiesChanged announced (base of the next diff).
    signalled: RwLock<Vec<(&'static str, OwnedVariant)>>,
}

impl PciDevice {
    pub fn new(addr: PciAddress, ctx: Arc<PciContext>) -> Self {
        let obj = Self {
            addr,
            ctx,
            signalled: RwLock::new(Vec::new()),
        };
        *obj.signalled.write().unwrap_or_else(|e| e.into_inner()) = obj.snapshot();
        obj
    }

    fn info(&self) -> Option<PciDeviceInfo> {
        self.ctx.pci.device(&self.addr)
    }

    fn assigned_paths(&self) -> Vec<OwnedObjectPath> {
        self.ctx
            .pci
            .assigned_to(&self.addr)
            .into_iter()
            .filter_map(|(uuid, _)| OwnedObjectPath::try_from(vm_path(&uuid)).ok())
            .collect()
    }

    /// Every property value now, for change detection.
    pub fn snapshot(&self) -> Vec<(&'static str, OwnedVariant)> {
        let v = |x: Variant<'_>| OwnedVariant::try_from(x).expect("plain values convert");
        vec![
            ("Driver", v(Variant::from(self.driver()))),
            ("AssignedTo", v(Variant::from(self.assigned_paths()))),
            (
                "AssignedToNames",
                v(Variant::from(self.assigned_to_names())),
            ),
            ("HostCritical", v(Variant::from(self.host_critical()))),
            (
                "HostCriticalReasons",
                v(Variant::from(self.host_critical_reasons())),
            ),
            ("IommuGroup", v(Variant::from(self.iommu_group()))),
            (
                "IommuGroupMembers",
                v(Variant::from(self.iommu_group_members())),
            ),
            ("SriovNumVfs", v(Variant::from(self.sriov_num_vfs()))),
            ("OriginalDriver", v(Variant::from(self.original_driver()))),
            (
                "PersistentOverride",
                v(Variant::from(self.persistent_override())),
            ),
        ]
    }

    /// The properties that changed since the last announcement (and remember them).
    pub fn take_changes(&self) -> Vec<(&'static str, OwnedVariant)> {
        let now = self.snapshot();
        let mut last = self.signalled.write().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<_> = now
            .iter()
            .filter(|(k, v)| last.iter().find(|(lk, _)| lk == k).map(|(_, lv)| lv) != Some(v))
            .map(|(k, v)| (*k, v.try_clone().expect("plain values clone")))
            .collect();
        *last = now;
        changed
    }

    async fn authorize_assign(
        &self,
        header: &Header<'_>,
        what: &str,
        group: bool,
    ) -> Result<(), Error> {
        let info = self.info();
        let addr = self.addr.to_string();
        // For a group bind, rules see every device that would be moved.
        let members = if group {
            info.as_ref()
                .map(|i| {
                    i.iommu_group_members
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        let vendor = info
            .as_ref()
            .map(|i| format!("{:04x}", i.vendor_id))
            .unwrap_or_default();
        let device = info
            .as_ref()
            .map(|i| format!("{:04x}", i.device_id))
            .unwrap_or_default();
        let mut details = vec![
            ("pci.address", addr.as_str()),
            ("pci.vendor", vendor.as_str()),
            ("pci.device", device.as_str()),
        ];
        if group {
            details.push(("pci.group_members", members.as_str()));
        }
        self.ctx
            .auth
            .check(
                header,
                Action::PciAssign,
                &details,
                &format!("{what} the host PCI device {addr}"),
            )
            .await
    }
}

#[interface(name = "org.vapor.Virtualization.PciDevice", proxy(visibility = "pub"))]
impl PciDevice {
    /// Every reason this device cannot be given to the VM (name or UUID), as
    /// (code, message) pairs; empty when it can. No side effects. Options:
    /// `rom_file` (s), `with` (as: other addresses assigned in the same
    /// request, e.g. the GPU's audio function), `force` (b: accept a device
    /// the host seems to need).
    #[zbus(out_args("problems"))]
    async fn check_assignment(
        &self,
        #[zbus(header)] header: Header<'_>,
        vm: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<Vec<(String, String)>, Error> {
        options::text("vm", vm, crate::text::TextRule::NAME)?;
        options::known(&options, &["rom_file", "with", "force"])?;
        self.ctx
            .auth
            .check(
                &header,
                Action::Read,
                &[("pci.address", &self.addr.to_string())],
                "check PCI devices",
            )
            .await?;
        let rec = self
            .ctx
            .model
            .find(vm)
            .ok_or_else(|| Error::NotFound(format!("no virtual machine named '{vm}'")))?;
        let with: Vec<PciAddress> = match options.get("with") {
            None => Vec::new(),
            Some(v) => Vec::<String>::try_from(v.clone())
                .map_err(|_| {
                    Error::InvalidArgument("options.with: must be an array of strings (as)".into())
                })?
                .iter()
                .map(|s| {
                    s.parse()
                        .map_err(|e| Error::InvalidArgument(format!("options.with: {e}")))
                })
                .collect::<Result<_, _>>()?,
        };
        let problems = self.ctx.pci.check(
            &self.addr,
            Some(&rec.uuid),
            &rec.name,
            options::string(&options, "rom_file")?.map(Into::into),
            &with,
            options::flag(&options, "force")?,
        );
        Ok(problems
            .into_iter()
            .map(|p| (p.code.to_owned(), p.message))
            .collect())
    }

    /// Bind this device to vfio-pci (driver_override, unbind, drivers_probe),
    /// remembering its driver. Options: `group` (b: the whole IOMMU group),
    /// `persistent` (b: re-apply whenever the device appears, like driverctl).
    /// Returns (address, previous driver) for every device moved.
    #[zbus(out_args("moved"))]
    async fn bind_to_vfio(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<Vec<(String, String)>, Error> {
        options::known(&options, &["group", "persistent"])?;
        let group = options::flag(&options, "group")?;
        self.authorize_assign(&header, "bind to vfio-pci", group)
            .await?;
        let moved = self
            .ctx
            .pci
            .bind_vfio(
                self.addr,
                options::flag(&options, "group")?,
                options::flag(&options, "persistent")?,
            )
            .await?;
        Ok(moved.into_iter().map(|(a, d)| (a.to_string(), d)).collect())
    }

    /// Give the device back to its own driver (clears any persistent
    /// override). Returns the driver bound now.
    #[zbus(out_args("driver"))]
    async fn restore_driver(&self, #[zbus(header)] header: Header<'_>) -> Result<String, Error> {
        self.authorize_assign(&header, "restore the driver of", false)
            .await?;
        Ok(self.ctx.pci.restore_driver(self.addr).await?)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "Address")]
    fn address(&self) -> String {
        self.addr.to_string()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "VendorId")]
    fn vendor_id(&self) -> u16 {
        self.info().map(|i| i.vendor_id).unwrap_or(0)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "DeviceId")]
    fn device_id(&self) -> u16 {
        self.info().map(|i| i.device_id).unwrap_or(0)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "VendorName")]
    fn vendor_name(&self) -> String {
        self.info().map(|i| i.vendor_name).unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "DeviceName")]
    fn device_name(&self) -> String {
        self.info().map(|i| i.device_name).unwrap_or_default()
    }

    /// 24-bit class code (0x030000 = VGA controller).
    #[zbus(property(emits_changed_signal = "const"), name = "Class")]
    fn class(&self) -> u32 {
        self.info().map(|i| i.class).unwrap_or(0)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "ClassName")]
    fn class_name(&self) -> String {
        self.info().map(|i| i.class_name).unwrap_or_default()
    }

    /// The bound driver; empty when unbound.
    #[zbus(property(emits_changed_signal = "true"), name = "Driver")]
    fn driver(&self) -> String {
        self.info().and_then(|i| i.driver).unwrap_or_default()
    }

    /// IOMMU group number, -1 when the IOMMU is off.
    #[zbus(property(emits_changed_signal = "true"), name = "IommuGroup")]
    fn iommu_group(&self) -> i32 {
        self.info()
            .and_then(|i| i.iommu_group)
            .map(|g| g as i32)
            .unwrap_or(-1)
    }

    /// The other devices of the IOMMU group.
    #[zbus(property(emits_changed_signal = "true"), name = "IommuGroupMembers")]
    fn iommu_group_members(&self) -> Vec<String> {
        self.info()
            .map(|i| {
                i.iommu_group_members
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// NUMA node, -1 when unknown.
    #[zbus(property(emits_changed_signal = "const"), name = "NumaNode")]
    fn numa_node(&self) -> i32 {
        self.info().and_then(|i| i.numa_node).unwrap_or(-1)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "SriovTotalVfs")]
    fn sriov_total_vfs(&self) -> u32 {
        self.info().map(|i| i.sriov_total_vfs).unwrap_or(0)
    }

    #[zbus(property(emits_changed_signal = "true"), name = "SriovNumVfs")]
    fn sriov_num_vfs(&self) -> u32 {
        self.info().map(|i| i.sriov_num_vfs).unwrap_or(0)
    }

    /// For an SR-IOV virtual function: its physical function; else empty.
    #[zbus(property(emits_changed_signal = "const"), name = "PhysicalFunction")]
    fn physical_function(&self) -> String {
        self.info()
            .and_then(|i| i.physical_function)
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "IsBridge")]
    fn is_bridge(&self) -> bool {
        self.info().is_some_and(|i| i.is_bridge)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "ResetMethods")]
    fn reset_methods(&self) -> Vec<String> {
        self.info().map(|i| i.reset_methods).unwrap_or_default()
    }

    /// VMs whose definitions reference this device, running or not.
    #[zbus(property(emits_changed_signal = "true"), name = "AssignedTo")]
    fn assigned_to(&self) -> Vec<OwnedObjectPath> {
        self.assigned_paths()
    }

    /// The names of those VMs.
    #[zbus(property(emits_changed_signal = "true"), name = "AssignedToNames")]
    fn assigned_to_names(&self) -> Vec<String> {
        self.ctx
            .pci
            .assigned_to(&self.addr)
            .into_iter()
            .map(|(_, n)| crate::text::for_bus(&n).into_owned())
            .collect()
    }

    /// Whether the host needs this device (see HostCriticalReasons).
    #[zbus(property(emits_changed_signal = "true"), name = "HostCritical")]
    fn host_critical(&self) -> bool {
        self.info().is_some_and(|i| !i.host_critical.is_empty())
    }

    /// Why: backs a mounted filesystem, carries the default route, drives the console.
    #[zbus(property(emits_changed_signal = "true"), name = "HostCriticalReasons")]
    fn host_critical_reasons(&self) -> Vec<String> {
        self.info().map(|i| i.host_critical).unwrap_or_default()
    }

    /// The driver vapord remembered before moving the device to vfio-pci.
    #[zbus(property(emits_changed_signal = "true"), name = "OriginalDriver")]
    fn original_driver(&self) -> String {
        self.ctx.pci.original_driver(&self.addr).unwrap_or_default()
    }

    /// A driver re-applied whenever the device appears (driverctl style).
    #[zbus(property(emits_changed_signal = "true"), name = "PersistentOverride")]
    fn persistent_override(&self) -> String {
        self.ctx
            .pci
            .persistent_override(&self.addr)
            .unwrap_or_default()
    }
}
