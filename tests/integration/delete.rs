//! Delete removes only storage that belongs to the VM alone, and says why it
//! kept the rest — unlike `virsh undefine --remove-all-storage`.

use std::collections::HashMap;
use std::path::Path;

use zbus::{Proxy, Variant};

use crate::common::*;

type Pool = TestPool;

fn file_disk(path: &str, dev: &str, extra: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='{}'/><source file='{path}'/>\
         <target dev='{dev}' bus='virtio'/>{extra}</disk>",
        if path.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        }
    )
}

async fn delete(
    conn: &zbus::Connection,
    path: &str,
    opts: &[(&str, Variant<'_>)],
) -> Result<(Vec<String>, Vec<(String, String)>), String> {
    let p = Proxy::new(conn, BUS_NAME, path.to_owned(), VM)
        .await
        .unwrap();
    let opts: HashMap<&str, &Variant<'_>> = opts.iter().map(|(k, v)| (*k, v)).collect();
    p.call("Delete", &(opts,)).await.map_err(error_name)
}

fn reason<'a>(kept: &'a [(String, String)], path: &str) -> &'a str {
    kept.iter()
        .find(|(p, _)| p == path)
        .map(|(_, r)| r.as_str())
        .unwrap_or_else(|| panic!("{path} not reported as kept: {kept:?}"))
}

#[tokio::test]
async fn delete_removes_only_storage_that_is_the_vms_alone() {
    let conn = bus().await;
    let pool = Pool::new("delpool");
    let own = pool.volume("own.qcow2", "qcow2");
    let shared = pool.volume("shared.qcow2", "qcow2");
    let shareable = pool.volume("shareable.raw", "raw");
    let media = pool.volume("media.iso", "raw");
    let base = pool.volume("base.qcow2", "qcow2");
    let overlay = format!("{}/overlay.qcow2", pool.dir);
    let st = std::process::Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &overlay,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    pool.refresh();
    let outside = format!("/var/lib/vapor-tests/outside-{}.raw", unique_name("f"));
    std::fs::write(&outside, b"not in a pool").unwrap();

    let disks = [
        file_disk(&own, "vda", ""),
        file_disk(&shared, "vdb", ""),
        file_disk(&shareable, "vdc", "<shareable/>"),
        file_disk(&outside, "vdd", ""),
        file_disk(&base, "vde", ""),
        format!(
            "<disk type='file' device='cdrom'><source file='{media}'/>\
             <target dev='sda' bus='sata'/><readonly/></disk>"
        ),
    ]
    .concat();
    let a = TestDomain::define_with("del-a", &disks);
    let b = TestDomain::define_with("del-b", &file_disk(&shared, "vda", ""));
    wait_for_object(&conn, &a.path()).await;

    // None of these disks was created by vapord: only the explicit
    // remove_foreign_storage (root here, so polkit is not asked) reaches them.
    let (removed, kept) = delete(&conn, &a.path(), &[("remove_foreign_storage", true.into())])
        .await
        .unwrap();
    assert_eq!(removed, vec![own.clone()]);
    assert!(!Path::new(&own).exists());
    assert!(reason(&kept, &shared).contains(&format!("also used by VM '{}'", b.name)));
    assert_eq!(reason(&kept, &shareable), "shareable disk");
    assert_eq!(reason(&kept, &media), "cdrom media is never deleted");
    assert_eq!(
        reason(&kept, &outside),
        "not a volume in a libvirt storage pool"
    );
    assert!(reason(&kept, &base).contains("backing file of volume"));
    for p in [&shared, &shareable, &media, &outside, &base, &overlay] {
        assert!(Path::new(p).exists(), "{p} must survive");
    }
    assert!(!virsh_quiet(&["dominfo", &a.name]));
    assert!(
        virsh_quiet(&["dominfo", &b.name]),
        "the other VM is untouched"
    );
    let _ = std::fs::remove_file(&outside);
}

#[tokio::test]
async fn volumes_vapord_created_are_removed_even_when_they_are_cdroms() {
    let conn = bus().await;
    let pool = Pool::new("seedpool");
    let seed = pool.volume("seed.iso", "raw");
    let disk = pool.volume("root.qcow2", "qcow2");
    let d = TestDomain::define_with(
        "del-seed",
        &format!(
            "{}<disk type='file' device='cdrom'><source file='{seed}'/>\
             <target dev='sda' bus='sata'/><readonly/></disk>",
            file_disk(&disk, "vda", "")
        ),
    );
    set_owned_volumes(&d.name, &[&seed, &disk]);
    wait_for_object(&conn, &d.path()).await;
    let (mut removed, kept) = delete(&conn, &d.path(), &[("remove_storage", true.into())])
        .await
        .unwrap();
    removed.sort();
    let mut want = vec![disk.clone(), seed.clone()];
    want.sort();
    assert_eq!(removed, want, "kept: {kept:?}");
    assert!(!Path::new(&seed).exists() && !Path::new(&disk).exists());
}

#[tokio::test]
async fn delete_without_remove_storage_keeps_every_disk_and_says_so() {
    let conn = bus().await;
    let pool = Pool::new("keeppool");
    let own = pool.volume("own.qcow2", "qcow2");
    let d = TestDomain::define_with("del-keep", &file_disk(&own, "vda", ""));
    wait_for_object(&conn, &d.path()).await;
    let (removed, kept) = delete(&conn, &d.path(), &[]).await.unwrap();
    assert!(removed.is_empty());
    assert!(reason(&kept, &own).contains("remove_storage"));
    assert!(Path::new(&own).exists());
    assert!(!virsh_quiet(&["dominfo", &d.name]));
}

#[tokio::test]
async fn deleting_a_running_vm_needs_force() {
    let conn = bus().await;
    let d = TestDomain::define("del-run");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    vm_call(&conn, &path, "Start").await.unwrap();
    let err = delete(&conn, &path, &[]).await.unwrap_err();
    assert!(
        err.contains("InvalidState") && err.contains("force"),
        "{err}"
    );
    assert_eq!(virsh(&["domstate", &d.name]).trim(), "running");
    delete(&conn, &path, &[("force", true.into())])
        .await
        .unwrap();
    assert!(!virsh_quiet(&["dominfo", &d.name]));
}

#[tokio::test]
async fn delete_options_are_validated_before_anything_happens() {
    let conn = bus().await;
    let d = TestDomain::define("del-opts");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    let err = delete(&conn, &path, &[("remove_everything", true.into())])
        .await
        .unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.InvalidArgument")
            && err.contains("options.remove_everything"),
        "{err}"
    );
    let err = delete(&conn, &path, &[("force", "yes".into())])
        .await
        .unwrap_err();
    assert!(
        err.contains("InvalidArgument") && err.contains("options.force: must be a boolean"),
        "{err}"
    );
    assert!(virsh_quiet(&["dominfo", &d.name]), "nothing was deleted");
}

#[tokio::test]
async fn storage_shared_under_another_spelling_or_through_a_stopped_overlay_is_kept() {
    let conn = bus().await;
    let pool = Pool::new("spellpool");
    let base = pool.volume("base.qcow2", "qcow2");
    let data = pool.volume("data.qcow2", "qcow2");
    let own = pool.volume("own.qcow2", "qcow2");
    let tag = unique_name("spell");
    // VM B reaches data.qcow2 through a symlinked directory.
    let link = format!("/var/lib/vapor-tests/{tag}-link");
    std::os::unix::fs::symlink(&pool.dir, &link).unwrap();
    // Stopped VM C runs on an overlay outside any pool, backed by base.qcow2.
    let overlay = format!("/var/lib/vapor-tests/{tag}-overlay.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &overlay,
        ])
        .status()
        .unwrap();
    assert!(st.success());

    let a = TestDomain::define_with(
        "spell-a",
        &[
            file_disk(&base, "vda", ""),
            file_disk(&data, "vdb", ""),
            file_disk(&own, "vdc", ""),
        ]
        .concat(),
    );
    let b = TestDomain::define_with(
        "spell-b",
        &file_disk(&format!("{link}/data.qcow2"), "vda", ""),
    );
    let c = TestDomain::define_with("spell-c", &file_disk(&overlay, "vda", ""));
    wait_for_object(&conn, &a.path()).await;

    let (removed, kept) = delete(&conn, &a.path(), &[("remove_foreign_storage", true.into())])
        .await
        .unwrap();
    assert_eq!(removed, vec![own.clone()]);
    assert!(
        reason(&kept, &data).contains(&format!("also used by VM '{}'", b.name)),
        "{kept:?}"
    );
    assert!(
        reason(&kept, &base).contains(&format!("also used by VM '{}'", c.name)),
        "{kept:?}"
    );
    assert!(Path::new(&base).exists() && Path::new(&data).exists());
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&overlay);
}

#[tokio::test]
async fn remove_storage_keeps_volumes_that_were_only_attached() {
    let conn = bus().await;
    let pool = Pool::new("attpool");
    let shared = pool.volume("common-data.qcow2", "qcow2");
    let own = pool.volume("own.qcow2", "qcow2");
    let d = TestDomain::define_with(
        "del-att",
        &[file_disk(&own, "vda", ""), file_disk(&shared, "vdb", "")].concat(),
    );
    set_owned_volumes(&d.name, &[&own]);
    wait_for_object(&conn, &d.path()).await;
    let (removed, kept) = delete(&conn, &d.path(), &[("remove_storage", true.into())])
        .await
        .unwrap();
    assert_eq!(removed, vec![own.clone()]);
    assert_eq!(
        reason(&kept, &shared),
        "not created by vapord for this VM (remove_foreign_storage deletes it)"
    );
    assert!(Path::new(&shared).exists(), "the attached disk survives");
}

#[tokio::test]
async fn remove_foreign_storage_needs_its_own_polkit_action() {
    let conn = bus().await;
    let pool = Pool::new("forpool");
    let data = pool.volume("data.qcow2", "qcow2");
    let d = TestDomain::define_with("del-for", &file_disk(&data, "vda", ""));
    wait_for_object(&conn, &d.path()).await;
    // vapor-alice may delete VMs (vm-delete) but not others' storage.
    let out = busctl_as(
        ALICE,
        &d.path(),
        "Delete",
        &["a{sv}", "1", "remove_foreign_storage", "b", "true"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(err.contains("vm-delete-foreign-storage"), "{err}");
    assert!(virsh_quiet(&["dominfo", &d.name]), "the VM is untouched");
    assert!(Path::new(&data).exists());
    // Plain remove_storage is hers, and keeps the attached disk.
    delete_with_storage(ALICE, &d.path());
    assert!(!virsh_quiet(&["dominfo", &d.name]));
    assert!(Path::new(&data).exists(), "the attached disk survives");
}
