//! The rules for single values of a network spec: names, interface and
//! DNS names, MAC addresses, and where an address may lie in a subnet.
//! Each answers why a value is refused, in words that follow its field path.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::MAX_NAME_CHARS;
use crate::text;

/// Longest bridge or device name (the kernel's IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// An IPv4 address that can be on a network at all.
pub(super) fn rule_v4(s: &str) -> std::result::Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| "must be an IPv4 address like 192.168.100.1")?;
    let why = if ip.is_unspecified() {
        "must not be the unspecified address"
    } else if ip.is_loopback() {
        "must not be a loopback address"
    } else if ip.is_multicast() {
        "must not be a multicast address"
    } else if ip.octets()[0] >= 240 {
        "must not be a reserved or broadcast address (240.0.0.0/4)"
    } else {
        return Ok(ip);
    };
    Err(why.into())
}

pub(super) fn rule_v6(s: &str) -> std::result::Result<Ipv6Addr, String> {
    let ip: Ipv6Addr = s
        .parse()
        .map_err(|_| "must be an IPv6 address like fd00:1::1")?;
    let why = if ip.is_unspecified() {
        "must not be the unspecified address"
    } else if ip.is_loopback() {
        "must not be the loopback address"
    } else if ip.is_multicast() {
        "must not be a multicast address"
    } else {
        return Ok(ip);
    };
    Err(why.into())
}

fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Why `ip` is not a host address of a /`prefix` subnet it is in.
pub(super) fn not_host4(ip: Ipv4Addr, prefix: u8) -> Option<&'static str> {
    let host = u32::from(ip) & !mask4(prefix);
    if host == 0 {
        Some("must be a host address, not the subnet's network address")
    } else if host == !mask4(prefix) {
        Some("must be a host address, not the subnet's broadcast address")
    } else {
        None
    }
}

/// Why `ip` is not a guest address of the subnet of `net` (the network's own
/// address) / `prefix`; `what` names the subnet.
pub(super) fn outside(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8), what: &str) -> Option<String> {
    if (u32::from(ip) ^ u32::from(net)) & mask4(prefix) != 0 {
        Some(format!("must be inside the network's subnet ({what})"))
    } else if ip == net {
        Some("must not be the network's own address".into())
    } else {
        not_host4(ip, prefix).map(String::from)
    }
}

/// How messages name the subnet: by its fields in a spec (`at` set), by
/// its value for a live entry.
pub(super) fn subnet_words(at: &str, subnet: Option<(Ipv4Addr, u8)>) -> String {
    match subnet {
        Some((net, prefix)) if at.is_empty() => format!("{net}/{prefix}"),
        _ => "ipv4.address/ipv4.prefix".into(),
    }
}

/// `aa:bb:cc:dd:ee:ff` in lower case, or why not.
pub(super) fn normal_mac(s: &str) -> std::result::Result<String, String> {
    let octets: Vec<u8> = s
        .split(':')
        .map(
            |o| match o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()) {
                true => u8::from_str_radix(o, 16).ok(),
                false => None,
            },
        )
        .collect::<Option<_>>()
        .filter(|o: &Vec<u8>| o.len() == 6)
        .ok_or("must be a MAC address like 52:54:00:12:34:56")?;
    if octets[0] & 1 == 1 {
        return Err("must be a unicast MAC address (the first octet's lowest bit clear)".into());
    }
    if octets.iter().all(|&o| o == 0) {
        return Err("must not be the all-zero MAC address".into());
    }
    Ok(s.to_ascii_lowercase())
}

/// Why `s` is not a network name.
pub(super) fn name_problem(s: &str) -> Option<String> {
    let why = if s.is_empty() {
        "must not be empty"
    } else if s.chars().count() > MAX_NAME_CHARS {
        return Some(format!("must be at most {MAX_NAME_CHARS} characters"));
    } else if let Some(why) = text::problem(s, false) {
        return Some(why);
    } else if s == "." || s == ".." {
        "must not be '.' or '..'"
    } else if s.contains('/') {
        "must not contain '/'"
    } else if s.contains(['<', '>', '&', '\'', '"']) {
        "must not contain <, >, &, ' or \""
    } else if s.starts_with(['-', '.']) {
        "must not start with '-' or '.'"
    } else {
        return None;
    };
    Some(why.into())
}

/// Why `s` is not a DNS name (labels of letters, digits and '-', 1-63 each,
/// not starting or ending with '-', at most 253 in all). A host name
/// (`host`) may be empty and must start with a letter, as libvirt wants.
pub(super) fn dns_problem(s: &str, host: bool) -> Option<&'static str> {
    if s.is_empty() {
        return (!host).then_some("must not be empty");
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.len() > 253 || !s.split('.').all(label_ok) {
        return Some(if host {
            "must be a host name: dot-separated labels of letters, digits and '-' \
             (1-63 each, no leading or trailing '-'), at most 253 characters"
        } else {
            "must be a DNS name: dot-separated labels of letters, digits and '-' \
             (1-63 each, no leading or trailing '-'), at most 253 characters"
        });
    }
    if host && !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("must start with a letter");
    }
    None
}

/// Why `s` is not an interface name this spec allows: 1-15 letters,
/// digits, '_', '.', '-', not '.' or '..'.
pub(super) fn ifname_problem(s: &str) -> Option<&'static str> {
    let ok = (1..=MAX_IFNAME).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s != "."
        && s != "..";
    (!ok).then_some(
        "must be an interface name: 1-15 letters, digits, '_', '.', '-' (not '.' or '..')",
    )
}
