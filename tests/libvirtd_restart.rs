//! vapord survives a libvirtd restart: it reports the loss (Connected=false),
//! reconnects, resynchronises, and keeps following events and serving calls.
//! Its own test binary, because it restarts the shared libvirtd.

#[path = "integration/common.rs"]
mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use zbus::OwnedVariant;

type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);

fn connected_is(m: &zbus::Message, want: bool) -> bool {
    m.body()
        .deserialize::<Changed>()
        .ok()
        .and_then(|(iface, c, _)| {
            (iface == MANAGER)
                .then(|| c.get("Connected").and_then(|v| bool::try_from(v).ok()))
                .flatten()
        })
        == Some(want)
}

fn restart_libvirtd() {
    let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "libvirtd did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Command::new("libvirtd")
        .arg("-d")
        .status()
        .unwrap()
        .success());
    while !virsh_quiet(&["version"]) {
        assert!(Instant::now() < deadline, "libvirtd did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn libvirtd_restart_is_survived() {
    let conn = bus().await;
    let running = TestDomain::define("restart-run");
    wait_for_object(&conn, &running.path()).await;
    vm_call(&conn, &running.path(), "Start").await.unwrap();

    let mut changed = properties_changed(&conn).await;
    let mut added = interfaces_added(&conn).await;
    restart_libvirtd();
    wait_signal(&mut changed, "Connected=false", |m| connected_is(m, false)).await;
    wait_signal(&mut changed, "Connected=true", |m| connected_is(m, true)).await;

    // The running guest kept running and is still known.
    assert_eq!(
        prop_string(&conn, &running.path(), "State").await,
        "running"
    );
    // Calls work over the new connection.
    vm_call(&conn, &running.path(), "Pause").await.unwrap();
    assert_eq!(prop_string(&conn, &running.path(), "State").await, "paused");
    // Events flow on the new connection.
    let fresh = TestDomain::define("restart-new");
    let path = fresh.path();
    wait_signal(&mut added, "InterfacesAdded after the restart", |m| {
        is_about(m, &path)
    })
    .await;
    vm_call(&conn, &running.path(), "ForceStop").await.unwrap();
}
