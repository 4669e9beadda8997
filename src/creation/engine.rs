//! Carrying a creation request out, all or nothing.
//!
//! `plan` parses, merges the template, validates against the schema and
//! resolves against the host's pools (no side effects: it is the dry run).
//! `create` then makes every volume, the cloud-init seed, the definition,
//! autostart and (if asked) starts the VM. Each step that makes something
//! records how to undo it; if any step fails or the job is cancelled, the
//! undo list runs in reverse and the caller gets the real cause. Two requests
//! for the same name: exactly one proceeds, the other gets Conflict.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt_sys as sys;

use super::domain_xml::{domain_xml, Origin};
use super::resolve::{self, Defaults, PciPlanner, PoolInfo, Resolved, StorageView, VolumeInfo};
use super::spec::{DiskAction, VmSpec};
use super::template::{self, TemplateStore};
use super::{cloud_init, validate};
use crate::libvirt::errors::{from_virt, is_not_found};
use crate::libvirt::xml::Element;
use crate::libvirt::Hypervisor;
use crate::{Error, Result};

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

/// Progress reports from a running creation (the bus turns them into a Job).
pub trait Progress: Send + Sync {
    /// `done` of `total` bytes are made; `step` says what is happening.
    fn update(&self, step: &str, done: u64, total: u64);
    /// Whether the caller asked to stop.
    fn cancelled(&self) -> bool;
}

/// A [`Progress`] that reports nowhere and never cancels.
pub struct NoProgress;
impl Progress for NoProgress {
    fn update(&self, _: &str, _: u64, _: u64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// A cancellation flag for [`Progress`] implementations.
#[derive(Default)]
pub struct CancelFlag(AtomicBool);
impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct Engine {
    hv: Arc<Hypervisor>,
    /// Plans `pci_devices`; without one they are refused as NotSupported.
    pci: Option<Arc<dyn PciPlanner>>,
    templates: TemplateStore,
    defaults: Defaults,
    /// Names being created right now.
    creating: Mutex<HashSet<String>>,
}

/// Host storage as libvirt sees it, for the resolver.
struct LibvirtView<'a>(&'a Connect);

fn pool_info(p: &StoragePool) -> Option<PoolInfo> {
    let xml = p.xml_desc(0).ok()?;
    let root = Element::parse(&xml).ok()?;
    Some(PoolInfo {
        name: p.name().ok()?,
        target: root.child("target")?.child_text("path")?.to_owned(),
        active: p.is_active().unwrap_or(false),
    })
}

impl StorageView for LibvirtView<'_> {
    fn pool(&self, name: &str) -> Option<PoolInfo> {
        pool_info(&self.0.lookup_storage_pool_by_name(name).ok()?)
    }

    fn pools(&self) -> Vec<PoolInfo> {
        self.0
            .list_all_storage_pools(0)
            .map(|ps| ps.iter().filter_map(pool_info).collect())
            .unwrap_or_default()
    }

    fn volume(&self, path: &str) -> Option<VolumeInfo> {
        let vol = self.0.lookup_storage_vol_by_path(path).ok()?;
        let root = Element::parse(&vol.xml_desc(0).ok()?).ok()?;
        Some(VolumeInfo {
            format: root
                .child("target")
                .and_then(|t| t.child("format"))
                .and_then(|f| f.attr("type"))
                .unwrap_or("raw")
                .to_owned(),
            capacity_bytes: root
                .child_text("capacity")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            pool: vol.lookup_storage_pool().ok().and_then(|p| p.name().ok()),
        })
    }

    fn path_exists(&self, path: &str) -> bool {
        Path::new(path).symlink_metadata().is_ok()
    }

    fn canonical(&self, path: &str) -> String {
        crate::services::storage_ownership::canonical(path)
    }

    fn backing_chain(&self, path: &str) -> Result<Vec<String>> {
        if !Path::new(path).is_file() {
            return Ok(Vec::new());
        }
        crate::services::storage_ownership::image_backing_chain(path).map_err(Error::Failed)
    }
}

/// One thing made so far, and how to take it back.
enum Undo {
    /// A volume we made, by the path libvirt gave it.
    Volume(String),
    /// A domain we defined; `keep_nvram` when its NVRAM file was not ours.
    Domain { uuid: String, keep_nvram: bool },
}

fn rollback(conn: &Connect, undo: Vec<Undo>) -> Vec<String> {
    let mut problems = Vec::new();
    for step in undo.into_iter().rev() {
        match step {
            Undo::Domain { uuid, keep_nvram } => {
                if let Ok(d) = conn.lookup_domain_by_uuid_string(&uuid) {
                    if d.is_active().unwrap_or(false) {
                        let _ = d.destroy();
                    }
                    let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | sys::VIR_DOMAIN_UNDEFINE_TPM
                        | if keep_nvram {
                            sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
                        } else {
                            sys::VIR_DOMAIN_UNDEFINE_NVRAM
                        };
                    if let Err(e) = d.undefine_flags(flags) {
                        problems.push(format!("cannot undefine the new domain: {}", e.message()));
                    }
                }
            }
            Undo::Volume(path) => match conn.lookup_storage_vol_by_path(&path) {
                Ok(v) => {
                    if let Err(e) = v.delete(0) {
                        problems.push(format!("cannot delete {path}: {}", e.message()));
                    }
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => problems.push(format!("cannot look up {path}: {}", e.message())),
            },
        }
    }
    problems
}

fn gib(n: u64) -> u64 {
    n.saturating_mul(1 << 30)
}

fn volume_xml(name: &str, capacity: u64, format: &str, backing: Option<(&str, &str)>) -> String {
    use super::domain_xml::esc;
    let mut x = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='{}'/></target>",
        esc(name),
        esc(format)
    );
    if let Some((path, fmt)) = backing {
        x.push_str(&format!(
            "<backingStore><path>{}</path><format type='{}'/></backingStore>",
            esc(path),
            esc(fmt)
        ));
    }
    x.push_str("</volume>");
    x
}

impl Engine {
    pub fn new(
        hv: Arc<Hypervisor>,
        templates: TemplateStore,
        defaults: Defaults,
        pci: Option<Arc<dyn PciPlanner>>,
    ) -> Self {
        Self {
            hv,
            pci,
            templates,
            defaults,
            creating: Mutex::new(HashSet::new()),
        }
    }

    pub fn templates(&self) -> &TemplateStore {
        &self.templates
    }

    /// Parse, merge, validate and resolve a request: the dry run.
    pub async fn plan(&self, spec_text: &str, uid: u32) -> Result<Plan> {
        let request = validate::parse_json(spec_text)?;
        // Validate the request as written first, so errors name its own fields.
        let spec = validate::validate_spec(&request)?;
        let merged = match &spec.template {
            Some(name) => {
                let t = self.templates.get(name).map_err(|e| match e {
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
            .run(move |c| {
                match c.lookup_domain_by_name(&name) {
                    Ok(_) => {
                        return Err(Error::Conflict(format!(
                            "name: a VM named '{name}' already exists"
                        )))
                    }
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(from_virt(e, "cannot check the name")),
                }
                let resolved = resolve_all(c, &spec, &name, &defaults, pci.as_deref())?;
                let uuid = uuid::Uuid::new_v4().to_string();
                let xml = domain_xml(
                    &resolved,
                    Origin {
                        uid,
                        domain_type: domain_type(c),
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
    pub async fn create(&self, plan: Plan, progress: Arc<dyn Progress>) -> Result<String> {
        let name = plan.resolved.name.clone();
        let _claim = NameClaim::take(&self.creating, &name)?;
        let defaults = self.defaults.clone();
        let pci = self.pci.clone();
        self.hv
            .run(move |c| create_blocking(c, plan, &defaults, pci.as_deref(), &*progress))
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

/// `kvm` when libvirt offers it for x86_64 guests, else `qemu` (TCG).
fn domain_type(conn: &Connect) -> &'static str {
    let kvm = conn
        .capabilities()
        .ok()
        .and_then(|x| Element::parse(&x).ok())
        .map(|caps| {
            caps.children_named("guest").any(|g| {
                g.child("arch").is_some_and(|a| {
                    a.attr("name") == Some("x86_64")
                        && a.children_named("domain")
                            .any(|d| d.attr("type") == Some("kvm"))
                })
            })
        })
        .unwrap_or(false);
    if kvm {
        "kvm"
    } else {
        "qemu"
    }
}

/// Storage resolution plus the PCI plan, if the spec has devices.
fn resolve_all(
    conn: &Connect,
    spec: &VmSpec,
    name: &str,
    defaults: &Defaults,
    pci: Option<&dyn PciPlanner>,
) -> Result<Resolved> {
    let mut resolved = resolve::resolve(&LibvirtView(conn), spec, name, defaults)?;
    if let Some(devices) = spec.pci_devices.as_deref().filter(|d| !d.is_empty()) {
        let planner = pci.ok_or_else(|| {
            Error::NotSupported("pci_devices: this vapord has no PCI support".into())
        })?;
        resolved.pci = Some(planner.plan(name, resolved.memory_mib, &resolved.machine, devices)?);
    }
    Ok(resolved)
}

fn create_blocking(
    conn: &Connect,
    plan: Plan,
    defaults: &Defaults,
    pci: Option<&dyn PciPlanner>,
    progress: &dyn Progress,
) -> Result<String> {
    // The host may have changed while the caller was being authorized.
    let again = resolve_all(conn, &plan.spec, &plan.resolved.name, defaults, pci)?;
    if again != plan.resolved {
        return Err(Error::Conflict(
            "the host's storage changed while the request was being authorized; nothing was made, try again"
                .into(),
        ));
    }
    let mut undo = Vec::new();
    match create_steps(conn, &plan, progress, &mut undo) {
        Ok(uuid) => Ok(uuid),
        Err(e) => {
            let problems = rollback(conn, undo);
            if problems.is_empty() {
                Err(e)
            } else {
                Err(e.context(format!(
                    "creation failed and cleaning up was incomplete ({})",
                    problems.join("; ")
                )))
            }
        }
    }
}

fn create_steps(
    conn: &Connect,
    plan: &Plan,
    progress: &dyn Progress,
    undo: &mut Vec<Undo>,
) -> Result<String> {
    let r = &plan.resolved;
    match conn.lookup_domain_by_name(&r.name) {
        Ok(_) => {
            return Err(Error::Conflict(format!(
                "name: a VM named '{}' already exists",
                r.name
            )))
        }
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(from_virt(e, "cannot check the name")),
    }
    let total: u64 = r
        .disks
        .iter()
        .filter(|d| d.is_created())
        .map(|d| gib(d.size_gib.unwrap_or(0)))
        .sum();
    let mut done = 0u64;
    let check_cancel = || {
        if progress.cancelled() {
            Err(Error::Failed(
                "creation was cancelled; everything it made was removed".into(),
            ))
        } else {
            Ok(())
        }
    };
    let to_make = r.disks.iter().filter(|d| d.is_created()).count();
    for (i, d) in r.disks.iter().filter(|d| d.is_created()).enumerate() {
        check_cancel()?;
        let (Some(pool_name), Some(vol_name)) = (&d.pool, &d.volume) else {
            return Err(Error::Failed(format!(
                "{}: no pool to create {} in",
                d.field, d.path
            )));
        };
        let what = format!("{}: cannot create {}", d.field, d.path);
        // Steps name no paths: Job properties are readable by everyone.
        progress.update(
            &format!("creating disk {} of {to_make}", i + 1),
            done,
            total,
        );
        let pool = conn
            .lookup_storage_pool_by_name(pool_name)
            .map_err(|e| from_virt(e, &what))?;
        let vol = match d.action {
            DiskAction::Create => {
                let xml = volume_xml(vol_name, gib(d.size_gib.unwrap_or(1)), &d.format, None);
                StorageVol::create_xml(&pool, &xml, 0)
            }
            DiskAction::Clone => {
                let src_path = d.source.as_deref().unwrap_or_default();
                let src = conn
                    .lookup_storage_vol_by_path(src_path)
                    .map_err(|e| from_virt(e, &what))?;
                let cap = src.info().map(|i| i.capacity).unwrap_or(0);
                let xml = volume_xml(vol_name, cap, &d.format, None);
                StorageVol::create_xml_from(&pool, &xml, &src, 0)
            }
            DiskAction::Backing => {
                let src_path = d.source.as_deref().unwrap_or_default();
                let src = conn
                    .lookup_storage_vol_by_path(src_path)
                    .map_err(|e| from_virt(e, &what))?;
                let cap = src.info().map(|i| i.capacity).unwrap_or(0);
                let cap = cap.max(gib(d.size_gib.unwrap_or(0)));
                let fmt = d.source_format.as_deref().unwrap_or("qcow2");
                let xml = volume_xml(vol_name, cap, "qcow2", Some((src_path, fmt)));
                StorageVol::create_xml(&pool, &xml, 0)
            }
            DiskAction::Attach => continue,
        }
        .map_err(|e| from_virt(e, &what))?;
        // Undo by the path libvirt really used, and refuse if it is not the planned one.
        let made = vol.path().map_err(|e| from_virt(e, &what))?;
        undo.push(Undo::Volume(made.clone()));
        if made != d.path {
            return Err(Error::Conflict(format!(
                "{what}: libvirt created it at {made} instead (has the pool changed?)"
            )));
        }
        if d.action == DiskAction::Clone {
            if let Some(size) = d.size_gib {
                vol.resize(gib(size), 0).map_err(|e| from_virt(e, &what))?;
            }
        }
        done += gib(d.size_gib.unwrap_or(0));
        progress.update(&format!("created disk {} of {to_make}", i + 1), done, total);
    }

    if let (Some(seed), Some(ci)) = (&r.cloud_init_seed, plan_cloud_init(plan)) {
        check_cancel()?;
        progress.update("building the cloud-init seed", done, total);
        // Built in a private directory: the seed holds the user data.
        let dir = private_temp_dir(&r.name)?;
        let tmp = dir.join("seed.iso");
        let built = cloud_init::build_seed_iso(&ci, &r.name, &tmp);
        let uploaded =
            built.and_then(|_| upload_file(conn, &seed.pool, &seed.volume, &tmp, undo, &seed.path));
        let _ = std::fs::remove_dir_all(&dir);
        uploaded.map_err(|e| e.context("cloud_init"))?;
    }

    check_cancel()?;
    progress.update("defining the domain", done, total);
    let dom = conn
        .define_domain_xml(&plan.xml)
        .map_err(|e| from_virt(e, "libvirt refused the domain definition"))?;
    let uuid = plan.uuid.clone();
    // An NVRAM file that already exists (left by an earlier VM of this name)
    // is not ours to delete on undo.
    let keep_nvram = dom
        .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        .ok()
        .and_then(|x| Element::parse(&x).ok())
        .and_then(|root| crate::services::storage_ownership::nvram_path(&root))
        .is_some_and(|p| Path::new(&p).exists());
    undo.push(Undo::Domain {
        uuid: uuid.clone(),
        keep_nvram,
    });
    if r.autostart {
        dom.set_autostart(true)
            .map_err(|e| from_virt(e, "cannot enable autostart"))?;
    }
    if r.start {
        check_cancel()?;
        progress.update("starting", done, total);
        dom.create()
            .map_err(|e| from_virt(e, "the new VM failed to start"))?;
    }
    progress.update("done", total, total);
    Ok(uuid)
}

/// A fresh directory only root can enter.
fn private_temp_dir(tag: &str) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "vapor-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::Failed(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

fn plan_cloud_init(plan: &Plan) -> Option<super::spec::CloudInitSpec> {
    plan.resolved.cloud_init.clone()
}

/// Create a raw volume and fill it with a local file through libvirt.
fn upload_file(
    conn: &Connect,
    pool: &str,
    volume: &str,
    file: &Path,
    undo: &mut Vec<Undo>,
    path: &str,
) -> Result<()> {
    let data = std::fs::read(file)
        .map_err(|e| Error::Failed(format!("cannot read {}: {e}", file.display())))?;
    let what = format!("cannot store {path}");
    let pool = conn
        .lookup_storage_pool_by_name(pool)
        .map_err(|e| from_virt(e, &what))?;
    let vol = StorageVol::create_xml(
        &pool,
        &volume_xml(volume, data.len() as u64, "raw", None),
        0,
    )
    .map_err(|e| from_virt(e, &what))?;
    undo.push(Undo::Volume(path.to_owned()));
    let stream = virt::stream::Stream::new(conn, 0).map_err(|e| from_virt(e, &what))?;
    vol.upload(&stream, 0, data.len() as u64, 0)
        .map_err(|e| from_virt(e, &what))?;
    let mut off = 0;
    while off < data.len() {
        let n = stream.send(&data[off..]).map_err(|e| from_virt(e, &what))?;
        if n <= 0 {
            return Err(Error::Failed(format!("{what}: the upload stream stopped")));
        }
        off += n as usize;
    }
    stream.finish().map_err(|e| from_virt(e, &what))
}
