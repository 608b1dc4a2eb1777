//! Micro benchmarks of the per-request hot path: request-head parsing, routing, the
//! balancer's pick with its breaker check, the clean-connection check the pool makes on
//! every reuse, and admission control.
//!
//!     cargo bench --bench hot_path            # all sections
//!     cargo bench --bench hot_path -- route   # sections whose name contains "route"
//!
//! No benchmark framework: each case is timed with `std::time::Instant` over batches sized
//! to take ~50 ms, seven batches, and the report gives ns/op of the fastest and the median
//! batch. Inputs and outputs go through `black_box` so the work cannot be hoisted or
//! dropped. Numbers are single-threaded and cache-hot: they bound what these steps can cost
//! per request, next to the ~20-30 µs of kernel TCP work a proxied request costs (see
//! bench/results/*/report.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::balancer::{Pick, View};
use gateway::breaker;
use gateway::config::Config;
use gateway::h1::{self, HeadLimits, MAX_HEADERS};
use gateway::rewrite;
use gateway::router;
use gateway::state::{now_ms, Shared, Snapshot};

const BATCH_TARGET: Duration = Duration::from_millis(50);
const BATCHES: usize = 7;

/// Times `f` and prints one line: name, fastest batch and median batch in ns/op.
fn bench(filter: &[String], name: &str, mut f: impl FnMut()) {
    if !filter.is_empty() && !filter.iter().any(|w| name.contains(w.as_str())) {
        return;
    }
    // Calibrate: grow the batch until it takes at least BATCH_TARGET / 10.
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let el = t.elapsed();
        if el >= BATCH_TARGET / 10 {
            let per = el.as_nanos() as f64 / iters as f64;
            iters = ((BATCH_TARGET.as_nanos() as f64 / per) as u64).max(1);
            break;
        }
        iters *= 4;
    }
    let mut per_op: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    per_op.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{name:<66} {:>9.1} ns/op  (median {:>8.1}, {iters} iters x {BATCHES})",
        per_op[0],
        per_op[BATCHES / 2]
    );
}

fn snapshot(yaml: &str) -> Arc<Snapshot> {
    Shared::new(Config::parse(yaml).expect("bench config"))
        .current
        .load_full()
}

fn limits(snap: &Snapshot) -> HeadLimits {
    let l = &snap.config.limits;
    HeadLimits {
        max_head_bytes: l.max_head_bytes,
        max_headers: l.max_headers,
        max_target_bytes: l.max_target_bytes,
    }
}

/// The head loadgen sends in scripts/bench.sh (GET, Host, no body).
const HEAD_MIN: &[u8] = b"GET /v1/proxy/bench/hello HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n";

/// A browser-like API request: 12 header lines, ~650 bytes.
const HEAD_TYPICAL: &[u8] = b"GET /v1/proxy/user-service/users/42/orders?limit=20&cursor=eyJpZCI6MTIzfQ HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U\r\n\
Cookie: session=4f2a9c1e8b7d6a5f; theme=dark\r\n\
X-Request-Id: 7b3e9f2a-1c4d-4e8f-9a6b-2d5c8e1f0a3b\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
Referer: https://app.example.com/orders\r\n\
Connection: keep-alive\r\n\
Cache-Control: no-cache\r\n\r\n";

/// A POST with a Content-Length body (only the head is parsed).
const HEAD_POST: &[u8] = b"POST /v1/proxy/payment-service/pay HTTP/1.1\r\n\
Host: api.example.com\r\n\
Content-Type: application/json\r\n\
Content-Length: 16384\r\n\
X-Request-Id: 7b3e9f2a-1c4d-4e8f-9a6b-2d5c8e1f0a3b\r\n\r\n";

fn parse_section(filter: &[String]) {
    // parse: gateway::h1::parse_request (httparse plus the gateway's strictness checks:
    // bare CR/LF, framing, Host, Connection, Expect, limits) against bare
    // httparse::Request::parse on the same bytes. The difference is what validation costs.
    let snap = snapshot("services:\n  bench: [http://127.0.0.1:19001]\n");
    let lim = limits(&snap);
    for (what, head) in [
        ("minimal GET (2 lines)", HEAD_MIN),
        ("typical GET (12 headers)", HEAD_TYPICAL),
        ("POST with Content-Length", HEAD_POST),
    ] {
        // Sanity: the gateway accepts these heads whole.
        {
            let mut hs = h1::header_slots();
            let p = h1::parse_request(head, &mut hs, &lim);
            assert!(
                matches!(p, Ok(Some(ref r)) if r.head_len == head.len()),
                "{what}"
            );
        }
        bench(filter, &format!("parse: h1::parse_request, {what}"), || {
            let mut hs = h1::header_slots();
            let r = h1::parse_request(black_box(head), &mut hs, &lim);
            black_box(r.map(|p| p.map(|p| p.head_len)).ok());
        });
        bench(filter, &format!("parse: bare httparse, {what}"), || {
            let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut hs);
            black_box(req.parse(black_box(head)).ok());
        });
    }
}

fn route_section(filter: &[String]) {
    // route: gateway::router::route(target) (prefix, service-name and path-safety checks on
    // the raw target) followed by Snapshot::service_index (binary search by name), with 3
    // and with 200 configured services; and the path-safety check on a long query-less
    // path with percent-encoding, its slowest ordinary case.
    let small = snapshot(
        "services:\n  bench: [http://127.0.0.1:19001]\n  orders: [http://127.0.0.1:19002]\n  user-service: [http://127.0.0.1:19003]\n",
    );
    let mut yaml = String::from("services:\n");
    for i in 0..200 {
        yaml.push_str(&format!("  svc-{i:03}: [http://127.0.0.1:{}]\n", 20000 + i));
    }
    let big = snapshot(&yaml);
    let cases: [(&str, &Arc<Snapshot>, &str); 4] = [
        (
            "3 services, /v1/proxy/bench/hello",
            &small,
            "/v1/proxy/bench/hello",
        ),
        (
            "3 services, query string",
            &small,
            "/v1/proxy/user-service/users/42/orders?limit=20&cursor=eyJpZCI6MTIzfQ",
        ),
        (
            "200 services, /v1/proxy/svc-137/x/y",
            &big,
            "/v1/proxy/svc-137/x/y",
        ),
        (
            "3 services, percent-encoded path",
            &small,
            "/v1/proxy/orders/items/caf%C3%A9/r%C3%A9sum%C3%A9/2024/%E2%9C%93",
        ),
    ];
    for (what, snap, target) in cases {
        let r = router::route(target).expect(what);
        assert!(snap.service_index(r.service).is_some(), "{what}");
        bench(
            filter,
            &format!("route: route + service_index, {what}"),
            || {
                let idx = match router::route(black_box(target)) {
                    Ok(r) => snap.service_index(r.service).map(|i| (i, r.rest.len())),
                    Err(_) => None,
                };
                black_box(idx);
            },
        );
    }
}

fn pick_section(filter: &[String]) {
    // pick: gateway::balancer::View::pick(svc, &[]), the round-robin step plus the breaker
    // admission (one shared atomic load while CLOSED), with all three circuits closed and
    // with one of three open (it is skipped); then pick + breaker::success, which is what a
    // request that gets its response does (success writes nothing while the count is 0).
    let yaml = "services:\n  bench: [http://127.0.0.1:19001, http://127.0.0.1:19002, http://127.0.0.1:19003]\n";
    let closed = snapshot(yaml);
    let svc = closed.service_index(b"bench").expect("bench service");
    let view = View::new(closed.clone(), 0);
    bench(filter, "pick: View::pick, 3 backends all closed", || {
        black_box(view.pick(black_box(svc), &[], false));
    });
    bench(
        filter,
        "pick: View::pick + breaker::success, all closed",
        || {
            if let Pick::Backend { idx, ticket } = view.pick(black_box(svc), &[], false) {
                let cell = &*view.snapshot.services[svc].backends[idx].breaker;
                black_box(breaker::success(&**cell, ticket, now_ms()));
            }
        },
    );

    let one_open = snapshot(yaml);
    let service = &one_open.services[svc];
    let policy = service.policy;
    let now = now_ms();
    for _ in 0..policy.threshold {
        let cell = &*service.backends[1].breaker;
        let t = breaker::admit(&**cell, now, &policy).expect("closed circuit admits");
        breaker::failure(&**cell, t, now, &policy);
    }
    let view = View::new(one_open.clone(), 0);
    // Sanity: backend 1 is skipped for the whole run (the cooldown is 60 s).
    for _ in 0..6 {
        assert!(!matches!(
            view.pick(svc, &[], false),
            Pick::Backend { idx: 1, .. }
        ));
    }
    bench(
        filter,
        "pick: View::pick, 3 backends, 1 open (skipped)",
        || {
            black_box(view.pick(black_box(svc), &[], false));
        },
    );
}

fn main() {
    // `cargo bench` passes `--bench`; other non-flag arguments filter by name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    println!(
        "hot_path: ns/op, fastest of {BATCHES} batches of ~{BATCH_TARGET:?} (median in brackets)"
    );
    parse_section(&filter);
    route_section(&filter);
    pick_section(&filter);
    pool_section(&filter);
    split_head_section(&filter);
    hostile_head_section(&filter);
    chunked_section(&filter);
    admission_section(&filter);
}

/// A chunked body re-framed as the gateway streams it (`BodyRelay::feed`, decoding and
/// re-chunking, over 60 KiB reads): 1 MiB of wire bytes in chunks of 16 KiB, of 1 byte,
/// and of 1 byte with a 100-byte extension each (the framing a hostile client chooses).
/// ns per op = per wire MiB; the decoded bytes per wire MiB are in the name.
fn chunked_section(filter: &[String]) {
    use gateway::relay::BodyRelay;
    let wire_mib = |chunk: &[u8]| {
        let mut body = Vec::with_capacity(1 << 20);
        let mut decoded = 0usize;
        while body.len() + chunk.len() + 5 <= 1 << 20 {
            body.extend_from_slice(chunk);
            decoded += 1;
        }
        body.extend_from_slice(b"0\r\n\r\n");
        (body, decoded)
    };
    let big = {
        let mut c = b"4000\r\n".to_vec();
        c.extend(std::iter::repeat_n(b'x', 16 * 1024));
        c.extend_from_slice(b"\r\n");
        c
    };
    let ext = format!("1;e={}\r\nx\r\n", "v".repeat(98));
    for (what, chunk, per) in [
        ("16 KiB chunks", &big[..], 16 * 1024),
        ("1-byte chunks", &b"1\r\nx\r\n"[..], 1),
        ("1-byte chunks, 100-byte extensions", ext.as_bytes(), 1),
    ] {
        let (body, n) = wire_mib(chunk);
        let mut out = Vec::with_capacity(1 << 17);
        // Wire bytes consumed before the body ended or was refused, and whether it ended.
        let mut run = || {
            let mut relay = BodyRelay::new(h1::Framing::Chunked, true, u64::MAX);
            let mut wire = 0;
            for piece in body.chunks(60 * 1024) {
                out.clear();
                match relay.feed(black_box(piece), &mut out) {
                    Ok(used) => wire += used,
                    Err(_) => return (wire, false),
                }
                black_box(&out);
            }
            (wire, relay.done)
        };
        let (wire, done) = run();
        let outcome = if done {
            "relayed".to_string()
        } else {
            format!("refused within {} KiB", (wire + 60 * 1024) / 1024)
        };
        bench(
            filter,
            &format!(
                "chunked: 1 MiB wire, {what} ({} KiB decoded), {outcome}",
                n * per / 1024
            ),
            || {
                black_box(run());
            },
        );
    }
}

/// The whole work on a head (parse, then `rewrite::prepare`: routing, dropping hop-by-hop
/// and `Connection`-named fields, adding ours) for ~30 KB heads, ordinary and hostile
/// shapes of the same size: what one request head can cost a worker. A hostile shape should
/// cost no more than the ordinary one (work linear in the bytes). Before the bound on
/// `Connection` names (2026-12-01, AMD EPYC VM): 13.6, 176 and 237 µs.
fn hostile_head_section(filter: &[String]) {
    let snap = snapshot("services:\n  bench: [http://127.0.0.1:19001]\n");
    let mut lim = limits(&snap);
    lim.max_head_bytes = 64 * 1024;
    let view = View::new(snap.clone(), 0);
    let start = b"GET /v1/proxy/bench/x HTTP/1.1\r\nHost: a\r\n".to_vec();
    let mut plain = start.clone();
    for i in 0..98 {
        plain.extend_from_slice(format!("x-pad-{i:02}: {}\r\n", "v".repeat(290)).as_bytes());
    }
    plain.extend_from_slice(b"\r\n");
    // One Connection line naming ~4000 fields, then 97 fields: every field is checked
    // against the names.
    let mut options = start.clone();
    options.extend_from_slice(b"Connection: ");
    for i in 0..4000 {
        options.extend_from_slice(format!("x-{i:04},").as_bytes());
    }
    options.extend_from_slice(b"\r\n");
    for i in 0..97 {
        options.extend_from_slice(format!("x-pad-{i:02}: v\r\n").as_bytes());
    }
    options.extend_from_slice(b"\r\n");
    // Many Connection lines of one short name each.
    let mut lines = start.clone();
    for i in 0..97 {
        lines.extend_from_slice(format!("Connection: x-{i:02}{}\r\n", ",a".repeat(150)).as_bytes());
    }
    lines.extend_from_slice(b"\r\n");
    for (what, head) in [
        ("98 plain fields", &plain),
        ("Connection naming 4000 fields", &options),
        ("97 Connection lines of 150 names", &lines),
    ] {
        let (mut fwd, mut path, mut service) = (Vec::new(), Vec::new(), Vec::new());
        let mut work = || {
            let mut hs = h1::header_slots();
            match h1::parse_request(black_box(head), &mut hs, &lim) {
                Ok(Some(p)) => rewrite::prepare(
                    &p,
                    &view,
                    rewrite::Peer {
                        ip: b"127.0.0.1",
                        trusted: false,
                    },
                    None,
                    &mut fwd,
                    &mut path,
                    &mut service,
                )
                .is_ok(),
                _ => false,
            }
        };
        let outcome = if work() { "forwarded" } else { "refused" };
        bench(
            filter,
            &format!("hostile head: {} B, {what}, {outcome}", head.len()),
            || {
                black_box(work());
            },
        );
    }
}

/// Admission control for one request (`Admission::admit`, then `release` when it held an
/// in-flight slot), with budgets far above the load so every request is admitted: a
/// service-wide budget (a clock read and one CAS), `max_in_flight` (two atomic adds), both,
/// and keyed budgets (a SipHash of the client address or the header value, then the CAS).
/// Single-threaded: the CAS never retries here; across cores the shared line moves.
/// Keyed budgets see 4096 clients in turn (each its address and its key): their cells count
/// in µs, a per-key rate above 1 000 000/s counting as that, so one client at this pace ran
/// its budget dry within the run, and the bench stopped there (until late on 2026-12-05).
fn admission_section(filter: &[String]) {
    let yaml = "services:
  svc:
    backends: [http://127.0.0.1:19001]
    rate_limit: {rate: 1000000000/s, burst: 1000000}
  both:
    backends: [http://127.0.0.1:19001]
    rate_limit: {rate: 1000000000/s, burst: 1000000}
    max_in_flight: 1000000
  flight:
    backends: [http://127.0.0.1:19001]
    max_in_flight: 1000000
  ip:
    backends: [http://127.0.0.1:19001]
    rate_limit: {rate: 1000000000/s, burst: 1000000, key: client_ip}
  hdr:
    backends: [http://127.0.0.1:19001]
    rate_limit: {rate: 1000000000/s, burst: 1000000, key: \"header:x-api-key\"}
  none: [http://127.0.0.1:19001]
";
    let snap = snapshot(yaml);
    let headers = [
        httparse::Header {
            name: "Host",
            value: b"gateway",
        },
        httparse::Header {
            name: "X-Api-Key",
            value: b"k-0123456789abcdef",
        },
    ];
    let keys: Vec<Vec<u8>> = (0..4096u32)
        .map(|i| format!("k-{i:016x}").into_bytes())
        .collect();
    let headers: Vec<[httparse::Header; 2]> = keys
        .iter()
        .map(|k| {
            [
                headers[0],
                httparse::Header {
                    name: "X-Api-Key",
                    value: k,
                },
            ]
        })
        .collect();
    let callers: Vec<gateway::admission::Caller> = (0..4096u32)
        .map(|i| gateway::admission::Caller {
            peer: std::net::IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i)),
            headers: &headers[i as usize],
        })
        .collect();
    let mut turn = 0usize;
    let mut fields = Vec::with_capacity(256);
    for (name, svc) in [
        ("admission: no limits (is_limited only)", "none"),
        ("admission: rate limit, key service", "svc"),
        ("admission: max_in_flight", "flight"),
        ("admission: rate limit + max_in_flight", "both"),
        ("admission: rate limit, key client_ip", "ip"),
        ("admission: rate limit, key header:x-api-key", "hdr"),
    ] {
        let a = &snap.service(svc.as_bytes()).expect("service").admission;
        bench(filter, name, || {
            if !black_box(a).is_limited() {
                return;
            }
            fields.clear();
            turn = (turn + 1) % callers.len();
            match a.admit(black_box(&callers[turn]), &[], &mut fields) {
                gateway::admission::Verdict::Admit { held } => {
                    if held {
                        a.release();
                    }
                }
                _ => panic!("{svc}: a budget far above the load refused a request"),
            }
        });
    }
}

/// The pool's check of an idle upstream connection before reuse: one non-blocking
/// `recv(MSG_PEEK)` on a connected loopback socket with nothing to read (the common case).
/// This is what a pooled request pays for "no stray byte ever reaches the next client".
fn pool_section(filter: &[String]) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (_server, _) = listener.accept().expect("accept");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
    bench(
        filter,
        "pool: is_quiet(fd) on an idle connection (MSG_PEEK)",
        || {
            black_box(gateway::io::is_quiet(black_box(fd)));
        },
    );
}

/// A 29 KB head arriving two bytes at a time (a slow or hostile client): what the gateway
/// spends finding and parsing it, gated by `h1::HeadScan` (parse only when the request line
/// or the head completes), against parsing from the start on every arrival as before. The
/// gated cost grows with the head's size; the ungated one with its square.
fn split_head_section(filter: &[String]) {
    let mut lim = limits(&snapshot("services:\n  bench: [http://127.0.0.1:19001]\n"));
    lim.max_head_bytes = 64 * 1024;
    let mut head = b"GET /v1/proxy/bench/x HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..100 {
        head.extend_from_slice(format!("x-pad-{i}: {}\r\n", "v".repeat(270)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let head = &head[..];
    let parse = |end: usize| {
        let mut hs = h1::header_slots();
        black_box(
            h1::parse_request(&head[..end], &mut hs, &lim)
                .ok()
                .flatten()
                .is_some(),
        )
    };
    bench(
        filter,
        "split head: 29 KB in 2-byte pieces, HeadScan-gated",
        || {
            let mut scan = h1::HeadScan::default();
            for end in (2..head.len()).step_by(2).chain([head.len()]) {
                if scan.ready(&head[..end], &lim) {
                    parse(end);
                }
            }
        },
    );
    bench(
        filter,
        "split head: 29 KB in 2-byte pieces, parsed on every piece",
        || {
            for end in (2..head.len()).step_by(2).chain([head.len()]) {
                parse(end);
            }
        },
    );
}
