//! The circuit breaker end to end: shared by all workers, opened by consecutive failures,
//! probed by exactly one request after its cooldown.

mod common;

use common::*;
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
