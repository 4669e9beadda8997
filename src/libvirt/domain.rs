//! The typed port for domains: lifecycle, autostart, definition and
//! undefinition, the live and the inactive definition, vapord's metadata and
//! device attach/detach. libvirt's flags are decided here and nowhere else
//! (what an undefine removes: [`undefine_flags`]).
//!
//! Services reach a domain through [`Hypervisor::on_domain`] (by UUID, with
//! the cached handle) or a [`Session`] ([`Session::domains`],
//! [`Session::domain`], [`Session::domain_named`], [`Session::define_domain`])
//! and act on the [`DomainRef`] they get, on the blocking pool. Errors carry
//! libvirt's own message and kind ([`super::errors::bare`]; a domain that is
//! gone is `Error::NotFound`): say what was being done with
//! [`Error::context`](crate::Error::context).

use virt::domain::{Domain, MemoryParameters};
use virt_sys as sys;

use super::conn::{Hypervisor, Session};
use super::errors::bare;
use super::records::{self, DomainState};
use super::xml::{Element, VaporMetadata, METADATA_NS, METADATA_PREFIX};
use crate::Result;

/// A lifecycle operation libvirt performs on a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainAction {
    /// Boot it (or resume its managed-save image).
    Start,
    /// Ask the guest to power off (ACPI or guest agent).
    Shutdown,
    /// Ask the guest to reboot.
    Reboot,
    /// Pull the plug (`virDomainDestroy`).
    Destroy,
    /// Pause it.
    Suspend,
    Resume,
    /// Press the reset button.
    Reset,
}

/// Which definition of a domain to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Definition {
    /// What runs now; for a stopped domain, its only definition.
    Live,
    /// What the next start uses (`VIR_DOMAIN_XML_INACTIVE`).
    Inactive,
}

impl Definition {
    fn flags(self) -> u32 {
        match self {
            Self::Live => 0,
            Self::Inactive => sys::VIR_DOMAIN_XML_INACTIVE,
        }
    }
}

/// The live and the inactive definition of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definitions {
    pub live: Element,
    /// The persistent definition when it is another document than `live`
    /// (a running persistent domain); `None` when `live` is the only one (a
    /// stopped domain, or a transient one).
    pub inactive: Option<Element>,
}

impl Definitions {
    /// Every definition, the live one first.
    pub fn all(&self) -> impl Iterator<Item = &Element> {
        std::iter::once(&self.live).chain(self.inactive.as_ref())
    }

    /// Every definition, the persistent one first.
    pub fn persistent_first(&self) -> impl Iterator<Item = &Element> {
        self.inactive.iter().chain(std::iter::once(&self.live))
    }

    /// Every definition, the live one first.
    pub fn into_vec(self) -> Vec<Element> {
        std::iter::once(self.live).chain(self.inactive).collect()
    }
}

/// Where a device change (or a parameter) applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceScope {
    /// The running domain.
    pub live: bool,
    /// The persistent definition.
    pub config: bool,
}

impl DeviceScope {
    /// Only the persistent definition.
    pub const CONFIG: DeviceScope = DeviceScope {
        live: false,
        config: true,
    };

    /// libvirt's `VIR_DOMAIN_AFFECT_*` flags. Pure.
    pub fn flags(self) -> u32 {
        let mut f = 0;
        if self.live {
            f |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        if self.config {
            f |= sys::VIR_DOMAIN_AFFECT_CONFIG;
        }
        f
    }

    /// The definition a change in this scope is checked against: the
    /// persistent one for a change of the configuration alone, else the
    /// live one.
    pub fn definition(self) -> Definition {
        if self.config && !self.live {
            Definition::Inactive
        } else {
            Definition::Live
        }
    }
}

/// What goes with a definition when it is undefined, besides what always
/// goes (see [`undefine_flags`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undefine {
    /// Delete the firmware variables (NVRAM) file; else it is kept.
    pub remove_nvram: bool,
    /// Delete the emulated TPM's state; else it is kept.
    pub remove_tpm: bool,
}

/// The flags of an undefine. The managed-save image and the snapshot and
/// checkpoint metadata always go: they describe only this domain, and
/// libvirt refuses to undefine a domain that has them otherwise. The NVRAM
/// file and the TPM state go only when asked, and are kept explicitly
/// otherwise. Pure.
pub fn undefine_flags(u: Undefine) -> u32 {
    let mut flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
    flags |= if u.remove_nvram {
        sys::VIR_DOMAIN_UNDEFINE_NVRAM
    } else {
        sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
    };
    flags |= if u.remove_tpm {
        sys::VIR_DOMAIN_UNDEFINE_TPM
    } else {
        sys::VIR_DOMAIN_UNDEFINE_KEEP_TPM
    };
    flags
}

/// Where vapord's metadata is read from: the persistent definition when
/// there is one, else the live one. Pure.
fn metadata_read_flags(persistent: bool) -> u32 {
    if persistent {
        sys::VIR_DOMAIN_AFFECT_CONFIG
    } else {
        sys::VIR_DOMAIN_AFFECT_LIVE
    }
}

/// Where vapord's metadata is written: the persistent definition when there
/// is one, and the live one while the domain runs. Pure.
fn metadata_write_flags(persistent: bool, active: bool) -> u32 {
    DeviceScope {
        live: active || !persistent,
        config: persistent,
    }
    .flags()
}

/// One domain, to act on inside a blocking section.
#[derive(Clone)]
pub struct DomainRef {
    pub(super) dom: Domain,
}

impl DomainRef {
    pub fn uuid(&self) -> Result<String> {
        self.dom.uuid_string().map_err(bare)
    }

    pub fn name(&self) -> Result<String> {
        self.dom.name().map_err(bare)
    }

    /// Whether a QEMU process exists for it.
    pub fn is_active(&self) -> Result<bool> {
        self.dom.is_active().map_err(bare)
    }

    /// Whether it has a persistent definition (else it is transient).
    pub fn is_persistent(&self) -> Result<bool> {
        self.dom.is_persistent().map_err(bare)
    }

    /// Its state and the reason for it.
    pub fn state(&self) -> Result<(DomainState, &'static str)> {
        records::domain_state(&self.dom).map_err(bare)
    }

    /// Perform a lifecycle operation.
    pub fn perform(&self, action: DomainAction) -> Result<()> {
        let d = &self.dom;
        match action {
            DomainAction::Start => d.create(),
            DomainAction::Shutdown => d.shutdown(),
            DomainAction::Reboot => d.reboot(0),
            DomainAction::Destroy => d.destroy(),
            DomainAction::Suspend => d.suspend(),
            DomainAction::Resume => d.resume(),
            DomainAction::Reset => d.reset(),
        }
        .map_err(bare)
    }

    pub fn start(&self) -> Result<()> {
        self.perform(DomainAction::Start)
    }

    pub fn destroy(&self) -> Result<()> {
        self.perform(DomainAction::Destroy)
    }

    /// Start it (or not) when the host boots.
    pub fn set_autostart(&self, on: bool) -> Result<()> {
        self.dom.set_autostart(on).map_err(bare)
    }

    /// Remove its persistent definition, with what [`undefine_flags`] says.
    pub fn undefine(&self, what: Undefine) -> Result<()> {
        self.dom.undefine_flags(undefine_flags(what)).map_err(bare)
    }

    /// One of its definitions, parsed.
    pub fn definition(&self, which: Definition) -> Result<Element> {
        let xml = self.dom.xml_desc(which.flags()).map_err(bare)?;
        Element::parse(&xml)
    }

    /// The live and (when it is another document) the inactive definition.
    pub fn definitions(&self) -> Result<Definitions> {
        let two =
            self.dom.is_active().unwrap_or(false) && self.dom.is_persistent().unwrap_or(false);
        let live = self.definition(Definition::Live)?;
        let inactive = if two {
            Some(self.definition(Definition::Inactive)?)
        } else {
            None
        };
        Ok(Definitions { live, inactive })
    }

    /// vapord's own metadata element; empty when there is none (or it
    /// cannot be read).
    pub fn vapor_metadata(&self) -> VaporMetadata {
        let flags = metadata_read_flags(self.dom.is_persistent().unwrap_or(false));
        self.dom
            .metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(METADATA_NS),
                flags,
            )
            .ok()
            .and_then(|x| Element::parse(&x).ok())
            .map(|el| VaporMetadata::from_element(&el))
            .unwrap_or_default()
    }

    /// Replace vapord's metadata element (`element`: a `<vm>` element, as
    /// `creation::domain_xml::metadata_element` writes it; libvirt files it
    /// under [`METADATA_NS`]) in the persistent definition, and in the live
    /// one while the domain runs.
    pub fn set_vapor_metadata(&self, element: &str) -> Result<()> {
        let flags = metadata_write_flags(self.is_persistent()?, self.is_active()?);
        self.dom
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(element),
                Some(METADATA_PREFIX),
                Some(METADATA_NS),
                flags,
            )
            .map_err(bare)
    }

    /// Attach a device (its XML element) in `scope`.
    pub fn attach_device(&self, xml: &str, scope: DeviceScope) -> Result<()> {
        self.dom
            .attach_device_flags(xml, scope.flags())
            .map_err(bare)
    }

    /// Detach a device (an XML element that identifies it) in `scope`.
    pub fn detach_device(&self, xml: &str, scope: DeviceScope) -> Result<()> {
        self.dom
            .detach_device_flags(xml, scope.flags())
            .map_err(bare)
    }

    /// Set `<memtune><hard_limit>` (KiB) in `scope`.
    pub fn set_memory_hard_limit(&self, kib: u64, scope: DeviceScope) -> Result<()> {
        let params = MemoryParameters {
            hard_limit: Some(kib),
            soft_limit: None,
            min_guarantee: None,
            swap_hard_limit: None,
        };
        self.dom
            .set_memory_parameters(params, scope.flags())
            .map_err(bare)
    }
}

impl Session<'_> {
    /// Every domain, running or not.
    pub fn domains(&self) -> Result<Vec<DomainRef>> {
        let doms = self.conn.list_all_domains(0).map_err(bare)?;
        Ok(doms.into_iter().map(|dom| DomainRef { dom }).collect())
    }

    /// The domain with this UUID; `NotFound` when there is none.
    pub fn domain(&self, uuid: &str) -> Result<DomainRef> {
        let dom = self.conn.lookup_domain_by_uuid_string(uuid).map_err(bare)?;
        Ok(DomainRef { dom })
    }

    /// The domain with this name; `NotFound` when there is none.
    pub fn domain_named(&self, name: &str) -> Result<DomainRef> {
        let dom = self.conn.lookup_domain_by_name(name).map_err(bare)?;
        Ok(DomainRef { dom })
    }

    /// Define a persistent domain from `xml`.
    pub fn define_domain(&self, xml: &str) -> Result<DomainRef> {
        let dom = self.conn.define_domain_xml(xml).map_err(bare)?;
        Ok(DomainRef { dom })
    }
}

impl Hypervisor {
    /// Run blocking work on one domain, found by UUID (through the handle
    /// cache): a missing domain is `NotFound`, and so is one that went away
    /// meanwhile (its cached handle is then dropped).
    pub async fn on_domain<T, F>(&self, uuid: &str, f: F) -> Result<T>
    where
        F: FnOnce(&Session<'_>, &DomainRef) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run_on_domain(uuid, move |conn, dom| {
            f(&Session { conn }, &DomainRef { dom: dom.clone() })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefine_always_takes_the_domains_own_metadata() {
        let always = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;
        for remove_nvram in [false, true] {
            for remove_tpm in [false, true] {
                let f = undefine_flags(Undefine {
                    remove_nvram,
                    remove_tpm,
                });
                assert_eq!(f & always, always);
            }
        }
    }

    #[test]
    fn nvram_and_tpm_go_only_when_asked_and_are_kept_explicitly_otherwise() {
        let keep = undefine_flags(Undefine {
            remove_nvram: false,
            remove_tpm: false,
        });
        assert_ne!(keep & sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM, 0);
        assert_ne!(keep & sys::VIR_DOMAIN_UNDEFINE_KEEP_TPM, 0);
        assert_eq!(keep & sys::VIR_DOMAIN_UNDEFINE_NVRAM, 0);
        assert_eq!(keep & sys::VIR_DOMAIN_UNDEFINE_TPM, 0);
        let remove = undefine_flags(Undefine {
            remove_nvram: true,
            remove_tpm: true,
        });
        assert_ne!(remove & sys::VIR_DOMAIN_UNDEFINE_NVRAM, 0);
        assert_ne!(remove & sys::VIR_DOMAIN_UNDEFINE_TPM, 0);
        assert_eq!(remove & sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM, 0);
        assert_eq!(remove & sys::VIR_DOMAIN_UNDEFINE_KEEP_TPM, 0);
        let mixed = undefine_flags(Undefine {
            remove_nvram: false,
            remove_tpm: true,
        });
        assert_ne!(mixed & sys::VIR_DOMAIN_UNDEFINE_KEEP_NVRAM, 0);
        assert_ne!(mixed & sys::VIR_DOMAIN_UNDEFINE_TPM, 0);
    }

    #[test]
    fn device_scope_gives_flags_and_the_definition_to_check() {
        let live = DeviceScope {
            live: true,
            config: false,
        };
        let both = DeviceScope {
            live: true,
            config: true,
        };
        assert_eq!(live.flags(), sys::VIR_DOMAIN_AFFECT_LIVE);
        assert_eq!(DeviceScope::CONFIG.flags(), sys::VIR_DOMAIN_AFFECT_CONFIG);
        assert_eq!(
            both.flags(),
            sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
        );
        assert_eq!(live.definition(), Definition::Live);
        assert_eq!(both.definition(), Definition::Live);
        assert_eq!(DeviceScope::CONFIG.definition(), Definition::Inactive);
    }

    #[test]
    fn metadata_lives_in_the_persistent_definition_when_there_is_one() {
        assert_eq!(metadata_read_flags(true), sys::VIR_DOMAIN_AFFECT_CONFIG);
        assert_eq!(metadata_read_flags(false), sys::VIR_DOMAIN_AFFECT_LIVE);
        assert_eq!(
            metadata_write_flags(true, false),
            sys::VIR_DOMAIN_AFFECT_CONFIG
        );
        assert_eq!(
            metadata_write_flags(true, true),
            sys::VIR_DOMAIN_AFFECT_CONFIG | sys::VIR_DOMAIN_AFFECT_LIVE
        );
        assert_eq!(
            metadata_write_flags(false, true),
            sys::VIR_DOMAIN_AFFECT_LIVE
        );
    }

    #[test]
    fn definitions_list_the_persistent_one_first_when_asked() {
        let live = Element::parse("<domain><name>live</name></domain>").unwrap();
        let inactive = Element::parse("<domain><name>config</name></domain>").unwrap();
        let one = Definitions {
            live: live.clone(),
            inactive: None,
        };
        assert_eq!(one.all().count(), 1);
        let two = Definitions {
            live: live.clone(),
            inactive: Some(inactive.clone()),
        };
        let names = |it: Vec<&Element>| -> Vec<String> {
            it.iter()
                .map(|e| e.child_text("name").unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(two.all().collect()), ["live", "config"]);
        assert_eq!(names(two.persistent_first().collect()), ["config", "live"]);
        assert_eq!(two.into_vec(), vec![live, inactive]);
    }
}
