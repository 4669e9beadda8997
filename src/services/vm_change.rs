//! Changing a VM that exists: `Update` (see [`super::vm_update`] for what a
//! change document does) and setting vCPUs and memory live and/or in the
//! configuration. Configuration changes are one define of the edited
//! definition, so they land all at once or not at all; a later step that
//! fails puts the old definition (and name) back.

use serde::Serialize;

use super::vm::VmService;
use super::vm_update::{self, Facts, LiveStep, UpdatePlan, VmChanges};
use crate::libvirt::domain_change::LiveLimits;
use crate::libvirt::xml::Element;
use crate::libvirt::{DeviceScope, DomainRef, Session};
use crate::{Error, Result};

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateReport {
    /// Every field the document changed.
    pub changed: Vec<String>,
    /// Those that take effect only at the next start.
    pub pending: Vec<String>,
}

/// Merge `new` into `old` pending fields, keeping order, no repeats. Pure.
pub fn merge_pending(old: &[String], new: &[String]) -> Vec<String> {
    let mut out = old.to_vec();
    for f in new {
        if !out.contains(f) {
            out.push(f.clone());
        }
    }
    out
}

impl VmService {
    /// Apply a validated change document.
    pub async fn update(&self, uuid: &str, changes: VmChanges) -> Result<UpdateReport> {
        let _locked = self.model().lock_vm(uuid).await;
        let rec = self.get(uuid)?;
        let name = rec.name.clone();
        if let Some(new) = &changes.name {
            if let Some(other) = self.model().find(new) {
                if other.uuid != rec.uuid {
                    return Err(Error::Conflict(format!(
                        "name: another VM is already called '{new}'"
                    )));
                }
            }
        }
        let result = self
            .with_domain(uuid, move |s, d| update_blocking(s, d, &name, &changes))
            .await;
        self.refresh_quietly(uuid).await;
        let (report, all_pending) = result?;
        if let Some(all) = all_pending {
            self.model().set_pending(uuid, all).await;
        }
        log::info!(vm_name = rec.name.as_str(), vm_uuid = uuid;
            "updated {:?}; pending until the next start: {:?}", report.changed, report.pending);
        Ok(report)
    }

    /// Set the vCPUs in use, in `scope`.
    pub async fn set_vcpus(&self, uuid: &str, n: u32, scope: DeviceScope) -> Result<()> {
        let _locked = self.model().lock_vm(uuid).await;
        let rec = self.get(uuid)?;
        let what = format!("cannot set the vCPUs of VM '{}' to {n}", rec.name);
        let r = self
            .with_domain(uuid, move |_, d| {
                d.set_vcpus(n, scope).map_err(|e| e.context(&what))?;
                Ok(note_config_only(d, scope, "vcpus"))
            })
            .await;
        self.refresh_quietly(uuid).await;
        self.publish_pending(uuid, r).await
    }

    /// Publish the pending list a change returned (when it made one).
    async fn publish_pending(&self, uuid: &str, r: Result<Option<Vec<String>>>) -> Result<()> {
        if let Some(all) = r? {
            self.model().set_pending(uuid, all).await;
        }
        Ok(())
    }

    /// Set the memory in use (balloon, within the maximum), in `scope`.
    pub async fn set_memory(&self, uuid: &str, mib: u64, scope: DeviceScope) -> Result<()> {
        let _locked = self.model().lock_vm(uuid).await;
        let rec = self.get(uuid)?;
        let what = format!("cannot set the memory of VM '{}' to {mib} MiB", rec.name);
        let r = self
            .with_domain(uuid, move |_, d| {
                if scope.live {
                    let max = d.live_limits().map_err(|e| e.context(&what))?.max_memory_kib;
                    if mib * 1024 > max {
                        return Err(Error::InvalidArgument(format!(
                            "memory: {mib} MiB is more than the running maximum ({} MiB); raise max_memory with Update and restart",
                            max / 1024
                        )));
                    }
                }
                d.set_memory(mib * 1024, scope).map_err(|e| e.context(&what))?;
                Ok(note_config_only(d, scope, "memory"))
            })
            .await;
        self.refresh_quietly(uuid).await;
        self.publish_pending(uuid, r).await
    }
}

/// The most vCPUs and memory (MiB) the host allows one VM: two libvirt
/// round trips, so read at most once a minute (they change only when the
/// host's hardware does).
fn host_limits(s: &Session) -> (u32, u64) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static CACHE: Mutex<Option<(Instant, (u32, u64))>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, limits)) = *cache {
        if at.elapsed() < Duration::from_secs(60) {
            return limits;
        }
    }
    let limits = (
        s.max_vcpus().unwrap_or(u32::MAX),
        s.host_memory_kib().map_or(u64::MAX, |k| k / 1024),
    );
    *cache = Some((Instant::now(), limits));
    limits
}

/// A change of a running VM's definition alone waits for the next start:
/// add `field` to its pending changes; their whole list now, if it changed.
fn note_config_only(d: &DomainRef, scope: DeviceScope, field: &str) -> Option<Vec<String>> {
    if scope.live || !d.is_active().unwrap_or(false) {
        return None;
    }
    let all = merge_pending(&d.pending(), &[field.to_owned()]);
    if let Err(e) = d.set_pending(&all) {
        log::warn!("cannot record the pending changes in the domain: {e}");
    }
    Some(all)
}

/// Returns the report and, for a running VM, all its pending fields now.
fn update_blocking(
    s: &Session,
    d: &DomainRef,
    name: &str,
    changes: &VmChanges,
) -> Result<(UpdateReport, Option<Vec<String>>)> {
    let what = format!("cannot update VM '{name}'");
    if !d.is_persistent().map_err(|e| e.context(&what))? {
        return Err(Error::InvalidState(format!(
            "{what}: it is transient (not defined); only defined VMs can be updated"
        )));
    }
    let running = d.is_active().map_err(|e| e.context(&what))?;
    let config = d.editable_definition().map_err(|e| e.context(&what))?;
    let host = host_limits(s);
    let live = if running {
        d.live_limits().map_err(|e| e.context(&what))?
    } else {
        LiveLimits {
            max_vcpus: 0,
            max_memory_kib: 0,
        }
    };
    let facts = Facts {
        running,
        live_max_vcpus: live.max_vcpus,
        live_max_memory_kib: live.max_memory_kib,
        host_max_vcpus: host.0,
        host_memory_mib: host.1,
        fresh_id: uuid::Uuid::new_v4().as_u128() as u32,
    };
    let plan = vm_update::plan(changes, &config, &facts)?;
    apply(s, d, &config, &plan, &what)?;
    let mut pending: Vec<String> = plan.pending.iter().map(|f| f.to_string()).collect();
    for step in &plan.live {
        if let Err(e) = live_step(d, step) {
            let field = step_field(step);
            log::warn!(vm_name = name; "{field} could not change live, it waits for the next start: {e}");
            if !pending.iter().any(|p| p == field) {
                pending.push(field.to_owned());
            }
        }
    }
    let all = if running {
        let all = merge_pending(&d.pending(), &pending);
        if let Err(e) = d.set_pending(&all) {
            log::warn!(vm_name = name; "cannot record the pending changes in the domain: {e}");
        }
        Some(all)
    } else {
        None
    };
    Ok((
        UpdateReport {
            changed: plan.changed.iter().map(|f| f.to_string()).collect(),
            pending,
        },
        all,
    ))
}

/// Define, rename, set autostart; any failure puts the old definition back.
fn apply(s: &Session, d: &DomainRef, old: &Element, plan: &UpdatePlan, what: &str) -> Result<()> {
    if let Some(doc) = &plan.config {
        s.redefine(doc).map_err(|e| e.context(what))?;
    }
    let undo = |why: Error| -> Error {
        if plan.config.is_some() {
            if let Err(e) = s.redefine(old) {
                log::error!("cannot put the old definition back after a failed update: {e}");
            }
        }
        why
    };
    if let Some(new) = &plan.rename {
        d.rename(new).map_err(|e| undo(e.context(what)))?;
    }
    if let Some(on) = plan.autostart {
        if let Err(e) = d.set_autostart(on) {
            if let Some(new) = &plan.rename {
                let old_name = old.child_text("name").unwrap_or_default();
                if let Err(e) = d.rename(old_name) {
                    log::error!("cannot rename {new} back after a failed update: {e}");
                }
            }
            return Err(undo(e.context(what)));
        }
    }
    Ok(())
}

fn live_step(d: &DomainRef, step: &LiveStep) -> Result<()> {
    let live = DeviceScope {
        live: true,
        config: false,
    };
    match step {
        LiveStep::Vcpus(n) => d.set_vcpus(*n, live),
        LiveStep::MemoryKib(k) => d.set_memory(*k, live),
        LiveStep::Title(t) => d.set_title_or_description(true, t, live),
        LiveStep::Description(t) => d.set_title_or_description(false, t, live),
        LiveStep::Metadata(x) => d.set_vapor_metadata_in(x, live),
    }
}

fn step_field(step: &LiveStep) -> &'static str {
    match step {
        LiveStep::Vcpus(_) => "vcpus",
        LiveStep::MemoryKib(_) => "memory",
        LiveStep::Title(_) => "title",
        LiveStep::Description(_) => "description",
        LiveStep::Metadata(_) => "metadata",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pending_fields_accumulate_without_repeats() {
        let old = vec!["cpu".to_string(), "vcpus".to_string()];
        let new = vec!["vcpus".to_string(), "video".to_string()];
        assert_eq!(super::merge_pending(&old, &new), ["cpu", "vcpus", "video"]);
    }
}
