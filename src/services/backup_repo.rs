//! The backup repository: a directory vapord alone writes (`backup_dir`
//! in `vapord.toml`, default `<state_dir>/backups`), one directory per
//! backup named by its id, holding one compressed qcow2 per disk, the
//! domain XML, vapord's metadata and `manifest.json` with the size and
//! sha256 of every file.
//!
//! A backup is written into `.partial-<id>/` and renamed to `<id>/` only
//! after its manifest is on disk, so an interrupted backup is never listed
//! as complete; partial directories are removed at start-up. An
//! incremental backup's disk images have the parent's images as backing
//! files (relative paths inside the repository), so a chain restores by
//! reading its newest images.
//!
//! The chain and retention rules are pure functions with unit tests.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The manifest's format version.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const DOMAIN_XML: &str = "domain.xml";
const PARTIAL: &str = ".partial-";
/// Where the last verification's result is kept, beside the manifest.
const VERIFIED: &str = "verified.json";

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One disk of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    pub target: String,
    /// The image's file name (one of the manifest's files).
    pub file: String,
    /// The disk's size as the guest sees it.
    pub virtual_size: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub vm_uuid: String,
    pub vm_name: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// `full` or `incremental`.
    pub kind: String,
    /// The backup an incremental one builds on.
    pub parent: Option<String>,
    /// The libvirt checkpoint made with it (the base of the next
    /// incremental backup), if any.
    pub checkpoint: Option<String>,
    pub disks: Vec<DiskEntry>,
    pub files: Vec<FileEntry>,
}

/// A complete backup as the repository holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub manifest: Manifest,
    /// The result of the last Verify (None: never verified).
    pub verified: Option<bool>,
}

impl BackupRecord {
    pub fn id(&self) -> &str {
        &self.manifest.id
    }
    /// Bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.bytes).sum()
    }
}

/// A fresh backup id: the time and 8 random hex digits (`20261130_081502_1a2b3c4d`).
pub fn new_id(unix_secs: i64) -> String {
    let name = super::snapshot_rules::default_name(unix_secs);
    let stamp = name.trim_start_matches("snap-").replace('-', "_");
    let rnd = uuid::Uuid::new_v4().simple().to_string();
    format!("{stamp}_{}", &rnd[..8])
}

/// Whether `id` is an id vapord makes (and so safe as a path element).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether a file name from a manifest is a plain name inside its directory.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The repository at `root`.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    /// Open (and create, mode 0711: QEMU must reach the files libvirt
    /// hands it, nobody may list them) the repository. `strict` (a
    /// directory in a pool's target): the target must be a directory only
    /// root may write (else whoever may could swap the repository for a
    /// link between two of vapord's steps), and the repository a real
    /// directory of vapord's own, not a link or someone's volume.
    pub fn open(root: &Path, strict: bool) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let unavailable = |why: String| Error::Unavailable(format!("{}: {why}", root.display()));
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if strict {
            let parent = root
                .parent()
                .ok_or_else(|| unavailable("has no parent directory".into()))?;
            let m = std::fs::metadata(parent).map_err(|e| unavailable(e.to_string()))?;
            if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
                return Err(unavailable(format!(
                    "the pool's directory {} must be owned by root and writable by root \
                     alone (an NFS export needs no_root_squash)",
                    parent.display()
                )));
            }
        }
        let mut b = std::fs::DirBuilder::new();
        b.mode(0o711).recursive(!strict);
        match b.create(root) {
            Ok(()) => {}
            Err(e) if strict && e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(unavailable(format!("cannot create it: {e}"))),
        }
        if strict {
            let m = std::fs::symlink_metadata(root).map_err(|e| unavailable(e.to_string()))?;
            if !m.file_type().is_dir() || m.uid() != me {
                return Err(unavailable(
                    "is not a directory of vapord's own (a link, a file or another \
                     user's); move it away"
                        .into(),
                ));
            }
        }
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711));
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a complete backup.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The partial directory of backup `id`.
    pub fn partial_dir(&self, id: &str) -> PathBuf {
        self.root.join(format!("{PARTIAL}{id}"))
    }

    /// A new partial directory for `id` (mode 0711).
    pub fn start(&self, id: &str) -> Result<PathBuf> {
        let dir = self.partial_dir(id);
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .map_err(|e| Error::Failed(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// Write the manifest into the partial directory and make the backup
    /// complete (rename), syncing every file first: a backup listed as
    /// complete after a crash has all its bytes on disk.
    pub fn finish(&self, partial: &Path, manifest: &Manifest) -> Result<()> {
        for f in &manifest.files {
            let p = partial.join(&f.name);
            std::fs::File::open(&p)
                .and_then(|h| h.sync_all())
                .map_err(|e| Error::Failed(format!("cannot sync {}: {e}", p.display())))?;
        }
        let text = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::Failed(format!("cannot write the manifest: {e}")))?;
        crate::fsutil::write_atomic(&partial.join(MANIFEST), &text)
            .map_err(|e| Error::Failed(format!("cannot write the manifest: {e}")))?;
        let done = self.dir(&manifest.id);
        std::fs::rename(partial, &done)
            .map_err(|e| Error::Failed(format!("cannot complete the backup: {e}")))?;
        if let Ok(d) = std::fs::File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Remove a partial directory (a backup that failed or was cancelled).
    pub fn discard(&self, partial: &Path) {
        if partial.starts_with(&self.root) {
            let _ = std::fs::remove_dir_all(partial);
        }
    }

    /// The ids of the partial directories (backups being made, or left
    /// half done by a dead vapord).
    pub fn partial_ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(PARTIAL).map(str::to_owned)
            })
            .collect()
    }

    /// Every complete backup (a directory with a readable manifest naming
    /// itself; anything else is skipped with a warning).
    pub fn list(&self) -> Vec<BackupRecord> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !valid_id(&name) {
                continue;
            }
            match self.read(&name) {
                Ok(r) => out.push(r),
                Err(err) => log::warn!("backup repository: skipping {name}: {err}"),
            }
        }
        out.sort_by(|a, b| (a.manifest.created_at, a.id()).cmp(&(b.manifest.created_at, b.id())));
        out
    }

    /// One complete backup.
    pub fn read(&self, id: &str) -> Result<BackupRecord> {
        let dir = self.dir(id);
        let text = std::fs::read(dir.join(MANIFEST))
            .map_err(|e| Error::NotFound(format!("backup {id}: no manifest: {e}")))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| Error::Failed(format!("backup {id}: bad manifest: {e}")))?;
        check_manifest(id, &manifest)?;
        let verified = std::fs::read(dir.join(VERIFIED))
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("ok").and_then(|b| b.as_bool()));
        Ok(BackupRecord { manifest, verified })
    }

    /// Record a verification's result.
    pub fn set_verified(&self, id: &str, ok: bool, at: i64) -> Result<()> {
        let doc = serde_json::json!({"ok": ok, "at": at});
        crate::fsutil::write_atomic(&self.dir(id).join(VERIFIED), doc.to_string().as_bytes())
            .map_err(|e| Error::Failed(format!("cannot record the verification: {e}")))
    }

    /// Check every file of a backup against its manifest; the problems.
    pub fn verify(&self, rec: &BackupRecord) -> Vec<String> {
        self.verify_watched(rec, &mut |_| true).unwrap_or_default()
    }

    /// [`Self::verify`], telling `go` the size of each piece read; `None`
    /// when `go` said to stop.
    pub fn verify_watched(
        &self,
        rec: &BackupRecord,
        go: &mut dyn FnMut(u64) -> bool,
    ) -> Option<Vec<String>> {
        let dir = self.dir(rec.id());
        let mut problems = Vec::new();
        for f in &rec.manifest.files {
            let path = dir.join(&f.name);
            let read = match sha256_file_watched(&path, go) {
                Ok(None) => return None,
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            };
            match read {
                Ok((bytes, sum)) if bytes == f.bytes && sum == f.sha256 => {}
                Ok((bytes, _)) if bytes != f.bytes => problems.push(format!(
                    "{}: {} bytes, the manifest says {}",
                    f.name, bytes, f.bytes
                )),
                Ok(_) => problems.push(format!("{}: checksum differs from the manifest", f.name)),
                Err(e) => problems.push(format!("{}: {e}", f.name)),
            }
        }
        Some(problems)
    }

    /// Remove a complete backup.
    pub fn remove(&self, id: &str) -> Result<()> {
        if !valid_id(id) {
            return Err(Error::InvalidArgument(format!("no backup {id}")));
        }
        std::fs::remove_dir_all(self.dir(id))
            .map_err(|e| Error::Failed(format!("cannot remove backup {id}: {e}")))
    }
}

/// A manifest read from disk must name itself and only plain files.
fn check_manifest(id: &str, m: &Manifest) -> Result<()> {
    let bad = |why: String| Err(Error::Failed(format!("backup {id}: {why}")));
    if m.format != FORMAT {
        return bad(format!("manifest format {} is not {FORMAT}", m.format));
    }
    if m.id != id {
        return bad(format!("the manifest names backup {}", m.id));
    }
    if let Some(f) = m.files.iter().find(|f| !plain_file_name(&f.name)) {
        return bad(format!("the manifest lists the file {:?}", f.name));
    }
    let names: HashSet<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    if let Some(d) = m.disks.iter().find(|d| !names.contains(d.file.as_str())) {
        return bad(format!("disk {} has no file in the manifest", d.target));
    }
    if m.parent.as_deref().is_some_and(|p| !valid_id(p)) {
        return bad("the parent id is malformed".into());
    }
    Ok(())
}

/// Size and sha256 (hex) of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    Ok(sha256_file_watched(path, &mut |_| true)?.unwrap_or_default())
}

/// [`sha256_file`], telling `go` the size of each piece read; `None` when
/// `go` said to stop.
pub fn sha256_file_watched(
    path: &Path,
    go: &mut dyn FnMut(u64) -> bool,
) -> std::io::Result<Option<(u64, String)>> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
        if !go(k as u64) {
            return Ok(None);
        }
    }
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok(Some((n, hex)))
}

/// The file entry of a file in `dir`.
pub fn file_entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let (bytes, sha256) = sha256_file(&dir.join(name))
        .map_err(|e| Error::Failed(format!("cannot read {name}: {e}")))?;
    Ok(FileEntry {
        name: name.to_owned(),
        bytes,
        sha256,
    })
}

/// Write `data` as a file of the backup in `dir` (mode 0600).
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(&path)
        .map_err(|e| Error::Failed(format!("cannot write {name}: {e}")))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::Failed(format!("cannot write {name}: {e}")))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// The chain of backups `id` restores from, oldest (the full one) first.
/// Pure.
pub fn chain<'a>(id: &str, all: &'a [BackupRecord]) -> Result<Vec<&'a BackupRecord>> {
    let mut out = Vec::new();
    let mut next = Some(id.to_owned());
    while let Some(i) = next {
        let rec = all
            .iter()
            .find(|r| r.id() == i)
            .ok_or_else(|| Error::NotFound(format!("backup {i} of the chain is missing")))?;
        if out.iter().any(|r: &&BackupRecord| r.id() == i) || out.len() > 10_000 {
            return Err(Error::Failed(format!("backup {i}: the chain loops")));
        }
        out.push(rec);
        next = rec.manifest.parent.clone();
    }
    out.reverse();
    Ok(out)
}

/// Every backup built on `id`, directly or not. Pure.
pub fn descendants(id: &str, all: &[BackupRecord]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut frontier = vec![id.to_owned()];
    while let Some(p) = frontier.pop() {
        for r in all
            .iter()
            .filter(|r| r.manifest.parent.as_deref() == Some(p.as_str()))
        {
            if !out.iter().any(|o| o == r.id()) {
                out.push(r.id().to_owned());
                frontier.push(r.id().to_owned());
            }
        }
    }
    out
}

/// The backups of one VM to delete so that at least `keep` remain: oldest
/// whole chains first (a full backup with everything built on it), never
/// the newest chain. Pure.
pub fn retention(vm_backups: &[BackupRecord], keep: usize) -> Vec<String> {
    let mut sorted: Vec<&BackupRecord> = vm_backups.iter().collect();
    sorted.sort_by_key(|r| (r.manifest.created_at, r.id().to_owned()));
    let newest = sorted.last().map(|r| r.id().to_owned());
    let mut remaining = sorted.len();
    let mut out = Vec::new();
    for root in sorted.iter().filter(|r| r.manifest.parent.is_none()) {
        let mut group = vec![root.id().to_owned()];
        group.extend(descendants(root.id(), vm_backups));
        if newest.as_ref().is_some_and(|n| group.contains(n)) {
            break;
        }
        if remaining - group.len() < keep {
            break;
        }
        remaining -= group.len();
        out.extend(group);
    }
    out
}

#[cfg(test)]
#[path = "backup_repo_tests.rs"]
mod tests;
