//! The interface XML shipped in `dbus/` is exactly what the running daemon
//! publishes (methods, arguments, properties, signals, annotations).

use vapor::libvirt::xml::Element;

use crate::common::*;

/// A canonical text form of one `<interface>`: docs and order do not matter.
fn canonical(iface: &Element) -> String {
    fn describe(el: &Element) -> String {
        let mut attrs: Vec<String> = el.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        attrs.sort();
        let children: Vec<String> = el.children.iter().map(describe).collect();
        // Argument order matters; member order does not.
        format!("{}[{}]({})", el.name, attrs.join(","), children.join(";"))
    }
    let mut members: Vec<String> = iface.children.iter().map(describe).collect();
    members.sort();
    format!(
        "{}:\n{}",
        iface.attr("name").unwrap_or(""),
        members.join("\n")
    )
}

fn interface<'a>(node: &'a Element, name: &str) -> &'a Element {
    node.children_named("interface")
        .find(|i| i.attr("name") == Some(name))
        .unwrap_or_else(|| panic!("interface {name} missing"))
}

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

fn shipped(name: &str) -> Element {
    let file = format!("{}/dbus/{name}.xml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    Element::parse(&text).unwrap()
}

#[tokio::test]
async fn running_daemon_matches_the_shipped_interface_xml() {
    let conn = bus().await;
    let d = TestDomain::define("introspect");
    wait_for_object(&conn, &d.path()).await;

    let root = introspect(&conn, ROOT).await;
    let vm = introspect(&conn, &d.path()).await;
    for (node, name) in [(&root, MANAGER), (&vm, VM)] {
        let live = canonical(interface(node, name));
        let file = canonical(interface(&shipped(name), name));
        assert_eq!(live, file, "dbus/{name}.xml is out of date with the daemon");
    }
    // The root also carries the standard ObjectManager.
    interface(&root, "org.freedesktop.DBus.ObjectManager");
}
