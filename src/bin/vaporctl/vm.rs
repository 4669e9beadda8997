//! VM commands: list, show, the lifecycle actions, autostart, create,
//! delete, convert-legacy.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::bus::{Client, VM};
use crate::job::with_progress;
use crate::output::{print_json, prop_str, props_json, table};
use crate::{read_input, Failure};

/// Convert an old flat creation spec to the nested one (offline).
pub fn convert_legacy(spec: &str) -> Result<(), Failure> {
    let text = read_input(spec)?;
    let invalid = |message: String| Failure { code: 6, message };
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("{spec}: not JSON: {e}")))?;
    let nested =
        vapor::creation::legacy::convert_legacy(doc).map_err(|e| invalid(e.to_string()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&nested).unwrap_or_default()
    );
    Ok(())
}

pub async fn list(c: &Client, json_out: bool) -> Result<(), Failure> {
    let objs = c.objects().await?;
    let vms: Vec<_> = objs.of(VM).into_iter().map(|(_, p)| p).collect();
    if json_out {
        let v: Vec<Value> = vms.iter().map(|p| props_json(p)).collect();
        print_json(&Value::Array(v));
        return Ok(());
    }
    let mut rows = vec![["NAME", "STATE", "VCPUS", "MEMORY", "AUTOSTART", "UUID"]
        .map(String::from)
        .to_vec()];
    for v in &vms {
        rows.push(vec![
            prop_str(v, "Name"),
            prop_str(v, "State"),
            prop_str(v, "Vcpus"),
            format!("{} MiB", prop_str(v, "MemoryMiB")),
            if prop_str(v, "Autostart") == "true" {
                "yes"
            } else {
                "no"
            }
            .into(),
            prop_str(v, "Uuid"),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

pub async fn show(c: &Client, vm: &str, json_out: bool) -> Result<(), Failure> {
    let proxy = c.vm(vm).await?;
    let doc = proxy.describe().await?;
    let doc: Value = serde_json::from_str(&doc).map_err(|e| Failure {
        code: 1,
        message: format!("vapord sent invalid JSON: {e}"),
    })?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_show(&doc, proxy.path().as_str());
    }
    Ok(())
}

/// The argument-less lifecycle methods.
#[derive(Clone, Copy)]
pub enum Action {
    Start,
    Shutdown,
    Reboot,
    ForceStop,
    Pause,
    Resume,
    Reset,
}

impl Action {
    /// (D-Bus method name as `--json` reports it, what `vaporctl` says).
    fn words(self) -> (&'static str, &'static str) {
        match self {
            Action::Start => ("Start", "started"),
            Action::Shutdown => ("Shutdown", "asked to shut down"),
            Action::Reboot => ("Reboot", "asked to reboot"),
            Action::ForceStop => ("ForceStop", "stopped"),
            Action::Pause => ("Pause", "paused"),
            Action::Resume => ("Resume", "resumed"),
            Action::Reset => ("Reset", "reset"),
        }
    }
}

pub async fn action(c: &Client, vm: &str, action: Action, json_out: bool) -> Result<(), Failure> {
    let p = c.vm(vm).await?;
    match action {
        Action::Start => p.start().await?,
        Action::Shutdown => p.shutdown().await?,
        Action::Reboot => p.reboot().await?,
        Action::ForceStop => p.force_stop().await?,
        Action::Pause => p.pause().await?,
        Action::Resume => p.resume().await?,
        Action::Reset => p.reset().await?,
    }
    let (method, done) = action.words();
    if json_out {
        println!("{}", json!({"vm": vm, "done": method}));
    } else {
        println!("{vm}: {done}");
    }
    Ok(())
}

pub async fn autostart(c: &Client, vm: &str, state: &str, json_out: bool) -> Result<(), Failure> {
    let p = c.vm(vm).await?;
    p.set_autostart(state == "on").await?;
    if !json_out {
        println!("{vm}: autostart {state}");
    }
    Ok(())
}

pub async fn create(c: &Client, spec: &str, dry_run: bool, json_out: bool) -> Result<(), Failure> {
    let text = read_input(spec)?;
    let m = c.manager().await?;
    if dry_run {
        let (resolved, xml) = m.plan_virtual_machine(&text).await?;
        if json_out {
            let resolved: Value = serde_json::from_str(&resolved).unwrap_or(Value::Null);
            println!("{}", json!({"resolved": resolved, "domain_xml": xml}));
        } else {
            println!("# resolved spec\n{resolved}\n\n# domain XML\n{xml}");
        }
        return Ok(());
    }
    let path = with_progress(&c.conn, m.create_virtual_machine(&text)).await?;
    if json_out {
        println!("{}", json!({"created": path.as_str()}));
    } else {
        println!("created {}", path.as_str());
    }
    Ok(())
}

pub struct DeleteOptions {
    pub remove_storage: bool,
    pub remove_foreign_storage: bool,
    pub force: bool,
}

pub async fn delete(c: &Client, vm: &str, o: DeleteOptions, json_out: bool) -> Result<(), Failure> {
    let p = c.vm(vm).await?;
    let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    opts.insert("remove_storage", o.remove_storage.into());
    if o.remove_foreign_storage {
        opts.insert("remove_foreign_storage", true.into());
    }
    opts.insert("force", o.force.into());
    let (removed, kept) = p.delete(opts).await?;
    if json_out {
        let kept: Vec<Value> = kept
            .iter()
            .map(|(p, why)| json!({"path": p, "reason": why}))
            .collect();
        println!(
            "{}",
            json!({"deleted": vm, "removed": removed, "kept": kept})
        );
    } else {
        println!("{vm}: deleted");
        for p in &removed {
            println!("  removed {p}");
        }
        for (p, why) in &kept {
            println!("  kept    {p} ({why})");
        }
    }
    Ok(())
}

fn print_show(doc: &Value, path: &str) {
    let s = |k: &str| match &doc[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    let rows = [
        ("Name", s("name")),
        ("UUID", s("uuid")),
        ("Object", path.to_owned()),
        ("State", format!("{} ({})", s("state"), s("state_reason"))),
        ("vCPUs", format!("{} (max {})", s("vcpus"), s("max_vcpus"))),
        (
            "Memory",
            format!(
                "{} MiB (current {} MiB)",
                s("memory_mib"),
                s("current_memory_mib")
            ),
        ),
        ("Autostart", s("autostart")),
        ("Persistent", s("persistent")),
        (
            "CPU time",
            format!("{:.1} s", doc["cpu_time_ns"].as_f64().unwrap_or(0.0) / 1e9),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<11} {v}");
    }
    if let Some(t) = doc["vapor"]["template"].as_str() {
        println!("{:<11} {t}", "Template");
    }
    if let Some(disks) = doc["disks"].as_array() {
        println!("Disks:");
        for d in disks {
            let src = &d["source"];
            let source = src["path"]
                .as_str()
                .map(String::from)
                .or_else(|| {
                    src["pool"]
                        .as_str()
                        .map(|p| format!("{p}/{}", src["volume"].as_str().unwrap_or("?")))
                })
                .unwrap_or_else(|| "(empty)".into());
            let mut flags = Vec::new();
            if d["readonly"] == true {
                flags.push("read-only");
            }
            if d["shareable"] == true {
                flags.push("shareable");
            }
            println!(
                "  {:<5} {:<6} {}{}",
                d["target"].as_str().unwrap_or("?"),
                d["device"].as_str().unwrap_or("?"),
                source,
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join(", "))
                }
            );
        }
    }
}
