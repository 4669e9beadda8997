//! `vaporctl iso …`: installation media and plain disk images in the pools.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::{Client, VOLUME};
use crate::output::{format_size, header, or_dash, print_json, prop_str, prop_u64, table};
use crate::transfer::{upload, Upload};
use crate::Failure;

#[derive(Subcommand)]
pub enum IsoCmd {
    /// Upload an ISO image (read by vaporctl, as you) into a pool.
    Upload {
        /// The ISO file, or - for stdin (then --name is needed, and --size
        /// unless stdin is a regular file).
        file: String,
        /// The pool to put it in.
        #[arg(long)]
        pool: String,
        /// The volume's name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// How much to read (e.g. 4G), needed when FILE is not a regular file.
        #[arg(long, value_name = "SIZE", value_parser = crate::output::parse_size)]
        size: Option<u64>,
    },
    /// Every ISO image (kind iso) and standalone disk image (kind image) in
    /// the active pools.
    List,
}

/// What `iso list` shows a volume as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Installation media: format iso, an ISO 9660 label, or named *.iso.
    Iso,
    /// A standalone disk image: *.img, *.qcow2 or *.raw with no backing
    /// store, made by no VM (vapord did not create it for one).
    Image,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Iso => "iso",
            Kind::Image => "image",
        }
    }
}

/// A volume's properties, as `iso list` reads them.
pub struct VolumeFacts<'a> {
    pub name: &'a str,
    pub format: &'a str,
    pub label: &'a str,
    pub backing_store: &'a str,
    pub owned_by: &'a str,
}

pub fn classify(v: &VolumeFacts<'_>) -> Option<Kind> {
    let name = v.name.to_ascii_lowercase();
    let ends = |exts: &[&str]| exts.iter().any(|e| name.ends_with(e));
    if v.format.eq_ignore_ascii_case("iso") || !v.label.is_empty() || ends(&[".iso"]) {
        return Some(Kind::Iso);
    }
    let unowned = v.owned_by.is_empty() || v.owned_by == "/";
    if ends(&[".img", ".qcow2", ".raw"]) && v.backing_store.is_empty() && unowned {
        return Some(Kind::Image);
    }
    None
}

pub async fn run(c: &Client, cmd: &IsoCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        IsoCmd::Upload {
            file,
            pool,
            name,
            size,
        } => {
            let up = Upload {
                pool,
                file,
                name: name.as_deref(),
                format: Some("iso"),
                size: *size,
            };
            upload(c, &up, json_out).await
        }
        IsoCmd::List => list(c, json_out).await,
    }
}

async fn list(c: &Client, json_out: bool) -> Result<(), Failure> {
    let objs = c.objects().await?;
    let mut found = Vec::new();
    for (path, v) in objs.of(VOLUME) {
        let (name, format, label) = (
            prop_str(v, "Name"),
            prop_str(v, "Format"),
            prop_str(v, "Label"),
        );
        let (backing_store, owned_by) = (prop_str(v, "BackingStore"), prop_str(v, "OwnedBy"));
        let facts = VolumeFacts {
            name: &name,
            format: &format,
            label: &label,
            backing_store: &backing_store,
            owned_by: &owned_by,
        };
        let Some(kind) = classify(&facts) else {
            continue;
        };
        let pool = objs.names(&[prop_str(v, "Pool")]).join("");
        found.push(json!({
            "name": name,
            "pool": pool,
            "kind": kind.as_str(),
            "size": prop_u64(v, "CapacityBytes"),
            "label": label,
            "path": prop_str(v, "Path"),
            "object": path,
        }));
    }
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    found.sort_by_key(|v| (s(&v["pool"]), s(&v["name"])));
    if json_out {
        print_json(&Value::Array(found));
        return Ok(());
    }
    let mut rows = vec![header(&["NAME", "POOL", "KIND", "SIZE", "LABEL", "PATH"])];
    for v in &found {
        rows.push(vec![
            s(&v["name"]),
            s(&v["pool"]),
            s(&v["kind"]),
            format_size(v["size"].as_u64().unwrap_or(0)),
            or_dash(s(&v["label"])),
            or_dash(s(&v["path"])),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str, format: &str, label: &str, backing: &str, owner: &str) -> Option<Kind> {
        classify(&VolumeFacts {
            name,
            format,
            label,
            backing_store: backing,
            owned_by: owner,
        })
    }

    #[test]
    fn isos_are_found_by_format_label_or_name() {
        assert_eq!(kind("media", "iso", "", "", "/"), Some(Kind::Iso));
        assert_eq!(kind("media", "raw", "DEBIAN_12", "", "/"), Some(Kind::Iso));
        assert_eq!(kind("Fedora.ISO", "raw", "", "", "/"), Some(Kind::Iso));
        // Even one a VM owns: media stay media.
        assert_eq!(
            kind("x.iso", "raw", "", "", "/org/vapor/Virtualization/vm/a"),
            Some(Kind::Iso)
        );
    }

    #[test]
    fn images_are_standalone_unowned_disk_files() {
        assert_eq!(kind("base.qcow2", "qcow2", "", "", "/"), Some(Kind::Image));
        assert_eq!(kind("disk.img", "raw", "", "", "/"), Some(Kind::Image));
        assert_eq!(kind("disk.RAW", "raw", "", "", ""), Some(Kind::Image));
        // An overlay, a VM's own disk, or an unknown name is neither.
        assert_eq!(kind("top.qcow2", "qcow2", "", "/p/base.qcow2", "/"), None);
        assert_eq!(
            kind(
                "vm1.qcow2",
                "qcow2",
                "",
                "",
                "/org/vapor/Virtualization/vm/a"
            ),
            None
        );
        assert_eq!(kind("data", "raw", "", "", "/"), None);
        assert_eq!(kind("notes.txt", "raw", "", "", "/"), None);
    }
}
