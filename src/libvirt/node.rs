//! Facts about the host libvirt runs on, read through libvirt (so they hold
//! for a remote host too).

use virt::connect::Connect;
use virt_sys as sys;

use super::xml::Element;
use super::Session;

/// The host's memory as the kernel counts it (`virNodeGetMemoryStats` over
/// all NUMA cells), KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMemory {
    /// MemTotal.
    pub total_kib: u64,
    pub free_kib: u64,
    pub buffers_kib: u64,
    pub cached_kib: u64,
}

impl HostMemory {
    /// What programs use: neither free nor page cache nor buffers (as
    /// `free` counts "used").
    pub fn used_kib(&self) -> u64 {
        self.total_kib
            .saturating_sub(self.free_kib)
            .saturating_sub(self.buffers_kib)
            .saturating_sub(self.cached_kib)
    }
}

/// The host's cumulative CPU times over all CPUs (`virNodeGetCPUStats`),
/// nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCpuTimes {
    pub kernel_ns: u64,
    pub user_ns: u64,
    pub idle_ns: u64,
    pub iowait_ns: u64,
}

impl HostCpuTimes {
    /// Time spent running something.
    pub fn busy_ns(&self) -> u64 {
        self.kernel_ns.saturating_add(self.user_ns)
    }

    /// All time accounted for.
    pub fn total_ns(&self) -> u64 {
        self.busy_ns()
            .saturating_add(self.idle_ns)
            .saturating_add(self.iowait_ns)
    }
}

/// One of libvirt's node statistics arrays (`{char field[80]; unsigned
/// long long value}`) as (name, value) pairs: `query(params, nparams)` is
/// called first with no buffer to learn the size, then to fill it.
fn node_stats(
    query: impl Fn(*mut sys::_virNodeMemoryStats, *mut std::os::raw::c_int) -> i32,
) -> Option<Vec<(String, u64)>> {
    let mut n: std::os::raw::c_int = 0;
    if query(std::ptr::null_mut(), &mut n) < 0 || n <= 0 || n > 64 {
        return None;
    }
    let mut params: Vec<sys::_virNodeMemoryStats> = (0..n)
        .map(|_| sys::_virNodeMemoryStats {
            field: [0; 80],
            value: 0,
        })
        .collect();
    if query(params.as_mut_ptr(), &mut n) < 0 {
        return None;
    }
    let fields = params.iter().take(n.clamp(0, params.len() as i32) as usize);
    Some(
        fields
            .map(|p| {
                // libvirt NUL-terminates the name within its 80 bytes.
                let end = p.field.iter().position(|&c| c == 0).unwrap_or(80);
                let name: Vec<u8> = p.field[..end].iter().map(|&c| c as u8).collect();
                (String::from_utf8_lossy(&name).into_owned(), p.value)
            })
            .collect(),
    )
}

/// The value of `name` among node statistics (0 when absent).
fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}

/// The host's memory (`virNodeGetMemoryStats`); `None` when libvirt cannot
/// tell (or reports no total).
pub fn host_memory(conn: &Connect) -> Option<HostMemory> {
    let stats = node_stats(|params, n| {
        // SAFETY: `params` is null (size query) or has room for `*n` entries.
        unsafe {
            sys::virNodeGetMemoryStats(
                conn.as_ptr(),
                sys::VIR_NODE_MEMORY_STATS_ALL_CELLS,
                params,
                n,
                0,
            )
        }
    })?;
    let m = HostMemory {
        total_kib: stat(&stats, "total"),
        free_kib: stat(&stats, "free"),
        buffers_kib: stat(&stats, "buffers"),
        cached_kib: stat(&stats, "cached"),
    };
    (m.total_kib > 0).then_some(m)
}

/// The host's CPU times over all CPUs (`virNodeGetCPUStats`); `None` when
/// libvirt cannot tell.
pub fn host_cpu_times(conn: &Connect) -> Option<HostCpuTimes> {
    let stats = node_stats(|params, n| {
        // SAFETY: as above; both stats structs have the same layout
        // (`char field[80]; unsigned long long value`).
        unsafe {
            sys::virNodeGetCPUStats(
                conn.as_ptr(),
                sys::VIR_NODE_CPU_STATS_ALL_CPUS,
                params.cast::<sys::_virNodeCPUStats>(),
                n,
                0,
            )
        }
    })?;
    let t = HostCpuTimes {
        kernel_ns: stat(&stats, "kernel"),
        user_ns: stat(&stats, "user"),
        idle_ns: stat(&stats, "idle"),
        iowait_ns: stat(&stats, "iowait"),
    };
    (t.total_ns() > 0).then_some(t)
}

/// The host's physical memory in KiB (`virNodeGetMemoryStats`, "total": the
/// kernel's MemTotal). `virNodeGetInfo`'s figure is not used: it sums NUMA
/// nodes and misses hot-plugged memory.
pub fn memory_total_kib(conn: &Connect) -> Option<u64> {
    host_memory(conn).map(|m| m.total_kib)
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

    /// The host's memory now; `None` when libvirt cannot tell.
    pub fn host_memory(&self) -> Option<HostMemory> {
        host_memory(self.conn)
    }

    /// The host's cumulative CPU times now; `None` when libvirt cannot tell.
    pub fn host_cpu_times(&self) -> Option<HostCpuTimes> {
        host_cpu_times(self.conn)
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

    #[test]
    fn used_memory_leaves_out_free_memory_cache_and_buffers() {
        let m = HostMemory {
            total_kib: 1000,
            free_kib: 300,
            buffers_kib: 50,
            cached_kib: 150,
        };
        assert_eq!(m.used_kib(), 500);
        let odd = HostMemory {
            total_kib: 100,
            free_kib: 90,
            buffers_kib: 0,
            cached_kib: 20,
        };
        assert_eq!(odd.used_kib(), 0);
    }

    #[test]
    fn busy_cpu_time_is_kernel_and_user() {
        let t = HostCpuTimes {
            kernel_ns: 2,
            user_ns: 3,
            idle_ns: 10,
            iowait_ns: 5,
        };
        assert_eq!((t.busy_ns(), t.total_ns()), (5, 20));
    }
}
