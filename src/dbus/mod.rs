//! The D-Bus surface: one file per interface, one authorization helper, one
//! error table. Handlers parse arguments, authorize the caller through polkit,
//! call a service and map its error; they never talk to libvirt themselves.

pub mod backup;
pub mod errors;
pub mod introspection;
pub mod job;
pub mod managed;
pub mod manager;
pub mod network;
pub mod object;
pub mod options;
pub mod pci;
pub mod polkit;
pub mod snapshot;
pub mod storage;
pub mod vm;
pub mod vm_metrics;
pub mod volume;

pub use errors::Error;

/// The well-known name vapord owns.
pub const BUS_NAME: &str = "org.vapor.Virtualization";
/// The root object: Manager + ObjectManager.
pub const ROOT_PATH: &str = "/org/vapor/Virtualization";
pub const MANAGER_IFACE: &str = "org.vapor.Virtualization.Manager";
pub const VM_IFACE: &str = "org.vapor.Virtualization.VirtualMachine";
pub const PCI_IFACE: &str = "org.vapor.Virtualization.PciDevice";

/// Object path of the object of `kind` (`vm`, `pool`, `network`) with
/// this UUID (`-` is not allowed in paths).
pub fn uuid_path(kind: &str, uuid: &str) -> String {
    format!("{ROOT_PATH}/{kind}/{}", uuid.replace('-', "_"))
}

/// Object path of the VM with this UUID.
pub fn vm_path(uuid: &str) -> String {
    uuid_path("vm", uuid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vm_paths_are_valid_object_paths() {
        let p = super::vm_path("0b7f5a2e-0000-4000-8000-000000000001");
        assert_eq!(
            p,
            "/org/vapor/Virtualization/vm/0b7f5a2e_0000_4000_8000_000000000001"
        );
        assert!(zbus::ObjectPath::try_from(p.as_str()).is_ok());
    }
}
