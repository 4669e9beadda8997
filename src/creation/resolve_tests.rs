//! Unit tests of path resolution, boot ISO conversion and target assignment
//! against a fake host with two pools.

use std::collections::HashMap;

use super::*;
use crate::creation::spec::{StorageSpec, VmSpec};

struct FakeHost {
    pools: Vec<PoolInfo>,
    volumes: HashMap<String, VolumeInfo>,
    files: Vec<String>,
    /// Symlinks: path → target (absolute).
    links: HashMap<String, String>,
    /// Backing chains by image path.
    chains: HashMap<String, Vec<String>>,
    host: HostLimits,
}

impl FakeHost {
    fn new() -> Self {
        let pool = |name: &str, target: &str, active| PoolInfo {
            name: name.into(),
            kind: "dir".into(),
            target: target.into(),
            active,
            capacity_bytes: 1000 << 30,
            available_bytes: 100 << 30,
        };
        let vol = |format: &str, pool: &str| VolumeInfo {
            format: format.into(),
            capacity_bytes: 2 << 30,
            pool: Some(pool.into()),
        };
        FakeHost {
            pools: vec![
                pool("fast-nvme", "/srv/nvme", true),
                pool("bulk-storage", "/srv/bulk", true),
                pool("offline", "/srv/offline", false),
            ],
            volumes: [
                ("/srv/nvme/ubuntu.iso".to_string(), vol("iso", "fast-nvme")),
                (
                    "/srv/nvme/base.qcow2".to_string(),
                    vol("qcow2", "fast-nvme"),
                ),
                (
                    "/srv/bulk/golden.raw".to_string(),
                    vol("raw", "bulk-storage"),
                ),
            ]
            .into(),
            files: vec![
                "/mnt/share/common-data.qcow2".into(),
                "/srv/nvme/taken.qcow2".into(),
                "/etc/shadow".into(),
            ],
            // A planted link in a pool to a host file, one to another
            // pool's volume, and the libvirt volume for the first (libvirt
            // lists links in dir pools as volumes).
            links: [
                ("/srv/nvme/evil".to_string(), "/etc/shadow".to_string()),
                (
                    "/srv/nvme/golden-link.raw".to_string(),
                    "/srv/bulk/golden.raw".to_string(),
                ),
            ]
            .into(),
            chains: HashMap::new(),
            host: HostLimits {
                memory_mib: 32768,
                max_vcpus: 16,
            },
        }
    }
}

impl StorageView for FakeHost {
    fn pool(&self, name: &str) -> Option<PoolInfo> {
        self.pools.iter().find(|p| p.name == name).cloned()
    }
    fn pools(&self) -> Vec<PoolInfo> {
        self.pools.clone()
    }
    fn volume(&self, path: &str) -> Option<VolumeInfo> {
        self.volumes.get(path).cloned().or_else(|| {
            // libvirt lists a link in a dir pool as a volume of that pool.
            self.links.get(path).map(|_| VolumeInfo {
                format: "raw".into(),
                capacity_bytes: 1 << 20,
                pool: Some("fast-nvme".into()),
            })
        })
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
    fn backing_chain(&self, path: &str) -> Result<Vec<String>> {
        Ok(self.chains.get(path).cloned().unwrap_or_default())
    }
    fn host_limits(&self) -> HostLimits {
        self.host
    }
}

fn defaults() -> Defaults {
    Defaults {
        cpu_mode: "none".into(),
        limits: Default::default(),
    }
}

fn spec(json: serde_json::Value) -> VmSpec {
    serde_json::from_value(json).unwrap()
}

fn run(json: serde_json::Value) -> Result<Resolved> {
    resolve(&FakeHost::new(), &spec(json), "vm1", &defaults())
}

fn err(json: serde_json::Value) -> String {
    run(json).unwrap_err().to_string()
}

#[test]
fn relative_paths_resolve_against_the_disk_pool_else_the_default_pool() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 10, "path": "system.qcow2"},
            {"action": "create", "size": 50, "path": "data.qcow2", "storage_pool": "bulk-storage"},
            {"action": "attach", "path": "/mnt/share/common-data.qcow2"}
        ]}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].path, "/srv/nvme/system.qcow2");
    assert_eq!(r.disks[0].pool.as_deref(), Some("fast-nvme"));
    assert_eq!(r.disks[1].path, "/srv/bulk/data.qcow2");
    assert_eq!(r.disks[2].path, "/mnt/share/common-data.qcow2");
    assert_eq!(r.disks[2].format, "qcow2");
    assert_eq!(
        r.pools_used,
        vec!["bulk-storage".to_string(), "fast-nvme".to_string()]
    );
}

#[test]
fn empty_path_gets_a_generated_name_in_the_pool() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 10}
        ]}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].path, "/srv/nvme/vm1-disk0.qcow2");
    assert_eq!(r.disks[0].volume.as_deref(), Some("vm1-disk0.qcow2"));
}

#[test]
fn relative_path_without_any_pool_is_refused_naming_the_field() {
    let e = err(
        serde_json::json!({"storage": {"disks": [{"action": "create", "size": 1, "path": "a.qcow2"}]}}),
    );
    assert!(
        e.starts_with("storage.disks[0].path: 'a.qcow2' is relative"),
        "{e}"
    );
}

#[test]
fn missing_and_inactive_pools_are_refused() {
    let e = run(serde_json::json!({"storage": {"default_pool": "nope"}})).unwrap_err();
    assert!(
        matches!(e, Error::NotFound(ref m) if m.contains("storage pool 'nope' does not exist")),
        "{e}"
    );
    let e = run(serde_json::json!({"storage": {"disks": [
        {"action": "create", "size": 1, "path": "x.qcow2", "storage_pool": "offline"}]}}))
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidState(ref m) if m.contains("not active")),
        "{e}"
    );
}

#[test]
fn creating_over_an_existing_file_is_a_conflict() {
    let e = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
        {"action": "create", "size": 1, "path": "taken.qcow2"}]}}),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(ref m) if m.starts_with("storage.disks[0].path")),
        "{e}"
    );
}

#[test]
fn path_traversal_in_a_relative_path_is_refused() {
    let e = err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
        {"action": "create", "size": 1, "path": "../etc/x.qcow2"}]}}),
    );
    assert!(e.contains("plain file name"), "{e}");
}

#[test]
fn boot_iso_becomes_readonly_cdrom_on_virtio_scsi_for_q35() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "boot_iso": "ubuntu.iso",
        "disks": [{"action": "create", "size": 10}]}}),
    )
    .unwrap();
    let cd = r.disks.last().unwrap();
    assert_eq!(cd.field, "storage.boot_iso");
    assert_eq!(cd.path, "/srv/nvme/ubuntu.iso");
    assert_eq!(
        (cd.device.as_str(), cd.bus.as_str(), cd.target.as_str()),
        ("cdrom", "scsi", "sda")
    );
    assert!(cd.readonly);
    assert_eq!(cd.format, "raw");
    assert_eq!(cd.boot_order, Some(1));
    assert_eq!(r.disks[0].boot_order, Some(2));
}

#[test]
fn boot_iso_becomes_ide_cdrom_on_i440fx_with_the_next_free_target() {
    let r = run(
        serde_json::json!({"machine": "pc", "storage": {"default_pool": "fast-nvme",
        "boot_iso": "ubuntu.iso", "disks": [
            {"action": "create", "size": 1, "bus": "ide"},
            {"action": "create", "size": 1, "bus": "ide", "target": "hdb"}]}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].target, "hda");
    assert_eq!(r.disks[2].bus, "ide");
    assert_eq!(r.disks[2].target, "hdc");
}

#[test]
fn boot_iso_already_attached_as_cdrom_is_refused() {
    let e = err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "boot_iso": "ubuntu.iso",
        "disks": [{"action": "attach", "path": "/srv/nvme/ubuntu.iso", "device": "cdrom"}]}}),
    );
    assert!(
        e.contains("storage.boot_iso")
            && e.contains("already attached as a cdrom in storage.disks[0]"),
        "{e}"
    );
}

#[test]
fn missing_boot_iso_is_not_found() {
    let e =
        run(serde_json::json!({"storage": {"default_pool": "fast-nvme", "boot_iso": "nope.iso"}}))
            .unwrap_err();
    assert!(
        matches!(e, Error::NotFound(ref m) if m.contains("/srv/nvme/nope.iso")),
        "{e}"
    );
}

#[test]
fn targets_are_assigned_per_bus_and_duplicates_refused() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
        {"action": "create", "size": 1, "target": "vdb"},
        {"action": "create", "size": 1},
        {"action": "create", "size": 1, "bus": "sata"}]}}),
    )
    .unwrap();
    let t: Vec<_> = r.disks.iter().map(|d| d.target.as_str()).collect();
    assert_eq!(t, ["vdb", "vda", "sda"]);
    let e = err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
        {"action": "create", "size": 1, "target": "vda"},
        {"action": "create", "size": 1, "target": "vda"}]}}),
    );
    assert!(
        e.contains("storage.disks[1].target: vda is used twice"),
        "{e}"
    );
}

#[test]
fn backing_overlay_takes_the_source_format_and_grows_only() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
        {"action": "backing", "source": "base.qcow2", "size": 20}]}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].format, "qcow2");
    assert_eq!(r.disks[0].source.as_deref(), Some("/srv/nvme/base.qcow2"));
    assert_eq!(r.disks[0].source_format.as_deref(), Some("qcow2"));
    let e = err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
        {"action": "backing", "source": "base.qcow2", "size": 1}]}}),
    );
    assert!(
        e.contains("storage.disks[0].size") && e.contains("can only grow"),
        "{e}"
    );
}

#[test]
fn clone_needs_an_existing_volume() {
    let e = run(
        serde_json::json!({"storage": {"default_pool": "bulk-storage", "disks": [
        {"action": "clone", "source": "missing.raw"}]}}),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::NotFound(ref m) if m.starts_with("storage.disks[0].source")),
        "{e}"
    );
    let r = run(
        serde_json::json!({"storage": {"default_pool": "bulk-storage", "disks": [
        {"action": "clone", "source": "golden.raw"}]}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].format, "raw");
}

#[test]
fn size_rules_depend_on_the_action() {
    let e = err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [{"action": "create"}]}}),
    );
    assert!(
        e.contains("storage.disks[0].size: is required for action create"),
        "{e}"
    );
    let e = err(serde_json::json!({"storage": {"disks": [
        {"action": "attach", "path": "/mnt/share/common-data.qcow2", "size": 3}]}}));
    assert!(e.contains("storage.disks[0].size: only create"), "{e}");
}

#[test]
fn cloud_init_seed_goes_to_the_default_pool_on_the_next_cdrom_target() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "boot_iso": "ubuntu.iso"},
        "cloud_init": {"user_data": "#cloud-config\n"}}),
    )
    .unwrap();
    let seed = r.cloud_init_seed.unwrap();
    assert_eq!(seed.path, "/srv/nvme/vm1-cidata.iso");
    assert_eq!(seed.target, "sdb");
    assert_eq!(r.pools_used, vec!["fast-nvme".to_string()]);
}

#[test]
fn secure_boot_needs_uefi_and_q35() {
    let r = run(serde_json::json!({"secure_boot": true})).unwrap();
    assert!(r.uefi);
    assert!(
        err(serde_json::json!({"secure_boot": true, "machine": "pc"}))
            .contains("needs machine q35")
    );
    assert!(err(serde_json::json!({"secure_boot": true, "uefi": false})).contains("needs uefi"));
    let _ = StorageSpec::default();
}

#[test]
fn a_pool_link_to_a_host_file_is_that_host_file() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "boot_iso": "evil", "disks": [
            {"action": "attach", "path": "evil", "device": "disk"}
        ]}}),
    );
    // Both are judged as the file they lead to, exactly as if the request
    // had said /etc/shadow: a host path (storage-host-path), not a pool read.
    let r = r.unwrap();
    assert_eq!(r.disks[0].path, "/etc/shadow");
    assert_eq!(r.disks[1].path, "/etc/shadow");
    assert_eq!(r.host_paths, vec!["/etc/shadow".to_string()]);
    assert!(r.pools_read.is_empty(), "{:?}", r.pools_read);
}

#[test]
fn a_pool_link_to_another_pool_reads_that_pool() {
    let r = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "attach", "path": "golden-link.raw"}
        ]}}),
    )
    .unwrap();
    assert_eq!(r.disks[0].path, "/srv/bulk/golden.raw");
    assert_eq!(r.pools_read, vec!["bulk-storage".to_string()]);
    assert!(r.host_paths.is_empty());
}

#[test]
fn clone_and_backing_sources_through_links_to_host_files_are_refused() {
    for action in ["clone", "backing"] {
        let e = run(
            serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
                {"action": action, "source": "evil", "path": "copy.qcow2"}
            ]}}),
        )
        .unwrap_err();
        assert!(
            matches!(e, Error::NotFound(ref m) if m == "storage.disks[0].source: /etc/shadow is not a volume in a libvirt storage pool"),
            "{action}: {e}"
        );
    }
}

#[test]
fn a_new_volume_never_follows_a_link_at_its_name() {
    let e = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 1, "path": "evil"}
        ]}}),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Conflict(ref m) if m == "storage.disks[0].path: /srv/nvme/evil already exists"),
        "{e}"
    );
}

#[test]
fn backing_chains_are_judged_file_by_file() {
    let mut host = FakeHost::new();
    host.chains.insert(
        "/srv/nvme/base.qcow2".into(),
        vec!["/srv/bulk/golden.raw".into(), "/var/lib/secret.raw".into()],
    );
    let r = resolve(
        &host,
        &spec(
            serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
                {"action": "attach", "path": "base.qcow2"}
            ]}}),
        ),
        "vm1",
        &defaults(),
    )
    .unwrap();
    assert_eq!(
        r.pools_read,
        vec!["bulk-storage".to_string(), "fast-nvme".to_string()]
    );
    assert_eq!(r.host_paths, vec!["/var/lib/secret.raw".to_string()]);
}

#[test]
fn other_image_formats_are_not_given_to_guests() {
    let mut host = FakeHost::new();
    host.volumes.insert(
        "/srv/nvme/disk.vmdk".into(),
        VolumeInfo {
            format: "vmdk".into(),
            capacity_bytes: 1 << 30,
            pool: Some("fast-nvme".into()),
        },
    );
    let e = resolve(
        &host,
        &spec(
            serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
                {"action": "attach", "path": "disk.vmdk"}
            ]}}),
        ),
        "vm1",
        &defaults(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("storage.disks[0].format: /srv/nvme/disk.vmdk is a vmdk image"),
        "{e}"
    );
}

fn limits_err(json: serde_json::Value, limits: crate::config::Limits) -> Error {
    let d = Defaults {
        cpu_mode: "none".into(),
        limits,
    };
    resolve(&FakeHost::new(), &spec(json), "vm1", &d).unwrap_err()
}

#[test]
fn the_hosts_own_limits_apply_by_default() {
    let none = crate::config::Limits::default();
    let e = limits_err(serde_json::json!({"memory": 65536}), none.clone());
    assert_eq!(
        e,
        Error::LimitExceeded("memory: 65536 MiB is more than 32768 MiB (the host's memory)".into())
    );
    let e = limits_err(serde_json::json!({"vcpus": 17}), none.clone());
    assert_eq!(
        e,
        Error::LimitExceeded("vcpus: 17 is more than 16 (the hypervisor's maximum)".into())
    );
    // A sparse disk larger than its whole pool (1000 GiB here) is thin
    // provisioning, not a problem.
    let ok = resolve(
        &FakeHost::new(),
        &spec(
            serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
                {"action": "create", "size": 4096}
            ]}}),
        ),
        "vm1",
        &defaults(),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn configured_limits_are_enforced_and_named() {
    let limits = crate::config::Limits {
        max_disk_gib: Some(100),
        max_disks: Some(1),
        max_memory_mib: Some(4096),
        max_vcpus: Some(2),
    };
    let e = limits_err(serde_json::json!({"memory": 8192}), limits.clone());
    assert!(e.to_string().contains("limits.max_memory_mib"), "{e}");
    let e = limits_err(serde_json::json!({"vcpus": 4}), limits.clone());
    assert!(e.to_string().contains("limits.max_vcpus"), "{e}");
    let e = limits_err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 101}
        ]}}),
        limits.clone(),
    );
    assert!(
        e.to_string()
            .starts_with("storage.disks[0].size: 101 GiB is more than 100 GiB"),
        "{e}"
    );
    let e = limits_err(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 1}, {"action": "create", "size": 1}
        ]}}),
        limits,
    );
    assert!(e.to_string().contains("limits.max_disks"), "{e}");
}

#[test]
fn preallocation_must_fit_in_the_pools_free_space() {
    // 100 GiB free in each pool; sparse disks may be larger than that.
    let ok = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 500},
            {"action": "create", "size": 60, "preallocate": true}
        ]}}),
    )
    .unwrap();
    assert!(!ok.disks[0].preallocate && ok.disks[1].preallocate);
    let e = run(
        serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "create", "size": 60, "preallocate": true},
            {"action": "create", "size": 60, "preallocate": true}
        ]}}),
    )
    .unwrap_err();
    assert_eq!(
        e,
        Error::LimitExceeded(
            "storage.disks: the preallocated disks need 120 GiB in pool 'fast-nvme', which has 100 GiB free".into()
        )
    );
    let e = err(serde_json::json!({"storage": {"disks": [
        {"action": "attach", "path": "/mnt/share/common-data.qcow2", "preallocate": true}
    ]}}));
    assert!(e.starts_with("storage.disks[0].preallocate:"), "{e}");
}

#[test]
fn device_pools_keep_their_volume_links() {
    // An LVM pool: /dev/vg0/data is a link the system made to /dev/dm-3.
    let mut host = FakeHost::new();
    host.pools.push(PoolInfo {
        name: "lvm".into(),
        kind: "logical".into(),
        target: "/dev/vg0".into(),
        active: true,
        capacity_bytes: 100 << 30,
        available_bytes: 10 << 30,
    });
    host.links
        .insert("/dev/vg0/data".into(), "/dev/dm-3".into());
    host.volumes.insert(
        "/dev/vg0/data".into(),
        VolumeInfo {
            format: "raw".into(),
            capacity_bytes: 1 << 30,
            pool: Some("lvm".into()),
        },
    );
    let r = resolve(
        &host,
        &spec(serde_json::json!({"storage": {"disks": [
            {"action": "attach", "path": "data", "storage_pool": "lvm"}
        ]}})),
        "vm1",
        &defaults(),
    )
    .unwrap();
    assert_eq!(r.disks[0].path, "/dev/vg0/data");
    assert_eq!(r.pools_read, vec!["lvm".to_string()]);
    assert!(r.host_paths.is_empty());
}

use proptest::{prop_assert, prop_assert_eq};

proptest::proptest! {
    /// Whatever a request writes as a path, it is refused or lands where the
    /// rules say: a plain name in its pool's directory, an absolute path as
    /// written (no '.', '..' or '//' tricks), or — through a link — the link's
    /// real target, judged as a host path.
    #[test]
    fn any_spelled_path_is_refused_or_lands_where_the_rules_say(
        path in "[a-z./]{1,12}|/[a-z./]{1,12}|evil|golden-link.raw"
    ) {
        let r = run(serde_json::json!({"storage": {"default_pool": "fast-nvme", "disks": [
            {"action": "attach", "path": path}
        ]}}));
        if let Ok(r) = r {
            let got = &r.disks[0].path;
            prop_assert!(!got.contains("/./") && !got.contains("/../") && !got.contains("//"), "{got}");
            if path.starts_with('/') {
                prop_assert_eq!(got, &path);
            } else if let Some(target) = FakeHost::new().links.get(&format!("/srv/nvme/{path}")) {
                prop_assert_eq!(got, target);
            } else {
                prop_assert_eq!(got, &format!("/srv/nvme/{path}"));
                prop_assert!(!path.contains('/'));
            }
            // Whatever is read is authorized: a pool read or a host path.
            let in_pool = r.pools_read.iter().any(|p| got.starts_with(&format!("/srv/{}", if p == "fast-nvme" { "nvme" } else { "bulk" })));
            prop_assert!(in_pool || r.host_paths.contains(got), "{got}: {:?} {:?}", r.pools_read, r.host_paths);
        }
    }
}
