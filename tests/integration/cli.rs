//! vaporctl: tables for people, JSON for scripts, exit codes that mean something.

use std::process::Command;

use crate::common::*;

fn ctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vaporctl"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn list_shows_a_table_and_json() {
    let conn = bus().await;
    let d = TestDomain::define("cli-list");
    wait_for_object(&conn, &d.path()).await;

    let out = ctl(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&d.name))
        .expect("the VM is listed");
    assert!(
        line.contains("shutoff") && line.contains("64 MiB") && line.contains(&d.uuid),
        "{line}"
    );

    let out = ctl(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vm = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["Name"] == d.name.as_str())
        .expect("in the JSON list");
    assert_eq!(vm["MemoryMiB"], 64);
    assert_eq!(vm["State"], "shutoff");
}

#[tokio::test]
async fn show_and_lifecycle_commands_work_and_errors_map_to_exit_codes() {
    let conn = bus().await;
    let d = TestDomain::define("cli-show");
    wait_for_object(&conn, &d.path()).await;

    let out = ctl(&["show", &d.name]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&d.uuid) && text.contains("shutoff"), "{text}");

    let out = ctl(&["show", "--json", &d.name]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["domain"]["name"], d.name.as_str());

    assert_eq!(ctl(&["show", "no-such-vm-anywhere"]).status.code(), Some(3));
    assert!(ctl(&["start", &d.name]).status.success());
    let out = ctl(&["start", &d.name]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    assert!(ctl(&["pause", &d.name]).status.success());
    assert!(ctl(&["resume", &d.name]).status.success());
    assert!(ctl(&["autostart", &d.name, "on"]).status.success());
    assert!(ctl(&["force-stop", &d.name]).status.success());
    assert_eq!(ctl(&["bogus-command"]).status.code(), Some(2));

    let out = ctl(&["delete", "--json", &d.name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["deleted"], d.name.as_str());
    assert!(!virsh_quiet(&["dominfo", &d.name]));
}
