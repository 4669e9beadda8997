use std::time::{Duration, Instant};

use super::*;
use crate::libvirt::records::IoCounters;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A reading `at` seconds after `t0` of a 2-vCPU VM.
fn reading(t0: Instant, at: u64, cpu_ns: u64, io: [u64; 4]) -> Reading {
    Reading {
        at: t0 + secs(at),
        vcpus: 2,
        cpu_time_ns: Some(cpu_ns),
        io: IoCounters {
            disk_read_bytes: Some(io[0]),
            disk_write_bytes: Some(io[1]),
            net_rx_bytes: Some(io[2]),
            net_tx_bytes: Some(io[3]),
        },
    }
}

#[test]
fn counters_per_second_over_the_elapsed_time() {
    let t0 = Instant::now();
    assert_eq!(per_second(1000, t0, 11_000, t0 + secs(5)), 2000);
    assert_eq!(
        per_second(0, t0, 1500, t0 + Duration::from_millis(500)),
        3000
    );
    assert_eq!(per_second(5, t0, 5, t0 + secs(1)), 0);
}

#[test]
fn a_counter_that_went_backwards_or_no_time_gives_zero() {
    let t0 = Instant::now();
    assert_eq!(per_second(10_000, t0, 10, t0 + secs(5)), 0);
    assert_eq!(per_second(0, t0, 10, t0), 0);
    // Timestamps out of order: no time passed.
    assert_eq!(per_second(0, t0 + secs(1), 10, t0), 0);
    assert_eq!(cpu_hundredths(9_000_000_000, t0, 1, t0 + secs(5), 1), 0);
    assert_eq!(cpu_hundredths(0, t0, 1, t0, 1), 0);
}

#[test]
fn cpu_is_a_share_of_the_vms_vcpus() {
    let t0 = Instant::now();
    let s = 1_000_000_000u64;
    // One busy vCPU of two, for 10 s: 50 %.
    assert_eq!(cpu_hundredths(0, t0, 10 * s, t0 + secs(10), 2), 5000);
    // A quarter of one vCPU.
    assert_eq!(cpu_hundredths(s, t0, s + s / 4, t0 + secs(1), 1), 2500);
    // QEMU's own threads can take it past 100 %: capped.
    assert_eq!(cpu_hundredths(0, t0, 3 * s, t0 + secs(1), 2), 10_000);
    // No vCPU count known: one.
    assert_eq!(cpu_hundredths(0, t0, s / 2, t0 + secs(1), 0), 5000);
    // Rounded to the nearest hundredth.
    assert_eq!(cpu_hundredths(0, t0, 123_456, t0 + secs(1), 1), 1);
}

#[test]
fn host_cpu_is_busy_time_over_all_time() {
    let t = |busy: u64, idle: u64| HostCpuTimes {
        kernel_ns: busy / 2,
        user_ns: busy - busy / 2,
        idle_ns: idle,
        iowait_ns: 0,
    };
    assert_eq!(host_cpu_hundredths(&t(100, 900), &t(400, 1600)), 3000);
    assert_eq!(host_cpu_hundredths(&t(100, 900), &t(100, 900)), 0);
    // Counters reset (host rebooted under a remote connection): 0.
    assert_eq!(host_cpu_hundredths(&t(500, 900), &t(100, 100)), 0);
}

#[test]
fn the_first_reading_rates_zero_and_the_second_rates_the_interval() {
    let t0 = Instant::now();
    let (first, prev) = advance(None, &reading(t0, 0, 1_000_000_000, [0, 0, 0, 0]));
    assert_eq!(first, Rates::default());
    let (r, _) = advance(
        Some(&prev),
        &reading(t0, 5, 6_000_000_000, [5000, 10_000, 500, 50]),
    );
    assert_eq!(
        r,
        Rates {
            cpu_hundredths: 5000,
            disk_read_bytes_per_sec: 1000,
            disk_write_bytes_per_sec: 2000,
            net_rx_bytes_per_sec: 100,
            net_tx_bytes_per_sec: 10,
        }
    );
}

#[test]
fn a_restarted_vms_smaller_counters_rate_zero_not_garbage() {
    let t0 = Instant::now();
    let (_, prev) = advance(None, &reading(t0, 0, 90_000_000_000, [1 << 30; 4]));
    let (r, prev) = advance(Some(&prev), &reading(t0, 5, 1_000_000, [4096; 4]));
    assert_eq!(r, Rates::default());
    // …and the next interval rates from the new counters.
    let (r, _) = advance(Some(&prev), &reading(t0, 10, 1_000_000, [4096 + 5120; 4]));
    assert_eq!(r.disk_read_bytes_per_sec, 1024);
}

#[test]
fn a_counter_missing_from_a_reading_keeps_its_rate_once_then_spans_both_intervals() {
    let t0 = Instant::now();
    let (_, p) = advance(None, &reading(t0, 0, 0, [0; 4]));
    let (r, p) = advance(Some(&p), &reading(t0, 5, 0, [5000; 4]));
    assert_eq!(r.disk_read_bytes_per_sec, 1000);
    let mut busy = reading(t0, 10, 0, [0; 4]);
    busy.io.disk_read_bytes = None;
    busy.io.disk_write_bytes = Some(10_000);
    let (r, p) = advance(Some(&p), &busy);
    // Carried over; the counter read this time is rated.
    assert_eq!(r.disk_read_bytes_per_sec, 1000);
    assert_eq!(r.disk_write_bytes_per_sec, 1000);
    // Missing twice in a row: 0 rather than a stale figure.
    let mut still = busy;
    still.at = t0 + secs(15);
    let (r, p) = advance(Some(&p), &still);
    assert_eq!(r.disk_read_bytes_per_sec, 0);
    // Back: rated from the last value it had (t = 5 s), over 15 s.
    let (r, _) = advance(Some(&p), &reading(t0, 20, 0, [20_000, 10_000, 0, 0]));
    assert_eq!(r.disk_read_bytes_per_sec, 1000);
}

fn sample(unix_ms: u64) -> Sample {
    Sample {
        unix_ms,
        memory_used_kib: unix_ms,
        rates: Rates::default(),
    }
}

#[test]
fn a_ring_keeps_the_newest_samples_in_order() {
    let mut ring = Ring::new(3);
    assert!(ring.is_empty());
    for t in 1..=5 {
        ring.push(sample(t));
    }
    assert_eq!(ring.len(), 3);
    let times: Vec<u64> = ring.since(0).iter().map(|s| s.unix_ms).collect();
    assert_eq!(times, [3, 4, 5]);
    assert_eq!(ring.since(4).len(), 2);
    ring.set_capacity(1);
    assert_eq!(ring.since(0), [sample(5)]);
    assert_eq!(Ring::new(0).capacity, 1);
}

#[test]
fn a_ring_holds_an_hour_at_the_interval() {
    assert_eq!(ring_capacity(secs(5)), 721);
    assert_eq!(ring_capacity(secs(1)), 3601);
    assert_eq!(ring_capacity(secs(7)), 516);
    assert_eq!(ring_capacity(secs(7200)), 2);
    assert_eq!(ring_capacity(Duration::ZERO), 3601);
}

#[test]
fn samples_start_with_the_second_reading_and_answer_the_last_seconds() {
    let t0 = Instant::now();
    let mut m = Metrics::new(secs(5));
    let base = 1_700_000_000_000u64;
    let rates = m.observe("vm", &reading(t0, 0, 0, [0; 4]), 100, base);
    assert_eq!(rates, Rates::default());
    assert!(m.samples("vm", 0, base).is_empty());
    for i in 1..=4u64 {
        m.observe(
            "vm",
            &reading(t0, 5 * i, 0, [1000 * i; 4]),
            100 + i,
            base + 5000 * i,
        );
    }
    let all = m.samples("vm", 0, base + 20_000);
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].unix_ms < w[1].unix_ms));
    assert_eq!(all[3].memory_used_kib, 104);
    assert_eq!(all[3].rates.disk_read_bytes_per_sec, 200);
    // The last 10 s: the samples at 10, 15 and 20 s.
    assert_eq!(m.samples("vm", 10, base + 20_000).len(), 3);
    // More than the ring holds: all of it.
    assert_eq!(m.samples("vm", u32::MAX, base + 20_000).len(), 4);
    assert!(m.samples("other", 0, base).is_empty());
}

#[test]
fn a_reading_too_soon_after_the_last_changes_nothing() {
    let t0 = Instant::now();
    let mut m = Metrics::new(secs(5));
    m.observe("vm", &reading(t0, 0, 0, [0; 4]), 1, 0);
    let r = m.observe("vm", &reading(t0, 5, 0, [5000; 4]), 1, 5000);
    let mut soon = reading(t0, 5, 0, [9000; 4]);
    soon.at += Duration::from_millis(20);
    assert_eq!(m.observe("vm", &soon, 1, 5020), r);
    assert_eq!(m.samples("vm", 0, 6000).len(), 1);
}

#[test]
fn a_stop_restarts_the_rates_and_keeps_the_samples_until_undefined() {
    let t0 = Instant::now();
    let mut m = Metrics::new(secs(5));
    m.observe("vm", &reading(t0, 0, 0, [0; 4]), 1, 0);
    m.observe("vm", &reading(t0, 5, 0, [5000; 4]), 1, 5000);
    m.stopped("vm");
    // Started again: a first reading, whatever its counters.
    let r = m.observe("vm", &reading(t0, 60, 0, [9_999_999; 4]), 1, 60_000);
    assert_eq!(r, Rates::default());
    assert_eq!(m.samples("vm", 0, 60_000).len(), 1);
    m.retain(|uuid| uuid != "vm");
    assert!(m.samples("vm", 0, 60_000).is_empty());
    m.observe("vm", &reading(t0, 65, 0, [0; 4]), 1, 65_000);
    m.forget("vm");
    assert!(m.samples("vm", 0, 65_000).is_empty());
}

#[test]
fn a_shorter_interval_keeps_more_samples_and_a_longer_one_fewer() {
    let t0 = Instant::now();
    let mut m = Metrics::new(secs(1800));
    for i in 0..5u64 {
        m.observe("vm", &reading(t0, 1800 * i, 0, [0; 4]), 1, i);
    }
    // ceil(3600 / 1800) + 1 = 3 samples.
    assert_eq!(m.samples("vm", 0, 10).len(), 3);
    m.set_interval(secs(3600));
    assert_eq!(m.samples("vm", 0, 10).len(), 2);
}

#[test]
fn host_load_keeps_what_libvirt_could_not_tell() {
    let mut h = HostTracker::default();
    let cpu = |busy: u64, idle: u64| HostCpuTimes {
        kernel_ns: 0,
        user_ns: busy,
        idle_ns: idle,
        iowait_ns: 0,
    };
    let mem = HostMemory {
        total_kib: 1000,
        free_kib: 400,
        buffers_kib: 0,
        cached_kib: 100,
    };
    let first = h.observe(Some(cpu(0, 0)), Some(mem));
    assert_eq!(
        first,
        HostLoad {
            cpu_hundredths: 0,
            memory_total_kib: 1000,
            memory_used_kib: 500,
        }
    );
    let second = h.observe(Some(cpu(25, 75)), None);
    assert_eq!(second.cpu_hundredths, 2500);
    assert_eq!(second.memory_used_kib, 500);
    assert_eq!(second.cpu_percent(), 25.0);
    assert_eq!(h.observe(None, None), second);
}
