//! Real Debian 12 guests for the tests that need an operating system:
//! hotplug, consoles, metrics, clones. The image is built once and cached by
//! `tests/env/guest-image.sh` (run by setup.sh) under
//! `/var/cache/vapor-tests/guest/current/`; guests run under TCG (a stock
//! kernel cannot run under this machine's PVM KVM; TCG works everywhere).
//!
//! Guests are made the way a user makes them: `CreateVirtualMachine` as
//! vapor-alice, with a qcow2 overlay on the cached image, direct kernel boot
//! and a cloud-init seed. One shared guest per test binary ([`shared`]) is
//! booted once and used by every test that only needs a running Linux; a
//! test that must restart or clone a guest makes its own ([`Guest::create`]).

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

/// Where the cached image lives.
pub const IMAGE_DIR: &str = "/var/cache/vapor-tests/guest/current";

/// A guest made for the tests.
#[derive(Debug, Clone)]
pub struct Guest {
    pub name: String,
    pub uuid: String,
    /// D-Bus object path.
    pub path: String,
}

/// The pools the guests use: the image's (read-only to them) and one for
/// their overlays and seeds. Both transient, made once per test binary.
pub struct GuestPools {
    pub image_pool: String,
    /// Real directory of the image (the `current` link resolved).
    pub image_dir: String,
    pub disk_pool: String,
    pub disk_dir: String,
}

static POOLS: OnceLock<GuestPools> = OnceLock::new();

/// Remove what an earlier run of this binary left behind (a killed run).
fn sweep_stale() {
    let names = virsh(&["list", "--all", "--name"]);
    for n in names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("vt-guest-"))
    {
        let pid = n.split('-').nth(2).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
            continue;
        }
        virsh_quiet(&["destroy", n]);
        undefine_all(n, true);
    }
    let pools = virsh(&["pool-list", "--all", "--name"]);
    for n in pools.lines().map(str::trim) {
        let Some(rest) = n
            .strip_prefix("vt-guest-image-")
            .or_else(|| n.strip_prefix("vt-guest-disks-"))
        else {
            continue;
        };
        if rest
            .parse::<u32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            continue;
        }
        virsh_quiet(&["pool-destroy", n]);
        if n.starts_with("vt-guest-disks-") {
            let _ = std::fs::remove_dir_all(format!("/var/lib/vapor-tests/{n}"));
        }
    }
}

pub fn pools() -> &'static GuestPools {
    POOLS.get_or_init(|| {
        assert!(
            std::path::Path::new(&format!("{IMAGE_DIR}/ready")).exists(),
            "the test guest image is missing: run tests/env/setup.sh (it runs tests/env/guest-image.sh)"
        );
        daemon();
        sweep_stale();
        let image_dir = std::fs::canonicalize(IMAGE_DIR)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let pid = std::process::id();
        let image_pool = format!("vt-guest-image-{pid}");
        virsh_quiet(&["pool-destroy", &image_pool]);
        virsh(&["pool-create-as", &image_pool, "dir", "--target", &image_dir]);
        let disk_pool = format!("vt-guest-disks-{pid}");
        let disk_dir = format!("/var/lib/vapor-tests/{disk_pool}");
        std::fs::create_dir_all(&disk_dir).unwrap();
        virsh_quiet(&["pool-destroy", &disk_pool]);
        virsh(&["pool-create-as", &disk_pool, "dir", "--target", &disk_dir]);
        // vapord learns of pools through events; wait until it knows both.
        let deadline = Instant::now() + EVENT_WAIT;
        while !(pool_known(&image_pool) && pool_known(&disk_pool)) {
            assert!(Instant::now() < deadline, "vapord never saw the guest pools");
            std::thread::sleep(Duration::from_millis(100));
        }
        GuestPools {
            image_pool,
            image_dir,
            disk_pool,
            disk_dir,
        }
    })
}

fn pool_known(name: &str) -> bool {
    manager_as(ALICE, "LookupStoragePool", name)
        .status
        .success()
}

/// The creation spec of a test guest.
pub fn spec(name: &str, start: bool) -> serde_json::Value {
    let p = pools();
    json!({
        "name": name,
        "memory": 1024,
        "vcpus": 2,
        "accel": "tcg",
        "cpu_mode": "custom:qemu64",
        "boot": {
            "kernel": format!("{}/vmlinuz", p.image_dir),
            "initrd": format!("{}/initrd.img", p.image_dir),
            "cmdline": "root=/dev/vda rw console=ttyS0,115200",
        },
        "storage": {
            "default_pool": p.disk_pool,
            "disks": [{"action": "backing", "source": format!("{}/base.qcow2", p.image_dir),
                       "format": "qcow2", "bus": "virtio"}],
        },
        "graphics": [{"type": "vnc"}],
        "cloud_init": {
            "user_data": "#cloud-config\nruncmd:\n  - [sh, -c, 'echo ran > /var/tmp/vapor-cloud-init']\n",
        },
        "start": start,
    })
}

impl Guest {
    /// Create a guest as vapor-alice (started or not).
    pub fn create(tag: &str, start: bool) -> Guest {
        let name = format!("vt-guest-{}-{tag}", std::process::id());
        let out = manager_as(
            ALICE,
            "CreateVirtualMachine",
            &spec(&name, start).to_string(),
        );
        assert!(
            out.status.success(),
            "creating guest {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Guest::named(&name)
    }

    /// The guest with this (libvirt) name.
    pub fn named(name: &str) -> Guest {
        let uuid = virsh(&["domuuid", name]).trim().to_owned();
        let path = format!("{ROOT}/vm/{}", uuid.replace('-', "_"));
        Guest {
            name: name.to_owned(),
            uuid,
            path,
        }
    }

    /// A guest agent command's `return` value; `None` while the agent does
    /// not answer.
    pub fn agent(&self, cmd: &serde_json::Value) -> Option<serde_json::Value> {
        let out = Command::new("virsh")
            .args([
                "-c",
                "qemu:///system",
                "qemu-agent-command",
                "--timeout",
                "10",
                &self.name,
            ])
            .arg(cmd.to_string())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get("return").cloned()
    }

    /// Wait (bounded) until the guest agent answers: the guest has booted.
    /// QEMU under TCG occasionally dies early in boot (an assertion in
    /// its memory map code, about one boot in a dozen here): a guest found
    /// shut off before it answered is started again.
    pub fn wait_agent(&self) {
        assert!(
            self.agent_within(Duration::from_secs(300)),
            "guest {} never answered its agent",
            self.name
        );
    }

    /// [`Self::wait_agent`] for a guest's first boot: a boot that has not
    /// answered in four minutes is started over once (under TCG with
    /// several guests booting on two cores, a boot has been seen to hang).
    pub fn wait_first_boot(&self) {
        if self.agent_within(Duration::from_secs(240)) {
            return;
        }
        eprintln!(
            "guest {} did not boot in 4 minutes; booting it again",
            self.name
        );
        virsh_quiet(&["destroy", &self.name]);
        virsh_quiet(&["start", &self.name]);
        self.wait_agent();
    }

    /// Whether the agent answers within `limit` (a guest found shut off
    /// meanwhile is started again).
    fn agent_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.agent(&json!({"execute": "guest-ping"})).is_none() {
            if virsh(&["domstate", &self.name]).trim() == "shut off" {
                eprintln!(
                    "guest {} stopped while booting; starting it again",
                    self.name
                );
                virsh_quiet(&["start", &self.name]);
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        true
    }

    /// Run a program in the guest and return its exit code and stdout.
    pub fn exec(&self, path: &str, args: &[&str]) -> (i64, String) {
        let started = self
            .agent(&json!({"execute": "guest-exec", "arguments": {
                "path": path, "arg": args, "capture-output": true}}))
            .unwrap_or_else(|| panic!("guest-exec {path} failed in {}", self.name));
        let pid = started["pid"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = self
                .agent(&json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}))
                .unwrap();
            if st["exited"].as_bool() == Some(true) {
                let out = st["out-data"].as_str().unwrap_or("");
                let text = String::from_utf8_lossy(&vapor::base64::decode(out).unwrap_or_default())
                    .into_owned();
                return (st["exitcode"].as_i64().unwrap_or(-1), text);
            }
            assert!(
                Instant::now() < deadline,
                "{path} never finished in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

static SHARED: OnceLock<Guest> = OnceLock::new();

/// The guest every test of this binary shares: created by vapor-alice,
/// booted, its agent answering. Tests may add and remove devices (each its
/// own), read its console and statistics; none stops it.
pub async fn shared() -> &'static Guest {
    tokio::task::spawn_blocking(|| {
        SHARED.get_or_init(|| {
            // Gone when the test binary exits (the harness ends with exit(),
            // which runs atexit handlers), so later binaries run on an idle host.
            // SAFETY: registering a plain extern "C" function.
            unsafe { libc::atexit(remove_guests) };
            // Made stopped, given room for one more vCPU (so vCPUs can be
            // hot-added), then started, all as vapor-alice.
            let g = Guest::create("shared", false);
            let out = busctl_as(
                ALICE,
                &g.path,
                "Update",
                &["sa{sv}", r#"{"max_vcpus":3}"#, "0"],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let out = busctl_as(ALICE, &g.path, "Start", &[]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            g.wait_first_boot();
            g
        })
    })
    .await
    .unwrap()
}

/// Remove this binary's guests and their pools.
extern "C" fn remove_guests() {
    let prefix = format!("vt-guest-{}-", std::process::id());
    // Never panic here (it would abort the exiting process).
    let names = Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for n in names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(&prefix))
    {
        virsh_quiet(&["destroy", n]);
        undefine_all(n, true);
    }
    if let Some(p) = POOLS.get() {
        virsh_quiet(&["pool-destroy", &p.image_pool]);
        virsh_quiet(&["pool-destroy", &p.disk_pool]);
        let _ = std::fs::remove_dir_all(&p.disk_dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_linux_guest_boots_and_runs_its_cloud_init() {
    let g = shared().await;
    // cloud-init ran from the seed vapord made (on virtio-scsi: the cloud
    // kernel has no AHCI): its runcmd wrote the file, and the hostname is
    // the VM's name from the seed's meta-data.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (code, out) = g.exec("/bin/cat", &["/var/tmp/vapor-cloud-init"]);
        if code == 0 {
            assert_eq!(out.trim(), "ran");
            break;
        }
        assert!(Instant::now() < deadline, "cloud-init never ran its runcmd");
        std::thread::sleep(Duration::from_secs(2));
    }
    let host = g.agent(&json!({"execute": "guest-get-host-name"})).unwrap();
    assert_eq!(host["host-name"].as_str(), Some(g.name.as_str()));
}
