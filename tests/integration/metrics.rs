//! Live metrics: rates on the VM object, its ring of samples through
//! GetMetrics and `vaporctl metrics`, the host's load on the Manager.
//!
//! The test vapord reads statistics every second (`--stats-interval 1` in
//! `common.rs`), so rates move within a few seconds; nothing here asserts a
//! duration, only generous bounds against hanging.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zbus::OwnedVariant;

use crate::common::*;

/// A generous bound for a running guest's rates to show a write.
const RATE_WAIT: Duration = Duration::from_secs(180);

/// Makes the guest write 64 MiB to its disk (bypassing its page cache)
/// through its agent, again every few seconds, until dropped.
struct GuestWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GuestWriter {
    fn start(domain: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let domain = domain.to_owned();
        let cmd = r#"{"execute":"guest-exec","arguments":{"path":"/usr/bin/dd","arg":["if=/dev/urandom","of=/var/tmp/vapor-metrics-test","bs=1M","count=64","oflag=direct"]}}"#;
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                // A busy agent refuses now and then: the next round retries.
                virsh_quiet(&["qemu-agent-command", &domain, cmd]);
                for _ in 0..50 {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        GuestWriter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for GuestWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `t` property of a VM read as `user` with busctl.
fn u64_property_as(user: &str, path: &str, name: &str) -> u64 {
    let out = as_user(
        user,
        &[
            "busctl",
            "--system",
            "get-property",
            BUS_NAME,
            path,
            VM,
            name,
        ],
    );
    assert!(
        out.status.success(),
        "{user} reading {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text
        .trim()
        .strip_prefix("t ")
        .unwrap_or_else(|| panic!("{text}"));
    value.parse().unwrap()
}

/// `GetMetrics(seconds)` called as `user`: the samples as JSON arrays of
/// [time_ms, cpu_percent, memory_kib, disk_rd, disk_wr, net_rx, net_tx].
fn get_metrics_as(user: &str, path: &str, seconds: u32) -> Vec<Vec<serde_json::Value>> {
    let secs = seconds.to_string();
    let out = as_user(
        user,
        &[
            "busctl",
            "--system",
            "--json=short",
            "call",
            BUS_NAME,
            path,
            VM,
            "GetMetrics",
            "u",
            &secs,
        ],
    );
    assert!(
        out.status.success(),
        "{user} GetMetrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["type"], "a(tdttttt)");
    serde_json::from_value(reply["data"][0].clone()).unwrap()
}

#[tokio::test]
async fn a_guest_writing_to_its_disk_shows_in_its_rates_samples_and_vaporctl() {
    let g = crate::guest::shared().await;
    let conn = bus().await;
    let mut changes = properties_changed(&conn).await;
    let _writer = GuestWriter::start(&g.name);

    // The rate is announced by PropertiesChanged…
    let path = g.path.clone();
    wait_signal_within(&mut changes, RATE_WAIT, "DiskWriteBytesPerSec > 0", |m| {
        if m.header().path().map(|p| p.as_str()) != Some(path.as_str()) {
            return false;
        }
        type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);
        let Ok((iface, props, _)) = m.body().deserialize::<Changed>() else {
            return false;
        };
        iface == VM
            && props
                .get("DiskWriteBytesPerSec")
                .and_then(|v| u64::try_from(v).ok())
                .is_some_and(|r| r > 0)
    })
    .await;
    drop(changes);

    // …and a member of `vapor` reads it (the guest keeps writing).
    let deadline = Instant::now() + RATE_WAIT;
    while u64_property_as(ALICE, &g.path, "DiskWriteBytesPerSec") == 0 {
        assert!(
            Instant::now() < deadline,
            "DiskWriteBytesPerSec stayed 0 while the guest wrote"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(u64_property_as(ALICE, &g.path, "MemoryUsedKiB") > 0);

    // The ring: at least two samples, in time order, one showing the writes.
    let deadline = Instant::now() + RATE_WAIT;
    let samples = loop {
        let s = get_metrics_as(ALICE, &g.path, 0);
        if s.len() >= 2 && s.iter().any(|row| row[4].as_u64().unwrap_or(0) > 0) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "GetMetrics never held two samples with a write: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let times: Vec<u64> = samples.iter().map(|r| r[0].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "timestamps not increasing: {times:?}"
    );
    for row in &samples {
        assert_eq!(row.len(), 7, "{row:?}");
        let cpu = row[1].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&cpu), "CPU {cpu} out of 0–100");
    }

    // vaporctl: the samples as JSON, and the current values.
    let ctl = env!("CARGO_BIN_EXE_vaporctl");
    let out = as_user(ALICE, &[ctl, "metrics", &g.name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rows.len() >= 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["time_ms"].is_u64()
        && r["cpu_percent"].is_number()
        && r["disk_write_bytes_per_sec"].is_u64()));
    let out = as_user(ALICE, &[ctl, "metrics", &g.name, "--once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for label in [
        "CPU",
        "Memory",
        "Disk read",
        "Disk write",
        "Net rx",
        "Net tx",
    ] {
        assert!(text.contains(label), "{label} missing from:\n{text}");
    }
    let out = as_user(ALICE, &[ctl, "--json", "metrics", &g.name, "--once"]);
    let now: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(now["state"], "running");
    assert!(now["memory_used_kib"].as_u64().unwrap_or(0) > 0, "{now}");
}

#[tokio::test]
async fn a_shut_off_vm_shows_no_rates_and_no_samples_and_anyone_may_read_them() {
    let conn = bus().await;
    let d = TestDomain::define("metrics-off");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let props = get_all(&conn, &path).await.unwrap();
    assert_eq!(f64::try_from(&props["CpuPercent"]).unwrap(), 0.0);
    for name in [
        "MemoryUsedKiB",
        "DiskReadBytesPerSec",
        "DiskWriteBytesPerSec",
        "NetRxBytesPerSec",
        "NetTxBytesPerSec",
    ] {
        assert_eq!(u64::try_from(&props[name]).unwrap(), 0, "{name}");
    }
    // `read` is open to everyone, as for the other properties.
    for user in [ALICE, BOB] {
        assert!(get_metrics_as(user, &path, 0).is_empty());
        assert_eq!(u64_property_as(user, &path, "DiskWriteBytesPerSec"), 0);
    }
}

#[tokio::test]
async fn the_manager_shows_the_hosts_load() {
    let conn = bus().await;
    let p = zbus::Proxy::new(&conn, BUS_NAME, ROOT, "org.freedesktop.DBus.Properties")
        .await
        .unwrap();
    let get = |name: &'static str| {
        let p = p.clone();
        async move {
            let v: OwnedVariant = p.call("Get", &(MANAGER, name)).await.unwrap();
            v
        }
    };
    // Read on the first statistics interval after vapord connected.
    let deadline = Instant::now() + EVENT_WAIT;
    let total = loop {
        let total = u64::try_from(&get("HostMemoryTotalKiB").await).unwrap();
        if total > 0 {
            break total;
        }
        assert!(Instant::now() < deadline, "HostMemoryTotalKiB stayed 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let used = u64::try_from(&get("HostMemoryUsedKiB").await).unwrap();
    assert!(used > 0 && used <= total, "used {used} of {total} KiB");
    let cpu = f64::try_from(&get("HostCpuPercent").await).unwrap();
    assert!((0.0..=100.0).contains(&cpu), "HostCpuPercent {cpu}");
    // The same through busctl as a member of `vapor`.
    let out = as_user(
        ALICE,
        &[
            "busctl",
            "--system",
            "get-property",
            BUS_NAME,
            ROOT,
            MANAGER,
            "HostMemoryTotalKiB",
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("t "));
}
