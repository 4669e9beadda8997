//! Logging: to the systemd journal with structured fields where there is one,
//! to stderr otherwise.
//!
//! Call sites attach fields with `log`'s key-value syntax, e.g.
//! `log::info!(vm_name = name, vm_uuid = uuid; "started")`; the journal gets them
//! as `VM_NAME=` / `VM_UUID=` fields, stderr as `key=value` suffixes.

use std::io::Write;

use log::{kv, LevelFilter, Log, Metadata, Record};

/// Install the logger. Returns where logs go, for the startup message.
pub fn init(level: &str) -> &'static str {
    let filter = level.parse().unwrap_or(LevelFilter::Info);
    let journal = std::path::Path::new("/run/systemd/journal/socket").exists()
        && std::env::var_os("VAPOR_LOG_STDERR").is_none();
    if journal {
        if let Ok(j) = systemd_journal_logger::JournalLog::new() {
            if j.with_syslog_identifier("vapord".into()).install().is_ok() {
                log::set_max_level(filter);
                return "journal";
            }
        }
    }
    if log::set_boxed_logger(Box::new(StderrLog)).is_ok() {
        log::set_max_level(filter);
    }
    "stderr"
}

struct StderrLog;

struct Fields(String);

impl<'kvs> kv::VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

impl Log for StderrLog {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut fields = Fields(String::new());
        let _ = r.key_values().visit(&mut fields);
        let _ = writeln!(
            std::io::stderr().lock(),
            "vapord[{}]: {}: {}{}",
            std::process::id(),
            r.level().as_str().to_lowercase(),
            r.args(),
            fields.0
        );
    }

    fn flush(&self) {}
}
