use super::*;

/// What `virsh net-dumpxml` gives for a running NAT network.
const NAT_LIVE: &str = r#"<network connections='1'>
  <name>default</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:cd:21'/>
  <domain name='lab.example' localOnly='yes'/>
  <ip family='ipv6' address='fd00:1::1' prefix='64'>
  </ip>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
      <host mac='52:54:00:6c:3c:01' name='web' ip='192.168.122.10'/>
      <host mac='52:54:00:6c:3c:02' ip='192.168.122.11'/>
    </dhcp>
  </ip>
</network>"#;

#[test]
fn network_xml_record_reads_every_field() {
    let r = parse_network_xml(NAT_LIVE, true, true, true).unwrap();
    assert_eq!(
        r,
        NetworkRecord {
            uuid: "3e3fce45-4f53-4fa7-bb32-11f34168b82b".into(),
            name: "default".into(),
            active: true,
            autostart: true,
            persistent: true,
            mode: "nat".into(),
            bridge: "virbr0".into(),
            ipv4_address: "192.168.122.1".into(),
            ipv4_prefix: 24,
            ipv6_address: "fd00:1::1".into(),
            ipv6_prefix: 64,
            dhcp_start: "192.168.122.2".into(),
            dhcp_end: "192.168.122.254".into(),
            domain: "lab.example".into(),
            dhcp_hosts: vec![
                (
                    "52:54:00:6c:3c:01".into(),
                    "192.168.122.10".into(),
                    "web".into()
                ),
                (
                    "52:54:00:6c:3c:02".into(),
                    "192.168.122.11".into(),
                    "".into()
                ),
            ],
        }
    );
}

#[test]
fn network_xml_without_forward_is_isolated_and_flags_pass_through() {
    let xml = "<network><name>lab</name><uuid>u</uuid><bridge name='virbr9'/></network>";
    let r = parse_network_xml(xml, false, false, true).unwrap();
    assert_eq!(r.mode, "isolated");
    assert_eq!((r.active, r.autostart, r.persistent), (false, false, true));
    assert_eq!(r.bridge, "virbr9");
    assert_eq!((r.ipv4_address.as_str(), r.ipv4_prefix), ("", 0));
    assert_eq!((r.ipv6_address.as_str(), r.ipv6_prefix), ("", 0));
    assert!(r.dhcp_hosts.is_empty());
    assert_eq!(r.domain, "");
}

#[test]
fn network_xml_forward_without_mode_is_nat_and_other_modes_pass_through() {
    let xml = |fwd: &str| format!("<network><name>n</name>{fwd}</network>");
    let mode = |fwd: &str| {
        parse_network_xml(&xml(fwd), true, false, true)
            .unwrap()
            .mode
    };
    assert_eq!(mode("<forward/>"), "nat");
    assert_eq!(mode("<forward mode='route' dev='eth0'/>"), "route");
    assert_eq!(mode("<forward mode='open'/>"), "open");
    assert_eq!(mode("<forward mode='bridge'/>"), "bridge");
    assert_eq!(mode("<forward mode='passthrough'/>"), "passthrough");
}

#[test]
fn network_xml_prefix_comes_from_prefix_netmask_or_class() {
    let prefix = |ip: &str| {
        let xml = format!("<network><name>n</name>{ip}</network>");
        let r = parse_network_xml(&xml, true, false, true).unwrap();
        (r.ipv4_prefix, r.ipv6_prefix)
    };
    assert_eq!(prefix("<ip address='10.1.0.1' prefix='16'/>"), (16, 0));
    assert_eq!(
        prefix("<ip address='10.1.0.1' netmask='255.255.240.0'/>"),
        (20, 0)
    );
    assert_eq!(prefix("<ip address='10.1.0.1'/>"), (8, 0));
    assert_eq!(prefix("<ip address='172.16.0.1'/>"), (16, 0));
    assert_eq!(prefix("<ip address='192.168.5.1'/>"), (24, 0));
    assert_eq!(prefix("<ip family='ipv6' address='fd00::1'/>"), (0, 64));
    assert_eq!(
        prefix(
            "<ip family='ipv4' address='10.0.0.1' prefix='8'/><ip address='fd00::1' prefix='48'/>"
        ),
        (8, 48)
    );
}

#[test]
fn network_xml_dhcp_comes_from_the_ipv4_element_only() {
    let xml = "<network><name>n</name>
      <ip family='ipv6' address='fd00::1' prefix='64'><dhcp>
        <range start='fd00::10' end='fd00::20'/><host id='0:1' ip='fd00::5'/></dhcp></ip>
      <ip address='10.0.0.1' prefix='24'/>
    </network>";
    let r = parse_network_xml(xml, true, false, true).unwrap();
    assert_eq!(r.dhcp_start, "");
    assert!(r.dhcp_hosts.is_empty());
    assert_eq!(r.ipv4_address, "10.0.0.1");
}

#[test]
fn network_xml_text_is_unescaped() {
    let xml = "<network><name>a &amp; b</name><domain name='x'/></network>";
    assert_eq!(
        parse_network_xml(xml, false, false, true).unwrap().name,
        "a & b"
    );
}

#[test]
fn network_xml_that_is_not_a_network_is_an_error() {
    assert!(parse_network_xml("<network><name>x</name>", true, true, true).is_err());
    assert!(parse_network_xml("<domain><name>x</name></domain>", true, true, true).is_err());
    assert!(parse_network_xml("<network><uuid>u</uuid></network>", true, true, true).is_err());
    assert!(parse_network_xml("<network><name> </name></network>", true, true, true).is_err());
}

#[test]
fn ipv4_parent_index_counts_every_ip_element() {
    let root = Element::parse(NAT_LIVE).unwrap();
    let (i, ip) = ipv4_element(&root).unwrap();
    assert_eq!(i, 1);
    assert_eq!(ip.attr("address"), Some("192.168.122.1"));
    let only_v6 =
        Element::parse("<network><ip family='ipv6' address='fd00::1'/></network>").unwrap();
    assert!(ipv4_element(&only_v6).is_none());
    assert!(matches!(
        ipv4_of(&only_v6, "u"),
        Err(Error::InvalidState(m)) if m.contains("no IPv4")
    ));
}

#[test]
fn host_xml_escapes_and_leaves_out_empty_attributes() {
    assert_eq!(
        host_xml("52:54:00:00:00:01", "10.0.0.5", "web"),
        "<host mac='52:54:00:00:00:01' ip='10.0.0.5' name='web'/>"
    );
    assert_eq!(
        host_xml("52:54:00:00:00:01", "", ""),
        "<host mac='52:54:00:00:00:01'/>"
    );
    assert_eq!(
        host_xml("a'b", "", "<x>"),
        "<host mac='a&apos;b' name='&lt;x&gt;'/>"
    );
}

#[test]
fn host_updates_for_live_and_config_merge_only_when_identical() {
    let step = |flags, parent, xml: &str| HostUpdate {
        flags,
        parent,
        xml: xml.into(),
    };
    let same = merged(vec![
        step(UPDATE_LIVE, 0, "<host/>"),
        step(UPDATE_CONFIG, 0, "<host/>"),
    ]);
    assert_eq!(same, vec![step(UPDATE_LIVE | UPDATE_CONFIG, 0, "<host/>")]);
    let moved = vec![
        step(UPDATE_LIVE, 0, "<host/>"),
        step(UPDATE_CONFIG, 1, "<host/>"),
    ];
    assert_eq!(merged(moved.clone()), moved);
    let differ = vec![
        step(UPDATE_LIVE, 0, "<host a='1'/>"),
        step(UPDATE_CONFIG, 0, "<host/>"),
    ];
    assert_eq!(merged(differ.clone()), differ);
    let one = vec![step(UPDATE_CONFIG, 2, "<host/>")];
    assert_eq!(merged(one.clone()), one);
}

#[test]
fn macs_compare_without_case() {
    assert!(same_mac("52:54:00:AB:cd:01", "52:54:00:ab:CD:01"));
    assert!(!same_mac("52:54:00:ab:cd:01", "52:54:00:ab:cd:02"));
}
