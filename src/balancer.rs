//! Round-robin over a service's backends, skipping open circuits: one cursor per worker.
//!
//! Each worker's cursors start at an offset of its index, so workers do not march in step,
//! and no worker ever touches another's cursor. The breaker check is one shared load
//! while a circuit is closed.

use std::cell::Cell;
use std::sync::Arc;

use crate::breaker::{self, Ticket};
use crate::state::{now_ms, Snapshot};

/// A worker's view of one config snapshot: the snapshot plus this worker's cursors.
pub struct View {
    pub snapshot: Arc<Snapshot>,
    cursors: Vec<Cell<usize>>,
}

/// The balancer's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Send to `services[svc].backends[idx]` with this breaker ticket.
    Backend { idx: usize, ticket: Ticket },
    /// Every backend is open (or probing): 503, retry after this many seconds.
    AllOpen { retry_after_secs: u64 },
}

impl View {
    pub fn new(snapshot: Arc<Snapshot>, worker: usize) -> View {
        let cursors = snapshot
            .services
            .iter()
            .map(|s| Cell::new(worker % s.backends.len().max(1)))
            .collect();
        View { snapshot, cursors }
    }

    /// A view of a new snapshot that goes on from `old`'s round-robin position for every
    /// service whose backends (same slots, same order) did not change, so a reload does not
    /// send the next request of every worker back to the same backend.
    pub fn after(snapshot: Arc<Snapshot>, worker: usize, old: &View) -> View {
        let view = View::new(snapshot, worker);
        for (svc, cursor) in view.snapshot.services.iter().zip(&view.cursors) {
            let Some(i) = old.snapshot.service_index(svc.name.as_bytes()) else {
                continue;
            };
            let before = &old.snapshot.services[i];
            let same = before.backends.len() == svc.backends.len()
                && before
                    .backends
                    .iter()
                    .zip(&svc.backends)
                    .all(|(a, b)| a.slot == b.slot);
            if same {
                cursor.set(old.cursors[i].get());
            }
        }
        view
    }

    /// Next backend of service `svc` whose breaker admits a request, skipping those in
    /// `exclude` (backends this request already failed to connect to);
    /// `streaming`: the request's body is still to come from the client (see
    /// [`breaker::admit_with`]).
    pub fn pick(&self, svc: usize, exclude: &[usize], streaming: bool) -> Pick {
        let service = &self.snapshot.services[svc];
        let n = service.backends.len();
        let cursor = &self.cursors[svc];
        let start = cursor.get();
        let mut retry_ms = u64::MAX;
        for i in 0..n {
            let idx = (start + i) % n;
            if exclude.contains(&idx) {
                continue;
            }
            let cell = &*service.backends[idx].breaker;
            // The clock is read only for a circuit that is not CLOSED.
            if let Some(ticket) = breaker::admit_with(&**cell, now_ms, &service.policy, streaming) {
                cursor.set((idx + 1) % n);
                return Pick::Backend { idx, ticket };
            }
            let word = breaker::Word::load(&**cell);
            let now = now_ms();
            service.backends[idx].want(now);
            let wait = breaker::retry_hint_ms(word, now, &service.policy, streaming);
            retry_ms = retry_ms.min(wait);
        }
        Pick::AllOpen {
            retry_after_secs: retry_ms.div_ceil(1000).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::Shared;

    fn view(worker: usize) -> View {
        let shared = Shared::new(
            Config::parse(
                "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3]\n",
            )
            .unwrap(),
        );
        View::new(shared.current.load_full(), worker)
    }

    fn idx(p: Pick) -> usize {
        match p {
            Pick::Backend { idx, .. } => idx,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reload_keeps_the_round_robin_position_of_unchanged_services() {
        let shared = Shared::new(
            Config::parse(
                "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3]\n  b: [http://127.0.0.1:4, http://127.0.0.1:5]\n",
            )
            .unwrap(),
        );
        let mut v = View::new(shared.current.load_full(), 0);
        let mut got = Vec::new();
        // A reload between every request: the rotation goes on as if there were none.
        for _ in 0..6 {
            got.push(idx(v.pick(0, &[], false)));
            shared.install(
                Config::parse(
                    "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3]\n  b: [http://127.0.0.1:4, http://127.0.0.1:6]\n",
                )
                .unwrap(),
            );
            v = View::after(shared.current.load_full(), 0, &v);
        }
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        // A service whose backends changed starts over from the worker's offset.
        let b = v.snapshot.service_index(b"b").unwrap();
        assert_eq!(idx(v.pick(b, &[], false)), 0);
    }

    #[test]
    fn rotates_from_the_worker_offset() {
        let v = view(1);
        let got: Vec<usize> = (0..6).map(|_| idx(v.pick(0, &[], false))).collect();
        assert_eq!(got, [1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn skips_open_circuits_and_excluded() {
        let v = view(0);
        let svc = &v.snapshot.services[0];
        let p = svc.policy;
        let now = now_ms();
        for _ in 0..p.threshold {
            let t = breaker::admit(&**svc.backends[1].breaker, now, &p).unwrap();
            breaker::failure(&**svc.backends[1].breaker, t, now, &p);
        }
        let got: Vec<usize> = (0..4).map(|_| idx(v.pick(0, &[], false))).collect();
        assert_eq!(got, [0, 2, 0, 2]);
        assert_eq!(idx(v.pick(0, &[0], false)), 2);
        match v.pick(0, &[2], false) {
            Pick::Backend { idx, .. } => assert_eq!(idx, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_open_gives_retry_after() {
        let v = view(0);
        let svc = &v.snapshot.services[0];
        let p = svc.policy;
        let now = now_ms();
        for b in &svc.backends {
            for _ in 0..p.threshold {
                let t = breaker::admit(&**b.breaker, now, &p).unwrap();
                breaker::failure(&**b.breaker, t, now, &p);
            }
        }
        match v.pick(0, &[], false) {
            Pick::AllOpen { retry_after_secs } => assert!((59..=60).contains(&retry_after_secs)),
            other => panic!("{other:?}"),
        }
    }
}
