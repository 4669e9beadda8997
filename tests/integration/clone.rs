//! VirtualMachine.Clone: a real Debian guest cloned by vapor-alice boots
//! with its own disks, identity and a fresh cloud-init seed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;
use crate::guest::{pools, Guest};

fn clone_as(user: &str, path: &str, name: &str, mode: &str) -> Result<String, String> {
    let out = as_user(
        user,
        &[
            "busctl",
            "--system",
            "--timeout=300",
            "call",
            BUS_NAME,
            path,
            VM,
            "Clone",
            "sa{sv}",
            name,
            "1",
            "mode",
            "s",
            mode,
        ],
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The path in `xml` of a file of `vm` in `dir` ending with `ext`.
fn disk_file(xml: &str, dir: &str, vm: &str, ext: &str) -> String {
    xml.split('\'')
        .find(|s| s.starts_with(&format!("{dir}/{vm}-")) && s.ends_with(ext))
        .unwrap_or_else(|| panic!("no {ext} disk of {vm} in {dir}: {xml}"))
        .to_owned()
}

fn delete(path: &str) {
    let out = busctl_as(
        ALICE,
        path,
        "Delete",
        &[
            "a{sv}",
            "2",
            "remove_storage",
            "b",
            "true",
            "force",
            "b",
            "true",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_linked_clone_boots_as_itself_and_a_full_clone_owns_its_copies() {
    let conn = bus().await;
    let p = pools();
    let src = Guest::create("clonesrc", false);
    wait_for_object(&conn, &src.path).await;

    // Someone outside group vapor may not clone.
    let err = clone_as(BOB, &src.path, &format!("{}-x", src.name), "linked").unwrap_err();
    assert!(is_refusal(&err), "{err}");
    // A running VM is refused (its disks would change under the copy).
    let running = TestDomain::define("clonerun");
    wait_for_object(&conn, &running.path()).await;
    vm_call(&conn, &running.path(), "Start").await.unwrap();
    let err = clone_as(
        ALICE,
        &running.path(),
        &format!("{}-c", running.name),
        "full",
    )
    .unwrap_err();
    assert!(err.contains("running"), "{err}");

    let src_disk_before = virsh(&["domblklist", &src.name]);
    let linked_name = format!("{}-linked", src.name);
    let out = clone_as(ALICE, &src.path, &linked_name, "linked").unwrap();
    let linked = Guest::named(&linked_name);
    assert!(out.contains(&linked.path), "{out}");
    let xml = virsh(&["dumpxml", "--inactive", &linked.name]);
    // Its own overlay on the source's disk and its own seed; no MAC and UUID of the source.
    let overlay = disk_file(&xml, &p.disk_dir, &linked.name, ".qcow2");
    let seed = format!("{}/{}-cidata.iso", p.disk_dir, linked.name);
    assert!(xml.contains(&seed), "{xml}");
    assert!(!xml.contains(&format!("<uuid>{}</uuid>", src.uuid)));
    assert!(
        xml.contains(&format!("cloned-from uuid='{}'", src.uuid))
            || xml.contains(&format!("cloned-from uuid=\"{}\"", src.uuid)),
        "{xml}"
    );
    let info = virsh(&[
        "vol-dumpxml",
        "--pool",
        &p.disk_pool,
        overlay.rsplit('/').next().unwrap(),
    ]);
    assert!(
        info.contains("<backingStore>"),
        "a linked clone is an overlay: {info}"
    );
    // The source moved onto an overlay of its own: the shared image stays as it is.
    let src_disk_after = virsh(&["domblklist", &src.name]);
    assert_ne!(src_disk_before, src_disk_after);
    assert!(src_disk_after.contains("-top-"), "{src_disk_after}");

    // It boots, and its cloud-init saw a new instance: the hostname is the clone's name.
    virsh(&["start", &linked.name]);
    linked.wait_agent();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let host = linked.agent(&json!({"execute": "guest-get-host-name"}));
        if host.as_ref().and_then(|h| h["host-name"].as_str()) == Some(linked.name.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clone's hostname stayed {host:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // A full clone: standalone copies.
    let full_name = format!("{}-full", src.name);
    clone_as(ALICE, &src.path, &full_name, "full").unwrap();
    let full = Guest::named(&full_name);
    let copy = disk_file(
        &virsh(&["dumpxml", "--inactive", &full.name]),
        &p.disk_dir,
        &full.name,
        ".qcow2",
    );
    let copy_xml = virsh(&[
        "vol-dumpxml",
        "--pool",
        &p.disk_pool,
        copy.rsplit('/').next().unwrap(),
    ]);
    assert!(
        !copy_xml.contains("<backingStore>") || copy_xml.contains("<backingStore/>"),
        "{copy_xml}"
    );

    // A name taken is a conflict, and nothing is left behind.
    let before = std::fs::read_dir(&p.disk_dir).unwrap().count();
    let err = clone_as(ALICE, &src.path, &full_name, "full").unwrap_err();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_dir(&p.disk_dir).unwrap().count(), before);

    for g in [&linked, &full, &src] {
        delete(&g.path);
    }
    vm_call(&conn, &running.path(), "ForceStop").await.unwrap();
}
