//! The cached view of one domain, built from libvirt's bulk statistics
//! (`virConnectGetAllDomainStats` / `virDomainListGetStats`) and the bulk
//! autostart/transient listings. Reading these needs no per-domain round trip.

use std::collections::HashSet;
use std::ffi::CStr;

use virt_sys as sys;

/// libvirt's domain state (`virDomainState`), as a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DomainState {
    #[default]
    NoState,
    Running,
    Blocked,
    Paused,
    ShuttingDown,
    ShutOff,
    Crashed,
    PmSuspended,
}

impl DomainState {
    pub fn from_raw(v: i64) -> Self {
        match v {
            1 => Self::Running,
            2 => Self::Blocked,
            3 => Self::Paused,
            4 => Self::ShuttingDown,
            5 => Self::ShutOff,
            6 => Self::Crashed,
            7 => Self::PmSuspended,
            _ => Self::NoState,
        }
    }

    /// The stable name published on the bus (`State` property).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoState => "nostate",
            Self::Running => "running",
            Self::Blocked => "blocked",
            Self::Paused => "paused",
            Self::ShuttingDown => "shutting-down",
            Self::ShutOff => "shutoff",
            Self::Crashed => "crashed",
            Self::PmSuspended => "pmsuspended",
        }
    }

    /// Whether a QEMU process exists for the domain.
    pub fn is_active(self) -> bool {
        !matches!(self, Self::ShutOff | Self::NoState)
    }

    /// The name of a `virDomain*Reason` value for this state.
    pub fn reason_name(self, reason: i64) -> &'static str {
        let table: &[&str] = match self {
            Self::Running => &[
                "unknown",
                "booted",
                "migrated",
                "restored",
                "from-snapshot",
                "unpaused",
                "migration-canceled",
                "save-canceled",
                "wakeup",
                "crashed",
                "postcopy",
                "postcopy-failed",
            ],
            Self::Blocked => &["unknown"],
            Self::Paused => &[
                "unknown",
                "user",
                "migration",
                "save",
                "dump",
                "ioerror",
                "watchdog",
                "from-snapshot",
                "shutting-down",
                "snapshot",
                "api-error",
                "starting-up",
                "postcopy",
                "postcopy-failed",
            ],
            Self::ShuttingDown => &["unknown", "user"],
            Self::ShutOff => &[
                "unknown",
                "shutdown",
                "destroyed",
                "crashed",
                "migrated",
                "saved",
                "failed",
                "from-snapshot",
                "daemon",
            ],
            Self::Crashed => &["unknown", "panicked"],
            Self::PmSuspended => &["unknown"],
            Self::NoState => &["unknown"],
        };
        usize::try_from(reason)
            .ok()
            .and_then(|i| table.get(i).copied())
            .unwrap_or("unknown")
    }
}

/// Everything the bus publishes about one domain, as of the last refresh.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainRecord {
    pub uuid: String,
    pub name: String,
    pub state: DomainState,
    pub state_reason: &'static str,
    /// Maximum (defined) memory, KiB.
    pub memory_kib: u64,
    /// Current balloon size, KiB.
    pub current_memory_kib: u64,
    pub vcpus: u32,
    pub max_vcpus: u32,
    pub autostart: bool,
    pub persistent: bool,
    /// Total CPU time consumed, nanoseconds (0 when shut off).
    pub cpu_time_ns: u64,
    /// Resident memory of the QEMU process, KiB (0 when shut off).
    pub memory_rss_kib: u64,
    /// Cumulative disk and network counters (unknown when shut off, or
    /// when the reading did not include them).
    pub io: IoCounters,
    /// Rates over the last statistics interval. libvirt has no such thing:
    /// the model derives them from two readings (`crate::metrics`); they
    /// are zero as read here and while the VM is shut off.
    pub rates: Rates,
    /// Configuration changes made while the domain runs that take effect
    /// only at its next start (kept by the model; empty as read here).
    pub pending_changes: Vec<String>,
    /// The migration running now, as vapord follows it (kept by the model;
    /// `None` as read here).
    pub migration: Option<MigrationStatus>,
    /// Whether the guest agent is connected (kept by the model from
    /// libvirt's agent events; false as read here).
    pub agent_connected: bool,
    /// What the connected guest agent reports (kept by the model; `None`
    /// as read here, and until the agent has answered).
    pub guest_info: Option<std::sync::Arc<super::agent::GuestInfo>>,
}

/// A migration in progress: where to, which Job, and libvirt's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    pub destination: String,
    /// The Job object's path.
    pub job: String,
    /// `precopy` or `postcopy`.
    pub phase: String,
    /// Started with `postcopy`: it may switch to post-copy.
    pub postcopy: bool,
    pub data_processed: u64,
    pub data_remaining: u64,
    pub data_total: u64,
    pub memory_bps: u64,
    pub iteration: u64,
    pub expected_downtime_ms: u64,
}

/// A running domain's cumulative I/O counters, summed over its disks
/// (`block.<n>.rd.bytes`, `block.<n>.wr.bytes`) and interfaces
/// (`net.<n>.rx.bytes`, `net.<n>.tx.bytes`). `None`: not in this reading
/// (a reading without the groups, or one whose monitor was busy: NOWAIT
/// leaves out what needs it). A domain with no disk (or no interface)
/// reads zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
}

/// What a running domain did per second over the last statistics interval.
/// Integers, so records stay comparable (`Eq`) and a property changes only
/// when its published value does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// CPU use in hundredths of a percent of the domain's vCPUs (0–10000).
    pub cpu_hundredths: u32,
    pub disk_read_bytes_per_sec: u64,
    pub disk_write_bytes_per_sec: u64,
    pub net_rx_bytes_per_sec: u64,
    pub net_tx_bytes_per_sec: u64,
}

impl Rates {
    /// CPU use in percent of the domain's vCPUs (0–100).
    pub fn cpu_percent(&self) -> f64 {
        f64::from(self.cpu_hundredths) / 100.0
    }
}

/// The statistics groups every refresh asks for.
pub const STATS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_VCPU;

/// [`STATS`] and the I/O counters, for readings of running domains only:
/// for a shut-off domain the block group opens every disk image to size it.
/// (Without `VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING`, `block.<n>` lists
/// each disk once, not its backing chain.)
pub const LIVE_STATS: u32 = STATS | sys::VIR_DOMAIN_STATS_BLOCK | sys::VIR_DOMAIN_STATS_INTERFACE;

/// Read a domain's name and UUID from its handle (local: no round trip).
///
/// # Safety
/// `dom` must be a valid domain pointer.
pub unsafe fn name_and_uuid(dom: sys::virDomainPtr) -> Option<(String, String)> {
    let name = sys::virDomainGetName(dom);
    if name.is_null() {
        return None;
    }
    let mut buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) < 0 {
        return None;
    }
    Some((
        CStr::from_ptr(name).to_string_lossy().into_owned(),
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
    ))
}

/// A domain's state and reason in one round trip (`virDomainGetState`).
/// (The `virt` wrapper ignores this call's failure, hence the raw call.)
pub fn domain_state(
    dom: &virt::domain::Domain,
) -> Result<(DomainState, &'static str), virt::error::Error> {
    let (mut state, mut reason) = (0, 0);
    // SAFETY: valid domain handle and out-parameters.
    if unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) } < 0 {
        return Err(virt::error::Error::last_error());
    }
    let state = DomainState::from_raw(i64::from(state));
    Ok((state, state.reason_name(i64::from(reason))))
}

impl DomainRecord {
    /// This record with a new state, as read right after an operation; the
    /// live counters are cleared when the domain stopped.
    pub fn with_state(&self, state: DomainState, reason: &'static str) -> DomainRecord {
        let mut r = self.clone();
        r.state = state;
        r.state_reason = reason;
        if !state.is_active() {
            r.cpu_time_ns = 0;
            r.memory_rss_kib = 0;
            r.io = IoCounters::default();
            r.rates = Rates::default();
            r.pending_changes = Vec::new();
        }
        r
    }
}

/// One I/O counter of a statistics record, by field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoField {
    BlockCount,
    NetCount,
    DiskRead,
    DiskWrite,
    NetRx,
    NetTx,
}

/// Which I/O counter `field` is (`block.3.rd.bytes` → DiskRead), if any.
fn io_field(field: &[u8]) -> Option<IoField> {
    match field {
        b"block.count" => return Some(IoField::BlockCount),
        b"net.count" => return Some(IoField::NetCount),
        _ => {}
    }
    let indexed = |prefix: &[u8], suffix: &[u8]| {
        field
            .strip_prefix(prefix)
            .and_then(|f| f.strip_suffix(suffix))
            .is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
    };
    [
        (&b"block."[..], &b".rd.bytes"[..], IoField::DiskRead),
        (b"block.", b".wr.bytes", IoField::DiskWrite),
        (b"net.", b".rx.bytes", IoField::NetRx),
        (b"net.", b".tx.bytes", IoField::NetTx),
    ]
    .into_iter()
    .find(|(p, s, _)| indexed(p, s))
    .map(|(_, _, f)| f)
}

/// Sums the per-device I/O counters of one statistics record.
#[derive(Debug, Default)]
struct IoSums {
    counters: IoCounters,
    disks: Option<u64>,
    nics: Option<u64>,
}

impl IoSums {
    fn add(&mut self, field: IoField, v: u64) {
        let add = |sum: &mut Option<u64>| *sum = Some(sum.unwrap_or(0).saturating_add(v));
        let c = &mut self.counters;
        match field {
            IoField::BlockCount => self.disks = Some(v),
            IoField::NetCount => self.nics = Some(v),
            IoField::DiskRead => add(&mut c.disk_read_bytes),
            IoField::DiskWrite => add(&mut c.disk_write_bytes),
            IoField::NetRx => add(&mut c.net_rx_bytes),
            IoField::NetTx => add(&mut c.net_tx_bytes),
        }
    }

    /// The sums; a domain without disks (or interfaces) has zero of them.
    fn finish(self) -> IoCounters {
        let mut c = self.counters;
        if self.disks == Some(0) {
            c.disk_read_bytes.get_or_insert(0);
            c.disk_write_bytes.get_or_insert(0);
        }
        if self.nics == Some(0) {
            c.net_rx_bytes.get_or_insert(0);
            c.net_tx_bytes.get_or_insert(0);
        }
        c
    }
}

/// Build a record from one `virDomainStatsRecord`.
///
/// # Safety
/// `rec` must point to a valid record returned by libvirt.
pub unsafe fn from_stats_record(
    rec: &sys::_virDomainStatsRecord,
    autostart: &HashSet<String>,
    transient: &HashSet<String>,
) -> Option<DomainRecord> {
    let (name, uuid) = name_and_uuid(rec.dom)?;
    let mut state = 0i64;
    let mut reason = 0i64;
    let mut r = DomainRecord {
        autostart: autostart.contains(&uuid),
        persistent: !transient.contains(&uuid),
        uuid,
        name,
        state: DomainState::NoState,
        state_reason: "unknown",
        memory_kib: 0,
        current_memory_kib: 0,
        vcpus: 0,
        max_vcpus: 0,
        cpu_time_ns: 0,
        memory_rss_kib: 0,
        io: IoCounters::default(),
        rates: Rates::default(),
        pending_changes: Vec::new(),
        migration: None,
        agent_connected: false,
        guest_info: None,
    };
    let mut io = IoSums::default();
    let params = if rec.params.is_null() || rec.nparams <= 0 {
        &[][..]
    } else {
        std::slice::from_raw_parts(rec.params, rec.nparams as usize)
    };
    for p in params {
        let field = CStr::from_ptr(p.field.as_ptr()).to_bytes();
        let Some(v) = typed_integer(p) else { continue };
        match field {
            b"state.state" => state = v,
            b"state.reason" => reason = v,
            b"balloon.maximum" => r.memory_kib = v as u64,
            b"balloon.current" => r.current_memory_kib = v as u64,
            b"balloon.rss" => r.memory_rss_kib = v as u64,
            b"vcpu.current" => r.vcpus = v as u32,
            b"vcpu.maximum" => r.max_vcpus = v as u32,
            b"cpu.time" => r.cpu_time_ns = v as u64,
            other => {
                if let Some(f) = io_field(other) {
                    io.add(f, v as u64);
                }
            }
        }
    }
    r.state = DomainState::from_raw(state);
    r.state_reason = r.state.reason_name(reason);
    if r.state.is_active() {
        r.io = io.finish();
    } else {
        // libvirt may report stale counters for domains without a process.
        r.cpu_time_ns = 0;
        r.memory_rss_kib = 0;
    }
    Some(r)
}

/// The value of an integer-typed parameter, whatever its width.
unsafe fn typed_integer(p: &sys::_virTypedParameter) -> Option<i64> {
    match p.type_ as u32 {
        sys::VIR_TYPED_PARAM_INT => Some(i64::from(p.value.i)),
        sys::VIR_TYPED_PARAM_UINT => Some(i64::from(p.value.ui)),
        sys::VIR_TYPED_PARAM_LLONG => Some(p.value.l),
        sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_follow_libvirt_enums() {
        assert_eq!(DomainState::ShutOff.reason_name(2), "destroyed");
        assert_eq!(DomainState::Running.reason_name(1), "booted");
        assert_eq!(DomainState::Paused.reason_name(1), "user");
        assert_eq!(DomainState::Paused.reason_name(999), "unknown");
        assert_eq!(DomainState::Running.reason_name(-1), "unknown");
    }

    #[test]
    fn active_states_are_those_with_a_process() {
        assert!(DomainState::Paused.is_active());
        assert!(!DomainState::ShutOff.is_active());
        assert_eq!(DomainState::from_raw(5), DomainState::ShutOff);
        assert_eq!(DomainState::from_raw(42).as_str(), "nostate");
    }

    #[test]
    fn io_fields_are_libvirts_per_device_byte_counters() {
        assert_eq!(io_field(b"block.0.rd.bytes"), Some(IoField::DiskRead));
        assert_eq!(io_field(b"block.12.wr.bytes"), Some(IoField::DiskWrite));
        assert_eq!(io_field(b"net.1.rx.bytes"), Some(IoField::NetRx));
        assert_eq!(io_field(b"net.0.tx.bytes"), Some(IoField::NetTx));
        assert_eq!(io_field(b"block.count"), Some(IoField::BlockCount));
        assert_eq!(io_field(b"net.count"), Some(IoField::NetCount));
        for other in [
            &b"block.0.rd.reqs"[..],
            b"block.0.capacity",
            b"block..rd.bytes",
            b"block.x.rd.bytes",
            b"net.0.rx.pkts",
            b"balloon.rss",
            b"cpu.time",
        ] {
            assert_eq!(io_field(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn io_counters_sum_devices_and_know_what_is_missing() {
        let mut sums = IoSums::default();
        for (f, v) in [
            (&b"block.count"[..], 2),
            (b"block.0.rd.bytes", 100),
            (b"block.1.rd.bytes", 50),
            (b"block.0.wr.bytes", 7),
            (b"net.count", 0),
        ] {
            sums.add(io_field(f).unwrap(), v);
        }
        let c = sums.finish();
        assert_eq!(c.disk_read_bytes, Some(150));
        assert_eq!(c.disk_write_bytes, Some(7));
        // No interface: zero, known.
        assert_eq!((c.net_rx_bytes, c.net_tx_bytes), (Some(0), Some(0)));
        // Disks listed without counters (a busy monitor): unknown.
        let mut sums = IoSums::default();
        sums.add(IoField::BlockCount, 1);
        assert_eq!(sums.finish(), IoCounters::default());
    }
}
