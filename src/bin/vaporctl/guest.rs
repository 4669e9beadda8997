//! `vaporctl guest …`: a VM's guest agent: wait for it, what it reports,
//! programs run inside the guest, cloud-init's status.

use std::collections::HashMap;
use std::io::{Read, Write};

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::{Client, VM};
use crate::job::with_progress;
use crate::output::{print_json, props_json_value};
use crate::Failure;

#[derive(Subcommand)]
pub enum GuestCmd {
    /// Wait until the VM's guest agent answers.
    Wait {
        vm: String,
        /// Seconds (default: vapord's agent_timeout_secs, 300).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
    },
    /// What the guest agent reports: host name, OS, addresses, file systems.
    Info {
        vm: String,
        /// Ask the agent again first.
        #[arg(long)]
        refresh: bool,
    },
    /// Run a program as root in the guest: `vaporctl guest exec VM -- uname -a`.
    /// Its output is printed as it came; vaporctl exits with its status.
    Exec {
        vm: String,
        /// Send vaporctl's standard input to the program.
        #[arg(long)]
        stdin: bool,
        /// Seconds before the program is killed (default 60).
        #[arg(long)]
        timeout: Option<u32>,
        /// Bytes of output kept per stream (default 8 MiB, at most 12 MiB).
        #[arg(long)]
        max_output: Option<u64>,
        /// Cut output beyond --max-output instead of failing.
        #[arg(long)]
        truncate: bool,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// cloud-init's status in the guest (`cloud-init status --long`).
    CloudInitStatus { vm: String },
    /// Copy a file into a guest (`cp FILE VM:/path`, FILE `-` for standard
    /// input) or out of one (`cp VM:/path FILE`, `-` for standard output).
    Cp {
        from: String,
        to: String,
        /// Octal permission bits of the file written (default 644).
        #[arg(long)]
        mode: Option<String>,
        /// user or user:group in the guest.
        #[arg(long)]
        owner: Option<String>,
        /// Fail instead of replacing an existing file.
        #[arg(long)]
        no_overwrite: bool,
    },
}

/// `VM:/path` → (VM, /path).
fn guest_side(arg: &str) -> Option<(&str, &str)> {
    arg.split_once(':')
        .filter(|(vm, p)| !vm.is_empty() && p.starts_with('/'))
}

async fn copy(
    c: &Client,
    from: &str,
    to: &str,
    opts: HashMap<&str, zbus::Variant<'_>>,
    json_out: bool,
) -> Result<(), Failure> {
    use std::os::fd::AsFd;
    use zbus::Fd;
    let (bytes, sha) = match (guest_side(from), guest_side(to)) {
        (None, Some((vm, path))) => {
            let unreadable =
                |e: std::io::Error| Failure::new(66, format!("cannot read {from}: {e}"));
            let file = if from == "-" {
                std::fs::File::from(
                    std::io::stdin()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(unreadable)?,
                )
            } else {
                std::fs::File::open(from).map_err(unreadable)?
            };
            let v = c.vm(vm).await?;
            with_progress(&c.conn, v.write_file(path, Fd::from(&file), opts)).await?
        }
        (Some((vm, path)), None) => {
            let v = c.vm(vm).await?;
            if to == "-" {
                let out = std::io::stdout();
                with_progress(&c.conn, v.read_file(path, Fd::from(&out))).await?
            } else {
                let existed = std::path::Path::new(to).exists();
                let out = std::fs::File::create(to)
                    .map_err(|e| Failure::new(73, format!("cannot create {to}: {e}")))?;
                let r = with_progress(&c.conn, v.read_file(path, Fd::from(&out))).await;
                if r.is_err() && !existed {
                    let _ = std::fs::remove_file(to);
                }
                r?
            }
        }
        _ => {
            return Err(Failure::new(
                2,
                "give exactly one side as VM:/absolute/path (the other is a local file or -)",
            ))
        }
    };
    if json_out {
        print_json(&json!({"from": from, "to": to, "bytes": bytes, "sha256": sha}));
    } else if to != "-" {
        println!("{from} → {to}: {bytes} bytes, sha256 {sha}");
    }
    Ok(())
}

pub async fn run(c: &Client, cmd: &GuestCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        GuestCmd::Wait { vm, timeout } => {
            let started = std::time::Instant::now();
            c.vm(vm).await?.wait_for_agent(*timeout).await?;
            let secs = started.elapsed().as_secs_f64();
            if json_out {
                print_json(&json!({"vm": vm, "agent": "answers", "waited_secs": secs}));
            } else {
                println!("{vm}: the guest agent answers (waited {secs:.1} s)");
            }
            Ok(())
        }
        GuestCmd::Info { vm, refresh } => {
            if *refresh {
                c.vm(vm).await?.refresh_guest_info().await?;
            }
            let path = c.vm_path(vm).await?;
            let props = c.properties(path.as_str().to_owned(), VM).await?;
            let connected = props
                .get("AgentConnected")
                .is_some_and(|v| props_json_value(v) == Value::Bool(true));
            let info = match props.get("GuestInfo").map(|v| props_json_value(v)) {
                Some(Value::Object(m)) => m,
                _ => serde_json::Map::new(),
            };
            if json_out {
                print_json(&json!({"vm": vm, "agent_connected": connected, "info": info}));
            } else {
                print_info(vm, connected, &info);
            }
            Ok(())
        }
        GuestCmd::Exec {
            vm,
            stdin,
            timeout,
            max_output,
            truncate,
            argv,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if *stdin {
                let mut input = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut input)
                    .map_err(|e| Failure::new(66, format!("cannot read standard input: {e}")))?;
                o.insert("input", input.into());
            }
            if let Some(t) = timeout {
                o.insert("timeout", (*t).into());
            }
            if let Some(m) = max_output {
                o.insert("max_output", (*m).into());
            }
            if *truncate {
                o.insert("truncate", true.into());
            }
            let args: Vec<&str> = argv.iter().map(String::as_str).collect();
            let (status, out, err) = c.vm(vm).await?.exec(&args, o).await?;
            if json_out {
                print_json(&json!({
                    "vm": vm, "status": status,
                    "stdout": String::from_utf8_lossy(&out),
                    "stderr": String::from_utf8_lossy(&err),
                }));
            } else {
                let _ = std::io::stdout().write_all(&out);
                let _ = std::io::stderr().write_all(&err);
            }
            if status == 0 {
                Ok(())
            } else {
                // The program's own status, as a shell would give it.
                Err(Failure::new(status.clamp(1, 255) as u8, String::new()))
            }
        }
        GuestCmd::Cp {
            from,
            to,
            mode,
            owner,
            no_overwrite,
        } => {
            let mut o: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if let Some(m) = mode {
                let bits = u32::from_str_radix(m, 8)
                    .map_err(|_| Failure::new(2, format!("--mode {m}: not an octal mode")))?;
                o.insert("mode", bits.into());
            }
            if let Some(w) = owner {
                o.insert("owner", w.as_str().into());
            }
            if *no_overwrite {
                o.insert("overwrite", false.into());
            }
            copy(c, from, to, o, json_out).await
        }
        GuestCmd::CloudInitStatus { vm } => {
            let text = c.vm(vm).await?.get_cloud_init_status().await?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if json_out {
                print_json(&v);
            } else {
                println!(
                    "{vm}: cloud-init {}",
                    v["status"].as_str().unwrap_or("(unknown)")
                );
                if let Some(d) = v["detail"].as_str() {
                    // The guest wrote it: no terminal control sequences.
                    let d: String = d
                        .chars()
                        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
                        .collect();
                    println!("  detail: {d}");
                }
                for key in ["errors", "recoverable_errors"] {
                    match &v[key] {
                        Value::Array(a) if !a.is_empty() => {
                            println!("  {key}: {}", Value::Array(a.clone()))
                        }
                        Value::Object(m) if !m.is_empty() => {
                            println!("  {key}: {}", Value::Object(m.clone()))
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
    }
}

fn print_info(vm: &str, connected: bool, info: &serde_json::Map<String, Value>) {
    let s = |k: &str| info.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    println!(
        "{vm}: guest agent {}",
        if connected {
            "connected"
        } else {
            "not connected"
        }
    );
    if info.is_empty() {
        return;
    }
    println!("  hostname: {}", s("hostname"));
    println!(
        "  os:       {} ({})",
        s("os_pretty_name"),
        s("kernel_release")
    );
    for i in info
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addrs: Vec<String> = i["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some(format!("{}/{}", a[1].as_str()?, a[2])))
            .collect();
        println!(
            "  if {}: {} {}",
            i["name"].as_str().unwrap_or("?"),
            i["hwaddr"].as_str().unwrap_or(""),
            addrs.join(" ")
        );
    }
    for f in info
        .get("filesystems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "  fs {}: {} {} ({} of {} bytes used)",
            f["mountpoint"].as_str().unwrap_or("?"),
            f["device"].as_str().unwrap_or(""),
            f["fstype"].as_str().unwrap_or(""),
            f["used_bytes"],
            f["total_bytes"]
        );
    }
}
