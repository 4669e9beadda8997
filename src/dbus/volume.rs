//! `org.vapor.Virtualization.Volume`: one object per volume of an active
//! storage pool, below its pool's object. Owns the volume kind
//! ([`Volumes`]: its property table and path), the methods of one volume
//! object ([`Volume`]: clone, resize, wipe, delete, upload, download, each
//! polkit `storage-manage` with the volume's details, long work as a Job),
//! and the export of a volume just made (`export_volume`). The object
//! paths and the caller file and option helpers it shares with the pools
//! live in [`super::storage`].

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{interface, OwnedFd, OwnedObjectPath, OwnedVariant, Variant};

use super::object::{
    fixed, object_path, prop, refresh_shown, shown, text, vm_paths, Kind, Prop, Shown,
};
use super::options;
use super::polkit::{Action, Target};
use super::storage::{
    caller_file, format_option, pool_path, upload_length, volume_path, StorageContext,
};
use super::{vm_path, Error};
use crate::progress::Progress;
use crate::services::storage::VolumeView;
use crate::storage::spec::{self, VolumeFormat};

impl Target for VolumeView {
    fn describe(&self) -> String {
        format!(
            "the volume '{}' of the storage pool '{}'",
            self.rec.name, self.pool_name
        )
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("volume.name", self.rec.name.clone()),
            ("volume.path", self.rec.path.clone()),
            ("pool.name", self.pool_name.clone()),
            ("pool.uuid", self.rec.pool_uuid.clone()),
        ]
    }
}

/// The volume kind (its record: [`VolumeView`]).
pub struct Volumes(pub Arc<StorageContext>);

impl Kind for Volumes {
    type Record = VolumeView;
    type Methods = Volume;
    const PROPERTIES: &'static [Prop<VolumeView>] = &[
        fixed("Name", |v| text(&v.rec.name)),
        fixed("Pool", |v| {
            Variant::from(object_path(pool_path(&v.rec.pool_uuid)))
        }),
        fixed("Path", |v| text(&v.rec.path)),
        fixed("Key", |v| text(&v.rec.key)),
        prop("Format", |v| text(&v.rec.format)),
        prop("CapacityBytes", |v| Variant::from(v.rec.capacity)),
        prop("AllocationBytes", |v| Variant::from(v.rec.allocation)),
        prop("BackingStore", |v| text(&v.rec.backing_store)),
        prop("Label", |v| text(&v.label)),
        prop("UsedBy", |v| vm_paths(&v.used_by)),
        prop("OwnedBy", |v| {
            Variant::from(object_path(
                v.owned_by
                    .as_deref()
                    .map(vm_path)
                    .unwrap_or_else(|| "/".into()),
            ))
        }),
    ];

    fn path(v: &VolumeView) -> String {
        volume_path(&v.rec.pool_uuid, &v.rec.name)
    }

    fn methods(self: &Arc<Self>, shown: Shown<VolumeView>) -> Volume {
        Volume {
            shown,
            ctx: self.0.clone(),
        }
    }

    fn current(&self, v: &VolumeView) -> Option<Arc<VolumeView>> {
        self.0.storage.volume(&v.id)
    }
}

/// The object of a volume just made, exported now (before the publisher
/// gets to it) so the path returned works at once.
pub(super) async fn export_volume(
    ctx: &Arc<StorageContext>,
    server: &ObjectServer,
    id: &str,
) -> Result<OwnedObjectPath, Error> {
    let v = ctx
        .storage
        .volume(id)
        .ok_or_else(|| Error::Failed(format!("volume {id} vanished right after it was made")))?;
    let path = object_path(volume_path(&v.rec.pool_uuid, &v.rec.name));
    super::object::export(server, &Arc::new(Volumes(ctx.clone())), v).await;
    Ok(path)
}

/// The methods of one volume object.
pub struct Volume {
    shown: Shown<VolumeView>,
    ctx: Arc<StorageContext>,
}

impl Volume {
    async fn authorize(&self, header: &Header<'_>, verb: &str) -> Result<Arc<VolumeView>, Error> {
        let v = shown(&self.shown);
        self.ctx
            .auth
            .check(header, Action::StorageManage, &*v, verb)
            .await?;
        Ok(v)
    }

    fn sync(&self, id: &str) {
        refresh_shown(&self.shown, self.ctx.storage.volume(id));
    }
}

#[interface(name = "org.vapor.Virtualization.Volume")]
impl Volume {
    /// Copy into a new volume `name` in the same pool, as a Job. Options: `format` (s).
    #[zbus(out_args("volume"))]
    async fn clone(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        name: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, Error> {
        options::known(&options, &["format"])?;
        spec::check_object_name("name", name)?;
        let format = match options::string(&options, "format")? {
            None => None,
            Some(_) => Some(format_option(&options, VolumeFormat::Raw)?),
        };
        let v = self.authorize(&header, "copy").await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let objects = vec![
            volume_path(&v.rec.pool_uuid, &v.rec.name),
            volume_path(&v.rec.pool_uuid, name),
        ];
        let storage = self.ctx.storage.clone();
        let (id, name) = (v.id.clone(), name.to_owned());
        let new = super::job::run_job(
            server,
            &self.ctx.auth,
            super::job::JobSpec {
                operation: "volume-clone",
                objects,
                uid,
                // One libvirt call: it cannot stop part way.
                cancelable: false,
            },
            |job| async move {
                storage
                    .clone_volume(&id, &name, format, uid, job as Arc<dyn Progress>)
                    .await
            },
        )
        .await?;
        export_volume(&self.ctx, server, &new).await
    }

    /// Change the capacity. Options: `shrink` (b).
    async fn resize(
        &self,
        #[zbus(header)] header: Header<'_>,
        capacity: u64,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["shrink"])?;
        let shrink = options::flag(&options, "shrink")?;
        let v = self.authorize(&header, "resize").await?;
        let r = self.ctx.storage.resize(&v.id, capacity, shrink).await;
        self.sync(&v.id);
        Ok(r?)
    }

    /// Overwrite with zeros, as a Job (refused while any VM uses it).
    async fn wipe(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<(), Error> {
        let v = self.authorize(&header, "wipe").await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let objects = vec![volume_path(&v.rec.pool_uuid, &v.rec.name)];
        let storage = self.ctx.storage.clone();
        let id = v.id.clone();
        super::job::run_job(
            server,
            &self.ctx.auth,
            super::job::JobSpec {
                operation: "volume-wipe",
                objects,
                uid,
                // One libvirt call: it cannot stop part way.
                cancelable: false,
            },
            |job| async move { storage.wipe(&id, job as Arc<dyn Progress>).await },
        )
        .await?;
        self.sync(&v.id);
        Ok(())
    }

    /// Delete the volume (refused while any VM uses it, naming them).
    async fn delete(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let v = self.authorize(&header, "delete").await?;
        Ok(self.ctx.storage.delete_volume(&v.id).await?)
    }

    /// Replace the contents with what `fd` holds, as a Job. Options: `size` (t).
    async fn upload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        fd: OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["size"])?;
        let file = caller_file(fd, false)?;
        let length = upload_length(&file, options::uint(&options, "size")?)?;
        let v = self.authorize(&header, "overwrite").await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let objects = vec![volume_path(&v.rec.pool_uuid, &v.rec.name)];
        let storage = self.ctx.storage.clone();
        let id = v.id.clone();
        super::job::run(
            server,
            &self.ctx.auth,
            "volume-upload",
            objects,
            uid,
            |job| async move {
                storage
                    .upload(&id, file, length, uid, job as Arc<dyn Progress>)
                    .await
            },
        )
        .await?;
        self.sync(&v.id);
        Ok(())
    }

    /// Write the contents to `fd`, as a Job.
    async fn download(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        fd: OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &[])?;
        let file = caller_file(fd, true)?;
        let v = self.authorize(&header, "download").await?;
        let uid = self.ctx.auth.caller_uid(&header).await?;
        let objects = vec![volume_path(&v.rec.pool_uuid, &v.rec.name)];
        let storage = self.ctx.storage.clone();
        let id = v.id.clone();
        super::job::run(
            server,
            &self.ctx.auth,
            "volume-download",
            objects,
            uid,
            |job| async move {
                storage
                    .download(&id, file, uid, job as Arc<dyn Progress>)
                    .await
            },
        )
        .await?;
        Ok(())
    }
}
