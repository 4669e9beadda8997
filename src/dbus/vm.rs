//! `org.vapor.Virtualization.VirtualMachine`: one object per libvirt domain.
//!
//! Properties come from the object's own copy of the cached record (one
//! table, [`VmContext`]'s [`Kind`] implementation), which the publisher
//! replaces when the model changes, so reading them never touches libvirt
//! and never fails (even for an object about to be removed).

use std::collections::HashMap;
use std::sync::Arc;

use zbus::interface;
use zbus::message::Header;
use zbus::{OwnedVariant, Variant};

use super::object::{fixed, prop, refresh_shown, shown, Kind, Prop, Shown};
use super::options;
use super::polkit::{Action, Authorizer, Target};
use super::{vm_path, Error};
use crate::libvirt::DomainRecord;
use crate::services::{DeleteOptions, LifecycleAction, VmService};
use crate::text::for_bus;

/// What every VM object shares.
pub struct VmContext {
    pub vms: VmService,
    pub auth: Arc<Authorizer>,
    pub pci: Arc<crate::services::pci::PciService>,
    /// Serial consoles, displays and console sockets.
    pub consoles: Arc<crate::services::console::ConsoleService>,
    /// Disks, media and interfaces, live and in the definition.
    pub devices: Arc<crate::services::vm_devices::DeviceService>,
    pub clones: Arc<crate::services::vm_clone::CloneService>,
    /// Snapshots, and the kind their objects are published as.
    pub snapshots: Arc<super::snapshot::SnapshotContext>,
    /// Backups into vapord's repository.
    pub backups: Arc<super::backup::BackupContext>,
    /// Live migration to other hosts.
    pub migrations: Arc<crate::services::migration::MigrationService>,
    /// The guest agent: waiting for it, what it reports, running programs.
    pub guest: Arc<crate::services::guest::GuestService>,
}

/// The methods of one VM object; its properties come from [`VmContext`]'s table.
pub struct VirtualMachine {
    shown: Shown<DomainRecord>,
    ctx: Arc<VmContext>,
}

impl Target for DomainRecord {
    fn describe(&self) -> String {
        format!("the virtual machine '{}'", self.name)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("vm.name", self.name.clone()),
            ("vm.uuid", self.uuid.clone()),
        ]
    }
}

/// A migration's status as a{sv} (empty when none runs).
fn migration_dict(m: Option<&crate::libvirt::records::MigrationStatus>) -> Variant<'static> {
    let mut d: HashMap<String, Variant<'static>> = HashMap::new();
    if let Some(m) = m {
        d.insert(
            "destination".into(),
            Variant::from(for_bus(&m.destination).into_owned()),
        );
        d.insert(
            "job".into(),
            Variant::from(super::object::object_path(m.job.clone())),
        );
        d.insert("phase".into(), Variant::from(m.phase.clone()));
        for (k, v) in [
            ("data_processed", m.data_processed),
            ("data_remaining", m.data_remaining),
            ("data_total", m.data_total),
            ("memory_bps", m.memory_bps),
            ("iteration", m.iteration),
            ("expected_downtime_ms", m.expected_downtime_ms),
        ] {
            d.insert(k.into(), Variant::from(v));
        }
    }
    Variant::from(d)
}

impl Kind for VmContext {
    type Record = DomainRecord;
    type Methods = VirtualMachine;
    const PROPERTIES: &'static [Prop<DomainRecord>] = &[
        // Made bus-safe: libvirt accepts names (from virsh, say) that some
        // bus clients cannot read, such as Unicode non-characters.
        prop("Name", |r| Variant::from(for_bus(&r.name).into_owned())),
        fixed("Uuid", |r| Variant::from(r.uuid.clone())),
        // running, paused, shutoff, shutting-down, crashed, pmsuspended, blocked, nostate.
        prop("State", |r| Variant::from(r.state.as_str())),
        // libvirt's reason: booted, destroyed, user …
        prop("StateReason", |r| Variant::from(r.state_reason)),
        // Defined (maximum) memory, and the current balloon size.
        prop("MemoryMiB", |r| Variant::from(r.memory_kib / 1024)),
        prop("CurrentMemoryMiB", |r| {
            Variant::from(r.current_memory_kib / 1024)
        }),
        prop("Vcpus", |r| Variant::from(r.vcpus)),
        prop("MaxVcpus", |r| Variant::from(r.max_vcpus)),
        prop("Autostart", |r| Variant::from(r.autostart)),
        // False for transient VMs (they vanish when stopped).
        prop("Persistent", |r| Variant::from(r.persistent)),
        // Configuration changes made while running that wait for the next
        // start (Update's fields: cpu, max_vcpus, …); empty when stopped.
        prop("PendingChanges", |r| {
            Variant::from(r.pending_changes.clone())
        }),
        // The migration running now (empty when none): destination, job,
        // phase and libvirt's figures.
        prop("Migration", |r| migration_dict(r.migration.as_ref())),
        // Whether the guest agent is connected (libvirt's agent events).
        prop("AgentConnected", |r| Variant::from(r.agent_connected)),
        // What the agent reports (empty until it answers): hostname,
        // os_id, os_name, os_pretty_name, os_version, kernel_release,
        // machine, timezone, users, interfaces, filesystems.
        prop("GuestInfo", |r| {
            guest::guest_info_dict(r.guest_info.as_deref())
        }),
        // Live counters, refreshed by the periodic bulk statistics call.
        prop("CpuTimeNs", |r| Variant::from(r.cpu_time_ns)),
        prop("MemoryUsedKiB", |r| Variant::from(r.memory_rss_kib)),
        // Rates over the last statistics interval (0 while shut off).
        prop("CpuPercent", |r| Variant::from(r.rates.cpu_percent())),
        prop("DiskReadBytesPerSec", |r| {
            Variant::from(r.rates.disk_read_bytes_per_sec)
        }),
        prop("DiskWriteBytesPerSec", |r| {
            Variant::from(r.rates.disk_write_bytes_per_sec)
        }),
        prop("NetRxBytesPerSec", |r| {
            Variant::from(r.rates.net_rx_bytes_per_sec)
        }),
        prop("NetTxBytesPerSec", |r| {
            Variant::from(r.rates.net_tx_bytes_per_sec)
        }),
    ];

    fn path(rec: &DomainRecord) -> String {
        vm_path(&rec.uuid)
    }

    fn methods(self: &Arc<Self>, shown: Shown<DomainRecord>) -> VirtualMachine {
        VirtualMachine {
            shown,
            ctx: self.clone(),
        }
    }

    fn current(&self, rec: &DomainRecord) -> Option<Arc<DomainRecord>> {
        self.vms.model().get(&rec.uuid)
    }
}

impl VirtualMachine {
    /// The record this object shows.
    pub fn record(&self) -> Arc<DomainRecord> {
        shown(&self.shown)
    }

    /// Authorize the caller for `action` on this VM.
    async fn authorize(
        &self,
        header: &Header<'_>,
        action: Action,
        verb: &str,
    ) -> Result<Arc<DomainRecord>, Error> {
        self.authorize_with(header, action, verb, &[]).await
    }

    /// Authorize with extra polkit details beyond the VM's own.
    async fn authorize_with(
        &self,
        header: &Header<'_>,
        action: Action,
        verb: &str,
        extra: &[(&str, &str)],
    ) -> Result<Arc<DomainRecord>, Error> {
        let rec = self.record();
        self.ctx
            .auth
            .check_with(header, action, &*rec, verb, extra)
            .await?;
        Ok(rec)
    }

    /// Authorize `pci-assign` for a host device, with its address and ids.
    async fn authorize_pci(
        &self,
        header: &Header<'_>,
        host: &crate::pci::PciAddress,
        what: &str,
    ) -> Result<Arc<DomainRecord>, Error> {
        let addr = host.to_string();
        let (vendor, device) = self.ctx.pci.ids_of(host);
        self.authorize_with(
            header,
            Action::PciAssign,
            what,
            &[
                ("pci.address", &addr),
                ("pci.vendor", &vendor),
                ("pci.device", &device),
            ],
        )
        .await
    }

    async fn lifecycle(&self, header: &Header<'_>, action: LifecycleAction) -> Result<(), Error> {
        let rec = self
            .authorize(header, Action::VmLifecycle, action.verb())
            .await?;
        let result = self.ctx.vms.lifecycle(&rec.uuid, action).await;
        self.sync_from_model(&rec.uuid);
        Ok(result?)
    }

    /// Pick up the model's newest reading so a property read right after a
    /// method returns already sees its effect.
    fn sync_from_model(&self, uuid: &str) {
        refresh_shown(&self.shown, self.ctx.vms.model().get(uuid));
    }
}

/// `live` (default: the VM runs) and `config` (default: it is persistent).
fn pci_scope(
    opts: &options::Options,
    rec: &DomainRecord,
) -> Result<crate::services::pci::AttachScope, Error> {
    Ok(crate::services::pci::AttachScope {
        live: options::flag_or(opts, "live", rec.state.is_active())?,
        config: options::flag_or(opts, "config", rec.persistent)?,
    })
}

// Update, SetVcpus, SetMemory, disks, media, interfaces.
#[path = "vm_change.rs"]
mod change;
pub(crate) use change::authorize_clone;

// OpenConsole, OpenGraphics, GetConsoleSocket.
#[path = "vm_console.rs"]
mod console;

// GetSnapshotCapabilities, CreateSnapshot.
#[path = "vm_snapshot.rs"]
mod snapshot;

// Backup.
#[path = "vm_backup.rs"]
mod backup;

// Migrate, MigrateStartPostcopy.
#[path = "vm_migrate.rs"]
mod migrate;

// WaitForAgent, RefreshGuestInfo, Exec, GetCloudInitStatus.
#[path = "vm_guest.rs"]
mod guest;

#[interface(
    name = "org.vapor.Virtualization.VirtualMachine",
    proxy(visibility = "pub")
)]
impl VirtualMachine {
    /// Boot the VM.
    async fn start(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::Start).await
    }

    /// Ask the guest OS to power off (ACPI power button or guest agent).
    async fn shutdown(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::Shutdown).await
    }

    /// Ask the guest OS to reboot.
    async fn reboot(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::Reboot).await
    }

    /// Stop the VM at once, like pulling the power cord.
    async fn force_stop(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::ForceStop).await
    }

    /// Freeze the VM's CPUs.
    async fn pause(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::Pause).await
    }

    /// Continue a paused VM.
    async fn resume(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::Resume).await
    }

    /// Press the VM's reset button.
    async fn reset(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.lifecycle(&header, LifecycleAction::Reset).await
    }

    /// Start (or not) the VM when the host boots.
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
        let rec = self.authorize(&header, Action::VmModify, verb).await?;
        let result = self.ctx.vms.set_autostart(&rec.uuid, autostart).await;
        self.sync_from_model(&rec.uuid);
        Ok(result?)
    }

    /// Delete the VM. Options: `remove_storage` (b): also delete the volumes
    /// vapord created for this VM, unless another VM uses them;
    /// `remove_foreign_storage` (b): also delete the other writable pool
    /// volumes it uses that no one else does (implies `remove_storage`; needs
    /// the polkit action vm-delete-foreign-storage too); `force` (b):
    /// force-stop it first if running. Returns the deleted paths and the kept
    /// ones with the reason.
    #[zbus(out_args("removed", "kept"))]
    async fn delete(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(Vec<String>, Vec<(String, String)>), Error> {
        options::known(
            &options,
            &["remove_storage", "remove_foreign_storage", "force"],
        )?;
        let remove_foreign_storage = options::flag(&options, "remove_foreign_storage")?;
        let opts = DeleteOptions {
            remove_storage: options::flag(&options, "remove_storage")? || remove_foreign_storage,
            remove_foreign_storage,
            force: options::flag(&options, "force")?,
        };
        let flag = |b: bool| if b { "true" } else { "false" };
        let what = match (opts.remove_storage, opts.force) {
            (true, true) => "force-stop and delete, with its storage,",
            (true, false) => "delete, with its storage,",
            (false, true) => "force-stop and delete",
            (false, false) => "delete",
        };
        let details = [
            ("vm.delete.remove_storage", flag(opts.remove_storage)),
            (
                "vm.delete.remove_foreign_storage",
                flag(opts.remove_foreign_storage),
            ),
            ("vm.delete.force", flag(opts.force)),
        ];
        let rec = self
            .authorize_with(&header, Action::VmDelete, what, &details)
            .await?;
        if opts.remove_foreign_storage {
            self.authorize_with(
                &header,
                Action::VmDeleteForeignStorage,
                "delete, with the storage it uses that vapord did not create for it,",
                &details,
            )
            .await?;
        }
        let report = self.ctx.vms.delete(&rec.uuid, opts).await?;
        Ok((report.removed, report.kept))
    }

    /// Give a host PCI device to the VM (VFIO, managed: libvirt moves it to
    /// vfio-pci while the VM runs). Options: `guest_address` (s), `rom_file`
    /// (s), `rom_bar` (b), `multifunction` (b), `live` (b, default: when
    /// running), `config` (b, default: when persistent), `force` (b: accept
    /// a device the host seems to need). Every viability problem is refused.
    async fn attach_pci_device(
        &self,
        #[zbus(header)] header: Header<'_>,
        host_address: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(
            &options,
            &[
                "guest_address",
                "rom_file",
                "rom_bar",
                "multifunction",
                "live",
                "config",
                "force",
            ],
        )?;
        let host = options::pci_address("host_address", host_address)?;
        let rec = self.record();
        let guest = options::string(&options, "guest_address")?
            .map(|g| options::pci_address("options.guest_address", &g))
            .transpose()?;
        let req = crate::pci::hostdev::HostdevRequest {
            host,
            guest,
            // The file QEMU will really read: what is authorized and used.
            // (Resolving may touch a slow mount: off the async workers.)
            rom_file: options::string(&options, "rom_file")?.map(|f| {
                tokio::task::block_in_place(|| crate::services::storage_ownership::canonical(&f))
            }),
            rom_bar: options::maybe_flag(&options, "rom_bar")?,
            multifunction: options::flag(&options, "multifunction")?,
            primary_gpu: false,
        };
        let scope = pci_scope(&options, &rec)?;
        let force = options::flag(&options, "force")?;
        let addr = host.to_string();
        let rec = self
            .authorize_pci(
                &header,
                &host,
                &format!("give the host PCI device {addr} to"),
            )
            .await?;
        if let Some(rom) = &req.rom_file {
            self.authorize_with(
                &header,
                Action::StorageHostPath,
                &format!("let the ROM file {rom} be read by"),
                &[("storage.path", rom)],
            )
            .await?;
        }
        // Forcing only matters for a device the host needs: then it takes
        // its own, stricter authorization.
        let needed = self.ctx.pci.host_critical_now(&host);
        if force && !needed.is_empty() {
            let reasons = needed.join("; ");
            self.authorize_with(
                &header,
                Action::PciAssignHostCritical,
                &format!("take {addr}, which the host needs ({reasons}), and give it to"),
                &[("pci.address", &addr), ("pci.host_critical", &reasons)],
            )
            .await?;
        }
        self.ctx
            .pci
            .attach(&rec.uuid, &rec.name, req, scope, force)
            .await?;
        Ok(())
    }

    /// Take a host PCI device away from the VM. Options: `live`, `config` (b).
    async fn detach_pci_device(
        &self,
        #[zbus(header)] header: Header<'_>,
        host_address: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        options::known(&options, &["live", "config"])?;
        let host = options::pci_address("host_address", host_address)?;
        let rec = self.record();
        let scope = pci_scope(&options, &rec)?;
        let addr = host.to_string();
        let rec = self
            .authorize_pci(
                &header,
                &host,
                &format!("take the host PCI device {addr} from"),
            )
            .await?;
        self.ctx
            .pci
            .detach(&rec.uuid, &rec.name, host, scope)
            .await?;
        Ok(())
    }

    /// Change the VM's configuration: `changes_json` holds only the fields
    /// to change (dbus/schemas/vm-update.schema.json: name, title,
    /// description, vcpus, max_vcpus, memory, max_memory, cpu, boot_order,
    /// firmware, graphics, video, autostart, metadata). Applied to the
    /// definition, and at once to the running VM where the hypervisor allows
    /// it. Returns the changed fields and those waiting for the next start
    /// (also in PendingChanges). No options yet.
    #[zbus(out_args("changed", "pending"))]
    async fn update(
        &self,
        #[zbus(header)] header: Header<'_>,
        changes_json: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        self.update_vm(&header, changes_json, &options).await
    }

    /// Set the number of vCPUs in use. Options: `live` (b, default: when
    /// running), `config` (b, default: when persistent). Live, within the
    /// running maximum.
    async fn set_vcpus(
        &self,
        #[zbus(header)] header: Header<'_>,
        count: u32,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        self.set_vcpus_of(&header, count, &options).await
    }

    /// Set the memory in use in MiB (the balloon, within the maximum).
    /// Options: `live`, `config` (b).
    async fn set_memory(
        &self,
        #[zbus(header)] header: Header<'_>,
        memory_mib: u64,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        self.set_memory_of(&header, memory_mib, &options).await
    }

    /// Attach a disk. `disk_json`: one of `{"pool","volume"}`, `{"path"}`
    /// or `{"pool","create":{"size","name"?,"format"?}}` (a new volume
    /// owned by this VM), and `device` (disk|cdrom), `bus`
    /// (virtio|scsi|sata|usb), `target`, `readonly`, `shareable`. Options:
    /// `live`, `config` (b). Returns the target (vdb, sdc …).
    #[zbus(out_args("target"))]
    async fn attach_disk(
        &self,
        #[zbus(header)] header: Header<'_>,
        disk_json: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<String, Error> {
        self.attach_disk_to(&header, disk_json, &options).await
    }

    /// Detach the disk at `target`. Options: `live`, `config` (b),
    /// `remove_storage` (b: delete the volume vapord created for this VM,
    /// unless something else uses it). Returns deleted paths and kept ones
    /// with the reason.
    #[zbus(out_args("removed", "kept"))]
    async fn detach_disk(
        &self,
        #[zbus(header)] header: Header<'_>,
        target: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(Vec<String>, Vec<(String, String)>), Error> {
        self.detach_disk_from(&header, target, &options).await
    }

    /// Grow the disk at `target` to `size` (bytes, or 20G, 512M …): online
    /// while running, else its volume. No options yet.
    async fn resize_disk(
        &self,
        #[zbus(header)] header: Header<'_>,
        target: &str,
        size: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        self.resize_disk_of(&header, target, size, &options).await
    }

    /// Insert or change (`media_json`: `{"path"}` or `{"pool","volume"}`)
    /// or eject (empty string) the media of the cdrom drive at `target`.
    /// Options: `live`, `config` (b).
    async fn change_media(
        &self,
        #[zbus(header)] header: Header<'_>,
        target: &str,
        media_json: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        self.change_media_of(&header, target, media_json, &options)
            .await
    }

    /// Attach a network interface. `interface_json`: `network` or `bridge`,
    /// and `model` (virtio|e1000e|e1000|rtl8139), `mac`, `link` (up|down).
    /// Options: `live`, `config` (b). Returns its MAC address.
    #[zbus(out_args("mac"))]
    async fn attach_interface(
        &self,
        #[zbus(header)] header: Header<'_>,
        interface_json: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<String, Error> {
        self.attach_nic_to(&header, interface_json, &options).await
    }

    /// Detach the interface with this MAC address. Options: `live`, `config` (b).
    async fn detach_interface(
        &self,
        #[zbus(header)] header: Header<'_>,
        mac: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        self.detach_nic_from(&header, mac, &options).await
    }

    /// Set the link of the interface with this MAC up or down. Options:
    /// `live`, `config` (b).
    async fn set_interface_link(
        &self,
        #[zbus(header)] header: Header<'_>,
        mac: &str,
        up: bool,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), Error> {
        self.set_link_of(&header, mac, up, &options).await
    }

    /// Clone the shut-off VM as `new_name`: each disk it owns copied whole
    /// (option `mode` "full", the default) or as a qcow2 overlay ("linked":
    /// the source's disks must then stay unchanged), shared disks shared, a
    /// new cloud-init seed, new UUID and MAC addresses, vapord's metadata
    /// copied; all or nothing. Progress on a Job. Returns the new VM.
    #[zbus(name = "Clone", out_args("vm"))]
    async fn clone_vm(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        new_name: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<zbus::OwnedObjectPath, Error> {
        self.clone_as(&header, server, new_name, &options).await
    }

    /// What kinds of snapshot the VM allows now: for each of `internal`,
    /// `external` (disk-only), `external_memory`, `revert_internal`,
    /// `delete_internal`, `revert_external`, `delete_external` and
    /// `quiesce` an a{sv} {possible: b, reason: s};
    /// and `auto` (s): the kind CreateSnapshot makes when not told.
    #[zbus(out_args("capabilities"))]
    async fn get_snapshot_capabilities(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<HashMap<String, OwnedVariant>, Error> {
        self.snapshot_capabilities(&header).await
    }

    /// Make a snapshot, as a Job; its object back. Options: `name` (s,
    /// default from the time), `description` (s), `memory` (b, default:
    /// the VM runs), `quiesce` (b: freeze file systems through the guest
    /// agent), `kind` (s: auto, internal, external; default auto).
    #[zbus(out_args("snapshot"))]
    async fn create_snapshot(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<zbus::OwnedObjectPath, Error> {
        self.create_snapshot_as(&header, server, &options).await
    }

    /// Back up the VM into vapord's repository, as a Job (cancelable); the
    /// new Backup object. Options: `kind` (s: auto (default: incremental
    /// where an earlier backup's checkpoint allows, else full), full,
    /// incremental), `quiesce` (b: freeze the guest's file systems through
    /// its agent while the backup starts), `keep` (u: then keep only the
    /// newest this many backups of the VM, whole chains).
    #[zbus(out_args("backup"))]
    async fn backup(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<zbus::OwnedObjectPath, Error> {
        self.backup_as(&header, server, &options).await
    }

    /// Migrate the VM to another libvirt host, as a Job (cancelable: the
    /// VM then keeps running here) whose Details carry libvirt's figures;
    /// `destination` is a host named in vapord.toml's `[hosts]` or a
    /// remote URI without parameters. Returns a summary with the total
    /// time and the downtime. Options: see the interface XML.
    #[zbus(out_args("summary"))]
    async fn migrate(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        destination: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<String, Error> {
        self.migrate_to(&header, server, destination, &options)
            .await
    }

    /// Switch the VM's running migration (started with `postcopy`) to
    /// post-copy: the VM runs on the destination at once and its memory
    /// follows.
    async fn migrate_start_postcopy(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), Error> {
        self.start_postcopy(&header).await
    }

    /// Wait until the guest agent answers, at most `timeout_secs` (0: the
    /// configured default, 300 s); a Timeout error after that.
    async fn wait_for_agent(
        &self,
        #[zbus(header)] header: Header<'_>,
        timeout_secs: u32,
    ) -> Result<(), Error> {
        self.wait_for_agent_as(&header, timeout_secs).await
    }

    /// Ask the guest agent again what it reports (GuestInfo).
    async fn refresh_guest_info(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        self.refresh_guest_info_as(&header).await
    }

    /// Run a program as root inside the guest through its agent; its exit
    /// status (128 + signal when killed) and output. Options: `input` (ay:
    /// its standard input, up to 24 MiB), `timeout` (u seconds, default
    /// 60: then it is killed and the call fails with Timeout),
    /// `max_output` (t bytes per stream, default 8 MiB, at most 12 MiB:
    /// more fails with LimitExceeded naming the stream), `truncate` (b:
    /// cut the output at max_output instead).
    #[zbus(out_args("status", "stdout", "stderr"))]
    async fn exec(
        &self,
        #[zbus(header)] header: Header<'_>,
        argv: Vec<String>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), Error> {
        self.exec_as(&header, argv, &options).await
    }

    /// cloud-init's status in the guest (`cloud-init status --long
    /// --format json`) as JSON; also written to vapord's journal.
    #[zbus(out_args("status"))]
    async fn get_cloud_init_status(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, Error> {
        self.cloud_init_status_as(&header).await
    }

    /// Write what `fd` holds to `guest_path` in the guest, as a Job: any
    /// size, to a temporary name beside it, checked by sha256 inside the
    /// guest, then renamed into place. Options: `mode` (u, default 0644),
    /// `owner` (s: user or user:group), `overwrite` (b, default true).
    /// Returns (bytes, sha256).
    #[zbus(out_args("bytes", "sha256"))]
    async fn write_file(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        guest_path: &str,
        fd: zbus::OwnedFd,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(u64, String), Error> {
        self.write_file_as(&header, server, guest_path, fd, &options)
            .await
    }

    /// Copy `guest_path` from the guest into `fd`, as a Job. Returns
    /// (bytes, sha256).
    #[zbus(out_args("bytes", "sha256"))]
    async fn read_file(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &zbus::ObjectServer,
        guest_path: &str,
        fd: zbus::OwnedFd,
    ) -> Result<(u64, String), Error> {
        self.read_file_as(&header, server, guest_path, fd).await
    }

    /// The VM's whole configuration and state as a JSON document.
    #[zbus(out_args("json"))]
    async fn describe(&self, #[zbus(header)] header: Header<'_>) -> Result<String, Error> {
        let rec = self.authorize(&header, Action::Read, "read").await?;
        let doc = self.ctx.vms.describe(&rec.uuid).await?;
        // libvirt's names and XML can hold what sd-bus clients refuse.
        Ok(crate::text::json_for_bus(doc.to_string()))
    }

    /// The samples of the last `seconds` (0: all, at most an hour), oldest
    /// first: (unix time ms, CPU %, memory used KiB, disk read, disk write,
    /// network rx, network tx in bytes per second).
    #[zbus(out_args("samples"))]
    async fn get_metrics(
        &self,
        #[zbus(header)] header: Header<'_>,
        seconds: u32,
    ) -> Result<Vec<super::vm_metrics::Row>, Error> {
        let rec = self
            .authorize(&header, Action::Read, "read the metrics of")
            .await?;
        Ok(super::vm_metrics::rows(
            self.ctx.vms.model(),
            &rec.uuid,
            seconds,
        ))
    }

    /// Open the VM's serial console: a socket joined to it, like `virsh
    /// console`. Options: `force` (b): take the console over from another
    /// session (which then ends); without it, an open session is a Conflict.
    #[zbus(out_args("fd"))]
    async fn open_console(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<zbus::OwnedFd, Error> {
        self.open_console_fd(&header, &options).await
    }

    /// Open the VM's graphical display (VNC or SPICE): a socket speaking
    /// the display's protocol, past its password. No options yet.
    #[zbus(out_args("fd"))]
    async fn open_graphics(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<zbus::OwnedFd, Error> {
        self.open_graphics_fd(&header, &options).await
    }

    /// A Unix socket, owned by the caller (mode 0600), that joins each
    /// connection to the VM's `kind` of console: "graphics" or "serial".
    /// The same caller gets the same socket again; it goes away when the
    /// VM stops or nobody connected to it for a while.
    #[zbus(out_args("path"))]
    async fn get_console_socket(
        &self,
        #[zbus(header)] header: Header<'_>,
        kind: &str,
    ) -> Result<String, Error> {
        self.console_socket_path(&header, kind).await
    }
}
