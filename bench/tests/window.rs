//! loadgen as `scripts/bench.sh` runs it: window markers on stderr, what percentiles omit.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// A keep-alive server answering every request head with a tiny 200, on its own threads.
fn tiny_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Regression: bench.sh opened its CPU window a fixed warm-up after starting loadgen, which
/// left loadgen's 300 ms setup out of account: ~300 ms of warm-up traffic fell inside it.
/// loadgen now says when the recorded requests start and end.
#[test]
fn the_window_is_announced_and_the_summary_says_what_is_left_out() {
    let addr = tiny_server();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &format!("http://{addr}/x")])
        .args([
            "--connections",
            "2",
            "--warmup",
            "200ms",
            "--duration",
            "300ms",
        ])
        .output()
        .expect("run loadgen");
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{err}\n{stdout}");
    let start = err
        .find("loadgen: window start")
        .expect("window start line");
    let end = err.find("loadgen: window end").expect("window end line");
    assert!(start < end, "{err}");
    assert!(
        stdout.contains("(2xx: ") && stdout.contains("not in them: non-2xx 0, timeouts 0"),
        "{stdout}"
    );
}
