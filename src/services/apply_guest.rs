//! The steps of an apply that work inside the guest, through its agent:
//! NFS shares (the client installed only when missing, mount points made,
//! `/etc/fstab` edited only when it lacks a share, shares not mounted
//! mounted) and file injections (written only when content, mode or owner
//! differ). Each looks first; a dry run only looks.

use std::time::Duration;

use super::rules::{self, GuestFile};
use super::{push, Ctx, Status, VmReport};
use crate::services::apply_doc::VmDecl;
use crate::services::guest::exec::{ExecOutput, ExecRequest};
use crate::services::guest::files::{Source, WriteRequest};
use crate::services::guest::GuestService;
use crate::services::nfs_rules::{plan_fstab, FstabChange};
use crate::{Error, Result};

/// Whether the guest can mount NFS: prints `present` or `missing`.
const HAS_NFS_CLIENT: &str = r#"for p in /sbin/mount.nfs /usr/sbin/mount.nfs /bin/mount.nfs /usr/bin/mount.nfs; do
  [ -x "$p" ] && { echo present; exit 0; }
done
command -v mount.nfs >/dev/null 2>&1 && echo present || echo missing"#;

/// Install the NFS client with the guest's package manager (exit 97:
/// none known).
const INSTALL_NFS_CLIENT: &str = r#"if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q nfs-common || { apt-get update -q && apt-get install -y -q nfs-common; }
elif command -v dnf >/dev/null 2>&1; then dnf install -y -q nfs-utils
elif command -v yum >/dev/null 2>&1; then yum install -y -q nfs-utils
elif command -v zypper >/dev/null 2>&1; then zypper --non-interactive install nfs-client
elif command -v apk >/dev/null 2>&1; then apk add nfs-utils
else exit 97
fi"#;

/// `sh -c DIRS sh DRY PATH…`: each mount point that is not a directory
/// yet is made (unless DRY is 1) and printed; exit 3 when one is
/// something else.
const DIRS: &str = r#"dry=$1; shift
for p in "$@"; do
  [ -d "$p" ] && continue
  if [ -e "$p" ] || [ -L "$p" ]; then echo "$p exists and is not a directory" >&2; exit 3; fi
  [ "$dry" = 1 ] || mkdir -p -- "$p" || exit 4
  echo "$p"
done"#;

const READ_FSTAB: &str = "[ -e /etc/fstab ] || exit 0; exec cat /etc/fstab";

/// The most output read from one of these scripts (an fstab included).
const MAX_OUTPUT: usize = 1024 * 1024;

/// One VM's guest, for the steps that work inside it.
pub(super) struct InGuest<'a> {
    pub g: &'a GuestService,
    pub uuid: &'a str,
    pub c: &'a Ctx,
    pub d: &'a VmDecl,
}

/// A script's output, or its failure naming what was attempted.
fn ok(out: ExecOutput, what: &str) -> Result<String> {
    if out.code == 0 {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .trim()
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(Error::Failed(format!(
        "{what} failed in the guest (exit {}): {}",
        out.code,
        crate::text::for_bus(&tail)
    )))
}

const SHORT: Duration = Duration::from_secs(60);

/// A step's entry: what it did (or, in a dry run, would do), else `same`.
fn conclude(r: &mut VmReport, step: &'static str, c: &Ctx, did: &[String], same: String) {
    if did.is_empty() {
        push(r, step, Status::Unchanged, same);
    } else if c.dry_run {
        push(
            r,
            step,
            Status::WouldChange,
            format!("would: {}", did.join("; ")),
        );
    } else {
        push(r, step, Status::Changed, did.join("; "));
    }
}

impl InGuest<'_> {
    /// Run a shell script in the guest with arguments; its output when it
    /// succeeds, else what it said on stderr.
    async fn run(
        &self,
        script: &str,
        args: &[&str],
        timeout: Duration,
        what: &str,
    ) -> Result<String> {
        ok(self.sh(script, args, timeout).await?, what)
    }

    async fn sh(&self, script: &str, args: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".into(),
            script.into(),
            "sh".into(),
        ];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let req = ExecRequest {
            argv,
            timeout,
            max_output: MAX_OUTPUT,
            caller: self.c.uid,
            ..Default::default()
        };
        self.g.exec(self.uuid, req).await
    }

    /// What `findmnt` says is mounted on `point` (empty: nothing).
    async fn mounted_on(&self, point: &str) -> Result<String> {
        // findmnt says 1 when nothing is mounted there; anything else
        // (127: no findmnt) is a failure, not "nothing".
        let script = "findmnt -n -o SOURCE,FSTYPE -M \"$1\"; r=$?; [ $r -eq 1 ] && exit 0; exit $r";
        self.run(script, &[point], SHORT, "findmnt").await
    }

    /// Whether the guest has `mount.nfs`.
    async fn has_nfs_client(&self) -> Result<bool> {
        let out = self
            .run(HAS_NFS_CLIENT, &[], SHORT, "looking for mount.nfs")
            .await?;
        Ok(out.trim() == "present")
    }

    /// Install the NFS client with the guest's package manager.
    async fn install_nfs_client(&self) -> Result<()> {
        let out = self
            .sh(INSTALL_NFS_CLIENT, &[], Duration::from_secs(900))
            .await?;
        if out.code == 97 {
            return Err(Error::NotSupported(
                "nfs_shares: the guest has no mount.nfs and no package manager vapord knows (apt-get, dnf, yum, zypper, apk)".into(),
            ));
        }
        ok(out, "installing the NFS client")?;
        if !self.has_nfs_client().await? {
            return Err(Error::Failed(
                "nfs_shares: the NFS client was installed but the guest still has no mount.nfs"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Write `bytes` to `path` in the guest (root's, 0644), through
    /// `WriteFile`'s safe path: a temporary file, checked, renamed.
    async fn write_bytes(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let req = WriteRequest {
            path: path.into(),
            mode: 0o644,
            owner: None,
            overwrite: true,
            expect_sha256: None,
            caller: self.c.uid,
        };
        let len = bytes.len() as u64;
        self.g
            .write_file(
                self.uuid,
                req,
                Source::Caller(memory_file(bytes)?),
                len,
                self.c.within(&self.d.name, "nfs"),
            )
            .await?;
        Ok(())
    }

    /// The NFS step (see the module).
    pub async fn nfs(&self, d: &VmDecl, r: &mut VmReport) -> Result<()> {
        let c = self.c;
        if d.nfs_shares.is_empty() {
            push(r, "nfs", Status::Unchanged, "none declared");
            return Ok(());
        }
        let mut did: Vec<String> = Vec::new();
        if !self.has_nfs_client().await? {
            if !c.dry_run {
                c.changing(d, self.uuid);
                self.install_nfs_client().await?;
            }
            did.push("install the NFS client".into());
        }
        // Looked for first, made only when missing (a change noted before).
        let mut args = vec!["1"];
        args.extend(d.nfs_shares.iter().map(|s| s.guest_path.as_str()));
        let made = self
            .run(DIRS, &args, SHORT, "looking for the mount points")
            .await?;
        if !c.dry_run && !made.trim().is_empty() {
            c.changing(d, self.uuid);
            args[0] = "0";
            self.run(DIRS, &args, SHORT, "making the mount points")
                .await?;
        }
        did.extend(
            made.lines()
                .filter(|l| !l.is_empty())
                .map(|p| format!("make {p}")),
        );
        let out = self.sh(READ_FSTAB, &[], SHORT).await?;
        let bytes = out.stdout.clone();
        ok(out, "reading /etc/fstab")?;
        // Rewritten whole: never through a lossy conversion.
        let current = String::from_utf8(bytes).map_err(|_| {
            Error::Conflict(
                "nfs_shares: the guest's /etc/fstab is not UTF-8; vapord does not rewrite it"
                    .into(),
            )
        })?;
        let (text, changes) = plan_fstab(&current, &d.nfs_shares)
            .map_err(|e| Error::Conflict(format!("/etc/fstab of the guest: {e}")))?;
        let edited: Vec<String> = d
            .nfs_shares
            .iter()
            .zip(&changes)
            .filter(|(_, ch)| **ch != FstabChange::Unchanged)
            .map(|(s, ch)| format!("{} {}", s.guest_path, ch.as_str()))
            .collect();
        if !edited.is_empty() {
            if !c.dry_run {
                c.changing(d, self.uuid);
                self.write_bytes("/etc/fstab", text.as_bytes()).await?;
            }
            did.push(format!("fstab: {}", edited.join(", ")));
        }
        for (share, change) in d.nfs_shares.iter().zip(&changes) {
            let p = share.guest_path.as_str();
            let now = self.mounted_on(p).await?;
            if rules::mounted(&now, share) && *change != FstabChange::Replaced {
                continue;
            }
            let something = !now.trim().is_empty();
            let nfs_there = now
                .split_whitespace()
                .nth(1)
                .is_some_and(|t| t.starts_with("nfs"));
            if something && !nfs_there {
                return Err(Error::Conflict(format!(
                    "nfs_shares: {p} has {} mounted on it, not NFS; vapord does not mount over it",
                    crate::text::for_bus(now.trim())
                )));
            }
            did.push(format!("mount {p}"));
            if c.dry_run {
                continue;
            }
            c.changing(d, self.uuid);
            if something {
                // An NFS mount of an older line (another export or options).
                let what = format!("unmounting {p}");
                self.run("umount -- \"$1\"", &[p], SHORT, &what).await?;
            }
            let what = format!("mounting {p}");
            let long = Duration::from_secs(300);
            self.run("mount -- \"$1\"", &[p], long, &what).await?;
            if !rules::mounted(&self.mounted_on(p).await?, share) {
                return Err(Error::Failed(format!(
                    "nfs_shares: {} is not mounted on {p} after mount",
                    share.host_path
                )));
            }
        }
        let n = d.nfs_shares.len();
        conclude(
            r,
            "nfs",
            c,
            &did,
            format!("{n} share(s) mounted as declared"),
        );
        Ok(())
    }

    /// The files step (see the module).
    pub async fn files(&self, d: &VmDecl, r: &mut VmReport) -> Result<()> {
        let c = self.c;
        if d.files.is_empty() {
            push(r, "files", Status::Unchanged, "none declared");
            return Ok(());
        }
        let mut did = Vec::new();
        for (i, f) in d.files.iter().enumerate() {
            let field = format!("file_injections[{i}]");
            let (Some((sha, size)), Some(src)) =
                (c.hashes.get(&f.source), c.sources.get(&f.source))
            else {
                return Err(Error::InvalidArgument(format!(
                    "{field}.source: '{}' was not given",
                    f.source
                )));
            };
            let dest = f.destination.as_str();
            let long = Duration::from_secs(300);
            let seen = self
                .run(
                    rules::CHECK_FILE,
                    &[dest],
                    long,
                    &format!("looking at {dest}"),
                )
                .await?;
            let state = rules::parse_guest_file(&seen).ok_or_else(|| {
                Error::Failed(format!(
                    "{field}: the guest's answer about {dest} makes no sense"
                ))
            })?;
            let diff = rules::file_differences(f, sha, &state);
            if diff.is_empty() {
                continue;
            }
            let why = if state == GuestFile::Missing {
                "missing".to_owned()
            } else {
                diff.join(", ")
            };
            did.push(format!("write {dest} ({why})"));
            if c.dry_run {
                continue;
            }
            c.changing(d, self.uuid);
            let req = WriteRequest {
                path: f.destination.clone(),
                mode: f.mode,
                owner: f.owner.clone(),
                overwrite: true,
                // Put in place only when what was read is what was compared.
                expect_sha256: Some(sha.clone()),
                caller: c.uid,
            };
            let src = Source::Shared(src.clone(), *size);
            self.g
                .write_file(self.uuid, req, src, *size, c.within(&self.d.name, "files"))
                .await
                .map_err(|e| e.context(format!("{field}: writing {dest}")))?;
        }
        let same = d.files.len() - did.len();
        conclude(r, "files", c, &did, format!("{same} file(s) as declared"));
        Ok(())
    }
}

/// An anonymous file holding `bytes`, read from its start.
fn memory_file(bytes: &[u8]) -> Result<std::fs::File> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor it
    // returns is owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"vapor-apply".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Failed(format!(
            "cannot make a memory file: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)
        .and_then(|_| f.rewind())
        .map_err(|e| Error::Failed(format!("cannot fill a memory file: {e}")))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_files_hold_their_bytes_from_the_start() {
        use std::io::Read;
        let mut f = memory_file(b"a b\n").unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "a b\n");
    }

    #[test]
    fn failures_quote_the_end_of_what_the_guest_said() {
        let out = ExecOutput {
            code: 32,
            stdout: Vec::new(),
            stderr: format!("{}mount.nfs: Connection refused\n", "x".repeat(1000)).into_bytes(),
        };
        let e = ok(out, "mounting /mnt/x").unwrap_err().to_string();
        assert!(
            e.starts_with("mounting /mnt/x failed in the guest (exit 32)"),
            "{e}"
        );
        assert!(e.ends_with("Connection refused"), "{e}");
        assert!(e.len() < 500, "{e}");
    }
}
