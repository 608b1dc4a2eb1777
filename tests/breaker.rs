//! The circuit breaker end to end: shared by all workers, opened by consecutive failures,
//! probed by exactly one request after its cooldown; and active health checks beside it.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn error_code(r: &Response) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn opens_after_exactly_five_failures_then_is_skipped() {
    let bad = Recorder::start(reply(503));
    let good = mock_backend();
    // Two workers: the breaker is shared, so the count is exact whichever worker serves.
    let g = gateway(&config(
        2,
        "",
        &format!("  svc: [http://{}, http://{}]\n", bad.addr, good.addr),
    ));
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(get(g.addr, "/v1/proxy/svc/x").status);
    }
    assert_eq!(bad.requests(), 5, "statuses seen: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        5,
        "backend 5xx are passed through"
    );
    assert!(
        statuses[statuses.len() - 20..].iter().all(|&s| s == 200),
        "{statuses:?}"
    );
}

/// `failure_threshold: 0` is off (NGINX's `max_fails=0`): a backend answering 503 every
/// time and one refusing connections stay in the rotation, never skipped, never a 503 of
/// the gateway's own; another service's breaker works as before. Until 2026-12-05 the
/// breaker could not be turned off.
#[test]
fn a_service_whose_breaker_is_off_never_opens() {
    let bad = Recorder::start(reply(503));
    let good = mock_backend();
    let dead = closed_port();
    let path = write_config(&config(
        2,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2}",
        &format!(
            "  off:\n    backends: [http://{}, http://{}]\n    breaker: {{failure_threshold: 0}}\n  gone:\n    backends: [http://{dead}]\n    breaker: {{failure_threshold: 0}}\n  on: [http://{dead}]\n",
            bad.addr, good.addr
        ),
    ));
    let g = gateway_at(&path);
    let statuses: Vec<u16> = (0..40)
        .map(|_| get(g.proc.addr, "/v1/proxy/off/x").status)
        .collect();
    assert_eq!(bad.requests(), 20, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 20);
    for _ in 0..10 {
        let r = get(g.proc.addr, "/v1/proxy/gone/x");
        assert_eq!(
            (r.status, error_code(&r)),
            (502, "backend_connect_failed".into())
        );
    }
    assert_eq!(circuit(g.admin, bad.addr), "closed");
    assert_eq!(circuit(g.admin, dead), "closed");
    // The same backend under a service whose breaker is on opens after two.
    for _ in 0..2 {
        assert_eq!(get(g.proc.addr, "/v1/proxy/on/x").status, 502);
    }
    let r = get(g.proc.addr, "/v1/proxy/on/x");
    assert_eq!(
        (r.status, error_code(&r)),
        (503, "no_backend_available".into())
    );
    // Turned off by a reload, its open circuit goes with it (a review: a failed probe
    // reopened it, whatever the threshold, and the 503s went on).
    let yaml = std::fs::read_to_string(&path).unwrap();
    let off = yaml.replace(
        &format!("  on: [http://{dead}]\n"),
        &format!("  on:\n    backends: [http://{dead}]\n    breaker: {{failure_threshold: 0}}\n"),
    );
    std::fs::write(&path, off).unwrap();
    signal(&g.proc.child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || {
        get(g.admin, "/admin/config").json()["generation"] == 2
    }));
    for _ in 0..5 {
        let r = get(g.proc.addr, "/v1/proxy/on/x");
        assert_eq!(
            (r.status, error_code(&r)),
            (502, "backend_connect_failed".into())
        );
    }
}

#[test]
fn all_backends_open_gives_503_with_retry_after() {
    let (a, b) = (closed_port(), closed_port());
    let g = gateway(&config(
        1,
        "breaker: {failure_threshold: 2, cooldown: 30s}",
        &format!("  svc: [http://{a}, http://{b}]\n"),
    ));
    // Each request fails on one backend and is retried on the other: two requests open both.
    for _ in 0..2 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 502);
    }
    let r = get(g.addr, "/v1/proxy/svc/x");
    assert_eq!(
        (r.status, error_code(&r)),
        (503, "no_backend_available".into())
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
}

#[test]
fn exactly_one_probe_after_cooldown_across_workers_then_failure_reopens_and_success_closes() {
    let rec = Recorder::start(reply(500));
    let g = gateway(&config(
        2,
        "breaker: {failure_threshold: 2, cooldown: 400ms}\ntimeouts: {response: 1s}",
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    for _ in 0..2 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 500);
    }
    assert_eq!(
        get(g.addr, "/v1/proxy/svc/x").status,
        503,
        "circuit did not open"
    );
    assert_eq!(rec.requests(), 2);

    // After the cooldown, a burst from many connections (spread over both workers): the
    // backend hangs, so the single probe stays in flight while the others arrive.
    rec.set(Mode::Hang);
    std::thread::sleep(Duration::from_millis(500));
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let addr = g.addr;
            std::thread::spawn(move || get(addr, "/v1/proxy/svc/x").status)
        })
        .collect();
    let mut statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap()).collect();
    statuses.sort_unstable();
    assert_eq!(
        rec.requests(),
        3,
        "more than one probe went out: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 504).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        15,
        "{statuses:?}"
    );

    // The probe failed (504): the circuit re-opened with a fresh cooldown.
    assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 503);
    assert_eq!(rec.requests(), 3);

    // The backend recovers: after the cooldown the next request probes, succeeds, closes.
    rec.set(reply(200));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 200);
    for _ in 0..5 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 200);
    }
    assert_eq!(rec.requests(), 9);
}

/// Regression (a broken-backend review): a client that sent a request to a slow endpoint
/// whenever a probe was due and left 20 ms later kept a recovered backend's circuit open for
/// as long as it went on. The gateway gave up waiting for the answer of a client that had
/// left (the client watch shuts the backend's connection), and so abandoned the probe. A
/// probe sent whole is now read to its head and judged, whoever is left to receive it.
#[test]
fn a_probe_sent_whole_is_judged_when_its_client_leaves() {
    let rec = Recorder::start(reply(500));
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0
breaker: {failure_threshold: 2, cooldown: 300ms}
timeouts: {response: 10s}",
        &format!("  svc: [http://{}]\n", rec.addr),
    )));
    let addr = g.proc.addr;
    for how in ["reset", "close"] {
        rec.set(reply(500));
        while circuit(g.admin, rec.addr) != "open" {
            assert_eq!(get(addr, "/v1/proxy/svc/x").status, 500, "{how}");
        }
        // Healthy again, but slow: its answer comes well after the client watch's look
        // (each second; a closed client counts as gone after a second of waiting).
        rec.set(Mode::Delayed(Duration::from_millis(2500), reply_bytes(200)));
        std::thread::sleep(Duration::from_millis(400));
        let before = rec.requests();
        let mut c = Client::connect(addr);
        c.send(b"GET /v1/proxy/svc/slow HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            eventually(Duration::from_secs(2), || rec.requests() == before + 1),
            "{how}: the probe never went out"
        );
        if how == "reset" {
            reset(c);
        } else {
            drop(c);
        }
        assert!(
            eventually(Duration::from_secs(6), || circuit(g.admin, rec.addr)
                == "closed"),
            "{how}: the probe's 200 did not close the circuit: {}",
            circuit(g.admin, rec.addr)
        );
        assert_eq!(rec.requests(), before + 1, "{how}: one probe");
    }
}

/// A probe whose client reset its connection and whose backend then timed out: the probe
/// fails (the circuit re-opens), and the 504 that could not be written is logged as what it
/// was, a client gone (status 0, 0 bytes), not as a 504 sent (a re-review of the change
/// above, which made this wait run its course).
#[test]
fn a_probe_that_fails_after_its_client_left_is_logged_as_the_client_gone() {
    let rec = Recorder::start(reply(500));
    let log = std::env::temp_dir().join(format!("gateway-probe-gone-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let g = gateway_at(&write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\naccess_log: {}\nbreaker: {{failure_threshold: 1, cooldown: 300ms}}\ntimeouts: {{response: 1s}}",
            log.display()
        ),
        &format!("  svc: [http://{}]\n", rec.addr),
    )));
    let addr = g.proc.addr;
    assert_eq!(get(addr, "/v1/proxy/svc/first").status, 500);
    assert_eq!(circuit(g.admin, rec.addr), "open");
    rec.set(Mode::Hang);
    std::thread::sleep(Duration::from_millis(400));
    let mut c = Client::connect(addr);
    c.send(b"GET /v1/proxy/svc/probe HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(eventually(Duration::from_secs(2), || rec.requests() == 2));
    reset(c);
    let (text, fields) = logged_line(&log, "/v1/proxy/svc/probe");
    assert_eq!(
        (fields[6].as_str(), fields[7].as_str(), fields[10].as_str()),
        ("0", "0", "client_closed_request"),
        "{text}"
    );
    assert_eq!(
        circuit(g.admin, rec.addr),
        "open",
        "the probe's timeout re-opened it"
    );
}

#[test]
fn per_service_overrides_apply() {
    let rec = Recorder::start(reply(502));
    let g = gateway(&config(
        1,
        "breaker: {failure_threshold: 10}",
        &format!("  strict:\n    backends: [http://{}]\n    breaker: {{failure_threshold: 1, cooldown: 1m}}\n", rec.addr),
    ));
    assert_eq!(get(g.addr, "/v1/proxy/strict/x").status, 502);
    assert_eq!(get(g.addr, "/v1/proxy/strict/x").status, 503);
    assert_eq!(rec.requests(), 1);
}

/// Regression: with the default `failure_statuses` (then every 5xx), a backend answering
/// 501 to a method it does not serve (Python's `http.server` for OPTIONS, PATCH, DELETE)
/// let any client open its circuit: three such requests and the next GET got 503 (a
/// review). A 501 answers the method the client chose and no longer counts by default.
#[test]
fn a_501_never_opens_a_circuit_by_default() {
    let rec = Recorder::start(reply(501));
    let g = gateway(&config(
        1,
        "breaker: {failure_threshold: 1, cooldown: 60s}",
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    for _ in 0..5 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 501);
    }
    assert_eq!(rec.requests(), 5, "a 501 opened the circuit");
}

/// Regression: any answer that was not a failure reset the count of consecutive failures,
/// so a client sending requests its failing backend answers 404 kept that backend's circuit
/// closed however many 500s it gave everyone else (a review: 60 500s, a 404 between every
/// two, and the circuit stayed closed). A 4xx now leaves the count alone; a 2xx or 3xx
/// resets it; a probe answered 4xx closes the circuit (the backend is answering).
#[test]
fn client_errors_between_failures_neither_reset_the_count_nor_keep_a_circuit_closed() {
    let b = mock_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 3, cooldown: 1s}",
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let ask = |status: u16| {
        let mut c = Client::connect(g.proc.addr);
        c.send(
            format!("GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nx-mock-status: {status}\r\n\r\n")
                .as_bytes(),
        );
        c.read_response().status
    };
    // A success between failures resets the count, as before.
    for status in [500, 500, 200, 500, 500] {
        assert_eq!(ask(status), status);
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
    // Two failures counted; 4xx answers (and a 501) leave them counted ...
    for status in [404, 401, 429, 501] {
        assert_eq!(ask(status), status);
    }
    assert_eq!(circuit(g.admin, b.addr), "closed");
    // ... so the third failure opens the circuit.
    assert_eq!(ask(500), 500);
    assert_eq!(circuit(g.admin, b.addr), "open");
    assert_eq!(ask(200), 503, "the circuit let a request through");
    // After the cooldown, a probe answered 404 closes it.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(ask(404), 404);
    assert_eq!(circuit(g.admin, b.addr), "closed");
}

/// Decided (README, breaker settings): `failure_statuses: []` means that no status counts
/// as a failure; a backend answering 5xx keeps serving, a refused connect still counts.
#[test]
fn empty_failure_statuses_never_open_on_a_status() {
    let bad = Recorder::start(reply(503));
    let down = closed_port();
    let g = gateway(&config(
        1,
        "breaker: {failure_threshold: 1, cooldown: 60s, failure_statuses: []}",
        &format!("  svc: [http://{}]\n  gone: [http://{down}]\n", bad.addr),
    ));
    for _ in 0..10 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 503);
    }
    assert_eq!(bad.requests(), 10, "every request reached the 5xx backend");
    assert_eq!(get(g.addr, "/v1/proxy/gone/x").status, 502);
    let r = get(g.addr, "/v1/proxy/gone/x");
    assert_eq!(
        (r.status, error_code(&r)),
        (503, "no_backend_available".into())
    );
}

/// `/admin/config` listed the default `failure_statuses` as 99 numbers, one a line (two
/// reviews): it now writes runs as ranges, in the form the config takes back, and a range
/// written in the config is what opens the circuit.
#[test]
fn failure_statuses_are_shown_and_taken_as_ranges() {
    let bad = Recorder::start(reply(503));
    let path = write_config(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npin_workers: false\nadmin: 127.0.0.1:0\n\
         services:\n  plain: [http://{0}]\n  ranged:\n    backends: [http://{0}]\n    \
         breaker: {{failure_threshold: 1, failure_statuses: [\"502-503\", 507]}}\n",
        bad.addr
    ));
    let g = gateway_at(&path);
    let cfg = get(g.admin, "/admin/config").json();
    let shown = |i: usize| cfg["services"][i]["breaker"]["failure_statuses"].clone();
    assert_eq!(cfg["services"][0]["name"], "plain");
    assert_eq!(shown(0), serde_json::json!([500, "502-599"]));
    assert_eq!(shown(1), serde_json::json!(["502-503", 507]));
    assert_eq!(get(g.proc.addr, "/v1/proxy/ranged/x").status, 503);
    let r = get(g.proc.addr, "/v1/proxy/ranged/x");
    assert_eq!(
        (r.status, error_code(&r)),
        (503, "no_backend_available".into()),
        "a 503 within the range opened the circuit"
    );
}

/// A backend that answers every request `200` with `name` as the body (`500` while
/// `failing` holds), and `GET /healthz` with `200` while `healthy` holds, else `503`; it
/// closes a connection whose request asked it to. Counts the health checks it got.
struct Checked {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    failing: Arc<AtomicBool>,
    checks: Arc<AtomicUsize>,
}

impl Checked {
    fn start(name: &'static str) -> Checked {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let healthy = Arc::new(AtomicBool::new(true));
        let failing = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicUsize::new(0));
        let (h, f, c) = (healthy.clone(), failing.clone(), checks.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let (h, f, c) = (h.clone(), f.clone(), c.clone());
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut tmp) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&tmp[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&pending[..p]).into_owned();
                        pending.drain(..p + 4);
                        let check = head.starts_with("GET /healthz ");
                        let (status, body) = match check {
                            true if h.load(Ordering::SeqCst) => ("200 OK", "ok"),
                            true => ("503 Service Unavailable", "sick"),
                            false if f.load(Ordering::SeqCst) => ("500 Oops", name),
                            false => ("200 OK", name),
                        };
                        if check {
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        let out = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let close = head
                            .lines()
                            .any(|l| l.eq_ignore_ascii_case("connection: close"));
                        if s.write_all(out.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Checked {
            addr,
            healthy,
            failing,
            checks,
        }
    }
}

/// The health state `/admin/backends` shows for the backend at `addr`.
fn health(admin: SocketAddr, addr: SocketAddr) -> String {
    let url = format!("http://{addr}");
    let v = get(admin, "/admin/backends").json();
    v["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["url"] == url.as_str())
        .map(|b| b["health"]["state"].as_str().unwrap_or("none").to_string())
        .unwrap_or_else(|| panic!("{url} not in /admin/backends: {v}"))
}

/// The bodies of `n` GETs through service `svc`.
fn answers(gw: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = get(gw, "/v1/proxy/svc/x");
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect()
}

/// Active health checks (HAProxy's `check`, NGINX Plus's `health_check`): a backend that
/// fails `fall` checks in a row leaves the rotation while its circuit stays closed (no
/// request failed), and comes back after `rise` passes; both are logged, shown in
/// `/admin/backends` and in `gateway_backend_healthy`. With two workers, each backend is
/// checked by one of them.
#[test]
fn a_backend_failing_its_health_checks_leaves_the_rotation_and_comes_back() {
    let (a, b) = (Checked::start("a"), Checked::start("b"));
    let path = write_config(&config(
        2,
        "admin: 127.0.0.1:0",
        &format!(
            "  svc:\n    backends: [http://{}, http://{}]\n    health_check: {{path: /healthz, interval: 1s, timeout: 500ms, fall: 2, rise: 2}}\n",
            a.addr, b.addr
        ),
    ));
    let log = std::env::temp_dir().join(format!("gateway-health-{}.log", std::process::id()));
    let started = std::time::Instant::now();
    let g = gateway_at_logging_to(&path, &log);
    let got = answers(g.proc.addr, 6);
    assert!(
        got.contains(&"a".into()) && got.contains(&"b".into()),
        "{got:?}"
    );
    assert_eq!(health(g.admin, a.addr), "up");
    a.healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || health(g.admin, a.addr)
            == "down"),
        "never out"
    );
    assert_eq!(answers(g.proc.addr, 10), ["b"; 10]);
    assert_eq!(circuit(g.admin, a.addr), "closed");
    // Why, and when it was last asked.
    let v = get(g.admin, "/admin/backends").json();
    let shown = &v["services"][0]["backends"][0]["health"];
    assert_eq!(
        (&shown["last_status"], &shown["last_error"]),
        (&serde_json::json!(503), &serde_json::Value::Null),
        "{v}"
    );
    assert!(
        shown["last_check"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    let m = metrics(g.admin);
    let series = |addr: SocketAddr| {
        format!("gateway_backend_healthy{{service=\"svc\",backend=\"http://{addr}\"}}")
    };
    assert_eq!(sample(&m, &series(a.addr)), Some(0.0), "{m}");
    assert_eq!(sample(&m, &series(b.addr)), Some(1.0), "{m}");
    let c = get(g.admin, "/admin/config").json();
    let want = serde_json::json!({"type": "http", "path": "/healthz", "interval": "1s", "timeout": "500ms", "fall": 2, "rise": 2});
    assert_eq!(c["services"][0]["health_check"], want, "{c}");
    a.healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || health(g.admin, a.addr) == "up"),
        "never back"
    );
    let got = answers(g.proc.addr, 6);
    assert!(
        got.contains(&"a".into()) && got.contains(&"b".into()),
        "{got:?}"
    );
    // Each backend checked once a second at most, by one worker of the two (both would
    // check it twice as often).
    let checks = a.checks.load(Ordering::SeqCst) as u64;
    let seconds = started.elapsed().as_secs();
    assert!(
        (4..=seconds + 1).contains(&checks),
        "{checks} in {seconds} s"
    );
    let (text, _) = logged_line(&log, "back in rotation");
    assert!(
        text.contains(&format!(
            "backend: svc http://{} failed its health check (/healthz) 2 times in a row, the last: status 503; out of rotation until it passes 2 in a row",
            a.addr
        )),
        "{text}"
    );
}

/// When every backend fails its checks, the checks are set aside and the circuits alone
/// decide (Envoy's panic mode): a check path wrong everywhere must not take down a service
/// whose backends answer.
#[test]
fn when_every_backend_fails_its_checks_they_are_set_aside() {
    let (a, b) = (Checked::start("a"), Checked::start("b"));
    a.healthy.store(false, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!(
            "  svc:\n    backends: [http://{}, http://{}]\n    health_check: {{path: /healthz, interval: 1s, timeout: 500ms, fall: 1, rise: 1}}\n",
            a.addr, b.addr
        ),
    ));
    let log = std::env::temp_dir().join(format!("gateway-health-all-{}.log", std::process::id()));
    let g = gateway_at_logging_to(&path, &log);
    assert!(
        eventually(Duration::from_secs(10), || {
            health(g.admin, a.addr) == "down" && health(g.admin, b.addr) == "down"
        }),
        "never out"
    );
    let got = answers(g.proc.addr, 6);
    assert!(
        got.contains(&"a".into()) && got.contains(&"b".into()),
        "{got:?}"
    );
    let (text, _) = logged_line(&log, "every backend of svc fails its health check");
    assert!(text.contains("the circuits alone decide"), "{text}");
}

/// Regression (a review): one backend out by its checks and the other's circuit open was
/// a 503 for every request, for the whole cooldown, though the first answered. The checks
/// are set aside whenever no backend both passes them and can take the request.
#[test]
fn a_backend_out_by_its_checks_serves_when_the_others_circuits_are_open() {
    let (a, b) = (Checked::start("a"), Checked::start("b"));
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 60s}",
        &format!(
            "  svc:\n    backends: [http://{}, http://{}]\n    health_check: {{path: /healthz, interval: 1s, fall: 1, rise: 1}}\n",
            a.addr, b.addr
        ),
    )));
    b.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        get(g.proc.addr, "/v1/proxy/svc/x");
    }
    assert_eq!(circuit(g.admin, b.addr), "open");
    a.healthy.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || health(g.admin, a.addr)
            == "down"),
        "never out"
    );
    assert_eq!(answers(g.proc.addr, 4), ["a"; 4]);
}

/// Regression (a review): checks turned off and on again kept what the old ones found,
/// and a probe in flight across the reload wrote its verdict after it. Turned on again
/// (or changed), checks start from scratch: every backend in rotation.
#[test]
fn checks_turned_off_and_on_again_start_in_rotation() {
    let a = Checked::start("a");
    let b = Checked::start("b");
    a.healthy.store(false, Ordering::SeqCst);
    let svc = |checks: &str| {
        format!(
            "  svc:\n    backends: [http://{}, http://{}]\n    health_check: {checks}\n",
            a.addr, b.addr
        )
    };
    let on = "{path: /healthz, interval: 1s, fall: 1, rise: 100}";
    let path = write_config(&config(1, "admin: 127.0.0.1:0", &svc(on)));
    let g = gateway_at(&path);
    assert!(
        eventually(Duration::from_secs(10), || health(g.admin, a.addr)
            == "down"),
        "never out"
    );
    a.healthy.store(true, Ordering::SeqCst);
    for (generation, checks) in [(2, "off"), (3, on)] {
        std::fs::write(&path, config(1, "admin: 127.0.0.1:0", &svc(checks))).unwrap();
        signal(&g.proc.child, libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(10), || {
                get(g.admin, "/admin/backends").json()["generation"] == generation
            }),
            "reload {generation}"
        );
    }
    // 100 passes would have been needed to come back with the old state.
    assert_eq!(health(g.admin, a.addr), "up");
}

/// `type: tcp` (HAProxy's plain `check`, for backends with no health endpoint): a
/// backend whose port refuses connections leaves the rotation, and one that accepts
/// them (whatever it then says, or if it says nothing) comes back.
#[test]
fn a_tcp_check_takes_a_closed_port_out_and_an_open_one_back() {
    let a = Checked::start("a");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = closed.local_addr().expect("addr");
    drop(closed);
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!(
            "  svc:\n    backends: [http://{}, http://{b}]\n    health_check: {{type: tcp, interval: 1s, fall: 1, rise: 1}}\n",
            a.addr
        ),
    )));
    assert!(
        eventually(Duration::from_secs(10), || health(g.admin, b) == "down"),
        "a refused connect kept it in"
    );
    assert_eq!(health(g.admin, a.addr), "up");
    assert_eq!(
        a.checks.load(Ordering::SeqCst),
        0,
        "a TCP check sends no request"
    );
    assert!(answers(g.proc.addr, 4).iter().all(|s| s == "a"));
    // Open again: it accepts and never answers, which a TCP check passes.
    let _open = std::net::TcpListener::bind(b).expect("bind again");
    assert!(
        eventually(Duration::from_secs(10), || health(g.admin, b) == "up"),
        "an accepting port stayed out"
    );
    let v = get(g.admin, "/admin/backends").json();
    assert_eq!(v["services"][0]["health_check"]["type"], "tcp", "{v}");
    assert!(v["services"][0]["health_check"]["path"].is_null(), "{v}");
}
