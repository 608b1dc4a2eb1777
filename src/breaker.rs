//! Per-backend circuit breaker: one packed `AtomicU64` shared by every worker.
//!
//! # The word
//!
//! | bits   | field    | meaning                                                              |
//! |--------|----------|----------------------------------------------------------------------|
//! | 0..2   | state    | 0 CLOSED, 1 OPEN, 2 HALF_OPEN                                        |
//! | 2..12  | failures | consecutive failures while CLOSED (saturates at 1023)                |
//! | 12..24 | epoch    | +1 (wrapping) on every state change: outcomes carry the epoch they were admitted in, so a stale one is recognised and ignored |
//! | 24..64 | time     | ms on the registry clock of the last state change: when it opened (OPEN) or when the probe was admitted (HALF_OPEN, the lease start) |
//!
//! Transitions (each one compare-and-swap on the whole word, so exactly one thread wins):
//! - CLOSED: a failure increments `failures`; at the threshold the word becomes OPEN.
//!   A success resets `failures`, and writes nothing when it is already zero.
//! - OPEN: skipped until `cooldown` has passed; then the first admission turns it HALF_OPEN
//!   and is the single probe.
//! - HALF_OPEN: skipped, unless the probe's lease ran out, in which case the next admission
//!   takes a fresh lease (new epoch: the old probe's outcome is now stale).
//!   Probe success → CLOSED; probe failure → OPEN (cooldown restarts); a probe dropped
//!   without an outcome → OPEN, immediately eligible for a new probe.
//!
//! The functions take `now` in milliseconds so tests drive the clock by hand, and they work
//! on any [`Word`], so the loom test can run the very same code on loom's atomics.

use std::sync::atomic::{AtomicU64, Ordering};

pub const CLOSED: u64 = 0;
pub const OPEN: u64 = 1;
pub const HALF_OPEN: u64 = 2;

const STATE_MASK: u64 = 0b11;
const FAIL_SHIFT: u32 = 2;
const FAIL_MAX: u64 = (1 << 10) - 1;
const EPOCH_SHIFT: u32 = 12;
const EPOCH_MASK: u64 = (1 << 12) - 1;
const TIME_SHIFT: u32 = 24;
const TIME_MAX: u64 = (1 << 40) - 1;

/// The atomic operations the breaker needs; implemented for `AtomicU64` and, in tests,
/// for loom's.
pub trait Word {
    fn load(&self) -> u64;
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64>;
}

impl Word for AtomicU64 {
    #[inline]
    fn load(&self) -> u64 {
        // Acquire pairs with the AcqRel of a winning CAS; the word is the only shared state.
        AtomicU64::load(self, Ordering::Acquire)
    }
    #[inline]
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

/// Decoded view of a breaker word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub state: u64,
    pub failures: u64,
    pub epoch: u64,
    pub time_ms: u64,
}

impl Snapshot {
    #[inline]
    pub fn decode(w: u64) -> Snapshot {
        Snapshot {
            state: w & STATE_MASK,
            failures: (w >> FAIL_SHIFT) & FAIL_MAX,
            epoch: (w >> EPOCH_SHIFT) & EPOCH_MASK,
            time_ms: w >> TIME_SHIFT,
        }
    }

    #[inline]
    pub fn encode(self) -> u64 {
        debug_assert!(self.state <= HALF_OPEN);
        self.state
            | (self.failures.min(FAIL_MAX) << FAIL_SHIFT)
            | ((self.epoch & EPOCH_MASK) << EPOCH_SHIFT)
            | (self.time_ms.min(TIME_MAX) << TIME_SHIFT)
    }

    /// The same word moved to `state` at `now`, with a new epoch and no failures.
    #[inline]
    fn transition(self, state: u64, now: u64) -> u64 {
        Snapshot {
            state,
            failures: 0,
            epoch: self.epoch.wrapping_add(1),
            time_ms: now,
        }
        .encode()
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            CLOSED => "closed",
            OPEN => "open",
            _ => "half_open",
        }
    }
}

/// Breaker parameters in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub threshold: u64,
    pub cooldown_ms: u64,
    /// How long a probe may stay unresolved before another request may probe instead.
    pub lease_ms: u64,
}

/// Proof of admission: which epoch the request was admitted in and whether it is the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    probe: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// What a reported outcome did to the circuit (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
    Reopened,
}

/// Asks to send a request to this backend. `None` means skip it.
#[inline]
pub fn admit<W: Word>(w: &W, now: u64, p: &Policy) -> Option<Ticket> {
    admit_with(w, || now, p)
}

/// [`admit`] that reads the clock only when the circuit is not CLOSED.
#[inline]
pub fn admit_with<W: Word>(w: &W, now: impl FnOnce() -> u64, p: &Policy) -> Option<Ticket> {
    let mut cur = w.load();
    let mut now = Some(now);
    let mut at = 0;
    loop {
        let s = Snapshot::decode(cur);
        let wait = match s.state {
            // The hot path: one load, no write.
            CLOSED => {
                return Some(Ticket {
                    epoch: s.epoch,
                    probe: false,
                })
            }
            OPEN => p.cooldown_ms,
            _ => p.lease_ms,
        };
        if let Some(read_clock) = now.take() {
            at = read_clock();
        }
        if at.saturating_sub(s.time_ms) < wait {
            return None;
        }
        let next = s.transition(HALF_OPEN, at);
        match w.compare_exchange(cur, next) {
            Ok(_) => {
                return Some(Ticket {
                    epoch: Snapshot::decode(next).epoch,
                    probe: true,
                })
            }
            // Another worker changed the word (most likely it became the probe): re-decide.
            Err(actual) => cur = actual,
        }
    }
}

/// Reports a success. Writes nothing unless it changes something.
#[inline]
pub fn success<W: Word>(w: &W, t: Ticket, now: u64) -> Transition {
    let mut cur = w.load();
    loop {
        let s = Snapshot::decode(cur);
        if s.epoch != t.epoch {
            return Transition::None; // stale: the circuit moved on since admission
        }
        let next = if t.probe {
            if s.state != HALF_OPEN {
                return Transition::None;
            }
            s.transition(CLOSED, now)
        } else {
            if s.state != CLOSED || s.failures == 0 {
                return Transition::None;
            }
            Snapshot { failures: 0, ..s }.encode()
        };
        match w.compare_exchange(cur, next) {
            Ok(_) => {
                return if t.probe {
                    Transition::Closed
                } else {
                    Transition::None
                }
            }
            Err(actual) => cur = actual, // a concurrent failure or transition: re-decide
        }
    }
}

/// Reports a failure.
#[inline]
pub fn failure<W: Word>(w: &W, t: Ticket, now: u64, p: &Policy) -> Transition {
    let mut cur = w.load();
    loop {
        let s = Snapshot::decode(cur);
        if s.epoch != t.epoch {
            return Transition::None;
        }
        let (next, tr) = if t.probe {
            if s.state != HALF_OPEN {
                return Transition::None;
            }
            (s.transition(OPEN, now), Transition::Reopened)
        } else {
            if s.state != CLOSED {
                return Transition::None;
            }
            let failures = s.failures + 1;
            if failures >= p.threshold {
                (s.transition(OPEN, now), Transition::Opened)
            } else {
                (Snapshot { failures, ..s }.encode(), Transition::None)
            }
        };
        match w.compare_exchange(cur, next) {
            Ok(_) => return tr,
            Err(actual) => cur = actual, // lost to a concurrent outcome: count on top of it
        }
    }
}

/// A probe that ends with no outcome (client gone, task dropped) hands the circuit back to
/// OPEN, already past its cooldown, so the next request probes again.
pub fn abandon<W: Word>(w: &W, t: Ticket, now: u64, p: &Policy) {
    if !t.probe {
        return;
    }
    let cur = w.load();
    let s = Snapshot::decode(cur);
    if s.state == HALF_OPEN && s.epoch == t.epoch {
        // Losing this CAS means someone else already moved the circuit on: nothing to undo.
        let _ = w.compare_exchange(cur, s.transition(OPEN, now.saturating_sub(p.cooldown_ms)));
    }
}

/// Milliseconds until an OPEN circuit admits a probe (0 if it would now).
pub fn retry_after_ms(word: u64, now: u64, p: &Policy) -> u64 {
    let s = Snapshot::decode(word);
    let wait = match s.state {
        CLOSED => return 0,
        OPEN => p.cooldown_ms,
        _ => p.lease_ms,
    };
    (s.time_ms + wait).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        threshold: 5,
        cooldown_ms: 1000,
        lease_ms: 300,
    };

    fn state(w: &AtomicU64) -> u64 {
        Snapshot::decode(Word::load(w)).state
    }

    #[test]
    fn word_round_trips() {
        let s = Snapshot {
            state: HALF_OPEN,
            failures: 7,
            epoch: 4095,
            time_ms: TIME_MAX,
        };
        assert_eq!(Snapshot::decode(s.encode()), s);
    }

    #[test]
    fn opens_after_exactly_threshold_failures() {
        let w = AtomicU64::new(0);
        for i in 1..P.threshold {
            let t = admit(&w, 10, &P).unwrap();
            assert_eq!(failure(&w, t, 10, &P), Transition::None);
            assert_eq!(Snapshot::decode(Word::load(&w)).failures, i);
        }
        let t = admit(&w, 10, &P).unwrap();
        assert_eq!(failure(&w, t, 10, &P), Transition::Opened);
        assert_eq!(state(&w), OPEN);
        assert!(admit(&w, 10 + P.cooldown_ms - 1, &P).is_none());
    }

    #[test]
    fn success_resets_and_zero_writes_nothing() {
        let w = AtomicU64::new(0);
        let t = admit(&w, 0, &P).unwrap();
        failure(&w, t, 0, &P);
        let t = admit(&w, 0, &P).unwrap();
        success(&w, t, 0);
        assert_eq!(Snapshot::decode(Word::load(&w)).failures, 0);
        // A word that refuses every write proves a success at zero failures does not write.
        struct NoWrite(u64);
        impl Word for NoWrite {
            fn load(&self) -> u64 {
                self.0
            }
            fn compare_exchange(&self, _: u64, _: u64) -> Result<u64, u64> {
                panic!("success wrote to the breaker word");
            }
        }
        let nw = NoWrite(Word::load(&w));
        let t = admit(&nw, 0, &P).unwrap();
        assert_eq!(success(&nw, t, 0), Transition::None);
    }

    fn open(w: &AtomicU64, now: u64) {
        for _ in 0..P.threshold {
            let t = admit(w, now, &P).unwrap();
            failure(w, t, now, &P);
        }
        assert_eq!(state(w), OPEN);
    }

    #[test]
    fn one_probe_after_cooldown_then_close_on_success() {
        let w = AtomicU64::new(0);
        open(&w, 100);
        let probe = admit(&w, 1100, &P).unwrap();
        assert!(probe.is_probe());
        assert!(admit(&w, 1100, &P).is_none(), "a second probe was admitted");
        assert_eq!(success(&w, probe, 1150), Transition::Closed);
        assert_eq!(state(&w), CLOSED);
        assert!(!admit(&w, 1150, &P).unwrap().is_probe());
    }

    #[test]
    fn probe_failure_reopens_and_restarts_cooldown() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        let probe = admit(&w, 1000, &P).unwrap();
        assert_eq!(failure(&w, probe, 1200, &P), Transition::Reopened);
        assert_eq!(state(&w), OPEN);
        assert!(admit(&w, 2100, &P).is_none());
        assert!(admit(&w, 2200, &P).unwrap().is_probe());
    }

    #[test]
    fn expired_lease_admits_a_new_probe_and_the_old_outcome_is_stale() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        let old = admit(&w, 1000, &P).unwrap();
        assert!(admit(&w, 1000 + P.lease_ms - 1, &P).is_none());
        let new = admit(&w, 1000 + P.lease_ms, &P).unwrap();
        assert!(new.is_probe());
        assert_eq!(success(&w, old, 1400), Transition::None);
        assert_eq!(state(&w), HALF_OPEN);
        assert_eq!(failure(&w, new, 1400, &P), Transition::Reopened);
    }

    #[test]
    fn abandoned_probe_lets_the_next_request_probe() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        let probe = admit(&w, 5000, &P).unwrap();
        abandon(&w, probe, 5000, &P);
        assert_eq!(state(&w), OPEN);
        assert!(admit(&w, 5000, &P).unwrap().is_probe());
    }

    #[test]
    fn stale_closed_outcomes_do_not_touch_a_new_period() {
        let w = AtomicU64::new(0);
        let early = admit(&w, 0, &P).unwrap();
        open(&w, 0);
        let probe = admit(&w, 1000, &P).unwrap();
        success(&w, probe, 1000);
        // `early` was admitted before the circuit opened and closed again.
        assert_eq!(failure(&w, early, 1000, &P), Transition::None);
        assert_eq!(Snapshot::decode(Word::load(&w)).failures, 0);
    }

    #[test]
    fn retry_after_counts_down() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        assert_eq!(retry_after_ms(Word::load(&w), 400, &P), 600);
        assert_eq!(retry_after_ms(Word::load(&w), 5000, &P), 0);
    }

    mod model {
        //! Property test: the packed word against a plain, obviously correct state machine.
        use super::super::*;
        use super::P;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Admit,
            Succeed(usize),
            Fail(usize),
            Drop(usize),
            Advance(u64),
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum MState {
            Closed(u64),
            Open(u64),
            HalfOpen(u64, u64), // (lease start, probe id)
        }

        /// The reference: an enum and a counter, with ids instead of epochs.
        struct Model {
            st: MState,
            period: u64,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Admit),
                2 => (0usize..8).prop_map(Op::Succeed),
                3 => (0usize..8).prop_map(Op::Fail),
                1 => (0usize..8).prop_map(Op::Drop),
                2 => (0u64..700).prop_map(Op::Advance),
            ]
        }

        proptest! {
            #[test]
            fn packed_word_matches_reference(ops in proptest::collection::vec(op(), 1..200)) {
                let w = AtomicU64::new(0);
                let mut m = Model { st: MState::Closed(0), period: 0 };
                let mut now = 0u64;
                // Outstanding tickets: (real ticket, model period it was admitted in, probe).
                let mut tickets: Vec<(Ticket, u64, bool)> = Vec::new();
                for o in ops {
                    match o {
                        Op::Advance(d) => now += d,
                        Op::Admit => {
                            let real = admit(&w, now, &P);
                            let expect = match m.st {
                                MState::Closed(_) => Some(false),
                                MState::Open(t) if now - t >= P.cooldown_ms => {
                                    m.period += 1;
                                    m.st = MState::HalfOpen(now, m.period);
                                    Some(true)
                                }
                                MState::HalfOpen(t, _) if now - t >= P.lease_ms => {
                                    m.period += 1;
                                    m.st = MState::HalfOpen(now, m.period);
                                    Some(true)
                                }
                                _ => None,
                            };
                            prop_assert_eq!(real.map(|t| t.is_probe()), expect);
                            if let Some(t) = real {
                                tickets.push((t, m.period, t.is_probe()));
                            }
                        }
                        Op::Succeed(i) | Op::Fail(i) | Op::Drop(i) if i < tickets.len() => {
                            let (t, period, probe) = tickets.remove(i);
                            let current = period == m.period;
                            match o {
                                Op::Succeed(_) => {
                                    success(&w, t, now);
                                    if current {
                                        m.st = match m.st {
                                            MState::Closed(_) if !probe => MState::Closed(0),
                                            MState::HalfOpen(..) if probe => { m.period += 1; MState::Closed(0) }
                                            s => s,
                                        };
                                    }
                                }
                                Op::Fail(_) => {
                                    failure(&w, t, now, &P);
                                    if current {
                                        m.st = match m.st {
                                            MState::Closed(f) if !probe && f + 1 >= P.threshold => { m.period += 1; MState::Open(now) }
                                            MState::Closed(f) if !probe => MState::Closed(f + 1),
                                            MState::HalfOpen(..) if probe => { m.period += 1; MState::Open(now) }
                                            s => s,
                                        };
                                    }
                                }
                                _ => {
                                    abandon(&w, t, now, &P);
                                    if current && probe {
                                        if let MState::HalfOpen(..) = m.st {
                                            m.period += 1;
                                            m.st = MState::Open(now.saturating_sub(P.cooldown_ms));
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    let s = Snapshot::decode(Word::load(&w));
                    match m.st {
                        MState::Closed(f) => { prop_assert_eq!(s.state, CLOSED); prop_assert_eq!(s.failures, f); }
                        MState::Open(t) => { prop_assert_eq!(s.state, OPEN); prop_assert_eq!(s.time_ms, t); }
                        MState::HalfOpen(t, _) => { prop_assert_eq!(s.state, HALF_OPEN); prop_assert_eq!(s.time_ms, t); }
                    }
                }
            }
        }
    }
}
