//! Per-backend circuit breaker: one packed `AtomicU64` shared by every worker.
//!
//! # The word
//!
//! | bits   | field | meaning                                                                 |
//! |--------|-------|-------------------------------------------------------------------------|
//! | 0..2   | state | 0 CLOSED, 1 OPEN, 2 HALF_OPEN, 3 BACKOFF (open after an abandoned probe)  |
//! | 2..12  | count | CLOSED: consecutive failures; otherwise: consecutive abandoned probes (saturates at 1023) |
//! | 12..24 | epoch | +1 (wrapping) on every state change                                     |
//! | 24..64 | time  | ms on the registry clock of the last state change (or lease renewal); never decreases |
//!
//! A [`Ticket`] carries the word's *stamp*, epoch and time together (bits 12..64). An outcome
//! counts only if the stamp still matches, so a stale one is recognised for any number of
//! transitions: the time never decreases, and every transition that can follow another
//! within the same millisecond must first wait for a cooldown, backoff or lease of at least
//! 1 ms, so at most three transitions share one time value and the 12-bit epoch can never
//! come round to the same stamp.
//!
//! Transitions (each one compare-and-swap on the whole word, so exactly one thread wins):
//! - CLOSED: a failure increments `count`; at the threshold the word becomes OPEN.
//!   A success resets `count`, and writes nothing when it is already zero.
//! - OPEN: skipped until `cooldown` has passed; then the first admission turns it HALF_OPEN
//!   and is the single probe.
//! - HALF_OPEN: skipped, unless the probe's lease ran out (a lost task: every live probe
//!   renews its lease as it makes progress), in which case the next admission takes a fresh
//!   lease (new stamp: the old probe's outcome is now stale).
//!   Probe success → CLOSED; probe failure → OPEN (cooldown restarts); a probe abandoned
//!   before its request was sent whole (the client vanished) → BACKOFF; a probe handed back
//!   (its client kept its upload waiting) → BACKOFF, and its later success → CLOSED while
//!   that BACKOFF word stands ([`hand_back`]; one more transition that may share a
//!   millisecond with the one before it, far from the epoch's 4096).
//! - BACKOFF: like OPEN, but the next probe may go after [`PROBE_BACKOFF_MS`], doubled for
//!   every consecutive abandoned probe, never longer than the cooldown. Clients that keep
//!   abandoning probes get a handful of partial requests through, then one per cooldown.
//!
//! The functions take `now` in milliseconds so tests drive the clock by hand, and they work
//! on any [`Word`], so the loom test can run the very same code on loom's atomics.

use std::sync::atomic::{AtomicU64, Ordering};

pub const CLOSED: u64 = 0;
pub const OPEN: u64 = 1;
pub const HALF_OPEN: u64 = 2;
pub const BACKOFF: u64 = 3;

/// The wait after the first abandoned probe before the next may go (doubles per repeat).
pub const PROBE_BACKOFF_MS: u64 = 1000;

const STATE_MASK: u64 = 0b11;
const COUNT_SHIFT: u32 = 2;
const COUNT_MAX: u64 = (1 << 10) - 1;
const EPOCH_SHIFT: u32 = 12;
const EPOCH_MASK: u64 = (1 << 12) - 1;
const TIME_SHIFT: u32 = 24;
const TIME_MAX: u64 = (1 << 40) - 1;
/// Epoch and time: what a ticket must still match for its outcome to count.
const STAMP_MASK: u64 = !((1 << EPOCH_SHIFT) - 1);

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
    /// Consecutive failures (CLOSED) or consecutive abandoned probes (other states).
    pub count: u64,
    pub epoch: u64,
    pub time_ms: u64,
}

impl Snapshot {
    #[inline]
    pub fn decode(w: u64) -> Snapshot {
        Snapshot {
            state: w & STATE_MASK,
            count: (w >> COUNT_SHIFT) & COUNT_MAX,
            epoch: (w >> EPOCH_SHIFT) & EPOCH_MASK,
            time_ms: w >> TIME_SHIFT,
        }
    }

    #[inline]
    pub fn encode(self) -> u64 {
        (self.state & STATE_MASK)
            | (self.count.min(COUNT_MAX) << COUNT_SHIFT)
            | ((self.epoch & EPOCH_MASK) << EPOCH_SHIFT)
            | (self.time_ms.min(TIME_MAX) << TIME_SHIFT)
    }

    /// The same word moved to `state` at `now` (never earlier than its last change), with a
    /// new epoch and the given count.
    #[inline]
    fn transition(self, state: u64, count: u64, now: u64) -> u64 {
        Snapshot {
            state,
            count,
            epoch: self.epoch.wrapping_add(1),
            time_ms: now.max(self.time_ms),
        }
        .encode()
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            CLOSED => "closed",
            HALF_OPEN => "half_open",
            _ => "open",
        }
    }
}

/// Breaker parameters in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub threshold: u64,
    /// At least 1 (see the stamp argument in the module docs).
    pub cooldown_ms: u64,
    /// How long a probe may go without progress before another request may probe instead;
    /// at least 1.
    pub lease_ms: u64,
    /// The lease of the config before the last reload, kept until `prior_until_ms` (registry
    /// clock) when it is longer: a probe admitted under it runs on that config's timeouts,
    /// and a reload that shortened them must not let a second probe in beside it.
    pub prior_lease_ms: u64,
    pub prior_until_ms: u64,
}

impl Policy {
    /// How much longer a `streaming` request waits to become the probe (see
    /// [`admit_with`]).
    #[inline]
    pub fn streaming_extra_ms(&self, streaming: bool) -> u64 {
        match streaming {
            true => self.cooldown_ms.clamp(1, STREAMING_PROBE_WAIT_MS),
            false => 0,
        }
    }

    /// The lease in force at `now` (see [`Policy::prior_lease_ms`]).
    #[inline]
    pub fn lease_at(&self, now: u64) -> u64 {
        match now < self.prior_until_ms {
            true => self.lease_ms.max(self.prior_lease_ms),
            false => self.lease_ms,
        }
    }

    /// How long a circuit in `state` with `count` waits at `now` before admitting a probe.
    #[inline]
    fn wait_ms(&self, state: u64, count: u64, now: u64) -> u64 {
        let cooldown = self.cooldown_ms.max(1);
        match state {
            OPEN => cooldown,
            HALF_OPEN => self.lease_at(now).max(1),
            _ => {
                let doublings = count.saturating_sub(1).min(32) as u32;
                PROBE_BACKOFF_MS
                    .min(cooldown)
                    .saturating_mul(1 << doublings)
                    .min(cooldown)
            }
        }
    }
}

/// Proof of admission: the stamp the request was admitted under and whether it is the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    stamp: u64,
    probe: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    #[inline]
    fn matches(&self, word: u64) -> bool {
        word & STAMP_MASK == self.stamp
    }
}

/// What a reported outcome did to the circuit (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Closed,
    Reopened,
    /// A probe was abandoned before its request was sent whole.
    BackedOff,
}

/// Asks to send a request to this backend. `None` means skip it.
#[inline]
pub fn admit<W: Word>(w: &W, now: u64, p: &Policy) -> Option<Ticket> {
    admit_with(w, || now, p, false)
}

/// How much longer than others a request still streaming its body waits to become the
/// probe (at most a cooldown). A second: requests with their body in hand take the probe
/// first wherever traffic is not sparse, and a clustered instance, which has the fleet's
/// probe for `cluster::GRANT_MS` (3 s) with its circuit due within `MAX_HOLD_MS` (1 s),
/// still lets an upload probe within that grant.
pub const STREAMING_PROBE_WAIT_MS: u64 = 1000;

/// [`admit`] that reads the clock only when the circuit is not CLOSED. A `streaming`
/// request (its body still to come from the client) becomes the probe only once the
/// circuit has been due for [`STREAMING_PROBE_WAIT_MS`] (or a cooldown, if shorter) with
/// no other taker: a probe's lease is renewed by each body chunk, so a slow uploader as the
/// probe would keep the circuit half-open, and every other request out, for as long as it
/// pleased.
#[inline]
pub fn admit_with<W: Word>(
    w: &W,
    now: impl FnOnce() -> u64,
    p: &Policy,
    streaming: bool,
) -> Option<Ticket> {
    let mut cur = w.load();
    let mut now = Some(now);
    let mut at = 0;
    loop {
        let s = Snapshot::decode(cur);
        if s.state == CLOSED {
            // The hot path: one load, no write.
            return Some(Ticket {
                stamp: cur & STAMP_MASK,
                probe: false,
            });
        }
        if let Some(read_clock) = now.take() {
            at = read_clock();
        }
        let wait = p.wait_ms(s.state, s.count, at) + p.streaming_extra_ms(streaming);
        if at.saturating_sub(s.time_ms) < wait {
            return None;
        }
        // The abandon count carries into the probe, so that abandoning it backs off longer.
        let count = if s.state == OPEN { 0 } else { s.count };
        let next = s.transition(HALF_OPEN, count, at);
        match w.compare_exchange(cur, next) {
            Ok(_) => {
                return Some(Ticket {
                    stamp: next & STAMP_MASK,
                    probe: true,
                })
            }
            // Another worker changed the word (most likely it became the probe): re-decide.
            Err(actual) => cur = actual,
        }
    }
}

/// Extends a live probe's lease to `now` (it is making progress). Returns false, and leaves
/// the word alone, when the ticket is no probe or is stale (the probe lost its lease).
#[inline]
pub fn renew<W: Word>(w: &W, t: &mut Ticket, now: u64) -> bool {
    if !t.probe {
        return false;
    }
    let cur = w.load();
    let s = Snapshot::decode(cur);
    if s.state != HALF_OPEN || !t.matches(cur) {
        return false;
    }
    if now <= s.time_ms {
        return true;
    }
    let next = Snapshot { time_ms: now, ..s }.encode();
    // Only the probe itself writes a HALF_OPEN word with its stamp, and a takeover or
    // outcome changes the epoch: losing this CAS means the probe is stale.
    match w.compare_exchange(cur, next) {
        Ok(_) => {
            t.stamp = next & STAMP_MASK;
            true
        }
        Err(_) => false,
    }
}

/// Reports a success. Writes nothing unless it changes something.
#[inline]
pub fn success<W: Word>(w: &W, t: Ticket, now: u64) -> Transition {
    let mut cur = w.load();
    loop {
        if !t.matches(cur) {
            return Transition::None; // stale: the circuit moved on since admission
        }
        let s = Snapshot::decode(cur);
        let next = if t.probe {
            if s.state != HALF_OPEN {
                return Transition::None;
            }
            s.transition(CLOSED, 0, now)
        } else {
            if s.state != CLOSED || s.count == 0 {
                return Transition::None;
            }
            Snapshot { count: 0, ..s }.encode()
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
        if !t.matches(cur) {
            return Transition::None;
        }
        let s = Snapshot::decode(cur);
        let (next, tr) = if t.probe {
            if s.state != HALF_OPEN {
                return Transition::None;
            }
            (s.transition(OPEN, 0, now), Transition::Reopened)
        } else {
            if s.state != CLOSED {
                return Transition::None;
            }
            let failures = s.count + 1;
            if failures >= p.threshold {
                (s.transition(OPEN, 0, now), Transition::Opened)
            } else {
                (
                    Snapshot {
                        count: failures,
                        ..s
                    }
                    .encode(),
                    Transition::None,
                )
            }
        };
        match w.compare_exchange(cur, next) {
            Ok(_) => return tr,
            Err(actual) => cur = actual, // lost to a concurrent outcome: count on top of it
        }
    }
}

/// A probe abandoned before its request was sent whole (the client vanished or sent a
/// broken body) hands the circuit to BACKOFF: the next probe waits a short, growing backoff.
pub fn abandon<W: Word>(w: &W, t: Ticket, now: u64) -> Transition {
    hand_back(w, t, now).0
}

/// A probe still streaming its body whose client keeps it waiting hands the probe back: as
/// [`abandon`] (which is this without the claim), and returns a claim on the BACKOFF word
/// it wrote. Its answer, if it is a
/// success, closes the circuit through [`success_after_hand_back`] while that word stands
/// (no other probe admitted since, no remote change): a service whose every request is a
/// long upload still recovers once a backoff outlasts one.
pub fn hand_back<W: Word>(w: &W, t: Ticket, now: u64) -> (Transition, Option<Ticket>) {
    if !t.probe {
        return (Transition::None, None);
    }
    let cur = w.load();
    let s = Snapshot::decode(cur);
    if s.state != HALF_OPEN || !t.matches(cur) {
        return (Transition::None, None);
    }
    let next = s.transition(BACKOFF, s.count + 1, now);
    match w.compare_exchange(cur, next) {
        Ok(_) => (
            Transition::BackedOff,
            Some(Ticket {
                stamp: next & STAMP_MASK,
                probe: true,
            }),
        ),
        Err(_) => (Transition::None, None),
    }
}

/// The success of a probe that was handed back ([`hand_back`]): closes the circuit if the
/// word is still the BACKOFF word the hand-back wrote; else nothing (newer evidence, or a
/// newer probe, decides).
pub fn success_after_hand_back<W: Word>(w: &W, claim: Ticket, now: u64) -> Transition {
    let cur = w.load();
    let s = Snapshot::decode(cur);
    if !claim.probe || s.state != BACKOFF || !claim.matches(cur) {
        return Transition::None;
    }
    match w.compare_exchange(cur, s.transition(CLOSED, 0, now)) {
        Ok(_) => Transition::Closed,
        Err(_) => Transition::None,
    }
}

/// The earliest a circuit last seen as `word` (OPEN or BACKOFF) could admit a probe, never
/// after `now`; 0 for a word already probing, whose time tells nothing of when its probe
/// began (each renewal of the lease moves it on). Bounds, in the fleet (`cluster.rs`), when
/// the probe that closed the circuit began.
pub fn probe_admitted_by(word: u64, now: u64, p: &Policy) -> u64 {
    let s = Snapshot::decode(word);
    match s.state {
        HALF_OPEN | CLOSED => 0,
        _ => s
            .time_ms
            .saturating_add(p.wait_ms(s.state, s.count, now))
            .min(now),
    }
}

/// Milliseconds until a circuit admits a probe (0 if closed or it would now).
pub fn retry_after_ms(word: u64, now: u64, p: &Policy) -> u64 {
    retry_after_for(word, now, p, false)
}

/// [`retry_after_ms`] for a request that is `streaming` its body (see [`admit_with`]).
pub fn retry_after_for(word: u64, now: u64, p: &Policy, streaming: bool) -> u64 {
    let s = Snapshot::decode(word);
    if s.state == CLOSED {
        return 0;
    }
    (s.time_ms + p.wait_ms(s.state, s.count, now) + p.streaming_extra_ms(streaming))
        .saturating_sub(now)
}

/// What a 503's `Retry-After` tells clients: [`retry_after_for`], except while a probe is in
/// flight (HALF_OPEN), when it says 1 s. The probe's lease is only how long a lost probe
/// may hold the circuit (up to 61 s with the default timeouts), and a live one usually
/// settles it within its response time: a client told the lease came back half a minute
/// after the circuit had closed (an operator review).
pub fn retry_hint_ms(word: u64, now: u64, p: &Policy, streaming: bool) -> u64 {
    let wait = retry_after_for(word, now, p, streaming);
    match Snapshot::decode(word).state {
        HALF_OPEN => wait.min(1000),
        _ => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        threshold: 5,
        cooldown_ms: 1000,
        lease_ms: 300,
        prior_lease_ms: 0,
        prior_until_ms: 0,
    };

    fn state(w: &AtomicU64) -> u64 {
        Snapshot::decode(Word::load(w)).state
    }

    #[test]
    fn word_round_trips() {
        let s = Snapshot {
            state: BACKOFF,
            count: 7,
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
            assert_eq!(Snapshot::decode(Word::load(&w)).count, i);
        }
        let t = admit(&w, 10, &P).unwrap();
        assert_eq!(failure(&w, t, 10, &P), Transition::Opened);
        assert_eq!(state(&w), OPEN);
        assert!(admit(&w, 10 + P.cooldown_ms - 1, &P).is_none());
    }

    #[test]
    fn a_closing_probe_was_admitted_no_later_than_the_circuit_allowed() {
        let p = P;
        let word = |state, count, time_ms| {
            Snapshot {
                state,
                count,
                epoch: 1,
                time_ms,
            }
            .encode()
        };
        // Seen probing: its time is the last renewal's, no bound.
        assert_eq!(probe_admitted_by(word(HALF_OPEN, 0, 5000), 9000, &p), 0);
        // Seen open: not before its cooldown ended; backing off: not before the backoff did.
        assert_eq!(probe_admitted_by(word(OPEN, 0, 5000), 9000, &p), 6000);
        assert!(probe_admitted_by(word(BACKOFF, 1, 5000), 9000, &p) > 5000);
        // Never after the close itself.
        assert_eq!(probe_admitted_by(word(OPEN, 0, 5000), 5500, &p), 5500);
    }

    #[test]
    fn success_resets_and_zero_writes_nothing() {
        let w = AtomicU64::new(0);
        let t = admit(&w, 0, &P).unwrap();
        failure(&w, t, 0, &P);
        let t = admit(&w, 0, &P).unwrap();
        success(&w, t, 0);
        assert_eq!(Snapshot::decode(Word::load(&w)).count, 0);
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

    /// Regression (an operator review): with a probe in flight, 503s told clients to come
    /// back after the probe's lease (61 s with the default timeouts), though the probe
    /// usually settles the circuit within its response time.
    #[test]
    fn a_half_open_circuit_asks_clients_back_within_a_second() {
        let p = Policy {
            lease_ms: 61_000,
            ..P
        };
        let w = AtomicU64::new(0);
        open(&w, 1000);
        let due = 1000 + p.cooldown_ms;
        assert_eq!(
            retry_hint_ms(Word::load(&w), 1000, &p, false),
            p.cooldown_ms
        );
        assert!(admit(&w, due, &p).is_some_and(|t| t.is_probe()));
        assert_eq!(state(&w), HALF_OPEN);
        assert_eq!(retry_after_ms(Word::load(&w), due, &p), 61_000);
        assert_eq!(retry_hint_ms(Word::load(&w), due, &p, false), 1000);
        assert_eq!(retry_hint_ms(Word::load(&w), due + 60_500, &p, false), 500);
    }

    #[test]
    fn a_streaming_request_probes_only_after_a_further_wait() {
        let extra = P.cooldown_ms.min(STREAMING_PROBE_WAIT_MS);
        let w = AtomicU64::new(0);
        open(&w, 1000);
        let due = 1000 + P.cooldown_ms;
        // Due for a probe: a request with its body in hand takes it, a streaming one not,
        // and each is told when it may.
        assert_eq!(retry_after_ms(Word::load(&w), due, &P), 0);
        assert_eq!(retry_after_for(Word::load(&w), due, &P, true), extra);
        assert_eq!(
            retry_after_for(Word::load(&w), due + 10, &P, true),
            extra - 10
        );
        assert!(admit_with(&w, || due, &P, true).is_none());
        assert!(admit_with(&w, || due + extra - 1, &P, true).is_none());
        assert_eq!(state(&w), OPEN);
        // Nobody else came for the further wait: the streaming request may probe.
        let t = admit_with(&w, || due + extra, &P, true).unwrap();
        assert!(t.is_probe());
        assert_eq!(state(&w), HALF_OPEN);
        // A closed circuit admits streaming requests as any other.
        assert_eq!(success(&w, t, due + extra), Transition::Closed);
        assert!(admit_with(&w, || 0, &P, true).is_some_and(|t| !t.is_probe()));
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
    fn a_probe_handed_back_closes_with_its_success_while_nothing_else_happened() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        let probe = admit(&w, 1000, &P).unwrap();
        let (tr, claim) = hand_back(&w, probe, 1500);
        assert_eq!((tr, state(&w)), (Transition::BackedOff, BACKOFF));
        let claim = claim.unwrap();
        // Nothing else came: its success closes.
        assert_eq!(success_after_hand_back(&w, claim, 1600), Transition::Closed);
        assert_eq!(state(&w), CLOSED);
        // Once only: the word moved on.
        assert_eq!(success_after_hand_back(&w, claim, 1700), Transition::None);
        // Another probe admitted since: the claim is stale, that probe decides.
        open(&w, 2000);
        let first = admit(&w, 3000, &P).unwrap();
        let claim = hand_back(&w, first, 3100).1.unwrap();
        let next = admit(&w, 3100 + PROBE_BACKOFF_MS, &P).unwrap();
        assert!(next.is_probe());
        assert_eq!(success_after_hand_back(&w, claim, 4200), Transition::None);
        assert_eq!(state(&w), HALF_OPEN);
        assert_eq!(failure(&w, next, 4300, &P), Transition::Reopened);
        // Reopened since: still stale.
        assert_eq!(success_after_hand_back(&w, claim, 4400), Transition::None);
        assert_eq!(state(&w), OPEN);
        // A ticket that is no probe, or a stale one, hands nothing back.
        assert_eq!(hand_back(&w, first, 4500), (Transition::None, None));
        let w = AtomicU64::new(0);
        let plain = admit(&w, 0, &P).unwrap();
        assert!(!plain.is_probe());
        assert_eq!(hand_back(&w, plain, 10), (Transition::None, None));
        assert_eq!(state(&w), CLOSED);
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
    fn a_lease_owed_from_before_a_reload_holds_until_it_ends() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        let p = Policy {
            prior_lease_ms: 3000,
            prior_until_ms: 10_000,
            ..P
        };
        let _probe = admit(&w, 1000, &p).unwrap();
        assert!(admit(&w, 1000 + p.lease_ms, &p).is_none());
        assert!(admit(&w, 3999, &p).is_none());
        assert!(admit(&w, 4000, &p).unwrap().is_probe());
        assert_eq!(retry_after_ms(w.load(Ordering::Relaxed), 4000, &p), 3000);
        // After `prior_until_ms`, the policy's own lease.
        assert_eq!(p.lease_at(9_999), 3000);
        assert_eq!(p.lease_at(10_000), p.lease_ms);
    }

    #[test]
    fn a_renewed_lease_keeps_a_slow_probe_the_only_one() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        let mut probe = admit(&w, 1000, &P).unwrap();
        // Progress every 200 ms for far longer than one lease.
        for now in (1200..=3000).step_by(200) {
            assert!(admit(&w, now, &P).is_none(), "second probe at {now}");
            assert!(renew(&w, &mut probe, now));
        }
        assert_eq!(success(&w, probe, 3100), Transition::Closed);
        // A probe that lost its lease cannot renew it back, nor report.
        open(&w, 4000);
        let mut lost = admit(&w, 5000, &P).unwrap();
        let taker = admit(&w, 5000 + P.lease_ms, &P).unwrap();
        assert!(!renew(&w, &mut lost, 5400));
        assert_eq!(failure(&w, lost, 5400, &P), Transition::None);
        assert_eq!(success(&w, taker, 5400), Transition::Closed);
        // Tickets of requests admitted while CLOSED are no probes: renewing does nothing.
        let mut plain = admit(&w, 5500, &P).unwrap();
        assert!(!renew(&w, &mut plain, 5600));
    }

    #[test]
    fn abandoned_probes_back_off_growing_up_to_the_cooldown() {
        let p = Policy {
            threshold: 1,
            cooldown_ms: 60_000,
            lease_ms: 300,
            prior_lease_ms: 0,
            prior_until_ms: 0,
        };
        let w = AtomicU64::new(0);
        let t = admit(&w, 0, &p).unwrap();
        failure(&w, t, 0, &p);
        let mut now = p.cooldown_ms;
        let mut waits = Vec::new();
        for _ in 0..9 {
            let probe = admit(&w, now, &p).unwrap();
            assert!(probe.is_probe());
            assert_eq!(abandon(&w, probe, now), Transition::BackedOff);
            assert_eq!(state(&w), BACKOFF);
            let wait = retry_after_ms(Word::load(&w), now, &p);
            assert!(admit(&w, now + wait - 1, &p).is_none());
            waits.push(wait);
            now += wait;
        }
        assert_eq!(
            waits,
            [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
        );
        // A probe that ends with a verdict resets the backoff.
        let probe = admit(&w, now, &p).unwrap();
        assert_eq!(failure(&w, probe, now, &p), Transition::Reopened);
        let probe = admit(&w, now + p.cooldown_ms, &p).unwrap();
        abandon(&w, probe, now + p.cooldown_ms);
        assert_eq!(
            retry_after_ms(Word::load(&w), now + p.cooldown_ms, &p),
            1000
        );
    }

    #[test]
    fn backoff_is_never_longer_than_a_short_cooldown() {
        let p = Policy {
            threshold: 1,
            cooldown_ms: 200,
            lease_ms: 300,
            prior_lease_ms: 0,
            prior_until_ms: 0,
        };
        let w = AtomicU64::new(0);
        let t = admit(&w, 0, &p).unwrap();
        failure(&w, t, 0, &p);
        let probe = admit(&w, 200, &p).unwrap();
        abandon(&w, probe, 200);
        assert_eq!(retry_after_ms(Word::load(&w), 200, &p), 200);
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
        assert_eq!(Snapshot::decode(Word::load(&w)).count, 0);
    }

    /// Drives the circuit through `cycles` open → probe → close cycles (3 transitions each),
    /// as fast as the policy allows.
    fn cycle(w: &AtomicU64, p: &Policy, now: &mut u64, cycles: usize) {
        for _ in 0..cycles {
            for _ in 0..p.threshold {
                let t = admit(w, *now, p).unwrap();
                failure(w, t, *now, p);
            }
            *now += p.cooldown_ms;
            let probe = admit(w, *now, p).unwrap();
            assert_eq!(success(w, probe, *now), Transition::Closed);
        }
    }

    #[test]
    fn a_stale_ticket_never_counts_again_after_the_epoch_wraps() {
        let p = Policy {
            threshold: 1,
            cooldown_ms: 1,
            lease_ms: 1,
            prior_lease_ms: 0,
            prior_until_ms: 0,
        };
        for cycles in [4096 / 3, 4096, 4096 * 2 + 1, 4096 * 3] {
            let w = AtomicU64::new(0);
            let mut now = 5;
            let early = admit(&w, now, &p).unwrap();
            cycle(&w, &p, &mut now, cycles);
            let s = Snapshot::decode(Word::load(&w));
            assert_eq!(s.state, CLOSED);
            assert_eq!(
                failure(&w, early, now, &p),
                Transition::None,
                "a ticket from {} transitions ago counted",
                cycles * 3
            );
            assert_eq!(state(&w), CLOSED);
        }
    }

    #[test]
    fn transitions_in_one_millisecond_are_bounded() {
        // The stamp argument: with the clock stopped, no sequence of calls gets more than
        // three transitions out of the word.
        let p = Policy {
            threshold: 1,
            cooldown_ms: 1,
            lease_ms: 1,
            prior_lease_ms: 0,
            prior_until_ms: 0,
        };
        let w = AtomicU64::new(0);
        let start = Snapshot::decode(Word::load(&w)).epoch;
        // Get to HALF_OPEN at t = 10, then hammer at t = 10 only.
        let t = admit(&w, 9, &p).unwrap();
        failure(&w, t, 9, &p);
        for _ in 0..10_000 {
            if let Some(t) = admit(&w, 10, &p) {
                if t.is_probe() {
                    success(&w, t, 10);
                } else {
                    failure(&w, t, 10, &p);
                }
            }
        }
        let moved = Snapshot::decode(Word::load(&w)).epoch.wrapping_sub(start) & EPOCH_MASK;
        assert!(moved <= 5, "{moved} transitions with the clock stopped");
    }

    #[test]
    fn time_never_goes_back() {
        let w = AtomicU64::new(0);
        open(&w, 5000);
        // A worker that read the clock a little earlier reports after the transition.
        let probe = admit(&w, 6000, &P).unwrap();
        failure(&w, probe, 5990, &P);
        assert_eq!(Snapshot::decode(Word::load(&w)).time_ms, 6000);
    }

    #[test]
    fn retry_after_counts_down() {
        let w = AtomicU64::new(0);
        open(&w, 0);
        assert_eq!(retry_after_ms(Word::load(&w), 400, &P), 600);
        assert_eq!(retry_after_ms(Word::load(&w), 5000, &P), 0);
    }

    mod model {
        //! Property test: the packed word against a plain, obviously correct state machine
        //! with ids instead of stamps (so it is immune to wrap-around by construction).
        use super::super::*;
        use super::{cycle, P};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Admit,
            Succeed(usize),
            Fail(usize),
            Abandon(usize),
            Renew(usize),
            /// A probe hands the probe back; its claim joins the claims.
            HandBack(usize),
            /// A claim's success ([`success_after_hand_back`]).
            ClaimSucceed(usize),
            Advance(u64),
            /// Exactly 4096 transitions (a full epoch turn) through both.
            Wrap,
        }

        #[derive(Debug, Clone, Copy, PartialEq)]
        enum MState {
            Closed(u64),
            Open(u64),
            HalfOpen(u64, u64), // (lease start, abandons so far)
            Backoff(u64, u64),  // (since, abandons)
        }

        /// The reference: an enum and a counter.
        struct Model {
            st: MState,
            period: u64,
        }

        impl Model {
            fn wait(&self) -> Option<(u64, u64)> {
                match self.st {
                    MState::Closed(_) => None,
                    MState::Open(t) => Some((t, P.cooldown_ms)),
                    MState::HalfOpen(t, _) => Some((t, P.lease_ms)),
                    MState::Backoff(t, n) => {
                        let mut b = PROBE_BACKOFF_MS.min(P.cooldown_ms);
                        for _ in 1..n {
                            b = (b * 2).min(P.cooldown_ms);
                        }
                        Some((t, b))
                    }
                }
            }
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Admit),
                2 => (0usize..8).prop_map(Op::Succeed),
                3 => (0usize..8).prop_map(Op::Fail),
                2 => (0usize..8).prop_map(Op::Abandon),
                1 => (0usize..8).prop_map(Op::Renew),
                2 => (0usize..8).prop_map(Op::HandBack),
                2 => (0usize..4).prop_map(Op::ClaimSucceed),
                3 => (0u64..1200).prop_map(Op::Advance),
                1 => Just(Op::Wrap),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
            #[test]
            fn packed_word_matches_reference(ops in proptest::collection::vec(op(), 1..120)) {
                let w = AtomicU64::new(0);
                let mut m = Model { st: MState::Closed(0), period: 0 };
                let mut now = 0u64;
                // Outstanding tickets: (real ticket, model period it was admitted in, probe).
                let mut tickets: Vec<(Ticket, u64, bool)> = Vec::new();
                // Claims of probes handed back: (claim, the model period its BACKOFF began).
                let mut claims: Vec<(Ticket, u64)> = Vec::new();
                for o in ops {
                    match o {
                        Op::Advance(d) => now += d,
                        // Only from CLOSED with no failures counted, so both sides agree.
                        Op::Wrap if m.st == MState::Closed(0) => {
                            let before = Snapshot::decode(Word::load(&w)).epoch;
                            // 1365 cycles of 3 transitions, then one more open: 4096.
                            cycle(&w, &P, &mut now, 1365);
                            for _ in 0..P.threshold {
                                let t = admit(&w, now, &P).unwrap();
                                failure(&w, t, now, &P);
                            }
                            prop_assert_eq!(Snapshot::decode(Word::load(&w)).epoch, before);
                            m.period += 4096;
                            m.st = MState::Open(now);
                        }
                        Op::Admit => {
                            let real = admit(&w, now, &P);
                            let expect = match (m.st, m.wait()) {
                                (MState::Closed(_), _) => Some(false),
                                (st, Some((t, wait))) if now - t >= wait => {
                                    let n = match st { MState::HalfOpen(_, n) | MState::Backoff(_, n) => n, _ => 0 };
                                    m.period += 1;
                                    m.st = MState::HalfOpen(now, n);
                                    Some(true)
                                }
                                _ => None,
                            };
                            prop_assert_eq!(real.map(|t| t.is_probe()), expect);
                            if let Some(t) = real {
                                tickets.push((t, m.period, t.is_probe()));
                            }
                        }
                        Op::Renew(i) if i < tickets.len() => {
                            let (mut t, period, probe) = tickets[i];
                            let current = period == m.period && probe && matches!(m.st, MState::HalfOpen(..));
                            prop_assert_eq!(renew(&w, &mut t, now), current);
                            if current {
                                if let MState::HalfOpen(s, n) = m.st { m.st = MState::HalfOpen(s.max(now), n); }
                            }
                            tickets[i].0 = t;
                        }
                        // Among probes only (for any other ticket it does nothing), so that
                        // a claim outlives a newer probe's hand-back often enough to be tried.
                        Op::HandBack(i) if tickets.iter().any(|t| t.2) => {
                            let probes: Vec<usize> = (0..tickets.len()).filter(|&k| tickets[k].2).collect();
                            let (t, period, probe) = tickets.remove(probes[i % probes.len()]);
                            let current = period == m.period && probe && matches!(m.st, MState::HalfOpen(..));
                            let (tr, claim) = hand_back(&w, t, now);
                            prop_assert_eq!(tr == Transition::BackedOff, current);
                            prop_assert_eq!(claim.is_some(), current);
                            if let (MState::HalfOpen(s, n), Some(c)) = (m.st, claim) {
                                m.period += 1;
                                m.st = MState::Backoff(now.max(s), n + 1);
                                claims.push((c, m.period));
                            }
                        }
                        Op::ClaimSucceed(j) if j < claims.len() => {
                            let (c, period) = claims.remove(j);
                            // Only while the hand-back's own BACKOFF stands: no probe since,
                            // no other transition.
                            let current = period == m.period && matches!(m.st, MState::Backoff(..));
                            let tr = success_after_hand_back(&w, c, now);
                            prop_assert_eq!(tr == Transition::Closed, current);
                            if current {
                                m.period += 1;
                                m.st = MState::Closed(0);
                            }
                        }
                        Op::Succeed(i) | Op::Fail(i) | Op::Abandon(i) if i < tickets.len() => {
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
                                            MState::HalfOpen(s, _) if probe => { m.period += 1; MState::Open(now.max(s)) }
                                            s => s,
                                        };
                                    }
                                }
                                _ => {
                                    abandon(&w, t, now);
                                    if current && probe {
                                        if let MState::HalfOpen(s, n) = m.st {
                                            m.period += 1;
                                            m.st = MState::Backoff(now.max(s), n + 1);
                                        }
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                    let s = Snapshot::decode(Word::load(&w));
                    match m.st {
                        MState::Closed(f) => { prop_assert_eq!(s.state, CLOSED); prop_assert_eq!(s.count, f); }
                        MState::Open(t) => { prop_assert_eq!(s.state, OPEN); prop_assert_eq!(s.time_ms, t); }
                        MState::HalfOpen(t, n) => { prop_assert_eq!(s.state, HALF_OPEN); prop_assert_eq!(s.time_ms, t); prop_assert_eq!(s.count, n); }
                        MState::Backoff(t, n) => { prop_assert_eq!(s.state, BACKOFF); prop_assert_eq!(s.time_ms, t); prop_assert_eq!(s.count, n); }
                    }
                }
            }
        }
    }
}
