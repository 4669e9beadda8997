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
