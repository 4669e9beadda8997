//! The interface XML shipped in `dbus/` is exactly what the running daemon
//! publishes (methods, arguments, properties, signals, annotations).

use vapor::dbus::introspection::{canonical_interface, shipped_interface};
use vapor::libvirt::xml::Element;

use crate::common::*;

async fn introspect(conn: &zbus::Connection, path: &str) -> Element {
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
    for (node, name) in [
        (&root, MANAGER),
        (&vm, VM),
        (&pci, "org.vapor.Virtualization.PciDevice"),
    ] {
        let live = canonical_interface(node, name);
        let file = canonical_interface(&shipped_interface(name), name);
        assert_eq!(live, file, "dbus/{name}.xml is out of date with the daemon");
    }
    // The root also carries the standard ObjectManager.
    canonical_interface(&root, "org.freedesktop.DBus.ObjectManager");
}
