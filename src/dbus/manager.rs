//! `org.vapor.Virtualization.Manager` on the root object: finding VMs and the
//! daemon's own state. Enumeration with all properties is
//! `org.freedesktop.DBus.ObjectManager.GetManagedObjects` on the same object.

use std::sync::Arc;

use zbus::interface;
use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::OwnedObjectPath;

use super::network::{create_network, network_path, NetworkContext};
use super::options;
use super::polkit::{Action, Authorizer};
use super::polkit::{Host, Target};
use super::storage::{create_pool, pool_path, Pools};
use super::vm::VmContext;
use super::{vm_path, Error};
use crate::model::Model;
use crate::services::creation::{CreationService, Plan};
use crate::text::TextRule;

/// A VM about to be created, as polkit sees it.
struct NewVm<'a>(&'a str);

impl Target for NewVm<'_> {
    fn describe(&self) -> String {
        format!("the virtual machine '{}'", self.0)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![("vm.name", self.0.to_owned())]
    }
}

/// A template, as polkit sees it.
struct Template<'a>(&'a str);

impl Target for Template<'_> {
    fn describe(&self) -> String {
        format!("the template '{}'", self.0)
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        vec![("template.name", self.0.to_owned())]
    }
}

pub struct Manager {
    pub model: Arc<Model>,
    pub pci: Arc<crate::services::pci::PciService>,
    pub auth: Arc<Authorizer>,
    pub engine: Arc<CreationService>,
    pub vm_ctx: Arc<VmContext>,
    pub pools: Arc<Pools>,
    pub networks: Arc<NetworkContext>,
    /// What the bus shows of every object (see `managed`).
    pub registry: Arc<super::managed::Registry>,
    /// Declarative provisioning (`Apply`).
    pub apply: Arc<crate::services::apply::ApplyService>,
}

impl Manager {
    /// The first gate, before anything about the host is looked at (so a
    /// caller who may not create VMs learns nothing about paths or pools).
    async fn authorize_any_create(&self, header: &Header<'_>, spec: &str) -> Result<(), Error> {
        // Parsed (strictly: size, duplicate keys, acceptable text) before its
        // name goes into the polkit details.
        let doc = crate::creation::validate::parse_json(spec)?;
        let name = doc
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        self.auth
            .check(header, Action::VmCreate, &NewVm(&name), "create")
            .await
    }

    /// Authorize what `plan` touches: every pool it creates volumes in or
    /// reads volumes from (`pool.name`, so rules can allow some pools only),
    /// and every host file outside the pools (`storage-host-path`).
    async fn authorize_create(&self, header: &Header<'_>, plan: &Plan) -> Result<(), Error> {
        let r = &plan.resolved;
        let name = r.name.as_str();
        let mut pools: Vec<&String> = r.pools_used.iter().chain(&r.pools_read).collect();
        pools.sort();
        pools.dedup();
        for pool in pools {
            let what = format!("create the virtual machine '{name}' with storage in pool '{pool}'");
            self.auth
                .check_with(
                    header,
                    Action::VmCreate,
                    &Host,
                    &what,
                    &[("vm.name", name), ("pool.name", pool)],
                )
                .await?;
        }
        // Host PCI devices: each needs pci-assign, like attaching it later.
        if let Some(pci) = &r.pci {
            for h in &pci.hostdevs {
                let (vendor, device) = h
                    .host_address
                    .parse()
                    .map(|a| self.pci.ids_of(&a))
                    .unwrap_or_default();
                self.auth
                    .check_with(
                        header,
                        Action::PciAssign,
                        &Host,
                        &format!(
                            "give the host PCI device {} to the new virtual machine '{name}'",
                            h.host_address
                        ),
                        &[
                            ("vm.name", name),
                            ("pci.address", &h.host_address),
                            ("pci.vendor", &vendor),
                            ("pci.device", &device),
                        ],
                    )
                    .await?;
            }
        }
        let rom_files = r
            .pci
            .iter()
            .flat_map(|p| p.hostdevs.iter().filter_map(|h| h.rom_file.clone()));
        let files: Vec<String> = r.host_paths.iter().cloned().chain(rom_files).collect();
        for file in &files {
            self.auth
                .check_with(
                    header,
                    Action::StorageHostPath,
                    &Host,
                    &format!("let the virtual machine '{name}' use the host file {file}"),
                    &[("vm.name", name), ("storage.path", file)],
                )
                .await?;
        }
        Ok(())
    }

    /// Run a creation as a Job object; returns the new domain's UUID.
    async fn run_job(&self, server: &ObjectServer, plan: Plan, uid: u32) -> Result<String, Error> {
        // The UUID is chosen up front: the job names the VM it makes.
        let objects = vec![vm_path(&plan.uuid)];
        let engine = self.engine.clone();
        super::job::run(server, &self.auth, "vm-create", objects, uid, |state| {
            engine.create(plan, uid, state)
        })
        .await
    }
}

#[path = "manager_apply.rs"]
mod apply;

fn path(uuid: &str) -> OwnedObjectPath {
    OwnedObjectPath::try_from(vm_path(uuid)).expect("VM paths are valid object paths")
}

#[interface(name = "org.vapor.Virtualization.Manager", proxy(visibility = "pub"))]
impl Manager {
    /// The object path of the VM with this name or UUID.
    #[zbus(out_args("vm"))]
    async fn lookup_virtual_machine(
        &self,
        #[zbus(header)] header: Header<'_>,
        name_or_uuid: &str,
    ) -> Result<OwnedObjectPath, Error> {
        options::text("name_or_uuid", name_or_uuid, TextRule::NAME)?;
        self.auth
            .check_with(
                &header,
                Action::Read,
                &Host,
                "look up virtual machines",
                &[("vm.name", name_or_uuid)],
            )
            .await?;
        self.model
            .find(name_or_uuid)
            .map(|d| path(&d.uuid))
            .ok_or_else(|| Error::NotFound(format!("no virtual machine named '{name_or_uuid}'")))
    }

    /// The object paths of every VM, sorted by name.
    #[zbus(out_args("vms"))]
    async fn list_virtual_machines(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<OwnedObjectPath>, Error> {
        self.auth
            .check(&header, Action::Read, &Host, "list virtual machines")
            .await?;
        Ok(self.model.all().iter().map(|d| path(&d.uuid)).collect())
    }

    /// Create a VM from a JSON creation spec (see dbus/schemas/vm-spec.schema.json),
    /// all or nothing. Progress is published on a Job object while it runs.
    /// Returns the new VM's object path.
    #[zbus(out_args("vm"))]
    async fn create_virtual_machine(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        spec: &str,
    ) -> Result<OwnedObjectPath, Error> {
        let uid = self.auth.caller_uid(&header).await?;
        self.authorize_any_create(&header, spec).await?;
        let plan = self.engine.plan(spec, uid).await?;
        self.authorize_create(&header, &plan).await?;
        let name = plan.resolved.name.clone();
        let uuid = self.run_job(server, plan, uid).await?;
        log::info!(vm_name = name.as_str(), vm_uuid = uuid.as_str(), uid = uid; "created");
        // Export the object now, so the caller can use the path at once.
        if let Ok(Some(rec)) = self.model.refresh_domain(&uuid).await {
            super::object::export(server, &self.vm_ctx, rec).await;
        }
        Ok(path(&uuid))
    }

    /// The dry run: the fully resolved spec (template merged, paths resolved,
    /// targets assigned) as JSON and the exact domain XML, with no side
    /// effects. Authorized exactly like the creation itself.
    #[zbus(out_args("resolved", "domain_xml"))]
    async fn plan_virtual_machine(
        &self,
        #[zbus(header)] header: Header<'_>,
        spec: &str,
    ) -> Result<(String, String), Error> {
        let uid = self.auth.caller_uid(&header).await?;
        self.authorize_any_create(&header, spec).await?;
        let plan = self.engine.plan(spec, uid).await?;
        self.authorize_create(&header, &plan).await?;
        let resolved = serde_json::to_string_pretty(&plan.resolved)
            .map_err(|e| Error::Failed(e.to_string()))?;
        Ok((resolved, plan.xml))
    }

    /// Bring the VMs a declarative document lists to what it declares
    /// (see dbus/schemas/apply.schema.json): create the missing ones,
    /// converge vCPUs and memory, start, wait for the guest agent, read
    /// cloud-init's status, mount NFS shares, put files in place and make
    /// the final snapshot when something changed. `files` passes the
    /// injections' sources by the names the document gives them; options:
    /// `dry_run` (b). Progress on a Job (`apply`); returns the report, as
    /// JSON, of every step of every VM.
    #[zbus(out_args("report"))]
    async fn apply(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        document: &str,
        files: std::collections::HashMap<String, zbus::OwnedFd>,
        options: super::options::Options,
    ) -> Result<String, Error> {
        self.apply_as(&header, server, document, files, &options)
            .await
    }

    /// Every template: (name, source "shipped" or "user", description).
    #[zbus(out_args("templates"))]
    async fn list_templates(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<(String, String, String)>, Error> {
        self.auth
            .check(&header, Action::Read, &Host, "list templates")
            .await?;
        Ok(self
            .engine
            .list_templates()
            .await?
            .into_iter()
            .map(|t| (t.name, t.source.as_str().to_owned(), t.description))
            .collect())
    }

    /// One template as JSON: {"name", "source", "description", "spec"}.
    #[zbus(out_args("template"))]
    async fn get_template(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: &str,
    ) -> Result<String, Error> {
        options::text("name", name, TextRule::NAME)?;
        self.auth
            .check(&header, Action::Read, &Template(name), "read")
            .await?;
        let t = self.engine.template(name).await?;
        Ok(serde_json::json!({
            "name": t.name, "source": t.source.as_str(), "description": t.description, "spec": t.spec,
        })
        .to_string())
    }

    /// Create or replace a user template (validated against the spec schema).
    async fn save_template(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: &str,
        description: &str,
        spec: &str,
    ) -> Result<(), Error> {
        options::text("name", name, TextRule::NAME)?;
        options::text("description", description, TextRule::DESCRIPTION)?;
        options::text("spec", spec, TextRule::DOCUMENT)?;
        self.auth
            .check(&header, Action::TemplateManage, &Template(name), "save")
            .await?;
        Ok(self.engine.save_template(name, description, spec).await?)
    }

    /// Delete a user template (shipped ones are read-only).
    async fn delete_template(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: &str,
    ) -> Result<(), Error> {
        options::text("name", name, TextRule::NAME)?;
        self.auth
            .check(&header, Action::TemplateManage, &Template(name), "delete")
            .await?;
        Ok(self.engine.delete_template(name).await?)
    }

    /// The object paths of every storage pool, sorted by name.
    #[zbus(out_args("pools"))]
    async fn list_storage_pools(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<OwnedObjectPath>, Error> {
        self.auth
            .check(&header, Action::Read, &Host, "list storage pools")
            .await?;
        let storage = &self.pools.0.storage;
        Ok(storage
            .pools()
            .iter()
            .filter_map(|p| OwnedObjectPath::try_from(pool_path(&p.rec.uuid)).ok())
            .collect())
    }

    /// The object path of the storage pool with this name or UUID.
    #[zbus(out_args("pool"))]
    async fn lookup_storage_pool(
        &self,
        #[zbus(header)] header: Header<'_>,
        name_or_uuid: &str,
    ) -> Result<OwnedObjectPath, Error> {
        options::text("name_or_uuid", name_or_uuid, TextRule::NAME)?;
        self.auth
            .check(&header, Action::Read, &Host, "look up storage pools")
            .await?;
        self.pools
            .0
            .storage
            .find_pool(name_or_uuid)
            .and_then(|p| OwnedObjectPath::try_from(pool_path(&p.rec.uuid)).ok())
            .ok_or_else(|| Error::NotFound(format!("no storage pool named '{name_or_uuid}'")))
    }

    /// Define a storage pool from a JSON spec (dbus/schemas/pool-spec.schema.json).
    #[zbus(out_args("pool"))]
    async fn create_storage_pool(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        spec: &str,
    ) -> Result<OwnedObjectPath, Error> {
        let (_, path) = create_pool(&self.pools, server, &header, spec, false).await?;
        path.ok_or_else(|| Error::Failed("the pool was made but has no path".into()))
    }

    /// The dry run of CreateStoragePool: the pool XML it would define.
    #[zbus(out_args("pool_xml"))]
    async fn plan_storage_pool(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        spec: &str,
    ) -> Result<String, Error> {
        Ok(create_pool(&self.pools, server, &header, spec, true)
            .await?
            .0)
    }

    /// The object paths of every virtual network, sorted by name.
    #[zbus(out_args("networks"))]
    async fn list_networks(
        &self,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<OwnedObjectPath>, Error> {
        self.auth
            .check(&header, Action::Read, &Host, "list virtual networks")
            .await?;
        Ok(self
            .networks
            .networks
            .all()
            .iter()
            .filter_map(|n| OwnedObjectPath::try_from(network_path(&n.rec.uuid)).ok())
            .collect())
    }

    /// The object path of the network with this name or UUID.
    #[zbus(out_args("network"))]
    async fn lookup_network(
        &self,
        #[zbus(header)] header: Header<'_>,
        name_or_uuid: &str,
    ) -> Result<OwnedObjectPath, Error> {
        options::text("name_or_uuid", name_or_uuid, TextRule::NAME)?;
        self.auth
            .check(&header, Action::Read, &Host, "look up virtual networks")
            .await?;
        self.networks
            .networks
            .find(name_or_uuid)
            .and_then(|n| OwnedObjectPath::try_from(network_path(&n.rec.uuid)).ok())
            .ok_or_else(|| Error::NotFound(format!("no network named '{name_or_uuid}'")))
    }

    /// Define a virtual network from a JSON spec (dbus/schemas/network-spec.schema.json).
    #[zbus(out_args("network"))]
    async fn create_network(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        spec: &str,
    ) -> Result<OwnedObjectPath, Error> {
        let (_, path) = create_network(&self.networks, server, &header, spec, false).await?;
        path.ok_or_else(|| Error::Failed("the network was made but has no path".into()))
    }

    /// The dry run of CreateNetwork: the network XML it would define.
    #[zbus(out_args("network_xml"))]
    async fn plan_network(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
        spec: &str,
    ) -> Result<String, Error> {
        Ok(create_network(&self.networks, server, &header, spec, true)
            .await?
            .0)
    }

    /// Every object with this interface (e.g.
    /// org.vapor.Virtualization.VirtualMachine) and all its properties in
    /// one compact reply: the property names, and `rows` holding `a(o…)`,
    /// one row per object — its path, then the values in that order. What
    /// GetManagedObjects says, in about half the bytes.
    #[zbus(out_args("properties", "rows"))]
    async fn enumerate_objects(
        &self,
        #[zbus(header)] header: Header<'_>,
        interface: &str,
    ) -> Result<(Vec<String>, zbus::OwnedVariant), Error> {
        options::text("interface", interface, TextRule::NAME)?;
        self.auth
            .check(&header, Action::Read, &Host, "enumerate objects")
            .await?;
        self.registry
            .rows(interface)
            .map_err(|e| Error::Failed(format!("cannot enumerate {interface}: {e}")))
    }

    /// vapord's version.
    #[zbus(property(emits_changed_signal = "const"), name = "Version")]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    /// The libvirt connection URI vapord manages.
    #[zbus(property(emits_changed_signal = "const"), name = "LibvirtUri")]
    fn libvirt_uri(&self) -> String {
        self.model.hypervisor().uri().to_owned()
    }

    /// Whether vapord is connected to libvirt right now.
    #[zbus(property(emits_changed_signal = "true"), name = "Connected")]
    fn connected(&self) -> bool {
        *self.model.connected().borrow()
    }

    /// The host's CPU use over the last statistics interval, in percent of
    /// all its CPUs (0–100).
    #[zbus(property(emits_changed_signal = "true"), name = "HostCpuPercent")]
    fn host_cpu_percent(&self) -> f64 {
        self.model.host_load().borrow().cpu_percent()
    }

    /// The host's physical memory.
    #[zbus(property(emits_changed_signal = "true"), name = "HostMemoryTotalKiB")]
    fn host_memory_total_kib(&self) -> u64 {
        self.model.host_load().borrow().memory_total_kib
    }

    /// The host's memory in use: neither free nor page cache nor buffers.
    #[zbus(property(emits_changed_signal = "true"), name = "HostMemoryUsedKiB")]
    fn host_memory_used_kib(&self) -> u64 {
        self.model.host_load().borrow().memory_used_kib
    }
}

/// Announce the Connected property whenever the libvirt connection comes or goes.
pub async fn follow_connected(
    conn: zbus::Connection,
    mut connected: tokio::sync::watch::Receiver<bool>,
) {
    while connected.changed().await.is_ok() {
        if let Ok(iface) = conn
            .object_server()
            .interface::<_, super::managed::Root>(super::ROOT_PATH)
            .await
        {
            let _ = iface
                .get()
                .await
                .manager
                .connected_changed(iface.signal_emitter())
                .await;
        }
    }
}

/// Announce the host's load properties that changed, in one
/// PropertiesChanged, whenever the model reads a new load.
pub async fn follow_host_load(
    conn: zbus::Connection,
    mut load: tokio::sync::watch::Receiver<crate::metrics::HostLoad>,
) {
    let mut shown = *load.borrow_and_update();
    while load.changed().await.is_ok() {
        let now = *load.borrow_and_update();
        let mut changed: std::collections::HashMap<&str, zbus::Variant<'_>> = Default::default();
        if now.cpu_hundredths != shown.cpu_hundredths {
            changed.insert("HostCpuPercent", now.cpu_percent().into());
        }
        if now.memory_total_kib != shown.memory_total_kib {
            changed.insert("HostMemoryTotalKiB", now.memory_total_kib.into());
        }
        if now.memory_used_kib != shown.memory_used_kib {
            changed.insert("HostMemoryUsedKiB", now.memory_used_kib.into());
        }
        shown = now;
        if changed.is_empty() {
            continue;
        }
        let Ok(emitter) = zbus::object_server::SignalEmitter::new(&conn, super::ROOT_PATH) else {
            continue;
        };
        let _ = zbus::fdo::Properties::properties_changed(
            &emitter,
            zbus::names::InterfaceName::from_static_str_unchecked(super::MANAGER_IFACE),
            changed,
            std::borrow::Cow::Borrowed(&[]),
        )
        .await;
    }
}
