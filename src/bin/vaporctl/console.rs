//! `vaporctl console VM`: the VM's serial console in this terminal, like
//! `virsh console` (Ctrl-] leaves). The terminal is put in raw mode and
//! restored on every way out (the escape, the console closing, an error, a
//! signal, a panic). When stdin is not a terminal the bytes are only
//! copied, both ways, so scripts can pipe; the end of stdin then ends only
//! the input, and the output goes on until the console closes.
//! `--socket KIND` prints the path of a console socket instead (what
//! Cockpit connects to).

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

use serde_json::json;

use crate::bus::Client;
use crate::Failure;

/// Ctrl-]: leaves the console, as in virsh and telnet.
pub const ESCAPE: u8 = 0x1d;

/// Where the escape character is in what was typed, if there. Pure.
pub fn escape_at(typed: &[u8]) -> Option<usize> {
    typed.iter().position(|&b| b == ESCAPE)
}

/// How an attached console session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The person typed the escape character.
    Escaped,
    /// The console closed (the VM stopped, someone took it over) or the
    /// terminal ended.
    Closed,
    /// A signal arrived (its number).
    Signalled(i32),
}

/// The exit status for a session's end: 0, or 128 + the signal. Pure.
pub fn outcome(end: &End) -> Result<(), Failure> {
    match end {
        End::Escaped | End::Closed => Ok(()),
        End::Signalled(sig) => Err(Failure::new(
            128u8.saturating_add(u8::try_from(*sig).unwrap_or(0)),
            format!("interrupted by signal {sig}"),
        )),
    }
}

pub async fn run(
    c: &Client,
    vm: &str,
    force: bool,
    socket: Option<&str>,
    json_out: bool,
) -> Result<(), Failure> {
    let p = c.vm(vm).await?;
    if let Some(kind) = socket {
        let path = p.get_console_socket(kind).await?;
        if json_out {
            println!("{}", json!({"vm": vm, "kind": kind, "path": path}));
        } else {
            println!("{path}");
        }
        return Ok(());
    }
    let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    if force {
        opts.insert("force", true.into());
    }
    let fd: OwnedFd = p.open_console(opts).await?.into();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Connected to the serial console of {vm} (escape character is ^])");
    }
    let end = tokio::task::spawn_blocking(move || attach(fd, interactive))
        .await
        .map_err(|e| Failure::new(1, format!("the console session failed: {e}")))??;
    if interactive && end == End::Closed {
        eprintln!("the console of {vm} closed");
    }
    outcome(&end)
}

/// The terminal in raw mode while this lives; its settings are put back
/// when it is dropped (also while unwinding from a panic).
struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    fn enter(fd: RawFd) -> std::io::Result<RawTerminal> {
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid fd and a live termios.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: a live termios, then a valid fd.
        unsafe { libc::cfmakeraw(&mut raw) };
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: the settings read from this terminal before.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Write end of the pipe the signal handler reports on (-1: none).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from the stack.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Signals that end a session the normal way (the terminal restored).
const ENDING_SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Route the ending signals to a pipe; returns its read end.
fn catch_signals() -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: plain pipe creation.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The write end lives as long as the process (the handler may run late).
    SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
    for sig in ENDING_SIGNALS {
        // SAFETY: installs a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: the read end was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fds[0]) })
}

fn io_failure(what: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::new(1, format!("{what}: {e}"))
}

/// Join the terminal (or stdin and stdout) to the console until one ends.
fn attach(console: OwnedFd, interactive: bool) -> Result<End, Failure> {
    let _raw = if interactive {
        Some(RawTerminal::enter(0).map_err(io_failure("cannot set up the terminal"))?)
    } else {
        None
    };
    let signals = if interactive {
        Some(catch_signals().map_err(io_failure("cannot watch for signals"))?)
    } else {
        None
    };
    copy(UnixStream::from(console), interactive, signals.as_ref())
}

fn copy(
    mut console: UnixStream,
    interactive: bool,
    signals: Option<&OwnedFd>,
) -> Result<End, Failure> {
    // SAFETY: stdin and stdout stay open for the whole process; never closed here.
    let mut stdin = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(0) });
    let mut stdout = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let mut buf = [0u8; 4096];
    let mut stdin_open = true;
    loop {
        let mut fds = vec![libc::pollfd {
            fd: console.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if stdin_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let Some(s) = signals {
            fds.push(libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: a valid array of pollfds on open descriptors.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_failure("cannot wait for the console")(e));
        }
        let ready = |fd: RawFd| fds.iter().any(|p| p.fd == fd && p.revents != 0);
        if let Some(s) = signals.filter(|s| ready(s.as_raw_fd())) {
            let mut sig = 0u8;
            // SAFETY: reads one byte into a live u8 from our own pipe.
            unsafe { libc::read(s.as_raw_fd(), (&mut sig as *mut u8).cast(), 1) };
            return Ok(End::Signalled(i32::from(sig)));
        }
        if ready(console.as_raw_fd()) {
            let n = match console.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                return Ok(End::Closed);
            }
            stdout
                .write_all(&buf[..n])
                .map_err(io_failure("cannot write the output"))?;
        }
        if stdin_open && ready(0) {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_failure("cannot read the input")(e)),
            };
            if n == 0 {
                if interactive {
                    return Ok(End::Closed);
                }
                // Nothing more to send; keep showing what the guest says.
                let _ = console.shutdown(std::net::Shutdown::Write);
                stdin_open = false;
                continue;
            }
            let typed = &buf[..n];
            let (send, escaped) = match escape_at(typed).filter(|_| interactive) {
                Some(i) => (&typed[..i], true),
                None => (typed, false),
            };
            if console.write_all(send).is_err() {
                return Ok(End::Closed);
            }
            if escaped {
                return Ok(End::Escaped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_close_bracket_is_the_escape() {
        assert_eq!(ESCAPE, b']' & 0x1f);
        assert_eq!(escape_at(b"ls\r"), None);
        assert_eq!(escape_at(b"ab\x1dcd"), Some(2));
        assert_eq!(escape_at(b"\x1d"), Some(0));
    }

    #[test]
    fn a_signal_exits_with_128_plus_its_number() {
        assert!(outcome(&End::Escaped).is_ok());
        assert!(outcome(&End::Closed).is_ok());
        let f = outcome(&End::Signalled(libc::SIGTERM)).unwrap_err();
        assert_eq!(f.code, 128 + 15);
        assert!(f.message.contains("signal 15"));
    }
}
