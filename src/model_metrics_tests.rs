//! The model derives rates in one place: from the periodic statistics
//! readings, with the record's properties and the ring's sample from the
//! same reading; readings in between keep them; a stop clears them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::*;
use crate::libvirt::records::IoCounters;

const UUID: &str = "6c7a3b1e-0000-4000-8000-0000000000aa";

fn model() -> Arc<Model> {
    let (hv, _events) = Hypervisor::new("test:///default");
    Model::new(hv).0
}

/// A running 1-vCPU VM's reading: CPU time and bytes written so far.
fn running(cpu_ns: u64, written: u64) -> DomainRecord {
    DomainRecord {
        uuid: UUID.into(),
        name: "vm".into(),
        state: DomainState::Running,
        state_reason: "booted",
        vcpus: 1,
        cpu_time_ns: cpu_ns,
        memory_rss_kib: 4096,
        io: IoCounters {
            disk_read_bytes: Some(0),
            disk_write_bytes: Some(written),
            net_rx_bytes: Some(0),
            net_tx_bytes: Some(0),
        },
        ..DomainRecord::default()
    }
}

fn reading(m: &Model, rec: DomainRecord, at: Instant, unix_ms: u64) {
    let snap = Snapshot {
        records: vec![rec],
        autostart: HashSet::new(),
        complete: false,
        read_at: at,
        read_unix_ms: unix_ms,
    };
    m.apply_snapshot(snap, m.ticket());
}

#[test]
fn properties_and_samples_come_from_the_same_reading_and_stop_with_the_vm() {
    let m = model();
    let t0 = Instant::now();
    reading(&m, running(1_000_000_000, 0), t0, 1_000);
    assert_eq!(m.get(UUID).unwrap().rates, Rates::default());
    assert!(m.metrics(UUID, 0).is_empty());

    // 2.5 s of CPU and 10 MiB written in 5 s.
    let at = t0 + Duration::from_secs(5);
    reading(&m, running(3_500_000_000, 10 << 20), at, 6_000);
    let rates = m.get(UUID).unwrap().rates;
    assert_eq!(rates.cpu_hundredths, 5000);
    assert_eq!(rates.disk_write_bytes_per_sec, 2 << 20);
    let samples = m.metrics(UUID, 0);
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].rates, rates);
    assert_eq!(
        (samples[0].unix_ms, samples[0].memory_used_kib),
        (6_000, 4096)
    );

    // A reading after an event keeps the rates while the VM runs…
    m.note_state(UUID, m.ticket(), Some((DomainState::Paused, "user")));
    assert_eq!(m.get(UUID).unwrap().rates, rates);
    // …and a stop clears them; the samples stay until the VM is gone.
    m.note_state(UUID, m.ticket(), Some((DomainState::ShutOff, "destroyed")));
    assert_eq!(m.get(UUID).unwrap().rates, Rates::default());
    assert_eq!(m.metrics(UUID, 0).len(), 1);

    // Started again: a first reading (its counters started over).
    let later = t0 + Duration::from_secs(60);
    reading(&m, running(2_000_000, 4096), later, 60_000);
    assert_eq!(m.get(UUID).unwrap().rates, Rates::default());

    m.note_state(UUID, m.ticket(), None);
    assert!(m.get(UUID).is_none());
    assert!(m.metrics(UUID, 0).is_empty());
}
