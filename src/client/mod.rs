//! The client side of vapord's D-Bus API: typed proxies for every interface
//! in `dbus/*.xml`, used by vaporctl (and tests), so the compiler checks
//! every call against the interface.

pub mod proxies;

#[cfg(test)]
mod proxies_tests;
