//! Editing a libvirt XML document in place, without a partial model.
//!
//! A change to a domain's configuration that libvirt has no API for is made
//! on the whole [`Element`] tree libvirt returned (every element, attribute
//! and text kept), then the tree is written back with [`Element::to_xml`] and
//! defined as a whole. Nothing vapord does not know about is ever dropped.

use super::xml::{escape, Element, METADATA_NS, METADATA_PREFIX};

impl Element {
    /// The document as XML text. Whitespace between child elements is not
    /// kept (libvirt ignores it); the text of leaf elements is kept exactly.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        out.push_str(&indent);
        out.push('<');
        out.push_str(&self.name);
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            // Whitespace other than a space is written as a reference, or
            // reading the document back would turn it into spaces.
            let value = escape(v)
                .replace('\n', "&#10;")
                .replace('\r', "&#13;")
                .replace('\t', "&#9;");
            out.push_str(&value);
            out.push('\'');
        }
        let text = if self.children.is_empty() {
            self.text.as_str()
        } else {
            self.text.trim()
        };
        if self.children.is_empty() && text.is_empty() {
            out.push_str("/>\n");
            return;
        }
        out.push('>');
        if self.children.is_empty() {
            out.push_str(&escape(text));
        } else {
            out.push('\n');
            if !text.is_empty() {
                out.push_str(&escape(text));
                out.push('\n');
            }
            for c in &self.children {
                c.write(out, depth + 1);
            }
            out.push_str(&indent);
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push_str(">\n");
    }

    /// A new element with these attributes and no content.
    pub fn new(name: &str, attrs: &[(&str, &str)]) -> Element {
        Element {
            name: name.to_owned(),
            attrs: attrs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    /// A new element holding only `text`.
    pub fn with_text(name: &str, text: &str) -> Element {
        Element {
            name: name.to_owned(),
            text: text.to_owned(),
            ..Default::default()
        }
    }

    /// This element with every name unprefixed and no namespace
    /// declarations: how libvirt wants a metadata element it files under a
    /// namespace of its own (`virDomainSetMetadata` declares it).
    pub fn without_namespaces(&self) -> Element {
        Element {
            name: self.local_name().to_owned(),
            attrs: self
                .attrs
                .iter()
                .filter(|(k, _)| k != "xmlns" && !k.starts_with("xmlns:"))
                .cloned()
                .collect(),
            text: self.text.clone(),
            children: self
                .children
                .iter()
                .map(Element::without_namespaces)
                .collect(),
        }
    }

    /// vapord's `<vm>` element in this domain's `<metadata>` (added, both,
    /// when missing).
    pub fn vapor_metadata_mut(&mut self) -> &mut Element {
        let metadata = self.ensure_child(
            "metadata",
            &["name", "uuid", "genid", "title", "description"],
        );
        let pos = metadata.children.iter().position(|c| {
            c.local_name() == "vm"
                && c.attrs
                    .iter()
                    .any(|(k, v)| k.starts_with("xmlns") && v == METADATA_NS)
        });
        let i = pos.unwrap_or_else(|| {
            let xmlns = format!("xmlns:{METADATA_PREFIX}");
            metadata.children.push(Element::new(
                &format!("{METADATA_PREFIX}:vm"),
                &[(xmlns.as_str(), METADATA_NS)],
            ));
            metadata.children.len() - 1
        });
        &mut metadata.children[i]
    }

    /// A new child element named `local` with this element's prefix.
    pub fn new_child(&self, local: &str, attrs: &[(&str, &str)]) -> Element {
        let name = match self.name.split_once(':') {
            Some((p, _)) => format!("{p}:{local}"),
            None => local.to_owned(),
        };
        Element::new(&name, attrs)
    }

    /// Set (or add) an attribute.
    pub fn set_attr(&mut self, key: &str, value: &str) {
        match self.attrs.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.attrs.push((key.to_owned(), value.to_owned())),
        }
    }

    /// Remove an attribute if present.
    pub fn remove_attr(&mut self, key: &str) {
        self.attrs.retain(|(k, _)| k != key);
    }

    /// The first child with this local name, to change it.
    pub fn child_mut(&mut self, name: &str) -> Option<&mut Element> {
        self.children.iter_mut().find(|c| c.local_name() == name)
    }

    /// The first child with this local name, added (after the children
    /// named in `after`, else at the end) when there is none.
    pub fn ensure_child(&mut self, name: &str, after: &[&str]) -> &mut Element {
        let pos = match self.children.iter().position(|c| c.local_name() == name) {
            Some(i) => i,
            None => {
                let at = self
                    .children
                    .iter()
                    .rposition(|c| after.contains(&c.local_name()))
                    .map(|i| i + 1)
                    .unwrap_or(self.children.len());
                self.children.insert(at, Element::new(name, &[]));
                at
            }
        };
        &mut self.children[pos]
    }

    /// Remove every child with this local name; how many there were.
    pub fn remove_children(&mut self, name: &str) -> usize {
        let before = self.children.len();
        self.children.retain(|c| c.local_name() != name);
        before - self.children.len()
    }

    /// Every descendant (not self) with this local name, to change them.
    pub fn for_each_descendant_mut(&mut self, name: &str, f: &mut dyn FnMut(&mut Element)) {
        for c in &mut self.children {
            if c.local_name() == name {
                f(c);
            }
            c.for_each_descendant_mut(name, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Element;

    const DOMAIN: &str = r#"<domain type='kvm' id='3'>
  <name>a &amp; b</name>
  <metadata>
    <vapor:vm xmlns:vapor="https://vapor.dev/xmlns/domain/1"><vapor:custom key="k">v &lt;1&gt;</vapor:custom></vapor:vm>
  </metadata>
  <description>two
lines</description>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <devices><disk type='file' device='disk'><source file="/a'b"/></disk></devices>
</domain>"#;

    #[test]
    fn writing_back_keeps_every_element_attribute_and_text() {
        let el = Element::parse(DOMAIN).unwrap();
        let again = Element::parse(&el.to_xml()).unwrap();
        // Whitespace between elements is the only thing not kept.
        fn squeeze(e: &mut Element) {
            if !e.children.is_empty() {
                e.text = e.text.trim().to_owned();
            }
            e.children.iter_mut().for_each(squeeze);
        }
        let (mut a, mut b) = (el, again);
        squeeze(&mut a);
        squeeze(&mut b);
        assert_eq!(a, b);
        assert_eq!(b.child_text("description"), Some("two\nlines"));
    }

    #[test]
    fn attribute_line_breaks_and_tabs_survive_a_round_trip() {
        let mut el = Element::new("arg", &[("value", "a\nb\tc\rd")]);
        el.set_attr("other", "x'y\"z");
        let again = Element::parse(&el.to_xml()).unwrap();
        assert_eq!(again.attr("value"), Some("a\nb\tc\rd"));
        assert_eq!(again.attr("other"), Some("x'y\"z"));
    }

    #[test]
    fn children_are_added_where_libvirt_expects_them() {
        let mut el = Element::parse(DOMAIN).unwrap();
        el.ensure_child("title", &["name", "uuid"]).text = "T".into();
        assert_eq!(el.children[1].name, "title");
        assert_eq!(el.remove_children("description"), 1);
        assert!(el.child("description").is_none());
        let os = el.child_mut("os").unwrap();
        os.set_attr("firmware", "efi");
        os.set_attr("firmware", "efi");
        assert_eq!(os.attrs, vec![("firmware".to_string(), "efi".to_string())]);
        os.remove_attr("firmware");
        assert!(os.attrs.is_empty());
        let vm = el
            .child("metadata")
            .unwrap()
            .child("vm")
            .unwrap()
            .without_namespaces();
        assert_eq!(vm.name, "vm");
        assert!(vm.attrs.is_empty());
        assert_eq!(vm.children[0].name, "custom");
    }
}
