//! vaporctl's pool, volume, iso and network commands as real test users:
//! vapor-alice (group vapor) manages, vapor-bob only reads.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;

const CTL: &str = env!("CARGO_BIN_EXE_vaporctl");

fn ctl_as(user: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![CTL, "--no-ask-password"];
    all.extend_from_slice(args);
    as_user(user, &all)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A file any test user can read, removed on drop.
struct Shared(String);

impl Shared {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = format!("/tmp/vapor-cli-{}", std::process::id());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{dir}/{name}");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Shared(path)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn iso_bytes(label: &str) -> Vec<u8> {
    let mut v = vec![0u8; 64 * 1024];
    v[32768] = 1;
    v[32769..32774].copy_from_slice(b"CD001");
    let mut l = label.as_bytes().to_vec();
    l.resize(32, b' ');
    v[32808..32840].copy_from_slice(&l);
    v
}

#[tokio::test]
async fn alice_uploads_an_iso_and_lists_it_bob_is_refused_but_reads() {
    let _conn = bus().await;
    let name = unique_name("cliiso");
    let spec = Shared::new(
        &format!("{name}.json"),
        format!(r#"{{"name":"{name}","type":"dir","target":"/var/lib/vapor/pools/{name}"}}"#)
            .as_bytes(),
    );
    // Bob: refused (exit 4), nothing made.
    let out = ctl_as(BOB, &["pool", "create", &spec.0]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!virsh_quiet(&["pool-info", &name]));

    ok(&ctl_as(ALICE, &["pool", "create", &spec.0]));
    let cleanup = scopeguard(&name);
    let list = ok(&ctl_as(BOB, &["pool", "list"]));
    assert!(list.starts_with("NAME") && list.contains(&name), "{list}");

    let iso = Shared::new(&format!("{name}.iso"), &iso_bytes("CLI_LABEL"));
    let out = ctl_as(BOB, &["iso", "upload", &iso.0, "--pool", &name]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&ctl_as(ALICE, &["iso", "upload", &iso.0, "--pool", &name]));
    let file = format!("/var/lib/vapor/pools/{name}/{name}.iso");
    assert_eq!(std::fs::read(&file).unwrap(), iso_bytes("CLI_LABEL"));

    // Everyone reads: iso list (with its label) and volume list.
    let isos = ok(&ctl_as(BOB, &["iso", "list"]));
    let line = isos
        .lines()
        .find(|l| l.contains(&format!("{name}.iso")))
        .unwrap_or_else(|| panic!("not listed: {isos}"));
    assert!(line.contains("CLI_LABEL"), "{line}");
    let vols = ok(&ctl_as(BOB, &["volume", "list", "--pool", &name, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&vols).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(1), "{vols}");

    // Bob may not delete it; alice may.
    let vol = format!("{name}/{name}.iso");
    let out = ctl_as(BOB, &["volume", "delete", &vol]);
    assert_eq!(out.status.code(), Some(4));
    assert!(std::path::Path::new(&file).exists());
    ok(&ctl_as(ALICE, &["volume", "delete", &vol]));
    assert!(!std::path::Path::new(&file).exists());
    ok(&ctl_as(
        ALICE,
        &["pool", "delete", "--delete-directory", &name],
    ));
    assert!(!virsh_quiet(&["pool-info", &name]));
    drop(cleanup);
}

/// Undefine a pool left by a failed test.
struct PoolGuard(String);

fn scopeguard(name: &str) -> PoolGuard {
    PoolGuard(name.to_owned())
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        if virsh_quiet(&["pool-info", &self.0]) {
            virsh_quiet(&["pool-destroy", &self.0]);
            virsh_quiet(&["pool-delete", &self.0]);
            virsh_quiet(&["pool-undefine", &self.0]);
        }
        let _ = std::fs::remove_dir_all(format!("/var/lib/vapor/pools/{}", self.0));
    }
}

#[tokio::test]
async fn networks_are_listed_for_everyone_and_created_only_by_alice() {
    let _conn = bus().await;
    let name = unique_name("clinet");
    let spec = Shared::new(
        &format!("{name}.json"),
        format!(r#"{{"name":"{name}","mode":"isolated","start":false}}"#).as_bytes(),
    );
    let out = ctl_as(BOB, &["network", "create", &spec.0]);
    assert_eq!(out.status.code(), Some(4));
    assert!(!virsh_quiet(&["net-info", &name]));
    let plan = ok(&ctl_as(ALICE, &["network", "create", "--dry-run", &spec.0]));
    assert!(plan.contains(&format!("<name>{name}</name>")), "{plan}");
    assert!(!virsh_quiet(&["net-info", &name]));
    ok(&ctl_as(ALICE, &["network", "create", &spec.0]));
    let list = ok(&ctl_as(BOB, &["network", "list"]));
    let line = list
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("not listed: {list}"));
    assert!(line.contains("isolated"), "{line}");
    let out = ctl_as(BOB, &["network", "delete", &name]);
    assert_eq!(out.status.code(), Some(4));
    ok(&ctl_as(ALICE, &["network", "delete", &name]));
    assert!(!virsh_quiet(&["net-info", &name]));
}
