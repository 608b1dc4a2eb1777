//! End to end through real processes: what the client sends arrives intact at the backend,
//! what the backend answers arrives intact at the client, balanced round-robin.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn fnv(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn one_backend(prefix: &str) -> (Proc, Proc) {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "",
        &format!("  svc: [http://{}{prefix}]\n", b.addr),
    ));
    (b, g)
}

/// RFC 9112 §2.3: `HTTP/1.2` (to `HTTP/1.9`) is read as 1.1, as NGINX does; it was a 400.
/// Served as 1.1 (kept open) however its bytes arrive: whole, a byte at a time, and
/// pipelined behind another request in one write.
#[test]
fn a_later_http_1_minor_version_is_served_as_1_1_however_it_arrives() {
    let (_b, g) = one_backend("");
    let later = |v: &str, p: &str| format!("GET /v1/proxy/svc/{p} HTTP/1.{v}\r\nHost: gw\r\n\r\n");
    let mut c = Client::connect(g.addr);
    let served = |c: &mut Client, path: &str| {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["path"], path);
        assert_eq!(r.header("connection"), None, "{path}");
    };
    c.send(later("2", "whole").as_bytes());
    served(&mut c, "/whole");
    for byte in later("9", "bytes").bytes() {
        c.send(&[byte]);
        std::thread::sleep(Duration::from_millis(2));
    }
    served(&mut c, "/bytes");
    c.send(format!("{}{}", later("1", "first"), later("3", "second")).as_bytes());
    served(&mut c, "/first");
    served(&mut c, "/second");
    // After empty lines before the request line, which a request may have.
    c.send(format!("\r\n{}", later("2", "after-crlf")).as_bytes());
    served(&mut c, "/after-crlf");
    // Still refused: another major version (505) and a minor of two digits (400).
    c.send(b"GET /v1/proxy/svc/x HTTP/1.10\r\nHost: gw\r\n\r\n");
    assert_eq!(c.read_response().status, 400);
}

/// GitLab-style APIs name `group/project` as one segment, `group%2Fproject`: a service
/// with `encoded_slashes: true` gets it as sent; others refuse it 400, as before; dot
/// segments it would make once decoded are refused either way.
#[test]
fn an_encoded_slash_reaches_a_service_that_allows_it_as_sent() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "",
        &format!(
            "  open:\n    backends: [http://{0}/api]\n    encoded_slashes: true\n  \
             strict: [http://{0}/api]\n",
            b.addr
        ),
    ));
    let mut c = Client::connect(g.addr);
    for (target, want) in [
        (
            "/v1/proxy/open/projects/group%2Fproject?x=%2F",
            "/api/projects/group%2Fproject",
        ),
        ("/v1/proxy/open/a%252fb", "/api/a%252fb"),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        let r = c.read_response();
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.json()["path"], want, "{target}");
    }
    for target in [
        "/v1/proxy/strict/projects/group%2Fproject",
        "/v1/proxy/open/projects/x%2F..%2Fadmin",
        "/v1/proxy/open/projects/x%2F%2E%2E/admin",
    ] {
        let r = get(g.addr, target);
        assert_eq!(
            (r.status, r.json()["detail"].as_str()),
            (400, Some("unsafe_path")),
            "{target}"
        );
        let svc = if target.contains("strict") {
            "strict"
        } else {
            "open"
        };
        assert_eq!(r.json()["service"], svc, "{target}");
    }
}

#[test]
fn every_method_path_query_header_and_body_arrive_intact() {
    let (b, g) = one_backend("/api");
    let mut c = Client::connect(g.addr);
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let body = format!("body of {method}");
        c.send(
            format!(
                "{method} /v1/proxy/svc/a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: gw.example\r\nX-Custom: v 1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, 200, "{method}");
        let j = r.json();
        assert_eq!(j["method"], method);
        assert_eq!(j["path"], "/api/a/b%20c");
        assert_eq!(j["query"], "x=1&y=%2F");
        assert_eq!(j["port"], b.addr.port());
        assert_eq!(j["body_len"], body.len());
        assert_eq!(j["body_fnv"], fnv(body.as_bytes()));
        assert_eq!(r.echoed("x-custom"), ["v 1"]);
        assert_eq!(
            r.echoed("host"),
            [b.addr.to_string()],
            "backend authority as Host"
        );
        assert_eq!(r.echoed("content-length"), [body.len().to_string()]);
    }
    // The service root and a bare query map to the prefix.
    let r = get(g.addr, "/v1/proxy/svc");
    assert_eq!(r.json()["path"], "/api/");
    let r = get(g.addr, "/v1/proxy/svc?q=1");
    assert_eq!(
        (r.json()["path"].clone(), r.json()["query"].clone()),
        ("/api/".into(), "q=1".into())
    );
}

#[test]
fn empty_small_large_and_chunked_bodies_arrive_intact() {
    let (_b, g) = one_backend("");
    let mut c = Client::connect(g.addr);
    // Empty and small, Content-Length framed.
    for body in [&b""[..], b"x", b"hello world"] {
        let mut raw = format!(
            "POST /v1/proxy/svc/u HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        c.send(&raw);
        let j = c.read_response().json();
        assert_eq!(j["body_len"], body.len());
        assert_eq!(j["body_fnv"], fnv(body));
    }
    // 10 MiB, streamed (never buffered whole by the gateway).
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    c.send(
        format!(
            "PUT /v1/proxy/svc/big HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    for part in big.chunks(1 << 20) {
        c.send(part);
    }
    let j = c.read_response().json();
    assert_eq!(j["body_len"], big.len());
    assert_eq!(j["body_fnv"], fnv(&big));
    // Bodies of 8 to 60 KiB sent in one write with the head (the gateway takes what is
    // already in the socket with the head), then the next request on the same connection.
    for kib in [8, 15, 16, 17, 47, 48, 49, 60] {
        let body: Vec<u8> = (0..kib * 1024).map(|i| (i * 13 % 249) as u8).collect();
        let mut raw = format!(
            "POST /v1/proxy/svc/k{kib} HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        raw.extend_from_slice(b"GET /v1/proxy/svc/after HTTP/1.1\r\nHost: g\r\n\r\n");
        c.send(&raw);
        let j = c.read_response().json();
        assert_eq!(
            (j["body_len"].as_u64(), j["body_fnv"].clone()),
            (Some(body.len() as u64), serde_json::Value::from(fnv(&body))),
            "{kib} KiB"
        );
        assert_eq!(c.read_response().json()["path"], "/after", "{kib} KiB");
    }
    // Chunked, with extensions and a trailer, sent in pieces; re-framed by the gateway.
    c.send(b"POST /v1/proxy/svc/c HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n");
    std::thread::sleep(Duration::from_millis(20));
    c.send(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    let r = c.read_response();
    let j = r.json();
    assert_eq!(j["body_len"], 11);
    assert_eq!(j["body_fnv"], fnv(b"hello world"));
    assert_eq!(r.echoed("transfer-encoding"), ["chunked"]);
    assert!(r.echoed("x-trailer").is_empty());
    // Still usable afterwards.
    c.send(b"GET /v1/proxy/svc/after HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(c.read_response().json()["path"], "/after");
}

#[test]
fn response_status_headers_and_body_arrive_intact() {
    let (_b, g) = one_backend("");
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nx-mock-status: 201\r\nx-mock-header: X-Resp: abc\r\nx-mock-header: Set-Cookie: a=1\r\nx-mock-body-bytes: 100000\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-resp"), Some("abc"));
    assert_eq!(r.header("set-cookie"), Some("a=1"));
    assert_eq!(r.header("content-length"), Some("100000"));
    assert_eq!(r.body, vec![b'x'; 100000]);
    // A chunked response is re-chunked by the gateway.
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nx-mock-fault: chunked\r\nx-mock-body-bytes: 70000\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 70000);
    // A close-delimited response becomes chunked for an HTTP/1.1 client, which keeps its connection.
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nx-mock-fault: no-length\r\nx-mock-body-bytes: 5000\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 5000);
    c.send(b"GET /v1/proxy/svc/again HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn head_204_and_304_carry_no_body_and_keep_the_connection() {
    let (_b, g) = one_backend("");
    let mut c = Client::connect(g.addr);
    c.send(b"HEAD /v1/proxy/svc/h HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 1234\r\n\r\n");
    let r = c.read_response_to(true);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("1234"),
        "HEAD keeps the length"
    );
    for status in [204, 304] {
        c.send(
            format!("GET /v1/proxy/svc/s HTTP/1.1\r\nHost: g\r\nx-mock-status: {status}\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!(r.status, status);
        assert!(r.body.is_empty());
        assert_eq!(r.header("transfer-encoding"), None);
    }
    // No stray body bytes were left on the connection: the next response parses cleanly.
    c.send(b"GET /v1/proxy/svc/next HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(c.read_response().json()["path"], "/next");
}

#[test]
fn hop_by_hop_headers_are_stripped_both_ways() {
    let (_b, g) = one_backend("");
    let r = request(
        g.addr,
        "GET /v1/proxy/svc/h HTTP/1.1\r\nHost: g\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9v\r\nX-Kept: yes\r\n\
x-mock-header: Connection: X-Resp-Secret\r\nx-mock-header: X-Resp-Secret: 1\r\nx-mock-header: Keep-Alive: timeout=5\r\nx-mock-header: Proxy-Authenticate: Basic\r\nx-mock-header: Upgrade: h2c\r\nx-mock-header: Trailer: X-T\r\nx-mock-header: X-Resp-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let sent: Vec<String> = r.echoed_headers().into_iter().map(|(n, _)| n).collect();
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(
            !sent.contains(&gone.to_string()),
            "{gone} reached the backend: {sent:?}"
        );
    }
    assert_eq!(r.echoed("x-kept"), ["yes"]);
    for gone in [
        "connection",
        "x-resp-secret",
        "keep-alive",
        "proxy-authenticate",
        "upgrade",
        "trailer",
    ] {
        assert_eq!(r.header(gone), None, "{gone} reached the client");
    }
    assert_eq!(r.header("x-resp-kept"), Some("yes"));
}

#[test]
fn forwarding_headers_are_appended() {
    let (b, g) = one_backend("");
    let r = request(
        g.addr,
        "GET /v1/proxy/svc/f HTTP/1.1\r\nHost: public.example\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nVia: 1.1 edge\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Prefix: /evil\r\nX_Forwarded_Prefix: /evil2\r\n\r\n",
    );
    // The path the client's request had in front of what the backend is sent (two
    // reviews: relative redirects and links left the service's path); the client's own,
    // and its CGI alias, never reach the backend.
    assert_eq!(r.echoed("x-forwarded-prefix"), ["/v1/proxy/svc"]);
    assert!(r.echoed("x_forwarded_prefix").is_empty());
    assert_eq!(r.echoed("x-forwarded-for"), ["1.2.3.4, 5.6.7.8, 127.0.0.1"]);
    assert_eq!(r.echoed("via"), ["1.1 edge, 1.1 gateway"]);
    assert_eq!(r.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(r.echoed("x-forwarded-host"), ["public.example"]);
    assert_eq!(r.echoed("host"), [b.addr.to_string()]);
    // A client listing X-Forwarded-For in Connection cannot make us drop our own entry.
    let r = request(g.addr, "GET /v1/proxy/svc/f HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For, Host\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n");
    assert_eq!(r.echoed("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.echoed("host"), [b.addr.to_string()]);
}

/// Regression (a hostile review): fields besides ours in which frameworks read an edge
/// proxy's word (`Forwarded`, which Spring prefers to every `X-Forwarded-*` field;
/// `X-Forwarded-Port`, `-Ssl`, `-Scheme`; `X-Original-URL`) reached the backend from any
/// client and undid the fields the gateway writes. Only a peer in `trusted_proxies` may
/// send them, and a trusted edge (a TLS terminator) keeps its `X-Forwarded-Proto` and
/// `-Host`, where it got ours and sent its backends to `http` links.
#[test]
fn only_a_trusted_edge_may_tell_a_backend_the_scheme_host_port_or_url() {
    let b = mock_backend();
    let edge = "Host: public.example\r\nForwarded: for=1.2.3.4;host=edge.example;proto=https\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: edge.example\r\nX-Forwarded-Port: 443\r\n\
        X-Forwarded-Ssl: on\r\nX-Forwarded-Scheme: https\r\nX-Real-IP: 1.2.3.4\r\n\
        X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX_Forwarded_Port: 1\r\n";
    let head = format!("GET /v1/proxy/svc/f HTTP/1.1\r\n{edge}\r\n");
    let fields = [
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
    ];
    // Anyone: none of them; our scheme and the client's Host.
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", b.addr)));
    let r = request(g.addr, &head);
    assert_eq!(r.status, 200);
    for f in fields.iter().chain(&["x_forwarded_port"]) {
        assert!(r.echoed(f).is_empty(), "{f} reached the backend");
    }
    assert_eq!(r.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(r.echoed("x-forwarded-host"), ["public.example"]);
    // A trusted edge: its own word, once each.
    let g = gateway(&config(
        1,
        "trusted_proxies: [127.0.0.1/32]",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let r = request(g.addr, &head);
    assert_eq!(r.status, 200);
    for f in fields {
        assert_eq!(r.echoed(f).len(), 1, "{f} from a trusted edge");
    }
    assert_eq!(
        r.echoed("forwarded"),
        ["for=1.2.3.4;host=edge.example;proto=https"]
    );
    assert!(r.echoed("x_forwarded_port").is_empty());
    assert_eq!(r.echoed("x-forwarded-proto"), ["https"]);
    assert_eq!(r.echoed("x-forwarded-host"), ["edge.example"]);
    assert_eq!(r.echoed("x-forwarded-prefix"), ["/v1/proxy/svc"]);
    assert_eq!(r.echoed("x-forwarded-for"), ["127.0.0.1"]);
    // An edge that maps a public path onto ours says which (an operator review).
    let r = request(
        g.addr,
        "GET /v1/proxy/svc/f HTTP/1.1\r\nHost: h\r\nX-Forwarded-Prefix: /orders\r\n\r\n",
    );
    assert_eq!(r.echoed("x-forwarded-prefix"), ["/orders"]);
    // A comma in a path is the path's (a re-review: `/a,b` went up as `b`).
    let r = request(
        g.addr,
        "GET /v1/proxy/svc/f HTTP/1.1\r\nHost: h\r\nX-Forwarded-Prefix: /x\r\nX-Forwarded-Prefix: /a,b\r\n\r\n",
    );
    assert_eq!(r.echoed("x-forwarded-prefix"), ["/a,b"]);
    // A trusted edge that says nothing of them gets ours.
    let r = request(
        g.addr,
        "GET /v1/proxy/svc/f HTTP/1.1\r\nHost: h.example\r\n\r\n",
    );
    assert_eq!(r.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(r.echoed("x-forwarded-host"), ["h.example"]);
}

/// Regression (a review): a POST refused with a 404 closed its connection even with its
/// whole body in hand, and the requests pipelined behind it went unanswered. The body is
/// read past now, as NGINX discards it; a 413's body is what was refused, and it closes.
#[test]
fn a_refused_request_whose_body_came_whole_keeps_its_connection() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "limits: {max_body_bytes: 8}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let mut c = Client::connect(g.addr);
    c.send(
        b"POST /v1/proxy/nope/x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello\
          GET /v1/proxy/svc/after HTTP/1.1\r\nHost: g\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), None, "{:?}", r.headers);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/after");
    let mut c = Client::connect(g.addr);
    c.send(
        b"POST /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nContent-Length: 9\r\n\r\n123456789\
          GET /v1/proxy/svc/after HTTP/1.1\r\nHost: g\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn round_robin_alternates_on_one_keep_alive_connection() {
    let (b1, b2) = (mock_backend(), mock_backend());
    let g = gateway(&config(
        1,
        "",
        &format!("  svc: [http://{}, http://{}]\n", b1.addr, b2.addr),
    ));
    let mut c = Client::connect(g.addr);
    let mut ports = Vec::new();
    for _ in 0..10 {
        c.send(b"GET /v1/proxy/svc/rr HTTP/1.1\r\nHost: g\r\n\r\n");
        ports.push(c.read_response().json()["port"].as_u64().unwrap());
    }
    for w in ports.windows(2) {
        assert_ne!(w[0], w[1], "not alternating: {ports:?}");
    }
}

/// How many of `n` requests, each on a connection of its own, each backend port served.
fn ports_over_connections(addr: std::net::SocketAddr, n: usize) -> HashMap<u64, usize> {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for _ in 0..n {
        let r = get(addr, "/v1/proxy/svc/spread");
        *counts
            .entry(r.json()["port"].as_u64().expect("port"))
            .or_default() += 1;
    }
    counts
}

#[test]
fn round_robin_is_even_over_many_connections_and_workers() {
    let (b1, b2, b3) = (mock_backend(), mock_backend(), mock_backend());
    let workers = 2;
    let g = gateway(&config(
        workers,
        "",
        &format!(
            "  svc: [http://{}, http://{}, http://{}]\n",
            b1.addr, b2.addr, b3.addr
        ),
    ));
    let counts = ports_over_connections(g.addr, 150);
    assert_eq!(counts.len(), 3, "{counts:?}");
    let (min, max) = (
        counts.values().min().unwrap(),
        counts.values().max().unwrap(),
    );
    // Each worker's own rotation is exact, so the totals differ by at most one per worker.
    assert!(max - min <= workers, "uneven split {counts:?}");
}

#[test]
fn weighted_backends_take_their_shares_spread_through_each_round() {
    let (b1, b2, b3) = (mock_backend(), mock_backend(), mock_backend());
    let workers = 2;
    let g = gateway(&config(
        workers,
        "",
        &format!(
            "  svc:\n    - {{url: http://{}, weight: 6}}\n    - {{url: http://{}, weight: 3}}\n    - http://{}\n",
            b1.addr, b2.addr, b3.addr
        ),
    ));
    let port = |b: &Proc| u64::from(b.addr.port());
    let mut counts: HashMap<u64, usize> = HashMap::new();
    let rounds = 10;
    // One keep-alive connection goes round its worker's schedule in order: six, three and
    // one in every ten, never a run of more than two of the heaviest.
    let mut c = Client::connect(g.addr);
    let mut order = Vec::new();
    for _ in 0..10 * rounds {
        c.send(b"GET /v1/proxy/svc/w HTTP/1.1\r\nHost: g\r\n\r\n");
        let p = c.read_response().json()["port"].as_u64().expect("port");
        *counts.entry(p).or_default() += 1;
        order.push(p);
    }
    assert_eq!(counts[&port(&b1)], 6 * rounds, "{counts:?}");
    assert_eq!(counts[&port(&b2)], 3 * rounds, "{counts:?}");
    assert_eq!(counts[&port(&b3)], rounds, "{counts:?}");
    assert!(
        order.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "runs of three: {order:?}"
    );
    // Over many connections and both workers the shares hold within a round per worker.
    let counts = ports_over_connections(g.addr, 10 * rounds);
    for (b, share) in [(&b1, 6), (&b2, 3), (&b3, 1)] {
        let got = counts.get(&port(b)).copied().unwrap_or(0);
        assert!(
            got.abs_diff(share * rounds) <= share * workers,
            "{counts:?}"
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_b, g) = one_backend("");
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/1 HTTP/1.1\r\nHost: g\r\nx-mock-delay-ms: 50\r\n\r\nPOST /v1/proxy/svc/2 HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabcGET /v1/proxy/svc/3 HTTP/1.1\r\nHost: g\r\n\r\n");
    for (path, len) in [("/1", 0), ("/2", 3), ("/3", 0)] {
        let j = c.read_response().json();
        assert_eq!(j["path"], path);
        assert_eq!(j["body_len"], len);
    }
}

#[test]
fn http10_clients_are_served() {
    let (_b, g) = one_backend("");
    // No Host needed; the connection closes after the response unless kept alive.
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/old HTTP/1.0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("via"), ["1.0 gateway"]);
    assert!(c.closed_within(Duration::from_secs(2)));
    let mut c = Client::connect(g.addr);
    for _ in 0..2 {
        c.send(b"GET /v1/proxy/svc/ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // So do the gateway's own answers that keep the connection (regression: they said
    // nothing, which tells an HTTP/1.0 client the connection closes), and the one after
    // them on the same connection is still served.
    c.send(b"GET /v1/proxy/nowhere/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /v1/proxy/svc/ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    // An HTTP/1.1 client's answer says nothing of it: keep-alive is its default.
    let mut c11 = Client::connect(g.addr);
    c11.send(b"GET /v1/proxy/nowhere/x HTTP/1.1\r\nHost: g\r\n\r\n");
    let r = c11.read_response();
    assert_eq!((r.status, r.header("connection")), (404, None));
    // A body the backend sends unframed is close-delimited for an HTTP/1.0 client.
    c.send(b"GET /v1/proxy/svc/x HTTP/1.0\r\nConnection: keep-alive\r\nx-mock-fault: chunked\r\nx-mock-body-bytes: 3000\r\n\r\n");
    let raw = c
        .read_until_end()
        .expect("clean end of a close-delimited body");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(!text.to_ascii_lowercase().contains("transfer-encoding"));
    assert!(raw.ends_with(&[b'x'; 3000]));
}

#[test]
fn expect_100_continue_is_honoured() {
    let (_b, g) = one_backend("");
    let mut c = Client::connect(g.addr);
    c.send(b"POST /v1/proxy/svc/e HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c.read_response();
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 5);
    assert!(r.echoed("expect").is_empty(), "Expect was forwarded");
}

#[test]
fn interim_1xx_responses_are_relayed() {
    let (_b, g) = one_backend("");
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/hints HTTP/1.1\r\nHost: g\r\nx-mock-fault: early-hints\r\n\r\n");
    let first = c.read_response();
    assert_eq!(first.status, 103);
    assert!(first.header("link").is_some());
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn backend_dying_mid_body_aborts_the_client_connection() {
    let (_b, g) = one_backend("");
    for fault in ["close-mid-body", "reset-mid-body"] {
        let mut c = Client::connect(g.addr);
        c.send(format!("GET /v1/proxy/svc/d HTTP/1.1\r\nHost: g\r\nx-mock-fault: {fault}\r\nx-mock-body-bytes: 200000\r\n\r\n").as_bytes());
        let end = c.read_until_end();
        let raw = end.clone().unwrap_or_else(|e| e);
        assert!(raw.starts_with(b"HTTP/1.1 200"), "{fault}");
        assert!(raw.len() < 200000, "{fault}: the whole body arrived");
        assert!(
            end.is_err(),
            "{fault}: the client saw a clean close, not an abort"
        );
    }
}

#[test]
fn stale_pooled_connection_is_retried_for_idempotent_requests_only() {
    // Every pooled connection dies when its second request arrives.
    let rec = Recorder::start(Mode::OnePerConnection(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    ));
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", rec.addr)));
    let mut c = Client::connect(g.addr);
    for _ in 0..3 {
        c.send(b"GET /v1/proxy/svc/s HTTP/1.1\r\nHost: g\r\n\r\n");
        let r = c.read_response();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
    // 1 fresh, then twice: reused (dies) + retried on a fresh connection.
    assert_eq!(rec.connections.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(rec.requests(), 5);
    // A POST is never resent (the backend may have acted on it): 502.
    c.send(b"POST /v1/proxy/svc/s HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\n\r\nx");
    let r = c.read_response();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "backend_closed");
    assert_eq!(rec.requests(), 6);
}

/// How a test backend hangs up on a request it does not answer.
#[derive(Clone, Copy, PartialEq)]
enum HangUp {
    /// It leaves the request unread and closes: the kernel resets the connection, as it
    /// does to the connections a killed process's listener had accepted.
    Reset,
    /// It reads the request and closes in order (a FIN): a backend the request crashes, or
    /// one that hangs up on it on purpose.
    Close,
}

/// A backend that answers the first request it gets (`first` in the body) when
/// `answer_first`, then hangs up on every later request without a byte of answer, `how`
/// says. It serves `conns` connections one after the other, and stops listening as it
/// accepts the last (a later connect is refused, never queued behind it and reset when the
/// thread ends: that race made `a_request_never_goes_back_to_a_backend_it_tried` flaky).
/// Returns its address and how many request heads it saw.
fn backend_hanging_up(
    how: HangUp,
    answer_first: bool,
    conns: usize,
) -> (std::net::SocketAddr, std::thread::JoinHandle<usize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut seen, mut answered) = (0, !answer_first);
        let mut l = Some(l);
        for i in 0..conns {
            let Some(Ok((mut s, _))) = l.as_ref().map(|l| l.accept()) else {
                break;
            };
            if i + 1 == conns {
                l = None;
            }
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut peeked = vec![0u8; 64 * 1024];
            loop {
                // The next head, whole, still unread.
                let head = loop {
                    match s.peek(&mut peeked) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => match peeked[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                            Some(end) => break Some(end + 4),
                            None => std::thread::sleep(Duration::from_millis(1)),
                        },
                    }
                };
                let Some(len) = head else { break };
                seen += 1;
                if how == HangUp::Close || !answered {
                    s.read_exact(&mut peeked[..len]).unwrap();
                }
                if answered {
                    break; // hangs up: unread (a reset) or read (a close)
                }
                answered = true;
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                    .unwrap();
            }
        }
        seen
    });
    (addr, t)
}

/// Sends `n` GETs on one connection through the gateway at `addr`, each of which must be
/// answered 200, by the dying backend (`first`) or by the healthy mock at `healthy`; returns
/// how many the dying one answered.
fn gets_answered_by_the_dying_one(
    addr: std::net::SocketAddr,
    healthy: std::net::SocketAddr,
    n: usize,
) -> usize {
    let mut c = Client::connect(addr);
    let mut from_dying = 0;
    for _ in 0..n {
        c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if r.body == b"first" {
            from_dying += 1;
        } else {
            assert_eq!(r.json()["port"], healthy.port());
        }
    }
    from_dying
}

/// Regression (an operator review): a backend that died under load ended every pooled
/// connection to it at once, and each GET in flight there was resent to it, refused, and
/// answered `502 backend_connect_failed` while another backend was healthy (32 of 32). The
/// resend's connect moves on to the next backend, as a first connect does.
#[test]
fn a_resend_after_a_backend_died_goes_to_another_backend() {
    let (dying, thread) = backend_hanging_up(HangUp::Close, true, 1);
    let healthy = mock_backend();
    let g = gateway(&config(
        1,
        "",
        &format!("  svc: [http://{dying}, http://{}]\n", healthy.addr),
    ));
    let from_dying = gets_answered_by_the_dying_one(g.addr, healthy.addr, 4);
    assert_eq!(
        from_dying, 1,
        "the dying backend answered more than its first request"
    );
    assert_eq!(
        thread.join().unwrap(),
        2,
        "the dying backend never saw the request it died on"
    );
}

/// A one-worker gateway with its admin API, `extra` config lines and `services` (YAML
/// lines under `services:`).
fn admin_gateway(extra: &str, services: &str) -> AdminGateway {
    let extra = format!("admin: 127.0.0.1:0\n{extra}");
    gateway_at(&write_config(&config(1, &extra, services)))
}

/// `r` is the gateway's `502 backend_closed`.
fn assert_backend_closed(r: &Response) {
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (502, "backend_closed".into())
    );
}

/// The failures counted against `backend` of service `svc` in the metrics at `admin`.
fn failures_of(admin: std::net::SocketAddr, backend: std::net::SocketAddr) -> Option<f64> {
    let series =
        format!("gateway_backend_failure_total{{service=\"svc\",backend=\"http://{backend}\"}}");
    sample(&metrics(admin), &series)
}

/// Regression (operator reviews, after the fix above): GETs in flight to a backend killed
/// under load were still answered `502 backend_closed` (0–17 of 32 per kill): their
/// resend's connect, or a first one, was accepted by the dying process's listener and
/// then reset. A fresh connection reset before a byte of answer counts against its backend
/// and moves the request on, once.
#[test]
fn a_resend_the_dying_backend_accepted_and_reset_goes_to_another_backend() {
    let (dying, thread) = backend_hanging_up(HangUp::Reset, true, 2);
    let healthy = mock_backend();
    let g = admin_gateway(
        "",
        &format!("  svc: [http://{dying}, http://{}]\n", healthy.addr),
    );
    // Round robin: the dying backend, the healthy one, then the dying one's pooled connection.
    assert_eq!(
        gets_answered_by_the_dying_one(g.proc.addr, healthy.addr, 3),
        1
    );
    // The first answered, the third on the pooled connection and again on the fresh one.
    assert_eq!(thread.join().unwrap(), 3);
    assert_eq!(failures_of(g.admin, dying), Some(1.0));
}

/// A first connection reset before a byte of answer moves a GET on too (a backend killed
/// under load resets what its listener had accepted); one closed in order does not: a
/// backend that reads a request and hangs up on it (the request crashes it, or it means
/// to) would otherwise see it on every backend, each counting a failure (a review).
#[test]
fn a_fresh_connection_reset_moves_a_get_on_and_one_closed_in_order_does_not() {
    let (resets, _) = backend_hanging_up(HangUp::Reset, false, 8);
    let (closes, closed) = backend_hanging_up(HangUp::Close, false, 1);
    let healthy = mock_backend();
    let rec = Recorder::start(reply(200));
    let g = admin_gateway(
        "",
        &format!(
            "  svc: [http://{resets}, http://{}]\n  other: [http://{closes}, http://{}]\n",
            healthy.addr, rec.addr
        ),
    );
    let r = get(g.proc.addr, "/v1/proxy/svc/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["port"], healthy.addr.port());
    assert_eq!(failures_of(g.admin, resets), Some(1.0));
    let r = get(g.proc.addr, "/v1/proxy/other/x");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "backend_closed");
    assert_eq!(closed.join().unwrap(), 1);
    assert_eq!(
        rec.requests(),
        0,
        "the request that closed its backend was carried on"
    );
}

/// The same on a pooled connection: it is resent once to the same backend (the pooled
/// connection may just have gone stale), and a close in order there ends it: `502`, the
/// other backend never sees it (a review: it reached both, a failure counted on each).
#[test]
fn a_request_its_backend_hangs_up_on_is_not_carried_to_the_next_from_a_pooled_connection() {
    let (closes, closed) = backend_hanging_up(HangUp::Close, true, 2);
    let rec = Recorder::start(reply(200));
    let g = admin_gateway(
        "",
        &format!("  svc: [http://{closes}, http://{}]\n", rec.addr),
    );
    let mut c = Client::connect(g.proc.addr);
    for _ in 0..2 {
        c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
    }
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
    let r = c.read_response();
    assert_backend_closed(&r);
    // The first, then the third on the pooled connection and on the fresh one.
    assert_eq!(closed.join().unwrap(), 3);
    assert_eq!(rec.requests(), 1);
    assert_eq!(failures_of(g.admin, closes), Some(1.0));
}

/// A backend that reads every request and hangs up on it, behind a gateway with these
/// `breaker` settings.
fn hanging_up_behind(breaker: &str) -> (std::net::SocketAddr, AdminGateway) {
    let (closes, _) = backend_hanging_up(HangUp::Close, false, 8);
    let g = admin_gateway(
        &format!("breaker: {breaker}"),
        &format!("  svc: [http://{closes}]\n"),
    );
    (closes, g)
}

/// A GET whose head is over 8 KiB, which some servers hang up on rather than answer.
fn long_head() -> String {
    format!(
        "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    )
}

/// Regression (a hostile-client review): three request heads over 8 KiB opened a healthy
/// backend's circuit for every client, when the backend hangs up on heads that size rather
/// than answer 431: the client chose the size. A backend that hangs up on a head over
/// 8 KiB gets no verdict; on an ordinary head it does.
#[test]
fn a_backend_hanging_up_on_a_long_head_is_no_verdict() {
    let (closes, g) = hanging_up_behind("{failure_threshold: 2}");
    let long = long_head();
    for _ in 0..3 {
        let r = request(g.proc.addr, &long);
        assert_backend_closed(&r);
    }
    assert_eq!(failures_of(g.admin, closes), Some(0.0));
    let r = get(g.proc.addr, "/v1/proxy/svc/x");
    assert_backend_closed(&r);
    assert_eq!(failures_of(g.admin, closes), Some(1.0));
}

/// Regression (a hostile-client review): a long head the backend hangs up on, sent
/// whenever the circuit was due for a probe, took the probe and handed it back (no
/// verdict), so the circuit stayed open for every other client as long as the attacker
/// liked. A probe that ends so closes the circuit, as a probe answered with a head over
/// our limits does; a backend that hangs up on everything opens it again at its next
/// failure.
#[test]
fn a_long_head_taking_the_probe_cannot_hold_a_circuit_open() {
    let (closes, g) = hanging_up_behind("{failure_threshold: 1, cooldown: 1s}");
    assert_backend_closed(&get(g.proc.addr, "/v1/proxy/svc/x"));
    assert_eq!(circuit(g.admin, closes), "open");
    std::thread::sleep(Duration::from_millis(1100));
    let long = long_head();
    assert_backend_closed(&request(g.proc.addr, &long));
    assert_eq!(
        circuit(g.admin, closes),
        "closed",
        "the probe was handed back"
    );
    assert_backend_closed(&get(g.proc.addr, "/v1/proxy/svc/x"));
    assert_eq!(circuit(g.admin, closes), "open");
}

/// Regression (a re-review): a backend that reads a request's head and hangs up on it,
/// leaving its body unread, ends the connection with a reset, which moves the request on;
/// each backend it reached counted a failure, so a client opened every circuit of a
/// service with half the requests it took before. The backend that reset is judged by how
/// the next one answers: a request every backend hangs up on counts once.
#[test]
fn a_request_every_backend_resets_counts_one_failure() {
    let (a, seen_a) = backend_hanging_up(HangUp::Reset, false, 1);
    let (b, seen_b) = backend_hanging_up(HangUp::Reset, false, 1);
    let g = admin_gateway("", &format!("  svc: [http://{a}, http://{b}]\n"));
    let r = request(
        g.proc.addr,
        "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_backend_closed(&r);
    assert_eq!((seen_a.join().unwrap(), seen_b.join().unwrap()), (1, 1));
    assert_eq!(failures_of(g.admin, a), Some(0.0));
    assert_eq!(failures_of(g.admin, b), Some(1.0));
}

/// Regression (a review): a request whose resend had already moved on (its backend refused
/// the fresh connect) and was then reset moved on again to any backend but the last,
/// back to the one that refused it, counting a second failure against it. A request moves
/// on only to backends it has not tried.
#[test]
fn a_request_never_goes_back_to_a_backend_it_tried() {
    let (dies, _) = backend_hanging_up(HangUp::Close, true, 1);
    let (resets, _) = backend_hanging_up(HangUp::Reset, true, 8);
    let g = admin_gateway("", &format!("  svc: [http://{dies}, http://{resets}]\n"));
    let mut c = Client::connect(g.proc.addr);
    for _ in 0..2 {
        c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
        assert_eq!(c.read_response().body, b"first");
    }
    // On `dies`'s pooled connection, which it closes; its fresh connect is refused; on to
    // `resets`, which resets: nothing is left to try.
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
    let r = c.read_response();
    assert_backend_closed(&r);
    assert_eq!(failures_of(g.admin, dies), Some(1.0));
    assert_eq!(failures_of(g.admin, resets), Some(1.0));
}

#[test]
fn a_request_resent_after_a_stale_connection_carries_its_whole_body() {
    // Every pooled connection dies when its second request arrives. The body is longer than
    // the gateway's first read, so it goes up from two buffers behind the head, and must go
    // up again, whole and in order, on the fresh connection.
    let rec = Recorder::start(Mode::OnePerConnection(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    ));
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", rec.addr)));
    let body: Vec<u8> = (0..20_000).map(|i| (i * 13 % 249) as u8 | 1).collect();
    let mut raw = format!(
        "PUT /v1/proxy/svc/p HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let mut c = Client::connect(g.addr);
    for _ in 0..2 {
        c.send(&raw);
        let r = c.read_response();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    }
    // 1 fresh, then reused (dies) + resent on a fresh connection.
    assert_eq!(rec.connections.load(Ordering::SeqCst), 2);
    assert_eq!(rec.requests(), 3);
    let whole = || rec.received().ends_with(&body);
    assert!(
        eventually(Duration::from_secs(3), whole),
        "the resent request lacked its body"
    );
}

#[test]
fn pooled_connection_closed_while_idle_is_detected_before_reuse() {
    let b = mock_backend();
    let g = gateway(&config(1, "", &format!("  svc: [http://{}]\n", b.addr)));
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    // The backend goes away, closing the idle pooled connection.
    drop(b);
    std::thread::sleep(Duration::from_millis(50));
    // The gateway must notice the close before sending on it: the POST is not lost on a
    // dead connection (backend_closed) but reported as the refused connect it now is.
    c.send(b"POST /v1/proxy/svc/a HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\n\r\nx");
    let r = c.read_response();
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "backend_connect_failed");
}

#[test]
fn pooled_connections_are_reused_then_expire() {
    let rec = Recorder::start(reply(200));
    let g = gateway(&config(
        1,
        "pool: {idle_timeout: 300ms}",
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    let conns = || rec.connections.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 200);
    }
    assert_eq!(conns(), 1, "the idle connection was not reused");
    // Past the idle timeout the gateway closes it (the sweep runs every second) and the
    // next request opens a new one.
    assert!(eventually(Duration::from_secs(3), || rec
        .closed
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1));
    assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 200);
    assert_eq!(conns(), 2);
}

#[test]
fn idle_client_connections_are_closed_after_client_idle() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "timeouts: {client_idle: 300ms}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let mut c = Client::connect(g.addr);
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let t = std::time::Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)));
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn epoll_fallback_serves_the_same() {
    let b = mock_backend();
    let path = write_config(&config(1, "", &format!("  svc: [http://{}]\n", b.addr)));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.arg("--config")
        .arg(&path)
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .env("RUST_LOG", "info");
    cmd.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    let mut c = Client::connect(addr);
    for i in 0..5 {
        c.send(
            format!("POST /v1/proxy/svc/{i} HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\n\r\nabc")
                .as_bytes(),
        );
        let r = c.read_response();
        assert_eq!((r.status, r.json()["body_len"].as_u64()), (200, Some(3)));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(err.contains("driver epoll"), "{err}");
}

#[test]
fn buffered_request_bodies_hold_no_backend_connection_while_they_trickle_in() {
    // Regression: 1000 slow-body clients held ~1000 backend connections (the body was
    // streamed as it trickled in). With `limits.buffer_request_body`, a backend is picked
    // only once that much of the body (or all of a smaller one) is in hand.
    let rec = Recorder::start(reply(200));
    let g = gateway(&config(
        1,
        "limits: {buffer_request_body: 65536}",
        &format!("  svc: [http://{}]\n", rec.addr),
    ));
    let mut slow: Vec<Client> = (0..50)
        .map(|_| {
            let mut c = Client::connect(g.addr);
            c.send(b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789");
            c
        })
        .collect();
    // A request served meanwhile shows the gateway has seen the slow ones.
    assert_eq!(get(g.addr, "/v1/proxy/svc/x").status, 200);
    assert_eq!(
        rec.connections.load(Ordering::SeqCst),
        1,
        "slow uploads took backend connections"
    );
    // One upload completes: it reaches the backend whole, in one piece.
    slow[0].send(&[b'a'; 990]);
    assert_eq!(slow[0].read_response().status, 200);
    let received = rec.received();
    let at = received
        .windows(9)
        .position(|w| w == b"POST /up ")
        .expect("the upload reached the backend");
    let rest = &received[at..];
    let head_end = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 4;
    assert!(rest[head_end..].starts_with(b"0123456789aaaa"));
    assert_eq!(rest.len() - head_end, 1000);
    assert!(rec.connections.load(Ordering::SeqCst) <= 2);
}

/// Regression: with `limits.buffer_request_body`, a body whose last read also carried the
/// next pipelined request, and was shorter than the head, panicked the connection's task
/// (a range into the client's buffer from before the reads): the client got a FIN and no
/// answer, even after a `100 Continue`, and the backend nothing (a review). Every split of
/// the body's last segment and a request behind it is served now.
#[test]
fn a_buffered_body_followed_by_a_pipelined_request_is_served_both_ways() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "limits: {buffer_request_body: 65536}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let next = b"GET /v1/proxy/svc/next HTTP/1.1\r\nHost: g\r\n\r\n";
    for (expect, head) in [
        (false, &b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\n"[..]),
        (true, &b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"[..]),
        (false, &b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"[..]),
    ] {
        let body: &[u8] = if head.ends_with(b"chunked\r\n\r\n") {
            b"5\r\nhello\r\n0\r\n\r\n"
        } else {
            b"hello"
        };
        for cut in [0, 2, next.len()] {
            let mut c = Client::connect(g.addr);
            c.send(head);
            if expect {
                assert_eq!(c.read_response().status, 100);
            } else {
                std::thread::sleep(Duration::from_millis(30));
            }
            let mut last = body.to_vec();
            last.extend_from_slice(&next[..cut]);
            c.send(&last);
            if cut < next.len() {
                std::thread::sleep(Duration::from_millis(30));
                c.send(&next[cut..]);
            }
            let r = c.read_response();
            assert_eq!((r.status, r.json()["body_len"].as_u64()), (200, Some(5)), "cut {cut}");
            let r = c.read_response();
            assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/next")), "cut {cut}");
        }
    }
}

/// More idle keep-alive connections than a worker lets wait with a lent buffer
/// (`MAX_IDLE_READS`, 128): the rest wait for readiness with none, and every one is served
/// its next request, however the head is split, and then closed after `client_idle`.
#[test]
fn idle_connections_beyond_the_lent_reads_are_served_and_closed() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "timeouts: {client_idle: 2s}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let mut clients: Vec<Client> = (0..300).map(|_| Client::connect(g.addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("GET /v1/proxy/svc/first/{i} HTTP/1.1\r\nHost: g\r\n\r\n").as_bytes());
        assert_eq!(c.read_response().status, 200);
    }
    // All 300 are idle now. Half the next head first, the rest after every half arrived.
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("GET /v1/proxy/svc/second/{i} HT").as_bytes());
    }
    std::thread::sleep(Duration::from_millis(100));
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(b"TP/1.1\r\nHost: g\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200, "connection {i}");
        assert_eq!(r.json()["path"], format!("/second/{i}"), "connection {i}");
    }
    let t = std::time::Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        let left = Duration::from_secs(6).saturating_sub(t.elapsed());
        assert!(
            c.closed_within(left),
            "connection {i} still open after client_idle"
        );
    }
}

/// A review followed a backend's redirect past the gateway: the backend built `Location`
/// from the `Host` we send (its own address), so clients went to it directly, without the
/// service's path. A `Location` naming the backend as we address it now points at the
/// gateway's path to it (NGINX's `proxy_redirect default`, as a path: right behind any TLS
/// terminator); every other `Location` is the backend's to give.
#[test]
fn a_redirect_to_the_backends_own_address_points_at_the_gateway() {
    let b = Recorder::start(reply(200));
    let g = gateway(&config(
        1,
        "",
        &format!("  a: [http://{0}]\n  p: [http://{0}/api]\n", b.addr),
    ));
    let at = b.addr;
    let cases: &[(&str, &str, &str)] = &[
        (
            "a",
            &format!("http://{at}/login?next=%2Fx"),
            "/v1/proxy/a/login?next=%2Fx",
        ),
        ("a", &format!("HTTP://{at}/x#f"), "/v1/proxy/a/x#f"),
        ("a", &format!("http://{at}"), "/v1/proxy/a/"),
        ("a", &format!("http://{at}?q=1"), "/v1/proxy/a/?q=1"),
        (
            "p",
            &format!("http://{at}/api/items/1"),
            "/v1/proxy/p/items/1",
        ),
        ("p", &format!("http://{at}/api"), "/v1/proxy/p/"),
        // Not the backend as addressed: left alone.
        ("p", &format!("http://{at}/apix/1"), ""),
        ("p", &format!("http://{at}/other"), ""),
        ("a", &format!("http://{at}1/x"), ""),
        ("a", "http://example.com/x", ""),
        ("a", "/relative/x", ""),
        ("a", "https://127.0.0.1/x", ""),
        // Out of the service's path once a client resolves it: service p's backend sending
        // its own `/q/secret` (a review saw `/v1/proxy/p/../q/secret`, service q's).
        ("p", &format!("http://{at}/api/../q/secret"), ""),
        ("p", &format!("http://{at}/api/%2e%2e/q/secret"), ""),
        ("a", &format!("http://{at}/../x"), ""),
    ];
    for &(svc, location, want) in cases {
        b.set(Mode::Reply(
            format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
                .into_bytes(),
        ));
        let r = get(g.addr, &format!("/v1/proxy/{svc}/go"));
        assert_eq!(r.status, 302);
        let want = if want.is_empty() { location } else { want };
        assert_eq!(locations(&r), [want], "{svc} {location}");
    }
    // Two `Location` fields (which a client could read either way) are left as they are.
    let two = format!("http://{at}/one");
    b.set(Mode::Reply(
        format!("HTTP/1.1 201 Created\r\nlocation: {two}\r\nlocation: /two\r\ncontent-length: 0\r\n\r\n")
            .into_bytes(),
    ));
    let r = get(g.addr, "/v1/proxy/a/new");
    assert_eq!(locations(&r), [two.as_str(), "/two"]);
}

/// The values of every `Location` field of `r`, in order.
fn locations(r: &Response) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A review's Python `http.server` and `wsgiref` backends read only `Content-Length`, took
/// every chunked upload for an empty body and answered 200: the data was lost. With
/// `limits.buffer_request_body`, a chunked body read whole goes up with a `Content-Length`
/// (as NGINX sends a body it buffered); a longer one goes up chunked, what was held first
/// as one chunk, the rest as it comes, byte for byte.
#[test]
fn a_chunked_body_read_whole_goes_up_with_a_length() {
    let b = mock_backend();
    let g = gateway(&config(
        1,
        "limits: {buffer_request_body: 4096}",
        &format!("  svc: [http://{}]\n", b.addr),
    ));
    let chunked = |body: &[u8], piece: usize| {
        let mut out = Vec::new();
        for part in body.chunks(piece) {
            out.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        out
    };
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    // (body length, chunk size, sent with a length, sent in one write behind the head)
    for (len, piece, whole, at_once) in [
        (0, 1, true, false),
        (1, 1, true, false),
        (4096, 100, true, false),
        (4096, 4096, true, false),
        (4096, 4096, true, true),
        (4097, 7, false, false),
        (4097, 4097, false, false),
        // Longer than the buffer but read whole at once: chunked all the same (a review
        // saw bodies up to about 8 KiB sent with a length when one read brought them).
        (4097, 4097, false, true),
        (8000, 1000, false, true),
        (10_000, 3000, false, false),
    ] {
        let body = &body[..len];
        let mut c = Client::connect(g.addr);
        let head =
            b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n";
        let wire = chunked(body, piece);
        if at_once {
            c.send(&[&head[..], &wire].concat());
        } else {
            // In pieces, so the gateway reads the body over several reads; the last chunk
            // (its end) after a pause, so that a longer body is seen not to end in time.
            c.send(head);
            let last = wire.len() - b"0\r\nX-Trailer: t\r\n\r\n".len();
            for part in wire[..last].chunks(1500) {
                c.send(part);
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(50));
            c.send(&wire[last..]);
        }
        let r = c.read_response();
        assert_eq!(r.status, 200, "{len}");
        let j = r.json();
        assert_eq!(j["body_len"], len as u64, "{len}");
        assert_eq!(j["body_fnv"], fnv(body), "{len}");
        let (cl, te) = (r.echoed("content-length"), r.echoed("transfer-encoding"));
        if whole {
            assert_eq!((cl, te), (vec![len.to_string()], vec![]), "{len}");
        } else {
            assert_eq!((cl, te), (vec![], vec!["chunked".to_string()]), "{len}");
        }
        // The connection goes on: a next request on it is served.
        c.send(b"GET /v1/proxy/svc/next HTTP/1.1\r\nHost: g\r\n\r\n");
        assert_eq!(c.read_response().json()["path"], "/next");
    }
}

/// A chunked body sent up with a length (above) keeps it when the request moves on to
/// another backend: the resend writes a new head in front of what followed the first one.
#[test]
fn a_chunked_body_sent_up_with_a_length_keeps_it_when_resent_elsewhere() {
    let (resets, _) = backend_hanging_up(HangUp::Reset, false, 8);
    let healthy = mock_backend();
    let g = admin_gateway(
        "limits: {buffer_request_body: 4096}",
        &format!("  svc: [http://{resets}, http://{}]\n", healthy.addr),
    );
    let r = request(
        g.proc.addr,
        "PUT /v1/proxy/svc/put HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["port"], healthy.addr.port());
    assert_eq!(j["body_fnv"], fnv(b"hello world"));
    assert_eq!(r.echoed("content-length"), ["11"]);
    assert!(r.echoed("transfer-encoding").is_empty());
    // It went to the backend that reset it first.
    assert_eq!(failures_of(g.admin, resets), Some(1.0));
}
