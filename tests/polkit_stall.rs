//! A polkitd that stops answering fails the calls that wait for it, with a
//! clear `Timeout`, instead of hanging them; callers that need no polkit
//! check go on being served meanwhile. Its own test binary: it stops
//! (SIGSTOP) the shared polkitd for a few seconds.

#[path = "integration/common.rs"]
mod common;

use std::process::Command;

use common::*;

/// polkitd, stopped until dropped (even when the test fails).
struct Stopped(i32);

impl Stopped {
    fn polkitd() -> Self {
        let out = Command::new("pgrep")
            .args(["-x", "polkitd"])
            .output()
            .unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("polkitd is running (tests/env/setup.sh)")
            .trim()
            .parse()
            .unwrap();
        // SAFETY: plain kill(2) on polkitd's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[tokio::test]
async fn a_stalled_polkit_fails_the_waiting_call_and_others_go_on() {
    daemon_with(&["--polkit-timeout", "3"]);
    let conn = bus().await;
    let vm = TestDomain::define("stall");
    wait_for_object(&conn, &vm.path()).await;

    let stopped = Stopped::polkitd();
    // vapor-alice's call needs polkit: it fails on its own, with Timeout.
    let waiting = std::thread::spawn(|| manager_as(ALICE, "LookupVirtualMachine", "none"));
    // Meanwhile root (no polkit check) is served.
    let p = zbus::Proxy::new(&conn, BUS_NAME, ROOT, MANAGER)
        .await
        .unwrap();
    let found: zbus::OwnedObjectPath = p
        .call("LookupVirtualMachine", &(vm.name.as_str(),))
        .await
        .unwrap();
    assert_eq!(found.as_str(), vm.path());
    let out = waiting.join().unwrap();
    drop(stopped);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the call cannot succeed without polkit"
    );
    assert!(err.contains("polkit did not answer within 3 s"), "{err}");

    // polkit back: the same call works again.
    let out = manager_as(ALICE, "LookupVirtualMachine", &vm.name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
