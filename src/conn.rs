//! One client connection: read a request head within its deadline, route it, hand it to the
//! proxy, and loop for the next one (keep-alive and pipelining, answered in order).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::accesslog;
use crate::admission::{Caller, Verdict};
use crate::balancer::View;
use crate::downstream::{After, Downstream, Record};
use crate::error::GatewayError;
use crate::exchange::{self, Prepared, Request};
use crate::h1::{self, Framing};
use crate::io::{self, Read, BUF_SIZE};
use crate::reqid;
use crate::rewrite;
use crate::worker::{ConnGuard, InFlight, Live, Worker};

/// A client connection: its side of the wire and the buffers its requests use.
///
/// An idle connection holds no buffer: it waits for readiness (a poll on the socket), and
/// only then borrows an input buffer from the worker. Every buffer (input, output, the
/// rewritten head) is lent while a request is in flight and given back after it, so
/// thousands of idle keep-alive connections cost little, and one that carried a large head
/// gives its memory back when it goes idle.
pub struct Conn {
    pub down: Downstream,
    /// The client's IP as text, formatted once for `X-Forwarded-For`.
    pub peer_ip: Vec<u8>,
    /// Forwarded header lines of the current request, framing included, ending in CRLF CRLF.
    pub fwd: Vec<u8>,
    /// What to append to the backend's path prefix (starts with `/`).
    pub path: Vec<u8>,
    /// The current request's service segment, for error bodies.
    pub service: Vec<u8>,
    /// The current request's target, kept only when the access log is on.
    pub target: Vec<u8>,
    /// For the access log: the method of a refused head that [`h1::Method`] does not
    /// name (empty otherwise; allocated only then).
    pub method: Vec<u8>,
    /// A copy of the request ID lent to the worker with the request (access log and
    /// `request_id` on), for a line the drain deadline may have to write.
    pub logged_id: Vec<u8>,
    /// The request's protocol and the headers the access log's fields name, kept only when
    /// the access log is on.
    pub kept: accesslog::Kept,
}

/// What the next bytes on the connection amount to.
enum Next {
    /// Forward it; `held`: admission took an in-flight slot of the service, to release
    /// when the exchange ends.
    Forward {
        req: Request,
        held: bool,
    },
    /// `OPTIONS *`: answered by the gateway itself; keep the connection if the request was
    /// complete and bodyless and the client wants it kept.
    Options {
        keep_alive: bool,
        minor: u8,
    },
    /// Answer with this error; keep the connection if the request was complete and framed.
    Reject {
        err: GatewayError,
        keep_alive: bool,
        with_service: bool,
        method: Option<h1::Method>,
        /// The configured service the target routed to (the request is counted for it).
        svc: Option<usize>,
        retry_after: Option<u64>,
        /// A body follows that will not be read: close lingering (`Downstream::linger`),
        /// so that the client reads the answer rather than a reset.
        linger: bool,
    },
    Close,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr, worker: &Worker) -> Conn {
        let down = Downstream::new(stream, peer, worker.date.clone());
        Conn {
            down,
            peer_ip: rewrite::format_ip(peer.ip()),
            fwd: Vec::new(),
            path: Vec::new(),
            service: Vec::with_capacity(64),
            target: Vec::new(),
            method: Vec::new(),
            logged_id: Vec::new(),
            kept: accesslog::Kept::default(),
        }
    }

    /// Between requests: every lent buffer goes back to the worker, the input one too when
    /// nothing pipelined is left in it.
    fn park(&mut self, worker: &Worker) {
        worker.recycle(std::mem::take(&mut self.down.out));
        worker.recycle(std::mem::take(&mut self.fwd));
        worker.recycle(std::mem::take(&mut self.path));
        let d = &mut self.down;
        if d.start == d.buf.len() {
            worker.recycle(std::mem::take(&mut d.buf));
            d.start = 0;
        }
    }
}

/// Serves one client connection until it closes, errs or times out. `registration` is its
/// entry in the worker's registry, made when it was accepted (so the count of open
/// connections is exact at the next accept); it is released when this returns.
pub async fn serve(
    worker: Rc<Worker>,
    registration: ConnGuard,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let mut c = Conn::new(stream, peer, &worker);
    // Every answer given once the drain began says `Connection: close` and ends the
    // connection; one taken from the backlog then is served its first request. An answer
    // whose head went out keep-alive just before the signal (and ended after it) leaves
    // a client free to send its next request: that one is read and answered with
    // `Connection: close`, or the drain closes the connection after a second or two of
    // quiet (`server::drain`). Closed at once, it lost requests sent back to back: up to
    // 12 of 32 keep-alive clients per drain, a review.
    loop {
        c.down.record = Record::default();
        c.down.fields.clear();
        c.down.request_id.clear();
        c.down.head = false;
        c.down.minor = 1;
        c.target.clear();
        c.method.clear();
        c.kept.clear();
        c.park(&worker);
        let (next, view) = next_request(&mut c, &worker, &registration.live).await;
        registration.live.head.set(None);
        registration.live.used.set(true);
        worker.poke(); // a request began (for `busy_poll`)
        if c.down.out.capacity() == 0 {
            c.down.out = worker.buffer();
        }
        // The request's total time (the duration histogram, the access log). A head that
        // timed out began `client_header` ago.
        let logged = worker.access.wanted(&view.snapshot.config.access_log);
        let mut started = crate::clock::now();
        if let Next::Reject {
            err: GatewayError::RequestTimeout,
            ..
        } = next
        {
            let header = view.snapshot.config.timeouts.client_header;
            started = started.checked_sub(header).unwrap_or(started);
        }
        let after = match next {
            Next::Forward { mut req, held } => {
                // Admission's in-flight slot is released whatever way the exchange ends.
                let _slot = held.then(|| Release(&view.snapshot.services[req.svc].admission));
                if worker.stopping() {
                    req.info.keep_alive = false; // the response says `Connection: close`
                }
                // With the access log on, the worker can write this request's line if the
                // drain deadline cuts it (`Worker::log_cut`).
                if logged {
                    registration.live.answered.set(None);
                    *registration.live.request.borrow_mut() = Some(InFlight {
                        client: c.down.record.client.unwrap_or(c.down.peer.ip()),
                        method: req.info.method,
                        target: std::mem::take(&mut c.target),
                        peer: c.down.peer,
                        kept: std::mem::take(&mut c.kept),
                        view: view.clone(),
                        svc: req.svc,
                        backend: std::cell::Cell::new(None),
                        earlier: std::cell::Cell::new([None; 2]),
                        started,
                        request_id: {
                            let mut copy = std::mem::take(&mut c.logged_id);
                            copy.clear();
                            copy.extend_from_slice(&c.down.request_id);
                            copy
                        },
                    });
                }
                let prep = Prepared {
                    fwd: &c.fwd,
                    path: &c.path,
                    service: &c.service,
                    live: &registration.live,
                };
                // Boxed, like every step that holds a timer: their state lives only while
                // they run, so an idle connection's task stays small.
                let after = worker
                    .boxes
                    .pin_with(|| exchange::forward(&worker, &view, &mut c.down, req, prep))
                    .await;
                if logged {
                    if let Some(f) = registration.live.request.borrow_mut().take() {
                        c.target = f.target;
                        c.kept = f.kept;
                        c.logged_id = f.request_id;
                    }
                }
                finish(
                    &worker,
                    &view,
                    &c,
                    Some(req.svc),
                    Some(req.info.method),
                    started,
                );
                after
            }
            Next::Options { keep_alive, minor } => {
                let timeout = view.snapshot.config.timeouts.body;
                let keep = keep_alive && !worker.stopping();
                let sent = worker
                    .boxes
                    .pin(c.down.reply_options(keep, minor, timeout))
                    .await;
                finish(&worker, &view, &c, None, Some(h1::Method::Options), started);
                if sent && keep {
                    After::Keep
                } else {
                    After::Close
                }
            }
            Next::Reject {
                err,
                keep_alive,
                with_service,
                method,
                svc,
                retry_after,
                linger,
            } => {
                let timeout = view.snapshot.config.timeouts.body;
                // Stopping, our own answers say `Connection: close` as forwarded ones do.
                let keep_alive = keep_alive && !worker.stopping();
                let service = with_service.then_some(&c.service[..]);
                let reply = c
                    .down
                    .reply(err, service, retry_after, !keep_alive, timeout);
                let sent = worker.boxes.pin(reply).await;
                finish(&worker, &view, &c, svc, method, started);
                match (sent, keep_alive, linger) {
                    (true, true, _) => After::Keep,
                    (true, false, true) => After::Linger,
                    _ => After::Close,
                }
            }
            Next::Close => After::Close,
        };
        worker.poke(); // ... and ended
        match after {
            After::Keep => {}
            After::Close => break,
            After::Linger => {
                // Its answer is out: the drain closes it (at once if it is quiet) rather
                // than wait for it, and eviction at the connection cap may take it.
                registration.live.idle.set(Some(worker.tick()));
                registration.live.lingering.set(true);
                let min_rate = view.snapshot.config.limits.min_body_rate;
                let stop = || worker.draining();
                worker.boxes.pin(c.down.linger(min_rate, stop)).await;
                break;
            }
        }
    }
}

/// Gives back an in-flight slot of a service when dropped.
struct Release<'a>(&'a crate::admission::Admission);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// What the access log and the service's counts can still say about a head that was
/// refused or never completed: its method and configured service, from its request line
/// when that is plain (`h1::request_line`; the target is kept for the log line). A target
/// over the limit (a 414) is not quoted back.
fn refused_line(
    c: &mut Conn,
    view: &View,
    keep_target: bool,
    max_target: usize,
) -> (Option<h1::Method>, Option<usize>) {
    let d = &c.down;
    let line = h1::request_line(&d.buf[d.start..]).filter(|(_, t)| t.len() <= max_target);
    let Some((method, target)) = line else {
        return (None, None);
    };
    if keep_target {
        c.target.clear();
        c.method.clear();
        c.target.extend_from_slice(target.as_bytes());
        c.method.extend_from_slice(method);
    }
    let svc = service_of(target, view, &mut c.service);
    (h1::Method::from_bytes(method), svc)
}

/// The configured service `target` routes to, if any (its name then in `service`).
fn service_of(target: &str, view: &View, service: &mut Vec<u8>) -> Option<usize> {
    let r = crate::router::route(target).ok()?;
    let i = view.snapshot.service_index(r.service)?;
    service.clear();
    service.extend_from_slice(r.service);
    Some(i)
}

/// With `request_id: true`, gives a head refused before it parsed (or that never came
/// whole) an ID made here, for its answer and its log line.
fn fresh_id(d: &mut Downstream, worker: &Worker, on: bool) {
    if on {
        d.request_id.clear();
        worker.ids.make(&mut d.request_id);
        rewrite::push_header(&mut d.fields, reqid::FIELD.as_bytes(), &d.request_id);
    }
}

/// Counts the finished request and writes its access log line.
fn finish(
    worker: &Worker,
    view: &View,
    c: &Conn,
    svc: Option<usize>,
    method: Option<h1::Method>,
    started: Instant,
) {
    let service = svc.map(|i| &view.snapshot.services[i]);
    let rec = &c.down.record;
    let total_us = crate::clock::now()
        .saturating_duration_since(started)
        .as_micros() as u64;
    worker
        .metrics
        .response(service.map(|s| s.id), rec, total_us);
    if worker.access.wanted(&view.snapshot.config.access_log) {
        let url = |b: Option<usize>| {
            service
                .zip(b)
                .and_then(|(s, b)| s.backends.get(b))
                .map(|b| b.url.url.as_str())
        };
        let backend = url(rec.backend);
        let entry = accesslog::Entry {
            client: rec.client.unwrap_or(c.down.peer.ip()),
            method: match method {
                Some(m) => m.as_str(),
                // A refused head's method, if its request line was plain (`h1::request_line`).
                None if !c.method.is_empty() => std::str::from_utf8(&c.method).unwrap_or("-"),
                None => "-",
            },
            target: if c.target.is_empty() { b"-" } else { &c.target },
            service: service.map(|s| s.name.as_str()),
            backend,
            earlier: rec.earlier.map(url),
            status: rec.status,
            bytes: rec.bytes,
            upstream_us: rec.upstream_us,
            total_us,
            error: rec.error,
            drained: false,
            truncated: rec.cut,
            request_id: view
                .snapshot
                .config
                .request_id
                .then_some(&c.down.request_id[..]),
            peer: Some(c.down.peer),
            kept: Some(&c.kept),
        };
        let config = &view.snapshot.config;
        worker.access.record(
            &entry,
            config.access_log_format,
            &config.access_log_fields,
            &config.access_log_epoch,
        );
    }
}

/// Admission control for a routed request (`admission.rs`): forward it, or answer 429 or
/// 503 `overloaded` without touching a backend or a breaker.
fn admit(view: &View, caller: &Caller<'_>, fields: &mut Vec<u8>, req: Request) -> Next {
    let service = &view.snapshot.services[req.svc];
    if !service.admission.is_limited() {
        return Next::Forward { req, held: false };
    }
    let trusted = &view.snapshot.config.admission.trusted_proxies;
    let (err, retry_after) = match service.admission.admit(caller, trusted, fields) {
        Verdict::Admit { held } => return Next::Forward { req, held },
        Verdict::Limited { retry_after } => (GatewayError::RateLimited, Some(retry_after)),
        Verdict::Overloaded => (GatewayError::Overloaded, Some(1)),
        Verdict::Ambiguous(detail) => (GatewayError::BadRequest(detail), None),
    };
    Next::Reject {
        err,
        // A body it may have is not read: then the connection closes; as after any 400
        // (the contract: an ambiguous request ends it).
        keep_alive: req.info.keep_alive && req.info.framing == Framing::None && err.status() != 400,
        with_service: true,
        method: Some(req.info.method),
        svc: Some(req.svc),
        retry_after,
        linger: req.info.framing != Framing::None,
    }
}

/// A refusal (404, 429, 503) of a request whose `Content-Length` body is already in hand,
/// whole: the body is read past and the connection kept, as NGINX discards a body it
/// refuses. Until 2026-12-04 each such refusal closed the connection, and what the client
/// had pipelined behind it went unanswered (a review: over 800 requests a run behind POSTs
/// to a removed service). A 400 still closes (the contract), and so does a 413: its body is
/// what was refused. A body still to come is not waited for: the connection lingers shut.
fn skip_refused_body(next: &mut Next, info: h1::RequestInfo, d: &mut Downstream) {
    let Next::Reject {
        err, keep_alive, ..
    } = next
    else {
        return;
    };
    let Framing::Length(n) = info.framing else {
        return;
    };
    let here = d.buf.len().saturating_sub(d.start);
    let whole = usize::try_from(n).is_ok_and(|n| n <= here);
    if *keep_alive
        || !whole
        || !info.keep_alive
        || err.status() == 400
        || *err == GatewayError::BodyTooLarge
    {
        return;
    }
    d.start += n as usize;
    d.record.received += n;
    // `linger` stays: a drain that closes the connection after the answer still lingers
    // for what the client pipelined behind it (a review saw a reset there otherwise).
    *keep_alive = true;
}

/// Reads until a complete head is buffered, then parses, routes and prepares it.
///
/// The config view is taken when the bytes are there, not when the wait began, so a
/// connection that sat idle across a reload serves its next request on the new config.
async fn next_request(c: &mut Conn, worker: &Worker, live: &Live) -> (Next, Rc<View>) {
    let idle = &live.idle;
    // Bytes of it came before the last request was answered: the client pipelines, and a
    // FIN from it is a half-close (see `Live::pipelining`), also behind a request the
    // gateway answered itself (a re-review: a 404 pipelined ahead of a slow request).
    if c.down.start < c.down.buf.len() {
        live.pipelining.set(true);
    }
    // Set when part of a head has arrived; the rest must follow by then (408).
    let mut deadline: Option<Instant> = None;
    // Parse only when it can decide something: the work stays linear in the head's size
    // however it is split.
    let mut scan = h1::HeadScan::default();
    loop {
        let view = worker.view();
        let cfg = &view.snapshot.config;
        // The target and the logged headers are kept when this config logs the request.
        let keep_target = worker.access.wanted(&cfg.access_log);
        let d = &mut c.down;
        let limits = cfg.limits.head();
        if d.start < d.buf.len() && scan.ready(&d.buf[d.start..], &limits) {
            let mut headers = h1::header_slots();
            match h1::parse_request(&d.buf[d.start..], &mut headers, &limits) {
                Ok(Some(parsed)) => {
                    let head_len = parsed.head_len;
                    let info = parsed.info;
                    d.head = info.method == h1::Method::Head;
                    d.minor = info.minor;
                    let trusted = &cfg.admission.trusted_proxies;
                    let trusted = crate::admission::is_trusted(d.peer.ip(), trusted);
                    if keep_target {
                        c.method.clear(); // kept while the head came (for a 408)
                        c.target.clear();
                        c.target.extend_from_slice(parsed.target.as_bytes());
                        c.kept.minor = Some(info.minor);
                        if cfg.logs_headers() {
                            c.kept.keep(parsed.headers);
                        }
                        // Behind a trusted proxy the log names the client it forwards for,
                        // as NGINX's realip does (it named the proxy: an operator review).
                        if trusted {
                            let trusted = &cfg.admission.trusted_proxies;
                            let ip =
                                crate::admission::client_ip(d.peer.ip(), parsed.headers, trusted);
                            d.record.client = Some(ip);
                        }
                    }
                    if cfg.request_id {
                        reqid::choose(&mut d.request_id, parsed.headers, trusted, &worker.ids);
                        rewrite::push_header(&mut d.fields, reqid::FIELD.as_bytes(), &d.request_id);
                    }
                    if parsed.target == "*" {
                        // `OPTIONS *` (h1 passes `*` for OPTIONS only): about us, not a
                        // backend. A body it may have is not read, so then we close.
                        d.start += head_len;
                        d.record.received = head_len as u64;
                        let next = Next::Options {
                            keep_alive: info.keep_alive && info.framing == Framing::None,
                            minor: info.minor,
                        };
                        return (next, view);
                    }
                    if c.fwd.capacity() == 0 {
                        c.fwd = worker.buffer();
                        c.path = worker.buffer();
                    }
                    let request_id = cfg.request_id.then_some(&d.request_id[..]);
                    let result = rewrite::prepare(
                        &parsed,
                        &view,
                        rewrite::Peer {
                            ip: &c.peer_ip,
                            trusted,
                        },
                        request_id,
                        &mut c.fwd,
                        &mut c.path,
                        &mut c.service,
                    );
                    d.start += head_len;
                    d.record.received = head_len as u64;
                    let mut next = match result {
                        Ok(svc) => {
                            let mut info = info;
                            info.upgrade =
                                rewrite::forwards_upgrade(info, &view.snapshot.services[svc]);
                            let caller = Caller {
                                peer: d.peer.ip(),
                                headers: parsed.headers,
                            };
                            admit(&view, &caller, &mut d.fields, Request { info, svc })
                        }
                        Err(rewrite::Refused { err, svc }) => Next::Reject {
                            err,
                            // Safe to go on only if no body is left unread; every
                            // 400 closes (the contract: a malformed request ends it).
                            keep_alive: info.keep_alive
                                && info.framing == Framing::None
                                && err.status() != 400,
                            // The service it named: unknown (404), or configured and
                            // refused for another reason (a 413 by `Content-Length`).
                            with_service: (err == GatewayError::ServiceNotFound || svc.is_some())
                                && !c.service.is_empty(),
                            method: Some(info.method),
                            svc,
                            retry_after: None,
                            linger: info.framing != Framing::None,
                        },
                    };
                    skip_refused_body(&mut next, info, d);
                    return (next, view);
                }
                Ok(None) => {}
                Err(e) => {
                    // `HTTP/1.2`: read as 1.1, and the head parsed again from the start.
                    if e == h1::RequestError::Bad("invalid_version")
                        && h1::later_minor_as_1_1(&mut d.buf[d.start..])
                    {
                        scan = h1::HeadScan::default();
                        continue;
                    }
                    let max_target = limits.max_target_bytes;
                    d.record.received = (d.buf.len() - d.start) as u64;
                    fresh_id(&mut c.down, worker, cfg.request_id);
                    let (method, svc) = refused_line(c, &view, keep_target, max_target);
                    let next = Next::Reject {
                        err: e.into(),
                        keep_alive: false,
                        with_service: svc.is_some(),
                        method,
                        svc,
                        retry_after: None,
                        // The rest of a refused head (431, 414) or whatever follows a
                        // malformed one may still be coming: closing on unread bytes
                        // would reset the connection, maybe before the client read why.
                        linger: true,
                    };
                    return (next, view);
                }
            }
        }
        let d = &mut c.down;
        if deadline.is_none() && d.start < d.buf.len() {
            // Part of a head has arrived: the rest must follow by then (408). At the
            // connection cap, one still arriving a second later may be evicted.
            deadline = Some(Instant::now() + cfg.timeouts.client_header);
            live.head.set(Some(worker.tick()));
            live.head_at.set(Some(crate::clock::now()));
        }
        let max_target = cfg.limits.max_target_bytes;
        drop(view); // an idle connection must not pin an old snapshot
        let read = match deadline {
            Some(end) => {
                live.head_bytes.set(d.buf.len() - d.start);
                // The read's buffer is gone if it times out: a whole request line is kept
                // now for the 408's log line (a review saw `-` for it) and its service's
                // counts, the access log on or off (off, a 408 counted for no service).
                if c.method.is_empty() {
                    if let Some((method, target)) = h1::request_line(&d.buf[d.start..]) {
                        if target.len() <= max_target {
                            c.method.extend_from_slice(method);
                            c.target.extend_from_slice(target.as_bytes());
                        }
                    }
                }
                let wait = end.saturating_duration_since(Instant::now());
                let timed = io::read_more(d.sock.r(), &mut d.buf, &mut d.start, BUF_SIZE / 2, wait);
                worker.boxes.pin(timed).await
            }
            None => {
                // Between requests: no timer of its own, so the idle task stays small. The
                // worker's sweep ends it after `client_idle` (see
                // `Worker::close_expired_idle`), a graceful shutdown at once.
                // The first few idle connections of a worker read with a lent buffer; the
                // others wait for readiness holding none, then borrow one to read into.
                idle.set(Some(worker.tick()));
                live.pipelining.set(false);
                worker.wake_acceptor(); // one may wait to close an idle connection
                let mut lent = None;
                if d.buf.capacity() == 0 {
                    lent = worker.lend_idle_read();
                    if lent.is_none() && d.sock.readable().await.is_err() {
                        idle.set(None);
                        return (Next::Close, worker.view());
                    }
                    d.buf = worker.buffer();
                    d.start = 0;
                }
                let read =
                    io::read_more_untimed(d.sock.r(), &mut d.buf, &mut d.start, BUF_SIZE / 2);
                let read = read.await;
                drop(lent);
                read
            }
        };
        idle.set(None);
        match read {
            Read::Data(_) => {}
            Read::Timeout if deadline.is_some() => {
                // Logged and counted with its request line when that came whole (a
                // review saw `-` for a head that stopped in its fields).
                // The read took the buffer with it: what had come is counted from before.
                c.down.record.received = live.head_bytes.get() as u64;
                let view = worker.view();
                fresh_id(&mut c.down, worker, view.snapshot.config.request_id);
                let method = h1::Method::from_bytes(&c.method);
                let target = std::str::from_utf8(&c.target).unwrap_or_default();
                let svc = service_of(target, &view, &mut c.service);
                let next = Next::Reject {
                    err: GatewayError::RequestTimeout,
                    keep_alive: false,
                    with_service: svc.is_some(),
                    method,
                    svc,
                    retry_after: None,
                    linger: false,
                };
                return (next, view);
            }
            Read::Timeout | Read::Eof | Read::Err(_) => return (Next::Close, worker.view()),
        }
    }
}
