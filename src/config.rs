//! vapord's configuration: `/etc/vapor/vapord.toml`, then command-line flags.
//!
//! A missing file means built-in defaults; a file that does not parse, has an
//! unknown key or a bad value is an error naming the line (from the TOML
//! parser) or the key, so the daemon refuses to start with a wrong setup.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/vapor/vapord.toml";

/// Every setting, with its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Where API-created templates and remembered PCI drivers live.
    pub state_dir: PathBuf,
    /// How often live CPU time / memory use of running VMs is refreshed with one
    /// bulk statistics call; 0 turns it off (state changes are event-driven anyway).
    /// The VMs' rates (CPU %, disk and network bytes per second), their
    /// hour of metrics samples and the host's load follow this interval.
    pub stats_interval_secs: u64,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// Guest CPU for new VMs: `none` (no `<cpu>` element), `custom:<model>`,
    /// `host-model` or `host-passthrough`.
    pub default_cpu_mode: String,
    /// Longest wait, in milliseconds, between reconnection attempts when
    /// libvirtd is gone (so vapord is back within this long of libvirtd).
    pub reconnect_max_ms: u64,
    /// Read-only templates shipped with vapord (API-created ones live in
    /// `<state_dir>/templates`).
    pub templates_dir: PathBuf,
    /// Where sysfs is mounted (`/` on a host; a fake tree for tests). Live
    /// udev updates are only followed for the real one.
    pub sysfs_root: PathBuf,
    /// Where `proc` is (mounts and routes, for HostCritical).
    pub procfs_root: PathBuf,
    /// The pci.ids database; unset = hwdata's usual places.
    pub pci_ids: Option<PathBuf>,
    /// How long a polkit check may take (when the caller did not allow a
    /// password prompt) before that one call fails with `Timeout`; below the
    /// 25 s most D-Bus clients wait for a reply.
    pub polkit_timeout_secs: u64,
    /// Where the console sockets of `GetConsoleSocket` are made (emptied
    /// at start: sockets of an earlier run are stale).
    pub console_dir: PathBuf,
    /// How long a console socket may go without a connection before it is
    /// removed.
    pub console_idle_secs: u64,
    /// Other libvirt hosts by name (`[hosts]`: name = "URI"), for
    /// migrations: a caller names one of these (or, with
    /// `allow_unlisted_destinations`, gives a remote URI without
    /// parameters).
    pub hosts: std::collections::BTreeMap<String, String>,
    /// Whether callers may also name hosts not in `[hosts]` by a remote
    /// URI (vapord connects as root, with root's SSH keys and TLS
    /// certificates, so the default is no).
    pub allow_unlisted_destinations: bool,
    /// The backup repository: a directory only vapord writes (unset:
    /// `<state_dir>/backups`).
    pub backup_dir: Option<PathBuf>,
    /// The backup repository in a libvirt pool instead (a running `dir`,
    /// `fs` or `netfs` pool, e.g. an NFS export): the backups go to
    /// `<pool target>/vapor-backups`. Not together with `backup_dir`.
    pub backup_pool: Option<String>,
    /// How long `WaitForAgent` waits for a guest agent when the caller
    /// gives no timeout, in seconds.
    pub agent_timeout_secs: u64,
    /// Upper bounds on what one creation request may ask for.
    pub limits: Limits,
}

/// Upper bounds enforced when a creation is planned (`[limits]`). An unset
/// bound is the host's own: its physical memory, the hypervisor's vCPU
/// maximum; disks are sparse, so their size is bounded only when set (what
/// they take now, preallocated, must fit in the pool's free space anyway).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest disk, in GiB.
    pub max_disk_gib: Option<u64>,
    /// Most disks (including cdroms) one VM may have.
    pub max_disks: Option<u32>,
    /// Largest memory of one VM, in MiB.
    pub max_memory_mib: Option<u64>,
    /// Most vCPUs of one VM.
    pub max_vcpus: Option<u32>,
}

impl Limits {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let zero = |key, v: Option<u64>| match v {
            Some(0) => Err((
                key,
                "must be at least 1 (leave it out for the host's own limit)".into(),
            )),
            _ => Ok(()),
        };
        zero("limits.max_disk_gib", self.max_disk_gib)?;
        zero("limits.max_disks", self.max_disks.map(u64::from))?;
        zero("limits.max_memory_mib", self.max_memory_mib)?;
        zero("limits.max_vcpus", self.max_vcpus.map(u64::from))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            libvirt_uri: "qemu:///system".into(),
            state_dir: PathBuf::from("/var/lib/vapor"),
            stats_interval_secs: 5,
            log_level: "info".into(),
            default_cpu_mode: "none".into(),
            reconnect_max_ms: 500,
            templates_dir: PathBuf::from("/etc/vapor/templates.d"),
            sysfs_root: PathBuf::from("/"),
            procfs_root: PathBuf::from("/"),
            pci_ids: None,
            polkit_timeout_secs: 15,
            console_dir: PathBuf::from("/run/vapor/console"),
            console_idle_secs: 300,
            hosts: std::collections::BTreeMap::new(),
            allow_unlisted_destinations: false,
            backup_dir: None,
            backup_pool: None,
            agent_timeout_secs: 300,
            limits: Limits::default(),
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Load `path`. When `required` is false a missing file yields the defaults.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let cfg = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Value {
                path: path.into(),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Parse TOML text; the error carries the parser's line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Check values the type system cannot.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.libvirt_uri.trim().is_empty() {
            return Err(("libvirt_uri", "must not be empty".into()));
        }
        if !matches!(
            self.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err((
                "log_level",
                format!(
                    "'{}' is not one of error, warn, info, debug, trace",
                    self.log_level
                ),
            ));
        }
        let cpu_ok = match self.default_cpu_mode.as_str() {
            "none" | "host-model" | "host-passthrough" => true,
            m => m
                .strip_prefix("custom:")
                .is_some_and(|model| !model.is_empty()),
        };
        if !cpu_ok {
            return Err((
                "default_cpu_mode",
                format!(
                    "'{}' is not none, custom:<model>, host-model or host-passthrough",
                    self.default_cpu_mode
                ),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(("state_dir", "must be an absolute path".into()));
        }
        if !(50..=60_000).contains(&self.reconnect_max_ms) {
            return Err(("reconnect_max_ms", "must be between 50 and 60000".into()));
        }
        if !(1..=120).contains(&self.polkit_timeout_secs) {
            return Err(("polkit_timeout_secs", "must be between 1 and 120".into()));
        }
        if !self.console_dir.is_absolute() {
            return Err(("console_dir", "must be an absolute path".into()));
        }
        if !(1..=86_400).contains(&self.console_idle_secs) {
            return Err(("console_idle_secs", "must be between 1 and 86400".into()));
        }
        for (name, uri) in &self.hosts {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err((
                    "hosts",
                    format!("'{name}' is not a host name (letters, digits, - _ .)"),
                ));
            }
            if uri.trim().is_empty() || uri.chars().any(char::is_control) {
                return Err((
                    "hosts",
                    format!("{name}: the URI is empty or holds control characters"),
                ));
            }
        }
        if self.backup_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(("backup_dir", "must be an absolute path".into()));
        }
        if let Some(p) = &self.backup_pool {
            if self.backup_dir.is_some() {
                return Err((
                    "backup_pool",
                    "set backup_dir or backup_pool, not both".into(),
                ));
            }
            if p.is_empty() || p.len() > 255 || p.contains('/') || p.chars().any(char::is_control) {
                return Err(("backup_pool", format!("'{p}' is not a pool name")));
            }
        }
        if !(1..=86_400).contains(&self.agent_timeout_secs) {
            return Err(("agent_timeout_secs", "must be between 1 and 86400".into()));
        }
        self.limits.validate()?;
        Ok(())
    }

    /// Where the backup repository is.
    pub fn backup_location(&self) -> BackupLocation {
        match (&self.backup_pool, &self.backup_dir) {
            (Some(pool), _) => BackupLocation::Pool(pool.clone()),
            (None, Some(dir)) => BackupLocation::Dir(dir.clone()),
            (None, None) => BackupLocation::Dir(self.state_dir.join("backups")),
        }
    }
}

/// Where the backup repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupLocation {
    /// A directory of this host.
    Dir(PathBuf),
    /// `vapor-backups` in the target directory of this libvirt pool.
    Pool(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_optional_file_gives_defaults() {
        let cfg = Config::load(Path::new("/nonexistent/vapord.toml"), false).unwrap();
        assert_eq!(cfg, Config::default());
        assert!(Config::load(Path::new("/nonexistent/vapord.toml"), true).is_err());
    }

    #[test]
    fn parse_error_names_the_line() {
        let err =
            Config::parse("libvirt_uri = \"qemu:///system\"\nstats_interval_secs = \"often\"\n")
                .unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("libvirt_url = \"x\"\n").unwrap_err();
        assert!(err.contains("libvirt_url"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut cfg = Config::parse("default_cpu_mode = \"custom:\"\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "default_cpu_mode");
        cfg.default_cpu_mode = "custom:Nehalem".into();
        assert!(cfg.validate().is_ok());
        cfg.log_level = "loud".into();
        assert_eq!(cfg.validate().unwrap_err().0, "log_level");
    }

    #[test]
    fn limits_are_read_and_zero_is_refused() {
        let cfg = Config::parse("[limits]\nmax_disk_gib = 100\nmax_vcpus = 4\n").unwrap();
        assert_eq!(cfg.limits.max_disk_gib, Some(100));
        assert_eq!(cfg.limits.max_vcpus, Some(4));
        assert_eq!(cfg.limits.max_memory_mib, None);
        assert!(cfg.validate().is_ok());
        let cfg = Config::parse("[limits]\nmax_disks = 0\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "limits.max_disks");
        assert!(Config::parse("[limits]\nmax_gpus = 1\n").is_err());
    }

    #[test]
    fn console_settings_are_read_and_checked() {
        let cfg = Config::parse("console_dir = \"/run/x\"\nconsole_idle_secs = 5\n").unwrap();
        assert_eq!(cfg.console_dir, PathBuf::from("/run/x"));
        assert_eq!(cfg.console_idle_secs, 5);
        assert!(cfg.validate().is_ok());
        let cfg = Config::parse("console_idle_secs = 0\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "console_idle_secs");
        let cfg = Config::parse("console_dir = \"run/x\"\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "console_dir");
    }

    #[test]
    fn the_backup_repository_is_a_directory_or_a_pool() {
        let cfg = Config::default();
        assert_eq!(
            cfg.backup_location(),
            BackupLocation::Dir(PathBuf::from("/var/lib/vapor/backups"))
        );
        let cfg = Config::parse("backup_dir = \"/srv/b\"\n").unwrap();
        assert_eq!(
            cfg.backup_location(),
            BackupLocation::Dir(PathBuf::from("/srv/b"))
        );
        let cfg = Config::parse("backup_pool = \"nfs-backups\"\n").unwrap();
        assert!(cfg.validate().is_ok());
        assert_eq!(
            cfg.backup_location(),
            BackupLocation::Pool("nfs-backups".into())
        );
        let cfg = Config::parse("backup_pool = \"a\"\nbackup_dir = \"/srv/b\"\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "backup_pool");
        let cfg = Config::parse("backup_pool = \"../etc\"\n").unwrap();
        assert_eq!(cfg.validate().unwrap_err().0, "backup_pool");
    }

    #[test]
    fn shipped_default_config_parses_to_the_defaults() {
        let text = include_str!("../packaging/vapord.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg, Config::default());
    }
}
