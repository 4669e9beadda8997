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
use crate::creation::engine::Engine;
use crate::creation::resolve::Defaults;
use crate::creation::template::TemplateStore;
use crate::dbus::manager::Manager;
use crate::dbus::polkit::Authorizer;
use crate::dbus::publisher::Publisher;
use crate::dbus::vm::VmContext;
use crate::dbus::{BUS_NAME, ROOT_PATH};
use crate::libvirt::Hypervisor;
use crate::model::Model;
use crate::services::VmService;

/// How the daemon was asked to run, beyond the config file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Serve on the session bus (one user, no polkit) instead of the system bus.
    pub session: bool,
    /// Take the bus name over from a running vapord (which then exits).
    pub replace: bool,
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
        Authorizer::polkit(&conn)
            .await
            .map_err(|e| format!("cannot reach polkit: {e}"))?
    });
    let ctx = Arc::new(VmContext {
        vms: VmService::new(model.clone()),
        auth: auth.clone(),
    });
    let engine = Arc::new(Engine::new(
        model.hypervisor().clone(),
        TemplateStore::new(&cfg.templates_dir, &cfg.state_dir),
        Defaults {
            cpu_mode: cfg.default_cpu_mode.clone(),
        },
    ));
    let server = conn.object_server();
    server
        .at(ROOT_PATH, zbus::fdo::ObjectManager)
        .await
        .map_err(|e| format!("cannot export the object manager: {e}"))?;
    server
        .at(
            ROOT_PATH,
            Manager {
                model: model.clone(),
                auth,
                engine,
                vm_ctx: ctx.clone(),
            },
        )
        .await
        .map_err(|e| format!("cannot export the manager: {e}"))?;

    // First load; if libvirtd is not there yet we start anyway and keep trying.
    if let Err(e) = model.connect().await {
        log::warn!("libvirt not available yet ({e}); will keep retrying");
    }
    let publisher = Publisher {
        conn: conn.clone(),
        ctx: ctx.clone(),
    };
    let mut changes = changes;
    publisher.drain(&mut changes).await;

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

    tokio::spawn(publisher.run(changes, model.connected()));
    tokio::spawn(model.clone().run(
        hv_events,
        Duration::from_secs(cfg.stats_interval_secs),
        Duration::from_secs(cfg.reconnect_max_secs),
    ));

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
                        log::info!("{BUS_NAME} was taken over by another vapord; exiting");
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let _ = conn.release_name(BUS_NAME).await;
    Ok(())
}
