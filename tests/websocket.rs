//! WebSocket upgrades (`websocket: true` on a service): the handshake goes up as one, a
//! backend's `101` opens a tunnel that relays bytes both ways until either side ends, and
//! nothing else switches a connection away from HTTP.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How the test backend answers a request head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A handshake (a head naming `websocket`) gets a `101` and `hello`, then every byte is
    /// echoed upper-cased; at EOF it says `bye` and closes. Anything else gets `200 plain`.
    Switch,
    /// Every request gets a `101` whose `Upgrade` says this, then `hello`.
    SwitchAnyway(&'static str),
    /// Every request gets this head, then `hello`.
    Head(&'static str),
    /// A handshake gets `426` with a body; the connection stays HTTP.
    Refuse,
    /// A handshake gets a `101` and then, every 100 ms, `tick` (25 times), reading nothing.
    Push,
    /// A handshake gets a `101` and `hello`, then the connection is reset.
    SwitchThenReset,
    /// As `Switch`, except that a handshake for a target with `/flood` in it gets a `101`
    /// and then 32 MiB, reading nothing.
    Flood,
    /// A handshake gets a `101`, then nothing, and nothing is read, for 20 s.
    Deaf,
}

/// A backend that records every head it receives and the bytes that follow a `101`.
struct WsBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// Bytes received after the handshake, per tunnel, in order.
    tunnelled: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

impl WsBackend {
    fn start(answer: Answer) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = WsBackend {
            addr: listener.local_addr().expect("addr"),
            heads: Arc::default(),
            tunnelled: Arc::default(),
            connections: Arc::default(),
        };
        let (heads, tunnelled, connections) =
            (b.heads.clone(), b.tunnelled.clone(), b.connections.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (heads, tunnelled) = (heads.clone(), tunnelled.clone());
                std::thread::spawn(move || serve(s, answer, &heads, &tunnelled));
            }
        });
        b
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn tunnelled(&self) -> Vec<u8> {
        self.tunnelled.lock().unwrap().clone()
    }
}

fn serve(mut s: TcpStream, answer: Answer, heads: &Mutex<Vec<String>>, tunnelled: &Mutex<Vec<u8>>) {
    let mut pending = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&tmp[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
        pending.drain(..end + 4);
        heads.lock().unwrap().push(head.clone());
        let handshake = head.to_ascii_lowercase().contains("upgrade: websocket");
        let switch = |s: &mut TcpStream, upgrade: &str| {
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello"
                )
                .as_bytes(),
            );
        };
        match answer {
            Answer::Flood if handshake && head.contains("/flood") => {
                switch(&mut s, "websocket");
                let chunk = vec![b'f'; 65536];
                for _ in 0..512 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
                return;
            }
            Answer::Switch | Answer::Flood if handshake => {
                switch(&mut s, "websocket");
                tunnelled.lock().unwrap().extend_from_slice(&pending);
                let _ = s.write_all(&pending.to_ascii_uppercase());
                loop {
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tunnelled.lock().unwrap().extend_from_slice(&tmp[..n]);
                            if s.write_all(&tmp[..n].to_ascii_uppercase()).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"bye");
                return;
            }
            Answer::SwitchAnyway(upgrade) => {
                switch(&mut s, upgrade);
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            Answer::Head(head) => {
                let _ = s.write_all(format!("{head}hello").as_bytes());
                std::thread::sleep(Duration::from_secs(5));
                return;
            }
            Answer::Refuse if handshake => {
                let _ =
                    s.write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 4\r\n\r\nnope");
            }
            Answer::SwitchThenReset if handshake => {
                switch(&mut s, "websocket");
                std::thread::sleep(Duration::from_millis(100));
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return;
            }
            Answer::Deaf if handshake => {
                switch(&mut s, "websocket");
                std::thread::sleep(Duration::from_secs(20));
                return;
            }
            Answer::Push if handshake => {
                switch(&mut s, "websocket");
                for _ in 0..25 {
                    std::thread::sleep(Duration::from_millis(100));
                    if s.write_all(b"tick").is_err() {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(10));
                return;
            }
            _ => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain");
            }
        }
    }
}

const HANDSHAKE: &str = "GET /v1/proxy/ws/chat HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn ws_gateway(b: &WsBackend, websocket: bool, extra: &str) -> AdminGateway {
    let services = format!(
        "  ws:\n    backends: [http://{}]\n    websocket: {websocket}\n",
        b.addr
    );
    gateway_at(&write_config(&config(
        1,
        &format!("admin: 127.0.0.1:0\n{extra}"),
        &services,
    )))
}

/// Reads until `want` bytes arrived (or the connection ended).
fn read_n(c: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while got.len() < want {
        match c.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
        }
    }
    got
}

/// Sends the handshake (and `early` in the same write), reads the `101` head and returns it
/// as text.
fn handshake(g: &AdminGateway, early: &[u8]) -> (TcpStream, String) {
    let mut c = TcpStream::connect(g.proc.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut first = HANDSHAKE.as_bytes().to_vec();
    first.extend_from_slice(early);
    c.write_all(&first).expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => panic!("no head: {:?}", String::from_utf8_lossy(&head)),
        }
    }
    (c, String::from_utf8_lossy(&head).into_owned())
}

fn tunnel_both_ways(env: &[(&str, &str)]) {
    let b = WsBackend::start(Answer::Switch);
    let services = format!(
        "  ws:\n    backends: [http://{}]\n    websocket: true\n",
        b.addr
    );
    let log = std::env::temp_dir().join(format!(
        "gateway-ws-{}-{}.log",
        std::process::id(),
        env.len()
    ));
    let path = write_config(&config(
        1,
        &format!("admin: 127.0.0.1:0\naccess_log: {}", log.display()),
        &services,
    ));
    let g = gateway_at_with_env(&path, env);
    // Bytes sent right behind the handshake (before the 101) go up into the tunnel.
    let (mut c, head) = handshake(&g, b"early;");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(
        !lower.contains("content-length") && !lower.contains("transfer-encoding"),
        "{head}"
    );
    // What the backend sent behind its 101, then the early bytes echoed.
    assert_eq!(read_n(&mut c, 11), b"helloEARLY;");
    for msg in ["one", "two-", "three"] {
        c.write_all(msg.as_bytes()).expect("send");
        assert_eq!(
            read_n(&mut c, msg.len()),
            msg.to_ascii_uppercase().as_bytes()
        );
    }
    // A larger message, in pieces, arrives whole and in order.
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let writer = {
        let mut w = c.try_clone().expect("clone");
        let big = big.clone();
        std::thread::spawn(move || w.write_all(&big).expect("send big"))
    };
    assert_eq!(read_n(&mut c, big.len()), big.to_ascii_uppercase());
    writer.join().expect("writer");
    // The client's FIN reaches the backend, whose last words and FIN come back.
    c.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).expect("read to end");
    assert_eq!(rest, b"bye");
    // The backend saw the handshake as one, with its own fields, and the bytes in order.
    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let up = heads[0].to_ascii_lowercase();
    assert!(up.starts_with("get /chat http/1.1\r\n"), "{up}");
    assert!(up.contains("\r\nconnection: upgrade\r\n"), "{up}");
    assert!(up.contains("\r\nupgrade: websocket\r\n"), "{up}");
    assert!(
        up.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
        "{up}"
    );
    let mut want = b"early;onetwo-three".to_vec();
    want.extend_from_slice(&big);
    assert_eq!(b.tunnelled(), want);
    // A 101 is the backend doing as asked; its connection is never pooled: the next
    // request opens another.
    assert_eq!(circuit(g.admin, b.addr), "closed");
    let r = get(g.proc.addr, "/v1/proxy/ws/plain");
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    assert_eq!(b.connections.load(Ordering::SeqCst), 2);
    // The access log has the tunnel: status 101, and every byte that reached the client.
    let (_, fields) = logged_line(&log, "/v1/proxy/ws/chat");
    assert!(fields.iter().any(|f| f == "101"), "{fields:?}");
    let sent = (head.len() + 11 + 3 + 4 + 5 + big.len() + 3).to_string();
    assert!(fields.contains(&sent), "want {sent} bytes: {fields:?}");
    // The metrics count its bytes, but not its time as a request's wait: that is the
    // session's, and would fill the duration histogram's top buckets.
    let mut m = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        m = metrics(g.admin);
        sample(&m, "gateway_requests_total{service=\"ws\",class=\"2xx\"}") == Some(1.0)
    }));
    assert_eq!(
        sample(&m, "gateway_requests_total{service=\"ws\",class=\"1xx\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gateway_request_duration_seconds_count{service=\"ws\"}"),
        Some(1.0),
        "only the plain GET: {m}"
    );
    let bytes = sample(&m, "gateway_response_bytes_total{service=\"ws\"}").unwrap_or(0.0);
    assert!(bytes > sent.parse::<f64>().unwrap_or(f64::MAX), "{m}");
    // What the clients sent: the handshake and the bytes behind it, every message through
    // the tunnel, and the plain GET.
    let plain = "GET /v1/proxy/ws/plain HTTP/1.1\r\nHost: gw\r\n\r\n";
    let received = HANDSHAKE.len() + b"early;".len() + 3 + 4 + 5 + big.len() + plain.len();
    assert!(
        eventually(Duration::from_secs(5), || {
            m = metrics(g.admin);
            sample(&m, "gateway_request_bytes_total{service=\"ws\"}") == Some(received as f64)
        }),
        "want {received}: {m}"
    );
}

#[test]
fn a_websocket_handshake_opens_a_tunnel_both_ways() {
    tunnel_both_ways(&[]);
}

#[test]
fn a_websocket_tunnel_works_on_epoll_too() {
    tunnel_both_ways(&[("GATEWAY_DRIVER", "epoll")]);
}

/// Without `websocket: true` nothing changes: the handshake's `Upgrade` is dropped like any
/// hop-by-hop field, and a backend's 101 is a 502.
#[test]
fn a_service_without_websocket_drops_the_upgrade_and_refuses_a_101() {
    let b = WsBackend::start(Answer::Switch);
    let services = |on: bool| {
        format!(
            "  ws:\n    backends: [http://{}]\n    websocket: {on}\n",
            b.addr
        )
    };
    let path = write_config(&config(1, "admin: 127.0.0.1:0", &services(false)));
    let g = gateway_at(&path);
    let r = request(g.proc.addr, HANDSHAKE);
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    let up = b.heads()[0].to_ascii_lowercase();
    assert!(!up.contains("upgrade"), "{up}");
    // A reload turns it on for the next handshake.
    std::fs::write(&path, config(1, "admin: 127.0.0.1:0", &services(true))).expect("rewrite");
    signal(&g.proc.child, libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || {
            get(g.admin, "/admin/config").json()["generation"].as_u64() == Some(2)
        }),
        "no reload"
    );
    let (mut c, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(read_n(&mut c, 5), b"hello");
    let b = WsBackend::start(Answer::SwitchAnyway("websocket"));
    let g = ws_gateway(&b, false, "");
    let r = request(g.proc.addr, HANDSHAKE);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["detail"], "unexpected_upgrade");
}

/// Only a WebSocket handshake goes up as one, and only a 101 to websocket opens a tunnel.
#[test]
fn only_a_websocket_handshake_answered_with_websocket_switches() {
    let b = WsBackend::start(Answer::Switch);
    let g = ws_gateway(&b, true, "");
    // Not handshakes: another protocol (h2c, a smuggling classic), two protocols, no
    // `Connection: upgrade`, a POST with a body, HTTP/1.0.
    for raw in [
        "GET /v1/proxy/ws/a HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        "GET /v1/proxy/ws/b HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket, h2c\r\nConnection: Upgrade\r\n\r\n",
        "GET /v1/proxy/ws/c HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET /v1/proxy/ws/d HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n\r\n",
        "POST /v1/proxy/ws/e HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nhi",
        "GET /v1/proxy/ws/f HTTP/1.0\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ] {
        let r = request(g.proc.addr, raw);
        assert_eq!((r.status, r.text().as_str()), (200, "plain"), "{raw:?}");
        let heads = b.heads();
        let up = heads.last().expect("a head").to_ascii_lowercase();
        assert!(
            !up.contains("upgrade") && !up.contains("http2-settings"),
            "{raw:?} went up as {up:?}"
        );
    }
    // A 101 to another protocol, or to a request that asked for none: a 502, whatever the
    // backend meant.
    let b = WsBackend::start(Answer::SwitchAnyway("h2c"));
    let g = ws_gateway(&b, true, "");
    let r = request(g.proc.addr, HANDSHAKE);
    assert_eq!(
        (r.status, r.json()["detail"].as_str()),
        (502, Some("unexpected_upgrade"))
    );
    let b = WsBackend::start(Answer::SwitchAnyway("websocket"));
    let g = ws_gateway(&b, true, "");
    let r = get(g.proc.addr, "/v1/proxy/ws/plain");
    assert_eq!(
        (r.status, r.json()["detail"].as_str()),
        (502, Some("unexpected_upgrade"))
    );
    // A 101 that frames a body (a 1xx has none: its `hello` went on as tunnel data, a
    // review) or that comes as HTTP/1.0 (which has no Upgrade): a 502 too.
    for head in [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ] {
        let b = WsBackend::start(Answer::Head(head));
        let g = ws_gateway(&b, true, "");
        let r = request(g.proc.addr, HANDSHAKE);
        assert_eq!(
            (r.status, r.json()["detail"].as_str()),
            (502, Some("unexpected_upgrade")),
            "{head:?}"
        );
    }
}

/// A backend that declines the handshake answers in HTTP, and the connection stays HTTP:
/// what the client sent behind the handshake is read as its next request, never passed on
/// blind.
#[test]
fn a_declined_handshake_leaves_the_connection_http() {
    let b = WsBackend::start(Answer::Refuse);
    let g = ws_gateway(&b, true, "");
    let mut c = Client::connect(g.proc.addr);
    let mut both = HANDSHAKE.to_string();
    both.push_str("GET /v1/proxy/ws/next HTTP/1.1\r\nHost: gw\r\n\r\n");
    c.send(both.as_bytes());
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (426, "nope"));
    let r = c.read_response();
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    let heads = b.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].starts_with("GET /next HTTP/1.1\r\n"), "{heads:?}");
    assert!(
        !heads[1].to_ascii_lowercase().contains("upgrade"),
        "{heads:?}"
    );
}

/// `timeouts.tunnel` ends a tunnel only when no byte moved either way for that long: one
/// the backend keeps pushing to stays, a silent one closes.
#[test]
fn an_idle_tunnel_closes_and_a_busy_one_stays() {
    let b = WsBackend::start(Answer::Push);
    let g = ws_gateway(&b, true, "timeouts: {tunnel: 1s}");
    let (mut c, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // 2.5 s of ticks, 100 ms apart, and nothing from the client: more than twice the
    // tunnel timeout, all of it relayed.
    let mut want = b"hello".to_vec();
    want.extend_from_slice(&b"tick".repeat(25));
    assert_eq!(read_n(&mut c, want.len()), want);
    // Then silence both ways: cut after about a second, with a reset (a tunnel that did
    // not end by both sides closing never ends in a clean FIN).
    let mut rest = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let ended = c.read_to_end(&mut rest);
    assert!(
        ended
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
            && rest.is_empty(),
        "{ended:?} {rest:?}"
    );
}

/// A tunnel whose client reads nothing of what its backend sends is stalled like an answer
/// nobody reads: at the connection cap it makes room for a waiting client (see
/// `at_the_cap_clients_that_read_none_of_their_answer_make_room_and_slow_readers_do_not`).
/// A silent tunnel has nothing waiting to be sent and keeps its place.
#[test]
fn at_the_cap_a_tunnel_whose_client_reads_nothing_makes_room_and_a_silent_one_stays() {
    let b = WsBackend::start(Answer::Flood);
    let g = ws_gateway(
        &b,
        true,
        "timeouts: {tunnel: 120s}\nlimits:\n  max_connections: 2",
    );
    let (mut silent, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(read_n(&mut silent, 5), b"hello");
    let mut flooded = TcpStream::connect(g.proc.addr).expect("connect");
    flooded
        .write_all(HANDSHAKE.replace("/chat", "/flood").as_bytes())
        .expect("send");
    let connections = || sample(&metrics(g.admin), "gateway_client_connections");
    assert!(eventually(Duration::from_secs(5), || connections() == Some(2.0)));
    // Without the stall watch this waited for `timeouts.tunnel` (120 s here).
    let started = std::time::Instant::now();
    let mut c = TcpStream::connect(g.proc.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    c.write_all(b"GET /v1/proxy/ws/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 200 ") && answer.ends_with(b"plain"),
        "after {:?}: {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        sample(&metrics(g.admin), "gateway_idle_evicted_total"),
        Some(1.0)
    );
    // The flooded tunnel was reset; the silent one still echoes.
    flooded
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tmp = vec![0u8; 1 << 20];
    let end = loop {
        match flooded.read(&mut tmp) {
            Ok(0) => break None,
            Ok(_) => continue,
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
    silent.write_all(b"ping").expect("write");
    assert_eq!(read_n(&mut silent, 4), b"PING");
}

/// Regression (a review): a backend's reset mid-tunnel reached the client as a clean FIN,
/// so a cut conversation looked finished; the log line said nothing either. The client now
/// gets a reset, and the line says `response_cut_short`.
#[test]
fn a_backend_reset_reaches_the_client_as_a_reset() {
    let b = WsBackend::start(Answer::SwitchThenReset);
    let services = format!(
        "  ws:\n    backends: [http://{}]\n    websocket: true\n",
        b.addr
    );
    let log = std::env::temp_dir().join(format!("gateway-ws-reset-{}.log", std::process::id()));
    let g = gateway_at(&write_config(&config(
        1,
        &format!("admin: 127.0.0.1:0\naccess_log: {}", log.display()),
        &services,
    )));
    let (mut c, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut got = Vec::new();
    let ended = c.read_to_end(&mut got);
    assert_eq!(got, b"hello");
    assert!(
        ended.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client must see a reset"
    );
    let (_, fields) = logged_line(&log, "/v1/proxy/ws/chat");
    assert!(
        fields.iter().any(|f| f == "response_cut_short"),
        "{fields:?}"
    );
    let cut = sample(
        &metrics(g.admin),
        "gateway_responses_cut_total{service=\"ws\"}",
    );
    assert_eq!(cut, Some(1.0));
}

/// A client that resets its end of a tunnel ends it: the backend connection is closed,
/// nothing stays active.
#[test]
fn a_reset_client_ends_its_tunnel() {
    let b = WsBackend::start(Answer::Switch);
    let g = ws_gateway(&b, true, "");
    let (mut c, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    c.write_all(b"x").expect("send");
    assert_eq!(read_n(&mut c, 6), b"helloX");
    let active = || {
        sample(
            &metrics(g.admin),
            "gateway_pool_connections{state=\"active\"}",
        )
    };
    assert_eq!(active(), Some(1.0));
    let s2 = socket2::SockRef::from(&c);
    s2.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(c);
    assert!(
        eventually(Duration::from_secs(5), || active() == Some(0.0)),
        "{:?}",
        active()
    );
}

/// Regression (a review): a client's reset was not seen while its direction of the tunnel
/// waited on a write to a backend that read nothing (nothing reads the client's socket
/// then), and the tunnel, its backend connection and its slot stayed for
/// `timeouts.tunnel`. The worker's watch sees the reset within a second or two.
#[test]
fn a_client_reset_behind_a_backend_that_reads_nothing_ends_the_tunnel() {
    let b = WsBackend::start(Answer::Deaf);
    let services = format!(
        "  ws:\n    backends: [http://{}]\n    websocket: true\n    timeouts: {{tunnel: 60s}}\n",
        b.addr
    );
    let g = gateway_at(&write_config(&config(1, "admin: 127.0.0.1:0", &services)));
    let (mut c, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(read_n(&mut c, 5), b"hello");
    // Fill every buffer on the way up, until the gateway's write to the backend waits.
    c.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![b'x'; 65536];
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(500) {
        match c.write(&chunk) {
            Ok(_) => quiet_since = Instant::now(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("send: {e}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never full");
    }
    let active = || {
        sample(
            &metrics(g.admin),
            "gateway_pool_connections{state=\"active\"}",
        )
    };
    assert_eq!(active(), Some(1.0));
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    assert!(
        eventually(Duration::from_secs(5), || active() == Some(0.0)),
        "{:?}",
        active()
    );
}

/// Regression (a review): a tunnel the drain deadline cut was logged with `-` for status and
/// bytes, though the client had its `101` and what the tunnel had brought it. The line says
/// `101` and every byte that reached the client.
#[test]
fn a_tunnel_cut_by_the_drain_deadline_is_logged_with_what_it_moved() {
    let b = WsBackend::start(Answer::Switch);
    let log = std::env::temp_dir().join(format!("gateway-ws-{}-cut.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut g = ws_gateway(
        &b,
        true,
        &format!("access_log: {}\ntimeouts: {{drain: 1s}}", log.display()),
    );
    let (mut c, head) = handshake(&g, b"");
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let mut got = head.len() + read_n(&mut c, 5).len();
    c.write_all(b"ping").expect("send");
    got += read_n(&mut c, 4).len();
    let t = std::time::Instant::now();
    signal(&g.proc.child, libc::SIGTERM);
    let mut rest = Vec::new();
    assert!(
        c.read_to_end(&mut rest).is_err(),
        "the cut tunnel was not reset"
    );
    got += rest.len();
    exits_cleanly(&mut g.proc.child, t);
    let (text, line) = logged_line(&log, "/v1/proxy/ws/chat");
    assert_eq!(line.len(), 11, "{text}");
    assert_eq!(
        (&*line[6], &*line[7], &*line[10]),
        ("101", &*got.to_string(), "drain_deadline"),
        "{text}"
    );
}
