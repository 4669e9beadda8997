//! The guest agent methods of `org.vapor.Virtualization.VirtualMachine`:
//! WaitForAgent, RefreshGuestInfo, Exec, GetCloudInitStatus, WriteFile and
//! ReadFile (declared in the interface in `vm.rs`, which this file is a
//! child module of).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use zbus::message::Header;
use zbus::OwnedVariant;
use zbus::Variant;

use super::VirtualMachine;
use crate::dbus::options;
use crate::dbus::polkit::Action;
use crate::dbus::Error;
use crate::libvirt::agent::GuestInfo;
use crate::progress::Progress;
use crate::services::guest::exec::ExecRequest;
use crate::services::guest::files::{check_guest_path, Source, WriteRequest};
use crate::text::for_bus;

const EXEC_OPTIONS: &[&str] = &["input", "timeout", "max_output", "truncate"];
const WRITE_OPTIONS: &[&str] = &["mode", "owner", "overwrite"];

fn write_request(path: &str, opts: &options::Options) -> Result<WriteRequest, Error> {
    options::known(opts, WRITE_OPTIONS)?;
    let mode = options::uint(opts, "mode")?.unwrap_or(0o644);
    let mode = u32::try_from(mode)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "options.mode: {mode} ({mode:o} in octal) is not a file mode (at most 0o7777)"
            ))
        })?;
    Ok(WriteRequest {
        path: path.to_owned(),
        mode,
        owner: options::string(opts, "owner")?,
        overwrite: options::flag_or(opts, "overwrite", true)?,
        expect_sha256: None,
        // Set once the caller is known.
        caller: 0,
    })
}

/// The bytes of an `ay` option.
fn bytes(opts: &options::Options, key: &str) -> Result<Vec<u8>, Error> {
    match opts.get(key) {
        None => Ok(Vec::new()),
        Some(v) => match &**v {
            Variant::Array(a) => a
                .iter()
                .map(|b| match b {
                    Variant::U8(b) => Ok(*b),
                    _ => Err(()),
                })
                .collect::<Result<Vec<u8>, ()>>()
                .map_err(|_| Error::InvalidArgument(format!("options.{key}: must be bytes (ay)"))),
            _ => Err(Error::InvalidArgument(format!(
                "options.{key}: must be bytes (ay)"
            ))),
        },
    }
}

fn exec_request(argv: Vec<String>, opts: &options::Options) -> Result<ExecRequest, Error> {
    options::known(opts, EXEC_OPTIONS)?;
    let max_output = options::uint(opts, "max_output")?.unwrap_or(0);
    Ok(ExecRequest {
        argv,
        input: bytes(opts, "input")?,
        timeout: Duration::from_secs(options::uint(opts, "timeout")?.unwrap_or(0)),
        max_output: usize::try_from(max_output).unwrap_or(usize::MAX),
        truncate: options::flag(opts, "truncate")?,
        // Set once the caller is known.
        caller: 0,
    })
}

/// The argv as a polkit detail and for logs: each argument bus-safe,
/// quoted when it holds spaces, the whole at most 1 KiB.
fn shown_command(argv: &[String]) -> String {
    let mut s = argv
        .iter()
        .map(|a| {
            let a = for_bus(a);
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if s.len() > 1024 {
        let mut cut = 1024;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// GuestInfo as a{sv} (empty while no agent has answered).
pub(super) fn guest_info_dict(g: Option<&GuestInfo>) -> Variant<'static> {
    let mut d: HashMap<String, Variant<'static>> = HashMap::new();
    let Some(g) = g else {
        return Variant::from(d);
    };
    let s = |v: &str| Variant::from(for_bus(v).into_owned());
    for (k, v) in [
        ("hostname", &g.hostname),
        ("os_id", &g.os_id),
        ("os_name", &g.os_name),
        ("os_pretty_name", &g.os_pretty_name),
        ("os_version", &g.os_version),
        ("kernel_release", &g.kernel_release),
        ("machine", &g.machine),
        ("timezone", &g.timezone),
    ] {
        d.insert(k.into(), s(v));
    }
    d.insert(
        "users".into(),
        Variant::from(
            g.users
                .iter()
                .map(|u| for_bus(u).into_owned())
                .collect::<Vec<_>>(),
        ),
    );
    let interfaces: Vec<HashMap<String, Variant<'static>>> = g
        .interfaces
        .iter()
        .map(|i| {
            let mut m = HashMap::new();
            m.insert("name".to_owned(), s(&i.name));
            m.insert("hwaddr".to_owned(), s(&i.hwaddr));
            let addrs: Vec<(String, String, u64)> = i
                .addresses
                .iter()
                .map(|(t, a, p)| (for_bus(t).into_owned(), for_bus(a).into_owned(), *p))
                .collect();
            m.insert("addresses".to_owned(), Variant::from(addrs));
            m
        })
        .collect();
    d.insert("interfaces".into(), Variant::from(interfaces));
    let filesystems: Vec<HashMap<String, Variant<'static>>> = g
        .filesystems
        .iter()
        .map(|f| {
            let mut m = HashMap::new();
            m.insert("mountpoint".to_owned(), s(&f.mountpoint));
            m.insert("device".to_owned(), s(&f.device));
            m.insert("fstype".to_owned(), s(&f.fstype));
            m.insert("total_bytes".to_owned(), Variant::from(f.total_bytes));
            m.insert("used_bytes".to_owned(), Variant::from(f.used_bytes));
            m
        })
        .collect();
    d.insert("filesystems".into(), Variant::from(filesystems));
    Variant::from(d)
}

impl VirtualMachine {
    pub(super) async fn wait_for_agent_as(
        &self,
        header: &Header<'_>,
        timeout_secs: u32,
    ) -> Result<(), Error> {
        let rec = self
            .authorize(header, Action::Read, "wait for the guest agent of")
            .await?;
        let took = self
            .ctx
            .guest
            .wait_for_agent(&rec.uuid, Duration::from_secs(timeout_secs.into()))
            .await?;
        log::debug!(vm_name = rec.name.as_str(), vm_uuid = rec.uuid.as_str(); "the guest agent answered after {} ms", took.as_millis());
        Ok(())
    }

    pub(super) async fn refresh_guest_info_as(&self, header: &Header<'_>) -> Result<(), Error> {
        let rec = self
            .authorize(header, Action::Read, "read what the guest agent reports of")
            .await?;
        self.ctx.guest.refresh_info(&rec.uuid).await?;
        self.sync_from_model(&rec.uuid);
        Ok(())
    }

    pub(super) async fn exec_as(
        &self,
        header: &Header<'_>,
        argv: Vec<String>,
        opts: &HashMap<String, OwnedVariant>,
    ) -> Result<(i32, Vec<u8>, Vec<u8>), Error> {
        let req = exec_request(argv, opts)?.checked()?;
        let command = shown_command(&req.argv);
        let rec = self
            .authorize_with(
                header,
                Action::GuestExec,
                &format!("run '{command}' as root inside"),
                &[("guest.command", &command)],
            )
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        log::info!(vm_name = rec.name.as_str(), vm_uuid = rec.uuid.as_str(), uid = uid; "running in the guest: {command}");
        let req = ExecRequest { caller: uid, ..req };
        let out = self.ctx.guest.exec(&rec.uuid, req).await?;
        Ok((out.code, out.stdout, out.stderr))
    }

    pub(super) async fn write_file_as(
        &self,
        header: &Header<'_>,
        server: &zbus::ObjectServer,
        guest_path: &str,
        fd: zbus::OwnedFd,
        opts: &HashMap<String, OwnedVariant>,
    ) -> Result<(u64, String), Error> {
        check_guest_path(guest_path)?;
        let req = write_request(guest_path, opts)?;
        let file = super::super::storage::caller_file(fd, false)?;
        let total = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.len());
        let rec = self
            .authorize_with(
                header,
                Action::GuestFile,
                &format!("write the file {} inside", for_bus(guest_path)),
                &[("guest.path", guest_path)],
            )
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let req = WriteRequest { caller: uid, ..req };
        log::info!(vm_name = rec.name.as_str(), vm_uuid = rec.uuid.as_str(), uid = uid; "writing {} in the guest", for_bus(guest_path));
        let guest = self.ctx.guest.clone();
        let uuid = rec.uuid.clone();
        crate::dbus::job::run(
            server,
            &self.ctx.auth,
            "guest-write-file",
            vec![super::vm_path(&rec.uuid)],
            uid,
            |job| async move {
                guest
                    .write_file(
                        &uuid,
                        req,
                        Source::Caller(file),
                        total,
                        job as Arc<dyn Progress>,
                    )
                    .await
            },
        )
        .await
    }

    pub(super) async fn read_file_as(
        &self,
        header: &Header<'_>,
        server: &zbus::ObjectServer,
        guest_path: &str,
        fd: zbus::OwnedFd,
    ) -> Result<(u64, String), Error> {
        check_guest_path(guest_path)?;
        let file = super::super::storage::caller_file(fd, true)?;
        let rec = self
            .authorize_with(
                header,
                Action::GuestFile,
                &format!("read the file {} inside", for_bus(guest_path)),
                &[("guest.path", guest_path)],
            )
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        log::info!(vm_name = rec.name.as_str(), vm_uuid = rec.uuid.as_str(), uid = uid; "reading {} from the guest", for_bus(guest_path));
        let guest = self.ctx.guest.clone();
        let (uuid, path) = (rec.uuid.clone(), guest_path.to_owned());
        crate::dbus::job::run(
            server,
            &self.ctx.auth,
            "guest-read-file",
            vec![super::vm_path(&rec.uuid)],
            uid,
            |job| async move {
                guest
                    .read_file(&uuid, path, file, uid, job as Arc<dyn Progress>)
                    .await
            },
        )
        .await
    }

    pub(super) async fn cloud_init_status_as(&self, header: &Header<'_>) -> Result<String, Error> {
        let command = "cloud-init status --long --format json";
        let rec = self
            .authorize_with(
                header,
                Action::GuestExec,
                "read the cloud-init status of",
                &[("guest.command", command)],
            )
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        log::info!(vm_name = rec.name.as_str(), vm_uuid = rec.uuid.as_str(), uid = uid; "running in the guest: {command}");
        let status = self.ctx.guest.cloud_init_status(&rec.uuid, uid).await?;
        Ok(crate::text::json_for_bus(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_quoted_and_bounded() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shown_command(&argv(&["uname", "-a"])), "uname -a");
        assert_eq!(
            shown_command(&argv(&["sh", "-c", "echo hi"])),
            "sh -c 'echo hi'"
        );
        let long = "x".repeat(5000);
        assert!(shown_command(&argv(&["echo", &long])).chars().count() <= 1025);
    }

    #[test]
    fn exec_options_are_read_by_name() {
        let mut o: options::Options = HashMap::new();
        o.insert(
            "input".into(),
            OwnedVariant::try_from(Variant::from(vec![1u8, 2])).unwrap(),
        );
        o.insert("timeout".into(), OwnedVariant::from(5u32));
        let r = exec_request(vec!["cat".into()], &o).unwrap();
        assert_eq!((r.input, r.timeout.as_secs()), (vec![1, 2], 5));
        o.insert("input".into(), OwnedVariant::from(7u32));
        assert!(exec_request(vec!["cat".into()], &o)
            .unwrap_err()
            .to_string()
            .contains("options.input"));
        let mut o: options::Options = HashMap::new();
        o.insert("stdin".into(), OwnedVariant::from(true));
        assert!(exec_request(vec!["cat".into()], &o).is_err());
    }
}
