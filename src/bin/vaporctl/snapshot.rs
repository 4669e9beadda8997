//! `vaporctl snapshot …`: a VM's snapshots, named by VM and snapshot name.

use std::collections::HashMap;

use clap::Subcommand;
use serde_json::{json, Value};
use vapor::client::proxies::SnapshotClient;
use zbus::OwnedVariant;

use crate::bus::{Client, SNAPSHOT};
use crate::job::with_progress;
use crate::output::{
    format_epoch, header, or_dash, print_json, prop_bool, prop_str, props_json, table, yes_no,
};
use crate::Failure;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// A VM's snapshots, oldest first, with their parents.
    List { vm: String },
    /// What kinds of snapshot the VM allows now, and why not.
    Capabilities { vm: String },
    /// Make a snapshot (internal where the VM allows it, else external).
    Create {
        vm: String,
        /// Default: snap-YYYYMMDD-HHMMSS.
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Save the memory too (default: when the VM runs).
        #[arg(long, conflicts_with = "no_memory")]
        memory: bool,
        /// Disks only.
        #[arg(long)]
        no_memory: bool,
        /// Freeze the guest's file systems through its agent meanwhile.
        #[arg(long)]
        quiesce: bool,
        #[arg(long, value_parser = ["auto", "internal", "external"])]
        kind: Option<String>,
    },
    /// Bring the VM back to a snapshot.
    Revert {
        vm: String,
        name: String,
        /// The VM's state afterwards (default: as the snapshot was taken).
        #[arg(long, value_parser = ["as-taken", "running", "paused"])]
        state: Option<String>,
        /// Revert where libvirt calls it risky.
        #[arg(long)]
        force: bool,
    },
    /// Delete a snapshot.
    Delete {
        vm: String,
        name: String,
        /// Its descendants too.
        #[arg(long)]
        children: bool,
        /// Forget libvirt's record only; leave the images.
        #[arg(long)]
        metadata_only: bool,
    },
}

/// The snapshot `name` of the VM at `vm_path`.
async fn find(c: &Client, vm: &str, name: &str) -> Result<SnapshotClient<'static>, Failure> {
    let vm_path = c.vm_path(vm).await?;
    let objs = c.objects().await?;
    let path = objs
        .of(SNAPSHOT)
        .into_iter()
        .find(|(_, p)| {
            prop_str(p, "VirtualMachine") == vm_path.as_str() && prop_str(p, "Name") == name
        })
        .map(|(path, _)| path.to_owned())
        .ok_or_else(|| Failure::new(3, format!("{vm} has no snapshot '{name}'")))?;
    c.snapshot_at(&path).await
}

pub async fn run(c: &Client, cmd: &SnapshotCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        SnapshotCmd::List { vm } => list(c, vm, json_out).await,
        SnapshotCmd::Capabilities { vm } => capabilities(c, vm, json_out).await,
        SnapshotCmd::Create {
            vm,
            name,
            description,
            memory,
            no_memory,
            quiesce,
            kind,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if let Some(n) = name {
                o.insert("name", n.as_str().into());
            }
            if let Some(d) = description {
                o.insert("description", d.as_str().into());
            }
            if *memory || *no_memory {
                o.insert("memory", (*memory).into());
            }
            if *quiesce {
                o.insert("quiesce", true.into());
            }
            if let Some(k) = kind {
                o.insert("kind", k.as_str().into());
            }
            let v = c.vm(vm).await?;
            let path = with_progress(&c.conn, v.create_snapshot(o)).await?;
            let s = c.snapshot_at(path.as_str()).await?;
            let p = s.proxy();
            let (made, kind) = (p.name().await?, p.kind().await?);
            let memory = p.has_memory().await?;
            if json_out {
                println!(
                    "{}",
                    json!({"vm": vm, "snapshot": made, "kind": kind, "memory": memory, "path": path.as_str()})
                );
            } else {
                let with = if memory { " with memory" } else { "" };
                println!("{vm}: made {kind} snapshot '{made}'{with}");
            }
            Ok(())
        }
        SnapshotCmd::Revert {
            vm,
            name,
            state,
            force,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if let Some(s) = state {
                o.insert("state", s.as_str().into());
            }
            if *force {
                o.insert("force", true.into());
            }
            let s = find(c, vm, name).await?;
            with_progress(&c.conn, s.revert(o)).await?;
            done(vm, name, "reverted to", json_out);
            Ok(())
        }
        SnapshotCmd::Delete {
            vm,
            name,
            children,
            metadata_only,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if *children {
                o.insert("children", true.into());
            }
            if *metadata_only {
                o.insert("metadata_only", true.into());
            }
            let s = find(c, vm, name).await?;
            with_progress(&c.conn, s.delete(o)).await?;
            done(vm, name, "deleted", json_out);
            Ok(())
        }
    }
}

fn done(vm: &str, name: &str, what: &str, json_out: bool) {
    if json_out {
        println!("{}", json!({"vm": vm, "snapshot": name, "done": what}));
    } else {
        println!("{vm}: {what} snapshot '{name}'");
    }
}

async fn list(c: &Client, vm: &str, json_out: bool) -> Result<(), Failure> {
    let vm_path = c.vm_path(vm).await?;
    let objs = c.objects().await?;
    let mut snaps: Vec<_> = objs
        .of(SNAPSHOT)
        .into_iter()
        .filter(|(_, p)| prop_str(p, "VirtualMachine") == vm_path.as_str())
        .collect();
    snaps.sort_by_key(|(_, p)| (crate::output::prop_u64(p, "CreatedAt"), prop_str(p, "Name")));
    if json_out {
        print_json(&Value::Array(
            snaps.iter().map(|(_, p)| props_json(p)).collect(),
        ));
        return Ok(());
    }
    let mut rows = vec![header(&[
        "NAME", "CREATED", "KIND", "MEMORY", "STATE", "PARENT", "CURRENT",
    ])];
    for (_, p) in &snaps {
        let parent = prop_str(p, "Parent");
        rows.push(vec![
            prop_str(p, "Name"),
            format_epoch(crate::output::prop_u64(p, "CreatedAt")),
            prop_str(p, "Kind"),
            yes_no(prop_bool(p, "HasMemory")),
            prop_str(p, "StateAtSnapshot"),
            or_dash(objs.names(&[parent]).join("")),
            if prop_bool(p, "IsCurrent") {
                "*".into()
            } else {
                String::new()
            },
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

/// One capability: (possible, reason).
fn verdict(v: &OwnedVariant) -> (bool, String) {
    let m: HashMap<String, OwnedVariant> = v
        .try_clone()
        .ok()
        .and_then(|v| HashMap::try_from(v).ok())
        .unwrap_or_default();
    let possible = m
        .get("possible")
        .and_then(|b| bool::try_from(b).ok())
        .unwrap_or(false);
    let reason = m
        .get("reason")
        .and_then(|r| String::try_from(r.try_clone().ok()?).ok())
        .unwrap_or_default();
    (possible, reason)
}

const KINDS: &[(&str, &str)] = &[
    ("internal", "internal"),
    ("external", "external (disk-only)"),
    ("external_memory", "external with memory"),
    ("revert_internal", "revert to internal"),
    ("delete_internal", "delete internal"),
    ("revert_external", "revert to external"),
    ("delete_external", "delete external"),
    ("quiesce", "quiesce"),
];

async fn capabilities(c: &Client, vm: &str, json_out: bool) -> Result<(), Failure> {
    let caps = c.vm(vm).await?.get_snapshot_capabilities().await?;
    let auto = caps
        .get("auto")
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default();
    if json_out {
        let mut doc = serde_json::Map::new();
        for (key, _) in KINDS {
            if let Some(v) = caps.get(*key) {
                let (possible, reason) = verdict(v);
                doc.insert(
                    (*key).into(),
                    json!({"possible": possible, "reason": reason}),
                );
            }
        }
        doc.insert("auto".into(), json!(auto));
        print_json(&Value::Object(doc));
        return Ok(());
    }
    let mut rows = vec![header(&["KIND", "POSSIBLE", "WHY NOT"])];
    for (key, label) in KINDS {
        let (possible, reason) = caps.get(*key).map(verdict).unwrap_or_default();
        rows.push(vec![(*label).into(), yes_no(possible), or_dash(reason)]);
    }
    print!("{}", table(&rows));
    println!("a snapshot with no options would be: {auto}");
    Ok(())
}
