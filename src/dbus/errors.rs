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

impl Error {
    /// Every error name vapord can send (for docs and tests).
    pub const NAMES: &'static [&'static str] = &[
        "org.vapor.Virtualization.Error.NotFound",
        "org.vapor.Virtualization.Error.InvalidArgument",
        "org.vapor.Virtualization.Error.InvalidState",
        "org.vapor.Virtualization.Error.Conflict",
        "org.vapor.Virtualization.Error.NotSupported",
        "org.vapor.Virtualization.Error.Unavailable",
        "org.vapor.Virtualization.Error.Timeout",
        "org.vapor.Virtualization.Error.Failed",
        "org.vapor.Virtualization.Error.NotAuthorized",
        "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
        "org.vapor.Virtualization.Error.LimitExceeded",
    ];

    fn parts(&self) -> (&'static str, &str) {
        let n = Self::NAMES;
        match self {
            Error::NotFound(m) => (n[0], m),
            Error::InvalidArgument(m) => (n[1], m),
            Error::InvalidState(m) => (n[2], m),
            Error::Conflict(m) => (n[3], m),
            Error::NotSupported(m) => (n[4], m),
            Error::Unavailable(m) => (n[5], m),
            Error::Timeout(m) => (n[6], m),
            Error::Failed(m) => (n[7], m),
            Error::NotAuthorized(m) => (n[8], m),
            Error::InteractiveAuthorizationRequired(m) => (n[9], m),
            Error::LimitExceeded(m) => (n[10], m),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, msg) = self.parts();
        write!(f, "{name}: {msg}")
    }
}

impl std::error::Error for Error {}

impl zbus::DBusError for Error {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        let (name, msg) = self.parts();
        // Messages may quote what a caller sent; the reply must stay a valid
        // bus message whatever that was.
        Message::error(call, name).build(&(crate::text::for_bus(msg).as_ref(),))
    }

    fn name(&self) -> ErrorName<'_> {
        ErrorName::from_static_str_unchecked(self.parts().0)
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
