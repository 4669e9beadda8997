//! How long work (a VM creation, a volume upload, …) reports progress and
//! learns that its caller wants it stopped. The bus layer turns these
//! reports into a Job object; services know nothing of D-Bus.

use std::sync::atomic::{AtomicBool, Ordering};

/// Progress reports from long work (the bus turns them into a Job).
pub trait Progress: Send + Sync {
    /// `done` of `total` bytes are made; `step` says what is happening.
    fn update(&self, step: &str, done: u64, total: u64);
    /// Whether the caller asked to stop.
    fn cancelled(&self) -> bool;
    /// Figures particular to the work (a migration's remaining bytes,
    /// iteration, expected downtime …), by name; the newest replace all.
    fn figures(&self, _figures: &[(&'static str, u64)]) {}
    /// What the work achieved, in words (the message of a successful
    /// Job's `Completed`).
    fn summary(&self, _text: &str) {}
}

/// A [`Progress`] that reports nowhere and never cancels.
pub struct NoProgress;
impl Progress for NoProgress {
    fn update(&self, _: &str, _: u64, _: u64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// A cancellation flag for [`Progress`] implementations.
#[derive(Default)]
pub struct CancelFlag(AtomicBool);
impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
