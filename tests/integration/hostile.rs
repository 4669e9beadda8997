//! Hostile callers: every string argument of every method in the shipped
//! interface XML (so a new method is covered the day it is added), filled
//! with hostile strings, called by both test users over the real bus. vapord
//! must answer each call with a proper reply and never lose its bus name.
//!
//! The calls are made by this same test binary run as the test user (a
//! process of that uid is the only honest way to be that caller on the
//! system bus); it reads the list of calls from a file and prints the
//! outcomes.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zbus::wire::{StructureBuilder, Variant};

use crate::common::*;

/// One argument: its D-Bus type and, for string-carrying ones, the text.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Arg {
    sig: String,
    text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Call {
    path: String,
    iface: String,
    method: String,
    args: Vec<Arg>,
    /// Which argument is hostile, and how (for messages).
    what: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    call: usize,
    /// None: success; else the error name and message.
    error: Option<(String, String)>,
}

/// Strings no caller should be able to hurt vapord with. (A raw NUL cannot
/// be sent in a D-Bus string at all; it arrives through JSON escapes.)
fn hostile_strings() -> Vec<(&'static str, String)> {
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    vec![
        ("json NUL in name", r#"{"name":"a\u0000b"}"#.into()),
        (
            "json NUL in a path",
            r#"{"name":"v","storage":{"boot_iso":"a\u0000b"}}"#.into(),
        ),
        (
            "json NUL in user data",
            r##"{"name":"v","cloud_init":{"user_data":"#cloud-config\n\u0000"}}"##.into(),
        ),
        (
            "json non-character",
            r#"{"name":"v","metadata":{"k":"\ufffe"}}"#.into(),
        ),
        (
            "json duplicate key",
            r#"{"name":"v","memory":64,"memory":4194304}"#.into(),
        ),
        (
            "json control in key",
            r#"{"name":"v","metadata":{"a\u001bb":"x"}}"#.into(),
        ),
        ("json nested deep", deep),
        ("raw U+FFFE", "\u{fffe}".into()),
        ("raw U+FFFF", "x\u{ffff}".into()),
        ("raw controls", "a\u{1}b\u{7f}c\u{85}d".into()),
        ("terminal escape", "\u{1b}[2J\u{1b}]0;owned\u{7}".into()),
        (
            "XML markup",
            "</name><devices><disk type='file'/></devices>&amp;".into(),
        ),
        ("path traversal", "../../../etc/shadow".into()),
        ("absolute host path", "/etc/shadow".into()),
        ("bidi override", "\u{202e}gpj.exe".into()),
        ("empty", String::new()),
        ("newlines", "a\tb\nc\r\n".into()),
        ("format directives", "%s%n%x{}{0}".into()),
        ("2 MiB", "x".repeat(2 << 20)),
        ("half JSON", "{".repeat(100_000)),
    ]
}

/// A value of D-Bus type `sig` carrying `text` where the type has strings.
fn variant(sig: &str, text: &str) -> Variant<'static> {
    match sig {
        "s" => Variant::from(text.to_owned()),
        "o" => Variant::from(zbus::OwnedObjectPath::try_from("/x").unwrap()),
        "b" => Variant::from(false),
        "u" => Variant::from(0u32),
        "t" => Variant::from(0u64),
        "i" => Variant::from(0i32),
        "as" => Variant::from(vec![text.to_owned()]),
        // A harmless descriptor (vapord refuses a device anyway).
        "h" => Variant::from(zbus::Fd::from(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ))),
        "a{sh}" => {
            let mut m: HashMap<String, zbus::Fd<'static>> = HashMap::new();
            m.insert(
                text.to_owned(),
                zbus::Fd::from(std::os::fd::OwnedFd::from(
                    std::fs::File::open("/dev/null").unwrap(),
                )),
            );
            Variant::from(m)
        }
        "a{sv}" => {
            // Never empty: empty options would be a harmless, valid call
            // (Delete with no options deletes the test VM).
            let mut m: HashMap<String, Variant<'static>> = HashMap::new();
            m.insert(text.to_owned(), Variant::from(text.to_owned()));
            m.insert("force".into(), Variant::from(text.to_owned()));
            Variant::from(m)
        }
        other => panic!("the hostile-string test does not know the type {other}: teach it"),
    }
}

fn carries_strings(sig: &str) -> bool {
    matches!(sig, "s" | "as" | "a{sv}" | "a{sh}")
}

/// (interface, method, [(argument, type)]).
type MethodArgs = (String, String, Vec<(String, String)>);

/// Every method's input arguments, from the shipped interface XML.
fn methods() -> Vec<MethodArgs> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let node = vapor::libvirt::xml::Element::parse(&text).unwrap();
        for iface in node.children_named("interface") {
            for m in iface.children_named("method") {
                let args = m
                    .children_named("arg")
                    .filter(|a| a.attr("direction") != Some("out"))
                    .map(|a| {
                        (
                            a.attr("name").unwrap_or_default().to_owned(),
                            a.attr("type").unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                out.push((
                    iface.attr("name").unwrap_or_default().to_owned(),
                    m.attr("name").unwrap_or_default().to_owned(),
                    args,
                ));
            }
        }
    }
    out.sort();
    out
}

/// The calls: for each method, each string-carrying argument in turn made
/// hostile, the others harmless.
fn calls(paths: &HashMap<&str, String>) -> Vec<Call> {
    let mut out = Vec::new();
    for (iface, method, args) in methods() {
        let short = iface.rsplit('.').next().unwrap();
        let Some(path) = paths.get(short) else {
            continue;
        };
        for (i, (name, sig)) in args.iter().enumerate() {
            if !carries_strings(sig) {
                continue;
            }
            for (label, text) in hostile_strings() {
                let args = args
                    .iter()
                    .enumerate()
                    .map(|(j, (_, s))| Arg {
                        sig: s.clone(),
                        text: if i == j {
                            text.clone()
                        } else {
                            "vt-hostile".into()
                        },
                    })
                    .collect();
                out.push(Call {
                    path: path.clone(),
                    iface: iface.clone(),
                    method: method.clone(),
                    args,
                    what: format!("{short}.{method}({name} = {label})"),
                });
            }
        }
    }
    out
}

const PLAN_ENV: &str = "VAPOR_HOSTILE_PLAN";
const MARK: &str = "HOSTILE-OUTCOMES:";

/// Not a test of its own: the caller side, run by the test below as each
/// test user (`--ignored --exact`).
#[tokio::test]
#[ignore = "run as a test user by hostile_strings_in_every_argument_never_stop_vapord"]
async fn hostile_client() {
    let plan = std::env::var(PLAN_ENV).expect("run by the hostile-strings test");
    let calls: Vec<Call> = serde_json::from_slice(&std::fs::read(plan).unwrap()).unwrap();
    let conn = zbus::Connection::system().await.unwrap();
    let mut outcomes = Vec::new();
    for (n, c) in calls.iter().enumerate() {
        let mut b = StructureBuilder::new();
        for a in &c.args {
            b = b.append_field(variant(&a.sig, &a.text));
        }
        let body = b.build().unwrap();
        // A polkitd slowed down by the rest of the suite (TCG guests on two
        // cores) may miss vapord's 15 s: that reply says "try again", and a
        // client does — twice at most, then it counts as a bad reply.
        let mut tries = 0;
        let error = loop {
            tries += 1;
            let reply = tokio::time::timeout(
                Duration::from_secs(60),
                conn.call_method(
                    Some(BUS_NAME),
                    c.path.as_str(),
                    Some(c.iface.as_str()),
                    c.method.as_str(),
                    &body,
                ),
            )
            .await;
            let error: Option<(String, String)> = match reply {
                Err(_) => Some(("timeout".into(), "no reply within 60 s".into())),
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    let full = error_name(e);
                    let name = full.split(':').next().unwrap_or_default().to_owned();
                    Some((name, full.chars().take(300).collect()))
                }
            };
            match &error {
                Some((name, msg))
                    if tries < 3
                        && name == "org.vapor.Virtualization.Error.Timeout"
                        && msg.contains("polkit did not answer") => {}
                _ => break error,
            }
        };
        outcomes.push(Outcome { call: n, error });
    }
    println!("{MARK}{}", serde_json::to_string(&outcomes).unwrap());
}

/// Error names a hostile call may get: refusals (bad argument, not found,
/// not allowed, conflicting), polkit's interaction one, and zbus's own
/// refusal of an argument of the wrong shape — never a failure, a timeout or
/// an unavailable back end, which would mean the input got somewhere.
fn acceptable(name: &str) -> bool {
    const OK: &[&str] = &[
        "org.vapor.Virtualization.Error.InvalidArgument",
        "org.vapor.Virtualization.Error.NotFound",
        "org.vapor.Virtualization.Error.NotAuthorized",
        "org.vapor.Virtualization.Error.Conflict",
        "org.vapor.Virtualization.Error.InvalidState",
        "org.vapor.Virtualization.Error.LimitExceeded",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.freedesktop.DBus.Error.InvalidArgs",
    ];
    OK.iter()
        .any(|ok| name == *ok || name.starts_with(&format!("{ok}:")))
}

#[tokio::test]
async fn hostile_strings_in_every_argument_never_stop_vapord() {
    let conn = bus().await;
    let pid = daemon();
    let vm = TestDomain::define("hostile");
    wait_for_object(&conn, &vm.path()).await;
    let mut paths: HashMap<&str, String> = HashMap::new();
    paths.insert("Manager", ROOT.into());
    paths.insert("VirtualMachine", vm.path());
    // PCI methods only on the one device tests may touch (and the callers
    // may not assign devices anyway).
    if let Ok(addr) = std::env::var("VAPOR_TEST_PCI_DEVICE") {
        paths.insert(
            "PciDevice",
            format!("{ROOT}/pci/{}", addr.replace([':', '.'], "_")),
        );
    }
    let calls = calls(&paths);
    assert!(
        calls.len() > 100,
        "too few calls generated: {}",
        calls.len()
    );

    // The test binary, where the test users can run it.
    let dir = format!("/var/lib/vapor-tests/hostile-{}", std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        "/var/lib/vapor-tests",
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = format!("{dir}/client");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let plan = format!("{dir}/calls.json");
    std::fs::write(&plan, serde_json::to_vec(&calls).unwrap()).unwrap();
    std::fs::set_permissions(&plan, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut failures = Vec::new();
    for user in [BOB, ALICE] {
        let out = std::process::Command::new("runuser")
            .args(["-u", user, "--", "env"])
            .arg(format!("{PLAN_ENV}={plan}"))
            .args([
                &exe,
                "--ignored",
                "--exact",
                "hostile::hostile_client",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(MARK))
            .unwrap_or_else(|| {
                panic!(
                    "the client as {user} printed no outcomes:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let outcomes: Vec<Outcome> = serde_json::from_str(line).unwrap();
        assert_eq!(outcomes.len(), calls.len(), "as {user}");
        for o in outcomes {
            if let Some((name, msg)) = &o.error {
                if !acceptable(name) {
                    failures.push(format!("{user}: {} → {msg}", calls[o.call].what));
                }
            }
        }
        // Still the same vapord, still answering.
        assert_eq!(daemon(), pid);
        let status = std::process::Command::new("busctl")
            .args(["--system", "status", BUS_NAME])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.lines().any(|l| l == format!("PID={pid}")),
            "vapord lost its name after the calls as {user}:\n{text}"
        );
    }
    // Whatever was stored (a template with an odd but valid description)
    // can still be read by everyone, by the strictest client (sd-bus).
    for args in [vec!["ListTemplates"], vec!["ListVirtualMachines"]] {
        let mut cmd = vec!["busctl", "--system", "call", BUS_NAME, ROOT, MANAGER];
        cmd.extend(args);
        let out = as_user(BOB, &cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = as_user(
        BOB,
        &[
            "busctl",
            "--system",
            "call",
            BUS_NAME,
            ROOT,
            "org.freedesktop.DBus.ObjectManager",
            "GetManagedObjects",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = zbus::Proxy::new(&conn, BUS_NAME, ROOT, MANAGER)
        .await
        .unwrap()
        .call::<_, _, ()>("DeleteTemplate", &("vt-hostile",))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} bad replies:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
