//! Tests of `console_bridge.rs`: the bridge loop against an in-memory
//! stream and a real socket pair.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use super::*;

/// What the fake guest holds: bytes for the caller, bytes it got, and
/// whether its side has ended or failed.
#[derive(Default)]
struct Guest {
    output: VecDeque<u8>,
    input: Vec<u8>,
    eof: bool,
    fail: bool,
    /// Take no input (as a stream whose buffers are full).
    full: bool,
    wanted: Vec<i32>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Guest>>);

impl ConsoleStream for Fake {
    fn recv(&mut self, buf: &mut [u8]) -> Result<Io> {
        let mut g = self.0.lock().unwrap();
        if g.fail {
            return Err(Error::Failed("stream broke".into()));
        }
        if g.output.is_empty() {
            return Ok(if g.eof { Io::Eof } else { Io::Again });
        }
        let n = buf.len().min(g.output.len());
        for (i, b) in g.output.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(Io::Done(n))
    }

    fn send(&mut self, buf: &[u8]) -> Result<Io> {
        let mut g = self.0.lock().unwrap();
        if g.full {
            return Ok(Io::Again);
        }
        g.input.extend_from_slice(buf);
        Ok(Io::Done(buf.len()))
    }

    fn want(&mut self, events: i32) -> Result<()> {
        self.0.lock().unwrap().wanted.push(events);
        Ok(())
    }
}

/// A bridge on its own thread: (the caller's end, the guest, the wake, the thread).
fn bridge(
    limit: Duration,
) -> (
    UnixStream,
    Fake,
    Arc<Wake>,
    std::thread::JoinHandle<Result<End>>,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fake = Fake::default();
    let wake = Arc::new(Wake::new().unwrap());
    let (mut f, w) = (fake.clone(), wake.clone());
    let t = std::thread::spawn(move || pump_with_limit(&mut f, ours.as_fd(), &w, limit));
    (theirs, fake, wake, t)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn bytes_flow_both_ways_and_closing_the_caller_end_ends_the_bridge() {
    let (mut caller, guest, wake, t) = bridge(IDLE_LIMIT);
    caller.write_all(b"root\r\n").unwrap();
    wait_for("input reaches the guest", || {
        guest.0.lock().unwrap().input == b"root\r\n"
    });
    guest.0.lock().unwrap().output.extend(b"login: ");
    wake.signal(READABLE);
    let mut got = [0u8; 7];
    caller.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"login: ");
    drop(caller);
    assert_eq!(t.join().unwrap().unwrap(), End::CallerClosed);
}

#[test]
fn the_guest_closing_ends_the_bridge_after_its_last_output() {
    let (mut caller, guest, wake, t) = bridge(IDLE_LIMIT);
    {
        let mut g = guest.0.lock().unwrap();
        g.output.extend(b"Power down.\r\n");
        g.eof = true;
    }
    wake.signal(HANGUP);
    assert_eq!(t.join().unwrap().unwrap(), End::StreamClosed);
    let mut rest = Vec::new();
    caller.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"Power down.\r\n");
}

#[test]
fn stopping_ends_a_quiet_bridge_at_once() {
    let (_caller, _guest, wake, t) = bridge(IDLE_LIMIT);
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    wake.stop();
    assert_eq!(t.join().unwrap().unwrap(), End::Stopped);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn a_stream_failure_ends_the_bridge_with_its_error() {
    let (_caller, guest, wake, t) = bridge(IDLE_LIMIT);
    guest.0.lock().unwrap().fail = true;
    wake.signal(ERROR);
    let e = t.join().unwrap().unwrap_err();
    assert_eq!(e, Error::Failed("stream broke".into()));
}

#[test]
fn a_caller_that_only_stops_sending_still_gets_output() {
    let (caller, guest, wake, t) = bridge(IDLE_LIMIT);
    caller.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    guest.0.lock().unwrap().output.extend(b"hello");
    wake.signal(READABLE);
    let mut got = [0u8; 5];
    (&caller).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    drop(caller);
    assert_eq!(t.join().unwrap().unwrap(), End::CallerClosed);
}

#[test]
fn input_the_guest_never_takes_times_out_but_a_quiet_console_does_not() {
    let limit = Duration::from_millis(300);
    let (mut caller, guest, _wake, t) = bridge(limit);
    // Quiet for longer than the limit: still open.
    std::thread::sleep(limit * 2);
    assert!(!t.is_finished(), "a quiet console must stay open");
    guest.0.lock().unwrap().full = true;
    caller.write_all(b"x").unwrap();
    let e = t.join().unwrap().unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e}");
}

#[test]
fn the_stream_is_read_only_while_the_caller_has_room() {
    assert_eq!(stream_events(0, 0, false), READABLE | ERROR | HANGUP);
    assert_eq!(stream_events(BUFFER, 0, false), ERROR | HANGUP);
    assert_eq!(
        stream_events(0, 3, false),
        READABLE | WRITABLE | ERROR | HANGUP
    );
    // Once broken, errors are not asked for again (libvirt repeats them).
    assert_eq!(stream_events(0, 3, true), READABLE);
}

#[test]
fn the_socket_is_read_only_when_earlier_input_is_delivered() {
    assert_eq!(socket_events(0, 0, false), libc::POLLIN);
    assert_eq!(socket_events(0, 1, false), 0);
    assert_eq!(socket_events(2, 0, false), libc::POLLIN | libc::POLLOUT);
    assert_eq!(socket_events(2, 0, true), libc::POLLOUT);
}
