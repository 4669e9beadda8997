use super::*;

fn err(r: Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn a_disk_comes_from_exactly_one_place() {
    let r = parse_disk(r#"{"pool":"default","volume":"data.qcow2"}"#).unwrap();
    assert_eq!(
        r.origin,
        DiskOrigin::Volume {
            pool: "default".into(),
            volume: "data.qcow2".into()
        }
    );
    assert_eq!(
        (r.device.as_str(), r.bus.as_str(), r.readonly),
        ("disk", "virtio", false)
    );
    let r = parse_disk(r#"{"pool":"default","create":{"size":"2G"}}"#).unwrap();
    assert_eq!(
        r.origin,
        DiskOrigin::Create {
            pool: "default".into(),
            name: None,
            bytes: 2 << 30,
            format: "qcow2".into()
        }
    );
    let r = parse_disk(r#"{"path":"/var/lib/libvirt/images/x.iso","device":"cdrom"}"#).unwrap();
    assert_eq!(
        (r.bus.as_str(), r.readonly),
        ("scsi", true),
        "cdroms default to virtio-scsi and are read-only"
    );
    assert!(err(parse_disk(r#"{"pool":"p","volume":"v","path":"/x"}"#)).contains("exactly one"));
    assert!(err(parse_disk(r#"{}"#)).contains("exactly one"));
    assert!(err(parse_disk(r#"{"volume":"v"}"#)).contains("disk.pool: is required with volume"));
    assert!(
        err(parse_disk(r#"{"path":"relative"}"#)).contains("disk.path: must be an absolute path")
    );
    assert!(err(parse_disk(r#"{"pool":"p","create":{"size":"1K"}}"#))
        .contains("disk.create.size: must be at least 1 MiB"));
    assert!(err(parse_disk(
        r#"{"pool":"p","create":{"size":"1G","format":"vmdk"}}"#
    ))
    .contains("disk.create.format"));
    assert!(err(parse_disk(r#"{"pool":"p","volume":"v","bus":"ide"}"#)).contains("disk.bus"));
    assert!(err(parse_disk(
        r#"{"pool":"p","volume":"v","device":"cdrom","bus":"virtio"}"#
    ))
    .contains("cannot be on virtio"));
    assert!(err(parse_disk(r#"{"pool":"p","volume":"v","colour":1}"#))
        .contains("disk.colour: unknown field"));
    assert!(err(parse_disk(r#"{"pool":"p","volume":"../x"}"#)).contains("disk.volume"));
    assert!(
        err(parse_disk(r#"{"pool":"p","volume":"v","target":"sdb"}"#))
            .contains("disk.target: must look like vdb")
    );
    assert!(err(parse_disk(r#"{"path":"/a\u0000b"}"#)).contains("disk.path"));
    assert!(err(parse_disk(r#"[1]"#)).contains("disk: must be a JSON object"));
}

#[test]
fn targets_are_chosen_free_or_refused_when_taken() {
    let taken: HashSet<String> = ["vda".to_string(), "sda".to_string()].into();
    let r = parse_disk(r#"{"pool":"p","volume":"v"}"#).unwrap();
    assert_eq!(choose_target(&r, &taken).unwrap(), "vdb");
    let r = parse_disk(r#"{"pool":"p","volume":"v","target":"vda"}"#).unwrap();
    assert!(err(choose_target(&r, &taken)).contains("vda is already in use"));
}

#[test]
fn device_xml_is_escaped_and_complete() {
    let r = parse_disk(r#"{"path":"/p/a'b.img","readonly":true}"#).unwrap();
    let x = disk_xml(&r, "/p/a'b.img", false, "raw", "vdc");
    let el = Element::parse(&x).unwrap();
    assert_eq!(el.child("source").unwrap().attr("file"), Some("/p/a'b.img"));
    assert_eq!(el.child("target").unwrap().attr("dev"), Some("vdc"));
    assert!(el.child("readonly").is_some());
    let b = Element::parse(&disk_xml(&r, "/dev/vg/lv", true, "raw", "vdc")).unwrap();
    assert_eq!(
        (b.attr("type"), b.child("source").unwrap().attr("dev")),
        (Some("block"), Some("/dev/vg/lv"))
    );
}

#[test]
fn interfaces_and_macs() {
    let n = parse_nic(r#"{"network":"default"}"#).unwrap();
    assert_eq!(
        (n.kind.as_str(), n.model.as_str(), n.link_up, n.mac),
        ("network", "virtio", true, None)
    );
    let n =
        parse_nic(r#"{"bridge":"br0","model":"e1000e","mac":"52:54:00:AB:cd:01","link":"down"}"#)
            .unwrap();
    assert_eq!(n.mac.as_deref(), Some("52:54:00:ab:cd:01"));
    let el = Element::parse(&nic_xml(&n, "52:54:00:ab:cd:01")).unwrap();
    assert_eq!(el.child("source").unwrap().attr("bridge"), Some("br0"));
    assert_eq!(el.child("link").unwrap().attr("state"), Some("down"));
    assert!(err(parse_nic(r#"{"network":"a","bridge":"b"}"#)).contains("exactly one"));
    assert!(err(parse_nic(r#"{"network":"a","mac":"01:00:00:00:00:01"}"#)).contains("unicast"));
    assert!(err(parse_nic(r#"{"network":"a","mac":"00:00:00:00:00:00"}"#)).contains("all zero"));
    assert!(err(parse_nic(r#"{"network":"a","mac":"nope"}"#)).contains("interface.mac"));
    assert!(err(parse_nic(r#"{"network":"a","model":"ne2k"}"#)).contains("interface.model"));
    assert_eq!(new_mac([1, 0xab, 255]), "52:54:00:01:ab:ff");
    check_mac("m", &new_mac([7, 7, 7])).unwrap();
}

#[test]
fn media_and_link_changes_keep_the_rest_of_the_device() {
    let def = Element::parse(
        "<domain><devices><disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/a.iso'/><target dev='sda' bus='scsi'/><readonly/><address type='drive'/></disk>\
         <interface type='network'><mac address='52:54:00:00:00:01'/><source network='n'/><model type='virtio'/><alias name='net0'/></interface></devices></domain>",
    )
    .unwrap();
    let cd = find_disk(&def, "sda").unwrap();
    let ejected = cdrom_with_media(cd, None, false);
    assert!(ejected.child("source").is_none() && ejected.child("address").is_some());
    let changed = cdrom_with_media(cd, Some("/b.iso"), false);
    assert_eq!(
        changed.child("source").unwrap().attr("file"),
        Some("/b.iso")
    );
    let nic = find_nic(&def, "52:54:00:00:00:01").unwrap();
    let down = nic_with_link(nic, false);
    assert_eq!(down.child("link").unwrap().attr("state"), Some("down"));
    assert!(down.child("alias").is_some());
    assert!(find_nic(&def, "52:54:00:00:00:02").is_none());
    assert!(!has_scsi_controller(&def));
}

#[test]
fn media_comes_from_a_volume_or_a_path() {
    let r = parse_media(r#"{"path":"/i/x.iso"}"#).unwrap();
    assert_eq!((r.device.as_str(), r.readonly), ("cdrom", true));
    assert!(err(parse_media(r#"{"path":"/i/x.iso","bus":"sata"}"#))
        .contains("media.bus: unknown field"));
    assert!(err(parse_media(r#"{"volume":"v"}"#)).contains("media.pool: is required"));
}
