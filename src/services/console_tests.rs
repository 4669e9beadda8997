//! Tests of `console.rs`: the rules for console sockets, and the socket
//! directory and files as the service makes them.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;
use crate::libvirt::DomainState;

fn key(uid: u32, uuid: &str, kind: ConsoleKind) -> SocketKey {
    SocketKey {
        uid,
        uuid: uuid.into(),
        kind,
    }
}

#[test]
fn kind_is_serial_or_graphics_and_anything_else_names_the_field() {
    assert_eq!(ConsoleKind::parse("serial").unwrap(), ConsoleKind::Serial);
    assert_eq!(
        ConsoleKind::parse("graphics").unwrap(),
        ConsoleKind::Graphics
    );
    for bad in ["", "vnc", "Serial", "graphics "] {
        let e = ConsoleKind::parse(bad).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.starts_with("kind: ")),
            "{bad:?}: {e}"
        );
    }
    assert_eq!(ConsoleKind::Graphics.as_str(), "graphics");
}

#[test]
fn socket_names_carry_the_kind_and_128_random_bits() {
    let n = socket_name(ConsoleKind::Graphics, 0xab);
    assert_eq!(n, format!("graphics-{}ab", "0".repeat(30)));
    let n = socket_name(ConsoleKind::Serial, u128::MAX);
    assert_eq!(n, format!("serial-{}", "f".repeat(32)));
}

#[test]
fn one_person_gets_at_most_four_sockets_and_one_vm_at_most_eight() {
    let mine: Vec<SocketKey> = (0..MAX_SOCKETS_PER_USER)
        .map(|i| key(1000, &format!("vm-{i}"), ConsoleKind::Graphics))
        .collect();
    let e = admit(mine.iter(), &key(1000, "vm-new", ConsoleKind::Serial)).unwrap_err();
    assert!(
        matches!(&e, Error::LimitExceeded(m) if m.contains("4 console sockets")),
        "{e}"
    );
    // Someone else is not counted against me.
    assert!(admit(mine.iter(), &key(1001, "vm-new", ConsoleKind::Serial)).is_ok());
    assert!(admit(mine[1..].iter(), &key(1000, "vm-new", ConsoleKind::Serial)).is_ok());

    let everyone: Vec<SocketKey> = (0..MAX_SOCKETS_PER_VM as u32)
        .map(|uid| key(uid, "busy", ConsoleKind::Graphics))
        .collect();
    let e = admit(everyone.iter(), &key(5000, "busy", ConsoleKind::Serial)).unwrap_err();
    assert!(
        matches!(&e, Error::LimitExceeded(m) if m.contains("this virtual machine")),
        "{e}"
    );
    assert!(admit(everyone.iter(), &key(5000, "quiet", ConsoleKind::Serial)).is_ok());
}

#[test]
fn a_socket_is_idle_only_without_connections_for_the_whole_time() {
    let idle = Duration::from_secs(300);
    let t0 = Instant::now();
    assert!(!idle_expired(t0, t0 + Duration::from_secs(299), 0, idle));
    assert!(idle_expired(t0, t0 + idle, 0, idle));
    assert!(!idle_expired(t0, t0 + idle * 10, 1, idle));
    // A clock reading before the last use is not idle.
    assert!(!idle_expired(t0 + idle, t0, 0, idle));
}

#[test]
fn only_the_owner_and_root_may_use_a_socket() {
    assert!(peer_allowed(1000, 1000));
    assert!(peer_allowed(0, 1000));
    assert!(!peer_allowed(1001, 1000));
}

#[test]
fn consoles_close_when_the_vm_stops_or_goes() {
    let mut rec = DomainRecord {
        name: "web".into(),
        state: DomainState::Running,
        ..Default::default()
    };
    assert!(!console_gone(Some(&rec)));
    rec.state = DomainState::Paused;
    assert!(!console_gone(Some(&rec)), "a paused VM keeps its consoles");
    rec.state = DomainState::ShutOff;
    assert!(console_gone(Some(&rec)));
    assert!(console_gone(None));
}

#[test]
fn the_directory_is_made_0711_and_only_vapords_stale_sockets_go() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run/vapor/console");
    assert_eq!(prepare_dir(&dir).unwrap(), 0);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o711);
    let stale = dir.join(socket_name(ConsoleKind::Graphics, 1));
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    // Not vapord's: a file with a look-alike name, a directory, another file.
    std::fs::write(dir.join(socket_name(ConsoleKind::Serial, 2)), b"").unwrap();
    std::fs::create_dir(dir.join("odd")).unwrap();
    std::fs::write(dir.join("notes.txt"), b"").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(prepare_dir(&dir).unwrap(), 1);
    assert!(!stale.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o711);
}

#[test]
fn a_directory_path_that_is_not_a_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("console");
    std::fs::write(&file, b"").unwrap();
    assert!(prepare_dir(&file).is_err());
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
    assert!(prepare_dir(&link).is_err(), "a symlink is not followed");
}

#[test]
fn a_socket_is_bound_with_mode_0600_for_its_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(socket_name(ConsoleKind::Serial, 7));
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let listener = bind_socket(&path, me).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), me);
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    assert!(listener.accept().is_ok());
    remove_socket_file(&path);
    assert!(!path.exists());
    remove_socket_file(&path);
}

#[test]
fn only_names_vapord_makes_count_as_its_sockets() {
    assert!(is_socket_name(&socket_name(ConsoleKind::Graphics, 7)));
    assert!(is_socket_name(&socket_name(ConsoleKind::Serial, u128::MAX)));
    assert!(!is_socket_name("graphics-xyz"));
    assert!(!is_socket_name("important.txt"));
}
