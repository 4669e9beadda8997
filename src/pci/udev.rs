//! Live PCI events from udev: hotplug (`add`/`remove`), driver changes
//! (`bind`/`unbind`) and `change`. The monitor socket is registered before the
//! caller enumerates sysfs, so nothing that happens in between is lost; events
//! are read on the async runtime through `AsyncFd` — nothing is polled.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;

use super::address::PciAddress;

/// One PCI event, by device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PciEvent {
    Added(PciAddress),
    Removed(PciAddress),
    /// Bound to the named driver.
    Bound(PciAddress, Option<String>),
    Unbound(PciAddress),
    Changed(PciAddress),
}

impl PciEvent {
    pub fn address(&self) -> PciAddress {
        match self {
            PciEvent::Added(a)
            | PciEvent::Removed(a)
            | PciEvent::Bound(a, _)
            | PciEvent::Unbound(a)
            | PciEvent::Changed(a) => *a,
        }
    }
}

struct Socket(udev::MonitorSocket);

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A subscribed udev monitor for the `pci` subsystem.
pub struct PciMonitor {
    fd: AsyncFd<Socket>,
}

impl PciMonitor {
    /// Subscribe now (before enumerating). Needs systemd-udevd running.
    pub fn subscribe() -> io::Result<Self> {
        let socket = udev::MonitorBuilder::new()?
            .match_subsystem("pci")?
            .listen()?;
        // SAFETY: the socket owns its fd and lives inside the AsyncFd, which
        // deregisters it before dropping the socket.
        let fd = unsafe {
            AsyncFd::register_with_interest(Socket(socket), tokio::io::Interest::READABLE)
        }
        .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self { fd })
    }

    /// Forward events until `tx` is closed.
    pub async fn run(self, tx: UnboundedSender<PciEvent>) {
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    log::error!("udev monitor failed: {e}");
                    return;
                }
            };
            for event in guard.get_inner().0.iter() {
                let slot = event
                    .property_value("PCI_SLOT_NAME")
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<PciAddress>().ok())
                    .or_else(|| event.sysname().to_str().and_then(|s| s.parse().ok()));
                let Some(addr) = slot else { continue };
                let ev = match event.event_type() {
                    udev::EventType::Add => PciEvent::Added(addr),
                    udev::EventType::Remove => PciEvent::Removed(addr),
                    udev::EventType::Bind => PciEvent::Bound(
                        addr,
                        event
                            .property_value("DRIVER")
                            .and_then(|d| d.to_str())
                            .map(String::from),
                    ),
                    udev::EventType::Unbind => PciEvent::Unbound(addr),
                    udev::EventType::Change => PciEvent::Changed(addr),
                    udev::EventType::Unknown => continue,
                };
                log::debug!(pci_address = addr.to_string().as_str(); "udev: {ev:?}");
                if tx.send(ev).is_err() {
                    return;
                }
            }
            guard.clear_ready();
        }
    }
}
