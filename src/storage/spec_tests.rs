use serde_json::{json, Value};

use super::*;
use crate::libvirt::xml::Element;

fn pool_error(doc: &str) -> String {
    match parse_pool_spec(doc) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument for {doc}, got {other:?}"),
    }
}

fn volume_error(doc: &str) -> String {
    match parse_volume_spec(doc) {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument for {doc}, got {other:?}"),
    }
}

/// Each line `<pool spec> => <whole error message>`.
fn assert_pool_messages(table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (doc, want) = line.split_once(" => ").expect("`doc => message`");
        assert_eq!(pool_error(doc), want, "for {doc}");
    }
}

fn assert_volume_messages(table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (doc, want) = line.split_once(" => ").expect("`doc => message`");
        assert_eq!(volume_error(doc), want, "for {doc}");
    }
}

/// The pool's XML, parsed back.
fn pool_doc(spec: &str) -> (PoolSpec, Element) {
    let spec = parse_pool_spec(spec).unwrap();
    let el = Element::parse(&pool_xml(&spec)).unwrap();
    assert_eq!(el.name, "pool");
    assert_eq!(el.attr("type"), Some(spec.kind.as_str()));
    assert_eq!(el.child_text("name"), Some(spec.name.as_str()));
    let target = el.child("target").and_then(|t| t.child_text("path"));
    assert_eq!(target, Some(spec.target.as_str()));
    (spec, el)
}

fn attrs<'a>(el: &'a Element, child: &'a str, attr: &'a str) -> Vec<&'a str> {
    el.child("source")
        .map(|s| {
            s.children_named(child)
                .filter_map(|c| c.attr(attr))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dir_pool_gets_defaults_and_plain_xml() {
    let (spec, el) = pool_doc(r#"{"name": "isos", "type": "dir", "target": "/srv/a&b's isos"}"#);
    assert_eq!((spec.autostart, spec.start, spec.build), (true, true, true));
    assert_eq!(spec.source, PoolSource::default());
    assert!(el.child("source").is_none());
    assert_eq!(spec.target, "/srv/a&b's isos");
    assert!(pool_xml(&spec).contains("/srv/a&amp;b&apos;s isos"));
}

#[test]
fn fs_pool_takes_one_device_and_defaults_format() {
    let (spec, el) = pool_doc(
        r#"{"name": "data", "type": "fs", "target": "/mnt/data",
            "source": {"device": "/dev/sdb1"}, "autostart": false}"#,
    );
    assert!(!spec.autostart && spec.start && spec.build);
    assert_eq!(attrs(&el, "device", "path"), ["/dev/sdb1"]);
    assert_eq!(attrs(&el, "format", "type"), ["auto"]);
    let (_, el) = pool_doc(
        r#"{"name": "data", "type": "fs", "target": "/mnt/data",
            "source": {"device": ["/dev/sdb1"], "format": "xfs"}}"#,
    );
    assert_eq!(attrs(&el, "format", "type"), ["xfs"]);
}

#[test]
fn netfs_pool_names_host_and_export() {
    let (spec, el) = pool_doc(
        r#"{"name": "nfs-isos", "type": "netfs", "target": "/var/lib/vapor/nfs",
            "source": {"host": "nas.example.org", "dir": "/export/isos"}}"#,
    );
    assert_eq!(spec.source.format.as_deref(), Some("nfs"));
    assert_eq!(attrs(&el, "host", "name"), ["nas.example.org"]);
    assert_eq!(attrs(&el, "dir", "path"), ["/export/isos"]);
    assert_eq!(attrs(&el, "format", "type"), ["nfs"]);
    for host in ["192.0.2.7", "fd00::1", "nas"] {
        let doc = json!({"name": "n", "type": "netfs", "target": "/mnt/n",
                         "source": {"host": host, "dir": "/"}});
        assert!(parse_pool_spec(&doc.to_string()).is_ok(), "{host}");
    }
}

#[test]
fn logical_pool_defaults_target_and_does_not_build() {
    let (spec, el) =
        pool_doc(r#"{"name": "vms", "type": "logical", "source": {"name": "vg_vms"}}"#);
    assert_eq!(spec.target, "/dev/vg_vms");
    assert!(!spec.build);
    assert_eq!(
        el.child("source").unwrap().child_text("name"),
        Some("vg_vms")
    );
    assert!(attrs(&el, "device", "path").is_empty());
    let (spec, el) = pool_doc(
        r#"{"name": "vms", "type": "logical", "build": true, "target": "/dev/vg_vms",
            "source": {"name": "vg_vms", "device": ["/dev/sdc", "/dev/sdd"], "format": "lvm2"}}"#,
    );
    assert!(spec.build);
    assert_eq!(attrs(&el, "device", "path"), ["/dev/sdc", "/dev/sdd"]);
    assert_eq!(attrs(&el, "format", "type"), ["lvm2"]);
}

#[test]
fn iscsi_pool_puts_the_target_iqn_in_device() {
    let (spec, el) = pool_doc(
        r#"{"name": "san", "type": "iscsi",
            "source": {"host": "10.0.0.5", "target": "iqn.2004-04.com.example:storage.disk1",
                       "initiator": "iqn.2024-01.org.vapor:host1"}}"#,
    );
    assert_eq!(spec.target, "/dev/disk/by-path");
    assert!(!spec.build);
    assert_eq!(attrs(&el, "host", "name"), ["10.0.0.5"]);
    assert_eq!(
        attrs(&el, "device", "path"),
        ["iqn.2004-04.com.example:storage.disk1"]
    );
    let iqn = el.child("source").unwrap().child("initiator").unwrap();
    assert_eq!(
        iqn.child("iqn").and_then(|i| i.attr("name")),
        Some("iqn.2024-01.org.vapor:host1")
    );
}

#[test]
fn pool_field_errors_name_their_path() {
    let known = "known: device, dir, format, host, initiator, name, target";
    assert_eq!(
        pool_error(r#"{"name": "x", "type": "dir", "target": "/x", "source": {"hots": "a"}}"#),
        format!("source.hots: unknown field ({known})")
    );
    assert_pool_messages(
        r#"
        [] => spec: must be an object
        {} => name: is required; type: is required
        {"name": "x", "type": "zfs"} => type: must be one of dir, fs, netfs, logical, iscsi
        {"name": "x", "type": "dir"} => target: is required for dir pools
        {"name": "x", "type": "dir", "target": "/x", "colour": 1} => colour: unknown field (known: autostart, build, name, source, start, target, type)
        {"name": "x", "type": "dir", "target": "/x", "a b": 1} => ["a b"]: unknown field (known: autostart, build, name, source, start, target, type)
        {"name": 7, "type": "dir", "target": "/x"} => name: must be a string
        {"name": "x", "type": "dir", "target": "/x", "autostart": "yes"} => autostart: must be a boolean
        {"name": "x", "type": "dir", "target": "/x", "start": 1, "build": null} => build: must be a boolean; start: must be a boolean
        {"name": "x", "type": "dir", "target": "/x", "source": []} => source: must be an object
        {"name": "x", "type": "dir", "target": "/x", "source": {"host": "a"}} => source.host: is not used by dir pools
        {"name": "x", "type": "dir", "target": "x"} => target: must be an absolute path
        {"name": "x", "type": "dir", "target": "/"} => target: must not be /
        {"name": "x", "type": "dir", "target": "/a//b"} => target: must not contain //
        {"name": "x", "type": "dir", "target": "/a/../b"} => target: must not contain . or .. components
        {"name": "x", "type": "dir", "target": "/a/./b"} => target: must not contain . or .. components
        {"name": "x", "type": "dir", "target": "/a/"} => target: must not end with /
        {"name": "x", "type": "dir", "target": "/a\u0000"} => target: contains NUL (U+0000) at character 3
        {"name": "x", "type": "fs", "target": "/m"} => source.device: is required for fs pools
        {"name": "x", "type": "fs", "target": "/m", "source": {"device": ["/dev/a", "/dev/b"]}} => source.device: an fs pool takes exactly one device
        {"name": "x", "type": "fs", "target": "/m", "source": {"device": []}} => source.device: must not be empty
        {"name": "x", "type": "fs", "target": "/m", "source": {"device": "sdb"}} => source.device: must be an absolute path
        {"name": "x", "type": "fs", "target": "/m", "source": {"device": ["/dev/a", 3]}} => source.device: an fs pool takes exactly one device; source.device[1]: must be a string
        {"name": "x", "type": "fs", "target": "/m", "source": {"device": 3}} => source.device: must be a path or an array of paths
        {"name": "x", "type": "fs", "target": "/m", "source": {"device": "/dev/a", "format": "nfs"}} => source.format: must be one of auto, ext2, ext3, ext4, ufs, iso9660, udf, gfs, gfs2, vfat, hfs+, xfs, ocfs2, vmfs for fs pools
        {"name": "x", "type": "netfs", "target": "/m"} => source.dir: is required for netfs pools; source.host: is required for netfs pools
        {"name": "x", "type": "netfs", "target": "/m", "source": {"host": "a b", "dir": "/e"}} => source.host: must be a host name or an IP address
        {"name": "x", "type": "netfs", "target": "/m", "source": {"host": "a/b", "dir": "/e"}} => source.host: must be a host name or an IP address
        {"name": "x", "type": "netfs", "target": "/m", "source": {"host": "-a", "dir": "e"}} => source.dir: must be an absolute path; source.host: must be a host name or an IP address
        {"name": "x", "type": "netfs", "target": "/m", "source": {"host": "h", "dir": "/e", "format": "cifs"}} => source.format: must be one of auto, nfs, glusterfs for netfs pools
        {"name": "x", "type": "logical"} => source.name: is required for logical pools
        {"name": "x", "type": "logical", "source": {"name": "vg/0"}} => source.name: must be a volume group name: letters, digits, '+', '_', '.', '-'
        {"name": "x", "type": "logical", "source": {"name": "-vg"}} => source.name: must not start with '-'
        {"name": "x", "type": "logical", "build": true, "source": {"name": "vg"}} => source.device: is required to build a logical pool (or set build to false)
        {"name": "x", "type": "logical", "source": {"name": "vg", "host": "h"}} => source.host: is not used by logical pools
        {"name": "x", "type": "iscsi"} => source.host: is required for iscsi pools; source.target: is required for iscsi pools
        {"name": "x", "type": "iscsi", "source": {"host": "h", "target": "iqn.x"}} => source.target: must be an iSCSI name like iqn.2004-01.org.example:disk1
        {"name": "x", "type": "iscsi", "source": {"host": "h", "target": "eui.02004567A425678D", "initiator": "iqn.2024-01.org vapor"}} => source.initiator: must be an iSCSI name like iqn.2004-01.org.example:disk1
        {"name": "x", "type": "iscsi", "source": {"host": "h", "target": "naa.0123456789abcdef", "device": "/dev/sda"}} => source.device: is not used by iscsi pools
        "#,
    );
}

#[test]
fn many_problems_are_counted_not_listed() {
    let mut doc = serde_json::Map::new();
    for i in 0..150 {
        doc.insert(format!("k{i:03}"), json!(1));
    }
    let msg = pool_error(&Value::Object(doc).to_string());
    assert_eq!(msg.matches("unknown field").count(), 100);
    assert!(msg.ends_with("; … and 52 more"), "{msg}");
}

#[test]
fn specs_are_parsed_strictly() {
    assert_eq!(
        pool_error(r#"{"name": "a", "name": "b"}"#),
        "spec: duplicate key name"
    );
    assert_eq!(
        pool_error(r#"{"name": }"#),
        "spec is not valid JSON: line 1 column 10: expected value"
    );
    assert_eq!(
        pool_error(r#"{"name": "x", "type": "dir", "target": "/a\nb"}"#),
        "target: contains a line feed (U+000A) at character 3; must be one line"
    );
    assert_eq!(
        volume_error(r#"{"name": "x", "capacity": 1, "capacity": 2}"#),
        "spec: duplicate key capacity"
    );
}

#[test]
fn unsafe_names_are_refused_naming_the_field() {
    let cases = [
        ("", "must not be empty"),
        (".", "must not be . or .."),
        ("..", "must not be . or .."),
        ("/", "must not contain '/'"),
        ("a/b", "must not contain '/'"),
        ("../etc", "must not contain '/'"),
        ("-rf", "must not start with '-'"),
        (".hidden", "must not start with '.'"),
        ("<x>", "must not contain <, >, &, ' or \""),
        ("a&b", "must not contain <, >, &, ' or \""),
        ("it's", "must not contain <, >, &, ' or \""),
        ("a\"b", "must not contain <, >, &, ' or \""),
        (" x", "must not start or end with whitespace"),
        ("x\u{3000}", "must not start or end with whitespace"),
        (
            "a\u{1}b",
            "contains the control character U+0001 at character 2",
        ),
        (
            "a\nb",
            "contains a line feed (U+000A) at character 2; must be one line",
        ),
    ];
    for (name, want) in cases {
        assert_eq!(
            check_object_name("pool.name", name),
            Err(Error::InvalidArgument(format!("pool.name: {want}"))),
            "{name:?}"
        );
    }
    let long = "a".repeat(257);
    let err = check_object_name("name", &long).unwrap_err().to_string();
    assert_eq!(err, "name: is 257 bytes, at most 256 allowed");
    for good in [
        "isos",
        "web-01.qcow2",
        "Ubuntu 22.04.iso",
        "a..b",
        "x_y+z",
        "é",
    ] {
        assert_eq!(check_object_name("name", good), Ok(()), "{good:?}");
    }
    let doc = json!({"name": "../x", "type": "dir", "target": "/x"}).to_string();
    assert_eq!(pool_error(&doc), "name: must not contain '/'");
    let doc = json!({"name": "<x>", "capacity": 1}).to_string();
    assert_eq!(
        volume_error(&doc),
        "name: must not contain <, >, &, ' or \""
    );
}

#[test]
fn sizes_take_bytes_or_binary_units() {
    let ok = [
        (json!(1024), 1024),
        (json!("4096"), 4096),
        (json!("7B"), 7),
        (json!("4k"), 4 << 10),
        (json!("512M"), 512 << 20),
        (json!("10G"), 10 << 30),
        (json!("10GiB"), 10 << 30),
        (json!("10gb"), 10 << 30),
        (json!("1T"), 1 << 40),
        (json!("2P"), 2 << 50),
        (json!("15E"), 15 << 60),
    ];
    for (v, want) in ok {
        assert_eq!(parse_size("size", &v), Ok(want), "{v}");
    }
    let words = "size: must be a number of bytes or a size like 512M, 10G or 1T";
    for v in [
        json!(-1),
        json!(1.5),
        json!(true),
        json!(null),
        json!(""),
        json!("G"),
        json!("10X"),
        json!("10 G"),
        json!(" 10G"),
        json!("10iB"),
        json!("10GG"),
        json!("1.5G"),
        json!("-1"),
    ] {
        assert_eq!(
            parse_size("size", &v),
            Err(Error::InvalidArgument(words.into())),
            "{v}"
        );
    }
    for v in [json!("16E"), json!("99999999999999999999")] {
        let want = Err(Error::InvalidArgument("size: is too large".into()));
        assert_eq!(parse_size("size", &v), want, "{v}");
    }
}

#[test]
fn volume_spec_defaults_and_checks() {
    let spec = parse_volume_spec(r#"{"name": "disk.qcow2", "capacity": "20G"}"#).unwrap();
    assert_eq!(
        spec,
        VolumeSpec {
            name: "disk.qcow2".into(),
            capacity: 20 << 30,
            format: VolumeFormat::Qcow2,
            backing_volume: None,
            preallocate: false,
        }
    );
    let spec = parse_volume_spec(
        r#"{"name": "o.qcow2", "capacity": 1048576, "format": "qcow2",
            "backing_volume": "/org/vapor/Virtualization/pool/0a_b/base_2eqcow2"}"#,
    )
    .unwrap();
    assert!(spec.backing_volume.unwrap().starts_with("/org/vapor/"));
    assert_volume_messages(
        r#"
        {} => capacity: is required; name: is required
        {"name": "v", "capacity": 0} => capacity: must be more than 0
        {"name": "v", "capacity": "0G"} => capacity: must be more than 0
        {"name": "v", "capacity": "65T"} => capacity: must be at most 64 TiB
        "#,
    );
    assert!(parse_volume_spec(r#"{"name": "v", "capacity": "64T"}"#).is_ok());
    assert_volume_messages(
        r#"
        {"name": "v", "capacity": "lots"} => capacity: must be a number of bytes or a size like 512M, 10G or 1T
        {"name": "v", "capacity": 1, "format": "vmdk"} => format: must be one of raw, qcow2, iso
        {"name": "v", "capacity": 1, "format": 2} => format: must be a string
        {"name": "v", "capacity": 1, "format": "raw", "backing_volume": "base"} => backing_volume: only a qcow2 volume can have one
        {"name": "v", "capacity": 1, "format": "iso", "backing_volume": "base"} => backing_volume: only a qcow2 volume can have one
        {"name": "v", "capacity": 1, "backing_volume": "../base"} => backing_volume: must not contain '/'
        {"name": "v", "capacity": 1, "backing_volume": "/org/x-y"} => backing_volume: must be a volume name or a volume object path
        {"name": "v", "capacity": 1, "backing_volume": "b", "preallocate": true} => preallocate: is not possible with backing_volume
        {"name": "v", "capacity": 1, "preallocate": "yes"} => preallocate: must be a boolean
        {"name": "v", "capacity": 1, "size": 1} => size: unknown field (known: backing_volume, capacity, format, name, preallocate)
        "#,
    );
}

#[test]
fn volume_xml_is_sparse_unless_preallocated() {
    let spec = parse_volume_spec(r#"{"name": "a&b.qcow2", "capacity": "1G"}"#);
    assert!(spec.is_err());
    let spec = parse_volume_spec(r#"{"name": "web.qcow2", "capacity": "1G"}"#).unwrap();
    let el = Element::parse(&volume_xml(&spec, Some(("/pool/b&se.qcow2", "qcow2")))).unwrap();
    assert_eq!(el.name, "volume");
    assert_eq!(el.child_text("name"), Some("web.qcow2"));
    assert_eq!(el.child_text("capacity"), Some("1073741824"));
    assert_eq!(el.child("capacity").unwrap().attr("unit"), Some("bytes"));
    assert_eq!(el.child_text("allocation"), Some("0"));
    let fmt = |e: &Element| {
        e.child("format")
            .and_then(|f| f.attr("type"))
            .map(String::from)
    };
    assert_eq!(fmt(el.child("target").unwrap()).as_deref(), Some("qcow2"));
    let backing = el.child("backingStore").unwrap();
    assert_eq!(backing.child_text("path"), Some("/pool/b&se.qcow2"));
    assert_eq!(fmt(backing).as_deref(), Some("qcow2"));

    let spec = parse_volume_spec(
        r#"{"name": "boot.iso", "capacity": 4096, "format": "iso", "preallocate": true}"#,
    )
    .unwrap();
    assert_eq!(spec.format.as_str(), "iso");
    let el = Element::parse(&volume_xml(&spec, None)).unwrap();
    assert_eq!(el.child_text("allocation"), Some("4096"));
    assert_eq!(fmt(el.child("target").unwrap()).as_deref(), Some("raw"));
    assert!(el.child("backingStore").is_none());
}

fn schema(text: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(text).unwrap();
    assert!(schema["$schema"].as_str().unwrap().contains("2020-12"));
    assert_eq!(schema["additionalProperties"], json!(false));
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .offline()
        .build(&schema)
        .unwrap()
}

/// The schemas accept exactly what the parsers accept, on a table of cases.
#[test]
fn schemas_agree_with_the_parsers() {
    let pool = schema(include_str!("../../dbus/schemas/pool-spec.schema.json"));
    let pools = [
        json!({"name": "isos", "type": "dir", "target": "/srv/isos"}),
        json!({"name": "isos", "type": "dir", "target": "/srv/isos", "source": {}}),
        json!({"name": "d", "type": "fs", "target": "/m", "source": {"device": "/dev/sdb1"}}),
        json!({"name": "d", "type": "fs", "target": "/m", "source": {"device": ["/dev/sdb1"], "format": "ext4"}}),
        json!({"name": "n", "type": "netfs", "target": "/m", "source": {"host": "nas.example", "dir": "/"}}),
        json!({"name": "n", "type": "netfs", "target": "/m", "source": {"host": "fd00::2", "dir": "/e", "format": "glusterfs"}}),
        json!({"name": "l", "type": "logical", "source": {"name": "vg0"}}),
        json!({"name": "l", "type": "logical", "build": true, "source": {"name": "vg0", "device": ["/dev/sdc"]}}),
        json!({"name": "i", "type": "iscsi", "autostart": false, "start": false, "source": {"host": "10.1.1.1", "target": "iqn.2004-04.com.example:d1", "initiator": "eui.02004567A425678D"}}),
        json!({"name": "Ubuntu isos", "type": "dir", "target": "/srv/my isos"}),
        // Refused.
        json!({"name": "isos", "type": "dir"}),
        json!({"name": "isos", "type": "dir", "target": "/"}),
        json!({"name": "isos", "type": "dir", "target": "/a/../b"}),
        json!({"name": "isos", "type": "dir", "target": "/a//b"}),
        json!({"name": "isos", "type": "dir", "target": "/a/"}),
        json!({"name": "isos", "type": "dir", "target": "a"}),
        json!({"name": "isos", "type": "dir", "target": "/x", "source": {"host": "h"}}),
        json!({"name": "isos", "type": "dir", "target": "/x", "colour": 1}),
        json!({"name": ".isos", "type": "dir", "target": "/x"}),
        json!({"name": "-isos", "type": "dir", "target": "/x"}),
        json!({"name": "i/s", "type": "dir", "target": "/x"}),
        json!({"name": "isos ", "type": "dir", "target": "/x"}),
        json!({"name": "<x>", "type": "dir", "target": "/x"}),
        json!({"name": "", "type": "dir", "target": "/x"}),
        json!({"name": "d", "type": "fs", "target": "/m"}),
        json!({"name": "d", "type": "fs", "target": "/m", "source": {"device": []}}),
        json!({"name": "d", "type": "fs", "target": "/m", "source": {"device": ["/dev/a", "/dev/b"]}}),
        json!({"name": "d", "type": "fs", "target": "/m", "source": {"device": "/dev/a", "format": "nfs"}}),
        json!({"name": "n", "type": "netfs", "target": "/m", "source": {"host": "a b", "dir": "/e"}}),
        json!({"name": "n", "type": "netfs", "target": "/m", "source": {"host": "h", "dir": "e"}}),
        json!({"name": "n", "type": "netfs", "target": "/m", "source": {"dir": "/e"}}),
        json!({"name": "l", "type": "logical", "source": {"name": "vg/0"}}),
        json!({"name": "l", "type": "logical", "build": true, "source": {"name": "vg0"}}),
        json!({"name": "i", "type": "iscsi", "source": {"host": "h", "target": "iqn.x"}}),
        json!({"name": "i", "type": "iscsi", "source": {"host": "h"}}),
        json!({"name": "i", "type": "zfs", "target": "/x"}),
        json!({"name": "i", "type": "dir", "target": "/x", "autostart": "yes"}),
    ];
    for doc in &pools {
        let parsed = parse_pool_spec(&doc.to_string());
        assert_eq!(pool.is_valid(doc), parsed.is_ok(), "{doc}: {parsed:?}");
    }
    // Not in the table: a capacity string over 64 TiB ("65T"), which a
    // pattern cannot bound; the schema's description says so.
    let volume = schema(include_str!("../../dbus/schemas/volume-spec.schema.json"));
    let volumes = [
        json!({"name": "v", "capacity": 1}),
        json!({"name": "v", "capacity": "10G"}),
        json!({"name": "v", "capacity": "512MiB", "format": "raw", "preallocate": true}),
        json!({"name": "v", "capacity": "64T", "format": "qcow2", "backing_volume": "base.qcow2"}),
        json!({"name": "v", "capacity": 70368744177664_u64, "format": "iso"}),
        json!({"name": "v", "capacity": 5, "backing_volume": "/org/vapor/Virtualization/pool/a/b"}),
        // Refused.
        json!({"name": "v", "capacity": 0}),
        json!({"name": "v", "capacity": "0G"}),
        json!({"name": "v", "capacity": 70368744177665_u64}),
        json!({"name": "v", "capacity": "1.5G"}),
        json!({"name": "v", "capacity": -1}),
        json!({"name": "v"}),
        json!({"capacity": 1}),
        json!({"name": "v", "capacity": 1, "format": "vmdk"}),
        json!({"name": "v", "capacity": 1, "format": "raw", "backing_volume": "b"}),
        json!({"name": "v", "capacity": 1, "backing_volume": "b", "preallocate": true}),
        json!({"name": "v", "capacity": 1, "backing_volume": "/org/x-y"}),
        json!({"name": "v", "capacity": 1, "backing_volume": "../b"}),
        json!({"name": "../v", "capacity": 1}),
        json!({"name": "v", "capacity": 1, "extra": 1}),
    ];
    for doc in &volumes {
        let parsed = parse_volume_spec(&doc.to_string());
        assert_eq!(volume.is_valid(doc), parsed.is_ok(), "{doc}: {parsed:?}");
    }
}
