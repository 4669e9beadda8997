//! The test NFS server (`tests/env/nfs-server.sh`: nfs-ganesha in a network
//! namespace of its own on the isolated libvirt network vt-nfs) as the
//! shared Debian guest sees it: given a NIC on vt-nfs through vapord, the
//! guest mounts the export, reads what the host wrote and writes back,
//! all through vapord's Exec as vapor-alice.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::guest::shared;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/nfs-server.sh");

static SERVER: OnceLock<String> = OnceLock::new();

extern "C" fn nfs_server_down() {
    let _ = Command::new("bash").args([SCRIPT, "down"]).status();
}

/// Bring the NFS server up once per test binary (down again at exit); the
/// export's directory on the host.
pub fn nfs_server() -> &'static str {
    SERVER.get_or_init(|| {
        // Down at exit even when bringing it up fails half way.
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(nfs_server_down) };
        let out = Command::new("bash").args([SCRIPT, "up"]).output().unwrap();
        assert!(
            out.status.success(),
            "nfs server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// Run `script` in the guest through vapord's Exec as alice: (status,
/// output).
fn sh(vm: &str, script: &str) -> (i32, String) {
    let out = crate::agent::exec(vm, &[], &["sh", "-c", script]);
    (out.status.code().unwrap_or(-1), crate::agent::text(&out))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_mounts_the_test_export_over_an_isolated_network() {
    let g = shared().await;
    let (path, name) = (g.path.clone(), g.name.clone());
    tokio::task::spawn_blocking(move || {
        let export = nfs_server();
        let token = format!("from-host-{}", std::process::id());
        std::fs::write(format!("{export}/from-host.txt"), &token).unwrap();
        let nic = r#"{"network":"vt-nfs"}"#;
        let mac = call_iface_as(ALICE, &path, VM, "AttachInterface", &["sa{sv}", nic, "0"])
            .unwrap()
            .trim_start_matches("s ")
            .trim_matches('"')
            .to_owned();
        // Detached again even when an assertion below fails.
        struct Nic(String, String);
        impl Drop for Nic {
            fn drop(&mut self) {
                let _ = call_iface_as(
                    ALICE,
                    &self.0,
                    VM,
                    "DetachInterface",
                    &["sa{sv}", &self.1, "0"],
                );
            }
        }
        let _nic = Nic(path.clone(), mac.clone());
        let deadline = Instant::now() + Duration::from_secs(180);
        while !sh(&name, "ip -4 -o addr").1.contains("192.168.151.") {
            assert!(
                Instant::now() < deadline,
                "the guest got no address on vt-nfs"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let mount = format!(
            "mkdir -p /mnt/vt-nfs && mount -t nfs4 -o vers=4.1,proto=tcp,timeo=50,retrans=2 \
             192.168.151.2:/export /mnt/vt-nfs && cat /mnt/vt-nfs/from-host.txt && \
             echo from-guest > /mnt/vt-nfs/from-guest-{pid}.txt && sync && umount /mnt/vt-nfs",
            pid = std::process::id()
        );
        let (rc, out) = sh(&name, &mount);
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains(&token), "{out}");
        let back = format!("{export}/from-guest-{}.txt", std::process::id());
        assert_eq!(std::fs::read_to_string(&back).unwrap().trim(), "from-guest");
        let _ = std::fs::remove_file(back);
    })
    .await
    .unwrap();
}
