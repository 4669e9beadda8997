//! The interface XML shipped in `dbus/` is exactly what the running daemon
//! publishes (methods, arguments, properties, signals, annotations).

use vapor::dbus::introspection::{canonical_interface, shipped_interface};
use vapor::libvirt::xml::Element;

use crate::common::*;

pub async fn introspect(conn: &zbus::Connection, path: &str) -> Element {
    let p = zbus::Proxy::new(
        conn,
        BUS_NAME,
        path.to_owned(),
        "org.freedesktop.DBus.Introspectable",
    )
    .await
    .unwrap();
    let xml: String = p.call("Introspect", &()).await.unwrap();
    Element::parse(&xml).unwrap()
}

/// The object at `path` publishes exactly the shipped `dbus/<iface>.xml`.
pub async fn assert_shipped(conn: &zbus::Connection, path: &str, iface: &str) {
    let node = introspect(conn, path).await;
    assert_eq!(
        canonical_interface(&node, iface),
        canonical_interface(&shipped_interface(iface), iface),
        "dbus/{iface}.xml is out of date with the daemon"
    );
}

#[tokio::test]
async fn running_daemon_matches_the_shipped_interface_xml() {
    let conn = bus().await;
    let d = TestDomain::define("introspect");
    wait_for_object(&conn, &d.path()).await;

    let root = introspect(&conn, ROOT).await;
    let vm = introspect(&conn, &d.path()).await;
    // Any PCI device of the host will do.
    let p = zbus::Proxy::new(&conn, BUS_NAME, ROOT, "org.freedesktop.DBus.ObjectManager")
        .await
        .unwrap();
    let managed: std::collections::HashMap<
        zbus::OwnedObjectPath,
        std::collections::HashMap<String, std::collections::HashMap<String, zbus::OwnedVariant>>,
    > = p.call("GetManagedObjects", &()).await.unwrap();
    let pci_path = managed
        .keys()
        .find(|k| k.as_str().starts_with(&format!("{ROOT}/pci/")))
        .expect("the host has PCI devices")
        .clone();
    let pci = introspect(&conn, pci_path.as_str()).await;
    // A pool with one volume, and a network (defined, never started).
    let pool = TestPool::new("introspect");
    pool.volume("v.raw", "raw");
    pool.refresh();
    let uuid = virsh(&["pool-uuid", &pool.name]).trim().to_owned();
    let pool_path = format!("{ROOT}/pool/{}", uuid.replace('-', "_"));
    let volume_path = format!("{pool_path}/v_2eraw");
    let net_name = unique_name("introspect");
    let net_xml = format!("{}/{net_name}.xml", env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        &net_xml,
        format!("<network><name>{net_name}</name></network>"),
    )
    .unwrap();
    virsh(&["net-define", &net_xml]);
    let net_uuid = virsh(&["net-uuid", &net_name]).trim().to_owned();
    let net_path = format!("{ROOT}/network/{}", net_uuid.replace('-', "_"));
    let deadline = std::time::Instant::now() + EVENT_WAIT;
    while !(crate::storage::object_exists(&conn, &volume_path, "org.vapor.Virtualization.Volume")
        .await
        && crate::storage::object_exists(&conn, &net_path, "org.vapor.Virtualization.Network")
            .await)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pool, volume or network never appeared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pool_node = introspect(&conn, &pool_path).await;
    let volume_node = introspect(&conn, &volume_path).await;
    let net_node = introspect(&conn, &net_path).await;
    virsh(&["net-undefine", &net_name]);
    for (node, name) in [
        (&root, MANAGER),
        (&vm, VM),
        (&pci, "org.vapor.Virtualization.PciDevice"),
        (&pool_node, "org.vapor.Virtualization.StoragePool"),
        (&volume_node, "org.vapor.Virtualization.Volume"),
        (&net_node, "org.vapor.Virtualization.Network"),
    ] {
        let live = canonical_interface(node, name);
        let file = canonical_interface(&shipped_interface(name), name);
        assert_eq!(live, file, "dbus/{name}.xml is out of date with the daemon");
    }
    // The root also carries the standard ObjectManager.
    canonical_interface(&root, "org.freedesktop.DBus.ObjectManager");
}
