//! Wiring: configuration → libvirt model → bus objects → bus name → run until
//! SIGTERM. The order matters: every object is exported before the name is
//! requested, so the first client already sees every VM.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use zbus::fdo::{DBusProxy, RequestNameFlags, RequestNameReply};

use crate::config::Config;
use crate::creation::resolve::Defaults;
use crate::creation::template::TemplateStore;
use crate::dbus::backup::{BackupContext, Backups};
use crate::dbus::manager::Manager;
use crate::dbus::network::NetworkContext;
use crate::dbus::pci::PciContext;
use crate::dbus::polkit::Authorizer;
use crate::dbus::snapshot::{SnapshotContext, Snapshots};
use crate::dbus::storage::{Pools, StorageContext, Volumes};
use crate::dbus::vm::VmContext;
use crate::dbus::{manager, object};
use crate::dbus::{BUS_NAME, ROOT_PATH};
use crate::intent::IntentLog;
use crate::libvirt::Hypervisor;
use crate::model::Model;
use crate::pci::udev::PciMonitor;
use crate::recovery;
use crate::services::backup::BackupService;
use crate::services::console::ConsoleService;
use crate::services::creation::CreationService;
use crate::services::follow::Followers;
use crate::services::migration::MigrationService;
use crate::services::network::NetworkService;
use crate::services::pci::{PciConfig, PciService};
use crate::services::references::References;
use crate::services::snapshot::SnapshotService;
use crate::services::storage::StorageService;
use crate::services::vm_clone::CloneService;
use crate::services::vm_devices::DeviceService;
use crate::services::VmService;

/// Give memory freed after a burst back to the system. Enumerating 1000 VMs
/// (GetManagedObjects) allocates a few MiB of short-lived property maps per
/// call; 64 clients doing it at once left ~220 MiB that glibc had freed but
/// kept in its per-thread arenas (RSS 250 MiB, back to ~32 MiB after a trim).
/// A trim is cheap when there is nothing to give back.
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases free pages; it is thread-safe.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

/// The name is gone: a clean exit when another vapord took it over
/// (`--replace`), else an error.
async fn name_lost(dbus: &DBusProxy<'_>, conn: &zbus::Connection) -> Result<(), String> {
    let ours = conn.unique_name().map(|n| n.as_str()).unwrap_or_default();
    let name = BUS_NAME.try_into().map_err(|e| format!("{e}"))?;
    match dbus.get_name_owner(name).await {
        Ok(owner) if owner.as_str() != ours => {
            log::info!("{BUS_NAME} was taken over by {owner}; exiting");
            let _ = sd_notify::notify(&[NotifyState::Stopping]);
            Ok(())
        }
        _ => Err(format!(
            "lost the bus name {BUS_NAME}; exiting so that it can be restarted"
        )),
    }
}

/// How the daemon was asked to run, beyond the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Serve on the session bus (one user, no polkit) instead of the system bus.
    pub session: bool,
    /// Take the bus name over from a running vapord (which then exits).
    pub replace: bool,
    /// Emulate the kernel under a fake sysfs root (test builds only).
    pub fake_kernel: bool,
}

/// Run the daemon until it is told to stop. Errors are fatal start-up problems.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), String> {
    let (hv, hv_events) = Hypervisor::new(&cfg.libvirt_uri);
    let (model, changes) = Model::new(hv);

    let builder = if opts.session {
        zbus::connection::Builder::session()
    } else {
        zbus::connection::Builder::system()
    };
    let conn = builder
        .build()
        .await
        .map_err(|e| format!("cannot connect to the D-Bus bus: {e}"))?;

    let auth = Arc::new(if opts.session {
        Authorizer::session_bus(&conn)
    } else {
        Authorizer::polkit(&conn, Duration::from_secs(cfg.polkit_timeout_secs))
            .await
            .map_err(|e| format!("cannot reach polkit: {e}"))?
    });
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        format!(
            "cannot create the state directory {}: {e}",
            cfg.state_dir.display()
        )
    })?;
    // PCI: subscribe to udev before reading sysfs, so nothing is missed.
    let real_sysfs = cfg.sysfs_root == std::path::Path::new("/");
    let monitor = if real_sysfs {
        match PciMonitor::subscribe() {
            Ok(m) => Some(m),
            Err(e) => {
                log::warn!(
                    "no udev (is systemd-udevd running?): PCI changes will not be followed: {e}"
                );
                None
            }
        }
    } else {
        None
    };
    let (pci, pci_changes) = PciService::new(
        &PciConfig {
            sysfs_root: cfg.sysfs_root.clone(),
            procfs_root: cfg.procfs_root.clone(),
            ids_path: cfg.pci_ids.clone(),
            state_dir: cfg.state_dir.clone(),
            fake_kernel: opts.fake_kernel,
        },
        model.hypervisor().clone(),
    )
    .map_err(|e| format!("PCI: {e}"))?;
    pci.load().map_err(|e| format!("PCI: {e}"))?;
    // Console sockets of an earlier run are stale: emptied before serving.
    let consoles = ConsoleService::new(
        model.clone(),
        cfg.console_dir.clone(),
        Duration::from_secs(cfg.console_idle_secs),
    );
    consoles.prepare();
    consoles.follow();
    let pci_ctx = Arc::new(PciContext {
        pci: pci.clone(),
        model: model.clone(),
        auth: auth.clone(),
    });
    // Where each operation records its steps; what a dead vapord left half
    // done is rolled back by recovery::start below.
    let intents = IntentLog::open(&cfg.state_dir).map_err(|e| e.to_string())?;
    // Storage pools, volumes and networks, and who uses them.
    let refs = References::new(model.hypervisor().clone());
    let (storage, pool_changes, volume_changes) = StorageService::new(
        model.hypervisor().clone(),
        refs.clone(),
        Arc::new(intents.clone()),
        cfg.state_dir.clone(),
    );
    let (networks, network_changes) = NetworkService::new(model.hypervisor().clone(), refs.clone());
    let (snapshots, snapshot_changes) = SnapshotService::new(model.clone());
    let followers = Followers {
        refs,
        storage: storage.clone(),
        networks: networks.clone(),
        snapshots: snapshots.clone(),
    };
    let snapshot_ctx = Arc::new(SnapshotContext {
        snapshots,
        auth: auth.clone(),
    });
    let (backups, backup_changes) = BackupService::new(
        model.clone(),
        cfg.backup_location(),
        intents.clone(),
        storage.clone(),
    );
    let backup_ctx = Arc::new(BackupContext {
        backups,
        auth: auth.clone(),
        vms: std::sync::OnceLock::new(),
    });
    let guest = crate::services::guest::GuestService::new(
        model.clone(),
        Duration::from_secs(cfg.agent_timeout_secs),
    );
    guest.follow();
    let ctx = Arc::new(VmContext {
        vms: VmService::new(model.clone()),
        auth: auth.clone(),
        pci: pci.clone(),
        consoles,
        devices: Arc::new(DeviceService::new(model.clone(), storage.clone())),
        clones: Arc::new(CloneService::new(model.clone(), intents.clone())),
        snapshots: snapshot_ctx.clone(),
        backups: backup_ctx.clone(),
        guest: guest.clone(),
        migrations: Arc::new(MigrationService::new(
            model.clone(),
            cfg.hosts.clone(),
            cfg.allow_unlisted_destinations,
        )),
    });
    let _ = backup_ctx.vms.set(Arc::downgrade(&ctx));
    let storage_ctx = Arc::new(StorageContext {
        storage,
        auth: auth.clone(),
    });
    let pools = Arc::new(Pools(storage_ctx.clone()));
    let volumes = Arc::new(Volumes(storage_ctx));
    let network_ctx = Arc::new(NetworkContext {
        networks,
        auth: auth.clone(),
    });
    let engine = Arc::new(CreationService::new(
        model.hypervisor().clone(),
        TemplateStore::new(&cfg.templates_dir, &cfg.state_dir),
        Defaults {
            cpu_mode: cfg.default_cpu_mode.clone(),
            limits: cfg.limits.clone(),
        },
        Some(pci.clone() as Arc<dyn crate::creation::resolve::PciPlanner>),
        intents.clone(),
    ));
    let server = conn.object_server();
    let registry = Arc::new(crate::dbus::managed::Registry::default());
    server
        .at(
            ROOT_PATH,
            crate::dbus::managed::ObjectManager {
                registry: registry.clone(),
            },
        )
        .await
        .map_err(|e| format!("cannot export the object manager: {e}"))?;
    server
        .at(
            ROOT_PATH,
            crate::dbus::managed::Root {
                manager: Manager {
                    model: model.clone(),
                    pci: pci.clone(),
                    auth,
                    engine: engine.clone(),
                    vm_ctx: ctx.clone(),
                    pools: pools.clone(),
                    networks: network_ctx.clone(),
                    registry: registry.clone(),
                    apply: crate::services::apply::ApplyService::new(
                        model.clone(),
                        guest.clone(),
                        snapshot_ctx.snapshots.clone(),
                        engine.clone(),
                        ctx.clones.clone(),
                        &cfg.state_dir,
                    ),
                },
                registry,
            },
        )
        .await
        .map_err(|e| format!("cannot export the manager: {e}"))?;

    // First load; if libvirtd is not there yet we start anyway and keep trying.
    if let Err(e) = model.connect().await {
        log::warn!("libvirt not available yet ({e}); will keep retrying");
    }
    // Before the name is requested (see recovery::start).
    recovery::start(
        model.hypervisor().clone(),
        intents,
        engine.clone(),
        model.connected(),
    )
    .await?;
    backup_ctx.backups.stop_leftover_pools().await;
    let mut touched = model.touched();
    if let Err(e) = pci.load_hostdevs().await {
        log::warn!("cannot read which VMs use which PCI devices yet: {e}");
    }
    // Follow events before the first reading, so none falls in between.
    followers.spawn(&model, Duration::from_secs(30));
    followers.load().await;
    // Every kind of object, published the same way.
    let mut published = object::Publications::default();
    published.add(ctx.clone(), changes);
    published.add(pci_ctx.clone(), pci_changes);
    published.add(pools, pool_changes);
    published.add(volumes, volume_changes);
    published.add(network_ctx, network_changes);
    published.add(Arc::new(Snapshots(snapshot_ctx)), snapshot_changes);
    published.add(Arc::new(Backups(backup_ctx.clone())), backup_changes);
    published.drain(server).await;

    // Watch for losing the name before asking for it.
    let dbus = DBusProxy::new(&conn).await.map_err(|e| e.to_string())?;
    let mut lost = dbus.receive_name_lost().await.map_err(|e| e.to_string())?;
    let mut flags = RequestNameFlags::ALLOW_REPLACEMENT | RequestNameFlags::DO_NOT_QUEUE;
    if opts.replace {
        flags |= RequestNameFlags::REPLACE_EXISTING;
    }
    match conn.request_name_with_flags(BUS_NAME, flags).await {
        Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {}
        Ok(_) => {
            return Err(format!(
                "{BUS_NAME} is already owned by another process (use --replace to take it over)"
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot own {BUS_NAME}: {e} (is the bus policy dbus/{BUS_NAME}.conf installed?)"
            ))
        }
    }

    published.follow(&conn);
    // Only now, with the name ours (a vapord this one replaced has stopped
    // making backups), what a dead one left of its backups is rolled back.
    // Not fatal: until the repository is there, backup calls say why.
    let _ = backup_ctx.backups.attach().await;
    backup_ctx.backups.follow();
    tokio::spawn(manager::follow_connected(conn.clone(), model.connected()));
    tokio::spawn(manager::follow_host_load(conn.clone(), model.host_load()));

    if let Some(monitor) = monitor {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(monitor.run(tx));
        let pci = pci.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let pci = pci.clone();
                // sysfs reads (and a re-applied override) block briefly.
                let _ = tokio::task::spawn_blocking(move || pci.on_udev(&ev)).await;
            }
        });
    }
    {
        // After a libvirt reconnect, re-read who uses which device.
        let pci = pci.clone();
        let mut connected = model.connected();
        tokio::spawn(async move {
            while connected.changed().await.is_ok() {
                if *connected.borrow() {
                    if let Err(e) = pci.load_hostdevs().await {
                        log::warn!("cannot re-read which VMs use which PCI devices: {e}");
                    }
                }
            }
        });
    }
    {
        let pci = pci.clone();
        tokio::spawn(async move {
            loop {
                match touched.recv().await {
                    Ok(uuid) => pci.refresh_hostdevs(&uuid).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = pci.load_hostdevs().await;
                    }
                    Err(_) => return,
                }
            }
        });
    }
    tokio::spawn(model.clone().run(
        hv_events,
        Duration::from_secs(cfg.stats_interval_secs),
        Duration::from_millis(cfg.reconnect_max_ms),
    ));

    tokio::spawn(return_freed_memory());

    let status = format!("Serving {} VMs from {}", model.all().len(), cfg.libvirt_uri);
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    log::info!(bus = if opts.session { "session" } else { "system" }, uri = cfg.libvirt_uri.as_str();
        "vapord {} ready: {status}", env!("CARGO_PKG_VERSION"));
    if let Some(period) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(period / 2);
            loop {
                t.tick().await;
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        });
    }

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { log::info!("SIGINT: shutting down"); break; }
            l = lost.next() => match l {
                Some(sig) => {
                    if sig.args().is_ok_and(|a| a.name() == BUS_NAME) {
                        // Handing over to `vapord --replace` is the one clean
                        // way to lose the name; anything else is a failure, so
                        // that Restart=on-failure brings vapord back.
                        return name_lost(&dbus, &conn).await;
                    }
                }
                None => {
                    return Err("lost the connection to the D-Bus bus; exiting so that vapord can be restarted".into());
                }
            },
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let _ = conn.release_name(BUS_NAME).await;
    Ok(())
}
