//! `load`: many concurrent clients making mixed calls, to watch vapord's
//! memory and its answers under load. Not a test: it asserts no timing; it
//! prints vapord's resident memory before and after each round, how long
//! rounds took, and every error name it got (with counts).
//!
//! Run it as the kind of caller to measure (a member of group `vapor` goes
//! through polkit on every call; root skips polkit):
//!
//! ```sh
//! cargo build --release --benches
//! runuser -u vapor-alice -- target/release/deps/load-* --clients 64 --calls 300 --rounds 3
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zbus::{Connection, OwnedObjectPath};

const BUS: &str = "org.vapor.Virtualization";
const ROOT: &str = "/org/vapor/Virtualization";
const MANAGER: &str = "org.vapor.Virtualization.Manager";
const VM: &str = "org.vapor.Virtualization.VirtualMachine";

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// vapord's resident memory in KiB, from /proc.
async fn vapord_rss(c: &Connection) -> Res<u64> {
    let dbus = zbus::fdo::DBusProxy::new(c).await?;
    let pid = dbus.get_connection_unix_process_id(BUS.try_into()?).await?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kib)
}

async fn one_call(
    c: &Connection,
    i: usize,
    only: Option<usize>,
    vms: &[OwnedObjectPath],
) -> Result<(), String> {
    let vm = &vms[i % vms.len().max(1)];
    let r = match only.unwrap_or(i % 8) {
        0 => c
            .call_method(Some(BUS), ROOT, Some(MANAGER), "ListVirtualMachines", &())
            .await
            .map(drop),
        1 => c
            .call_method(
                Some(BUS),
                ROOT,
                Some("org.freedesktop.DBus.ObjectManager"),
                "GetManagedObjects",
                &(),
            )
            .await
            .map(drop),
        2 => c
            .call_method(
                Some(BUS),
                vm.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &(VM,),
            )
            .await
            .map(drop),
        3 => c
            .call_method(Some(BUS), vm.as_str(), Some(VM), "Describe", &())
            .await
            .map(drop),
        4 => c
            .call_method(Some(BUS), ROOT, Some(MANAGER), "ListTemplates", &())
            .await
            .map(drop),
        5 => c
            .call_method(
                Some(BUS),
                ROOT,
                Some(MANAGER),
                "PlanVirtualMachine",
                &(r#"{"name":"load-test","memory":8}"#,),
            )
            .await
            .map(drop),
        6 => c
            .call_method(
                Some(BUS),
                ROOT,
                Some(MANAGER),
                "LookupVirtualMachine",
                &("no-such-vm",),
            )
            .await
            .map(drop),
        _ => c
            .call_method(Some(BUS), ROOT, Some(MANAGER), "GetTemplate", &("none",))
            .await
            .map(drop),
    };
    r.map_err(|e| match e {
        // Unexpected kinds keep their message, to say what happened.
        zbus::Error::MethodError(name, msg, _)
            if name.as_str().ends_with(".Unavailable") || name.as_str().ends_with(".Failed") =>
        {
            format!("{name}: {}", msg.unwrap_or_default())
        }
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        zbus::Error::FDO(f) => {
            use zbus::DBusError;
            f.name().to_string()
        }
        other => other.to_string(),
    })
}

#[tokio::main]
async fn main() -> Res<()> {
    let clients: usize = arg("--clients", 64);
    let calls: usize = arg("--calls", 300);
    let rounds: usize = arg("--rounds", 3);
    // One kind of call only (0-7, see one_call), to see what costs memory.
    let only: Option<usize> = Some(arg("--only", usize::MAX)).filter(|k| *k < 8);
    let admin = Connection::system().await?;
    let list = admin
        .call_method(Some(BUS), ROOT, Some(MANAGER), "ListVirtualMachines", &())
        .await?;
    let vms: Arc<Vec<OwnedObjectPath>> = Arc::new(list.body().deserialize()?);
    eprintln!(
        "{} VMs; {clients} clients x {calls} calls x {rounds} rounds",
        vms.len()
    );
    println!("round  rss_before_mib  rss_after_mib  seconds  errors");
    let start_rss = vapord_rss(&admin).await?;
    for round in 1..=rounds {
        let before = vapord_rss(&admin).await?;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let vms = vms.clone();
            tasks.push(tokio::spawn(async move {
                let mut errors: HashMap<String, usize> = HashMap::new();
                let c = match Connection::system().await {
                    Ok(c) => c,
                    Err(e) => {
                        errors.insert(format!("connect: {e}"), 1);
                        return errors;
                    }
                };
                for i in 0..calls {
                    let call =
                        tokio::time::timeout(Duration::from_secs(60), one_call(&c, i, only, &vms));
                    match call.await {
                        Ok(Ok(())) => {}
                        Ok(Err(name)) => *errors.entry(name).or_default() += 1,
                        Err(_) => *errors.entry("timeout (60 s)".into()).or_default() += 1,
                    }
                }
                errors
            }));
        }
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for t in tasks {
            for (k, v) in t.await? {
                *errors.entry(k).or_default() += v;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let after = vapord_rss(&admin).await?;
        println!(
            "{round:>5}  {:>14.1}  {:>13.1}  {secs:>7.1}  {errors:?}",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = vapord_rss(&admin).await?;
    println!(
        "rss: {:.1} MiB at start, {:.1} MiB 5 s after the last round",
        start_rss as f64 / 1024.0,
        settled as f64 / 1024.0
    );
    Ok(())
}
