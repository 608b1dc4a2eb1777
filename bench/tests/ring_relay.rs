//! `ring-relay` in each of its modes moves every byte both ways, intact, and ends a pair when a side closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// The relay under test, stopped by its PID when dropped.
struct Relay {
    child: Child,
    port: u16,
}

impl Relay {
    fn start(mode: &[&str], backend: u16) -> Relay {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ring-relay"));
        cmd.args(mode).arg("0").arg(backend.to_string());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ring-relay starts");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout is piped");
        BufReader::new(out)
            .read_line(&mut line)
            .expect("ring-relay prints its address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Relay { child, port }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend that answers every byte with the byte + 1, and reports on `ended` when a
/// connection of its reaches EOF (the relay passed the client's close on).
fn backend(ended: mpsc::Sender<usize>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let ended = ended.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 7000];
                let mut total = 0;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n;
                            let out: Vec<u8> = buf[..n].iter().map(|b| b.wrapping_add(1)).collect();
                            if s.write_all(&out).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = ended.send(total);
            });
        }
    });
    port
}

/// Bytes of a fixed pseudo-random sequence (xorshift), so that a byte moved, lost or
/// doubled shows.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn relays_intact(mode: &[&str]) -> Relay {
    let (tx, ended) = mpsc::channel();
    let relay = Relay::start(mode, backend(tx));
    // Two connections at once, each larger than the relay's 16 KiB buffer, written in
    // uneven pieces while the answer is read on another thread.
    let clients: Vec<_> = (0..2u64)
        .map(|i| {
            let port = relay.port;
            thread::spawn(move || {
                let data = pattern(300_000 + i as usize * 777, i + 1);
                let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the relay");
                s.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let mut r = s.try_clone().expect("clone");
                let want: Vec<u8> = data.iter().map(|b| b.wrapping_add(1)).collect();
                let reader = thread::spawn(move || {
                    let mut got = vec![0u8; want.len()];
                    r.read_exact(&mut got).expect("the whole answer comes back");
                    assert!(got == want, "bytes changed on the way");
                });
                let mut w = s;
                for piece in data.chunks(4093) {
                    w.write_all(piece).expect("write to the relay");
                }
                reader.join().expect("reader");
                w.shutdown(Shutdown::Write).expect("close");
                data.len()
            })
        })
        .collect();
    let mut sent: Vec<usize> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    // Each client's close reaches its backend connection, which saw exactly its bytes.
    let mut seen: Vec<usize> = (0..2)
        .map(|_| {
            ended
                .recv_timeout(Duration::from_secs(10))
                .expect("the backend side ends")
        })
        .collect();
    sent.sort_unstable();
    seen.sort_unstable();
    assert_eq!(sent, seen);
    relay
}

/// User and system time the process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("its stat");
    let after = stat.rsplit_once(") ").expect("a stat line").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn the_ring_relay_moves_bytes_intact_and_passes_closes_on() {
    relays_intact(&[]);
}

#[test]
fn the_monoio_relay_moves_bytes_intact_and_passes_closes_on() {
    relays_intact(&["--monoio"]);
}

#[test]
fn the_monoio_epoll_relay_moves_bytes_intact_and_passes_closes_on() {
    relays_intact(&["--monoio-epoll"]);
}

/// `--spin` polls only for a while after the last completion: idle, it sleeps as the
/// default relay does (a relay that spun for good would use the whole second below).
#[test]
fn the_spinning_relay_moves_bytes_intact_and_sleeps_when_idle() {
    let relay = relays_intact(&["--spin", "200"]);
    thread::sleep(Duration::from_millis(200));
    let before = cpu_ticks(relay.child.id());
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(relay.child.id()) - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 4 < hz,
        "idle for 1 s, the relay used {used} of {hz} ticks"
    );
}

#[test]
fn spin_wants_a_duration() {
    for bad in [&["--spin"][..], &["--spin", "0"], &["--spin", "x"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ring-relay"))
            .args(bad)
            .args(["0", "1"])
            .output()
            .expect("ring-relay runs");
        assert!(!out.status.success(), "{bad:?} was taken");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--spin MICROS"), "{bad:?}: {err}");
    }
}
