//! canaryd's log on stderr, in the form its reader wants: `human` (time,
//! level, module, message: a terminal), `journal` (a `<N>` priority prefix
//! per line that journald turns into the entry's level, no time: journald
//! stamps its entries), or `json` (one object per line for log shippers).
//! `auto` is `journal` when stderr is the journal's stream (systemd sets
//! JOURNAL_STREAM to its device:inode) and `human` otherwise. The filter is
//! `RUST_LOG`, `info` when unset.

use log::Level;
use std::io::Write;
use std::sync::OnceLock;

/// The form `init` chose (`auto` resolved).
static CHOSEN: OnceLock<LogFormat> = OnceLock::new();

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Human,
    Journal,
    Json,
}

/// Installs the logger; call once, before anything logs.
pub fn init(format: LogFormat) {
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Human,
        f => f,
    };
    let _ = CHOSEN.set(format);
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Journal => {
            b.format(|buf, r| {
                let line = journal_lines(priority(r.level()), r.target(), &r.args().to_string());
                writeln!(buf, "{line}")
            });
        }
        LogFormat::Json => {
            b.format(|buf, r| {
                let line = json_line(
                    &buf.timestamp_millis().to_string(),
                    r.level(),
                    r.target(),
                    &r.args().to_string(),
                );
                writeln!(buf, "{line}")
            });
        }
        LogFormat::Auto | LogFormat::Human => {}
    }
    b.init();
}

/// The error that ends canaryd, as the last line of its log: `canaryd:
/// MESSAGE` on a terminal (and before the log is set up), an error record
/// in the journal and JSON forms.
pub fn fatal(message: &str) {
    match CHOSEN.get() {
        Some(LogFormat::Journal | LogFormat::Json) => log::error!(target: "canaryd", "{message}"),
        _ => eprintln!("canaryd: {message}"),
    }
}

/// A journal record: every line of the message with the priority prefix
/// (journald reads each line as an entry of its own).
fn journal_lines(priority: u8, target: &str, message: &str) -> String {
    let mut out = String::new();
    for (i, line) in message.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("<{priority}>{target}: {line}"));
    }
    out
}

/// syslog priority of a level (sd-daemon(3)'s prefixes): error 3, warn 4,
/// info 6, debug and trace 7.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One JSON log record; `priority` carries the syslog level too, so a
/// shipper can map it without parsing `level`.
fn json_line(time: &str, level: Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "time": time,
        "level": level.as_str(),
        "priority": priority(level),
        "target": target,
        "message": message,
    })
    .to_string()
}

/// Whether fd 2 is the stream JOURNAL_STREAM names (`DEV:INODE`).
fn stderr_is_journal() -> bool {
    let Ok(want) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(libc::STDERR_FILENO) else {
        return false;
    };
    journal_stream_matches(&want, st.st_dev, st.st_ino)
}

fn journal_stream_matches(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_records_escape_and_carry_the_level() {
        let line = json_line(
            "2026-11-30T16:00:00.000Z",
            Level::Warn,
            "canaryd",
            "a \"quoted\"\nline",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["priority"], 4);
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert!(!line.contains('\n'), "one record per line: {line}");
    }

    #[test]
    fn every_journal_line_carries_the_priority() {
        assert_eq!(journal_lines(3, "canaryd", "one"), "<3>canaryd: one");
        assert_eq!(
            journal_lines(4, "canaryd", "one\ntwo"),
            "<4>canaryd: one\n<4>canaryd: two"
        );
    }

    #[test]
    fn journal_stream_is_matched_on_device_and_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Trace), 7);
    }
}
