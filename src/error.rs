//! The service-level error: what went wrong, in words a person can act on.
//!
//! Services and adapters return this type; the D-Bus layer maps each kind to one
//! `org.vapor.Virtualization.Error.*` name (see `dbus::errors`). Nothing here knows
//! about D-Bus.

/// One failure, classified by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The object named does not exist (VM, volume, pool, template …).
    #[error("{0}")]
    NotFound(String),
    /// A field or argument is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object exists but is in the wrong state for this operation.
    #[error("{0}")]
    InvalidState(String),
    /// Another object already has this name, or another request got there first.
    #[error("{0}")]
    Conflict(String),
    /// The request asks for more than this host allows: a configured limit,
    /// the host's own size, or a pool's free space.
    #[error("{0}")]
    LimitExceeded(String),
    /// The host, hypervisor or this build cannot do this.
    #[error("{0}")]
    NotSupported(String),
    /// A back end (libvirtd) is not reachable right now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The operation did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// Anything else; the message carries the underlying cause.
    #[error("{0}")]
    Failed(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The kind, as the last part of its D-Bus error name
    /// (`org.vapor.Virtualization.Error.Timeout` → `Timeout`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "NotFound",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::InvalidState(_) => "InvalidState",
            Error::Conflict(_) => "Conflict",
            Error::LimitExceeded(_) => "LimitExceeded",
            Error::NotSupported(_) => "NotSupported",
            Error::Unavailable(_) => "Unavailable",
            Error::Timeout(_) => "Timeout",
            Error::Failed(_) => "Failed",
        }
    }

    /// Prefix the message with what was being attempted, keeping the kind.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        let wrap = |m: String| format!("{what}: {m}");
        match self {
            Error::NotFound(m) => Error::NotFound(wrap(m)),
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::InvalidState(m) => Error::InvalidState(wrap(m)),
            Error::Conflict(m) => Error::Conflict(wrap(m)),
            Error::LimitExceeded(m) => Error::LimitExceeded(wrap(m)),
            Error::NotSupported(m) => Error::NotSupported(wrap(m)),
            Error::Unavailable(m) => Error::Unavailable(wrap(m)),
            Error::Timeout(m) => Error::Timeout(wrap(m)),
            Error::Failed(m) => Error::Failed(wrap(m)),
        }
    }
}
