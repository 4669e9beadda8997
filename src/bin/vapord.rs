//! vapord: the system daemon. See README.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vapor::config::{Config, DEFAULT_PATH};
use vapor::daemon::{self, RunOptions};

/// Makes libvirt virtual machines manageable by unprivileged people over D-Bus,
/// with polkit deciding who may do what.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (a missing default file means built-in defaults;
    /// a file named here must exist).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// libvirt URI (overrides the config file).
    #[arg(long, value_name = "URI")]
    uri: Option<String>,
    /// Serve one user on the session bus against qemu:///session; no polkit.
    #[arg(long)]
    session: bool,
    /// State directory (overrides the config file).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Directory of shipped read-only templates (overrides the config file).
    #[arg(long, value_name = "DIR")]
    templates_dir: Option<PathBuf>,
    /// sysfs root for PCI devices (tests use a fake tree; overrides the config file).
    #[arg(long, value_name = "DIR")]
    sysfs_root: Option<PathBuf>,
    /// The PCI ID database (overrides the config file).
    #[arg(long, value_name = "FILE")]
    pci_ids: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Seconds between live statistics refreshes (0: off).
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// Take the bus name over from a running vapord, which then exits.
    #[arg(long)]
    replace: bool,
    /// Seconds a non-interactive polkit check may take (overrides the config file).
    #[arg(long, value_name = "SECS")]
    polkit_timeout: Option<u64>,
    /// Emulate the kernel's reactions under --sysfs-root (the tests' fake
    /// tree). Only in test builds (feature test-fakes).
    #[cfg(feature = "test-fakes")]
    #[arg(long, requires = "sysfs_root")]
    fake_kernel: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_PATH), false),
    };
    let mut cfg = match Config::load(&path, required) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vapord: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    if args.session && args.uri.is_none() && cfg.libvirt_uri == Config::default().libvirt_uri {
        cfg.libvirt_uri = "qemu:///session".into();
    }
    if args.session && args.state_dir.is_none() && cfg.state_dir == Config::default().state_dir {
        // One user's daemon keeps its state with the user.
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
        if let Some(base) = base {
            cfg.state_dir = base.join("vapor");
        }
    }
    if args.session && cfg.console_dir == Config::default().console_dir {
        // One user's daemon makes its console sockets in their runtime dir.
        if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
            cfg.console_dir = PathBuf::from(run).join("vapor/console");
        }
    }
    if let Some(u) = args.uri {
        cfg.libvirt_uri = u;
    }
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    if let Some(d) = args.templates_dir {
        cfg.templates_dir = d;
    }
    if let Some(p) = args.pci_ids {
        cfg.pci_ids = Some(p);
    }
    if let Some(d) = args.sysfs_root {
        cfg.sysfs_root = d;
    }
    if let Some(l) = args.log_level {
        cfg.log_level = l;
    }
    if let Some(s) = args.stats_interval {
        cfg.stats_interval_secs = s;
    }
    if let Some(s) = args.polkit_timeout {
        cfg.polkit_timeout_secs = s;
    }
    if let Err((key, msg)) = cfg.validate() {
        eprintln!("vapord: {key}: {msg}");
        return ExitCode::from(78);
    }
    let sink = vapor::logging::init(&cfg.log_level);
    log::debug!("logging to {sink}");

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vapord: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = RunOptions {
        session: args.session,
        replace: args.replace,
        #[cfg(feature = "test-fakes")]
        fake_kernel: args.fake_kernel,
        #[cfg(not(feature = "test-fakes"))]
        fake_kernel: false,
    };
    match rt.block_on(daemon::run(cfg, opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("vapord: {e}");
            ExitCode::FAILURE
        }
    }
}
