//! Reading `a{sv}` option dictionaries: unknown keys and wrong types are
//! refused with InvalidArgument naming `options.<key>`.

use std::collections::HashMap;

use zbus::OwnedVariant;

use super::Error;
use crate::pci::PciAddress;

pub type Options = HashMap<String, OwnedVariant>;

/// Refuse keys outside `known`.
pub fn known(options: &Options, known: &[&str]) -> Result<(), Error> {
    for k in options.keys() {
        if !known.contains(&k.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "options.{k}: unknown option (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// A boolean option, `default` when absent.
pub fn flag_or(options: &Options, key: &str, default: bool) -> Result<bool, Error> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => bool::try_from(v)
            .map_err(|_| Error::InvalidArgument(format!("options.{key}: must be a boolean (b)"))),
    }
}

/// A boolean option, false when absent.
pub fn flag(options: &Options, key: &str) -> Result<bool, Error> {
    flag_or(options, key, false)
}

/// An optional boolean.
pub fn maybe_flag(options: &Options, key: &str) -> Result<Option<bool>, Error> {
    options.get(key).map(|_| flag(options, key)).transpose()
}

/// A string option.
pub fn string(options: &Options, key: &str) -> Result<Option<String>, Error> {
    match options.get(key) {
        None => Ok(None),
        Some(v) => String::try_from(v.clone())
            .map(Some)
            .map_err(|_| Error::InvalidArgument(format!("options.{key}: must be a string (s)"))),
    }
}

/// A list of strings.
pub fn strings(options: &Options, key: &str) -> Result<Vec<String>, Error> {
    match options.get(key) {
        None => Ok(Vec::new()),
        Some(v) => Vec::<String>::try_from(v.clone()).map_err(|_| {
            Error::InvalidArgument(format!("options.{key}: must be an array of strings (as)"))
        }),
    }
}

/// A PCI address argument or option value.
pub fn pci_address(field: &str, s: &str) -> Result<PciAddress, Error> {
    s.parse()
        .map_err(|e| Error::InvalidArgument(format!("{field}: {e}")))
}
