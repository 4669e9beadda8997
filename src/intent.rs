//! Intent records: how a multi-step operation that dies half way (SIGKILL, a
//! power cut) is rolled back at the next start.
//!
//! Before each step that makes something (a volume, a domain definition, a
//! scratch directory), the operation appends the step to its record in
//! `<state_dir>/intents/<id>.json`, written atomically and synced, so the
//! record always names at least everything that exists. A finished operation
//! (successful, or rolled back in-process) removes its record. At start-up,
//! every record left over belongs to an operation that died: the daemon
//! undoes its steps (see `services::rollback`) and removes it.
//!
//! Scratch files (a cloud-init seed being built holds the user data, which can
//! carry secrets) live in `<state_dir>/scratch/`, mode 0700, never in `/tmp`;
//! everything there is removed at start-up.
//!
//! This module only keeps the records; it never talks to libvirt.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::{Error, Result};

/// One thing an operation makes, recorded before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// A storage volume about to be created at `path`. `made` turns true once
    /// libvirt returned it; before that, a file at `path` is only ours if it
    /// was born after `not_before_ns` (nanoseconds since the epoch), so a
    /// crash between the record and the creation never deletes a file
    /// someone else made.
    Volume {
        path: String,
        not_before_ns: u64,
        made: bool,
    },
    /// A domain about to be defined with this UUID (chosen by the operation,
    /// so a domain with it can only be ours). `keep_nvram`: its firmware
    /// variables file existed before and is not ours to delete.
    Domain { uuid: String, keep_nvram: bool },
    /// A private directory for scratch files.
    Scratch { path: String },
}

/// What an unfinished operation was doing, as written to its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `vm-create`, later `volume-clone`, `volume-upload`, `restore`, …
    pub operation: String,
    /// What it was about (a VM name), for logs.
    pub subject: String,
    /// Who asked for it.
    pub uid: u32,
    pub steps: Vec<Step>,
    /// The operation succeeded; only removing the record was left. A record
    /// found in this state is dropped, never undone.
    #[serde(default)]
    pub completed: bool,
}

/// The directory of intent records and scratch space.
#[derive(Debug, Clone)]
pub struct IntentLog {
    intents: PathBuf,
    scratch: PathBuf,
}

/// The right to roll back and clear scratch space: one vapord at a time
/// (`flock` on `intents/.lock`, held for the process's life). A vapord that
/// replaces another (`--replace`) gets it only once the old one has exited,
/// so it never undoes an operation that is still running.
#[derive(Debug)]
pub struct RecoveryLock(#[allow(dead_code)] fs::File);

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn private_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::symlink_metadata(path)
                .map_err(|e| Error::Failed(format!("cannot read {}: {e}", path.display())))?;
            if !meta.is_dir() {
                return Err(Error::Failed(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::Failed(format!("cannot protect {}: {e}", path.display())))
        }
        Err(e) => Err(Error::Failed(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

impl IntentLog {
    /// The records under `state_dir` (directories made 0700 if missing).
    pub fn open(state_dir: &Path) -> Result<Self> {
        let log = Self {
            intents: state_dir.join("intents"),
            scratch: state_dir.join("scratch"),
        };
        private_dir(&log.intents)?;
        private_dir(&log.scratch)?;
        Ok(log)
    }

    /// Take the recovery lock if no other vapord on the same state directory
    /// holds it (None then).
    pub fn lock(&self) -> Result<Option<RecoveryLock>> {
        use std::os::fd::AsRawFd;
        let path = self.intents.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Failed(format!("cannot open {}: {e}", path.display())))?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(RecoveryLock(file)));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return Ok(None),
                _ => {
                    return Err(Error::Failed(format!(
                        "cannot lock {}: {e}",
                        path.display()
                    )))
                }
            }
        }
    }

    /// Start recording an operation (nothing is made yet).
    pub fn begin(&self, operation: &str, subject: &str, uid: u32) -> Result<Intent> {
        let id = format!("{operation}-{}", uuid::Uuid::new_v4().simple());
        let intent = Intent {
            path: self.intents.join(format!("{id}.json")),
            scratch_root: self.scratch.clone(),
            id,
            record: Record {
                operation: operation.to_owned(),
                subject: subject.to_owned(),
                uid,
                steps: Vec::new(),
                completed: false,
            },
            finished: false,
        };
        intent.save()?;
        Ok(intent)
    }

    /// Records left by operations that did not finish, with their file (a
    /// record that cannot be read comes back as the reason).
    pub fn leftovers(&self) -> Vec<(PathBuf, std::result::Result<Record, String>)> {
        let Ok(dir) = fs::read_dir(&self.intents) else {
            return Vec::new();
        };
        let mut out: Vec<_> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let rec = fs::read(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
                (p, rec)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// How long ago a record was last written.
    pub fn age(record: &Path) -> std::time::Duration {
        fs::metadata(record)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default()
    }

    /// Forget a record whose steps were undone.
    pub fn discard(&self, record: &Path) -> Result<()> {
        match fs::remove_file(record) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Failed(format!(
                "cannot remove {}: {e}",
                record.display()
            ))),
        }
    }

    /// Remove every scratch file (at start-up, when no operation runs).
    pub fn clear_scratch(&self) -> Result<()> {
        let dir = fs::read_dir(&self.scratch)
            .map_err(|e| Error::Failed(format!("cannot read {}: {e}", self.scratch.display())))?;
        for entry in dir.filter_map(|e| e.ok()) {
            let p = entry.path();
            let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            if let Err(e) = gone {
                log::warn!("cannot remove scratch file {}: {e}", p.display());
            }
        }
        Ok(())
    }
}

/// The record of one running operation. Dropping it without
/// [`Intent::finish`] leaves the record for the next start to roll back —
/// exactly what a crash does.
#[derive(Debug)]
pub struct Intent {
    path: PathBuf,
    scratch_root: PathBuf,
    id: String,
    record: Record,
    finished: bool,
}

impl Intent {
    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(&self.record)
            .map_err(|e| Error::Failed(format!("cannot encode an intent record: {e}")))?;
        write_atomic(&self.path, &text)
            .map_err(|e| Error::Failed(format!("cannot write {}: {e}", self.path.display())))
    }

    /// Record a step before carrying it out.
    pub fn record(&mut self, step: Step) -> Result<()> {
        self.record.steps.push(step);
        self.save()
    }

    /// Mark the volume at `path` as made by us.
    pub fn volume_made(&mut self, path: &str) -> Result<()> {
        for step in self.record.steps.iter_mut().rev() {
            if let Step::Volume { path: p, made, .. } = step {
                if p == path {
                    *made = true;
                    return self.save();
                }
            }
        }
        Ok(())
    }

    /// A fresh private (0700) scratch directory for this operation, recorded
    /// first so that it is removed whatever happens.
    pub fn scratch_dir(&mut self) -> Result<PathBuf> {
        let dir = self.scratch_root.join(&self.id);
        self.record(Step::Scratch {
            path: dir.to_string_lossy().into_owned(),
        })?;
        private_dir(&dir)?;
        Ok(dir)
    }

    /// Everything recorded so far, in order.
    pub fn steps(&self) -> &[Step] {
        &self.record.steps
    }

    /// The operation succeeded: say so in the record first (synced), so that
    /// even if removing it fails or is lost in a power cut, the next start
    /// drops it instead of undoing a finished operation.
    pub fn complete(mut self) -> Result<()> {
        self.record.completed = true;
        // Removing the record matters most (a full disk can refuse the mark
        // but not the removal): try it whatever the mark did.
        let marked = self.save();
        match (marked, self.finish()) {
            (_, Ok(())) => Ok(()),
            (Ok(()), Err(e)) => Err(e),
            (Err(mark), Err(remove)) => Err(Error::Failed(format!(
                "a finished operation's record could neither be marked ({mark}) nor removed \
                 ({remove}); remove it by hand, or the next start undoes the operation"
            ))),
        }
    }

    /// The operation is over (done, or undone in-process): drop its record.
    pub fn finish(mut self) -> Result<()> {
        self.finished = true;
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Failed(format!(
                    "cannot remove {}: {e}",
                    self.path.display()
                )))
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::Failed(format!("cannot sync {}: {e}", dir.display())))
    }
}

impl Drop for Intent {
    fn drop(&mut self) {
        if !self.finished && !std::thread::panicking() {
            log::debug!(
                "intent {} left for recovery at the next start",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_written_before_steps_and_removed_when_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let log = IntentLog::open(tmp.path()).unwrap();
        let mut i = log.begin("vm-create", "web", 1000).unwrap();
        i.record(Step::Volume {
            path: "/p/a.qcow2".into(),
            not_before_ns: 5,
            made: false,
        })
        .unwrap();
        let left = log.leftovers();
        assert_eq!(left.len(), 1);
        let rec = left[0].1.clone().unwrap();
        assert_eq!(rec.operation, "vm-create");
        assert_eq!(rec.subject, "web");
        assert_eq!(rec.uid, 1000);
        assert_eq!(
            rec.steps,
            vec![Step::Volume {
                path: "/p/a.qcow2".into(),
                not_before_ns: 5,
                made: false
            }]
        );
        i.volume_made("/p/a.qcow2").unwrap();
        let rec = log.leftovers()[0].1.clone().unwrap();
        assert!(matches!(rec.steps[0], Step::Volume { made: true, .. }));
        i.finish().unwrap();
        assert!(log.leftovers().is_empty());
    }

    #[test]
    fn a_dropped_intent_stays_for_recovery() {
        let tmp = tempfile::tempdir().unwrap();
        let log = IntentLog::open(tmp.path()).unwrap();
        {
            let mut i = log.begin("vm-create", "db", 0).unwrap();
            i.record(Step::Domain {
                uuid: "u".into(),
                keep_nvram: false,
            })
            .unwrap();
        }
        let left = log.leftovers();
        assert_eq!(left.len(), 1);
        log.discard(&left[0].0).unwrap();
        assert!(log.leftovers().is_empty());
    }

    #[test]
    fn scratch_is_private_recorded_and_cleared() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let log = IntentLog::open(tmp.path()).unwrap();
        let mut i = log.begin("vm-create", "x", 0).unwrap();
        let dir = i.scratch_dir().unwrap();
        assert!(dir.starts_with(tmp.path().join("scratch")));
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let root_mode = fs::metadata(tmp.path().join("scratch"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(root_mode, 0o700);
        assert!(matches!(i.steps()[0], Step::Scratch { .. }));
        fs::write(dir.join("user-data"), "secret").unwrap();
        drop(i);
        log.clear_scratch().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn a_completed_record_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let log = IntentLog::open(tmp.path()).unwrap();
        let i = log.begin("vm-create", "x", 0).unwrap();
        i.complete().unwrap();
        assert!(log.leftovers().is_empty());
    }

    #[test]
    fn one_process_holds_the_recovery_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let log = IntentLog::open(tmp.path()).unwrap();
        let held = log.lock().unwrap();
        assert!(held.is_some());
        // flock locks belong to the open file: a second open is refused.
        assert!(log.lock().unwrap().is_none());
        drop(held);
        assert!(log.lock().unwrap().is_some());
    }

    #[test]
    fn unreadable_records_are_reported_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let log = IntentLog::open(tmp.path()).unwrap();
        fs::write(tmp.path().join("intents/bad.json"), "{half").unwrap();
        let left = log.leftovers();
        assert_eq!(left.len(), 1);
        assert!(left[0].1.is_err());
    }
}
