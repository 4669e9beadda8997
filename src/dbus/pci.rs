//! `org.vapor.Virtualization.PciDevice`: one object per host PCI device at
//! `/org/vapor/Virtualization/pci/<DDDD_BB_SS_F>`. Properties come from the
//! service's udev-fed inventory; every driver action is polkit `pci-assign`
//! with the device's address, vendor and device ids as details.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::interface;
use zbus::message::Header;
use zbus::{OwnedVariant, Variant};

use super::object::{fixed, prop, refresh_shown, vm_paths, Kind, Prop, Shown};
use super::options;
use super::polkit::{Action, Authorizer, Target};
use super::{Error, ROOT_PATH};
use crate::model::Model;
use crate::pci::PciAddress;
use crate::services::pci::{PciRecord, PciService};

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

/// The methods of one PCI device object; properties come from [`PciContext`]'s table.
pub struct PciDevice {
    addr: PciAddress,
    shown: Shown<PciRecord>,
    ctx: Arc<PciContext>,
}

fn addresses(v: &[PciAddress]) -> Variant<'static> {
    Variant::from(v.iter().map(|a| a.to_string()).collect::<Vec<_>>())
}

impl Kind for PciContext {
    type Record = PciRecord;
    type Methods = PciDevice;
    const PROPERTIES: &'static [Prop<PciRecord>] = &[
        fixed("Address", |r| Variant::from(r.info.address.to_string())),
        fixed("VendorId", |r| Variant::from(r.info.vendor_id)),
        fixed("DeviceId", |r| Variant::from(r.info.device_id)),
        fixed("VendorName", |r| Variant::from(r.info.vendor_name.clone())),
        fixed("DeviceName", |r| Variant::from(r.info.device_name.clone())),
        // 24-bit class code (0x030000 = VGA controller).
        fixed("Class", |r| Variant::from(r.info.class)),
        fixed("ClassName", |r| Variant::from(r.info.class_name.clone())),
        // The bound driver; empty when unbound.
        prop("Driver", |r| {
            Variant::from(r.info.driver.clone().unwrap_or_default())
        }),
        // IOMMU group number, -1 when the IOMMU is off; the group's other devices.
        prop("IommuGroup", |r| {
            Variant::from(r.info.iommu_group.map(|g| g as i32).unwrap_or(-1))
        }),
        prop("IommuGroupMembers", |r| {
            addresses(&r.info.iommu_group_members)
        }),
        // NUMA node, -1 when unknown.
        fixed("NumaNode", |r| {
            Variant::from(r.info.numa_node.unwrap_or(-1))
        }),
        fixed("SriovTotalVfs", |r| Variant::from(r.info.sriov_total_vfs)),
        prop("SriovNumVfs", |r| Variant::from(r.info.sriov_num_vfs)),
        // For an SR-IOV virtual function: its physical function; else empty.
        fixed("PhysicalFunction", |r| {
            Variant::from(
                r.info
                    .physical_function
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            )
        }),
        fixed("IsBridge", |r| Variant::from(r.info.is_bridge)),
        fixed("ResetMethods", |r| {
            Variant::from(r.info.reset_methods.clone())
        }),
        // VMs whose definitions reference this device, running or not, and their names.
        prop("AssignedTo", |r| vm_paths(&r.assigned_to)),
        prop("AssignedToNames", |r| {
            Variant::from(
                r.assigned_to
                    .iter()
                    .map(|(_, n)| crate::text::for_bus(n).into_owned())
                    .collect::<Vec<_>>(),
            )
        }),
        // Whether the host needs this device, and why (backs a mounted
        // filesystem, carries the default route, drives the console).
        prop("HostCritical", |r| {
            Variant::from(!r.info.host_critical.is_empty())
        }),
        prop("HostCriticalReasons", |r| {
            Variant::from(r.info.host_critical.clone())
        }),
        prop("OriginalDriver", |r| {
            Variant::from(r.original_driver.clone())
        }),
        prop("PersistentOverride", |r| {
            Variant::from(r.persistent_override.clone())
        }),
    ];

    fn path(rec: &PciRecord) -> String {
        pci_path(&rec.info.address)
    }

    fn methods(self: &Arc<Self>, shown: Shown<PciRecord>) -> PciDevice {
        let addr = super::object::shown(&shown).info.address;
        PciDevice {
            addr,
            shown,
            ctx: self.clone(),
        }
    }

    fn current(&self, rec: &PciRecord) -> Option<Arc<PciRecord>> {
        self.pci.record(&rec.info.address)
    }
}

impl PciDevice {
    async fn authorize_assign(
        &self,
        header: &Header<'_>,
        verb: &str,
        group: bool,
    ) -> Result<(), Error> {
        let rec = super::object::shown(&self.shown);
        // For a group bind, rules see every device that would be moved.
        let members: Vec<String> = rec
            .info
            .iommu_group_members
            .iter()
            .map(|a| a.to_string())
            .collect();
        let members = members.join(",");
        let extra: &[(&str, &str)] = if group {
            &[("pci.group_members", members.as_str())]
        } else {
            &[]
        };
        self.ctx
            .auth
            .check_with(header, Action::PciAssign, &*rec, verb, extra)
            .await
    }
}

impl Target for PciRecord {
    fn describe(&self) -> String {
        format!("the host PCI device {}", self.info.address)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("pci.address", self.info.address.to_string()),
            ("pci.vendor", format!("{:04x}", self.info.vendor_id)),
            ("pci.device", format!("{:04x}", self.info.device_id)),
        ]
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
        let rec = super::object::shown(&self.shown);
        self.ctx
            .auth
            .check(&header, Action::Read, &*rec, "check")
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
            .await;
        // A property read right after the reply already sees the change.
        refresh_shown(&self.shown, self.ctx.pci.record(&self.addr));
        Ok(moved?
            .into_iter()
            .map(|(a, d)| (a.to_string(), d))
            .collect())
    }

    /// Give the device back to its own driver (clears any persistent
    /// override). Returns the driver bound now.
    #[zbus(out_args("driver"))]
    async fn restore_driver(&self, #[zbus(header)] header: Header<'_>) -> Result<String, Error> {
        self.authorize_assign(&header, "restore the driver of", false)
            .await?;
        let driver = self.ctx.pci.restore_driver(self.addr).await;
        refresh_shown(&self.shown, self.ctx.pci.record(&self.addr));
        Ok(driver?)
    }
}
