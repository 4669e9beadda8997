//! polkit on every method, checked against the real caller: `vapor-alice` (in
//! group `vapor`, granted by the test rules) may act; `vapor-bob` may not.

use std::process::Output;

use crate::common::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn domstate(name: &str) -> String {
    virsh(&["domstate", name]).trim().to_owned()
}

#[tokio::test]
async fn member_of_vapor_may_use_every_mutating_method() {
    let conn = bus().await;
    let d = TestDomain::define("alice");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let steps: &[(&str, &[&str], &str)] = &[
        ("Start", &[], "running"),
        ("Pause", &[], "paused"),
        ("Resume", &[], "running"),
        ("Reboot", &[], "running"),
        ("Shutdown", &[], "running"),
        // Under this nested KVM a reset now and then makes KVM fail and QEMU
        // pause the guest (an environment limitation): "active" is enough.
        ("Reset", &[], "active"),
        ("ForceStop", &[], "shut off"),
        ("SetAutostart", &["b", "true"], "shut off"),
    ];
    for (method, args, state) in steps {
        let out = busctl_as(ALICE, &path, method, args);
        assert!(out.status.success(), "alice {method}: {}", stderr(&out));
        let now = domstate(&d.name);
        if *state == "active" {
            assert!(
                now == "running" || now == "paused",
                "after alice's {method}: {now}"
            );
        } else {
            assert_eq!(now, *state, "after alice's {method}");
        }
    }
    assert!(virsh(&["dominfo", &d.name]).contains("Autostart:      enable"));
    let out = busctl_as(ALICE, &path, "Delete", &["a{sv}", "0"]);
    assert!(out.status.success(), "alice Delete: {}", stderr(&out));
    assert!(!virsh_quiet(&["dominfo", &d.name]), "the domain is gone");
}

#[tokio::test]
async fn non_member_is_refused_every_mutating_method_and_nothing_changes() {
    let conn = bus().await;
    let d = TestDomain::define("bob");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let calls: &[(&str, &[&str])] = &[
        ("Start", &[]),
        ("SetAutostart", &["b", "true"]),
        ("Delete", &["a{sv}", "1", "remove_storage", "b", "true"]),
    ];
    let running_calls: &[&str] = &["Shutdown", "Reboot", "ForceStop", "Pause", "Reset"];

    for (method, args) in calls {
        let out = busctl_as(BOB, &path, method, args);
        assert!(!out.status.success(), "bob {method} must be refused");
        let err = stderr(&out);
        assert!(
            err.contains("not authorized") && err.contains("org.vapor.virtualization."),
            "bob {method}: unclear refusal: {err}"
        );
    }
    assert_eq!(domstate(&d.name), "shut off");
    assert!(virsh(&["dominfo", &d.name]).contains("Autostart:      disable"));

    vm_call(&conn, &path, "Start").await.unwrap();
    for method in running_calls {
        let out = busctl_as(BOB, &path, method, &[]);
        assert!(!out.status.success(), "bob {method} must be refused");
        assert!(
            stderr(&out).contains("vm-lifecycle"),
            "bob {method}: {}",
            stderr(&out)
        );
        assert_eq!(
            domstate(&d.name),
            "running",
            "bob's {method} changed nothing"
        );
    }
    // Resume needs a paused VM.
    vm_call(&conn, &path, "Pause").await.unwrap();
    let out = busctl_as(BOB, &path, "Resume", &[]);
    assert!(!out.status.success());
    assert_eq!(domstate(&d.name), "paused");
    vm_call(&conn, &path, "ForceStop").await.unwrap();
}

#[tokio::test]
async fn non_interactive_call_gets_interactive_authorization_required() {
    let conn = bus().await;
    let d = TestDomain::define("noninteractive");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let out = as_user(
        BOB,
        &[
            "busctl",
            "--system",
            "--allow-interactive-authorization=no",
            "call",
            BUS_NAME,
            &path,
            VM,
            "Start",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("allowing interactive authorization") && err.contains("vm-lifecycle"),
        "{err}"
    );
    assert_eq!(domstate(&d.name), "shut off");
}

#[tokio::test]
async fn anyone_may_read() {
    let conn = bus().await;
    let d = TestDomain::define("read");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    for user in [ALICE, BOB] {
        let out = busctl_as(user, &path, "Describe", &[]);
        assert!(out.status.success(), "{user} Describe: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&d.uuid));
        let out = as_user(
            user,
            &[
                "busctl",
                "--system",
                "get-property",
                BUS_NAME,
                &path,
                VM,
                "State",
            ],
        );
        assert!(out.status.success(), "{user} Get State: {}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s \"shutoff\"");
    }
}

#[tokio::test]
async fn vaporctl_as_member_starts_and_stops_and_non_member_gets_exit_code_4() {
    let conn = bus().await;
    let d = TestDomain::define("ctl");
    wait_for_object(&conn, &d.path()).await;
    let ctl = env!("CARGO_BIN_EXE_vaporctl");

    let out = as_user(BOB, &[ctl, "start", &d.name]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not authorized to start"),
        "{}",
        stderr(&out)
    );
    assert_eq!(domstate(&d.name), "shut off");

    let out = as_user(ALICE, &[ctl, "start", &d.name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(domstate(&d.name), "running");
    let out = as_user(ALICE, &[ctl, "force-stop", &d.name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(domstate(&d.name), "shut off");
}

#[tokio::test]
async fn rules_can_decide_on_the_vm_name_detail() {
    let conn = bus().await;
    let locked = TestDomain::define("locked");
    let secret = TestDomain::define("secret");
    wait_for_object(&conn, &locked.path()).await;
    wait_for_object(&conn, &secret.path()).await;
    // The rule matches "vt-locked-*": alice, otherwise allowed, is refused.
    let out = busctl_as(ALICE, &locked.path(), "Start", &[]);
    assert!(!out.status.success(), "a rule on vm.name must refuse alice");
    assert_eq!(domstate(&locked.name), "shut off");
    let out = busctl_as(ALICE, &secret.path(), "Describe", &[]);
    assert!(
        !out.status.success(),
        "a rule on vm.name must refuse reading"
    );
    assert!(
        stderr(&out).contains("org.vapor.virtualization.read"),
        "{}",
        stderr(&out)
    );
    // Other VMs are unaffected.
    let d = TestDomain::define("unlocked");
    wait_for_object(&conn, &d.path()).await;
    assert!(busctl_as(ALICE, &d.path(), "Describe", &[])
        .status
        .success());
}
