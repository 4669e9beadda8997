//! `org.vapor.Virtualization.StoragePool`: one object per libvirt storage
//! pool at `/org/vapor/Virtualization/pool/<uuid>`. Properties come from
//! the storage service's records; every change is polkit `storage-manage`
//! with the pool's details; long work runs as a Job. Also Manager's
//! `CreateStoragePool`/`PlanStoragePool` ([`create_pool`]), the context
//! pools and volumes share ([`StorageContext`]), the object paths of pools
//! and volumes, and the helpers both use to take a caller's file and
//! transfer options. The volume objects live in [`super::volume`].

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{interface, OwnedFd, OwnedObjectPath, OwnedVariant, Variant};

use super::object::{fixed, object_path, prop, refresh_shown, shown, text, Kind, Prop, Shown};
use super::options;
use super::polkit::{Action, Authorizer, Target};
use super::volume::export_volume;
use super::Error;
use crate::progress::Progress;
use crate::services::storage::{PoolView, StorageService, VolumeView};
use crate::storage::spec::{self, VolumeFormat};
use crate::text::for_bus;

pub use super::volume::{Volume, Volumes};

/// Object path of a pool.
pub fn pool_path(uuid: &str) -> String {
    super::uuid_path("pool", uuid)
}

/// Object path of a volume: below its pool, its name escaped (every byte
/// outside `[A-Za-z0-9]` as `_xx`).
pub fn volume_path(pool_uuid: &str, name: &str) -> String {
    format!("{}/{}", pool_path(pool_uuid), escape_path_element(name))
}

/// A string as one object path element (like sd-bus's label escaping).
pub fn escape_path_element(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

impl Target for PoolView {
    fn describe(&self) -> String {
        format!("the storage pool '{}'", self.rec.name)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("pool.name", self.rec.name.clone()),
            ("pool.uuid", self.rec.uuid.clone()),
            ("pool.type", self.rec.kind.clone()),
        ]
    }
}

/// What every pool and volume object shares.
pub struct StorageContext {
    pub storage: Arc<StorageService>,
    pub auth: Arc<Authorizer>,
}

/// The pool kind (its record: [`PoolView`]).
pub struct Pools(pub Arc<StorageContext>);

impl Kind for Pools {
    type Record = PoolView;
    type Methods = StoragePool;
    const PROPERTIES: &'static [Prop<PoolView>] = &[
        fixed("Name", |p| text(&p.rec.name)),
        fixed("Uuid", |p| Variant::from(p.rec.uuid.clone())),
        fixed("Type", |p| text(&p.rec.kind)),
        prop("State", |p| Variant::from(p.rec.state)),
        prop("Autostart", |p| Variant::from(p.rec.autostart)),
        prop("Persistent", |p| Variant::from(p.rec.persistent)),
        prop("TargetPath", |p| text(&p.rec.target_path)),
        prop("CapacityBytes", |p| Variant::from(p.rec.capacity)),
        prop("AllocationBytes", |p| Variant::from(p.rec.allocation)),
        prop("AvailableBytes", |p| Variant::from(p.rec.available)),
        prop("Volumes", |p| {
            Variant::from(
                p.volumes
                    .iter()
                    .map(|id| {
                        let name = id.split_once('/').map_or(id.as_str(), |(_, n)| n);
                        object_path(volume_path(&p.rec.uuid, name))
                    })
                    .collect::<Vec<_>>(),
            )
        }),
    ];

    fn path(p: &PoolView) -> String {
        pool_path(&p.rec.uuid)
    }

    fn methods(self: &Arc<Self>, shown: Shown<PoolView>) -> StoragePool {
        StoragePool {
            shown,
            ctx: self.0.clone(),
        }
    }

    fn current(&self, p: &PoolView) -> Option<Arc<PoolView>> {
        self.0.storage.pool(&p.rec.uuid)
    }
}

/// A caller's file descriptor as a file vapord reads or writes (never a
/// path vapord opens), with the access the call needs.
pub(super) fn caller_file(fd: OwnedFd, write: bool) -> Result<std::fs::File, Error> {
    let fd: std::os::fd::OwnedFd = fd.into();
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(Error::InvalidArgument(
            "fd: not an open file descriptor".into(),
        ));
    }
    // An O_PATH descriptor reads nothing itself, and must not get vapord
    // to open its file with vapord's rights.
    if flags & libc::O_PATH != 0 {
        return Err(Error::InvalidArgument(
            "fd: an O_PATH descriptor; pass one open for reading or writing".into(),
        ));
    }
    let mode = flags & libc::O_ACCMODE;
    let ok = if write {
        mode == libc::O_WRONLY || mode == libc::O_RDWR
    } else {
        mode == libc::O_RDONLY || mode == libc::O_RDWR
    };
    if !ok {
        let want = if write { "writing" } else { "reading" };
        return Err(Error::InvalidArgument(format!("fd: not open for {want}")));
    }
    let file = std::fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| Error::InvalidArgument(format!("fd: {e}")))?;
    if !transferable(meta.file_type()) {
        return Err(Error::InvalidArgument(
            "fd: must be a regular file or a pipe (FIFO); not a socket, device or directory".into(),
        ));
    }
    Ok(file)
}

/// The kinds of file a transfer moves data through: regular files and
/// pipes only. A device or socket could block a daemon thread in ways
/// poll(2) does not show (or act on hardware); a directory holds no data.
fn transferable(kind: std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    kind.is_file() || kind.is_fifo()
}

/// A `backing_volume` given as a volume's object path, as the volume's id
/// (what the storage service takes); a name stays as it is. `NotFound`
/// naming `backing_volume` when no volume has that path.
fn backing_volume_id(backing: &str, volumes: &[Arc<VolumeView>]) -> Result<String, Error> {
    if !backing.starts_with('/') {
        return Ok(backing.to_owned());
    }
    volumes
        .iter()
        .find(|v| volume_path(&v.rec.pool_uuid, &v.rec.name) == backing)
        .map(|v| v.id.clone())
        .ok_or_else(|| {
            Error::NotFound(format!("backing_volume: no volume at {}", for_bus(backing)))
        })
}

/// How many bytes an upload reads: what is left of a regular file, or the
/// `size` option (required for pipes; never more than a file holds).
pub(super) fn upload_length(file: &std::fs::File, size: Option<u64>) -> Result<u64, Error> {
    use std::io::Seek;
    let meta = file
        .metadata()
        .map_err(|e| Error::InvalidArgument(format!("fd: {e}")))?;
    if meta.is_file() {
        let mut f = file;
        let pos = f.stream_position().unwrap_or(0);
        let left = meta.len().saturating_sub(pos);
        match size {
            Some(s) if s > left => Err(Error::InvalidArgument(format!(
                "options.size: {s} is more than the file holds ({left} bytes)"
            ))),
            Some(s) => Ok(s),
            None if left == 0 => Err(Error::InvalidArgument("fd: the file is empty".into())),
            None => Ok(left),
        }
    } else {
        match size {
            Some(0) | None => Err(Error::InvalidArgument(
                "options.size: required (and above 0) when fd is not a regular file".into(),
            )),
            Some(s) => Ok(s),
        }
    }
}

pub(super) fn format_option(
    opts: &options::Options,
    default: VolumeFormat,
) -> Result<VolumeFormat, Error> {
    match options::string(opts, "format")? {
        None => Ok(default),
        Some(f) => VolumeFormat::from_name(&f).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "options.format: unknown format '{f}' (raw, qcow2, iso)"
            ))
        }),
    }
}

/// The methods of one pool object.
pub struct StoragePool {
    shown: Shown<PoolView>,
    ctx: Arc<StorageContext>,
}

impl StoragePool {
    async fn authorize(&self, header: &Header<'_>, verb: &str) -> Result<Arc<PoolView>, Error> {
        self.authorize_with(header, verb, &[]).await
    }

    async fn authorize_with(
        &self,
        header: &Header<'_>,
        verb: &str,
        extra: &[(&str, &str)],
    ) -> Result<Arc<PoolView>, Error> {
        let p = shown(&self.shown);
        self.ctx
            .auth
            .check_with(header, Action::StorageManage, &*p, verb, extra)
            .await?;
        Ok(p)
    }

    fn sync(&self, uuid: &str) {
        refresh_shown(&self.shown, self.ctx.storage.pool(uuid));
    }
}

#[interface(name = "org.vapor.Virtualization.StoragePool")]
impl StoragePool {
    /// Start the pool. Options: `build` (b).
    async fn start(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["build"])?;
        let build = options::flag(&options, "build")?;
        let p = self.authorize(&header, "start").await?;
        let r = self.ctx.storage.start_pool(&p.rec.uuid, build).await;
        self.sync(&p.rec.uuid);
        Ok(r?)
    }

    /// Stop the pool (refused while a running VM uses one of its volumes).
    async fn stop(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let p = self.authorize(&header, "stop").await?;
        let r = self.ctx.storage.stop_pool(&p.rec.uuid).await;
        self.sync(&p.rec.uuid);
        Ok(r?)
    }

    /// Re-read the pool's volumes from storage.
    async fn refresh(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let p = self.authorize(&header, "refresh").await?;
        let r = self.ctx.storage.refresh_pool(&p.rec.uuid).await;
        self.sync(&p.rec.uuid);
        Ok(r?)
    }

    async fn set_autostart(
        &self,
        #[zbus(header)] header: Header<'_>,
        autostart: bool,
    ) -> Result<(), Error> {
        let verb = if autostart {
            "enable autostart of"
        } else {
            "disable autostart of"
        };
        let p = self.authorize(&header, verb).await?;
        let r = self
            .ctx
            .storage
            .set_pool_autostart(&p.rec.uuid, autostart)
            .await;
        self.sync(&p.rec.uuid);
        Ok(r?)
    }

    /// Remove the pool. Options: `delete_volumes` (b), `delete_directory` (b).
    async fn delete(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["delete_volumes", "delete_directory"])?;
        let vols = options::flag(&options, "delete_volumes")?;
        let dir = options::flag(&options, "delete_directory")?;
        let flag = |b: bool| if b { "true" } else { "false" };
        let verb = if vols {
            "delete, with its volumes,"
        } else {
            "delete"
        };
        let p = self
            .authorize_with(
                &header,
                verb,
                &[
                    ("pool.delete.delete_volumes", flag(vols)),
                    ("pool.delete.delete_directory", flag(dir)),
                ],
            )
            .await?;
        Ok(self.ctx.storage.delete_pool(&p.rec.uuid, vols, dir).await?)
    }

    /// Create a volume from a JSON volume spec; a Job while it runs.
    #[zbus(out_args("volume"))]
    async fn create_volume(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        spec: &str,
    ) -> Result<OwnedObjectPath, Error> {
        let mut spec = spec::parse_volume_spec(spec)?;
        if let Some(b) = &spec.backing_volume {
            let id = backing_volume_id(b, &self.ctx.storage.volumes())?;
            spec.backing_volume = Some(id);
        }
        let p = self
            .authorize_with(
                &header,
                "create a volume in",
                &[("volume.name", &spec.name)],
            )
            .await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let objects = vec![volume_path(&p.rec.uuid, &spec.name)];
        let storage = self.ctx.storage.clone();
        let uuid = p.rec.uuid.clone();
        let id = super::job::run_job(
            server,
            &self.ctx.auth,
            super::job::JobSpec {
                operation: "volume-create",
                objects,
                uid,
                // One libvirt call: it cannot stop part way.
                cancelable: false,
            },
            |job| async move {
                storage
                    .create_volume(&uuid, &spec, uid, job as Arc<dyn Progress>)
                    .await
            },
        )
        .await?;
        self.sync(&p.rec.uuid);
        export_volume(&self.ctx, server, &id).await
    }

    /// Create volume `name` filled from the caller's `fd`, as a Job.
    /// Options: `format` (s), `size` (t).
    #[zbus(out_args("volume"))]
    async fn upload_volume(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        name: &str,
        fd: OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, Error> {
        options::known(&options, &["format", "size"])?;
        spec::check_object_name("name", name)?;
        let format = format_option(&options, VolumeFormat::Raw)?;
        let file = caller_file(fd, false)?;
        let length = upload_length(&file, options::uint(&options, "size")?)?;
        let p = self
            .authorize_with(&header, "upload a volume to", &[("volume.name", name)])
            .await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let objects = vec![volume_path(&p.rec.uuid, name)];
        let storage = self.ctx.storage.clone();
        let (uuid, name) = (p.rec.uuid.clone(), name.to_owned());
        let id = super::job::run(
            server,
            &self.ctx.auth,
            "volume-upload",
            objects,
            uid,
            |job| async move {
                storage
                    .upload_new(
                        &uuid,
                        &name,
                        format,
                        file,
                        length,
                        uid,
                        job as Arc<dyn Progress>,
                    )
                    .await
            },
        )
        .await?;
        self.sync(&p.rec.uuid);
        export_volume(&self.ctx, server, &id).await
    }
}

impl Target for spec::PoolSpec {
    fn describe(&self) -> String {
        format!("the storage pool '{}'", self.name)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("pool.name", self.name.clone()),
            ("pool.type", self.kind.as_str().to_owned()),
            ("pool.target", self.target.clone()),
        ]
    }
}

/// Manager.CreateStoragePool and PlanStoragePool: parse, authorize
/// (`storage-manage`, and `storage-host-path` for a pool on a host path
/// outside the pool roots or on host devices), then define or plan.
pub async fn create_pool(
    pools: &Arc<Pools>,
    server: &ObjectServer,
    header: &Header<'_>,
    spec_json: &str,
    dry_run: bool,
) -> Result<(String, Option<OwnedObjectPath>), Error> {
    let ctx = &pools.0;
    let spec = spec::parse_pool_spec(spec_json)?;
    let verb = if dry_run { "plan" } else { "create" };
    ctx.auth
        .check(header, Action::StorageManage, &spec, verb)
        .await?;
    // A target no pool may have (vapord's state, libvirt's own files) is
    // refused whoever asks; one outside the pool roots, host devices and
    // remote storage need storage-host-path.
    if let Some(why) = ctx.storage.pool_host_paths(&spec).await? {
        let mut details = spec.details();
        details.push(("storage.path", spec.target.clone()));
        let details: Vec<(&str, &str)> = details.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ctx.auth
            .check_with(
                header,
                Action::StorageHostPath,
                &super::polkit::Host,
                &format!("create the storage pool '{}' as {why}", spec.name),
                &details,
            )
            .await?;
    }
    let xml = ctx.storage.plan_pool(&spec);
    if dry_run {
        return Ok((for_bus(&xml).into_owned(), None));
    }
    let uuid = ctx.storage.create_pool(&spec).await?;
    // The caller can use the path at once.
    if let Some(p) = ctx.storage.pool(&uuid) {
        super::object::export(server, pools, p).await;
    }
    Ok((xml, Some(object_path(pool_path(&uuid)))))
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
