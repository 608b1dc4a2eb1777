//! A small stderr logger for the `log` facade: UTC timestamp, level, target, message.
//!
//! The level comes from `RUST_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default
//! `info`), following the convention of the `log` ecosystem.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger;

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {:5} {}: {}\n",
            timestamp(SystemTime::now()),
            r.level(),
            r.target(),
            r.args()
        );
        // No credentials in the log, whatever the message quotes.
        let line = crate::redact::userinfo(&line);
        // One write per line so lines from different workers do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; the level is read from `RUST_LOG`.
pub fn init() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&Logger).is_ok() {
        log::set_max_level(level);
    }
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-28T06:01:02.345Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::date::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Whether a level is on (to skip building expensive messages).
pub fn enabled(level: Level) -> bool {
    level <= log::max_level()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_932_062_345);
        assert_eq!(timestamp(t), "2026-11-29T06:01:02.345Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
