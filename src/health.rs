//! Active health checks (`health_check:`): the settings, each backend's state word, the probe.
//!
//! A service with `health_check` has each backend probed every `interval` by one worker
//! (the one whose index is the backend's slot modulo the workers, so each is probed once,
//! and no word has two writers): a `GET path` with `Connection: close`, passed by a status
//! from 200 to 399 read within `timeout`. `fall` failures in a row take the backend out of
//! rotation, `rise` passes in a row put it back (HAProxy's `check inter fall rise`). It
//! starts in rotation, as HAProxy's servers do. While out, requests pass it over as they
//! pass over an open circuit; when no backend that is in can take a request (every one
//! out, or the others' circuits open), the checks are set aside and the circuits alone
//! decide (Envoy's panic mode): a check path that is wrong everywhere must not take a
//! working service down. The breaker goes on judging the traffic as before; the two are
//! independent.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{invalid, parse_duration, ConfigError};
use crate::h1;
use crate::state::{Backend, BreakerCell};
use crate::worker::Worker;

/// `services.NAME.health_check`, or the top-level `health_check` for every service that
/// sets none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Asked of the backend's host as it is (the backend URL's path prefix is not added);
    /// `None` with `type: tcp`: a connect is the check (HAProxy's plain `check`).
    pub path: Option<String>,
    /// Whole seconds, at least one.
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u8,
    pub rise: u8,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_FALL: u8 = 3;
pub const DEFAULT_RISE: u8 = 2;
/// Longest `path`.
const MAX_PATH: usize = 1024;
/// The most of interim (1xx) answers taken before the final one, as on the traffic
/// (`exchange.rs`); each head, interim or final, is held to `limits.max_head_bytes`.
const MAX_INTERIM_BYTES: usize = 64 * 1024;

impl HealthCheck {
    /// What is checked, for the log and the summary: the path, or `TCP connect`.
    pub fn what(&self) -> &str {
        self.path.as_deref().unwrap_or("TCP connect")
    }
}

/// Reads `key` (`services.NAME.health_check`): a map with `path` (or `type: tcp`) and
/// optional `interval`, `timeout`, `fall`, `rise`; `off`, `false` or null for none.
pub fn parse(key: &str, value: &serde_yaml_ng::Value) -> Result<Option<HealthCheck>, ConfigError> {
    use serde_yaml_ng::Value;
    let map = match value {
        Value::Null | Value::Bool(false) => return Ok(None),
        Value::String(s) if s.trim().eq_ignore_ascii_case("off") => return Ok(None),
        Value::Mapping(m) => m,
        _ => {
            return Err(invalid(
                key,
                "expected a map, e.g. {path: /healthz, interval: 5s, timeout: 2s, fall: 3, rise: 2}, or off",
            ))
        }
    };
    let mut check = HealthCheck {
        path: None,
        interval: DEFAULT_INTERVAL,
        timeout: DEFAULT_TIMEOUT,
        fall: DEFAULT_FALL,
        rise: DEFAULT_RISE,
    };
    let mut timeout_given = false;
    let mut tcp = false;
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default();
        let sub = format!("{key}.{name}");
        // `path: ~` is no path, as an absent one (a review: `/admin/config`'s form of a TCP
        // check was read as the path "null").
        if name == "path" && v.is_null() {
            continue;
        }
        let text = match v {
            Value::String(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            _ => serde_yaml_ng::to_string(v)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        match name {
            "path" => {
                let ok = text.starts_with('/')
                    && text.len() <= MAX_PATH
                    && text.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    let shown: String = text.chars().take(60).collect();
                    let cut = if shown.len() < text.len() { "..." } else { "" };
                    return Err(invalid(
                        sub,
                        format!("{shown:?}{cut} is not a path: write one from `/`, printable ASCII without spaces, at most {MAX_PATH} bytes, e.g. /healthz"),
                    ));
                }
                check.path = Some(text);
            }
            "type" => match text.trim() {
                "http" => {}
                "tcp" => tcp = true,
                _ => {
                    return Err(invalid(
                        sub,
                        format!("{text:?} is not a check type: use http (the default: GET path) or tcp (a connect alone)"),
                    ))
                }
            },
            "interval" => {
                let d = parse_duration(&sub, &text)?;
                // Probes start from the once-a-second housekeeping.
                if d.subsec_nanos() != 0 || d.is_zero() || d > Duration::from_secs(3600) {
                    return Err(invalid(
                        sub,
                        format!("{text} is out of range: use whole seconds from 1s to 1h (checks start on the second)"),
                    ));
                }
                check.interval = d;
            }
            "timeout" => {
                let d = parse_duration(&sub, &text)?;
                if d.is_zero() || d > Duration::from_secs(3600) {
                    return Err(invalid(sub, format!("{text} is out of range: use 1ms to 1h")));
                }
                check.timeout = d;
                timeout_given = true;
            }
            "fall" | "rise" => {
                let n = match v {
                    Value::Number(n) => n.as_u64(),
                    _ => None,
                };
                let Some(n) = n.filter(|n| (1..=100).contains(n)) else {
                    let what = match n {
                        Some(_) => "is out of range",
                        None => "is not a whole number",
                    };
                    return Err(invalid(
                        sub,
                        format!("{text} {what}: use a whole number from 1 to 100"),
                    ));
                };
                match name {
                    "fall" => check.fall = n as u8,
                    _ => check.rise = n as u8,
                }
            }
            _ => {
                return Err(invalid(
                    key,
                    format!("unknown setting {name:?}: a health check sets type, path, interval, timeout, fall and rise"),
                ))
            }
        }
    }
    match (tcp, &check.path) {
        (false, None) => {
            return Err(invalid(
                format!("{key}.path"),
                "is missing: give the path to ask each backend, e.g. /healthz, or type: tcp for a check that only connects",
            ))
        }
        (true, Some(_)) => {
            return Err(invalid(
                format!("{key}.path"),
                "is set, but type is tcp, which asks nothing: remove one of them",
            ))
        }
        _ => {}
    }
    if !timeout_given {
        check.timeout = check.timeout.min(check.interval);
    }
    if check.timeout > check.interval {
        return Err(invalid(
            format!("{key}.timeout"),
            format!(
                "{} is longer than the interval ({}): a probe must end before the next begins",
                crate::config::duration_text(check.timeout),
                crate::config::duration_text(check.interval)
            ),
        ));
    }
    Ok(Some(check))
}

/// A backend's health, packed in its word: failures in a row (bits 0–7), passes in a row
/// (8–15), out of rotation (bit 16); then the last probe ([`Last`]). 0: in rotation,
/// never probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub down: bool,
    pub fails: u8,
    pub passes: u8,
}

impl State {
    pub fn load(cell: &BreakerCell) -> State {
        let w = cell.load(Ordering::Relaxed);
        State {
            down: w & (1 << 16) != 0,
            fails: w as u8,
            passes: (w >> 8) as u8,
        }
    }

    fn word(self) -> u64 {
        u64::from(self.fails) | u64::from(self.passes) << 8 | u64::from(self.down) << 16
    }

    /// After one probe that `passed`: the new state, and whether it crossed `fall` or
    /// `rise` (went out of or back into rotation).
    pub fn after(self, passed: bool, check: &HealthCheck) -> (State, bool) {
        let mut s = self;
        if passed {
            s.fails = 0;
            s.passes = s.passes.saturating_add(1).min(check.rise);
        } else {
            s.passes = 0;
            s.fails = s.fails.saturating_add(1).min(check.fall);
        }
        let flip = match s.down {
            true => passed && s.passes >= check.rise,
            false => !passed && s.fails >= check.fall,
        };
        s.down ^= flip;
        (s, flip)
    }
}

/// Why a probe failed short of a status, for `/admin/backends` (HAProxy's `L4CON`,
/// `L7TOUT` and the like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Connect = 1,
    Write,
    Read,
    Closed,
    HeadTooLarge,
    BadResponse,
    Timeout,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Connect => "connect_failed",
            Fault::Write => "write_failed",
            Fault::Read => "read_failed",
            Fault::Closed => "closed_before_head",
            Fault::HeadTooLarge => "head_too_large",
            Fault::BadResponse => "bad_response",
            Fault::Timeout => "timeout",
        }
    }

    fn from_bits(b: u64) -> Option<Fault> {
        [
            Fault::Connect,
            Fault::Write,
            Fault::Read,
            Fault::Closed,
            Fault::HeadTooLarge,
            Fault::BadResponse,
            Fault::Timeout,
        ]
        .into_iter()
        .find(|f| *f as u64 == b)
    }
}

/// The last probe, in the upper bits of the word: its status (bits 17–26, 0 for none),
/// why it failed short of one (27–29), and when it ended, in whole seconds since the Unix
/// epoch (32–63; 0: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    pub status: Option<u16>,
    pub fault: Option<Fault>,
    pub at_unix_s: Option<u64>,
}

impl Last {
    pub fn load(cell: &BreakerCell) -> Last {
        let w = cell.load(Ordering::Relaxed);
        let status = ((w >> 17) & 0x3ff) as u16;
        Last {
            status: (status != 0).then_some(status),
            fault: Fault::from_bits((w >> 27) & 0x7),
            at_unix_s: (w >> 32 != 0).then_some(w >> 32),
        }
    }

    fn bits(found: &Result<u16, (Fault, String)>, unix_s: u64) -> u64 {
        let (status, fault) = match found {
            Ok(s) => (u64::from(*s).min(0x3ff), 0),
            Err((f, _)) => (0, *f as u64),
        };
        status << 17 | fault << 27 | unix_s.clamp(1, u64::from(u32::MAX)) << 32
    }
}

/// Whether `b` is out of rotation by its health checks (one relaxed load).
#[inline]
pub fn is_down(b: &Backend) -> bool {
    b.health.load(Ordering::Relaxed) & (1 << 16) != 0
}

/// The request a probe sends to `authority`; `None` for a TCP check, which sends nothing.
pub fn request(check: &HealthCheck, authority: &str) -> Option<Vec<u8>> {
    let path = check.path.as_ref()?;
    Some(format!(
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: gateway-health-check\r\naccept: */*\r\nconnection: close\r\n\r\n"
    )
    .into_bytes())
}

/// One probe of `addr`: `Ok` with the status if the answer's final head was read whole
/// within `timeout` and is one the traffic's would be relayed with (`Ok(0)`: a TCP check
/// connected, `request` being `None`); else what went wrong, for the log.
pub async fn probe(
    addr: SocketAddr,
    request: Option<Vec<u8>>,
    timeout: Duration,
    max_head: usize,
) -> Result<u16, (Fault, String)> {
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    let run = async {
        let mut s = monoio::net::TcpStream::connect_addr(addr)
            .await
            .map_err(|e| (Fault::Connect, format!("connect: {e}")))?;
        // A TCP check: connected is passed; closed at once (HAProxy's L4OK).
        let Some(request) = request else {
            return Ok(0);
        };
        let (r, _) = s.write_all(request).await;
        r.map_err(|e| (Fault::Write, format!("write: {e}")))?;
        let mut got: Vec<u8> = Vec::with_capacity(4096);
        // Where the answer yet to be judged begins (past interim answers), and how far it
        // was searched for a line that can decide (`HeadScan`: a head trickled a byte at
        // a time was parsed again on every read).
        let (mut at, mut interim, mut scan) = (0, 0, h1::HeadScan::default());
        loop {
            if at < got.len() && scan.ready_response(&got[at..], max_head) {
                match next_answer(&got[at..], max_head, &mut interim) {
                    Answer::Partial => {}
                    Answer::Interim(len) => {
                        (at, scan) = (at + len, h1::HeadScan::default());
                        continue;
                    }
                    Answer::Judged(status) => return status,
                }
            }
            // (`next_answer` refuses a head that reached `max_head` unfinished, and interim
            // answers past their bound, so this is never reached; a bound all the same.)
            let most = MAX_INTERIM_BYTES + max_head;
            if got.len() >= most {
                return Err(too_large(max_head));
            }
            let room = most - got.len();
            let buf = Vec::with_capacity(room.min(16 * 1024));
            let (r, buf) = s.read(buf).await;
            match r {
                // A malformed line in what came last is said as such.
                Ok(0) => match next_answer(&got[at..], max_head, &mut interim) {
                    Answer::Judged(Err(e)) => return Err(e),
                    _ => return Err((Fault::Closed, "closed before a whole head".into())),
                },
                Ok(_) => got.extend_from_slice(&buf),
                Err(e) => return Err((Fault::Read, format!("read: {e}"))),
            }
        }
    };
    match monoio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err((
            Fault::Timeout,
            format!("no answer within {}", crate::config::duration_text(timeout)),
        )),
    }
}

/// What the head at the start of `got` is.
enum Answer {
    /// Not whole yet.
    Partial,
    /// An interim (1xx) answer of this length, within the bound on them (`interim`: their
    /// bytes so far).
    Interim(usize),
    /// A final answer's status, or why the answer fails the probe.
    Judged(Result<u16, (Fault, String)>),
}

/// Reads the head at the start of `got` by the parser and the rules the traffic's answers
/// are ([`h1::parse_response`]): a backend whose answers the gateway would refuse as a 502
/// does not pass (a review: a status line followed by a malformed field, or by nothing,
/// passed), and a `101` to a probe, which asked for no upgrade, ends HTTP on that
/// connection (RFC 9110 §15.2.2), as it is a 502 on the traffic (a review: it was passed
/// over as an interim answer).
fn next_answer(got: &[u8], max_head: usize, interim: &mut usize) -> Answer {
    let mut slots = h1::header_slots();
    let head = match h1::parse_response(got, &mut slots, false, max_head) {
        Ok(None) => return Answer::Partial,
        Ok(Some(head)) => head.info,
        Err(h1::ResponseError(h1::RESPONSE_HEAD_TOO_LARGE)) => {
            return Answer::Judged(Err(too_large(max_head)))
        }
        Err(h1::ResponseError(why)) => {
            let end = got.iter().position(|&b| b == b'\n').unwrap_or(got.len());
            let shown: String = String::from_utf8_lossy(&got[..end.min(60)])
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            return Answer::Judged(Err((
                Fault::BadResponse,
                format!("{why}, in the answer beginning {shown:?}"),
            )));
        }
    };
    match head.status {
        101 => Answer::Judged(Err((
            Fault::BadResponse,
            "101 Switching Protocols, where no upgrade was asked".into(),
        ))),
        100..=199 => {
            *interim += head.head_len;
            if *interim > MAX_INTERIM_BYTES {
                return Answer::Judged(Err((
                    Fault::BadResponse,
                    format!("over {MAX_INTERIM_BYTES} bytes of interim (1xx) answers"),
                )));
            }
            Answer::Interim(head.head_len)
        }
        status => Answer::Judged(Ok(status)),
    }
}

fn too_large(max_head: usize) -> (Fault, String) {
    (
        Fault::HeadTooLarge,
        format!("a head over limits.max_head_bytes ({max_head})"),
    )
}

/// Whether a probe's status passes: 200 to 399 (HAProxy's `httpchk` default).
pub fn passes(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Records one probe's outcome, `found`, in `cell`; returns the new state and whether it
/// went out of or back into rotation.
fn record(
    cell: &BreakerCell,
    check: &HealthCheck,
    found: &Result<u16, (Fault, String)>,
) -> (State, bool) {
    let passed = found.as_ref().is_ok_and(|&s| s == 0 || passes(s));
    let (after, flip) = State::load(cell).after(passed, check);
    let unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    cell.store(after.word() | Last::bits(found, unix_s), Ordering::Relaxed);
    (after, flip)
}

/// Starts the probes due at housekeeping tick `tick` (seconds) on `worker`: of each
/// service with checks, the backends this worker probes (slot modulo workers), each every
/// `interval` seconds, staggered by slot so that they do not all go at once.
pub fn start_due(worker: &Rc<Worker>, tick: u64) {
    let view = worker.view();
    let workers = view.snapshot.config.workers.max(1);
    for s in &view.snapshot.services {
        let Some(check) = &s.health_check else {
            continue;
        };
        let every = check.interval.as_secs().max(1);
        for b in &s.backends {
            if b.slot % workers != worker.index || (tick + b.slot as u64) % every != 0 {
                continue;
            }
            let task = Probe {
                worker: worker.clone(),
                service: s.name.clone(),
                url: b.url.url.clone(),
                addr: b.url.addr,
                request: request(check, &b.url.authority),
                check: check.clone(),
                max_head: view.snapshot.config.limits.max_head_bytes,
                cell: b.health.clone(),
            };
            monoio::spawn(task.run());
        }
    }
}

/// Whether to say now that every backend of `service` is out: not if a worker said it
/// within the last second (two workers whose backends went out together each saw all
/// out: a review read the line twice). Only on a transition, so a lock is fine.
fn say_all_out(service: &str) -> bool {
    static SAID: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());
    let now = crate::state::now_ms();
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    said.retain(|(_, at)| now < at + 1000);
    if said.iter().any(|(s, _)| s == service) {
        return false;
    }
    said.push((service.to_string(), now));
    true
}

/// One probe, with what it needs to say what it found.
struct Probe {
    worker: Rc<Worker>,
    service: String,
    url: String,
    addr: SocketAddr,
    request: Option<Vec<u8>>,
    check: HealthCheck,
    max_head: usize,
    cell: Arc<BreakerCell>,
}

impl Probe {
    async fn run(self) {
        let found = probe(self.addr, self.request, self.check.timeout, self.max_head).await;
        // A reload while it ran that changed the service's checks, turned them off or
        // removed the backend gave it another cell: what this probe found counts for
        // nothing and is not said (a review saw an old probe's verdict logged after `off`).
        let view = self.worker.view();
        let current = view.snapshot.services.iter().any(|s| {
            s.name == self.service
                && s.health_check.as_ref() == Some(&self.check)
                && s.backends
                    .iter()
                    .any(|b| Arc::ptr_eq(&b.health, &self.cell))
        });
        drop(view);
        if !current {
            return;
        }
        let (state, flip) = record(&self.cell, &self.check, &found);
        if !flip {
            return;
        }
        let (svc, url, check) = (&self.service, &self.url, &self.check);
        if !state.down {
            log::info!(
                "backend: {svc} {url} passed its health check ({}) {} {} in a row; back in rotation",
                check.what(),
                check.rise,
                crate::logging::plural(u64::from(check.rise), "time", "times")
            );
            return;
        }
        let why = match &found {
            Ok(status) => format!("status {status}"),
            Err((_, e)) => e.clone(),
        };
        log::warn!(
            "backend: {svc} {url} failed its health check ({}) {} {} in a row, the last: {why}; out of rotation until it passes {} in a row",
            check.what(),
            check.fall,
            crate::logging::plural(u64::from(check.fall), "time", "times"),
            check.rise
        );
        let view = self.worker.view();
        let all_out = view
            .snapshot
            .services
            .iter()
            .find(|s| &s.name == svc)
            .is_some_and(|s| s.backends.iter().all(is_down));
        if all_out && say_all_out(svc) {
            log::warn!(
                "backend: every backend of {svc} fails its health check ({}): the checks are set aside and the circuits alone decide until one passes again (check the {})",
                check.what(),
                if check.path.is_some() { "path" } else { "port" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<Option<HealthCheck>, String> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        parse("services.a.health_check", &v).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_have_defaults_and_bounds() {
        let c = check("{path: /healthz}").unwrap().unwrap();
        assert_eq!(
            c,
            HealthCheck {
                path: Some("/healthz".into()),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                fall: 3,
                rise: 2,
            }
        );
        let c = check("{path: /h?x=1, interval: 2s, timeout: 1s, fall: 1, rise: 100}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.interval, c.fall, c.rise),
            (Duration::from_secs(2), 1, 100)
        );
        assert_eq!(
            check("{type: tcp, path: ~, interval: 1s}").unwrap(),
            check("{type: tcp, interval: 1s}").unwrap()
        );
        let c = check("{type: tcp, interval: 1s}").unwrap().unwrap();
        assert_eq!((c.path.as_deref(), c.what()), (None, "TCP connect"));
        assert_eq!(
            check("{type: http, path: /h}").unwrap().unwrap().what(),
            "/h"
        );
        for (yaml, want) in [
            (
                "{type: tcp, path: /h}",
                "services.a.health_check.path: is set, but type is tcp",
            ),
            (
                "{type: udp}",
                "services.a.health_check.type: \"udp\" is not a check type",
            ),
            (
                "{interval: 5s}",
                "or type: tcp for a check that only connects",
            ),
        ] {
            let e = check(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        for off in ["off", "false", "~"] {
            assert_eq!(check(off).unwrap(), None, "{off}");
        }
        for (bad, says) in [
            ("{interval: 5s}", "services.a.health_check.path: is missing"),
            ("{path: healthz}", "\"healthz\" is not a path"),
            ("{path: /a b}", "\"/a b\" is not a path"),
            (
                "{path: /h, fall: 0}",
                "services.a.health_check.fall: 0 is out of range",
            ),
            ("{path: /h, rise: 101}", "rise: 101 is out of range"),
            ("{path: /h, rise: 1.5}", "rise: 1.5 is not a whole number"),
            ("{path: /h, fall: abc}", "fall: abc is not a whole number"),
            (
                "{path: /h, interval: 1500ms}",
                "1500ms is out of range: use whole seconds",
            ),
            (
                "{path: /h, timeout: 6s}",
                "timeout: 6s is longer than the interval (5s)",
            ),
            ("{path: /h, interval: 0s}", "interval: 0s is out of range"),
            ("{path: /h, every: 5s}", "unknown setting \"every\""),
            ("/healthz", "expected a map"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // The default timeout, 2s, fits a shorter interval (a review was told that the
        // timeout it never wrote was too long).
        let c = check("{path: /h, interval: 1s}").unwrap().unwrap();
        assert_eq!(c.timeout, Duration::from_secs(1));
        let e = check("{path: /h, interval: 1s, timeout: 2s}").unwrap_err();
        assert!(e.contains("longer than the interval"), "{e}");
    }

    #[test]
    fn fall_failures_in_a_row_take_it_out_and_rise_passes_put_it_back() {
        let c = check("{path: /h, fall: 3, rise: 2}").unwrap().unwrap();
        let mut s = State {
            down: false,
            fails: 0,
            passes: 0,
        };
        let mut flips = Vec::new();
        for passed in [
            false, false, true, false, false, false, false, true, false, true, true,
        ] {
            let (next, flip) = s.after(passed, &c);
            s = next;
            flips.push((s.down, flip));
        }
        let downs: Vec<bool> = flips.iter().map(|f| f.0).collect();
        assert_eq!(
            downs,
            [false, false, false, false, false, true, true, true, true, true, false]
        );
        assert_eq!(flips.iter().filter(|f| f.1).count(), 2);
        // The word keeps all three, and the last probe beside them.
        let cell = crate::state::BreakerCell::new(std::sync::atomic::AtomicU64::new(0));
        assert_eq!(
            Last::load(&cell),
            Last {
                status: None,
                fault: None,
                at_unix_s: None
            }
        );
        let (s, _) = record(&cell, &c, &Err((Fault::Timeout, "no answer".into())));
        let last = Last::load(&cell);
        assert_eq!(
            (State::load(&cell), last.status, last.fault),
            (s, None, Some(Fault::Timeout))
        );
        assert!(last.at_unix_s.is_some_and(|s| s > 1_700_000_000));
        record(&cell, &c, &Ok(503));
        let last = Last::load(&cell);
        assert_eq!(
            (State::load(&cell).fails, last.status, last.fault),
            (2, Some(503), None)
        );
        let w = State {
            down: true,
            fails: 3,
            passes: 0,
        }
        .word();
        let cell = crate::state::BreakerCell::new(std::sync::atomic::AtomicU64::new(w));
        assert_eq!(
            State::load(&cell),
            State {
                down: true,
                fails: 3,
                passes: 0
            }
        );
    }

    #[test]
    fn every_backend_out_is_said_once_when_two_workers_see_it_together() {
        assert!(say_all_out("said-once"));
        assert!(!say_all_out("said-once"), "said twice within a second");
        assert!(say_all_out("said-once-other"));
    }

    /// The status of the final answer at the start of `got`, past any interim (1xx) answers,
    /// once its head is whole; `None` while it is not in `got` yet.
    fn status_of(mut got: &[u8], max_head: usize) -> Option<Result<u16, (Fault, String)>> {
        let mut interim = 0;
        loop {
            match next_answer(got, max_head, &mut interim) {
                Answer::Partial => return None,
                Answer::Interim(len) => got = &got[len..],
                Answer::Judged(status) => return Some(status),
            }
        }
    }

    /// The answer's head is read whole and by the traffic's rules. Regressions (reviews):
    /// `100 Continue` was taken as the status; a status line followed by a malformed field
    /// or by nothing at all passed, and a `101` was passed over as an interim answer,
    /// where the traffic gets a 502 for each.
    #[test]
    fn an_answer_head_is_read_whole_and_by_the_traffics_rules() {
        let status_of_ = |got: &[u8]| status_of(got, crate::config::DEFAULT_MAX_HEAD_BYTES);
        let ok = |s: u16| Some(Ok(s));
        let fault = |got: &[u8]| status_of_(got).and_then(|r| r.err()).map(|(f, _)| f);
        assert_eq!(status_of_(b"HTTP/1.1 200 OK\r\n\r\n"), ok(200));
        assert_eq!(
            status_of_(b"HTTP/1.0 503 x\r\ncontent-length: 0\r\n\r\nmore"),
            ok(503)
        );
        assert_eq!(status_of_(b"HTTP/1.1 204\r\n\r\n"), ok(204));
        assert_eq!(status_of_(b"HTTP/1.1 20"), None);
        assert_eq!(
            status_of_(b"HTTP/1.1 200 OK\r\n"),
            None,
            "a status line alone"
        );
        assert_eq!(status_of_(b"HTTP/1.1 200 OK\r\nserver: x\r\n"), None);
        let continued = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(status_of_(continued), ok(200));
        let hints = b"HTTP/1.1 103 Early\r\nlink: </a>\r\n\r\nHTTP/1.1 503 x\r\n\r\n";
        assert_eq!(status_of_(hints), ok(503));
        assert_eq!(status_of_(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2"), None);
        assert_eq!(status_of_(b"HTTP/1.1 100 Continue\r\n"), None);
        let bad = Some(Fault::BadResponse);
        // A bare LF: the traffic's answers are refused for it (smuggling), so the probe's
        // is too.
        assert_eq!(fault(b"HTTP/1.1 200 OK\ncontent-length: 0\n\n"), bad);
        let switched =
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(fault(switched), bad);
        assert_eq!(fault(b"HTTP/1.1 200 OK\r\nx\0y\r\n\r\n"), bad);
        assert_eq!(fault(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"), bad);
        assert_eq!(
            fault(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n"),
            bad
        );
        assert_eq!(fault(b"SSH-2.0-OpenSSH\r\n"), bad);
        assert_eq!(fault(b"HTTP/1.1 999 x\r\n\r\n"), bad);
        // Each head within limits.max_head_bytes, as the traffic's (a review: a fixed 64 KiB
        // passed heads the traffic refused, and failed ones it took).
        let big = format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(40 * 1024));
        assert_eq!(
            status_of(big.as_bytes(), 32 * 1024)
                .and_then(|r| r.err())
                .map(|e| e.0),
            Some(Fault::HeadTooLarge)
        );
        assert_eq!(status_of(big.as_bytes(), 1 << 20), Some(Ok(200)));
        let mut unfinished = b"HTTP/1.1 200 OK\r\n".to_vec();
        unfinished.resize(8192, b'a');
        assert_eq!(
            status_of(&unfinished, 8192)
                .and_then(|r| r.err())
                .map(|e| e.0),
            Some(Fault::HeadTooLarge)
        );
        let flood = "HTTP/1.1 103 Early\r\nlink: </a>\r\n\r\n".repeat(3000);
        assert_eq!(
            fault(flood.as_bytes()),
            bad,
            "interim answers past their bound"
        );
        assert!(passes(200) && passes(302) && !passes(404) && !passes(503) && !passes(101));
    }
}
