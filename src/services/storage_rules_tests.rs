//! Tests of `storage_rules.rs`: pool placement, volume paths, growth,
//! pool deletion, intent paths, listing scope and ISO labels.

use super::*;
use crate::libvirt::storage::VolumeRecord;
use crate::services::storage::{volume_key, VolumeView};
use crate::storage::spec::PoolSource;
use crate::store::Store;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

fn pvd(label: &str) -> Vec<u8> {
    let mut v = vec![0u8; 72];
    v[0] = 1;
    v[1..6].copy_from_slice(b"CD001");
    let mut l = label.as_bytes().to_vec();
    l.resize(32, b' ');
    v[40..72].copy_from_slice(&l);
    v
}

#[test]
fn iso_labels_are_read_from_the_primary_volume_descriptor() {
    assert_eq!(
        iso_label_of(&pvd("DEBIAN_12")).as_deref(),
        Some("DEBIAN_12")
    );
    assert_eq!(iso_label_of(&pvd("cidata")).as_deref(), Some("cidata"));
    assert_eq!(iso_label_of(&pvd("")), None);
    let mut bad = pvd("X");
    bad[1] = b'X';
    assert_eq!(iso_label_of(&bad), None);
    assert_eq!(iso_label_of(&[1, b'C']), None);
    // Control characters never reach the bus.
    assert_eq!(iso_label_of(&pvd("A\u{1b}[2J")).as_deref(), Some("A[2J"));
}

fn dir_pool(target: &str) -> PoolSpec {
    PoolSpec {
        name: "p".into(),
        kind: PoolKind::Dir,
        target: target.into(),
        source: PoolSource::default(),
        autostart: true,
        start: true,
        build: true,
    }
}

const STATE: &str = "/var/lib/vapor";

fn host_paths(spec: &PoolSpec) -> Result<Option<String>> {
    pool_host_paths(spec, POOL_ROOTS, Path::new(STATE))
}

#[test]
fn pools_outside_the_pool_roots_need_the_host_path_action() {
    assert_eq!(
        host_paths(&dir_pool("/var/lib/libvirt/images/isos")).unwrap(),
        None
    );
    assert_eq!(
        host_paths(&dir_pool("/var/lib/libvirt/images")).unwrap(),
        None
    );
    assert_eq!(
        host_paths(&dir_pool("/var/lib/vapor/pools/p")).unwrap(),
        None
    );
    assert!(host_paths(&dir_pool("/etc")).unwrap().is_some());
    assert!(host_paths(&dir_pool("/var/lib/libvirtfoo"))
        .unwrap()
        .is_some());
    assert!(host_paths(&dir_pool("/var/lib/vapor-tests/p"))
        .unwrap()
        .is_some());
    assert!(host_paths(&dir_pool("/var/lib/libvirt/imagesfoo"))
        .unwrap_err()
        .to_string()
        .starts_with("target: "));
    let mut fs = dir_pool("/var/lib/vapor/pools/fs");
    fs.kind = PoolKind::Fs;
    fs.source.device = vec!["/dev/sdb1".into()];
    assert!(host_paths(&fs).unwrap().unwrap().contains("/dev/sdb1"));
}

#[test]
fn remote_pools_need_the_host_path_action_even_inside_the_roots() {
    let mut netfs = dir_pool("/var/lib/vapor/pools/nfs");
    netfs.kind = PoolKind::Netfs;
    netfs.source.host = Some("nas.example".into());
    netfs.source.dir = Some("/export/vms".into());
    let why = host_paths(&netfs).unwrap().unwrap();
    assert!(why.contains("nas.example:/export/vms"), "{why}");
    assert!(why.contains("remote side decides"), "{why}");
    let mut iscsi = dir_pool("/dev/disk/by-path");
    iscsi.kind = PoolKind::Iscsi;
    iscsi.source.host = Some("10.0.0.5".into());
    iscsi.source.target_iqn = Some("iqn.2004-04.com.example:d1".into());
    let why = host_paths(&iscsi).unwrap().unwrap();
    assert!(why.contains("iqn.2004-04.com.example:d1"), "{why}");
    assert!(why.contains("10.0.0.5"), "{why}");
}

#[test]
fn no_pool_may_touch_the_state_directory_or_libvirts_own_files() {
    for target in [
        "/var/lib/vapor",
        "/var/lib/vapor/intents",
        "/var/lib/vapor/templates/x",
        "/var/lib/vapor/poolsx",
        "/var/lib",
        "/var",
        "/",
        "/var/lib/libvirt",
        "/var/lib/libvirt/qemu",
        "/var/lib/libvirt/qemu/nvram",
        "/var/lib/libvirt/dnsmasq",
    ] {
        for kind in PoolKind::ALL {
            let mut spec = dir_pool(target);
            spec.kind = kind;
            let e = host_paths(&spec).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{target}: {e}");
            assert!(e.to_string().starts_with("target: "), "{target}: {e}");
        }
    }
}

#[test]
fn forbidden_targets_are_judged_on_canonical_paths() {
    let p = |s: &str| PathBuf::from(s);
    let roots = [p("/var/lib/libvirt/images"), p("/srv/state/pools")];
    let state = p("/srv/state");
    let (libvirt, images) = (p("/var/lib/libvirt"), p("/var/lib/libvirt/images"));
    let judge = |t: &str| forbidden_target(&p(t), &state, &roots, &libvirt, &images);
    assert!(judge("/srv/state")
        .unwrap()
        .starts_with("is vapord's state"));
    assert!(judge("/srv").unwrap().starts_with("would hold"));
    assert!(judge("/srv/state/intents")
        .unwrap()
        .starts_with("lies inside"));
    assert!(judge("/var/lib/libvirt/qemu")
        .unwrap()
        .contains("libvirt's own"));
    assert_eq!(judge("/srv/state/pools"), None);
    assert_eq!(judge("/srv/state/pools/a"), None);
    assert_eq!(judge("/srv/statex"), None);
    assert_eq!(judge("/var/lib/libvirt/images/a"), None);
    assert_eq!(judge("/etc"), None); // storage-host-path decides
                                     // A root that holds the state directory opens nothing inside it.
    let wide = [p("/srv")];
    let judge = |t: &str| forbidden_target(&p(t), &state, &wide, &libvirt, &images);
    assert!(judge("/srv/state/intents").is_some());
    assert_eq!(judge("/srv/other"), None);
}

#[test]
fn a_pool_root_reached_through_a_symlink_is_judged_by_its_target() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("root")).unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("root/escape")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("state"), dir.path().join("root/state")).unwrap();
    let root = dir.path().join("root").to_string_lossy().into_owned();
    let state = dir.path().join("state");
    let inside = format!("{root}/new/pool");
    let escape = format!("{root}/escape/pool");
    let judge = |t: &str| pool_host_paths(&dir_pool(t), &[&root], &state);
    assert_eq!(judge(&inside).unwrap(), None);
    assert!(judge(&escape).unwrap().is_some());
    // The state directory reached through a link in a root is refused.
    let e = judge(&format!("{root}/state/sub")).unwrap_err();
    assert!(e.to_string().starts_with("target: "), "{e}");
}

fn facts(symlink: bool, real: Option<&str>, pool: Option<&str>) -> PathFacts {
    PathFacts {
        symlink,
        real: real.map(PathBuf::from),
        pool_real: pool.map(PathBuf::from),
    }
}

#[test]
fn file_pool_volumes_must_really_lie_in_the_pool() {
    let pool = Some("/srv/pool");
    let ok = facts(false, Some("/srv/pool/a.qcow2"), pool);
    for kind in ["dir", "fs", "netfs", "vstorage", "someday"] {
        assert_eq!(volume_path_problem(kind, "/srv/pool/a.qcow2", &ok), None);
        let link = facts(true, Some("/srv/pool/b"), pool);
        let why = volume_path_problem(kind, "/srv/pool/a", &link).unwrap();
        assert!(why.contains("/srv/pool/a is a symbolic link"), "{why}");
        // A linked directory on the way leads out.
        let out = facts(false, Some("/etc/shadow"), pool);
        let why = volume_path_problem(kind, "/srv/pool/d/shadow", &out).unwrap();
        assert!(why.contains("/etc/shadow") && why.contains("/srv/pool/d/shadow"));
        let sibling = facts(false, Some("/srv/poolx/a"), pool);
        assert!(volume_path_problem(kind, "/srv/pool/a", &sibling).is_some());
        let itself = facts(false, Some("/srv/pool"), pool);
        assert!(volume_path_problem(kind, "/srv/pool/.", &itself).is_some());
        let gone = facts(false, None, pool);
        assert!(volume_path_problem(kind, "/srv/pool/a", &gone).is_some());
        let no_pool = facts(false, Some("/srv/pool/a"), None);
        assert!(volume_path_problem(kind, "/srv/pool/a", &no_pool).is_some());
    }
}

#[test]
fn device_pool_volumes_are_not_path_checked() {
    let link = facts(true, Some("/dev/dm-3"), Some("/dev/vg"));
    for kind in ["logical", "iscsi", "disk", "scsi", "mpath", "rbd"] {
        assert_eq!(volume_path_problem(kind, "/dev/vg/lv", &link), None);
    }
}

#[test]
fn path_facts_see_links_and_where_they_lead() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    std::fs::write(pool.join("a.raw"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", pool.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc", pool.join("d")).unwrap();
    let target = pool.to_string_lossy().into_owned();
    let at = |n: &str| pool.join(n).to_string_lossy().into_owned();
    let judge = |n: &str| volume_path_problem("dir", &at(n), &PathFacts::read(&at(n), &target));
    assert_eq!(judge("a.raw"), None);
    assert!(judge("link").unwrap().contains("symbolic link"));
    assert!(judge("d/passwd").unwrap().contains("outside the pool"));
    assert!(judge("missing").unwrap().contains("cannot be resolved"));
    let f = PathFacts::read(&at("link"), "");
    assert!(f.symlink && f.pool_real.is_none());
}

fn pool_rec(state: &'static str, available: u64) -> PoolRecord {
    PoolRecord {
        uuid: "u".into(),
        name: "p".into(),
        kind: "dir".into(),
        state,
        autostart: true,
        persistent: true,
        target_path: "/srv/pool".into(),
        capacity: 100,
        allocation: 0,
        available,
    }
}

#[test]
fn an_upload_may_grow_a_volume_only_into_free_space() {
    let pool = pool_rec("running", 10);
    assert!(growth_fits("the upload", 10, &pool).is_ok());
    assert!(growth_fits("the upload", 0, &pool).is_ok());
    let e = growth_fits("the upload", 11, &pool).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded(_)), "{e}");
    assert!(e.to_string().contains("11 bytes") && e.to_string().contains("(10 bytes)"));
}

#[test]
fn deleting_a_pools_volumes_needs_the_pool_started() {
    let running = pool_rec("running", 0);
    let stopped = pool_rec("inactive", 0);
    assert!(check_pool_deletion(&running, true, 3).is_ok());
    assert!(check_pool_deletion(&running, false, 0).is_ok());
    assert!(check_pool_deletion(&stopped, false, 0).is_ok());
    let e = check_pool_deletion(&running, false, 2).unwrap_err();
    assert!(matches!(e, Error::InvalidState(_)) && e.to_string().contains("2 volume(s)"));
    // An inactive pool lists no volumes: nothing could be checked.
    let e = check_pool_deletion(&stopped, true, 0).unwrap_err();
    assert!(matches!(e, Error::InvalidState(_)));
    assert!(e
        .to_string()
        .contains("start the pool first so its volumes can be checked"));
}

#[test]
fn intents_record_only_absolute_expected_paths() {
    assert_eq!(
        expected_volume_path("/srv/pool", "a.qcow2").as_deref(),
        Some("/srv/pool/a.qcow2")
    );
    assert_eq!(expected_volume_path("relative/dir", "a.qcow2"), None);
    assert_eq!(expected_volume_path("", "a.qcow2"), None);
    assert_eq!(expected_volume_path("rbdpool", "a"), None);
}

fn volume_view(pool: &str, name: &str) -> VolumeView {
    VolumeView {
        id: volume_key(pool, name),
        rec: VolumeRecord {
            pool_uuid: pool.into(),
            name: name.into(),
            key: format!("/{pool}/{name}"),
            path: format!("/{pool}/{name}"),
            format: "raw".into(),
            kind: "file".into(),
            capacity: 1,
            allocation: 1,
            backing_store: String::new(),
        },
        pool_name: pool.into(),
        real_path: format!("/{pool}/{name}"),
        label: String::new(),
        used_by: Vec::new(),
        owned_by: None,
    }
}

#[test]
fn pools_a_listing_could_not_read_keep_their_records() {
    let (volumes, _rx) = Store::<VolumeView>::new(Arc::new(AtomicU64::new(1)));
    let t = volumes.ticket();
    volumes.replace_scope(
        vec![volume_view("ok", "a"), volume_view("flaky", "b")],
        |_| true,
        t,
    );
    // The next listing could not read "flaky" and "ok" lost "a".
    let skipped: HashSet<String> = ["flaky".to_owned()].into();
    assert!(in_removal_scope(&skipped, "ok"));
    assert!(!in_removal_scope(&skipped, "flaky"));
    let t = volumes.ticket();
    volumes.replace_scope(
        Vec::new(),
        |v| in_removal_scope(&skipped, &v.rec.pool_uuid),
        t,
    );
    assert!(volumes.get("ok/a").is_none());
    assert!(volumes.get("flaky/b").is_some());
}

#[test]
fn iso_labels_are_read_only_from_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("a.iso");
    let mut data = vec![0u8; 32768];
    data.extend(pvd("LABEL"));
    std::fs::write(&iso, &data).unwrap();
    assert_eq!(iso_label(&iso).as_deref(), Some("LABEL"));
    let link = dir.path().join("link.iso");
    std::os::unix::fs::symlink(&iso, &link).unwrap();
    assert_eq!(iso_label(&link), None);
    // A FIFO is neither waited on nor read.
    let fifo = dir.path().join("fifo.iso");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_eq!(iso_label(&fifo), None);
    assert_eq!(iso_label(dir.path()), None);
}

#[test]
fn no_pool_may_lie_in_the_backup_repository() {
    let repo = vec![PathBuf::from("/srv/b/vapor-backups")];
    let why = in_backup_repository(Path::new("/srv/b/vapor-backups/20261130_x"), &repo).unwrap();
    assert!(why.contains("backup repository"), "{why}");
    assert!(in_backup_repository(Path::new("/srv/b/vapor-backups"), &repo).is_some());
    assert!(in_backup_repository(Path::new("/srv/b"), &repo).is_none());
    assert!(in_backup_repository(Path::new("/srv/b/vapor-backups2"), &repo).is_none());
}
