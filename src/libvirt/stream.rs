//! Uploads and downloads of volume data through libvirt streams: the
//! blocking loops that move bytes between a stream and a caller's
//! descriptor, never blocking on a pipe the caller stopped serving
//! (`poll` with an idle limit, `preadv2`/`pwritev2` with `RWF_NOWAIT`),
//! and [`Hypervisor::upload_volume`]/[`Hypervisor::download_volume`] (and
//! [`Session::upload_volume`]) that run them.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::errors::from_virt;
use super::storage::{volume_by_key, VirtResult};
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
    let mut p = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }];
    wait_any(&mut p, cancel, since, limit, idle)
}

/// [`wait_ready`] on several descriptors at once (each `pollfd` names its
/// descriptor and events): returns when one is ready, its `revents` set.
/// The console bridge waits on its caller's socket and its wake-up
/// descriptor so.
pub(super) fn wait_any(
    fds: &mut [libc::pollfd],
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
        for p in fds.iter_mut() {
            p.revents = 0;
        }
        // SAFETY: `fds` is a valid array of pollfds on descriptors the
        // callers keep open.
        match unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } {
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
pub struct CallerIo {
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
    pub fn new(file: std::fs::File) -> Self {
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

    /// Read at most `buf.len()` bytes, waiting for them (see
    /// [`wait_ready`]: `cancel`, and at most [`IDLE_LIMIT`] without data);
    /// 0 at the end.
    pub fn read_some(&mut self, buf: &mut [u8], cancel: &AtomicBool) -> Result<usize> {
        let since = Instant::now();
        loop {
            let idle = "the source sent nothing";
            wait_ready(self.fd(), libc::POLLIN, cancel, since, IDLE_LIMIT, idle)?;
            match self.read(buf) {
                Ok(None) => continue,
                Ok(Some(n)) => return Ok(n),
                Err(e) => return Err(Error::Failed(format!("cannot read the caller's file: {e}"))),
            }
        }
    }

    /// Write all of `data`, waiting for room as [`Self::read_some`] waits.
    pub fn write_all_of(&mut self, mut data: &[u8], cancel: &AtomicBool) -> Result<()> {
        while !data.is_empty() {
            let since = Instant::now();
            let idle = "the destination took nothing";
            wait_ready(self.fd(), libc::POLLOUT, cancel, since, IDLE_LIMIT, idle)?;
            match self.write(data) {
                Ok(None) => {}
                Ok(Some(n)) => data = &data[n..],
                Err(e) => {
                    return Err(Error::Failed(format!(
                        "cannot write the caller's file: {e}"
                    )))
                }
            }
        }
        Ok(())
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

impl Hypervisor {
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

impl Session<'_> {
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
#[path = "stream_tests.rs"]
mod tests;
