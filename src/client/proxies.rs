//! Typed proxies for every interface in `dbus/*.xml`, one `#[zbus::proxy]`
//! trait per interface with every method, signal and property of its XML
//! (a test in `proxies_tests.rs` checks the names against the files).
//!
//! # Interactive authorization
//!
//! zbus 6 fixes a call's header flags per method at compile time
//! (`#[zbus(allow_interactive_auth)]`); a proxy has no run-time switch. So
//! every interface is generated twice from one declaration:
//!
//! * `XProxy` (this module): every member; its methods are sent without
//!   `ALLOW_INTERACTIVE_AUTHORIZATION`, so polkit never asks for a password
//!   and answers `InteractiveAuthorizationRequired` instead.
//! * [`interactive`]`::XProxy`: the methods only, each sent with
//!   `ALLOW_INTERACTIVE_AUTHORIZATION`, so polkit may ask (through an agent)
//!   before answering.
//!
//! `XClient` wraps both around one connection and picks per call from a flag
//! given at construction (`vaporctl --no-ask-password` clears it). It has
//! the same methods as the proxies; properties and signals are read through
//! [`XClient::proxy`](ManagerClient::proxy) (reading needs no authorization).

use std::collections::HashMap;

use zbus::{Fd, OwnedObjectPath, OwnedVariant, Variant};

/// The well-known name vapord owns.
pub const SERVICE: &str = "org.vapor.Virtualization";
/// The Manager's object (also the ObjectManager root).
pub const MANAGER_PATH: &str = "/org/vapor/Virtualization";

pub const MANAGER_INTERFACE: &str = "org.vapor.Virtualization.Manager";
pub const VIRTUAL_MACHINE_INTERFACE: &str = "org.vapor.Virtualization.VirtualMachine";
pub const PCI_DEVICE_INTERFACE: &str = "org.vapor.Virtualization.PciDevice";
pub const JOB_INTERFACE: &str = "org.vapor.Virtualization.Job";
pub const STORAGE_POOL_INTERFACE: &str = "org.vapor.Virtualization.StoragePool";
pub const VOLUME_INTERFACE: &str = "org.vapor.Virtualization.Volume";
pub const NETWORK_INTERFACE: &str = "org.vapor.Virtualization.Network";
pub const SNAPSHOT_INTERFACE: &str = "org.vapor.Virtualization.Snapshot";
pub const BACKUP_INTERFACE: &str = "org.vapor.Virtualization.Backup";

/// `a{sv}` options as sent.
pub type Options<'a> = HashMap<&'a str, Variant<'a>>;

/// Declares each interface once and expands it into the plain proxy, the
/// interactive proxy and the client choosing between them. Syntax per
/// interface:
///
/// ```text
/// interface "iface.Name" [at "/default/path"] => Trait, TraitProxy, TraitClient {
///     methods { [#[doc…]] [#[dbus_name = "Member"]] fn snake(&self, a: T) -> zbus::Result<R>; … }
///     properties and signals, written as for #[zbus::proxy]
/// }
/// ```
macro_rules! interfaces {
    ($(
        $(#[doc = $doc:tt])*
        interface $iface:tt $(at $path:tt)? => $name:ident, $proxy:ident, $client:ident {
            methods {
                $(
                    $(#[doc = $mdoc:tt])*
                    $(#[dbus_name = $member:tt])?
                    fn $m:ident(&self $(, $arg:ident: $aty:ty)* $(,)?) -> zbus::Result<$ret:ty>;
                )*
            }
            $($rest:tt)*
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[zbus::proxy(interface = $iface, default_service = "org.vapor.Virtualization" $(, default_path = $path)?)]
            pub trait $name {
                $(
                    $(#[doc = $mdoc])*
                    $(#[zbus(name = $member)])?
                    fn $m(&self $(, $arg: $aty)*) -> zbus::Result<$ret>;
                )*
                $($rest)*
            }
        )*

        /// The same methods as the plain proxies, each sent with
        /// `ALLOW_INTERACTIVE_AUTHORIZATION` (polkit may ask for a password).
        pub mod interactive {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[doc = $doc])*
                #[zbus::proxy(interface = $iface, default_service = "org.vapor.Virtualization" $(, default_path = $path)?)]
                pub trait $name {
                    $(
                        $(#[doc = $mdoc])*
                        $(#[zbus(name = $member)])?
                        #[zbus(allow_interactive_auth)]
                        fn $m(&self $(, $arg: $aty)*) -> zbus::Result<$ret>;
                    )*
                }
            )*
        }

        $(
            #[doc = concat!("Calls `", $iface, "` with or without interactive authorization, as chosen at construction.")]
            #[derive(Clone, Debug)]
            pub struct $client<'p> {
                plain: $proxy<'p>,
                asking: interactive::$proxy<'p>,
                allow_interactive_auth: bool,
            }

            impl<'p> $client<'p> {
                /// A client for the object at `path` on vapord, with
                /// property caching off (every read asks vapord).
                pub async fn new<P>(
                    conn: &zbus::Connection,
                    path: P,
                    allow_interactive_auth: bool,
                ) -> zbus::Result<Self>
                where
                    P: TryInto<zbus::ObjectPath<'p>>,
                    P::Error: Into<zbus::Error>,
                {
                    let plain = $proxy::builder(conn)
                        .path(path)
                        .cache_properties(zbus::proxy::CacheProperties::No)
                        .build()
                        .await?;
                    Ok(Self::from_proxy(plain, allow_interactive_auth))
                }

                /// Wrap an existing plain proxy.
                pub fn from_proxy(plain: $proxy<'p>, allow_interactive_auth: bool) -> Self {
                    let asking = interactive::$proxy::from(plain.inner().clone());
                    Self { plain, asking, allow_interactive_auth }
                }

                /// The plain proxy: properties, signals, and methods that
                /// never let polkit ask.
                pub fn proxy(&self) -> &$proxy<'p> {
                    &self.plain
                }

                /// Whether method calls allow interactive authorization.
                pub fn allows_interactive_auth(&self) -> bool {
                    self.allow_interactive_auth
                }

                /// The object path.
                pub fn path(&self) -> &zbus::ObjectPath<'p> {
                    self.plain.inner().path()
                }

                $(
                    $(#[doc = $mdoc])*
                    pub async fn $m(&self $(, $arg: $aty)*) -> zbus::Result<$ret> {
                        if self.allow_interactive_auth {
                            self.asking.$m($($arg),*).await
                        } else {
                            self.plain.$m($($arg),*).await
                        }
                    }
                )*
            }
        )*
    };
}

interfaces! {
    /// `org.vapor.Virtualization.Manager` at `/org/vapor/Virtualization`.
    interface "org.vapor.Virtualization.Manager" at "/org/vapor/Virtualization"
        => Manager, ManagerProxy, ManagerClient {
        methods {
            /// The object path of the VM with this name or UUID.
            fn lookup_virtual_machine(&self, name_or_uuid: &str) -> zbus::Result<OwnedObjectPath>;
            /// Every VM's object path, sorted by name.
            fn list_virtual_machines(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
            /// Create a VM from a JSON creation spec; the new VM's path.
            fn create_virtual_machine(&self, spec: &str) -> zbus::Result<OwnedObjectPath>;
            /// The dry run: (resolved spec JSON, domain XML).
            fn plan_virtual_machine(&self, spec: &str) -> zbus::Result<(String, String)>;
            /// Bring the VMs of a declarative document to what it declares,
            /// as a Job; `files` passes sources by name; options: `dry_run`
            /// (b). The report, as JSON.
            fn apply(&self, document: &str, files: HashMap<&str, Fd<'_>>, options: Options<'_>) -> zbus::Result<String>;
            /// Every template: (name, source, description).
            fn list_templates(&self) -> zbus::Result<Vec<(String, String, String)>>;
            /// One template as JSON.
            fn get_template(&self, name: &str) -> zbus::Result<String>;
            /// Create or replace a user template.
            fn save_template(&self, name: &str, description: &str, spec: &str) -> zbus::Result<()>;
            /// Delete a user template.
            fn delete_template(&self, name: &str) -> zbus::Result<()>;
            /// Every storage pool's object path, sorted by name.
            fn list_storage_pools(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
            /// The object path of the pool with this name or UUID.
            fn lookup_storage_pool(&self, name_or_uuid: &str) -> zbus::Result<OwnedObjectPath>;
            /// Define (build, start) a pool from a JSON spec.
            fn create_storage_pool(&self, spec: &str) -> zbus::Result<OwnedObjectPath>;
            /// The pool XML CreateStoragePool would define.
            fn plan_storage_pool(&self, spec: &str) -> zbus::Result<String>;
            /// Every virtual network's object path, sorted by name.
            fn list_networks(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
            /// The object path of the network with this name or UUID.
            fn lookup_network(&self, name_or_uuid: &str) -> zbus::Result<OwnedObjectPath>;
            /// Define (and start) a network from a JSON spec.
            fn create_network(&self, spec: &str) -> zbus::Result<OwnedObjectPath>;
            /// The network XML CreateNetwork would define.
            fn plan_network(&self, spec: &str) -> zbus::Result<String>;
            /// Every object with this interface, compactly: the property
            /// names and a variant holding one row `(o…)` per object.
            fn enumerate_objects(&self, interface: &str) -> zbus::Result<(Vec<String>, zbus::OwnedVariant)>;
        }
        #[zbus(property)]
        fn connected(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn host_cpu_percent(&self) -> zbus::Result<f64>;
        #[zbus(property, name = "HostMemoryTotalKiB")]
        fn host_memory_total_kib(&self) -> zbus::Result<u64>;
        #[zbus(property, name = "HostMemoryUsedKiB")]
        fn host_memory_used_kib(&self) -> zbus::Result<u64>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn libvirt_uri(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn version(&self) -> zbus::Result<String>;
    }

    /// `org.vapor.Virtualization.VirtualMachine`, one object per domain.
    interface "org.vapor.Virtualization.VirtualMachine"
        => VirtualMachine, VirtualMachineProxy, VirtualMachineClient {
        methods {
            fn start(&self) -> zbus::Result<()>;
            fn shutdown(&self) -> zbus::Result<()>;
            fn reboot(&self) -> zbus::Result<()>;
            fn force_stop(&self) -> zbus::Result<()>;
            fn pause(&self) -> zbus::Result<()>;
            fn resume(&self) -> zbus::Result<()>;
            fn reset(&self) -> zbus::Result<()>;
            fn set_autostart(&self, autostart: bool) -> zbus::Result<()>;
            /// Delete the VM: (removed paths, kept (path, reason)).
            fn delete(&self, options: Options<'_>) -> zbus::Result<(Vec<String>, Vec<(String, String)>)>;
            fn attach_pci_device(&self, host_address: &str, options: Options<'_>) -> zbus::Result<()>;
            fn detach_pci_device(&self, host_address: &str, options: Options<'_>) -> zbus::Result<()>;
            /// The whole configuration and state as JSON.
            fn describe(&self) -> zbus::Result<String>;
            /// Change the configuration: (changed fields, fields pending
            /// until the next start).
            fn update(&self, changes_json: &str, options: Options<'_>) -> zbus::Result<(Vec<String>, Vec<String>)>;
            /// Options: `live`, `config` (b).
            fn set_vcpus(&self, count: u32, options: Options<'_>) -> zbus::Result<()>;
            /// Options: `live`, `config` (b).
            fn set_memory(&self, memory_mib: u64, options: Options<'_>) -> zbus::Result<()>;
            /// Attach a disk from a JSON document; its target.
            fn attach_disk(&self, disk_json: &str, options: Options<'_>) -> zbus::Result<String>;
            /// Detach a disk: (removed paths, kept (path, reason)).
            fn detach_disk(&self, target: &str, options: Options<'_>) -> zbus::Result<(Vec<String>, Vec<(String, String)>)>;
            /// Grow a disk to `size` (bytes or 20G …).
            fn resize_disk(&self, target: &str, size: &str, options: Options<'_>) -> zbus::Result<()>;
            /// Insert or change a cdrom's media; "" ejects.
            fn change_media(&self, target: &str, media_json: &str, options: Options<'_>) -> zbus::Result<()>;
            /// Attach a network interface from a JSON document; its MAC.
            fn attach_interface(&self, interface_json: &str, options: Options<'_>) -> zbus::Result<String>;
            fn detach_interface(&self, mac: &str, options: Options<'_>) -> zbus::Result<()>;
            fn set_interface_link(&self, mac: &str, up: bool, options: Options<'_>) -> zbus::Result<()>;
            /// Clone the shut-off VM; options: `mode` (full|linked). The new VM.
            #[dbus_name = "Clone"]
            fn clone_vm(&self, new_name: &str, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
            /// The samples of the last `seconds` (0: all): (unix ms, CPU %,
            /// memory used KiB, disk read, disk write, net rx, net tx B/s).
            fn get_metrics(&self, seconds: u32) -> zbus::Result<Vec<(u64, f64, u64, u64, u64, u64, u64)>>;
            /// The serial console as a socket; options: `force` (b).
            fn open_console(&self, options: Options<'_>) -> zbus::Result<zbus::OwnedFd>;
            /// The VNC or SPICE display as a socket.
            fn open_graphics(&self, options: Options<'_>) -> zbus::Result<zbus::OwnedFd>;
            /// The path of the caller's console socket of `kind`
            /// (`graphics` or `serial`).
            fn get_console_socket(&self, kind: &str) -> zbus::Result<String>;
            /// Each kind → {possible: b, reason: s}; `auto` (s).
            fn get_snapshot_capabilities(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
            /// Options: `name`, `description`, `kind` (s), `memory`, `quiesce` (b).
            fn create_snapshot(&self, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
            /// Options: `kind` (s), `quiesce` (b), `keep` (u). The Backup.
            fn backup(&self, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
            /// Migrate to a configured host or a remote URI; a summary.
            fn migrate(&self, destination: &str, options: Options<'_>) -> zbus::Result<String>;
            fn migrate_start_postcopy(&self) -> zbus::Result<()>;
            /// Wait until the guest agent answers (0: vapord's default).
            fn wait_for_agent(&self, timeout_secs: u32) -> zbus::Result<()>;
            fn refresh_guest_info(&self) -> zbus::Result<()>;
            /// Run a program in the guest; options: `input` (ay), `timeout`
            /// (u), `max_output` (t), `truncate` (b). (status, stdout, stderr).
            fn exec(&self, argv: &[&str], options: Options<'_>) -> zbus::Result<(i32, Vec<u8>, Vec<u8>)>;
            /// cloud-init's status as JSON.
            fn get_cloud_init_status(&self) -> zbus::Result<String>;
            /// Write what `fd` holds into the guest, as a Job; options: `mode`
            /// (u), `owner` (s), `overwrite` (b). (bytes, sha256).
            fn write_file(&self, guest_path: &str, fd: Fd<'_>, options: Options<'_>) -> zbus::Result<(u64, String)>;
            /// Copy a guest file into `fd`, as a Job. (bytes, sha256).
            fn read_file(&self, guest_path: &str, fd: Fd<'_>) -> zbus::Result<(u64, String)>;
        }
        #[zbus(property)]
        fn agent_connected(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn guest_info(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
        #[zbus(property)]
        fn migration(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
        #[zbus(property)]
        fn autostart(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn cpu_percent(&self) -> zbus::Result<f64>;
        #[zbus(property)]
        fn cpu_time_ns(&self) -> zbus::Result<u64>;
        #[zbus(property, name = "CurrentMemoryMiB")]
        fn current_memory_mib(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn disk_read_bytes_per_sec(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn disk_write_bytes_per_sec(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn max_vcpus(&self) -> zbus::Result<u32>;
        #[zbus(property, name = "MemoryMiB")]
        fn memory_mib(&self) -> zbus::Result<u64>;
        #[zbus(property, name = "MemoryUsedKiB")]
        fn memory_used_kib(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn net_rx_bytes_per_sec(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn net_tx_bytes_per_sec(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn pending_changes(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn persistent(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn state(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn state_reason(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn uuid(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn vcpus(&self) -> zbus::Result<u32>;
    }

    /// `org.vapor.Virtualization.PciDevice`, one object per host PCI device.
    interface "org.vapor.Virtualization.PciDevice"
        => PciDevice, PciDeviceProxy, PciDeviceClient {
        methods {
            /// Every reason the device cannot go to the VM: (code, message).
            fn check_assignment(&self, vm: &str, options: Options<'_>) -> zbus::Result<Vec<(String, String)>>;
            /// (address, previous driver) for every device moved.
            fn bind_to_vfio(&self, options: Options<'_>) -> zbus::Result<Vec<(String, String)>>;
            /// The driver bound now.
            fn restore_driver(&self) -> zbus::Result<String>;
        }
        #[zbus(property(emits_changed_signal = "const"))]
        fn address(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn assigned_to(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property)]
        fn assigned_to_names(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn class(&self) -> zbus::Result<u32>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn class_name(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn device_id(&self) -> zbus::Result<u16>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn device_name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn driver(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn host_critical(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn host_critical_reasons(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn iommu_group(&self) -> zbus::Result<i32>;
        #[zbus(property)]
        fn iommu_group_members(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn is_bridge(&self) -> zbus::Result<bool>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn numa_node(&self) -> zbus::Result<i32>;
        #[zbus(property)]
        fn original_driver(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn persistent_override(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn physical_function(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn reset_methods(&self) -> zbus::Result<Vec<String>>;
        #[zbus(property)]
        fn sriov_num_vfs(&self) -> zbus::Result<u32>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn sriov_total_vfs(&self) -> zbus::Result<u32>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn vendor_id(&self) -> zbus::Result<u16>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn vendor_name(&self) -> zbus::Result<String>;
    }

    /// `org.vapor.Virtualization.Job`, published while a long operation runs.
    interface "org.vapor.Virtualization.Job" => Job, JobProxy, JobClient {
        methods {
            /// Ask the job to stop (only its starter or root may).
            fn cancel(&self) -> zbus::Result<()>;
        }
        /// Emitted once when the job ends.
        #[zbus(signal)]
        fn completed(&self, success: bool, message: &str) -> zbus::Result<()>;
        #[zbus(property)]
        fn details(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
        #[zbus(property)]
        fn bytes(&self) -> zbus::Result<u64>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn cancelable(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn expected_end_time(&self) -> zbus::Result<u64>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn objects(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn operation(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn progress(&self) -> zbus::Result<f64>;
        #[zbus(property)]
        fn rate(&self) -> zbus::Result<u64>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn start_time(&self) -> zbus::Result<u64>;
        #[zbus(property(emits_changed_signal = "const"), name = "StartedByUID")]
        fn started_by_uid(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn step(&self) -> zbus::Result<String>;
    }

    /// `org.vapor.Virtualization.StoragePool`, one object per libvirt pool.
    interface "org.vapor.Virtualization.StoragePool"
        => StoragePool, StoragePoolProxy, StoragePoolClient {
        methods {
            /// Options: `build` (b).
            fn start(&self, options: Options<'_>) -> zbus::Result<()>;
            fn stop(&self) -> zbus::Result<()>;
            fn refresh(&self) -> zbus::Result<()>;
            fn set_autostart(&self, autostart: bool) -> zbus::Result<()>;
            /// Options: `delete_volumes` (b), `delete_directory` (b).
            fn delete(&self, options: Options<'_>) -> zbus::Result<()>;
            /// Create a volume from a JSON volume spec; its object path.
            fn create_volume(&self, spec: &str) -> zbus::Result<OwnedObjectPath>;
            /// Create volume `name` from everything read from `fd`.
            /// Options: `format` (s), `size` (t).
            fn upload_volume(&self, name: &str, fd: Fd<'_>, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
        }
        #[zbus(property)]
        fn allocation_bytes(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn available_bytes(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn autostart(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn capacity_bytes(&self) -> zbus::Result<u64>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn persistent(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn state(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn target_path(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"), name = "Type")]
        fn pool_type(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn uuid(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn volumes(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    }

    /// `org.vapor.Virtualization.Volume`, one object per volume of an active pool.
    interface "org.vapor.Virtualization.Volume" => Volume, VolumeProxy, VolumeClient {
        methods {
            /// Copy into a new volume `name` in the same pool. Options: `format` (s).
            #[dbus_name = "Clone"]
            fn clone_to(&self, name: &str, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
            /// Options: `shrink` (b).
            fn resize(&self, capacity: u64, options: Options<'_>) -> zbus::Result<()>;
            fn wipe(&self) -> zbus::Result<()>;
            fn delete(&self) -> zbus::Result<()>;
            /// Replace the contents with everything read from `fd`. Options: `size` (t).
            fn upload(&self, fd: Fd<'_>, options: Options<'_>) -> zbus::Result<()>;
            /// Write the contents to `fd`.
            fn download(&self, fd: Fd<'_>, options: Options<'_>) -> zbus::Result<()>;
        }
        #[zbus(property)]
        fn allocation_bytes(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn backing_store(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn capacity_bytes(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn format(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn key(&self) -> zbus::Result<String>;
        /// The ISO 9660 volume label ("" when none).
        #[zbus(property)]
        fn label(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn owned_by(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn path(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn pool(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn used_by(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    }

    /// `org.vapor.Virtualization.Network`, one object per libvirt network.
    interface "org.vapor.Virtualization.Network" => Network, NetworkProxy, NetworkClient {
        methods {
            fn start(&self) -> zbus::Result<()>;
            fn stop(&self) -> zbus::Result<()>;
            fn set_autostart(&self, autostart: bool) -> zbus::Result<()>;
            fn delete(&self) -> zbus::Result<()>;
            /// (mac, ip, prefix, hostname, expiry in seconds since the epoch).
            fn get_dhcp_leases(&self) -> zbus::Result<Vec<(String, String, u32, String, u64)>>;
            fn add_dhcp_host(&self, mac: &str, ip: &str, name: &str) -> zbus::Result<()>;
            fn remove_dhcp_host(&self, mac: &str) -> zbus::Result<()>;
        }
        #[zbus(property)]
        fn active(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn autostart(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn bridge(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn dhcp_hosts(&self) -> zbus::Result<Vec<(String, String, String)>>;
        #[zbus(property)]
        fn dhcp_range_end(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn dhcp_range_start(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn dns_domain(&self) -> zbus::Result<String>;
        #[zbus(property, name = "IPv4Address")]
        fn ipv4_address(&self) -> zbus::Result<String>;
        #[zbus(property, name = "IPv4Prefix")]
        fn ipv4_prefix(&self) -> zbus::Result<u32>;
        #[zbus(property, name = "IPv6Address")]
        fn ipv6_address(&self) -> zbus::Result<String>;
        #[zbus(property, name = "IPv6Prefix")]
        fn ipv6_prefix(&self) -> zbus::Result<u32>;
        #[zbus(property)]
        fn mode(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn persistent(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn used_by(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn uuid(&self) -> zbus::Result<String>;
    }

    /// `org.vapor.Virtualization.Snapshot`, one object per snapshot of a VM.
    interface "org.vapor.Virtualization.Snapshot" => Snapshot, SnapshotProxy, SnapshotClient {
        methods {
            /// Options: `state` (s: as-taken, running, paused), `force` (b).
            fn revert(&self, options: Options<'_>) -> zbus::Result<()>;
            /// Options: `children`, `metadata_only` (b).
            fn delete(&self, options: Options<'_>) -> zbus::Result<()>;
        }
        #[zbus(property)]
        fn children(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
        #[zbus(property)]
        fn created_at(&self) -> zbus::Result<i64>;
        #[zbus(property)]
        fn description(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn disks(&self) -> zbus::Result<Vec<(String, String, String)>>;
        #[zbus(property)]
        fn has_memory(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn is_current(&self) -> zbus::Result<bool>;
        #[zbus(property)]
        fn kind(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn name(&self) -> zbus::Result<String>;
        #[zbus(property)]
        fn parent(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property)]
        fn state_at_snapshot(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn virtual_machine(&self) -> zbus::Result<OwnedObjectPath>;
    }

    /// `org.vapor.Virtualization.Backup`, one object per complete backup.
    interface "org.vapor.Virtualization.Backup" => Backup, BackupProxy, BackupClient {
        methods {
            /// Options: `new_name`, `target_pool` (s). The new VM.
            fn restore(&self, options: Options<'_>) -> zbus::Result<OwnedObjectPath>;
            /// (intact, problems).
            fn verify(&self) -> zbus::Result<(bool, Vec<String>)>;
            /// Options: `dependents` (b). The ids deleted.
            fn delete(&self, options: Options<'_>) -> zbus::Result<Vec<String>>;
        }
        #[zbus(property(emits_changed_signal = "const"))]
        fn created_at(&self) -> zbus::Result<i64>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn disks(&self) -> zbus::Result<Vec<(String, u64)>>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn id(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn kind(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn parent(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn size_bytes(&self) -> zbus::Result<u64>;
        #[zbus(property)]
        fn verified(&self) -> zbus::Result<bool>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn virtual_machine(&self) -> zbus::Result<OwnedObjectPath>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn vm_name(&self) -> zbus::Result<String>;
        #[zbus(property(emits_changed_signal = "const"))]
        fn vm_uuid(&self) -> zbus::Result<String>;
    }
}
