//! `config.yaml`: serde structs that reject unknown keys, then `validate()` into `Config`.
//!
//! Every error names the key, the bad value and the fix. Defaults are the `DEFAULT_*`
//! constants below; the README's config reference lists the same values.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A WebSocket tunnel with no byte either way for this long is closed (HAProxy's
/// `timeout tunnel`; Envoy's stream idle timeout is 5 min, its connection's 1 h).
pub const DEFAULT_TUNNEL_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Shorter than the common backend keep-alive timeouts (Node.js 5 s, Go 90 s, NGINX 75 s),
/// so the gateway, not the backend, closes an idle pooled connection.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle upstream connections kept per worker per backend. It never raises the peak number
/// of connections (the pool opens none by itself; these were all in use a moment ago), it
/// only decides whether a burst's connections are kept for the next burst (until
/// `idle_timeout`) or closed and opened again. 64 made the gateway reconnect for 4–8% of
/// requests at 256 client connections; HAProxy and Envoy keep idle connections uncapped.
pub const DEFAULT_POOL_MAX_IDLE: usize = 4096;
/// Requests one upstream connection carries before the gateway asks the backend to close it
/// (NGINX's `keepalive_requests` default). The last goes with `Connection: close`, and
/// what the backend sends after its answer is watched for until it closes: a backend that
/// answers out of turn is seen there, and no run of answers one behind outlives the
/// connection (`pool.rs`). One new connection per 1 000 requests costs about 0.1%.
pub const DEFAULT_POOL_MAX_REQUESTS: u32 = 1000;
/// Largest `pool.max_requests_per_connection`.
pub const MAX_POOL_MAX_REQUESTS: u64 = 1_000_000_000;
pub const DEFAULT_MAX_HEAD_BYTES: usize = 32 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_TARGET_BYTES: usize = 8 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// `limits.min_body_rate`, bytes per second: Kestrel's default is 240, Apache's
/// `mod_reqtimeout` 500.
pub const DEFAULT_MIN_BODY_RATE: u64 = 256;
/// Upper bound of `limits.buffer_request_body`: what one request may hold in memory.
pub const MAX_BUFFER_REQUEST_BODY: u64 = 16 * 1024 * 1024;
/// Largest `limits.max_connections_per_client`.
pub const MAX_CONNECTIONS_PER_CLIENT: u64 = 1_000_000;

/// Largest `limits.max_connections`.
pub const MAX_CONNECTIONS: u64 = 100_000_000;
/// Longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Largest breaker threshold the packed breaker word can count to.
pub const MAX_FAILURE_THRESHOLD: u32 = 1000;
/// `limits.max_head_bytes`' range, as its range check and its type error say it.
const HEAD_BYTES_RANGE: &str = "1024 to 1048576";
/// `limits.max_target_bytes`' range, likewise.
const TARGET_BYTES_RANGE: &str = "64 up to below limits.max_head_bytes";

/// A config that failed to load or validate; the message is meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// An [`ConfigError::Invalid`] found in a file, which it names (an operator review: a
    /// reload's error named the key but not the file).
    #[error("{path}: {key}: {message}")]
    InFile {
        path: String,
        key: String,
        message: String,
    },
    /// Several errors, in the order of the file, each as it would be alone (the last may
    /// be [`ConfigError::More`]); said on one line, `; `-separated (`--check` and a failed
    /// reload's log list them one per line).
    #[error("{} errors: {}", .0.iter().map(ConfigError::count).sum::<usize>(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ConfigError>),
    /// Past the errors listed, this many more.
    #[error("and {} more {}: fix these first", .0, if *.0 == 1 { "error" } else { "errors" })]
    More(usize),
}

/// An error in a file that holds `${...}` outside comments says that nothing is expanded:
/// an operator review's `http://${HOST}:8001` was reported only as a name that does not
/// resolve, and inside a flow list as a YAML error about a missing `]`.
fn with_expansion_hint(e: ConfigError, text: &str) -> ConfigError {
    let expands = text.lines().any(|l| {
        l.split(" #")
            .next()
            .is_some_and(|l| !l.trim_start().starts_with('#') && l.contains("${"))
    });
    if !expands {
        return e;
    }
    let hint = " (note: the file is taken as written, and ${...} is not expanded: generate it, e.g. envsubst < config.tmpl > config.yaml)";
    match e {
        ConfigError::Syntax { path, message } => ConfigError::Syntax {
            path,
            message: message + hint,
        },
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key,
            message: message + hint,
        },
        // Said once, with the first.
        ConfigError::Several(mut all) => {
            if !all.is_empty() {
                let first = with_expansion_hint(all.remove(0), text);
                all.insert(0, first);
            }
            ConfigError::Several(all)
        }
        other => other,
    }
}

impl ConfigError {
    /// How many errors this is: those of [`ConfigError::Several`], past its list included.
    pub fn count(&self) -> usize {
        match self {
            ConfigError::Several(all) => all.iter().map(ConfigError::count).sum(),
            ConfigError::More(n) => *n,
            _ => 1,
        }
    }

    /// `f` applied to this error, or to each of [`ConfigError::Several`]'s.
    fn each(self, f: impl Fn(ConfigError) -> ConfigError) -> ConfigError {
        match self {
            ConfigError::Several(all) => ConfigError::Several(all.into_iter().map(f).collect()),
            e => f(e),
        }
    }
}

/// `e`, found in the file at `path`, which it names.
fn in_file(e: ConfigError, path: &str) -> ConfigError {
    e.each(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax {
            path: path.to_owned(),
            message,
        },
        ConfigError::Invalid { key, message } => ConfigError::InFile {
            path: path.to_owned(),
            key,
            message,
        },
        other => other,
    })
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The typed, validated configuration the gateway runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// Resolved worker count (never 0).
    pub workers: usize,
    pub pin_workers: bool,
    pub admin: Option<SocketAddr>,
    pub access_log: crate::accesslog::Sink,
    pub access_log_format: crate::accesslog::Format,
    /// A line's fields, in order (`access_log_fields`; by default
    /// [`crate::accesslog::Field::DEFAULT`], then `request_id` with `request_id: true`).
    pub access_log_fields: Vec<crate::accesslog::Field>,
    /// Which access log sink this config's lines go to (not read from the file): a
    /// request is logged by the config it began under, in its format, to its sink.
    pub access_log_epoch: crate::accesslog::Epoch,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub pool: PoolSettings,
    /// Re-resolve backend host names this often (None: only at start and on SIGHUP).
    pub dns_refresh: Option<Duration>,
    /// Keep polling the ring for this long after the last request began or ended before
    /// a worker sleeps (None: sleep at once). Bound at start.
    pub busy_poll: Option<Duration>,
    /// Splice long Content-Length bodies socket to socket (see `splice.rs`; off unless
    /// set). Bound at start.
    pub splice: bool,
    /// Give every routed request an `X-Request-Id` (see `reqid.rs`; off unless set).
    pub request_id: bool,
    /// Wait for the backend's answer even after the client closed its connection (NGINX's
    /// `proxy_ignore_client_abort`); off: the wait is given up (`Worker::watch_waiting`).
    pub ignore_client_abort: bool,
    /// `rate_limit_headers`, `rate_limit_table`, `trusted_proxies`.
    pub admission: crate::admission::Settings,
    pub services: Vec<ServiceConfig>,
    /// Shared circuit state through Redis (None: this instance alone, as before).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// TCP connect to a backend (504 when exceeded).
    pub connect: Duration,
    /// From the request being sent until the backend's response head arrives (504).
    pub response: Duration,
    /// From the first byte of a request head until the whole head arrived (408).
    pub client_header: Duration,
    /// An idle keep-alive client connection is closed after this.
    pub client_idle: Duration,
    /// Longest pause while reading or writing a body, either side.
    pub body: Duration,
    /// On SIGTERM, how long in-flight requests may take before the process exits anyway.
    pub drain: Duration,
    /// On SIGTERM, how long to go on accepting and serving as usual, `/healthz` answering
    /// 503, before the drain begins: time for a load balancer to stop sending (0: none).
    pub drain_grace: Duration,
    /// A WebSocket tunnel with no byte in either direction for this long is closed.
    pub tunnel: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_target_bytes: usize,
    pub max_body_bytes: u64,
    /// Request body bytes read before a backend is picked (0: stream from the start).
    pub buffer_request_body: u64,
    /// Bytes per second a body to or from a client must average over the time the gateway
    /// waits on that client, once it has waited `timeouts.body` in all (0: no minimum).
    pub min_body_rate: u64,
    /// Client connections the process accepts at once; `None`: what the descriptor limit
    /// allows (see `fdlimit.rs`).
    pub max_connections: Option<u64>,
    /// Client connections one address (an IPv6 /64) may hold open at once over every
    /// worker, `trusted_proxies` aside; `None`: no such limit (see `per_client.rs`).
    pub max_connections_per_client: Option<u32>,
}

impl Limits {
    /// The limits a request head is parsed under.
    pub fn head(&self) -> crate::h1::HeadLimits {
        crate::h1::HeadLimits {
            max_head_bytes: self.max_head_bytes,
            max_headers: self.max_headers,
            max_target_bytes: self.max_target_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolSettings {
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
    /// Requests per upstream connection, the last sent with `Connection: close`; `None`
    /// for no limit.
    pub max_requests_per_connection: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub backends: Vec<BackendUrl>,
    pub breaker: BreakerSettings,
    /// The effective rate limit (the service's own, else the top-level one; None: off).
    pub rate_limit: Option<crate::admission::RateLimit>,
    /// Requests to this service in flight at once, all workers together.
    pub max_in_flight: Option<u64>,
    /// WebSocket upgrades are forwarded, and a backend's `101` opens a tunnel.
    pub websocket: bool,
    /// Paths with an encoded `/` (`%2F`) are forwarded as sent instead of refused 400.
    pub encoded_slashes: bool,
    /// The timeouts its requests run under: the top-level ones, with the service's own
    /// `connect`, `response`, `body` and `tunnel` over them.
    pub timeouts: Timeouts,
    /// Active health checks of its backends (`health.rs`); `None`: off.
    pub health_check: Option<crate::health::HealthCheck>,
}

/// Statuses that count as a backend failure by default: every 5xx but 501 (Not
/// Implemented), which answers the method a client chose: a backend that answers 501 to a
/// method it does not serve let any client open its circuit with three such requests (a
/// review). HAProxy's `observe layer7` leaves 501 out too, and 505 as well, but the gateway
/// always speaks HTTP/1.1 upstream, so a 505 says the backend cannot take what every
/// request is (a second review), and still counts.
pub const DEFAULT_FAILURE_STATUSES: u128 = (!0u128 >> 28) & !(1 << 1);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub cooldown: Duration,
    /// Statuses (500..=599) that count as failures, as a bit set over `status - 500`.
    pub failure_statuses: u128,
}

impl BreakerSettings {
    pub fn is_failure_status(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.failure_statuses & (1u128 << (status - 500)) != 0
    }

    /// The failure statuses as runs of consecutive codes, `(low, high)` inclusive.
    pub fn failure_runs(&self) -> Vec<(u16, u16)> {
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for s in (500..600).filter(|&s| self.is_failure_status(s)) {
            match runs.last_mut() {
                Some((_, high)) if *high + 1 == s => *high = s,
                _ => runs.push((s, s)),
            }
        }
        runs
    }
}

/// A backend as written in the config, resolved once at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// The URL as configured minus any trailing slash (the breaker's identity across reloads).
    pub url: String,
    pub addr: SocketAddr,
    /// `host[:port]` as written, sent upstream as `Host`.
    pub authority: String,
    /// Path prefix without a trailing slash (may be empty).
    pub path_prefix: String,
    /// Its share of the service's requests is its weight over the sum of the weights
    /// (`{url: ..., weight: N}`, 1 to [`MAX_WEIGHT`]; 1 for a bare URL).
    pub weight: u32,
}

/// The largest backend `weight` (HAProxy's is 256 too).
pub const MAX_WEIGHT: u32 = 256;

// ---- raw serde structs ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    workers: Option<usize>,
    pin_workers: Option<bool>,
    admin: Option<String>,
    access_log: Option<String>,
    access_log_format: Option<String>,
    access_log_fields: Option<serde_yaml_ng::Value>,
    breaker: Option<RawBreaker>,
    timeouts: Option<RawTimeouts>,
    limits: Option<RawLimits>,
    pool: Option<RawPool>,
    dns_refresh: Option<String>,
    busy_poll: Option<String>,
    splice: Option<bool>,
    request_id: Option<bool>,
    ignore_client_abort: Option<bool>,
    rate_limit: Option<serde_yaml_ng::Value>,
    /// Every service's health checks unless it sets its own (or `off`).
    health_check: Option<serde_yaml_ng::Value>,
    rate_limit_headers: Option<bool>,
    rate_limit_table: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
    cluster: Option<crate::cluster::RawCluster>,
    services: Option<ServiceEntries>,
}

/// The `services` map in file order, duplicates kept, so that `Config::parse` can reject a
/// name given twice with both line numbers (a `BTreeMap` would silently keep the last).
#[derive(Debug, Default)]
struct ServiceEntries(Vec<(String, serde_yaml_ng::Value)>);

impl<'de> Deserialize<'de> for ServiceEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = ServiceEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of service names to backends")
            }
            fn visit_unit<E>(self) -> Result<ServiceEntries, E> {
                Ok(ServiceEntries::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ServiceEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(ServiceEntries(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The first service name given twice, with the 1-based lines of its first two keys in
/// `text` (found by a scan of the block under `services:`; `None` when the map is written
/// in flow style, `{a: ..., a: ...}`).
fn duplicate_service(
    text: &str,
    entries: &ServiceEntries,
) -> Option<(String, Option<(usize, usize)>)> {
    let names = &entries.0;
    let dup = names
        .iter()
        .enumerate()
        .find(|(i, (n, _))| names[..*i].iter().any(|(m, _)| m == n))
        .map(|(_, (n, _))| n.clone())?;
    let lines = service_key_lines(text, &dup);
    let pair = (lines.len() >= 2).then(|| (lines[0], lines[1]));
    Some((dup, pair))
}

/// Each error gets the line its key is on (the service maps are read as plain YAML values
/// first, which keeps no positions, and a value's check none), and several are put in the
/// order of their lines, as NGINX and HAProxy say them (an operator review: in the order
/// of the service names, line 9 came before line 6).
/// Control characters in what a file wrote (an unknown key `"k\e[31m"`) are escaped, as
/// values are: raw, they reached the terminal and the log (a review). At most
/// [`MAX_ERRORS`] are kept, the first by line (a review: the cut came first, and the
/// errors of settings read last were dropped whatever their lines).
fn with_lines(e: ConfigError, text: &str) -> ConfigError {
    match e.each(|e| escaped(with_its_line(e, text))) {
        ConfigError::Several(mut all) => {
            // (What has no line comes after.)
            all.sort_by_key(|e| line_said(e).unwrap_or(usize::MAX));
            if all.len() > MAX_ERRORS {
                let more = all.len() - MAX_ERRORS;
                all.truncate(MAX_ERRORS);
                all.push(ConfigError::More(more));
            }
            ConfigError::Several(all)
        }
        e => e,
    }
}

/// `e` with the control characters of its text escaped (`\u{1b}`), as a log line's are.
fn escaped(e: ConfigError) -> ConfigError {
    let clean = |s: String| crate::logging::one_line(&s, usize::MAX);
    match e {
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key: clean(key),
            message: clean(message),
        },
        ConfigError::Syntax { path, message } => ConfigError::Syntax {
            path,
            message: clean(message),
        },
        e => e,
    }
}

/// The line an error begins with (`line N: ...`), if any.
fn line_said(e: &ConfigError) -> Option<usize> {
    let said = match e {
        ConfigError::Invalid { key, .. } => key,
        ConfigError::Syntax { message, .. } => message,
        _ => return None,
    };
    said.strip_prefix("line ")?.split(':').next()?.parse().ok()
}

/// Top-level sections whose block can be left out with nothing else in the file depending
/// on it being there (`cluster` cannot: a `scope: cluster` limit needs it; `services`
/// neither: without it every service would be said missing).
const SECTIONS_LEFT_OUT: [&str; 6] = [
    "breaker",
    "timeouts",
    "limits",
    "pool",
    "rate_limit",
    "health_check",
];

/// Top-level settings whose value can be left out when it is of the wrong type, with
/// nothing else in the file depending on it (`listen` and `admin` cannot: backends are
/// checked against them; nor `request_id`: `access_log_fields` may list it, and a review
/// was told it was off).
const SETTINGS_LEFT_OUT: [&str; 11] = [
    "workers",
    "pin_workers",
    "access_log",
    "access_log_format",
    "dns_refresh",
    "busy_poll",
    "splice",
    "ignore_client_abort",
    "rate_limit_headers",
    "rate_limit_table",
    "trusted_proxies",
];

/// The blocks that could be left out when `e` says an unknown key alone, best first, each
/// as its key's line and the key: a top-level one (`line 2: unknown field `timeout`...`),
/// or one inside a section of [`SECTIONS_LEFT_OUT`] (`line 3: breaker: unknown field
/// ...`); or a value of the wrong type in such a section or under a key of
/// [`SETTINGS_LEFT_OUT`] (`line 2: workers: invalid type: ...`: the reading stopped at the
/// first, and an operator review fixed `workers: two` and `pin_workers: maybe` in two runs
/// of `--check`). In a section written as a block the key's own lines come first, then
/// the whole section's: leaving the section out hid its other errors (`cooldown: 5
/// seconds` under a `failure_treshold:` typo, an operator review).
fn keys_to_leave_out<'e>(e: &'e ConfigError, text: &str) -> Vec<(usize, &'e str)> {
    let ConfigError::Syntax { message, .. } = e else {
        return Vec::new();
    };
    let Some((line, rest)) = message
        .strip_prefix("line ")
        .and_then(|m| m.split_once(": "))
    else {
        return Vec::new();
    };
    let Ok(line) = line.parse::<usize>() else {
        return Vec::new();
    };
    if let Some(unknown) = rest.strip_prefix("unknown field `") {
        return unknown
            .split('`')
            .next()
            .map(|key| vec![(line, key)])
            .unwrap_or_default();
    }
    let Some((key, rest)) = rest.split_once(": ") else {
        return Vec::new();
    };
    let section = key.split(['.', '[']).next().unwrap_or(key);
    let in_section = SECTIONS_LEFT_OUT.contains(&section);
    let (left_out, inner) = match rest.strip_prefix("unknown field `") {
        Some(unknown) => (
            in_section && section == key,
            unknown.split('`').next().filter(|k| !k.is_empty()),
        ),
        None => (
            in_section || SETTINGS_LEFT_OUT.contains(&section),
            key.strip_prefix(section)
                .and_then(|k| k.strip_prefix('.'))
                .and_then(|k| k.split(['.', '[']).next())
                .filter(|k| in_section && !k.is_empty()),
        ),
    };
    if !left_out {
        return Vec::new();
    }
    let lines: Vec<&str> = text.split('\n').take(line).collect();
    let Some(start) = lines.iter().rposition(|l| opens_key(l, section)) else {
        return Vec::new();
    };
    let own = inner.and_then(|k| {
        let at = lines[start + 1..]
            .iter()
            .rposition(|l| opens_key_at(l, k).is_some_and(|indent| indent > 0))?;
        Some((start + 2 + at, k))
    });
    own.into_iter().chain([(start + 1, section)]).collect()
}

/// The indentation of `line` if it opens `key` (`  "connect": ...` opens `connect` at 2).
fn opens_key_at(line: &str, key: &str) -> Option<usize> {
    let body = line.trim_start_matches(' ');
    opens_key(body, key).then_some(line.len() - body.len())
}

/// `text` with the `key` on 1-based `line` and its block (the lines after it that are
/// indented deeper, a `- ` list at its own indentation, blank lines and comments) made
/// blank, every other line where it was; None if that line does not open that key (a
/// flow-style file, say).
fn without_block(text: &str, line: usize, key: &str) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let indent = opens_key_at(lines.get(line.checked_sub(1)?)?, key)?;
    let of_the_block = |l: &&str| {
        let body = l.trim_start_matches([' ', '\t']);
        let deeper = l.len() - body.len();
        body.is_empty()
            || body.starts_with('#')
            || deeper > indent
            || (deeper == indent && (body == "-" || body.starts_with("- ")))
    };
    let end = lines[line..]
        .iter()
        .position(|l| !of_the_block(l))
        .map_or(lines.len(), |n| line + n);
    Some(
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| if (line - 1..end).contains(&i) { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The 1-based line of a top-level setting's key (`timeouts.connect`: the `connect:` in
/// the block of `timeouts:`), or of its block when the key is not written in it.
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    // (`trusted_proxies[0]`: the list's key; a review got no line.)
    let mut parts = key.split('.').map(|p| p.split('[').next().unwrap_or(p));
    let first = parts.next()?;
    let mut line = text.lines().position(|l| opens_key(l, first))? + 1;
    for part in parts {
        match key_line_under(text, line, part) {
            Some(n) => line = n,
            None => break,
        }
    }
    Some(line)
}

/// [`with_lines`] for one error.
fn with_its_line(e: ConfigError, text: &str) -> ConfigError {
    let ConfigError::Invalid { key, message } = e else {
        return e;
    };
    if !key.starts_with("services.") && !key.starts_with("line ") {
        // A top-level setting's (a review: its check named no line).
        return match top_level_line(text, &key) {
            Some(n) if !message.contains(" at line ") => ConfigError::Invalid {
                key: format!("line {n}: {key}"),
                message,
            },
            _ => ConfigError::Invalid { key, message },
        };
    }
    let service = key.strip_prefix("services.").map(|k| {
        let end = k.find(['.', '[']).unwrap_or(k.len());
        &k[..end]
    });
    // An entry of its backend list (`services.a[1]`, `services.a.backends[1].weight`): the
    // entry's own line (a review got none, or the line of `backends:`).
    let entry = key.strip_prefix("services.").and_then(|k| {
        let rest = &k[service?.len()..];
        let (field, rest) = match rest.strip_prefix(".backends") {
            Some(r) => (Some("backends"), r),
            None => (None, rest),
        };
        let index = rest.strip_prefix('[')?.split(']').next()?.parse().ok()?;
        entry_line(text, service?, field, index)
    });
    if let Some(n) = entry.filter(|_| !message.contains(" at line ")) {
        return ConfigError::Invalid {
            key: format!("line {n}: {key}"),
            message,
        };
    }
    // The service's key the error is under (`services.a.rate_limit.bursst`: an operator
    // review got no line for those), and the unknown key, looked for under it: under the
    // service alone, `breaker: {path: 1}` was found in its `health_check` (a review).
    let parent = key.strip_prefix("services.").and_then(|rest| {
        let rest = rest.get(service?.len()..)?.strip_prefix('.')?;
        Some(&rest[..rest.find(['.', '[']).unwrap_or(rest.len())])
    });
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next());
    let line = service.and_then(|s| {
        let own = *service_key_lines(text, s).first()?;
        // (A key that came by a merge key or an alias is not under the service: its line.)
        let mut under = parent
            .and_then(|p| key_line_under(text, own, p))
            .unwrap_or(own);
        // And the keys below it (`services.a.breaker.cooldown`: the `cooldown:` line in
        // the block of `breaker:`; a review got the line of `breaker:`).
        if parent.is_some() {
            let rest = key
                .strip_prefix("services.")
                .and_then(|k| k.get(service?.len()..));
            let below = rest.unwrap_or_default().split('.').skip(2);
            for part in below.map(|p| p.split('[').next().unwrap_or(p)) {
                match key_line_under(text, under, part) {
                    Some(n) => under = n,
                    None => break,
                }
            }
        }
        // A service's own error (an invalid name, an empty service): its key's line.
        Some(
            unknown
                .and_then(|u| key_line_under(text, under, u))
                .unwrap_or(under),
        )
    });
    match line {
        Some(n) if !message.contains(" at line ") => ConfigError::Invalid {
            key: format!("line {n}: {key}"),
            message,
        },
        _ => ConfigError::Invalid { key, message },
    }
}

/// The 1-based line of the first `field:` key in the block under service `name`, or on
/// the line of a flow map holding it (`a: {backends: [...], breaker: {x: 1}}`, or
/// `breaker: {x: 1}` in the service's block: operator reviews got no line for those).
fn key_line_in_service(text: &str, name: &str, field: &str) -> Option<usize> {
    key_line_under(text, *service_key_lines(text, name).first()?, field)
}

/// The 1-based line of the first `field:` key in the block under the key on line `start`
/// (or on that line, in a flow map).
fn key_line_under(text: &str, start: usize, field: &str) -> Option<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let own_line = lines.get(start - 1)?;
    if flow_map_names(own_line, field) {
        return Some(start);
    }
    let own = indent(own_line);
    for (i, l) in lines.iter().enumerate().skip(start) {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        if indent(l) <= own {
            break;
        }
        let key = l.trim_start().trim_start_matches("- ");
        let block_key = key
            .strip_prefix(field)
            .is_some_and(|r| r.trim_start().starts_with(':'));
        if block_key || flow_map_names(l, field) {
            return Some(i + 1);
        }
    }
    None
}

/// The 1-based line of entry `index` of service `name`'s backend list: under the service
/// itself (`field` None, the short form) or under its `field:` key; the list's own line
/// when it is a flow sequence (`[a, b]`).
fn entry_line(text: &str, name: &str, field: Option<&str>, index: usize) -> Option<usize> {
    let start = match field {
        None => *service_key_lines(text, name).first()?,
        Some(f) => key_line_in_service(text, name, f)?,
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let own_line = lines.get(start - 1)?;
    // A flow list on the key's line (not a `[` in a comment after it: a review).
    if own_line
        .split(" #")
        .next()
        .unwrap_or_default()
        .contains('[')
    {
        return Some(start);
    }
    let own = indent(own_line);
    let mut item_indent = None;
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(start) {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let ind = indent(l);
        // A list may sit at its key's own indent (`backends:` then `- url` under it).
        let item = l.trim_start().starts_with('-');
        if ind < own || ind == own && !item {
            break;
        }
        if item && ind == *item_indent.get_or_insert(ind) {
            if seen == index {
                return Some(i + 1);
            }
            seen += 1;
        }
    }
    None
}

/// Whether `line` holds `field:` as a key of a flow map (after `{`, `,` or a space).
fn flow_map_names(line: &str, field: &str) -> bool {
    line.contains('{')
        && line.match_indices(field).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            matches!(before, Some('{' | ',' | ' '))
                && line[at + field.len()..].trim_start().starts_with(':')
        })
}

/// 1-based line numbers of `name:` keys directly under a top-level block `services:`.
fn service_key_lines(text: &str, name: &str) -> Vec<usize> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let meaningful = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let mut found = Vec::new();
    let mut lines = text.lines().enumerate();
    let Some(_) = lines.by_ref().find(|(_, l)| {
        l.strip_prefix("services:")
            .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
    }) else {
        return found;
    };
    let mut child_indent = None;
    for (i, l) in lines {
        if !meaningful(l) {
            continue;
        }
        let ind = indent(l);
        if ind == 0 {
            break; // the next top-level key
        }
        let child = *child_indent.get_or_insert(ind);
        if ind != child {
            continue;
        }
        let key = l.trim_start().split(':').next().unwrap_or("").trim();
        if key.trim_matches(['"', '\'']) == name {
            found.push(i + 1);
        }
    }
    found
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failure_threshold: Option<u32>,
    cooldown: Option<String>,
    /// Codes (`502`) and ranges (`"502-599"`, as `/admin/config` shows them).
    failure_statuses: Option<Vec<serde_yaml_ng::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect: Option<String>,
    response: Option<String>,
    client_header: Option<String>,
    client_idle: Option<String>,
    body: Option<String>,
    drain: Option<String>,
    drain_grace: Option<String>,
    tunnel: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_head_bytes: Option<RawSize>,
    max_headers: Option<usize>,
    max_target_bytes: Option<RawSize>,
    max_body_bytes: Option<RawSize>,
    buffer_request_body: Option<RawSize>,
    min_body_rate: Option<RawSize>,
    max_connections: Option<MaxConnections>,
    max_connections_per_client: Option<MaxConnections>,
}

/// A size in bytes: a number, or a number with a unit (`64k`, `64KiB`, `8m`, `8MiB`, `1g`,
/// `1GiB`: all powers of 1024, as NGINX's `k` and `m`). An operator review wrote `64MiB`
/// and was told only "expected a whole number".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Other(serde_yaml_ng::Value),
}

/// The bytes `raw` says, or `default`; `key` names it in an error.
fn size_or(key: &str, raw: Option<&RawSize>, default: u64) -> Result<u64, ConfigError> {
    let text = match raw {
        None => return Ok(default),
        Some(RawSize::Bytes(n)) => return Ok(*n),
        Some(RawSize::Other(v)) => match v.as_str() {
            Some(t) => t.trim(),
            None => {
                let v = serde_yaml_ng::to_string(v).unwrap_or_default();
                return Err(invalid(
                    key,
                    format!("{} is not a size: write a whole number of bytes, or with k/KiB, m/MiB or g/GiB, e.g. 65536, 64KiB, 1MiB", v.trim()),
                ));
            }
        },
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        si @ ("kb" | "mb" | "gb") => {
            // Said with the spelling meant (a new user's review got only the rule).
            let meant = format!("{num}{}iB", si[..1].to_ascii_uppercase());
            return Err(invalid(
                key,
                format!("{text:?}: write {meant} (or {num}{}): sizes are in KiB, MiB or GiB, powers of 1024", &si[..1]),
            ));
        }
        _ => {
            return Err(invalid(
                key,
                format!("{text:?} is not a size: write bytes, or a whole number with k/KiB, m/MiB or g/GiB, e.g. 65536, 64KiB, 1MiB"),
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            invalid(
                key,
                format!("{text:?} is not a size: write a whole number of bytes (at most 2^64 - 1), or with k/KiB, m/MiB or g/GiB, e.g. 64KiB"),
            )
        })
}

/// [`size_or`] for a size that must fit in memory.
fn size_usize(key: &str, raw: Option<&RawSize>, default: usize) -> Result<usize, ConfigError> {
    let n = size_or(key, raw, default as u64)?;
    usize::try_from(n).map_err(|_| invalid(key, format!("{n} is out of range")))
}

/// `limits.max_connections`: a number, or `auto` (what the descriptor limit allows); also
/// `limits.max_connections_per_client` and `pool.max_requests_per_connection`, a number or
/// `off`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MaxConnections {
    Count(u64),
    Other(serde_yaml_ng::Value),
}

impl MaxConnections {
    /// `raw`, the value of `key`: a count from 1 to `max`, `off` (as `/admin/config` says
    /// it, and as `rate_limit: off` reads) for none, or `default` when absent; anything
    /// else is refused with `rule`.
    fn count_or_off(
        raw: Option<&MaxConnections>,
        key: &str,
        (max, default): (u64, Option<u32>),
        rule: &str,
    ) -> Result<Option<u32>, ConfigError> {
        match raw {
            None => Ok(default),
            Some(v) if v.is_off() => Ok(None),
            Some(&MaxConnections::Count(n)) if (1..=max.min(u32::MAX.into())).contains(&n) => {
                Ok(Some(n as u32))
            }
            Some(other) => Err(other.refused(key, rule)),
        }
    }

    /// `off` (any case), as `/admin/config` says it and `rate_limit: off` reads, or `false`.
    fn is_off(&self) -> bool {
        match self {
            MaxConnections::Other(serde_yaml_ng::Value::String(s)) => {
                s.trim().eq_ignore_ascii_case("off")
            }
            MaxConnections::Other(serde_yaml_ng::Value::Bool(b)) => !b,
            MaxConnections::Count(_) | MaxConnections::Other(_) => false,
        }
    }

    /// The error for this value of `key`, outside what `rule` allows.
    fn refused(&self, key: &str, rule: &str) -> ConfigError {
        let v = match self {
            MaxConnections::Count(n) => n.to_string(),
            MaxConnections::Other(v) => serde_yaml_ng::to_string(v).unwrap_or_default(),
        };
        let v = v.trim();
        // `1e3` and `50.0` are numbers, but not counts (an operator review was told that
        // 1000.0 is out of range).
        let what = match v.parse::<f64>() {
            Ok(f) if f.fract() != 0.0 || v.contains(['.', 'e', 'E']) => "is not a whole number",
            Ok(_) => "is out of range",
            Err(_) => "is not a number",
        };
        invalid(key, format!("{v} {what}: {rule}"))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    max_idle_per_backend: Option<usize>,
    idle_timeout: Option<String>,
    max_requests_per_connection: Option<MaxConnections>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    /// A list of URLs or `{url, weight}` maps, read by [`backend_entry`] (a single URL
    /// was told `expected a sequence` at the service: an operator review).
    backends: serde_yaml_ng::Value,
    /// Read on its own, so that its errors name `services.NAME.breaker` (a review saw an
    /// unknown key in it reported at the service, with a hint about the service's form).
    breaker: Option<serde_yaml_ng::Value>,
    rate_limit: Option<serde_yaml_ng::Value>,
    /// A number, or `off` (as `rate_limit: off`; a review was told `expected u64`).
    max_in_flight: Option<serde_yaml_ng::Value>,
    /// `true` or `false` (a review was told `expected a boolean` without the key).
    websocket: Option<serde_yaml_ng::Value>,
    encoded_slashes: Option<serde_yaml_ng::Value>,
    /// Read on its own, so that its errors name `services.NAME.timeouts` (see
    /// [`raw_service_timeouts`]).
    timeouts: Option<serde_yaml_ng::Value>,
    health_check: Option<serde_yaml_ng::Value>,
}

/// A service's own timeouts: those of the backend side. The client's (`client_header`,
/// `client_idle`) run before a request is routed, and `drain` is the process's.
#[derive(Debug, Default)]
struct RawServiceTimeouts {
    connect: Option<String>,
    response: Option<String>,
    body: Option<String>,
    tunnel: Option<String>,
}

/// Reads `services.NAME.timeouts` (`key`), with errors that name the key and say what to
/// write (through serde a review was told of `RawServiceTimeouts` and that a service is a
/// list of URLs). A number is taken as text, so that a duration without its unit is told
/// so as at the top level.
fn raw_service_timeouts(
    key: &str,
    value: &serde_yaml_ng::Value,
) -> Result<RawServiceTimeouts, ConfigError> {
    use serde_yaml_ng::Value;
    let mut raw = RawServiceTimeouts::default();
    let map = match value {
        Value::Null => return Ok(raw),
        Value::Mapping(m) => m,
        _ => {
            return Err(invalid(
                key,
                "expected a map of its settings, e.g. {response: 2m, body: 10m}",
            ))
        }
    };
    for (k, v) in map {
        let name = k.as_str().unwrap_or_default();
        let slot = match name {
            "connect" => &mut raw.connect,
            "response" => &mut raw.response,
            "body" => &mut raw.body,
            "tunnel" => &mut raw.tunnel,
            "client_header" | "client_idle" | "drain" | "drain_grace" => {
                return Err(invalid(
                    format!("{key}.{name}"),
                    "is the process's, not a service's: set it under the top-level `timeouts` (a service sets connect, response, body and tunnel)",
                ))
            }
            _ => {
                let what = serde_yaml_ng::to_string(k).unwrap_or_default();
                return Err(invalid(
                    key,
                    format!("unknown setting {:?}: a service sets connect, response, body and tunnel", what.trim()),
                ));
            }
        };
        *slot = match v {
            Value::Null => None,
            Value::String(t) => Some(t.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => {
                return Err(invalid(
                    format!("{key}.{name}"),
                    "expected a duration, e.g. 500ms, 2s, 1m",
                ))
            }
        };
    }
    Ok(raw)
}

/// `; timeouts: response 5m, body 10m` for a service's timeouts that differ from the
/// top-level ones (empty if none does), for the summary.
fn own_timeouts_text(own: &Timeouts, top: &Timeouts) -> String {
    let own: Vec<String> = [
        ("connect", own.connect, top.connect),
        ("response", own.response, top.response),
        ("body", own.body, top.body),
        ("tunnel", own.tunnel, top.tunnel),
    ]
    .into_iter()
    .filter(|(_, a, b)| a != b)
    .map(|(name, d, _)| format!("{name} {}", duration_text(d)))
    .collect();
    match own.is_empty() {
        true => String::new(),
        false => format!("; timeouts: {}", own.join(", ")),
    }
}

/// `top` with a service's own timeouts over it; `key` is `services.NAME.timeouts`.
/// A service's `timeouts` over the top-level ones; each that fails is said in `errs` and
/// the top-level one kept.
fn service_timeouts(
    key: &str,
    raw: Option<&RawServiceTimeouts>,
    top: &Timeouts,
    errs: &mut Errors,
) -> Timeouts {
    let Some(t) = raw else {
        return *top;
    };
    let mut one = |name: &str, v: Option<&String>, top: Duration| {
        errs.or(duration_or(&format!("{key}.{name}"), v, top), top)
    };
    Timeouts {
        connect: one("connect", t.connect.as_ref(), top.connect),
        response: one("response", t.response.as_ref(), top.response),
        body: one("body", t.body.as_ref(), top.body),
        tunnel: one("tunnel", t.tunnel.as_ref(), top.tunnel),
        ..*top
    }
}

/// A service's `true`/`false` key (absent: false), with an error that names it.
fn service_flag(key: &str, v: Option<&serde_yaml_ng::Value>) -> Result<bool, ConfigError> {
    match v {
        None | Some(serde_yaml_ng::Value::Null) => Ok(false),
        Some(serde_yaml_ng::Value::Bool(b)) => Ok(*b),
        // Quoted, it is a string (an operator review was told `"'true'"`, YAML's own
        // quoting quoted again).
        Some(serde_yaml_ng::Value::String(s)) if s == "true" || s == "false" => Err(invalid(
            key,
            format!("\"{s}\" is a string, not true or false: write {s} without quotes"),
        )),
        Some(serde_yaml_ng::Value::String(s)) => {
            Err(invalid(key, format!("{s:?} is not true or false")))
        }
        Some(v) => {
            let what = serde_yaml_ng::to_string(v).unwrap_or_default();
            Err(invalid(
                key,
                format!("{:?} is not true or false", what.trim_end()),
            ))
        }
    }
}

/// Parses `500ms`, `2s`, `1m`, `1h` into a duration.
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let v = v.trim();
    let too_long = || invalid(key, format!("duration {v:?} is too long: use at most 24h"));
    // `7 s` (an operator review was told the unit was wrong), `30 seconds` (a later one
    // was told to write `30seconds`, which was refused in turn).
    if v.contains(char::is_whitespace) {
        let e = match respelled(v).filter(|fix| parse_duration(key, fix).is_ok()) {
            Some(fix) => format!("invalid duration {v:?}: write it without spaces, e.g. {fix}"),
            None => format!("invalid duration {v:?}: write it without spaces, a whole number with a unit of ms, s, m or h, e.g. 500ms, 2s, 1m, 1m30s"),
        };
        return Err(invalid(key, e));
    }
    // Whole numbers with units, each unit smaller than the one before: `1m30s`, as NGINX
    // and Go read it (an operator review was told the unit was wrong).
    let mut rest = v;
    let mut total: u64 = 0;
    let mut last_unit = u64::MAX;
    loop {
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let n: u64 = match num.parse() {
            Ok(n) => n,
            // All digits, but more than a u64 holds: too long, not malformed (an operator
            // review was told to write a whole number with a unit, which it was).
            Err(_) if !num.is_empty() => return Err(too_long()),
            Err(_) => {
                return Err(invalid(
                    key,
                    format!(
                    "invalid duration {v:?}: write a whole number with a unit, e.g. 500ms, 2s, 1m"
                ),
                ))
            }
        };
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, after) = tail.split_at(unit_len);
        let ms_per_unit: u64 = match unit {
            // `1.5s` (an operator review was told the unit was wrong).
            _ if unit.starts_with(['.', ',']) => {
                let fix = if tail.ends_with("ms") {
                    "write whole milliseconds"
                } else {
                    "use a smaller unit, e.g. 1500ms for 1.5s"
                };
                return Err(invalid(
                    key,
                    format!("invalid duration {v:?}: fractions are not taken; {fix}"),
                ));
            }
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                // Another spelling, not this one again (that would never end).
                let e = match respelled(v).filter(|fix| fix != v && parse_duration(key, fix).is_ok()) {
                    Some(fix) => format!("invalid duration {v:?}: the unit must be ms, s, m or h: write {fix}"),
                    None => format!("invalid duration {v:?}: the unit must be ms, s, m or h, e.g. 500ms, 2s, 1m, 1m30s"),
                };
                return Err(invalid(key, e));
            }
        };
        if ms_per_unit >= last_unit {
            return Err(invalid(
                key,
                format!(
                    "invalid duration {v:?}: give each unit once, larger ones first, e.g. 1h30m, 1m30s, 2s500ms"
                ),
            ));
        }
        last_unit = ms_per_unit;
        total = n
            .checked_mul(ms_per_unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(too_long)?;
        if after.is_empty() {
            break;
        }
        rest = after;
    }
    // Bounded so that `Instant + timeout` can never overflow at run time.
    if total > MAX_DURATION.as_millis() as u64 {
        return Err(too_long());
    }
    Ok(Duration::from_millis(total))
}

/// `v` with its spaces taken out and each unit spelled as the config takes it (`30
/// seconds` as `30s`, `2mins` as `2m`); None if a unit is not one of those words.
fn respelled(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut word = String::new();
    let unit = |w: &str| -> Option<&'static str> {
        Some(match w.to_ascii_lowercase().as_str() {
            "ms" | "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => "ms",
            "s" | "sec" | "secs" | "second" | "seconds" => "s",
            "m" | "min" | "mins" | "minute" | "minutes" => "m",
            "h" | "hr" | "hrs" | "hour" | "hours" => "h",
            _ => return None,
        })
    };
    for c in v.chars().filter(|c| !c.is_whitespace()) {
        if c.is_ascii_digit() {
            if !word.is_empty() {
                out.push_str(unit(&word)?);
                word.clear();
            }
            out.push(c);
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        out.push_str(unit(&word)?);
    }
    Some(out)
}

/// A duration as one would write it in the config: in the largest unit that divides it
/// (`30s`, `1500ms`, `2m`), not always in milliseconds.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

fn duration_or(key: &str, v: Option<&String>, default: Duration) -> Result<Duration, ConfigError> {
    let d = match v {
        Some(s) => parse_duration(key, s)?,
        None => default,
    };
    if d.is_zero() {
        // The value it was given, as every other check says it (an operator review).
        let given = v.map_or("0s", |s| s.as_str());
        return Err(invalid(
            key,
            format!("{given:?} is out of range: must be greater than zero, e.g. 2s"),
        ));
    }
    Ok(d)
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` with the host resolved once, IPv4
/// first (`localhost:8000` binds 127.0.0.1, as NGINX and HAProxy take it; an operator
/// review was refused it).
fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = v.parse() {
        return Ok(addr);
    }
    let fix = "write IP:PORT or HOST:PORT, e.g. 127.0.0.1:8000, 0.0.0.0:8000 or localhost:8000";
    match split_authority(v) {
        Ok((host, port)) if v.contains(':') && !host.is_empty() && host_is_name(host) => {
            lookup(host, port).map_err(|e| invalid(key, format!("{e}: {fix}")))
        }
        _ => Err(invalid(key, format!("invalid address {v:?}: {fix}"))),
    }
}

/// A DNS name as `listen` may give it: labels of letters, digits and hyphens, not ending in
/// a number ([`ends_in_a_number`]).
fn host_is_name(host: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label_ok) && !ends_in_a_number(host)
}

/// Whether every resolver and URL parser reads `host` as an IPv4 address: its last label
/// (before a trailing dot) is decimal digits or `0x` and hex digits (WHATWG URL's "ends in
/// a number"). glibc then takes the shorthand forms too, so `10.1` is 10.0.0.1 and
/// `0x7f.1` is 127.0.0.1; the config takes only the four-part decimal form, so the address
/// meant is the address written.
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .get(..2)
        .filter(|p| p.eq_ignore_ascii_case("0x"))
        .map(|_| &last[2..]);
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// Whether two listeners would fight over one port: same port (not 0), and the same IP or
/// either one the wildcard address.
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.port() != 0 && {
        let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
        a == b || a.is_unspecified() || b.is_unspecified()
    }
}

/// Service names are URL path segments: `^[a-z0-9][a-z0-9-]{0,62}$`.
pub fn valid_service_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name[0] != b'-'
        && name
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Services [`Config::summary`] lists one by one (at start and in `--check`); the rest are
/// counted.
const SUMMARY_SERVICES: usize = 100;

/// Parses `http://host[:port][/prefix]` and resolves the host once.
pub fn parse_backend_url(key: &str, url: &str) -> Result<BackendUrl, ConfigError> {
    // Quoted back with its userinfo masked: a password with a space in it went out whole
    // to the log and `/admin/config` (a review).
    let quoted = crate::redact::url(url);
    let fix = "write it as http://HOST:PORT or http://HOST:PORT/prefix";
    // Schemes are case-insensitive (RFC 3986 §3.1): `HTTP://` is http.
    let scheme = url.get(..7).filter(|s| s.eq_ignore_ascii_case("http://"));
    let rest = if let Some(r) = scheme.and_then(|_| url.get(7..)) {
        r
    } else if url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    {
        return Err(invalid(
            key,
            format!("{quoted:?}: https backends are not supported; use http:// (TLS to backends is not implemented)"),
        ));
    } else {
        return Err(invalid(
            key,
            format!("{quoted:?} is not an http URL: {fix}"),
        ));
    };
    // The path goes into every request head sent upstream: a space, a control character
    // (CR/LF would start a new header line) or a non-ASCII byte must never get there.
    if let Some((i, b)) = rest
        .bytes()
        .enumerate()
        .find(|(_, b)| !b.is_ascii_graphic())
    {
        // `- http://a` then ` - http://b` one column deeper: YAML reads the second item as
        // the first one's continued text (an operator review).
        let hint = if rest.contains(" - http") {
            " (a `- ` item indented deeper than the one above it is read as part of it: line the items up)"
        } else {
            ""
        };
        return Err(invalid(
            key,
            format!("{quoted:?}: byte 0x{b:02x} at position {} is a space, control or non-ASCII character: percent-encode it (e.g. %20) or remove it{hint}", i + "http://".len()),
        ));
    }
    let slash = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    if let Some(at) = path.find(['?', '#']) {
        // Rejected rather than stripped: the client's own query is what is appended, and a
        // silently dropped part of a URL is a surprise found in production.
        return Err(invalid(
            key,
            format!("{quoted:?}: a backend URL cannot carry a query string or fragment ({:?}): the client's query is passed on as it is; remove it", &path[at..]),
        ));
    }
    if authority.contains('@') {
        return Err(invalid(
            key,
            format!("{quoted:?}: a backend URL cannot carry a user or password (the gateway does not authenticate to backends): {fix}"),
        ));
    }
    if authority.is_empty() {
        return Err(invalid(key, format!("{quoted:?} names no host: {fix}")));
    }
    check_prefix(path).map_err(|why| invalid(key, format!("{quoted:?}: {why}")))?;
    let (host, port) = split_authority(authority).map_err(|e| {
        invalid(
            key,
            match e {
                AuthorityError::Port(p) => {
                    format!("{quoted:?}: port {p:?} is not a number 1-65535")
                }
                AuthorityError::Ipv6 => {
                    format!("{quoted:?}: an IPv6 address goes in brackets, e.g. http://[::1]:8001")
                }
            },
        )
    })?;
    if host.is_empty() {
        return Err(invalid(key, format!("{quoted:?} names no host: {fix}")));
    }
    if port == 0 {
        return Err(invalid(
            key,
            format!("{quoted:?}: port 0 is not a backend port"),
        ));
    }
    if ends_in_a_number(host) && host.parse::<std::net::Ipv4Addr>().is_err() {
        // The resolver would take `10.1` as 10.0.0.1 and `010.0.0.1` as 8.0.0.1 (octal).
        return Err(invalid(
            key,
            format!("{quoted:?}: {host:?} reads as a shortened or octal/hex IPv4 address: write the address as four decimal numbers (e.g. http://10.0.0.1:8080), or a host name whose last label is not a number"),
        ));
    }
    let addr = lookup(host, port).map_err(|e| invalid(key, format!("{quoted:?}: {e}")))?;
    let path_prefix = path.trim_end_matches('/').to_string();
    Ok(BackendUrl {
        // `http://h:1` and `http://h:1/` are one backend (one breaker, one pool slot).
        url: format!("http://{authority}{path_prefix}"),
        addr,
        authority: authority.to_string(),
        path_prefix,
        weight: 1,
    })
}

/// Reads one entry of a service's backend list (`key`: `services.NAME[i]`): a URL, or a
/// map with `url` and an optional `weight`.
fn backend_entry(key: &str, value: &serde_yaml_ng::Value) -> Result<BackendUrl, ConfigError> {
    use serde_yaml_ng::Value;
    const FORM: &str = "a backend is a URL, or a map {url: http://HOST:PORT, weight: N}";
    let map = match value {
        Value::String(url) => return parse_backend_url(key, url),
        Value::Mapping(m) => m,
        other => {
            let what = serde_yaml_ng::to_string(other).unwrap_or_default();
            return Err(invalid(
                key,
                format!("{:?} is not a backend: {FORM}", what.trim()),
            ));
        }
    };
    let (mut url, mut weight) = (None, None);
    for (k, v) in map {
        match k.as_str() {
            Some("url") => url = Some(v),
            Some("weight") => weight = Some(v),
            // `- http://127.0.0.1:` is read as a map with that key (an operator review
            // was told only of a map).
            Some(k) if v.is_null() && k.get(..4).is_some_and(|h| h.eq_ignore_ascii_case("http")) => {
                return Err(invalid(
                    key,
                    format!("{k:?} is read as a map: a URL ending in ':' needs its port, http://127.0.0.1:8001"),
                ))
            }
            _ => {
                let what = serde_yaml_ng::to_string(k).unwrap_or_default();
                return Err(invalid(
                    key,
                    format!("unknown key {:?}: {FORM}", what.trim()),
                ));
            }
        }
    }
    let mut backend = match url {
        Some(Value::String(u)) => parse_backend_url(&format!("{key}.url"), u)?,
        Some(_) => {
            return Err(invalid(
                format!("{key}.url"),
                "is not a URL: write it as http://HOST:PORT",
            ))
        }
        None => return Err(invalid(key, format!("has no `url`: {FORM}"))),
    };
    if let Some(w) = weight.filter(|w| !w.is_null()) {
        backend.weight = match w.as_u64() {
            Some(n) if (1..=u64::from(MAX_WEIGHT)).contains(&n) => n as u32,
            n => {
                let what_text = serde_yaml_ng::to_string(w).unwrap_or_default();
                let problem = match n {
                    Some(0) => " (to take a backend out of rotation, remove it from the list: its requests in flight finish)",
                    _ => "",
                };
                let what = if n.is_some() || w.as_i64().is_some() {
                    "is out of range"
                } else if w.is_f64() {
                    "is not a whole number"
                } else if w.as_str().is_some_and(|t| t.trim().parse::<u64>().is_ok()) {
                    // `"3"`, or `007` (YAML reads a leading zero as text): a review was
                    // told they were not whole numbers.
                    "is text, not a number: write it without quotes or leading zeros"
                } else {
                    "is not a number"
                };
                let sep = if what.contains(':') { ";" } else { ":" };
                return Err(invalid(
                    format!("{key}.weight"),
                    format!(
                        "{} {what}{sep} use 1 to {MAX_WEIGHT}{problem}",
                        what_text.trim()
                    ),
                ));
            }
        };
    }
    Ok(backend)
}

/// A backend's path prefix goes in front of every path sent to it, so it must be a path a
/// strict server takes (RFC 3986 §3.3: `/`-separated segments of unreserved characters,
/// sub-delims, `:`, `@` and `%XX`) and one the router would take from a client
/// ([`crate::router::path_is_safe`]: no dot segment in any encoding, which a server would
/// resolve past the prefix, no `%2f`, no `%00`). `"`, `\\`, `{` and the like were passed
/// on as they were, and every request then got a 400, which opens no circuit (an
/// operator's review).
fn check_prefix(path: &str) -> Result<(), String> {
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let ok = match b {
            b'%' => {
                bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
            }
            b'/' | b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
            | b'+' | b',' | b';' | b'=' | b':' | b'@' => true,
            _ => b.is_ascii_alphanumeric(),
        };
        if !ok {
            return Err(format!(
                "{:?} in the path is not allowed there: percent-encode it (e.g. %{b:02X}) or remove it",
                b as char
            ));
        }
    }
    if !crate::router::path_is_safe(path) {
        return Err(
            "the gateway refuses this path from clients as unsafe (a . or .. segment, in any encoding, %2f or %00): write the path it means"
                .into(),
        );
    }
    Ok(())
}

/// Why an authority could not be split.
#[derive(Debug, PartialEq)]
enum AuthorityError<'a> {
    /// The port is not a number 1-65535.
    Port(&'a str),
    /// An IPv6 address without brackets, or a bracket not closed.
    Ipv6,
}

/// `host[:port]` (IPv6 literals in brackets) as host and port (80 when absent, for a name,
/// an IPv4 or an IPv6 address alike).
fn split_authority(authority: &str) -> Result<(&str, u16), AuthorityError<'_>> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(AuthorityError::Ipv6)? + 1;
        match &authority[end..] {
            "" => (&authority[..end], None),
            rest => match rest.strip_prefix(':') {
                Some(p) => (&authority[..end], Some(p)),
                None => return Err(AuthorityError::Ipv6),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => return Err(AuthorityError::Ipv6),
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    match port {
        None => Ok((host, 80)),
        Some(p) => p
            .parse()
            .map(|n| (host, n))
            .map_err(|_| AuthorityError::Port(p)),
    }
}

thread_local! {
    /// A name failed to resolve on this thread since [`validate`] began: it reads no more
    /// services, since with the resolver down each lookup may wait for its timeout.
    static LOOKUP_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Resolves `host`, preferring IPv4 for names like `localhost` that resolve to both (local
/// backends commonly bind 127.0.0.1 only).
fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host_for_lookup, port)
        .to_socket_addrs()
        .map_err(|e| {
            LOOKUP_FAILED.with(|f| f.set(true));
            format!("cannot resolve {host:?}: {e}")
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

impl BackendUrl {
    /// Resolves the URL's host again (`dns_refresh`).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        let (host, port) = split_authority(&self.authority)
            .map_err(|e| format!("{e:?} in {:?}", self.authority))?;
        lookup(host, port)
    }
}

/// A `breaker` map's settings over `base`; each that fails is said in `errs` and `base`'s
/// kept (a review: only the first of a map's errors was said).
fn breaker_settings(
    key: &str,
    raw: Option<&RawBreaker>,
    base: &BreakerSettings,
    errs: &mut Errors,
) -> BreakerSettings {
    let Some(raw) = raw else { return *base };
    let mut out = *base;
    if let Some(t) = raw.failure_threshold {
        if t > MAX_FAILURE_THRESHOLD {
            errs.push(invalid(
                format!("{key}.failure_threshold"),
                format!("{t} is out of range: use 0 (off) to {MAX_FAILURE_THRESHOLD}"),
            ));
        } else {
            out.failure_threshold = t;
        }
    }
    out.cooldown = errs.or(
        duration_or(
            &format!("{key}.cooldown"),
            raw.cooldown.as_ref(),
            base.cooldown,
        ),
        base.cooldown,
    );
    // An empty list is allowed on purpose: no status counts, only transport failures
    // (refused or reset connects, timeouts, broken responses) do.
    if let Some(list) = &raw.failure_statuses {
        let mut set = 0u128;
        for item in list {
            let Some((low, high)) = status_range(item) else {
                let v = match item {
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::String(t) => format!("{t:?}"),
                    _ => "an entry that is neither a number nor a string".into(),
                };
                errs.push(invalid(
                    format!("{key}.failure_statuses"),
                    format!("{v} is not a 5xx status or range: list codes from 500 to 599, or ranges such as \"502-599\""),
                ));
                continue;
            };
            for s in low..=high {
                set |= 1u128 << (s - 500);
            }
        }
        out.failure_statuses = set;
    }
    out
}

/// One entry of `failure_statuses`: a code (`503`) or an inclusive range (`"502-599"`),
/// within 500 to 599.
fn status_range(item: &serde_yaml_ng::Value) -> Option<(u16, u16)> {
    let code = |n: u64| u16::try_from(n).ok().filter(|c| (500..600).contains(c));
    let (low, high) = match item {
        serde_yaml_ng::Value::Number(n) => {
            let c = code(n.as_u64()?)?;
            (c, c)
        }
        serde_yaml_ng::Value::String(text) => {
            let (a, b) = text.split_once('-')?;
            (code(a.trim().parse().ok()?)?, code(b.trim().parse().ok()?)?)
        }
        _ => return None,
    };
    (low <= high).then_some((low, high))
}

/// The most errors reported at once.
const MAX_ERRORS: usize = 20;

/// The errors found while reading a config: a setting that fails is said and the reading
/// goes on with its default, so that one run of `--check` (or one reload) names every
/// mistake, as HAProxy's check lists every alert (operator reviews: three services'
/// mistakes took three runs, and a reload's bad duration hid its bad URL).
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    /// `r`'s value, or `fallback` with its error kept.
    fn or<T>(&mut self, r: Result<T, ConfigError>, fallback: T) -> T {
        r.unwrap_or_else(|e| {
            self.0.push(e);
            fallback
        })
    }

    fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    /// `Ok` when nothing was found; else the error, or all of them (cut to
    /// [`MAX_ERRORS`] once they are in the order of their lines, by [`with_lines`]).
    fn done(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Several(self.0)),
        }
    }
}

const NO_SERVICES: &str = "no services configured: add at least one, e.g. `services: {user-service: [http://127.0.0.1:8001]}`";

impl Config {
    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(file).map_err(|source| ConfigError::Read {
            path: file.display().to_string(),
            source,
        })?;
        let path = file.display().to_string();
        // Where the first byte that is not UTF-8 is (an operator review got the standard
        // library's words alone, with no place to look).
        let text = String::from_utf8(bytes).map_err(|e| {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            // In characters, as an editor counts (the prefix is UTF-8: a review).
            let start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&good[start..]).chars().count() + 1;
            let byte = e.as_bytes()[good.len()];
            ConfigError::Syntax {
                path: path.clone(),
                message: format!(
                    "line {line} column {column}: byte 0x{byte:02x} is not UTF-8: save the file as UTF-8"
                ),
            }
        })?;
        let mut config = Config::parse(&text).map_err(|e| in_file(e, &path))?;
        // A relative access log is the config file's neighbour, wherever the gateway was
        // started from (HAProxy's `default-path config`; an operator review's
        // `access_log: logs/a.log` failed `--check` run from another directory, and a
        // service manager starting in `/` would have written `/logs/a.log`).
        if let crate::accesslog::Sink::File(log) = &mut config.access_log {
            if log.is_relative() {
                let dir = file.parent().unwrap_or(Path::new(""));
                let joined = dir.join(&*log);
                *log = std::path::absolute(&joined).unwrap_or(joined);
            }
        }
        Ok(config)
    }

    /// Parses and validates YAML text (a leading UTF-8 byte-order mark, which some editors
    /// write, is skipped: YAML took it for a second document).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_past_keys_left_out(text).map_err(|e| with_expansion_hint(e, text))
    }

    /// [`Config::parse_as_written`], going on past an unknown top-level key, or a value of
    /// the wrong type under one that can be left out ([`keys_to_leave_out`]): the typed
    /// reading stops at the first, so the rest of the file went unread and a mistyped
    /// `timeout:` hid every other error (an operator review fixed them in two runs of
    /// `--check`). The key's block is blanked out, lines kept, and the file read again.
    fn parse_past_keys_left_out(text: &str) -> Result<Config, ConfigError> {
        let mut text = std::borrow::Cow::Borrowed(text.strip_prefix('\u{feff}').unwrap_or(text));
        let mut said = Vec::new();
        let rest = loop {
            match Config::parse_as_written(&text) {
                Err(e) if said.len() < MAX_ERRORS => {
                    // An unknown key or a wrong type is a typed error, so the file is
                    // valid YAML; if it is not without the block (a `}` at column 0 left
                    // behind, an anchor defined there), what it would say is ours, not
                    // the file's (a review): try the next block, or stop at this key.
                    // (A key given twice is said by the typed reading.)
                    let blanked = keys_to_leave_out(&e, &text)
                        .into_iter()
                        .filter_map(|(line, key)| without_block(&text, line, key))
                        .find(|t| {
                            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(t).map_or_else(
                                |e| e.to_string().contains("duplicate entry"),
                                |_| true,
                            )
                        });
                    let Some(blanked) = blanked else {
                        break Err(e);
                    };
                    said.push(e);
                    text = std::borrow::Cow::Owned(blanked);
                }
                other => break other,
            }
        };
        if said.is_empty() {
            return rest;
        }
        let mut more = 0;
        let mut add = |e: ConfigError| match e {
            ConfigError::More(n) => more += n,
            e => said.push(e),
        };
        match rest {
            Err(ConfigError::Several(all)) => all.into_iter().for_each(&mut add),
            Err(e) => add(e),
            Ok(_) => {}
        }
        if said.len() == 1 && more == 0 {
            return Err(said.remove(0));
        }
        said.sort_by_key(|e| line_said(e).unwrap_or(usize::MAX));
        if said.len() > MAX_ERRORS {
            more += said.len() - MAX_ERRORS;
            said.truncate(MAX_ERRORS);
        }
        if more > 0 {
            said.push(ConfigError::More(more));
        }
        Err(ConfigError::Several(said))
    }

    fn parse_as_written(text: &str) -> Result<Config, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // Say it is empty, not only what is missing (an operator review: a truncated file read
        // as one without services).
        let blank = |l: &str| {
            let l = l.trim();
            // A document marker, alone or with a comment after it (`--- # c`).
            let l = ["---", "..."]
                .iter()
                .find_map(|m| l.strip_prefix(m).map(str::trim_start))
                .unwrap_or(l);
            l.is_empty() || l.starts_with('#')
        };
        if text.lines().all(blank) {
            return Err(invalid(
                "services",
                format!("the file is empty (nothing but blank lines and comments): {NO_SERVICES}"),
            ));
        }
        let syntax = |e: serde_yaml_ng::Error| ConfigError::Syntax {
            path: "config".into(),
            message: plain_syntax_error(&e.to_string(), text),
        };
        let extension = |l: &str| l.starts_with("x-");
        let raw: RawConfig = if text.contains("<<") || text.lines().any(extension) {
            // YAML merge keys (`<<: *defaults`), as docker-compose and Kubernetes files use
            // them (an operator review: read as an unknown field `<<`), and top-level keys
            // named `x-...`, ignored as docker-compose ignores them, to hold the anchors.
            // Merged, the file has no lines left to name in an error, so only files with
            // one take this way.
            let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(syntax)?;
            value.apply_merge().map_err(syntax)?;
            if let serde_yaml_ng::Value::Mapping(top) = &mut value {
                top.retain(|k, _| !k.as_str().is_some_and(extension));
            }
            serde_yaml_ng::from_value(value).map_err(syntax)?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                // serde stops at the first value of the wrong type, before the parser has
                // read the rest: `workers: [1` (an unclosed list) was told it was a list
                // where a number goes (an operator review). A syntax error anywhere in
                // the file comes first.
                // (A duplicate key is no syntax error, and the typed reading says it better.)
                match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
                    Err(whole) if !whole.to_string().contains("duplicate entry") => syntax(whole),
                    _ => syntax(e),
                }
            })?
        };
        // Said with the others, at the second's line: it used to stop the reading, and hid
        // every other error in the file (an operator review).
        let twice = raw
            .services
            .as_ref()
            .and_then(|e| duplicate_service(text, e))
            .map(|(name, lines)| {
                let fix = "the second would silently replace the first; merge their backends into one entry or rename one";
                match lines {
                    Some((a, b)) => invalid(
                        format!("line {b}: services.{name}"),
                        format!("is defined twice (first on line {a}): {fix}"),
                    ),
                    None => invalid(format!("services.{name}"), format!("is defined twice: {fix}")),
                }
            });
        let validated = validate(raw);
        let Some(twice) = twice else {
            return validated.map_err(|e| with_lines(e, text));
        };
        Err(with_lines(
            match validated {
                Ok(_) => twice,
                Err(ConfigError::Several(mut all)) => {
                    all.push(twice);
                    ConfigError::Several(all)
                }
                Err(e) => ConfigError::Several(vec![e, twice]),
            },
            text,
        ))
    }

    /// Whether `addr` is this gateway's own `listen` address: the same, or an address of
    /// this host (loopback, or one of its interfaces') on its port when it listens on
    /// every interface of that address's family (`[::]` takes IPv4 too; `0.0.0.0` does not
    /// take `[::1]`: a review's false loop).
    pub fn is_own_listener(&self, addr: SocketAddr) -> bool {
        reaches(self.listen, addr)
    }

    /// Whether `addr` is this gateway's admin port, as [`Config::is_own_listener`] tells.
    pub fn is_admin_port(&self, addr: SocketAddr) -> bool {
        self.admin.is_some_and(|admin| reaches(admin, addr))
    }

    /// The index of the service a request sent to `b` would be routed to, were `b` this
    /// gateway: its path prefix read as a target (`/v1/proxy/NAME...`).
    pub fn routes_to(&self, b: &BackendUrl) -> Option<usize> {
        let target = format!("{}/", b.path_prefix);
        let r = crate::router::route(&target).ok()?;
        self.services
            .iter()
            .position(|s| s.name.as_bytes() == r.service)
    }

    /// A cycle of services whose backends are this gateway itself with a path prefix that
    /// routes to the next service (`a -> http://127.0.0.1:8000/v1/proxy/a`), as (service,
    /// URL) steps; `None` when there is none. Such a request goes round until the
    /// connection limits stop it, taking every descriptor on the way (an operator review:
    /// `--check` passed it).
    fn proxy_loop(&self) -> Option<Vec<(String, String)>> {
        // Each service's steps to another service through this gateway.
        let next = |svc: &ServiceConfig| -> Vec<(usize, String)> {
            svc.backends
                .iter()
                .filter(|b| self.is_own_listener(b.addr))
                .filter_map(|b| Some((self.routes_to(b)?, b.url.clone())))
                .collect()
        };
        // Depth-first from each service, along the path taken so far.
        fn walk(
            at: usize,
            path: &mut Vec<(usize, String)>,
            on_path: &mut Vec<bool>,
            done: &mut Vec<bool>,
            next: &dyn Fn(usize) -> Vec<(usize, String)>,
        ) -> Option<usize> {
            if on_path[at] {
                return Some(at);
            }
            if done[at] {
                return None;
            }
            on_path[at] = true;
            for (to, url) in next(at) {
                path.push((at, url));
                if let Some(start) = walk(to, path, on_path, done, next) {
                    return Some(start);
                }
                path.pop();
            }
            on_path[at] = false;
            done[at] = true;
            None
        }
        let n = self.services.len();
        let (mut on_path, mut done) = (vec![false; n], vec![false; n]);
        let step = |i: usize| next(&self.services[i]);
        for i in 0..n {
            let mut path = Vec::new();
            if let Some(start) = walk(i, &mut path, &mut on_path, &mut done, &step) {
                let from = path.iter().position(|(s, _)| *s == start).unwrap_or(0);
                return Some(
                    path[from..]
                        .iter()
                        .map(|(s, url)| (self.services[*s].name.clone(), url.clone()))
                        .collect(),
                );
            }
        }
        None
    }

    /// The checks of the config as a whole, each error said: no backend on the admin port
    /// (the admin API has no authentication, and it would answer through the public
    /// listener: an operator review's `--check` passed it in silence), and no services that
    /// loop through this gateway. A reload runs them again on the `listen` and `admin` in
    /// effect, which only a restart changes (a review passed a backend on the running admin
    /// port by a reload that also changed `admin`).
    pub fn check_whole(&self) -> Result<(), ConfigError> {
        let mut errs = Errors::default();
        for svc in &self.services {
            for b in svc.backends.iter().filter(|b| self.is_admin_port(b.addr)) {
                errs.push(invalid(
                    format!("services.{}", svc.name),
                    format!(
                        "backend {} is this gateway's admin port ({}): the admin API, which has no authentication, would answer through the public listener; point the backend at the service's real address",
                        b.url,
                        self.admin.map_or(String::new(), |a| a.to_string()),
                    ),
                ));
            }
        }
        if let Some(cycle) = self.proxy_loop() {
            let first = &cycle[0];
            let path = cycle
                .iter()
                .map(|(svc, url)| format!("{svc} -> {url}"))
                .collect::<Vec<_>>()
                .join(" -> ");
            errs.push(invalid(
                format!("services.{}", first.0),
                format!(
                    "its requests would loop through this gateway without end: {path} -> {}; point the backend at the service's real address",
                    first.0
                ),
            ));
        }
        errs.done()
    }

    /// Whether the access log's fields name request headers ([`crate::accesslog::Kept`]).
    pub fn logs_headers(&self) -> bool {
        self.access_log_fields.iter().any(|f| f.is_kept())
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// `--check`: whether the access log file can be opened for appending, as the gateway
    /// will at start. An existing file is opened without truncating it; for a missing one
    /// the directory is checked for write access, so that `--check` creates nothing.
    pub fn check_access_log(&self) -> Result<(), ConfigError> {
        let crate::accesslog::Sink::File(path) = &self.access_log else {
            return Ok(());
        };
        let opened = match std::fs::OpenOptions::new().append(true).open(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                writable_dir(dir).map_err(|e| crate::accesslog::missing_dir_named(path, e))
            }
            other => other.map(drop),
        };
        opened.map_err(|e| {
            invalid(
                "access_log",
                format!(
                    "cannot open the access log {}: {e}: fix the path or its permissions, or use stdout or off",
                    path.display()
                ),
            )
        })
    }

    /// A human summary, printed by `--check` and at startup.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = fmt::Write::write_fmt(
            &mut s,
            format_args!(
                "listen {} | workers {} (pinned: {}) | max connections {} | admin {} | access log {} | timeouts connect {} response {}\n",
                self.listen,
                self.workers,
                self.pin_workers,
                self.limits
                    .max_connections
                    .map_or("auto".to_string(), |n| n.to_string()),
                self.admin.map_or("off".to_string(), |a| a.to_string()),
                self.access_log,
                duration_text(self.timeouts.connect),
                duration_text(self.timeouts.response),
            ),
        );
        for svc in self.services.iter().take(SUMMARY_SERVICES) {
            let urls: Vec<String> = svc
                .backends
                .iter()
                .map(|b| match b.weight {
                    1 if svc.backends.iter().all(|b| b.weight == 1) => b.url.clone(),
                    w => format!("{} weight {w}", b.url),
                })
                .collect();
            let _ =
                fmt::Write::write_fmt(
                    &mut s,
                    format_args!(
                    "service {} -> [{}] (breaker: {}; rate limit: {}; max in flight: {}{}{}{}{})\n",
                    svc.name,
                    urls.join(", "),
                    match svc.breaker.failure_threshold {
                        0 => "off".to_string(),
                        n => format!(
                            "{n} {}, cooldown {}",
                            crate::logging::plural(n.into(), "failure", "failures"),
                            duration_text(svc.breaker.cooldown)
                        ),
                    },
                    svc.rate_limit.as_ref().map_or("off".to_string(), |l| l.to_string()),
                    svc.max_in_flight.map_or("off".to_string(), |n| n.to_string()),
                    if svc.websocket { "; websocket" } else { "" },
                    if svc.encoded_slashes { "; encoded slashes" } else { "" },
                    own_timeouts_text(&svc.timeouts, &self.timeouts),
                    svc.health_check.as_ref().map_or(String::new(), |c| format!(
                        "; health check {} every {}, timeout {}, out after {}, back after {}",
                        c.what(),
                        duration_text(c.interval),
                        duration_text(c.timeout),
                        c.fall,
                        c.rise
                    )),
                ),
                );
        }
        if let Some(more) = self
            .services
            .len()
            .checked_sub(SUMMARY_SERVICES)
            .filter(|&n| n > 0)
        {
            // A scale review's 5 000 services made `--check` print 2.2 MB, and the start
            // as many log lines.
            let _ = fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "... and {more} more {} (all of them in /admin/config)\n",
                    crate::logging::plural(more as u64, "service", "services")
                ),
            );
        }
        // Whose forwarding fields are believed (an operator review trusted the address its
        // NGINX listened on, not the one it connected from, and nothing showed the list).
        if !self.admission.trusted_proxies.is_empty() {
            let nets = crate::admission::cidr_list(&self.admission.trusted_proxies);
            let _ = fmt::Write::write_fmt(&mut s, format_args!("trusted proxies: {nets}\n"));
        }
        let table = crate::admission::Registry::table_bytes(self);
        if table > 0 {
            let _ = fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "rate-limit table: {} cells, {} KiB (keyed budgets share it, 4 cells per bucket; a key whose bucket is full takes the cell of the budget nearest to full)\n",
                    self.admission.table_cells,
                    table / 1024
                ),
            );
        }
        if let Some(c) = &self.cluster {
            let _ = fmt::Write::write_fmt(
                &mut s,
                format_args!(
                    "cluster {} on {} (open quorum {})\n",
                    c.name,
                    crate::cluster::redact(&c.redis),
                    c.open_quorum
                ),
            );
        }
        s
    }
}

/// Whether a connection to `addr` reaches a socket listening on `own`: the same address, or
/// an address of this host (loopback, or one of its interfaces') on its port when `own` is
/// every interface of that address's family; `addr` unspecified is loopback.
fn reaches(own: SocketAddr, addr: SocketAddr) -> bool {
    let (at, ip) = (own.ip(), addr.ip().to_canonical());
    // A connection to `0.0.0.0` or `[::]` goes to this host's loopback (a review's backend
    // `http://0.0.0.0:PORT` reached an admin on 127.0.0.1 unrefused).
    let ip = match ip {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let every = match at {
        std::net::IpAddr::V4(v4) => v4.is_unspecified() && ip.is_ipv4(),
        std::net::IpAddr::V6(v6) => v6.is_unspecified(),
    };
    own.port() != 0
        && addr.port() == own.port()
        && (ip == at.to_canonical() || (every && (ip.is_loopback() || is_this_hosts(ip))))
}

/// Whether `ip` is one of this host's own addresses: a socket can be bound to it (an
/// address of another host cannot be, `EADDRNOTAVAIL`). A loop through an interface's
/// address (`http://10.0.0.5:8000/v1/proxy/a` on that host, listening on `0.0.0.0`) was
/// missed where one through `127.0.0.1` was refused.
fn is_this_hosts(ip: std::net::IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// `access(2)`: may this process create files in `dir`?
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let r = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();
    // (Port 0 in place of a bad `listen`: no backend or admin port is taken for it.)
    let listen = errs.or(
        parse_addr("listen", raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN)),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    let workers = match raw.workers.unwrap_or(0) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > 1024 => {
            errs.push(invalid(
                "workers",
                format!("{n} is too many: use 0 (one per core) or 1-1024"),
            ));
            1
        }
        n => n,
    };
    let admin = raw.admin.as_deref().map(|a| parse_addr("admin", a));
    let admin = errs.or(admin.transpose(), None);
    if let Some(a) = admin.filter(|a| listen.port() != 0 && same_port(*a, listen)) {
        errs.push(invalid(
            "admin",
            format!("{a} is the gateway's own `listen` address {listen}: give the admin API another port, e.g. 127.0.0.1:9901"),
        ));
    }
    let t = raw.timeouts.unwrap_or_default();
    let timeouts = Timeouts {
        connect: errs.or(
            duration_or(
                "timeouts.connect",
                t.connect.as_ref(),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        response: errs.or(
            duration_or(
                "timeouts.response",
                t.response.as_ref(),
                DEFAULT_RESPONSE_TIMEOUT,
            ),
            DEFAULT_RESPONSE_TIMEOUT,
        ),
        client_header: errs.or(
            duration_or(
                "timeouts.client_header",
                t.client_header.as_ref(),
                DEFAULT_CLIENT_HEADER_TIMEOUT,
            ),
            DEFAULT_CLIENT_HEADER_TIMEOUT,
        ),
        client_idle: errs.or(
            duration_or(
                "timeouts.client_idle",
                t.client_idle.as_ref(),
                DEFAULT_CLIENT_IDLE_TIMEOUT,
            ),
            DEFAULT_CLIENT_IDLE_TIMEOUT,
        ),
        body: errs.or(
            duration_or("timeouts.body", t.body.as_ref(), DEFAULT_BODY_TIMEOUT),
            DEFAULT_BODY_TIMEOUT,
        ),
        drain: errs.or(
            duration_or("timeouts.drain", t.drain.as_ref(), DEFAULT_DRAIN_TIMEOUT),
            DEFAULT_DRAIN_TIMEOUT,
        ),
        drain_grace: match &t.drain_grace {
            Some(v) => errs.or(parse_duration("timeouts.drain_grace", v), Duration::ZERO),
            None => Duration::ZERO,
        },
        tunnel: errs.or(
            duration_or("timeouts.tunnel", t.tunnel.as_ref(), DEFAULT_TUNNEL_TIMEOUT),
            DEFAULT_TUNNEL_TIMEOUT,
        ),
    };
    let l = raw.limits.unwrap_or_default();
    let max_head_bytes = errs.or(
        size_usize(
            "limits.max_head_bytes",
            l.max_head_bytes.as_ref(),
            DEFAULT_MAX_HEAD_BYTES,
        ),
        DEFAULT_MAX_HEAD_BYTES,
    );
    // Checked at once: the target's limit follows it down (an error here must not make a
    // second one there).
    let head_ok = (1024..=1024 * 1024).contains(&max_head_bytes);
    let max_head_bytes = if head_ok {
        max_head_bytes
    } else {
        errs.push(invalid(
            "limits.max_head_bytes",
            format!("{max_head_bytes} is out of range: use {HEAD_BYTES_RANGE}"),
        ));
        DEFAULT_MAX_HEAD_BYTES
    };
    let limits = Limits {
        max_head_bytes,
        max_headers: l.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
        // Unset, it follows a smaller head limit down (an operator review: `max_head_bytes:
        // 8k` alone was refused for a target default nobody had written).
        max_target_bytes: errs.or(
            size_usize(
                "limits.max_target_bytes",
                l.max_target_bytes.as_ref(),
                DEFAULT_MAX_TARGET_BYTES.min(max_head_bytes / 2),
            ),
            DEFAULT_MAX_TARGET_BYTES.min(max_head_bytes / 2),
        ),
        max_body_bytes: errs.or(
            size_or(
                "limits.max_body_bytes",
                l.max_body_bytes.as_ref(),
                DEFAULT_MAX_BODY_BYTES,
            ),
            DEFAULT_MAX_BODY_BYTES,
        ),
        buffer_request_body: errs.or(
            size_or(
                "limits.buffer_request_body",
                l.buffer_request_body.as_ref(),
                0,
            ),
            0,
        ),
        min_body_rate: errs.or(
            size_or(
                "limits.min_body_rate",
                l.min_body_rate.as_ref(),
                DEFAULT_MIN_BODY_RATE,
            ),
            DEFAULT_MIN_BODY_RATE,
        ),
        max_connections: match l.max_connections {
            None | Some(MaxConnections::Other(_)) => None,
            Some(MaxConnections::Count(n)) => Some(n),
        },
        max_connections_per_client: errs.or(
            MaxConnections::count_or_off(
                l.max_connections_per_client.as_ref(),
                "limits.max_connections_per_client",
                (MAX_CONNECTIONS_PER_CLIENT, None),
                &format!(
                    "use 1 to {MAX_CONNECTIONS_PER_CLIENT}, or off (the default) for no limit"
                ),
            ),
            None,
        ),
    };
    // Above this no client could keep up, and every body would end in a 408 or a reset.
    const MAX_MIN_BODY_RATE: u64 = 1 << 30;
    if limits.min_body_rate > MAX_MIN_BODY_RATE {
        errs.push(invalid(
            "limits.min_body_rate",
            format!(
                "{} is out of range: use 0 (no minimum) to {MAX_MIN_BODY_RATE} bytes/s; the default is {DEFAULT_MIN_BODY_RATE}",
                limits.min_body_rate
            ),
        ));
    }
    if let Some(other @ MaxConnections::Other(v)) = &l.max_connections {
        if v.as_str() != Some("auto") {
            let rule = format!("use auto or 1 to {MAX_CONNECTIONS}");
            errs.push(other.refused("limits.max_connections", &rule));
        }
    }
    if let Some(n) = limits
        .max_connections
        .filter(|n| !(1..=MAX_CONNECTIONS).contains(n))
    {
        errs.push(invalid(
            "limits.max_connections",
            format!("{n} is out of range: use auto or 1 to {MAX_CONNECTIONS}"),
        ));
    }
    if limits.buffer_request_body > MAX_BUFFER_REQUEST_BODY {
        errs.push(invalid(
            "limits.buffer_request_body",
            format!(
                "{} is out of range: use 0 (stream) up to {MAX_BUFFER_REQUEST_BODY} bytes",
                limits.buffer_request_body
            ),
        ));
    }
    if !(1..=crate::h1::MAX_HEADERS).contains(&limits.max_headers) {
        errs.push(invalid(
            "limits.max_headers",
            format!(
                "{} is out of range: use 1 to {}",
                limits.max_headers,
                crate::h1::MAX_HEADERS
            ),
        ));
    }
    // (Above a head limit in error, the default stands in for it: not said.)
    if limits.max_target_bytes < 64 || head_ok && limits.max_target_bytes >= max_head_bytes {
        errs.push(invalid(
            "limits.max_target_bytes",
            format!(
                "{} is out of range: use {TARGET_BYTES_RANGE} ({})",
                limits.max_target_bytes, limits.max_head_bytes
            ),
        ));
    }
    let p = raw.pool.unwrap_or_default();
    let pool = PoolSettings {
        max_idle_per_backend: p.max_idle_per_backend.unwrap_or(DEFAULT_POOL_MAX_IDLE),
        idle_timeout: errs.or(
            duration_or(
                "pool.idle_timeout",
                p.idle_timeout.as_ref(),
                DEFAULT_POOL_IDLE_TIMEOUT,
            ),
            DEFAULT_POOL_IDLE_TIMEOUT,
        ),
        max_requests_per_connection: errs.or(
            MaxConnections::count_or_off(
                p.max_requests_per_connection.as_ref(),
                "pool.max_requests_per_connection",
                (MAX_POOL_MAX_REQUESTS, Some(DEFAULT_POOL_MAX_REQUESTS)),
                &format!("use 1 to {MAX_POOL_MAX_REQUESTS} (default {DEFAULT_POOL_MAX_REQUESTS}), or off for no limit"),
            ),
            Some(DEFAULT_POOL_MAX_REQUESTS),
        ),
    };
    let defaults = BreakerSettings {
        failure_threshold: DEFAULT_FAILURE_THRESHOLD,
        cooldown: DEFAULT_COOLDOWN,
        failure_statuses: DEFAULT_FAILURE_STATUSES,
    };
    let global_breaker = breaker_settings("breaker", raw.breaker.as_ref(), &defaults, &mut errs);
    // In the order of the file, so that their errors are; the services are kept sorted
    // by name.
    let raw_services = raw.services.unwrap_or_default().0;
    if raw_services.is_empty() {
        errs.push(invalid("services", NO_SERVICES));
    }
    let global_limit = match &raw.rate_limit {
        Some(v) => errs.or(crate::admission::parse_rate_limit("rate_limit", v), None),
        None => None,
    };
    let global_checks = match &raw.health_check {
        Some(v) => errs.or(crate::health::parse("health_check", v), None),
        None => None,
    };
    let admission = errs.or(
        admission_settings(
            raw.rate_limit_headers,
            raw.rate_limit_table,
            raw.trusted_proxies.as_deref(),
        ),
        crate::admission::Settings::default(),
    );
    let access_log = match raw.access_log.as_deref().map(str::trim) {
        None => crate::accesslog::Sink::Off,
        Some(v) => errs.or(access_log_sink(v), crate::accesslog::Sink::Off),
    };
    let dns_refresh = match raw.dns_refresh.as_deref() {
        None | Some("off") => None,
        Some(v) => match parse_duration("dns_refresh", v) {
            Ok(d) if d < Duration::from_secs(1) => {
                errs.push(invalid(
                    "dns_refresh",
                    format!("{v:?} is too short: use at least 1s, or off"),
                ));
                None
            }
            r => errs.or(r.map(Some), None),
        },
    };
    let has_cluster = raw.cluster.is_some();
    let cluster = errs.or(raw.cluster.map(crate::cluster::validate).transpose(), None);
    if !has_cluster && global_limit.as_ref().is_some_and(|l| l.fleet) {
        errs.push(invalid(
            "rate_limit.scope",
            "cluster needs a `cluster:` section (the Redis that holds the fleet's budget): add one, or use scope: instance",
        ));
    }
    let access_log_format = match raw.access_log_format.as_deref().map(str::trim) {
        None | Some("text") => crate::accesslog::Format::Text,
        Some("json") => crate::accesslog::Format::Json,
        Some(v) => {
            errs.push(invalid(
                "access_log_format",
                format!("{v:?} is not a format: use text or json"),
            ));
            crate::accesslog::Format::Text
        }
    };
    let request_id = raw.request_id.unwrap_or(false);
    let access_log_fields = errs.or(
        log_fields(raw.access_log_fields.as_ref(), request_id),
        default_log_fields(request_id),
    );
    let busy_poll = match raw.busy_poll.as_deref().map(str::trim) {
        None | Some("off") | Some("0") => None,
        Some(v) => errs.or(parse_busy_poll(v).map(Some), None),
    };
    // Every service is read, and every error of each is reported together (operator
    // reviews fixed three services' mistakes in three runs of --check, and two in one
    // service in two; HAProxy's check lists every one).
    let service = |name: String,
                   value: serde_yaml_ng::Value,
                   errs: &mut Errors|
     -> Option<ServiceConfig> {
        let found = errs.0.len();
        let key = format!("services.{name}");
        if !valid_service_name(name.as_bytes()) {
            // A name with a control character quoted in the key too: one with a line
            // break forged an error line (a review).
            let key = match name.chars().any(char::is_control) {
                true => format!("services.{name:?}"),
                false => key.clone(),
            };
            errs.push(invalid(
                key,
                format!("invalid service name {name:?}: use lowercase letters, digits and '-', starting with a letter or digit, at most 63"),
            ));
        }
        let full_form = value.is_mapping();
        let (urls, breaker, limit, in_flight, ws, slashes, own, health_check) = match value {
            serde_yaml_ng::Value::Sequence(entries) => (
                entries,
                global_breaker,
                global_limit.clone(),
                None,
                false,
                false,
                timeouts,
                global_checks.clone(),
            ),
            serde_yaml_ng::Value::Mapping(mut map) => {
                // Each unknown key is said and the rest of the service read: the first
                // used to hide its other keys' errors (`breakr:` a `timeout:` typo, an
                // operator review).
                const FORM: &str = "(a service is a list of URLs, or a map with `backends` and optional `breaker`, `rate_limit`, `max_in_flight`, `websocket`, `encoded_slashes`, `timeouts`, `health_check`)";
                let full: RawService = loop {
                    let e =
                        match serde_yaml_ng::from_value(serde_yaml_ng::Value::Mapping(map.clone()))
                        {
                            Ok(full) => break full,
                            Err(e) => e.to_string(),
                        };
                    let unknown = e
                        .strip_prefix("unknown field `")
                        .and_then(|rest| rest.split('`').next())
                        .map(|k| serde_yaml_ng::Value::String(k.to_owned()));
                    errs.push(invalid(&key, format!("{} {FORM}", with_suggestion(e))));
                    // (At most `MAX_ERRORS` are said: each round copies the map, and a
                    // map of thousands of unknown keys must not cost their square.)
                    match unknown {
                        Some(k)
                            if errs.0.len() - found < MAX_ERRORS
                                && map.shift_remove(&k).is_some() => {}
                        _ => return None,
                    }
                };
                let breaker_key = format!("{key}.breaker");
                let raw_breaker = full.breaker.map(|v| service_breaker(&breaker_key, v));
                let raw_breaker = errs.or(raw_breaker.transpose(), None);
                let b = breaker_settings(&breaker_key, raw_breaker.as_ref(), &global_breaker, errs);
                let limit = match &full.rate_limit {
                    Some(v) => errs.or(
                        crate::admission::parse_rate_limit(&format!("{key}.rate_limit"), v),
                        global_limit.clone(),
                    ),
                    None => global_limit.clone(),
                };
                let max = crate::admission::MAX_IN_FLIGHT;
                let in_flight_key = format!("{key}.max_in_flight");
                let max_in_flight = match &full.max_in_flight {
                    None | Some(serde_yaml_ng::Value::Null) => None,
                    Some(serde_yaml_ng::Value::String(s)) if s == "off" => None,
                    Some(serde_yaml_ng::Value::Bool(false)) => None,
                    Some(v) => match v.as_u64() {
                        Some(n) if (1..=max).contains(&n) => Some(n),
                        n => {
                            let what = serde_yaml_ng::to_string(v).unwrap_or_default();
                            let problem = match n {
                                Some(_) => "is out of range",
                                None => "is not a limit",
                            };
                            errs.push(invalid(
                                in_flight_key,
                                format!(
                                    "{} {problem}: use 1 to {max}, or off (the default) for no limit",
                                    what.trim()
                                ),
                            ));
                            None
                        }
                    },
                };
                let websocket = errs.or(
                    service_flag(&format!("{key}.websocket"), full.websocket.as_ref()),
                    false,
                );
                let encoded_slashes = errs.or(
                    service_flag(
                        &format!("{key}.encoded_slashes"),
                        full.encoded_slashes.as_ref(),
                    ),
                    false,
                );
                let timeouts_key = format!("{key}.timeouts");
                let raw_timeouts = full
                    .timeouts
                    .as_ref()
                    .map(|v| raw_service_timeouts(&timeouts_key, v));
                let raw_timeouts = errs.or(raw_timeouts.transpose(), None);
                let own_timeouts =
                    service_timeouts(&timeouts_key, raw_timeouts.as_ref(), &timeouts, errs);
                let health_check = match &full.health_check {
                    Some(v) => errs.or(
                        crate::health::parse(&format!("{key}.health_check"), v),
                        global_checks.clone(),
                    ),
                    None => global_checks.clone(),
                };
                let entries = match full.backends {
                    serde_yaml_ng::Value::Sequence(entries) => entries,
                    serde_yaml_ng::Value::Null => Vec::new(),
                    other => {
                        let what = serde_yaml_ng::to_string(&other).unwrap_or_default();
                        errs.push(invalid(
                            format!("{key}.backends"),
                            format!("{:?} is not a list: list the backends, e.g. [http://127.0.0.1:8001] or one per `- ` line", what.trim()),
                        ));
                        return None;
                    }
                };
                (
                    entries,
                    b,
                    limit,
                    max_in_flight,
                    websocket,
                    encoded_slashes,
                    own_timeouts,
                    health_check,
                )
            }
            serde_yaml_ng::Value::Null => {
                errs.push(invalid(
                    &key,
                    "is empty: give a list of backend URLs, or a map with `backends:`",
                ));
                return None;
            }
            other => {
                let what = serde_yaml_ng::to_string(&other).unwrap_or_default();
                errs.push(invalid(
                    &key,
                    format!("{:?} is not a service: give a list of backend URLs, or a map with `backends:`", what.trim()),
                ));
                return None;
            }
        };
        if urls.is_empty() {
            errs.push(invalid(
                &key,
                "has no backends: list at least one URL, e.g. - http://127.0.0.1:8001",
            ));
            return None;
        }
        // `services.a[0]`, or `services.a.backends[0]` in a service's full form.
        let list = match full_form {
            true => format!("{key}.backends"),
            false => key.clone(),
        };
        let mut backends: Vec<BackendUrl> = Vec::with_capacity(urls.len());
        for (i, u) in urls.iter().enumerate() {
            let b = match backend_entry(&format!("{list}[{i}]"), u) {
                Ok(b) => b,
                Err(e) => {
                    errs.push(e);
                    // (With the resolver down, each lookup may wait for its timeout.)
                    if LOOKUP_FAILED.with(|f| f.get()) {
                        return None;
                    }
                    continue;
                }
            };
            if backends.iter().any(|x| x.url == b.url) {
                errs.push(invalid(
                    format!("{list}[{i}]"),
                    format!("{:?} is listed twice: remove the duplicate", b.url),
                ));
            }
            backends.push(b);
        }
        (errs.0.len() == found).then_some(ServiceConfig {
            name,
            backends,
            breaker,
            rate_limit: limit,
            max_in_flight: in_flight,
            websocket: ws,
            encoded_slashes: slashes,
            timeouts: own,
            health_check,
        })
    };
    let mut services = Vec::with_capacity(raw_services.len());
    LOOKUP_FAILED.with(|f| f.set(false));
    for (name, value) in raw_services {
        if let Some(s) = service(name, value, &mut errs) {
            services.push(s);
        }
        if LOOKUP_FAILED.with(|f| f.get()) {
            break;
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    // (A top-level fleet limit the services inherit was said above.)
    let fleet_said = global_limit.as_ref().is_some_and(|l| l.fleet);
    if !has_cluster && !fleet_said {
        if let Some(s) = services
            .iter()
            .find(|s| s.rate_limit.as_ref().is_some_and(|l| l.fleet))
        {
            errs.push(invalid(
                format!("services.{}.rate_limit.scope", s.name),
                "cluster needs a `cluster:` section (the Redis that holds the fleet's budget): add one, or use scope: instance",
            ));
        }
    }
    errs.done()?;
    let config = Config {
        listen,
        workers,
        pin_workers: raw.pin_workers.unwrap_or(true),
        admin,
        access_log,
        access_log_format,
        access_log_fields,
        access_log_epoch: Default::default(),
        timeouts,
        limits,
        pool,
        dns_refresh,
        busy_poll,
        splice: raw.splice.unwrap_or(false),
        request_id,
        ignore_client_abort: raw.ignore_client_abort.unwrap_or(false),
        admission,
        services,
        cluster,
    };
    config.check_whole()?;
    Ok(config)
}

/// The access log's fields when `access_log_fields` is not set: the default ones, then
/// `request_id` with `request_id: true`.
pub fn default_log_fields(request_id: bool) -> Vec<crate::accesslog::Field> {
    let mut fields = crate::accesslog::Field::DEFAULT.to_vec();
    if request_id {
        fields.push(crate::accesslog::Field::RequestId);
    }
    fields
}

/// `access_log_fields`: a list of field names, each once; `request_id` only with
/// `request_id: true` (it would always read `-`). Absent: the default fields.
fn log_fields(
    v: Option<&serde_yaml_ng::Value>,
    request_id: bool,
) -> Result<Vec<crate::accesslog::Field>, ConfigError> {
    use crate::accesslog::Field;
    const KEY: &str = "access_log_fields";
    let names = || {
        Field::ALL
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(default_log_fields(request_id));
    };
    let Some(list) = v.as_sequence().filter(|l| !l.is_empty()) else {
        return Err(invalid(
            KEY,
            format!("is not a list of fields: write e.g. [time, client, method, target, status, bytes, total_seconds, user_agent]; the fields: {}", names()),
        ));
    };
    let mut fields = Vec::with_capacity(list.len());
    for item in list {
        let name = item.as_str().map(str::trim).unwrap_or_default();
        let Some(f) = Field::from_name(name) else {
            let shown = serde_yaml_ng::to_string(item).unwrap_or_default();
            return Err(invalid(
                KEY,
                format!("{:?} is not a field: use {}", shown.trim(), names()),
            ));
        };
        if fields.contains(&f) {
            return Err(invalid(KEY, format!("{name} is listed twice")));
        }
        if f == Field::RequestId && !request_id {
            return Err(invalid(
                KEY,
                "request_id is listed, but request_id is off: set request_id: true, or leave the field out",
            ));
        }
        fields.push(f);
    }
    Ok(fields)
}

/// `busy_poll`: microseconds (`200us`) or milliseconds (`1ms`), at most 100 ms.
fn parse_busy_poll(v: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        invalid(
            "busy_poll",
            format!("{v:?} is not a spin time: use off, or 1us to 100ms, e.g. 200us"),
        )
    };
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        // As for the other durations: `1.5us` was told only the range.
        _ if unit.starts_with(['.', ',']) => {
            return Err(invalid(
                "busy_poll",
                format!(
                "{v:?}: fractions are not taken; write whole microseconds, e.g. 1500us for 1.5ms"
            ),
            ))
        }
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        _ => return Err(bad()),
    };
    if d.is_zero() || d > Duration::from_millis(100) {
        return Err(bad());
    }
    Ok(d)
}

fn admission_settings(
    headers: Option<bool>,
    table: Option<usize>,
    trusted: Option<&[String]>,
) -> Result<crate::admission::Settings, ConfigError> {
    use crate::admission::{Cidr, Settings, MAX_TABLE_CELLS, MIN_TABLE_CELLS};
    let table_cells = table.unwrap_or(crate::admission::DEFAULT_TABLE_CELLS);
    if !(MIN_TABLE_CELLS..=MAX_TABLE_CELLS).contains(&table_cells) {
        return Err(invalid(
            "rate_limit_table",
            format!("{table_cells} is out of range: use {MIN_TABLE_CELLS} to {MAX_TABLE_CELLS} cells (16 bytes each)"),
        ));
    }
    let trusted_proxies = trusted
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| Cidr::parse(&format!("trusted_proxies[{i}]"), c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        headers: headers.unwrap_or(false),
        table_cells,
        trusted_proxies,
    })
}

/// `expected struct RawBreaker` (serde's words for one of our types) as a user would say it
/// (an operator review saw the type's name).
fn no_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("struct Raw") {
        out.push_str(&rest[..i]);
        out.push_str("a map of its settings");
        let after = &rest[i + "struct Raw".len()..];
        rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    }
    out.push_str(rest);
    out
}

/// A service's `breaker` map. serde names no field in an error from a `Value`, so the
/// setting at fault is found by reading each on its own (an operator review got
/// `services.a.breaker: invalid value: integer `-1`, expected u32`).
fn service_breaker(key: &str, value: serde_yaml_ng::Value) -> Result<RawBreaker, ConfigError> {
    serde_yaml_ng::from_value(value.clone()).map_err(|e| {
        let field = match &value {
            serde_yaml_ng::Value::Mapping(m) => m
                .iter()
                .find(|(k, v)| {
                    let mut one = serde_yaml_ng::Mapping::new();
                    one.insert((*k).clone(), (*v).clone());
                    serde_yaml_ng::from_value::<RawBreaker>(serde_yaml_ng::Value::Mapping(one))
                        .is_err()
                })
                .and_then(|(k, _)| k.as_str()),
            _ => None,
        };
        let key = match field {
            Some(f) if !e.to_string().starts_with("unknown field") => format!("{key}.{f}"),
            _ => key.to_owned(),
        };
        let message = whole_number_words(&no_type_names(&e.to_string()), &key);
        invalid(&key, message)
    })
}

/// serde's `expected u32` as "a whole number" and the values `key` takes: its own range where
/// that does not start at 0 (an operator review: "0 or more" for `failure_threshold`, which
/// refuses 0).
fn whole_number_words(message: &str, key: &str) -> String {
    let range = whole_number_range(key);
    let mut m = message.to_owned();
    for t in ["usize", "u64", "u32", "u16", "u8"] {
        m = m.replace(
            &format!("expected {t}"),
            &format!("expected a whole number, {range}"),
        );
    }
    m
}

/// The values a whole-number key takes, as its type error says them: its own range where
/// that does not start at 0 (the same words as its range check's).
fn whole_number_range(key: &str) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    match name {
        "failure_threshold" => format!("0 (off) to {MAX_FAILURE_THRESHOLD}"),
        "max_head_bytes" => HEAD_BYTES_RANGE.to_owned(),
        "max_headers" => format!("1 to {}", crate::h1::MAX_HEADERS),
        "max_target_bytes" => TARGET_BYTES_RANGE.to_owned(),
        "rate_limit_table" => format!(
            "{} to {}",
            crate::admission::MIN_TABLE_CELLS,
            crate::admission::MAX_TABLE_CELLS
        ),
        "open_quorum" => "1 or more".to_owned(),
        _ => "0 or more".to_owned(),
    }
}

/// A YAML error in words a config's reader uses: Rust's integer type names become "a whole
/// number", and an unknown top-level key gets the line it is on (serde_yaml_ng gives nested
/// ones a position, top-level ones none).
fn plain_syntax_error(message: &str, text: &str) -> String {
    // A key or value quoted back may hold control characters: one log line stays one.
    let mut m = no_type_names(&crate::logging::one_line(message, usize::MAX));
    let key = m.split(": ").next().unwrap_or_default().to_owned();
    m = whole_number_words(&m, &key);
    // `splice: yes`, as YAML 1.1 wrote it (a new user's review).
    m = m.replace("expected a boolean", "expected true or false");
    // A number past 64 bits reaches us as serde's `invalid type: integer `N` as u128,
    // expected ...` (an operator review): say what is wrong with it instead.
    if let Some(i) = m.find("invalid type: integer `") {
        let rest = &m[i + "invalid type: integer `".len()..];
        if let Some((n, tail)) = rest.split_once("` as u128, expected ") {
            let at = tail.find(" at line ").map_or("", |j| &tail[j..]);
            m = format!("{}{n} is too large: at most 2^64 - 1{at}", &m[..i]);
        }
    }
    // A top-level key: the line of its first (unknown) or second (duplicate) occurrence.
    let at = |rest: &str, nth: usize| {
        let key = rest.split('`').next().unwrap_or_default();
        let mut lines = text.lines().enumerate().filter(|(_, l)| opens_key(l, key));
        lines.nth(nth).map(|(n, _)| n + 1)
    };
    let line = match (
        m.strip_prefix("unknown field `"),
        m.strip_prefix("duplicate field `"),
    ) {
        (Some(rest), _) => at(rest, 0),
        (_, Some(rest)) => at(rest, 1),
        _ => None,
    };
    if let (Some(n), false) = (line, m.contains(" at line ")) {
        m = format!("line {n}: {m}");
        // A key given twice: where the first is, and what to do (an operator review got
        // neither).
        if let Some(first) = m.split("duplicate field `").nth(1).and_then(|r| at(r, 0)) {
            m.push_str(&format!(
                " (first given at line {first}): give each key once, merging the two"
            ));
        }
    }
    if let Some(fixed) = nested_duplicate_line(&m, text) {
        m = fixed;
    }
    m = with_suggestion(m);
    // `[http://[::1]:8001]`: YAML reads the address's `[` as a nested list (an operator
    // review, told only of a missing ',' or ']').
    if m.contains("while parsing a flow") && text.contains("://[") {
        m.push_str(
            " (an IPv6 URL inside [...] must be quoted: [\"http://[::1]:8001\"], or listed one per `- ` line)",
        );
    }
    // Two documents (an operator review got the parser's words alone).
    if m.contains("more than one document") {
        let mut markers = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with("---"));
        // (A directive, `%YAML 1.2`, comes before the first document's marker: a review.)
        let first_content = text.lines().position(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#') && !l.starts_with('%')
        });
        let second = match markers.next() {
            Some((n, _)) if Some(n) == first_content => markers.next(),
            other => other,
        };
        m = match second {
            Some((n, _)) => format!(
                "line {}: a second YAML document begins here (`---`): a config file is one document; remove the marker or what follows it",
                n + 1
            ),
            None => "the file holds more than one YAML document: a config file is one".into(),
        };
    }
    // A block out of line: the line first, and what to look at (an operator review got
    // the parser's words alone, its line at the end).
    for kind in [
        "did not find expected key",
        "mapping values are not allowed in this context",
        "did not find expected '-' indicator",
    ] {
        let Some(rest) = m
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix(" at line "))
        else {
            continue;
        };
        let Some((line, after)) = rest.split_once(" column ") else {
            continue;
        };
        if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) {
            // `listen: 127.0.0.1: 8000` on line 1 has no lines above it (a review).
            let colon = if kind.starts_with("mapping values") {
                "a value holding `: ` must be quoted (\"a: b\"); or "
            } else {
                ""
            };
            m = format!(
                "line {line}: {kind} at column {after} ({colon}check this line's indentation against the lines above it: the keys of one map line up, and what goes under a key is indented past it)"
            );
        }
        break;
    }
    // A tab where YAML wants spaces (an operator review: only the parser's words).
    if m.contains("cannot start any token") && text.contains('\t') {
        m.push_str(" (YAML indents with spaces only: replace the tabs)");
    }
    // `[http://127.0.0.1:]`: a URL ending in `:` (an operator review got the parser's
    // words alone).
    if m.contains("found unexpected ':'") && text.contains(":]") {
        m.push_str(" (a URL ending in ':' needs its port: http://127.0.0.1:8001)");
    }
    position_first(m, text)
}

/// Every message with a position begins with its line, as the others do (`line 4: workers:
/// invalid type ...`, where serde ends it with `at line 4 column 10`: an operator review saw
/// the two forms side by side; a nested unknown key, `timeouts: unknown field ...`, too).
/// The first position is the problem's; a second, libyaml's context (`while parsing a flow
/// sequence at line 3 column 10`), is said as the line that began it. A position past the file's last line is its end (an unclosed `[` on a file's
/// last line was said to be on the line after it; a review of that fix found the
/// two-position form kept it).
fn position_first(m: String, text: &str) -> String {
    if m.starts_with("line ") {
        return m;
    }
    let Some((before, line, after)) = split_position(&m) else {
        return m;
    };
    let after = match split_position(after) {
        Some((context, begun, rest)) => format!("{context} begun on line {begun}{rest}"),
        None => after.to_string(),
    };
    let said = format!("{before}{after}");
    let last = text.lines().count();
    if line > last {
        let hint = if said.contains("while parsing a flow") {
            " (a `[` or `{` that is not closed?)"
        } else if said.contains("quoted scalar") {
            " (a quote that is not closed?)"
        } else {
            ""
        };
        return format!("at the end of the file (line {last}): {said}{hint}");
    }
    format!("line {line}: {said}")
}

/// `(text before, N, text after)` around the first ` at line N` or ` at line N column M`.
fn split_position(m: &str) -> Option<(&str, usize, &str)> {
    let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
    let mut from = 0;
    while let Some(i) = m[from..].find(" at line ").map(|i| from + i) {
        let rest = &m[i + " at line ".len()..];
        let n = digits(rest);
        if let Ok(line) = rest[..n].parse::<usize>() {
            let mut end = n;
            if let Some(column) = rest[n..].strip_prefix(" column ") {
                if digits(column) > 0 {
                    end += " column ".len() + digits(column);
                }
            }
            return Some((&m[..i], line, &rest[end..]));
        }
        from = i + 1;
    }
    None
}

/// `unknown field `timeout`, expected one of ... `timeouts` ...` with `(did you mean
/// `timeouts`?)` after the key, when one expected key is within two edits of it (an
/// operator review had to find `timeouts` in a list of 23).
fn with_suggestion(message: String) -> String {
    const OPEN: &str = "unknown field `";
    let Some(start) = message.find(OPEN).map(|i| i + OPEN.len()) else {
        return message;
    };
    let Some(len) = message[start..].find('`') else {
        return message;
    };
    let key = &message[start..start + len];
    let lower = key.to_ascii_lowercase();
    let Some(list) = message[start..]
        .split_once("expected one of ")
        .map(|(_, l)| l)
    else {
        return message;
    };
    let best = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (edits(&lower, k), k))
        .filter(|&(d, k)| d <= 2 && d < k.len().min(key.len()))
        .min_by_key(|&(d, _)| d);
    match best {
        Some((_, k)) => {
            let at = start + len + 1;
            format!("{} (did you mean `{k}`?){}", &message[..at], &message[at..])
        }
        None => message,
    }
}

/// The Levenshtein distance between `a` and `b`, counted in characters.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// A key given twice inside a nested map: serde_yaml_ng places the error at the map's first
/// key (`timeouts: duplicate field `connect` at line 3 column 3` for a second `connect` on
/// line 5; an operator review looked for the mistake on the wrong line). Returns the
/// message with the line of the second occurrence, found among the map's own lines (those
/// indented as its first key, until one indented less); `None` when it cannot be found
/// there (a flow map `{a: 1, a: 2}` keeps the map's position).
fn nested_duplicate_line(message: &str, text: &str) -> Option<String> {
    // serde's words for a struct's field and for a map's key.
    let quoted = [
        ("duplicate field `", '`'),
        ("duplicate entry with key \"", '"'),
    ];
    let (key, rest) = quoted.iter().find_map(|&(open, close)| {
        let after = &message[message.find(open)? + open.len()..];
        let end = after.find(close)?;
        Some((&after[..end], &after[end..]))
    })?;
    let at = rest.find(" at line ")?;
    let position = &rest[at + " at line ".len()..];
    let (line, column) = position.split_once(" column ")?;
    let first: usize = line.parse().ok()?;
    let column: usize = column
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let indent = column.checked_sub(1)?;
    let mut seen = 0;
    for (n, l) in text.lines().enumerate().skip(first.checked_sub(1)?) {
        let own = if n + 1 == first {
            // The map's first line may open with a list item's `- `.
            l.get(indent..)?
        } else {
            let body = l.trim_start_matches(' ');
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            match l.len() - body.len() {
                d if d < indent => return None,
                d if d > indent => continue,
                _ => body,
            }
        };
        if opens_key(own, key) {
            seen += 1;
            if seen == 2 {
                let from = format!(" at line {first} column {column}");
                let to = format!(" at line {} column {column}", n + 1);
                return Some(message.replacen(&from, &to, 1));
            }
        }
    }
    None
}

/// Whether `line` (its indentation taken off) is `key:`, the start of that key's entry.
fn opens_key(line: &str, key: &str) -> bool {
    // Plain, or quoted (`"timeout": 1` got no line: a review).
    let rest = ['"', '\'']
        .iter()
        .find_map(|&q| line.strip_prefix(q)?.strip_prefix(key)?.strip_prefix(q));
    rest.or_else(|| line.strip_prefix(key))
        .is_some_and(|r| r.trim_start().starts_with(':'))
}

/// `access_log`'s value. YAML reads unquoted `false`, `no`, `off` and their kin as booleans,
/// which serde hands us as words; a word a user meant as a switch must never become a file
/// of that name in the working directory (write `./on` for that).
fn access_log_sink(v: &str) -> Result<crate::accesslog::Sink, ConfigError> {
    use crate::accesslog::Sink;
    let word = v.to_ascii_lowercase();
    match word.as_str() {
        "off" | "false" => Ok(Sink::Off),
        "stdout" => Ok(Sink::Stdout),
        "" => Err(invalid("access_log", "is empty: use off, stdout, or a file path")),
        "stderr" => Err(invalid(
            "access_log",
            "stderr is for the gateway's own logs: use stdout, /dev/stderr, or a file path",
        )),
        // Switch words, and numbers (YAML's 0 and 1), are never file names.
        w if matches!(w, "on" | "true" | "yes" | "no" | "none" | "null" | "y" | "n" | "~")
            || w.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Err(invalid(
            "access_log",
            format!(
                "{v} is not a destination: use stdout or a file path (or off); write ./{v} for a file of that name"
            ),
        ))
        }
        _ => Ok(Sink::File(v.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    /// The errors `text` gets, each as said, when it gets several.
    fn several(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Err(ConfigError::Several(all)) => all.iter().map(ToString::to_string).collect(),
            other => panic!("not several errors: {other:?}"),
        }
    }

    /// [`several`], with the line each begins with.
    fn several_with_lines(text: &str) -> (Vec<String>, Vec<Option<usize>>) {
        match Config::parse(text) {
            Err(ConfigError::Several(all)) => (
                all.iter().map(ToString::to_string).collect(),
                all.iter().map(line_said).collect(),
            ),
            other => panic!("not several errors: {other:?}"),
        }
    }

    /// That `all` are as many as `want` and each begins with its own.
    fn each_begins(all: &[String], want: &[&str]) {
        assert_eq!(all.len(), want.len(), "{all:#?}");
        for (got, want) in all.iter().zip(want) {
            assert!(got.starts_with(want), "{got:?} is not {want:?}");
        }
    }

    #[test]
    fn a_backend_is_a_url_or_a_map_with_its_weight() {
        let c = Config::parse(
            "services:\n  a:\n    - {url: http://127.0.0.1:1/v2/, weight: 5}\n    - http://127.0.0.1:2\n    - url: http://127.0.0.1:3\n  b:\n    backends: [{url: http://127.0.0.1:4, weight: 256}, {url: http://127.0.0.1:5, weight: ~}]\n",
        )
        .unwrap();
        let weights = |name: &str| -> Vec<u32> {
            c.service(name)
                .unwrap()
                .backends
                .iter()
                .map(|b| b.weight)
                .collect()
        };
        assert_eq!(weights("a"), [5, 1, 1]);
        assert_eq!(weights("b"), [256, 1]);
        let a0 = &c.service("a").unwrap().backends[0];
        assert_eq!(
            (a0.url.as_str(), a0.path_prefix.as_str()),
            ("http://127.0.0.1:1/v2", "/v2")
        );
        assert!(c.summary().contains("service a -> [http://127.0.0.1:1/v2 weight 5, http://127.0.0.1:2 weight 1, http://127.0.0.1:3 weight 1]"), "{}", c.summary());
        assert!(
            !c.summary().contains("http://127.0.0.1:1 weight"),
            "{}",
            c.summary()
        );
        let base = "services:\n  a:\n    - http://127.0.0.1:2\n    - ";
        for (entry, says) in [
            ("{url: http://127.0.0.1:1, weight: 0}", "services.a[1].weight: 0 is out of range: use 1 to 256 (to take a backend out of rotation, remove it from the list"),
            ("{url: http://127.0.0.1:1, weight: 257}", "services.a[1].weight: 257 is out of range: use 1 to 256"),
            ("{url: http://127.0.0.1:1, weight: -1}", "services.a[1].weight: -1 is out of range"),
            ("{url: http://127.0.0.1:1, weight: 1.5}", "services.a[1].weight: 1.5 is not a whole number"),
            ("{url: http://127.0.0.1:1, weight: lots}", "services.a[1].weight: lots is not a number: use 1 to 256"),
            ("{url: http://127.0.0.1:1, weight: \"3\"}", "services.a[1].weight: '3' is text, not a number: write it without quotes or leading zeros; use 1 to 256"),
            ("{url: http://127.0.0.1:1, weight: 007}", "services.a[1].weight: '007' is text, not a number"),
            ("{url: http://127.0.0.1:1, wieght: 2}", "services.a[1]: unknown key \"wieght\": a backend is a URL, or a map {url: http://HOST:PORT, weight: N}"),
            ("{weight: 2}", "services.a[1]: has no `url`"),
            ("{url: 8001}", "services.a[1].url: is not a URL"),
            ("{url: https://127.0.0.1:1}", "services.a[1].url: \"https://127.0.0.1:1\": https backends are not supported"),
            ("8001", "services.a[1]: \"8001\" is not a backend"),
            ("{url: http://127.0.0.1:2/, weight: 3}", "services.a[1]: \"http://127.0.0.1:2\" is listed twice"),
        ] {
            let e = err(&format!("{base}{entry}\n"));
            assert!(e.contains(says), "{entry}: {e}");
        }
        // In the full form the key names `backends`, with its line; one URL alone is not
        // a list (an operator review was told `expected a sequence` at the service).
        let e = err("services:\n  a:\n    backends: [{url: http://127.0.0.1:1, weight: 0}]\n");
        assert!(
            e.starts_with("line 3: services.a.backends[0].weight: 0 is out of range"),
            "{e}"
        );
        let e = err("services:\n  a:\n    backends: http://127.0.0.1:1\n");
        assert!(e.starts_with("line 3: services.a.backends: \"http://127.0.0.1:1\" is not a list: list the backends, e.g. [http://127.0.0.1:8001]"), "{e}");
        let e = err("services:\n  a:\n    backends:\n");
        assert!(e.contains("services.a: has no backends"), "{e}");
        // Each entry's error names its own line, in either form, a list at its key's
        // indent, comments between, and a flow list's own line (a review got none, or
        // that of `backends:`).
        for (text, starts) in [
            ("services:\n  u:\n    - http://127.0.0.1:1\n    - {url: http://127.0.0.1:2, weight: 0}\n", "line 4: services.u[1].weight"),
            ("services:\n  a: [http://127.0.0.1:9]\n  u:\n    breaker: {cooldown: 1s}\n    backends:\n      - http://127.0.0.1:1\n      # c\n      - url: http://127.0.0.1:2\n        weight: 300\n", "line 8: services.u.backends[1].weight"),
            ("services:\n  u:\n    backends:\n    - http://127.0.0.1:1\n    - {url: http://127.0.0.1:2, wieght: 3}\n", "line 5: services.u.backends[1]: unknown key"),
            ("services:\n  u: [http://127.0.0.1:1, {url: http://127.0.0.1:2, weight: x}]\n", "line 2: services.u[1].weight"),
            ("services:\n  u:\n    - http://127.0.0.1:1\n    - ftp://x\n", "line 4: services.u[1]"),
        ] {
            let e = err(text);
            assert!(e.starts_with(starts), "{text}: {e}");
        }
    }

    /// An operator review was refused `listen: localhost:8000`, which NGINX and HAProxy take.
    #[test]
    fn listen_and_admin_take_a_host_name_and_refuse_what_is_not_one() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        let c = Config::parse(&format!(
            "listen: localhost:8000\nadmin: localhost:9901\n{svc}"
        ))
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
        // The same port by name and by address is still one port.
        let e = err(&format!(
            "listen: localhost:8000\nadmin: 127.0.0.1:8000\n{svc}"
        ));
        assert!(e.contains("the gateway's own `listen` address"), "{e}");
        for (v, says) in [
            ("10.1:80", "invalid address \"10.1:80\""),
            ("0x7f000001:80", "invalid address"),
            ("127.0.1.:80", "invalid address"),
            ("localhost", "invalid address \"localhost\""),
            ("local_host:80", "invalid address"),
            (":80", "invalid address"),
            ("localhost:http", "invalid address"),
        ] {
            let e = err(&format!("listen: {v}\n{svc}"));
            assert!(e.contains(says) && e.contains("HOST:PORT"), "{v}: {e}");
        }
    }

    /// An operator's review: a number past 64 bits was reported as `invalid type: integer
    /// ... as u128, expected any value`, and a word for max_connections as out of range.
    #[test]
    fn numbers_too_large_and_words_for_numbers_are_named_so() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        for (text, says) in [
            (
                "limits: {max_body_bytes: 99999999999999999999999}",
                "line 1: limits.max_body_bytes: 99999999999999999999999 is too large: at most 2^64 - 1",
            ),
            (
                "workers: 18446744073709551616",
                "line 1: workers: 18446744073709551616 is too large: at most 2^64 - 1",
            ),
            (
                "limits: {max_connections: lots}",
                "limits.max_connections: lots is not a number: use auto or 1 to",
            ),
            (
                "limits: {max_connections: 0}",
                "limits.max_connections: 0 is out of range: use auto or 1 to",
            ),
        ] {
            let e = err(&format!("{text}\n{svc}"));
            assert!(e.contains(says), "{text}: {e}");
            assert!(!e.contains("u128"), "{text}: {e}");
        }
    }

    #[test]
    fn shipped_config_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")).unwrap();
        let c = Config::parse(&text).unwrap();
        let users = c.service("user-service").unwrap();
        assert_eq!(users.backends.len(), 2);
        assert_eq!(users.backends[0].addr.port(), 8001);
        assert_eq!(users.backends[1].addr.port(), 8002);
        assert_eq!(
            c.service("payment-service").unwrap().backends[0]
                .addr
                .port(),
            8003
        );
        assert_eq!(users.breaker.failure_threshold, 5);
        assert_eq!(users.breaker.cooldown, Duration::from_secs(60));
    }

    #[test]
    fn full_form_overrides_breaker() {
        let c = Config::parse(
            "breaker: {failure_threshold: 4}\nservices:\n  a: [http://127.0.0.1:1]\n  b:\n    backends: [http://127.0.0.1:2/api/]\n    breaker: { failure_threshold: 3, cooldown: 10s }\n",
        )
        .unwrap();
        assert_eq!(c.service("a").unwrap().breaker.failure_threshold, 4);
        let b = c.service("b").unwrap();
        assert_eq!(b.breaker.failure_threshold, 3);
        assert_eq!(b.breaker.cooldown, Duration::from_secs(10));
        assert_eq!(b.backends[0].path_prefix, "/api");
        assert_eq!(b.backends[0].authority, "127.0.0.1:2");
    }

    #[test]
    fn durations_read_as_written() {
        for (ms, text) in [
            (0, "0s"),
            (1500, "1500ms"),
            (30_000, "30s"),
            (120_000, "2m"),
            (7_200_000, "2h"),
            (90_000, "90s"),
        ] {
            assert_eq!(duration_text(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("k", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("k", "2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("k", "1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("k", "5")
            .unwrap_err()
            .to_string()
            .contains("500ms"));
        assert!(parse_duration("k", "1.5s")
            .unwrap_err()
            .to_string()
            .contains("1500ms"));
        assert!(parse_duration("k", "1.5ms")
            .unwrap_err()
            .to_string()
            .contains("whole milliseconds"));
        // Regression: these overflowed (`n * 60`) or were accepted and then overflowed
        // `Instant + timeout` in a worker.
        assert!(parse_duration("k", "307445734561825861m")
            .unwrap_err()
            .to_string()
            .contains("at most 24h"));
        assert!(parse_duration("k", "18446744073709551615s").is_err());
        assert!(parse_duration("k", "25h").is_err());
        assert_eq!(parse_duration("k", "24h").unwrap(), MAX_DURATION);
    }

    /// Regression (an operator review, 2026-12-05): a mistyped top-level key stopped the
    /// reading, so `timeout:` hid the `breaker:` typo after it, found in a second run.
    /// The reading goes on past each such key and says every error in the file's order.
    #[test]
    fn the_file_is_read_on_past_an_unknown_top_level_key() {
        let text = "listen: 127.0.0.1:8000\ntimeout:\n  response: x\n\n  body: 3s\n\"worker\": 2\nlimits: {max_body_bytes: 1KiB}\nservices:\n  a: [http://127.0.0.1:1]\n  b: [nope]\n";
        let Err(ConfigError::Several(all)) = Config::parse(text) else {
            panic!("{:?}", Config::parse(text));
        };
        let said: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 3, "{said:#?}");
        assert!(
            said[0].contains("line 2: unknown field `timeout` (did you mean `timeouts`?)"),
            "{said:#?}"
        );
        assert!(
            said[1].contains("line 6: unknown field `worker` (did you mean `workers`?)"),
            "{said:#?}"
        );
        assert!(said[2].contains("line 10: services.b[0]"), "{said:#?}");
        // The review's file: both typos in one run.
        let review = "timeout:\n  response: 3s\nbreaker: {failure_treshold: 3}\nservices:\n  a: [http://127.0.0.1:1]\n";
        let e = Config::parse(review).unwrap_err().to_string();
        assert!(
            e.starts_with("2 errors: config: line 1: unknown field `timeout`")
                && e.contains("line 3: breaker: unknown field `failure_treshold`"),
            "{e}"
        );
        // An unknown key inside a section that nothing else needs leaves that section out
        // too, so the typos after it are said in the same run.
        let nested = "timeouts:\n  respons: 3s\nbreaker: {failure_treshold: 3}\nlimits:\n  max_body_byte: 1\nservices:\n  a: [nope]\n";
        let Err(ConfigError::Several(all)) = Config::parse(nested) else {
            panic!("{:?}", Config::parse(nested));
        };
        let lines: Vec<Option<usize>> = all.iter().map(line_said).collect();
        assert_eq!(lines, [Some(2), Some(3), Some(5), Some(7)], "{all:?}");
        // Not `cluster:` (a `scope: cluster` limit needs it there): that still stops.
        let e = Config::parse(
            "cluster: {redis: \"redis://127.0.0.1:6379\", nmae: x}\nservices:\n  a: [nope]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unknown field `nmae`") && !e.contains("nope"),
            "{e}"
        );
        // What is under the unknown key is not read as anything.
        assert!(!said.iter().any(|e| e.contains("response")), "{said:#?}");
        // Nothing the blanking itself would make is said (a review): a block of `- `
        // items or a `}` at column 0, an anchor defined under the unknown key.
        for file in [
            "timeout:\n- 1s\n- 2s\nworker: 2\nservices:\n  a: [http://127.0.0.1:1]\n",
            "timeout: {\n  a: 1\n}\nworker: 2\nservices:\n  a: [http://127.0.0.1:1]\n",
            "timeout: &t 1s\nworker: 2\nservices:\n  a:\n    backends: [http://127.0.0.1:1]\n    timeouts: {response: *t}\n",
        ] {
            let e = Config::parse(file).unwrap_err().to_string();
            assert!(e.contains("unknown field `timeout`"), "{file}: {e}");
            assert!(
                !e.contains("did not find") && !e.contains("anchor"),
                "{file}: {e}"
            );
        }
        // A byte-order mark does not stop the reading on, and at most 20 errors are said.
        let e =
            Config::parse("\u{feff}timeout: 1\nworker: 2\nservices:\n  a: [http://127.0.0.1:1]\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("2 errors") && e.contains("`worker`"), "{e}");
        let many: String = (0..25).map(|i| format!("k{i}: 1\n")).collect();
        let Err(ConfigError::Several(all)) =
            Config::parse(&format!("{many}services:\n  a: [http://127.0.0.1:1]\n"))
        else {
            panic!("not several");
        };
        assert_eq!(all.len(), MAX_ERRORS + 1, "{all:?}");
        // (The reading stops at the 21st: how many more there are is not known.)
        assert!(matches!(all.last(), Some(ConfigError::More(_))), "{all:?}");
        // One unknown key in a file otherwise right is said alone.
        let one = Config::parse("timeout: 3s\nservices:\n  a: [http://127.0.0.1:1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            one.starts_with("config: line 1: unknown field `timeout`"),
            "{one}"
        );
        // A flow-style file has no block to leave out: its first error stays the only one.
        let flow = Config::parse("{timeout: 3s, services: {a: [nope]}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            flow.contains("unknown field `timeout`") && !flow.contains("errors"),
            "{flow}"
        );
    }

    /// Regression (an operator review, 2026-12-06): a typo in a section written as a block
    /// left the whole section out, and in a service the first unknown key stopped the
    /// service's reading, so `cooldown: 5 seconds` under `failure_treshold:`, and a
    /// service's `timeout:` and rate under `breakr:`, came only in a second run. Only the
    /// mistyped key's lines are left out now, and every unknown key of a service is said.
    #[test]
    fn a_typo_in_a_section_or_a_service_hides_none_of_its_other_errors() {
        let text = "listen: 127.0.0.1:8000\nworkrs: 2\nbreaker:\n  failure_treshold: 3\n  cooldown: 5 seconds\ntimeouts:\n  respnse:\n    - 3s\n  connect: soon\n  response: [1]\n  body: 2s\nservices:\n  a:\n    backends: [http://127.0.0.1:1]\n    breakr: {x: 1}\n    timeout: 3s\n    rate_limit: {rate: lots}\n";
        let (said, lines) = several_with_lines(text);
        assert_eq!(
            lines,
            [
                Some(2),
                Some(4),
                Some(5),
                Some(7),
                Some(9),
                Some(10),
                Some(15),
                Some(16),
                Some(17)
            ],
            "{said:#?}"
        );
        for (i, what) in [
            "unknown field `workrs`",
            "breaker: unknown field `failure_treshold`",
            "breaker.cooldown: invalid duration \"5 seconds\"",
            "timeouts: unknown field `respnse`",
            "timeouts.connect: invalid duration \"soon\"",
            "timeouts.response: invalid type: sequence",
            "services.a: unknown field `breakr`",
            "services.a: unknown field `timeout` (did you mean `timeouts`?)",
            "services.a.rate_limit.rate: \"lots\"",
        ]
        .iter()
        .enumerate()
        {
            assert!(said[i].contains(what), "{i}: {said:#?}");
        }
        // A flow-style section has no key's lines to leave out: the section goes, as before.
        let flow = "breaker: {failure_treshold: 3, cooldown: x}\nworkers: y\nservices:\n  a: [http://127.0.0.1:1]\n";
        let e = Config::parse(flow).unwrap_err().to_string();
        assert!(
            e.starts_with("2 errors") && e.contains("`failure_treshold`") && e.contains("workers"),
            "{e}"
        );
        // A service of thousands of unknown keys: its first 20 are said, and the map is not
        // copied once for each (no timing is asserted: a quadratic read shows as a hung test).
        let many: String = (0..5000).map(|i| format!("    k{i}: 1\n")).collect();
        let Err(ConfigError::Several(all)) = Config::parse(&format!(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n{many}"
        )) else {
            panic!("not several");
        };
        assert_eq!(all.len(), MAX_ERRORS, "{all:?}");
        // The first 20, in the file's order.
        let lines: Vec<Option<usize>> = all.iter().map(line_said).collect();
        assert_eq!(lines, (4..24).map(Some).collect::<Vec<_>>(), "{all:?}");
        // A service with nothing wrong but its unknown keys is said once for each.
        let e = Config::parse(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    x: 1\n    y: 2\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("2 errors")
                && e.contains("line 4: services.a: unknown field `x`")
                && e.contains("line 5: services.a: unknown field `y`"),
            "{e}"
        );
    }

    /// Regression (an operator review): `workers: two` and `pin_workers: maybe` took two
    /// runs of `--check`, the typed reading stopping at the first. A value of the wrong
    /// type under a key nothing else needs is said and its block left out, as an unknown
    /// key's; under `listen`, `admin`, `cluster` or `services` the reading still stops.
    #[test]
    fn the_file_is_read_on_past_a_value_of_the_wrong_type() {
        let text = "listen: 127.0.0.1:8000\nworkers: two\npin_workers: maybe\ntimeouts:\n  connect: [1]\n  response: 3s\nbreaker: {failure_threshold: x}\ntrusted_proxies: 5\nservices:\n  a: [http://127.0.0.1:1]\n  b: [nope]\n";
        let (said, lines) = several_with_lines(text);
        assert_eq!(
            lines,
            [Some(2), Some(3), Some(5), Some(7), Some(8), Some(11)],
            "{said:#?}"
        );
        for (i, what) in [
            "workers: invalid type: string \"two\"",
            "pin_workers: invalid type: string \"maybe\"",
            "timeouts.connect: invalid type: sequence",
            "breaker.failure_threshold: invalid type: string \"x\"",
            "trusted_proxies: invalid type: integer `5`",
            "services.b[0]",
        ]
        .iter()
        .enumerate()
        {
            assert!(said[i].contains(what), "{i}: {said:#?}");
        }
        // What stops the reading still does: what depends on it would be said wrongly.
        for (file, first) in [
            (
                "listen: [1]\nworkers: x\nservices:\n  a: [nope]\n",
                "line 1: listen",
            ),
            (
                "admin: [1]\nworkers: x\nservices:\n  a: [nope]\n",
                "line 1: admin",
            ),
            (
                "cluster:\n  redis: [1]\nworkers: x\nservices:\n  a: [nope]\n",
                "line 2: cluster.redis",
            ),
            ("workers: x\nservices: 5\n", "workers"),
            (
                "request_id: yes\naccess_log_fields: [time, request_id]\nworkers: x\nservices:\n  a: [nope]\n",
                "line 1: request_id",
            ),
        ] {
            let e = Config::parse(file).unwrap_err();
            let text = e.to_string();
            match first {
                // `services` is the one left: said after `workers`, the reading stopped.
                "workers" => assert!(
                    text.starts_with("2 errors") && text.contains("line 2: services"),
                    "{text}"
                ),
                _ => assert!(
                    text.contains(first) && !text.contains("errors"),
                    "{file}: {text}"
                ),
            }
        }
    }

    /// Regression: a mistyped top-level key got `at line 2 column 1` at its end where every
    /// other error begins with its line, and no hint among 23 keys (an operator review).
    #[test]
    fn a_mistyped_key_is_said_on_its_line_with_the_key_meant() {
        let e = err(
            "listen: 127.0.0.1:0\ntimeout:\n  connect: 1s\nservices:\n  a: [http://127.0.0.1:1]\n",
        );
        assert!(
            e.contains("line 2: unknown field `timeout` (did you mean `timeouts`?), expected one of `listen`"),
            "{e}"
        );
        assert!(!e.contains("column"), "{e}");
        let e = err(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    timeout: {connect: 1s}\n",
        );
        assert!(
            e.contains("line 4: services.a: unknown field `timeout` (did you mean `timeouts`?)"),
            "{e}"
        );
        let e = err("timeouts:\n  conect: 1s\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("unknown field `conect` (did you mean `connect`?)"),
            "{e}"
        );
        let e = err("Services:\n  a: [http://127.0.0.1:1]\n");
        assert!(e.contains("(did you mean `services`?)"), "{e}");
        // Quoted, the key has its line too (it had none: a review).
        let e = err("\"timeout\": 1\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(e.contains("config: line 1: unknown field `timeout`"), "{e}");
        // Nothing near: no guess.
        let e = err("frobnicate: 1\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("line 1: unknown field `frobnicate`, expected"),
            "{e}"
        );
        assert_eq!(edits("timeout", "timeouts"), 1);
        assert_eq!(edits("kitten", "sitting"), 3);
        assert_eq!(edits("", "ab"), 2);
    }

    /// Regression: `1m30s` and `7 s` were told their unit was wrong (an operator review).
    /// Units in a row, larger ones first, add up, as NGINX and Go read them; a space is
    /// said to be one.
    #[test]
    fn durations_in_several_units_add_up_and_a_space_is_said() {
        let ok = |v: &str| parse_duration("k", v).unwrap();
        let no = |v: &str| parse_duration("k", v).unwrap_err().to_string();
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("2s500ms"), Duration::from_millis(2500));
        assert_eq!(ok("1h0m5s"), Duration::from_secs(3605));
        assert_eq!(ok("23h60m"), MAX_DURATION);
        assert!(no("23h61m").contains("at most 24h"), "{}", no("23h61m"));
        assert!(
            no("7 s").contains("without spaces, e.g. 7s"),
            "{}",
            no("7 s")
        );
        assert!(no("1m 30s").contains("e.g. 1m30s"), "{}", no("1m 30s"));
        for v in ["30s1m", "1s1s", "1m30", "1m30x", "1ms5s"] {
            assert!(no(v).contains("invalid duration"), "{v}: {}", no(v));
        }
        assert!(no("30s1m").contains("larger ones first"), "{}", no("30s1m"));
        assert!(no("1m1.5s").contains("fractions"), "{}", no("1m1.5s"));
        assert!(no("1m30").contains("the unit must be"), "{}", no("1m30"));
        // An operator review: `30 seconds` was told `e.g. 30seconds`, then refused that.
        for (v, fix) in [
            ("30 seconds", "without spaces, e.g. 30s"),
            ("1 min 30 secs", "without spaces, e.g. 1m30s"),
            ("30seconds", "the unit must be ms, s, m or h: write 30s"),
            ("2Minutes", "write 2m"),
            ("500msec", "write 500ms"),
            ("1hour30mins", "write 1h30m"),
        ] {
            assert!(no(v).contains(fix), "{v}: {}", no(v));
        }
        // No suggestion that would be refused in turn.
        for v in ["30 fortnights", "30secs1min", "1.5 s", "1m30"] {
            let e = no(v);
            assert!(
                !e.contains("write 1m30") && !e.contains("30fortnights"),
                "{v}: {e}"
            );
            assert!(
                e.contains("e.g. 500ms, 2s, 1m") || e.contains("fractions"),
                "{v}: {e}"
            );
        }
    }

    /// Regression (an operator review, 2026-12-05): a value of the wrong type was said as
    /// `workers: invalid type ... at line 4 column 10`, the line last, where every other
    /// error begins with it; and an unclosed `[` on a file's last line was placed on the
    /// line after the file.
    #[test]
    fn every_positioned_error_begins_with_its_line() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        for (text, want) in [
            (format!("{svc}workers: -1\n"), "config: line 3: workers: invalid type: integer `-1`, expected a whole number, 0 or more"),
            (format!("{svc}pin_workers: yes\n"), "config: line 3: pin_workers: invalid type: string \"yes\", expected true or false"),
            (
                format!("{svc}pool: {{max_idle_per_backend: -1}}\n"),
                "config: line 3: pool.max_idle_per_backend: invalid type: integer `-1`, expected a whole number, 0 or more",
            ),
        ] {
            assert_eq!(err(&text), want, "{text}");
        }
        let e = err(&format!("{svc}oops: [\n"));
        assert!(
            e.starts_with("config: at the end of the file (line 3): ") && e.contains("not closed"),
            "{e}"
        );
        assert!(!e.contains(" at line "), "{e}");
        // Two positions, the problem's and libyaml's context (a review of the fix above).
        for (text, want) in [
            (
                format!("{svc}workers: [1\n"),
                "config: at the end of the file (line 3): did not find expected ',' or ']', while parsing a flow sequence begun on line 3 (a `[` or `{` that is not closed?)",
            ),
            (
                format!("{svc}listen: \"127.0.0.1:1\n"),
                "config: at the end of the file (line 3): found unexpected end of stream, while scanning a quoted scalar begun on line 3 (a quote that is not closed?)",
            ),
            (
                format!("{svc}workers: [1\nlisten: x\n"),
                "config: line 4: did not find expected ',' or ']', while parsing a flow sequence begun on line 3",
            ),
        ] {
            assert_eq!(err(&text), want, "{text}");
        }
    }

    #[test]
    fn a_section_or_switch_of_the_wrong_type_is_named_in_the_users_words() {
        for (text, want) in [
            (
                "breaker: 5\nservices:\n  a: [http://127.0.0.1:1]\n",
                "line 1: breaker: invalid type: integer `5`, expected a map of its settings",
            ),
            (
                "timeouts: 5\nservices:\n  a: [http://127.0.0.1:1]\n",
                "line 1: timeouts: invalid type: integer `5`, expected a map of its settings",
            ),
            (
                "services:\n  a: {backends: [http://127.0.0.1:1], breaker: 5}\n",
                "services.a.breaker: invalid type: integer `5`, expected a map of its settings",
            ),
            (
                "services:\n  a: {backends: [http://127.0.0.1:1], websocket: yes}\n",
                "services.a.websocket: \"yes\" is not true or false",
            ),
            // Quoted (an operator review, 2026-12-05, was told `"'true'"`).
            (
                "services:\n  a: {backends: [http://127.0.0.1:1], websocket: \"true\"}\n",
                "services.a.websocket: \"true\" is a string, not true or false: write true without quotes",
            ),
            (
                "services:\n  a: {backends: [http://127.0.0.1:1], encoded_slashes: 1}\n",
                "services.a.encoded_slashes: \"1\" is not true or false",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(want) && !e.contains("Raw"), "{e}");
        }
        let c =
            Config::parse("services:\n  a: {backends: [http://127.0.0.1:1], websocket: true}\n");
        let a = &c.unwrap().services[0];
        assert!(a.websocket && !a.encoded_slashes);
        let c = Config::parse(
            "services:\n  a: {backends: [http://127.0.0.1:1], encoded_slashes: true}\n",
        );
        let a = &c.unwrap().services[0];
        assert!(a.encoded_slashes && !a.websocket);
    }

    /// Regression (an operator review): `${HOST}` was reported as a name that does not
    /// resolve, or as a YAML error, with no word that nothing is expanded.
    #[test]
    fn an_error_in_a_file_with_a_variable_says_nothing_is_expanded() {
        for text in [
            "services:\n  a: [http://${HOST}:8001]\n",
            "services:\n  a:\n    - http://${HOST}:8001\n",
            "listen: ${LISTEN}\nservices:\n  a: [http://127.0.0.1:1]\n",
        ] {
            let e = err(text);
            assert!(e.contains("${...} is not expanded"), "{text}: {e}");
        }
        let e = err("# use ${HOST} one day\nservices:\n  a: [http://127.0.0.1:99999]\n");
        assert!(!e.contains("expanded"), "a comment is no variable: {e}");
    }

    #[test]
    fn an_unquoted_ipv6_url_in_a_flow_list_is_told_to_be_quoted() {
        let e = err("services:\n  a: [http://[::1]:8001]\n");
        assert!(e.contains("must be quoted") && e.contains("line 2"), "{e}");
        let c = Config::parse("services:\n  a: [\"http://[::1]:8001\"]\n").unwrap();
        assert_eq!(c.services[0].backends[0].authority, "[::1]:8001");
    }

    #[test]
    fn errors_name_key_value_and_fix() {
        let e = err("services:\n  a: [http://127.0.0.1:1]\ntimeout: 1s\n");
        assert!(
            e.contains("unknown field `timeout`") && e.contains("timeouts"),
            "{e}"
        );
        // Nested, the line comes first too (it ended `at line 2 column 3`: two reviews).
        let e = err("timeouts:\n  conect: 2s\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains(": line 2: timeouts: unknown field `conect` (did you mean `connect`?), expected one of `connect`")
                && !e.contains("column"),
            "{e}"
        );
        let e = err("limits: {max_bdy: 1}\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains(": line 1: limits: unknown field `max_bdy`"),
            "{e}"
        );
        let e = err("timeouts: {connect: fast}\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("timeouts.connect") && e.contains("\"fast\"") && e.contains("2s"),
            "{e}"
        );
        let e = err("services:\n  Bad_Name: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("services.Bad_Name") && e.contains("lowercase"),
            "{e}"
        );
        let e = err("services:\n  a: [ftp://x]\n");
        assert!(
            e.contains("services.a[0]") && e.contains("http://HOST:PORT"),
            "{e}"
        );
        let e = err("services:\n  a:\n    backend: [http://127.0.0.1:1]\n");
        assert!(e.contains("unknown field `backend`"), "{e}");
        let e = err("breaker: {failure_threshold: 1001}\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("breaker.failure_threshold") && e.contains("0 (off) to 1000"),
            "{e}"
        );
        let e = err("services: {}\n");
        assert!(e.contains("no services"), "{e}");
        // Regression: this one spanned four lines, and so did the reload line quoting it
        // (an operator review); every error is one line.
        for text in ["", "services: {}\n", "listen: x\n"] {
            let e = err(text);
            assert!(!e.contains('\n'), "{e}");
        }
    }

    /// Regression (an operator review): a tab in the indentation got only the parser's
    /// words.
    #[test]
    fn a_tab_is_said_with_what_to_do() {
        let tab = "listen: 127.0.0.1:1\nservices:\n\tsvc: [http://127.0.0.1:1]\n";
        let e = Config::parse(tab).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("YAML indents with spaces only"), "{e}");
    }

    /// `/admin/config` shows failure statuses as runs (`[500, "502-599"]`, the default; it
    /// was 99 numbers): the config takes that form back, and refuses what is not one.
    #[test]
    fn failure_statuses_take_ranges_as_admin_config_shows_them() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        let breaker = |list: &str| {
            Config::parse(&format!("breaker: {{failure_statuses: {list}}}\n{svc}"))
                .map(|c| c.services[0].breaker)
        };
        let default = Config::parse(svc).unwrap().services[0].breaker;
        assert_eq!(default.failure_runs(), [(500, 500), (502, 599)]);
        let written = breaker("[500, \"502-599\"]").unwrap();
        assert_eq!(written.failure_statuses, default.failure_statuses);
        let b = breaker("[\"502 - 504\", 599, 597, \"598-598\"]").unwrap();
        assert_eq!(b.failure_runs(), [(502, 504), (597, 599)]);
        assert_eq!(breaker("[]").unwrap().failure_runs(), []);
        for bad in [
            "[499]",
            "[600]",
            "[\"504-502\"]",
            "[\"500-600\"]",
            "[\"5xx\"]",
            "[\"502\"]",
            "[-1]",
            "[[500, 501]]",
            "[\"a\\nb\"]",
        ] {
            let e = breaker(bad).unwrap_err().to_string();
            assert!(
                !e.contains('\n')
                    && e.contains("breaker.failure_statuses")
                    && e.contains("is not a 5xx status or range")
                    && e.contains("\"502-599\""),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn failure_statuses_default_to_every_5xx_but_501() {
        let c = Config::parse("services:\n  a: [http://127.0.0.1:1]\n").unwrap();
        let b = c.services[0].breaker;
        assert!(b.is_failure_status(500) && b.is_failure_status(599) && !b.is_failure_status(499));
        assert!(b.is_failure_status(502) && b.is_failure_status(504) && b.is_failure_status(505));
        assert!(!b.is_failure_status(501));
        let c = Config::parse(
            "breaker: {failure_statuses: [501]}\nservices:\n  a: [http://127.0.0.1:1]\n",
        )
        .unwrap();
        assert!(
            c.services[0].breaker.is_failure_status(501),
            "a listed 501 counts"
        );
        let c = Config::parse(
            "breaker: {failure_statuses: [502, 503]}\nservices:\n  a: [http://127.0.0.1:1]\n",
        )
        .unwrap();
        let b = c.services[0].breaker;
        assert!(b.is_failure_status(503) && !b.is_failure_status(500));
    }

    #[test]
    fn buffer_request_body_is_off_by_default_and_bounded() {
        let c = Config::parse("services:\n  a: [http://127.0.0.1:1]\n").unwrap();
        assert_eq!(c.limits.buffer_request_body, 0);
        let c = Config::parse(
            "limits: {buffer_request_body: 65536}\nservices:\n  a: [http://127.0.0.1:1]\n",
        )
        .unwrap();
        assert_eq!(c.limits.buffer_request_body, 65536);
        let e =
            err("limits: {buffer_request_body: 16777217}\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("limits.buffer_request_body") && e.contains("16777216"),
            "{e}"
        );
    }

    #[test]
    fn access_log_fields_are_a_list_of_names_each_once() {
        use crate::accesslog::Field;
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        let fields =
            |extra: &str| Config::parse(&format!("{extra}{svc}")).map(|c| c.access_log_fields);
        assert_eq!(fields("").unwrap(), Field::DEFAULT.to_vec());
        let mut with_id = Field::DEFAULT.to_vec();
        with_id.push(Field::RequestId);
        assert_eq!(fields("request_id: true\n").unwrap(), with_id);
        assert_eq!(
            fields("request_id: true\naccess_log_fields: [request_id, user_agent, time]\n")
                .unwrap(),
            [Field::RequestId, Field::UserAgent, Field::Time]
        );
        assert!(!Config::parse(svc).unwrap().logs_headers());
        let c = Config::parse(&format!("access_log_fields: [time, referer]\n{svc}")).unwrap();
        assert!(c.logs_headers());
        for (extra, want) in [
            (
                "access_log_fields: [time, agent]\n",
                "access_log_fields: \"agent\" is not a field: use time, client, peer,",
            ),
            (
                "access_log_fields: [time, time]\n",
                "access_log_fields: time is listed twice",
            ),
            (
                "access_log_fields: [request_id]\n",
                "request_id is listed, but request_id is off",
            ),
            (
                "access_log_fields: []\n",
                "access_log_fields: is not a list of fields",
            ),
            (
                "access_log_fields: time\n",
                "access_log_fields: is not a list of fields",
            ),
        ] {
            let e = err(&format!("{extra}{svc}"));
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    #[test]
    fn access_log_format_is_text_unless_json() {
        use crate::accesslog::Format;
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert_eq!(Config::parse(svc).unwrap().access_log_format, Format::Text);
        for (v, want) in [("text", Format::Text), ("json", Format::Json)] {
            let c = Config::parse(&format!("access_log_format: {v}\n{svc}")).unwrap();
            assert_eq!(c.access_log_format, want, "{v}");
        }
        let e = err(&format!("access_log_format: logfmt\n{svc}"));
        assert!(
            e.contains("access_log_format") && e.contains("text or json"),
            "{e}"
        );
    }

    #[test]
    fn request_ids_are_off_unless_turned_on() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert!(!Config::parse(svc).unwrap().request_id);
        let on = Config::parse(&format!("request_id: true\n{svc}")).unwrap();
        assert!(on.request_id);
        assert!(err(&format!("request_id: uuid\n{svc}")).contains("request_id"));
        assert!(!Config::parse(svc).unwrap().ignore_client_abort);
        let on = Config::parse(&format!("ignore_client_abort: true\n{svc}")).unwrap();
        assert!(on.ignore_client_abort);
        let bad = err(&format!("ignore_client_abort: sometimes\n{svc}"));
        assert!(bad.contains("ignore_client_abort"), "{bad}");
    }

    #[test]
    fn splice_is_off_unless_turned_on() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert!(!Config::parse(svc).unwrap().splice);
        assert!(
            Config::parse(&format!("splice: true\n{svc}"))
                .unwrap()
                .splice
        );
        assert!(err(&format!("splice: sometimes\n{svc}")).contains("splice"));
    }

    #[test]
    fn sizes_take_units_of_1024_and_say_what_is_wrong() {
        let svc = "services:\n  s: [http://127.0.0.1:1]\n";
        let body = |v: &str| {
            Config::parse(&format!("limits:\n  max_body_bytes: {v}\n{svc}"))
                .map(|c| c.limits.max_body_bytes)
                .map_err(|e| e.to_string())
        };
        assert_eq!(body("1000"), Ok(1000));
        assert_eq!(body("64MiB"), Ok(64 << 20));
        assert_eq!(body("64m"), Ok(64 << 20));
        assert_eq!(body("\"8 KiB\""), Ok(8 << 10));
        assert_eq!(body("1g"), Ok(1 << 30));
        for (bad, says) in [
            ("64MB", "KiB, MiB or GiB"),
            ("lots", "is not a size"),
            ("-5", "is not a size"),
            ("1.5m", "is not a size"),
            ("99999999999999999999", "99999999999999999999"),
            ("[1]", "is not a size"),
        ] {
            let e = body(bad).unwrap_err();
            assert!(
                e.contains("limits.max_body_bytes") && e.contains(says),
                "{bad}: {e}"
            );
        }
        let head = Config::parse(&format!("limits: {{max_head_bytes: 16KiB}}\n{svc}")).unwrap();
        assert_eq!(head.limits.max_head_bytes, 16 << 10);
        assert_eq!(head.limits.max_target_bytes, 8 << 10);
        // Unset, the target limit follows a smaller head limit down, not refusing it.
        for (limit, target) in [("8k", 4096), ("1024", 512)] {
            let c = Config::parse(&format!("limits: {{max_head_bytes: {limit}}}\n{svc}")).unwrap();
            assert_eq!(c.limits.max_target_bytes, target, "{limit}");
        }
        let e = err(&format!(
            "limits: {{max_head_bytes: 8k, max_target_bytes: 8k}}\n{svc}"
        ));
        assert!(e.contains("below limits.max_head_bytes (8192)"), "{e}");
        // A duration too long for a u64 is too long, not malformed.
        let e = err(&format!(
            "timeouts: {{connect: 99999999999999999999h}}\n{svc}"
        ));
        assert!(e.contains("too long"), "{e}");
    }

    #[test]
    fn yaml_merge_keys_are_merged() {
        // Anchors on a top-level `x-` key, ignored as docker-compose ignores it.
        let c = Config::parse(
            "x-defaults: &d\n  breaker: { failure_threshold: 3 }\n  websocket: true\n\
             services:\n  a:\n    <<: *d\n    backends: [http://127.0.0.1:1]\n  \
             b:\n    <<: *d\n    websocket: false\n    backends: [http://127.0.0.1:2]\n",
        )
        .unwrap();
        let (a, b) = (c.service("a").unwrap(), c.service("b").unwrap());
        assert_eq!(a.breaker.failure_threshold, 3);
        assert!(a.websocket && !b.websocket);
        // Any other unknown top-level key is still refused, merge or not.
        let e = err("y-defaults: 1\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(e.contains("y-defaults"), "{e}");
        let e = err("x-d: &d {}\nxdefaults: 1\nservices:\n  a: [http://127.0.0.1:1]\n");
        assert!(e.contains("xdefaults"), "{e}");
        let c = Config::parse(
            "services:\n  a: &a\n    backends: [http://127.0.0.1:1]\n    \
             breaker: { failure_threshold: 3 }\n    websocket: true\n  \
             b:\n    <<: *a\n    websocket: false\n    backends: [http://127.0.0.1:2]\n",
        )
        .unwrap();
        let (a, b) = (c.service("a").unwrap(), c.service("b").unwrap());
        assert_eq!(b.breaker.failure_threshold, 3);
        assert_eq!(a.breaker.failure_threshold, 3);
        assert!(a.websocket && !b.websocket, "a key beside the merge wins");
        assert_eq!(b.backends.len(), 1);
        assert!(b.backends[0].url.ends_with(":2"), "{:?}", b.backends[0].url);
        let e = err("services:\n  a:\n    <<: *nowhere\n    backends: [http://127.0.0.1:1]\n");
        assert!(e.contains("line 3: unknown anchor"), "{e}");
    }

    #[test]
    fn max_connections_is_auto_unless_set_and_bounded() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert_eq!(Config::parse(svc).unwrap().limits.max_connections, None);
        for (v, want) in [("auto", None), ("1", Some(1)), ("50000", Some(50_000))] {
            let c = Config::parse(&format!("limits:\n  max_connections: {v}\n{svc}")).unwrap();
            assert_eq!(c.limits.max_connections, want, "{v}");
        }
        for bad in ["0", "100000001", "lots", "-1"] {
            let e = err(&format!("limits:\n  max_connections: {bad}\n{svc}"));
            assert!(
                e.contains("limits.max_connections") && e.contains("auto or 1 to 100000000"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_services_own_timeouts_stand_over_the_top_level_ones() {
        let c = Config::parse(
            "timeouts: {connect: 1s, response: 5s, body: 7s}\n\
             services:\n  a: [http://localhost:1]\n  b:\n    backends: [http://localhost:2]\n    timeouts: {response: 2m, tunnel: 3h}\n",
        )
        .unwrap();
        let (a, b) = (&c.services[0].timeouts, &c.services[1].timeouts);
        assert_eq!(*a, c.timeouts);
        assert_eq!(
            (b.connect, b.response, b.body, b.tunnel),
            (
                Duration::from_secs(1),
                Duration::from_secs(120),
                Duration::from_secs(7),
                Duration::from_secs(3 * 3600)
            )
        );
        assert_eq!(b.client_idle, c.timeouts.client_idle);
        assert!(
            c.summary().contains("; timeouts: response 2m, tunnel 3h)"),
            "{}",
            c.summary()
        );
        let svc = |t: &str| {
            format!("services:\n  b:\n    backends: [http://localhost:2]\n    timeouts: {t}\n")
        };
        // Each error names its key and says what to write (a review was told of an internal
        // type, and that a service is a list of URLs).
        for (bad, said) in [
            ("{client_idle: 5s}", "services.b.timeouts.client_idle: is the process's, not a service's"),
            ("{drain: 5s}", "services.b.timeouts.drain: is the process's"),
            ("{Body: 5s}", "services.b.timeouts: unknown setting \"Body\": a service sets connect, response, body and tunnel"),
            ("[1s, 2s]", "services.b.timeouts: expected a map of its settings"),
            ("5s", "services.b.timeouts: expected a map of its settings"),
            ("{response: 5}", "services.b.timeouts.response: invalid duration \"5\": the unit must be"),
            ("{response: [1s]}", "services.b.timeouts.response: expected a duration"),
        ] {
            let e = err(&svc(bad));
            assert!(e.contains(said), "{bad}: {e}");
            assert!(!e.contains("Raw") && !e.contains("list of URLs"), "{bad}: {e}");
        }
        let nulls = Config::parse(&svc("{response: null}")).unwrap();
        assert_eq!(nulls.services[0].timeouts, nulls.timeouts);
        let e = err(&svc("{body: 0s}"));
        assert!(
            e.contains(
                "services.b.timeouts.body: \"0s\" is out of range: must be greater than zero"
            ),
            "{e}"
        );
        let e = err(&svc("{response: soon}"));
        assert!(e.contains("services.b.timeouts.response"), "{e}");
    }

    #[test]
    fn max_connections_per_client_is_off_unless_set_and_bounded() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert_eq!(
            Config::parse(svc)
                .unwrap()
                .limits
                .max_connections_per_client,
            None
        );
        for (v, want) in [
            ("1", Some(1)),
            ("64", Some(64)),
            ("1000000", Some(1_000_000)),
            ("off", None),
            ("Off", None),
            ("false", None),
        ] {
            let c = Config::parse(&format!(
                "limits:\n  max_connections_per_client: {v}\n{svc}"
            ))
            .unwrap();
            assert_eq!(c.limits.max_connections_per_client, want, "{v}");
        }
        for bad in ["0", "1000001", "lots", "-1", "1000.0", "1e3"] {
            let e = err(&format!(
                "limits:\n  max_connections_per_client: {bad}\n{svc}"
            ));
            let what = match bad {
                "lots" => "is not a number",
                "1000.0" | "1e3" => "is not a whole number",
                _ => "is out of range",
            };
            // YAML reads `1e3` as the float it says it again as.
            let shown = if bad == "1e3" { "1000.0" } else { bad };
            assert!(
                e.contains(&format!(
                    "limits.max_connections_per_client: {shown} {what}: use 1 to 1000000"
                )),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn top_level_health_checks_apply_to_every_service_unless_it_sets_its_own() {
        let c = Config::parse(
            "health_check: {path: /healthz, interval: 10s}\nservices:\n  a: [http://127.0.0.1:1]\n  b: {backends: [http://127.0.0.1:2]}\n  c: {backends: [http://127.0.0.1:3], health_check: {path: /ready}}\n  d: {backends: [http://127.0.0.1:4], health_check: off}\n",
        )
        .unwrap();
        let checks: Vec<Option<(&str, u64)>> = c
            .services
            .iter()
            .map(|s| {
                s.health_check
                    .as_ref()
                    .map(|h| (h.path.as_deref().unwrap_or_default(), h.interval.as_secs()))
            })
            .collect();
        assert_eq!(
            checks,
            [
                Some(("/healthz", 10)),
                Some(("/healthz", 10)),
                Some(("/ready", 5)),
                None
            ]
        );
        assert!(
            err("health_check: {interval: 5s}\nservices:\n  a: [http://127.0.0.1:1]\n")
                .contains("health_check.path: is missing")
        );
    }

    #[test]
    fn max_requests_per_connection_is_a_thousand_unless_set_and_bounded() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        let pool = |v: &str| format!("pool:\n  max_requests_per_connection: {v}\n{svc}");
        let c = Config::parse(svc).unwrap();
        assert_eq!(c.pool.max_requests_per_connection, Some(1000));
        for (v, want) in [
            ("1", Some(1)),
            ("100", Some(100)),
            ("1000000000", Some(1_000_000_000)),
            ("off", None),
            ("OFF", None),
            ("false", None),
        ] {
            let c = Config::parse(&pool(v)).unwrap();
            assert_eq!(c.pool.max_requests_per_connection, want, "{v}");
        }
        for (bad, what) in [
            ("0", "0 is out of range"),
            ("1000000001", "1000000001 is out of range"),
            ("-5", "-5 is out of range"),
            ("many", "many is not a number"),
            ("true", "true is not a number"),
            ("10.5", "10.5 is not a whole number"),
        ] {
            let e = err(&pool(bad));
            assert!(
                e.contains(&format!("pool.max_requests_per_connection: {what}: use 1 to 1000000000 (default 1000), or off for no limit")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn busy_poll_is_off_unless_set_and_bounded() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert_eq!(Config::parse(svc).unwrap().busy_poll, None);
        for (v, want) in [
            ("200us", Some(Duration::from_micros(200))),
            ("2ms", Some(Duration::from_millis(2))),
            ("off", None),
        ] {
            let c = Config::parse(&format!("busy_poll: {v}\n{svc}")).unwrap();
            assert_eq!(c.busy_poll, want, "{v}");
        }
        for bad in ["0us", "101ms", "1s", "fast"] {
            let e = err(&format!("busy_poll: {bad}\n{svc}"));
            assert!(
                e.contains("busy_poll") && e.contains("1us to 100ms"),
                "{bad}: {e}"
            );
        }
        for frac in ["1.5us", "1.5ms", "0,5ms"] {
            let e = err(&format!("busy_poll: {frac}\n{svc}"));
            assert!(
                e.contains("busy_poll") && e.contains("fractions are not taken"),
                "{frac}: {e}"
            );
        }
    }

    #[test]
    fn dns_refresh_is_off_unless_set() {
        let svc = "services:\n  a: [http://localhost:1]\n";
        assert_eq!(Config::parse(svc).unwrap().dns_refresh, None);
        let off = Config::parse(&format!("dns_refresh: off\n{svc}")).unwrap();
        assert_eq!(off.dns_refresh, None);
        let on = Config::parse(&format!("dns_refresh: 30s\n{svc}")).unwrap();
        assert_eq!(on.dns_refresh, Some(Duration::from_secs(30)));
        let e = err(&format!("dns_refresh: 500ms\n{svc}"));
        assert!(
            e.contains("dns_refresh") && e.contains("at least 1s"),
            "{e}"
        );
        let b = &on.services[0].backends[0];
        assert_eq!(
            b.resolve().unwrap(),
            b.addr,
            "localhost resolves as it did at load"
        );
    }

    /// Regression: a service name given twice was accepted and the last one won,
    /// silently dropping the first one's backends.
    #[test]
    fn a_service_defined_twice_is_rejected_with_both_lines() {
        let e = err("listen: 127.0.0.1:0\nservices:\n  a: [http://127.0.0.1:1]\n  # a comment\n  b:\n    backends: [http://127.0.0.1:2]\n    breaker: {cooldown: 1s}\n  a:\n    - http://127.0.0.1:3\n");
        assert!(
            e.contains("line 8: services.a: is defined twice (first on line 3)"),
            "{e}"
        );
        let e = err("services:\n    \"x\": [http://127.0.0.1:1]\n    x: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("line 3: services.x: is defined twice (first on line 2)"),
            "{e}"
        );
        // Said with the file's other errors, in the order of their lines: it stopped the
        // reading, and hid them, or was hidden by a wrong type read before it (an operator
        // review).
        for (text, first) in [
            (
                "timeouts:\n  connect: soon\n",
                "line 2: timeouts.connect: invalid duration",
            ),
            ("workers: two\n", "line 1: workers: invalid type"),
            (
                "access_log: on\n",
                "line 1: access_log: on is not a destination",
            ),
        ] {
            let e = err(&format!(
                "{text}services:\n  a: [http://127.0.0.1:1]\n  a: [http://127.0.0.1:2]\n"
            ));
            let lines = text.lines().count();
            let twice = format!(
                "line {}: services.a: is defined twice (first on line {})",
                lines + 3,
                lines + 2
            );
            assert!(e.starts_with("2 errors: ") && e.contains(first), "{e}");
            assert!(e.find(first) < e.find(&twice), "{e}");
        }
        // Flow style: no lines to point at, still an error.
        let e = err("services: {a: [http://127.0.0.1:1], a: [http://127.0.0.1:2]}\n");
        assert!(e.contains("services.a") && e.contains("twice"), "{e}");
        // Same names at other depths are not duplicates; order does not matter.
        let c = Config::parse(
            "services:\n  b: [http://127.0.0.1:1]\n  a:\n    backends: [http://127.0.0.1:2]\n",
        )
        .unwrap();
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    /// Regression: `http://h:1/x\r\nX-Evil: 1` was accepted and went into request heads.
    #[test]
    fn backend_urls_with_spaces_or_controls_are_rejected() {
        for bad in [
            "http://127.0.0.1:1/a b",
            "http://127.0.0.1:1/x\r\nX-Evil: 1",
            "http://127.0.0.1:1/x\n",
            "http://127.0.0.1:1/\t",
            "http://127.0.0.1:1/\u{7f}",
            "http://127.0.0.1:1/caf\u{e9}",
            "http://127.0.0.1 :1/",
        ] {
            let e = parse_backend_url("k", bad).unwrap_err().to_string();
            assert!(e.contains("percent-encode"), "{bad:?}: {e}");
            assert!(
                !e.contains('\r') && !e.contains('\n'),
                "{bad:?}: the message must not carry it raw: {e}"
            );
        }
        assert_eq!(
            parse_backend_url("k", "http://127.0.0.1:1/a%20b")
                .unwrap()
                .path_prefix,
            "/a%20b"
        );
    }

    /// A backend host the resolver reads as a shortened IPv4 address was taken as one:
    /// `http://10.1:8080` passed `--check` and sent traffic to 10.0.0.1.
    #[test]
    fn backend_hosts_that_end_in_a_number_must_be_whole_ipv4_addresses() {
        for bad in [
            "http://10.1:8080",
            "http://127.1:8080",
            "http://2130706433:8080",
            "http://0x7f000001:8080",
            "http://0x7f.0.0.1:8080",
            "http://010.0.0.1:8080",
            "http://127.0.0.1.:8080",
            "http://svc.0X1:8080",
        ] {
            let e = parse_backend_url("k", bad).unwrap_err().to_string();
            assert!(e.contains("four decimal numbers"), "{bad:?}: {e}");
        }
        for good in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            assert!(parse_backend_url("k", good).is_ok(), "{good:?}");
        }
        // Names a container platform gives (underscores, digits up front) stay names.
        for name in [
            "my_backend",
            "1password",
            "svc-2",
            "a.b3",
            "0x7g",
            "localhost.",
        ] {
            assert!(!ends_in_a_number(name), "{name}");
        }
    }

    /// An operator's review: `"`, `\\` or `{` in a backend's path prefix passed `--check`
    /// and went into every request, which a strict backend answers with a 400 (no circuit
    /// opens on a 4xx); a user or an empty host got a message that did not say what was
    /// wrong.
    #[test]
    fn backend_prefixes_must_be_paths_and_hosts_must_be_there() {
        for (bad, says) in [
            ("http://127.0.0.1:1/a\"b", "'\"' in the path"),
            ("http://127.0.0.1:1/a\\c", "'\\\\' in the path"),
            ("http://127.0.0.1:1/%%41", "'%' in the path"),
            ("http://127.0.0.1:1/a%4", "'%' in the path"),
            ("http://127.0.0.1:1/{x}", "'{' in the path"),
            ("http://127.0.0.1:1/a|b", "'|' in the path"),
            ("http://127.0.0.1:1/a/../b", ". or .. segment"),
            ("http://127.0.0.1:1/./b", ". or .. segment"),
            ("http://127.0.0.1:1/..", ". or .. segment"),
            ("http://127.0.0.1:1/a/%2e%2e/b", ". or .. segment"),
            ("http://127.0.0.1:1/a/..;x/b", ". or .. segment"),
            ("http://127.0.0.1:1/a%2Fb", "%2f"),
            ("http://127.0.0.1:1/a%00", "%00"),
            ("http://u:p@127.0.0.1:1/", "cannot carry a user or password"),
            ("http://:1/x", "names no host"),
            ("http:///x", "names no host"),
        ] {
            let e = parse_backend_url("k", bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        for good in [
            "http://127.0.0.1:1/api/v2",
            "http://127.0.0.1:1/a%20b",
            "http://127.0.0.1:1/a-b_c.d~e/!$&'()*+,;=:@",
            "http://127.0.0.1:1/a..b/.c/",
        ] {
            assert!(parse_backend_url("k", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn ipv6_backends_parse_and_default_to_port_80_like_names() {
        let b = parse_backend_url("k", "http://[::1]:8001/api").unwrap();
        assert_eq!(b.addr, "[::1]:8001".parse().unwrap());
        assert_eq!(
            (b.authority.as_str(), b.path_prefix.as_str()),
            ("[::1]:8001", "/api")
        );
        assert_eq!(b.resolve().unwrap(), b.addr);
        // No port: 80, as for http://localhost and http://127.0.0.1.
        let b = parse_backend_url("k", "http://[::1]").unwrap();
        assert_eq!(b.addr, "[::1]:80".parse().unwrap());
        assert_eq!(
            parse_backend_url("k", "http://127.0.0.1")
                .unwrap()
                .addr
                .port(),
            80
        );
        for bad in [
            "http://::1:8001",
            "http://[::1:8001",
            "http://[::1]8001",
            "http://::1",
        ] {
            let e = parse_backend_url("k", bad).unwrap_err().to_string();
            assert!(
                e.contains("brackets") && e.contains("http://[::1]:8001"),
                "{bad}: {e}"
            );
        }
        let e = parse_backend_url("k", "http://[::1]:x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("port \"x\""), "{e}");
    }

    /// A review: an unknown key in a service's `breaker:` was reported at the service, with a
    /// hint about the service's own form.
    #[test]
    fn a_bad_key_in_a_service_breaker_is_named_there() {
        let e = Config::parse(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    breaker:\n      failure_treshold: 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("services.a.breaker") && e.contains("failure_treshold"),
            "{e}"
        );
        assert!(!e.contains("a service is a list"), "{e}");
        let c = Config::parse(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    breaker: {failure_threshold: 3}\n",
        )
        .unwrap();
        assert_eq!(c.services[0].breaker.failure_threshold, 3);
    }

    /// `max_in_flight: off` is no limit, as `rate_limit: off` (a review was told `expected u64`).
    #[test]
    fn max_in_flight_takes_off() {
        let svc = |v: &str| {
            Config::parse(&format!(
                "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    max_in_flight: {v}\n"
            ))
        };
        assert_eq!(svc("off").unwrap().services[0].max_in_flight, None);
        assert_eq!(svc("12").unwrap().services[0].max_in_flight, Some(12));
        for bad in ["0", "1000001"] {
            let e = svc(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("services.a.max_in_flight: {bad} is out of range")),
                "{e}"
            );
        }
        for bad in ["on", "Off", "-1", "2.5"] {
            let e = svc(bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("services.a.max_in_flight: {bad} is not a limit")),
                "{e}"
            );
        }
    }

    /// Schemes are case-insensitive (RFC 3986 §3.1); a review saw `HTTP://` refused.
    #[test]
    fn the_scheme_is_read_in_any_case() {
        let a = parse_backend_url("k", "HTTP://127.0.0.1:1/api").unwrap();
        assert_eq!(a, parse_backend_url("k", "http://127.0.0.1:1/api").unwrap());
        assert_eq!(a.url, "http://127.0.0.1:1/api");
        let e = parse_backend_url("k", "HTTPS://127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("https backends are not supported"), "{e}");
        let e = parse_backend_url("k", "http:/x").unwrap_err().to_string();
        assert!(e.contains("is not an http URL"), "{e}");
        let e = Config::parse(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    rate_limit: \"on\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"on\" is not a rate limit"), "{e}");
    }

    #[test]
    fn a_query_string_in_a_backend_url_is_rejected_clearly() {
        for (bad, part) in [
            ("http://127.0.0.1:1/api?v=2", "?v=2"),
            ("http://127.0.0.1:1?v=2", "?v=2"),
            ("http://127.0.0.1:1/#top", "#top"),
        ] {
            let e = parse_backend_url("k", bad).unwrap_err().to_string();
            assert!(e.contains("query string") && e.contains(part), "{bad}: {e}");
        }
    }

    /// `host:port` and `host:port/` are one backend: listing both is a duplicate, and a
    /// reload from one to the other keeps the breaker (the identity is the same URL).
    #[test]
    fn a_trailing_slash_does_not_make_another_backend() {
        let a = parse_backend_url("k", "http://127.0.0.1:1").unwrap();
        let b = parse_backend_url("k", "http://127.0.0.1:1/").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.url, "http://127.0.0.1:1");
        let p = parse_backend_url("k", "http://127.0.0.1:1/api//").unwrap();
        assert_eq!(p.url, "http://127.0.0.1:1/api");
        let e = err("services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:1/]\n");
        assert!(e.contains("services.a[1]") && e.contains("twice"), "{e}");
    }

    /// Regression: `access_log: false` created a file named `false`.
    #[test]
    fn access_log_false_is_off_and_true_is_an_error() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        for off in ["false", "off", "\"false\""] {
            let c = Config::parse(&format!("access_log: {off}\n{svc}")).unwrap();
            assert_eq!(c.access_log, crate::accesslog::Sink::Off, "{off}");
        }
        let e = err(&format!("access_log: true\n{svc}"));
        assert!(e.contains("access_log") && e.contains("stdout"), "{e}");
    }

    /// Regression (an operator review): only the first error was reported, so three
    /// services' mistakes took three runs of `--check`. Every service's error is said,
    /// each with its line, in the order of the lines (an operator review: of the names),
    /// at most [`MAX_ERRORS`].
    #[test]
    fn every_services_error_is_reported_at_once() {
        let text = "services:\n  b: [ftp://x]\n  a:\n    backends: [http://127.0.0.1:1]\n    breaker: {cooldown: soon}\n  ok: [http://127.0.0.1:2]\n  c: [http://127.0.0.1:3, {url: http://127.0.0.1:4, weight: 0}]\n";
        let all = several(text);
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(
            all[0].starts_with("line 2: services.b[0]: \"ftp://x\" is not an http URL"),
            "{all:?}"
        );
        assert!(
            all[1].starts_with("line 5: services.a.breaker.cooldown: invalid duration"),
            "{all:?}"
        );
        assert!(
            all[2].starts_with("line 7: services.c[1].weight: 0 is out of range"),
            "{all:?}"
        );
        let one_line = Config::parse(text).unwrap_err().to_string();
        assert!(
            one_line.starts_with("3 errors: line 2: services.b") && !one_line.contains('\n'),
            "{one_line}"
        );
        // One error alone is said as before.
        let e = err("services:\n  a: [ftp://x]\n  b: [http://127.0.0.1:1]\n");
        assert!(
            e.contains("line 2: services.a[0]") && !e.contains("errors"),
            "{e}"
        );
        // A name that does not resolve ends the reading: with the resolver down, each
        // lookup may wait for its timeout.
        let text = "services:\n  a: [ftp://x]\n  b: [http://no-such-host.invalid:1]\n  c: [http://no-such-host-2.invalid:1]\n  d: [ftp://y]\n";
        let Err(ConfigError::Several(all)) = Config::parse(text) else {
            panic!("not several errors: {:?}", Config::parse(text));
        };
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(
            all[1]
                .to_string()
                .contains("cannot resolve \"no-such-host.invalid\""),
            "{all:?}"
        );
        // At most MAX_ERRORS, and how many more.
        let many: String = (0..30).map(|i| format!("  s{i:02}: [ftp://x]\n")).collect();
        let Err(ConfigError::Several(all)) = Config::parse(&format!("services:\n{many}")) else {
            panic!("not several errors");
        };
        assert_eq!(all.len(), MAX_ERRORS + 1);
        assert_eq!(
            all[MAX_ERRORS].to_string(),
            "and 10 more errors: fix these first"
        );
        let e = Config::parse(&format!("services:\n{many}"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("30 errors: "), "a review saw 21: {e}");
    }

    /// Regressions (an operator review): a reload's bad duration hid its bad URL (a
    /// top-level setting's error stopped the reading), errors came in the order of the
    /// service names, a top-level check's error named no line and `0s` no value, and a
    /// key given twice said neither where the first is nor what to do.
    #[test]
    fn top_level_errors_are_said_with_the_services_in_the_order_of_their_lines() {
        let text = "listen: 127.0.0.1:21000\ntimeouts:\n  connect: 1 s\n  response: 0s\nbreaker:\n  cooldown: 0s\nservices:\n  orders:\n    - htp://127.0.0.1:1\n  b: [http://127.0.0.1:1, {url: http://127.0.0.1:2, weight: 0}]\n  a: [ftp://x]\nlimits: {max_head_bytes: 10}\naccess_log_format: logfmt\n";
        let all = several(text);
        let want = [
            "line 3: timeouts.connect: invalid duration \"1 s\"",
            "line 4: timeouts.response: \"0s\" is out of range: must be greater than zero",
            "line 6: breaker.cooldown: \"0s\" is out of range: must be greater than zero",
            "line 9: services.orders[0]: \"htp://127.0.0.1:1\" is not an http URL",
            "line 10: services.b[1].weight: 0 is out of range",
            "line 11: services.a[0]: \"ftp://x\"",
            "line 12: limits.max_head_bytes: 10 is out of range",
            "line 13: access_log_format: \"logfmt\" is not a format",
        ];
        each_begins(&all, &want);
        // Every error within one service too (a review: its first alone).
        let text = "services:\n  a:\n    backends: [ftp://x, http://127.0.0.1:1, http://127.0.0.1:1]\n    breaker: {cooldown: soon}\n    max_in_flight: lots\n    websocket: maybe\n";
        let all = several(text);
        let want = [
            "line 3: services.a.backends[0]: \"ftp://x\"",
            "line 3: services.a.backends[2]: \"http://127.0.0.1:1\" is listed twice",
            "line 4: services.a.breaker.cooldown: invalid duration \"soon\"",
            "line 5: services.a.max_in_flight: lots is not a limit",
            "line 6: services.a.websocket:",
        ];
        each_begins(&all, &want);
        // Regressions (a review of the above): the cut to MAX_ERRORS came before the
        // sort; a nested key in a service's block had its block's line; a list's entry and
        // a fleet scope's error had none or hid behind others; a control character in an
        // unknown key went out raw; a bad head limit made the target's limit wrong too.
        let many: String = (0..25).map(|i| format!("  s{i:02}: [ftp://x]\n")).collect();
        let text = format!("access_log_format: logfmt\nservices:\n{many}");
        let Err(ConfigError::Several(all)) = Config::parse(&text) else {
            panic!("not several errors");
        };
        assert!(
            all[0].to_string().starts_with("line 1: access_log_format"),
            "{all:?}"
        );
        assert_eq!(
            all[MAX_ERRORS].to_string(),
            "and 6 more errors: fix these first"
        );
        let text = "trusted_proxies: [10.0.0.0/33]\nservices:\n  a:\n    backends: [http://127.0.0.1:1]\n    breaker:\n      failure_threshold: 3\n      cooldown: forever\n    rate_limit: {rate: 5/s, scope: cluster}\n  c:\n    backends: [http://127.0.0.1:1]\n    \"k\\e[31m\": 1\nlimits: {max_head_bytes: 1, max_target_bytes: 40000}\n";
        let e = err(text);
        for want in [
            "line 1: trusted_proxies[0]",
            "line 7: services.a.breaker.cooldown: invalid duration",
            "line 12: limits.max_head_bytes: 1 is out of range",
            "services.c: unknown field `k\\u{1b}[31m`",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(
            !e.contains("max_target_bytes") && !e.contains('\x1b'),
            "{e}"
        );
        let e = err("services:\n  a:\n    backends: [http://127.0.0.1:1]\n    rate_limit: {rate: 5/s, scope: cluster}\n  b: [ftp://x]\n");
        assert!(
            e.contains("services.a.rate_limit.scope: cluster needs") && e.contains("services.b[0]"),
            "{e}"
        );
        // Every error of one breaker map and one service's timeouts, each on its line (a
        // review: the first alone, at the map's line).
        let text = "breaker: {failure_threshold: 2000, cooldown: forever}\nservices:\n  a:\n    backends: [http://127.0.0.1:1]\n    timeouts:\n      response: 0s\n      body: x\n      connect: 1.5s\n    breaker:\n      failure_threshold: 1001\n      failure_statuses: [404, 503]\n";
        let all = several(text);
        let want = [
            "line 1: breaker.failure_threshold: 2000 is out of range",
            "line 1: breaker.cooldown: invalid duration \"forever\"",
            "line 6: services.a.timeouts.response: \"0s\" is out of range",
            "line 7: services.a.timeouts.body: invalid duration \"x\"",
            "line 8: services.a.timeouts.connect: invalid duration \"1.5s\"",
            "line 10: services.a.breaker.failure_threshold: 1001 is out of range",
            "line 11: services.a.breaker.failure_statuses: 404 is not a 5xx status",
        ];
        each_begins(&all, &want);
        // A top-level error alone is said as before, with its line.
        let e = err("services:\n  a: [http://127.0.0.1:1]\ndns_refresh: 10ms\n");
        assert!(
            e.contains("line 3: dns_refresh: \"10ms\" is too short") && !e.contains("errors"),
            "{e}"
        );
        let e = err("timeouts: {connect: 1s}\nservices:\n  a: [http://127.0.0.1:1]\ntimeouts: {connect: 2s}\n");
        assert!(
            e.contains(
                "line 4: duplicate field `timeouts` (first given at line 1): give each key once"
            ),
            "{e}"
        );
    }

    /// Regressions (a review of the errors said at once): a top-level error hid behind the
    /// services' errors; some had no line or the wrong one; a name with a line break forged
    /// an error line; a password with a space went out in the quoted URL.
    #[test]
    fn errors_said_at_once_have_their_lines_and_hide_nothing() {
        let e = err("access_log_format: logfmt\nservices:\n  a: [ftp://x]\n  b: [ftp://y]\n");
        assert!(
            e.contains("access_log_format: \"logfmt\" is not a format"),
            "{e}"
        );
        let Err(ConfigError::Several(all)) = Config::parse(
            "x-d: &d\n  breaker: {cooldown: soon}\n  backends: [http://127.0.0.1:1]\nservices:\n  -bad: [http://127.0.0.1:1]\n  a:\n    backends: [http://127.0.0.1:2]\n    health_check:\n      path: /h\n    breaker:\n      path: 1\n  b:\n    backends:   # was [one]\n      - http://127.0.0.1:3\n      - ftp://x\n  c:\n    <<: *d\n  \"d\\ne\": [http://127.0.0.1:4]\n",
        ) else {
            panic!("not several errors");
        };
        let all: Vec<String> = all.iter().map(ToString::to_string).collect();
        let want = [
            "line 5: services.-bad: invalid service name",
            "line 11: services.a.breaker: unknown field `path`",
            "line 15: services.b.backends[1]: \"ftp://x\"",
            "line 16: services.c.breaker.cooldown: invalid duration",
            "services.\"d\\ne\": invalid service name \"d\\ne\"",
        ];
        assert_eq!(all.len(), want.len(), "{all:#?}");
        for (got, want) in all.iter().zip(want) {
            assert!(
                got.starts_with(want) && !got.contains('\n'),
                "{got:?} is not {want:?}"
            );
        }
        let e = err("services:\n  a: [\"http://user:s3cr3t pw@127.0.0.1:1\"]\n");
        assert!(
            e.contains("\"http://***@127.0.0.1:1\"") && !e.contains("s3cr3t"),
            "{e}"
        );
    }

    /// Regression (an operator review): services whose backends are this gateway itself,
    /// routing back to one another, passed `--check`; each request would have gone round
    /// until the descriptors ran out.
    #[test]
    fn services_that_route_back_to_themselves_through_this_gateway_are_refused() {
        let e =
            err("listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.1:18000/v1/proxy/a]\n");
        assert!(
            e.contains("services.a: its requests would loop through this gateway without end: a -> http://127.0.0.1:18000/v1/proxy/a -> a;"),
            "{e}"
        );
        let e = err("listen: 0.0.0.0:18000\nservices:\n  a: [http://127.0.0.1:1]\n  b: [http://127.0.0.1:2, http://127.0.0.1:18000/v1/proxy/c/x]\n  c:\n    - http://127.0.0.2:18000/v1/proxy/b\n");
        assert!(
            e.contains("services.b: its requests would loop through this gateway without end: b -> http://127.0.0.1:18000/v1/proxy/c/x -> c -> http://127.0.0.2:18000/v1/proxy/b -> b;"),
            "{e}"
        );
        // An alias without a cycle, a chain ending at a real backend, another port.
        for yaml in [
            "listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.1:18000/v1/proxy/b]\n  b: [http://127.0.0.1:18000/v1/proxy/c]\n  c: [http://127.0.0.1:1]\n",
            "listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.1:18001/v1/proxy/a]\n",
            "listen: 127.0.0.1:0\nservices:\n  a: [http://127.0.0.1:18000/v1/proxy/a]\n",
        ] {
            assert!(Config::parse(yaml).is_ok(), "{yaml}");
        }
    }

    #[test]
    fn a_backend_on_the_admin_port_is_refused() {
        for (admin, url) in [
            ("127.0.0.1:18901", "http://127.0.0.1:18901"),
            ("0.0.0.0:18901", "http://localhost:18901/x"),
            ("\"[::]:18901\"", "http://127.0.0.1:18901"),
            // A review: `0.0.0.0` and `[::]` are this host's loopback to connect to.
            ("127.0.0.1:18901", "http://0.0.0.0:18901"),
            ("\"[::1]:18901\"", "http://[::]:18901"),
        ] {
            let e = err(&format!(
                "listen: 127.0.0.1:18000\nadmin: {admin}\nservices:\n  a: [http://127.0.0.1:1]\n  web: [http://127.0.0.1:2, \"{url}\"]\n"
            ));
            assert!(
                e.contains(&format!(
                    "services.web: backend {url} is this gateway's admin port ("
                )),
                "{e}"
            );
            assert!(e.contains("no authentication"), "{e}");
        }
        // Every one is said, and a loop beside them (a review saw the first alone).
        let all = several("listen: 127.0.0.1:18000\nadmin: 127.0.0.1:18901\nservices:\n  a: [http://127.0.0.1:18901]\n  b: [http://localhost:18901]\n  c: [http://127.0.0.1:18000/v1/proxy/c]\n");
        each_begins(
            &all,
            &[
                "line 4: services.a: backend http://127.0.0.1:18901 is this gateway's admin port",
                "line 5: services.b: backend http://localhost:18901 is this gateway's admin port",
                "line 6: services.c: its requests would loop",
            ],
        );
        // Another port, another address of a specific admin, no admin at all.
        for yaml in [
            "admin: 127.0.0.1:18901\nservices:\n  a: [http://127.0.0.1:18902]\n",
            "admin: 127.0.0.1:18901\nservices:\n  a: [http://127.0.0.2:18901]\n",
            "services:\n  a: [http://127.0.0.1:9901]\n",
        ] {
            assert!(Config::parse(yaml).is_ok(), "{yaml}");
        }
    }

    /// This host's first address that is neither loopback nor link-local (from
    /// `getifaddrs(3)`).
    fn an_interface_address() -> Option<std::net::IpAddr> {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list` with a list freed below by freeifaddrs; each
        // `ifa_addr` is null or points to a sockaddr of the family it names.
        unsafe {
            if libc::getifaddrs(&mut list) != 0 {
                return None;
            }
            let mut found = None;
            let mut at = list;
            while !at.is_null() && found.is_none() {
                let a = (*at).ifa_addr;
                if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                    let sin = &*(a as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    if !ip.is_loopback() && !ip.is_link_local() {
                        found = Some(ip.into());
                    }
                }
                at = (*at).ifa_next;
            }
            libc::freeifaddrs(list);
            found
        }
    }

    /// Regression: listening on every interface, a loop through one of this host's own
    /// interface addresses was missed where one through `127.0.0.1` was refused.
    #[test]
    fn a_loop_through_an_interface_address_of_this_host_is_refused() {
        let ip =
            an_interface_address().expect("an IPv4 address on an interface other than loopback");
        let url = SocketAddr::new(ip, 18000);
        let e = err(&format!(
            "listen: 0.0.0.0:18000\nservices:\n  a: [http://{url}/v1/proxy/a]\n"
        ));
        assert!(
            e.contains("its requests would loop through this gateway"),
            "{e}"
        );
        // Bound to loopback alone, that address is another listener's.
        let yaml = format!("listen: 127.0.0.1:18000\nservices:\n  a: [http://{url}/v1/proxy/a]\n");
        assert!(Config::parse(&yaml).is_ok(), "{yaml}");
        // An address of no interface here (TEST-NET-2) is another host.
        assert!(is_this_hosts(ip) && is_this_hosts("127.0.0.1".parse().unwrap()));
        assert!(!is_this_hosts("198.51.100.7".parse().unwrap()));
    }

    /// Regression (an operator review): an unclosed `[` was told it was a list where a
    /// number goes, a second document got the parser's words alone, and a byte that is not
    /// UTF-8 was reported with no place in the file.
    #[test]
    fn syntax_errors_come_first_and_say_where() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        for text in [
            format!("listen: 127.0.0.1:1\nworkers: [1\n{svc}"),
            format!("listen: [oops\n{svc}"),
        ] {
            let e = err(&text);
            assert!(!e.contains("invalid type"), "{e}");
            assert!(e.contains("did not find expected"), "{e}");
        }
        // A type error in a file that parses is still a type error.
        let e = err(&format!("workers: [1]\n{svc}"));
        assert!(e.contains("invalid type: sequence"), "{e}");

        for (text, line) in [
            (format!("{svc}---\nworkers: 1\n"), 3),
            (format!("# c\n---\n{svc}---\nworkers: 1\n"), 5),
            (format!("%YAML 1.2\n---\n{svc}---\nworkers: 1\n"), 5),
        ] {
            let e = err(&text);
            assert!(
                e.contains(&format!(
                    "config: line {line}: a second YAML document begins here"
                )),
                "{e}"
            );
        }

        let path = std::env::temp_dir().join(format!("gateway-utf8-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            b"services:\n  a: [http://127.0.0.1:1] # caf\xc3\xa9 \xe9\n",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            e.ends_with("line 2 column 34: byte 0xe9 is not UTF-8: save the file as UTF-8"),
            "{e}"
        );
    }

    /// Regression: a relative access log was opened from the directory the gateway was
    /// started in, not the config's (an operator review's `--check` failed from another).
    #[test]
    fn a_relative_access_log_is_the_config_files_neighbour() {
        let dir = std::env::temp_dir().join(format!("gateway-rel-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let file = dir.join("c.yaml");
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        let load = |log: &str| {
            std::fs::write(&file, format!("access_log: {log}\n{svc}")).unwrap();
            Config::load(&file).unwrap().access_log
        };
        let relative = load("logs/a.log");
        let absolute = load("/tmp/x/a.log");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            relative,
            crate::accesslog::Sink::File(dir.join("logs/a.log"))
        );
        assert_eq!(
            absolute,
            crate::accesslog::Sink::File("/tmp/x/a.log".into())
        );
    }

    /// Regression: a block out of line got the parser's words with its line at the end,
    /// and a list item indented one column deeper than the one above was said to be a
    /// space in a URL, with no word of indentation (an operator review).
    #[test]
    fn a_line_indented_wrong_is_said_first_with_what_to_check() {
        for (text, line) in [
            ("services:\n  web:\n    backends:\n      - http://127.0.0.1:1\n    breaker: {failure_threshold: 3}\n      cooldown: 1s\n", 6),
            ("services:\n  web:\n  backends: [http://127.0.0.1:1]\n   timeouts: {connect: 1s}\n", 4),
            ("services:\n  web: [http://127.0.0.1:1]\n  x: 1\n   y: 2: 3\n", 4),
        ] {
            let e = err(text);
            assert!(e.contains(&format!("config: line {line}: ")), "{e}");
            assert!(e.contains("check this line's indentation"), "{e}");
        }
        let e = err("services:\n  web:\n    - http://127.0.0.1:1\n     - http://127.0.0.1:2\n");
        assert!(
            e.contains("is read as part of it: line the items up"),
            "{e}"
        );
    }

    /// Regression: a file starting with a byte-order mark failed ("more than one document"),
    /// a key holding a control character was quoted back raw (a forged log line on SIGHUP),
    /// and `min_body_rate: 1000000000000` was accepted (every body would fail).
    #[test]
    fn odd_files_and_values_get_plain_answers() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        assert!(Config::parse(&format!("\u{feff}{svc}")).is_ok());
        let e = err(&format!("{svc}\"bad\\nkey\": 1\n"));
        assert!(!e.contains('\n') && e.contains("unknown field"), "{e}");
        let e = err(&format!("limits: {{min_body_rate: 1000000000000}}\n{svc}"));
        assert!(
            e.contains("limits.min_body_rate") && e.contains("out of range"),
            "{e}"
        );
        assert!(Config::parse(&format!("limits: {{min_body_rate: 0}}\n{svc}")).is_ok());
    }

    /// Config errors in a reader's words: no Rust type names, a line for every unknown key,
    /// no `Null`, and the top-level key a top-level mistake is in.
    #[test]
    fn config_errors_speak_the_readers_language() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        let e = err(&format!("workers: two\n{svc}"));
        assert!(
            e.contains("expected a whole number") && !e.contains("usize"),
            "{e}"
        );
        // A new user's review: -1 is a whole number; YAML 1.1's `yes`; `64MB` for 64 MiB.
        let e = err(&format!("workers: -1\n{svc}"));
        assert!(e.contains("expected a whole number, 0 or more"), "{e}");
        // An operator review: a type error says the key's range (`failure_threshold`'s
        // starts at 0, which is off).
        for bad in ["-1", "abc", "2.5"] {
            let e = err(&format!("breaker: {{failure_threshold: {bad}}}\n{svc}"));
            assert!(
                e.contains("expected a whole number, 0 (off) to 1000") && !e.contains("0 or more"),
                "{e}"
            );
            let e = err(&format!(
                "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    breaker: {{failure_threshold: {bad}}}\n"
            ));
            assert!(
                e.contains("expected a whole number, 0 (off) to 1000"),
                "{e}"
            );
        }
        let e = err(&format!("limits: {{max_headers: -3}}\n{svc}"));
        assert!(e.contains("expected a whole number, 1 to 128"), "{e}");
        let e = err(&format!("splice: yes\n{svc}"));
        assert!(e.contains("expected true or false"), "{e}");
        let e = err(&format!("limits: {{max_body_bytes: 64MB}}\n{svc}"));
        assert!(e.contains("\"64MB\": write 64MiB (or 64m)"), "{e}");
        let e = err(&format!("limits: {{max_body_bytes: 2gb}}\n{svc}"));
        assert!(e.contains("\"2gb\": write 2GiB (or 2g)"), "{e}");
        let e = err(&format!("{svc}bogus: 1\n"));
        assert!(e.contains("line 3") && e.contains("bogus"), "{e}");
        // A top-level key given twice: the line of the second (a review saw none).
        let e = err(&format!(
            "timeouts: {{connect: 1s}}\n{svc}timeouts: {{body: 2s}}\n"
        ));
        assert!(
            e.contains("line 4") && e.contains("duplicate field `timeouts`"),
            "{e}"
        );
        // Inside a nested map: the line of the second too, not of the map's first key
        // (an operator review); a map under a list item's `- ` and one with comments and
        // deeper lines between the two.
        let e = err(&format!(
            "timeouts:\n  connect: 1s\n  response: 5s\n  connect: 2s\n{svc}"
        ));
        assert!(
            e.contains("line 4: timeouts: duplicate field `connect`"),
            "{e}"
        );
        let e = err(
            "services:\n  svc:\n    backends:\n      - http://127.0.0.1:1\n    # note\n    prefix: /a\n    prefix: /b\n",
        );
        assert!(e.contains("line 7: ") && e.contains("\"prefix\""), "{e}");
        // A flow map keeps serde's position (its lines cannot be told apart).
        let e = err(&format!("timeouts: {{connect: 1s, connect: 2s}}\n{svc}"));
        assert!(e.contains("duplicate field `connect`"), "{e}");
        let e = err("services:\n  a:\n");
        assert!(
            e.contains("services.a") && e.contains("is empty") && !e.contains("Null"),
            "{e}"
        );
        let e = err("services:\n  a: 5\n");
        assert!(e.contains("\"5\" is not a service"), "{e}");
        let e = err(&format!(
            "rate_limit: {{rate: 10/s, scope: cluster}}\n{svc}"
        ));
        assert!(
            e.starts_with("rate_limit.scope") || e.contains(" rate_limit.scope"),
            "{e}"
        );
        assert!(!e.contains("services.a"), "{e}");
    }

    /// Regression: an unknown key inside a service's map had no line, where a top-level
    /// one had (a review noticed); nested ones (in `breaker`) get theirs too.
    #[test]
    fn an_unknown_key_inside_a_service_gets_its_line() {
        let e = err("services:\n  a: [http://127.0.0.1:1]\n  b:\n    backends: [http://127.0.0.1:2]\n    retires: 2\n");
        assert!(
            e.starts_with("line 5: services.b") && e.contains("unknown field `retires`"),
            "{e}"
        );
        let e = err("services:\n  b:\n    backends: [http://127.0.0.1:2]\n    breaker:\n      # the threshold\n      failure_treshold: 3\n");
        assert!(
            e.starts_with("line 6: services.b") && e.contains("failure_treshold"),
            "{e}"
        );
        // A flow map on the service's own line: that line (an operator review got none).
        let e = err("services:\n  a: [http://127.0.0.1:1]\n  b: {backends: [http://127.0.0.1:2], breaker: {failure_treshold: 3}}\n");
        assert!(
            e.starts_with("line 3: services.b") && e.contains("failure_treshold"),
            "{e}"
        );
        // A flow map inside the service's block: its line.
        let e = err("services:\n  b:\n    backends: [http://127.0.0.1:2]\n    breaker: {failure_threshold: 3, bogus: 1}\n");
        assert!(
            e.starts_with("line 4: services.b.breaker") && e.contains("bogus"),
            "{e}"
        );
        // Errors found in a service's `rate_limit` or `max_in_flight` too (an operator
        // review got no line for them).
        let e = err("services:\n  b:\n    backends: [http://127.0.0.1:2]\n\n    rate_limit: {rate: 10/s, bursst: 5}\n");
        assert!(e.starts_with("line 5: services.b.rate_limit.bursst"), "{e}");
        let e = err("services:\n  a: [http://127.0.0.1:1]\n  b:\n    backends: [http://127.0.0.1:2]\n    max_in_flight: lots\n");
        assert!(e.starts_with("line 5: services.b.max_in_flight"), "{e}");
        // A URL ending in `:`, with no port (an operator review got the parser's words).
        for text in [
            "services:\n  a:\n    - http://127.0.0.1:\n",
            "services:\n  a: [http://127.0.0.1:]\n",
        ] {
            let e = err(text);
            assert!(e.contains("a URL ending in ':'"), "{text}: {e}");
        }
        // A key the scan cannot place (all of `services` in flow style) keeps the message
        // without a line.
        let e = err("services: {b: {backends: [http://127.0.0.1:2], retires: 2}}\n");
        assert!(e.starts_with("services.b") && e.contains("retires"), "{e}");
    }

    /// Regression: `access_log: on` (or `yes`, `no`, `none`, `OFF`, `stderr`) passed
    /// `--check` and wrote the log to a file named after the word.
    #[test]
    fn access_log_words_are_never_file_names() {
        let svc = "services:\n  a: [http://127.0.0.1:1]\n";
        for off in ["OFF", "Off", "FALSE"] {
            let c = Config::parse(&format!("access_log: {off}\n{svc}")).unwrap();
            assert_eq!(c.access_log, crate::accesslog::Sink::Off, "{off}");
        }
        for word in ["on", "On", "yes", "no", "None", "stderr", "y", "0", "1"] {
            let e = err(&format!("access_log: {word}\n{svc}"));
            assert!(
                e.contains("access_log") && e.contains("stdout"),
                "{word}: {e}"
            );
        }
        for path in ["./on", "access.log", "/dev/stderr"] {
            let c = Config::parse(&format!("access_log: {path}\n{svc}")).unwrap();
            assert_eq!(
                c.access_log,
                crate::accesslog::Sink::File(path.into()),
                "{path}"
            );
        }
    }

    /// Decided: `failure_statuses: []` means no status counts as a failure (transport
    /// failures still do); see the README.
    #[test]
    fn empty_failure_statuses_mean_no_status_counts() {
        let c = Config::parse(
            "breaker: {failure_statuses: []}\nservices:\n  a: [http://127.0.0.1:1]\n",
        )
        .unwrap();
        let b = c.services[0].breaker;
        assert!((100..600).all(|s| !b.is_failure_status(s)));
    }

    #[test]
    fn service_names() {
        assert!(valid_service_name(b"user-service"));
        assert!(valid_service_name(b"a1"));
        for bad in [&b""[..], b"-a", b"A", b"a.b", b"a_b", b"..", b"a%2e"] {
            assert!(!valid_service_name(bad));
        }
    }
}
