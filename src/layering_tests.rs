//! The layers depend one way: `dbus` → `services` → {`creation` (pure
//! planning), `storage`, `network`} → `libvirt` → plain data. These tests read
//! the sources and fail when a module reaches up (or around the typed
//! libvirt port).

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/<dir>` (or the file `src/<dir>` itself).
fn sources(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    assert!(!out.is_empty(), "no sources under src/{dir}");
    out.sort();
    out
}

/// `file:line: text` of every line of `files` for which `bad` says yes.
fn offending(files: &[PathBuf], bad: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            if bad(line) {
                found.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    found
}

/// Whether `line` names `path` (`crate::services`, …) as a path prefix.
fn names(line: &str, path: &str) -> bool {
    line.match_indices(path).any(|(i, _)| {
        !line[i + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

/// Whether `line` calls into the `virt` crate (or libvirt's C API) directly:
/// `virt::` not part of `libvirt::`, `virt_sys`, `sys::vir…`/`sys::VIR_…`,
/// or the raw XML and lookup calls.
fn raw_libvirt(line: &str) -> bool {
    let bare_virt = line
        .match_indices("virt::")
        .any(|(i, _)| !line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
    let raw_calls = [".xml_desc(", "lookup_domain", "lookup_storage", "virt_sys"];
    bare_virt
        || line.to_ascii_lowercase().contains("sys::vir")
        || raw_calls.iter().any(|raw| line.contains(raw))
}

#[test]
fn creation_plans_without_services() {
    let found = offending(&sources("creation"), |l| names(l, "crate::services"));
    assert!(
        found.is_empty(),
        "creation is pure planning; services use it, never the other way:\n{}",
        found.join("\n")
    );
}

#[test]
fn libvirt_knows_no_services_bus_or_creation() {
    let found = offending(&sources("libvirt"), |l| {
        ["crate::services", "crate::dbus", "crate::creation"]
            .iter()
            .any(|p| names(l, p))
    });
    assert!(
        found.is_empty(),
        "the libvirt port hands out plain data and knows nothing above it:\n{}",
        found.join("\n")
    );
}

#[test]
fn services_know_nothing_of_the_bus() {
    let found = offending(&sources("services"), |l| names(l, "crate::dbus"));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn services_creation_and_recovery_use_only_the_typed_libvirt_port() {
    let mut files = sources("services");
    files.extend(sources("creation"));
    files.extend(sources("recovery.rs"));
    let found = offending(&files, raw_libvirt);
    assert!(
        found.is_empty(),
        "call the typed operations of crate::libvirt instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert!(names("use crate::services::rollback;", "crate::services"));
    assert!(names("crate::services;", "crate::services"));
    assert!(!names("use crate::servicesx::y;", "crate::services"));
    assert!(raw_libvirt("use virt::connect::Connect;"));
    assert!(raw_libvirt("    let d: &virt::domain::Domain = x;"));
    assert!(raw_libvirt("use virt_sys as sys;"));
    assert!(raw_libvirt("let f = sys::VIR_DOMAIN_XML_INACTIVE;"));
    assert!(raw_libvirt("let x = d.xml_desc(0)?;"));
    assert!(raw_libvirt("c.lookup_storage_vol_by_path(p)"));
    assert!(!raw_libvirt("use crate::libvirt::xml::Element;"));
    assert!(!raw_libvirt("let s = s.domain(uuid)?;"));
}
