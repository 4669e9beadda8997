//! The one authorization helper every handler calls.
//!
//! The subject is the caller's unique bus name taken from the message header
//! (never vapord's own pid); details name the object so rules can decide per VM
//! or per device; the message's ALLOW_INTERACTIVE_AUTHORIZATION flag decides
//! whether polkit may ask for a password. Callers running as uid 0 are allowed
//! without asking polkit (they could use libvirt directly anyway), as udisks
//! does. On the session bus there is no polkit: the bus itself is the boundary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use zbus::message::{Flags, Header};
use zbus::names::{BusName, OwnedUniqueName};
use zbus::Connection;
use zbus_polkit::policykit1::{AuthorityProxy, CheckAuthorizationFlags, Subject};

use super::Error;
use crate::text::for_bus;

/// How long polkit may take when it may ask the user for a password.
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(300);
/// Cancellation ids for polkit checks, unique within this process.
static CHECK_IDS: AtomicU64 = AtomicU64::new(1);

/// Prefix of every vapord polkit action id.
pub const ACTION_PREFIX: &str = "org.vapor.virtualization.";

/// A polkit action vapord checks. The ids must exist in
/// `polkit/org.vapor.virtualization.policy` (a test enforces it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    VmLifecycle,
    VmModify,
    VmDelete,
    /// Using a VM's serial console or graphical display.
    VmConsole,
    /// Deleting storage a VM uses that vapord did not create for it.
    VmDeleteForeignStorage,
    VmCreate,
    TemplateManage,
    StorageHostPath,
    PciAssign,
    PciAssignHostCritical,
    /// Creating, changing and deleting storage pools and volumes.
    StorageManage,
    /// Creating, changing and deleting virtual networks.
    NetworkManage,
    /// Making, reverting to and deleting snapshots of a VM.
    SnapshotManage,
    /// Migrating a VM to another host.
    Migrate,
    /// Running programs inside a guest through its agent (as root there).
    GuestExec,
    /// Writing and reading files inside a guest through its agent.
    GuestFile,
    /// Backing up a VM.
    BackupCreate,
    /// Restoring a backup as a new VM.
    BackupRestore,
    /// Restoring a backup over the VM it is of.
    BackupRestoreReplace,
    /// Deleting backups.
    BackupDelete,
    /// Cancelling a job one started oneself.
    JobCancel,
    /// Cancelling someone else's job.
    JobCancelOther,
}

impl Action {
    pub fn id(self) -> &'static str {
        match self {
            Action::Read => "org.vapor.virtualization.read",
            Action::VmLifecycle => "org.vapor.virtualization.vm-lifecycle",
            Action::VmModify => "org.vapor.virtualization.vm-modify",
            Action::VmDelete => "org.vapor.virtualization.vm-delete",
            Action::VmConsole => "org.vapor.virtualization.vm-console",
            Action::VmDeleteForeignStorage => "org.vapor.virtualization.vm-delete-foreign-storage",
            Action::VmCreate => "org.vapor.virtualization.vm-create",
            Action::TemplateManage => "org.vapor.virtualization.template-manage",
            Action::StorageHostPath => "org.vapor.virtualization.storage-host-path",
            Action::PciAssign => "org.vapor.virtualization.pci-assign",
            Action::PciAssignHostCritical => "org.vapor.virtualization.pci-assign-host-critical",
            Action::StorageManage => "org.vapor.virtualization.storage-manage",
            Action::NetworkManage => "org.vapor.virtualization.network-manage",
            Action::SnapshotManage => "org.vapor.virtualization.snapshot-manage",
            Action::Migrate => "org.vapor.virtualization.migrate",
            Action::GuestExec => "org.vapor.virtualization.guest-exec",
            Action::GuestFile => "org.vapor.virtualization.guest-file",
            Action::BackupCreate => "org.vapor.virtualization.backup-create",
            Action::BackupRestore => "org.vapor.virtualization.backup-restore",
            Action::BackupRestoreReplace => "org.vapor.virtualization.backup-restore-replace",
            Action::BackupDelete => "org.vapor.virtualization.backup-delete",
            Action::JobCancel => "org.vapor.virtualization.job-cancel",
            Action::JobCancelOther => "org.vapor.virtualization.job-cancel-other",
        }
    }
}

/// What an action is done to, as polkit sees it: each kind of object names
/// itself and supplies its own details (`vm.*`, `pci.*`, `pool.*`, …).
pub trait Target: Sync {
    /// How messages name it: "the virtual machine 'web'" ("" for none).
    fn describe(&self) -> String;
    /// The polkit details rules can decide on.
    fn details(&self) -> Vec<(&'static str, String)>;
}

/// An action on the host as a whole (listing, creating by a spec, …):
/// the verb says everything.
pub struct Host;

impl Target for Host {
    fn describe(&self) -> String {
        String::new()
    }
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

enum Mode {
    Polkit(AuthorityProxy<'static>),
    /// Session bus: only the owning user can reach us.
    SessionBus,
}

/// Ask the bus which uid sent this message (uncached).
pub async fn lookup_caller_uid(conn: &Connection, header: &Header<'_>) -> Result<u32, Error> {
    let sender = header
        .sender()
        .ok_or_else(|| Error::NotAuthorized("the call has no sender".into()))?;
    zbus::fdo::DBusProxy::new(conn)
        .await?
        .get_connection_unix_user(BusName::Unique(sender.clone()))
        .await
        .map_err(|e| Error::NotAuthorized(format!("cannot identify the caller: {e}")))
}

/// Checks callers against polkit.
pub struct Authorizer {
    mode: Mode,
    conn: Connection,
    /// How long a non-interactive check may take before the call fails.
    check_timeout: Duration,
    /// Unique name → uid. Unique names are never reused on a bus.
    uids: Mutex<HashMap<OwnedUniqueName, u32>>,
}

impl Authorizer {
    /// Authorize through polkitd on the system bus.
    /// Authorize through polkitd; a non-interactive check that takes longer
    /// than `check_timeout` fails that one call.
    pub async fn polkit(conn: &Connection, check_timeout: Duration) -> zbus::Result<Self> {
        Ok(Self {
            mode: Mode::Polkit(AuthorityProxy::new(conn).await?),
            conn: conn.clone(),
            check_timeout,
            uids: Mutex::new(HashMap::new()),
        })
    }

    /// No polkit (session bus).
    pub fn session_bus(conn: &Connection) -> Self {
        Self {
            mode: Mode::SessionBus,
            conn: conn.clone(),
            check_timeout: Duration::from_secs(15),
            uids: Mutex::new(HashMap::new()),
        }
    }

    /// The uid of the caller of this message.
    pub async fn caller_uid(&self, header: &Header<'_>) -> Result<u32, Error> {
        let sender = header
            .sender()
            .ok_or_else(|| Error::NotAuthorized("the call has no sender".into()))?;
        let owned = OwnedUniqueName::from(sender.to_owned());
        if let Some(uid) = self.cache().get(&owned) {
            return Ok(*uid);
        }
        let uid = lookup_caller_uid(&self.conn, header).await?;
        let mut cache = self.cache();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(owned, uid);
        Ok(uid)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUniqueName, u32>> {
        self.uids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allow `verb` on `target` (its own details go to polkit), or fail
    /// with NotAuthorized / InteractiveAuthorizationRequired. Every handler
    /// authorizes with this one call.
    pub async fn check(
        &self,
        header: &Header<'_>,
        action: Action,
        target: &dyn Target,
        verb: &str,
    ) -> Result<(), Error> {
        self.check_with(header, action, target, verb, &[]).await
    }

    /// [`Authorizer::check`] with details about the request beyond the
    /// target's own (delete options, a host path, …).
    pub async fn check_with(
        &self,
        header: &Header<'_>,
        action: Action,
        target: &dyn Target,
        verb: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), Error> {
        let own = target.details();
        let mut details: Vec<(&str, &str)> = own.iter().map(|(k, v)| (*k, v.as_str())).collect();
        details.extend_from_slice(extra);
        let what = match target.describe() {
            d if d.is_empty() => verb.to_owned(),
            d => format!("{verb} {d}"),
        };
        self.check_details(header, action, &details, &what).await
    }

    /// Allow the call, or fail with NotAuthorized /
    /// InteractiveAuthorizationRequired. `what` completes "Not authorized to …"
    /// and polkit's "Authentication is required to …".
    async fn check_details(
        &self,
        header: &Header<'_>,
        action: Action,
        details: &[(&str, &str)],
        what: &str,
    ) -> Result<(), Error> {
        let authority = match &self.mode {
            Mode::SessionBus => return Ok(()),
            Mode::Polkit(a) => a,
        };
        if self.caller_uid(header).await? == 0 {
            return Ok(());
        }
        let subject = Subject::new_for_message_header(header)
            .map_err(|e| Error::NotAuthorized(format!("cannot identify the caller: {e}")))?;
        // Details go out in a bus message: whatever a caller managed to put in
        // them must not make that message invalid (a NUL would get vapord
        // disconnected from the bus).
        let message = for_bus(&format!("Authentication is required to {what}")).into_owned();
        let details: Vec<(String, String)> = details
            .iter()
            .map(|(k, v)| (for_bus(k).into_owned(), for_bus(v).into_owned()))
            .collect();
        let mut map: HashMap<&str, &str> = details
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        map.insert("polkit.message", &message);
        let interactive = header
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH);
        let flags = if interactive {
            CheckAuthorizationFlags::ALLOW_USER_INTERACTION
        } else {
            CheckAuthorizationFlags::empty()
        };
        // polkitd answers one request at a time; when it stalls, this call
        // fails on its own instead of hanging, and other callers go on.
        let limit = if interactive {
            INTERACTIVE_TIMEOUT
        } else {
            self.check_timeout
        };
        let cancel_id = format!("vapord-{}", CHECK_IDS.fetch_add(1, Ordering::Relaxed));
        let asked = authority.check_authorization(&subject, action.id(), &map, flags, &cancel_id);
        let result = match tokio::time::timeout(limit, asked).await {
            Ok(answer) => answer.map_err(|e| {
                log::warn!(action = action.id(); "cannot ask polkit: {e}");
                Error::Unavailable(format!("cannot ask polkit about {}: {e}", action.id()))
            })?,
            Err(_) => {
                let authority = authority.clone();
                tokio::spawn(async move {
                    let _ = authority.cancel_check_authorization(&cancel_id).await;
                });
                log::warn!(action = action.id(); "polkit did not answer within {} s", limit.as_secs());
                return Err(Error::Timeout(format!(
                    "polkit did not answer within {} s whether you may {what} (polkit action {}); \
                     nothing was done, try again",
                    limit.as_secs(),
                    action.id()
                )));
            }
        };
        if result.is_authorized {
            Ok(())
        } else if result.is_challenge && !interactive {
            Err(Error::InteractiveAuthorizationRequired(format!(
                "authentication is required to {what} (polkit action {}); \
                 call again allowing interactive authorization",
                action.id()
            )))
        } else {
            Err(Error::NotAuthorized(format!(
                "not authorized to {what} (polkit action {})",
                action.id()
            )))
        }
    }
}
