//! Long calls: vapord publishes a Job while it works; vaporctl draws its
//! progress on stderr (only when stderr is a terminal) until the call returns.

use std::collections::HashMap;
use std::future::Future;

use zbus::{Connection, OwnedVariant};

use crate::Failure;

/// Draw a progress bar on stderr from Job PropertiesChanged signals until dropped.
pub async fn follow_jobs(conn: &Connection) -> Option<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(crate::BUS_NAME)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .arg(0, vapor::client::proxies::JOB_INTERFACE)
        .build()
        .ok()?;
    let mut stream = zbus::MessageStream::for_match_rule(rule, conn, None)
        .await
        .ok()?;
    Some(tokio::spawn(async move {
        let (mut progress, mut step, mut details) = (0.0f64, String::new(), String::new());
        while let Some(Ok(m)) = stream.next().await {
            type Changed = (String, HashMap<String, OwnedVariant>, Vec<String>);
            let Ok((_, changed, _)) = m.body().deserialize::<Changed>() else {
                continue;
            };
            if let Some(p) = changed.get("Progress").and_then(|v| f64::try_from(v).ok()) {
                progress = p;
            }
            if let Some(s) = changed
                .get("Step")
                .and_then(|v| String::try_from(v.clone()).ok())
            {
                step = crate::output::one_line(&s);
            }
            if let Some(d) = changed
                .get("Details")
                .and_then(|v| v.try_clone().ok())
                .and_then(|v| HashMap::<String, OwnedVariant>::try_from(v).ok())
            {
                details = details_text(&d);
            }
            let filled = (progress * 30.0).round() as usize;
            let mut err = std::io::stderr().lock();
            let text = if details.is_empty() {
                step.clone()
            } else {
                format!("{step} ({details})")
            };
            let _ = write!(
                err,
                "\r[{}{}] {:>3.0}% {:<90.90}",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30)),
                progress * 100.0,
                text
            );
            let _ = err.flush();
        }
    }))
}

/// Run one long call with the progress bar up, as `vaporctl create` does.
/// No client-side timeout: the call lasts as long as vapord's Job.
pub async fn with_progress<T, F>(conn: &Connection, call: F) -> Result<T, Failure>
where
    F: Future<Output = zbus::Result<T>>,
{
    let bar = follow_jobs(conn).await;
    let result = call.await;
    if let Some(b) = bar {
        b.abort();
        eprintln!();
    }
    Ok(result?)
}

/// As [`with_progress`], and Ctrl-C cancels the call's Job (the Job of
/// `operation` on `object` this user started): the call then ends with the
/// Job's own answer. A second Ctrl-C leaves at once, the Job running on.
pub async fn with_progress_cancelable<T, F>(
    c: &crate::bus::Client,
    operation: &str,
    object: &str,
    call: F,
) -> Result<T, Failure>
where
    F: Future<Output = zbus::Result<T>>,
{
    let bar = follow_jobs(&c.conn).await;
    tokio::pin!(call);
    // Ctrl-C asks the Job to stop; the next one leaves at once (whether
    // or not the first could reach the Job).
    let mut asked = false;
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tokio::signal::ctrl_c() => {
                if asked {
                    eprintln!();
                    std::process::exit(130);
                }
                asked = true;
                match cancel_job(c, operation, object).await {
                    Ok(()) => eprintln!("\ncancelling (Ctrl-C again to leave it running)"),
                    Err(e) => eprintln!(
                        "\nvaporctl: cannot cancel: {} (Ctrl-C again to leave)",
                        e.message
                    ),
                }
            }
        }
    };
    if let Some(b) = bar {
        b.abort();
        eprintln!();
    }
    Ok(result?)
}

/// Cancel the running Job of `operation` on `object` this user started.
async fn cancel_job(c: &crate::bus::Client, operation: &str, object: &str) -> Result<(), Failure> {
    use crate::output::{prop_str, prop_strs, prop_u64};
    // SAFETY: getuid cannot fail.
    let uid = u64::from(unsafe { libc::getuid() });
    let objects = c.objects().await?;
    let job = objects
        .of(vapor::client::proxies::JOB_INTERFACE)
        .into_iter()
        .find(|(_, p)| {
            prop_str(p, "Operation") == operation
                && prop_strs(p, "Objects").iter().any(|o| o == object)
                && prop_u64(p, "StartedByUID") == uid
        })
        .map(|(path, _)| path.to_owned())
        .ok_or_else(|| Failure::new(1, format!("no {operation} Job of yours on {object}")))?;
    let proxy = zbus::Proxy::new(
        &c.conn,
        vapor::client::proxies::SERVICE,
        job,
        vapor::client::proxies::JOB_INTERFACE,
    )
    .await?;
    proxy.call_method("Cancel", &()).await?;
    Ok(())
}

/// A Job's Details in a few words: what a migration has left, its rate,
/// iteration and expected downtime. Pure.
pub fn details_text(d: &HashMap<String, OwnedVariant>) -> String {
    let get = |k: &str| d.get(k).and_then(|v| u64::try_from(v).ok());
    let mut parts = Vec::new();
    if let Some(r) = get("data_remaining") {
        parts.push(format!("{} left", crate::output::format_size(r)));
    }
    if let Some(b) = get("memory_bps").filter(|b| *b > 0) {
        parts.push(format!("{}/s", crate::output::format_size(b)));
    }
    if let Some(i) = get("iteration").filter(|i| *i > 0) {
        parts.push(format!("pass {i}"));
    }
    if let Some(t) = get("expected_downtime_ms").filter(|t| *t > 0) {
        parts.push(format!("downtime ~{t} ms"));
    }
    parts.join(", ")
}
