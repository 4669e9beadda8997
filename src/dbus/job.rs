//! `org.vapor.Virtualization.Job`: long work (VM creation, volume creation,
//! clone, upload, download, wipe …) as an object, after udisks2's Job: Operation, Progress, Bytes, Rate,
//! ExpectedEndTime, StartedByUID, Cancelable, `Cancel()` and a
//! `Completed(b success, s message)` signal. The method that started the job
//! returns when it is done; the object is removed right after `Completed`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedSender;
use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::ObjectServer;

use super::polkit::{Action, Authorizer};
use super::{Error, ROOT_PATH};
use crate::progress::{CancelFlag, Progress};

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// A fresh job object path.
pub fn next_job_path() -> String {
    format!(
        "{ROOT_PATH}/job/{}",
        NEXT_JOB.fetch_add(1, Ordering::SeqCst)
    )
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    step: String,
    done: u64,
    total: u64,
}

/// The state a job shares between the worker (blocking thread) and the bus.
pub struct JobState {
    pub operation: String,
    /// The objects it acts on (for a creation: the VM it makes, by the path
    /// it will have).
    pub objects: Vec<String>,
    pub started_by_uid: u32,
    /// The Job object's path (set when it is exported).
    pub path: String,
    started: Instant,
    start_time_usec: u64,
    snapshot: Mutex<Snapshot>,
    /// Figures particular to the work ([`Progress::figures`]).
    figures: Mutex<Vec<(String, u64)>>,
    /// What the work achieved ([`Progress::summary`]).
    summary: Mutex<String>,
    cancel: CancelFlag,
    /// Whether the work checks `cancel` (uploads, downloads and creations
    /// do; a single libvirt call such as a wipe or a copy cannot stop).
    cancelable: bool,
    /// Pokes the bus side to emit PropertiesChanged.
    notify: UnboundedSender<()>,
}

impl JobState {
    pub fn new(
        operation: &str,
        objects: Vec<String>,
        uid: u32,
        notify: UnboundedSender<()>,
    ) -> Arc<Self> {
        Arc::new(Self {
            operation: operation.into(),
            objects,
            started_by_uid: uid,
            path: String::new(),
            started: Instant::now(),
            start_time_usec: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
            snapshot: Mutex::new(Snapshot::default()),
            figures: Mutex::new(Vec::new()),
            summary: Mutex::new(String::new()),
            cancel: CancelFlag::default(),
            cancelable: true,
            notify,
        })
    }

    fn snap(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn progress(&self) -> f64 {
        let s = self.snap();
        if s.total == 0 {
            0.0
        } else {
            (s.done as f64 / s.total as f64).clamp(0.0, 1.0)
        }
    }

    fn rate(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 {
            0
        } else {
            (self.snap().done as f64 / secs) as u64
        }
    }
}

impl Progress for JobState {
    fn update(&self, step: &str, done: u64, total: u64) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Snapshot {
            step: step.into(),
            done,
            total,
        };
        let _ = self.notify.send(());
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_set()
    }

    fn summary(&self, text: &str) {
        *self.summary.lock().unwrap_or_else(|e| e.into_inner()) = text.to_owned();
    }

    fn figures(&self, figures: &[(&'static str, u64)]) {
        *self.figures.lock().unwrap_or_else(|e| e.into_inner()) =
            figures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let _ = self.notify.send(());
    }
}

pub struct Job {
    pub state: Arc<JobState>,
    /// Who may cancel (polkit); None only in unit tests, which never call.
    pub auth: Option<Arc<Authorizer>>,
}

#[interface(name = "org.vapor.Virtualization.Job", proxy(visibility = "pub"))]
impl Job {
    /// Ask the job to stop; what it made so far is removed. polkit decides:
    /// `job-cancel` for one's own job, `job-cancel-other` for someone
    /// else's (as udisks does).
    async fn cancel(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let Some(auth) = &self.auth else {
            return Err(Error::NotAuthorized("no authorization for this job".into()));
        };
        if !self.state.cancelable {
            return Err(Error::NotSupported(format!(
                "a {} job cannot be stopped part way; it ends by itself",
                self.state.operation
            )));
        }
        let uid = auth.caller_uid(&header).await?;
        let starter = self.state.started_by_uid;
        let action = if uid == starter {
            Action::JobCancel
        } else {
            Action::JobCancelOther
        };
        auth.check(&header, action, &*self.state, "cancel").await?;
        self.state.cancel.cancel();
        Ok(())
    }

    /// Emitted once when the job ends.
    #[zbus(signal)]
    pub async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;

    /// What the job does (`vm-create`, `volume-upload`, …).
    #[zbus(property(emits_changed_signal = "const"), name = "Operation")]
    fn operation(&self) -> String {
        self.state.operation.clone()
    }

    /// The objects the job acts on (a creation: the path the new VM will
    /// have).
    #[zbus(property(emits_changed_signal = "const"), name = "Objects")]
    fn objects(&self) -> Vec<zbus::OwnedObjectPath> {
        self.state
            .objects
            .iter()
            .filter_map(|p| zbus::OwnedObjectPath::try_from(p.as_str()).ok())
            .collect()
    }

    /// 0.0 … 1.0.
    #[zbus(property(emits_changed_signal = "true"), name = "Progress")]
    fn progress(&self) -> f64 {
        self.state.progress()
    }

    /// What is happening now, in words.
    #[zbus(property(emits_changed_signal = "true"), name = "Step")]
    fn step(&self) -> String {
        self.state.snap().step
    }

    /// Total bytes the job makes (0 if unknown).
    #[zbus(property(emits_changed_signal = "true"), name = "Bytes")]
    fn bytes(&self) -> u64 {
        self.state.snap().total
    }

    /// Bytes per second so far.
    #[zbus(property(emits_changed_signal = "true"), name = "Rate")]
    fn rate(&self) -> u64 {
        self.state.rate()
    }

    /// Microseconds since the epoch when the job started.
    #[zbus(property(emits_changed_signal = "const"), name = "StartTime")]
    fn start_time(&self) -> u64 {
        self.state.start_time_usec
    }

    /// Estimated end, microseconds since the epoch (0 if unknown).
    #[zbus(property(emits_changed_signal = "true"), name = "ExpectedEndTime")]
    fn expected_end_time(&self) -> u64 {
        let p = self.state.progress();
        if p <= 0.0 {
            return 0;
        }
        let elapsed = self.state.started.elapsed().as_micros() as f64;
        self.state.start_time_usec + (elapsed / p) as u64
    }

    /// Figures particular to the work, each a `t`: a migration's
    /// `data_processed`, `data_remaining`, `data_total`, `memory_bps`,
    /// `iteration`, `expected_downtime_ms` …
    #[zbus(property(emits_changed_signal = "true"), name = "Details")]
    fn details(&self) -> std::collections::HashMap<String, zbus::OwnedVariant> {
        self.state
            .figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), zbus::OwnedVariant::from(*v)))
            .collect()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "StartedByUID")]
    fn started_by_uid(&self) -> u32 {
        self.state.started_by_uid
    }

    #[zbus(property(emits_changed_signal = "const"), name = "Cancelable")]
    fn cancelable(&self) -> bool {
        self.state.cancelable
    }
}

/// Run `work` as a Job: the object appears before the work starts, follows
/// its progress (one PropertiesChanged per report), emits `Completed` and
/// disappears when it ends. Every long operation goes through here.
/// One PropertiesChanged with everything about a job's progress.
async fn announce_progress(iface: &zbus::object_server::InterfaceRef<Job>) {
    let job = iface.get().await;
    let mut changed: std::collections::HashMap<&str, zbus::Variant<'_>> =
        std::collections::HashMap::new();
    changed.insert("Progress", job.progress().into());
    changed.insert("Step", job.step().into());
    changed.insert("Bytes", job.bytes().into());
    changed.insert("Rate", job.rate().into());
    changed.insert("ExpectedEndTime", job.expected_end_time().into());
    let details: std::collections::HashMap<String, zbus::OwnedVariant> = job.details();
    changed.insert("Details", details.into());
    let _ = zbus::fdo::Properties::properties_changed(
        iface.signal_emitter(),
        zbus::names::InterfaceName::from_static_str_unchecked("org.vapor.Virtualization.Job"),
        changed,
        std::borrow::Cow::Borrowed(&[]),
    )
    .await;
}

impl super::polkit::Target for JobState {
    fn describe(&self) -> String {
        format!("the {} job of user {}", self.operation, self.started_by_uid)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("job.operation", self.operation.clone()),
            ("job.started_by_uid", self.started_by_uid.to_string()),
        ]
    }
}

/// What a job is, before it runs.
pub struct JobSpec<'a> {
    /// `vm-create`, `volume-upload`, …
    pub operation: &'a str,
    /// The objects it acts on (paths; a new object's path-to-be).
    pub objects: Vec<String>,
    /// Who started it.
    pub uid: u32,
    /// Whether the work stops when asked (see [`JobState`]).
    pub cancelable: bool,
}

pub async fn run<T, F, Fut>(
    server: &ObjectServer,
    auth: &Arc<Authorizer>,
    operation: &str,
    objects: Vec<String>,
    uid: u32,
    work: F,
) -> Result<T, Error>
where
    F: FnOnce(Arc<JobState>) -> Fut,
    Fut: std::future::Future<Output = crate::Result<T>>,
{
    let spec = JobSpec {
        operation,
        objects,
        uid,
        cancelable: true,
    };
    run_job(server, auth, spec, work).await
}

/// [`run`], for work that may not stop when asked (`cancelable: false`).
pub async fn run_job<T, F, Fut>(
    server: &ObjectServer,
    auth: &Arc<Authorizer>,
    spec: JobSpec<'_>,
    work: F,
) -> Result<T, Error>
where
    F: FnOnce(Arc<JobState>) -> Fut,
    Fut: std::future::Future<Output = crate::Result<T>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = JobState::new(spec.operation, spec.objects, spec.uid, tx);
    let path = next_job_path();
    if let Some(s) = Arc::get_mut(&mut state) {
        s.cancelable = spec.cancelable;
        s.path = path.clone();
    }
    server
        .at(
            path.as_str(),
            Job {
                state: state.clone(),
                auth: Some(auth.clone()),
            },
        )
        .await?;
    let iface = server.interface::<_, Job>(path.as_str()).await?;
    let registry = super::managed::registry(server).await;
    if let Some(r) = &registry {
        r.job_started(&path);
    }
    let notifier = {
        let iface = iface.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // At most one PropertiesChanged every quarter second, however
                // often the work reports (an upload reports every chunk).
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                while rx.try_recv().is_ok() {}
                announce_progress(&iface).await;
            }
        })
    };
    let result = work(state.clone()).await;
    notifier.abort();
    announce_progress(&iface).await;
    // Broadcast to every listener: bus-safe, whatever the error quotes.
    let (ok, msg) = match &result {
        Ok(_) => (
            true,
            crate::text::for_bus(&state.summary.lock().unwrap_or_else(|e| e.into_inner()))
                .into_owned(),
        ),
        Err(e) => (false, crate::text::for_bus(&e.to_string()).into_owned()),
    };
    let emitter: &SignalEmitter<'_> = iface.signal_emitter();
    let _ = Job::completed(emitter, ok, &msg).await;
    let _ = server.remove::<Job, _>(path.as_str()).await;
    if let Some(r) = &registry {
        r.job_ended(&path);
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbus::introspection::{canonical_interface, shipped_interface};
    use zbus::object_server::Interface;

    #[test]
    fn shipped_job_xml_matches_the_interface() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            state: JobState::new("vm-create", Vec::new(), 0, tx),
            auth: None,
        };
        let mut xml = String::from("<node>");
        job.introspect_to_writer(&mut xml, 0);
        xml.push_str("</node>");
        let live = crate::libvirt::xml::Element::parse(&xml).unwrap();
        let name = "org.vapor.Virtualization.Job";
        assert_eq!(
            canonical_interface(&live, name),
            canonical_interface(&shipped_interface(name), name),
            "dbus/{name}.xml is out of date"
        );
    }

    #[test]
    fn progress_and_rate_follow_updates() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let state = JobState::new("vm-create", Vec::new(), 1000, tx);
        assert_eq!(state.progress(), 0.0);
        state.update("creating", 1 << 30, 4 << 30);
        assert!(rx.try_recv().is_ok(), "an update pokes the bus side");
        assert_eq!(state.progress(), 0.25);
        assert!(!state.cancelled());
        state.cancel.cancel();
        assert!(state.cancelled());
    }
}
