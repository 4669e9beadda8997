//! What vapord does, independent of how it is asked: VM creation and
//! templates, VM lifecycle, deletion with storage ownership rules,
//! description, consoles, storage, networks and PCI devices. Services talk
//! to libvirt only through the typed port of [`crate::libvirt`] (never the
//! `virt` crate itself), plan with the pure modules of [`crate::creation`], and keep
//! [`crate::model::Model`] current after every change; they know nothing
//! about D-Bus or polkit.

pub mod apply;
pub mod apply_doc;
pub mod apply_rules;
pub mod backup;
pub mod backup_repo;
pub mod console;
mod console_proxy;
pub mod creation;
pub mod follow;
pub mod guest;
pub mod migration;
pub mod migration_rules;
pub mod network;
pub mod nfs_rules;
pub mod pci;
pub mod references;
pub mod rollback;
pub mod snapshot;
pub mod snapshot_rules;
pub mod storage;
pub mod storage_ownership;
pub mod storage_rules;
pub mod storage_transfers;
pub mod vm;
pub mod vm_change;
pub mod vm_clone;
pub mod vm_clone_plan;
pub mod vm_devices;
pub mod vm_devices_spec;
pub mod vm_update;

pub use vm::{DeleteOptions, DeleteReport, LifecycleAction, VmService};
