//! A body streamed from one side to the other and re-framed by us: decoded as it is read
//! (Content-Length, chunked or until close), encoded as it is written.

use std::cell::Cell;
use std::time::Duration;

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
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        if self.chunked_out {
            h1::push_chunk(out, data);
        } else {
            out.extend_from_slice(data);
        }
    }

    /// Encodes as much of `input` as belongs to this body into `out`; returns bytes consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        if self.done || input.is_empty() {
            return Ok(0);
        }
        let used = match self.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let take = self.count_length(input.len());
                self.emit(out, &input[..take]);
                if self.remaining == 0 {
                    self.finish(out);
                }
                take
            }
            Framing::UntilClose => {
                self.total += input.len() as u64;
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
                if self.total > self.limit {
                    return Err(BodyError::TooLarge);
                }
                if self.decoder.is_done() {
                    self.finish(out);
                }
                used
            }
        };
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
                Some(take)
            }
            Framing::UntilClose => {
                self.total += avail as u64;
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
/// eleventh run (README, *Performance*, History), 64 KiB (above loopback's MSS of 65 483
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

/// Streams the rest of a body from `src` to `dst` until `relay` is done, calling
/// `progress` after each write. `out` is empty on entry; bytes after the body stay in
/// `buf[*start..]`. Every read and write has `timeout`. `owed` is true while bytes taken
/// from `src` have not all gone to `dst` (so false while it waits on `src` alone).
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
    pipes: &Pipes,
    owed: &Cell<bool>,
    mut progress: impl FnMut(),
) -> Result<u64, BodyError> {
    let mut written = 0u64;
    let mut room = ReadRoom::new();
    while !relay.done {
        let long = relay.spliceable();
        if long > 0 && *start == buf.len() && pipes.on() {
            match pipes
                .transfer(src, dst, long, timeout, owed, |n| {
                    written += n;
                    progress();
                })
                .await
            {
                Ok(()) => {
                    relay.remaining = 0;
                    relay.done = true;
                    break;
                }
                Err(None) => {} // no pipe to be had (EMFILE): copy as usual
                Err(Some(SpliceError::Src)) => return Err(BodyError::SrcIo),
                Err(Some(SpliceError::SrcTimeout)) => return Err(BodyError::SrcTimeout),
                Err(Some(SpliceError::Dst)) => return Err(BodyError::DstIo),
            }
        }
        match io::read_at_most(src, buf, start, room.0, timeout).await {
            Read::Data(n) => {
                room.after(n);
                if let Some(take) = relay.take_raw(buf.len() - *start) {
                    owed.set(take > 0);
                    let sent = io::write_range(dst, buf, *start, *start + take, timeout).await;
                    if sent.is_err() {
                        // The connection ends here, and what the buffer held with it (a
                        // timed-out write took the buffer: keep `start` in bounds).
                        buf.clear();
                        *start = 0;
                        return Err(BodyError::DstIo);
                    }
                    *start += take;
                    written += take as u64;
                    owed.set(false);
                    progress();
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
            owed.set(true);
            io::write_all(dst, out, timeout)
                .await
                .map_err(|_| BodyError::DstIo)?;
            written += out.len() as u64;
            out.clear();
            owed.set(false);
            progress();
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

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
