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

    /// Next backend of service `svc` whose breaker admits a request, skipping `exclude`.
    pub fn pick(&self, svc: usize, exclude: Option<usize>) -> Pick {
        let service = &self.snapshot.services[svc];
        let n = service.backends.len();
        let cursor = &self.cursors[svc];
        let start = cursor.get();
        let mut retry_ms = u64::MAX;
        for i in 0..n {
            let idx = (start + i) % n;
            if Some(idx) == exclude {
                continue;
            }
            let cell = &*service.backends[idx].breaker;
            // The clock is read only for a circuit that is not CLOSED.
            if let Some(ticket) = breaker::admit_with(&**cell, now_ms, &service.policy) {
                cursor.set((idx + 1) % n);
                return Pick::Backend { idx, ticket };
            }
            let word = breaker::Word::load(&**cell);
            retry_ms = retry_ms.min(breaker::retry_after_ms(word, now_ms(), &service.policy));
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
    fn rotates_from_the_worker_offset() {
        let v = view(1);
        let got: Vec<usize> = (0..6).map(|_| idx(v.pick(0, None))).collect();
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
        let got: Vec<usize> = (0..4).map(|_| idx(v.pick(0, None))).collect();
        assert_eq!(got, [0, 2, 0, 2]);
        assert_eq!(idx(v.pick(0, Some(0))), 2);
        match v.pick(0, Some(2)) {
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
        match v.pick(0, None) {
            Pick::AllOpen { retry_after_secs } => assert!((59..=60).contains(&retry_after_secs)),
            other => panic!("{other:?}"),
        }
    }
}
