//! Admission control over real sockets: rate limits (service, client IP, header keys),
//! concurrency limits, the 429/503 contract, breakers untouched, budgets across reloads.

mod common;

use common::*;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends `n` GETs on one keep-alive connection and returns their statuses.
fn statuses(c: &mut Client, n: usize, extra: &str) -> Vec<u16> {
    (0..n)
        .map(|i| {
            c.send(format!("GET /v1/proxy/svc/{i} HTTP/1.1\r\nHost: g\r\n{extra}\r\n").as_bytes());
            c.read_response().status
        })
        .collect()
}

fn error_detail(r: &Response) -> String {
    r.json()["detail"].as_str().unwrap_or_default().to_string()
}

fn count(v: &[u16], status: u16) -> usize {
    v.iter().filter(|&&s| s == status).count()
}

#[test]
fn a_service_budget_admits_burst_plus_rate_times_elapsed_and_nothing_more_reaches_the_backend() {
    let rec = Recorder::start(reply(200));
    let g = gateway(&config(
        2,
        "",
        &format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 20/s, burst: 5, key: service}}\n",
            rec.addr
        ),
    ));
    let admitted = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let run = Duration::from_millis(1500);
    let last_sent = Arc::new(std::sync::Mutex::new(start));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (admitted, limited, last_sent) =
                (admitted.clone(), limited.clone(), last_sent.clone());
            let addr = g.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while start.elapsed() < run {
                    let sent = Instant::now();
                    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
                    let r = c.read_response();
                    {
                        let mut l = last_sent.lock().unwrap();
                        *l = (*l).max(sent);
                    }
                    match r.status {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => {
                            assert_eq!(
                                r.json(),
                                serde_json::json!({"error": "rate_limited", "service": "svc"})
                            );
                            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                            assert!(retry >= 1);
                            limited.fetch_add(1, Ordering::SeqCst)
                        }
                        s => panic!("unexpected status {s}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The window in which requests were sent: from before the first to the last one sent.
    // Every admission happened between the first request sent and the last response
    // received, and requests were waiting all the time until the last one was sent.
    let end = Instant::now();
    let window = |t: Instant| t.duration_since(start).as_secs_f64();
    let (lo, hi) = (
        5.0 + 20.0 * window(*last_sent.lock().unwrap()),
        5.0 + 20.0 * window(end),
    );
    let admitted = admitted.load(Ordering::SeqCst) as f64;
    assert!(
        admitted >= lo.floor() - 1.0 && admitted <= hi.ceil() + 1.0,
        "admitted {admitted}, expected {lo:.2} to {hi:.2}"
    );
    assert!(limited.load(Ordering::SeqCst) > 0);
    assert_eq!(
        rec.requests() as f64,
        admitted,
        "a limited request reached the backend"
    );
}

#[test]
fn client_ip_budgets_are_per_source_address_and_believe_forwarded_for_only_from_trusted_peers() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "trusted_proxies: [127.0.0.3/32]",
        &format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 1/h, burst: 2, key: client_ip}}\n",
            b.addr
        ),
    ));
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let mut one = Client::connect_from(ip("127.0.0.1"), g.addr);
    let mut two = Client::connect_from(ip("127.0.0.2"), g.addr);
    assert_eq!(statuses(&mut one, 3, ""), [200, 200, 429]);
    // Another source address has a budget of its own; its X-Forwarded-For is not believed.
    assert_eq!(
        statuses(&mut two, 3, "X-Forwarded-For: 9.9.9.9\r\n"),
        [200, 200, 429]
    );
    // A trusted proxy: each forwarded client has its own budget, the proxy's address none.
    let mut proxy = Client::connect_from(ip("127.0.0.3"), g.addr);
    assert_eq!(
        statuses(&mut proxy, 3, "X-Forwarded-For: 203.0.113.7\r\n"),
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&mut proxy, 2, "X-Forwarded-For: 203.0.113.8, 127.0.0.3\r\n"),
        [200, 200]
    );
    // ... and a forwarded address is the same client as that address connecting directly.
    assert_eq!(
        statuses(&mut proxy, 1, "X-Forwarded-For: 127.0.0.2\r\n"),
        [429]
    );
    // Regression: IPv6 clients were keyed by /128, so one with a /64 (every subscriber
    // has one) rotated addresses for fresh budgets. A /64 is one client.
    assert_eq!(
        statuses(&mut proxy, 2, "X-Forwarded-For: 2001:db8:1:2::1\r\n"),
        [200, 200]
    );
    assert_eq!(
        statuses(
            &mut proxy,
            1,
            "X-Forwarded-For: 2001:db8:1:2:ffff:1:2:3\r\n"
        ),
        [429]
    );
    assert_eq!(
        statuses(&mut proxy, 1, "X-Forwarded-For: 2001:db8:1:3::1\r\n"),
        [200]
    );
}

#[test]
fn header_budgets_are_per_value_with_one_shared_budget_for_requests_without_it() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "rate_limit: {rate: 1/h, burst: 1, key: \"header:X-Api-Key\"}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let mut c = Client::connect(g.addr);
    assert_eq!(statuses(&mut c, 2, "x-api-key: alpha\r\n"), [200, 429]);
    assert_eq!(statuses(&mut c, 2, "X-API-KEY:  beta \r\n"), [200, 429]);
    assert_eq!(statuses(&mut c, 2, ""), [200, 429]);
    assert_eq!(statuses(&mut c, 1, "x-api-key: alpha\r\n"), [429]);
}

/// Regression: the key was the header's first line, so a client could send a fresh value
/// first and the key its backend believes second, for a fresh budget on every request.
#[test]
fn a_header_key_on_two_lines_is_refused_before_any_budget_or_backend() {
    let rec = Recorder::start(reply(200));
    let g = gateway(&config(
        1,
        "rate_limit: {rate: 1/h, burst: 1, key: \"header:X-Api-Key\"}",
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    let mut c = Client::connect(g.addr);
    assert_eq!(statuses(&mut c, 1, "x-api-key: alpha\r\n"), [200]);
    for fresh in ["one", "two", "three"] {
        let mut c = Client::connect(g.addr);
        c.send(
            format!(
                "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nX-Api-Key: {fresh}\r\nx-api-key: alpha\r\n\r\n"
            )
            .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "bad_request", "detail": "repeated_rate_limit_key", "service": "svc"})
        );
        assert!(r.header("retry-after").is_none());
        // A 400 ends the connection, as the contract has it.
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed_within(Duration::from_secs(2)));
    }
    // Regression (a re-review): the same as a list on one line, and as an underscore
    // alias, which a CGI or WSGI backend reads as the same field. Regression (a
    // hostile-client review): the key named by `Connection` is dropped on its way, so the
    // backend saw a keyless request that never paid from the keyless budget; a fresh key
    // per request was never limited.
    const REPEATED: &str = "repeated_rate_limit_key";
    const HOP_BY_HOP: &str = "hop_by_hop_rate_limit_key";
    for (sent, detail) in [
        ("X-Api-Key: one, alpha\r\n", REPEATED),
        ("X-Api-Key: alpha,two\r\n", REPEATED),
        ("X-Api-Key: three\r\nX_Api_Key: alpha\r\n", REPEATED),
        ("X-Api-Key: four\r\nConnection: X-Api-Key\r\n", HOP_BY_HOP),
        (
            "x-api-key: five\r\nConnection: keep-alive, X-API-KEY\r\n",
            HOP_BY_HOP,
        ),
        (
            "X_Api_Key: six\r\nConnection: close\r\nConnection: x_api_key\r\n",
            HOP_BY_HOP,
        ),
    ] {
        let mut c = Client::connect(g.addr);
        c.send(format!("GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n{sent}\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(
            (r.status, error_detail(&r)),
            (400, detail.into()),
            "{sent:?}"
        );
    }
    // Alpha's budget is untouched by the refusals, and spent.
    assert_eq!(statuses(&mut c, 1, "x-api-key: alpha\r\n"), [429]);
    // An alias alone is the key; an empty value is no key, as an absent one.
    assert_eq!(statuses(&mut c, 1, "X_API_KEY: alpha\r\n"), [429]);
    assert_eq!(statuses(&mut c, 2, "X-Api-Key: \r\n"), [200, 429]);
    assert_eq!(statuses(&mut c, 1, ""), [429]);
    assert_eq!(rec.requests(), 2);
}

/// Regression: keyed budgets of all services shared untagged table cells, so one client
/// sending a fresh `X-Api-Key` per request to a 1/h service filled the table with
/// hour-long TATs, and every new user of other keyed services got 429 with a Retry-After
/// of about two hours (a review). Each key now runs on its own tagged cell.
#[test]
fn fresh_keys_flooding_a_slow_budget_never_lock_out_other_services_keys() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "rate_limit_table: 1024",
        &format!(
            "  hdr:\n    backends: [http://{0}]\n    rate_limit: {{rate: 1/h, burst: 2, key: \"header:X-Api-Key\"}}\n\
             \x20 other:\n    backends: [http://{0}]\n    rate_limit: {{rate: 100/m, burst: 20, key: \"header:X-User\"}}\n\
             \x20 ipsvc:\n    backends: [http://{0}]\n    rate_limit: {{rate: 100/m, burst: 20, key: client_ip}}\n",
            b.addr
        ),
    ));
    let mut c = Client::connect(g.addr);
    for i in 0..3000 {
        c.send(
            format!("GET /v1/proxy/hdr/x HTTP/1.1\r\nHost: g\r\nx-api-key: k{i}\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(c.read_response().status, 200, "fresh key {i}");
    }
    for i in 0..40 {
        c.send(
            format!("GET /v1/proxy/other/x HTTP/1.1\r\nHost: g\r\nx-user: u{i}\r\n\r\n").as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 200, "new user {i}: {:?}", r.header("retry-after"));
    }
    c.send(b"GET /v1/proxy/ipsvc/x HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    // The flooded budget still holds a key to its own budget: the latest key's cell is the
    // last any newcomer takes (a full bucket gives up the budget nearest to full; the
    // table here holds 1024 cells for 3000 keys, so the earliest keys did start afresh).
    let last = "x-api-key: k2999\r\n";
    let mut again = || {
        c.send(format!("GET /v1/proxy/hdr/x HTTP/1.1\r\nHost: g\r\n{last}\r\n").as_bytes());
        c.read_response().status
    };
    assert_eq!((again(), again()), (200, 429));
}

#[test]
fn max_in_flight_answers_overloaded_beyond_the_limit_and_frees_slots_when_responses_end() {
    let b = mock_backend();
    let g = gateway_at(&write_config(&config(
        2,
        "admin: 127.0.0.1:0",
        &format!(
            "  svc:\n    backends: [http://{}]\n    max_in_flight: 2\n",
            b.addr
        ),
    )));
    let raw = b"GET /v1/proxy/svc/slow HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 1500\r\n\r\n";
    let addr = g.proc.addr;
    let threads = spawn_requests(addr, 6, raw);
    let answers: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let over: Vec<&Response> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!((ok, over.len()), (2, 4), "{answers:?}");
    for r in over {
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "overloaded", "service": "svc"})
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // The slots came back: the next two are admitted at once.
    // (A worker releases its slot just after the response's last byte is written.)
    let metrics = || get(g.admin, "/metrics").text();
    let released = eventually(Duration::from_secs(5), || {
        metrics().contains("gateway_in_flight{service=\"svc\"} 0\n")
    });
    let m = metrics();
    assert!(released, "{m}");
    assert!(
        m.contains("gateway_overloaded_total{service=\"svc\"} 4\n"),
        "{m}"
    );
    assert_eq!(get(addr, "/v1/proxy/svc/a").status, 200);
}

#[test]
fn a_flood_of_429s_reaches_no_backend_and_never_touches_a_breaker() {
    let rec = Recorder::start(reply(200));
    let log = std::env::temp_dir().join(format!("gateway-429-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let g = gateway_at(&write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\naccess_log: {}\nbreaker: {{failure_threshold: 1, cooldown: 60s}}",
            log.display()
        ),
        &format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 1/h, burst: 1}}\n",
            rec.addr
        ),
    )));
    let mut c = Client::connect(g.proc.addr);
    let got = statuses(&mut c, 200, "");
    assert_eq!((count(&got, 200), count(&got, 429)), (1, 199));
    assert_eq!(rec.requests(), 1);
    let text = get(g.admin, "/admin/backends").json().to_string();
    for want in [
        "\"state\":\"closed\"",
        "\"consecutive_failures\":0",
        "\"failures\":0",
        "\"transitions\":0",
        "\"successes\":1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let m = get(g.admin, "/metrics").text();
    assert!(
        m.contains("gateway_rate_limited_total{service=\"svc\"} 199\n"),
        "{m}"
    );
    // The access log names the service and the code of every 429.
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    let logged =
        |l: &str| l.contains(" 429 ") && l.contains(" svc ") && l.ends_with("rate_limited");
    assert!(
        eventually(Duration::from_secs(5), || lines()
            .lines()
            .filter(|l| logged(l))
            .count()
            == 199),
        "{}",
        lines()
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn a_reload_keeps_unchanged_budgets_and_starts_changed_ones_fresh() {
    let b = mock_backend();
    let services = |burst: u32| {
        format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 1/h, burst: {burst}}}\n  ip:\n    backends: [http://{}]\n    rate_limit: {{rate: 1/h, burst: 1, key: client_ip}}\n",
            b.addr, b.addr
        )
    };
    let path = write_config(&config(1, "admin: 127.0.0.1:0", &services(2)));
    let g = gateway_at(&path);
    let mut c = Client::connect(g.proc.addr);
    assert_eq!(statuses(&mut c, 3, ""), [200, 200, 429]);
    let ip_get = |c: &mut Client| {
        c.send(b"GET /v1/proxy/ip/x HTTP/1.1\r\nHost: g\r\n\r\n");
        c.read_response().status
    };
    assert_eq!((ip_get(&mut c), ip_get(&mut c)), (200, 429));
    let generation = |n: u64| {
        assert!(eventually(Duration::from_secs(5), || get(
            g.admin,
            "/admin/config"
        )
        .json()["generation"]
            == n));
    };
    // The same limits (and a new service): no fresh burst for anyone.
    std::fs::write(
        &path,
        config(
            1,
            "admin: 127.0.0.1:0",
            &format!("{}  other: [http://{}]\n", services(2), b.addr),
        ),
    )
    .unwrap();
    signal(&g.proc.child, libc::SIGHUP);
    generation(2);
    assert_eq!(statuses(&mut c, 1, ""), [429]);
    assert_eq!(ip_get(&mut c), 429);
    // A changed limit starts fresh; the unchanged keyed one still carries over.
    std::fs::write(&path, config(1, "admin: 127.0.0.1:0", &services(3))).unwrap();
    signal(&g.proc.child, libc::SIGHUP);
    generation(3);
    assert_eq!(statuses(&mut c, 4, ""), [200, 200, 200, 429]);
    assert_eq!(ip_get(&mut c), 429);
    let cfg = get(g.admin, "/admin/config").json();
    let svc = &cfg["services"].as_array().unwrap()[1];
    assert_eq!(svc["name"], "svc");
    assert_eq!(
        svc["rate_limit"],
        serde_json::json!({"rate": "1/h", "burst": 3, "key": "service"})
    );
    // Unset is `off`, as the config writes it and as `rate_limit` says it (was `null`).
    assert_eq!(svc["max_in_flight"], "off");
}

#[test]
fn ratelimit_remaining_is_never_above_the_quota() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "rate_limit_headers: true",
        &format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 2/m, burst: 5}}\n",
            b.addr
        ),
    ));
    let mut c = Client::connect(g.addr);
    let mut seen = Vec::new();
    for _ in 0..5 {
        c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
        seen.push(r.header("ratelimit").unwrap_or_default().to_string());
    }
    // The burst of 5 leaves 4, 3, 2, 1, 0: said as at most the quota of 2.
    let r: Vec<&str> = seen
        .iter()
        .map(|s| s.split(';').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(r, ["r=2", "r=2", "r=2", "r=1", "r=0"], "{seen:?}");
}

#[test]
fn ratelimit_fields_on_429s_and_with_rate_limit_headers_on_admitted_responses() {
    let b = mock_backend();
    let services = format!(
        "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 10/m, burst: 3}}\n  open:\n    backends: [http://{}]\n    rate_limit: off\n",
        b.addr, b.addr
    );
    for headers in [false, true] {
        let g = gateway(&config(
            1,
            &format!("rate_limit_headers: {headers}\nrate_limit: {{rate: 5/s}}"),
            &services,
        ));
        let mut c = Client::connect(g.addr);
        for i in 0..4 {
            c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
            let r = c.read_response();
            let policy = r.header("ratelimit-policy");
            let state = r.header("ratelimit");
            if i < 3 {
                assert_eq!(r.status, 200);
                if headers {
                    assert_eq!(policy, Some("\"default\";q=10;w=60"));
                    let want = format!("\"default\";r={};t=", 2 - i);
                    assert!(state.unwrap().starts_with(&want), "{state:?}");
                } else {
                    assert_eq!((policy, state), (None, None));
                }
            } else {
                assert_eq!(r.status, 429);
                assert_eq!(policy, Some("\"default\";q=10;w=60"));
                let retry = r.header("retry-after").unwrap();
                assert_eq!(state, Some(format!("\"default\";r=0;t={retry}").as_str()));
                // One more request every 6 s.
                let secs: u64 = retry.parse().unwrap();
                assert!((1..=6).contains(&secs), "{secs}");
            }
        }
        // `rate_limit: off` overrides the top-level default.
        for _ in 0..10 {
            c.send(b"GET /v1/proxy/open/x HTTP/1.1\r\nHost: g\r\n\r\n");
            let r = c.read_response();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("ratelimit"), None);
        }
    }
}

#[test]
fn check_rejects_bad_limits_naming_the_key_and_shows_the_table() {
    let run = |yaml: &str| {
        let path = write_config(yaml);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let svc = "  svc:\n    backends: [http://127.0.0.1:9]\n";
    for (extra, says) in [
        ("rate_limit: {rate: 0/s}", "rate_limit.rate: \"0/s\""),
        ("rate_limit: {rate: 5/day}", "has a bad unit"),
        ("rate_limit: {rate: 5/s, burst: 0}", "rate_limit.burst"),
        (
            "rate_limit: {rate: 5/s, key: \"header:a b\"}",
            "rate_limit.key",
        ),
        (
            "rate_limit_table: 10",
            "rate_limit_table: 10 is out of range",
        ),
        ("trusted_proxies: [10.0.0.0/40]", "trusted_proxies[0]"),
    ] {
        let (ok, text) = run(&config(1, extra, svc));
        assert!(!ok && text.contains(says), "{extra}: {text}");
    }
    let (ok, text) = run(&config(
        1,
        "",
        &format!("{svc}    rate_limit: {{rate: 5/s, key: client_ip}}\n    max_in_flight: 0\n"),
    ));
    assert!(
        !ok && text.contains("services.svc.max_in_flight: 0 is out of range"),
        "{text}"
    );
    let (ok, text) = run(&config(
        1,
        "rate_limit_table: 4096",
        &format!("{svc}    rate_limit: {{rate: 5/s, key: client_ip}}\n    max_in_flight: 8\n"),
    ));
    assert!(ok, "{text}");
    assert!(
        text.contains("rate limit: 5/s burst 5 key client_ip; max in flight: 8"),
        "{text}"
    );
    assert!(
        text.contains("rate-limit table: 4096 cells, 64 KiB"),
        "{text}"
    );
}

/// Regression: a request refused with its body unread used to be closed at once: the
/// unread bytes turn the close into a reset, which breaks the client's upload and can
/// destroy the 429 still in flight. The connection now closes lingering (FIN after the
/// answer, the rest of the body read and dropped): the upload completes, the answer is read.
#[test]
fn a_refused_upload_gets_its_429_not_a_reset() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "",
        &format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 1/h, burst: 1}}\n",
            b.addr
        ),
    ));
    let mut c = Client::connect(g.addr);
    assert_eq!(statuses(&mut c, 1, ""), [200]);
    for _ in 0..5 {
        let mut c = Client::connect(g.addr);
        let body = vec![b'x'; 4 << 20];
        let mut w = c.stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let head = format!(
                "POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            w.write_all(head.as_bytes())?;
            w.write_all(&body)
        });
        // The client reads only once it has sent everything, as simple clients do; the
        // gateway takes (and drops) the body instead of resetting the connection under it.
        let sent = writer.join().unwrap();
        assert!(sent.is_ok(), "the upload was reset: {sent:?}");
        let r = c.read_response();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("connection"), Some("close"));
    }
}

/// A gateway with `max_in_flight: 1`, `timeouts.body: 1s` and `min_body_rate: 100`, and
/// `splice` as given (long Content-Length bodies then go socket to socket).
fn paced_gateway(b: &Proc, splice: bool) -> AdminGateway {
    gateway_at(&write_config(&config(
        1,
        &format!("admin: 127.0.0.1:0\nsplice: {splice}\ntimeouts: {{body: 1s}}\nlimits: {{min_body_rate: 100}}"),
        &format!(
            "  svc:\n    backends: [http://{}]\n    max_in_flight: 1\n",
            b.addr
        ),
    )))
}

/// Starts a POST of `len` body bytes and sends them `piece` at a time every `every`, on
/// its own thread, until they are all sent or the gateway stops taking them.
fn trickle(c: &Client, len: usize, piece: usize, every: Duration) -> std::thread::JoinHandle<()> {
    let mut s = c.stream.try_clone().expect("clone");
    std::thread::spawn(move || {
        use std::io::Write;
        let head =
            format!("POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nContent-Length: {len}\r\n\r\n");
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut sent = 0;
        while sent < len {
            std::thread::sleep(every);
            let n = piece.min(len - sent);
            if s.write_all(&vec![b'u'; n]).is_err() {
                return;
            }
            sent += n;
        }
    })
}

#[test]
fn an_upload_below_min_body_rate_gets_408_and_gives_its_slot_back() {
    // A byte every 250 ms: never a pause of `timeouts.body`, so before `min_body_rate` this
    // upload held the service's only slot for as long as its bytes took (here 28 hours).
    // With `splice`, a body of 64 KiB or more is moved by splice(2): paced the same way.
    for splice in [false, true] {
        let b = mock_backend();
        let g = paced_gateway(&b, splice);
        let mut slow = Client::connect(g.proc.addr);
        let sender = trickle(&slow, 100_000, 1, Duration::from_millis(250));
        std::thread::sleep(Duration::from_millis(400));
        let r = get(g.proc.addr, "/v1/proxy/svc/x");
        assert_eq!(r.status, 503, "the upload holds the slot: {}", r.text());
        // 4 bytes/s against 100: the 1 s of credit lasts about 1 s of trickling.
        let r = slow.read_response();
        assert_eq!(r.status, 408, "splice {splice}: {}", r.text());
        assert_eq!(r.json()["error"], "request_timeout");
        assert!(slow.closed_within(Duration::from_secs(3)));
        // The connection closes lingering, but a client still below the rate is not
        // read for the lingering's 30 s: it is cut off within about `timeouts.body`.
        let answered = Instant::now();
        sender.join().unwrap();
        assert!(
            answered.elapsed() < Duration::from_secs(6),
            "splice {splice}: the gateway took the trickle for {:?} after its 408",
            answered.elapsed()
        );
        let free = eventually(Duration::from_secs(3), || {
            get(g.proc.addr, "/v1/proxy/svc/x").status == 200
        });
        assert!(free, "splice {splice}: the slot was not given back");
    }
}

#[test]
fn chunk_framing_earns_no_pace() {
    // Chunks of one byte with 18 bytes of framing (within the framing allowance) every
    // 100 ms: 190 bytes/s on the wire, 10 of them body, against a minimum of 100. When
    // every byte on the wire counted, this upload held its slot for as long as it liked.
    let b = mock_backend();
    let g = paced_gateway(&b, false);
    let mut c = Client::connect(g.proc.addr);
    let mut s = c.stream.try_clone().expect("clone");
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = finished.clone();
    let sender = std::thread::spawn(move || {
        let _flag = Flag(done);
        use std::io::Write;
        let head =
            b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head).is_err() {
            return;
        }
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(b"1;aaaaaaaaaaaa\r\nZ\r\n").is_err() {
                return;
            }
        }
    });
    let r = c.read_response();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        !finished.load(Ordering::SeqCst),
        "answered only after the client stopped sending"
    );
    assert!(c.closed_within(Duration::from_secs(3)));
    sender.join().unwrap();
}

/// Sets its flag when dropped (a thread that ends, however it ends).
struct Flag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn an_upload_at_min_body_rate_or_above_is_relayed_whole_however_long_it_takes() {
    // 50 bytes every 150 ms (333 bytes/s) for 3 s: three times the 1 s of credit.
    let b = mock_backend();
    let g = paced_gateway(&b, false);
    let mut c = Client::connect(g.proc.addr);
    let sender = trickle(&c, 1000, 50, Duration::from_millis(150));
    let r = c.read_response();
    sender.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 1000);
}

#[test]
fn a_client_too_slow_to_read_is_reset_and_gives_its_slot_back() {
    // A client that reads 8 KB every 80 ms (about 100 KB/s) of a 32 MiB answer. Once the
    // socket buffers are full the gateway waits on it, and cuts it off (`timeouts.body`
    // per write, or `min_body_rate`, here 1 MB/s). The cut was a graceful close, which
    // left megabytes queued for the client in the kernel: it went on reading for minutes,
    // and a close-delimited body would have looked complete. Now it is a reset.
    let b = mock_backend();
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0\ntimeouts: {body: 1s}\nlimits: {min_body_rate: 1000000}",
        &format!(
            "  svc:\n    backends: [http://{}]\n    max_in_flight: 1\n",
            b.addr
        ),
    )));
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(65536).expect("SO_RCVBUF");
    sock.connect(&g.proc.addr.into()).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    use std::io::{Read, Write};
    s.write_all(
        b"GET /v1/proxy/svc/big HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 33554432\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 8192];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(n) => got += n,
        }
        if start.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(80));
    };
    assert!(ended, "still reading after 20 s ({got} bytes)");
    assert!(got < 32 << 20, "the whole body arrived");
    let free = eventually(Duration::from_secs(3), || {
        get(g.proc.addr, "/v1/proxy/svc/x").status == 200
    });
    assert!(free, "the slot was not given back");
}

#[test]
fn a_client_reading_well_above_min_body_rate_gets_the_whole_answer() {
    // 6 MiB read 64 KiB every 100 ms (640 KB/s) through a 256 KiB receive buffer, with
    // `timeouts.body: 1s`. The kernel held up to 4 MiB for the client and let the gateway
    // write again only once a third of that had drained, about 2 s at this rate: the
    // write looked stalled and the download was reset, whatever `min_body_rate` said.
    read_slowly_to_the_end("");
    // Spliced, the client's socket holds more unsent (`splice.rs`): still not too much.
    read_slowly_to_the_end("splice: true\n");
}

fn read_slowly_to_the_end(extra: &str) {
    let b = mock_backend();
    let g = gateway_at(&write_config(&config(
        1,
        &format!("{extra}admin: 127.0.0.1:0\ntimeouts: {{body: 1s}}"),
        &format!("  svc: [http://{}]\n", b.addr),
    )));
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(256 * 1024).expect("SO_RCVBUF");
    sock.connect(&g.proc.addr.into()).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    use std::io::{Read, Write};
    s.write_all(b"GET /v1/proxy/svc/big HTTP/1.1\r\nHost: g\r\nConnection: close\r\nx-mock-body-bytes: 6291456\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{extra:?}: after {} bytes: {e}", got.len()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{extra:?}");
    assert_eq!(got.len() - head_end, 6 << 20, "{extra:?}: the whole body");
}
