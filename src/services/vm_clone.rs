//! `VirtualMachine.Clone`: a new VM from a shut-off one, all or nothing.
//! What is copied is decided in [`super::vm_clone_plan`]; here every step is
//! recorded in the intent log before it is taken, so a failure (or a crash:
//! see `services::rollback::recover`) removes everything made so far.

use std::path::Path;
use std::sync::Arc;

use super::creation::steps::{upload_file, volume_xml};
use super::rollback;
use super::storage_ownership::canonical;
use super::vm_clone_plan::{self as plan, CloneMode, DiskCopy, NewIdentity};
use crate::creation::cloud_init;
use crate::intent::{self, Intent, IntentLog, Step};
use crate::libvirt::storage::Preallocation;
use crate::libvirt::{DomainRef, Hypervisor, Session};
use crate::model::Model;
use crate::progress::Progress;
use crate::{Error, Result};

/// Clones VMs.
pub struct CloneService {
    model: Arc<Model>,
    intents: IntentLog,
}

/// A clone to make.
#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub source_uuid: String,
    pub new_name: String,
    pub mode: CloneMode,
    pub uid: u32,
}

impl CloneService {
    pub fn new(model: Arc<Model>, intents: IntentLog) -> Self {
        Self { model, intents }
    }

    fn hv(&self) -> &Arc<Hypervisor> {
        self.model.hypervisor()
    }

    /// Make the clone; returns its UUID.
    pub async fn clone_vm(&self, req: CloneRequest, progress: Arc<dyn Progress>) -> Result<String> {
        crate::storage::spec::check_object_name("new_name", &req.new_name)?;
        let rec = self.model.get(&req.source_uuid).ok_or_else(|| {
            Error::NotFound(format!("no virtual machine with UUID {}", req.source_uuid))
        })?;
        if self.model.find(&req.new_name).is_some() {
            return Err(Error::Conflict(format!(
                "new_name: a VM named '{}' already exists",
                req.new_name
            )));
        }
        let intents = self.intents.clone();
        let source = req.source_uuid.clone();
        let uuid = self
            .hv()
            .on_domain(&source, move |s, d| {
                clone_blocking(s, d, &req, &intents, &*progress)
            })
            .await?;
        if let Err(e) = self.model.refresh_domain(&uuid).await {
            log::warn!(vm_uuid = uuid.as_str(); "cannot read the new clone: {e}");
        }
        log::info!(vm_name = rec.name.as_str(), vm_uuid = rec.uuid.as_str(); "cloned as {uuid}");
        Ok(uuid)
    }
}

fn clone_blocking(
    s: &Session,
    d: &DomainRef,
    req: &CloneRequest,
    intents: &IntentLog,
    progress: &dyn Progress,
) -> Result<String> {
    let what = format!("cannot clone into '{}'", req.new_name);
    if d.is_active().map_err(|e| e.context(&what))? {
        return Err(Error::InvalidState(format!(
            "{what}: the VM is running; shut it down first (its disks must not change while they are copied)"
        )));
    }
    if !d.is_persistent().map_err(|e| e.context(&what))? {
        return Err(Error::InvalidState(format!("{what}: the VM is transient")));
    }
    super::creation::steps::check_name_free(s, &req.new_name)?;
    let def = d.editable_definition().map_err(|e| e.context(&what))?;
    let owned: Vec<String> = d
        .vapor_metadata()
        .owned_volumes
        .iter()
        .map(|p| canonical(p))
        .collect();
    let copies = plan::plan_disks(&def, &owned, &|p| canonical(p), &req.new_name, req.mode)?;
    let mut intent = intents.begin("vm-clone", &req.new_name, req.uid)?;
    let result = clone_steps(s, &def, &copies, req, progress, &mut intent);
    rollback::conclude(s, intent, result, "cloning")
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(d, _)| d)
}

fn clone_steps(
    s: &Session,
    def: &crate::libvirt::xml::Element,
    copies: &[DiskCopy],
    req: &CloneRequest,
    progress: &dyn Progress,
    intent: &mut Intent,
) -> Result<String> {
    let total = copies.len() as u64 + 1;
    let mut disks = Vec::new();
    let mut owned = Vec::new();
    for (i, c) in copies.iter().enumerate() {
        if progress.cancelled() {
            return Err(Error::Failed(
                "cloning was cancelled; everything it made was removed".into(),
            ));
        }
        progress.update(
            &format!("copying disk {} of {}", i + 1, copies.len()),
            i as u64,
            total,
        );
        match c {
            DiskCopy::Volume {
                target,
                source,
                name,
            } => {
                let what = format!("{target}: cannot copy {source}");
                let src = s
                    .volume_at(source)
                    .and_then(|v| v.record())
                    .map_err(|e| e.context(&what))?;
                let new_path = format!("{}/{name}", dir_of(&src.path));
                intent.record(Step::Volume {
                    path: new_path.clone(),
                    not_before_ns: intent::now_ns(),
                    made: false,
                })?;
                if Path::new(&new_path).symlink_metadata().is_ok() {
                    return Err(Error::Conflict(format!(
                        "{what}: {new_path} already exists"
                    )));
                }
                let src_format = if src.format.is_empty() {
                    "raw".to_owned()
                } else {
                    src.format.clone()
                };
                let (made, format) = match req.mode {
                    CloneMode::Full => {
                        let xml = volume_xml(name, src.capacity, &src_format, None, false);
                        (
                            s.clone_volume(&src.pool_uuid, &xml, &src.key, Preallocation::RawOnly),
                            src_format,
                        )
                    }
                    CloneMode::Linked => {
                        let xml = volume_xml(
                            name,
                            src.capacity,
                            "qcow2",
                            Some((&src.path, &src_format)),
                            false,
                        );
                        (
                            s.create_volume(&src.pool_uuid, &xml, Preallocation::RawOnly),
                            "qcow2".to_owned(),
                        )
                    }
                };
                let made = made.map_err(|e| e.context(&what))?;
                intent.volume_made(&made.path)?;
                if made.path != new_path {
                    return Err(Error::Conflict(format!(
                        "{what}: libvirt created it at {} instead of {new_path}",
                        made.path
                    )));
                }
                disks.push((target.clone(), made.path.clone(), format));
                owned.push(made.path);
            }
            DiskCopy::Seed {
                target,
                source,
                name,
            } => {
                let what = format!("{target}: cannot make a new cloud-init seed");
                let src = s
                    .volume_at(source)
                    .and_then(|v| v.record())
                    .map_err(|e| e.context(&what))?;
                let pool = s
                    .pools()?
                    .into_iter()
                    .find(|p| p.uuid == src.pool_uuid)
                    .ok_or_else(|| Error::NotFound(format!("{what}: its pool is gone")))?;
                let new_path = format!("{}/{name}", dir_of(&src.path));
                let dir = intent.scratch_dir()?;
                let made = (|| {
                    let old = dir.join("old");
                    std::fs::create_dir(&old).map_err(|e| {
                        Error::Failed(format!("cannot make {}: {e}", old.display()))
                    })?;
                    let ci = cloud_init::read_seed_iso(Path::new(&src.path), &old)?;
                    let tmp = dir.join("seed.iso");
                    cloud_init::build_seed_iso(&ci, &req.new_name, &tmp)?;
                    upload_file(s, &pool.name, name, &tmp, intent, &new_path)
                })();
                let _ = std::fs::remove_dir_all(&dir);
                made.map_err(|e| e.context(&what))?;
                disks.push((target.clone(), new_path.clone(), "raw".to_owned()));
                owned.push(new_path);
            }
        }
    }
    progress.update("defining the clone", copies.len() as u64, total);
    let uuid = uuid::Uuid::new_v4().to_string();
    let doc = plan::clone_definition(
        def,
        &NewIdentity {
            name: &req.new_name,
            uuid: &uuid,
            uid: req.uid,
            source_uuid: &req.source_uuid,
            disks: &disks,
            owned: &owned,
        },
    );
    intent.record(Step::Domain {
        uuid: uuid.clone(),
        keep_nvram: true,
    })?;
    s.define_domain(&doc.to_xml())
        .map_err(|e| e.context("libvirt refused the clone's definition"))?;
    intent.record(Step::Domain {
        uuid: uuid.clone(),
        keep_nvram: false,
    })?;
    progress.update("done", total, total);
    Ok(uuid)
}
