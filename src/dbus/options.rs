//! Reading `a{sv}` option dictionaries: unknown keys and wrong types are
//! refused with InvalidArgument naming `options.<key>`.

use std::collections::HashMap;

use zbus::OwnedVariant;

use super::Error;
use crate::pci::PciAddress;
use crate::text::TextRule;

pub type Options = HashMap<String, OwnedVariant>;

/// Refuse keys outside `known` (and keys that are not acceptable text, so
/// the error naming them is safe to send).
pub fn known(options: &Options, known: &[&str]) -> Result<(), Error> {
    for k in options.keys() {
        crate::text::check("options", k, TextRule::LINE)?;
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
        Some(v) => {
            let s = String::try_from(v.clone()).map_err(|_| {
                Error::InvalidArgument(format!("options.{key}: must be a string (s)"))
            })?;
            crate::text::check(&format!("options.{key}"), &s, TextRule::LINE)?;
            Ok(Some(s))
        }
    }
}

/// A list of strings.
pub fn strings(options: &Options, key: &str) -> Result<Vec<String>, Error> {
    match options.get(key) {
        None => Ok(Vec::new()),
        Some(v) => {
            let list = Vec::<String>::try_from(v.clone()).map_err(|_| {
                Error::InvalidArgument(format!("options.{key}: must be an array of strings (as)"))
            })?;
            for (i, s) in list.iter().enumerate() {
                crate::text::check(&format!("options.{key}[{i}]"), s, TextRule::LINE)?;
            }
            Ok(list)
        }
    }
}

/// A string argument, held to `rule` before it goes anywhere (polkit
/// details, logs, errors, libvirt).
pub fn text(field: &str, value: &str, rule: TextRule) -> Result<(), Error> {
    Ok(crate::text::check(field, value, rule)?)
}

/// A PCI address argument or option value.
pub fn pci_address(field: &str, s: &str) -> Result<PciAddress, Error> {
    text(field, s, TextRule::LINE)?;
    s.parse()
        .map_err(|e| Error::InvalidArgument(format!("{field}: {e}")))
}

/// An unsigned 64-bit option (`t`; smaller unsigned integers accepted).
pub fn uint(options: &Options, key: &str) -> Result<Option<u64>, Error> {
    let Some(v) = options.get(key) else {
        return Ok(None);
    };
    u64::try_from(v)
        .or_else(|_| u32::try_from(v).map(u64::from))
        .map(Some)
        .map_err(|_| {
            Error::InvalidArgument(format!("options.{key}: must be an unsigned integer (t)"))
        })
}
