//! vapord with only the capabilities the shipped systemd unit leaves it
//! (its CapabilityBoundingSet=, read from the unit file), so the tests
//! notice when the code starts needing more than the unit allows. Its own
//! test binary: its vapord runs under `setpriv`.

#[path = "integration/common.rs"]
mod common;

use std::collections::HashMap;

use common::*;
use zbus::Proxy;

/// The capabilities the unit keeps (read from the unit file itself).
fn unit_capabilities() -> String {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/vapord.service"
    ))
    .unwrap();
    let line = unit
        .lines()
        .find(|l| l.starts_with("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    let caps: Vec<String> = line["CapabilityBoundingSet=".len()..]
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

fn start() {
    let bounding = format!("--bounding-set={}", unit_capabilities());
    daemon_wrapped(&["setpriv", &bounding, "--inh-caps=-all"], &[]);
}

#[tokio::test]
async fn delete_reads_a_running_guests_image_with_the_units_capabilities() {
    start();
    let conn = bus().await;
    let pool = TestPool::new("caps");
    let running_disk = pool.volume("running.qcow2", "qcow2");
    let doomed_disk = pool.volume("doomed.qcow2", "qcow2");
    let disk = |p: &str| {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{p}'/><target dev='vda' bus='virtio'/></disk>"
        )
    };
    let running = TestDomain::define_with("caps-running", &disk(&running_disk));
    let doomed = TestDomain::define_with("caps-doomed", &disk(&doomed_disk));
    wait_for_object(&conn, &running.path()).await;
    wait_for_object(&conn, &doomed.path()).await;
    // Started, libvirt hands the image to libvirt-qemu with mode 0600.
    vm_call(&conn, &running.path(), "Start").await.unwrap();
    let vm = Proxy::new(&conn, BUS_NAME, doomed.path(), VM)
        .await
        .unwrap();
    // Not created by vapord: only remove_foreign_storage deletes it (root
    // here, so polkit is not asked).
    let opts: HashMap<&str, zbus::Variant<'_>> = [("remove_foreign_storage", true.into())].into();
    let (removed, _kept): (Vec<String>, Vec<(String, String)>) = vm
        .call("Delete", &(opts,))
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(removed, vec![doomed_disk]);
    vm_call(&conn, &running.path(), "ForceStop").await.unwrap();
}

#[tokio::test]
async fn a_console_socket_is_given_to_its_owner_with_the_units_capabilities() {
    use std::os::unix::fs::MetadataExt;
    start();
    let conn = bus().await;
    let d = TestDomain::define_with(
        "caps-console",
        "<graphics type='vnc'><listen type='none'/></graphics>",
    );
    wait_for_object(&conn, &d.path()).await;
    vm_call(&conn, &d.path(), "Start").await.unwrap();
    // As alice: the socket must become hers (chown needs CAP_CHOWN).
    let out = busctl_as(ALICE, &d.path(), "GetConsoleSocket", &["s", "graphics"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text.trim().trim_start_matches("s \"").trim_end_matches('"');
    assert_eq!(std::fs::metadata(path).unwrap().uid(), uid_of(ALICE));
    vm_call(&conn, &d.path(), "ForceStop").await.unwrap();
}
