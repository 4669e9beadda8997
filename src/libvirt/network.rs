//! libvirt virtual networks, typed: what a network is ([`NetworkRecord`],
//! read from its XML), its DHCP leases, and the calls that define, start,
//! stop, remove and edit one. Networks are named by UUID string; one that
//! has gone is `Error::NotFound("network <uuid> no longer exists")`.
//!
//! Every call runs on the blocking pool through [`Hypervisor::run`].

use std::ffi::{CStr, CString};
use std::os::raw::c_char;

use virt::connect::Connect;
use virt::error::ErrorNumber as N;
use virt::network::Network;
use virt_sys as sys;

use super::errors::from_virt;
use super::xml::{escape, Element};
use super::Hypervisor;
use crate::{Error, Result};

/// One virtual network, as its XML and flags describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRecord {
    pub uuid: String,
    pub name: String,
    pub active: bool,
    pub autostart: bool,
    pub persistent: bool,
    /// `<forward mode=..>` (`nat` when the mode is left out); `isolated`
    /// without `<forward>`.
    pub mode: String,
    /// `<bridge name=..>`, `""` if none.
    pub bridge: String,
    /// From the first `<ip>` of family ipv4 (or none); `""` and 0 if none.
    pub ipv4_address: String,
    pub ipv4_prefix: u32,
    /// From the first `<ip family='ipv6'>`; `""` and 0 if none.
    pub ipv6_address: String,
    pub ipv6_prefix: u32,
    /// The IPv4 `<ip>`'s first `<dhcp><range>`; `""` if none.
    pub dhcp_start: String,
    pub dhcp_end: String,
    /// `<domain name=..>`, `""` if none.
    pub domain: String,
    /// The IPv4 `<ip>`'s `<dhcp><host>` entries: (mac, ip, name), `""` for
    /// an attribute left out.
    pub dhcp_hosts: Vec<(String, String, String)>,
}

/// One lease the network's DHCP server handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpLease {
    pub mac: String,
    pub ip: String,
    pub prefix: u32,
    /// `""` when the client sent none.
    pub hostname: String,
    /// Seconds since the Unix epoch.
    pub expiry: u64,
}

/// Whether an `<ip>` element is IPv6 (libvirt writes `family='ipv6'`; an
/// address with a colon is one whatever the attribute says).
fn is_ipv6(ip: &Element) -> bool {
    ip.attr("family") == Some("ipv6") || ip.attr("address").is_some_and(|a| a.contains(':'))
}

/// The first IPv4 `<ip>` of a network document, with its index among all
/// `<ip>` elements (`virNetworkUpdate`'s parent index).
fn ipv4_element(net: &Element) -> Option<(usize, &Element)> {
    net.children_named("ip")
        .enumerate()
        .find(|(_, ip)| matches!(ip.attr("family"), None | Some("ipv4")) && !is_ipv6(ip))
}

/// Prefix length of an `<ip>`: `prefix=`, else from `netmask=`, else
/// libvirt's default (the address class for IPv4, 64 for IPv6).
fn prefix_of(ip: &Element, v6: bool) -> u32 {
    if let Some(p) = ip.attr("prefix").and_then(|p| p.trim().parse().ok()) {
        return p;
    }
    if let Some(m) = ip
        .attr("netmask")
        .and_then(|m| m.trim().parse::<std::net::Ipv4Addr>().ok())
    {
        return u32::from(m).count_ones();
    }
    if v6 {
        return 64;
    }
    match ip
        .attr("address")
        .and_then(|a| a.trim().parse::<std::net::Ipv4Addr>().ok())
        .map(|a| a.octets()[0])
    {
        Some(0..=127) => 8,
        Some(128..=191) => 16,
        Some(192..=223) => 24,
        _ => 0,
    }
}

/// The record of a network from its XML and the three flags. Pure.
pub fn parse_network_xml(
    xml: &str,
    active: bool,
    autostart: bool,
    persistent: bool,
) -> Result<NetworkRecord> {
    let net = Element::parse(xml)?;
    if net.local_name() != "network" {
        return Err(Error::Failed(format!(
            "network XML from libvirt has root <{}>, not <network>",
            net.name
        )));
    }
    let name = net
        .child_text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::Failed("network XML from libvirt has no <name>".into()))?;
    let attr = |el: Option<&Element>, key: &str| -> String {
        el.and_then(|e| e.attr(key)).unwrap_or_default().to_owned()
    };
    let mode = match net.child("forward") {
        None => "isolated".to_owned(),
        Some(f) => f.attr("mode").unwrap_or("nat").to_owned(),
    };
    let v4 = ipv4_element(&net).map(|(_, ip)| ip);
    let v6 = net.children_named("ip").find(|ip| is_ipv6(ip));
    let dhcp = v4.and_then(|ip| ip.child("dhcp"));
    let range = dhcp.and_then(|d| d.child("range"));
    let dhcp_hosts = dhcp
        .map(|d| {
            d.children_named("host")
                .map(|h| {
                    (
                        attr(Some(h), "mac"),
                        attr(Some(h), "ip"),
                        attr(Some(h), "name"),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(NetworkRecord {
        uuid: net.child_text("uuid").unwrap_or_default().to_owned(),
        name: name.to_owned(),
        active,
        autostart,
        persistent,
        mode,
        bridge: attr(net.child("bridge"), "name"),
        ipv4_address: attr(v4, "address"),
        ipv4_prefix: v4.map_or(0, |ip| prefix_of(ip, false)),
        ipv6_address: attr(v6, "address"),
        ipv6_prefix: v6.map_or(0, |ip| prefix_of(ip, true)),
        dhcp_start: attr(range, "start"),
        dhcp_end: attr(range, "end"),
        domain: attr(net.child("domain"), "name"),
        dhcp_hosts,
    })
}

/// Whether this libvirt error means the network is gone.
fn is_gone(e: &virt::error::Error) -> bool {
    e.code().unwrap_or(N::InternalError) == N::NoNetwork
}

fn gone(uuid: &str) -> Error {
    Error::NotFound(format!("network {uuid} no longer exists"))
}

/// A libvirt failure while `what` on network `uuid`, classified.
fn failed(e: virt::error::Error, uuid: &str, what: &str) -> Error {
    if is_gone(&e) {
        gone(uuid)
    } else {
        from_virt(e, format!("cannot {what} network {uuid}"))
    }
}

/// Whether libvirt refused because a bridge name or the subnet is taken
/// (INTERNAL_ERROR "bridge name 'x' already in use." or "Network is
/// already in use by interface eth0").
fn in_use(e: &virt::error::Error) -> bool {
    e.code().unwrap_or(N::InternalError) == N::InternalError
        && e.message().contains("already in use")
}

/// Start a defined network; a bridge or subnet taken by something else is
/// `Conflict`.
fn start_net(net: &Network, uuid: &str) -> Result<()> {
    net.create().map_err(|e| {
        if in_use(&e) {
            Error::Conflict(format!("cannot start network {uuid}: {}", e.message()))
        } else {
            failed(e, uuid, "start")
        }
    })
}

fn lookup(c: &Connect, uuid: &str) -> Result<Network> {
    if uuid::Uuid::parse_str(uuid).is_err() {
        return Err(Error::InvalidArgument(
            "uuid: must be a UUID like 3e3fce45-4f53-4fa7-bb32-11f34168b82b".into(),
        ));
    }
    c.lookup_network_by_uuid_string(uuid)
        .map_err(|e| failed(e, uuid, "look up"))
}

/// Read one network's record (`uuid` for messages).
fn read_record(n: &Network, uuid: &str) -> Result<NetworkRecord> {
    let active = n.is_active().map_err(|e| failed(e, uuid, "read"))?;
    let persistent = n.is_persistent().map_err(|e| failed(e, uuid, "read"))?;
    let autostart = persistent && n.autostart().map_err(|e| failed(e, uuid, "read"))?;
    let xml = n
        .xml_desc(0)
        .map_err(|e| failed(e, uuid, "read the XML of"))?;
    let mut r = parse_network_xml(&xml, active, autostart, persistent)?;
    if r.uuid.is_empty() {
        r.uuid = uuid.to_owned();
    }
    Ok(r)
}

/// Undo a definition that did not complete: stop and remove it.
fn discard(net: &Network, name: &str) {
    if net.is_active().unwrap_or(false) {
        if let Err(e) = net.destroy() {
            log::warn!("cannot stop half-created network {name}: {}", e.message());
        }
    }
    if net.is_persistent().unwrap_or(true) {
        if let Err(e) = net.undefine() {
            log::warn!(
                "cannot undefine half-created network {name}: {}",
                e.message()
            );
        }
    }
}

fn define_blocking(c: &Connect, xml: &str, start: bool, autostart: bool) -> Result<String> {
    let doc = Element::parse(xml)
        .map_err(|e| Error::InvalidArgument(format!("xml: not a network document: {e}")))?;
    let name = doc
        .child_text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::InvalidArgument("xml: the network has no <name>".into()))?
        .to_owned();
    let taken = || {
        Error::Conflict(format!(
            "a network named '{}' already exists",
            crate::text::for_bus(&name)
        ))
    };
    // Defining over an existing name would redefine that network.
    if c.lookup_network_by_name(&name).is_ok() {
        return Err(taken());
    }
    let cxml = CString::new(xml)
        .map_err(|_| Error::InvalidArgument("xml: contains a NUL character".into()))?;
    // SAFETY: a valid connection and a NUL-terminated string; the returned
    // reference is owned by the Network wrapper.
    let ptr = unsafe { sys::virNetworkDefineXML(c.as_ptr(), cxml.as_ptr()) };
    if ptr.is_null() {
        let e = virt::error::Error::last_error();
        // Someone else got there first (libvirt says OPERATION_FAILED).
        if c.lookup_network_by_name(&name).is_ok() {
            return Err(taken());
        }
        // libvirt says INTERNAL_ERROR "bridge name 'x' already in use."
        let bridge = doc.child("bridge").and_then(|b| b.attr("name"));
        if let Some(b) = bridge.filter(|_| in_use(&e)) {
            return Err(Error::Conflict(format!(
                "bridge {} is already used by another network",
                crate::text::for_bus(b)
            )));
        }
        return Err(from_virt(
            e,
            format!("cannot define network {}", crate::text::for_bus(&name)),
        ));
    }
    // SAFETY: a fresh reference from virNetworkDefineXML.
    let net = unsafe { Network::from_ptr(ptr) };
    let finish = || -> Result<String> {
        let uuid = net
            .uuid_string()
            .map_err(|e| from_virt(e, "cannot read the new network's UUID"))?;
        if autostart {
            net.set_autostart(true)
                .map_err(|e| failed(e, &uuid, "set autostart on"))?;
        }
        if start {
            start_net(&net, &uuid)?;
        }
        Ok(uuid)
    };
    finish().inspect_err(|_| discard(&net, &name))
}

const UPDATE_LIVE: u32 = sys::VIR_NETWORK_UPDATE_AFFECT_LIVE;
const UPDATE_CONFIG: u32 = sys::VIR_NETWORK_UPDATE_AFFECT_CONFIG;

/// One `virNetworkUpdate` of the DHCP host section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostUpdate {
    flags: u32,
    parent: i32,
    xml: String,
}

/// The views of a network an update must change: (flag, its XML root).
fn views(net: &Network, uuid: &str) -> Result<Vec<(u32, Element)>> {
    let active = net.is_active().map_err(|e| failed(e, uuid, "read"))?;
    let persistent = net.is_persistent().map_err(|e| failed(e, uuid, "read"))?;
    let mut out = Vec::new();
    if active {
        let xml = net.xml_desc(0).map_err(|e| failed(e, uuid, "read"))?;
        out.push((UPDATE_LIVE, Element::parse(&xml)?));
    }
    if persistent {
        let xml = net
            .xml_desc(sys::VIR_NETWORK_XML_INACTIVE)
            .map_err(|e| failed(e, uuid, "read"))?;
        out.push((UPDATE_CONFIG, Element::parse(&xml)?));
    }
    Ok(out)
}

/// The IPv4 `<ip>` of one view, or why there is none.
fn ipv4_of<'a>(root: &'a Element, uuid: &str) -> Result<(i32, &'a Element)> {
    ipv4_element(root)
        .map(|(i, ip)| (i as i32, ip))
        .ok_or_else(|| {
            Error::InvalidState(format!(
                "network {uuid} has no IPv4 address, so no DHCP host entries"
            ))
        })
}

fn same_mac(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Merge updates that differ only in their flags into one call.
fn merged(mut steps: Vec<HostUpdate>) -> Vec<HostUpdate> {
    if let [a, b] = steps.as_slice() {
        if a.parent == b.parent && a.xml == b.xml {
            let flags = a.flags | b.flags;
            steps.truncate(1);
            steps[0].flags = flags;
        }
    }
    steps
}

/// Apply the updates in order; if one fails, undo the earlier ones (best
/// effort) with `undo` and return its error.
fn apply(net: &Network, uuid: &str, cmd: u32, undo: u32, steps: &[HostUpdate]) -> Result<()> {
    let update = |cmd, s: &HostUpdate| {
        net.update(
            cmd,
            sys::VIR_NETWORK_SECTION_IP_DHCP_HOST,
            s.parent,
            &s.xml,
            s.flags,
        )
    };
    for (i, s) in steps.iter().enumerate() {
        if let Err(e) = update(cmd, s) {
            for done in &steps[..i] {
                if let Err(u) = update(undo, done) {
                    log::warn!(
                        "network {uuid}: cannot undo a DHCP host update: {}",
                        u.message()
                    );
                }
            }
            return Err(failed(e, uuid, "update the DHCP hosts of"));
        }
    }
    Ok(())
}

fn host_xml(mac: &str, ip: &str, name: &str) -> String {
    let mut x = format!("<host mac='{}'", escape(mac));
    if !ip.is_empty() {
        x.push_str(&format!(" ip='{}'", escape(ip)));
    }
    if !name.is_empty() {
        x.push_str(&format!(" name='{}'", escape(name)));
    }
    x.push_str("/>");
    x
}

fn add_host_blocking(c: &Connect, uuid: &str, mac: &str, ip: &str, name: &str) -> Result<()> {
    let net = lookup(c, uuid)?;
    let xml = host_xml(mac, ip, name);
    let mut steps = Vec::new();
    for (flags, root) in views(&net, uuid)? {
        let (parent, v4) = ipv4_of(&root, uuid)?;
        let hosts = v4
            .child("dhcp")
            .into_iter()
            .flat_map(|d| d.children_named("host"));
        for h in hosts {
            if h.attr("mac").is_some_and(|m| same_mac(m, mac)) {
                return Err(Error::Conflict(format!(
                    "network {uuid} already has a DHCP host entry for MAC {}",
                    crate::text::for_bus(mac)
                )));
            }
            if h.attr("ip") == Some(ip) {
                return Err(Error::Conflict(format!(
                    "network {uuid} already has a DHCP host entry for {}",
                    crate::text::for_bus(ip)
                )));
            }
        }
        steps.push(HostUpdate {
            flags,
            parent,
            xml: xml.clone(),
        });
    }
    apply(
        &net,
        uuid,
        sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
        sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
        &merged(steps),
    )
}

fn remove_host_blocking(c: &Connect, uuid: &str, mac: &str) -> Result<()> {
    let net = lookup(c, uuid)?;
    let mut steps = Vec::new();
    for (flags, root) in views(&net, uuid)? {
        let Some((parent, v4)) = ipv4_element(&root) else {
            continue;
        };
        let found = v4
            .child("dhcp")
            .into_iter()
            .flat_map(|d| d.children_named("host"))
            .find(|h| h.attr("mac").is_some_and(|m| same_mac(m, mac)));
        // The whole entry: libvirt deletes the first one all given
        // attributes match, and an entry without a MAC matches any.
        if let Some(h) = found {
            steps.push(HostUpdate {
                flags,
                parent: parent as i32,
                xml: host_xml(
                    h.attr("mac").unwrap_or(mac),
                    h.attr("ip").unwrap_or_default(),
                    h.attr("name").unwrap_or_default(),
                ),
            });
        }
    }
    if steps.is_empty() {
        return Err(Error::NotFound(format!(
            "network {uuid} has no DHCP host entry for MAC {}",
            crate::text::for_bus(mac)
        )));
    }
    apply(
        &net,
        uuid,
        sys::VIR_NETWORK_UPDATE_COMMAND_DELETE,
        sys::VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
        &merged(steps),
    )
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn c_text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn leases_blocking(c: &Connect, uuid: &str) -> Result<Vec<DhcpLease>> {
    let net = lookup(c, uuid)?;
    let mut leases: *mut sys::virNetworkDHCPLeasePtr = std::ptr::null_mut();
    // SAFETY: out-parameter call on a valid network; the list is freed below.
    let n = unsafe { sys::virNetworkGetDHCPLeases(net.as_ptr(), std::ptr::null(), &mut leases, 0) };
    if n < 0 {
        return Err(failed(
            virt::error::Error::last_error(),
            uuid,
            "read the DHCP leases of",
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    // SAFETY: libvirt returned `n` lease pointers; each is freed once, then
    // the array.
    unsafe {
        if !leases.is_null() {
            for i in 0..n as usize {
                let l = *leases.add(i);
                if l.is_null() {
                    continue;
                }
                let lease = &*l;
                out.push(DhcpLease {
                    mac: c_text(lease.mac),
                    ip: c_text(lease.ipaddr),
                    prefix: lease.prefix,
                    hostname: c_text(lease.hostname),
                    expiry: u64::try_from(lease.expirytime).unwrap_or(0),
                });
                sys::virNetworkDHCPLeaseFree(l);
            }
            libc::free(leases.cast());
        }
    }
    Ok(out)
}

impl Hypervisor {
    /// Every network (`virConnectListAllNetworks`), each read from its XML.
    /// A network that cannot be read (gone meanwhile, say) is left out.
    pub async fn network_listing(&self) -> Result<Vec<NetworkRecord>> {
        self.run(|c| {
            let nets = c
                .list_all_networks(0)
                .map_err(|e| from_virt(e, "cannot list networks"))?;
            let mut out = Vec::with_capacity(nets.len());
            for n in &nets {
                let uuid = n.uuid_string().unwrap_or_default();
                match read_record(n, &uuid) {
                    Ok(r) => out.push(r),
                    Err(e) => log::debug!("network {uuid} left out of the listing: {e}"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// One network's record; `None` when it no longer exists.
    pub async fn network_record(&self, uuid: &str) -> Result<Option<NetworkRecord>> {
        let uuid = uuid.to_owned();
        self.run(
            move |c| match lookup(c, &uuid).and_then(|n| read_record(&n, &uuid)) {
                Ok(r) => Ok(Some(r)),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
        )
        .await
    }

    /// Define a network from `xml`, mark it autostart and start it as asked;
    /// all or nothing (a failure after the definition removes it again).
    /// Returns its UUID. A name or bridge already in use, or a subnet
    /// already routed elsewhere (found at start), is `Conflict`.
    pub async fn define_network(
        &self,
        xml: String,
        start: bool,
        autostart: bool,
    ) -> Result<String> {
        self.run(move |c| define_blocking(c, &xml, start, autostart))
            .await
    }

    pub async fn start_network(&self, uuid: &str) -> Result<()> {
        let uuid = uuid.to_owned();
        self.run(move |c| start_net(&lookup(c, &uuid)?, &uuid))
            .await
    }

    pub async fn stop_network(&self, uuid: &str) -> Result<()> {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            lookup(c, &uuid)?
                .destroy()
                .map_err(|e| failed(e, &uuid, "stop"))
        })
        .await
    }

    pub async fn set_network_autostart(&self, uuid: &str, on: bool) -> Result<()> {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            lookup(c, &uuid)?
                .set_autostart(on)
                .map_err(|e| failed(e, &uuid, "set autostart on"))
        })
        .await
    }

    /// Stop the network if it runs, then remove its definition (a transient
    /// network is gone once stopped).
    pub async fn undefine_network(&self, uuid: &str) -> Result<()> {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            let net = lookup(c, &uuid)?;
            let persistent = net.is_persistent().map_err(|e| failed(e, &uuid, "read"))?;
            if net.is_active().map_err(|e| failed(e, &uuid, "read"))? {
                if let Err(e) = net.destroy() {
                    // Stopped meanwhile by someone else is fine.
                    if net.is_active().map_err(|e| failed(e, &uuid, "read"))? {
                        return Err(failed(e, &uuid, "stop"));
                    }
                }
            }
            if persistent {
                net.undefine().map_err(|e| failed(e, &uuid, "undefine"))?;
            }
            Ok(())
        })
        .await
    }

    /// The leases the network's DHCP server handed out
    /// (`virNetworkGetDHCPLeases`), IPv4 and IPv6.
    pub async fn dhcp_leases(&self, uuid: &str) -> Result<Vec<DhcpLease>> {
        let uuid = uuid.to_owned();
        self.run(move |c| leases_blocking(c, &uuid)).await
    }

    /// Add a static DHCP entry to the network's IPv4 `<ip>`, live when it
    /// runs and in its configuration when persistent. An entry with the
    /// same MAC or IP is `Conflict`; no IPv4 address is `InvalidState`.
    /// The arguments are expected checked (`network::spec::check_dhcp_host`).
    pub async fn add_dhcp_host(&self, uuid: &str, mac: &str, ip: &str, name: &str) -> Result<()> {
        let (uuid, mac, ip, name) = (
            uuid.to_owned(),
            mac.to_owned(),
            ip.to_owned(),
            name.to_owned(),
        );
        self.run(move |c| add_host_blocking(c, &uuid, &mac, &ip, &name))
            .await
    }

    /// Remove the static DHCP entry for `mac` (any case) wherever it is
    /// (live, configuration); `NotFound` when there is none.
    pub async fn remove_dhcp_host(&self, uuid: &str, mac: &str) -> Result<()> {
        let (uuid, mac) = (uuid.to_owned(), mac.to_owned());
        self.run(move |c| remove_host_blocking(c, &uuid, &mac))
            .await
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
