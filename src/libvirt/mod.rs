//! Adapter over libvirt: the one connection, its event callbacks, bulk stats and
//! domain XML. Everything here is blocking C underneath; callers go through
//! [`Hypervisor::run`], which moves the work off the async runtime.
//!
//! This layer knows nothing about D-Bus or polkit.

pub mod conn;
pub mod errors;
pub mod events;
pub mod network;
pub mod node;
pub mod records;
pub mod storage;
pub mod xml;

pub use conn::{Hypervisor, HypervisorEvent};
pub use records::{DomainRecord, DomainState};
