use super::*;

const DEF: &str = r#"<domain type='qemu'>
  <name>web</name>
  <uuid>11111111-1111-4111-8111-111111111111</uuid>
  <genid>22222222-2222-4222-8222-222222222222</genid>
  <metadata><vapor:vm xmlns:vapor="https://vapor.dev/xmlns/domain/1"><vapor:created-by uid="1000"/><vapor:template name="debian"/><vapor:volume path="/p/web-disk0.qcow2"/><vapor:volume path="/p/web-cidata.iso"/><vapor:custom key="team">blue</vapor:custom></vapor:vm></metadata>
  <sysinfo type='smbios'><system><entry name='manufacturer'>x</entry><entry name='uuid'>11111111-1111-4111-8111-111111111111</entry></system></sysinfo>
  <os><type machine='q35'>hvm</type><nvram>/var/lib/libvirt/qemu/nvram/web_VARS.fd</nvram></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/p/web-disk0.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/shared/data.raw'/><target dev='vdb' bus='virtio'/><shareable/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/p/web-cidata.iso'/><target dev='sda' bus='scsi'/><readonly/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/debian.iso'/><target dev='sdb' bus='scsi'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/><model type='virtio'/></interface>
    <graphics type='vnc' port='5901' autoport='no'><listen type='address' address='127.0.0.1'/></graphics>
  </devices>
</domain>"#;

fn def() -> Element {
    Element::parse(DEF).unwrap()
}

fn owned() -> Vec<String> {
    vec!["/p/web-disk0.qcow2".into(), "/p/web-cidata.iso".into()]
}

#[test]
fn owned_disks_are_copied_seeds_renewed_and_the_rest_shared() {
    let plan = plan_disks(&def(), &owned(), &|p| p.to_owned(), "web2", CloneMode::Full).unwrap();
    assert_eq!(
        plan,
        [
            DiskCopy::Volume {
                target: "vda".into(),
                source: "/p/web-disk0.qcow2".into(),
                name: "web2-disk0.qcow2".into(),
                format: "qcow2".into(),
            },
            DiskCopy::Seed {
                target: "sda".into(),
                source: "/p/web-cidata.iso".into(),
                name: "web2-cidata.iso".into()
            },
        ]
    );
}

#[test]
fn linked_clones_are_qcow2_overlays() {
    assert_eq!(
        new_volume_name("web-disk0.raw", "web", "w2", CloneMode::Linked),
        "w2-disk0.qcow2"
    );
    assert_eq!(
        new_volume_name("data.img", "web", "w2", CloneMode::Full),
        "w2-data.img"
    );
    assert_eq!(
        new_volume_name("noext", "web", "w2", CloneMode::Linked),
        "w2-noext.qcow2"
    );
}

#[test]
fn the_clone_has_a_new_identity_and_its_own_volumes() {
    let disks = vec![
        (
            "vda".to_string(),
            "/p/web2-disk0.qcow2".to_string(),
            "qcow2".to_string(),
        ),
        (
            "sda".to_string(),
            "/p/web2-cidata.iso".to_string(),
            "raw".to_string(),
        ),
    ];
    let owned = vec![
        "/p/web2-disk0.qcow2".to_string(),
        "/p/web2-cidata.iso".to_string(),
    ];
    let id = NewIdentity {
        name: "web2",
        uuid: "33333333-3333-4333-8333-333333333333",
        uid: 1001,
        source_uuid: "11111111-1111-4111-8111-111111111111",
        disks: &disks,
        owned: &owned,
    };
    let doc = Element::parse(&clone_definition(&def(), &id).to_xml()).unwrap();
    assert_eq!(doc.child_text("name"), Some("web2"));
    assert_eq!(
        doc.child_text("uuid"),
        Some("33333333-3333-4333-8333-333333333333")
    );
    assert!(doc.child("genid").unwrap().text.trim().is_empty());
    assert!(doc.child("os").unwrap().child("nvram").is_none());
    let entries: Vec<_> = doc
        .child("sysinfo")
        .unwrap()
        .child("system")
        .unwrap()
        .children
        .iter()
        .map(|e| e.attr("name").unwrap())
        .collect();
    assert_eq!(entries, ["manufacturer"]);
    let devices = doc.child("devices").unwrap();
    let sources: Vec<_> = devices
        .children_named("disk")
        .map(|d| d.child("source").unwrap().attr("file").unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            "/p/web2-disk0.qcow2",
            "/shared/data.raw",
            "/p/web2-cidata.iso",
            "/iso/debian.iso"
        ]
    );
    assert!(devices.child("interface").unwrap().child("mac").is_none());
    let g = devices.child("graphics").unwrap();
    assert_eq!((g.attr("autoport"), g.attr("port")), (Some("yes"), None));
    let vm = doc.child("metadata").unwrap().child("vm").unwrap();
    let vols: Vec<_> = vm
        .children_named("volume")
        .map(|v| v.attr("path").unwrap())
        .collect();
    assert_eq!(vols, ["/p/web2-disk0.qcow2", "/p/web2-cidata.iso"]);
    assert_eq!(vm.child("created-by").unwrap().attr("uid"), Some("1001"));
    assert_eq!(
        vm.child("cloned-from").unwrap().attr("uuid"),
        Some("11111111-1111-4111-8111-111111111111")
    );
    assert_eq!(
        vm.child("template").unwrap().attr("name"),
        Some("debian"),
        "the rest of the metadata is copied"
    );
    assert_eq!(vm.child("custom").unwrap().text, "blue");
}

#[test]
fn a_writable_disk_the_vm_does_not_own_is_refused_not_shared() {
    let owned = vec!["/p/web-cidata.iso".to_string()];
    let err = plan_disks(&def(), &owned, &|p| p.to_owned(), "web2", CloneMode::Full).unwrap_err();
    assert!(
        err.to_string()
            .contains("disk vda: vapord did not make it for this VM"),
        "{err}"
    );
}

#[test]
fn a_linked_clone_moves_its_source_onto_an_overlay_of_its_own() {
    let tops = vec![(
        "vda".to_string(),
        "/p/web-disk0-top-1.qcow2".to_string(),
        "qcow2".to_string(),
    )];
    let doc = source_on_overlays(&def(), &tops);
    let devices = doc.child("devices").unwrap();
    let vda = devices.children_named("disk").next().unwrap();
    assert_eq!(
        vda.child("source").unwrap().attr("file"),
        Some("/p/web-disk0-top-1.qcow2")
    );
    assert_eq!(vda.child("driver").unwrap().attr("type"), Some("qcow2"));
    let vm = doc.child("metadata").unwrap().child("vm").unwrap();
    let vols: Vec<_> = vm
        .children_named("volume")
        .map(|v| v.attr("path").unwrap())
        .collect();
    assert_eq!(
        vols,
        [
            "/p/web-disk0.qcow2",
            "/p/web-cidata.iso",
            "/p/web-disk0-top-1.qcow2"
        ]
    );
    assert_eq!(
        doc.child_text("uuid"),
        def().child_text("uuid"),
        "still the same VM"
    );
}
