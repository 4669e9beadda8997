//! The VM creation spec: the JSON document `CreateVirtualMachine` takes.
//!
//! These types mirror `dbus/schemas/vm-spec.schema.json`; the schema is what
//! validates a request (so every error names a field path), these types are
//! what the engine works with afterwards. Unknown fields are refused by both.
//! Units: `memory` in MiB, disk `size` in GiB.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole creation request (or, with `name` absent, a template).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Template to start from (merged first, see `template::merge`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Memory in MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<NetworkSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graphics: Option<Vec<GraphicsSpec>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInitSpec>,
    /// Host PCI devices to pass through (validated by the PCI service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_devices: Option<Vec<PciDeviceSpec>>,
    /// Start the VM with the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// Start the VM once it is defined (a failed start undoes the creation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<bool>,
    /// Free-form key/value pairs recorded in the VM's vapord metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Boot with UEFI firmware instead of BIOS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uefi: Option<bool>,
    /// UEFI Secure Boot (implies `uefi`, needs machine q35).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// An emulated TPM 2.0 (swtpm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<bool>,
    /// Machine type: `q35` (default), `pc` (i440fx) or a versioned one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// libosinfo short id (e.g. `ubuntu22.04`), recorded for tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_variant: Option<String>,
    /// Guest CPU: `none`, `custom:<model>`, `host-model`, `host-passthrough`
    /// (default from the daemon configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_mode: Option<String>,
    /// Hardware acceleration (default `auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<Accel>,
    /// Direct kernel boot: the host's kernel (and initrd) instead of firmware
    /// booting a disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSpec>,
}

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where the host offers it, else TCG.
    #[default]
    Auto,
    /// KVM; refused where the host does not offer it.
    Kvm,
    /// QEMU's software emulation (`<domain type='qemu'>`), everywhere.
    Tcg,
}

/// Direct kernel boot (`<os><kernel>`, `<initrd>`, `<cmdline>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// The kernel image: absolute, or relative to `storage.default_pool`
    /// (the same path rules and authorization as an attached disk).
    pub kernel: String,
    /// The initial ramdisk (same rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// The kernel command line (one line, at most 4 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    /// Pool for relative paths when a disk names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    /// ISO to boot from: becomes a read-only cdrom disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_iso: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskSpec>>,
    /// Bus of cdroms that name none (boot ISO, cloud-init seed): `ide`,
    /// `sata`, `scsi` or `usb`; default from machine and OS variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdrom_bus: Option<String>,
}

/// What to do for one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskAction {
    /// A new empty volume of `size` GiB.
    Create,
    /// An existing volume or file, used as is.
    Attach,
    /// A full copy of the volume `source`.
    Clone,
    /// A copy-on-write qcow2 overlay over the image `source` (a cloud image).
    Backing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub action: DiskAction,
    /// Size in GiB (create; optional for clone/backing to grow the disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Absolute, relative to the disk's pool, or empty for a generated name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_pool: Option<String>,
    /// Source volume of `clone`, backing image of `backing` (same path rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `qcow2` or `raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `virtio`, `sata`, `scsi`, `ide` or `usb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Guest device name (`vda`, `sdb`, `hdc`); assigned when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `disk` (default) or `cdrom`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Allocate the whole size now instead of a sparse volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preallocate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// `network` (a libvirt network) or `bridge` (a host bridge).
    #[serde(rename = "type")]
    pub kind: String,
    /// Network or bridge name.
    pub source: String,
    /// NIC model, default `virtio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphicsSpec {
    /// `vnc` or `spice`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoport: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudInitSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciDeviceSpec {
    pub host_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rom_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multifunction: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_gpu: Option<bool>,
}
