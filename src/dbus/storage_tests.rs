//! Tests of `storage.rs`: object paths of volumes, the caller files a
//! transfer takes, and backing volumes given by object path.

use super::*;

#[test]
fn volume_names_become_valid_path_elements() {
    for name in ["disk.qcow2", "a b", "ünï", "", "../x", "_"] {
        let p = volume_path("0b7f5a2e-0000-4000-8000-000000000001", name);
        assert!(zbus::ObjectPath::try_from(p.as_str()).is_ok(), "{p}");
    }
    assert_eq!(escape_path_element("disk.qcow2"), "disk_2eqcow2");
    // Escaping is one-to-one: different names never share a path.
    assert_ne!(escape_path_element("a_2e"), escape_path_element("a."));
}

fn bus_fd(fd: impl Into<std::os::fd::OwnedFd>) -> OwnedFd {
    OwnedFd::from(fd.into())
}

fn refused(r: Result<std::fs::File, Error>) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn transfers_take_only_regular_files_and_pipes() {
    let file = tempfile::tempfile().unwrap();
    let dup = file.try_clone().unwrap();
    assert!(caller_file(bus_fd(file), false).is_ok());
    assert!(caller_file(bus_fd(dup), true).is_ok());
    let (r, w) = std::io::pipe().unwrap();
    assert!(caller_file(bus_fd(r), false).is_ok());
    assert!(caller_file(bus_fd(w), true).is_ok());
    // Sockets, devices and directories are refused, for either side.
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let m = refused(caller_file(bus_fd(a), false));
    assert!(m.contains("regular file or a pipe"), "{m}");
    let m = refused(caller_file(bus_fd(b), true));
    assert!(m.starts_with("fd: "), "{m}");
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let null2 = null.try_clone().unwrap();
    refused(caller_file(bus_fd(null), true));
    refused(caller_file(bus_fd(null2), false));
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    refused(caller_file(bus_fd(dir), false));
}

#[test]
fn transfers_check_the_access_mode() {
    let (r, w) = std::io::pipe().unwrap();
    assert!(refused(caller_file(bus_fd(r), true)).contains("not open for writing"));
    assert!(refused(caller_file(bus_fd(w), false)).contains("not open for reading"));
}

fn view(pool: &str, name: &str) -> Arc<VolumeView> {
    use crate::libvirt::storage::VolumeRecord;
    Arc::new(VolumeView {
        id: format!("{pool}/{name}"),
        rec: VolumeRecord {
            pool_uuid: pool.into(),
            name: name.into(),
            key: String::new(),
            path: String::new(),
            format: "qcow2".into(),
            kind: "file".into(),
            capacity: 1,
            allocation: 1,
            backing_store: String::new(),
        },
        pool_name: "p".into(),
        real_path: String::new(),
        label: String::new(),
        used_by: Vec::new(),
        owned_by: None,
    })
}

#[test]
fn a_backing_volume_object_path_becomes_the_volumes_id() {
    let p1 = "0b7f5a2e-0000-4000-8000-000000000001";
    let p2 = "0b7f5a2e-0000-4000-8000-000000000002";
    let vols = [view(p1, "base.qcow2"), view(p2, "base.qcow2")];
    let path = volume_path(p2, "base.qcow2");
    assert_eq!(
        backing_volume_id(&path, &vols).unwrap(),
        format!("{p2}/base.qcow2")
    );
    // A name (or an id) is left for the service to resolve.
    assert_eq!(
        backing_volume_id("base.qcow2", &vols).unwrap(),
        "base.qcow2"
    );
    let e = backing_volume_id(&volume_path(p1, "nope"), &vols).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound(m) if m.starts_with("backing_volume: ")),
        "{e:?}"
    );
}
