//! Changing VMs, vapord against libvirt-dbus (`--changes R` rounds, round 0 a
//! warm-up; every call timed on its own; medians; nothing asserted):
//!
//! 1. Update of vCPUs and memory of the shut-off `vapor-bench-0000`, to
//!    2 vCPUs / 96 MiB and back to 1 / 64 — vapord: one
//!    `VirtualMachine.Update(changes_json, {})`; libvirt-dbus, which has no
//!    such call: what its clients do, `Domain.GetXMLDesc(SECURE|INACTIVE)`,
//!    `<vcpu>`, `<memory>` and `<currentMemory>` replaced in the client, and
//!    `Connect.DomainDefineXML(xml)`, timed together.
//! 2. Live attach, then detach, of a virtio NIC on an isolated network, on a
//!    running guest kernel (nic_guest.rs says why) — vapord: `AttachInterface`
//!    / `DetachInterface` with `live=true, config=false`; libvirt-dbus:
//!    `Domain.AttachDevice` / `DetachDevice` with VIR_DOMAIN_AFFECT_LIVE.
//!    libvirt's detach returns once QEMU removed the device, or after 5 s
//!    without the guest's answer; so a detach is timed until its call
//!    returned *and* the interface is gone from the live XML (read with the
//!    virt crate after the reply, outside the clock unless the interface is
//!    still there) — the same for both services.

use std::path::Path;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use zbus::{Connection, DynamicType, OwnedObjectPath, Variant};

#[path = "nic_guest.rs"]
mod guest;
pub use guest::cleanup;
use guest::{has_nic, nic_xml, AFFECT_LIVE, NET, NIC_VM};

/// The shut-off VM of the Update row (one of the enumeration's domains).
pub const STOPPED_VM: &str = "vapor-bench-0000";
const LVD_MAC: &str = "52:54:00:b7:00:01";
const VAPOR_MAC: &str = "52:54:00:b7:00:02";
/// VIR_DOMAIN_XML_SECURE | VIR_DOMAIN_XML_INACTIVE.
const XML_SECURE_INACTIVE: u32 = 1 | 2;
/// What Update alternates between: (vCPUs, MiB).
const SHAPES: [(u32, u64); 2] = [(2, 96), (1, 64)];
/// How long a detached interface may take to leave the live XML.
const GONE_WITHIN: Duration = Duration::from_secs(30);

use super::{Res, LVD, LVD_CONNECT, LVD_DOM, LVD_ROOT, MANAGER, VAPOR, VAPOR_ROOT, VM_IFACE};
/// A median, or why there is none.
pub type Figure = Result<Duration, String>;
type Options = std::collections::HashMap<&'static str, Variant<'static>>;

/// One line of the table.
pub struct Row {
    pub op: &'static str,
    pub lvd: Figure,
    pub vapor: Figure,
}

impl Row {
    fn new(op: &'static str, lvd: Series, vapor: Series) -> Self {
        Self {
            op,
            lvd: lvd.figure(),
            vapor: vapor.figure(),
        }
    }
}

/// The services, in the order each round calls them.
#[derive(Clone, Copy)]
enum Side {
    Lvd,
    Vapor,
}
const SIDES: [Side; 2] = [Side::Lvd, Side::Vapor];

const OPS: [&str; 3] = [
    "update vcpus+memory of a shut-off VM",
    "attach a NIC, live",
    "detach a NIC, live, until gone",
];

/// One service's series of one operation: the object path it calls, the
/// timings of the measured rounds, or the error that ended the series.
struct Series {
    path: String,
    v: Vec<Duration>,
    err: Option<String>,
}

impl Series {
    fn new(path: Result<String, String>) -> Self {
        let (path, err) = match path {
            Ok(p) => (p, None),
            Err(e) => (String::new(), Some(e)),
        };
        Self {
            path,
            v: vec![],
            err,
        }
    }

    /// The path to call, unless the series has ended.
    fn path(&self) -> Option<String> {
        self.err.is_none().then(|| self.path.clone())
    }

    /// Keeps a timing (when `keep`) or ends the series; returns it for the
    /// progress line.
    fn record(&mut self, r: Res<Duration>, keep: bool) -> String {
        match r {
            Ok(d) => {
                if keep {
                    self.v.push(d);
                }
                format!("{:.1}", d.as_secs_f64() * 1e3)
            }
            Err(e) => {
                self.err = Some(e.to_string());
                "error".into()
            }
        }
    }

    fn figure(self) -> Figure {
        match self.err {
            Some(e) => Err(e),
            None => Ok(median(self.v)),
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn call<B>(c: &Connection, t: (&str, &str, &str, &str), body: &B) -> Res<zbus::Message>
where
    B: serde::Serialize + DynamicType,
{
    Ok(c.call_method(Some(t.0), t.1, Some(t.2), t.3, body).await?)
}

/// libvirt-dbus's path of the domain `name`.
async fn lvd_path(c: &Connection, name: &str) -> Result<String, String> {
    let t = (LVD, LVD_ROOT, LVD_CONNECT, "DomainLookupByName");
    let r = call(c, t, &(name,)).await.map_err(|e| e.to_string())?;
    let p: OwnedObjectPath = r.body().deserialize().map_err(|e| e.to_string())?;
    Ok(p.to_string())
}

/// vapord's path of the VM `name`, waiting up to 10 s for vapord to see it.
async fn vapor_path(c: &Connection, name: &str, vapor_up: bool) -> Result<String, String> {
    if !vapor_up {
        return Err(format!("vapord is not on the bus ({VAPOR} has no owner)"));
    }
    let t = (VAPOR, VAPOR_ROOT, MANAGER, "LookupVirtualMachine");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call(c, t, &(name,)).await {
            Ok(r) => {
                let p: OwnedObjectPath = r.body().deserialize().map_err(|e| e.to_string())?;
                return Ok(p.to_string());
            }
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn path(c: &Connection, side: Side, name: &str, vapor_up: bool) -> Result<String, String> {
    match side {
        Side::Lvd => lvd_path(c, name).await,
        Side::Vapor => vapor_path(c, name, vapor_up).await,
    }
}

// ---------------------------------------------------------------- 1. Update

/// Replaces the first element `<name …>…</name>` of `xml` by `new`.
fn replace_element(xml: &str, name: &str, new: &str) -> Res<String> {
    let (open, close) = (format!("<{name}"), format!("</{name}>"));
    let start = xml
        .match_indices(&open)
        .map(|(i, _)| i)
        .find(|&i| matches!(xml.as_bytes().get(i + open.len()), Some(b' ' | b'>')))
        .ok_or_else(|| format!("domain XML has no <{name}> element"))?;
    let end = xml[start..]
        .find(&close)
        .map(|e| start + e + close.len())
        .ok_or_else(|| format!("domain XML has no </{name}>"))?;
    Ok(format!("{}{new}{}", &xml[..start], &xml[end..]))
}

/// The domain XML with `vcpus` vCPUs and `mib` MiB (maximum and current).
fn with_shape(xml: &str, (vcpus, mib): (u32, u64)) -> Res<String> {
    let kib = mib * 1024;
    let xml = replace_element(
        xml,
        "vcpu",
        &format!("<vcpu placement='static'>{vcpus}</vcpu>"),
    )?;
    let xml = replace_element(
        &xml,
        "memory",
        &format!("<memory unit='KiB'>{kib}</memory>"),
    )?;
    let current = format!("<currentMemory unit='KiB'>{kib}</currentMemory>");
    replace_element(&xml, "currentMemory", &current)
}

/// libvirt-dbus: read the definition, edit it, define it.
async fn lvd_update(c: &Connection, path: &str, shape: (u32, u64)) -> Res<Duration> {
    let t = Instant::now();
    let get = (LVD, path, LVD_DOM, "GetXMLDesc");
    let xml: String = call(c, get, &(XML_SECURE_INACTIVE,))
        .await?
        .body()
        .deserialize()?;
    let xml = with_shape(&xml, shape)?;
    let define = (LVD, LVD_ROOT, LVD_CONNECT, "DomainDefineXML");
    let _: OwnedObjectPath = call(c, define, &(xml.as_str(),))
        .await?
        .body()
        .deserialize()?;
    Ok(t.elapsed())
}

/// vapord: one Update; an empty list of changed fields is an error.
async fn vapor_update(c: &Connection, path: &str, (vcpus, mib): (u32, u64)) -> Res<Duration> {
    let doc = format!(r#"{{"vcpus":{vcpus},"memory":{mib}}}"#);
    let t = Instant::now();
    let update = (VAPOR, path, VM_IFACE, "Update");
    let reply = call(c, update, &(doc.as_str(), Options::new())).await?;
    let (changed, _pending): (Vec<String>, Vec<String>) = reply.body().deserialize()?;
    let d = t.elapsed();
    if changed.is_empty() {
        return Err(format!("vapord's Update({doc}) reported no changed field").into());
    }
    Ok(d)
}

async fn updates(c: &Connection, rounds: usize, vapor_up: bool) -> Row {
    let mut s = [
        Series::new(path(c, Side::Lvd, STOPPED_VM, vapor_up).await),
        Series::new(path(c, Side::Vapor, STOPPED_VM, vapor_up).await),
    ];
    for round in 0..=rounds {
        let mut shown = [vec![], vec![]];
        for (i, side) in SIDES.into_iter().enumerate() {
            for shape in SHAPES {
                if let Some(p) = s[i].path() {
                    let r = match side {
                        Side::Lvd => lvd_update(c, &p, shape).await,
                        Side::Vapor => vapor_update(c, &p, shape).await,
                    };
                    shown[i].push(s[i].record(r, round > 0));
                }
            }
        }
        let [l, v] = shown.map(|x| {
            if x.is_empty() {
                "-".into()
            } else {
                x.join(" / ")
            }
        });
        let tag = if round == 0 { " (warm-up)" } else { "" };
        eprintln!("update round {round}{tag}: libvirt-dbus {l} ms; vapord {v} ms");
    }
    let [l, v] = s;
    Row::new(OPS[0], l, v)
}

// ---------------------------------------------------------------- 2. NIC

/// A detach's time: `returned` when the interface is gone at once (libvirt
/// waited for the removal), else from `start` until it is, polled every 5 ms.
async fn until_gone(dom: &Domain, mac: &str, start: Instant, returned: Duration) -> Res<Duration> {
    if !has_nic(dom, mac)? {
        return Ok(returned);
    }
    while start.elapsed() < GONE_WITHIN {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if !has_nic(dom, mac)? {
            return Ok(start.elapsed());
        }
    }
    Err(format!("interface {mac} was still attached {GONE_WITHIN:?} after its detach").into())
}

fn live_only() -> Options {
    Options::from([("live", true.into()), ("config", false.into())])
}

async fn lvd_attach(c: &Connection, path: &str) -> Res<Duration> {
    let xml = nic_xml(LVD_MAC);
    let t = Instant::now();
    call(
        c,
        (LVD, path, LVD_DOM, "AttachDevice"),
        &(xml.as_str(), AFFECT_LIVE),
    )
    .await?;
    Ok(t.elapsed())
}

async fn lvd_detach(c: &Connection, path: &str, dom: &Domain) -> Res<Duration> {
    let xml = nic_xml(LVD_MAC);
    let t = Instant::now();
    call(
        c,
        (LVD, path, LVD_DOM, "DetachDevice"),
        &(xml.as_str(), AFFECT_LIVE),
    )
    .await?;
    until_gone(dom, LVD_MAC, t, t.elapsed()).await
}

async fn vapor_attach(c: &Connection, path: &str) -> Res<Duration> {
    let doc = format!(r#"{{"network":"{NET}","mac":"{VAPOR_MAC}"}}"#);
    let t = Instant::now();
    let attach = (VAPOR, path, VM_IFACE, "AttachInterface");
    let mac: String = call(c, attach, &(doc.as_str(), live_only()))
        .await?
        .body()
        .deserialize()?;
    let d = t.elapsed();
    if mac != VAPOR_MAC {
        return Err(format!("vapord attached {mac}, asked for {VAPOR_MAC}").into());
    }
    Ok(d)
}

async fn vapor_detach(c: &Connection, path: &str, dom: &Domain) -> Res<Duration> {
    let t = Instant::now();
    let detach = (VAPOR, path, VM_IFACE, "DetachInterface");
    call(c, detach, &(VAPOR_MAC, live_only())).await?;
    until_gone(dom, VAPOR_MAC, t, t.elapsed()).await
}

async fn nics(c: &Connection, rounds: usize, vapor_up: bool, dom: Res<Domain>) -> [Row; 2] {
    let dom = match dom {
        Ok(d) => d,
        Err(e) => {
            let f = || Series::new(Err(e.to_string()));
            return [Row::new(OPS[1], f(), f()), Row::new(OPS[2], f(), f())];
        }
    };
    let paths = [
        path(c, Side::Lvd, NIC_VM, vapor_up).await,
        path(c, Side::Vapor, NIC_VM, vapor_up).await,
    ];
    let mut attach = paths.clone().map(Series::new);
    let mut detach = paths.map(Series::new);
    for round in 0..=rounds {
        let keep = round > 0;
        let mut shown = [String::from("-"), String::from("-")];
        for (i, side) in SIDES.into_iter().enumerate() {
            // A failed attach or detach ends both series of that service.
            let Some(p) = attach[i].path().filter(|_| detach[i].err.is_none()) else {
                continue;
            };
            let r = match side {
                Side::Lvd => lvd_attach(c, &p).await,
                Side::Vapor => vapor_attach(c, &p).await,
            };
            let a = attach[i].record(r, keep);
            let r = match (&attach[i].err, side) {
                (Some(e), _) => Err(e.clone().into()),
                (None, Side::Lvd) => lvd_detach(c, &p, &dom).await,
                (None, Side::Vapor) => vapor_detach(c, &p, &dom).await,
            };
            let d = detach[i].record(r, keep);
            shown[i] = format!("{a} + {d}");
        }
        let [l, v] = &shown;
        let tag = if round == 0 { " (warm-up)" } else { "" };
        eprintln!("NIC round {round}{tag}: libvirt-dbus {l} ms; vapord {v} ms (attach + detach)");
    }
    let ([la, va], [ld, vd]) = (attach, detach);
    [Row::new(OPS[1], la, va), Row::new(OPS[2], ld, vd)]
}

/// The three rows: Update, NIC attach, NIC detach. The NIC VM and network
/// exist only while their rows are measured.
pub async fn measure(
    c: &Connection,
    conn: &Connect,
    rounds: usize,
    vapor_up: bool,
    guest_dir: &Path,
) -> Vec<Row> {
    let update = updates(c, rounds, vapor_up).await;
    let dom = guest::start(conn, guest_dir);
    let [attach, detach] = nics(c, rounds, vapor_up, dom).await;
    if let Err(e) = cleanup(conn) {
        eprintln!("cannot remove {NIC_VM} or {NET}: {e}");
    }
    vec![update, attach, detach]
}

fn cell(f: &Figure) -> String {
    f.as_ref()
        .map_or("n/a".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3))
}

/// Prints the table; returns its rows as JSON and why figures are missing.
pub fn report(rows: &[Row], rounds: usize) -> (serde_json::Value, Vec<String>) {
    println!(
        "changes: medians of {rounds} rounds (+1 warm-up); update: 2 calls per round and \
         service on {STOPPED_VM}; NIC: 1 attach + 1 detach per round on {NIC_VM} (TCG guest)"
    );
    let (op, lv, va, ra) = ("operation", "libvirt-dbus", "vapord", "ratio");
    println!("{op:<44} | {lv:>12} | {va:>12} | {ra:>6}");
    println!("{:-<44}-+-{:->12}-+-{:->12}-+-{:->6}", "", "", "", "");
    let (mut json, mut errors) = (vec![], Vec::<String>::new());
    for r in rows {
        let ratio = match (&r.lvd, &r.vapor) {
            (Ok(l), Ok(v)) if !v.is_zero() => Some(l.as_secs_f64() / v.as_secs_f64()),
            _ => None,
        };
        let rs = ratio.map_or("n/a".into(), |x| format!("{x:.1}x"));
        println!(
            "{:<44} | {:>12} | {:>12} | {rs:>6}",
            r.op,
            cell(&r.lvd),
            cell(&r.vapor)
        );
        for e in r
            .lvd
            .as_ref()
            .err()
            .into_iter()
            .chain(r.vapor.as_ref().err())
        {
            if !errors.contains(e) {
                errors.push(e.clone());
            }
        }
        let ms = |f: &Figure| f.as_ref().ok().map(|d| d.as_secs_f64() * 1e3);
        json.push(serde_json::json!({
            "operation": r.op, "ratio": ratio,
            "libvirt_dbus_ms": ms(&r.lvd), "libvirt_dbus_error": r.lvd.as_ref().err(),
            "vapord_ms": ms(&r.vapor), "vapord_error": r.vapor.as_ref().err(),
        }));
    }
    (serde_json::Value::Array(json), errors)
}

/// For `--require-vapord`: no row where libvirt-dbus has a figure and vapord
/// has none (a row both lack failed for a reason of the machine's).
pub fn vapord_ok(rows: &[Row]) -> bool {
    rows.iter().all(|r| r.lvd.is_err() || r.vapor.is_ok())
}
