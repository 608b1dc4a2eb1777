//! A body streamed from one side to the other and re-framed by us: decoded as it is read
//! (Content-Length, chunked or until close), encoded as it is written.

use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::h1::{self, ChunkedDecoder, Framing};
use crate::io::{self, Read};

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
    /// Reading from the sender failed or timed out.
    SrcIo,
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
                let take = (input.len() as u64).min(self.remaining) as usize;
                self.remaining -= take as u64;
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
                let used = self
                    .decoder
                    .decode(input, |data| {
                        if chunked_out {
                            h1::push_chunk(out, data);
                        } else {
                            out.extend_from_slice(data);
                        }
                    })
                    .map_err(|e| BodyError::Framing(e.0))?;
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

/// Streams the rest of a body from `src` to `dst` until `relay` is done, calling
/// `progress` after each write. `out` is empty on entry; bytes after the body stay in
/// `buf[*start..]`. Every read and write has `timeout`.
#[allow(clippy::too_many_arguments)]
pub async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    relay: &mut BodyRelay,
    src: &mut R,
    buf: &mut Vec<u8>,
    start: &mut usize,
    dst: &mut W,
    out: &mut Vec<u8>,
    timeout: Duration,
    mut progress: impl FnMut(),
) -> Result<u64, BodyError> {
    let mut written = 0u64;
    while !relay.done {
        match io::read_more(src, buf, start, 16 * 1024, timeout).await {
            Read::Data(_) => {
                out.clear();
                let used = relay.feed(&buf[*start..], out)?;
                *start += used;
            }
            Read::Eof => {
                out.clear();
                relay.eof(out)?;
            }
            Read::Timeout | Read::Err(_) => return Err(BodyError::SrcIo),
        }
        if !out.is_empty() {
            io::write_all(dst, out, timeout)
                .await
                .map_err(|_| BodyError::DstIo)?;
            written += out.len() as u64;
            out.clear();
            progress();
        }
    }
    Ok(written)
}
