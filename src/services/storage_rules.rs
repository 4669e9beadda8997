//! The pure rules of storage, and the few file-system reads they judge:
//! where a pool may be put (and when that needs `storage-host-path`), which
//! volume paths vapord may act on, whether a growth fits or a pool may be
//! deleted, what an intent records for a volume about to be made, which
//! records a listing replaces, and ISO 9660 labels. [`super::storage`]
//! applies them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::libvirt::storage::PoolRecord;
use crate::storage::spec::{PoolKind, PoolSpec};
use crate::{Error, Result};

/// The ISO 9660 volume label of an image file (primary volume descriptor
/// at 32 KiB: type 1, "CD001", label at byte 40, 32 characters). Only a
/// regular file is read: the path is opened without following a final
/// symlink and without waiting (a FIFO put in a pool never blocks).
pub fn iso_label(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    f.seek(SeekFrom::Start(32768)).ok()?;
    let mut pvd = [0u8; 72];
    f.read_exact(&mut pvd).ok()?;
    iso_label_of(&pvd)
}

/// The label from the first 72 bytes of a primary volume descriptor.
pub fn iso_label_of(pvd: &[u8]) -> Option<String> {
    if pvd.len() < 72 || pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    let label: String = pvd[40..72]
        .iter()
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect();
    Some(label.trim().to_owned()).filter(|l| !l.is_empty())
}

/// libvirt's own directory: its domain, network and driver state. No pool
/// may lie in it but in [`LIBVIRT_IMAGES`].
pub const LIBVIRT_DIR: &str = "/var/lib/libvirt";
/// The one part of [`LIBVIRT_DIR`] meant for pools.
pub const LIBVIRT_IMAGES: &str = "/var/lib/libvirt/images";

/// Why no pool may have its target at `target`, if so (all paths
/// canonical; pure). A pool's files can be created, overwritten and deleted
/// by whoever may manage storage, so no pool may be vapord's state
/// directory, hold it or lie in it (except in a pool root inside it), nor
/// lie among libvirt's own files (`libvirt` but for `images`).
pub fn forbidden_target(
    target: &Path,
    state_dir: &Path,
    roots: &[PathBuf],
    libvirt: &Path,
    images: &Path,
) -> Option<String> {
    let state = state_dir.display();
    if state_dir == target {
        return Some(format!("is vapord's state directory {state}"));
    }
    if state_dir.starts_with(target) {
        return Some(format!("would hold vapord's state directory {state}"));
    }
    let in_root_inside_state = roots
        .iter()
        .any(|r| r != state_dir && r.starts_with(state_dir) && target.starts_with(r));
    if target.starts_with(state_dir) && !in_root_inside_state {
        return Some(format!("lies inside vapord's state directory {state}"));
    }
    if target.starts_with(libvirt) && !target.starts_with(images) {
        return Some(format!(
            "lies among libvirt's own files in {} (only {} is for pools)",
            libvirt.display(),
            images.display()
        ));
    }
    None
}

/// Why no pool may have its target at `target`: it is, or lies in, one of
/// vapord's backup repositories (`protected`; all paths canonical; pure).
/// A pool there would hand the backups' images to volume calls.
pub fn in_backup_repository(target: &Path, protected: &[PathBuf]) -> Option<String> {
    protected
        .iter()
        .find(|p| target.starts_with(p))
        .map(|p| format!("lies in vapord's backup repository {}", p.display()))
}

/// Why creating this pool needs the `storage-host-path` action, if it
/// does: it puts a pool (where callers then create and delete files) on a
/// host path outside `roots`, takes host devices, or mounts or attaches
/// what a remote server decides. A target no pool may have at all (see
/// [`forbidden_target`]; `state_dir` is vapord's) is `InvalidArgument`
/// naming `target`. Paths are compared with symlinks followed for the part
/// that exists.
pub fn pool_host_paths(
    spec: &PoolSpec,
    roots: &[&str],
    state_dir: &Path,
) -> Result<Option<String>> {
    let real = |p: &str| PathBuf::from(canonical_existing(p));
    let target = real(&spec.target);
    let real_roots: Vec<PathBuf> = roots.iter().map(|r| real(r)).collect();
    let state = real(&state_dir.to_string_lossy());
    let (libvirt, images) = (real(LIBVIRT_DIR), real(LIBVIRT_IMAGES));
    if let Some(why) = forbidden_target(&target, &state, &real_roots, &libvirt, &images) {
        return Err(Error::InvalidArgument(format!(
            "target: {} {why}",
            spec.target
        )));
    }
    let inside = real_roots.iter().any(|r| target.starts_with(r));
    let host = |s: &Option<String>| s.as_deref().unwrap_or("?").to_owned();
    Ok(match spec.kind {
        PoolKind::Dir if inside => None,
        PoolKind::Dir => Some(format!(
            "a pool at {} (outside {})",
            spec.target,
            roots.join(", ")
        )),
        PoolKind::Fs => Some(format!(
            "a pool on the host device {}",
            spec.source.device.join(", ")
        )),
        PoolKind::Netfs => Some(format!(
            "a pool mounting {}:{} at {} (the remote side decides what appears on the host)",
            host(&spec.source.host),
            host(&spec.source.dir),
            spec.target
        )),
        PoolKind::Logical => Some(format!(
            "the host volume group {}",
            spec.source.name.as_deref().unwrap_or(&spec.target)
        )),
        PoolKind::Iscsi => Some(format!(
            "a pool attaching the iSCSI target {} of {} (the remote side decides what appears on the host)",
            host(&spec.source.target_iqn),
            host(&spec.source.host)
        )),
    })
}

/// The real path of `p`: symlinks followed for the part that exists.
pub(super) fn canonical_existing(p: &str) -> String {
    let mut path = Path::new(p).to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&path) {
            let mut out = real;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out.to_string_lossy().into_owned();
        }
        match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                path = parent.to_path_buf();
            }
            _ => return p.to_owned(),
        }
    }
}

/// Where pools may be put without `storage-host-path`.
pub const POOL_ROOTS: &[&str] = &[LIBVIRT_IMAGES, "/var/lib/vapor/pools"];

/// Pool types whose volumes are not files in the pool's directory: block
/// devices (their paths are links under /dev the system made) or network
/// objects. Every other type's volumes are checked (see
/// [`volume_path_problem`]).
pub(super) const NOT_FILE_POOLS: &[&str] = &[
    "logical",
    "iscsi",
    "iscsi-direct",
    "disk",
    "scsi",
    "mpath",
    "zfs",
    "rbd",
    "sheepdog",
    "gluster",
];

/// What the file system says about a volume's path and its pool's target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathFacts {
    /// The path itself is a symbolic link (lstat).
    pub symlink: bool,
    /// The path with every symlink resolved; `None` if it cannot be.
    pub real: Option<PathBuf>,
    /// The pool's target path resolved; `None` if it cannot be.
    pub pool_real: Option<PathBuf>,
}

impl PathFacts {
    /// Read them (blocking: file system calls).
    pub fn read(path: &str, pool_target: &str) -> Self {
        let resolve = |p: &str| {
            (!p.is_empty())
                .then(|| std::fs::canonicalize(p).ok())
                .flatten()
        };
        PathFacts {
            symlink: std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()),
            real: resolve(path),
            pool_real: resolve(pool_target),
        }
    }
}

/// Why vapord may not read, write or delete a volume at `path` of a pool
/// of type `pool_kind`, if so (pure). A file pool's volume must be a file
/// (not a symlink) that really lies in the pool's directory: otherwise an
/// upload, wipe, resize or delete would act on whatever the link (or a
/// linked directory on the way) leads to.
pub fn volume_path_problem(pool_kind: &str, path: &str, facts: &PathFacts) -> Option<String> {
    if NOT_FILE_POOLS.contains(&pool_kind) {
        return None;
    }
    if facts.symlink {
        return Some(format!("{path} is a symbolic link"));
    }
    let Some(pool) = &facts.pool_real else {
        return Some(format!(
            "the directory of the pool of {path} cannot be resolved"
        ));
    };
    match &facts.real {
        None => Some(format!("{path} cannot be resolved")),
        Some(real) if real != pool && real.starts_with(pool) => None,
        Some(real) => Some(format!(
            "{path} leads to {}, outside the pool's directory {}",
            real.display(),
            pool.display()
        )),
    }
}

/// Whether growing a volume by `growth` bytes fits the free space of its
/// pool (pure).
pub(super) fn growth_fits(what: &str, growth: u64, pool: &PoolRecord) -> Result<()> {
    if growth > pool.available {
        return Err(Error::LimitExceeded(format!(
            "{what} grows the volume by {growth} bytes, more than pool '{}' has free ({} bytes)",
            pool.name, pool.available
        )));
    }
    Ok(())
}

/// Whether a pool may be deleted as asked (pure): its volumes go only with
/// `delete_volumes`, and only from a started pool (an inactive pool's
/// volumes cannot be listed, so nobody could check who uses them).
pub(super) fn check_pool_deletion(
    pool: &PoolRecord,
    delete_volumes: bool,
    volumes: usize,
) -> Result<()> {
    if delete_volumes && !pool.is_active() {
        return Err(Error::InvalidState(format!(
            "storage pool '{}' is not running: start the pool first so its volumes can be checked",
            pool.name
        )));
    }
    if volumes > 0 && !delete_volumes {
        return Err(Error::InvalidState(format!(
            "storage pool '{}' still holds {volumes} volume(s); delete them first or pass delete_volumes",
            pool.name
        )));
    }
    Ok(())
}

/// The path an intent records for a volume about to be made in a pool with
/// this target: only an absolute one (a relative path would name a file
/// relative to wherever recovery runs); otherwise the volume is recorded
/// once libvirt returns its real path (pure).
pub(super) fn expected_volume_path(target: &str, name: &str) -> Option<String> {
    let target = Path::new(target);
    target
        .is_absolute()
        .then(|| target.join(name).to_string_lossy().into_owned())
}

/// Whether a pool's previous records are replaced by a new listing: not
/// when the listing could not read it (pure).
pub(super) fn in_removal_scope(skipped: &HashSet<String>, pool_uuid: &str) -> bool {
    !skipped.contains(pool_uuid)
}

/// Pools vapord starts for itself (a restore reads a backup's directory as
/// one): never published, never offered to callers.
pub const INTERNAL_POOL_PREFIX: &str = "vapor-restore-";

/// Whether a pool is one of vapord's own ([`INTERNAL_POOL_PREFIX`]).
pub fn internal_pool(name: &str) -> bool {
    name.starts_with(INTERNAL_POOL_PREFIX)
}

#[cfg(test)]
#[path = "storage_rules_tests.rs"]
mod tests;
