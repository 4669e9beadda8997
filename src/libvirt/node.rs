//! Facts about the host libvirt runs on, read through libvirt (so they hold
//! for a remote host too).

use virt::connect::Connect;
use virt_sys as sys;

use super::xml::Element;
use super::Session;

/// The host's physical memory in KiB (`virNodeGetMemoryStats`, "total": the
/// kernel's MemTotal). `virNodeGetInfo`'s figure is not used: it sums NUMA
/// nodes and misses hot-plugged memory.
pub fn memory_total_kib(conn: &Connect) -> Option<u64> {
    let mut n: std::os::raw::c_int = 0;
    // SAFETY: a null params pointer asks only for the number of fields.
    let r = unsafe {
        sys::virNodeGetMemoryStats(
            conn.as_ptr(),
            sys::VIR_NODE_MEMORY_STATS_ALL_CELLS,
            std::ptr::null_mut(),
            &mut n,
            0,
        )
    };
    if r < 0 || n <= 0 || n > 64 {
        return None;
    }
    let mut params: Vec<sys::_virNodeMemoryStats> = (0..n)
        .map(|_| sys::_virNodeMemoryStats {
            field: [0; 80],
            value: 0,
        })
        .collect();
    // SAFETY: `params` has room for `n` entries, as libvirt asked.
    let r = unsafe {
        sys::virNodeGetMemoryStats(
            conn.as_ptr(),
            sys::VIR_NODE_MEMORY_STATS_ALL_CELLS,
            params.as_mut_ptr(),
            &mut n,
            0,
        )
    };
    if r < 0 {
        return None;
    }
    params.iter().take(n.max(0) as usize).find_map(|p| {
        // SAFETY: libvirt NUL-terminates the field name within its 80 bytes.
        let name = unsafe { std::ffi::CStr::from_ptr(p.field.as_ptr()) };
        (name.to_bytes() == b"total").then_some(p.value)
    })
}

/// Whether libvirt's capabilities document offers KVM for x86_64 guests. Pure.
pub fn offers_kvm(caps: &Element) -> bool {
    caps.children_named("guest").any(|g| {
        g.child("arch").is_some_and(|a| {
            a.attr("name") == Some("x86_64")
                && a.children_named("domain")
                    .any(|d| d.attr("type") == Some("kvm"))
        })
    })
}

/// Facts about the host, for one blocking section.
impl Session<'_> {
    /// The host's physical memory in KiB ([`memory_total_kib`], else
    /// `virNodeGetInfo`'s figure); `None` when libvirt cannot tell.
    pub fn host_memory_kib(&self) -> Option<u64> {
        memory_total_kib(self.conn).or_else(|| self.conn.node_info().ok().map(|n| n.memory))
    }

    /// The most vCPUs one KVM guest may have (any guest, when libvirt
    /// cannot say for KVM); `None` when libvirt cannot tell.
    pub fn max_vcpus(&self) -> Option<u32> {
        self.conn
            .max_vcpus(Some("kvm"))
            .or_else(|_| self.conn.max_vcpus(None))
            .ok()
    }

    /// The domain type for new x86_64 guests: `kvm` when libvirt offers it,
    /// else `qemu` (TCG).
    pub fn domain_type(&self) -> &'static str {
        let kvm = self
            .conn
            .capabilities()
            .ok()
            .and_then(|x| Element::parse(&x).ok())
            .is_some_and(|caps| offers_kvm(&caps));
        if kvm {
            "kvm"
        } else {
            "qemu"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_is_offered_only_for_x86_64_guests_with_a_kvm_domain() {
        let caps = |arch: &str, domain: &str| {
            Element::parse(&format!(
                "<capabilities><host/><guest><os_type>hvm</os_type>\
                 <arch name='{arch}'><domain type='qemu'/><domain type='{domain}'/></arch>\
                 </guest></capabilities>"
            ))
            .unwrap()
        };
        assert!(offers_kvm(&caps("x86_64", "kvm")));
        assert!(!offers_kvm(&caps("x86_64", "qemu")));
        assert!(!offers_kvm(&caps("aarch64", "kvm")));
        assert!(!offers_kvm(&Element::parse("<capabilities/>").unwrap()));
    }
}
