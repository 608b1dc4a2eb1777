//! One client connection: read a request head within its deadline, route it, hand it to the
//! proxy, and loop for the next one (keep-alive and pipelining, answered in order).

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::accesslog;
use crate::balancer::View;
use crate::error::GatewayError;
use crate::h1::{self, Framing, HeadLimits};
use crate::io::{self, Read};
use crate::proxy::{self, Request};
use crate::server::Worker;

/// Initial size of each connection's buffers; they grow only for big heads.
const BUF_SIZE: usize = 8 * 1024;

/// A client connection and the buffers its requests reuse (no per-request allocation).
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The client's IP as text, formatted once for `X-Forwarded-For`.
    pub peer_ip: Vec<u8>,
    /// Bytes read from the client; `buf[start..]` is not yet consumed.
    pub buf: Vec<u8>,
    pub start: usize,
    /// Bytes to write to the client.
    pub out: Vec<u8>,
    /// The request as sent upstream (kept until the response head arrives, for one retry).
    pub up_out: Vec<u8>,
    /// The part of the request body that arrived with the head, already re-framed.
    pub up_body: Vec<u8>,
    /// Forwarded header lines of the current request, framing included, ending in CRLF CRLF.
    pub fwd: Vec<u8>,
    /// What to append to the backend's path prefix (starts with `/`).
    pub path: Vec<u8>,
    /// The current request's service segment, for error bodies.
    pub service: Vec<u8>,
    /// Bytes read from the backend; `ubuf[ustart..]` is not yet consumed.
    pub ubuf: Vec<u8>,
    pub ustart: usize,
    /// The current request is HEAD (gateway-made answers then carry no body).
    pub head: bool,
    /// The current request's target, kept only when the access log is on.
    pub target: Vec<u8>,
    /// What happened to the current request, for metrics and the access log.
    pub log: Exchange,
}

/// The facts about one request that metrics and the access log need.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exchange {
    pub status: u16,
    /// Bytes written to the client (heads and bodies).
    pub bytes: u64,
    /// Index of the backend within its service, once one was picked.
    pub backend: Option<usize>,
    pub upstream_us: Option<u64>,
    pub error: Option<GatewayError>,
}

/// What the next bytes on the connection amount to.
enum Next {
    Forward(Request),
    /// Answer with this error; keep the connection if the request was complete and framed.
    Reject {
        err: GatewayError,
        keep_alive: bool,
        with_service: bool,
        method: Option<h1::Method>,
    },
    Close,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            stream,
            peer,
            peer_ip: proxy::format_ip(peer.ip()),
            buf: Vec::with_capacity(BUF_SIZE),
            start: 0,
            out: Vec::with_capacity(BUF_SIZE),
            up_out: Vec::with_capacity(BUF_SIZE),
            up_body: Vec::with_capacity(BUF_SIZE),
            fwd: Vec::with_capacity(1024),
            path: Vec::with_capacity(256),
            service: Vec::with_capacity(64),
            ubuf: Vec::with_capacity(BUF_SIZE),
            ustart: 0,
            head: false,
            target: Vec::new(),
            log: Exchange::default(),
        }
    }

    /// Sends a gateway-made error response. Returns false if the client is gone.
    pub async fn reply(
        &mut self,
        err: GatewayError,
        with_service: bool,
        retry_after: Option<u64>,
        close: bool,
        timeout: Duration,
    ) -> bool {
        self.out.clear();
        let service = with_service.then_some(&self.service[..]);
        err.write_response(&mut self.out, service, retry_after, close, self.head);
        self.log.status = err.status();
        self.log.error = Some(err);
        self.log.bytes += self.out.len() as u64;
        let ok = io::write_all(&mut self.stream, &mut self.out, timeout)
            .await
            .is_ok();
        self.out.clear();
        ok
    }
}

/// Serves one client connection until it closes, errs or times out.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let registration = worker.register(stream.as_raw_fd());
    let mut c = Conn::new(stream, peer);
    while !worker.draining() {
        c.log = Exchange::default();
        c.head = false;
        let (next, view) =
            next_request(&mut c, &worker, &registration.idle, worker.access.enabled()).await;
        // Only the access log reports the total time; skip the clock read otherwise.
        let started = worker.access.enabled().then(Instant::now);
        let keep = match next {
            Next::Forward(mut req) => {
                if worker.draining() {
                    req.info.keep_alive = false; // the response says `Connection: close`
                }
                let keep = proxy::forward(&worker, &view, &mut c, req).await;
                finish(
                    &worker,
                    &view,
                    &c,
                    Some(req.svc),
                    Some(req.info.method),
                    started,
                );
                keep
            }
            Next::Reject {
                err,
                keep_alive,
                with_service,
                method,
            } => {
                let timeout = view.snapshot.config.timeouts.body;
                let sent = c.reply(err, with_service, None, !keep_alive, timeout).await;
                finish(&worker, &view, &c, None, method, started);
                sent && keep_alive
            }
            Next::Close => false,
        };
        if !keep {
            break;
        }
    }
}

/// Counts the finished request and writes its access log line.
fn finish(
    worker: &Worker,
    view: &View,
    c: &Conn,
    svc: Option<usize>,
    method: Option<h1::Method>,
    started: Option<Instant>,
) {
    let service = svc.map(|i| &view.snapshot.services[i]);
    worker
        .metrics
        .response(service.map(|s| s.id), c.log.status, c.log.error);
    if worker.access.enabled() {
        let backend = match (service, c.log.backend) {
            (Some(s), Some(b)) => Some(s.backends[b].url.url.as_str()),
            _ => None,
        };
        worker.access.record(&accesslog::Entry {
            client: c.peer.ip(),
            method: method.map_or("-", h1::Method::as_str),
            target: if c.target.is_empty() { b"-" } else { &c.target },
            service: service.map(|s| s.name.as_str()),
            backend,
            status: c.log.status,
            bytes: c.log.bytes,
            upstream_us: c.log.upstream_us,
            total_us: started.map_or(0, |t| t.elapsed().as_micros() as u64),
            error: c.log.error.map(GatewayError::code),
        });
    }
}

/// Reads until a complete head is buffered, then parses, routes and prepares it.
///
/// The config view is taken when the bytes are there, not when the wait began, so a
/// connection that sat idle across a reload serves its next request on the new config.
async fn next_request(
    c: &mut Conn,
    worker: &Worker,
    idle: &Cell<bool>,
    keep_target: bool,
) -> (Next, Rc<View>) {
    // Set when part of a head has arrived; the rest must follow by then (408).
    let mut deadline: Option<Instant> = None;
    loop {
        let view = worker.view();
        let cfg = &view.snapshot.config;
        if c.start < c.buf.len() {
            let limits = HeadLimits {
                max_head_bytes: cfg.limits.max_head_bytes,
                max_headers: cfg.limits.max_headers,
                max_target_bytes: cfg.limits.max_target_bytes,
            };
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            match h1::parse_request(&c.buf[c.start..], &mut headers, &limits) {
                Ok(Some(parsed)) => {
                    let head_len = parsed.head_len;
                    let info = parsed.info;
                    c.head = info.method == h1::Method::Head;
                    c.target.clear();
                    if keep_target {
                        c.target.extend_from_slice(parsed.target.as_bytes());
                    }
                    let result = proxy::prepare(
                        &parsed,
                        &view,
                        &c.peer_ip,
                        &mut c.fwd,
                        &mut c.path,
                        &mut c.service,
                    );
                    c.start += head_len;
                    let next = match result {
                        Ok(svc) => Next::Forward(Request { info, svc }),
                        Err(err) => Next::Reject {
                            err,
                            // Safe to go on only if no body is left unread; every
                            // 400 closes (the contract: a malformed request ends it).
                            keep_alive: info.keep_alive
                                && info.framing == Framing::None
                                && err.status() != 400,
                            with_service: err == GatewayError::ServiceNotFound
                                && !c.service.is_empty(),
                            method: Some(info.method),
                        },
                    };
                    return (next, view);
                }
                Ok(None) => {}
                Err(e) => {
                    let next = Next::Reject {
                        err: e.into(),
                        keep_alive: false,
                        with_service: false,
                        method: None,
                    };
                    return (next, view);
                }
            }
        }
        let partial = c.start < c.buf.len();
        let wait = match deadline {
            None if partial => {
                deadline = Some(Instant::now() + cfg.timeouts.client_header);
                cfg.timeouts.client_header
            }
            None => cfg.timeouts.client_idle,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        // Idle (between requests) connections are closed at once by a graceful shutdown.
        idle.set(deadline.is_none());
        drop(view); // an idle connection must not pin an old snapshot
        let read = io::read_more(&mut c.stream, &mut c.buf, &mut c.start, BUF_SIZE / 2, wait).await;
        idle.set(false);
        match read {
            Read::Data(_) => {}
            Read::Timeout if deadline.is_some() => {
                let next = Next::Reject {
                    err: GatewayError::RequestTimeout,
                    keep_alive: false,
                    with_service: false,
                    method: None,
                };
                return (next, worker.view());
            }
            Read::Timeout | Read::Eof | Read::Err(_) => return (Next::Close, worker.view()),
        }
    }
}
