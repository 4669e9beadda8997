//! VM creation as a service: templates, the dry run and carrying a creation
//! out, all or nothing. The pure planning lives in [`crate::creation`]
//! (spec, validation, templates' merge, resolution, domain XML, cloud-init);
//! this service feeds it the host (through the typed libvirt port) and
//! executes the plan.
//!
//! [`CreationService::plan`] parses, merges the template, validates against
//! the schema and resolves against the host's pools (no side effects: it is
//! the dry run). [`CreationService::create`] then makes every volume, the
//! cloud-init seed, the definition, autostart and (if asked) starts the VM.
//! Each step that makes something is first written to an intent record
//! (`crate::intent`); if any step fails or the job is cancelled, the recorded
//! steps are undone in reverse and the caller gets the real cause, and if
//! vapord dies half way the next start undoes them. Two requests for the
//! same name: exactly one proceeds, the other gets Conflict.
//!
//! Knows nothing about D-Bus or polkit.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::creation::boot;
use crate::creation::domain_xml::{domain_xml, Origin};
use crate::creation::resolve::{Defaults, PciPlanner, Resolved};
use crate::creation::spec::VmSpec;
use crate::creation::template::{self, TemplateInfo, TemplateStore};
use crate::creation::validate;
use crate::intent::IntentLog;
use crate::libvirt::Hypervisor;
use crate::progress::Progress;
use crate::{Error, Result};

#[path = "creation_steps.rs"]
pub(super) mod steps;

/// A resolved request and the exact definition it would produce.
#[derive(Debug, Clone)]
pub struct Plan {
    pub resolved: Resolved,
    pub xml: String,
    /// The merged, validated spec (to re-check the host right before acting).
    pub spec: VmSpec,
    /// The UUID written into the definition (so undo never loses the domain).
    pub uuid: String,
}

impl Plan {
    /// The dry run's answer: the resolved spec and the domain XML.
    pub fn to_json(&self) -> Value {
        serde_json::json!({ "resolved": self.resolved, "domain_xml": self.xml })
    }
}

pub struct CreationService {
    hv: Arc<Hypervisor>,
    /// Plans `pci_devices`; without one they are refused as NotSupported.
    pci: Option<Arc<dyn PciPlanner>>,
    templates: TemplateStore,
    defaults: Defaults,
    /// Names being created right now.
    creating: Mutex<HashSet<String>>,
    /// Where each creation records what it makes before making it.
    intents: IntentLog,
    /// What start-up recovery has not rolled back yet (see `crate::recovery`).
    held: Mutex<Held>,
}

/// Names and paths creations may not touch for now.
#[derive(Debug)]
struct Held {
    /// Recovery has not looked at the records yet: refuse every creation.
    all: bool,
    names: HashSet<String>,
    paths: HashSet<String>,
}

/// Template store work (file reads, atomic writes with fsyncs), off the
/// async workers.
async fn on_disk<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Failed(format!("template task failed: {e}")))?
}

impl CreationService {
    pub fn new(
        hv: Arc<Hypervisor>,
        templates: TemplateStore,
        defaults: Defaults,
        pci: Option<Arc<dyn PciPlanner>>,
        intents: IntentLog,
    ) -> Self {
        Self {
            hv,
            pci,
            templates,
            defaults,
            creating: Mutex::new(HashSet::new()),
            intents,
            held: Mutex::new(Held {
                all: true,
                names: HashSet::new(),
                paths: HashSet::new(),
            }),
        }
    }

    /// Start-up recovery has looked at the records: from now on only
    /// creations touching these names and paths (of records not rolled back
    /// yet) are refused.
    pub fn hold(&self, names: Vec<String>, paths: Vec<String>) {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        h.all = false;
        h.names = names.into_iter().collect();
        h.paths = paths.into_iter().collect();
    }

    fn check_held(&self, r: &Resolved) -> Result<()> {
        let h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let busy = h.all
            || h.names.contains(&r.name)
            || r.disks.iter().any(|d| {
                h.paths.contains(&d.path) || d.source.as_ref().is_some_and(|s| h.paths.contains(s))
            })
            || r.cloud_init_seed
                .as_ref()
                .is_some_and(|s| h.paths.contains(&s.path));
        if busy {
            return Err(Error::Unavailable(
                "vapord is still rolling back an operation an earlier vapord left unfinished \
                 with this name or storage; try again in a moment"
                    .into(),
            ));
        }
        Ok(())
    }

    // ----- templates -----

    /// Every template, shipped and user-made.
    pub async fn list_templates(&self) -> Result<Vec<TemplateInfo>> {
        let store = self.templates.clone();
        on_disk(move || store.list()).await
    }

    /// One template; `NotFound` when there is none of this name.
    pub async fn template(&self, name: &str) -> Result<TemplateInfo> {
        let (store, name) = (self.templates.clone(), name.to_owned());
        on_disk(move || store.get(&name)).await
    }

    /// Create or replace a user template from its spec text, validated
    /// against the spec schema first.
    pub async fn save_template(&self, name: &str, description: &str, spec: &str) -> Result<()> {
        let doc = validate::parse_json(spec)?;
        validate::validate_spec(&doc)?;
        let store = self.templates.clone();
        let (name, description) = (name.to_owned(), description.to_owned());
        on_disk(move || store.save(&name, &description, &doc)).await
    }

    /// Delete a user template (shipped ones are read-only).
    pub async fn delete_template(&self, name: &str) -> Result<()> {
        let (store, name) = (self.templates.clone(), name.to_owned());
        on_disk(move || store.delete(&name)).await
    }

    // ----- creation -----

    /// Parse, merge, validate and resolve a request: the dry run.
    pub async fn plan(&self, spec_text: &str, uid: u32) -> Result<Plan> {
        let request = validate::parse_json(spec_text)?;
        // Validate the request as written first, so errors name its own fields.
        let spec = validate::validate_spec(&request)?;
        let merged = match &spec.template {
            Some(name) => {
                let t = self.template(name).await.map_err(|e| match e {
                    Error::NotFound(m) => Error::NotFound(format!("template: {m}")),
                    e => e,
                })?;
                template::merge(&t.spec, &request)
            }
            None => request,
        };
        let spec = validate::validate_spec(&merged)?;
        let name = validate::require_name(&spec)?.to_owned();
        let defaults = self.defaults.clone();
        let pci = self.pci.clone();
        self.hv
            .session(move |s| {
                steps::check_name_free(s, &name)?;
                let resolved = steps::resolve_all(s, &spec, &name, &defaults, pci.as_deref())?;
                // `accel` against what the host offers (kvm refused without it).
                let domain_type = boot::domain_type(resolved.accel, s.domain_type() == "kvm")?;
                let uuid = uuid::Uuid::new_v4().to_string();
                let xml = domain_xml(
                    &resolved,
                    Origin {
                        uid,
                        domain_type,
                        uuid: &uuid,
                    },
                );
                Ok(Plan {
                    resolved,
                    xml,
                    spec,
                    uuid,
                })
            })
            .await
    }

    /// Carry out a plan. Returns the new domain's UUID.
    pub async fn create(
        &self,
        plan: Plan,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let name = plan.resolved.name.clone();
        self.check_held(&plan.resolved)?;
        let _claim = NameClaim::take(&self.creating, &name)?;
        let defaults = self.defaults.clone();
        let pci = self.pci.clone();
        let intents = self.intents.clone();
        // One blocking section, run to its end (rollback included) even if
        // the caller stops waiting.
        self.hv
            .session(move |s| {
                steps::create_blocking(
                    s,
                    plan,
                    uid,
                    &intents,
                    &defaults,
                    pci.as_deref(),
                    &*progress,
                )
            })
            .await
    }
}

/// A name being created; released when dropped, however the request ends.
struct NameClaim<'a> {
    set: &'a Mutex<HashSet<String>>,
    name: String,
}

impl<'a> NameClaim<'a> {
    fn take(set: &'a Mutex<HashSet<String>>, name: &str) -> Result<Self> {
        if !set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned())
        {
            return Err(Error::Conflict(format!(
                "name: a VM named '{name}' is being created by another request"
            )));
        }
        Ok(Self {
            set,
            name: name.to_owned(),
        })
    }
}

impl Drop for NameClaim<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_claimed_by_one_request_at_a_time() {
        let set = Mutex::new(HashSet::new());
        let first = NameClaim::take(&set, "web").unwrap();
        let Err(Error::Conflict(m)) = NameClaim::take(&set, "web") else {
            panic!("a second claim of one name must be a Conflict");
        };
        assert!(m.contains("being created by another request"), "{m}");
        assert!(NameClaim::take(&set, "db").is_ok());
        drop(first);
        assert!(NameClaim::take(&set, "web").is_ok());
    }
}
