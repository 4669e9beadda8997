//! Bounded requests, as a permitted user: sparse volumes unless asked,
//! preallocation only within the pool's free space, the host's own memory as
//! the default bound, duplicate JSON keys and bad cloud-init refused at plan
//! time — before anything is made.

use std::os::unix::fs::MetadataExt;

use serde_json::json;

use crate::common::*;

fn call_as(user: &str, method: &str, spec: &serde_json::Value) -> std::process::Output {
    call_text_as(user, method, &spec.to_string())
}

fn call_text_as(user: &str, method: &str, spec: &str) -> std::process::Output {
    manager_as(user, method, spec)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn new_volumes_are_sparse_unless_preallocation_is_asked() {
    let _conn = bus().await;
    let pool = TestPool::new("sparse");
    let name = unique_name("sparse");
    let spec = json!({"name": name, "memory": 128, "storage": {"default_pool": pool.name,
        "disks": [{"action": "create", "size": 20, "format": "raw", "path": "big.raw"},
                  {"action": "create", "size": 1, "format": "raw", "path": "full.raw", "preallocate": true}]}});
    let out = call_as(ALICE, "CreateVirtualMachine", &spec);
    assert!(out.status.success(), "{}", stderr(&out));
    let big = std::fs::metadata(format!("{}/big.raw", pool.dir)).unwrap();
    assert_eq!(big.len(), 20 << 30);
    assert!(
        big.blocks() * 512 < 1 << 20,
        "20 GiB raw disk takes {} bytes",
        big.blocks() * 512
    );
    let full = std::fs::metadata(format!("{}/full.raw", pool.dir)).unwrap();
    assert!(
        full.blocks() * 512 >= 1 << 30,
        "preallocated disk takes {} bytes",
        full.blocks() * 512
    );
    virsh(&["undefine", &name]);
}

#[tokio::test]
async fn preallocation_beyond_the_pools_free_space_is_refused_before_anything_is_made() {
    let _conn = bus().await;
    let pool = TestPool::new("prealloc");
    let spec = json!({"name": unique_name("prealloc"), "memory": 128,
        "storage": {"default_pool": pool.name,
        "disks": [{"action": "create", "size": 65536, "format": "raw", "preallocate": true}]}});
    let out = call_as(ALICE, "PlanVirtualMachine", &spec);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the preallocated disks need 65536 GiB in pool"),
        "{err}"
    );
    let out = call_as(ALICE, "CreateVirtualMachine", &spec);
    assert!(!out.status.success());
    assert!(pool.files().is_empty(), "{:?}", pool.files());
}

#[tokio::test]
async fn memory_beyond_the_host_is_refused_at_plan_time() {
    let _conn = bus().await;
    let spec = json!({"name": unique_name("huge"), "memory": 4194304});
    let out = call_as(ALICE, "PlanVirtualMachine", &spec);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("memory: 4194304 MiB is more than") && err.contains("the host's memory"),
        "{err}"
    );
}

#[tokio::test]
async fn duplicate_keys_and_bad_cloud_init_are_refused_before_anything_is_made() {
    let _conn = bus().await;
    let pool = TestPool::new("dupkeys");
    let name = unique_name("dup");
    let text = format!(r#"{{"name":"{name}","memory":64,"memory":4194304}}"#);
    let out = call_text_as(ALICE, "CreateVirtualMachine", &text);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("spec: duplicate key memory"),
        "{}",
        stderr(&out)
    );
    let spec = json!({"name": name, "memory": 128, "storage": {"default_pool": pool.name,
        "disks": [{"action": "create", "size": 1}]},
        "cloud_init": {"user_data": "packages: [nginx]\n"}});
    let out = call_as(ALICE, "CreateVirtualMachine", &spec);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cloud_init.user_data: must start with"),
        "{}",
        stderr(&out)
    );
    assert!(pool.files().is_empty(), "{:?}", pool.files());
    assert!(!virsh_quiet(&["dominfo", &name]));
}
