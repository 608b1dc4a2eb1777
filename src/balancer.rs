//! Round-robin over a service's backends, skipping open circuits: one cursor per worker.
//!
//! Each worker's cursors start at an offset of its index, so workers do not march in step,
//! and no worker ever touches another's cursor. The breaker check is one shared load
//! while a circuit is closed. A service whose backends have unequal weights goes round a
//! [`schedule`] instead, built once per snapshot, so a weighted pick costs what a plain
//! one does while its turn's backend takes it; when that one cannot, the turn goes to
//! one of the others by their weights ([`View::spill`]), at the cost of a plain scan.

use std::cell::Cell;
use std::sync::Arc;

use crate::breaker::{self, Ticket};
use crate::state::{now_ms, Service, Snapshot};

/// A worker's view of one config snapshot: the snapshot plus this worker's cursors.
pub struct View {
    pub snapshot: Arc<Snapshot>,
    cursors: Vec<Cell<usize>>,
    /// Turns handed on so far ([`View::spill`]), which spreads them.
    spills: Cell<u64>,
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
        let workers = snapshot.config.workers.max(1);
        let cursors = snapshot
            .services
            .iter()
            .map(|s| {
                Cell::new(match s.schedule.as_deref() {
                    None => worker % s.backends.len().max(1),
                    // Spread over the round: a light backend's turn would otherwise come
                    // to every worker at once.
                    Some(turns) => worker % workers * turns.len() / workers,
                })
            })
            .collect();
        View {
            snapshot,
            cursors,
            spills: Cell::new(worker as u64),
        }
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
        let tried = |i: usize| exclude.contains(&i);
        let service = &self.snapshot.services[svc];
        if service.health_check.is_none() {
            return self.pick_among(svc, tried, streaming);
        }
        // Backends out of rotation by their health checks are passed over like those
        // this request tried, unless no other can take the request: all are out, or the
        // others' circuits are open (`health.rs`; a review's outage had one backend out
        // and the other's circuit open). Each candidate's word is read as it comes up: no
        // scan of the service, no list built.
        let saw_out = Cell::new(false);
        let passed = |i: usize| {
            tried(i) || {
                let out = crate::health::is_down(&service.backends[i]);
                saw_out.set(saw_out.get() | out);
                out
            }
        };
        match self.pick_among(svc, passed, streaming) {
            Pick::AllOpen { .. } if saw_out.get() => self.pick_among(svc, tried, streaming),
            pick => pick,
        }
    }

    /// [`View::pick`] passing over the backends `passed` names.
    fn pick_among(
        &self,
        svc: usize,
        passed: impl Fn(usize) -> bool + Copy,
        streaming: bool,
    ) -> Pick {
        let service = &self.snapshot.services[svc];
        let n = service.backends.len();
        let cursor = &self.cursors[svc];
        let start = match &service.schedule {
            None => cursor.get(),
            Some(turns) => {
                let turn = cursor.get();
                cursor.set((turn + 1) % turns.len());
                let idx = turns[turn] as usize;
                if !passed(idx) {
                    let cell = &**service.backends[idx].breaker;
                    if let Some(ticket) =
                        breaker::admit_with(cell, now_ms, &service.policy, streaming)
                    {
                        return Pick::Backend { idx, ticket };
                    }
                    service.backends[idx].want(now_ms());
                }
                if let Some(pick) = self.spill(service, idx, passed) {
                    return pick;
                }
                // None closed: the scan below asks each (a probe may be due), and gives
                // the 503 its hint.
                (idx + 1) % n
            }
        };
        let mut retry_ms = u64::MAX;
        for i in 0..n {
            let idx = (start + i) % n;
            if passed(idx) {
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

    /// The turn of backend `skip` of a weighted service, which cannot take the request (or
    /// is `passed` over), goes to one of the others not passed over whose circuit is
    /// closed, each by its weight, so that they keep their shares among themselves (NGINX's smooth
    /// weighted round-robin leaves such a peer out the same way); the choice follows a
    /// low-discrepancy sequence, spread like the schedule. Two passes over the backends
    /// and no write to a shared line (a walk over the schedule's turns instead cost up to
    /// a round, 3 ms a request with 2 000 backends all open: a review). `None`: no other
    /// is closed.
    fn spill(
        &self,
        service: &Service,
        skip: usize,
        passed: impl Fn(usize) -> bool,
    ) -> Option<Pick> {
        let closed = |i: usize| {
            i != skip
                && !passed(i)
                && breaker::Snapshot::decode(breaker::Word::load(&**service.backends[i].breaker))
                    .state
                    == breaker::CLOSED
        };
        let weight = |i: usize| u64::from(service.backends[i].url.weight);
        let n = service.backends.len();
        let total: u64 = (0..n).filter(|&i| closed(i)).map(weight).sum();
        if total == 0 {
            return None;
        }
        let k = self.spills.get();
        self.spills.set(k.wrapping_add(1));
        // The fractional part of k·φ, scaled to the total weight.
        let mut at = ((k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) * total) >> 32;
        let idx = (0..n).filter(|&i| closed(i)).find(|&i| {
            let w = weight(i);
            if at < w {
                return true;
            }
            at -= w;
            false
        })?;
        let cell = &**service.backends[idx].breaker;
        let ticket = breaker::admit_with(cell, now_ms, &service.policy, false)?;
        Some(Pick::Backend { idx, ticket })
    }
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
    let divisor = weights
        .iter()
        .fold(0, |a, &w| crate::admission::gcd(a, u64::from(w.max(1))));
    let mut turns: Vec<(u64, u64, u32)> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w.max(1)) / divisor;
        turns.extend((0..w).map(|k| (2 * k + 1, 2 * w, i as u32)));
    }
    // (a / b, i) against (c / d, j): a·d against c·b, both well inside u64.
    turns.sort_by(|x, y| (x.0 * y.1).cmp(&(y.0 * x.1)).then(x.2.cmp(&y.2)));
    Some(turns.into_iter().map(|t| t.2).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::Shared;
    use std::sync::atomic::Ordering;

    /// Worker `worker`'s view of the config `text`.
    fn view_of(text: &str, worker: usize) -> View {
        let shared = Shared::new(Config::parse(text).unwrap());
        View::new(shared.current.load_full(), worker)
    }

    fn view(worker: usize) -> View {
        view_of(
            "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3]\n",
            worker,
        )
    }

    fn idx(p: Pick) -> usize {
        match p {
            Pick::Backend { idx, .. } => idx,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backends_out_by_health_checks_are_passed_over_unless_all_are() {
        for backends in [
            "[http://127.0.0.1:1, http://127.0.0.1:2, http://127.0.0.1:3]",
            "[{url: http://127.0.0.1:1, weight: 5}, http://127.0.0.1:2, {url: http://127.0.0.1:3, weight: 2}]",
        ] {
            let v = view_of(
                &format!("services:\n  a:\n    backends: {backends}\n    health_check: {{path: /h}}\n"),
                0,
            );
            let down = |i: usize, d: bool| {
                v.snapshot.services[0].backends[i]
                    .health
                    .store(u64::from(d) << 16, Ordering::Relaxed)
            };
            let picks = |n: usize| -> Vec<usize> { (0..n).map(|_| idx(v.pick(0, &[], false))).collect() };
            down(0, true);
            let got = picks(40);
            assert!(!got.contains(&0) && got.contains(&1) && got.contains(&2), "{backends}: {got:?}");
            // A request that tried 1 goes to 2, never to the one out.
            assert_eq!(idx(v.pick(0, &[1], false)), 2, "{backends}");
            // All out: the checks are set aside.
            down(1, true);
            down(2, true);
            let got = picks(40);
            assert!(got.contains(&0) && got.contains(&1) && got.contains(&2), "{backends}: {got:?}");
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
        view_of(
            "workers: 2\nservices:\n  a:\n    - {url: http://127.0.0.1:1, weight: 3}\n    - http://127.0.0.1:2\n    - {url: http://127.0.0.1:3, weight: 2}\n",
            worker,
        )
    }

    /// How many of `picks` each backend took.
    fn shares(v: &View, picks: usize, exclude: &[usize]) -> Vec<usize> {
        let mut got = vec![0; v.snapshot.services[0].backends.len()];
        for _ in 0..picks {
            got[idx(v.pick(0, exclude, false))] += 1;
        }
        got
    }

    #[test]
    fn weighted_picks_follow_the_schedule_and_hand_on_an_open_backends_turns_by_weight() {
        let v = weighted(0);
        let got: Vec<usize> = (0..12).map(|_| idx(v.pick(0, &[], false))).collect();
        assert_eq!(got, [0, 2, 0, 1, 2, 0, 0, 2, 0, 1, 2, 0]);
        // The other of two workers starts half a round on.
        let w = weighted(1);
        let got: Vec<usize> = (0..3).map(|_| idx(w.pick(0, &[], false))).collect();
        assert_eq!(got, [1, 2, 0]);
        // Backend 0 open: its turns go to the others by their weights, so they keep their
        // shares (1:2), and it is marked as wanted by a request (for the fleet's probes).
        open(&v, 0);
        let got = shares(&v, 600, &[]);
        assert_eq!(got[0], 0);
        assert!(
            got[1].abs_diff(200) <= 2 && got[2].abs_diff(400) <= 2,
            "{got:?}"
        );
        assert!(
            v.snapshot.services[0].backends[0]
                .wanted
                .load(Ordering::Relaxed)
                > 0
        );
        // A backend the request tried is left out alike.
        let got = shares(&v, 60, &[2]);
        assert_eq!(got, [0, 60, 0]);
        // Both others excluded: nothing to take the request but the open one.
        match v.pick(0, &[1, 2], false) {
            Pick::AllOpen { retry_after_secs } => assert!(retry_after_secs >= 1),
            other => panic!("{other:?}"),
        }
    }

    /// A review: with 2 000 weighted backends all open, a pick walked up to a whole round
    /// of turns (about 256 000), 3 ms of CPU a request; and a fleet down behind one light
    /// backend made every request walk to its one turn. A pick now moves one turn, and
    /// costs at most two passes over the backends and a plain scan (the cost itself is
    /// `bench/`'s to measure, never a test's).
    #[test]
    fn a_weighted_pick_with_most_circuits_open_costs_a_scan_not_a_round() {
        let mut text =
            String::from("services:\n  a:\n    - {url: http://127.0.0.1:1, weight: 1}\n");
        for i in 0..2000 {
            text.push_str(&format!(
                "    - {{url: http://127.0.0.2:{}, weight: 256}}\n",
                i + 2
            ));
        }
        let v = view_of(&text, 0);
        assert_eq!(v.snapshot.services[0].turns(), 2000 * 256 + 1);
        (1..=2000).for_each(|i| open(&v, i));
        for _ in 0..100 {
            assert_eq!(idx(v.pick(0, &[], false)), 0);
        }
        // Every pick went to the one backend left, one turn each.
        assert_eq!(v.cursors[0].get(), 100);
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
