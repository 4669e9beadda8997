//! The volume half of the enumeration benchmark: N volumes in one dir pool
//! `vapor-bench-vols`, enumerated with all properties — libvirt-dbus:
//! `ListStoragePools(0)`, `ListStorageVolumes(0)` on every pool and one
//! `Properties.GetAll(StorageVol)` per volume, sequentially; vapord: one
//! `ObjectManager.GetManagedObjects` (which also carries every VM, pool and
//! network). Medians of the same rounds; nothing asserted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

pub const POOL: &str = "vapor-bench-vols";
const DIR: &str = "/var/lib/libvirt/images/vapor-bench-vols";
const VOL_IFACE: &str = "org.vapor.Virtualization.Volume";

type Res<T> = Result<T, Box<dyn std::error::Error>>;
type Props = HashMap<String, OwnedVariant>;

/// The pool with at least `n` volumes `v-NNNN.raw` (1 MiB, sparse), made once.
pub fn setup(conn: &Connect, n: usize) -> Res<()> {
    let pool = match conn.lookup_storage_pool_by_name(POOL) {
        Ok(p) => p,
        Err(_) => {
            std::fs::create_dir_all(DIR)?;
            let xml = format!(
                "<pool type='dir'><name>{POOL}</name><target><path>{DIR}</path></target></pool>"
            );
            let p = conn.define_storage_pool_xml(&xml, 0)?;
            p.set_autostart(false)?;
            p
        }
    };
    if !pool.is_active()? {
        pool.create(0)?;
    }
    let have = pool.list_volumes()?.len();
    if have < n {
        eprintln!("creating {} volumes in {POOL}", n - have);
    }
    for i in 0..n {
        let name = format!("v-{i:04}.raw");
        if pool.lookup_storage_vol_by_name(&name).is_ok() {
            continue;
        }
        let xml = format!(
            "<volume><name>{name}</name><capacity unit='MiB'>1</capacity>\
             <allocation>0</allocation><target><format type='raw'/></target></volume>"
        );
        StorageVol::create_xml(&pool, &xml, 0)?;
    }
    // libvirt has no volume events: a refresh announces the new volumes.
    pool.refresh(0)?;
    Ok(())
}

/// vapord: one Manager.EnumerateObjects(Volume), decoded whole.
pub async fn vapor_enumerate_compact(c: &Connection) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let reply = call(
        c,
        "org.vapor.Virtualization",
        "/org/vapor/Virtualization",
        "org.vapor.Virtualization.Manager",
        "EnumerateObjects",
        &(VOL_IFACE,),
    )
    .await?;
    let (_names, rows): (Vec<String>, OwnedVariant) = reply.body().deserialize()?;
    let n = zbus::wire::Array::try_from(rows)?.len();
    Ok((t.elapsed(), n))
}

/// The volume table's medians: libvirt-dbus, vapord (GetManagedObjects and
/// EnumerateObjects); and the volumes each saw.
pub struct Volumes {
    pub lvd: Duration,
    pub vapor: Result<Duration, String>,
    pub compact: Result<Duration, String>,
    pub seen: [usize; 2],
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Interleaved rounds (round 0 a warm-up). Waits up to a minute for vapord
/// to show the `n` volumes first.
pub async fn measure(c: &Connection, rounds: usize, n: usize, vapor_up: bool) -> Res<Volumes> {
    if vapor_up {
        let deadline = Instant::now() + Duration::from_secs(60);
        while vapor_enumerate(c).await?.1 < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (mut lvd, mut vap, mut compact) = (vec![], vec![], vec![]);
    let mut seen = [0; 2];
    let mut vapor_err = (!vapor_up).then(|| "vapord is not on the bus".to_string());
    for round in 0..=rounds {
        let l = lvd_enumerate(c).await?;
        let mut v = None;
        if vapor_err.is_none() {
            v = vapor_enumerate(c)
                .await
                .map_err(|e| vapor_err = Some(e.to_string()))
                .ok();
        }
        let mut vc = None;
        if vapor_err.is_none() {
            vc = vapor_enumerate_compact(c)
                .await
                .map_err(|e| vapor_err = Some(e.to_string()))
                .ok();
        }
        seen = [l.1, v.map_or(0, |v| v.1)];
        let vs = v.map_or("n/a".into(), |v| {
            format!("{:.1} ms", v.0.as_secs_f64() * 1e3)
        });
        let tag = if round == 0 { " (warm-up)" } else { "" };
        eprintln!(
            "volumes round {round}{tag}: libvirt-dbus {:.1} ms; vapord {vs}",
            l.0.as_secs_f64() * 1e3
        );
        if round > 0 {
            lvd.push(l.0);
            vap.extend(v.map(|v| v.0));
            compact.extend(vc.map(|v| v.0));
        }
    }
    Ok(Volumes {
        lvd: median(lvd),
        vapor: vapor_err.clone().map_or_else(|| Ok(median(vap)), Err),
        compact: vapor_err.map_or_else(|| Ok(median(compact)), Err),
        seen,
    })
}

/// Deactivate the pool (its files stay for the next run).
pub fn park(conn: &Connect) {
    if let Ok(pool) = conn.lookup_storage_pool_by_name(POOL) {
        if pool.is_active().unwrap_or(false) {
            let _ = pool.destroy();
        }
    }
}

/// Remove the pool and its volumes.
pub fn cleanup(conn: &Connect) -> Res<()> {
    if let Ok(pool) = conn.lookup_storage_pool_by_name(POOL) {
        if pool.is_active().unwrap_or(false) {
            for v in pool.list_all_volumes(0).unwrap_or_default() {
                let _ = v.delete(0);
            }
            let _ = pool.destroy();
        }
        let _ = pool.undefine();
    }
    let _ = std::fs::remove_dir(DIR);
    Ok(())
}

async fn call<B>(
    c: &Connection,
    dest: &str,
    path: &str,
    iface: &str,
    m: &str,
    body: &B,
) -> Res<zbus::Message>
where
    B: serde::Serialize + zbus::DynamicType,
{
    Ok(c.call_method(Some(dest), path, Some(iface), m, body)
        .await?)
}

/// libvirt-dbus: every pool, every pool's volumes, GetAll on each volume.
pub async fn lvd_enumerate(c: &Connection) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let pools: Vec<OwnedObjectPath> = call(
        c,
        "org.libvirt",
        "/org/libvirt/QEMU",
        "org.libvirt.Connect",
        "ListStoragePools",
        &(0u32,),
    )
    .await?
    .body()
    .deserialize()?;
    let mut n = 0;
    for p in pools {
        let vols: Vec<OwnedObjectPath> = call(
            c,
            "org.libvirt",
            p.as_str(),
            "org.libvirt.StoragePool",
            "ListStorageVolumes",
            &(0u32,),
        )
        .await?
        .body()
        .deserialize()?;
        for v in vols {
            let props: Props = call(
                c,
                "org.libvirt",
                v.as_str(),
                "org.freedesktop.DBus.Properties",
                "GetAll",
                &("org.libvirt.StorageVol",),
            )
            .await?
            .body()
            .deserialize()?;
            n += usize::from(!props.is_empty());
        }
    }
    Ok((t.elapsed(), n))
}

/// vapord: one GetManagedObjects; counts the Volume objects.
pub async fn vapor_enumerate(c: &Connection) -> Res<(Duration, usize)> {
    let t = Instant::now();
    let reply = call(
        c,
        "org.vapor.Virtualization",
        "/org/vapor/Virtualization",
        "org.freedesktop.DBus.ObjectManager",
        "GetManagedObjects",
        &(),
    )
    .await?;
    let objs: HashMap<OwnedObjectPath, HashMap<String, Props>> = reply.body().deserialize()?;
    let n = objs.values().filter(|i| i.contains_key(VOL_IFACE)).count();
    Ok((t.elapsed(), n))
}
