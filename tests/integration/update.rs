//! VirtualMachine.Update, SetVcpus/SetMemory and PendingChanges on real
//! libvirt domains (firmware-only guests: nothing here needs an OS).

use std::time::{Duration, Instant};

use crate::common::*;

/// Update as a user through busctl; Ok(stdout) or Err(stderr).
fn update_as(user: &str, path: &str, changes: &str) -> Result<String, String> {
    let out = busctl_as(user, path, "Update", &["sa{sv}", changes, "0"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// busctl's `asas N "a" … M "b" …` as (changed, pending).
fn changed_pending(out: &str) -> (Vec<String>, Vec<String>) {
    let mut words = out.split_whitespace().skip(1);
    let mut list = || {
        let n: usize = words.next().unwrap().parse().unwrap();
        (0..n)
            .map(|_| words.next().unwrap().trim_matches('"').to_owned())
            .collect::<Vec<_>>()
    };
    let changed = list();
    (changed, list())
}

fn inactive_xml(name: &str) -> String {
    virsh(&["dumpxml", "--inactive", name])
}

async fn pending(conn: &zbus::Connection, path: &str) -> Vec<String> {
    let all = get_all(conn, path).await.unwrap();
    <Vec<String>>::try_from(all["PendingChanges"].clone()).unwrap()
}

async fn wait_pending(conn: &zbus::Connection, path: &str, want: &[&str]) {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let now = pending(conn, path).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PendingChanges stayed {now:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stopped_vm_changes_everything_at_once_and_keeps_what_vapord_does_not_model() {
    let conn = bus().await;
    let d = TestDomain::define("upd");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    // Something vapord knows nothing about must survive.
    virsh(&[
        "metadata",
        &d.name,
        "--uri",
        "urn:other",
        "--key",
        "other",
        "--set",
        "<x>kept</x>",
        "--config",
    ]);

    let out = update_as(
        ALICE,
        &path,
        r#"{"vcpus":2,"max_vcpus":4,"memory":96,"max_memory":128,"title":"Web","description":"two\nlines",
            "cpu":{"mode":"custom","model":"qemu64"},"boot_order":["network","disk"],"video":"vga",
            "graphics":{"type":"vnc","listen":"127.0.0.1"},"metadata":{"team":"blue"},"autostart":true}"#,
    )
    .unwrap();
    let (changed, pending_now) = changed_pending(&out);
    assert!(
        changed.contains(&"vcpus".to_string()) && changed.len() == 12,
        "{out}"
    );
    assert!(pending_now.is_empty(), "{out}");
    let xml = inactive_xml(&d.name);
    assert!(
        xml.contains("<vcpu placement='static' current='2'>4</vcpu>"),
        "{xml}"
    );
    assert!(xml.contains("<memory unit='KiB'>131072</memory>"), "{xml}");
    assert!(
        xml.contains("<currentMemory unit='KiB'>98304</currentMemory>"),
        "{xml}"
    );
    assert!(
        xml.contains("<title>Web</title>") && xml.contains("<description>two\nlines</description>")
    );
    assert!(
        xml.contains("<model fallback='allow'>qemu64</model>"),
        "{xml}"
    );
    assert!(
        xml.contains("<boot dev='network'/>\n    <boot dev='hd'/>"),
        "{xml}"
    );
    assert!(xml.contains("<model type='vga'"), "{xml}");
    assert!(xml.contains("<graphics type='vnc'"), "{xml}");
    assert!(
        xml.contains(">kept</other:x>"),
        "foreign metadata lost: {xml}"
    );
    assert!(
        xml.contains("key=\"team\">blue<") || xml.contains("key='team'>blue<"),
        "{xml}"
    );
    assert!(virsh(&["dominfo", &d.name]).contains("Autostart:      enable"));
    // The properties follow at once.
    let all = get_all(&conn, &path).await.unwrap();
    assert_eq!(u32::try_from(all["MaxVcpus"].clone()).unwrap(), 4);
    assert!(bool::try_from(all["Autostart"].clone()).unwrap());
    assert!(
        pending(&conn, &path).await.is_empty(),
        "a stopped VM has nothing pending"
    );

    // Rename, then back (the fixture undefines by name).
    let new = format!("{}-renamed", d.name);
    update_as(ALICE, &path, &format!(r#"{{"name":"{new}"}}"#)).unwrap();
    assert_eq!(virsh(&["domname", &d.uuid]).trim(), new);
    assert_eq!(prop_string(&conn, &path, "Name").await, new);
    update_as(
        ALICE,
        &path,
        &format!(r#"{{"name":"{}","autostart":false}}"#, d.name),
    )
    .unwrap();
    assert_eq!(virsh(&["domname", &d.uuid]).trim(), d.name);
}

#[tokio::test]
async fn bad_changes_are_refused_by_field_and_change_nothing() {
    let conn = bus().await;
    let d = TestDomain::define("updbad");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let before = inactive_xml(&d.name);
    for (changes, expect) in [
        (r#"{"vcpus":0}"#, "vcpus: must be at least 1"),
        (
            r#"{"vcpus":3,"max_vcpus":2}"#,
            "vcpus: 3 is more than max_vcpus (2)",
        ),
        (r#"{"colour":"red"}"#, "colour: unknown field"),
        (r#"{"cpu":{"mode":"custom"}}"#, "cpu.model: is required"),
        (
            r#"{"firmware":{"type":"bios","secure_boot":true}}"#,
            "firmware.secure_boot",
        ),
        (
            r#"{"graphics":{"type":"vnc","listen":"not-an-address"}}"#,
            "graphics.listen",
        ),
        (r#"{"memory":99999999}"#, "memory"),
        (r#"{"name":"../etc"}"#, "name"),
        (r#"{"title":"a\u0000b"}"#, "title"),
        (r#"{}"#, "changes"),
        ("not json", "changes is not valid JSON"),
    ] {
        let err = update_as(ALICE, &path, changes).unwrap_err();
        assert!(err.contains(expect), "{changes}: {err}");
    }
    // Not in group vapor: refused before anything is read.
    let err = update_as(BOB, &path, r#"{"vcpus":2}"#).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    assert!(
        err.contains("Interactive authentication required")
            || err.contains("NotAuthorized")
            || err.contains("not authorized"),
        "{err}"
    );
    assert_eq!(
        inactive_xml(&d.name),
        before,
        "a refused update changed the definition"
    );
}

#[tokio::test]
async fn live_changes_apply_at_once_and_the_rest_waits_in_pending_changes_until_a_restart() {
    let conn = bus().await;
    let d = TestDomain::define("updlive");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    update_as(ALICE, &path, r#"{"max_vcpus":2}"#).unwrap();
    vm_call(&conn, &path, "Start").await.unwrap();

    // Within the running maxima: live and persistent, nothing pending.
    let out = update_as(ALICE, &path, r#"{"vcpus":2,"memory":48}"#).unwrap();
    assert_eq!(
        changed_pending(&out),
        (vec!["vcpus".into(), "memory".into()], vec![]),
        "nothing should wait: {out}"
    );
    assert!(virsh(&["vcpucount", "--live", "--current", &d.name]).trim() == "2");
    let xml = inactive_xml(&d.name);
    assert!(
        xml.contains("<currentMemory unit='KiB'>49152</currentMemory>"),
        "{xml}"
    );
    assert!(xml.contains("<vcpu placement='static'>2</vcpu>"), "{xml}");

    // What needs a restart is reported, published, and kept in the domain.
    let out = update_as(
        ALICE,
        &path,
        r#"{"max_vcpus":3,"cpu":{"mode":"custom","model":"qemu64"}}"#,
    )
    .unwrap();
    assert_eq!(changed_pending(&out).1, ["max_vcpus", "cpu"], "{out}");
    wait_pending(&conn, &path, &["max_vcpus", "cpu"]).await;
    assert!(virsh(&[
        "metadata",
        &d.name,
        "--uri",
        "https://vapor.dev/xmlns/pending/1",
        "--live"
    ])
    .contains("max_vcpus"));
    // More pending changes add up.
    update_as(ALICE, &path, r#"{"video":"vga"}"#).unwrap();
    wait_pending(&conn, &path, &["max_vcpus", "cpu", "video"]).await;
    // Rename needs the VM shut off.
    let err = update_as(ALICE, &path, r#"{"name":"x-renamed"}"#).unwrap_err();
    assert!(
        err.contains("InvalidState") || err.contains("shut off"),
        "{err}"
    );

    vm_call(&conn, &path, "ForceStop").await.unwrap();
    wait_pending(&conn, &path, &[]).await;
    vm_call(&conn, &path, "Start").await.unwrap();
    wait_pending(&conn, &path, &[]).await;
    assert_eq!(
        virsh(&["vcpucount", "--maximum", "--live", &d.name]).trim(),
        "3"
    );
    vm_call(&conn, &path, "ForceStop").await.unwrap();
}

#[tokio::test]
async fn set_vcpus_and_set_memory_say_where_they_apply() {
    let conn = bus().await;
    let d = TestDomain::define("updset");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    // Stopped: live is impossible and says so; config is the default.
    let out = busctl_as(
        ALICE,
        &path,
        "SetVcpus",
        &["ua{sv}", "1", "1", "live", "b", "true"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("live: the VM is not running"));
    let out = busctl_as(ALICE, &path, "SetMemory", &["ta{sv}", "32", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(inactive_xml(&d.name).contains("<currentMemory unit='KiB'>32768</currentMemory>"));
    let out = busctl_as(
        ALICE,
        &path,
        "SetMemory",
        &["ta{sv}", "32", "1", "colour", "s", "red"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("options.colour"));
}

#[tokio::test]
async fn a_non_member_is_refused_every_change_method() {
    let conn = bus().await;
    let d = TestDomain::define("updbob");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let before = inactive_xml(&d.name);
    let calls: [(&str, &[&str]); 10] = [
        ("Update", &["sa{sv}", r#"{"vcpus":2}"#, "0"]),
        ("SetVcpus", &["ua{sv}", "2", "0"]),
        ("SetMemory", &["ta{sv}", "32", "0"]),
        (
            "AttachDisk",
            &[
                "sa{sv}",
                r#"{"pool":"default","create":{"size":"1M"}}"#,
                "0",
            ],
        ),
        ("DetachDisk", &["sa{sv}", "vda", "0"]),
        ("ResizeDisk", &["ssa{sv}", "vda", "2G", "0"]),
        ("ChangeMedia", &["ssa{sv}", "hdc", "", "0"]),
        (
            "AttachInterface",
            &["sa{sv}", r#"{"network":"default"}"#, "0"],
        ),
        ("DetachInterface", &["sa{sv}", "52:54:00:00:00:01", "0"]),
        (
            "SetInterfaceLink",
            &["sba{sv}", "52:54:00:00:00:01", "false", "0"],
        ),
    ];
    for (method, args) in calls {
        let mut argv = vec![
            "busctl",
            "--system",
            "--allow-interactive-authorization=no",
            "call",
            BUS_NAME,
            &path,
            VM,
            method,
        ];
        argv.extend_from_slice(args);
        let out = as_user(BOB, &argv);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success() && is_refusal(&err), "{method}: {err}");
    }
    assert_eq!(
        inactive_xml(&d.name),
        before,
        "a refused call changed the VM"
    );
}
