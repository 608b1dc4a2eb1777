//! Per-worker counters on the worker's own cache lines, summed only when scraped.
//!
//! Each worker owns one [`WorkerMetrics`]; only that worker writes it, with plain
//! load+store (no locked read-modify-write: there is a single writer), so counting costs
//! no shared cache-line traffic. The admin threads read all workers' tables with relaxed
//! loads and render Prometheus text. The one other write: before a service id or backend
//! slot is reused, the control thread zeroes its counters, once no worker can write them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::downstream::Record;
use crate::error::GatewayError;

/// Services and backend slots that get their own series. Ids are reused once no request
/// can count on them any more (see `state::Ids`), so these bound what is configured at
/// once (plus what left it and is still in flight), not what a process ever saw; beyond
/// them a service or backend is served but not counted, which is logged once and counted
/// in `gateway_metric_ids_exhausted_total`. Their tables cost about 620 KiB per worker.
pub const MAX_SERVICES: usize = 1024;
pub const MAX_SLOTS: usize = 4096;
/// What `--check` says of a config with more services or backends than get series of their
/// own (a review's 5 000 services: 80% of the fleet missing from `sum by (service)`, said
/// only in the log at start); `None` when all fit.
pub fn beyond_tables(services: usize, backends: usize) -> Option<String> {
    (services > MAX_SERVICES || backends > MAX_SLOTS).then(|| {
        format!(
            "metrics: {services} services and {backends} backends, but series are kept for at most {MAX_SERVICES} services and {MAX_SLOTS} backends at once: the rest are served and not counted (gateway_metric_ids_exhausted_total, and null counts in /admin/backends)"
        )
    })
}

/// Kinds of [`GatewayError`], each counted apart.
const ERRORS: usize = GatewayError::ALL.len();

/// Upper bounds of the latency histogram buckets, in microseconds (+Inf is implicit). Up to
/// 60 s: the default `timeouts.response` is 30 s (an operator review found every answer
/// between 10 and 30 s in `+Inf`).
pub const BUCKETS_US: [u64; 16] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const NB: usize = BUCKETS_US.len() + 1;

/// A counter with a single writer.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a plain load and store, no lock prefix.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn counters(n: usize) -> Box<[Counter]> {
    (0..n).map(|_| Counter::default()).collect()
}

/// A latency histogram per service: NB bucket counters (non-cumulative) and a sum.
pub struct Histograms {
    buckets: Box<[Counter]>,
    sum_us: Box<[Counter]>,
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            buckets: counters(MAX_SERVICES * NB),
            sum_us: counters(MAX_SERVICES),
        }
    }

    #[inline]
    pub fn observe(&self, service: usize, us: u64) {
        if service >= MAX_SERVICES {
            return;
        }
        let b = BUCKETS_US.iter().position(|&le| us <= le).unwrap_or(NB - 1);
        self.buckets[service * NB + b].inc();
        self.sum_us[service].add(us);
    }
}

/// Everything one worker counts.
pub struct WorkerMetrics {
    pub accepted: Counter,
    /// `service * 5 + (status / 100 - 1)`: responses by service and status class.
    requests: Box<[Counter]>,
    /// Per service: requests that ended with no response sent (the client went away); at
    /// [`MAX_SERVICES`], those that routed to no service.
    aborted: Box<[Counter]>,
    /// Per service: responses cut short after their head went out (also counted by status);
    /// at [`MAX_SERVICES`], as `aborted`.
    cut: Box<[Counter]>,
    /// `service * 2`: answered 429 (rate limited); `+ 1`: 503 overloaded.
    admission: Box<[Counter]>,
    /// Responses the gateway made itself: `row * ERRORS + GatewayError::index`, where row 0
    /// holds requests that routed to no service (or to one past [`MAX_SERVICES`]) and row
    /// `service + 1` a service's.
    errors: Box<[Counter]>,
    pub connect: Histograms,
    pub response: Histograms,
    /// Per service: a request's head to its response's end, as the client saw it.
    duration: Histograms,
    /// Per service: bytes of responses the kernel took for clients (heads included); at
    /// [`MAX_SERVICES`], those of requests that routed to no service.
    sent_bytes: Box<[Counter]>,
    /// Per service: bytes of requests taken from clients (heads included; see
    /// `downstream::Record::received`); at [`MAX_SERVICES`], as `sent_bytes`.
    received_bytes: Box<[Counter]>,
    /// Per backend slot: outcomes reported to its breaker, and transitions it caused.
    pub backend_success: Box<[Counter]>,
    pub backend_failure: Box<[Counter]>,
    pub transitions: Box<[Counter]>,
    /// Gauges.
    pub pool_idle: Counter,
    pub upstream_active: Counter,
    pub client_connections: Counter,
    /// This worker's share of `limits.max_connections`.
    pub connection_limit: Counter,
    /// Times the worker stopped accepting at that share, and idle client connections it
    /// closed to make room (see `Worker::make_room`).
    pub accept_paused: Counter,
    pub idle_evicted: Counter,
    /// Connections closed as accepted: their client held `limits.max_connections_per_client`.
    pub refused_per_client: Counter,
    /// Backend connections that carried bytes nobody asked for (see `pool.rs`).
    pub backend_stray: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            accepted: Counter::default(),
            requests: counters((MAX_SERVICES + 1) * 5),
            aborted: counters(MAX_SERVICES + 1),
            cut: counters(MAX_SERVICES + 1),
            admission: counters(MAX_SERVICES * 2),
            errors: counters((MAX_SERVICES + 1) * ERRORS),
            connect: Histograms::new(),
            response: Histograms::new(),
            duration: Histograms::new(),
            sent_bytes: counters(MAX_SERVICES + 1),
            received_bytes: counters(MAX_SERVICES + 1),
            backend_success: counters(MAX_SLOTS),
            backend_failure: counters(MAX_SLOTS),
            transitions: counters(MAX_SLOTS),
            pool_idle: Counter::default(),
            upstream_active: Counter::default(),
            client_connections: Counter::default(),
            connection_limit: Counter::default(),
            accept_paused: Counter::default(),
            idle_evicted: Counter::default(),
            refused_per_client: Counter::default(),
            backend_stray: Counter::default(),
        }
    }
}

impl WorkerMetrics {
    /// Counts one request as `rec` says it went (status, error, cut, bytes both ways), its
    /// response having taken `total_us` from the request's head. `service` is `None` when
    /// the request did not route to one.
    #[inline]
    pub fn response(&self, service: Option<usize>, rec: &Record, total_us: u64) {
        let Record {
            status,
            error,
            cut,
            bytes,
            received,
            ..
        } = *rec;
        let service = service.filter(|&s| s < MAX_SERVICES);
        if let Some(e) = error {
            self.errors[service.map_or(0, |s| s + 1) * ERRORS + e.index()].inc();
        }
        // Those that routed to no service (a 404, most 400s): counted by class alone, so that
        // the family's sum is every response (an operator review's scanner went unseen).
        // Their bytes too, as the access log's lines say them (an operator review's scanner
        // sent 131 277 such requests and the byte counters did not move), and those whose
        // client left first, as `gateway_errors_total` counts them (a hostile review).
        if service.is_none() {
            if status == 0 {
                self.aborted[MAX_SERVICES].inc();
            } else {
                let class = (status / 100).clamp(1, 5) as usize - 1;
                self.requests[MAX_SERVICES * 5 + class].inc();
                if cut {
                    self.cut[MAX_SERVICES].inc();
                }
            }
            self.sent_bytes[MAX_SERVICES].add(bytes);
            self.received_bytes[MAX_SERVICES].add(received);
        }
        if let Some(s) = service {
            if status == 0 {
                self.aborted[s].inc();
            } else {
                let class = (status / 100).clamp(1, 5) as usize - 1;
                self.requests[s * 5 + class].inc();
                if cut {
                    self.cut[s].inc();
                }
                // A WebSocket tunnel's time is its session's, not an answer's wait.
                if status != 101 {
                    self.duration.observe(s, total_us);
                }
            }
            self.sent_bytes[s].add(bytes);
            self.received_bytes[s].add(received);
            match error {
                Some(GatewayError::RateLimited) => self.admission[s * 2].inc(),
                Some(GatewayError::Overloaded) => self.admission[s * 2 + 1].inc(),
                _ => {}
            }
        }
    }

    #[inline]
    pub fn outcome(&self, slot: usize, failure: bool) {
        if slot < MAX_SLOTS {
            if failure {
                self.backend_failure[slot].inc();
            } else {
                self.backend_success[slot].inc();
            }
        }
    }

    /// Zeroes a service id's counters before the id is reused. Only for an id that no
    /// worker can write any more (see `state::Ids`): the single writer is gone.
    pub fn clear_service(&self, id: usize) {
        if id >= MAX_SERVICES {
            return;
        }
        let rows = [
            &self.requests[id * 5..id * 5 + 5],
            &self.aborted[id..=id],
            &self.cut[id..=id],
            &self.admission[id * 2..id * 2 + 2],
            &self.connect.buckets[id * NB..id * NB + NB],
            &self.connect.sum_us[id..=id],
            &self.response.buckets[id * NB..id * NB + NB],
            &self.response.sum_us[id..=id],
            &self.duration.buckets[id * NB..id * NB + NB],
            &self.duration.sum_us[id..=id],
            &self.sent_bytes[id..=id],
            &self.received_bytes[id..=id],
        ];
        rows.iter().flat_map(|r| r.iter()).for_each(|c| c.set(0));
    }

    /// Zeroes a backend slot's counters before the slot is reused (as [`Self::clear_service`]).
    pub fn clear_slot(&self, slot: usize) {
        if slot < MAX_SLOTS {
            self.backend_success[slot].set(0);
            self.backend_failure[slot].set(0);
            self.transitions[slot].set(0);
        }
    }

    #[inline]
    pub fn transition(&self, slot: usize) {
        if slot < MAX_SLOTS {
            self.transitions[slot].inc();
        }
    }
}

/// One worker's table, padded so that neighbouring allocations never share its lines.
pub type WorkerCell = CachePadded<WorkerMetrics>;

/// Sums of a counter array over all workers.
fn sum(workers: &[&WorkerMetrics], f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    workers.iter().map(|w| f(w)).sum()
}

/// What the renderer needs to know about names (from the state registry).
pub struct Names<'a> {
    /// (service id, name), the services of the running config.
    pub services: &'a [(usize, String)],
    /// (slot, service, url, breaker state 0/1/2), the backends of the running config.
    pub backends: &'a [(usize, String, String, u64)],
    /// (service, url, 1 in rotation or 0 out) for the backends of services with health
    /// checks (`health.rs`).
    pub healthy: &'a [(String, String, u64)],
    pub generation: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_reload_ok: bool,
    /// Settings the file changed that wait for a restart or an upgrade.
    pub restart_pending: usize,
    /// Upgrades (`SIGUSR2`) of this process that failed.
    pub upgrades_failed: u64,
    pub draining: bool,
    pub access_log_dropped: u64,
    /// (service, requests in flight) for the services with `max_in_flight`.
    pub in_flight: &'a [(String, u64)],
    pub access_log_errors: u64,
    pub ids_exhausted: crate::state::MetricIdsExhausted,
    /// The running config's services and backends with no series of their own.
    pub ids_missing: crate::state::MetricIdsExhausted,
    /// The process's descriptors: its limit, and how many are open (`None`: unreadable).
    pub max_fds: u64,
    pub open_fds: Option<u64>,
    /// CPU, memory, threads and start time (`None`: `/proc` unreadable).
    pub process: Option<crate::procstat::ProcStat>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One series with no labels, with its `HELP` and `TYPE` lines.
fn scalar(w: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(workers: &[&WorkerMetrics], names: &Names<'_>) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let w = &mut o;
    let _ = writeln!(
        w,
        "# HELP gateway_requests_total Responses sent to clients, by service and status class; without service, those that routed to none."
    );
    let _ = writeln!(w, "# TYPE gateway_requests_total counter");
    for class in 0..5 {
        let v = sum(workers, |m| m.requests[MAX_SERVICES * 5 + class].get());
        let _ = writeln!(w, "gateway_requests_total{{class=\"{}xx\"}} {v}", class + 1);
    }
    for (id, name) in names.services.iter().filter(|(id, _)| *id < MAX_SERVICES) {
        for class in 0..5 {
            let v = sum(workers, |m| m.requests[id * 5 + class].get());
            let _ = writeln!(
                w,
                "gateway_requests_total{{service=\"{}\",class=\"{}xx\"}} {v}",
                escape(name),
                class + 1
            );
        }
    }
    type PerService = fn(&WorkerMetrics) -> &[Counter];
    // Each has a series without `service` too, as `gateway_requests_total`.
    let per_service: [(&str, &str, PerService); 4] = [
        (
            "gateway_response_bytes_total",
            "Bytes of responses the kernel took for clients, heads included (as the access log's bytes); without service, those of requests that routed to none.",
            |m| &m.sent_bytes,
        ),
        (
            "gateway_request_bytes_total",
            "Bytes of requests taken from clients: heads, bodies as framed on the wire, and what clients sent through WebSocket tunnels; without service, those of requests that routed to none.",
            |m| &m.received_bytes,
        ),
        (
            "gateway_requests_aborted_total",
            "Requests that ended with no response sent: the client went away first; without service, those that routed to none.",
            |m| &m.aborted,
        ),
        (
            "gateway_responses_cut_total",
            "Responses cut short after their head went out (the backend closed, reset or stalled mid-body, or the client left or read too slowly); also counted in gateway_requests_total by status; without service, those that routed to none.",
            |m| &m.cut,
        ),
    ];
    for (metric, help, counters) in per_service {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} counter");
        let v = sum(workers, |m| counters(m)[MAX_SERVICES].get());
        let _ = writeln!(w, "{metric} {v}");
        for (id, name) in names.services.iter().filter(|(id, _)| *id < MAX_SERVICES) {
            let v = sum(workers, |m| counters(m)[*id].get());
            let _ = writeln!(w, "{metric}{{service=\"{}\"}} {v}", escape(name));
        }
    }
    for (metric, help, k) in [
        (
            "gateway_rate_limited_total",
            "Requests answered 429: over the service's rate limit.",
            0,
        ),
        (
            "gateway_overloaded_total",
            "Requests answered 503 overloaded: the service was at max_in_flight, or the gateway ran out of descriptors, memory or local ports to connect.",
            1,
        ),
    ] {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} counter");
        for (id, name) in names.services.iter().filter(|(id, _)| *id < MAX_SERVICES) {
            let v = sum(workers, |m| m.admission[id * 2 + k].get());
            let _ = writeln!(w, "{metric}{{service=\"{}\"}} {v}", escape(name));
        }
    }
    let _ = writeln!(
        w,
        "# HELP gateway_in_flight Requests admitted and not finished, for services with max_in_flight."
    );
    let _ = writeln!(w, "# TYPE gateway_in_flight gauge");
    for (name, v) in names.in_flight {
        let _ = writeln!(w, "gateway_in_flight{{service=\"{}\"}} {v}", escape(name));
    }
    let _ = writeln!(
        w,
        "# HELP gateway_errors_total Responses the gateway made itself, by service (none for a request that routed to no service) and error code."
    );
    let _ = writeln!(w, "# TYPE gateway_errors_total counter");
    let services = names.services.iter().filter(|(id, _)| *id < MAX_SERVICES);
    for (row, name) in std::iter::once((0, None)).chain(services.map(|(id, n)| (id + 1, Some(n)))) {
        for e in GatewayError::ALL {
            let v = sum(workers, |m| m.errors[row * ERRORS + e.index()].get());
            let _ = match name {
                Some(name) => write!(w, "gateway_errors_total{{service=\"{}\",", escape(name)),
                None => write!(w, "gateway_errors_total{{"),
            };
            let _ = writeln!(w, "code=\"{}\",status=\"{}\"}} {v}", e.code(), e.status());
        }
    }
    for (metric, help, pick) in [
        (
            "gateway_upstream_connect_seconds",
            "Time to establish a new backend connection.",
            (|m: &WorkerMetrics| &m.connect) as fn(&WorkerMetrics) -> &Histograms,
        ),
        (
            "gateway_upstream_response_seconds",
            "Time from sending the request to the backend's response head.",
            |m: &WorkerMetrics| &m.response,
        ),
        (
            "gateway_request_duration_seconds",
            "Time from a request's head to the end of its response, as the client saw it: the gateway's own answers (429, 502, 503, 504) included.",
            |m: &WorkerMetrics| &m.duration,
        ),
    ] {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} histogram");
        for (id, name) in names.services.iter().filter(|(id, _)| *id < MAX_SERVICES) {
            let mut cumulative = 0u64;
            for (b, le) in BUCKETS_US.iter().enumerate() {
                cumulative += sum(workers, |m| pick(m).buckets[id * NB + b].get());
                let _ = writeln!(
                    w,
                    "{metric}_bucket{{service=\"{}\",le=\"{}\"}} {cumulative}",
                    escape(name),
                    *le as f64 / 1e6
                );
            }
            cumulative += sum(workers, |m| pick(m).buckets[id * NB + NB - 1].get());
            let _ = writeln!(
                w,
                "{metric}_bucket{{service=\"{}\",le=\"+Inf\"}} {cumulative}",
                escape(name)
            );
            let s = sum(workers, |m| pick(m).sum_us[*id].get());
            let _ = writeln!(
                w,
                "{metric}_sum{{service=\"{}\"}} {}",
                escape(name),
                s as f64 / 1e6
            );
            let _ = writeln!(
                w,
                "{metric}_count{{service=\"{}\"}} {cumulative}",
                escape(name)
            );
        }
    }
    let _ = writeln!(
        w,
        "# HELP gateway_breaker_state Circuit state per backend: 0 closed, 1 open, 2 half-open."
    );
    let _ = writeln!(w, "# TYPE gateway_breaker_state gauge");
    for (_, svc, url, state) in names.backends {
        let _ = writeln!(
            w,
            "gateway_breaker_state{{service=\"{}\",backend=\"{}\"}} {state}",
            escape(svc),
            escape(url)
        );
    }
    if !names.healthy.is_empty() {
        let _ = writeln!(
            w,
            "# HELP gateway_backend_healthy Per backend of a service with health checks: 1 in rotation, 0 out (failed its last `fall` checks)."
        );
        let _ = writeln!(w, "# TYPE gateway_backend_healthy gauge");
        for (svc, url, up) in names.healthy {
            let _ = writeln!(
                w,
                "gateway_backend_healthy{{service=\"{}\",backend=\"{}\"}} {up}",
                escape(svc),
                escape(url)
            );
        }
    }
    for (metric, help, pick) in [
        (
            "gateway_breaker_transitions_total",
            "Circuit state changes caused by outcomes, per backend.",
            (|m: &WorkerMetrics| &m.transitions) as fn(&WorkerMetrics) -> &Box<[Counter]>,
        ),
        (
            "gateway_backend_success_total",
            "Outcomes counted as success, per backend.",
            |m: &WorkerMetrics| &m.backend_success,
        ),
        (
            "gateway_backend_failure_total",
            "Outcomes counted as failure, per backend.",
            |m: &WorkerMetrics| &m.backend_failure,
        ),
    ] {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} counter");
        for (slot, svc, url, _) in names.backends.iter().filter(|b| b.0 < MAX_SLOTS) {
            let v = sum(workers, |m| pick(m)[*slot].get());
            let _ = writeln!(
                w,
                "{metric}{{service=\"{}\",backend=\"{}\"}} {v}",
                escape(svc),
                escape(url)
            );
        }
    }
    let _ = writeln!(w, "# HELP gateway_pool_connections Upstream connections: idle in the pools, or carrying a request.");
    let _ = writeln!(w, "# TYPE gateway_pool_connections gauge");
    let _ = writeln!(
        w,
        "gateway_pool_connections{{state=\"idle\"}} {}",
        sum(workers, |m| m.pool_idle.get())
    );
    let _ = writeln!(
        w,
        "gateway_pool_connections{{state=\"active\"}} {}",
        sum(workers, |m| m.upstream_active.get())
    );
    let _ = writeln!(w, "# HELP gateway_backend_stray_responses_total Backend connections found carrying bytes nobody asked for (a response sent twice or late): that backend's connections are not reused for a minute, and the log names it; and answers naming another request's X-Request-Id (request_id: true), whose connection is closed.");
    let _ = writeln!(w, "# TYPE gateway_backend_stray_responses_total counter");
    let _ = writeln!(
        w,
        "gateway_backend_stray_responses_total {}",
        sum(workers, |m| m.backend_stray.get())
    );
    let _ = writeln!(
        w,
        "# HELP gateway_client_connections Open client connections."
    );
    let _ = writeln!(w, "# TYPE gateway_client_connections gauge");
    let _ = writeln!(
        w,
        "gateway_client_connections {}",
        sum(workers, |m| m.client_connections.get())
    );
    let _ = writeln!(
        w,
        "# HELP gateway_client_connections_limit Client connections accepted at once (limits.max_connections, spread over the workers)."
    );
    let _ = writeln!(w, "# TYPE gateway_client_connections_limit gauge");
    let _ = writeln!(
        w,
        "gateway_client_connections_limit {}",
        sum(workers, |m| m.connection_limit.get())
    );
    for (metric, help, pick) in [
        (
            "gateway_accept_paused_total",
            "Times a worker stopped accepting at its share of limits.max_connections.",
            (|m: &WorkerMetrics| &m.accept_paused) as fn(&WorkerMetrics) -> &Counter,
        ),
        (
            "gateway_idle_evicted_total",
            "Client connections closed to make room for a new one: idle, a head arriving for a second or more, or a client reading none of its answer.",
            |m: &WorkerMetrics| &m.idle_evicted,
        ),
        (
            "gateway_client_connections_refused_total",
            "Client connections closed as they were accepted: their address held limits.max_connections_per_client already.",
            |m: &WorkerMetrics| &m.refused_per_client,
        ),
    ] {
        let _ = writeln!(w, "# HELP {metric} {help}");
        let _ = writeln!(w, "# TYPE {metric} counter");
        let _ = writeln!(w, "{metric} {}", sum(workers, |m| pick(m).get()));
    }
    let _ = writeln!(
        w,
        "# HELP gateway_accepted_connections_total Client connections accepted, per worker."
    );
    let _ = writeln!(w, "# TYPE gateway_accepted_connections_total counter");
    for (i, m) in workers.iter().enumerate() {
        let _ = writeln!(
            w,
            "gateway_accepted_connections_total{{worker=\"{i}\"}} {}",
            m.accepted.get()
        );
    }
    scalar(
        w,
        "gateway_config_generation",
        "gauge",
        "Generation of the running config (1 at start, +1 per successful reload).",
        names.generation,
    );
    let _ = writeln!(
        w,
        "# HELP gateway_config_reloads_total Reload attempts by result."
    );
    let _ = writeln!(w, "# TYPE gateway_config_reloads_total counter");
    let _ = writeln!(
        w,
        "gateway_config_reloads_total{{result=\"success\"}} {}",
        names.reloads_ok
    );
    let _ = writeln!(
        w,
        "gateway_config_reloads_total{{result=\"failure\"}} {}",
        names.reloads_failed
    );
    scalar(
        w,
        "gateway_config_last_reload_success",
        "gauge",
        "1 if the last reload succeeded (or none happened).",
        u8::from(names.last_reload_ok),
    );
    scalar(w, "gateway_config_restart_pending", "gauge", "Settings the config file changed that apply only at a restart or an upgrade (listen, workers, pin_workers, admin, busy_poll, splice, cluster; /admin/config names them).", names.restart_pending);
    scalar(w, "gateway_upgrades_failed_total", "counter", "Upgrades (SIGUSR2) of this process that failed: the new process could not start, exited or did not serve in time (/admin/config says the last).", names.upgrades_failed);
    scalar(
        w,
        "gateway_draining",
        "gauge",
        "1 while shutting down gracefully.",
        u8::from(names.draining),
    );
    scalar(
        w,
        "gateway_access_log_dropped_batches_total",
        "counter",
        "Access log batches dropped because the writer fell behind.",
        names.access_log_dropped,
    );
    scalar(
        w,
        "gateway_access_log_errors_total",
        "counter",
        "Access log batches that failed to be written (their lines are lost), and failed reopens.",
        names.access_log_errors,
    );
    let _ = writeln!(w, "# HELP gateway_metric_ids_exhausted_total Services and backends installed with no series of their own: more than {MAX_SERVICES} services or {MAX_SLOTS} backends at once.");
    let _ = writeln!(w, "# TYPE gateway_metric_ids_exhausted_total counter");
    for (kind, v) in [
        ("service", names.ids_exhausted.services),
        ("backend", names.ids_exhausted.backends),
    ] {
        let _ = writeln!(
            w,
            "gateway_metric_ids_exhausted_total{{kind=\"{kind}\"}} {v}"
        );
    }
    // The counter grows on every reload while over the limits, so it reads as churn; this
    // says how many lack series now (a scale review).
    let _ = writeln!(w, "# HELP gateway_metric_ids_missing Services and backends of the running config with no series of their own: more than {MAX_SERVICES} services or {MAX_SLOTS} backends at once.");
    let _ = writeln!(w, "# TYPE gateway_metric_ids_missing gauge");
    for (kind, v) in [
        ("service", names.ids_missing.services),
        ("backend", names.ids_missing.backends),
    ] {
        let _ = writeln!(w, "gateway_metric_ids_missing{{kind=\"{kind}\"}} {v}");
    }
    // The names Prometheus client libraries give these (process collector).
    let _ = writeln!(
        w,
        "# HELP process_max_fds Maximum number of open file descriptors."
    );
    let _ = writeln!(w, "# TYPE process_max_fds gauge");
    let _ = writeln!(w, "process_max_fds {}", names.max_fds);
    if let Some(open) = names.open_fds {
        let _ = writeln!(
            w,
            "# HELP process_open_fds Number of open file descriptors."
        );
        let _ = writeln!(w, "# TYPE process_open_fds gauge");
        let _ = writeln!(w, "process_open_fds {open}");
    }
    if let Some(p) = names.process {
        for (metric, kind, help, value) in [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                p.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
            (
                "process_threads",
                "gauge",
                "Number of OS threads in the process.",
                p.threads as f64,
            ),
        ] {
            let _ = writeln!(w, "# HELP {metric} {help}");
            let _ = writeln!(w, "# TYPE {metric} {kind}");
            let _ = writeln!(w, "{metric} {value}");
        }
    }
    let _ = writeln!(
        w,
        "# HELP gateway_build_info The running gateway's version and the commit it was built from (the value is always 1)."
    );
    let _ = writeln!(w, "# TYPE gateway_build_info gauge");
    let _ = writeln!(
        w,
        "gateway_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        env!("GATEWAY_COMMIT")
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_renders_cumulative_buckets() {
        let (a, b) = (WorkerMetrics::default(), WorkerMetrics::default());
        let rec = |status, bytes, received| Record {
            status,
            bytes,
            received,
            ..Record::default()
        };
        let failed = |status, error, bytes, received| Record {
            error: Some(error),
            ..rec(status, bytes, received)
        };
        a.response(Some(0), &rec(200, 1000, 80), 300);
        let cut = Record {
            cut: true,
            ..rec(204, 500, 10_080)
        };
        b.response(Some(0), &cut, 2_000);
        b.response(Some(0), &failed(503, GatewayError::NoBackend, 200, 90), 50);
        // The client went away before any response: aborted, not a status class, and no
        // duration (nothing was answered); what it sent still counts.
        a.response(Some(0), &rec(0, 0, 4), 7_000_000);
        b.response(
            Some(0),
            &failed(429, GatewayError::RateLimited, 100, 75),
            40,
        );
        a.response.observe(0, 700);
        b.response.observe(0, 20_000_000);
        // Routed to no service: counted without one (a 404, a 400 before routing, one cut
        // short), and a client gone before any answer as aborted without one (a hostile
        // review: `gateway_errors_total` counted such clients and this family did not).
        a.response(None, &failed(404, GatewayError::ServiceNotFound, 40, 30), 5);
        b.response(None, &failed(400, GatewayError::RouteNotFound, 40, 30), 5);
        b.response(None, &rec(0, 0, 3), 5);
        let cut_unrouted = Record {
            cut: true,
            ..rec(200, 10, 3)
        };
        a.response(None, &cut_unrouted, 5);
        let services = vec![(0, "svc".to_string())];
        let backends = vec![(0, "svc".to_string(), "http://127.0.0.1:1".to_string(), 1)];
        let text = render(
            &[&a, &b],
            &Names {
                services: &services,
                backends: &backends,
                healthy: &[],
                generation: 3,
                reloads_ok: 2,
                reloads_failed: 1,
                last_reload_ok: false,
                restart_pending: 2,
                upgrades_failed: 1,
                draining: false,
                access_log_dropped: 4,
                in_flight: &[("svc".to_string(), 3)],
                access_log_errors: 5,
                ids_exhausted: crate::state::MetricIdsExhausted {
                    services: 6,
                    backends: 0,
                },
                ids_missing: crate::state::MetricIdsExhausted {
                    services: 2,
                    backends: 7,
                },
                max_fds: 20_000,
                open_fds: Some(42),
                process: Some(crate::procstat::ProcStat {
                    cpu_seconds: 1.5,
                    resident_bytes: 8192,
                    virtual_bytes: 65536,
                    start_time_seconds: 1_764_600_000.25,
                    threads: 4,
                }),
            },
        );
        assert!(
            text.contains("gateway_responses_cut_total{service=\"svc\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_in_flight{service=\"svc\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("process_max_fds 20000\n"), "{text}");
        assert!(text.contains("process_open_fds 42\n"), "{text}");
        for line in [
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
            "process_resident_memory_bytes 8192\n",
            "process_virtual_memory_bytes 65536\n",
            "process_start_time_seconds 1764600000.25\n",
            "process_threads 4\n",
            "# TYPE gateway_build_info gauge\ngateway_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(
            text.contains("gateway_rate_limited_total{service=\"svc\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_overloaded_total{service=\"svc\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_requests_total{service=\"svc\",class=\"2xx\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("gateway_requests_total{service=\"svc\",class=\"5xx\"} 1\n"));
        assert!(text.contains("gateway_requests_total{service=\"svc\",class=\"1xx\"} 0\n"));
        assert!(
            text.contains("gateway_requests_total{class=\"4xx\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("gateway_requests_total{class=\"2xx\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("gateway_requests_aborted_total{service=\"svc\"} 1\n"));
        assert!(
            text.contains("gateway_requests_aborted_total 1\n"),
            "{text}"
        );
        assert!(text.contains("gateway_responses_cut_total 1\n"), "{text}");
        assert!(text.contains("gateway_responses_cut_total{service=\"svc\"} 1\n"));
        assert!(
            text.contains("gateway_errors_total{service=\"svc\",code=\"no_backend_available\",status=\"503\"} 1\n")
        );
        assert!(text.contains(
            "gateway_upstream_response_seconds_bucket{service=\"svc\",le=\"0.0005\"} 0\n"
        ));
        assert!(text.contains(
            "gateway_upstream_response_seconds_bucket{service=\"svc\",le=\"0.001\"} 1\n"
        ));
        assert!(text
            .contains("gateway_upstream_response_seconds_bucket{service=\"svc\",le=\"10\"} 1\n"));
        // 20 s, within the default response timeout, is in a bucket of its own.
        assert!(text
            .contains("gateway_upstream_response_seconds_bucket{service=\"svc\",le=\"30\"} 2\n"));
        assert!(text
            .contains("gateway_upstream_response_seconds_bucket{service=\"svc\",le=\"60\"} 2\n"));
        assert!(text
            .contains("gateway_upstream_response_seconds_bucket{service=\"svc\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("gateway_upstream_response_seconds_count{service=\"svc\"} 2\n"));
        // The clients' view: every answer, the gateway's own included; the aborted one not.
        for line in [
            "gateway_request_duration_seconds_bucket{service=\"svc\",le=\"0.0005\"} 3\n",
            "gateway_request_duration_seconds_bucket{service=\"svc\",le=\"0.001\"} 3\n",
            "gateway_request_duration_seconds_bucket{service=\"svc\",le=\"0.0025\"} 4\n",
            "gateway_request_duration_seconds_bucket{service=\"svc\",le=\"+Inf\"} 4\n",
            "gateway_request_duration_seconds_sum{service=\"svc\"} 0.00239\n",
            "gateway_request_duration_seconds_count{service=\"svc\"} 4\n",
            // Without a service: the 404's, the 400's and the cut answer's bytes, and what
            // the client that left sent.
            "# TYPE gateway_response_bytes_total counter\ngateway_response_bytes_total 90\ngateway_response_bytes_total{service=\"svc\"} 1800\n",
            "# TYPE gateway_request_bytes_total counter\ngateway_request_bytes_total 66\ngateway_request_bytes_total{service=\"svc\"} 10329\n",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
        assert!(text
            .contains("gateway_breaker_state{service=\"svc\",backend=\"http://127.0.0.1:1\"} 1\n"));
        assert!(text.contains("gateway_config_generation 3\n"));
        assert!(text.contains("gateway_config_last_reload_success 0\n"));
        assert!(text.contains("gateway_config_restart_pending 2\n"));
        assert!(text.contains("gateway_upgrades_failed_total 1\n"));
        assert!(text.contains("gateway_access_log_dropped_batches_total 4\n"));
        assert!(text.contains("gateway_access_log_errors_total 5\n"));
        assert!(text.contains("gateway_metric_ids_exhausted_total{kind=\"service\"} 6\n"));
        assert!(text.contains("gateway_metric_ids_missing{kind=\"service\"} 2\n"));
        assert!(text.contains("gateway_metric_ids_missing{kind=\"backend\"} 7\n"));
    }
}
