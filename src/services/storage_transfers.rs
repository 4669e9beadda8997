//! Uploads and downloads of volumes: the limits on how many run at once
//! (per caller and in all) and the bridge from a job's progress to the
//! stream's report and cancel flag.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::progress::Progress;
use crate::{Error, Result};

/// At most this many transfers (uploads and downloads) run at once for
/// one caller …
pub const MAX_TRANSFERS_PER_CALLER: usize = 4;
/// … and in all.
pub const MAX_TRANSFERS: usize = 16;

/// Counts of running transfers, so no caller can tie up every daemon
/// thread with descriptors it never serves.
#[derive(Debug)]
pub struct Transfers {
    per_caller: usize,
    total: usize,
    /// What they are, for refusals ("uploads and downloads").
    what: &'static str,
    running: Mutex<HashMap<u32, usize>>,
}

/// One running transfer; its slot is given back on drop.
#[derive(Debug)]
pub struct TransferSlot<'a> {
    transfers: &'a Transfers,
    uid: u32,
}

impl Transfers {
    pub fn new(per_caller: usize, total: usize) -> Self {
        Self::of("uploads and downloads", per_caller, total)
    }

    /// [`Transfers::new`] for other work than volume transfers.
    pub fn of(what: &'static str, per_caller: usize, total: usize) -> Self {
        Transfers {
            per_caller,
            total,
            what,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one more transfer of caller `uid`, or `LimitExceeded`
    /// naming the limit reached.
    pub fn take(&self, uid: u32) -> Result<TransferSlot<'_>> {
        let mut running = self.running();
        let total: usize = running.values().sum();
        let mine = running.get(&uid).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(Error::LimitExceeded(format!(
                "at most {} {} may run at once per caller; wait for one to finish",
                self.per_caller, self.what
            )));
        }
        if total >= self.total {
            return Err(Error::LimitExceeded(format!(
                "at most {} {} may run at once; try again later",
                self.total, self.what
            )));
        }
        *running.entry(uid).or_insert(0) += 1;
        Ok(TransferSlot {
            transfers: self,
            uid,
        })
    }

    /// Transfers running now: (this caller's, all).
    pub fn count(&self, uid: u32) -> (usize, usize) {
        let running = self.running();
        (
            running.get(&uid).copied().unwrap_or(0),
            running.values().sum(),
        )
    }
}

impl Drop for TransferSlot<'_> {
    fn drop(&mut self) {
        let mut running = self.transfers.running();
        if let Some(n) = running.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.uid);
            }
        }
    }
}

/// How often a transfer's cancel flag is brought up to date with its job
/// while no chunk moves (a caller's pipe that sends nothing).
const CANCEL_WATCH: std::time::Duration = std::time::Duration::from_millis(250);

/// Set `flag` once `progress` is cancelled, looking every `every`, for as
/// long as anyone else holds the flag.
pub(super) async fn follow_cancel(
    progress: Arc<dyn Progress>,
    flag: std::sync::Weak<AtomicBool>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(flag) = flag.upgrade() else {
            return;
        };
        if progress.cancelled() {
            flag.store(true, Ordering::SeqCst);
            return;
        }
    }
}

/// Turn a job's progress into the stream's report and cancel flag. The
/// flag follows the job even while nothing moves, so a transfer waiting on
/// an idle descriptor stops within a second of a Cancel.
pub(super) fn bridge(
    progress: Arc<dyn Progress>,
    step: &'static str,
    total: u64,
) -> (Arc<dyn Fn(u64) + Send + Sync>, Arc<AtomicBool>) {
    let cancel = Arc::new(AtomicBool::new(progress.cancelled()));
    tokio::spawn(follow_cancel(
        progress.clone(),
        Arc::downgrade(&cancel),
        CANCEL_WATCH,
    ));
    let flag = cancel.clone();
    let report = Arc::new(move |done: u64| {
        progress.update(step, done, total);
        if progress.cancelled() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    (report, cancel)
}

#[cfg(test)]
#[path = "storage_transfers_tests.rs"]
mod tests;
