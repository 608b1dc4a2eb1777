//! One request's trip to a backend, phase by phase: pick → connect or reuse → send the head
//! → stream the body while reading the response → relay → settle the outcome.
//!
//! The exchange owns its upstream state (the connection, what goes up, what came down);
//! the client side is borrowed from `conn` as a [`Downstream`]. It is full duplex: while a
//! request body streams up, the backend's response is read, so a backend that answers early
//! is heard at once. An answer that closes (a 413 or 401 after the head) stops the upload;
//! one that keeps the connection is relayed while the upload goes on, its waits held open
//! until the upload ends. What the breaker hears is decided in one place, `Attempt::settle`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balancer::{Pick, View};
use crate::breaker::{self, Ticket, Transition};
use crate::config::{Config, Timeouts};
use crate::date::DateCache;
use crate::downstream::{After, Downstream, Record};
use crate::error::GatewayError;
use crate::h1::{self, Framing, Method, RequestInfo};
use crate::io::{self, Read, ReadHalf, Socket, WriteHalf};
use crate::metrics::Counter;
use crate::relay::{pump, BodyError, BodyRelay, Owed, Pace, Side};
use crate::rewrite;
use crate::state::{now_ms, Backend, Service};
use crate::worker::{Answered, Live, Watch, Worker};

/// A parsed, routed request ready to forward.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub info: RequestInfo,
    /// Index of the service in the snapshot.
    pub svc: usize,
}

/// The pieces of the rewritten request head that `conn` prepared (see `rewrite::prepare`).
#[derive(Clone, Copy)]
pub struct Prepared<'a> {
    /// Header lines for the backend, framing included, ending in CRLF CRLF.
    pub fwd: &'a [u8],
    /// What to append to the backend's path prefix (starts with `/`).
    pub path: &'a [u8],
    /// The service segment, for error bodies.
    pub service: &'a [u8],
    /// What the connection shares with its worker: the wait for the response head is
    /// registered there, to be given up if the client leaves (`Worker::watch_waiting`).
    pub live: &'a Live,
}

/// Forwards one request and relays its response; says what the client connection does next.
pub async fn forward(
    worker: &Worker,
    view: &View,
    down: &mut Downstream,
    mut req: Request,
    mut prep: Prepared<'_>,
) -> After {
    let cfg = &view.snapshot.config;
    // The service's own timeouts, where it has any (`services.NAME.timeouts`).
    let timeouts = view.snapshot.services[req.svc].timeouts;
    let framing = req.info.framing;
    // A chunked body the gateway buffers is held decoded: read whole and no longer than
    // `buffer_request_body`, it goes up with a `Content-Length` (servers that read only
    // that, Python's `http.server` and `wsgiref`, took a chunked upload for an empty body
    // and answered 200: a review); otherwise what was held goes up as one chunk and the
    // rest as it comes.
    let whole_or_chunk = framing == Framing::Chunked && cfg.limits.buffer_request_body > 0;
    let mut relay = BodyRelay::new(
        framing,
        framing == Framing::Chunked && !whole_or_chunk,
        cfg.limits.max_body_bytes,
    )
    .paced(Pace::new(
        Side::Src,
        cfg.limits.min_body_rate,
        timeouts.body,
    ));
    // A small body that is already in the socket (typically sent with the head) is taken
    // now, without waiting, so that the head and the whole body go up in one write. What
    // does not fit behind the head in the client's buffer is read into `rest`.
    let mut rest = Vec::new();
    if let Framing::Length(n) = framing {
        let have = (down.buf.len() - down.start) as u64;
        if have < n && n <= MAX_TAKE_NOW && cfg.limits.buffer_request_body == 0 {
            let want = (n - have) as usize;
            if down.buf.capacity() - down.buf.len() >= want {
                io::read_ready(down.sock.fd(), &mut down.buf, want);
            } else {
                rest = worker.buffer_for(want);
                io::read_ready(down.sock.fd(), &mut rest, want);
            }
        }
    }
    // A Content-Length body in hand goes up unchanged, from where it was read: it is counted
    // now, and written behind the head in one `writev` (`down.buf` is not touched until
    // then). Any other body in hand is re-framed into `in_hand` first; that takes about as
    // much room as it takes in the input.
    let direct = matches!(framing, Framing::Length(_)) && cfg.limits.buffer_request_body == 0;
    let mut body_in_hand = down.start..down.start;
    let mut in_hand = if framing == Framing::None || direct {
        Vec::new()
    } else {
        worker.buffer_for(down.buf.len() - down.start + 64)
    };
    let buffered = if direct {
        let used = relay.take_raw(down.buf.len() - down.start).unwrap_or(0);
        down.start += used;
        body_in_hand.end = down.start;
        // `rest` holds body bytes only: it was read after all of the client's buffer, at
        // most what the body still lacked.
        let more = relay.take_raw(rest.len()).unwrap_or(0);
        rest.truncate(more);
        Ok(())
    } else {
        let buffered = buffer_body(
            down,
            &mut req,
            &mut relay,
            &mut in_hand,
            cfg,
            &timeouts,
            prep.service,
        )
        .await;
        // Re-framed bytes are all in `in_hand`; none are lent from the client's buffer, whose
        // consumed prefix a read may have dropped meanwhile (a range into it from before the
        // reads, sliced behind a pipelined request's bytes, panicked: a review).
        body_in_hand = down.start..down.start;
        buffered
    };
    let mut up_out = Vec::new();
    let after = match buffered {
        Err(after) => {
            down.record.received += relay.wire();
            after
        }
        Ok(()) => {
            if whole_or_chunk {
                let mut framed = worker.buffer_for(in_hand.len() + 64);
                // Only a body of at most that size, however much one read brought (a
                // review: up to 8 KiB went with a length when it came at once).
                let whole = relay.done && in_hand.len() as u64 <= cfg.limits.buffer_request_body;
                match rewrite::fields_before_chunked(prep.fwd).filter(|_| whole) {
                    // The length line ends the head as the first bytes behind it, so that
                    // a resend to another backend, which writes a new head in front of what
                    // followed the old one, keeps it.
                    Some(fields) => {
                        prep.fwd = fields;
                        framed.extend_from_slice(b"content-length: ");
                        h1::push_dec(&mut framed, in_hand.len() as u64);
                        framed.extend_from_slice(b"\r\n\r\n");
                        framed.extend_from_slice(&in_hand);
                    }
                    None => {
                        h1::push_chunk(&mut framed, &in_hand);
                        if relay.done {
                            framed.extend_from_slice(h1::LAST_CHUNK);
                        }
                        relay.chunk_from_now();
                    }
                }
                worker.recycle(std::mem::replace(&mut in_hand, framed));
            }
            let (info, svc) = (req.info, req.svc);
            match connect_or_reuse(worker, view, down, req, prep, &relay).await {
                Err(after) => {
                    down.record.received += relay.wire();
                    after
                }
                Ok((
                    attempt,
                    crate::pool::Taken {
                        socket: up,
                        uses,
                        owned,
                    },
                    tried,
                )) => {
                    // The head and the body in hand go up in one write. The client's buffer
                    // is lent to that write only when nothing follows the body in it: a
                    // write that times out loses the buffers it was lent, and a pipelined
                    // request must not go with them. Otherwise the body is copied behind the
                    // head.
                    let lend = down.start == down.buf.len();
                    let head = prep.fwd.len() + prep.path.len() + attempt.backend.url.url.len();
                    let copied = match lend {
                        true => in_hand.len(),
                        false => in_hand.len() + body_in_hand.len() + rest.len(),
                    };
                    up_out = worker.buffer_for(head + copied + 256);
                    let last = is_last(worker, &info, attempt.backend, uses);
                    rewrite::write_request_head(
                        &mut up_out,
                        info.method,
                        attempt.backend,
                        prep.path,
                        (prep.fwd, last),
                    );
                    let head_len = up_out.len();
                    up_out.extend_from_slice(&in_hand);
                    if !lend {
                        up_out.extend_from_slice(&down.buf[body_in_hand.clone()]);
                        up_out.extend_from_slice(&rest);
                        body_in_hand.end = body_in_hand.start;
                        rest.clear();
                    }
                    let mut ex = Exchange {
                        worker,
                        view,
                        svc,
                        path: prep.path,
                        fwd: prep.fwd,
                        head_len,
                        timeouts,
                        max_head: cfg.limits.max_head_bytes,
                        min_body_rate: cfg.limits.min_body_rate,
                        info,
                        service: prep.service,
                        live: prep.live,
                        attempt,
                        up,
                        reused: uses > 0,
                        uses,
                        owned: owned || carries_body(&info),
                        last,
                        tried,
                        moved: false,
                        reset_by: None,
                        up_out,
                        body_in_hand,
                        rest: std::mem::take(&mut rest),
                        ubuf: worker.buffer(),
                        ustart: 0,
                        relay,
                        sent_whole: false,
                        sent_at: crate::clock::now(),
                        pool_it: false,
                        paced_by_client: false,
                        upload_waited: Duration::ZERO,
                    };
                    let after = ex.run(down).await;
                    down.record.received += ex.relay.wire();
                    // Asked to close because it would not be kept (no pooling, or the
                    // backend under its stray mark): not held until the backend closes, as a
                    // connection at its request limit is, but closed now with a reset, which
                    // leaves no TIME_WAIT here either (a review of the first version saw
                    // 1 024 such sockets held per worker, outside the descriptor budget).
                    if ex.last && !worker.pool.keeps(ex.attempt.backend) {
                        io::set_reset_on_close(ex.up.fd());
                    } else if ex.pool_it && worker.may_pool() {
                        match (
                            ex.last,
                            worker.pool.last_request(ex.attempt.backend, ex.uses),
                        ) {
                            (true, _) => worker.pool.retire(ex.attempt.backend, ex.up),
                            // A WebSocket handshake the backend declined, at the limit: it
                            // could not say `Connection: close` (a review's clients kept a
                            // run of answers one behind going through such handshakes).
                            (false, true) => {}
                            (false, false) => {
                                // A connection that carried a body is the client's own
                                // from then on (see `pool`).
                                let owner = ex.owned.then_some(ex.live.id);
                                if ex.owned {
                                    ex.live.owns_upstream.set(true);
                                }
                                worker
                                    .pool
                                    .put(ex.attempt.backend, ex.up, ex.uses + 1, owner)
                            }
                        }
                    }
                    worker.recycle(ex.ubuf);
                    up_out = ex.up_out;
                    rest = ex.rest;
                    after
                }
            }
        }
    };
    worker.recycle(in_hand);
    worker.recycle(up_out);
    worker.recycle(rest);
    after
}

/// Whether the request goes to `backend`, on a connection that carried `uses`, with
/// `Connection: close` ([`crate::pool::Pool::last_request`]). A WebSocket handshake says
/// `Connection: upgrade`; its connection is never pooled after a switch, and one declined
/// at the limit is closed.
fn is_last(worker: &Worker, info: &RequestInfo, backend: &Backend, uses: u32) -> bool {
    !info.upgrade && worker.pool.last_request(backend, uses)
}

/// Whether the request sends the backend a body (a chunked one may be empty, but its
/// framing still goes): such a connection becomes its client's own (see `pool`).
fn carries_body(info: &RequestInfo) -> bool {
    !matches!(info.framing, Framing::None | Framing::Length(0))
}

/// Largest `Content-Length` body taken from the socket with the head when it is already
/// there (see `forward`).
const MAX_TAKE_NOW: u64 = 48 * 1024;

/// How long after the request head a failure status that comes while the backend waits on
/// the client for the body is taken for the backend giving up on a slow upload (no
/// verdict); before that, it is the backend's (see [`note_head`]). Servers' own body
/// timeouts are seconds (Express's `connect-timeout` 5 s); failing fast takes milliseconds.
const STALLED_UPLOAD: Duration = Duration::from_secs(1);

/// How long a probe still streaming its body may wait on its client, in all, before it hands
/// the probe back (the circuit backs off, as for a probe whose client left, and the next
/// request probes): the upload goes on, and its answer is no verdict. A client whose upload
/// had become the probe held the circuit half-open, and every other request of the service
/// out with a 503, for as long as it kept the upload above `limits.min_body_rate`: up to 72
/// h at the defaults (a hostile-client review, 2026-12-05), and one that sent nothing more
/// until `timeouts.body`. A request with its body in hand probes first
/// (`breaker::STREAMING_PROBE_WAIT_MS`), so an upload only probes where no other comes.
const PROBE_CLIENT_WAIT: Duration = Duration::from_millis(crate::breaker::STREAMING_PROBE_WAIT_MS);

/// How often a probe whose upload receives nothing is looked at for [`PROBE_CLIENT_WAIT`].
const PROBE_LOOK: Duration = Duration::from_millis(100);

/// How far ahead a running upload holds its answer's waits open: for as long as it runs.
const LIVE: Duration = Duration::from_secs(1 << 30);

/// Re-frames the body bytes already in hand into `in_hand`; with
/// `limits.buffer_request_body`, first waits for up to that many body bytes (or the whole of
/// a smaller body, each read within `timeouts.body`), so that a slow upload holds no backend
/// connection while it trickles in. A body whose framing is broken there never reaches a
/// backend. On error the client has been answered.
async fn buffer_body(
    down: &mut Downstream,
    req: &mut Request,
    relay: &mut BodyRelay,
    in_hand: &mut Vec<u8>,
    cfg: &Config,
    timeouts: &Timeouts,
    service: &[u8],
) -> Result<(), After> {
    let timeout = timeouts.body;
    let fed = relay.feed(&down.buf[down.start..], in_hand);
    let used = match fed {
        Ok(used) => used,
        Err(e) => return Err(reply_body_error(down, e, service, timeout).await),
    };
    down.start += used;
    let want = cfg.limits.buffer_request_body;
    // A body of exactly `want` bytes is held whole: its end is waited for too.
    if want == 0 || relay.done || in_hand.len() as u64 > want {
        return Ok(());
    }
    if req.info.expect_continue {
        // The client waits for this before sending the body we are about to wait for.
        down.out.clear();
        down.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if io::write_all(down.sock.w(), &mut down.out, timeout)
            .await
            .is_err()
        {
            return Err(After::Close);
        }
        down.out.clear();
        req.info.expect_continue = false;
    }
    while !relay.done && (in_hand.len() as u64) <= want {
        let Ok((limit, since)) = relay.pace.wait(Side::Src, timeout) else {
            return Err(reply_body_error(down, BodyError::SrcTimeout, service, timeout).await);
        };
        let read = io::read_more(
            down.sock.r(),
            &mut down.buf,
            &mut down.start,
            16 * 1024,
            limit,
        );
        let fed = match read.await {
            Read::Data(_) => {
                if let Some(since) = since {
                    relay.pace.note(since, 0);
                }
                relay.feed(&down.buf[down.start..], in_hand)
            }
            Read::Eof => relay.eof(in_hand).map(|()| 0),
            Read::Timeout => Err(BodyError::SrcTimeout),
            Read::Err(_) => Err(BodyError::SrcIo),
        };
        match fed {
            Ok(used) => down.start += used,
            Err(e) => return Err(reply_body_error(down, e, service, timeout).await),
        }
    }
    Ok(())
}

/// Backends one request tries to connect to when connects fail (refused, unreachable or
/// timed out: nothing was sent, so any method may move on), as HAProxy's `retries 3`;
/// NGINX's `proxy_next_upstream error timeout` tries every server.
const CONNECT_TRIES: usize = 3;

/// Request heads longer than this, as forwarded, are ones a backend may refuse for their
/// size (NGINX's, Tomcat's and Gunicorn's limits are 8 KiB): see [`Exchange::verdict_on`].
const CLIENT_SIZED_HEAD: usize = 8 * 1024;

/// The backends one request was sent to or failed to connect to: it moves on only to
/// others, up to [`CONNECT_TRIES`] in all, whatever made it move (a review saw a request
/// go back to a backend whose connect had already failed, counted twice against it).
#[derive(Clone, Copy)]
struct Tried {
    ids: [usize; CONNECT_TRIES],
    n: usize,
}

impl Tried {
    const NONE: Tried = Tried {
        ids: [usize::MAX; CONNECT_TRIES],
        n: 0,
    };

    fn list(&self) -> &[usize] {
        &self.ids[..self.n]
    }

    fn full(&self) -> bool {
        self.n == CONNECT_TRIES
    }

    fn push(&mut self, idx: usize) {
        if let Some(slot) = self.ids.get_mut(self.n) {
            *slot = idx;
            self.n += 1;
        }
    }
}

/// Picks a backend and gets a connection to it: a clean pooled one, or a new one. A connect
/// that fails (nothing sent) moves on to the next backend, up to [`CONNECT_TRIES`] in all:
/// one dead backend of three used to fail every other request it was picked for after one
/// more try, and a connect timeout was never tried elsewhere (an operator review: 502s and
/// 504s until the circuit opened, and again after every probe). On failure the client has
/// been answered and the result says what the connection does next. With the connection
/// come the requests it carried before (0 for a new one) and whether it is the client's
/// own (see `pool`).
async fn connect_or_reuse<'v>(
    worker: &'v Worker,
    view: &'v View,
    down: &mut Downstream,
    req: Request,
    prep: Prepared<'v>,
    relay: &BodyRelay,
) -> Result<(Attempt<'v>, crate::pool::Taken, Tried), After> {
    let service = &view.snapshot.services[req.svc];
    let timeouts = service.timeouts;
    let request = (req.info.keep_alive, relay.done);
    let mut tried = Tried::NONE;
    let mut last_err = GatewayError::ConnectFailed;
    while !tried.full() {
        let (idx, ticket) = match view.pick(req.svc, tried.list(), !relay.done) {
            Pick::Backend { idx, ticket } => (idx, ticket),
            Pick::AllOpen { retry_after_secs } => {
                let (err, retry) = if tried.n > 0 {
                    // The other backends failed too: say how, not "all open".
                    (last_err, None)
                } else {
                    (GatewayError::NoBackend, Some(retry_after_secs))
                };
                return Err(reply_error(
                    worker,
                    down,
                    request,
                    err,
                    prep.service,
                    retry,
                    timeouts.body,
                )
                .await);
            }
        };
        tried.push(idx);
        let request = (req.info.method, prep.path);
        let mut attempt = Attempt::to(worker, service, idx, ticket, (down, prep.live, request));
        let backend = attempt.backend;
        let client = crate::pool::Client {
            id: prep.live.id,
            owns: prep.live.owns_upstream.get(),
        };
        if let Some(taken) = worker.pool.take(backend, client) {
            return Ok((attempt, taken, tried));
        }
        match connect_fresh(&mut attempt, timeouts.connect).await {
            Ok(socket) => {
                let taken = crate::pool::Taken {
                    socket,
                    uses: 0,
                    owned: false,
                };
                return Ok((attempt, taken, tried));
            }
            Err(err) if moves_on(err) => last_err = err,
            Err(err) => {
                last_err = err;
                break;
            }
        }
    }
    let retry = retry_after(last_err);
    Err(reply_error(
        worker,
        down,
        request,
        last_err,
        prep.service,
        retry,
        timeouts.body,
    )
    .await)
}

/// A new connection to `attempt`'s backend; a connect that fails is settled against it.
async fn connect_fresh(
    attempt: &mut Attempt<'_>,
    timeout: Duration,
) -> Result<Socket, GatewayError> {
    let (worker, service, addr) = (attempt.worker, attempt.service, attempt.backend.url.addr);
    match timed_connect(worker, service, addr, timeout).await {
        Ok(s) => {
            attempt.renew();
            Ok(s)
        }
        Err(err) => {
            attempt.settle(verdict(err));
            Err(err)
        }
    }
}

/// Whether a request whose connect failed this way may move on to another backend: nothing
/// was sent.
fn moves_on(err: GatewayError) -> bool {
    matches!(
        err,
        GatewayError::ConnectFailed | GatewayError::ConnectTimeout
    )
}

/// A backend failure as the log says it: its code, and for a response we could not take
/// the rule it broke, `backend_bad_response (bare_cr_or_lf)` (an operator review saw only
/// `backend_bad_response`; the rule was in the access log and the client's body alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Why(&'static str, Option<&'static str>);

impl Why {
    fn of(err: GatewayError) -> Why {
        Why(err.code(), err.detail())
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.1 {
            Some(rule) => write!(f, "{} ({rule})", self.0),
            None => f.write_str(self.0),
        }
    }
}

/// How the backend's side of an exchange ended, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A final response arrived (early or not) and its body was not broken by the backend:
    /// judged by its status.
    Answered(u16),
    /// Connect, send, timeout, garbage or close before a complete head; or a body the
    /// backend broke (bad framing, closed or stalled before its end). Says which, for the
    /// log line of a circuit that opens on it.
    Failed(Why),
    /// The client vanished or sent a broken body before the request was sent whole: no
    /// verdict on the backend (a probe backs off).
    NotSent,
    /// The backend answered with a head we do not relay: over our own limits, which a
    /// client can push a backend over (one that echoes a header back), or after a flood of
    /// interim responses. Judged by its status when its status line could be read and says
    /// failure; otherwise no verdict, as for a 4xx, but, as a 4xx does, it shows a probed
    /// backend is back. (It used to hand the probe back, so a client that sent such a
    /// request whenever a probe was due kept a healthy circuit open for good; and closing
    /// on it whatever the status let a client close a failing backend's circuit: reviews.)
    Responded(Option<u16>),
}

/// The breaker ticket of one attempt: reports the outcome once, and hands an unresolved
/// probe back when dropped (task cancelled), so it cannot wedge the circuit.
struct Attempt<'a> {
    backend: &'a Backend,
    service: &'a Service,
    ticket: Option<Ticket>,
    /// The probe's claim after it handed the probe back ([`Attempt::hand_back`]).
    handed_back: Option<Ticket>,
    worker: &'a Worker,
    /// The request's method and path under its service, named when its outcome opens the
    /// circuit (an operator review: the endpoint whose 500s opened every circuit was
    /// named nowhere).
    request: (h1::Method, &'a [u8]),
}

impl<'a> Attempt<'a> {
    /// The backend and service this attempt speaks for, as a response head needs them.
    fn origin(&self) -> rewrite::Origin<'a> {
        rewrite::Origin {
            url: &self.backend.url,
            service: &self.service.name,
        }
    }

    /// An attempt on `service.backends[idx]` with the balancer's `ticket`, named in the
    /// request's record and in what the drain deadline logs of it.
    fn to(
        worker: &'a Worker,
        service: &'a Service,
        idx: usize,
        ticket: Ticket,
        (down, live, request): (&mut Downstream, &Live, (h1::Method, &'a [u8])),
    ) -> Attempt<'a> {
        let record = &mut down.record;
        if let Some(before) = record.backend.filter(|&b| b != idx) {
            if let Some(slot) = record.earlier.iter_mut().find(|s| s.is_none()) {
                *slot = Some(before);
            }
        }
        record.backend = Some(idx);
        if let Some(f) = live.request.borrow().as_ref() {
            f.backend.set(Some(idx));
            f.earlier.set(record.earlier);
        }
        Attempt {
            backend: &service.backends[idx],
            service,
            ticket: Some(ticket),
            handed_back: None,
            worker,
            request,
        }
    }

    /// A probe still streaming its body whose client has kept it waiting
    /// [`PROBE_CLIENT_WAIT`]: hands the probe back (the circuit backs off, the next request
    /// probes) and goes on with no verdict, but for one: an answer that is a success closes
    /// the circuit if nothing else has happened to it since (`breaker::hand_back`).
    /// `claim`: false with `cluster:`, where the fleet stamps a close with the time its
    /// probe began, which a close by a claim would misstate (a fleet test: an upload begun
    /// before the fleet opened closed it with its late answer).
    fn hand_back(&mut self, claim: bool) {
        let Some(t) = self.ticket.take_if(|t| t.is_probe()) else {
            return;
        };
        let (tr, kept) = breaker::hand_back(&**self.backend.breaker, t, now_ms());
        self.handed_back = kept.filter(|_| claim);
        if tr != Transition::None {
            self.worker.metrics.transition(self.backend.slot);
            log::warn!(
                "breaker: {} {} kept open (the probe's client kept it waiting {} ms; next probe after a backoff{})",
                self.service.name,
                self.backend.url.url,
                PROBE_CLIENT_WAIT.as_millis(),
                if claim { ", or this one's answer" } else { "" }
            );
        }
    }

    /// The one place an exchange's outcome becomes a breaker verdict.
    fn settle(&mut self, outcome: Outcome) {
        let Some(t) = self.ticket.take() else {
            // Handed back: only an answer that is no failure speaks, and only to close.
            if let (Some(claim), Outcome::Answered(status)) = (self.handed_back.take(), outcome) {
                if !self.service.settings.is_failure_status(status) {
                    // An answer that was no failure, in `/admin/backends`' successes too.
                    self.worker.metrics.outcome(self.backend.slot, false);
                    let cell = &**self.backend.breaker;
                    let tr = breaker::success_after_hand_back(cell, claim, now_ms());
                    self.log(tr, outcome);
                }
            }
            return;
        };
        // A head we do not relay whose status says failure is a failure like any other.
        let outcome = match outcome {
            Outcome::Responded(Some(status)) if self.service.settings.is_failure_status(status) => {
                Outcome::Answered(status)
            }
            other => other,
        };
        let cell = &**self.backend.breaker;
        let now = now_ms();
        let (failure, tr) = match outcome {
            Outcome::Answered(status) if self.service.settings.is_failure_status(status) => {
                (true, breaker::failure(cell, t, now, &self.service.policy))
            }
            // A 4xx (or a 5xx not counted, such as 501) answers what the client asked: no
            // sign of health either, so it leaves the count of consecutive failures alone
            // (a review kept a failing backend's circuit closed with 404s in between). A
            // probe it answers shows the backend is back.
            Outcome::Answered(status) if status >= 400 && !t.is_probe() => {
                self.worker.metrics.outcome(self.backend.slot, false);
                return;
            }
            // No verdict, and no success in the counts either: the client got a 502 (until
            // 2026-12-04 `/admin/backends` counted one, and a backend whose every answer
            // was over our limits looked healthy there, a review).
            Outcome::Responded(_) if !t.is_probe() => return,
            Outcome::Answered(_) | Outcome::Responded(_) => (false, breaker::success(cell, t, now)),
            Outcome::Failed(_) => (true, breaker::failure(cell, t, now, &self.service.policy)),
            Outcome::NotSent => {
                self.log(breaker::abandon(cell, t, now), outcome);
                return;
            }
        };
        self.worker.metrics.outcome(self.backend.slot, failure);
        if failure {
            let (svc, url) = (&self.service.name, &self.backend.url.url);
            match outcome {
                Outcome::Answered(status) => {
                    self.worker
                        .say_backend_failure(svc, url, format_args!("status {status}"))
                }
                Outcome::Failed(why) => {
                    self.worker
                        .say_backend_failure(svc, url, format_args!("{why}"))
                }
                Outcome::NotSent | Outcome::Responded(_) => {}
            }
        }
        self.log(tr, outcome);
    }

    /// The attempt is the circuit's probe and still unjudged.
    fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.is_probe())
    }

    /// A probe made progress: extend its lease so no second probe is admitted meanwhile.
    fn renew(&mut self) {
        if let Some(t) = self.ticket.as_mut().filter(|t| t.is_probe()) {
            breaker::renew(&**self.backend.breaker, t, now_ms());
        }
    }

    /// Logs a transition, with the outcome that caused it.
    fn log(&self, tr: Transition, outcome: Outcome) {
        if tr == Transition::None {
            return;
        }
        self.worker.metrics.transition(self.backend.slot);
        let (svc, url) = (&self.service.name, &self.backend.url.url);
        let failures = match self.service.settings.failure_threshold {
            1 => "1 failure".to_string(),
            n => format!("{n} consecutive failures"),
        };
        match (tr, outcome) {
            (Transition::Opened, Outcome::Answered(status)) => log::warn!(
                "breaker: {svc} {url} opened after {failures}, the last: status {status} {}",
                self.request_text()
            ),
            (Transition::Opened, Outcome::Failed(why)) => log::warn!(
                "breaker: {svc} {url} opened after {failures}, the last: {why} {}",
                self.request_text()
            ),
            (Transition::Reopened, Outcome::Answered(status)) => {
                log::warn!("breaker: {svc} {url} re-opened (probe failed: status {status})")
            }
            (Transition::Reopened, Outcome::Failed(why)) => {
                log::warn!("breaker: {svc} {url} re-opened (probe failed: {why})")
            }
            (Transition::Closed, _) => log::warn!("breaker: {svc} {url} closed (probe succeeded)"),
            _ => log::warn!(
                "breaker: {svc} {url} kept open (probe abandoned by its client; next probe after a backoff)"
            ),
        }
        if tr == Transition::Opened && self.every_circuit_open() {
            // The statuses are worth a look only when a status opened it: an operator review
            // was sent to them by refused connects, which no status list changes.
            let hint = match outcome {
                Outcome::Answered(_) => " (if the clients' own requests make these failures, list the statuses that are the backend's fault in the service's breaker.failure_statuses)",
                _ => "",
            };
            log::warn!(
                "breaker: every backend of {svc} has an open circuit: its requests are answered 503 no_backend_available until a probe succeeds{hint}"
            );
        }
    }

    /// `to GET /v1/proxy/svc/path`: the request whose outcome opened the circuit, without
    /// its query (which may carry credentials), escaped, at most 200 characters of path.
    fn request_text(&self) -> String {
        let (method, path) = self.request;
        let path = path.split(|&b| b == b'?').next().unwrap_or_default();
        format!(
            "to {} /v1/proxy/{}{}",
            method.as_str(),
            self.service.name,
            crate::logging::one_line(&String::from_utf8_lossy(path), 200)
        )
    }

    /// Whether no backend of the service has its circuit closed.
    fn every_circuit_open(&self) -> bool {
        self.service.backends.iter().all(|b| {
            breaker::Snapshot::decode(breaker::Word::load(&**b.breaker)).state != breaker::CLOSED
        })
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.settle(Outcome::NotSent);
    }
}

/// One exchange with one backend, from sending the request to the end of the response.
struct Exchange<'a> {
    worker: &'a Worker,
    /// What a resend that must move on to another backend picks from: the service, and
    /// the parts of the request head that do not depend on the backend.
    view: &'a View,
    svc: usize,
    path: &'a [u8],
    fwd: &'a [u8],
    /// How much of `up_out` is the request head (the rest is a re-framed body in hand).
    head_len: usize,
    timeouts: Timeouts,
    max_head: usize,
    /// `limits.min_body_rate`, for the response body.
    min_body_rate: u64,
    info: RequestInfo,
    /// The service segment, for error bodies.
    service: &'a [u8],
    live: &'a Live,
    attempt: Attempt<'a>,
    up: Socket,
    /// `up` came from the pool (a failure before any response byte means it went stale).
    reused: bool,
    /// Requests `up` carried before this one.
    uses: u32,
    /// `up` is the client connection's own: it carried one of its request bodies, this
    /// one's or an earlier's, and only this client reuses it (see `pool`).
    owned: bool,
    /// The request asks the backend to close the connection after it
    /// (`pool.max_requests_per_connection`): a clean exchange retires it, not pools it.
    last: bool,
    /// Where the request went (see [`Tried`]).
    tried: Tried,
    /// It moved on after a reset, or a write timed out (its bytes may be half sent): no
    /// reset moves it on again (see [`Exchange::send_and_read_head`]).
    moved: bool,
    /// The attempt on the backend that reset the request before it moved on: judged once
    /// the next backend has answered (see [`Exchange::judge_reset`]); no verdict if that
    /// one does not (dropped).
    reset_by: Option<Attempt<'a>>,
    /// The request head (and a re-framed body in hand), as sent upstream; it, the body in
    /// hand and `rest` are kept for one resend.
    up_out: Vec<u8>,
    /// Body bytes in hand in the client's buffer, sent right after `up_out`.
    body_in_hand: std::ops::Range<usize>,
    /// Body bytes read after those, sent right after them.
    rest: Vec<u8>,
    /// Bytes read from the backend; `ubuf[ustart..]` is not yet consumed.
    ubuf: Vec<u8>,
    ustart: usize,
    /// The rest of the request body, streamed from the client.
    relay: BodyRelay,
    /// The whole request reached the backend's socket.
    sent_whole: bool,
    /// When it did (the response timeout and latency start here).
    sent_at: Instant,
    /// The exchange ended cleanly: the connection goes back to the pool.
    pool_it: bool,
    /// The client's pace set the backend's clock: the response head came while the upload
    /// waited on the client, or after an upload the client took [`STALLED_UPLOAD`] or more to
    /// deliver. A failure status then is no verdict (see [`note_head`]).
    paced_by_client: bool,
    /// How long the upload, sent whole before the answer, waited on the client after the
    /// request head: the time it took less the time the backend held it up.
    upload_waited: Duration,
}

/// Why no response head came, short of success.
enum HeadFail {
    /// Nothing at all came back on a reused connection: it was stale.
    Stale,
    /// A fresh connection was reset before a byte of answer, and the request may move on
    /// (see [`HeadCtx::moves_on_reset`]).
    Reset,
    /// The backend failed.
    Backend(GatewayError),
    /// The backend answered with a head we do not relay (see [`Outcome::Responded`]): the
    /// error for the client, and the head's status if its status line could be read.
    Unjudged(GatewayError, Option<u16>),
    /// More interim responses than [`MAX_INTERIM_BYTES`] before a final one.
    Flood,
    /// Streaming the request body failed on the client's side.
    Client(BodyError),
    /// The backend closed or reset with no response while we waited for more of the body
    /// from the client, having given the backend all of it we had.
    Abandoned,
    /// Not a failure: the backend answered, keeping its connection, while the body was
    /// still going up; the response was relayed while the upload went on (full duplex),
    /// and the exchange is over, judged and logged. What the client connection does next.
    Duplex(After),
    /// The client left while we waited for the head; the wait was given up.
    ClientGone,
}

/// How a response body ended, as far as the backend is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Relayed whole.
    Relayed,
    /// The backend broke it: bad framing, or no byte of it for `timeouts.body` while we
    /// waited for one.
    Broken,
    /// The backend closed (not reset) before the end while the client kept up: the gateway
    /// waited less than [`STALLED_UPLOAD`] in all on the client while relaying the answer,
    /// and the client's upload, if any, was whole and quick (see [`ToClient::judge_cuts`]).
    /// A backend that dies mid-body (a crash, a cursor that fails halfway) is failing even
    /// when its heads look fine.
    Cut,
    /// Cut short where the client may have set it off: the client left or stopped
    /// reading, or the backend closed or reset before the end after the client kept the
    /// gateway waiting (a backend with a send deadline cuts a slow reader's body, or one
    /// with a deadline for the whole exchange a slow uploader's), and the kernel does that
    /// to an early answer when the backend closes on an upload it did not read. Or over
    /// our own trailer limit, which a backend that echoes a request field into a trailer
    /// can be pushed over. No verdict.
    Unjudged,
}

impl Body {
    /// What a failed relay of the backend's body says about the backend.
    fn after(e: BodyError) -> Body {
        match e {
            BodyError::Framing(h1::TRAILERS_TOO_LARGE) => Body::Unjudged,
            BodyError::Framing(_) | BodyError::SrcTimeout => Body::Broken,
            BodyError::Truncated | BodyError::SrcIo | BodyError::DstIo | BodyError::TooLarge => {
                Body::Unjudged
            }
        }
    }
}

/// Facts about the final response head; its client-bound copy (all but the connection
/// field and the blank line) is in `Downstream::out`.
#[derive(Debug, Clone, Copy)]
struct ResponseHead {
    status: u16,
    framing: Framing,
    reusable: bool,
    /// We re-encode the body as chunked for the client.
    client_chunked: bool,
    /// The body's framing lets the client connection stay open afterwards (an HTTP/1.0
    /// client only learns where an unframed body ends from the close).
    framed_for_client: bool,
    /// Its `X-Request-Id` names another request of the same maker (see
    /// [`crate::reqid::names_another`]): a backend answering out of turn, one behind on a
    /// busy connection, or a cache that stored the field. Relayed, since a cache's answer
    /// is right; the connection is not reused, which ends a run of answers one behind on
    /// it ([`Worker::misrouted`]).
    misrouted: bool,
}

impl Body {
    /// The breaker's verdict on a response of `status` whose body ended this way.
    fn outcome(self, status: u16) -> Outcome {
        match self {
            Body::Relayed => Outcome::Answered(status),
            Body::Broken => Outcome::Failed(Why("broken_response_body", None)),
            Body::Cut => Outcome::Failed(Why("response_body_cut", None)),
            Body::Unjudged => Outcome::NotSent,
        }
    }
}

/// How long an upload begun with the request head at `sent_at` has waited on the client:
/// all the time since, less what the backend held it up.
fn client_time(sent_at: Instant, owed: &Owed) -> Duration {
    sent_at.elapsed().saturating_sub(owed.total())
}

/// A final response head arrived: counts its latency, records its status, and judges now a
/// failure status, or a probe, so that a long response does not hold the circuit half-open;
/// anything else once the body has ended, because a backend that breaks its bodies is
/// failing even when its heads look fine.
///
/// A failure status whose timing the client's pace decided (`paced_by_client`: it came
/// while the backend waited on the client for the body, [`STALLED_UPLOAD`] or more after the
/// head, or after an upload the client took that long to deliver) is no verdict: it is how
/// servers give up on a slow or stalled upload (Go's `TimeoutHandler` and Express's
/// `connect-timeout` answer 503), so counting it let a client open a healthy circuit with
/// three paused uploads (reviews). A probe answered that way is handed back, as for a client
/// that leaves.
fn note_head(
    worker: &Worker,
    attempt: &mut Attempt<'_>,
    record: &mut Record,
    sent_at: Instant,
    status: u16,
    paced_by_client: bool,
) -> Instant {
    let now = crate::clock::now();
    let upstream_us = now.saturating_duration_since(sent_at).as_micros() as u64;
    worker
        .metrics
        .response
        .observe(attempt.service.id, upstream_us);
    record.upstream_us = Some(upstream_us);
    record.status = status;
    let failure = attempt.service.settings.is_failure_status(status);
    if failure && paced_by_client {
        attempt.settle(Outcome::NotSent);
    } else if failure || attempt.is_probe() {
        attempt.settle(Outcome::Answered(status));
    }
    now
}

impl Exchange<'_> {
    async fn run(&mut self, down: &mut Downstream) -> After {
        let _active = Active::new(&self.worker.metrics.upstream_active);
        if self.info.expect_continue && !self.relay.done {
            // We forward no `Expect`; the client may start its body now.
            down.out.clear();
            down.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if io::write_all(down.sock.w(), &mut down.out, self.timeouts.body)
                .await
                .is_err()
            {
                return After::Close; // the attempt's drop hands a probe back
            }
            down.record.bytes += down.out.len() as u64;
            down.out.clear();
            // The backend's clock starts with the request head, not with our `100`.
            self.sent_at = crate::clock::now();
        }
        // No answer yet: a line the drain deadline writes says `-` for the status, and the
        // bytes of interim responses relayed meanwhile ([`Exchange::await_head`]).
        self.live.sent.set(0);
        self.live.answered.set(Some(Answered {
            status: 0,
            bytes: down.record.bytes,
            upstream_us: None,
        }));
        let head = match self.send_and_read_head(down).await {
            Ok(head) => head,
            Err(HeadFail::Client(e)) => {
                self.attempt.settle(Outcome::NotSent);
                // The request reached the backend: the log says how long it was waited on.
                down.record.upstream_us = Some(self.sent_at.elapsed().as_micros() as u64);
                return reply_body_error(down, e, self.service, self.timeouts.body).await;
            }
            // A pooled connection the backend closed, and the request cannot be resent: the
            // backend did nothing wrong, so no verdict (a probe backs off).
            Err(HeadFail::Stale) => {
                self.attempt.settle(Outcome::NotSent);
                return self.reply(down, GatewayError::BackendClosed).await;
            }
            // The backend hung up while the client was still sending the body: it may have
            // given up on a slow client, so no verdict (a client must not open a circuit).
            Err(HeadFail::Abandoned) => {
                self.attempt.settle(Outcome::NotSent);
                return self.reply(down, GatewayError::BackendClosed).await;
            }
            Err(HeadFail::Unjudged(err, status)) => {
                self.attempt.settle(Outcome::Responded(status));
                down.record.upstream_us = Some(self.sent_at.elapsed().as_micros() as u64);
                return self.reply(down, err).await;
            }
            // No verdict (a long operation's 102s are no failure), except for a probe: a
            // backend that floods the request meant to show it is back has not shown that
            // (it used to close the circuit, as a 4xx does: a review), and no client can
            // make a healthy backend send 64 KiB of 1xx.
            Err(HeadFail::Flood) => {
                self.attempt.settle(if self.attempt.is_probe() {
                    Outcome::Failed(Why::of(GatewayError::BadResponse(TOO_MANY_INTERIM)))
                } else {
                    Outcome::Responded(None)
                });
                down.record.upstream_us = Some(self.sent_at.elapsed().as_micros() as u64);
                return self
                    .reply(down, GatewayError::BadResponse(TOO_MANY_INTERIM))
                    .await;
            }
            Err(fail @ (HeadFail::Backend(_) | HeadFail::Reset)) => {
                let err = match fail {
                    HeadFail::Backend(err) => err,
                    _ => GatewayError::BackendClosed,
                };
                self.attempt.settle(self.verdict_on(err));
                // The log's upstream time is how long the backend was waited on, as NGINX's
                // `$upstream_response_time` (a 504 said `-` after its whole timeout).
                down.record.upstream_us = Some(self.sent_at.elapsed().as_micros() as u64);
                return self.reply(down, err).await;
            }
            // Answered while the body still went up, both relayed at once.
            Err(HeadFail::Duplex(after)) => return after,
            // Nobody is left to answer, and the backend's connection is shut: no verdict (a
            // client must never count against a backend), a probe is handed back.
            Err(HeadFail::ClientGone) => {
                self.attempt.settle(Outcome::NotSent);
                down.record.upstream_us = Some(self.sent_at.elapsed().as_micros() as u64);
                down.record.client_gone(down.record.bytes);
                return After::Close;
            }
        };
        let status = head.status;
        if head.misrouted {
            let (svc, url) = (&self.attempt.service.name, &self.attempt.backend.url.url);
            self.worker.misrouted(svc, url, self.up.fd());
        }
        self.judge_reset(status);
        let head_at = note_head(
            self.worker,
            &mut self.attempt,
            &mut down.record,
            self.sent_at,
            status,
            self.paced_by_client,
        );
        if status == 101 {
            // Boxed, and behind a `dyn`: the tunnel's state (two directions' reads, writes
            // and timers) and code would otherwise be laid out inside every exchange's
            // future and its poll, which then no longer inlined into the connection's
            // (+1.7% instructions per plain GET, callgrind).
            let tunnel: Pin<Box<dyn Future<Output = After> + '_>> = Box::pin(self.tunnel(down));
            return tunnel.await;
        }
        let (after, body) = self.relay_response(down, head, head_at).await;
        self.attempt.settle(body.outcome(status));
        after
    }

    /// The backend switched to WebSocket (`parse_head` let only that `101` through): its
    /// head goes to the client with whatever followed it, the client's bytes behind its
    /// handshake go up, then the two connections are joined until the tunnel ends. Neither
    /// connection is used for HTTP again.
    async fn tunnel(&mut self, down: &mut Downstream) -> After {
        // The backend did what was asked; what happens in the tunnel is not HTTP, and is no
        // verdict on it.
        self.attempt.settle(Outcome::Answered(101));
        let out = &mut down.out;
        out.extend_from_slice(&down.fields);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.ubuf[self.ustart..]);
        self.ustart = self.ubuf.len();
        let timeout = self.timeouts.body;
        // What the line the drain deadline may write says, as for any answer (`to_client`).
        self.live.sent.set(0);
        let head = down.record.bytes + out.len() as u64;
        self.live.answered.set(Some(Answered {
            status: 101,
            bytes: head,
            upstream_us: down.record.upstream_us,
        }));
        if io::write_all(down.sock.w(), out, timeout).await.is_err() {
            down.record.client_gone(down.record.bytes);
            return After::Close;
        }
        down.record.bytes += out.len() as u64;
        out.clear();
        let early = down.start..down.buf.len();
        down.start = down.buf.len();
        down.record.received += early.len() as u64;
        if !early.is_empty() {
            let mut up = std::mem::take(&mut self.up_out);
            up.clear();
            up.extend_from_slice(&down.buf[early]);
            let sent = io::write_all(self.up.w(), &mut up, timeout).await;
            self.up_out = up;
            if sent.is_err() {
                return After::Close;
            }
        }
        let mut up_buf = self.worker.buffer();
        let idle = self.timeouts.tunnel;
        let moved = crate::tunnel::relay(
            &mut down.sock,
            &mut self.up,
            [&mut up_buf, &mut self.ubuf],
            idle,
            &self.live.sent,
            &self.live.tunnel_writes,
        )
        .await;
        self.ustart = 0;
        self.worker.recycle(up_buf);
        down.record.bytes += moved.to_client;
        down.record.received += moved.to_backend;
        // Logged and counted as cut short, as a response broken mid-body is.
        down.record.cut = !moved.clean;
        After::Close
    }

    /// No response head: answer the client ourselves. The connection stays only if the
    /// client's request was read whole; if some of its body is still to come, it closes
    /// lingering, so that the client reads the answer rather than a reset.
    async fn reply(&mut self, down: &mut Downstream, err: GatewayError) -> After {
        let request = (self.info.keep_alive, self.relay.done);
        let retry = retry_after(err);
        let timeout = self.timeouts.body;
        reply_error(
            self.worker,
            down,
            request,
            err,
            self.service,
            retry,
            timeout,
        )
        .await
    }

    /// Sends the request and reads the final response head. A stale pooled connection is
    /// replaced once by a fresh one to the same backend when the whole request is still in
    /// hand and idempotent. A fresh connection reset before a byte of answer (with the whole
    /// idempotent request in hand) moves the request on once to another backend, on a fresh
    /// connection, the reset judged by how that one answers ([`Exchange::judge_reset`]): a
    /// process being killed resets the connections its listener had accepted and it had
    /// not (an operator review killed a backend under load: 0–17 of 32 requests in flight
    /// were answered 502 while the other backend was healthy). A connection closed in
    /// order (a FIN) before an answer is not moved on: a backend that reads a request and
    /// hangs up on it (one that the request crashes, or a deliberate close) would otherwise
    /// see it on every backend (a review). So a request is sent at most three times.
    async fn send_and_read_head(
        &mut self,
        down: &mut Downstream,
    ) -> Result<ResponseHead, HeadFail> {
        let resendable = self.resendable();
        loop {
            let result = self.send_once(down).await;
            match result {
                Err(HeadFail::Stale) if self.reused && resendable => {
                    self.reconnect(down, false, GatewayError::ConnectFailed)
                        .await
                        .map_err(HeadFail::Backend)?;
                }
                Err(HeadFail::Reset) => {
                    self.moved = true;
                    self.reconnect(down, true, GatewayError::BackendClosed)
                        .await
                        .map_err(HeadFail::Backend)?;
                }
                other => return other,
            }
            self.sent_at = crate::clock::now();
            self.reused = false;
            self.uses = 0;
            self.owned = carries_body(&self.info);
            self.ubuf.clear();
            self.ustart = 0;
        }
    }

    /// The request may be sent again: idempotent, and all of it in hand (a body streamed
    /// from the client is not kept).
    fn resendable(&self) -> bool {
        self.relay.done && self.info.method.is_idempotent()
    }

    /// Judges the backend that reset the request before it moved on, now that the next one
    /// has answered with `status`: it failed, unless that answer is a failure too, or the
    /// head was long ([`Exchange::verdict_on`]). A request that makes every backend hang up
    /// on it (one that crashes them, one they refuse) is the client's doing; when the
    /// backend leaves its body unread, the kernel ends that connection with a reset. Judged
    /// at once, such a request counted a failure on each backend it reached, which opened
    /// every circuit of a service with half the requests (a re-review). A backend that
    /// resets every connection while the next one answers is still judged, once per
    /// request; when the next one fails too, only that one counts.
    fn judge_reset(&mut self, status: u16) {
        if let Some(mut first) = self.reset_by.take() {
            let failure = self.attempt.service.settings.is_failure_status(status);
            first.settle(if failure {
                Outcome::NotSent
            } else {
                self.verdict_on(GatewayError::BackendClosed)
            });
        }
    }

    /// The breaker's verdict on a request that failed with `err` before its answer. A backend
    /// that hangs up on a request head over [`CLIENT_SIZED_HEAD`] may be refusing its size,
    /// which the client chose (up to `limits.max_head_bytes`, 32 KiB by default, to which
    /// the gateway adds its own fields, where many servers stop at 8 KiB and some close
    /// rather than answer 431): no verdict, or three such heads opened a healthy circuit for
    /// every client (a hostile-client review), as an answer head over our limits is none.
    /// And as for that head, a probe it ends shows the backend took the connection and
    /// read: it closes the circuit. Handed back, it let a client that sent such a head
    /// whenever a probe was due keep a healthy circuit open for good (a later review: 199
    /// of 199 requests of another client refused over 20 s). A backend that closes every
    /// connection is closed on this way at most once a cooldown, and opens again with the
    /// next requests it fails.
    fn verdict_on(&self, err: GatewayError) -> Outcome {
        if err == GatewayError::BackendClosed && self.head_len > CLIENT_SIZED_HEAD {
            return Outcome::Responded(None);
        }
        verdict(err)
    }

    /// A fresh connection for a resend: to the same backend (unless `elsewhere`), or, when
    /// that connect fails (refused, unreachable, timed out: nothing was sent), to the next
    /// backend the balancer admits that the request has not tried, as a request's first
    /// connect moves on ([`connect_or_reuse`]), up to [`CONNECT_TRIES`] backends in all. A
    /// backend that dies under load ends every pooled connection to it at once: each
    /// request in flight there used to be resent to it, refused, and answered 502 while the
    /// other backends were healthy (an operator review: 32 of 32 in flight). Fresh
    /// connections only: a pooled one of another backend could be stale too. `last_err` is
    /// the answer when no other backend is left.
    async fn reconnect(
        &mut self,
        down: &mut Downstream,
        elsewhere: bool,
        mut last_err: GatewayError,
    ) -> Result<(), GatewayError> {
        let mut same = !elsewhere;
        // A new connection: this is its first request (a resend of a connection's last
        // sent `Connection: close` on the next one: a review).
        let last = is_last(self.worker, &self.info, self.attempt.backend, 0);
        if same && self.last != last {
            self.last = last;
            self.write_head();
        }
        loop {
            if !same {
                if self.tried.full() {
                    break;
                }
                let Pick::Backend { idx, ticket } =
                    self.view.pick(self.svc, self.tried.list(), false)
                else {
                    break;
                };
                self.tried.push(idx);
                let service = &self.view.snapshot.services[self.svc];
                let request = (self.info.method, self.path);
                let next = Attempt::to(
                    self.worker,
                    service,
                    idx,
                    ticket,
                    (down, self.live, request),
                );
                let left = std::mem::replace(&mut self.attempt, next);
                if elsewhere && self.reset_by.is_none() {
                    self.reset_by = Some(left); // the backend that reset it
                }
                self.last = is_last(self.worker, &self.info, self.attempt.backend, 0);
                self.write_head();
            }
            same = false;
            match connect_fresh(&mut self.attempt, self.timeouts.connect).await {
                Ok(s) => {
                    self.up = s;
                    return Ok(());
                }
                Err(err) if moves_on(err) => last_err = err,
                Err(err) => return Err(err),
            }
        }
        Err(last_err)
    }

    /// Writes the request head anew for the attempt's backend (its path prefix and
    /// authority) and `last`; the body in hand behind it stays.
    fn write_head(&mut self) {
        let mut out = self.worker.buffer_for(self.up_out.len() + 256);
        rewrite::write_request_head(
            &mut out,
            self.info.method,
            self.attempt.backend,
            self.path,
            (self.fwd, self.last),
        );
        let head_len = out.len();
        out.extend_from_slice(&self.up_out[self.head_len..]);
        self.worker
            .recycle(std::mem::replace(&mut self.up_out, out));
        self.head_len = head_len;
    }

    /// One try: write the head and the body in hand, stream the rest while watching for the
    /// response, then wait for the response head.
    async fn send_once(&mut self, down: &mut Downstream) -> Result<ResponseHead, HeadFail> {
        let timeout = self.timeouts.body;
        let sent = if self.body_in_hand.is_empty() && self.rest.is_empty() {
            io::write_all(self.up.w(), &mut self.up_out, timeout).await
        } else {
            let ranges = [
                0..self.up_out.len(),
                self.body_in_hand.clone(),
                0..self.rest.len(),
            ];
            let bufs = [&mut self.up_out, &mut down.buf, &mut self.rest];
            let sent = io::write_gather(self.up.w(), bufs, ranges, timeout).await;
            if down.start > down.buf.len() {
                // Lent to a write that timed out, and gone with it; nothing followed the
                // body in it (see `forward`).
                down.start = 0;
                self.body_in_hand = 0..0;
            }
            sent
        };
        match sent {
            Ok(()) => {}
            // The backend did not take the request in time: it is alive but not reading.
            // Never a stale connection, never resent (the buffer may be half sent); if it
            // has already answered, the answer is read, else it is a timeout.
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                if io::is_quiet(self.up.fd()) {
                    return Err(HeadFail::Backend(GatewayError::ResponseTimeout));
                }
                // Whatever comes now is no sign of staleness, and nothing can be resent.
                (self.reused, self.moved) = (false, true);
                return self.await_head(down, false).await;
            }
            // EPIPE or reset: read what the backend already sent before deciding.
            Err(e) => {
                let reset = matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
                return self.await_head(down, reset).await;
            }
        }
        if self.relay.done {
            self.request_sent();
            return self.await_head(down, false).await;
        }
        self.attempt.renew();
        // The backend held the upload up for as long as the first write waited on it.
        let held = self.sent_at.elapsed();
        // Boxed: only requests with a body still to stream need this state (two futures
        // side by side); every other request would carry and copy it for nothing.
        self.worker
            .boxes
            .pin(self.upload_while_reading(down, held))
            .await
    }

    /// The whole request went out in the first write (`sent_at` was taken just before it).
    fn request_sent(&mut self) {
        self.sent_whole = true;
        self.attempt.renew();
    }

    /// The response head with the response timeout, the request being sent (or the send
    /// having failed).
    /// `reset`: writing the request failed on a reset connection (the read that follows
    /// may find only its end).
    async fn await_head(
        &mut self,
        down: &mut Downstream,
        reset: bool,
    ) -> Result<ResponseHead, HeadFail> {
        let timeout = self.timeouts.response;
        // A client with a next request in hand (pipelined) is gone only if it reset its
        // connection: a close behind its requests is no sign of leaving. A probe's answer
        // is waited for whoever is left: it is the circuit's verdict (a review: clients
        // that left each probe in turn kept a recovered backend's circuit open for good).
        let watch = (!self.attempt.is_probe()).then(|| {
            let limits = self.view.snapshot.config.limits.head();
            self.live.note_next(&down.buf[down.start..], &limits);
            self.live.watch(self.up.fd(), self.worker.tick())
        });
        // Counted where the drain deadline's line finds them (see `run`).
        let interim_sent = &self.live.sent;
        let before = interim_sent.get();
        let moves_on_reset = !self.reused && !self.moved && self.resendable();
        let head = read_head(
            self.up.r(),
            &mut self.ubuf,
            &mut self.ustart,
            HeadCtx {
                down_w: down.sock.w(),
                out: &mut down.out,
                info: self.info,
                reused: self.reused,
                moves_on_reset,
                write_reset: reset,
                max_head: self.max_head,
                write_timeout: self.timeouts.body,
                date: &self.worker.date,
                sent_id: &down.request_id,
                origin: self.attempt.origin(),
                interim_sent,
            },
            Some((self.sent_at, timeout)),
        )
        .await;
        down.record.bytes += interim_sent.get() - before;
        // Whatever the wait ended with: the backend's connection was shut under it.
        if watch.is_some_and(Watch::end) {
            return Err(HeadFail::ClientGone);
        }
        head
    }

    /// Streams the request body up while the response is read. Whichever ends first decides:
    /// a body sent whole → wait for the head with the response timeout; a failed send → read
    /// what the backend said; a response head first → an early answer. An early answer that
    /// keeps the backend's connection is relayed while the body goes on going up (full
    /// duplex: a backend may send its head, even stream its body, before it reads the
    /// request's, and RFC 9112 §9.5 stops an upload only for a server that is closing);
    /// one that closes it ends the upload. `held`: how long the backend has held the upload
    /// up already (the first write's wait).
    async fn upload_while_reading(
        &mut self,
        down: &mut Downstream,
        held: Duration,
    ) -> Result<ResponseHead, HeadFail> {
        let timeouts = self.timeouts;
        let min_body_rate = self.min_body_rate;
        let head_limits = self.view.snapshot.config.limits.head();
        let Exchange {
            up,
            ubuf,
            ustart,
            relay,
            attempt,
            info,
            reused,
            max_head,
            worker,
            sent_whole,
            sent_at,
            pool_it,
            paced_by_client,
            upload_waited,
            live,
            ..
        } = self;
        let Downstream {
            sock,
            buf,
            start,
            out,
            fields,
            record,
            request_id,
            ..
        } = down;
        let down_fd = sock.fd();
        let worker: &Worker = worker;
        let mut chunk = worker.buffer();
        let up_fd = up.fd();
        let (up_r, up_w) = up.split();
        let (down_r, down_w) = sock.split();
        let origin = attempt.origin();
        let attempt = RefCell::new(attempt);
        // Whether the upload holds body bytes the backend has not taken: a hang-up then is
        // the backend's doing; one while we wait on the client alone may be a server giving
        // up on a slow client. And how long it has held some: time that was the backend's,
        // not the client's, and so never makes a failure the client's doing.
        let owed = Owed::new(held);
        let head_sent_at = *sent_at;
        let claim = self.view.snapshot.config.cluster.is_none();
        // Each part of the body that goes up renews a probe's lease; one whose client has
        // kept it waiting [`PROBE_CLIENT_WAIT`] hands the probe back instead, and goes on as
        // a request with no verdict (see the constant).
        let hand_back = || {
            let mut a = attempt.borrow_mut();
            let due = a.is_probe() && client_time(head_sent_at, &owed) >= PROBE_CLIENT_WAIT;
            if due {
                a.hand_back(claim);
            }
            due
        };
        let progress = |_| {
            if !hand_back() {
                attempt.borrow_mut().renew();
            }
        };
        // And one whose client sends nothing at all, looked at every [`PROBE_LOOK`] for as
        // long as it is the probe (no timer otherwise). Never ends.
        let idle_probe = async {
            while attempt.borrow().is_probe() {
                monoio::time::sleep(PROBE_LOOK).await;
                hand_back();
            }
            std::future::pending::<std::convert::Infallible>().await
        };
        let result = {
            let upload = pump(
                relay,
                down_r,
                buf,
                start,
                up_w,
                &mut chunk,
                timeouts.body,
                None,
                &worker.pipes,
                Some(&owed),
                None,
                progress,
            );
            let upload = async {
                let (mut upload, mut idle_probe) = (pin!(upload), pin!(idle_probe));
                match Race(upload.as_mut(), idle_probe.as_mut()).await {
                    Either::Left(uploaded) => uploaded,
                    Either::Right(never) => match never {},
                }
            };
            let mut upload = pin!(upload);
            // Counted where the drain deadline's line finds them (see `run`).
            let interim_sent = &live.sent;
            let before = interim_sent.get();
            let first = {
                let head = read_head(
                    &mut *up_r,
                    &mut *ubuf,
                    &mut *ustart,
                    HeadCtx {
                        down_w: &mut *down_w,
                        out: &mut *out,
                        info: *info,
                        reused: *reused,
                        moves_on_reset: false,
                        write_reset: false,
                        max_head: *max_head,
                        write_timeout: timeouts.body,
                        date: &worker.date,
                        sent_id: request_id,
                        origin,
                        interim_sent,
                    },
                    None,
                );
                let mut head = pin!(head);
                let first = Race(upload.as_mut(), head.as_mut()).await;
                // An answer while the backend had all we had of the body, the client having
                // kept us waiting a while: the backend gave up on the client, as servers do
                // with a stalled upload. One within `STALLED_UPLOAD` of waiting on the
                // client is the backend's own (a re-review: a backend failing fast on every
                // upload was never judged when the body came a few ms after the head), and
                // so is time the backend took to read (a review: on the wall clock, a
                // backend slow to read exempted its own failures).
                *paced_by_client = matches!(first, Either::Right(Ok(_)))
                    && !owed.now()
                    && client_time(*sent_at, &owed) >= STALLED_UPLOAD;
                match first {
                    Either::Right(Ok(h)) if h.reusable => Ok(h),
                    // The backend hung up without an answer while we waited on the client
                    // alone. (After a failed send, below, bytes were still owed: that
                    // hang-up is judged.)
                    Either::Right(Err(HeadFail::Backend(GatewayError::BackendClosed)))
                        if !owed.now() =>
                    {
                        Err(Err(HeadFail::Abandoned))
                    }
                    // An early answer that closes: nothing more goes up.
                    Either::Right(early) => Err(early),
                    Either::Left(Err(e)) if e != BodyError::DstIo => Err(Err(HeadFail::Client(e))),
                    // Sent whole; or the backend stopped taking the body (closed, reset, or
                    // not reading within the body timeout): its answer may be on the way.
                    Either::Left(uploaded) => {
                        if uploaded.is_ok() {
                            *sent_whole = true;
                            // An upload the client took `STALLED_UPLOAD` or more to deliver
                            // set the backend's clock too: a server with a deadline for the
                            // whole request may answer 5xx just after it (a re-review: half
                            // the body, a 1.9 s pause, the rest, against a 2 s deadline).
                            *upload_waited = client_time(*sent_at, &owed);
                            *paced_by_client |= *upload_waited >= STALLED_UPLOAD;
                            *sent_at = crate::clock::now();
                            attempt.borrow_mut().renew();
                        }
                        let probe = attempt.borrow().is_probe();
                        let watch = (!probe).then(|| {
                            live.note_next(&owed.followed.borrow(), &head_limits);
                            live.watch(up_fd, worker.tick())
                        });
                        let head = io::timed(timeouts.response, head).await;
                        Err(match head {
                            // The backend's connection was shut under the wait.
                            _ if watch.is_some_and(Watch::end) => Err(HeadFail::ClientGone),
                            Ok(r) => r,
                            Err(_) => Err(HeadFail::Backend(GatewayError::ResponseTimeout)),
                        })
                    }
                }
            };
            record.bytes += interim_sent.get() - before;
            match first {
                Err(done) => done,
                Ok(head) => {
                    let status = head.status;
                    if head.misrouted {
                        let a = attempt.borrow();
                        worker.misrouted(&a.service.name, &a.backend.url.url, up_fd);
                    }
                    let head_at = note_head(
                        worker,
                        &mut attempt.borrow_mut(),
                        record,
                        *sent_at,
                        status,
                        *paced_by_client,
                    );
                    // An answer that is all in hand with its head ends before the upload
                    // can: the client is told that the connection closes (RFC 9112 §9.6),
                    // as after an early answer that closes the backend's (a 401 or 413
                    // from a server that keeps its connection and discards the body said
                    // nothing, then the connection closed under the client's upload).
                    let keep_client = keeps_client(*info, &head, worker)
                        && !whole_in_hand(&head, ubuf.len() - *ustart);
                    // While the upload runs, a backend that stops sending may be waiting
                    // for the rest of the body: its answer's waits go on (the upload's own
                    // bound the exchange); from the upload's end, `timeouts.body` again.
                    let hold = io::Hold::new(Instant::now().checked_add(LIVE));
                    // A cut is judged once the upload has gone up whole, within what its
                    // waits on the client left of the allowance (see `ToClient`).
                    let judge = Cell::new(None);
                    let raced = {
                        let relayed = to_client(
                            ToClient {
                                up_r,
                                ubuf: &mut *ubuf,
                                ustart: &mut *ustart,
                                down_w,
                                down_fd,
                                out,
                                fields,
                                record: &mut *record,
                                live,
                                pipes: &worker.pipes,
                                timeout: timeouts.body,
                                hold: Some(&hold),
                                min_body_rate,
                                minor: info.minor,
                                head_at,
                                // Answered while the upload went on: the backend may cut
                                // its answer over how the client uploads, until it is up.
                                judge_cuts: &judge,
                                watch: None,
                            },
                            &head,
                            keep_client,
                        );
                        let mut relayed = pin!(relayed);
                        // (relayed, uploaded whole).
                        match Race(relayed.as_mut(), upload.as_mut()).await {
                            // The answer ended first. The upload may have ended in the same
                            // turn (a spliced answer moves whole in one poll): one more poll
                            // of it tells, so that a client that sent everything keeps its
                            // connection (CI saw it closed after a whole exchange).
                            Either::Left(r) => {
                                let now = std::future::poll_fn(|cx| {
                                    Poll::Ready(upload.as_mut().poll(cx))
                                })
                                .await;
                                Some((r, matches!(now, Poll::Ready(Ok(_)))))
                            }
                            Either::Right(Ok(_)) => {
                                hold.set(Instant::now().checked_add(timeouts.body));
                                let waited = client_time(*sent_at, &owed);
                                judge.set(Some(STALLED_UPLOAD.saturating_sub(waited)));
                                Some((relayed.await, true))
                            }
                            // The backend stopped taking the body: its answer goes on alone,
                            // within the wait it was in.
                            Either::Right(Err(BodyError::DstIo)) => {
                                hold.set(None);
                                Some((relayed.await, false))
                            }
                            // The client broke its upload (gone, too slow, bad framing) with
                            // the answer under way.
                            Either::Right(Err(_)) => None,
                        }
                    };
                    record.bytes += live.sent.get();
                    let Some((relayed, uploaded)) = raced else {
                        // No answer of ours can follow: the connection is reset, the answer
                        // logged as cut short; no verdict on the backend.
                        record.cut = true;
                        io::set_reset_on_close(down_fd);
                        attempt.borrow_mut().settle(Outcome::NotSent);
                        return Err(HeadFail::Duplex(After::Close));
                    };
                    *sent_whole = uploaded;
                    let body = match relayed {
                        Relayed::Whole => Body::Relayed,
                        // Its waits held open while the body went up (a review opened
                        // circuits with slow and stalled uploads, another saw answers cut
                        // when an upload outlasted `timeouts.body`), a stall is the
                        // backend's: silent for that long with the whole body, or having
                        // stopped taking it (a third review).
                        Relayed::Cut(body) => body,
                        // Nothing reached the client: a clean 502, closing lingering, as
                        // for any early answer broken that way.
                        Relayed::BadFraming(_) => {
                            let err = GatewayError::BadResponse("invalid_chunked_body");
                            return Err(HeadFail::Backend(err));
                        }
                    };
                    attempt.borrow_mut().settle(body.outcome(status));
                    let whole = body == Body::Relayed;
                    *pool_it = whole && uploaded && *ustart == ubuf.len();
                    if whole && head.reusable && *ustart != ubuf.len() {
                        // Bytes after a framed response (see the same check below).
                        worker.pool.stray(attempt.borrow().backend);
                    }
                    Err(HeadFail::Duplex(match whole {
                        false => After::Close,
                        true => after_relayed(uploaded, keep_client),
                    }))
                }
            }
        };
        worker.recycle(chunk);
        result
    }

    /// Relays the response: the head is in `down.out`; whatever body is in hand goes in the
    /// same write; the rest streams. Then decides about both connections, and says whether
    /// the backend broke the body.
    async fn relay_response(
        &mut self,
        down: &mut Downstream,
        head: ResponseHead,
        head_at: Instant,
    ) -> (After, Body) {
        let early = !self.sent_whole;
        let status = head.status;
        // An early answer, or a drain that began while we waited, closes the client
        // connection after this response.
        let keep_client = !early && keeps_client(self.info, &head, self.worker);
        // Bytes in hand past a whole framed body: a response sent twice, or the start of a
        // late one. Marked before the answer goes out, so that no worker reuses a
        // connection to this backend meanwhile (under load, a client on the other worker
        // met the stale answer the client before it had just been given).
        let body_len = match head.framing {
            Framing::None => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked | Framing::UntilClose => None,
        };
        let in_hand = (self.ubuf.len() - self.ustart) as u64;
        let stray_seen = head.reusable && body_len.is_some_and(|n| in_hand > n);
        if stray_seen {
            self.worker.pool.stray(self.attempt.backend);
        }
        let fd = down.sock.fd();
        self.live.note_next(
            &down.buf[down.start..],
            &self.view.snapshot.config.limits.head(),
        );
        let watch = Some(crate::worker::BodyWatch {
            worker: self.worker,
            live: self.live,
            up: self.up.fd(),
        });
        let relayed = to_client(
            ToClient {
                up_r: self.up.r(),
                ubuf: &mut self.ubuf,
                ustart: &mut self.ustart,
                down_w: down.sock.w(),
                down_fd: fd,
                out: &mut down.out,
                fields: &down.fields,
                record: &mut down.record,
                live: self.live,
                pipes: &self.worker.pipes,
                timeout: self.timeouts.body,
                hold: None,
                min_body_rate: self.min_body_rate,
                minor: self.info.minor,
                head_at,
                judge_cuts: &Cell::new(
                    (!early && !self.paced_by_client)
                        .then(|| STALLED_UPLOAD.saturating_sub(self.upload_waited)),
                ),
                watch,
            },
            &head,
            keep_client,
        )
        .await;
        down.record.bytes += self.live.sent.get();
        match relayed {
            Relayed::Whole => {}
            Relayed::Cut(body) => return (After::Close, body),
            Relayed::BadFraming(e) => {
                // Broken framing before anything reached the client: a clean 502 is possible.
                // The verdict comes first: a client that retries at once on the 502 must find
                // the failure counted (CI caught the circuit still closed after the third).
                let body = Body::after(e);
                self.attempt.settle(body.outcome(status));
                let err = GatewayError::BadResponse("invalid_chunked_body");
                let request = (false, self.relay.done);
                let timeout = self.timeouts.body;
                let after =
                    reply_error(self.worker, down, request, err, self.service, None, timeout).await;
                return (after, body);
            }
        }
        // Reuse the backend connection only after a clean, fully framed exchange.
        self.pool_it = head.reusable && !early && self.ustart == self.ubuf.len();
        if head.reusable && self.ustart != self.ubuf.len() && !stray_seen {
            // Bytes after a framed response: a response sent twice, or the start of a late
            // one. None of this backend's connections is reused for a while (`pool.rs`).
            self.worker.pool.stray(self.attempt.backend);
        }
        (after_relayed(!early, keep_client), Body::Relayed)
    }
}

/// Whether the client connection may stay after this response, the request having been
/// read whole: the client wants it, the body's framing lets it, and no drain began.
fn keeps_client(info: RequestInfo, head: &ResponseHead, worker: &Worker) -> bool {
    info.keep_alive && head.framed_for_client && !worker.stopping()
}

/// True when the body of a response with `head` is all in the `in_hand` bytes after it.
fn whole_in_hand(head: &ResponseHead, in_hand: usize) -> bool {
    match head.framing {
        Framing::None => true,
        Framing::Length(n) => in_hand as u64 >= n,
        Framing::Chunked | Framing::UntilClose => false,
    }
}

/// What the client connection does after a response relayed whole: lingers while its
/// request body may still be coming (not `uploaded` whole), else stays or closes.
fn after_relayed(uploaded: bool, keep_client: bool) -> After {
    match (uploaded, keep_client) {
        (false, _) => After::Linger,
        (true, true) => After::Keep,
        (true, false) => After::Close,
    }
}

/// What relaying a response to the client uses of an exchange and of its client
/// connection, borrowed apart from the upload that may still run beside it (full duplex).
struct ToClient<'r> {
    up_r: &'r mut ReadHalf,
    ubuf: &'r mut Vec<u8>,
    ustart: &'r mut usize,
    down_w: &'r mut WriteHalf,
    down_fd: std::os::fd::RawFd,
    /// Holds the client-bound copy of the response head.
    out: &'r mut Vec<u8>,
    /// Fields the gateway adds to the response head.
    fields: &'r [u8],
    record: &'r mut Record,
    /// The client connection's: its `sent` counts the body bytes that reached the client
    /// (the caller adds them to the record: a relay dropped mid-body still counts what
    /// went), and `answered` says what the head did, for the line the drain deadline may
    /// have to write.
    live: &'r Live,
    pipes: &'r crate::splice::Pipes,
    timeout: Duration,
    /// Stretches the waits on the backend (see [`io::timed_held`]).
    hold: Option<&'r io::Hold>,
    min_body_rate: u64,
    minor: u8,
    /// When the response head arrived.
    head_at: Instant,
    /// A body the backend cuts short is judged ([`Body::Cut`]) if the client kept up with
    /// it: the gateway waited on the client less than this while relaying it. It is what
    /// the upload left of [`STALLED_UPLOAD`], since a server with a deadline for the whole
    /// exchange (Go's `WriteTimeout`) cuts its answer when the client's waits, on both
    /// sides, used it up (a review: 0.9 s on each side were judged). None when the upload,
    /// if any, was not whole and quick (an early answer that closes, or after an upload the
    /// client took `STALLED_UPLOAD` or more to deliver). An answer relayed while the upload
    /// goes on gets its allowance when the upload ends whole (a review: a backend that sent
    /// its head first and then died mid-body was never judged).
    judge_cuts: &'r Cell<Option<Duration>>,
    /// The client, watched while the body waits on the backend (none while it uploads: it
    /// is there; with a next request in hand, only a reset counts).
    watch: Option<crate::worker::BodyWatch<'r>>,
}

/// How relaying a response to the client ended.
enum Relayed {
    /// The whole body went, and ended cleanly.
    Whole,
    /// Cut short (the client's connection is then set to reset): by the client (no verdict)
    /// or by the backend (silent for `timeouts.body` beyond any `hold`, or broken).
    Cut(Body),
    /// The body bytes in hand break its framing: nothing was sent, so a clean 502 is
    /// possible.
    BadFraming(BodyError),
}

/// Completes the response head in `out` (our fields, the connection decision), writes it
/// with the body in hand, then streams the rest of the body, counting what reached the
/// client in its record.
async fn to_client(t: ToClient<'_>, head: &ResponseHead, keep_client: bool) -> Relayed {
    let ToClient {
        up_r,
        ubuf,
        ustart,
        down_w,
        down_fd,
        out,
        fields,
        record,
        live,
        pipes,
        timeout,
        hold,
        min_body_rate,
        minor,
        head_at,
        judge_cuts,
        watch,
    } = t;
    let before = out.len();
    out.extend_from_slice(fields);
    rewrite::end_response_head(out, keep_client, minor);
    let mut body = BodyRelay::new(head.framing, head.client_chunked, u64::MAX).paced(Pace::new(
        Side::Dst,
        min_body_rate,
        timeout,
    ));
    let used = match body.feed(&ubuf[*ustart..], out) {
        Ok(n) => n,
        Err(e) => {
            out.truncate(before);
            return Relayed::BadFraming(e);
        }
    };
    *ustart += used;
    let sent_before = record.bytes;
    record.bytes += out.len() as u64;
    live.sent.set(0);
    live.answered.set(Some(Answered {
        status: head.status,
        bytes: record.bytes,
        upstream_us: record.upstream_us,
    }));
    if let Err(e) = io::write_all(down_w, out, timeout).await {
        if e.kind() == std::io::ErrorKind::TimedOut {
            // Some of the head may have gone: an answer cut short.
            record.cut = true;
        } else {
            // The client reset its connection while the backend worked: no answer
            // reached it, so it is logged and counted as aborted (status 0), not as
            // the backend's status (a review saw such clients counted as 200s), with
            // the reason the log gives a client gone before its answer.
            record.client_gone(sent_before);
        }
        return Relayed::Cut(Body::Unjudged);
    }
    out.clear();
    if body.done {
        return Relayed::Whole;
    }
    // Waiting to write the head counts as waiting on the client: a client that does not
    // read holds it up as it holds up the body.
    body.pace.spend(head_at.elapsed(), 0);
    let mut buf = std::mem::take(out);
    // Counted as it goes: a body cut short is logged with what reached the client.
    let r = pump(
        &mut body,
        up_r,
        ubuf,
        ustart,
        down_w,
        &mut buf,
        timeout,
        hold,
        pipes,
        None,
        watch,
        |n| live.sent.set(live.sent.get() + n),
    )
    .await;
    *out = buf;
    match r {
        Ok(_) => Relayed::Whole,
        Err(e) => {
            record.cut = true;
            // The client gone or too slow (`Pace`): a reset frees what our send buffer
            // still holds for it at once, and a close-delimited body cut here cannot look
            // complete. The backend failed mid-body: the client must see an aborted
            // response.
            io::set_reset_on_close(down_fd);
            Relayed::Cut(match e {
                BodyError::DstIo => Body::Unjudged,
                // A stream (chunked or until close: server-sent events, a long poll) may
                // pause longer than `timeouts.body` by design: a stall there is no verdict,
                // or clients subscribing to a quiet stream opened its circuit (a review).
                // A Content-Length body that stops is a backend that broke it.
                BodyError::SrcTimeout if !matches!(head.framing, Framing::Length(_)) => {
                    Body::Unjudged
                }
                // The backend closed mid-body (a review: one that sent a good head and then
                // died every time stayed in service), and the client did not keep the
                // gateway waiting. A reset stays no verdict: it is also how a backend's
                // kernel ends a connection whose request body the backend did not read,
                // whatever it had still to send of an early 413.
                BodyError::Truncated
                    if judge_cuts
                        .get()
                        .is_some_and(|allowed| body.pace.waited() < allowed) =>
                {
                    Body::Cut
                }
                e => Body::after(e),
            })
        }
    }
}

/// Most bytes of interim (1xx) responses one request may get before its final one (about
/// 2000 `102 Processing` heads); more is a 502 [`TOO_MANY_INTERIM`].
const MAX_INTERIM_BYTES: usize = 64 * 1024;
const TOO_MANY_INTERIM: &str = "too_many_interim_responses";

/// What reading a response head needs besides the upstream read side.
struct HeadCtx<'a> {
    /// Interim (1xx) responses are relayed through it as they come.
    down_w: &'a mut WriteHalf,
    /// Receives the client-bound copy of the final head.
    out: &'a mut Vec<u8>,
    info: RequestInfo,
    /// The connection came from the pool: a close or reset before any byte of answer is
    /// [`HeadFail::Stale`].
    reused: bool,
    /// A reset before any byte of answer is [`HeadFail::Reset`]: the connection is fresh
    /// and the request may move on.
    moves_on_reset: bool,
    /// Writing the request met a reset already: then the read finds the connection's end.
    write_reset: bool,
    max_head: usize,
    /// For relaying interim responses.
    write_timeout: Duration,
    /// The worker's `Date` line, for a final head that lacks one.
    date: &'a DateCache,
    /// The request's ID (`request_id: true`; empty otherwise): the backend's own
    /// `X-Request-Id` is left out, ours is among the added fields, and a final answer
    /// naming another request is relayed but marked (`misrouted`): its connection is not
    /// reused.
    sent_id: &'a [u8],
    /// The backend answering and the client's service, for its `Location`.
    origin: rewrite::Origin<'a>,
    /// Bytes of interim responses written to the client (they count as sent).
    interim_sent: &'a Cell<u64>,
}

/// Reads the backend's final response head, relaying 1xx interim responses. With `timeout`
/// the whole head must arrive within it; without, it waits (the caller bounds it).
async fn read_head(
    up: &mut ReadHalf,
    ubuf: &mut Vec<u8>,
    ustart: &mut usize,
    cx: HeadCtx<'_>,
    limit: Option<(Instant, Duration)>,
) -> Result<ResponseHead, HeadFail> {
    /// Stands for "no deadline": longer than any caller waits.
    const FOREVER: Duration = Duration::from_secs(24 * 3600);
    let info = cx.info;
    let mut first_read = true;
    let mut got_any = false;
    // Bytes of interim heads.
    let mut interim = 0usize;
    // A head is parsed as soon as bytes of it are in hand (most come whole in one read);
    // after that, only when a byte that can decide arrives (see `HeadScan`): a head
    // trickled in many pieces is parsed a few times, not once per read.
    let mut scan = h1::HeadScan::default();
    let mut partial = false;
    loop {
        if *ustart < ubuf.len() && (!partial || scan.ready_response(&ubuf[*ustart..], cx.max_head))
        {
            h1::later_minor_response_as_1_1(&mut ubuf[*ustart..]);
            match parse_head(
                &ubuf[*ustart..],
                info,
                cx.max_head,
                (cx.date, cx.sent_id, cx.origin),
                cx.out,
            )? {
                Parsed::Final(head, head_len) => {
                    *ustart += head_len;
                    return Ok(head);
                }
                Parsed::Interim(head_len) => {
                    // Real answers send one or two (100, 103), or a 102 now and then on a
                    // long operation; a backend sending a flood made us parse and relay
                    // each, 40 MB of them in 8 s (a review). Not judged: a long operation
                    // with 102s is not a failing backend, and a client may choose one.
                    interim += head_len;
                    if interim > MAX_INTERIM_BYTES {
                        return Err(HeadFail::Flood);
                    }
                    // Interim response (rewritten into `out`): pass it on to HTTP/1.1
                    // clients, then read on.
                    if info.minor == 1 && !cx.out.is_empty() {
                        let n = cx.out.len() as u64;
                        if io::write_all(cx.down_w, cx.out, cx.write_timeout)
                            .await
                            .is_ok()
                        {
                            cx.interim_sent.set(cx.interim_sent.get() + n);
                        }
                    }
                    cx.out.clear();
                    *ustart += head_len;
                    (scan, partial) = (h1::HeadScan::default(), false);
                    continue;
                }
                Parsed::Partial => partial = true,
            }
        }
        // The first read starts right when the request went out, so only later reads
        // need the clock.
        let left = match (first_read, limit) {
            (_, None) => FOREVER,
            (true, Some((_, timeout))) => timeout,
            (false, Some((since, timeout))) => {
                (since + timeout).saturating_duration_since(Instant::now())
            }
        };
        first_read = false;
        let read = io::read_more(up, ubuf, ustart, 4096, left).await;
        if !matches!(read, Read::Data(_)) && *ustart < ubuf.len() {
            // The backend fell silent or closed on a head not parsed since its last
            // pieces: a malformed line among them is said as such (a 502 naming it), as
            // when every read was parsed.
            h1::later_minor_response_as_1_1(&mut ubuf[*ustart..]);
            let mut out = Vec::new();
            let ctx = (cx.date, cx.sent_id, cx.origin);
            parse_head(&ubuf[*ustart..], info, cx.max_head, ctx, &mut out)?;
        }
        match read {
            Read::Data(_) => got_any = true,
            Read::Timeout => return Err(HeadFail::Backend(GatewayError::ResponseTimeout)),
            Read::Eof | Read::Err(_) if cx.reused && !got_any => return Err(HeadFail::Stale),
            Read::Eof | Read::Err(_)
                if cx.moves_on_reset && !got_any && (cx.write_reset || was_reset(&read)) =>
            {
                return Err(HeadFail::Reset)
            }
            Read::Eof | Read::Err(_) => return Err(HeadFail::Backend(GatewayError::BackendClosed)),
        }
    }
}

/// The read failed on a connection the peer reset.
fn was_reset(read: &Read) -> bool {
    matches!(read, Read::Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// What the bytes in hand hold of a response head.
enum Parsed {
    /// The final head (written to the client-bound buffer) and its length.
    Final(ResponseHead, usize),
    /// A 1xx head of this length (its client-bound copy written to `out`).
    Interim(usize),
    /// Not a whole head yet.
    Partial,
}

/// Parses the response head at the start of `bytes`; a final one is rewritten into `out`.
/// Kept out of [`read_head`]'s future: the header slots (4 KiB) would otherwise live in it,
/// and in every future that awaits it, which are moved around per request.
fn parse_head(
    bytes: &[u8],
    info: RequestInfo,
    max_head: usize,
    (date, sent_id, origin): (&DateCache, &[u8], rewrite::Origin<'_>),
    out: &mut Vec<u8>,
) -> Result<Parsed, HeadFail> {
    let own_id = !sent_id.is_empty();
    let mut headers = h1::header_slots();
    let parsed = h1::parse_response(bytes, &mut headers, info.method == Method::Head, max_head)
        .map_err(|e| match e.0 {
            h1::RESPONSE_HEAD_TOO_LARGE | h1::TOO_MANY_RESPONSE_HEADERS => {
                HeadFail::Unjudged(GatewayError::BadResponse(e.0), status_code(bytes))
            }
            why => HeadFail::Backend(GatewayError::BadResponse(why)),
        })?;
    let Some(p) = parsed else {
        return Ok(Parsed::Partial);
    };
    let status = p.info.status;
    let head_len = p.info.head_len;
    if status == 101 {
        // Only a WebSocket handshake we forwarded as one may be answered by switching, and
        // only to the protocol it asked for (RFC 9110 §15.2.2: a 101 names it in `Upgrade`).
        // Anything else would leave us relaying bytes we cannot frame: a 502.
        if !(info.upgrade && switches_to_websocket(&p)) {
            let err = GatewayError::BadResponse("unexpected_upgrade");
            return Err(HeadFail::Backend(err));
        }
        out.clear();
        rewrite::write_switch_head(out, &p, own_id);
        let head = ResponseHead {
            status,
            framing: Framing::None,
            reusable: false,
            client_chunked: false,
            framed_for_client: false,
            misrouted: false,
        };
        return Ok(Parsed::Final(head, head_len));
    }
    if status < 200 {
        out.clear();
        // A `100` answers an `Expect` we never forward: the client had ours, if it asked
        // (a splice review got `100, 100, 103, 200`). NGINX drops it too. The others (103
        // hints, 102) go on.
        if status != 100 {
            rewrite::write_interim_head(out, &p, own_id);
        }
        return Ok(Parsed::Interim(head_len));
    }
    let misrouted = own_id
        && p.headers.iter().any(|h| {
            h1::name_is(h.name, crate::reqid::FIELD)
                && crate::reqid::names_another(sent_id, h1::trim_ows(h.value))
        });
    let framing = p.info.framing;
    let unframed = matches!(framing, Framing::Chunked | Framing::UntilClose);
    let close_delimited = info.minor == 0 && unframed;
    let head = ResponseHead {
        status,
        framing,
        reusable: p.info.reusable && !doubtful(&p, info) && !misrouted,
        client_chunked: info.minor == 1 && unframed,
        framed_for_client: !close_delimited,
        misrouted,
    };
    out.clear();
    let date = date.line();
    rewrite::write_response_head(out, &p, info, head.client_chunked, &date, (own_id, origin));
    Ok(Parsed::Final(head, head_len))
}

/// The status code of a head that starts `HTTP/1.x NNN `, whatever follows.
fn status_code(head: &[u8]) -> Option<u16> {
    match head.strip_prefix(b"HTTP/1.")? {
        [_, b' ', code @ ..] if code.len() >= 3 && code[..3].iter().all(u8::is_ascii_digit) => {
            Some(
                code[..3]
                    .iter()
                    .fold(0, |n, d| n * 10 + u16::from(d - b'0')),
            )
        }
        _ => None,
    }
}

/// Whether a `101`'s one `Upgrade` field names `websocket`, in an HTTP/1.1 head without
/// framing fields. A 1xx has no body (RFC 9112 §6.1, RFC 9110 §8.6): a `Content-Length` or
/// `Transfer-Encoding` on one says the backend meant bytes as a body that would reach the
/// client as the other protocol's (a review saw a 101's `Content-Length: 5` dropped and its
/// `hello` relayed as tunnel data). HTTP/1.0 has no `Upgrade`.
fn switches_to_websocket(p: &h1::ParsedResponse<'_, '_>) -> bool {
    let mut upgrades = p.headers.iter().filter(|h| h1::name_is(h.name, "upgrade"));
    let framed = p
        .headers
        .iter()
        .any(|h| h1::name_is(h.name, "content-length") || h1::name_is(h.name, "transfer-encoding"));
    upgrades
        .next()
        .is_some_and(|h| h1::trim_ows(h.value).eq_ignore_ascii_case(b"websocket"))
        && upgrades.next().is_none()
        && p.info.minor == 1
        && !framed
}

/// A bodyless response that looks as if the backend meant to send a body (a HEAD or 304
/// answer announcing a length or a transfer coding, a 204 with either): if the body follows
/// later, it must find the connection closed, not the next request waiting on it.
fn doubtful(p: &h1::ParsedResponse<'_, '_>, info: RequestInfo) -> bool {
    let framed = || {
        p.headers.iter().any(|h| {
            h1::name_is(h.name, "content-length") || h1::name_is(h.name, "transfer-encoding")
        })
    };
    // A HEAD or 304 answer may announce the length a GET or 200 would have had, so it is
    // allowed, but the bytes it announces may still come.
    let like_head = info.method == Method::Head || p.info.status == 304;
    (like_head && p.content_length.is_some_and(|n| n > 0))
        || (like_head && framed() && p.content_length.is_none())
        || (p.info.status == 204 && framed())
}

/// Polls two futures until one finishes, without dropping the other (the caller decides
/// what to do with it). `A` is polled first.
struct Race<A, B>(A, B);

enum Either<L, R> {
    Left(L),
    Right(R),
}

impl<A: Future + Unpin, B: Future + Unpin> Future for Race<A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(a) = Pin::new(&mut self.0).poll(cx) {
            return Poll::Ready(Either::Left(a));
        }
        if let Poll::Ready(b) = Pin::new(&mut self.1).poll(cx) {
            return Poll::Ready(Either::Right(b));
        }
        Poll::Pending
    }
}

/// Answers with a gateway error. The connection stays if the client wants it, the whole
/// request was read (`whole`) and no drain has begun by the time the answer goes (as after
/// a relayed answer: reviews saw a 504 in the drain without `Connection: close`, once
/// decided before up to three connect timeouts); if some of its body is still to come, it
/// closes lingering, so that the client reads the answer rather than a reset.
async fn reply_error(
    worker: &Worker,
    down: &mut Downstream,
    (keep_alive, whole): (bool, bool),
    err: GatewayError,
    service: &[u8],
    retry_after: Option<u64>,
    timeout: Duration,
) -> After {
    let service = (!service.is_empty()).then_some(service);
    let keep = keep_alive && whole && !worker.stopping();
    match down.reply(err, service, retry_after, !keep, timeout).await {
        false => After::Close,
        true if keep => After::Keep,
        true if !whole => After::Linger,
        true => After::Close,
    }
}

/// Answers a request whose body could not be read from the client.
async fn reply_body_error(
    down: &mut Downstream,
    e: BodyError,
    service: &[u8],
    timeout: Duration,
) -> After {
    let (err, after) = match e {
        // The rest of the body may still be coming: linger, so that the client reads the
        // answer rather than a reset.
        BodyError::Framing(why) => (GatewayError::BadRequest(why), After::Linger),
        BodyError::TooLarge => (GatewayError::BodyTooLarge, After::Linger),
        // A client that stalled may yet send the rest: linger too (bounded by `LINGER`).
        BodyError::SrcTimeout => (GatewayError::RequestTimeout, After::Linger),
        // The client left mid-body (a reset, or a close before the body's end): logged and
        // counted as gone, as one that leaves during the wait for the answer is (it was
        // status 0 with no error, and missing from `gateway_errors_total`: a review).
        BodyError::SrcIo | BodyError::Truncated => {
            down.record.client_gone(down.record.bytes);
            return After::Close;
        }
        BodyError::DstIo => return After::Close,
    };
    let service = (!service.is_empty()).then_some(service);
    match down.reply(err, service, None, true, timeout).await {
        true => after,
        false => After::Close,
    }
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

/// What the breaker hears of a failure before any response: nothing when the gateway ran
/// out of its own resources, which says nothing about the backend (else a client that
/// exhausts our descriptors would open every healthy backend's circuit).
fn verdict(err: GatewayError) -> Outcome {
    match err {
        GatewayError::Overloaded => Outcome::NotSent,
        // Over our own limits, which a client can push a backend over (one that echoes a
        // header back, say): a verdict would let one client open a healthy circuit.
        GatewayError::BadResponse(h1::RESPONSE_HEAD_TOO_LARGE | h1::TOO_MANY_RESPONSE_HEADERS) => {
            Outcome::Responded(None)
        }
        _ => Outcome::Failed(Why::of(err)),
    }
}

/// `Retry-After` for a failure of our own (1 s, as for `max_in_flight`); none otherwise.
fn retry_after(err: GatewayError) -> Option<u64> {
    (err == GatewayError::Overloaded).then_some(1)
}

/// Whether a failed connect failed on our side: out of descriptors, memory or local
/// ports. The backend was never reached.
fn local_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Idle pooled connections closed when a connect runs out of descriptors: a few, so that
/// the requests right behind this one find some too.
pub const SHED_ON_EMFILE: usize = 8;

/// Connects tried again after one found no descriptor, before the request is answered
/// `503 overloaded`: at most about 15 ms more.
const CONNECT_TRIES_ON_EMFILE: usize = 3;

/// Whether `e` says the process or the system has no descriptor left.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Connects and records the time it took in the service's connect histogram. A connect
/// that failed on our side (see [`local_failure`]) is `Overloaded`: a 503, no verdict.
async fn timed_connect(
    worker: &Worker,
    service: &Service,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Socket, GatewayError> {
    let t = Instant::now();
    let mut connect = io::timed(timeout, TcpStream::connect_addr(addr)).await;
    // Out of descriptors: idle pooled connections (to any backend) hold some. Close a few
    // and try again, or this request fails for the sake of idle ones. Else the quietest
    // client connection (idle, as at the connection cap), whose descriptor a request with a
    // client serves better (a review: with `max_connections` above what the descriptor
    // limit holds, every new request got a 503 while idle keep-alive clients held the
    // descriptors). A few tries: one eviction is under way at a time, and the accept loop
    // may take a freed descriptor first (a re-review).
    for _ in 0..CONNECT_TRIES_ON_EMFILE {
        match &connect {
            Ok(Err(e)) if out_of_descriptors(e) => {}
            _ => break,
        }
        let freed = worker.pool.shed(SHED_ON_EMFILE) > 0 || worker.evict_for_descriptor();
        // With io_uring a socket is closed by an operation on the ring: wait until the
        // runtime submitted them (it does before it next sleeps; a yield may not get that
        // far), and an evicted client's task has run; longer when another's eviction is
        // still landing.
        let wait = if freed { 1 } else { 5 };
        monoio::time::sleep(Duration::from_millis(wait)).await;
        connect = io::timed(timeout, TcpStream::connect_addr(addr)).await;
    }
    let r = match connect {
        Ok(Ok(s)) => Ok(Socket::new(s)),
        Ok(Err(e)) if local_failure(&e) => Err(GatewayError::Overloaded),
        Ok(Err(_)) => Err(GatewayError::ConnectFailed),
        Err(_) => Err(GatewayError::ConnectTimeout),
    };
    if r.is_ok() {
        worker
            .metrics
            .connect
            .observe(service.id, t.elapsed().as_micros() as u64);
    }
    r
}
