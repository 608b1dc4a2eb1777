//! Forwarding one request: rewrite the head, pick a backend, send, stream both bodies back
//! and forth re-framed by us, and report the outcome to the backend's breaker.
//!
//! The phases, in order: [`prepare`] (sync, right after parsing) → [`forward`]: pick →
//! connect or reuse → send head and body → read the response head → relay the response.
//! Each message goes out in one write whenever its body is already in hand.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balancer::{Pick, View};
use crate::breaker::{self, Ticket, Transition};
use crate::conn::Conn;
use crate::error::GatewayError;
use crate::h1::{
    self, ChunkedDecoder, ConnectionOptions, Framing, Method, ParsedRequest, RequestInfo,
};
use crate::io::{self, Read};
use crate::metrics::{Counter, WorkerMetrics};
use crate::router;
use crate::server::Worker;
use crate::state::{now_ms, Backend, Service};

/// A parsed, routed request ready to forward; its header block is in `Conn::fwd`.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub info: RequestInfo,
    /// Index of the service in the snapshot.
    pub svc: usize,
}

const VIA_11: &[u8] = b"1.1 gateway";
const VIA_10: &[u8] = b"1.0 gateway";

/// Routes the request and writes the header block to send upstream into `fwd`
/// (everything after the request line and `Host`), and the path suffix into `path`.
///
/// Hop-by-hop fields and those named in `Connection` are dropped first, then our own
/// `X-Forwarded-*` and `Via` are added, then our framing: nothing the client sent can
/// remove or replace them.
pub fn prepare(
    p: &ParsedRequest<'_, '_>,
    view: &View,
    peer_ip: &[u8],
    fwd: &mut Vec<u8>,
    path: &mut Vec<u8>,
    service: &mut Vec<u8>,
) -> Result<usize, GatewayError> {
    service.clear();
    let route = router::route(p.target);
    if let Ok(r) = &route {
        service.extend_from_slice(r.service);
    } else if let Some(seg) = p.target.strip_prefix(router::PREFIX) {
        let seg = &seg[..seg.find(['/', '?']).unwrap_or(seg.len())];
        if crate::config::valid_service_name(seg.as_bytes()) {
            service.extend_from_slice(seg.as_bytes());
        }
    }
    let route = route?;
    let svc = view
        .snapshot
        .service_index(route.service)
        .ok_or(GatewayError::ServiceNotFound)?;
    if let Framing::Length(n) = p.info.framing {
        if n > view.snapshot.config.limits.max_body_bytes {
            return Err(GatewayError::BodyTooLarge);
        }
    }
    path.clear();
    if !route.rest.starts_with('/') {
        path.push(b'/');
    }
    path.extend_from_slice(route.rest.as_bytes());

    fwd.clear();
    let conn_opts = ConnectionOptions::collect(p.headers);
    let mut xff_seen = false;
    let mut via_seen = false;
    copy_headers(fwd, p.head, p.headers, |name| {
        !(h1::is_hop_by_hop(name)
            || conn_opts.names(name)
            || h1::name_is(name, "host")
            || h1::name_is(name, "expect")
            || h1::name_is(name, "x-forwarded-proto")
            || h1::name_is(name, "x-forwarded-host")
            // merged below into one line each:
            || h1::name_is(name, "x-forwarded-for")
            || h1::name_is(name, "via"))
    });
    // X-Forwarded-For and Via: append to what earlier hops wrote (all lines, in order),
    // unless the client listed them in Connection (then theirs are dropped).
    for (field, ours) in [
        ("x-forwarded-for", None),
        ("via", Some(if p.info.minor == 1 { VIA_11 } else { VIA_10 })),
    ] {
        fwd.extend_from_slice(field.as_bytes());
        fwd.extend_from_slice(b": ");
        let seen = if field == "via" {
            &mut via_seen
        } else {
            &mut xff_seen
        };
        if !conn_opts.names(field) {
            for h in p.headers.iter().filter(|h| h1::name_is(h.name, field)) {
                let v = h1::trim_ows(h.value);
                if !v.is_empty() {
                    if *seen {
                        fwd.extend_from_slice(b", ");
                    }
                    fwd.extend_from_slice(v);
                    *seen = true;
                }
            }
        }
        if *seen {
            fwd.extend_from_slice(b", ");
        }
        match ours {
            Some(v) => fwd.extend_from_slice(v),
            None => fwd.extend_from_slice(peer_ip),
        }
        fwd.extend_from_slice(b"\r\n");
    }
    fwd.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if let Some(host) = p.host {
        push_header(fwd, b"x-forwarded-host", host);
    }
    match p.info.framing {
        Framing::Length(n) => {
            fwd.extend_from_slice(b"content-length: ");
            h1::push_dec(fwd, n);
            fwd.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => fwd.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {
            // A body-carrying method without a body still states its length (RFC 9110 §8.6).
            if matches!(p.info.method, Method::Post | Method::Put | Method::Patch) {
                fwd.extend_from_slice(b"content-length: 0\r\n");
            }
        }
    }
    fwd.extend_from_slice(b"\r\n");
    Ok(svc)
}

/// Appends the header lines `keep` selects. Runs of consecutive kept lines are copied
/// from the raw head in one piece (a typical head is 2-3 copies instead of 4 per field);
/// a line with whitespace before its colon (tolerated in responses) is rewritten clean.
fn copy_headers(
    out: &mut Vec<u8>,
    head: &[u8],
    headers: &[httparse::Header<'_>],
    keep: impl Fn(&str) -> bool,
) {
    let base = head.as_ptr() as usize;
    // Where header i's line starts in `head`; one past the last is the final CRLF.
    let start = |i: usize| -> Option<usize> {
        match headers.get(i) {
            Some(h) => (h.name.as_ptr() as usize)
                .checked_sub(base)
                .filter(|&o| o < head.len()),
            None => head.len().checked_sub(2),
        }
    };
    let mut run: Option<usize> = None;
    for (i, h) in headers.iter().enumerate() {
        let kept = keep(h.name);
        let clean = start(i).is_some_and(|s| head.get(s + h.name.len()) == Some(&b':'));
        if kept && clean {
            run.get_or_insert(i);
            continue;
        }
        if let Some(r) = run.take() {
            push_run(out, head, &headers[r..i], start(r), start(i));
        }
        if kept {
            push_header(out, h.name.as_bytes(), h.value);
        }
    }
    if let Some(r) = run {
        push_run(out, head, &headers[r..], start(r), start(headers.len()));
    }
}

/// Copies the lines of `run` as one slice of `head`, or one by one if it cannot be located.
fn push_run(
    out: &mut Vec<u8>,
    head: &[u8],
    run: &[httparse::Header<'_>],
    from: Option<usize>,
    to: Option<usize>,
) {
    match from.zip(to).and_then(|(a, b)| head.get(a..b)) {
        Some(lines) => out.extend_from_slice(lines),
        None => {
            for h in run {
                push_header(out, h.name.as_bytes(), h.value);
            }
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The client address as written in `X-Forwarded-For` (IPv4-mapped IPv6 as IPv4).
pub fn format_ip(ip: IpAddr) -> Vec<u8> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    ip.to_string().into_bytes()
}

/// The breaker ticket of one attempt: reports the outcome once, and hands an unresolved
/// probe back when dropped (client gone, task cancelled), so it cannot wedge the circuit.
struct Attempt<'a> {
    backend: &'a Backend,
    service: &'a Service,
    ticket: Option<Ticket>,
    metrics: &'a WorkerMetrics,
}

impl<'a> Attempt<'a> {
    fn success(&mut self) {
        if let Some(t) = self.ticket.take() {
            let tr = breaker::success(&**self.backend.breaker, t, now_ms());
            self.report(false, tr);
        }
    }

    fn failure(&mut self) {
        if let Some(t) = self.ticket.take() {
            let tr = breaker::failure(&**self.backend.breaker, t, now_ms(), &self.service.policy);
            self.report(true, tr);
        }
    }

    fn report(&self, failure: bool, tr: Transition) {
        self.metrics.outcome(self.backend.slot, failure);
        if tr != Transition::None {
            self.metrics.transition(self.backend.slot);
            let what = match tr {
                Transition::Opened => "opened",
                Transition::Closed => "closed (probe succeeded)",
                _ => "re-opened (probe failed)",
            };
            log::warn!(
                "breaker: {} {} {what}",
                self.service.name,
                self.backend.url.url
            );
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            breaker::abandon(&**self.backend.breaker, t, now_ms());
        }
    }
}

/// Re-frames a body as it streams: decodes what it reads, encodes what it writes.
struct BodyRelay {
    framing: Framing,
    /// Bytes left for `Framing::Length`.
    remaining: u64,
    decoder: ChunkedDecoder,
    /// Encode our output as chunked (else raw bytes).
    chunked_out: bool,
    done: bool,
    total: u64,
    limit: u64,
}

/// Why a body could not be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyError {
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
    fn new(framing: Framing, chunked_out: bool, limit: u64) -> BodyRelay {
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
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
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
    fn eof(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        if self.framing == Framing::UntilClose {
            self.finish(out);
            Ok(())
        } else {
            Err(BodyError::Truncated)
        }
    }
}

/// Streams the rest of a body from `src` to `dst` until `relay` is done.
/// `out` is empty on entry; bytes after the body stay in `buf[*start..]`.
async fn pump(
    relay: &mut BodyRelay,
    src: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: &mut usize,
    dst: &mut TcpStream,
    out: &mut Vec<u8>,
    timeout: Duration,
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
        }
    }
    Ok(written)
}

/// Counts an upstream connection in use for as long as it lives.
struct Active<'a>(&'a Counter);

impl<'a> Active<'a> {
    fn new(c: &'a Counter) -> Active<'a> {
        c.add(1);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.add(u64::MAX); // single writer: wrapping add of -1
    }
}

/// Forwards one request and relays its response. Returns whether the client connection
/// can carry another request.
pub async fn forward(worker: &Worker, view: &View, c: &mut Conn, req: Request) -> bool {
    let snap = &view.snapshot;
    let cfg = &snap.config;
    let service = &snap.services[req.svc];
    let timeouts = cfg.timeouts;
    let info = req.info;
    // Re-frame the part of the body already in hand before choosing a backend: a request
    // whose framing is broken there never reaches one.
    let mut relay = BodyRelay::new(
        info.framing,
        info.framing == Framing::Chunked,
        cfg.limits.max_body_bytes,
    );
    c.up_body.clear();
    match relay.feed(&c.buf[c.start..], &mut c.up_body) {
        Ok(used) => c.start += used,
        Err(e) => return reply_body_error(c, e, timeouts.body).await,
    }
    let mut exclude = None;
    let mut last_err = None;
    // At most two attempts: a refused connect (nothing sent) moves on to the next backend.
    for _ in 0..2 {
        let keep = info.keep_alive && relay.done;
        let (idx, ticket) = match view.pick(req.svc, exclude) {
            Pick::Backend { idx, ticket } => (idx, ticket),
            Pick::AllOpen { retry_after_secs } => {
                let err = last_err.unwrap_or(GatewayError::NoBackend);
                let retry = (err == GatewayError::NoBackend).then_some(retry_after_secs);
                return reply_error(c, keep, err, retry, timeouts.body).await;
            }
        };
        let backend = &service.backends[idx];
        let mut attempt = Attempt {
            backend,
            service,
            ticket: Some(ticket),
            metrics: &worker.metrics,
        };
        c.log.backend = Some(idx);
        let (up, reused) = match worker.pool.take(backend.slot) {
            Some(s) => (s, true),
            None => {
                match timed_connect(worker, service, backend.url.addr, timeouts.connect).await {
                    Ok(s) => (s, false),
                    Err(err) => {
                        attempt.failure();
                        last_err = Some(err);
                        if err == GatewayError::ConnectFailed {
                            exclude = Some(idx);
                            continue;
                        }
                        return reply_error(c, keep, err, None, timeouts.body).await;
                    }
                }
            }
        };
        return exchange(worker, view, c, req, relay, attempt, (up, reused)).await;
    }
    let err = last_err.unwrap_or(GatewayError::ConnectFailed);
    reply_error(c, info.keep_alive && relay.done, err, None, timeouts.body).await
}

/// Answers with a gateway error; `keep` only if the whole request was consumed.
async fn reply_error(
    c: &mut Conn,
    keep: bool,
    err: GatewayError,
    retry_after: Option<u64>,
    timeout: Duration,
) -> bool {
    c.reply(err, true, retry_after, !keep, timeout).await && keep
}

/// Connects and records the time it took in the service's connect histogram.
async fn timed_connect(
    worker: &Worker,
    service: &Service,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, GatewayError> {
    let t = Instant::now();
    let r = connect(addr, timeout).await;
    if r.is_ok() {
        worker
            .metrics
            .connect
            .observe(service.id, t.elapsed().as_micros() as u64);
    }
    r
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, GatewayError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(GatewayError::ConnectFailed),
        Err(_) => Err(GatewayError::ConnectTimeout),
    }
}

/// Writes the request line and `Host` for `backend`, then the prepared header block.
fn write_request_head(c: &mut Conn, method: Method, backend: &Backend) {
    let out = &mut c.up_out;
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(backend.url.path_prefix.as_bytes());
    out.extend_from_slice(&c.path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(backend.url.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&c.fwd);
}

/// How reading the response head ended, short of success.
enum HeadFail {
    /// Nothing at all came back on a reused connection: it was stale.
    Stale,
    /// The backend failed.
    Err(GatewayError),
    /// Streaming the request body failed on the client's side.
    Client(BodyError),
}

/// One exchange with one backend, from sending the request to the end of the response.
async fn exchange(
    worker: &Worker,
    view: &View,
    c: &mut Conn,
    req: Request,
    mut relay: BodyRelay,
    mut attempt: Attempt<'_>,
    (mut up, mut reused): (TcpStream, bool),
) -> bool {
    let cfg = &view.snapshot.config;
    let timeouts = cfg.timeouts;
    let info = req.info;
    let backend = attempt.backend;

    let _active = Active::new(&worker.metrics.upstream_active);
    write_request_head(c, info.method, backend);
    c.up_out.extend_from_slice(&c.up_body);
    if info.expect_continue && !relay.done {
        c.out.clear();
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if io::write_all(&mut c.stream, &mut c.out, timeouts.body)
            .await
            .is_err()
        {
            return false;
        }
        c.out.clear();
    }
    // The whole request is in `up_out`: it can be resent on a fresh connection.
    let resendable = relay.done && info.method.is_idempotent();

    // Send the request, then read the response head; a stale pooled connection is replaced
    // once by a fresh one when the request can be resent.
    c.ustart = 0;
    c.ubuf.clear();
    // When the request was completely sent (the response timeout and latency start here).
    let mut sent_at = Instant::now();
    let parsed = loop {
        let result = match io::write_all(&mut up, &mut c.up_out, timeouts.body).await {
            Err(_) if reused => Err(HeadFail::Stale),
            Err(_) => Err(HeadFail::Err(GatewayError::BackendClosed)),
            Ok(()) => {
                let streaming = !relay.done;
                let streamed = if relay.done {
                    Ok(0)
                } else {
                    c.out.clear();
                    pump(
                        &mut relay,
                        &mut c.stream,
                        &mut c.buf,
                        &mut c.start,
                        &mut up,
                        &mut c.out,
                        timeouts.body,
                    )
                    .await
                };
                match streamed {
                    Ok(_) => {
                        if streaming {
                            // The body was streamed: the request ended just now.
                            sent_at = Instant::now();
                        }
                        read_response_head(
                            worker,
                            c,
                            &mut up,
                            info,
                            reused,
                            (sent_at, timeouts.response),
                            cfg.limits.max_head_bytes,
                        )
                        .await
                    }
                    Err(BodyError::DstIo) => Err(HeadFail::Err(GatewayError::BackendClosed)),
                    Err(e) => Err(HeadFail::Client(e)),
                }
            }
        };
        match result {
            Ok(p) => break Ok(p),
            Err(HeadFail::Stale) if reused && resendable => {
                reused = false;
                sent_at = Instant::now();
                match timed_connect(worker, attempt.service, backend.url.addr, timeouts.connect)
                    .await
                {
                    Ok(s) => up = s,
                    Err(err) => break Err(err),
                }
            }
            Err(HeadFail::Stale) => break Err(GatewayError::BackendClosed),
            Err(HeadFail::Err(err)) => break Err(err),
            Err(HeadFail::Client(e)) => {
                drop(attempt); // the client's fault: no verdict on the backend
                return reply_body_error(c, e, timeouts.body).await;
            }
        }
    };
    let resp = match parsed {
        Ok(resp) => resp,
        Err(err) => {
            attempt.failure();
            return reply_error(c, info.keep_alive && relay.done, err, None, timeouts.body).await;
        }
    };
    let upstream_us = sent_at.elapsed().as_micros() as u64;
    worker
        .metrics
        .response
        .observe(attempt.service.id, upstream_us);
    c.log.upstream_us = Some(upstream_us);
    c.log.status = resp.status;
    if attempt.service.settings.is_failure_status(resp.status) {
        attempt.failure();
    } else {
        attempt.success();
    }

    // Relay the response: the head is in `c.out`; add whatever body is in hand, one write.
    let keep_client = resp.keep_client;
    let mut body = BodyRelay::new(resp.framing, resp.client_chunked, u64::MAX);
    let used = match body.feed(&c.ubuf[c.ustart..], &mut c.out) {
        Ok(n) => n,
        Err(_) => {
            // Broken framing before anything reached the client: a clean 502 is still possible.
            c.reply(
                GatewayError::BadResponse("invalid_chunked_body"),
                true,
                None,
                true,
                timeouts.body,
            )
            .await;
            return false;
        }
    };
    c.ustart += used;
    c.log.bytes += c.out.len() as u64;
    if io::write_all(&mut c.stream, &mut c.out, timeouts.body)
        .await
        .is_err()
    {
        return false;
    }
    c.out.clear();
    if !body.done {
        let mut out = std::mem::take(&mut c.out);
        let r = pump(
            &mut body,
            &mut up,
            &mut c.ubuf,
            &mut c.ustart,
            &mut c.stream,
            &mut out,
            timeouts.body,
        )
        .await;
        c.out = out;
        match r {
            Ok(n) => c.log.bytes += n,
            Err(BodyError::DstIo) => return false,
            Err(_) => {
                // The backend failed mid-body: the client must see an aborted response.
                io::set_reset_on_close(&c.stream);
                return false;
            }
        }
    }
    // Reuse the backend connection only after a clean, fully framed exchange.
    if resp.reusable && body.done && c.ustart == c.ubuf.len() {
        worker.pool.put(backend.slot, up);
    }
    keep_client && relay.done
}

async fn reply_body_error(c: &mut Conn, e: BodyError, timeout: Duration) -> bool {
    let err = match e {
        BodyError::Framing(why) => GatewayError::BadRequest(why),
        BodyError::TooLarge => GatewayError::BodyTooLarge,
        BodyError::SrcIo => GatewayError::RequestTimeout,
        BodyError::Truncated | BodyError::DstIo => return false,
    };
    c.reply(err, false, None, true, timeout).await;
    false
}

/// Facts about the final response head, whose client-bound copy is already in `c.out`.
#[derive(Debug, Clone, Copy)]
struct ResponseHead {
    status: u16,
    framing: Framing,
    reusable: bool,
    /// We re-encode the body as chunked for the client.
    client_chunked: bool,
    /// The client connection stays open afterwards (else the head said `Connection: close`).
    keep_client: bool,
}

/// Reads the backend's response head within `timeout`, relaying 1xx interim responses.
async fn read_response_head(
    worker: &Worker,
    c: &mut Conn,
    up: &mut TcpStream,
    info: RequestInfo,
    reused: bool,
    (sent_at, timeout): (Instant, Duration),
    max_head: usize,
) -> Result<ResponseHead, HeadFail> {
    // The whole head must arrive within `timeout` of the request being sent; the first
    // read starts right then, so only later reads need the clock.
    let mut first_read = true;
    let mut got_any = false;
    loop {
        if c.ustart < c.ubuf.len() {
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            let parsed = h1::parse_response(
                &c.ubuf[c.ustart..],
                &mut headers,
                info.method == Method::Head,
                max_head,
            )
            .map_err(|e| HeadFail::Err(GatewayError::BadResponse(e.0)))?;
            if let Some(p) = parsed {
                let status = p.info.status;
                if status == 101 {
                    return Err(HeadFail::Err(GatewayError::BadResponse(
                        "unexpected_upgrade",
                    )));
                }
                if status < 200 {
                    // Interim response: pass it on to HTTP/1.1 clients, then read on.
                    let head_len = p.info.head_len;
                    if info.minor == 1 {
                        c.out.clear();
                        c.out
                            .extend_from_slice(&c.ubuf[c.ustart..c.ustart + head_len]);
                        let _ = io::write_all(&mut c.stream, &mut c.out, timeout).await;
                        c.out.clear();
                    }
                    c.ustart += head_len;
                    continue;
                }
                let framing = p.info.framing;
                let unframed = matches!(framing, Framing::Chunked | Framing::UntilClose);
                let close_delimited = info.minor == 0 && unframed;
                // A drain that began while we waited closes this connection after the response.
                let keep = info.keep_alive && !close_delimited && !worker.draining();
                let head = ResponseHead {
                    status,
                    framing,
                    reusable: p.info.reusable,
                    client_chunked: info.minor == 1 && unframed,
                    keep_client: keep,
                };
                c.out.clear();
                write_response_head(&mut c.out, &p, info, head.client_chunked, keep);
                c.ustart += p.info.head_len;
                return Ok(head);
            }
        }
        let left = if first_read {
            first_read = false;
            timeout
        } else {
            (sent_at + timeout).saturating_duration_since(Instant::now())
        };
        match io::read_more(up, &mut c.ubuf, &mut c.ustart, 4096, left).await {
            Read::Data(_) => got_any = true,
            Read::Timeout => return Err(HeadFail::Err(GatewayError::ResponseTimeout)),
            Read::Eof | Read::Err(_) if reused && !got_any => return Err(HeadFail::Stale),
            Read::Eof | Read::Err(_) => return Err(HeadFail::Err(GatewayError::BackendClosed)),
        }
    }
}

/// Writes the client-bound response head: the backend's status and end-to-end fields,
/// then our framing and connection fields.
fn write_response_head(
    out: &mut Vec<u8>,
    p: &h1::ParsedResponse<'_, '_>,
    info: RequestInfo,
    chunked: bool,
    keep: bool,
) {
    let status = p.info.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    h1::push_dec(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(p.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let opts = ConnectionOptions::collect(p.headers);
    copy_headers(out, p.head, p.headers, |name| {
        !(h1::is_hop_by_hop(name) || opts.names(name))
    });
    match p.info.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            h1::push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::None => {
            let is_head = info.method == Method::Head;
            match p.content_length {
                // HEAD and 304 keep the length the full response would have had.
                Some(n) if is_head || status == 304 => {
                    out.extend_from_slice(b"content-length: ");
                    h1::push_dec(out, n);
                    out.extend_from_slice(b"\r\n");
                }
                _ if is_head || status == 204 || status == 304 || status < 200 => {}
                _ => out.extend_from_slice(b"content-length: 0\r\n"),
            }
        }
        Framing::Chunked | Framing::UntilClose if chunked => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {}
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if info.minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_headers_copies_runs_and_cleans_space_before_colon() {
        let raw =
            b"HTTP/1.1 200 OK\r\nA: 1\r\nB:  2 \r\nDrop: x\r\nC : 3\r\nD: 4\r\nE: 5\r\n\r\nbody";
        let mut h = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let p = h1::parse_response(raw, &mut h, false, 8192)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        copy_headers(&mut out, p.head, p.headers, |n| n != "Drop");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A: 1\r\nB:  2 \r\nC: 3\r\nD: 4\r\nE: 5\r\n"
        );
        let mut out = Vec::new();
        copy_headers(&mut out, p.head, p.headers, |n| n == "E" || n == "A");
        assert_eq!(String::from_utf8(out).unwrap(), "A: 1\r\nE: 5\r\n");
    }
}
