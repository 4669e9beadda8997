//! The decisions behind a live migration, as pure functions: which
//! destinations a caller may name ([`destination_uri`]), the options
//! ([`CopyStorage`], [`check_data_uri`], [`check_compression`]) and the
//! checks before anything starts ([`precheck`]), each refusal saying why.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// The libvirt transports a caller may name in a destination URI.
const SCHEMES: &[&str] = &[
    "qemu+tcp",
    "qemu+tls",
    "qemu+ssh",
    "qemu+libssh",
    "qemu+libssh2",
];
/// Compression methods libvirt's migration knows.
const COMPRESSION: &[&str] = &["xbzrle", "mt", "zlib", "zstd"];

/// The libvirt URI of a destination: a host configured in `vapord.toml`
/// by name, or (only with `unlisted`: vapord connects as root, with
/// root's keys and certificates, so by default callers cannot point it at
/// hosts the administrator did not list) a remote URI given whole. A
/// caller's URI may not carry parameters (`?socket=`, `?command=`,
/// `?keyfile=` … would make vapord open local sockets, run commands or
/// read keys). Pure.
pub fn destination_uri(
    dest: &str,
    hosts: &BTreeMap<String, String>,
    unlisted: bool,
) -> Result<String> {
    if let Some(uri) = hosts.get(dest) {
        return Ok(uri.clone());
    }
    let uri = remote_uri(dest)?;
    if !unlisted {
        return Err(Error::InvalidArgument(format!(
            "destination: '{}' is not a host configured in vapord.toml ([hosts]: {}); \
             other URIs only with allow_unlisted_destinations",
            crate::text::for_bus(dest),
            if hosts.is_empty() {
                "none".to_owned()
            } else {
                hosts.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        )));
    }
    Ok(uri)
}

/// A caller's remote libvirt URI, checked. Pure.
fn remote_uri(dest: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "destination: '{}' {why}",
            crate::text::for_bus(dest)
        )))
    };
    if dest.is_empty() || dest.len() > 1024 {
        return bad("must be a configured host name or a libvirt URI of at most 1024 bytes");
    }
    let Some((scheme, rest)) = dest.split_once("://") else {
        return bad("is neither a configured host nor a libvirt URI (qemu+tcp://host/system …)");
    };
    if !SCHEMES.contains(&scheme) {
        return bad(&format!(
            "uses the transport {scheme}; use one of {}",
            SCHEMES.join(", ")
        ));
    }
    if dest.contains(['?', '#']) || dest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad(
            "may not carry parameters, a fragment or spaces (configure such a host in vapord.toml)",
        );
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        return bad("names no host");
    }
    if path != "system" {
        return bad("must end in /system (vapord migrates to system instances)");
    }
    Ok(dest.to_owned())
}

/// What storage a migration copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStorage {
    /// Shared storage: the destination reads the same files.
    None,
    All,
    /// Only what is not in the destination's backing files.
    Incremental,
}

impl CopyStorage {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            "incremental" => Ok(Self::Incremental),
            other => Err(Error::InvalidArgument(format!(
                "copy_storage: '{}' is not one of none, all, incremental",
                crate::text::for_bus(other)
            ))),
        }
    }
}

/// `migrate_uri`: where the data goes, `tcp://host[:port]`. Pure.
pub fn check_data_uri(uri: &str) -> Result<()> {
    let ok = uri.strip_prefix("tcp://").is_some_and(|rest| {
        // An IPv6 address goes in brackets (else its port is ambiguous).
        (rest.starts_with('[') || rest.matches(':').count() <= 1)
            && !rest.is_empty()
            && rest.len() <= 255
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "migrate_uri: '{}' is not tcp://host[:port]",
            crate::text::for_bus(uri)
        )))
    }
}

/// The address the destination listens on for a checked `migrate_uri`:
/// its host (the data goes there, so the destination's QEMU and disk
/// server listen there and nowhere else). Pure.
pub fn listen_address(data_uri: &str) -> Option<String> {
    let rest = data_uri.strip_prefix("tcp://")?;
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => rest.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// `compression`: a comma-separated list of methods. Pure.
pub fn check_compression(list: &str) -> Result<Vec<String>> {
    let methods: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    match methods.iter().find(|m| !COMPRESSION.contains(&m.as_str())) {
        Some(m) => Err(Error::InvalidArgument(format!(
            "compression: '{}' is not one of {}",
            crate::text::for_bus(m),
            COMPRESSION.join(", ")
        ))),
        None => Ok(methods),
    }
}

/// What the checks before a migration know.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub local_host_uuid: Option<String>,
    pub dest_host_uuid: Option<String>,
    pub dest_hostname: String,
    /// A domain with the VM's name or UUID exists on the destination.
    pub name_taken: bool,
    pub vm_name: String,
    /// Disks to copy: (target, file).
    pub copied: Vec<(String, String)>,
    /// Of those, the ones whose file the destination already has (shared
    /// storage, or another VM's image there): (target, file).
    pub copied_present: Vec<(String, String)>,
    /// With `copy_storage` incremental: the bases of copied disks the
    /// destination lacks (target, file).
    pub missing_bases: Vec<(String, String)>,
    /// Running pools' directories on the destination.
    pub dest_pool_dirs: Vec<String>,
    /// Files the VM uses that are not copied: (target, file, present on
    /// the destination).
    pub shared: Vec<(String, String, bool)>,
    /// libvirt's CPU comparison: why the CPU is incompatible, if it is.
    pub cpu_problem: Option<String>,
}

/// Whether `file` lies directly in one of `dirs`.
fn covered(file: &str, dirs: &[String]) -> bool {
    let parent = std::path::Path::new(file).parent();
    dirs.iter()
        .any(|d| parent == Some(std::path::Path::new(d.trim_end_matches('/'))))
}

/// The first reason a migration cannot work, before it starts. Pure.
pub fn precheck(f: &Facts) -> Result<()> {
    if let (Some(a), Some(b)) = (&f.local_host_uuid, &f.dest_host_uuid) {
        if a == b {
            return Err(Error::InvalidArgument(format!(
                "destination: {} is this host (host UUID {a})",
                f.dest_hostname
            )));
        }
    }
    if f.name_taken {
        return Err(Error::Conflict(format!(
            "destination: {} already has a VM named '{}' (or with its UUID)",
            f.dest_hostname, f.vm_name
        )));
    }
    if let Some((t, file)) = f.copied_present.first() {
        return Err(Error::Conflict(format!(
            "copy_storage: {} already has {file} (disk {t}); the copy would write over it. \
             If the hosts share that storage, migrate without copy_storage",
            f.dest_hostname
        )));
    }
    if let Some((t, file)) = f
        .copied
        .iter()
        .find(|(_, p)| !covered(p, &f.dest_pool_dirs))
    {
        return Err(Error::InvalidState(format!(
            "copy_storage: no running pool on {} covers {} (disk {t}); define one over \
             that directory there so the copy can be made",
            f.dest_hostname,
            std::path::Path::new(file)
                .parent()
                .map_or(file.as_str(), |p| p.to_str().unwrap_or(file))
        )));
    }
    if let Some((t, file)) = f.missing_bases.first() {
        return Err(Error::InvalidState(format!(
            "copy_storage: incremental copies only disk {t}'s top image, and its base {file} \
             is not on {} (copy it there, or use copy_storage all)",
            f.dest_hostname
        )));
    }
    if let Some((t, file, _)) = f.shared.iter().find(|(_, _, present)| !present) {
        return Err(Error::InvalidState(format!(
            "disk {t}: {file} is not on {} (copy the storage with copy_storage, or eject the \
             media)",
            f.dest_hostname
        )));
    }
    if let Some(why) = &f.cpu_problem {
        return Err(Error::NotSupported(format!(
            "destination: {why} (on {})",
            f.dest_hostname
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "migration_rules_tests.rs"]
mod tests;
