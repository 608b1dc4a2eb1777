//! The client's side of a connection as `conn` keeps it between requests and an exchange
//! borrows it: the socket, unconsumed input, the output buffer, gateway-made replies and the
//! record of the current request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::date::DateCache;
use crate::error::{self, GatewayError};
use crate::io::{self, Read, Socket, BUF_SIZE};
use crate::relay::{Pace, Side};
use crate::rewrite;

/// After an early response (one made before the request body was all read), the rest of
/// the body is read and discarded for at most this long before the connection closes, so
/// that closing with unread bytes does not reset the connection before the client has read
/// its answer (NGINX's `lingering_time`, 30 s by default) ...
pub const LINGER: Duration = Duration::from_secs(30);
/// ... as long as each read brings something within this (NGINX's `lingering_timeout` is
/// 5 s, Apache's 2 s), and the client keeps up `limits.min_body_rate`, falling at most this
/// far behind it (so a client answered 408 for its pace cannot trickle on for 30 s) ...
pub const LINGER_PAUSE: Duration = Duration::from_secs(2);
/// ... and at most this many bytes.
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// What happened to one request, for metrics and the access log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Record {
    /// The status sent to the client; 0 when nothing was (the client went away first).
    pub status: u16,
    /// Bytes written to the client (heads and bodies).
    pub bytes: u64,
    /// Bytes of the request taken from the client: its head (what had come of it, for a
    /// head refused or cut short), its body as framed on the wire, and what the client sent
    /// through a WebSocket tunnel. Not what is read and dropped after an early answer.
    pub received: u64,
    /// Index of the backend within its service, once one was picked.
    pub backend: Option<usize>,
    /// The other backends tried before it, in order (a connect failure or a stale pooled
    /// connection moves a request on), for the access log.
    pub earlier: [Option<usize>; 2],
    pub upstream_us: Option<u64>,
    pub error: Option<GatewayError>,
    /// The response's body was cut short after its head went out (the client left or was
    /// too slow, or the backend broke it): `bytes` is what got through.
    pub cut: bool,
    /// The client behind a trusted proxy (as `client_ip` finds it), for the access log;
    /// None: the peer itself.
    pub client: Option<std::net::IpAddr>,
}

impl Record {
    /// The client went away before any answer reached it: status 0 and
    /// `client_closed_request` (NGINX's 499), with `bytes` as they were before the answer
    /// (a 1xx that went out still counts).
    pub fn client_gone(&mut self, bytes: u64) {
        self.status = 0;
        self.bytes = bytes;
        self.error = Some(GatewayError::ClientClosed);
    }
}

/// The client connection's state that outlives one request.
pub struct Downstream {
    pub sock: Socket,
    pub peer: SocketAddr,
    /// Bytes read from the client; `buf[start..]` is not yet consumed.
    pub buf: Vec<u8>,
    pub start: usize,
    /// Bytes to write to the client.
    pub out: Vec<u8>,
    /// The current request is HEAD (gateway-made answers then carry no body).
    pub head: bool,
    /// The current request's HTTP minor version (gateway-made answers that keep an
    /// HTTP/1.0 connection say so).
    pub minor: u8,
    pub record: Record,
    /// The worker's `Date` line, for every response this connection sends.
    pub date: Rc<DateCache>,
    /// Header lines (each ending in CRLF) for the current request's response, made or
    /// relayed: the request ID and the RateLimit fields. Usually empty.
    pub fields: Vec<u8>,
    /// The current request's ID (`request_id: true`; empty otherwise).
    pub request_id: Vec<u8>,
}

/// What the client connection does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Read the next request.
    Keep,
    /// Close now.
    Close,
    /// Unread request body may follow: stop sending, discard input for a while, then close.
    Linger,
}

impl Downstream {
    pub fn new(stream: TcpStream, peer: SocketAddr, date: Rc<DateCache>) -> Downstream {
        Downstream {
            sock: Socket::new(stream),
            peer,
            // The caller lends buffers as requests need them (see `conn`).
            buf: Vec::new(),
            start: 0,
            out: Vec::new(),
            head: false,
            minor: 1,
            record: Record::default(),
            date,
            fields: Vec::new(),
            request_id: Vec::new(),
        }
    }

    /// Sends a gateway-made error response. Returns false if the client is gone.
    pub async fn reply(
        &mut self,
        err: GatewayError,
        service: Option<&[u8]>,
        retry_after: Option<u64>,
        close: bool,
        timeout: Duration,
    ) -> bool {
        self.out.clear();
        let date = self.date.line();
        let extra = error::Extra {
            retry_after,
            fields: &self.fields,
            minor: self.minor,
        };
        err.write_response(&mut self.out, &date, service, extra, close, self.head);
        self.record.status = err.status();
        self.record.error = Some(err);
        self.send_out(timeout).await
    }

    /// Answers `OPTIONS *` (204 with `Allow`). `keep` says whether the connection stays;
    /// `minor` is the request's HTTP minor version. Returns false if the client is gone.
    pub async fn reply_options(&mut self, keep: bool, minor: u8, timeout: Duration) -> bool {
        self.out.clear();
        error::write_options_head(&mut self.out, &self.date.line());
        self.out.extend_from_slice(&self.fields);
        rewrite::end_response_head(&mut self.out, keep, minor);
        self.record.status = 204;
        self.send_out(timeout).await
    }

    /// Writes `out` whole and counts it; false if the client is gone. A client whose
    /// connection refused the write (it reset it) got nothing: logged and counted as gone
    /// (status 0, `client_closed_request`), as when it leaves during a response head (a
    /// review: a probe whose client had left was logged as a 504 sent, with its bytes).
    async fn send_out(&mut self, timeout: Duration) -> bool {
        let before = self.record.bytes;
        self.record.bytes += self.out.len() as u64;
        let written = io::write_all(self.sock.w(), &mut self.out, timeout).await;
        self.out.clear();
        match written {
            Ok(_) => true,
            Err(e) => {
                // A timed-out write may have sent part of it.
                if e.kind() != std::io::ErrorKind::TimedOut {
                    self.record.client_gone(before);
                }
                false
            }
        }
    }

    /// Ends the connection after an early response: FIN first (the response is queued ahead
    /// of it), then what the client still sends is read and dropped until it stops (EOF, or
    /// nothing for [`LINGER_PAUSE`], or slower than `min_rate` bytes/s), or [`LINGER`] or
    /// [`LINGER_BYTES`] runs out, or `stop` says so (the process drains: a lingering
    /// connection held the drain, and the exit, until its deadline).
    pub async fn linger(&mut self, min_rate: u64, stop: impl Fn() -> bool) {
        io::shutdown_write(self.sock.fd());
        let end = Instant::now() + LINGER;
        let mut pace = Pace::new(Side::Src, min_rate, LINGER_PAUSE);
        let mut seen = 0u64;
        while seen < LINGER_BYTES && !stop() {
            let left = end.saturating_duration_since(Instant::now());
            let Ok((wait, since)) = pace.wait(Side::Src, left.min(LINGER_PAUSE)) else {
                break; // fallen behind `min_rate`
            };
            if wait.is_zero() {
                break;
            }
            self.start = self.buf.len();
            let read = io::read_more(
                self.sock.r(),
                &mut self.buf,
                &mut self.start,
                BUF_SIZE,
                wait,
            );
            match read.await {
                Read::Data(n) => {
                    seen += n as u64;
                    if let Some(since) = since {
                        pace.note(since, n);
                    }
                }
                Read::Eof | Read::Timeout | Read::Err(_) => break,
            }
        }
    }
}
