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
        let (mut progress, mut step) = (0.0f64, String::new());
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
            let filled = (progress * 30.0).round() as usize;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r[{}{}] {:>3.0}% {:<50.50}",
                "#".repeat(filled),
                " ".repeat(30 - filled.min(30)),
                progress * 100.0,
                step
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
