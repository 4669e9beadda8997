//! Running a program in a guest through its agent, past the agent's own
//! limits: input of any size (the agent takes about 64 KiB per message)
//! goes in through a file in a private directory, output of any size (one
//! agent reply holds about 3 MiB) comes back through files read in pieces,
//! and a program that outlives its timeout is killed (`timeout -s KILL`).
//! That needs a POSIX shell in the guest; in others (Windows) the agent
//! runs the program directly, with its own limits, and says so.

use std::time::{Duration, Instant};

use super::GuestService;
use crate::libvirt::agent::{ExecStatus, READ_CHUNK, WRITE_CHUNK};
use crate::libvirt::DomainRef;
use crate::{Error, Result};

/// Each agent command may take this long (seconds).
pub(super) const AGENT_TIMEOUT: i32 = 30;
/// The most argv may hold, in bytes (it travels in one agent message).
pub const MAX_ARGV_BYTES: usize = 48 * 1024;
/// The most input a caller may send (the system bus refuses messages over
/// 32 MiB anyway).
pub const MAX_INPUT: usize = 24 * 1024 * 1024;
/// The most output kept per stream, and its default: both streams travel
/// in one reply, which must stay under the system bus's 32 MiB (a larger
/// one would cost vapord its connection). Files go through WriteFile and
/// ReadFile instead.
pub const MAX_OUTPUT: usize = 12 * 1024 * 1024;
pub const DEFAULT_OUTPUT: usize = 8 * 1024 * 1024;
/// The longest a program may run, and its default.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The shell program that runs the caller's: `$1` the private directory,
/// `$2` the timeout in seconds, then argv. Input from `$1/in` when there
/// is one; output to `$1/out` and `$1/err`.
const WRAPPER: &str = r#"d=$1; t=$2; shift 2
if [ -e "$d/in" ]; then exec <"$d/in"; fi
if ! command -v timeout >/dev/null 2>&1; then
  echo "vapor-exec: no timeout command" >"$d/err"; exit 98
fi
exec timeout -s KILL "$t" "$@" >"$d/out" 2>"$d/err""#;

/// What the wrapper says when the guest cannot bound a program's time.
const NO_TIMEOUT: &[u8] = b"vapor-exec: no timeout command\n";

/// What a caller asks to run.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub input: Vec<u8>,
    /// Zero: [`DEFAULT_TIMEOUT`].
    pub timeout: Duration,
    /// Zero: [`DEFAULT_OUTPUT`].
    pub max_output: usize,
    /// Cut output beyond `max_output` instead of failing.
    pub truncate: bool,
    /// Whose it is: each caller has a share of the slots.
    pub caller: u32,
}

/// How it went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The exit code, or 128 + the signal that ended it.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecRequest {
    /// Check a caller's request, naming the field at fault, and fill in
    /// the defaults. Pure.
    pub fn checked(mut self) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.argv.first().is_none_or(|a| a.is_empty()) {
            return bad("argv: the program to run is missing".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return bad("argv: an argument contains a NUL byte".into());
        }
        let size: usize = self.argv.iter().map(|a| a.len() + 1).sum();
        if size > MAX_ARGV_BYTES {
            return bad(format!(
                "argv: {size} bytes, more than {MAX_ARGV_BYTES}; pass data as input"
            ));
        }
        if self.input.len() > MAX_INPUT {
            return Err(Error::LimitExceeded(format!(
                "input: {} bytes, more than {MAX_INPUT}",
                self.input.len()
            )));
        }
        if self.timeout.is_zero() {
            self.timeout = DEFAULT_TIMEOUT;
        }
        if self.timeout > MAX_TIMEOUT {
            return bad(format!(
                "timeout: at most {} seconds",
                MAX_TIMEOUT.as_secs()
            ));
        }
        if self.max_output == 0 {
            self.max_output = DEFAULT_OUTPUT;
        }
        if self.max_output > MAX_OUTPUT {
            return bad(format!("max_output: at most {MAX_OUTPUT} bytes"));
        }
        Ok(self)
    }
}

/// Output kept within `max`: cut with `truncate`, else refused naming
/// the stream. Pure.
pub fn within(
    stream: &str,
    mut data: Vec<u8>,
    more: bool,
    max: usize,
    truncate: bool,
) -> Result<Vec<u8>> {
    if data.len() > max || more {
        if !truncate {
            return Err(Error::LimitExceeded(format!(
                "{stream}: the program wrote more than max_output ({max} bytes); \
                 raise max_output, or set truncate to keep the first {max} bytes"
            )));
        }
        data.truncate(max);
    }
    Ok(data)
}

/// A new private directory name in the guest. Pure but for randomness.
fn private_dir() -> String {
    format!("/tmp/vapor-exec.{}", uuid::Uuid::new_v4().simple())
}

/// Wait for a program the agent started to end, at most until `deadline`.
fn wait_exit(d: &DomainRef, pid: i64, deadline: Instant) -> Result<ExecStatus> {
    let mut pause = Duration::from_millis(20);
    loop {
        let st = d.guest_exec_status(pid, AGENT_TIMEOUT)?;
        if st.exited {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "the program (pid {pid} in the guest) is still running"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Run a short helper (mkdir, rm, a small script) to its end (at most
/// `limit`), its output captured by the agent.
pub(super) fn run_small(d: &DomainRef, argv: &[&str], limit: Duration) -> Result<ExecStatus> {
    let args: Vec<String> = argv[1..].iter().map(|s| s.to_string()).collect();
    let pid = d.guest_exec(argv[0], &args, &[], true, AGENT_TIMEOUT)?;
    wait_exit(d, pid, Instant::now() + limit)
}

/// How long a helper may take.
pub(super) const HELPER_LIMIT: Duration = Duration::from_secs(120);

/// [`run_small`]'s exit code.
fn helper(d: &DomainRef, argv: &[&str]) -> Result<i32> {
    Ok(run_small(d, argv, HELPER_LIMIT)?.code)
}

/// Read a guest file whole, at most `max` bytes; (bytes, more was there).
fn read_all(d: &DomainRef, path: &str, max: usize) -> Result<(Vec<u8>, bool)> {
    let h = d.guest_file_open(path, "r", AGENT_TIMEOUT)?;
    let mut out = Vec::new();
    let r = (|| loop {
        let (chunk, eof) = d.guest_file_read(h, READ_CHUNK, AGENT_TIMEOUT)?;
        out.extend_from_slice(&chunk);
        if out.len() > max {
            return Ok(true);
        }
        if eof || chunk.is_empty() {
            return Ok(false);
        }
    })();
    let _ = d.guest_file_close(h, AGENT_TIMEOUT);
    let more = r?;
    Ok((out, more))
}

/// Write `data` into a new guest file, in pieces the agent accepts.
fn write_all(d: &DomainRef, path: &str, data: &[u8]) -> Result<()> {
    let h = d.guest_file_open(path, "w", AGENT_TIMEOUT)?;
    let r = data
        .chunks(WRITE_CHUNK)
        .try_for_each(|c| d.guest_file_write(h, c, AGENT_TIMEOUT));
    let closed = d.guest_file_close(h, AGENT_TIMEOUT);
    r.and(closed)
}

/// Run `req` through the POSIX wrapper (see the module).
fn run_posix(d: &DomainRef, req: &ExecRequest) -> Result<ExecOutput> {
    let dir = private_dir();
    if helper(d, &["/bin/mkdir", "-m", "0700", &dir])? != 0 {
        return Err(Error::Failed(format!(
            "cannot make the private directory {dir} in the guest"
        )));
    }
    let r = (|| {
        if !req.input.is_empty() {
            write_all(d, &format!("{dir}/in"), &req.input)?;
        }
        let mut args = vec![
            "-c".to_owned(),
            WRAPPER.to_owned(),
            "vapor-exec".to_owned(),
            dir.clone(),
            req.timeout.as_secs().to_string(),
        ];
        args.extend(req.argv.iter().cloned());
        let started = Instant::now();
        let pid = d.guest_exec("/bin/sh", &args, &[], false, AGENT_TIMEOUT)?;
        // The wrapper kills the program at its timeout; a little more for
        // the agent to notice.
        let st = wait_exit(d, pid, started + req.timeout + Duration::from_secs(10))?;
        if st.code == 98 {
            let (err, _) = read_all(d, &format!("{dir}/err"), NO_TIMEOUT.len())?;
            if err == NO_TIMEOUT {
                return Err(Error::NotSupported(
                    "timeout: the guest has no timeout command (coreutils or busybox), so a \
                     program could not be stopped in time; nothing was run"
                        .into(),
                ));
            }
        }
        if st.code == 137 && started.elapsed() >= req.timeout {
            return Err(Error::Timeout(format!(
                "timeout: the program ran longer than {} s and was killed",
                req.timeout.as_secs()
            )));
        }
        let (stdout, more_out) = read_all(d, &format!("{dir}/out"), req.max_output)?;
        let (stderr, more_err) = read_all(d, &format!("{dir}/err"), req.max_output)?;
        Ok(ExecOutput {
            code: st.code,
            stdout: within("stdout", stdout, more_out, req.max_output, req.truncate)?,
            stderr: within("stderr", stderr, more_err, req.max_output, req.truncate)?,
        })
    })();
    let _ = helper(d, &["/bin/rm", "-rf", &dir]);
    r
}

/// Run `req` directly under the agent (no shell in the guest).
fn run_direct(d: &DomainRef, req: &ExecRequest) -> Result<ExecOutput> {
    if req.input.len() > WRITE_CHUNK {
        return Err(Error::NotSupported(format!(
            "input: this guest has no POSIX shell, so input goes in one agent message: \
             at most {WRITE_CHUNK} bytes"
        )));
    }
    let pid = d.guest_exec(
        &req.argv[0],
        &req.argv[1..],
        &req.input,
        true,
        AGENT_TIMEOUT,
    )?;
    let st = wait_exit(d, pid, Instant::now() + req.timeout).map_err(|e| match e {
        Error::Timeout(_) => Error::Timeout(format!(
            "timeout: the program ran longer than {} s (the agent cannot stop it)",
            req.timeout.as_secs()
        )),
        e => e,
    })?;
    Ok(ExecOutput {
        code: st.code,
        stdout: within(
            "stdout",
            st.stdout,
            st.out_truncated,
            req.max_output,
            req.truncate,
        )?,
        stderr: within(
            "stderr",
            st.stderr,
            st.err_truncated,
            req.max_output,
            req.truncate,
        )?,
    })
}

impl GuestService {
    /// Whether the guest is Windows (no POSIX shell), as its agent says
    /// (asked first when it has not said yet); the agent must be there.
    pub(super) async fn windows(&self, uuid: &str) -> Result<bool> {
        self.need_agent(uuid)?;
        if self.model.get(uuid).is_some_and(|r| r.guest_info.is_none()) {
            let _ = self.refresh_info(uuid).await;
        }
        Ok(self
            .model
            .get(uuid)
            .and_then(|r| r.guest_info.clone())
            .is_some_and(|g| g.os_id.eq_ignore_ascii_case("mswindows")))
    }

    /// Refuse guests without a POSIX shell (what file transfers need).
    pub(super) async fn need_posix(&self, uuid: &str) -> Result<()> {
        if self.windows(uuid).await? {
            return Err(Error::NotSupported(
                "this guest has no POSIX shell: vapord moves files only into guests that have one"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Run a program in the guest (see the module).
    pub async fn exec(&self, uuid: &str, req: ExecRequest) -> Result<ExecOutput> {
        let req = req.checked()?;
        let windows = self.windows(uuid).await?;
        // Each holds a daemon thread until the program ends.
        let _slot = self.transfers.take(req.caller)?;
        self.hv()
            .on_domain(uuid, move |_, d| {
                if windows {
                    run_direct(d, &req)
                } else {
                    run_posix(d, &req)
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = req(&["uname", "-a"]).checked().unwrap();
        assert_eq!(ok.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ok.max_output, DEFAULT_OUTPUT);
        let err = |r: ExecRequest| r.checked().unwrap_err().to_string();
        assert!(err(req(&[])).starts_with("argv:"));
        assert!(err(req(&[""])).starts_with("argv:"));
        assert!(err(req(&["a\0b"])).contains("NUL"));
        let long = "x".repeat(MAX_ARGV_BYTES);
        assert!(err(req(&["echo", &long])).contains("pass data as input"));
        let mut r = req(&["cat"]);
        r.timeout = MAX_TIMEOUT + Duration::from_secs(1);
        assert!(err(r).starts_with("timeout:"));
        let mut r = req(&["cat"]);
        r.max_output = MAX_OUTPUT + 1;
        assert!(err(r).starts_with("max_output:"));
        let mut r = req(&["cat"]);
        r.input = vec![0; MAX_INPUT + 1];
        assert!(err(r).starts_with("input:"));
    }

    #[test]
    fn output_beyond_the_limit_is_refused_or_cut_when_asked() {
        assert_eq!(
            within("stdout", b"abc".to_vec(), false, 3, false).unwrap(),
            b"abc"
        );
        let e = within("stdout", b"abcd".to_vec(), false, 3, false).unwrap_err();
        assert!(e.to_string().starts_with("stdout:"), "{e}");
        assert!(within("stderr", b"ab".to_vec(), true, 3, false).is_err());
        assert_eq!(
            within("stdout", b"abcd".to_vec(), true, 3, true).unwrap(),
            b"abc"
        );
    }
}
