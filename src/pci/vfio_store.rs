//! [`DriverStore`]: what vapord must not forget about drivers across a
//! restart — the driver a device had before it went to vfio-pci, and
//! driverctl-style persistent overrides. One JSON file, replaced atomically.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::VFIO_PCI;
use crate::fsutil::write_atomic;
use crate::pci::address::PciAddress;
use crate::{Error, Result};

/// What vapord remembers about one device's drivers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverRecord {
    /// The driver it had before vapord moved it to vfio-pci.
    pub original_driver: Option<String>,
    /// driverctl-style: bind to this driver whenever the device appears.
    pub persistent_override: Option<String>,
}

/// Original drivers and persistent overrides, kept in
/// `<state_dir>/pci-drivers.json` (written atomically) so they survive a
/// restart of vapord.
#[derive(Debug)]
pub struct DriverStore {
    path: PathBuf,
    records: Mutex<BTreeMap<PciAddress, DriverRecord>>,
}

pub const DRIVER_STORE_FILE: &str = "pci-drivers.json";

impl DriverStore {
    /// Load (or start empty when the file does not exist yet).
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self> {
        let path = state_dir.as_ref().join(DRIVER_STORE_FILE);
        let records = match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                Error::Failed(format!(
                    "{} is not a valid driver record file: {e}",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(Error::Failed(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Self {
            path,
            records: Mutex::new(records),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PciAddress, DriverRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change one record and write the file; memory changes only when the
    /// write succeeded. Empty records are dropped.
    fn update<T>(&self, addr: &PciAddress, f: impl FnOnce(&mut DriverRecord) -> T) -> Result<T> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let rec = next.entry(*addr).or_default();
        let out = f(rec);
        if *rec == DriverRecord::default() {
            next.remove(addr);
        }
        if next != *guard {
            let json = serde_json::to_vec_pretty(&next)
                .map_err(|e| Error::Failed(format!("serializing driver records: {e}")))?;
            write_atomic(&self.path, &json)
                .map_err(|e| Error::Failed(format!("writing {}: {e}", self.path.display())))?;
            *guard = next;
        }
        Ok(out)
    }

    pub fn record(&self, addr: &PciAddress) -> Option<DriverRecord> {
        self.lock().get(addr).cloned()
    }

    pub fn records(&self) -> BTreeMap<PciAddress, DriverRecord> {
        self.lock().clone()
    }

    pub fn original_driver(&self, addr: &PciAddress) -> Option<String> {
        self.lock()
            .get(addr)
            .and_then(|r| r.original_driver.clone())
    }

    /// Remember `driver` unless something is remembered already (or it is
    /// vfio-pci). True when recorded now.
    pub fn remember_original(&self, addr: &PciAddress, driver: &str) -> Result<bool> {
        if driver == VFIO_PCI {
            return Ok(false);
        }
        self.update(addr, |r| {
            if r.original_driver.is_some() {
                false
            } else {
                r.original_driver = Some(driver.to_owned());
                true
            }
        })
    }

    pub fn forget_original(&self, addr: &PciAddress) -> Result<()> {
        self.update(addr, |r| r.original_driver = None)
    }

    pub fn persistent_override(&self, addr: &PciAddress) -> Option<String> {
        self.lock()
            .get(addr)
            .and_then(|r| r.persistent_override.clone())
    }

    /// Remember that `addr` belongs on `driver` (call [`reapply_override`](super::reapply_override)
    /// to apply it now).
    pub fn set_persistent_override(&self, addr: &PciAddress, driver: &str) -> Result<()> {
        let valid = !driver.is_empty()
            && !driver.starts_with('-')
            && driver.len() <= 64
            && driver
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && driver != "."
            && driver != "..";
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "driver: '{driver}' is not a kernel driver name"
            )));
        }
        self.update(addr, |r| r.persistent_override = Some(driver.to_owned()))
    }

    /// True when there was one.
    pub fn clear_persistent_override(&self, addr: &PciAddress) -> Result<bool> {
        self.update(addr, |r| r.persistent_override.take().is_some())
    }
}
