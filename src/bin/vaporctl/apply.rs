//! `vaporctl apply FILE [--dry-run]`: hand a declarative document to
//! vapord's `Apply` and print what each step of each VM did. The files the
//! document injects are opened here, as the user running vaporctl, and
//! passed as descriptors (vapord never opens a caller's path): an absolute
//! `source` as it is, a plain name beside the document. With
//! `--host-files`, absolute sources are left for vapord to open itself
//! (polkit `storage-host-path`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;
use zbus::Fd;

use crate::bus::Client;
use crate::job::with_progress;
use crate::{read_input, Failure};

/// The sources a document names (as written), whatever else it holds
/// (vapord checks the rest).
fn sources(doc: &Value) -> BTreeSet<String> {
    doc["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|vm| vm["file_injections"].as_array().into_iter().flatten())
        .filter_map(|f| f["source"].as_str().map(str::to_owned))
        .collect()
}

/// Where vaporctl opens a source: absolute as it is, a plain name beside
/// the document (the working directory for standard input). Pure.
fn local_path(source: &str, doc_path: &str) -> PathBuf {
    if source.starts_with('/') {
        return PathBuf::from(source);
    }
    let dir = if doc_path == "-" {
        Path::new(".")
    } else {
        Path::new(doc_path).parent().unwrap_or(Path::new("."))
    };
    dir.join(source)
}

/// The report as lines for people. Pure.
pub fn report_text(report: &Value) -> String {
    let mut out = String::new();
    for vm in report["vms"].as_array().into_iter().flatten() {
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        out.push_str(&format!("{}: {}\n", s(&vm["name"]), s(&vm["result"])));
        for step in vm["steps"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {:<11} {:<13} {}\n",
                s(&step["step"]),
                s(&step["status"]),
                s(&step["detail"])
            ));
        }
        if let Some(p) = vm["pending"].as_array().filter(|p| !p.is_empty()) {
            let p: Vec<String> = p.iter().map(s).collect();
            out.push_str(&format!(
                "  pending until the next start: {}\n",
                p.join(", ")
            ));
        }
        if let Some(e) = vm["error"].as_str() {
            out.push_str(&format!("  error ({}): {e}\n", s(&vm["error_kind"])));
        }
    }
    let verb = if report["dry_run"].as_bool() == Some(true) {
        "would change"
    } else {
        "changed"
    };
    out.push_str(&format!(
        "{} {verb}, {} unchanged, {} failed",
        report["changed"], report["unchanged"], report["failed"]
    ));
    match report["unknown"].as_u64() {
        Some(n) if n > 0 => out.push_str(&format!(", {n} unknown until their guest answers\n")),
        _ => out.push('\n'),
    }
    out
}

pub async fn run(
    c: &Client,
    file: &str,
    dry_run: bool,
    host_files: bool,
    json_out: bool,
) -> Result<(), Failure> {
    let text = read_input(file)?;
    let doc: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::new(65, format!("{file}: not JSON: {e}")))?;
    let mut open = Vec::new();
    for src in sources(&doc) {
        if host_files && src.starts_with('/') {
            continue;
        }
        let path = local_path(&src, file);
        let f = std::fs::File::open(&path).map_err(|e| {
            Failure::new(
                66,
                format!("cannot read {} (the source '{src}'): {e}", path.display()),
            )
        })?;
        open.push((src, f));
    }
    let files: HashMap<&str, Fd<'_>> = open
        .iter()
        .map(|(k, f)| (k.as_str(), Fd::from(f)))
        .collect();
    let mut opts = HashMap::new();
    opts.insert("dry_run", zbus::Variant::from(dry_run));
    let m = c.manager().await?;
    let report = with_progress(&c.conn, m.apply(&text, files, opts)).await?;
    let v: Value = serde_json::from_str(&report).unwrap_or(Value::Null);
    if json_out {
        println!("{report}");
    } else {
        print!("{}", report_text(&v));
    }
    match v["failed"].as_u64() {
        Some(0) => Ok(()),
        Some(n) => Err(Failure::new(1, format!("{n} VM(s) failed"))),
        None => Err(Failure::new(70, "vapord's report makes no sense")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sources_are_found_and_placed_beside_the_document() {
        let doc = json!({"vms": [
            {"name": "a", "file_injections": [{"source": "motd", "destination": "/etc/motd"}]},
            {"name": "b", "file_injections": [{"source": "/srv/x", "destination": "/x"},
                                               {"source": "motd", "destination": "/y"}]},
            {"name": "c"}
        ]});
        let s: Vec<String> = sources(&doc).into_iter().collect();
        assert_eq!(s, vec!["/srv/x", "motd"]);
        assert_eq!(
            local_path("motd", "/etc/vapor/site.json"),
            PathBuf::from("/etc/vapor/motd")
        );
        assert_eq!(local_path("motd", "site.json"), PathBuf::from("motd"));
        assert_eq!(
            local_path("/srv/x", "/etc/site.json"),
            PathBuf::from("/srv/x")
        );
        assert_eq!(local_path("motd", "-"), PathBuf::from("./motd"));
        assert!(sources(&json!({"vms": 3})).is_empty());
    }

    #[test]
    fn the_report_reads_step_by_step() {
        let r = json!({"dry_run": false, "changed": 1, "unchanged": 0, "failed": 1, "vms": [
            {"name": "web", "result": "changed", "pending": ["vcpus"], "steps": [
                {"step": "files", "status": "changed", "detail": "wrote /etc/motd (missing)"}]},
            {"name": "db", "result": "failed", "error_kind": "Timeout", "error": "no agent",
             "pending": [], "steps": []}
        ]});
        let t = report_text(&r);
        assert!(
            t.starts_with("web: changed\n  files       changed       wrote /etc/motd"),
            "{t}"
        );
        assert!(t.contains("pending until the next start: vcpus"), "{t}");
        assert!(t.contains("error (Timeout): no agent"), "{t}");
        assert!(t.ends_with("1 changed, 0 unchanged, 1 failed\n"), "{t}");
    }
}
