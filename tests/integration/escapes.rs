//! Nothing in a pool leads out of it: a symlink planted in a pool, or an
//! image whose header names another file, is judged by the file it really
//! reaches, exactly as if the caller had written that path — so a host file
//! needs `storage-host-path`, which the test user vapor-alice lacks. An image
//! naming a network source is refused without anything being connected to.

use std::process::Command;

use serde_json::json;

use crate::common::*;

fn plan_as(user: &str, spec: &serde_json::Value) -> std::process::Output {
    manager_as(user, "PlanVirtualMachine", &spec.to_string())
}

fn refusal(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a refusal, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

#[tokio::test]
async fn a_symlink_in_a_pool_to_a_host_file_needs_storage_host_path() {
    let _conn = bus().await;
    let pool = TestPool::new("links");
    std::os::unix::fs::symlink("/etc/shadow", format!("{}/evil", pool.dir)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", format!("{}/evil.iso", pool.dir)).unwrap();
    pool.refresh();
    let name = unique_name("links");
    let base = json!({"name": name, "memory": 128});
    let with = |storage: serde_json::Value| {
        let mut s = base.clone();
        s["storage"] = storage;
        s
    };
    // Attached as a disk, or as the boot ISO: the file it leads to.
    for storage in [
        json!({"default_pool": pool.name, "disks": [{"action": "attach", "path": "evil"}]}),
        json!({"default_pool": pool.name, "boot_iso": "evil.iso"}),
    ] {
        let err = refusal(&plan_as(ALICE, &with(storage.clone())));
        assert!(
            err.contains("storage-host-path") && err.contains("/etc/shadow"),
            "{storage}: {err}"
        );
    }
    // Copied or layered on: only pool volumes are sources, and this is none.
    for action in ["clone", "backing"] {
        let storage = json!({"default_pool": pool.name,
            "disks": [{"action": action, "source": "evil", "path": "copy.qcow2"}]});
        let err = refusal(&plan_as(ALICE, &with(storage)));
        assert!(
            err.contains("/etc/shadow is not a volume"),
            "{action}: {err}"
        );
    }
    // Made over: the link is an existing file, never followed.
    let storage = json!({"default_pool": pool.name,
        "disks": [{"action": "create", "size": 1, "path": "evil"}]});
    let err = refusal(&plan_as(ALICE, &with(storage)));
    assert!(err.contains("already exists"), "{err}");
    // Someone allowed host files (root here) gets the real file in the
    // definition, not the link that could be swapped later.
    let conn = bus().await;
    let p = zbus::Proxy::new(&conn, BUS_NAME, ROOT, MANAGER)
        .await
        .unwrap();
    let storage =
        json!({"default_pool": pool.name, "disks": [{"action": "attach", "path": "evil"}]});
    let (_, xml): (String, String) = p
        .call("PlanVirtualMachine", &(with(storage).to_string(),))
        .await
        .unwrap();
    assert!(xml.contains("<source file='/etc/shadow'/>"), "{xml}");
    assert!(!virsh_quiet(&["dominfo", &name]));
}

#[tokio::test]
async fn an_image_backed_by_a_host_file_needs_storage_host_path() {
    let _conn = bus().await;
    let pool = TestPool::new("chain");
    let top = format!("{}/top.qcow2", pool.dir);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/etc/shadow",
        "-F",
        "raw",
        &top,
        "1M",
    ]);
    pool.refresh();
    let spec = json!({"name": unique_name("chain"), "memory": 128,
        "storage": {"default_pool": pool.name, "disks": [{"action": "attach", "path": "top.qcow2"}]}});
    let err = refusal(&plan_as(ALICE, &spec));
    assert!(
        err.contains("storage-host-path") && err.contains("/etc/shadow"),
        "{err}"
    );
}

#[tokio::test]
async fn an_image_naming_a_network_source_is_refused_without_connecting() {
    let _conn = bus().await;
    let pool = TestPool::new("nbd");
    // A listener on loopback the image points at: nothing may connect.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let names = [
        format!("nbd://127.0.0.1:{port}/x"),
        format!("http://127.0.0.1:{port}/x.img"),
        format!(
            "json:{{\"file.driver\":\"nbd\",\"file.host\":\"127.0.0.1\",\"file.port\":\"{port}\"}}"
        ),
    ];
    for (i, backing) in names.iter().enumerate() {
        let img = format!("{}/net{i}.qcow2", pool.dir);
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw", &img, "1M",
        ]);
    }
    pool.refresh();
    for (i, backing) in names.iter().enumerate() {
        let spec = json!({"name": unique_name("nbd"), "memory": 128,
            "storage": {"default_pool": pool.name,
                "disks": [{"action": "attach", "path": format!("net{i}.qcow2")}]}});
        // As root, so nothing but the image itself can refuse it.
        let out = Command::new("busctl")
            .args([
                "--system",
                "call",
                BUS_NAME,
                ROOT,
                MANAGER,
                "PlanVirtualMachine",
                "s",
            ])
            .arg(spec.to_string())
            .output()
            .unwrap();
        let err = refusal(&out);
        assert!(err.contains("not a local file"), "{backing}: {err}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the image's network source: {other:?}"),
    }
}
