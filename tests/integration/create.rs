//! VM creation through the bus against real pools, a real ISO and real KVM:
//! the seed's complete example, templates, cloud-image overlays, and
//! all-or-nothing behaviour when something fails.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use zbus::{OwnedObjectPath, Proxy};

use crate::common::*;

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// An isolated libvirt network (no forward: no traffic leaves the host).
struct IsolatedNet(String);

impl IsolatedNet {
    fn new() -> Self {
        let name = unique_name("net");
        let bridge = format!("vtbr{}", std::process::id() % 100000);
        let file = format!("{}/{name}.xml", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(
            &file,
            format!("<network><name>{name}</name><bridge name='{bridge}'/></network>"),
        )
        .unwrap();
        virsh(&["net-create", &file]);
        IsolatedNet(name)
    }
}

impl Drop for IsolatedNet {
    fn drop(&mut self) {
        virsh_quiet(&["net-destroy", &self.0]);
    }
}

/// A small real ISO built with xorriso.
fn build_iso(path: &str) {
    let src = format!("{path}.d");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(format!("{src}/README.TXT"), "vapor test media\n").unwrap();
    let ok = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "VAPORTEST",
            "-o",
            path,
            &src,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "xorriso failed");
    let _ = std::fs::remove_dir_all(&src);
}

async fn create(conn: &zbus::Connection, spec: &Value) -> Result<OwnedObjectPath, String> {
    let p = Proxy::new(conn, BUS_NAME, ROOT, MANAGER).await.unwrap();
    p.call("CreateVirtualMachine", &(spec.to_string(),))
        .await
        .map_err(error_name)
}

/// `CreateVirtualMachine` through busctl as a test user.
fn create_as(user: &str, spec: &str) -> std::process::Output {
    manager_as(user, "CreateVirtualMachine", spec)
}

async fn plan(conn: &zbus::Connection, spec: &Value) -> Result<(Value, String), String> {
    let p = Proxy::new(conn, BUS_NAME, ROOT, MANAGER).await.unwrap();
    let (resolved, xml): (String, String) = p
        .call("PlanVirtualMachine", &(spec.to_string(),))
        .await
        .map_err(error_name)?;
    Ok((serde_json::from_str(&resolved).unwrap(), xml))
}

/// Deletes a created VM (and its storage) when dropped.
struct Created(String);
impl Drop for Created {
    fn drop(&mut self) {
        virsh_quiet(&["destroy", &self.0]);
        virsh_quiet(&["undefine", "--nvram", "--remove-all-storage", &self.0]);
    }
}

/// The seed's complete example payload, with this test's pools, ISO,
/// network and shared disk substituted, and without `pci_devices`.
fn seed_example(name: &str, nvme: &TestPool, bulk: &TestPool, net: &str, shared: &str) -> Value {
    json!({
      "name": name,
      "template": "ubuntu-workstation",
      "memory": 16384,
      "vcpus": 8,
      "storage": {
        "default_pool": nvme.name,
        "boot_iso": "ubuntu-22.04-desktop.iso",
        "disks": [
          {"action": "create", "size": 100, "path": "system.qcow2"},
          {"action": "create", "size": 500, "storage_pool": bulk.name, "path": "data.qcow2"},
          {"action": "attach", "path": shared}
        ]
      },
      "networks": [{"type": "network", "source": net, "model": "virtio"}],
      "graphics": [{"type": "vnc", "autoport": true, "listen": "0.0.0.0"}],
      "cloud_init": {
        "user_data": "#cloud-config\npackages:\n  - nginx",
        "meta_data": "instance-id: gpu-workstation"
      },
      "autostart": true
    })
}

#[tokio::test]
async fn seed_complete_example_creates_and_boots_from_a_real_iso() {
    let conn = bus().await;
    let nvme = TestPool::new("nvme");
    let bulk = TestPool::new("bulk");
    let net = IsolatedNet::new();
    build_iso(&format!("{}/ubuntu-22.04-desktop.iso", nvme.dir));
    nvme.refresh();
    let shared = format!(
        "/var/lib/vapor-tests/{}-common-data.qcow2",
        unique_name("share")
    );
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &shared, "64M"])
        .status()
        .unwrap()
        .success());
    let name = unique_name("gpu-workstation");
    let _guard = Created(name.clone());
    let spec = seed_example(&name, &nvme, &bulk, &net.0, &shared);

    // The dry run first: nothing may change.
    let (resolved, xml) = plan(&conn, &spec).await.unwrap();
    assert_eq!(nvme.files(), vec!["ubuntu-22.04-desktop.iso".to_string()]);
    assert!(bulk.files().is_empty());
    assert!(!virsh_quiet(&["dominfo", &name]));
    assert_eq!(
        resolved["disks"][0]["path"],
        format!("{}/system.qcow2", nvme.dir)
    );
    assert_eq!(
        resolved["disks"][1]["path"],
        format!("{}/data.qcow2", bulk.dir)
    );
    assert_eq!(resolved["disks"][3]["device"], "cdrom");
    // A Linux guest on q35: boot ISO and seed on virtio-scsi (cloud kernels
    // have no AHCI driver), behind exactly one virtio-scsi controller.
    assert_eq!(resolved["disks"][3]["bus"], "scsi");
    assert!(
        xml.contains("<target dev='sda' bus='scsi'/>") && xml.contains("<readonly/>"),
        "{xml}"
    );
    assert_eq!(
        xml.matches("<controller type='scsi' index='0' model='virtio-scsi'/>")
            .count(),
        1,
        "{xml}"
    );

    let path = create(&conn, &spec).await.unwrap();
    assert_eq!(
        nvme.files(),
        sorted(vec![
            format!("{name}-cidata.iso"),
            "system.qcow2".to_string(),
            "ubuntu-22.04-desktop.iso".to_string(),
        ])
    );
    assert_eq!(bulk.files(), vec!["data.qcow2".to_string()]);
    let dumped = virsh(&["dumpxml", "--inactive", &name]);
    assert!(
        dumped.contains(&format!("<source file='{}/system.qcow2'/>", nvme.dir)),
        "{dumped}"
    );
    assert!(dumped.contains(&format!("<source file='{shared}'/>")));
    assert!(dumped.contains("<memory unit='KiB'>16777216</memory>"));
    assert!(virsh(&["dominfo", &name]).contains("Autostart:      enable"));
    // The seed ISO is a real NoCloud seed.
    let pvd = Command::new("xorriso")
        .args([
            "-indev",
            &format!("{}/{name}-cidata.iso", nvme.dir),
            "-pvd_info",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&pvd.stdout).contains("Volume Id    : cidata"));

    // Describe carries vapord's metadata: template, creator, owned volumes.
    let vm = Proxy::new(&conn, BUS_NAME, path.as_str(), VM)
        .await
        .unwrap();
    let doc: String = vm.call("Describe", &()).await.unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["vapor"]["template"], "ubuntu-workstation");
    assert_eq!(doc["vapor"]["created_by_uid"], 0);
    assert_eq!(doc["vapor"]["custom"]["role"], "workstation");
    assert_eq!(doc["vapor"]["owned_volumes"].as_array().unwrap().len(), 3);

    // It boots: the cdrom is first in the boot order.
    vm.call::<_, _, ()>("Start", &()).await.unwrap();
    assert_eq!(prop_string(&conn, path.as_str(), "State").await, "running");
    vm.call::<_, _, ()>("ForceStop", &()).await.unwrap();

    // Deleting with storage removes exactly what creation made.
    let opts: std::collections::HashMap<&str, zbus::Variant<'_>> =
        [("remove_storage", true.into())].into();
    let (removed, _kept): (Vec<String>, Vec<(String, String)>) =
        vm.call("Delete", &(opts,)).await.unwrap();
    assert_eq!(
        removed.iter().filter(|p| !p.contains("/nvram/")).count(),
        3,
        "{removed:?}"
    );
    assert_eq!(nvme.files(), vec!["ubuntu-22.04-desktop.iso".to_string()]);
    assert!(Path::new(&shared).exists());
    let _ = std::fs::remove_file(&shared);
}

#[tokio::test]
async fn template_with_overrides_merges_by_the_documented_rules() {
    let conn = bus().await;
    let pool = TestPool::new("tpl");
    let name = unique_name("from-template");
    let _guard = Created(name.clone());
    let spec = json!({
        "name": name, "template": "vt-small", "memory": 256,
        "storage": {"default_pool": pool.name},
        "cloud_init": {"meta_data": "local-hostname: overridden\n"},
        "metadata": {"owner": "request"}
    });
    let (resolved, _) = plan(&conn, &spec).await.unwrap();
    assert_eq!(resolved["memory_mib"], 256, "scalars override");
    assert_eq!(
        resolved["disks"].as_array().unwrap().len(),
        1,
        "storage merges: disks kept from the template"
    );
    assert_eq!(
        resolved["cloud_init"]["user_data"], "#cloud-config\nhostname: from-template\n",
        "cloud_init deep-merges"
    );
    assert_eq!(
        resolved["cloud_init"]["meta_data"],
        "local-hostname: overridden\n"
    );
    assert_eq!(
        resolved["metadata"],
        json!({"tier": "test", "owner": "request"}),
        "metadata merges keys"
    );
    let path = create(&conn, &spec).await.unwrap();
    let props = get_all(&conn, path.as_str()).await.unwrap();
    assert_eq!(u64::try_from(&props["MemoryMiB"]).unwrap(), 256);
    assert_eq!(
        pool.files(),
        sorted(vec![
            format!("{name}-cidata.iso"),
            format!("{name}-disk0.qcow2")
        ])
    );
}

#[tokio::test]
async fn cloud_image_becomes_the_backing_file_of_the_boot_disk() {
    let conn = bus().await;
    let pool = TestPool::new("cloud");
    let image = format!("{}/cloudimg.qcow2", pool.dir);
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &image, "256M"])
        .status()
        .unwrap()
        .success());
    pool.refresh();
    let name = unique_name("overlay");
    let _guard = Created(name.clone());
    let spec = json!({
        "name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [
            {"action": "backing", "source": "cloudimg.qcow2", "size": 2, "path": "root.qcow2"}]},
        "cloud_init": {"user_data": "#cloud-config\n"},
        "start": true
    });
    let path = create(&conn, &spec).await.unwrap();
    assert_eq!(prop_string(&conn, path.as_str(), "State").await, "running");
    let vol = virsh(&["vol-dumpxml", "--pool", &pool.name, "root.qcow2"]);
    assert!(vol.contains(&format!("<path>{image}</path>")), "{vol}");
    assert!(
        vol.contains("<capacity unit='bytes'>2147483648</capacity>"),
        "{vol}"
    );
    let info = Command::new("qemu-img")
        .args([
            "info",
            "-U",
            "--output=json",
            &format!("{}/root.qcow2", pool.dir),
        ])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"], image.as_str());
}

#[tokio::test]
async fn libvirt_rejecting_the_definition_leaves_no_volume_iso_or_domain() {
    let conn = bus().await;
    let pool = TestPool::new("reject");
    let name = unique_name("rejected");
    let _guard = Created(name.clone());
    let spec = json!({
        "name": name, "memory": 128, "machine": "pc-q35-1.0",
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 1}, {"action": "create", "size": 1}]},
        "cloud_init": {"user_data": "#cloud-config\n"}
    });
    let err = create(&conn, &spec).await.unwrap_err();
    assert!(
        err.contains("libvirt refused the domain definition"),
        "{err}"
    );
    assert!(pool.files().is_empty(), "left behind: {:?}", pool.files());
    assert!(!virsh_quiet(&["dominfo", &name]));
}

#[tokio::test]
async fn a_failed_start_undoes_the_whole_creation() {
    let conn = bus().await;
    let pool = TestPool::new("nostart");
    let name = unique_name("nostart");
    let _guard = Created(name.clone());
    let spec = json!({
        "name": name, "memory": 128, "start": true,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 1}]},
        "networks": [{"type": "network", "source": "vt-no-such-network"}]
    });
    let err = create(&conn, &spec).await.unwrap_err();
    assert!(
        err.contains("failed to start") && err.contains("vt-no-such-network"),
        "{err}"
    );
    assert!(pool.files().is_empty(), "left behind: {:?}", pool.files());
    assert!(!virsh_quiet(&["dominfo", &name]));
}

#[tokio::test]
async fn a_disk_in_a_missing_pool_fails_before_anything_is_made() {
    let conn = bus().await;
    let pool = TestPool::new("halfway");
    let name = unique_name("halfway");
    let spec = json!({
        "name": name,
        "storage": {"default_pool": pool.name, "disks": [
            {"action": "create", "size": 1},
            {"action": "create", "size": 1, "storage_pool": "vt-no-such-pool"}]}
    });
    let err = create(&conn, &spec).await.unwrap_err();
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.NotFound: storage.disks[1]")
            && err.contains("vt-no-such-pool"),
        "{err}"
    );
    assert!(pool.files().is_empty());
    assert!(!virsh_quiet(&["dominfo", &name]));
}

#[tokio::test]
async fn concurrent_creates_of_one_name_let_exactly_one_win() {
    let conn = bus().await;
    let pool = TestPool::new("race");
    let name = unique_name("race");
    let _guard = Created(name.clone());
    let spec = json!({"name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 1}]}});
    let (a, b) = tokio::join!(create(&conn, &spec), create(&conn, &spec));
    let results = [a, b];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        loser.starts_with("org.vapor.Virtualization.Error.Conflict"),
        "{loser}"
    );
    assert_eq!(
        pool.files().len(),
        1,
        "the loser made nothing: {:?}",
        pool.files()
    );
}

#[tokio::test]
async fn unsafe_names_and_bad_specs_are_refused_before_anything_is_touched() {
    let conn = bus().await;
    for bad in ["../x", "a/b", "a\u{1}b", "<x>", ".hidden"] {
        let err = create(&conn, &json!({"name": bad})).await.unwrap_err();
        assert!(
            err.starts_with("org.vapor.Virtualization.Error.InvalidArgument: name: "),
            "{bad:?}: {err}"
        );
    }
    let err = create(
        &conn,
        &json!({"name": "ok", "storage": {"disks": [{"action": "create", "sise": 3}]}}),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("storage.disks[0].sise: unknown field"),
        "{err}"
    );
    let err = create(
        &conn,
        &json!({"name": "ok", "pci_devices": [{"host_address": "0000:01:00.0"}]}),
    )
    .await
    .unwrap_err();
    // Validated by the PCI service: this host has no such device.
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.NotFound: pci_devices[0].host_address"),
        "{err}"
    );
    let p = Proxy::new(&conn, BUS_NAME, ROOT, MANAGER).await.unwrap();
    let err = error_name(
        p.call::<_, _, OwnedObjectPath>("CreateVirtualMachine", &("{not json",))
            .await
            .unwrap_err(),
    );
    assert!(err.contains("spec is not valid JSON"), "{err}");
}

#[tokio::test]
async fn creating_is_refused_for_a_non_member_and_allowed_for_a_member() {
    let conn = bus().await;
    let pool = TestPool::new("authz");
    let name = unique_name("authz");
    let _guard = Created(name.clone());
    let spec = json!({"name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 1}]}})
    .to_string();
    let call = |user: &str| create_as(user, &spec);
    let out = call(BOB);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused at the first gate, before vapord looked at any pool or path.
    assert!(err.contains("vm-create") && err.contains(&name), "{err}");
    assert!(pool.files().is_empty() && !virsh_quiet(&["dominfo", &name]));
    let out = call(ALICE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(virsh_quiet(&["dominfo", &name]));
    let _ = conn;
}

#[tokio::test]
async fn templates_can_be_listed_saved_read_and_deleted() {
    let conn = bus().await;
    let p = Proxy::new(&conn, BUS_NAME, ROOT, MANAGER).await.unwrap();
    let list: Vec<(String, String, String)> = p.call("ListTemplates", &()).await.unwrap();
    assert!(
        list.iter()
            .any(|(n, s, _)| n == "vt-small" && s == "shipped"),
        "{list:?}"
    );
    let name = unique_name("tpl");
    p.call::<_, _, ()>(
        "SaveTemplate",
        &(name.as_str(), "mine", r#"{"memory": 512}"#),
    )
    .await
    .unwrap();
    let doc: String = p.call("GetTemplate", &(name.as_str(),)).await.unwrap();
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["spec"]["memory"], 512);
    assert_eq!(doc["source"], "user");
    let err = error_name(
        p.call::<_, _, ()>(
            "SaveTemplate",
            &(name.as_str(), "", r#"{"memory": "lots"}"#),
        )
        .await
        .unwrap_err(),
    );
    assert!(
        err.contains("InvalidArgument") && err.contains("memory"),
        "{err}"
    );
    let err = error_name(
        p.call::<_, _, ()>("DeleteTemplate", &("vt-small",))
            .await
            .unwrap_err(),
    );
    assert!(err.contains("read-only"), "{err}");
    p.call::<_, _, ()>("DeleteTemplate", &(name.as_str(),))
        .await
        .unwrap();
    let err = error_name(
        p.call::<_, _, String>("GetTemplate", &(name.as_str(),))
            .await
            .unwrap_err(),
    );
    assert!(
        err.starts_with("org.vapor.Virtualization.Error.NotFound"),
        "{err}"
    );
}

#[tokio::test]
async fn rules_can_restrict_creation_per_pool() {
    let _conn = bus().await;
    let pool = TestPool::new("forbidden");
    let name = unique_name("pooled");
    let _guard = Created(name.clone());
    let spec = json!({"name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 1}]}})
    .to_string();
    let out = create_as(ALICE, &spec);
    assert!(
        !out.status.success(),
        "the pool.name rule must refuse alice"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pool.name));
    assert!(pool.files().is_empty() && !virsh_quiet(&["dominfo", &name]));
}

#[tokio::test]
async fn creation_runs_as_a_job_that_reports_progress_and_completion() {
    use std::collections::HashMap;
    use zbus::OwnedVariant;
    let conn = bus().await;
    let pool = TestPool::new("job");
    let name = unique_name("job");
    let _guard = Created(name.clone());
    let mut added = interfaces_added(&conn).await;
    let mut completed = signals(&conn, "org.vapor.Virtualization.Job", "Completed").await;
    let mut changed = properties_changed(&conn).await;
    let spec = json!({"name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 2}]}})
    .to_string();
    // As a user of its own, so the Job is this test's (others run meanwhile).
    let creating = std::thread::spawn(move || create_as(ERIN, &spec));

    type Added = (
        OwnedObjectPath,
        HashMap<String, HashMap<String, OwnedVariant>>,
    );
    let erin = uid_of(ERIN);
    let m = wait_signal(&mut added, "a Job object", |m| {
        m.body().deserialize::<Added>().is_ok_and(|(p, i)| {
            p.as_str().starts_with(&format!("{ROOT}/job/"))
                && i.get("org.vapor.Virtualization.Job")
                    .and_then(|props| props.get("StartedByUID"))
                    .and_then(|v| u32::try_from(v).ok())
                    == Some(erin)
        })
    })
    .await;
    let (job_path, ifaces) = m.body().deserialize::<Added>().unwrap();
    let props = &ifaces["org.vapor.Virtualization.Job"];
    assert_eq!(
        String::try_from(props["Operation"].clone()).unwrap(),
        "vm-create"
    );
    assert_eq!(u32::try_from(&props["StartedByUID"]).unwrap(), erin);
    // It names the VM it makes, by the path the VM will have.
    let objects = Vec::<OwnedObjectPath>::try_from(props["Objects"].clone()).unwrap();
    assert_eq!(objects.len(), 1);
    assert!(objects[0].as_str().starts_with(&format!("{ROOT}/vm/")));
    assert!(bool::try_from(&props["Cancelable"]).unwrap());
    wait_signal(&mut changed, "Progress reaching 1.0", |m| {
        m.header()
            .path()
            .is_some_and(|p| p.as_str() == job_path.as_str())
            && m.body()
                .deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                .ok()
                .and_then(|(_, c, _)| c.get("Progress").and_then(|v| f64::try_from(v).ok()))
                == Some(1.0)
    })
    .await;
    let m = wait_signal(&mut completed, "Completed", |m| {
        m.header()
            .path()
            .is_some_and(|p| p.as_str() == job_path.as_str())
    })
    .await;
    let (ok, msg): (bool, String) = m.body().deserialize().unwrap();
    assert!(ok, "{msg}");
    let out = creating.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // busctl prints `o "<path>"`: the path the Job named.
    let created = String::from_utf8_lossy(&out.stdout);
    assert!(created.contains(objects[0].as_str()), "{created}");
}

#[tokio::test]
async fn host_files_outside_pools_need_their_own_authorization() {
    let _conn = bus().await;
    let pool = TestPool::new("hostpath");
    let name = unique_name("hostpath");
    let _guard = Created(name.clone());
    let spec = json!({"name": name, "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [{"action": "attach", "path": "/etc/passwd"}]}})
    .to_string();
    let out = create_as(ALICE, &spec);
    assert!(
        !out.status.success(),
        "alice may create VMs but not hand them /etc/passwd"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("storage-host-path") && err.contains("/etc/passwd"),
        "{err}"
    );
    assert!(!virsh_quiet(&["dominfo", &name]));
}

/// A creation by `user` slow enough to act on while it runs (two clones of
/// a 256 MiB source), and its Job object.
struct SlowCreation {
    pool: TestPool,
    name: String,
    _guard: Created,
    creating: std::thread::JoinHandle<std::process::Output>,
    job: OwnedObjectPath,
}

impl SlowCreation {
    async fn start(conn: &zbus::Connection, user: &'static str, tag: &str) -> Self {
        let pool = TestPool::new(tag);
        random_file(&format!("{}/golden.raw", pool.dir), 256);
        pool.refresh();
        let name = unique_name(tag);
        let guard = Created(name.clone());
        let spec = json!({"name": name, "memory": 128, "storage": {"default_pool": pool.name,
            "disks": [{"action": "clone", "source": "golden.raw", "path": "one.raw"},
                      {"action": "clone", "source": "golden.raw", "path": "two.raw"}]}})
        .to_string();
        let mut added = interfaces_added(conn).await;
        let creating = std::thread::spawn(move || create_as(user, &spec));
        let job = job_started_by(&mut added, uid_of(user)).await;
        SlowCreation {
            pool,
            name,
            _guard: guard,
            creating,
            job,
        }
    }

    /// `Job.Cancel` as `user`.
    fn cancel_as(&self, user: &str) -> std::process::Output {
        as_user(
            user,
            &[
                "busctl",
                "--system",
                "call",
                BUS_NAME,
                self.job.as_str(),
                "org.vapor.Virtualization.Job",
                "Cancel",
            ],
        )
    }

    /// The creation was cancelled and left nothing but its source.
    fn assert_cancelled(self) {
        let out = self.creating.join().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("cancelled"), "{err}");
        assert_eq!(
            self.pool.files(),
            vec!["golden.raw".to_string()],
            "the first clone was removed"
        );
        assert!(!virsh_quiet(&["dominfo", &self.name]));
    }
}

#[tokio::test]
async fn cancelling_the_job_removes_what_was_made() {
    let conn = bus().await;
    let c = SlowCreation::start(&conn, CAROL, "cancel").await;
    let out = c.cancel_as(CAROL);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.assert_cancelled();
}

#[tokio::test]
async fn firmware_variables_left_by_an_earlier_vm_are_not_handed_to_a_new_one() {
    let conn = bus().await;
    let pool = TestPool::new("nvram");
    let name = unique_name("nvram");
    let _guard = Created(name.clone());
    // What an earlier UEFI VM of this name, deleted without its storage, left.
    let nvram = format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.fd");
    std::fs::create_dir_all("/var/lib/libvirt/qemu/nvram").unwrap();
    std::fs::write(&nvram, b"someone else's boot entries").unwrap();
    let spec = json!({"name": name, "memory": 128, "uefi": true,
        "storage": {"default_pool": pool.name, "disks": [{"action": "create", "size": 1}]}});
    let err = create(&conn, &spec).await.unwrap_err();
    assert!(
        err.contains("Conflict") && err.contains("firmware variables of an earlier VM"),
        "{err}"
    );
    assert!(!virsh_quiet(&["dominfo", &name]), "nothing defined");
    assert!(pool.files().is_empty(), "{:?}", pool.files());
    assert_eq!(
        std::fs::read(&nvram).unwrap(),
        b"someone else's boot entries",
        "the old file is left alone"
    );
    let _ = std::fs::remove_file(&nvram);
}

#[tokio::test]
async fn only_its_owner_may_cancel_a_job_unless_polkit_says_otherwise() {
    let conn = bus().await;
    let c = SlowCreation::start(&conn, DAVE, "jobowner").await;
    // vapor-bob may not cancel vapor-dave's job (job-cancel-other), nor
    // may vapor-alice, though she is in group vapor too.
    for other in [BOB, ALICE] {
        let out = c.cancel_as(other);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("job-cancel-other"), "{other}: {err}");
    }
    // vapor-dave may cancel his own (job-cancel).
    let out = c.cancel_as(DAVE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.assert_cancelled();
}
