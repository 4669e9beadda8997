//! Live migration through vapord, as vapor-alice, to a second libvirt host
//! on this machine (`tests/env/second-host.sh`: its own network, mount and
//! UTS namespaces and host UUID): a running Debian guest moves with its
//! storage while its progress is watched, runs there and is gone here,
//! comes back through the second host's own vapord (on that host's own
//! system bus and polkitd) and `vaporctl migrate` as vapor-alice,
//! and a throttled migration is cancelled with the guest still
//! running here. Refusals before anything starts say why.

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::{Connection, OwnedVariant};

use crate::common::*;
use crate::guest::{pools, Guest};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/second-host.sh");
/// The second host, as tests/fixtures/vapord.toml names it.
const DEST: &str = "vapor-b";
/// Its URI, as the real libvirtd reaches it.
const DEST_URI: &str = "qemu+tcp://10.213.7.2/system";
const JOB: &str = "org.vapor.Virtualization.Job";

static SECOND: OnceLock<()> = OnceLock::new();

extern "C" fn second_host_down() {
    let _ = Command::new("bash").args([SCRIPT, "down"]).status();
}

/// Bring the second host up once per test binary (down again at exit).
fn second_host() {
    SECOND.get_or_init(|| {
        // Down at exit even when it does not come up whole.
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(second_host_down) };
        let out = Command::new("bash").args([SCRIPT, "up"]).output().unwrap();
        assert!(
            out.status.success(),
            "second host: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The second host's own vapord, run as that host runs it: the system
/// vapord inside its namespaces, on its own system bus with its own polkitd
/// (second-host.sh), managing its libvirtd as `qemu:///system`, with the
/// first host configured as `home`; stopped when dropped.
struct SecondVapord {
    daemon: std::process::Child,
}

/// The first host's libvirtd as processes inside the second host reach it
/// (second-host.sh binds its socket there).
const HOME_URI: &str = "qemu:///system?socket=/var/lib/vapor-second-host/home-libvirt/libvirt-sock";

impl SecondVapord {
    fn start() -> Self {
        let dir = format!(
            "{}/vapord-b-{}",
            env!("CARGO_TARGET_TMPDIR"),
            std::process::id()
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!("{dir}/vapord.toml");
        std::fs::write(&config, format!("[hosts]\nhome = \"{HOME_URI}\"\n")).unwrap();
        let log = format!("{dir}/vapord.log");
        let templates = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates");
        let daemon = Command::new("bash")
            .args([SCRIPT, "exec", env!("CARGO_BIN_EXE_vapord")])
            .args(["--config", &config, "--stats-interval", "0"])
            .args(["--templates-dir", templates, "--log-level", "debug"])
            .env("VAPOR_LOG_STDERR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let b = SecondVapord { daemon };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.vaporctl(ALICE, &["list"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the second host's vapord did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        b
    }

    /// vaporctl as `user` on the second host (its system bus).
    fn vaporctl(&self, user: &str, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .args([SCRIPT, "exec", "runuser", "-u", user, "--"])
            .arg(env!("CARGO_BIN_EXE_vaporctl"))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for SecondVapord {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// virsh against the second host; stdout (panics on failure).
fn b_virsh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .arg("virsh")
        .arg("-q")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "second host: virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn migrate_as(user: &str, path: &str, dest: &str, opts: &[&str]) -> Result<String, String> {
    let mut a = vec!["sa{sv}", dest];
    a.extend_from_slice(opts);
    call_iface_as(user, path, VM, "Migrate", &a)
}

/// The file behind the VM's disk vda.
fn disk_file(name: &str) -> String {
    virsh(&["domblklist", name])
        .lines()
        .find_map(|l| l.trim().strip_prefix("vda").map(|p| p.trim().to_owned()))
        .expect("the guest has a disk vda")
}

/// The target of the VM's cdrom holding its cloud-init seed.
fn seed_target(name: &str) -> String {
    virsh(&["domblklist", name, "--details"])
        .lines()
        .find(|l| l.contains("cdrom") && l.contains(".iso"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("the guest has its seed in a cdrom")
        .to_owned()
}

async fn job_details(
    conn: &Connection,
    job: &str,
) -> std::collections::HashMap<String, OwnedVariant> {
    let p = zbus::Proxy::new(conn, BUS_NAME, job.to_owned(), JOB)
        .await
        .unwrap();
    p.get_property("Details").await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_migrates_with_its_storage_and_back_and_a_cancelled_one_stays() {
    let conn = bus().await;
    let g = tokio::task::spawn_blocking(|| {
        second_host();
        let g = Guest::create("mig", true);
        g.wait_first_boot();
        let (rc, _) = g.exec(
            "/bin/sh",
            &["-c", "echo travelled > /var/tmp/marker && sync"],
        );
        assert_eq!(rc, 0);
        g
    })
    .await
    .unwrap();
    let copy_all = ["1", "copy_storage", "s", "all"];

    // Refusals before anything starts, each saying why.
    let err = migrate_as(BOB, &g.path, DEST, &copy_all).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    let err = call_iface_as(BOB, &g.path, VM, "MigrateStartPostcopy", &[]).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    let err = call_iface_as(ALICE, &g.path, VM, "MigrateStartPostcopy", &[]).unwrap_err();
    assert!(err.contains("no migration of this VM is running"), "{err}");
    let err = migrate_as(ALICE, &g.path, "qemu:///system?socket=/tmp/x", &["0"]).unwrap_err();
    assert!(
        err.contains("destination:") && err.contains("transport qemu"),
        "{err}"
    );
    // A URI of a host not listed in vapord.toml: vapord would connect there
    // as root.
    let err = migrate_as(ALICE, &g.path, DEST_URI, &copy_all).unwrap_err();
    assert!(
        err.contains("not a host configured") && err.contains("[hosts]: here, vapor-b"),
        "{err}"
    );
    // A configured name for this very host (same host UUID).
    let err = migrate_as(ALICE, &g.path, "here", &copy_all).unwrap_err();
    assert!(
        err.contains("destination:") && err.contains("is this host"),
        "{err}"
    );
    // A VM of that name there already.
    let xml = format!(
        "{}/taken-{}.xml",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>",
            g.name
        ),
    )
    .unwrap();
    b_virsh(&["define", &xml]);
    let err = migrate_as(ALICE, &g.path, DEST, &copy_all).unwrap_err();
    assert!(
        err.contains("vapor-b already has a VM named") && err.contains(&g.name),
        "{err}"
    );
    b_virsh(&["undefine", &g.name]);
    let _ = std::fs::remove_file(&xml);
    let err = migrate_as(ALICE, &g.path, DEST, &["1", "copy_storage", "s", "some"]).unwrap_err();
    assert!(err.contains("copy_storage: 'some'"), "{err}");
    // No pool there covers the disk's directory.
    let err = migrate_as(ALICE, &g.path, DEST, &copy_all).unwrap_err();
    assert!(err.contains("no running pool on vapor-b covers"), "{err}");
    let dir = pools().disk_dir.clone();
    let out = Command::new("bash")
        .args([SCRIPT, "exec", "mkdir", "-p", &dir])
        .status()
        .unwrap();
    assert!(out.success());
    b_virsh(&[
        "pool-create-as",
        &pools().disk_pool,
        "dir",
        "--target",
        &dir,
    ]);
    // A file already where the copy would go (another VM's image, or the
    // same one on shared storage) is never written over.
    let disk = disk_file(&g.name);
    let on_b = |args: &[&str]| {
        Command::new("bash")
            .args([SCRIPT, "exec"])
            .args(args)
            .status()
            .unwrap()
            .success()
    };
    // Made behind the second libvirtd's back: vapord looks at the storage
    // itself, not at what the pool last listed.
    assert!(on_b(&["truncate", "-s", "1M", &disk]));
    let err = migrate_as(ALICE, &g.path, DEST, &copy_all).unwrap_err();
    assert!(
        err.contains("vapor-b already has") && err.contains("the copy would write over it"),
        "{err}"
    );
    assert!(on_b(&["rm", &disk]));
    // An incremental copy needs the disk's base there.
    let err = migrate_as(
        ALICE,
        &g.path,
        DEST,
        &["1", "copy_storage", "s", "incremental"],
    )
    .unwrap_err();
    assert!(
        err.contains("incremental copies only disk") && err.contains("is not on vapor-b"),
        "{err}"
    );
    // The seed image is not there (and not copied: it is read-only).
    let err = migrate_as(ALICE, &g.path, DEST, &copy_all).unwrap_err();
    assert!(err.contains("is not on vapor-b"), "{err}");
    let seed = seed_target(&g.name);
    let out = busctl_as(ALICE, &g.path, "ChangeMedia", &["ssa{sv}", &seed, "", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The migration, watched: the Job's figures and the VM's Migration
    // property move while it runs.
    let mut changed = properties_changed(&conn).await;
    let (name, dest) = (g.name.clone(), DEST.to_owned());
    let run = tokio::task::spawn_blocking(move || {
        let out = as_user(
            ALICE,
            &[
                env!("CARGO_BIN_EXE_vaporctl"),
                "migrate",
                &name,
                &dest,
                "--copy-storage",
                "all",
            ],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    });
    let (mut saw_job_figures, mut saw_vm_migration) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !run.is_finished() && Instant::now() < deadline {
        let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(500), changed.next()).await
        else {
            continue;
        };
        type Changed = (
            String,
            std::collections::HashMap<String, OwnedVariant>,
            Vec<String>,
        );
        let Ok((iface, props, _)) = m.body().deserialize::<Changed>() else {
            continue;
        };
        if iface == JOB {
            if let Some(d) = props.get("Details") {
                let d: std::collections::HashMap<String, OwnedVariant> =
                    d.try_clone().unwrap().try_into().unwrap_or_default();
                if d.get("data_total")
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(0)
                    > 0
                {
                    saw_job_figures = true;
                }
            }
        }
        if iface == VM && m.header().path().is_some_and(|p| p.as_str() == g.path) {
            if let Some(v) = props.get("Migration") {
                let d: std::collections::HashMap<String, OwnedVariant> =
                    v.try_clone().unwrap().try_into().unwrap_or_default();
                if d.contains_key("destination") {
                    saw_vm_migration = true;
                }
            }
        }
    }
    let (ok, out) = run.await.unwrap();
    assert!(ok, "vaporctl migrate: {out}");
    assert!(out.contains("downtime"), "{out}");
    // The image it left here, which vapord had made for it, is gone.
    assert!(out.contains("were removed"), "{out}");
    assert!(!std::path::Path::new(&disk).exists(), "{disk} is left");
    assert!(saw_job_figures, "no Job Details with figures were seen");
    assert!(saw_vm_migration, "the VM never showed its migration");
    // Running there, gone from here (and from vapord).
    assert_eq!(b_virsh(&["domstate", &g.name]).trim(), "running");
    assert!(!virsh_quiet(&["domuuid", &g.name]));
    let deadline = Instant::now() + EVENT_WAIT;
    while get_all(&conn, &g.path).await.is_ok() {
        assert!(Instant::now() < deadline, "the VM object outlived the VM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back, with the second host's own vapord (as that host would run it:
    // here on a private bus, reaching its libvirtd's socket) and vaporctl;
    // the guest's data came along both ways.
    // The copy is there (so its absence later means something).
    assert!(
        on_b(&["test", "-e", &disk]),
        "{disk} is not on the second host"
    );
    let b = SecondVapord::start();
    let name = g.name.clone();
    let out = tokio::task::spawn_blocking(move || {
        let args = [
            "migrate",
            &name,
            "home",
            "--copy-storage",
            "all",
            "--no-p2p",
            "--migrate-uri",
            "tcp://10.213.7.1",
        ];
        // That host's polkit refuses a non-member, as this one does.
        let refused = b.vaporctl(BOB, &args);
        let out = b.vaporctl(ALICE, &args);
        let list = b.vaporctl(ALICE, &["list"]);
        (refused, out, list)
    })
    .await
    .unwrap();
    let (refused, back, list) = out;
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success() && is_refusal(&err), "{err}");
    let text =
        String::from_utf8_lossy(&back.stdout).into_owned() + &String::from_utf8_lossy(&back.stderr);
    assert!(back.status.success(), "vaporctl migrate back: {text}");
    assert!(text.contains("downtime"), "{text}");
    assert!(
        !on_b(&["test", "-e", &disk]),
        "{disk} is left on the second host"
    );
    assert!(list.status.success(), "vaporctl list on the second host");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&g.name),
        "the second host's vapord still lists the VM"
    );
    wait_for_object(&conn, &g.path).await;
    let gg = g.clone();
    let text = tokio::task::spawn_blocking(move || {
        gg.wait_agent();
        gg.exec("/bin/cat", &["/var/tmp/marker"]).1
    })
    .await
    .unwrap();
    assert_eq!(text.trim(), "travelled");

    // A throttled migration, cancelled through its Job: the guest keeps
    // running here and nothing is left there.
    let mut added = interfaces_added(&conn).await;
    let path = g.path.clone();
    let run = tokio::task::spawn_blocking(move || {
        migrate_as(
            ALICE,
            &path,
            DEST,
            &["2", "copy_storage", "s", "all", "bandwidth", "t", "1"],
        )
    });
    let job = loop {
        let m = wait_signal(&mut added, "the migration's Job", |_| true).await;
        let (p, _): (
            zbus::OwnedObjectPath,
            std::collections::HashMap<String, std::collections::HashMap<String, OwnedVariant>>,
        ) = m.body().deserialize().unwrap();
        if !p.as_str().contains("/job/") {
            continue;
        }
        let j = zbus::Proxy::new(&conn, BUS_NAME, p.as_str().to_owned(), JOB)
            .await
            .unwrap();
        let op: String = j.get_property("Operation").await.unwrap_or_default();
        let objects: Vec<zbus::OwnedObjectPath> =
            j.get_property("Objects").await.unwrap_or_default();
        if op == "vm-migrate" && objects.iter().any(|o| o.as_str() == g.path) {
            break p.as_str().to_owned();
        }
    };
    // Cancel once libvirt's job is under way (its figures appear).
    let deadline = Instant::now() + Duration::from_secs(120);
    while job_details(&conn, &job).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the migration never got under way"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = as_user(
        ALICE,
        &["busctl", "--system", "call", BUS_NAME, &job, JOB, "Cancel"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = run.await.unwrap().unwrap_err();
    assert!(err.contains("cancelled"), "{err}");
    assert_eq!(virsh(&["domstate", &g.name]).trim(), "running");
    assert!(b_virsh(&["list", "--all", "--name"]).trim().is_empty());
    // Nor the image the migration had made there for the copy.
    assert!(
        !on_b(&["test", "-e", &disk]),
        "the cancelled migration left {disk} on the second host"
    );
    assert_eq!(prop_string(&conn, &g.path, "State").await, "running");
    let gg = g.clone();
    tokio::task::spawn_blocking(move || gg.wait_agent())
        .await
        .unwrap();
}
