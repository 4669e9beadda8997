//! VM lifecycle, autostart, deletion and description.
//!
//! Each operation checks the cached state first so that the common mistakes
//! (starting a running VM, resuming one that is not paused) get a clear
//! message, performs the libvirt call on the blocking pool, then re-reads the
//! domain so the cache — and therefore the bus — is current when the caller
//! gets its reply.

use std::sync::Arc;

use serde_json::{json, Value};

use super::storage_ownership;
use crate::libvirt::xml::{domain_disks, nvram_path, DiskSource};
use crate::libvirt::Hypervisor;
use crate::libvirt::{DomainAction, DomainRecord, DomainRef, DomainState, Session, Undefine};
use crate::model::Model;
use crate::{Error, Result};

/// The lifecycle operations a VM object offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Start,
    /// Ask the guest to power off (ACPI or guest agent).
    Shutdown,
    /// Ask the guest to reboot.
    Reboot,
    /// Pull the plug (`virDomainDestroy`).
    ForceStop,
    Pause,
    Resume,
    /// Press the reset button.
    Reset,
}

impl LifecycleAction {
    pub fn verb(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Shutdown => "shut down",
            Self::Reboot => "reboot",
            Self::ForceStop => "force-stop",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Reset => "reset",
        }
    }

    /// What libvirt is asked to do.
    fn domain_action(self) -> DomainAction {
        match self {
            Self::Start => DomainAction::Start,
            Self::Shutdown => DomainAction::Shutdown,
            Self::Reboot => DomainAction::Reboot,
            Self::ForceStop => DomainAction::Destroy,
            Self::Pause => DomainAction::Suspend,
            Self::Resume => DomainAction::Resume,
            Self::Reset => DomainAction::Reset,
        }
    }

    /// The state libvirt guarantees after this call succeeded: `Some(None)`
    /// when the domain is then gone (a transient one stopped), `None` when the
    /// state must be read back (Start may resume a saved image; Shutdown and
    /// Reboot depend on the guest).
    fn outcome(self, persistent: bool) -> Option<Option<(DomainState, &'static str)>> {
        match self {
            Self::Pause => Some(Some((DomainState::Paused, "user"))),
            Self::Resume => Some(Some((DomainState::Running, "unpaused"))),
            Self::ForceStop if persistent => Some(Some((DomainState::ShutOff, "destroyed"))),
            Self::ForceStop => Some(None),
            Self::Start | Self::Shutdown | Self::Reboot | Self::Reset => None,
        }
    }

    /// Why this action cannot apply in `state`, if it cannot.
    fn refuse(self, state: DomainState) -> Option<&'static str> {
        use DomainState as S;
        match (self, state) {
            (Self::Start, s) if s.is_active() => Some("it is already running"),
            (Self::Resume, S::Paused) | (Self::Resume, S::PmSuspended) => None,
            (Self::Resume, _) => Some("it is not paused"),
            (Self::Pause, S::Paused) => Some("it is already paused"),
            (Self::Start, _) => None,
            (_, s) if !s.is_active() => Some("it is not running"),
            _ => None,
        }
    }
}

/// Options of `Delete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Also delete the storage vapord created for this VM (unless another
    /// VM uses it).
    pub remove_storage: bool,
    /// Also delete other storage of this VM that no one else uses (implies
    /// `remove_storage`; authorized separately).
    pub remove_foreign_storage: bool,
    /// Force-stop a running VM first instead of refusing.
    pub force: bool,
}

/// What undefining a deleted VM removes besides its definition: its
/// firmware variables when nothing else needs them (`nvram_free`, only ever
/// with `remove_storage`), its TPM state with its storage. Pure.
fn undefine_on_delete(remove_storage: bool, nvram_free: bool) -> Undefine {
    Undefine {
        remove_nvram: nvram_free,
        remove_tpm: remove_storage,
    }
}

/// What `Delete` did with each piece of storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeleteReport {
    /// Paths deleted.
    pub removed: Vec<String>,
    /// Paths (or disk targets) left in place, with the reason.
    pub kept: Vec<(String, String)>,
}

/// The VM operations.
pub struct VmService {
    model: Arc<Model>,
}

impl VmService {
    pub fn new(model: Arc<Model>) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The cached record, or NotFound naming what was asked for.
    pub fn get(&self, uuid: &str) -> Result<Arc<DomainRecord>> {
        self.model
            .get(uuid)
            .ok_or_else(|| Error::NotFound(format!("no virtual machine with UUID {uuid}")))
    }

    pub(super) async fn with_domain<T, F>(&self, uuid: &str, f: F) -> Result<T>
    where
        F: FnOnce(&Session<'_>, &DomainRef) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.model.hypervisor().on_domain(uuid, f).await
    }

    /// Perform a lifecycle action and return the VM's record afterwards.
    pub async fn lifecycle(&self, uuid: &str, action: LifecycleAction) -> Result<()> {
        // A start waits for a clone (or a change) of this VM to finish.
        let _locked = match action {
            LifecycleAction::Start => Some(self.model.lock_vm(uuid).await),
            _ => None,
        };
        let rec = self.get(uuid)?;
        if let Some(why) = action.refuse(rec.state) {
            return Err(Error::InvalidState(format!(
                "cannot {} VM '{}': {why}",
                action.verb(),
                rec.name
            )));
        }
        let what = format!("cannot {} VM '{}'", action.verb(), rec.name);
        let persistent = rec.persistent;
        let model = self.model.clone();
        let result = self
            .with_domain(uuid, move |_, d| {
                let done = d
                    .perform(action.domain_action())
                    .map_err(|e| e.context(&what));
                if done.is_err() {
                    return Ok((done, None));
                }
                // What follows describes the domain as it is now that libvirt
                // returned: its ticket is taken now, so a reading that began
                // before the call finished (the periodic statistics, say)
                // can never replace it with the old state.
                let ticket = model.ticket();
                // The reply must reflect the new state. Where libvirt defines
                // the outcome of a successful call, record it without another
                // round trip; otherwise read it back on the same handle.
                let state = match action.outcome(persistent) {
                    Some(known) => Some(known),
                    // A fresh start: re-read everything (live counters too).
                    None if action == LifecycleAction::Start => None,
                    None => match d.state() {
                        Ok(s) => Some(Some(s)),
                        Err(Error::NotFound(_)) => Some(None),
                        Err(_) => None,
                    },
                };
                Ok((done, state.map(|st| (ticket, st))))
            })
            .await;
        match result {
            Ok((done, Some((ticket, state)))) => {
                self.model.note_state(uuid, ticket, state);
                if done.is_ok() {
                    log::info!(vm_name = rec.name.as_str(), vm_uuid = uuid; "{} done", action.verb());
                }
                done
            }
            Ok((done, None)) => {
                self.refresh_quietly(uuid).await;
                done
            }
            Err(e) => {
                self.refresh_quietly(uuid).await;
                Err(e)
            }
        }
    }

    /// Mark the VM to start (or not) when the host boots.
    pub async fn set_autostart(&self, uuid: &str, on: bool) -> Result<()> {
        let rec = self.get(uuid)?;
        if !rec.persistent {
            return Err(Error::InvalidState(format!(
                "VM '{}' is transient (not defined), so it cannot start with the host",
                rec.name
            )));
        }
        let what = format!("cannot change autostart of VM '{}'", rec.name);
        let result = self
            .with_domain(uuid, move |_, d| {
                d.set_autostart(on).map_err(|e| e.context(&what))
            })
            .await;
        self.refresh_quietly(uuid).await;
        result
    }

    pub(super) async fn refresh_quietly(&self, uuid: &str) {
        if let Err(e) = self.model.refresh_domain(uuid).await {
            log::warn!(vm_uuid = uuid; "cannot re-read VM after an operation: {e}");
        }
    }

    /// Undefine the VM (force-stopping it first if asked) and, if asked, delete
    /// the storage that belongs to it alone (see `storage_ownership`).
    pub async fn delete(&self, uuid: &str, opts: DeleteOptions) -> Result<DeleteReport> {
        let _locked = self.model.lock_vm(uuid).await;
        let rec = self.get(uuid)?;
        let name = rec.name.clone();
        let uuid_owned = uuid.to_owned();
        let report = self
            .with_domain(uuid, move |s, d| {
                delete_blocking(s, d, &uuid_owned, &name, opts)
            })
            .await;
        self.refresh_quietly(uuid).await;
        if let Ok(r) = &report {
            log::info!(vm_name = rec.name.as_str(), vm_uuid = uuid;
                "deleted; removed {:?}, kept {:?}", r.removed, r.kept);
        }
        report
    }

    /// The VM's whole configuration and state as JSON.
    pub async fn describe(&self, uuid: &str) -> Result<Value> {
        let rec = self.get(uuid)?;
        let name = rec.name.clone();
        let (definitions, metadata) = self
            .with_domain(uuid, move |_, d| {
                let what = format!("cannot read the configuration of VM '{name}'");
                let definitions = d.definitions().map_err(|e| e.context(&what))?;
                Ok((definitions, d.vapor_metadata()))
            })
            .await?;
        let live_root = definitions.live;
        let disks: Vec<Value> = domain_disks(&live_root)
            .into_iter()
            .map(|d| {
                let source = match d.source {
                    DiskSource::Path(p) => json!({"path": p}),
                    DiskSource::Volume { pool, volume } => json!({"pool": pool, "volume": volume}),
                    DiskSource::Network(n) => json!({"network": n}),
                    DiskSource::Empty => Value::Null,
                };
                json!({
                    "device": d.device, "target": d.target, "bus": d.bus, "format": d.format,
                    "source": source, "readonly": d.readonly, "shareable": d.shareable,
                    "backing_chain": d.backing,
                })
            })
            .collect();
        let config_json = match definitions.inactive {
            Some(x) => x.to_json(),
            None => live_root.to_json(),
        };
        Ok(json!({
            "name": rec.name,
            "uuid": rec.uuid,
            "state": rec.state.as_str(),
            "state_reason": rec.state_reason,
            "persistent": rec.persistent,
            "autostart": rec.autostart,
            "memory_mib": rec.memory_kib / 1024,
            "current_memory_mib": rec.current_memory_kib / 1024,
            "vcpus": rec.vcpus,
            "max_vcpus": rec.max_vcpus,
            "cpu_time_ns": rec.cpu_time_ns,
            "memory_used_kib": rec.memory_rss_kib,
            "vapor": metadata,
            "disks": disks,
            "domain": config_json,
            "live": if rec.state.is_active() { live_root.to_json() } else { Value::Null },
        }))
    }
}

fn delete_blocking(
    s: &Session,
    d: &DomainRef,
    uuid: &str,
    name: &str,
    opts: DeleteOptions,
) -> Result<DeleteReport> {
    let what = format!("cannot delete VM '{name}'");
    let active = d.is_active().map_err(|e| e.context(&what))?;
    if active && !opts.force {
        return Err(Error::InvalidState(format!(
            "{what}: it is running; stop it first or pass force=true"
        )));
    }
    let persistent = d.is_persistent().map_err(|e| e.context(&what))?;
    let mut report = DeleteReport::default();

    // Plan before touching anything: the definition is needed to know the disks.
    let definitions = d.definitions().map_err(|e| e.context(&what))?;
    let mut disks = Vec::new();
    let mut nvram = None;
    for root in definitions.persistent_first() {
        if nvram.is_none() {
            nvram = nvram_path(root);
        }
        disks.extend(domain_disks(root));
    }
    let plan = if opts.remove_storage {
        let owned = d.vapor_metadata().owned_volumes;
        Some(storage_ownership::plan(
            s,
            uuid,
            &disks,
            &owned,
            nvram.as_deref(),
            opts.remove_foreign_storage,
        )?)
    } else {
        None
    };

    if active {
        d.destroy().map_err(|e| e.context(&what))?;
    }
    if persistent {
        let nvram_kept = match &plan {
            None => Some("firmware variables kept (remove_storage not set)".to_owned()),
            Some(p) => p.nvram_kept.clone(),
        };
        d.undefine(undefine_on_delete(
            opts.remove_storage,
            nvram_kept.is_none(),
        ))
        .map_err(|e| e.context(&what))?;
        if let Some(p) = nvram {
            match nvram_kept {
                None => report.removed.push(p),
                Some(why) => report.kept.push((p, why)),
            }
        }
    }

    match plan {
        Some(plan) => {
            report.kept.extend(plan.kept);
            for (path, vol) in plan.delete {
                match vol.delete() {
                    Ok(()) => report.removed.push(path),
                    Err(e) => report.kept.push((path, format!("deleting failed: {e}"))),
                }
            }
        }
        None => {
            for disk in disks {
                if let Some(p) = storage_ownership::resolve_path(s, &disk.source) {
                    if !report.kept.iter().any(|(k, _)| *k == p) {
                        report
                            .kept
                            .push((p, "storage kept (remove_storage not set)".into()));
                    }
                }
            }
        }
    }
    Ok(report)
}

/// The names of the VMs in `used_by` (uuid, name) that are in `running`.
pub fn running_users(used_by: &[(String, String)], running: &[String]) -> Vec<String> {
    used_by
        .iter()
        .filter(|(uuid, _)| running.contains(uuid))
        .map(|(_, name)| name.clone())
        .collect()
}

/// Which of these domains run now, asked of libvirt (not the cache, which
/// may not have seen a start made a moment ago with virsh).
pub async fn running_now(hv: &Hypervisor, vms: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (uuid, _) in vms {
        if let Ok(Some((state, _))) = hv.state(uuid).await {
            if state.is_active() {
                out.push(uuid.clone());
            }
        }
    }
    out
}

/// The names of the VMs among `vms` (uuid, name) that run now: what
/// stopping a network or a pool they use would cut off.
pub async fn running_among(hv: &Hypervisor, vms: &[(String, String)]) -> Vec<String> {
    running_users(vms, &running_now(hv, vms).await)
}

#[cfg(test)]
mod tests {
    use super::LifecycleAction as A;
    use crate::libvirt::DomainState as S;

    #[test]
    fn only_running_users_keep_a_network_up() {
        let users = vec![
            ("u1".to_string(), "web".to_string()),
            ("u2".to_string(), "db".to_string()),
        ];
        assert_eq!(super::running_users(&users, &["u2".to_string()]), ["db"]);
        assert!(super::running_users(&users, &[]).is_empty());
    }

    #[test]
    fn outcomes_recorded_without_a_round_trip_are_libvirts() {
        assert_eq!(A::Pause.outcome(true), Some(Some((S::Paused, "user"))));
        assert_eq!(
            A::Resume.outcome(true),
            Some(Some((S::Running, "unpaused")))
        );
        assert_eq!(
            A::ForceStop.outcome(true),
            Some(Some((S::ShutOff, "destroyed")))
        );
        assert_eq!(
            A::ForceStop.outcome(false),
            Some(None),
            "a transient VM is gone"
        );
        assert_eq!(
            A::Start.outcome(true),
            None,
            "Start may restore a saved image"
        );
    }

    #[test]
    fn deletion_takes_nvram_only_when_free_and_tpm_only_with_the_storage() {
        use super::undefine_on_delete;
        use crate::libvirt::Undefine;
        assert_eq!(
            undefine_on_delete(false, false),
            Undefine {
                remove_nvram: false,
                remove_tpm: false
            }
        );
        assert_eq!(
            undefine_on_delete(true, false),
            Undefine {
                remove_nvram: false,
                remove_tpm: true
            },
            "firmware variables another VM uses stay"
        );
        assert_eq!(
            undefine_on_delete(true, true),
            Undefine {
                remove_nvram: true,
                remove_tpm: true
            }
        );
    }

    #[test]
    fn every_action_is_the_libvirt_operation_of_its_name() {
        use crate::libvirt::DomainAction as D;
        let pairs = [
            (A::Start, D::Start),
            (A::Shutdown, D::Shutdown),
            (A::Reboot, D::Reboot),
            (A::ForceStop, D::Destroy),
            (A::Pause, D::Suspend),
            (A::Resume, D::Resume),
            (A::Reset, D::Reset),
        ];
        for (a, d) in pairs {
            assert_eq!(a.domain_action(), d, "{}", a.verb());
        }
    }

    #[test]
    fn obvious_mistakes_are_refused_with_a_reason() {
        assert_eq!(A::Start.refuse(S::Running), Some("it is already running"));
        assert_eq!(A::Start.refuse(S::ShutOff), None);
        assert_eq!(A::Resume.refuse(S::Running), Some("it is not paused"));
        assert_eq!(A::Resume.refuse(S::Paused), None);
        assert_eq!(A::Pause.refuse(S::Paused), Some("it is already paused"));
        assert_eq!(A::Shutdown.refuse(S::ShutOff), Some("it is not running"));
        assert_eq!(A::ForceStop.refuse(S::Paused), None);
        assert_eq!(A::Reset.refuse(S::Running), None);
    }
}
