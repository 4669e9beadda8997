//! The cloud-init NoCloud seed ISO: `user-data`, `meta-data` and, when
//! given, `network-config` on an ISO 9660 volume labelled `cidata`, built
//! with `xorriso`.
//!
//! `meta-data` always carries an `instance-id` and a `local-hostname`. A
//! generated instance-id is `iid-<vm>-<16 hex of sha256(user-data, network-config)>`,
//! so it changes exactly when the guest's configuration does, and cloud-init
//! then runs its per-instance modules again.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::CloudInitSpec;
use crate::{Error, Result};

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedInfo {
    /// The instance-id in `meta-data` (given or generated).
    pub instance_id: String,
    /// Size of the ISO file.
    pub size_bytes: u64,
}

const DEFAULT_USER_DATA: &str = "#cloud-config\n";

/// Builds the seed ISO for `vm_name` at `out` (replacing it atomically: the
/// ISO is written next to `out` and renamed over it, mode 0644).
pub fn build_seed_iso(spec: &CloudInitSpec, vm_name: &str, out: &Path) -> Result<SeedInfo> {
    let user_data = spec.user_data.as_deref().unwrap_or(DEFAULT_USER_DATA);
    let generated_id = generated_instance_id(vm_name, user_data, spec.network_config.as_deref());
    let (meta_data, instance_id) = complete_meta_data(
        spec.meta_data.as_deref(),
        &generated_id,
        &hostname_for(vm_name),
    )?;

    // The user data is written next to `out`, which the caller keeps in a
    // private directory (it can carry secrets).
    let work = WorkDir::create(out.parent().unwrap_or(Path::new(".")))?;
    let write = |name: &str, text: &str| {
        fs::write(work.0.join(name), text)
            .map_err(|e| Error::Failed(format!("cannot write cloud-init {name}: {e}")))
    };
    write("user-data", user_data)?;
    write("meta-data", &meta_data)?;
    if let Some(nc) = &spec.network_config {
        write("network-config", nc)?;
    }

    let tmp_out = sibling_temp(out)?;
    let result = run_xorriso(&work.0, &tmp_out).and_then(|()| {
        fs::set_permissions(&tmp_out, fs::Permissions::from_mode(0o644))
            .and_then(|()| fs::rename(&tmp_out, out))
            .map_err(|e| Error::Failed(format!("cannot write {}: {e}", out.display())))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp_out);
    }
    result?;
    let size_bytes = fs::metadata(out)
        .map_err(|e| Error::Failed(format!("cannot stat {}: {e}", out.display())))?
        .len();
    Ok(SeedInfo {
        instance_id,
        size_bytes,
    })
}

/// The cloud-init data of an existing seed ISO, extracted into `dir` (a
/// private scratch directory), for a new seed of a clone: the meta-data
/// loses its `instance-id` and `local-hostname`, which the new seed makes
/// anew.
pub fn read_seed_iso(iso: &Path, dir: &Path) -> Result<CloudInitSpec> {
    let Some(xorriso) = crate::process::find_program("xorriso") else {
        return Err(Error::NotSupported(
            "cloud-init needs xorriso: apt-get install xorriso".into(),
        ));
    };
    // The seed is the VM owner's to change: only the three files are taken,
    // each only if it is a regular file of a sane size (never a link out).
    let read = |name: &str| -> Result<Option<String>> {
        let out = dir.join(name);
        let mut cmd = Command::new(&xorriso);
        cmd.args(["-osirrox", "on", "-indev"])
            .arg(iso)
            .args(["-extract", &format!("/{name}")])
            .arg(&out);
        let done = crate::process::run(
            cmd,
            std::time::Duration::from_secs(60),
            "reading the cloud-init seed ISO with xorriso",
        )?;
        if !done.status.success() {
            return Ok(None);
        }
        let meta = fs::symlink_metadata(&out)
            .map_err(|e| Error::Failed(format!("cannot read {name} of the seed: {e}")))?;
        if !meta.is_file() || meta.len() > SEED_FILE_MAX {
            return Err(Error::InvalidState(format!(
                "the cloud-init seed's {name} is not a regular file of at most {SEED_FILE_MAX} bytes"
            )));
        }
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&out)
            .map_err(|e| Error::Failed(format!("cannot read {name} of the seed: {e}")))?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text)
            .map_err(|e| Error::InvalidState(format!("the seed's {name} is not text: {e}")))?;
        Ok(Some(text))
    };
    let meta_data = read("meta-data")?.map(|m| {
        if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(&m) {
            obj.remove("instance-id");
            obj.remove("local-hostname");
            return Value::Object(obj).to_string();
        }
        m.lines()
            .filter(|l| {
                let key = l.trim_start();
                !(key.starts_with("instance-id:") || key.starts_with("local-hostname:"))
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    });
    let spec = CloudInitSpec {
        user_data: read("user-data")?,
        meta_data: meta_data.filter(|m| !m.trim().is_empty()),
        network_config: read("network-config")?,
    };
    // Held to the rules a new VM's cloud-init data is held to.
    check(&spec)?;
    Ok(spec)
}

/// The largest seed file a clone takes over.
const SEED_FILE_MAX: u64 = 1 << 20;

/// The first lines cloud-init recognises user data by; anything else it
/// ignores without a word, so it is refused when the request is planned.
const USER_DATA_HEADERS: &[&str] = &[
    "#cloud-config",
    "#!",
    "#include",
    "#cloud-boothook",
    "#part-handler",
    "#cloud-config-archive",
    "#cloud-config-jsonp",
    "## template: jinja",
    "Content-Type:",
    "MIME-Version:",
];

/// Check what building the seed would check, before anything is made (the
/// dry run reports the same errors as the creation).
pub fn check(spec: &CloudInitSpec) -> Result<()> {
    if let Some(ud) = spec.user_data.as_deref() {
        let first = ud.trim_start_matches('\u{feff}');
        if !USER_DATA_HEADERS.iter().any(|h| first.starts_with(h)) {
            return Err(Error::InvalidArgument(
                "cloud_init.user_data: must start with a cloud-init header such as \
                 #cloud-config or #! (cloud-init ignores anything else)"
                    .into(),
            ));
        }
    }
    if let Some(nc) = spec.network_config.as_deref() {
        if nc.trim_start().starts_with('{') {
            serde_json::from_str::<Value>(nc).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cloud_init.network_config: looks like JSON but is not: {e}"
                ))
            })?;
        }
    }
    complete_meta_data(spec.meta_data.as_deref(), "iid-check", "check").map(|_| ())
}

/// `iid-<vm>-<first 16 hex of sha256(user_data NUL network_config)>` (the NUL
/// keeps the two parts from running into each other).
fn generated_instance_id(vm_name: &str, user_data: &str, network_config: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(user_data.as_bytes());
    h.update([0u8]);
    h.update(network_config.unwrap_or("").as_bytes());
    let hex: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("iid-{vm_name}-{hex}")
}

/// A host name from a VM name: characters other than letters, digits, `-`
/// and `.` become `-`; at most 63 characters.
fn hostname_for(vm_name: &str) -> String {
    let h: String = vm_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let h = h.trim_matches(|c| c == '-' || c == '.');
    if h.is_empty() {
        "localhost".into()
    } else {
        h.into()
    }
}

/// The given meta-data (YAML, or a JSON object) with `instance-id` and
/// `local-hostname` added when missing; returns it and the instance-id.
fn complete_meta_data(
    given: Option<&str>,
    gen_id: &str,
    hostname: &str,
) -> Result<(String, String)> {
    let given = given.unwrap_or("");
    if given.trim_start().starts_with('{') {
        let mut v: Value = serde_json::from_str(given).map_err(|e| {
            Error::InvalidArgument(format!(
                "cloud_init.meta_data: looks like JSON but is not: {e}"
            ))
        })?;
        let Some(obj) = v.as_object_mut() else {
            return Err(Error::InvalidArgument(
                "cloud_init.meta_data: must be a mapping".into(),
            ));
        };
        let id = match obj.get("instance-id") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => {
                obj.insert("instance-id".into(), gen_id.into());
                gen_id.to_string()
            }
        };
        obj.entry("local-hostname")
            .or_insert_with(|| hostname.into());
        return Ok((format!("{v}\n"), id));
    }
    let mut text = given.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let id = match yaml_top_level(given, "instance-id") {
        Some(id) => id,
        None => {
            text.push_str(&format!("instance-id: {}\n", yaml_quote(gen_id)));
            gen_id.to_string()
        }
    };
    if yaml_top_level(given, "local-hostname").is_none() {
        text.push_str(&format!("local-hostname: {}\n", yaml_quote(hostname)));
    }
    Ok((text, id))
}

/// The value of a top-level `key: value` line of simple YAML, unquoted.
fn yaml_top_level(yaml: &str, key: &str) -> Option<String> {
    yaml.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.trim_start();
        let value = rest.strip_prefix(':')?;
        let value = value.split(" #").next().unwrap_or("").trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.to_string())
    })
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_quote(s: &str) -> String {
    Value::from(s).to_string()
}

fn run_xorriso(dir: &Path, out: &Path) -> Result<()> {
    let Some(xorriso) = crate::process::find_program("xorriso") else {
        return Err(Error::NotSupported(
            "cloud-init needs xorriso: apt-get install xorriso".into(),
        ));
    };
    let mut cmd = Command::new(xorriso);
    cmd.args(["-as", "mkisofs", "-output"])
        .arg(out)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(dir);
    let output = crate::process::run(
        cmd,
        std::time::Duration::from_secs(60),
        "building the cloud-init seed ISO with xorriso",
    )?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join("; ");
    Err(Error::Failed(format!(
        "building the cloud-init seed ISO {} failed ({}): {tail}",
        out.display(),
        output.status
    )))
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A hidden temp path in `out`'s directory, for the write-then-rename.
fn sibling_temp(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::InvalidArgument(format!("{}: not a file path", out.display())))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(dir.join(format!(".{name}.{}.tmp", unique_suffix())))
}

/// A private (0700) directory inside `parent`, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(parent: &Path) -> Result<Self> {
        let path = parent.join(format!("cidata-{}", unique_suffix()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::Failed(format!("cannot create {}: {e}", path.display())))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_xorriso() -> bool {
        let ok = Command::new("xorriso").arg("-version").output().is_ok();
        if !ok {
            eprintln!("xorriso not installed: skipping");
        }
        ok
    }

    fn extract(iso: &Path, dir: &Path) {
        let st = Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(iso)
            .args(["-extract", "/"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }

    fn spec(ud: Option<&str>, md: Option<&str>, nc: Option<&str>) -> CloudInitSpec {
        CloudInitSpec {
            user_data: ud.map(Into::into),
            meta_data: md.map(Into::into),
            network_config: nc.map(Into::into),
        }
    }

    #[test]
    fn builds_a_nocloud_iso() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let iso = tmp.path().join("seed.iso");
        let ud = "#cloud-config\npackages:\n  - nginx\n";
        let nc = "version: 2\nethernets: {}\n";
        let info = build_seed_iso(&spec(Some(ud), None, Some(nc)), "web01", &iso).unwrap();
        assert!(
            info.instance_id.starts_with("iid-web01-"),
            "{}",
            info.instance_id
        );
        assert_eq!(info.instance_id.len(), "iid-web01-".len() + 16);
        assert_eq!(info.size_bytes, fs::metadata(&iso).unwrap().len());
        assert_eq!(
            fs::metadata(&iso).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // Only the ISO is left in the output directory.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);

        let pvd = Command::new("xorriso")
            .arg("-indev")
            .arg(&iso)
            .arg("-pvd_info")
            .output()
            .unwrap();
        let pvd = String::from_utf8_lossy(&pvd.stdout);
        let volid = pvd
            .lines()
            .find_map(|l| l.strip_prefix("Volume Id    :"))
            .unwrap()
            .trim();
        assert_eq!(volid, "cidata");

        let ex = tmp.path().join("ex");
        extract(&iso, &ex);
        let mut names: Vec<_> = fs::read_dir(&ex)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(fs::read_to_string(ex.join("user-data")).unwrap(), ud);
        assert_eq!(fs::read_to_string(ex.join("network-config")).unwrap(), nc);
        assert_eq!(
            fs::read_to_string(ex.join("meta-data")).unwrap(),
            format!(
                "instance-id: \"{}\"\nlocal-hostname: \"web01\"\n",
                info.instance_id
            )
        );

        // Defaults: user-data is a bare #cloud-config, no network-config.
        let info2 = build_seed_iso(&CloudInitSpec::default(), "web01", &iso).unwrap();
        let ex2 = tmp.path().join("ex2");
        extract(&iso, &ex2);
        assert_eq!(
            fs::read_to_string(ex2.join("user-data")).unwrap(),
            "#cloud-config\n"
        );
        assert!(!ex2.join("network-config").exists());
        assert_ne!(info.instance_id, info2.instance_id);
    }

    #[test]
    fn given_meta_data_is_completed_and_its_instance_id_kept() {
        if !have_xorriso() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let iso = tmp.path().join("seed.iso");
        let s = spec(None, Some("instance-id: gpu-workstation"), None);
        let info = build_seed_iso(&s, "gpu-workstation", &iso).unwrap();
        assert_eq!(info.instance_id, "gpu-workstation");
        let ex = tmp.path().join("ex");
        extract(&iso, &ex);
        assert_eq!(
            fs::read_to_string(ex.join("meta-data")).unwrap(),
            "instance-id: gpu-workstation\nlocal-hostname: \"gpu-workstation\"\n"
        );
    }

    #[test]
    fn instance_id_follows_user_data() {
        let a = generated_instance_id("vm", "#cloud-config\n", None);
        assert_eq!(a, generated_instance_id("vm", "#cloud-config\n", None));
        assert_ne!(
            a,
            generated_instance_id("vm", "#cloud-config\npackages: [x]\n", None)
        );
        assert_ne!(
            a,
            generated_instance_id("vm", "#cloud-config\n", Some("version: 2\n"))
        );
        assert_ne!(a, generated_instance_id("vm2", "#cloud-config\n", None));
    }

    #[test]
    fn meta_data_completion() {
        let (md, id) = complete_meta_data(None, "iid-x", "x").unwrap();
        assert_eq!(
            (md.as_str(), id.as_str()),
            ("instance-id: \"iid-x\"\nlocal-hostname: \"x\"\n", "iid-x")
        );
        let (md, id) = complete_meta_data(
            Some("local-hostname: h\ninstance-id: 'mine'\n"),
            "iid-x",
            "x",
        )
        .unwrap();
        assert_eq!(
            (md.as_str(), id.as_str()),
            ("local-hostname: h\ninstance-id: 'mine'\n", "mine")
        );
        // A nested key of the same name is not the top-level one.
        let (md, id) =
            complete_meta_data(Some("public-keys:\n  instance-id: no\n"), "g", "h").unwrap();
        assert_eq!(id, "g");
        assert!(
            md.ends_with("instance-id: \"g\"\nlocal-hostname: \"h\"\n"),
            "{md}"
        );
        let (md, id) = complete_meta_data(Some(r#"{"instance-id": "j"}"#), "g", "h").unwrap();
        assert_eq!(id, "j");
        assert_eq!(
            serde_json::from_str::<Value>(&md).unwrap(),
            serde_json::json!({"instance-id": "j", "local-hostname": "h"})
        );
        assert!(matches!(
            complete_meta_data(Some("{nope"), "g", "h"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn plan_time_check_refuses_what_the_build_would() {
        let ok = spec(
            Some("#cloud-config\npackages: [nginx]\n"),
            Some("a: b"),
            None,
        );
        assert!(check(&ok).is_ok());
        assert!(check(&spec(Some("#!/bin/sh\necho hi\n"), None, None)).is_ok());
        assert!(check(&CloudInitSpec::default()).is_ok());
        let e = check(&spec(Some("packages: [nginx]\n"), None, None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cloud_init.user_data: must start"),
            "{e}"
        );
        let e = check(&spec(None, Some("{not json"), None)).unwrap_err();
        assert!(e.to_string().starts_with("cloud_init.meta_data:"), "{e}");
        let e = check(&spec(None, Some("{\"a\": [1]}"), None));
        assert!(e.is_ok(), "{e:?}");
        let e = check(&spec(None, None, Some("{\"version\": "))).unwrap_err();
        assert!(
            e.to_string().starts_with("cloud_init.network_config:"),
            "{e}"
        );
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname_for("web01"), "web01");
        assert_eq!(hostname_for("db_main+2"), "db-main-2");
        assert_eq!(hostname_for("web.example.com"), "web.example.com");
        assert_eq!(hostname_for("__"), "localhost");
        assert_eq!(hostname_for(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn work_dir_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = {
            let w = WorkDir::create(tmp.path()).unwrap();
            fs::write(w.0.join("f"), "x").unwrap();
            assert_eq!(
                fs::metadata(&w.0).unwrap().permissions().mode() & 0o777,
                0o700
            );
            w.0.clone()
        };
        assert!(!path.exists());
    }
}
