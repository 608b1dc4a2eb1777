//! Conformance corpus: a table of raw HTTP/1.1 vectors (framing, smuggling, syntax, Host and
//! targets, limits, hop-by-hop, Expect, path tricks, both directions) run against one gateway,
//! checking the status, the close, and exactly what (if anything) reached the backend.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// A strict recording backend: splits what it receives into requests by their own framing.

/// One request as a backend received it.
#[derive(Debug, Clone)]
struct Got {
    /// Which backend connection it came on.
    #[allow(dead_code)]
    conn: usize,
    head: String,
    /// The body exactly as framed on the wire (raw chunked bytes for chunked).
    body: Vec<u8>,
}

#[derive(Default)]
struct Log {
    got: Vec<Got>,
    /// Things a backend must never see (ambiguous framing, unparseable heads).
    violations: Vec<String>,
}

struct StrictBackend {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Header values of `name` in a received head (lowercased names).
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// Length of a complete raw chunked body at the start of `b`, if it is all there.
fn chunked_len(b: &[u8]) -> Result<Option<usize>, String> {
    let mut i = 0;
    loop {
        let Some(e) = find(&b[i..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[i..i + e]).map_err(|_| "non-utf8 chunk line")?;
        let size = usize::from_str_radix(line, 16).map_err(|_| format!("chunk line {line:?}"))?;
        i += e + 2;
        if size == 0 {
            // Trailer lines until an empty one.
            loop {
                let Some(e) = find(&b[i..], b"\r\n") else {
                    return Ok(None);
                };
                i += e + 2;
                if e == 0 {
                    return Ok(Some(i));
                }
            }
        }
        if b.len() < i + size + 2 {
            return Ok(None);
        }
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        i += size + 2;
    }
}

impl StrictBackend {
    fn start() -> StrictBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log: Arc<Mutex<Log>> = Arc::default();
        let l2 = log.clone();
        let seq = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let conn = seq.fetch_add(1, Ordering::SeqCst);
                let log = l2.clone();
                std::thread::spawn(move || serve_strict(s, conn, log));
            }
        });
        StrictBackend { addr, log }
    }

    fn count(&self) -> usize {
        self.log.lock().unwrap().got.len()
    }

    fn nth(&self, i: usize) -> Got {
        self.log.lock().unwrap().got[i].clone()
    }

    fn violations(&self) -> Vec<String> {
        self.log.lock().unwrap().violations.clone()
    }
}

fn serve_strict(mut s: TcpStream, conn: usize, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        // Parse as many complete requests as are buffered.
        while let Some(he) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..he + 4]).into_owned();
            let cl = header_values(&head, "content-length");
            let te = header_values(&head, "transfer-encoding");
            let bad = |why: String| {
                log.lock()
                    .unwrap()
                    .violations
                    .push(format!("{why}: {head:?}"))
            };
            if cl.len() > 1 || te.len() > 1 || (!cl.is_empty() && !te.is_empty()) {
                bad("ambiguous framing reached the backend".into());
                return;
            }
            let body_start = he + 4;
            let body_len = if let Some(v) = cl.first() {
                match v.parse::<usize>() {
                    Ok(n) if buf.len() >= body_start + n => Some(n),
                    Ok(_) => None,
                    Err(_) => {
                        bad(format!("content-length {v:?}"));
                        return;
                    }
                }
            } else if let Some(v) = te.first() {
                if v != "chunked" {
                    bad(format!("transfer-encoding {v:?}"));
                    return;
                }
                match chunked_len(&buf[body_start..]) {
                    Ok(n) => n,
                    Err(e) => {
                        bad(e);
                        return;
                    }
                }
            } else {
                Some(0)
            };
            let Some(n) = body_len else { break };
            let body = buf[body_start..body_start + n].to_vec();
            buf.drain(..body_start + n);
            log.lock().unwrap().got.push(Got { conn, head, body });
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A scripted backend: answers by request path with fixed bytes, and tracks whether a
// connection that sent a "poisoned" response (bad framing or stray bytes) is used again.

struct Script {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Requests that arrived on a connection after a poisoned response on it.
    reused_after_poison: Arc<Mutex<Vec<String>>>,
}

/// (path, response bytes, poisons the connection)
type Reply = (&'static str, Vec<u8>, bool);

impl Script {
    fn start(replies: Vec<Reply>) -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let reused: Arc<Mutex<Vec<String>>> = Arc::default();
        let replies = Arc::new(replies);
        let (c2, r2) = (connections.clone(), reused.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                c2.fetch_add(1, Ordering::SeqCst);
                let (replies, reused) = (replies.clone(), r2.clone());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 8192];
                    let mut poisoned: Option<String> = None;
                    loop {
                        while let Some(he) = find(&buf, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..he]).into_owned();
                            buf.drain(..he + 4);
                            let path = head.split(' ').nth(1).unwrap_or("").to_string();
                            if let Some(p) = &poisoned {
                                reused.lock().unwrap().push(format!("{path} after {p}"));
                            }
                            let reply = replies.iter().find(|r| r.0 == path);
                            let (bytes, poison) = match reply {
                                Some((_, b, p)) => (b.clone(), *p),
                                None => (
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                                    false,
                                ),
                            };
                            if poison {
                                poisoned = Some(path);
                            }
                            if s.write_all(&bytes).is_err()
                                || find(&bytes, b"Connection: close").is_some()
                            {
                                return;
                            }
                        }
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                });
            }
        });
        Script {
            addr,
            connections,
            reused_after_poison: reused,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The table.

/// What the backend must receive for a forwarded vector.
#[derive(Debug, Clone)]
enum Up {
    /// Nothing reaches a backend.
    Nothing,
    /// One request without CL or TE.
    NoBody,
    /// One request with exactly `content-length: N` and this body.
    Len(Vec<u8>),
    /// One request with exactly `transfer-encoding: chunked` and these raw chunked bytes.
    Chunked(Vec<u8>),
}

#[derive(Debug, Clone)]
struct V {
    name: String,
    raw: Vec<u8>,
    status: u16,
    close: bool,
    up: Up,
    /// Exact request target the backend must see (when forwarded).
    target: Option<String>,
    /// (header, exact value) the forwarded head must carry.
    has: Vec<(String, String)>,
    /// Headers the forwarded head must not carry.
    lacks: Vec<String>,
    /// Expected `detail` of a 400.
    detail: Option<&'static str>,
    /// Expected `error` code of a gateway-made answer.
    code: Option<&'static str>,
    /// (header, exact value) the client's response must carry.
    resp_has: Vec<(String, String)>,
    /// Known gateway bug about the close: checked only by the ignored `known_bugs` test.
    close_bug: bool,
}

fn v(name: &str, raw: impl Into<Vec<u8>>, status: u16, close: bool, up: Up) -> V {
    V {
        name: name.to_string(),
        raw: raw.into(),
        status,
        close,
        up,
        target: None,
        has: Vec::new(),
        lacks: Vec::new(),
        detail: None,
        code: None,
        resp_has: Vec::new(),
        close_bug: false,
    }
}

impl V {
    fn target(mut self, t: &str) -> V {
        self.target = Some(t.to_string());
        self
    }
    fn has(mut self, n: &str, val: &str) -> V {
        self.has.push((n.to_string(), val.to_string()));
        self
    }
    fn lacks(mut self, names: &[&str]) -> V {
        self.lacks.extend(names.iter().map(|s| s.to_string()));
        self
    }
    fn detail(mut self, d: &'static str) -> V {
        self.detail = Some(d);
        self
    }
    fn code(mut self, c: &'static str) -> V {
        self.code = Some(c);
        self
    }
    fn resp_has(mut self, n: &str, val: &str) -> V {
        self.resp_has.push((n.to_string(), val.to_string()));
        self
    }
    fn close_bug(mut self) -> V {
        self.close_bug = true;
        self
    }
}

const P: &str = "/v1/proxy/svc/a";

/// A 400-and-close vector that must never reach a backend.
fn bad(name: &str, raw: impl Into<Vec<u8>>) -> V {
    v(name, raw, 400, true, Up::Nothing)
}

fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {P} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n").into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(body: &[u8]) -> Vec<u8> {
    post("Transfer-Encoding: chunked\r\n", body)
}

fn get_with(headers: &str) -> Vec<u8> {
    format!("GET {P} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n").into_bytes()
}

fn get_target(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes()
}

fn ok_get(name: &str, raw: impl Into<Vec<u8>>) -> V {
    v(name, raw, 200, false, Up::NoBody)
}

fn framing_vectors() -> Vec<V> {
    let mut t = vec![
        bad(
            "CL+TE (HAProxy vector)",
            post(
                "Content-Length: 31\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            ),
        )
        .detail("content_length_and_transfer_encoding"),
        bad(
            "TE+CL reversed order",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                b"0\r\n\r\n",
            ),
        )
        .detail("content_length_and_transfer_encoding"),
        bad(
            "CL: 0 + TE",
            post(
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
        ),
        bad(
            "CL + TE: gzip",
            post("Content-Length: 3\r\nTransfer-Encoding: gzip\r\n", b"abc"),
        ),
        bad(
            "CL + TE on GET",
            get_with("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
        ),
        bad(
            "duplicate CL differing lines",
            post("Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
        )
        .detail("invalid_content_length"),
        bad(
            "duplicate CL differing list",
            post("Content-Length: 5, 6\r\n", b"abcdef"),
        )
        .detail("invalid_content_length"),
        bad(
            "duplicate CL 0 then 5",
            post("Content-Length: 0\r\nContent-Length: 5\r\n", b"hello"),
        ),
        bad(
            "CL list with empty element",
            post("Content-Length: 5,\r\n", b"hello"),
        ),
        bad(
            "TE in HTTP/1.0",
            &b"POST /v1/proxy/svc/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        )
        .detail("transfer_encoding_in_http10"),
        bad(
            "TE twice on two lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
        ),
    ];
    for cl in [
        "+3",
        "-0",
        "-1",
        "0x10",
        "1_0",
        "3 4",
        "\x0c3",
        "",
        "99999999999999999999",
        "18446744073709551616",
        "000000000018446744073709551616",
        "1.0",
        "5a",
        "abc",
        "٣",
        "0,",
        ",5",
    ] {
        t.push(bad(
            &format!("invalid CL {cl:?}"),
            post(&format!("Content-Length: {cl}\r\n"), b"abc"),
        ));
    }
    for te in [
        "gzip",
        "chunked, gzip",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "",
        "\x08chunked",
        "chunked\x0b",
        "x-chunked",
        "chunked;q=1",
        "deflate",
        "chunked,",
    ] {
        t.push(bad(
            &format!("TE {te:?}"),
            post(&format!("Transfer-Encoding: {te}\r\n"), b"0\r\n\r\n"),
        ));
    }
    for (name, body) in [
        ("chunk-size 0x5", &b"0x5\r\nhello\r\n0\r\n\r\n"[..]),
        ("chunk-size _", b"_\r\nx\r\n0\r\n\r\n"),
        ("chunk-size leading SP", b" 5\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk-size trailing SP (BWS must precede ;)",
            b"5 \r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk-size -1", b"-1\r\nx\r\n0\r\n\r\n"),
        ("chunk-size bare ;", b";\r\nx\r\n0\r\n\r\n"),
        ("chunk-size empty", b"\r\nx\r\n0\r\n\r\n"),
        (
            "chunk-size overflow FFFFFFFFFFFFFFFF0",
            b"FFFFFFFFFFFFFFFF0\r\nx\r\n0\r\n\r\n",
        ),
        ("chunk-size +5", b"+5\r\nhello\r\n0\r\n\r\n"),
        ("chunk data too long", b"5\r\nhelloXX0\r\n\r\n"),
        ("chunk data too short", b"3\r\nhello\r\n0\r\n\r\n"),
        ("chunk data CR only", b"5\r\nhello\r0\r\n\r\n"),
        ("chunk data LF only", b"5\r\nhello\n0\r\n\r\n"),
        ("chunk line bare LF", b"5\nhello\r\n0\r\n\r\n"),
        ("chunk line bare CR", b"5\rhello\r\n0\r\n\r\n"),
        ("last chunk bare LFs (0\\n\\n)", b"0\n\n"),
        ("final CRLF bare LF", b"5\r\nhello\r\n0\r\n\n"),
        ("NUL in chunk extension", b"3;a\0b\r\nabc\r\n0\r\n\r\n"),
        ("LF in chunk extension", b"3;a\nb\r\nabc\r\n0\r\n\r\n"),
        ("trailer with bare LF", b"0\r\nX-T: 1\n\r\n"),
        ("trailer line with bare CR", b"0\r\nX-T: 1\r\r\n\r\n"),
        ("trailer with invalid name", b"0\r\n[x]: 1\r\n\r\n"),
        ("trailer with NUL", b"0\r\nX-T: a\0b\r\n\r\n"),
        ("trailer starting with SP", b"0\r\n X-T: 1\r\n\r\n"),
        // RFC 9112 §7.1.1: chunk-ext-name is a token, chunk-ext-val a token or a complete
        // quoted-string, BWS only before `;` and `=` (Http11Probe, HTTP Garden).
        (
            "chunk extension with empty name (5;)",
            b"5;\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension with empty name after BWS",
            b"5 ; \r\nhello\r\n0\r\n\r\n",
        ),
        (
            "last chunk with empty extension (0;)",
            b"5\r\nhello\r\n0;\r\n\r\n",
        ),
        (
            "chunk extension unterminated quoted string",
            b"5;a=\"x\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension quote left open by \\\"",
            b"5;a=\"x\\\"\r\nhello\r\n0\r\n\r\n",
        ),
        ("chunk extension empty value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
        (
            "chunk extension value then junk",
            b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension name with space inside",
            b"5;a b\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extension control byte in quotes",
            b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk-size then BWS then junk",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ),
        // A trailer line is a field line: name, colon, value.
        (
            "trailer line without colon",
            b"5\r\nhello\r\n0\r\nNoColon\r\n\r\n",
        ),
        (
            "trailer line without colon after a good one",
            b"0\r\nX-T: 1\r\nNoColon\r\n\r\n",
        ),
        ("trailer with SP before colon", b"0\r\nX-T : 1\r\n\r\n"),
        ("trailer with control byte", b"0\r\nX-T: a\x01b\r\n\r\n"),
    ] {
        t.push(bad(name, chunked(body)));
    }
    let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(5000));
    t.push(bad(
        "chunk extension over 4 KiB",
        chunked(long_ext.as_bytes()),
    ));
    let endless_zeros = format!("{}1\r\nx\r\n0\r\n\r\n", "0".repeat(5000));
    t.push(bad(
        "chunk-size line of zeros over 4 KiB",
        chunked(endless_zeros.as_bytes()),
    ));
    for (name, body) in [
        (
            "chunk-size overflow behind leading zeros",
            &b"00000000000000000000FFFFFFFFFFFFFFFF0\r\nx\r\n0\r\n\r\n"[..],
        ),
        (
            "chunk-size 17 significant digits",
            b"10000000000000000\r\nx\r\n0\r\n\r\n",
        ),
    ] {
        t.push(bad(name, chunked(body)).detail("chunk_size_overflow"));
    }
    // Accepted chunked bodies, re-chunked by the gateway (extensions, trailers dropped).
    let fwd = |name: &str, body: &[u8], want: &[u8]| {
        v(name, chunked(body), 200, false, Up::Chunked(want.to_vec())).lacks(&["trailer", "x-t"])
    };
    t.extend([
        fwd(
            // Small chunks that arrive together go out as one (`h1::ChunkRun`).
            "chunked two chunks",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"b\r\nhello world\r\n0\r\n\r\n",
        ),
        fwd("chunked empty body", b"0\r\n\r\n", b"0\r\n\r\n"),
        fwd(
            "chunk extension dropped",
            b"5;name=value\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "quoted chunk extension dropped",
            b"5;a=\"b c\"\r\nhello\r\n0;z\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "uppercase hex re-encoded lowercase",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"a\r\n0123456789\r\n0\r\n\r\n",
        ),
        fwd(
            "leading zeros normalised",
            b"0005\r\nhello\r\n000\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "24-digit chunk-size with leading zeros accepted",
            b"000000000000000000000005\r\nhello\r\n00000000000000000000000\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "token chunk extension 5;a=b",
            b"5;a=b\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "quoted-pair chunk extension 5;a=\"q\\\"x\"",
            b"5;a=\"q\\\"x\"\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "BWS before ; (5 ;a=b)",
            b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "HTAB BWS around ; and = (5\\t;\\ta\\t=\\tb)",
            b"5\t;\ta\t=\tb\r\nhello\r\n0 ;z\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "several extensions, valueless and empty quoted",
            b"5;a;b=\"\";c=d\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "empty trailer value dropped",
            b"5\r\nhello\r\n0\r\nX-T:\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "trailer dropped",
            b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "CL in trailer ignored",
            b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "TE in trailer ignored",
            b"5\r\nhello\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "Host in trailer ignored",
            b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
        ),
        fwd(
            "many small chunks",
            b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
        fwd(
            "binary chunk data with CRLF inside",
            b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
            b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
        ),
        v(
            "TE Chunked (case-insensitive)",
            post("Transfer-Encoding: Chunked\r\n", b"2\r\nhi\r\n0\r\n\r\n"),
            200,
            false,
            Up::Chunked(b"2\r\nhi\r\n0\r\n\r\n".to_vec()),
        ),
        v(
            "TE CHUNKED with OWS",
            post("Transfer-Encoding:  CHUNKED \r\n", b"2\r\nhi\r\n0\r\n\r\n"),
            200,
            false,
            Up::Chunked(b"2\r\nhi\r\n0\r\n\r\n".to_vec()),
        ),
        v(
            "TE: chunked + Connection: Transfer-Encoding",
            post(
                "Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n",
                b"2\r\nhi\r\n0\r\n\r\n",
            ),
            200,
            false,
            Up::Chunked(b"2\r\nhi\r\n0\r\n\r\n".to_vec()),
        ),
    ]);
    // Content-Length bodies keep their length.
    t.extend([
        v(
            "CL body",
            post("Content-Length: 5\r\n", b"hello"),
            200,
            false,
            Up::Len(b"hello".to_vec()),
        )
        .has("content-length", "5"),
        v(
            "identical duplicate CL lines collapse",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
            200,
            false,
            Up::Len(b"hello".to_vec()),
        ),
        v(
            "identical duplicate CL list collapses",
            post("Content-Length: 5, 5\r\n", b"hello"),
            200,
            false,
            Up::Len(b"hello".to_vec()),
        ),
        v(
            "CL with leading zeros",
            post("Content-Length: 005\r\n", b"hello"),
            200,
            false,
            Up::Len(b"hello".to_vec()),
        )
        .has("content-length", "5"),
        v(
            "CL with 28 digits, leading zeros",
            post("Content-Length: 0000000000000000000000000001\r\n", b"h"),
            200,
            false,
            Up::Len(b"h".to_vec()),
        )
        .has("content-length", "1"),
        v(
            "CL of only zeros",
            post(&format!("Content-Length: {}\r\n", "0".repeat(40)), b""),
            200,
            false,
            Up::Len(Vec::new()),
        )
        .has("content-length", "0"),
        v(
            "CL with OWS",
            post("Content-Length:\t5 \r\n", b"hello"),
            200,
            false,
            Up::Len(b"hello".to_vec()),
        ),
        v(
            "CL: 0 on POST",
            post("Content-Length: 0\r\n", b""),
            200,
            false,
            Up::Len(Vec::new()),
        )
        .has("content-length", "0"),
        v(
            "POST without a body states CL 0",
            post("", b""),
            200,
            false,
            Up::Len(Vec::new()),
        )
        .has("content-length", "0"),
        v(
            "CL body at the limit",
            post("Content-Length: 1000\r\n", &[b'z'; 1000]),
            200,
            false,
            Up::Len(vec![b'z'; 1000]),
        ),
        v(
            "CL body with Connection: Content-Length",
            post(
                "Content-Length: 5\r\nConnection: Content-Length\r\n",
                b"hello",
            ),
            200,
            false,
            Up::Len(b"hello".to_vec()),
        ),
        v(
            "GET with CL body",
            format!("GET {P} HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"),
            200,
            false,
            Up::Len(b"abc".to_vec()),
        ),
        v(
            "CL body with binary bytes",
            post("Content-Length: 4\r\n", b"\0\r\n\xff"),
            200,
            false,
            Up::Len(b"\0\r\n\xff".to_vec()),
        ),
    ]);
    t
}

fn syntax_vectors() -> Vec<V> {
    let mut t = vec![
        bad("SP before colon", get_with("Host2 : x\r\n")).detail("invalid_header_name"),
        bad(
            "SP before colon on Host",
            format!("GET {P} HTTP/1.1\r\nHost : gw\r\n\r\n"),
        ),
        bad(
            "HTAB before colon on CL",
            post("Content-Length\t: 5\r\n", b"hello"),
        ),
        bad(
            "SP before colon on TE",
            post("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
        ),
        bad(
            "whitespace-led first field line",
            format!("GET {P} HTTP/1.1\r\n Host: gw\r\n\r\n"),
        ),
        bad(
            "tab-led first field line",
            format!("GET {P} HTTP/1.1\r\n\tX: y\r\nHost: gw\r\n\r\n"),
        ),
        bad("obs-fold (SP)", get_with("X-A: b\r\n c\r\n")),
        bad("obs-fold (HTAB)", get_with("X-A: b\r\n\tc\r\n")),
        bad(
            "obs-fold continuing CL",
            post("Content-Length: 5\r\n 0\r\n", b"hello"),
        ),
        bad(
            "bare LF line endings",
            format!("GET {P} HTTP/1.1\nHost: gw\n\n"),
        )
        .detail("bare_cr_or_lf"),
        bad(
            "one bare LF header line",
            format!("GET {P} HTTP/1.1\r\nHost: gw\nX: y\r\n\r\n"),
        ),
        bad(
            "bare LF request line",
            format!("GET {P} HTTP/1.1\nHost: gw\r\n\r\n"),
        ),
        bad("bare CR in value", get_with("X-A: b\rc\r\n")),
        bad(
            "bare CR ending a line",
            format!("GET {P} HTTP/1.1\r\nHost: gw\r\r\n\r\n"),
        ),
        bad("NUL in value", get_with("X-A: b\0c\r\n")),
        bad("NUL in name", get_with("X\0A: b\r\n")),
        bad("[ in name", get_with("X[A]: b\r\n")),
        bad(
            "0x80 in name",
            &[
                format!("GET {P} HTTP/1.1\r\nHost: gw\r\nX").as_bytes(),
                b"\x80A: b\r\n\r\n",
            ]
            .concat()[..],
        ),
        bad(
            "0xff in name",
            &[
                format!("GET {P} HTTP/1.1\r\nHost: gw\r\n").as_bytes(),
                b"\xff: b\r\n\r\n",
            ]
            .concat()[..],
        ),
        bad("empty field name", get_with(": b\r\n")),
        bad("missing colon", get_with("NoColon\r\n")),
        bad("quote in name", get_with("X\"A: b\r\n")),
        // RFC 9110 §9.1: methods are case-sensitive, so `gET` is a method we do not know.
        v(
            "mixed-case method gET is 501",
            format!("gET {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            501,
            true,
            Up::Nothing,
        )
        .code("not_implemented"),
        v(
            "lowercase method get is 501",
            format!("get {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            501,
            true,
            Up::Nothing,
        )
        .code("not_implemented"),
        bad(
            "method that is no token",
            format!("G(T {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        )
        .detail("invalid_method"),
        bad(
            "version HTP/1.1",
            format!("GET {P} HTP/1.1\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "version HTTP/11.1",
            format!("GET {P} HTTP/11.1\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "version HTTP/1.32",
            format!("GET {P} HTTP/1.32\r\nHost: gw\r\n\r\n"),
        ),
        // RFC 9112 §2.3, as NGINX reads it (it was a 400).
        ok_get(
            "version HTTP/1.2 is read as 1.1",
            format!("GET {P} HTTP/1.2\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "version http/1.1",
            format!("GET {P} http/1.1\r\nHost: gw\r\n\r\n"),
        ),
        // RFC 9110 §15.6.6, as NGINX answers it (it was a 400: an operator review).
        v(
            "version HTTP/2.0 is 505",
            format!("GET {P} HTTP/2.0\r\nHost: gw\r\n\r\n"),
            505,
            true,
            Up::Nothing,
        )
        .code("http_version_not_supported"),
        v(
            "version HTTP/3.0 is 505",
            format!("GET {P} HTTP/3.0\r\nHost: gw\r\n\r\n"),
            505,
            true,
            Up::Nothing,
        )
        .code("http_version_not_supported"),
        bad(
            "version HTTP/2.0 after a target with a space",
            format!("GET {P} x HTTP/2.0\r\nHost: gw\r\n\r\n"),
        ),
        v(
            "version HTTP/0.9 is 505",
            format!("GET {P} HTTP/0.9\r\nHost: gw\r\n\r\n"),
            505,
            true,
            Up::Nothing,
        )
        .code("http_version_not_supported"),
        bad(
            "version HTTP/1",
            format!("GET {P} HTTP/1\r\nHost: gw\r\n\r\n"),
        ),
        bad("missing version", format!("GET {P}\r\nHost: gw\r\n\r\n")),
        bad(
            "SP inside target",
            format!("GET {P} b HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "two SP after method",
            format!("GET  {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "HTAB separator",
            format!("GET\t{P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "trailing SP after version",
            format!("GET {P} HTTP/1.1 \r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "fragment in target",
            format!("GET {P}#frag HTTP/1.1\r\nHost: gw\r\n\r\n"),
        )
        .detail("fragment_in_target"),
        bad(
            "NUL in target",
            &[b"GET /v1/proxy/svc/a\0b HTTP/1.1\r\nHost: gw\r\n\r\n"[..].to_vec()].concat()[..],
        ),
        bad(
            "DEL in target",
            &b"GET /v1/proxy/svc/a\x7fb HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
        ),
        ok_get(
            "several leading CRLFs are ignored (RFC 9112 2.2 allows it)",
            format!("\r\n\r\nGET {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ),
        v(
            "TRACE is 405",
            format!("TRACE {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            405,
            true,
            Up::Nothing,
        )
        .code("method_not_allowed")
        .resp_has("allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        v(
            "unknown method FOO is 501",
            format!("FOO {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            501,
            true,
            Up::Nothing,
        )
        .code("not_implemented"),
        v(
            "unknown method with a body is 501",
            format!("FOO {P} HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"),
            501,
            true,
            Up::Nothing,
        )
        .code("not_implemented"),
        v(
            "PROPFIND (not ours) is 501",
            format!("PROPFIND {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            501,
            true,
            Up::Nothing,
        )
        .code("not_implemented"),
        ok_get(
            "one leading CRLF is ignored",
            format!("\r\nGET {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        )
        .target("/a"),
        ok_get(
            "obs-text in a value is forwarded",
            &[
                format!("GET {P} HTTP/1.1\r\nHost: gw\r\nX-O: caf").as_bytes(),
                b"\xe9\r\n\r\n",
            ]
            .concat()[..],
        ),
        ok_get("HTAB inside a value is kept", get_with("X-T: a\tb\r\n")).has("x-t", "a\tb"),
        ok_get(
            "unusual tchar field name",
            get_with("X!#$%&'*+-.^_`|~: v\r\n"),
        )
        .has("x!#$%&'*+-.^_`|~", "v"),
        v(
            "HTTP/1.0 without Host",
            format!("GET {P} HTTP/1.0\r\n\r\n"),
            200,
            true,
            Up::NoBody,
        ),
        v(
            "HTTP/1.0 keep-alive",
            format!("GET {P} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
            200,
            false,
            Up::NoBody,
        ),
        v(
            "DELETE forwarded",
            format!("DELETE {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            200,
            false,
            Up::NoBody,
        ),
        v(
            "OPTIONS forwarded",
            format!("OPTIONS {P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
            200,
            false,
            Up::NoBody,
        ),
        v(
            "PUT forwarded",
            format!("PUT {P} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi"),
            200,
            false,
            Up::Len(b"hi".to_vec()),
        ),
        v(
            "PATCH forwarded",
            format!("PATCH {P} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi"),
            200,
            false,
            Up::Len(b"hi".to_vec()),
        ),
    ];
    t.push(v(
        "Connection: close closes",
        get_with("Connection: close\r\n"),
        200,
        true,
        Up::NoBody,
    ));
    t
}

fn host_vectors() -> Vec<V> {
    vec![
        bad("missing Host", format!("GET {P} HTTP/1.1\r\n\r\n")).detail("missing_host"),
        bad(
            "duplicate identical Host",
            format!("GET {P} HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n"),
        )
        .detail("duplicate_host"),
        bad(
            "duplicate different Host",
            format!("GET {P} HTTP/1.1\r\nHost: gw\r\nHost: evil\r\n\r\n"),
        ),
        bad(
            "duplicate Host in HTTP/1.0",
            format!("GET {P} HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
        ),
        bad("empty Host", format!("GET {P} HTTP/1.1\r\nHost: \r\n\r\n")),
        bad("Host a@b", format!("GET {P} HTTP/1.1\r\nHost: a@b\r\n\r\n")).detail("invalid_host"),
        bad("Host a/b", format!("GET {P} HTTP/1.1\r\nHost: a/b\r\n\r\n")),
        bad("Host a,b", format!("GET {P} HTTP/1.1\r\nHost: a,b\r\n\r\n")),
        bad("Host a b", format!("GET {P} HTTP/1.1\r\nHost: a b\r\n\r\n")),
        bad(
            "Host with backslash",
            format!("GET {P} HTTP/1.1\r\nHost: a\\b\r\n\r\n"),
        ),
        bad(
            "Host with quote",
            format!("GET {P} HTTP/1.1\r\nHost: a\"b\r\n\r\n"),
        ),
        ok_get(
            "Host with port",
            format!("GET {P} HTTP/1.1\r\nHost: gw:8000\r\n\r\n"),
        )
        .has("x-forwarded-host", "gw:8000"),
        ok_get(
            "Host IPv6 literal",
            format!("GET {P} HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
        )
        .has("x-forwarded-host", "[::1]:80"),
        ok_get(
            "absolute-form uses its authority",
            format!("GET http://front.example{P}?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"),
        )
        .target("/a?q=1")
        .has("x-forwarded-host", "front.example"),
        ok_get(
            "absolute-form scheme case-insensitive",
            format!("GET HTTP://front.example{P} HTTP/1.1\r\nHost: other\r\n\r\n"),
        )
        .target("/a"),
        bad(
            "absolute-form without Host",
            format!("GET http://front.example{P} HTTP/1.1\r\n\r\n"),
        ),
        bad(
            "absolute-form with userinfo",
            format!("GET http://u@front.example{P} HTTP/1.1\r\nHost: front.example\r\n\r\n"),
        ),
        bad(
            "absolute-form ftp scheme",
            format!("GET ftp://front.example{P} HTTP/1.1\r\nHost: front.example\r\n\r\n"),
        ),
        bad(
            "absolute-form empty authority",
            format!("GET http://{P} HTTP/1.1\r\nHost: gw\r\n\r\n"),
        ),
        bad(
            "absolute-form without path",
            "GET http://front.example HTTP/1.1\r\nHost: gw\r\n\r\n",
        ),
        v(
            "CONNECT authority-form is 405",
            "CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n",
            405,
            true,
            Up::Nothing,
        ),
        // RFC 9112 §3.2.4: asterisk-form asks about the server; the gateway answers itself.
        v(
            "OPTIONS * answered by the gateway, kept alive",
            "OPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\n",
            204,
            false,
            Up::Nothing,
        )
        .resp_has("allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),
        v(
            "OPTIONS * with Connection: close",
            "OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
            204,
            true,
            Up::Nothing,
        )
        .resp_has("connection", "close"),
        v(
            "OPTIONS * HTTP/1.0 closes",
            "OPTIONS * HTTP/1.0\r\n\r\n",
            204,
            true,
            Up::Nothing,
        ),
        v(
            "OPTIONS * HTTP/1.0 keep-alive",
            "OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            204,
            false,
            Up::Nothing,
        )
        .resp_has("connection", "keep-alive"),
        v(
            "OPTIONS * with a body answers and closes (body unread)",
            "OPTIONS * HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello",
            204,
            true,
            Up::Nothing,
        ),
        bad("OPTIONS * without Host", "OPTIONS * HTTP/1.1\r\n\r\n").detail("missing_host"),
        bad(
            "OPTIONS *x is refused",
            "OPTIONS *x HTTP/1.1\r\nHost: gw\r\n\r\n",
        ),
        bad("GET * is refused", "GET * HTTP/1.1\r\nHost: gw\r\n\r\n")
            .detail("unsupported_target_form"),
        bad(
            "POST * is refused",
            "POST * HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
        ),
        bad(
            "authority-form with GET",
            "GET gw:80 HTTP/1.1\r\nHost: gw\r\n\r\n",
        ),
        bad(
            "relative target without slash",
            "GET v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\n\r\n",
        ),
        ok_get("outbound Host is the backend's", get_with("")).lacks(&["expect"]),
    ]
}

fn limit_vectors() -> Vec<V> {
    let long_target = format!("/v1/proxy/svc/{}", "a".repeat(1100));
    let ok_target = format!("/v1/proxy/svc/{}", "a".repeat(990));
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    let fine: String = (0..19).map(|i| format!("X-H{i}: v\r\n")).collect();
    vec![
        v(
            "target over limit is 414",
            get_target(&long_target),
            414,
            true,
            Up::Nothing,
        ),
        v(
            "target far over the head limit is 414",
            get_target(&format!("/v1/proxy/svc/{}", "b".repeat(6000))),
            414,
            true,
            Up::Nothing,
        ),
        ok_get("target just under the limit", get_target(&ok_target))
            .target(&ok_target["/v1/proxy/svc".len()..]),
        v(
            "one huge header is 431",
            get_with(&format!("X-Big: {}\r\n", "b".repeat(5000))),
            431,
            true,
            Up::Nothing,
        ),
        v(
            "too many headers is 431",
            get_with(&many),
            431,
            true,
            Up::Nothing,
        ),
        ok_get("header count at the limit", get_with(&fine)),
        v(
            "CL over the body limit is 413",
            post("Content-Length: 1001\r\n", &[b'z'; 1001]),
            413,
            true,
            Up::Nothing,
        ),
        v(
            "huge CL is 413",
            post("Content-Length: 9999999999\r\n", b"z"),
            413,
            true,
            Up::Nothing,
        ),
        v(
            "chunk over the body limit is 413",
            chunked(format!("{:x}\r\n{}\r\n0\r\n\r\n", 1001, "z".repeat(1001)).as_bytes()),
            413,
            true,
            Up::Nothing,
        ),
        v(
            "chunks adding up over the limit are 413",
            chunked(
                format!(
                    "258\r\n{}\r\n258\r\n{}\r\n0\r\n\r\n",
                    "z".repeat(600),
                    "z".repeat(600)
                )
                .as_bytes(),
            ),
            413,
            true,
            Up::Nothing,
        ),
        v(
            "chunk-size 100000005 (Bun truncation) is 413",
            chunked(b"100000005\r\nhello\r\n0\r\n\r\n"),
            413,
            true,
            Up::Nothing,
        ),
    ]
}

fn hop_vectors() -> Vec<V> {
    vec![
        ok_get("Connection-listed field removed", get_with("Connection: x-secret\r\nX-Secret: 1\r\n")).lacks(&["x-secret", "connection"]),
        ok_get("Connection list of several", get_with("Connection: x-a, x-b\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n")).lacks(&["x-a", "x-b"]).has("x-c", "3"),
        ok_get("Keep-Alive removed", get_with("Keep-Alive: timeout=5\r\n")).lacks(&["keep-alive"]),
        ok_get("Proxy-Connection removed", get_with("Proxy-Connection: keep-alive\r\n")).lacks(&["proxy-connection"]),
        ok_get("TE removed", get_with("TE: trailers\r\n")).lacks(&["te"]),
        ok_get("Trailer removed", get_with("Trailer: X-T\r\n")).lacks(&["trailer"]),
        ok_get("Upgrade removed", get_with("Connection: Upgrade\r\nUpgrade: websocket\r\n")).lacks(&["upgrade", "connection"]),
        ok_get("Proxy-Authorization removed", get_with("Proxy-Authorization: Basic eDp5\r\n")).lacks(&["proxy-authorization"]),
        ok_get("Connection: Host cannot remove Host", get_with("Connection: Host\r\n")).lacks(&["connection"]),
        ok_get("Connection: Via cannot remove ours", get_with("Connection: Via\r\nVia: 1.1 evil\r\n")).has("via", "1.1 gateway"),
        ok_get("Connection: X-Forwarded-Proto cannot remove ours", get_with("Connection: X-Forwarded-Proto\r\n")).has("x-forwarded-proto", "http"),
        ok_get("client X-Forwarded-Proto replaced", get_with("X-Forwarded-Proto: https\r\n")).has("x-forwarded-proto", "http"),
        ok_get("client X-Forwarded-Host replaced", get_with("X-Forwarded-Host: evil\r\n")).has("x-forwarded-host", "gw"),
        ok_get("client X-Forwarded-Prefix replaced", get_with("X-Forwarded-Prefix: /evil\r\n")).has("x-forwarded-prefix", "/v1/proxy/svc"),
        ok_get("Connection: X-Forwarded-Prefix cannot remove ours", get_with("Connection: X-Forwarded-Prefix\r\n")).has("x-forwarded-prefix", "/v1/proxy/svc"),
        ok_get("client X-Forwarded-For appended", get_with("X-Forwarded-For: 1.2.3.4\r\n")).has("x-forwarded-for", "1.2.3.4, 127.0.0.1"),
        ok_get("client Via appended", get_with("Via: 1.0 edge\r\n")).has("via", "1.0 edge, 1.1 gateway"),
        // Regression (a review): `2.2.2.2,` then ours was `2.2.2.2,, 127.0.0.1`, an empty
        // element a sender must not write (RFC 9110 §5.6.1).
        ok_get("no empty element at the ends of a client's X-Forwarded-For", get_with("X-Forwarded-For: ,2.2.2.2, \r\n")).has("x-forwarded-for", "2.2.2.2, 127.0.0.1"),
        ok_get("no empty element after a client's Via", get_with("Via: 1.0 a,\r\n")).has("via", "1.0 a, 1.1 gateway"),
        ok_get("an X-Forwarded-For of commas only is no list", get_with("X-Forwarded-For: , ,\r\n")).has("x-forwarded-for", "127.0.0.1"),
        // Regression (a review): fields in which frameworks read an edge proxy's word
        // undid ours; only a trusted proxy may send them (`tests/proxy.rs`).
        ok_get("edge fields from a client dropped", get_with("Forwarded: host=evil;proto=https\r\nX-Forwarded-Port: 1337\r\nX-Forwarded-Ssl: on\r\nFront-End-Https: on\r\nX-Original-URL: /admin\r\n"))
            .lacks(&["forwarded", "x-forwarded-port", "x-forwarded-ssl", "front-end-https", "x-original-url"]).has("x-forwarded-proto", "http"),
        ok_get("client address and certificate claims from a client dropped", get_with("Client-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nX-Forwarded-Client-Cert: Hash=1\r\nX-ARR-ClientCert: MIIB\r\n"))
            .lacks(&["client-ip", "true-client-ip", "x-client-ip", "x-forwarded-client-cert", "x-arr-clientcert"]),
        ok_get("Connection: X-Forwarded-For drops the client's list", get_with("Connection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n")).has("x-forwarded-for", "127.0.0.1"),
        v("abuse: Connection: close, X-Forwarded-For, Host, Content-Length",
          post("Connection: close, X-Forwarded-For, Host, Content-Length\r\nX-Forwarded-For: 6.6.6.6\r\nContent-Length: 5\r\n", b"hello"),
          200, true, Up::Len(b"hello".to_vec()))
            .has("x-forwarded-for", "127.0.0.1").has("content-length", "5").has("via", "1.1 gateway"),
        ok_get("Expect not forwarded", get_with("Expect: 100-continue\r\n")).lacks(&["expect"]),
        // A CGI/WSGI backend maps `_` to `-` (HTTP_TRANSFER_ENCODING): such aliases of
        // framing and hop-by-hop fields never reach it; other underscore fields do.
        ok_get("Transfer_Encoding dropped", get_with("Transfer_Encoding: chunked\r\n")).lacks(&["transfer_encoding", "transfer-encoding"]),
        v("Content_Length dropped, real CL kept",
          post("Content-Length: 5\r\nContent_Length: 50\r\n", b"hello"),
          200, false, Up::Len(b"hello".to_vec()))
            .lacks(&["content_length"]).has("content-length", "5"),
        ok_get("CONTENT_LENGTH dropped on GET", get_with("CONTENT_LENGTH: 5\r\n")).lacks(&["content_length", "content-length"]),
        ok_get("Keep_Alive dropped", get_with("Keep_Alive: timeout=5\r\n")).lacks(&["keep_alive"]),
        ok_get("Proxy_Connection dropped", get_with("Proxy_Connection: close\r\n")).lacks(&["proxy_connection"]),
        ok_get("Proxy_Authorization dropped", get_with("Proxy_Authorization: Basic eDp5\r\n")).lacks(&["proxy_authorization"]),
        // Regression (a review): aliases of the forwarding fields we write reached the
        // backend beside ours, where a CGI backend reads them as ours.
        ok_get("X_Forwarded_* aliases dropped", get_with("X_Forwarded_Proto: https\r\nX_Forwarded_For: 6.6.6.6\r\nx_forwarded_host: evil\r\n"))
            .lacks(&["x_forwarded_proto", "x_forwarded_for", "x_forwarded_host"]).has("x-forwarded-proto", "http").has("x-forwarded-for", "127.0.0.1"),
        ok_get("other underscore fields forwarded", get_with("X_Custom: 1\r\nContent_Type_X: 2\r\n")).has("x_custom", "1").has("content_type_x", "2"),
    ]
}

fn expect_vectors() -> Vec<V> {
    vec![
        v("Expect: 100-continue with the body in hand", post("Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello"), 200, false, Up::Len(b"hello".to_vec())).lacks(&["expect"]),
        v("Expect: 100-continue chunked in hand", post("Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n", b"2\r\nhi\r\n0\r\n\r\n"), 200, false, Up::Chunked(b"2\r\nhi\r\n0\r\n\r\n".to_vec())).lacks(&["expect"]),
        v("unknown expectation is 417", post("Expect: teapot\r\nContent-Length: 1\r\n", b"x"), 417, true, Up::Nothing),
        v("Expect: 100-continue, x is 417", post("Expect: 100-continue, x\r\nContent-Length: 1\r\n", b"x"), 417, true, Up::Nothing),
        v("Expect to an unknown service answers at once and closes", "POST /v1/proxy/nope/a HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", 404, true, Up::Nothing),
    ]
}

fn path_vectors() -> Vec<V> {
    let mut t = Vec::new();
    for p in [
        "/v1/proxy/../admin",
        "/v1/proxy/%2e%2e/x",
        "/v1/proxy/%2E%2E/x",
        "/v1/proxy/a%2f..%2fb/x",
        "/v1/proxy//svc",
        "/v1/proxy/SVC/",
        "/v1/proxy/svc;x=1/",
        "/v1/proxy/svc\\..\\b",
        "/v1/proxy/svc%00/",
        "/v1/proxy/%c0%ae/x",
        "/v1/proxy/sv%63/a",
        "/v1/proxy/-svc/a",
        "/v1/proxy/./svc",
        "/v1/proxy/.svc/a",
        "/v1/proxy/svc%2fa",
        "/v1/proxy/svc%5ca",
        "/v1/proxy/nope/a",
        "/v1/proxy/svc.evil/a",
        "/v1/proxy/svc@x/a",
    ] {
        t.push(v(
            &format!("service segment {p}"),
            get_target(p),
            404,
            false,
            Up::Nothing,
        ));
    }
    for p in [
        "/",
        "/v1/proxy",
        "/v1/proxyx/svc/a",
        "/V1/proxy/svc/a",
        "/v1//proxy/svc/a",
        "/v1/proxy%2fsvc/a",
    ] {
        t.push(v(
            &format!("route {p}"),
            get_target(p),
            404,
            false,
            Up::Nothing,
        ));
    }
    for p in [
        "/v1/proxy/svc/../../b",
        "/v1/proxy/svc/%2e%2e/x",
        "/v1/proxy/svc/.%2E/x",
        "/v1/proxy/svc/.",
        "/v1/proxy/svc/%2e",
        "/v1/proxy/svc/x%00",
        "/v1/proxy/svc/a\\b",
        "/v1/proxy/svc/%5c",
        "/v1/proxy/svc/x%2fy",
        "/v1/proxy/svc/a/./b",
        "/v1/proxy/svc/..",
        "/v1/proxy/svc/..;/other/secret",
        "/v1/proxy/svc/x/..;jsessionid=1/..;/admin",
        "/v1/proxy/svc/%252e%252e/x",
        "/v1/proxy/svc/%c0%ae%c0%ae/x",
        "/v1/proxy/svc/%u002e%u002e/x",
        // A network-path reference to a URL parser (`//host/x`): a review.
        "/v1/proxy/svc//evil.example/x",
    ] {
        t.push(
            bad(&format!("unsafe rest {p}"), get_target(p))
                .detail("unsafe_path")
                .close_bug(),
        );
    }
    for (p, want) in [
        ("/v1/proxy/svc/file.txt?p=../x", "/file.txt?p=../x"),
        ("/v1/proxy/svc/.well-known/x", "/.well-known/x"),
        ("/v1/proxy/svc", "/"),
        ("/v1/proxy/svc?q=1", "/?q=1"),
        ("/v1/proxy/svc/a//b", "/a//b"),
        ("/v1/proxy/svc/%41%42", "/%41%42"),
        ("/v1/proxy/svc/a..b/c", "/a..b/c"),
    ] {
        t.push(ok_get(&format!("forwarded as routed {p}"), get_target(p)).target(want));
    }
    t
}

// ---------------------------------------------------------------------------------------
// Running a vector.

/// Reads the final response (skipping 1xx); `None` if the connection ended first.
fn final_response(c: &mut Client, head: bool) -> Option<Response> {
    loop {
        let r = c.try_read_response(head).ok()?;
        if r.status >= 200 {
            return Some(r);
        }
    }
}

/// Runs one vector on a fresh connection; returns failure messages.
/// `strict`: also check the close of vectors marked `close_bug`.
fn run(g: SocketAddr, rec: &StrictBackend, t: &V, strict: bool) -> Vec<String> {
    let mut fails = Vec::new();
    let before = rec.count();
    let mut c = Client::connect(g);
    c.send(&t.raw);
    let r = final_response(&mut c, t.raw.starts_with(b"HEAD "));
    let status = r.as_ref().map_or(0, |r| r.status);
    if status != t.status {
        fails.push(format!("status {status}, want {}", t.status));
    }
    if let (Some(d), Some(r)) = (t.detail, &r) {
        if status == 400 && r.json()["detail"] != d {
            fails.push(format!("detail {}, want {d}", r.json()["detail"]));
        }
    }
    if let (Some(code), Some(r)) = (t.code, &r) {
        if r.json()["error"] != code {
            fails.push(format!("error {}, want {code}", r.json()["error"]));
        }
    }
    if let Some(r) = &r {
        // RFC 9110 §6.6.1: every response, gateway-made or forwarded (the recording backend
        // sends no Date), carries exactly one Date.
        fails.extend(date_problem(r));
        for (n, val) in &t.resp_has {
            if r.header(n) != Some(val.as_str()) {
                fails.push(format!("response {n}: {:?}, want {val:?}", r.header(n)));
            }
        }
        if status == 204 && (!r.body.is_empty() || r.header("content-length").is_some()) {
            fails.push("204 with a body or a Content-Length".into());
        }
    }
    if t.close_bug && !strict {
        // Checked by `known_bugs` only.
    } else if t.close {
        if !c.closed_within(Duration::from_secs(2)) {
            fails.push("connection left open".into());
        }
    } else if r.is_some() {
        // Still usable: a probe that never reaches a backend.
        let _ = c
            .stream
            .write_all(b"GET /v1/proxy/nope/probe HTTP/1.1\r\nHost: gw\r\n\r\n");
        match final_response(&mut c, false) {
            Some(p) if p.status == 404 => {}
            other => fails.push(format!(
                "connection not kept: probe got {:?}",
                other.map(|p| p.status)
            )),
        }
    }
    let want = usize::from(!matches!(t.up, Up::Nothing));
    eventually(
        Duration::from_millis(if want == 1 { 2000 } else { 20 }),
        || rec.count() >= before + want.max(1),
    );
    let got = rec.count() - before;
    if got != want {
        fails.push(format!("backend received {got} requests, want {want}"));
        return fails;
    }
    if want == 1 {
        fails.extend(check_forwarded(&rec.nth(before), t));
    }
    fails
}

fn check_forwarded(got: &Got, t: &V) -> Vec<String> {
    let mut fails = Vec::new();
    let head = &got.head;
    let cl = header_values(head, "content-length");
    let te = header_values(head, "transfer-encoding");
    let hosts = header_values(head, "host");
    if hosts.len() != 1 || !hosts[0].starts_with("127.0.0.1:") {
        fails.push(format!("upstream Host {hosts:?}"));
    }
    match &t.up {
        Up::NoBody => {
            if !cl.is_empty() || !te.is_empty() || !got.body.is_empty() {
                fails.push(format!("bodyless request framed as CL {cl:?} TE {te:?}"));
            }
        }
        Up::Len(body) => {
            if cl != [body.len().to_string()] || !te.is_empty() || &got.body != body {
                fails.push(format!(
                    "want content-length {} only, got CL {cl:?} TE {te:?} body {:?}",
                    body.len(),
                    String::from_utf8_lossy(&got.body)
                ));
            }
        }
        Up::Chunked(raw) => {
            if te != ["chunked"] || !cl.is_empty() || &got.body != raw {
                fails.push(format!(
                    "want chunked {:?}, got CL {cl:?} TE {te:?} body {:?}",
                    String::from_utf8_lossy(raw),
                    String::from_utf8_lossy(&got.body)
                ));
            }
        }
        Up::Nothing => {}
    }
    if let Some(want) = &t.target {
        let target = head.split(' ').nth(1).unwrap_or("");
        if target != want {
            fails.push(format!("upstream target {target:?}, want {want:?}"));
        }
    }
    for (n, val) in &t.has {
        let vals = header_values(head, n);
        if vals != [val.clone()] {
            fails.push(format!("upstream {n}: {vals:?}, want [{val:?}]"));
        }
    }
    for n in &t.lacks {
        if !header_values(head, n).is_empty() {
            fails.push(format!("upstream carries {n}"));
        }
    }
    if header_values(head, "via").is_empty() {
        fails.push("no Via upstream".into());
    }
    fails
}

// ---------------------------------------------------------------------------------------
// Scenarios that need more than one exchange.

/// Bytes until the peer closes (FIN or RST), or `None` if it is still open after 2 s.
fn rest_until_close(c: &mut Client) -> Option<Vec<u8>> {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let mut out = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(out),
            Err(_) => return None,
        }
    }
}

struct Tally {
    vectors: usize,
    rejected_ok: usize,
    rejected_total: usize,
    forwarded_among_rejected: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, rejected: bool, fails: Vec<String>, leaked: bool) {
        self.vectors += 1;
        if rejected {
            self.rejected_total += 1;
            if leaked {
                self.forwarded_among_rejected += 1;
            }
            if fails.is_empty() {
                self.rejected_ok += 1;
            }
        }
        for f in fails {
            self.failures.push(format!("{name}: {f}"));
        }
    }
}

/// A bad request pipelined before a good one: one 400, close, the second never forwarded.
fn bad_then_good(g: SocketAddr, rec: &StrictBackend, tally: &mut Tally, name: &str, bad: &str) {
    let before = rec.count();

    let mut c = Client::connect(g);
    c.send(format!("{bad}GET /v1/proxy/svc/second HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
    let mut fails = Vec::new();
    match final_response(&mut c, false) {
        Some(r) if r.status == 400 => {}
        other => fails.push(format!("first response {:?}", other.map(|r| r.status))),
    }
    // Exactly one response, then the close.
    match rest_until_close(&mut c) {
        Some(rest) if rest.is_empty() => {}
        Some(rest) => fails.push(format!(
            "more after the 400: {:?}",
            String::from_utf8_lossy(&rest)
        )),
        None => fails.push("connection left open after the 400".into()),
    }
    std::thread::sleep(Duration::from_millis(50));
    let leaked = rec.count() != before;
    if leaked {
        fails.push("the pipelined request reached a backend".into());
    }
    tally.record(name, true, fails, leaked);
}

fn scenarios(g: SocketAddr, rec: &StrictBackend, tally: &mut Tally) {
    // A bad request pipelined before a good one: one 400, close, the second never forwarded.
    for (name, bad) in [
        ("pipelined after duplicate CL", "GET /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        ("pipelined after CL+TE", "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("pipelined after bad chunk", "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ("pipelined after obs-fold", "GET /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nX: a\r\n b\r\n\r\n"),
        ("pipelined after empty chunk extension", "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n"),
        ("pipelined after unterminated quoted extension", "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n"),
        ("pipelined after trailer without colon", "POST /v1/proxy/svc/a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nNoColon\r\n\r\n"),
    ] {
        bad_then_good(g, rec, tally, name, bad);
    }

    // OPTIONS * between two forwarded requests on one connection: answered in order, by
    // the gateway itself, and the connection goes on.
    let before = rec.count();
    let mut c = Client::connect(g);
    c.send(b"GET /v1/proxy/svc/o1 HTTP/1.1\r\nHost: gw\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: gw\r\n\r\nGET /v1/proxy/svc/o2 HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut fails = Vec::new();
    let rs: Vec<Option<Response>> = (0..3).map(|_| final_response(&mut c, false)).collect();
    let statuses: Vec<Option<u16>> = rs.iter().map(|r| r.as_ref().map(|r| r.status)).collect();
    if statuses != [Some(200), Some(204), Some(200)] {
        fails.push(format!("statuses {statuses:?}"));
    }
    if let Some(Some(r)) = rs.get(1) {
        if r.header("allow") != Some("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS") {
            fails.push(format!("Allow {:?}", r.header("allow")));
        }
    }
    eventually(Duration::from_secs(2), || rec.count() >= before + 2);
    if rec.count() != before + 2 {
        fails.push(format!("{} forwarded, want 2", rec.count() - before));
    } else if !rec.nth(before).head.starts_with("GET /o1 ")
        || !rec.nth(before + 1).head.starts_with("GET /o2 ")
    {
        fails.push("forwarded out of order".into());
    }
    tally.record(
        "OPTIONS * pipelined between forwarded requests",
        false,
        fails,
        false,
    );

    // Good then bad, pipelined: 200, then 400 and close; only the first forwarded.
    let before = rec.count();
    let mut c = Client::connect(g);
    c.send(b"GET /v1/proxy/svc/one HTTP/1.1\r\nHost: gw\r\n\r\nGET /v1/proxy/svc/two HTTP/1.1\r\nHost : gw\r\n\r\n");
    let mut fails = Vec::new();
    let s1 = final_response(&mut c, false).map(|r| r.status);
    let s2 = final_response(&mut c, false).map(|r| r.status);
    if (s1, s2) != (Some(200), Some(400)) {
        fails.push(format!("statuses {s1:?} {s2:?}"));
    }
    if !c.closed_within(Duration::from_secs(2)) {
        fails.push("left open".into());
    }
    std::thread::sleep(Duration::from_millis(50));
    if rec.count() != before + 1 {
        fails.push(format!("{} forwarded, want 1", rec.count() - before));
    }
    tally.record("good then bad pipelined", false, fails, false);

    // A CL body followed by a pipelined request: both forwarded, in order, body exact.
    let before = rec.count();
    let mut c = Client::connect(g);
    c.send(b"POST /v1/proxy/svc/p1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhelloGET /v1/proxy/svc/p2 HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut fails = Vec::new();
    let s1 = final_response(&mut c, false).map(|r| r.status);
    let s2 = final_response(&mut c, false).map(|r| r.status);
    if (s1, s2) != (Some(200), Some(200)) {
        fails.push(format!("statuses {s1:?} {s2:?}"));
    }
    eventually(Duration::from_secs(2), || rec.count() >= before + 2);
    if rec.count() != before + 2 {
        fails.push(format!("{} forwarded, want 2", rec.count() - before));
    } else {
        let (a, b) = (rec.nth(before), rec.nth(before + 1));
        if !a.head.starts_with("POST /p1 ") || a.body != b"hello" || !b.head.starts_with("GET /p2 ")
        {
            fails.push(format!("got {:?} {:?} then {:?}", a.head, a.body, b.head));
        }
    }
    tally.record("CL body then pipelined request", false, fails, false);

    // Expect: 100-continue with the body held back: 100 first, then the body, then 200.
    let before = rec.count();
    let mut c = Client::connect(g);
    c.send(b"POST /v1/proxy/svc/e HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let mut fails = Vec::new();
    match c.try_read_response(false) {
        Ok(r) if r.status == 100 => {
            c.send(b"hello");
            match final_response(&mut c, false) {
                Some(r) if r.status == 200 => {}
                other => fails.push(format!("final {:?}", other.map(|r| r.status))),
            }
        }
        other => fails.push(format!("no 100 Continue: {:?}", other.map(|r| r.status))),
    }
    eventually(Duration::from_secs(2), || rec.count() > before);
    if rec.count() != before + 1 {
        fails.push("not forwarded once".into());
    } else {
        let got = rec.nth(before);
        if got.body != b"hello" || !header_values(&got.head, "expect").is_empty() {
            fails.push(format!("upstream {:?} {:?}", got.head, got.body));
        }
    }
    tally.record(
        "Expect: 100-continue, body after the 100",
        false,
        fails,
        false,
    );

    // Header-read deadline: an unfinished head gets 408 and a close.
    let before = rec.count();
    let mut c = Client::connect(g);
    c.send(b"GET /v1/proxy/svc/slow HTTP/1.1\r\nHost: gw\r\n");
    let t0 = Instant::now();
    let mut fails = Vec::new();
    match final_response(&mut c, false) {
        Some(r) if r.status == 408 => {}
        other => fails.push(format!("got {:?}", other.map(|r| r.status))),
    }
    if t0.elapsed() < Duration::from_millis(400) {
        fails.push("408 before the deadline".into());
    }
    if !c.closed_within(Duration::from_secs(2)) {
        fails.push("left open".into());
    }
    let leaked = rec.count() != before;
    tally.record("header-read deadline 408", true, fails, leaked);
}

/// Backend → gateway: responses that must become 502 or lose their stray bytes, and whose
/// connection must never be reused.
fn response_vectors(g: SocketAddr, script: &Script, tally: &mut Tally) {
    // (path, method, expected status, expected client body (None = don't care))
    let cases: &[(&str, &str, u16, Option<&[u8]>)] = &[
        ("/clte", "GET", 502, None),
        ("/tecl", "GET", 502, None),
        ("/badcl", "GET", 502, None),
        ("/dupcl", "GET", 502, None),
        ("/cllist", "GET", 502, None),
        ("/obsfold", "GET", 502, None),
        ("/te-gzip", "GET", 502, None),
        ("/te-chunked-chunked", "GET", 502, None),
        ("/nul", "GET", 502, None),
        ("/bare-lf", "GET", 502, None),
        ("/bad-chunk", "GET", 502, None),
        ("/upgrade-101", "GET", 502, None),
        ("/garbage", "GET", 502, None),
        ("/204-extra", "GET", 204, Some(b"")),
        ("/304-extra", "GET", 304, Some(b"")),
        ("/head-extra", "HEAD", 200, Some(b"")),
        ("/extra-after-cl", "GET", 200, Some(b"ok")),
        ("/extra-after-chunked", "GET", 200, Some(b"ok")),
        ("/space-colon", "GET", 200, Some(b"hello")),
        ("/hop", "GET", 200, Some(b"ok")),
        ("/1xx", "GET", 200, Some(b"ok")),
        ("/no-length", "GET", 200, Some(b"until close")),
        ("/bad-chunk-ext", "GET", 502, None),
        ("/unterminated-chunk-ext", "GET", 502, None),
        ("/trailer-no-colon", "GET", 502, None),
        ("/chunk-bws-zeros", "GET", 200, Some(b"hello")),
        ("/cl-zeros", "GET", 200, Some(b"ok")),
        ("/own-date", "GET", 200, Some(b"ok")),
        ("/conn-date", "GET", 200, Some(b"ok")),
        // RFC 9110 §2.5, as for requests (a review: it was a 502).
        ("/http-1-2", "GET", 200, Some(b"ok")),
    ];
    for (path, method, status, body) in cases {
        let mut c = Client::connect(g);
        c.send(format!("{method} /v1/proxy/up{path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        let mut fails = Vec::new();
        let mut interim = Vec::new();
        let r = loop {
            match c.try_read_response(*method == "HEAD") {
                Ok(r) if r.status < 200 => interim.push(r),
                Ok(r) => break Some(r),
                Err(_) => break None,
            }
        };
        match &r {
            Some(r) if r.status == *status => {
                // One Date on every final response: the backend's own when it sent one,
                // else ours (RFC 9110 §6.6.1).
                fails.extend(date_problem(r));
                let own = r.header("date") == Some(BACKEND_DATE);
                if own != (*path == "/own-date") {
                    fails.push(format!("Date {:?}", r.header("date")));
                }
                if let Some(b) = body {
                    if &r.body[..] != *b {
                        fails.push(format!("body {:?}", String::from_utf8_lossy(&r.body)));
                    }
                }
                if *status == 502 && r.json()["error"] != "backend_bad_response" {
                    fails.push(format!("error {}", r.json()["error"]));
                }
                match *path {
                    "/space-colon" if r.header("content-length") != Some("5") => {
                        fails.push(format!("{:?}", r.headers))
                    }
                    "/304-extra" | "/head-extra" if r.header("content-length") != Some("5") => {
                        fails.push("lost its Content-Length".into())
                    }
                    "/hop" => {
                        for h in [
                            "connection",
                            "x-b",
                            "keep-alive",
                            "proxy-authenticate",
                            "upgrade",
                            "trailer",
                        ] {
                            if r.header(h).is_some() {
                                fails.push(format!("client got hop-by-hop {h}"));
                            }
                        }
                    }
                    "/1xx" if interim.iter().map(|i| i.status).collect::<Vec<_>>() != [103] => {
                        fails.push(format!(
                            "interim {:?}",
                            interim.iter().map(|i| i.status).collect::<Vec<_>>()
                        ))
                    }
                    "/no-length" if r.header("transfer-encoding") != Some("chunked") => {
                        fails.push("not re-chunked".into())
                    }
                    _ => {}
                }
            }
            other => fails.push(format!(
                "status {:?}, want {status}",
                other.as_ref().map(|r| r.status)
            )),
        }
        // The next request on the same client connection must be served cleanly (never by
        // leftover bytes of the poisoned exchange).
        if r.as_ref()
            .is_some_and(|r| r.header("connection") != Some("close"))
        {
            c.send(b"GET /v1/proxy/up/ok HTTP/1.1\r\nHost: gw\r\n\r\n");
            match final_response(&mut c, false) {
                Some(r) if r.status == 200 && r.body == b"ok" => {}
                other => fails.push(format!(
                    "follow-up got {:?}",
                    other.map(|r| (r.status, r.body))
                )),
            }
        }
        tally.record(&format!("response {path}"), *status == 502, fails, false);
    }
    // A couple more requests so that any wrongly pooled connection would be picked.
    for _ in 0..3 {
        let r = get(g, "/v1/proxy/up/ok");
        assert_eq!(r.status, 200);
    }
    let reused = script.reused_after_poison.lock().unwrap().clone();
    let conns = script.connections.load(Ordering::SeqCst);
    let poisoned = script_replies().iter().filter(|r| r.2).count();
    let mut fails = Vec::new();
    if !reused.is_empty() {
        fails.push(format!("poisoned backend connections reused: {reused:?}"));
    }
    if conns < poisoned {
        fails.push(format!(
            "only {conns} backend connections for {poisoned} poisoned responses"
        ));
    }
    tally.record(
        "poisoned backend connections are never reused",
        false,
        fails,
        false,
    );
}

/// The Date the scripted backend sends on `/own-date`.
const BACKEND_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

fn script_replies() -> Vec<Reply> {
    let r = |p: &'static str, b: &[u8], poison: bool| (p, b.to_vec(), poison);
    vec![
        r("/clte", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true),
        r("/tecl", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", true),
        r("/badcl", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", true),
        r("/dupcl", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", true),
        r("/cllist", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", true),
        r("/obsfold", b"HTTP/1.1 200 OK\r\nX-F: a\r\n b\r\nContent-Length: 2\r\n\r\nok", true),
        r("/te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", true),
        r("/te-chunked-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", true),
        r("/nul", b"HTTP/1.1 200 OK\r\nX-N: a\0b\r\nContent-Length: 2\r\n\r\nok", true),
        r("/bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", true),
        r("/bad-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nok\r\n0\r\n\r\n", true),
        r("/upgrade-101", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n", true),
        r("/garbage", b"\x00\x01 not http\r\n\r\n", true),
        r("/204-extra", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", true),
        r("/304-extra", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", true),
        r("/head-extra", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", true),
        r("/extra-after-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle", true),
        r("/extra-after-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle", true),
        r("/no-length", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close", true),
        r("/space-colon", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", false),
        r("/hop", b"HTTP/1.1 200 OK\r\nConnection: x-b\r\nX-B: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTrailer: X-T\r\nContent-Length: 2\r\n\r\nok", false),
        r("/1xx", b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        r("/bad-chunk-ext", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;\r\nhello\r\n0\r\n\r\n", true),
        r("/unterminated-chunk-ext", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n", true),
        r("/trailer-no-colon", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nNoColon\r\n\r\n", true),
        r("/chunk-bws-zeros", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000000005 ;a=\"q\\\"x\"\r\nhello\r\n0\r\n\r\n", false),
        r("/cl-zeros", b"HTTP/1.1 200 OK\r\nContent-Length: 0000000000000000000000000002\r\n\r\nok", false),
        r("/http-1-2", b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok", false),
        r("/own-date", b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok", false),
        // A Date the backend named in Connection is dropped like any hop-by-hop field: ours replaces it.
        r("/conn-date", b"HTTP/1.1 200 OK\r\nConnection: date\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok", false),
    ]
}

/// One gateway in front of the strict recorder (`svc`) and the scripted backend (`up`).
fn setup() -> (StrictBackend, Script, Proc) {
    let rec = StrictBackend::start();
    let script = Script::start(script_replies());
    let g = gateway(&config(
        1,
        "limits: {max_body_bytes: 1000, max_target_bytes: 1024, max_head_bytes: 4096, max_headers: 20}\ntimeouts: {client_header: 500ms, response: 2s}\nbreaker: {failure_threshold: 1000}",
        &format!("  svc: [http://{}]\n  up: [http://{}]\n", rec.addr, script.addr),
    ));
    (rec, script, g)
}

fn all_vectors() -> Vec<V> {
    [
        framing_vectors(),
        syntax_vectors(),
        host_vectors(),
        limit_vectors(),
        hop_vectors(),
        expect_vectors(),
        path_vectors(),
    ]
    .concat()
}

fn new_tally() -> Tally {
    Tally {
        vectors: 0,
        rejected_ok: 0,
        rejected_total: 0,
        forwarded_among_rejected: 0,
        failures: Vec::new(),
    }
}

/// README: "400 ... connection closed". A 400 `unsafe_path` (a routing error on a complete,
/// bodyless request) keeps the connection open and serves a pipelined request after it.
#[test]
fn known_bugs() {
    let (rec, _script, g) = setup();
    let mut tally = new_tally();
    for t in all_vectors().iter().filter(|t| t.close_bug) {
        let fails = run(g.addr, &rec, t, true);
        tally.record(&t.name, true, fails, false);
    }
    bad_then_good(
        g.addr,
        &rec,
        &mut tally,
        "pipelined after unsafe path",
        "GET /v1/proxy/svc/../x HTTP/1.1\r\nHost: gw\r\n\r\n",
    );
    assert!(tally.failures.is_empty(), "{}", tally.failures.join("\n"));
}

#[test]
fn conformance_corpus() {
    let (rec, script, g) = setup();
    let table = all_vectors();
    let mut tally = new_tally();
    let mut forwarded = 0usize;
    for t in &table {
        let t0 = Instant::now();
        let before = rec.count();
        let fails = run(g.addr, &rec, t, false);
        let rejected = matches!(t.up, Up::Nothing);
        let leaked = rejected && rec.count() != before;
        if !rejected && fails.is_empty() {
            forwarded += 1;
        }
        tally.record(&t.name, rejected, fails, leaked);
        if t0.elapsed() > Duration::from_millis(300) {
            eprintln!("slow vector ({:?}): {}", t0.elapsed(), t.name);
        }
    }
    scenarios(g.addr, &rec, &mut tally);
    response_vectors(g.addr, &script, &mut tally);
    // Anything forwarded late (after its vector was checked) shows up here.
    std::thread::sleep(Duration::from_millis(200));
    let violations = rec.violations();
    for f in &tally.failures {
        eprintln!("FAIL {f}");
    }
    println!(
        "conformance: {} vectors, {} rejected as specified, {} forwarded (must be 0 among rejected); {} of {} rejected-class vectors as specified, {} accepted vectors forwarded as specified",
        tally.vectors,
        tally.rejected_ok,
        tally.forwarded_among_rejected,
        tally.rejected_ok,
        tally.rejected_total,
        forwarded,
    );
    assert!(tally.vectors >= 150, "only {} vectors", tally.vectors);
    assert!(violations.is_empty(), "backend saw: {violations:?}");
    assert_eq!(
        tally.forwarded_among_rejected, 0,
        "rejected vectors reached a backend"
    );
    assert!(
        tally.failures.is_empty(),
        "{} failures:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert_eq!(tally.rejected_ok, tally.rejected_total);
}

/// RFC 9110 §9.3.2: a response to HEAD has no content. Gateway-made errors (404, 502, ...)
/// to HEAD carry their JSON body on a kept-alive connection, so a client reads that body as
/// the start of the next response (desync).
#[test]
fn gateway_errors_to_head_carry_no_body() {
    let (_rec, _script, g) = setup();
    let mut c = Client::connect(g.addr);
    c.send(b"HEAD /v1/proxy/nope/a HTTP/1.1\r\nHost: gw\r\n\r\nGET /v1/proxy/nope/b HTTP/1.1\r\nHost: gw\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut raw = vec![0u8; 4096];
    let n = c.stream.read(&mut raw).unwrap_or(0);
    let raw = &raw[..n];
    let head_end = find(raw, b"\r\n\r\n").expect("a response head") + 4;
    assert!(
        raw.starts_with(b"HTTP/1.1 404"),
        "{:?}",
        String::from_utf8_lossy(raw)
    );
    assert!(
        raw[head_end..].starts_with(b"HTTP/1.1 404"),
        "bytes after the HEAD response: {:?}",
        String::from_utf8_lossy(&raw[head_end..])
    );
}
