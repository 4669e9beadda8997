//! `org.freedesktop.DBus.ObjectManager` on the root object, answered from
//! memory.
//!
//! zbus's own ObjectManager walks every object and asks each interface for
//! all its properties on every call, then serialises the answer: about
//! 35 ms for 1000 VMs. Here the publisher ([`super::object`]) keeps each
//! object's property values in a [`Registry`] as it announces them, and the
//! serialised answer is kept until anything changes, so a repeated
//! `GetManagedObjects` costs a copy. The answer always shows exactly what
//! the signals announced so far (the registry is updated where they are
//! sent). Jobs, which change many times a second, are read live.
//!
//! zbus still emits InterfacesAdded and InterfacesRemoved for every object
//! below an interface of this name, so clients see no difference.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use zbus::message::{Header, Message};
use zbus::names::{InterfaceName, MemberName};
use zbus::object_server::{DispatchResult, Interface, SignalEmitter};
use zbus::wire::serialized::Context;
use zbus::wire::{Array, Endian, StructureBuilder};
use zbus::{BoxDBusError, Connection, ObjectPath, ObjectServer, OwnedVariant, Variant};

use super::ROOT_PATH;

type Props = HashMap<String, OwnedVariant>;

/// What the bus shows of every published object below the root.
#[derive(Default)]
pub struct Registry {
    objects: RwLock<BTreeMap<String, (InterfaceName<'static>, Arc<Props>)>>,
    /// Paths of running jobs (read live).
    jobs: Mutex<BTreeSet<String>>,
    /// The serialised answer for `objects`, while nothing changed.
    cached: Mutex<Option<Arc<Vec<u8>>>>,
    /// Serialised EnumerateObjects answers (`asv`) by interface, likewise.
    cached_rows: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// An object now shows these properties.
    pub fn set(&self, path: &str, iface: InterfaceName<'static>, props: Props) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        objects.insert(path.to_owned(), (iface, Arc::new(props)));
        // Under the write lock: an answer serialised under the read lock is
        // stored before this runs or never (see `body`).
        *lock(&self.cached) = None;
        lock(&self.cached_rows).clear();
    }

    /// An object is gone.
    pub fn remove(&self, path: &str) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        if objects.remove(path).is_some() {
            *lock(&self.cached) = None;
            lock(&self.cached_rows).clear();
        }
    }

    /// Every object with `iface`, compactly: the property names (sorted)
    /// and a variant holding `a(o…)`, one row per object — its path, then
    /// its values in that order. No names or variants per value, so about
    /// half the bytes of GetManagedObjects, and far less to decode.
    pub fn rows(&self, iface: &str) -> zbus::Result<(Vec<String>, OwnedVariant)> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        Self::rows_of(&objects, iface)
    }

    /// The EnumerateObjects reply body (`asv`, little endian), kept until
    /// anything changes.
    pub fn rows_body(&self, iface: &str) -> zbus::Result<Arc<Vec<u8>>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = lock(&self.cached_rows).get(iface) {
            return Ok(b.clone());
        }
        let (names, rows) = Self::rows_of(&objects, iface)?;
        let data = zbus::wire::to_bytes(Context::new(Endian::Little, 0), &(names, &*rows))?;
        let body = Arc::new(data.bytes().to_vec());
        let mut cache = lock(&self.cached_rows);
        // Bounded: only interfaces with objects are worth keeping.
        if cache.len() < 16 {
            cache.insert(iface.to_owned(), body.clone());
        }
        drop(objects);
        Ok(body)
    }

    fn rows_of(
        objects: &BTreeMap<String, (InterfaceName<'static>, Arc<Props>)>,
        iface: &str,
    ) -> zbus::Result<(Vec<String>, OwnedVariant)> {
        let mut names: Option<Vec<String>> = None;
        let mut rows = Vec::new();
        for (path, (i, props)) in objects.iter() {
            if i.as_str() != iface {
                continue;
            }
            let names = names.get_or_insert_with(|| {
                let mut k: Vec<String> = props.keys().cloned().collect();
                k.sort();
                k
            });
            let mut row = StructureBuilder::new().add_field(ObjectPath::try_from(path.as_str())?);
            for n in names.iter() {
                let v = props
                    .get(n)
                    .ok_or_else(|| zbus::Error::Failure(format!("{path} has no property {n}")))?;
                row = row.append_field((**v).try_clone()?);
            }
            rows.push(row.build()?);
        }
        let names = names.unwrap_or_default();
        let signature = match rows.first() {
            Some(r) => r.signature().clone(),
            None => zbus::Signature::try_from("(o)")?,
        };
        let mut array = Array::new(&signature);
        for r in rows {
            array.append(Variant::from(r))?;
        }
        Ok((names, OwnedVariant::try_from(Variant::from(array))?))
    }

    pub fn job_started(&self, path: &str) {
        lock(&self.jobs).insert(path.to_owned());
    }

    pub fn job_ended(&self, path: &str) {
        lock(&self.jobs).remove(path);
    }

    fn serialize(
        objects: &BTreeMap<String, (InterfaceName<'static>, Arc<Props>)>,
        jobs: &[(String, Props)],
    ) -> zbus::Result<Vec<u8>> {
        let mut map: HashMap<ObjectPath<'_>, HashMap<&str, &Props>> =
            HashMap::with_capacity(objects.len() + jobs.len());
        for (path, (iface, props)) in objects {
            if let Ok(p) = ObjectPath::try_from(path.as_str()) {
                map.entry(p).or_default().insert(iface.as_str(), props);
            }
        }
        for (path, props) in jobs {
            if let Ok(p) = ObjectPath::try_from(path.as_str()) {
                map.entry(p)
                    .or_default()
                    .insert("org.vapor.Virtualization.Job", props);
            }
        }
        let data = zbus::wire::to_bytes(Context::new(Endian::Little, 0), &map)?;
        Ok(data.bytes().to_vec())
    }

    /// The body of a GetManagedObjects reply (`a{oa{sa{sv}}}`, little endian).
    async fn body(&self, server: &ObjectServer) -> zbus::Result<Arc<Vec<u8>>> {
        let jobs: Vec<String> = lock(&self.jobs).iter().cloned().collect();
        if jobs.is_empty() {
            if let Some(b) = lock(&self.cached).clone() {
                return Ok(b);
            }
        }
        let mut job_props = Vec::new();
        for path in jobs {
            if let Ok(iface) = server.interface::<_, super::job::Job>(path.as_str()).await {
                let conn = iface.signal_emitter().connection().clone();
                if let Ok(props) = iface
                    .get()
                    .await
                    .get_all(server, &conn, None, iface.signal_emitter())
                    .await
                {
                    job_props.push((path, props));
                }
            }
        }
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let body = Arc::new(Self::serialize(&objects, &job_props)?);
        if job_props.is_empty() {
            // Still under the read lock: no change can slip in between the
            // reading and the caching (a `set` waits for the lock, then
            // drops this answer).
            *lock(&self.cached) = Some(body.clone());
        }
        drop(objects);
        Ok(body)
    }
}

/// The registry of the root ObjectManager on this server (none when the
/// root has another ObjectManager, as in unit tests).
pub async fn registry(server: &ObjectServer) -> Option<Arc<Registry>> {
    let iface = server.interface::<_, ObjectManager>(ROOT_PATH).await.ok()?;
    let r = iface.get().await.registry.clone();
    Some(r)
}

/// The root's `org.vapor.Virtualization.Manager`: the Manager's methods,
/// with EnumerateObjects answered from the registry's serialised rows.
pub struct Root {
    pub manager: super::manager::Manager,
    pub registry: Arc<Registry>,
}

async fn enumerate(
    root: &Root,
    connection: &Connection,
    msg: &Message,
) -> Result<(), BoxDBusError> {
    let hdr = msg.header();
    let answer = async {
        let iface: String = msg
            .body()
            .deserialize()
            .map_err(|e| super::Error::InvalidArgument(format!("interface: {e}")))?;
        super::options::text("interface", &iface, crate::text::TextRule::NAME)?;
        root.manager
            .auth
            .check(
                &hdr,
                super::polkit::Action::Read,
                &super::polkit::Host,
                "enumerate objects",
            )
            .await?;
        root.registry
            .rows_body(&iface)
            .map_err(|e| super::Error::Failed(format!("cannot enumerate {iface}: {e}")))
    }
    .await;
    match answer {
        Ok(body) => {
            // SAFETY: `asv` serialised little endian at position 0 by zbus.
            let reply = unsafe {
                Message::method_return(&hdr)
                    .endian(Endian::Little)
                    .build_raw_body(&body, "asv", Vec::new())
            }?;
            connection.send(&reply).await?;
        }
        Err(e) => {
            connection.reply_dbus_error(&hdr, e).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Interface for Root {
    fn name() -> InterfaceName<'static> {
        <super::manager::Manager as Interface>::name()
    }

    async fn get(
        &self,
        property_name: &str,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        self.manager
            .get(property_name, server, connection, header, emitter)
            .await
    }

    async fn get_all(
        &self,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        self.manager
            .get_all(server, connection, header, emitter)
            .await
    }

    fn set<'call>(
        &'call self,
        property_name: &'call str,
        value: &'call Variant<'_>,
        server: &'call ObjectServer,
        connection: &'call Connection,
        header: Option<&'call Header<'_>>,
        emitter: &'call SignalEmitter<'_>,
    ) -> DispatchResult<'call> {
        self.manager
            .set(property_name, value, server, connection, header, emitter)
    }

    async fn set_mut(
        &mut self,
        property_name: &str,
        value: &Variant<'_>,
        server: &ObjectServer,
        connection: &Connection,
        header: Option<&Header<'_>>,
        emitter: &SignalEmitter<'_>,
    ) -> Option<Result<(), BoxDBusError>> {
        self.manager
            .set_mut(property_name, value, server, connection, header, emitter)
            .await
    }

    fn call<'call>(
        &'call self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        match name.as_str() {
            "EnumerateObjects" => DispatchResult::Async(Box::pin(enumerate(self, connection, msg))),
            _ => self.manager.call(server, connection, msg, name),
        }
    }

    fn call_mut<'call>(
        &'call mut self,
        server: &'call ObjectServer,
        connection: &'call Connection,
        msg: &'call Message,
        name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        self.manager.call_mut(server, connection, msg, name)
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        self.manager.introspect_to_writer(writer, level)
    }
}

/// The root's `org.freedesktop.DBus.ObjectManager`.
pub struct ObjectManager {
    pub registry: Arc<Registry>,
}

async fn reply(
    registry: Arc<Registry>,
    server: &ObjectServer,
    connection: &Connection,
    msg: &Message,
) -> Result<(), BoxDBusError> {
    let hdr = msg.header();
    if hdr.path().map(|p| p.as_str()) != Some(ROOT_PATH) {
        return Err(Box::new(zbus::fdo::Error::UnknownMethod(
            "GetManagedObjects is served on the root object only".into(),
        )));
    }
    let body = registry.body(server).await?;
    // SAFETY: the bytes are a little-endian a{oa{sa{sv}}} serialised by
    // zbus itself at position 0, as the signature says.
    let reply = unsafe {
        Message::method_return(&hdr)
            .endian(Endian::Little)
            .build_raw_body(&body, "a{oa{sa{sv}}}", Vec::new())
    }?;
    connection.send(&reply).await?;
    Ok(())
}

#[async_trait]
impl Interface for ObjectManager {
    fn name() -> InterfaceName<'static> {
        InterfaceName::from_static_str_unchecked("org.freedesktop.DBus.ObjectManager")
    }

    async fn get(
        &self,
        _property_name: &str,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> Option<Result<OwnedVariant, BoxDBusError>> {
        None
    }

    async fn get_all(
        &self,
        _server: &ObjectServer,
        _connection: &Connection,
        _header: Option<&Header<'_>>,
        _emitter: &SignalEmitter<'_>,
    ) -> zbus::fdo::Result<HashMap<String, OwnedVariant>> {
        Ok(HashMap::new())
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
        match name.as_str() {
            "GetManagedObjects" => {
                let registry = self.registry.clone();
                DispatchResult::Async(Box::pin(reply(registry, server, connection, msg)))
            }
            _ => DispatchResult::NotFound,
        }
    }

    fn call_mut<'call>(
        &'call mut self,
        _server: &'call ObjectServer,
        _connection: &'call Connection,
        _msg: &'call Message,
        _name: MemberName<'call>,
    ) -> DispatchResult<'call> {
        DispatchResult::NotFound
    }

    fn introspect_to_writer(&self, writer: &mut dyn Write, level: usize) {
        let pad = level;
        let inner = level + 2;
        let arg = level + 4;
        let _ = writeln!(
            writer,
            "{:pad$}<interface name=\"org.freedesktop.DBus.ObjectManager\">",
            ""
        );
        let _ = writeln!(writer, "{:inner$}<method name=\"GetManagedObjects\">", "");
        let _ = writeln!(
            writer,
            "{:arg$}<arg type=\"a{{oa{{sa{{sv}}}}}}\" direction=\"out\"/>",
            ""
        );
        let _ = writeln!(writer, "{:inner$}</method>", "");
        let _ = writeln!(writer, "{:inner$}<signal name=\"InterfacesAdded\">", "");
        let _ = writeln!(writer, "{:arg$}<arg name=\"object_path\" type=\"o\"/>", "");
        let _ = writeln!(
            writer,
            "{:arg$}<arg name=\"interfaces_and_properties\" type=\"a{{sa{{sv}}}}\"/>",
            ""
        );
        let _ = writeln!(writer, "{:inner$}</signal>", "");
        let _ = writeln!(writer, "{:inner$}<signal name=\"InterfacesRemoved\">", "");
        let _ = writeln!(writer, "{:arg$}<arg name=\"object_path\" type=\"o\"/>", "");
        let _ = writeln!(writer, "{:arg$}<arg name=\"interfaces\" type=\"as\"/>", "");
        let _ = writeln!(writer, "{:inner$}</signal>", "");
        let _ = writeln!(writer, "{:pad$}</interface>", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_body_is_what_zbus_would_send() {
        let r = Registry::default();
        let mut props = Props::new();
        props.insert("Name".into(), OwnedVariant::from(7u32));
        r.set(
            "/org/vapor/Virtualization/vm/a",
            InterfaceName::from_static_str_unchecked("org.vapor.Virtualization.VirtualMachine"),
            props.clone(),
        );
        let objects = r.objects.read().unwrap();
        let bytes = Registry::serialize(&objects, &[]).unwrap();
        let data = zbus::wire::serialized::Data::new(bytes, Context::new(Endian::Little, 0));
        let (back, _): (HashMap<zbus::OwnedObjectPath, HashMap<String, Props>>, _) =
            data.deserialize().unwrap();
        let vm = &back[&zbus::OwnedObjectPath::try_from("/org/vapor/Virtualization/vm/a").unwrap()];
        assert_eq!(vm["org.vapor.Virtualization.VirtualMachine"], props);
    }

    #[test]
    fn rows_carry_every_property_in_the_order_of_the_names() {
        let r = Registry::default();
        let iface = || InterfaceName::from_static_str_unchecked("a.Vm");
        for (path, name, mem) in [("/o/b", "beta", 2u64), ("/o/a", "alpha", 1)] {
            let mut props = Props::new();
            props.insert(
                "Name".into(),
                OwnedVariant::try_from(Variant::from(name)).unwrap(),
            );
            props.insert("MemoryMiB".into(), OwnedVariant::from(mem));
            r.set(path, iface(), props);
        }
        r.set(
            "/o/other",
            InterfaceName::from_static_str_unchecked("a.Other"),
            Props::new(),
        );
        let (names, rows) = r.rows("a.Vm").unwrap();
        assert_eq!(names, ["MemoryMiB", "Name"]);
        let rows: Vec<(zbus::OwnedObjectPath, u64, String)> = rows.try_into().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0.as_str(), "/o/a");
        assert_eq!((rows[0].1, rows[0].2.as_str()), (1, "alpha"));
        assert_eq!((rows[1].1, rows[1].2.as_str()), (2, "beta"));
        let (names, _) = r.rows("a.None").unwrap();
        assert!(names.is_empty());
    }

    #[test]
    fn any_change_drops_the_cached_answer() {
        let r = Registry::default();
        *lock(&r.cached) = Some(Arc::new(vec![1]));
        r.set(
            "/a",
            InterfaceName::from_static_str_unchecked("a.b"),
            Props::new(),
        );
        assert!(lock(&r.cached).is_none());
        *lock(&r.cached) = Some(Arc::new(vec![1]));
        r.remove("/nothing-there");
        assert!(lock(&r.cached).is_some(), "nothing changed");
        r.remove("/a");
        assert!(lock(&r.cached).is_none());
    }
}
