//! The loop that joins a console stream to a caller's socket: bytes from
//! the guest go to the socket, bytes from the socket go to the guest, until
//! either side closes, the stream fails or the bridge is stopped.
//!
//! One thread per console runs [`pump`]; everything it does is
//! non-blocking. It sleeps in [`wait_any`] (the transfer machinery of
//! `stream.rs`: poll, cancel flag, idle limit) on two descriptors: the
//! caller's socket and a [`Wake`] eventfd that the stream's event callback
//! (on libvirt's event thread) and [`Wake::stop`] signal. The stream is
//! reached through [`ConsoleStream`], so the loop is tested without libvirt.
//!
//! The idle limit only runs while bytes wait for a side that takes nothing
//! (a caller who stopped reading must not pin the console); a quiet console
//! may stay open for as long as both ends keep it.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use virt_sys as sys;

use super::stream::{wait_any, IDLE_LIMIT};
use crate::{Error, Result};

/// Most bytes held for the caller before the stream is read no more.
pub(super) const BUFFER: usize = 64 * 1024;

/// Stream events (`VIR_STREAM_EVENT_*`) as libvirt passes them.
const READABLE: i32 = sys::VIR_STREAM_EVENT_READABLE as i32;
const WRITABLE: i32 = sys::VIR_STREAM_EVENT_WRITABLE as i32;
const ERROR: i32 = sys::VIR_STREAM_EVENT_ERROR as i32;
const HANGUP: i32 = sys::VIR_STREAM_EVENT_HANGUP as i32;

/// What one non-blocking stream call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Io {
    /// Moved this many bytes.
    Done(usize),
    /// Nothing now; wait for an event.
    Again,
    /// The stream ended (the guest side closed it).
    Eof,
}

/// A console stream as the bridge drives it; every call returns at once.
pub(super) trait ConsoleStream {
    fn recv(&mut self, buf: &mut [u8]) -> Result<Io>;
    fn send(&mut self, buf: &[u8]) -> Result<Io>;
    /// Ask to be woken (through the [`Wake`]) for these `VIR_STREAM_EVENT_*`.
    fn want(&mut self, events: i32) -> Result<()>;
}

/// How a bridge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// The caller closed its end.
    CallerClosed,
    /// The stream ended: the guest's console went away (the VM stopped, or
    /// someone else took the console over).
    StreamClosed,
    /// [`Wake::stop`] was called.
    Stopped,
}

/// Wakes the bridge thread: an eventfd plus the stream events seen since
/// the thread last looked, and the stop flag.
pub(super) struct Wake {
    fd: OwnedFd,
    events: AtomicI32,
    stop: AtomicBool,
    /// Set by the bridge thread once it has finished.
    pub(super) done: AtomicBool,
}

impl Wake {
    pub(super) fn new() -> std::io::Result<Wake> {
        // SAFETY: plain eventfd creation; the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Wake {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: AtomicI32::new(0),
            stop: AtomicBool::new(false),
            done: AtomicBool::new(false),
        })
    }

    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full
        // counter (EAGAIN) already means "wake up".
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    /// Record stream events and wake the thread (the event callback).
    pub(super) fn signal(&self, events: i32) {
        self.events.fetch_or(events, Ordering::SeqCst);
        self.poke();
    }

    /// Make the bridge end soon (the VM stopped, the daemon is done).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.poke();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The events recorded since the last call, resetting the eventfd.
    fn take(&self) -> i32 {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; non-blocking.
        unsafe {
            libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8);
        }
        self.events.swap(0, Ordering::SeqCst)
    }
}

/// The stream events to wait for: readable while there is room for the
/// caller, writable while input waits for the guest, errors and hang-ups
/// until one was seen (libvirt repeats those as long as they are asked
/// for). Pure.
pub(super) fn stream_events(to_caller: usize, to_guest: usize, broken: bool) -> i32 {
    let mut ev = 0;
    if to_caller < BUFFER {
        ev |= READABLE;
    }
    if to_guest > 0 && !broken {
        ev |= WRITABLE;
    }
    if !broken {
        ev |= ERROR | HANGUP;
    }
    ev
}

/// The socket events to wait for: input only when the previous input has
/// gone to the guest (and the caller has not finished sending), output
/// while bytes wait for the caller. Hang-ups are always reported. Pure.
pub(super) fn socket_events(to_caller: usize, to_guest: usize, input_done: bool) -> i16 {
    let mut ev = 0;
    if to_guest == 0 && !input_done {
        ev |= libc::POLLIN;
    }
    if to_caller > 0 {
        ev |= libc::POLLOUT;
    }
    ev
}

/// One non-blocking read from the caller: `Ok(None)` nothing yet,
/// `Ok(Some(0))` the caller will send no more.
fn sock_read(sock: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: reads into a live buffer of `buf.len()` bytes.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

/// One non-blocking write to the caller (no SIGPIPE): `Ok(None)` no room.
fn sock_write(sock: BorrowedFd<'_>, buf: &[u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: reads from a live buffer of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

/// Whether a socket error means the caller has simply gone.
fn caller_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

/// Move bytes between `stream` and the caller's `sock` until one side
/// closes or `wake` is stopped. `Err` for a stream failure or a caller that
/// took nothing for [`IDLE_LIMIT`] while output waited.
pub(super) fn pump<S: ConsoleStream>(
    stream: &mut S,
    sock: BorrowedFd<'_>,
    wake: &Wake,
) -> Result<End> {
    pump_with_limit(stream, sock, wake, IDLE_LIMIT)
}

/// [`pump`] with the idle limit as a parameter (tests).
pub(super) fn pump_with_limit<S: ConsoleStream>(
    stream: &mut S,
    sock: BorrowedFd<'_>,
    wake: &Wake,
    limit: Duration,
) -> Result<End> {
    let mut buf = vec![0u8; BUFFER];
    let mut to_caller: Vec<u8> = Vec::with_capacity(BUFFER);
    let mut to_guest: Vec<u8> = Vec::new();
    let (mut input_done, mut broken, mut stream_eof) = (false, false, false);
    let mut wanted = None;
    let mut since = Instant::now();
    let never = AtomicBool::new(false);
    let sock_error = |e: std::io::Error| Error::Failed(format!("console socket: {e}"));
    loop {
        if wake.stopped() {
            return Ok(End::Stopped);
        }
        if wake.take() & (ERROR | HANGUP) != 0 {
            broken = true;
        }
        // Guest → caller.
        while !stream_eof && to_caller.len() < BUFFER {
            let room = BUFFER - to_caller.len();
            match stream.recv(&mut buf[..room])? {
                Io::Done(n) => to_caller.extend_from_slice(&buf[..n]),
                // After an error or hang-up nothing more will come.
                Io::Again if broken => stream_eof = true,
                Io::Again => break,
                Io::Eof => stream_eof = true,
            }
        }
        while !to_caller.is_empty() {
            match sock_write(sock, &to_caller) {
                Ok(Some(n)) => {
                    to_caller.drain(..n);
                    since = Instant::now();
                }
                Ok(None) => break,
                Err(e) if caller_gone(&e) => return Ok(End::CallerClosed),
                Err(e) => return Err(sock_error(e)),
            }
        }
        if stream_eof && to_caller.is_empty() {
            return Ok(End::StreamClosed);
        }
        // Caller → guest.
        if to_guest.is_empty() && !input_done {
            match sock_read(sock, &mut buf) {
                Ok(Some(0)) => input_done = true,
                Ok(Some(n)) => to_guest.extend_from_slice(&buf[..n]),
                Ok(None) => {}
                Err(e) if caller_gone(&e) => return Ok(End::CallerClosed),
                Err(e) => return Err(sock_error(e)),
            }
        }
        while !to_guest.is_empty() && !broken {
            match stream.send(&to_guest)? {
                Io::Done(n) => {
                    to_guest.drain(..n);
                    since = Instant::now();
                }
                Io::Again => break,
                Io::Eof => stream_eof = true,
            }
        }
        if broken {
            to_guest.clear();
        }
        let want = stream_events(to_caller.len(), to_guest.len(), broken);
        if wanted != Some(want) {
            stream.want(want)?;
            wanted = Some(want);
        }
        // Only a side that leaves bytes waiting is timed.
        let waiting = !to_caller.is_empty() || !to_guest.is_empty();
        if !waiting {
            since = Instant::now();
        }
        let mut fds = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: socket_events(to_caller.len(), to_guest.len(), input_done),
                revents: 0,
            },
            libc::pollfd {
                fd: wake.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let limit = if waiting { limit } else { Duration::MAX };
        let idle = "the console's other side took nothing";
        wait_any(&mut fds, &never, since, limit, idle)?;
        // Both directions closed: the caller closed its end. (A caller that
        // only stopped sending still gets the guest's output.)
        if fds[0].revents & libc::POLLHUP != 0 {
            return Ok(End::CallerClosed);
        }
    }
}

#[cfg(test)]
#[path = "console_bridge_tests.rs"]
mod tests;
