//! The typed port for changing a domain that exists: its definition for
//! editing, rename, vCPUs and memory, title and description, device updates
//! (media, link state), online disk resize, and the list of changes waiting
//! for the next start (kept in the running domain's own metadata, so it
//! survives a restart of vapord and vanishes when the domain stops).

use virt_sys as sys;

use super::conn::Session;
use super::domain::{DeviceScope, DomainRef};
use super::errors::bare;
use super::xml::{escape, Element};
use crate::Result;

/// Namespace of the pending-changes element in a running domain's metadata.
pub const PENDING_NS: &str = "https://vapor.dev/xmlns/pending/1";

/// The running domain's maxima: vCPUs and memory (KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    pub max_vcpus: u32,
    pub max_memory_kib: u64,
}

/// The pending-changes element for `fields`. Pure.
pub fn pending_element(fields: &[String]) -> String {
    let mut x = String::from("<pending>");
    for f in fields {
        x.push_str(&format!("<field name='{}'/>", escape(f)));
    }
    x.push_str("</pending>");
    x
}

/// The fields of a pending-changes element. Pure.
pub fn pending_fields(xml: &str) -> Vec<String> {
    Element::parse(xml)
        .map(|el| {
            el.children_named("field")
                .filter_map(|f| f.attr("name").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl DomainRef {
    /// The persistent definition with everything in it (passwords too), to
    /// edit and define back whole.
    pub fn editable_definition(&self) -> Result<Element> {
        let flags = sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE;
        let xml = self.dom.xml_desc(flags).map_err(bare)?;
        Element::parse(&xml)
    }

    /// The running domain's maxima.
    pub fn live_limits(&self) -> Result<LiveLimits> {
        Ok(LiveLimits {
            max_vcpus: self.dom.max_vcpus().map_err(bare)? as u32,
            max_memory_kib: self.dom.max_memory().map_err(bare)?,
        })
    }

    /// Rename a shut-off domain.
    pub fn rename(&self, name: &str) -> Result<()> {
        self.dom.rename(name, 0).map_err(bare)
    }

    /// Set the number of vCPUs in use in `scope`.
    pub fn set_vcpus(&self, n: u32, scope: DeviceScope) -> Result<()> {
        self.dom.set_vcpus_flags(n, scope.flags()).map_err(bare)
    }

    /// Set the memory in use (the balloon target), KiB, in `scope`.
    pub fn set_memory(&self, kib: u64, scope: DeviceScope) -> Result<()> {
        self.dom.set_memory_flags(kib, scope.flags()).map_err(bare)
    }

    /// Set (empty: remove) the title or the description in `scope`.
    pub fn set_title_or_description(
        &self,
        title: bool,
        text: &str,
        scope: DeviceScope,
    ) -> Result<()> {
        let kind = if title {
            sys::VIR_DOMAIN_METADATA_TITLE
        } else {
            sys::VIR_DOMAIN_METADATA_DESCRIPTION
        };
        let text = (!text.is_empty()).then_some(text);
        self.dom
            .set_metadata(kind as i32, text, None, None, scope.flags())
            .map_err(bare)
    }

    /// Replace vapord's metadata element in `scope` only.
    pub fn set_vapor_metadata_in(&self, element: &str, scope: DeviceScope) -> Result<()> {
        self.dom
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(element),
                Some(super::xml::METADATA_PREFIX),
                Some(super::xml::METADATA_NS),
                scope.flags(),
            )
            .map_err(bare)
    }

    /// Change a device in place (a cdrom's media, an interface's link).
    pub fn update_device(&self, xml: &str, scope: DeviceScope) -> Result<()> {
        self.dom
            .update_device_flags(xml, scope.flags())
            .map_err(bare)
    }

    /// Grow a running domain's disk (`target`, e.g. `vdb`) to `bytes`.
    pub fn block_resize(&self, target: &str, bytes: u64) -> Result<()> {
        self.dom
            .block_resize(target, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            .map_err(bare)
    }

    /// The size in bytes the guest sees of disk `target` of a running domain.
    pub fn block_capacity(&self, target: &str) -> Result<u64> {
        self.dom
            .block_info(target, 0)
            .map(|i| i.capacity)
            .map_err(bare)
    }

    /// Record the changes waiting for the next start in the running domain
    /// (empty: none).
    pub fn set_pending(&self, fields: &[String]) -> Result<()> {
        let element = (!fields.is_empty()).then(|| pending_element(fields));
        self.dom
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                element.as_deref(),
                Some("vaporpending"),
                Some(PENDING_NS),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            )
            .map_err(bare)
    }

    /// The changes waiting for the next start of a running domain.
    pub fn pending(&self) -> Vec<String> {
        self.dom
            .metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(PENDING_NS),
                sys::VIR_DOMAIN_AFFECT_LIVE,
            )
            .map(|x| pending_fields(&x))
            .unwrap_or_default()
    }
}

impl Session<'_> {
    /// Define a domain's whole (edited) definition back.
    pub fn redefine(&self, doc: &Element) -> Result<()> {
        self.define_domain(&doc.to_xml()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pending_fields_round_trip() {
        let fields = vec!["cpu".to_string(), "max_vcpus".to_string()];
        let x = super::pending_element(&fields);
        assert_eq!(super::pending_fields(&x), fields);
        assert!(super::pending_fields("not xml").is_empty());
    }
}
