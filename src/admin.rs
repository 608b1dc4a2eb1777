//! Admin listener, off the workers' hot path: `/healthz`, `/metrics`, `/admin/backends`,
//! `/admin/config`, `/admin/cluster`. Plain blocking I/O, one short request per connection, one short-lived
//! thread per connection so that no client can hold up another: the whole request head
//! must arrive within [`HEAD_DEADLINE`] and the whole answer leave within
//! [`WRITE_DEADLINE`], and at most [`MAX_CONNECTIONS`] are served at once. At the cap a new
//! connection evicts the oldest one, preferring one still sending its head (a slow or
//! silent client: a probe sends its head at once), so a flood of idle or trickling
//! connections cannot lock `/healthz` out.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::breaker::{self, retry_after_ms, Snapshot as Word, CLOSED};
use crate::metrics::{self, WorkerMetrics};
use crate::renders::{Answer, Renders};
use crate::state::{now_ms, Shared};

/// Admin connections served at once. At the cap a new connection evicts the oldest one
/// (see `Conns::admit_handle`).
pub const MAX_CONNECTIONS: usize = 64;
/// The whole request head must arrive within this, counted from accept, however slowly
/// it trickles in; then the connection is closed without an answer.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// The whole answer must be written within this, however slowly the client reads:
/// Prometheus's default `scrape_timeout`. At 2 s a review's 12 MB `/metrics` (5 000
/// services) was cut for any reader slower than 6 MB/s; a slow reader holds only its own
/// thread, and at the cap the oldest connection is evicted.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Largest request head; a longer one is answered 400.
pub const MAX_HEAD_BYTES: usize = 8192;
/// How long the rest of a refused head (400, 405) is read and dropped after the answer,
/// so that the close does not reset the connection (see `linger`).
pub const LINGER: Duration = Duration::from_secs(1);

/// How long one accept waits before the acceptor looks whether it is to stop.
const ACCEPT_WAIT: Duration = Duration::from_secs(1);

/// Serves `listener` from a new acceptor thread, until the returned flag is set (the
/// listening socket handed over to a new process: an upgrade); it stops within
/// [`ACCEPT_WAIT`], answering meanwhile as the process that took over would.
pub fn start(
    listener: TcpListener,
    shared: Arc<Shared>,
) -> std::io::Result<(SocketAddr, Arc<AtomicBool>)> {
    let bound = listener.local_addr()?;
    // A blocking accept, which holds its descriptor while it waits, so that clients taking
    // every other one leave it the one it needs (`Reserve`): an accept after `poll` had
    // none (`out_of_descriptors_the_admin_port_answers_...`). It ends after ACCEPT_WAIT
    // (SO_RCVTIMEO) to see the stop: shutting the socket down would end a new process's
    // accepts too.
    listener.set_nonblocking(false)?;
    socket2::SockRef::from(&listener).set_read_timeout(Some(ACCEPT_WAIT))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let conns = Arc::new(Conns::new(MAX_CONNECTIONS));
    let renders = Arc::new(Renders::default());
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || accept_loop(&listener, &stopped, &shared, &conns, &renders))?;
    log::info!("admin listening on {bound}");
    Ok((bound, stop))
}

/// Accepts until `stop` is set; never blocks on a client (admission and eviction are a lock
/// held for a scan of at most `2 * MAX_CONNECTIONS` slots, a `dup`, a `shutdown` and a
/// spawn).
fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    shared: &Arc<Shared>,
    conns: &Arc<Conns>,
    renders: &Arc<Renders>,
) {
    let mut reserve = Reserve::default();
    reserve.refill();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            // ACCEPT_WAIT passed with no client.
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            // Out of descriptors: the reserve's make room for this one, and the workers
            // leave the ones they free until it is in. Not taken back before the accept
            // that needs them (that would spin: a re-review).
            Err(e) if out_of_descriptors(&e) => {
                reserve.make_room(shared);
                continue;
            }
            Err(e) => {
                log::debug!("admin: accept: {e}");
                // Out of descriptors or the like: do not spin.
                if !matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                ) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                reserve.refill();
                continue;
            }
        };
        let accepted = Instant::now();
        // The accept may have taken the last descriptor, and the handle needs one more:
        // the reserve's, or one a worker frees meanwhile (for a fifth of a second at most).
        let mut second = stream.try_clone();
        for _ in 0..20 {
            match &second {
                Err(e) if out_of_descriptors(e) => {}
                _ => break,
            }
            reserve.make_room(shared);
            second = stream.try_clone();
        }
        shared.admin_short.store(false, Ordering::Relaxed);
        let Some(id) = second.ok().and_then(|h| conns.admit_handle(h)) else {
            log::debug!("admin: connection closed at once: at the cap, evictions still finishing");
            continue; // dropped: closed at once
        };
        let (shared, owner, renders) = (shared.clone(), conns.clone(), renders.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                let _slot = Release(&owner, id);
                if let Err(e) = handle(stream, accepted, &shared, &owner, id, &renders) {
                    log::debug!("admin: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("admin: cannot start a connection thread: {e}");
            conns.release(id);
        }
        reserve.refill();
    }
}

/// Descriptors held open for nothing, given up when an accept finds none left: `/healthz`
/// and `/metrics` still answer while clients hold every descriptor (a review ran a gateway
/// whose `limits.max_connections` the descriptor limit could not hold: its admin port went
/// dark, for load balancers and monitoring alike). Two: a connection takes its socket and
/// the `dup` that lets it be evicted.
#[derive(Default)]
struct Reserve(Vec<std::fs::File>);

impl Reserve {
    fn refill(&mut self) {
        while self.0.len() < 2 {
            match std::fs::File::open("/dev/null") {
                Ok(f) => self.0.push(f),
                Err(_) => return,
            }
        }
    }

    /// Out of descriptors: closes one of the reserve, for the one descriptor needed next
    /// (the accept's, then the `dup`'s: both at once left the second to whichever thread
    /// came first, and the workers, freeing descriptors for their own clients, often did:
    /// a re-review), or with none left waits 10 ms for one a worker frees; and has the
    /// workers leave the ones they free until the admin thread has what it needs.
    fn make_room(&mut self, shared: &Shared) {
        shared.admin_short.store(true, Ordering::Relaxed);
        if self.0.pop().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One admitted connection.
#[derive(Debug)]
struct Slot {
    /// Admission order: lower is older.
    id: u64,
    /// A second handle on the socket, to shut it down when evicted.
    handle: TcpStream,
    /// Still reading the request head (false once answering).
    in_head: bool,
    /// Shut down to make room; its thread is finishing and will release the slot.
    evicted: bool,
}

/// The admin connections being served, oldest first.
#[derive(Debug)]
struct Conns {
    cap: usize,
    slots: Mutex<(u64, Vec<Slot>)>,
}

/// Releases a connection's slot when its thread ends, however it ends.
struct Release<'a>(&'a Conns, u64);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

impl Conns {
    fn new(cap: usize) -> Conns {
        Conns {
            cap,
            slots: Mutex::new((0, Vec::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u64, Vec<Slot>)> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Conns::admit_handle`] for `s`, making its second handle.
    #[cfg(test)]
    fn admit(&self, s: &TcpStream) -> Option<u64> {
        self.admit_handle(s.try_clone().ok()?)
    }

    /// Admits a connection given a second `handle` on its socket (kept to shut it down),
    /// returning its slot id. At the cap the oldest connection still reading its head is
    /// shut down to make room, or failing that the oldest one still writing its answer;
    /// evicted connections end at once (their blocked read or write returns) and release
    /// their slot. `None` (close the connection at once) only if `cap` evicted connections
    /// have not finished yet, which bounds the threads to `2 * cap`.
    fn admit_handle(&self, handle: TcpStream) -> Option<u64> {
        let mut guard = self.lock();
        let (next, slots) = &mut *guard;
        let active = slots.iter().filter(|x| !x.evicted).count();
        if active >= self.cap {
            if slots.len() >= 2 * self.cap {
                return None;
            }
            let victim = match slots.iter().position(|x| !x.evicted && x.in_head) {
                Some(i) => i,
                None => slots.iter().position(|x| !x.evicted)?,
            };
            let victim = &mut slots[victim];
            victim.evicted = true;
            let _ = victim.handle.shutdown(Shutdown::Both);
        }
        let id = *next;
        *next += 1;
        slots.push(Slot {
            id,
            handle,
            in_head: true,
            evicted: false,
        });
        Some(id)
    }

    /// The connection's head is in: it is now answered, and evicted only as a last resort.
    fn answering(&self, id: u64) {
        if let Some(x) = self.lock().1.iter_mut().find(|x| x.id == id) {
            x.in_head = false;
        }
    }

    fn release(&self, id: u64) {
        self.lock().1.retain(|x| x.id != id);
    }

    /// Connections served and not evicted.
    #[cfg(test)]
    fn active(&self) -> usize {
        self.lock().1.iter().filter(|x| !x.evicted).count()
    }
}

fn handle(
    mut s: TcpStream,
    accepted: Instant,
    shared: &Shared,
    conns: &Conns,
    id: u64,
    renders: &Renders,
) -> std::io::Result<()> {
    let head_deadline = accepted + HEAD_DEADLINE;
    let mut head_only = false;
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    let head = loop {
        // One deadline for the whole head: each read gets only what is left of it.
        let left = head_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                ErrorKind::TimedOut,
                "request head not complete within the head deadline",
            ));
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                // HEAD gets GET's head without the body (RFC 9110 §9.3.2).
                head_only = req.method == Some("HEAD");
                if req.method != Some("GET") && !head_only {
                    break Err((405, &b"{\"error\":\"method_not_allowed\"}\n"[..]));
                }
                break Ok(req.path.unwrap_or("/").to_string());
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => continue,
            _ => break Err((400, &b"{\"error\":\"bad_request\"}\n"[..])),
        }
    };
    conns.answering(id);
    let mut out = Out {
        s: &mut s,
        deadline: Instant::now() + WRITE_DEADLINE,
        head_only,
        large: false,
    };
    let target = match head {
        Ok(target) => target,
        Err((status, body)) => {
            respond(&mut out, status, "application/json", body)?;
            linger(&mut s);
            return Ok(());
        }
    };
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let answered = match path {
        "/healthz" => {
            let (status, body) = if shared.handed_over() {
                // The address serves, from the process that took it over (an upgrade); a
                // check that reached this one, on a connection opened before, says so.
                (200, json!({"status": "serving", "handed_over": true}))
            } else if shared.is_draining() {
                (503, json!({"status": "draining"}))
            } else if shared.is_stopping() {
                // `timeouts.drain_grace`: still serving, but tell balancers to stop sending.
                (503, json!({"status": "stopping"}))
            } else {
                (
                    200,
                    json!({"status": "serving", "generation": shared.current.load().generation}),
                )
            };
            respond(
                &mut out,
                status,
                "application/json",
                body.to_string().as_bytes(),
            )
        }
        "/metrics" | "/admin/backends" | "/admin/cluster" | "/admin/config" => {
            let a = renders.get(&answer_key(path, query), || render(path, query, shared));
            respond(&mut out, a.status, a.content_type, &a.body)
        }
        // The endpoints there are, named (an operator review's `/` and `/healthz/` got
        // only `not_found`).
        _ => respond(
            &mut out,
            404,
            "application/json",
            b"{\"endpoints\":[\"/healthz\",\"/metrics\",\"/admin/backends\",\"/admin/cluster\",\"/admin/config\"],\"error\":\"not_found\"}\n",
        ),
    };
    if out.large {
        // Its text and tree are free now; the maintenance thread gives them back.
        shared.heap_trim.store(true, Ordering::Relaxed);
    }
    answered
}

/// What names an answer among those shared (see `renders.rs`): the path, and for
/// `/admin/backends` the services asked for, sorted, each once. The other paths read no
/// query, and empty or repeated parameters change nothing, so a client cannot make a
/// large copy of its own by varying them (a hostile review held 15 copies of the 17 MB
/// answer with `?&`, `?&&`, ...). Other parameters stay in it (they make a small 400).
fn answer_key(path: &str, query: &str) -> String {
    if path != "/admin/backends" {
        return path.to_string();
    }
    let mut parts: Vec<String> = query_parameters(query)
        .map(|(k, v)| format!("{k}={}", v.unwrap_or_default()))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    format!("{path}?{}", parts.join("&"))
}

/// A query's parameters, `name=value` or a bare `name` (value `None`), each percent-decoded
/// (`?service=svc%2D1` names `svc-1`: a review found it answered 404); empty ones skipped.
fn query_parameters(query: &str) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    let decode = |s: &str| match crate::router::percent_decode(s.as_bytes()) {
        Some(d) => String::from_utf8_lossy(&d).into_owned(),
        None => s.to_string(),
    };
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(move |kv| match kv.split_once('=') {
            Some((k, v)) => (decode(k), Some(decode(v))),
            None => (decode(kv), None),
        })
}

/// The answer to one of the rendered paths (`/metrics` and the `/admin/` ones).
fn render(path: &str, query: &str, shared: &Shared) -> Answer {
    match path {
        "/metrics" => Answer::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render_metrics(shared).into_bytes(),
        ),
        "/admin/backends" => match wanted_services(query, shared) {
            Ok(only) => json_answer(backends(shared, only.as_deref())),
            Err((status, body)) => Answer::new(status, "application/json", body.into_bytes()),
        },
        "/admin/cluster" => json_answer(cluster(shared)),
        _ => json_answer(config(shared)),
    }
}

/// After an answer to a refused head, whose rest may still be coming: stops writing, then
/// reads and drops what comes for up to [`LINGER`], so that the close does not reset the
/// connection before the client has read the answer (a review got the 400 to a 9 000-byte
/// head, then a reset; the proxy port already closed so).
fn linger(s: &mut TcpStream) {
    let end = Instant::now() + LINGER;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// The client connection and when the answer must be written by.
struct Out<'a> {
    s: &'a mut TcpStream,
    deadline: Instant,
    /// A HEAD request: the same head as for GET (`content-length` included), no body.
    head_only: bool,
    /// The answer was over [`crate::renders::LARGE`].
    large: bool,
}

impl Out<'_> {
    /// `write_all` within the deadline: each write gets only what is left of it, so a
    /// client reading a byte at a time cannot stretch it.
    fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "answer not written within the write deadline",
                ));
            }
            self.s.set_write_timeout(Some(left))?;
            match self.s.write(bytes) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `v` as a 200 answer, serialized, and dropped before the write: the tree of a large
/// answer is several times its text (a scale review: about 145 MB for the 18 MB
/// `/admin/backends` of 5 000 services, held for as long as a slow reader took).
fn json_answer(v: Value) -> Answer {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    drop(v);
    body.push(b'\n');
    // The buffer grew by doubling: up to twice the answer, held while it is read.
    body.shrink_to_fit();
    Answer::new(200, "application/json", body)
}

fn respond(s: &mut Out<'_>, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    // 405 says what is allowed (RFC 9110 §15.5.6).
    let allow = match status {
        405 => "allow: GET, HEAD\r\n",
        _ => "",
    };
    // `Date`, as on every answer the gateway makes (RFC 9110 §6.6.1; an operator review
    // found the admin API's without one).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let date = crate::date::imf_fixdate(now);
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ndate: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{allow}connection: close\r\n\r\n",
        String::from_utf8_lossy(&date),
        body.len()
    );
    let large = body.len() > crate::renders::LARGE;
    s.large |= large;
    if s.head_only || large {
        // Not copied behind the head: a second 12 MB for a large `/metrics`.
        s.write_all(head.as_bytes())?;
        return match s.head_only {
            true => Ok(()),
            false => s.write_all(body),
        };
    }
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out)
}

fn render_metrics(shared: &Shared) -> String {
    let mut text = render_core_metrics(shared);
    if let Some(c) = shared.cluster.get() {
        let up = u8::from(c.up.load(Ordering::Relaxed));
        text.push_str(&format!(
            "# HELP gateway_cluster_up 1 while the cluster thread reaches Redis, 0 while every circuit is decided locally.\n# TYPE gateway_cluster_up gauge\ngateway_cluster_up {up}\n"
        ));
    }
    text
}

fn render_core_metrics(shared: &Shared) -> String {
    let snap = shared.current.load_full();
    let services: Vec<(usize, String)> = snap
        .services
        .iter()
        .map(|s| (s.id, s.name.clone()))
        .collect();
    let backends: Vec<(usize, String, String, u64)> = snap
        .services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(move |b| {
                // The gauge's values: 0 closed, 1 open (a probe backoff is open too), 2 half-open.
                let state = match Word::decode(breaker::Word::load(&**b.breaker)).state {
                    breaker::BACKOFF => breaker::OPEN,
                    other => other,
                };
                (b.slot, s.name.clone(), b.url.url.clone(), state)
            })
        })
        .collect();
    let healthy: Vec<(String, String, u64)> = snap
        .services
        .iter()
        .filter(|s| s.health_check.is_some())
        .flat_map(|s| {
            s.backends.iter().map(move |b| {
                let up = u64::from(!crate::health::is_down(b));
                (s.name.clone(), b.url.url.clone(), up)
            })
        })
        .collect();
    let in_flight: Vec<(String, u64)> = snap
        .services
        .iter()
        .filter(|s| s.admission.max_in_flight.is_some())
        .map(|s| {
            let n = s.admission.in_flight.load(Ordering::Relaxed);
            (s.name.clone(), n)
        })
        .collect();
    let workers = shared
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tables: Vec<&WorkerMetrics> = workers.iter().map(|w| &***w).collect();
    metrics::render(
        &tables,
        &metrics::Names {
            services: &services,
            backends: &backends,
            healthy: &healthy,
            generation: snap.generation,
            reloads_ok: shared.reloads.ok.load(Ordering::Relaxed),
            reloads_failed: shared.reloads.failed.load(Ordering::Relaxed),
            last_reload_ok: shared
                .reloads
                .last_error
                .lock()
                .map(|e| e.is_empty())
                .unwrap_or(true),
            restart_pending: shared.reloads.restart_pending.lock().map_or(0, |p| p.len()),
            upgrades_failed: shared.upgrades.failed.load(Ordering::Relaxed),
            draining: shared.is_stopping(),
            in_flight: &in_flight,
            access_log_dropped: shared.access_log.dropped.load(Ordering::Relaxed),
            access_log_errors: shared.access_log.errors.load(Ordering::Relaxed),
            ids_exhausted: shared.metric_ids_exhausted(),
            ids_missing: shared.metric_ids_missing(),
            max_fds: crate::fdlimit::current(),
            open_fds: crate::fdlimit::open(),
            process: crate::procstat::read(),
        },
    )
}

/// Wall-clock time of a breaker-clock instant, as RFC 3339.
fn wall(ms: u64, now: u64) -> String {
    let ago = Duration::from_millis(now.saturating_sub(ms));
    crate::logging::timestamp(SystemTime::now() - ago)
}

/// The services `/admin/backends?service=a&service=b` asks for (all without a `service`
/// parameter: a scale review's 5 000 services made the whole answer 18 MB, with no way to
/// ask for less). A name that is not configured is a 404 naming it, not an empty list that
/// a typo would leave unexplained; any other parameter is a 400 naming it (until
/// 2026-12-04 ignored, so `?SERVICE=a` or `?service[]=a` got the whole 18 MB: a scale
/// re-review).
fn wanted_services(query: &str, shared: &Shared) -> Result<Option<Vec<String>>, (u16, String)> {
    let mut names = Vec::new();
    for (parameter, value) in query_parameters(query) {
        match parameter.as_str() {
            "service" => names.push(value.unwrap_or_default()),
            _ => {
                let body = json!({"error": "unknown_parameter", "parameter": parameter, "accepted": ["service"]});
                return Err((400, format!("{body}\n")));
            }
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    let snap = shared.current.load();
    match names
        .iter()
        .find(|n| snap.service_index(n.as_bytes()).is_none())
    {
        Some(unknown) => Err((
            404,
            format!(
                "{}\n",
                json!({"error": "service_not_found", "service": unknown})
            ),
        )),
        None => Ok(Some(names)),
    }
}

fn backends(shared: &Shared, only: Option<&[String]>) -> Value {
    let snap = shared.current.load_full();
    let workers = shared
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    // A backend over the metrics limit is not counted: null, never a false 0.
    let total = |slot: usize, f: fn(&WorkerMetrics) -> &Box<[metrics::Counter]>| {
        (slot < metrics::MAX_SLOTS).then(|| workers.iter().map(|w| f(w)[slot].get()).sum::<u64>())
    };
    let now = now_ms();
    let services: Vec<Value> = snap
        .services
        .iter()
        .filter(|s| only.is_none_or(|names| names.contains(&s.name)))
        .map(|s| {
            let backends: Vec<Value> = s
                .backends
                .iter()
                .map(|b| {
                    let word = breaker::Word::load(&**b.breaker);
                    let w = Word::decode(word);
                    // A circuit that never changed state has no transition time.
                    let changed = w.state != CLOSED || w.epoch != 0;
                    let source = shared
                        .cluster
                        .get()
                        .map_or(crate::cluster::Source::Local, |c| c.source(&s.name, &b.url.url));
                    json!({
                        "url": b.url.url,
                        "weight": b.url.weight,
                        "state": w.state_name(),
                        "source": source.name(),
                        "consecutive_failures": if w.state == CLOSED { w.count } else { 0 },
                        "last_transition": changed.then(|| wall(w.time_ms, now)),
                        "next_probe_in_ms": (w.state != CLOSED).then(|| retry_after_ms(word, now, &s.policy)),
                        "successes": total(b.slot, |m| &m.backend_success),
                        "failures": total(b.slot, |m| &m.backend_failure),
                        "transitions": total(b.slot, |m| &m.transitions),
                        // `null` without health checks.
                        "health": s.health_check.as_ref().map(|_| {
                            let h = crate::health::State::load(&b.health);
                            let last = crate::health::Last::load(&b.health);
                            json!({
                                "state": if h.down { "down" } else { "up" },
                                "failures_in_a_row": h.fails,
                                "passes_in_a_row": h.passes,
                                // The last probe: when it ended, its status, or why none.
                                // Kept to the second: said so, not as `.069`.
                                "last_check": last.at_unix_s.map(|s| crate::logging::timestamp(
                                    SystemTime::UNIX_EPOCH + Duration::from_secs(s),
                                )),
                                "last_status": last.status,
                                "last_error": last.fault.map(crate::health::Fault::name),
                            })
                        }),
                    })
                })
                .collect();
            json!({
                "name": s.name,
                "failure_threshold": s.settings.failure_threshold,
                "cooldown_ms": s.policy.cooldown_ms,
                "health_check": s.health_check.as_ref().map(|c| json!({
                    "type": if c.path.is_some() { "http" } else { "tcp" },
                    "path": c.path,
                    "interval_ms": c.interval.as_millis() as u64,
                    "timeout_ms": c.timeout.as_millis() as u64,
                    "fall": c.fall,
                    "rise": c.rise,
                })),
                "backends": backends,
            })
        })
        .collect();
    json!({"generation": snap.generation, "services": services})
}

/// `/admin/cluster`: this instance in the fleet (`{"enabled": false}` without `cluster:`).
fn cluster(shared: &Shared) -> Value {
    let Some(c) = shared.cluster.get() else {
        return json!({"enabled": false});
    };
    let last = c.last_sync_unix_ms.load(Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // Fleet rate budgets: what this instance holds of each, and the slice it tops up to.
    let snap = shared.current.load();
    let budgets: Vec<Value> = snap
        .services
        .iter()
        .filter_map(|s| {
            let f = s.admission.limiter.as_ref()?.fleet.as_ref()?;
            Some(json!({
                "service": s.name,
                "online": f.online.load(Ordering::Relaxed),
                "held": f.allowance.load(Ordering::Relaxed),
                "slice": f.slice(),
                "instances": f.instances.load(Ordering::Relaxed),
            }))
        })
        .collect();
    json!({
        "enabled": true,
        "budgets": budgets,
        "instance": c.instance,
        "name": c.config.name,
        "open_quorum": c.config.open_quorum,
        "redis": {
            "url": c.redis_display(),
            "state": if c.up.load(Ordering::Relaxed) { "up" } else { "down" },
        },
        "peers": *c.peers.lock().unwrap_or_else(|e| e.into_inner()),
        "last_sync": (last > 0).then(|| crate::logging::timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(last))),
        "last_sync_ms_ago": (last > 0).then(|| now.saturating_sub(last)),
    })
}

fn config(shared: &Shared) -> Value {
    let snap = shared.current.load_full();
    let c = &snap.config;
    let d = crate::config::duration_text;
    let services: Vec<Value> = c
        .services
        .iter()
        .map(|s| {
            // Written as the config takes them: runs as ranges (`"502-599"`), lone codes
            // as numbers. The default was 99 numbers, one a line (two reviews).
            let failure_statuses: Vec<Value> = s
                .breaker
                .failure_runs()
                .into_iter()
                .map(|(low, high)| match low == high {
                    true => Value::from(low),
                    false => Value::from(format!("{low}-{high}")),
                })
                .collect();
            json!({
                "name": s.name,
                "backends": s.backends.iter().map(|b| b.url.clone()).collect::<Vec<_>>(),
                // One per backend, in the same order (kept apart so that `backends` stays
                // the list of URLs it always was).
                "weights": s.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
                // As the config takes it: `off`, or the map.
                "health_check": s.health_check.as_ref().map_or(Value::String("off".into()), |c| json!({
                    "type": if c.path.is_some() { "http" } else { "tcp" },
                    "path": c.path,
                    "interval": d(c.interval),
                    "timeout": d(c.timeout),
                    "fall": c.fall,
                    "rise": c.rise,
                })),
                "breaker": {
                    "failure_threshold": s.breaker.failure_threshold,
                    "cooldown": d(s.breaker.cooldown),
                    "failure_statuses": failure_statuses,
                },
                "rate_limit": s.rate_limit.as_ref().map_or(Value::String("off".into()), |l| json!({
                    "rate": format!("{}/{}", l.count, match l.per_secs { 1 => "s", 60 => "m", _ => "h" }),
                    "burst": l.burst,
                    "key": match &l.key {
                        crate::admission::LimitKey::Service => "service".to_string(),
                        crate::admission::LimitKey::ClientIp => "client_ip".to_string(),
                        crate::admission::LimitKey::Header(h) => format!("header:{h}"),
                    },
                })),
                // As the config writes it, and as `rate_limit` says it (it was `null`:
                // an operator review).
                "max_in_flight": s.max_in_flight.map_or(Value::String("off".into()), Value::from),
                "websocket": s.websocket,
                "encoded_slashes": s.encoded_slashes,
                // Effective: the top-level ones with the service's own over them.
                "timeouts": {
                    "connect": d(s.timeouts.connect),
                    "response": d(s.timeouts.response),
                    "body": d(s.timeouts.body),
                    "tunnel": d(s.timeouts.tunnel),
                },
            })
        })
        .collect();
    let copy = |m: &std::sync::Mutex<String>| m.lock().map(|e| e.clone()).unwrap_or_default();
    let or_null = |s: String| {
        if s.is_empty() {
            Value::Null
        } else {
            Value::String(s)
        }
    };
    let restart_pending = shared
        .reloads
        .restart_pending
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    json!({
        "generation": snap.generation,
        "last_reload_error": or_null(copy(&shared.reloads.last_error)),
        // What the file changed that the running values below do not show yet (an operator
        // review took a reload that changed `listen` for one that applied it).
        "restart_pending": restart_pending,
        "last_upgrade_error": or_null(copy(&shared.upgrades.last_error)),
        "listen": c.listen.to_string(),
        "workers": c.workers,
        "pin_workers": c.pin_workers,
        "splice": c.splice,
        "request_id": c.request_id,
        "ignore_client_abort": c.ignore_client_abort,
        "busy_poll": c.busy_poll.map_or("off".to_string(), |b| format!("{}us", b.as_micros())),
        "dns_refresh": c.dns_refresh.map_or("off".to_string(), d),
        "cluster": c.cluster.as_ref().map(|k| json!({
            "redis": crate::cluster::redact(&k.redis),
            "name": k.name,
            "open_quorum": k.open_quorum,
        })),
        "admin": c.admin.map(|a| a.to_string()),
        "access_log": c.access_log.to_string(),
        "access_log_format": match c.access_log_format {
            crate::accesslog::Format::Text => "text",
            crate::accesslog::Format::Json => "json",
        },
        "access_log_fields": c.access_log_fields.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "rate_limit_headers": c.admission.headers,
        "rate_limit_table": c.admission.table_cells,
        "trusted_proxies": c.admission.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "timeouts": {
            "connect": d(c.timeouts.connect),
            "response": d(c.timeouts.response),
            "client_header": d(c.timeouts.client_header),
            "client_idle": d(c.timeouts.client_idle),
            "body": d(c.timeouts.body),
            "drain": d(c.timeouts.drain),
            "drain_grace": d(c.timeouts.drain_grace),
            "tunnel": d(c.timeouts.tunnel),
        },
        "limits": {
            "max_head_bytes": c.limits.max_head_bytes,
            "max_headers": c.limits.max_headers,
            "max_target_bytes": c.limits.max_target_bytes,
            "max_body_bytes": c.limits.max_body_bytes,
            "buffer_request_body": c.limits.buffer_request_body,
            "min_body_rate": c.limits.min_body_rate,
            "max_connections": c.limits.max_connections.map_or(Value::String("auto".into()), Value::from),
            // `off` as `rate_limit` and `max_in_flight` say it (it was `null`: an operator
            // review).
            "max_connections_per_client": c.limits.max_connections_per_client.map_or(Value::String("off".into()), Value::from),
            // What the workers apply: the setting, or what the descriptor limit allows.
            "max_connections_in_effect": shared.max_connections(c),
            "descriptor_limit": shared.fd_limit,
        },
        "pool": {
            "max_idle_per_backend": c.pool.max_idle_per_backend,
            "idle_timeout": d(c.pool.idle_timeout),
            "max_requests_per_connection": c.pool.max_requests_per_connection.map_or(Value::String("off".into()), Value::from),
        },
        "services": services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_alike_share_a_key_whatever_the_query_spelling() {
        assert_eq!(answer_key("/metrics", "a=1"), "/metrics");
        assert_eq!(answer_key("/admin/config", "x"), "/admin/config");
        let backends = |q| answer_key("/admin/backends", q);
        for q in ["", "&", "&&&"] {
            assert_eq!(backends(q), "/admin/backends?", "{q:?}");
        }
        assert_eq!(
            backends("service=b&service=a"),
            backends("service=a&&service=b&service=a")
        );
        assert_ne!(backends("service=a"), backends("service=b"));
        assert_ne!(backends("service=a"), backends(""));
    }

    /// A connected pair over 127.0.0.1: (the client's end, the server's end).
    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    /// True when the client's end sees the server's end shut down (EOF or reset).
    fn shut(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match c.read(&mut [0u8; 16]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
        }
    }

    /// True when nothing arrives and the connection stays open for a short while.
    fn open(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        matches!(c.read(&mut [0u8; 16]), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }

    #[test]
    fn at_the_cap_the_oldest_head_reader_is_evicted_first() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let conns = Conns::new(3);
        let mut held: Vec<(TcpStream, TcpStream, u64)> = (0..3)
            .map(|_| {
                let (c, s) = pair(&l);
                let id = conns.admit(&s).expect("under the cap");
                (c, s, id)
            })
            .collect();
        // The oldest is answering: the next oldest, still reading its head, goes first.
        conns.answering(held[0].2);
        let (mut c3, s3) = pair(&l);
        let id3 = conns.admit(&s3).expect("admitted by eviction");
        assert!(
            shut(&mut held[1].0),
            "the oldest head reader was not shut down"
        );
        assert!(
            open(&mut held[0].0),
            "an answering connection was evicted first"
        );
        assert!(open(&mut held[2].0));
        assert_eq!(conns.active(), 3);
        // Its thread ends and releases the slot.
        conns.release(held[1].2);
        // Next: the remaining head readers by age (held[2], then the new one)...
        conns.answering(id3);
        let (mut c4, s4) = pair(&l);
        let id4 = conns.admit(&s4).unwrap();
        assert!(shut(&mut held[2].0));
        assert!(open(&mut c3));
        // ...and when every other one is answering, the oldest answering one.
        conns.release(held[2].2);
        conns.answering(id4);
        let (_c5, s5) = pair(&l);
        conns.admit(&s5).unwrap();
        assert!(
            shut(&mut held[0].0),
            "the oldest answering one was not evicted"
        );
        assert!(open(&mut c3));
        assert!(open(&mut c4));
        assert_eq!(conns.active(), 3);
    }

    #[test]
    fn evicted_connections_still_finishing_bound_the_admissions() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let conns = Conns::new(2);
        let mut keep = Vec::new();
        // 2 served + 2 evicted whose threads have not released yet.
        for _ in 0..4 {
            let (c, s) = pair(&l);
            assert!(conns.admit(&s).is_some());
            keep.push((c, s));
        }
        let (_c, s) = pair(&l);
        assert_eq!(conns.admit(&s), None, "more than 2 * cap slots");
        // One evicted connection finishes: room again.
        conns.release(0);
        assert!(conns.admit(&s).is_some());
        assert_eq!(conns.active(), 2);
    }

    #[test]
    fn a_released_slot_is_reused_without_eviction() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let conns = Conns::new(2);
        let (mut c0, s0) = pair(&l);
        let (mut c1, s1) = pair(&l);
        let id0 = conns.admit(&s0).unwrap();
        conns.admit(&s1).unwrap();
        conns.release(id0);
        drop(s0);
        let (_c2, s2) = pair(&l);
        conns.admit(&s2).unwrap();
        assert!(open(&mut c1), "a connection was evicted below the cap");
        assert!(shut(&mut c0));
        assert_eq!(conns.active(), 2);
    }

    #[test]
    fn a_backend_over_the_metrics_limit_shows_null_counts_never_zero() {
        let urls: Vec<String> = (0..=metrics::MAX_SLOTS)
            .map(|i| format!("http://127.0.0.{}:{}", 1 + i / 60000, 1 + i % 60000))
            .collect();
        let text = format!("services:\n  a: [{}]\n", urls.join(", "));
        let shared = Shared::new(crate::Config::parse(&text).unwrap());
        let v = backends(&shared, None);
        let list = v["services"][0]["backends"].as_array().unwrap();
        assert_eq!(list.len(), metrics::MAX_SLOTS + 1);
        assert_eq!(list[0]["successes"], 0);
        let over = &list[metrics::MAX_SLOTS];
        for field in ["successes", "failures", "transitions"] {
            assert!(over[field].is_null(), "{over}");
        }
        assert_eq!(shared.metric_ids_exhausted().backends, 1);
    }
}
