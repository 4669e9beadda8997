//! The decisions of `Manager.Apply` (see [`super::apply`]), as pure
//! functions: what a VM's definition lacks of its declared CPU and memory,
//! what the guest says of a file and whether it matches what is declared,
//! whether a share is mounted, whether the final snapshot is due, and the
//! report's shape.

use serde::Serialize;
use serde_json::Value;

use super::apply_doc::FileInjection;
use super::nfs_rules::NfsShare;
use super::vm_update::memory_kib;
use crate::libvirt::xml::Element;

/// How a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Something was changed to match the document.
    Changed,
    /// Already as declared (or, for a step that only looks, it looked).
    Unchanged,
    /// A dry run: this would be changed.
    WouldChange,
    /// A dry run: cannot be known before the guest runs.
    Unknown,
    Failed,
    /// Not reached: an earlier step of this VM failed.
    Skipped,
}

/// One step of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub step: &'static str,
    pub status: Status,
    pub detail: String,
}

/// One VM's part of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmReport {
    pub name: String,
    /// Empty when it does not exist (a dry run, or its creation failed).
    pub uuid: String,
    /// `changed`, `unchanged`, `failed`; in a dry run `would-change`, or
    /// `unknown` when what it would do depends on a guest that does not
    /// answer yet.
    pub result: &'static str,
    /// The kind of the failure, if it failed: the last part of its D-Bus
    /// error name (`Timeout`, `NotSupported` …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub steps: Vec<Step>,
    /// Fields that take effect only at the next start.
    pub pending: Vec<String>,
    /// cloud-init's status, as `GetCloudInitStatus` returns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<Value>,
}

/// The longest detail or error text a report carries per step.
pub const MAX_DETAIL: usize = 4096;
/// The most of cloud-init's report kept per VM (serialized).
pub const MAX_CLOUD_INIT: usize = 16 * 1024;

/// `s` cut to at most `max` bytes on a character boundary, `…` marking a
/// cut. Pure.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut at = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push('…');
    s
}

/// cloud-init's report as the apply report keeps it: whole when small,
/// else its status and the number of errors. Pure.
pub fn kept_cloud_init(v: Value) -> Value {
    if v.to_string().len() <= MAX_CLOUD_INIT {
        return v;
    }
    serde_json::json!({
        "status": cut(v["status"].as_str().unwrap_or("?").to_owned(), 64),
        "errors_count": v["errors"].as_array().map_or(0, Vec::len),
        "truncated": true,
    })
}

/// The steps of every VM, in order.
pub const STEPS: [&str; 8] = [
    "create",
    "resources",
    "start",
    "agent",
    "cloud-init",
    "nfs",
    "files",
    "snapshot",
];

impl VmReport {
    /// Whether a step changed (or would change) the VM's configuration or
    /// guest: what makes a final snapshot due. Starting it does not.
    pub fn changed_something(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.status, Status::Changed | Status::WouldChange) && s.step != "start")
    }

    /// The VM's overall result from its steps.
    pub fn conclude(&mut self) {
        self.result = if self.error.is_some() {
            "failed"
        } else if self.steps.iter().any(|s| s.status == Status::WouldChange) {
            "would-change"
        } else if self.steps.iter().any(|s| s.status == Status::Unknown) {
            "unknown"
        } else if self.steps.iter().any(|s| s.status == Status::Changed) {
            "changed"
        } else {
            "unchanged"
        };
    }
}

/// The whole report `Apply` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub vms: Vec<VmReport>,
    pub changed: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// Dry runs: VMs whose guest does not answer yet.
    pub unknown: usize,
}

impl Report {
    pub fn new(dry_run: bool, vms: Vec<VmReport>) -> Self {
        let count = |r: &[&str]| vms.iter().filter(|v| r.contains(&v.result)).count();
        Report {
            dry_run,
            changed: count(&["changed", "would-change"]),
            unchanged: count(&["unchanged"]),
            failed: count(&["failed"]),
            unknown: count(&["unknown"]),
            vms,
        }
    }

    /// One line for the Job's `Completed` and the log.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        let unknown = if self.unknown > 0 {
            format!(", {} unknown until their guest answers", self.unknown)
        } else {
            String::new()
        };
        format!(
            "{} VM(s): {} {verb}, {} unchanged, {} failed{unknown}",
            self.vms.len(),
            self.changed,
            self.unchanged,
            self.failed
        )
    }
}

/// What of the declared vCPUs and memory (MiB) the definition the VM
/// starts with lacks: the values to set, `None` where it already agrees.
pub fn resource_changes(
    config: &Element,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
) -> (Option<u32>, Option<u64>) {
    let el = config.child("vcpu");
    let max: u32 = el.and_then(|e| e.text.trim().parse().ok()).unwrap_or(1);
    let current = el
        .and_then(|e| e.attr("current"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(max);
    let max_kib = config.child("memory").and_then(memory_kib).unwrap_or(0);
    let current_kib = config
        .child("currentMemory")
        .and_then(memory_kib)
        .unwrap_or(max_kib);
    (
        vcpus.filter(|v| *v != current),
        memory_mib.filter(|m| m.saturating_mul(1024) != current_kib),
    )
}

/// A file in the guest, as the check script reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFile {
    Missing,
    /// A directory, a link, a device …: replaced by the write (or refused
    /// by it).
    NotRegular,
    Present {
        sha256: String,
        mode: u32,
        uid: u32,
        gid: u32,
        user: String,
        group: String,
    },
}

/// The check script, run as `sh -c CHECK sh PATH`: `missing`,
/// `notfile`, or the sha256 on one line and `mode uid gid user group` on
/// the next.
pub const CHECK_FILE: &str = r#"f=$1
if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then echo notfile; exit 0; fi
[ -e "$f" ] || { echo missing; exit 0; }
sha256sum -- "$f" | cut -d' ' -f1 || exit 1
stat -c '%a %u %g %U %G' -- "$f""#;

/// What [`CHECK_FILE`] printed. `None` when it is not what it prints.
pub fn parse_guest_file(out: &str) -> Option<GuestFile> {
    let mut lines = out.lines();
    match lines.next()?.trim() {
        "missing" => Some(GuestFile::Missing),
        "notfile" => Some(GuestFile::NotRegular),
        sha if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let f: Vec<&str> = lines.next()?.split_whitespace().collect();
            if f.len() != 5 {
                return None;
            }
            Some(GuestFile::Present {
                sha256: sha.to_ascii_lowercase(),
                mode: u32::from_str_radix(f[0], 8).ok()?,
                uid: f[1].parse().ok()?,
                gid: f[2].parse().ok()?,
                user: f[3].to_owned(),
                group: f[4].to_owned(),
            })
        }
        _ => None,
    }
}

/// How the guest's file differs from the declared one with content
/// `sha256`: `content`, `mode`, `owner` (empty: it matches). No owner
/// declared means root's, as `WriteFile` makes it; `user` alone leaves
/// the group as it is.
pub fn file_differences(f: &FileInjection, sha256: &str, state: &GuestFile) -> Vec<&'static str> {
    let GuestFile::Present {
        sha256: have,
        mode,
        uid,
        gid,
        user,
        group,
    } = state
    else {
        return vec!["content"];
    };
    let mut out = Vec::new();
    if !have.eq_ignore_ascii_case(sha256) {
        out.push("content");
    }
    if *mode != f.mode {
        out.push("mode");
    }
    let is = |name: &str, id: u32, want: &str| name == want || want.parse() == Ok(id);
    let owner_ok = match f.owner.as_deref() {
        None => *uid == 0 && *gid == 0,
        Some(o) => match o.split_once(':') {
            Some((u, g)) => is(user, *uid, u) && is(group, *gid, g),
            None => is(user, *uid, o),
        },
    };
    if !owner_ok {
        out.push("owner");
    }
    out
}

/// Whether `findmnt -n -o SOURCE,FSTYPE -M POINT` says `share` is
/// mounted there.
pub fn mounted(findmnt: &str, share: &NfsShare) -> bool {
    findmnt.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (Some(src), Some(fstype)) = (f.next(), f.next()) else {
            return false;
        };
        src.trim_end_matches('/') == share.host_path.trim_end_matches('/')
            && fstype.starts_with("nfs")
    })
}

/// Whether (and why) the final snapshot is made: when this apply changed
/// something, or when it is missing.
pub fn snapshot_due(changed: bool, exists: bool) -> Option<&'static str> {
    match (changed, exists) {
        (true, true) => Some("replaced: this apply changed the VM"),
        (true, false) => Some("made: this apply changed the VM"),
        (false, false) => Some("made: it was missing"),
        (false, true) => None,
    }
}

#[cfg(test)]
#[path = "apply_rules_tests.rs"]
mod tests;
