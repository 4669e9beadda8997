//! libvirt's event loop and the callbacks vapord registers on a connection.
//!
//! libvirt delivers domain events and connection-close notifications only while
//! an event loop runs. We register libvirt's default implementation once, before
//! the first connection is opened, and run it on a dedicated thread. Callbacks do
//! nothing but forward a small message into a channel; all real work happens on
//! the async side.

use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::Once;

use tokio::sync::mpsc::UnboundedSender;
use virt_sys as sys;

use super::conn::HypervisorEvent;
use super::records::name_and_uuid;

static EVENT_LOOP: Once = Once::new();

/// Register libvirt's default event loop and start the thread that runs it.
/// Idempotent; must happen before any connection is opened.
pub fn ensure_event_loop() {
    EVENT_LOOP.call_once(|| {
        virt::error::clear_error_callback();
        // SAFETY: plain libvirt initialisation calls, done once.
        unsafe {
            sys::virInitialize();
            if sys::virEventRegisterDefaultImpl() < 0 {
                log::error!("libvirt: cannot register the default event loop");
                return;
            }
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // SAFETY: the default impl was registered above.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .expect("spawning the libvirt event thread");
    });
}

/// What each callback registration owns: where to send, and which connection
/// (generation) it belongs to, so a late close notice from an old connection is
/// never mistaken for the loss of the current one.
pub struct Tap {
    pub tx: UnboundedSender<HypervisorEvent>,
    pub generation: u64,
}

type Sender = Tap;

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    drop(Box::from_raw(opaque as *mut Sender));
}

unsafe fn send(opaque: *mut c_void, ev: HypervisorEvent) {
    let tap = &*(opaque as *const Sender);
    let _ = tap.tx.send(ev);
}

/// Forward "something happened to `dom`" with a short description.
unsafe fn send_domain(opaque: *mut c_void, dom: sys::virDomainPtr, what: &'static str) {
    if let Some((name, uuid)) = name_and_uuid(dom) {
        send(opaque, HypervisorEvent::Domain { uuid, name, what });
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    send_domain(opaque, dom, lifecycle_name(event, detail));
    0
}

unsafe extern "C" fn on_domain_generic(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    opaque: *mut c_void,
) {
    send_domain(opaque, dom, "changed");
}

unsafe extern "C" fn on_balloon(
    conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _actual: std::os::raw::c_ulonglong,
    opaque: *mut c_void,
) {
    on_domain_generic(conn, dom, opaque)
}

unsafe extern "C" fn on_metadata(
    conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _kind: c_int,
    _nsuri: *const std::os::raw::c_char,
    opaque: *mut c_void,
) {
    on_domain_generic(conn, dom, opaque)
}

unsafe extern "C" fn on_device(
    conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _alias: *const std::os::raw::c_char,
    opaque: *mut c_void,
) {
    let _ = conn;
    send_domain(opaque, dom, "device-changed");
}

/// The guest agent connected or went away (libvirt sees its channel).
unsafe extern "C" fn on_agent(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    state: c_int,
    _reason: c_int,
    opaque: *mut c_void,
) {
    let what = if state as u32 == sys::VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED {
        AGENT_CONNECTED
    } else {
        AGENT_DISCONNECTED
    };
    send_domain(opaque, dom, what);
}

/// The `what` of a domain event: the guest agent connected.
pub const AGENT_CONNECTED: &str = "agent-connected";
/// The `what` of a domain event: the guest agent went away.
pub const AGENT_DISCONNECTED: &str = "agent-disconnected";

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    let why = match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "libvirtd closed the connection",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "libvirtd stopped answering keepalives",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "the connection was closed",
        _ => "connection error",
    };
    let generation = (*(opaque as *const Sender)).generation;
    send(opaque, HypervisorEvent::Disconnected { generation, why });
}

/// A UUID string read by one of libvirt's `vir*GetUUIDString` calls.
unsafe fn uuid_string(get: impl FnOnce(*mut std::os::raw::c_char) -> c_int) -> Option<String> {
    let mut buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    if get(buf.as_mut_ptr()) < 0 {
        return None;
    }
    Some(
        std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned(),
    )
}

/// Any storage pool event: lifecycle (any detail) and refresh alike.
unsafe extern "C" fn on_pool(
    _conn: sys::virConnectPtr,
    pool: sys::virStoragePoolPtr,
    opaque: *mut c_void,
) {
    if let Some(uuid) = uuid_string(|b| sys::virStoragePoolGetUUIDString(pool, b)) {
        send(opaque, HypervisorEvent::Pool { uuid });
    }
}

unsafe extern "C" fn on_network(
    _conn: sys::virConnectPtr,
    net: sys::virNetworkPtr,
    opaque: *mut c_void,
) {
    if let Some(uuid) = uuid_string(|b| sys::virNetworkGetUUIDString(net, b)) {
        send(opaque, HypervisorEvent::Network { uuid });
    }
}

unsafe extern "C" fn on_pool_lifecycle(
    conn: sys::virConnectPtr,
    pool: sys::virStoragePoolPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) {
    on_pool(conn, pool, opaque)
}

unsafe extern "C" fn on_network_lifecycle(
    conn: sys::virConnectPtr,
    net: sys::virNetworkPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) {
    on_network(conn, net, opaque)
}

/// The callback ids registered on one connection, by kind of object.
#[derive(Debug, Default)]
pub struct Registrations {
    pub domain: Vec<c_int>,
    pub pool: Vec<c_int>,
    pub network: Vec<c_int>,
}

/// A short name for a lifecycle event, for logs.
fn lifecycle_name(event: c_int, _detail: c_int) -> &'static str {
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_DEFINED => "defined",
        sys::VIR_DOMAIN_EVENT_UNDEFINED => "undefined",
        sys::VIR_DOMAIN_EVENT_STARTED => "started",
        sys::VIR_DOMAIN_EVENT_SUSPENDED => "suspended",
        sys::VIR_DOMAIN_EVENT_RESUMED => "resumed",
        sys::VIR_DOMAIN_EVENT_STOPPED => "stopped",
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => "shutdown",
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => "pmsuspended",
        sys::VIR_DOMAIN_EVENT_CRASHED => "crashed",
        _ => "changed",
    }
}

/// Register the domain event and close callbacks on a fresh connection and
/// return the callback ids (for [`unregister`]). Each
/// registration owns a boxed clone of `tx`, freed by libvirt when the
/// connection goes away.
///
/// # Safety
/// `conn` must be a valid, open connection.
pub unsafe fn register(
    conn: sys::virConnectPtr,
    tx: &UnboundedSender<HypervisorEvent>,
    generation: u64,
) -> Result<Registrations, virt::error::Error> {
    let boxed = || {
        Box::into_raw(Box::new(Tap {
            tx: tx.clone(),
            generation,
        })) as *mut c_void
    };
    // Register one callback with its own boxed sender; on failure free it
    // and undo every registration made so far.
    let attach = |ids: &Registrations, call: &dyn Fn(*mut c_void) -> c_int| {
        let opaque = boxed();
        let rc = call(opaque);
        if rc < 0 {
            let err = virt::error::Error::last_error();
            free_sender(opaque);
            unregister(conn, ids, false);
            return Err(err);
        }
        Ok(rc)
    };

    type Lifecycle = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    type Balloon = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        std::os::raw::c_ulonglong,
        *mut c_void,
    );
    type Metadata = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        *const std::os::raw::c_char,
        *mut c_void,
    );
    type Generic = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

    // libvirt takes every callback as the generic type and casts it back by event id.
    let lifecycle: Generic = std::mem::transmute::<Lifecycle, Generic>(on_lifecycle);
    let balloon: Generic = std::mem::transmute::<Balloon, Generic>(on_balloon);
    let metadata: Generic = std::mem::transmute::<Metadata, Generic>(on_metadata);
    type Device = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        *const std::os::raw::c_char,
        *mut c_void,
    );
    let device: Generic = std::mem::transmute::<Device, Generic>(on_device);
    type Agent =
        unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void);
    let agent: Generic = std::mem::transmute::<Agent, Generic>(on_agent);
    // Device events: hostdevs attached or detached (also by virsh) change
    // which VM uses which PCI device.
    let events: [(u32, Generic); 6] = [
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
        (sys::VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, balloon),
        (sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, metadata),
        (sys::VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, device),
        (sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, device),
        (sys::VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, agent),
    ];
    let mut ids = Registrations::default();
    for (id, cb) in events {
        let rc = attach(&ids, &|opaque| {
            sys::virConnectDomainEventRegisterAny(
                conn,
                std::ptr::null_mut(),
                id as c_int,
                Some(cb),
                opaque,
                Some(free_sender),
            )
        })?;
        ids.domain.push(rc);
    }
    // Pools (lifecycle and refresh) and networks (lifecycle): created or
    // removed behind vapord's back (virsh), they still appear and vanish.
    type PoolLifecycle =
        unsafe extern "C" fn(sys::virConnectPtr, sys::virStoragePoolPtr, c_int, c_int, *mut c_void);
    type PoolGeneric =
        unsafe extern "C" fn(sys::virConnectPtr, sys::virStoragePoolPtr, *mut c_void);
    let pool_events: [(u32, PoolGeneric); 2] = [
        (
            sys::VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
            std::mem::transmute::<PoolLifecycle, PoolGeneric>(on_pool_lifecycle),
        ),
        (sys::VIR_STORAGE_POOL_EVENT_ID_REFRESH, on_pool),
    ];
    for (id, cb) in pool_events {
        let rc = attach(&ids, &|opaque| {
            sys::virConnectStoragePoolEventRegisterAny(
                conn,
                std::ptr::null_mut(),
                id as c_int,
                Some(cb),
                opaque,
                Some(free_sender),
            )
        })?;
        ids.pool.push(rc);
    }
    type NetLifecycle =
        unsafe extern "C" fn(sys::virConnectPtr, sys::virNetworkPtr, c_int, c_int, *mut c_void);
    type NetGeneric = unsafe extern "C" fn(sys::virConnectPtr, sys::virNetworkPtr, *mut c_void);
    let network_lifecycle = std::mem::transmute::<NetLifecycle, NetGeneric>(on_network_lifecycle);
    let rc = attach(&ids, &|opaque| {
        sys::virConnectNetworkEventRegisterAny(
            conn,
            std::ptr::null_mut(),
            sys::VIR_NETWORK_EVENT_ID_LIFECYCLE as c_int,
            Some(network_lifecycle),
            opaque,
            Some(free_sender),
        )
    })?;
    ids.network.push(rc);
    attach(&ids, &|opaque| {
        sys::virConnectRegisterCloseCallback(conn, Some(on_close), opaque, Some(free_sender))
    })?;
    Ok(ids)
}

/// Remove the callbacks [`register`] added (they hold references on the
/// connection, which would otherwise never be freed).
///
/// # Safety
/// `conn` must be the connection the ids were registered on.
pub unsafe fn unregister(conn: sys::virConnectPtr, ids: &Registrations, close_callback: bool) {
    for id in &ids.domain {
        sys::virConnectDomainEventDeregisterAny(conn, *id);
    }
    for id in &ids.pool {
        sys::virConnectStoragePoolEventDeregisterAny(conn, *id);
    }
    for id in &ids.network {
        sys::virConnectNetworkEventDeregisterAny(conn, *id);
    }
    if close_callback {
        sys::virConnectUnregisterCloseCallback(conn, Some(on_close));
    }
}
