//! `mock-backend PORT`: a fast HTTP/1.1 echo server with faults on demand, for demos,
//! tests and benchmarks.
//!
//! By default it answers `200` with a JSON echo of what it received (method, path, query,
//! headers, body length and FNV-1a hash, and its own port). Request headers inject faults:
//!
//! | header                        | effect                                                    |
//! |-------------------------------|-----------------------------------------------------------|
//! | `x-mock-status: 503`          | answer with this status (200–599)                         |
//! | `x-mock-delay-ms: 200`        | wait before sending the response head                     |
//! | `x-mock-body-bytes: 65536`    | a body of this many `x` bytes instead of the echo         |
//! | `x-mock-body-delay-ms: 200`   | send half the body, wait, send the rest                   |
//! | `x-mock-header: Name: value`  | add a response header (repeatable)                        |
//! | `x-mock-fault: KIND`          | see [`Fault`]                                             |
//!
//! A value it cannot honour (an unknown fault, a status outside 200–599) is answered
//! `400` with `{"mock_error":"...","value":"..."}`, never silently ignored.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use gateway::h1::{self, ChunkedDecoder, Framing, HeadLimits};
use gateway::io::{self as gio, Read};
use monoio::io::AsyncWriteRent;
use monoio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: mock-backend PORT [--workers N]   (PORT 0 picks a free port; prints 'listening on ADDR')";

/// Misbehaviours selected by `x-mock-fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Close the connection without answering.
    CloseBeforeHead,
    /// Reset (RST) the connection without answering.
    ResetBeforeHead,
    /// Never answer; keep the connection open.
    Hang,
    /// Shut down the write side without answering, keep reading.
    HalfClose,
    /// Answer with bytes that are not HTTP.
    Garbage,
    /// Send the head and half the body, then close.
    CloseMidBody,
    /// Send the head and half the body, then reset.
    ResetMidBody,
    /// No Content-Length: the body ends when the connection closes.
    NoLength,
    /// Chunked response body.
    Chunked,
    /// Both Content-Length and Transfer-Encoding (response splitting).
    ClTe,
    /// An invalid Content-Length.
    BadCl,
    /// Extra bytes after the response.
    ExtraBytes,
    /// A response head of 128 KiB.
    OversizedHead,
    /// Answer with obs-fold in a header.
    ObsFold,
    /// Send `103 Early Hints` before the response.
    EarlyHints,
}

impl Fault {
    fn parse(v: &[u8]) -> Option<Fault> {
        Some(match v {
            b"close-before-head" => Fault::CloseBeforeHead,
            b"reset-before-head" => Fault::ResetBeforeHead,
            b"hang" => Fault::Hang,
            b"half-close" => Fault::HalfClose,
            b"garbage" => Fault::Garbage,
            b"close-mid-body" => Fault::CloseMidBody,
            b"reset-mid-body" => Fault::ResetMidBody,
            b"no-length" => Fault::NoLength,
            b"chunked" => Fault::Chunked,
            b"cl-te" => Fault::ClTe,
            b"bad-cl" => Fault::BadCl,
            b"extra-bytes" => Fault::ExtraBytes,
            b"oversized-head" => Fault::OversizedHead,
            b"obs-fold" => Fault::ObsFold,
            b"early-hints" => Fault::EarlyHints,
            _ => return None,
        })
    }
}

/// What one request asked for.
struct Plan {
    status: u16,
    delay_ms: u64,
    body_bytes: Option<usize>,
    body_delay_ms: u64,
    fault: Option<Fault>,
    head_request: bool,
    keep_alive: bool,
    framing: Framing,
    /// Extra response header lines, CRLF-terminated.
    extra: Vec<u8>,
    /// A fault header we do not understand: answered 400 with this JSON body instead.
    rejected: Option<Vec<u8>>,
    /// The JSON echo, minus the body fields (filled in after the body is read).
    echo: Vec<u8>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut workers = 1usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => workers = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            p => port = p.parse().ok(),
        }
    }
    let (Some(port), 1..=64) = (port, workers) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let mut addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // One listening socket, shared by the worker threads: with SO_REUSEPORT a second
    // mock-backend started on a port in use took half its connections without a word (a
    // review).
    let first = match listener(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-backend: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    addr = first.local_addr().unwrap_or(addr);
    let mut listeners = Vec::new();
    for _ in 1..workers {
        match first.try_clone() {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("mock-backend: cannot share the listener on {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    listeners.push(first);
    println!("listening on {addr}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let port = addr.port();
            std::thread::spawn(move || {
                let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build();
                match rt {
                    Ok(mut rt) => rt.block_on(serve(l, port)),
                    Err(e) => eprintln!("mock-backend: runtime: {e}"),
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

async fn serve(l: std::net::TcpListener, port: u16) {
    let Ok(l) = TcpListener::from_std(l) else {
        return;
    };
    let port = Rc::new(port);
    loop {
        if let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            monoio::spawn(connection(s, *port));
        }
    }
}

const LONG: Duration = Duration::from_secs(3600);

async fn connection(mut s: TcpStream, port: u16) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut start = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let limits = HeadLimits {
        max_head_bytes: 1024 * 1024,
        max_headers: h1::MAX_HEADERS,
        max_target_bytes: 512 * 1024,
    };
    loop {
        // Read and parse a head.
        let mut plan = loop {
            if start < buf.len() {
                let mut headers = h1::header_slots();
                match h1::parse_request(&buf[start..], &mut headers, &limits) {
                    Ok(Some(p)) => {
                        let plan = make_plan(&p, port);
                        start += p.head_len;
                        break plan;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        out.clear();
                        let body = mock_error(&format!("{e:?}"), b"");
                        out.extend_from_slice(
                            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes(),
                        );
                        out.extend_from_slice(&body);
                        let _ = gio::write_all(&mut s, &mut out, LONG).await;
                        return;
                    }
                }
            }
            match gio::read_more(&mut s, &mut buf, &mut start, 8192, LONG).await {
                Read::Data(_) => {}
                _ => return,
            }
        };
        // Read the body, hashing it.
        let mut len = 0u64;
        let mut hash = FNV_OFFSET;
        let mut remaining = match plan.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut decoder = ChunkedDecoder::new();
        loop {
            let done = match plan.framing {
                Framing::Length(_) => {
                    let take = (buf.len() - start).min(remaining as usize);
                    fnv(&mut hash, &buf[start..start + take]);
                    len += take as u64;
                    start += take;
                    remaining -= take as u64;
                    remaining == 0
                }
                Framing::Chunked => {
                    let used = match decoder.decode(&buf[start..], |d| {
                        fnv(&mut hash, d);
                        len += d.len() as u64;
                    }) {
                        Ok(u) => u,
                        Err(_) => return,
                    };
                    start += used;
                    decoder.is_done()
                }
                _ => true,
            };
            if done {
                break;
            }
            match gio::read_more(&mut s, &mut buf, &mut start, 16 * 1024, LONG).await {
                Read::Data(_) => {}
                _ => return,
            }
        }
        plan.echo.extend_from_slice(
            format!(",\"body_len\":{len},\"body_fnv\":\"{hash:016x}\"}}\n").as_bytes(),
        );
        if !respond(&mut s, &mut out, &plan).await {
            return;
        }
        if !plan.keep_alive {
            return;
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

fn json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f | 0x7f..=0xff => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn make_plan(p: &h1::ParsedRequest<'_, '_>, port: u16) -> Plan {
    let mut plan = Plan {
        status: 200,
        delay_ms: 0,
        body_bytes: None,
        body_delay_ms: 0,
        fault: None,
        head_request: p.info.method == h1::Method::Head,
        keep_alive: p.info.keep_alive,
        framing: p.info.framing,
        extra: Vec::new(),
        rejected: None,
        echo: Vec::with_capacity(512),
    };
    let num = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let e = &mut plan.echo;
    e.extend_from_slice(
        format!(
            "{{\"port\":{port},\"method\":\"{}\",\"path\":",
            p.info.method.as_str()
        )
        .as_bytes(),
    );
    let (path, query) = p.target.split_once('?').unwrap_or((p.target, ""));
    json_str(e, path.as_bytes());
    e.extend_from_slice(b",\"query\":");
    json_str(e, query.as_bytes());
    e.extend_from_slice(b",\"headers\":[");
    for (i, h) in p.headers.iter().enumerate() {
        if i > 0 {
            e.push(b',');
        }
        e.push(b'[');
        json_str(e, h.name.as_bytes());
        e.push(b',');
        json_str(e, h.value);
        e.push(b']');
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "x-mock-status" => match num(h.value) {
                Some(n @ 200..=599) => plan.status = n as u16,
                _ => {
                    plan.rejected = Some(mock_error(
                        "x-mock-status must be a number from 200 to 599",
                        h.value,
                    ))
                }
            },
            // A value that is not a number is a 400, never ignored (a review saw
            // `x-mock-delay-ms: abc` answered at once with a 200).
            "x-mock-delay-ms" | "x-mock-body-bytes" | "x-mock-body-delay-ms" => {
                match num(h.value) {
                    Some(n) if name == "x-mock-delay-ms" => plan.delay_ms = n,
                    Some(n) if name == "x-mock-body-bytes" => plan.body_bytes = Some(n as usize),
                    Some(n) => plan.body_delay_ms = n,
                    None => {
                        plan.rejected = Some(mock_error(
                            "x-mock-delay-ms, x-mock-body-bytes and x-mock-body-delay-ms take a whole number",
                            h.value,
                        ))
                    }
                }
            }
            "x-mock-fault" => match Fault::parse(h1::trim_ows(h.value)) {
                Some(f) => plan.fault = Some(f),
                None => {
                    plan.rejected = Some(mock_error(
                        "unknown x-mock-fault (see mock-backend's documentation for the list)",
                        h.value,
                    ))
                }
            },
            // `Name: value`, with a name a response may carry; anything else would make a
            // malformed response (the gateway's 502), not the test the sender meant.
            "x-mock-header" => match h.value.iter().position(|&b| b == b':') {
                Some(colon) if colon > 0 && h.value[..colon].iter().all(|&b| h1::is_tchar(b)) => {
                    plan.extra.extend_from_slice(h.value);
                    plan.extra.extend_from_slice(b"\r\n");
                }
                _ => {
                    plan.rejected = Some(mock_error(
                        "x-mock-header must be `Name: value`",
                        h.value,
                    ))
                }
            },
            _ => {}
        }
    }
    e.push(b']');
    plan
}

/// The JSON body of the mock's own 400: `{"mock_error":"...","value":"..."}`.
fn mock_error(message: &str, value: &[u8]) -> Vec<u8> {
    let mut body = b"{\"mock_error\":".to_vec();
    json_str(&mut body, message.as_bytes());
    body.extend_from_slice(b",\"value\":");
    json_str(&mut body, value);
    body.extend_from_slice(b"}\n");
    body
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads and discards until the peer closes or `limit` passes, so a connection we never
/// answer is still released as soon as the gateway gives up on it.
async fn drain_until_close(s: &mut TcpStream, limit: Duration) {
    let end = std::time::Instant::now() + limit;
    let mut buf = Vec::with_capacity(4096);
    let mut start = 0;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match gio::read_more(s, &mut buf, &mut start, 4096, left).await {
            Read::Data(_) => start = buf.len(),
            _ => return,
        }
    }
}

/// Writes the planned response. Returns false when the connection must end.
async fn respond(s: &mut TcpStream, out: &mut Vec<u8>, plan: &Plan) -> bool {
    if let Some(body) = &plan.rejected {
        // A request the mock cannot honour is the tester's mistake: say so, never a 200.
        out.clear();
        out.extend_from_slice(
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
                body.len(),
                if plan.keep_alive { "" } else { "connection: close\r\n" }
            )
            .as_bytes(),
        );
        if !plan.head_request {
            out.extend_from_slice(body);
        }
        return gio::write_all(s, out, LONG).await.is_ok();
    }
    if plan.delay_ms > 0 {
        monoio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
    }
    match plan.fault {
        Some(Fault::CloseBeforeHead) => return false,
        Some(Fault::ResetBeforeHead) => {
            gio::set_reset_on_close(s.as_raw_fd());
            return false;
        }
        Some(Fault::Hang) => {
            drain_until_close(s, LONG).await;
            return false;
        }
        Some(Fault::HalfClose) => {
            let _ = s.shutdown().await;
            drain_until_close(s, Duration::from_secs(30)).await;
            return false;
        }
        Some(Fault::Garbage) => {
            out.clear();
            out.extend_from_slice(b"\x00\x01 this is not http \r\n\r\n");
            let _ = gio::write_all(s, out, LONG).await;
            return false;
        }
        _ => {}
    }
    let body: Vec<u8> = match plan.body_bytes {
        Some(n) => vec![b'x'; n],
        None => plan.echo.clone(),
    };
    let bodyless =
        plan.head_request || plan.status == 204 || plan.status == 304 || plan.status < 200;
    out.clear();
    if plan.fault == Some(Fault::EarlyHints) {
        out.extend_from_slice(
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
        );
    }
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", plan.status, reason(plan.status)).as_bytes(),
    );
    if plan.body_bytes.is_none() {
        out.extend_from_slice(b"content-type: application/json\r\n");
    }
    out.extend_from_slice(&plan.extra);
    match plan.fault {
        Some(Fault::NoLength) => out.extend_from_slice(b"connection: close\r\n"),
        Some(Fault::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(Fault::ClTe) => out.extend_from_slice(
            format!(
                "content-length: {}\r\ntransfer-encoding: chunked\r\n",
                body.len()
            )
            .as_bytes(),
        ),
        Some(Fault::BadCl) => out.extend_from_slice(b"content-length: +5\r\n"),
        Some(Fault::ObsFold) => out.extend_from_slice(b"x-folded: a\r\n b\r\n"),
        Some(Fault::OversizedHead) => {
            out.extend_from_slice(b"x-big: ");
            out.extend(std::iter::repeat_n(b'a', 128 * 1024));
            out.extend_from_slice(b"\r\n");
        }
        _ if plan.status == 204 || plan.status < 200 => {}
        _ => out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes()),
    }
    if !plan.keep_alive && plan.fault != Some(Fault::NoLength) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = if bodyless { &[][..] } else { &body[..] };
    let chunked = matches!(plan.fault, Some(Fault::Chunked | Fault::ClTe));
    let mid_fault = matches!(plan.fault, Some(Fault::CloseMidBody | Fault::ResetMidBody));
    let half = if plan.body_delay_ms > 0 || mid_fault {
        body.len() / 2
    } else {
        body.len()
    };
    let encode = |out: &mut Vec<u8>, data: &[u8]| {
        if chunked {
            h1::push_chunk(out, data);
        } else {
            out.extend_from_slice(data);
        }
    };
    encode(out, &body[..half]);
    let extra: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle";
    if plan.fault == Some(Fault::ExtraBytes) && half == body.len() {
        // In the same write as the response, as a backend with a wrong length would.
        out.extend_from_slice(extra);
    }
    if gio::write_all(s, out, LONG).await.is_err() {
        return false;
    }
    out.clear();
    match plan.fault {
        Some(Fault::CloseMidBody) => return false,
        Some(Fault::ResetMidBody) => {
            gio::set_reset_on_close(s.as_raw_fd());
            return false;
        }
        _ => {}
    }
    if plan.body_delay_ms > 0 {
        monoio::time::sleep(Duration::from_millis(plan.body_delay_ms)).await;
    }
    encode(out, &body[half..]);
    if chunked && !bodyless {
        out.extend_from_slice(h1::LAST_CHUNK);
    }
    if plan.fault == Some(Fault::ExtraBytes) && half < body.len() {
        out.extend_from_slice(extra);
    }
    if !out.is_empty() && gio::write_all(s, out, LONG).await.is_err() {
        return false;
    }
    plan.fault != Some(Fault::NoLength)
}
