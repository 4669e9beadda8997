//! Facts about the host libvirt runs on, read through libvirt (so they hold
//! for a remote host too).

use virt::connect::Connect;
use virt_sys as sys;

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
