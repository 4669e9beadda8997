//! The generated XML (parsed back), its round trip through
//! `parse_network_xml`, and the shipped schema against the parser.

use serde_json::json;

use super::super::*;
use super::{nat_doc, parse};
use crate::libvirt::network::parse_network_xml;
use crate::libvirt::xml::Element;

/// The generated XML, parsed back.
fn xml_of(doc: serde_json::Value) -> Element {
    Element::parse(&network_xml(&parse(doc).unwrap())).unwrap()
}

#[test]
fn xml_isolated_has_no_forward() {
    let x = xml_of(json!({"name": "iso", "ipv4": {"address": "10.5.0.1", "prefix": 16}}));
    assert_eq!(x.name, "network");
    assert_eq!(x.child_text("name"), Some("iso"));
    assert!(x.child("forward").is_none());
    assert!(x.child("bridge").is_none());
    assert!(x.child("uuid").is_none());
    let ip = x.child("ip").unwrap();
    assert_eq!(
        (ip.attr("address"), ip.attr("prefix")),
        (Some("10.5.0.1"), Some("16"))
    );
    assert!(ip.child("dhcp").is_none());
}

#[test]
fn xml_nat_has_forward_dev_bridge_domain_dhcp_and_ipv6() {
    let x = xml_of(nat_doc());
    let fwd = x.child("forward").unwrap();
    assert_eq!(
        (fwd.attr("mode"), fwd.attr("dev")),
        (Some("nat"), Some("eth0"))
    );
    let br = x.child("bridge").unwrap();
    assert_eq!(
        (br.attr("name"), br.attr("stp")),
        (Some("virbr7"), Some("on"))
    );
    let dom = x.child("domain").unwrap();
    assert_eq!(
        (dom.attr("name"), dom.attr("localOnly")),
        (Some("lab.example"), Some("yes"))
    );
    let ips: Vec<&Element> = x.children_named("ip").collect();
    assert_eq!(ips.len(), 2);
    let dhcp = ips[0].child("dhcp").unwrap();
    let range = dhcp.child("range").unwrap();
    assert_eq!(
        (range.attr("start"), range.attr("end")),
        (Some("192.168.100.10"), Some("192.168.100.200"))
    );
    let hosts: Vec<&Element> = dhcp.children_named("host").collect();
    assert_eq!(hosts[0].attr("mac"), Some("52:54:00:aa:00:01"));
    assert_eq!(hosts[0].attr("name"), Some("web"));
    assert_eq!(hosts[1].attr("name"), None);
    assert_eq!(
        (
            ips[1].attr("family"),
            ips[1].attr("address"),
            ips[1].attr("prefix")
        ),
        (Some("ipv6"), Some("fd00:100::1"), Some("64"))
    );
}

#[test]
fn xml_route_open_and_bridge_modes() {
    let x = xml_of(
        json!({"name": "r", "mode": "route", "ipv4": {"address": "10.0.0.1", "prefix": 24}}),
    );
    let fwd = x.child("forward").unwrap();
    assert_eq!((fwd.attr("mode"), fwd.attr("dev")), (Some("route"), None));

    let x =
        xml_of(json!({"name": "o", "mode": "open", "ipv4": {"address": "10.0.0.1", "prefix": 24}}));
    let fwd = x.child("forward").unwrap();
    assert_eq!(fwd.attr("mode"), Some("open"));
    assert!(fwd.children.is_empty() && fwd.attrs.len() == 1);

    let x = xml_of(json!({"name": "b", "mode": "bridge", "bridge": "br0"}));
    assert_eq!(x.child("forward").unwrap().attr("mode"), Some("bridge"));
    let br = x.child("bridge").unwrap();
    assert_eq!(br.attrs, vec![("name".to_string(), "br0".to_string())]);
    assert!(x.child("ip").is_none());
}

#[test]
fn xml_hosts_without_range_still_get_a_dhcp_element() {
    let x = xml_of(
        json!({"name": "h", "ipv4": {"address": "10.0.0.1", "prefix": 24},
                          "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2"}]}),
    );
    let dhcp = x.child("ip").unwrap().child("dhcp").unwrap();
    assert!(dhcp.child("range").is_none());
    assert_eq!(dhcp.children_named("host").count(), 1);
}

#[test]
fn xml_names_are_escaped_text() {
    let spec = NetworkSpec {
        name: "a&b <c>".into(),
        ..parse(json!({"name": "x"})).unwrap()
    };
    let xml = network_xml(&spec);
    assert!(xml.contains("<name>a&amp;b &lt;c&gt;</name>"), "{xml}");
    assert_eq!(
        Element::parse(&xml).unwrap().child_text("name"),
        Some("a&b <c>")
    );
}

#[test]
fn xml_round_trips_through_the_record() {
    let docs = [
        nat_doc(),
        json!({"name": "réseau isolé"}),
        json!({"name": "r", "mode": "route", "ipv6": {"address": "fd00:9::1", "prefix": 48}}),
        json!({"name": "o", "mode": "open", "ipv4": {"address": "172.20.0.1", "prefix": 12,
               "dhcp": {"start": "172.20.0.2", "end": "172.20.0.9"}}}),
        json!({"name": "b", "mode": "bridge", "bridge": "br0"}),
    ];
    for doc in docs {
        let spec = parse(doc).unwrap();
        let r = parse_network_xml(&network_xml(&spec), true, spec.autostart, true).unwrap();
        assert_eq!(r.name, spec.name);
        assert_eq!(r.mode, spec.mode.as_str());
        assert_eq!(r.bridge, spec.bridge.clone().unwrap_or_default());
        let v4 = spec.ipv4.as_ref();
        assert_eq!(
            r.ipv4_address,
            v4.map(|v| v.address.to_string()).unwrap_or_default()
        );
        assert_eq!(r.ipv4_prefix, v4.map_or(0, |v| u32::from(v.prefix)));
        let range = v4.and_then(|v| v.dhcp);
        assert_eq!(
            r.dhcp_start,
            range.map(|r| r.0.to_string()).unwrap_or_default()
        );
        assert_eq!(
            r.dhcp_end,
            range.map(|r| r.1.to_string()).unwrap_or_default()
        );
        let v6 = spec.ipv6.as_ref();
        assert_eq!(
            r.ipv6_address,
            v6.map(|v| v.address.to_string()).unwrap_or_default()
        );
        assert_eq!(r.ipv6_prefix, v6.map_or(0, |v| u32::from(v.prefix)));
        assert_eq!(r.domain, spec.domain.clone().unwrap_or_default());
        let hosts: Vec<_> = spec
            .dhcp_hosts
            .iter()
            .map(|h| (h.mac.clone(), h.ip.to_string(), h.name.clone()))
            .collect();
        assert_eq!(r.dhcp_hosts, hosts);
        assert_eq!(r.autostart, spec.autostart);
    }
}

/// The shipped schema, compiled as the creation spec's is.
fn schema() -> jsonschema::Validator {
    let text = include_str!("../../dbus/schemas/network-spec.schema.json");
    let schema: serde_json::Value = serde_json::from_str(text).unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .offline()
        .build(&schema)
        .unwrap()
}

#[test]
fn schema_agrees_with_the_parser() {
    let v = schema();
    let hosts = json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24},
                       "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2", "name": ""}]});
    let accepted = [
        nat_doc(),
        hosts,
        json!({"name": "n"}),
        json!({"name": "réseau 2", "mode": "open"}),
        json!({"name": "n", "mode": "route", "forward_device": "eth0.5"}),
        json!({"name": "n", "mode": "bridge", "bridge": "br0", "dhcp_hosts": []}),
        json!({"name": "n", "dhcp_hosts": []}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24.0}}),
        json!({"name": "x".repeat(64)}),
    ];
    for doc in accepted {
        assert!(v.is_valid(&doc), "schema refuses {doc}");
        assert!(parse(doc.clone()).is_ok(), "parser refuses {doc}");
    }
    let refused = [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "-x"}),
        json!({"name": ".x"}),
        json!({"name": ".."}),
        json!({"name": "a/b"}),
        json!({"name": "a<b"}),
        json!({"name": "a\"b"}),
        json!({"name": "a\u{7f}b"}),
        json!({"name": "a\u{fdd0}b"}),
        json!({"name": "n", "extra": 1}),
        json!({"name": "n", "mode": "bridged"}),
        json!({"name": "n", "mode": "bridge"}),
        json!({"name": "n", "mode": "bridge", "bridge": "br0", "domain": "x"}),
        json!({"name": "n", "mode": "bridge", "bridge": "br0", "ipv6": {"address": "fd00::1", "prefix": 64}}),
        json!({"name": "n", "mode": "nat"}),
        json!({"name": "n", "forward_device": "eth0"}),
        json!({"name": "n", "mode": "open", "forward_device": "eth0"}),
        json!({"name": "n", "bridge": "."}),
        json!({"name": "n", "bridge": "x234567890123456"}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 31}}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 0}}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24.5}}),
        json!({"name": "n", "ipv4": {"address": "10.0.0", "prefix": 24}}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24, "dhcp": {"start": "10.0.0.2"}}}),
        json!({"name": "n", "ipv6": {"address": "fd00::1", "prefix": 129}}),
        json!({"name": "n", "ipv6": {"address": "fd00::x", "prefix": 64}}),
        json!({"name": "n", "domain": "a..b"}),
        json!({"name": "n", "domain": "-a"}),
        json!({"name": "n", "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2"}]}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24},
               "dhcp_hosts": [{"mac": "53:54:00:00:00:01", "ip": "10.0.0.2"}]}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24},
               "dhcp_hosts": [{"mac": "00:00:00:00:00:00", "ip": "10.0.0.2"}]}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24},
               "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2", "name": "9x"}]}),
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24},
               "dhcp_hosts": [{"mac": "52:54:00:00:00:01"}]}),
        json!({"name": "n", "autostart": "yes"}),
    ];
    for doc in refused {
        assert!(!v.is_valid(&doc), "schema accepts {doc}");
        assert!(parse(doc.clone()).is_err(), "parser accepts {doc}");
    }
}
