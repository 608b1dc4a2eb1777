//! SIGHUP: validate the file, keep what cannot change without a restart, build and store
//! one new snapshot, and say in one line what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::accesslog::Sink;
use crate::breaker::{Snapshot as Word, CLOSED};
use crate::config::{BackendUrl, Config, ConfigError, ServiceConfig};
use crate::state::Shared;

/// What a reload (or `--check`) changed, relative to the running config.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub generation: u64,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_kept: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Of those, the ones of services that stay, as `service URL` (a service added or
    /// removed whole is named as such): an operator review's `-1` named no backend.
    pub backends_added_to: Vec<String>,
    pub backends_removed_from: Vec<String>,
    /// Backends whose host name now resolves to another address: new slot, fresh breaker.
    pub backends_readdressed: usize,
    /// Backends that stay, and so keep their breaker state.
    pub breakers_carried: usize,
    /// Of those, the ones not CLOSED right now.
    pub breakers_carried_open: usize,
    /// Rate-limit budgets carried over (same service, limit and key) and started fresh.
    pub budgets: crate::admission::BudgetReport,
    /// Keys whose new value only applies after a restart.
    pub ignored_until_restart: Vec<&'static str>,
    /// Timeouts, limits, pool and DNS settings that changed, as `key old -> new`.
    pub settings_changed: Vec<String>,
    /// Services that stay and whose breaker settings changed, and which of those fields.
    pub breaker_changed: Vec<String>,
    pub breaker_fields_changed: Vec<&'static str>,
    /// Services that stay and whose `rate_limit`, `max_in_flight`, `websocket`,
    /// `encoded_slashes`, `timeouts` or backend weights changed, and which.
    pub admission_changed: Vec<String>,
    pub admission_fields_changed: Vec<&'static str>,
}

/// Names shown in the reload line before the rest is summed up as `+N more`, so the line
/// stays one readable line with a thousand services.
const MAX_NAMES: usize = 5;

/// `n [a, b, c, d, e +995 more]`, or `0`.
fn counted_list(names: &[String]) -> String {
    if names.is_empty() {
        return "0".into();
    }
    let shown = names[..names.len().min(MAX_NAMES)].join(", ");
    match names.len().saturating_sub(MAX_NAMES) {
        0 => format!("{} [{shown}]", names.len()),
        more => format!("{} [{shown} +{more} more]", names.len()),
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.generation > 0 {
            write!(f, "generation {}: ", self.generation)?;
        }
        write!(
            f,
            // Totals first, then the difference: an operator review read `=N` as the total.
            "services {} (+{} -{}, {} kept); backends {} (+{} -{}, {} kept); breakers carried over: {} ({} not closed)",
            self.services_added.len() + self.services_kept,
            counted_list(&self.services_added),
            counted_list(&self.services_removed),
            self.services_kept,
            self.backends_added + self.breakers_carried + self.backends_readdressed,
            self.backends_added,
            self.backends_removed,
            self.breakers_carried,
            self.breakers_carried,
            self.breakers_carried_open,
        )?;
        if !self.backends_added_to.is_empty() {
            write!(
                f,
                "; backends added: {}",
                counted_list(&self.backends_added_to)
            )?;
        }
        if !self.backends_removed_from.is_empty() {
            write!(
                f,
                "; backends removed: {}",
                counted_list(&self.backends_removed_from)
            )?;
        }
        if self.budgets.kept + self.budgets.fresh > 0 {
            write!(
                f,
                "; rate-limit budgets carried over: {}, fresh: {}",
                self.budgets.kept, self.budgets.fresh
            )?;
        }
        if self.backends_readdressed > 0 {
            write!(
                f,
                "; re-resolved to a new address: {}",
                self.backends_readdressed
            )?;
        }
        if !self.settings_changed.is_empty() {
            write!(
                f,
                "; settings changed: {}",
                self.settings_changed.join(", ")
            )?;
        }
        if !self.breaker_changed.is_empty() {
            write!(
                f,
                "; breaker ({}) changed for services: {}",
                self.breaker_fields_changed.join(", "),
                counted_list(&self.breaker_changed)
            )?;
        }
        if !self.admission_changed.is_empty() {
            write!(
                f,
                "; settings ({}) changed for services: {}",
                self.admission_fields_changed.join(", "),
                counted_list(&self.admission_changed)
            )?;
        }
        if !self.ignored_until_restart.is_empty() {
            write!(
                f,
                "; changed but ignored until restart: {}",
                self.ignored_until_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Compares two configs by service name and (service, URL).
pub fn diff(old: &Config, new: &Config) -> Changes {
    let names =
        |c: &Config| -> BTreeSet<String> { c.services.iter().map(|s| s.name.clone()).collect() };
    let pairs = |c: &Config| -> BTreeMap<(String, String), SocketAddr> {
        c.services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| ((s.name.clone(), b.url.clone()), b.addr))
            })
            .collect()
    };
    let (old_names, new_names) = (names(old), names(new));
    let (old_pairs, new_pairs) = (pairs(old), pairs(new));
    let readdressed = new_pairs
        .iter()
        .filter(|(k, addr)| old_pairs.get(*k).is_some_and(|old| old != *addr))
        .count();
    let (breaker_changed, breaker_fields) = breakers_changed(old, new);
    let (admission_changed, admission_fields) = admission_changed(old, new);
    let ignored = [
        ("listen", old.listen != new.listen),
        ("workers", old.workers != new.workers),
        ("pin_workers", old.pin_workers != new.pin_workers),
        ("admin", old.admin != new.admin),
        ("busy_poll", old.busy_poll != new.busy_poll),
        ("splice", old.splice != new.splice),
        ("cluster", old.cluster != new.cluster),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect();
    Changes {
        generation: 0,
        services_added: new_names.difference(&old_names).cloned().collect(),
        services_removed: old_names.difference(&new_names).cloned().collect(),
        services_kept: new_names.intersection(&old_names).count(),
        backends_added: new_pairs
            .keys()
            .filter(|k| !old_pairs.contains_key(*k))
            .count(),
        backends_removed: old_pairs
            .keys()
            .filter(|k| !new_pairs.contains_key(*k))
            .count(),
        backends_added_to: named(&new_pairs, &old_pairs, &old_names),
        backends_removed_from: named(&old_pairs, &new_pairs, &new_names),
        backends_readdressed: readdressed,
        breakers_carried: new_pairs
            .keys()
            .filter(|k| old_pairs.contains_key(*k))
            .count()
            - readdressed,
        breakers_carried_open: 0,
        budgets: Default::default(),
        ignored_until_restart: ignored,
        settings_changed: settings_changed(old, new),
        breaker_changed,
        breaker_fields_changed: breaker_fields,
        admission_changed,
        admission_fields_changed: admission_fields,
    }
}

/// The `service URL` of each backend in `these` and not in `those` whose service is in
/// `kept` (its service stays).
fn named(
    these: &BTreeMap<(String, String), SocketAddr>,
    those: &BTreeMap<(String, String), SocketAddr>,
    kept: &BTreeSet<String>,
) -> Vec<String> {
    these
        .keys()
        .filter(|k| !those.contains_key(*k) && kept.contains(&k.0))
        .map(|(svc, url)| format!("{svc} {url}"))
        .collect()
}

/// `key old -> new` for each timeout, limit, pool, DNS and other process-wide setting that
/// differs and applies at once.
fn settings_changed(old: &Config, new: &Config) -> Vec<String> {
    let d = crate::config::duration_text;
    let proxies = |c: &Config| {
        format!(
            "[{}]",
            crate::admission::cidr_list(&c.admission.trusted_proxies)
        )
    };
    let n = |v: u64| v.to_string();
    let (a, b) = (&old.timeouts, &new.timeouts);
    let (la, lb) = (&old.limits, &new.limits);
    let dns = |c: &Config| c.dns_refresh.map_or("off".to_string(), d);
    let pairs = [
        ("timeouts.connect", d(a.connect), d(b.connect)),
        ("timeouts.response", d(a.response), d(b.response)),
        (
            "timeouts.client_header",
            d(a.client_header),
            d(b.client_header),
        ),
        ("timeouts.client_idle", d(a.client_idle), d(b.client_idle)),
        ("timeouts.body", d(a.body), d(b.body)),
        ("timeouts.drain", d(a.drain), d(b.drain)),
        ("timeouts.drain_grace", d(a.drain_grace), d(b.drain_grace)),
        ("timeouts.tunnel", d(a.tunnel), d(b.tunnel)),
        (
            "limits.max_head_bytes",
            n(la.max_head_bytes as u64),
            n(lb.max_head_bytes as u64),
        ),
        (
            "limits.max_headers",
            n(la.max_headers as u64),
            n(lb.max_headers as u64),
        ),
        (
            "limits.max_target_bytes",
            n(la.max_target_bytes as u64),
            n(lb.max_target_bytes as u64),
        ),
        (
            "limits.max_body_bytes",
            n(la.max_body_bytes),
            n(lb.max_body_bytes),
        ),
        (
            "limits.buffer_request_body",
            n(la.buffer_request_body),
            n(lb.buffer_request_body),
        ),
        (
            "limits.min_body_rate",
            n(la.min_body_rate),
            n(lb.min_body_rate),
        ),
        (
            "limits.max_connections",
            la.max_connections.map_or("auto".to_string(), n),
            lb.max_connections.map_or("auto".to_string(), n),
        ),
        (
            "limits.max_connections_per_client",
            la.max_connections_per_client
                .map_or("off".to_string(), |v| n(v.into())),
            lb.max_connections_per_client
                .map_or("off".to_string(), |v| n(v.into())),
        ),
        (
            "pool.max_idle_per_backend",
            n(old.pool.max_idle_per_backend as u64),
            n(new.pool.max_idle_per_backend as u64),
        ),
        (
            "pool.idle_timeout",
            d(old.pool.idle_timeout),
            d(new.pool.idle_timeout),
        ),
        (
            "pool.max_requests_per_connection",
            old.pool
                .max_requests_per_connection
                .map_or("off".to_string(), |v| n(v.into())),
            new.pool
                .max_requests_per_connection
                .map_or("off".to_string(), |v| n(v.into())),
        ),
        ("dns_refresh", dns(old), dns(new)),
        ("trusted_proxies", proxies(old), proxies(new)),
        (
            "rate_limit_headers",
            old.admission.headers.to_string(),
            new.admission.headers.to_string(),
        ),
        (
            "rate_limit_table",
            n(old.admission.table_cells as u64),
            n(new.admission.table_cells as u64),
        ),
        (
            "request_id",
            old.request_id.to_string(),
            new.request_id.to_string(),
        ),
        (
            "ignore_client_abort",
            old.ignore_client_abort.to_string(),
            new.ignore_client_abort.to_string(),
        ),
        (
            "access_log",
            old.access_log.to_string(),
            new.access_log.to_string(),
        ),
        (
            "access_log_format",
            format!("{:?}", old.access_log_format).to_lowercase(),
            format!("{:?}", new.access_log_format).to_lowercase(),
        ),
        (
            "access_log_fields",
            log_fields(old, new),
            log_fields(new, old),
        ),
    ];
    pairs
        .into_iter()
        .filter(|(_, x, y)| x != y)
        .map(|(key, x, y)| format!("{key} {x} -> {y}"))
        .collect()
}

/// `c`'s `[time, client, ...]`; the same text for both sides when `request_id` changed
/// and both are the default fields (which differ by the `request_id` it adds at the end,
/// and `request_id`'s own change says). Any other change is said (a review: a reorder,
/// and dropping `request_id` from a list, were not).
fn log_fields(c: &Config, other: &Config) -> String {
    let default =
        |c: &Config| c.access_log_fields == crate::config::default_log_fields(c.request_id);
    if c.request_id != other.request_id && default(c) && default(other) {
        return String::new();
    }
    let names: Vec<&str> = c.access_log_fields.iter().map(|f| f.name()).collect();
    format!("[{}]", names.join(", "))
}

/// Services that stay and whose breaker settings changed, and which fields.
fn breakers_changed(old: &Config, new: &Config) -> (Vec<String>, Vec<&'static str>) {
    services_changed(old, new, |a, b| {
        let (a, b) = (&a.breaker, &b.breaker);
        [
            (
                "failure_threshold",
                a.failure_threshold != b.failure_threshold,
            ),
            ("cooldown", a.cooldown != b.cooldown),
            ("failure_statuses", a.failure_statuses != b.failure_statuses),
        ]
    })
}

/// Services that stay and whose request settings (what they let through: limits,
/// WebSocket tunnels, encoded slashes; their timeouts, their backends' weights and
/// their health checks)
/// changed, and which fields.
fn admission_changed(old: &Config, new: &Config) -> (Vec<String>, Vec<&'static str>) {
    services_changed(old, new, |a, b| {
        [
            ("rate_limit", a.rate_limit != b.rate_limit),
            ("max_in_flight", a.max_in_flight != b.max_in_flight),
            ("websocket", a.websocket != b.websocket),
            ("encoded_slashes", a.encoded_slashes != b.encoded_slashes),
            ("timeouts", own_timeouts_changed(old, a, new, b)),
            ("weights", weights_changed(a, b)),
            ("health_check", a.health_check != b.health_check),
        ]
    })
}

/// Whether service `a` of `old` runs under other timeouts as `b` of `new`, beyond what the
/// top-level timeouts' change (said among the settings) explains: a service that takes
/// a top-level timeout before and after was named for it too (an operator review saw one
/// change reported twice).
fn own_timeouts_changed(old: &Config, a: &ServiceConfig, new: &Config, b: &ServiceConfig) -> bool {
    let (ta, tb, top_a, top_b) = (&a.timeouts, &b.timeouts, &old.timeouts, &new.timeouts);
    let keys = |t: &crate::config::Timeouts| [t.connect, t.response, t.body, t.tunnel];
    let (ka, kb, top_ka, top_kb) = (keys(ta), keys(tb), keys(top_a), keys(top_b));
    // (The others, the client's and the drain's, are the process's alone.)
    (0..4).any(|i| ka[i] != kb[i] && !(ka[i] == top_ka[i] && kb[i] == top_kb[i]))
}

/// Whether the backends in both `a` and `b` take other shares among themselves in `b`:
/// each one's weight over the common divisor of theirs (1:1:1 and 2:2:2 are the same
/// rotation: a review saw it reported as a change). A backend added or removed changes
/// the others' shares of the whole, and is said as such, not as a change of weights (an
/// operator review removed the weight-1 backend beside a weight-2 one and was told the
/// weights changed).
fn weights_changed(a: &ServiceConfig, b: &ServiceConfig) -> bool {
    let both: Vec<(u64, u64)> = b
        .backends
        .iter()
        .filter_map(|n| {
            let o = a.backends.iter().find(|o| o.url == n.url)?;
            Some((u64::from(o.weight), u64::from(n.weight)))
        })
        .collect();
    let divisor = |w: fn(&(u64, u64)) -> u64| {
        both.iter()
            .fold(0, |d, x| crate::admission::gcd(d, w(x)))
            .max(1)
    };
    let (da, db) = (divisor(|x| x.0), divisor(|x| x.1));
    both.iter().any(|&(o, n)| o / da != n / db)
}

/// The services in both configs for which `compare` finds a field changed (sorted), and
/// the union of those fields.
fn services_changed<const N: usize>(
    old: &Config,
    new: &Config,
    compare: impl Fn(&ServiceConfig, &ServiceConfig) -> [(&'static str, bool); N],
) -> (Vec<String>, Vec<&'static str>) {
    let mut names = Vec::new();
    let mut fields = BTreeSet::new();
    for s in &new.services {
        let Some(o) = old.service(&s.name) else {
            continue;
        };
        let changed = compare(o, s);
        if changed.iter().any(|(_, c)| *c) {
            names.push(s.name.clone());
            fields.extend(changed.iter().filter(|(_, c)| *c).map(|(f, _)| *f));
        }
    }
    names.sort();
    (names, fields.into_iter().collect())
}

/// Loads `path` and, if it is valid, makes it the running config. On error nothing
/// changes and the error is returned (and remembered for `/metrics` and `/admin/config`).
///
/// `log` is the access log's writer (None when it is off): a file it cannot open fails
/// the reload, and the old one stays.
pub fn reload(
    shared: &Shared,
    path: &Path,
    log: Option<&crate::accesslog::Writer>,
) -> Result<Changes, ConfigError> {
    // Read, and its names looked up, under the lock: a reload that resolved before a DNS
    // refresh and stored after it put the stale addresses back (a re-review).
    let _control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
    let result = Config::load(path).and_then(|mut new| {
        let old = shared.current.load_full();
        let mut changes = diff(&old.config, &new);
        // Settings bound at start stay as they are until a restart.
        new.listen = old.config.listen;
        new.workers = old.config.workers;
        new.pin_workers = old.config.pin_workers;
        new.admin = old.config.admin;
        new.busy_poll = old.config.busy_poll;
        new.splice = old.config.splice;
        new.cluster = old.config.cluster.clone();
        // The checks of the whole again, on the `listen` and `admin` in effect: a backend
        // on the running admin port passed in a reload that also moved `admin` (a review).
        new.check_whole()?;
        // Another access log file, stdout or `off`, opened before anything is installed
        // (until 2026-12-04 another file waited for a restart while access_log_format was
        // applied at once, and `off` and back until later the same day: operator reviews).
        match log {
            Some(w) if new.access_log != old.config.access_log => {
                new.access_log_epoch = old.config.access_log_epoch.next();
                w.switch(&new.access_log, &new.access_log_epoch).map_err(|e| {
                    let what = match (&new.access_log, e.raw_os_error()) {
                        (Sink::Off, _) => format!("cannot turn the access log off: {e}"),
                        (_, Some(libc::ENXIO)) => format!(
                            "cannot open the access log {}: {e} (a FIFO nobody reads): start its reader first",
                            new.access_log
                        ),
                        _ => format!(
                            "cannot open the access log {}: {e}: fix the path or its permissions",
                            new.access_log
                        ),
                    };
                    crate::config::invalid("access_log", format!("{what}; the old one stays"))
                })?;
            }
            _ => {
                new.access_log = old.config.access_log.clone();
                new.access_log_epoch = old.config.access_log_epoch.clone();
            }
        }
        let (generation, report) = shared.install(new);
        changes.generation = generation;
        changes.budgets = report.budgets;
        let snap = shared.current.load();
        changes.breakers_carried_open = snap
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
            .filter(|(s, b)| {
                old.service(s.name.as_bytes())
                    .is_some_and(|os| os.backends.iter().any(|ob| ob.url.url == b.url.url))
            })
            .filter(|(_, b)| Word::decode(crate::breaker::Word::load(&**b.breaker)).state != CLOSED)
            .count();
        Ok(changes)
    });
    let mut last = shared
        .reloads
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match &result {
        Ok(changes) => {
            shared.reloads.ok.fetch_add(1, Ordering::Relaxed);
            last.clear();
            *shared
                .reloads
                .restart_pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = changes.ignored_until_restart.clone();
        }
        Err(e) => {
            shared.reloads.failed.fetch_add(1, Ordering::Relaxed);
            // Shown by the unauthenticated /admin/config: no credentials.
            *last = crate::redact::userinfo(&e.to_string()).into_owned();
        }
    }
    result
}

/// Re-homes services and backends that got no metric series (see
/// [`Shared::rehome_ids`]), under the control lock; run about once a second.
pub fn rehome_ids(shared: &Shared) {
    // Skipped while a reload holds the lock (a reload that hangs reading its file must not
    // stop this thread, which also trims the heap: a re-review); it runs again in a second.
    let _control = match shared.control.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if shared.rehome_ids() {
        let snap = shared.current.load();
        let (s, b) = (
            snap.services
                .iter()
                .filter(|s| s.id >= crate::metrics::MAX_SERVICES)
                .count(),
            snap.services
                .iter()
                .flat_map(|s| &s.backends)
                .filter(|b| b.slot >= crate::metrics::MAX_SLOTS)
                .count(),
        );
        log::info!("metrics: ids freed by the last reload re-used; services still without series: {s}, backends: {b}");
    }
}

/// `dns_refresh`: resolves every backend host name of the running config again and, if any
/// now resolves to another address, installs a snapshot with the new addresses (each such
/// backend gets a new pool slot and a fresh breaker, as on a SIGHUP). Lookups happen before
/// the control lock is taken; a name that fails to resolve keeps its address. Returns the
/// number of backends whose address changed.
pub fn refresh_dns(
    shared: &Shared,
    resolve: impl Fn(&BackendUrl) -> Result<SocketAddr, String>,
) -> usize {
    let before = shared.current.load_full();
    let mut found: BTreeMap<(String, String), SocketAddr> = BTreeMap::new();
    for s in &before.config.services {
        for b in &s.backends {
            match resolve(b) {
                Ok(addr) => {
                    found.insert((s.name.clone(), b.url.clone()), addr);
                }
                Err(e) => log::warn!("dns: {} {}: {e}; keeping {}", s.name, b.url, b.addr),
            }
        }
    }
    // A reload holding the lock looks every name up itself: this round is skipped rather
    // than wait for it (a reload hanging on its file used to stop this thread, and with it
    // the heap trims).
    let _control = match shared.control.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return 0,
    };
    // The running config may have been reloaded meanwhile: apply to the current one.
    let mut config = shared.current.load().config.clone();
    let mut changed = 0;
    for s in &mut config.services {
        for b in &mut s.backends {
            if let Some(&addr) = found.get(&(s.name.clone(), b.url.clone())) {
                if addr != b.addr {
                    log::info!(
                        "dns: {} {} now resolves to {addr} (was {})",
                        s.name,
                        b.url,
                        b.addr
                    );
                    b.addr = addr;
                    changed += 1;
                }
            }
        }
    }
    if changed > 0 {
        let (generation, _) = shared.install(config);
        log::info!("dns: generation {generation}: re-resolved to a new address: {changed}");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker;

    /// Regression: the admin-port check ran on the file's `admin`, which a reload does not
    /// apply: a file without `admin` put a backend on the running admin port, and the
    /// admin API answered through the public listener (a review).
    #[test]
    fn a_reload_checks_backends_against_the_admin_port_in_effect() {
        let path =
            std::env::temp_dir().join(format!("gateway-reload-admin-{}.yaml", std::process::id()));
        let v1 =
            "listen: 127.0.0.1:0\nadmin: 127.0.0.1:18911\nservices:\n  a: [http://127.0.0.1:1]\n";
        let shared = Shared::new(Config::parse(v1).unwrap());
        std::fs::write(
            &path,
            "listen: 127.0.0.1:0\nservices:\n  a: [http://127.0.0.1:18911]\n",
        )
        .unwrap();
        let e = reload(&shared, &path, None).unwrap_err().to_string();
        std::fs::write(&path, "listen: 127.0.0.1:0\nadmin: 127.0.0.1:18912\nservices:\n  a: [http://127.0.0.1:18911]\n").unwrap();
        let moved = reload(&shared, &path, None).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        for e in [e, moved] {
            assert!(
                e.contains("services.a: backend http://127.0.0.1:18911 is this gateway's admin port (127.0.0.1:18911)"),
                "{e}"
            );
        }
        let now = shared.current.load();
        assert_eq!(now.config.services[0].backends[0].url, "http://127.0.0.1:1");
    }

    #[test]
    fn reload_keeps_breakers_reports_changes_and_survives_a_broken_file() {
        let dir = std::env::temp_dir().join(format!("gateway-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        let v1 = "listen: 127.0.0.1:0\nservices:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2]\n  b: [http://127.0.0.1:3]\n";
        let shared = Shared::new(Config::parse(v1).unwrap());
        // Open a's first backend.
        let snap = shared.current.load_full();
        let a = snap.service(b"a").unwrap();
        for _ in 0..a.policy.threshold {
            let t = breaker::admit(&**a.backends[0].breaker, 0, &a.policy).unwrap();
            breaker::failure(&**a.backends[0].breaker, t, 0, &a.policy);
        }
        std::fs::write(
            &path,
            "listen: 127.0.0.1:9\ncluster: {redis: redis://127.0.0.1:7/0}\nservices:\n  a: [http://127.0.0.1:1, http://127.0.0.1:4]\n  c: [http://127.0.0.1:5]\n",
        )
        .unwrap();
        let ch = reload(&shared, &path, None).unwrap();
        // Regression: the cluster section was reported as ignored, yet installed, so
        // /admin/config showed a Redis the instance was not using.
        assert_eq!(shared.current.load().config.cluster, None);
        assert_eq!(ch.generation, 2);
        assert_eq!(ch.services_added, ["c"]);
        assert_eq!(ch.services_removed, ["b"]);
        assert_eq!(
            (ch.backends_added, ch.backends_removed, ch.breakers_carried),
            (2, 2, 1)
        );
        assert_eq!(ch.breakers_carried_open, 1);
        assert_eq!(ch.ignored_until_restart, ["listen", "cluster"]);
        let line = ch.to_string();
        assert!(
            line.contains("services 2 (+1 [c] -1 [b], 1 kept); backends 3 (+2 -2, 1 kept); breakers carried over: 1 (1 not closed); backends added: 1 [a http://127.0.0.1:4]; backends removed: 1 [a http://127.0.0.1:2]")
                && line.contains("ignored until restart: listen, cluster"),
            "{line}"
        );
        let now = shared.current.load_full();
        assert_eq!(
            now.config.listen.port(),
            0,
            "listen changed without a restart"
        );
        let a2 = now.service(b"a").unwrap();
        assert!(
            breaker::admit(&**a2.backends[0].breaker, 1, &a2.policy).is_none(),
            "breaker reset by reload"
        );

        std::fs::write(
            &path,
            "services:\n  a: [http://127.0.0.1:1]\n  typo_key: 3\n",
        )
        .unwrap();
        let err = reload(&shared, &path, None).unwrap_err();
        assert!(err.to_string().contains("typo_key"), "{err}");
        assert_eq!(
            shared.current.load().generation,
            2,
            "a broken file replaced the config"
        );
        assert_eq!(shared.reloads.failed.load(Ordering::Relaxed), 1);
        assert!(!shared.reloads.last_error.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dns_refresh_installs_new_addresses_only_when_they_change() {
        let text = "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2]\n";
        let shared = Shared::new(Config::parse(text).unwrap());
        let slot = |s: &Shared, i: usize| s.current.load().service(b"a").unwrap().backends[i].slot;
        let (slot0, slot1) = (slot(&shared, 0), slot(&shared, 1));
        // Same answers: nothing is installed.
        assert_eq!(refresh_dns(&shared, |b| Ok(b.addr)), 0);
        assert_eq!(shared.current.load().generation, 1);
        // The first name moves; the second fails to resolve and keeps its address.
        let moved: SocketAddr = "127.0.0.9:1".parse().unwrap();
        let n = refresh_dns(&shared, |b| {
            if b.url.ends_with(":1") {
                Ok(moved)
            } else {
                Err("no such host".into())
            }
        });
        assert_eq!(n, 1);
        let snap = shared.current.load();
        assert_eq!(snap.generation, 2);
        let a = snap.service(b"a").unwrap();
        assert_eq!(a.backends[0].url.addr, moved);
        assert_ne!(
            a.backends[0].slot, slot0,
            "pooled connections to the old address would be reused"
        );
        assert_eq!(a.backends[1].slot, slot1);
        assert_eq!(
            a.backends[1].url.addr,
            "127.0.0.1:2".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn the_reload_line_names_changed_settings_and_stays_one_line_with_1000_services() {
        let services = |prefix: &str, n: usize, cooldown: &str| -> String {
            (0..n)
                .map(|i| {
                    format!("  {prefix}{i:04}:\n    backends: [http://127.0.0.1:{}]\n    breaker: {{cooldown: {cooldown}}}\n", 1 + i)
                })
                .collect()
        };
        let old = Config::parse(&format!(
            "timeouts: {{connect: 2s}}\nlimits: {{max_body_bytes: 1000}}\ntrusted_proxies: [10.0.0.0/8]\nservices:\n{}{}",
            services("keep", 3, "10s"),
            services("old", 1000, "10s")
        ))
        .unwrap();
        let new = Config::parse(&format!(
            "timeouts: {{connect: 5s, drain_grace: 1500ms}}\nlimits: {{max_body_bytes: 2000, max_connections_per_client: 64}}\ntrusted_proxies: [10.0.0.0/8, 192.0.2.1/32]\nrequest_id: true\naccess_log_format: json\naccess_log_fields: [time, user_agent, request_id]\nservices:\n{}{}",
            services("keep", 3, "20s"),
            services("new", 1000, "10s")
        ))
        .unwrap();
        let mut ch = diff(&old, &new);
        ch.generation = 2;
        let line = ch.to_string();
        // Durations as the config takes them (`0ns` and `1.5s` it does not: an operator review).
        assert!(!line.contains('\n') && line.len() < 1000, "{line}");
        for part in [
            "generation 2: services 1003 (+1000 [new0000, new0001, new0002, new0003, new0004 +995 more] -1000 [old0000, old0001, old0002, old0003, old0004 +995 more], 3 kept);",
            "settings changed: timeouts.connect 2s -> 5s, timeouts.drain_grace 0s -> 1500ms, limits.max_body_bytes 1000 -> 2000, limits.max_connections_per_client off -> 64, trusted_proxies [10.0.0.0/8] -> [10.0.0.0/8, 192.0.2.1/32], request_id false -> true, access_log_format text -> json, access_log_fields [time, client, method, target, service, backend, status, bytes, upstream_seconds, total_seconds, error] -> [time, user_agent, request_id];",
            "breaker (cooldown) changed for services: 3 [keep0000, keep0001, keep0002]",
        ] {
            assert!(line.contains(part), "{part} not in {line}");
        }
        // Nothing changed: no settings part at all.
        let same = diff(&new, &new).to_string();
        assert!(
            !same.contains("settings") && !same.contains("breaker ("),
            "{same}"
        );
        assert!(
            same.starts_with("services 1003 (+0 -0, 1003 kept);"),
            "{same}"
        );
    }

    /// Regression (a re-review): a reload holding the control lock (hanging on its file, a
    /// FIFO or a dead mount) stopped the DNS-refresh thread in `rehome_ids` or
    /// `refresh_dns`, and with it the heap trims that thread makes: 166 MB stayed resident
    /// after a burst where 31-39 MB did otherwise. Both skip their round instead.
    #[test]
    fn the_refresh_thread_never_waits_for_a_reload() {
        let shared = std::sync::Arc::new(Shared::new(
            Config::parse("services:\n  a: [http://127.0.0.1:1]\n").unwrap(),
        ));
        let held = shared.control.lock().unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let s = shared.clone();
        let t = std::thread::spawn(move || {
            rehome_ids(&s);
            let n = refresh_dns(&s, |b| Ok(b.addr));
            let _ = done.send(n);
        });
        let got = finished.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        let _ = t.join();
        assert_eq!(got, Ok(0), "the refresh thread waited for the lock");
    }

    /// `access_log` off and on apply at a reload (they waited for a restart until
    /// 2026-12-04: an operator review), and the line says so like any other setting.
    #[test]
    fn the_line_says_the_access_log_turned_on_or_off() {
        let cfg = |log: &str| {
            Config::parse(&format!(
                "access_log: {log}\nservices:\n  a: [http://127.0.0.1:1]\n"
            ))
            .unwrap()
        };
        let (off, on) = (cfg("off"), cfg("/tmp/gateway-x.log"));
        let line = diff(&off, &on).to_string();
        assert!(
            line.contains("settings changed: access_log off -> /tmp/gateway-x.log")
                && !line.contains("ignored"),
            "{line}"
        );
        let line = diff(&on, &off).to_string();
        assert!(
            line.contains("access_log /tmp/gateway-x.log -> off"),
            "{line}"
        );
    }

    /// Regression: a reload that changed a service's `rate_limit` or `max_in_flight` said
    /// nothing about it (only, for a new limit, an unnamed "fresh" budget).
    #[test]
    fn the_line_names_services_whose_admission_changed() {
        let cfg = |a: &str, b: &str| {
            Config::parse(&format!(
                "services:\n  a: {{backends: [http://127.0.0.1:1]{a}}}\n  b: {{backends: [http://127.0.0.1:2]{b}}}\n  c: [http://127.0.0.1:3]\n"
            ))
            .unwrap()
        };
        let old = cfg(", rate_limit: {rate: 2/s}", ", max_in_flight: 1");
        let new = cfg(", rate_limit: off", ", max_in_flight: 100");
        let line = diff(&old, &new).to_string();
        assert!(
            line.contains("settings (max_in_flight, rate_limit) changed for services: 2 [a, b]"),
            "{line}"
        );
        let same = diff(&new, &new).to_string();
        assert!(!same.contains("changed for services"), "{same}");
        // The access log's fields: a reorder and a dropped request_id are said (a review);
        // request_id turned on with the default fields is said once, as request_id.
        let fields = |f: &str| {
            Config::parse(&format!(
                "request_id: true\n{f}services:\n  a: [http://127.0.0.1:1]\n"
            ))
            .unwrap()
        };
        for (a, b) in [
            (
                "access_log_fields: [time, request_id]\n",
                "access_log_fields: [request_id, time]\n",
            ),
            (
                "access_log_fields: [request_id, time]\n",
                "access_log_fields: [time]\n",
            ),
            ("", "access_log_fields: [time]\n"),
        ] {
            let line = diff(&fields(a), &fields(b)).to_string();
            assert!(line.contains("access_log_fields ["), "{a} -> {b}: {line}");
        }
        let off = Config::parse("services:\n  a: [http://127.0.0.1:1]\n").unwrap();
        let line = diff(&off, &fields("")).to_string();
        assert!(
            line.contains("request_id false -> true") && !line.contains("access_log_fields"),
            "{line}"
        );
        // A service's own timeouts too.
        let longer = cfg(
            ", rate_limit: off, timeouts: {response: 2m}",
            ", max_in_flight: 100",
        );
        let line = diff(&new, &longer).to_string();
        assert!(
            line.contains("settings (timeouts) changed for services: 1 [a]"),
            "{line}"
        );
        // A top-level timeout's change is said once, among the settings; a service is
        // named only where its own timeout changed (an operator review saw both services
        // named for the top-level change alone).
        let top = |t: &str, a: &str| {
            Config::parse(&format!(
                "timeouts: {{{t}}}\nservices:\n  a: {{backends: [http://127.0.0.1:1]{a}}}\n  b: [http://127.0.0.1:2]\n"
            ))
            .unwrap()
        };
        let line = diff(&top("connect: 2s", ""), &top("connect: 3s", "")).to_string();
        assert!(
            line.contains("settings changed: timeouts.connect 2s -> 3s"),
            "{line}"
        );
        assert!(!line.contains("changed for services"), "{line}");
        let own = ", timeouts: {connect: 1s}";
        let line = diff(
            &top("connect: 2s", own),
            &top("connect: 3s", ", timeouts: {connect: 3s}"),
        )
        .to_string();
        assert!(
            line.contains("settings (timeouts) changed for services: 1 [a]"),
            "{line}"
        );
        let line = diff(&top("connect: 2s", own), &top("connect: 3s", own)).to_string();
        assert!(
            !line.contains("changed for services"),
            "its own stayed: {line}"
        );
        // A backend's weight; a backend added with a weight is counted as added alone.
        let weights = |a: &str| {
            Config::parse(&format!(
                "services:\n  a: [{a}]\n  c: [http://127.0.0.1:3]\n"
            ))
            .unwrap()
        };
        let old = weights("http://127.0.0.1:1, http://127.0.0.1:2");
        let new = weights("{url: http://127.0.0.1:1, weight: 3}, http://127.0.0.1:2");
        let line = diff(&old, &new).to_string();
        assert!(
            line.contains("settings (weights) changed for services: 1 [a]"),
            "{line}"
        );
        // The same shares in other numbers are no change.
        let scaled =
            weights("{url: http://127.0.0.1:1, weight: 6}, {url: http://127.0.0.1:2, weight: 2}");
        assert!(!diff(&new, &scaled)
            .to_string()
            .contains("changed for services"));
        let doubled =
            weights("{url: http://127.0.0.1:1, weight: 2}, {url: http://127.0.0.1:2, weight: 2}");
        assert!(!diff(&old, &doubled)
            .to_string()
            .contains("changed for services"));
        let more =
            weights("http://127.0.0.1:1, http://127.0.0.1:2, {url: http://127.0.0.1:4, weight: 3}");
        let line = diff(&old, &more).to_string();
        assert!(
            !line.contains("changed for services")
                && line.contains("(+1 -0")
                && line.contains("; backends added: 1 [a http://127.0.0.1:4]"),
            "{line}"
        );
        // Regression: removing the weight-1 backend beside a weight-2 one was said as a
        // change of weights (an operator review), and named no backend.
        let two = weights("http://127.0.0.1:1, {url: http://127.0.0.1:2, weight: 2}");
        let one = weights("{url: http://127.0.0.1:2, weight: 2}");
        let line = diff(&two, &one).to_string();
        assert!(
            !line.contains("changed for services")
                && line.contains("backends 2 (+0 -1, 2 kept)")
                && line.contains("; backends removed: 1 [a http://127.0.0.1:1]"),
            "{line}"
        );
        let three =
            weights("http://127.0.0.1:1, {url: http://127.0.0.1:2, weight: 2}, http://127.0.0.1:4");
        let line = diff(&three, &two).to_string();
        assert!(!line.contains("changed for services"), "{line}");
        let other =
            weights("{url: http://127.0.0.1:1, weight: 2}, {url: http://127.0.0.1:2, weight: 2}");
        let line = diff(&three, &other).to_string();
        assert!(
            line.contains("settings (weights) changed for services: 1 [a]"),
            "{line}"
        );
    }
}
