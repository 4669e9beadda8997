//! A virtual network as a caller may ask for it: the JSON spec, validated
//! field by field, and the libvirt network XML it becomes. Pure: no libvirt
//! calls (checks that need the host, such as whether a bridge exists, are
//! libvirt's).
//!
//! `dbus/schemas/network-spec.schema.json` describes the same document; the
//! parser here is what decides. Every problem is reported at once, each as
//! `<field path>: <problem>` (`ipv4.dhcp.start: must be inside the network's
//! subnet (ipv4.address/ipv4.prefix)`),
//! sorted and joined with `; `. Messages never echo values, only unknown
//! field names.
//!
//! Rules beyond the per-field ones:
//! - names are 1-64 characters (so never over [`TextRule::NAME`]), with no
//!   `/`, no XML markup characters, no leading `-` or `.`;
//! - mode `bridge` attaches to an existing host bridge: `bridge` required,
//!   no addresses, domain, DHCP hosts or forward device;
//! - mode `nat` needs `ipv4`; `forward_device` only with `nat` and `route`;
//! - IPv4 prefixes are 1-30 (a /31 or /32 leaves no host addresses for
//!   guests), IPv6 prefixes 1-128;
//! - addresses are host addresses of their own subnet (not its network or
//!   broadcast address) and not unspecified, loopback, multicast or
//!   reserved (240.0.0.0/4);
//! - the DHCP range lies inside the subnet, `start <= end`, and does not
//!   include the network's own address; DHCP hosts are inside the subnet,
//!   not the network's own address, with unique MACs and IPs (at most
//!   [`MAX_DHCP_HOSTS`]);
//! - `domain` is a DNS name; it is made local (`localOnly='yes'`), so
//!   queries for it are never forwarded upstream.

use std::collections::HashMap;
use std::fmt::{Display, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value};

use crate::libvirt::xml::escape;
use crate::text::{self, TextRule};
use crate::{Error, Result};

#[path = "spec_rules.rs"]
mod rules;
use rules::{
    dns_problem, ifname_problem, name_problem, normal_mac, not_host4, outside, rule_v4, rule_v6,
    subnet_words,
};

/// Longest network name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Most static DHCP host entries a spec may carry.
pub const MAX_DHCP_HOSTS: usize = 1024;
/// At most this many problems are listed; the rest are counted.
const MAX_REPORTED: usize = 100;

const ROOT_FIELDS: &[&str] = &[
    "name",
    "mode",
    "bridge",
    "forward_device",
    "ipv4",
    "ipv6",
    "domain",
    "dhcp_hosts",
    "autostart",
    "start",
];
const IPV4_FIELDS: &[&str] = &["address", "prefix", "dhcp"];
const IPV6_FIELDS: &[&str] = &["address", "prefix"];
const DHCP_FIELDS: &[&str] = &["start", "end"];
const HOST_FIELDS: &[&str] = &["mac", "ip", "name"];

/// How the network reaches (or does not reach) the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NetworkMode {
    /// No `<forward>`: guests see each other and the host only.
    #[default]
    Isolated,
    /// NAT to the host's outside interfaces.
    Nat,
    /// Routed without NAT.
    Route,
    /// Routed with no firewall rules added by libvirt.
    Open,
    /// Attached to an existing host bridge.
    Bridge,
}

impl NetworkMode {
    pub const ALL: [NetworkMode; 5] = [
        NetworkMode::Isolated,
        NetworkMode::Nat,
        NetworkMode::Route,
        NetworkMode::Open,
        NetworkMode::Bridge,
    ];

    /// The spec's (and `NetworkRecord::mode`'s) word for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Isolated => "isolated",
            NetworkMode::Nat => "nat",
            NetworkMode::Route => "route",
            NetworkMode::Open => "open",
            NetworkMode::Bridge => "bridge",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4 {
    /// The host's (gateway's) address on the network.
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// DHCP range, first and last address.
    pub dhcp: Option<(Ipv4Addr, Ipv4Addr)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6 {
    pub address: Ipv6Addr,
    pub prefix: u8,
}

/// A static DHCP entry: this MAC always gets this address (and name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHost {
    /// Lower case, colon separated.
    pub mac: String,
    pub ip: Ipv4Addr,
    /// Host name, `""` for none.
    pub name: String,
}

/// A validated network creation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub mode: NetworkMode,
    /// Mode bridge: the host bridge; otherwise the bridge libvirt creates
    /// (`None`: libvirt picks `virbrN`).
    pub bridge: Option<String>,
    /// Nat and route: the only host interface traffic may leave through.
    pub forward_device: Option<String>,
    pub ipv4: Option<Ipv4>,
    pub ipv6: Option<Ipv6>,
    pub domain: Option<String>,
    pub dhcp_hosts: Vec<DhcpHost>,
    pub autostart: bool,
    pub start: bool,
}

/// Parse and validate a network spec (JSON text, at most 1 MiB, strict:
/// no duplicate keys, no unknown fields).
pub fn parse_network_spec(json: &str) -> Result<NetworkSpec> {
    let doc = text::parse_json_strict("spec", json, TextRule::DOCUMENT.max_bytes)?;
    text::check_json("", &doc, |_| TextRule::LINE)?;
    let mut p = Problems::default();
    let spec = spec_from(&doc, &mut p);
    p.into_result()?;
    spec.ok_or_else(|| Error::InvalidArgument("spec: is not a valid network spec".into()))
}

/// Check one DHCP host entry for a live add or remove: `mac` (six hex
/// octets, unicast, not all zero; lower-cased in the result), `ip` (an IPv4
/// address; inside `subnet`, given as the network's address and prefix, and
/// not that address itself, when given) and `name` (a host name, or `""`).
/// Errors name the argument: `mac: ...`, `ip: ...`, `name: ...`.
pub fn check_dhcp_host(
    mac: &str,
    ip: &str,
    name: &str,
    subnet: Option<(Ipv4Addr, u8)>,
) -> Result<DhcpHost> {
    let mut m = Map::new();
    for (k, v) in [("mac", mac), ("ip", ip), ("name", name)] {
        m.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let mut p = Problems::default();
    let host = host_from(&m, "", subnet, &mut p);
    p.into_result()?;
    host.ok_or_else(|| Error::InvalidArgument("mac: is not a valid DHCP host entry".into()))
}

/// The `<host>` element of one DHCP entry (for `virNetworkUpdate`).
pub fn dhcp_host_xml(h: &DhcpHost) -> String {
    let mut x = format!("<host mac='{}' ip='{}'", escape(&h.mac), h.ip);
    if !h.name.is_empty() {
        let _ = write!(x, " name='{}'", escape(&h.name));
    }
    x.push_str("/>");
    x
}

/// The libvirt network XML for a spec (no UUID: libvirt assigns one).
pub fn network_xml(spec: &NetworkSpec) -> String {
    let mut x = String::from("<network>\n");
    // Writing to a String cannot fail.
    let _ = writeln!(x, "  <name>{}</name>", escape(&spec.name));
    let dev = spec
        .forward_device
        .as_deref()
        .map(|d| format!(" dev='{}'", escape(d)))
        .unwrap_or_default();
    match spec.mode {
        NetworkMode::Isolated => {}
        NetworkMode::Nat | NetworkMode::Route => {
            let _ = writeln!(x, "  <forward mode='{}'{dev}/>", spec.mode.as_str());
        }
        NetworkMode::Open | NetworkMode::Bridge => {
            let _ = writeln!(x, "  <forward mode='{}'/>", spec.mode.as_str());
        }
    }
    if let Some(b) = &spec.bridge {
        if spec.mode == NetworkMode::Bridge {
            let _ = writeln!(x, "  <bridge name='{}'/>", escape(b));
        } else {
            let _ = writeln!(x, "  <bridge name='{}' stp='on' delay='0'/>", escape(b));
        }
    }
    if let Some(d) = &spec.domain {
        let _ = writeln!(x, "  <domain name='{}' localOnly='yes'/>", escape(d));
    }
    if let Some(v4) = &spec.ipv4 {
        let _ = write!(x, "  <ip address='{}' prefix='{}'", v4.address, v4.prefix);
        if v4.dhcp.is_none() && spec.dhcp_hosts.is_empty() {
            x.push_str("/>\n");
        } else {
            x.push_str(">\n    <dhcp>\n");
            if let Some((start, end)) = v4.dhcp {
                let _ = writeln!(x, "      <range start='{start}' end='{end}'/>");
            }
            for h in &spec.dhcp_hosts {
                let _ = writeln!(x, "      {}", dhcp_host_xml(h));
            }
            x.push_str("    </dhcp>\n  </ip>\n");
        }
    }
    if let Some(v6) = &spec.ipv6 {
        let _ = writeln!(
            x,
            "  <ip family='ipv6' address='{}' prefix='{}'/>",
            v6.address, v6.prefix
        );
    }
    x.push_str("</network>\n");
    x
}

/// The problems found so far, each `<path>: <problem>`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, path: &str, what: impl Display) {
        let path = if path.is_empty() { "spec" } else { path };
        self.0.push(format!("{path}: {what}"));
    }

    /// Report `why` at `path`, if any; whether there was nothing to report.
    fn ok(&mut self, path: &str, why: Option<impl Display>) -> bool {
        why.map(|w| self.add(path, w)).is_none()
    }

    fn into_result(mut self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        self.0.sort();
        self.0.dedup();
        let extra = self.0.len().saturating_sub(MAX_REPORTED);
        self.0.truncate(MAX_REPORTED);
        let mut out = self.0.join("; ");
        if extra > 0 {
            let _ = write!(out, "; … and {extra} more");
        }
        Err(Error::InvalidArgument(out))
    }
}

/// A checked field: `Ok(None)` absent, `Err(())` refused (and reported).
type Got<T> = std::result::Result<Option<T>, ()>;
type Rule<'r, T> = &'r dyn Fn(&str) -> std::result::Result<T, String>;

/// `parent.key`, or `parent["key"]` (escaped, cut short) for a key that is
/// not a plain identifier.
fn key_path(parent: &str, key: &str) -> String {
    let mut chars = key.chars();
    let plain = key.len() <= 64
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => {
            let short: String = key.chars().take(64).collect();
            let cut = if short.len() < key.len() { "…" } else { "" };
            let shown = text::for_bus(&short.escape_debug().to_string()).into_owned();
            format!("{parent}[\"{shown}{cut}\"]")
        }
    }
}

/// The object at `path`, with its unknown keys reported.
fn object<'a>(
    v: &'a Value,
    path: &str,
    known: &[&str],
    p: &mut Problems,
) -> Option<&'a Map<String, Value>> {
    let Value::Object(m) = v else {
        p.add(path, "must be an object");
        return None;
    };
    for k in m.keys().filter(|k| !known.contains(&k.as_str())) {
        let known = known.join(", ");
        p.add(
            &key_path(path, k),
            format!("unknown field (known: {known})"),
        );
    }
    Some(m)
}

/// The string field `at.key`, checked by `rule`.
fn field<T>(
    m: &Map<String, Value>,
    at: &str,
    key: &str,
    required: bool,
    p: &mut Problems,
    rule: Rule<'_, T>,
) -> Got<T> {
    let why = match m.get(key) {
        Some(Value::String(s)) => match rule(s) {
            Ok(v) => return Ok(Some(v)),
            Err(why) => why,
        },
        Some(_) => "must be a string".into(),
        None if required => "is required".into(),
        None => return Ok(None),
    };
    p.add(&key_path(at, key), why);
    Err(())
}

fn boolean(m: &Map<String, Value>, key: &str, default: bool, p: &mut Problems) -> Option<bool> {
    match m.get(key) {
        None => Some(default),
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => p.ok(key, Some("must be a boolean")).then_some(default),
    }
}

/// The required prefix length `at.prefix`, in `1..=max`. (24.0 is an
/// integer to JSON Schema, so it is one here too.)
fn prefix(m: &Map<String, Value>, at: &str, max: u8, p: &mut Problems) -> Option<u8> {
    let path = key_path(at, "prefix");
    let why = match m.get("prefix") {
        None => "is required".to_owned(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => "must be an integer".to_owned(),
            Some(f) if (1.0..=f64::from(max)).contains(&f) => return Some(f as u8),
            _ => format!("must be between 1 and {max}"),
        },
        Some(_) => "must be an integer".to_owned(),
    };
    p.add(&path, why);
    None
}

fn spec_from(doc: &Value, p: &mut Problems) -> Option<NetworkSpec> {
    let m = object(doc, "", ROOT_FIELDS, p)?;
    let name = field(m, "", "name", true, p, &|s| {
        name_problem(s).map_or(Ok(s.to_owned()), Err)
    });
    let mode = field(m, "", "mode", false, p, &|s| {
        NetworkMode::from_name(s)
            .ok_or_else(|| "must be one of isolated, nat, route, open, bridge".into())
    })
    .map(Option::unwrap_or_default);
    let ifname: Rule<'_, String> =
        &|s| ifname_problem(s).map_or(Ok(s.to_owned()), |w| Err(w.into()));
    let bridge = field(m, "", "bridge", false, p, ifname);
    let forward_device = field(m, "", "forward_device", false, p, ifname);
    let ipv4 = m.get("ipv4").map(|v| parse_ipv4(v, p).ok_or(()));
    let ipv6 = m.get("ipv6").map(|v| parse_ipv6(v, p).ok_or(()));
    let domain = field(m, "", "domain", false, p, &|s| {
        dns_problem(s, false).map_or(Ok(s.to_owned()), |w| Err(w.into()))
    });
    let subnet = match &ipv4 {
        Some(Ok(v)) => Some((v.address, v.prefix)),
        _ => None,
    };
    let hosts = m
        .get("dhcp_hosts")
        .map(|v| parse_hosts(v, subnet, p))
        .unwrap_or(Some(Vec::new()));
    let autostart = boolean(m, "autostart", false, p);
    let start = boolean(m, "start", true, p);

    // Rules across fields.
    let has = |key: &str| m.contains_key(key);
    let has_hosts = matches!(m.get("dhcp_hosts"), Some(Value::Array(a)) if !a.is_empty());
    match mode {
        Ok(NetworkMode::Bridge) => {
            if !has("bridge") {
                p.add(
                    "bridge",
                    "is required for mode bridge (the host bridge to attach to)",
                );
            }
            for key in ["ipv4", "ipv6", "domain"].into_iter().filter(|k| has(k)) {
                p.add(
                    key,
                    "is not allowed with mode bridge (the host's LAN provides it)",
                );
            }
            if has_hosts {
                p.add("dhcp_hosts", "must be empty with mode bridge");
            }
        }
        Ok(NetworkMode::Nat) if !has("ipv4") => p.add("ipv4", "is required for mode nat"),
        _ => {}
    }
    if mode.is_ok_and(|m| !matches!(m, NetworkMode::Nat | NetworkMode::Route))
        && has("forward_device")
    {
        p.add("forward_device", "is only allowed with mode nat or route");
    }
    if has_hosts && !has("ipv4") && mode != Ok(NetworkMode::Bridge) {
        p.add("dhcp_hosts", "needs ipv4 (the subnet the hosts are in)");
    }

    Some(NetworkSpec {
        name: name.ok()??,
        mode: mode.ok()?,
        bridge: bridge.ok()?,
        forward_device: forward_device.ok()?,
        ipv4: ipv4.transpose().ok()?,
        ipv6: ipv6.transpose().ok()?,
        domain: domain.ok()?,
        dhcp_hosts: hosts?,
        autostart: autostart?,
        start: start?,
    })
}

fn parse_ipv4(v: &Value, p: &mut Problems) -> Option<Ipv4> {
    let m = object(v, "ipv4", IPV4_FIELDS, p)?;
    let address = field(m, "ipv4", "address", true, p, &rule_v4)
        .ok()
        .flatten();
    let prefix = prefix(m, "ipv4", 30, p);
    let address = match (address, prefix) {
        (Some(a), Some(n)) => Some(a).filter(|&a| {
            p.ok(
                "ipv4.address",
                not_host4(a, n).map(|w| format!("{w} (/{n})")),
            )
        }),
        _ => None,
    };
    let subnet = address.zip(prefix);
    let dhcp = match m.get("dhcp") {
        None => Some(None),
        Some(d) => parse_dhcp(d, subnet, p).map(Some),
    };
    Some(Ipv4 {
        address: address?,
        prefix: prefix?,
        dhcp: dhcp?,
    })
}

fn parse_dhcp(
    v: &Value,
    subnet: Option<(Ipv4Addr, u8)>,
    p: &mut Problems,
) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let m = object(v, "ipv4.dhcp", DHCP_FIELDS, p)?;
    let what = subnet_words("ipv4.dhcp", subnet);
    let member: Rule<'_, Ipv4Addr> = &|s| {
        let ip = rule_v4(s)?;
        subnet
            .and_then(|sn| outside(ip, sn, &what))
            .map_or(Ok(ip), Err)
    };
    let start = field(m, "ipv4.dhcp", "start", true, p, member);
    let end = field(m, "ipv4.dhcp", "end", true, p, member);
    let (start, end) = (start.ok()??, end.ok()??);
    if u32::from(start) > u32::from(end) {
        p.add("ipv4.dhcp.end", "must not be below ipv4.dhcp.start");
        return None;
    }
    if subnet.is_some_and(|(net, _)| (start..=end).contains(&net)) {
        p.add(
            "ipv4.dhcp",
            "the range must not include the network's own address (ipv4.address)",
        );
        return None;
    }
    Some((start, end))
}

fn parse_ipv6(v: &Value, p: &mut Problems) -> Option<Ipv6> {
    let m = object(v, "ipv6", IPV6_FIELDS, p)?;
    let address = field(m, "ipv6", "address", true, p, &rule_v6)
        .ok()
        .flatten();
    let prefix = prefix(m, "ipv6", 128, p);
    let (address, prefix) = (address?, prefix?);
    let host = u128::from(address) & u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    if prefix < 128 && host == 0 {
        let why = format!(
            "must be a host address, not the /{prefix} subnet's own (router anycast) address"
        );
        p.add("ipv6.address", why);
        return None;
    }
    Some(Ipv6 { address, prefix })
}

fn parse_hosts(
    v: &Value,
    subnet: Option<(Ipv4Addr, u8)>,
    p: &mut Problems,
) -> Option<Vec<DhcpHost>> {
    let Value::Array(items) = v else {
        p.add("dhcp_hosts", "must be an array");
        return None;
    };
    if items.len() > MAX_DHCP_HOSTS {
        p.add(
            "dhcp_hosts",
            format!("must have at most {MAX_DHCP_HOSTS} entries"),
        );
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut macs: HashMap<String, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let at = format!("dhcp_hosts[{i}]");
        let Some(m) = object(item, &at, HOST_FIELDS, p) else {
            ok = false;
            continue;
        };
        let Some(h) = host_from(m, &at, subnet, p) else {
            ok = false;
            continue;
        };
        if let Some(first) = macs.insert(h.mac.clone(), i) {
            ok = p.ok(
                &format!("{at}.mac"),
                Some(format!("same as dhcp_hosts[{first}].mac")),
            );
        }
        if let Some(first) = ips.insert(h.ip, i) {
            ok = p.ok(
                &format!("{at}.ip"),
                Some(format!("same as dhcp_hosts[{first}].ip")),
            );
        }
        out.push(h);
    }
    ok.then_some(out)
}

/// One DHCP host entry from the object `m` at `at` (`""` for bare
/// argument names).
fn host_from(
    m: &Map<String, Value>,
    at: &str,
    subnet: Option<(Ipv4Addr, u8)>,
    p: &mut Problems,
) -> Option<DhcpHost> {
    let what = subnet_words(at, subnet);
    let mac = field(m, at, "mac", true, p, &normal_mac);
    let ip = field(m, at, "ip", true, p, &|s| {
        let ip = rule_v4(s)?;
        subnet
            .and_then(|sn| outside(ip, sn, &what))
            .map_or(Ok(ip), Err)
    });
    let name = field(m, at, "name", false, p, &|s| {
        dns_problem(s, true).map_or(Ok(s.to_owned()), |w| Err(w.into()))
    });
    Some(DhcpHost {
        mac: mac.ok()??,
        ip: ip.ok()??,
        name: name.ok()?.unwrap_or_default(),
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
