//! The shared state, and the only place with `Arc`s and atomics: config snapshot + breakers.
//!
//! - `Shared::current` is an `ArcSwap<Snapshot>`: a whole new snapshot is built, then stored
//!   once. Workers read it without locks; requests keep the snapshot they started with.
//! - Each backend's breaker is a `CachePadded<AtomicU64>` (see `breaker.rs`), kept in a
//!   registry keyed by (service, URL) so that a reload hands the same cell to a backend that
//!   stays. The registry's mutex is taken only when a snapshot is built (and by a scrape
//!   for one counter), never per request.
//! - The registry also hands out service ids and backend slots (metrics and pool indexes)
//!   and reuses those that left once no snapshot that had them is alive (see `Ids`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::breaker::Policy;
use crate::config::{BackendUrl, BreakerSettings, Config};
use crate::metrics::{WorkerCell, MAX_SERVICES, MAX_SLOTS};

/// How long after a snapshot is installed the heap is trimmed: requests that began on the
/// old one have ended by then, as a rule (one that has not keeps its part until the next).
const TRIM_AFTER_INSTALL_MS: u64 = 3000;

/// Where the breakers' clock begins: the longest cooldown. A fleet's open stamped before
/// this process started (an instance restarted in a rolling deploy) keeps its own time on
/// it, so its cooldown ends when the fleet's does (an operator review: clamped to the
/// start, the restarted instance refused a recovered backend for a whole cooldown more).
pub const CLOCK_BASE_MS: u64 = crate::config::MAX_DURATION.as_millis() as u64;

/// The process clock the breakers count in (ms since first use, from [`CLOCK_BASE_MS`]).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    CLOCK_BASE_MS
        + crate::clock::now()
            .saturating_duration_since(start)
            .as_millis() as u64
}

/// A backend's breaker word, alone on its cache line so that workers writing one backend's
/// breaker never invalidate another's.
pub type BreakerCell = CachePadded<AtomicU64>;

/// One backend of one service, as the request path sees it.
#[derive(Debug)]
pub struct Backend {
    pub url: BackendUrl,
    /// Stable index of this (service, URL) for the life of the process; per-worker pools
    /// are indexed by it.
    pub slot: usize,
    pub breaker: Arc<BreakerCell>,
    /// Until when (`now_ms`) none of its connections is reused, shared by the workers and
    /// by every backend of any service at the same address (0: reusable): it sent bytes
    /// nobody asked for (see `pool.rs`). Written only then.
    pub no_reuse_until: Arc<BreakerCell>,
    /// When (`now_ms`) a request last found its circuit not closed and passed it over:
    /// this instance has traffic a probe could serve. The cluster thread asks for the
    /// fleet's probe lease only then. Written at most every [`WANTED_EVERY_MS`], and only
    /// while the circuit is not closed.
    pub wanted: Arc<BreakerCell>,
    /// Its active health checks' state and last probe (`health::State`, `health::Last`),
    /// written by the one worker that probes it; read only while its service has checks
    /// (a fresh cell, 0 = in rotation, whenever they are turned on or changed).
    pub health: Arc<BreakerCell>,
}

/// See [`Backend::wanted`].
pub const WANTED_EVERY_MS: u64 = 100;

impl Backend {
    /// A request passed this backend over at `now` (its circuit is not closed).
    #[inline]
    pub fn want(&self, now: u64) {
        if now >= self.wanted.load(Ordering::Relaxed) + WANTED_EVERY_MS {
            self.wanted.store(now, Ordering::Relaxed);
        }
    }

    /// Whether its connections may be pooled and reused now.
    #[inline]
    pub fn reusable(&self) -> bool {
        let until = self.no_reuse_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// It sent bytes nobody asked for: no worker reuses its connections for `time`.
    pub fn stop_reuse(&self, time: Duration) {
        let until = now_ms().saturating_add(time.as_millis() as u64).max(1);
        self.no_reuse_until.store(until, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Service {
    /// Stable id of this service name for the life of the process (metrics index).
    pub id: usize,
    pub name: String,
    pub backends: Vec<Backend>,
    /// The backends' turns when their weights differ (see [`crate::balancer::schedule`]);
    /// `None`: plain round-robin.
    pub schedule: Option<Box<[u32]>>,
    pub settings: BreakerSettings,
    pub policy: Policy,
    /// Rate and concurrency limits (see `admission.rs`).
    pub admission: crate::admission::Admission,
    /// WebSocket upgrades are forwarded (`websocket: true`).
    pub websocket: bool,
    /// Paths with an encoded `/` are forwarded (`encoded_slashes: true`).
    pub encoded_slashes: bool,
    /// The timeouts its requests run under (the top-level ones with its own over them).
    pub timeouts: crate::config::Timeouts,
    /// Active health checks (`health.rs`); `None`: its backends are never passed over
    /// for health.
    pub health_check: Option<crate::health::HealthCheck>,
}

/// Everything that must change together on a reload.
#[derive(Debug)]
pub struct Snapshot {
    /// The config's generation: 1 at start, +1 per reload or DNS refresh that installed one.
    pub generation: u64,
    /// +1 per snapshot built, whatever the reason (a re-homing of ids keeps the generation):
    /// what parked ids wait on, and how a follower tells a new snapshot from the last.
    pub epoch: u64,
    pub config: Config,
    /// Sorted by name for binary search.
    pub services: Vec<Service>,
}

impl Service {
    /// Turns in one round of its balancing: one per backend, or its schedule's.
    pub fn turns(&self) -> usize {
        self.schedule
            .as_ref()
            .map_or(self.backends.len(), |s| s.len())
    }
}

impl Snapshot {
    pub fn service(&self, name: &[u8]) -> Option<&Service> {
        self.service_index(name).map(|i| &self.services[i])
    }

    pub fn service_index(&self, name: &[u8]) -> Option<usize> {
        self.services
            .binary_search_by(|s| s.name.as_bytes().cmp(name))
            .ok()
    }

    /// Which backend slots this snapshot uses, indexed by slot.
    pub fn live_slots(&self) -> Vec<bool> {
        let mut live = Vec::new();
        for b in self.services.iter().flat_map(|s| &s.backends) {
            if live.len() <= b.slot {
                live.resize(b.slot + 1, false);
            }
            live[b.slot] = true;
        }
        live
    }
}

/// Dense ids (service ids, backend slots) that are reused once nothing can use them.
///
/// An id that leaves the config at snapshot epoch `e` is *parked*: requests in flight on an
/// older snapshot, and a worker that has not yet picked up the new one, may still count
/// on it (or, for a slot, pool a connection under it). It becomes free once no snapshot
/// older than `e` is alive; only then are its counters zeroed in every worker's table
/// (nothing writes them any more) and the id handed out again, lowest first, so a reused
/// id starts from zero in the exported series.
#[derive(Default)]
struct Ids {
    next: usize,
    free: BTreeSet<usize>,
    /// (first epoch that no longer uses the id, id).
    parked: Vec<(u64, usize)>,
}

impl Ids {
    fn take(&mut self) -> usize {
        self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Whether an id below `limit` (one with series) is free.
    fn free_below(&self, limit: usize) -> bool {
        self.free.first().is_some_and(|&id| id < limit)
    }

    fn park(&mut self, id: usize, epoch: u64) {
        self.parked.push((epoch, id));
    }

    /// Frees the parked ids no snapshot of epoch `oldest_alive` or later uses, and
    /// returns them (their counters must be zeroed before the next snapshot is stored).
    fn release(&mut self, oldest_alive: u64) -> Vec<usize> {
        let mut freed = Vec::new();
        self.parked.retain(|&(epoch, id)| {
            let done = epoch <= oldest_alive;
            if done {
                freed.push(id);
            }
            !done
        });
        self.free.extend(&freed);
        freed
    }
}

/// Breaker cells and pool slots by (service, URL), with the address the URL resolved to,
/// and service ids by name, surviving reloads. A URL that resolves to a new address on a
/// reload is a new backend: new slot (so no pooled connection to the old address is ever
/// used again) and a fresh breaker (the old address's circuit says nothing about the new).
#[derive(Default)]
struct Registry {
    cells: HashMap<(String, String), Cells>,
    /// No-reuse marks (see [`Backend`]) by the address a backend URL resolved to: a backend
    /// listed by several services, or under several prefixes, is one server, and its late
    /// responses reach every pool slot that connects to it (a hostile review: marked per
    /// service, a second service kept handing its answers to the wrong clients).
    no_reuse: HashMap<SocketAddr, Arc<BreakerCell>>,
    /// Ids of the services of the running config, by name.
    services: HashMap<String, usize>,
    /// The health checks of the running config's services that have them, by name: a
    /// service whose checks are turned on or changed gets fresh health cells, so that what
    /// the old checks found (or a probe of theirs still in flight writes) counts for nothing.
    checks: HashMap<String, crate::health::HealthCheck>,
    service_ids: Ids,
    slots: Ids,
    /// Every snapshot installed and maybe still alive (a worker's view, a request in
    /// flight), by epoch: parked ids wait for the older ones to go.
    snapshots: Vec<(u64, Weak<Snapshot>)>,
    /// The last snapshot's epoch.
    epoch: u64,
    /// Services and backends given an id at or over the metrics limit (no series), over
    /// every build.
    exhausted: MetricIdsExhausted,
    /// Those of the last build: the running config's shortfall.
    missing: MetricIdsExhausted,
    admission: crate::admission::Registry,
    /// The probe lease of the running config, and the longer one still owed to probes
    /// admitted before the last reload (lease, until; see [`Policy::prior_lease_ms`]).
    lease_ms: Option<u64>,
    prior_lease: (u64, u64),
}

/// A backend's slot, breaker, demand mark (see [`Backend::wanted`]) and the address its
/// URL resolved to.
/// Slot, breaker, demand mark, health (`health.rs`), address.
type Cells = (
    usize,
    Arc<BreakerCell>,
    Arc<BreakerCell>,
    Arc<BreakerCell>,
    SocketAddr,
);

/// Services and backends that got no series of their own because more than
/// [`MAX_SERVICES`] services or [`MAX_SLOTS`] backends were configured at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetricIdsExhausted {
    pub services: u64,
    pub backends: u64,
}

impl Registry {
    /// Epoch of the oldest installed snapshot still alive; forgets the dead ones.
    fn oldest_alive(&mut self) -> u64 {
        self.snapshots.retain(|(_, w)| w.strong_count() > 0);
        // Pairs with the release in `Arc::drop` of the last holder of each snapshot seen
        // dead above: the counter writes of its requests happen before our zeroing.
        std::sync::atomic::fence(Ordering::Acquire);
        self.snapshots
            .iter()
            .map(|(g, _)| *g)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn remember(&mut self, snapshot: &Arc<Snapshot>) {
        self.snapshots
            .push((snapshot.epoch, Arc::downgrade(snapshot)));
    }
}

/// What a snapshot build kept, added and removed (for the reload log line).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuildReport {
    pub backends_kept: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Same (service, URL), but the host name now resolves to another address.
    pub backends_readdressed: usize,
    /// Rate-limit budgets carried over (same service, limit and key) and started fresh.
    pub budgets: crate::admission::BudgetReport,
}

/// Outcome counters of reloads (control path only).
#[derive(Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// The last reload's error, empty after a success.
    pub last_error: Mutex<String>,
    /// Settings the file changed that only a restart or an upgrade applies, as the last
    /// successful reload found them (the running values stay in the snapshot, so each
    /// reload finds them again until then).
    pub restart_pending: Mutex<Vec<&'static str>>,
}

/// Failed upgrades (`SIGUSR2`) of this process (control path only): a successful one hands
/// the sockets to a new process, which counts its own.
#[derive(Default)]
pub struct UpgradeStats {
    pub failed: AtomicU64,
    /// The last failure, said as the log says it; empty when none failed.
    pub last_error: Mutex<String>,
}

impl UpgradeStats {
    /// Keeps `why` for `/admin/config`, counts a failed upgrade, then logs `upgrade failed:
    /// {why}; {then}`: in that order, so that whoever sees the count finds its reason, and
    /// whoever reads the line finds both (reviews).
    pub fn failed(&self, why: &str, then: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = why.to_string();
        self.failed.fetch_add(1, Ordering::SeqCst);
        log::error!(target: "gateway::upgrade", "upgrade failed: {why}; {then}");
    }
}

/// [`Shared`]'s hand-over states (see its `handover`).
const HANDOVER_PENDING: u8 = 0;
const HANDED_OVER: u8 = 1;
const HANDOVER_REFUSED: u8 = 2;

/// Shared by all workers, the admin threads and the control thread.
pub struct Shared {
    pub current: ArcSwap<Snapshot>,
    registry: Mutex<Registry>,
    /// Set on SIGTERM/SIGINT, `timeouts.drain_grace` before `draining`.
    pub stopping: AtomicBool,
    /// Set once on SIGTERM/SIGINT; workers stop accepting and finish what they have.
    pub draining: AtomicBool,
    /// Set once the workers are done (drained, or cut at the drain deadline): nothing of
    /// this process's will end a probe now (the cluster thread leaves the fleet then).
    pub served_out: AtomicBool,
    /// Whether a new process took the listening sockets over (`SIGUSR2`, [`crate::upgrade`]):
    /// [`HANDOVER_PENDING`], then [`HANDED_OVER`] (the address serves from that process while
    /// this one drains) or [`HANDOVER_REFUSED`] (a stop came first), each set once by a
    /// compare-and-swap, so the upgrade thread and the signal loop agree on which.
    handover: AtomicU8,
    /// How many of this process's listeners (in worker order) the new process took: the
    /// workers from this index on hold sockets it does not accept from.
    pub listeners_taken: AtomicUsize,
    /// Every worker's metrics table, registered at start, read by the admin threads.
    pub workers: Mutex<Vec<Arc<WorkerCell>>>,
    pub reloads: ReloadStats,
    pub upgrades: UpgradeStats,
    /// Held by whatever builds a new snapshot from the current one (a SIGHUP reload, a DNS
    /// refresh), so neither can undo the other. Never taken on the request path.
    pub control: Mutex<()>,
    /// What the access log writer counts (dropped batches, write errors).
    pub access_log: Arc<crate::accesslog::Counters>,
    /// The cluster thread's status, set once at start when the config has `cluster:`; read
    /// by the admin threads only.
    pub cluster: OnceLock<Arc<crate::cluster::Status>>,
    /// The soft limit on open descriptors when the process started serving (after
    /// [`crate::fdlimit::raise`]); what `limits.max_connections: auto` derives from.
    pub fd_limit: u64,
    /// A worker saw a burst of connections end: the heap should be trimmed.
    pub heap_trim: AtomicBool,
    /// When (`now_ms`) the heap should be trimmed after a snapshot was installed, once the
    /// old one has most likely been dropped; 0: not asked.
    trim_after_install: AtomicU64,
    /// Snapshots replaced by a newer one, held here so that the last reference to one is
    /// never dropped on a worker: freeing a 5 000-service snapshot stalled every request
    /// for 0.2 s (a scale re-review). Dropped by the control side once nothing else holds
    /// them ([`Self::bury_retired`]).
    retired: Mutex<Vec<Arc<Snapshot>>>,
    /// The admin thread waits for a descriptor (out of them): workers that run out too
    /// free theirs but leave them, rather than take each one back at once for a client of
    /// their own (`admin.rs`, [`crate::worker::Worker::accept_failed`]).
    pub admin_short: AtomicBool,
    /// Client connections the drain deadline reset, over every worker: the exit says so.
    pub cut_at_drain: AtomicUsize,
    /// Open client connections per address (`limits.max_connections_per_client`).
    pub per_client: crate::per_client::PerClient,
}

/// The probe lease of a service whose requests run under `t`. A live probe renews its
/// lease whenever it makes progress (connected, a body chunk read from the client and
/// written upstream, request sent whole); the lease is the longest gap between two
/// renewals, plus a second of slack.
fn lease_ms(t: &crate::config::Timeouts) -> u64 {
    let lease = t.connect.max(t.response).max(t.body * 2) + Duration::from_secs(1);
    lease.as_millis() as u64
}

/// The longest probe lease of any service under `cfg` (see [`lease_ms`]).
fn longest_lease_ms(cfg: &Config) -> u64 {
    cfg.services
        .iter()
        .map(|s| lease_ms(&s.timeouts))
        .fold(lease_ms(&cfg.timeouts), u64::max)
}

/// The breaker policy of a service; `prior` is the longer lease owed to probes admitted
/// before a reload, and until when (see [`Policy::prior_lease_ms`]).
fn policy(s: &BreakerSettings, t: &crate::config::Timeouts, prior: (u64, u64)) -> Policy {
    Policy {
        // 0: off (NGINX's `max_fails=0`): no count of failures ever reaches it.
        threshold: match s.failure_threshold {
            0 => u64::MAX,
            n => u64::from(n),
        },
        cooldown_ms: s.cooldown.as_millis() as u64,
        lease_ms: lease_ms(t),
        prior_lease_ms: prior.0,
        prior_until_ms: prior.1,
    }
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let mut registry = Registry::default();
        let (snapshot, _) = build(&mut registry, config, 1);
        let snapshot = Arc::new(snapshot);
        registry.remember(&snapshot);
        Arc::new(Shared {
            current: ArcSwap::new(snapshot),
            registry: Mutex::new(registry),
            draining: AtomicBool::new(false),
            served_out: AtomicBool::new(false),
            handover: AtomicU8::new(HANDOVER_PENDING),
            listeners_taken: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
            reloads: ReloadStats::default(),
            upgrades: UpgradeStats::default(),
            control: Mutex::new(()),
            access_log: Arc::default(),
            cluster: OnceLock::new(),
            fd_limit: crate::fdlimit::current(),
            heap_trim: AtomicBool::new(false),
            trim_after_install: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            admin_short: AtomicBool::new(false),
            cut_at_drain: AtomicUsize::new(0),
            per_client: crate::per_client::PerClient::default(),
        })
    }

    /// Gives the allocator's free memory back to the system if a worker asked for it
    /// ([`crate::worker::Worker::trim_heap`]); off the workers, about once a second.
    /// Also a few seconds after a snapshot was installed: a scale review's gateway kept
    /// 248 MB after a reload from 5 000 services to 10, the old snapshot's memory free in
    /// the allocator but never returned.
    pub fn trim_heap_if_asked(&self) {
        let after = self.trim_after_install.load(Ordering::Relaxed);
        let installed = after != 0
            && now_ms() >= after
            && self
                .trim_after_install
                .compare_exchange(after, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if self.heap_trim.swap(false, Ordering::Relaxed) || installed {
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim(3) has no preconditions; it only returns free memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// True from SIGTERM on: during `timeouts.drain_grace` (serving as usual) and the drain.
    /// `/healthz` answers 503 from then on.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The upgrade thread: the new process serves. False if a stop came first (then the
    /// signal loop stops the new process).
    pub fn hand_over(&self) -> bool {
        self.settle_handover(HANDED_OVER) == HANDED_OVER
    }

    /// The signal loop, on a stop: false if the new process took over first (then the stop
    /// concerns this process alone).
    pub fn refuse_handover(&self) -> bool {
        self.settle_handover(HANDOVER_REFUSED) == HANDOVER_REFUSED
    }

    /// A new process that failed after it began: the address is the old process's still.
    /// Health checks say it serves, and none of this process's sockets lingers (it hands
    /// none over).
    pub fn served_elsewhere(&self) {
        self.listeners_taken.store(usize::MAX, Ordering::SeqCst);
        self.handover.store(HANDED_OVER, Ordering::SeqCst);
    }

    /// True once a new process took the listening sockets over.
    pub fn handed_over(&self) -> bool {
        self.handover.load(Ordering::SeqCst) == HANDED_OVER
    }

    /// Moves the hand-over from pending to `to`; returns where it stands then.
    fn settle_handover(&self, to: u8) -> u8 {
        match self.handover.compare_exchange(
            HANDOVER_PENDING,
            to,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => to,
            Err(now) => now,
        }
    }

    /// Every circuit that is not closed with no failure, for a new process taking over (an
    /// upgrade): one line per backend, `service TAB url TAB address TAB state TAB count TAB
    /// age in ms`.
    pub fn export_breakers(&self) -> String {
        let now = now_ms();
        let mut out = String::new();
        for svc in &self.current.load().services {
            for b in &svc.backends {
                let w = crate::breaker::Snapshot::decode(b.breaker.load(Ordering::Acquire));
                if w.state != crate::breaker::CLOSED || w.count > 0 {
                    let age = now.saturating_sub(w.time_ms);
                    out += &format!(
                        "{}\t{}\t{}\t{}\t{}\t{age}\n",
                        svc.name, b.url.url, b.url.addr, w.state, w.count
                    );
                }
            }
        }
        out
    }

    /// Takes the circuits [`Shared::export_breakers`] wrote, for the backends this config
    /// has too (same service, URL and address, and a breaker that is on), as a reload
    /// carries them over; before any request.
    /// An open circuit keeps its time (its cooldown ends when it would have); one whose
    /// probe was in flight in the old process is open and due for a probe here. Returns how
    /// many were taken and how many of those are not closed.
    pub fn import_breakers(&self, text: &str) -> (usize, usize) {
        use crate::breaker::{Snapshot as Word, BACKOFF, CLOSED, HALF_OPEN, OPEN};
        let now = now_ms();
        let snap = self.current.load();
        let (mut taken, mut not_closed) = (0, 0);
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let [name, url, addr, state, count, age] = f[..] else {
                continue;
            };
            let (Ok(state), Ok(count), Ok(age)) = (
                state.parse::<u64>(),
                count.parse::<u64>(),
                age.parse::<u64>(),
            ) else {
                continue;
            };
            let Some(svc) = snap.services.iter().find(|s| s.name == name) else {
                continue;
            };
            if svc.settings.failure_threshold == 0 {
                continue;
            }
            // A name that resolves elsewhere now is another server (as in a reload).
            let Some(b) = svc
                .backends
                .iter()
                .find(|b| b.url.url == url && b.url.addr.to_string() == addr)
            else {
                continue;
            };
            let (state, time_ms) = match state {
                CLOSED | OPEN | BACKOFF => (state, now.saturating_sub(age)),
                HALF_OPEN => (OPEN, now.saturating_sub(svc.policy.cooldown_ms)),
                _ => continue,
            };
            let word = Word {
                state,
                count,
                epoch: 0,
                time_ms,
            };
            b.breaker.store(word.encode(), Ordering::Release);
            taken += 1;
            not_closed += usize::from(state != CLOSED);
        }
        (taken, not_closed)
    }

    /// Client connections the whole process accepts at once under `config`: the setting, or
    /// what the descriptor limit allows.
    pub fn max_connections(&self, config: &Config) -> u64 {
        crate::fdlimit::max_connections(config, self.fd_limit)
    }

    /// Services and backends that got no series of their own (see [`MetricIdsExhausted`]).
    pub fn metric_ids_exhausted(&self) -> MetricIdsExhausted {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .exhausted
    }

    /// Services and backends of the last snapshot built that have no series of their own.
    pub fn metric_ids_missing(&self) -> MetricIdsExhausted {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .missing
    }

    /// Builds a complete snapshot from `config` and stores it in one swap. Ids that no
    /// alive snapshot uses any more are freed first, their counters zeroed.
    pub fn install(&self, config: Config) -> (u64, BuildReport) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.current.load().generation + 1;
        self.free_parked(&mut reg);
        let (snapshot, report) = build(&mut reg, config, generation);
        let snapshot = Arc::new(snapshot);
        reg.remember(&snapshot);
        self.store(snapshot);
        (generation, report)
    }

    /// Gives the running config's services and backends that got no series (their ids were
    /// over the limits when they came, e.g. while a reload that renamed hundreds of
    /// services still had the old names' ids parked) ids with series, once some are free:
    /// the same config is installed again under the same generation. Called about once a
    /// second by the control side, with the control lock held; true if it installed.
    pub fn rehome_ids(&self) -> bool {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let over_s = current.services.iter().any(|s| s.id >= MAX_SERVICES);
        let over_b = current
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .any(|b| b.slot >= MAX_SLOTS);
        if !over_s && !over_b {
            return false;
        }
        self.free_parked(&mut reg);
        let room = (over_s && reg.service_ids.free_below(MAX_SERVICES))
            || (over_b && reg.slots.free_below(MAX_SLOTS));
        if !room {
            return false;
        }
        let (snapshot, _) = build(&mut reg, current.config.clone(), current.generation);
        let snapshot = Arc::new(snapshot);
        reg.remember(&snapshot);
        self.store(snapshot);
        true
    }

    /// Drops the replaced snapshots that nothing else holds any more (no worker's view, no
    /// request in flight, no admin answer); those still held wait for the next call. Run by
    /// the control side: before a snapshot is built, and about once a second. Returns how
    /// many are still held.
    pub fn bury_retired(&self) -> usize {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        let (held, unheld): (Vec<_>, Vec<_>) =
            retired.drain(..).partition(|s| Arc::strong_count(s) > 1);
        *retired = held;
        let left = retired.len();
        drop(retired);
        // Freed outside the lock: a large snapshot takes a while.
        drop(unheld);
        left
    }

    /// Makes `snapshot` the running one, keeps the old one for [`Self::bury_retired`], and
    /// asks for the heap to be trimmed once the old one is most likely gone
    /// ([`Self::trim_heap_if_asked`]).
    fn store(&self, snapshot: Arc<Snapshot>) {
        let old = self.current.swap(snapshot);
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(old);
        self.trim_after_install
            .store(now_ms() + TRIM_AFTER_INSTALL_MS, Ordering::Relaxed);
    }

    /// Frees the ids that no alive snapshot uses any more and zeroes their counters.
    fn free_parked(&self, reg: &mut Registry) {
        self.bury_retired();
        let oldest = reg.oldest_alive();
        let services = reg.service_ids.release(oldest);
        let slots = reg.slots.release(oldest);
        if !services.is_empty() || !slots.is_empty() {
            let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            for w in workers.iter() {
                services.iter().for_each(|&id| w.clear_service(id));
                slots.iter().for_each(|&slot| w.clear_slot(slot));
            }
        }
    }
}

/// What a build carries over: the cells of each (service, URL) and the no-reuse marks by
/// address, as the new snapshot uses them.
#[derive(Default)]
struct Carried {
    cells: HashMap<(String, String), Cells>,
    marks: HashMap<SocketAddr, Arc<BreakerCell>>,
}

/// A fresh cell (0: a closed circuit, no mark).
fn cell() -> Arc<BreakerCell> {
    Arc::new(CachePadded::new(AtomicU64::new(0)))
}

/// `service`'s backend `b` for a new snapshot: its slot, breaker and demand mark carried
/// over from the running config where its URL still resolves to the same address (see
/// [`Registry`]), and the no-reuse mark of its address.
fn backend_cells(
    reg: &mut Registry,
    report: &mut BuildReport,
    live: &mut Carried,
    (service, fresh_health, breaker_off): (&str, bool, bool),
    b: &crate::config::BackendUrl,
) -> Backend {
    let key = (service.to_owned(), b.url.clone());
    let (slot, breaker, wanted, health) = match reg.cells.get(&key) {
        Some((slot, breaker, wanted, health, addr)) if *addr == b.addr => {
            report.backends_kept += 1;
            // One with no series moves to a free slot that has them (its idle pooled
            // connections go with the old slot).
            let slot = if *slot >= MAX_SLOTS && reg.slots.free_below(MAX_SLOTS) {
                reg.slots.take()
            } else {
                *slot
            };
            let health = match fresh_health {
                true => cell(),
                false => health.clone(),
            };
            // A breaker turned off starts closed: an open one carried over would still be
            // probed, and a failed probe reopens it whatever the threshold (a review).
            let breaker = match breaker_off {
                true => cell(),
                false => breaker.clone(),
            };
            (slot, breaker, wanted.clone(), health)
        }
        other => {
            if other.is_some() {
                report.backends_readdressed += 1;
            } else {
                report.backends_added += 1;
            }
            (reg.slots.take(), cell(), cell(), cell())
        }
    };
    live.cells.insert(
        key,
        (
            slot,
            breaker.clone(),
            wanted.clone(),
            health.clone(),
            b.addr,
        ),
    );
    let no_reuse_until = live
        .marks
        .entry(b.addr)
        .or_insert_with(|| reg.no_reuse.get(&b.addr).cloned().unwrap_or_else(cell))
        .clone();
    Backend {
        url: b.clone(),
        slot,
        breaker,
        no_reuse_until,
        wanted,
        health,
    }
}

fn build(reg: &mut Registry, config: Config, generation: u64) -> (Snapshot, BuildReport) {
    reg.epoch += 1;
    let epoch = reg.epoch;
    let mut report = BuildReport::default();
    let mut live = Carried::default();
    let (admissions, budgets) = reg.admission.build(&config);
    report.budgets = budgets;
    // A probe admitted before this reload runs on the old timeouts: its lease stays the
    // longer of the two for one old lease from now (the longest of any service's: which
    // service a probe was for is not kept, and a longer lease only delays a next probe
    // after a probe holder died).
    let now = now_ms();
    if let Some(old) = reg.lease_ms.replace(longest_lease_ms(&config)) {
        let (owed, until) = reg.prior_lease;
        let longest = if now < until { old.max(owed) } else { old };
        reg.prior_lease = (longest, now + longest);
    }
    let prior = reg.prior_lease;
    let mut live_services: HashMap<String, usize> = HashMap::new();
    let mut services: Vec<Service> = config
        .services
        .iter()
        .zip(admissions)
        .map(|(sc, admission)| {
            let fresh_health = sc.health_check.as_ref() != reg.checks.get(&sc.name);
            let off = sc.breaker.failure_threshold == 0;
            let backends: Vec<Backend> = sc
                .backends
                .iter()
                .map(|b| {
                    backend_cells(
                        reg,
                        &mut report,
                        &mut live,
                        (&sc.name, fresh_health, off),
                        b,
                    )
                })
                .collect();
            let id = match reg.services.get(&sc.name) {
                // One with no series moves to a free id that has them.
                Some(&id) if id < MAX_SERVICES || !reg.service_ids.free_below(MAX_SERVICES) => id,
                _ => reg.service_ids.take(),
            };
            live_services.insert(sc.name.clone(), id);
            Service {
                id,
                name: sc.name.clone(),
                backends,
                schedule: crate::balancer::schedule(
                    &sc.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
                ),
                settings: sc.breaker,
                policy: policy(&sc.breaker, &sc.timeouts, prior),
                admission,
                websocket: sc.websocket,
                encoded_slashes: sc.encoded_slashes,
                timeouts: sc.timeouts,
                health_check: sc.health_check.clone(),
            }
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    report.backends_removed = reg.cells.len() - report.backends_kept - report.backends_readdressed;
    // What left the config (a re-addressed or re-homed backend's old slot too, and a
    // re-homed service's old id) waits until no older snapshot is alive before its id is
    // reused.
    for (key, (slot, ..)) in &reg.cells {
        if live.cells.get(key).is_none_or(|l| l.0 != *slot) {
            reg.slots.park(*slot, epoch);
        }
    }
    for (name, id) in &reg.services {
        if live_services.get(name) != Some(id) {
            reg.service_ids.park(*id, epoch);
        }
    }
    reg.cells = live.cells;
    // A mark still running outlives its address's removal: a backend pulled and put back
    // within the minute, as an operator does with a misbehaving one, is not reused at once
    // (a review saw its late answers reach other clients again).
    for (addr, mark) in reg.no_reuse.drain() {
        if mark.load(Ordering::Relaxed) > now {
            live.marks.entry(addr).or_insert(mark);
        }
    }
    reg.no_reuse = live.marks;
    reg.services = live_services;
    reg.checks = services
        .iter()
        .filter_map(|s| Some((s.name.clone(), s.health_check.clone()?)))
        .collect();
    count_exhausted(reg, &services);
    (
        Snapshot {
            generation,
            epoch,
            config,
            services,
        },
        report,
    )
}

/// Counts the services and backends of a new snapshot whose ids are over the metrics
/// limits (they are served, but get no series of their own), and warns whenever there are
/// more of them than in the last build: at start, and on a reload that grows the config
/// past the limits (until 2026-12-04 only the first time in the life of the process, so an
/// operator's second growth went unsaid: a scale review).
fn count_exhausted(reg: &mut Registry, services: &[Service]) {
    let over_s = services.iter().filter(|s| s.id >= MAX_SERVICES).count() as u64;
    let over_b = services
        .iter()
        .flat_map(|s| &s.backends)
        .filter(|b| b.slot >= MAX_SLOTS)
        .count() as u64;
    let before = reg.missing;
    let backends = services.iter().map(|s| s.backends.len()).sum::<usize>();
    say_missing(
        "services",
        over_s,
        before.services,
        services.len(),
        MAX_SERVICES,
    );
    say_missing("backends", over_b, before.backends, backends, MAX_SLOTS);
    reg.missing = MetricIdsExhausted {
        services: over_s,
        backends: over_b,
    };
    let e = &mut reg.exhausted;
    e.services += over_s;
    e.backends += over_b;
}

/// Says that `over` of the `configured` services (or backends) get no series, when more
/// do than in the last build (`before`). Those over what the tables hold stay without; the
/// rest only until the ids of those a reload removed are free, within about a second: a
/// review's rename of 1 001 services was warned as "977 get no series" while it lasted a
/// second, so that part is said apart, and alone at `info`.
fn say_missing(what: &str, over: u64, before: u64, configured: usize, limit: usize) {
    if over <= before {
        return;
    }
    let lasting = configured.saturating_sub(limit) as u64;
    let passing = over - lasting.min(over);
    let meanwhile = format!(
        "until the ids of those the reload removed are free (within about a second): {passing}"
    );
    if lasting == 0 {
        log::info!("metrics: {what} without series of their own {meanwhile}");
    } else if passing == 0 {
        log::warn!("metrics: {configured} {what}, more than the {limit} the metrics tables hold: {lasting} get no series of their own (gateway_metric_ids_missing)");
    } else {
        log::warn!("metrics: {configured} {what}, more than the {limit} the metrics tables hold: {lasting} get no series of their own (gateway_metric_ids_missing), and {meanwhile}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker;

    fn cfg(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn a_services_probe_lease_follows_its_own_timeouts() {
        // Top level: max(1 s, 2 s, 2 x 1 s) + 1 s = 3 s; `b`'s own response of 2 min makes
        // its lease 121 s, so no second probe begins while its first may still be waiting.
        let shared = Shared::new(cfg(
            "timeouts: {connect: 1s, response: 2s, body: 1s}\n\
             services:\n  a: [http://127.0.0.1:1]\n  b:\n    backends: [http://127.0.0.1:2]\n    timeouts: {response: 2m}\n",
        ));
        let snap = shared.current.load_full();
        let lease = |name: &str| {
            let s = snap
                .services
                .iter()
                .find(|s| s.name == name)
                .expect("service");
            s.policy.lease_ms
        };
        assert_eq!((lease("a"), lease("b")), (3_000, 121_000));
        // A reload dropping `b`'s own timeouts owes its probes the longest old lease.
        shared.install(cfg("timeouts: {connect: 1s, response: 2s, body: 1s}\n\
             services:\n  a: [http://127.0.0.1:1]\n  b: [http://127.0.0.1:2]\n"));
        let after = shared.current.load_full();
        let b = after.services.iter().find(|s| s.name == "b").expect("b");
        assert_eq!(b.policy.lease_ms, 3_000);
        assert!(b.policy.lease_at(now_ms()) >= 121_000);
    }

    #[test]
    fn a_reload_that_shortens_the_timeouts_keeps_a_probe_in_flight_the_only_one() {
        // Lease under the defaults: max(2 s, 30 s, 2 x 30 s) + 1 s = 61 s; after the reload
        // max(1 s, 2 s, 2 x 1 s) + 1 s = 3 s.
        let svc = "breaker: {failure_threshold: 1, cooldown: 1ms}\nservices:\n  a: [http://127.0.0.1:1]\n";
        let shared = Shared::new(cfg(svc));
        let snap = shared.current.load_full();
        let (cell, p) = (
            &**snap.services[0].backends[0].breaker,
            snap.services[0].policy,
        );
        assert_eq!(p.lease_ms, 61_000);
        let t0 = now_ms();
        for _ in 0..p.threshold {
            let t = breaker::admit(cell, t0, &p).unwrap();
            breaker::failure(cell, t, t0, &p);
        }
        let opened = t0 + p.cooldown_ms;
        let probe = breaker::admit(cell, opened, &p).expect("the probe");
        assert!(probe.is_probe());
        shared.install(cfg(&format!(
            "timeouts: {{connect: 1s, response: 2s, body: 1s}}\n{svc}"
        )));
        let short = shared.current.load_full().services[0].policy;
        assert_eq!(short.lease_ms, 3_000);
        // The probe admitted under the old config may go 61 s without progress.
        let now = now_ms();
        assert!(short.lease_at(now) >= 61_000);
        assert!(
            breaker::admit(cell, opened + 3_000, &short).is_none(),
            "a second probe"
        );
        assert!(
            breaker::admit(cell, opened + 60_000, &short).is_none(),
            "a second probe"
        );
        // Once an old lease has passed since the reload, the new one applies.
        assert_eq!(short.lease_at(now + 61_001), 3_000);
        // A second reload within that time keeps what is still owed.
        shared.install(cfg(&format!(
            "timeouts: {{connect: 1s, response: 1s, body: 1s}}\n{svc}"
        )));
        let again = shared.current.load_full().services[0].policy;
        assert!(again.lease_at(now_ms()) >= 61_000);
        // Lengthening: the new lease is the longer one.
        shared.install(cfg(svc));
        let long = shared.current.load_full().services[0].policy;
        assert_eq!(long.lease_at(now_ms()), 61_000);
    }

    #[test]
    fn a_no_reuse_mark_is_the_addresss_in_every_service_and_outlives_a_reload() {
        let both = "services:\n  a: [http://127.0.0.1:1]\n  b: [http://127.0.0.1:1/api]\n  c: [http://127.0.0.1:2]\n";
        let shared = Shared::new(cfg(both));
        let backend = |name: &str| {
            let s = shared.current.load_full();
            let svc = s.services.iter().find(|s| s.name == name).unwrap();
            svc.backends[0].no_reuse_until.clone()
        };
        let (a, b, c) = (backend("a"), backend("b"), backend("c"));
        assert!(Arc::ptr_eq(&a, &b), "one address, one mark");
        assert!(!Arc::ptr_eq(&a, &c), "another address, another mark");
        {
            let s = shared.current.load_full();
            let a = s.services.iter().find(|s| s.name == "a").unwrap();
            a.backends[0].stop_reuse(Duration::from_secs(60));
            let b = s.services.iter().find(|s| s.name == "b").unwrap();
            assert!(!b.backends[0].reusable());
            let c = s.services.iter().find(|s| s.name == "c").unwrap();
            assert!(c.backends[0].reusable());
        }
        // A reload that drops `a` keeps the mark for `b`, and a new service there has it.
        shared.install(cfg(
            "services:\n  b: [http://127.0.0.1:1/api]\n  d: [http://127.0.0.1:1]\n",
        ));
        assert!(Arc::ptr_eq(&backend("b"), &a) && Arc::ptr_eq(&backend("d"), &a));
        // Dropped from the config and put back within the minute, it is still marked.
        shared.install(cfg("services:\n  c: [http://127.0.0.1:2]\n"));
        shared.install(cfg("services:\n  d: [http://127.0.0.1:1]\n"));
        assert!(Arc::ptr_eq(&backend("d"), &a));
        // Once its mark has run out and no service lists the address, the mark goes.
        a.store(1, Ordering::Relaxed);
        shared.install(cfg("services:\n  c: [http://127.0.0.1:2]\n"));
        shared.install(cfg("services:\n  d: [http://127.0.0.1:1]\n"));
        assert!(!Arc::ptr_eq(&backend("d"), &a));
    }

    #[test]
    fn a_replaced_snapshot_is_freed_by_the_control_side_never_by_a_worker() {
        let shared = Shared::new(cfg("services:\n  a: [http://127.0.0.1:1]\n"));
        // A worker's view of generation 1.
        let view = shared.current.load_full();
        let old = Arc::downgrade(&view);
        shared.install(cfg("services:\n  b: [http://127.0.0.1:2]\n"));
        assert_eq!(shared.bury_retired(), 1, "the worker still holds it");
        assert_eq!(old.strong_count(), 2);
        // The worker moves on to generation 2: what it lets go of is not the last reference,
        // so it frees nothing on the request path.
        std::thread::spawn(move || drop(view)).join().unwrap();
        assert_eq!(old.strong_count(), 1, "freed on the worker");
        assert_eq!(shared.bury_retired(), 0);
        assert_eq!(old.strong_count(), 0);
    }

    #[test]
    fn ids_wait_for_retired_snapshots_and_are_freed_at_the_next_build() {
        let shared = Shared::new(cfg("services:\n  a: [http://127.0.0.1:1]\n"));
        let a = shared.current.load().services[0].id;
        let view = shared.current.load_full();
        shared.install(cfg("services:\n  b: [http://127.0.0.1:2]\n"));
        // Still parked: a view of generation 1 is alive.
        shared.install(cfg("services:\n  c: [http://127.0.0.1:3]\n"));
        assert_ne!(shared.current.load().services[0].id, a);
        drop(view);
        // No sweep ran in between: the next build buries generation 1 itself and reuses
        // its id.
        shared.install(cfg("services:\n  d: [http://127.0.0.1:4]\n"));
        assert_eq!(shared.current.load().services[0].id, a);
    }

    #[test]
    fn breakers_survive_for_backends_that_stay() {
        let shared = Shared::new(cfg(
            "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2]\n",
        ));
        let snap = shared.current.load_full();
        let a = snap.service(b"a").unwrap();
        let p = a.policy;
        for _ in 0..p.threshold {
            let t = breaker::admit(&**a.backends[0].breaker, 0, &p).unwrap();
            breaker::failure(&**a.backends[0].breaker, t, 0, &p);
        }
        let (generation, report) = shared.install(cfg(
            "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:3]\n  b: [http://127.0.0.1:4]\n",
        ));
        assert_eq!(generation, 2);
        assert_eq!(
            report,
            BuildReport {
                backends_kept: 1,
                backends_added: 2,
                backends_removed: 1,
                backends_readdressed: 0,
                budgets: Default::default(),
            }
        );
        let snap2 = shared.current.load_full();
        let a2 = snap2.service(b"a").unwrap();
        assert!(Arc::ptr_eq(&a.backends[0].breaker, &a2.backends[0].breaker));
        assert_eq!(a.backends[0].slot, a2.backends[0].slot);
        assert!(
            breaker::admit(&**a2.backends[0].breaker, 1, &p).is_none(),
            "open breaker was reset"
        );
        assert_ne!(a2.backends[1].slot, a.backends[1].slot);
        assert!(snap2.service(b"b").is_some());
        assert!(snap2.service(b"c").is_none());
    }

    #[test]
    fn a_backend_whose_name_resolves_elsewhere_is_a_new_backend() {
        // Regression: pool slots were keyed by (service, URL) only, so after a reload that
        // re-resolved a host name to a new address, pooled connections to the old address
        // kept serving steady traffic, and the reload said `backends +0 -0`.
        let text = "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2]\n";
        let shared = Shared::new(cfg(text));
        let before = shared.current.load_full();
        let a = before.service(b"a").unwrap();
        let p = a.policy;
        for _ in 0..p.threshold {
            let t = breaker::admit(&**a.backends[0].breaker, 0, &p).unwrap();
            breaker::failure(&**a.backends[0].breaker, t, 0, &p);
        }
        // The same file, but the first URL's host now resolves to another address.
        let mut moved = cfg(text);
        moved.services[0].backends[0].addr = "127.0.0.9:1".parse().unwrap();
        let (_, report) = shared.install(moved);
        assert_eq!(
            report,
            BuildReport {
                backends_kept: 1,
                backends_added: 0,
                backends_removed: 0,
                backends_readdressed: 1,
                budgets: Default::default(),
            }
        );
        let after = shared.current.load_full();
        let a2 = after.service(b"a").unwrap();
        assert_ne!(
            a2.backends[0].slot, a.backends[0].slot,
            "old pooled connections would be reused"
        );
        assert!(
            breaker::admit(&**a2.backends[0].breaker, 1, &p).is_some(),
            "the old address's open circuit carried over"
        );
        assert_eq!(a2.backends[1].slot, a.backends[1].slot);
        assert!(Arc::ptr_eq(&a.backends[1].breaker, &a2.backends[1].breaker));
    }

    fn one(name: &str, port: u16) -> Config {
        cfg(&format!("services:\n  {name}: [http://127.0.0.1:{port}]\n"))
    }

    /// (service id, slot) of the only service of the running config.
    fn ids(shared: &Shared) -> (usize, usize) {
        let snap = shared.current.load();
        (snap.services[0].id, snap.services[0].backends[0].slot)
    }

    #[test]
    fn ids_that_left_are_reused_once_no_older_snapshot_is_alive_and_start_from_zero() {
        use crate::metrics::{render, Names, WorkerMetrics};
        let shared = Shared::new(one("a", 1));
        let table = Arc::new(WorkerCell::new(WorkerMetrics::default()));
        shared.workers.lock().unwrap().push(table.clone());
        let (a, a_slot) = ids(&shared);
        let rec = crate::downstream::Record {
            status: 200,
            bytes: 300,
            received: 120,
            ..Default::default()
        };
        table.response(Some(a), &rec, 700);
        table.outcome(a_slot, false);
        // A request still in flight on generation 1 holds it: `a`'s ids stay parked.
        let in_flight = shared.current.load_full();
        shared.install(one("b", 2));
        shared.install(one("c", 3));
        let (c, c_slot) = ids(&shared);
        assert!(
            c != a && c_slot != a_slot,
            "reused while a request could count on it"
        );
        drop(in_flight);
        shared.install(one("d", 4));
        assert_eq!(ids(&shared), (a, a_slot), "the lowest free ids are reused");
        // The reused ids start from zero.
        assert_eq!(table.backend_success[a_slot].get(), 0);
        let services = vec![(a, "d".to_string())];
        let text = render(
            &[&**table],
            &Names {
                services: &services,
                backends: &[],
                healthy: &[],
                generation: 4,
                reloads_ok: 3,
                reloads_failed: 0,
                last_reload_ok: true,
                restart_pending: 0,
                upgrades_failed: 0,
                draining: false,
                access_log_dropped: 0,
                access_log_errors: 0,
                ids_exhausted: shared.metric_ids_exhausted(),
                ids_missing: shared.metric_ids_missing(),
                in_flight: &[],
                max_fds: 1024,
                open_fds: None,
                process: None,
            },
        );
        for line in [
            "gateway_requests_total{service=\"d\",class=\"2xx\"} 0\n",
            "gateway_request_duration_seconds_count{service=\"d\"} 0\n",
            "gateway_request_duration_seconds_sum{service=\"d\"} 0\n",
            "gateway_response_bytes_total{service=\"d\"} 0\n",
            "gateway_request_bytes_total{service=\"d\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} not in {text}");
        }
    }

    #[test]
    fn renames_without_end_keep_ids_few_and_a_service_that_stays_keeps_its_id() {
        let shared = Shared::new(one("s0", 1));
        for i in 1..3000u16 {
            shared.install(one(&format!("s{i}"), 1 + i % 7));
            let (id, slot) = ids(&shared);
            assert!(id < 2 && slot < 2, "rename {i}: id {id}, slot {slot}");
        }
        assert_eq!(shared.metric_ids_exhausted(), MetricIdsExhausted::default());
        // A service that stays keeps its id across reloads that change the others.
        let two = |other: &str| {
            cfg(&format!(
                "services:\n  keep: [http://127.0.0.1:9]\n  {other}: [http://127.0.0.1:8]\n"
            ))
        };
        shared.install(two("x"));
        let keep = shared.current.load().service(b"keep").unwrap().id;
        for other in ["y", "z", "w"] {
            shared.install(two(other));
            assert_eq!(shared.current.load().service(b"keep").unwrap().id, keep);
        }
    }

    /// Regression: one reload renaming 600 services (their 600 ids parked while requests
    /// on the old snapshot could still count on them, 600 new ones taken) left 176 of them
    /// without series for good, as a review found; their backends likewise. Once the old
    /// ids are free, the same config is installed again with ids that have series.
    #[test]
    fn services_renamed_in_bulk_get_series_once_the_old_ids_are_free() {
        use std::collections::HashSet;
        let named = |prefix: &str| {
            let mut text = String::from("services:\n");
            for i in 0..600 {
                let urls: Vec<String> = (1..=4).map(|p| format!("http://127.0.0.1:{p}")).collect();
                text.push_str(&format!("  {prefix}{i}: [{}]\n", urls.join(", ")));
            }
            cfg(&text)
        };
        let over = |shared: &Shared| {
            let snap = shared.current.load();
            let s = snap
                .services
                .iter()
                .filter(|s| s.id >= MAX_SERVICES)
                .count();
            let b = snap.services.iter().flat_map(|s| &s.backends);
            (s, b.filter(|b| b.slot >= MAX_SLOTS).count())
        };
        let shared = Shared::new(named("a"));
        let in_flight = shared.current.load_full();
        shared.install(named("b"));
        assert_eq!(over(&shared), (1200 - MAX_SERVICES, 4800 - MAX_SLOTS));
        let b0 = shared.current.load().service(b"b0").unwrap().backends[0]
            .breaker
            .clone();
        assert!(
            !shared.rehome_ids(),
            "re-homed while the old ids were in use"
        );
        drop(in_flight);
        let generation = shared.current.load().generation;
        assert!(shared.rehome_ids());
        assert_eq!(over(&shared), (0, 0));
        let snap = shared.current.load();
        assert_eq!(snap.generation, generation, "a re-homing is no reload");
        let ids: HashSet<usize> = snap.services.iter().map(|s| s.id).collect();
        let slots: HashSet<usize> = snap
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .map(|b| b.slot)
            .collect();
        assert_eq!((ids.len(), slots.len()), (600, 2400), "ids shared");
        let kept = &snap.service(b"b0").unwrap().backends[0].breaker;
        assert!(Arc::ptr_eq(kept, &b0), "a breaker was lost");
        assert!(!shared.rehome_ids(), "nothing left to re-home");
    }

    #[test]
    fn services_and_backends_over_the_limits_are_counted() {
        let mut text = String::from("services:\n");
        for i in 0..MAX_SERVICES + 3 {
            text.push_str(&format!("  s{i}: [http://127.0.0.1:{}]\n", 1 + i % 60000));
        }
        let shared = Shared::new(cfg(&text));
        assert_eq!(
            shared.metric_ids_exhausted(),
            MetricIdsExhausted {
                services: 3,
                backends: 0
            }
        );
        let snap = shared.current.load();
        assert_eq!(
            snap.services
                .iter()
                .filter(|s| s.id >= MAX_SERVICES)
                .count(),
            3
        );
        let missing = |services| MetricIdsExhausted {
            services,
            backends: 0,
        };
        assert_eq!(shared.metric_ids_missing(), missing(3));
        // The counter grows with every build over the limits; the gauge says what is
        // short now.
        shared.install(cfg(&text));
        assert_eq!(shared.metric_ids_exhausted().services, 6);
        assert_eq!(shared.metric_ids_missing(), missing(3));
        shared.install(cfg("services:\n  s0: [http://127.0.0.1:1]\n"));
        assert_eq!(shared.metric_ids_missing(), missing(0));
        assert_eq!(shared.metric_ids_exhausted().services, 6);
    }
}
