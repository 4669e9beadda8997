//! Turns model changes into bus objects and signals: a new domain becomes an
//! object (InterfacesAdded, from the root ObjectManager), a vanished one is
//! removed (InterfacesRemoved), a changed one emits a single
//! PropertiesChanged carrying every property that differs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc::UnboundedReceiver, watch};
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::Connection;

use super::manager::Manager;
use super::vm::{VirtualMachine, VmContext};
use super::{vm_path, ROOT_PATH, VM_IFACE};
use crate::model::Change;

pub struct Publisher {
    pub conn: Connection,
    pub ctx: Arc<VmContext>,
}

impl Publisher {
    /// Reflect one change on the bus.
    pub async fn apply(&self, change: Change) -> zbus::Result<()> {
        let server = self.conn.object_server();
        match change {
            Change::Added(rec) => {
                let path = vm_path(&rec.uuid);
                server
                    .at(path.as_str(), VirtualMachine::new(rec, self.ctx.clone()))
                    .await?;
            }
            Change::Removed(rec) => {
                // Re-added since? Then the object stays.
                if self.ctx.vms.model().get(&rec.uuid).is_none() {
                    server
                        .remove::<VirtualMachine, _>(vm_path(&rec.uuid).as_str())
                        .await?;
                }
            }
            Change::Changed { new, .. } => {
                let path = vm_path(&new.uuid);
                // Publish the model's newest reading, whatever change brought
                // us here: a stale or reordered change can then never make the
                // object go back in time.
                let Some(new) = self.ctx.vms.model().get(&new.uuid) else {
                    return Ok(());
                };
                let iface = match server.interface::<_, VirtualMachine>(path.as_str()).await {
                    Ok(i) => i,
                    Err(_) => {
                        server
                            .at(path.as_str(), VirtualMachine::new(new, self.ctx.clone()))
                            .await?;
                        return Ok(());
                    }
                };
                let base = iface.get().await.published();
                let changed = VirtualMachine::changed_properties(&base, &new);
                iface.get().await.set_published(new.clone());
                if changed.is_empty() {
                    return Ok(());
                }
                let map: HashMap<&str, zbus::Variant<'_>> = changed.into_iter().collect();
                zbus::fdo::Properties::properties_changed(
                    iface.signal_emitter(),
                    InterfaceName::from_static_str_unchecked(VM_IFACE),
                    map,
                    Cow::Borrowed(&[]),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Apply every change already queued (used before taking the bus name, so
    /// that the first client sees every VM).
    pub async fn drain(&self, rx: &mut UnboundedReceiver<Change>) {
        while let Ok(c) = rx.try_recv() {
            if let Err(e) = self.apply(c).await {
                log::warn!("cannot publish a VM change: {e}");
            }
        }
    }

    /// Follow the model for as long as the daemon runs.
    pub async fn run(
        self,
        mut rx: UnboundedReceiver<Change>,
        mut connected: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => if let Err(e) = self.apply(c).await {
                        log::warn!("cannot publish a VM change: {e}");
                    },
                    None => return,
                },
                r = connected.changed() => {
                    if r.is_err() { return; }
                    if let Ok(iface) = self.conn.object_server().interface::<_, Manager>(ROOT_PATH).await {
                        let emitter: &SignalEmitter<'_> = iface.signal_emitter();
                        let _ = iface.get().await.connected_changed(emitter).await;
                    }
                }
            }
        }
    }
}

/// Reflect host PCI changes on the bus: objects come and go with hotplug;
/// driver, group and assignment changes are one PropertiesChanged each.
pub async fn run_pci(
    conn: Connection,
    ctx: Arc<super::pci::PciContext>,
    mut rx: UnboundedReceiver<crate::services::pci::PciChange>,
) {
    use super::pci::{pci_path, PciDevice};
    use crate::services::pci::PciChange;
    let server = conn.object_server();
    while let Some(change) = rx.recv().await {
        let result: zbus::Result<()> = async {
            match change {
                PciChange::Added(a) => {
                    server
                        .at(pci_path(&a).as_str(), PciDevice::new(a, ctx.clone()))
                        .await?;
                }
                PciChange::Removed(a) => {
                    server.remove::<PciDevice, _>(pci_path(&a).as_str()).await?;
                }
                PciChange::Changed(a) => {
                    let path = pci_path(&a);
                    let Ok(iface) = server.interface::<_, PciDevice>(path.as_str()).await else {
                        return Ok(());
                    };
                    let changed = iface.get().await.take_changes();
                    if changed.is_empty() {
                        return Ok(());
                    }
                    let map: HashMap<&str, zbus::Variant<'_>> =
                        changed.iter().map(|(k, v)| (*k, (**v).clone())).collect();
                    zbus::fdo::Properties::properties_changed(
                        iface.signal_emitter(),
                        InterfaceName::from_static_str_unchecked(super::PCI_IFACE),
                        map,
                        Cow::Borrowed(&[]),
                    )
                    .await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            log::warn!("cannot publish a PCI change: {e}");
        }
    }
}
