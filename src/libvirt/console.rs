//! The typed port for consoles of running domains: the serial console as a
//! libvirt stream bridged to a socket pair ([`Hypervisor::open_console`]),
//! and the graphical display (VNC or SPICE) as the descriptor
//! `virDomainOpenGraphicsFD` hands out ([`Hypervisor::open_graphics`]).
//!
//! A serial console is a non-blocking stream (`VIR_STREAM_NONBLOCK`) whose
//! event callback, on libvirt's event thread, only wakes the bridge thread
//! (see [`super::console_bridge`]); that thread does all the reading and
//! writing. Closing the caller's end, the guest's console going away (the
//! VM stopped) or [`ConsoleHandle::stop`] ends the thread, which then
//! removes the callback and aborts (or finishes) and frees the stream:
//! nothing stays behind. Consoles are opened "safe" (libvirt refuses a
//! second session instead of silently taking the console from the first);
//! `force` takes it over. Each session has a libvirt connection of its own
//! (see [`SessionConn`] for why). libvirt's errors come with their own
//! message; callers say what they were doing.

use std::ffi::c_void;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::raw::c_int;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virt::domain::Domain;
use virt::error::ErrorNumber as N;
use virt_sys as sys;

use super::console_bridge::{pump, stream_events, ConsoleStream, End, Io, Wake};
use super::errors::{bare, from_virt};
use super::xml::Element;
use super::Hypervisor;
use crate::{Error, Result};

/// libvirt's flags for opening a serial console: always
/// `VIR_DOMAIN_CONSOLE_SAFE` (a second session is refused while one is
/// open), plus `VIR_DOMAIN_CONSOLE_FORCE` to take the console over from
/// that session. Pure.
pub fn console_flags(force: bool) -> u32 {
    let mut f = sys::VIR_DOMAIN_CONSOLE_SAFE;
    if force {
        f |= sys::VIR_DOMAIN_CONSOLE_FORCE;
    }
    f
}

/// Whether a domain definition has a serial console (a `<console>` or a
/// `<serial>` device) for `virDomainOpenConsole` to open. Pure.
pub fn has_serial_console(domain: &Element) -> bool {
    domain.child("devices").is_some_and(|d| {
        d.children_named("console").next().is_some() || d.children_named("serial").next().is_some()
    })
}

/// The type of the display `virDomainOpenGraphicsFD` opens (the first
/// `<graphics>`): `vnc` or `spice`; `NotSupported` for a definition without
/// one or with another kind first. Pure.
pub fn first_display(domain: &Element) -> Result<&str> {
    let first = domain
        .child("devices")
        .and_then(|d| d.children_named("graphics").next());
    match first.map(|g| g.attr("type").unwrap_or("")) {
        None => Err(Error::NotSupported(
            "the virtual machine has no graphical display (VNC or SPICE)".into(),
        )),
        Some(t @ ("vnc" | "spice")) => Ok(t),
        Some(t) => Err(Error::NotSupported(format!(
            "the virtual machine's display is of type '{t}'; only VNC and SPICE displays can be opened"
        ))),
    }
}

/// Whether the definition has what [`Hypervisor::open_graphics`]
/// (`graphics`) or [`Hypervisor::open_console`] opens; `NotSupported`
/// saying what is missing. Pure.
pub fn console_available(domain: &Element, graphics: bool) -> Result<()> {
    if graphics {
        first_display(domain).map(|_| ())
    } else if has_serial_console(domain) {
        Ok(())
    } else {
        Err(Error::NotSupported(
            "the virtual machine has no serial console".into(),
        ))
    }
}

/// Whether libvirt refused a console because another session holds it.
fn console_busy(code: N, message: &str) -> bool {
    code == N::OperationFailed && message.contains("Active console session")
}

fn console_error(e: virt::error::Error) -> Error {
    let code = e.code().unwrap_or(N::InternalError);
    if console_busy(code, e.message()) {
        return Error::Conflict(
            "another console session of this virtual machine is open; \
             open it with the option force to take it over"
                .into(),
        );
    }
    bare(e)
}

/// The live definition, to check what can be opened.
fn live_definition(dom: &Domain) -> Result<Element> {
    let xml = dom
        .xml_desc(0)
        .map_err(|e| from_virt(e, "cannot read the virtual machine's definition"))?;
    Element::parse(&xml)
}

/// A running serial console session: stop it, or see that it ended.
#[derive(Clone)]
pub struct ConsoleHandle {
    wake: Arc<Wake>,
}

impl ConsoleHandle {
    /// End the session soon (its thread closes the socket and the stream).
    pub fn stop(&self) {
        self.wake.stop();
    }

    /// Whether its thread has finished.
    pub fn is_finished(&self) -> bool {
        self.wake.done.load(Ordering::SeqCst)
    }
}

/// A serial console: the caller's end of the socket pair, and the session.
pub struct Console {
    pub fd: OwnedFd,
    pub handle: ConsoleHandle,
}

/// One non-blocking libvirt stream with the bridge's event callback.
/// Dropping it removes the callback, aborts a stream still open and frees
/// it (never panicking, unlike the `virt` wrapper).
struct RawStream {
    ptr: sys::virStreamPtr,
    watching: bool,
    open: bool,
}

// SAFETY: libvirt's stream objects may be used from any thread; the bridge
// thread is the only user once the stream is handed to it.
unsafe impl Send for RawStream {}

/// The event callback: record the events and wake the bridge thread.
unsafe extern "C" fn on_stream_event(_st: sys::virStreamPtr, events: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Arc<Wake>` given at registration, alive
    // until `free_wake` runs (libvirt calls it only after any dispatch).
    let wake = &*(opaque as *const Wake);
    wake.signal(events);
}

unsafe extern "C" fn free_wake(opaque: *mut c_void) {
    // SAFETY: the reference `watch` leaked into the registration.
    drop(Arc::from_raw(opaque as *const Wake));
}

impl RawStream {
    fn new(c: &SessionConn) -> Result<RawStream> {
        // SAFETY: a valid connection; the stream is owned by the result.
        let ptr = unsafe { sys::virStreamNew(c.ptr, sys::VIR_STREAM_NONBLOCK) };
        if ptr.is_null() {
            let e = virt::error::Error::last_error();
            return Err(from_virt(e, "cannot create a console stream"));
        }
        Ok(RawStream {
            ptr,
            watching: false,
            open: false,
        })
    }

    fn last_error(what: &str) -> Error {
        from_virt(virt::error::Error::last_error(), what)
    }

    /// Register the callback that wakes `wake` for `events`.
    fn watch(&mut self, wake: &Arc<Wake>, events: i32) -> Result<()> {
        let opaque = Arc::into_raw(wake.clone()) as *mut c_void;
        // SAFETY: a valid stream; `opaque` stays alive until `free_wake`.
        let rc = unsafe {
            sys::virStreamEventAddCallback(
                self.ptr,
                events,
                Some(on_stream_event),
                opaque,
                Some(free_wake),
            )
        };
        if rc < 0 {
            // Not registered: the reference is still ours.
            // SAFETY: the pointer from `Arc::into_raw` above, used once.
            unsafe { drop(Arc::from_raw(opaque as *const Wake)) };
            return Err(Self::last_error("cannot watch the console stream"));
        }
        self.watching = true;
        Ok(())
    }

    /// End the stream: finished when it ended cleanly, else aborted.
    fn close(&mut self, clean: bool) {
        if self.watching {
            // SAFETY: a valid stream with a callback registered.
            unsafe { sys::virStreamEventRemoveCallback(self.ptr) };
            self.watching = false;
        }
        if self.open {
            // SAFETY: a valid stream; errors only mean it is already gone.
            let rc = unsafe {
                if clean {
                    sys::virStreamFinish(self.ptr)
                } else {
                    sys::virStreamAbort(self.ptr)
                }
            };
            if rc < 0 {
                let e = virt::error::Error::last_error();
                log::debug!("closing a console stream: {}", e.message());
            }
            self.open = false;
        }
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        self.close(false);
        // SAFETY: our one reference, released once.
        unsafe { sys::virStreamFree(self.ptr) };
    }
}

impl ConsoleStream for RawStream {
    fn recv(&mut self, buf: &mut [u8]) -> Result<Io> {
        // SAFETY: a valid stream and a live buffer of `buf.len()` bytes.
        let n = unsafe { sys::virStreamRecv(self.ptr, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            -2 => Ok(Io::Again),
            0 => Ok(Io::Eof),
            n if n > 0 => Ok(Io::Done(n as usize)),
            _ => Err(Self::last_error("cannot read the serial console")),
        }
    }

    fn send(&mut self, buf: &[u8]) -> Result<Io> {
        // SAFETY: a valid stream and a live buffer of `buf.len()` bytes.
        let n = unsafe { sys::virStreamSend(self.ptr, buf.as_ptr().cast(), buf.len()) };
        match n {
            -2 => Ok(Io::Again),
            n if n >= 0 => Ok(Io::Done(n as usize)),
            _ => Err(Self::last_error("cannot write to the serial console")),
        }
    }

    fn want(&mut self, events: i32) -> Result<()> {
        // SAFETY: a valid stream with a callback registered.
        if unsafe { sys::virStreamEventUpdateCallback(self.ptr, events) } < 0 {
            return Err(Self::last_error("cannot watch the console stream"));
        }
        Ok(())
    }
}

/// A libvirt connection for one console session alone. A stream shares
/// its connection's socket, and when a guest does not read what is typed,
/// libvirtd stops reading that socket (its limit of requests in flight per
/// client): every other call on the connection would wait, and libvirtd
/// ends the connection some 30 s later. On a connection of its own only
/// that session stalls and ends. Closed when dropped.
struct SessionConn {
    ptr: sys::virConnectPtr,
}

// SAFETY: libvirt connections may be used from any thread.
unsafe impl Send for SessionConn {}

impl SessionConn {
    fn open(uri: &str) -> Result<SessionConn> {
        let name = std::ffi::CString::new(uri)
            .map_err(|_| Error::InvalidArgument(format!("bad libvirt URI {uri:?}")))?;
        // SAFETY: a NUL-terminated URI; the connection is owned by the result.
        let ptr = unsafe { sys::virConnectOpen(name.as_ptr()) };
        if ptr.is_null() {
            let e = virt::error::Error::last_error();
            return Err(from_virt(e, format!("cannot connect to {uri}")));
        }
        // Notice a libvirtd that went away (not every driver can: fine).
        // SAFETY: a valid connection.
        unsafe { sys::virConnectSetKeepAlive(ptr, 5, 3) };
        Ok(SessionConn { ptr })
    }

    /// Open the first serial console of domain `uuid` into `stream`.
    fn open_console(&self, uuid: &str, stream: &mut RawStream, force: bool) -> Result<()> {
        let id = std::ffi::CString::new(uuid)
            .map_err(|_| Error::InvalidArgument(format!("bad UUID {uuid:?}")))?;
        // SAFETY: a valid connection and a NUL-terminated UUID.
        let dom = unsafe { sys::virDomainLookupByUUIDString(self.ptr, id.as_ptr()) };
        if dom.is_null() {
            return Err(bare(virt::error::Error::last_error()));
        }
        // SAFETY: a valid domain and stream; NULL names the first console.
        let rc = unsafe {
            sys::virDomainOpenConsole(dom, std::ptr::null(), stream.ptr, console_flags(force))
        };
        let result = if rc < 0 {
            Err(console_error(virt::error::Error::last_error()))
        } else {
            stream.open = true;
            Ok(())
        };
        // SAFETY: our reference from the lookup, released once.
        unsafe { sys::virDomainFree(dom) };
        result
    }
}

impl Drop for SessionConn {
    fn drop(&mut self) {
        // SAFETY: our one reference, released once.
        unsafe { sys::virConnectClose(self.ptr) };
    }
}

/// What a bridge thread owns: the stream, then its connection (closed
/// after the stream is freed: fields drop in this order).
struct ConsoleLink {
    stream: RawStream,
    _conn: SessionConn,
}

/// The bridge thread: pump until one side ends, then close everything.
fn run_bridge(mut link: ConsoleLink, sock: UnixStream, wake: Arc<Wake>) {
    let end = pump(&mut link.stream, sock.as_fd(), &wake);
    link.stream.close(matches!(end, Ok(End::StreamClosed)));
    match end {
        Ok(how) => log::debug!("serial console closed: {how:?}"),
        Err(e) => log::info!("serial console closed: {e}"),
    }
    drop(link);
    drop(sock);
    wake.done.store(true, Ordering::SeqCst);
}

fn open_console_blocking(uri: &str, dom: &Domain, force: bool) -> Result<Console> {
    console_available(&live_definition(dom)?, false)?;
    let uuid = dom.uuid_string().map_err(bare)?;
    let conn = SessionConn::open(uri)?;
    let mut stream = RawStream::new(&conn)?;
    conn.open_console(&uuid, &mut stream, force)?;
    let failed =
        |e: std::io::Error| Error::Failed(format!("cannot bridge the serial console: {e}"));
    let wake = Arc::new(Wake::new().map_err(failed)?);
    stream.watch(&wake, stream_events(0, 0, false))?;
    let (ours, theirs) = UnixStream::pair().map_err(failed)?;
    let w = wake.clone();
    let link = ConsoleLink {
        stream,
        _conn: conn,
    };
    std::thread::Builder::new()
        .name("vapor-console".into())
        .spawn(move || run_bridge(link, ours, w))
        .map_err(failed)?;
    Ok(Console {
        fd: theirs.into(),
        handle: ConsoleHandle { wake },
    })
}

fn open_graphics_blocking(dom: &Domain) -> Result<OwnedFd> {
    first_display(&live_definition(dom)?)?;
    let fd = dom
        .open_graphics_fd(0, sys::VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
        .map_err(bare)?;
    // SAFETY: libvirt handed us this new descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

impl Hypervisor {
    /// Open the running domain's first serial console; the caller gets one
    /// end of a socket pair joined to it by a thread of its own (see the
    /// module comment). `force` takes the console over from another
    /// session (which then ends); without it another session is `Conflict`.
    pub async fn open_console(&self, uuid: &str, force: bool) -> Result<Console> {
        let uri = self.uri().to_owned();
        self.run_on_domain(uuid, move |_, d| open_console_blocking(&uri, d, force))
            .await
    }

    /// A descriptor connected to the running domain's first graphical
    /// display (VNC or SPICE), past the display's own password
    /// (`VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH`: the caller was authorized).
    pub async fn open_graphics(&self, uuid: &str) -> Result<OwnedFd> {
        self.run_on_domain(uuid, |_, d| open_graphics_blocking(d))
            .await
    }

    /// Whether the running domain has a graphical display (`graphics`) or
    /// a serial console to open, without opening it (see
    /// [`console_available`]).
    pub async fn check_console(&self, uuid: &str, graphics: bool) -> Result<()> {
        self.run_on_domain(uuid, move |_, d| {
            console_available(&live_definition(d)?, graphics)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(devices: &str) -> Element {
        Element::parse(&format!("<domain><devices>{devices}</devices></domain>")).unwrap()
    }

    #[test]
    fn consoles_open_safe_and_force_only_when_asked() {
        assert_eq!(console_flags(false), sys::VIR_DOMAIN_CONSOLE_SAFE);
        assert_eq!(
            console_flags(true),
            sys::VIR_DOMAIN_CONSOLE_SAFE | sys::VIR_DOMAIN_CONSOLE_FORCE
        );
    }

    #[test]
    fn a_serial_console_is_a_console_or_serial_device() {
        assert!(has_serial_console(&domain("<console type='pty'/>")));
        assert!(has_serial_console(&domain("<serial type='pty'/>")));
        assert!(!has_serial_console(&domain("<graphics type='vnc'/>")));
        assert!(!has_serial_console(&Element::parse("<domain/>").unwrap()));
    }

    #[test]
    fn only_a_first_vnc_or_spice_display_can_be_opened() {
        assert_eq!(
            first_display(&domain("<graphics type='vnc'/>")).unwrap(),
            "vnc"
        );
        assert_eq!(
            first_display(&domain("<graphics type='spice'/><graphics type='vnc'/>")).unwrap(),
            "spice"
        );
        let none = first_display(&domain("<serial type='pty'/>")).unwrap_err();
        assert!(matches!(none, Error::NotSupported(ref m) if m.contains("no graphical display")));
        let sdl = first_display(&domain("<graphics type='sdl'/>")).unwrap_err();
        assert!(matches!(sdl, Error::NotSupported(ref m) if m.contains("'sdl'")));
    }

    #[test]
    fn what_can_be_opened_is_checked_per_kind() {
        let serial_only = domain("<console type='pty'/>");
        assert!(console_available(&serial_only, false).is_ok());
        assert!(matches!(
            console_available(&serial_only, true),
            Err(Error::NotSupported(_))
        ));
        let vnc_only = domain("<graphics type='vnc'/>");
        assert!(console_available(&vnc_only, true).is_ok());
        let e = console_available(&vnc_only, false).unwrap_err();
        assert!(matches!(e, Error::NotSupported(ref m) if m.contains("no serial console")));
    }

    #[test]
    fn a_console_held_by_another_session_is_recognised() {
        let msg = "operation failed: Active console session exists for this domain";
        assert!(console_busy(N::OperationFailed, msg));
        assert!(!console_busy(N::OperationFailed, "something else"));
        assert!(!console_busy(N::InternalError, msg));
    }
}
