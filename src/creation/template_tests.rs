//! Tests of `template.rs`: every merge rule, and the store on temp dirs.

use super::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;

#[test]
fn scalars_override_and_null_is_absent() {
    let t = json!({"memory": 2048, "vcpus": 2, "uefi": true});
    let r = json!({"name": "vm", "memory": 4096, "vcpus": null});
    assert_eq!(
        merge(&t, &r),
        json!({"name": "vm", "memory": 4096, "vcpus": 2, "uefi": true})
    );
}

#[test]
fn arrays_replace_entirely() {
    let t = json!({
        "networks": [{"type": "network", "source": "default"}],
        "graphics": [{"type": "vnc"}, {"type": "spice"}],
        "pci_devices": [{"host_address": "0000:01:00.0"}],
        "storage": {"disks": [{"action": "create", "size": 20}]}
    });
    let r = json!({
        "networks": [{"type": "bridge", "source": "br0"}],
        "graphics": [],
        "pci_devices": [{"host_address": "0000:02:00.0"}],
        "storage": {"disks": [{"action": "attach", "path": "/x.img"}]}
    });
    assert_eq!(merge(&t, &r), r);
    // Absent arrays are kept from the template.
    assert_eq!(merge(&t, &json!({})), t);
}

#[test]
fn storage_merges_at_its_level() {
    let t = json!({"storage": {"default_pool": "default", "boot_iso": "a.iso",
        "disks": [{"action": "create", "size": 20}]}});
    let r = json!({"storage": {"default_pool": "fast", "boot_iso": null}});
    assert_eq!(
        merge(&t, &r),
        json!({"storage": {"default_pool": "fast", "boot_iso": "a.iso",
            "disks": [{"action": "create", "size": 20}]}})
    );
    let r = json!({"storage": {"disks": [{"action": "create", "size": 100}]}});
    assert_eq!(
        merge(&t, &r)["storage"],
        json!({"default_pool": "default", "boot_iso": "a.iso",
            "disks": [{"action": "create", "size": 100}]})
    );
}

#[test]
fn cloud_init_deep_merges() {
    let t = json!({"cloud_init": {"user_data": "#cloud-config\n", "meta_data": "m",
        "extra": {"a": 1, "b": {"c": 2, "d": 3}}}});
    let r = json!({"cloud_init": {"user_data": "#cloud-config\npackages: [nginx]\n",
        "meta_data": null, "extra": {"b": {"d": 4}}}});
    assert_eq!(
        merge(&t, &r),
        json!({"cloud_init": {"user_data": "#cloud-config\npackages: [nginx]\n",
            "meta_data": "m", "extra": {"a": 1, "b": {"c": 2, "d": 4}}}})
    );
}

#[test]
fn boot_settings_come_from_templates_and_boot_replaces_whole() {
    let t = json!({"accel": "tcg", "os_variant": "debian12",
        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "root=/dev/vda"},
        "storage": {"default_pool": "guests", "cdrom_bus": "scsi"}});
    let r = json!({"name": "vm", "storage": {"default_pool": "fast"}});
    let m = merge(&t, &r);
    assert_eq!(m["accel"], "tcg");
    assert_eq!(m["boot"], t["boot"]);
    assert_eq!(
        m["storage"],
        json!({"default_pool": "fast", "cdrom_bus": "scsi"})
    );
    let r = json!({"accel": "auto", "boot": {"kernel": "other"},
        "storage": {"cdrom_bus": "sata"}});
    let m = merge(&t, &r);
    assert_eq!(m["accel"], "auto");
    assert_eq!(m["boot"], json!({"kernel": "other"}));
    assert_eq!(m["storage"]["cdrom_bus"], "sata");
    assert!(crate::creation::validate::validate_spec(&m).is_ok());
}

#[test]
fn metadata_merges_keys_request_wins() {
    let t = json!({"metadata": {"owner": "ops", "tier": "gold"}});
    let r = json!({"metadata": {"tier": "silver", "app": "web"}});
    assert_eq!(
        merge(&t, &r),
        json!({"metadata": {"owner": "ops", "tier": "silver", "app": "web"}})
    );
}

#[test]
fn template_keys_do_not_chain_and_request_template_is_kept() {
    let t = json!({"name": "x", "template": "base", "memory": 1024});
    assert_eq!(merge(&t, &json!({})), json!({"memory": 1024}));
    let r = json!({"name": "vm", "template": "linux-server"});
    assert_eq!(
        merge(&t, &r),
        json!({"name": "vm", "template": "linux-server", "memory": 1024})
    );
}

#[test]
fn type_mismatch_request_wins() {
    let t = json!({"storage": {"default_pool": "p"}, "cloud_init": {"user_data": "u"}});
    let r = json!({"storage": "oops", "cloud_init": 3});
    assert_eq!(merge(&t, &r), r);
    assert_eq!(
        merge(&json!(null), &json!({"memory": 1})),
        json!({"memory": 1})
    );
}

fn store() -> (tempfile::TempDir, TemplateStore) {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = tmp.path().join("templates.d");
    fs::create_dir(&shipped).unwrap();
    let s = TemplateStore::new(&shipped, tmp.path().join("state"));
    (tmp, s)
}

fn ship(s: &TemplateStore, name: &str, text: &str) {
    fs::write(s.shipped_dir.join(format!("{name}.json")), text).unwrap();
}

#[test]
fn save_get_list_delete() {
    let (_tmp, s) = store();
    assert!(s.list().unwrap().is_empty());
    ship(
        &s,
        "base",
        r#"{"description": "shipped base", "spec": {"memory": 1024}}"#,
    );
    ship(&s, "other", r#"{"spec": {"vcpus": 1}}"#);
    s.save("base", "mine", &json!({"memory": 4096})).unwrap();
    s.save("zeta", "z", &json!({})).unwrap();

    let path = s.user_dir.join("base.json");
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        fs::metadata(&s.user_dir).unwrap().permissions().mode() & 0o777,
        0o755
    );
    // No temp file is left behind.
    assert_eq!(fs::read_dir(&s.user_dir).unwrap().count(), 2);

    let list = s.list().unwrap();
    let names: Vec<_> = list.iter().map(|t| (t.name.as_str(), t.source)).collect();
    assert_eq!(
        names,
        [
            ("base", TemplateSource::User),
            ("other", TemplateSource::Shipped),
            ("zeta", TemplateSource::User)
        ]
    );
    assert_eq!(list[0].spec, json!({"memory": 4096}));
    assert_eq!(list[0].description, "mine");
    assert_eq!(list[1].description, "");

    let got = s.get("other").unwrap();
    assert_eq!(
        (got.source, got.spec),
        (TemplateSource::Shipped, json!({"vcpus": 1}))
    );

    // Deleting the user copy un-shadows the shipped one.
    s.delete("base").unwrap();
    let got = s.get("base").unwrap();
    assert_eq!(
        (got.source, got.description.as_str()),
        (TemplateSource::Shipped, "shipped base")
    );
    match s.delete("base") {
        Err(Error::InvalidState(m)) => assert!(m.contains("shipped read-only"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.delete("nope"), Err(Error::NotFound(_))));
    assert_eq!(
        s.get("nope"),
        Err(Error::NotFound("no template named 'nope'".into()))
    );
}

#[test]
fn save_refuses_bad_names_and_specs() {
    let (_tmp, s) = store();
    for bad in ["", ".hidden", "-x", "a/b", "../etc", "a b", &"x".repeat(65)] {
        match s.save(bad, "", &json!({})) {
            Err(Error::InvalidArgument(m)) => assert!(m.starts_with("name: "), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    for good in ["a", "ubuntu-22.04", "x_y+z", &"x".repeat(64)] {
        s.save(good, "", &json!({})).unwrap();
    }
    let e = s.save("t", "", &json!({"name": "vm"})).unwrap_err();
    assert_eq!(
        e,
        Error::InvalidArgument(
            "spec.name: a template cannot name the VM; remove the name field".into()
        )
    );
    let e = s.save("t", "", &json!({"template": "base"})).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(m) if m.starts_with("spec.template:")));
    assert!(matches!(
        s.save("t", "", &json!([1])),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(s.get("../x"), Err(Error::InvalidArgument(_))));
}

#[test]
fn malformed_files_are_skipped_by_list_and_reported_by_get() {
    let (_tmp, s) = store();
    ship(&s, "good", r#"{"spec": {}}"#);
    ship(&s, "broken", "{not json");
    ship(&s, "notobj", r#"{"spec": [1]}"#);
    ship(&s, "extra", r#"{"spec": {}, "nope": 1}"#);
    fs::write(s.shipped_dir.join("README.txt"), "ignored").unwrap();
    let names: Vec<_> = s.list().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["good"]);
    for name in ["broken", "notobj", "extra"] {
        match s.get(name) {
            Err(Error::Failed(m)) => assert!(m.contains(&format!("{name}.json")), "{m}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn files_no_client_could_read_are_skipped_never_served() {
    let (_tmp, s) = store();
    ship(
        &s,
        "good",
        r#"{"description": "fine\nmultiline", "spec": {}}"#,
    );
    // A non-character sd-bus clients refuse, a NUL, duplicate keys, a huge
    // description: each would break ListTemplates for everyone if served.
    ship(
        &s,
        "nonchar",
        "{\"description\": \"a\u{fffe}\", \"spec\": {}}",
    );
    ship(&s, "nul", r#"{"description": "a\u0000b", "spec": {}}"#);
    ship(&s, "dup", r#"{"spec": {"memory": 64, "memory": 4194304}}"#);
    ship(&s, "ctl", r#"{"spec": {"os_variant": "a\u001bb"}}"#);
    let big = format!(
        r#"{{"description": "{}", "spec": {{}}}}"#,
        "x".repeat(70_000)
    );
    ship(&s, "big", &big);
    let names: Vec<_> = s.list().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["good"]);
    for name in ["nonchar", "nul", "dup", "ctl", "big"] {
        assert!(matches!(s.get(name), Err(Error::Failed(_))), "{name}");
    }
}

#[test]
fn saved_descriptions_are_held_to_the_text_rules() {
    let (_tmp, s) = store();
    for bad in ["a\u{fffe}", "a\u{0}b", "a\u{1b}[2J"] {
        let e = s.save("t", bad, &json!({})).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument(ref m) if m.starts_with("description: contains")),
            "{bad:?}: {e}"
        );
    }
    let e = s.save("t", &"x".repeat(65 * 1024), &json!({})).unwrap_err();
    assert!(
        e.to_string().starts_with("description: is 66560 bytes"),
        "{e}"
    );
    s.save("t", "two\nlines\tand a tab", &json!({})).unwrap();
    assert_eq!(s.list().unwrap().len(), 1);
}

#[test]
fn shipped_templates_are_valid_specs() {
    use crate::creation::spec::VmSpec;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/templates");
    let s = TemplateStore::new(&dir, "/nonexistent");
    let list = s.list().unwrap();
    let names: Vec<_> = list.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "linux-server",
            "ubuntu-cloud",
            "ubuntu-workstation",
            "windows-desktop"
        ]
    );
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        list.len(),
        "a shipped file failed to parse"
    );
    for t in list {
        assert!(!t.description.is_empty(), "{}", t.name);
        let spec: VmSpec =
            serde_json::from_value(t.spec.clone()).unwrap_or_else(|e| panic!("{}: {e}", t.name));
        crate::creation::validate::validate_spec(&t.spec)
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert!(spec.name.is_none() && spec.template.is_none(), "{}", t.name);
        assert!(spec.memory.is_some() && spec.vcpus.is_some(), "{}", t.name);
    }
}
