//! The shared state, and the only place with `Arc`s and atomics: config snapshot + breakers.
//!
//! - `Shared::current` is an `ArcSwap<Snapshot>`: a whole new snapshot is built, then stored
//!   once. Workers read it without locks; requests keep the snapshot they started with.
//! - Each backend's breaker is a `CachePadded<AtomicU64>` (see `breaker.rs`), kept in a
//!   registry keyed by (service, URL) so that a reload hands the same cell to a backend that
//!   stays. The registry's mutex is taken only when a snapshot is built, never per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;

use crate::breaker::Policy;
use crate::config::{BackendUrl, BreakerSettings, Config};
use crate::metrics::WorkerCell;

/// The process clock the breakers count in (ms since first use).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
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
}

#[derive(Debug)]
pub struct Service {
    /// Stable id of this service name for the life of the process (metrics index).
    pub id: usize,
    pub name: String,
    pub backends: Vec<Backend>,
    pub settings: BreakerSettings,
    pub policy: Policy,
}

/// Everything that must change together on a reload.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Config,
    /// Sorted by name for binary search.
    pub services: Vec<Service>,
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

    /// Highest backend slot in this snapshot, for sizing per-worker tables.
    pub fn slot_count(&self) -> usize {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.slot + 1))
            .max()
            .unwrap_or(0)
    }
}

/// Breaker cells and pool slots by (service, URL), with the address the URL resolved to,
/// and service ids by name, surviving reloads. A URL that resolves to a new address on a
/// reload is a new backend: new slot (so no pooled connection to the old address is ever
/// used again) and a fresh breaker (the old address's circuit says nothing about the new).
#[derive(Default)]
struct Registry {
    cells: HashMap<(String, String), (usize, Arc<BreakerCell>, SocketAddr)>,
    next_slot: usize,
    /// Every service name ever configured, in id order.
    services: Vec<String>,
}

impl Registry {
    fn service_id(&mut self, name: &str) -> usize {
        match self.services.iter().position(|n| n == name) {
            Some(id) => id,
            None => {
                self.services.push(name.to_string());
                self.services.len() - 1
            }
        }
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
}

/// Outcome counters of reloads (control path only).
#[derive(Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// The last reload's error, empty after a success.
    pub last_error: Mutex<String>,
}

/// Shared by all workers, the admin threads and the control thread.
pub struct Shared {
    pub current: ArcSwap<Snapshot>,
    registry: Mutex<Registry>,
    /// Set once on SIGTERM/SIGINT; workers stop accepting and finish what they have.
    pub draining: AtomicBool,
    /// Every worker's metrics table, registered at start, read by the admin threads.
    pub workers: Mutex<Vec<Arc<WorkerCell>>>,
    pub reloads: ReloadStats,
    /// Held by whatever builds a new snapshot from the current one (a SIGHUP reload, a DNS
    /// refresh), so neither can undo the other. Never taken on the request path.
    pub control: Mutex<()>,
    /// Access log batches dropped because its writer fell behind.
    pub access_log_dropped: Arc<AtomicU64>,
    /// The cluster thread's status, set once at start when the config has `cluster:`; read
    /// by the admin threads only.
    pub cluster: OnceLock<Arc<crate::cluster::Status>>,
}

fn policy(s: &BreakerSettings, cfg: &Config) -> Policy {
    // A live probe renews its lease whenever it makes progress (connected, a body chunk
    // read from the client and written upstream, request sent whole); the lease is the
    // longest gap between two renewals, plus a second of slack.
    let t = &cfg.timeouts;
    let lease = t.connect.max(t.response).max(t.body * 2) + Duration::from_secs(1);
    Policy {
        threshold: u64::from(s.failure_threshold),
        cooldown_ms: s.cooldown.as_millis() as u64,
        lease_ms: lease.as_millis() as u64,
    }
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let mut registry = Registry::default();
        let (snapshot, _) = build(&mut registry, config, 1);
        Arc::new(Shared {
            current: ArcSwap::from_pointee(snapshot),
            registry: Mutex::new(registry),
            draining: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
            reloads: ReloadStats::default(),
            control: Mutex::new(()),
            access_log_dropped: Arc::default(),
            cluster: OnceLock::new(),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Every service name ever configured, with its id.
    pub fn service_names(&self) -> Vec<(usize, String)> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.services.iter().cloned().enumerate().collect()
    }

    /// Builds a complete snapshot from `config` and stores it in one swap.
    pub fn install(&self, config: Config) -> (u64, BuildReport) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.current.load().generation + 1;
        let (snapshot, report) = build(&mut reg, config, generation);
        self.current.store(Arc::new(snapshot));
        (generation, report)
    }
}

fn build(reg: &mut Registry, config: Config, generation: u64) -> (Snapshot, BuildReport) {
    let mut report = BuildReport::default();
    let mut live: HashMap<(String, String), (usize, Arc<BreakerCell>, SocketAddr)> = HashMap::new();
    let mut services: Vec<Service> = config
        .services
        .iter()
        .map(|sc| {
            let backends = sc
                .backends
                .iter()
                .map(|b| {
                    let key = (sc.name.clone(), b.url.clone());
                    let (slot, cell, _) = match reg.cells.get(&key) {
                        Some(existing) if existing.2 == b.addr => {
                            report.backends_kept += 1;
                            existing.clone()
                        }
                        other => {
                            if other.is_some() {
                                report.backends_readdressed += 1;
                            } else {
                                report.backends_added += 1;
                            }
                            reg.next_slot += 1;
                            (
                                reg.next_slot - 1,
                                Arc::new(CachePadded::new(AtomicU64::new(0))),
                                b.addr,
                            )
                        }
                    };
                    live.insert(key, (slot, cell.clone(), b.addr));
                    Backend {
                        url: b.clone(),
                        slot,
                        breaker: cell,
                    }
                })
                .collect();
            Service {
                id: reg.service_id(&sc.name),
                name: sc.name.clone(),
                backends,
                settings: sc.breaker,
                policy: policy(&sc.breaker, &config),
            }
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    report.backends_removed = reg.cells.len() - report.backends_kept - report.backends_readdressed;
    reg.cells = live;
    (
        Snapshot {
            generation,
            config,
            services,
        },
        report,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker;

    fn cfg(text: &str) -> Config {
        Config::parse(text).unwrap()
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
}
