//! A vapord killed (SIGKILL) in the middle of a creation leaves nothing
//! behind for long: the next start rolls the creation back from its intent
//! record, and the same name can be created again. Its own test binary,
//! because it kills and restarts vapord.

#[path = "integration/common.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A vapord of this test's own, on the system bus, with its own state dir.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(state_dir: &str, log: &str) -> Self {
        Self::start_with(state_dir, log, &[])
    }

    fn start_with(state_dir: &str, log: &str, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates");
        let child = Command::new(env!("CARGO_BIN_EXE_vapord"))
            .args(["--replace", "--log-level", "debug", "--stats-interval", "0"])
            .args(["--state-dir", state_dir, "--templates-dir", templates])
            .args(extra)
            .env("VAPOR_LOG_STDERR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !owns_bus_name(pid) {
            assert!(Instant::now() < deadline, "vapord did not take its name");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon { child }
    }

    fn kill(mut self) {
        // SIGKILL: no chance to clean up.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn intent_records(state_dir: &str) -> Vec<serde_json::Value> {
    std::fs::read_dir(format!("{state_dir}/intents"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The tests here each run their own vapord under the one bus name: one at a time.
static ONE_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_creation_killed_half_way_is_rolled_back_at_the_next_start() {
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let state = format!(
        "{}/crash-state-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let log = format!(
        "{}/crash-vapord-{}.log",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let _ = std::fs::remove_dir_all(&state);
    let pool = TestPool::new("crash");
    // A source big enough that libvirt's copy is still going when vapord dies.
    let golden = format!("{}/golden.raw", pool.dir);
    random_file(&golden, 384);
    pool.refresh();
    let name = unique_name("crash");
    let spec = json!({
        "name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [
            {"action": "create", "size": 20, "path": "a.qcow2"},
            {"action": "create", "size": 20, "format": "raw", "path": "b.raw"},
            {"action": "clone", "source": "golden.raw", "path": "c.raw"}
        ]},
        "cloud_init": {"user_data": "#cloud-config\npassword: s3cret\n"}
    })
    .to_string();

    let daemon = Daemon::start(&state, &log);
    let creator = {
        let spec = spec.clone();
        std::thread::spawn(move || {
            Command::new("busctl")
                .args(["--system", "--timeout=300", "call", BUS_NAME, ROOT, MANAGER])
                .args(["CreateVirtualMachine", "s", &spec])
                .output()
                .unwrap()
        })
    };
    // Kill it once the clone is under way: two volumes made, the third
    // recorded and being copied by libvirtd (its file exists, not yet done).
    let clone = format!("{}/c.raw", pool.dir);
    wait_until("the creation to reach its clone", || {
        intent_records(&state).iter().any(|r| {
            let steps = r["steps"].as_array().cloned().unwrap_or_default();
            steps.iter().filter(|s| s["kind"] == "volume").count() >= 3
        }) && std::path::Path::new(&clone).exists()
    });
    daemon.kill();
    let out = creator.join().unwrap();
    assert!(
        !out.status.success(),
        "the caller learns the creation failed"
    );
    assert!(
        !intent_records(&state).is_empty(),
        "the record of the unfinished creation survives the crash"
    );
    assert!(std::path::Path::new(&format!("{}/a.qcow2", pool.dir)).exists());

    // The next start rolls it back: every volume it made goes, and the
    // golden image it copied from stays.
    let daemon = Daemon::start(&state, &log);
    wait_until("the rollback", || {
        intent_records(&state).is_empty() && {
            pool.refresh();
            pool.files() == vec!["golden.raw".to_string()]
        }
    });
    assert!(!virsh_quiet(&["dominfo", &name]));
    // Scratch space (the seed's user data holds secrets) is private and
    // emptied at start.
    use std::os::unix::fs::PermissionsExt;
    let scratch_dir = format!("{state}/scratch");
    let mode = std::fs::metadata(&scratch_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    let scratch: Vec<_> = std::fs::read_dir(&scratch_dir).unwrap().collect();
    assert!(scratch.is_empty(), "{scratch:?}");

    // And the same request now succeeds.
    let out = Command::new("busctl")
        .args(["--system", "--timeout=300", "call", BUS_NAME, ROOT, MANAGER])
        .args(["CreateVirtualMachine", "s", &spec])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(virsh_quiet(&["dominfo", &name]));
    assert!(
        intent_records(&state).is_empty(),
        "a finished creation leaves no record"
    );
    virsh(&["undefine", &name]);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn an_upload_killed_half_way_is_removed_at_the_next_start() {
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let state = format!(
        "{}/crash-upload-state-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let log = format!(
        "{}/crash-upload-vapord-{}.log",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let _ = std::fs::remove_dir_all(&state);
    let pool = TestPool::new("crashup");
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let pool_path = format!("{ROOT}/pool/{}", uuid.replace('-', "_"));
    let daemon = Daemon::start(&state, &log);

    // A slow pipe: the upload is under way (volume made, stream open) when
    // vapord dies.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let feeding = feeding.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            while feeding.load(std::sync::atomic::Ordering::SeqCst) {
                if writer.write_all(&[3u8; 64 * 1024]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let uploader = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let conn = zbus::Connection::system().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let proxy = loop {
                let p = zbus::Proxy::new(
                    &conn,
                    BUS_NAME,
                    pool_path.clone(),
                    "org.vapor.Virtualization.StoragePool",
                )
                .await
                .unwrap();
                if p.introspect()
                    .await
                    .is_ok_and(|x| x.contains("UploadVolume"))
                {
                    break p;
                }
                assert!(Instant::now() < deadline, "the pool never appeared");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(reader));
            let mut opts = std::collections::HashMap::new();
            opts.insert("size", zbus::Variant::from(1u64 << 30));
            proxy
                .call::<_, _, zbus::OwnedObjectPath>("UploadVolume", &("half.raw", fd, opts))
                .await
                .is_ok()
        })
    });
    let half = format!("{}/half.raw", pool.dir);
    wait_until("the upload to be under way", || {
        std::path::Path::new(&half).exists()
            && intent_records(&state)
                .iter()
                .any(|r| r["operation"] == "volume-upload")
    });
    daemon.kill();
    feeding.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !uploader.join().unwrap(),
        "the caller learns the upload failed"
    );
    feeder.join().unwrap();
    assert!(std::path::Path::new(&half).exists(), "the crash left it");

    let daemon = Daemon::start(&state, &log);
    wait_until("the half-made volume to be removed", || {
        intent_records(&state).is_empty() && {
            pool.refresh();
            pool.files().is_empty()
        }
    });
    drop(daemon);
    let _ = std::fs::remove_dir_all(&state);
}

/// The backup repository in a libvirt pool (`backup_pool`): backups say
/// why they cannot run while the pool is missing; once it runs, a vapord
/// that starts finds there what a dead one left of a backup (the libvirt
/// backup job writing into the repository, its half-written directory,
/// its checkpoint) and rolls it back, leaving others' checkpoints alone;
/// then backups land in `<pool>/vapor-backups`, which no volume call can
/// delete.
#[test]
fn a_pool_holds_the_backups_and_a_dead_vapords_half_backup_is_rolled_back() {
    let _one = ONE_DAEMON.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = env!("CARGO_TARGET_TMPDIR");
    let pid = std::process::id();
    let state = format!("{tmp}/crash-backup-state-{pid}");
    let log = format!("{tmp}/crash-backup-vapord-{pid}.log");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let pool_name = unique_name("bkpool");
    let config = format!("{state}/vapord.toml");
    std::fs::write(&config, format!("backup_pool = \"{pool_name}\"\n")).unwrap();
    let disks = TestPool::new("bkdisk");
    let disk = disks.volume("d.qcow2", "qcow2");
    let d = TestDomain::define_with("bk", &disk_device(&disk, "qcow2"));
    virsh(&["start", &d.name]);

    // No pool yet: a typed error naming the setting, nothing else fails.
    let daemon = Daemon::start_with(&state, &log, &["--config", &config]);
    let err = call_iface_as(ALICE, &d.path(), VM, "Backup", &["a{sv}", "0"]).unwrap_err();
    assert!(
        err.contains("backup_pool") && err.contains("does not exist"),
        "{err}"
    );
    daemon.kill();

    // What a vapord killed during a backup leaves: libvirt's backup job
    // writing into a partial directory, with the checkpoint made for it
    // (a pull-mode job here: it runs until aborted, so the test knows it
    // is still running when vapord starts).
    let bk = TestPool {
        name: pool_name.clone(),
        dir: format!("/var/lib/vapor-tests/{pool_name}"),
    };
    std::fs::create_dir_all(&bk.dir).unwrap();
    virsh(&["pool-create-as", &bk.name, "dir", "--target", &bk.dir]);
    let partial = format!("{}/vapor-backups/.partial-dead", bk.dir);
    std::fs::create_dir_all(&partial).unwrap();
    // Checkpoints of someone else's, and of another vapord's backup.
    virsh(&["checkpoint-create-as", &d.name, "theirs"]);
    virsh(&["checkpoint-create-as", &d.name, "vapor-elsewhere"]);
    let backup_xml = format!("{state}/backup.xml");
    let socket = format!("/tmp/vt-pull-{pid}.sock");
    std::fs::write(
        &backup_xml,
        format!(
            "<domainbackup mode='pull'><server transport='unix' socket='{socket}'/>\
             <disks><disk name='vda' type='file'><scratch file='{partial}/vda.scratch'/>\
             </disk></disks></domainbackup>"
        ),
    )
    .unwrap();
    let checkpoint_xml = format!("{state}/checkpoint.xml");
    std::fs::write(
        &checkpoint_xml,
        "<domaincheckpoint><name>vapor-dead</name></domaincheckpoint>",
    )
    .unwrap();
    virsh(&[
        "backup-begin",
        &d.name,
        "--backupxml",
        &backup_xml,
        "--checkpointxml",
        &checkpoint_xml,
    ]);
    let checkpoints = || {
        let mut v: Vec<String> = virsh(&["checkpoint-list", &d.name, "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    };
    assert_eq!(checkpoints(), ["theirs", "vapor-dead", "vapor-elsewhere"]);
    let job_runs = || virsh_quiet(&["backup-dumpxml", &d.name]);
    assert!(job_runs(), "the backup job runs when vapord starts");

    let daemon = Daemon::start_with(&state, &log, &["--config", &config]);
    wait_until("the half-made backup to be rolled back", || {
        !std::path::Path::new(&partial).exists() && checkpoints() == ["theirs", "vapor-elsewhere"]
    });
    assert!(!job_runs(), "the dead vapord's backup job was aborted");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("aborting a backup of"), "{text}");
    // Backups now land in the pool, and the next one is full (its base
    // checkpoint went with its backup).
    let out = call_iface_as(ALICE, &d.path(), VM, "Backup", &["a{sv}", "0"]).unwrap();
    let id = out.rsplit('/').next().unwrap().trim_matches('"').to_owned();
    let dir = format!("{}/vapor-backups/{id}", bk.dir);
    assert!(
        std::path::Path::new(&format!("{dir}/manifest.json")).is_file(),
        "{dir}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kind"], "full", "{manifest}");
    // The repository is one volume of the pool, which vapord will not
    // delete, wipe or hand to a VM.
    bk.refresh();
    let vol = format!(
        "{ROOT}/pool/{}/vapor_2dbackups",
        virsh(&["pool-uuid", &bk.name]).trim().replace('-', "_")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        let err = call_iface_as(
            ALICE,
            &vol,
            "org.vapor.Virtualization.Volume",
            "Delete",
            &[],
        )
        .unwrap_err();
        if err.contains("is a directory") || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(err.contains("not a disk image"), "{err}");
    assert!(std::path::Path::new(&dir).is_dir());

    drop(daemon);
    virsh_quiet(&["destroy", &d.name]);
    virsh(&["undefine", "--checkpoints-metadata", &d.name]);
    let _ = std::fs::remove_dir_all(&state);
}
