//! Tests of `boot.rs`: the domain type per accelerator, the cdrom bus per
//! machine and OS, direct kernel boot's paths and command line, and what
//! the domain XML makes of them.

use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::creation::domain_xml::{domain_xml, Origin};
use crate::creation::resolve::{resolve, Defaults, PoolInfo, Resolved, VolumeInfo};
use crate::creation::validate::validate_spec;

/// One dir pool `images` at /srv/img holding a Debian guest's base image,
/// kernel and initrd; a host kernel outside any pool; a link in the pool
/// to a host file.
struct Host {
    volumes: HashMap<String, VolumeInfo>,
    files: Vec<String>,
    links: HashMap<String, String>,
}

impl Host {
    fn new() -> Self {
        let vol = |format: &str| VolumeInfo {
            format: format.into(),
            capacity_bytes: 2 << 30,
            pool: Some("images".into()),
        };
        Host {
            volumes: [
                ("/srv/img/base.qcow2".to_string(), vol("qcow2")),
                ("/srv/img/vmlinuz".to_string(), vol("raw")),
                ("/srv/img/initrd.img".to_string(), vol("raw")),
                ("/srv/img/debian.iso".to_string(), vol("iso")),
            ]
            .into(),
            files: vec!["/boot/vmlinuz-6.1".into(), "/etc/shadow".into()],
            links: [("/srv/img/evil".to_string(), "/etc/shadow".to_string())].into(),
        }
    }
}

impl StorageView for Host {
    fn pool(&self, name: &str) -> Option<PoolInfo> {
        self.pools().into_iter().find(|p| p.name == name)
    }
    fn pools(&self) -> Vec<PoolInfo> {
        vec![PoolInfo {
            name: "images".into(),
            kind: "dir".into(),
            target: "/srv/img".into(),
            active: true,
            capacity_bytes: 100 << 30,
            available_bytes: 50 << 30,
        }]
    }
    fn volume(&self, path: &str) -> Option<VolumeInfo> {
        self.volumes.get(path).cloned()
    }
    fn path_exists(&self, path: &str) -> bool {
        self.files.iter().any(|f| f == path)
            || self.volumes.contains_key(path)
            || self.links.contains_key(path)
    }
    fn canonical(&self, path: &str) -> String {
        self.links
            .get(path)
            .cloned()
            .unwrap_or_else(|| path.to_owned())
    }
}

fn run(doc: serde_json::Value) -> Result<Resolved> {
    let spec = validate_spec(&doc)?;
    let defaults = Defaults {
        cpu_mode: "none".into(),
        limits: Default::default(),
    };
    resolve(&Host::new(), &spec, "vm1", &defaults)
}

fn err(doc: serde_json::Value) -> String {
    run(doc).unwrap_err().to_string()
}

fn xml(r: &Resolved, domain_type: &'static str) -> String {
    domain_xml(
        r,
        Origin {
            uid: 1000,
            domain_type,
            uuid: "6b3b2b0e-0000-4000-8000-000000000001",
        },
    )
}

/// The spec that boots the cached Debian test guest with a cloud-init seed.
fn debian_guest() -> serde_json::Value {
    json!({
        "name": "vm1", "memory": 1024, "vcpus": 2, "machine": "q35",
        "accel": "tcg", "cpu_mode": "custom:qemu64",
        "boot": {"kernel": "vmlinuz", "initrd": "initrd.img",
                 "cmdline": "root=/dev/vda rw console=ttyS0,115200"},
        "storage": {"default_pool": "images", "disks": [
            {"action": "backing", "source": "base.qcow2", "format": "qcow2", "bus": "virtio"}]},
        "cloud_init": {"user_data": "#cloud-config\nhostname: vt-ci-proof\n",
                       "meta_data": "instance-id: vm1\n"}
    })
}

#[test]
fn the_domain_type_follows_accel_and_the_host() {
    assert_eq!(domain_type(Accel::Auto, true).unwrap(), "kvm");
    assert_eq!(domain_type(Accel::Auto, false).unwrap(), "qemu");
    assert_eq!(domain_type(Accel::Tcg, true).unwrap(), "qemu");
    assert_eq!(domain_type(Accel::Tcg, false).unwrap(), "qemu");
    assert_eq!(domain_type(Accel::Kvm, true).unwrap(), "kvm");
    let e = domain_type(Accel::Kvm, false).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(ref m) if m.starts_with("accel: ")),
        "{e}"
    );
}

#[test]
fn the_default_cdrom_bus_depends_on_machine_and_os() {
    let cases = [
        ("pc", None, "ide"),
        ("pc-i440fx-8.2", Some("win11"), "ide"),
        ("q35", None, "scsi"),
        ("q35", Some("debian12"), "scsi"),
        ("pc-q35-9.0", Some("ubuntu24.04"), "scsi"),
        ("q35", Some("win11"), "sata"),
        ("q35", Some("win2k22"), "sata"),
    ];
    for (machine, os, want) in cases {
        assert_eq!(default_cdrom_bus(machine, os), want, "{machine} {os:?}");
    }
}

#[test]
fn a_configured_cdrom_bus_is_checked_against_the_machine() {
    assert_eq!(
        cdrom_bus("q35", Some("win11"), Some("scsi")).unwrap(),
        "scsi"
    );
    assert_eq!(cdrom_bus("q35", None, Some("sata")).unwrap(), "sata");
    assert_eq!(cdrom_bus("q35", None, Some("usb")).unwrap(), "usb");
    assert_eq!(cdrom_bus("pc", None, Some("ide")).unwrap(), "ide");
    assert_eq!(cdrom_bus("pc", None, Some("scsi")).unwrap(), "scsi");
    assert_eq!(cdrom_bus("q35", None, None).unwrap(), "scsi");
    let e = cdrom_bus("q35", None, Some("ide")).unwrap_err().to_string();
    assert!(
        e.contains("storage.cdrom_bus: machine q35 has no IDE controller"),
        "{e}"
    );
    assert!(cdrom_bus("q35", None, Some("virtio")).is_err());
    // The schema refuses what the function would.
    let e = err(json!({"storage": {"cdrom_bus": "virtio"}}));
    assert!(e.contains("storage.cdrom_bus"), "{e}");
    let e = err(json!({"storage": {"cdrom_bus": "ide"}}));
    assert!(e.contains("storage.cdrom_bus: machine q35"), "{e}");
}

#[test]
fn seed_and_boot_iso_go_on_virtio_scsi_with_one_controller() {
    let mut doc = debian_guest();
    doc["storage"]["boot_iso"] = json!("debian.iso");
    let r = run(doc).unwrap();
    let iso = r.disks.last().unwrap();
    assert_eq!((iso.bus.as_str(), iso.target.as_str()), ("scsi", "sda"));
    let seed = r.cloud_init_seed.as_ref().unwrap();
    assert_eq!((seed.bus.as_str(), seed.target.as_str()), ("scsi", "sdb"));
    let x = xml(&r, "qemu");
    assert_eq!(
        x.matches("<controller type='scsi'").count(),
        1,
        "exactly one SCSI controller:\n{x}"
    );
    assert!(x.contains("<controller type='scsi' index='0' model='virtio-scsi'/>"));
    assert!(x.contains("<target dev='sdb' bus='scsi'/>"), "{x}");
    // Spare root ports, so disks and NICs can be hotplugged later on q35.
    assert_eq!(
        x.matches("<controller type='pci' model='pcie-root-port'/>")
            .count(),
        crate::creation::domain_xml::HOTPLUG_ROOT_PORTS
    );
}

#[test]
fn sata_and_scsi_share_sd_names_without_colliding() {
    let r = run(
        json!({"storage": {"default_pool": "images", "boot_iso": "debian.iso",
        "disks": [{"action": "create", "size": 1, "bus": "sata"},
                  {"action": "create", "size": 1, "bus": "scsi"}]},
        "cloud_init": {"user_data": "#cloud-config\n"}}),
    )
    .unwrap();
    let t: Vec<_> = r
        .disks
        .iter()
        .map(|d| (d.bus.as_str(), d.target.as_str()))
        .collect();
    assert_eq!(t, [("sata", "sda"), ("scsi", "sdb"), ("scsi", "sdc")]);
    assert_eq!(r.cloud_init_seed.unwrap().target, "sdd");
}

#[test]
fn without_scsi_there_is_no_scsi_controller() {
    let r = run(
        json!({"os_variant": "win11", "storage": {"default_pool": "images",
        "boot_iso": "debian.iso", "disks": [{"action": "create", "size": 1}]}}),
    )
    .unwrap();
    assert_eq!(r.disks[1].bus, "sata");
    let x = xml(&r, "kvm");
    assert!(!x.contains("<controller type='scsi'"), "{x}");
    let r = run(
        json!({"machine": "pc", "storage": {"default_pool": "images",
        "boot_iso": "debian.iso"}}),
    )
    .unwrap();
    assert_eq!(
        (r.disks[0].bus.as_str(), r.disks[0].target.as_str()),
        ("ide", "hda")
    );
}

#[test]
fn a_cdrom_disk_without_bus_takes_the_cdrom_bus() {
    let r = run(
        json!({"storage": {"default_pool": "images", "cdrom_bus": "sata", "disks": [
        {"action": "attach", "path": "debian.iso", "device": "cdrom"}]},
        "cloud_init": {"user_data": "#cloud-config\n"}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].bus, "sata");
    assert_eq!(r.cloud_init_seed.unwrap().bus, "sata");
}

#[test]
fn the_debian_test_guest_boots_its_kernel_under_tcg() {
    let r = run(debian_guest()).unwrap();
    let b = r.kernel_boot.as_ref().unwrap();
    assert_eq!(b.kernel, "/srv/img/vmlinuz");
    assert_eq!(b.initrd.as_deref(), Some("/srv/img/initrd.img"));
    // Kernel and initrd are reads of their pool, like attached disks.
    assert_eq!(r.pools_read, vec!["images".to_string()]);
    assert!(r.host_paths.is_empty(), "{:?}", r.host_paths);
    assert_eq!(r.accel, Accel::Tcg);
    let x = xml(&r, domain_type(r.accel, true).unwrap());
    assert!(x.starts_with("<domain type='qemu'>"), "{x}");
    assert!(
        x.contains(
            "    <kernel>/srv/img/vmlinuz</kernel>\n    <initrd>/srv/img/initrd.img</initrd>\n    \
             <cmdline>root=/dev/vda rw console=ttyS0,115200</cmdline>\n  </os>"
        ),
        "{x}"
    );
    assert!(x.contains("<model fallback='allow'>qemu64</model>"), "{x}");
    assert!(x.contains("<target dev='vda' bus='virtio'/>"), "{x}");
    assert!(x.contains("<target dev='sda' bus='scsi'/>"), "{x}");
    assert!(x.contains("<target type='virtio' name='org.qemu.guest_agent.0'/>"));
}

#[test]
fn kernel_files_outside_the_pools_are_host_paths() {
    let r = run(json!({"boot": {"kernel": "/boot/vmlinuz-6.1"}})).unwrap();
    assert_eq!(r.host_paths, vec!["/boot/vmlinuz-6.1".to_string()]);
    assert!(r.pools_read.is_empty());
    let x = xml(&r, "kvm");
    assert!(
        x.contains("<kernel>/boot/vmlinuz-6.1</kernel>\n  </os>"),
        "{x}"
    );
    assert!(!x.contains("<initrd>") && !x.contains("<cmdline>"), "{x}");
    // A link in a pool is the file it leads to.
    let r = run(json!({"storage": {"default_pool": "images"},
        "boot": {"kernel": "vmlinuz", "initrd": "evil"}}))
    .unwrap();
    assert_eq!(
        r.kernel_boot.unwrap().initrd.as_deref(),
        Some("/etc/shadow")
    );
    assert_eq!(r.host_paths, vec!["/etc/shadow".to_string()]);
    assert_eq!(r.pools_read, vec!["images".to_string()]);
}

#[test]
fn kernel_files_must_exist_and_be_spelled_plainly() {
    let e = run(json!({"boot": {"kernel": "/boot/nope"}})).unwrap_err();
    assert!(
        matches!(e, Error::NotFound(ref m) if m == "boot.kernel: /boot/nope does not exist"),
        "{e}"
    );
    let e = run(json!({"storage": {"default_pool": "images"},
        "boot": {"kernel": "vmlinuz", "initrd": "nope.img"}}))
    .unwrap_err();
    assert!(
        e.to_string().contains("boot.initrd: /srv/img/nope.img"),
        "{e}"
    );
    assert!(err(json!({"boot": {"kernel": "vmlinuz"}})).contains("boot.kernel"));
    assert!(err(json!({"boot": {"kernel": "/boot/../etc/shadow"}})).contains("boot.kernel"));
    assert!(err(json!({"boot": {"initrd": "/boot/initrd"}})).contains("kernel"));
    assert!(err(json!({"boot": {"kernel": "/boot/vmlinuz-6.1", "dtb": "x"}})).contains("dtb"));
}

#[test]
fn the_command_line_is_one_line_of_at_most_4_kib() {
    let with = |c: &str| json!({"boot": {"kernel": "/boot/vmlinuz-6.1", "cmdline": c}});
    let ok = "x".repeat(MAX_CMDLINE_BYTES);
    assert!(run(with(&ok)).is_ok());
    let e = err(with(&format!("{ok}y")));
    assert!(e.contains("boot.cmdline"), "{e}");
    let e = err(with("root=/dev/vda\ninit=/bin/sh"));
    assert!(e.contains("boot.cmdline"), "{e}");
    // Bytes count, not characters (the schema counts characters).
    let e = resolve_boot(
        &Host::new(),
        &BootSpec {
            kernel: "/boot/vmlinuz-6.1".into(),
            initrd: None,
            cmdline: Some("é".repeat(MAX_CMDLINE_BYTES / 2 + 1)),
        },
        None,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("boot.cmdline: "), "{e}");
    // Markup is escaped, never interpreted.
    let r = run(with("a</cmdline><kernel>/etc/shadow</kernel>")).unwrap();
    let x = xml(&r, "kvm");
    assert!(
        x.contains("<cmdline>a&lt;/cmdline&gt;&lt;kernel&gt;/etc/shadow&lt;/kernel&gt;</cmdline>"),
        "{x}"
    );
}

#[test]
fn accel_is_part_of_the_spec() {
    for a in ["auto", "kvm", "tcg"] {
        assert!(run(json!({"accel": a})).is_ok(), "{a}");
    }
    assert_eq!(run(json!({})).unwrap().accel, Accel::Auto);
    assert!(err(json!({"accel": "hvf"})).contains("accel"));
}
