//! Backups of VMs into vapord's repository ([`super::backup_repo`]), their
//! verification, deletion (keeping incremental chains whole) and restore
//! as a new VM.
//!
//! A running VM is backed up with libvirt's backup API in push mode:
//! consistent and live, optionally with the guest's file systems frozen
//! through its agent while the backup starts, and with a checkpoint, so
//! the next backup can be incremental (only the blocks changed since).
//! libvirt's copies are then compressed (an incremental one against its
//! parent's images). A stopped VM's disks are copied (compressed, backing
//! chains flattened) with `qemu-img`. A backup holds the VM's lock while
//! it reads the disks, and the VM's backup turn to its end.
//!
//! A restore verifies every file of the chain against the manifests before
//! it makes anything, then writes the disks into a pool and defines the VM,
//! recording each step as an intent, so a failure (or a crash) part way
//! leaves nothing behind.
//!
//! This module knows nothing about D-Bus or polkit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use super::backup_repo::{self as repo, BackupRecord, DiskEntry, Manifest, Repository};
use super::rollback;
use super::snapshot_rules::snapshotted;
use crate::config::BackupLocation;
use crate::intent::{now_ns, IntentLog, Step};
use crate::libvirt::backup::JobEnd;
use crate::libvirt::xml::{domain_disks, escape, nvram_path, DiskSource, Element};
use crate::libvirt::{Definition, Hypervisor, Session};
use crate::model::Model;
use crate::progress::Progress;
use crate::store::{Change, Keyed, Store};
use crate::{Error, Result};

impl Keyed for BackupRecord {
    fn key(&self) -> &str {
        self.id()
    }
}

/// What kind of backup a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Incremental where possible, else full.
    Auto,
    Full,
    Incremental,
}

impl Wanted {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "full" => Ok(Self::Full),
            "incremental" => Ok(Self::Incremental),
            other => Err(Error::InvalidArgument(format!(
                "kind: '{other}' is not one of auto, full, incremental"
            ))),
        }
    }
}

/// A backup request.
#[derive(Debug, Clone, Copy)]
pub struct BackupRequest {
    pub kind: Wanted,
    pub quiesce: bool,
    /// Keep only the newest this many backups of the VM (whole chains).
    pub keep: Option<u32>,
}

/// A restore request (as a new VM).
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub new_name: String,
    pub target_pool: String,
    pub uid: u32,
}

/// The longest a single `qemu-img` run may take.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The name libvirt checkpoints of vapord's backups start with.
const CHECKPOINT_PREFIX: &str = "vapor-";
/// The NVRAM copy's file name in a backup.
const NVRAM_FILE: &str = "nvram.fd";
const METADATA_FILE: &str = "vapor-metadata.json";

/// One disk to back up.
#[derive(Debug, Clone)]
struct Source {
    target: String,
    path: String,
    format: String,
    /// The size the guest sees (read once the disks are known).
    size: u64,
}

pub struct BackupService {
    model: Arc<Model>,
    location: BackupLocation,
    /// The repository once found, or why it is not.
    repo: std::sync::RwLock<std::result::Result<Repository, String>>,
    /// One finding of the repository at a time.
    attaching: tokio::sync::Mutex<()>,
    /// One checksum pass over the repository at a time (each reads whole
    /// backups: callers asking together wait their turn).
    verifying: tokio::sync::Mutex<()>,
    /// One backup (or backup deletion) per VM at a time. A backup holds
    /// the VM's own lock only while it reads the disks; this one for all of
    /// it, so a backup compressing is never raced by another of the same
    /// VM or by the deletion of the backup it builds on.
    turns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Whether what a dead vapord left is still to be rolled back.
    recovery_pending: std::sync::atomic::AtomicBool,
    /// The backups this vapord is making (recovery leaves them alone).
    making: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Told where the repository is, so no pool is made inside it.
    storage: Arc<super::storage::StorageService>,
    store: Store<BackupRecord>,
    intents: IntentLog,
}

fn qemu_img(args: &[&str], what: &str) -> Result<String> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(args);
    let out = crate::process::run(cmd, QEMU_IMG_TIMEOUT, what)?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The size a guest sees of an image (readable while the VM runs).
fn virtual_size(path: &str, format: &str) -> Result<u64> {
    let out = qemu_img(
        &["info", "-U", "--output=json", "-f", format, path],
        &format!("cannot read the size of {path}"),
    )?;
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["virtual-size"].as_u64())
        .ok_or_else(|| Error::Failed(format!("qemu-img reported no size for {path}")))
}

/// How far `qemu-img convert -p` says it is, in percent: the last
/// `(NN.NN/100%)` in `text`. Pure.
fn convert_percent(text: &str) -> Option<f64> {
    let end = text.rfind("/100%)")?;
    let start = text[..end].rfind('(')?;
    text[start + 1..end]
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
}

/// Where one image's conversion stands in the backup's bytes: its step,
/// the bytes done before it, its virtual size and the total.
struct Share {
    step: String,
    before: u64,
    size: u64,
    total: u64,
}

/// `qemu-img convert -p ARGS` (blocking), reporting its progress as bytes
/// of the backup and stopped when the caller cancels.
fn convert(args: &[&str], what: &str, progress: &Arc<dyn Progress>, share: Share) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.arg("convert").arg("-p").args(args);
    let p = progress.clone();
    let seen = move |bytes: &[u8]| {
        if let Some(pct) = convert_percent(&String::from_utf8_lossy(bytes)) {
            let done = share.before + (share.size as f64 * pct / 100.0) as u64;
            p.update(&share.step, done, share.total);
        }
    };
    let p = progress.clone();
    let watch = crate::process::Watch {
        stdout: Some(Arc::new(seen)),
        stop: Some(Arc::new(move || p.cancelled())),
    };
    let out = crate::process::run_watched(cmd, QEMU_IMG_TIMEOUT, what, &watch).map_err(|e| {
        // Stopped because the caller cancelled: said as every other
        // cancelled step of a backup says it.
        if progress.cancelled() {
            Error::Failed("the backup was cancelled".into())
        } else {
            e
        }
    })?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A backup's files checked against its manifest (blocking), as bytes
/// `before`.. of `total` under `step`; the problems, or an error when the
/// caller cancelled.
fn checked(
    store: &Repository,
    rec: &BackupRecord,
    progress: &Arc<dyn Progress>,
    step: &str,
    before: u64,
    total: u64,
) -> Result<Vec<String>> {
    let mut done = before;
    progress.update(step, done, total);
    store
        .verify_watched(rec, &mut |k| {
            done += k;
            progress.update(step, done, total);
            !progress.cancelled()
        })
        .ok_or_else(|| Error::Failed(format!("{step}: cancelled")))
}

/// Run blocking work (qemu-img, file reads) off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Failed(format!("a backup task failed: {e}")))?
}

/// Report a disk's step, `before` of `total` bytes made before it (or stop
/// when the caller asked to); its share of the bytes.
fn disk_step(
    progress: &Arc<dyn Progress>,
    verb: &str,
    d: &Source,
    before: u64,
    total: u64,
) -> Result<Share> {
    if progress.cancelled() {
        return Err(Error::Failed("the backup was cancelled".into()));
    }
    let step = format!("{verb} {}", d.target);
    progress.update(&step, before, total);
    Ok(Share {
        step,
        before,
        size: d.size,
        total,
    })
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The disks of a definition vapord backs up: writable file or block
/// disks (cdroms and shared disks are not part of a backup).
fn sources(def: &Element) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for d in domain_disks(def).iter().filter(|d| snapshotted(d)) {
        let target = d.target.clone().unwrap_or_default();
        // It becomes part of file names.
        if target.is_empty()
            || target.len() > 32
            || !target
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(Error::NotSupported(format!(
                "a disk's target {target:?} is not a plain device name"
            )));
        }
        match &d.source {
            DiskSource::Path(p) => out.push(Source {
                target,
                path: p.clone(),
                format: d.format.clone().unwrap_or_else(|| "raw".into()),
                size: 0,
            }),
            _ => {
                return Err(Error::NotSupported(format!(
                    "disk {target} is not a file or block device: vapord backs up only those"
                )))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::InvalidState(
            "the VM has no writable disk to back up".into(),
        ));
    }
    Ok(out)
}

/// Whether a backup holds exactly these disks (by target).
fn same_disks(b: &BackupRecord, disks: &[Source]) -> bool {
    let mut had: Vec<&str> = b.manifest.disks.iter().map(|d| d.target.as_str()).collect();
    let mut now: Vec<&str> = disks.iter().map(|d| d.target.as_str()).collect();
    had.sort_unstable();
    now.sort_unstable();
    had == now
}

/// libvirt's push-mode backup document. Pure.
pub fn backup_xml(
    incremental: Option<&str>,
    disks: &[(String, String)],
    skipped: &[String],
) -> String {
    let mut x = String::from("<domainbackup mode='push'>");
    if let Some(c) = incremental {
        x.push_str(&format!("<incremental>{}</incremental>", escape(c)));
    }
    x.push_str("<disks>");
    for (target, file) in disks {
        x.push_str(&format!(
            "<disk name='{}' backup='yes' type='file'><target file='{}'/><driver type='qcow2'/></disk>",
            escape(target),
            escape(file)
        ));
    }
    for t in skipped {
        x.push_str(&format!("<disk name='{}' backup='no'/>", escape(t)));
    }
    x.push_str("</disks></domainbackup>");
    x
}

/// The checkpoint made with a backup. Pure.
pub fn checkpoint_xml(name: &str, disks: &[String], skipped: &[String]) -> String {
    let mut x = format!("<domaincheckpoint><name>{}</name><disks>", escape(name));
    for t in disks {
        x.push_str(&format!("<disk name='{}' checkpoint='bitmap'/>", escape(t)));
    }
    for t in skipped {
        x.push_str(&format!("<disk name='{}' checkpoint='no'/>", escape(t)));
    }
    x.push_str("</disks></domaincheckpoint>");
    x
}

/// The targets of a definition's disks that are not backed up.
fn skipped_targets(def: &Element, backed: &[Source]) -> Vec<String> {
    domain_disks(def)
        .into_iter()
        .filter_map(|d| d.target)
        .filter(|t| !backed.iter().any(|s| &s.target == t))
        .collect()
}

impl BackupService {
    /// The service over the repository at `location`, found by
    /// [`Self::attach`] (once libvirt is connected, for a pool).
    pub fn new(
        model: Arc<Model>,
        location: BackupLocation,
        intents: IntentLog,
        storage: Arc<super::storage::StorageService>,
    ) -> (Arc<Self>, UnboundedReceiver<Change<BackupRecord>>) {
        if let BackupLocation::Pool(name) = &location {
            storage.protect_backups(None, Some(name.clone()));
        }
        let (store, rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let s = Arc::new(Self {
            model,
            location,
            repo: std::sync::RwLock::new(Err("it has not been looked for yet".into())),
            attaching: tokio::sync::Mutex::new(()),
            verifying: tokio::sync::Mutex::new(()),
            turns: std::sync::Mutex::new(std::collections::HashMap::new()),
            recovery_pending: std::sync::atomic::AtomicBool::new(true),
            making: std::sync::Mutex::new(std::collections::HashSet::new()),
            storage,
            store,
            intents,
        });
        (s, rx)
    }

    /// Note that this vapord is (or no longer is) making backup `id`.
    fn making_now(&self, id: &str, on: bool) {
        let mut m = self.making.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            m.insert(id.to_owned());
        } else {
            m.remove(id);
        }
    }

    /// The repository if found; why not otherwise.
    fn repo(&self) -> Result<Repository> {
        match &*self.repo.read().unwrap_or_else(|e| e.into_inner()) {
            Ok(r) => Ok(r.clone()),
            Err(why) => Err(Error::Unavailable(format!(
                "the backup repository is not available: {why}"
            ))),
        }
    }

    fn hv(&self) -> &Arc<Hypervisor> {
        self.model.hypervisor()
    }

    /// Stop the transient pools of restores a dead vapord left running.
    pub async fn stop_leftover_pools(&self) {
        let r = self
            .hv()
            .session(|s| {
                for p in s.pools()? {
                    if super::storage_rules::internal_pool(&p.name) && p.is_active() {
                        log::warn!("stopping the pool {} a dead vapord left running", p.name);
                        let _ = s.stop_pool_by_uuid(&p.uuid);
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            log::debug!("cannot look for leftover restore pools: {e}");
        }
    }

    /// Re-read the repository.
    pub fn resync(&self) {
        let ticket = self.store.ticket();
        let list = self.repo().map(|r| r.list()).unwrap_or_default();
        self.store.replace_scope(list, |_| true, ticket);
    }

    pub fn backup_record(&self, id: &str) -> Option<Arc<BackupRecord>> {
        self.store.get(id)
    }

    fn all(&self) -> Vec<BackupRecord> {
        self.store.all().iter().map(|r| (**r).clone()).collect()
    }

    /// Wait for, and hold, the VM's backup turn (see `turns`); taken
    /// before the VM's own lock, never while holding it.
    async fn turn(&self, uuid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut t = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            t.retain(|_, l| Arc::strong_count(l) > 1);
            t.entry(uuid.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Back up a VM; the new backup's id.
    pub async fn backup(
        self: &Arc<Self>,
        uuid: &str,
        req: BackupRequest,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let _turn = self.turn(uuid).await;
        // Released once the disks are read (`backup_running`), so other
        // changes to the VM need not wait for the compression.
        let mut locked = Some(self.model.lock_vm(uuid).await);
        let store = self.repository().await?;
        let id = repo::new_id(now_secs());
        self.making_now(&id, true);
        let partial = match store.start(&id) {
            Ok(p) => p,
            Err(e) => {
                self.making_now(&id, false);
                return Err(e);
            }
        };
        let r = self
            .backup_into(&store, uuid, &id, &partial, req, progress, &mut locked)
            .await;
        self.making_now(&id, false);
        match r {
            Ok(()) => {
                self.resync();
                if let Some(keep) = req.keep.filter(|k| *k > 0) {
                    self.apply_retention(uuid, keep as usize);
                }
                Ok(id)
            }
            Err(e) => {
                store.discard(&partial);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn backup_into(
        self: &Arc<Self>,
        store: &Repository,
        uuid: &str,
        id: &str,
        partial: &Path,
        req: BackupRequest,
        progress: Arc<dyn Progress>,
        locked: &mut Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<()> {
        progress.update("reading the VM", 0, 0);
        let (running, def, name, metadata) = self
            .hv()
            .on_domain(uuid, |_, d| {
                let running = d.is_active()?;
                let def = d.editable_definition()?;
                let live = if running {
                    d.definition(Definition::Live)?
                } else {
                    def.clone()
                };
                Ok((running, (def, live), d.name()?, d.vapor_metadata()))
            })
            .await?;
        let (def, live) = def;
        let mut disks = sources(&live)?;
        let skipped = skipped_targets(&live, &disks);
        let mut disk_entries = Vec::new();
        for s in &mut disks {
            let (p, f) = (s.path.clone(), s.format.clone());
            let size = blocking(move || virtual_size(&p, &f)).await?;
            s.size = size;
            disk_entries.push(DiskEntry {
                target: s.target.clone(),
                file: format!("{}.qcow2", s.target),
                virtual_size: size,
            });
        }
        let (kind, parent, checkpoint) = if running {
            self.backup_running(uuid, id, partial, &disks, &skipped, req, &progress, locked)
                .await?
        } else {
            if req.kind == Wanted::Incremental {
                return Err(Error::InvalidState(
                    "kind: an incremental backup needs the VM running (libvirt's backup API); \
                     a stopped VM gets a full copy"
                        .into(),
                ));
            }
            if req.quiesce {
                return Err(Error::InvalidState(
                    "quiesce: the VM is not running, its file systems are at rest".into(),
                ));
            }
            self.copy_stopped(partial, &disks, &progress).await?;
            ("full".to_owned(), None, None)
        };
        progress.update("writing the manifest", 0, 0);
        let partial = partial.to_owned();
        let nvram = nvram_path(&def);
        let xml = def.to_xml();
        let meta = serde_json::to_vec_pretty(&metadata).unwrap_or_default();
        let manifest_base = Manifest {
            format: repo::FORMAT,
            id: id.to_owned(),
            vm_uuid: uuid.to_owned(),
            vm_name: name,
            created_at: now_secs(),
            kind,
            parent,
            checkpoint: checkpoint.clone(),
            disks: disk_entries,
            files: Vec::new(),
        };
        let store = store.clone();
        let r = blocking(move || {
            repo::write_file(&partial, repo::DOMAIN_XML, xml.as_bytes())?;
            repo::write_file(&partial, METADATA_FILE, &meta)?;
            let mut names = vec![repo::DOMAIN_XML.to_owned(), METADATA_FILE.to_owned()];
            if let Some(n) = nvram.filter(|n| Path::new(n).is_file()) {
                std::fs::copy(&n, partial.join(NVRAM_FILE)).map_err(|e| {
                    Error::Failed(format!("cannot copy the UEFI variables {n}: {e}"))
                })?;
                names.push(NVRAM_FILE.to_owned());
            }
            names.extend(manifest_base.disks.iter().map(|d| d.file.clone()));
            let mut m = manifest_base;
            for n in names {
                m.files.push(repo::file_entry(&partial, &n)?);
            }
            store.finish(&partial, &m)
        })
        .await;
        if r.is_err() {
            if let Some(c) = checkpoint {
                let _ = self
                    .hv()
                    .on_domain(uuid, move |_, d| d.delete_checkpoint(&c))
                    .await;
            }
        }
        r
    }

    /// The newest backup of the VM an incremental one can build on: its
    /// checkpoint must still exist in libvirt.
    fn incremental_base(&self, uuid: &str, checkpoints: &[String]) -> Option<BackupRecord> {
        let mut mine: Vec<BackupRecord> = self
            .all()
            .into_iter()
            .filter(|b| b.manifest.vm_uuid == uuid)
            .collect();
        mine.sort_by_key(|b| (b.manifest.created_at, b.id().to_owned()));
        let newest = mine.pop()?;
        newest
            .manifest
            .checkpoint
            .as_ref()
            .is_some_and(|c| checkpoints.contains(c))
            .then_some(newest)
    }

    /// A running VM through libvirt's backup API: (kind, parent, checkpoint).
    #[allow(clippy::too_many_arguments)]
    async fn backup_running(
        &self,
        uuid: &str,
        id: &str,
        partial: &Path,
        disks: &[Source],
        skipped: &[String],
        req: BackupRequest,
        progress: &Arc<dyn Progress>,
        locked: &mut Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<(String, Option<String>, Option<String>)> {
        let checkpoints = self.hv().on_domain(uuid, |_, d| d.checkpoints()).await?;
        let all_qcow2 = disks.iter().all(|d| d.format == "qcow2");
        let base = self.incremental_base(uuid, &checkpoints);
        let parent = match (req.kind, &base) {
            (Wanted::Full, _) => None,
            (Wanted::Incremental, None) => {
                return Err(Error::InvalidState(
                    "kind: there is no earlier backup of this VM with a checkpoint to build on \
                     (make a full backup first)"
                        .into(),
                ))
            }
            (Wanted::Auto, Some(b)) if !same_disks(b, disks) => None,
            (Wanted::Incremental, Some(b)) if !same_disks(b, disks) => {
                return Err(Error::InvalidState(format!(
                    "kind: the VM's disks changed since backup {}; make a full backup",
                    b.id()
                )))
            }
            (_, Some(b)) if all_qcow2 => Some(b.clone()),
            (Wanted::Incremental, Some(_)) => {
                return Err(Error::NotSupported(
                    "kind: incremental backups need every backed-up disk in qcow2 format".into(),
                ))
            }
            (Wanted::Auto, _) => None,
        };
        let checkpoint = all_qcow2.then(|| format!("{CHECKPOINT_PREFIX}{id}"));
        let tmp: Vec<(String, String)> = disks
            .iter()
            .map(|d| {
                (
                    d.target.clone(),
                    partial
                        .join(format!("{}.libvirt.qcow2", d.target))
                        .to_string_lossy()
                        .into_owned(),
                )
            })
            .collect();
        let bxml = backup_xml(
            parent
                .as_ref()
                .and_then(|p| p.manifest.checkpoint.as_deref()),
            &tmp,
            skipped,
        );
        let targets: Vec<String> = disks.iter().map(|d| d.target.clone()).collect();
        let cxml = checkpoint
            .as_ref()
            .map(|c| checkpoint_xml(c, &targets, skipped));
        progress.update("starting the backup", 0, 0);
        let quiesce = req.quiesce;
        self.hv()
            .on_domain(uuid, move |_, d| {
                if quiesce {
                    d.fs_freeze().map_err(|e| {
                        e.context("quiesce: cannot freeze the guest's file systems")
                    })?;
                }
                let r = d.begin_backup(&bxml, cxml.as_deref());
                if quiesce {
                    if let Err(e) = d.fs_thaw() {
                        log::warn!("cannot thaw the guest's file systems: {e}");
                    }
                }
                r.map_err(|e| e.context("cannot start the backup"))
            })
            .await?;
        let copied = self.follow_job(uuid, progress).await;
        if copied.is_err() {
            // Whatever went wrong, libvirt's job must not go on writing
            // into a directory about to be removed.
            let _ = self.hv().on_domain(uuid, |_, d| d.abort_job()).await;
        }
        let finished = match copied {
            Ok(()) => {
                // libvirt's copies are made: the VM itself is no longer
                // needed (the backup turn still keeps other backups of it
                // and deletions of its backups waiting).
                locked.take();
                self.compress(partial, disks, parent.as_ref(), progress)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = finished {
            if let Some(c) = checkpoint {
                let _ = self
                    .hv()
                    .on_domain(uuid, move |_, d| d.delete_checkpoint(&c))
                    .await;
            }
            return Err(e);
        }
        // Only the newest checkpoint is ever built on: the older ones of
        // vapord's go (their bitmaps merge away).
        if let Some(new) = checkpoint.clone() {
            let old: Vec<String> = checkpoints
                .into_iter()
                .filter(|c| c.starts_with(CHECKPOINT_PREFIX) && *c != new)
                .collect();
            let _ = self
                .hv()
                .on_domain(uuid, move |_, d| {
                    for c in old {
                        if let Err(e) = d.delete_checkpoint(&c) {
                            log::warn!("cannot delete the old checkpoint {c}: {e}");
                        }
                    }
                    Ok(())
                })
                .await;
        }
        let kind = if parent.is_some() {
            "incremental"
        } else {
            "full"
        };
        Ok((kind.into(), parent.map(|p| p.id().to_owned()), checkpoint))
    }

    /// Follow libvirt's backup job to its end (aborting it when cancelled).
    async fn follow_job(&self, uuid: &str, progress: &Arc<dyn Progress>) -> Result<()> {
        let mut aborted = false;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let p = self.hv().on_domain(uuid, |_, d| d.job_progress()).await?;
            let Some(p) = p else { break };
            progress.update("copying the disks", p.processed, p.total);
            if progress.cancelled() && !aborted {
                aborted = true;
                self.hv().on_domain(uuid, |_, d| d.abort_job()).await?;
            }
        }
        match self.hv().on_domain(uuid, |_, d| d.last_job_end()).await? {
            JobEnd::Completed if !aborted => Ok(()),
            JobEnd::Cancelled | JobEnd::Completed => {
                Err(Error::Failed("the backup was cancelled".into()))
            }
            JobEnd::Failed(m) => Err(Error::Failed(format!("the backup failed: {m}"))),
            JobEnd::Unknown => Err(Error::Failed(
                "libvirt kept no record of how the backup ended".into(),
            )),
        }
    }

    /// Compress libvirt's copies into the backup's images (an incremental
    /// one against its parent's images, which become its backing files).
    async fn compress(
        &self,
        partial: &Path,
        disks: &[Source],
        parent: Option<&BackupRecord>,
        progress: &Arc<dyn Progress>,
    ) -> Result<()> {
        let total: u64 = disks.iter().map(|d| d.size).sum();
        let mut before = 0;
        for d in disks {
            let share = disk_step(progress, "compressing", d, before, total)?;
            before += d.size;
            let progress = progress.clone();
            let tmp = partial.join(format!("{}.libvirt.qcow2", d.target));
            let out = partial.join(format!("{}.qcow2", d.target));
            let backing = parent.and_then(|p| {
                p.manifest
                    .disks
                    .iter()
                    .find(|pd| pd.target == d.target)
                    .map(|pd| format!("../{}/{}", p.id(), pd.file))
            });
            if parent.is_some() && backing.is_none() {
                return Err(Error::Failed(format!(
                    "disk {} is not in the parent backup",
                    d.target
                )));
            }
            let dir = partial.to_owned();
            blocking(move || {
                let (t, o) = (tmp.to_string_lossy(), out.to_string_lossy());
                match &backing {
                    Some(b) => {
                        // libvirt points an incremental copy at the live
                        // disk; it builds on the parent's image instead.
                        qemu_img(
                            &["rebase", "-u", "-f", "qcow2", "-b", b, "-F", "qcow2", &t],
                            "cannot chain the incremental copy to its parent",
                        )?;
                        let abs = dir.join(b);
                        convert(
                            &[
                                "-c",
                                "-f",
                                "qcow2",
                                "-O",
                                "qcow2",
                                "-B",
                                &abs.to_string_lossy(),
                                "-F",
                                "qcow2",
                                &t,
                                &o,
                            ],
                            "cannot compress the copy",
                            &progress,
                            share,
                        )?;
                        // The backing path as written: relative, so the
                        // chain holds wherever the repository is.
                        qemu_img(
                            &["rebase", "-u", "-f", "qcow2", "-b", b, "-F", "qcow2", &o],
                            "cannot chain the image to its parent",
                        )?;
                    }
                    None => {
                        convert(
                            &["-c", "-f", "qcow2", "-O", "qcow2", &t, &o],
                            "cannot compress the copy",
                            &progress,
                            share,
                        )?;
                    }
                }
                std::fs::remove_file(&tmp)
                    .map_err(|e| Error::Failed(format!("cannot remove {t}: {e}")))
            })
            .await?;
        }
        progress.update("compressed", total, total);
        Ok(())
    }

    /// A stopped VM: each disk copied with its backing chain flattened,
    /// compressed.
    async fn copy_stopped(
        &self,
        partial: &Path,
        disks: &[Source],
        progress: &Arc<dyn Progress>,
    ) -> Result<()> {
        let total: u64 = disks.iter().map(|d| d.size).sum();
        let mut before = 0;
        for d in disks {
            let share = disk_step(progress, "copying", d, before, total)?;
            before += d.size;
            let progress = progress.clone();
            let out = partial.join(format!("{}.qcow2", d.target));
            let d = d.clone();
            blocking(move || {
                convert(
                    &[
                        "-c",
                        "-f",
                        &d.format,
                        "-O",
                        "qcow2",
                        &d.path,
                        &out.to_string_lossy(),
                    ],
                    &format!("cannot copy disk {}", d.target),
                    &progress,
                    share,
                )
            })
            .await?;
        }
        progress.update("copied", total, total);
        Ok(())
    }

    /// Delete the oldest whole chains of the VM's backups beyond `keep`.
    fn apply_retention(&self, uuid: &str, keep: usize) {
        let mine: Vec<BackupRecord> = self
            .all()
            .into_iter()
            .filter(|b| b.manifest.vm_uuid == uuid)
            .collect();
        let Ok(store) = self.repo() else { return };
        for id in repo::retention(&mine, keep) {
            match store.remove(&id) {
                Ok(()) => log::info!("backup {id} removed (keeping the newest {keep})"),
                Err(e) => log::warn!("{e}"),
            }
        }
        self.resync();
    }

    /// Check every file of a backup against its manifest; the problems
    /// (none: intact). The result is kept as the backup's `Verified`.
    pub async fn verify(
        self: &Arc<Self>,
        id: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<Vec<String>> {
        let rec = self.existing(id)?;
        let store = self.repository().await?;
        let _turn = self.checksum_turn(&progress).await?;
        let problems = blocking(move || {
            let total = rec.size_bytes();
            let p = checked(&store, &rec, &progress, "checking every file", 0, total)?;
            let _ = store.set_verified(rec.id(), p.is_empty(), now_secs());
            Ok(p)
        })
        .await?;
        self.resync();
        Ok(problems)
    }

    /// Wait for the one checksum pass over the repository at a time (or
    /// until the caller cancels).
    async fn checksum_turn(
        &self,
        progress: &Arc<dyn Progress>,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let turn = self.verifying.lock();
        tokio::pin!(turn);
        loop {
            tokio::select! {
                g = &mut turn => return Ok(g),
                () = tokio::time::sleep(Duration::from_millis(250)) => {
                    if progress.cancelled() {
                        return Err(Error::Failed("cancelled while waiting for another check of the repository".into()));
                    }
                    progress.update("waiting for another check of the repository", 0, 0);
                }
            }
        }
    }

    fn existing(&self, id: &str) -> Result<Arc<BackupRecord>> {
        // Backups are listed only while the repository is there.
        self.repo()?;
        self.store
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("backup {id} no longer exists")))
    }

    /// Delete a backup; one that others build on only `with_dependents`
    /// (which deletes them too). The ids deleted.
    pub async fn delete(&self, id: &str, with_dependents: bool) -> Result<Vec<String>> {
        let rec = self.existing(id)?;
        let store = self.repository().await?;
        // Not while a backup of the VM (which may build on this one) runs.
        let _turn = self.turn(&rec.manifest.vm_uuid).await;
        // It may have gone meanwhile (retention).
        let rec = self.existing(id)?;
        let _locked = self.model.lock_vm(&rec.manifest.vm_uuid).await;
        let all = self.all();
        let dependents = repo::descendants(id, &all);
        if !dependents.is_empty() && !with_dependents {
            return Err(Error::InvalidState(format!(
                "backup {id} is the base of {} incremental backup(s) ({}); deleting it \
                 would break their chain (set dependents to delete them too)",
                dependents.len(),
                dependents.join(", ")
            )));
        }
        let mut gone = Vec::new();
        // Newest first, so a chain never points at a missing parent.
        for d in dependents
            .iter()
            .rev()
            .chain(std::iter::once(&id.to_owned()))
        {
            store.remove(d)?;
            gone.push(d.clone());
        }
        // Their checkpoints, those still the VM's, go too.
        let checkpoints: Vec<String> = all
            .iter()
            .filter(|b| gone.iter().any(|g| g == b.id()))
            .filter_map(|b| b.manifest.checkpoint.clone())
            .collect();
        if !checkpoints.is_empty() {
            let _ = self
                .hv()
                .on_domain(&rec.manifest.vm_uuid, move |_, d| {
                    let have = d.checkpoints()?;
                    for c in checkpoints.iter().filter(|c| have.contains(c)) {
                        // libvirt edits a stopped VM's bitmaps only in some
                        // versions: then the record alone goes.
                        let _ = d
                            .delete_checkpoint(c)
                            .or_else(|_| d.delete_checkpoint_metadata(c));
                    }
                    Ok(())
                })
                .await;
        }
        self.resync();
        Ok(gone)
    }

    /// Check every file of `id`'s chain against the manifests (and record
    /// the result); (bytes checked, bytes in all).
    async fn verify_chain(
        self: &Arc<Self>,
        id: &str,
        progress: &Arc<dyn Progress>,
    ) -> Result<(u64, u64)> {
        let all = self.all();
        let chain: Vec<BackupRecord> = repo::chain(id, &all)?.into_iter().cloned().collect();
        let total: u64 = chain.iter().map(|b| b.size_bytes()).sum();
        let store = self.repository().await?;
        let _turn = self.checksum_turn(progress).await?;
        let mut done = 0;
        for b in &chain {
            let step = format!("verifying backup {}", b.id());
            let (s, rec, p) = (store.clone(), b.clone(), progress.clone());
            let problems = blocking(move || checked(&s, &rec, &p, &step, done, total)).await?;
            let _ = store.set_verified(b.id(), problems.is_empty(), now_secs());
            if !problems.is_empty() {
                self.resync();
                return Err(Error::InvalidState(format!(
                    "backup {} is damaged, nothing was restored: {}",
                    b.id(),
                    problems.join("; ")
                )));
            }
            done += b.size_bytes();
        }
        Ok((done, total))
    }

    /// Restore a backup as a new VM; its UUID.
    pub async fn restore(
        self: &Arc<Self>,
        id: &str,
        req: RestoreRequest,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let top = self.existing(id)?;
        // Its files stay while it is read: no deletion of it (or retention)
        // meanwhile.
        let _turn = self.turn(&top.manifest.vm_uuid).await;
        let top = self.existing(id)?;
        // What would refuse the restore is said before the (long) check of
        // the chain's files, and looked at again when it is made.
        let r = req.clone();
        self.hv()
            .session(move |s| restore_precheck(s, &r).map(|_| ()))
            .await?;
        let (done, total) = self.verify_chain(id, &progress).await?;
        progress.update("restoring", done, total);
        let dir = self.repository().await?.dir(top.id());
        let intents = self.intents.clone();
        let uuid = uuid::Uuid::new_v4().to_string();
        let u = uuid.clone();
        let rec = (*top).clone();
        let p = progress.clone();
        let pool = self
            .hv()
            .session(move |s| {
                let mut intent = intents.begin("backup-restore", &req.new_name, req.uid)?;
                let r = restore_blocking(s, &rec, &dir, &req, &u, &mut intent, &*p);
                rollback::conclude(s, intent, r, "the restore")
            })
            .await?;
        let _ = self.hv().refresh_pool(&pool).await;
        let _ = self.model.refresh_domain(&uuid).await;
        progress.update("restored", total, total);
        Ok(uuid)
    }
}

/// The UEFI variables of a VM restored as `stem`, when the backup has
/// them: (their path, the backup's copy libvirt fills it from at the first
/// start). A file already there (a deleted VM's) would be used instead, so
/// it is refused.
/// Where libvirt keeps VMs' UEFI variables files.
const NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";

fn nvram_for(rec: &BackupRecord, dir: &str, stem: &str) -> Result<Option<(String, String)>> {
    if !rec.manifest.files.iter().any(|f| f.name == NVRAM_FILE) {
        return Ok(None);
    }
    let path = format!("{NVRAM_DIR}/{stem}_VARS.fd");
    if Path::new(&path).symlink_metadata().is_ok() {
        return Err(Error::Conflict(format!(
            "{path} exists already (left by another VM?); move it away first"
        )));
    }
    Ok(Some((path, format!("{dir}/{NVRAM_FILE}"))))
}

/// Where a restore writes: the pool's directory (and the pool's UUID).
fn pool_dir(s: &Session<'_>, name: &str) -> Result<(PathBuf, String)> {
    let p = s
        .pool_by_name(name)
        .map_err(|e| e.context(format!("target_pool: no pool '{name}'")))?;
    if !p.is_active() {
        return Err(Error::InvalidState(format!(
            "target_pool: the pool '{name}' is not running"
        )));
    }
    if !matches!(p.kind.as_str(), "dir" | "fs" | "netfs") || p.target_path.is_empty() {
        return Err(Error::NotSupported(format!(
            "target_pool: '{name}' is a {} pool; a restore writes image files into a \
             directory pool (dir, fs, netfs)",
            p.kind
        )));
    }
    Ok((PathBuf::from(p.target_path), p.uuid))
}

/// A restore's name and pool, checked: the pool's directory and UUID.
fn restore_precheck(s: &Session<'_>, req: &RestoreRequest) -> Result<(PathBuf, String)> {
    crate::storage::spec::check_object_name("new_name", &req.new_name)?;
    if s.domain_named(&req.new_name).is_ok() {
        return Err(Error::Conflict(format!(
            "new_name: a VM named '{}' exists already",
            req.new_name
        )));
    }
    pool_dir(s, &req.target_pool)
}

fn restore_blocking(
    s: &Session<'_>,
    rec: &BackupRecord,
    dir: &Path,
    req: &RestoreRequest,
    uuid: &str,
    intent: &mut crate::intent::Intent,
    progress: &dyn Progress,
) -> Result<String> {
    let (target_dir, pool_uuid) = restore_precheck(s, req)?;
    let xml = std::fs::read_to_string(dir.join(repo::DOMAIN_XML))
        .map_err(|e| Error::Failed(format!("cannot read the backed-up definition: {e}")))?;
    let mut doc = Element::parse(&xml)?;
    let name = |target: &str| format!("{}-{target}.qcow2", req.new_name);
    let (dir_text, (owned, files)) = copy_from_backup(
        s,
        rec,
        dir,
        (&target_dir, &pool_uuid, &req.target_pool),
        &name,
        intent,
        progress,
    )?;
    // The UEFI variables are copied by libvirt from the backup at the
    // first start.
    let nvram = nvram_for(rec, &dir_text, &req.new_name)?;
    restored_definition(
        &mut doc,
        &Restored {
            name: &req.new_name,
            uuid,
            files: &files,
            nvram: nvram.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
            uid: req.uid,
            owned: &owned,
            new_identity: true,
        },
    );
    intent.record(Step::Domain {
        uuid: uuid.to_owned(),
        keep_nvram: false,
    })?;
    s.define_domain(&doc.to_xml())
        .map_err(|e| e.context("cannot define the restored VM"))?;
    Ok(pool_uuid)
}

/// Copy the backup's disk images into a pool through libvirt, which
/// flattens an incremental chain (vapord itself never writes into a pool):
/// the backup's directory is a transient pool meanwhile. (The backup's
/// directory as libvirt knows it, (files made, (target, file))).
#[allow(clippy::type_complexity)]
fn copy_from_backup(
    s: &Session<'_>,
    rec: &BackupRecord,
    dir: &Path,
    target: (&Path, &str, &str),
    file_name: &dyn Fn(&str) -> String,
    intent: &mut crate::intent::Intent,
    progress: &dyn Progress,
) -> Result<(String, (Vec<String>, Vec<(String, String)>))> {
    // Canonical: libvirt keys a directory pool's volumes by their real path.
    let dir_text = std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_owned())
        .to_string_lossy()
        .into_owned();
    let source_pool = s.start_transient_dir_pool(
        &format!("{}{}", super::storage_rules::INTERNAL_POOL_PREFIX, rec.id()),
        &dir_text,
    )?;
    let copied = copy_disks(s, rec, &dir_text, target, file_name, intent, progress);
    if let Err(e) = s.stop_pool_by_uuid(&source_pool) {
        log::warn!("cannot stop the restore's transient pool: {e}");
    }
    Ok((dir_text, copied?))
}

/// Copy each disk's image from the backup into the target pool, through
/// libvirt: (files made, (target, file)).
#[allow(clippy::type_complexity)]
fn copy_disks(
    s: &Session<'_>,
    rec: &BackupRecord,
    dir: &str,
    (target_dir, pool_uuid, pool_name): (&Path, &str, &str),
    file_name: &dyn Fn(&str) -> String,
    intent: &mut crate::intent::Intent,
    progress: &dyn Progress,
) -> Result<(Vec<String>, Vec<(String, String)>)> {
    let mut owned = Vec::new();
    let mut files = Vec::new();
    let total: u64 = rec.manifest.disks.iter().map(|d| d.virtual_size).sum();
    let mut done = 0;
    for d in &rec.manifest.disks {
        // Between disks: what was made is undone with the rest.
        if progress.cancelled() {
            return Err(Error::Failed(
                "the restore was cancelled; nothing was restored".into(),
            ));
        }
        progress.update(&format!("restoring disk {}", d.target), done, total);
        done += d.virtual_size;
        let name = file_name(&d.target);
        let dest = target_dir.join(&name).to_string_lossy().into_owned();
        if Path::new(&dest).symlink_metadata().is_ok() {
            return Err(Error::Conflict(format!(
                "new_name: {dest} exists already in the pool '{pool_name}'"
            )));
        }
        intent.record(Step::Volume {
            path: dest.clone(),
            not_before_ns: now_ns(),
            made: false,
        })?;
        let xml = format!(
            "<volume><name>{}</name><capacity unit='bytes'>{}</capacity>\
             <target><format type='qcow2'/></target></volume>",
            escape(&name),
            d.virtual_size
        );
        let made = s
            .clone_volume(
                pool_uuid,
                &xml,
                &format!("{dir}/{}", d.file),
                crate::libvirt::storage::Preallocation::RawOnly,
            )
            .map_err(|e| e.context(format!("cannot restore disk {}", d.target)))?;
        intent.volume_made(&made.path)?;
        owned.push(made.path.clone());
        files.push((d.target.clone(), made.path));
    }
    progress.update("restored the disks", total, total);
    Ok((owned, files))
}

/// What a restored definition becomes (see [`restored_definition`]).
#[derive(Debug, Clone, Copy)]
pub struct Restored<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    /// (target, restored image).
    pub files: &'a [(String, String)],
    /// (UEFI variables' path, the backup's copy).
    pub nvram: Option<(&'a str, &'a str)>,
    /// Who vapord records as the creator.
    pub uid: u32,
    /// The files vapord made for the VM.
    pub owned: &'a [String],
    /// New MAC addresses (a new VM), or the backup's (the same VM).
    pub new_identity: bool,
}

/// The backed-up definition made into a VM's: its name and UUID (with
/// `new_identity`, new MAC addresses too), the restored disk files, empty cdrom drives, its own
/// UEFI variables (`nvram`: its path and the backup's copy, which libvirt
/// copies there at the first start), and vapord's record naming the restorer and the files
/// made for it. Pure.
pub fn restored_definition(doc: &mut Element, r: &Restored<'_>) {
    let Restored {
        name,
        uuid,
        files,
        nvram,
        uid,
        owned,
        new_identity,
    } = *r;
    if let Some(n) = doc.child_mut("name") {
        n.text = name.to_owned();
    }
    if let Some(u) = doc.child_mut("uuid") {
        u.text = uuid.to_owned();
    }
    if let Some(os) = doc.child_mut("os") {
        match (nvram, os.child_mut("nvram")) {
            (Some((path, template)), Some(n)) => {
                n.text = path.to_owned();
                n.children.clear();
                n.remove_attr("type");
                n.set_attr("template", template);
            }
            (None, Some(_)) => {
                os.remove_children("nvram");
            }
            _ => {}
        }
    }
    if let Some(devices) = doc.child_mut("devices") {
        for iface in devices
            .children
            .iter_mut()
            .filter(|c| new_identity && c.local_name() == "interface")
        {
            iface.remove_children("mac");
        }
        for disk in devices
            .children
            .iter_mut()
            .filter(|c| c.local_name() == "disk")
        {
            let target = disk
                .child("target")
                .and_then(|t| t.attr("dev"))
                .map(str::to_owned);
            match target.and_then(|t| files.iter().find(|(ft, _)| *ft == t)) {
                Some((_, path)) => {
                    disk.set_attr("type", "file");
                    disk.remove_children("source");
                    disk.remove_children("backingStore");
                    let src = Element::new("source", &[("file", path)]);
                    disk.children.insert(0, src);
                    disk.ensure_child("driver", &[]).set_attr("type", "qcow2");
                    if disk.child("driver").and_then(|d| d.attr("name")).is_none() {
                        disk.ensure_child("driver", &[]).set_attr("name", "qemu");
                    }
                }
                None if disk.attr("device") == Some("cdrom") => {
                    disk.remove_children("source");
                    disk.remove_children("backingStore");
                }
                None => {}
            }
        }
    }
    let vm = doc.vapor_metadata_mut();
    // The template and custom keys stay; creator and files are the new VM's.
    vm.children
        .retain(|c| !matches!(c.local_name(), "volume" | "created-by"));
    let created = vm.new_child("created-by", &[("uid", &uid.to_string())]);
    vm.children.push(created);
    for p in owned {
        let v = vm.new_child("volume", &[("path", p)]);
        vm.children.push(v);
    }
}

// Restore over the VM the backup is of.
#[path = "backup_replace.rs"]
mod replace;

#[path = "backup_repo_attach.rs"]
pub mod attach;

#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;
