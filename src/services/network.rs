//! Virtual networks: the event-fed cache behind their bus objects, and
//! every change a caller may ask for.
//!
//! The cache follows libvirt's network lifecycle events, re-reads a network
//! after every operation vapord performs on it and everything after a
//! (re)connect; `UsedBy` follows what the domains use ([`References`]).
//! Stopping or deleting a network a running VM is on is refused, naming
//! the VMs. This module knows nothing about D-Bus or polkit.

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::references::References;
use crate::libvirt::network::{DhcpLease, NetworkRecord};
use crate::libvirt::Hypervisor;
use crate::network::spec::{self, NetworkSpec};
use crate::store::{Change, Keyed, Store};
use crate::{Error, Result};

/// A network as published: libvirt's record and the VMs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkView {
    pub rec: NetworkRecord,
    /// Domains (uuid, name) with an interface on it, by name.
    pub used_by: Vec<(String, String)>,
}

impl Keyed for NetworkView {
    fn key(&self) -> &str {
        &self.rec.uuid
    }
}

pub type NetworkChange = Change<NetworkView>;

pub struct NetworkService {
    hv: Arc<Hypervisor>,
    refs: Arc<References>,
    networks: Store<NetworkView>,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl NetworkService {
    pub fn new(
        hv: Arc<Hypervisor>,
        refs: Arc<References>,
    ) -> (Arc<Self>, UnboundedReceiver<NetworkChange>) {
        let (networks, rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let svc = Arc::new(Self {
            hv,
            refs,
            networks,
            refresh_lock: tokio::sync::Mutex::new(()),
        });
        (svc, rx)
    }

    pub fn get(&self, uuid: &str) -> Option<Arc<NetworkView>> {
        self.networks.get(uuid)
    }

    /// A network by UUID or name.
    pub fn find(&self, name_or_uuid: &str) -> Option<Arc<NetworkView>> {
        self.networks
            .get(name_or_uuid)
            .or_else(|| self.networks.find(|n| n.rec.name == name_or_uuid))
    }

    /// Every network, by name.
    pub fn all(&self) -> Vec<Arc<NetworkView>> {
        let mut v = self.networks.all();
        v.sort_by(|a, b| a.rec.name.cmp(&b.rec.name));
        v
    }

    fn need(&self, uuid: &str) -> Result<Arc<NetworkView>> {
        self.get(uuid)
            .ok_or_else(|| Error::NotFound(format!("network {uuid} no longer exists")))
    }

    fn view(&self, rec: NetworkRecord) -> NetworkView {
        NetworkView {
            used_by: self.refs.users_of_network(&rec.name),
            rec,
        }
    }

    /// Re-read every network.
    pub async fn resync(&self) -> Result<()> {
        let _serial = self.refresh_lock.lock().await;
        let ticket = self.networks.ticket();
        let all = self.hv.network_listing().await?;
        let views = all.into_iter().map(|r| self.view(r)).collect();
        self.networks.replace_scope(views, |_| true, ticket);
        Ok(())
    }

    /// Re-read one network (after an event or an operation).
    pub async fn resync_one(&self, uuid: &str) -> Result<()> {
        let _serial = self.refresh_lock.lock().await;
        let ticket = self.networks.ticket();
        let rec = self.hv.network_record(uuid).await?;
        self.networks.apply(uuid, rec.map(|r| self.view(r)), ticket);
        Ok(())
    }

    async fn settle(&self, uuid: &str) {
        if let Err(e) = self.resync_one(uuid).await {
            log::debug!("cannot re-read network {uuid}: {e}");
        }
    }

    /// What the domains use changed: recompute UsedBy.
    pub fn references_changed(&self) {
        let ticket = self.networks.ticket();
        for n in self.networks.all() {
            let used_by = self.refs.users_of_network(&n.rec.name);
            if used_by != n.used_by {
                let mut new = (*n).clone();
                new.used_by = used_by;
                self.networks.apply(&n.rec.uuid, Some(new), ticket);
            }
        }
    }

    /// The network XML a spec becomes (the dry run).
    pub fn plan(&self, spec: &NetworkSpec) -> String {
        spec::network_xml(spec)
    }

    /// Define (and start, autostart as asked) a network: all or nothing.
    pub async fn create(&self, spec: &NetworkSpec) -> Result<String> {
        if self.networks.find(|n| n.rec.name == spec.name).is_some() {
            return Err(Error::Conflict(format!(
                "name: a network named '{}' already exists",
                spec.name
            )));
        }
        let uuid = self
            .hv
            .define_network(spec::network_xml(spec), spec.start, spec.autostart)
            .await?;
        self.settle(&uuid).await;
        Ok(uuid)
    }

    pub async fn start(&self, uuid: &str) -> Result<()> {
        self.need(uuid)?;
        let r = self.hv.start_network(uuid).await;
        self.settle(uuid).await;
        r
    }

    async fn refuse_while_running_vms(&self, n: &NetworkView, what: &str) -> Result<()> {
        let running = super::vm::running_among(&self.hv, &n.used_by).await;
        if running.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidState(format!(
                "cannot {what} network '{}': running VMs use it: {}",
                n.rec.name,
                running.join(", ")
            )))
        }
    }

    pub async fn stop(&self, uuid: &str) -> Result<()> {
        let n = self.need(uuid)?;
        self.refuse_while_running_vms(&n, "stop").await?;
        let r = self.hv.stop_network(uuid).await;
        self.settle(uuid).await;
        r
    }

    pub async fn set_autostart(&self, uuid: &str, on: bool) -> Result<()> {
        self.need(uuid)?;
        let r = self.hv.set_network_autostart(uuid, on).await;
        self.settle(uuid).await;
        r
    }

    pub async fn delete(&self, uuid: &str) -> Result<()> {
        let n = self.need(uuid)?;
        self.refuse_while_running_vms(&n, "delete").await?;
        let r = self.hv.undefine_network(uuid).await;
        self.settle(uuid).await;
        r
    }

    pub async fn leases(&self, uuid: &str) -> Result<Vec<DhcpLease>> {
        self.need(uuid)?;
        self.hv.dhcp_leases(uuid).await
    }

    /// Add a static DHCP host entry, live and persistent as the network is.
    pub async fn add_dhcp_host(&self, uuid: &str, mac: &str, ip: &str, name: &str) -> Result<()> {
        let n = self.need(uuid)?;
        let subnet = n
            .rec
            .ipv4_address
            .parse::<Ipv4Addr>()
            .ok()
            .map(|a| (a, n.rec.ipv4_prefix as u8));
        if subnet.is_none() {
            return Err(Error::InvalidState(format!(
                "network '{}' has no IPv4 subnet to hand out addresses from",
                n.rec.name
            )));
        }
        let host = spec::check_dhcp_host(mac, ip, name, subnet)?;
        if let Some((m, i, _)) = n
            .rec
            .dhcp_hosts
            .iter()
            .find(|(m, i, _)| m.eq_ignore_ascii_case(&host.mac) || *i == host.ip.to_string())
        {
            return Err(Error::Conflict(format!(
                "network '{}' already has a DHCP host entry {m} → {i}",
                n.rec.name
            )));
        }
        let ip = host.ip.to_string();
        let r = self
            .hv
            .add_dhcp_host(uuid, &host.mac, &ip, &host.name)
            .await;
        self.settle(uuid).await;
        r
    }

    pub async fn remove_dhcp_host(&self, uuid: &str, mac: &str) -> Result<()> {
        let n = self.need(uuid)?;
        let mac = mac.to_ascii_lowercase();
        if !n
            .rec
            .dhcp_hosts
            .iter()
            .any(|(m, _, _)| m.eq_ignore_ascii_case(&mac))
        {
            return Err(Error::NotFound(format!(
                "mac: network '{}' has no DHCP host entry for {mac}",
                n.rec.name
            )));
        }
        let r = self.hv.remove_dhcp_host(uuid, &mac).await;
        self.settle(uuid).await;
        r
    }
}
