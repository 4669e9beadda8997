//! The typed port for libvirt's backup API and its checkpoints: starting a
//! push-mode backup (`virDomainBackupBegin`) with a checkpoint, following
//! the domain's job, aborting it, freezing the guest's file systems around
//! its start, and deleting checkpoints. The XML documents are written by
//! the service layer.

use std::ffi::CString;
use std::ptr;

use virt_sys as sys;

use super::domain::DomainRef;
use super::errors::bare;
use crate::{Error, Result};

/// A running job's progress: bytes done of bytes in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    pub processed: u64,
    pub total: u64,
}

/// How the last job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Completed,
    Failed(String),
    Cancelled,
    /// libvirt keeps no record (another job ran since, or none ran).
    Unknown,
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
}

impl DomainRef {
    /// Start a push-mode backup, with a checkpoint when given. Returns at
    /// once; the copy runs as the domain's job.
    pub fn begin_backup(&self, backup_xml: &str, checkpoint_xml: Option<&str>) -> Result<()> {
        let b = cstring("backup XML", backup_xml)?;
        let c = checkpoint_xml
            .map(|x| cstring("checkpoint XML", x))
            .transpose()?;
        // SAFETY: valid domain pointer and NUL-terminated strings that
        // outlive the call.
        let rc = unsafe {
            sys::virDomainBackupBegin(
                self.dom.as_ptr(),
                b.as_ptr(),
                c.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
                0,
            )
        };
        if rc < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// The running job's progress; `None` when no job runs.
    pub fn job_progress(&self) -> Result<Option<JobProgress>> {
        let st = self.job_stats(false)?;
        if !st.running() {
            return Ok(None);
        }
        let processed = st.data_processed.or(st.disk_processed).unwrap_or(0);
        let total = st.data_total.or(st.disk_total).unwrap_or(0);
        Ok(Some(JobProgress { processed, total }))
    }

    /// How the last job ended (libvirt's completed-job record).
    pub fn last_job_end(&self) -> Result<JobEnd> {
        let st = self.job_stats(true)?;
        Ok(match st.kind {
            sys::VIR_DOMAIN_JOB_COMPLETED => JobEnd::Completed,
            sys::VIR_DOMAIN_JOB_CANCELLED => JobEnd::Cancelled,
            sys::VIR_DOMAIN_JOB_FAILED => {
                JobEnd::Failed(st.error.unwrap_or_else(|| "the job failed".into()))
            }
            _ => JobEnd::Unknown,
        })
    }

    /// The document of the domain's running backup job; `None` when no
    /// backup runs.
    pub fn running_backup_xml(&self) -> Option<String> {
        // SAFETY: valid domain pointer; libvirt returns a malloc'd string
        // (or NULL when no backup job runs), freed below.
        unsafe {
            let p = sys::virDomainBackupGetXMLDesc(self.dom.as_ptr(), 0);
            if p.is_null() {
                let _ = last_error();
                return None;
            }
            let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
            libc::free(p.cast());
            Some(s)
        }
    }

    /// Abort the domain's running job.
    pub fn abort_job(&self) -> Result<()> {
        // SAFETY: valid domain pointer.
        if unsafe { sys::virDomainAbortJob(self.dom.as_ptr()) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Freeze the guest's file systems through its agent.
    pub fn fs_freeze(&self) -> Result<()> {
        // SAFETY: valid domain pointer; no mount point list.
        if unsafe { sys::virDomainFSFreeze(self.dom.as_ptr(), ptr::null_mut(), 0, 0) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// Thaw what [`Self::fs_freeze`] froze.
    pub fn fs_thaw(&self) -> Result<()> {
        // SAFETY: valid domain pointer; no mount point list.
        if unsafe { sys::virDomainFSThaw(self.dom.as_ptr(), ptr::null_mut(), 0, 0) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// The names of the domain's checkpoints.
    pub fn checkpoints(&self) -> Result<Vec<String>> {
        let mut list: *mut sys::virDomainCheckpointPtr = ptr::null_mut();
        // SAFETY: libvirt fills `list` with `n` references we free below.
        let n = unsafe { sys::virDomainListAllCheckpoints(self.dom.as_ptr(), &mut list, 0) };
        if n < 0 {
            return Err(last_error());
        }
        let mut names = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: i < n entries; each name lives as long as its checkpoint.
            unsafe {
                let c = *list.add(i);
                let name = sys::virDomainCheckpointGetName(c);
                if !name.is_null() {
                    names.push(
                        std::ffi::CStr::from_ptr(name)
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
                sys::virDomainCheckpointFree(c);
            }
        }
        // SAFETY: the array itself was allocated by libvirt with malloc.
        unsafe { libc::free(list.cast()) };
        Ok(names)
    }

    /// Delete a checkpoint (its bitmaps merge into its parent's); a missing
    /// one is not an error.
    pub fn delete_checkpoint(&self, name: &str) -> Result<()> {
        self.remove_checkpoint(name, 0)
    }

    /// Forget a checkpoint, leaving the images as they are (they are no
    /// longer the VM's, or libvirt cannot edit them now).
    pub fn delete_checkpoint_metadata(&self, name: &str) -> Result<()> {
        self.remove_checkpoint(name, sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    }

    fn remove_checkpoint(&self, name: &str, flags: u32) -> Result<()> {
        let n = cstring("checkpoint name", name)?;
        // SAFETY: valid domain pointer and NUL-terminated name.
        let c = unsafe { sys::virDomainCheckpointLookupByName(self.dom.as_ptr(), n.as_ptr(), 0) };
        if c.is_null() {
            return match last_error() {
                Error::NotFound(_) => Ok(()),
                e => Err(e),
            };
        }
        // SAFETY: `c` is a valid checkpoint reference, freed once.
        let rc = unsafe { sys::virDomainCheckpointDelete(c, flags) };
        let err = (rc < 0).then(last_error);
        unsafe { sys::virDomainCheckpointFree(c) };
        err.map_or(Ok(()), Err)
    }
}

/// libvirt's last error on this thread, classified.
fn last_error() -> Error {
    bare(virt::error::Error::last_error())
}
