//! `Manager.Apply`'s work: bring each VM a document declares
//! ([`super::apply_doc`]) to what it declares, step by step — create it
//! when missing, converge its vCPUs and memory, start it, wait for its
//! guest agent, read cloud-init's status, mount its NFS shares, put its
//! files in place (see [`guest`]), and make the final snapshot when
//! something changed. Every step looks before it acts, so a second apply
//! of the same document changes nothing; a dry run only looks. VMs are
//! worked on side by side (a few at a time); one failing stops its own
//! steps only, and the report says what each step of each VM did.
//!
//! Authorization is the bus layer's, before any of this runs: it makes
//! the creation plans of the VMs that are missing and opens the source
//! files (the caller's descriptors, or host files it was allowed).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::apply_doc::{ApplyDoc, VmDecl};
use super::apply_rules::{self as rules, Report, Status, Step, VmReport, STEPS};
use super::creation::{CreationService, Plan};
use super::guest::GuestService;
use super::snapshot::{snapshot_id, NewSnapshot, SnapshotService};
use super::snapshot_rules::{Request, Requested};
use super::vm::{LifecycleAction, VmService};
use super::vm_clone::{CloneRequest, CloneService};
use super::vm_update::VmChanges;
use crate::libvirt::snapshot::SnapshotDelete;
use crate::libvirt::{Definition, DomainState};
use crate::model::Model;
use crate::progress::Progress;
use crate::{Error, Result};

#[path = "apply_guest.rs"]
mod guest;

/// At most this many VMs are worked on at once: one guest program or
/// transfer each, within a caller's share of them.
const AT_ONCE: usize = super::guest::PER_CALLER;
/// How long cloud-init may still be running before the steps after it go
/// on anyway (its status is reported as it is then).
const CLOUD_INIT_WAIT: Duration = Duration::from_secs(300);

/// The source files of a document's injections, open, by the name the
/// document gives them.
pub type Sources = HashMap<String, Arc<std::fs::File>>;

/// How a missing VM is made, authorized.
pub enum Making {
    Create(Box<Plan>),
    Clone(CloneRequest),
}

/// An authorized apply.
pub struct ApplyRequest {
    pub doc: ApplyDoc,
    /// How each VM that was missing is made, by name.
    pub plans: HashMap<String, Making>,
    /// The UUID of each VM that existed when the apply was authorized, by
    /// name: the steps act on that VM and no other.
    pub found: HashMap<String, String>,
    pub sources: Sources,
    pub dry_run: bool,
    pub uid: u32,
}

pub struct ApplyService {
    model: Arc<Model>,
    vms: VmService,
    guest: Arc<GuestService>,
    snapshots: Arc<SnapshotService>,
    engine: Arc<CreationService>,
    clones: Arc<CloneService>,
    /// VMs an apply is working on: one apply per VM at a time.
    busy: Mutex<HashSet<String>>,
    owed: Arc<Owed>,
}

/// VMs (UUIDs) an apply is about to change or has changed since their
/// final snapshot: noted before each change, cleared once the snapshot is
/// made, so an apply that fails (or a vapord that stops) between the two
/// leaves the snapshot to the next apply that gets that far. Kept in the
/// state directory across restarts.
struct Owed {
    set: Mutex<BTreeSet<String>>,
    file: PathBuf,
}

impl Owed {
    fn load(state_dir: &Path) -> Self {
        let file = state_dir.join(OWED_FILE);
        let set = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Owed {
            set: Mutex::new(set),
            file,
        }
    }

    fn has(&self, uuid: &str) -> bool {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(uuid)
    }

    fn set(&self, uuid: &str, yes: bool) {
        let text = {
            let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
            let changed = if yes {
                set.insert(uuid.to_owned())
            } else {
                set.remove(uuid)
            };
            if !changed {
                return;
            }
            serde_json::to_vec(&*set).unwrap_or_default()
        };
        if let Err(e) = crate::fsutil::write_atomic(&self.file, &text) {
            log::warn!(vm_uuid = uuid; "cannot write {}: {e}", self.file.display());
        }
    }
}

/// Where the owed snapshots are kept, in vapord's state directory.
const OWED_FILE: &str = "apply-owed-snapshots.json";

/// What every VM's steps share.
struct Ctx {
    /// sha256 and size of each source.
    hashes: HashMap<String, (String, u64)>,
    sources: Sources,
    found: HashMap<String, String>,
    owed: Arc<Owed>,
    dry_run: bool,
    uid: u32,
    progress: Arc<dyn Progress>,
    done: AtomicU64,
    total: u64,
}

impl Ctx {
    fn step(&self, vm: &str, step: &str) -> Result<()> {
        if self.progress.cancelled() {
            return Err(Error::Failed("the apply was cancelled".into()));
        }
        let done = self.done.fetch_add(1, Ordering::Relaxed);
        self.progress
            .update(&format!("{vm}: {step}"), done, self.total);
        Ok(())
    }
}

/// The Job's progress while one VM's step runs longer work (a creation,
/// a copy, a snapshot): its steps named after the VM and step, as VMs run
/// side by side.
struct Within {
    job: Arc<dyn Progress>,
    prefix: String,
}

impl Progress for Within {
    fn update(&self, step: &str, done: u64, total: u64) {
        self.job
            .update(&format!("{}: {step}", self.prefix), done, total);
    }
    fn cancelled(&self) -> bool {
        self.job.cancelled()
    }
}

impl Ctx {
    /// Called before each change to VM `uuid` (never in a dry run): its
    /// final snapshot, when it has one, is owed from now on.
    fn changing(&self, d: &VmDecl, uuid: &str) {
        if !self.dry_run && d.final_snapshot.is_some() {
            self.owed.set(uuid, true);
        }
    }

    fn within(&self, vm: &str, step: &str) -> Arc<dyn Progress> {
        Arc::new(Within {
            job: self.progress.clone(),
            prefix: format!("{vm}: {step}"),
        })
    }
}

/// A step's failure: which step, and why.
type Failure = (&'static str, Error);

fn at(step: &'static str) -> impl Fn(Error) -> Failure {
    move |e| (step, e)
}

/// A VM's place in [`ApplyService::busy`], given back when dropped.
struct Busy<'a>(&'a Mutex<HashSet<String>>, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

fn push(r: &mut VmReport, step: &'static str, status: Status, detail: impl Into<String>) {
    r.steps.push(Step {
        step,
        status,
        detail: rules::cut(detail.into(), rules::MAX_DETAIL),
    });
}

/// The steps after `step` that did not run, each with why.
fn rest(r: &mut VmReport, after: &str, status: Status, detail: &str) {
    let from = STEPS.iter().position(|s| *s == after).map_or(0, |i| i + 1);
    for s in &STEPS[from..] {
        if !r.steps.iter().any(|x| x.step == *s) {
            push(r, s, status, detail);
        }
    }
}

/// The largest source file an apply copies.
pub const MAX_SOURCE_BYTES: u64 = 16 << 30;

/// sha256 and size of a file, read from its start with `pread` (the
/// descriptor's offset is left alone), at most [`MAX_SOURCE_BYTES`], until
/// `progress` is cancelled. Blocking.
fn hash_file(name: &str, f: &std::fs::File, progress: &dyn Progress) -> Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let size = f
        .metadata()
        .map_err(|e| Error::Failed(format!("files.{name}: {e}")))?
        .len();
    if size > MAX_SOURCE_BYTES {
        return Err(Error::LimitExceeded(format!(
            "files.{name}: {size} bytes, more than {MAX_SOURCE_BYTES}"
        )));
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut at = 0u64;
    loop {
        if progress.cancelled() {
            return Err(Error::Failed("the apply was cancelled".into()));
        }
        if at > MAX_SOURCE_BYTES {
            return Err(Error::LimitExceeded(format!(
                "files.{name}: grew past {MAX_SOURCE_BYTES} bytes while it was read"
            )));
        }
        let n = f
            .read_at(&mut buf, at)
            .map_err(|e| Error::Failed(format!("cannot read a source file: {e}")))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        at += n as u64;
    }
    Ok((format!("{:x}", hash.finalize()), at))
}

impl ApplyService {
    pub fn new(
        model: Arc<Model>,
        guest: Arc<GuestService>,
        snapshots: Arc<SnapshotService>,
        engine: Arc<CreationService>,
        clones: Arc<CloneService>,
        state_dir: &Path,
    ) -> Arc<Self> {
        Arc::new(Self {
            owed: Arc::new(Owed::load(state_dir)),
            vms: VmService::new(model.clone()),
            model,
            guest,
            snapshots,
            engine,
            clones,
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// Apply an authorized document; the report of every VM.
    pub async fn apply(
        self: &Arc<Self>,
        req: ApplyRequest,
        progress: Arc<dyn Progress>,
    ) -> Result<Report> {
        progress.update("reading the source files", 0, 0);
        let sources = req.sources;
        let hashes = {
            let (sources, progress) = (sources.clone(), progress.clone());
            tokio::task::spawn_blocking(move || {
                sources
                    .iter()
                    .map(|(k, f)| Ok((k.clone(), hash_file(k, f, &*progress)?)))
                    .collect::<Result<HashMap<_, _>>>()
            })
            .await
            .map_err(|e| Error::Failed(format!("reading the source files stopped: {e}")))??
        };
        let ctx = Arc::new(Ctx {
            hashes,
            sources,
            found: req.found,
            owed: self.owed.clone(),
            dry_run: req.dry_run,
            uid: req.uid,
            progress: progress.clone(),
            done: AtomicU64::new(0),
            total: (req.doc.vms.len() * STEPS.len()) as u64,
        });
        let gate = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
        let mut plans = req.plans;
        let work = req.doc.vms.into_iter().map(|decl| {
            let plan = plans.remove(&decl.name);
            let (this, ctx, gate) = (self.clone(), ctx.clone(), gate.clone());
            async move {
                let _turn = gate.acquire().await;
                this.one(&decl, plan, &ctx).await
            }
        });
        let vms = futures_util::future::join_all(work).await;
        let report = Report::new(req.dry_run, vms);
        progress.update("done", ctx.total, ctx.total);
        progress.summary(&report.summary());
        log::info!(uid = req.uid; "apply: {}", report.summary());
        Ok(report)
    }

    /// One VM, all its steps.
    async fn one(&self, d: &VmDecl, plan: Option<Making>, c: &Ctx) -> VmReport {
        let mut r = VmReport {
            name: d.name.clone(),
            ..Default::default()
        };
        let claimed = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.name.clone());
        let outcome = if claimed {
            let _busy = Busy(&self.busy, d.name.clone());
            self.steps(d, plan, c, &mut r).await
        } else {
            Err((
                "create",
                Error::Conflict(format!(
                    "another apply is working on VM '{}'; try again when it is done",
                    d.name
                )),
            ))
        };
        if let Err((step, e)) = outcome {
            log::warn!(vm_name = d.name.as_str(), vm_uuid = r.uuid.as_str(), step = step;
                "apply: {step} failed: {e}");
            r.steps.retain(|s| s.step != step);
            push(&mut r, step, Status::Failed, e.to_string());
            rest(&mut r, step, Status::Skipped, &format!("{step} failed"));
            r.error_kind = Some(e.kind().to_owned());
            r.error = Some(rules::cut(e.to_string(), rules::MAX_DETAIL));
        }
        if let Some(rec) = self.model.get(&r.uuid) {
            r.pending = rec.pending_changes.clone();
        }
        r.steps
            .sort_by_key(|s| STEPS.iter().position(|x| *x == s.step));
        r.conclude();
        log::info!(vm_name = d.name.as_str(), vm_uuid = r.uuid.as_str(); "apply: {}", r.result);
        r
    }

    async fn steps(
        &self,
        d: &VmDecl,
        plan: Option<Making>,
        c: &Ctx,
        r: &mut VmReport,
    ) -> std::result::Result<(), Failure> {
        c.step(&d.name, "create").map_err(at("create"))?;
        let now = self.model.find(&d.name);
        let uuid = match (c.found.get(&d.name), now, plan) {
            (Some(uuid), now, _) => {
                // The VM polkit was asked about, still under this name.
                if now.is_none_or(|rec| rec.uuid != *uuid) {
                    return Err((
                        "create",
                        Error::Conflict(format!(
                            "VM '{}' was deleted or renamed since the apply was authorized; apply again",
                            d.name
                        )),
                    ));
                }
                push(r, "create", Status::Unchanged, "it exists");
                uuid.clone()
            }
            (None, Some(_), _) => {
                return Err((
                    "create",
                    Error::Conflict(format!(
                        "a VM named '{}' appeared since the apply was authorized; apply again",
                        d.name
                    )),
                ))
            }
            (None, None, None) => {
                return Err((
                    "create",
                    Error::NotFound(format!(
                        "VM '{}' does not exist and the document gives no spec or template to make it from",
                        d.name
                    )),
                ))
            }
            (None, None, Some(_)) if c.dry_run => {
                push(r, "create", Status::WouldChange, "it would be created");
                rest(r, "create", Status::Unknown, "decided once it exists");
                return Ok(());
            }
            (None, None, Some(making)) => {
                let (made, how) = match making {
                    Making::Create(plan) => (
                        self.engine
                            .create(*plan, c.uid, c.within(&d.name, "create"))
                            .await,
                        "created".to_owned(),
                    ),
                    Making::Clone(req) => {
                        let how = format!(
                            "cloned ({}) from '{}'",
                            if req.mode == super::vm_clone_plan::CloneMode::Linked {
                                "linked"
                            } else {
                                "full"
                            },
                            self.model
                                .get(&req.source_uuid)
                                .map(|s| s.name.clone())
                                .unwrap_or_default()
                        );
                        let progress = c.within(&d.name, "create");
                        (self.clones.clone_vm(req, progress).await, how)
                    }
                };
                let uuid = made.map_err(at("create"))?;
                c.changing(d, &uuid);
                let _ = self.model.refresh_domain(&uuid).await;
                log::info!(vm_name = d.name.as_str(), vm_uuid = uuid.as_str(), uid = c.uid; "apply: {how}");
                push(r, "create", Status::Changed, how);
                uuid
            }
        };
        r.uuid = uuid.clone();

        c.step(&d.name, "resources").map_err(at("resources"))?;
        self.resources(d, &uuid, c, r)
            .await
            .map_err(at("resources"))?;

        c.step(&d.name, "start").map_err(at("start"))?;
        let rec = self.vms.get(&uuid).map_err(at("start"))?;
        let action = match rec.state {
            DomainState::Paused => Some(LifecycleAction::Resume),
            DomainState::PmSuspended => {
                return Err((
                    "start",
                    Error::InvalidState(format!(
                        "VM '{}' was suspended by its guest; wake it (or start it again) first",
                        d.name
                    )),
                ))
            }
            s if !s.is_active() => Some(LifecycleAction::Start),
            _ => None,
        };
        match action {
            None => push(r, "start", Status::Unchanged, "it runs"),
            Some(a) if c.dry_run => {
                push(
                    r,
                    "start",
                    Status::WouldChange,
                    format!("it would {}", a.verb()),
                );
                rest(r, "start", Status::Unknown, "decided once the guest runs");
                return Ok(());
            }
            Some(a) => {
                self.vms.lifecycle(&uuid, a).await.map_err(at("start"))?;
                push(r, "start", Status::Changed, format!("{}ed", a.verb()));
            }
        }

        c.step(&d.name, "agent").map_err(at("agent"))?;
        let connected = self.model.get(&uuid).is_some_and(|r| r.agent_connected);
        if c.dry_run && !connected {
            push(
                r,
                "agent",
                Status::Unknown,
                "not connected; a dry run does not wait",
            );
            rest(
                r,
                "agent",
                Status::Unknown,
                "decided once the guest agent answers",
            );
            return Ok(());
        }
        let wait = self
            .guest
            .wait_for_agent(&uuid, Duration::from_secs(d.agent_timeout_secs.into()));
        let cancelled = async {
            while !c.progress.cancelled() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let took = tokio::select! {
            r = wait => r.map_err(at("agent"))?,
            () = cancelled => {
                return Err(("agent", Error::Failed("the apply was cancelled".into())))
            }
        };
        push(
            r,
            "agent",
            Status::Unchanged,
            format!("answered after {:.1} s", took.as_secs_f64()),
        );

        c.step(&d.name, "cloud-init").map_err(at("cloud-init"))?;
        self.cloud_init(&uuid, c, r).await;

        let inside = guest::InGuest {
            g: &self.guest,
            uuid: &uuid,
            c,
            d,
        };
        c.step(&d.name, "nfs").map_err(at("nfs"))?;
        inside.nfs(d, r).await.map_err(at("nfs"))?;

        c.step(&d.name, "files").map_err(at("files"))?;
        inside.files(d, r).await.map_err(at("files"))?;

        c.step(&d.name, "snapshot").map_err(at("snapshot"))?;
        self.snapshot(d, &uuid, c, r).await.map_err(at("snapshot"))
    }

    /// Converge vCPUs and memory on the definition the VM starts with
    /// (through Update: a running VM gets what can change live, the rest
    /// is pending until its next start).
    async fn resources(&self, d: &VmDecl, uuid: &str, c: &Ctx, r: &mut VmReport) -> Result<()> {
        if d.vcpus.is_none() && d.memory.is_none() {
            push(r, "resources", Status::Unchanged, "none declared");
            return Ok(());
        }
        let which = if self.vms.get(uuid)?.persistent {
            Definition::Inactive
        } else {
            Definition::Live
        };
        let config = self
            .model
            .hypervisor()
            .on_domain(uuid, move |_, dom| dom.definition(which))
            .await?;
        let (vcpus, memory) = rules::resource_changes(&config, d.vcpus, d.memory);
        let mut said = Vec::new();
        if let Some(v) = vcpus {
            said.push(format!("vcpus to {v}"));
        }
        if let Some(m) = memory {
            said.push(format!("memory to {m} MiB"));
        }
        if said.is_empty() {
            push(
                r,
                "resources",
                Status::Unchanged,
                "vCPUs and memory as declared",
            );
        } else if c.dry_run {
            push(
                r,
                "resources",
                Status::WouldChange,
                format!("would set {}", said.join(", ")),
            );
        } else {
            let changes = VmChanges {
                vcpus,
                memory,
                ..Default::default()
            };
            c.changing(d, uuid);
            let report = self.vms.update(uuid, changes).await?;
            let pending = if report.pending.is_empty() {
                String::new()
            } else {
                format!("; {} at the next start", report.pending.join(", "))
            };
            push(
                r,
                "resources",
                Status::Changed,
                format!("set {}{pending}", said.join(", ")),
            );
        }
        Ok(())
    }

    /// cloud-init's status, waiting (bounded) while it still runs. Never
    /// fails the VM: a guest without cloud-init is provisioned all the same.
    async fn cloud_init(&self, uuid: &str, c: &Ctx, r: &mut VmReport) {
        let started = std::time::Instant::now();
        loop {
            match self.guest.cloud_init_status(uuid, c.uid).await {
                Ok(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let status = v["status"].as_str().unwrap_or("?").to_owned();
                    if status == "running"
                        && !c.dry_run
                        && started.elapsed() < CLOUD_INIT_WAIT
                        && !c.progress.cancelled()
                    {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        continue;
                    }
                    let errors = v["errors"].as_array().map_or(0, Vec::len);
                    push(
                        r,
                        "cloud-init",
                        Status::Unchanged,
                        format!("status {status}, {errors} error(s)"),
                    );
                    r.cloud_init = Some(rules::kept_cloud_init(v));
                }
                Err(e) => push(
                    r,
                    "cloud-init",
                    Status::Unchanged,
                    format!("no status: {e}"),
                ),
            }
            return;
        }
    }

    /// The final snapshot: (re)made when this apply changed the VM, or
    /// when it is missing.
    async fn snapshot(&self, d: &VmDecl, uuid: &str, c: &Ctx, r: &mut VmReport) -> Result<()> {
        let Some(name) = &d.final_snapshot else {
            push(r, "snapshot", Status::Unchanged, "none declared");
            return Ok(());
        };
        let _ = self.snapshots.resync_vm(uuid).await;
        let exists = self
            .snapshots
            .of_vm(uuid)
            .iter()
            .any(|s| s.rec.name == *name);
        let owed = c.owed.has(uuid);
        let Some(why) = rules::snapshot_due(r.changed_something() || owed, exists) else {
            push(r, "snapshot", Status::Unchanged, format!("'{name}' exists"));
            return Ok(());
        };
        if c.dry_run {
            push(
                r,
                "snapshot",
                Status::WouldChange,
                format!("'{name}' would be {why}"),
            );
            return Ok(());
        }
        c.changing(d, uuid);
        if exists {
            let how = SnapshotDelete {
                children: false,
                metadata_only: false,
            };
            self.snapshots.delete(&snapshot_id(uuid, name), how).await?;
        }
        let new = NewSnapshot {
            name: Some(name.clone()),
            description: "made by vapord's Apply".into(),
            request: Request {
                kind: Requested::Auto,
                memory: None,
                quiesce: false,
            },
        };
        let progress = c.within(&d.name, "snapshot");
        self.snapshots.create(uuid, new, progress).await?;
        c.owed.set(uuid, false);
        let why = if owed && !r.changed_something() {
            "made: an earlier apply changed the VM and failed before it"
        } else {
            why
        };
        log::info!(vm_name = d.name.as_str(), vm_uuid = uuid; "apply: snapshot '{name}' {why}");
        push(r, "snapshot", Status::Changed, format!("'{name}' {why}"));
        Ok(())
    }
}
