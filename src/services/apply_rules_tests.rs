use super::*;

fn config(xml: &str) -> Element {
    Element::parse(xml).unwrap()
}

fn file(mode: u32, owner: Option<&str>) -> FileInjection {
    FileInjection {
        source: "a".into(),
        destination: "/etc/a".into(),
        mode,
        owner: owner.map(str::to_owned),
    }
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn present(mode: u32, uid: u32, gid: u32, user: &str, group: &str) -> GuestFile {
    GuestFile::Present {
        sha256: SHA.into(),
        mode,
        uid,
        gid,
        user: user.into(),
        group: group.into(),
    }
}

#[test]
fn resources_change_only_where_the_definition_differs() {
    let c = config(
        "<domain><vcpu current='2'>4</vcpu><memory unit='MiB'>2048</memory>\
         <currentMemory unit='KiB'>1048576</currentMemory></domain>",
    );
    assert_eq!(resource_changes(&c, Some(2), Some(1024)), (None, None));
    assert_eq!(
        resource_changes(&c, Some(4), Some(2048)),
        (Some(4), Some(2048))
    );
    assert_eq!(resource_changes(&c, None, None), (None, None));
    // No `current`: the maximum is what runs; no currentMemory: memory is.
    let c = config("<domain><vcpu>3</vcpu><memory>524288</memory></domain>");
    assert_eq!(resource_changes(&c, Some(3), Some(512)), (None, None));
    assert_eq!(
        resource_changes(&c, Some(1), Some(513)),
        (Some(1), Some(513))
    );
}

#[test]
fn the_check_scripts_report_is_read_strictly() {
    assert_eq!(parse_guest_file("missing\n"), Some(GuestFile::Missing));
    assert_eq!(parse_guest_file("notfile\n"), Some(GuestFile::NotRegular));
    assert_eq!(
        parse_guest_file(&format!("{SHA}\n644 0 0 root root\n")),
        Some(present(0o644, 0, 0, "root", "root"))
    );
    for bad in [
        "",
        "garbage\n",
        &format!("{SHA}\n"),
        &format!("{SHA}\n64x 0 0 root root\n"),
        &format!("{SHA}\n644 0 root root\n"),
        "abc\n644 0 0 root root\n",
    ] {
        assert_eq!(parse_guest_file(bad), None, "{bad:?}");
    }
}

#[test]
fn a_file_matches_when_content_mode_and_owner_do() {
    let ok = present(0o644, 0, 0, "root", "root");
    assert!(file_differences(&file(0o644, None), SHA, &ok).is_empty());
    assert!(file_differences(&file(0o644, None), &SHA.to_uppercase(), &ok).is_empty());
    assert_eq!(
        file_differences(&file(0o600, None), &"0".repeat(64), &ok),
        vec!["content", "mode"]
    );
    assert_eq!(
        file_differences(&file(0o644, None), SHA, &GuestFile::Missing),
        vec!["content"]
    );
    assert_eq!(
        file_differences(&file(0o644, None), SHA, &GuestFile::NotRegular),
        vec!["content"]
    );
    // Owners by name or number; a user alone leaves the group be.
    let app = present(0o640, 1000, 1001, "app", "staff");
    for owner in ["app", "1000", "app:staff", "1000:1001", "app:1001"] {
        assert!(
            file_differences(&file(0o640, Some(owner)), SHA, &app).is_empty(),
            "{owner}"
        );
    }
    for owner in ["root", "app:root", "1001", "app:app"] {
        assert_eq!(
            file_differences(&file(0o640, Some(owner)), SHA, &app),
            vec!["owner"],
            "{owner}"
        );
    }
    // No owner declared: root's, as WriteFile makes it.
    assert_eq!(
        file_differences(&file(0o640, None), SHA, &app),
        vec!["owner"]
    );
}

#[test]
fn a_share_is_mounted_when_findmnt_shows_its_export_over_nfs() {
    let share = NfsShare::checked("s", "192.168.151.2:/export", "/mnt/x", None).unwrap();
    assert!(mounted("192.168.151.2:/export nfs4\n", &share));
    assert!(mounted("192.168.151.2:/export/ nfs\n", &share));
    assert!(!mounted("", &share));
    assert!(!mounted("192.168.151.2:/other nfs4\n", &share));
    assert!(!mounted("/dev/vda1 ext4\n", &share));
    assert!(!mounted("192.168.151.2:/export\n", &share));
}

#[test]
fn the_final_snapshot_is_due_after_a_change_or_when_missing() {
    assert!(snapshot_due(true, true).unwrap().starts_with("replaced"));
    assert!(snapshot_due(true, false).unwrap().starts_with("made"));
    assert!(snapshot_due(false, false).unwrap().contains("missing"));
    assert_eq!(snapshot_due(false, true), None);
}

#[test]
fn results_and_counts_follow_the_steps() {
    let step = |step, status| Step {
        step,
        status,
        detail: String::new(),
    };
    let mut a = VmReport {
        name: "a".into(),
        steps: vec![
            step("start", Status::Changed),
            step("agent", Status::Unchanged),
        ],
        ..Default::default()
    };
    assert!(!a.changed_something(), "a start alone is no change");
    a.conclude();
    assert_eq!(a.result, "changed");
    let mut b = VmReport {
        name: "b".into(),
        steps: vec![step("files", Status::WouldChange)],
        ..Default::default()
    };
    assert!(b.changed_something());
    b.conclude();
    assert_eq!(b.result, "would-change");
    let mut c = VmReport {
        name: "c".into(),
        error: Some("no agent".into()),
        steps: vec![step("files", Status::Changed)],
        ..Default::default()
    };
    c.conclude();
    assert_eq!(c.result, "failed");
    let mut d = VmReport {
        name: "d".into(),
        steps: vec![step("nfs", Status::Unchanged)],
        ..Default::default()
    };
    d.conclude();
    assert_eq!(d.result, "unchanged");
    let mut e = VmReport {
        name: "e".into(),
        steps: vec![
            step("start", Status::Unchanged),
            step("agent", Status::Unknown),
        ],
        ..Default::default()
    };
    e.conclude();
    assert_eq!(e.result, "unknown");
    let r = Report::new(false, vec![a, b, c, d]);
    assert_eq!((r.changed, r.unchanged, r.failed, r.unknown), (2, 1, 1, 0));
    assert_eq!(r.summary(), "4 VM(s): 2 changed, 1 unchanged, 1 failed");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["vms"][1]["steps"][0]["status"], "would-change");
    assert!(json["vms"][0].get("error").is_none());
    let r = Report::new(true, vec![e]);
    assert_eq!(
        r.summary(),
        "1 VM(s): 0 would change, 0 unchanged, 0 failed, 1 unknown until their guest answers"
    );
}

#[test]
fn long_texts_and_reports_are_cut() {
    assert_eq!(cut("abc".into(), 3), "abc");
    let c = cut("ééééé".into(), 6);
    assert!(c.len() <= 6 && c.ends_with('…'), "{c}");
    let small = serde_json::json!({"status": "done", "errors": []});
    assert_eq!(kept_cloud_init(small.clone()), small);
    let big = serde_json::json!({"status": "error", "errors": ["x".repeat(MAX_CLOUD_INIT)]});
    let kept = kept_cloud_init(big);
    assert_eq!(kept["truncated"], true);
    assert_eq!(kept["status"], "error");
    assert_eq!(kept["errors_count"], 1);
}
