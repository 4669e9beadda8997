//! Changing VMs: `set` (Update), `attach-disk`, `detach-disk`,
//! `resize-disk`, `media`, `attach-nic`, `detach-nic`, `link`, `clone`.

use std::collections::HashMap;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::bus::Client;
use crate::job::with_progress;
use crate::{read_input, Failure};

/// Where a hotplug change applies; neither flag: vapord's default (the
/// running VM when it runs, and its definition).
#[derive(Args, Debug, Clone, Copy)]
pub struct Scope {
    /// Change the running VM.
    #[arg(long)]
    live: bool,
    /// Change the definition (the next start).
    #[arg(long)]
    config: bool,
}

impl Scope {
    fn options(self) -> HashMap<&'static str, zbus::Variant<'static>> {
        let mut o = HashMap::new();
        if self.live || self.config {
            o.insert("live", self.live.into());
            o.insert("config", self.config.into());
        }
        o
    }
}

#[derive(Subcommand)]
pub enum ChangeCmd {
    /// Change settings: key=value ... (vcpus=4 memory=2048 cpu.mode=host-model
    /// boot_order=cdrom,disk firmware.type=uefi firmware.secure_boot=false
    /// graphics.type=vnc graphics.listen=0.0.0.0 video=virtio autostart=true
    /// title=… description=… name=… metadata.KEY=VALUE, metadata.KEY= removes),
    /// or --file with the JSON document.
    Set {
        vm: String,
        assignments: Vec<String>,
        #[arg(long, conflicts_with = "assignments")]
        file: Option<String>,
    },
    /// Attach a disk: an existing volume, a host path, or a new volume.
    AttachDisk {
        vm: String,
        /// POOL/VOLUME
        #[arg(long, group = "source")]
        volume: Option<String>,
        #[arg(long, group = "source")]
        path: Option<String>,
        /// POOL:SIZE, e.g. default:10G (a new volume owned by the VM)
        #[arg(long, group = "source")]
        create: Option<String>,
        /// Name of the new volume (with --create).
        #[arg(long, requires = "create")]
        name: Option<String>,
        #[arg(long, value_parser = ["qcow2", "raw"], requires = "create")]
        format: Option<String>,
        #[arg(long, value_parser = ["virtio", "scsi", "sata", "usb"])]
        bus: Option<String>,
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        cdrom: bool,
        #[arg(long)]
        readonly: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Detach a disk by target (vdb …).
    DetachDisk {
        vm: String,
        target: String,
        /// Delete the volume vapord created for this VM (unless used elsewhere).
        #[arg(long)]
        remove_storage: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Grow a disk (online while running): SIZE like 20G.
    ResizeDisk {
        vm: String,
        target: String,
        size: String,
    },
    /// Insert, change or eject a cdrom's media.
    Media {
        vm: String,
        target: String,
        #[arg(long, group = "media")]
        path: Option<String>,
        /// POOL/VOLUME
        #[arg(long, group = "media")]
        volume: Option<String>,
        #[arg(long, group = "media")]
        eject: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Attach a network interface.
    AttachNic {
        vm: String,
        #[arg(long, group = "nic")]
        network: Option<String>,
        #[arg(long, group = "nic")]
        bridge: Option<String>,
        #[arg(long, value_parser = ["virtio", "e1000e", "e1000", "rtl8139"])]
        model: Option<String>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        link_down: bool,
        #[command(flatten)]
        scope: Scope,
    },
    /// Detach a network interface by MAC address.
    DetachNic {
        vm: String,
        mac: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Set an interface's link up or down.
    Link {
        vm: String,
        mac: String,
        #[arg(value_parser = ["up", "down"])]
        state: String,
        #[command(flatten)]
        scope: Scope,
    },
    /// Clone a VM (shut off or paused): full copies, or --linked qcow2 overlays.
    Clone {
        vm: String,
        new_name: String,
        #[arg(long)]
        linked: bool,
    },
}

const INTEGER_KEYS: &[&str] = &["vcpus", "max_vcpus", "memory", "max_memory"];
const BOOL_KEYS: &[&str] = &["autostart", "firmware.secure_boot"];

/// Turn `key=value` assignments into an Update document. Pure.
pub fn assignments_to_json(items: &[String]) -> Result<Value, String> {
    let mut doc = Map::new();
    for item in items {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item}: expected key=value"))?;
        let v = if INTEGER_KEYS.contains(&key) {
            let mib = if value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse::<u64>().map_err(|e| format!("{key}: {e}"))?
            } else if key.contains("memory") {
                crate::output::parse_size(value).map_err(|e| format!("{key}: {e}"))? >> 20
            } else {
                return Err(format!("{key}: expected a number"));
            };
            json!(mib)
        } else if BOOL_KEYS.contains(&key) {
            match value {
                "true" | "yes" | "on" => json!(true),
                "false" | "no" | "off" => json!(false),
                _ => return Err(format!("{key}: expected true or false")),
            }
        } else if key == "boot_order" {
            json!(value.split(',').collect::<Vec<_>>())
        } else if key.starts_with("metadata.") && value.is_empty() {
            Value::Null
        } else {
            json!(value)
        };
        let (outer, inner) = match key.split_once('.') {
            Some((o, i)) => (o, Some(i)),
            None => (key, None),
        };
        match inner {
            None => {
                if doc.insert(outer.to_owned(), v).is_some() {
                    return Err(format!("{key}: given twice"));
                }
            }
            Some(i) => {
                let entry = doc
                    .entry(outer.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(m) = entry else {
                    return Err(format!("{key}: {outer} is not an object"));
                };
                if m.insert(i.to_owned(), v).is_some() {
                    return Err(format!("{key}: given twice"));
                }
            }
        }
    }
    if doc.is_empty() {
        return Err("nothing to change: give key=value assignments or --file".into());
    }
    Ok(Value::Object(doc))
}

fn pool_volume(s: &str) -> Result<(&str, &str), Failure> {
    s.split_once('/')
        .ok_or_else(|| Failure::new(2, format!("{s}: expected POOL/VOLUME")))
}

fn print(json_out: bool, v: Value, text: String) {
    if json_out {
        println!("{v}");
    } else {
        println!("{text}");
    }
}

pub async fn run(c: &Client, cmd: &ChangeCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        ChangeCmd::Set {
            vm,
            assignments,
            file,
        } => {
            let doc = match file {
                Some(f) => read_input(f)?,
                None => assignments_to_json(assignments)
                    .map_err(|e| Failure::new(2, e))?
                    .to_string(),
            };
            let (changed, pending) = c.vm(vm).await?.update(&doc, HashMap::new()).await?;
            let mut text = format!("{vm}: changed {}", changed.join(", "));
            if !pending.is_empty() {
                text.push_str(&format!("\n  at the next start: {}", pending.join(", ")));
            }
            print(
                json_out,
                json!({"vm": vm, "changed": changed, "pending": pending}),
                text,
            );
        }
        ChangeCmd::AttachDisk {
            vm,
            volume,
            path,
            create,
            name,
            format,
            bus,
            target,
            cdrom,
            readonly,
            scope,
        } => {
            let mut d = Map::new();
            if let Some(v) = volume {
                let (pool, vol) = pool_volume(v)?;
                d.insert("pool".into(), json!(pool));
                d.insert("volume".into(), json!(vol));
            } else if let Some(p) = path {
                d.insert("path".into(), json!(p));
            } else if let Some(cr) = create {
                let (pool, size) = cr
                    .split_once(':')
                    .ok_or_else(|| Failure::new(2, format!("{cr}: expected POOL:SIZE")))?;
                d.insert("pool".into(), json!(pool));
                let mut c = Map::new();
                c.insert("size".into(), json!(size));
                if let Some(n) = name {
                    c.insert("name".into(), json!(n));
                }
                if let Some(f) = format {
                    c.insert("format".into(), json!(f));
                }
                d.insert("create".into(), Value::Object(c));
            } else {
                return Err(Failure::new(2, "give --volume, --path or --create"));
            }
            if *cdrom {
                d.insert("device".into(), json!("cdrom"));
            }
            if let Some(b) = bus {
                d.insert("bus".into(), json!(b));
            }
            if let Some(t) = target {
                d.insert("target".into(), json!(t));
            }
            if *readonly {
                d.insert("readonly".into(), json!(true));
            }
            let t = c
                .vm(vm)
                .await?
                .attach_disk(&Value::Object(d).to_string(), scope.options())
                .await?;
            print(
                json_out,
                json!({"vm": vm, "target": t}),
                format!("{vm}: attached {t}"),
            );
        }
        ChangeCmd::DetachDisk {
            vm,
            target,
            remove_storage,
            scope,
        } => {
            let mut o = scope.options();
            if *remove_storage {
                o.insert("remove_storage", true.into());
            }
            let (removed, kept) = c.vm(vm).await?.detach_disk(target, o).await?;
            let kept_json: Vec<Value> = kept
                .iter()
                .map(|(p, w)| json!({"path": p, "reason": w}))
                .collect();
            let mut text = format!("{vm}: detached {target}");
            for p in &removed {
                text.push_str(&format!("\n  removed {p}"));
            }
            for (p, w) in &kept {
                text.push_str(&format!("\n  kept    {p} ({w})"));
            }
            print(
                json_out,
                json!({"vm": vm, "detached": target, "removed": removed, "kept": kept_json}),
                text,
            );
        }
        ChangeCmd::ResizeDisk { vm, target, size } => {
            c.vm(vm)
                .await?
                .resize_disk(target, size, HashMap::new())
                .await?;
            print(
                json_out,
                json!({"vm": vm, "resized": target, "size": size}),
                format!("{vm}: {target} is now {size}"),
            );
        }
        ChangeCmd::Media {
            vm,
            target,
            path,
            volume,
            eject,
            scope,
        } => {
            let media = if *eject {
                String::new()
            } else if let Some(p) = path {
                json!({"path": p}).to_string()
            } else if let Some(v) = volume {
                let (pool, vol) = pool_volume(v)?;
                json!({"pool": pool, "volume": vol}).to_string()
            } else {
                return Err(Failure::new(2, "give --path, --volume or --eject"));
            };
            c.vm(vm)
                .await?
                .change_media(target, &media, scope.options())
                .await?;
            let what = if *eject {
                "ejected".to_owned()
            } else {
                "media changed".to_owned()
            };
            print(
                json_out,
                json!({"vm": vm, "target": target, "done": what}),
                format!("{vm}: {target} {what}"),
            );
        }
        ChangeCmd::AttachNic {
            vm,
            network,
            bridge,
            model,
            mac,
            link_down,
            scope,
        } => {
            let mut d = Map::new();
            match (network, bridge) {
                (Some(n), _) => d.insert("network".into(), json!(n)),
                (_, Some(b)) => d.insert("bridge".into(), json!(b)),
                _ => return Err(Failure::new(2, "give --network or --bridge")),
            };
            if let Some(m) = model {
                d.insert("model".into(), json!(m));
            }
            if let Some(m) = mac {
                d.insert("mac".into(), json!(m));
            }
            if *link_down {
                d.insert("link".into(), json!("down"));
            }
            let mac = c
                .vm(vm)
                .await?
                .attach_interface(&Value::Object(d).to_string(), scope.options())
                .await?;
            print(
                json_out,
                json!({"vm": vm, "mac": mac}),
                format!("{vm}: attached interface {mac}"),
            );
        }
        ChangeCmd::DetachNic { vm, mac, scope } => {
            c.vm(vm)
                .await?
                .detach_interface(mac, scope.options())
                .await?;
            print(
                json_out,
                json!({"vm": vm, "detached": mac}),
                format!("{vm}: detached interface {mac}"),
            );
        }
        ChangeCmd::Link {
            vm,
            mac,
            state,
            scope,
        } => {
            c.vm(vm)
                .await?
                .set_interface_link(mac, state == "up", scope.options())
                .await?;
            print(
                json_out,
                json!({"vm": vm, "mac": mac, "link": state}),
                format!("{vm}: link of {mac} {state}"),
            );
        }
        ChangeCmd::Clone {
            vm,
            new_name,
            linked,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if *linked {
                o.insert("mode", "linked".into());
            }
            let p = c.vm(vm).await?;
            let path = with_progress(&c.conn, p.clone_vm(new_name, o)).await?;
            print(
                json_out,
                json!({"cloned": vm, "created": path.as_str()}),
                format!("created {}", path.as_str()),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::assignments_to_json as a;
    use serde_json::json;

    fn v(items: &[&str]) -> Result<serde_json::Value, String> {
        a(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn assignments_become_the_update_document() {
        assert_eq!(
            v(&[
                "vcpus=4",
                "memory=2G",
                "cpu.mode=custom",
                "cpu.model=qemu64",
                "boot_order=cdrom,disk",
                "firmware.type=uefi",
                "firmware.secure_boot=off",
                "autostart=yes",
                "metadata.a=1",
                "metadata.b="
            ])
            .unwrap(),
            json!({"vcpus": 4, "memory": 2048, "cpu": {"mode": "custom", "model": "qemu64"},
                   "boot_order": ["cdrom", "disk"], "firmware": {"type": "uefi", "secure_boot": false},
                   "autostart": true, "metadata": {"a": "1", "b": null}})
        );
        assert!(v(&["vcpus"]).unwrap_err().contains("key=value"));
        assert!(v(&["vcpus=many"]).unwrap_err().contains("vcpus"));
        assert!(v(&["autostart=maybe"])
            .unwrap_err()
            .contains("true or false"));
        assert!(v(&["video=qxl", "video=vga"])
            .unwrap_err()
            .contains("twice"));
        assert!(v(&[]).unwrap_err().contains("nothing to change"));
    }
}
