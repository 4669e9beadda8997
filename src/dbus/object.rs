//! One way to put a kind of object on the bus.
//!
//! A kind (VM, PCI device, pool, volume, network …) declares:
//! - its record type (what the service layer keeps in a [`Store`]),
//! - its object path, read from the record,
//! - one table of its properties, each read from the record, and
//! - a zbus interface with its methods only.
//!
//! [`Object`] joins the two halves into the one interface a client sees:
//! properties (Get, GetAll, introspection, PropertiesChanged) come from the
//! table, method calls go to the methods. [`follow`] is the one publisher:
//! it turns the store's changes into objects appearing (InterfacesAdded),
//! disappearing (InterfacesRemoved) and one PropertiesChanged per change,
//! listing exactly the properties that differ. Nothing else keeps a list of
//! property names.
//!
//! [`Store`]: crate::store::Store

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedReceiver;
use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, SignalEmitter};
use zbus::{BoxDBusError, Connection, ObjectServer, OwnedVariant, Variant};

use crate::store::Change;

/// One property: its D-Bus name, how to read it from a record, and whether
/// it can change while the object exists.
pub struct Prop<R> {
    pub name: &'static str,
    pub get: fn(&R) -> Variant<'static>,
    /// Fixed for the object's lifetime (EmitsChangedSignal "const").
    pub constant: bool,
}

/// A read-write property (`Prop { constant: false }`).
pub const fn prop<R>(name: &'static str, get: fn(&R) -> Variant<'static>) -> Prop<R> {
    Prop {
        name,
        get,
        constant: false,
    }
}

/// A property fixed for the object's lifetime.
pub const fn fixed<R>(name: &'static str, get: fn(&R) -> Variant<'static>) -> Prop<R> {
    Prop {
        name,
        get,
        constant: true,
    }
}

/// A property value from text libvirt or a caller gave: made bus-safe.
pub fn text(s: &str) -> Variant<'static> {
    Variant::from(crate::text::for_bus(s).into_owned())
}

/// An object path as a value (`/` for one that cannot be a path).
pub fn object_path(p: String) -> zbus::OwnedObjectPath {
    zbus::OwnedObjectPath::try_from(p).unwrap_or_else(|_| {
        zbus::OwnedObjectPath::from(zbus::ObjectPath::from_static_str_unchecked("/"))
    })
}

/// The object paths of VMs given as (uuid, name), as a property value.
pub fn vm_paths(vms: &[(String, String)]) -> Variant<'static> {
    Variant::from(
        vms.iter()
            .map(|(uuid, _)| object_path(super::vm_path(uuid)))
            .collect::<Vec<_>>(),
    )
}

/// The record an object shows, shared by its properties and its methods.
pub type Shown<R> = Arc<RwLock<Arc<R>>>;

/// Read what an object shows now.
pub fn shown<R>(s: &Shown<R>) -> Arc<R> {
    s.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn show<R>(s: &Shown<R>, rec: Arc<R>) {
    *s.write().unwrap_or_else(|e| e.into_inner()) = rec;
}

/// A kind of bus object.
pub trait Kind: Send + Sync + 'static {
    type Record: Send + Sync + 'static;
    /// The zbus interface with the kind's methods (and signals), no properties.
    type Methods: Interface;
    /// Every property, in the order introspection lists them.
    const PROPERTIES: &'static [Prop<Self::Record>];
    /// The object path of the record's object.
    fn path(rec: &Self::Record) -> String;
    /// The methods half of a new object showing `shown`.
    fn methods(self: &Arc<Self>, shown: Shown<Self::Record>) -> Self::Methods;
    /// The newest record with this one's identity (`None`: gone).
    fn current(&self, rec: &Self::Record) -> Option<Arc<Self::Record>>;
}

/// Every property value of a record, by name.
pub fn property_values<K: Kind>(rec: &K::Record) -> HashMap<String, OwnedVariant> {
    K::PROPERTIES
        .iter()
        .filter_map(|p| Some((p.name.to_owned(), owned((p.get)(rec))?)))
        .collect()
}

/// The properties whose values differ between two records.
pub fn changed_properties<K: Kind>(
    old: &K::Record,
    new: &K::Record,
) -> Vec<(&'static str, Variant<'static>)> {
    K::PROPERTIES
        .iter()
        .filter(|p| !p.constant)
        .filter_map(|p| {
            let b = (p.get)(new);
            ((p.get)(old) != b).then_some((p.name, b))
        })
        .collect()
}

fn owned(v: Variant<'static>) -> Option<OwnedVariant> {
    // Only file descriptors fail to convert; no property carries one.
    OwnedVariant::try_from(v).ok()
}

/// A bus object of kind `K`.
pub struct Object<K: Kind> {
    shown: Shown<K::Record>,
    /// What the last PropertiesChanged announced (base of the next diff).
    signalled: RwLock<Arc<K::Record>>,
    methods: K::Methods,
}

impl<K: Kind> Object<K> {
    pub fn new(kind: &Arc<K>, rec: Arc<K::Record>) -> Self {
        let shown = Arc::new(RwLock::new(rec.clone()));
        Self {
            methods: kind.methods(shown.clone()),
            shown,
            signalled: RwLock::new(rec),
        }
    }

    pub fn record(&self) -> Arc<K::Record> {
        shown(&self.shown)
    }

    /// Show `rec` and return the properties that changed since the last
    /// announcement (which this now becomes).
    fn publish(&self, rec: Arc<K::Record>) -> Vec<(&'static str, Variant<'static>)> {
        show(&self.shown, rec.clone());
        let mut last = self.signalled.write().unwrap_or_else(|e| e.into_inner());
        let changed = changed_properties::<K>(&last, &rec);
        *last = rec;
        changed
    }
}

fn read_only(name: &str) -> BoxDBusError {
    Box::new(zbus::fdo::Error::PropertyReadOnly(format!(
        "property {name} is read-only"
    )))
}

#[async_trait]
impl<K: Kind> Interface for Object<K> {
    fn name() -> InterfaceName<'static> {
        <K::Methods as Interface>::name()
    }

    fn spawn_tasks_for_methods(&self) -> bool {
        self.methods.spawn_tasks_for_methods()
    }

    async fn get(
        &self,
        property_name: &str,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        let p = K::PROPERTIES.iter().find(|p| p.name == property_name)?;
        let v = owned((p.get)(&self.record()));
        Some(v.ok_or_else(|| read_only(property_name)))
    }

    async fn get_all(
        &self,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        Ok(property_values::<K>(&self.record()))
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        _value: &'call Variant<'_>,
        _server: &'call ObjectServer,
        _connection: &'call Connection,
        _header: Option<&'call Header<'_>>,
        _emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult<'call> {
        if K::PROPERTIES.iter().any(|p| p.name == property_name) {
            DispatchResult::Async(Box::pin(async move { Err(read_only(property_name)) }))
        } else {
            DispatchResult::NotFound
        }
    }

    async fn set_mut(
        &mut self,
        _property_name: &str,
        _value: &Variant<'_>,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), BoxDBusError>> {
        None
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.methods.call(server, connection, msg, name)
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.methods.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        let mut methods = String::new();
        self.methods.introspect_to_writer(&mut methods, level);
        let close = methods.rfind("</interface>").unwrap_or(methods.len());
        let close = methods[..close].rfind('\n').map_or(close, |i| i + 1);
        let _ = writer.write_str(&methods[..close]);
        let rec = self.record();
        let pad = level + 2;
        for p in K::PROPERTIES {
            let sig = (p.get)(&rec).value_signature().to_string();
            if p.constant {
                let _ = writeln!(
                    writer,
                    "{:pad$}<property name=\"{}\" type=\"{sig}\" access=\"read\">\n{:inner$}<annotation name=\"org.freedesktop.DBus.Property.EmitsChangedSignal\" value=\"const\"/>\n{:pad$}</property>",
                    "", p.name, "", "", inner = pad + 2
                );
            } else {
                let _ = writeln!(
                    writer,
                    "{:pad$}<property name=\"{}\" type=\"{sig}\" access=\"read\"/>",
                    "", p.name
                );
            }
        }
        let _ = writer.write_str(&methods[close..]);
    }
}

/// Reflect one change of kind `K` on the bus.
pub async fn apply<K: Kind>(
    server: &ObjectServer,
    kind: &Arc<K>,
    change: Change<K::Record>,
) -> zbus::Result<()> {
    let registry = super::managed::registry(server).await;
    let shown = |path: &str, rec: &K::Record| {
        if let Some(r) = &registry {
            r.set(
                path,
                <Object<K> as Interface>::name(),
                property_values::<K>(rec),
            );
        }
    };
    match change {
        Change::Added(rec) => {
            let path = K::path(&rec);
            let object = Object::new(kind, rec.clone());
            if server.at(path.as_str(), object).await?.is_some() {
                // Exported already (by the method that made it): update it.
                shown(&path, &rec);
                return Box::pin(apply(
                    server,
                    kind,
                    Change::Changed {
                        old: rec.clone(),
                        new: rec,
                    },
                ))
                .await;
            }
            shown(&path, &rec);
        }
        Change::Removed(rec) => {
            // Back again since? Then the object stays.
            if kind.current(&rec).is_none() {
                let path = K::path(&rec);
                // The registry first: GetManagedObjects never shows an
                // object after its InterfacesRemoved.
                if let Some(r) = &registry {
                    r.remove(&path);
                }
                server.remove::<Object<K>, _>(path.as_str()).await?;
            }
        }
        Change::Changed { new, .. } => {
            // Publish the newest reading, whatever change brought us here:
            // a stale or reordered change can never take an object back in time.
            let Some(new) = kind.current(&new) else {
                return Ok(());
            };
            let path = K::path(&new);
            let iface = match server.interface::<_, Object<K>>(path.as_str()).await {
                Ok(i) => i,
                Err(_) => {
                    server
                        .at(path.as_str(), Object::new(kind, new.clone()))
                        .await?;
                    shown(&path, &new);
                    return Ok(());
                }
            };
            let changed = iface.get().await.publish(new.clone());
            if changed.is_empty() {
                return Ok(());
            }
            shown(&path, &new);
            let map: HashMap<&str, Variant<'_>> = changed.into_iter().collect();
            zbus::fdo::Properties::properties_changed(
                iface.signal_emitter(),
                <Object<K> as Interface>::name(),
                map,
                Cow::Borrowed(&[]),
            )
            .await?;
        }
    }
    Ok(())
}

/// Put a record's object on the bus now if it is not there yet: a method
/// that made the object returns its path, which must work at once.
pub async fn export<K: Kind>(server: &ObjectServer, kind: &Arc<K>, rec: Arc<K::Record>) {
    let path = K::path(&rec);
    if let Ok(None) = server
        .at(path.as_str(), Object::new(kind, rec.clone()))
        .await
    {
        let registry = super::managed::registry(server).await;
        if let Some(r) = &registry {
            r.set(
                &path,
                <Object<K> as Interface>::name(),
                property_values::<K>(&rec),
            );
        }
        // Gone meanwhile (the publisher already handled its removal)? Then
        // take it down again rather than leave an object nothing removes.
        if kind.current(&rec).is_none() {
            if let Some(r) = &registry {
                r.remove(&path);
            }
            let _ = server.remove::<Object<K>, _>(path.as_str()).await;
        }
    }
}

/// Apply every change already queued (before the bus name is taken, so the
/// first client sees every object).
pub async fn drain<K: Kind>(
    server: &ObjectServer,
    kind: &Arc<K>,
    rx: &mut UnboundedReceiver<Change<K::Record>>,
) {
    while let Ok(c) = rx.try_recv() {
        if let Err(e) = apply(server, kind, c).await {
            log::warn!(
                "cannot publish a change of {}: {e}",
                <Object<K> as Interface>::name()
            );
        }
    }
}

/// Follow a store's changes for as long as the daemon runs.
pub async fn follow<K: Kind>(
    conn: Connection,
    kind: Arc<K>,
    mut rx: UnboundedReceiver<Change<K::Record>>,
) {
    let server = conn.object_server();
    while let Some(c) = rx.recv().await {
        if let Err(e) = apply(server, &kind, c).await {
            log::warn!(
                "cannot publish a change of {}: {e}",
                <Object<K> as Interface>::name()
            );
        }
    }
}

/// Pick up the store's newest reading so a property read right after a
/// method returns already sees its effect (the publisher announces it).
pub fn refresh_shown<R>(s: &Shown<R>, newest: Option<Arc<R>>) {
    if let Some(r) = newest {
        show(s, r);
    }
}

/// A kind's objects waiting to be published: its kind and its store's changes.
struct Publication<K: Kind> {
    kind: Arc<K>,
    rx: UnboundedReceiver<Change<K::Record>>,
}

/// Publishing, type-erased, so the daemon keeps one list of every kind.
#[async_trait]
trait Publish: Send {
    async fn drain(&mut self, server: &ObjectServer);
    fn follow(self: Box<Self>, conn: Connection);
}

#[async_trait]
impl<K: Kind> Publish for Publication<K> {
    async fn drain(&mut self, server: &ObjectServer) {
        drain(server, &self.kind, &mut self.rx).await;
    }
    fn follow(self: Box<Self>, conn: Connection) {
        tokio::spawn(follow(conn, self.kind, self.rx));
    }
}

/// Every kind of object the daemon publishes: each is added once, its
/// objects exported before the bus name is taken ([`Publications::drain`])
/// and followed afterwards ([`Publications::follow`]).
#[derive(Default)]
pub struct Publications(Vec<Box<dyn Publish>>);

impl Publications {
    pub fn add<K: Kind>(&mut self, kind: Arc<K>, rx: UnboundedReceiver<Change<K::Record>>) {
        self.0.push(Box::new(Publication { kind, rx }));
    }

    /// Export every object already known.
    pub async fn drain(&mut self, server: &ObjectServer) {
        for p in &mut self.0 {
            p.drain(server).await;
        }
    }

    /// Follow every kind for as long as the daemon runs.
    pub fn follow(self, conn: &Connection) {
        for p in self.0 {
            p.follow(conn.clone());
        }
    }
}
