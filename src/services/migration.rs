//! Live migration of a VM to another libvirt host: the checks before it
//! starts (refused with reasons, [`super::migration_rules::precheck`]), the
//! migration itself with its live figures (from libvirt's job statistics,
//! every half second, to the caller's Job and the VM's `Migration`
//! property), cancelling (libvirt aborts; the VM keeps running here) and
//! the switch to post-copy.
//!
//! This module knows nothing about D-Bus or polkit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::migration_rules::{self, CopyStorage, Facts};
use super::storage_ownership;
use crate::libvirt::migration::{Destination, MigrateRequest};
use crate::libvirt::records::MigrationStatus;
use crate::libvirt::xml::{domain_disks, Disk, DiskSource};
use crate::libvirt::{Definition, Hypervisor};
use crate::model::Model;
use crate::progress::Progress;
use crate::{Error, Result};

/// What a caller asks for (defaults as the D-Bus method documents).
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    pub live: Option<bool>,
    pub persistent: bool,
    pub undefine_source: bool,
    pub copy_storage: CopyStorage,
    pub tunnelled: bool,
    pub p2p: bool,
    pub auto_converge: bool,
    pub postcopy: bool,
    pub bandwidth_mib: u64,
    pub compression: Vec<String>,
    pub data_uri: Option<String>,
}

/// How a migration went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub total_ms: u64,
    /// As libvirt measured it (or last expected, when it kept no record).
    pub downtime_ms: u64,
    /// Images left here that the copy replaced, removed (vapord had made
    /// them for the VM, and nothing else here uses them).
    pub removed: Vec<String>,
    /// Images left here, and why they stay.
    pub kept: Vec<(String, String)>,
    /// All of it in words (the reply, and the Job's Completed message).
    pub summary: String,
}

/// The disks a migration copies, and which of them vapord had made for
/// the VM (the candidates for removal here once the VM is gone).
struct Copied {
    disks: Vec<Disk>,
    owned: Vec<String>,
}

pub struct MigrationService {
    model: Arc<Model>,
    /// Destinations configured by name (`[hosts]` in vapord.toml).
    hosts: BTreeMap<String, String>,
    /// Whether callers may name other hosts by URI.
    unlisted: bool,
}

impl MigrationService {
    pub fn new(model: Arc<Model>, hosts: BTreeMap<String, String>, unlisted: bool) -> Self {
        Self {
            model,
            hosts,
            unlisted,
        }
    }

    fn hv(&self) -> &Arc<Hypervisor> {
        self.model.hypervisor()
    }

    /// The libvirt URI a destination names (checked).
    pub fn resolve(&self, destination: &str) -> Result<String> {
        migration_rules::destination_uri(destination, &self.hosts, self.unlisted)
    }

    /// Migrate the VM to `destination`; `job` is the Job's object path
    /// (shown on the VM while it runs).
    pub async fn migrate(
        &self,
        uuid: &str,
        destination: &str,
        opts: MigrationOptions,
        job: String,
        progress: Arc<dyn Progress>,
    ) -> Result<MigrationReport> {
        let uri = self.resolve(destination)?;
        let _locked = self.model.lock_vm(uuid).await;
        progress.update("checking the destination", 0, 0);
        let u = uri.clone();
        let copy = opts.copy_storage;
        let (req, dest_name, copied_disks) = self
            .hv()
            .on_domain(uuid, move |s, d| {
                let running = d.is_active()?;
                let live = opts.live.unwrap_or(running);
                if live && !running {
                    return Err(Error::InvalidState(
                        "live: the VM is not running (migrate it with live false)".into(),
                    ));
                }
                if !running && copy != CopyStorage::None {
                    return Err(Error::InvalidState(
                        "copy_storage: a stopped VM's definition moves alone; copy its disks \
                         another way"
                            .into(),
                    ));
                }
                let dest = Destination::open(&u)?;
                let def = d.definition(Definition::Live)?;
                // What is on the destination now, not what its pools last
                // listed: a copy must never go into a file already there.
                dest.refresh_pools();
                let mut copied = Vec::new();
                let mut copied_disks = Vec::new();
                let mut dest_had = Vec::new();
                let mut missing_bases = Vec::new();
                let mut shared = Vec::new();
                for disk in domain_disks(&def) {
                    let (Some(t), DiskSource::Path(p)) = (disk.target.clone(), &disk.source) else {
                        continue;
                    };
                    let writable = disk.device == "disk" && !disk.readonly && !disk.shareable;
                    if writable && copy != CopyStorage::None {
                        if dest.has_volume(p) {
                            dest_had.push((t.clone(), p.clone()));
                        }
                        if copy == CopyStorage::Incremental {
                            missing_bases.extend(
                                disk.backing
                                    .iter()
                                    .filter(|b| !dest.has_volume(b))
                                    .map(|b| (t.clone(), b.clone())),
                            );
                        }
                        copied.push((t, p.clone()));
                        copied_disks.push(disk.clone());
                    } else {
                        shared.push((t, p.clone(), dest.has_volume(p)));
                    }
                }
                let cpu = d.cpu_facts()?;
                let cpu_problem = match (&cpu.cpu, cpu.cpu_mode.as_str()) {
                    (Some(xml), "custom" | "host-model") if running => dest
                        .cpu_compatible(
                            cpu.emulator.as_deref(),
                            cpu.arch.as_deref(),
                            cpu.machine.as_deref(),
                            cpu.virt_type.as_deref(),
                            xml,
                        )?
                        .err(),
                    _ => None,
                };
                let facts = Facts {
                    local_host_uuid: s.host_uuid()?,
                    dest_host_uuid: dest.host_uuid()?,
                    dest_hostname: dest.hostname(),
                    name_taken: dest.has_domain(&d.name()?, &d.uuid()?),
                    vm_name: d.name()?,
                    dest_pool_dirs: if copied.is_empty() {
                        Vec::new()
                    } else {
                        dest.pool_dirs()?
                    },
                    copied: copied.clone(),
                    copied_present: dest_had,
                    missing_bases,
                    shared,
                    cpu_problem,
                };
                migration_rules::precheck(&facts)?;
                let owned: Vec<String> = d
                    .vapor_metadata()
                    .owned_volumes
                    .into_iter()
                    .filter(|v| copied.iter().any(|(_, p)| p == v))
                    .collect();
                let req = MigrateRequest {
                    live,
                    offline: !running,
                    persistent: opts.persistent || !running,
                    undefine_source: opts.undefine_source,
                    copy_all: copy == CopyStorage::All,
                    copy_incremental: copy == CopyStorage::Incremental,
                    disks: copied.into_iter().map(|(t, _)| t).collect(),
                    tunnelled: opts.tunnelled,
                    p2p: opts.p2p,
                    auto_converge: opts.auto_converge,
                    postcopy: opts.postcopy,
                    bandwidth_mib: opts.bandwidth_mib,
                    compression: opts.compression.clone(),
                    data_uri: opts.data_uri.clone(),
                    listen_address: opts
                        .data_uri
                        .as_deref()
                        .filter(|_| !opts.tunnelled)
                        .and_then(migration_rules::listen_address),
                };
                let copied = Copied {
                    disks: copied_disks,
                    owned,
                };
                Ok((req, facts.dest_hostname, copied))
            })
            .await?;
        let undefines = req.undefine_source;
        if progress.cancelled() {
            return Err(Error::Failed(
                "the migration was cancelled before it started".into(),
            ));
        }
        let started = Instant::now();
        let postcopy = req.postcopy;
        let show = |st: MigrationStatus| {
            let model = self.model.clone();
            let uuid = uuid.to_owned();
            async move { model.set_migration(&uuid, Some(st)).await }
        };
        show(MigrationStatus {
            destination: dest_name.clone(),
            job: job.clone(),
            phase: "precopy".into(),
            postcopy,
            ..Default::default()
        })
        .await;
        progress.update(&format!("migrating to {dest_name}"), 0, 0);
        let u = uri.clone();
        let p2p = req.p2p || req.tunnelled;
        let hv = self.hv().clone();
        let id = uuid.to_owned();
        let run = tokio::spawn(async move {
            hv.on_domain(&id, move |_, d| {
                let dest = if p2p {
                    None
                } else {
                    Some(Destination::open(&u)?)
                };
                d.migrate(&u, dest.as_ref(), &req)
                    .map_err(|e| e.context(format!("cannot migrate to {u}")))?;
                // The completed job's record, while the handle still works.
                Ok(d.job_stats(true).ok())
            })
            .await
        });
        let mut aborted = false;
        let mut last = MigrationStatus::default();
        while !run.is_finished() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if run.is_finished() {
                break;
            }
            if let Ok(st) = self.hv().on_domain(uuid, |_, d| d.job_stats(false)).await {
                if st.running() {
                    last = MigrationStatus {
                        destination: dest_name.clone(),
                        job: job.clone(),
                        phase: self
                            .model
                            .get(uuid)
                            .and_then(|r| r.migration.as_ref().map(|m| m.phase.clone()))
                            .unwrap_or_else(|| "precopy".into()),
                        postcopy,
                        data_processed: st.data_processed.unwrap_or(0),
                        data_remaining: st.data_remaining.unwrap_or(0),
                        data_total: st.data_total.unwrap_or(0),
                        memory_bps: st.memory_bps.unwrap_or(0),
                        iteration: st.memory_iteration.unwrap_or(0),
                        expected_downtime_ms: st.downtime_ms.unwrap_or(0),
                    };
                    progress.figures(&[
                        ("data_processed", last.data_processed),
                        ("data_remaining", last.data_remaining),
                        ("data_total", last.data_total),
                        ("memory_bps", last.memory_bps),
                        ("iteration", last.iteration),
                        ("expected_downtime_ms", last.expected_downtime_ms),
                    ]);
                    progress.update(
                        &format!("migrating to {dest_name}"),
                        last.data_processed,
                        last.data_total,
                    );
                    show(last.clone()).await;
                }
            }
            // Until libvirt's job exists an abort fails: asked again each turn.
            if progress.cancelled() && !aborted {
                progress.update("cancelling", last.data_processed, last.data_total);
                match self.hv().on_domain(uuid, |_, d| d.abort_job()).await {
                    Ok(()) => aborted = true,
                    Err(e) => log::debug!(vm_uuid = uuid; "cannot abort the migration yet: {e}"),
                }
            }
        }
        let result = run.await;
        self.model.set_migration(uuid, None).await;
        let result =
            result.map_err(|e| Error::Failed(format!("the migration task failed: {e}")))?;
        let _ = self.model.refresh_domain(uuid).await;
        if result.is_err() {
            self.remove_precreated(&uri, &copied_disks).await;
        }
        let done = match result {
            Err(_) if aborted => Err(Error::Failed(
                "the migration was cancelled; the VM runs on here".into(),
            )),
            Err(e) => Err(e),
            Ok(stats) => Ok(stats),
        }?;
        let (removed, kept) = if undefines {
            self.remove_copied(uuid, copied_disks).await
        } else {
            (Vec::new(), Vec::new())
        };
        let mut report = MigrationReport {
            removed,
            kept,
            summary: String::new(),
            total_ms: done
                .as_ref()
                .and_then(|s| s.time_elapsed_ms)
                .unwrap_or(started.elapsed().as_millis() as u64),
            downtime_ms: done
                .as_ref()
                .and_then(|s| s.downtime_ms)
                .unwrap_or(last.expected_downtime_ms),
        };
        progress.figures(&[
            ("data_processed", last.data_total.max(last.data_processed)),
            ("data_remaining", 0),
            ("data_total", last.data_total),
            ("downtime_ms", report.downtime_ms),
            ("total_ms", report.total_ms),
        ]);
        let mut summary = format!(
            "migrated to {dest_name} in {} ms, downtime {} ms",
            report.total_ms, report.downtime_ms
        );
        if !report.removed.is_empty() {
            summary.push_str(&format!(
                "; the images left here were removed: {}",
                report.removed.join(", ")
            ));
        }
        for (path, why) in &report.kept {
            summary.push_str(&format!("; kept {path}: {why}"));
        }
        progress.summary(&summary);
        report.summary = summary;
        progress.update("migrated", 1, 1);
        Ok(report)
    }

    /// After a migration that failed or was cancelled, the images libvirt
    /// made on the destination for the copy (none was there before: the
    /// precheck refuses that), unless a domain there uses one.
    async fn remove_precreated(&self, uri: &str, copied: &Copied) {
        let paths: Vec<String> = copied
            .disks
            .iter()
            .filter_map(|d| match &d.source {
                DiskSource::Path(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        if paths.is_empty() {
            return;
        }
        let uri = uri.to_owned();
        let r = tokio::task::spawn_blocking(move || {
            let dest = Destination::open(&uri)?;
            for p in &paths {
                match dest.remove_unused_volume(p) {
                    Ok(true) => {
                        log::info!("removed {p} on {uri}, made there for the failed migration")
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("cannot remove {p} on {uri}: {e}"),
                }
            }
            Ok::<_, Error>(())
        })
        .await;
        if let Ok(Err(e)) = r {
            log::warn!("cannot remove what the failed migration made there: {e}");
        }
    }

    /// After a migration that copied the disks and undefined the VM here:
    /// remove the images it left here that vapord had made for it and that
    /// nothing else here uses (the rules of `Delete` with remove_storage);
    /// (removed, kept with why). Nothing is removed while the VM is still
    /// defined here.
    async fn remove_copied(
        &self,
        uuid: &str,
        copied: Copied,
    ) -> (Vec<String>, Vec<(String, String)>) {
        if copied.disks.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let id = uuid.to_owned();
        let r = self
            .hv()
            .session(move |s| {
                match s.domain(&id) {
                    Err(Error::NotFound(_)) => {}
                    Ok(_) => return Ok((Vec::new(), Vec::new())),
                    Err(e) => return Err(e),
                }
                let mut kept = Vec::new();
                let plan =
                    storage_ownership::plan(s, &id, &copied.disks, &copied.owned, None, false)?;
                let mut removed = Vec::new();
                // Delete's reasons, but Migrate has no remove_foreign_storage.
                kept.extend(plan.kept.into_iter().map(|(p, why)| {
                    let why = match why.split_once(" (remove_foreign_storage") {
                        Some((head, _)) => head.to_owned(),
                        None => why,
                    };
                    (p, why)
                }));
                for (path, vol) in plan.delete {
                    match vol.delete() {
                        Ok(()) => removed.push(path),
                        Err(e) => kept.push((path, format!("deleting failed: {e}"))),
                    }
                }
                Ok((removed, kept))
            })
            .await;
        r.unwrap_or_else(|e| {
            log::warn!(vm_uuid = uuid; "cannot remove the images the migration left here: {e}");
            (
                Vec::new(),
                vec![(
                    "the images left here".to_owned(),
                    format!("cannot tell what else uses them: {e}"),
                )],
            )
        })
    }

    /// Switch the VM's running migration to post-copy.
    pub async fn start_postcopy(&self, uuid: &str) -> Result<()> {
        let Some(cur) = self.model.get(uuid).and_then(|r| r.migration.clone()) else {
            return Err(Error::InvalidState(
                "no migration of this VM is running".into(),
            ));
        };
        if !cur.postcopy {
            return Err(Error::InvalidState(
                "the running migration was not started with postcopy, so it cannot switch \
                 to post-copy"
                    .into(),
            ));
        }
        if cur.phase == "postcopy" {
            return Err(Error::InvalidState(
                "the migration is in post-copy already".into(),
            ));
        }
        self.hv()
            .on_domain(uuid, |_, d| d.start_postcopy())
            .await
            .map_err(|e| e.context("cannot switch to post-copy"))?;
        self.model
            .set_migration(
                uuid,
                Some(MigrationStatus {
                    phase: "postcopy".into(),
                    ..cur
                }),
            )
            .await;
        Ok(())
    }
}
