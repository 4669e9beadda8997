//! The volume operations of [`StorageService`]: create, clone, upload,
//! download, resize, wipe and delete. Work that makes a volume runs under an
//! intent record, so a crash part way is undone at the next start. (A child
//! module of `storage.rs`: it shares the service's private state.)

use std::path::Path;
use std::sync::Arc;

use super::{volume_key, PoolView, StorageService};
use crate::intent::{now_ns, Step};
use crate::libvirt::storage::VolumeRecord;
use crate::progress::Progress;
use crate::services::rollback::{undo, Undoer};
use crate::services::storage_rules::{expected_volume_path, growth_fits};
use crate::services::storage_transfers::bridge;
use crate::storage::spec::{self, VolumeFormat, VolumeSpec};
use crate::{Error, Result};

impl StorageService {
    /// Resolve a spec's backing volume (a name in the same pool, or a
    /// volume id) to (path, format); it must pass [`Self::ensure_in_pool`].
    async fn backing_of(&self, pool_uuid: &str, backing: &str) -> Result<(String, String)> {
        let v = self
            .volume_named(pool_uuid, backing)
            .or_else(|| self.volume(backing))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "backing_volume: no volume '{backing}' in this pool"
                ))
            })?;
        self.ensure_in_pool(&v)
            .await
            .map_err(|e| e.context("backing_volume"))?;
        let format = match v.rec.format.as_str() {
            "" => "raw".to_owned(),
            f => f.to_owned(),
        };
        Ok((v.rec.path.clone(), format))
    }

    /// Run `make` (which creates the volume `name` in the pool) under an
    /// intent record, so a crash part way removes what it made; `fill` then
    /// runs on the made volume. On failure everything made is removed.
    async fn make_volume<M, F, Fut>(
        &self,
        operation: &str,
        pool: &PoolView,
        name: &str,
        uid: u32,
        make: M,
        fill: F,
    ) -> Result<String>
    where
        M: std::future::Future<Output = Result<VolumeRecord>>,
        F: FnOnce(VolumeRecord) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        if self.volume_named(&pool.rec.uuid, name).is_some() {
            return Err(Error::Conflict(format!(
                "name: pool '{}' already has a volume named '{name}'",
                pool.rec.name
            )));
        }
        let expected = expected_volume_path(&pool.rec.target_path, name);
        let mut intent = self.intents.begin(operation, name, uid)?;
        if let Some(path) = &expected {
            intent.record(Step::Volume {
                path: path.clone(),
                not_before_ns: now_ns(),
                made: false,
            })?;
        }
        let outcome = async {
            let rec = make.await?;
            if expected.as_deref() == Some(rec.path.as_str()) {
                intent.volume_made(&rec.path)?;
            } else if Path::new(&rec.path).is_absolute() {
                intent.record(Step::Volume {
                    path: rec.path.clone(),
                    not_before_ns: 0,
                    made: true,
                })?;
            }
            let id = volume_key(&rec.pool_uuid, &rec.name);
            fill(rec).await.map(|()| id)
        }
        .await;
        match outcome {
            Ok(id) => {
                intent.complete()?;
                self.settle(&pool.rec.uuid).await;
                Ok(id)
            }
            Err(e) => {
                let steps = intent.steps().to_vec();
                let left = self
                    .hv
                    .session(move |s| Ok(undo(s, &steps, Undoer::InProcess)))
                    .await
                    .unwrap_or_else(|e| vec![e.to_string()]);
                let _ = intent.finish();
                self.settle(&pool.rec.uuid).await;
                if left.is_empty() {
                    Err(e)
                } else {
                    Err(Error::Failed(format!(
                        "{e}; and left behind: {}",
                        left.join("; ")
                    )))
                }
            }
        }
    }

    /// Create a volume from a spec. Preallocated volumes must fit the pool.
    pub async fn create_volume(
        &self,
        pool_uuid: &str,
        spec: &VolumeSpec,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        let pool = self.need_pool(pool_uuid)?;
        if spec.preallocate && spec.capacity > pool.rec.available {
            return Err(Error::LimitExceeded(format!(
                "capacity: {} bytes do not fit in pool '{}' ({} bytes free)",
                spec.capacity, pool.rec.name, pool.rec.available
            )));
        }
        let backing = match &spec.backing_volume {
            Some(b) => Some(self.backing_of(pool_uuid, b).await?),
            None => None,
        };
        let xml = spec::volume_xml(
            spec,
            backing.as_ref().map(|(p, f)| (p.as_str(), f.as_str())),
        );
        progress.update("creating the volume", 0, spec.capacity);
        let make = self.hv.create_volume(pool_uuid, xml);
        self.make_volume("volume-create", &pool, &spec.name, uid, make, |_| async {
            Ok(())
        })
        .await
    }

    /// Copy a volume into a new one in the same pool.
    pub async fn clone_volume(
        &self,
        id: &str,
        name: &str,
        format: Option<VolumeFormat>,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        spec::check_object_name("name", name)?;
        let src = self.need_volume(id)?;
        self.ensure_in_pool(&src).await?;
        let pool = self.need_pool(&src.rec.pool_uuid)?;
        let format = match format {
            Some(f) => f,
            None => match src.rec.format.as_str() {
                "qcow2" => VolumeFormat::Qcow2,
                "iso" => VolumeFormat::Iso,
                _ => VolumeFormat::Raw,
            },
        };
        let spec = VolumeSpec {
            name: name.to_owned(),
            capacity: src.rec.capacity,
            format,
            backing_volume: None,
            preallocate: false,
        };
        progress.update("copying the volume", 0, src.rec.capacity);
        let make =
            self.hv
                .clone_volume(&pool.rec.uuid, spec::volume_xml(&spec, None), &src.rec.key);
        self.make_volume("volume-clone", &pool, name, uid, make, |_| async { Ok(()) })
            .await
    }

    /// Create volume `name` and fill it from `src` (`length` bytes).
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_new(
        &self,
        pool_uuid: &str,
        name: &str,
        format: VolumeFormat,
        src: std::fs::File,
        length: u64,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<String> {
        spec::check_object_name("name", name)?;
        let pool = self.need_pool(pool_uuid)?;
        let _slot = self.transfers.take(uid)?;
        if length > pool.rec.available {
            return Err(Error::LimitExceeded(format!(
                "the upload ({length} bytes) does not fit in pool '{}' ({} bytes free)",
                pool.rec.name, pool.rec.available
            )));
        }
        let spec = VolumeSpec {
            name: name.to_owned(),
            capacity: length.max(1),
            format,
            backing_volume: None,
            preallocate: false,
        };
        let make = self
            .hv
            .create_volume(pool_uuid, spec::volume_xml(&spec, None));
        self.make_volume("volume-upload", &pool, name, uid, make, |rec| {
            self.stream_in(rec.key, src, length, progress)
        })
        .await
    }

    async fn stream_in(
        &self,
        key: String,
        src: std::fs::File,
        length: u64,
        progress: Arc<dyn Progress>,
    ) -> Result<()> {
        let (report, cancel) = bridge(progress, "uploading", length);
        self.hv
            .upload_volume(&key, src, length, report, cancel)
            .await
            .map(|_| ())
    }

    /// Replace a volume's contents (no VM may use it); a longer upload
    /// grows the volume, if its pool has the room.
    pub async fn upload(
        &self,
        id: &str,
        src: std::fs::File,
        length: u64,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        let _slot = self.transfers.take(uid)?;
        self.ensure_free(&v, "overwrite").await?;
        if length > v.rec.capacity {
            let pool = self.need_pool(&v.rec.pool_uuid)?;
            growth_fits("the upload", length - v.rec.capacity, &pool.rec)?;
            self.hv.resize_volume(&v.rec.key, length, false).await?;
        }
        let r = self
            .stream_in(v.rec.key.clone(), src, length, progress)
            .await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }

    /// Write a volume's contents to `dst`.
    pub async fn download(
        &self,
        id: &str,
        dst: std::fs::File,
        uid: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<u64> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        let _slot = self.transfers.take(uid)?;
        let (report, cancel) = bridge(progress, "downloading", v.rec.capacity);
        self.hv
            .download_volume(&v.rec.key, dst, report, cancel)
            .await
    }

    /// Grow (or, with `shrink`, shrink) a volume. Shrinking is refused while
    /// any VM uses it.
    pub async fn resize(&self, id: &str, capacity: u64, shrink: bool) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        if capacity == 0 {
            return Err(Error::InvalidArgument("capacity: must be above 0".into()));
        }
        if capacity < v.rec.capacity {
            if !shrink {
                return Err(Error::InvalidArgument(format!(
                    "capacity: {capacity} is below the current {} bytes; shrinking loses data and needs the shrink option",
                    v.rec.capacity
                )));
            }
            self.ensure_free(&v, "shrink").await?;
        }
        let r = self.hv.resize_volume(&v.rec.key, capacity, shrink).await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }

    pub async fn wipe(&self, id: &str, progress: Arc<dyn Progress>) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        self.ensure_free(&v, "wipe").await?;
        progress.update("wiping", 0, v.rec.capacity);
        let r = self.hv.wipe_volume(&v.rec.key).await;
        progress.update("wiped", v.rec.capacity, v.rec.capacity);
        self.settle(&v.rec.pool_uuid).await;
        r
    }

    /// Delete a volume: refused while any VM (or another volume) uses it,
    /// naming them.
    pub async fn delete_volume(&self, id: &str) -> Result<()> {
        let v = self.need_volume(id)?;
        self.ensure_in_pool(&v).await?;
        self.ensure_free(&v, "delete").await?;
        let r = self.hv.delete_volume(&v.rec.key).await;
        self.settle(&v.rec.pool_uuid).await;
        r
    }
}
