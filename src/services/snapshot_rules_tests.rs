use super::*;

fn support() -> SnapshotSupport {
    SnapshotSupport {
        version: 11_003_000,
        external_revert_delete: true,
    }
}

fn disk(target: &str, format: &str) -> Disk {
    Disk {
        device: "disk".into(),
        source: DiskSource::Path(format!("/pool/{target}.{format}")),
        target: Some(target.into()),
        bus: Some("virtio".into()),
        format: Some(format.into()),
        readonly: false,
        shareable: false,
        backing: Vec::new(),
    }
}

fn cdrom() -> Disk {
    Disk {
        device: "cdrom".into(),
        readonly: true,
        format: Some("raw".into()),
        ..disk("sda", "iso")
    }
}

fn facts(running: bool, disks: Vec<Disk>) -> SnapshotFacts {
    SnapshotFacts {
        running,
        disks,
        support: support(),
        ..Default::default()
    }
}

#[test]
fn a_qcow2_vm_allows_everything_and_a_raw_one_explains_why_not_internal() {
    let c = capabilities(&facts(true, vec![disk("vda", "qcow2"), cdrom()]));
    assert!(c.internal.possible && c.external_disk_only.possible && c.external_memory.possible);
    assert!(c.revert_external.possible && c.delete_external.possible);
    assert_eq!(c.quiesce.reason, "the guest agent is not connected");

    let c = capabilities(&facts(
        false,
        vec![disk("vda", "qcow2"), disk("vdb", "raw")],
    ));
    assert!(!c.internal.possible);
    assert_eq!(
        c.internal.reason,
        "disk vdb is raw: internal snapshots need every writable disk in qcow2 format"
    );
    assert!(c.external_disk_only.possible);
    assert_eq!(
        c.external_memory.reason,
        "the VM is not running: there is no memory to save"
    );
    assert_eq!(c.quiesce.reason, "the VM is not running");
}

#[test]
fn old_libvirt_pflash_and_host_devices_each_say_why() {
    let mut f = facts(true, vec![disk("vda", "qcow2")]);
    f.pflash = true;
    f.vfio = true;
    f.support = SnapshotSupport {
        version: 9_000_000,
        external_revert_delete: false,
    };
    let c = capabilities(&f);
    assert!(c
        .internal
        .reason
        .contains("pflash, which needs libvirt 10.9 (this host has 9.0)"));
    assert!(c.external_memory.reason.contains("host PCI devices"));
    assert!(
        c.external_disk_only.possible,
        "disk-only works with host devices"
    );
    assert!(c.revert_external.reason.contains("needs libvirt 9.9"));
    assert!(c.delete_external.reason.contains("needs libvirt 9.9"));
    f.support.version = 10_009_000;
    f.running = false;
    let c = capabilities(&f);
    assert!(
        c.internal.possible,
        "a stopped VM's host devices do not matter"
    );
    f.support.external_revert_delete = true;
    let c = capabilities(&f);
    assert!(c.revert_external.possible && c.delete_external.possible);
    assert!(c
        .revert_internal
        .reason
        .contains("reverting to its internal snapshots needs libvirt 10.10 (this host has 10.9)"));
    assert!(c.delete_internal.reason.contains("deleting its internal"));
    let e = may_revert_or_delete(&c, "internal", false).unwrap_err();
    assert!(matches!(e, Error::NotSupported(_)), "{e}");
    assert!(may_revert_or_delete(&c, "internal", true).is_err());
    may_revert_or_delete(&c, "external", false).unwrap();
    f.support.external_revert_delete = false;
    let e = may_revert_or_delete(&capabilities(&f), "external", true).unwrap_err();
    assert!(e.to_string().contains("needs libvirt 9.9"), "{e}");
    f.support.version = 10_010_000;
    let c = capabilities(&f);
    assert!(c.revert_internal.possible && c.delete_internal.possible);
}

#[test]
fn a_vm_without_writable_disks_cannot_be_snapshotted() {
    let c = capabilities(&facts(false, vec![cdrom()]));
    for v in [&c.internal, &c.external_disk_only] {
        assert_eq!(v.reason, "the VM has no writable disk to snapshot");
    }
}

fn req(kind: Requested, memory: Option<bool>, quiesce: bool) -> Request {
    Request {
        kind,
        memory,
        quiesce,
    }
}

#[test]
fn auto_prefers_internal_and_falls_back_to_external() {
    let qcow2 = capabilities(&facts(true, vec![disk("vda", "qcow2")]));
    let raw = capabilities(&facts(true, vec![disk("vda", "raw")]));
    let a = |caps, running, memory| choose(caps, running, req(Requested::Auto, memory, false));
    assert_eq!(a(&qcow2, true, None).unwrap(), Chosen::Internal);
    assert_eq!(
        a(&qcow2, true, Some(false)).unwrap(),
        Chosen::ExternalDiskOnly
    );
    assert_eq!(a(&raw, true, None).unwrap(), Chosen::ExternalMemory);
    let stopped = capabilities(&facts(false, vec![disk("vda", "raw")]));
    assert_eq!(a(&stopped, false, None).unwrap(), Chosen::ExternalDiskOnly);
    // A running VM with host PCI devices: no kind saves its memory, so
    // auto makes a disk-only one unless memory was asked for.
    let mut f = facts(true, vec![disk("vda", "qcow2")]);
    f.vfio = true;
    let vfio = capabilities(&f);
    assert_eq!(a(&vfio, true, None).unwrap(), Chosen::ExternalDiskOnly);
    let e = a(&vfio, true, Some(true)).unwrap_err();
    assert!(e.to_string().contains("host PCI devices"), "{e}");
}

#[test]
fn impossible_requests_name_the_field_and_the_reason() {
    let raw = capabilities(&facts(false, vec![disk("vda", "raw")]));
    let e = choose(&raw, false, req(Requested::Internal, None, false)).unwrap_err();
    assert!(matches!(e, Error::NotSupported(_)));
    assert!(e.to_string().starts_with("kind: disk vda is raw"), "{e}");
    let e = choose(&raw, false, req(Requested::Auto, Some(true), false)).unwrap_err();
    assert!(
        e.to_string().starts_with("memory: the VM is not running"),
        "{e}"
    );
    let qcow2 = capabilities(&facts(true, vec![disk("vda", "qcow2")]));
    let e = choose(&qcow2, true, req(Requested::Internal, Some(false), false)).unwrap_err();
    assert!(e.to_string().contains("always includes its memory"), "{e}");
    let e = choose(&qcow2, true, req(Requested::Auto, None, true)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("quiesce: only a snapshot without memory"),
        "{e}"
    );
    let e = choose(&qcow2, true, req(Requested::Auto, Some(false), true)).unwrap_err();
    assert_eq!(e.to_string(), "quiesce: the guest agent is not connected");
}

#[test]
fn quiesce_with_an_agent_is_a_disk_only_external_snapshot() {
    let mut f = facts(true, vec![disk("vda", "qcow2")]);
    f.agent_connected = true;
    let c = capabilities(&f);
    assert!(c.quiesce.possible);
    assert_eq!(
        choose(&c, true, req(Requested::Auto, Some(false), true)).unwrap(),
        Chosen::ExternalDiskOnly
    );
    assert!(choose(&c, true, req(Requested::Internal, Some(false), true)).is_err());
}

#[test]
fn the_agent_and_host_devices_are_read_from_the_domain() {
    let dom = Element::parse(
        "<domain><os><loader type='pflash'>/x</loader></os><devices>\
         <disk type='file' device='disk'><driver type='qcow2'/><source file='/p/a.qcow2'/><target dev='vda'/></disk>\
         <hostdev mode='subsystem' type='pci'/>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>\
         </devices></domain>",
    )
    .unwrap();
    let f = facts_from_domain(&dom, true, support());
    assert!(f.pflash && f.vfio && f.agent_connected);
    assert_eq!(f.disks.len(), 1);
    assert!(!facts_from_domain(&dom, false, support()).agent_connected);
}

#[test]
fn names_that_could_escape_a_file_name_are_refused() {
    check_name("before-upgrade_1.2").unwrap();
    for bad in [
        "",
        "../x",
        "a/b",
        ".hidden",
        "-x",
        "a b",
        "ä",
        &"x".repeat(65),
    ] {
        let e = check_name(bad).unwrap_err();
        assert!(e.to_string().starts_with("name"), "{bad}: {e}");
    }
}

#[test]
fn default_names_follow_the_clock() {
    assert_eq!(default_name(0), "snap-19700101-000000");
    assert_eq!(default_name(1796024217), "snap-20261130-073657");
    let taken = vec!["s".to_owned(), "s-2".to_owned()];
    assert_eq!(unused_name("s", &taken), "s-3");
    assert_eq!(unused_name("t", &taken), "t");
}

#[test]
fn the_description_given_to_libvirt() {
    let disks = vec![disk("vda", "qcow2"), cdrom()];
    assert_eq!(
        snapshot_xml("s1", "a <b>", Chosen::Internal, true, &disks, None),
        "<domainsnapshot><name>s1</name><description>a &lt;b&gt;</description>\
         <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/>\
         <disk name='sda' snapshot='no'/></disks></domainsnapshot>"
    );
    let mem = memory_file(&disks, "s2").unwrap();
    assert_eq!(mem, "/pool/vda.s2.mem");
    assert_eq!(
        snapshot_xml("s2", "", Chosen::ExternalMemory, true, &disks, Some(&mem)),
        "<domainsnapshot><name>s2</name><memory snapshot='external' file='/pool/vda.s2.mem'/>\
         <disks><disk name='vda' snapshot='external'/><disk name='sda' snapshot='no'/></disks>\
         </domainsnapshot>"
    );
    assert!(
        snapshot_xml("s3", "", Chosen::ExternalDiskOnly, true, &disks, None)
            .contains("<memory snapshot='no'/>")
    );
}

#[test]
fn files_taking_the_place_of_owned_ones_become_owned() {
    let pair = |t: &str, f: &str| (t.to_owned(), f.to_owned());
    let owned = vec!["/p/web.qcow2".to_owned()];
    let before = vec![
        pair("vda", "/p/web.qcow2"),
        pair("vdb", "/data/foreign.raw"),
    ];
    let after = vec![pair("vda", "/p/web.s1"), pair("vdb", "/data/foreign.s1")];
    let all = |_: &str| true;
    assert_eq!(
        ownership_after(
            &before,
            &owned,
            &after,
            &owned,
            Some("/p/web.s1.mem".into()),
            all
        ),
        vec!["/p/web.s1".to_owned(), "/p/web.s1.mem".to_owned()]
    );
    // Nothing of the VM's own changed: nothing is adopted, not even memory.
    let foreign = vec![pair("vdb", "/data/foreign.raw")];
    assert!(ownership_after(
        &foreign,
        &owned,
        &[pair("vdb", "/data/x")],
        &owned,
        Some("/m".into()),
        all
    )
    .is_empty());
    // An internal snapshot changes no file.
    assert!(ownership_after(&before, &owned, &before, &owned, None, all).is_empty());
}

#[test]
fn a_revert_that_brings_back_an_older_record_keeps_what_was_owned() {
    let pair = |t: &str, f: &str| (t.to_owned(), f.to_owned());
    // Owned before the revert: the base and the e1 overlay; the snapshot's
    // record only knows the base. The revert starts a new overlay.
    let owned_before = vec![
        "/p/web.qcow2".to_owned(),
        "/p/web.e1".to_owned(),
        "/p/gone".to_owned(),
    ];
    let owned_after = vec!["/p/web.qcow2".to_owned()];
    let add = ownership_after(
        &[pair("vda", "/p/web.e1")],
        &owned_before,
        &[pair("vda", "/p/web.123")],
        &owned_after,
        None,
        |f| f != "/p/gone",
    );
    assert_eq!(add, vec!["/p/web.e1".to_owned(), "/p/web.123".to_owned()]);
}
