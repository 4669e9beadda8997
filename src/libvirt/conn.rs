//! The single libvirt connection and how work reaches it.
//!
//! libvirt calls block, so [`Hypervisor::run`] executes them on tokio's blocking
//! pool with a reference to the current connection; no async task ever waits on
//! C code. When libvirtd goes away, the close callback reports it, the
//! connection is dropped, and the daemon reconnects and resynchronises (see
//! `crate::model`).

use std::collections::{HashMap, HashSet};
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use virt::connect::Connect;
use virt::domain::Domain;
use virt_sys as sys;

use super::errors::{from_virt, is_not_found};
use super::events;
use super::records::{self, DomainRecord, DomainState};
use crate::{Error, Result};

/// What the libvirt side tells the daemon, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervisorEvent {
    /// Something happened to this domain; re-read it.
    Domain {
        uuid: String,
        name: String,
        what: &'static str,
    },
    /// A storage pool was defined, undefined, started, stopped, created,
    /// deleted or refreshed; re-read it and its volumes.
    Pool { uuid: String },
    /// A virtual network was defined, undefined, started or stopped.
    Network { uuid: String },
    /// The connection of this generation is gone, with the reason libvirt gave.
    Disconnected { generation: u64, why: &'static str },
}

/// A connection with vapord's callbacks on it. Dropping it removes the
/// callbacks (each holds a reference on the connection) and closes it without
/// panicking (the `virt` wrapper's `Drop` does when libvirtd has gone away).
pub struct Conn {
    inner: ManuallyDrop<Connect>,
    callback_ids: events::Registrations,
}

impl Deref for Conn {
    type Target = Connect;
    fn deref(&self) -> &Connect {
        &self.inner
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: taken exactly once, here; the pointer stays valid until the close.
        unsafe {
            let c = ManuallyDrop::take(&mut self.inner);
            let ptr = c.as_ptr();
            std::mem::forget(c);
            if !self.callback_ids.domain.is_empty() {
                events::unregister(ptr, &self.callback_ids, true);
            }
            sys::virConnectClose(ptr);
        }
    }
}

/// A full or partial reading of every domain, taken with bulk calls.
#[derive(Debug)]
pub struct Snapshot {
    pub records: Vec<DomainRecord>,
    /// UUIDs of every domain marked autostart (always complete).
    pub autostart: HashSet<String>,
    /// True when `records` covers every domain (so absent ones are gone).
    pub complete: bool,
    /// When the statistics were read (monotonic, for rates) …
    pub read_at: Instant,
    /// … and the same moment in milliseconds since the Unix epoch.
    pub read_unix_ms: u64,
}

/// Typed access to the current connection for one blocking section: for a
/// service that must make several libvirt calls without leaving the blocking
/// pool (deletion planning, a creation's steps, start-up rollback). Its
/// operations live beside their kind (`domain.rs`, `storage.rs`,
/// `volume.rs`, `node.rs`); nothing of the `virt` crate shows through. Get
/// one from [`Hypervisor::session`] or [`Hypervisor::on_domain`].
pub struct Session<'a> {
    pub(super) conn: &'a Connect,
}

/// Owner of the libvirt connection.
pub struct Hypervisor {
    uri: String,
    conn: RwLock<Option<Arc<Conn>>>,
    /// Domain handles by UUID, so acting on a domain needs no lookup round
    /// trip. Tied to the connection: emptied whenever it changes.
    handles: Arc<Mutex<HashMap<String, Domain>>>,
    tx: UnboundedSender<HypervisorEvent>,
    generation: AtomicU64,
}

impl Hypervisor {
    /// A hypervisor handle (not yet connected) and the stream of its events.
    pub fn new(uri: &str) -> (Arc<Self>, UnboundedReceiver<HypervisorEvent>) {
        events::ensure_event_loop();
        let (tx, rx) = unbounded_channel();
        let hv = Arc::new(Self {
            uri: uri.to_owned(),
            conn: RwLock::new(None),
            handles: Arc::new(Mutex::new(HashMap::new())),
            tx,
            generation: AtomicU64::new(0),
        });
        (hv, rx)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Open the connection, enable keepalives and register the event callbacks.
    pub async fn connect(self: &Arc<Self>) -> Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.connect_blocking())
            .await
            .map_err(|e| Error::Failed(format!("libvirt connect task: {e}")))?
    }

    fn connect_blocking(&self) -> Result<()> {
        let conn = Connect::open(Some(&self.uri))
            .map_err(|e| from_virt(e, format!("cannot connect to {}", self.uri)))?;
        let mut conn = Conn {
            inner: ManuallyDrop::new(conn),
            callback_ids: events::Registrations::default(),
        };
        // Keepalive lets a dead libvirtd be noticed even when we are idle.
        // (Not every driver supports it; that is fine.)
        let _ = conn.set_keep_alive(5, 3);
        // SAFETY: the connection is open and stays so while registered.
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        conn.callback_ids = unsafe { events::register(conn.as_ptr(), &self.tx, generation) }
            .map_err(|e| from_virt(e, "cannot register libvirt event callbacks"))?;
        self.forget_handles();
        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(conn));
        Ok(())
    }

    fn forget_handles(&self) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Which connection is current; bumped at every successful open.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forget the current connection (after libvirt reported it closed).
    pub fn mark_disconnected(&self) {
        self.forget_handles();
        self.conn.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Run blocking work on one domain, found by UUID. A missing domain is
    /// NotFound; a cached handle whose domain has gone is dropped.
    pub async fn run_on_domain<T, F>(&self, uuid: &str, f: F) -> Result<T>
    where
        F: FnOnce(&Connect, &Domain) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let uuid = uuid.to_owned();
        let handles = self.handles.clone();
        self.run(move |c| {
            let cached = handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&uuid)
                .cloned();
            let dom = match cached {
                Some(d) => d,
                None => {
                    let d = c.lookup_domain_by_uuid_string(&uuid).map_err(|e| {
                        if is_not_found(&e) {
                            Error::NotFound(format!("virtual machine {uuid} no longer exists"))
                        } else {
                            from_virt(e, format!("cannot look up {uuid}"))
                        }
                    })?;
                    handles
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(uuid.clone(), d.clone());
                    d
                }
            };
            let result = f(c, &dom);
            if let Err(Error::NotFound(_)) = &result {
                handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uuid);
            }
            result
        })
        .await
    }

    /// Forget the cached handle of a domain that was undefined or stopped.
    pub fn forget_domain(&self, uuid: &str) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uuid);
    }

    /// A domain's state and reason: `None` when it no longer exists.
    pub async fn state(&self, uuid: &str) -> Result<Option<(DomainState, &'static str)>> {
        let r = self
            .run_on_domain(uuid, |_, d| match records::domain_state(d) {
                Ok(s) => Ok(Some(s)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(from_virt(e, "cannot read the domain state")),
            })
            .await;
        match r {
            Err(Error::NotFound(_)) => Ok(None),
            other => other,
        }
    }

    /// Run blocking work with typed access to the current connection, on the
    /// blocking pool: what services use when one call is not enough.
    pub async fn session<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Session<'_>) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(move |c| f(&Session { conn: c })).await
    }

    /// Run blocking libvirt work on the blocking pool against the current
    /// connection. The port's own modules use it; services use the typed
    /// operations ([`Self::session`], [`Self::on_domain`] and the async ones).
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connect) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let conn = self.current().ok_or_else(|| {
            Error::Unavailable(format!(
                "not connected to libvirt at {}; vapord keeps retrying",
                self.uri
            ))
        })?;
        tokio::task::spawn_blocking(move || f(&conn))
            .await
            .map_err(|e| Error::Failed(format!("libvirt task failed: {e}")))?
    }

    /// Every domain (or only the running ones) with its statistics, in three
    /// bulk calls; the reading of running ones includes their I/O counters.
    pub async fn snapshot(&self, active_only: bool) -> Result<Snapshot> {
        self.run(move |c| snapshot_blocking(c, active_only)).await
    }

    /// One domain's record, or `None` if it no longer exists.
    pub async fn record(&self, uuid: &str) -> Result<Option<DomainRecord>> {
        let uuid = uuid.to_owned();
        self.run(move |c| record_blocking(c, &uuid)).await
    }
}

fn uuids_listed(conn: &Connect, flags: u32) -> Result<HashSet<String>> {
    let doms = conn
        .list_all_domains(flags)
        .map_err(|e| from_virt(e, "cannot list domains"))?;
    Ok(doms.iter().filter_map(|d| d.uuid_string().ok()).collect())
}

fn snapshot_blocking(conn: &Connect, active_only: bool) -> Result<Snapshot> {
    let autostart = uuids_listed(conn, sys::VIR_CONNECT_LIST_DOMAINS_AUTOSTART)?;
    let transient = uuids_listed(conn, sys::VIR_CONNECT_LIST_DOMAINS_TRANSIENT)?;
    // NOWAIT: a guest whose monitor is busy must not stall everyone's refresh.
    let flags = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        | if active_only {
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        } else {
            0
        };
    // I/O counters only when reading running domains (see LIVE_STATS); the
    // rates of a full reading's I/O carry over (see crate::metrics).
    let groups = if active_only {
        records::LIVE_STATS
    } else {
        records::STATS
    };
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: standard out-parameter call; the list is freed below.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), groups, &mut recs, flags) };
    let read_at = Instant::now();
    let read_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if n < 0 {
        return Err(from_virt(
            virt::error::Error::last_error(),
            "cannot read domain statistics",
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    // SAFETY: libvirt returned `n` valid records, NULL-terminated.
    unsafe {
        for i in 0..n as usize {
            let rec = *recs.add(i);
            if let Some(r) = records::from_stats_record(&*rec, &autostart, &transient) {
                out.push(r);
            }
        }
        sys::virDomainStatsRecordListFree(recs);
    }
    Ok(Snapshot {
        records: out,
        autostart,
        complete: !active_only,
        read_at,
        read_unix_ms,
    })
}

fn record_blocking(conn: &Connect, uuid: &str) -> Result<Option<DomainRecord>> {
    let dom = match conn.lookup_domain_by_uuid_string(uuid) {
        Ok(d) => d,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(from_virt(e, format!("cannot look up domain {uuid}"))),
    };
    let autostart = dom.autostart().unwrap_or(false);
    let persistent = dom.is_persistent().unwrap_or(true);
    let mut doms = [unsafe { dom.as_ptr() }, std::ptr::null_mut()];
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: a NULL-terminated array of one valid domain.
    let n = unsafe {
        sys::virDomainListGetStats(
            doms.as_mut_ptr(),
            records::STATS,
            &mut recs,
            sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
        )
    };
    if n < 0 {
        let e = virt::error::Error::last_error();
        if is_not_found(&e) {
            return Ok(None);
        }
        return Err(from_virt(e, format!("cannot read statistics of {uuid}")));
    }
    let set = |b: bool| -> HashSet<String> {
        if b {
            [uuid.to_owned()].into()
        } else {
            HashSet::new()
        }
    };
    // SAFETY: `n` records were returned; freed right after.
    let rec = unsafe {
        let r = if n > 0 {
            records::from_stats_record(&**recs, &set(autostart), &set(!persistent))
        } else {
            None
        };
        sys::virDomainStatsRecordListFree(recs);
        r
    };
    drop(dom);
    Ok(rec)
}
