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
use crate::libvirt::xml::Element;
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

    /// The pools a clone of this VM would create volumes in (for the
    /// per-pool vm-create check, as a creation has it).
    pub async fn pools_for(&self, uuid: &str, mode: CloneMode) -> Result<Vec<String>> {
        self.hv()
            .on_domain(uuid, move |s, d| {
                // Only the sources matter here, not the new names.
                let (_, copies) = planned(d, "", mode)?;
                let mut pools: Vec<String> = copies
                    .iter()
                    .filter_map(|c| {
                        let src = match c {
                            DiskCopy::Volume { source, .. } | DiskCopy::Seed { source, .. } => {
                                source
                            }
                        };
                        s.volume_at(src).ok().and_then(|v| v.pool_name())
                    })
                    .collect();
                pools.sort();
                pools.dedup();
                Ok(pools)
            })
            .await
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
        // The source cannot start (or change) while it is copied.
        let _locked = self.model.lock_vm(&req.source_uuid).await;
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

/// The source's definition and what cloning it as `new_name` copies.
fn planned(d: &DomainRef, new_name: &str, mode: CloneMode) -> Result<(Element, Vec<DiskCopy>)> {
    let def = d.editable_definition()?;
    let owned: Vec<String> = d
        .vapor_metadata()
        .owned_volumes
        .iter()
        .map(|p| canonical(p))
        .collect();
    let copies = plan::plan_disks(&def, &owned, &|p| canonical(p), new_name, mode)?;
    Ok((def, copies))
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
    let (def, copies) = planned(d, &req.new_name, req.mode).map_err(|e| e.context(&what))?;
    let mut intent = intents.begin("vm-clone", &req.new_name, req.uid)?;
    let result = clone_steps(s, &def, &copies, req, progress, &mut intent);
    rollback::conclude(s, intent, result, "cloning")
}

/// Copying runs as libvirtd (root) and reads what the image names below
/// it: the image must be what the VM takes it for (the probe can be fooled
/// by a header the guest wrote into a raw disk), and everything below it
/// must be a pool volume.
fn check_copyable(s: &Session, path: &str, probed: &str, used_as: &str) -> Result<()> {
    let probed = if probed.is_empty() { "raw" } else { probed };
    if probed != used_as {
        return Err(Error::InvalidState(format!(
            "the image looks like {probed} but the VM uses it as {used_as}; not copied"
        )));
    }
    let below = crate::image::backing_chain_paths(path).map_err(Error::InvalidState)?;
    match below.iter().find(|p| s.volume_at(p).is_err()) {
        Some(p) => Err(Error::InvalidState(format!(
            "its image reads {p}, which is in no storage pool; not copied"
        ))),
        None => Ok(()),
    }
}

/// A file name without its directory and extension.
fn source_stem(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.rsplit_once('.').map_or(file, |(s, _)| s)
}

/// 8 hex digits that tell this clone's overlay names apart.
fn stem_id(seed: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{seed}{}", intent::now_ns()).as_bytes());
    h.iter().take(4).map(|b| format!("{b:02x}")).collect()
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
    let mut source_tops = Vec::new();
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
                format: src_format,
            } => {
                let what = format!("{target}: cannot copy {source}");
                let src = s
                    .volume_at(source)
                    .and_then(|v| v.record())
                    .map_err(|e| e.context(&what))?;
                check_copyable(s, &src.path, &src.format, src_format)
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
                let src_format = src_format.clone();
                let (made, format) = match req.mode {
                    CloneMode::Full => {
                        let xml = volume_xml(name, src.capacity, &src_format, None, false);
                        (
                            s.clone_volume(&src.pool_uuid, &xml, &src.key, Preallocation::RawOnly),
                            src_format.clone(),
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
                if req.mode == CloneMode::Linked {
                    // The source leaves its image too: both VMs write to
                    // overlays, and the image they share stays as it is.
                    let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
                    let top_name = format!("{}-top-{}.qcow2", source_stem(source), &stem_id(stem));
                    let top_path = format!("{}/{top_name}", dir_of(&src.path));
                    intent.record(Step::Volume {
                        path: top_path.clone(),
                        not_before_ns: intent::now_ns(),
                        made: false,
                    })?;
                    let xml = volume_xml(
                        &top_name,
                        src.capacity,
                        "qcow2",
                        Some((&src.path, &src_format)),
                        false,
                    );
                    let top = s
                        .create_volume(&src.pool_uuid, &xml, Preallocation::RawOnly)
                        .map_err(|e| e.context(&what))?;
                    intent.volume_made(&top.path)?;
                    source_tops.push((target.clone(), top.path, "qcow2".to_owned()));
                }
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
    if !source_tops.is_empty() {
        // Last: once the source is on its overlays, the operation is done.
        let moved = plan::source_on_overlays(def, &source_tops);
        s.define_domain(&moved.to_xml())
            .map_err(|e| e.context("cannot move the source VM onto its own overlays"))?;
    }
    intent.record(Step::Domain {
        uuid: uuid.clone(),
        keep_nvram: false,
    })?;
    progress.update("done", total, total);
    Ok(uuid)
}
