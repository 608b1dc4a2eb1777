//! Admission control: GCRA rate limits on shared atomic words, and concurrency limits.
//!
//! A budget is one word: its theoretical arrival time (TAT, ns on the process clock). A
//! request is admitted when pushing the TAT one emission interval further keeps it within
//! `burst` intervals of now; the push is a CAS loop on an `AtomicU64` that every worker
//! shares, so a limit is exact across cores and takes no lock. A budget keyed by the
//! service is one word per service; keyed budgets (`client_ip`, `header:NAME`) are tagged
//! cells of one fixed table, in buckets chosen by a hash with a per-process random key:
//! nobody can aim at a bucket, and no budget ever runs on another budget's cell.
//! `max_in_flight` is a counter per service, held from admission to the response's end.
//! A `scope: cluster` budget is shared by every instance of a fleet: the cluster thread
//! takes slices of it from Redis into a local allowance, which requests only decrement.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crate::config::ConfigError;
use crate::h1;

/// Default number of cells of the keyed-budget table.
pub const DEFAULT_TABLE_CELLS: usize = 65536;
/// Bounds of `rate_limit_table` (16 B per cell: 16 KiB to 256 MiB).
pub const MIN_TABLE_CELLS: usize = 1024;
pub const MAX_TABLE_CELLS: usize = 16 * 1024 * 1024;
/// Largest `max_in_flight`.
pub const MAX_IN_FLIGHT: u64 = 1_000_000;
/// Largest `burst`.
pub const MAX_BURST: u64 = 1_000_000;
/// Largest number of requests per unit in `rate`.
pub const MAX_RATE: u64 = 1_000_000_000;

const NS: u64 = 1_000_000_000;

/// What a budget is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// One budget for the whole service.
    Service,
    /// One per client address (see `trusted_proxies`).
    ClientIp,
    /// One per value of this request header (lowercase name); requests without it share one.
    Header(String),
}

/// A configured rate limit: `count` requests per `per_secs`, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub count: u64,
    pub per_secs: u64,
    pub burst: u64,
    pub key: LimitKey,
    /// `scope: cluster`: one budget for the whole fleet (see [`FleetBudget`]).
    pub fleet: bool,
}

impl RateLimit {
    /// The same limit with its rate in lowest terms (`6000/m` is `100/s`): what makes two
    /// limits one budget.
    pub fn in_lowest_terms(&self) -> RateLimit {
        let g = gcd(self.count, self.per_secs).max(1);
        RateLimit {
            count: self.count / g,
            per_secs: self.per_secs / g,
            ..self.clone()
        }
    }

    /// Nanoseconds between two requests at the steady rate (at least 1).
    pub fn interval_ns(&self) -> u64 {
        ((u128::from(self.per_secs) * u128::from(NS)) / u128::from(self.count)).max(1) as u64
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit} burst {} key ", self.count, self.burst)?;
        match &self.key {
            LimitKey::Service => f.write_str("service")?,
            LimitKey::ClientIp => f.write_str("client_ip")?,
            LimitKey::Header(h) => write!(f, "header:{h}")?,
        }
        if self.fleet {
            f.write_str(" scope cluster")?;
        }
        Ok(())
    }
}

/// A network (`trusted_proxies` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(key: &str, text: &str) -> Result<Cidr, ConfigError> {
        let bad = |why: &str| {
            crate::config::invalid(
                key,
                format!("{text:?} {why}: write an address or a network, e.g. 10.0.0.0/8, 192.168.1.7 or fd00::/8"),
            )
        };
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| bad("is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad("has a bad prefix length")),
            },
        };
        Ok(Cidr {
            addr: canonical(addr),
            prefix: if addr.is_ipv4() || canonical(addr) == addr {
                prefix
            } else {
                prefix.saturating_sub(96)
            },
        })
    }

    /// What an operator should hear about this entry at start and from `--check` (an
    /// operator review: `0.0.0.0/0` and `10.0.0.1/8` passed without a word).
    pub fn warning(&self) -> Option<String> {
        // A share of the whole Internet (a re-review: `0.0.0.0/1` and `128.0.0.0/1` together
        // trusted every IPv4 client without a word). IPv4 clients are matched as IPv4, so
        // `::/0` trusts no IPv4 client.
        let (family, shortest) = if self.addr.is_ipv4() {
            ("IPv4", 8)
        } else {
            // fc00::/7, every unique local address, is a private network's.
            ("IPv6", 7)
        };
        if self.prefix < shortest {
            let share = match self.prefix {
                0 => format!("every {family} address"),
                p => format!("1/{} of all {family} addresses", 1u64 << p),
            };
            return Some(format!(
                "trusted_proxies: {self} trusts {share}: every such client then chooses its own X-Forwarded-For (its rate-limit key and its address in the log) and the forwarding fields a backend builds URLs from; list only the addresses your edge proxies connect from"
            ));
        }
        let network = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        (network != self.addr).then(|| {
            format!(
                "trusted_proxies: {self} has address bits past its prefix, which are ignored: it trusts all of {network}/{}; write that, or the address alone",
                self.prefix
            )
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Process-wide admission settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Add the RateLimit fields to admitted responses of limited services too.
    pub headers: bool,
    /// Cells of the keyed-budget table.
    pub table_cells: usize,
    pub trusted_proxies: Vec<Cidr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            headers: false,
            table_cells: DEFAULT_TABLE_CELLS,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Parses a `rate_limit` value: `off` (Ok(None)) or `{ rate, burst, key }`.
pub fn parse_rate_limit(
    key: &str,
    value: &serde_yaml_ng::Value,
) -> Result<Option<RateLimit>, ConfigError> {
    use crate::config::invalid;
    use serde_yaml_ng::Value;
    let map = match value {
        Value::String(s) if s == "off" => return Ok(None),
        Value::Bool(false) => return Ok(None),
        Value::Mapping(m) => m,
        other => {
            // As written in the file (`"on"`, `true`, `5`), not as the parser holds it (an
            // operator review was shown `String("on")`).
            let what = serde_yaml_ng::to_string(other).unwrap_or_default();
            return Err(invalid(
                key,
                format!("{:?} is not a rate limit: write {{ rate: 100/s, burst: 20, key: service }} or off", what.trim()),
            ));
        }
    };
    let mut rate = None;
    let mut burst = None;
    let mut limit_key = LimitKey::Service;
    let mut fleet = false;
    for (k, v) in map {
        let name = k.as_str().unwrap_or("");
        let sub = format!("{key}.{name}");
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                let what = serde_yaml_ng::to_string(other).unwrap_or_default();
                return Err(invalid(
                    &sub,
                    format!(
                        "{:?} is not a value: see the README's admission control section",
                        what.trim()
                    ),
                ));
            }
        };
        match name {
            "rate" => rate = Some(parse_rate(&sub, &text)?),
            "burst" => match text.trim().parse::<u64>() {
                Ok(b) if (1..=MAX_BURST).contains(&b) => burst = Some(b),
                _ => {
                    return Err(invalid(
                        &sub,
                        format!("{text:?} is out of range: use a whole number from 1 to {MAX_BURST} (requests that may arrive at once)"),
                    ))
                }
            },
            "key" => limit_key = parse_key(&sub, text.trim())?,
            "scope" => {
                fleet = match text.trim() {
                    "instance" => false,
                    "cluster" => true,
                    other => {
                        return Err(invalid(
                            &sub,
                            format!("{other:?} is not a scope: use instance (the default) or cluster (one budget for the fleet, needs `cluster:`)"),
                        ))
                    }
                }
            }
            _ => {
                return Err(invalid(
                    &sub,
                    "is not a rate_limit key: use rate, burst, key and scope",
                ))
            }
        }
    }
    let Some((count, per_secs)) = rate else {
        return Err(invalid(
            format!("{key}.rate"),
            "is missing: write e.g. rate: 100/s (or N/m, N/h)",
        ));
    };
    if fleet && limit_key != LimitKey::Service {
        return Err(invalid(
            format!("{key}.scope"),
            "cluster works with key: service only (a fleet-wide budget per client or header value is not supported): use key: service, or scope: instance",
        ));
    }
    // Default burst: one second's worth, at least 1.
    let burst = burst.unwrap_or_else(|| (count / per_secs).clamp(1, MAX_BURST));
    Ok(Some(RateLimit {
        count,
        per_secs,
        burst,
        key: limit_key,
        fleet,
    }))
}

fn parse_rate(key: &str, text: &str) -> Result<(u64, u64), ConfigError> {
    let bad = |why: &str| {
        crate::config::invalid(
            key,
            format!(
                "{text:?} {why}: write N/s, N/m or N/h with N from 1 to {MAX_RATE}, e.g. 100/s"
            ),
        )
    };
    let (n, unit) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("has no unit"))?;
    let per_secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad("has a bad unit")),
    };
    match n.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_RATE).contains(&n) => Ok((n, per_secs)),
        _ => Err(bad("is not a positive rate")),
    }
}

/// Whether the field `name` (or its underscore alias) never reaches a backend.
fn never_forwarded(name: &str) -> bool {
    let dashed = name.replace('_', "-");
    h1::is_hop_by_hop(&dashed) && !dashed.eq_ignore_ascii_case("content-length")
}

fn parse_key(key: &str, text: &str) -> Result<LimitKey, ConfigError> {
    match text {
        "service" => Ok(LimitKey::Service),
        "client_ip" => Ok(LimitKey::ClientIp),
        _ => match text.strip_prefix("header:") {
            // A field the gateway never forwards: the backend would see every request as
            // keyless, whatever budget it was keyed to (a re-review, with fresh
            // `Proxy-Authorization` values, was never limited).
            Some(name) if never_forwarded(name) => Err(crate::config::invalid(
                key,
                format!("{text:?}: the gateway never forwards {name} (a hop-by-hop field), so the backend could not see the key; use a field that reaches it, e.g. header:x-api-key"),
            )),
            Some(name) if !name.is_empty() && name.bytes().all(h1::is_tchar) => {
                Ok(LimitKey::Header(name.to_ascii_lowercase()))
            }
            _ => Err(crate::config::invalid(
                key,
                format!("{text:?} is not a key: use service, client_ip or header:NAME (a valid header name, e.g. header:x-api-key)"),
            )),
        },
    }
}

// ---- the request path ----

/// Nanoseconds on the process clock (never 0 after start, so a fresh word means "no TAT").
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + NS
}

/// The GCRA step on one budget word: Ok(TAT after this request) if admitted, else
/// Err(ns until a request would be).
#[inline]
fn gcra(word: &AtomicU64, now: u64, interval: u64, tolerance: u64) -> Result<u64, u64> {
    let mut tat = word.load(Ordering::Relaxed);
    loop {
        let next = tat.max(now) + interval;
        if next - now > tolerance {
            return Err(next - now - tolerance);
        }
        match word.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(next),
            Err(seen) => tat = seen,
        }
    }
}

/// Cells per bucket of the keyed-budget table.
const WAYS: usize = 4;
/// A keyed cell: the key's 16-bit tag above its TAT in µs on the process clock (48 bits:
/// 8.9 years of uptime). 0 is an empty cell, and any TAT in the past a full budget.
const TAT_BITS: u32 = 48;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

/// The GCRA step for key `tag` in its table bucket (times in µs): Ok(TAT after this
/// request) if admitted, else Err(µs until a request would be).
///
/// `ids` are the bucket's cells' owners, the keys' whole 64-bit hashes, and `id` this key's:
/// a cell whose tag matches is the key's only if its owner does too. With the 16-bit tag
/// alone, a new key whose tag matched a spent cell of another key of the same limit ran on
/// that key's budget (a hostile-client review: 5 of 60 000 new keys refused on their first
/// request, with the other key's hour-long `Retry-After`, in a table full of spent cells).
/// The owner is written before the claim's CAS: a claim that loses the CAS leaves a cell
/// whose owner no longer matches, and its key takes another (a fresh budget: looser, never
/// stricter); stricter takes a race and a 16-bit tag collision together.
///
/// The key's cell is the one with its tag, unless that cell's TAT is further ahead than
/// this budget can ever put it (tolerance plus one interval, plus a second for clocks read
/// at different moments by different workers): then it belongs to another
/// budget whose key has the same tag, and is not ours. A key without a cell takes the one
/// with the earliest TAT: an empty or expired one (a full budget: nothing is lost), or, when
/// all are in use, the budget nearest to full, whose key starts afresh when it comes back.
/// Until 2026-12-01 cells had no tags: two keys of any budgets that hashed alike shared one
/// word, and one of a slow budget (1/h) locked the other out for hours (a review).
#[inline]
fn gcra_keyed(
    bucket: &[AtomicU64],
    ids: &[AtomicU64],
    (tag, id): (u64, u64),
    now: u64,
    interval: u64,
    tolerance: u64,
) -> Result<u64, u64> {
    loop {
        // (cell, its word, the TAT this key starts from there).
        let mut own = None;
        let mut victim = (0, 0, u64::MAX);
        for (i, c) in bucket.iter().enumerate() {
            let w = c.load(Ordering::Relaxed);
            let tat = w & TAT_MASK;
            // A second of slack: another worker may have read its clock a little later.
            if w >> TAT_BITS == tag
                && tat <= now + tolerance + interval + 1_000_000
                && ids[i].load(Ordering::Relaxed) == id
            {
                own = Some((i, w, tat));
                break;
            }
            if tat < victim.2 {
                victim = (i, w, tat);
            }
        }
        let (i, w, tat) = own.unwrap_or((victim.0, victim.1, 0));
        let next = tat.max(now) + interval;
        if next - now > tolerance {
            return Err(next - now - tolerance);
        }
        if own.is_none() {
            ids[i].store(id, Ordering::Relaxed);
        }
        let new = tag << TAT_BITS | next;
        if bucket[i]
            .compare_exchange_weak(w, new, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            return Ok(next);
        }
    }
}

/// The keyed-budget cells, shared by every keyed budget of every service, in buckets of
/// [`WAYS`].
pub struct Table {
    cells: Box<[AtomicU64]>,
    /// Each cell's owner: its key's whole hash (see [`gcra_keyed`]).
    ids: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Table({} cells)", self.cells.len())
    }
}

impl Table {
    fn new(cells: usize) -> Table {
        let words = || {
            (0..cells.div_ceil(WAYS) * WAYS)
                .map(|_| AtomicU64::new(0))
                .collect()
        };
        Table {
            cells: words(),
            ids: words(),
            hasher: RandomState::new(),
        }
    }

    /// The bucket of a key of `budget` (`kind` tells the key's kinds apart), its cells'
    /// owners, and the key's tag (never 0, which marks an empty cell) and whole hash.
    fn bucket(
        &self,
        budget: u64,
        kind: u8,
        key: &[u8],
    ) -> (&[AtomicU64], &[AtomicU64], (u64, u64)) {
        let mut h = self.hasher.build_hasher();
        budget.hash(&mut h);
        kind.hash(&mut h);
        key.hash(&mut h);
        let h = h.finish();
        // Lemire's reduction (the high bits): uniform over any number of buckets; the tag
        // comes from the low bits.
        let buckets = self.cells.len() / WAYS;
        let i = ((u128::from(h) * buckets as u128) >> 64) as usize * WAYS;
        let (cells, ids) = (&self.cells[i..i + WAYS], &self.ids[i..i + WAYS]);
        (cells, ids, ((h & 0xffff).max(1), h))
    }
}

/// One service's rate limit, as the request path uses it.
#[derive(Debug)]
pub struct Limiter {
    pub limit: RateLimit,
    interval: u64,
    tolerance: u64,
    /// Where the budget's word is (for a fleet budget: the fallback while Redis is out of
    /// reach).
    budget: Budget,
    /// `scope: cluster`: the local allowance the cluster thread fills from Redis.
    pub fleet: Option<Arc<FleetBudget>>,
    /// `ratelimit-policy: ...\r\n`, formatted once.
    policy_line: Box<[u8]>,
}

/// Where a limit's GCRA words are.
#[derive(Debug)]
enum Budget {
    /// `key: service`: the service's own word.
    Word(Arc<CachePadded<AtomicU64>>),
    /// `client_ip` / `header:NAME`: cells of the table; `id` is this budget's identity in
    /// the hash (the same for the same service, limit and key, so an unchanged budget keeps
    /// its cells on reload).
    Keyed { table: Arc<Table>, id: u64 },
}

/// The 400's detail for a `header:NAME` key on more than one line, or a list.
pub const REPEATED_KEY: &str = "repeated_rate_limit_key";
/// The 400's detail for a `header:NAME` key that `Connection` names (so it is not
/// forwarded).
pub const HOP_BY_HOP_KEY: &str = "hop_by_hop_rate_limit_key";

/// What admission decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on. `held` says whether an in-flight slot was taken (release it with
    /// [`Admission::release`] when the response ends).
    Admit { held: bool },
    /// Over the rate limit: answer 429 with `Retry-After` (seconds).
    Limited { retry_after: u64 },
    /// At `max_in_flight`: answer 503 `overloaded`.
    Overloaded,
    /// The `header:NAME` key is not what the backend will see: on more than one line
    /// ([`REPEATED_KEY`]), or named by `Connection`, so never forwarded ([`HOP_BY_HOP_KEY`]).
    /// Answer 400 with that detail.
    Ambiguous(&'static str),
}

/// A service's admission state.
#[derive(Debug)]
pub struct Admission {
    pub limiter: Option<Limiter>,
    pub max_in_flight: Option<u64>,
    /// Requests admitted and not yet finished (kept by service name across reloads, so
    /// requests that started on an older snapshot release the same counter).
    pub in_flight: Arc<CachePadded<AtomicU64>>,
    headers: bool,
}

/// What identifies the client and the request for keyed budgets.
pub struct Caller<'a> {
    pub peer: IpAddr,
    pub headers: &'a [httparse::Header<'a>],
}

impl Admission {
    /// Whether this service has any limit (the request path skips everything else).
    #[inline]
    pub fn is_limited(&self) -> bool {
        self.limiter.is_some() || self.max_in_flight.is_some()
    }

    /// Decides about one request. `fields` receives the RateLimit header lines to send
    /// with the answer (on a 429 always, on admitted responses with `rate_limit_headers`).
    pub fn admit(&self, caller: &Caller<'_>, trusted: &[Cidr], fields: &mut Vec<u8>) -> Verdict {
        let held = match self.max_in_flight {
            Some(max) => {
                if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return Verdict::Overloaded;
                }
                true
            }
            None => false,
        };
        match self.rate(caller, trusted, fields) {
            Verdict::Admit { .. } => Verdict::Admit { held },
            refused => {
                if held {
                    self.release();
                }
                refused
            }
        }
    }

    /// The rate limit's part of [`Admission::admit`] (`held` in its answer means nothing).
    fn rate(&self, caller: &Caller<'_>, trusted: &[Cidr], fields: &mut Vec<u8>) -> Verdict {
        let Some(l) = &self.limiter else {
            return Verdict::Admit { held: false };
        };
        if let Some(fleet) = l
            .fleet
            .as_ref()
            .filter(|f| f.online.load(Ordering::Acquire))
        {
            return match fleet.take() {
                Ok(left) => {
                    if self.headers {
                        // `r`: what this instance admits at once (what the fleet had left
                        // besides, tried first, was promised and then refused: a review
                        // sent `r=99` requests at once and had half refused); `t`: when
                        // the fleet's budget was to be whole again at the last grant.
                        let used = fleet.used_ns();
                        l.write_fields(fields, left, used.div_ceil(NS));
                    }
                    Verdict::Admit { held: false }
                }
                Err(retry_after) => {
                    l.write_fields(fields, 0, retry_after);
                    Verdict::Limited { retry_after }
                }
            };
        }
        let now = now_ns();
        let (bucket, ids, (tag, id)) = match (&l.budget, &l.limit.key) {
            (Budget::Word(w), _) => (std::slice::from_ref(&***w), &[][..], (0, 0)),
            (Budget::Keyed { table, id }, LimitKey::ClientIp) => {
                match client_ip(caller.peer, caller.headers, trusted) {
                    IpAddr::V4(v4) => table.bucket(*id, 4, &v4.octets()),
                    // A /64 is one subscriber's: keying by /128 would let any client
                    // with a prefix rotate addresses for fresh budgets.
                    IpAddr::V6(v6) => table.bucket(*id, 6, &v6.octets()[..8]),
                }
            }
            (Budget::Keyed { table, id }, LimitKey::Header(name)) => {
                // `X_Api_Key` too: a CGI or WSGI backend reads it as `X-Api-Key`.
                let mut lines = caller
                    .headers
                    .iter()
                    .filter(|h| h1::name_is_cgi(h.name, name));
                let value = match (lines.next(), lines.next()) {
                    // `Connection: X-Api-Key` drops the key on its way to the backend, which
                    // then sees a keyless request that never paid from the keyless budget (a
                    // review: a fresh key and that option on every request, never limited).
                    (Some(h), None)
                        if h1::ConnectionOptions::collect(caller.headers).names(h.name) =>
                    {
                        return Verdict::Ambiguous(HOP_BY_HOP_KEY)
                    }
                    (Some(h), None) => Ok(h1::trim_ows(h.value)),
                    (None, _) => Ok(&b""[..]),
                    (Some(_), Some(_)) => Err(()),
                };
                match value {
                    // An empty value is no key, as an absent one.
                    Ok([]) => table.bucket(*id, 0, b""),
                    // A list (`k, other`) is several lines in one (RFC 9110 §5.3).
                    Ok(v) if !v.contains(&b',') => table.bucket(*id, 1, v),
                    // Which value would the backend believe? Keying on one lets a client
                    // vary another for fresh budgets; refuse, as for a repeated Host.
                    _ => return Verdict::Ambiguous(REPEATED_KEY),
                }
            }
            // Not built (a service key always gets its own word); one shared key would do.
            (Budget::Keyed { table, id }, LimitKey::Service) => table.bucket(*id, 2, b""),
        };
        // Service words keep ns; keyed cells hold µs (see `gcra_keyed`): both answer in ns.
        let step = if tag == 0 {
            gcra(&bucket[0], now, l.interval, l.tolerance).map(|tat| tat - now)
        } else {
            let (now_us, interval_us) = (now / 1000, (l.interval / 1000).max(1));
            let tolerance_us = (l.tolerance / 1000).max(interval_us);
            gcra_keyed(bucket, ids, (tag, id), now_us, interval_us, tolerance_us)
                .map(|tat| (tat - now_us) * 1000)
                .map_err(|wait| wait * 1000)
        };
        match step {
            Ok(used) => {
                if self.headers {
                    let used = used.min(l.tolerance);
                    let remaining = (l.tolerance - used) / l.interval;
                    l.write_fields(fields, remaining, used.div_ceil(NS));
                }
                Verdict::Admit { held: false }
            }
            Err(wait) => {
                let retry_after = wait.div_ceil(NS).max(1);
                l.write_fields(fields, 0, retry_after);
                Verdict::Limited { retry_after }
            }
        }
    }

    /// Ends a request that [`Admission::admit`] admitted with `held`.
    #[inline]
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A budget shared by a fleet (`scope: cluster`). The fleet's GCRA word lives in Redis;
/// the cluster thread takes slices of it (several requests' worth at a time) and adds them
/// to `allowance`, which requests decrement: the request path never waits on Redis. What
/// the fleet admits is what Redis granted, so it stays within `burst + rate × T` except for
/// grants still unused when a window ends: at most one slice per instance.
#[derive(Debug)]
pub struct FleetBudget {
    pub limit: RateLimit,
    /// The Redis key suffix: the service and the limit, so a changed limit is a new budget.
    pub key: String,
    /// Requests this instance may still admit from its slices.
    pub allowance: CachePadded<AtomicU64>,
    /// Redis answers: use the allowance. Otherwise the limit applies per instance (the
    /// service's own word), the way breakers fall back to local decisions.
    pub online: std::sync::atomic::AtomicBool,
    /// When Redis last refused a slice: ms until the fleet's budget has room again.
    pub wait_ms: AtomicU64,
    /// How far ahead of Redis's clock the fleet's word was after the last grant, in µs: how
    /// much of the burst the fleet had used (for the `RateLimit` field of an admitted answer).
    pub used_us: AtomicU64,
    /// Instances in the fleet (with this one), as the last heartbeat found them.
    pub instances: AtomicU64,
    /// How much time one slice covers, in ms: twice how often the cluster thread gets to
    /// top the allowance up (at least [`MIN_SLICE_MS`], at most [`MAX_SLICE_MS`]).
    pub slice_ms: AtomicU64,
    /// The service's own word: the limit while offline.
    local: Arc<CachePadded<AtomicU64>>,
}

/// The greatest common divisor (0 with 0 stands for none yet); also the balancer's, for
/// weights.
pub(crate) fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A slice covers at least this much time at the steady rate ...
pub const MIN_SLICE_MS: u64 = 50;
/// ... and at most this much, however slowly Redis answers.
pub const MAX_SLICE_MS: u64 = 1000;

impl FleetBudget {
    fn new(service: &str, limit: &RateLimit, local: Arc<CachePadded<AtomicU64>>) -> FleetBudget {
        FleetBudget {
            local,
            limit: limit.clone(),
            // The rate in lowest terms: `100/s` and `6000/m` are one budget across instances
            // that spell it differently (a review saw them run as two, doubling the fleet's).
            key: {
                let l = limit.in_lowest_terms();
                format!("{service}:{}:{}:{}", l.count, l.per_secs, l.burst)
            },
            allowance: CachePadded::new(AtomicU64::new(0)),
            online: std::sync::atomic::AtomicBool::new(false),
            wait_ms: AtomicU64::new(0),
            used_us: AtomicU64::new(0),
            instances: AtomicU64::new(1),
            slice_ms: AtomicU64::new(MIN_SLICE_MS),
        }
    }

    /// Requests one slice holds: `slice_ms` at the steady rate, and at least this
    /// instance's share of half the burst; at least 1, at most the burst. When Redis
    /// answers slowly the thread tops up less often, so a slice covers more time: with a
    /// fixed 50 ms a Redis taking 60 ms per command cut a 100/s fleet to 67/s, and at
    /// 200 ms to 12/s, while it still counted as up. The share is for low rates: at 20/s a
    /// slice of 50 ms is one request, so an instance could admit no two requests within a
    /// top-up round, and a client sending pairs at half the rate had every second one
    /// refused (a review). The instances' slices together hold at most half the burst.
    pub fn slice(&self) -> u64 {
        self.slice_of(self.slice_ms.load(Ordering::Relaxed))
    }

    /// [`FleetBudget::slice`] for a slice covering `ms`.
    fn slice_of(&self, ms: u64) -> u64 {
        let l = &self.limit;
        let share = l
            .burst
            .div_ceil(2 * self.instances.load(Ordering::Relaxed).max(1));
        (l.count * ms / (l.per_secs * 1000))
            .max(share)
            .clamp(1, l.burst)
    }

    /// How much of the burst the fleet had used at the last grant, in ns.
    fn used_ns(&self) -> u64 {
        (self.used_us.load(Ordering::Relaxed) * 1000).min(self.gcra().1)
    }

    /// The cluster thread's latest round says a slice covers `ms` from now on. What this
    /// instance holds past the slice of the longer of its last two rounds is let go (not
    /// handed back: the fleet's word already counts it), so that it holds at most one
    /// slice, one round after a long one. A single slow round (Redis blocked, the thread
    /// preempted) grew the slice to the whole burst, and that grant was kept however
    /// short the slices became after it: a review's two instances each held a whole burst
    /// at rest after a Redis outage, and admitted two at once.
    pub fn set_slice_ms(&self, ms: u64) {
        let before = self.slice_ms.swap(ms, Ordering::Relaxed);
        let most = self.slice_of(before.max(ms));
        // A load first: the workers take from this word, and a write every round, most of
        // them changing nothing, would take its cache line from them.
        if self.allowance.load(Ordering::Relaxed) > most {
            self.allowance.fetch_min(most, Ordering::AcqRel);
        }
    }

    /// The heartbeat counted `n` instances: with more than before, this one's share is
    /// smaller, and what it holds past its new slice is let go (not handed back: the
    /// fleet's word already counts it), so that the slices together stay within half the
    /// burst once every instance has heard.
    pub fn set_instances(&self, n: u64) {
        let before = self.instances.swap(n.max(1), Ordering::Relaxed);
        if n > before {
            self.allowance.fetch_min(self.slice(), Ordering::AcqRel);
        }
    }

    /// A budget made by a reload in a running fleet of `instances` starts offline, on the
    /// service's fresh word, until the cluster thread takes it up (a tick): that word holds
    /// only this instance's share of the burst, not all of it (a review: every reload that
    /// changed a fleet limit admitted (instances + 1) bursts at once).
    fn start_with_a_share(&self, instances: u64) {
        if instances <= 1 {
            return;
        }
        let (interval, tolerance) = self.gcra();
        let share = self.limit.burst.div_ceil(instances);
        let tat =
            (now_ns().saturating_add(tolerance)).saturating_sub(share.saturating_mul(interval));
        self.local.fetch_max(tat, Ordering::AcqRel);
    }

    /// Redis answers for this budget again: requests take from the allowance (topped up in
    /// the round that found Redis answering).
    pub fn go_online(&self) {
        self.online.store(true, Ordering::Release);
    }

    /// Redis does not answer for this budget: the limit applies per instance, on the
    /// service's own word, which starts with what the allowance still held rather than a
    /// whole burst. A Redis flapping between up and down handed out a fresh burst at each
    /// switch (a review: 1.45× the fleet's limit on one instance).
    pub fn go_offline(&self) {
        if !self.online.load(Ordering::Acquire) {
            return;
        }
        let (interval, tolerance) = self.gcra();
        let left = self.allowance.load(Ordering::Acquire).min(self.limit.burst);
        // A word whose TAT is `tolerance - left × interval` ahead admits `left` at once.
        let tat = now_ns() + tolerance - left * interval;
        self.local.fetch_max(tat, Ordering::AcqRel);
        self.online.store(false, Ordering::Release);
        self.allowance.store(0, Ordering::Release);
    }

    /// Nanoseconds between two requests at the steady rate, and the tolerance (burst).
    pub fn gcra(&self) -> (u64, u64) {
        let t = self.limit.interval_ns();
        (t, t.saturating_mul(self.limit.burst))
    }

    /// One request's worth of the allowance: Ok(what is left) or Err(Retry-After seconds).
    fn take(&self) -> Result<u64, u64> {
        let mut n = self.allowance.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                let wait = self.wait_ms.load(Ordering::Relaxed);
                return Err(wait.div_ceil(1000).max(1));
            }
            match self.allowance.compare_exchange_weak(
                n,
                n - 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(n - 1),
                Err(seen) => n = seen,
            }
        }
    }
}

impl Limiter {
    /// `RateLimit-Policy` and `RateLimit` as in draft-ietf-httpapi-ratelimit-headers (-09
    /// and later): the policy is the steady rate (`q` requests per `w` seconds); `r` is how
    /// many more requests would be admitted right now, `t` the seconds until the budget is
    /// whole again (on a 429: until the next request is admitted). A burst larger than the
    /// quota can leave more than `q` requests to admit; `r` says at most `q`, which the
    /// policy promises every window (a client reading `r=50` beside `q=10` was told more
    /// than the policy it was given).
    fn write_fields(&self, out: &mut Vec<u8>, remaining: u64, reset: u64) {
        out.extend_from_slice(&self.policy_line);
        out.extend_from_slice(b"ratelimit: \"default\";r=");
        h1::push_dec(out, remaining.min(self.limit.count));
        out.extend_from_slice(b";t=");
        h1::push_dec(out, reset);
        out.extend_from_slice(b"\r\n");
    }
}

/// The client's address for `key: client_ip`: the peer, or, when the peer is a trusted
/// proxy, the rightmost address in `X-Forwarded-For` that is not trusted (all lines, in
/// order). When every listed address is trusted, the leftmost; an entry that is not an
/// address stops the walk at the last trusted one. Empty elements (`a, , b`, a trailing
/// comma, an empty line) are skipped, as RFC 9110 §5.6.1 requires of list recipients.
pub fn client_ip(peer: IpAddr, headers: &[httparse::Header<'_>], trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| is_trusted(ip, trusted);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for h in headers
        .iter()
        .rev()
        .filter(|h| h1::name_is(h.name, "x-forwarded-for"))
    {
        for entry in h.value.rsplit(|&b| b == b',') {
            let entry = h1::trim_ows(entry);
            if entry.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(entry).unwrap_or("");
            let Some(ip) = parse_forwarded_ip(text) else {
                return client;
            };
            client = canonical(ip);
            if !is_trusted(client) {
                return client;
            }
        }
    }
    client
}

/// `trusted_proxies` as the summary and the reload line write it: `10.0.0.0/8, 192.0.2.1/32`.
pub fn cidr_list(nets: &[Cidr]) -> String {
    nets.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `ip` is in `trusted_proxies`.
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// An address as proxies write it in `X-Forwarded-For`: bare, or with a port.
fn parse_forwarded_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

// ---- built on each snapshot, carried over reloads ----

/// Whether any service of `cfg` has a keyed budget (and so needs the table).
fn uses_table(cfg: &crate::config::Config) -> bool {
    cfg.services.iter().any(|s| {
        s.rate_limit
            .as_ref()
            .is_some_and(|l| l.key != LimitKey::Service)
    })
}

/// Budgets and in-flight counters by service, surviving reloads.
#[derive(Default)]
pub struct Registry {
    /// `key: service` words by (service, limit).
    words: HashMap<(String, RateLimit), Arc<CachePadded<AtomicU64>>>,
    /// `scope: cluster` budgets by (service, limit).
    fleets: HashMap<(String, RateLimit), Arc<FleetBudget>>,
    /// Keyed limits in use by (service, limit) (their cells live in the table).
    keyed: HashMap<(String, RateLimit), u64>,
    table: Option<Arc<Table>>,
    in_flight: HashMap<String, Arc<CachePadded<AtomicU64>>>,
    next_budget: u64,
}

/// Budgets a snapshot build kept and started fresh.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetReport {
    pub kept: usize,
    pub fresh: usize,
}

impl Registry {
    /// The admission state of every service of `cfg`, in `cfg.services` order; budgets
    /// whose service, limit and key did not change carry over.
    pub fn build(&mut self, cfg: &crate::config::Config) -> (Vec<Admission>, BudgetReport) {
        let mut report = BudgetReport::default();
        let settings = &cfg.admission;
        let table_changed = self
            .table
            .as_ref()
            .is_some_and(|t| t.cells.len() != settings.table_cells);
        if !uses_table(cfg) {
            self.table = None;
        } else if self.table.is_none() || table_changed {
            self.table = Some(Arc::new(Table::new(settings.table_cells)));
            self.keyed.clear();
        }
        let mut words = HashMap::new();
        let mut fleets = HashMap::new();
        let mut keyed = HashMap::new();
        let mut in_flight = HashMap::new();
        let mut out = Vec::with_capacity(cfg.services.len());
        // The fleet's size as the running budgets' last heartbeat found it (1: none yet).
        let fleet_size = self
            .fleets
            .values()
            .map(|f| f.instances.load(Ordering::Relaxed))
            .max()
            .unwrap_or(1);
        for s in &cfg.services {
            let counter = self
                .in_flight
                .get(&s.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(CachePadded::new(AtomicU64::new(0))));
            in_flight.insert(s.name.clone(), counter.clone());
            let limiter = s.rate_limit.as_ref().map(|limit| {
                // `100/s` rewritten as `6000/m` is the same budget (a review: a reload that
                // did so handed out a fresh burst).
                let id = (s.name.clone(), limit.in_lowest_terms());
                let budget = if limit.key == LimitKey::Service {
                    let w = match self.words.get(&id) {
                        Some(w) => {
                            report.kept += 1;
                            w.clone()
                        }
                        None => {
                            report.fresh += 1;
                            Arc::new(CachePadded::new(AtomicU64::new(0)))
                        }
                    };
                    words.insert(id.clone(), w.clone());
                    Budget::Word(w)
                } else {
                    let budget = match self.keyed.get(&id) {
                        Some(&b) => {
                            report.kept += 1;
                            b
                        }
                        None => {
                            report.fresh += 1;
                            self.next_budget += 1;
                            self.next_budget
                        }
                    };
                    keyed.insert(id.clone(), budget);
                    let cells = settings.table_cells;
                    let table = self
                        .table
                        .get_or_insert_with(|| Arc::new(Table::new(cells)))
                        .clone();
                    Budget::Keyed { table, id: budget }
                };
                // `scope: cluster` is for `key: service` only (checked with the config).
                let fleet = match (&budget, limit.fleet) {
                    (Budget::Word(w), true) => {
                        let f = self.fleets.get(&id).cloned().unwrap_or_else(|| {
                            let f = FleetBudget::new(&s.name, limit, w.clone());
                            f.start_with_a_share(fleet_size);
                            Arc::new(f)
                        });
                        fleets.insert(id, f.clone());
                        Some(f)
                    }
                    _ => None,
                };
                let interval = limit.interval_ns();
                let mut policy_line = b"ratelimit-policy: \"default\";q=".to_vec();
                h1::push_dec(&mut policy_line, limit.count);
                policy_line.extend_from_slice(b";w=");
                h1::push_dec(&mut policy_line, limit.per_secs);
                policy_line.extend_from_slice(b"\r\n");
                Limiter {
                    interval,
                    tolerance: interval.saturating_mul(limit.burst),
                    limit: limit.clone(),
                    budget,
                    fleet,
                    policy_line: policy_line.into_boxed_slice(),
                }
            });
            out.push(Admission {
                limiter,
                max_in_flight: s.max_in_flight,
                in_flight: counter,
                headers: settings.headers,
            });
        }
        self.words = words;
        self.fleets = fleets;
        self.keyed = keyed;
        // A service that left keeps its counter while requests admitted under it are still
        // in flight (they release it through their old snapshot), so that one coming back
        // meanwhile counts them against its cap: a WebSocket tunnel holds its slot up to
        // `timeouts.tunnel` (1 h), and a review had twice the cap running after a reload
        // that removed the service and one that brought it back. Once none is left, the
        // counter is forgotten.
        for (name, counter) in self.in_flight.drain() {
            if counter.load(Ordering::Acquire) > 0 {
                in_flight.entry(name).or_insert(counter);
            }
        }
        self.in_flight = in_flight;
        (out, report)
    }

    /// Bytes the keyed-budget table takes (0 when no service uses one).
    pub fn table_bytes(cfg: &crate::config::Config) -> usize {
        if uses_table(cfg) {
            // A cell's word and its owner's.
            cfg.admission.table_cells * 2 * std::mem::size_of::<AtomicU64>()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(text: &str) -> Result<Option<RateLimit>, String> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        parse_rate_limit("rate_limit", &v).map_err(|e| e.to_string())
    }

    /// A review: a reload that changed a fleet limit made a fresh budget on every
    /// instance, each admitting a whole burst on its own word until the cluster thread took
    /// it up, (instances + 1) bursts at once. It starts with this instance's share.
    #[test]
    fn a_fleet_limit_changed_by_a_reload_starts_with_this_instances_share() {
        let cfg = |burst: u32| {
            crate::config::Config::parse(&format!(
                "cluster: {{redis: \"redis://127.0.0.1:1/0\"}}\nservices:\n  a:\n    backends: [http://127.0.0.1:1]\n    rate_limit: {{rate: 1/h, burst: {burst}, scope: cluster}}\n"
            ))
            .unwrap()
        };
        let caller = Caller {
            peer: "127.0.0.1".parse().unwrap(),
            headers: &[],
        };
        let admitted = |a: &Admission| {
            (0..20)
                .filter(|_| {
                    matches!(
                        a.admit(&caller, &[], &mut Vec::new()),
                        Verdict::Admit { .. }
                    )
                })
                .count()
        };
        let mut r = Registry::default();
        let (alone, _) = r.build(&cfg(9));
        assert_eq!(
            admitted(&alone[0]),
            9,
            "no fleet heard of yet: the whole burst"
        );
        let fleet = alone[0].limiter.as_ref().and_then(|l| l.fleet.clone());
        fleet.expect("a fleet budget").set_instances(3);
        let (changed, _) = r.build(&cfg(6));
        assert_eq!(admitted(&changed[0]), 2, "a third of the new burst");
    }

    /// Regression: slices covered a fixed 50 ms, so a Redis answering in 60 ms (topped up
    /// every ~140 ms) cut a 100/s fleet budget to two thirds while it counted as up.
    #[test]
    fn a_fleet_slice_covers_twice_the_top_up_period_within_its_bounds() {
        let l = limit("{rate: 100/s, burst: 50, scope: cluster}")
            .unwrap()
            .unwrap();
        let b = FleetBudget::new("svc", &l, Default::default());
        assert_eq!(b.slice(), 25, "alone: half the burst");
        b.instances.store(2, Ordering::Relaxed);
        assert_eq!(b.slice(), 13, "one of two: a quarter of it, rounded up");
        b.instances.store(10, Ordering::Relaxed);
        assert_eq!(b.slice(), 5, "50 ms at 100/s, more than its share");
        b.slice_ms.store(280, Ordering::Relaxed);
        assert_eq!(b.slice(), 28);
        b.slice_ms.store(MAX_SLICE_MS, Ordering::Relaxed);
        assert_eq!(b.slice(), 50, "never more than the burst");
        let slow = limit("{rate: 1/s, burst: 3, scope: cluster}")
            .unwrap()
            .unwrap();
        let slow = FleetBudget::new("svc", &slow, Default::default());
        slow.instances.store(10, Ordering::Relaxed);
        assert_eq!(slow.slice(), 1, "at least one");
    }

    /// Regression: a slow round (a Redis outage) grew the slice to the whole burst, and
    /// the grant it took was held for good once the rounds were quick again: two instances
    /// at rest held a burst each (a review: 20 admitted at once, burst 10, rate 50/s).
    #[test]
    fn a_grant_of_a_long_slice_is_let_go_past_the_slice_once_rounds_are_short_again() {
        let l = limit("{rate: 50/s, burst: 10, scope: cluster}")
            .unwrap()
            .unwrap();
        let b = FleetBudget::new("svc", &l, Default::default());
        b.set_instances(2);
        b.set_slice_ms(50);
        assert_eq!(b.slice(), 3, "a quarter of the burst, rounded up");
        b.set_slice_ms(MAX_SLICE_MS);
        assert_eq!(b.slice(), 10, "a slow round: the whole burst");
        b.allowance.store(10, Ordering::Relaxed); // what that round's grant brought
        b.set_slice_ms(50);
        assert_eq!(
            b.allowance.load(Ordering::Relaxed),
            10,
            "kept for the round after the long one"
        );
        b.set_slice_ms(60);
        assert_eq!(b.allowance.load(Ordering::Relaxed), 3, "then one slice");
        // What is within the slice stays, whatever the rounds do.
        b.set_slice_ms(50);
        assert_eq!(b.allowance.load(Ordering::Relaxed), 3);
        b.allowance.store(2, Ordering::Relaxed);
        b.set_slice_ms(50);
        assert_eq!(b.allowance.load(Ordering::Relaxed), 2);
    }

    /// Regression: `100/s` on one instance and `6000/m` on another ran as two fleet budgets
    /// (a review: 1023 admitted where 510 were due).
    #[test]
    fn one_rate_spelled_two_ways_is_one_fleet_budget() {
        let key = |text: &str| {
            FleetBudget::new("svc", &limit(text).unwrap().unwrap(), Default::default()).key
        };
        let per_s = key("{rate: 100/s, burst: 10, scope: cluster}");
        assert_eq!(per_s, "svc:100:1:10");
        assert_eq!(key("{rate: 6000/m, burst: 10, scope: cluster}"), per_s);
        assert_eq!(key("{rate: 360000/h, burst: 10, scope: cluster}"), per_s);
        assert_eq!(key("{rate: 90/m, burst: 10, scope: cluster}"), "svc:3:2:10");
        assert_ne!(key("{rate: 100/s, burst: 11, scope: cluster}"), per_s);
    }

    #[test]
    fn rate_limits_parse_with_defaults_and_errors_name_the_fix() {
        let l = limit("{rate: 50/s, burst: 10, key: client_ip}")
            .unwrap()
            .unwrap();
        assert_eq!((l.count, l.per_secs, l.burst), (50, 1, 10));
        assert_eq!(l.key, LimitKey::ClientIp);
        assert_eq!(l.interval_ns(), 20_000_000);
        let l = limit("{rate: 120/m}").unwrap().unwrap();
        assert_eq!((l.burst, l.key.clone()), (2, LimitKey::Service));
        assert_eq!(limit("{rate: 10/h}").unwrap().unwrap().burst, 1);
        assert_eq!(
            limit("{rate: 5/s, key: header:X-Api-Key}")
                .unwrap()
                .unwrap()
                .key,
            LimitKey::Header("x-api-key".into())
        );
        assert_eq!(limit("off").unwrap(), None);
        assert!(limit("{rate: 5/s, scope: cluster}").unwrap().unwrap().fleet);
        assert!(
            !limit("{rate: 5/s, scope: instance}")
                .unwrap()
                .unwrap()
                .fleet
        );
        let e = crate::config::Config::parse(
            "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    rate_limit: {rate: 5/s, scope: cluster}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("services.a.rate_limit.scope: cluster needs a `cluster:` section"),
            "{e}"
        );
        for (bad, says) in [
            (
                "{rate: 0/s}",
                "rate_limit.rate: \"0/s\" is not a positive rate",
            ),
            ("{rate: 5/d}", "has a bad unit"),
            ("{rate: 5}", "has no unit"),
            (
                "{rate: 5/s, burst: 0}",
                "rate_limit.burst: \"0\" is out of range",
            ),
            ("{rate: 5/s, burst: 2000000}", "out of range"),
            ("{rate: 5/s, key: \"header:bad name\"}", "is not a key"),
            (
                "{rate: 5/s, key: ip}",
                "use service, client_ip or header:NAME",
            ),
            ("{burst: 5}", "rate_limit.rate: is missing"),
            ("{rate: 5/s, per: 1}", "is not a rate_limit key"),
            ("on", "is not a rate limit"),
            (
                "{rate: 5/s, key: client_ip, scope: cluster}",
                "cluster works with key: service only",
            ),
            ("{rate: 5/s, scope: galaxy}", "is not a scope"),
        ] {
            let e = limit(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn gcra_admits_the_burst_then_the_rate() {
        let w = AtomicU64::new(0);
        let (t, tol) = (1000, 5 * 1000); // burst 5
        let now = 1_000_000;
        for _ in 0..5 {
            assert!(gcra(&w, now, t, tol).is_ok());
        }
        assert_eq!(gcra(&w, now, t, tol), Err(1000));
        // One interval later, one more.
        assert!(gcra(&w, now + 1000, t, tol).is_ok());
        assert!(gcra(&w, now + 1000, t, tol).is_err());
        // Over a long idle time the budget refills to the burst, never beyond.
        let later = now + 1_000_000;
        let admitted = (0..100).filter(|_| gcra(&w, later, t, tol).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    /// One request of `key` of `budget` at `now` (µs) under a limit of `interval` µs and
    /// burst `burst`.
    fn keyed(t: &Table, budget: u64, key: &[u8], now: u64, interval: u64, burst: u64) -> bool {
        let (bucket, ids, tag) = t.bucket(budget, 1, key);
        gcra_keyed(bucket, ids, tag, now, interval, interval * burst).is_ok()
    }

    #[test]
    fn a_header_the_gateway_never_forwards_is_no_key() {
        for name in [
            "Proxy-Authorization",
            "te",
            "Connection",
            "keep_alive",
            "Upgrade",
        ] {
            let e = parse_key("k", &format!("header:{name}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("never forwards"), "{name}: {e}");
        }
        for name in ["x-api-key", "Authorization", "content-length"] {
            assert!(parse_key("k", &format!("header:{name}")).is_ok(), "{name}");
        }
    }

    #[test]
    fn a_reload_that_writes_the_same_rate_in_other_units_keeps_the_budget() {
        // Regression (a fleet review): `100/s` rewritten as `6000/m` handed out a fresh
        // burst at every reload.
        let cfg = |rate: &str, key: &str| {
            crate::config::Config::parse(&format!(
                "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    rate_limit: {{rate: {rate}, burst: 10, key: {key}}}\n"
            ))
            .unwrap()
        };
        for key in ["service", "client_ip"] {
            let mut r = Registry::default();
            let (_, first) = r.build(&cfg("100/s", key));
            assert_eq!(first, BudgetReport { kept: 0, fresh: 1 }, "{key}");
            for rate in ["6000/m", "360000/h", "100/s"] {
                let (_, again) = r.build(&cfg(rate, key));
                assert_eq!(again, BudgetReport { kept: 1, fresh: 0 }, "{key} {rate}");
            }
            let (_, other) = r.build(&cfg("101/s", key));
            assert_eq!(other, BudgetReport { kept: 0, fresh: 1 }, "{key}");
        }
    }

    /// Regression (a WebSocket review): a reload that removed a service and one that brought
    /// it back gave it a fresh `max_in_flight` counter while its tunnels ran on, so twice
    /// the cap could be in flight. Its counter now waits for it while any is.
    #[test]
    fn a_service_that_leaves_and_returns_counts_what_it_left_in_flight() {
        let with = |cap: &str| {
            crate::config::Config::parse(&format!(
                "services:\n  a:\n    backends: [http://127.0.0.1:1]\n    max_in_flight: {cap}\n  \
                 b: [http://127.0.0.1:2]\n"
            ))
            .unwrap()
        };
        let without =
            crate::config::Config::parse("services:\n  b: [http://127.0.0.1:2]\n").unwrap();
        let caller = Caller {
            peer: "127.0.0.1".parse().unwrap(),
            headers: &[],
        };
        let admit = |a: &Admission| a.admit(&caller, &[], &mut Vec::new());
        let mut r = Registry::default();
        let (first, _) = r.build(&with("2"));
        assert_eq!(admit(&first[0]), Verdict::Admit { held: true });
        assert_eq!(admit(&first[0]), Verdict::Admit { held: true });
        r.build(&without);
        let (back, _) = r.build(&with("3"));
        assert_eq!(admit(&back[0]), Verdict::Admit { held: true });
        assert_eq!(admit(&back[0]), Verdict::Overloaded, "two still in flight");
        // Those left in flight end through the old snapshot's admission.
        first[0].release();
        first[0].release();
        assert_eq!(admit(&back[0]), Verdict::Admit { held: true });
        // With none left in flight, a service that leaves is forgotten.
        for _ in 0..2 {
            back[0].release();
        }
        r.build(&without);
        assert!(!r.in_flight.contains_key("a"), "{:?}", r.in_flight.keys());
        let (fresh, _) = r.build(&with("1"));
        assert!(!Arc::ptr_eq(&fresh[0].in_flight, &back[0].in_flight));
    }

    /// Regression: keyed budgets shared untagged cells, so a key of a slow budget (1/h)
    /// locked every key of any budget that hashed to its cell out for hours, and one client
    /// sending fresh keys could fill the whole table that way (a review: new users of an
    /// unrelated 100/m service got 429 with Retry-After 7175). Now a budget only ever runs
    /// on its own key's cell, whatever the table holds.
    #[test]
    fn a_slow_budget_filling_the_table_never_refuses_another_budgets_keys() {
        let t = Table::new(64);
        let now = 1_000_000;
        let hour = 3_600_000_000;
        // 10 000 fresh keys of a 1/h budget, burst 2: every cell holds an hour-long TAT.
        // (Until a review, a key whose 16-bit tag matched such a cell in its bucket ran on
        // it: now the cell's owner must match too.)
        for i in 0..10_000u32 {
            let key = i.to_be_bytes();
            assert!(
                keyed(&t, 1, &key, now, hour, 2),
                "fresh key {i} was refused"
            );
        }
        // Every new key of a 100/m budget (burst 20) gets its burst.
        for i in 0..500u32 {
            let key = format!("user{i}");
            for n in 0..20 {
                assert!(
                    keyed(&t, 2, key.as_bytes(), now + 10, 600_000, 20),
                    "user{i} refused at {n}"
                );
            }
        }
    }

    /// A hostile-client review: with a table full of spent cells of a 1/h limit, 5 of 60 000
    /// new keys were refused on their first request, each with another key's hour-long
    /// `Retry-After`: its 16-bit tag matched that key's cell in its bucket. Two such keys,
    /// found by search, keep their own budgets now.
    #[test]
    fn keys_whose_tags_match_in_one_bucket_keep_their_own_budgets() {
        let t = Table::new(64);
        let mut first_of = std::collections::HashMap::new();
        let (a, b) = (0u32..)
            .find_map(|i| {
                let (bucket, _, (tag, _)) = t.bucket(1, 1, &i.to_be_bytes());
                let first = *first_of.entry((bucket.as_ptr() as usize, tag)).or_insert(i);
                (first != i).then_some((first, i))
            })
            .expect("two keys alike");
        let (a, b) = (a.to_be_bytes(), b.to_be_bytes());
        let (now, hour) = (1_000_000, 3_600_000_000);
        assert!(keyed(&t, 1, &a, now, hour, 1));
        assert!(!keyed(&t, 1, &a, now, hour, 1), "a's budget is spent");
        assert!(keyed(&t, 1, &b, now, hour, 1), "b ran on a's budget");
        assert!(!keyed(&t, 1, &b, now, hour, 1), "b's budget is spent");
        assert!(!keyed(&t, 1, &a, now, hour, 1), "a lost its cell to b");
    }

    /// A key keeps its own budget in a table that has room (no other key can take its cell
    /// while a free or expired one is in the bucket), and a full bucket gives up the cell of
    /// the budget nearest to full, never that of the busiest.
    #[test]
    fn a_key_keeps_its_budget_and_a_full_bucket_evicts_the_one_nearest_to_full() {
        let t = Table::new(4); // one bucket
        let now = 1_000_000;
        for _ in 0..3 {
            assert!(keyed(&t, 1, b"busy", now, 1000, 3));
        }
        assert!(!keyed(&t, 1, b"busy", now, 1000, 3), "over its burst");
        // Three more keys take the other cells; one of them used little.
        for _ in 0..2 {
            assert!(keyed(&t, 1, b"b", now, 1000, 3));
            assert!(keyed(&t, 1, b"c", now, 1000, 3));
        }
        assert!(keyed(&t, 1, b"light", now, 1000, 3));
        // A fifth key takes the light key's cell, not the busy one's.
        assert!(keyed(&t, 1, b"fifth", now, 1000, 3));
        assert!(
            !keyed(&t, 1, b"busy", now, 1000, 3),
            "the busiest budget was evicted"
        );
        // After the busy key's budget refilled, its cell is as good as free.
        assert!(keyed(&t, 1, b"busy", now + 3000, 1000, 3));
    }

    #[test]
    fn gcra_is_exact_across_threads() {
        // 4 threads, 10 000 attempts each at one instant: exactly the burst gets in.
        let w = Arc::new(AtomicU64::new(0));
        let admitted: usize = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter(|_| gcra(&w, 5_000, 10, 10 * 777).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 777);
    }

    #[test]
    fn a_trusted_network_of_every_address_or_with_stray_bits_is_warned_of() {
        let cidr = |t: &str| Cidr::parse("trusted_proxies[0]", t).unwrap();
        for quiet in [
            "10.0.0.0/8",
            "192.168.1.7",
            "fd00::/8",
            "fc00::/7",
            "::1",
            "10.0.0.1/32",
        ] {
            assert_eq!(cidr(quiet).warning(), None, "{quiet}");
        }
        for (loud, says) in [
            ("0.0.0.0/0", "trusts every IPv4 address"),
            ("::/0", "trusts every IPv6 address"),
            ("::ffff:0.0.0.0/96", "trusts every IPv4 address"),
            ("0.0.0.0/1", "trusts 1/2 of all IPv4 addresses"),
            ("128.0.0.0/1", "trusts 1/2 of all IPv4 addresses"),
            ("2000::/3", "trusts 1/8 of all IPv6 addresses"),
            ("10.0.0.1/8", "trusts all of 10.0.0.0/8"),
            ("fd00::1/64", "trusts all of fd00::/64"),
        ] {
            let w = cidr(loud).warning().unwrap_or_default();
            assert!(w.contains(says), "{loud}: {w}");
        }
    }

    #[test]
    fn cidrs_and_the_client_behind_trusted_proxies() {
        let trusted = [
            Cidr::parse("t", "10.0.0.0/8").unwrap(),
            Cidr::parse("t", "::1").unwrap(),
        ];
        assert!(trusted[0].contains("10.1.2.3".parse().unwrap()));
        assert!(trusted[0].contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!trusted[0].contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("t", "10.0.0.0/33").is_err());
        assert!(Cidr::parse("t", "nope").is_err());
        assert!(Cidr::parse("t", "0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        let xff = |v: &'static str| {
            [httparse::Header {
                name: "X-Forwarded-For",
                value: v.as_bytes(),
            }]
        };
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("192.0.2.1"), &xff("1.1.1.1"), &trusted),
            ip("192.0.2.1")
        );
        // Rightmost untrusted address.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("6.6.6.6, 1.1.1.1, 10.9.9.9"), &trusted),
            ip("1.1.1.1")
        );
        // All trusted: the leftmost.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("10.0.0.7, 10.0.0.8"), &trusted),
            ip("10.0.0.7")
        );
        // Garbage stops the walk at the last trusted address.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("1.1.1.1, junk, 10.0.0.9"), &trusted),
            ip("10.0.0.9")
        );
        // No header: the peer.
        assert_eq!(client_ip(ip("::1"), &[], &trusted), ip("::1"));
        // A port is allowed.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &xff("1.1.1.1:5555"), &trusted),
            ip("1.1.1.1")
        );
        // Empty elements are skipped, not taken for garbage (RFC 9110 §5.6.1).
        for v in [
            "1.1.1.1 , ",
            "1.1.1.1,,10.0.0.9,",
            ",1.1.1.1, ,",
            "1.1.1.1,\t,",
        ] {
            assert_eq!(
                client_ip(ip("10.0.0.1"), &xff(v), &trusted),
                ip("1.1.1.1"),
                "{v:?}"
            );
        }
        let lines = [
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"1.1.1.1",
            },
            httparse::Header {
                name: "X-Forwarded-For",
                value: b"",
            },
        ];
        assert_eq!(client_ip(ip("10.0.0.1"), &lines, &trusted), ip("1.1.1.1"));
    }
}
