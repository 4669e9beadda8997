//! `org.vapor.Virtualization.Network`: one object per libvirt virtual
//! network at `/org/vapor/Virtualization/network/<uuid>`. Properties come
//! from the network service's records (one table); every change is polkit
//! `network-manage` with the network's name, UUID and mode as details.

use std::sync::Arc;

use zbus::message::Header;
use zbus::{interface, OwnedObjectPath, Variant};

use super::object::{fixed, prop, refresh_shown, shown, text, vm_paths, Kind, Prop, Shown};
use super::options;
use super::polkit::{Action, Authorizer, Target};
use super::Error;
use crate::services::network::{NetworkService, NetworkView};
use crate::text::{for_bus, TextRule};

/// Object path of a network.
pub fn network_path(uuid: &str) -> String {
    super::uuid_path("network", uuid)
}

impl Target for NetworkView {
    fn describe(&self) -> String {
        format!("the virtual network '{}'", self.rec.name)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("network.name", self.rec.name.clone()),
            ("network.uuid", self.rec.uuid.clone()),
            ("network.mode", self.rec.mode.clone()),
        ]
    }
}

/// What every network object shares; the network kind.
pub struct NetworkContext {
    pub networks: Arc<NetworkService>,
    pub auth: Arc<Authorizer>,
}

impl Kind for NetworkContext {
    type Record = NetworkView;
    type Methods = Network;
    const PROPERTIES: &'static [Prop<NetworkView>] = &[
        fixed("Name", |n| text(&n.rec.name)),
        fixed("Uuid", |n| Variant::from(n.rec.uuid.clone())),
        prop("Active", |n| Variant::from(n.rec.active)),
        prop("Autostart", |n| Variant::from(n.rec.autostart)),
        prop("Persistent", |n| Variant::from(n.rec.persistent)),
        prop("Mode", |n| text(&n.rec.mode)),
        prop("Bridge", |n| text(&n.rec.bridge)),
        prop("IPv4Address", |n| text(&n.rec.ipv4_address)),
        prop("IPv4Prefix", |n| Variant::from(n.rec.ipv4_prefix)),
        prop("IPv6Address", |n| text(&n.rec.ipv6_address)),
        prop("IPv6Prefix", |n| Variant::from(n.rec.ipv6_prefix)),
        prop("DhcpRangeStart", |n| text(&n.rec.dhcp_start)),
        prop("DhcpRangeEnd", |n| text(&n.rec.dhcp_end)),
        prop("DnsDomain", |n| text(&n.rec.domain)),
        prop("DhcpHosts", |n| {
            Variant::from(
                n.rec
                    .dhcp_hosts
                    .iter()
                    .map(|(m, i, h)| {
                        (
                            for_bus(m).into_owned(),
                            for_bus(i).into_owned(),
                            for_bus(h).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        }),
        prop("UsedBy", |n| vm_paths(&n.used_by)),
    ];

    fn path(n: &NetworkView) -> String {
        network_path(&n.rec.uuid)
    }

    fn methods(self: &Arc<Self>, shown: Shown<NetworkView>) -> Network {
        Network {
            shown,
            ctx: self.clone(),
        }
    }

    fn current(&self, n: &NetworkView) -> Option<Arc<NetworkView>> {
        self.networks.get(&n.rec.uuid)
    }
}

/// The methods of one network object.
pub struct Network {
    shown: Shown<NetworkView>,
    ctx: Arc<NetworkContext>,
}

impl Network {
    async fn authorize(
        &self,
        header: &Header<'_>,
        action: Action,
        verb: &str,
    ) -> Result<Arc<NetworkView>, Error> {
        let n = shown(&self.shown);
        self.ctx.auth.check(header, action, &*n, verb).await?;
        Ok(n)
    }

    fn sync(&self, uuid: &str) {
        refresh_shown(&self.shown, self.ctx.networks.get(uuid));
    }
}

#[interface(name = "org.vapor.Virtualization.Network")]
impl Network {
    async fn start(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let n = self
            .authorize(&header, Action::NetworkManage, "start")
            .await?;
        let r = self.ctx.networks.start(&n.rec.uuid).await;
        self.sync(&n.rec.uuid);
        Ok(r?)
    }

    /// Stop the network (refused while a running VM uses it).
    async fn stop(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let n = self
            .authorize(&header, Action::NetworkManage, "stop")
            .await?;
        let r = self.ctx.networks.stop(&n.rec.uuid).await;
        self.sync(&n.rec.uuid);
        Ok(r?)
    }

    async fn set_autostart(
        &self,
        #[zbus(header)] header: Header<'_>,
        autostart: bool,
    ) -> Result<(), Error> {
        let verb = if autostart {
            "enable autostart of"
        } else {
            "disable autostart of"
        };
        let n = self.authorize(&header, Action::NetworkManage, verb).await?;
        let r = self
            .ctx
            .networks
            .set_autostart(&n.rec.uuid, autostart)
            .await;
        self.sync(&n.rec.uuid);
        Ok(r?)
    }

    /// Stop and remove the network (refused while a running VM uses it).
    async fn delete(&self, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let n = self
            .authorize(&header, Action::NetworkManage, "delete")
            .await?;
        Ok(self.ctx.networks.delete(&n.rec.uuid).await?)
    }

    /// The current DHCP leases: (mac, ip, prefix, hostname, expiry).
    #[zbus(out_args("leases"))]
    async fn get_dhcp_leases(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<(String, String, u32, String, u64)>, Error> {
        let n = self
            .authorize(&header, Action::Read, "read the leases of")
            .await?;
        Ok(self
            .ctx
            .networks
            .leases(&n.rec.uuid)
            .await?
            .into_iter()
            .map(|l| {
                (
                    for_bus(&l.mac).into_owned(),
                    for_bus(&l.ip).into_owned(),
                    l.prefix,
                    for_bus(&l.hostname).into_owned(),
                    l.expiry,
                )
            })
            .collect())
    }

    /// Add a static DHCP host entry, live and persistent.
    async fn add_dhcp_host(
        &self,
        #[zbus(header)] header: Header<'_>,
        mac: &str,
        ip: &str,
        name: &str,
    ) -> Result<(), Error> {
        options::text("mac", mac, TextRule::NAME)?;
        options::text("ip", ip, TextRule::NAME)?;
        options::text("name", name, TextRule::NAME)?;
        let n = self
            .authorize(&header, Action::NetworkManage, "add a DHCP host to")
            .await?;
        let r = self
            .ctx
            .networks
            .add_dhcp_host(&n.rec.uuid, mac, ip, name)
            .await;
        self.sync(&n.rec.uuid);
        Ok(r?)
    }

    /// Remove the static DHCP host entry for `mac`.
    async fn remove_dhcp_host(
        &self,
        #[zbus(header)] header: Header<'_>,
        mac: &str,
    ) -> Result<(), Error> {
        options::text("mac", mac, TextRule::NAME)?;
        let n = self
            .authorize(&header, Action::NetworkManage, "remove a DHCP host from")
            .await?;
        let r = self.ctx.networks.remove_dhcp_host(&n.rec.uuid, mac).await;
        self.sync(&n.rec.uuid);
        Ok(r?)
    }
}

impl Target for crate::network::spec::NetworkSpec {
    fn describe(&self) -> String {
        format!("the virtual network '{}'", self.name)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![
            ("network.name", self.name.clone()),
            ("network.mode", self.mode.as_str().to_owned()),
        ]
    }
}

/// Manager.CreateNetwork and PlanNetwork: parse, authorize
/// (`network-manage`), then define (and start) or plan.
pub async fn create_network(
    kind: &Arc<NetworkContext>,
    server: &zbus::ObjectServer,
    header: &Header<'_>,
    spec_json: &str,
    dry_run: bool,
) -> Result<(String, Option<OwnedObjectPath>), Error> {
    let spec = crate::network::spec::parse_network_spec(spec_json)?;
    let verb = if dry_run { "plan" } else { "create" };
    kind.auth
        .check(header, Action::NetworkManage, &spec, verb)
        .await?;
    let xml = kind.networks.plan(&spec);
    if dry_run {
        return Ok((for_bus(&xml).into_owned(), None));
    }
    let uuid = kind.networks.create(&spec).await?;
    if let Some(n) = kind.networks.get(&uuid) {
        super::object::export(server, kind, n).await;
    }
    let path = OwnedObjectPath::try_from(network_path(&uuid))
        .map_err(|e| Error::Failed(format!("network path: {e}")))?;
    Ok((xml, Some(path)))
}
