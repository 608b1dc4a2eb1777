//! Backend fault matrix: every mock-backend fault (and a refused port and stale pooled
//! connections) × {GET, POST, HEAD} × 200 requests, each with its expected status, then a
//! check that the gateway's file descriptors and RSS come back near their baseline.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PER_CELL: usize = 200;
/// Concurrent clients per cell (the hang cell uses more: each request waits out the timeout).
const THREADS: usize = 20;
const HANG_THREADS: usize = 50;
const METHODS: [&str; 3] = ["GET", "POST", "HEAD"];

/// What every request of a cell must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// This status and `error` code (gateway-made).
    Error(u16, &'static str),
    /// 200 with a body of this many bytes (`None`: any).
    Ok(Option<usize>),
    /// A 200 head, then the connection is reset before the body is complete.
    Aborted,
}

fn raw_request(method: &str, service: &str, headers: &str) -> Vec<u8> {
    let body = if method == "POST" {
        "Content-Length: 5\r\n\r\nhello"
    } else {
        "\r\n"
    };
    format!("{method} /v1/proxy/{service}/f HTTP/1.1\r\nHost: gw\r\n{headers}{body}").into_bytes()
}

/// Runs `n` requests on keep-alive connections (a new one whenever the last was closed);
/// returns the mismatches.
fn run_requests(g: SocketAddr, n: usize, raw: &[u8], head: bool, want: Expect) -> Vec<String> {
    let mut fails = Vec::new();
    let mut c: Option<Client> = None;
    for _ in 0..n {
        let client = c.get_or_insert_with(|| Client::connect(g));
        client.send(raw);
        match want {
            Expect::Aborted => {
                match client.read_until_end() {
                    Err(bytes) if bytes.starts_with(b"HTTP/1.1 200") => {}
                    Err(bytes) => fails.push(format!("reset, but saw {:?}", head_of(&bytes))),
                    Ok(bytes) => fails.push(format!("clean close after {:?}", head_of(&bytes))),
                }
                c = None;
            }
            _ => match client.try_read_response(head) {
                Ok(r) => {
                    let got = if r.status == 200 {
                        Expect::Ok(want_len(want).map(|_| r.body.len()))
                    } else if head {
                        // No body to read the code from (and see conformance::known_bugs:
                        // gateway errors to HEAD carry one, so HEAD cells use a fresh
                        // connection per request).
                        Expect::Error(
                            r.status,
                            match want {
                                Expect::Error(_, c) => c,
                                _ => "",
                            },
                        )
                    } else {
                        let code = r.json()["error"].as_str().unwrap_or("").to_string();
                        let code: &'static str = Box::leak(code.into_boxed_str());
                        Expect::Error(r.status, code)
                    };
                    if got != want {
                        fails.push(format!("got {got:?}"));
                    }
                    if r.header("connection") == Some("close") {
                        c = None;
                    }
                }
                Err(bytes) => {
                    fails.push(format!("connection ended: {:?}", head_of(&bytes)));
                    c = None;
                }
            },
        }
    }
    fails
}

fn want_len(e: Expect) -> Option<usize> {
    match e {
        Expect::Ok(n) => n,
        _ => Some(0),
    }
}

fn head_of(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(60)]).into_owned()
}

/// Runs one cell (PER_CELL requests) over `threads` concurrent clients.
fn cell(g: SocketAddr, raw: Vec<u8>, head: bool, want: Expect, threads: usize) -> Vec<String> {
    let per = PER_CELL / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let raw = raw.clone();
            std::thread::spawn(move || run_requests(g, per, &raw, head, want))
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| {
            h.join()
                .unwrap_or_else(|_| vec!["client thread panicked".into()])
        })
        .collect()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn fault_matrix() {
    let started = Instant::now();
    let mock = mock_backend();
    let dead = closed_port();
    let stale: Vec<Recorder> = (0..3)
        .map(|_| {
            Recorder::start(Mode::OnePerConnection(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            ))
        })
        .collect();
    let g = gateway(&config(
        1,
        "timeouts: {response: 500ms}\nbreaker: {failure_threshold: 1000}\npool: {idle_timeout: 500ms}",
        &format!(
            "  svc: [http://{}]\n  dead: [http://{dead}]\n  stale-get: [http://{}]\n  stale-post: [http://{}]\n  stale-head: [http://{}]\n",
            mock.addr, stale[0].addr, stale[1].addr, stale[2].addr
        ),
    ));
    let pid = g.child.id();
    // Warm up, then take the baseline once the pool's idle connections have expired.
    for _ in 0..5 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/warm").status, 200);
    }
    std::thread::sleep(Duration::from_millis(1200));
    let (fd0, rss0) = (fd_count(pid), rss_kib(pid));

    let body_len = 20_000;
    // (name, service, headers, expectation for GET/POST, expectation for HEAD)
    let cells: Vec<(&str, &str, String, Expect, Expect)> = vec![
        (
            "connection refused",
            "dead",
            String::new(),
            Expect::Error(502, "backend_connect_failed"),
            Expect::Error(502, "backend_connect_failed"),
        ),
        (
            "hang",
            "svc",
            "x-mock-fault: hang\r\n".into(),
            Expect::Error(504, "backend_timeout"),
            Expect::Error(504, "backend_timeout"),
        ),
        (
            "reset before head",
            "svc",
            "x-mock-fault: reset-before-head\r\n".into(),
            Expect::Error(502, "backend_closed"),
            Expect::Error(502, "backend_closed"),
        ),
        (
            "close before head",
            "svc",
            "x-mock-fault: close-before-head\r\n".into(),
            Expect::Error(502, "backend_closed"),
            Expect::Error(502, "backend_closed"),
        ),
        (
            "half-close",
            "svc",
            "x-mock-fault: half-close\r\n".into(),
            Expect::Error(502, "backend_closed"),
            Expect::Error(502, "backend_closed"),
        ),
        (
            "garbage",
            "svc",
            "x-mock-fault: garbage\r\n".into(),
            Expect::Error(502, "backend_bad_response"),
            Expect::Error(502, "backend_bad_response"),
        ),
        (
            "oversized head",
            "svc",
            "x-mock-fault: oversized-head\r\n".into(),
            Expect::Error(502, "backend_bad_response"),
            Expect::Error(502, "backend_bad_response"),
        ),
        (
            "reset mid-body",
            "svc",
            format!("x-mock-fault: reset-mid-body\r\nx-mock-body-bytes: {body_len}\r\n"),
            Expect::Aborted,
            Expect::Ok(Some(0)),
        ),
        (
            "close mid-body",
            "svc",
            format!("x-mock-fault: close-mid-body\r\nx-mock-body-bytes: {body_len}\r\n"),
            Expect::Aborted,
            Expect::Ok(Some(0)),
        ),
        (
            "slow head",
            "svc",
            "x-mock-delay-ms: 50\r\n".into(),
            Expect::Ok(None),
            Expect::Ok(Some(0)),
        ),
        (
            "slow body",
            "svc",
            format!("x-mock-body-delay-ms: 50\r\nx-mock-body-bytes: {body_len}\r\n"),
            Expect::Ok(Some(body_len)),
            Expect::Ok(Some(0)),
        ),
    ];
    let mut total = 0usize;
    let mut failures = Vec::new();
    for (name, svc, headers, want, want_head) in &cells {
        for m in METHODS {
            let head = m == "HEAD";
            let want = if head { *want_head } else { *want };
            let mut headers = headers.clone();
            if head && matches!(want, Expect::Error(..)) {
                headers.push_str("Connection: close\r\n");
            }
            let t = Instant::now();
            let threads = if *name == "hang" {
                HANG_THREADS
            } else {
                THREADS
            };
            let fails = cell(g.addr, raw_request(m, svc, &headers), head, want, threads);
            total += PER_CELL;
            println!(
                "faults: {name:18} {m:4} {PER_CELL} requests, {} unexpected, {:?}",
                fails.len(),
                t.elapsed()
            );
            for f in fails.iter().take(3) {
                failures.push(format!("{name} {m}: {f}"));
            }
            if fails.len() > 3 {
                failures.push(format!("{name} {m}: ... {} unexpected in all", fails.len()));
            }
            // The gateway still serves normally (and the breaker's failure count resets).
            assert_eq!(
                get(g.addr, "/v1/proxy/svc/ok").status,
                200,
                "after {name} {m}"
            );
        }
    }

    // Stale pooled keep-alive connections: each backend connection answers one request and
    // closes on the next. Idempotent methods are retried once on a fresh connection; POST
    // is never resent, so every other POST is a 502.
    for (m, rec) in METHODS.iter().zip(&stale) {
        let svc = format!("stale-{}", m.to_ascii_lowercase());
        let raw = raw_request(m, &svc, "");
        let mut c = Client::connect(g.addr);
        let mut statuses = Vec::new();
        for _ in 0..PER_CELL {
            c.send(&raw);
            let r = c.read_response_to(*m == "HEAD");
            statuses.push(r.status);
            if r.header("connection") == Some("close") {
                c = Client::connect(g.addr);
            }
        }
        total += PER_CELL;
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        let bad = statuses.iter().filter(|&&s| s == 502).count();
        println!("faults: stale pooled       {m:4} {PER_CELL} requests, {ok} x 200, {bad} x 502, backend saw {}", rec.requests());
        let expected_ok = if *m == "POST" { PER_CELL / 2 } else { PER_CELL };
        if ok != expected_ok || ok + bad != PER_CELL {
            failures.push(format!("stale {m}: {ok} x 200, {bad} x 502"));
        }
        if *m == "POST" && rec.requests() != PER_CELL {
            failures.push(format!(
                "stale POST: backend saw {} requests for {PER_CELL}: a POST was resent",
                rec.requests()
            ));
        }
    }

    // Resources come back: no leaked sockets, no runaway memory.
    std::thread::sleep(Duration::from_millis(600));
    let settled = eventually(Duration::from_secs(5), || fd_count(pid) <= fd0 + 4);
    let (fd1, rss1) = (fd_count(pid), rss_kib(pid));
    println!(
        "faults: {} cells, {total} requests, {} unexpected; fds {fd0} -> {fd1}, VmRSS {rss0} -> {rss1} kB, {:?}",
        cells.len() * 3 + 3,
        failures.len(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        settled,
        "file descriptors did not return to baseline: {fd0} -> {fd1}"
    );
    assert!(
        rss1 <= rss0 + 32 * 1024,
        "RSS grew from {rss0} kB to {rss1} kB"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "too slow: {:?}",
        started.elapsed()
    );
}

/// Regression: an unknown `x-mock-fault` or an `x-mock-status` outside 200–599 was a
/// silent 200 (or a 500), and the mock's 400 body was not valid JSON.
#[test]
fn mock_backend_rejects_what_it_cannot_honour_with_json() {
    let b = mock_backend();
    let mut c = Client::connect(b.addr);
    for (header, value) in [
        ("x-mock-fault", "no-such-fault"),
        ("x-mock-fault", "hang\"}"),
        ("x-mock-status", "99"),
        ("x-mock-status", "600"),
        ("x-mock-status", "abc"),
        // A review: these were ignored, answered 200, or made a malformed response.
        ("x-mock-delay-ms", "abc"),
        ("x-mock-body-bytes", "-1"),
        ("x-mock-body-delay-ms", "1.5"),
        ("x-mock-header", "nocolon"),
        ("x-mock-header", ": no name"),
    ] {
        c.send(format!("GET /x HTTP/1.1\r\nHost: m\r\n{header}: {value}\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 400, "{header}: {value}");
        let j = r.json();
        assert!(
            j["mock_error"].as_str().is_some_and(|m| m.contains(header)),
            "{j}"
        );
        assert_eq!(j["value"], value, "{j}");
    }
    // The connection is still usable, and known values still work.
    c.send(b"GET /x HTTP/1.1\r\nHost: m\r\nx-mock-status: 599\r\n\r\n");
    assert_eq!(c.read_response().status, 599);
    c.send(b"GET /x HTTP/1.1\r\nHost: m\r\nx-mock-fault: chunked\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    // A request the mock cannot parse gets a JSON 400 too.
    let mut c = Client::connect(b.addr);
    c.send(b"GET /x HTTP/1.1\r\nHost: m\r\nbad header\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 400);
    assert!(r.json()["mock_error"].is_string());
    // A second mock-backend on a port in use fails, instead of taking half its
    // connections (SO_REUSEPORT let it, a review).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mock-backend"))
        .arg(b.addr.port().to_string())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{out:?}"
    );
}
