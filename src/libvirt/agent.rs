//! The QEMU guest agent through libvirt: whether it is connected (the live
//! definition's channel state, which libvirt's agent lifecycle events
//! announce), what the guest reports about itself (`virDomainGetGuestInfo`,
//! libvirt's supported call), and agent commands for what libvirt has no
//! call for (`virDomainQemuAgentCommand`: running programs and moving
//! files; libvirt marks such a domain as tainted by custom agent commands).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr;

use serde_json::{json, Value};
use virt_sys as sys;

use super::domain::{Definition, DomainRef};
use super::errors::bare;
use super::xml::Element;
use crate::{Error, Result};

/// The name of the guest agent's virtio channel.
pub const AGENT_CHANNEL: &str = "org.qemu.guest_agent.0";

fn agent_target(def: &Element) -> Option<&Element> {
    def.child("devices")?
        .children_named("channel")
        .filter_map(|c| c.child("target"))
        .find(|t| t.attr("name") == Some(AGENT_CHANNEL))
}

/// Whether a definition has a guest agent channel. Pure.
pub fn has_agent_channel(def: &Element) -> bool {
    agent_target(def).is_some()
}

/// Whether a live definition shows the guest agent connected. Pure.
pub fn agent_connected_in(def: &Element) -> bool {
    agent_target(def).and_then(|t| t.attr("state")) == Some("connected")
}

/// One typed parameter's value, as libvirt gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    UInt(u64),
    Double(f64),
    Bool(bool),
    Str(String),
}

/// What a guest agent reports about its guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestInfo {
    pub hostname: String,
    /// `os-release` ID, NAME, PRETTY_NAME, VERSION, and the kernel.
    pub os_id: String,
    pub os_name: String,
    pub os_pretty_name: String,
    pub os_version: String,
    pub kernel_release: String,
    pub machine: String,
    pub timezone: String,
    pub users: Vec<String>,
    pub interfaces: Vec<GuestInterface>,
    pub filesystems: Vec<GuestFilesystem>,
}

/// A network interface inside the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestInterface {
    pub name: String,
    pub hwaddr: String,
    /// (ipv4 or ipv6, address, prefix length).
    pub addresses: Vec<(String, String, u64)>,
}

/// A mounted file system inside the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestFilesystem {
    pub mountpoint: String,
    pub device: String,
    pub fstype: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
}

/// The longest text kept of what a guest reports (a field).
pub const INFO_TEXT_MAX: usize = 256;
/// The most users, interfaces, file systems, addresses per interface kept:
/// the guest decides what it reports, and all of it ends up in one bus
/// property.
pub const INFO_ITEMS_MAX: u64 = 64;

impl GuestInfo {
    /// From libvirt's flat parameters (`hostname`, `os.id`, `fs.0.name`,
    /// `if.1.addr.0.addr` …), each text cut at [`INFO_TEXT_MAX`] bytes and
    /// each list at [`INFO_ITEMS_MAX`] items. Pure.
    pub fn from_params(p: &BTreeMap<String, Param>) -> Self {
        let s = |k: &str| match p.get(k) {
            Some(Param::Str(v)) => {
                let mut end = v.len().min(INFO_TEXT_MAX);
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v[..end].to_owned()
            }
            _ => String::new(),
        };
        let u = |k: &str| match p.get(k) {
            Some(Param::UInt(v)) => *v,
            Some(Param::Int(v)) => (*v).max(0) as u64,
            _ => 0,
        };
        // Counts come from the guest.
        let count = |k: &str| u(k).min(INFO_ITEMS_MAX);
        GuestInfo {
            hostname: s("hostname"),
            os_id: s("os.id"),
            os_name: s("os.name"),
            os_pretty_name: s("os.pretty-name"),
            os_version: s("os.version"),
            kernel_release: s("os.kernel-release"),
            machine: s("os.machine"),
            timezone: s("timezone.name"),
            users: (0..count("user.count"))
                .map(|i| s(&format!("user.{i}.name")))
                .collect(),
            interfaces: (0..count("if.count"))
                .map(|i| GuestInterface {
                    name: s(&format!("if.{i}.name")),
                    hwaddr: s(&format!("if.{i}.hwaddr")),
                    addresses: (0..count(&format!("if.{i}.addr.count")))
                        .map(|j| {
                            let a = format!("if.{i}.addr.{j}");
                            (
                                s(&format!("{a}.type")),
                                s(&format!("{a}.addr")),
                                u(&format!("{a}.prefix")),
                            )
                        })
                        .collect(),
                })
                .collect(),
            filesystems: (0..count("fs.count"))
                .map(|i| GuestFilesystem {
                    mountpoint: s(&format!("fs.{i}.mountpoint")),
                    device: s(&format!("fs.{i}.name")),
                    fstype: s(&format!("fs.{i}.fstype")),
                    total_bytes: u(&format!("fs.{i}.total-bytes")),
                    used_bytes: u(&format!("fs.{i}.used-bytes")),
                })
                .collect(),
        }
    }
}

impl DomainRef {
    /// What the guest agent reports now.
    pub fn guest_info(&self) -> Result<GuestInfo> {
        Ok(GuestInfo::from_params(&self.guest_info_params(0)?))
    }

    /// Whether the guest agent answers a ping within `timeout_secs`
    /// (libvirt's supported calls may wait for an agent without end).
    pub fn agent_answers(&self, timeout_secs: i32) -> bool {
        self.agent_command("guest-ping", None, timeout_secs).is_ok()
    }

    /// Whether the guest agent is connected now (the live definition).
    pub fn agent_connected(&self) -> Result<bool> {
        Ok(agent_connected_in(&self.definition(Definition::Live)?))
    }

    /// What the guest agent reports (`virDomainGetGuestInfo`; `types` 0:
    /// every kind this libvirt knows), as libvirt's flat parameters.
    pub fn guest_info_params(&self, types: u32) -> Result<BTreeMap<String, Param>> {
        let mut params: sys::virTypedParameterPtr = ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: valid domain; libvirt allocates `params`, freed below.
        let rc =
            unsafe { sys::virDomainGetGuestInfo(self.dom.as_ptr(), types, &mut params, &mut n, 0) };
        if rc < 0 {
            return Err(bare(virt::error::Error::last_error()).context("the guest agent"));
        }
        let mut out = BTreeMap::new();
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n entries libvirt filled in.
            let p = unsafe { &*params.add(i) };
            // SAFETY: `field` is a NUL-terminated array.
            let key = unsafe { CStr::from_ptr(p.field.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: the union member read is the one `type_` names.
            let v = unsafe {
                match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => Param::Int(p.value.i.into()),
                    sys::VIR_TYPED_PARAM_UINT => Param::UInt(p.value.ui.into()),
                    sys::VIR_TYPED_PARAM_LLONG => Param::Int(p.value.l),
                    sys::VIR_TYPED_PARAM_ULLONG => Param::UInt(p.value.ul),
                    sys::VIR_TYPED_PARAM_DOUBLE => Param::Double(p.value.d),
                    sys::VIR_TYPED_PARAM_BOOLEAN => Param::Bool(p.value.b != 0),
                    sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                        Param::Str(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                    }
                    _ => continue,
                }
            };
            out.insert(key, v);
        }
        if !params.is_null() {
            // SAFETY: freed once, by libvirt, as it allocated them.
            unsafe { sys::virTypedParamsFree(params, n) };
        }
        Ok(out)
    }

    /// Run one guest agent command (`execute` with `arguments`), waiting at
    /// most `timeout_secs`; its `return` value.
    pub fn agent_command(
        &self,
        execute: &str,
        arguments: Option<Value>,
        timeout_secs: i32,
    ) -> Result<Value> {
        let cmd = match arguments {
            Some(a) => json!({"execute": execute, "arguments": a}),
            None => json!({"execute": execute}),
        };
        let reply = self
            .dom
            .qemu_agent_command(&cmd.to_string(), timeout_secs, 0)
            .map_err(|e| bare(e).context(format!("the guest agent ({execute})")))?;
        let v: Value = serde_json::from_str(&reply).map_err(|e| {
            Error::Failed(format!("the guest agent ({execute}) answered no JSON: {e}"))
        })?;
        Ok(v.get("return").cloned().unwrap_or(Value::Null))
    }
}

/// A program the agent started, as `guest-exec-status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStatus {
    pub exited: bool,
    /// The exit code, or 128 + the signal that ended it.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent kept only the start of standard output / error.
    pub out_truncated: bool,
    pub err_truncated: bool,
}

impl ExecStatus {
    /// From the `return` of `guest-exec-status`. Pure.
    pub fn from_reply(v: &Value) -> Result<Self> {
        let data = |k: &str| -> Result<Vec<u8>> {
            match v.get(k).and_then(Value::as_str) {
                None => Ok(Vec::new()),
                Some(t) => crate::base64::decode(t).ok_or_else(|| {
                    Error::Failed(format!("the guest agent sent {k} that is not base64"))
                }),
            }
        };
        let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let int = |k: &str| v.get(k).and_then(Value::as_i64);
        let code = match (int("exitcode"), int("signal")) {
            (Some(c), _) => c as i32,
            (None, Some(s)) => 128i32.saturating_add(s.clamp(0, 127) as i32),
            (None, None) => 0,
        };
        Ok(ExecStatus {
            exited: flag("exited"),
            code,
            stdout: data("out-data")?,
            stderr: data("err-data")?,
            out_truncated: flag("out-truncated"),
            err_truncated: flag("err-truncated"),
        })
    }
}

/// Largest piece of file data sent to the agent in one message (larger
/// writes fail or hang the agent).
pub const WRITE_CHUNK: usize = 48 * 1024;
/// Largest piece read back in one message (libvirt's replies stop at about
/// 4 MiB, base64 included).
pub const READ_CHUNK: usize = 1024 * 1024;

impl DomainRef {
    /// Start a program in the guest (`guest-exec`); its pid there.
    pub fn guest_exec(
        &self,
        path: &str,
        args: &[String],
        input: &[u8],
        capture: bool,
        timeout_secs: i32,
    ) -> Result<i64> {
        let mut a = json!({"path": path, "arg": args, "capture-output": capture});
        if !input.is_empty() {
            a["input-data"] = Value::String(crate::base64::encode(input));
        }
        let r = self.agent_command("guest-exec", Some(a), timeout_secs)?;
        r.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Failed("the guest agent started no process".into()))
    }

    /// How a program started by [`Self::guest_exec`] is doing.
    pub fn guest_exec_status(&self, pid: i64, timeout_secs: i32) -> Result<ExecStatus> {
        let r = self.agent_command("guest-exec-status", Some(json!({"pid": pid})), timeout_secs)?;
        ExecStatus::from_reply(&r)
    }

    /// Open a file in the guest (`mode` as fopen's); its handle.
    pub fn guest_file_open(&self, path: &str, mode: &str, timeout_secs: i32) -> Result<i64> {
        self.agent_command(
            "guest-file-open",
            Some(json!({"path": path, "mode": mode})),
            timeout_secs,
        )?
        .as_i64()
        .ok_or_else(|| Error::Failed(format!("the guest agent opened no file {path}")))
    }

    /// Read at most `count` bytes (≤ [`READ_CHUNK`]); (bytes, at the end).
    pub fn guest_file_read(
        &self,
        handle: i64,
        count: usize,
        timeout_secs: i32,
    ) -> Result<(Vec<u8>, bool)> {
        let r = self.agent_command(
            "guest-file-read",
            Some(json!({"handle": handle, "count": count.min(READ_CHUNK)})),
            timeout_secs,
        )?;
        let data = r
            .get("buf-b64")
            .and_then(Value::as_str)
            .and_then(crate::base64::decode)
            .ok_or_else(|| Error::Failed("the guest agent sent no file data".into()))?;
        Ok((data, r.get("eof").and_then(Value::as_bool).unwrap_or(false)))
    }

    /// Write `data` (≤ [`WRITE_CHUNK`]) at the file's position.
    pub fn guest_file_write(&self, handle: i64, data: &[u8], timeout_secs: i32) -> Result<()> {
        let r = self.agent_command(
            "guest-file-write",
            Some(json!({"handle": handle, "buf-b64": crate::base64::encode(data)})),
            timeout_secs,
        )?;
        match r.get("count").and_then(Value::as_u64) {
            Some(n) if n as usize == data.len() => Ok(()),
            n => Err(Error::Failed(format!(
                "the guest agent wrote {n:?} of {} bytes",
                data.len()
            ))),
        }
    }

    /// Close a file opened with [`Self::guest_file_open`].
    pub fn guest_file_close(&self, handle: i64, timeout_secs: i32) -> Result<()> {
        self.agent_command(
            "guest-file-close",
            Some(json!({"handle": handle})),
            timeout_secs,
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_exec_status_is_read_with_its_output_and_how_it_ended() {
        let v = json!({"exited": true, "exitcode": 3, "out-data": "aGk=", "err-truncated": true});
        let st = ExecStatus::from_reply(&v).unwrap();
        assert!(st.exited && st.err_truncated && !st.out_truncated);
        assert_eq!((st.code, st.stdout.as_slice()), (3, &b"hi"[..]));
        let killed = ExecStatus::from_reply(&json!({"exited": true, "signal": 9})).unwrap();
        assert_eq!(killed.code, 137);
        assert!(ExecStatus::from_reply(&json!({"out-data": "!!"})).is_err());
    }

    use super::*;

    #[test]
    fn guest_info_is_read_from_libvirts_parameters() {
        let mut p = BTreeMap::new();
        let mut put = |k: &str, v: Param| {
            p.insert(k.to_owned(), v);
        };
        put("hostname", Param::Str("web".into()));
        put("os.id", Param::Str("debian".into()));
        put("os.kernel-release", Param::Str("6.1.0".into()));
        put("if.count", Param::UInt(1));
        put("if.0.name", Param::Str("enp1s0".into()));
        put("if.0.addr.count", Param::UInt(1));
        put("if.0.addr.0.type", Param::Str("ipv4".into()));
        put("if.0.addr.0.addr", Param::Str("192.168.7.9".into()));
        put("if.0.addr.0.prefix", Param::UInt(24));
        put("fs.count", Param::UInt(1000000));
        put("fs.0.mountpoint", Param::Str("/".into()));
        put("fs.0.total-bytes", Param::UInt(2048));
        let g = GuestInfo::from_params(&p);
        assert_eq!(g.hostname, "web");
        assert_eq!(g.os_id, "debian");
        assert_eq!(g.kernel_release, "6.1.0");
        assert_eq!(
            g.interfaces[0].addresses,
            [("ipv4".into(), "192.168.7.9".into(), 24)]
        );
        assert_eq!(g.filesystems[0].mountpoint, "/");
        assert_eq!(g.filesystems[0].total_bytes, 2048);
        assert_eq!(
            g.filesystems.len() as u64,
            INFO_ITEMS_MAX,
            "a count from the guest is bounded"
        );
        let mut p = BTreeMap::new();
        p.insert("hostname".to_owned(), Param::Str("é".repeat(1000)));
        let g = GuestInfo::from_params(&p);
        assert!(g.hostname.len() <= INFO_TEXT_MAX && g.hostname.starts_with('é'));
    }

    #[test]
    fn the_agent_channel_state_is_read_from_the_live_definition() {
        let def = |state: &str| {
            Element::parse(&format!(
                "<domain><devices><channel type='unix'><target type='virtio' name='x'/></channel>\
                 <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'{state}/>\
                 </channel></devices></domain>"
            ))
            .unwrap()
        };
        assert!(agent_connected_in(&def(" state='connected'")));
        assert!(!agent_connected_in(&def(" state='disconnected'")));
        assert!(!agent_connected_in(&def("")));
        assert!(has_agent_channel(&def("")));
        let none = Element::parse("<domain><devices/></domain>").unwrap();
        assert!(!has_agent_channel(&none) && !agent_connected_in(&none));
    }
}
