//! Who uses what: for every domain, the storage paths its definitions use
//! (disks, NVRAM, whole backing chains), the virtual networks its interfaces
//! are on, and the volumes vapord created for it. Volumes and networks
//! publish `UsedBy` and `OwnedBy` from here.
//!
//! Kept current the way the PCI service keeps its hostdev map: one domain is
//! re-read when libvirt reports an event for it, everything after a
//! (re)connect. Followers learn of changes through [`References::changes`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::storage_ownership::{canonical, definition_paths_of, domain_definitions};
use crate::libvirt::xml::{Element, VaporMetadata};
use crate::libvirt::{DomainRef, Hypervisor, Session};
use crate::{Error, Result};

/// What one domain uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainUse {
    pub name: String,
    /// Canonical paths (disks, NVRAM, backing chains).
    pub paths: Vec<String>,
    /// Names of the virtual networks its interfaces are on.
    pub networks: Vec<String>,
    /// Canonical paths of the volumes vapord created for it.
    pub owned: Vec<String>,
}

/// The networks a definition's interfaces are on (`<interface type='network'>`).
pub fn domain_networks(domain: &Element) -> Vec<String> {
    let Some(devices) = domain.child("devices") else {
        return Vec::new();
    };
    devices
        .children_named("interface")
        .filter(|i| i.attr("type") == Some("network"))
        .filter_map(|i| i.child("source")?.attr("network").map(String::from))
        .collect()
}

fn read_use(s: &Session, d: &DomainRef) -> std::result::Result<DomainUse, String> {
    let mut u = DomainUse {
        name: d.name().unwrap_or_default(),
        ..DomainUse::default()
    };
    for root in domain_definitions(d)? {
        u.paths.extend(definition_paths_of(s, &root)?);
        u.networks.extend(domain_networks(&root));
        if let Some(md) = VaporMetadata::from_domain(&root) {
            u.owned
                .extend(md.owned_volumes.iter().map(|p| canonical(p)));
        }
    }
    for v in [&mut u.paths, &mut u.networks, &mut u.owned] {
        v.sort();
        v.dedup();
    }
    Ok(u)
}

pub struct References {
    hv: Arc<Hypervisor>,
    by_domain: RwLock<HashMap<String, DomainUse>>,
    generation: watch::Sender<u64>,
}

impl References {
    pub fn new(hv: Arc<Hypervisor>) -> Arc<Self> {
        Arc::new(Self {
            hv,
            by_domain: RwLock::new(HashMap::new()),
            generation: watch::channel(0).0,
        })
    }

    /// Bumped whenever what any domain uses changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, DomainUse>> {
        self.by_domain.read().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, f: impl FnOnce(&mut HashMap<String, DomainUse>) -> bool) {
        let changed = f(&mut self.by_domain.write().unwrap_or_else(|e| e.into_inner()));
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Re-read every domain.
    pub async fn load_all(&self) -> Result<()> {
        let all = self
            .hv
            .session(|s| {
                let doms = s
                    .domains()
                    .map_err(|e| e.context("cannot list domains"))?;
                Ok(doms
                    .iter()
                    .filter_map(|d| {
                        let uuid = d.uuid().ok()?;
                        match read_use(s, d) {
                            Ok(u) => Some((uuid, u)),
                            Err(e) => {
                                log::debug!(vm_uuid = uuid.as_str(); "cannot read what the domain uses: {e}");
                                None
                            }
                        }
                    })
                    .collect::<HashMap<_, _>>())
            })
            .await?;
        self.replace(|map| {
            let changed = *map != all;
            *map = all;
            changed
        });
        Ok(())
    }

    /// Re-read one domain (after an event for it).
    pub async fn refresh(&self, uuid: &str) {
        let id = uuid.to_owned();
        let read = self
            .hv
            .session(move |s| match s.domain(&id) {
                Ok(d) => read_use(s, &d).map(Some).map_err(Error::Failed),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e.context("cannot look up domain")),
            })
            .await;
        match read {
            Ok(now) => self.replace(|map| match now {
                Some(u) => map.insert(uuid.to_owned(), u.clone()).as_ref() != Some(&u),
                None => map.remove(uuid).is_some(),
            }),
            Err(e) => log::debug!(vm_uuid = uuid; "cannot re-read what the domain uses: {e}"),
        }
    }

    /// The domains (uuid, name) using a canonical path, by name.
    pub fn users_of_path(&self, path: &str) -> Vec<(String, String)> {
        self.users(|u| u.paths.iter().any(|p| p == path))
    }

    /// The domains (uuid, name) with an interface on a network, by name.
    pub fn users_of_network(&self, network: &str) -> Vec<(String, String)> {
        self.users(|u| u.networks.iter().any(|n| n == network))
    }

    /// The domain vapord created a volume (canonical path) for.
    pub fn owner_of(&self, path: &str) -> Option<String> {
        self.read()
            .iter()
            .find(|(_, u)| u.owned.iter().any(|p| p == path))
            .map(|(uuid, _)| uuid.clone())
    }

    fn users(&self, f: impl Fn(&DomainUse) -> bool) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .read()
            .iter()
            .filter(|(_, u)| f(u))
            .map(|(uuid, u)| (uuid.clone(), u.name.clone()))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_on_networks_are_found_and_others_ignored() {
        let xml = r#"<domain><devices>
            <interface type='network'><source network='lab'/></interface>
            <interface type='bridge'><source bridge='br0'/></interface>
            <interface type='network'><source network='default'/></interface>
            <interface type='user'/>
        </devices></domain>"#;
        let root = Element::parse(xml).unwrap();
        assert_eq!(domain_networks(&root), ["lab", "default"]);
        assert!(domain_networks(&Element::parse("<domain/>").unwrap()).is_empty());
    }
}
