//! Loom model of the packed breaker word: every interleaving of concurrent admissions and
//! outcomes, on loom's atomics, running the very code the gateway runs.

use gateway::breaker::{
    self, Policy, Snapshot, Transition, Word, BACKOFF, CLOSED, HALF_OPEN, OPEN,
};
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Arc;

struct LoomWord(AtomicU64);

impl Word for LoomWord {
    fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

const P: Policy = Policy {
    threshold: 3,
    cooldown_ms: 100,
    lease_ms: 50,
    prior_lease_ms: 0,
    prior_until_ms: 0,
};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// An open word one transition short of the epoch wrapping round: every test below that
/// transitions crosses from epoch 4095 to 0, so the wrap is inside every interleaving.
fn open_word() -> u64 {
    Snapshot {
        state: OPEN,
        count: 0,
        epoch: 4095,
        time_ms: 0,
    }
    .encode()
}

#[test]
fn exactly_one_probe_is_admitted() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(open_word())));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let w = w.clone();
                loom::thread::spawn(move || breaker::admit(&*w, 200, &P).is_some())
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(admitted, 1);
        assert_eq!(Snapshot::decode(w.load()).state, HALF_OPEN);
    });
}

#[test]
fn no_failure_count_is_lost() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(0)));
        let t0 = breaker::admit(&*w, 0, &P).unwrap();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let w = w.clone();
                loom::thread::spawn(move || {
                    breaker::failure(&*w, t0, 0, &P);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = Snapshot::decode(w.load());
        assert_eq!((s.state, s.count), (CLOSED, 2));
    });
}

#[test]
fn concurrent_failures_open_exactly_once_and_a_racing_success_is_consistent() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(0)));
        // Two failures already counted; one more opens.
        for _ in 0..2 {
            let t = breaker::admit(&*w, 0, &P).unwrap();
            breaker::failure(&*w, t, 0, &P);
        }
        let t = breaker::admit(&*w, 0, &P).unwrap();
        let (w1, w2) = (w.clone(), w.clone());
        let a = loom::thread::spawn(move || breaker::failure(&*w1, t, 5, &P));
        let b = loom::thread::spawn(move || breaker::failure(&*w2, t, 5, &P));
        let c = breaker::success(&*w, t, 5);
        let opened = [a.join().unwrap(), b.join().unwrap()]
            .iter()
            .filter(|&&tr| tr == breaker::Transition::Opened)
            .count();
        let s = Snapshot::decode(w.load());
        // The success may land first (reset to 0, then 2 failures: still closed) or in
        // between; either way at most one transition to OPEN, and the word is coherent.
        assert!(opened <= 1);
        assert_eq!(c, breaker::Transition::None);
        match s.state {
            OPEN => assert_eq!(opened, 1),
            CLOSED => assert_eq!(opened, 0),
            other => panic!("unexpected state {other}"),
        }
    });
}

#[test]
fn probe_outcome_and_lease_takeover_race_safely() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(open_word())));
        let probe = breaker::admit(&*w, 200, &P).unwrap();
        assert!(probe.is_probe());
        let w1 = w.clone();
        // A second worker sees the lease expired and takes over while the first reports.
        let taker = loom::thread::spawn(move || breaker::admit(&*w1, 260, &P));
        breaker::success(&*w, probe, 260);
        let took = taker
            .join()
            .unwrap()
            .expect("admitted either as probe or into a closed circuit");
        let s = Snapshot::decode(w.load());
        if took.is_probe() {
            // The takeover landed first: the old probe's success was stale and ignored.
            assert_eq!(s.state, HALF_OPEN);
        } else {
            // The success landed first and closed the circuit.
            assert_eq!(s.state, CLOSED);
        }
    });
}

#[test]
fn an_abandon_racing_a_lease_takeover_never_frees_a_second_probe() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(open_word())));
        let probe = breaker::admit(&*w, 200, &P).unwrap();
        assert_eq!(Snapshot::decode(w.load()).epoch, 0, "the epoch wrapped");
        let w1 = w.clone();
        let taker = loom::thread::spawn(move || breaker::admit(&*w1, 250, &P));
        let tr = breaker::abandon(&*w, probe, 250);
        let took = taker.join().unwrap();
        let s = Snapshot::decode(w.load());
        match (tr, took) {
            // The abandon landed first: BACKOFF, and 50 ms is inside the backoff.
            (Transition::BackedOff, None) => assert_eq!(s.state, BACKOFF),
            // The takeover landed first: the abandon was stale and did nothing.
            (Transition::None, Some(t)) => {
                assert!(t.is_probe());
                assert_eq!(s.state, HALF_OPEN);
            }
            other => panic!("inconsistent outcome {other:?} with state {}", s.state),
        }
    });
}

#[test]
fn a_renewing_probe_and_a_takeover_agree_on_one_probe() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(open_word())));
        let mut probe = breaker::admit(&*w, 200, &P).unwrap();
        let w1 = w.clone();
        // At 250 the lease (50 ms from 200) has just run out.
        let taker = loom::thread::spawn(move || breaker::admit(&*w1, 250, &P));
        let renewed = breaker::renew(&*w, &mut probe, 250);
        let took = taker.join().unwrap();
        // Exactly one of them holds the probe afterwards.
        assert!(
            renewed != took.is_some(),
            "renewed {renewed}, took {took:?}"
        );
        let closed = breaker::success(&*w, probe, 260) == Transition::Closed;
        assert_eq!(closed, renewed, "only a live probe may close the circuit");
    });
}

#[test]
fn a_handed_back_probes_success_and_the_next_probe_agree_on_who_decides() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(open_word())));
        let probe = breaker::admit(&*w, 200, &P).unwrap();
        let (tr, claim) = breaker::hand_back(&*w, probe, 210);
        assert_eq!(tr, Transition::BackedOff);
        let claim = claim.expect("a live probe's hand-back gives a claim");
        let w1 = w.clone();
        // At 310 the first backoff (100 ms, the cooldown) has run out: the next probe may go.
        let taker = loom::thread::spawn(move || breaker::admit(&*w1, 310, &P));
        let closed = breaker::success_after_hand_back(&*w, claim, 310);
        let took = taker
            .join()
            .unwrap()
            .expect("admitted as the probe or into a closed circuit");
        let s = Snapshot::decode(w.load());
        match (closed, took.is_probe()) {
            // The claim landed first: closed, and the other request went in as any other.
            (Transition::Closed, false) => assert_eq!(s.state, CLOSED),
            // The new probe landed first: the claim is stale, the new probe decides.
            (Transition::None, true) => assert_eq!(s.state, HALF_OPEN),
            other => panic!("inconsistent outcome {other:?} with state {}", s.state),
        }
        // The hand-back's old ticket never counts again, whoever won.
        assert_eq!(breaker::success(&*w, probe, 320), Transition::None);
    });
}

#[test]
fn a_probe_handed_back_twice_at_once_backs_off_once() {
    model(|| {
        let w = Arc::new(LoomWord(AtomicU64::new(open_word())));
        let probe = breaker::admit(&*w, 200, &P).unwrap();
        let w1 = w.clone();
        // The upload's own hand-back and its client vanishing, on the same ticket.
        let other = loom::thread::spawn(move || breaker::hand_back(&*w1, probe, 220));
        let (tr, claim) = breaker::hand_back(&*w, probe, 220);
        let (tr2, claim2) = other.join().unwrap();
        let backed_off = [tr, tr2]
            .iter()
            .filter(|&&t| t == Transition::BackedOff)
            .count();
        assert_eq!(backed_off, 1);
        assert_eq!(claim.is_some() as u8 + claim2.is_some() as u8, 1);
        let s = Snapshot::decode(w.load());
        assert_eq!((s.state, s.count), (BACKOFF, 1));
    });
}
