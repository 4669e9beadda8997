//! Undoing what an operation made, from its intent record (see
//! [`crate::intent`]): in-process when a step fails or the caller cancels, and
//! at start-up for operations that died with the daemon.
//!
//! Steps are undone in reverse order. A volume is deleted only when it is
//! provably ours: libvirt returned it to us (`made`), or the file was born
//! after the step was recorded. A domain is ours by its UUID, which the
//! operation chose itself.

use std::path::Path;

use crate::intent::{IntentLog, Step};
use crate::libvirt::{Session, Undefine};
use crate::Error;

/// How far a file system's birth time may lag behind the clock the record
/// was stamped with (file systems use a coarse clock).
const CLOCK_SLACK_NS: u64 = 100_000_000;

/// Whether the file at `path` was born at or after `not_before_ns`; None when
/// the file system cannot tell.
fn born_after(path: &str, not_before_ns: u64) -> Option<bool> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let born = meta.created().ok()?;
    let ns = u64::try_from(born.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()?;
    Some(ns + CLOCK_SLACK_NS >= not_before_ns)
}

/// Whether a recorded volume may be deleted: the pure rule. libvirt never
/// creates over an existing file, so a volume it returned (`made`) is ours;
/// otherwise only a file born after the step was recorded is.
pub fn volume_is_ours(made: bool, born_after_record: Option<bool>) -> bool {
    made || born_after_record == Some(true)
}

/// What undoing an operation's domain removes with it: everything libvirt
/// keeps for it (TPM state included), and its NVRAM file unless that may be
/// an earlier VM's (`keep_nvram`). Pure.
pub fn undefine_made_domain(keep_nvram: bool) -> Undefine {
    Undefine {
        remove_nvram: !keep_nvram,
        remove_tpm: true,
    }
}

/// Who is undoing: the operation itself, which knows what libvirt made for
/// it, or start-up recovery, which must also judge files by birth time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undoer {
    InProcess,
    Recovery,
}

/// How long after its last write a record waits for volumes libvirtd may
/// still be making.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Volumes a record says are being made whose files are not there: what a
/// patient recovery waits for.
pub fn awaited_volumes(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Volume {
                path, made: false, ..
            } if Path::new(path).symlink_metadata().is_err() => {
                Some(format!("{path} may still be in the making"))
            }
            _ => None,
        })
        .collect()
}

/// Undo `steps` (in reverse); returns what could not be undone.
pub fn undo(s: &Session, steps: &[Step], by: Undoer) -> Vec<String> {
    let mut problems = Vec::new();
    for step in steps.iter().rev() {
        match step {
            Step::Domain { uuid, keep_nvram } => {
                let Ok(d) = s.domain(uuid) else {
                    continue;
                };
                if d.is_active().unwrap_or(false) {
                    let _ = d.destroy();
                }
                if let Err(e) = d.undefine(undefine_made_domain(*keep_nvram)) {
                    problems.push(format!("cannot undefine the new domain: {e}"));
                }
            }
            Step::Volume {
                path,
                not_before_ns,
                made,
            } => {
                if Path::new(path).symlink_metadata().is_err() {
                    continue;
                }
                // In process, a volume libvirt did not return to us is never
                // ours: another request may have made it meanwhile.
                let born = match by {
                    Undoer::InProcess => None,
                    Undoer::Recovery => born_after(path, *not_before_ns),
                };
                if !volume_is_ours(*made, born) {
                    log::warn!("not deleting {path}: it was not made by this operation");
                    continue;
                }
                match s.volume_at(path) {
                    Ok(v) => {
                        if let Err(e) = v.delete() {
                            problems.push(format!("cannot delete {path}: {e}"));
                        }
                    }
                    Err(Error::NotFound(_)) => {
                        // Made, but the pool has not seen it yet.
                        if let Err(e) = std::fs::remove_file(path) {
                            problems.push(format!("cannot delete {path}: {e}"));
                        }
                    }
                    Err(e) => problems.push(format!("cannot look up {path}: {e}")),
                }
            }
            Step::Scratch { path } => {
                if let Err(e) = std::fs::remove_dir_all(path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        problems.push(format!("cannot remove {path}: {e}"));
                    }
                }
            }
        }
    }
    problems
}

/// End an operation that recorded its steps in `intent`: on failure undo
/// them (saying so in the error when cleaning up was incomplete; `what`
/// names the operation, e.g. "creation"), then close the record either way.
pub fn conclude<T>(
    s: &Session,
    intent: crate::intent::Intent,
    result: crate::Result<T>,
    what: &str,
) -> crate::Result<T> {
    let result = result.map_err(|e| {
        let problems = undo(s, intent.steps(), Undoer::InProcess);
        if problems.is_empty() {
            e
        } else {
            e.context(format!(
                "{what} failed and cleaning up was incomplete ({})",
                problems.join("; ")
            ))
        }
    });
    // Done or undone: either way nothing is left for a later start to undo.
    let closed = if result.is_ok() {
        intent.complete()
    } else {
        intent.finish()
    };
    if let Err(e) = closed {
        log::error!("{e}");
    }
    result
}

/// An intent record left by an operation that did not finish, as
/// [`IntentLog::leftovers`] lists it.
pub type Leftover = (
    std::path::PathBuf,
    std::result::Result<crate::intent::Record, String>,
);

/// Roll back the operations that died with an earlier vapord: `leftovers`
/// as [`IntentLog::leftovers`] listed them at start-up, before any new
/// operation could begin. Returns those that could not be fully undone yet
/// (libvirtd may still be finishing a copy the dead vapord started), for
/// the caller to try again.
///
/// A young record (written less than [`PATIENCE`] ago) naming a volume that
/// does not exist (yet) is kept for a later pass instead of dropped:
/// libvirtd may still be carrying out the creation the dead vapord asked
/// for, and the file would otherwise appear after its record is gone.
pub fn recover(s: &Session, log: &IntentLog, leftovers: Vec<Leftover>) -> Vec<Leftover> {
    let mut remaining = Vec::new();
    for (file, record) in leftovers {
        let rec = match &record {
            Ok(r) => r,
            Err(e) => {
                // Written atomically, so this is no torn write: leave it for
                // a person to look at.
                log::error!(
                    "unreadable intent record {}: {e}; left in place",
                    file.display()
                );
                continue;
            }
        };
        if rec.completed {
            // It finished; only the record's removal was lost.
            if let Err(e) = log.discard(&file) {
                log::error!("{e}");
            }
            continue;
        }
        // Looked at before undoing, which removes files itself.
        let awaited = if IntentLog::age(&file) < PATIENCE {
            awaited_volumes(&rec.steps)
        } else {
            Vec::new()
        };
        let mut problems = undo(s, &rec.steps, Undoer::Recovery);
        problems.extend(awaited);
        if problems.is_empty() {
            log::warn!(operation = rec.operation.as_str(), subject = rec.subject.as_str(), uid = rec.uid;
                "rolled back an unfinished {} of '{}' left by an earlier vapord", rec.operation, rec.subject);
            if let Err(e) = log.discard(&file) {
                log::error!("{e}");
            }
        } else {
            log::warn!(operation = rec.operation.as_str(), subject = rec.subject.as_str();
                "cannot fully roll back an unfinished {} of '{}' yet: {}",
                rec.operation, rec.subject, problems.join("; "));
            remaining.push((file, record));
        }
    }
    remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_ours_only_when_made_or_born_after_its_record() {
        assert!(volume_is_ours(true, Some(false)));
        assert!(volume_is_ours(true, None));
        assert!(volume_is_ours(false, Some(true)));
        // Someone else's file at the planned path (born before we recorded),
        // or a file system without birth times: not ours.
        assert!(!volume_is_ours(false, Some(false)));
        assert!(!volume_is_ours(false, None));
    }

    #[test]
    fn a_made_domain_goes_whole_but_an_earlier_vms_nvram_stays() {
        assert_eq!(
            undefine_made_domain(false),
            Undefine {
                remove_nvram: true,
                remove_tpm: true
            }
        );
        assert_eq!(
            undefine_made_domain(true),
            Undefine {
                remove_nvram: false,
                remove_tpm: true
            }
        );
    }

    #[test]
    fn unmade_volumes_without_files_are_awaited() {
        let tmp = tempfile::tempdir().unwrap();
        let there = tmp.path().join("there");
        std::fs::write(&there, "x").unwrap();
        let steps = vec![
            Step::Volume {
                path: there.to_string_lossy().into_owned(),
                not_before_ns: 0,
                made: false,
            },
            Step::Volume {
                path: "/nonexistent/made.qcow2".into(),
                not_before_ns: 0,
                made: true,
            },
            Step::Volume {
                path: "/nonexistent/pending.qcow2".into(),
                not_before_ns: 0,
                made: false,
            },
        ];
        assert_eq!(
            awaited_volumes(&steps),
            vec!["/nonexistent/pending.qcow2 may still be in the making".to_string()]
        );
    }

    #[test]
    fn birth_time_is_compared_to_the_record() {
        let tmp = tempfile::tempdir().unwrap();
        let before = crate::intent::now_ns();
        let f = tmp.path().join("v");
        std::fs::write(&f, "x").unwrap();
        let p = f.to_str().unwrap();
        if let Some(after) = born_after(p, before) {
            assert!(after);
            assert_eq!(
                born_after(p, crate::intent::now_ns() + 10_000_000_000),
                Some(false)
            );
        }
    }
}
