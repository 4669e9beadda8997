//! Enumeration benchmark: vapord against libvirt-dbus on the same libvirtd.
//!
//! Method. N shut-off persistent domains `vapor-bench-NNNN` (64 MiB, 1 vCPU, no disks) and
//! one running domain `vapor-bench-live` are defined on `qemu:///system` with the virt crate.
//! Then, over the system bus and through one zbus connection, we time:
//!   a. enumerating every VM with all its properties — libvirt-dbus: `ListDomains(0)` and one
//!      `Properties.GetAll` per domain, sequentially (what a simple client does) and pipelined
//!      (up to `--window` calls in flight); vapord: one `ObjectManager.GetManagedObjects`;
//!   b. reading one VM's state — libvirt-dbus has no State property, so both of its ways are
//!      timed: `Domain.GetState(0)` and `Properties.Get(Domain, Active)`; vapord:
//!      `Properties.Get(VirtualMachine, State)`;
//!   c. one lifecycle round trip — Suspend+Resume (libvirt-dbus) / Pause+Resume (vapord);
//!   d. changes (`--changes`, benches/enumerate/changes.rs): an Update of vCPUs and memory of a
//!      shut-off VM (libvirt-dbus: GetXMLDesc, edit, DomainDefineXML) and a live NIC attach and
//!      detach (libvirt-dbus: AttachDevice / DetachDevice) on a VM running a guest kernel.
//! For context it also times libvirt's own bulk call, `virConnectGetAllDomainStats`.
//!
//! Fairness. Both services sit on the same libvirtd and the same system bus and are called by
//! the same client library over the same connection; enumeration rounds interleave the
//! services so machine noise hits both alike; a warm-up round (and a warm-up call before the
//! single reads) is discarded; figures are medians. Nothing here asserts a timing: this is a
//! program that prints numbers. Run: `cargo bench --bench enumerate -- --domains 1000`
//! (see benches/README.md).

use clap::Parser;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use virt::{connect::Connect, sys};
use zbus::{Connection, DynamicType, OwnedObjectPath, OwnedVariant};

#[path = "enumerate/changes.rs"]
mod changes;
#[path = "enumerate/volumes.rs"]
mod volumes;

const LVD: &str = "org.libvirt";
const LVD_BIN: &str = "/usr/sbin/libvirt-dbus";
const LVD_ROOT: &str = "/org/libvirt/QEMU";
const LVD_DOM: &str = "org.libvirt.Domain";
const LVD_CONNECT: &str = "org.libvirt.Connect";
const VAPOR: &str = "org.vapor.Virtualization";
const VAPOR_ROOT: &str = "/org/vapor/Virtualization";
const MANAGER: &str = "org.vapor.Virtualization.Manager";
const VM_IFACE: &str = "org.vapor.Virtualization.VirtualMachine";
const PROPS: &str = "org.freedesktop.DBus.Properties";
const OM: &str = "org.freedesktop.DBus.ObjectManager";
const LIVE: &str = "vapor-bench-live";

#[derive(Parser)]
#[command(about = "Enumerate VMs through libvirt-dbus and vapord and compare")]
struct Args {
    /// Number of shut-off domains to define (vapor-bench-0000 …).
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// Measured enumeration rounds (one warm-up round comes on top and is discarded).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Number of single-property reads per service.
    #[arg(long, default_value_t = 200)]
    reads: usize,
    /// Number of Suspend/Resume pairs per service.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// GetAll calls in flight in the pipelined variant (the system bus allows 128 pending
    /// replies per connection).
    #[arg(long, default_value_t = 64)]
    window: usize,
    #[arg(long, default_value = "qemu:///system")]
    uri: String,
    /// Number of volumes in the pool `vapor-bench-vols` for the volume table (0: skip it).
    #[arg(long, default_value_t = 1000)]
    volumes: usize,
    /// Rounds of the change table (Update, NIC attach/detach); 0: skip it.
    #[arg(long, default_value_t = 9)]
    changes: usize,
    /// Where the guest kernel and initrd (`vmlinuz`, `initrd.img`) for the NIC rows are.
    #[arg(long, default_value = "/var/cache/vapor-tests/guest/current")]
    guest_dir: std::path::PathBuf,
    /// Undefine the benchmark domains at the end.
    #[arg(long)]
    cleanup: bool,
    /// Only undefine the benchmark domains; measure nothing.
    #[arg(long)]
    cleanup_only: bool,
    /// Also print the results as one line of JSON (the last line of stdout).
    #[arg(long)]
    json: bool,
    /// Exit non-zero when vapord is absent or any of its figures could not be taken.
    #[arg(long)]
    require_vapord: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;
/// A measured median, or why there is none.
type M = Res<Duration>;
type Props = HashMap<String, OwnedVariant>;
/// (destination, path, interface, member) of a method call.
type Target<'a> = (&'a str, &'a str, &'a str, &'a str);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------- libvirt (virt crate)

fn domain_type() -> String {
    match std::fs::read_to_string("/run/vapor-test-domain-type") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ if std::path::Path::new("/dev/kvm").exists() => "kvm".into(),
        _ => "qemu".into(),
    }
}

fn is_bench_name(name: &str) -> bool {
    let digits = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    name == LIVE || name.strip_prefix("vapor-bench-").is_some_and(digits)
}

/// Defines the missing bench domains and makes sure `vapor-bench-live` is running.
fn setup_domains(conn: &Connect, n: usize) -> Res<()> {
    let ty = domain_type();
    let all = conn.list_all_domains(0)?;
    let existing: HashSet<String> = all.iter().filter_map(|d| d.name().ok()).collect();
    let (t, mut defined) = (Instant::now(), 0);
    let names = (0..n)
        .map(|i| format!("vapor-bench-{i:04}"))
        .chain([LIVE.into()]);
    for name in names.filter(|name| !existing.contains(name)) {
        conn.define_domain_xml(&format!(
            "<domain type='{ty}'><name>{name}</name><memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>\
             <devices><memballoon model='none'/></devices></domain>"
        ))?;
        defined += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("defined {defined} domains (type {ty}) in {secs:.1} s");
    let live = conn.lookup_domain_by_name(LIVE)?;
    if !live.is_active()? {
        live.create()?;
    }
    let _ = live.resume(); // in case an interrupted run left it paused
    Ok(())
}

fn stop_live(conn: &Connect) {
    if let Ok(d) = conn.lookup_domain_by_name(LIVE) {
        if d.is_active().unwrap_or(false) {
            let _ = d.destroy();
        }
    }
}

fn cleanup_domains(conn: &Connect) -> Res<()> {
    let mut n = 0;
    for d in conn.list_all_domains(0)? {
        if d.name().is_ok_and(|name| is_bench_name(&name)) {
            if d.is_active()? {
                d.destroy()?;
            }
            d.undefine()?;
            n += 1;
        }
    }
    eprintln!("undefined {n} benchmark domains");
    Ok(())
}

/// libvirt's bulk call over all domains with all stats groups. Called through virt-sys
/// because the safe `Connect::all_domain_stats` never frees the records it returns.
fn bulk_stats(conn: &Connect) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is open; the records are freed once with the matching libvirt call.
    let n = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), 0, &mut recs, 0) };
    if n < 0 {
        return Err(virt::error::Error::last_error().into());
    }
    unsafe { sys::virDomainStatsRecordListFree(recs) };
    Ok((t.elapsed(), n as usize))
}

// ---------------------------------------------------------------- D-Bus

async fn call<B>(c: &Connection, t: Target<'_>, body: &B) -> Res<zbus::Message>
where
    B: serde::Serialize + DynamicType,
{
    Ok(c.call_method(Some(t.0), t.1, Some(t.2), t.3, body).await?)
}

fn bus_daemon(member: &str) -> Target<'_> {
    let name = "org.freedesktop.DBus";
    (name, "/org/freedesktop/DBus", name, member)
}

async fn has_owner(c: &Connection, name: &str) -> Res<bool> {
    let reply = call(c, bus_daemon("NameHasOwner"), &(name,)).await?;
    Ok(reply.body().deserialize()?)
}

/// Starts libvirt-dbus in its own account if nobody owns `org.libvirt`; returns the child we
/// started, so that it can be stopped at the end.
async fn ensure_libvirt_dbus(c: &Connection) -> Res<Option<Child>> {
    if has_owner(c, LVD).await? {
        return Ok(None);
    }
    eprintln!("starting /usr/sbin/libvirt-dbus --system as user libvirtdbus");
    let mut child = Command::new("runuser")
        .args(["-u", "libvirtdbus", "--", LVD_BIN, "--system"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()?;
    for _ in 0..100 {
        if has_owner(c, LVD).await? {
            return Ok(Some(child));
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("libvirt-dbus exited: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("libvirt-dbus did not take org.libvirt within 10 s".into())
}

/// Stops the libvirt-dbus we started: SIGTERM to the process that owns the name (runuser's
/// child; a signal to runuser itself might not reach it), then reaps runuser.
async fn stop_libvirt_dbus(c: &Connection, mut child: Child) {
    if let Ok(r) = call(c, bus_daemon("GetConnectionUnixProcessID"), &(LVD,)).await {
        if let Ok(pid) = r.body().deserialize::<u32>() {
            // SAFETY: kill(2) on the pid the bus reports for the process we started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let _ = child.wait();
}

async fn lvd_list(c: &Connection) -> Res<Vec<OwnedObjectPath>> {
    let t = (LVD, LVD_ROOT, LVD_CONNECT, "ListDomains");
    Ok(call(c, t, &(0u32,)).await?.body().deserialize()?)
}

async fn lvd_get_all(c: &Connection, path: &OwnedObjectPath) -> Res<Props> {
    let t = (LVD, path.as_str(), PROPS, "GetAll");
    Ok(call(c, t, &(LVD_DOM,)).await?.body().deserialize()?)
}

/// ListDomains, then GetAll on each domain, one after the other.
async fn lvd_enumerate_seq(c: &Connection) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let mut n = 0;
    for p in lvd_list(c).await? {
        n += usize::from(!lvd_get_all(c, &p).await?.is_empty());
    }
    Ok((t.elapsed(), n))
}

/// ListDomains, then GetAll on each domain with `window` calls in flight.
async fn lvd_enumerate_pipelined(c: &Connection, window: usize) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let paths = lvd_list(c).await?;
    let all: Vec<Props> = futures_util::stream::iter(paths.iter().map(|p| lvd_get_all(c, p)))
        .buffer_unordered(window)
        .try_collect()
        .await?;
    Ok((t.elapsed(), all.iter().filter(|p| !p.is_empty()).count()))
}

/// One GetManagedObjects; counts the objects that carry the VirtualMachine interface.
async fn vapor_enumerate(c: &Connection) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let reply = call(c, (VAPOR, VAPOR_ROOT, OM, "GetManagedObjects"), &()).await?;
    if std::env::var("BENCH_SPLIT").is_ok() {
        eprintln!(
            "call {:.2} ms, {} bytes",
            t.elapsed().as_secs_f64() * 1e3,
            reply.data().len()
        );
    }
    let objs: HashMap<OwnedObjectPath, HashMap<String, Props>> = reply.body().deserialize()?;
    let n = objs.values().filter(|i| i.contains_key(VM_IFACE)).count();
    Ok((t.elapsed(), n))
}

/// One Manager.EnumerateObjects(VirtualMachine): the same properties as rows
/// of a struct array (no names or variants per value); decoded whole.
async fn vapor_enumerate_compact(c: &Connection) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let reply = call(
        c,
        (VAPOR, VAPOR_ROOT, MANAGER, "EnumerateObjects"),
        &(VM_IFACE,),
    )
    .await?;
    let (names, rows): (Vec<String>, OwnedVariant) = reply.body().deserialize()?;
    let rows = zbus::wire::Array::try_from(rows.try_clone()?)?;
    let n = if names.is_empty() { 0 } else { rows.len() };
    Ok((t.elapsed(), n))
}

/// Median time of `count` identical calls, after one discarded warm-up call.
async fn per_call<B>(c: &Connection, count: usize, t: Target<'_>, body: &B) -> M
where
    B: serde::Serialize + DynamicType,
{
    let mut v = Vec::with_capacity(count);
    for i in 0..=count {
        let start = Instant::now();
        call(c, t, body).await?;
        if i > 0 {
            v.push(start.elapsed());
        }
    }
    Ok(median(v))
}

/// Median time of `pairs` (pause, resume) call pairs; `svc` names the pause call.
async fn lifecycle(c: &Connection, pairs: usize, svc: Target<'_>, resume: &str) -> M {
    let mut v = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let t = Instant::now();
        call(c, svc, &()).await?;
        call(c, (svc.0, svc.1, svc.2, resume), &()).await?;
        v.push(t.elapsed());
    }
    Ok(median(v))
}

/// The object path a lookup method returns for `LIVE`.
async fn lookup(c: &Connection, t: Target<'_>) -> Res<String> {
    let path: OwnedObjectPath = call(c, t, &(LIVE,)).await?.body().deserialize()?;
    Ok(path.to_string())
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enumerate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Enumeration medians: libvirt-dbus sequential and pipelined, vapord, bulk stats; and how
/// many VMs each saw (libvirt-dbus, libvirt-dbus pipelined, vapord, bulk stats).
struct Enumeration {
    seq: Duration,
    pip: Duration,
    vapor: M,
    compact: M,
    base: Duration,
    seen: [usize; 4],
}

/// a. Enumeration; the services take turns within each round; round 0 is a warm-up.
/// `vapor_err` is set when vapord is not to be asked.
async fn enumeration(
    a: &Args,
    bus: &Connection,
    conn: &Connect,
    mut vapor_err: Option<Box<dyn std::error::Error>>,
) -> Res<Enumeration> {
    let (mut seq, mut pip, mut vap, mut base) = (vec![], vec![], vec![], vec![]);
    let mut compact = vec![];
    let mut seen = [0; 4];
    for round in 0..=a.rounds {
        let s = lvd_enumerate_seq(bus).await?;
        let p = lvd_enumerate_pipelined(bus, a.window).await?;
        let (mut v, mut vc) = (None, None);
        if vapor_err.is_none() {
            v = vapor_enumerate(bus)
                .await
                .map_err(|e| vapor_err = Some(e))
                .ok();
        }
        if vapor_err.is_none() {
            vc = vapor_enumerate_compact(bus)
                .await
                .map_err(|e| vapor_err = Some(e))
                .ok();
        }
        let b = bulk_stats(conn)?;
        seen = [s.1, p.1, v.map_or(0, |v| v.1), b.1];
        let vs = v.map_or("n/a".into(), |v| format!("{:.1} ms", ms(v.0)));
        let vcs = vc.map_or("n/a".into(), |v| format!("{:.1} ms", ms(v.0)));
        let tag = if round == 0 { " (warm-up)" } else { "" };
        let (s_ms, p_ms, b_ms) = (ms(s.0), ms(p.0), ms(b.0));
        eprintln!(
            "round {round}{tag}: libvirt-dbus {s_ms:.1} ms, pipelined {p_ms:.1} ms; \
             vapord {vs} (compact {vcs}); bulk stats {b_ms:.1} ms"
        );
        if round > 0 {
            seq.push(s.0);
            pip.push(p.0);
            base.push(b.0);
            vap.extend(v.map(|v| v.0));
            compact.extend(vc.map(|v| v.0));
        }
    }
    let compact: M = match &vapor_err {
        Some(e) => Err(e.to_string().into()),
        None => Ok(median(compact)),
    };
    let vapor = vapor_err.map_or_else(|| Ok(median(vap)), Err);
    let (seq, pip, base) = (median(seq), median(pip), median(base));
    Ok(Enumeration {
        seq,
        pip,
        vapor,
        compact,
        base,
        seen,
    })
}

/// b. and c. against libvirt-dbus: GetState, Get(Active), Suspend+Resume on `LIVE`.
async fn lvd_single(a: &Args, c: &Connection) -> Res<[M; 3]> {
    let live = lookup(c, (LVD, LVD_ROOT, LVD_CONNECT, "DomainLookupByName")).await?;
    let state = (LVD, &*live, LVD_DOM, "GetState");
    let get = (LVD, &*live, PROPS, "Get");
    Ok([
        per_call(c, a.reads, state, &(0u32,)).await,
        per_call(c, a.reads, get, &(LVD_DOM, "Active")).await,
        lifecycle(c, a.pairs, (LVD, &live, LVD_DOM, "Suspend"), "Resume").await,
    ])
}

/// b. and c. against vapord: Get(State) and Pause+Resume on `LIVE`.
async fn vapor_single(a: &Args, c: &Connection) -> [M; 2] {
    let path = match lookup(c, (VAPOR, VAPOR_ROOT, MANAGER, "LookupVirtualMachine")).await {
        Ok(path) => path,
        Err(e) => return [Err(e.to_string().into()), Err(e)],
    };
    let get = (VAPOR, &*path, PROPS, "Get");
    let pause = (VAPOR, &*path, VM_IFACE, "Pause");
    [
        per_call(c, a.reads, get, &(VM_IFACE, "State")).await,
        lifecycle(c, a.pairs, pause, "Resume").await,
    ]
}

const OPS: [&str; 7] = [
    "enumerate all VMs + properties, sequential",
    "enumerate all VMs + properties, pipelined",
    "  same, vapord EnumerateObjects, sequential",
    "  same, vapord EnumerateObjects, pipelined",
    "read one VM's state: GetState / Get State",
    "read one property: Get Active / Get State",
    "lifecycle: Suspend+Resume / Pause+Resume",
];

fn cell(m: &M) -> String {
    m.as_ref()
        .map_or("n/a".into(), |d| format!("{:.3} ms", ms(*d)))
}

// libvirt calls block; they run on main's own thread, while zbus's I/O runs on the workers.
async fn run(a: Args) -> Res<ExitCode> {
    if a.rounds.min(a.reads).min(a.pairs).min(a.window) == 0 {
        return Err("--rounds, --reads, --pairs and --window must be at least 1".into());
    }
    virt::error::clear_error_callback();
    let conn = Connect::open(Some(&a.uri))?;
    if a.cleanup_only {
        cleanup_domains(&conn)?;
        volumes::cleanup(&conn)?;
        changes::cleanup(&conn)?;
        return Ok(ExitCode::SUCCESS);
    }
    setup_domains(&conn, a.domains)?;
    // The volume pool is active only while its own table is measured, so
    // the VM enumeration carries VMs (and the host's few other objects).
    volumes::park(&conn);
    let bus = Connection::system().await?;
    let started = ensure_libvirt_dbus(&bus).await?;
    let vapor_up = has_owner(&bus, VAPOR).await?;
    let absent = || -> M { Err(format!("vapord is not on the bus ({VAPOR} has no owner)").into()) };
    if !vapor_up {
        eprintln!("NOTE: vapord is not on the system bus; its figures are n/a");
    }

    let e = enumeration(&a, &bus, &conn, (!vapor_up).then(|| absent().unwrap_err())).await?;
    let [lvd_state, lvd_active, lvd_life] = lvd_single(&a, &bus).await?;
    let [vapor_get, vapor_life] = match vapor_up {
        true => vapor_single(&a, &bus).await,
        false => [absent(), absent()],
    };

    let vols = match a.volumes {
        0 => None,
        n => {
            volumes::setup(&conn, n)?;
            let v = volumes::measure(&bus, a.rounds, n, vapor_up).await?;
            volumes::park(&conn);
            Some(v)
        }
    };
    let change_rows = match a.changes {
        0 => vec![],
        n => changes::measure(&bus, &conn, n, vapor_up, &a.guest_dir).await,
    };

    stop_live(&conn);
    if let Some(child) = started {
        stop_libvirt_dbus(&bus, child).await;
    }
    if a.cleanup {
        cleanup_domains(&conn)?;
        volumes::cleanup(&conn)?;
        changes::cleanup(&conn)?;
    }

    // Report.
    let vapor_seen = vapor_up.then_some(e.seen[2]);
    let vs = vapor_seen.map_or("n/a".into(), |n| n.to_string());
    let [s0, s1, _, s3] = e.seen;
    println!(
        "VMs seen: libvirt-dbus {s0} (pipelined {s1}), vapord {vs}, bulk stats {s3}; medians of \
         {} rounds (+1 warm-up), {} reads, {} pairs",
        a.rounds, a.reads, a.pairs
    );
    let results: [(M, &M); 7] = [
        (Ok(e.seq), &e.vapor),
        (Ok(e.pip), &e.vapor),
        (Ok(e.seq), &e.compact),
        (Ok(e.pip), &e.compact),
        (lvd_state, &vapor_get),
        (lvd_active, &vapor_get),
        (lvd_life, &vapor_life),
    ];
    let (op, lv, va, ra) = ("operation", "libvirt-dbus", "vapord", "ratio");
    println!("{op:<44} | {lv:>12} | {va:>12} | {ra:>6}");
    println!("{:-<44}-+-{:->12}-+-{:->12}-+-{:->6}", "", "", "", "");
    let (mut json_rows, mut errors) = (vec![], Vec::<String>::new());
    for (op, (lvd, vapor)) in OPS.iter().zip(&results) {
        let ratio = match (lvd, vapor) {
            (Ok(l), Ok(v)) if !v.is_zero() => Some(l.as_secs_f64() / v.as_secs_f64()),
            _ => None,
        };
        let (l, v) = (cell(lvd), cell(vapor));
        let r = ratio.map_or("n/a".into(), |x| format!("{x:.1}x"));
        println!("{op:<44} | {l:>12} | {v:>12} | {r:>6}");
        let le = lvd.as_ref().err().map(|e| e.to_string());
        let ve = vapor.as_ref().err().map(|e| e.to_string());
        for e in le.iter().chain(&ve) {
            if !errors.contains(e) {
                errors.push(e.clone());
            }
        }
        json_rows.push(serde_json::json!({
            "operation": op, "ratio": ratio,
            "libvirt_dbus_ms": lvd.as_ref().ok().map(|d| ms(*d)), "libvirt_dbus_error": le,
            "vapord_ms": vapor.as_ref().ok().map(|d| ms(*d)), "vapord_error": ve,
        }));
    }
    let base = ms(e.base);
    println!("baseline: virConnectGetAllDomainStats, {s3} domains: {base:.3} ms");
    let mut vol_json = serde_json::Value::Null;
    if let Some(v) = &vols {
        let [ls, vs] = v.seen;
        println!();
        println!(
            "volumes seen: libvirt-dbus {ls}, vapord {vs} (in pool {} and any other); same rounds",
            volumes::POOL
        );
        println!("{op:<44} | {lv:>12} | {va:>12} | {ra:>6}");
        println!("{:-<44}-+-{:->12}-+-{:->12}-+-{:->6}", "", "", "", "");
        let ratio = v
            .vapor
            .as_ref()
            .ok()
            .filter(|d| !d.is_zero())
            .map(|d| v.lvd.as_secs_f64() / d.as_secs_f64());
        let vc = v
            .vapor
            .as_ref()
            .map_or("n/a".into(), |d| format!("{:.3} ms", ms(*d)));
        let r = ratio.map_or("n/a".into(), |x| format!("{x:.1}x"));
        let label = "enumerate all volumes + properties";
        println!(
            "{label:<44} | {:>12} | {vc:>12} | {r:>6}",
            format!("{:.3} ms", ms(v.lvd))
        );
        let cc = v
            .compact
            .as_ref()
            .map_or("n/a".into(), |d| format!("{:.3} ms", ms(*d)));
        let cr = v
            .compact
            .as_ref()
            .ok()
            .filter(|d| !d.is_zero())
            .map_or("n/a".into(), |d| {
                format!("{:.1}x", v.lvd.as_secs_f64() / d.as_secs_f64())
            });
        let clabel = "  same, vapord EnumerateObjects";
        println!(
            "{clabel:<44} | {:>12} | {cc:>12} | {cr:>6}",
            format!("{:.3} ms", ms(v.lvd))
        );
        vol_json = serde_json::json!({
            "operation": label, "ratio": ratio, "libvirt_dbus_ms": ms(v.lvd),
            "vapord_ms": v.vapor.as_ref().ok().map(|d| ms(*d)),
            "vapord_enumerate_objects_ms": v.compact.as_ref().ok().map(|d| ms(*d)),
            "volumes_seen": {"libvirt_dbus": ls, "vapord": vs},
        });
    }
    let mut changes_json = serde_json::Value::Null;
    if !change_rows.is_empty() {
        println!();
        let (j, errs) = changes::report(&change_rows, a.changes);
        changes_json = j;
        for e in errs {
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    for e in &errors {
        println!("n/a because: {e}");
    }
    let (vapor_vms, want) = (e.seen[2], a.domains);
    if e.vapor.is_ok() && vapor_vms < want {
        println!("WARNING: vapord exported {vapor_vms} VirtualMachine objects, expected ≥ {want}");
    }
    let vapor_ok = results.iter().all(|r| r.1.is_ok())
        && vapor_vms >= want
        && changes::vapord_ok(&change_rows);
    if a.json {
        let seen = serde_json::json!({"libvirt_dbus": s0, "vapord": vapor_seen, "bulk_stats": s3});
        let j = serde_json::json!({
            "domains": a.domains, "rounds": a.rounds, "reads": a.reads, "pairs": a.pairs,
            "window": a.window, "vapord_on_bus": vapor_up, "bulk_stats_ms": base,
            "vms_seen": seen, "results": json_rows, "volumes": vol_json,
            "change_rounds": a.changes, "changes": changes_json,
        });
        println!("{j}");
    }
    Ok(ExitCode::from(u8::from(a.require_vapord && !vapor_ok)))
}
