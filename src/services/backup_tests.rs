use super::*;

#[test]
fn the_backup_and_checkpoint_documents() {
    let disks = vec![(
        "vda".to_owned(),
        "/r/.partial-x/vda.libvirt.qcow2".to_owned(),
    )];
    let skipped = vec!["sda".to_owned()];
    assert_eq!(
        backup_xml(Some("vapor-a"), &disks, &skipped),
        "<domainbackup mode='push'><incremental>vapor-a</incremental><disks>\
         <disk name='vda' backup='yes' type='file'><target file='/r/.partial-x/vda.libvirt.qcow2'/>\
         <driver type='qcow2'/></disk><disk name='sda' backup='no'/></disks></domainbackup>"
    );
    assert!(!backup_xml(None, &disks, &[]).contains("incremental"));
    assert_eq!(
        checkpoint_xml("vapor-b", &["vda".to_owned()], &skipped),
        "<domaincheckpoint><name>vapor-b</name><disks><disk name='vda' checkpoint='bitmap'/>\
         <disk name='sda' checkpoint='no'/></disks></domaincheckpoint>"
    );
}

#[test]
fn kinds_parse_and_name_the_field() {
    assert_eq!(Wanted::parse("incremental").unwrap(), Wanted::Incremental);
    assert!(Wanted::parse("partial")
        .unwrap_err()
        .to_string()
        .starts_with("kind:"));
}

#[test]
fn a_restored_definition_is_a_new_vm_of_its_own() {
    let mut doc = Element::parse(
        "<domain type='kvm'><name>web</name><uuid>old</uuid>\
         <metadata><vapor:vm xmlns:vapor='https://vapor.dev/xmlns/domain/1'>\
         <vapor:created-by uid='1'/><vapor:template name='debian'/><vapor:volume path='/p/web.qcow2'/>\
         </vapor:vm></metadata>\
         <os><type>hvm</type><nvram template='/t'>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram></os>\
         <devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/p/web.raw'/>\
         <backingStore/><target dev='vda' bus='virtio'/></disk>\
         <disk type='file' device='cdrom'><source file='/p/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>\
         <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>\
         </devices></domain>",
    )
    .unwrap();
    let files = [("vda".to_owned(), "/q/web2-vda.qcow2".to_owned())];
    let owned = ["/q/web2-vda.qcow2".to_owned()];
    restored_definition(
        &mut doc,
        &Restored {
            name: "web2",
            uuid: "new",
            files: &files,
            nvram: Some(("/n/web2_VARS.fd", "/r/b1/nvram.fd")),
            uid: 1001,
            owned: &owned,
            new_identity: true,
        },
    );
    let x = doc.to_xml();
    assert!(
        x.contains("<name>web2</name>") && x.contains("<uuid>new</uuid>"),
        "{x}"
    );
    assert!(
        x.contains("<source file=\"/q/web2-vda.qcow2\"/>")
            || x.contains("<source file='/q/web2-vda.qcow2'/>"),
        "{x}"
    );
    assert!(
        !x.contains("web.raw") && !x.contains("backingStore") && !x.contains("seed.iso"),
        "{x}"
    );
    assert!(!x.contains("52:54:00:00:00:01"), "{x}");
    assert!(
        x.contains("/n/web2_VARS.fd") && !x.contains("web_VARS") && x.contains("/r/b1/nvram.fd"),
        "{x}"
    );
    let md = crate::libvirt::xml::VaporMetadata::from_domain(&Element::parse(&x).unwrap()).unwrap();
    assert_eq!(md.created_by_uid, Some(1001));
    assert_eq!(md.template.as_deref(), Some("debian"));
    assert_eq!(md.owned_volumes, vec!["/q/web2-vda.qcow2".to_owned()]);
    let disks = domain_disks(&Element::parse(&x).unwrap());
    assert_eq!(disks[0].format.as_deref(), Some("qcow2"));
    assert_eq!(disks[1].source, DiskSource::Empty);
}

#[test]
fn a_definition_restored_over_its_vm_keeps_its_mac_addresses() {
    let mut doc = Element::parse(
        "<domain><name>web</name><uuid>u</uuid><devices>\
         <interface type='network'><mac address='52:54:00:00:00:01'/></interface>\
         </devices></domain>",
    )
    .unwrap();
    restored_definition(
        &mut doc,
        &Restored {
            name: "web",
            uuid: "u",
            files: &[],
            nvram: None,
            uid: 0,
            owned: &[],
            new_identity: false,
        },
    );
    assert!(doc.to_xml().contains("52:54:00:00:00:01"));
}

fn pool(
    kind: &str,
    state: &'static str,
    target: &str,
) -> crate::libvirt::storage_records::PoolRecord {
    crate::libvirt::storage_records::PoolRecord {
        uuid: "u".into(),
        name: "b".into(),
        kind: kind.into(),
        state,
        autostart: true,
        persistent: true,
        target_path: target.into(),
        capacity: 0,
        allocation: 0,
        available: 0,
    }
}

#[test]
fn a_pool_holds_the_repository_only_as_a_running_directory() {
    use attach::pool_root;
    for kind in ["dir", "fs", "netfs"] {
        assert_eq!(
            pool_root(&pool(kind, "running", "/srv/b")).unwrap(),
            PathBuf::from("/srv/b/vapor-backups")
        );
    }
    let why = |p| pool_root(&p).unwrap_err().to_string();
    assert!(why(pool("logical", "running", "/dev/vg")).contains("a logical pool"));
    assert!(why(pool("dir", "inactive", "/srv/b")).contains("is inactive; start it"));
    assert!(why(pool("dir", "running", "")).contains("no target directory"));
}

#[test]
fn what_a_dead_vapord_left_is_recognised() {
    let xml = "<domainbackup mode='push'><disks>\
        <disk name='vda' backup='yes' type='file'><target file='/r/.partial-x/vda.libvirt.qcow2'/></disk>\
        <disk name='sda' backup='no'/></disks></domainbackup>";
    assert_eq!(
        attach::backup_target_files(xml),
        vec!["/r/.partial-x/vda.libvirt.qcow2"]
    );
    assert!(attach::backup_target_files("<not xml").is_empty());
    let names: Vec<String> = ["vapor-1", "vapor-2", "mine", "2"].map(String::from).into();
    let partial = std::collections::HashSet::from(["2".to_owned()]);
    assert_eq!(
        attach::orphan_checkpoints(&names, &partial),
        vec!["vapor-2"]
    );
}

#[test]
fn qemu_img_progress_is_read_from_its_last_report() {
    assert_eq!(
        convert_percent("    (0.00/100%)\r    (12.50/100%)\r"),
        Some(12.5)
    );
    assert_eq!(convert_percent("(100.00/100%)\n"), Some(100.0));
    assert_eq!(convert_percent("    (4"), None);
    assert_eq!(convert_percent("(x/100%)"), None);
    assert_eq!(convert_percent("(250.00/100%)"), None);
    assert_eq!(convert_percent(""), None);
}
