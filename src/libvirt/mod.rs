//! Adapter over libvirt: the one connection, its event callbacks, bulk stats and
//! domain XML, and the typed port services use: operations on domains
//! ([`domain`]), their serial consoles and displays ([`console`]), storage
//! pools and volumes ([`storage`], their records in [`storage_records`],
//! volume data streams in [`stream`], [`volume`]),
//! networks ([`network`]), snapshots ([`snapshot`]) and the host ([`node`]) that hide libvirt's flags
//! and hand back plain data. Everything here is blocking C underneath; the
//! async operations on [`Hypervisor`] move the work off the async runtime,
//! and a [`Session`] ([`Hypervisor::session`], [`Hypervisor::on_domain`])
//! gives typed access for several calls in one blocking section.
//!
//! This layer knows nothing about D-Bus, polkit, services or VM creation
//! (see the `layering` test in `src/layering_tests.rs`).

pub mod agent;
pub mod backup;
pub mod conn;
pub mod console;
mod console_bridge;
pub mod domain;
pub mod domain_change;
pub mod errors;
pub mod events;
pub mod job;
pub mod migration;
pub mod network;
pub mod node;
pub mod records;
pub mod snapshot;
pub mod storage;
pub mod storage_records;
pub mod stream;
pub mod volume;
pub mod xml;
mod xml_edit;

pub use conn::{Hypervisor, HypervisorEvent, Session};
pub use domain::{Definition, Definitions, DeviceScope, DomainAction, DomainRef, Undefine};
pub use records::{DomainRecord, DomainState};
