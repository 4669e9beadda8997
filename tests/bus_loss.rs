//! Losing the bus is a failure, so that `Restart=on-failure` brings vapord
//! back; handing the name over to `vapord --replace` is the one clean exit.
//! On a private bus of the test's own (vapord's session mode), so the system
//! bus and everything on it stay untouched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct PrivateBus {
    address: String,
    pid: i32,
}

impl PrivateBus {
    fn start() -> Self {
        let out = Command::new("dbus-daemon")
            .args(["--session", "--fork", "--print-address=1", "--print-pid=1"])
            .output()
            .expect("dbus-daemon");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let address = lines.next().unwrap().trim().to_owned();
        let pid = lines.next().unwrap().trim().parse().unwrap();
        PrivateBus { address, pid }
    }

    fn kill(&self) {
        // SAFETY: a plain kill(2) of the bus daemon this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    fn owner_pid(&self) -> Option<u32> {
        let out = Command::new("busctl")
            .args([
                "--address",
                &self.address,
                "status",
                "org.vapor.Virtualization",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("PID=").and_then(|p| p.parse().ok()))
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_path(tag: &str) -> String {
    format!(
        "{}/busloss-{tag}-{}.log",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    )
}

fn vapord(bus: &PrivateBus, tag: &str) -> Child {
    let state = format!(
        "{}/busloss-{tag}-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    let log = std::fs::File::create(log_path(tag)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vapord"))
        .args([
            "--session",
            "--replace",
            "--uri",
            "qemu:///system",
            "--stats-interval",
            "0",
        ])
        .args(["--state-dir", &state])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("VAPOR_LOG_STDERR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while bus.owner_pid() != Some(child.id()) {
        assert!(Instant::now() < deadline, "vapord did not take its name");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "vapord did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_of(tag: &str) -> String {
    std::fs::read_to_string(log_path(tag)).unwrap_or_default()
}

#[test]
fn losing_the_bus_is_an_error_exit() {
    let bus = PrivateBus::start();
    let mut v = vapord(&bus, "lost");
    bus.kill();
    let status = wait_exit(&mut v);
    let log = log_of("lost");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("lost the connection to the D-Bus bus"),
        "{log}"
    );
}

#[test]
fn handing_the_name_to_a_replacement_is_a_clean_exit() {
    let bus = PrivateBus::start();
    let mut old = vapord(&bus, "old");
    let mut new = vapord(&bus, "new");
    let status = wait_exit(&mut old);
    assert!(status.success(), "{}", log_of("old"));
    assert_eq!(bus.owner_pid(), Some(new.id()));
    let _ = new.kill();
    let _ = new.wait();
}
