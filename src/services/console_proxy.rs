//! The task behind each console socket of [`ConsoleService`]: accept
//! connections, check who is calling, and join each one to a fresh
//! display descriptor or serial console of the socket's VM; remove the
//! socket when it has been idle long enough or when the service drops it
//! (its VM stopped).

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::console::{peer_allowed, ConsoleKind, ConsoleService, SocketKey};
use crate::Result;

/// A wait long enough to mean "until something else happens".
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A descriptor the proxy can wait on.
fn async_stream(fd: OwnedFd) -> std::io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

impl ConsoleService {
    /// Serve socket `id` of `key` until it is idle for too long or `stop`
    /// closes (the service dropped it); then end its connections and remove it.
    pub(super) async fn serve(
        self: std::sync::Arc<Self>,
        key: SocketKey,
        id: u64,
        listener: tokio::net::UnixListener,
        mut stop: watch::Receiver<()>,
    ) {
        let mut proxies = JoinSet::new();
        loop {
            let idle_left = self.idle_left(&key, id);
            tokio::select! {
                // Only ever closes: the socket was dropped.
                _ = stop.changed() => break,
                _ = tokio::time::sleep(idle_left.unwrap_or(FOREVER)), if idle_left.is_some() => {
                    if self.retire_if_idle(&key, id) {
                        return;
                    }
                }
                Some(_) = proxies.join_next() => self.connection_closed(&key, id),
                accepted = listener.accept() => match accepted {
                    Ok((conn, _)) => {
                        if self.admit_connection(&key, id, &conn) {
                            proxies.spawn(self.clone().proxy(key.clone(), conn));
                        }
                    }
                    Err(e) => {
                        log::warn!("console socket of {}: cannot accept: {e}", key.uuid);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        proxies.abort_all();
        self.retire(&key, id);
    }

    /// Whether this connection may go on: its peer is the socket's owner
    /// (or root), and the socket has room for one more.
    fn admit_connection(&self, key: &SocketKey, id: u64, conn: &UnixStream) -> bool {
        match conn.peer_cred() {
            Ok(cred) if peer_allowed(cred.uid(), key.uid) => {}
            Ok(cred) => {
                log::warn!(
                    "uid {} connected to the console socket of uid {}; refused",
                    cred.uid(),
                    key.uid
                );
                return false;
            }
            Err(e) => {
                log::warn!("cannot tell who connected to a console socket ({e}); refused");
                return false;
            }
        }
        if !self.connection_opened(key, id) {
            log::info!(
                "console socket of {} has the most connections it may; refused one",
                key.uuid
            );
            return false;
        }
        true
    }

    /// What a new connection is joined to.
    async fn open_target(&self, key: &SocketKey) -> Result<UnixStream> {
        let fd = match key.kind {
            ConsoleKind::Graphics => self.open_graphics(&key.uuid).await?,
            ConsoleKind::Serial => self.open_console(&key.uuid, false).await?,
        };
        async_stream(fd).map_err(|e| crate::Error::Failed(format!("cannot proxy the console: {e}")))
    }

    /// Join one connection to its console until either side closes.
    async fn proxy(self: std::sync::Arc<Self>, key: SocketKey, mut conn: UnixStream) {
        let mut target = match self.open_target(&key).await {
            Ok(t) => t,
            Err(e) => {
                log::info!("console socket: {e}");
                // A terminal shows why; a display client only sees the end.
                if key.kind == ConsoleKind::Serial {
                    let _ = conn.write_all(format!("vapord: {e}\r\n").as_bytes()).await;
                }
                return;
            }
        };
        let (mut from_caller, mut to_caller) = conn.split();
        let (mut from_console, mut to_console) = target.split();
        // Either side ending ends both: a serial console only ends when its
        // socket is closed, not when one direction is.
        tokio::select! {
            _ = tokio::io::copy(&mut from_caller, &mut to_console) => {}
            _ = tokio::io::copy(&mut from_console, &mut to_caller) => {}
        }
    }
}
