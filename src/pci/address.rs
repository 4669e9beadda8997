//! A PCI address (`DDDD:BB:SS.F`), parsed once and passed around typed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

impl PciAddress {
    /// The object-path element: `0000_01_00_0`.
    pub fn path_element(&self) -> String {
        format!(
            "{:04x}_{:02x}_{:02x}_{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }

    /// The same slot, another function.
    pub fn with_function(&self, function: u8) -> PciAddress {
        PciAddress { function, ..*self }
    }

    /// Whether two addresses are functions of one physical slot.
    pub fn same_slot(&self, other: &PciAddress) -> bool {
        self.domain == other.domain && self.bus == other.bus && self.slot == other.slot
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.slot, self.function
        )
    }
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAddress(pub String);

impl fmt::Display for BadAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a PCI address (expected DDDD:BB:SS.F, e.g. 0000:01:00.0)",
            self.0
        )
    }
}

impl FromStr for PciAddress {
    type Err = BadAddress;

    /// Accepts `DDDD:BB:SS.F` and the short `BB:SS.F` (domain 0).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadAddress(s.to_owned());
        let (head, func) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (dom, bus, slot) = match parts.as_slice() {
            [d, b, s] if d.len() == 4 && b.len() == 2 && s.len() == 2 => (*d, *b, *s),
            [b, s] if b.len() == 2 && s.len() == 2 => ("0000", *b, *s),
            _ => return Err(bad()),
        };
        let hex = |t: &str| {
            if t.chars().all(|c| c.is_ascii_hexdigit()) {
                u32::from_str_radix(t, 16).ok()
            } else {
                None
            }
        };
        let function = hex(func)
            .filter(|f| func.len() == 1 && *f <= 7)
            .ok_or_else(bad)?;
        let slot = hex(slot).filter(|s| *s <= 0x1f).ok_or_else(bad)?;
        Ok(PciAddress {
            domain: hex(dom).ok_or_else(bad)? as u16,
            bus: hex(bus).ok_or_else(bad)? as u8,
            slot: slot as u8,
            function: function as u8,
        })
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms_and_prints_canonically() {
        let a: PciAddress = "0000:01:00.1".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.slot, a.function), (0, 1, 0, 1));
        assert_eq!(a.to_string(), "0000:01:00.1");
        assert_eq!(
            "0A:1f.7".parse::<PciAddress>().unwrap().to_string(),
            "0000:0a:1f.7"
        );
        assert_eq!(a.path_element(), "0000_01_00_1");
    }

    #[test]
    fn refuses_garbage_with_the_expected_form() {
        for bad in [
            "",
            "0000:01:00",
            "0000:01:00.8",
            "0000:01:20.0",
            "zz:00.0",
            "0000:001:00.0",
            "../01:00.0",
        ] {
            let e = bad.parse::<PciAddress>().unwrap_err();
            assert!(e.to_string().contains("DDDD:BB:SS.F"), "{bad}");
        }
    }

    #[test]
    fn same_slot_groups_functions() {
        let gpu: PciAddress = "0000:01:00.0".parse().unwrap();
        assert!(gpu.same_slot(&gpu.with_function(1)));
        assert!(!gpu.same_slot(&"0000:02:00.0".parse().unwrap()));
    }
}
