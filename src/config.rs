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
    pub stats_interval_secs: u64,
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// Guest CPU for new VMs: `none` (no `<cpu>` element), `custom:<model>`,
    /// `host-model` or `host-passthrough`.
    pub default_cpu_mode: String,
    /// Longest wait between reconnection attempts when libvirtd is gone.
    pub reconnect_max_secs: u64,
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            libvirt_uri: "qemu:///system".into(),
            state_dir: PathBuf::from("/var/lib/vapor"),
            stats_interval_secs: 5,
            log_level: "info".into(),
            default_cpu_mode: "none".into(),
            reconnect_max_secs: 5,
            templates_dir: PathBuf::from("/etc/vapor/templates.d"),
            sysfs_root: PathBuf::from("/"),
            procfs_root: PathBuf::from("/"),
            pci_ids: None,
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
        if self.reconnect_max_secs == 0 {
            return Err(("reconnect_max_secs", "must be at least 1".into()));
        }
        Ok(())
    }
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
    fn shipped_default_config_parses_to_the_defaults() {
        let text = include_str!("../packaging/vapord.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg, Config::default());
    }
}
