//! The error names vapord replies with: `org.vapor.Virtualization.Error.*`,
//! one per [`crate::Error`] kind plus `NotAuthorized`, and the standard
//! `org.freedesktop.DBus.Error.InteractiveAuthorizationRequired` when polkit
//! would ask for a password but the caller did not allow interaction.

use zbus::message::{Header, Message};
use zbus::names::ErrorName;

pub const PREFIX: &str = "org.vapor.Virtualization.Error";

/// A method's failure as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    NotFound(String),
    InvalidArgument(String),
    InvalidState(String),
    Conflict(String),
    LimitExceeded(String),
    NotSupported(String),
    Unavailable(String),
    Timeout(String),
    Failed(String),
    NotAuthorized(String),
    InteractiveAuthorizationRequired(String),
}

/// One kind of failure: its name on the bus and the exit code `vaporctl`
/// gives it. The one table every error goes through (README lists it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    pub name: &'static str,
    pub exit_code: u8,
    /// For people: when it happens.
    pub meaning: &'static str,
}

const fn kind(name: &'static str, exit_code: u8, meaning: &'static str) -> ErrorKind {
    ErrorKind {
        name,
        exit_code,
        meaning,
    }
}

pub const NOT_FOUND: ErrorKind = kind(
    "org.vapor.Virtualization.Error.NotFound",
    3,
    "the object named does not exist",
);
pub const NOT_AUTHORIZED: ErrorKind = kind(
    "org.vapor.Virtualization.Error.NotAuthorized",
    4,
    "polkit said no",
);
pub const INTERACTIVE_AUTHORIZATION_REQUIRED: ErrorKind = kind(
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
    4,
    "polkit would ask for a password, but the call did not allow it",
);
pub const INVALID_STATE: ErrorKind = kind(
    "org.vapor.Virtualization.Error.InvalidState",
    5,
    "the object is in the wrong state (e.g. already running)",
);
pub const INVALID_ARGUMENT: ErrorKind = kind(
    "org.vapor.Virtualization.Error.InvalidArgument",
    6,
    "a field or argument is malformed; the message names it",
);
pub const CONFLICT: ErrorKind = kind(
    "org.vapor.Virtualization.Error.Conflict",
    7,
    "the name or file is taken, or another request got there first",
);
pub const NOT_SUPPORTED: ErrorKind = kind(
    "org.vapor.Virtualization.Error.NotSupported",
    8,
    "the host, hypervisor or this build cannot do it",
);
pub const LIMIT_EXCEEDED: ErrorKind = kind(
    "org.vapor.Virtualization.Error.LimitExceeded",
    9,
    "more than a configured limit, the host's own or a pool's free space",
);
pub const UNAVAILABLE: ErrorKind = kind(
    "org.vapor.Virtualization.Error.Unavailable",
    69,
    "libvirt (or polkit) is not reachable right now",
);
pub const TIMEOUT: ErrorKind = kind(
    "org.vapor.Virtualization.Error.Timeout",
    1,
    "it did not finish in time (also a polkit check that did not answer)",
);
pub const FAILED: ErrorKind = kind(
    "org.vapor.Virtualization.Error.Failed",
    1,
    "anything else; the message carries the cause",
);

/// Every error vapord sends.
pub const KINDS: &[ErrorKind] = &[
    NOT_FOUND,
    NOT_AUTHORIZED,
    INTERACTIVE_AUTHORIZATION_REQUIRED,
    INVALID_STATE,
    INVALID_ARGUMENT,
    CONFLICT,
    NOT_SUPPORTED,
    LIMIT_EXCEEDED,
    UNAVAILABLE,
    TIMEOUT,
    FAILED,
];

/// The exit code for an error name a client got: vapord's own, or the bus's
/// (no such object, access denied, bad arguments, vapord not running).
pub fn exit_code_for(name: &str) -> u8 {
    if let Some(k) = KINDS.iter().find(|k| k.name == name) {
        return k.exit_code;
    }
    match name.rsplit('.').next().unwrap_or("") {
        "UnknownObject" => NOT_FOUND.exit_code,
        "AccessDenied" => NOT_AUTHORIZED.exit_code,
        "InvalidArgs" => INVALID_ARGUMENT.exit_code,
        "ServiceUnknown" | "NameHasNoOwner" | "NoReply" => UNAVAILABLE.exit_code,
        _ => FAILED.exit_code,
    }
}

impl Error {
    fn parts(&self) -> (ErrorKind, &str) {
        match self {
            Error::NotFound(m) => (NOT_FOUND, m),
            Error::InvalidArgument(m) => (INVALID_ARGUMENT, m),
            Error::InvalidState(m) => (INVALID_STATE, m),
            Error::Conflict(m) => (CONFLICT, m),
            Error::LimitExceeded(m) => (LIMIT_EXCEEDED, m),
            Error::NotSupported(m) => (NOT_SUPPORTED, m),
            Error::Unavailable(m) => (UNAVAILABLE, m),
            Error::Timeout(m) => (TIMEOUT, m),
            Error::Failed(m) => (FAILED, m),
            Error::NotAuthorized(m) => (NOT_AUTHORIZED, m),
            Error::InteractiveAuthorizationRequired(m) => (INTERACTIVE_AUTHORIZATION_REQUIRED, m),
        }
    }

    /// This failure's kind: its bus name and exit code.
    pub fn kind(&self) -> ErrorKind {
        self.parts().0
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, msg) = self.parts();
        write!(f, "{}: {msg}", kind.name)
    }
}

impl std::error::Error for Error {}

impl zbus::DBusError for Error {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        let (kind, msg) = self.parts();
        // Messages may quote what a caller sent; the reply must stay a valid
        // bus message whatever that was.
        Message::error(call, kind.name).build(&(crate::text::for_bus(msg).as_ref(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.parts().0.name)
    }

    fn description(&self) -> Option<&str> {
        Some(self.parts().1)
    }
}

impl From<zbus::Error> for Error {
    fn from(e: zbus::Error) -> Self {
        Error::Failed(e.to_string())
    }
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        match e {
            E::NotFound(m) => Error::NotFound(m),
            E::InvalidArgument(m) => Error::InvalidArgument(m),
            E::InvalidState(m) => Error::InvalidState(m),
            E::Conflict(m) => Error::Conflict(m),
            E::LimitExceeded(m) => Error::LimitExceeded(m),
            E::NotSupported(m) => Error::NotSupported(m),
            E::Unavailable(m) => Error::Unavailable(m),
            E::Timeout(m) => Error::Timeout(m),
            E::Failed(m) => Error::Failed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn the_table_is_consistent_and_the_readme_lists_it() {
        let readme = include_str!("../../README.md");
        for k in KINDS {
            assert_eq!(exit_code_for(k.name), k.exit_code, "{}", k.name);
            let short = k.name.rsplit('.').next().unwrap();
            assert!(readme.contains(short), "README does not mention {short}");
        }
        let names: std::collections::HashSet<_> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KINDS.len(), "one entry per name");
        assert_eq!(
            exit_code_for("org.freedesktop.DBus.Error.ServiceUnknown"),
            69
        );
        assert_eq!(exit_code_for("org.freedesktop.DBus.Error.UnknownObject"), 3);
        assert_eq!(exit_code_for("something.Else"), 1);
    }

    #[test]
    fn service_errors_keep_their_kind_on_the_wire() {
        let e: Error = crate::Error::InvalidState("VM 'a' is not running".into()).into();
        assert_eq!(
            e.name().as_str(),
            "org.vapor.Virtualization.Error.InvalidState"
        );
        assert_eq!(e.description(), Some("VM 'a' is not running"));
        let e = Error::InteractiveAuthorizationRequired("x".into());
        assert_eq!(
            e.name().as_str(),
            "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
        );
    }
}
