//! A domain's job statistics (`virDomainGetJobStats`), read field by field
//! through libvirt's own typed-parameter accessors and freed by libvirt
//! (the `virt` crate's reading frees libvirt's memory itself and aborts the
//! process when no job runs).

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_ulonglong};
use std::ptr;

use virt_sys as sys;

use super::domain::DomainRef;
use super::errors::bare;
use crate::Result;

/// The figures of a running or completed job that vapord shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStats {
    /// `VIR_DOMAIN_JOB_*`: none, bounded, unbounded, completed, failed, cancelled.
    pub kind: u32,
    pub data_processed: Option<u64>,
    pub data_remaining: Option<u64>,
    pub data_total: Option<u64>,
    pub disk_processed: Option<u64>,
    pub disk_total: Option<u64>,
    /// Memory transfer rate, bytes per second.
    pub memory_bps: Option<u64>,
    /// Pre-copy iterations so far.
    pub memory_iteration: Option<u64>,
    /// Downtime (expected while running, actual once completed), ms.
    pub downtime_ms: Option<u64>,
    pub time_elapsed_ms: Option<u64>,
    pub error: Option<String>,
}

impl JobStats {
    pub fn running(&self) -> bool {
        matches!(
            self.kind,
            sys::VIR_DOMAIN_JOB_BOUNDED | sys::VIR_DOMAIN_JOB_UNBOUNDED
        )
    }
}

fn ull(params: sys::virTypedParameterPtr, n: c_int, name: &CStr) -> Option<u64> {
    let mut v: c_ulonglong = 0;
    // SAFETY: params/n as libvirt returned them; name is NUL-terminated.
    let found = unsafe { sys::virTypedParamsGetULLong(params, n, name.as_ptr(), &mut v) };
    (found == 1).then_some(v)
}

fn string(params: sys::virTypedParameterPtr, n: c_int, name: &CStr) -> Option<String> {
    let mut v: *const c_char = ptr::null();
    // SAFETY: as above; the string lives until the params are freed.
    let found = unsafe { sys::virTypedParamsGetString(params, n, name.as_ptr(), &mut v) };
    (found == 1 && !v.is_null())
        .then(|| unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
}

impl DomainRef {
    /// The running job's statistics, or with `completed` the last
    /// completed job's.
    pub fn job_stats(&self, completed: bool) -> Result<JobStats> {
        let mut kind: c_int = 0;
        let mut params: sys::virTypedParameterPtr = ptr::null_mut();
        let mut n: c_int = 0;
        let flags = if completed {
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED
        } else {
            0
        };
        // SAFETY: valid domain; libvirt allocates `params` (possibly none).
        let rc = unsafe {
            sys::virDomainGetJobStats(self.dom.as_ptr(), &mut kind, &mut params, &mut n, flags)
        };
        if rc < 0 {
            return Err(bare(virt::error::Error::last_error()));
        }
        let stats = JobStats {
            kind: kind as u32,
            data_processed: ull(params, n, sys::VIR_DOMAIN_JOB_DATA_PROCESSED),
            data_remaining: ull(params, n, sys::VIR_DOMAIN_JOB_DATA_REMAINING),
            data_total: ull(params, n, sys::VIR_DOMAIN_JOB_DATA_TOTAL),
            disk_processed: ull(params, n, sys::VIR_DOMAIN_JOB_DISK_PROCESSED),
            disk_total: ull(params, n, sys::VIR_DOMAIN_JOB_DISK_TOTAL),
            memory_bps: ull(params, n, sys::VIR_DOMAIN_JOB_MEMORY_BPS),
            memory_iteration: ull(params, n, sys::VIR_DOMAIN_JOB_MEMORY_ITERATION),
            downtime_ms: ull(params, n, sys::VIR_DOMAIN_JOB_DOWNTIME),
            time_elapsed_ms: ull(params, n, sys::VIR_DOMAIN_JOB_TIME_ELAPSED),
            error: string(params, n, sys::VIR_DOMAIN_JOB_ERRMSG),
        };
        if !params.is_null() {
            // SAFETY: freed once, by libvirt, as it allocated them.
            unsafe { sys::virTypedParamsFree(params, n) };
        }
        Ok(stats)
    }
}
