//! Comparing introspection XML by meaning: the shipped interface files in
//! `dbus/` against what the daemon publishes (tests use this; docs, comments
//! and member order do not matter, argument order does).

use crate::libvirt::xml::Element;

fn describe(el: &Element) -> String {
    let mut attrs: Vec<String> = el.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    attrs.sort();
    let children: Vec<String> = el.children.iter().map(describe).collect();
    format!("{}[{}]({})", el.name, attrs.join(","), children.join(";"))
}

/// A canonical text form of the interface `name` inside a `<node>`.
pub fn canonical_interface(node: &Element, name: &str) -> String {
    let iface = node
        .children_named("interface")
        .find(|i| i.attr("name") == Some(name))
        .unwrap_or_else(|| panic!("interface {name} missing"));
    let mut members: Vec<String> = iface.children.iter().map(describe).collect();
    members.sort();
    format!("{name}:\n{}", members.join("\n"))
}

/// The shipped `dbus/<name>.xml`, parsed.
pub fn shipped_interface(name: &str) -> Element {
    let file = format!("{}/dbus/{name}.xml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    Element::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}
