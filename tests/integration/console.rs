//! Consoles: `OpenGraphics` and `OpenConsole` hand out descriptors,
//! `GetConsoleSocket` a socket only its owner can use; all under the polkit
//! action vm-console. The display needs no OS (a VM without a bootable disk
//! sits in its firmware and its VNC server answers); the login prompt comes
//! from the shared Debian guest (`crate::guest`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use zbus::{Connection, Proxy, Variant};

use crate::common::*;

/// A VNC display that listens nowhere: only reachable through vapord.
const VNC: &str = "<graphics type='vnc'><listen type='none'/></graphics>";
/// A serial console (no OS behind it: only for sessions, not for output).
const SERIAL: &str = "<serial type='pty'/><console type='pty'/>";
/// What a VNC server says first (RFB 3.8).
const RFB_HELLO: &[u8; 12] = b"RFB 003.008\n";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A started VM with these devices (destroyed and undefined when dropped).
async fn running_vm(conn: &Connection, tag: &str, devices: &str) -> TestDomain {
    let d = TestDomain::define_with(tag, devices);
    wait_for_object(conn, &d.path()).await;
    vm_call(conn, &d.path(), "Start").await.unwrap();
    d
}

/// Call a VM method that returns a descriptor, as root.
async fn open_fd(
    conn: &Connection,
    path: &str,
    method: &str,
    options: HashMap<&str, Variant<'_>>,
) -> Result<UnixStream, String> {
    let p = Proxy::new(conn, BUS_NAME, path.to_owned(), VM)
        .await
        .unwrap();
    let fd: zbus::OwnedFd = p.call(method, &(options,)).await.map_err(error_name)?;
    let fd: std::os::fd::OwnedFd = fd.into();
    let s = UnixStream::from(fd);
    s.set_read_timeout(Some(EVENT_WAIT)).unwrap();
    Ok(s)
}

/// `GetConsoleSocket` as root; the D-Bus error name and message on failure.
async fn console_socket(conn: &Connection, path: &str, kind: &str) -> Result<String, String> {
    let p = Proxy::new(conn, BUS_NAME, path.to_owned(), VM)
        .await
        .unwrap();
    p.call("GetConsoleSocket", &(kind,))
        .await
        .map_err(error_name)
}

/// `GetConsoleSocket` as a test user (busctl); the socket path.
fn console_socket_as(user: &str, path: &str, kind: &str) -> String {
    let out = busctl_as(user, path, "GetConsoleSocket", &["s", kind]);
    assert!(
        out.status.success(),
        "{user} GetConsoleSocket {kind}: {}",
        stderr(&out)
    );
    // busctl prints: s "/run/vapor/console/graphics-…"
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("s \"")
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or_else(|| panic!("unexpected busctl output {text:?}"))
        .to_owned()
}

/// A command run as `user` (uid and primary group; std drops root's
/// supplementary groups).
fn command_as(user: &str, program: &str) -> Command {
    let gid: u32 = String::from_utf8_lossy(
        &Command::new("id")
            .args(["-g", user])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    let mut c = Command::new(program);
    c.uid(uid_of(user)).gid(gid);
    c
}

/// Connect to the Unix socket `path` as `user` and read 12 bytes: what was
/// read, or the connect error (perl, which every Debian has, does it).
fn connect_and_read_as(user: &str, path: &str) -> Result<Vec<u8>, String> {
    let script = r#"
        use Socket;
        socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!";
        connect($s, sockaddr_un($ARGV[0])) or do { print STDERR "connect: $!\n"; exit 3 };
        alarm 60;
        my $buf = "";
        while (length($buf) < 12) {
            my $n = sysread($s, $buf, 12 - length($buf), length($buf));
            last if !$n;
        }
        print $buf;
    "#;
    let out = command_as(user, "perl")
        .args(["-e", script, path])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(stderr(&out))
    }
}

/// Wait (bounded) until `path` no longer exists.
async fn wait_gone(path: &str) {
    let deadline = Instant::now() + EVENT_WAIT;
    while std::path::Path::new(path).exists() {
        assert!(Instant::now() < deadline, "{path} was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_display_is_reached_through_a_descriptor_and_an_owners_socket() {
    let conn = bus().await;
    let d = running_vm(&conn, "console-vnc", VNC).await;
    let path = d.path();

    // OpenGraphics: the descriptor speaks VNC.
    let mut fd = open_fd(&conn, &path, "OpenGraphics", HashMap::new())
        .await
        .unwrap();
    let mut hello = [0u8; 12];
    fd.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, RFB_HELLO);
    drop(fd);

    // GetConsoleSocket as alice: hers, 0600, the same one when asked again.
    let sock = console_socket_as(ALICE, &path, "graphics");
    assert!(sock.starts_with("/run/vapor/console/"), "{sock}");
    assert_eq!(console_socket_as(ALICE, &path, "graphics"), sock);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.uid(), uid_of(ALICE));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let dir = std::fs::metadata("/run/vapor/console").unwrap();
    assert_eq!(dir.permissions().mode() & 0o7777, 0o711);

    // Alice connects and gets the display; bob may not even connect.
    let got = connect_and_read_as(ALICE, &sock).unwrap();
    assert_eq!(got, RFB_HELLO);
    let refused = connect_and_read_as(BOB, &sock).unwrap_err();
    assert!(refused.contains("Permission denied"), "bob: {refused}");
    // A second connection of alice works as well (each gets a fresh display).
    assert_eq!(connect_and_read_as(ALICE, &sock).unwrap(), RFB_HELLO);

    // The socket goes with the VM.
    vm_call(&conn, &path, "ForceStop").await.unwrap();
    wait_gone(&sock).await;
}

#[tokio::test]
async fn a_serial_console_has_one_session_unless_forced() {
    let conn = bus().await;
    let d = running_vm(&conn, "console-serial", SERIAL).await;
    let path = d.path();
    let first = open_fd(&conn, &path, "OpenConsole", HashMap::new())
        .await
        .unwrap();
    let err = open_fd(&conn, &path, "OpenConsole", HashMap::new())
        .await
        .unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.Conflict: ") && err.contains("force"),
        "{err}"
    );
    let force: HashMap<&str, Variant<'_>> = [("force", true.into())].into();
    let mut second = open_fd(&conn, &path, "OpenConsole", force).await.unwrap();
    // The first session ends: its descriptor reads end-of-file.
    let mut rest = Vec::new();
    (&first).read_to_end(&mut rest).unwrap();
    // The second one takes input.
    second.write_all(b"\r\n").unwrap();
    drop(second);
    drop(first);
    // Closing it freed the console: a new plain session is allowed (the
    // daemon notices the close asynchronously: retry briefly).
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        match open_fd(&conn, &path, "OpenConsole", HashMap::new()).await {
            Ok(_) => break,
            Err(e) if e.contains("Conflict") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("after closing: {e}"),
        }
    }
    vm_call(&conn, &path, "ForceStop").await.unwrap();
}

#[tokio::test]
async fn console_requests_are_refused_clearly() {
    let conn = bus().await;
    let d = TestDomain::define_with("console-refuse", VNC);
    let path = d.path();
    wait_for_object(&conn, &path).await;

    // Not running.
    for method in ["OpenConsole", "OpenGraphics"] {
        let err = open_fd(&conn, &path, method, HashMap::new())
            .await
            .unwrap_err();
        assert!(
            err.starts_with("org.vapor.Virtualization.Error.InvalidState: ")
                && err.contains("not running"),
            "{method} on a stopped VM: {err}"
        );
    }
    let err = console_socket(&conn, &path, "graphics").await.unwrap_err();
    assert!(
        err.contains("InvalidState") && err.contains("not running"),
        "{err}"
    );

    vm_call(&conn, &path, "Start").await.unwrap();
    // Unknown options and kinds name the field.
    let odd: HashMap<&str, Variant<'_>> = [("speed", 9600u32.into())].into();
    let err = open_fd(&conn, &path, "OpenConsole", odd).await.unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.InvalidArgument: options.speed"),
        "{err}"
    );
    let err = console_socket(&conn, &path, "vnc").await.unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.InvalidArgument: kind:"),
        "{err}"
    );
    // This VM has a display but no serial console.
    let err = open_fd(&conn, &path, "OpenConsole", HashMap::new())
        .await
        .unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.NotSupported: ")
            && err.contains("no serial console"),
        "{err}"
    );
    let err = console_socket(&conn, &path, "serial").await.unwrap_err();
    assert!(err.contains("NotSupported"), "{err}");
    vm_call(&conn, &path, "ForceStop").await.unwrap();

    // A VM without a display.
    let plain = running_vm(&conn, "console-nodisplay", "").await;
    let err = open_fd(&conn, &plain.path(), "OpenGraphics", HashMap::new())
        .await
        .unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.NotSupported: ")
            && err.contains("no graphical display"),
        "{err}"
    );
    vm_call(&conn, &plain.path(), "ForceStop").await.unwrap();
}

#[tokio::test]
async fn non_member_is_refused_every_console_method() {
    let conn = bus().await;
    let d = TestDomain::define_with("console-bob", VNC);
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let calls: &[(&str, &[&str])] = &[
        ("OpenConsole", &["a{sv}", "0"]),
        ("OpenGraphics", &["a{sv}", "0"]),
        ("GetConsoleSocket", &["s", "graphics"]),
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
        assert!(!out.status.success(), "bob {method} must be refused");
        let err = stderr(&out);
        assert!(
            err.contains("org.vapor.virtualization.vm-console")
                && (err.contains("not authorized")
                    || err.contains("allowing interactive authorization")),
            "bob {method}: unclear refusal: {err}"
        );
    }
}

#[tokio::test]
async fn the_guests_serial_console_shows_its_login_prompt() {
    let g = crate::guest::shared().await;
    // As alice (runuser: with her groups, which polkit's rules look at)
    // through vaporctl, which calls OpenConsole; stdin is a pipe, so it
    // only copies (as a script would use it).
    let mut child = Command::new("runuser")
        .args(["-u", ALICE, "--", env!("CARGO_BIN_EXE_vaporctl")])
        .args(["--no-ask-password", "console", &g.name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut poked = Instant::now() - Duration::from_secs(10);
    let found = loop {
        if String::from_utf8_lossy(&seen).contains("login:") {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        // Ask getty for its prompt (again, should the first be missed).
        if poked.elapsed() >= Duration::from_secs(5) {
            let _ = stdin.write_all(b"\r\n");
            poked = Instant::now();
        }
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend_from_slice(&chunk);
        }
    };
    // runuser passes SIGTERM on to vaporctl (SIGKILL would orphan it).
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        found,
        "no login prompt within 60 s; the console showed {:?}; vaporctl said {}",
        String::from_utf8_lossy(&seen),
        stderr(&out)
    );
}
