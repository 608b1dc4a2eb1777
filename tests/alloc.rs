//! Zero heap allocations per proxied request in steady state, proven by a counting global
//! allocator around an in-process gateway (the backend is a separate process).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts every allocation and reallocation of the process (all threads).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A keep-alive client that allocates nothing per request: fixed buffers, responses
/// framed by `Content-Length` only (which the mock backend always sends).
struct Raw {
    s: TcpStream,
    buf: Box<[u8]>,
    len: usize,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            s,
            buf: vec![0u8; 1 << 20].into_boxed_slice(),
            len: 0,
        }
    }

    /// Sends `req`, reads one response, returns its status.
    fn exchange(&mut self, req: &[u8]) -> u16 {
        self.s.write_all(req).expect("send");
        self.response()
    }

    /// Reads one response, returns its status.
    fn response(&mut self) -> u16 {
        loop {
            if let Some(end) = head_end(&self.buf[..self.len]) {
                let head = &self.buf[..end];
                let status = std::str::from_utf8(&head[9..12])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                let total = end + content_length(head);
                if self.len >= total {
                    self.buf.copy_within(total..self.len, 0);
                    self.len -= total;
                    return status;
                }
            }
            let n = self.s.read(&mut self.buf[self.len..]).expect("read");
            assert!(n > 0, "connection closed");
            self.len += n;
        }
    }
}

fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(b"content-length")
                .then(|| {
                    std::str::from_utf8(&line[colon + 1..])
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .expect("content-length")
}

#[test]
fn a_proxied_request_allocates_nothing_in_steady_state() {
    let a = common::mock_backend();
    let b = common::mock_backend();
    // Pooled connections idle longer than the test, and carry every request: closing one
    // (housekeeping, not a request) and opening its successor are the things here that
    // allocate (monoio's close and connect ops, 4 for each connection that reaches the
    // default 1 000 requests).
    let yaml = common::config(
        1,
        "pool: {idle_timeout: 60s, max_requests_per_connection: off}\nrequest_id: true",
        &format!(
            "  svc: [http://{}, http://{}]\n  limited:\n    backends: [http://{}]\n    rate_limit: {{rate: 1000000000/s, burst: 1000000, key: client_ip}}\n    max_in_flight: 1000\n",
            a.addr, b.addr, a.addr
        ),
    );
    let shared = gateway::state::Shared::new(gateway::Config::parse(&yaml).expect("config"));
    let server =
        gateway::server::start(Arc::clone(&shared), &mut Default::default()).expect("start");
    let addr = server.local_addr;
    let get =
        b"GET /v1/proxy/svc/steady?x=1 HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 2048\r\n\r\n";
    let limited =
        b"GET /v1/proxy/limited/steady HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 64\r\n\r\n";
    let mut post = b"POST /v1/proxy/svc/upload HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 16\r\nContent-Length: 16384\r\n\r\n".to_vec();
    post.resize(post.len() + 16384, b'x');
    let mut chunked = b"POST /v1/proxy/svc/chunks HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 16\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.resize(chunked.len() + 1024, b'y');
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut post10 = b"POST /v1/proxy/svc/upload HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 16\r\nContent-Length: 10240\r\n\r\n".to_vec();
    post10.resize(post10.len() + 10240, b'z');
    let cases: [(&str, &[u8]); 5] = [
        ("GET", get),
        ("GET, rate limit and max_in_flight", limited),
        ("POST 10 KiB", &post10),
        ("POST 16 KiB", &post),
        ("POST chunked", &chunked),
    ];
    let mut clients: Vec<Raw> = (0..4).map(|_| Raw::connect(addr)).collect();
    for (name, req) in cases {
        // Warm up: buffers, pooled connections to both backends, the worker's tables.
        for _ in 0..500 {
            for c in clients.iter_mut() {
                assert_eq!(c.exchange(req), 200, "{name}");
            }
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        let n = 1000;
        for _ in 0..n {
            for c in clients.iter_mut() {
                assert_eq!(c.exchange(req), 200, "{name}");
            }
        }
        let allocs = ALLOCS.load(Ordering::SeqCst) - before;
        println!(
            "{name}: {allocs} allocations in {} requests",
            n * clients.len()
        );
        assert_eq!(
            allocs,
            0,
            "{name}: {allocs} allocations in {} proxied requests",
            n * clients.len()
        );
    }
    // Many requests in flight at once: each holds about six buffers meanwhile, a body that
    // did not fit the first read a larger one too, and all of them must find theirs
    // again. One backend, so that the 64 pooled connections of the warm-up always suffice
    // (a new connection allocates, in monoio; with two, a request stream that drifts
    // towards one of them opens one more now and then).
    let mut post64 = b"POST /v1/proxy/limited/upload HTTP/1.1\r\nHost: g\r\nx-mock-body-bytes: 16\r\nContent-Length: 16384\r\n\r\n".to_vec();
    post64.resize(post64.len() + 16384, b'x');
    let mut many: Vec<Raw> = (0..64).map(|_| Raw::connect(addr)).collect();
    let round = |many: &mut Vec<Raw>, req: &[u8]| {
        for c in many.iter_mut() {
            c.s.write_all(req).expect("send");
        }
        for c in many.iter_mut() {
            assert_eq!(c.response(), 200);
        }
    };
    let cases: [(&str, &[u8]); 2] = [("GET", limited), ("POST 16 KiB", &post64)];
    for (name, req) in cases {
        for _ in 0..50 {
            round(&mut many, req);
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..100 {
            round(&mut many, req);
        }
        let allocs = ALLOCS.load(Ordering::SeqCst) - before;
        println!("{name}, 64 at once: {allocs} allocations in 6400 requests");
        assert_eq!(allocs, 0, "{name}, 64 at once: {allocs} allocations");
    }
}
