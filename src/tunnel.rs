//! A switched connection (a WebSocket after the backend's `101`): bytes relayed both ways as
//! they come, never parsed, until both sides have closed, either one fails, or no byte has
//! moved either way for `timeouts.tunnel`.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::os::fd::RawFd;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::io::{self, Read, ReadHalf, Socket, WriteHalf};

/// What went through a tunnel, each way, and how it ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub to_client: u64,
    pub to_backend: u64,
    /// Both sides closed. Otherwise one failed, or the tunnel was idle too long: both
    /// connections are then set to end in a reset, so that neither side can take a cut
    /// conversation for a finished one (a review saw a backend's reset reach the client as
    /// a clean FIN).
    pub clean: bool,
}

/// Relays between `client` and `backend` until the tunnel ends (see the module's line).
/// `bufs` are the two directions' buffers (their contents are discarded); `idle` is
/// `timeouts.tunnel`; `down` counts the bytes that reach the client as they go (from 0). A
/// side's FIN is passed on as a FIN, so a half-closed conversation
/// goes on in the other direction; a failure on either side ends both with a reset when
/// the callers close the sockets.
pub async fn relay(
    client: &mut Socket,
    backend: &mut Socket,
    bufs: [&mut Vec<u8>; 2],
    idle: Duration,
    down: &Cell<u64>,
    writes: &[Cell<Option<(RawFd, RawFd)>>; 2],
) -> Moved {
    let (client_fd, backend_fd) = (client.fd(), backend.fd());
    let (client_r, client_w) = client.split();
    let (backend_r, backend_w) = backend.split();
    let last = Cell::new(Instant::now());
    let [up_buf, down_buf] = bufs;
    let up = Cell::new(0);
    down.set(0);
    let mut up_way = pin!(one_way(
        (client_r, client_fd),
        (backend_w, backend_fd),
        up_buf,
        (idle, &last),
        &up,
        &writes[0],
    ));
    let mut down_way = pin!(one_way(
        (backend_r, backend_fd),
        (client_w, client_fd),
        down_buf,
        (idle, &last),
        down,
        &writes[1],
    ));
    let (mut up_end, mut down_end) = (None, None);
    poll_fn(|cx| {
        if up_end.is_none() {
            if let Poll::Ready(r) = up_way.as_mut().poll(cx) {
                up_end = Some(r);
            }
        }
        if down_end.is_none() {
            if let Poll::Ready(r) = down_way.as_mut().poll(cx) {
                down_end = Some(r);
            }
        }
        match (up_end, down_end) {
            (Some(End::Failed), _) | (_, Some(End::Failed)) => Poll::Ready(()),
            (Some(End::Closed), Some(End::Closed)) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    })
    .await;
    let clean = up_end == Some(End::Closed) && down_end == Some(End::Closed);
    if !clean {
        io::set_reset_on_close(client_fd);
        io::set_reset_on_close(backend_fd);
    }
    Moved {
        to_client: down.get(),
        to_backend: up.get(),
        clean,
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its sender closed, and the FIN was passed on.
    Closed,
    /// Reset, refused, or idle too long (both ways), or its receiver took nothing for
    /// `idle`.
    Failed,
}

/// One direction: what `src` sends goes to `dst` until `src` closes or fails. `last` is when
/// a byte last moved either way: a read that times out waits on while the other direction
/// moves. `moved` counts what reached `dst`. While it writes, `writing` holds both sockets,
/// so that the worker's watch ends the write if `src` is reset meanwhile (nothing else
/// reads `src` then).
async fn one_way(
    (src, src_fd): (&mut ReadHalf, RawFd),
    (dst, dst_fd): (&mut WriteHalf, RawFd),
    buf: &mut Vec<u8>,
    (idle, last): (Duration, &Cell<Instant>),
    moved: &Cell<u64>,
    writing: &Cell<Option<(RawFd, RawFd)>>,
) -> End {
    /// Clears the cell however the write ends, the future dropped included: the watch must
    /// never shut down a descriptor closed meanwhile, whose number another socket may take.
    struct Writing<'a>(&'a Cell<Option<(RawFd, RawFd)>>);
    impl Drop for Writing<'_> {
        fn drop(&mut self) {
            self.0.set(None);
        }
    }
    loop {
        let left = idle.saturating_sub(last.get().elapsed());
        if left.is_zero() {
            return End::Failed;
        }
        let mut start = 0;
        buf.clear();
        match io::read_more(src, buf, &mut start, io::BUF_SIZE, left).await {
            Read::Data(_) => {
                last.set(Instant::now());
                let n = buf.len() as u64;
                writing.set(Some((src_fd, dst_fd)));
                let guard = Writing(writing);
                let wrote = io::write_all(dst, buf, idle).await;
                drop(guard);
                if wrote.is_err() {
                    return End::Failed;
                }
                moved.set(moved.get() + n);
                last.set(Instant::now());
            }
            Read::Eof => {
                io::shutdown_write(dst_fd);
                return End::Closed;
            }
            // Quiet this way: end only if the other way was quiet as long.
            Read::Timeout => {}
            Read::Err(_) => return End::Failed,
        }
    }
}
