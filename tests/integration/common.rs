//! Test harness: one real vapord per test binary on the real system bus,
//! against the real libvirtd (`qemu:///system`), real polkitd and real users.
//!
//! `tests/env/setup.sh` must have run (the `.ci/run` script does it); a test
//! that finds the environment missing fails with a message saying so.

#![allow(dead_code)]

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Proxy};

pub const BUS_NAME: &str = "org.vapor.Virtualization";
pub const ROOT: &str = "/org/vapor/Virtualization";
pub const MANAGER: &str = "org.vapor.Virtualization.Manager";
pub const VM: &str = "org.vapor.Virtualization.VirtualMachine";
/// Member of group `vapor`: granted by the test rules.
pub const ALICE: &str = "vapor-alice";
/// Not in group `vapor`: refused.
pub const BOB: &str = "vapor-bob";
/// Members of `vapor` each used by one test only (their jobs are theirs).
pub const CAROL: &str = "vapor-carol";
pub const DAVE: &str = "vapor-dave";
pub const ERIN: &str = "vapor-erin";

/// A test user's uid.
pub fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The first Job object a creation by `uid` announces (others' creations
/// run in parallel in the same test binary).
pub async fn job_started_by(stream: &mut MessageStream, uid: u32) -> OwnedObjectPath {
    type Added = (
        OwnedObjectPath,
        HashMap<String, HashMap<String, OwnedVariant>>,
    );
    let m = wait_signal(stream, "the test's Job object", |m| {
        m.body().deserialize::<Added>().is_ok_and(|(p, ifaces)| {
            p.as_str().starts_with(&format!("{ROOT}/job/"))
                && ifaces
                    .get("org.vapor.Virtualization.Job")
                    .and_then(|props| props.get("StartedByUID"))
                    .and_then(|v| u32::try_from(v).ok())
                    == Some(uid)
        })
    })
    .await;
    m.body().deserialize::<Added>().unwrap().0
}

/// Generous bound for an event to arrive; never a performance assertion.
pub const EVENT_WAIT: Duration = Duration::from_secs(60);

static DAEMON: OnceLock<u32> = OnceLock::new();

/// Start vapord once for this test binary (it dies with the test process).
pub fn daemon() -> u32 {
    daemon_with(&[])
}

/// Like [`daemon`], with extra vapord arguments (only the first call's count).
pub fn daemon_with(extra: &[&str]) -> u32 {
    daemon_wrapped(&[], extra)
}

/// Like [`daemon_with`], run through a wrapper command (e.g. `setpriv …`,
/// which execs vapord in place, keeping the pid).
pub fn daemon_wrapped(wrapper: &[&str], extra: &[&str]) -> u32 {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let wrapper: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    *DAEMON.get_or_init(move || {
        assert!(
            Command::new("virsh")
                .args(["-c", "qemu:///system", "version"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            "libvirtd is not reachable: run tests/env/setup.sh first"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        // The child gets SIGTERM when the thread that spawned it exits, so spawn
        // it from a thread that lives as long as the process.
        std::thread::spawn(move || {
            let log_path = format!(
                "{}/vapord-{}.log",
                env!("CARGO_TARGET_TMPDIR"),
                std::process::id()
            );
            let log = std::fs::File::create(&log_path).expect("daemon log file");
            let mut cmd = match wrapper.split_first() {
                None => Command::new(env!("CARGO_BIN_EXE_vapord")),
                Some((prog, args)) => {
                    let mut c = Command::new(prog);
                    c.args(args).arg(env!("CARGO_BIN_EXE_vapord"));
                    c
                }
            };
            let state_dir = state_dir();
            let templates = format!("{}/tests/fixtures/templates", env!("CARGO_MANIFEST_DIR"));
            let config = format!("{}/tests/fixtures/vapord.toml", env!("CARGO_MANIFEST_DIR"));
            cmd.args(["--replace", "--log-level", "debug", "--stats-interval", "1"])
                .args(["--state-dir", &state_dir, "--templates-dir", &templates])
                .args(["--config", &config])
                .args(&extra)
                .env("VAPOR_LOG_STDERR", "1")
                .stdout(Stdio::null())
                .stderr(log);
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("spawning vapord");
            tx.send((child.id(), log_path)).unwrap();
            let status = child.wait();
            eprintln!("vapord exited: {status:?}");
            loop {
                std::thread::park();
            }
        });
        let (pid, log_path) = rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if owns_bus_name(pid) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "vapord did not take {BUS_NAME}; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pid
    })
}

/// Whether process `pid` owns vapord's name on the system bus.
pub fn owns_bus_name(pid: u32) -> bool {
    let out = Command::new("busctl")
        .args(["--system", "status", BUS_NAME])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.lines().any(|l| l == format!("PID={pid}"))
}

/// A file of `mib` MiB of random data (a source slow enough to copy that a
/// test can act while libvirt is still copying it).
pub fn random_file(path: &str, mib: u32) {
    let ok = Command::new("dd")
        .args([
            "if=/dev/urandom",
            &format!("of={path}"),
            "bs=1M",
            &format!("count={mib}"),
            "status=none",
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok, "dd {path}");
}

/// Record in a domain's vapord metadata that vapord created these volumes
/// for it (as a creation does).
pub fn set_owned_volumes(domain: &str, paths: &[&str]) {
    let vols: String = paths
        .iter()
        .map(|p| format!("<volume path='{p}'/>"))
        .collect();
    let md = format!("<vm><created-by uid='0'/>{vols}</vm>");
    virsh(&[
        "metadata",
        domain,
        "--uri",
        "https://vapor.dev/xmlns/domain/1",
        "--key",
        "vapor",
        "--set",
        &md,
        "--config",
    ]);
}

/// A Manager method with one string argument (a spec, a name), called
/// through busctl as a test user, like a script that cannot answer a
/// password prompt.
pub fn manager_as(user: &str, method: &str, arg: &str) -> Output {
    as_user(
        user,
        &[
            "busctl",
            "--system",
            "--timeout=120",
            "--allow-interactive-authorization=no",
            "call",
            BUS_NAME,
            ROOT,
            MANAGER,
            method,
            "s",
            arg,
        ],
    )
}

/// The state directory of this binary's vapord.
pub fn state_dir() -> String {
    format!(
        "{}/vapord-state-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    )
}

/// A system bus connection as root, with vapord running.
pub async fn bus() -> Connection {
    daemon();
    Connection::system().await.expect("system bus")
}

/// The domain type that works on this machine (kvm, or qemu/TCG without /dev/kvm).
pub fn domain_type() -> String {
    std::fs::read_to_string("/run/vapor-test-domain-type")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| {
            if std::path::Path::new("/dev/kvm").exists() {
                "kvm".into()
            } else {
                "qemu".into()
            }
        })
}

/// A unique domain name for this test.
pub fn unique_name(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "vt-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

/// Minimal bootable-enough domain XML: no disks, 64 MiB; it runs (SeaBIOS
/// finds nothing to boot and keeps trying), which is all lifecycle tests need.
pub fn domain_xml(name: &str, extra_devices: &str) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>\
         <devices>{extra_devices}</devices></domain>",
        domain_type()
    )
}

/// Run virsh against qemu:///system; panics with its stderr on failure.
pub fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// virsh that may fail (cleanup).
pub fn virsh_quiet(args: &[&str]) -> bool {
    Command::new("virsh")
        .args(["-q", "-c", "qemu:///system"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A virtio disk `vda` on the file at `path` (`format`: raw, qcow2).
pub fn disk_device(path: &str, format: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
         <source file='{path}'/><target dev='vda' bus='virtio'/></disk>"
    )
}

/// Undefine a domain whatever it has (snapshots, checkpoints, NVRAM),
/// with the volumes it uses when `storage`; quietly.
pub fn undefine_all(name: &str, storage: bool) {
    let mut a = vec![
        "undefine",
        name,
        "--nvram",
        "--snapshots-metadata",
        "--checkpoints-metadata",
    ];
    if storage {
        a.push("--remove-all-storage");
    }
    virsh_quiet(&a);
}

/// A domain defined with virsh, destroyed and undefined when dropped.
pub struct TestDomain {
    pub name: String,
    pub uuid: String,
}

impl TestDomain {
    pub fn define(tag: &str) -> Self {
        Self::define_with(tag, "")
    }

    pub fn define_with(tag: &str, devices: &str) -> Self {
        let name = unique_name(tag);
        let path = format!("{}/{name}.xml", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(&path, domain_xml(&name, devices)).unwrap();
        virsh(&["define", &path]);
        let uuid = virsh(&["domuuid", &name]).trim().to_owned();
        TestDomain { name, uuid }
    }

    pub fn path(&self) -> String {
        format!("{ROOT}/vm/{}", self.uuid.replace('-', "_"))
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        virsh_quiet(&["destroy", &self.name]);
        undefine_all(&self.name, false);
    }
}

/// Wait until vapord exports `path` (the domain was defined behind its back).
pub async fn wait_for_object(conn: &Connection, path: &str) {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        if get_all(conn, path).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn get_all(conn: &Connection, path: &str) -> zbus::Result<HashMap<String, OwnedVariant>> {
    let p = Proxy::new(
        conn,
        BUS_NAME,
        path.to_owned(),
        "org.freedesktop.DBus.Properties",
    )
    .await?;
    p.call("GetAll", &(VM,)).await
}

/// Wait (bounded) until vapord shows `want` as string property `name`
/// (a change made behind its back reaches it by an event, a moment later).
pub async fn wait_for_prop(conn: &Connection, path: &str, name: &str, want: &str) {
    let deadline = Instant::now() + EVENT_WAIT;
    loop {
        let now = prop_string(conn, path, name).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: {name} stayed {now}, never {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn prop_string(conn: &Connection, path: &str, name: &str) -> String {
    let p = Proxy::new(
        conn,
        BUS_NAME,
        path.to_owned(),
        "org.freedesktop.DBus.Properties",
    )
    .await
    .unwrap();
    let v: OwnedVariant = p.call("Get", &(VM, name)).await.unwrap();
    String::try_from(v).unwrap()
}

/// Call a VM method as root; returns the D-Bus error name on failure.
pub async fn vm_call(conn: &Connection, path: &str, method: &str) -> Result<(), String> {
    let p = Proxy::new(conn, BUS_NAME, path.to_owned(), VM)
        .await
        .unwrap();
    p.call::<_, _, ()>(method, &()).await.map_err(error_name)
}

pub fn error_name(e: zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            format!("{}: {}", name.as_str(), msg.unwrap_or_default())
        }
        zbus::Error::FDO(f) => {
            use zbus::DBusError;
            format!(
                "{}: {}",
                f.name().as_str(),
                f.description().unwrap_or_default()
            )
        }
        other => other.to_string(),
    }
}

pub async fn lookup(conn: &Connection, name: &str) -> Result<OwnedObjectPath, String> {
    let p = Proxy::new(conn, BUS_NAME, ROOT, MANAGER).await.unwrap();
    p.call("LookupVirtualMachine", &(name,))
        .await
        .map_err(error_name)
}

/// A stream of signals from vapord matching an interface and member.
pub async fn signals(
    conn: &Connection,
    iface: &'static str,
    member: &'static str,
) -> MessageStream {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .interface(iface)
        .member(member)
        .build()
        .unwrap();
    MessageStream::for_match_rule(rule, conn, std::num::NonZeroUsize::new(4096))
        .await
        .unwrap()
}

/// PropertiesChanged signals from vapord.
pub async fn properties_changed(conn: &Connection) -> MessageStream {
    signals(conn, "org.freedesktop.DBus.Properties", "PropertiesChanged").await
}

/// InterfacesAdded signals from vapord's ObjectManager.
pub async fn interfaces_added(conn: &Connection) -> MessageStream {
    signals(
        conn,
        "org.freedesktop.DBus.ObjectManager",
        "InterfacesAdded",
    )
    .await
}

/// InterfacesRemoved signals from vapord's ObjectManager.
pub async fn interfaces_removed(conn: &Connection) -> MessageStream {
    signals(
        conn,
        "org.freedesktop.DBus.ObjectManager",
        "InterfacesRemoved",
    )
    .await
}

/// Whether an InterfacesAdded/InterfacesRemoved signal is about `path`.
pub fn is_about(m: &zbus::Message, path: &str) -> bool {
    type Added = (
        OwnedObjectPath,
        HashMap<String, HashMap<String, OwnedVariant>>,
    );
    type Removed = (OwnedObjectPath, Vec<String>);
    let body = m.body();
    let p = body
        .deserialize::<Added>()
        .map(|(p, _)| p)
        .or_else(|_| body.deserialize::<Removed>().map(|(p, _)| p));
    p.is_ok_and(|p| p.as_str() == path)
}

/// Wait for the first message of `stream` satisfying `pred`.
pub async fn wait_signal<F>(stream: &mut MessageStream, what: &str, pred: F) -> zbus::Message
where
    F: FnMut(&zbus::Message) -> bool,
{
    wait_signal_within(stream, EVENT_WAIT, what, pred).await
}

/// [`wait_signal`] with its own bound.
pub async fn wait_signal_within<F>(
    stream: &mut MessageStream,
    bound: Duration,
    what: &str,
    mut pred: F,
) -> zbus::Message
where
    F: FnMut(&zbus::Message) -> bool,
{
    let fut = async {
        while let Some(m) = stream.next().await {
            let m = m.unwrap();
            if pred(&m) {
                return m;
            }
        }
        panic!("signal stream ended while waiting for {what}");
    };
    tokio::time::timeout(bound, fut)
        .await
        .unwrap_or_else(|_| panic!("no signal: {what}"))
}

/// Run a command as a test user; returns its output.
pub fn as_user(user: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--"])
        .args(args)
        .output()
        .unwrap()
}

/// `busctl --system call` of any interface as a test user (waiting up to
/// 15 minutes, for long Jobs): stdout, or stderr as the error.
pub fn call_iface_as(
    user: &str,
    path: &str,
    iface: &str,
    method: &str,
    args: &[&str],
) -> Result<String, String> {
    let mut a = vec![
        "busctl",
        "--system",
        "--timeout=900",
        "call",
        BUS_NAME,
        path,
        iface,
        method,
    ];
    a.extend_from_slice(args);
    let out = as_user(user, &a);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Every property of one interface of an object, as root (`None`: no
/// such object or interface).
pub async fn props_of(
    conn: &Connection,
    path: &str,
    iface: &str,
) -> Option<HashMap<String, OwnedVariant>> {
    Proxy::new(
        conn,
        BUS_NAME,
        path.to_owned(),
        "org.freedesktop.DBus.Properties",
    )
    .await
    .ok()?
    .call("GetAll", &(iface,))
    .await
    .ok()
}

/// `busctl --system call` on a VM object as a test user.
pub fn busctl_as(user: &str, path: &str, method: &str, extra: &[&str]) -> Output {
    let mut args = vec!["busctl", "--system", "call", BUS_NAME, path, VM, method];
    args.extend_from_slice(extra);
    as_user(user, &args)
}

/// Delete a VM as `user` with `remove_storage`, which must succeed.
pub fn delete_with_storage(user: &str, path: &str) {
    let out = busctl_as(
        user,
        path,
        "Delete",
        &["a{sv}", "1", "remove_storage", "b", "true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A transient dir pool made by a test, torn down on drop.
pub struct TestPool {
    pub name: String,
    pub dir: String,
}

impl TestPool {
    pub fn new(tag: &str) -> Self {
        let name = unique_name(tag);
        let dir = format!("/var/lib/vapor-tests/{name}");
        std::fs::create_dir_all(&dir).unwrap();
        virsh(&["pool-create-as", &name, "dir", "--target", &dir]);
        TestPool { name, dir }
    }

    /// A new empty volume in the pool; returns its path.
    pub fn volume(&self, vol: &str, format: &str) -> String {
        virsh(&["vol-create-as", &self.name, vol, "1M", "--format", format]);
        format!("{}/{vol}", self.dir)
    }

    pub fn refresh(&self) {
        virsh(&["pool-refresh", &self.name]);
    }

    /// Names of the files in the pool directory.
    pub fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        virsh_quiet(&["pool-destroy", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether busctl's error text is polkit's refusal (with or without the
/// interactive-authorization flag), not some other failure.
pub fn is_refusal(err: &str) -> bool {
    err.contains("Interactive authentication required")
        || err.contains("NotAuthorized")
        || err.contains("not authorized")
        || err.contains("authentication is required")
}
