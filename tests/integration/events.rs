//! Changes made behind vapord's back (virsh) appear on the bus by themselves.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, OwnedVariant};

use crate::common::*;

type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);

/// The new value of `prop` if `m` is a PropertiesChanged of the VM at `path`
/// that changes it.
fn changed_value(m: &zbus::Message, path: &str, prop: &str) -> Option<OwnedVariant> {
    if m.header().path().map(|p| p.as_str()) != Some(path) {
        return None;
    }
    let (iface, mut changed, _) = m.body().deserialize::<Changed>().ok()?;
    if iface != VM {
        return None;
    }
    changed.remove(prop)
}

fn state_changed_to(m: &zbus::Message, path: &str, state: &str) -> bool {
    changed_value(m, path, "State")
        .and_then(|v| String::try_from(v).ok())
        .as_deref()
        == Some(state)
}

#[tokio::test]
async fn virsh_define_start_destroy_undefine_reach_the_bus_as_signals() {
    let conn = bus().await;
    let mut added = interfaces_added(&conn).await;
    let mut removed = interfaces_removed(&conn).await;
    let mut changed = properties_changed(&conn).await;

    let d = TestDomain::define("events");
    let path = d.path();
    let m = wait_signal(&mut added, "InterfacesAdded for the new domain", |m| {
        m.body()
            .deserialize::<(
                OwnedObjectPath,
                HashMap<String, HashMap<String, OwnedVariant>>,
            )>()
            .map(|(p, ifaces)| p.as_str() == path && ifaces.contains_key(VM))
            .unwrap_or(false)
    })
    .await;
    let (_, ifaces) = m
        .body()
        .deserialize::<(
            OwnedObjectPath,
            HashMap<String, HashMap<String, OwnedVariant>>,
        )>()
        .unwrap();
    assert_eq!(
        String::try_from(ifaces[VM]["Name"].clone()).unwrap(),
        d.name
    );

    virsh(&["start", &d.name]);
    wait_signal(&mut changed, "State=running", |m| {
        state_changed_to(m, &path, "running")
    })
    .await;
    virsh(&["suspend", &d.name]);
    wait_signal(&mut changed, "State=paused", |m| {
        state_changed_to(m, &path, "paused")
    })
    .await;
    virsh(&["destroy", &d.name]);
    wait_signal(&mut changed, "State=shutoff", |m| {
        state_changed_to(m, &path, "shutoff")
    })
    .await;
    assert_eq!(prop_string(&conn, &path, "StateReason").await, "destroyed");

    virsh(&["undefine", &d.name]);
    wait_signal(&mut removed, "InterfacesRemoved", |m| {
        m.body()
            .deserialize::<(OwnedObjectPath, Vec<String>)>()
            .map(|(p, ifaces)| p.as_str() == path && ifaces.iter().any(|i| i == VM))
            .unwrap_or(false)
    })
    .await;
    assert!(lookup(&conn, &d.name).await.is_err());
}

#[tokio::test]
async fn transient_domain_appears_and_vanishes_when_destroyed() {
    let conn = bus().await;
    let mut removed = interfaces_removed(&conn).await;
    let name = unique_name("transient");
    let file = format!("{}/{name}.xml", env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(&file, domain_xml(&name, "")).unwrap();
    virsh(&["create", &file]);
    let uuid = virsh(&["domuuid", &name]).trim().to_owned();
    let path = format!("{ROOT}/vm/{}", uuid.replace('-', "_"));
    wait_for_object(&conn, &path).await;
    let props = get_all(&conn, &path).await.unwrap();
    assert!(!bool::try_from(&props["Persistent"]).unwrap());
    assert_eq!(String::try_from(props["State"].clone()).unwrap(), "running");

    // A transient VM cannot autostart: refused with a reason, not a libvirt blob.
    let p = zbus::Proxy::new(&conn, BUS_NAME, path.clone(), VM)
        .await
        .unwrap();
    let err = error_name(
        p.call::<_, _, ()>("SetAutostart", &(true,))
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("InvalidState") && err.contains("transient"),
        "{err}"
    );

    virsh(&["destroy", &name]);
    wait_signal(
        &mut removed,
        "InterfacesRemoved for the transient domain",
        |m| is_about(m, &path),
    )
    .await;
}

#[tokio::test]
async fn autostart_and_memory_changed_with_virsh_are_picked_up() {
    let conn = bus().await;
    let mut changed = properties_changed(&conn).await;
    let d = TestDomain::define("virshcfg");
    let path = d.path();
    wait_for_object(&conn, &path).await;

    // libvirt has no autostart event: the periodic bulk refresh notices it.
    virsh(&["autostart", &d.name]);
    wait_signal(&mut changed, "Autostart=true", |m| {
        changed_value(m, &path, "Autostart").and_then(|v| bool::try_from(&v).ok()) == Some(true)
    })
    .await;

    // A redefinition with more memory (what `virsh edit` does) is a "defined" event.
    let xml = virsh(&["dumpxml", "--inactive", &d.name]).replace(
        "<memory unit='KiB'>65536</memory>",
        "<memory unit='KiB'>131072</memory>",
    );
    let file = format!("{}/{}-bigger.xml", env!("CARGO_TARGET_TMPDIR"), d.name);
    std::fs::write(&file, xml).unwrap();
    virsh(&["define", &file]);
    wait_signal(&mut changed, "MemoryMiB=128", |m| {
        changed_value(m, &path, "MemoryMiB").and_then(|v| u64::try_from(&v).ok()) == Some(128)
    })
    .await;
}

#[tokio::test]
async fn running_vm_reports_live_cpu_time_from_bulk_stats() {
    let conn = bus().await;
    let mut changed = properties_changed(&conn).await;
    let d = TestDomain::define("stats");
    let path = d.path();
    wait_for_object(&conn, &path).await;
    vm_call(&conn, &path, "Start").await.unwrap();
    wait_signal(&mut changed, "CpuTimeNs > 0", |m| {
        changed_value(m, &path, "CpuTimeNs")
            .and_then(|v| u64::try_from(&v).ok())
            .is_some_and(|t| t > 0)
    })
    .await;
    let props = get_all(&conn, &path).await.unwrap();
    assert!(u64::try_from(&props["MemoryUsedKiB"]).unwrap() > 0);
    vm_call(&conn, &path, "ForceStop").await.unwrap();
}

type Managed = HashMap<zbus::OwnedObjectPath, HashMap<String, HashMap<String, zbus::OwnedVariant>>>;

async fn managed(conn: &zbus::Connection) -> Managed {
    zbus::Proxy::new(conn, BUS_NAME, ROOT, "org.freedesktop.DBus.ObjectManager")
        .await
        .unwrap()
        .call("GetManagedObjects", &())
        .await
        .unwrap()
}

/// GetManagedObjects is answered from a cache: it must follow every change
/// the signals announce (a new object, a changed property, a removal).
#[tokio::test]
async fn get_managed_objects_follows_every_announced_change() {
    let conn = bus().await;
    let d = TestDomain::define("managed");
    wait_for_object(&conn, &d.path()).await;
    let key = zbus::OwnedObjectPath::try_from(d.path()).unwrap();
    let autostart = |m: &Managed| {
        m.get(&key)
            .and_then(|i| i.get(VM))
            .and_then(|p| p.get("Autostart"))
            .map(|v| bool::try_from(v).unwrap())
    };
    assert_eq!(autostart(&managed(&conn).await), Some(false));
    let mut changes = properties_changed(&conn).await;
    virsh(&["autostart", &d.name]);
    // libvirt has no autostart event: the periodic full re-read finds it.
    wait_signal(&mut changes, "Autostart changed", |m| {
        m.header().path().is_some_and(|p| p.as_str() == d.path())
            && m.body()
                .deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                .is_ok_and(|(_, props, _)| props.contains_key("Autostart"))
    })
    .await;
    assert_eq!(autostart(&managed(&conn).await), Some(true));
    let mut removed = interfaces_removed(&conn).await;
    virsh(&["undefine", &d.name]);
    wait_signal(&mut removed, "the VM's removal", |m| is_about(m, &d.path())).await;
    assert_eq!(autostart(&managed(&conn).await), None);
}

/// EnumerateObjects says what GetManagedObjects says, in rows.
#[tokio::test]
async fn enumerate_objects_matches_get_managed_objects() {
    let conn = bus().await;
    let d = TestDomain::define("enumerate");
    wait_for_object(&conn, &d.path()).await;
    let (names, rows): (Vec<String>, OwnedVariant) =
        zbus::Proxy::new(&conn, BUS_NAME, ROOT, MANAGER)
            .await
            .unwrap()
            .call("EnumerateObjects", &(VM,))
            .await
            .unwrap();
    assert!(names.contains(&"Name".to_string()) && names.contains(&"State".to_string()));
    let rows = zbus::wire::Array::try_from(rows).unwrap();
    let row = rows
        .iter()
        .map(|r| zbus::wire::Structure::try_from(r.try_clone().unwrap()).unwrap())
        .find(|s| {
            zbus::ObjectPath::try_from(s.fields()[0].try_clone().unwrap())
                .is_ok_and(|p| p.as_str() == d.path())
        })
        .expect("the VM has a row");
    let managed = managed(&conn).await;
    let key = OwnedObjectPath::try_from(d.path()).unwrap();
    let props = &managed[&key][VM];
    assert_eq!(names.len(), props.len());
    for (i, name) in names.iter().enumerate() {
        let cell = OwnedVariant::try_from(row.fields()[i + 1].try_clone().unwrap()).unwrap();
        assert_eq!(&cell, &props[name], "{name}");
    }
    // Unknown interfaces have no rows; hostile names are refused.
    let (names, _): (Vec<String>, OwnedVariant) = zbus::Proxy::new(&conn, BUS_NAME, ROOT, MANAGER)
        .await
        .unwrap()
        .call("EnumerateObjects", &("org.example.Nothing",))
        .await
        .unwrap();
    assert!(names.is_empty());
}
