//! `vaporctl metrics VM`: a VM's CPU, memory, disk and network use.
//!
//! - default: a live view that redraws every `--interval` seconds (a line
//!   per refresh when stdout is not a terminal) until Ctrl-C: the current
//!   values (the VM's properties) beside a sparkline of its recent samples
//!   (`GetMetrics`);
//! - `--once`: the current values, then exit;
//! - `--json`: every sample vapord holds (up to an hour) as a JSON array,
//!   then exit; with `--once`, the current values as one JSON object.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::bus::{Client, VM};
use crate::output::{format_size, one_line, prop_str, prop_u64, Props};
use crate::Failure;

/// One sample as `GetMetrics` sends it: (unix ms, CPU %, memory used KiB,
/// disk read, disk write, net rx, net tx B/s).
type Row = (u64, f64, u64, u64, u64, u64, u64);

/// How many samples a sparkline shows.
const SPARK_WIDTH: usize = 40;

pub async fn run(
    c: &Client,
    vm: &str,
    once: bool,
    interval: u64,
    json_out: bool,
) -> Result<(), Failure> {
    let proxy = c.vm(vm).await?;
    let path = proxy.path().to_string();
    match (json_out, once) {
        (true, false) => {
            let rows = proxy.get_metrics(0).await?;
            print_json(&Value::Array(rows.iter().map(row_json).collect()));
            Ok(())
        }
        (true, true) => {
            let props = c.properties(path, VM).await?;
            print_json(&now_json(&props));
            Ok(())
        }
        (false, true) => {
            let props = c.properties(path, VM).await?;
            for (label, value) in now_lines(&props) {
                println!("{label:<11} {value}");
            }
            Ok(())
        }
        (false, false) => live(c, &proxy, &path, Duration::from_secs(interval)).await,
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Redraw until Ctrl-C (exit 0) or until the VM is gone (its error).
async fn live(
    c: &Client,
    proxy: &vapor::client::proxies::VirtualMachineClient<'_>,
    path: &str,
    every: Duration,
) -> Result<(), Failure> {
    let tty = std::io::stdout().is_terminal();
    loop {
        let props = c.properties(path.to_owned(), VM).await?;
        let rows = proxy.get_metrics(0).await?;
        let mut out = std::io::stdout().lock();
        if tty {
            // Home and clear, then the whole view.
            let _ = write!(out, "\x1b[H\x1b[2J{}", view(&props, &rows, every));
        } else {
            let line: Vec<String> = now_lines(&props)
                .into_iter()
                .map(|(label, value)| format!("{label}: {value}"))
                .collect();
            let _ = writeln!(out, "{}", line.join(", "));
        }
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => {
                if tty {
                    println!();
                }
                return Ok(());
            }
        }
    }
}

/// A rate for people: `1.5 MiB/s`.
fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", format_size(bytes_per_sec))
}

/// The current values, labelled, from the VM's properties.
fn now_lines(props: &Props) -> Vec<(&'static str, String)> {
    let cpu = props
        .get("CpuPercent")
        .and_then(|v| f64::try_from(v).ok())
        .unwrap_or(0.0);
    vec![
        ("CPU", format!("{cpu:.1} %")),
        (
            "Memory",
            format_size(prop_u64(props, "MemoryUsedKiB").saturating_mul(1024)),
        ),
        ("Disk read", rate(prop_u64(props, "DiskReadBytesPerSec"))),
        ("Disk write", rate(prop_u64(props, "DiskWriteBytesPerSec"))),
        ("Net rx", rate(prop_u64(props, "NetRxBytesPerSec"))),
        ("Net tx", rate(prop_u64(props, "NetTxBytesPerSec"))),
    ]
}

/// The current values as one JSON object.
fn now_json(props: &Props) -> Value {
    let cpu = props
        .get("CpuPercent")
        .and_then(|v| f64::try_from(v).ok())
        .unwrap_or(0.0);
    json!({
        "name": prop_str(props, "Name"),
        "state": prop_str(props, "State"),
        "cpu_percent": cpu,
        "memory_used_kib": prop_u64(props, "MemoryUsedKiB"),
        "disk_read_bytes_per_sec": prop_u64(props, "DiskReadBytesPerSec"),
        "disk_write_bytes_per_sec": prop_u64(props, "DiskWriteBytesPerSec"),
        "net_rx_bytes_per_sec": prop_u64(props, "NetRxBytesPerSec"),
        "net_tx_bytes_per_sec": prop_u64(props, "NetTxBytesPerSec"),
    })
}

/// One sample as a JSON object.
fn row_json(r: &Row) -> Value {
    json!({
        "time_ms": r.0,
        "cpu_percent": r.1,
        "memory_used_kib": r.2,
        "disk_read_bytes_per_sec": r.3,
        "disk_write_bytes_per_sec": r.4,
        "net_rx_bytes_per_sec": r.5,
        "net_tx_bytes_per_sec": r.6,
    })
}

/// The live view: a title, then each metric's current value and sparkline.
fn view(props: &Props, rows: &[Row], every: Duration) -> String {
    let recent = &rows[rows.len().saturating_sub(SPARK_WIDTH)..];
    let series = |f: fn(&Row) -> f64| recent.iter().map(f).collect::<Vec<f64>>();
    let sparks = [
        sparkline(&series(|r| r.1), Some(100.0)),
        sparkline(&series(|r| r.2 as f64), None),
        sparkline(&series(|r| r.3 as f64), None),
        sparkline(&series(|r| r.4 as f64), None),
        sparkline(&series(|r| r.5 as f64), None),
        sparkline(&series(|r| r.6 as f64), None),
    ];
    let mut out = format!(
        "{}  {}  (every {} s; Ctrl-C to quit)\n\n",
        one_line(&prop_str(props, "Name")),
        one_line(&prop_str(props, "State")),
        every.as_secs()
    );
    for ((label, value), spark) in now_lines(props).into_iter().zip(sparks) {
        out.push_str(&format!("{label:<11} {value:>12}  {spark}\n"));
    }
    out
}

/// Values as block characters, lowest `▁` to highest `█`, scaled to `max`
/// (or to the largest value; all `▁` when every value is 0).
fn sparkline(values: &[f64], max: Option<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = max.unwrap_or_else(|| values.iter().copied().fold(0.0, f64::max));
    values
        .iter()
        .map(|&v| {
            if top <= 0.0 || !v.is_finite() {
                return BARS[0];
            }
            let level = (v.clamp(0.0, top) / top * 7.0).round() as usize;
            BARS[level.min(7)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::OwnedVariant;

    fn props() -> Props {
        let v = |x: zbus::Variant<'static>| OwnedVariant::try_from(x).unwrap();
        let mut p = Props::new();
        p.insert("Name".into(), v("web\u{1b}[2J".into()));
        p.insert("State".into(), v("running".into()));
        p.insert("CpuPercent".into(), v(12.5f64.into()));
        p.insert("MemoryUsedKiB".into(), v(524_288u64.into()));
        p.insert("DiskReadBytesPerSec".into(), v(0u64.into()));
        p.insert("DiskWriteBytesPerSec".into(), v((3u64 << 20).into()));
        p.insert("NetRxBytesPerSec".into(), v(1536u64.into()));
        p.insert("NetTxBytesPerSec".into(), v(10u64.into()));
        p
    }

    #[test]
    fn sparklines_scale_to_the_largest_value_or_the_given_maximum() {
        assert_eq!(sparkline(&[0.0, 50.0, 100.0], Some(100.0)), "▁▅█");
        assert_eq!(sparkline(&[1.0, 2.0, 4.0], None), "▃▅█");
        assert_eq!(sparkline(&[0.0, 0.0], None), "▁▁");
        assert_eq!(sparkline(&[150.0, f64::NAN], Some(100.0)), "█▁");
        assert_eq!(sparkline(&[], None), "");
    }

    #[test]
    fn current_values_are_for_people() {
        let lines = now_lines(&props());
        let get = |k: &str| lines.iter().find(|(l, _)| *l == k).unwrap().1.clone();
        assert_eq!(get("CPU"), "12.5 %");
        assert_eq!(get("Memory"), "512 MiB");
        assert_eq!(get("Disk read"), "0 B/s");
        assert_eq!(get("Disk write"), "3 MiB/s");
        assert_eq!(get("Net rx"), "1.5 KiB/s");
        assert_eq!(now_lines(&Props::new())[0].1, "0.0 %");
    }

    #[test]
    fn json_names_every_value() {
        let now = now_json(&props());
        assert_eq!(now["cpu_percent"], 12.5);
        assert_eq!(now["disk_write_bytes_per_sec"], 3u64 << 20);
        let row = row_json(&(1, 2.5, 3, 4, 5, 6, 7));
        assert_eq!(row["time_ms"], 1);
        assert_eq!(row["cpu_percent"], 2.5);
        assert_eq!(row["net_tx_bytes_per_sec"], 7);
    }

    #[test]
    fn the_live_view_shows_every_metric_without_escapes_from_vapord() {
        let rows: Vec<Row> = (0..50).map(|i| (i, i as f64, 1, 2, 3, 4, 5)).collect();
        let text = view(&props(), &rows, Duration::from_secs(5));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("web\u{fffd}[2J  running"),
            "{}",
            lines[0]
        );
        assert_eq!(lines.len(), 8);
        for line in &lines[2..] {
            assert_eq!(line.chars().filter(|c| "▁▂▃▄▅▆▇█".contains(*c)).count(), 40);
        }
        assert!(!text.contains('\u{1b}'));
    }
}
