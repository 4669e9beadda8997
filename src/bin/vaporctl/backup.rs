//! `vaporctl backup …`: backups in vapord's repository, named by their id.

use std::collections::HashMap;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::{Client, BACKUP};
use crate::job::with_progress;
use crate::output::{
    format_epoch, format_size, header, or_dash, print_json, prop_bool, prop_str, prop_u64,
    props_json, table, yes_no,
};
use crate::Failure;

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Every backup (of one VM, by name or UUID, when given), oldest first.
    List { vm: Option<String> },
    /// Back up a VM: incremental when it runs and its newest backup allows.
    Create {
        vm: String,
        #[arg(long, value_parser = ["auto", "full", "incremental"])]
        kind: Option<String>,
        /// Freeze the guest's file systems through its agent meanwhile.
        #[arg(long)]
        quiesce: bool,
        /// Then keep only the newest N backups of the VM (whole chains).
        #[arg(long)]
        keep: Option<u32>,
    },
    /// Check every file of a backup against its manifest.
    Verify { id: String },
    /// Restore a backup as a new VM.
    Restore {
        id: String,
        new_name: String,
        /// The directory pool the disks are written to.
        #[arg(long)]
        pool: String,
    },
    /// Delete a backup (and with --dependents the backups built on it).
    Delete {
        id: String,
        #[arg(long)]
        dependents: bool,
    },
}

fn path_of(id: &str) -> Result<String, Failure> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Failure::new(6, format!("{id}: not a backup id")));
    }
    Ok(format!("{}/backup/{id}", crate::ROOT))
}

pub async fn run(c: &Client, cmd: &BackupCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        BackupCmd::List { vm } => list(c, vm.as_deref(), json_out).await,
        BackupCmd::Create {
            vm,
            kind,
            quiesce,
            keep,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if let Some(k) = kind {
                o.insert("kind", k.as_str().into());
            }
            if *quiesce {
                o.insert("quiesce", true.into());
            }
            if let Some(k) = keep {
                o.insert("keep", u64::from(*k).into());
            }
            let v = c.vm(vm).await?;
            let path = with_progress(&c.conn, v.backup(o)).await?;
            let b = c.backup_at(path.as_str()).await?;
            let p = b.proxy();
            let (id, kind, size) = (p.id().await?, p.kind().await?, p.size_bytes().await?);
            if json_out {
                println!(
                    "{}",
                    json!({"vm": vm, "backup": id, "kind": kind, "size_bytes": size})
                );
            } else {
                println!("{vm}: {kind} backup {id} ({})", format_size(size));
            }
            Ok(())
        }
        BackupCmd::Verify { id } => {
            let b = c.backup_at(&path_of(id)?).await?;
            let (ok, problems) = with_progress(&c.conn, b.verify()).await?;
            if json_out {
                println!(
                    "{}",
                    json!({"backup": id, "intact": ok, "problems": problems})
                );
            } else if ok {
                println!("backup {id}: every file is intact");
            } else {
                println!("backup {id} is damaged:");
                for p in &problems {
                    println!("  {p}");
                }
            }
            if ok {
                Ok(())
            } else {
                Err(Failure::new(1, format!("backup {id} is damaged")))
            }
        }
        BackupCmd::Restore { id, new_name, pool } => {
            let b = c.backup_at(&path_of(id)?).await?;
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            o.insert("new_name", new_name.as_str().into());
            o.insert("target_pool", pool.as_str().into());
            let path = with_progress(&c.conn, b.restore(o)).await?;
            if json_out {
                println!("{}", json!({"backup": id, "created": path.as_str()}));
            } else {
                println!("restored backup {id} as {new_name}");
            }
            Ok(())
        }
        BackupCmd::Delete { id, dependents } => {
            let b = c.backup_at(&path_of(id)?).await?;
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if *dependents {
                o.insert("dependents", true.into());
            }
            let gone = b.delete(o).await?;
            if json_out {
                println!("{}", json!({"deleted": gone}));
            } else {
                println!("deleted {}", gone.join(", "));
            }
            Ok(())
        }
    }
}

async fn list(c: &Client, vm: Option<&str>, json_out: bool) -> Result<(), Failure> {
    let vm_uuid = match vm {
        Some(v) => Some(c.vm(v).await?.proxy().uuid().await?),
        None => None,
    };
    let objs = c.objects().await?;
    let mut backups: Vec<_> = objs
        .of(BACKUP)
        .into_iter()
        .filter(|(_, p)| vm_uuid.as_ref().is_none_or(|u| prop_str(p, "VmUuid") == *u))
        .collect();
    backups.sort_by_key(|(_, p)| (prop_u64(p, "CreatedAt"), prop_str(p, "Id")));
    if json_out {
        print_json(&Value::Array(
            backups.iter().map(|(_, p)| props_json(p)).collect(),
        ));
        return Ok(());
    }
    let mut rows = vec![header(&[
        "ID", "VM", "CREATED", "KIND", "PARENT", "SIZE", "VERIFIED",
    ])];
    for (_, p) in &backups {
        let parent = prop_str(p, "Parent");
        let parent = parent.rsplit('/').next().unwrap_or("").to_owned();
        rows.push(vec![
            prop_str(p, "Id"),
            prop_str(p, "VmName"),
            format_epoch(prop_u64(p, "CreatedAt")),
            prop_str(p, "Kind"),
            or_dash(parent),
            format_size(prop_u64(p, "SizeBytes")),
            yes_no(prop_bool(p, "Verified")),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}
