use serde_json::json;

use super::*;

// XML generation, the round trip through the record, and the schema.
#[path = "spec_xml_tests.rs"]
mod xml;

fn parse(doc: serde_json::Value) -> Result<NetworkSpec> {
    parse_network_spec(&doc.to_string())
}

/// The message of a refused spec.
fn refused(doc: serde_json::Value) -> String {
    match parse(doc.clone()) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("{doc} gave {other:?}, not InvalidArgument"),
    }
}

/// Refused with exactly one problem, at `path`.
fn refused_at(doc: serde_json::Value, path: &str) -> String {
    let m = refused(doc.clone());
    // Problems are joined with "; " and each starts with a path (no spaces).
    let more = m
        .split("; ")
        .skip(1)
        .any(|part| part.split_once(": ").is_some_and(|(p, _)| !p.contains(' ')));
    assert!(
        m.starts_with(&format!("{path}: ")) && !more,
        "{doc}: expected one problem at {path}, got: {m}"
    );
    m
}

fn nat_doc() -> serde_json::Value {
    json!({
        "name": "lab",
        "mode": "nat",
        "bridge": "virbr7",
        "forward_device": "eth0",
        "ipv4": {"address": "192.168.100.1", "prefix": 24,
                 "dhcp": {"start": "192.168.100.10", "end": "192.168.100.200"}},
        "ipv6": {"address": "fd00:100::1", "prefix": 64},
        "domain": "lab.example",
        "dhcp_hosts": [
            {"mac": "52:54:00:AA:00:01", "ip": "192.168.100.5", "name": "web"},
            {"mac": "52:54:00:aa:00:02", "ip": "192.168.100.6"}
        ],
        "autostart": true,
        "start": false
    })
}

#[test]
fn spec_minimal_is_isolated_started_not_autostarted() {
    let s = parse(json!({"name": "lab"})).unwrap();
    assert_eq!(
        s,
        NetworkSpec {
            name: "lab".into(),
            mode: NetworkMode::Isolated,
            bridge: None,
            forward_device: None,
            ipv4: None,
            ipv6: None,
            domain: None,
            dhcp_hosts: vec![],
            autostart: false,
            start: true,
        }
    );
}

#[test]
fn spec_full_nat_parses_every_field() {
    let s = parse(nat_doc()).unwrap();
    assert_eq!(s.mode, NetworkMode::Nat);
    assert_eq!(s.bridge.as_deref(), Some("virbr7"));
    assert_eq!(s.forward_device.as_deref(), Some("eth0"));
    assert_eq!(
        s.ipv4,
        Some(Ipv4 {
            address: "192.168.100.1".parse().unwrap(),
            prefix: 24,
            dhcp: Some((
                "192.168.100.10".parse().unwrap(),
                "192.168.100.200".parse().unwrap()
            )),
        })
    );
    assert_eq!(s.ipv6.as_ref().map(|v| v.prefix), Some(64));
    assert_eq!(s.domain.as_deref(), Some("lab.example"));
    assert_eq!(s.dhcp_hosts[0].mac, "52:54:00:aa:00:01", "lower-cased");
    assert_eq!(s.dhcp_hosts[1].name, "");
    assert!(s.autostart && !s.start);
}

#[test]
fn spec_modes_have_their_words() {
    for m in NetworkMode::ALL {
        assert_eq!(NetworkMode::from_name(m.as_str()), Some(m));
        let mut doc = json!({"name": "n", "mode": m.as_str()});
        match m {
            NetworkMode::Nat => doc["ipv4"] = json!({"address": "10.0.0.1", "prefix": 24}),
            NetworkMode::Bridge => doc["bridge"] = json!("br0"),
            _ => {}
        }
        assert_eq!(parse(doc).unwrap().mode, m);
    }
    assert_eq!(NetworkMode::default(), NetworkMode::Isolated);
}

#[test]
fn spec_unknown_fields_are_named_with_their_path() {
    let m = refused_at(
        json!({"name": "n", "ipv4": {"adress": "10.0.0.1", "address": "10.0.0.1", "prefix": 24}}),
        "ipv4.adress",
    );
    assert!(
        m.starts_with("ipv4.adress: unknown field (known: address, prefix, dhcp)"),
        "{m}"
    );
    refused_at(json!({"name": "n", "colour": "red"}), "colour");
    refused_at(json!({"name": "n", "a b": 1}), "[\"a b\"]");
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24,
                "dhcp": {"start": "10.0.0.2", "end": "10.0.0.9", "lease": "1h"}}}),
        "ipv4.dhcp.lease",
    );
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24},
               "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2", "host": "x"}]}),
        "dhcp_hosts[0].host",
    );
    refused_at(
        json!({"name": "n", "ipv6": {"address": "fd00::1", "prefix": 64, "x": 1}}),
        "ipv6.x",
    );
}

#[test]
fn spec_json_is_strict() {
    let dup = parse_network_spec(r#"{"name": "a", "name": "b"}"#).unwrap_err();
    assert_eq!(
        dup,
        Error::InvalidArgument("spec: duplicate key name".into())
    );
    let bad = parse_network_spec(r#"{"name": "a",}"#).unwrap_err();
    assert!(matches!(bad, Error::InvalidArgument(m) if m.starts_with("spec is not valid JSON")));
    assert!(parse_network_spec(r#"{"name": "a"} x"#).is_err());
    refused_at(json!(["name"]), "spec");
    refused_at(json!({"name": "a\u{0}b"}), "name");
    refused_at(json!({"name": "n", "domain": "a\tb"}), "domain");
}

#[test]
fn spec_types_are_checked_per_field() {
    refused_at(json!({}), "name");
    refused_at(json!({"name": 5}), "name");
    refused_at(json!({"name": "n", "mode": 1}), "mode");
    refused_at(json!({"name": "n", "bridge": true}), "bridge");
    refused_at(json!({"name": "n", "ipv4": "10.0.0.1/24"}), "ipv4");
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1"}}),
        "ipv4.prefix",
    );
    refused_at(json!({"name": "n", "ipv4": {"prefix": 24}}), "ipv4.address");
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": "24"}}),
        "ipv4.prefix",
    );
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24.5}}),
        "ipv4.prefix",
    );
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": -8}}),
        "ipv4.prefix",
    );
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24, "dhcp": []}}),
        "ipv4.dhcp",
    );
    refused_at(
        json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24, "dhcp": {"start": "10.0.0.2"}}}),
        "ipv4.dhcp.end",
    );
    refused_at(
        json!({"name": "n", "ipv6": {"address": "fd00::1"}}),
        "ipv6.prefix",
    );
    refused_at(json!({"name": "n", "domain": ["a"]}), "domain");
    refused_at(json!({"name": "n", "dhcp_hosts": {}}), "dhcp_hosts");
    refused_at(json!({"name": "n", "autostart": "yes"}), "autostart");
    refused_at(json!({"name": "n", "start": 1}), "start");
    // 24.0 is an integer, as JSON Schema says.
    let s = parse(json!({"name": "n", "ipv4": {"address": "10.0.0.1", "prefix": 24.0}})).unwrap();
    assert_eq!(s.ipv4.unwrap().prefix, 24);
}

#[test]
fn spec_names_follow_the_rules() {
    for ok in [
        "lab",
        "Lab net 2",
        "réseau",
        "a.b-c_d",
        "x".repeat(64).as_str(),
    ] {
        assert_eq!(parse(json!({"name": ok})).unwrap().name, ok);
    }
    let long = "x".repeat(65);
    for bad in [
        "",
        ".",
        "..",
        "-x",
        ".hidden",
        "a/b",
        "a<b",
        "a>b",
        "a&b",
        "a'b",
        "a\"b",
        &long,
        "a\u{85}b",
        "a\u{FFFE}b",
    ] {
        refused_at(json!({ "name": bad }), "name");
    }
}

#[test]
fn spec_interface_names_follow_the_rules() {
    for ok in ["br0", "virbr-lab.1", "a_b", "x23456789012345"] {
        assert!(parse(json!({"name": "n", "bridge": ok})).is_ok(), "{ok}");
    }
    for bad in ["", ".", "..", "x234567890123456", "br 0", "br/0", "brü"] {
        refused_at(json!({"name": "n", "bridge": bad}), "bridge");
        refused_at(
            json!({"name": "n", "mode": "route", "ipv4": {"address": "10.0.0.1", "prefix": 24},
                   "forward_device": bad}),
            "forward_device",
        );
    }
}

#[test]
fn spec_modes_impose_their_rules() {
    let m = refused_at(json!({"name": "n", "mode": "bridge"}), "bridge");
    assert!(m.contains("required"), "{m}");
    for (key, value) in [
        ("ipv4", json!({"address": "10.0.0.1", "prefix": 24})),
        ("ipv6", json!({"address": "fd00::1", "prefix": 64})),
        ("domain", json!("lab")),
        ("forward_device", json!("eth0")),
    ] {
        let mut doc = json!({"name": "n", "mode": "bridge", "bridge": "br0"});
        doc[key] = value;
        refused_at(doc, key);
    }
    refused_at(
        json!({"name": "n", "mode": "bridge", "bridge": "br0",
               "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2"}]}),
        "dhcp_hosts",
    );
    assert!(
        parse(json!({"name": "n", "mode": "bridge", "bridge": "br0", "dhcp_hosts": []})).is_ok()
    );
    refused_at(json!({"name": "n", "mode": "nat"}), "ipv4");
    assert!(parse(
        json!({"name": "n", "mode": "route", "ipv6": {"address": "fd00::1", "prefix": 64}})
    )
    .is_ok());
    for mode in ["isolated", "open"] {
        refused_at(
            json!({"name": "n", "mode": mode, "forward_device": "eth0"}),
            "forward_device",
        );
    }
    refused_at(json!({"name": "n", "mode": "bridged"}), "mode");
    refused_at(
        json!({"name": "n", "dhcp_hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.0.0.2"}]}),
        "dhcp_hosts",
    );
}

#[test]
fn spec_ipv4_addresses_are_host_addresses() {
    let v4 = |address: &str, prefix: u64| json!({"name": "n", "ipv4": {"address": address, "prefix": prefix}});
    assert!(parse(v4("10.0.0.1", 8)).is_ok());
    assert!(parse(v4("192.168.1.254", 24)).is_ok());
    assert!(parse(v4("10.0.0.1", 30)).is_ok());
    for (a, p) in [
        ("192.168.1.0", 24),
        ("192.168.1.255", 24),
        ("10.0.0.3", 30),
        ("0.0.0.0", 24),
        ("127.0.0.1", 8),
        ("224.0.0.1", 24),
        ("240.0.0.1", 24),
        ("255.255.255.255", 24),
        ("10.0.0", 24),
        ("010.0.0.1", 24),
        ("fd00::1", 24),
    ] {
        refused_at(v4(a, p), "ipv4.address");
    }
    for p in [0, 31, 32, 33] {
        refused_at(v4("10.0.0.1", p), "ipv4.prefix");
    }
}

#[test]
fn spec_ipv6_addresses_are_host_addresses() {
    let v6 = |address: &str, prefix: u64| json!({"name": "n", "ipv6": {"address": address, "prefix": prefix}});
    assert!(parse(v6("fd00:1::1", 64)).is_ok());
    assert!(parse(v6("2001:db8::5", 128)).is_ok());
    for a in [
        "fd00:1::",
        "::",
        "::1",
        "ff02::1",
        "10.0.0.1",
        "fd00::1%eth0",
    ] {
        refused_at(v6(a, 64), "ipv6.address");
    }
    for p in [0, 129] {
        refused_at(v6("fd00::1", p), "ipv6.prefix");
    }
}

#[test]
fn spec_dhcp_range_lies_inside_the_subnet() {
    let range = |start: &str, end: &str| {
        json!({"name": "n", "ipv4": {"address": "10.1.2.1", "prefix": 24,
               "dhcp": {"start": start, "end": end}}})
    };
    assert!(parse(range("10.1.2.2", "10.1.2.254")).is_ok());
    assert!(parse(range("10.1.2.9", "10.1.2.9")).is_ok());
    refused_at(range("10.1.3.2", "10.1.2.254"), "ipv4.dhcp.start");
    refused_at(range("10.1.2.2", "10.1.2.255"), "ipv4.dhcp.end");
    refused_at(range("10.1.2.0", "10.1.2.9"), "ipv4.dhcp.start");
    refused_at(range("10.1.2.1", "10.1.2.9"), "ipv4.dhcp.start");
    refused_at(range("10.1.2.9", "10.1.2.8"), "ipv4.dhcp.end");
    refused_at(range("nope", "10.1.2.8"), "ipv4.dhcp.start");
    let m = refused_at(
        json!({"name": "n", "ipv4": {"address": "10.1.2.100", "prefix": 24,
               "dhcp": {"start": "10.1.2.2", "end": "10.1.2.254"}}}),
        "ipv4.dhcp",
    );
    assert!(m.contains("ipv4.address"), "{m}");
}

#[test]
fn spec_dhcp_hosts_are_checked_and_unique() {
    let hosts = |h: serde_json::Value| json!({"name": "n", "ipv4": {"address": "10.1.2.1", "prefix": 24}, "dhcp_hosts": h});
    let ok = parse(hosts(
        json!([{"mac": "52:54:00:00:00:01", "ip": "10.1.2.2", "name": "a"}]),
    ))
    .unwrap();
    assert_eq!(ok.dhcp_hosts.len(), 1);
    refused_at(hosts(json!([{"ip": "10.1.2.2"}])), "dhcp_hosts[0].mac");
    refused_at(
        hosts(json!([{"mac": "52:54:00:00:00:01"}])),
        "dhcp_hosts[0].ip",
    );
    refused_at(hosts(json!(["x"])), "dhcp_hosts[0]");
    refused_at(
        hosts(json!([{"mac": "52:54:00:00:00:01", "ip": "10.1.3.2"}])),
        "dhcp_hosts[0].ip",
    );
    refused_at(
        hosts(json!([{"mac": "52:54:00:00:00:01", "ip": "10.1.2.1"}])),
        "dhcp_hosts[0].ip",
    );
    refused_at(
        hosts(json!([{"mac": "01:00:5e:00:00:01", "ip": "10.1.2.2"}])),
        "dhcp_hosts[0].mac",
    );
    refused_at(
        hosts(json!([{"mac": "52:54:00:00:00:01", "ip": "10.1.2.2", "name": 3}])),
        "dhcp_hosts[0].name",
    );
    let m = refused_at(
        hosts(json!([
            {"mac": "52:54:00:00:00:01", "ip": "10.1.2.2"},
            {"mac": "52:54:00:00:00:0A", "ip": "10.1.2.3"},
            {"mac": "52:54:00:00:00:0a", "ip": "10.1.2.4"}
        ])),
        "dhcp_hosts[2].mac",
    );
    assert!(m.contains("dhcp_hosts[1].mac"), "{m}");
    refused_at(
        hosts(json!([
            {"mac": "52:54:00:00:00:01", "ip": "10.1.2.2"},
            {"mac": "52:54:00:00:00:02", "ip": "10.1.2.2"}
        ])),
        "dhcp_hosts[1].ip",
    );
    let many: Vec<_> = (0..=MAX_DHCP_HOSTS)
        .map(|i| json!({"mac": format!("52:54:00:00:{:02x}:{:02x}", i / 256, i % 256), "ip": "10.1.2.2"}))
        .collect();
    refused_at(hosts(json!(many)), "dhcp_hosts");
}

#[test]
fn spec_domain_is_a_dns_name() {
    for ok in ["lab", "lab.example", "a-b.c1", "1lab.example"] {
        assert!(parse(json!({"name": "n", "domain": ok})).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-lab",
        "lab-",
        "a..b",
        "lab.",
        "a_b",
        "lab example",
        &"x".repeat(64),
    ] {
        refused_at(json!({"name": "n", "domain": bad}), "domain");
    }
}

#[test]
fn spec_every_problem_is_reported_at_once_sorted() {
    let m = refused(json!({"name": "", "mode": "nat", "bridge": "..", "ipv4": {"prefix": 99}}));
    let paths: Vec<&str> = m
        .split("; ")
        .map(|p| p.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["bridge", "ipv4.address", "ipv4.prefix", "name"],
        "{m}"
    );
}

#[test]
fn dhcp_host_check_for_live_changes() {
    let subnet = Some(("192.168.100.1".parse().unwrap(), 24));
    let h = check_dhcp_host("52:54:00:AB:CD:EF", "192.168.100.7", "db", subnet).unwrap();
    assert_eq!(
        h,
        DhcpHost {
            mac: "52:54:00:ab:cd:ef".into(),
            ip: "192.168.100.7".parse().unwrap(),
            name: "db".into()
        }
    );
    assert!(check_dhcp_host("52:54:00:ab:cd:ef", "10.9.9.9", "", None).is_ok());
    let at = |mac: &str, ip: &str, name: &str, path: &str| match check_dhcp_host(
        mac, ip, name, subnet,
    ) {
        Err(Error::InvalidArgument(m)) => assert!(m.starts_with(&format!("{path}: ")), "{m}"),
        other => panic!("{mac} {ip} {name}: {other:?}"),
    };
    for mac in [
        "",
        "52:54:00:ab:cd",
        "52-54-00-ab-cd-ef",
        "52:54:00:ab:cd:eg",
        "525:4:00:ab:cd:ef",
        "ff:ff:ff:ff:ff:ff",
        "00:00:00:00:00:00",
    ] {
        at(mac, "192.168.100.7", "", "mac");
    }
    for ip in [
        "",
        "192.168.101.7",
        "192.168.100.0",
        "192.168.100.255",
        "192.168.100.1",
        "fd00::7",
    ] {
        at("52:54:00:ab:cd:ef", ip, "", "ip");
    }
    for name in ["1host", "-a", "a b", "a_b", "a.", "a'b"] {
        at("52:54:00:ab:cd:ef", "192.168.100.7", name, "name");
    }
    let m = match check_dhcp_host("52:54:00:ab:cd:ef", "192.168.101.7", "", subnet) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(m.contains("192.168.100.1/24"), "{m}");
}

#[test]
fn dhcp_host_xml_leaves_out_an_empty_name() {
    let h = |name: &str| DhcpHost {
        mac: "52:54:00:00:00:01".into(),
        ip: "10.0.0.2".parse().unwrap(),
        name: name.into(),
    };
    assert_eq!(
        dhcp_host_xml(&h("")),
        "<host mac='52:54:00:00:00:01' ip='10.0.0.2'/>"
    );
    assert_eq!(
        dhcp_host_xml(&h("web")),
        "<host mac='52:54:00:00:00:01' ip='10.0.0.2' name='web'/>"
    );
}
