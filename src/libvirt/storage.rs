//! The typed libvirt port for storage: pools and volumes read into records
//! ([`PoolRecord`], [`VolumeRecord`]), and the blocking calls that define,
//! build, start, stop, refresh and remove pools and create, clone, resize,
//! wipe, delete, upload and download volumes. Pools are named by UUID,
//! volumes by key; a missing one is `Error::NotFound` ("… no longer exists").
//!
//! Everything runs through [`Hypervisor::run`], on the blocking pool. XML
//! comes in ready made (see `crate::storage::spec`); this layer only reads
//! libvirt's XML back ([`parse_pool_xml`], [`parse_volume_xml`], both pure).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::error::ErrorNumber as N;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt_sys as sys;

use super::errors::{bare, from_virt, is_not_found};
use super::xml::Element;
use super::{Hypervisor, Session};
use crate::{Error, Result};

/// Bytes moved per stream call in uploads and downloads.
const CHUNK: usize = 256 * 1024;

/// How long a caller's descriptor may move nothing before a transfer gives
/// up (a caller must not pin a daemon thread forever).
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// How often a transfer waiting on a caller's descriptor looks at its
/// cancel flag.
const WAIT_TICK: Duration = Duration::from_secs(1);

type VirtResult = std::result::Result<(), virt::error::Error>;

/// `value` when `on`, else no flags.
fn flag(on: bool, value: u32) -> u32 {
    if on {
        value
    } else {
        0
    }
}

/// One storage pool as libvirt reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    pub uuid: String,
    pub name: String,
    /// The pool type: "dir", "fs", "netfs", "logical", "iscsi", "disk", …
    pub kind: String,
    /// "inactive", "building", "running", "degraded" or "inaccessible".
    pub state: &'static str,
    pub autostart: bool,
    pub persistent: bool,
    /// `<target><path>`, "" if none.
    pub target_path: String,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

impl PoolRecord {
    /// Whether the pool is started (running, degraded or inaccessible).
    pub fn is_active(&self) -> bool {
        lists_volumes(self.state)
    }
}

/// One volume of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub pool_uuid: String,
    pub name: String,
    pub key: String,
    pub path: String,
    /// `<target><format type=…>`, "" if none.
    pub format: String,
    /// "file", "block", "dir", "network", "netdir" or "ploop".
    pub kind: String,
    pub capacity: u64,
    pub allocation: u64,
    /// `<backingStore><path>`, "" if none.
    pub backing_store: String,
}

/// Every pool, and the volumes of the active ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageListing {
    pub pools: Vec<PoolRecord>,
    pub volumes: Vec<VolumeRecord>,
    /// UUIDs of pools whose record or volumes could not be read (a
    /// transient libvirt error): neither they nor their volumes are in
    /// `pools` and `volumes`, and what was known of them should stay.
    pub skipped: Vec<String>,
}

fn malformed(what: &str) -> Error {
    Error::Failed(format!("malformed {what} XML from libvirt"))
}

/// The pool's type and target path, from its XML.
pub fn parse_pool_xml(xml: &str) -> Result<(String, String)> {
    let root = Element::parse(xml)?;
    if root.local_name() != "pool" {
        return Err(malformed("storage pool"));
    }
    let kind = root.attr("type").ok_or_else(|| malformed("storage pool"))?;
    let target = root.child("target").and_then(|t| t.child_text("path"));
    Ok((kind.to_owned(), target.unwrap_or("").to_owned()))
}

/// A size element (`<capacity unit='bytes'>…`) in bytes; absent is 0.
fn size_of(el: Option<&Element>) -> Result<u64> {
    let Some(el) = el else { return Ok(0) };
    let n: u64 = el.text.trim().parse().map_err(|_| malformed("volume"))?;
    // libvirt's units: bytes, or K…E alone or with "iB" (powers of 1024)
    // or with "B" (powers of 1000).
    let unit = el.attr("unit").unwrap_or("bytes");
    let scale = match unit {
        "b" | "B" | "byte" | "bytes" => Some(1),
        _ => {
            let prefix = unit.get(..1).filter(|p| !p.is_empty()).unwrap_or("?");
            let rest = unit.get(1..).unwrap_or("?");
            let power = "KMGTPE"
                .find(&prefix.to_ascii_uppercase())
                .map(|i| i as u32 + 1);
            match (power, rest) {
                (Some(p), "" | "iB") => 1024u64.checked_pow(p),
                (Some(p), "B") => 1000u64.checked_pow(p),
                _ => None,
            }
        }
    };
    let scale = scale.ok_or_else(|| malformed("volume"))?;
    n.checked_mul(scale).ok_or_else(|| malformed("volume"))
}

/// A volume's record from its XML (`virStorageVolGetXMLDesc`); the pool is
/// the caller's to say.
pub fn parse_volume_xml(xml: &str, pool_uuid: &str) -> Result<VolumeRecord> {
    let root = Element::parse(xml)?;
    if root.local_name() != "volume" {
        return Err(malformed("volume"));
    }
    let name = root
        .child_text("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| malformed("volume"))?;
    let target = root.child("target");
    let path = target.and_then(|t| t.child_text("path")).unwrap_or("");
    let format = target
        .and_then(|t| t.child("format"))
        .and_then(|f| f.attr("type"))
        .unwrap_or("");
    let backing = root
        .child("backingStore")
        .and_then(|b| b.child_text("path"))
        .unwrap_or("");
    Ok(VolumeRecord {
        pool_uuid: pool_uuid.to_owned(),
        name: name.to_owned(),
        key: root.child_text("key").unwrap_or("").to_owned(),
        path: path.to_owned(),
        format: format.to_owned(),
        kind: root.attr("type").unwrap_or("file").to_owned(),
        capacity: size_of(root.child("capacity"))?,
        allocation: size_of(root.child("allocation"))?,
        backing_store: backing.to_owned(),
    })
}

fn state_name(state: u32) -> &'static str {
    match state {
        sys::VIR_STORAGE_POOL_INACTIVE => "inactive",
        sys::VIR_STORAGE_POOL_BUILDING => "building",
        sys::VIR_STORAGE_POOL_RUNNING => "running",
        sys::VIR_STORAGE_POOL_DEGRADED => "degraded",
        _ => "inaccessible",
    }
}

/// Whether a pool in this state may have volumes to list.
fn lists_volumes(state: &str) -> bool {
    matches!(state, "running" | "degraded" | "inaccessible")
}

fn pool_by_uuid(c: &Connect, uuid: &str) -> Result<StoragePool> {
    c.lookup_storage_pool_by_uuid_string(uuid).map_err(|e| {
        if is_not_found(&e) {
            Error::NotFound(format!("storage pool {uuid} no longer exists"))
        } else {
            from_virt(e, format!("cannot look up storage pool {uuid}"))
        }
    })
}

pub(super) fn volume_by_key(c: &Connect, key: &str) -> Result<StorageVol> {
    c.lookup_storage_vol_by_key(key).map_err(|e| {
        if is_not_found(&e) {
            Error::NotFound(format!("volume {key} no longer exists"))
        } else {
            from_virt(e, format!("cannot look up volume {key}"))
        }
    })
}

fn pool_record(pool: &StoragePool) -> Result<PoolRecord> {
    let uuid = pool
        .uuid_string()
        .map_err(|e| from_virt(e, "cannot read a storage pool's UUID"))?;
    let ctx = |what: &'static str| {
        let uuid = uuid.clone();
        move |e| from_virt(e, format!("cannot read the {what} of storage pool {uuid}"))
    };
    let name = pool.name().map_err(ctx("name"))?;
    let (kind, target_path) = parse_pool_xml(&pool.xml_desc(0).map_err(ctx("definition"))?)?;
    let info = pool.info().map_err(ctx("state"))?;
    Ok(PoolRecord {
        name,
        kind,
        state: state_name(info.state),
        autostart: pool.autostart().map_err(ctx("autostart flag"))?,
        persistent: pool.is_persistent().map_err(ctx("persistence"))?,
        target_path,
        capacity: info.capacity,
        allocation: info.allocation,
        available: info.available,
        uuid,
    })
}

pub(super) fn volume_record_of(vol: &StorageVol, pool_uuid: &str) -> Result<VolumeRecord> {
    let xml = vol
        .xml_desc(0)
        .map_err(|e| from_virt(e, "cannot read a volume's definition"))?;
    let mut rec = parse_volume_xml(&xml, pool_uuid)?;
    if rec.key.is_empty() {
        rec.key = vol
            .key()
            .map_err(|e| from_virt(e, "cannot read a volume's key"))?;
    }
    if rec.path.is_empty() {
        rec.path = vol
            .path()
            .map_err(|e| from_virt(e, "cannot read a volume's path"))?;
    }
    Ok(rec)
}

/// How [`volumes_of`] treats a volume it cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    /// Leave it out.
    Skip,
    /// Fail the whole listing, unless the volume is gone (`NotFound`): a
    /// cache must not forget a volume over a transient error.
    Fail,
}

/// Whether a volume that could not be read fails a listing: only a
/// `Fail` listing, and never for a volume that is gone. Pure.
fn fails_listing(mode: Unreadable, e: &Error) -> bool {
    mode == Unreadable::Fail && !matches!(e, Error::NotFound(_))
}

/// The volumes of an active pool, sorted by name; one that cannot be read is
/// left out or fails the listing, as `mode` says.
fn volumes_of(pool: &StoragePool, pool_uuid: &str, mode: Unreadable) -> Result<Vec<VolumeRecord>> {
    let vols = pool
        .list_all_volumes(0)
        .map_err(|e| from_virt(e, format!("cannot list the volumes of pool {pool_uuid}")))?;
    let mut out = Vec::with_capacity(vols.len());
    for v in &vols {
        match volume_record_of(v, pool_uuid) {
            Ok(r) => out.push(r),
            Err(e) if fails_listing(mode, &e) => return Err(e),
            Err(e) => log::debug!("skipping a volume of pool {pool_uuid}: {e}"),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn volume_record_by_key(c: &Connect, key: &str) -> Result<VolumeRecord> {
    let vol = volume_by_key(c, key)?;
    let pool = vol
        .lookup_storage_pool()
        .map_err(|e| from_virt(e, format!("cannot find the pool of volume {key}")))?;
    let pool_uuid = pool
        .uuid_string()
        .map_err(|e| from_virt(e, "cannot read a storage pool's UUID"))?;
    volume_record_of(&vol, &pool_uuid)
}

/// libvirt's "already exists" and "conflicts with pool …" come as
/// OPERATION_FAILED: they are conflicts; a pool type this libvirtd was built
/// without is an internal error: it is not supported.
fn define_error(e: virt::error::Error) -> Error {
    let m = e.message().to_ascii_lowercase();
    let conflict = e.code().unwrap_or(N::InternalError) == N::OperationFailed
        && ["already exists", "already defined", "conflict"]
            .iter()
            .any(|w| m.contains(w));
    let what = "cannot define the storage pool";
    if conflict {
        Error::Conflict(format!("{what}: {}", e.message()))
    } else if m.contains("missing backend for pool type") {
        Error::NotSupported(format!("{what}: {}", e.message()))
    } else {
        from_virt(e, what)
    }
}

/// Flags for creating a volume from `xml`: qcow2 with an allocation asks
/// qemu-img to preallocate.
fn create_flags(xml: &str) -> u32 {
    let Ok(el) = Element::parse(xml) else {
        return 0;
    };
    let qcow2 = el
        .child("target")
        .and_then(|t| t.child("format"))
        .and_then(|f| f.attr("type"))
        == Some("qcow2");
    let allocated = size_of(el.child("allocation")).unwrap_or(0) > 0;
    if qcow2 && allocated {
        sys::VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA
    } else {
        0
    }
}

/// How a new volume's space is set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocation {
    /// What the storage API offers: besides what `<allocation>` gives a raw
    /// file, a qcow2 image with an `<allocation>` is preallocated too
    /// (`VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA`, see [`create_flags`]).
    FromXml,
    /// Only what `<allocation>` gives a raw file; a qcow2 image stays
    /// sparse (VM creation, whose qcow2 disks may sit on a backing file,
    /// which qemu-img will not preallocate).
    RawOnly,
}

impl Preallocation {
    fn flags(self, xml: &str) -> u32 {
        match self {
            Self::FromXml => create_flags(xml),
            Self::RawOnly => 0,
        }
    }
}

fn cancelled() -> Error {
    Error::Failed("cancelled".into())
}

type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Open a stream on volume `key`, hand it to `start` (upload or download)
/// and then to `pump`; finish it when `pump` succeeds, abort it otherwise.
fn with_stream(
    c: &Connect,
    key: &str,
    start: impl FnOnce(&StorageVol, &Stream) -> VirtResult,
    pump: impl FnOnce(&Stream) -> Result<u64>,
) -> Result<u64> {
    let vol = volume_by_key(c, key)?;
    let stream = Stream::new(c, 0).map_err(|e| from_virt(e, "cannot open a stream"))?;
    start(&vol, &stream).map_err(|e| from_virt(e, format!("cannot open volume {key}")))?;
    match pump(&stream) {
        Ok(n) => stream
            .finish()
            .map(|()| n)
            .map_err(|e| from_virt(e, format!("cannot finish streaming volume {key}"))),
        Err(e) => {
            if let Err(a) = stream.abort() {
                log::debug!("aborting the stream of volume {key}: {a}");
            }
            Err(e)
        }
    }
}

/// Wait until the caller's `fd` is ready for `events` (`POLLIN` or
/// `POLLOUT`), looking at `cancel` at least every second. `Timeout` ("<idle>
/// for 60 s") once `limit` has passed since `since` without the descriptor
/// getting ready. An error or hang-up counts as ready: the read or write
/// then says what it is. A regular file is ready at once.
fn wait_ready(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    cancel: &AtomicBool,
    since: Instant,
    limit: Duration,
    idle: &str,
) -> Result<()> {
    loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled());
        }
        let waited = since.elapsed();
        if waited >= limit {
            let secs = limit.as_secs();
            return Err(Error::Timeout(format!("{idle} for {secs} s")));
        }
        let tick = (limit - waited).min(WAIT_TICK);
        let ms = libc::c_int::try_from(tick.as_millis().max(1)).unwrap_or(1000);
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, on a descriptor `fd` keeps open.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            0 => {}
            n if n > 0 => return Ok(()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(Error::Failed(format!(
                        "cannot wait for the caller's file: {e}"
                    )));
                }
            }
        }
    }
}

/// A caller's descriptor as a transfer moves bytes through it, never
/// blocking on a pipe the caller stopped serving: a pipe is read and
/// written with `RWF_NOWAIT` (its own file status flags, which the caller
/// shares and could change, are left alone); where the kernel lacks that,
/// only after [`wait_ready`], and a write then takes at most `PIPE_BUF`
/// bytes (what a ready pipe always has room for). A regular file is read
/// and written as it is.
struct CallerIo {
    file: std::fs::File,
    pipe: bool,
    nowait: bool,
}

/// Whether a `preadv2`/`pwritev2` error means "no `RWF_NOWAIT` here".
fn nowait_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::EPERM)
    )
}

impl CallerIo {
    fn new(file: std::fs::File) -> Self {
        let pipe = file.metadata().is_ok_and(|m| m.file_type().is_fifo());
        CallerIo {
            file,
            pipe,
            nowait: pipe,
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// One non-blocking attempt (`RWF_NOWAIT`) of a read (`write` false)
    /// or write; `None`: the kernel cannot do it so.
    fn try_nowait(
        &mut self,
        ptr: *mut u8,
        len: usize,
        write: bool,
    ) -> Option<std::io::Result<Option<usize>>> {
        let iov = libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        };
        let fd = self.file.as_raw_fd();
        // SAFETY: one iovec over a live buffer of `len` bytes (written to
        // only for a read, which passed it mutably); offset -1 is the
        // pipe's own position.
        let n = unsafe {
            if write {
                libc::pwritev2(fd, &iov, 1, -1, libc::RWF_NOWAIT)
            } else {
                libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT)
            }
        };
        if n >= 0 {
            return Some(Ok(Some(n as usize)));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::Interrupted => Some(Ok(None)),
            _ if nowait_unsupported(&e) => {
                self.nowait = false;
                None
            }
            _ => Some(Err(e)),
        }
    }

    /// Read what is there; `Ok(None)`: nothing yet (wait and try again).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        if self.nowait {
            if let Some(r) = self.try_nowait(buf.as_mut_ptr(), buf.len(), false) {
                return r;
            }
        }
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write what fits; `Ok(None)`: nothing fits yet (wait and try again).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<Option<usize>> {
        if self.nowait {
            // The pointer is only read from for a write.
            if let Some(r) = self.try_nowait(buf.as_ptr().cast_mut(), buf.len(), true) {
                return r;
            }
        }
        let len = if self.pipe {
            buf.len().min(libc::PIPE_BUF)
        } else {
            buf.len()
        };
        match self.file.write(&buf[..len]) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn upload_blocking(
    c: &Connect,
    key: &str,
    src: std::fs::File,
    length: u64,
    progress: Progress,
    cancel: Arc<AtomicBool>,
) -> Result<u64> {
    let start = |v: &StorageVol, s: &Stream| v.upload(s, 0, length, 0);
    let mut src = CallerIo::new(src);
    with_stream(c, key, start, |stream| {
        let mut buf = vec![0u8; CHUNK];
        let mut done: u64 = 0;
        while done < length {
            let want = usize::try_from(length - done).map_or(CHUNK, |r| r.min(CHUNK));
            let since = Instant::now();
            let n = loop {
                let idle = "the source sent nothing";
                wait_ready(src.fd(), libc::POLLIN, &cancel, since, IDLE_LIMIT, idle)?;
                match src.read(&mut buf[..want]) {
                    Ok(None) => continue,
                    Ok(Some(0)) => {
                        let why = format!("the source ended after {done} of {length} bytes");
                        return Err(Error::Failed(why));
                    }
                    Ok(Some(n)) => break n,
                    Err(e) => return Err(Error::Failed(format!("cannot read the source: {e}"))),
                }
            };
            let mut sent = 0;
            while sent < n {
                match stream.send(&buf[sent..n]) {
                    Ok(k) if k > 0 => sent += k as usize,
                    Ok(_) => return Err(Error::Failed(format!("volume {key} took no data"))),
                    Err(e) => return Err(from_virt(e, format!("cannot upload to volume {key}"))),
                }
            }
            done += n as u64;
            progress(done);
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(cancelled());
        }
        Ok(done)
    })
}

/// Write all of `buf` to the caller's `dst`, waiting while it takes
/// nothing (see [`wait_ready`]).
fn write_out(dst: &mut CallerIo, buf: &[u8], cancel: &AtomicBool) -> Result<()> {
    let write_error =
        |e: std::io::Error| Error::Failed(format!("cannot write the destination: {e}"));
    let mut off = 0;
    let mut since = Instant::now();
    while off < buf.len() {
        let idle = "the destination took nothing";
        wait_ready(dst.fd(), libc::POLLOUT, cancel, since, IDLE_LIMIT, idle)?;
        match dst.write(&buf[off..]).map_err(write_error)? {
            None => {}
            Some(0) => return Err(Error::Failed("the destination took no data".into())),
            Some(k) => {
                off += k;
                since = Instant::now();
            }
        }
    }
    Ok(())
}

fn download_blocking(
    c: &Connect,
    key: &str,
    dst: std::fs::File,
    progress: Progress,
    cancel: Arc<AtomicBool>,
) -> Result<u64> {
    let start = |v: &StorageVol, s: &Stream| v.download(s, 0, 0, 0);
    let mut dst = CallerIo::new(dst);
    with_stream(c, key, start, |stream| {
        let mut buf = vec![0u8; CHUNK];
        let mut done: u64 = 0;
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(cancelled());
            }
            let n = match stream.recv(&mut buf) {
                Ok(0) => break,
                Ok(n) if n > 0 => n as usize,
                Ok(_) => return Err(Error::Failed(format!("volume {key} gave no data"))),
                Err(e) => return Err(from_virt(e, format!("cannot download volume {key}"))),
            };
            write_out(&mut dst, &buf[..n], &cancel)?;
            done += n as u64;
            progress(done);
        }
        Ok(done)
    })
}

/// Define `xml`, then build, start and mark autostart as asked; any failure
/// destroys and undefines the pool again.
fn define_blocking(c: &Connect, xml: &str, build: bool, start: bool, auto: bool) -> Result<String> {
    let pool = c.define_storage_pool_xml(xml, 0).map_err(define_error)?;
    let steps = || -> Result<String> {
        let uuid = pool
            .uuid_string()
            .map_err(|e| from_virt(e, "cannot read the new pool's UUID"))?;
        if build && !start {
            pool.build(sys::VIR_STORAGE_POOL_BUILD_NEW)
                .map_err(|e| from_virt(e, "cannot build the storage pool"))?;
        }
        if start {
            pool.create(flag(build, sys::VIR_STORAGE_POOL_CREATE_WITH_BUILD))
                .map_err(|e| from_virt(e, "cannot start the storage pool"))?;
        }
        if auto {
            pool.set_autostart(true)
                .map_err(|e| from_virt(e, "cannot mark the storage pool autostart"))?;
        }
        Ok(uuid)
    };
    steps().inspect_err(|_| {
        if pool.is_active().unwrap_or(false) {
            if let Err(e) = pool.destroy() {
                log::warn!("cannot stop a half-created storage pool: {e}");
            }
        }
        if let Err(e) = pool.undefine() {
            log::warn!("cannot undefine a half-created storage pool: {e}");
        }
    })
}

fn undefine_blocking(c: &Connect, uuid: &str, delete_directory: bool) -> Result<()> {
    let pool = pool_by_uuid(c, uuid)?;
    let ctx = |what: &'static str| {
        let uuid = uuid.to_owned();
        move |e| from_virt(e, format!("cannot {what} storage pool {uuid}"))
    };
    if delete_directory {
        let xml = pool.xml_desc(0).map_err(ctx("read"))?;
        if parse_pool_xml(&xml)?.0 != "dir" {
            return Err(Error::InvalidArgument(
                "delete_directory: only a dir pool's directory can be removed".into(),
            ));
        }
        if !pool.is_persistent().map_err(ctx("read"))? {
            return Err(Error::InvalidState(format!(
                "storage pool {uuid} is transient: its directory cannot be removed"
            )));
        }
    }
    let was_active = pool.is_active().map_err(ctx("read"))?;
    if was_active {
        pool.destroy().map_err(ctx("stop"))?;
    }
    if delete_directory {
        if let Err(e) = pool.delete(sys::VIR_STORAGE_POOL_DELETE_NORMAL) {
            if was_active {
                if let Err(r) = pool.create(0) {
                    log::warn!("cannot restart storage pool {uuid}: {r}");
                }
            }
            return Err(from_virt(
                e,
                format!("cannot remove the directory of pool {uuid}"),
            ));
        }
    }
    match pool.undefine() {
        Err(e) if is_not_found(&e) => Ok(()), // transient: gone once stopped
        r => r.map_err(ctx("undefine")),
    }
}

impl Hypervisor {
    /// Every pool and the volumes of the active ones, sorted by name. A pool
    /// gone meanwhile is left out; one whose record or volumes cannot be
    /// read is left out too, and named in `skipped` (and logged).
    pub async fn storage_listing(&self) -> Result<StorageListing> {
        self.run(|c| {
            let pools = c
                .list_all_storage_pools(0)
                .map_err(|e| from_virt(e, "cannot list storage pools"))?;
            let mut out = StorageListing::default();
            for pool in &pools {
                let read = pool_record(pool).and_then(|rec| {
                    let vols = if lists_volumes(rec.state) {
                        volumes_of(pool, &rec.uuid, Unreadable::Fail)?
                    } else {
                        Vec::new()
                    };
                    Ok((rec, vols))
                });
                match read {
                    Ok((rec, vols)) => {
                        out.volumes.extend(vols);
                        out.pools.push(rec);
                    }
                    Err(Error::NotFound(_)) => {} // gone meanwhile
                    Err(e) => match pool.uuid_string() {
                        Ok(uuid) => {
                            log::debug!("cannot read storage pool {uuid} now: {e}");
                            out.skipped.push(uuid);
                        }
                        Err(u) => log::debug!("skipping a storage pool: {e} ({u})"),
                    },
                }
            }
            out.pools.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// One pool and its volumes (none when inactive); `None` if it is gone.
    /// Volumes that cannot be read (other than gone) are an error, never an
    /// empty list.
    pub async fn pool_listing(
        &self,
        uuid: &str,
    ) -> Result<Option<(PoolRecord, Vec<VolumeRecord>)>> {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            let found = pool_by_uuid(c, &uuid).and_then(|p| Ok((pool_record(&p)?, p)));
            let (rec, pool) = match found {
                Ok(f) => f,
                Err(Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let volumes = if lists_volumes(rec.state) {
                match volumes_of(&pool, &uuid, Unreadable::Fail) {
                    Ok(v) => v,
                    Err(Error::NotFound(_)) => return Ok(None),
                    Err(e) => return Err(e),
                }
            } else {
                Vec::new()
            };
            Ok(Some((rec, volumes)))
        })
        .await
    }

    /// Define a pool from `xml` and build, start and mark it autostart as
    /// asked: all or nothing. Returns its UUID. A name or source already
    /// taken is `Conflict`.
    pub async fn define_pool(
        &self,
        xml: String,
        build: bool,
        start: bool,
        autostart: bool,
    ) -> Result<String> {
        self.run(move |c| define_blocking(c, &xml, build, start, autostart))
            .await
    }

    /// Run `f` on the pool with this UUID; its error reads "cannot <what>
    /// storage pool <uuid>: …".
    async fn storage_pool_op<F>(&self, uuid: &str, what: &'static str, f: F) -> Result<()>
    where
        F: FnOnce(&StoragePool) -> VirtResult + Send + 'static,
    {
        let uuid = uuid.to_owned();
        self.run(move |c| {
            f(&pool_by_uuid(c, &uuid)?)
                .map_err(|e| from_virt(e, format!("cannot {what} storage pool {uuid}")))
        })
        .await
    }

    /// Run `f` on the volume with this key; its error reads "cannot <what>
    /// volume <key>: …".
    async fn storage_vol_op<F>(&self, key: &str, what: &'static str, f: F) -> Result<()>
    where
        F: FnOnce(&StorageVol) -> VirtResult + Send + 'static,
    {
        let key = key.to_owned();
        self.run(move |c| {
            f(&volume_by_key(c, &key)?)
                .map_err(|e| from_virt(e, format!("cannot {what} volume {key}")))
        })
        .await
    }

    /// Start a pool, building it first when `build`.
    pub async fn start_pool(&self, uuid: &str, build: bool) -> Result<()> {
        let flags = flag(build, sys::VIR_STORAGE_POOL_CREATE_WITH_BUILD);
        self.storage_pool_op(uuid, "start", move |p| p.create(flags))
            .await
    }

    /// Stop (destroy) a pool; its data stays.
    pub async fn stop_pool(&self, uuid: &str) -> Result<()> {
        self.storage_pool_op(uuid, "stop", |p| p.destroy()).await
    }

    /// Re-read a pool's volumes from its storage.
    pub async fn refresh_pool(&self, uuid: &str) -> Result<()> {
        self.storage_pool_op(uuid, "refresh", |p| p.refresh(0))
            .await
    }

    pub async fn set_pool_autostart(&self, uuid: &str, on: bool) -> Result<()> {
        self.storage_pool_op(uuid, "set autostart of", move |p| p.set_autostart(on))
            .await
    }

    /// Remove a pool: stop it if active, remove its (empty) directory when
    /// `delete_directory` (dir pools only), then undefine it. If the
    /// directory cannot be removed, the pool is restarted and stays defined.
    pub async fn undefine_pool(&self, uuid: &str, delete_directory: bool) -> Result<()> {
        let uuid = uuid.to_owned();
        self.run(move |c| undefine_blocking(c, &uuid, delete_directory))
            .await
    }

    /// Create a volume in a pool from `xml`; a name already taken is `Conflict`.
    pub async fn create_volume(&self, pool_uuid: &str, xml: String) -> Result<VolumeRecord> {
        let pool_uuid = pool_uuid.to_owned();
        self.session(move |s| s.create_volume(&pool_uuid, &xml, Preallocation::FromXml))
            .await
    }

    /// Create a volume in a pool from `xml`, filled with a copy of the volume
    /// `source_key` (which may be in another pool).
    pub async fn clone_volume(
        &self,
        pool_uuid: &str,
        xml: String,
        source_key: &str,
    ) -> Result<VolumeRecord> {
        let pool_uuid = pool_uuid.to_owned();
        let source_key = source_key.to_owned();
        self.session(move |s| s.clone_volume(&pool_uuid, &xml, &source_key, Preallocation::FromXml))
            .await
    }

    /// A volume's record, or `None` if it no longer exists.
    pub async fn volume_record(&self, key: &str) -> Result<Option<VolumeRecord>> {
        let key = key.to_owned();
        self.run(move |c| match volume_record_by_key(c, &key) {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    /// Set a volume's capacity; shrinking only when `shrink`.
    pub async fn resize_volume(&self, key: &str, capacity: u64, shrink: bool) -> Result<()> {
        let key = key.to_owned();
        self.session(move |s| s.resize_volume(&key, capacity, shrink))
            .await
    }

    /// Overwrite a volume's data with zeros.
    pub async fn wipe_volume(&self, key: &str) -> Result<()> {
        self.storage_vol_op(key, "wipe", |v| v.wipe(0)).await
    }

    pub async fn delete_volume(&self, key: &str) -> Result<()> {
        self.storage_vol_op(key, "delete", |v| v.delete(0)).await
    }

    /// Stream `length` bytes from `src` into the volume (from its start),
    /// calling `progress(bytes so far)` after each chunk. Setting `cancel`
    /// aborts the stream (`Failed("cancelled")`); so does a source that ends
    /// early. Returns the bytes sent.
    pub async fn upload_volume(
        &self,
        key: &str,
        src: std::fs::File,
        length: u64,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
        cancel: Arc<AtomicBool>,
    ) -> Result<u64> {
        let key = key.to_owned();
        self.run(move |c| upload_blocking(c, &key, src, length, progress, cancel))
            .await
    }

    /// Stream the whole volume into `dst`, with the progress and cancel rules
    /// of [`Self::upload_volume`]. Returns the bytes written.
    pub async fn download_volume(
        &self,
        key: &str,
        dst: std::fs::File,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
        cancel: Arc<AtomicBool>,
    ) -> Result<u64> {
        let key = key.to_owned();
        self.run(move |c| download_blocking(c, &key, dst, progress, cancel))
            .await
    }
}

/// The storage operations for one blocking section (see [`Session`]); the
/// async ones above are these, run on the blocking pool. Their errors say
/// what was being done, as the async ones' do (but a pool that
/// [`Session::pool_by_name`] cannot find is libvirt's own `NotFound`).
impl Session<'_> {
    /// The pool with this name; `NotFound` (libvirt's message) when there
    /// is none.
    pub fn pool_by_name(&self, name: &str) -> Result<PoolRecord> {
        let pool = self.conn.lookup_storage_pool_by_name(name).map_err(bare)?;
        pool_record(&pool)
    }

    /// Every pool; one that cannot be read is left out (and logged).
    pub fn pools(&self) -> Result<Vec<PoolRecord>> {
        let pools = self
            .conn
            .list_all_storage_pools(0)
            .map_err(|e| from_virt(e, "cannot list storage pools"))?;
        Ok(pools
            .iter()
            .filter_map(|p| match pool_record(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    log::debug!("skipping a storage pool: {e}");
                    None
                }
            })
            .collect())
    }

    /// Every volume of every active pool, each pool refreshed first (so a
    /// volume made behind libvirt's back counts); what cannot be read is
    /// left out.
    pub fn active_pool_volumes(&self) -> Vec<VolumeRecord> {
        let Ok(pools) = self
            .conn
            .list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for pool in pools {
            let _ = pool.refresh(0);
            let Ok(uuid) = pool.uuid_string() else {
                continue;
            };
            out.extend(volumes_of(&pool, &uuid, Unreadable::Skip).unwrap_or_default());
        }
        out
    }

    /// Create a volume in a pool from `xml`, its space set aside as
    /// `prealloc` says; a name already taken is `Conflict`.
    pub fn create_volume(
        &self,
        pool_uuid: &str,
        xml: &str,
        prealloc: Preallocation,
    ) -> Result<VolumeRecord> {
        let pool = pool_by_uuid(self.conn, pool_uuid)?;
        let vol = StorageVol::create_xml(&pool, xml, prealloc.flags(xml))
            .map_err(|e| from_virt(e, format!("cannot create a volume in pool {pool_uuid}")))?;
        volume_record_of(&vol, pool_uuid)
    }

    /// Create a volume in a pool from `xml`, filled with a copy of the
    /// volume `source_key` (which may be in another pool).
    pub fn clone_volume(
        &self,
        pool_uuid: &str,
        xml: &str,
        source_key: &str,
        prealloc: Preallocation,
    ) -> Result<VolumeRecord> {
        let pool = pool_by_uuid(self.conn, pool_uuid)?;
        let src = volume_by_key(self.conn, source_key)?;
        let vol = StorageVol::create_xml_from(&pool, xml, &src, prealloc.flags(xml))
            .map_err(|e| from_virt(e, format!("cannot copy volume {source_key}")))?;
        volume_record_of(&vol, pool_uuid)
    }

    /// Set a volume's capacity; shrinking only when `shrink`.
    pub fn resize_volume(&self, key: &str, capacity: u64, shrink: bool) -> Result<()> {
        let flags = flag(shrink, sys::VIR_STORAGE_VOL_RESIZE_SHRINK);
        volume_by_key(self.conn, key)?
            .resize(capacity, flags)
            .map_err(|e| from_virt(e, format!("cannot resize volume {key}")))
    }

    /// [`Hypervisor::upload_volume`] inside a blocking section.
    pub fn upload_volume(
        &self,
        key: &str,
        src: std::fs::File,
        length: u64,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
        cancel: Arc<AtomicBool>,
    ) -> Result<u64> {
        upload_blocking(self.conn, key, src, length, progress, cancel)
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
