//! A body streamed from one side to the other and re-framed by us: decoded as it is read
//! (Content-Length, chunked or until close), encoded as it is written.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use crate::h1::{self, ChunkedDecoder, Framing};
use crate::io::{self, Read, ReadHalf, WriteHalf};
use crate::splice::{Pipes, SpliceError, MIN_SPLICE};

/// Re-frames a body as it streams: decodes what it reads, encodes what it writes.
pub struct BodyRelay {
    framing: Framing,
    /// Bytes left for `Framing::Length`.
    remaining: u64,
    decoder: ChunkedDecoder,
    /// Encode our output as chunked (else raw bytes).
    chunked_out: bool,
    pub done: bool,
    total: u64,
    limit: u64,
    /// Bytes taken from the sender for this body as they came on the wire, chunk framing
    /// included (a request's part of `gateway_request_bytes_total`).
    wire: u64,
    /// How slowly the client may move this body.
    pub pace: Pace,
}

/// Which end of a body the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sends it (a request body).
    Src,
    /// The client receives it (a response body).
    Dst,
}

/// Whether an upload holds body bytes the backend has not taken, and how long in all it
/// has held some: time the backend, not the client, kept the upload waiting. The exchange
/// reads it beside the running upload to tell a backend slow to read from a client slow to
/// send (see `exchange.rs`, `STALLED_UPLOAD`).
#[derive(Debug, Default)]
pub struct Owed {
    /// When the bytes held now were taken; None: none are held.
    since: Cell<Option<Instant>>,
    /// The time bytes were held before those.
    before: Cell<Duration>,
    /// The bytes past the body in the client's buffer when the upload ended: a next
    /// request, pipelined, whole or in part (copied: it is rare; see `Live::note_next`).
    pub followed: RefCell<Vec<u8>>,
}

impl Owed {
    /// Counting `held` as already spent waiting on the backend (the request head's write).
    pub fn new(held: Duration) -> Owed {
        Owed {
            since: Cell::new(None),
            before: Cell::new(held),
            followed: RefCell::default(),
        }
    }

    /// Bytes were taken for the backend.
    pub fn hold(&self) {
        if self.since.get().is_none() {
            self.since.set(Some(crate::clock::now()));
        }
    }

    /// The backend has taken every byte held.
    pub fn release(&self) {
        if let Some(t) = self.since.take() {
            self.before
                .set(self.before.get().saturating_add(t.elapsed()));
        }
    }

    /// Bytes are held that the backend has not taken.
    pub fn now(&self) -> bool {
        self.since.get().is_some()
    }

    /// All the time bytes were held, up to now.
    pub fn total(&self) -> Duration {
        let now = self.since.get().map_or(Duration::ZERO, |t| t.elapsed());
        self.before.get().saturating_add(now)
    }
}

/// A client that has fallen behind its [`Pace`], or a wait on it that timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late;

/// The least rate at which a client must move a body (`limits.min_body_rate`): it may fall
/// at most `timeouts.body` behind it.
///
/// A leaky bucket of time: the body starts with `timeouts.body` of credit; waiting on the
/// client spends it, each byte the client moves earns `1 / rate` s of it back, and credit
/// never exceeds `timeouts.body` (so a burst, or a kernel buffer filling at once, cannot buy
/// a long stall later). Only time spent waiting on the client counts, for its bytes or for
/// room to write to it, never time spent waiting on the backend. `timeouts.body` alone
/// bounds each pause, so a client sending a byte every 29 s held its request, its backend
/// connection and a `max_in_flight` slot for as long as it liked; now it is a 408 (or,
/// receiving, a reset connection) once it falls behind. Like Kestrel's
/// `MinRequestBodyDataRate` and Apache's `mod_reqtimeout` `MinRate`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// The client's end; None: not a client's body.
    side: Option<Side>,
    /// Bytes per second; 0: no minimum (the waits are still counted in `waited`).
    rate: u64,
    /// The most credit (`timeouts.body`).
    cap: Duration,
    /// The credit left: how much longer the client may keep the gateway waiting.
    ahead: Duration,
    /// All the time spent waiting on the client so far.
    waited: Duration,
}

impl Pace {
    /// Not a client's body.
    pub const NONE: Pace = Pace {
        side: None,
        rate: 0,
        cap: Duration::ZERO,
        ahead: Duration::ZERO,
        waited: Duration::ZERO,
    };

    /// `rate` bytes per second (0: none) for the client at `side`, at most `cap` behind.
    pub fn new(side: Side, rate: u64, cap: Duration) -> Pace {
        Pace {
            side: Some(side),
            rate,
            cap,
            ahead: cap,
            waited: Duration::ZERO,
        }
    }

    /// The longest the next wait on `side` may last: `pause`, or the credit left when that
    /// is less (zero once the client has fallen behind). None when `side` is not the
    /// client's or there is no minimum.
    pub fn limit(&self, side: Side, pause: Duration) -> Option<Duration> {
        (self.side == Some(side) && self.rate > 0).then(|| pause.min(self.ahead))
    }

    /// One wait on `side`: its timeout, and when it began if `side` is the client's (to be
    /// passed to [`Pace::note`]). `Late` when the client has fallen behind already.
    pub fn wait(&self, side: Side, pause: Duration) -> Result<(Duration, Option<Instant>), Late> {
        if self.side != Some(side) {
            return Ok((pause, None));
        }
        match self.limit(side, pause) {
            Some(d) if d.is_zero() => Err(Late),
            limit => Ok((limit.unwrap_or(pause), Some(crate::clock::now()))),
        }
    }

    /// Counts a wait on the client that began at `since` and moved `bytes`.
    pub fn note(&mut self, since: Instant, bytes: usize) {
        self.spend(since.elapsed(), bytes);
    }

    /// Counts a wait of `waited` on the client that moved `bytes`.
    pub fn spend(&mut self, waited: Duration, bytes: usize) {
        self.waited = self.waited.saturating_add(waited);
        self.ahead = self.ahead.saturating_sub(waited);
        self.earn(bytes);
    }

    /// Whether the client is at `side`.
    pub fn client_at(&self, side: Side) -> bool {
        self.side == Some(side)
    }

    /// All the time spent waiting on the client so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Counts `bytes` of body moved at `side` apart from a wait (a splice that found them
    /// ready; the body in what a wait brought).
    pub fn note_bytes(&mut self, side: Side, bytes: usize) {
        if self.side == Some(side) {
            self.earn(bytes);
        }
    }

    fn earn(&mut self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let ns = u128::from(bytes as u64) * 1_000_000_000 / u128::from(self.rate.max(1));
        let earned = Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
        self.ahead = self.ahead.saturating_add(earned).min(self.cap);
    }
}

/// Why a body could not be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Invalid chunked framing from the sender.
    Framing(&'static str),
    /// Over `limits.max_body_bytes`.
    TooLarge,
    /// The sender closed before the end.
    Truncated,
    /// Reading from the sender failed (a reset).
    SrcIo,
    /// The sender sent nothing for the body timeout.
    SrcTimeout,
    /// Writing to the receiver failed or timed out.
    DstIo,
}

impl BodyRelay {
    pub fn new(framing: Framing, chunked_out: bool, limit: u64) -> BodyRelay {
        BodyRelay {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            decoder: ChunkedDecoder::new(),
            chunked_out,
            done: framing == Framing::None,
            total: 0,
            limit,
            wire: 0,
            pace: Pace::NONE,
        }
    }

    /// Bytes taken from the sender for this body so far, framing included: read and
    /// passed on, or spliced through.
    pub fn wire(&self) -> u64 {
        self.wire
    }

    /// Body bytes read so far (decoded: chunk framing does not count).
    fn body_bytes(&self) -> u64 {
        match self.framing {
            Framing::Length(n) => n - self.remaining,
            _ => self.total,
        }
    }

    /// Encodes the rest of the body as chunked (what was fed so far went out decoded).
    pub fn chunk_from_now(&mut self) {
        self.chunked_out = true;
    }

    /// Watches the client's pace on this body (see [`Pace`]).
    pub fn paced(mut self, pace: Pace) -> BodyRelay {
        self.pace = pace;
        self
    }

    fn emit(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        if self.chunked_out {
            h1::push_chunk(out, data);
        } else {
            out.extend_from_slice(data);
        }
    }

    /// Encodes as much of `input` as belongs to this body into `out`; returns bytes consumed.
    /// The body bytes among them earn a sending client's pace (chunk framing earns nothing).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        if self.done || input.is_empty() {
            return Ok(0);
        }
        let before = self.body_bytes();
        let used = match self.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let take = self.count_length(input.len());
                self.wire += take as u64;
                self.emit(out, &input[..take]);
                if self.remaining == 0 {
                    self.finish(out);
                }
                take
            }
            Framing::UntilClose => {
                self.total += input.len() as u64;
                self.wire += input.len() as u64;
                self.emit(out, input);
                input.len()
            }
            Framing::Chunked => {
                let chunked_out = self.chunked_out;
                let mut run = h1::ChunkRun::default();
                let used = self
                    .decoder
                    .decode(input, |data| {
                        if chunked_out {
                            run.push(out, data);
                        } else {
                            out.extend_from_slice(data);
                        }
                    })
                    .map_err(|e| BodyError::Framing(e.0))?;
                run.close(out);
                self.total = self.decoder.total();
                self.wire += used as u64; // a body found too large included
                if self.total > self.limit {
                    return Err(BodyError::TooLarge);
                }
                if self.decoder.is_done() {
                    self.finish(out);
                }
                used
            }
        };
        let body = self.body_bytes() - before;
        self.pace.note_bytes(Side::Src, body as usize);
        Ok(used)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.done = true;
        if self.chunked_out {
            out.extend_from_slice(h1::LAST_CHUNK);
        }
    }

    /// Counts up to `avail` bytes of a Content-Length body as read; returns how many.
    fn count_length(&mut self, avail: usize) -> usize {
        let take = (avail as u64).min(self.remaining) as usize;
        self.remaining -= take as u64;
        take
    }

    /// For a body that goes out as it came in (Content-Length or until close, not
    /// re-encoded as chunked): counts up to `avail` bytes just read as body and returns how
    /// many belong to it, which the caller writes straight from its read buffer (no copy
    /// into an output buffer). None for a body that must be decoded or encoded.
    pub fn take_raw(&mut self, avail: usize) -> Option<usize> {
        if self.chunked_out || self.done {
            return None;
        }
        match self.framing {
            Framing::Length(_) => {
                let take = self.count_length(avail);
                self.done = self.remaining == 0;
                self.pace.note_bytes(Side::Src, take);
                self.wire += take as u64;
                Some(take)
            }
            Framing::UntilClose => {
                self.total += avail as u64;
                self.pace.note_bytes(Side::Src, avail);
                self.wire += avail as u64;
                Some(avail)
            }
            Framing::None | Framing::Chunked => None,
        }
    }

    /// Bytes of a Content-Length body, still to come, that may be spliced: all of them
    /// when the body goes out unchanged and is long enough, else 0.
    fn spliceable(&self) -> u64 {
        match self.framing {
            Framing::Length(_) if !self.chunked_out && self.remaining >= MIN_SPLICE => {
                self.remaining
            }
            _ => 0,
        }
    }

    /// The sender closed: the end for a close-delimited body, a truncation otherwise.
    pub fn eof(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if self.framing == Framing::UntilClose {
            self.finish(out);
            Ok(())
        } else {
            Err(BodyError::Truncated)
        }
    }
}

/// The room each read of a streamed body asks for: 16 KiB, and 60 KiB from the first read
/// that filled it (a sender that keeps up); a slow sender, whose reads never fill, is never
/// given more than 16 KiB. What a read returns is written on whole, so the size is that of
/// our writes too: fewer, larger writes cost less per byte, up to the largest TCP segment.
/// One over it goes out as a full segment and a sliver: on the Intel Xeon VM of the
/// eleventh run (docs/performance.md, History), 64 KiB (above loopback's MSS of 65 483
/// bytes) cost 1.42× the CPU per MiB downloaded of 32 KiB, and 60 KiB 17% less than 32 KiB
/// downloading and 7% less uploading. Reads are capped at the room (`io::read_at_most`), so
/// a recycled buffer with more capacity never makes a write larger.
struct ReadRoom(usize);

impl ReadRoom {
    const FIRST: usize = 16 * 1024;
    const FULL: usize = 60 * 1024;

    fn new() -> ReadRoom {
        ReadRoom(Self::FIRST)
    }

    /// Notes how much a read returned: a sender that filled the room gets the full size.
    fn after(&mut self, read: usize) {
        if read >= self.0 {
            self.0 = Self::FULL;
        }
    }
}

/// Writes `buf[from..to]` to `dst`, each write within `pause` of the last one's progress
/// (a partial write counts: `timeouts.body` bounds a pause, not a write), or less when the
/// client at that end is short of pace. False when a write failed or timed out (then
/// `buf` may be empty: close the connection).
async fn write_body(
    dst: &mut WriteHalf,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    pause: Duration,
    pace: &mut Pace,
) -> bool {
    let mut at = from;
    while at < to {
        let Ok((limit, since)) = pace.wait(Side::Dst, pause) else {
            return false;
        };
        let wrote = io::write_some(dst, buf, at, to, limit).await;
        if let Some(since) = since {
            pace.note(since, *wrote.as_ref().unwrap_or(&0));
        }
        match wrote {
            Ok(n) => at += n,
            Err(_) => return false,
        }
    }
    true
}

/// Streams the rest of a body from `src` to `dst` until `relay` is done, calling
/// `progress` with the bytes of each write. `out` is empty on entry; bytes after the body stay in
/// `buf[*start..]`. Every wait on either side is bounded by `timeout` (a pause), and on the
/// client's side by its [`Pace`] too; `hold` may stretch the waits on `src` (see
/// [`io::timed_held`]). `owed`, when given, holds while bytes taken from `src` have not all
/// gone to `dst` (so not while it waits on `src` alone).
///
/// A body that goes out unchanged is written from the buffer it was read into; a long
/// Content-Length one with nothing of it in hand is spliced (see `splice.rs`).
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    relay: &mut BodyRelay,
    src: &mut ReadHalf,
    buf: &mut Vec<u8>,
    start: &mut usize,
    dst: &mut WriteHalf,
    out: &mut Vec<u8>,
    timeout: Duration,
    hold: Option<&io::Hold>,
    pipes: &Pipes,
    owed: Option<&Owed>,
    watch: Option<crate::worker::BodyWatch<'_>>,
    mut progress: impl FnMut(u64),
) -> Result<u64, BodyError> {
    let mut written = 0u64;
    let mut room = ReadRoom::new();
    while !relay.done {
        let long = relay.spliceable();
        if long > 0 && *start == buf.len() && pipes.on() {
            let mut spliced = 0;
            let moved = pipes
                .transfer(src, dst, long, timeout, hold, &mut relay.pace, owed, |n| {
                    spliced += n;
                    progress(n);
                })
                .await;
            // Taken from the sender: all of it when whole, else what went through.
            relay.wire += if moved.is_ok() { long } else { spliced };
            written += spliced;
            match moved {
                Ok(()) => {
                    relay.remaining = 0;
                    relay.done = true;
                    break;
                }
                Err(None) => {} // no pipe to be had (EMFILE): copy as usual
                Err(Some(SpliceError::Src)) => return Err(BodyError::SrcIo),
                // As when copying: a close is no reset (a review: under splice a backend
                // that closed mid-body was taken for a reset, no verdict, every time).
                Err(Some(SpliceError::SrcClosed)) => return Err(BodyError::Truncated),
                Err(Some(SpliceError::SrcTimeout)) => return Err(BodyError::SrcTimeout),
                Err(Some(SpliceError::Dst)) => return Err(BodyError::DstIo),
            }
        }
        let (limit, since) = relay
            .pace
            .wait(Side::Src, timeout)
            .map_err(|Late| BodyError::SrcTimeout)?;
        let watching = watch.map(|w| w.begin());
        let read = io::read_at_most(src, buf, start, room.0, limit, hold).await;
        // The client was found gone meanwhile, and the backend's connection shut under
        // the read: the client's side ended it.
        if watching.is_some_and(crate::worker::Watch::end) {
            return Err(BodyError::DstIo);
        }
        match read {
            Read::Data(n) => {
                // The wait counts now; what the client earns by it, once we know how much
                // of it was body (chunk framing earns nothing).
                if let Some(since) = since {
                    relay.pace.note(since, 0);
                }
                room.after(n);
                if let Some(take) = relay.take_raw(buf.len() - *start) {
                    if take > 0 {
                        if let Some(o) = owed {
                            o.hold();
                        }
                    }
                    let end = *start + take;
                    let sent = write_body(dst, buf, *start, end, timeout, &mut relay.pace).await;
                    if !sent {
                        // The connection ends here, and what the buffer held with it (a
                        // timed-out write took the buffer: keep `start` in bounds).
                        buf.clear();
                        *start = 0;
                        return Err(BodyError::DstIo);
                    }
                    *start += take;
                    written += take as u64;
                    if let Some(o) = owed {
                        o.release();
                    }
                    progress(take as u64);
                    continue;
                }
                out.clear();
                let used = relay.feed(&buf[*start..], out)?;
                *start += used;
            }
            Read::Eof => {
                out.clear();
                relay.eof(out)?;
            }
            Read::Timeout => return Err(BodyError::SrcTimeout),
            Read::Err(_) => return Err(BodyError::SrcIo),
        }
        if !out.is_empty() {
            if let Some(o) = owed {
                o.hold();
            }
            let len = out.len();
            if !write_body(dst, out, 0, len, timeout, &mut relay.pace).await {
                return Err(BodyError::DstIo);
            }
            written += out.len() as u64;
            progress(out.len() as u64);
            out.clear();
            if let Some(o) = owed {
                o.release();
            }
        }
    }
    if let Some(o) = owed {
        let mut followed = o.followed.borrow_mut();
        followed.clear();
        followed.extend_from_slice(&buf[*start..]);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn owed_counts_only_the_time_bytes_were_held() {
        let o = Owed::new(MS(5));
        assert!(!o.now());
        assert_eq!(o.total(), MS(5), "the head's write, and nothing since");
        o.hold();
        std::thread::sleep(MS(20));
        o.hold(); // more bytes while some are held: the hold began with the first
        assert!(o.now());
        assert!(o.total() >= MS(25), "the hold running now counts");
        o.release();
        let held = o.total();
        assert!(!o.now());
        std::thread::sleep(MS(20));
        assert_eq!(
            o.total(),
            held,
            "waiting on the client is not the backend's"
        );
        o.release(); // nothing held: nothing changes
        assert_eq!(o.total(), held);
    }

    #[test]
    fn a_client_may_fall_at_most_the_body_timeout_behind_the_minimum_rate() {
        // 100 bytes/s, at most 1 s behind: each byte earns 10 ms of waiting.
        let mut p = Pace::new(Side::Src, 100, MS(1000));
        assert_eq!(p.limit(Side::Src, MS(30_000)), Some(MS(1000)));
        assert_eq!(p.limit(Side::Dst, MS(30_000)), None, "not the client's end");
        assert_eq!(
            p.limit(Side::Src, MS(300)),
            Some(MS(300)),
            "the pause limit when shorter"
        );
        // A byte every 250 ms: 240 ms behind each time, so the 5th wait finds no credit.
        for left in [760, 520, 280, 40] {
            p.spend(MS(250), 1);
            assert_eq!(p.limit(Side::Src, MS(30_000)), Some(MS(left)));
        }
        p.spend(MS(40), 0);
        assert_eq!(p.limit(Side::Src, MS(30_000)), Some(Duration::ZERO));
        // At the rate or above it never runs out, and a burst earns no more than the cap.
        let mut p = Pace::new(Side::Dst, 100, MS(1000));
        for _ in 0..1000 {
            p.spend(MS(250), 25);
        }
        assert_eq!(p.limit(Side::Dst, MS(30_000)), Some(MS(1000)));
        p.note_bytes(Side::Dst, 4 << 20);
        p.spend(MS(900), 0);
        assert_eq!(p.limit(Side::Dst, MS(30_000)), Some(MS(100)));
        // Off: no limit beyond the pause.
        let off = Pace::new(Side::Src, 0, MS(1000));
        assert_eq!(off.limit(Side::Src, MS(30_000)), None);
        assert_eq!(Pace::NONE.limit(Side::Src, MS(5)), None);
    }

    #[test]
    fn every_wait_on_the_client_is_counted_with_or_without_a_minimum_rate() {
        for rate in [0, 100] {
            let mut p = Pace::new(Side::Dst, rate, MS(1000));
            let (limit, since) = p.wait(Side::Dst, MS(300)).expect("credit");
            assert_eq!(limit, MS(300), "rate {rate}");
            assert!(
                since.is_some(),
                "rate {rate}: a wait on the client is timed"
            );
            assert_eq!(
                p.wait(Side::Src, MS(300)),
                Ok((MS(300), None)),
                "not the client"
            );
            p.spend(MS(250), 25);
            p.spend(MS(900), 0);
            assert_eq!(p.waited(), MS(1150), "rate {rate}");
        }
        // Off, a client far behind any rate is never late.
        let mut off = Pace::new(Side::Src, 0, MS(1000));
        off.spend(MS(60_000), 0);
        assert_eq!(off.wait(Side::Src, MS(300)).map(|w| w.0), Ok(MS(300)));
        assert_eq!(Pace::NONE.wait(Side::Dst, MS(5)), Ok((MS(5), None)));
    }

    #[test]
    fn reads_grow_once_a_sender_fills_them_and_stay_below_a_segment() {
        let mut room = ReadRoom::new();
        assert_eq!(room.0, 16 * 1024);
        room.after(16 * 1024 - 1); // a slow sender: its reads never fill
        assert_eq!(room.0, 16 * 1024);
        room.after(16 * 1024);
        assert_eq!(room.0, 60 * 1024);
        room.after(60 * 1024);
        assert_eq!(room.0, 60 * 1024);
        room.after(1); // kept: the sender has shown it keeps up
        assert_eq!(room.0, 60 * 1024);
        // Below loopback's MSS (65 483 bytes).
        const { assert!(ReadRoom::FULL < 65_483) };
    }
}
