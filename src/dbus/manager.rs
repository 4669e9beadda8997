//! `org.vapor.Virtualization.Manager` on the root object: finding VMs and the
//! daemon's own state. Enumeration with all properties is
//! `org.freedesktop.DBus.ObjectManager.GetManagedObjects` on the same object.

use std::sync::Arc;

use zbus::interface;
use zbus::message::Header;
use zbus::OwnedObjectPath;

use super::polkit::{Action, Authorizer};
use super::{vm_path, Error};
use crate::model::Model;

pub struct Manager {
    pub model: Arc<Model>,
    pub auth: Arc<Authorizer>,
}

fn path(uuid: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(vm_path(uuid)).expect("VM paths are valid object paths")
}

#[interface(name = "org.vapor.Virtualization.Manager", proxy(visibility = "pub"))]
impl Manager {
    /// The object path of the VM with this name or UUID.
    #[zbus(out_args("vm"))]
    async fn lookup_virtual_machine(
        &self,
        #[zbus(header)] header: Header<'_>,
        name_or_uuid: &str,
    ) -> Result<OwnedObjectPath, Error> {
        self.auth
            .check(
                &header,
                Action::Read,
                &[("vm.name", name_or_uuid)],
                "look up virtual machines",
            )
            .await?;
        self.model
            .find(name_or_uuid)
            .map(|d| path(&d.uuid))
            .ok_or_else(|| Error::NotFound(format!("no virtual machine named '{name_or_uuid}'")))
    }

    /// The object paths of every VM, sorted by name.
    #[zbus(out_args("vms"))]
    async fn list_virtual_machines(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<OwnedObjectPath>, Error> {
        self.auth
            .check(&header, Action::Read, &[], "list virtual machines")
            .await?;
        Ok(self.model.all().iter().map(|d| path(&d.uuid)).collect())
    }

    /// vapord's version.
    #[zbus(property(emits_changed_signal = "const"), name = "Version")]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// The libvirt connection URI vapord manages.
    #[zbus(property(emits_changed_signal = "const"), name = "LibvirtUri")]
    fn libvirt_uri(&self) -> String {
        self.model.hypervisor().uri().to_owned()
    }

    /// Whether vapord is connected to libvirt right now.
    #[zbus(property(emits_changed_signal = "true"), name = "Connected")]
    fn connected(&self) -> bool {
        *self.model.connected().borrow()
    }
}
