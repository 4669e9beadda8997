//! The guest agent of a VM, for callers: whether it answers (waiting for it
//! with a timeout), what it reports about the guest (kept on the VM while
//! it is connected), programs run inside the guest ([`exec`]) and
//! cloud-init's status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::libvirt::agent::has_agent_channel;
use crate::libvirt::{Definition, Hypervisor};
use crate::model::Model;
use crate::{Error, Result};

#[path = "guest_exec.rs"]
pub mod exec;
#[path = "guest_files.rs"]
pub mod files;

/// What cloud-init is asked for its status (older ones, such as Debian
/// 12's 22.4, have no `--format`: then [`CLOUD_INIT_STATUS_TEXT`]).
const CLOUD_INIT_STATUS: [&str; 5] = ["cloud-init", "status", "--long", "--format", "json"];
const CLOUD_INIT_STATUS_TEXT: [&str; 3] = ["cloud-init", "status", "--long"];

/// How long reading what an agent reports may take.
const INFO_WAIT: Duration = Duration::from_secs(30);
/// Guest programs and file transfers one caller may run at once (8 in
/// all): as many as an apply works on VMs at once, so one caller cannot
/// take them all.
pub const PER_CALLER: usize = 4;

/// The longest WaitForAgent may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

pub struct GuestService {
    model: Arc<Model>,
    /// One reading of what an agent reports per VM at a time.
    reading: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How long `WaitForAgent` waits when the caller gives no timeout.
    default_wait: Duration,
    /// File transfers running (each holds a daemon thread).
    transfers: super::storage_transfers::Transfers,
}

impl GuestService {
    pub fn new(model: Arc<Model>, default_wait: Duration) -> Arc<Self> {
        Arc::new(Self {
            model,
            reading: std::sync::Mutex::new(std::collections::HashMap::new()),
            default_wait,
            transfers: super::storage_transfers::Transfers::of(
                "guest programs and file transfers",
                PER_CALLER,
                8,
            ),
        })
    }

    fn hv(&self) -> &Arc<Hypervisor> {
        self.model.hypervisor()
    }

    /// Read what each guest agent reports when it connects (off the event
    /// loop, each VM on its own: an agent may take long to answer).
    pub fn follow(self: &Arc<Self>) {
        let mut connections = self.model.agent_connections();
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                match connections.recv().await {
                    Ok(uuid) => {
                        let this = this.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.refresh_info(&uuid).await {
                                log::debug!(vm_uuid = uuid.as_str(); "cannot read the guest's information yet: {e}");
                            }
                        });
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Ask the guest agent what it reports now, and keep it on the VM. One
    /// reading per VM at a time (a caller asking meanwhile waits for it),
    /// and at most [`INFO_WAIT`]: libvirt's call waits for an agent without
    /// end, so a silent one keeps only its own thread.
    pub async fn refresh_info(&self, uuid: &str) -> Result<()> {
        self.need_agent(uuid)?;
        let connection = self.model.agent_connection(uuid).unwrap_or(0);
        let one = {
            let mut m = self.reading.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(uuid.to_owned()).or_default().clone()
        };
        let Ok(_turn) = one.try_lock() else {
            // Someone is reading it now: wait for that reading.
            let _ = tokio::time::timeout(INFO_WAIT, one.lock()).await;
            return Ok(());
        };
        let read = self.hv().on_domain(uuid, |_, d| d.guest_info());
        let info = tokio::time::timeout(INFO_WAIT, read).await.map_err(|_| {
            Error::Timeout(format!(
                "the guest agent did not report within {} s",
                INFO_WAIT.as_secs()
            ))
        })??;
        self.model.set_guest_info(uuid, connection, info).await;
        Ok(())
    }

    /// Refuse at once what can never have an answering agent.
    fn need_running(&self, uuid: &str) -> Result<String> {
        let rec = self
            .model
            .get(uuid)
            .ok_or_else(|| Error::NotFound(format!("no virtual machine with UUID {uuid}")))?;
        if !rec.state.is_active() {
            return Err(Error::InvalidState(format!(
                "VM '{}' is not running: its guest agent cannot answer",
                rec.name
            )));
        }
        Ok(rec.name.clone())
    }

    /// The VM runs and its agent is connected.
    fn need_agent(&self, uuid: &str) -> Result<()> {
        let name = self.need_running(uuid)?;
        if !self.model.get(uuid).is_some_and(|r| r.agent_connected) {
            return Err(Error::Unavailable(format!(
                "the guest agent of VM '{name}' is not connected (WaitForAgent waits for it)"
            )));
        }
        Ok(())
    }

    /// Wait until the VM's guest agent answers, at most `timeout` (0: the
    /// configured default); how long it took.
    pub async fn wait_for_agent(&self, uuid: &str, timeout: Duration) -> Result<Duration> {
        if timeout > MAX_WAIT {
            return Err(Error::InvalidArgument(format!(
                "timeout_secs: at most {}",
                MAX_WAIT.as_secs()
            )));
        }
        let timeout = if timeout.is_zero() {
            self.default_wait
        } else {
            timeout
        };
        let started = Instant::now();
        let name = self.need_running(uuid)?;
        let has_channel = self
            .hv()
            .on_domain(uuid, |_, d| {
                Ok(has_agent_channel(&d.definition(Definition::Live)?))
            })
            .await?;
        if !has_channel {
            return Err(Error::NotSupported(format!(
                "VM '{name}' has no guest agent channel (org.qemu.guest_agent.0): \
                 no agent can ever answer; add the channel and restart it"
            )));
        }
        let mut touched = self.model.touched();
        loop {
            self.need_running(uuid)?;
            let connected = self.model.get(uuid).is_some_and(|r| r.agent_connected);
            if connected
                && self
                    .hv()
                    .on_domain(uuid, |_, d| Ok(d.agent_answers(5)))
                    .await?
            {
                return Ok(started.elapsed());
            }
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "the guest agent of VM '{name}' did not answer within {} s",
                    timeout.as_secs()
                )));
            }
            // An event of this VM (the agent connecting), or a second
            // later (an agent that connected but did not answer yet).
            let wake = async {
                loop {
                    match touched.recv().await {
                        Ok(u) if u == uuid => return,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => std::future::pending::<()>().await,
                    }
                }
            };
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), wake).await;
        }
    }

    /// cloud-init's status in the guest (`cloud-init status --long
    /// --format json`), as JSON text; written to the journal with the VM.
    pub async fn cloud_init_status(&self, uuid: &str, caller: u32) -> Result<String> {
        let run = |argv: &[&str]| exec::ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            caller,
            timeout: Duration::from_secs(60),
            // cloud-init's report is small; the guest decides its size.
            max_output: 256 * 1024,
            ..Default::default()
        };
        let out = self.exec(uuid, run(&CLOUD_INIT_STATUS)).await?;
        let status = match cloud_init_report(out.code, &out.stdout, &out.stderr) {
            Err(Error::Failed(_)) if String::from_utf8_lossy(&out.stderr).contains("--format") => {
                let out = self.exec(uuid, run(&CLOUD_INIT_STATUS_TEXT)).await?;
                cloud_init_text_report(out.code, &out.stdout, &out.stderr)?
            }
            r => r?,
        };
        let name = self
            .model
            .get(uuid)
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let errors = status["errors"].as_array().map_or(0, Vec::len);
        let state = crate::text::for_bus(status["status"].as_str().unwrap_or("?")).into_owned();
        log::info!(
            vm_name = name.as_str(), vm_uuid = uuid,
            cloud_init_status = state.as_str(), cloud_init_errors = errors;
            "cloud-init: {state}, {errors} error(s)"
        );
        Ok(status.to_string())
    }
}

/// cloud-init's status from what `cloud-init status --long` printed as
/// text (`status: done`, `boot_status_code: …`, `detail:` and the lines
/// below it), as the JSON newer versions print. Pure.
pub fn cloud_init_text_report(code: i32, stdout: &[u8], stderr: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let mut doc = serde_json::Map::new();
    let mut detail: Option<Vec<String>> = None;
    for line in text.lines() {
        if let Some(d) = detail.as_mut() {
            d.push(line.trim().to_owned());
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k == "detail" {
                detail = Some(if v.is_empty() {
                    Vec::new()
                } else {
                    vec![v.to_owned()]
                });
            } else if !k.is_empty() && !k.contains(' ') {
                doc.insert(k.to_owned(), Value::String(v.to_owned()));
            }
        }
    }
    if let Some(d) = detail {
        let d: Vec<String> = d.into_iter().filter(|l| !l.is_empty()).collect();
        doc.insert("detail".into(), Value::String(d.join("\n")));
    }
    if doc.contains_key("status") {
        return Ok(Value::Object(doc));
    }
    cloud_init_report(code, stdout, stderr)
}

/// cloud-init's status from what `cloud-init status --long --format json`
/// printed: its JSON (it exits 1 on an error and 2 on a recoverable one,
/// still printing the status), or why there is none. Pure.
pub fn cloud_init_report(code: i32, stdout: &[u8], stderr: &[u8]) -> Result<Value> {
    match serde_json::from_slice::<Value>(stdout) {
        Ok(v) if v.get("status").is_some() => Ok(v),
        _ if code == 127 => Err(Error::NotSupported(
            "cloud-init is not installed in the guest".into(),
        )),
        _ => Err(Error::Failed(format!(
            "cloud-init status exited with {code} without a status: {}",
            crate::text::for_bus(String::from_utf8_lossy(stderr).trim())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_init_status_is_read_as_json_or_as_older_text() {
        let v = cloud_init_report(0, br#"{"status": "done", "errors": []}"#, b"").unwrap();
        assert_eq!(v["status"], "done");
        let text = b"status: done\nboot_status_code: enabled-by-generator\n\
last_update: Thu, 01 Jan 1970 00:00:24 +0000\ndetail:\nDataSourceNoCloud [seed=/dev/sr0][dsmode=net]\n";
        let v = cloud_init_text_report(0, text, b"").unwrap();
        assert_eq!(v["status"], "done");
        assert_eq!(v["boot_status_code"], "enabled-by-generator");
        assert_eq!(v["detail"], "DataSourceNoCloud [seed=/dev/sr0][dsmode=net]");
        let missing = cloud_init_report(127, b"", b"cloud-init: not found").unwrap_err();
        assert!(matches!(missing, Error::NotSupported(_)), "{missing}");
        let broken = cloud_init_text_report(1, b"", b"Traceback").unwrap_err();
        assert!(broken.to_string().contains("exited with 1"), "{broken}");
    }
}
