//! vapord: a polkit-guarded system D-Bus daemon over libvirt.
//!
//! Layers, in one direction of dependency (checked by `layering_tests`):
//! - [`dbus`]: the bus surface (parse, authorize, call a service, map errors);
//! - [`services`]: what vapord does (VM creation and templates, lifecycle,
//!   deletion, description, storage, networks, PCI devices);
//! - [`creation`] (pure planning of a VM), [`storage`] and [`network`]
//!   (specs turned into XML), and [`model`], the event-fed cache of every
//!   domain, with [`metrics`] (rates and sample rings of running VMs);
//! - [`libvirt`]: the typed port over the libvirt C library.
//!
//! Beside them, [`text`] holds the rules for caller-supplied text: what may
//! reach bus messages, polkit details, XML, paths, logs and files.

pub mod base64;
pub mod client;
pub mod config;
pub mod creation;
pub mod daemon;
pub mod dbus;
pub mod error;
pub mod fsutil;
pub mod image;
pub mod intent;
pub mod libvirt;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod network;
pub mod pci;
pub mod process;
pub mod progress;
pub mod recovery;
pub mod services;
pub mod storage;
pub mod store;
pub mod text;

pub use error::{Error, Result};

#[cfg(test)]
mod layering_tests;
