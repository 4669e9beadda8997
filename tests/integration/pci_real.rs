//! PCI on the real kernel, through real udevd. Only the device named by
//! VAPOR_TEST_PCI_DEVICE is ever written to, and only after checking it is a
//! virtio-rng (vendor 0x1af4, device 0x1044); it is put back on its driver
//! even when a test fails. Every other device is only read.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use zbus::{OwnedObjectPath, OwnedVariant, Proxy};

use crate::common::*;

const PCI: &str = "org.vapor.Virtualization.PciDevice";

fn pci_path(addr: &str) -> String {
    format!("{ROOT}/pci/{}", addr.replace([':', '.'], "_"))
}

fn sysfs(addr: &str, attr: &str) -> String {
    format!("/sys/bus/pci/devices/{addr}/{attr}")
}

/// The rng device to play with, verified; None when this machine has none.
fn rng() -> Option<String> {
    let addr = std::env::var("VAPOR_TEST_PCI_DEVICE").ok()?;
    let read = |a: &str| std::fs::read_to_string(sysfs(&addr, a)).map(|s| s.trim().to_owned());
    assert_eq!(
        read("vendor").unwrap(),
        "0x1af4",
        "{addr} is not a virtio device: refusing to touch it"
    );
    assert_eq!(
        read("device").unwrap(),
        "0x1044",
        "{addr} is not a virtio-rng: refusing to touch it"
    );
    Some(addr)
}

fn driver(addr: &str) -> Option<String> {
    std::fs::read_link(sysfs(addr, "driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn write(path: &str, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("write {value:?} to {path}: {e}"));
}

/// Puts the rng back on its driver (and present) whatever happened.
struct RngGuard(String, String);
impl Drop for RngGuard {
    fn drop(&mut self) {
        let addr = &self.0;
        if !Path::new(&sysfs(addr, "vendor")).exists() {
            let _ = std::fs::write("/sys/bus/pci/rescan", "1");
        }
        let _ = std::fs::write(sysfs(addr, "driver_override"), "\n");
        if driver(addr).as_deref() != Some(self.1.as_str()) {
            let _ = std::fs::write("/sys/bus/pci/drivers_probe", addr);
        }
    }
}

/// The PCI devices behind a /sys path (e.g. /sys/class/block/vda).
fn pci_ancestors(sys_path: &str) -> Vec<String> {
    let real = std::fs::canonicalize(sys_path).unwrap();
    real.components()
        .filter_map(|c| c.as_os_str().to_str())
        .filter(|c| c.parse::<vapor::pci::PciAddress>().is_ok() && c.len() == 12)
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn root_disk_and_default_route_nic_are_host_critical() {
    let conn = bus().await;
    // Found here independently of vapord: / → its block device → PCI parents.
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "/"])
        .output()
        .unwrap();
    let source = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dev = Path::new(&source)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let disk = pci_ancestors(&format!("/sys/class/block/{dev}"))
        .pop()
        .expect("/ is on a PCI device");
    let out = Command::new("ip")
        .args(["route", "show", "default"])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&out.stdout).into_owned();
    let ifname = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .expect("a default route");
    let nic = pci_ancestors(&format!("/sys/class/net/{ifname}/device"))
        .pop()
        .expect("the NIC is PCI");

    let d = TestDomain::define("pcicrit");
    wait_for_object(&conn, &d.path()).await;
    for (addr, words) in [(&disk, "mounted filesystem /"), (&nic, "default route")] {
        let p = Proxy::new(
            &conn,
            BUS_NAME,
            pci_path(addr),
            "org.freedesktop.DBus.Properties",
        )
        .await
        .unwrap();
        let props: HashMap<String, OwnedVariant> = p.call("GetAll", &(PCI,)).await.unwrap();
        assert!(bool::try_from(&props["HostCritical"]).unwrap(), "{addr}");
        let reasons = Vec::<String>::try_from(props["HostCriticalReasons"].clone()).unwrap();
        assert!(
            reasons.iter().any(|r| r.contains(words)),
            "{addr}: {reasons:?}"
        );
        let dev = Proxy::new(&conn, BUS_NAME, pci_path(addr), PCI)
            .await
            .unwrap();
        let opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
        let problems: Vec<(String, String)> = dev
            .call("CheckAssignment", &(d.name.as_str(), opts))
            .await
            .unwrap();
        assert!(
            problems
                .iter()
                .any(|(c, m)| c == "host-critical" && m.contains(words)),
            "{addr}: {problems:?}"
        );
    }
    // vaporctl explains it too (and exits 5: not assignable).
    let out = Command::new(env!("CARGO_BIN_EXE_vaporctl"))
        .args(["pci", "check", &disk, "--vm", &d.name])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stdout).contains("backs the mounted filesystem /"));
    let out = Command::new(env!("CARGO_BIN_EXE_vaporctl"))
        .args(["pci", "list"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&disk) && l.contains("mounted filesystem")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&nic) && l.contains("default route")),
        "{text}"
    );
}

#[tokio::test]
async fn real_rng_driver_changes_bind_refusal_and_hotplug_reach_the_bus() {
    let Some(addr) = rng() else {
        eprintln!("VAPOR_TEST_PCI_DEVICE not set: no virtio-rng to exercise on this machine");
        return;
    };
    // The only test that changes a real device: everything happens in order here.
    let original = driver(&addr).expect("the rng starts bound");
    let _guard = RngGuard(addr.clone(), original.clone());
    let conn = bus().await;
    let path = pci_path(&addr);
    let dev = Proxy::new(&conn, BUS_NAME, path.clone(), PCI)
        .await
        .unwrap();
    let driver_prop = || async {
        let p = Proxy::new(
            &conn,
            BUS_NAME,
            path.clone(),
            "org.freedesktop.DBus.Properties",
        )
        .await
        .unwrap();
        let v: OwnedVariant = p.call("Get", &(PCI, "Driver")).await.unwrap();
        String::try_from(v).unwrap()
    };
    assert_eq!(driver_prop().await, original);

    // 1. BindToVfio refuses before unbinding anything: this kernel has no vfio-pci.
    let opts: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let err = error_name(
        dev.call::<_, _, Vec<(String, String)>>("BindToVfio", &(opts,))
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("NotSupported") && err.contains("vfio-pci is not available"),
        "{err}"
    );
    assert_eq!(
        driver(&addr).as_deref(),
        Some(original.as_str()),
        "still on its driver"
    );

    // 2. The driverctl sequence by hand: override → unbind → probe leaves it
    //    unbound; the unbind reaches the bus through udev.
    let mut changed = properties_changed(&conn).await;
    write(&sysfs(&addr, "driver_override"), "vfio-pci");
    write(&sysfs(&addr, "driver/unbind"), &addr);
    write("/sys/bus/pci/drivers_probe", &addr);
    assert_eq!(driver(&addr), None);
    let driver_is = |want: &'static str| {
        let path = path.clone();
        move |m: &zbus::Message| {
            m.header().path().is_some_and(|p| p.as_str() == path)
                && m.body()
                    .deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                    .ok()
                    .and_then(|(_, c, _)| {
                        c.get("Driver")
                            .and_then(|v| String::try_from(v.clone()).ok())
                    })
                    .as_deref()
                    == Some(want)
        }
    };
    wait_signal(&mut changed, "Driver=\"\" after unbind", driver_is("")).await;

    // 3. RestoreDriver clears the override and probes: back on virtio-pci.
    let back: String = dev
        .call("RestoreDriver", &())
        .await
        .map_err(error_name)
        .unwrap();
    assert_eq!(back, original);
    assert_eq!(driver(&addr).as_deref(), Some(original.as_str()));
    wait_signal(&mut changed, "Driver back", driver_is("virtio-pci")).await;

    // 4. remove + rescan: real hotplug events become InterfacesRemoved/Added.
    let mut added = interfaces_added(&conn).await;
    let mut removed = interfaces_removed(&conn).await;
    write(&sysfs(&addr, "remove"), "1");
    wait_signal(&mut removed, "InterfacesRemoved for the rng", |m| {
        is_about(m, &path)
    })
    .await;
    write("/sys/bus/pci/rescan", "1");
    wait_signal(&mut added, "InterfacesAdded for the rng", |m| {
        is_about(m, &path)
    })
    .await;
    assert_eq!(driver(&addr).as_deref(), Some(original.as_str()));
    let _: OwnedObjectPath = OwnedObjectPath::try_from(path.as_str()).unwrap();
}
