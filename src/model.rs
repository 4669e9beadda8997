//! The event-fed cache of every libvirt domain.
//!
//! Reads (properties, enumeration, lookups) are answered from here and never
//! reach libvirt. The cache is kept current by libvirt's domain events, by a
//! refresh after every operation vapord performs, by a periodic bulk statistics
//! call for running domains (live CPU time, memory, disk and network
//! counters), and by a full resync after (re)connecting. Every difference is
//! published as a [`Change`], which the bus layer turns into
//! InterfacesAdded/Removed and PropertiesChanged.
//!
//! The rates of running VMs (CPU %, bytes per second) are derived here, in
//! one place: when a periodic statistics reading is applied, from it and the
//! reading before ([`crate::metrics`]); the same reading gives the record's
//! rates and the sample in the VM's ring. Readings in between (after an
//! event or an operation) keep the last rates. The host's load is read on
//! the same interval.
//!
//! This module knows nothing about D-Bus.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{watch, Mutex};

use crate::libvirt::agent::GuestInfo;
use crate::libvirt::conn::Snapshot;
use crate::libvirt::events::{AGENT_CONNECTED, AGENT_DISCONNECTED};
use crate::libvirt::records::{MigrationStatus, Rates};
use crate::libvirt::{DomainRecord, DomainState, Hypervisor, HypervisorEvent};
use crate::metrics::{HostLoad, HostTracker, Metrics, Reading, Sample};
use crate::store::Store;
use crate::Result;

/// One difference between the previous and the current view of a domain.
pub type Change = crate::store::Change<DomainRecord>;

impl crate::store::Keyed for DomainRecord {
    fn key(&self) -> &str {
        &self.uuid
    }
}

/// The cache and the machinery that keeps it current.
pub struct Model {
    hv: Arc<Hypervisor>,
    domains: Store<DomainRecord>,
    /// Serialises read-then-apply so an older reading never overwrites a newer one.
    refresh_lock: Mutex<()>,
    connected: watch::Sender<bool>,
    /// UUIDs of domains libvirt reported an event for (definitions may have
    /// changed: followers such as the PCI service re-read what they need).
    touched: tokio::sync::broadcast::Sender<String>,
    /// UUIDs of storage pools libvirt reported an event for.
    pools_touched: tokio::sync::broadcast::Sender<String>,
    /// UUIDs of networks libvirt reported an event for.
    networks_touched: tokio::sync::broadcast::Sender<String>,
    /// Rates and sample rings of running VMs.
    metrics: std::sync::Mutex<Metrics>,
    /// The host's load, as of the last statistics interval.
    host: watch::Sender<HostLoad>,
    host_tracker: std::sync::Mutex<HostTracker>,
    /// One lock per domain, held by operations that read and write its
    /// definition (so two of them never lose each other's change) and by
    /// Start (so a VM being cloned cannot start under the copy).
    vm_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    /// Changes waiting for the next start, by running domain.
    pending: std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>,
    /// Migrations running now, by domain (vapord's own, as it follows them).
    migrations: std::sync::Mutex<std::collections::HashMap<String, MigrationStatus>>,
    /// What the guest agents of running domains report, by domain; an
    /// entry means the agent is connected. Each connection has its number,
    /// so a reading that outlived its connection is dropped.
    agents: std::sync::Mutex<std::collections::HashMap<String, AgentSlot>>,
    agent_connections: AtomicU64,
    /// Domains whose guest agent just connected (to read what it reports).
    agent_connected: tokio::sync::broadcast::Sender<String>,
}

/// A connected guest agent: its connection's number, what it reported.
type AgentSlot = (u64, Option<Arc<GuestInfo>>);

impl Model {
    pub fn new(hv: Arc<Hypervisor>) -> (Arc<Self>, UnboundedReceiver<Change>) {
        let (domains, rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let (connected, _) = watch::channel(false);
        let (touched, _) = tokio::sync::broadcast::channel(1024);
        let m = Arc::new(Self {
            hv,
            domains,
            refresh_lock: Mutex::new(()),
            connected,
            touched,
            pools_touched: tokio::sync::broadcast::channel(1024).0,
            networks_touched: tokio::sync::broadcast::channel(1024).0,
            // Resized to the configured interval by `run`.
            metrics: std::sync::Mutex::new(Metrics::new(Duration::from_secs(5))),
            host: watch::channel(HostLoad::default()).0,
            host_tracker: std::sync::Mutex::new(HostTracker::default()),
            pending: std::sync::Mutex::new(std::collections::HashMap::new()),
            migrations: std::sync::Mutex::new(std::collections::HashMap::new()),
            agents: std::sync::Mutex::new(std::collections::HashMap::new()),
            agent_connections: AtomicU64::new(1),
            agent_connected: tokio::sync::broadcast::channel(1024).0,
            vm_locks: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        (m, rx)
    }

    pub fn hypervisor(&self) -> &Arc<Hypervisor> {
        &self.hv
    }

    /// Domains libvirt reported an event for, as they happen.
    pub fn touched(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.touched.subscribe()
    }

    /// Storage pools libvirt reported an event for, as they happen.
    pub fn pools_touched(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.pools_touched.subscribe()
    }

    /// Networks libvirt reported an event for, as they happen.
    pub fn networks_touched(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.networks_touched.subscribe()
    }

    /// Whether libvirt is connected now, and a way to follow it.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// The host's load now, and a way to follow it (it changes at most once
    /// per statistics interval, and only when a value does).
    pub fn host_load(&self) -> watch::Receiver<HostLoad> {
        self.host.subscribe()
    }

    /// A VM's samples of the last `seconds` (0: all its ring holds),
    /// oldest first.
    pub fn metrics(&self, uuid: &str, seconds: u32) -> Vec<Sample> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.lock_metrics().samples(uuid, seconds, now_ms)
    }

    fn lock_metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, uuid: &str) -> Option<Arc<DomainRecord>> {
        self.domains.get(uuid)
    }

    /// A ticket for a reading about to start (see [`Store`]).
    pub fn ticket(&self) -> u64 {
        self.domains.ticket()
    }

    /// Find a domain by UUID or by name.
    pub fn find(&self, name_or_uuid: &str) -> Option<Arc<DomainRecord>> {
        self.domains
            .get(name_or_uuid)
            .or_else(|| self.domains.find(|r| r.name == name_or_uuid))
    }

    /// Every domain, sorted by name.
    pub fn all(&self) -> Vec<Arc<DomainRecord>> {
        let mut v = self.domains.all();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Apply a reading that is not a periodic statistics reading (an event,
    /// an operation): it keeps the rates of the last one while the VM runs.
    fn apply(
        &self,
        uuid: &str,
        new: Option<DomainRecord>,
        ticket: u64,
    ) -> Option<Arc<DomainRecord>> {
        let new = new.map(|mut rec| {
            self.carry_pending(&mut rec);
            rec.rates = match self.get(uuid) {
                Some(cur) if rec.state.is_active() && cur.state.is_active() => cur.rates,
                _ => Rates::default(),
            };
            rec
        });
        {
            let mut metrics = self.lock_metrics();
            match &new {
                None => metrics.forget(uuid),
                Some(rec) if !rec.state.is_active() => metrics.stopped(uuid),
                Some(_) => {}
            }
        }
        self.domains.apply(uuid, new, ticket)
    }

    /// Wait for, and hold, the lock of one domain (see `vm_locks`).
    pub async fn lock_vm(&self, uuid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.vm_locks.lock().unwrap_or_else(|e| e.into_inner());
            // Forget the locks of domains that are gone and that nobody holds.
            if locks.len() > 64 {
                locks.retain(|u, l| Arc::strong_count(l) > 1 || self.domains.get(u).is_some());
            }
            locks.entry(uuid.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Give a reading of a running domain the changes it has waiting for
    /// its next start; a domain that stopped has none left.
    fn carry_pending(&self, rec: &mut DomainRecord) {
        rec.migration = self
            .migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&rec.uuid)
            .cloned();
        {
            let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            if !rec.state.is_active() {
                agents.remove(&rec.uuid);
            }
            let agent = agents.get(&rec.uuid);
            rec.agent_connected = agent.is_some();
            rec.guest_info = agent.and_then(|(_, info)| info.clone());
        }
        let mut table = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if rec.state.is_active() {
            rec.pending_changes = table.get(&rec.uuid).cloned().unwrap_or_default();
        } else {
            table.remove(&rec.uuid);
            rec.pending_changes.clear();
        }
    }

    /// Set the changes a running domain has waiting for its next start (as
    /// vapord made them, or as recorded in the domain) and publish them.
    pub async fn set_pending(&self, uuid: &str, fields: Vec<String>) {
        // Serialised with the other readings, so the re-published record
        // can never outrank a newer reading (a stop, say).
        let _serial = self.refresh_lock.lock().await;
        let Some(cur) = self.get(uuid) else {
            return;
        };
        if !cur.state.is_active() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uuid.to_owned(), fields);
        let ticket = self.ticket();
        self.apply(uuid, Some((*cur).clone()), ticket);
    }

    /// Show (or, with `None`, end) the migration of a domain and publish it.
    pub async fn set_migration(&self, uuid: &str, status: Option<MigrationStatus>) {
        let _serial = self.refresh_lock.lock().await;
        {
            let mut table = self.migrations.lock().unwrap_or_else(|e| e.into_inner());
            match status {
                Some(s) => table.insert(uuid.to_owned(), s),
                None => table.remove(uuid),
            };
        }
        if let Some(cur) = self.get(uuid) {
            let ticket = self.ticket();
            self.apply(uuid, Some((*cur).clone()), ticket);
        }
    }

    /// Take a running domain's pending changes from the domain itself (its
    /// live metadata, which a fresh start has not got), and whether its
    /// guest agent is connected: after a start, and for every running
    /// domain after (re)connecting.
    async fn reload_pending(&self, uuid: &str) {
        let read = self
            .hv
            .on_domain(uuid, |_, d| {
                Ok((d.pending(), d.agent_connected().unwrap_or(false)))
            })
            .await;
        if let Ok((fields, agent)) = read {
            self.set_pending(uuid, fields).await;
            self.set_agent(uuid, agent).await;
        }
    }

    /// Record whether a running domain's guest agent is connected and
    /// publish it; a connection is announced on [`Self::agent_connections`].
    pub async fn set_agent(&self, uuid: &str, connected: bool) {
        let _serial = self.refresh_lock.lock().await;
        let Some(cur) = self.get(uuid) else {
            return;
        };
        let was = {
            let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            let was = agents.contains_key(uuid);
            if connected && cur.state.is_active() {
                let n = self
                    .agent_connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                agents.entry(uuid.to_owned()).or_insert((n, None));
            } else {
                agents.remove(uuid);
            }
            was
        };
        if connected && !was {
            let _ = self.agent_connected.send(uuid.to_owned());
        }
        let ticket = self.ticket();
        self.apply(uuid, Some((*cur).clone()), ticket);
    }

    /// The number of the guest agent connection of a domain, if connected.
    pub fn agent_connection(&self, uuid: &str) -> Option<u64> {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uuid)
            .map(|(n, _)| *n)
    }

    /// Record what a connected guest agent reports, read during connection
    /// `connection`, and publish it (nothing when that connection has gone
    /// meanwhile).
    pub async fn set_guest_info(&self, uuid: &str, connection: u64, info: GuestInfo) {
        let _serial = self.refresh_lock.lock().await;
        let Some(cur) = self.get(uuid) else {
            return;
        };
        {
            let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
            match agents.get_mut(uuid) {
                Some((n, slot)) if *n == connection => *slot = Some(Arc::new(info)),
                _ => return,
            }
        }
        let ticket = self.ticket();
        self.apply(uuid, Some((*cur).clone()), ticket);
    }

    /// Domains whose guest agent connected, as they do.
    pub fn agent_connections(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.agent_connected.subscribe()
    }

    /// [`Self::reload_pending`] for every running domain.
    async fn load_pending(&self) {
        for rec in self.domains.all() {
            if rec.state.is_active() {
                self.reload_pending(&rec.uuid).await;
            }
        }
    }

    /// Derive the rates of every running VM in a statistics reading (and
    /// record their samples); stopped ones start over.
    fn measure(&self, snap: &mut Snapshot) {
        let mut metrics = self.lock_metrics();
        for rec in &mut snap.records {
            if rec.state.is_active() {
                let reading = Reading::of(rec, snap.read_at);
                rec.rates =
                    metrics.observe(&rec.uuid, &reading, rec.memory_rss_kib, snap.read_unix_ms);
            } else {
                metrics.stopped(&rec.uuid);
            }
        }
    }

    /// Record a domain's state read right after vapord acted on it (one cheap
    /// call instead of a full re-read; the event that follows re-reads the rest).
    /// `None` means the domain is gone (a transient domain that stopped).
    /// `ticket` must have been taken once the operation had finished (before
    /// reading anything back), so no reading of the old state outranks it.
    pub fn note_state(&self, uuid: &str, ticket: u64, state: Option<(DomainState, &'static str)>) {
        let Some(current) = self.get(uuid) else {
            return;
        };
        match state {
            Some((s, reason)) => {
                self.apply(uuid, Some(current.with_state(s, reason)), ticket);
            }
            None => {
                self.apply(uuid, None, ticket);
            }
        }
    }

    /// Re-read one domain from libvirt and publish what changed. Returns the
    /// current record, `None` if the domain no longer exists.
    pub async fn refresh_domain(&self, uuid: &str) -> Result<Option<Arc<DomainRecord>>> {
        let _serial = self.refresh_lock.lock().await;
        let ticket = self.ticket();
        let rec = self.hv.record(uuid).await?;
        Ok(self.apply(uuid, rec, ticket))
    }

    /// Follow one domain event. Pure run-state changes need only the state
    /// (one round trip; live counters follow with the next statistics
    /// refresh); anything that may change the definition re-reads the domain.
    async fn on_domain_event(&self, uuid: &str, what: &str) -> Result<()> {
        match what {
            AGENT_CONNECTED | AGENT_DISCONNECTED => {
                self.set_agent(uuid, what == AGENT_CONNECTED).await;
                Ok(())
            }
            "started" | "suspended" | "resumed" | "shutdown" | "pmsuspended" | "crashed"
                if self.get(uuid).is_some() =>
            {
                {
                    let _serial = self.refresh_lock.lock().await;
                    let ticket = self.ticket();
                    let state = self.hv.state(uuid).await?;
                    self.note_state(uuid, ticket, state);
                }
                if what == "started" {
                    self.reload_pending(uuid).await;
                }
                Ok(())
            }
            "undefined" | "stopped" => {
                self.hv.forget_domain(uuid);
                self.refresh_domain(uuid).await.map(|_| ())
            }
            _ => self.refresh_domain(uuid).await.map(|_| ()),
        }
    }

    /// Re-read every domain (or only running ones) with bulk calls.
    pub async fn resync(&self, active_only: bool) -> Result<()> {
        let _serial = self.refresh_lock.lock().await;
        let ticket = self.ticket();
        let snap = self.hv.snapshot(active_only).await?;
        self.apply_snapshot(snap, ticket);
        Ok(())
    }

    fn apply_snapshot(&self, mut snap: Snapshot, ticket: u64) {
        for rec in &mut snap.records {
            self.carry_pending(rec);
        }
        self.measure(&mut snap);
        if snap.complete {
            self.domains.replace_scope(snap.records, |_| true, ticket);
            self.lock_metrics()
                .retain(|uuid| self.domains.get(uuid).is_some());
            return;
        }
        let seen: std::collections::HashSet<String> =
            snap.records.iter().map(|r| r.uuid.clone()).collect();
        for rec in snap.records {
            let uuid = rec.uuid.clone();
            // Its rates are this reading's (see `measure`).
            self.domains.apply(&uuid, Some(rec), ticket);
        }
        // Domains not in a partial reading keep their record but may have had
        // their autostart flag changed (libvirt has no event for that).
        for old in self.domains.all() {
            if seen.contains(&old.uuid) {
                continue;
            }
            let autostart = snap.autostart.contains(&old.uuid);
            if autostart != old.autostart {
                let mut new = (*old).clone();
                new.autostart = autostart;
                self.domains.apply(&old.uuid, Some(new), ticket);
            }
        }
    }

    /// Connect to libvirt and load everything. On failure the model stays
    /// disconnected and [`Model::run`] keeps retrying.
    pub async fn connect(&self) -> Result<()> {
        self.hv.connect().await?;
        if let Err(e) = self.resync(false).await {
            self.hv.mark_disconnected();
            return Err(e);
        }
        self.load_pending().await;
        self.connected.send_replace(true);
        log::info!(uri = self.hv.uri(), domains = self.domains.len(); "connected to libvirt");
        Ok(())
    }

    /// Read the host's CPU and memory (two cheap calls) and publish its load
    /// if it changed.
    async fn refresh_host(&self) {
        let reading = self
            .hv
            .session(|s| Ok((s.host_cpu_times(), s.host_memory())))
            .await;
        let (cpu, memory) = match reading {
            Ok(r) => r,
            Err(e) => {
                log::debug!("cannot read the host's load: {e}");
                return;
            }
        };
        let load = self
            .host_tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(cpu, memory);
        self.host.send_if_modified(|shown| {
            let changed = *shown != load;
            *shown = load;
            changed
        });
    }

    /// Keep the model current for as long as the daemon runs: follow libvirt's
    /// events, reconnect with backoff when libvirtd goes away, refresh live
    /// statistics of running VMs and of the host every `stats_interval`
    /// (zero: never).
    pub async fn run(
        self: Arc<Self>,
        mut events: UnboundedReceiver<HypervisorEvent>,
        stats_interval: Duration,
        reconnect_max: Duration,
    ) {
        // Every FULL_EVERY ticks the refresh covers stopped domains too: libvirt
        // emits no event for some configuration changes (`virsh setmaxmem
        // --config`, autostart), and this keeps even those from going stale.
        const FULL_EVERY: u32 = 12;
        let mut ticks = 0u32;
        self.lock_metrics().set_interval(stats_interval);
        let mut ticker = (!stats_interval.is_zero()).then(|| {
            let mut t = tokio::time::interval(stats_interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            if !*self.connected.borrow() {
                self.reconnect(reconnect_max).await;
            }
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(HypervisorEvent::Domain { uuid, name, what }) => {
                        log::debug!(vm_name = name.as_str(), vm_uuid = uuid.as_str(); "domain event: {what}");
                        if let Err(e) = self.on_domain_event(&uuid, what).await {
                            log::warn!(vm_name = name.as_str(), vm_uuid = uuid.as_str(); "cannot refresh after '{what}' event: {e}");
                        }
                        let _ = self.touched.send(uuid);
                    }
                    Some(HypervisorEvent::Pool { uuid }) => {
                        let _ = self.pools_touched.send(uuid);
                    }
                    Some(HypervisorEvent::Network { uuid }) => {
                        let _ = self.networks_touched.send(uuid);
                    }
                    Some(HypervisorEvent::Disconnected { generation, why }) => {
                        if *self.connected.borrow() && generation == self.hv.generation() {
                            log::warn!("lost libvirt connection: {why}");
                            self.hv.mark_disconnected();
                            self.connected.send_replace(false);
                        }
                    }
                    None => return,
                },
                _ = tick => {
                    ticks = ticks.wrapping_add(1);
                    match self.resync(!ticks.is_multiple_of(FULL_EVERY)).await {
                        Err(crate::Error::Unavailable(e)) => {
                            // A dead connection the close callback missed.
                            log::warn!("lost libvirt connection: {e}");
                            self.hv.mark_disconnected();
                            self.connected.send_replace(false);
                        }
                        Err(e) => log::debug!("statistics refresh failed: {e}"),
                        Ok(()) => self.refresh_host().await,
                    }
                }
            }
        }
    }

    async fn reconnect(&self, max: Duration) {
        let mut delay = Duration::from_millis(100).min(max);
        loop {
            match self.connect().await {
                Ok(()) => return,
                Err(e) => {
                    log::debug!("reconnect to {} failed: {e}", self.hv.uri());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "model_metrics_tests.rs"]
mod metrics_tests;
