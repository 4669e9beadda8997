//! The bounds one creation request must stay within: `[limits]` from the
//! configuration, else the host's own (its memory, the hypervisor's vCPU
//! maximum), and the free space of each pool for what is allocated at once.
//! Pure: the host's facts come through the [`StorageView`].

use std::collections::BTreeMap;

use super::resolve::{Resolved, StorageView};
use crate::{Error, Result};

fn limit_exceeded(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::LimitExceeded(format!("{field}: {msg}"))
}

/// Where a bound comes from, for messages.
fn bound_source<T>(configured: Option<T>, key: &str, host: &str) -> String {
    match configured {
        Some(_) => format!("limits.{key} in vapord.toml"),
        None => host.to_owned(),
    }
}

/// Refuse a request that asks for more than the configured limits or the
/// host's own: memory, vCPUs, number of disks, disk sizes, and preallocated
/// space (at most each pool's free space; sparse disks may be larger than
/// their pool, as thin provisioning goes).
pub fn check(view: &dyn StorageView, r: &Resolved, limits: &crate::config::Limits) -> Result<()> {
    let host = view.host_limits();
    let max_mem = limits.max_memory_mib.unwrap_or(host.memory_mib);
    if r.memory_mib > max_mem {
        let from = bound_source(limits.max_memory_mib, "max_memory_mib", "the host's memory");
        return Err(limit_exceeded(
            "memory",
            format!("{} MiB is more than {max_mem} MiB ({from})", r.memory_mib),
        ));
    }
    let max_vcpus = limits.max_vcpus.unwrap_or(host.max_vcpus);
    if r.vcpus > max_vcpus {
        let from = bound_source(limits.max_vcpus, "max_vcpus", "the hypervisor's maximum");
        return Err(limit_exceeded(
            "vcpus",
            format!("{} is more than {max_vcpus} ({from})", r.vcpus),
        ));
    }
    if let Some(max) = limits.max_disks {
        if r.disks.len() > max as usize {
            return Err(limit_exceeded(
                "storage.disks",
                format!(
                    "{} disks (the boot ISO included) are more than {max} (limits.max_disks in vapord.toml)",
                    r.disks.len()
                ),
            ));
        }
    }
    let mut preallocated: BTreeMap<&str, u64> = BTreeMap::new();
    for d in r.disks.iter().filter(|d| d.is_created()) {
        let (Some(size), Some(pool)) = (d.size_gib, d.pool.as_deref()) else {
            continue;
        };
        let field = format!("{}.size", d.field);
        // Unset, a sparse disk may be larger than its pool (thin
        // provisioning): only what is allocated now must fit, below.
        if let Some(max) = limits.max_disk_gib {
            if size > max {
                return Err(limit_exceeded(
                    &field,
                    format!(
                        "{size} GiB is more than {max} GiB (limits.max_disk_gib in vapord.toml)"
                    ),
                ));
            }
        }
        if d.preallocate {
            *preallocated.entry(pool).or_default() += size.saturating_mul(1 << 30);
        }
    }
    for (pool, wanted) in preallocated {
        let Some(info) = view.pool(pool) else {
            continue;
        };
        if wanted > info.available_bytes {
            return Err(limit_exceeded(
                "storage.disks",
                format!(
                    "the preallocated disks need {} GiB in pool '{pool}', which has {} GiB free",
                    wanted.div_ceil(1 << 30),
                    info.available_bytes >> 30
                ),
            ));
        }
    }
    Ok(())
}
