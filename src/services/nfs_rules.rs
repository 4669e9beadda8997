//! NFS shares in a guest's `/etc/fstab`, decided as pure functions (the
//! seed's `nfs_shares: [{host_path, guest_path, options}]`): each share is
//! one line; an existing line for the same mount point is replaced, never
//! duplicated, and a share already there as asked changes nothing, so
//! applying the same shares again edits nothing.

use crate::{Error, Result};

/// One share as a caller declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsShare {
    /// `server:/export`.
    pub host_path: String,
    /// The mount point in the guest.
    pub guest_path: String,
    /// Mount options; default [`DEFAULT_OPTIONS`].
    pub options: String,
}

/// The options a share gets when none are given: NFSv4 over TCP, mounted
/// once the network is up.
pub const DEFAULT_OPTIONS: &str = "vers=4.1,proto=tcp,_netdev";

/// What applying one share did to fstab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FstabChange {
    Unchanged,
    Added,
    /// A line for the same mount point was replaced (and any more removed).
    Replaced,
}

impl FstabChange {
    pub fn as_str(self) -> &'static str {
        match self {
            FstabChange::Unchanged => "unchanged",
            FstabChange::Added => "added",
            FstabChange::Replaced => "replaced",
        }
    }
}

fn plain(field: &str, v: &str, extra: &[u8]) -> Result<()> {
    if v.is_empty()
        || v.len() > 1024
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b) || extra.contains(&b))
    {
        return Err(Error::InvalidArgument(format!(
            "{field}: '{}' must be non-empty letters, digits and / . _ -{}",
            crate::text::for_bus(v),
            if extra.is_empty() {
                String::new()
            } else {
                format!(" {}", String::from_utf8_lossy(extra))
            }
        )));
    }
    Ok(())
}

impl NfsShare {
    /// A share as declared, checked field by field (`at` names it in
    /// errors: `vms[0].nfs_shares[1]` → `vms[0].nfs_shares[1].guest_path: …`).
    /// Pure.
    pub fn checked(
        at: &str,
        host_path: &str,
        guest_path: &str,
        options: Option<&str>,
    ) -> Result<Self> {
        let f = |k: &str| format!("{at}.{k}");
        let Some((server, export)) = host_path.split_once(":/") else {
            return Err(Error::InvalidArgument(format!(
                "{}: '{}' is not server:/export",
                f("host_path"),
                crate::text::for_bus(host_path)
            )));
        };
        plain(&f("host_path"), server, b"[]:")?;
        plain(&f("host_path"), &format!("/{export}"), b"")?;
        let trimmed = guest_path.trim_end_matches('/');
        let parts_ok = trimmed.strip_prefix('/').is_some_and(|rest| {
            rest.split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
        });
        if !parts_ok {
            return Err(Error::InvalidArgument(format!(
                "{}: '{}' is not an absolute path below / (no empty, . or .. parts)",
                f("guest_path"),
                crate::text::for_bus(guest_path)
            )));
        }
        plain(&f("guest_path"), guest_path, b"")?;
        if server.starts_with('-') || server.contains('/') {
            return Err(Error::InvalidArgument(format!(
                "{}: '{}' does not name a server",
                f("host_path"),
                crate::text::for_bus(server)
            )));
        }
        if options.is_some_and(|o| o.split(',').any(str::is_empty)) {
            return Err(Error::InvalidArgument(format!(
                "{}: an empty option",
                f("options")
            )));
        }
        let options = options.unwrap_or(DEFAULT_OPTIONS);
        plain(&f("options"), options, b",=:")?;
        Ok(NfsShare {
            host_path: host_path.to_owned(),
            guest_path: guest_path.trim_end_matches('/').to_owned(),
            options: options.to_owned(),
        })
    }

    /// Its fstab line.
    pub fn line(&self) -> String {
        format!(
            "{} {} nfs {} 0 0",
            self.host_path, self.guest_path, self.options
        )
    }
}

/// The mount point of an fstab line, if it is an entry (not a comment).
fn mount_point(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split_whitespace().nth(1).map(|m| {
        let m = m.trim_end_matches('/');
        if m.is_empty() {
            "/"
        } else {
            m
        }
    })
}

/// Whether two fstab entries say the same (fields compared, spacing not).
fn same_entry(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

/// The file system type of an fstab entry.
fn fs_type(line: &str) -> Option<&str> {
    line.split_whitespace().nth(2)
}

/// fstab with `shares` applied, and what each share did; the text as it
/// was when nothing changed. A mount point fstab gives to something other
/// than NFS is refused, naming it: replacing `/boot` would unmount a disk.
/// Pure.
pub fn plan_fstab(current: &str, shares: &[NfsShare]) -> Result<(String, Vec<FstabChange>)> {
    let mut lines: Vec<String> = current.lines().map(str::to_owned).collect();
    let mut changes = Vec::new();
    for share in shares {
        let want = share.line();
        let at: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| mount_point(l) == Some(share.guest_path.as_str()))
            .map(|(i, _)| i)
            .collect();
        if let Some(i) = at
            .iter()
            .find(|i| !matches!(fs_type(&lines[**i]), Some("nfs" | "nfs4")))
        {
            return Err(Error::Conflict(format!(
                "guest_path: {} is in the guest's fstab for something else ({})",
                share.guest_path,
                crate::text::for_bus(lines[*i].trim())
            )));
        }
        let change = match at.as_slice() {
            [] => {
                lines.push(want);
                FstabChange::Added
            }
            [only] if same_entry(&lines[*only], &want) => FstabChange::Unchanged,
            [first, rest @ ..] => {
                lines[*first] = want;
                for i in rest.iter().rev() {
                    lines.remove(*i);
                }
                FstabChange::Replaced
            }
        };
        changes.push(change);
    }
    if changes.iter().all(|c| *c == FstabChange::Unchanged) {
        return Ok((current.to_owned(), changes));
    }
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    Ok((text, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(host: &str, guest: &str) -> NfsShare {
        NfsShare::checked("nfs_shares[0]", host, guest, None).unwrap()
    }

    const FSTAB: &str = "# /etc/fstab\nLABEL=root / ext4 rw 0 1\n";

    #[test]
    fn a_share_is_added_once_and_then_left_alone() {
        let s = [share("192.168.151.2:/export", "/mnt/data")];
        let (once, c) = plan_fstab(FSTAB, &s).unwrap();
        assert_eq!(c, [FstabChange::Added]);
        assert!(
            once.ends_with("192.168.151.2:/export /mnt/data nfs vers=4.1,proto=tcp,_netdev 0 0\n")
        );
        assert!(once.starts_with(FSTAB), "other lines stay as they were");
        let (twice, c) = plan_fstab(&once, &s).unwrap();
        assert_eq!(c, [FstabChange::Unchanged]);
        assert_eq!(twice, once);
    }

    #[test]
    fn a_line_for_the_same_mount_point_is_replaced_never_duplicated() {
        let old = format!("{FSTAB}old:/x /mnt/data nfs ro 0 0\n#old:/y /mnt/data nfs\nold:/z /mnt/data/ nfs rw 0 0\n");
        let (new, c) = plan_fstab(&old, &[share("srv:/export", "/mnt/data")]).unwrap();
        assert_eq!(c, [FstabChange::Replaced]);
        assert_eq!(
            new,
            format!("{FSTAB}srv:/export /mnt/data nfs vers=4.1,proto=tcp,_netdev 0 0\n#old:/y /mnt/data nfs\n")
        );
        // Spacing alone is no change.
        let spaced = format!("{FSTAB}srv:/export\t/mnt/data  nfs vers=4.1,proto=tcp,_netdev 0 0\n");
        let (same, c) = plan_fstab(&spaced, &[share("srv:/export", "/mnt/data")]).unwrap();
        assert_eq!(
            (same.as_str(), c[0]),
            (spaced.as_str(), FstabChange::Unchanged)
        );
    }

    #[test]
    fn shares_are_checked_field_by_field() {
        let err = |h: &str, g: &str, o: Option<&str>| {
            NfsShare::checked("nfs_shares[2]", h, g, o)
                .unwrap_err()
                .to_string()
        };
        assert!(err("srv/export", "/mnt", None).starts_with("nfs_shares[2].host_path:"));
        assert!(err("srv:/ex port", "/mnt", None).starts_with("nfs_shares[2].host_path:"));
        assert!(err("srv:/e", "mnt", None).starts_with("nfs_shares[2].guest_path:"));
        assert!(err("srv:/e", "/", None).starts_with("nfs_shares[2].guest_path:"));
        assert!(err("srv:/e", "/a/../etc", None).starts_with("nfs_shares[2].guest_path:"));
        assert!(err("srv:/e", "/mnt", Some("rw;reboot")).starts_with("nfs_shares[2].options:"));
        assert!(NfsShare::checked("s", "[fd00::2]:/e", "/mnt/", Some("vers=4.2")).is_ok());
        for bad in ["//", "/mnt/./d", "/mnt//d", "/"] {
            assert!(
                err("srv:/e", bad, None).starts_with("nfs_shares[2].guest_path:"),
                "{bad}"
            );
        }
        assert!(err("-o:/e", "/m", None).starts_with("nfs_shares[2].host_path:"));
        assert!(err("srv:/e", "/m", Some("rw,,ro")).starts_with("nfs_shares[2].options:"));
    }

    #[test]
    fn a_mount_point_of_something_else_is_refused_and_crlf_survives_no_change() {
        let e = plan_fstab("UUID=2 /boot ext4 rw 0 2\n", &[share("srv:/e", "/boot")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("/boot is in the guest's fstab for something else"),
            "{e}"
        );
        let crlf = "srv:/e /m nfs vers=4.1,proto=tcp,_netdev 0 0\r\n";
        let (same, _) = plan_fstab(crlf, &[share("srv:/e", "/m")]).unwrap();
        assert_eq!(same, crlf);
    }
}
