//! Integration tests through the real system bus against real libvirtd, real
//! polkitd and real users. Run `tests/env/setup.sh` first (`.ci/run` does).

mod common;

mod cli;
mod cli_storage;
mod create;
mod delete;
mod escapes;
mod events;
mod hostile;
mod introspection;
mod lifecycle;
mod limits;
mod network;
mod pci_real;
mod polkit_access;
mod storage;
