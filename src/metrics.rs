//! Live metrics: the rates a running VM's statistics readings yield, the
//! ring of samples kept per VM (what `GetMetrics` answers from, so a chart
//! takes one call), and the host's load.
//!
//! Pure data and arithmetic: no libvirt call, no bus, no clock. The model
//! feeds it the periodic bulk readings with the time they were taken
//! (`crate::model`); only those readings move rates, so every property and
//! every sample of one interval come from the same reading.
//!
//! Memory: a sample is 56 bytes; a ring holds at most an hour of them
//! (721 at the default 5 s interval, about 40 KiB per VM) and grows only
//! while its VM runs. A VM's ring survives a stop (its last hour stays
//! readable, e.g. after a crash) and is dropped when the VM is undefined.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::libvirt::node::{HostCpuTimes, HostMemory};
use crate::libvirt::records::{DomainRecord, Rates};

/// How far back each VM's ring reaches.
pub const HISTORY: Duration = Duration::from_secs(3600);

/// Per second, from two readings of a cumulative counter. A counter that
/// went backwards (the VM restarted, a disk was detached) gives 0, and so
/// does a span of no time.
pub fn per_second(prev: u64, prev_at: Instant, cur: u64, cur_at: Instant) -> u64 {
    let span = cur_at.saturating_duration_since(prev_at).as_nanos();
    if cur < prev || span == 0 {
        return 0;
    }
    let rate = u128::from(cur - prev) * 1_000_000_000 / span;
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// CPU use in hundredths of a percent of `vcpus` CPUs, from two readings
/// of cumulative CPU time (ns), rounded. Capped at 100 %: libvirt's CPU
/// time includes QEMU's own threads besides the vCPUs. A counter that went
/// backwards, or a span of no time, gives 0.
pub fn cpu_hundredths(
    prev_ns: u64,
    prev_at: Instant,
    cur_ns: u64,
    cur_at: Instant,
    vcpus: u32,
) -> u32 {
    let span = cur_at.saturating_duration_since(prev_at).as_nanos();
    if cur_ns < prev_ns || span == 0 {
        return 0;
    }
    let capacity = span * u128::from(vcpus.max(1));
    let h = (u128::from(cur_ns - prev_ns) * 10_000 + capacity / 2) / capacity;
    h.min(10_000) as u32
}

/// The host's CPU use between two readings, in hundredths of a percent of
/// all its CPUs (busy time over all time); 0 when the counters went
/// backwards or no time passed.
pub fn host_cpu_hundredths(prev: &HostCpuTimes, cur: &HostCpuTimes) -> u32 {
    let busy = cur.busy_ns().checked_sub(prev.busy_ns());
    let total = cur.total_ns().checked_sub(prev.total_ns());
    match (busy, total) {
        (Some(b), Some(t)) if t > 0 => {
            let (b, t) = (u128::from(b), u128::from(t));
            ((b * 10_000 + t / 2) / t).min(10_000) as u32
        }
        _ => 0,
    }
}

/// The counters of a reading, in the order of [`Rates`]' fields.
const COUNTERS: usize = 5;
const CPU: usize = 0;

/// One statistics reading of a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// When it was read (monotonic).
    pub at: Instant,
    /// The VM's vCPUs, to express CPU time as a share of them.
    pub vcpus: u32,
    /// Cumulative CPU time, ns; `None` when the reading lacks it.
    pub cpu_time_ns: Option<u64>,
    pub io: crate::libvirt::records::IoCounters,
}

impl Reading {
    /// The reading a record holds, taken at `at`.
    pub fn of(rec: &DomainRecord, at: Instant) -> Self {
        Reading {
            at,
            vcpus: rec.vcpus,
            // A running VM has used some CPU time: 0 means "not read".
            cpu_time_ns: (rec.cpu_time_ns > 0).then_some(rec.cpu_time_ns),
            io: rec.io,
        }
    }

    fn counters(&self) -> [Option<u64>; COUNTERS] {
        [
            self.cpu_time_ns,
            self.io.disk_read_bytes,
            self.io.disk_write_bytes,
            self.io.net_rx_bytes,
            self.io.net_tx_bytes,
        ]
    }
}

fn rates_to_array(r: &Rates) -> [u64; COUNTERS] {
    [
        u64::from(r.cpu_hundredths),
        r.disk_read_bytes_per_sec,
        r.disk_write_bytes_per_sec,
        r.net_rx_bytes_per_sec,
        r.net_tx_bytes_per_sec,
    ]
}

fn rates_from_array(a: [u64; COUNTERS]) -> Rates {
    Rates {
        cpu_hundredths: u32::try_from(a[CPU]).unwrap_or(10_000),
        disk_read_bytes_per_sec: a[1],
        disk_write_bytes_per_sec: a[2],
        net_rx_bytes_per_sec: a[3],
        net_tx_bytes_per_sec: a[4],
    }
}

/// What the next reading of a VM is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    /// When the last reading was taken.
    pub at: Instant,
    /// Each counter's last known value and when it was read.
    last: [Option<(u64, Instant)>; COUNTERS],
    /// Which rates were carried over from the interval before.
    carried: [bool; COUNTERS],
    /// The rates the last reading yielded.
    pub rates: Rates,
}

/// The rates from the previous reading to `cur`, and what the reading after
/// `cur` is compared with. A counter read for the first time rates 0. A
/// counter `cur` lacks keeps its rate for one interval (then 0) and its last
/// value, so the next reading that has it spans both intervals.
pub fn advance(prev: Option<&Previous>, cur: &Reading) -> (Rates, Previous) {
    let mut next = prev.copied().unwrap_or(Previous {
        at: cur.at,
        last: [None; COUNTERS],
        carried: [false; COUNTERS],
        rates: Rates::default(),
    });
    let before = rates_to_array(&next.rates);
    let mut rates = [0u64; COUNTERS];
    for (i, value) in cur.counters().into_iter().enumerate() {
        let Some(v) = value else {
            rates[i] = if next.carried[i] { 0 } else { before[i] };
            next.carried[i] = true;
            continue;
        };
        if let Some((p, p_at)) = next.last[i] {
            rates[i] = if i == CPU {
                u64::from(cpu_hundredths(p, p_at, v, cur.at, cur.vcpus))
            } else {
                per_second(p, p_at, v, cur.at)
            };
        }
        next.last[i] = Some((v, cur.at));
        next.carried[i] = false;
    }
    next.at = cur.at;
    next.rates = rates_from_array(rates);
    (next.rates, next)
}

/// One point of a VM's chart: the rates over the interval ending at
/// `unix_ms`, and the memory used then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub memory_used_kib: u64,
    pub rates: Rates,
}

/// The last `capacity` samples of one VM, oldest first.
#[derive(Debug, Clone)]
pub struct Ring {
    capacity: usize,
    samples: VecDeque<Sample>,
}

impl Ring {
    /// An empty ring (at least one sample fits).
    pub fn new(capacity: usize) -> Self {
        Ring {
            capacity: capacity.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Add the newest sample, dropping the oldest when full.
    pub fn push(&mut self, s: Sample) {
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Keep at most `capacity` samples from now on (the newest ones).
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples taken at or after `since_ms`, oldest first.
    pub fn since(&self, since_ms: u64) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.unix_ms >= since_ms)
            .copied()
            .collect()
    }
}

/// How many samples cover [`HISTORY`] at `interval`: ceil(3600 s /
/// interval) + 1, so the oldest sample's interval is inside the hour too.
/// Intervals under a second (or none: statistics off) count as one second.
pub fn ring_capacity(interval: Duration) -> usize {
    let ms = interval.as_millis().max(1000);
    usize::try_from(HISTORY.as_millis().div_ceil(ms) + 1).unwrap_or(usize::MAX)
}

/// One VM's rate bookkeeping and samples.
#[derive(Debug)]
struct Series {
    previous: Option<Previous>,
    ring: Ring,
}

/// The live metrics of every VM that ran since vapord started (or since it
/// was defined).
#[derive(Debug)]
pub struct Metrics {
    interval: Duration,
    vms: HashMap<String, Series>,
}

impl Metrics {
    /// Bookkeeping for readings every `interval`.
    pub fn new(interval: Duration) -> Self {
        Metrics {
            interval,
            vms: HashMap::new(),
        }
    }

    /// Readings come every `interval` from now on: rings are resized.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
        let capacity = ring_capacity(interval);
        for s in self.vms.values_mut() {
            s.ring.set_capacity(capacity);
        }
    }

    /// A statistics reading of a running VM taken at `unix_ms`: its rates
    /// and, from its second reading on, a sample in its ring. A reading
    /// less than half an interval after the previous one (the first
    /// periodic reading right after connecting) is too short to rate: it
    /// changes nothing and yields the previous rates.
    pub fn observe(
        &mut self,
        uuid: &str,
        reading: &Reading,
        memory_used_kib: u64,
        unix_ms: u64,
    ) -> Rates {
        let series = match self.vms.get_mut(uuid) {
            Some(s) => s,
            None => self.vms.entry(uuid.to_owned()).or_insert(Series {
                previous: None,
                ring: Ring::new(ring_capacity(self.interval)),
            }),
        };
        if let Some(p) = &series.previous {
            if reading.at.saturating_duration_since(p.at) < self.interval / 2 {
                return p.rates;
            }
        }
        let first = series.previous.is_none();
        let (rates, next) = advance(series.previous.as_ref(), reading);
        series.previous = Some(next);
        if !first {
            series.ring.push(Sample {
                unix_ms,
                memory_used_kib,
                rates,
            });
        }
        rates
    }

    /// The VM stopped: its next reading is a first one (its counters start
    /// over); its samples stay.
    pub fn stopped(&mut self, uuid: &str) {
        if let Some(s) = self.vms.get_mut(uuid) {
            s.previous = None;
        }
    }

    /// The VM is gone (undefined, or a transient one stopped).
    pub fn forget(&mut self, uuid: &str) {
        self.vms.remove(uuid);
    }

    /// Keep only the VMs `keep` says still exist.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.vms.retain(|uuid, _| keep(uuid));
    }

    /// The samples of the last `seconds` before `now_ms` (0: every sample
    /// the ring holds), oldest first; none for a VM never seen running.
    pub fn samples(&self, uuid: &str, seconds: u32, now_ms: u64) -> Vec<Sample> {
        let Some(s) = self.vms.get(uuid) else {
            return Vec::new();
        };
        let since = match seconds {
            0 => 0,
            s => now_ms.saturating_sub(u64::from(s) * 1000),
        };
        s.ring.since(since)
    }
}

/// The host's load, as the Manager shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLoad {
    /// CPU use over the last interval, hundredths of a percent of all CPUs.
    pub cpu_hundredths: u32,
    pub memory_total_kib: u64,
    /// Memory neither free nor cache nor buffers.
    pub memory_used_kib: u64,
}

impl HostLoad {
    /// CPU use in percent of all host CPUs (0–100).
    pub fn cpu_percent(&self) -> f64 {
        f64::from(self.cpu_hundredths) / 100.0
    }
}

/// The host's load from its successive readings.
#[derive(Debug, Default)]
pub struct HostTracker {
    cpu: Option<HostCpuTimes>,
    load: HostLoad,
}

impl HostTracker {
    /// The load after a new reading. What libvirt could not tell keeps its
    /// last value; CPU use is 0 until the second reading.
    pub fn observe(&mut self, cpu: Option<HostCpuTimes>, memory: Option<HostMemory>) -> HostLoad {
        if let Some(cur) = cpu {
            if let Some(prev) = &self.cpu {
                self.load.cpu_hundredths = host_cpu_hundredths(prev, &cur);
            }
            self.cpu = Some(cur);
        }
        if let Some(m) = memory {
            self.load.memory_total_kib = m.total_kib;
            self.load.memory_used_kib = m.used_kib();
        }
        self.load
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
