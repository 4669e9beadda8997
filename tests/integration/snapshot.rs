//! Snapshots through vapord, as vapor-alice: what a VM allows and why not,
//! internal and external snapshots of a running Debian guest and of a
//! stopped one, revert bringing a file's content back, and deleting a
//! snapshot in the middle of a chain.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zbus::OwnedVariant as OwnedValue;
use zbus::{Connection, OwnedObjectPath, Proxy};

use crate::common::*;
use crate::guest::Guest;

const SNAPSHOT: &str = "org.vapor.Virtualization.Snapshot";
const CTL: &str = env!("CARGO_BIN_EXE_vaporctl");

/// CreateSnapshot as alice with `a{sv}` options (count first); the path.
fn create(vm: &str, opts: &[&str]) -> String {
    let mut args = vec!["a{sv}"];
    args.extend_from_slice(opts);
    let out = call_iface_as(ALICE, vm, VM, "CreateSnapshot", &args)
        .unwrap_or_else(|e| panic!("CreateSnapshot {opts:?}: {e}"));
    out.trim_start_matches("o ").trim_matches('"').to_owned()
}

fn snapshot_call(path: &str, method: &str, opts: &[&str]) {
    let mut args = vec!["a{sv}"];
    args.extend_from_slice(opts);
    call_iface_as(ALICE, path, SNAPSHOT, method, &args)
        .unwrap_or_else(|e| panic!("{method} {path} {opts:?}: {e}"));
}

fn s(p: &HashMap<String, OwnedValue>, k: &str) -> String {
    String::try_from(p[k].try_clone().unwrap()).unwrap()
}

fn b(p: &HashMap<String, OwnedValue>, k: &str) -> bool {
    bool::try_from(&p[k]).unwrap()
}

fn o(p: &HashMap<String, OwnedValue>, k: &str) -> String {
    OwnedObjectPath::try_from(p[k].try_clone().unwrap())
        .unwrap()
        .as_str()
        .to_owned()
}

/// The capabilities as {kind: (possible, reason)} and `auto`, via vaporctl.
fn capabilities(vm: &str) -> serde_json::Value {
    let out = as_user(ALICE, &[CTL, "--json", "snapshot", "capabilities", vm]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Write `text` to the guest's marker file and flush it to disk.
fn mark(g: &Guest, text: &str) {
    let (rc, _) = g.exec(
        "/bin/sh",
        &["-c", &format!("echo {text} > /var/tmp/marker && sync")],
    );
    assert_eq!(rc, 0);
}

/// The guest's marker file, once its agent answers again (after a revert
/// the agent's channel reconnects).
fn marker(g: &Guest) -> String {
    g.wait_agent();
    let (rc, out) = g.exec("/bin/cat", &["/var/tmp/marker"]);
    assert_eq!(rc, 0);
    out.trim().to_owned()
}

async fn wait_gone(conn: &Connection, path: &str) {
    let deadline = Instant::now() + EVENT_WAIT;
    while props_of(conn, path, SNAPSHOT).await.is_some() {
        assert!(Instant::now() < deadline, "{path} never went away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_goes_back_in_time_and_keeps_its_chain_when_a_middle_snapshot_goes() {
    let conn = bus().await;
    let g = tokio::task::spawn_blocking(|| {
        let g = Guest::create("snap", true);
        g.wait_first_boot();
        g
    })
    .await
    .unwrap();

    // A running qcow2 guest with its agent allows every kind.
    let caps = capabilities(&g.name);
    for k in ["internal", "external", "external_memory", "quiesce"] {
        assert_eq!(caps[k]["possible"], true, "{k}: {caps}");
    }
    assert_eq!(caps["auto"], "internal");

    // Internal snapshots, each with the memory: one → two → three.
    mark_now(&g, "one").await;
    let s1 = create(
        &g.path,
        &["2", "name", "s", "s1", "description", "s", "first"],
    );
    let p1 = props(&conn, &s1).await;
    assert_eq!(s(&p1, "Kind"), "internal");
    assert!(b(&p1, "HasMemory"));
    assert_eq!(s(&p1, "StateAtSnapshot"), "running");
    assert_eq!(s(&p1, "Description"), "first");
    assert_eq!(o(&p1, "VirtualMachine"), g.path);
    mark_now(&g, "two").await;
    let s2 = create(&g.path, &["1", "name", "s", "s2"]);
    mark_now(&g, "three").await;
    let s3 = create(&g.path, &["1", "name", "s", "s3"]);
    assert_eq!(o(&props(&conn, &s3).await, "Parent"), s2);
    assert!(b(&props(&conn, &s3).await, "IsCurrent"));

    // The middle one goes; the chain closes up over it.
    snapshot_call(&s2, "Delete", &["0"]);
    wait_gone(&conn, &s2).await;
    assert_eq!(o(&props(&conn, &s3).await, "Parent"), s1);
    let children: Vec<OwnedObjectPath> = props(&conn, &s1).await["Children"]
        .try_clone()
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        children.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        vec![s3.as_str()]
    );

    // Both ends of the chain still revert, memory and all.
    mark_now(&g, "four").await;
    snapshot_call(&s1, "Revert", &["0"]);
    assert_eq!(prop_string(&conn, &g.path, "State").await, "running");
    assert_eq!(marker_now(&g).await, "one");
    assert!(b(&props(&conn, &s1).await, "IsCurrent"));
    snapshot_call(&s3, "Revert", &["0"]);
    assert_eq!(marker_now(&g).await, "three");

    // A snapshot made with virsh shows up too (it pauses the guest, an event).
    virsh(&["snapshot-create-as", &g.name, "by-virsh"]);
    let by_virsh = format!("{}/snapshot/by_2dvirsh", g.path);
    let deadline = Instant::now() + EVENT_WAIT;
    while props_of(&conn, &by_virsh, SNAPSHOT).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the virsh snapshot never appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    snapshot_call(&by_virsh, "Delete", &["0"]);

    // External, with memory: the guest resumes where it was.
    mark_now(&g, "ext").await;
    let e1 = create(&g.path, &["2", "name", "s", "e1", "kind", "s", "external"]);
    let pe1 = props(&conn, &e1).await;
    assert_eq!(s(&pe1, "Kind"), "external");
    assert!(b(&pe1, "HasMemory"));
    mark_now(&g, "later").await;
    snapshot_call(&e1, "Revert", &["0"]);
    assert_eq!(marker_now(&g).await, "ext");

    // External, disk-only, quiesced through the agent: a new overlay file
    // the VM owns; deleting the snapshot merges it and the guest runs on.
    let e2 = create(
        &g.path,
        &[
            "3", "name", "s", "e2", "memory", "b", "false", "quiesce", "b", "true",
        ],
    );
    let pe2 = props(&conn, &e2).await;
    assert_eq!(s(&pe2, "Kind"), "external");
    assert!(!b(&pe2, "HasMemory"));
    assert_eq!(s(&pe2, "StateAtSnapshot"), "disk-snapshot");
    let xml = virsh(&["dumpxml", &g.name]);
    assert!(xml.contains(".e2'"), "the VM runs on the e2 overlay: {xml}");
    let owned = virsh(&["metadata", &g.name, "https://vapor.dev/xmlns/domain/1"]);
    assert!(
        owned.contains(".e2\""),
        "the overlay is the VM's own: {owned}"
    );
    snapshot_call(&e2, "Delete", &["0"]);
    wait_gone(&conn, &e2).await;
    assert_eq!(marker_now(&g).await, "ext");

    // Stopped: an internal and an external snapshot, without memory.
    let out = busctl_as(ALICE, &g.path, "ForceStop", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let caps = capabilities(&g.name);
    assert_eq!(caps["external_memory"]["possible"], false);
    assert_eq!(
        caps["external_memory"]["reason"],
        "the VM is not running: there is no memory to save"
    );
    let st1 = create(&g.path, &["1", "name", "s", "st1"]);
    let pst1 = props(&conn, &st1).await;
    assert_eq!(s(&pst1, "Kind"), "internal");
    assert_eq!(s(&pst1, "StateAtSnapshot"), "shutoff");
    assert!(!b(&pst1, "HasMemory"));
    let st2 = create(&g.path, &["2", "name", "s", "st2", "kind", "s", "external"]);
    let overlay = {
        let p = props(&conn, &st2).await;
        let disks: Vec<(String, String, String)> =
            p["Disks"].try_clone().unwrap().try_into().unwrap();
        disks
            .into_iter()
            .find(|(_, mode, _)| mode == "external")
            .expect("an external disk")
            .2
    };
    assert!(std::path::Path::new(&overlay).exists());
    // Stopped, the VM goes back to its internal snapshot: current again,
    // still shut off, its disk no longer the overlay.
    snapshot_call(&st1, "Revert", &["0"]);
    assert!(b(&props(&conn, &st1).await, "IsCurrent"));
    assert_eq!(prop_string(&conn, &g.path, "State").await, "shutoff");
    let disks = virsh(&["domblklist", &g.name]);
    assert!(!disks.contains(&overlay), "{disks}");

    // Deleting the VM takes its snapshots and the overlays made for it.
    delete_with_storage(ALICE, &g.path);
    wait_gone(&conn, &st1).await;
    assert!(
        !std::path::Path::new(&overlay).exists(),
        "{overlay} outlived its VM"
    );
    // Nothing of the VM is left: no overlay, no memory file.
    let left: Vec<String> = std::fs::read_dir(&crate::guest::pools().disk_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", g.name)))
        .collect();
    assert!(left.is_empty(), "files of the deleted VM remain: {left:?}");
}

#[tokio::test]
async fn a_raw_disk_vm_says_why_it_has_no_internal_snapshots_and_refusals_are_typed() {
    let conn = bus().await;
    let pool = TestPool::new("snapraw");
    let disk = pool.volume("d.raw", "raw");
    let d = TestDomain::define_with("snapraw", &disk_device(&disk, "raw"));
    wait_for_object(&conn, &d.path()).await;

    let caps = capabilities(&d.name);
    assert_eq!(caps["internal"]["possible"], false);
    assert_eq!(
        caps["internal"]["reason"],
        "disk vda is raw: internal snapshots need every writable disk in qcow2 format"
    );
    assert_eq!(caps["external"]["possible"], true);
    assert_eq!(caps["auto"], "external disk-only");

    // Each refusal is a typed error that says why, and makes nothing.
    let vm = Proxy::new(&conn, BUS_NAME, d.path(), VM).await.unwrap();
    let refused = |opts: Vec<(&'static str, zbus::Variant<'static>)>| {
        let vm = vm.clone();
        async move {
            let o: HashMap<&str, zbus::Variant<'_>> = opts.into_iter().collect();
            vm.call::<_, _, OwnedObjectPath>("CreateSnapshot", &(o,))
                .await
                .map_err(error_name)
                .unwrap_err()
        }
    };
    let e = refused(vec![("kind", "internal".into())]).await;
    assert!(
        e.starts_with("org.vapor.Virtualization.Error.NotSupported: kind: disk vda is raw"),
        "{e}"
    );
    let e = refused(vec![("memory", true.into())]).await;
    assert!(
        e.starts_with("org.vapor.Virtualization.Error.InvalidState: memory: the VM is not running"),
        "{e}"
    );
    let e = refused(vec![("name", "../../etc/x".into())]).await;
    assert!(
        e.starts_with("org.vapor.Virtualization.Error.InvalidArgument: name:"),
        "{e}"
    );
    let e = refused(vec![("kind", "sideways".into())]).await;
    assert!(
        e.starts_with("org.vapor.Virtualization.Error.InvalidArgument: kind:"),
        "{e}"
    );
    let e = refused(vec![("colour", "red".into())]).await;
    assert!(e.contains("InvalidArgument"), "{e}");
    let err = call_iface_as(BOB, &d.path(), VM, "CreateSnapshot", &["a{sv}", "0"]).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    assert_eq!(virsh(&["snapshot-list", &d.name, "--name"]).trim(), "");

    // auto makes a disk-only external snapshot; its object is the shipped interface.
    let snap = create(&d.path(), &["1", "name", "s", "before"]);
    let p = props(&conn, &snap).await;
    assert_eq!(s(&p, "Kind"), "external");
    assert_eq!(s(&p, "Name"), "before");
    assert_eq!(o(&p, "Parent"), "/");
    crate::introspection::assert_shipped(&conn, &snap, SNAPSHOT).await;
    // Bob may neither revert nor delete it.
    for m in ["Revert", "Delete"] {
        let err = call_iface_as(BOB, &snap, SNAPSHOT, m, &["a{sv}", "0"]).unwrap_err();
        assert!(is_refusal(&err), "{m}: {err}");
    }
    let err = call_iface_as(
        ALICE,
        &snap,
        SNAPSHOT,
        "Revert",
        &["a{sv}", "1", "state", "s", "x"],
    )
    .unwrap_err();
    assert!(err.contains("state: 'x' is not one of"), "{err}");
    snapshot_call(&snap, "Delete", &["1", "metadata_only", "b", "true"]);
    wait_gone(&conn, &snap).await;
    assert_eq!(virsh(&["snapshot-list", &d.name, "--name"]).trim(), "");
}

async fn props(conn: &Connection, path: &str) -> HashMap<String, OwnedValue> {
    props_of(conn, path, SNAPSHOT)
        .await
        .unwrap_or_else(|| panic!("no snapshot {path}"))
}

/// [`mark`] from async code.
async fn mark_now(g: &Guest, text: &'static str) {
    let g = g.clone();
    tokio::task::spawn_blocking(move || mark(&g, text))
        .await
        .unwrap();
}

/// [`marker`] from async code.
async fn marker_now(g: &Guest) -> String {
    let g = g.clone();
    tokio::task::spawn_blocking(move || marker(&g))
        .await
        .unwrap()
}
