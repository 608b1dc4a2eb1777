//! A blind TCP relay on io_uring, the floor an io_uring proxy cannot go below (`bench/floor/`).
//!
//! `ring-relay [--monoio|--monoio-epoll|--spin MICROS] LISTEN_PORT BACKEND_PORT...` listens on 127.0.0.1:LISTEN_PORT
//! (0: any free port; the first line it prints names it) and
//! gives every client connection its own connection to the next backend (round-robin over
//! 127.0.0.1:BACKEND_PORT...), then copies bytes both ways until either side ends: what
//! HAProxy does in `mode tcp`, with no HTTP work, no timers and no pool. One thread; pin it
//! with `taskset`.
//!
//! - default: hand-written on the `io-uring` crate, the ring set up as the gateway's
//!   (SINGLE_ISSUER + COOP_TASKRUN, 1024 entries): per direction, a receive into a 16 KiB
//!   buffer, then sends until it is all out, then the next receive. No runtime, no futures,
//!   no wakers: what the kernel's side of an io_uring relay costs, plus a loop.
//! - `--spin MICROS`: the same, but after each completion it keeps reaping the ring without
//!   sleeping until MICROS pass with none (entries that ask for events but need none: task
//!   work runs, nothing blocks), then sleeps as the default does: the floor for the
//!   gateway's `busy_poll`.
//! - `--monoio`: the same relay on the gateway's runtime (monoio 0.2.4, the same ring
//!   setup), one task per direction: what a proxy on this runtime costs before any HTTP work.
//! - `--monoio-epoll`: the same on monoio's epoll driver (the gateway's `GATEWAY_DRIVER=epoll`).
//!
//! A measuring tool, not a product: it trusts its peers (loopback benchmark processes) and
//! stops at the first error of its own (a failed accept or connect ends the process).

use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

/// Bytes a direction reads at a time (the gateway's head buffer is 8 KiB, its body reads
/// 16–60 KiB; a GET and its answer fit either).
const BUF: usize = 16 * 1024;
/// The ring's entries, as the gateway's.
const ENTRIES: u32 = 1024;

fn main() {
    if let Err(e) = run() {
        eprintln!("ring-relay: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some(m @ ("--monoio" | "--monoio-epoll")) => m.to_string(),
        _ => String::new(),
    };
    if !mode.is_empty() {
        args.remove(0);
    }
    let mut spin = None;
    if mode.is_empty() && args.first().map(String::as_str) == Some("--spin") {
        let us: u64 = args
            .get(1)
            .and_then(|a| a.parse().ok())
            .filter(|&us| us > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "--spin MICROS (> 0)"))?;
        spin = Some(std::time::Duration::from_micros(us));
        args.drain(..2);
    }
    let ports: Vec<u16> = args
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("a port: {e}")))?;
    if ports.len() < 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: ring-relay [--monoio|--monoio-epoll|--spin MICROS] LISTEN_PORT BACKEND_PORT...",
        ));
    }
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
    let backends: Vec<SocketAddr> = ports[1..]
        .iter()
        .map(|&p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
        .collect();
    match mode.as_str() {
        "--monoio" => on_monoio::run_uring(listen, backends),
        "--monoio-epoll" => on_monoio::run_epoll(listen, backends),
        _ => raw::run(listen, backends, spin),
    }
}

/// The ring the gateway's workers use.
fn ring_builder() -> io_uring::Builder {
    let mut b = IoUring::builder();
    b.setup_single_issuer();
    b.setup_coop_taskrun();
    b
}

/// Connects to the next backend, Nagle off on both sides as the gateway does.
fn connect(backends: &[SocketAddr], next: &mut usize) -> io::Result<TcpStream> {
    let addr = backends[*next % backends.len()];
    *next += 1;
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The relay written straight on the ring.
mod raw {
    use super::*;

    /// `user_data` of the accept.
    const ACCEPT: u64 = u64::MAX;

    /// One client connection and its backend connection (closed when the pair is dropped).
    struct Pair {
        /// `[client, backend]`.
        socks: [TcpStream; 2],
        /// Per direction (0: client → backend, 1: backend → client): its buffer, and the
        /// bytes in it still to send as `from..to`.
        bufs: [Box<[u8]>; 2],
        pending: [(usize, usize); 2],
        /// Operations submitted and not yet completed.
        in_flight: u8,
        /// One side ended: no new operation, the pair goes once `in_flight` is 0.
        closing: bool,
    }

    /// `user_data`: the pair's slot, the direction and whether it is a send.
    fn tag(slot: usize, dir: usize, send: bool) -> u64 {
        ((slot as u64) << 2) | ((dir as u64) << 1) | u64::from(send)
    }

    fn untag(d: u64) -> (usize, usize, bool) {
        ((d >> 2) as usize, ((d >> 1) & 1) as usize, d & 1 == 1)
    }

    /// Queues an entry, flushing the queue to the kernel first when it is full.
    fn push(ring: &mut IoUring, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry points into a buffer of a live pair (a boxed slice whose
            // address never changes) or at nothing, and a pair is freed only once none of
            // its operations is in flight.
            if unsafe { ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            ring.submit()?;
        }
    }

    /// Queues the next operation of direction `dir`: a send of its pending bytes, or a
    /// receive into its buffer.
    fn queue(
        ring: &mut IoUring,
        pairs: &mut [Option<Pair>],
        slot: usize,
        dir: usize,
        send: bool,
    ) -> io::Result<()> {
        let Some(p) = pairs[slot].as_mut() else {
            return Ok(());
        };
        let e = if send {
            let (from, to) = p.pending[dir];
            // SAFETY: `from < to <= BUF`: `to` is what a receive put in the buffer, and
            // `from` only grows by what a send took, up to `to`.
            let ptr = unsafe { p.bufs[dir].as_ptr().add(from) };
            let fd = types::Fd(p.socks[1 - dir].as_raw_fd());
            opcode::Send::new(fd, ptr, (to - from) as u32).build()
        } else {
            let buf = p.bufs[dir].as_mut_ptr();
            opcode::Recv::new(types::Fd(p.socks[dir].as_raw_fd()), buf, BUF as u32).build()
        };
        p.in_flight += 1;
        push(ring, &e.user_data(tag(slot, dir, send)))
    }

    /// Ends a pair: both sockets are shut down, which completes whatever is in flight;
    /// the pair (and with it its sockets) goes when the last completion is in.
    fn end(pairs: &mut [Option<Pair>], free: &mut Vec<usize>, slot: usize) {
        let Some(p) = pairs[slot].as_mut() else {
            return;
        };
        if !p.closing {
            p.closing = true;
            for s in &p.socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if p.in_flight == 0 {
            pairs[slot] = None;
            free.push(slot);
        }
    }

    /// Submits what is queued and takes in what has completed: waiting for at least one
    /// completion, or with `poll`, not waiting at all (an entry that asks for events, so
    /// that the task work which posts socket completions runs, with none required).
    fn enter(ring: &mut IoUring, poll: bool) -> io::Result<()> {
        if !poll {
            return ring.submit_and_wait(1).map(drop);
        }
        let queued = ring.submission().len() as u32;
        /// `IORING_ENTER_GETEVENTS`.
        const GETEVENTS: u32 = 1;
        // SAFETY: no argument is passed; the queued entries are those `push` made sound.
        unsafe {
            ring.submitter()
                .enter::<libc::sigset_t>(queued, 0, GETEVENTS, None)
        }
        .map(drop)
    }

    pub fn run(
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
        spin: Option<std::time::Duration>,
    ) -> io::Result<()> {
        let listener = TcpListener::bind(listen)?;
        println!("ring-relay: listening on {}", listener.local_addr()?);
        let lfd = listener.as_raw_fd();
        let mut ring = ring_builder().build(ENTRIES)?;
        let mut pairs: Vec<Option<Pair>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut next = 0;
        let accept =
            opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
                .build()
                .user_data(ACCEPT);
        push(&mut ring, &accept)?;
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(ENTRIES as usize * 2);
        let mut last = std::time::Instant::now();
        loop {
            enter(&mut ring, spin.is_some_and(|s| last.elapsed() < s))?;
            done.clear();
            done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            if !done.is_empty() {
                last = std::time::Instant::now();
            }
            for &(data, res) in &done {
                if data == ACCEPT {
                    if res < 0 {
                        return Err(io::Error::from_raw_os_error(-res));
                    }
                    // SAFETY: the accept just returned this descriptor; nothing else owns it.
                    let client = unsafe { TcpStream::from_raw_fd(res) };
                    client.set_nodelay(true)?;
                    let backend = connect(&backends, &mut next)?;
                    let pair = Pair {
                        socks: [client, backend],
                        bufs: [
                            vec![0; BUF].into_boxed_slice(),
                            vec![0; BUF].into_boxed_slice(),
                        ],
                        pending: [(0, 0); 2],
                        in_flight: 0,
                        closing: false,
                    };
                    let slot = match free.pop() {
                        Some(s) => {
                            pairs[s] = Some(pair);
                            s
                        }
                        None => {
                            pairs.push(Some(pair));
                            pairs.len() - 1
                        }
                    };
                    queue(&mut ring, &mut pairs, slot, 0, false)?;
                    queue(&mut ring, &mut pairs, slot, 1, false)?;
                    push(&mut ring, &accept)?;
                    continue;
                }
                let (slot, dir, was_send) = untag(data);
                let Some(p) = pairs[slot].as_mut() else {
                    continue;
                };
                p.in_flight -= 1;
                if p.closing || res <= 0 {
                    end(&mut pairs, &mut free, slot);
                    continue;
                }
                let n = res as usize;
                if was_send {
                    p.pending[dir].0 += n;
                    if p.pending[dir].0 < p.pending[dir].1 {
                        queue(&mut ring, &mut pairs, slot, dir, true)?;
                    } else {
                        queue(&mut ring, &mut pairs, slot, dir, false)?;
                    }
                } else {
                    p.pending[dir] = (0, n);
                    queue(&mut ring, &mut pairs, slot, dir, true)?;
                }
            }
        }
    }
}

/// The relay on monoio, the gateway's runtime.
mod on_monoio {
    use super::*;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
    use monoio::net::TcpStream as MonoStream;

    /// Copies one direction until it ends; then both sockets are shut down so that the
    /// other direction ends too.
    async fn copy<R: AsyncReadRent, W: monoio::io::AsyncWriteRent>(
        mut from: R,
        mut to: W,
        fds: [RawFd; 2],
    ) {
        let mut buf = vec![0u8; BUF];
        loop {
            let (r, b) = from.read(buf).await;
            buf = b;
            let n = match r {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let (r, b) = to.write_all(monoio::buf::IoBuf::slice(buf, ..n)).await;
            buf = b.into_inner();
            if r.is_err() {
                break;
            }
        }
        for fd in fds {
            // SAFETY: shutdown(2) on sockets the pair owns; they stay open until both
            // directions have dropped their halves.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    pub fn run_uring(listen: SocketAddr, backends: Vec<SocketAddr>) -> io::Result<()> {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(ENTRIES)
            .uring_builder(ring_builder())
            .build()?;
        rt.block_on(relay(listen, backends))
    }

    pub fn run_epoll(listen: SocketAddr, backends: Vec<SocketAddr>) -> io::Result<()> {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build()?;
        rt.block_on(relay(listen, backends))
    }

    async fn relay(listen: SocketAddr, backends: Vec<SocketAddr>) -> io::Result<()> {
        let listener = monoio::net::TcpListener::bind(listen)?;
        println!("ring-relay: listening on {}", listener.local_addr()?);
        let mut next = 0;
        loop {
            let (client, _) = listener.accept().await?;
            client.set_nodelay(true)?;
            let backend = connect(&backends, &mut next)?;
            backend.set_nonblocking(true)?;
            let backend = MonoStream::from_std(backend)?;
            let fds = [client.as_raw_fd(), backend.as_raw_fd()];
            let (cr, cw) = client.into_split();
            let (br, bw) = backend.into_split();
            monoio::spawn(copy(cr, bw, fds));
            monoio::spawn(copy(br, cw, fds));
        }
    }
}
