//! VM templates: the merge strategy and the template store.
//!
//! A template is a VM spec without a `name`. Shipped templates are read-only
//! files in `/etc/vapor/templates.d/`; API-created ones live in
//! `<state_dir>/templates/`. Each is a file `<name>.json`:
//!
//! ```json
//! { "description": "What it is for", "spec": { "memory": 2048, "vcpus": 2 } }
//! ```
//!
//! A user template shadows a shipped template of the same name. Validating a
//! spec against the schema is the caller's job; this module only guarantees a
//! stored spec is a JSON object that neither names a VM nor names a template.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fsutil::write_atomic;
use crate::text::TextRule;
use crate::{Error, Result};

/// Where shipped templates are installed.
pub const DEFAULT_SHIPPED_DIR: &str = "/etc/vapor/templates.d";

/// Merges a creation request over a template. THE template merge strategy:
///
/// 1. Start from the template. Its own `name` and `template` keys are dropped:
///    a template never names the VM, and templates do not inherit (no
///    chaining, nothing is looked up recursively).
/// 2. A JSON `null` in the request counts as absent, at every level: it never
///    erases what the template gives.
/// 3. Scalars (`memory`, `vcpus`, `uefi`, `machine`, `accel`, …, and the
///    request's own `name` and `template`, which records provenance) override
///    when present; so does `boot` (direct kernel boot), as a whole.
/// 4. Arrays replace entirely, never append: `networks`, `graphics`,
///    `pci_devices`, and `storage.disks`.
/// 5. `storage` merges at its level: each of the request's `default_pool`,
///    `boot_iso`, `disks` and `cdrom_bus` overrides the template's; the
///    others are kept.
/// 6. `cloud_init` deep-merges: key by key, recursively for objects.
/// 7. `metadata` merges keys; the request wins on conflict.
///
/// Where the two sides disagree on a field's type, the request wins, so the
/// later schema validation reports the request's mistake. A non-object
/// template counts as empty; a non-object request is returned as is.
pub fn merge(template: &Value, request: &Value) -> Value {
    let Some(req) = request.as_object() else {
        return request.clone();
    };
    let mut out: Map<String, Value> = template.as_object().cloned().unwrap_or_default();
    out.remove("name");
    out.remove("template");
    for (key, value) in req {
        if value.is_null() {
            continue;
        }
        let merged = match (key.as_str(), out.get(key)) {
            ("storage" | "metadata", Some(base)) => merge_level(base, value),
            ("cloud_init", Some(base)) => merge_deep(base, value),
            _ => value.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

/// One level: the request's non-null keys replace the template's.
fn merge_level(base: &Value, over: &Value) -> Value {
    match (base.as_object(), over.as_object()) {
        (Some(b), Some(o)) => {
            let mut out = b.clone();
            for (k, v) in o.iter().filter(|(_, v)| !v.is_null()) {
                out.insert(k.clone(), v.clone());
            }
            Value::Object(out)
        }
        _ => over.clone(),
    }
}

/// Recursive: objects merge key by key, anything else is replaced.
fn merge_deep(base: &Value, over: &Value) -> Value {
    match (base.as_object(), over.as_object()) {
        (Some(b), Some(o)) => {
            let mut out = b.clone();
            for (k, v) in o.iter().filter(|(_, v)| !v.is_null()) {
                let m = match out.get(k) {
                    Some(existing) => merge_deep(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), m);
            }
            Value::Object(out)
        }
        _ => over.clone(),
    }
}

/// Where a template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateSource {
    /// Installed with vapor, read-only.
    Shipped,
    /// Created through the API.
    User,
}

impl TemplateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateSource::Shipped => "shipped",
            TemplateSource::User => "user",
        }
    }
}

/// One template, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateInfo {
    pub name: String,
    pub description: String,
    pub source: TemplateSource,
    /// The spec (a JSON object without `name`).
    pub spec: Value,
}

/// The on-disk format of `<name>.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    #[serde(default)]
    description: String,
    spec: Value,
}

/// Shipped (read-only) and user (API-created) templates.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    shipped_dir: PathBuf,
    user_dir: PathBuf,
}

impl TemplateStore {
    /// `shipped_dir` is usually [`DEFAULT_SHIPPED_DIR`]; user templates go to
    /// `<state_dir>/templates/`. Missing directories simply hold no templates.
    pub fn new(shipped_dir: impl Into<PathBuf>, state_dir: impl AsRef<Path>) -> Self {
        TemplateStore {
            shipped_dir: shipped_dir.into(),
            user_dir: state_dir.as_ref().join("templates"),
        }
    }

    /// Every readable template, sorted by name. A user template shadows a
    /// shipped one of the same name (even when it is malformed: then neither is
    /// listed, and `get` reports the broken file). Malformed files are skipped
    /// with a warning.
    pub fn list(&self) -> Result<Vec<TemplateInfo>> {
        let mut files: BTreeMap<String, (TemplateSource, PathBuf)> = BTreeMap::new();
        for (source, dir) in [
            (TemplateSource::Shipped, &self.shipped_dir),
            (TemplateSource::User, &self.user_dir),
        ] {
            for (name, path) in scan_dir(dir)? {
                files.insert(name, (source, path));
            }
        }
        let mut out = Vec::with_capacity(files.len());
        for (name, (source, path)) in files {
            match read_template(&path) {
                Ok(t) => out.push(info(name, source, t)),
                Err(e) => log::warn!("skipping template {}: {e}", path.display()),
            }
        }
        Ok(out)
    }

    /// One template: the user's if there is one, else the shipped one.
    pub fn get(&self, name: &str) -> Result<TemplateInfo> {
        check_name(name)?;
        let file = format!("{name}.json");
        for (source, dir) in [
            (TemplateSource::User, &self.user_dir),
            (TemplateSource::Shipped, &self.shipped_dir),
        ] {
            let path = dir.join(&file);
            if path.is_file() {
                let t = read_template(&path).map_err(|e| {
                    Error::Failed(format!(
                        "template '{name}' is unusable: {}: {e}",
                        path.display()
                    ))
                })?;
                return Ok(info(name.to_string(), source, t));
            }
        }
        Err(Error::NotFound(format!("no template named '{name}'")))
    }

    /// Creates or replaces the user template `name` (atomically). May shadow
    /// a shipped template of the same name.
    pub fn save(&self, name: &str, description: &str, spec: &Value) -> Result<()> {
        check_name(name)?;
        crate::text::check("description", description, TextRule::DESCRIPTION)?;
        let Some(obj) = spec.as_object() else {
            return Err(Error::InvalidArgument(
                "spec: a template must be a JSON object (a VM spec without name)".into(),
            ));
        };
        if obj.contains_key("name") {
            return Err(Error::InvalidArgument(
                "spec.name: a template cannot name the VM; remove the name field".into(),
            ));
        }
        if obj.contains_key("template") {
            return Err(Error::InvalidArgument(
                "spec.template: templates cannot be based on another template; remove the template field".into(),
            ));
        }
        let path = self.user_dir.join(format!("{name}.json"));
        if !path.exists() && scan_dir(&self.user_dir)?.len() >= MAX_USER_TEMPLATES {
            return Err(Error::LimitExceeded(format!(
                "name: there are already {MAX_USER_TEMPLATES} user templates; delete one first"
            )));
        }
        let file = TemplateFile {
            description: description.to_string(),
            spec: spec.clone(),
        };
        let mut text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::Failed(format!("cannot encode template '{name}': {e}")))?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())
            .map_err(|e| Error::Failed(format!("cannot write template {}: {e}", path.display())))
    }

    /// Deletes the user template `name`. Shipped templates cannot be deleted.
    pub fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let file = format!("{name}.json");
        let path = self.user_dir.join(&file);
        match fs::remove_file(&path) {
            Ok(()) => {
                return sync_dir(&self.user_dir).map_err(|e| {
                    Error::Failed(format!("cannot sync {}: {e}", self.user_dir.display()))
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Failed(format!(
                    "cannot delete template {}: {e}",
                    path.display()
                )))
            }
        }
        if self.shipped_dir.join(&file).is_file() {
            return Err(Error::InvalidState(format!(
                "template '{name}' is shipped read-only in {}",
                self.shipped_dir.display()
            )));
        }
        Err(Error::NotFound(format!("no template named '{name}'")))
    }
}

fn info(name: String, source: TemplateSource, t: TemplateFile) -> TemplateInfo {
    TemplateInfo {
        name,
        description: t.description,
        source,
        spec: t.spec,
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$` (VM and template names).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(c))
}

fn check_name(name: &str) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "name: '{name}' is not a valid template name (1-64 of letters, digits, '.', '_', '+', '-', starting with a letter or digit)"
        )))
    }
}

/// `(name, path)` of every `<name>.json` in `dir`; a missing dir is empty.
fn scan_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Failed(format!(
                "cannot read template directory {}: {e}",
                dir.display()
            )))
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let fname = entry.file_name();
        let Some(stem) = fname.to_str().and_then(|f| f.strip_suffix(".json")) else {
            continue; // not a template (temp files end in .tmp)
        };
        if !valid_name(stem) {
            if !stem.starts_with('.') {
                log::warn!(
                    "skipping template {}: invalid template name",
                    path.display()
                );
            }
            continue;
        }
        out.push((stem.to_string(), path));
    }
    Ok(out)
}

/// Read a template file, holding it to the same rules as a template saved
/// through the API: a file that breaks them (a description no bus client can
/// read, say) is refused here, so it is skipped rather than served.
fn read_template(path: &Path) -> std::result::Result<TemplateFile, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_TEMPLATE_FILE_BYTES {
        return Err(format!(
            "{} bytes, at most {MAX_TEMPLATE_FILE_BYTES} allowed",
            meta.len()
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let doc = crate::text::parse_json_strict("template", &text, MAX_TEMPLATE_FILE_BYTES as usize)
        .map_err(|e| e.to_string())?;
    let t: TemplateFile =
        serde_json::from_value(doc).map_err(|e| format!("invalid template: {e}"))?;
    if !t.spec.is_object() {
        return Err("\"spec\" must be a JSON object".into());
    }
    crate::text::check("description", &t.description, TextRule::DESCRIPTION)
        .map_err(|e| e.to_string())?;
    crate::creation::validate::check_spec_text(&t.spec).map_err(|e| e.to_string())?;
    Ok(t)
}

/// At most this many templates saved through the API (so that listing them
/// all stays well within one bus message).
const MAX_USER_TEMPLATES: usize = 256;

/// A template file larger than this is not read.
const MAX_TEMPLATE_FILE_BYTES: u64 = 2 << 20;

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
