//! Upstream hazards over real sockets: stray bytes, early answers, probe leases, write timeouts.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

// ---- Raw backends and small helpers ----

/// A raw TCP backend: each accepted connection runs `handler(stream, index)` on its own
/// thread (socket reads and writes time out after 15 s). Dropping it ends the accept loop.
struct RawBackend {
    addr: SocketAddr,
    /// Connections accepted so far (counted before the handler runs).
    conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RawBackend {
    fn start(handler: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> RawBackend {
        RawBackend::on(TcpListener::bind("127.0.0.1:0").expect("bind"), handler)
    }

    fn on(
        listener: TcpListener,
        handler: impl Fn(TcpStream, usize) + Send + Sync + 'static,
    ) -> RawBackend {
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let (count, halt) = (conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(15)));
                let _ = s.set_nodelay(true);
                let i = count.fetch_add(1, Ordering::SeqCst);
                let h = handler.clone();
                std::thread::spawn(move || h(s, i));
            }
        });
        RawBackend { addr, conns, stop }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request head; the bytes after it stay in `pending`. `None` on EOF or error.
fn read_head(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<String> {
    let mut tmp = [0u8; 65536];
    loop {
        if let Some(p) = find(pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..p + 4]).into_owned();
            pending.drain(..p + 4);
            return Some(head);
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&tmp[..n]),
        }
    }
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads and discards a Content-Length body. False if the connection ended first.
fn skip_body(s: &mut TcpStream, pending: &mut Vec<u8>, head: &str) -> bool {
    let mut left: usize = header_value(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let take = left.min(pending.len());
    pending.drain(..take);
    left -= take;
    let mut tmp = [0u8; 65536];
    while left > 0 {
        match s.read(&mut tmp[..left.min(65536)]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => left -= n,
        }
    }
    true
}

/// Reads a Content-Length body whole and takes it out of `pending`; None if the connection
/// ended first.
fn read_body(s: &mut TcpStream, pending: &mut Vec<u8>, head: &str) -> Option<Vec<u8>> {
    let len: usize = header_value(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut tmp = [0u8; 4096];
    while pending.len() < len {
        match s.read(&mut tmp) {
            Ok(n) if n > 0 => pending.extend_from_slice(&tmp[..n]),
            _ => return None,
        }
    }
    Some(pending.drain(..len).collect())
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn error_code(r: &Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What keeps the backend at `addr` (service `svc`) from looking healthy after `what`: its
/// circuit must be closed and a GET must get its `200 ok`.
fn still_healthy(g: &AdminGateway, addr: SocketAddr, what: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    let state = circuit(g.admin, addr);
    if state != "closed" {
        wrong.push(format!("circuit {state} after {what}"));
    }
    match exchange(
        g.proc.addr,
        "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: gw\r\n\r\n",
    ) {
        Ok(r) if r.status == 200 && text(&r) == "ok" => {}
        other => wrong.push(format!("GET after {what}: {other:?}")),
    }
    wrong
}

/// One request on a fresh connection; `Err` describes a connection that ended first.
fn exchange(addr: SocketAddr, raw: &str) -> Result<Response, String> {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.try_read_response(raw.starts_with("HEAD ")).map_err(|b| {
        format!(
            "connection ended after {:?}",
            String::from_utf8_lossy(&b[..b.len().min(200)])
        )
    })
}

/// Reads one response with a Content-Length (or no) body, without panicking.
fn read_reply(s: &mut TcpStream) -> Result<Response, String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    let v = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_string(), v)
                })
                .collect();
            let status = r.code.unwrap_or(0);
            let cl = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= n + cl {
                let body = buf[n..n + cl].to_vec();
                return Ok(Response {
                    status,
                    headers,
                    body,
                });
            }
        }
        let seen = String::from_utf8_lossy(&buf[..buf.len().min(300)]).into_owned();
        match s.read(&mut tmp) {
            Ok(0) => return Err(format!("connection closed after {seen:?}")),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no complete response within 10 s (got {seen:?})"))
            }
            Err(e) => return Err(format!("{e} after {seen:?}")),
        }
    }
}

// ---- 1. Stray bytes on a pooled connection ----

const FIRST: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
const FRESH: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh";
const EVIL: &str = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!";
/// Pause between a connection's first response and its stray bytes, cycled per connection.
const DELAYS_US: [u64; 5] = [0, 100, 300, 700, 1000];

/// A backend that answers the first request of each connection and then, unasked and in
/// a separate write, sends more bytes.
struct Stray {
    name: &'static str,
    /// Client 1's method.
    method: &'static str,
    /// The answer to a first HEAD / a first GET on a connection.
    first_head: &'static str,
    first_get: &'static str,
    stray: &'static str,
    /// What client 1 / a GET on a fresh backend connection must get.
    client1_ok: (u16, &'static str),
    get_ok: (u16, &'static str),
}

/// Runs `trials` rounds of: client 1 (new connection) -> wait until every backend
/// connection wrote its stray bytes -> client 2 (new connection) at once. Returns the
/// wrong answers.
fn stray_trials(v: &'static Stray, trials: usize) -> Vec<String> {
    let (tx, rx) = mpsc::channel::<()>();
    let backend = RawBackend::start(move |mut s, i| {
        let mut pending = Vec::new();
        let mut answered = false;
        while let Some(head) = read_head(&mut s, &mut pending) {
            if answered {
                if s.write_all(FRESH.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            answered = true;
            let first = if head.starts_with("HEAD ") {
                v.first_head
            } else {
                v.first_get
            };
            let _ = s.write_all(first.as_bytes());
            let delay = DELAYS_US[i % DELAYS_US.len()];
            if delay > 0 {
                std::thread::sleep(Duration::from_micros(delay));
            }
            let _ = s.write_all(v.stray.as_bytes());
            let _ = tx.send(());
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1000}",
        &format!("  svc: [http://{}]\n", backend.addr),
    )));
    let mut signalled = 0;
    let mut settle = || {
        while signalled < backend.conns.load(Ordering::SeqCst) {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("a backend connection never finished its first exchange");
            signalled += 1;
        }
    };
    let fresh = (200, "fresh");
    let mut wrong = Vec::new();
    let mut check = |who: String, r: Result<Response, String>, ok: (u16, &str)| match r {
        Ok(r) if [ok, fresh].contains(&(r.status, text(&r).as_str())) => {}
        Ok(r) => wrong.push(format!("{who}: {} {:?}", r.status, text(&r))),
        Err(e) => wrong.push(format!("{who}: {e}")),
    };
    for trial in 0..trials {
        settle();
        let c1 = format!("{} /v1/proxy/svc/c1 HTTP/1.1\r\nHost: gw\r\n\r\n", v.method);
        let r1 = exchange(g.proc.addr, &c1);
        check(format!("{} #{trial} client 1", v.name), r1, v.client1_ok);
        settle(); // every stray byte is now written; go at once
        let r2 = exchange(
            g.proc.addr,
            "GET /v1/proxy/svc/c2 HTTP/1.1\r\nHost: gw\r\n\r\n",
        );
        check(format!("{} #{trial} client 2", v.name), r2, v.get_ok);
    }
    wrong
}

static STRAYS: [Stray; 4] = [
    Stray {
        name: "stray response after a complete one",
        method: "GET",
        first_head: FIRST,
        first_get: FIRST,
        stray: EVIL,
        client1_ok: (200, "first"),
        get_ok: (200, "first"),
    },
    Stray {
        name: "HEAD answered, then its 5 body bytes",
        method: "HEAD",
        first_head: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        first_get: FIRST,
        stray: "EVIL!",
        client1_ok: (200, ""),
        get_ok: (200, "first"),
    },
    Stray {
        name: "204, then a stray response",
        method: "GET",
        first_head: "HTTP/1.1 204 No Content\r\n\r\n",
        first_get: "HTTP/1.1 204 No Content\r\n\r\n",
        stray: EVIL,
        client1_ok: (204, ""),
        get_ok: (204, ""),
    },
    Stray {
        name: "Content-Length shorter than the body, rest in a second write",
        method: "GET",
        first_head: FIRST,
        first_get: FIRST,
        stray: " and the rest of a longer body",
        client1_ok: (200, "first"),
        get_ok: (200, "first"),
    },
];

#[test]
fn stray_bytes_after_a_complete_response_never_reach_the_next_client() {
    let (mut summary, mut examples, mut total) = (Vec::new(), Vec::new(), 0);
    for (i, v) in STRAYS.iter().enumerate() {
        let trials = if i == 0 { 1000 } else { 300 };
        let wrong = stray_trials(v, trials);
        let evil = wrong.iter().filter(|w| w.contains("EVIL")).count();
        summary.push(format!(
            "{}: {} wrong of {trials} trials ({evil} were the stray EVIL! response)",
            v.name,
            wrong.len()
        ));
        total += wrong.len();
        examples.extend(wrong.into_iter().take(3));
    }
    assert_eq!(total, 0, "{summary:#?}\nexamples: {examples:#?}");
}

/// A hostile review: a backend that writes a stale response late, once the connection
/// already carries the next request, had that request's client get the stale answer, and
/// every later client on the connection the answer before its own (20 of 20 rounds, and
/// genuine answers of other clients among them). No check can tell a late response from
/// the answer (HTTP/1.1 has no request ids), so the first one goes wrong; from the moment
/// the gateway sees the backend's stray bytes, none of its connections is reused, so no
/// later client gets another's answer. The gateway counts it and names the backend.
#[test]
fn after_a_late_stray_response_no_other_client_gets_anothers_answer() {
    late_stray_rounds(1, &["svc"]);
    // Two workers: the mark is the backend's, so the other worker, whose clients and
    // pooled connections are its own, does not get a first wrong answer of its own.
    late_stray_rounds(2, &["svc"]);
}

/// A hostile review: the mark was kept per (service, URL), so a backend listed by two
/// services, marked through one, went on handing late answers to the other's clients (6
/// wrong of 240). The mark is the address's: every service that connects there stops
/// reusing its connections.
#[test]
fn a_backend_marked_through_one_service_is_not_reused_through_another() {
    late_stray_rounds(1, &["svc", "other"]);
    late_stray_rounds(2, &["svc", "other"]);
}

/// 30 rounds of, for each of `services` (all listing the same backend), a request to
/// `/late…` and two more, each on a new client connection, with `workers` workers;
/// asserts the first client after the first late answer is the only one answered wrong.
fn late_stray_rounds(workers: usize, services: &[&str]) {
    let backend = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        let mut stale = false;
        while let Some(head) = read_head(&mut s, &mut pending) {
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let mut out = Vec::new();
            if stale {
                // The late one lands after the next request went up, its answer behind it.
                out.extend(response("200 OK", "STALE"));
            }
            out.extend(response("200 OK", &path));
            stale = path.starts_with("/late");
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    let listed: String = services
        .iter()
        .map(|s| format!("  {s}: [http://{}]\n", backend.addr))
        .collect();
    let path = write_config(&config(
        workers,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1000}",
        &listed,
    ));
    let log = std::env::temp_dir().join(format!(
        "gateway-upstream-{}-late-{workers}-{}.log",
        std::process::id(),
        services.len()
    ));
    let g = gateway_at_logging_to(&path, &log);
    let mut wrong = Vec::new();
    for round in 0..30 {
        for (svc, who) in services
            .iter()
            .flat_map(|s| ["late", "b", "c"].map(|who| (s, who)))
        {
            wrong.extend(mismatch(g.proc.addr, svc, &format!("/{who}{round}")));
        }
    }
    // The first client after the first late answer to meet it, and no one else.
    assert!(
        wrong.len() == 1 && wrong[0].ends_with(": 200 \"STALE\""),
        "{workers} workers, services {services:?}: {wrong:#?}"
    );
    let m = metrics(g.admin);
    assert!(
        sample(&m, "gateway_backend_stray_responses_total").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    let mut text_ = String::new();
    let named = eventually(Duration::from_secs(5), || {
        text_ = std::fs::read_to_string(&log).unwrap_or_default();
        text_.lines().any(|l| {
            l.contains(" WARN ")
                && services
                    .iter()
                    .any(|s| l.contains(&format!("backend: {s} http://{}", backend.addr)))
                && l.contains("none of its connections is reused")
        })
    });
    let _ = std::fs::remove_file(&log);
    assert!(named, "{text_}");
}

/// An upstream review (2026-12-04): a backend that wrote one late answer, 150 ms after it
/// answered `/late`, while the connection was busy with the next request, stayed one
/// behind on it for as long as requests kept it busy (723 wrong of 1 495, client after
/// client getting the one before's answer): nothing ever arrived while it was idle. With
/// `request_id: true` and a backend that echoes `X-Request-Id`, the first answer naming
/// another request ends the run: one client gets the late answer, as for any stray, and
/// no one after it anyone else's.
#[test]
fn an_answer_naming_another_request_ends_a_run_of_answers_one_behind() {
    let backend = one_behind_from_late();
    let (g, wrong) = forty_with_ids(&backend);
    assert_eq!(wrong, ["/c4: 200 \"/late3\""], "{wrong:#?}");
    // Its connection closed, the next one is reused: an answer naming another request
    // does not stop the backend's reuse, which a client could set off through an
    // endpoint that reflects what it sends (a re-review; it did for 60 s until later on
    // 2026-12-04).
    assert_eq!(backend.conns.load(Ordering::SeqCst), 2);
    let m = metrics(g.admin);
    assert!(
        sample(&m, "gateway_backend_stray_responses_total").is_some_and(|n| n >= 1.0),
        "{m}"
    );
    // No verdict: the backend answered, out of turn.
    let b = get(g.admin, "/admin/backends").json();
    assert_eq!(b["services"][0]["backends"][0]["failures"], 0, "{b}");
}

/// The other side of the check: a cache in front of the backend that stored one answer's
/// `X-Request-Id` hands it out with every hit, and those answers are right: relayed as
/// they are (at the cost of a new connection after each).
#[test]
fn a_cache_that_stores_x_request_id_is_relayed_as_it_answers() {
    let backend = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        let mut stored: Option<String> = None;
        while let Some(head) = read_head(&mut s, &mut pending) {
            let (path, id) = path_and_id(&head);
            // The first answer of each connection is stored, id and all; the rest hit.
            let id = stored.get_or_insert(id).clone();
            if s.write_all(&echoing(&path, &id)).is_err() {
                return;
            }
        }
    });
    // Sockets towards the port left from whatever listened there before (CI saw 180).
    let before = time_wait_to(backend.addr.port());
    let (g, wrong) = forty_with_ids(&backend);
    assert!(wrong.is_empty(), "{wrong:#?}");
    // Each connection whose answer named another request was reset, not ended: none waits
    // in TIME-WAIT (a review: a busy cache would run out of local ports, one a hit).
    assert!(backend.conns.load(Ordering::SeqCst) >= 10);
    let after = time_wait_to(backend.addr.port());
    assert_eq!(after.difference(&before).count(), 0, "{after:?}");
    let b = get(g.admin, "/admin/backends").json();
    assert_eq!(b["services"][0]["backends"][0]["failures"], 0, "{b}");
}

/// Sockets in TIME-WAIT towards local port `port` (IPv4), from `/proc/net/tcp`, each as
/// its pair of addresses.
fn time_wait_to(port: u16) -> std::collections::HashSet<String> {
    sockets_to(port, &["06"])
}

/// Sockets towards local port `port` (IPv4) in one of `states` (`/proc/net/tcp`'s codes:
/// 01 established, 06 TIME-WAIT, 08 CLOSE-WAIT), each as its pair of addresses.
fn sockets_to(port: u16, states: &[&str]) -> std::collections::HashSet<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[2].ends_with(&remote) && states.contains(&f[3]))
                .then(|| format!("{} {}", f[1], f[2]))
        })
        .collect()
}

/// A request head's path and `x-request-id`.
fn path_and_id(head: &str) -> (String, String) {
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or("-")
        .to_string();
    (path, id)
}

/// A 200 whose body is `path`, with `id` as its `x-request-id`.
fn echoing(path: &str, id: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nx-request-id: {id}\r\ncontent-length: {}\r\n\r\n{path}",
        path.len()
    )
    .into_bytes()
}

/// A gateway with `request_id: true` in front of `backend`, and 40 requests through it,
/// each on a connection of its own (the fourth to `/late3`, the others to `/cN`): the
/// answers that were not the request's own.
fn forty_with_ids(backend: &RawBackend) -> (AdminGateway, Vec<String>) {
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\nrequest_id: true\nbreaker: {failure_threshold: 1000}",
        &format!("  svc: [http://{}]\n", backend.addr),
    ));
    let g = gateway_at(&path);
    let wrong = forty(g.proc.addr);
    (g, wrong)
}

/// Forty requests through service `svc` of the gateway at `gw`, each on a connection of
/// its own (the fourth to `/late3`, the others to `/cN`): the answers that were not the
/// request's own.
fn forty(gw: SocketAddr) -> Vec<String> {
    (0..40)
        .filter_map(|n| match n {
            3 => mismatch(gw, "svc", &format!("/late{n}")),
            _ => mismatch(gw, "svc", &format!("/c{n}")),
        })
        .collect()
}

/// What a GET of `want` through service `svc` of the gateway at `gw` got, unless it was
/// a 200 whose body is `want`.
fn mismatch(gw: SocketAddr, svc: &str, want: &str) -> Option<String> {
    let raw = format!("GET /v1/proxy/{svc}{want} HTTP/1.1\r\nHost: gw\r\n\r\n");
    match exchange(gw, &raw) {
        Ok(r) if r.status == 200 && text(&r) == want => None,
        Ok(r) => Some(format!("{want}: {} {:?}", r.status, text(&r))),
        Err(e) => Some(format!("{want}: {e}")),
    }
}

/// Whether a request head asks to close the connection.
fn asks_to_close(head: &str) -> bool {
    head.lines().any(|l| l == "connection: close")
}

/// A backend one behind from `/late` on: each request is answered with the answer owed
/// before it (the first time, `/late`'s again), its own held back for the next; a request
/// that asks to close gets the answer owed, then its own, then the close. Answers echo
/// `X-Request-Id`.
fn one_behind_from_late() -> RawBackend {
    RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        let mut owed: Option<Vec<u8>> = None;
        while let Some(head) = read_head(&mut s, &mut pending) {
            let (path, id) = path_and_id(&head);
            let answer = echoing(&path, &id);
            let mut out = match owed.take() {
                Some(before) => {
                    owed = Some(answer);
                    before
                }
                None => {
                    if path.starts_with("/late") {
                        owed = Some(answer.clone());
                    }
                    answer
                }
            };
            let close = asks_to_close(&head);
            if close {
                out.extend(owed.take().unwrap_or_default());
            }
            if s.write_all(&out).is_err() || close {
                return;
            }
        }
    })
}

/// Per backend connection, whether each request it carried asked to close it.
type Carried = Arc<Mutex<Vec<Vec<bool>>>>;

/// A backend answering each request `200` with its path as the body (a path from `/stray`
/// twice, the second a stray answer), recording what each connection carried; a request
/// that asks to close gets its answer and the close, or (`hang_up`) the close alone, as a
/// server that closes a connection it was about to end anyway might.
fn recording(hang_up: bool) -> (RawBackend, Carried) {
    let seen: Carried = Arc::default();
    let log = seen.clone();
    let backend = RawBackend::start(move |mut s, i| {
        log.lock().unwrap().resize(i + 1, Vec::new());
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let (path, close) = (path_and_id(&head).0, asks_to_close(&head));
            log.lock().unwrap()[i].push(close);
            let mut out = response("200 OK", &path);
            if path.starts_with("/stray") {
                out.extend(response("200 OK", "STRAY"));
            }
            if close && hang_up {
                return;
            }
            if s.write_all(&out).is_err() || close {
                return;
            }
        }
    });
    (backend, seen)
}

/// `n` GETs of `/v1/proxy/{svc}/rN` (with `extra` header lines), each on a connection of
/// its own, all answered `200` with their own path.
fn all_answered(gw: SocketAddr, svc: &str, n: usize, extra: &str) {
    for n in 0..n {
        let want = format!("/r{n}");
        let raw = format!("GET /v1/proxy/{svc}{want} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n");
        let r = exchange(gw, &raw).expect("answer");
        assert_eq!((r.status, text(&r)), (200, want));
    }
}

/// A backend that misreads bodies as HTTP/1.1 lets it happen: `/nodrain` is answered at
/// once and its body left unread, to be read as the next request (CL.0); any other request
/// with a body is answered `200` with its path, then its body, and one without with its path.
fn cl0_backend() -> RawBackend {
    RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let path = path_and_id(&head).0;
            if !path.starts_with('/') {
                // The rest of a request read in part as a body: no answer, so that no
                // stray bytes mark the backend and stop its reuse (whose timing would
                // decide what the smuggler's next request meets).
                continue;
            }
            let mut body = Vec::new();
            if !path.starts_with("/nodrain") {
                let Some(read) = read_body(&mut s, &mut pending, &head) else {
                    return;
                };
                body = read;
            }
            let answer = format!("{path} {}", String::from_utf8_lossy(&body));
            if s.write_all(&response("200 OK", answer.trim_end())).is_err() {
                return;
            }
        }
    })
}

/// Regression (a hostile review, 2026-12-06): through a backend that answers a `POST`
/// without reading its body, a client smuggled the head of a `POST /echo` in that body;
/// the backend waited for its body, read the next client's request as it, and answered
/// that client with the echo: one wrong answer to another client per attempt (75 in
/// 15 s), and no stray byte ever seen to stop it. A connection that carried a body is now
/// reused only by the client that sent it: the smuggler gets the echo itself, and no
/// other client ever gets an answer not its own.
#[test]
fn a_request_body_the_backend_misreads_never_answers_another_client() {
    let backend = cl0_backend();
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1000}",
        &format!("  svc: [http://{}]\n", backend.addr),
    ));
    let g = gateway_at(&path);
    let smuggled = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n";
    let attack = format!(
        "POST /v1/proxy/svc/nodrain HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut wrong = Vec::new();
    for round in 0..12 {
        let mut attacker = Client::connect(g.proc.addr);
        attacker.send(attack.as_bytes());
        let r = attacker.read_response();
        assert_eq!((r.status, text(&r)), (200, "/nodrain".to_string()));
        // Its connection stays (odd rounds) or goes (even rounds) while others ask.
        if round % 2 == 0 {
            drop(attacker);
            std::thread::sleep(Duration::from_millis(20));
            wrong.extend(
                (0..3).filter_map(|n| mismatch(g.proc.addr, "svc", &format!("/v{round}-{n}"))),
            );
        } else {
            wrong.extend(
                (0..3).filter_map(|n| mismatch(g.proc.addr, "svc", &format!("/v{round}-{n}"))),
            );
            assert!(wrong.is_empty(), "answers not the clients' own: {wrong:#?}");
            // The smuggler's own next request is the one the backend reads as the body:
            // its connection came back to it, and it alone gets the echo.
            attacker.send(b"GET /v1/proxy/svc/mine HTTP/1.1\r\nHost: gw\r\n\r\n");
            let r = attacker.read_response();
            assert!(
                r.status == 200 && text(&r).starts_with("/echo GET /mine"),
                "round {round}: the smuggler got {} {:?}",
                r.status,
                text(&r)
            );
        }
    }
    assert!(wrong.is_empty(), "answers not the clients' own: {wrong:#?}");
}

/// `pool.max_requests_per_connection` (NGINX's `keepalive_requests`): a backend connection
/// carries that many requests, the last with `Connection: close`, and a backend that
/// closes as asked is nothing to report.
#[test]
fn a_backend_connection_carries_at_most_max_requests_the_last_asking_to_close() {
    let (backend, seen) = recording(false);
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\npool: {max_requests_per_connection: 3}",
        &format!("  svc: [http://{}]\n", backend.addr),
    ));
    let g = gateway_at(&path);
    all_answered(g.proc.addr, "svc", 10, "");
    let (t, f) = (true, false);
    assert_eq!(
        *seen.lock().unwrap(),
        [vec![f, f, t], vec![f, f, t], vec![f, f, t], vec![f]]
    );
    let m = metrics(g.admin);
    assert_eq!(
        sample(&m, "gateway_backend_stray_responses_total"),
        Some(0.0),
        "{m}"
    );
    let c = get(g.admin, "/admin/config").json();
    assert_eq!(c["pool"]["max_requests_per_connection"], 3, "{c}");
}

/// Regression (a review): a connection the gateway will not keep (its backend under the
/// stray mark, or no pooling) was closed by the gateway, which kept its `TIME_WAIT`: one
/// per request for the mark's minute (12 400 in 4 s at 5 000 requests a second), enough to
/// run a busy gateway out of local ports to that backend, and a client whose request the
/// backend misreads can set the mark at will. Such a request now asks to close, and its
/// connection is reset once its answer is in: no `TIME_WAIT` and no socket held here.
#[test]
fn a_connection_that_will_not_be_kept_is_closed_by_its_backend() {
    for pool in ["", "\npool: {max_idle_per_backend: 0}"] {
        let (backend, seen) = recording(false);
        let path = write_config(&config(
            1,
            &format!("admin: 127.0.0.1:0{pool}"),
            &format!("  svc: [http://{}]\n", backend.addr),
        ));
        let g = gateway_at(&path);
        if pool.is_empty() {
            assert_eq!(mismatch(g.proc.addr, "svc", "/a"), None);
            assert_eq!(mismatch(g.proc.addr, "svc", "/stray"), None);
            assert!(eventually(Duration::from_secs(5), || {
                sample(&metrics(g.admin), "gateway_backend_stray_responses_total")
                    .is_some_and(|n| n >= 1.0)
            }));
        }
        std::thread::sleep(Duration::from_millis(200));
        let before = time_wait_to(backend.addr.port());
        all_answered(g.proc.addr, "svc", 20, "");
        std::thread::sleep(Duration::from_millis(300));
        let after = time_wait_to(backend.addr.port());
        let carried: Vec<bool> = seen.lock().unwrap().concat();
        let last20 = &carried[carried.len() - 20..];
        assert!(last20.iter().all(|&c| c), "{pool:?}: {carried:?}");
        let new: Vec<_> = after.difference(&before).collect();
        assert!(new.is_empty(), "{pool:?}: the gateway's TIME_WAIT: {new:?}");
        // Nor held open until the backend's close is seen (the first version kept up to
        // 1 024 per worker, outside the descriptor budget: a review).
        let held = sockets_to(backend.addr.port(), &["01", "08"]);
        assert!(held.is_empty(), "{pool:?}: still held: {held:?}");
    }
}

/// Regressions (a review): a WebSocket handshake, which cannot say `Connection: close`,
/// that the backend declined put its connection back in the pool whatever it had carried,
/// so clients sending handshakes kept a run of answers one behind going without end (423
/// wrong of 2 400 at a limit of 5); and the resend of a connection's last request, after
/// the backend hung up on it, asked the new connection to close too, where the backend
/// hung up again (a 502).
#[test]
fn declined_handshakes_and_resends_keep_to_max_requests() {
    let (backend, seen) = recording(false);
    let g = gateway(&config(
        1,
        "pool: {max_requests_per_connection: 3}",
        &format!(
            "  ws: {{backends: [http://{}], websocket: true}}\n",
            backend.addr
        ),
    ));
    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    all_answered(g.addr, "ws", 7, upgrade);
    let f = false;
    assert_eq!(
        *seen.lock().unwrap(),
        [vec![f, f, f], vec![f, f, f], vec![f]]
    );
    drop(g);

    let (backend, seen) = recording(true);
    let g = gateway(&config(
        1,
        "pool: {max_requests_per_connection: 3}",
        &format!("  svc: [http://{}]\n", backend.addr),
    ));
    all_answered(g.addr, "svc", 5, "");
    // The third and the fifth hung up on and resent, each as a new connection's first.
    let t = true;
    assert_eq!(
        *seen.lock().unwrap(),
        [vec![f, f, t], vec![f, f, t], vec![f]]
    );
}

/// The same run of answers one behind as above, from a backend that does not echo
/// `X-Request-Id` (or behind an edge whose IDs are random), where no answer can be told
/// from another: it ends with the connection, at `pool.max_requests_per_connection`. The
/// last request asks the backend to close; the answer it owed comes before the close and
/// is seen, so that none of the backend's connections is reused for a while.
#[test]
fn a_run_of_answers_one_behind_ends_with_the_connections_last_request() {
    let backend = one_behind_from_late();
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\npool: {max_requests_per_connection: 10}\nbreaker: {failure_threshold: 1000}",
        &format!("  svc: [http://{}]\n", backend.addr),
    ));
    let log = std::env::temp_dir().join(format!(
        "gateway-upstream-{}-one-behind-limit.log",
        std::process::id()
    ));
    let g = gateway_at_logging_to(&path, &log);
    let wrong = forty(g.proc.addr);
    // One behind from the late answer to the connection's tenth request; none after it
    // (with no limit: 36 of 40, every request from the fifth on).
    assert_eq!(
        wrong,
        [
            "/c4: 200 \"/late3\"",
            "/c5: 200 \"/c4\"",
            "/c6: 200 \"/c5\"",
            "/c7: 200 \"/c6\"",
            "/c8: 200 \"/c7\"",
            "/c9: 200 \"/c8\"",
        ],
        "{wrong:#?}"
    );
    // The answer owed to the tenth came before the close: counted and named.
    let mut text_ = String::new();
    let named = eventually(Duration::from_secs(5), || {
        text_ = std::fs::read_to_string(&log).unwrap_or_default();
        text_.lines().any(|l| {
            l.contains(" WARN ")
                && l.contains(&format!("backend: svc http://{}", backend.addr))
                && l.contains("none of its connections is reused")
        })
    });
    let _ = std::fs::remove_file(&log);
    assert!(named, "{text_}");
    let m = metrics(g.admin);
    assert!(
        sample(&m, "gateway_backend_stray_responses_total").is_some_and(|n| n >= 1.0),
        "{m}"
    );
}

// ---- 2. An early 413 during a large upload ----

const LARGE: &str = "{\"error\":\"large\"}";

/// Answers GET with `200 ok`; anything else, after its head only, with a 413 and
/// `connection: close`, then closes at once or (`hold`) keeps the socket 3 s unread.
fn early_413_backend(hold: bool) -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            if head.starts_with("GET ") {
                if s.write_all(&response("200 OK", "ok")).is_err() {
                    return;
                }
                continue;
            }
            let _ = s.write_all(
                format!("HTTP/1.1 413 Payload Too Large\r\ncontent-length: 17\r\nconnection: close\r\n\r\n{LARGE}")
                    .as_bytes(),
            );
            if hold {
                std::thread::sleep(Duration::from_secs(3));
            }
            return;
        }
    })
}

/// POSTs 32 MiB (written from another thread, errors ignored) and reads one response.
fn upload(addr: SocketAddr, path: &str, chunked: bool) -> Result<Response, String> {
    const SIZE: usize = 32 << 20;
    const PIECE: usize = 64 << 10;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {SIZE}")
    };
    let head = format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{framing}\r\n\r\n");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut piece = Vec::new();
        if chunked {
            piece.extend_from_slice(format!("{PIECE:x}\r\n").as_bytes());
        }
        piece.extend_from_slice(&[b'u'; PIECE]);
        if chunked {
            piece.extend_from_slice(b"\r\n");
        }
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        for _ in 0..SIZE / PIECE {
            if w.write_all(&piece).is_err() {
                return;
            }
        }
        if chunked {
            let _ = w.write_all(b"0\r\n\r\n");
        }
    });
    let r = read_reply(&mut s);
    let _ = s.shutdown(Shutdown::Both); // stops the writer
    let _ = writer.join();
    r
}

#[test]
fn an_early_413_during_a_large_upload_is_relayed_and_is_not_a_breaker_failure() {
    let (close, hold, chunk) = (
        early_413_backend(false),
        early_413_backend(true),
        early_413_backend(false),
    );
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}\ntimeouts: {body: 30s}\nlimits: {max_body_bytes: 67108864}",
        &format!(
            "  close: [http://{}]\n  hold: [http://{}]\n  chunk: [http://{}]\n",
            close.addr, hold.addr, chunk.addr
        ),
    )));
    let mut wrong = Vec::new();
    for (svc, chunked) in [("close", false), ("hold", false), ("chunk", true)] {
        for i in 0..5 {
            let r = upload(g.proc.addr, &format!("/v1/proxy/{svc}/upload"), chunked);
            let bad = match r {
                Ok(r) if r.status == 413 && text(&r) == LARGE => continue,
                Ok(r) => format!("{} {:?}", r.status, text(&r)),
                Err(e) => e,
            };
            wrong.push(format!("{svc} upload {i}: {bad}"));
            break; // one failure (possibly a 10 s hang) per variant is enough
        }
    }
    for (svc, b) in [("close", &close), ("hold", &hold), ("chunk", &chunk)] {
        let state = circuit(g.admin, b.addr);
        if state != "closed" {
            wrong.push(format!("{svc}: circuit {state} after early 413s"));
        }
        match exchange(
            g.proc.addr,
            &format!("GET /v1/proxy/{svc}/x HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ) {
            Ok(r) if r.status == 200 && text(&r) == "ok" => {}
            Ok(r) => wrong.push(format!("{svc}: GET after: {} {:?}", r.status, text(&r))),
            Err(e) => wrong.push(format!("{svc}: GET after: {e}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---- 3. Truncated uploads against an open circuit ----

/// Counts request heads (bodies read and discarded) and answers 200 `ok` or 500 `down`.
fn counting_backend(
    heads: Arc<AtomicUsize>,
    ok: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<String>>>,
) -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let method = head.split(' ').next().unwrap_or("").to_string();
            heads.fetch_add(1, Ordering::SeqCst);
            events.lock().unwrap().push(format!("head {method}"));
            if !skip_body(&mut s, &mut pending, &head) {
                return;
            }
            events.lock().unwrap().push(format!("end {method}"));
            let r = if ok.load(Ordering::SeqCst) {
                response("200 OK", "ok")
            } else {
                response("500 Internal Server Error", "down")
            };
            if s.write_all(&r).is_err() {
                return;
            }
        }
    })
}

#[test]
fn truncated_uploads_cannot_multiply_requests_to_an_open_backend() {
    let heads = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicBool::new(false));
    let b = counting_backend(heads.clone(), ok.clone(), Arc::default());
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 500ms}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let addr = g.proc.addr;
    assert_eq!(get(addr, "/v1/proxy/svc/x").status, 500);
    assert_eq!(circuit(g.admin, b.addr), "open");

    let before = heads.load(Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(2);
    let flood: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut raw =
                    b"POST /v1/proxy/svc/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"
                        .to_vec();
                raw.extend_from_slice(&[b'a'; 100]);
                let mut sent = 0usize;
                while Instant::now() < end {
                    if let Ok(mut c) = TcpStream::connect(addr) {
                        let _ = c.write_all(&raw);
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    let sent: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    std::thread::sleep(Duration::from_millis(200)); // let the last ones land
    let during = heads.load(Ordering::SeqCst) - before;

    ok.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    let recovered = eventually(Duration::from_secs(10), || {
        let r = get(addr, "/v1/proxy/svc/x");
        r.status == 200 && text(&r) == "ok" && circuit(g.admin, b.addr) == "closed"
    });
    assert!(
        during <= 6,
        "{during} request heads reached a backend with an open circuit (cooldown 500ms) during a 2 s flood of {sent} truncated uploads"
    );
    assert!(
        recovered,
        "the circuit did not close once the backend was healthy"
    );
}

// ---- 4. A slow probe is the only one until it hands the probe back ----

/// A probe whose body comes slowly keeps the circuit to itself (no second probe, no other
/// request reaches the backend) while its client has kept it waiting under a second in
/// all, each part of the body renewing its lease (3 s here, shorter than the upload); then
/// it hands the probe back, the circuit backs off (its cooldown, 300 ms, being shorter than
/// the 1 s backoff), the next request probes and closes it, and the upload still gets its
/// answer. (Until 2026-12-05 the slow probe kept the circuit to itself to its end: see
/// `a_slow_upload_that_took_the_probe_hands_it_back`.)
#[test]
fn a_slow_probe_is_the_only_one_until_it_hands_the_probe_back() {
    let heads = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicBool::new(false));
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let b = counting_backend(heads.clone(), ok.clone(), events.clone());
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\ntimeouts: {connect: 1s, response: 1s, body: 5s}\nbreaker: {failure_threshold: 1, cooldown: 300ms}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let addr = g.proc.addr;
    assert_eq!(get(addr, "/v1/proxy/svc/x").status, 500);
    assert_eq!(circuit(g.admin, b.addr), "open");
    ok.store(true, Ordering::SeqCst);
    events.lock().unwrap().clear();
    // Past two cooldowns: with no other taker, a request still streaming its body may
    // probe (one cooldown after the circuit was due).
    std::thread::sleep(Duration::from_millis(700));

    // Client A: the probe, a PUT whose 10 body bytes come one per 400 ms.
    let a_done = Arc::new(AtomicBool::new(false));
    let done = a_done.clone();
    let started = Instant::now();
    let a = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"PUT /v1/proxy/svc/slow HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\n");
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(400));
            c.send(b"x");
        }
        let r = c.try_read_response(false);
        done.store(true, Ordering::SeqCst);
        r
    });
    assert!(
        eventually(Duration::from_millis(900), || circuit(g.admin, b.addr)
            == "half_open"),
        "A did not probe"
    );
    // Client B: a GET every 100 ms until one gets through.
    let mut b_saw = Vec::new();
    let through = loop {
        let r = get(addr, "/v1/proxy/svc/b");
        let at = started.elapsed();
        if r.status == 200 {
            break Some(at);
        }
        b_saw.push(format!("{} {}", r.status, error_code(&r)));
        if a_done.load(Ordering::SeqCst) || at > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let a = a.join().unwrap();
    let events = events.lock().unwrap().clone();
    assert!(
        b_saw.len() >= 2 && b_saw.iter().all(|r| r == "503 no_backend_available"),
        "client B reached the backend while A's probe held the circuit: {b_saw:?}"
    );
    // A's client had kept it waiting 1.2 s when it handed the probe back, and the
    // circuit then backed off for 300 ms; B got through before A's upload ended.
    let through = through.expect("B never got through");
    assert!(
        through >= Duration::from_millis(1100) && through < Duration::from_millis(3900),
        "B got through {through:?} after A began"
    );
    let put = events.iter().position(|e| e == "head PUT");
    let first_get = events.iter().position(|e| e == "head GET");
    let put_end = events.iter().position(|e| e == "end PUT");
    assert!(
        matches!((put, first_get, put_end), (Some(p), Some(g), Some(e)) if p < g && g < e),
        "the backend's order: {events:?}"
    );
    match a {
        Ok(r) => assert_eq!((r.status, text(&r)), (200, "ok".to_string())),
        Err(b) => panic!(
            "client A got no response: {:?}",
            String::from_utf8_lossy(&b)
        ),
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

// ---- 5. Connection with many options ----

#[test]
fn sixteen_connection_options_are_honoured_and_more_are_refused_on_both_sides() {
    let echo = mock_backend();
    let names = |p: &str, n: usize| (1..=n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let (o, p) = (names("o", 16), names("p", 16));
    let head_listing = |names: &[String]| {
        format!(
            "HTTP/1.1 200 OK\r\nConnection: {}\r\n{}content-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
            names.join(", "),
            names.iter().map(|n| format!("{n}: x\r\n")).collect::<String>()
        )
    };
    let (p_head, over_head) = (head_listing(&p), head_listing(&names("q", 17)));
    let raw = RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let reply = if head.contains("/over") {
                &over_head
            } else {
                &p_head
            };
            if s.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!(
            "  echo: [http://{}]\n  raw: [http://{}]\n",
            echo.addr, raw.addr
        ),
    )));
    let listing = |names: &[String]| {
        format!(
            "GET /v1/proxy/echo/x HTTP/1.1\r\nHost: gw\r\nConnection: close, {}\r\n{}Authorization: Bearer t\r\nContent-Type: text/plain\r\nUser-Agent: ua\r\n\r\n",
            names.join(", "),
            names.iter().map(|n| format!("{n}: x\r\n")).collect::<String>()
        )
    };
    let r = request(g.proc.addr, &listing(&o));
    assert_eq!(r.status, 200);
    let got = r.echoed_headers();
    for (name, value) in [
        ("authorization", "Bearer t"),
        ("content-type", "text/plain"),
        ("user-agent", "ua"),
    ] {
        assert_eq!(
            r.echoed(name),
            vec![value.to_string()],
            "{name}; backend got {got:?}"
        );
    }
    let leaked: Vec<_> = got.iter().filter(|(n, _)| o.contains(n)).collect();
    assert!(
        leaked.is_empty(),
        "Connection options forwarded: {leaked:?}"
    );

    // A 17th name: refused before routing, so the backend sees nothing. (The request
    // above is counted once its answer has gone: wait for it, or it lands in between;
    // CI saw 0 before and 1 after.)
    let series = "gateway_requests_total{service=\"echo\",class=\"2xx\"}";
    assert!(eventually(Duration::from_secs(5), || {
        sample(&metrics(g.admin), series) == Some(1.0)
    }));
    let before = sample(&metrics(g.admin), series);
    let r = request(g.proc.addr, &listing(&names("o", 17)));
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["detail"], "too_many_connection_options");
    assert_eq!(sample(&metrics(g.admin), series), before);

    let r = get(g.proc.addr, "/v1/proxy/raw/x");
    assert_eq!((r.status, text(&r)), (200, "ok".to_string()));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain"),
        "{:?}",
        r.headers
    );
    let leaked: Vec<_> = p.iter().filter(|n| r.header(n).is_some()).collect();
    assert!(leaked.is_empty(), "Connection options relayed: {leaked:?}");

    // A backend listing 17: a 502 naming why, none of its fields relayed.
    let r = get(g.proc.addr, "/v1/proxy/raw/over");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["detail"], "too_many_connection_options");
    assert!(r.header("q1").is_none());
}

// ---- 6. A write timeout on a reused connection ----

/// The bytes one backend connection received.
type Record = Arc<Mutex<Vec<u8>>>;

#[test]
fn a_write_timeout_never_resends_an_empty_request() {
    // A small receive buffer and a small MSS: the gateway's send buffer to this backend
    // stays ~100 KiB instead of the ~4 MiB loopback autotuning gives, so a 400 KiB request
    // cannot be written to a connection the backend no longer reads.
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    // TCP_MAXSEG set directly: socket2's `set_mss` needs its "all" feature.
    let mss: libc::c_int = 536;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mss as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG");
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&local.into()).expect("bind");
    sock.listen(64).expect("listen");
    let records: Arc<Mutex<Vec<Record>>> = Arc::default();
    let recs = records.clone();
    let b = RawBackend::on(sock.into(), move |mut s, _| {
        let rec: Record = Arc::default();
        recs.lock().unwrap().push(rec.clone());
        let mut tmp = [0u8; 65536];
        loop {
            if find(&rec.lock().unwrap(), b"\r\n\r\n").is_some() {
                break;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => rec.lock().unwrap().extend_from_slice(&tmp[..n]),
            }
        }
        // Answer the first request, then never read again (but keep the socket 8 s).
        let _ = s.write_all(&response("200 OK", "ok"));
        std::thread::sleep(Duration::from_secs(8));
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\ntimeouts: {body: 300ms, response: 5s}\nlimits: {max_head_bytes: 1048576}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let r = get(g.proc.addr, "/v1/proxy/svc/one");
    assert_eq!((r.status, text(&r)), (200, "ok".to_string()));

    let pad: String = (0..40)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(10_000)))
        .collect();
    let mut c = Client::connect(g.proc.addr);
    let mut s = c.stream.try_clone().expect("clone");
    let r2 = {
        c.send(
            format!("PUT /v1/proxy/svc/two HTTP/1.1\r\nHost: gw\r\n{pad}Content-Length: 10\r\n\r\n0123456789")
                .as_bytes(),
        );
        read_reply(&mut s)
    };
    // On the current code the write to the pooled connection times out, the buffer is lost
    // with the cancelled write, and the "retry" sends 0 bytes on a fresh connection, which
    // then waits the whole response timeout (5 s) before the client gets a 504 and the
    // breaker counts a failure: that fresh connection's record stays empty.
    let bad = || {
        records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .filter(|r| !(r.starts_with(b"GET /one ") || r.starts_with(b"PUT /two ")))
            .map(|r| {
                let start = String::from_utf8_lossy(&r[..r.len().min(60)]).into_owned();
                format!("{} bytes: {start:?}", r.len())
            })
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(2), || bad().is_empty());
    let bad = bad();
    let n = records.lock().unwrap().len();
    assert!(
        bad.is_empty(),
        "{} of {n} backend connections received something other than a whole request line: {bad:?}",
        bad.len()
    );
    match r2 {
        // Either a gateway error, or the backend's answer to a complete resend.
        Ok(r) if matches!(r.status, 502 | 504) && !error_code(&r).is_empty() => {}
        Ok(r) if r.status == 200 && text(&r) == "ok" => {}
        Ok(r) => panic!("client 2 got {} {:?}", r.status, text(&r)),
        Err(e) => panic!("client 2: {e}"),
    }
}

// ---- 7. Counting and logging requests that did not complete normally ----

#[test]
fn aborted_requests_are_not_counted_as_1xx() {
    // The backend reads but never answers, so the only way the request ends is the abort.
    let rec = Recorder::start(Mode::Hang);
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", rec.addr),
    )));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000\r\n\r\n0123456789");
    drop(c);
    let metric = |key: &str| -> f64 {
        let metrics = String::from_utf8(get(g.admin, "/metrics").body).unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or(0.0, |v| v.trim().parse().expect("value"))
    };
    let aborted = "gateway_requests_aborted_total{service=\"svc\"} ";
    assert!(
        eventually(Duration::from_secs(5), || metric(aborted) == 1.0),
        "the aborted upload was not counted as aborted"
    );
    for class in 1..=5 {
        let key = format!("gateway_requests_total{{service=\"svc\",class=\"{class}xx\"}} ");
        assert_eq!(
            metric(&key),
            0.0,
            "an aborted request was counted as {class}xx"
        );
    }
}

/// A client that leaves while its request waits on the backend, with a half-close (FIN, as
/// clients that give up do: a Go, curl or browser client closes its socket) and then with a
/// reset. Its wait is given up within about a second (it used to last until the backend
/// answered or `timeouts.response`, 30 s, holding the backend's work and an in-flight slot):
/// the backend sees its connection closed, the line says `client_closed_request`, the
/// breaker hears nothing, not even with a threshold of one, and the request's
/// `max_in_flight` slot is free for the next (each request here needs the one before's).
fn a_client_that_leaves_frees_its_backend(env: &[(&str, &str)]) {
    let rec = Recorder::start(Mode::Hang);
    let log = std::env::temp_dir().join(format!(
        "gateway-upstream-left-{}-{}.log",
        std::process::id(),
        env.len()
    ));
    let _ = std::fs::remove_file(&log);
    let g = gateway_at_with_env(
        &write_config(&config(
            1,
            &format!(
                "admin: 127.0.0.1:0\naccess_log: {}\nbreaker: {{failure_threshold: 1, cooldown: 60s}}",
                log.display()
            ),
            &format!(
                "  svc:\n    backends: [http://{}]\n    max_in_flight: 1\n",
                rec.addr
            ),
        )),
        env,
    );
    let aborted = || {
        sample(
            &metrics(g.admin),
            "gateway_requests_aborted_total{service=\"svc\"}",
        )
    };
    // The third streams its body after its head, and leaves once it is all sent.
    let ways = ["fin", "reset", "upload"];
    for (n, how) in (1..).zip(ways) {
        let mut c = Client::connect(g.proc.addr);
        if how == "upload" {
            let body = "x".repeat(100_000);
            c.send(
                format!(
                    "POST /v1/proxy/svc/{how} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{}",
                    body.len(),
                    &body[..10]
                )
                .as_bytes(),
            );
            std::thread::sleep(Duration::from_millis(100));
            c.send(&body.as_bytes()[10..]);
        } else {
            c.send(format!("GET /v1/proxy/svc/{how} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        }
        assert!(
            eventually(Duration::from_secs(5), || rec.requests() == n),
            "{how}: the request never reached the backend"
        );
        if how != "reset" {
            c.stream.shutdown(Shutdown::Write).expect("shutdown");
            // Nothing is answered: the connection just ends.
            assert_eq!(
                c.read_until_end().map_err(|b| b.len()),
                Ok(Vec::new()),
                "{how}"
            );
        } else {
            reset(c);
        }
        assert!(
            eventually(Duration::from_secs(5), || rec.closed.load(Ordering::SeqCst)
                == n),
            "{how}: the backend's connection stayed open after the client left"
        );
        // Counted once its exchange has ended, in the same turn as its slot's release.
        assert!(
            eventually(Duration::from_secs(5), || aborted() == Some(n as f64)),
            "{how}: not counted as aborted"
        );
    }
    let text = logged_lines(&log, ways.len());
    for (line, how) in text.lines().zip(ways) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[3], format!("/v1/proxy/svc/{how}"), "{line}");
        assert_eq!(
            (fields[6], fields[7]),
            ("0", "0"),
            "{how}: status, bytes: {line}"
        );
        assert_eq!(fields[10], "client_closed_request", "{line}");
        assert_ne!(fields[8], "-", "{how}: the backend was waited on: {line}");
    }
    let m = metrics(g.admin);
    assert_eq!(
        sample(&m, "gateway_requests_aborted_total{service=\"svc\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "gateway_errors_total{service=\"svc\",code=\"client_closed_request\",status=\"499\"}"
        ),
        Some(3.0),
        "{m}"
    );
    served_as_before(&g, &rec);
}

/// After the `n`th client left (`how`): the backend has seen `n` connections closed, and
/// `svc`'s `max_in_flight` slot is free.
fn freed(g: &AdminGateway, rec: &Recorder, n: usize, how: &str) {
    assert!(
        eventually(Duration::from_secs(5), || rec.closed.load(Ordering::SeqCst)
            == n),
        "{how}: the backend's connection stayed open after the client left"
    );
    let in_flight = || sample(&metrics(g.admin), "gateway_in_flight{service=\"svc\"}");
    assert!(
        eventually(Duration::from_secs(2), || in_flight() == Some(0.0)),
        "{how}: the slot stayed taken"
    );
}

/// After clients left: the backend's circuit is closed (their leaving is no verdict) and
/// it is served as before.
fn served_as_before(g: &AdminGateway, rec: &Recorder) {
    assert_eq!(
        circuit(g.admin, rec.addr),
        "closed",
        "a client's leaving opened it"
    );
    rec.set(reply(200));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/after").status, 200);
}

#[test]
fn a_client_that_leaves_frees_its_backend_on_io_uring() {
    a_client_that_leaves_frees_its_backend(&[]);
}

#[test]
fn a_client_that_leaves_frees_its_backend_on_epoll() {
    a_client_that_leaves_frees_its_backend(&[("GATEWAY_DRIVER", "epoll")]);
}

/// Regression (a resource review): a client gone while the backend paused mid-body (a
/// stream, a long poll) held the backend's connection and its `max_in_flight` slot until
/// `timeouts.body` (30 s by default): five such requests locked a service of five slots.
/// The body's reads of the backend are watched as the head's wait is: the backend's
/// connection is closed within about a second (reset) or two (close), no verdict.
#[test]
fn a_client_that_leaves_mid_body_frees_its_backend() {
    // A stream: a head and one chunk, then silence.
    let rec = Recorder::start(Mode::Reply(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
    ));
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 60s}",
        &format!(
            "  svc:\n    backends: [http://{}]\n    max_in_flight: 1\n",
            rec.addr
        ),
    )));
    let in_flight = || sample(&metrics(g.admin), "gateway_in_flight{service=\"svc\"}");
    // The last two send a byte of a next request first: a reset behind it is a sign of
    // leaving (a re-review: it kept the watch off altogether), and so is a close, since the
    // rest of that request can never come (a hostile review).
    for (n, how) in (1..).zip(["reset", "close", "pipelined, reset", "pipelined, close"]) {
        let mut c = Client::connect(g.proc.addr);
        c.send(b"GET /v1/proxy/svc/stream HTTP/1.1\r\nHost: gw\r\n\r\n");
        if how.starts_with("pipelined") {
            c.send(b"G");
        }
        let head = c.read_response_to(true);
        assert_eq!(head.status, 200, "{how}");
        assert_eq!(in_flight(), Some(1.0), "{how}");
        if how.ends_with("reset") {
            reset(c);
        } else {
            c.stream.shutdown(Shutdown::Both).expect("shutdown");
        }
        freed(&g, &rec, n, how);
    }
    served_as_before(&g, &rec);
}

/// A hostile review: a client that sent one byte after its request (or a CRLF, or the
/// start of a next one, in the same packet or later) and closed held the request's backend
/// connection and `max_in_flight` slot until the backend answered (8 s there, up to
/// `timeouts.response`), with no client left: any byte after the request turned the close
/// watch off. A part of a next request is not one the client waits to have answered:
/// behind it, a close is the client leaving, as with nothing behind the request.
#[test]
fn a_client_that_closes_behind_part_of_a_next_request_frees_its_backend() {
    let rec = Recorder::start(Mode::Hang);
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 60s}",
        &format!(
            "  svc:\n    backends: [http://{}]\n    max_in_flight: 1\n",
            rec.addr
        ),
    )));
    let head = b"GET /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\n\r\n";
    // A head the gateway would refuse is no request to wait for either (a re-review).
    let ways: [(&str, &[u8], &[u8]); 6] = [
        ("a byte", b"G", b""),
        ("a CRLF", b"\r\n", b""),
        ("a byte, later", b"", b"G"),
        (
            "half a head, in two",
            b"GET /v1/proxy/svc/b HT",
            b"TP/1.1\r\nHost: gw\r\n",
        ),
        (
            "a head with no Host",
            b"GET /v1/proxy/svc/b HTTP/1.1\r\n\r\n",
            b"",
        ),
        (
            "a bare-LF head, later",
            b"",
            b"GET /v1/proxy/svc/b HTTP/1.1\nHost: gw\n\n",
        ),
    ];
    for (n, (how, with, later)) in (1..).zip(ways) {
        let mut c = Client::connect(g.proc.addr);
        c.send(&[&head[..], with].concat());
        assert!(
            eventually(Duration::from_secs(5), || rec.requests() == n),
            "{how}: the request never reached the backend"
        );
        if !later.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
            c.send(later);
        }
        drop(c);
        freed(&g, &rec, n, how);
    }
    served_as_before(&g, &rec);
}

/// What is not taken for a client leaving: a half-close behind a pipelined request (the
/// client still has a request to be answered); a half-close whose wait has not yet lasted a
/// second (a client that half-closes after its request, as `nc -N` does, and reads on:
/// 800 ms nearly always spans the worker's once-a-second look, which until then gave such
/// a wait up); and with `ignore_client_abort: true` (NGINX's `proxy_ignore_client_abort`,
/// HAProxy's default) any half-close. The 2.2 s waits span two looks.
#[test]
fn a_half_closed_client_is_answered_when_it_pipelined_was_quick_or_with_ignore_client_abort() {
    let b = mock_backend();
    // The pipelined request may also come after a pause, or split across the pause: it is
    // then in the client's socket, not read, when the FIN comes.
    // The last of them is answered too, however long it takes (a re-review: it was given
    // up a second into its wait, as a lone request behind a FIN is).
    let cases = [
        ("pipelined", "", 2200),
        ("pipelined later", "", 2200),
        ("pipelined split", "", 2200),
        ("pipelined, both slow", "", 2200),
        ("pipelined later, both slow", "", 2200),
        ("quick", "", 800),
        ("ignored", "ignore_client_abort: true", 2200),
    ];
    for (case, extra, delay) in cases {
        let g = gateway_at(&write_config(&config(
            1,
            &format!("admin: 127.0.0.1:0\n{extra}"),
            &format!("  svc: [http://{}]\n", b.addr),
        )));
        let mut c = Client::connect(g.proc.addr);
        let mut req =
            format!("GET /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nx-mock-delay-ms: {delay}\r\n\r\n");
        let next = "GET /v1/proxy/svc/b HTTP/1.1\r\nHost: gw\r\n\r\n";
        let slow_next =
            format!("GET /v1/proxy/svc/b HTTP/1.1\r\nHost: gw\r\nx-mock-delay-ms: {delay}\r\n\r\n");
        let (now, later) = match case {
            "pipelined" => (next, ""),
            "pipelined, both slow" => (slow_next.as_str(), ""),
            "pipelined later, both slow" => ("", slow_next.as_str()),
            "pipelined later" => ("", next),
            "pipelined split" => next.split_at(10),
            _ => ("", ""),
        };
        req.push_str(now);
        c.send(req.as_bytes());
        if !later.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            c.send(later.as_bytes());
        }
        c.stream.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(c.read_response().status, 200, "{case}");
        if case.starts_with("pipelined") {
            assert_eq!(c.read_response().status, 200, "the pipelined one");
        }
        let m = metrics(g.admin);
        assert_eq!(
            sample(&m, "gateway_requests_aborted_total{service=\"svc\"}"),
            Some(0.0),
            "{case}: {m}"
        );
    }
}

/// A re-review: a request the gateway answers itself (here a 404) pipelined ahead of a
/// slow one, then a half-close: the slow one was given up a second into its wait, since
/// only a wait on a backend looked at what followed. A request that came in hand, behind
/// another, is pipelined whoever answered the one before.
#[test]
fn a_half_closed_client_is_answered_behind_an_answer_of_the_gateways_own() {
    let b = mock_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut c = Client::connect(g.proc.addr);
    c.send(
        b"GET /v1/proxy/nope/x HTTP/1.1\r\nHost: gw\r\n\r\n\
          GET /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nx-mock-delay-ms: 2200\r\n\r\n",
    );
    c.stream.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(c.read_response().status, 404);
    assert_eq!(c.read_response().status, 200, "the slow one behind it");
}

#[test]
fn a_400_is_logged_with_its_own_target() {
    let b = mock_backend();
    let log = std::env::temp_dir().join(format!(
        "gateway-upstream-access-{}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let g = gateway_at(&write_config(&config(
        1,
        &format!("admin: 127.0.0.1:0\naccess_log: {}", log.display()),
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/first-target HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(c.read_response().status, 400);
    let line_400 = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(" 400 "))
            .map(str::to_string)
    };
    assert!(
        eventually(Duration::from_secs(5), || line_400().is_some()),
        "no access log line for the 400"
    );
    let line = line_400().unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(
        !line.contains("first-target"),
        "the 400 was logged with the previous request's target: {line}"
    );
}

/// A burst of 150 concurrent requests opens about 150 backend connections; they are kept
/// (the default pool holds up to 4096 idle per backend per worker) and the next burst
/// reuses them instead of connecting again. With the old default of 64, every burst
/// closed 86 connections and opened them again: at 256 and 10 000 client connections that
/// churn was the gateway's p99 (bench: 11–18k connects in 5 s at 256 connections).
#[test]
fn a_second_burst_of_concurrent_requests_reuses_the_first_ones_connections() {
    let b = mock_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let connects = || {
        let series = "gateway_upstream_connect_seconds_count{service=\"svc\"}";
        sample(&metrics(g.admin), series).unwrap_or(0.0)
    };
    let burst = || {
        let raw = b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 300\r\n\r\n";
        for t in spawn_requests(g.proc.addr, 150, raw) {
            assert_eq!(t.join().unwrap().status, 200);
        }
    };
    burst();
    let first = connects();
    assert!(
        first >= 100.0,
        "the first burst opened only {first} connections"
    );
    burst();
    let second = connects() - first;
    assert!(
        second <= 15.0,
        "the second burst opened {second} more connections (first: {first})"
    );
}

// ---- 8. The gateway out of descriptors ----

/// The descriptor numbers the process `pid` has open.
fn fds(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The descriptor limit that leaves the process `pid` exactly `k` more descriptors (a
/// limit is on the numbers, and new descriptors take the lowest free ones).
fn limit_leaving(pid: u32, k: usize) -> u64 {
    let open = fds(pid);
    (0u64..)
        .filter(|n| !open.contains(n))
        .nth(k - 1)
        .map(|n| n + 1)
        .unwrap_or(u64::MAX)
}

/// Sets the process's soft limit on open descriptors (the hard one stays, so it can be
/// raised again).
fn limit_fds(pid: u32, n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on a child of ours, reading its limit into `lim`.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut lim,
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = n.min(lim.rlim_max);
    // SAFETY: as above, setting a soft limit no higher than the hard one.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn running_out_of_descriptors_is_a_503_and_opens_no_healthy_circuit() {
    // A client that holds enough connections to exhaust the gateway's descriptors made
    // every upstream connect fail (EMFILE): each a 502 and a breaker failure, so five of
    // them opened a healthy backend's circuit, and every client got 503s for the whole
    // cooldown. Seen in a 10 000-connection benchmark run at a limit of 20 000.
    let b = mock_backend();
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", b.addr)));
    let pid = g.child.id();
    // Warm up (the descriptors a first request opens, one pooled connection), then open
    // idle clients and lower the limit to what they left.
    // On a connection kept open: one that closes would leave the count below while the
    // gateway closes its side.
    let mut warm = Client::connect(g.addr);
    warm.send(b"GET /v1/proxy/svc/warm HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(warm.read_response().status, 200);
    let mut clients: Vec<Client> = Vec::new();
    let k = 10;
    let base = fds(pid).len();
    for _ in 0..k {
        clients.push(Client::connect(g.addr));
    }
    assert!(
        eventually(Duration::from_secs(3), || fds(pid).len() >= base + k),
        "the clients were not all accepted: {} open, {base} before",
        fds(pid).len()
    );
    // Then the limit: one descriptor to spare, so at most one more upstream connection.
    limit_fds(pid, limit_leaving(pid, 1));
    // Each request needs a connection of its own (one may reuse the pooled one).
    for c in clients.iter_mut() {
        c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 300\r\n\r\n");
    }
    let mut statuses = Vec::new();
    for c in clients.iter_mut() {
        let r = c.read_response();
        if r.status != 200 {
            assert_eq!(
                (r.status, r.json()["error"].clone()),
                (503, "overloaded".into())
            );
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        statuses.push(r.status);
    }
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert!(refused >= 5, "too few connects hit the limit: {statuses:?}");
    drop(clients);
    drop(warm);
    limit_fds(pid, 4096);
    // The backend did nothing wrong: its circuit is still closed.
    let r = get(g.addr, "/v1/proxy/svc/after");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn out_of_descriptors_a_connect_closes_idle_pooled_connections_and_succeeds() {
    // Idle pooled connections to one backend held every descriptor left; a request to
    // another backend then got 503 overloaded, for the sake of connections nobody used.
    // (No admin listener here: its thread's blocking accept reserves a descriptor number,
    // which the limit arithmetic below would count as free.)
    let (b1, b2) = (mock_backend(), mock_backend());
    let services = format!("  a: [http://{}]\n  b: [http://{}]\n", b1.addr, b2.addr);
    let g = gateway(&config(1, "", &services));
    let pid = g.child.id();
    let at_start = fds(pid);
    // Four requests at once to `a`: four upstream connections, then idle in the pool.
    let slow: &'static [u8] =
        b"GET /v1/proxy/a/x HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 200\r\n\r\n";
    for h in spawn_requests(g.addr, 4, slow) {
        assert_eq!(h.join().expect("request").status, 200);
    }
    let mut client = Client::connect(g.addr);
    client.send(b"GET /v1/proxy/a/warm HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    let pooled: Vec<u64> = fds(pid)
        .into_iter()
        .filter(|fd| !at_start.contains(fd))
        .collect();
    assert!(
        pooled.len() >= 5,
        "four pooled and the client's: {pooled:?}"
    );
    // No descriptor to spare: the connect to `b` fails with EMFILE unless idle ones go.
    // A limit is on descriptor numbers, and the pooled ones may sit above holes the
    // closed clients left: fill those with clients first, then set the limit to the
    // lowest free number.
    let highest = *pooled.iter().max().expect("pooled");
    let mut fillers = Vec::new();
    while limit_leaving(pid, 1) - 1 <= highest {
        let open = fds(pid).len();
        fillers.push(Client::connect(g.addr));
        assert!(eventually(Duration::from_secs(3), || fds(pid).len() > open));
    }
    limit_fds(pid, limit_leaving(pid, 1) - 1);
    let open = fds(pid).len();
    client.send(b"GET /v1/proxy/b/x HTTP/1.1\r\nHost: g\r\n\r\n");
    let r = client.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    // The four idle connections to `a` went; one to `b` came.
    assert!(fds(pid).len() <= open - 3, "{open} before, {:?}", fds(pid));
    limit_fds(pid, 4096);
    // `a` still works: a new connection.
    client.send(b"GET /v1/proxy/a/after HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
}

// ---- 9. What the breaker hears about bodies ----

/// Answers GET `/ok` with `200 ok`; any other request with a 200 head whose body it then
/// breaks as `how` says.
fn body_breaker(how: &'static str) -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            if head.starts_with("GET /ok ") {
                if s.write_all(&response("200 OK", "ok")).is_err() {
                    return;
                }
                continue;
            }
            let broken: &[u8] = match how {
                // Bad framing in the first bytes: a clean 502 is still possible.
                "bad-chunk" => {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n"
                }
                // Bad framing after the head went out.
                "bad-later" => {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
                }
                // Then nothing, the connection open: a stall.
                "stall" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b",
                // Closed before the length it announced.
                "short" => b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b",
                // Closed before the last chunk.
                "no-last-chunk" => {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
                }
                _ => unreachable!(),
            };
            let _ = s.write_all(broken);
            match how {
                "bad-later" => {
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = s.write_all(b"not-a-size\r\n");
                    std::thread::sleep(Duration::from_millis(500));
                }
                "stall" => std::thread::sleep(Duration::from_secs(2)),
                _ => {}
            }
            return;
        }
    })
}

/// A 200 head with an 8 MiB body, for clients that leave halfway.
fn big_body_backend() -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(_head) = read_head(&mut s, &mut pending) {
            let size = 8usize << 20;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let piece = vec![b'b'; 64 << 10];
            for _ in 0..size / piece.len() {
                if s.write_all(&piece).is_err() {
                    return;
                }
            }
        }
    })
}

#[test]
fn a_body_the_backend_breaks_is_a_breaker_failure_and_clients_leaving_are_no_verdict() {
    let names = ["bad-chunk", "bad-later", "stall", "short", "no-last-chunk"];
    let backends: Vec<RawBackend> = names.iter().map(|n| body_breaker(n)).collect();
    let big = big_body_backend();
    let mut services: String = names
        .iter()
        .zip(&backends)
        .map(|(n, b)| format!("  {n}: [http://{}]\n", b.addr))
        .collect();
    services.push_str(&format!("  big: [http://{}]\n", big.addr));
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\ntimeouts: {body: 500ms}\nbreaker: {failure_threshold: 3, cooldown: 60s}",
        &services,
    )));
    let mut wrong = Vec::new();
    for (svc, b) in names.iter().zip(&backends) {
        // A healthy answer first: a success in between must not hide what follows.
        match exchange(
            g.proc.addr,
            &format!("GET /v1/proxy/{svc}/ok HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ) {
            Ok(r) if r.status == 200 && text(&r) == "ok" => {}
            other => wrong.push(format!("{svc}: healthy GET: {other:?}")),
        }
        for i in 0..3 {
            let r = exchange(
                g.proc.addr,
                &format!("GET /v1/proxy/{svc}/x{i} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            );
            match (*svc, r) {
                // Caught before anything reached the client: a clean 502.
                ("bad-chunk", Ok(r))
                    if r.status == 502 && error_code(&r) == "backend_bad_response" => {}
                // Caught after the head went out: the client's response is cut short.
                (_, Err(_)) if *svc != "bad-chunk" => {}
                (_, other) => wrong.push(format!("{svc} #{i}: {other:?}")),
            }
        }
        // Bad framing, a stall, and a body cut short while the client kept up are the
        // backend's (a review: one that sent a good head and then died every time stayed in
        // service). A slow reader's cut is not (below).
        let state = circuit(g.admin, b.addr);
        if state != "open" {
            wrong.push(format!(
                "{svc}: circuit {state} after 3 broken bodies (threshold 3), want open"
            ));
        }
    }
    // Clients that read a little of a long body and leave: the backend did nothing wrong.
    for i in 0..4 {
        let mut c = TcpStream::connect(g.proc.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(format!("GET /v1/proxy/big/{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .expect("send");
        let mut got = vec![0u8; 100_000];
        let mut n = 0;
        while n < got.len() {
            match c.read(&mut got[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        if !got.starts_with(b"HTTP/1.1 200") {
            wrong.push(format!(
                "big #{i}: {:?}",
                String::from_utf8_lossy(&got[..n.min(60)])
            ));
        }
        drop(c);
    }
    std::thread::sleep(Duration::from_millis(700)); // the relays notice and end
    let state = circuit(g.admin, big.addr);
    if state != "closed" {
        wrong.push(format!("big: circuit {state} after clients left mid-body"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Answers GET with `200 ok`; for anything else reads the head, waits for the body as a
/// server with a short body-read timeout would, and hangs up without answering.
fn impatient_backend() -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            if head.starts_with("GET ") {
                if s.write_all(&response("200 OK", "ok")).is_err() {
                    return;
                }
                continue;
            }
            std::thread::sleep(Duration::from_millis(300));
            return; // body bytes unread: the close is a reset
        }
    })
}

#[test]
fn a_backend_that_hangs_up_on_a_stalled_upload_opens_no_circuit() {
    let b = impatient_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2, cooldown: 60s}\ntimeouts: {body: 10s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut wrong = Vec::new();
    for i in 0..4 {
        // Ten bytes of a hundred, then nothing: the client is the one who stalls.
        let mut c = Client::connect(g.proc.addr);
        c.send(
            b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\ncontent-length: 100\r\n\r\n0123456789",
        );
        match c.try_read_response(false) {
            Ok(r) if r.status == 502 && error_code(&r) == "backend_closed" => {}
            Ok(r) => wrong.push(format!("upload #{i}: {} {:?}", r.status, text(&r))),
            Err(b) => wrong.push(format!(
                "upload #{i}: ended after {:?}",
                String::from_utf8_lossy(&b)
            )),
        }
    }
    wrong.extend(still_healthy(&g, b.addr, "4 stalled uploads (threshold 2)"));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_304_announcing_a_body_is_never_reused_for_the_next_request() {
    // Each connection: a 304 announcing 5 bytes (or a transfer coding), then, after the next
    // request has had time to be written on it, a whole forged response; later requests on
    // it get `fresh`. A pooled connection would hand the forgery to the next client.
    for first in [
        "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        let backend = RawBackend::start(move |mut s, _| {
            let mut pending = Vec::new();
            let mut answered = false;
            while let Some(_head) = read_head(&mut s, &mut pending) {
                if answered {
                    if s.write_all(FRESH.as_bytes()).is_err() {
                        return;
                    }
                    continue;
                }
                answered = true;
                let _ = s.write_all(first.as_bytes());
                std::thread::sleep(Duration::from_millis(50));
                let _ = s.write_all(EVIL.as_bytes());
            }
        });
        let g = gateway_at(&write_config(&config(
            1,
            "admin: 127.0.0.1:0",
            &format!("  svc: [http://{}]\n", backend.addr),
        )));
        let mut c = Client::connect(g.proc.addr);
        for i in 0..3 {
            c.send(format!("GET /v1/proxy/svc/{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
            let r = c.read_response();
            assert_eq!(
                (r.status, text(&r).as_str()),
                (304, ""),
                "{first:?}: request {i} got another answer"
            );
        }
        assert_eq!(
            backend.conns.load(Ordering::SeqCst),
            3,
            "{first:?}: a backend connection was reused after a 304 announcing a body"
        );
    }
}

/// Echoes every `x-` field of the request back in its response head, with a few of its
/// own, as some backends do with request ids.
fn echo_backend() -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let mut out = String::from("HTTP/1.1 200 OK\r\n");
            for line in head.lines().skip(1) {
                if line.to_ascii_lowercase().starts_with("x-") {
                    out.push_str(line);
                    out.push_str("\r\n");
                }
            }
            for i in 0..30 {
                out.push_str(&format!("x-own-{i}: {}\r\n", "o".repeat(40)));
            }
            out.push_str("content-length: 2\r\n\r\nok");
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_response_head_a_client_pushed_over_our_limits_opens_no_circuit() {
    let b = echo_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2, cooldown: 60s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    // Just under the request limits (32 KiB, 100 fields); the echo takes the response over.
    let big = format!("x-big: {}\r\n", "b".repeat(32 * 1024 - 200));
    let many: String = (0..98).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut wrong = Vec::new();
    for (what, fields, detail) in [
        ("one big field", &big, "response_head_too_large"),
        ("many fields", &many, "too_many_response_headers"),
    ] {
        for i in 0..3 {
            let raw = format!("GET /v1/proxy/svc/{i} HTTP/1.1\r\nHost: gw\r\n{fields}\r\n");
            match exchange(g.proc.addr, &raw) {
                Ok(r) if r.status == 502 && r.json()["detail"] == detail => {}
                other => wrong.push(format!("{what} #{i}: {other:?}")),
            }
        }
    }
    // No verdict, and no success in the counts either: each was a 502 to its client
    // (a review: `successes` rose by one each, so such a backend looked healthy).
    let v = get(g.admin, "/admin/backends").json();
    let backend = &v["services"][0]["backends"][0];
    if (backend["successes"].as_u64(), backend["failures"].as_u64()) != (Some(0), Some(0)) {
        wrong.push(format!("counted: {backend}"));
    }
    wrong.extend(still_healthy(
        &g,
        b.addr,
        "6 echoed heads over the limits (threshold 2)",
    ));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A counting backend as the one backend of `svc` (breaker threshold 1, cooldown 1 s, body
/// timeout 10 s), its circuit opened by a 500, the backend answering 200 from then on.
fn one_backend_opened_then_healthy() -> (RawBackend, AdminGateway, Arc<AtomicBool>) {
    let ok = Arc::new(AtomicBool::new(false));
    let b = counting_backend(Arc::default(), ok.clone(), Arc::default());
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\ntimeouts: {body: 10s}\nbreaker: {failure_threshold: 1, cooldown: 1s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/x").status, 500);
    assert_eq!(circuit(g.admin, b.addr), "open");
    ok.store(true, Ordering::SeqCst);
    (b, g, ok)
}

#[test]
fn a_slow_upload_cannot_hold_the_probe_and_uploads_alone_still_close_the_circuit() {
    let (b, g, ok) = one_backend_opened_then_healthy();
    let addr = g.proc.addr;
    std::thread::sleep(Duration::from_millis(1200)); // due for a probe; not yet for uploads

    // A slow uploader comes first: ten bytes of a hundred, then nothing.
    let mut slow = Client::connect(addr);
    slow.send(
        b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\ncontent-length: 100\r\n\r\n0123456789",
    );
    let r = slow.try_read_response(false);
    assert!(
        matches!(&r, Ok(r) if r.status == 503 && error_code(r) == "no_backend_available"),
        "a request still streaming its body was let in as the probe: {r:?}"
    );
    // The next request with its body in hand probes, and closes the circuit.
    let r = get(addr, "/v1/proxy/svc/x");
    assert_eq!(
        (r.status, text(&r).as_str()),
        (200, "ok"),
        "the probe after a slow uploader"
    );
    assert_eq!(circuit(g.admin, b.addr), "closed");

    // Open it again; with nothing but streamed uploads coming, one probes a cooldown later.
    ok.store(false, Ordering::SeqCst);
    assert_eq!(get(addr, "/v1/proxy/svc/x").status, 500);
    assert_eq!(circuit(g.admin, b.addr), "open");
    ok.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(2200));
    let mut up = Client::connect(addr);
    up.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\ncontent-length: 20\r\n\r\n0123456789");
    std::thread::sleep(Duration::from_millis(100));
    up.send(b"0123456789");
    let r = up.try_read_response(false);
    assert!(
        matches!(&r, Ok(r) if r.status == 200 && text(r) == "ok"),
        "a streamed upload did not probe after two cooldowns: {r:?}"
    );
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// Regression (a hostile-client review, 2026-12-05): an upload that had become the probe
/// (no other request came while the circuit was due) held the circuit half-open, and every
/// other request of a one-backend service out with a 503, for as long as its client kept
/// the upload above `limits.min_body_rate`: up to 72 h at the defaults; one whose client
/// sent nothing more, until `timeouts.body`. Once its client has kept it waiting a second
/// it hands the probe back, the next request probes, and the upload goes on to its answer.
#[test]
fn a_slow_upload_that_took_the_probe_hands_it_back() {
    // A trickle above `min_body_rate`, then a client that sends nothing after its head.
    for trickle in [true, false] {
        upload_probe_hands_back(trickle);
    }
}

/// A review of the hand-back: a service whose every request is an upload taking over a
/// second would never close its circuit (each probe handed back, its answer ignored). The
/// answer of an upload that handed the probe back closes the circuit, unless something
/// happened to the circuit since (another probe: see the test above).
#[test]
fn an_upload_that_handed_the_probe_back_closes_the_circuit_with_its_answer() {
    let (b, g, _) = one_backend_opened_then_healthy();
    let addr = g.proc.addr;
    std::thread::sleep(Duration::from_millis(2200)); // due for an upload too
    let mut c = Client::connect(addr);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\ncontent-length: 1200\r\n\r\n");
    let mut states = Vec::new();
    for i in 0..30 {
        c.send(&[b'x'; 40]);
        std::thread::sleep(Duration::from_millis(100));
        if i % 5 == 4 {
            states.push(circuit(g.admin, b.addr));
        }
    }
    let r = c.try_read_response(false);
    assert!(
        matches!(&r, Ok(r) if r.status == 200 && text(r) == "ok"),
        "{r:?}"
    );
    // The probe at first, then handed back (the circuit open, backing off).
    assert_eq!(
        states.first().map(String::as_str),
        Some("half_open"),
        "{states:?}"
    );
    assert!(states.iter().any(|s| s == "open"), "{states:?}");
    // Judged once the answer has gone to the client: a moment after the client reads it.
    assert!(
        eventually(Duration::from_secs(2), || circuit(g.admin, b.addr)
            == "closed"),
        "{states:?}"
    );
    // And counted among the backend's successes (the 500 that opened it is its failure).
    let v = get(g.admin, "/admin/backends").json();
    let backend = &v["services"][0]["backends"][0];
    assert_eq!(
        (backend["successes"].as_u64(), backend["failures"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
}

fn upload_probe_hands_back(trickle: bool) {
    let (b, g, _) = one_backend_opened_then_healthy();
    let addr = g.proc.addr;
    std::thread::sleep(Duration::from_millis(2200)); // due for an upload too

    // 2 400 bytes at 400 bytes/s (above `min_body_rate`): 6 s; or 40 of them, then nothing
    // for 6 s (the body timeout is 10 s).
    let uploading = Arc::new(AtomicBool::new(true));
    let still = uploading.clone();
    let uploader = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\ncontent-length: 2400\r\n\r\n");
        for i in 0..60 {
            if trickle || i == 0 {
                c.send(&[b'x'; 40]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        still.store(false, Ordering::SeqCst);
        c.try_read_response(false).map(|r| (r.status, text(&r)))
    });
    assert!(
        eventually(Duration::from_millis(900), || circuit(g.admin, b.addr)
            == "half_open"),
        "the upload did not probe (trickle: {trickle})"
    );
    // Another client's request gets in while the upload still goes on.
    let mut seen = Vec::new();
    let started = Instant::now();
    while uploading.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(5) {
        let r = get(addr, "/v1/proxy/svc/x");
        seen.push(r.status);
        if r.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        seen.last(),
        Some(&200),
        "kept out while the upload held the probe (trickle: {trickle}): {seen:?}"
    );
    assert!(uploading.load(Ordering::SeqCst), "the upload had ended");
    assert_eq!(circuit(g.admin, b.addr), "closed");
    let up = uploader.join().unwrap();
    if trickle {
        // And the upload reaches its answer.
        assert!(
            matches!(&up, Ok((200, body)) if body == "ok"),
            "the upload: {up:?}"
        );
    }
}

#[test]
fn an_interim_response_reaches_the_client_without_hop_by_hop_fields() {
    let b = RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(_head) = read_head(&mut s, &mut pending) {
            let interim = "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\
                Connection: close, X-Secret\r\nX-Secret: s\r\nTransfer-Encoding: chunked\r\n\
                Proxy-Authenticate: x\r\nKeep-Alive: timeout=5\r\n\r\n";
            if s.write_all(interim.as_bytes()).is_err()
                || s.write_all(&response("200 OK", "ok")).is_err()
            {
                return;
            }
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut c = TcpStream::connect(g.proc.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    for i in 0..2 {
        c.write_all(format!("GET /v1/proxy/svc/{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .expect("send");
        let mut got = Vec::new();
        let mut tmp = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            match c.read(&mut tmp) {
                Ok(0) | Err(_) => panic!(
                    "request {i}: ended after {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Ok(n) => got.extend_from_slice(&tmp[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        let interim = &text[..text.find("\r\n\r\n").expect("interim head") + 4];
        assert!(
            interim.starts_with("http/1.1 103 early hints\r\n"),
            "{interim:?}"
        );
        assert!(
            interim.contains("link: </s.css>; rel=preload\r\n"),
            "{interim:?}"
        );
        for hop in [
            "connection",
            "x-secret",
            "transfer-encoding",
            "proxy-authenticate",
            "keep-alive",
            "content-length",
        ] {
            assert!(
                !interim.contains(&format!("\r\n{hop}:")),
                "{hop} in {interim:?}"
            );
        }
        assert!(text.contains("http/1.1 200 ok\r\n"), "{text:?}");
    }
}

/// A splice review's client, which sent `Expect: 100-continue`, got `100, 100, 103, 200`:
/// ours and the backend's, though no `Expect` goes up. A backend's `100` is dropped now (as
/// NGINX drops it); its other interim answers still go on.
#[test]
fn a_backends_100_continue_is_not_relayed_beside_ours() {
    let b = RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let body = if head.to_ascii_lowercase().contains("content-length: 2") {
                2
            } else {
                0
            };
            while pending.len() < body {
                let mut tmp = [0u8; 16];
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&tmp[..n]),
                }
            }
            pending.drain(..body);
            let answer = [
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                    [..],
                &response("200 OK", "ok"),
            ]
            .concat();
            if s.write_all(&answer).is_err() {
                return;
            }
        }
    });
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", b.addr)));
    let mut c = Client::connect(g.addr);
    for (raw, ours) in [
        ("POST /v1/proxy/svc/e HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", true),
        ("GET /v1/proxy/svc/g HTTP/1.1\r\nHost: gw\r\n\r\n", false),
    ] {
        c.send(raw.as_bytes());
        let mut statuses = Vec::new();
        if ours {
            statuses.push(c.read_response().status);
            c.send(b"hi");
        }
        loop {
            let r = c.read_response();
            statuses.push(r.status);
            if r.status >= 200 {
                assert_eq!(r.text(), "ok");
                break;
            }
        }
        let want: &[u16] = if ours { &[100, 103, 200] } else { &[103, 200] };
        assert_eq!(statuses, want, "{raw:?}");
    }
}

#[test]
fn a_backend_that_hangs_up_on_uploads_sent_at_full_speed_is_a_failure() {
    // Reads the head, then closes: the body it never read makes the close a reset.
    let b = RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_some() {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2, cooldown: 60s}\nlimits: {max_body_bytes: 67108864}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut got = Vec::new();
    for _ in 0..3 {
        match upload(g.proc.addr, "/v1/proxy/svc/up", false) {
            Ok(r) => got.push(format!("{} {}", r.status, error_code(&r))),
            Err(e) => got.push(e),
        }
    }
    assert_eq!(
        circuit(g.admin, b.addr),
        "open",
        "a backend that hung up on three uploads the client sent as fast as it could: {got:?}"
    );
}

#[test]
fn trailers_a_client_pushed_over_our_limit_open_no_circuit() {
    // Echoes the request's x-echo field into a trailer, as a status message might.
    let b = RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let echo = header_value(&head, "x-echo").unwrap_or("").to_string();
            let out = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-echo: {echo}\r\n\r\n"
            );
            if s.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2, cooldown: 60s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let raw = format!(
        "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: gw\r\nx-echo: {}\r\n\r\n",
        "e".repeat(20_000)
    );
    for _ in 0..4 {
        let _ = exchange(g.proc.addr, &raw); // cut short: the trailer is over our limit
    }
    let wrong = still_healthy(&g, b.addr, "4 trailers over the limit (threshold 2)");
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---- Full duplex: backends that answer before they read the body ----

/// Answers every request at once with a head announcing 20 bytes, then reads the whole
/// Content-Length body, then sends its length as those 20 bytes; or (`echo`) answers with
/// a head announcing the body's length and echoes the body as it reads it.
fn head_first_backend(echo: bool) -> RawBackend {
    RawBackend::start(move |mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let len: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let announced = if echo { len } else { 20 };
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {announced}\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut left = len;
            let mut tmp = vec![0u8; 16384];
            while left > 0 {
                let n = if pending.is_empty() {
                    match s.read(&mut tmp[..left.min(16384)]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    }
                } else {
                    let n = pending.len().min(left).min(16384);
                    tmp[..n].copy_from_slice(&pending[..n]);
                    pending.drain(..n);
                    n
                };
                left -= n;
                if echo && s.write_all(&tmp[..n]).is_err() {
                    return;
                }
            }
            if !echo && s.write_all(format!("{len:020}").as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// Regression: a backend that sends its head before reading the body (a handler that
/// flushes early) got no more of the body once its head arrived: the gateway took the head
/// for an early answer and stopped the upload, both sides waited, the client got the head
/// and a reset after `timeouts.body`, and the breaker counted a failure, so three clients
/// whose bodies came after a pause, or with `Expect: 100-continue`, opened a healthy
/// backend's circuit (a review). The upload now goes on beside the answer.
#[test]
fn a_backend_that_answers_before_it_reads_the_body_gets_it_and_the_client_the_answer() {
    let b = head_first_backend(false);
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 60s}\ntimeouts: {body: 3s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    for (i, expect) in [false, true, false, true].into_iter().enumerate() {
        let mut c = Client::connect(g.proc.addr);
        let continue_line = if expect {
            "expect: 100-continue\r\n"
        } else {
            ""
        };
        c.send(
            format!("POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\n{continue_line}content-length: 100000\r\n\r\n")
                .as_bytes(),
        );
        if expect {
            assert_eq!(c.read_response().status, 100, "request {i}");
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        c.send(&[b'x'; 100_000]);
        let r = c.read_response();
        assert_eq!(
            (r.status, text(&r)),
            (200, format!("{:020}", 100_000)),
            "request {i}"
        );
        // The exchange was whole on both sides: the client connection is kept.
        c.send(b"POST /v1/proxy/svc/again HTTP/1.1\r\nHost: g\r\ncontent-length: 3\r\n\r\nabc");
        let r = c.read_response();
        assert_eq!(
            (r.status, text(&r)),
            (200, format!("{:020}", 3)),
            "request {i}, again"
        );
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// Regression: a backend that answers at once and keeps its connection, discarding the body
/// afterwards (a 401 from a Node-style server), had its answer relayed without
/// `Connection: close`, and then the client connection closed under the client's upload:
/// the answer ends before the upload, and the rest of the body is never read. It now says
/// so (RFC 9112 §9.6), as an early answer that closes the backend's connection does.
#[test]
fn an_answer_in_hand_before_the_upload_ends_tells_the_client_the_connection_closes() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let len: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\r\nunauthorized";
            if s.write_all(answer).is_err() {
                return;
            }
            let mut left = len.saturating_sub(pending.len());
            pending.clear();
            let mut tmp = vec![0u8; 16384];
            while left > 0 {
                match s.read(&mut tmp[..left.min(16384)]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n,
                }
            }
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 1000000\r\n\r\n");
    c.send(&[b'x'; 1000]);
    let r = c.read_response();
    assert_eq!((r.status, text(&r)), (401, "unauthorized".to_string()));
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);
    // And it does close (lingering for what the client still sends, then a FIN).
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(circuit(g.admin, b.addr), "closed");
    // A quick upload the backend reads before it answers keeps the connection.
    let mut c = Client::connect(g.proc.addr);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 3\r\n\r\nabc");
    let r = c.read_response();
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), None, "{:?}", r.headers);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 3\r\n\r\nabc");
    assert_eq!(c.read_response().status, 401);
}

/// A backend that streams its answer while it reads the body (an echo) gets all of a body
/// far larger than the sockets' buffers, and the client all of the answer.
#[test]
fn a_streaming_echo_gets_the_whole_body_while_the_client_reads_the_answer() {
    const SIZE: usize = 16 << 20;
    let b = head_first_backend(true);
    let g = gateway(&config(
        1,
        "limits: {max_body_bytes: 67108864}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let mut s = TcpStream::connect(g.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let head = format!(
            "POST /v1/proxy/svc/echo HTTP/1.1\r\nHost: g\r\ncontent-length: {SIZE}\r\n\r\n"
        );
        w.write_all(head.as_bytes()).expect("head");
        let piece: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..SIZE / piece.len() {
            w.write_all(&piece).expect("body");
        }
    });
    let mut got = Vec::new();
    let mut tmp = vec![0u8; 65536];
    let head_end = loop {
        if let Some(p) = find(&got, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut tmp).expect("head");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&tmp[..n]);
    };
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..head_end])
    );
    while got.len() - head_end < SIZE {
        let n = s.read(&mut tmp).expect("the echo stalled");
        assert!(
            n > 0,
            "closed after {} bytes of the echo",
            got.len() - head_end
        );
        got.extend_from_slice(&tmp[..n]);
    }
    writer.join().expect("writer");
    let body = &got[head_end..];
    assert_eq!(body.len(), SIZE);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, &v)| v == ((i % 65536) % 251) as u8),
        "the echo differs"
    );
}

/// Regression (a re-review of the full-duplex change): while the body still went up, a
/// backend waiting for more of it before it sent more of its answer was judged a failure
/// once `timeouts.body` passed, so three clients that stalled their uploads opened its
/// circuit. Such a stall is the client's pace: the client's connection is reset, with no
/// verdict.
#[test]
fn clients_stalling_their_uploads_under_a_head_first_answer_open_no_circuit() {
    let b = head_first_backend(false);
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}\ntimeouts: {body: 1s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    for i in 0..4 {
        let mut c = Client::connect(g.proc.addr);
        c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 6000\r\n\r\n");
        std::thread::sleep(Duration::from_millis(50));
        c.send(&[b'x'; 100]);
        // Then nothing: the backend has its head out and waits for the rest.
        let got = c.read_until_end();
        assert!(
            got.is_err() || got.as_ref().is_ok_and(|b| b.len() < 200),
            "request {i}"
        );
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// Regression (the same re-review): a keep-alive early answer whose chunked framing was
/// broken in the bytes that came with its head reset the uploading client, logged as a
/// 200; nothing had reached the client, so it is the contract's clean 502, closing
/// lingering.
#[test]
fn an_early_answer_with_broken_framing_is_a_502_while_the_client_uploads() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n");
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", b.addr)));
    let mut c = Client::connect(g.addr);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 100000\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    c.send(&[b'x'; 1000]);
    let r = c.read_response();
    assert_eq!(
        (r.status, error_code(&r)),
        (502, "backend_bad_response".to_string())
    );
}

/// Regression (the same re-review): a client that reset its connection in the middle of a
/// full-duplex exchange was logged as a complete 200 with the head's bytes alone: the
/// relay's count went with it. The line now has the bytes that got through and
/// `response_cut_short`.
#[test]
fn a_client_that_resets_mid_duplex_is_logged_cut_short_with_its_bytes() {
    let b = head_first_backend(true);
    let log = std::env::temp_dir().join(format!("gateway-up-{}-duplex.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let g = gateway(&config(
        1,
        &format!("access_log: {}", log.display()),
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let mut c = Client::connect(g.addr);
    c.send(b"POST /v1/proxy/svc/duplex HTTP/1.1\r\nHost: g\r\ncontent-length: 1000000\r\n\r\n");
    c.send(&[b'x'; 300_000]);
    let mut got = 0;
    let mut tmp = [0u8; 65536];
    while got < 200_000 {
        let n = c.stream.read(&mut tmp).expect("echo");
        assert!(n > 0, "closed early");
        got += n;
    }
    reset(c);
    let (text, f) = logged_line(&log, "/duplex");
    assert_eq!(
        (f[6].as_str(), f[10].as_str()),
        ("200", "response_cut_short"),
        "{text}"
    );
    let bytes: u64 = f[7].parse().expect("bytes");
    assert!(bytes >= 200_000, "{text}");
}

/// Regression (a third review): once a stalled answer during an upload was no verdict, a
/// backend that sent an early head and then neither read the body nor sent more was
/// never judged when the body was large. Only a stall while the upload waits on the
/// client is excused; one that also holds the upload up is a failure.
#[test]
fn a_backend_that_stops_reading_and_sending_after_an_early_head_is_judged() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
            std::thread::sleep(Duration::from_secs(6));
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2, cooldown: 60s}\ntimeouts: {body: 1s}\nlimits: {max_body_bytes: 67108864}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    for i in 0..2 {
        let r = upload(g.proc.addr, "/v1/proxy/svc/up", false);
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|r| r.status == 200),
            "upload {i}: {:?}",
            r.err()
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || circuit(g.admin, b.addr)
            == "open"),
        "the stalled backend was not judged: {}",
        circuit(g.admin, b.addr)
    );
}

/// Regression: a backend that sends its head at once and the rest of its answer once it
/// has the whole body cut the client off when the upload took longer than `timeouts.body`:
/// the answer's wait ran out while the body still went up at a steady pace (a reset, no
/// verdict). Its waits now stay open while the upload runs, and `timeouts.body` counts
/// again from the upload's end. A long answer is spliced with `splice: true`: its waits
/// are held the same way. Under CI load this test also caught the spliced answer and the
/// upload ending in the same turn of the worker, the answer winning the race and the client
/// connection closed as if the upload had been cut (`Race` of the two in the exchange now
/// polls the upload once more).
#[test]
fn an_answer_that_waits_for_an_upload_longer_than_the_body_timeout_arrives_whole() {
    const ANSWER: usize = 200_000;
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let len: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {ANSWER}\r\n\r\n");
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let mut got = std::mem::take(&mut pending).len();
            let mut tmp = [0u8; 4096];
            while got < len {
                match s.read(&mut tmp[..(len - got).min(4096)]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            let answer: Vec<u8> = (0..ANSWER).map(|i| (i % 249) as u8).collect();
            if s.write_all(&answer).is_err() {
                return;
            }
        }
    });
    for extra in ["", "\nsplice: true"] {
        let g = gateway_at(&write_config(&config(
            1,
            &format!("admin: 127.0.0.1:0\nbreaker: {{failure_threshold: 1, cooldown: 60s}}\ntimeouts: {{body: 2s}}{extra}"),
            &format!("  svc: [http://{}]\n", b.addr),
        )));
        let mut c = Client::connect(g.proc.addr);
        c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 1600\r\n\r\n");
        // 3.2 s of upload, never 2 s without a byte (a margin for a noisy machine), and
        // above `min_body_rate`.
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(400));
            c.send(&[b'x'; 200]);
        }
        let r = c.read_response();
        assert_eq!(r.status, 200, "{extra:?}");
        assert!(
            r.body.len() == ANSWER
                && r.body
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| v == (i % 249) as u8),
            "{extra:?}: {} bytes",
            r.body.len()
        );
        // Whole on both sides: the client connection is kept, the backend not blamed.
        c.send(b"POST /v1/proxy/svc/again HTTP/1.1\r\nHost: g\r\ncontent-length: 3\r\n\r\nabc");
        assert_eq!(c.read_response().body.len(), ANSWER, "{extra:?}");
        assert_eq!(circuit(g.admin, b.addr), "closed", "{extra:?}");
    }
}

/// The other side of the regression above: once the backend has the whole body, it gets
/// `timeouts.body` for the rest of its answer and no more, and is judged.
#[test]
fn an_answer_that_stays_silent_after_the_whole_upload_is_judged_at_the_body_timeout() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
            let mut tmp = [0u8; 4096];
            let mut got = pending.len();
            while got < 1000 {
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            std::thread::sleep(Duration::from_secs(8));
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 60s}\ntimeouts: {body: 2s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\ncontent-length: 1000\r\n\r\n");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        c.send(&[b'x'; 200]);
    }
    let uploaded = Instant::now();
    let got = c.read_until_end();
    let waited = uploaded.elapsed();
    // 10 of 100 bytes and a reset: an answer that cannot look complete.
    assert!(got.is_err(), "{got:?}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "cut {waited:?} after the upload's end"
    );
    assert!(
        eventually(Duration::from_secs(3), || circuit(g.admin, b.addr)
            == "open"),
        "the silent backend was not judged: {}",
        circuit(g.admin, b.addr)
    );
}

/// Answers `GET /fail` with a 500 and `GET /ok` with a 200; for a request with a body, waits
/// 1.2 s for all of it and answers 503 if it does not come (how Go's `TimeoutHandler` or
/// Express's `connect-timeout` give up on a slow upload), 200 if it does (503 with `x-fail`,
/// a failing backend); a request with
/// `x-big: STATUS` gets that status with a head over the gateway's 32 KiB limit (a CORS
/// handler that echoes what it is sent); one with `x-fail-fast` a 500 at once, its body
/// unread, and a close.
fn judging_backend() -> RawBackend {
    RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let len: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let answer = if head.starts_with("GET /fail ") {
                response("500 Internal Server Error", "no")
            } else if header_value(&head, "x-fail-fast").is_some() {
                // A dependency down: 500 on the head, the body never read.
                let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno");
                return;
            } else if let Some(status) = header_value(&head, "x-big") {
                let pad = "p".repeat(40_000);
                format!("HTTP/1.1 {status} X\r\nx-pad: {pad}\r\ncontent-length: 2\r\n\r\nok")
                    .into_bytes()
            } else if header_value(&head, "transfer-encoding").is_some() {
                // Chunked: the whole body is there once its last chunk is.
                let _ = s.set_read_timeout(Some(Duration::from_millis(1200)));
                let mut tmp = [0u8; 4096];
                while find(&pending, b"0\r\n\r\n").is_none() {
                    match s.read(&mut tmp) {
                        Ok(n) if n > 0 => pending.extend_from_slice(&tmp[..n]),
                        _ => break,
                    }
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                match find(&pending, b"0\r\n\r\n") {
                    None => response("503 Service Unavailable", "slow body"),
                    Some(p) => {
                        pending.drain(..p + 5);
                        response("200 OK", "ok")
                    }
                }
            } else if len > 0 {
                let began = std::time::Instant::now();
                // With a deadline for the whole request, the body is waited for longer.
                let wait = match header_value(&head, "x-deadline-ms") {
                    Some(_) => Duration::from_secs(5),
                    None => Duration::from_millis(1200),
                };
                let _ = s.set_read_timeout(Some(wait));
                let mut tmp = [0u8; 4096];
                while pending.len() < len {
                    match s.read(&mut tmp) {
                        Ok(n) if n > 0 => pending.extend_from_slice(&tmp[..n]),
                        _ => break,
                    }
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
                if pending.len() < len {
                    response("503 Service Unavailable", "slow body")
                } else {
                    pending.drain(..len);
                    // A deadline for the whole request, as Go's TimeoutHandler has.
                    let late = header_value(&head, "x-deadline-ms")
                        .and_then(|v| v.parse().ok())
                        .is_some_and(|ms| began.elapsed() > Duration::from_millis(ms));
                    match header_value(&head, "x-fail") {
                        Some(_) => response("503 Service Unavailable", "failing"),
                        None if late => response("503 Service Unavailable", "deadline"),
                        None => response("200 OK", "ok"),
                    }
                }
            } else {
                response("200 OK", "ok")
            };
            if s.write_all(&answer).is_err() {
                return;
            }
        }
    })
}

/// Regression (a hostile-client review): a backend that gives up on a stalled upload with a
/// 503 had each counted as a failure, so a client pausing three uploads opened a healthy
/// backend's circuit for everyone. A failure status that comes while the backend waits on
/// the client is no verdict now; one that comes with the whole body in hand still counts.
#[test]
fn a_client_that_stalls_its_uploads_cannot_open_a_circuit() {
    let b = judging_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}\ntimeouts: {body: 2s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    for (i, raw) in [
        "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc",
        "POST /v1/proxy/svc/b HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n",
        "POST /v1/proxy/svc/c HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        "POST /v1/proxy/svc/d HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc",
    ]
    .iter()
    .enumerate()
    {
        let mut c = Client::connect(g.proc.addr);
        c.send(raw.as_bytes());
        let mut r = c.read_response();
        if r.status == 100 {
            r = c.read_response();
        }
        assert_eq!((r.status, text(&r).as_str()), (503, "slow body"), "#{i}");
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
    // Half the body, a pause, the rest: whole, but past the backend's deadline for the
    // request (a re-review opened the circuit with three).
    for i in 0..3 {
        let mut c = Client::connect(g.proc.addr);
        c.send(b"POST /v1/proxy/svc/late HTTP/1.1\r\nHost: g\r\nx-deadline-ms: 1000\r\nContent-Length: 10\r\n\r\nhello");
        std::thread::sleep(Duration::from_millis(1300));
        c.send(b"world");
        let r = c.read_response();
        assert_eq!(
            (r.status, text(&r).as_str()),
            (503, "deadline"),
            "late #{i}"
        );
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
    assert_eq!(
        exchange(
            g.proc.addr,
            "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n"
        )
        .map(|r| r.status),
        Ok(200)
    );
    // A 500 on the head from a backend failing fast is the backend's, the body coming a
    // few ms later (a re-review: never judged when the no-verdict rule took any answer
    // before the body's end): three open the circuit.
    for i in 0..3 {
        let mut c = Client::connect(g.proc.addr);
        c.send(b"POST /v1/proxy/svc/ff HTTP/1.1\r\nHost: g\r\nx-fail-fast: 1\r\nContent-Length: 5\r\n\r\n");
        std::thread::sleep(Duration::from_millis(20));
        let _ = c.stream.write_all(b"hello");
        let r = c.read_response();
        assert_eq!(r.status, 500, "#{i}");
    }
    assert_eq!(circuit(g.admin, b.addr), "open");
}

/// The other side of the rule above: a 503 to a whole upload is the backend's.
#[test]
fn a_failure_status_to_a_whole_upload_counts() {
    let b = judging_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    for i in 0..3 {
        let r = exchange(
            g.proc.addr,
            &format!("POST /v1/proxy/svc/w{i} HTTP/1.1\r\nHost: g\r\nx-fail: 1\r\nContent-Length: 3\r\n\r\nabc"),
        );
        assert_eq!(r.map(|r| r.status), Ok(503), "#{i}");
    }
    assert_eq!(circuit(g.admin, b.addr), "open");
}

/// Regression (a hostile-client review): a probe whose answer's head was over the gateway's
/// limits was handed back like an abandoned one, the circuit kept open with a backoff; a
/// client that sent such a request whenever a probe was due (its 503s say when) kept a
/// healthy backend out of service for good. The backend answered: the probe closes it, as
/// a 4xx does; outside a probe it is still no verdict.
#[test]
fn a_probe_answered_with_an_oversized_head_closes_the_circuit() {
    let b = judging_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 300ms}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let big = "GET /v1/proxy/svc/cors HTTP/1.1\r\nHost: g\r\nx-big: 200\r\n\r\n";
    // Closed: no verdict, the circuit stays closed.
    let r = exchange(g.proc.addr, big).expect("answer");
    assert_eq!(
        (r.status, error_code(&r)),
        (502, "backend_bad_response".to_string())
    );
    assert_eq!(circuit(g.admin, b.addr), "closed");
    // Opened by a real failure; the probe, when due, is the oversized one.
    let r = exchange(
        g.proc.addr,
        "GET /v1/proxy/svc/fail HTTP/1.1\r\nHost: g\r\n\r\n",
    );
    assert_eq!(r.map(|r| r.status), Ok(500));
    assert_eq!(circuit(g.admin, b.addr), "open");
    std::thread::sleep(Duration::from_millis(400));
    let r = exchange(g.proc.addr, big).expect("answer");
    assert_eq!(r.status, 502, "{}", text(&r));
    assert_eq!(circuit(g.admin, b.addr), "closed");
    let r = exchange(
        g.proc.addr,
        "GET /v1/proxy/svc/ok HTTP/1.1\r\nHost: g\r\n\r\n",
    );
    assert_eq!(r.map(|r| r.status), Ok(200));
    // An oversized head whose status says failure is a failure, probe or not (a re-review:
    // it closed a failing backend's circuit).
    let big500 = "GET /v1/proxy/svc/cors HTTP/1.1\r\nHost: g\r\nx-big: 500\r\n\r\n";
    assert_eq!(exchange(g.proc.addr, big500).map(|r| r.status), Ok(502));
    assert_eq!(circuit(g.admin, b.addr), "open");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(exchange(g.proc.addr, big500).map(|r| r.status), Ok(502));
    assert_eq!(
        circuit(g.admin, b.addr),
        "open",
        "the probe failed: re-opened"
    );
}

/// Regression (a hostile-client review): a stream whose events come further apart than
/// `timeouts.body` (server-sent events, a chunked long poll) was judged broken at each
/// stall, so three subscribers opened a healthy backend's circuit. A stall in a chunked or
/// close-delimited body is no verdict now; a Content-Length body that stops still is one
/// (`a_body_the_backend_breaks_is_a_breaker_failure_and_one_cut_short_is_no_verdict`).
#[test]
fn quiet_streams_cut_at_the_body_timeout_do_not_open_a_circuit() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_some() {
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n3\r\n:\n\n\r\n";
            if s.write_all(head).is_ok() {
                std::thread::sleep(Duration::from_millis(1500));
            }
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}\ntimeouts: {body: 500ms}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    for i in 0..3 {
        let r = exchange(
            g.proc.addr,
            &format!("GET /v1/proxy/svc/events{i} HTTP/1.1\r\nHost: g\r\n\r\n"),
        );
        assert!(r.is_err(), "#{i}: the stream must be cut: {r:?}");
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// Regression (a review): a backend could send any number of interim responses before its
/// final one, each parsed and relayed (a million 103s: 40 MB, 4.4 s of the worker's CPU).
/// Up to 64 KiB of them are relayed; more is a 502 `too_many_interim_responses`, with no
/// verdict (a long operation sending 102s is no failing backend), except for a probe,
/// which it fails (it used to close the circuit: a review).
#[test]
fn a_flood_of_interim_responses_is_cut_at_64_kib() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        while let Some(head) = read_head(&mut s, &mut pending) {
            let n: usize = header_value(&head, "x-hints")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut out = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n".repeat(n);
            out.extend_from_slice(&match header_value(&head, "x-fail") {
                Some(_) => response("500 Internal Server Error", "no"),
                None => response("200 OK", "ok"),
            });
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 1s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let mut c = Client::connect(g.proc.addr);
    // 1000 heads of 44 bytes: 44 000, within the limit.
    c.send(b"GET /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\nx-hints: 1000\r\n\r\n");
    for i in 0..1000 {
        assert_eq!(c.read_response().status, 103, "#{i}");
    }
    let r = c.read_response();
    assert_eq!((r.status, text(&r).as_str()), (200, "ok"));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/b HTTP/1.1\r\nHost: g\r\nx-hints: 2000\r\n\r\n");
    let mut r = c.read_response();
    while r.status == 103 {
        r = c.read_response();
    }
    assert_eq!(r.status, 502);
    let detail =
        serde_json::from_slice::<serde_json::Value>(&r.body).expect("json")["detail"].clone();
    assert_eq!(detail, "too_many_interim_responses");
    assert_eq!(circuit(g.admin, b.addr), "closed", "no verdict");

    // The circuit opens on a 500; the probe after the cooldown is flooded: it stays open.
    let flood = |hints: usize| {
        let mut c = Client::connect(g.proc.addr);
        c.send(
            format!("GET /v1/proxy/svc/c HTTP/1.1\r\nHost: g\r\nx-hints: {hints}\r\n\r\n")
                .as_bytes(),
        );
        let mut r = c.read_response();
        while r.status == 103 {
            r = c.read_response();
        }
        r.status
    };
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/d HTTP/1.1\r\nHost: g\r\nx-fail: 1\r\n\r\n");
    assert_eq!(c.read_response().status, 500);
    assert_eq!(circuit(g.admin, b.addr), "open");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(flood(2000), 502, "the probe");
    assert_eq!(
        circuit(g.admin, b.addr),
        "open",
        "a flooded probe closed the circuit"
    );
    // A probe answered properly, once the next is due, closes it.
    assert!(eventually(Duration::from_secs(10), || flood(0) == 200));
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// A backend that cuts its answers short: `GET /deadline` streams a long body with a
/// deadline of 1.5 s for it, as servers have for slow readers (Go's `WriteTimeout`), and
/// hangs up when it passes; anything else gets ten bytes of a 100-byte body, after the whole request body.
fn cutting_backend() -> RawBackend {
    RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        let Some(head) = read_head(&mut s, &mut pending) else {
            return;
        };
        if head.starts_with("POST /whole") {
            // A deadline of 1.2 s for the whole exchange, from the request head.
            let end = Instant::now() + Duration::from_millis(1200);
            if !skip_body(&mut s, &mut pending, &head) {
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n");
            let _ = s.set_write_timeout(Some(Duration::from_millis(50)));
            let piece = vec![b'w'; 64 << 10];
            while Instant::now() < end {
                let _ = s.write(&piece);
            }
            return;
        }
        if head.starts_with("GET /deadline") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n");
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let piece = vec![b'd'; 64 << 10];
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end && s.write_all(&piece).is_ok() {}
            return;
        }
        if read_body(&mut s, &mut pending, &head).is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b");
    })
}

/// [`cutting_backend`] as service `svc` behind a gateway whose breaker opens after 3.
fn cutting_gateway() -> (RawBackend, AdminGateway) {
    let b = cutting_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}\ntimeouts: {body: 5s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    (b, g)
}

/// Regression (a re-review of the breaker's rules): a body the backend closed or reset
/// mid-way was never a verdict, so a backend that sent a good head and then died every time
/// stayed in service. It counts now when the client kept up; not when the client kept the
/// gateway waiting 1 s or more (a backend's send deadline cuts a slow reader), nor after an
/// upload the client took that long to deliver (a deadline for the whole exchange).
#[test]
fn a_body_cut_while_the_client_kept_up_counts_and_one_a_slow_client_set_off_does_not() {
    let (b, g) = cutting_gateway();
    let addr = g.proc.addr;
    // Three slow readers at once: each reads nothing for 2.5 s, then all it can.
    let readers: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(15)))
                    .expect("timeout");
                c.write_all(
                    format!("GET /v1/proxy/svc/deadline/{i} HTTP/1.1\r\nHost: g\r\n\r\n")
                        .as_bytes(),
                )
                .expect("send");
                std::thread::sleep(Duration::from_millis(2500));
                let mut first = [0u8; 12];
                let head = c.read_exact(&mut first).ok().map(|()| first);
                let mut total = 12u64;
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = c.read(&mut buf) {
                    total += n as u64;
                }
                (head, total)
            })
        })
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let (head, total) = r.join().expect("reader");
        assert_eq!(
            head.as_ref().map(|h| &h[..]),
            Some(&b"HTTP/1.1 200"[..]),
            "#{i}"
        );
        assert!(
            total < 1 << 30,
            "#{i}: the backend cut it, yet {total} bytes came"
        );
    }
    assert_eq!(circuit(g.admin, b.addr), "closed", "slow readers' cuts");
    // Half the body, a pause, the rest: the backend answers the whole upload and cuts.
    for i in 0..3 {
        let mut c = Client::connect(addr);
        c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\n\r\nhello");
        std::thread::sleep(Duration::from_millis(1200));
        c.send(b"world");
        let mut got = Vec::new();
        let _ = c.stream.read_to_end(&mut got);
        assert!(got.starts_with(b"HTTP/1.1 200"), "upload #{i}");
        assert!(got.ends_with(b"only ten b"), "upload #{i}: cut short");
    }
    assert_eq!(circuit(g.admin, b.addr), "closed", "slow uploaders' cuts");
    // Clients that kept up: three cuts open the circuit.
    for i in 0..3 {
        let r = exchange(
            addr,
            &format!("GET /v1/proxy/svc/{i} HTTP/1.1\r\nHost: g\r\n\r\n"),
        );
        assert!(
            r.is_err(),
            "#{i}: the answer must reach the client cut: {r:?}"
        );
    }
    assert_eq!(circuit(g.admin, b.addr), "open");
}

/// Regression (a re-review of the breaker's rules): the client's waits on both sides of an
/// exchange are one allowance. An upload with a 0.6 s pause and an answer the client took
/// 0.7 s to start reading were each under the 1 s that makes a cut the client's doing, so a
/// backend with a deadline for the whole exchange (1.2 s) was judged for cutting them: three
/// such clients opened a healthy circuit.
#[test]
fn a_clients_waits_on_both_sides_add_up_before_a_cut_is_judged() {
    let (b, g) = cutting_gateway();
    let addr = g.proc.addr;
    let clients: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(
                    format!(
                        "POST /v1/proxy/svc/whole/{i} HTTP/1.1\r\nHost: g\r\n\
                         Content-Length: 10\r\n\r\nhello"
                    )
                    .as_bytes(),
                );
                std::thread::sleep(Duration::from_millis(600));
                c.send(b"world");
                std::thread::sleep(Duration::from_millis(700));
                let mut got = Vec::new();
                let _ = c.stream.read_to_end(&mut got);
                got
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let got = c.join().expect("client");
        assert!(got.starts_with(b"HTTP/1.1 200"), "#{i}");
        assert!(got.len() < 1 << 30, "#{i}: the backend cut it");
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// Regression (a review of the breaker's rules): a backend that sends its head and part of
/// its body first, reads the whole upload, then closes mid-body, was never judged: a cut
/// counted only after an upload that went up whole before the answer. Once the upload is
/// up, quickly, the cut counts: three open the circuit.
#[test]
fn a_head_first_backend_that_cuts_its_body_after_a_quick_upload_is_judged() {
    let b = RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        let Some(head) = read_head(&mut s, &mut pending) else {
            return;
        };
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2000000\r\n\r\n");
        let _ = s.write_all(&vec![b'h'; 1 << 20]);
        skip_body(&mut s, &mut pending, &head);
        // Some work on the body, then the crash. (A close in the same instant as the
        // body's last byte can still reach the relay before the upload's end does.)
        std::thread::sleep(Duration::from_millis(200));
    });
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    const LEN: usize = 4 << 20;
    for i in 0..3 {
        let mut c = Client::connect(g.proc.addr);
        let mut up = c.stream.try_clone().expect("clone");
        let sender = std::thread::spawn(move || {
            let head = format!(
                "POST /v1/proxy/svc/{i} HTTP/1.1\r\nHost: g\r\nContent-Length: {LEN}\r\n\r\n"
            );
            let _ = up.write_all(head.as_bytes());
            let _ = up.write_all(&vec![b'u'; LEN]);
        });
        let mut got = Vec::new();
        let _ = c.stream.read_to_end(&mut got);
        sender.join().expect("sender");
        assert!(got.starts_with(b"HTTP/1.1 200"), "#{i}");
        assert!(got.len() < 2_000_000, "#{i}: the body came whole");
    }
    assert_eq!(circuit(g.admin, b.addr), "open");
}

/// A backend that reads each request's head, waits 1.5 s, then reads its body (all of it,
/// or for `/partial` all but the last 10 bytes) and answers 500, closing.
fn slow_reading_backend() -> RawBackend {
    RawBackend::start(|mut s, _| {
        let mut pending = Vec::new();
        let Some(head) = read_head(&mut s, &mut pending) else {
            return;
        };
        std::thread::sleep(Duration::from_millis(1500));
        let len: usize = header_value(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let want = match head.starts_with("POST /partial") {
            true => len.saturating_sub(10),
            false => len,
        };
        let mut got = pending.len();
        let mut tmp = vec![0u8; 1 << 16];
        while got < want {
            match s.read(&mut tmp) {
                Ok(n @ 1..) => got += n,
                _ => return,
            }
        }
        let _ = s.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        // Takes whatever else comes, so that the close is no reset.
        while let Ok(1..) = s.read(&mut tmp) {}
    })
}

/// Regression (a re-review of the breaker's rules): the 1 s after which a failure status
/// is taken for the backend giving up on a slow upload was timed on the wall clock, so a
/// backend that was itself slow to read the body exempted its own 500s: a client sending
/// 64 MiB at once was "slow" because the backend made it so. Only the time the gateway
/// waited on the client counts now. Three such 500s open the circuit, whether the answer
/// came after the whole body or while the client still held its last bytes.
#[test]
fn a_backend_slow_to_read_an_upload_is_judged_by_its_answer() {
    let (whole, partial) = (slow_reading_backend(), slow_reading_backend());
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 60s}\n\
         timeouts: {body: 10s}\nlimits: {max_body_bytes: 67108864}",
        &format!(
            "  whole: [http://{}]\n  partial: [http://{}]\n",
            whole.addr, partial.addr
        ),
    )));
    let addr = g.proc.addr;
    const LEN: usize = 64 << 20;
    for (svc, b) in [("whole", &whole), ("partial", &partial)] {
        let clients: Vec<_> = (0..3)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    c.send(
                        format!(
                            "POST /v1/proxy/{svc}/{svc}/{i} HTTP/1.1\r\nHost: g\r\n\
                             Content-Length: {LEN}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    let body = vec![b'u'; LEN];
                    // `/partial` holds its last 10 bytes back until the answer came.
                    let held = if svc == "partial" { 10 } else { 0 };
                    c.send(&body[..LEN - held]);
                    let r = c.try_read_response(false);
                    let _ = c.stream.write_all(&body[LEN - held..]);
                    r.map(|r| r.status)
                })
            })
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            let status = c.join().expect("client");
            assert_eq!(status.ok(), Some(500), "{svc} #{i}");
        }
        assert_eq!(circuit(g.admin, b.addr), "open", "{svc}");
    }
}

/// A response head that comes in pieces is parsed when a byte can decide (`HeadScan`: a
/// 60 KB head trickled a byte at a time took a second of a worker's time, parsed again on
/// every read); a bad byte among the later pieces is still said as such whether the
/// backend then closes or falls silent past `timeouts.response`: a 502
/// `backend_bad_response`, not `backend_closed` or a 504 (a review: a bad byte with no
/// line end after it waited for the timeout).
#[test]
fn a_malformed_line_in_a_head_that_came_in_pieces_is_a_bad_response() {
    let cases: [(&[u8], &[u8]); 4] = [
        (
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\n",
            b"x-b: 2\r\nno colon here\r\n",
        ),
        (b"HTTP/2", b".0 200"),
        (b"HTTP/1.1 200 OK\r\nx-a: a", b"\x00"),
        (b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx", b"(y: 1"),
    ];
    for (first, then) in cases {
        for close in [true, false] {
            let b = RawBackend::start(move |mut s, _| {
                let mut pending = Vec::new();
                if read_head(&mut s, &mut pending).is_some() {
                    let _ = s.write_all(first);
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = s.write_all(then);
                    if !close {
                        std::thread::sleep(Duration::from_secs(3));
                    }
                }
            });
            let g = gateway(&config(
                1,
                "timeouts: {response: 1s}",
                &format!("  svc: [http://{}]\n", b.addr),
            ));
            let r = get(g.addr, "/v1/proxy/svc/x");
            assert_eq!(
                (r.status, error_code(&r)),
                (502, "backend_bad_response".to_string()),
                "{:?} then {:?}, close: {close}",
                String::from_utf8_lossy(first),
                String::from_utf8_lossy(then)
            );
        }
    }
}
