//! What an operator reads: metric series that never silently stop, access log rotation and write errors, secrets kept out of logs and the admin API, one attribution per error, and the reload line.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gateway-obs-{}-{name}", std::process::id()))
}

/// A mock backend and a one-worker gateway with an admin listener serving it as `svc`,
/// with `extra` config lines.
fn svc_gateway(extra: &str) -> (Proc, AdminGateway) {
    let b = mock_backend();
    let path = write_config(&config(
        1,
        &format!("admin: 127.0.0.1:0\n{extra}"),
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let g = gateway_at(&path);
    (b, g)
}

#[test]
fn a_413_counts_for_its_service_whether_found_by_length_or_in_a_chunked_body() {
    // Regression: a 413 found by Content-Length (before a backend is picked) was counted
    // and logged with no service, one found in a chunked body with it.
    let log = temp_path("413.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!(
        "access_log: {}\nlimits: {{max_body_bytes: 1000}}",
        log.display()
    ));
    let r = request(
        g.proc.addr,
        "POST /v1/proxy/svc/by-length HTTP/1.1\r\nHost: g\r\nContent-Length: 1001\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["service"], "svc", "{}", r.text());
    let chunk = format!("{:x}\r\n{}\r\n", 1001, "a".repeat(1001));
    let r = request(
        g.proc.addr,
        &format!("POST /v1/proxy/svc/chunked HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["service"], "svc", "{}", r.text());
    // Counted just after the answer is sent: poll until both are in.
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}") == Some(2.0)
    });
    assert!(counted, "{m}");
    assert_eq!(
        sample(
            &m,
            "gateway_errors_total{service=\"svc\",code=\"body_too_large\",status=\"413\"}"
        ),
        Some(2.0)
    );
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    }));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    for target in ["/v1/proxy/svc/by-length", "/v1/proxy/svc/chunked"] {
        let line = text.lines().find(|l| l.contains(target)).unwrap_or("");
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 11, "{text}");
        assert_eq!(
            (f[4], f[6], f[10]),
            ("svc", "413", "body_too_large"),
            "{line}"
        );
    }
    // A response to no service counts without one, so that the family sums up to every
    // response (an operator review's requests for unknown services went uncounted there).
    assert_eq!(get(g.proc.addr, "/v1/proxy/nope/x").status, 404);
    assert_eq!(get(g.proc.addr, "/elsewhere").status, 404);
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(&m, "gateway_requests_total{class=\"4xx\"}") == Some(2.0)
    });
    assert!(counted, "{m}");
    assert_eq!(
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}"),
        Some(2.0)
    );
}

/// `gateway_request_bytes_total` counts what clients sent for a service as it came on the
/// wire: heads, Content-Length bodies (in hand with the head or streamed after it), chunked
/// bodies with their framing and trailers, each of pipelined requests once, and the head of
/// a request refused before or after it parsed or cut short (a 408: what had come); not a
/// body refused unread (a 413 by its length). Requests for no configured service are
/// counted without a service.
#[test]
fn request_bytes_count_heads_and_bodies_as_they_came() {
    let (_b, g) = svc_gateway("limits: {max_body_bytes: 100000}\ntimeouts: {client_header: 300ms}");
    let pipelined = [
        "GET /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\n\r\n".to_string(),
        "POST /v1/proxy/svc/b HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\n\r\n0123456789".to_string(),
        "POST /v1/proxy/svc/c HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: y\r\n\r\n".to_string(),
        "GET /v1/proxy/svc/d HTTP/1.1\r\nHost: g\r\n\r\n".to_string(),
    ];
    let mut c = Client::connect(g.proc.addr);
    c.send(pipelined.concat().as_bytes());
    for (raw, want) in pipelined.iter().zip([0, 10, 5, 0]) {
        let r = c.read_response();
        assert_eq!(
            (r.status, r.json()["body_len"].as_u64()),
            (200, Some(want)),
            "{raw}"
        );
    }
    let mut sent: usize = pipelined.iter().map(String::len).sum();
    // A body that comes after its head, in two writes: the streamed path.
    let body = vec![b'z'; 90_000];
    let head = format!(
        "PUT /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes());
    std::thread::sleep(Duration::from_millis(20));
    c.send(&body[..40_000]);
    std::thread::sleep(Duration::from_millis(5));
    c.send(&body[40_000..]);
    assert_eq!(c.read_response().json()["body_len"], 90_000);
    sent += head.len() + body.len();
    // Refused after parsing, its body never read: the head.
    let too_big = "POST /v1/proxy/svc/big HTTP/1.1\r\nHost: g\r\nContent-Length: 200000\r\n\r\n";
    assert_eq!(request(g.proc.addr, too_big).status, 413);
    sent += too_big.len();
    // Refused by the parser, routed by its request line: the head.
    let trace = "TRACE /v1/proxy/svc/t HTTP/1.1\r\nHost: g\r\n\r\n";
    assert_eq!(request(g.proc.addr, trace).status, 405);
    sent += trace.len();
    // A head that never ended (408): what had come of it.
    let partial = "GET /v1/proxy/svc/slow HTTP/1.1\r\nHost: g\r\n";
    let mut slow = Client::connect(g.proc.addr);
    slow.send(partial.as_bytes());
    assert_eq!(slow.read_response().status, 408);
    sent += partial.len();
    // For no configured service: in the series without one, both ways (an operator
    // review's scanner traffic moved neither byte counter).
    let nope = "GET /v1/proxy/nope/x HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n";
    let mut s = std::net::TcpStream::connect(g.proc.addr).unwrap();
    s.write_all(nope.as_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 404 "), "{answer:?}");
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"2xx\"}") == Some(5.0)
            && sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}") == Some(3.0)
            && sample(&m, "gateway_requests_total{class=\"4xx\"}") == Some(1.0)
    });
    assert!(counted, "{m}");
    assert_eq!(
        sample(&m, "gateway_request_bytes_total{service=\"svc\"}"),
        Some(sent as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gateway_request_bytes_total"),
        Some(nope.len() as f64),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gateway_response_bytes_total"),
        Some(answer.len() as f64),
        "{m}"
    );
}

/// Regression: a request the parser refused (405, 501, 417, a 400 for its framing) was
/// logged with `-` for method, target and service and counted for no service, and a 400's
/// log line did not say which rule it broke. A plain request line now gives the log its
/// method and target and, when it routes to a configured service, the service; the error
/// field names the rule (`bad_request:missing_host`). Bytes that are not plain are never
/// logged raw.
#[test]
fn a_refused_head_is_logged_and_counted_with_what_its_request_line_says() {
    let log = temp_path("refused.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!("access_log: {}", log.display()));
    let cases = [
        ("TRACE /v1/proxy/svc/t HTTP/1.1\r\nHost: g\r\n\r\n", 405, "TRACE", "method_not_allowed"),
        ("FOO /v1/proxy/svc/f HTTP/1.1\r\nHost: g\r\n\r\n", 501, "FOO", "not_implemented"),
        ("GET /v1/proxy/svc/e HTTP/1.1\r\nHost: g\r\nExpect: nope\r\n\r\n", 417, "GET", "expectation_failed"),
        ("GET /v1/proxy/svc/h HTTP/1.1\r\n\r\n", 400, "GET", "bad_request:missing_host"),
        ("POST /v1/proxy/svc/c HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "POST", "bad_request:"),
    ];
    for (raw, status, _, _) in cases {
        let r = request(g.proc.addr, raw);
        assert_eq!(r.status, status, "{raw}");
        assert_eq!(r.json()["service"], "svc", "{raw}: {}", r.text());
    }
    // Absolute-form: reduced to its path, as for a request served, and routed.
    let r = request(
        g.proc.addr,
        "TRACE http://evil/v1/proxy/svc/abs HTTP/1.1\r\nHost: g\r\n\r\n",
    );
    assert_eq!(
        (r.status, &r.json()["service"]),
        (405, &serde_json::json!("svc"))
    );
    // Not plain: a control byte in the target. Refused, and logged with `-`.
    let r = request(
        g.proc.addr,
        "GET /v1/proxy/svc/\x01x HTTP/1.1\r\nHost: g\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}") == Some(5.0)
            && sample(&m, "gateway_requests_total{service=\"svc\",class=\"5xx\"}") == Some(1.0)
    });
    assert!(counted, "{m}");
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 7)
    }));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    for (raw, status, method, error) in cases {
        let target = raw.split(' ').nth(1).unwrap_or_default();
        let line = text.lines().find(|l| l.contains(target)).unwrap_or("");
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 11, "{text}");
        assert_eq!(
            (f[2], f[4], f[6]),
            (method, "svc", &*status.to_string()),
            "{line}"
        );
        assert!(f[10].starts_with(error), "{line}");
    }
    let abs = text
        .lines()
        .find(|l| l.contains(" TRACE /v1/proxy/svc/abs svc "))
        .unwrap_or("");
    assert!(!abs.is_empty() && !abs.contains("evil"), "{text}");
    let odd = text
        .lines()
        .find(|l| l.contains(" 400 ") && l.contains(" - - - - "))
        .unwrap_or("");
    assert!(!odd.is_empty() && !odd.contains('\x01'), "{text}");
}

/// Regression (an operator review): a 504 after the whole response timeout was logged with
/// `-` for its upstream time; it is now the time the backend was waited on.
#[test]
fn a_backend_timeout_is_logged_with_the_time_waited() {
    let log = temp_path("upstream-time.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!(
        "timeouts: {{response: 300ms}}\naccess_log: {}",
        log.display()
    ));
    let r = request(
        g.proc.addr,
        "GET /v1/proxy/svc/late HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 2000\r\n\r\n",
    );
    assert_eq!(r.status, 504);
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/late"))
    }));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let line = text.lines().find(|l| l.contains("/late")).unwrap_or("");
    let waited: f64 = line
        .split(' ')
        .nth(8)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0.0);
    // The timeout cannot fire early: at least its 300 ms were waited.
    assert!(waited >= 0.29, "{line}");
}

/// Regression (an operator review): an upload that stalled after its head had gone to the
/// backend was answered 408 and logged with the backend but `-` for `upstream_seconds`,
/// which says no request reached one.
#[test]
fn a_stalled_upload_is_logged_with_the_time_its_backend_was_waited_on() {
    let log = temp_path("stalled-upload.log");
    let _ = std::fs::remove_file(&log);
    let (b, g) = svc_gateway(&format!(
        "timeouts: {{body: 300ms}}\naccess_log: {}",
        log.display()
    ));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"POST /v1/proxy/svc/stall HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n\r\nab");
    assert_eq!(c.read_response().status, 408);
    let (text, line) = logged_line(&log, "/stall");
    assert_eq!(line.get(5), Some(&format!("http://{}", b.addr)), "{text}");
    let waited: f64 = line.get(8).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    assert!(waited >= 0.29, "{text}");
}

/// What clients waited and received, per service: a request's head to its response's end
/// (the gateway's own 504 included, which the upstream histogram cannot hold: no head
/// came), and the bytes the kernel took. Operators had only the backend's side (an operator
/// review: a 504 was in no histogram, so an outage of timeouts left latency panels flat).
#[test]
fn the_duration_clients_waited_and_the_bytes_they_got_are_counted_per_service() {
    use std::io::{Read, Write};
    let (_b, g) = svc_gateway("timeouts: {response: 300ms}");
    let raw = |head: &str| {
        let mut s = std::net::TcpStream::connect(g.proc.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(head.as_bytes()).expect("send");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    };
    let slow = raw("GET /v1/proxy/svc/slow HTTP/1.1\r\nHost: g\r\nConnection: close\r\nx-mock-delay-ms: 150\r\nx-mock-body-bytes: 5000\r\n\r\n");
    assert!(
        slow.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&slow)
    );
    let late = raw("GET /v1/proxy/svc/late HTTP/1.1\r\nHost: g\r\nConnection: close\r\nx-mock-delay-ms: 2000\r\n\r\n");
    assert!(
        late.starts_with(b"HTTP/1.1 504 "),
        "{}",
        String::from_utf8_lossy(&late)
    );
    let mut m = String::new();
    let series = "gateway_request_duration_seconds";
    let both_in = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(&m, &format!("{series}_count{{service=\"svc\"}}")) == Some(2.0)
    });
    assert!(both_in, "{m}");
    let bucket = |le: &str| {
        sample(
            &m,
            &format!("{series}_bucket{{service=\"svc\",le=\"{le}\"}}"),
        )
    };
    // Lower bounds only: each took at least what the backend or the timeout made it wait.
    assert_eq!(bucket("0.1"), Some(0.0), "{m}");
    assert!(
        bucket("0.25").is_some_and(|n| n <= 1.0),
        "the 504 waited 300 ms: {m}"
    );
    assert_eq!(bucket("+Inf"), Some(2.0), "{m}");
    let sum = sample(&m, &format!("{series}_sum{{service=\"svc\"}}")).unwrap_or(0.0);
    assert!(sum >= 0.45, "{m}");
    // The backend's own histogram has only the answer that came.
    assert_eq!(
        sample(
            &m,
            "gateway_upstream_response_seconds_count{service=\"svc\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gateway_response_bytes_total{service=\"svc\"}"),
        Some((slow.len() + late.len()) as f64),
        "{m}"
    );
}

/// Interim responses count as sent: a backend's 103 relayed and the gateway's own `100
/// Continue` are in the log's `bytes` and in `gateway_response_bytes_total` (they were left
/// out, so both fell short of what the client received).
#[test]
fn interim_responses_count_in_the_bytes_sent() {
    use std::io::{Read, Write};
    let log = temp_path("interim.log");
    let (_b, g) = svc_gateway(&format!("access_log: {}", log.display()));
    let connect = || {
        let s = std::net::TcpStream::connect(g.proc.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    };
    let mut s = connect();
    s.write_all(b"GET /v1/proxy/svc/hints HTTP/1.1\r\nHost: g\r\nConnection: close\r\nx-mock-fault: early-hints\r\n\r\n").expect("send");
    let mut hints = Vec::new();
    s.read_to_end(&mut hints).expect("read");
    assert!(
        hints.starts_with(b"HTTP/1.1 103 "),
        "{}",
        String::from_utf8_lossy(&hints)
    );
    let mut s = connect();
    s.write_all(b"POST /v1/proxy/svc/cont HTTP/1.1\r\nHost: g\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").expect("send");
    let mut cont = vec![0u8; 25];
    s.read_exact(&mut cont).expect("read the 100");
    assert_eq!(cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").expect("body");
    s.read_to_end(&mut cont).expect("read");
    assert!(
        cont[25..].starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&cont)
    );
    let text = logged_lines(&log, 2);
    for (target, got) in [("/hints", &hints), ("/cont", &cont)] {
        let line = text.lines().find(|l| l.contains(target)).unwrap_or("");
        assert_eq!(
            line.split(' ').nth(7),
            Some(&*got.len().to_string()),
            "{line}"
        );
    }
    let m = metrics(g.admin);
    assert_eq!(
        sample(&m, "gateway_response_bytes_total{service=\"svc\"}"),
        Some((hints.len() + cont.len()) as f64),
        "{m}"
    );
}

/// Regression (an operator review, 2026-12-05): a backend's malformed answer was said as
/// `backend_bad_response` alone in the log, and the breaker's line too; the rule it broke
/// was only in the access log and the client's body.
#[test]
fn a_bad_response_is_said_in_the_log_with_the_rule_it_broke() {
    let rec = Recorder::start(Mode::Reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .to_vec(),
    ));
    let log = temp_path("bad-response.log");
    let g = gateway_at_logging_to(
        &write_config(&config(
            1,
            "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1}",
            &format!("  svc: [http://{}]\n", rec.addr),
        )),
        &log,
    );
    let r = get(g.proc.addr, "/v1/proxy/svc/x");
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["detail"],
        "content_length_and_transfer_encoding",
        "{}",
        r.text()
    );
    let said = format!(
        "backend: svc http://{}: backend_bad_response (content_length_and_transfer_encoding)",
        rec.addr
    );
    let opened = "the last: backend_bad_response (content_length_and_transfer_encoding) to GET /v1/proxy/svc/x";
    let mut text = String::new();
    let both = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(&said) && text.contains(opened)
    });
    let _ = std::fs::remove_file(&log);
    assert!(both, "{text}");
}

/// Regression (an operator review): backend failures reached the log only when a circuit
/// opened, so with the access log off (the default) an operator saw them in the metrics
/// alone, where NGINX's error log has a line for each. Each worker now says one a second,
/// and how many it did not say.
#[test]
fn backend_failures_are_said_in_the_log_once_a_second() {
    let rec = Recorder::start(reply(500));
    let log = temp_path("failures.log");
    let g = gateway_at_logging_to(
        &write_config(&config(
            1,
            "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1000}",
            &format!("  svc: [http://{}]\n", rec.addr),
        )),
        &log,
    );
    let said = format!("backend: svc http://{}: status 500", rec.addr);
    let fail = |n: usize| {
        for _ in 0..n {
            assert_eq!(get(g.proc.addr, "/v1/proxy/svc/x").status, 500);
        }
    };
    fail(3);
    // Every failure is accounted for: said, or counted on a later line ("and N more" with
    // the next failure, or "N more" on its own within about a second when none comes), and
    // the first is said at once.
    let number_before = |line: &str, mark: &str| -> u64 {
        line.split(mark)
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut text = String::new();
    let accounted = |text: &str| -> u64 {
        text.lines()
            .map(|l| {
                let mut n = 0;
                if l.contains(&said) {
                    n += 1;
                }
                if l.contains(" more backend failure") && l.contains("worker 0") {
                    n += number_before(l, " more backend failure");
                }
                n
            })
            .sum()
    };
    // Held back, and said with no further failure (they used to wait for the next one).
    let mut all = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        accounted(&text) == 3
    });
    // Three failures within a few ms: the second and third were held back, not said.
    let lines = text.lines().filter(|l| l.contains(&said)).count();
    if all {
        fail(2);
        all = eventually(Duration::from_secs(5), || {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            accounted(&text) == 5
        });
    }
    let _ = std::fs::remove_file(&log);
    assert!(all, "{text}");
    assert_eq!(lines, 1, "{text}");
    // Every line names its worker, and one said on its own names the last failure it
    // counts and how long before the line it came (operator reviews).
    assert!(
        text.lines()
            .filter(|l| l.contains(&said))
            .all(|l| l.contains("(worker 0")),
        "{text}"
    );
    let last = format!(": svc http://{}: status 500", rec.addr);
    assert!(
        text.lines().any(|l| l.contains("backend: worker 0: ")
            && l.contains(" more backend failures since its last such line, the last ")
            && l.contains(" ms before this line")
            && l.ends_with(&last)),
        "{text}"
    );
}

/// Regression (an operator review): behind a load balancer listed in `trusted_proxies`, the
/// access log named the balancer, never the client, where NGINX's realip names the client.
/// It now names the client `client_ip` finds (the rightmost untrusted `X-Forwarded-For`
/// entry); an untrusted peer's `X-Forwarded-For` is not believed.
#[test]
fn behind_a_trusted_proxy_the_log_names_its_client() {
    for (trusted, want) in [
        ("trusted_proxies: [127.0.0.1/32]\n", "203.0.113.7"),
        ("", "127.0.0.1"),
    ] {
        let log = temp_path("realip.log");
        let _ = std::fs::remove_file(&log);
        let (_b, g) = svc_gateway(&format!("{trusted}access_log: {}", log.display()));
        let r = request(
            g.proc.addr,
            "GET /v1/proxy/svc/xff HTTP/1.1\r\nHost: g\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert!(eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/xff"))
        }));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        let line = text.lines().find(|l| l.contains("/xff")).unwrap_or("");
        assert_eq!(line.split(' ').nth(1), Some(want), "{trusted}: {line}");
    }
}

/// Regression: a response cut short after its head (here the client reads 2 MiB of 20 MB
/// and resets) was logged with the bytes of its head alone and no error, like a complete
/// one. Its line now has the bytes that got through and `response_cut_short`.
#[test]
fn a_response_cut_short_is_logged_with_what_got_through() {
    use std::io::Read;
    let log = temp_path("cut-short.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!("access_log: {}", log.display()));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/big HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 20000000\r\n\r\n");
    let mut got = 0usize;
    let mut buf = [0u8; 65536];
    while got < 2 << 20 {
        let n = c.stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        got += n;
    }
    reset(c);
    let (text, f) = logged_line(&log, "/v1/proxy/svc/big");
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    assert_eq!(f.len(), 11, "{text}");
    let bytes: u64 = f[7].parse().expect("bytes");
    assert!((2 << 20..20_000_000).contains(&bytes), "{text}");
    assert_eq!((f[6], f[10]), ("200", "response_cut_short"), "{text}");
    // Cut responses are counted apart too (an operator review: a backend crashing
    // mid-response showed in no metric): this one, and one the backend closes mid-body.
    let mut r = Client::connect(g.proc.addr);
    r.send(b"GET /v1/proxy/svc/cut HTTP/1.1\r\nHost: g\r\nx-mock-fault: close-mid-body\r\nx-mock-body-bytes: 100000\r\n\r\n");
    assert!(
        r.read_until_end().is_err(),
        "a cut body must end in a reset"
    );
    let cut = || {
        sample(
            &metrics(g.admin),
            "gateway_responses_cut_total{service=\"svc\"}",
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || cut() == Some(2.0)),
        "{:?}",
        cut()
    );
}

/// Regression: a client that reset its connection while the backend was still working was
/// logged `200` with the head's bytes and counted as a 2xx, although no answer reached it
/// (a review). It is now what the contract says: status 0, bytes 0, counted as aborted,
/// and the log's error field says why.
#[test]
fn a_client_that_resets_before_the_answer_is_logged_and_counted_as_aborted() {
    let log = temp_path("reset-abort.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!("access_log: {}", log.display()));
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/slow HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 300\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    reset(c);
    // The same for a pipelined request answered after its client closed the connection
    // (its answer meets the reset that the first answer drew).
    let mut c = Client::connect(g.proc.addr);
    let first = b"GET /v1/proxy/svc/one HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 200\r\n\r\n";
    let second = b"GET /v1/proxy/svc/two HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 200\r\n\r\n";
    c.send(&[&first[..], &second[..]].concat());
    drop(c);
    let text = logged_lines(&log, 3);
    for target in ["/v1/proxy/svc/slow", "/v1/proxy/svc/two"] {
        let line = text.lines().find(|l| l.contains(target)).unwrap_or("");
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() >= 11, "{text}");
        // Regression: the error field said `-`, as for an answer sent whole.
        let (status, bytes, error) = (f[6], f[7], f[10]);
        assert_eq!(
            (status, bytes, error),
            ("0", "0", "client_closed_request"),
            "{text}"
        );
    }
    let m = metrics(g.admin);
    assert_eq!(
        sample(&m, "gateway_requests_aborted_total{service=\"svc\"}"),
        Some(2.0),
        "{m}"
    );
    // Only the pipelined first answer, which the kernel took before the reset came back.
    assert_eq!(
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"2xx\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "gateway_errors_total{service=\"svc\",code=\"client_closed_request\",status=\"499\"}"
        ),
        Some(2.0),
        "{m}"
    );
}

/// Regression (a review): a client that left in the middle of its upload, by a reset or a
/// close, streamed or buffered, or after asking for `100 Continue`, was logged with status
/// 0 and error `-`, and counted as aborted but not in `gateway_errors_total`.
#[test]
fn a_client_that_leaves_mid_upload_is_logged_and_counted_as_gone() {
    let log = temp_path("upload-abort.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!("access_log: {}", log.display()));
    let (_b2, g2) = svc_gateway(&format!(
        "access_log: {}\nlimits: {{buffer_request_body: 65536}}",
        log.display()
    ));
    let heads = [
        "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\nContent-Length: 10000\r\n\r\n",
        "POST /v1/proxy/svc/b HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n",
        "POST /v1/proxy/svc/c HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 10000\r\n\r\n",
    ];
    let mut n = 0;
    for addr in [g.proc.addr, g2.proc.addr] {
        for head in heads {
            for by_reset in [true, false] {
                let mut c = Client::connect(addr);
                c.send(head.as_bytes());
                if head.contains("100-continue") {
                    assert_eq!(c.read_response().status, 100);
                }
                c.send(&[b'x'; 100]);
                std::thread::sleep(Duration::from_millis(50));
                if by_reset {
                    reset(c);
                } else {
                    drop(c);
                }
                n += 1;
            }
        }
    }
    let text = logged_lines(&log, n);
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert!(f.len() >= 11, "{text}");
        assert_eq!((f[6], f[10]), ("0", "client_closed_request"), "{line}");
    }
    for admin in [g.admin, g2.admin] {
        let m = metrics(admin);
        let gone =
            "gateway_errors_total{service=\"svc\",code=\"client_closed_request\",status=\"499\"}";
        assert_eq!(sample(&m, gone), Some(6.0), "{m}");
        assert_eq!(
            sample(&m, "gateway_requests_aborted_total{service=\"svc\"}"),
            Some(6.0),
            "{m}"
        );
    }
}

/// Regression (an operator review): a 400 for an unsafe path under a configured service
/// named no service (body, log, counts), and a 408 for a head that stopped in its fields
/// was logged with `-` for method and target and a total time near 0 instead of the
/// `client_header` it waited.
#[test]
fn a_timed_out_head_and_an_unsafe_path_are_logged_and_counted_for_their_service() {
    let log = temp_path("408.log");
    let _ = std::fs::remove_file(&log);
    let extra = format!(
        "access_log: {}\ntimeouts: {{client_header: 1s}}",
        log.display()
    );
    let (_b, g) = svc_gateway(&extra);
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/slowhead HTTP/1.1\r\nHo");
    assert_eq!(c.read_response().status, 408);
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/../x HTTP/1.1\r\nHost: g\r\n\r\n");
    let r = c.read_response();
    assert_eq!((r.status, r.json()["service"].as_str()), (400, Some("svc")));
    // One worker writes its lines in order: the later one's arrival brings the first.
    let (text, _) = logged_line(&log, "/../x");
    let f: Vec<&str> = text
        .lines()
        .find(|l| l.contains("slowhead"))
        .unwrap_or("")
        .split(' ')
        .collect();
    assert!(f.len() >= 10, "{text}");
    assert_eq!((f[2], f[4], f[6]), ("GET", "svc", "408"), "{text}");
    let total: f64 = f[9].parse().expect("total");
    assert!(total >= 0.9, "{text}");
    let unsafe_line = text.lines().find(|l| l.contains("/../x")).unwrap_or("");
    assert!(unsafe_line.contains(" svc - 400 "), "{text}");
    let m = metrics(g.admin);
    assert_eq!(
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}"),
        Some(2.0),
        "{m}"
    );
}

/// Regression: a 408 for a head whose request line had come counted for its service only
/// with the access log on (the line was kept for the log alone); with it off, for none.
#[test]
fn a_timed_out_head_counts_for_its_service_with_the_access_log_off() {
    let (_b, g) = svc_gateway("timeouts: {client_header: 300ms}");
    let mut c = Client::connect(g.proc.addr);
    c.send(b"GET /v1/proxy/svc/slowhead HTTP/1.1\r\nHo");
    assert_eq!(c.read_response().status, 408);
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(
            &m,
            "gateway_errors_total{service=\"svc\",code=\"request_timeout\",status=\"408\"}",
        ) == Some(1.0)
    });
    assert!(counted, "{m}");
    assert_eq!(
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}"),
        Some(1.0),
        "{m}"
    );
}

/// A one-worker gateway serving `svc` at `backend` with `access_log: stdout` and `extra`
/// config lines, its log (stderr, `RUST_LOG=warn`) in `log`, where it also says where it
/// listens: the gateway (stopped by its own PID on drop, so a failed assertion leaves none
/// behind) and its stdout, which is the access log.
fn gateway_logging_to_stdout(
    backend: std::net::SocketAddr,
    extra: &str,
    log: &std::path::Path,
) -> (Proc, std::process::ChildStdout) {
    use std::process::{Command, Stdio};
    let path = write_config(&config(
        1,
        &format!("access_log: stdout\n{extra}"),
        &format!("  svc: [http://{backend}]\n"),
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).expect("log")))
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut g = Proc {
        child,
        addr: ([127, 0, 0, 1], 0).into(),
        config: Some(path),
    };
    g.addr = address_in(log, "listening on ");
    (g, out)
}

/// The address after `prefix` on a line of the file `log`, waiting up to 10 s for it.
fn address_in(log: &std::path::Path, prefix: &str) -> std::net::SocketAddr {
    let mut found = None;
    eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok());
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {prefix:?} line in {}", log.display()))
}

/// Regression: with `access_log: stdout`, stdout began with `listening on ADDR` and
/// `admin on ADDR`, which a log shipper parsing the JSON access log choked on. Those lines
/// now go to stderr, and stdout is the access log alone.
#[test]
fn with_the_access_log_on_stdout_stdout_is_the_access_log_alone() {
    use std::io::Read;
    let b = mock_backend();
    let log = temp_path("json-stdout.err");
    let extra = "admin: 127.0.0.1:0\naccess_log_format: json";
    let (mut g, mut out) = gateway_logging_to_stdout(b.addr, extra, &log);
    let (addr, admin) = (g.addr, address_in(&log, "admin on "));
    for i in 0..3 {
        assert_eq!(get(addr, &format!("/v1/proxy/svc/{i}")).status, 200);
    }
    assert_eq!(get(admin, "/healthz").status, 200);
    signal(&g.child, libc::SIGTERM);
    let t = std::time::Instant::now();
    exits_cleanly(&mut g.child, t);
    let mut text = String::new();
    out.read_to_string(&mut text).expect("stdout");
    let _ = std::fs::remove_file(&log);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(v["status"], 200, "{line}");
        assert_eq!(v["target"], format!("/v1/proxy/svc/{i}"), "{line}");
    }
}

/// Regression: with `access_log: stdout` into a pipe nobody reads, the lines the writer
/// still held at exit were lost without a word (an operator review). The exit now says so.
#[test]
fn access_log_lines_a_stuck_writer_holds_at_exit_are_reported_lost() {
    let b = mock_backend();
    let log = temp_path("stuck-stdout.err");
    // The address is on stderr (stdout is the access log); stdout is never read.
    let (mut g, out) = gateway_logging_to_stdout(b.addr, "timeouts: {drain: 1s}", &log);
    let addr = g.addr;
    let mut c = Client::connect(addr);
    let long = "x".repeat(400);
    for i in 0..600 {
        c.send(format!("GET /v1/proxy/svc/{long}/{i} HTTP/1.1\r\nHost: g\r\n\r\n").as_bytes());
        assert_eq!(c.read_response().status, 200);
    }
    drop(c);
    std::thread::sleep(Duration::from_millis(1500)); // the writer takes its batches and blocks
    signal(&g.child, libc::SIGTERM);
    let t = std::time::Instant::now();
    let _ = exit_status(&mut g.child, t, Duration::from_secs(10), "no exit");
    drop(out);
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(err.contains("did not catch up"), "{err}");
}

/// A gateway whose stderr (its log) goes to `log`, with `RUST_LOG=info`; returns it and its
/// admin address. Stopped (by its own PID) when the `Proc` drops.
fn gateway_logging_to(
    config: &std::path::Path,
    log: &std::path::Path,
) -> (Proc, std::net::SocketAddr) {
    use std::io::BufRead;
    let err = std::fs::File::create(log).expect("log file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("spawn");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut addr = |prefix: &str| -> std::net::SocketAddr {
        let mut line = String::new();
        out.read_line(&mut line).expect("startup line");
        line.trim()
            .strip_prefix(prefix)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
    };
    let listen = addr("listening on ");
    let admin = addr("admin on ");
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let proc = Proc {
        child,
        addr: listen,
        config: Some(config.to_path_buf()),
    };
    (proc, admin)
}

/// Regression: the log line of a circuit that opened did not say why; it now names the
/// threshold and the last failure (an error code, or the failure status), and the request
/// that failed (its method and path, without the query: an operator review could not
/// tell which endpoint's 500s had opened every circuit), and says when no backend of the
/// service is left with its circuit closed.
#[test]
fn a_circuit_that_opens_says_why_in_the_log() {
    let log = temp_path("why.log");
    let refused = closed_port();
    let rec = Recorder::start(reply(503));
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 2, cooldown: 60s}",
        &format!(
            "  down: [http://{refused}]\n  failing: [http://{}]\n",
            rec.addr
        ),
    ));
    let (g, _admin) = gateway_logging_to(&path, &log);
    for svc in ["down", "failing"] {
        for _ in 0..2 {
            get(
                g.addr,
                &format!("/v1/proxy/{svc}/x%09\u{2028}y?token=secret"),
            );
        }
    }
    let every = |svc: &str| {
        format!("breaker: every backend of {svc} has an open circuit: its requests are answered 503 no_backend_available until a probe succeeds")
    };
    // The failure statuses are named only where a status opened the circuit (an operator
    // review was sent to them by refused connects).
    let statuses = " (if the clients' own requests make these failures, list the statuses that are the backend's fault in the service's breaker.failure_statuses)";
    let wanted = [
        format!("breaker: down http://{refused} opened after 2 consecutive failures, the last: backend_connect_failed to GET /v1/proxy/down/x%09\\u{{2028}}y\n"),
        format!("breaker: failing http://{} opened after 2 consecutive failures, the last: status 503 to GET /v1/proxy/failing/x%09\\u{{2028}}y\n", rec.addr),
        every("down") + "\n",
        every("failing") + statuses,
    ];
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        wanted.iter().all(|w| text.contains(w.as_str()))
    });
    drop(g);
    let _ = std::fs::remove_file(&log);
    assert!(found, "{wanted:#?} not in {text}");
    assert!(!text.contains("secret"), "{text}");
}

/// A service with a backend whose circuit is still closed is not said to have none left.
#[test]
fn a_circuit_that_opens_beside_a_closed_one_says_nothing_of_the_service() {
    let log = temp_path("beside.log");
    let refused = closed_port();
    let rec = Recorder::start(reply(200));
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\nbreaker: {failure_threshold: 1, cooldown: 60s}",
        &format!("  mixed: [http://{refused}, http://{}]\n", rec.addr),
    ));
    let (g, _admin) = gateway_logging_to(&path, &log);
    for _ in 0..4 {
        get(g.addr, "/v1/proxy/mixed/x");
    }
    let opened = format!("breaker: mixed http://{refused} opened after 1 failure");
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(&opened)
    });
    drop(g);
    let _ = std::fs::remove_file(&log);
    assert!(found, "{opened} not in {text}");
    assert!(!text.contains("every backend of mixed"), "{text}");
}

/// Regression (an operator review): after `reload failed`, the access log's reopen line
/// (every SIGHUP makes one, for rotation) read as part of that reload having happened. It
/// says now why it is there.
#[test]
fn the_access_log_reopen_of_a_failed_reload_says_why_it_is_there() {
    let b = mock_backend();
    let access = temp_path("reopen-access.log");
    let good = config(
        1,
        &format!("admin: 127.0.0.1:0\naccess_log: {}", access.display()),
        &format!("  svc: [http://{}]\n", b.addr),
    );
    let path = write_config(&good);
    let log = temp_path("reopen.log");
    let (g, _admin) = gateway_logging_to(&path, &log);
    std::fs::write(&path, good.replace("services:", "services:\n  svc2: 7")).expect("write");
    signal(&g.child, libc::SIGHUP);
    let reopened = format!(
        "access log: reopened {} (every SIGHUP and SIGUSR1 reopen it, for log rotation)",
        access.display()
    );
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("reload failed") && text.contains(&reopened)
    });
    drop(g);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&access);
    assert!(found, "{reopened} not in {text}");
}

/// Regression (an operator review, 2026-12-06): a failed reload put all its errors on one
/// log line of over 1 KB, `; `-separated, where `--check` lists them one per line. Each
/// error now has a line of its own, after one that says the reload failed.
#[test]
fn a_failed_reload_logs_each_error_on_its_own_line() {
    let b = mock_backend();
    let good = config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", b.addr),
    );
    let path = write_config(&good);
    let log = temp_path("reload-lines.log");
    let (g, _admin) = gateway_logging_to(&path, &log);
    let bad = good.replace(
        "services:",
        "splice: maybe\nservices:\n  b: [nope]\n  c: [ftp://x]",
    );
    std::fs::write(&path, bad).expect("write");
    signal(&g.child, libc::SIGHUP);
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.matches("reload failed: ").count() >= 3
    });
    drop(g);
    let _ = std::fs::remove_file(&log);
    assert!(found, "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reload failed"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[0].ends_with("reload failed, still serving generation 1: 3 errors"),
        "{lines:#?}"
    );
    for (line, what) in lines[1..]
        .iter()
        .zip(["splice", "services.b[0]", "services.c[0]"])
    {
        assert!(
            line.contains(what) && !line.contains("; "),
            "{what}: {lines:#?}"
        );
    }
}

#[test]
fn a_backend_url_with_credentials_is_never_echoed_whole() {
    // Regression: the rejected URL was quoted whole in the log and in the unauthenticated
    // /admin/config `last_reload_error`, password included.
    let b = mock_backend();
    let good = config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", b.addr),
    );
    let path = write_config(&good);
    let log = temp_path("redact.log");
    let (g, admin) = gateway_logging_to(&path, &log);
    let secret = "s3cr3t-pa55";
    let bad = config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://admin:{secret}@{}]\n", b.addr),
    );
    std::fs::write(&path, &bad).expect("write config");
    signal(&g.child, libc::SIGHUP);
    let mut err = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        let cfg = get(admin, "/admin/config").json();
        err = cfg["last_reload_error"].as_str().unwrap_or("").to_string();
        !err.is_empty()
    }));
    assert!(!err.contains(secret), "{err}");
    assert!(err.contains(&format!("http://***@{}", b.addr)), "{err}");
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("reload failed"))
    }));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("http://***@"), "{text}");
    // `--check` and a failed start print the error with the same redaction.
    for args in [&["--check", "--config"][..], &["--config"][..]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .arg(&path)
            .output()
            .expect("run gateway");
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains("http://***@"), "{text}");
    }
}

#[test]
fn the_access_log_is_reopened_after_a_rotation_on_sigusr1_and_on_sighup() {
    let dir = temp_path("rotate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let (_b, g) = svc_gateway(&format!("access_log: {}", log.display()));
    let logged = |file: &std::path::Path, target: &str| {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains(target))
    };
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/first").status, 200);
    assert!(eventually(Duration::from_secs(5), || logged(
        &log,
        "/svc/first"
    )));
    for (sig, rotated, target) in [
        (libc::SIGUSR1, "access.log.1", "/svc/after-usr1"),
        (libc::SIGHUP, "access.log.2", "/svc/after-hup"),
    ] {
        let rotated = dir.join(rotated);
        std::fs::rename(&log, &rotated).expect("rotate");
        signal(&g.proc.child, sig);
        // Reopened: created again at once, without waiting for a line.
        assert!(
            eventually(Duration::from_secs(5), || log.exists()),
            "not reopened after signal {sig}"
        );
        assert_eq!(get(g.proc.addr, &format!("/v1/proxy{target}")).status, 200);
        assert!(
            eventually(Duration::from_secs(5), || logged(&log, target)),
            "{target} not in the new file"
        );
        assert!(
            !logged(&rotated, target),
            "{target} went to the rotated file"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression (an operator review): a reload that named another access log file was
/// ignored until a restart, while a new `access_log_format` was applied at once, so the
/// new format went into the old file. Another file is now opened by the reload and takes
/// the lines from then on; one that cannot be opened fails the reload and the old file
/// stays; `off` and back apply at once too.
#[test]
fn a_reload_moves_the_access_log_to_the_file_it_names() {
    let dir = temp_path("switch");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (first, second) = (dir.join("first.log"), dir.join("second.log"));
    let b = mock_backend();
    let yaml = |log: &str| {
        config(
            1,
            &format!("admin: 127.0.0.1:0\naccess_log: {log}"),
            &format!("  svc: [http://{}]\n", b.addr),
        )
    };
    let path = write_config(&yaml(&first.display().to_string()));
    let g = gateway_at(&path);
    let logged = |file: &std::path::Path, target: &str| {
        std::fs::read_to_string(file).is_ok_and(|t| t.contains(target))
    };
    let generation = || get(g.admin, "/healthz").json()["generation"].as_u64();
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/before").status, 200);
    assert!(eventually(Duration::from_secs(5), || logged(
        &first,
        "/svc/before"
    )));

    std::fs::write(&path, yaml(&second.display().to_string())).expect("write config");
    signal(&g.proc.child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || generation() == Some(2)));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/after").status, 200);
    assert!(
        eventually(Duration::from_secs(5), || logged(&second, "/svc/after")),
        "not in the file the reload named"
    );
    assert!(
        !logged(&first, "/svc/after"),
        "still written to the old file"
    );
    assert!(!logged(&second, "/svc/before"));
    let cfg = get(g.admin, "/admin/config").json();
    assert_eq!(cfg["access_log"], second.display().to_string(), "{cfg}");

    // A file that cannot be opened: the reload fails, the lines stay where they went.
    let nowhere = dir.join("missing-dir").join("x.log");
    std::fs::write(&path, yaml(&nowhere.display().to_string())).expect("write config");
    signal(&g.proc.child, libc::SIGHUP);
    let mut err = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        err = get(g.admin, "/admin/config").json()["last_reload_error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        !err.is_empty()
    }));
    assert!(
        err.contains("access_log: cannot open the access log"),
        "{err}"
    );
    let why = format!(
        "its directory {} does not exist",
        dir.join("missing-dir").display()
    );
    assert!(err.contains(&why), "{err}");
    assert_eq!(generation(), Some(2));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/kept").status, 200);
    assert!(eventually(Duration::from_secs(5), || logged(
        &second,
        "/svc/kept"
    )));

    // Off, and on again into a third file (until later on 2026-12-04 both waited for a
    // restart, an operator review): what came while it was off is in neither file.
    std::fs::write(&path, yaml("off")).expect("write config");
    signal(&g.proc.child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || generation() == Some(3)));
    assert_eq!(get(g.admin, "/admin/config").json()["access_log"], "off");
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/off").status, 200);
    let third = dir.join("third.log");
    std::fs::write(&path, yaml(&third.display().to_string())).expect("write config");
    signal(&g.proc.child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || generation() == Some(4)));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/on").status, 200);
    assert!(
        eventually(Duration::from_secs(5), || logged(&third, "/svc/on")),
        "not in the file the reload turned the log on to"
    );
    // One worker writes its lines in order: had `/svc/off` been logged, it would be in.
    assert!(!logged(&third, "/svc/off") && !logged(&second, "/svc/off"));
    assert!(!logged(&second, "/svc/on"));
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `GET /v1/proxy/svc/in-flight` answered after `delay_ms` (a mock backend, and
/// `max_in_flight` set on `svc` for its gauge), and returns once it is at the backend;
/// the thread gives the status.
fn in_flight(g: &AdminGateway, delay_ms: u64) -> std::thread::JoinHandle<u16> {
    let addr = g.proc.addr;
    let slow = std::thread::spawn(move || {
        request(
            addr,
            &format!("GET /v1/proxy/svc/in-flight HTTP/1.1\r\nHost: t\r\nx-mock-delay-ms: {delay_ms}\r\nConnection: close\r\n\r\n"),
        )
        .status
    });
    assert!(eventually(Duration::from_secs(5), || metrics(g.admin)
        .contains("gateway_in_flight{service=\"svc\"} 1")));
    slow
}

/// Regression (an operator review, 2026-12-05): a reload from a text file to a JSON one
/// under load put text lines into the JSON file (and the other way round): the lines of
/// requests in flight across the reload, and those a worker held. A request is now
/// logged by the config it began under: in its format, to its file.
#[test]
fn a_request_in_flight_across_a_reload_is_logged_in_its_own_file_and_format() {
    let dir = temp_path("epoch");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (text, json) = (dir.join("access.log"), dir.join("access.json"));
    let b = mock_backend();
    let yaml = |log: &std::path::Path, format: &str| {
        config(
            1,
            &format!(
                "admin: 127.0.0.1:0\naccess_log: {}\naccess_log_format: {format}",
                log.display()
            ),
            // max_in_flight for its gauge: the slow request is seen at its backend.
            &format!(
                "  svc:\n    backends: [http://{}]\n    max_in_flight: 100\n",
                b.addr
            ),
        )
    };
    let path = write_config(&yaml(&text, "text"));
    let g = gateway_at(&path);
    let generation = || get(g.admin, "/healthz").json()["generation"].as_u64();
    let slow = in_flight(&g, 1500);
    std::fs::write(&path, yaml(&json, "json")).expect("write config");
    signal(&g.proc.child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || generation() == Some(2)));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/after").status, 200);
    assert_eq!(slow.join().expect("slow client"), 200);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || read(&text)
            .contains("/svc/in-flight")),
        "the in-flight request is not in the file of its config: text {:?}, json {:?}",
        read(&text),
        read(&json)
    );
    assert!(eventually(Duration::from_secs(5), || read(&json)
        .contains("/svc/after")));
    let lines = read(&json);
    for l in lines.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not JSON in the JSON file: {l}"
        );
    }
    assert!(!lines.contains("/svc/in-flight"), "{lines}");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regressions (a review of the change above, 2026-12-05): a request in flight across
/// three reloads lost its line (each SIGHUP's reopen took one of the four outputs kept);
/// one in flight across a reload to `off` lost it too (the log's on/off was read when the
/// line was written, not from the request's config); and a file a reload replaced stayed
/// open for good, keeping its disk space once removed.
#[test]
fn a_request_keeps_its_log_across_several_reloads_and_replaced_files_are_let_go() {
    let dir = temp_path("epochs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (a, b) = (dir.join("a.log"), dir.join("b.json"));
    let backend = mock_backend();
    let yaml = |log: &str, format: &str| {
        config(
            2,
            &format!("admin: 127.0.0.1:0\naccess_log: {log}\naccess_log_format: {format}"),
            &format!(
                "  svc:\n    backends: [http://{}]\n    max_in_flight: 100\n",
                backend.addr
            ),
        )
    };
    let (a_text, b_text) = (a.display().to_string(), b.display().to_string());
    let path = write_config(&yaml(&a_text, "text"));
    let g = gateway_at(&path);
    let generation = || get(g.admin, "/healthz").json()["generation"].as_u64();
    let slow = in_flight(&g, 2500);
    // a -> b -> a -> off, each taking effect before the next.
    for (n, (log, format)) in [
        (&b_text, "json"),
        (&a_text, "text"),
        (&"off".to_string(), "text"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&path, yaml(log, format)).expect("write config");
        signal(&g.proc.child, libc::SIGHUP);
        let want = n as u64 + 2;
        assert!(eventually(Duration::from_secs(5), || generation() == Some(want)));
    }
    assert_eq!(slow.join().expect("slow client"), 200);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(5), || read(&a)
            .contains("/svc/in-flight")),
        "the in-flight request's line is lost: a {:?}, b {:?}",
        read(&a),
        read(&b)
    );
    assert!(!read(&b).contains("/svc/in-flight"));
    // With the log off and no request of an earlier config left, no file stays open.
    let pid = g.proc.child.id();
    let open = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|l| l.starts_with(&dir))
            .collect::<Vec<_>>()
    };
    let mut held = Vec::new();
    let released = eventually(Duration::from_secs(15), || {
        held = open();
        held.is_empty()
    });
    assert!(released, "still open: {held:?}");
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gateway started with the log off takes one a reload turns on (it waited for a
/// restart until 2026-12-04: an operator review).
#[test]
fn a_reload_turns_on_an_access_log_that_was_off_at_start() {
    let dir = temp_path("turn-on");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("access.log");
    let b = mock_backend();
    let yaml = |log: &str| {
        config(
            1,
            &format!("admin: 127.0.0.1:0\naccess_log: {log}"),
            &format!("  svc: [http://{}]\n", b.addr),
        )
    };
    let path = write_config(&yaml("off"));
    let g = gateway_at(&path);
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/before").status, 200);
    std::fs::write(&path, yaml(&file.display().to_string())).expect("write config");
    signal(&g.proc.child, libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || {
        get(g.admin, "/healthz").json()["generation"].as_u64() == Some(2)
    }));
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/after").status, 200);
    let text = || std::fs::read_to_string(&file).unwrap_or_default();
    assert!(eventually(Duration::from_secs(5), || text().contains("/svc/after")));
    assert!(!text().contains("/svc/before"), "{}", text());
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn access_log_write_errors_are_counted() {
    let (_b, g) = svc_gateway("access_log: /dev/full");
    assert_eq!(
        sample(&metrics(g.admin), "gateway_access_log_errors_total"),
        Some(0.0)
    );
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/x").status, 200);
    let mut m = String::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            m = metrics(g.admin);
            sample(&m, "gateway_access_log_errors_total").is_some_and(|v| v >= 1.0)
        }),
        "{m}"
    );
    // Serving goes on.
    assert_eq!(get(g.proc.addr, "/v1/proxy/svc/y").status, 200);
}

#[test]
fn metric_series_follow_renames_far_past_the_old_limits() {
    // Regression: service ids (256) and backend slots (1024) were never reused, so after
    // enough renames new services got no series and /admin/backends showed 0 successes
    // for a service that served traffic. 30 reloads of 40 new services with 4 backends
    // each: 1200 names and 4800 backends over the process's life.
    let b = mock_backend();
    let services = |generation: usize| -> String {
        (0..40)
            .map(|j| {
                let urls: Vec<String> = (0..4).map(|p| format!("http://{}/p{p}", b.addr)).collect();
                format!("  s{generation}-{j}: [{}]\n", urls.join(", "))
            })
            .collect()
    };
    let path = write_config(&config(1, "admin: 127.0.0.1:0", &services(0)));
    let g = gateway_at(&path);
    let generation = || get(g.admin, "/healthz").json()["generation"].as_u64();
    for k in 1..30 {
        std::fs::write(&path, config(1, "admin: 127.0.0.1:0", &services(k))).expect("write config");
        signal(&g.proc.child, libc::SIGHUP);
        assert!(
            eventually(Duration::from_secs(10), || generation()
                == Some(k as u64 + 1)),
            "reload {k}"
        );
        // The worker takes up the new snapshot with its next request.
        assert_eq!(get(g.proc.addr, &format!("/v1/proxy/s{k}-0/x")).status, 200);
    }
    for _ in 0..8 {
        assert_eq!(get(g.proc.addr, "/v1/proxy/s29-0/x").status, 200);
    }
    let mut m = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(
            &m,
            "gateway_requests_total{service=\"s29-0\",class=\"2xx\"}",
        ) == Some(9.0)
    });
    assert!(counted, "{m}");
    let successes: f64 = m
        .lines()
        .filter(|l| l.starts_with("gateway_backend_success_total{service=\"s29-0\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(successes, 9.0, "{m}");
    for kind in ["service", "backend"] {
        let series = format!("gateway_metric_ids_exhausted_total{{kind=\"{kind}\"}}");
        assert_eq!(sample(&m, &series), Some(0.0), "{m}");
    }
    // Only the running config's services are exported.
    assert!(!m.contains("service=\"s28-0\""), "{m}");
    assert_eq!(m.matches("gateway_requests_aborted_total{").count(), 40);
    let admin = get(g.admin, "/admin/backends").json();
    let svc = admin["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "s29-0"))
        .cloned()
        .unwrap_or_default();
    let admin_successes: u64 = svc["backends"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["successes"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(admin_successes, 9, "{svc}");
}

#[test]
fn the_reload_log_line_names_changed_settings_in_one_line_with_1000_services() {
    let b = mock_backend();
    let keep = |cooldown: &str| {
        format!(
            "  keep:\n    backends: [http://{}]\n    breaker: {{cooldown: {cooldown}}}\n",
            b.addr
        )
    };
    let path = write_config(&config(
        1,
        "admin: 127.0.0.1:0\ntimeouts: {connect: 2s}",
        &keep("10s"),
    ));
    let log = temp_path("reload-line.log");
    let (g, admin) = gateway_logging_to(&path, &log);
    let many: String = (0..1000)
        .map(|i| format!("  s{i:04}: [http://127.0.0.1:{}]\n", 1 + i))
        .collect();
    std::fs::write(
        &path,
        config(
            1,
            "admin: 127.0.0.1:0\ntimeouts: {connect: 5s}",
            &(keep("20s") + &many),
        ),
    )
    .expect("write config");
    signal(&g.child, libc::SIGHUP);
    let mut line = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        line = text
            .lines()
            .find(|l| l.contains("reload: generation 2"))
            .unwrap_or("")
            .to_string();
        !line.is_empty()
    }));
    let _ = std::fs::remove_file(&log);
    assert!(line.len() < 600, "{line}");
    for part in [
        "services 1001 (+1000 [s0000, s0001, s0002, s0003, s0004 +995 more] -0, 1 kept);",
        "settings changed: timeouts.connect 2s -> 5s;",
        "breaker (cooldown) changed for services: 1 [keep]",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert_eq!(
        get(admin, "/healthz").json()["generation"].as_u64(),
        Some(2)
    );
}

/// The `X-Request-Id` lines of the request heads a recorder got, in order.
fn forwarded_ids(rec: &Recorder) -> Vec<Vec<String>> {
    let got = String::from_utf8_lossy(&rec.received()).into_owned();
    got.split("\r\n\r\n")
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.lines()
                .filter_map(|l| l.split_once(':'))
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                .map(|(_, v)| v.trim().to_string())
                .collect()
        })
        .collect()
}

/// With `request_id: true` every routed request gets one ID, the same in the backend's
/// request, the client's response (the backend's own replaced) and the access log line;
/// an ID is taken from a trusted proxy only, and only a plain one.
#[test]
fn request_ids_reach_the_backend_the_client_and_the_log_as_one() {
    let rec = Recorder::start(Mode::Reply(
        b"HTTP/1.1 200 OK\r\nx-request-id: the-backends-own\r\ncontent-length: 2\r\n\r\nok"
            .to_vec(),
    ));
    let log = temp_path("request-id.log");
    let _ = std::fs::remove_file(&log);
    let g = gateway(&config(
        1,
        &format!(
            "request_id: true\ntrusted_proxies: [127.0.0.3/32]\naccess_log: {}",
            log.display()
        ),
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let mut client = Client::connect_from(ip("127.0.0.1"), g.addr);
    let mut proxy = Client::connect_from(ip("127.0.0.3"), g.addr);
    let mut answered = Vec::new();
    for (from_proxy, i, sent) in [
        (false, 0, ""),
        (false, 1, "X-Request-Id: chosen-by-a-client\r\n"),
        (true, 2, "X-Request-Id: edge-7f3a:1@eu\r\n"),
        (true, 3, "X-Request-Id: has space\r\n"),
        (true, 4, "X-Request-Id: a\r\nX-Request-Id: b\r\n"),
    ] {
        let c = if from_proxy { &mut proxy } else { &mut client };
        c.send(format!("GET /v1/proxy/svc/r{i} HTTP/1.1\r\nHost: g\r\n{sent}\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200);
        let ids: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "x-request-id")
            .collect();
        assert_eq!(ids.len(), 1, "request {i}: {:?}", r.headers);
        answered.push(ids[0].1.clone());
    }
    // A gateway-made answer carries one too.
    client.send(b"GET /v1/proxy/nope/x HTTP/1.1\r\nHost: g\r\n\r\n");
    let r = client.read_response();
    assert_eq!(r.status, 404);
    let refused = r
        .header("x-request-id")
        .expect("an ID on a 404")
        .to_string();

    let made = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    assert_eq!(
        answered[2], "edge-7f3a:1@eu",
        "a trusted proxy's ID is kept"
    );
    for i in [0, 1, 3, 4] {
        assert!(made(&answered[i]), "request {i} got {:?}", answered[i]);
    }
    assert!(made(&refused));
    let mut all = answered.clone();
    all.push(refused.clone());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "IDs repeat: {answered:?} {refused}");
    // The backend saw exactly the ID the client got, on one line.
    let forwarded = forwarded_ids(&rec);
    assert_eq!(forwarded.len(), 5, "{forwarded:?}");
    for (i, f) in forwarded.iter().enumerate() {
        assert_eq!(f, &[answered[i].clone()], "request {i}");
    }
    // The log's last field.
    for (i, id) in answered.iter().enumerate() {
        let mut text = String::new();
        assert!(
            eventually(Duration::from_secs(10), || {
                text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains(&format!("/v1/proxy/svc/r{i} "))
            }),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains(&format!("/v1/proxy/svc/r{i} ")))
            .unwrap();
        assert_eq!(line.split(' ').count(), 12, "{line}");
        assert!(line.ends_with(&format!(" - {id}")), "{line}");
    }
    let (text, f) = logged_line(&log, "/v1/proxy/nope/x");
    assert_eq!((f.len(), f[11].as_str()), (12, refused.as_str()), "{text}");
}

/// Without `request_id` nothing is added and a client's `X-Request-Id` passes as it came.
#[test]
fn without_request_id_a_clients_id_passes_untouched_and_none_is_added() {
    let rec = Recorder::start(reply(200));
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", rec.addr)));
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\n\r\n");
    assert!(c.read_response().header("x-request-id").is_none());
    c.send(b"GET /v1/proxy/svc/b HTTP/1.1\r\nHost: g\r\nX-Request-Id: mine\r\n\r\n");
    assert!(c.read_response().header("x-request-id").is_none());
    assert_eq!(forwarded_ids(&rec), [vec![], vec!["mine".to_string()]]);
}

/// `access_log_format: json`: a real request's line is one JSON object with its fields.
#[test]
fn a_json_access_log_line_parses_with_the_requests_fields() {
    let b = mock_backend();
    let log = temp_path("json.log");
    let _ = std::fs::remove_file(&log);
    let g = gateway(&config(
        1,
        &format!("access_log: {}\naccess_log_format: json", log.display()),
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let r = get(g.addr, "/v1/proxy/svc/j?a=1");
    assert_eq!(r.status, 200);
    let (text, _) = logged_line(&log, "/v1/proxy/svc/j");
    let line = text
        .lines()
        .find(|l| l.contains("/v1/proxy/svc/j"))
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(
        (
            &v["method"],
            &v["target"],
            &v["service"],
            &v["status"],
            &v["error"]
        ),
        (
            &serde_json::json!("GET"),
            &serde_json::json!("/v1/proxy/svc/j?a=1"),
            &serde_json::json!("svc"),
            &serde_json::json!(200),
            &serde_json::Value::Null
        ),
        "{line}"
    );
    assert_eq!(v["backend"], format!("http://{}", b.addr), "{line}");
    assert!(v["bytes"].as_u64().is_some_and(|n| n > 0), "{line}");
    assert!(v["upstream_seconds"].as_f64().is_some() && v["total_seconds"].as_f64().is_some());
    assert!(v.get("request_id").is_none(), "{line}");
}

/// Regression (a re-review): with `request_id: true`, answers to heads refused before
/// routing (405, 501, 417, a 400) and to `OPTIONS *` carried no ID, and a backend's 103
/// was relayed with the backend's own `X-Request-Id`. Every answer now carries one ID, the
/// gateway's, and so does every log line.
#[test]
fn every_answer_carries_the_gateways_request_id_and_interim_ones_no_other() {
    let rec = Recorder::start(Mode::Reply(
        b"HTTP/1.1 103 Early Hints\r\nx-request-id: backend-103\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    ));
    let log = temp_path("request-id-refused.log");
    let _ = std::fs::remove_file(&log);
    let g = gateway(&config(
        1,
        &format!("request_id: true\naccess_log: {}", log.display()),
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    let mut ids = Vec::new();
    for (head, status) in [
        ("TRACE /v1/proxy/svc/t HTTP/1.1\r\nHost: g\r\n\r\n", 405),
        ("FOO /v1/proxy/svc/f HTTP/1.1\r\nHost: g\r\n\r\n", 501),
        (
            "GET /v1/proxy/svc/e HTTP/1.1\r\nHost: g\r\nExpect: teapot\r\n\r\n",
            417,
        ),
        ("GET /v1/proxy/svc/h HTTP/1.1\r\n\r\n", 400),
        ("OPTIONS * HTTP/1.1\r\nHost: g\r\n\r\n", 204),
    ] {
        let mut c = Client::connect(g.addr);
        c.send(head.as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, status, "{head:?}");
        let got: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "x-request-id")
            .collect();
        assert_eq!(got.len(), 1, "{head:?}: {:?}", r.headers);
        assert_eq!(got[0].1.len(), 32, "{head:?}");
        ids.push(got[0].1.clone());
    }
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/hints HTTP/1.1\r\nHost: g\r\n\r\n");
    let interim = c.read_response();
    assert_eq!(interim.status, 103);
    assert!(
        interim.header("x-request-id").is_none(),
        "{:?}",
        interim.headers
    );
    assert_eq!(interim.header("link"), Some("</a>"));
    let last = c.read_response();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("x-request-id").map(str::len), Some(32));
    // Each line ends with its answer's ID (OPTIONS * is logged too).
    for (needle, id) in [
        ("/v1/proxy/svc/t ", &ids[0]),
        ("/v1/proxy/svc/f ", &ids[1]),
        ("/v1/proxy/svc/e ", &ids[2]),
    ] {
        let mut text = String::new();
        assert!(
            eventually(Duration::from_secs(10), || {
                text = std::fs::read_to_string(&log).unwrap_or_default();
                text.lines().any(|l| l.contains(needle))
            }),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default();
        assert!(line.ends_with(&format!(" {id}")), "{line}");
    }
    let _ = std::fs::remove_file(&log);
}

/// An operator review: with one of two backends refusing connections, every request was
/// answered by the other (a failed connect moves on) and logged with it alone, so the log
/// never showed the dead one. The backend field lists every backend tried, in order, as
/// NGINX's `$upstream_addr` does.
#[test]
fn the_access_log_names_every_backend_a_request_tried() {
    let live = mock_backend();
    let dead = closed_port();
    let log = std::env::temp_dir().join(format!(
        "gateway-observability-tried-{}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let g = gateway_at(&write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\naccess_log: {}\nbreaker: {{failure_threshold: 100}}",
            log.display()
        ),
        &format!("  svc: [http://{dead}, http://{}]\n", live.addr),
    )));
    for _ in 0..4 {
        assert_eq!(get(g.proc.addr, "/v1/proxy/svc/x").status, 200);
    }
    let text = logged_lines(&log, 4);
    let backends: Vec<&str> = text
        .lines()
        .map(|l| l.split(' ').nth(5).unwrap_or_default())
        .collect();
    let moved = format!("http://{dead},http://{}", live.addr);
    let direct = format!("http://{}", live.addr);
    // Each request that picked the dead one first names it, then the one that answered.
    assert!(
        backends.iter().all(|b| *b == moved || *b == direct)
            && backends.iter().any(|b| *b == moved),
        "{text}"
    );
}

/// `access_log_fields` (an operator review: the line's fields were fixed, with no
/// User-Agent, Host, protocol or referer, where NGINX's `log_format` chooses them): the
/// fields listed, in that order; the headers kept from the request, quoted and escaped in
/// a text line, and in JSON; absent ones `"-"` and `null`.
#[test]
fn the_access_log_writes_the_fields_it_is_given() {
    let fields =
        "access_log_fields: [client, peer, protocol, method, host, user_agent, referer, status]";
    let log = temp_path("fields.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!("access_log: {}\n{fields}", log.display()));
    let mut c = Client::connect(g.proc.addr);
    let peer = c.stream.local_addr().expect("addr");
    c.send(b"GET /v1/proxy/svc/ua HTTP/1.1\r\nHost: shop.example:8080\r\nUser-Agent: curl/8.0 \"x\" \\ caf\xc3\xa9\r\nReferer: https://a.example/p?q=1\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let (text, _) = logged_line(&log, "shop.example");
    assert_eq!(
        text.trim_end(),
        format!("127.0.0.1 {peer} HTTP/1.1 GET shop.example:8080 \"curl/8.0 \\\"x\\\" \\\\ caf\\xC3\\xA9\" \"https://a.example/p?q=1\" 200"),
    );

    let log = temp_path("fields.json.log");
    let _ = std::fs::remove_file(&log);
    let (_b, g) = svc_gateway(&format!(
        "access_log: {}\naccess_log_format: json\n{fields}",
        log.display()
    ));
    let r = request(
        g.proc.addr,
        "GET /v1/proxy/svc/json HTTP/1.0\r\nHost: g\r\nUser-Agent: caf\u{e9}\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let (text, _) = logged_line(&log, "caf");
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
    let at: Vec<Option<usize>> = [
        "client",
        "peer",
        "protocol",
        "method",
        "host",
        "user_agent",
        "referer",
        "status",
    ]
    .iter()
    .map(|k| text.find(&format!("\"{k}\":")))
    .collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "in the order given: {text}"
    );
    assert_eq!(v.as_object().map(|o| o.len()), Some(8), "{text}");
    assert_eq!(
        (
            &v["protocol"],
            &v["host"],
            &v["user_agent"],
            &v["referer"],
            &v["status"]
        ),
        (
            &"HTTP/1.0".into(),
            &"g".into(),
            &"caf\u{e9}".into(),
            &serde_json::Value::Null,
            &200.into()
        ),
        "{text}"
    );
}
