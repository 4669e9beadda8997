//! `vaporctl pool …`: storage pools, named by name or UUID.

use std::collections::HashMap;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::{Client, POOL};
use crate::job::with_progress;
use crate::output::{
    format_size, header, or_dash, print_fields, print_json, prop_bool, prop_str, prop_u64,
    props_json, show_fields, table, yes_no,
};
use crate::{read_input, Failure};

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Every storage pool with its state and space.
    List,
    /// Every property of one pool.
    Show { pool: String },
    /// Define a pool from a JSON pool spec (a file, or - for stdin); vapord
    /// builds and starts it unless the spec says otherwise.
    Create {
        spec: String,
        /// Only print the pool XML vapord would define; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Start (activate) a pool.
    Start {
        pool: String,
        /// Build it first (create the directory, format the volume group…).
        #[arg(long)]
        build: bool,
    },
    /// Stop (deactivate) a pool.
    Stop { pool: String },
    /// Re-read a pool's volumes from storage.
    Refresh { pool: String },
    /// Turn starting with the host on or off.
    Autostart {
        pool: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Remove a pool's definition (refused while it holds volumes, unless
    /// --delete-volumes).
    Delete {
        pool: String,
        /// Delete every volume first (refused, with nothing deleted, if a VM uses one).
        #[arg(long)]
        delete_volumes: bool,
        /// Also remove the pool's (then empty) target directory.
        #[arg(long)]
        delete_directory: bool,
    },
}

pub async fn run(c: &Client, cmd: &PoolCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        PoolCmd::List => list(c, json_out).await,
        PoolCmd::Show { pool } => show(c, pool, json_out).await,
        PoolCmd::Create { spec, dry_run } => create(c, spec, *dry_run, json_out).await,
        PoolCmd::Start { pool, build } => {
            let p = c.pool(pool).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            opts.insert("build", (*build).into());
            p.start(opts).await?;
            done(pool, "Start", "started", json_out);
            Ok(())
        }
        PoolCmd::Stop { pool } => {
            c.pool(pool).await?.stop().await?;
            done(pool, "Stop", "stopped", json_out);
            Ok(())
        }
        PoolCmd::Refresh { pool } => {
            c.pool(pool).await?.refresh().await?;
            done(pool, "Refresh", "refreshed", json_out);
            Ok(())
        }
        PoolCmd::Autostart { pool, state } => {
            let on = state == "on";
            c.pool(pool).await?.set_autostart(on).await?;
            if json_out {
                println!("{}", json!({"pool": pool, "autostart": on}));
            } else {
                println!("{pool}: autostart {state}");
            }
            Ok(())
        }
        PoolCmd::Delete {
            pool,
            delete_volumes,
            delete_directory,
        } => {
            let p = c.pool(pool).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            opts.insert("delete_volumes", (*delete_volumes).into());
            opts.insert("delete_directory", (*delete_directory).into());
            with_progress(&c.conn, p.delete(opts)).await?;
            done(pool, "Delete", "deleted", json_out);
            Ok(())
        }
    }
}

/// What an action without a result prints.
fn done(pool: &str, method: &str, text: &str, json_out: bool) {
    if json_out {
        println!("{}", json!({"pool": pool, "done": method}));
    } else {
        println!("{pool}: {text}");
    }
}

async fn list(c: &Client, json_out: bool) -> Result<(), Failure> {
    let objs = c.objects().await?;
    let pools = objs.of(POOL);
    if json_out {
        print_json(&Value::Array(
            pools.iter().map(|(_, p)| props_json(p)).collect(),
        ));
        return Ok(());
    }
    let mut rows = vec![header(&[
        "NAME",
        "TYPE",
        "STATE",
        "AUTOSTART",
        "CAPACITY",
        "ALLOCATION",
        "AVAILABLE",
        "PATH",
    ])];
    for (_, p) in &pools {
        rows.push(vec![
            prop_str(p, "Name"),
            prop_str(p, "Type"),
            prop_str(p, "State"),
            yes_no(prop_bool(p, "Autostart")),
            format_size(prop_u64(p, "CapacityBytes")),
            format_size(prop_u64(p, "AllocationBytes")),
            format_size(prop_u64(p, "AvailableBytes")),
            or_dash(prop_str(p, "TargetPath")),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

async fn show(c: &Client, pool: &str, json_out: bool) -> Result<(), Failure> {
    let path = c.pool_path(pool).await?;
    let objs = c.objects().await?;
    let props = objs
        .get(path.as_str(), POOL)
        .ok_or_else(|| Failure::new(3, format!("pool {pool} vanished")))?;
    if json_out {
        print_json(&props_json(props));
    } else {
        print_fields(&show_fields(path.as_str(), props, &|p| objs.names(p)), 20);
    }
    Ok(())
}

async fn create(c: &Client, spec: &str, dry_run: bool, json_out: bool) -> Result<(), Failure> {
    let text = read_input(spec)?;
    let m = c.manager().await?;
    if dry_run {
        let xml = m.plan_storage_pool(&text).await?;
        if json_out {
            println!("{}", json!({"pool_xml": xml}));
        } else {
            println!("{xml}");
        }
        return Ok(());
    }
    let path = with_progress(&c.conn, m.create_storage_pool(&text)).await?;
    if json_out {
        println!("{}", json!({"created": path.as_str()}));
    } else {
        println!("created {}", path.as_str());
    }
    Ok(())
}
