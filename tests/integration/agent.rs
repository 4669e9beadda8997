//! The guest agent on the bus, on the shared Debian guest: its connection
//! and what it reports as properties, WaitForAgent (and its refusals and
//! timeout on VMs whose agent cannot answer), programs run through
//! `vaporctl guest exec` with input and output past the agent's message
//! sizes, limits and timeouts as typed errors, cloud-init's status, and
//! polkit's guest-exec granted to vapor-alice alone by an explicit rule.

use std::process::Output;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::guest::shared;

/// vaporctl as `user`, never asking for a password.
pub fn vaporctl_as(user: &str, args: &[&str]) -> Output {
    let mut a = vec![env!("CARGO_BIN_EXE_vaporctl"), "--no-ask-password"];
    a.extend_from_slice(args);
    as_user(user, &a)
}

/// `vaporctl guest exec VM [opts] -- argv` as alice.
pub fn exec(vm: &str, opts: &[&str], argv: &[&str]) -> Output {
    let mut a = vec!["guest", "exec", vm];
    a.extend_from_slice(opts);
    a.push("--");
    a.extend_from_slice(argv);
    vaporctl_as(ALICE, &a)
}

pub fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `vaporctl guest exec` as alice, with `input` on its standard input.
fn exec_with_input(vm: &str, input: &[u8], args: &[&str]) -> Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut a = vec![
        "-u",
        ALICE,
        "--",
        env!("CARGO_BIN_EXE_vaporctl"),
        "guest",
        "exec",
        vm,
        "--stdin",
        "--",
    ];
    a.extend_from_slice(args);
    let mut child = Command::new("runuser")
        .args(&a)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guest_agent_answers_reports_and_runs_programs_for_whom_polkit_allows() {
    let conn = bus().await;
    let g = shared().await;
    let name = g.name.clone();

    // Connected, and what it reports is on the VM.
    let out = vaporctl_as(ALICE, &["guest", "wait", &name, "--timeout", "120"]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let p = get_all(&conn, &g.path).await.unwrap();
        let connected = bool::try_from(&p["AgentConnected"]).unwrap();
        let info: std::collections::HashMap<String, zbus::OwnedVariant> =
            p["GuestInfo"].try_clone().unwrap().try_into().unwrap();
        if connected && info.contains_key("hostname") {
            break info;
        }
        assert!(Instant::now() < deadline, "no GuestInfo: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let s = |k: &str| String::try_from(info[k].try_clone().unwrap()).unwrap();
    assert_eq!(s("os_id"), "debian");
    assert!(!s("kernel_release").is_empty());
    let out = vaporctl_as(BOB, &["guest", "info", &name, "--refresh"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("guest agent connected"),
        "{}",
        text(&out)
    );

    // Only with the explicit rule: vapor-alice yes; vapor-carol (group
    // vapor) and vapor-bob no.
    for who in [BOB, CAROL] {
        let out = vaporctl_as(who, &["guest", "exec", &name, "--", "true"]);
        assert!(!out.status.success());
        assert!(is_refusal(&text(&out)), "{who}: {}", text(&out));
        let out = vaporctl_as(who, &["guest", "cloud-init-status", &name]);
        assert!(is_refusal(&text(&out)), "{who}: {}", text(&out));
    }
    let out = exec(&name, &[], &["uname", "-a"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Linux "),
        "{}",
        text(&out)
    );
    // Its status is vaporctl's; stderr comes back apart.
    let out = exec(&name, &[], &["sh", "-c", "echo oops >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");

    // Input and output far past one agent message (64 KiB in, 3 MiB out).
    let input: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (n, v) = (name.clone(), input.clone());
    let out = tokio::task::spawn_blocking(move || exec_with_input(&n, &v, &["sha256sum"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let want = format!("{:x}", Sha256::digest(&input));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&want),
        "{}",
        text(&out)
    );
    let out = exec(&name, &[], &["head", "-c", "6000000", "/dev/zero"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 6_000_000);

    // Limits and timeouts are typed errors that say why.
    let zeros = ["head", "-c", "2000", "/dev/zero"];
    let out = exec(&name, &["--max-output", "1000"], &zeros);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("stdout: the program wrote more than max_output"),
        "{}",
        text(&out)
    );
    let out = exec(&name, &["--max-output", "1000", "--truncate"], &zeros);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout.len(), 1000);
    let out = exec(&name, &["--timeout", "2"], &["sleep", "60"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("ran longer than 2 s and was killed"),
        "{}",
        text(&out)
    );
    let err = call_iface_as(ALICE, &g.path, VM, "Exec", &["asa{sv}", "0", "0"]).unwrap_err();
    assert!(err.contains("argv: the program to run is missing"), "{err}");
    let err = call_iface_as(
        ALICE,
        &g.path,
        VM,
        "Exec",
        &["asa{sv}", "1", "true", "1", "stdin", "b", "true"],
    )
    .unwrap_err();
    assert!(err.contains("options.stdin: unknown option"), "{err}");
    // No private directory is left behind in the guest: the only one is
    // this very command's.
    let out = exec(
        &name,
        &[],
        &["sh", "-c", "ls -d /tmp/vapor-exec.* 2>/dev/null | wc -l"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        text(&out)
    );

    // Files in and out, several MiB (the agent takes 64 KiB per message
    // and libvirt returns at most about 4 MiB).
    let pid = std::process::id();
    let (local, back) = (
        format!("/tmp/vt-agent-{pid}.bin"),
        format!("/tmp/vt-agent-back-{pid}.bin"),
    );
    let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 13 % 253) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let target = format!("{name}:/var/tmp/injected.bin");
    let cp = |who: &str, args: &[&str]| {
        let mut a = vec!["guest", "cp"];
        a.extend_from_slice(args);
        vaporctl_as(who, &a)
    };
    let out = cp(CAROL, &[&local, &target]);
    assert!(is_refusal(&text(&out)), "{}", text(&out));
    let out = cp(
        ALICE,
        &[&local, &target, "--mode", "4750", "--owner", "root:root"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let want = format!("{:x}", Sha256::digest(&data));
    assert!(text(&out).contains(&want), "{}", text(&out));
    let out = exec(
        &name,
        &[],
        &[
            "sh",
            "-c",
            "sha256sum /var/tmp/injected.bin; stat -c %a /var/tmp/injected.bin",
        ],
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.starts_with(&want) && shown.ends_with("\n4750\n"),
        "{shown}"
    );
    let out = cp(ALICE, &[&local, &target, "--no-overwrite"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("exists in the guest"), "{}", text(&out));
    let out = cp(ALICE, &[&local, &format!("{name}:/no/such/dir/x")]);
    assert!(
        text(&out).contains("the directory /no/such/dir does not exist"),
        "{}",
        text(&out)
    );
    // A directory others may write into is refused (they could swap the
    // temporary file for a link); failed writes leave no temporary file.
    let out = exec(
        &name,
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /var/tmp/vt-open && chmod 777 /var/tmp/vt-open",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = cp(ALICE, &[&local, &format!("{name}:/var/tmp/vt-open/x")]);
    assert!(
        text(&out).contains("may be written by others than root"),
        "{}",
        text(&out)
    );
    // A failure after the data went in (no such owner) leaves nothing.
    let out = cp(ALICE, &[&local, &target, "--owner", "nosuchuser"]);
    assert!(
        text(&out).contains("owner: ") && text(&out).contains("chown nosuchuser failed"),
        "{}",
        text(&out)
    );
    let out = exec(
        &name,
        &[],
        &[
            "sh",
            "-c",
            "ls -a /var/tmp | grep -c '^[.].*[.]vapor-' || true",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        text(&out)
    );
    let out = cp(ALICE, &[&target, &back]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "the file read back differs"
    );
    let _ = std::fs::remove_file(&local);
    let _ = std::fs::remove_file(&back);

    // cloud-init's status, as JSON and in words (it may still be running
    // right after boot).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = vaporctl_as(ALICE, &["--json", "guest", "cloud-init-status", &name]);
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["status"] == "done" {
            break;
        }
        assert!(v["status"] == "running" && Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let out = vaporctl_as(ALICE, &["guest", "cloud-init-status", &name]);
    assert!(text(&out).contains("cloud-init done"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_for_an_agent_that_cannot_answer_says_why() {
    let conn = bus().await;
    let channel =
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>";
    // No channel: refused at once, whatever the timeout.
    let none = TestDomain::define("noagent");
    wait_for_object(&conn, &none.path()).await;
    let err = call_iface_as(ALICE, &none.path(), VM, "WaitForAgent", &["u", "1"]).unwrap_err();
    assert!(err.contains("is not running"), "{err}");
    virsh(&["start", &none.name]);
    wait_for_prop(&conn, &none.path(), "State", "running").await;
    let err = call_iface_as(ALICE, &none.path(), VM, "WaitForAgent", &["u", "600"]).unwrap_err();
    assert!(err.contains("has no guest agent channel"), "{err}");
    // A channel but no agent behind it (no OS): Timeout after the timeout.
    let silent = TestDomain::define_with("silentagent", channel);
    wait_for_object(&conn, &silent.path()).await;
    virsh(&["start", &silent.name]);
    wait_for_prop(&conn, &silent.path(), "State", "running").await;
    let err = call_iface_as(ALICE, &silent.path(), VM, "WaitForAgent", &["u", "2"]).unwrap_err();
    assert!(err.contains("did not answer within 2 s"), "{err}");
    let err =
        call_iface_as(ALICE, &silent.path(), VM, "WaitForAgent", &["u", "90000"]).unwrap_err();
    assert!(err.contains("timeout_secs: at most 86400"), "{err}");
    assert_eq!(prop_string(&conn, &silent.path(), "State").await, "running");
    let err = call_iface_as(
        ALICE,
        &silent.path(),
        VM,
        "Exec",
        &["asa{sv}", "1", "true", "0"],
    )
    .unwrap_err();
    assert!(err.contains("is not connected"), "{err}");
}
