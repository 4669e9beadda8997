//! What vapord does, independent of how it is asked: VM lifecycle, deletion
//! with storage ownership rules, description. Services talk to libvirt through
//! [`crate::libvirt::Hypervisor`] and keep [`crate::model::Model`] current after
//! every change; they know nothing about D-Bus or polkit.

pub mod follow;
pub mod network;
pub mod pci;
pub mod references;
pub mod rollback;
pub mod storage;
pub mod storage_ownership;
pub mod vm;

pub use vm::{DeleteOptions, DeleteReport, LifecycleAction, VmService};
