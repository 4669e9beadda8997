//! Files into and out of a guest through its agent, of any size: written
//! in pieces the agent takes (48 KiB) to a private temporary name beside
//! the destination, checked by sha256 inside the guest, given its mode
//! and owner, then renamed over the destination (a reader never sees half a
//! file, a failure leaves the old one); read back in 1 MiB pieces (libvirt
//! replies stop near 4 MiB). The caller's side is a file descriptor it
//! passes (vapord never opens a caller's path), read and written without
//! ever blocking on a pipe the caller stopped serving.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use std::time::Duration;

use super::exec::{run_small, AGENT_TIMEOUT, HELPER_LIMIT};
use super::GuestService;
use crate::libvirt::agent::{READ_CHUNK, WRITE_CHUNK};
use crate::libvirt::stream::CallerIo;
use crate::libvirt::DomainRef;
use crate::progress::Progress;
use crate::{Error, Result};

/// Where the bytes of a write come from.
pub enum Source {
    /// A caller's descriptor, read from where it stands (a pipe too).
    Caller(std::fs::File),
    /// A regular file vapord holds, read from its start with `pread` (its
    /// offset untouched), so several writes may read it at once; exactly
    /// its size when it was looked at (a file that grew since is a
    /// Conflict, not copied on and on).
    Shared(Arc<std::fs::File>, u64),
}

/// A [`Source`] being read.
enum Reading {
    Caller(CallerIo),
    /// The file, where the next read starts, where it must end.
    Shared(Arc<std::fs::File>, u64, u64),
}

impl Reading {
    fn read_some(&mut self, buf: &mut [u8], cancel: &AtomicBool) -> Result<usize> {
        match self {
            Reading::Caller(io) => io.read_some(buf, cancel),
            Reading::Shared(f, at, end) => {
                use std::os::unix::fs::FileExt;
                let left = usize::try_from(*end - *at).unwrap_or(usize::MAX);
                let want = buf.len().min(left);
                // At the end: one byte more would mean it grew.
                let probe = if want == 0 { 1 } else { want };
                let n = f
                    .read_at(&mut buf[..probe], *at)
                    .map_err(|e| Error::Failed(format!("cannot read the source: {e}")))?;
                if want == 0 && n > 0 {
                    return Err(Error::Conflict(
                        "the source grew while it was copied; nothing was put in place".into(),
                    ));
                }
                *at += n as u64;
                Ok(n)
            }
        }
    }
}

/// What a caller asks of a write.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub path: String,
    /// Octal permission bits; default 0644.
    pub mode: u32,
    /// `user[:group]` in the guest; default: root's.
    pub owner: Option<String>,
    /// Replace an existing file (default); else Conflict.
    pub overwrite: bool,
    /// The sha256 the bytes must have: when what was read differs (the
    /// source changed), the file is not put in place (Conflict).
    pub expect_sha256: Option<String>,
    /// Whose it is: each caller has a share of the slots.
    pub caller: u32,
}

/// A path in the guest as a caller gives it: absolute, at most 4096
/// bytes, no NUL or control characters, naming a file (not ending in `/`).
/// Pure.
pub fn check_guest_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "guest_path: '{}' {why}",
            crate::text::for_bus(path)
        )))
    };
    if !path.starts_with('/') {
        return bad("is not an absolute path");
    }
    if path.len() > 4096 || path.chars().any(char::is_control) {
        return bad("is longer than 4096 bytes or holds control characters");
    }
    if path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..") {
        return bad("names a directory, not a file");
    }
    Ok(())
}

/// An owner as `chown` takes it: `user` or `user:group`, each a name or a
/// number of letters, digits, `_`, `.` and `-` (not starting with `-`).
/// Pure.
pub fn check_owner(owner: &str) -> Result<()> {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && !p.starts_with('-')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let ok = match owner.split_once(':') {
        Some((u, g)) => part(u) && part(g),
        None => part(owner),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "owner: '{}' is not user or user:group",
            crate::text::for_bus(owner)
        )))
    }
}

/// The temporary name a write goes to, beside `path`. Pure but for
/// randomness.
fn temp_path(path: &str) -> String {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{dir}/.{name}.vapor-{}", &tag[..12])
}

/// Before a write: the destination's directory exists and is root's alone
/// (or sticky, as /tmp: else someone there could swap the temporary file
/// for a link between two steps and have root write or chown whatever it
/// points at), the destination is no directory and (unless overwriting)
/// does not exist; the temporary file is made new (never through an
/// existing name), 0600. `$1` temporary, `$2` destination, `$3` overwrite.
const PREPARE: &str = r#"t=$1; d=$2
p=$(dirname -- "$d")
[ -d "$p" ] || { echo "the directory $p does not exist" >&2; exit 92; }
set -- "$t" "$d" "$3" $(stat -L -c '%u %a' -- "$p")
perm=$((0$5))
[ "$4" = 0 ] && { [ $((perm & 18)) = 0 ] || [ $((perm & 512)) != 0 ]; } ||
  { echo "the directory $p may be written by others than root" >&2; exit 97; }
[ ! -d "$d" ] || { echo "$d is a directory" >&2; exit 93; }
[ "$3" = 1 ] || [ ! -e "$d" ] || { echo "$d exists" >&2; exit 91; }
set -C; umask 077; : > "$t""#;

/// After a write: the sha256 checked, mode and owner set, the file renamed
/// into place (`$1` temporary, `$2` destination, `$3` sha256, `$4` mode,
/// `$5` owner or empty, `$6` overwrite); the temporary file gone on any
/// failure. The owner first: chown clears setuid and setgid bits.
const FINISH: &str = r#"t=$1; d=$2
fail() { rm -f -- "$t"; echo "$2" >&2; exit "$1"; }
[ -f "$t" ] && [ ! -L "$t" ] || fail 90 "the temporary file was replaced"
got=$(sha256sum -- "$t" | cut -d' ' -f1)
[ "$got" = "$3" ] || fail 90 "sha256 in the guest is $got"
[ -z "$5" ] || chown -h -- "$5" "$t" || fail 95 "chown $5 failed"
chmod "$4" -- "$t" || fail 94 "chmod $4 failed"
if [ "$6" = 1 ]; then mv -f -- "$t" "$d" || fail 96 "cannot rename into $d"
else [ ! -e "$d" ] || fail 91 "$d exists"; mv -- "$t" "$d" || fail 96 "cannot rename into $d"; fi"#;

/// A script's failure as a typed error naming `guest_path`.
fn script_error(code: i32, stderr: &[u8], path: &str) -> Error {
    let why = crate::text::for_bus(String::from_utf8_lossy(stderr).trim()).into_owned();
    let path = crate::text::for_bus(path).into_owned();
    match code {
        91 => Error::Conflict(format!(
            "guest_path: {path} exists in the guest (set overwrite to replace it)"
        )),
        92 => Error::NotFound(format!("guest_path: {why}")),
        93 => Error::InvalidArgument(format!("guest_path: {path} is a directory in the guest")),
        97 => Error::InvalidArgument(format!("guest_path: {why}; write it elsewhere")),
        90 => Error::Failed(format!(
            "the file written to the guest does not match what was sent ({why}); nothing was replaced"
        )),
        94 => Error::InvalidArgument(format!("mode: {why}")),
        95 => Error::InvalidArgument(format!("owner: {why}")),
        _ => Error::Failed(format!("guest_path: {why} (exit {code})")),
    }
}

fn run_script(
    d: &DomainRef,
    script: &str,
    args: &[&str],
    path: &str,
    limit: Duration,
) -> Result<()> {
    let mut argv = vec!["/bin/sh", "-c", script, "vapor-file"];
    argv.extend_from_slice(args);
    let st = run_small(d, &argv, limit)?;
    if st.code != 0 {
        return Err(script_error(st.code, &st.stderr, path));
    }
    Ok(())
}

/// The blocking part of a write: (bytes, sha256).
fn write_blocking(
    d: &DomainRef,
    req: &WriteRequest,
    src: Source,
    total: u64,
    progress: &Arc<dyn Progress>,
    cancel: &AtomicBool,
) -> Result<(u64, String)> {
    let temp = temp_path(&req.path);
    let overwrite = if req.overwrite { "1" } else { "0" };
    run_script(
        d,
        PREPARE,
        &[&temp, &req.path, overwrite],
        &req.path,
        HELPER_LIMIT,
    )?;
    let copied = (|| {
        let h = d.guest_file_open(&temp, "w", AGENT_TIMEOUT)?;
        let mut src = match src {
            Source::Caller(f) => Reading::Caller(CallerIo::new(f)),
            Source::Shared(f, size) => Reading::Shared(f, 0, size),
        };
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; WRITE_CHUNK];
        let mut done = 0u64;
        let r = loop {
            if progress.cancelled() {
                break Err(Error::Failed("the write was cancelled".into()));
            }
            // Fill a whole piece (a pipe gives what it has).
            let mut n = 0;
            let mut failed = None;
            while n < buf.len() {
                match src.read_some(&mut buf[n..], cancel) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if n == 0 {
                break Ok(());
            }
            if let Err(e) = d.guest_file_write(h, &buf[..n], AGENT_TIMEOUT) {
                break Err(e);
            }
            hash.update(&buf[..n]);
            done += n as u64;
            progress.update("writing into the guest", done, total.max(done));
        };
        let closed = d.guest_file_close(h, AGENT_TIMEOUT);
        r.and(closed)?;
        let sha = format!("{:x}", hash.finalize());
        match &req.expect_sha256 {
            Some(want) if *want != sha => Err(Error::Conflict(format!(
                "the source changed while it was read (sha256 {sha}, not {want}); {} was left as it was",
                req.path
            ))),
            _ => Ok((done, sha)),
        }
    })();
    let (done, sha) = match copied {
        Ok(v) => v,
        Err(e) => {
            let _ = run_small(d, &["/bin/rm", "-f", "--", &temp], HELPER_LIMIT);
            return Err(e);
        }
    };
    progress.update("checking in the guest", done, done);
    let mode = format!("{:o}", req.mode);
    let owner = req.owner.clone().unwrap_or_default();
    // sha256sum inside the guest reads it all again: time for that too.
    let limit = HELPER_LIMIT + Duration::from_secs(done / (10 * 1024 * 1024));
    let finished = run_script(
        d,
        FINISH,
        &[&temp, &req.path, &sha, &mode, &owner, overwrite],
        &req.path,
        limit,
    );
    if let Err(e) = finished {
        // The script removes it on its own failures, not on the agent's.
        let _ = run_small(d, &["/bin/rm", "-f", "--", &temp], HELPER_LIMIT);
        return Err(e);
    }
    Ok((done, sha))
}

/// The blocking part of a read: (bytes, sha256).
fn read_blocking(
    d: &DomainRef,
    path: &str,
    dst: std::fs::File,
    progress: &Arc<dyn Progress>,
    cancel: &AtomicBool,
) -> Result<(u64, String)> {
    let size = run_small(d, &["stat", "-L", "-c", "%s", "--", path], HELPER_LIMIT)?;
    if size.code != 0 {
        let why = String::from_utf8_lossy(&size.stderr);
        let why = crate::text::for_bus(why.trim()).into_owned();
        return Err(if why.contains("No such file") {
            Error::NotFound(format!("guest_path: {why}"))
        } else {
            Error::Failed(format!("guest_path: {why}"))
        });
    }
    let total: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let h = d.guest_file_open(path, "r", AGENT_TIMEOUT)?;
    let mut dst = CallerIo::new(dst);
    let mut hash = Sha256::new();
    let mut done = 0u64;
    let r = loop {
        if progress.cancelled() {
            break Err(Error::Failed("the read was cancelled".into()));
        }
        let (chunk, eof) = match d.guest_file_read(h, READ_CHUNK, AGENT_TIMEOUT) {
            Ok(v) => v,
            Err(e) => break Err(e),
        };
        if let Err(e) = dst.write_all_of(&chunk, cancel) {
            break Err(e);
        }
        hash.update(&chunk);
        done += chunk.len() as u64;
        progress.update("reading from the guest", done, total.max(done));
        if eof || chunk.is_empty() {
            break Ok(());
        }
    };
    let closed = d.guest_file_close(h, AGENT_TIMEOUT);
    r.and(closed)?;
    Ok((done, format!("{:x}", hash.finalize())))
}

impl GuestService {
    /// Write what `src` holds to `req.path` in the guest (see the module);
    /// `total` sizes the progress (0: unknown). (bytes, sha256).
    pub async fn write_file(
        &self,
        uuid: &str,
        req: WriteRequest,
        src: Source,
        total: u64,
        progress: Arc<dyn Progress>,
    ) -> Result<(u64, String)> {
        check_guest_path(&req.path)?;
        if let Some(o) = &req.owner {
            check_owner(o)?;
        }
        if req.mode > 0o7777 {
            return Err(Error::InvalidArgument(format!(
                "mode: {:o} is not a file mode (at most 7777)",
                req.mode
            )));
        }
        self.need_posix(uuid).await?;
        let _slot = self.transfers.take(req.caller)?;
        let (_report, cancel) =
            super::super::storage_transfers::bridge(progress.clone(), "writing", total);
        self.hv()
            .on_domain(uuid, move |_, d| {
                write_blocking(d, &req, src, total, &progress, &cancel)
            })
            .await
    }

    /// Copy `path` from the guest into `dst`. (bytes, sha256).
    pub async fn read_file(
        &self,
        uuid: &str,
        path: String,
        dst: std::fs::File,
        caller: u32,
        progress: Arc<dyn Progress>,
    ) -> Result<(u64, String)> {
        check_guest_path(&path)?;
        self.need_posix(uuid).await?;
        let _slot = self.transfers.take(caller)?;
        let (_report, cancel) =
            super::super::storage_transfers::bridge(progress.clone(), "reading", 0);
        self.hv()
            .on_domain(uuid, move |_, d| {
                read_blocking(d, &path, dst, &progress, &cancel)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_and_owners_are_checked() {
        assert!(check_guest_path("/etc/motd").is_ok());
        for bad in ["etc/motd", "/etc/", "/tmp/..", "/a\nb", ""] {
            let e = check_guest_path(bad).unwrap_err().to_string();
            assert!(e.starts_with("guest_path:"), "{bad:?}: {e}");
        }
        for ok in ["root", "app:app", "1000:1000", "www-data"] {
            assert!(check_owner(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-rf", "a:b:c", "a b", "u;rm", ":g"] {
            assert!(check_owner(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_shared_source_is_read_to_its_size_and_one_that_grew_is_refused() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let f = Arc::new(f);
        let cancel = AtomicBool::new(false);
        let mut all = Reading::Shared(f.clone(), 0, 10);
        let mut buf = [0u8; 64];
        assert_eq!(all.read_some(&mut buf, &cancel).unwrap(), 10);
        assert_eq!(all.read_some(&mut buf, &cancel).unwrap(), 0);
        // Looked at when it had 4 bytes: what came after is a change.
        let mut grew = Reading::Shared(f, 0, 4);
        assert_eq!(grew.read_some(&mut buf, &cancel).unwrap(), 4);
        assert_eq!(&buf[..4], b"0123");
        assert!(matches!(
            grew.read_some(&mut buf, &cancel),
            Err(Error::Conflict(_))
        ));
    }

    #[test]
    fn temporary_names_sit_beside_the_destination_hidden() {
        let t = temp_path("/etc/app/conf.yml");
        assert!(t.starts_with("/etc/app/.conf.yml.vapor-"), "{t}");
        assert_ne!(t, temp_path("/etc/app/conf.yml"));
    }

    #[test]
    fn script_failures_become_typed_errors_naming_the_field() {
        assert!(matches!(script_error(91, b"", "/x"), Error::Conflict(_)));
        assert!(matches!(
            script_error(92, b"no dir", "/x"),
            Error::NotFound(_)
        ));
        assert!(script_error(95, b"chown u failed", "/x")
            .to_string()
            .starts_with("owner:"));
    }
}
