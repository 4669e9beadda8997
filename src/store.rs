//! One event-fed cache of records of one kind (domains, pools, volumes,
//! networks …), keyed by a stable id, that turns every difference into a
//! [`Change`] for the bus layer.
//!
//! Every reading of libvirt takes a ticket before it starts; a reading is
//! applied only if no later-started reading was applied first, so an old
//! reading can never overwrite a newer one, whatever order they finish in.
//! Changes are sent while the map is locked, so they reach the bus in the
//! order they were made.
//!
//! This module knows nothing about libvirt or D-Bus.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// One difference between the previous and the current view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change<R> {
    Added(Arc<R>),
    Changed { old: Arc<R>, new: Arc<R> },
    Removed(Arc<R>),
}

impl<R> Change<R> {
    /// The record as it is now (the last one for a removal).
    pub fn record(&self) -> &Arc<R> {
        match self {
            Change::Added(r) | Change::Removed(r) => r,
            Change::Changed { new, .. } => new,
        }
    }
}

/// A record a store can hold: it names its own key.
pub trait Keyed: PartialEq + Send + Sync + 'static {
    fn key(&self) -> &str;
}

/// A record and the ticket of the reading that produced it; `None` is a
/// removal, kept (as a tombstone) so that an older reading finishing late
/// cannot bring the record back.
struct Entry<R> {
    rec: Option<Arc<R>>,
    ticket: u64,
}

impl<R> Clone for Entry<R> {
    fn clone(&self) -> Self {
        Self {
            rec: self.rec.clone(),
            ticket: self.ticket,
        }
    }
}

/// Tombstones are pruned once there are this many…
const TOMBSTONES_KEPT: usize = 4096;
/// …dropping those older than this many tickets (no reading takes that long).
const TOMBSTONE_AGE: u64 = 100_000;

pub struct Store<R: Keyed> {
    map: RwLock<HashMap<String, Entry<R>>>,
    tickets: Arc<AtomicU64>,
    changes: UnboundedSender<Change<R>>,
}

impl<R: Keyed> Store<R> {
    /// An empty store and the stream of its changes. Stores that must be
    /// ordered against each other share one ticket counter.
    pub fn new(tickets: Arc<AtomicU64>) -> (Self, UnboundedReceiver<Change<R>>) {
        let (changes, rx) = unbounded_channel();
        let store = Self {
            map: RwLock::new(HashMap::new()),
            tickets,
            changes,
        };
        (store, rx)
    }

    /// A ticket for a reading about to start.
    pub fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::SeqCst)
    }

    pub fn get(&self, key: &str) -> Option<Arc<R>> {
        self.read().get(key).and_then(|e| e.rec.clone())
    }

    /// The first record (in no particular order) that satisfies `f`.
    pub fn find(&self, f: impl Fn(&R) -> bool) -> Option<Arc<R>> {
        self.read()
            .values()
            .filter_map(|e| e.rec.as_ref())
            .find(|r| f(r))
            .cloned()
    }

    /// Every record, in no particular order.
    pub fn all(&self) -> Vec<Arc<R>> {
        self.read().values().filter_map(|e| e.rec.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.read().values().filter(|e| e.rec.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry<R>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Entry<R>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Store one record's new reading (or its absence), taken under
    /// `ticket`, and publish the difference. Returns what is stored now.
    pub fn apply(&self, key: &str, new: Option<R>, ticket: u64) -> Option<Arc<R>> {
        let mut map = self.write();
        self.apply_locked(&mut map, key, new, ticket)
    }

    fn apply_locked(
        &self,
        map: &mut HashMap<String, Entry<R>>,
        key: &str,
        new: Option<R>,
        ticket: u64,
    ) -> Option<Arc<R>> {
        let current = map.get(key).cloned();
        if current.as_ref().is_some_and(|e| e.ticket > ticket) {
            // A newer reading (or removal) is already applied.
            return current.and_then(|e| e.rec);
        }
        let change = match (current.and_then(|e| e.rec), new) {
            (None, None) => None,
            (Some(old), None) => {
                map.insert(key.to_owned(), Entry { rec: None, ticket });
                Self::prune(map, ticket);
                Some(Change::Removed(old))
            }
            (Some(old), Some(new)) if *old == new => {
                map.insert(
                    key.to_owned(),
                    Entry {
                        rec: Some(old),
                        ticket,
                    },
                );
                None
            }
            (old, Some(new)) => {
                let new = Arc::new(new);
                map.insert(
                    key.to_owned(),
                    Entry {
                        rec: Some(new.clone()),
                        ticket,
                    },
                );
                Some(match old {
                    None => Change::Added(new),
                    Some(old) => Change::Changed { old, new },
                })
            }
        };
        if let Some(c) = change {
            let _ = self.changes.send(c);
        }
        map.get(key).and_then(|e| e.rec.clone())
    }

    fn prune(map: &mut HashMap<String, Entry<R>>, now: u64) {
        let tombstones = map.values().filter(|e| e.rec.is_none()).count();
        if tombstones > TOMBSTONES_KEPT {
            map.retain(|_, e| e.rec.is_some() || e.ticket + TOMBSTONE_AGE > now);
        }
    }

    /// Apply a reading of a whole scope taken under `ticket`: every record
    /// in `records` is stored; records in scope (`in_scope`) that the
    /// reading did not contain are removed.
    pub fn replace_scope(&self, records: Vec<R>, in_scope: impl Fn(&R) -> bool, ticket: u64) {
        let mut map = self.write();
        let mut seen = HashSet::new();
        for rec in records {
            let key = rec.key().to_owned();
            seen.insert(key.clone());
            self.apply_locked(&mut map, &key, Some(rec), ticket);
        }
        let gone: Vec<String> = map
            .iter()
            .filter(|(k, e)| !seen.contains(*k) && e.rec.as_deref().is_some_and(&in_scope))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.apply_locked(&mut map, &key, None, ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Rec {
        id: String,
        group: u8,
        value: u32,
    }

    impl Keyed for Rec {
        fn key(&self) -> &str {
            &self.id
        }
    }

    fn rec(id: &str, group: u8, value: u32) -> Rec {
        Rec {
            id: id.into(),
            group,
            value,
        }
    }

    fn drain<R>(rx: &mut UnboundedReceiver<Change<R>>) -> Vec<Change<R>> {
        let mut v = Vec::new();
        while let Ok(c) = rx.try_recv() {
            v.push(c);
        }
        v
    }

    #[test]
    fn additions_changes_and_removals_are_published_once_each() {
        let (s, mut rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let t = s.ticket();
        s.apply("a", Some(rec("a", 0, 1)), t);
        s.apply("a", Some(rec("a", 0, 1)), s.ticket()); // same: nothing
        s.apply("a", Some(rec("a", 0, 2)), s.ticket());
        s.apply("a", None, s.ticket());
        s.apply("a", None, s.ticket()); // gone already: nothing
        let changes = drain(&mut rx);
        assert_eq!(changes.len(), 3);
        assert!(matches!(&changes[0], Change::Added(r) if r.value == 1));
        assert!(
            matches!(&changes[1], Change::Changed { old, new } if old.value == 1 && new.value == 2)
        );
        assert!(matches!(&changes[2], Change::Removed(r) if r.value == 2));
    }

    #[test]
    fn an_older_reading_never_replaces_a_newer_one() {
        let (s, mut rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let old = s.ticket();
        let new = s.ticket();
        s.apply("a", Some(rec("a", 0, 2)), new);
        s.apply("a", Some(rec("a", 0, 1)), old);
        s.apply("a", None, old);
        assert_eq!(s.get("a").map(|r| r.value), Some(2));
        assert_eq!(drain(&mut rx).len(), 1);
    }

    #[test]
    fn an_older_reading_never_brings_back_a_removed_record() {
        let (s, mut rx) = Store::new(Arc::new(AtomicU64::new(1)));
        s.apply("a", Some(rec("a", 0, 1)), s.ticket());
        let old = s.ticket(); // a reading starts…
        s.apply("a", None, s.ticket()); // …the record is removed…
        s.apply("a", Some(rec("a", 0, 1)), old); // …and the reading lands late.
        assert!(s.get("a").is_none());
        assert!(s.all().is_empty() && s.is_empty());
        assert_eq!(drain(&mut rx).len(), 2); // added, removed; nothing more
                                             // A newer reading may bring it back.
        s.apply("a", Some(rec("a", 0, 2)), s.ticket());
        assert_eq!(s.get("a").map(|r| r.value), Some(2));
    }

    #[test]
    fn a_scope_reading_removes_only_what_is_missing_from_that_scope() {
        let (s, mut rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let t = s.ticket();
        s.apply("a", Some(rec("a", 1, 0)), t);
        s.apply("b", Some(rec("b", 1, 0)), t);
        s.apply("c", Some(rec("c", 2, 0)), t);
        drain(&mut rx);
        s.replace_scope(vec![rec("a", 1, 5)], |r| r.group == 1, s.ticket());
        let mut keys: Vec<_> = s.all().iter().map(|r| r.id.clone()).collect();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
        let changes = drain(&mut rx);
        assert_eq!(changes.len(), 2); // a changed, b removed; c untouched
    }
}
