//! The proxies in `proxies.rs` against the interface files in `dbus/`: every
//! method, property and signal of every XML file is declared, with the same
//! D-Bus signature, and nothing else is (but for members announced and not
//! yet in the XML), so a proxy can never silently miss or misspell a member.

use std::collections::BTreeMap;

use crate::libvirt::xml::Element;

const SOURCE: &str = include_str!("proxies.rs");

const XML: &[(&str, &str)] = &[
    (
        "org.vapor.Virtualization.Manager",
        include_str!("../../dbus/org.vapor.Virtualization.Manager.xml"),
    ),
    (
        "org.vapor.Virtualization.VirtualMachine",
        include_str!("../../dbus/org.vapor.Virtualization.VirtualMachine.xml"),
    ),
    (
        "org.vapor.Virtualization.PciDevice",
        include_str!("../../dbus/org.vapor.Virtualization.PciDevice.xml"),
    ),
    (
        "org.vapor.Virtualization.Job",
        include_str!("../../dbus/org.vapor.Virtualization.Job.xml"),
    ),
    (
        "org.vapor.Virtualization.StoragePool",
        include_str!("../../dbus/org.vapor.Virtualization.StoragePool.xml"),
    ),
    (
        "org.vapor.Virtualization.Volume",
        include_str!("../../dbus/org.vapor.Virtualization.Volume.xml"),
    ),
    (
        "org.vapor.Virtualization.Network",
        include_str!("../../dbus/org.vapor.Virtualization.Network.xml"),
    ),
    (
        "org.vapor.Virtualization.Snapshot",
        include_str!("../../dbus/org.vapor.Virtualization.Snapshot.xml"),
    ),
    (
        "org.vapor.Virtualization.Backup",
        include_str!("../../dbus/org.vapor.Virtualization.Backup.xml"),
    ),
];

/// Members the proxies may declare before the XML has them:
/// (interface, kind, name). Remove an entry once the XML lists it.
const ANNOUNCED: &[(&str, &str, &str)] = &[];

/// (kind, name) → D-Bus signature (in-args then `->` out-args for methods).
type Members = BTreeMap<(String, String), String>;

fn xml_members(xml: &str) -> BTreeMap<String, Members> {
    let root = Element::parse(xml).expect("interface XML parses");
    let mut out = BTreeMap::new();
    for iface in root.children_named("interface") {
        let mut members = Members::new();
        for m in &iface.children {
            let kind = m.local_name();
            let name = m.attr("name").expect("member has a name").to_owned();
            let sig = match kind {
                "method" => {
                    let dir = |d: &str| {
                        m.children_named("arg")
                            .filter(|a| a.attr("direction").unwrap_or("in") == d)
                            .map(|a| a.attr("type").unwrap_or("?"))
                            .collect::<String>()
                    };
                    format!("{}->{}", dir("in"), dir("out"))
                }
                "signal" => m
                    .children_named("arg")
                    .map(|a| a.attr("type").unwrap_or("?"))
                    .collect(),
                "property" => m.attr("type").unwrap_or("?").to_owned(),
                _ => continue,
            };
            members.insert((kind.to_owned(), name), sig);
        }
        out.insert(iface.attr("name").unwrap_or("").to_owned(), members);
    }
    out
}

/// `lookup_virtual_machine` → `LookupVirtualMachine`, as zbus does.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// Split at top-level commas (outside `<>` and `()`).
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

/// The D-Bus signature of a Rust type as written in `proxies.rs`.
fn signature(ty: &str) -> String {
    let ty = ty.trim().trim_start_matches("zbus::");
    if let Some(inner) = ty.strip_prefix("Vec<").and_then(|t| t.strip_suffix('>')) {
        return format!("a{}", signature(inner));
    }
    if let Some(inner) = ty.strip_prefix("&[").and_then(|t| t.strip_suffix(']')) {
        return format!("a{}", signature(inner));
    }
    if let Some(inner) = ty.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        let parts: String = split_top(inner).into_iter().map(signature).collect();
        return format!("({parts})");
    }
    match ty {
        "&str" | "String" => "s",
        "bool" => "b",
        "u8" => "y",
        "u16" => "q",
        "u32" => "u",
        "u64" => "t",
        "i32" => "i",
        "f64" => "d",
        "OwnedObjectPath" => "o",
        "Fd<'_>" | "OwnedFd" => "h",
        "Options<'_>" | "HashMap<String, OwnedVariant>" => "a{sv}",
        "HashMap<&str, Fd<'_>>" => "a{sh}",
        "i64" => "x",
        "OwnedVariant" | "zbus::OwnedVariant" => "v",
        other => panic!("no signature known for {other}"),
    }
    .to_owned()
}

/// The members declared in one `interface "…"` block of `proxies.rs`.
fn source_members(block: &str) -> Members {
    let mut members = Members::new();
    let mut attrs = String::new();
    for line in block.lines().map(str::trim) {
        if line.starts_with("#[") {
            attrs.push_str(line);
            continue;
        }
        let Some(rest) = line.strip_prefix("fn ") else {
            continue;
        };
        let (ident, rest) = rest.split_once('(').expect("fn line has arguments");
        let (args, ret) = rest
            .rsplit_once(") -> zbus::Result<")
            .expect("returns zbus::Result");
        let ret = ret
            .trim_end_matches(';')
            .strip_suffix('>')
            .expect("Result<…>");
        let ins: String = split_top(args)
            .into_iter()
            .filter(|a| *a != "&self")
            .map(|a| signature(a.split_once(':').expect("name: type").1))
            .collect();
        let kind = if attrs.contains("zbus(property") {
            "property"
        } else if attrs.contains("zbus(signal") {
            "signal"
        } else {
            "method"
        };
        let name = match attrs.split_once("name = \"") {
            Some((_, n)) => n.split('"').next().unwrap_or("").to_owned(),
            None => pascal(ident.trim()),
        };
        let outs = match ret {
            "()" => String::new(),
            t if t.starts_with('(') => {
                let s = signature(t);
                s[1..s.len() - 1].to_owned()
            }
            t => signature(t),
        };
        let sig = match kind {
            "method" => format!("{ins}->{outs}"),
            "signal" => ins,
            _ => outs,
        };
        assert!(
            members
                .insert((kind.to_owned(), name.clone()), sig)
                .is_none(),
            "{name} declared twice"
        );
        attrs.clear();
    }
    members
}

fn source_blocks() -> BTreeMap<String, Members> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in SOURCE.lines() {
        if let Some(rest) = line.trim().strip_prefix("interface \"") {
            if let Some((name, text)) = current.take() {
                blocks.insert(name, source_members(&text));
            }
            let name = rest.split('"').next().unwrap_or("").to_owned();
            current = Some((name, String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((name, text)) = current {
        blocks.insert(name, source_members(&text));
    }
    blocks
}

#[test]
fn every_interface_file_has_a_proxy() {
    let blocks = source_blocks();
    let files: Vec<&str> = XML.iter().map(|(n, _)| *n).collect();
    let declared: Vec<&str> = blocks.keys().map(String::as_str).collect();
    let mut files_sorted = files.clone();
    files_sorted.sort();
    assert_eq!(declared, files_sorted);
    let on_disk: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/dbus"))
        .expect("dbus/ is readable")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".xml"))
        .map(|n| n.trim_end_matches(".xml").to_owned())
        .collect();
    for f in &on_disk {
        assert!(files.contains(&f.as_str()), "dbus/{f}.xml has no proxy");
    }
}

#[test]
fn proxies_declare_exactly_the_members_of_the_xml() {
    let blocks = source_blocks();
    for (iface, xml) in XML {
        let from_xml = xml_members(xml);
        let want = from_xml
            .get(*iface)
            .unwrap_or_else(|| panic!("{iface} is not in its XML file"));
        let have = &blocks[*iface];
        for ((kind, name), sig) in want {
            let got = have.get(&(kind.clone(), name.clone()));
            assert!(got.is_some(), "{iface}: {kind} {name} has no proxy member");
            assert_eq!(got.unwrap(), sig, "{iface}: {kind} {name} signature");
        }
        for (kind, name) in have.keys() {
            let announced = ANNOUNCED
                .iter()
                .any(|(i, k, n)| i == iface && k == kind && n == name);
            assert!(
                announced || want.contains_key(&(kind.clone(), name.clone())),
                "{iface}: {kind} {name} is in proxies.rs but not in the XML"
            );
        }
    }
}

#[test]
fn signature_reader_knows_the_shapes_used() {
    assert_eq!(
        signature("Vec<(String, String, u32, String, u64)>"),
        "a(ssust)"
    );
    assert_eq!(signature("Vec<OwnedObjectPath>"), "ao");
    assert_eq!(pascal("get_dhcp_leases"), "GetDhcpLeases");
    assert_eq!(
        split_top("a: Vec<(u8, u8)>, b: u8"),
        ["a: Vec<(u8, u8)>", "b: u8"]
    );
}

/// A dbus-daemon of the test's own, killed when dropped.
struct PrivateBus {
    address: String,
    pid: i32,
}

impl PrivateBus {
    fn start() -> Option<Self> {
        let out = std::process::Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let address = lines.next()?.trim().to_owned();
        let pid = lines.next()?.trim().parse().ok()?;
        Some(PrivateBus { address, pid })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        // SAFETY: a plain kill(2) of the bus daemon this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

/// The clients send `ALLOW_INTERACTIVE_AUTHORIZATION` exactly when asked,
/// as the receiving side sees it (on a private bus; skipped without
/// dbus-daemon).
#[tokio::test]
async fn clients_allow_interactive_auth_only_when_asked() {
    use super::proxies::{ManagerClient, ManagerProxy, VolumeClient, VolumeProxy};
    use futures_util::StreamExt;
    use zbus::message::{Flags, Type};
    use zbus::proxy::CacheProperties;

    let Some(bus) = PrivateBus::start() else {
        eprintln!("no dbus-daemon: skipped");
        return;
    };
    let connect = || zbus::connection::Builder::address(bus.address.as_str()).build();
    let (client, server) = tokio::try_join!(connect(), connect()).unwrap();
    let peer_name = server.unique_name().unwrap().to_string();
    let mut incoming = zbus::MessageStream::from(&server);
    let peer = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(Ok(m)) = incoming.next().await {
            let h = m.header();
            if h.message_type() != Type::MethodCall {
                continue;
            }
            let member = h.member().map(|m| m.to_string()).unwrap_or_default();
            let flag = m
                .primary_header()
                .flags()
                .contains(Flags::ALLOW_INTERACTIVE_AUTH);
            seen.push((member.clone(), flag));
            if member == "LookupVirtualMachine" {
                let vm =
                    zbus::ObjectPath::from_static_str_unchecked("/org/vapor/Virtualization/vm/x");
                server.reply(&h, &(vm,)).await.unwrap();
            } else {
                server.reply(&h, &()).await.unwrap();
            }
            if seen.len() == 4 {
                break;
            }
        }
        seen
    });
    for ask in [true, false] {
        let m = ManagerProxy::builder(&client)
            .destination(peer_name.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .unwrap();
        let m = ManagerClient::from_proxy(m, ask);
        let vm = m.lookup_virtual_machine("x").await.unwrap();
        assert_eq!(vm.as_str(), "/org/vapor/Virtualization/vm/x");
        let v = VolumeProxy::builder(&client)
            .destination(peer_name.clone())
            .path("/org/vapor/Virtualization/pool/p/v")
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .unwrap();
        let v = VolumeClient::from_proxy(v, ask);
        assert_eq!(v.allows_interactive_auth(), ask);
        v.wipe().await.unwrap();
    }
    let seen = peer.await.unwrap();
    let want: Vec<(String, bool)> = [
        ("LookupVirtualMachine", true),
        ("Wipe", true),
        ("LookupVirtualMachine", false),
        ("Wipe", false),
    ]
    .iter()
    .map(|(m, f)| (m.to_string(), *f))
    .collect();
    assert_eq!(seen, want);
}
