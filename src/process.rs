//! Running an external program with a bound on time and output.
//!
//! Every program vapord runs goes through [`run`]: no stdin, its own process
//! group, stdout and stderr each kept up to [`OUTPUT_CAP`] bytes, and a
//! timeout after which the whole group is killed. Whether the program
//! succeeded (its exit status) is for the caller to judge.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How much of each of stdout and stderr is kept; the rest is read and dropped.
pub const OUTPUT_CAP: usize = 1 << 20;

/// How long the output pipes may stay open once the program is killed.
const GRACE: Duration = Duration::from_millis(500);

/// Where programs are looked for when the environment has no `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `cmd` to completion or until `timeout`, and returns its output.
///
/// The program gets stdin from `/dev/null` and a process group of its own
/// (whatever `cmd` says about either). Both output pipes are read while it
/// runs, each kept up to [`OUTPUT_CAP`] bytes. When it exits, anything it
/// left running in its group is killed; when it does not exit in time, the
/// whole group is killed (SIGKILL) and reaped and the result is
/// [`Error::Timeout`] (`what` says what was being done). A program that
/// cannot be started is [`Error::Failed`], naming it. A non-zero exit is not
/// an error here.
pub fn run(cmd: Command, timeout: Duration, what: &str) -> Result<Output> {
    run_watched(cmd, timeout, what, &Watch::default())
}

/// Told each piece of a program's output as it comes.
pub type OutputSeen = std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>;

/// What [`run_watched`] tells about a program while it runs, and asks.
#[derive(Clone, Default)]
pub struct Watch {
    /// Each piece of stdout as it comes (it is still kept as [`run`] keeps it).
    pub stdout: Option<OutputSeen>,
    /// Asked every few milliseconds: true stops the program (its group is
    /// killed, and the result is [`Error::Failed`] saying it was cancelled).
    pub stop: Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>,
}

/// [`run`], with `watch` seeing stdout as it comes and able to stop it.
pub fn run_watched(
    mut cmd: Command,
    timeout: Duration,
    what: &str,
    watch: &Watch,
) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Failed(format!("{what}: cannot run {program}: {e}")))?;
    let start = Instant::now();
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(u64::from(u32::MAX)));
    let pid = child.id() as libc::pid_t;

    let (tx, rx) = mpsc::channel();
    let readers = read_capped(
        child.stdout.take(),
        Stream::Out,
        tx.clone(),
        watch.stdout.clone(),
    )
    .and_then(|()| read_capped(child.stderr.take(), Stream::Err, tx, None));
    let ended = match readers {
        Ok(()) => wait_exit(pid, deadline, watch.stop.as_deref()),
        Err(_) => Ended::TimedOut, // kill it: its output cannot be read
    };
    // The child is not reaped yet, so its pid still names its group: after a
    // timeout this kills the program, after an exit whatever it left behind.
    if ended != Ended::Reaped {
        kill_group(pid);
    }
    let status = child
        .wait()
        .map_err(|e| Error::Failed(format!("{what}: cannot wait for {program}: {e}")))?;
    if let Err(e) = readers {
        return Err(Error::Failed(format!(
            "{what}: cannot read the output of {program}: {e}"
        )));
    }

    let secs = timeout.as_secs_f64();
    let until = match ended {
        Ended::TimedOut | Ended::Stopped => Instant::now() + GRACE,
        _ => deadline.max(Instant::now() + GRACE),
    };
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((Stream::Out, bytes)) => stdout = Some(bytes),
            Ok((Stream::Err, bytes)) => stderr = Some(bytes),
            Err(_) => break,
        }
    }
    if ended == Ended::Stopped {
        return Err(Error::Failed(format!("{what}: cancelled")));
    }
    if ended == Ended::TimedOut {
        return Err(Error::Timeout(format!(
            "{what}: did not finish within {secs} s and was stopped"
        )));
    }
    match (stdout, stderr) {
        (Some(stdout), Some(stderr)) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        // A process that left the group holds the output open.
        _ => Err(Error::Timeout(format!(
            "{what}: {program} exited, but its output was still open after {secs} s"
        ))),
    }
}

/// The absolute path of `name` in `PATH` (absolute entries only), or `name`
/// itself when it contains a `/`, if it is an executable file.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let executable = |p: &PathBuf| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(executable);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(executable)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

/// Reads `pipe` to its end on a thread of its own, keeping up to
/// [`OUTPUT_CAP`] bytes, and sends them on `tx`.
fn read_capped(
    pipe: Option<impl Read + Send + 'static>,
    which: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
    seen: Option<OutputSeen>,
) -> io::Result<()> {
    let Some(mut pipe) = pipe else {
        let _ = tx.send((which, Vec::new()));
        return Ok(());
    };
    std::thread::Builder::new()
        .name("vapord-output".to_owned())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(f) = &seen {
                            f(&buf[..n]);
                        }
                        let room = OUTPUT_CAP - kept.len();
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send((which, kept));
        })
        .map(drop)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Exited, and still a zombie (its pid and group id stay reserved).
    Exited,
    /// Reaped by someone else: its pid may name another process by now.
    Reaped,
    TimedOut,
    /// Its watcher asked it to stop.
    Stopped,
}

/// Waits for `pid` to exit, without reaping it, until `deadline` or until
/// `stop` says so.
fn wait_exit(
    pid: libc::pid_t,
    deadline: Instant,
    stop: Option<&(dyn Fn() -> bool + Send + Sync)>,
) -> Ended {
    let mut nap = Duration::from_millis(1);
    loop {
        // SAFETY: waitid fills the zeroed siginfo_t it is given.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == 0 {
            // SAFETY: waitid succeeded; si_pid is 0 when nothing has exited.
            if unsafe { info.si_pid() } != 0 {
                return Ended::Exited;
            }
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Ended::Reaped;
        }
        let now = Instant::now();
        if now >= deadline {
            return Ended::TimedOut;
        }
        if stop.is_some_and(|f| f()) {
            return Ended::Stopped;
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// SIGKILL to the process group `pid` leads, and to `pid` itself (in case it
/// moved to another group).
fn kill_group(pid: libc::pid_t) {
    // SAFETY: plain syscalls; the caller has not reaped `pid`, so neither the
    // pid nor the group id can have been reused.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    /// Whether `pid` is gone (or only a zombie nobody has reaped yet),
    /// waiting up to two seconds.
    fn gone(pid: i32) -> bool {
        for _ in 0..200 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                    if state.starts_with('Z') || state.starts_with('X') {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn read_pid(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn returns_output_and_status() {
        let out = run(
            sh("echo hello; echo oops >&2; exit 3"),
            Duration::from_secs(10),
            "testing",
        )
        .unwrap();
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_watcher_sees_stdout_as_it_comes_and_can_stop_the_program() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let script = format!("echo $$ > {}; echo half; exec sleep 30", pidfile.display());
        let seen = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (seen.clone(), seen.clone());
        let watch = Watch {
            stdout: Some(Arc::new(move |b: &[u8]| {
                if String::from_utf8_lossy(b).contains("half") {
                    s1.store(true, Ordering::SeqCst);
                }
            })),
            // Stopped only once the output was seen: it came while the
            // program ran, not after.
            stop: Some(Arc::new(move || s2.load(Ordering::SeqCst))),
        };
        let err =
            run_watched(sh(&script), Duration::from_secs(60), "watching", &watch).unwrap_err();
        assert_eq!(err, Error::Failed("watching: cancelled".into()));
        assert!(gone(read_pid(&pidfile)), "the program still runs");
    }

    #[test]
    fn stdin_is_empty() {
        let out = run(sh("cat; echo end"), Duration::from_secs(10), "testing").unwrap();
        assert_eq!(out.stdout, b"end\n");
    }

    #[test]
    fn a_program_past_its_timeout_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let start = Instant::now();
        let err = run(sh(&script), Duration::from_millis(200), "sleeping").unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            err,
            Error::Timeout("sleeping: did not finish within 0.2 s and was stopped".into())
        );
        let pid = read_pid(&pidfile);
        // Reaped by run: the pid no longer exists.
        // SAFETY: signal 0 only checks for existence.
        let r = unsafe { libc::kill(pid, 0) };
        assert_eq!(r, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn a_grandchild_holding_the_pipes_does_not_hold_up_the_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display());
        let start = Instant::now();
        let err = run(sh(&script), Duration::from_millis(300), "sleeping").unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(matches!(err, Error::Timeout(_)), "{err:?}");
        assert!(gone(read_pid(&pidfile)), "the grandchild still runs");
    }

    #[test]
    fn what_a_finished_program_left_running_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; echo done", pidfile.display());
        let start = Instant::now();
        let out = run(sh(&script), Duration::from_secs(20), "testing").unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(out.stdout, b"done\n");
        assert!(out.status.success());
        assert!(gone(read_pid(&pidfile)), "the background sleep still runs");
    }

    #[test]
    fn output_is_capped() {
        let out = run(
            sh("head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2; echo fine"),
            Duration::from_secs(20),
            "testing",
        )
        .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), OUTPUT_CAP);
        assert_eq!(out.stderr.len(), OUTPUT_CAP);
    }

    #[test]
    fn a_program_that_cannot_start_is_named() {
        let err = run(
            Command::new("/nonexistent/vapord-test-program"),
            Duration::from_secs(1),
            "testing",
        )
        .unwrap_err();
        match err {
            Error::Failed(m) => assert!(
                m.starts_with("testing: cannot run /nonexistent/vapord-test-program:"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_programs_in_path() {
        let sh = find_program("sh").expect("sh in PATH");
        assert!(sh.is_absolute());
        assert_eq!(find_program(sh.to_str().unwrap()), Some(sh));
        assert_eq!(find_program("vapord-no-such-program"), None);
        assert_eq!(find_program("/nonexistent/sh"), None);
    }
}
