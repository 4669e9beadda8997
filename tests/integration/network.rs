//! Virtual networks through the bus. Only isolated networks are ever
//! started; nat, route, open and bridge networks are checked by their
//! planned XML and by defining them without starting.

use std::collections::HashMap;

use zbus::{Connection, OwnedVariant, Proxy};

use crate::common::*;
use crate::storage::{eventually, object_exists, paths, props};

const NETWORK: &str = "org.vapor.Virtualization.Network";

/// A free 10.x.y.0/24 for this test (isolated; never routed anywhere).
fn subnet(n: u8) -> String {
    format!("10.{}.{}", 200 + (std::process::id() % 50) as u8, n)
}

fn isolated_spec(name: &str, n: u8, start: bool) -> String {
    let s = subnet(n);
    format!(
        r#"{{"name":"{name}","mode":"isolated","ipv4":{{"address":"{s}.1","prefix":24,
            "dhcp":{{"start":"{s}.100","end":"{s}.200"}}}},"start":{start}}}"#
    )
}

/// A network, undefined (and stopped) on drop.
struct Net(String);

impl Drop for Net {
    fn drop(&mut self) {
        virsh_quiet(&["net-destroy", &self.0]);
        virsh_quiet(&["net-undefine", &self.0]);
    }
}

async fn call(
    conn: &Connection,
    path: &str,
    method: &str,
    args: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> zbus::Result<()> {
    Proxy::new(conn, BUS_NAME, path.to_owned(), NETWORK)
        .await?
        .call(method, args)
        .await
}

fn created_path(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

#[tokio::test]
async fn alice_creates_an_isolated_network_with_static_hosts_bob_is_refused() {
    let conn = bus().await;
    let name = unique_name("net");
    let spec = isolated_spec(&name, 1, true);
    let out = manager_as(BOB, "CreateNetwork", &spec);
    assert!(!out.status.success());
    assert!(!virsh_quiet(&["net-info", &name]));

    let out = manager_as(ALICE, "CreateNetwork", &spec);
    let _net = Net(name.clone());
    let path = created_path(&out);
    // The path a method returns is already in GetManagedObjects.
    assert!(
        crate::storage::managed_paths(&conn).await.contains(&path),
        "{path} missing from GetManagedObjects"
    );
    let p = props(&conn, &path, NETWORK).await;
    assert!(bool::try_from(p["Active"].clone()).unwrap());
    assert_eq!(String::try_from(p["Mode"].clone()).unwrap(), "isolated");
    assert_eq!(
        String::try_from(p["DhcpRangeStart"].clone()).unwrap(),
        format!("{}.100", subnet(1))
    );

    // Static DHCP hosts, live: bob may not, alice may; a host outside the
    // subnet is refused naming the field.
    let ip = format!("{}.50", subnet(1));
    let add = |user| {
        as_user(
            user,
            &[
                "busctl",
                "--system",
                "--allow-interactive-authorization=no",
                "call",
                BUS_NAME,
                &path,
                NETWORK,
                "AddDhcpHost",
                "sss",
                "52:54:00:aa:bb:cc",
                &ip,
                "web",
            ],
        )
    };
    assert!(!add(BOB).status.success());
    let out = add(ALICE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts: Vec<(String, String, String)> = props(&conn, &path, NETWORK).await["DhcpHosts"]
        .clone()
        .try_into()
        .unwrap();
    assert_eq!(
        hosts,
        [("52:54:00:aa:bb:cc".into(), ip.clone(), "web".into())]
    );
    assert!(virsh(&["net-dumpxml", &name]).contains("52:54:00:aa:bb:cc"));
    let e = call(
        &conn,
        &path,
        "AddDhcpHost",
        &("52:54:00:aa:bb:cd", "192.0.2.9", ""),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("ip"), "{e}");
    call(&conn, &path, "RemoveDhcpHost", &("52:54:00:aa:bb:cc",))
        .await
        .unwrap();
    let hosts: Vec<(String, String, String)> = props(&conn, &path, NETWORK).await["DhcpHosts"]
        .clone()
        .try_into()
        .unwrap();
    assert!(hosts.is_empty());

    let leases: Vec<(String, String, u32, String, u64)> =
        Proxy::new(&conn, BUS_NAME, path.clone(), NETWORK)
            .await
            .unwrap()
            .call("GetDhcpLeases", &())
            .await
            .unwrap();
    assert!(leases.is_empty());

    let out = as_user(
        ALICE,
        &[
            "busctl", "--system", "call", BUS_NAME, &path, NETWORK, "Delete",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!virsh_quiet(&["net-info", &name]));
}

#[tokio::test]
async fn a_network_a_running_vm_uses_cannot_be_stopped_or_deleted() {
    let conn = bus().await;
    let name = unique_name("netuse");
    let out = manager_as(ALICE, "CreateNetwork", &isolated_spec(&name, 2, true));
    let _net = Net(name.clone());
    let path = created_path(&out);
    let d = TestDomain::define_with(
        "netuser",
        &format!("<interface type='network'><source network='{name}'/></interface>"),
    );
    eventually("UsedBy names the VM", || async {
        paths(&props(&conn, &path, NETWORK).await["UsedBy"]) == [d.path()]
    })
    .await;
    virsh(&["start", &d.name]);
    for method in ["Stop", "Delete"] {
        let e = call(&conn, &path, method, &()).await.unwrap_err();
        assert!(e.to_string().contains(&d.name), "{method}: {e}");
    }
    assert!(virsh(&["net-info", &name]).contains("yes"));
    virsh(&["destroy", &d.name]);
    call(&conn, &path, "Stop", &()).await.unwrap();
    let p = props(&conn, &path, NETWORK).await;
    assert!(!bool::try_from(p["Active"].clone()).unwrap());
}

#[tokio::test]
async fn other_modes_are_planned_and_defined_but_never_started_here() {
    let conn = bus().await;
    for (mode, extra, expect) in [
        (
            "nat",
            r#","ipv4":{"address":"10.250.1.1","prefix":24}"#,
            "<forward mode='nat'",
        ),
        (
            "route",
            r#","ipv4":{"address":"10.250.2.1","prefix":24}"#,
            "<forward mode='route'",
        ),
        (
            "open",
            r#","ipv4":{"address":"10.250.3.1","prefix":24}"#,
            "<forward mode='open'",
        ),
        ("bridge", r#","bridge":"br-vt0""#, "<forward mode='bridge'"),
    ] {
        let name = unique_name(mode);
        let spec = format!(r#"{{"name":"{name}","mode":"{mode}","start":false{extra}}}"#);
        let out = manager_as(ALICE, "PlanNetwork", &spec);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let xml = String::from_utf8_lossy(&out.stdout).replace("\\'", "'");
        assert!(xml.contains(expect), "{mode}: {xml}");
        let out = manager_as(ALICE, "CreateNetwork", &spec);
        let _net = Net(name.clone());
        let path = created_path(&out);
        let p: HashMap<String, OwnedVariant> = props(&conn, &path, NETWORK).await;
        assert!(!bool::try_from(p["Active"].clone()).unwrap(), "{mode}");
        assert_eq!(String::try_from(p["Mode"].clone()).unwrap(), mode);
    }
}

#[tokio::test]
async fn networks_made_with_virsh_appear_and_disappear_without_a_restart() {
    let conn = bus().await;
    let name = unique_name("virshnet");
    let xml = format!("{}/{name}.xml", env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(&xml, format!("<network><name>{name}</name></network>")).unwrap();
    virsh(&["net-define", &xml]);
    let _net = Net(name.clone());
    let uuid = virsh(&["net-uuid", &name]).trim().to_owned();
    let path = format!("{ROOT}/network/{}", uuid.replace('-', "_"));
    eventually("a network defined with virsh appears", || {
        object_exists(&conn, &path, NETWORK)
    })
    .await;
    virsh(&["net-undefine", &name]);
    eventually("a network undefined with virsh disappears", || async {
        !object_exists(&conn, &path, NETWORK).await
    })
    .await;
}
