//! Maps libvirt's error codes onto [`crate::Error`] kinds, keeping their meaning
//! (a missing domain stays "not found", a domain in the wrong state stays
//! "invalid state") instead of flattening them into one generic failure.

use crate::Error;
use virt::error::ErrorNumber as N;

/// Classify a libvirt error and prefix its message with what we were doing.
pub fn from_virt(e: virt::error::Error, what: impl std::fmt::Display) -> Error {
    let msg = format!("{what}: {}", e.message());
    classify(&e, msg)
}

/// Classify a libvirt error, keeping libvirt's own message. The typed
/// blocking operations (see [`super::Session`]) return these; callers say
/// what they were doing with [`Error::context`], which gives exactly what
/// [`from_virt`] would.
pub fn bare(e: virt::error::Error) -> Error {
    let msg = e.message().to_owned();
    classify(&e, msg)
}

fn classify(e: &virt::error::Error, msg: String) -> Error {
    match e.code().unwrap_or(N::InternalError) {
        N::NoDomain
        | N::NoStoragePool
        | N::NoStorageVolume
        | N::NoNetwork
        | N::NoDomainSnapshot
        | N::NoDomainMetadata
        | N::NoDomainCheckpoint
        | N::NoNodeDevice
        | N::NoSecret => Error::NotFound(msg),
        N::OperationInvalid => Error::InvalidState(msg),
        N::InvalidArg | N::XmlError | N::XmlDetail | N::ConfigUnsupported | N::InvalidMac => {
            Error::InvalidArgument(msg)
        }
        N::DomExist | N::StorageVolExist | N::NetworkExist | N::MultipleDomains => {
            Error::Conflict(msg)
        }
        N::NoSupport | N::OperationUnsupported | N::ArgumentUnsupported => Error::NotSupported(msg),
        N::OperationTimeout | N::AgentUnresponsive => Error::Timeout(msg),
        N::NoConnect | N::InvalidConn | N::Rpc => Error::Unavailable(msg),
        _ => Error::Failed(msg),
    }
}

/// Whether this libvirt error means the object is simply gone.
pub fn is_not_found(e: &virt::error::Error) -> bool {
    matches!(
        e.code().unwrap_or(N::InternalError),
        N::NoDomain | N::NoStorageVolume | N::NoStoragePool
    )
}
