//! Hotplug of cdrom media and network interfaces (a child of
//! `vm_devices.rs`, which holds the disks and the shared helpers).

use super::{hint_slots, hv, DeviceService, DiskPlan};
use crate::libvirt::xml::Element;
use crate::libvirt::{DeviceScope, DomainRef};
use crate::services::vm_devices_spec::{self as spec, NicRequest};
use crate::{Error, Result};

impl DeviceService {
    /// Insert, change (`plan` given) or eject (`None`) a cdrom's media.
    pub async fn change_media(
        &self,
        uuid: &str,
        target: &str,
        plan: Option<DiskPlan>,
        scope: DeviceScope,
    ) -> Result<()> {
        let _locked = self.model.lock_vm(uuid).await;
        let name = self.name_of(uuid)?;
        if let Some(v) = plan.as_ref().and_then(|p| p.volume.as_ref()) {
            self.storage.check_usable(v).await?;
        }
        let media = plan.map(|p| match (&p.volume, &p.host_path) {
            (Some(v), _) => (v.rec.path.clone(), v.rec.kind == "block"),
            (_, Some(h)) => (h.clone(), false),
            _ => (String::new(), false),
        });
        let t = target.to_owned();
        let what = format!("cannot change the media of {target} in VM '{name}'");
        hv(&self.model)
            .on_domain(uuid, move |_, d| {
                for (which, sc) in split(scope) {
                    let def = d.definition(which)?;
                    let cd = spec::find_disk(&def, &t)
                        .ok_or_else(|| Error::NotFound(format!("target: VM has no drive {t}")))?;
                    if cd.attr("device") != Some("cdrom") {
                        return Err(Error::InvalidArgument(format!(
                            "target: {t} is not a cdrom drive"
                        )));
                    }
                    let el = spec::cdrom_with_media(
                        cd,
                        media.as_ref().map(|(p, _)| p.as_str()),
                        media.as_ref().is_some_and(|m| m.1),
                    );
                    d.update_device(&el.to_xml(), sc)
                        .map_err(|e| e.context(&what))?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Attach a network interface; returns its MAC address.
    pub async fn attach_nic(
        &self,
        uuid: &str,
        req: NicRequest,
        scope: DeviceScope,
    ) -> Result<String> {
        let _locked = self.model.lock_vm(uuid).await;
        let name = self.name_of(uuid)?;
        let mac = match &req.mac {
            Some(m) => m.clone(),
            None => {
                let b = uuid::Uuid::new_v4().into_bytes();
                spec::new_mac([b[0], b[1], b[2]])
            }
        };
        let xml = spec::nic_xml(&req, &mac);
        let m = mac.clone();
        let what = format!("cannot attach an interface to VM '{name}'");
        hv(&self.model)
            .on_domain(uuid, move |_, d| {
                for def in d.definitions()?.all() {
                    if spec::find_nic(def, &m).is_some() {
                        return Err(Error::Conflict(format!(
                            "interface.mac: VM already has an interface {m}"
                        )));
                    }
                }
                d.attach_device(&xml, scope)
                    .map_err(|e| hint_slots(e.context(&what)))
            })
            .await?;
        log::info!(vm_name = name.as_str(), vm_uuid = uuid; "attached interface {mac}");
        Ok(mac)
    }

    /// Detach the interface with this MAC.
    pub async fn detach_nic(&self, uuid: &str, mac: &str, scope: DeviceScope) -> Result<()> {
        self.change_nic(
            uuid,
            mac,
            scope,
            "detach interface {mac} from",
            |d, nic, sc| d.detach_device(&nic.to_xml(), sc),
        )
        .await
    }

    /// Set an interface's link up or down.
    pub async fn set_link(
        &self,
        uuid: &str,
        mac: &str,
        up: bool,
        scope: DeviceScope,
    ) -> Result<()> {
        self.change_nic(
            uuid,
            mac,
            scope,
            "set the link of {mac} in",
            move |d, nic, sc| d.update_device(&spec::nic_with_link(nic, up).to_xml(), sc),
        )
        .await
    }

    /// Find the interface with this MAC in each definition of `scope` and
    /// `act` on it there. `verb` (with `{mac}`) says what, for errors.
    async fn change_nic<F>(
        &self,
        uuid: &str,
        mac: &str,
        scope: DeviceScope,
        verb: &str,
        act: F,
    ) -> Result<()>
    where
        F: Fn(&DomainRef, &Element, DeviceScope) -> Result<()> + Send + 'static,
    {
        let _locked = self.model.lock_vm(uuid).await;
        let name = self.name_of(uuid)?;
        let m = spec::check_mac("mac", mac)?;
        let what = format!("cannot {} VM '{name}'", verb.replace("{mac}", &m));
        hv(&self.model)
            .on_domain(uuid, move |_, d| {
                for (which, sc) in split(scope) {
                    let def = d.definition(which)?;
                    let nic = spec::find_nic(&def, &m)
                        .ok_or_else(|| Error::NotFound(format!("mac: VM has no interface {m}")))?;
                    act(d, nic, sc).map_err(|e| e.context(&what))?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

/// A scope as one step per definition: the live one, then the persistent one.
fn split(scope: DeviceScope) -> Vec<(crate::libvirt::Definition, DeviceScope)> {
    let mut v = Vec::new();
    if scope.live {
        v.push((
            crate::libvirt::Definition::Live,
            DeviceScope {
                live: true,
                config: false,
            },
        ));
    }
    if scope.config {
        v.push((crate::libvirt::Definition::Inactive, DeviceScope::CONFIG));
    }
    v
}
