//! `Manager.Apply`: the document checked, every step it may take
//! authorized with its own polkit action before anything is done, the
//! source files opened, then the work (`services::apply`) run as a Job.
//!
//! Per VM: `vm-create` (per pool, as CreateVirtualMachine) when it is
//! missing (a clone: as the Clone method, `vm-modify` on the source and
//! `vm-create` per pool), `vm-modify` when it declares vCPUs or memory, `vm-lifecycle`
//! (it may be started), `guest-exec` (cloud-init's status, NFS mounts and
//! the checks of files run as root in the guest), `guest-file` for each
//! file it declares and for `/etc/fstab` when it has shares, and
//! `snapshot-manage` for its final snapshot. A source the caller did not
//! pass as a descriptor is a host file: `storage-host-path`, with the path
//! it resolves to.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::ObjectServer;

use super::{Manager, NewVm};
use crate::dbus::options::{self, Options};
use crate::dbus::polkit::{Action, Host, Target};
use crate::dbus::Error;
use crate::services::apply::{ApplyRequest, Making, Sources};
use crate::services::apply_doc::{ApplyDoc, Origin, VmDecl};
use crate::services::vm_clone::CloneRequest;
use crate::services::vm_clone_plan::CloneMode;
use crate::text::for_bus;

/// The most different source files one apply takes: what one message on
/// the system bus may carry (`max_message_unix_fds`), host files included
/// so vapord holds no more than that open for one apply.
const MAX_SOURCES: usize = 16;

/// What the guest-exec check of an apply tells polkit it runs.
const APPLY_COMMANDS: &str =
    "vapord apply: cloud-init status, NFS client install and mounts, file checks";

/// The creation spec of a missing VM, as CreateVirtualMachine takes it
/// (`None`: it is made as a clone).
fn spec_text(origin: &Origin) -> Option<String> {
    match origin {
        Origin::Spec(v) => Some(v.to_string()),
        Origin::Template { name, overrides } => {
            let mut v = overrides.clone();
            if let Some(m) = v.as_object_mut() {
                m.insert("template".into(), serde_json::Value::String(name.clone()));
            }
            Some(v.to_string())
        }
        Origin::Clone { .. } => None,
    }
}

/// An error of a VM's spec, placed in the document.
fn placed(i: usize, e: crate::Error) -> crate::Error {
    let wrap = |m: String| {
        let m = m
            .strip_prefix("spec.")
            .map_or(m.clone(), |rest| rest.to_owned());
        format!("vms[{i}].spec: {m}")
    };
    match e {
        crate::Error::InvalidArgument(m) => crate::Error::InvalidArgument(wrap(m)),
        crate::Error::NotFound(m) => crate::Error::NotFound(wrap(m)),
        e => e,
    }
}

/// Open a host file the document names, once polkit allows
/// `storage-host-path` for the path as written and, when symlinks lead
/// elsewhere, for the path it resolves to (nothing about the host is looked
/// at before the first answer); it must be a regular file, opened without
/// opening anything else first (a device's open has effects).
async fn host_file(m: &Manager, header: &Header<'_>, source: &str) -> Result<std::fs::File, Error> {
    let field = format!("files.{}", for_bus(source));
    let allow = |path: String| async move {
        m.auth
            .check_with(
                header,
                Action::StorageHostPath,
                &Host,
                &format!("copy the host file {} into a guest", for_bus(&path)),
                &[("storage.path", &path)],
            )
            .await
    };
    allow(source.to_owned()).await?;
    let real =
        // No OS detail: what lies behind a link is not the caller's to learn.
        std::fs::canonicalize(source).map_err(|_| Error::NotFound(format!("{field}: no such file")))?;
    let real = real
        .to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("{field}: not UTF-8 once resolved")))?
        .to_owned();
    if real != source {
        allow(real.clone()).await?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    // A handle on the path alone (no open of the file itself) to look at
    // what it is; then the file, opened through that handle.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&real)
        .map_err(|_| Error::NotFound(format!("{field}: no such file")))?;
    // O_NOFOLLOW guards the last part only: a directory of the path
    // swapped for a link since it was resolved shows here.
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|e| Error::Failed(format!("{field}: {e}")))?;
    if opened.to_str() != Some(real.as_str()) {
        return Err(Error::Conflict(format!(
            "{field}: the path changed while it was opened; try again"
        )));
    }
    if !handle.metadata().is_ok_and(|md| md.is_file()) {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} is not a regular file",
            for_bus(&real)
        )));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .map_err(|e| Error::Failed(format!("{field}: {e}")))?;
    regular(f, &field)
}

fn regular(f: std::fs::File, field: &str) -> Result<std::fs::File, Error> {
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Error::InvalidArgument(format!(
            "{field}: must be a regular file (it is read twice: compared, then copied)"
        )));
    }
    Ok(f)
}

impl Manager {
    pub(super) async fn apply_as(
        &self,
        header: &Header<'_>,
        server: &ObjectServer,
        document: &str,
        files: HashMap<String, zbus::OwnedFd>,
        opts: &Options,
    ) -> Result<String, Error> {
        options::known(opts, &["dry_run"])?;
        let dry_run = options::flag(opts, "dry_run")?;
        let doc = ApplyDoc::parse(document)?;
        let declared: HashSet<&str> = doc
            .vms
            .iter()
            .flat_map(|v| v.files.iter().map(|f| f.source.as_str()))
            .collect();
        if let Some(k) = files.keys().find(|k| !declared.contains(k.as_str())) {
            return Err(Error::InvalidArgument(format!(
                "files.{}: no file_injections source has this name",
                for_bus(k)
            )));
        }
        if declared.len() > MAX_SOURCES {
            return Err(Error::LimitExceeded(format!(
                "files: {} different sources, more than {MAX_SOURCES} (what one bus message may carry)",
                declared.len()
            )));
        }
        let uid = self.auth.caller_uid(header).await?;
        let mut plans = HashMap::new();
        let mut found = HashMap::new();
        for (i, d) in doc.vms.iter().enumerate() {
            let existing = self.model.find(&d.name);
            if let Some(rec) = &existing {
                found.insert(d.name.clone(), rec.uuid.clone());
            }
            if let Some(plan) = self.authorize_apply(header, i, d, existing, uid).await? {
                plans.insert(d.name.clone(), plan);
            }
        }
        let mut sources: Sources = HashMap::new();
        for (k, fd) in files {
            let f = super::super::storage::caller_file(fd, false)
                .map_err(|e| Error::InvalidArgument(format!("files.{}: {e}", for_bus(&k))))?;
            let f = regular(f, &format!("files.{}", for_bus(&k)))?;
            sources.insert(k, Arc::new(f));
        }
        for src in declared {
            if sources.contains_key(src) {
                continue;
            }
            if !src.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "files: '{}', a file_injections source, was not passed",
                    for_bus(src)
                )));
            }
            let f = host_file(self, header, src).await?;
            sources.insert(src.to_owned(), Arc::new(f));
        }
        let names: Vec<&str> = doc.vms.iter().map(|v| v.name.as_str()).collect();
        log::info!(uid = uid, dry_run = dry_run; "apply: {}", names.join(", "));
        let objects = found.values().map(|u| super::super::vm_path(u)).collect();
        let req = ApplyRequest {
            doc,
            plans,
            found,
            sources,
            dry_run,
            uid,
        };
        let svc = self.apply.clone();
        let report = super::super::job::run(
            server,
            &self.auth,
            "apply",
            objects,
            uid,
            |job| async move {
                svc.apply(req, job as Arc<dyn crate::progress::Progress>)
                    .await
            },
        )
        .await?;
        // Objects of VMs it made, at once (events would, a little later).
        for vm in &report.vms {
            if let Ok(Some(rec)) = self.model.refresh_domain(&vm.uuid).await {
                super::super::object::export(server, &self.vm_ctx, rec).await;
            }
        }
        serde_json::to_string_pretty(&report)
            .map(crate::text::json_for_bus)
            .map_err(|e| Error::Failed(e.to_string()))
    }

    /// A clone as the `Clone` method authorizes it: `vm-modify` on the
    /// source, `vm-create` for each pool the copies go to.
    async fn authorize_clone(
        &self,
        header: &Header<'_>,
        i: usize,
        d: &VmDecl,
        source: &str,
        linked: bool,
        uid: u32,
    ) -> Result<Making, Error> {
        let src = self.model.find(source).ok_or_else(|| {
            Error::NotFound(format!(
                "vms[{i}].clone.source: no virtual machine named '{source}'"
            ))
        })?;
        let mode = if linked {
            CloneMode::Linked
        } else {
            CloneMode::Full
        };
        crate::dbus::vm::authorize_clone(&self.vm_ctx, header, &src, &d.name, mode).await?;
        Ok(Making::Clone(CloneRequest {
            source_uuid: src.uuid.clone(),
            new_name: d.name.clone(),
            mode,
            uid,
        }))
    }

    /// Ask polkit for every action VM `i` may need; how to make it when it
    /// is missing (and can be made).
    async fn authorize_apply(
        &self,
        header: &Header<'_>,
        i: usize,
        d: &VmDecl,
        existing: Option<Arc<crate::libvirt::DomainRecord>>,
        uid: u32,
    ) -> Result<Option<Making>, Error> {
        let new_vm = NewVm(&d.name);
        let target: &dyn Target = match &existing {
            Some(rec) => &**rec,
            None => &new_vm,
        };
        let mut plan = None;
        match (&existing, &d.origin) {
            (None, Some(Origin::Clone { source, linked })) => {
                plan = Some(
                    self.authorize_clone(header, i, d, source, *linked, uid)
                        .await?,
                );
            }
            (None, Some(origin)) => {
                self.auth
                    .check(header, Action::VmCreate, target, "create")
                    .await?;
                let text = spec_text(origin).unwrap_or_default();
                let p = self
                    .engine
                    .plan(&text, uid)
                    .await
                    .map_err(|e| placed(i, e))?;
                self.authorize_create(header, &p).await?;
                plan = Some(Making::Create(Box::new(p)));
            }
            _ => {}
        }
        if d.vcpus.is_some() || d.memory.is_some() {
            let fields = match (d.vcpus, d.memory) {
                (Some(_), Some(_)) => "vcpus,memory",
                (Some(_), None) => "vcpus",
                _ => "memory",
            };
            self.auth
                .check_with(
                    header,
                    Action::VmModify,
                    target,
                    &format!("change {fields} of"),
                    &[("vm.update.fields", fields)],
                )
                .await?;
        }
        self.auth
            .check(header, Action::VmLifecycle, target, "start")
            .await?;
        self.auth
            .check_with(
                header,
                Action::GuestExec,
                target,
                "provision, running programs as root inside,",
                &[("guest.command", APPLY_COMMANDS)],
            )
            .await?;
        let mut paths: Vec<&str> = d.files.iter().map(|f| f.destination.as_str()).collect();
        if !d.nfs_shares.is_empty() {
            paths.push("/etc/fstab");
        }
        for p in paths {
            self.auth
                .check_with(
                    header,
                    Action::GuestFile,
                    target,
                    &format!("write the file {} inside", for_bus(p)),
                    &[("guest.path", p)],
                )
                .await?;
        }
        if let Some(s) = &d.final_snapshot {
            self.auth
                .check(
                    header,
                    Action::SnapshotManage,
                    target,
                    &format!("make the snapshot '{s}' of"),
                )
                .await?;
        }
        Ok(plan)
    }
}
