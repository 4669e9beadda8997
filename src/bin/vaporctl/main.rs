//! vaporctl: the command-line client of vapord. It speaks only D-Bus (never
//! libvirt), so it works for anyone polkit lets through.
//!
//! Exit codes: 0 success; 1 other failure; 2 usage; 3 not found;
//! 4 not authorized; 5 invalid state; 6 invalid argument; 7 conflict;
//! 8 not supported; 66 input file unreadable; 69 vapord or libvirt unavailable;
//! 73 output file cannot be created.
//!
//! One file per noun; every call to vapord goes through the typed clients of
//! `vapor::client::proxies` (see `bus.rs`).

mod apply;
mod backup;
mod bus;
mod change;
mod console;
mod guest;
mod iso;
mod job;
mod metrics;
mod migrate;
mod network;
mod output;
mod pci;
mod pool;
mod snapshot;
mod template;
mod transfer;
mod vm;
mod volume;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zbus::Connection;

pub const BUS_NAME: &str = vapor::client::proxies::SERVICE;
pub const ROOT: &str = vapor::client::proxies::MANAGER_PATH;

/// Manage virtual machines through vapord.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a vapord on the session bus (vapord --session).
    #[arg(long, global = true)]
    session: bool,
    /// Never ask for a password; fail instead when polkit would ask.
    #[arg(long, global = true)]
    no_ask_password: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every VM with its state.
    List,
    /// Show one VM's properties and configuration.
    Show { vm: String },
    /// Boot a VM.
    Start { vm: String },
    /// Ask a VM's guest OS to power off.
    Shutdown { vm: String },
    /// Ask a VM's guest OS to reboot.
    Reboot { vm: String },
    /// Stop a VM at once (pull the plug).
    ForceStop { vm: String },
    /// Freeze a VM.
    Pause { vm: String },
    /// Continue a paused VM.
    Resume { vm: String },
    /// Press a VM's reset button.
    Reset { vm: String },
    /// Attach to a VM's serial console (Ctrl-] leaves); with stdin not a
    /// terminal, just copy both ways (for scripts).
    Console {
        vm: String,
        /// Take the console over from another session.
        #[arg(long)]
        force: bool,
        /// Print the path of a console socket of this kind instead (what
        /// Cockpit connects to).
        #[arg(long, value_name = "KIND", value_parser = ["graphics", "serial"])]
        socket: Option<String>,
    },
    /// Turn starting with the host on or off.
    Autostart {
        vm: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Create a VM from a JSON creation spec (a file, or - for stdin).
    Create {
        spec: String,
        /// Only print the resolved spec and the domain XML; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring the VMs of a declarative document (dbus/schemas/apply.schema.json)
    /// to what it declares: create, converge CPU and memory, start, wait for
    /// the agent, cloud-init status, NFS shares, files, final snapshot. The
    /// files it injects are read here and passed to vapord.
    Apply {
        file: String,
        /// Only look: report what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave absolute sources for vapord to open (polkit storage-host-path)
        /// instead of passing them.
        #[arg(long)]
        host_files: bool,
    },
    /// VM templates.
    #[command(subcommand)]
    Template(template::TemplateCmd),
    /// Host PCI devices and VFIO passthrough.
    #[command(subcommand)]
    Pci(pci::PciCmd),
    /// Give a host PCI device to a VM.
    AttachPci {
        vm: String,
        address: String,
        #[arg(long)]
        guest_address: Option<String>,
        #[arg(long)]
        rom_file: Option<String>,
        /// Accept a device the host seems to need.
        #[arg(long)]
        force: bool,
    },
    /// Take a host PCI device from a VM.
    DetachPci { vm: String, address: String },
    /// Convert an old flat creation spec (storage_pool, iso_path, disks at the
    /// root) to the nested one and print it. Works offline.
    ConvertLegacy { spec: String },
    /// Delete a VM (and, with --remove-storage, the volumes vapord created for it).
    Delete {
        vm: String,
        /// Also delete the volumes vapord created for this VM (unless another VM uses them).
        #[arg(long)]
        remove_storage: bool,
        /// Also delete other writable volumes only this VM uses, such as
        /// attached ones (implies --remove-storage; usually needs an administrator).
        #[arg(long)]
        remove_foreign_storage: bool,
        /// Force-stop the VM first if it is running.
        #[arg(long)]
        force: bool,
    },
    /// Storage pools (named by name or UUID).
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Storage volumes (named POOL/NAME, NAME with --pool POOL, or by file path).
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Installation media (ISO images) and disk images in the pools.
    #[command(subcommand)]
    Iso(iso::IsoCmd),
    /// Virtual networks (named by name or UUID).
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// A VM's snapshots: list, capabilities, create, revert, delete.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Backups in vapord's repository: list, create, verify, restore, delete.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Live-migrate a VM to another libvirt host, with its progress.
    Migrate(migrate::MigrateArgs),
    /// Switch a VM's running migration (started with --postcopy) to post-copy.
    MigratePostcopy { vm: String },
    /// The guest agent: wait, info, exec, cloud-init-status.
    #[command(subcommand)]
    Guest(guest::GuestCmd),
    /// A VM's CPU, memory, disk and network use: a live view until Ctrl-C;
    /// with --json, every sample vapord keeps (up to an hour).
    #[command(flatten)]
    Change(change::ChangeCmd),
    Metrics {
        vm: String,
        /// Print the current values once and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes of the live view.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        let (name, msg) = match &e {
            zbus::Error::MethodError(name, msg, _) => {
                (name.as_str().to_owned(), msg.clone().unwrap_or_default())
            }
            zbus::Error::FDO(f) => {
                use zbus::DBusError;
                (
                    f.name().as_str().to_owned(),
                    f.description().unwrap_or_default().to_owned(),
                )
            }
            other => (String::new(), other.to_string()),
        };
        let short = name.rsplit('.').next().unwrap_or("");
        let code = vapor::dbus::errors::exit_code_for(&name);
        let message = match short {
            "ServiceUnknown" | "NameHasNoOwner" => {
                format!("vapord is not running ({BUS_NAME} is not on the bus)")
            }
            "InteractiveAuthorizationRequired" if msg.is_empty() => {
                "authentication is required".into()
            }
            _ if msg.is_empty() => name,
            _ => msg,
        };
        Failure { code, message }
    }
}

/// Errors of the standard interfaces (ObjectManager, Properties).
impl From<zbus::fdo::Error> for Failure {
    fn from(e: zbus::fdo::Error) -> Self {
        match e {
            zbus::fdo::Error::ZBus(z) => z.into(),
            other => zbus::Error::FDO(Box::new(other)).into(),
        }
    }
}

/// Read a spec: a file, or `-` for stdin (exit 66 when unreadable).
pub fn read_input(path: &str) -> Result<String, Failure> {
    let r = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    r.map_err(|e| Failure {
        code: 66,
        message: format!("cannot read {path}: {e}"),
    })
}

/// Start a text polkit agent for this process when run from a terminal, so
/// polkit can ask for a password (as systemctl does).
fn spawn_tty_agent() -> Option<std::process::Child> {
    use std::io::IsTerminal;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    if !std::io::stdin().is_terminal() || !std::path::Path::new("/usr/bin/pkttyagent").exists() {
        return None;
    }
    let mut fds = [0; 2];
    // SAFETY: plain pipe creation.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both fds were just created and are owned here.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let wfd = write.as_raw_fd();
    let mut cmd = std::process::Command::new("/usr/bin/pkttyagent");
    cmd.args([
        "--process",
        &std::process::id().to_string(),
        "--notify-fd",
        &wfd.to_string(),
        "--fallback",
    ]);
    // SAFETY: only async-signal-safe fcntl and prctl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(wfd, libc::F_GETFD);
            libc::fcntl(wfd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            // The agent goes with vaporctl, however vaporctl ends.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().ok()?;
    drop(write);
    // The agent closes the fd once it is registered.
    let mut buf = [0u8; 1];
    let _ = std::io::Read::read(&mut &read, &mut buf);
    Some(child)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Cmd::ConvertLegacy { spec } = &cli.cmd {
        return vm::convert_legacy(spec);
    }
    let conn = if cli.session {
        Connection::session().await
    } else {
        Connection::system().await
    }
    .map_err(|e| Failure {
        code: 69,
        message: format!("cannot connect to the D-Bus bus: {e}"),
    })?;
    // Every method call carries ALLOW_INTERACTIVE_AUTHORIZATION unless
    // --no-ask-password (the clients pick the matching generated proxy).
    let c = bus::Client::new(conn, !cli.no_ask_password);
    let json = cli.json;
    match &cli.cmd {
        Cmd::List => vm::list(&c, json).await,
        Cmd::Show { vm } => vm::show(&c, vm, json).await,
        Cmd::Start { vm } => vm::action(&c, vm, vm::Action::Start, json).await,
        Cmd::Shutdown { vm } => vm::action(&c, vm, vm::Action::Shutdown, json).await,
        Cmd::Reboot { vm } => vm::action(&c, vm, vm::Action::Reboot, json).await,
        Cmd::ForceStop { vm } => vm::action(&c, vm, vm::Action::ForceStop, json).await,
        Cmd::Pause { vm } => vm::action(&c, vm, vm::Action::Pause, json).await,
        Cmd::Resume { vm } => vm::action(&c, vm, vm::Action::Resume, json).await,
        Cmd::Reset { vm } => vm::action(&c, vm, vm::Action::Reset, json).await,
        Cmd::Console { vm, force, socket } => {
            console::run(&c, vm, *force, socket.as_deref(), json).await
        }
        Cmd::Autostart { vm, state } => vm::autostart(&c, vm, state, json).await,
        Cmd::Create { spec, dry_run } => vm::create(&c, spec, *dry_run, json).await,
        Cmd::Apply {
            file,
            dry_run,
            host_files,
        } => apply::run(&c, file, *dry_run, *host_files, json).await,
        Cmd::Change(ch) => change::run(&c, ch, json).await,
        Cmd::Snapshot(s) => snapshot::run(&c, s, json).await,
        Cmd::Backup(b) => backup::run(&c, b, json).await,
        Cmd::Migrate(m) => migrate::run(&c, m, json).await,
        Cmd::Guest(g) => guest::run(&c, g, json).await,
        Cmd::MigratePostcopy { vm } => {
            c.vm(vm).await?.migrate_start_postcopy().await?;
            println!("{vm}: the migration continues in post-copy");
            Ok(())
        }
        Cmd::Template(t) => template::run(&c, t, json).await,
        Cmd::Pci(p) => pci::run(&c, p, json).await,
        Cmd::AttachPci {
            vm,
            address,
            guest_address,
            rom_file,
            force,
        } => {
            pci::attach(
                &c,
                vm,
                address,
                guest_address.as_deref(),
                rom_file.as_deref(),
                *force,
            )
            .await
        }
        Cmd::DetachPci { vm, address } => pci::detach(&c, vm, address).await,
        Cmd::ConvertLegacy { .. } => unreachable!("handled before connecting"),
        Cmd::Delete {
            vm,
            remove_storage,
            remove_foreign_storage,
            force,
        } => {
            let opts = vm::DeleteOptions {
                remove_storage: *remove_storage,
                remove_foreign_storage: *remove_foreign_storage,
                force: *force,
            };
            vm::delete(&c, vm, opts, json).await
        }
        Cmd::Pool(p) => pool::run(&c, p, json).await,
        Cmd::Volume(v) => volume::run(&c, v, json).await,
        Cmd::Iso(i) => iso::run(&c, i, json).await,
        Cmd::Network(n) => network::run(&c, n, json).await,
        Cmd::Metrics { vm, once, interval } => metrics::run(&c, vm, *once, *interval, json).await,
    }
}

fn main() -> ExitCode {
    // Output into a closed pipe (`vaporctl list | head`) ends vaporctl
    // quietly, as it does other tools, instead of a panic.
    // SAFETY: setting a signal's disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let agent = if cli.no_ask_password || cli.session {
        None
    } else {
        spawn_tty_agent()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vaporctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    if let Some(mut a) = agent {
        let _ = a.kill();
        let _ = a.wait();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // An empty message: the exit code says it all (a guest
            // program's own status, say).
            if !f.message.is_empty() {
                eprintln!("vaporctl: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
