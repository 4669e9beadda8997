//! Conversion of the old flat creation spec (seed 000, "Old Structure") into
//! the nested one, for early adopters.
//!
//! Old root field → new place:
//! - `storage_pool` → `storage.default_pool`
//! - `iso_path`     → `storage.boot_iso`
//! - `disks`        → `storage.disks`
//! - `disk_size: N` → a first disk `{"action": "create", "size": N}` in
//!   `storage.disks`, before the converted `disks` entries.
//!
//! Old disk entries had no `action`; one is added by this rule:
//! **`create` when the entry has a `size`, otherwise `attach`** (a size only
//! makes sense for a new disk, and creating never overwrites an existing file:
//! it is refused with Conflict). Entries that already carry an
//! `action` are left alone.
//!
//! Everything else is left as is (the schema judges it afterwards). A
//! document with an old field and its new counterpart both present is
//! refused, naming both. A document with no old field is returned unchanged.

use serde_json::{json, Map, Value};

use crate::Error;

/// (old root field, new field under `storage`, new field's full name).
const MOVES: [(&str, &str, &str); 3] = [
    ("storage_pool", "default_pool", "storage.default_pool"),
    ("iso_path", "boot_iso", "storage.boot_iso"),
    ("disks", "disks", "storage.disks"),
];

/// Convert an old flat spec into the nested layout (see the module docs).
pub fn convert_legacy(doc: Value) -> Result<Value, Error> {
    let Value::Object(mut root) = doc else {
        return Ok(doc);
    };
    let has_old =
        MOVES.iter().any(|(old, _, _)| root.contains_key(*old)) || root.contains_key("disk_size");
    if !has_old {
        return Ok(Value::Object(root));
    }

    let mut storage = match root.remove("storage") {
        None => Map::new(),
        Some(Value::Object(s)) => s,
        Some(_) => {
            return Err(Error::InvalidArgument(
                "storage: must be an object (the spec also uses the old flat storage fields)"
                    .into(),
            ))
        }
    };

    let mut conflicts = Vec::new();
    for (old, new, full) in MOVES {
        if root.contains_key(old) && storage.contains_key(new) {
            conflicts.push(format!("{old} and {full}: both given; use only {full}"));
        }
    }
    if root.contains_key("disk_size") && storage.contains_key("disks") {
        conflicts.push(
            "disk_size and storage.disks: both given; use only storage.disks \
             (a disk with action create and size)"
                .to_string(),
        );
    }
    if !conflicts.is_empty() {
        return Err(Error::InvalidArgument(conflicts.join("; ")));
    }

    for (old, new, _) in MOVES {
        if let Some(v) = root.remove(old) {
            storage.insert(new.to_string(), v);
        }
    }
    if let Some(Value::Array(disks)) = storage.get_mut("disks") {
        disks.iter_mut().for_each(add_action);
    }
    if let Some(size) = root.remove("disk_size") {
        let first = json!({"action": "create", "size": size});
        match storage.get_mut("disks") {
            None => {
                storage.insert("disks".into(), Value::Array(vec![first]));
            }
            Some(Value::Array(disks)) => disks.insert(0, first),
            Some(_) => {
                return Err(Error::InvalidArgument(
                    "disks: must be an array (to add the disk_size disk to it)".into(),
                ))
            }
        }
    }
    root.insert("storage".into(), Value::Object(storage));
    Ok(Value::Object(root))
}

/// Give an old disk entry its `action` (rule in the module docs).
fn add_action(disk: &mut Value) {
    let Value::Object(d) = disk else { return };
    if d.contains_key("action") {
        return;
    }
    let has_size = d.get("size").is_some_and(|s| !s.is_null());
    let has_path = match d.get("path") {
        None | Some(Value::Null) => false,
        Some(Value::String(p)) => !p.is_empty(),
        Some(_) => true,
    };
    let _ = has_path;
    let action = if has_size { "create" } else { "attach" };
    d.insert("action".into(), json!(action));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::creation::validate::validate_spec;

    /// The seed's "Old Structure" example, with its `disks: [...]` filled in.
    fn seed_old() -> Value {
        json!({
            "name": "vm-01",
            "storage_pool": "default",
            "iso_path": "ubuntu.iso",
            "disks": [
                {"size": 20, "format": "qcow2"},
                {"path": "/var/lib/libvirt/images/data.qcow2"},
                {"size": 10, "path": "existing.qcow2"},
                {"action": "clone", "source": "golden.qcow2"}
            ]
        })
    }

    #[test]
    fn seed_old_structure_becomes_nested_storage() {
        let converted = convert_legacy(seed_old()).unwrap();
        assert_eq!(
            converted,
            json!({
                "name": "vm-01",
                "storage": {
                    "default_pool": "default",
                    "boot_iso": "ubuntu.iso",
                    "disks": [
                        {"action": "create", "size": 20, "format": "qcow2"},
                        {"action": "attach", "path": "/var/lib/libvirt/images/data.qcow2"},
                        {"action": "create", "size": 10, "path": "existing.qcow2"},
                        {"action": "clone", "source": "golden.qcow2"}
                    ]
                }
            })
        );
        assert!(validate_spec(&converted).is_ok());
    }

    #[test]
    fn sized_disk_with_empty_path_is_created() {
        let converted = convert_legacy(json!({"disks": [{"size": 5, "path": ""}]})).unwrap();
        assert_eq!(converted["storage"]["disks"][0]["action"], "create");
    }

    #[test]
    fn disk_size_becomes_a_first_create_disk() {
        let doc = json!({"disk_size": 30, "disks": [{"path": "/isos/tools.iso"}]});
        assert_eq!(
            convert_legacy(doc).unwrap(),
            json!({"storage": {"disks": [
                {"action": "create", "size": 30},
                {"action": "attach", "path": "/isos/tools.iso"}
            ]}})
        );
        assert_eq!(
            convert_legacy(json!({"disk_size": 8})).unwrap(),
            json!({"storage": {"disks": [{"action": "create", "size": 8}]}})
        );
    }

    #[test]
    fn old_and_new_field_together_are_refused_naming_both() {
        let doc = json!({
            "storage_pool": "default",
            "iso_path": "a.iso",
            "storage": {"default_pool": "fast", "boot_iso": "b.iso"}
        });
        assert_eq!(
            convert_legacy(doc),
            Err(Error::InvalidArgument(
                "storage_pool and storage.default_pool: both given; use only \
                 storage.default_pool; iso_path and storage.boot_iso: both given; \
                 use only storage.boot_iso"
                    .into()
            ))
        );
        let doc = json!({"disk_size": 8, "storage": {"disks": []}});
        let err = convert_legacy(doc).unwrap_err().to_string();
        assert!(
            err.starts_with("disk_size and storage.disks: both given"),
            "{err}"
        );
    }

    #[test]
    fn old_fields_merge_into_a_partial_storage_object() {
        let doc = json!({"iso_path": "a.iso", "storage": {"default_pool": "fast"}});
        assert_eq!(
            convert_legacy(doc).unwrap(),
            json!({"storage": {"default_pool": "fast", "boot_iso": "a.iso"}})
        );
    }

    #[test]
    fn nested_document_is_returned_unchanged() {
        let doc = json!({
            "name": "vm",
            "storage": {"disks": [{"size": 5}]},
            "networks": [{"type": "network", "source": "default"}]
        });
        assert_eq!(convert_legacy(doc.clone()).unwrap(), doc);
        assert_eq!(convert_legacy(json!([1])).unwrap(), json!([1]));
    }

    #[test]
    fn non_object_storage_with_old_fields_is_refused() {
        let err = convert_legacy(json!({"storage_pool": "p", "storage": "x"})).unwrap_err();
        assert!(
            err.to_string().starts_with("storage: must be an object"),
            "{err}"
        );
    }
}
