//! The installed files can never drift from the code: every polkit action id
//! the source checks exists in `polkit/org.vapor.virtualization.policy` (with
//! defaults for all three session kinds), and every interface vapord publishes
//! is callable under the bus policy `dbus/org.vapor.Virtualization.conf`.

use std::path::Path;

use vapor::libvirt::xml::Element;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn action_ids_in_source() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut ids = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"org.vapor.virtualization.") {
            let tail = &rest[i + 1..];
            let end = tail.find('"').unwrap();
            let id = &tail[..end];
            if id.len() > "org.vapor.virtualization.".len() {
                ids.push(id.to_owned());
            }
            rest = &tail[end..];
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

fn policy() -> Element {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("polkit/org.vapor.virtualization.policy");
    Element::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_action_the_code_checks_is_in_the_policy() {
    let ids = action_ids_in_source();
    assert!(ids.len() >= 4, "found too few action ids: {ids:?}");
    let policy = policy();
    let declared: Vec<&str> = policy
        .children_named("action")
        .filter_map(|a| a.attr("id"))
        .collect();
    for id in &ids {
        assert!(
            declared.contains(&id.as_str()),
            "{id} is used in src/ but missing from the .policy"
        );
    }
}

#[test]
fn every_policy_action_has_complete_defaults_and_only_reads_and_own_job_cancel_are_open() {
    let policy = policy();
    for action in policy.children_named("action") {
        let id = action.attr("id").unwrap();
        let defaults = action
            .child("defaults")
            .unwrap_or_else(|| panic!("{id}: no defaults"));
        for kind in ["allow_any", "allow_inactive", "allow_active"] {
            let v = defaults
                .child_text(kind)
                .unwrap_or_else(|| panic!("{id}: no {kind}"));
            assert!(
                [
                    "no",
                    "yes",
                    "auth_self",
                    "auth_admin",
                    "auth_self_keep",
                    "auth_admin_keep"
                ]
                .contains(&v),
                "{id}: {kind}={v}"
            );
        }
        assert!(action.child("message").is_some(), "{id}: no message");
        // Open to everyone: reading, and cancelling a job one started.
        if id.ends_with(".read") || id.ends_with(".job-cancel") {
            assert_eq!(defaults.child_text("allow_any"), Some("yes"));
        } else {
            assert_ne!(
                defaults.child_text("allow_any"),
                Some("yes"),
                "{id} must not be open"
            );
        }
    }
}

#[test]
fn every_shipped_interface_is_allowed_by_the_bus_policy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus");
    let conf = Element::parse(
        &std::fs::read_to_string(dir.join("org.vapor.Virtualization.conf")).unwrap(),
    )
    .unwrap();
    let allowed: Vec<&str> = conf
        .children_named("policy")
        .flat_map(|p| p.children_named("allow"))
        .filter(|a| a.attr("send_destination") == Some("org.vapor.Virtualization"))
        .filter_map(|a| a.attr("send_interface"))
        .collect();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("org.vapor.Virtualization.") && name.ends_with(".xml")) {
            continue;
        }
        let node = Element::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for iface in node.children_named("interface") {
            let iface = iface.attr("name").unwrap();
            assert!(
                allowed.contains(&iface),
                "{iface} ({name}) is not callable under the bus policy"
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "no interface XML found in dbus/");
    for std_iface in [
        "org.freedesktop.DBus.Properties",
        "org.freedesktop.DBus.ObjectManager",
        "org.freedesktop.DBus.Introspectable",
    ] {
        assert!(allowed.contains(&std_iface), "{std_iface} must be callable");
    }
}
