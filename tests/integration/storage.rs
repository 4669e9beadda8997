//! Storage pools, volumes, uploads and downloads through the bus, against
//! the real libvirtd, polkitd and test users.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use zbus::{Connection, OwnedObjectPath, OwnedVariant, Proxy};

use crate::common::*;

pub const POOL: &str = "org.vapor.Virtualization.StoragePool";
pub const VOLUME: &str = "org.vapor.Virtualization.Volume";

async fn proxy(conn: &Connection, path: &str, iface: &'static str) -> Proxy<'static> {
    Proxy::new(conn, BUS_NAME, path.to_owned(), iface)
        .await
        .unwrap()
}

pub async fn props(conn: &Connection, path: &str, iface: &str) -> HashMap<String, OwnedVariant> {
    let p = proxy(conn, path, "org.freedesktop.DBus.Properties").await;
    p.call("GetAll", &(iface,)).await.unwrap()
}

pub fn paths(v: &OwnedVariant) -> Vec<String> {
    Vec::<OwnedObjectPath>::try_from(v.clone())
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// Wait until `f` holds, or fail naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + EVENT_WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn object_exists(conn: &Connection, path: &str, iface: &str) -> bool {
    let Ok(p) = Proxy::new(
        conn,
        BUS_NAME,
        path.to_owned(),
        "org.freedesktop.DBus.Properties",
    )
    .await
    else {
        return false;
    };
    p.call::<_, _, HashMap<String, OwnedVariant>>("GetAll", &(iface,))
        .await
        .is_ok()
}

/// The object paths GetManagedObjects lists now.
pub async fn managed_paths(conn: &Connection) -> Vec<String> {
    let m: HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>> =
        proxy(conn, ROOT, "org.freedesktop.DBus.ObjectManager")
            .await
            .call("GetManagedObjects", &())
            .await
            .unwrap();
    m.keys().map(|k| k.to_string()).collect()
}

fn pool_object(uuid: &str) -> String {
    format!("{ROOT}/pool/{}", uuid.replace('-', "_"))
}

/// A pool spec under vapord's pool root (no storage-host-path needed).
fn pool_spec(name: &str) -> String {
    format!(r#"{{"name":"{name}","type":"dir","target":"/var/lib/vapor/pools/{name}"}}"#)
}

fn reply_path(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

fn refused(out: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was allowed");
    assert!(
        err.contains("not authorized") || err.contains("authentication is required"),
        "{what}: {err}"
    );
}

fn busctl(
    user: &str,
    path: &str,
    iface: &str,
    method: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "busctl",
        "--system",
        "--timeout=120",
        "--allow-interactive-authorization=no",
        "call",
        BUS_NAME,
        path,
        iface,
        method,
    ];
    args.extend_from_slice(extra);
    as_user(user, &args)
}

/// A pool made through vapord as alice; deleted (with its volumes) on drop.
struct AlicePool {
    name: String,
    path: String,
}

impl AlicePool {
    fn new(tag: &str) -> Self {
        let name = unique_name(tag);
        let out = manager_as(ALICE, "CreateStoragePool", &pool_spec(&name));
        let path = reply_path(&out);
        AlicePool { name, path }
    }
}

impl Drop for AlicePool {
    fn drop(&mut self) {
        virsh_quiet(&["pool-destroy", &self.name]);
        virsh_quiet(&["pool-delete", &self.name]);
        virsh_quiet(&["pool-undefine", &self.name]);
        let _ = std::fs::remove_dir_all(format!("/var/lib/vapor/pools/{}", self.name));
    }
}

#[tokio::test]
async fn alice_manages_pools_and_volumes_bob_only_reads() {
    let conn = bus().await;
    // Bob may not create a pool; nothing is left behind.
    let name = unique_name("bobpool");
    refused(
        &manager_as(BOB, "CreateStoragePool", &pool_spec(&name)),
        "bob creating a pool",
    );
    assert!(!virsh_quiet(&["pool-info", &name]));

    let pool = AlicePool::new("alicepool");
    let p = props(&conn, &pool.path, POOL).await;
    assert_eq!(String::try_from(p["Name"].clone()).unwrap(), pool.name);
    assert_eq!(String::try_from(p["State"].clone()).unwrap(), "running");
    assert_eq!(String::try_from(p["Type"].clone()).unwrap(), "dir");

    // Reads are open to everyone.
    let out = as_user(
        BOB,
        &[
            "busctl",
            "--system",
            "call",
            BUS_NAME,
            ROOT,
            MANAGER,
            "ListStoragePools",
        ],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pool.path));

    let spec = r#"{"name":"disk.qcow2","capacity":"64M"}"#;
    refused(
        &busctl(BOB, &pool.path, POOL, "CreateVolume", &["s", spec]),
        "bob creating a volume",
    );
    let vol = reply_path(&busctl(
        ALICE,
        &pool.path,
        POOL,
        "CreateVolume",
        &["s", spec],
    ));
    // The paths methods return are already in GetManagedObjects.
    let listed = managed_paths(&conn).await;
    assert!(
        listed.contains(&vol) && listed.contains(&pool.path),
        "{vol}"
    );
    let v = props(&conn, &vol, VOLUME).await;
    assert_eq!(String::try_from(v["Format"].clone()).unwrap(), "qcow2");
    assert_eq!(u64::try_from(v["CapacityBytes"].clone()).unwrap(), 64 << 20);
    assert_eq!(
        paths(&props(&conn, &pool.path, POOL).await["Volumes"]),
        std::slice::from_ref(&vol)
    );

    refused(
        &busctl(BOB, &vol, VOLUME, "Delete", &[]),
        "bob deleting a volume",
    );
    // Growing is fine; shrinking needs the option.
    let out = busctl(ALICE, &vol, VOLUME, "Resize", &["ta{sv}", "33554432", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shrink"));
    let out = busctl(ALICE, &vol, VOLUME, "Resize", &["ta{sv}", "134217728", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = busctl(ALICE, &vol, VOLUME, "Delete", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the deleted volume's object goes", || async {
        !object_exists(&conn, &vol, VOLUME).await
    })
    .await;

    refused(
        &busctl(BOB, &pool.path, POOL, "Delete", &["a{sv}", "0"]),
        "bob deleting a pool",
    );
    let out = busctl(
        ALICE,
        &pool.path,
        POOL,
        "Delete",
        &["a{sv}", "1", "delete_directory", "b", "true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!virsh_quiet(&["pool-info", &pool.name]));
    assert!(!std::path::Path::new(&format!("/var/lib/vapor/pools/{}", pool.name)).exists());
}

#[tokio::test]
async fn bad_pool_specs_name_the_field_and_leave_nothing() {
    let _conn = bus().await;
    // No pool, whoever asks, in vapord's state or among libvirt's own files.
    let in_state = format!(
        r#"{{"name":"ok","type":"dir","target":"{}/ok"}}"#,
        state_dir()
    );
    for (spec, field) in [
        (in_state.as_str(), "target"),
        (
            r#"{"name":"ok","type":"dir","target":"/var/lib/libvirt/qemu/ok"}"#,
            "target",
        ),
        (
            r#"{"name":"../x","type":"dir","target":"/var/lib/vapor/pools/x"}"#,
            "name",
        ),
        (
            r#"{"name":"a<b>","type":"dir","target":"/var/lib/vapor/pools/x"}"#,
            "name",
        ),
        (
            r#"{"name":"ok","type":"dir","target":"relative/dir"}"#,
            "target",
        ),
        (
            r#"{"name":"ok","type":"dir","target":"/var/lib/vapor/pools/ok","sauce":{}}"#,
            "sauce",
        ),
        (r#"{"name":"ok","type":"nfs4","target":"/x"}"#, "type"),
    ] {
        let out = manager_as(ALICE, "CreateStoragePool", spec);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{spec} was accepted");
        assert!(err.contains(field), "{spec}: {err}");
        assert!(!virsh_quiet(&["pool-info", "ok"]));
    }
}

#[tokio::test]
async fn a_pool_outside_the_pool_roots_needs_the_host_path_action() {
    let _conn = bus().await;
    let name = unique_name("hostpath");
    let spec =
        format!(r#"{{"name":"{name}","type":"dir","target":"/var/lib/vapor-tests/{name}"}}"#);
    // Alice may manage storage, but not put a pool anywhere on the host.
    refused(
        &manager_as(ALICE, "CreateStoragePool", &spec),
        "a pool on a host path",
    );
    assert!(!virsh_quiet(&["pool-info", &name]));
}

#[tokio::test]
async fn pools_made_with_virsh_appear_and_disappear_without_a_restart() {
    let conn = bus().await;
    let pool = TestPool::new("virshpool");
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let path = pool_object(&uuid);
    eventually("a pool made with virsh appears", || {
        object_exists(&conn, &path, POOL)
    })
    .await;
    // A volume made behind vapord's back shows once the pool is refreshed.
    pool.volume("behind.raw", "raw");
    pool.refresh();
    eventually("a volume made with virsh appears", || async {
        props(&conn, &path, POOL).await["Volumes"]
            .to_string()
            .contains("behind")
    })
    .await;
    virsh(&["pool-destroy", &pool.name]);
    eventually("a pool destroyed with virsh disappears", || async {
        !object_exists(&conn, &path, POOL).await
    })
    .await;
}

/// Call a method as root that takes a file descriptor.
async fn upload(
    conn: &Connection,
    pool: &str,
    name: &str,
    file: std::fs::File,
    opts: HashMap<&str, zbus::Variant<'_>>,
) -> zbus::Result<OwnedObjectPath> {
    let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(file));
    proxy(conn, pool, POOL)
        .await
        .call("UploadVolume", &(name, fd, opts))
        .await
}

fn iso_image(path: &str, label: &str) {
    random_file(path, 1);
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(32768)).unwrap();
    let mut pvd = vec![1u8];
    pvd.extend_from_slice(b"CD001");
    pvd.resize(40, 0);
    let mut l = label.as_bytes().to_vec();
    l.resize(32, b' ');
    pvd.extend_from_slice(&l);
    f.write_all(&pvd).unwrap();
}

#[tokio::test]
async fn uploads_and_downloads_go_through_file_descriptors() {
    let conn = bus().await;
    let pool = TestPool::new("upload");
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let path = pool_object(&uuid);
    eventually("the pool appears", || object_exists(&conn, &path, POOL)).await;

    let src = format!("{}/{}.iso", env!("CARGO_TARGET_TMPDIR"), unique_name("src"));
    iso_image(&src, "VAPOR_TEST");
    let file = std::fs::File::open(&src).unwrap();
    let mut opts = HashMap::new();
    opts.insert("format", zbus::Variant::from("iso"));
    let vol = upload(&conn, &path, "image.iso", file, opts).await.unwrap();
    let v = props(&conn, vol.as_str(), VOLUME).await;
    assert_eq!(String::try_from(v["Label"].clone()).unwrap(), "VAPOR_TEST");
    assert_eq!(
        std::fs::read(format!("{}/image.iso", pool.dir)).unwrap(),
        std::fs::read(&src).unwrap()
    );

    // And back, into a file the caller opened.
    let dst = format!("{src}.back");
    let out = std::fs::File::create(&dst).unwrap();
    let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(out));
    let no: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let () = proxy(&conn, vol.as_str(), VOLUME)
        .await
        .call("Download", &(fd, no))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());

    // A descriptor open only for writing cannot be uploaded from.
    let wronly = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
    let e = upload(&conn, &path, "bad.iso", wronly, HashMap::new())
        .await
        .unwrap_err();
    let name = error_name(e);
    assert!(
        name.starts_with("org.vapor.Virtualization.Error.InvalidArgument: fd"),
        "{name}"
    );
    // A name already taken is a conflict, and the existing volume stays.
    let again = std::fs::File::open(&src).unwrap();
    let e = upload(&conn, &path, "image.iso", again, HashMap::new())
        .await
        .unwrap_err();
    let name = error_name(e);
    assert!(
        name.starts_with("org.vapor.Virtualization.Error.Conflict: name"),
        "{name}"
    );
    assert_eq!(pool.files(), ["image.iso"]);
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
}

#[tokio::test]
async fn an_upload_that_ends_early_leaves_no_volume_behind() {
    let conn = bus().await;
    let pool = TestPool::new("shortup");
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let path = pool_object(&uuid);
    eventually("the pool appears", || object_exists(&conn, &path, POOL)).await;

    // A pipe that promises 8 MiB and delivers 1.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = writer.write_all(&vec![7u8; 1 << 20]);
    });
    let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(reader));
    let mut opts = HashMap::new();
    opts.insert("size", zbus::Variant::from(8u64 << 20));
    let r: zbus::Result<OwnedObjectPath> = proxy(&conn, &path, POOL)
        .await
        .call("UploadVolume", &("short.raw", fd, opts))
        .await;
    feeder.join().unwrap();
    assert!(r.is_err(), "a short upload succeeded");
    pool.refresh();
    assert!(pool.files().is_empty(), "left behind: {:?}", pool.files());
}

#[tokio::test]
async fn a_volume_a_vm_uses_cannot_be_deleted_and_names_the_vm() {
    let conn = bus().await;
    let pool = TestPool::new("inuse");
    let disk = pool.volume("base.qcow2", "qcow2");
    let d = TestDomain::define_with("inuse", &disk_device(&disk, "qcow2"));
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let vol = format!("{}/base_2eqcow2", pool_object(&uuid));
    eventually("the volume shows its user", || async {
        object_exists(&conn, &vol, VOLUME).await
            && paths(&props(&conn, &vol, VOLUME).await["UsedBy"]) == [d.path()]
    })
    .await;
    let e = proxy(&conn, &vol, VOLUME)
        .await
        .call::<_, _, ()>("Delete", &())
        .await
        .unwrap_err();
    let msg = error_name(e);
    assert!(
        msg.starts_with("org.vapor.Virtualization.Error.InvalidState"),
        "{msg}"
    );
    assert!(msg.contains(&d.name), "{msg}");
    assert!(std::path::Path::new(&disk).exists());
    // Nor can its pool be deleted with its volumes.
    let mut opts = HashMap::new();
    opts.insert("delete_volumes", zbus::Variant::from(true));
    let e = proxy(&conn, &pool_object(&uuid), POOL)
        .await
        .call::<_, _, ()>("Delete", &(opts,))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&d.name), "{e}");
    assert!(std::path::Path::new(&disk).exists());
}

#[tokio::test]
async fn a_cancelled_upload_leaves_no_volume_behind() {
    let conn = bus().await;
    let pool = TestPool::new("cancelup");
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let path = pool_object(&uuid);
    eventually("the pool appears", || object_exists(&conn, &path, POOL)).await;
    let target = format!("{path}/cancelled_2eraw");
    let mut added = interfaces_added(&conn).await;

    // A pipe that delivers slowly: the upload is still running when cancelled.
    let (reader, mut writer) = std::io::pipe().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if writer.write_all(&[1u8; 64 * 1024]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let fd = zbus::OwnedFd::from(std::os::fd::OwnedFd::from(reader));
    let mut opts = HashMap::new();
    opts.insert("size", zbus::Variant::from(1u64 << 30));
    let uploading = {
        let conn = conn.clone();
        let path = path.clone();
        tokio::spawn(async move {
            proxy(&conn, &path, POOL)
                .await
                .call::<_, _, OwnedObjectPath>("UploadVolume", &("cancelled.raw", fd, opts))
                .await
        })
    };
    type Added = (
        OwnedObjectPath,
        HashMap<String, HashMap<String, OwnedVariant>>,
    );
    let m = wait_signal(&mut added, "the upload's Job", |m| {
        m.body().deserialize::<Added>().is_ok_and(|(_, ifaces)| {
            ifaces
                .get("org.vapor.Virtualization.Job")
                .and_then(|p| p.get("Objects"))
                .is_some_and(|o| paths(o).contains(&target))
        })
    })
    .await;
    let job = m.body().deserialize::<Added>().unwrap().0;
    let () = proxy(&conn, job.as_str(), "org.vapor.Virtualization.Job")
        .await
        .call("Cancel", &())
        .await
        .unwrap();
    let r = uploading.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    feeder.join().unwrap();
    let e = r.expect_err("a cancelled upload succeeded");
    assert!(error_name(e).contains("cancel"));
    pool.refresh();
    assert!(pool.files().is_empty(), "left behind: {:?}", pool.files());
    assert!(!object_exists(&conn, &target, VOLUME).await);
}

#[tokio::test]
async fn volume_operations_never_follow_a_symlink_out_of_the_pool() {
    let conn = bus().await;
    let pool = TestPool::new("links");
    let outside = format!(
        "{}/{}.outside",
        env!("CARGO_TARGET_TMPDIR"),
        unique_name("outside")
    );
    std::fs::write(&outside, b"not a volume").unwrap();
    let link = format!("{}/link.raw", pool.dir);
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    pool.refresh();
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let vol = format!("{}/link_2eraw", pool_object(&uuid));
    eventually("the linked volume appears", || {
        object_exists(&conn, &vol, VOLUME)
    })
    .await;
    let v = proxy(&conn, &vol, VOLUME).await;
    let no = || HashMap::<&str, zbus::Variant<'_>>::new();
    let fd = |f: std::fs::File| zbus::OwnedFd::from(std::os::fd::OwnedFd::from(f));
    let src = format!("{outside}.src");
    std::fs::write(&src, b"new contents").unwrap();
    let dst = format!("{outside}.dst");
    // As root: no polkit rule stands in the way, only the path check.
    let mut errors = vec![
        v.call::<_, _, ()>("Wipe", &()).await.unwrap_err(),
        v.call::<_, _, ()>("Resize", &(1u64 << 20, no()))
            .await
            .unwrap_err(),
        v.call::<_, _, ()>("Upload", &(fd(std::fs::File::open(&src).unwrap()), no()))
            .await
            .unwrap_err(),
        v.call::<_, _, ()>(
            "Download",
            &(fd(std::fs::File::create(&dst).unwrap()), no()),
        )
        .await
        .unwrap_err(),
        v.call::<_, _, OwnedObjectPath>("Clone", &("copy.raw", no()))
            .await
            .unwrap_err(),
    ];
    errors.push(v.call::<_, _, ()>("Delete", &()).await.unwrap_err());
    for e in errors {
        let msg = error_name(e);
        assert!(
            msg.starts_with("org.vapor.Virtualization.Error.InvalidState")
                && msg.contains("symbolic link"),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"not a volume");
    assert_eq!(std::fs::read(&dst).unwrap(), b"");
    assert!(std::fs::symlink_metadata(&link).is_ok());
    assert_eq!(pool.files(), ["link.raw"]);
    for f in [&outside, &src, &dst] {
        let _ = std::fs::remove_file(f);
    }
}
