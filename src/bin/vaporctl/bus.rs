//! The connection to vapord and the typed clients every command calls
//! through (`vapor::client::proxies`): no method is ever named by a string.

use std::collections::HashMap;

use vapor::client::proxies::{
    self, BackupClient, ManagerClient, NetworkClient, PciDeviceClient, SnapshotClient,
    StoragePoolClient, VirtualMachineClient, VolumeClient,
};
use zbus::fdo::{ObjectManagerProxy, PropertiesProxy};
use zbus::names::InterfaceName;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

use crate::output::{prop_str, Props};
use crate::Failure;

pub const VM: &str = proxies::VIRTUAL_MACHINE_INTERFACE;
pub const PCI: &str = proxies::PCI_DEVICE_INTERFACE;
pub const POOL: &str = proxies::STORAGE_POOL_INTERFACE;
pub const VOLUME: &str = proxies::VOLUME_INTERFACE;
pub const NETWORK: &str = proxies::NETWORK_INTERFACE;
pub const SNAPSHOT: &str = proxies::SNAPSHOT_INTERFACE;
pub const BACKUP: &str = proxies::BACKUP_INTERFACE;

/// The bus connection and whether calls let polkit ask for a password
/// (`ALLOW_INTERACTIVE_AUTHORIZATION`; off with `--no-ask-password`).
pub struct Client {
    pub conn: Connection,
    ask: bool,
}

impl Client {
    pub fn new(conn: Connection, allow_interactive_auth: bool) -> Self {
        Client {
            conn,
            ask: allow_interactive_auth,
        }
    }

    pub async fn manager(&self) -> Result<ManagerClient<'static>, Failure> {
        Ok(ManagerClient::new(&self.conn, proxies::MANAGER_PATH, self.ask).await?)
    }

    /// The object path of the VM with this name or UUID.
    pub async fn vm_path(&self, name: &str) -> Result<OwnedObjectPath, Failure> {
        Ok(self.manager().await?.lookup_virtual_machine(name).await?)
    }

    /// The VM with this name or UUID.
    pub async fn vm(&self, name: &str) -> Result<VirtualMachineClient<'static>, Failure> {
        let path = self.vm_path(name).await?;
        self.vm_at(path).await
    }

    /// The VM at this object path.
    pub async fn vm_at(
        &self,
        path: OwnedObjectPath,
    ) -> Result<VirtualMachineClient<'static>, Failure> {
        Ok(VirtualMachineClient::new(&self.conn, path, self.ask).await?)
    }

    pub async fn backup_at(&self, path: &str) -> Result<BackupClient<'static>, Failure> {
        Ok(BackupClient::new(&self.conn, path.to_owned(), self.ask).await?)
    }

    pub async fn snapshot_at(&self, path: &str) -> Result<SnapshotClient<'static>, Failure> {
        Ok(SnapshotClient::new(&self.conn, path.to_owned(), self.ask).await?)
    }

    pub async fn pci_at(&self, path: String) -> Result<PciDeviceClient<'static>, Failure> {
        Ok(PciDeviceClient::new(&self.conn, path, self.ask).await?)
    }

    /// The object path of the pool with this name or UUID.
    pub async fn pool_path(&self, name: &str) -> Result<OwnedObjectPath, Failure> {
        Ok(self.manager().await?.lookup_storage_pool(name).await?)
    }

    /// The pool with this name or UUID.
    pub async fn pool(&self, name: &str) -> Result<StoragePoolClient<'static>, Failure> {
        let path = self.pool_path(name).await?;
        Ok(StoragePoolClient::new(&self.conn, path, self.ask).await?)
    }

    pub async fn volume_at(&self, path: &str) -> Result<VolumeClient<'static>, Failure> {
        Ok(VolumeClient::new(&self.conn, path.to_owned(), self.ask).await?)
    }

    /// The object path of the network with this name or UUID.
    pub async fn network_path(&self, name: &str) -> Result<OwnedObjectPath, Failure> {
        Ok(self.manager().await?.lookup_network(name).await?)
    }

    /// The network with this name or UUID.
    pub async fn network(&self, name: &str) -> Result<NetworkClient<'static>, Failure> {
        let path = self.network_path(name).await?;
        Ok(NetworkClient::new(&self.conn, path, self.ask).await?)
    }

    /// Every object vapord publishes with all its properties, in one call.
    pub async fn objects(&self) -> Result<Objects, Failure> {
        let om = ObjectManagerProxy::builder(&self.conn)
            .destination(proxies::SERVICE)
            .path(proxies::MANAGER_PATH)
            .build()
            .await?;
        let managed = om.get_managed_objects().await?;
        Ok(Objects(
            managed
                .into_iter()
                .map(|(path, ifaces)| {
                    let ifaces = ifaces
                        .into_iter()
                        .map(|(name, props)| (name.to_string(), props))
                        .collect();
                    (path.as_str().to_owned(), ifaces)
                })
                .collect(),
        ))
    }

    /// All properties of one interface of one object.
    pub async fn properties(
        &self,
        path: String,
        iface: &'static str,
    ) -> Result<HashMap<String, OwnedVariant>, Failure> {
        let p = PropertiesProxy::builder(&self.conn)
            .destination(proxies::SERVICE)
            .path(path)
            .build()
            .await?;
        Ok(p.get_all(InterfaceName::from_static_str_unchecked(iface))
            .await?)
    }
}

/// GetManagedObjects' answer: object path → interface → properties.
pub struct Objects(HashMap<String, HashMap<String, Props>>);

impl Objects {
    /// Every object with this interface: (path, properties), sorted by the
    /// `Name` property.
    pub fn of(&self, iface: &str) -> Vec<(&str, &Props)> {
        let mut v: Vec<(&str, &Props)> = self
            .0
            .iter()
            .filter_map(|(path, ifaces)| Some((path.as_str(), ifaces.get(iface)?)))
            .collect();
        v.sort_by_key(|(path, props)| (prop_str(props, "Name"), *path));
        v
    }

    pub fn get(&self, path: &str, iface: &str) -> Option<&Props> {
        self.0.get(path)?.get(iface)
    }

    /// The `Name` of whatever object lives at `path`, if it has one.
    pub fn name_of(&self, path: &str) -> Option<String> {
        self.0
            .get(path)?
            .values()
            .map(|props| prop_str(props, "Name"))
            .find(|n| !n.is_empty())
    }

    /// Object paths as names for people (the path itself when unknown).
    pub fn names(&self, paths: &[String]) -> Vec<String> {
        paths
            .iter()
            .filter(|p| p.as_str() != "/")
            .map(|p| self.name_of(p).unwrap_or_else(|| p.clone()))
            .collect()
    }
}
