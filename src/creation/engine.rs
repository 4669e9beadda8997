//! Carrying a creation request out, all or nothing.
//!
//! `plan` parses, merges the template, validates against the schema and
//! resolves against the host's pools (no side effects: it is the dry run).
//! `create` then makes every volume, the cloud-init seed, the definition,
//! autostart and (if asked) starts the VM. Each step that makes something is
//! first written to an intent record (`crate::intent`); if any step fails or
//! the job is cancelled, the recorded steps are undone in reverse and the
//! caller gets the real cause, and if vapord dies half way the next start
//! undoes them. Two requests for the same name: exactly one proceeds, the
//! other gets Conflict.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt_sys as sys;

use super::domain_xml::{domain_xml, Origin};
use super::resolve::{
    self, Defaults, HostLimits, PciPlanner, PoolInfo, Resolved, StorageView, VolumeInfo,
};
use super::spec::{DiskAction, VmSpec};
use super::template::{self, TemplateStore};
use super::{cloud_init, validate};
use crate::intent::{self, Intent, IntentLog, Step};
use crate::libvirt::errors::{from_virt, is_not_found};
use crate::libvirt::xml::Element;
use crate::libvirt::Hypervisor;
use crate::services::rollback;
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

pub use crate::progress::{CancelFlag, NoProgress, Progress};

pub struct Engine {
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

/// Host storage as libvirt sees it, for the resolver.
struct LibvirtView<'a>(&'a Connect);

fn pool_info(p: &StoragePool) -> Option<PoolInfo> {
    let xml = p.xml_desc(0).ok()?;
    let root = Element::parse(&xml).ok()?;
    let bytes = |name: &str| {
        root.child_text(name)
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    Some(PoolInfo {
        name: p.name().ok()?,
        kind: root.attr("type").unwrap_or("dir").to_owned(),
        target: root.child("target")?.child_text("path")?.to_owned(),
        active: p.is_active().unwrap_or(false),
        capacity_bytes: bytes("capacity"),
        available_bytes: bytes("available"),
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
        // Read from the image headers by vapord itself: only local files are
        // accepted, and nothing named in an image is ever connected to.
        crate::services::storage_ownership::image_backing_chain(path)
            .map_err(Error::InvalidArgument)
    }

    fn host_limits(&self) -> HostLimits {
        let memory_mib = crate::libvirt::node::memory_total_kib(self.0)
            .or_else(|| self.0.node_info().ok().map(|n| n.memory))
            .map_or(u64::MAX, |kib| kib / 1024);
        let max_vcpus = self
            .0
            .max_vcpus(Some("kvm"))
            .or_else(|_| self.0.max_vcpus(None))
            .unwrap_or(u32::MAX);
        HostLimits {
            memory_mib,
            max_vcpus,
        }
    }
}

fn gib(n: u64) -> u64 {
    n.saturating_mul(1 << 30)
}

/// A volume definition. Sparse unless `preallocate`: without an
/// `<allocation>` libvirt would allocate (and write) the whole capacity.
fn volume_xml(
    name: &str,
    capacity: u64,
    format: &str,
    backing: Option<(&str, &str)>,
    preallocate: bool,
) -> String {
    use super::domain_xml::esc;
    let allocation = if preallocate { capacity } else { 0 };
    let mut x = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>\
         <allocation unit='bytes'>{allocation}</allocation><target><format type='{}'/></target>",
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
                let t =
                    tokio::task::block_in_place(|| self.templates.get(name)).map_err(
                        |e| match e {
                            Error::NotFound(m) => Error::NotFound(format!("template: {m}")),
                            e => e,
                        },
                    )?;
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
        self.hv
            .run(move |c| {
                create_blocking(
                    c,
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
    uid: u32,
    intents: &IntentLog,
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
    // Every step is recorded before it is taken: if vapord dies half way,
    // the next start rolls the creation back (services::rollback::recover).
    let mut intent = intents.begin("vm-create", &plan.resolved.name, uid)?;
    let result = create_steps(conn, &plan, progress, &mut intent);
    let result = match result {
        Ok(uuid) => Ok(uuid),
        Err(e) => {
            let problems = rollback::undo(conn, intent.steps(), rollback::Undoer::InProcess);
            if problems.is_empty() {
                Err(e)
            } else {
                Err(e.context(format!(
                    "creation failed and cleaning up was incomplete ({})",
                    problems.join("; ")
                )))
            }
        }
    };
    // Done or undone: either way nothing is left for a later start to undo.
    let closed = if result.is_ok() {
        intent.complete()
    } else {
        intent.finish()
    };
    if let Err(e) = closed {
        log::error!("{e}");
    }
    result
}

fn create_steps(
    conn: &Connect,
    plan: &Plan,
    progress: &dyn Progress,
    intent: &mut Intent,
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
        intent.record(Step::Volume {
            path: d.path.clone(),
            not_before_ns: intent::now_ns(),
            made: false,
        })?;
        // Checked once more right before libvirt makes it: nothing (a
        // planted symlink included) may sit at the new name.
        if Path::new(&d.path).symlink_metadata().is_ok() {
            return Err(Error::Conflict(format!(
                "{what}: something appeared at {} meanwhile; nothing was kept",
                d.path
            )));
        }
        // A source must stay the file that was authorized while it is read.
        let source_before = d.source.as_deref().map(file_identity).transpose()?;
        let vol = match d.action {
            DiskAction::Create => {
                let xml = volume_xml(
                    vol_name,
                    gib(d.size_gib.unwrap_or(1)),
                    &d.format,
                    None,
                    d.preallocate,
                );
                StorageVol::create_xml(&pool, &xml, 0)
            }
            DiskAction::Clone => {
                let src_path = d.source.as_deref().unwrap_or_default();
                let src = conn
                    .lookup_storage_vol_by_path(src_path)
                    .map_err(|e| from_virt(e, &what))?;
                let cap = src.info().map(|i| i.capacity).unwrap_or(0);
                let xml = volume_xml(vol_name, cap, &d.format, None, d.preallocate);
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
                let xml = volume_xml(vol_name, cap, "qcow2", Some((src_path, fmt)), d.preallocate);
                StorageVol::create_xml(&pool, &xml, 0)
            }
            DiskAction::Attach => continue,
        }
        .map_err(|e| from_virt(e, &what))?;
        // Undo by the path libvirt really used, and refuse if it is not the planned one.
        let made = vol.path().map_err(|e| from_virt(e, &what))?;
        if made != d.path {
            intent.record(Step::Volume {
                path: made.clone(),
                not_before_ns: 0,
                made: true,
            })?;
            return Err(Error::Conflict(format!(
                "{what}: libvirt created it at {made} instead (has the pool changed?)"
            )));
        }
        intent.volume_made(&made)?;
        if let (Some(src), Some(before)) = (d.source.as_deref(), source_before) {
            if file_identity(src)? != before {
                return Err(Error::Conflict(format!(
                    "{what}: its source {src} was replaced while it was read; nothing was kept"
                )));
            }
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
        // Built in a private directory under the state directory: the seed
        // holds the user data, which can carry secrets.
        let dir = intent.scratch_dir()?;
        let tmp = dir.join("seed.iso");
        let built = cloud_init::build_seed_iso(&ci, &r.name, &tmp);
        let uploaded = built
            .and_then(|_| upload_file(conn, &seed.pool, &seed.volume, &tmp, intent, &seed.path));
        let _ = std::fs::remove_dir_all(&dir);
        uploaded.map_err(|e| e.context("cloud_init"))?;
    }

    check_cancel()?;
    progress.update("defining the domain", done, total);
    // The files the guest will be given must still be the ones authorized:
    // no path may have turned into a symlink since it was resolved.
    recheck_paths(conn, plan)?;
    let uuid = plan.uuid.clone();
    // An NVRAM file that already exists (left by an earlier VM of this name)
    // is not ours to delete on undo. Recorded as kept until we know better.
    intent.record(Step::Domain {
        uuid: uuid.clone(),
        keep_nvram: true,
    })?;
    let dom = conn
        .define_domain_xml(&plan.xml)
        .map_err(|e| from_virt(e, "libvirt refused the domain definition"))?;
    let nvram = dom
        .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
        .ok()
        .and_then(|x| Element::parse(&x).ok())
        .and_then(|root| crate::services::storage_ownership::nvram_path(&root));
    match nvram {
        // libvirt would hand the new VM the firmware variables (boot entries,
        // enrolled keys) an earlier VM of this name left: not its to have.
        Some(p) if Path::new(&p).exists() => {
            return Err(Error::Conflict(format!(
                "name: firmware variables of an earlier VM named '{}' remain at {p}; \
                 delete them (or that VM with remove_storage) or choose another name",
                r.name
            )));
        }
        _ => intent.record(Step::Domain {
            uuid: uuid.clone(),
            keep_nvram: false,
        })?,
    }
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

/// Which file `path` leads to (device and inode).
fn file_identity(path: &str) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Conflict(format!("{path} changed meanwhile: {e}")))?;
    Ok((meta.dev(), meta.ino()))
}

/// Refuse to go on if a path the guest will be given has become a symlink
/// (or moved) since the plan resolved it: what was authorized is what is used.
fn recheck_paths(conn: &Connect, plan: &Plan) -> Result<()> {
    let view = LibvirtView(conn);
    for d in &plan.resolved.disks {
        let given = (!d.is_created()).then_some(&d.path);
        for p in given.into_iter().chain(d.source.iter()) {
            if !resolve::lands_on_itself(&view, p) {
                return Err(Error::Conflict(format!(
                    "{}: {p} changed (it now leads elsewhere) while the request was being \
                     carried out; nothing was kept, try again",
                    d.field
                )));
            }
        }
    }
    Ok(())
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
    intent: &mut Intent,
    path: &str,
) -> Result<()> {
    let data = std::fs::read(file)
        .map_err(|e| Error::Failed(format!("cannot read {}: {e}", file.display())))?;
    let what = format!("cannot store {path}");
    let pool = conn
        .lookup_storage_pool_by_name(pool)
        .map_err(|e| from_virt(e, &what))?;
    intent.record(Step::Volume {
        path: path.to_owned(),
        not_before_ns: intent::now_ns(),
        made: false,
    })?;
    let vol = StorageVol::create_xml(
        &pool,
        &volume_xml(volume, data.len() as u64, "raw", None, true),
        0,
    )
    .map_err(|e| from_virt(e, &what))?;
    intent.volume_made(path)?;
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
