//! Consoles of running VMs: the serial console and the graphical display
//! as file descriptors (for clients that can receive one, such as gtk-vnc
//! or `vaporctl console`), and console sockets for those that cannot (the
//! Cockpit bridge connects a browser's websocket to a Unix socket).
//!
//! A console socket lives in the console directory under an unguessable
//! name, belongs to the person who asked for it (mode 0600), and proxies
//! every connection to a fresh display descriptor or serial console of its
//! VM. Each connection's peer is checked to be that person (or root) once
//! more. A socket is removed when its VM stops, after the idle time without
//! a connection, and at start (what an earlier run left is stale); the same
//! person asking again for the same VM and kind gets the same socket. The
//! rules that decide (names, limits, idleness, peers) are the pure
//! functions at the top, tested in `console_tests.rs`.
//!
//! This service follows the model (`touched`): when a VM stops it removes
//! its sockets and ends its serial console sessions.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::libvirt::console::ConsoleHandle;
use crate::libvirt::DomainRecord;
use crate::model::Model;
use crate::{Error, Result};

/// Most console sockets one person may have at a time.
pub const MAX_SOCKETS_PER_USER: usize = 4;
/// Most console sockets one VM may have at a time (everyone's together).
pub const MAX_SOCKETS_PER_VM: usize = 8;
/// Most connections one console socket proxies at a time.
pub const MAX_CONNECTIONS_PER_SOCKET: usize = 4;

/// What a console socket leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleKind {
    /// The serial console.
    Serial,
    /// The graphical display (VNC or SPICE).
    Graphics,
}

impl ConsoleKind {
    /// `serial` or `graphics`; anything else is `InvalidArgument` naming
    /// `kind`. Pure.
    pub fn parse(kind: &str) -> Result<ConsoleKind> {
        match kind {
            "serial" => Ok(Self::Serial),
            "graphics" => Ok(Self::Graphics),
            _ => Err(Error::InvalidArgument(
                "kind: must be \"serial\" or \"graphics\"".into(),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Graphics => "graphics",
        }
    }
}

/// Whose socket to what: one socket per person, VM and kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketKey {
    pub uid: u32,
    pub uuid: String,
    pub kind: ConsoleKind,
}

/// A socket's file name: its kind and 128 random bits, so nobody can guess
/// another's. Pure.
/// Whether a file name is one [`socket_name`] makes. Pure.
pub fn is_socket_name(name: &str) -> bool {
    let hex = name
        .strip_prefix("serial-")
        .or_else(|| name.strip_prefix("graphics-"));
    hex.is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn socket_name(kind: ConsoleKind, random: u128) -> String {
    format!("{}-{random:032x}", kind.as_str())
}

/// Whether one more socket for `key` fits beside `existing` (sockets of
/// everyone): at most [`MAX_SOCKETS_PER_USER`] per person and
/// [`MAX_SOCKETS_PER_VM`] per VM; `LimitExceeded` saying which. Pure.
pub fn admit<'a>(existing: impl Iterator<Item = &'a SocketKey>, key: &SocketKey) -> Result<()> {
    let (mut mine, mut this_vm) = (0, 0);
    for k in existing {
        mine += usize::from(k.uid == key.uid);
        this_vm += usize::from(k.uuid == key.uuid);
    }
    if mine >= MAX_SOCKETS_PER_USER {
        return Err(Error::LimitExceeded(format!(
            "you have {mine} console sockets already, the most one person may have; \
             each goes away when its VM stops or when nobody connected to it for a while"
        )));
    }
    if this_vm >= MAX_SOCKETS_PER_VM {
        return Err(Error::LimitExceeded(format!(
            "this virtual machine has {this_vm} console sockets already, the most one may have"
        )));
    }
    Ok(())
}

/// Whether a socket last used at `last` with `connections` open has been
/// idle for `idle` at `now`. A socket with a connection never is. Pure.
pub fn idle_expired(last: Instant, now: Instant, connections: usize, idle: Duration) -> bool {
    connections == 0 && now.saturating_duration_since(last) >= idle
}

/// Whether a connection from `peer` may use a socket owned by `owner`.
/// Pure.
pub fn peer_allowed(peer: u32, owner: u32) -> bool {
    peer == owner || peer == 0
}

/// Whether a VM's consoles must close: it is gone or no longer runs. Pure.
pub fn console_gone(rec: Option<&DomainRecord>) -> bool {
    rec.is_none_or(|r| !r.state.is_active())
}

/// One console socket as the service keeps it.
struct Entry {
    /// Tells the socket's task apart from a later socket with the same key.
    id: u64,
    path: PathBuf,
    /// When it was last handed out or last lost a connection.
    last_used: Instant,
    connections: usize,
    /// Dropped to make the socket's task stop.
    _stop: watch::Sender<()>,
}

#[derive(Default)]
struct Registry {
    sockets: HashMap<SocketKey, Entry>,
    /// Serial console sessions by VM UUID, ended when the VM stops.
    sessions: HashMap<String, Vec<ConsoleHandle>>,
    next_id: u64,
}

/// The consoles of every VM. Construct with [`ConsoleService::new`], then
/// [`ConsoleService::prepare`] and [`ConsoleService::follow`] once.
pub struct ConsoleService {
    pub(super) model: Arc<Model>,
    dir: PathBuf,
    idle: Duration,
    /// Why no console socket can be made, when the directory is unusable.
    unusable: Mutex<Option<String>>,
    reg: Mutex<Registry>,
}

impl ConsoleService {
    /// Sockets go in `dir`, and away after `idle` without a connection.
    pub fn new(model: Arc<Model>, dir: PathBuf, idle: Duration) -> Arc<ConsoleService> {
        Arc::new(ConsoleService {
            model,
            dir,
            idle,
            unusable: Mutex::new(None),
            reg: Mutex::new(Registry::default()),
        })
    }

    fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Create the socket directory (mode 0711) and empty it. When that
    /// fails, vapord still runs; only console sockets are refused, saying
    /// why.
    pub fn prepare(&self) {
        let why = match prepare_dir(&self.dir) {
            Ok(0) => None,
            Ok(n) => {
                log::info!(
                    "removed {n} stale console sockets from {}",
                    self.dir.display()
                );
                None
            }
            Err(e) => {
                let why = format!(
                    "cannot prepare the console socket directory {}: {e}",
                    self.dir.display()
                );
                log::warn!("{why}");
                Some(why)
            }
        };
        *self.unusable.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Follow the model: close a VM's consoles when it stops or goes.
    pub fn follow(self: &Arc<Self>) {
        let mut touched = self.model.touched();
        let this = self.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match touched.recv().await {
                    Ok(uuid) => this.vm_changed(&uuid),
                    Err(RecvError::Lagged(_)) => this.recheck_all(),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    fn vm_changed(&self, uuid: &str) {
        if console_gone(self.model.get(uuid).as_deref()) {
            self.close_vm(uuid);
        }
    }

    /// Every VM with consoles, checked (after missed notices).
    fn recheck_all(&self) {
        let uuids: Vec<String> = {
            let reg = self.reg();
            let sockets = reg.sockets.keys().map(|k| k.uuid.clone());
            sockets.chain(reg.sessions.keys().cloned()).collect()
        };
        for uuid in uuids {
            self.vm_changed(&uuid);
        }
    }

    /// Remove the VM's sockets and end its serial console sessions.
    fn close_vm(&self, uuid: &str) {
        let mut reg = self.reg();
        let keys: Vec<SocketKey> = reg
            .sockets
            .keys()
            .filter(|k| k.uuid == uuid)
            .cloned()
            .collect();
        for key in keys {
            if let Some(entry) = reg.sockets.remove(&key) {
                remove_socket_file(&entry.path);
            }
        }
        for handle in reg.sessions.remove(uuid).unwrap_or_default() {
            handle.stop();
        }
    }

    /// The VM's record when it runs; else why `what` cannot be done.
    fn running(&self, uuid: &str, what: &str) -> Result<Arc<DomainRecord>> {
        let rec = self
            .model
            .get(uuid)
            .ok_or_else(|| Error::NotFound(format!("virtual machine {uuid} no longer exists")))?;
        if !rec.state.is_active() {
            return Err(Error::InvalidState(format!(
                "cannot {what} VM '{}': it is not running",
                rec.name
            )));
        }
        Ok(rec)
    }

    /// The serial console of a running VM as one end of a socket pair.
    /// `force` takes it over from another session.
    pub async fn open_console(&self, uuid: &str, force: bool) -> Result<OwnedFd> {
        let what = "open the serial console of";
        let rec = self.running(uuid, what)?;
        let console = self
            .model
            .hypervisor()
            .open_console(uuid, force)
            .await
            .map_err(|e| e.context(format!("cannot {what} VM '{}'", rec.name)))?;
        let mut reg = self.reg();
        let sessions = reg.sessions.entry(uuid.to_owned()).or_default();
        sessions.retain(|h| !h.is_finished());
        sessions.push(console.handle);
        drop(reg);
        // It may have stopped meanwhile, after its notice was handled.
        if console_gone(self.model.get(uuid).as_deref()) {
            self.close_vm(uuid);
        }
        Ok(console.fd)
    }

    /// A descriptor connected to a running VM's graphical display.
    pub async fn open_graphics(&self, uuid: &str) -> Result<OwnedFd> {
        let what = "open the graphical display of";
        let rec = self.running(uuid, what)?;
        self.model
            .hypervisor()
            .open_graphics(uuid)
            .await
            .map_err(|e| e.context(format!("cannot {what} VM '{}'", rec.name)))
    }

    /// The path of `uid`'s console socket for a running VM's `kind` of
    /// console: the existing one, or a new one within the limits.
    pub async fn console_socket(
        self: &Arc<Self>,
        uuid: &str,
        uid: u32,
        kind: ConsoleKind,
    ) -> Result<PathBuf> {
        let what = format!("make a {} console socket for", kind.as_str());
        let rec = self.running(uuid, &what)?;
        let context = |e: Error| e.context(format!("cannot {what} VM '{}'", rec.name));
        if let Some(why) = self
            .unusable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(context(Error::Unavailable(why)));
        }
        let hv = self.model.hypervisor();
        hv.check_console(uuid, kind == ConsoleKind::Graphics)
            .await
            .map_err(context)?;
        let key = SocketKey {
            uid,
            uuid: uuid.to_owned(),
            kind,
        };
        let (id, path, listener, stop) = {
            let mut reg = self.reg();
            if let Some(entry) = reg.sockets.get_mut(&key) {
                entry.last_used = Instant::now();
                return Ok(entry.path.clone());
            }
            admit(reg.sockets.keys(), &key).map_err(context)?;
            let path = self
                .dir
                .join(socket_name(kind, uuid::Uuid::new_v4().as_u128()));
            let listener = bind_socket(&path, uid).map_err(|e| {
                context(Error::Failed(format!(
                    "cannot create {}: {e}",
                    path.display()
                )))
            })?;
            let (tx, rx) = watch::channel(());
            reg.next_id += 1;
            let id = reg.next_id;
            let entry = Entry {
                id,
                path: path.clone(),
                last_used: Instant::now(),
                connections: 0,
                _stop: tx,
            };
            reg.sockets.insert(key.clone(), entry);
            (id, path, listener, rx)
        };
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                self.retire(&key, id);
                return Err(context(Error::Failed(format!("cannot listen: {e}"))));
            }
        };
        tokio::spawn(self.clone().serve(key, id, listener, stop));
        if console_gone(self.model.get(uuid).as_deref()) {
            self.close_vm(uuid);
            return Err(context(Error::InvalidState("it stopped".into())));
        }
        Ok(path)
    }

    /// Forget socket `id` of `key` and remove its file.
    pub(super) fn retire(&self, key: &SocketKey, id: u64) {
        let mut reg = self.reg();
        if reg.sockets.get(key).is_some_and(|e| e.id == id) {
            if let Some(entry) = reg.sockets.remove(key) {
                remove_socket_file(&entry.path);
            }
        }
    }

    /// How long socket `id` may still wait for a connection; `None` while
    /// it has one, or when it is gone.
    pub(super) fn idle_left(&self, key: &SocketKey, id: u64) -> Option<Duration> {
        let reg = self.reg();
        let e = reg.sockets.get(key).filter(|e| e.id == id)?;
        if e.connections > 0 {
            return None;
        }
        Some((e.last_used + self.idle).saturating_duration_since(Instant::now()))
    }

    /// Remove socket `id` when it has been idle long enough (decided under
    /// the lock a new request for it takes, so a path just handed out is
    /// never removed). True when it is gone.
    pub(super) fn retire_if_idle(&self, key: &SocketKey, id: u64) -> bool {
        let mut reg = self.reg();
        let Some(e) = reg.sockets.get(key).filter(|e| e.id == id) else {
            return true;
        };
        if !idle_expired(e.last_used, Instant::now(), e.connections, self.idle) {
            return false;
        }
        if let Some(entry) = reg.sockets.remove(key) {
            log::debug!("removing the idle console socket {}", entry.path.display());
            remove_socket_file(&entry.path);
        }
        true
    }

    /// Count a new connection on socket `id`; false when it has the most
    /// it may (or is gone).
    pub(super) fn connection_opened(&self, key: &SocketKey, id: u64) -> bool {
        let mut reg = self.reg();
        match reg.sockets.get_mut(key).filter(|e| e.id == id) {
            Some(e) if e.connections < MAX_CONNECTIONS_PER_SOCKET => {
                e.connections += 1;
                true
            }
            _ => false,
        }
    }

    pub(super) fn connection_closed(&self, key: &SocketKey, id: u64) {
        let mut reg = self.reg();
        if let Some(e) = reg.sockets.get_mut(key).filter(|e| e.id == id) {
            e.connections = e.connections.saturating_sub(1);
            e.last_used = Instant::now();
        }
    }
}

/// Create `dir` (mode 0711, the daemon's own) and empty it; returns how
/// many entries were removed. A path that is not a directory, or belongs to
/// someone else, is refused: nobody else may place sockets in it.
fn prepare_dir(dir: &Path) -> std::io::Result<usize> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => return Err(std::io::Error::other("it exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o711).create(dir)?;
        }
        Err(e) => return Err(e),
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let owner = std::fs::symlink_metadata(dir)?.uid();
    if owner != me {
        return Err(std::io::Error::other(format!(
            "it belongs to uid {owner}, not to vapord's user ({me})"
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    let mut removed = 0;
    // Only what vapord makes there: a wrong console_dir must not cost
    // anyone their files.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ours = entry.file_name().to_str().is_some_and(is_socket_name);
        if ours && entry.file_type()?.is_socket() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A listening socket at `path`, owned by `uid`, mode 0600. The directory
/// is the daemon's own (mode 0711), so nobody can change the path between
/// the steps; until the last one it is root's, which nobody else can use.
fn bind_socket(path: &Path, uid: u32) -> std::io::Result<std::os::unix::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    let finish = || -> std::io::Result<()> {
        // Mode first, while root still owns it: changing the mode of a file
        // owned by someone else needs CAP_FOWNER, which the unit does not keep.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(path, Some(uid), None)?;
        listener.set_nonblocking(true)
    };
    if let Err(e) = finish() {
        remove_socket_file(path);
        return Err(e);
    }
    Ok(listener)
}

fn remove_socket_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove the console socket {}: {e}", path.display()),
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
