use super::*;

#[test]
fn destinations_are_configured_hosts_or_plain_remote_uris() {
    let mut hosts = BTreeMap::new();
    hosts.insert(
        "b".to_owned(),
        "qemu:///system?socket=/run/b/libvirt-sock".to_owned(),
    );
    assert_eq!(
        destination_uri("b", &hosts, false).unwrap(),
        "qemu:///system?socket=/run/b/libvirt-sock"
    );
    assert_eq!(
        destination_uri("qemu+tcp://10.0.0.2/system", &hosts, true).unwrap(),
        "qemu+tcp://10.0.0.2/system"
    );
    assert!(destination_uri("qemu+ssh://root@host/system", &hosts, true).is_ok());
    // Unless allowed, only the hosts listed.
    let e = destination_uri("qemu+ssh://root@host/system", &hosts, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("destination:")
            && e.contains("not a host configured")
            && e.contains("[hosts]: b"),
        "{e}"
    );
    for (bad, why) in [
        ("qemu:///system?socket=/tmp/x", "uses the transport qemu"),
        ("qemu+ssh://h/system?command=rm", "may not carry parameters"),
        (
            "qemu+ssh://h/system?keyfile=/etc/shadow",
            "may not carry parameters",
        ),
        ("qemu+tcp:///system", "names no host"),
        ("qemu+tcp://h/session", "must end in /system"),
        ("elsewhere", "neither a configured host"),
        ("", "at most 1024 bytes"),
    ] {
        let e = destination_uri(bad, &hosts, true).unwrap_err().to_string();
        assert!(
            e.starts_with("destination:") && e.contains(why),
            "{bad}: {e}"
        );
    }
}

#[test]
fn options_are_checked_by_name() {
    assert_eq!(CopyStorage::parse("all").unwrap(), CopyStorage::All);
    assert!(CopyStorage::parse("some")
        .unwrap_err()
        .to_string()
        .starts_with("copy_storage:"));
    check_data_uri("tcp://10.213.7.1").unwrap();
    check_data_uri("tcp://[fe80::1]:49152").unwrap();
    assert!(check_data_uri("tcp://fe80::1:4444").is_err());
    for bad in ["udp://x", "tcp://", "tcp://a b", "tcp://x/../y"] {
        assert!(check_data_uri(bad).is_err(), "{bad}");
    }
    assert_eq!(
        check_compression("xbzrle, zstd").unwrap(),
        vec!["xbzrle", "zstd"]
    );
    assert!(check_compression("lz4")
        .unwrap_err()
        .to_string()
        .contains("compression: 'lz4'"));
}

fn facts() -> Facts {
    Facts {
        local_host_uuid: Some("a".into()),
        dest_host_uuid: Some("b".into()),
        dest_hostname: "hostb".into(),
        vm_name: "web".into(),
        copied: vec![("vda".into(), "/pool/web.qcow2".into())],
        dest_pool_dirs: vec!["/pool/".into()],
        shared: vec![("sda".into(), "/iso/seed.iso".into(), true)],
        ..Default::default()
    }
}

#[test]
fn what_cannot_work_is_refused_with_its_reason() {
    precheck(&facts()).unwrap();
    let mut f = facts();
    f.dest_host_uuid = Some("a".into());
    let e = precheck(&f).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("is this host"),
        "{e}"
    );
    let mut f = facts();
    f.name_taken = true;
    assert!(matches!(precheck(&f).unwrap_err(), Error::Conflict(_)));
    let mut f = facts();
    f.dest_pool_dirs = vec!["/elsewhere".into()];
    let e = precheck(&f).unwrap_err().to_string();
    assert!(
        e.contains("no running pool on hostb covers /pool (disk vda)"),
        "{e}"
    );
    let mut f = facts();
    f.shared[0].2 = false;
    let e = precheck(&f).unwrap_err().to_string();
    assert!(
        e.starts_with("disk sda: /iso/seed.iso is not on hostb"),
        "{e}"
    );
    let mut f = facts();
    f.copied_present = vec![("vda".into(), "/pool/web.qcow2".into())];
    let e = precheck(&f).unwrap_err();
    assert!(
        matches!(e, Error::Conflict(_))
            && e.to_string().contains(
                "hostb already has /pool/web.qcow2 (disk vda); the copy would write over it"
            ),
        "{e}"
    );
    let mut f = facts();
    f.missing_bases = vec![("vda".into(), "/pool/base.qcow2".into())];
    let e = precheck(&f).unwrap_err();
    assert!(
        matches!(e, Error::InvalidState(_))
            && e.to_string().contains(
                "its base /pool/base.qcow2 is not on hostb (copy it there, or use copy_storage all)"
            ),
        "{e}"
    );
    let mut f = facts();
    f.cpu_problem = Some("libvirt finds the VM's CPU incompatible".into());
    assert!(matches!(precheck(&f).unwrap_err(), Error::NotSupported(_)));
}

#[test]
fn the_destination_listens_where_the_data_goes() {
    assert_eq!(
        listen_address("tcp://10.213.7.1").as_deref(),
        Some("10.213.7.1")
    );
    assert_eq!(
        listen_address("tcp://b.example:49152").as_deref(),
        Some("b.example")
    );
    assert_eq!(
        listen_address("tcp://[fe80::1]:49152").as_deref(),
        Some("fe80::1")
    );
    assert_eq!(listen_address("tcp://"), None);
    assert_eq!(listen_address("rdma://x"), None);
}
