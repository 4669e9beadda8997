//! `vaporctl pci …`, `attach-pci`, `detach-pci`: host PCI devices and VFIO
//! passthrough.

use std::collections::HashMap;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::{Client, PCI};
use crate::output::{print_json, prop_str, props_json, table};
use crate::{Failure, ROOT};

#[derive(Subcommand)]
pub enum PciCmd {
    /// Every host PCI device with its driver, group and why the host needs it.
    List,
    /// One device's properties.
    Show { address: String },
    /// Every reason a device cannot be given to a VM (exit 0 when it can).
    Check {
        address: String,
        #[arg(long)]
        vm: String,
        /// Other devices assigned in the same request (e.g. the GPU's audio).
        #[arg(long = "with")]
        with: Vec<String>,
        #[arg(long)]
        rom_file: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Bind a device to vfio-pci, remembering its driver.
    Bind {
        address: String,
        /// The whole IOMMU group.
        #[arg(long)]
        group: bool,
        /// Re-apply whenever the device appears (like driverctl).
        #[arg(long)]
        persistent: bool,
    },
    /// Give a device back to its own driver.
    Restore { address: String },
}

fn pci_path(address: &str) -> Result<String, Failure> {
    let a: vapor::pci::PciAddress =
        address
            .parse()
            .map_err(|e: vapor::pci::address::BadAddress| Failure {
                code: 6,
                message: e.to_string(),
            })?;
    Ok(format!("{ROOT}/pci/{}", a.path_element()))
}

fn joined(v: &Value, sep: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(sep)
        })
        .unwrap_or_default()
}

async fn list(c: &Client, json_out: bool) -> Result<(), Failure> {
    let objs = c.objects().await?;
    let mut devs: Vec<_> = objs.of(PCI).into_iter().map(|(_, p)| p).collect();
    devs.sort_by_key(|d| prop_str(d, "Address"));
    if json_out {
        let v: Vec<Value> = devs.iter().map(|d| props_json(d)).collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let mut rows = vec![[
        "ADDRESS",
        "ID",
        "CLASS",
        "DRIVER",
        "GROUP",
        "ASSIGNED",
        "HOST NEEDS IT",
    ]
    .map(String::from)
    .to_vec()];
    let dash = |s: String| if s.is_empty() { "-".into() } else { s };
    for d in &devs {
        let group = prop_str(d, "IommuGroup");
        let all = props_json(d);
        rows.push(vec![
            prop_str(d, "Address"),
            format!(
                "{:04x}:{:04x}",
                all["VendorId"].as_u64().unwrap_or(0),
                all["DeviceId"].as_u64().unwrap_or(0)
            ),
            prop_str(d, "ClassName"),
            dash(prop_str(d, "Driver")),
            if group == "-1" { "-".into() } else { group },
            dash(joined(&all["AssignedToNames"], ",")),
            dash(joined(&all["HostCriticalReasons"], "; ")),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

pub async fn run(c: &Client, cmd: &PciCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        PciCmd::List => list(c, json_out).await?,
        PciCmd::Show { address } => {
            let path = pci_path(address)?;
            let props = c.properties(path, PCI).await?;
            let v = props_json(&props);
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let Value::Object(m) = v {
                for (k, v) in m {
                    let text = match v {
                        Value::String(s) => s,
                        v => v.to_string(),
                    };
                    println!("{k:<20} {text}");
                }
            }
        }
        PciCmd::Check {
            address,
            vm,
            with,
            rom_file,
            force,
        } => {
            let dev = c.pci_at(pci_path(address)?).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if !with.is_empty() {
                opts.insert("with", with.clone().into());
            }
            if let Some(r) = rom_file {
                opts.insert("rom_file", r.as_str().into());
            }
            if *force {
                opts.insert("force", true.into());
            }
            let problems = dev.check_assignment(vm, opts).await?;
            if json_out {
                let v: Vec<Value> = problems
                    .iter()
                    .map(|(c, m)| json!({"code": c, "message": m}))
                    .collect();
                println!(
                    "{}",
                    json!({"address": address, "vm": vm, "assignable": problems.is_empty(), "problems": v})
                );
            } else if problems.is_empty() {
                println!("{address} can be given to {vm}");
            } else {
                println!("{address} cannot be given to {vm}:");
                for (code, msg) in &problems {
                    println!("  [{code}] {msg}");
                }
            }
            if !problems.is_empty() {
                return Err(Failure {
                    code: 5,
                    message: format!("{address} is not assignable to {vm}"),
                });
            }
        }
        PciCmd::Bind {
            address,
            group,
            persistent,
        } => {
            let dev = c.pci_at(pci_path(address)?).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            opts.insert("group", (*group).into());
            opts.insert("persistent", (*persistent).into());
            for (a, prev) in dev.bind_to_vfio(opts).await? {
                println!(
                    "{a}: vfio-pci (was {})",
                    if prev.is_empty() { "unbound" } else { &prev }
                );
            }
        }
        PciCmd::Restore { address } => {
            let dev = c.pci_at(pci_path(address)?).await?;
            let driver = dev.restore_driver().await?;
            println!(
                "{address}: {}",
                if driver.is_empty() {
                    "unbound"
                } else {
                    &driver
                }
            );
        }
    }
    Ok(())
}

/// `vaporctl attach-pci VM ADDRESS`.
pub async fn attach(
    c: &Client,
    vm: &str,
    address: &str,
    guest_address: Option<&str>,
    rom_file: Option<&str>,
    force: bool,
) -> Result<(), Failure> {
    let p = c.vm(vm).await?;
    let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    if let Some(g) = guest_address {
        opts.insert("guest_address", g.into());
    }
    if let Some(r) = rom_file {
        opts.insert("rom_file", r.into());
    }
    if force {
        opts.insert("force", true.into());
    }
    p.attach_pci_device(address, opts).await?;
    println!("{vm}: {address} attached");
    Ok(())
}

/// `vaporctl detach-pci VM ADDRESS`.
pub async fn detach(c: &Client, vm: &str, address: &str) -> Result<(), Failure> {
    let p = c.vm(vm).await?;
    p.detach_pci_device(address, HashMap::new()).await?;
    println!("{vm}: {address} detached");
    Ok(())
}
