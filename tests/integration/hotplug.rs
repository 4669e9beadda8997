//! Hotplug on a real running Linux guest (the shared one): a disk and a
//! network interface come and go as vapor-alice asks, the guest sees them,
//! and vapord's view follows. Media changes on a firmware-only VM.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::guest::{pools, shared, Guest};

fn call_as(user: &str, path: &str, method: &str, args: &[&str]) -> Result<String, String> {
    let out = busctl_as(user, path, method, args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The string of a `s "…"` busctl reply.
fn reply_string(out: &str) -> String {
    out.trim_start_matches("s ").trim_matches('"').to_owned()
}

/// Wait until `f` holds for the guest (bounded; the guest is slow under TCG).
fn guest_until(g: &Guest, what: &str, f: impl Fn(&Guest) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !f(g) {
        assert!(
            Instant::now() < deadline,
            "{what} never happened in {}",
            g.name
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn guest_block_devices(g: &Guest) -> String {
    g.exec("/bin/ls", &["/sys/block"]).1
}

/// An isolated network (no forward, no address: no traffic leaves the
/// bridge), gone on drop.
struct IsolatedNet(String);

impl IsolatedNet {
    fn new() -> Self {
        let name = unique_name("hpnet");
        let xml = format!("{}/{name}.xml", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(&xml, format!("<network><name>{name}</name></network>")).unwrap();
        virsh(&["net-create", &xml]);
        IsolatedNet(name)
    }
}

impl Drop for IsolatedNet {
    fn drop(&mut self) {
        virsh_quiet(&["net-destroy", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_gets_a_second_disk_and_nic_and_loses_them_again() {
    let g = shared().await;
    let conn = bus().await;
    let p = pools();

    // A new 64 MiB volume, made for the VM, live and in its definition.
    let disk = format!(r#"{{"pool":"{}","create":{{"size":"64M"}}}}"#, p.disk_pool);
    let target =
        reply_string(&call_as(ALICE, &g.path, "AttachDisk", &["sa{sv}", &disk, "0"]).unwrap());
    assert_eq!(target, "vdb");
    assert!(virsh(&["domblklist", &g.name]).contains("vdb"));
    assert!(virsh(&["dumpxml", "--inactive", &g.name]).contains("dev='vdb'"));
    let volume = format!("{}/{}-vdb.qcow2", p.disk_dir, g.name);
    assert!(std::path::Path::new(&volume).exists(), "{volume}");
    guest_until(g, "the guest seeing vdb", |g| {
        guest_block_devices(g).contains("vdb")
    });
    // Describe shows it (the same way as a virsh change would).
    let out = call_as(ALICE, &g.path, "Describe", &[]).unwrap();
    assert!(out.contains("vdb"), "{out}");
    // Someone else may not touch it.
    let err = call_as(BOB, &g.path, "DetachDisk", &["sa{sv}", "vdb", "0"]).unwrap_err();
    assert!(is_refusal(&err), "{err}");

    // Grown online: the guest sees the new size (512-byte sectors).
    call_as(
        ALICE,
        &g.path,
        "ResizeDisk",
        &["ssa{sv}", "vdb", "128M", "0"],
    )
    .unwrap();
    guest_until(g, "vdb growing to 128 MiB", |g| {
        g.exec("/bin/cat", &["/sys/block/vdb/size"]).1.trim() == "262144"
    });
    let err = call_as(ALICE, &g.path, "ResizeDisk", &["ssa{sv}", "vdb", "1M", "0"]).unwrap_err();
    assert!(err.contains("disks only grow"), "{err}");

    // A NIC on an isolated network, its link cut and restored, then gone.
    let net = IsolatedNet::new();
    let nic = format!(r#"{{"network":"{}"}}"#, net.0);
    let mac =
        reply_string(&call_as(ALICE, &g.path, "AttachInterface", &["sa{sv}", &nic, "0"]).unwrap());
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert!(virsh(&["domiflist", &g.name]).contains(&mac));
    guest_until(g, "the guest seeing the new NIC", |g| {
        g.exec("/bin/sh", &["-c", "cat /sys/class/net/*/address"])
            .1
            .contains(&mac)
    });
    call_as(
        ALICE,
        &g.path,
        "SetInterfaceLink",
        &["sba{sv}", &mac, "false", "0"],
    )
    .unwrap();
    assert!(virsh(&["domif-getlink", &g.name, &mac]).contains("down"));
    call_as(
        ALICE,
        &g.path,
        "SetInterfaceLink",
        &["sba{sv}", &mac, "true", "0"],
    )
    .unwrap();
    assert!(virsh(&["domif-getlink", &g.name, &mac]).contains("up"));
    call_as(ALICE, &g.path, "DetachInterface", &["sa{sv}", &mac, "0"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while virsh(&["domiflist", &g.name]).contains(&mac) {
        assert!(Instant::now() < deadline, "the NIC never went away");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!virsh(&["dumpxml", "--inactive", &g.name]).contains(&mac));

    // The disk goes, and with remove_storage its volume too (vapord made it
    // for this VM and nothing else uses it).
    let out = call_as(
        ALICE,
        &g.path,
        "DetachDisk",
        &["sa{sv}", "vdb", "1", "remove_storage", "b", "true"],
    )
    .unwrap();
    assert!(out.contains(&volume), "{out}");
    assert!(!std::path::Path::new(&volume).exists());
    assert!(!virsh(&["domblklist", &g.name]).contains("vdb"));
    assert!(!virsh(&["dumpxml", "--inactive", &g.name]).contains("dev='vdb'"));
    guest_until(g, "vdb leaving the guest", |g| {
        !guest_block_devices(g).contains("vdb")
    });
    drop(conn);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_gets_a_vcpu_and_less_memory_live_and_persistently() {
    let g = shared().await;
    let conn = bus().await;
    let out = call_as(
        ALICE,
        &g.path,
        "Update",
        &["sa{sv}", r#"{"vcpus":3,"memory":768}"#, "0"],
    )
    .unwrap();
    assert!(
        out.ends_with(" 0"),
        "nothing should wait for a restart: {out}"
    );
    // Live: the guest has a third CPU and gives memory back to the balloon.
    guest_until(g, "a third vCPU", |g| {
        g.exec("/bin/cat", &["/sys/devices/system/cpu/present"])
            .1
            .trim()
            == "0-2"
    });
    guest_until(g, "the balloon shrinking the guest", |g| {
        let info = g.exec("/bin/cat", &["/proc/meminfo"]).1;
        let total: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(u64::MAX);
        total <= 768 * 1024
    });
    assert_eq!(
        virsh(&["vcpucount", "--live", "--current", &g.name]).trim(),
        "3"
    );
    // And in the definition, for the next start.
    let xml = virsh(&["dumpxml", "--inactive", &g.name]);
    assert!(xml.contains("<vcpu placement='static'>3</vcpu>"), "{xml}");
    assert!(
        xml.contains("<currentMemory unit='KiB'>786432</currentMemory>"),
        "{xml}"
    );
    // The properties follow (vCPUs with the next statistics reading).
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let all = get_all(&conn, &g.path).await.unwrap();
        if u32::try_from(all["Vcpus"].clone()).unwrap() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "Vcpus never became 3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn bad_device_requests_name_the_field() {
    let conn = bus().await;
    let d = TestDomain::define("hpbad");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    for (method, args, expect) in [
        (
            "AttachDisk",
            vec!["sa{sv}", r#"{"path":"relative"}"#, "0"],
            "disk.path",
        ),
        (
            "AttachDisk",
            vec!["sa{sv}", r#"{"pool":"nope","volume":"x"}"#, "0"],
            "disk.pool",
        ),
        (
            "AttachDisk",
            vec!["sa{sv}", r#"{"path":"/etc/shadow"}"#, "0"],
            "",
        ),
        (
            "AttachDisk",
            vec![
                "sa{sv}",
                r#"{"pool":"p","volume":"v"}"#,
                "1",
                "live",
                "b",
                "true",
            ],
            "live: the VM is not running",
        ),
        (
            "AttachInterface",
            vec![
                "sa{sv}",
                r#"{"network":"n","mac":"01:00:00:00:00:01"}"#,
                "0",
            ],
            "interface.mac",
        ),
        ("DetachInterface", vec!["sa{sv}", "nonsense", "0"], "mac"),
        ("DetachDisk", vec!["sa{sv}", "vdz", "0"], "vdz"),
    ] {
        let err = call_as(ALICE, &path, method, &args).unwrap_err();
        assert!(err.contains(expect), "{method} {args:?}: {err}");
    }
}

#[tokio::test]
async fn cdrom_media_is_inserted_changed_and_ejected() {
    let conn = bus().await;
    let pool = TestPool::new("media");
    let iso_a = pool.volume("a.iso", "raw");
    let iso_b = pool.volume("b.iso", "raw");
    pool.refresh();
    let d = TestDomain::define_with(
        "media",
        "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>",
    );
    let path = d.path();
    wait_for_object(&conn, &path).await;
    // vapord knows the pool's volumes through events; wait for them.
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let media = format!(r#"{{"path":"{iso_a}"}}"#);
        match call_as(
            ALICE,
            &path,
            "ChangeMedia",
            &["ssa{sv}", "hdc", &media, "0"],
        ) {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "inserting media failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(virsh(&["domblklist", &d.name]).contains(&iso_a));
    vm_call(&conn, &path, "Start").await.unwrap();
    let media = format!(r#"{{"pool":"{}","volume":"b.iso"}}"#, pool.name);
    call_as(
        ALICE,
        &path,
        "ChangeMedia",
        &["ssa{sv}", "hdc", &media, "0"],
    )
    .unwrap();
    assert!(virsh(&["domblklist", &d.name]).contains(&iso_b), "live");
    assert!(
        virsh(&["dumpxml", "--inactive", &d.name]).contains(&iso_b),
        "config"
    );
    call_as(ALICE, &path, "ChangeMedia", &["ssa{sv}", "hdc", "", "0"]).unwrap();
    assert!(!virsh(&["domblklist", &d.name]).contains(".iso"));
    let err = call_as(BOB, &path, "ChangeMedia", &["ssa{sv}", "hdc", "", "0"]).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    vm_call(&conn, &path, "ForceStop").await.unwrap();
}

#[tokio::test]
async fn an_image_backed_by_a_host_file_needs_storage_host_path_to_be_attached() {
    let conn = bus().await;
    let pool = TestPool::new("hpesc");
    // A qcow2 header naming a host file: what a guest could write into its
    // own raw disk.
    let evil = format!("{}/evil.qcow2", pool.dir);
    let out = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/etc/hostname",
            &evil,
            "1M",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pool.refresh();
    let d = TestDomain::define("hpesc");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let disk = format!(r#"{{"pool":"{}","volume":"evil.qcow2"}}"#, pool.name);
    let deadline = Instant::now() + EVENT_WAIT;
    let err = loop {
        let err = call_as(ALICE, &path, "AttachDisk", &["sa{sv}", &disk, "0"]).unwrap_err();
        // vapord learns of the new volume through the pool's events.
        if !err.contains("has no volume named") || Instant::now() > deadline {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        err.contains("storage-host-path") && err.contains("/etc/hostname"),
        "{err}"
    );
    assert!(!virsh(&["dumpxml", "--inactive", &d.name]).contains("evil.qcow2"));
}

#[tokio::test]
async fn a_volume_another_vm_writes_is_given_only_read_only() {
    let conn = bus().await;
    let pool = TestPool::new("hpshared");
    let vol = pool.volume("data.qcow2", "qcow2");
    pool.refresh();
    let owner = TestDomain::define_with(
        "hpowner",
        &format!("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{vol}'/><target dev='vda' bus='virtio'/></disk>"),
    );
    let other = TestDomain::define("hpother");
    wait_for_object(&conn, &owner.path()).await;
    wait_for_object(&conn, &other.path()).await;
    let disk = format!(r#"{{"pool":"{}","volume":"data.qcow2"}}"#, pool.name);
    // vapord learns who uses the volume through events; wait for it.
    let deadline = Instant::now() + EVENT_WAIT;
    let err = loop {
        match call_as(ALICE, &other.path(), "AttachDisk", &["sa{sv}", &disk, "0"]) {
            Err(e) if e.contains("in use by VM") => break e,
            Err(e) => assert!(Instant::now() < deadline, "never refused as in use: {e}"),
            Ok(out) => panic!("a volume another VM writes was attached writable: {out}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(err.contains(&owner.name), "{err}");
    let ro = format!(
        r#"{{"pool":"{}","volume":"data.qcow2","readonly":true}}"#,
        pool.name
    );
    call_as(ALICE, &other.path(), "AttachDisk", &["sa{sv}", &ro, "0"]).unwrap();
    assert!(virsh(&["dumpxml", "--inactive", &other.name]).contains("<readonly/>"));
}
