//! vaporctl: the command-line client of vapord. It speaks only D-Bus (never
//! libvirt), so it works for anyone polkit lets through.
//!
//! Exit codes: 0 success; 1 other failure; 2 usage; 3 not found;
//! 4 not authorized; 5 invalid state; 6 invalid argument; 7 conflict;
//! 8 not supported; 66 input file unreadable; 69 vapord or libvirt unavailable.

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use zbus::proxy::MethodFlags;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Proxy};

const BUS_NAME: &str = "org.vapor.Virtualization";
const ROOT: &str = "/org/vapor/Virtualization";
const MANAGER: &str = "org.vapor.Virtualization.Manager";
const VM: &str = "org.vapor.Virtualization.VirtualMachine";

/// Manage virtual machines through vapord.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Talk to a vapord on the session bus (vapord --session).
    #[arg(long, global = true)]
    session: bool,
    /// Never ask for a password; fail instead when polkit would ask.
    #[arg(long, global = true)]
    no_ask_password: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List every VM with its state.
    List,
    /// Show one VM's properties and configuration.
    Show { vm: String },
    /// Boot a VM.
    Start { vm: String },
    /// Ask a VM's guest OS to power off.
    Shutdown { vm: String },
    /// Ask a VM's guest OS to reboot.
    Reboot { vm: String },
    /// Stop a VM at once (pull the plug).
    ForceStop { vm: String },
    /// Freeze a VM.
    Pause { vm: String },
    /// Continue a paused VM.
    Resume { vm: String },
    /// Press a VM's reset button.
    Reset { vm: String },
    /// Turn starting with the host on or off.
    Autostart {
        vm: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Create a VM from a JSON creation spec (a file, or - for stdin).
    Create {
        spec: String,
        /// Only print the resolved spec and the domain XML; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// VM templates.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Host PCI devices and VFIO passthrough.
    #[command(subcommand)]
    Pci(PciCmd),
    /// Give a host PCI device to a VM.
    AttachPci {
        vm: String,
        address: String,
        #[arg(long)]
        guest_address: Option<String>,
        #[arg(long)]
        rom_file: Option<String>,
        /// Accept a device the host seems to need.
        #[arg(long)]
        force: bool,
    },
    /// Take a host PCI device from a VM.
    DetachPci { vm: String, address: String },
    /// Convert an old flat creation spec (storage_pool, iso_path, disks at the
    /// root) to the nested one and print it. Works offline.
    ConvertLegacy { spec: String },
    /// Delete a VM (and, with --remove-storage, the volumes vapord created for it).
    Delete {
        vm: String,
        /// Also delete the volumes vapord created for this VM (unless another VM uses them).
        #[arg(long)]
        remove_storage: bool,
        /// Also delete other writable volumes only this VM uses, such as
        /// attached ones (implies --remove-storage; usually needs an administrator).
        #[arg(long)]
        remove_foreign_storage: bool,
        /// Force-stop the VM first if it is running.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PciCmd {
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

const PCI: &str = "org.vapor.Virtualization.PciDevice";

#[derive(Subcommand)]
enum TemplateCmd {
    /// List templates.
    List,
    /// Show one template as JSON.
    Show { name: String },
    /// Create or replace a template from a JSON spec file (without `name`).
    Save {
        name: String,
        spec: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a template made through the API.
    Delete { name: String },
}

fn read_input(path: &str) -> Result<String, Failure> {
    let r = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    r.map_err(|e| Failure {
        code: 66,
        message: format!("cannot read {path}: {e}"),
    })
}

/// Draw a progress bar on stderr from Job PropertiesChanged signals until dropped.
async fn follow_jobs(conn: &Connection) -> Option<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .arg(0, "org.vapor.Virtualization.Job")
        .build()
        .ok()?;
    let mut stream = zbus::MessageStream::for_match_rule(rule, conn, None)
        .await
        .ok()?;
    Some(tokio::spawn(async move {
        let (mut progress, mut step) = (0.0f64, String::new());
        while let Some(Ok(m)) = stream.next().await {
            type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);
            let Ok((_, changed, _)) = m.body().deserialize::<Changed>() else {
                continue;
            };
            if let Some(p) = changed.get("Progress").and_then(|v| f64::try_from(v).ok()) {
                progress = p;
            }
            if let Some(s) = changed
                .get("Step")
                .and_then(|v| String::try_from(v.clone()).ok())
            {
                step = s;
            }
            let filled = (progress * 30.0).round() as usize;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r[{}{}] {:>3.0}% {:<50.50}",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30)),
                progress * 100.0,
                step
            );
            let _ = err.flush();
        }
    }))
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        let (name, msg) = match &e {
            zbus::Error::MethodError(name, msg, _) => {
                (name.as_str().to_owned(), msg.clone().unwrap_or_default())
            }
            zbus::Error::FDO(f) => {
                use zbus::DBusError;
                (
                    f.name().as_str().to_owned(),
                    f.description().unwrap_or_default().to_owned(),
                )
            }
            other => (String::new(), other.to_string()),
        };
        let short = name.rsplit('.').next().unwrap_or("");
        let code = vapor::dbus::errors::exit_code_for(&name);
        let message = match short {
            "ServiceUnknown" | "NameHasNoOwner" => {
                format!("vapord is not running ({BUS_NAME} is not on the bus)")
            }
            "InteractiveAuthorizationRequired" if msg.is_empty() => {
                "authentication is required".into()
            }
            _ if msg.is_empty() => name,
            _ => msg,
        };
        Failure { code, message }
    }
}

struct Client {
    conn: Connection,
    flags: MethodFlags,
}

impl Client {
    async fn proxy(&self, path: &str, iface: &'static str) -> Result<Proxy<'static>, Failure> {
        Ok(Proxy::new(&self.conn, BUS_NAME, path.to_owned(), iface).await?)
    }

    async fn call<B, R>(
        &self,
        path: &str,
        iface: &'static str,
        method: &str,
        body: &B,
    ) -> Result<R, Failure>
    where
        B: serde::Serialize + zbus::DynamicType,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        let p = self.proxy(path, iface).await?;
        p.call_with_flags(method, self.flags, body)
            .await?
            .ok_or_else(|| Failure {
                code: 1,
                message: format!("{method}: no reply"),
            })
    }

    async fn lookup(&self, vm: &str) -> Result<String, Failure> {
        let p: OwnedObjectPath = self
            .call(ROOT, MANAGER, "LookupVirtualMachine", &(vm,))
            .await?;
        Ok(p.as_str().to_owned())
    }

    async fn all_vms(&self) -> Result<Vec<HashMap<String, OwnedVariant>>, Failure> {
        type Managed = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>>;
        let p = self
            .proxy(ROOT, "org.freedesktop.DBus.ObjectManager")
            .await?;
        let objs: Managed = p.call("GetManagedObjects", &()).await?;
        let mut vms: Vec<_> = objs
            .into_values()
            .filter_map(|mut ifaces| ifaces.remove(VM))
            .collect();
        vms.sort_by_key(|v| prop_str(v, "Name"));
        Ok(vms)
    }
}

fn prop_str(props: &HashMap<String, OwnedVariant>, key: &str) -> String {
    match props.get(key).map(|v| props_json_value(v)) {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn props_json_value(v: &zbus::Variant<'_>) -> Value {
    match v {
        zbus::Variant::Str(s) => json!(s.as_str()),
        zbus::Variant::Bool(b) => json!(b),
        zbus::Variant::U8(n) => json!(n),
        zbus::Variant::U16(n) => json!(n),
        zbus::Variant::U32(n) => json!(n),
        zbus::Variant::U64(n) => json!(n),
        zbus::Variant::I16(n) => json!(n),
        zbus::Variant::I32(n) => json!(n),
        zbus::Variant::I64(n) => json!(n),
        zbus::Variant::F64(n) => json!(n),
        zbus::Variant::ObjectPath(p) => json!(p.as_str()),
        zbus::Variant::Array(a) => Value::Array(a.iter().map(props_json_value).collect()),
        other => json!(other.to_string()),
    }
}

fn props_json(props: &HashMap<String, OwnedVariant>) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in props {
        m.insert(k.clone(), props_json_value(v));
    }
    Value::Object(m)
}

/// A table cell: one line, no control characters (a daemon reply could carry
/// terminal escape sequences), at most `MAX_CELL` characters.
fn cell_text(cell: &str) -> String {
    const MAX_CELL: usize = 80;
    let mut out: String = cell
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .take(MAX_CELL + 1)
        .collect();
    if out.chars().count() > MAX_CELL {
        out = out.chars().take(MAX_CELL - 1).collect();
        out.push('…');
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| cell_text(c)).collect())
        .collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Start a text polkit agent for this process when run from a terminal, so
/// polkit can ask for a password (as systemctl does).
fn spawn_tty_agent() -> Option<std::process::Child> {
    use std::io::IsTerminal;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    if !std::io::stdin().is_terminal() || !std::path::Path::new("/usr/bin/pkttyagent").exists() {
        return None;
    }
    let mut fds = [0; 2];
    // SAFETY: plain pipe creation.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both fds were just created and are owned here.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    let wfd = write.as_raw_fd();
    let mut cmd = std::process::Command::new("/usr/bin/pkttyagent");
    cmd.args([
        "--process",
        &std::process::id().to_string(),
        "--notify-fd",
        &wfd.to_string(),
        "--fallback",
    ]);
    // SAFETY: only async-signal-safe fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(wfd, libc::F_GETFD);
            libc::fcntl(wfd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let child = cmd.spawn().ok()?;
    drop(write);
    // The agent closes the fd once it is registered.
    let mut buf = [0u8; 1];
    let _ = std::io::Read::read(&mut &read, &mut buf);
    Some(child)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Cmd::ConvertLegacy { spec } = &cli.cmd {
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
        return Ok(());
    }
    let conn = if cli.session {
        Connection::session().await
    } else {
        Connection::system().await
    }
    .map_err(|e| Failure {
        code: 69,
        message: format!("cannot connect to the D-Bus bus: {e}"),
    })?;
    let flags = if cli.no_ask_password {
        MethodFlags::empty()
    } else {
        MethodFlags::ALLOW_INTERACTIVE_AUTH
    };
    let c = Client { conn, flags };
    let json_out = cli.json;
    let simple = |vm: &String, method: &'static str, done: &'static str| (vm.clone(), method, done);
    let action = match &cli.cmd {
        Cmd::List => {
            let vms = c.all_vms().await?;
            if json_out {
                let v: Vec<Value> = vms.iter().map(props_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
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
            }
            return Ok(());
        }
        Cmd::Show { vm } => {
            let path = c.lookup(vm).await?;
            let doc: String = c.call(&path, VM, "Describe", &()).await?;
            let doc: Value = serde_json::from_str(&doc).map_err(|e| Failure {
                code: 1,
                message: format!("vapord sent invalid JSON: {e}"),
            })?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print_show(&doc, &path);
            }
            return Ok(());
        }
        Cmd::Start { vm } => simple(vm, "Start", "started"),
        Cmd::Shutdown { vm } => simple(vm, "Shutdown", "asked to shut down"),
        Cmd::Reboot { vm } => simple(vm, "Reboot", "asked to reboot"),
        Cmd::ForceStop { vm } => simple(vm, "ForceStop", "stopped"),
        Cmd::Pause { vm } => simple(vm, "Pause", "paused"),
        Cmd::Resume { vm } => simple(vm, "Resume", "resumed"),
        Cmd::Reset { vm } => simple(vm, "Reset", "reset"),
        Cmd::Autostart { vm, state } => {
            let path = c.lookup(vm).await?;
            let on = state == "on";
            c.call::<_, ()>(&path, VM, "SetAutostart", &(on,)).await?;
            if !json_out {
                println!("{vm}: autostart {state}");
            }
            return Ok(());
        }
        Cmd::Create { spec, dry_run } => {
            let text = read_input(spec)?;
            if *dry_run {
                let (resolved, xml): (String, String) = c
                    .call(ROOT, MANAGER, "PlanVirtualMachine", &(text.as_str(),))
                    .await?;
                if json_out {
                    let resolved: Value = serde_json::from_str(&resolved).unwrap_or(Value::Null);
                    println!("{}", json!({"resolved": resolved, "domain_xml": xml}));
                } else {
                    println!("# resolved spec\n{resolved}\n\n# domain XML\n{xml}");
                }
                return Ok(());
            }
            let bar = follow_jobs(&c.conn).await;
            let result: Result<OwnedObjectPath, Failure> = c
                .call(ROOT, MANAGER, "CreateVirtualMachine", &(text.as_str(),))
                .await;
            if let Some(b) = bar {
                b.abort();
                eprintln!();
            }
            let path = result?;
            if json_out {
                println!("{}", json!({"created": path.as_str()}));
            } else {
                println!("created {}", path.as_str());
            }
            return Ok(());
        }
        Cmd::Template(t) => {
            match t {
                TemplateCmd::List => {
                    let list: Vec<(String, String, String)> =
                        c.call(ROOT, MANAGER, "ListTemplates", &()).await?;
                    if json_out {
                        let v: Vec<Value> = list
                            .iter()
                            .map(|(n, s, d)| json!({"name": n, "source": s, "description": d}))
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        let mut rows =
                            vec![vec!["NAME".into(), "SOURCE".into(), "DESCRIPTION".into()]];
                        rows.extend(list.into_iter().map(|(n, s, d)| vec![n, s, d]));
                        print!("{}", table(&rows));
                    }
                }
                TemplateCmd::Show { name } => {
                    let doc: String = c
                        .call(ROOT, MANAGER, "GetTemplate", &(name.as_str(),))
                        .await?;
                    let v: Value = serde_json::from_str(&doc).unwrap_or(Value::String(doc));
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                TemplateCmd::Save {
                    name,
                    spec,
                    description,
                } => {
                    let text = read_input(spec)?;
                    c.call::<_, ()>(
                        ROOT,
                        MANAGER,
                        "SaveTemplate",
                        &(name.as_str(), description.as_str(), text.as_str()),
                    )
                    .await?;
                    println!("template {name} saved");
                }
                TemplateCmd::Delete { name } => {
                    c.call::<_, ()>(ROOT, MANAGER, "DeleteTemplate", &(name.as_str(),))
                        .await?;
                    println!("template {name} deleted");
                }
            }
            return Ok(());
        }
        Cmd::ConvertLegacy { .. } => unreachable!("handled before connecting"),
        Cmd::Pci(p) => return pci_command(&c, p, json_out).await,
        Cmd::AttachPci {
            vm,
            address,
            guest_address,
            rom_file,
            force,
        } => {
            let path = c.lookup(vm).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            if let Some(g) = guest_address {
                opts.insert("guest_address", g.as_str().into());
            }
            if let Some(r) = rom_file {
                opts.insert("rom_file", r.as_str().into());
            }
            if *force {
                opts.insert("force", true.into());
            }
            c.call::<_, ()>(&path, VM, "AttachPciDevice", &(address.as_str(), opts))
                .await?;
            println!("{vm}: {address} attached");
            return Ok(());
        }
        Cmd::DetachPci { vm, address } => {
            let path = c.lookup(vm).await?;
            let opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            c.call::<_, ()>(&path, VM, "DetachPciDevice", &(address.as_str(), opts))
                .await?;
            println!("{vm}: {address} detached");
            return Ok(());
        }
        Cmd::Delete {
            vm,
            remove_storage,
            remove_foreign_storage,
            force,
        } => {
            let path = c.lookup(vm).await?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            opts.insert("remove_storage", (*remove_storage).into());
            if *remove_foreign_storage {
                opts.insert("remove_foreign_storage", true.into());
            }
            opts.insert("force", (*force).into());
            let (removed, kept): (Vec<String>, Vec<(String, String)>) =
                c.call(&path, VM, "Delete", &(opts,)).await?;
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
            return Ok(());
        }
    };
    let (vm, method, done) = action;
    let path = c.lookup(&vm).await?;
    c.call::<_, ()>(&path, VM, method, &()).await?;
    if json_out {
        println!("{}", json!({"vm": vm, "done": method}));
    } else {
        println!("{vm}: {done}");
    }
    Ok(())
}

async fn pci_command(c: &Client, cmd: &PciCmd, json_out: bool) -> Result<(), Failure> {
    match cmd {
        PciCmd::List => {
            type Managed = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedVariant>>>;
            let p = c.proxy(ROOT, "org.freedesktop.DBus.ObjectManager").await?;
            let objs: Managed = p.call("GetManagedObjects", &()).await?;
            let mut devs: Vec<HashMap<String, OwnedVariant>> = objs
                .into_values()
                .filter_map(|mut i| i.remove(PCI))
                .collect();
            devs.sort_by_key(|d| prop_str(d, "Address"));
            if json_out {
                let v: Vec<Value> = devs.iter().map(props_json).collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
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
            for d in &devs {
                let group = prop_str(d, "IommuGroup");
                let reasons = props_json(d)["HostCriticalReasons"].clone();
                let reasons = reasons
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                let assigned = props_json(d)["AssignedToNames"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                rows.push(vec![
                    prop_str(d, "Address"),
                    format!(
                        "{:04x}:{:04x}",
                        props_json(d)["VendorId"].as_u64().unwrap_or(0),
                        props_json(d)["DeviceId"].as_u64().unwrap_or(0)
                    ),
                    prop_str(d, "ClassName"),
                    Some(prop_str(d, "Driver"))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".into()),
                    if group == "-1" { "-".into() } else { group },
                    if assigned.is_empty() {
                        "-".into()
                    } else {
                        assigned
                    },
                    if reasons.is_empty() {
                        "-".into()
                    } else {
                        reasons
                    },
                ]);
            }
            print!("{}", table(&rows));
        }
        PciCmd::Show { address } => {
            let path = pci_path(address)?;
            let p = c.proxy(&path, "org.freedesktop.DBus.Properties").await?;
            let props: HashMap<String, OwnedVariant> = p.call("GetAll", &(PCI,)).await?;
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
            let path = pci_path(address)?;
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
            let problems: Vec<(String, String)> = c
                .call(&path, PCI, "CheckAssignment", &(vm.as_str(), opts))
                .await?;
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
            let path = pci_path(address)?;
            let mut opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
            opts.insert("group", (*group).into());
            opts.insert("persistent", (*persistent).into());
            let moved: Vec<(String, String)> = c.call(&path, PCI, "BindToVfio", &(opts,)).await?;
            for (a, prev) in moved {
                println!(
                    "{a}: vfio-pci (was {})",
                    if prev.is_empty() { "unbound" } else { &prev }
                );
            }
        }
        PciCmd::Restore { address } => {
            let path = pci_path(address)?;
            let driver: String = c.call(&path, PCI, "RestoreDriver", &()).await?;
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent = if cli.no_ask_password || cli.session {
        None
    } else {
        spawn_tty_agent()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vaporctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    if let Some(mut a) = agent {
        let _ = a.kill();
        let _ = a.wait();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vaporctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_take_any_reply_without_panicking() {
        let long = "d".repeat(200_000);
        let rows = vec![
            vec!["NAME".to_string(), "DESCRIPTION".to_string()],
            vec!["t1".to_string(), long],
            vec!["t2".to_string()],
            vec![
                "t3".to_string(),
                "line\nbreak \u{1b}[31mred\u{fffe}".to_string(),
            ],
        ];
        let out = table(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[1].chars().count() <= 4 + 2 + 80);
        assert!(lines[1].ends_with('…'));
        assert!(!out.contains('\u{1b}'));
        assert!(lines[3].starts_with("t3    line break"), "{}", lines[3]);
    }
}
