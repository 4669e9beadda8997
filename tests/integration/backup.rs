//! Backups through vapord, as vapor-alice: a full and an incremental backup
//! of a running Debian guest, verified, restored as a new VM that boots
//! with the incremental backup's data; a damaged backup restores nothing;
//! chains are never broken; a stopped VM is copied; refusals are typed.

use std::collections::HashMap;

use zbus::{Connection, OwnedObjectPath, OwnedVariant};

use crate::common::*;
use crate::guest::{pools, Guest};

const BACKUP: &str = "org.vapor.Virtualization.Backup";

/// Back up `vm` as alice; the Backup object's path.
fn backup(vm: &str, opts: &[&str]) -> Result<String, String> {
    let mut args = vec!["a{sv}"];
    args.extend_from_slice(opts);
    call_iface_as(ALICE, vm, VM, "Backup", &args)
        .map(|o| o.trim_start_matches("o ").trim_matches('"').to_owned())
}

fn s(p: &HashMap<String, OwnedVariant>, k: &str) -> String {
    String::try_from(p[k].try_clone().unwrap()).unwrap()
}

fn o(p: &HashMap<String, OwnedVariant>, k: &str) -> String {
    OwnedObjectPath::try_from(p[k].try_clone().unwrap())
        .unwrap()
        .as_str()
        .to_owned()
}

fn mark(g: &Guest, text: &str) {
    let (rc, _) = g.exec(
        "/bin/sh",
        &["-c", &format!("echo {text} > /var/tmp/marker && sync")],
    );
    assert_eq!(rc, 0);
}

fn repository() -> String {
    format!("{}/backups", state_dir())
}

/// Nothing half-written is left in the repository.
fn no_partial_backups() {
    let partial: Vec<String> = std::fs::read_dir(repository())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial-"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_is_backed_up_fully_then_incrementally_and_restores_as_a_vm_that_boots() {
    let conn = bus().await;
    let g = tokio::task::spawn_blocking(|| {
        let g = Guest::create("bk", true);
        g.wait_first_boot();
        mark(&g, "full");
        g
    })
    .await
    .unwrap();

    // Someone outside group vapor may not back up.
    let err = call_iface_as(BOB, &g.path, VM, "Backup", &["a{sv}", "0"]).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    // Nothing to build an incremental backup on yet: a typed refusal.
    let err = backup(&g.path, &["1", "kind", "s", "incremental"]).unwrap_err();
    assert!(err.contains("kind: there is no earlier backup"), "{err}");

    // The first backup is full; the next, quiesced, builds on it.
    let full = backup(&g.path, &["0"]).unwrap();
    let pf = props(&conn, &full).await;
    assert_eq!(s(&pf, "Kind"), "full");
    assert_eq!(o(&pf, "Parent"), "/");
    assert_eq!(o(&pf, "VirtualMachine"), g.path);
    crate::introspection::assert_shipped(&conn, &full, BACKUP).await;
    let gg = g.clone();
    tokio::task::spawn_blocking(move || mark(&gg, "incremental"))
        .await
        .unwrap();
    let inc = backup(&g.path, &["1", "quiesce", "b", "true"]).unwrap();
    let pi = props(&conn, &inc).await;
    assert_eq!(s(&pi, "Kind"), "incremental");
    assert_eq!(o(&pi, "Parent"), full);
    let size = |p: &HashMap<String, OwnedVariant>| u64::try_from(&p["SizeBytes"]).unwrap();
    assert!(
        size(&pi) < size(&pf) / 4,
        "the incremental backup holds only what changed: {} vs {}",
        size(&pi),
        size(&pf)
    );
    no_partial_backups();

    // Both verify; the full one cannot go while the incremental needs it.
    for b in [&full, &inc] {
        let out = call_iface_as(ALICE, b, BACKUP, "Verify", &[]).unwrap();
        assert_eq!(out, "bas true 0", "{b}");
        assert!(bool::try_from(&props(&conn, b).await["Verified"]).unwrap());
    }
    let err = call_iface_as(ALICE, &full, BACKUP, "Delete", &["a{sv}", "0"]).unwrap_err();
    assert!(err.contains("would break their chain"), "{err}");
    let err = call_iface_as(BOB, &full, BACKUP, "Delete", &["a{sv}", "0"]).unwrap_err();
    assert!(is_refusal(&err), "{err}");

    // The original stops; the incremental backup restores as a new VM
    // that boots and holds the data of that moment.
    let out = busctl_as(ALICE, &g.path, "ForceStop", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_name = format!("{}-restored", g.name);
    let restore_opts = |name: &str| {
        vec![
            "a{sv}".to_owned(),
            "2".to_owned(),
            "new_name".to_owned(),
            "s".to_owned(),
            name.to_owned(),
            "target_pool".to_owned(),
            "s".to_owned(),
            pools().disk_pool.clone(),
        ]
    };
    let args = restore_opts(&new_name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = call_iface_as(BOB, &inc, BACKUP, "Restore", &args).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    let restored = call_iface_as(ALICE, &inc, BACKUP, "Restore", &args).unwrap();
    let restored = restored
        .trim_start_matches("o ")
        .trim_matches('"')
        .to_owned();
    wait_for_object(&conn, &restored).await;
    let out = busctl_as(ALICE, &restored, "Start", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Guest::named(&new_name);
    assert_ne!(r.uuid, g.uuid);
    let rr = r.clone();
    let text = tokio::task::spawn_blocking(move || {
        rr.wait_agent();
        rr.exec("/bin/cat", &["/var/tmp/marker"]).1
    })
    .await
    .unwrap();
    assert_eq!(text.trim(), "incremental");
    let out = busctl_as(ALICE, &restored, "ForceStop", &[]);
    assert!(out.status.success());

    // Restoring over the original VM is for administrators (auth_admin):
    // refused for alice, done as root. The VM keeps its name, UUID and MAC,
    // its disk holds exactly the full backup's data, and the image it ran
    // on is gone.
    let disk_of = |name: &str| {
        virsh(&["domblklist", name])
            .lines()
            .find(|l| l.trim_start().starts_with("vda"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .to_owned()
    };
    let old_disk = disk_of(&g.name);
    let mac = virsh(&["domiflist", &g.name]);
    let pool = pools().disk_pool.clone();
    let replace = [
        "a{sv}",
        "2",
        "replace",
        "b",
        "true",
        "target_pool",
        "s",
        &pool,
    ];
    let err = call_iface_as(ALICE, &full, BACKUP, "Restore", &replace).unwrap_err();
    assert!(is_refusal(&err), "{err}");
    let out = call_iface_as("root", &full, BACKUP, "Restore", &replace).unwrap();
    assert!(out.contains(&g.path), "{out}");
    assert!(
        !std::path::Path::new(&old_disk).exists(),
        "{old_disk} stayed"
    );
    assert_eq!(virsh(&["domiflist", &g.name]), mac);
    let new_disk = disk_of(&g.name);
    let full_id = full.rsplit('/').next().unwrap().to_owned();
    let out = std::process::Command::new("qemu-img")
        .args([
            "compare",
            &new_disk,
            &format!("{}/{full_id}/vda.qcow2", repository()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the restored disk differs from the backup: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A stopped VM is copied (full only); restoring into a name in use is
    // refused; a damaged backup restores nothing.
    let err = backup(&g.path, &["1", "kind", "s", "incremental"]).unwrap_err();
    assert!(err.contains("needs the VM running"), "{err}");
    // Its Job counts the bytes of the disks as qemu-img copies them: some
    // report lies between the start and the end of the copy.
    let mut changed = properties_changed(&conn).await;
    let path = g.path.clone();
    let run = tokio::task::spawn_blocking(move || backup(&path, &["1", "keep", "u", "1"]));
    let mut midway = Vec::new();
    let mut quiet_after_end = 0;
    while quiet_after_end < 4 {
        use futures_util::StreamExt;
        let Ok(Some(Ok(m))) =
            tokio::time::timeout(std::time::Duration::from_millis(500), changed.next()).await
        else {
            // Signals still on their way once the call returned are read too.
            if run.is_finished() {
                quiet_after_end += 1;
            }
            continue;
        };
        type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);
        let Ok((iface, p, _)) = m.body().deserialize::<Changed>() else {
            continue;
        };
        if iface != "org.vapor.Virtualization.Job" {
            continue;
        }
        let step = p
            .get("Step")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok());
        let bytes = p.get("Bytes").and_then(|v| u64::try_from(v).ok());
        let progress = p.get("Progress").and_then(|v| f64::try_from(v).ok());
        let (Some(step), Some(bytes), Some(progress)) = (step, bytes, progress) else {
            continue;
        };
        if !(step.starts_with("copying vd") && bytes > 0 && progress > 0.0 && progress < 1.0) {
            continue;
        }
        // This backup's Job (others run beside it), asked while it lives.
        let job = m.header().path().map(|p| p.as_str().to_owned());
        if let Some(job) = job {
            let objects: Vec<OwnedObjectPath> =
                zbus::Proxy::new(&conn, BUS_NAME, job, "org.vapor.Virtualization.Job")
                    .await
                    .unwrap()
                    .get_property("Objects")
                    .await
                    .unwrap_or_default();
            if objects.iter().any(|o| o.as_str() == g.path) {
                midway.push(bytes);
            }
        }
    }
    let copy = run.await.unwrap().unwrap();
    assert!(
        !midway.is_empty(),
        "no progress in bytes was seen while the disk was copied"
    );
    assert_eq!(s(&props(&conn, &copy).await, "Kind"), "full");
    let args = restore_opts(&new_name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = call_iface_as(ALICE, &copy, BACKUP, "Restore", &args).unwrap_err();
    assert!(err.contains("exists already"), "{err}");
    let copy_id = copy.rsplit('/').next().unwrap().to_owned();
    std::fs::write(format!("{}/{copy_id}/vda.qcow2", repository()), b"rot").unwrap();
    let out = call_iface_as(ALICE, &copy, BACKUP, "Verify", &[]).unwrap();
    assert!(out.starts_with("bas false 1"), "{out}");
    let other = format!("{}-damaged", g.name);
    let args = restore_opts(&other);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = call_iface_as(ALICE, &copy, BACKUP, "Restore", &args).unwrap_err();
    assert!(err.contains("is damaged, nothing was restored"), "{err}");
    assert!(!virsh_quiet(&["domuuid", &other]));
    assert!(!std::path::Path::new(&format!("{}/{other}-vda.qcow2", pools().disk_dir)).exists());

    // keep=1 kept the newest: the older chain of two went as a whole.
    assert!(
        props_of(&conn, &full, BACKUP).await.is_none()
            && props_of(&conn, &inc, BACKUP).await.is_none(),
        "the old chain should have been removed by keep=1"
    );
    let out = call_iface_as(ALICE, &copy, BACKUP, "Delete", &["a{sv}", "0"]).unwrap();
    assert!(out.contains(&copy_id), "{out}");
    no_partial_backups();
    delete_with_storage(ALICE, &restored);
}

async fn props(conn: &Connection, path: &str) -> HashMap<String, OwnedVariant> {
    props_of(conn, path, BACKUP)
        .await
        .unwrap_or_else(|| panic!("no backup {path}"))
}
