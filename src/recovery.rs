//! Start-up recovery: rolling back what vapord instances that died left half
//! done, without ever touching an operation that is still running.
//!
//! - Only one vapord per state directory recovers: the one holding the
//!   recovery lock (see [`IntentLog::lock`]). A vapord started with
//!   `--replace` gets it once the one it replaces has exited.
//! - Until recovery has looked at the records, new creations are refused
//!   (`Unavailable`); afterwards, only creations that touch a name or path of
//!   a record not rolled back yet are, so a new volume is never mistaken for
//!   a leftover one.
//! - Records that cannot be undone yet (libvirtd still copying a volume for
//!   the dead vapord, or libvirtd not there) are retried in the background.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::intent::{IntentLog, RecoveryLock, Step};
use crate::libvirt::Hypervisor;
use crate::services::creation::CreationService;
use crate::services::rollback::{self, Leftover};

/// How often an unfinished operation is tried again (2 s apart) before it is
/// left, still held, for the next start.
const ATTEMPTS: u32 = 150;

/// Names and paths of records not rolled back yet.
fn held(left: &[Leftover]) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut paths = Vec::new();
    for rec in left.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        names.push(rec.subject.clone());
        for step in &rec.steps {
            if let Step::Volume { path, .. } = step {
                paths.push(path.clone());
            }
        }
    }
    (names, paths)
}

/// One pass; returns what is not undone yet.
async fn recover_once(hv: &Arc<Hypervisor>, log: &IntentLog, left: Vec<Leftover>) -> Vec<Leftover> {
    let l = log.clone();
    let these = left.clone();
    match hv
        .session(move |s| Ok(rollback::recover(s, &l, these)))
        .await
    {
        Ok(rest) => rest,
        Err(e) => {
            log::warn!("cannot roll back unfinished operations yet: {e}");
            left
        }
    }
}

/// Recover what earlier vapords left, as far as possible now, and keep at
/// the rest in the background. Call it before the bus name is requested: when
/// this vapord holds the lock and libvirt answers (the usual case), a retried
/// creation of the same name then finds the ground clear.
pub async fn start(
    hv: Arc<Hypervisor>,
    log: IntentLog,
    engine: Arc<CreationService>,
    connected: watch::Receiver<bool>,
) -> Result<(), String> {
    match take_lock(&log).await? {
        Some(lock) => recover_holding(lock, hv, log, engine, connected, false).await,
        None => {
            log::info!(
                "another vapord is using this state directory; unfinished operations are rolled back once it has exited"
            );
            tokio::spawn(async move {
                // Polled, never a blocking wait: this vapord must be able to
                // exit meanwhile (replaced, or told to stop).
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match take_lock(&log).await {
                        Ok(Some(lock)) => {
                            recover_holding(lock, hv, log, engine, connected, true).await;
                            return;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            log::error!("{e}; creations stay refused");
                            return;
                        }
                    }
                }
            });
        }
    }
    Ok(())
}

async fn take_lock(log: &IntentLog) -> Result<Option<RecoveryLock>, String> {
    let log = log.clone();
    match tokio::task::spawn_blocking(move || log.lock()).await {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err(e)) => Err(format!("cannot take the recovery lock: {e}")),
        Err(e) => Err(format!("cannot take the recovery lock: {e}")),
    }
}

/// Recover with the lock held (for the rest of the process's life); the
/// retries go on in the background unless this already is.
async fn recover_holding(
    lock: RecoveryLock,
    hv: Arc<Hypervisor>,
    log: IntentLog,
    engine: Arc<CreationService>,
    connected: watch::Receiver<bool>,
    in_background: bool,
) {
    std::mem::forget(lock);
    let left = first_pass(&hv, &log, &engine).await;
    if left.is_empty() {
        return;
    }
    let retries = keep_at_it(hv, log, engine, left, connected);
    if in_background {
        retries.await;
    } else {
        tokio::spawn(retries);
    }
}

async fn first_pass(
    hv: &Arc<Hypervisor>,
    log: &IntentLog,
    engine: &CreationService,
) -> Vec<Leftover> {
    let l = log.clone();
    let mut left = tokio::task::spawn_blocking(move || {
        if let Err(e) = l.clear_scratch() {
            log::warn!("{e}");
        }
        l.leftovers()
    })
    .await
    .unwrap_or_default();
    let (names, paths) = held(&left);
    engine.hold(names, paths);
    if !left.is_empty() && hv.is_connected() {
        left = recover_once(hv, log, left).await;
        let (names, paths) = held(&left);
        engine.hold(names, paths);
    }
    left
}

async fn keep_at_it(
    hv: Arc<Hypervisor>,
    log: IntentLog,
    engine: Arc<CreationService>,
    mut left: Vec<Leftover>,
    mut connected: watch::Receiver<bool>,
) {
    for _ in 0..ATTEMPTS {
        tokio::time::sleep(Duration::from_secs(2)).await;
        while !*connected.borrow_and_update() {
            if connected.changed().await.is_err() {
                return;
            }
        }
        left = recover_once(&hv, &log, left).await;
        let (names, paths) = held(&left);
        engine.hold(names, paths);
        if left.is_empty() {
            return;
        }
    }
    log::error!(
        "{} unfinished operations could not be rolled back; their names and paths stay refused until the next start, which tries again",
        left.len()
    );
}
