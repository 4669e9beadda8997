//! The console methods of `org.vapor.Virtualization.VirtualMachine`:
//! `OpenConsole`, `OpenGraphics` and `GetConsoleSocket` (declared at the end
//! of the interface in `vm.rs`, which this file is a child module of). Each
//! parses its arguments, authorizes `vm-console` and asks the console
//! service; the VM must be running.

use std::collections::HashMap;

use zbus::message::Header;
use zbus::{OwnedFd, OwnedVariant};

use super::VirtualMachine;
use crate::dbus::options;
use crate::dbus::polkit::Action;
use crate::dbus::Error;
use crate::services::console::ConsoleKind;

impl VirtualMachine {
    /// `OpenConsole`: the serial console as one end of a socket pair.
    /// Options: `force` (b).
    pub(super) async fn open_console_fd(
        &self,
        header: &Header<'_>,
        options: &HashMap<String, OwnedVariant>,
    ) -> Result<OwnedFd, Error> {
        options::known(options, &["force"])?;
        let force = options::flag(options, "force")?;
        let verb = if force {
            "take over the serial console of"
        } else {
            "open the serial console of"
        };
        let details = [
            ("vm.console.kind", "serial"),
            ("vm.console.force", if force { "true" } else { "false" }),
        ];
        let rec = self
            .authorize_with(header, Action::VmConsole, verb, &details)
            .await?;
        let fd = self.ctx.consoles.open_console(&rec.uuid, force).await?;
        Ok(fd.into())
    }

    /// `OpenGraphics`: a descriptor connected to the VNC or SPICE display.
    /// No options yet (the dictionary is there for later ones).
    pub(super) async fn open_graphics_fd(
        &self,
        header: &Header<'_>,
        options: &HashMap<String, OwnedVariant>,
    ) -> Result<OwnedFd, Error> {
        options::known(options, &[])?;
        let rec = self
            .authorize_with(
                header,
                Action::VmConsole,
                "open the graphical display of",
                &[("vm.console.kind", "graphics")],
            )
            .await?;
        let fd = self.ctx.consoles.open_graphics(&rec.uuid).await?;
        Ok(fd.into())
    }

    /// `GetConsoleSocket`: the path of the caller's console socket for
    /// `kind` (`serial` or `graphics`).
    pub(super) async fn console_socket_path(
        &self,
        header: &Header<'_>,
        kind: &str,
    ) -> Result<String, Error> {
        let kind = ConsoleKind::parse(kind)?;
        let verb = format!("get a {} console socket for", kind.as_str());
        let rec = self
            .authorize_with(
                header,
                Action::VmConsole,
                &verb,
                &[("vm.console.kind", kind.as_str())],
            )
            .await?;
        let uid = self.ctx.auth.caller_uid(header).await?;
        let path = self
            .ctx
            .consoles
            .console_socket(&rec.uuid, uid, kind)
            .await?;
        Ok(crate::text::for_bus(&path.to_string_lossy()).into_owned())
    }
}
