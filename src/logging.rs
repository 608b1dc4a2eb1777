//! A small stderr logger for the `log` facade: UTC timestamp, level, process ID, target, message.
//!
//! The level comes from `RUST_LOG`: a level (`off`, `error`, `warn`, `info`, `debug`,
//! `trace`; default `info`), and/or `module=level` items, comma-separated, as in the `log`
//! ecosystem: `warn,gateway::admin=debug`. A module covers itself and everything below it.
//! Anything else is reported on stderr at start and ignored.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Levels by module, as `RUST_LOG` sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// For targets no module item covers.
    pub default: LevelFilter,
    /// `(module, level)`, most specific first.
    pub modules: Vec<(String, LevelFilter)>,
}

impl Filter {
    /// Parses a `RUST_LOG` value; the `Vec` holds one message per item that was ignored.
    pub fn parse(spec: &str) -> (Filter, Vec<String>) {
        let mut f = Filter {
            default: LevelFilter::Info,
            modules: Vec::new(),
        };
        let mut problems = Vec::new();
        let levels = "off, error, warn, info, debug or trace";
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (module, level) = match item.split_once('=') {
                Some((m, l)) => (Some(m.trim()), l.trim()),
                None => (None, item),
            };
            let Ok(level) = level.parse::<LevelFilter>() else {
                problems.push(match module {
                    None => format!("RUST_LOG: unknown level {item:?} (ignored): use {levels}, or MODULE=LEVEL such as gateway::admin=debug"),
                    Some(_) => format!("RUST_LOG: unknown level {level:?} in {item:?} (ignored): use {levels}"),
                });
                continue;
            };
            match module {
                None => f.default = level,
                Some(m) if m == "gateway" || m.starts_with("gateway::") => {
                    f.modules.push((m.to_string(), level))
                }
                Some(_) => problems.push(format!(
                    "RUST_LOG: {item:?} names no module of the gateway (ignored): its modules are gateway and gateway::NAME, e.g. gateway=debug or gateway::admin=debug"
                )),
            }
        }
        // Longest first, so the first match is the most specific one.
        f.modules.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
        (f, problems)
    }

    /// The level that applies to `target`.
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .find(|(m, _)| {
                target
                    .strip_prefix(m.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l)
    }

    /// The most verbose level any target can get.
    fn max(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, l)| *l)
            .fold(self.default, Ord::max)
    }
}

struct Logger {
    filter: Filter,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.filter.level_for(m.target())
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        write_line(r.level(), r.target(), r.args());
    }

    fn flush(&self) {}
}

fn write_line(level: Level, target: &str, message: impl std::fmt::Display) {
    // The process ID, as NGINX's error log has it: an upgrade's two processes write to
    // the same stderr while the old one drains (an operator review could not tell whose
    // `drained; exiting` a line was).
    let line = format!(
        "{} {:5} [{}] {}: {}\n",
        timestamp(SystemTime::now()),
        level,
        std::process::id(),
        target,
        message
    );
    // No credentials in the log, whatever the message quotes.
    let line = crate::redact::userinfo(&line);
    // One write per line so lines from different workers do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The error that stops the gateway, written whatever `RUST_LOG` says:
/// `<time> ERROR [<pid>] gateway: <msg>`.
pub fn fatal(msg: &str) {
    write_line(Level::Error, "gateway", msg);
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger with the levels `RUST_LOG` asks for. What it cannot understand is
/// reported as a warning whatever the level, and ignored.
pub fn init() {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (filter, problems) = Filter::parse(&spec);
    for p in &problems {
        write_line(Level::Warn, module_path!(), p);
    }
    let max = filter.max();
    if log::set_logger(LOGGER.get_or_init(|| Logger { filter })).is_ok() {
        log::set_max_level(max);
    }
}

/// `text` made fit for one log line: control characters escaped (`\n`, `\u{1b}`), so that
/// text from outside (a Redis reply, a config key, a request's path) cannot forge a line or
/// drive the terminal, and so are the Unicode line separators and the marks that reorder
/// what a terminal shows (`\u{2028}`, `\u{202e}`: a review saw them written raw), and at
/// most `max_chars` characters, then `…`.
pub fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        let unseen = matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        );
        if c.is_control() || unseen {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
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

/// `one` for 1, else `many`: "1 connection", "2 connections".
pub fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// A kind of event told in the log once, then at most once a minute as a count, so that a
/// flood of it cannot fill the log (per worker, never shared).
#[derive(Debug, Default)]
pub struct Tally(std::cell::Cell<Option<(std::time::Instant, u64)>>);

/// How often a [`Tally`] sums up what it counted.
pub const TALLY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Tally {
    /// Counts one; true when it is to be told now, the first of a run.
    pub fn note(&self) -> bool {
        match self.0.get() {
            Some((at, unsaid)) => {
                self.0.set(Some((at, unsaid + 1)));
                false
            }
            None => {
                self.0.set(Some((std::time::Instant::now(), 0)));
                true
            }
        }
    }

    /// Once [`TALLY_EVERY`] has passed since the last line: how many were not told since,
    /// and over how long, if any (the count starts again); a quiet minute ends the run, so
    /// the next one is told at once.
    pub fn due(&self) -> Option<(u64, std::time::Duration)> {
        let (at, unsaid) = self.0.get()?;
        let over = at.elapsed();
        if over < TALLY_EVERY {
            return None;
        }
        if unsaid == 0 {
            self.0.set(None);
            return None;
        }
        self.0.set(Some((std::time::Instant::now(), 0)));
        Some((unsaid, over))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the Unicode line separators and the marks that reorder what a terminal
    /// shows went into log lines raw (a review, through a request's path in a breaker line).
    #[test]
    fn one_line_escapes_controls_separators_and_reordering_marks_and_keeps_the_rest() {
        assert_eq!(one_line("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(
            one_line("x\u{2028}evil\u{202e}Z\u{2066}", 100),
            "x\\u{2028}evil\\u{202e}Z\\u{2066}"
        );
        assert_eq!(one_line("café ü", 100), "café ü");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }

    #[test]
    fn a_tally_sums_up_a_minute_after_the_last_line_and_tells_at_once_after_a_quiet_one() {
        let t = Tally::default();
        assert!(t.note(), "the first of a run is told");
        assert!(!t.note() && !t.note());
        // Within the minute: still counting.
        assert_eq!(t.due(), None);
        let now = std::time::Instant::now();
        let ago = now
            .checked_sub(std::time::Duration::from_secs(61))
            .expect("a clock over a minute old");
        // A minute on: told (the count starts again from now).
        t.0.set(Some((ago, 5)));
        let (unsaid, over) = t.due().expect("due");
        assert_eq!(unsaid, 5);
        assert!(over >= std::time::Duration::from_secs(61));
        let (at, left) = t.0.get().expect("a run still going");
        assert_eq!(left, 0);
        assert!(at >= now);
        // A quiet minute: the run is over, and the next one is told at once.
        t.0.set(Some((ago, 0)));
        assert_eq!(t.due(), None);
        assert_eq!(t.0.get(), None);
        assert!(t.note());
    }

    #[test]
    fn plural_is_singular_for_one_only() {
        let n = |n| format!("{n} {}", plural(n, "connection", "connections"));
        assert_eq!(
            [n(0), n(1), n(2)],
            ["0 connections", "1 connection", "2 connections"]
        );
    }
    use std::time::Duration;

    #[test]
    fn rust_log_takes_levels_and_module_items() {
        let (f, p) = Filter::parse("warn,gateway::admin=debug, gateway=error");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(f.level_for("gateway::admin"), LevelFilter::Debug);
        assert_eq!(f.level_for("gateway::administer"), LevelFilter::Error);
        assert_eq!(f.level_for("gateway::server"), LevelFilter::Error);
        assert_eq!(f.level_for("gateway"), LevelFilter::Error);
        assert_eq!(f.level_for("other"), LevelFilter::Warn);
        assert_eq!(f.max(), LevelFilter::Debug);
        let (f, p) = Filter::parse("");
        assert_eq!((f.default, p.len()), (LevelFilter::Info, 0));
        let (f, p) = Filter::parse("DEBUG");
        assert_eq!((f.default, p.len()), (LevelFilter::Debug, 0));
    }

    #[test]
    fn unknown_rust_log_items_are_reported_and_ignored() {
        let (f, p) = Filter::parse("verbose,gatway=debug,gateway=loud,error");
        assert_eq!(f.default, LevelFilter::Error);
        assert!(f.modules.is_empty());
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("\"verbose\"") && p[0].contains("trace"),
            "{}",
            p[0]
        );
        assert!(
            p[1].contains("gatway=debug") && p[1].contains("gateway=debug"),
            "{}",
            p[1]
        );
        assert!(p[2].contains("\"loud\""), "{}", p[2]);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_932_062_345);
        assert_eq!(timestamp(t), "2026-11-29T06:01:02.345Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
