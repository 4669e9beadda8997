//! Keeping the storage, network, snapshot and reference caches current:
//! libvirt's pool and network events re-read what they name, domain events
//! re-read what that domain uses and its snapshots, a (re)connect re-reads everything, and a slow
//! periodic re-read catches what libvirt has no event for (a volume made
//! with `virsh vol-create` behind vapord's back).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::network::NetworkService;
use super::references::References;
use super::snapshot::SnapshotService;
use super::storage::StorageService;
use crate::model::Model;

/// The services that follow libvirt besides the VM model.
#[derive(Clone)]
pub struct Followers {
    pub refs: Arc<References>,
    pub storage: Arc<StorageService>,
    pub networks: Arc<NetworkService>,
    pub snapshots: Arc<SnapshotService>,
}

impl Followers {
    /// Read everything once (failures are logged; the followers retry).
    pub async fn load(&self) {
        if let Err(e) = self.refs.load_all().await {
            log::warn!("cannot read what the VMs use yet: {e}");
        }
        if let Err(e) = self.storage.resync().await {
            log::warn!("cannot read storage pools yet: {e}");
        }
        if let Err(e) = self.networks.resync().await {
            log::warn!("cannot read virtual networks yet: {e}");
        }
        if let Err(e) = self.snapshots.resync().await {
            log::warn!("cannot read snapshots yet: {e}");
        }
    }

    /// Follow libvirt for as long as the daemon runs. `full_every`: the
    /// period of the complete re-read (zero: never).
    pub fn spawn(&self, model: &Arc<Model>, full_every: Duration) {
        let mut pools = model.pools_touched();
        let storage = self.storage.clone();
        tokio::spawn(async move {
            loop {
                match pools.recv().await {
                    Ok(uuid) => {
                        if let Err(e) = storage.resync_pool(&uuid).await {
                            log::debug!("cannot re-read storage pool {uuid}: {e}");
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = storage.resync().await;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let mut nets = model.networks_touched();
        let networks = self.networks.clone();
        tokio::spawn(async move {
            loop {
                match nets.recv().await {
                    Ok(uuid) => {
                        if let Err(e) = networks.resync_one(&uuid).await {
                            log::debug!("cannot re-read network {uuid}: {e}");
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = networks.resync().await;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let mut domains = model.touched();
        let refs = self.refs.clone();
        tokio::spawn(async move {
            loop {
                match domains.recv().await {
                    Ok(uuid) => refs.refresh(&uuid).await,
                    Err(RecvError::Lagged(_)) => {
                        let _ = refs.load_all().await;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        // Snapshots follow in a task of their own, so reading them never
        // delays what the domains use (which hotplug checks rely on).
        let mut domains = model.touched();
        let snapshots = self.snapshots.clone();
        tokio::spawn(async move {
            loop {
                match domains.recv().await {
                    Ok(uuid) => {
                        if let Err(e) = snapshots.resync_vm(&uuid).await {
                            log::debug!(vm_uuid = uuid.as_str(); "cannot re-read snapshots: {e}");
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let _ = snapshots.resync().await;
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        let mut changes = self.refs.changes();
        let (storage, networks) = (self.storage.clone(), self.networks.clone());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                storage.references_changed();
                networks.references_changed();
            }
        });
        let mut connected = model.connected();
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = (!full_every.is_zero()).then(|| {
                let mut t = tokio::time::interval(full_every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            loop {
                let periodic = async {
                    match tick.as_mut() {
                        Some(t) => {
                            t.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = connected.changed() => {
                        if r.is_err() { return; }
                        if *connected.borrow() { this.load().await; }
                    }
                    _ = periodic => {
                        if *connected.borrow() {
                            let _ = this.storage.resync().await;
                            let _ = this.networks.resync().await;
                            let _ = this.snapshots.resync().await;
                        }
                    }
                }
            }
        });
    }
}
