//! `vaporctl migrate VM DESTINATION`: live migration with its progress
//! (data copied, remaining, memory bandwidth, iteration, expected downtime)
//! drawn while it runs; Ctrl-C cancels it, and the VM keeps running here.

use std::collections::HashMap;

use clap::Args;
use serde_json::json;

use crate::bus::Client;
use crate::job::with_progress_cancelable;
use crate::Failure;

#[derive(Args)]
pub struct MigrateArgs {
    pub vm: String,
    /// A host named in vapord.toml's [hosts] (or qemu+tcp|tls|ssh://host/system
    /// where vapord allows unlisted destinations).
    pub destination: String,
    /// Copy the disks: all, or incremental (what the destination's backing
    /// files lack); default none (shared storage).
    #[arg(long, value_parser = ["none", "all", "incremental"])]
    pub copy_storage: Option<String>,
    /// MiB/s.
    #[arg(long)]
    pub bandwidth: Option<u64>,
    /// Let vapord drive both ends instead of the source libvirtd.
    #[arg(long)]
    pub no_p2p: bool,
    #[arg(long)]
    pub tunnelled: bool,
    #[arg(long)]
    pub auto_converge: bool,
    /// Allow switching to post-copy (vaporctl migrate-postcopy VM).
    #[arg(long)]
    pub postcopy: bool,
    /// Comma-separated: xbzrle, mt, zlib, zstd.
    #[arg(long)]
    pub compression: Option<String>,
    /// Where the data goes: tcp://host[:port].
    #[arg(long)]
    pub migrate_uri: Option<String>,
    /// Keep the VM defined here afterwards.
    #[arg(long)]
    pub keep_source: bool,
}

pub async fn run(c: &Client, a: &MigrateArgs, json_out: bool) -> Result<(), Failure> {
    let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    if let Some(s) = &a.copy_storage {
        o.insert("copy_storage", s.as_str().into());
    }
    if let Some(b) = a.bandwidth {
        o.insert("bandwidth", b.into());
    }
    if a.no_p2p {
        o.insert("p2p", false.into());
    }
    for (key, on) in [
        ("tunnelled", a.tunnelled),
        ("auto_converge", a.auto_converge),
        ("postcopy", a.postcopy),
    ] {
        if on {
            o.insert(key, true.into());
        }
    }
    if a.keep_source {
        o.insert("undefine_source", false.into());
    }
    if let Some(m) = &a.compression {
        o.insert("compression", m.as_str().into());
    }
    if let Some(u) = &a.migrate_uri {
        o.insert("migrate_uri", u.as_str().into());
    }
    let path = c.vm_path(&a.vm).await?;
    let v = c.vm_at(path.clone()).await?;
    let call = v.migrate(&a.destination, o);
    let summary = with_progress_cancelable(c, "vm-migrate", path.as_str(), call).await?;
    if json_out {
        println!(
            "{}",
            json!({"vm": a.vm, "destination": a.destination, "summary": summary})
        );
    } else {
        println!("{}: {summary}", a.vm);
    }
    Ok(())
}
