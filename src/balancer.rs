//! Round-robin over a service's backends, skipping open circuits: one cursor per worker.
//!
//! Each worker's cursors start at an offset of its index, so workers do not march in step,
//! and no worker ever touches another's cursor. The breaker check is one shared load
//! while a circuit is closed. A service whose backends have unequal weights goes round a
//! [`schedule`] instead, built once per snapshot, so a weighted pick costs what a plain
//! one does.

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
            .map(|s| Cell::new(worker % s.turns().max(1)))
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
                && before.schedule == svc.schedule
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
        let start = match &service.schedule {
            None => cursor.get(),
            Some(turns) => match next_turn(service, turns, cursor, exclude, streaming) {
                Some(pick) => return pick,
                // None would take a request: the scan below gives the 503 its hint.
                None => 0,
            },
        };
        let mut retry_ms = u64::MAX;
        for i in 0..n {
            let idx = (start + i) % n;
            if exclude.contains(&idx) {
                continue;
            }
            let cell = &*service.backends[idx].breaker;
            // The clock is read only for a circuit that is not CLOSED.
            if let Some(ticket) = breaker::admit_with(&**cell, now_ms, &service.policy, streaming) {
                if service.schedule.is_none() {
                    cursor.set((idx + 1) % n);
                }
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

/// Backends a weighted pick keeps track of having passed over (see [`next_turn`]).
const TRACKED: usize = 1024;

/// The first turn from `cursor` whose backend admits a request; the cursor goes on after
/// it, so the turns of a backend that cannot take one are skipped, and the others keep
/// their shares among themselves (NGINX's smooth weighted round-robin leaves such a peer
/// out the same way). Each backend is asked once (past [`TRACKED`], once per turn); a
/// round is the most it walks. `None`: none of them would.
fn next_turn(
    service: &crate::state::Service,
    turns: &[u32],
    cursor: &Cell<usize>,
    exclude: &[usize],
    streaming: bool,
) -> Option<Pick> {
    let first = cursor.get();
    let mut passed = [0u64; TRACKED / 64];
    let mut left = service.backends.len();
    for step in 0..turns.len() {
        let turn = (first + step) % turns.len();
        let idx = turns[turn] as usize;
        let bit = (idx < TRACKED).then(|| (idx / 64, 1u64 << (idx % 64)));
        if bit.is_some_and(|(w, b)| passed[w] & b != 0) {
            continue;
        }
        let backend = &service.backends[idx];
        if !exclude.contains(&idx) {
            let cell = &**backend.breaker;
            if let Some(ticket) = breaker::admit_with(cell, now_ms, &service.policy, streaming) {
                cursor.set((turn + 1) % turns.len());
                return Some(Pick::Backend { idx, ticket });
            }
            backend.want(now_ms());
        }
        if let Some((w, b)) = bit {
            passed[w] |= b;
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    None
}

/// The order in which a service with these backend weights takes its turns: each backend
/// `weight` times per round (weights divided by their common divisor first), spread
/// through the round rather than in runs (the `k`-th turn of a backend of weight `w` falls
/// at `(k + 1/2) / w` of the round; ties go to the lower index), as NGINX's smooth
/// weighted round-robin spreads them. `None` when the weights are all equal: plain
/// round-robin.
pub fn schedule(weights: &[u32]) -> Option<Box<[u32]>> {
    let first = *weights.first()?;
    if weights.iter().all(|&w| w == first) {
        return None;
    }
    let gcd = weights.iter().fold(0, |a, &w| gcd(a, w.max(1)));
    let mut turns: Vec<(u64, u64, u32)> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w.max(1) / gcd);
        turns.extend((0..w).map(|k| (2 * k + 1, 2 * w, i as u32)));
    }
    // (a / b, i) against (c / d, j): a·d against c·b, both well inside u64.
    turns.sort_by(|x, y| (x.0 * y.1).cmp(&(y.0 * x.1)).then(x.2.cmp(&y.2)));
    Some(turns.into_iter().map(|t| t.2).collect())
}

fn gcd(a: u32, b: u32) -> u32 {
    match b {
        0 => a,
        _ => gcd(b, a % b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::Shared;
    use std::sync::atomic::Ordering;

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
        open(&v, 1);
        let got: Vec<usize> = (0..4).map(|_| idx(v.pick(0, &[], false))).collect();
        assert_eq!(got, [0, 2, 0, 2]);
        assert_eq!(idx(v.pick(0, &[0], false)), 2);
        match v.pick(0, &[2], false) {
            Pick::Backend { idx, .. } => assert_eq!(idx, 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_schedule_spreads_each_backend_over_the_round_by_its_weight() {
        assert_eq!(schedule(&[1, 1, 1]), None);
        assert_eq!(schedule(&[4, 4]), None);
        assert_eq!(schedule(&[]), None);
        assert_eq!(schedule(&[2, 1]).as_deref(), Some(&[0, 1, 0][..]));
        // Divided by the common divisor first.
        assert_eq!(schedule(&[4, 2]), schedule(&[2, 1]));
        let s = schedule(&[6, 3, 1]).unwrap();
        assert_eq!(&*s, &[0, 1, 0, 0, 1, 2, 0, 0, 1, 0]);
        let s = schedule(&[256, 1, 255]).unwrap();
        assert_eq!(s.len(), 512);
        for (i, w) in [256, 1, 255].into_iter().enumerate() {
            assert_eq!(s.iter().filter(|&&t| t as usize == i).count(), w);
        }
        // The one of weight 1 comes mid-round, not in a run at an end.
        let at = s.iter().position(|&t| t == 1).unwrap();
        assert!((200..312).contains(&at), "{at}");
    }

    fn weighted(worker: usize) -> View {
        let shared = Shared::new(
            Config::parse(
                "services:\n  a:\n    - {url: http://127.0.0.1:1, weight: 3}\n    - http://127.0.0.1:2\n    - {url: http://127.0.0.1:3, weight: 2}\n",
            )
            .unwrap(),
        );
        View::new(shared.current.load_full(), worker)
    }

    #[test]
    fn weighted_picks_follow_the_schedule_and_skip_the_turns_of_an_open_backend() {
        let v = weighted(0);
        let got: Vec<usize> = (0..12).map(|_| idx(v.pick(0, &[], false))).collect();
        assert_eq!(got, [0, 2, 0, 1, 2, 0, 0, 2, 0, 1, 2, 0]);
        // Another worker starts elsewhere in the round.
        let w = weighted(1);
        assert_eq!(idx(w.pick(0, &[], false)), 2);
        // Backend 0 open: its turns are skipped, and the others keep their shares (1:2).
        open(&v, 0);
        let got: Vec<usize> = (0..6).map(|_| idx(v.pick(0, &[], false))).collect();
        assert_eq!(got, [2, 1, 2, 2, 1, 2]);
        // An excluded backend's turns are skipped alike.
        assert_eq!(idx(v.pick(0, &[1], false)), 2);
        assert_eq!(idx(v.pick(0, &[2], false)), 1);
        // Both others excluded: nothing to take the request but the open one.
        match v.pick(0, &[1, 2], false) {
            Pick::AllOpen { retry_after_secs } => assert!(retry_after_secs >= 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reload_that_changes_weights_starts_the_round_over() {
        let text = |w: u32| {
            format!("services:\n  a:\n    - {{url: http://127.0.0.1:1, weight: {w}}}\n    - http://127.0.0.1:2\n")
        };
        let shared = Shared::new(Config::parse(&text(2)).unwrap());
        let mut v = View::new(shared.current.load_full(), 0);
        assert_eq!(idx(v.pick(0, &[], false)), 0);
        shared.install(Config::parse(&text(2)).unwrap());
        v = View::after(shared.current.load_full(), 0, &v);
        assert_eq!(
            idx(v.pick(0, &[], false)),
            1,
            "same weights: the round goes on"
        );
        shared.install(Config::parse(&text(3)).unwrap());
        v = View::after(shared.current.load_full(), 0, &v);
        assert_eq!(idx(v.pick(0, &[], false)), 0, "new weights: a new round");
        assert_eq!(v.snapshot.services[0].turns(), 4);
    }

    /// Opens backend `idx`'s circuit.
    fn open(v: &View, idx: usize) {
        let svc = &v.snapshot.services[0];
        let (p, now) = (svc.policy, now_ms());
        for _ in 0..p.threshold {
            let t = breaker::admit(&**svc.backends[idx].breaker, now, &p).unwrap();
            breaker::failure(&**svc.backends[idx].breaker, t, now, &p);
        }
    }

    #[test]
    fn all_open_gives_retry_after() {
        for v in [view(0), weighted(0)] {
            let svc = &v.snapshot.services[0];
            (0..svc.backends.len()).for_each(|i| open(&v, i));
            match v.pick(0, &[], false) {
                Pick::AllOpen { retry_after_secs } => {
                    assert!((59..=60).contains(&retry_after_secs))
                }
                other => panic!("{other:?}"),
            }
            // Each was marked as wanted by a request (the cluster's probe lease follows it).
            assert!(svc
                .backends
                .iter()
                .all(|b| b.wanted.load(Ordering::Relaxed) > 0));
        }
    }
}
