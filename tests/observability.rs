//! What an operator reads: metric series that never silently stop, access log rotation and write errors, secrets kept out of logs and the admin API, one attribution per error, and the reload line.

mod common;

use common::*;
use std::time::Duration;

fn admin_get(admin: std::net::SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(admin);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes());
    c.read_response()
}

fn metrics(admin: std::net::SocketAddr) -> String {
    String::from_utf8_lossy(&admin_get(admin, "/metrics").body).into_owned()
}

/// The value of the sample `series` (`name{labels}`) in `text`, if exported.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("gateway-obs-{}-{name}", std::process::id()))
}

#[test]
fn a_413_counts_for_its_service_whether_found_by_length_or_in_a_chunked_body() {
    // Regression: a 413 found by Content-Length (before a backend is picked) was counted
    // and logged with no service, one found in a chunked body with it.
    let b = mock_backend();
    let log = temp_path("413.log");
    let _ = std::fs::remove_file(&log);
    let path = write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\naccess_log: {}\nlimits: {{max_body_bytes: 1000}}",
            log.display()
        ),
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let g = gateway_at(&path);
    let r = request(
        g.proc.addr,
        "POST /v1/proxy/svc/by-length HTTP/1.1\r\nHost: g\r\nContent-Length: 1001\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    let chunk = format!("{:x}\r\n{}\r\n", 1001, "a".repeat(1001));
    let r = request(
        g.proc.addr,
        &format!("POST /v1/proxy/svc/chunked HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\n\r\n"),
    );
    assert_eq!(r.status, 413);
    let m = metrics(g.admin);
    assert_eq!(
        sample(&m, "gateway_requests_total{service=\"svc\",class=\"4xx\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "gateway_errors_total{code=\"body_too_large\",status=\"413\"}"
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
}
