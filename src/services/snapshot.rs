//! Snapshots of VMs: the cache behind their bus objects, what a VM allows
//! now, and making, reverting to and deleting them.
//!
//! The cache re-reads a VM's snapshots after every domain event of that VM
//! (an internal snapshot of a running VM pauses it; a revert redefines
//! it), after every operation vapord performs, after a (re)connect, and in
//! the slow periodic sweep that also catches a disk-only snapshot made with
//! `virsh` (libvirt has no snapshot event). Each operation holds the VM's
//! lock, so it never interleaves with an update, a hotplug or a clone.
//!
//! External snapshots keep vapord's ownership right: the overlay (and
//! memory) files made on top of a volume vapord created for the VM are
//! recorded as the VM's too, so deleting the VM deletes them; files a
//! deleted snapshot took away are forgotten.
//!
//! The decisions are in [`super::snapshot_rules`]. This module knows
//! nothing about D-Bus or polkit.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedReceiver;

use super::snapshot_rules::{self, Capabilities, Chosen, Request, SnapshotFacts};
use crate::libvirt::snapshot::{
    SnapshotCreate, SnapshotDelete, SnapshotRecord, SnapshotRevert, SnapshotSupport,
};
use crate::libvirt::xml::DiskSource;
use crate::libvirt::{Definition, DomainRef, Hypervisor, Session};
use crate::model::Model;
use crate::progress::Progress;
use crate::store::{Change, Keyed, Store};
use crate::{Error, Result};

/// A snapshot as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    /// `<vm uuid>/<snapshot name>`: stable and unique.
    pub id: String,
    pub vm_uuid: String,
    pub vm_name: String,
    pub rec: SnapshotRecord,
    /// Names of its children, sorted.
    pub children: Vec<String>,
}

impl Keyed for SnapshotView {
    fn key(&self) -> &str {
        &self.id
    }
}

/// The id of a VM's snapshot.
pub fn snapshot_id(vm_uuid: &str, name: &str) -> String {
    format!("{vm_uuid}/{name}")
}

/// One VM's snapshots as published, each with its children. Pure.
pub fn views(vm_uuid: &str, vm_name: &str, records: Vec<SnapshotRecord>) -> Vec<SnapshotView> {
    let mut children: HashMap<&str, Vec<String>> = HashMap::new();
    for r in &records {
        if !r.parent.is_empty() {
            children
                .entry(r.parent.as_str())
                .or_default()
                .push(r.name.clone());
        }
    }
    for c in children.values_mut() {
        c.sort();
    }
    let children: HashMap<String, Vec<String>> = children
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    records
        .into_iter()
        .map(|rec| SnapshotView {
            id: snapshot_id(vm_uuid, &rec.name),
            vm_uuid: vm_uuid.to_owned(),
            vm_name: vm_name.to_owned(),
            children: children.get(&rec.name).cloned().unwrap_or_default(),
            rec,
        })
        .collect()
}

/// What a caller asks to be made.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// `None`: named after the time.
    pub name: Option<String>,
    pub description: String,
    pub request: Request,
}

/// The snapshot service.
pub struct SnapshotService {
    model: Arc<Model>,
    store: Store<SnapshotView>,
    /// What libvirt supports, by domain type (read once).
    support: Mutex<HashMap<String, SnapshotSupport>>,
}

impl SnapshotService {
    pub fn new(model: Arc<Model>) -> (Arc<Self>, UnboundedReceiver<Change<SnapshotView>>) {
        let (store, rx) = Store::new(Arc::new(AtomicU64::new(1)));
        let s = Arc::new(Self {
            model,
            store,
            support: Mutex::new(HashMap::new()),
        });
        (s, rx)
    }

    fn hv(&self) -> &Arc<Hypervisor> {
        self.model.hypervisor()
    }

    pub fn snapshot(&self, id: &str) -> Option<Arc<SnapshotView>> {
        self.store.get(id)
    }

    /// A VM's snapshots, oldest first.
    pub fn of_vm(&self, uuid: &str) -> Vec<Arc<SnapshotView>> {
        let mut v: Vec<_> = self
            .store
            .all()
            .into_iter()
            .filter(|s| s.vm_uuid == uuid)
            .collect();
        v.sort_by(|a, b| (a.rec.created_at, &a.rec.name).cmp(&(b.rec.created_at, &b.rec.name)));
        v
    }

    /// Re-read every VM's snapshots.
    pub async fn resync(&self) -> Result<()> {
        let ticket = self.store.ticket();
        let all = self
            .hv()
            .session(|s| {
                let mut out = Vec::new();
                for d in s.domains()? {
                    let (Ok(uuid), Ok(name)) = (d.uuid(), d.name()) else {
                        continue;
                    };
                    // A domain undefined meanwhile has nothing to show.
                    if let Ok(recs) = d.snapshots() {
                        out.extend(views(&uuid, &name, recs));
                    }
                }
                Ok(out)
            })
            .await?;
        self.store.replace_scope(all, |_| true, ticket);
        Ok(())
    }

    /// Re-read one VM's snapshots (all go when the VM has).
    pub async fn resync_vm(&self, uuid: &str) -> Result<()> {
        let ticket = self.store.ticket();
        let read = self
            .hv()
            .on_domain(uuid, |_, d| Ok((d.name()?, d.snapshots()?)))
            .await;
        let found = match read {
            Ok((name, recs)) => views(uuid, &name, recs),
            Err(Error::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let u = uuid.to_owned();
        self.store.replace_scope(found, |s| s.vm_uuid == u, ticket);
        Ok(())
    }

    /// What libvirt supports for domains of `virt_type` (asked once).
    fn support_in(&self, s: &Session<'_>, virt_type: &str) -> Result<SnapshotSupport> {
        if let Some(v) = self.lock_support().get(virt_type) {
            return Ok(*v);
        }
        let v = s.snapshot_support(virt_type)?;
        self.lock_support().insert(virt_type.to_owned(), v);
        Ok(v)
    }

    fn lock_support(&self) -> std::sync::MutexGuard<'_, HashMap<String, SnapshotSupport>> {
        self.support.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The facts about a VM now (its live definition when it runs).
    fn facts_in(&self, s: &Session<'_>, d: &DomainRef) -> Result<SnapshotFacts> {
        let running = d.is_active()?;
        let def = d.definition(Definition::Live)?;
        let virt_type = def.attr("type").unwrap_or("kvm").to_owned();
        let support = self.support_in(s, &virt_type)?;
        Ok(snapshot_rules::facts_from_domain(&def, running, support))
    }

    /// What the VM allows now, each with its reason when not.
    pub async fn capabilities(self: &Arc<Self>, uuid: &str) -> Result<Capabilities> {
        let this = self.clone();
        self.hv()
            .on_domain(uuid, move |s, d| {
                Ok(snapshot_rules::capabilities(&this.facts_in(s, d)?))
            })
            .await
    }

    /// Make a snapshot; its id back.
    pub async fn create(
        self: &Arc<Self>,
        uuid: &str,
        new: NewSnapshot,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let _locked = self.model.lock_vm(uuid).await;
        if let Some(n) = &new.name {
            snapshot_rules::check_name(n)?;
        }
        let this = self.clone();
        progress.update("checking the VM", 0, 0);
        let (name, chosen, xml, how, memory_file, before) = self
            .hv()
            .on_domain(uuid, move |s, d| {
                let facts = this.facts_in(s, d)?;
                let caps = snapshot_rules::capabilities(&facts);
                let chosen = snapshot_rules::choose(&caps, facts.running, new.request)?;
                let taken: Vec<String> = d.snapshots()?.into_iter().map(|r| r.name).collect();
                let n = match new.name {
                    Some(n) if taken.contains(&n) => {
                        return Err(Error::Conflict(format!(
                            "name: the VM already has a snapshot '{n}'"
                        )))
                    }
                    Some(n) => n,
                    None => snapshot_rules::unused_name(
                        &snapshot_rules::default_name(now_secs()),
                        &taken,
                    ),
                };
                let memory_file = match chosen {
                    Chosen::ExternalMemory => {
                        let f = snapshot_rules::memory_file(&facts.disks, &n).ok_or_else(|| {
                            Error::NotSupported(
                                "kind: no disk of the VM is a file to put the memory beside".into(),
                            )
                        })?;
                        if std::path::Path::new(&f).exists() {
                            return Err(Error::Conflict(format!(
                                "name: the memory file {f} exists already"
                            )));
                        }
                        Some(f)
                    }
                    _ => None,
                };
                let xml = snapshot_rules::snapshot_xml(
                    &n,
                    &new.description,
                    chosen,
                    facts.running,
                    &facts.disks,
                    memory_file.as_deref(),
                );
                let how = SnapshotCreate {
                    disk_only: chosen == Chosen::ExternalDiskOnly,
                    quiesce: new.request.quiesce,
                };
                let before = files_of(d)?;
                Ok((n, chosen, xml, how, memory_file, before))
            })
            .await?;
        let step = match chosen {
            Chosen::Internal => "saving the disks (and memory) into the images",
            Chosen::ExternalDiskOnly => "starting new overlay files for the disks",
            Chosen::ExternalMemory => "saving the memory and starting new overlay files",
        };
        progress.update(step, 0, 0);
        let what = format!("cannot make the {} snapshot '{name}'", chosen.as_str());
        let made = self
            .hv()
            .on_domain(uuid, move |_, d| {
                let made = d.create_snapshot(&xml, how).map_err(|e| e.context(&what))?;
                keep_ownership(d, &before, memory_file);
                Ok(made)
            })
            .await;
        self.settle(uuid).await;
        let made = made?;
        progress.update("done", 1, 1);
        Ok(snapshot_id(uuid, &made))
    }

    /// Revert the VM to one of its snapshots.
    pub async fn revert(self: &Arc<Self>, id: &str, how: SnapshotRevert) -> Result<()> {
        let snap = self.existing(id)?;
        let _locked = self.model.lock_vm(&snap.vm_uuid).await;
        let name = snap.rec.name.clone();
        let what = format!("cannot revert VM '{}' to snapshot '{name}'", snap.vm_name);
        let (this, kind) = (self.clone(), snap.rec.kind());
        let r = self
            .hv()
            .on_domain(&snap.vm_uuid, move |s, d| {
                let caps = snapshot_rules::capabilities(&this.facts_in(s, d)?);
                snapshot_rules::may_revert_or_delete(&caps, kind, false)?;
                let before = files_of(d)?;
                d.revert_snapshot(&name, how).map_err(|e| match e {
                    Error::InvalidState(m) => Error::InvalidState(m),
                    e => e.context(&what),
                })?;
                // Reverting to an external snapshot starts new overlays.
                keep_ownership(d, &before, None);
                // The disks changed behind the backups' dirty bitmaps: the
                // next backup must be full, so their checkpoints go, with
                // their bitmaps where libvirt can still remove them.
                for c in d.checkpoints().unwrap_or_default() {
                    if c.starts_with("vapor-") {
                        let _ = d
                            .delete_checkpoint(&c)
                            .or_else(|_| d.delete_checkpoint_metadata(&c))
                            .map_err(|e| log::warn!("cannot forget checkpoint {c}: {e}"));
                    }
                }
                Ok(())
            })
            .await;
        self.settle(&snap.vm_uuid).await;
        r
    }

    /// Delete one snapshot (and its children when asked).
    pub async fn delete(self: &Arc<Self>, id: &str, how: SnapshotDelete) -> Result<()> {
        let snap = self.existing(id)?;
        let _locked = self.model.lock_vm(&snap.vm_uuid).await;
        let (this, kind) = (self.clone(), snap.rec.kind());
        let name = snap.rec.name.clone();
        let what = format!("cannot delete snapshot '{name}' of VM '{}'", snap.vm_name);
        let mut files: Vec<String> = snap
            .rec
            .disks
            .iter()
            .filter(|d| !d.file.is_empty())
            .map(|d| d.file.clone())
            .collect();
        if !snap.rec.memory_file.is_empty() {
            files.push(snap.rec.memory_file.clone());
        }
        let r = self
            .hv()
            .on_domain(&snap.vm_uuid, move |s, d| {
                // Forgetting the record alone needs nothing of libvirt.
                if !how.metadata_only {
                    let caps = snapshot_rules::capabilities(&this.facts_in(s, d)?);
                    snapshot_rules::may_revert_or_delete(&caps, kind, true)?;
                }
                d.delete_snapshot(&name, how)
                    .map_err(|e| e.context(&what))?;
                // Forget files of the VM's own that the deletion took away.
                let owned = d.vapor_metadata().owned_volumes;
                for f in files.iter().filter(|f| owned.contains(f)) {
                    if !std::path::Path::new(f).exists() {
                        let _ = super::vm_devices::change_owned(d, f, false);
                    }
                }
                Ok(())
            })
            .await;
        self.settle(&snap.vm_uuid).await;
        r
    }

    fn existing(&self, id: &str) -> Result<Arc<SnapshotView>> {
        self.store
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("snapshot {id} no longer exists")))
    }

    /// Re-read the VM and its snapshots after a change.
    async fn settle(&self, uuid: &str) {
        if let Err(e) = self.resync_vm(uuid).await {
            log::debug!(vm_uuid = uuid; "cannot re-read snapshots: {e}");
        }
        let _ = self.model.refresh_domain(uuid).await;
    }
}

/// What a snapshot operation may change about the VM's files: each disk's
/// (target, file), and which files are the VM's own.
struct Files {
    disks: Vec<(String, String)>,
    owned: Vec<String>,
}

/// The VM's files now (the running, or only, definition).
fn files_of(d: &DomainRef) -> Result<Files> {
    let def = d.definition(Definition::Live)?;
    Ok(Files {
        disks: crate::libvirt::xml::domain_disks(&def)
            .into_iter()
            .filter_map(|disk| match (disk.target, disk.source) {
                (Some(t), DiskSource::Path(p)) => Some((t, p)),
                _ => None,
            })
            .collect(),
        owned: d.vapor_metadata().owned_volumes,
    })
}

/// Keep the VM's record of its own files right after a snapshot operation:
/// every file that took the place of one of its own (the overlay a
/// snapshot or a revert started) and `extra` (a memory file) when any did
/// become its own; and files it owned before stay owned, though a revert
/// brings back the older record the snapshot holds. So deleting the VM
/// deletes them all.
fn keep_ownership(d: &DomainRef, before: &Files, extra: Option<String>) {
    let after = match files_of(d) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("cannot read the disks after a snapshot operation: {e}");
            return;
        }
    };
    let add = snapshot_rules::ownership_after(
        &before.disks,
        &before.owned,
        &after.disks,
        &after.owned,
        extra,
        |f| std::path::Path::new(f).exists(),
    );
    for f in add {
        if let Err(e) = super::vm_devices::change_owned(d, &f, true) {
            log::warn!("cannot record {f} as the VM's own: {e}");
        }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, parent: &str) -> SnapshotRecord {
        SnapshotRecord {
            name: name.into(),
            parent: parent.into(),
            ..Default::default()
        }
    }

    #[test]
    fn children_are_found_from_parents() {
        let v = views(
            "u",
            "web",
            vec![rec("a", ""), rec("c", "a"), rec("b", "a"), rec("d", "b")],
        );
        let by: HashMap<&str, &SnapshotView> = v.iter().map(|s| (s.rec.name.as_str(), s)).collect();
        assert_eq!(by["a"].children, vec!["b", "c"]);
        assert_eq!(by["b"].children, vec!["d"]);
        assert!(by["d"].children.is_empty());
        assert_eq!(by["a"].id, "u/a");
        assert_eq!(by["a"].vm_name, "web");
    }
}
