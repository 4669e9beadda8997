//! Integration tests through the real system bus against real libvirtd, real
//! polkitd and real users. Run `tests/env/setup.sh` first (`.ci/run` does).

mod common;
mod guest;

mod agent;
mod apply;
mod backup;
mod cli;
mod cli_storage;
mod clone;
mod console;
mod create;
mod delete;
mod escapes;
mod events;
mod hostile;
mod hotplug;
mod introspection;
mod lifecycle;
mod limits;
mod metrics;
mod migrate;
mod network;
mod nfs;
mod pci_real;
mod polkit_access;
mod snapshot;
mod storage;
mod update;
