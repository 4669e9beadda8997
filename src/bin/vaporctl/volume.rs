//! `vaporctl volume …`: the volumes of the active pools.
//!
//! A volume is named `POOL/NAME`, or `NAME` with `--pool POOL`, or by its
//! absolute file path (or object path).

use std::collections::HashMap;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::bus::{Client, Objects, POOL, VOLUME};
use crate::job::with_progress;
use crate::output::{
    format_size, header, or_dash, parse_size, print_fields, print_json, prop_str, prop_strs,
    prop_u64, props_json, show_fields, table,
};
use crate::transfer::{download, upload, Upload};
use crate::Failure;

const VOLUME_HELP: &str = "VOLUME is POOL/NAME, or NAME with --pool POOL, or the volume's \
absolute file path.";
const SIZE_HELP: &str = "SIZE is bytes, or takes a unit: K, M, G, T (powers of 1024, also \
KiB … TiB) or KB, MB, GB, TB (powers of 1000); e.g. 20G, 1.5T.";
const BOTH_HELP: &str = "VOLUME is POOL/NAME, or NAME with --pool POOL, or the volume's \
absolute file path. SIZE is bytes, or takes a unit: K, M, G, T (powers of 1024, also \
KiB … TiB) or KB, MB, GB, TB (powers of 1000); e.g. 20G, 1.5T.";

#[derive(Subcommand)]
#[command(after_help = BOTH_HELP)]
pub enum VolumeCmd {
    /// Every volume of the active pools, with the VMs using it.
    List {
        /// Only this pool's volumes.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Every property of one volume.
    #[command(after_help = VOLUME_HELP)]
    Show {
        #[command(flatten)]
        vol: VolArg,
    },
    /// Create an empty volume (or a qcow2 overlay with --backing).
    #[command(after_help = BOTH_HELP)]
    Create {
        /// The pool to create it in.
        #[arg(long)]
        pool: String,
        /// The new volume's name.
        name: String,
        /// Its size, e.g. 20G.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        capacity: u64,
        /// qcow2, raw or iso (vapord's default when not given).
        #[arg(long)]
        format: Option<String>,
        /// The volume it is backed by: a name in the same pool, or POOL/NAME,
        /// or its file path.
        #[arg(long)]
        backing: Option<String>,
        /// Allocate all its space now.
        #[arg(long)]
        preallocate: bool,
    },
    /// Delete a volume (refused while a VM uses it).
    #[command(after_help = VOLUME_HELP)]
    Delete {
        #[command(flatten)]
        vol: VolArg,
    },
    /// Change a volume's capacity to SIZE.
    #[command(after_help = BOTH_HELP)]
    Resize {
        #[command(flatten)]
        vol: VolArg,
        /// The new capacity, e.g. 40G.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Allow making it smaller (data past SIZE is lost).
        #[arg(long)]
        shrink: bool,
    },
    /// Overwrite a volume's data with zeros.
    #[command(after_help = VOLUME_HELP)]
    Wipe {
        #[command(flatten)]
        vol: VolArg,
    },
    /// Copy a volume into a new volume NEW_NAME in the same pool.
    #[command(after_help = VOLUME_HELP)]
    Clone {
        #[command(flatten)]
        vol: VolArg,
        new_name: String,
        /// The copy's format (default: the same).
        #[arg(long)]
        format: Option<String>,
    },
    /// Create a volume from a local file (read by vaporctl, as you).
    #[command(after_help = SIZE_HELP)]
    Upload {
        /// The pool to create it in.
        #[arg(long)]
        pool: String,
        /// The file, or - for stdin (then --name is needed, and --size
        /// unless stdin is a regular file).
        file: String,
        /// The volume's name (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// raw (vapord's default), qcow2 or iso.
        #[arg(long)]
        format: Option<String>,
        /// How much to read, needed when FILE is not a regular file.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        size: Option<u64>,
    },
    /// Write a volume's contents to FILE (created or replaced; - for stdout).
    #[command(after_help = VOLUME_HELP)]
    Download {
        #[command(flatten)]
        vol: VolArg,
        file: String,
    },
}

/// A volume as named on the command line.
#[derive(Args)]
pub struct VolArg {
    /// POOL/NAME, NAME with --pool, or the volume's file path.
    #[arg(value_name = "VOLUME")]
    volume: String,
    /// The pool holding VOLUME (then VOLUME is only its name).
    #[arg(long)]
    pool: Option<String>,
}

/// Which volume a command names.
#[derive(Debug, PartialEq, Eq)]
pub enum VolRef<'a> {
    InPool {
        pool: &'a str,
        name: &'a str,
    },
    /// A file path or an object path.
    Path(&'a str),
}

pub fn parse_vol_ref<'a>(volume: &'a str, pool: Option<&'a str>) -> Result<VolRef<'a>, Failure> {
    if let Some(pool) = pool {
        return Ok(VolRef::InPool { pool, name: volume });
    }
    if volume.starts_with('/') {
        return Ok(VolRef::Path(volume));
    }
    match volume.split_once('/') {
        Some((pool, name)) if !pool.is_empty() && !name.is_empty() => {
            Ok(VolRef::InPool { pool, name })
        }
        _ => Err(Failure::new(
            2,
            format!("name the volume as POOL/NAME, or NAME with --pool POOL (not {volume:?})"),
        )),
    }
}

/// The object path of the volume `r` names.
pub async fn resolve(c: &Client, objs: &Objects, r: &VolRef<'_>) -> Result<String, Failure> {
    let vols = objs.of(VOLUME);
    match r {
        VolRef::InPool { pool, name } => {
            let pool_path = c.pool_path(pool).await?;
            let found = vols.iter().find(|(_, v)| {
                prop_str(v, "Pool") == pool_path.as_str() && prop_str(v, "Name") == *name
            });
            if let Some((path, _)) = found {
                return Ok(path.to_string());
            }
            let state = objs
                .get(pool_path.as_str(), POOL)
                .map(|p| prop_str(p, "State"))
                .unwrap_or_default();
            let why = if state.is_empty() || state == "running" {
                String::new()
            } else {
                format!(" (the pool is {state}; only active pools show volumes)")
            };
            Err(Failure::new(
                3,
                format!("no volume {name} in pool {pool}{why}"),
            ))
        }
        VolRef::Path(p) => vols
            .iter()
            .find(|(path, v)| path == p || prop_str(v, "Path") == *p)
            .map(|(path, _)| path.to_string())
            .ok_or_else(|| Failure::new(3, format!("no volume has the path {p}"))),
    }
}

/// The volume an argument names: its object path and the text to echo.
pub async fn named(c: &Client, vol: &VolArg) -> Result<(String, String, Objects), Failure> {
    let r = parse_vol_ref(&vol.volume, vol.pool.as_deref())?;
    let objs = c.objects().await?;
    let path = resolve(c, &objs, &r).await?;
    let shown = match &vol.pool {
        Some(p) => format!("{p}/{}", vol.volume),
        None => vol.volume.clone(),
    };
    Ok((path, shown, objs))
}

/// The JSON volume spec of `volume create`.
pub fn volume_spec(
    name: &str,
    capacity: u64,
    format: Option<&str>,
    backing_volume: Option<&str>,
    preallocate: bool,
) -> Value {
    let mut spec = json!({"name": name, "capacity": capacity});
    if let Some(f) = format {
        spec["format"] = json!(f);
    }
    if let Some(b) = backing_volume {
        spec["backing_volume"] = json!(b);
    }
    if preallocate {
        spec["preallocate"] = json!(true);
    }
    spec
}

pub async fn run(c: &Client, cmd: &VolumeCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        VolumeCmd::List { pool } => list(c, pool.as_deref(), json_out).await,
        VolumeCmd::Show { vol } => {
            let (path, _, objs) = named(c, vol).await?;
            let props = objs.get(&path, VOLUME).cloned().unwrap_or_default();
            if json_out {
                print_json(&props_json(&props));
            } else {
                print_fields(&show_fields(&path, &props, &|p| objs.names(p)), 20);
            }
            Ok(())
        }
        VolumeCmd::Create {
            pool,
            name,
            capacity,
            format,
            backing,
            preallocate,
        } => {
            let backing = match backing {
                Some(b) if b.contains('/') => {
                    let objs = c.objects().await?;
                    Some(resolve(c, &objs, &parse_vol_ref(b, None)?).await?)
                }
                other => other.clone(),
            };
            let spec = volume_spec(
                name,
                *capacity,
                format.as_deref(),
                backing.as_deref(),
                *preallocate,
            );
            let p = c.pool(pool).await?;
            let path = with_progress(&c.conn, p.create_volume(&spec.to_string())).await?;
            created(path.as_str(), json_out);
            Ok(())
        }
        VolumeCmd::Delete { vol } => {
            let (path, shown, _) = named(c, vol).await?;
            c.volume_at(&path).await?.delete().await?;
            done(&shown, "Delete", "deleted", json_out);
            Ok(())
        }
        VolumeCmd::Resize { vol, size, shrink } => {
            let (path, shown, _) = named(c, vol).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            opts.insert("shrink", (*shrink).into());
            c.volume_at(&path).await?.resize(*size, opts).await?;
            done(
                &shown,
                "Resize",
                &format!("resized to {}", format_size(*size)),
                json_out,
            );
            Ok(())
        }
        VolumeCmd::Wipe { vol } => {
            let (path, shown, _) = named(c, vol).await?;
            let v = c.volume_at(&path).await?;
            with_progress(&c.conn, v.wipe()).await?;
            done(&shown, "Wipe", "wiped", json_out);
            Ok(())
        }
        VolumeCmd::Clone {
            vol,
            new_name,
            format,
        } => {
            let (path, _, _) = named(c, vol).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if let Some(f) = format {
                opts.insert("format", f.as_str().into());
            }
            let v = c.volume_at(&path).await?;
            let new = with_progress(&c.conn, v.clone_to(new_name, opts)).await?;
            created(new.as_str(), json_out);
            Ok(())
        }
        VolumeCmd::Upload {
            pool,
            file,
            name,
            format,
            size,
        } => {
            let up = Upload {
                pool,
                file,
                name: name.as_deref(),
                format: format.as_deref(),
                size: *size,
            };
            upload(c, &up, json_out).await
        }
        VolumeCmd::Download { vol, file } => download(c, vol, file, json_out).await,
    }
}

fn done(vol: &str, method: &str, text: &str, json_out: bool) {
    if json_out {
        println!("{}", json!({"volume": vol, "done": method}));
    } else {
        println!("{vol}: {text}");
    }
}

pub fn created(path: &str, json_out: bool) {
    if json_out {
        println!("{}", json!({"created": path}));
    } else {
        println!("created {path}");
    }
}

async fn list(c: &Client, pool: Option<&str>, json_out: bool) -> Result<(), Failure> {
    let only = match pool {
        Some(p) => Some(c.pool_path(p).await?),
        None => None,
    };
    let objs = c.objects().await?;
    let mut vols: Vec<_> = objs
        .of(VOLUME)
        .into_iter()
        .filter(|(_, v)| {
            only.as_ref()
                .is_none_or(|p| prop_str(v, "Pool") == p.as_str())
        })
        .map(|(path, v)| {
            let pool = objs.names(&[prop_str(v, "Pool")]).join("");
            (pool, path, v)
        })
        .collect();
    vols.sort_by(|a, b| (&a.0, prop_str(a.2, "Name")).cmp(&(&b.0, prop_str(b.2, "Name"))));
    if json_out {
        print_json(&Value::Array(
            vols.iter().map(|(_, _, v)| props_json(v)).collect(),
        ));
        return Ok(());
    }
    let mut rows = vec![header(&[
        "NAME",
        "POOL",
        "FORMAT",
        "CAPACITY",
        "ALLOCATION",
        "USED-BY",
        "PATH",
    ])];
    for (pool, _, v) in &vols {
        rows.push(vec![
            prop_str(v, "Name"),
            pool.clone(),
            or_dash(prop_str(v, "Format")),
            format_size(prop_u64(v, "CapacityBytes")),
            format_size(prop_u64(v, "AllocationBytes")),
            or_dash(objs.names(&prop_strs(v, "UsedBy")).join(",")),
            or_dash(prop_str(v, "Path")),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_named_pool_slash_name_or_by_path() {
        let r = |v, p| parse_vol_ref(v, p).map_err(|f| f.code);
        assert_eq!(
            r("default/disk.qcow2", None),
            Ok(VolRef::InPool {
                pool: "default",
                name: "disk.qcow2"
            })
        );
        assert_eq!(
            r("disk.qcow2", Some("default")),
            Ok(VolRef::InPool {
                pool: "default",
                name: "disk.qcow2"
            })
        );
        assert_eq!(
            r("/var/lib/libvirt/images/a.qcow2", None),
            Ok(VolRef::Path("/var/lib/libvirt/images/a.qcow2"))
        );
        assert_eq!(r("disk.qcow2", None), Err(2));
        assert_eq!(r("default/", None), Err(2));
    }

    #[test]
    fn create_arguments_become_the_volume_spec() {
        assert_eq!(
            volume_spec("a.qcow2", 20 << 30, None, None, false),
            json!({"name": "a.qcow2", "capacity": 21_474_836_480u64})
        );
        assert_eq!(
            volume_spec("b", 1024, Some("qcow2"), Some("base.qcow2"), true),
            json!({"name": "b", "capacity": 1024, "format": "qcow2",
                   "backing_volume": "base.qcow2", "preallocate": true})
        );
    }
}
