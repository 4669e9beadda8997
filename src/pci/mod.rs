//! Host PCI devices: inventory from sysfs, live updates from udev, VFIO
//! viability, driver binding and the hostdev XML for guests. Knows nothing
//! about D-Bus. Only [`sysfs`] touches `/sys`.

pub mod address;
pub mod critical;
/// A fake sysfs tree and kernel for tests: never in a build users get (only
/// unit tests and the `test-fakes` feature, which `tests/run.sh` enables for
/// the test binaries, compile it).
#[cfg(any(test, feature = "test-fakes"))]
pub mod fake;
pub mod hostdev;
pub mod ids;
pub mod inventory;
pub mod sysfs;
pub mod udev;
pub mod vfio;

pub use address::PciAddress;
pub use sysfs::Sysfs;
