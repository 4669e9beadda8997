//! The typed port for live migration: a connection to the destination
//! host for the checks before a migration (its host UUID, whether a domain
//! name is taken, its pools and volumes, CPU compatibility), the migration
//! itself (`virDomainMigrateToURI3` peer-to-peer, or `virDomainMigrate3`
//! driven from here), and switching a running migration to post-copy.

use std::mem::ManuallyDrop;

use virt::connect::Connect;
use virt::domain::MigrateParameters;
use virt_sys as sys;

use super::domain::DomainRef;
use super::errors::{bare, from_virt};
use super::xml::Element;
use super::Session;
use crate::{Error, Result};

/// How to migrate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateRequest {
    pub live: bool,
    /// Move a stopped VM's definition only.
    pub offline: bool,
    pub persistent: bool,
    pub undefine_source: bool,
    /// Copy every disk (`all`) or only what the destination's backing
    /// files lack (`incremental`); neither: shared storage.
    pub copy_all: bool,
    pub copy_incremental: bool,
    /// The disks (targets) to copy; empty: every writable one.
    pub disks: Vec<String>,
    pub tunnelled: bool,
    pub p2p: bool,
    pub auto_converge: bool,
    pub postcopy: bool,
    /// MiB/s; 0: unlimited.
    pub bandwidth_mib: u64,
    /// Compression methods (`xbzrle`, `zlib`, `zstd`, `mt`).
    pub compression: Vec<String>,
    /// Where the migration data goes (`tcp://host[:port]`), when not the
    /// destination's own choice.
    pub data_uri: Option<String>,
    /// The address the destination listens on for the data.
    pub listen_address: Option<String>,
}

impl MigrateRequest {
    /// libvirt's flags for this request. Pure.
    pub fn flags(&self) -> u32 {
        let mut f = sys::VIR_MIGRATE_ABORT_ON_ERROR;
        let set = |f: &mut u32, on: bool, flag: u32| {
            if on {
                *f |= flag;
            }
        };
        set(&mut f, self.live, sys::VIR_MIGRATE_LIVE);
        set(&mut f, self.offline, sys::VIR_MIGRATE_OFFLINE);
        set(&mut f, self.persistent, sys::VIR_MIGRATE_PERSIST_DEST);
        set(
            &mut f,
            self.undefine_source,
            sys::VIR_MIGRATE_UNDEFINE_SOURCE,
        );
        set(&mut f, self.copy_all, sys::VIR_MIGRATE_NON_SHARED_DISK);
        set(
            &mut f,
            self.copy_incremental,
            sys::VIR_MIGRATE_NON_SHARED_INC,
        );
        set(&mut f, self.tunnelled, sys::VIR_MIGRATE_TUNNELLED);
        set(
            &mut f,
            self.p2p || self.tunnelled,
            sys::VIR_MIGRATE_PEER2PEER,
        );
        set(&mut f, self.auto_converge, sys::VIR_MIGRATE_AUTO_CONVERGE);
        set(&mut f, self.postcopy, sys::VIR_MIGRATE_POSTCOPY);
        set(
            &mut f,
            !self.compression.is_empty(),
            sys::VIR_MIGRATE_COMPRESSED,
        );
        f
    }

    fn parameters(&self) -> MigrateParameters {
        MigrateParameters {
            uri: self.data_uri.clone(),
            listen_address: self.listen_address.clone(),
            bandwidth: (self.bandwidth_mib > 0).then_some(self.bandwidth_mib),
            migrate_disks: self.disks.clone(),
            compression: (!self.compression.is_empty()).then(|| self.compression.join(",")),
            ..Default::default()
        }
    }
}

/// The host UUID in a capabilities document. Pure.
pub fn host_uuid(capabilities: &str) -> Option<String> {
    let caps = Element::parse(capabilities).ok()?;
    caps.child("host")?
        .child_text("uuid")
        .map(str::to_owned)
        .filter(|u| !u.is_empty())
}

/// A connection to a migration's destination, closed when dropped.
pub struct Destination {
    conn: ManuallyDrop<Connect>,
    pub uri: String,
}

impl Drop for Destination {
    fn drop(&mut self) {
        // SAFETY: taken once; closing directly (the wrapper's Drop panics
        // when the peer has gone away).
        unsafe {
            let c = ManuallyDrop::take(&mut self.conn);
            let ptr = c.as_ptr();
            std::mem::forget(c);
            sys::virConnectClose(ptr);
        }
    }
}

impl Destination {
    /// Connect to `uri` (blocking).
    pub fn open(uri: &str) -> Result<Self> {
        let conn = Connect::open(Some(uri)).map_err(|e| {
            Error::Unavailable(format!(
                "destination: cannot connect to {uri}: {}",
                e.message()
            ))
        })?;
        let _ = conn.set_keep_alive(5, 3);
        Ok(Self {
            conn: ManuallyDrop::new(conn),
            uri: uri.to_owned(),
        })
    }

    pub fn host_uuid(&self) -> Result<Option<String>> {
        let caps = self
            .conn
            .capabilities()
            .map_err(|e| from_virt(e, "cannot read the destination's capabilities"))?;
        Ok(host_uuid(&caps))
    }

    pub fn hostname(&self) -> String {
        self.conn.hostname().unwrap_or_default()
    }

    /// Whether a domain with this name or UUID exists there.
    pub fn has_domain(&self, name: &str, uuid: &str) -> bool {
        self.conn.lookup_domain_by_name(name).is_ok()
            || self.conn.lookup_domain_by_uuid_string(uuid).is_ok()
    }

    /// The target directories of its running pools.
    pub fn pool_dirs(&self) -> Result<Vec<String>> {
        let pools = self
            .conn
            .list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            .map_err(|e| from_virt(e, "cannot list the destination's storage pools"))?;
        Ok(pools
            .iter()
            .filter_map(|p| p.xml_desc(0).ok())
            .filter_map(|x| {
                let el = Element::parse(&x).ok()?;
                el.child("target")?.child_text("path").map(str::to_owned)
            })
            .collect())
    }

    /// Re-read every running pool's volumes there from its storage, so
    /// [`Self::has_volume`] also sees files made behind libvirt's back (or
    /// by another host of a shared pool).
    pub fn refresh_pools(&self) {
        if let Ok(pools) = self
            .conn
            .list_all_storage_pools(sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        {
            for p in pools {
                let _ = p.refresh(0);
            }
        }
    }

    /// Whether a volume (a file a pool covers) exists there at `path`.
    pub fn has_volume(&self, path: &str) -> bool {
        self.conn.lookup_storage_vol_by_path(path).is_ok()
    }

    /// Delete the volume at `path` there unless a domain there uses it
    /// (the image a failed migration pre-created); whether it went.
    pub fn remove_unused_volume(&self, path: &str) -> Result<bool> {
        let Ok(vol) = self.conn.lookup_storage_vol_by_path(path) else {
            return Ok(false);
        };
        let domains = self
            .conn
            .list_all_domains(0)
            .map_err(|e| from_virt(e, "cannot list the destination's domains"))?;
        // Whatever cannot be read counts as using it: nothing is deleted
        // on a guess.
        let names = |k: &super::xml::Disk| match &k.source {
            super::xml::DiskSource::Path(p) => p == path,
            super::xml::DiskSource::Volume { pool, volume } => self
                .conn
                .lookup_storage_pool_by_name(pool)
                .and_then(|p| p.lookup_storage_vol_by_name(volume))
                .and_then(|v| v.path())
                .map_or(true, |p| p == path),
            _ => false,
        };
        let used = domains.iter().any(|d| {
            d.xml_desc(0).ok().is_none_or(|x| {
                Element::parse(&x)
                    .map_or(true, |el| super::xml::domain_disks(&el).iter().any(names))
            })
        });
        if used {
            return Ok(false);
        }
        vol.delete(0)
            .map_err(|e| from_virt(e, format!("cannot delete {path} there")))?;
        Ok(true)
    }

    /// Whether the destination can run a guest CPU described by `cpu_xml`
    /// (`<cpu>` of the domain) for this emulator, arch, machine and type:
    /// `Err(reason)` when libvirt finds it incompatible.
    pub fn cpu_compatible(
        &self,
        emulator: Option<&str>,
        arch: Option<&str>,
        machine: Option<&str>,
        virt_type: Option<&str>,
        cpu_xml: &str,
    ) -> Result<std::result::Result<(), String>> {
        let cs = |s: Option<&str>| s.and_then(|s| std::ffi::CString::new(s).ok());
        let (e, a, m, t) = (cs(emulator), cs(arch), cs(machine), cs(virt_type));
        let xml = std::ffi::CString::new(cpu_xml)
            .map_err(|_| Error::InvalidArgument("the CPU description holds a NUL".into()))?;
        let p = |c: &Option<std::ffi::CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: valid connection; NUL-terminated strings or NULL.
        let r = unsafe {
            sys::virConnectCompareHypervisorCPU(
                self.conn.as_ptr(),
                p(&e),
                p(&a),
                p(&m),
                p(&t),
                xml.as_ptr(),
                0,
            )
        };
        match r {
            sys::VIR_CPU_COMPARE_INCOMPATIBLE => Ok(Err(
                "libvirt finds the VM's CPU incompatible with the destination's".into(),
            )),
            sys::VIR_CPU_COMPARE_ERROR => {
                let e = virt::error::Error::last_error();
                Ok(Err(format!(
                    "libvirt cannot compare the CPUs: {}",
                    e.message()
                )))
            }
            _ => Ok(Ok(())),
        }
    }

    fn connect(&self) -> &Connect {
        &self.conn
    }
}

impl Session<'_> {
    /// This host's UUID.
    pub fn host_uuid(&self) -> Result<Option<String>> {
        let caps = self.conn.capabilities().map_err(bare)?;
        Ok(host_uuid(&caps))
    }
}

impl DomainRef {
    /// Migrate (blocking until it ends): peer-to-peer to `dest_uri`, or
    /// driven from here through `dest`.
    pub fn migrate(
        &self,
        dest_uri: &str,
        dest: Option<&Destination>,
        req: &MigrateRequest,
    ) -> Result<()> {
        let flags = req.flags();
        let params = req.parameters();
        if req.p2p || req.tunnelled {
            self.dom
                .migrate_to_uri3(Some(dest_uri), params, flags)
                .map_err(bare)
        } else {
            let d = dest.ok_or_else(|| {
                Error::Failed("a migration driven from here needs the destination".into())
            })?;
            self.dom
                .migrate3(d.connect(), params, flags)
                .map(|_| ())
                .map_err(bare)
        }
    }

    /// Switch a running migration to post-copy.
    pub fn start_postcopy(&self) -> Result<()> {
        // SAFETY: valid domain pointer.
        if unsafe { sys::virDomainMigrateStartPostCopy(self.dom.as_ptr(), 0) } < 0 {
            return Err(bare(virt::error::Error::last_error()));
        }
        Ok(())
    }

    /// The domain's `<cpu>`, emulator, arch, machine and type, for a CPU
    /// comparison on the destination.
    pub fn cpu_facts(&self) -> Result<CpuFacts> {
        let def = self.definition(super::Definition::Live)?;
        let os_type = def.child("os").and_then(|o| o.child("type"));
        Ok(CpuFacts {
            cpu: def.child("cpu").map(Element::to_xml),
            cpu_mode: def
                .child("cpu")
                .and_then(|c| c.attr("mode"))
                .unwrap_or("custom")
                .to_owned(),
            emulator: def
                .child("devices")
                .and_then(|d| d.child_text("emulator"))
                .map(str::to_owned),
            arch: os_type.and_then(|t| t.attr("arch")).map(str::to_owned),
            machine: os_type.and_then(|t| t.attr("machine")).map(str::to_owned),
            virt_type: def.attr("type").map(str::to_owned),
        })
    }
}

/// What a CPU comparison needs of a domain.
#[derive(Debug, Clone, Default)]
pub struct CpuFacts {
    pub cpu: Option<String>,
    pub cpu_mode: String,
    pub emulator: Option<String>,
    pub arch: Option<String>,
    pub machine: Option<String>,
    pub virt_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_uuid_is_read_from_capabilities() {
        let caps = "<capabilities><host><uuid>5e9c0b9a-0000-4000-8000-000000000001</uuid><cpu/></host></capabilities>";
        assert_eq!(
            host_uuid(caps).as_deref(),
            Some("5e9c0b9a-0000-4000-8000-000000000001")
        );
        assert_eq!(host_uuid("<capabilities><host/></capabilities>"), None);
    }

    #[test]
    fn flags_follow_the_request() {
        let r = MigrateRequest {
            live: true,
            persistent: true,
            undefine_source: true,
            copy_all: true,
            p2p: true,
            ..Default::default()
        };
        let f = r.flags();
        for flag in [
            sys::VIR_MIGRATE_LIVE,
            sys::VIR_MIGRATE_PERSIST_DEST,
            sys::VIR_MIGRATE_UNDEFINE_SOURCE,
            sys::VIR_MIGRATE_NON_SHARED_DISK,
            sys::VIR_MIGRATE_PEER2PEER,
            sys::VIR_MIGRATE_ABORT_ON_ERROR,
        ] {
            assert_ne!(f & flag, 0, "{flag}");
        }
        assert_eq!(f & sys::VIR_MIGRATE_POSTCOPY, 0);
        let t = MigrateRequest {
            tunnelled: true,
            ..Default::default()
        };
        assert_ne!(
            t.flags() & sys::VIR_MIGRATE_PEER2PEER,
            0,
            "tunnelled implies p2p"
        );
    }
}
