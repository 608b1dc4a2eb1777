//! Owned-buffer socket I/O with deadlines, on monoio's rent-style API, and the split socket
//! that lets one task read and write the same connection at once.
//!
//! monoio takes buffers by value for the duration of an operation (io_uring writes into
//! them asynchronously). These helpers lend a connection's `Vec` to one read or write and
//! put it back. When a deadline fires the in-flight operation is dropped and its buffer
//! with it (the `Vec` is left empty, with fresh capacity); the caller then closes the
//! connection, which is the only safe thing to do with a socket that may have lost or
//! half-sent bytes (see design.md §6). A timeout is never mistaken for a closed peer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::time::{Instant, Sleep};

/// Capacity of the I/O buffers a worker lends to requests.
pub const BUF_SIZE: usize = 8 * 1024;

/// The reading side of a [`Socket`].
pub type ReadHalf = OwnedReadHalf<TcpStream>;
/// The writing side of a [`Socket`].
pub type WriteHalf = OwnedWriteHalf<TcpStream>;

/// A TCP connection split once, when it is opened, into halves that can be in flight at the
/// same time (a request body going up while the response comes down).
///
/// Dropping it closes the connection with a plain close: the halves are reunited first,
/// because monoio's write half sends FIN when dropped on its own, which would turn an
/// intended reset (see [`set_reset_on_close`]) into a clean end.
pub struct Socket {
    r: ManuallyDrop<ReadHalf>,
    w: ManuallyDrop<WriteHalf>,
    fd: RawFd,
}

impl Socket {
    pub fn new(stream: TcpStream) -> Socket {
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let (r, w) = stream.into_split();
        Socket {
            r: ManuallyDrop::new(r),
            w: ManuallyDrop::new(w),
            fd,
        }
    }

    pub fn r(&mut self) -> &mut ReadHalf {
        &mut self.r
    }

    pub fn w(&mut self) -> &mut WriteHalf {
        &mut self.w
    }

    /// Both halves, to be used at once.
    pub fn split(&mut self) -> (&mut ReadHalf, &mut WriteHalf) {
        (&mut self.r, &mut self.w)
    }

    /// Waits until the connection has bytes to read (or was closed or shut down), holding no
    /// buffer meanwhile: an idle connection's wait costs no memory of its own.
    pub async fn readable(&self) -> io::Result<()> {
        // SAFETY: a shared borrow of the stream both halves own (`OwnedReadHalf` exposes its
        // `Rc<UnsafeCell<_>>`); `readable` only submits a poll on the descriptor, and no
        // operation on the halves can take it mutably while `&self` is held.
        let stream: &TcpStream = unsafe { &*self.r.0.get() };
        stream.readable(false).await
    }

    /// The descriptor, for socket options and non-blocking checks (valid while `self` lives).
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: each field is taken exactly once, here, and never used again.
        let (r, w) = unsafe {
            (
                ManuallyDrop::take(&mut self.r),
                ManuallyDrop::take(&mut self.w),
            )
        };
        // Reuniting succeeds (both halves of one stream); the stream then closes normally.
        drop(r.reunite(w));
    }
}

/// How a read ended.
#[derive(Debug)]
pub enum Read {
    /// This many new bytes were appended.
    Data(usize),
    /// The peer closed its side.
    Eof,
    Timeout,
    Err(io::Error),
}

/// Appends what the socket has to `buf[..]`, first discarding the consumed prefix
/// `buf[..*start]` when room is needed, and keeping at least `min_free` bytes of room.
pub async fn read_more<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    start: &mut usize,
    min_free: usize,
    deadline: Duration,
) -> Read {
    read_into(stream, buf, start, min_free, usize::MAX, deadline, None).await
}

/// [`read_more`] asking for exactly `room` bytes (at least that much room is made), however
/// much more spare capacity the buffer has: what is read is written on whole, and a write
/// must stay below the largest segment (see `relay::ReadRoom`). `hold` may push the
/// deadline back (see [`timed_held`]).
pub async fn read_at_most<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    start: &mut usize,
    room: usize,
    deadline: Duration,
    hold: Option<&Hold>,
) -> Read {
    read_into(stream, buf, start, room, room, deadline, hold).await
}

/// One read of at most `max` bytes into the buffer's spare capacity, after making room;
/// `hold` may push the deadline back.
async fn read_into<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    start: &mut usize,
    min_free: usize,
    max: usize,
    deadline: Duration,
    hold: Option<&Hold>,
) -> Read {
    make_room(buf, start, min_free);
    let b = std::mem::take(buf);
    let (len, cap) = (b.len(), b.capacity());
    let end = cap.min(len.saturating_add(max));
    let read = stream.read(b.slice_mut(len..end));
    let done = match hold {
        None => timed(deadline, read).await,
        hold => timed_held(deadline, hold, read).await,
    };
    match done {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            read_result(res)
        }
        // The buffer went with the operation: a fresh one in its place.
        Err(_) => {
            *buf = Vec::with_capacity(cap);
            *start = 0;
            Read::Timeout
        }
    }
}

/// [`read_more`] without a deadline, for a wait that something else bounds (an idle
/// connection is ended by its worker's once-a-second sweep): no timer, a smaller future.
pub async fn read_more_untimed<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    start: &mut usize,
    min_free: usize,
) -> Read {
    make_room(buf, start, min_free);
    let b = std::mem::take(buf);
    let (len, cap) = (b.len(), b.capacity());
    let (res, slice) = stream.read(b.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    read_result(res)
}

fn make_room(buf: &mut Vec<u8>, start: &mut usize, min_free: usize) {
    if *start == buf.len() {
        buf.clear();
        *start = 0;
    } else if *start > 0 && buf.capacity() - buf.len() < min_free {
        buf.copy_within(*start.., 0);
        buf.truncate(buf.len() - *start);
        *start = 0;
    }
    if buf.capacity() - buf.len() < min_free {
        buf.reserve(min_free);
    }
}

fn read_result(res: io::Result<usize>) -> Read {
    match res {
        Ok(0) => Read::Eof,
        Ok(n) => Read::Data(n),
        Err(e) => Read::Err(e),
    }
}

/// Writes all of `out`; on success `out` keeps its contents. On timeout the error kind is
/// `TimedOut` and `out` is empty (its bytes may be half sent: close the connection).
pub async fn write_all<W: AsyncWriteRent>(
    stream: &mut W,
    out: &mut Vec<u8>,
    deadline: Duration,
) -> io::Result<()> {
    let len = out.len();
    write_range(stream, out, 0, len, deadline).await
}

/// Writes all of `buf[from..to]`; on success `buf` keeps its contents. On timeout the error
/// kind is `TimedOut` and `buf` is empty (close the connection, as with [`write_all`]).
pub async fn write_range<W: AsyncWriteRent>(
    stream: &mut W,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    deadline: Duration,
) -> io::Result<()> {
    let b = std::mem::take(buf);
    let cap = b.capacity();
    match timed(deadline, stream.write_all(b.slice(from..to))).await {
        Ok((res, s)) => {
            *buf = s.into_inner();
            res.map(|_| ())
        }
        Err(_) => {
            *buf = Vec::with_capacity(cap);
            Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
        }
    }
}

/// One write of `buf[from..to]`, or of as much of it as the socket takes now; returns how
/// many bytes went. On timeout the error kind is `TimedOut` and `buf` is empty (close the
/// connection, as with [`write_all`]).
pub async fn write_some<W: AsyncWriteRent>(
    stream: &mut W,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    deadline: Duration,
) -> io::Result<usize> {
    let b = std::mem::take(buf);
    let cap = b.capacity();
    match timed(deadline, stream.write(b.slice(from..to))).await {
        Ok((res, s)) => {
            *buf = s.into_inner();
            match res {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                r => r,
            }
        }
        Err(_) => {
            *buf = Vec::with_capacity(cap);
            Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
        }
    }
}

/// Writes `bufs[i][ranges[i]]`, in order, with one `writev` when the socket takes it all
/// (the rest, if not, with plain writes): a request head and the body bytes in hand go up
/// together without the body being copied behind the head. On success the buffers keep
/// their contents; on timeout the error kind is `TimedOut` and all three are empty (close
/// the connection, as with [`write_all`]).
pub async fn write_gather<W: AsyncWriteRent>(
    stream: &mut W,
    mut bufs: [&mut Vec<u8>; 3],
    ranges: [Range<usize>; 3],
    deadline: Duration,
) -> io::Result<()> {
    let total: usize = ranges.iter().map(|r| r.len()).sum();
    let gather = Gather::new(bufs.each_mut().map(|b| std::mem::take(&mut **b)), &ranges);
    let caps = gather.bufs.each_ref().map(|b| b.capacity());
    let (res, gather) = match timed(deadline, stream.writev(gather)).await {
        Ok(done) => done,
        Err(_) => {
            for (buf, cap) in bufs.into_iter().zip(caps) {
                *buf = Vec::with_capacity(cap);
            }
            return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
        }
    };
    for (buf, part) in bufs.iter_mut().zip(gather.into_bufs()) {
        **buf = part;
    }
    let mut sent = res?;
    if sent == total {
        return Ok(());
    }
    // A short write (a full send buffer): the rest part by part.
    for (i, range) in ranges.into_iter().enumerate() {
        let skip = sent.min(range.len());
        sent -= skip;
        if skip == range.len() {
            continue;
        }
        let r = write_range(stream, bufs[i], range.start + skip, range.end, deadline).await;
        if let Err(e) = r {
            if e.kind() == io::ErrorKind::TimedOut {
                // As when the first write timed out: nothing is left to resend by mistake.
                bufs.iter_mut().for_each(|b| b.clear());
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The most spare iovec arrays a thread keeps for [`write_gather`]; more are freed.
const MAX_SPARE_IOVECS: usize = 1024;

thread_local! {
    /// This thread's spare iovec arrays (see [`Gather`]). Boxed, unlike what clippy would
    /// have: each array is lent out on its own, and must not move while it is.
    #[allow(clippy::vec_box)]
    static SPARE_IOVECS: RefCell<Vec<Box<[libc::iovec; 3]>>> = const { RefCell::new(Vec::new()) };
}

/// Owned buffers lent to one `writev`, with the iovecs that point into them. The iovecs are
/// boxed: monoio takes their address before it moves the operation (and this with it) into
/// place. The boxes are reused per thread, so a gathered write allocates nothing.
struct Gather {
    /// Always `Some` until dropped.
    iov: Option<Box<[libc::iovec; 3]>>,
    /// How many iovecs are in use (empty parts are left out).
    n: usize,
    bufs: [Vec<u8>; 3],
}

impl Gather {
    fn new(bufs: [Vec<u8>; 3], ranges: &[Range<usize>; 3]) -> Gather {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iov = SPARE_IOVECS
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| Box::new([empty; 3]));
        let mut n = 0;
        for (buf, range) in bufs.iter().zip(ranges) {
            if range.is_empty() {
                continue;
            }
            // Checked like a slice index: a range outside the buffer panics here, before
            // the kernel could read outside it.
            let part = &buf[range.clone()];
            iov[n] = libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            };
            n += 1;
        }
        Gather {
            iov: Some(iov),
            n,
            bufs,
        }
    }

    fn into_bufs(mut self) -> [Vec<u8>; 3] {
        std::mem::take(&mut self.bufs)
    }
}

// SAFETY: the iovecs point into the heap blocks of `bufs`, which are neither touched nor
// freed while the runtime owns the value (moving a `Vec` does not move its block), and they
// live in a box whose address does not change when the value moves.
unsafe impl monoio::buf::IoVecBuf for Gather {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ref().map_or(std::ptr::null(), |b| b.as_ptr())
    }

    fn read_iovec_len(&self) -> usize {
        self.n
    }
}

impl Drop for Gather {
    fn drop(&mut self) {
        if let Some(iov) = self.iov.take() {
            let _ = SPARE_IOVECS.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < MAX_SPARE_IOVECS {
                    s.push(iov);
                }
            });
        }
    }
}

/// The most spare timers a thread keeps for [`timed`]; more are freed.
const MAX_SPARE_TIMERS: usize = 4096;

thread_local! {
    /// This thread's spare timers, bound to this thread's runtime. They spare each timed
    /// operation an allocation, and keep the timer (large and cache-line aligned) out of the
    /// operation's future, which is moved around. A spare timer may still be registered and
    /// hold the waker of the task that used it last: it lets go when it is reused or fires
    /// (one timeout later at most), so a finished task's memory outlives it by that long at
    /// most, and a task may be woken once for nothing.
    static SPARE_TIMERS: RefCell<SpareTimers> = const {
        RefCell::new(SpareTimers { timers: Vec::new(), low: 0 })
    };
}

/// A thread's spare timers, and the fewest there were since the last
/// [`trim_spare_timers`].
struct SpareTimers {
    timers: Vec<Pin<Box<Sleep>>>,
    low: usize,
}

/// Frees the spare timers no timed operation needed since the last call (as many as the
/// fewest spares there were meanwhile), as `Worker::trim_spares` does for buffers; returns
/// the bytes freed. Housekeeping runs it once a second. Kept for good, the timers a burst
/// of 4 500 slow clients left behind (one per connection, each amid the connections' freed
/// blocks) held 49 MB in two workers that `malloc_trim` could not return; freed, 14 MB (a
/// review, Intel Xeon VM, 2 cores, 2026-12-05).
pub fn trim_spare_timers() -> usize {
    SPARE_TIMERS
        .try_with(|t| {
            let t = &mut *t.borrow_mut();
            let unused = t.low.min(t.timers.len());
            let keep = t.timers.len() - unused;
            t.timers.truncate(keep);
            t.low = keep;
            unused * std::mem::size_of::<Sleep>()
        })
        .unwrap_or(0)
}

/// Drops this thread's spare timers. They belong to the runtime that made them: a thread
/// that builds a runtime calls this first (see `server::build_runtime`), so no timer of an
/// earlier runtime, whose driver no longer runs, is ever reused.
pub fn forget_spare_timers() {
    let _ = SPARE_TIMERS.try_with(|t| t.borrow_mut().timers.clear());
}

/// `fut` with a deadline `after` from now: `Err(Elapsed)` once it passes, `fut` dropped
/// with it. What `monoio::time::timeout` does, with a small future and no allocation.
///
/// Each use gets a fresh timer, built in a spare one's place: a monoio 0.2.4 timer cannot
/// simply be re-armed. It keeps the first waker it was polled with until it fires (reused
/// by another task, it would wake the wrong one), and one moved to an earlier deadline
/// fires late, with the next other timer (seen: moved from 1 h to 30 ms, it fired after
/// 2 s). Keeping timers armed across uses (through a waker of our own) saved another 0.7%
/// of instructions per request, not worth that subtlety.
pub fn timed<F: Future>(after: Duration, fut: F) -> Timed<F> {
    let now = Instant::from_std(crate::clock::now());
    let at = now
        .checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
    let timer = match SPARE_TIMERS.with(|t| {
        let t = &mut *t.borrow_mut();
        let timer = t.timers.pop();
        t.low = t.low.min(t.timers.len());
        timer
    }) {
        Some(mut timer) => {
            timer.set(monoio::time::sleep_until(at));
            timer
        }
        None => Box::pin(monoio::time::sleep_until(at)),
    };
    Timed {
        fut,
        timer: Some(timer),
    }
}

/// A wait's floor that another task sets: while it holds an instant still to come, a wait
/// under [`timed_held`] goes on until then. The full-duplex upload holds the response's
/// waits open while it runs: a backend may answer only once it has the whole body.
pub type Hold = Cell<Option<std::time::Instant>>;

/// [`timed`], except that when `after` passes while `hold` is later than now, `fut` is
/// kept and the wait goes on, at most `after` at a time, until then. The operation is
/// never dropped in between, so no bytes it may have taken are lost.
pub async fn timed_held<F: Future>(
    after: Duration,
    hold: Option<&Hold>,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    let mut wait = after;
    loop {
        match timed(wait, fut.as_mut()).await {
            Ok(v) => return Ok(v),
            Err(Elapsed) => match held_for(hold, after) {
                Some(more) => wait = more,
                None => return Err(Elapsed),
            },
        }
    }
}

/// Whether `hold` stretches a wait that has just run out, and by how much.
pub fn held_for(hold: Option<&Hold>, after: Duration) -> Option<Duration> {
    let until = hold?.get()?;
    let now = std::time::Instant::now();
    (until > now).then(|| (until - now).min(after))
}

/// A deadline passed (see [`timed`]).
#[derive(Debug)]
pub struct Elapsed;

/// The future [`timed`] returns.
pub struct Timed<F> {
    fut: F,
    /// Always `Some` until dropped.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: Future> Future for Timed<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: nothing is moved out of `self` here; `timer` is not structurally pinned
        // (it is a `Pin<Box<_>>` of its own).
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: `fut` is structurally pinned: it is never moved out of `Timed`, and
        // `Timed`'s `Drop` does not move it.
        let fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        if let Poll::Ready(v) = fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.timer.as_mut().map(|t| t.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(Err(Elapsed)),
        }
    }
}

impl<F> Drop for Timed<F> {
    fn drop(&mut self) {
        let Some(timer) = self.timer.take() else {
            return;
        };
        // Kept as it is: rebuilding it here would need the runtime's context, which a task
        // dropped with its runtime (or with the thread) no longer has. A timer not kept is
        // deregistered by its own drop, which needs no context.
        let _ = SPARE_TIMERS.try_with(|t| {
            let timers = &mut t.borrow_mut().timers;
            if timers.len() < MAX_SPARE_TIMERS {
                timers.push(timer);
            }
        });
    }
}

/// Makes the coming close send RST instead of FIN, so the peer sees an aborted message
/// rather than a clean end of a close-delimited body.
pub fn set_reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is a live socket owned by the caller; the option value is a plain struct
    // of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An integer `SOL_SOCKET` option of `fd`; None if it is no socket (or no longer open).
pub fn socket_opt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes into `v`; on a descriptor that is not
    // a socket (or no longer open) it fails.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Sets every connected TCP socket of the process to reset on close (listeners aside), for
/// an exit that cuts whatever is in flight; returns how many. A descriptor closed or reused
/// meanwhile by a worker is harmless: the options are only read and set on sockets.
pub fn reset_every_connection() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut n = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let inet = matches!(
            socket_opt(fd, libc::SO_DOMAIN),
            Some(libc::AF_INET | libc::AF_INET6)
        );
        if inet
            && socket_opt(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
            && socket_opt(fd, libc::SO_ACCEPTCONN) == Some(0)
        {
            set_reset_on_close(fd);
            n += 1;
        }
    }
    n
}

/// Sends FIN (no more bytes from us) while the connection stays open for reading.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain shutdown(2) on a live socket owned by the caller.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Appends what the socket already holds, up to `max` bytes, without waiting (non-blocking
/// `recv` into the spare capacity of `buf`, which the caller has reserved). Returns the
/// bytes read; an empty socket, EOF or an error read nothing here and are left for the
/// next read to find. Only for a socket with no read in flight.
pub fn read_ready(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> usize {
    let mut total = 0;
    while total < max {
        let room = (buf.capacity() - buf.len()).min(max - total);
        if room == 0 {
            break;
        }
        // SAFETY: writes at most `room` bytes into the vector's spare capacity, and the
        // length is extended only by what recv reports written.
        let n = unsafe {
            let end = buf.as_mut_ptr().add(buf.len());
            libc::recv(fd, end.cast(), room, libc::MSG_DONTWAIT)
        };
        if n <= 0 {
            break;
        }
        // SAFETY: recv initialised these `n` bytes (n <= room).
        unsafe { buf.set_len(buf.len() + n as usize) };
        total += n as usize;
    }
    total
}

/// Peeks at one byte without waiting: how many are there (0: EOF), or why none could be.
fn peek_one(fd: RawFd) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK consumes nothing and MSG_DONTWAIT never
    // blocks. An invalid fd just reports an error.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// True when nothing is waiting to be read on the socket (no data, no EOF, no error).
pub fn is_quiet(fd: RawFd) -> bool {
    idle_state(fd) == Idle::Quiet
}

/// What an idle connection's socket holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Nothing to read.
    Quiet,
    /// The peer closed it (EOF), or it failed.
    Closed,
    /// Bytes nobody asked for.
    Data,
}

/// [`Idle`] of `fd`, by a one-byte non-blocking peek. A `408` is a server closing an idle
/// connection, as some do on their idle timeout (Go's `http.Transport` reads it so too):
/// closed, not a response sent twice or late.
pub fn idle_state(fd: RawFd) -> Idle {
    match peek_one(fd) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Idle::Quiet,
        Ok(n) if n > 0 && !starts_408(fd) => Idle::Data,
        _ => Idle::Closed,
    }
}

/// Whether what waits on `fd` begins with a `408` status line (peeked, nothing consumed).
fn starts_408(fd: RawFd) -> bool {
    let mut head = [0u8; 12];
    // SAFETY: a buffer we own, of the length given; MSG_PEEK consumes nothing and
    // MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            head.as_mut_ptr().cast(),
            head.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == head.len() as isize && matches!(&head, b"HTTP/1.1 408" | b"HTTP/1.0 408")
}

/// Sets `TCP_NOTSENT_LOWAT` on a socket; false if the kernel refused it.
pub fn set_notsent_lowat(fd: RawFd, bytes: libc::c_int) -> bool {
    // SAFETY: setsockopt on a live socket, with a pointer to a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// What the kernel says of a TCP connection's traffic: the bytes that moved in all (sent
/// and acknowledged by the peer, plus received from it and read by us: bytes a peer sends
/// that nobody reads, such as a next request's head sent ahead, are no progress, a review
/// held a slot with 300 bytes a second of them), and the bytes waiting in the send queue,
/// not yet sent (a peer that reads nothing closes its window, and the queue fills). None
/// if the socket cannot say.
pub fn transfer_progress(fd: RawFd) -> Option<(u64, u32)> {
    // SAFETY: all-zero is a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a live socket owned by the caller; `info` is writable for `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // Kernels before 4.6 fill less than the fields read here.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_notsent_bytes) + 4;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD on a live socket writes one c_int.
    let q = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut unread) };
    let read = info
        .tcpi_bytes_received
        .saturating_sub(u64::try_from(unread).unwrap_or(0));
    let moved = info.tcpi_bytes_acked.wrapping_add(read);
    (r == 0 && q == 0 && len as usize >= needed).then_some((moved, info.tcpi_notsent_bytes))
}

/// What a peer has done to its connection, as far as a peek of one byte sees: a FIN or a
/// reset behind bytes still unread is not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Nothing, or it sent bytes.
    Here,
    /// It closed its side (FIN): it may still read.
    Closed,
    /// It reset the connection (or the socket is broken): nothing can reach it.
    Reset,
}

/// See [`Peer`].
pub fn peer(fd: RawFd) -> Peer {
    match peek_one(fd) {
        Ok(0) => Peer::Closed,
        Ok(_) => Peer::Here,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Peer::Here
        }
        Err(_) => Peer::Reset,
    }
}

/// What a client has done to its connection, seen behind bytes it sent and that are still
/// unread too (where [`peer`]'s peek stops at the first of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Nothing, or it sent bytes and is still sending.
    Here,
    /// It closed its side (FIN), with `unread` bytes before it: it may still read.
    Closed { unread: bool },
    /// It reset the connection (or the socket is broken): nothing can reach it.
    Reset,
}

/// See [`End`]: a peek of one byte, and where that finds bytes, `poll`'s `POLLRDHUP`
/// (NGINX's `pending_eof`), which sees a FIN behind them.
pub fn client_end(fd: RawFd) -> End {
    match peer(fd) {
        Peer::Reset => End::Reset,
        Peer::Closed => End::Closed { unread: false },
        Peer::Here => {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            // SAFETY: one pollfd we own; a zero timeout never blocks.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n <= 0 {
                End::Here
            } else if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                End::Reset
            } else if p.revents & libc::POLLRDHUP != 0 {
                End::Closed { unread: true }
            } else {
                End::Here
            }
        }
    }
}

/// Whether the socket `fd` has a pending error (a reset), by `poll`'s `POLLERR` alone: a
/// socket both ends of which were shut down in order also says `POLLHUP`, with bytes
/// perhaps still to read, and is no failure.
pub fn reset_seen(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd we own; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLERR != 0
}

/// Peeks at up to `max` bytes the socket holds, appended to `out`, without taking them.
pub fn peek_into(fd: RawFd, out: &mut Vec<u8>, max: usize) {
    out.reserve(max);
    let spare = out.spare_capacity_mut();
    let room = spare.len().min(max);
    // SAFETY: `room` bytes of spare capacity we own; MSG_PEEK consumes nothing and
    // MSG_DONTWAIT never blocks.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast(),
            room,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n > 0 {
        // SAFETY: the kernel wrote `n` bytes there.
        unsafe { out.set_len(out.len() + n as usize) };
    }
}

/// True when a connection waits to be accepted on the listening socket `fd`.
pub fn accept_pending(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd we own; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// Accepts one connection waiting on the non-blocking listening socket `fd` without
/// waiting: `None` when none waits. The new socket is close-on-exec, and non-blocking only
/// if `nonblocking` (the epoll driver needs that; io_uring's own accept leaves it blocking,
/// and so does this for it).
pub fn accept_now(
    fd: RawFd,
    nonblocking: bool,
) -> Option<io::Result<(std::net::TcpStream, std::net::SocketAddr)>> {
    // SAFETY: `fd` is the caller's open listening socket, borrowed for this call only.
    let listener = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let accepted = socket2::SockRef::from(&listener)
        .accept()
        .and_then(|(s, peer)| {
            if nonblocking {
                s.set_nonblocking(true)?;
            }
            let peer = peer.as_socket().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "peer is not an IP address")
            })?;
            Ok((std::net::TcpStream::from(s), peer))
        });
    match accepted {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    fn spare_timers() -> usize {
        SPARE_TIMERS.with(|t| t.borrow().timers.len())
    }

    /// A connected client socket and the server side of it.
    fn tcp_pair(l: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }

    #[test]
    fn a_peer_closed_after_a_fin_reset_after_a_reset_and_is_here_otherwise() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pair = || tcp_pair(&l);
        let settle = || std::thread::sleep(Duration::from_millis(50));
        let (mut c, s) = pair();
        assert!(peer(s.as_raw_fd()) == Peer::Here && is_quiet(s.as_raw_fd()));
        c.write_all(b"x").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        settle();
        assert_eq!(
            peer(s.as_raw_fd()),
            Peer::Here,
            "a byte before the FIN is unread"
        );
        let (c, s) = pair();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        settle();
        assert!(peer(s.as_raw_fd()) == Peer::Closed && !is_quiet(s.as_raw_fd()));
        let (c, s) = pair();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        settle();
        assert_eq!(peer(s.as_raw_fd()), Peer::Reset);
        assert_eq!(peer(-1), Peer::Reset, "not a socket");
    }

    /// What `peer` cannot see, `client_end` does: a FIN or a reset behind unread bytes.
    #[test]
    fn a_clients_end_is_seen_behind_bytes_it_sent() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pair = || tcp_pair(&l);
        let settle = || std::thread::sleep(Duration::from_millis(50));
        let (mut c, s) = pair();
        assert_eq!(client_end(s.as_raw_fd()), End::Here);
        c.write_all(b"GET").unwrap();
        settle();
        assert_eq!(client_end(s.as_raw_fd()), End::Here, "bytes, no FIN");
        let mut peeked = b"x".to_vec();
        peek_into(s.as_raw_fd(), &mut peeked, 2);
        assert_eq!(peeked, b"xGE", "appended, at most max");
        c.shutdown(std::net::Shutdown::Write).unwrap();
        settle();
        assert_eq!(client_end(s.as_raw_fd()), End::Closed { unread: true });
        let (c, s) = pair();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        settle();
        assert_eq!(client_end(s.as_raw_fd()), End::Closed { unread: false });
        let (mut c, s) = pair();
        c.write_all(b"G").unwrap();
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        settle();
        assert_eq!(client_end(s.as_raw_fd()), End::Reset, "reset behind a byte");
        assert_eq!(client_end(-1), End::Reset, "not a socket");
    }

    /// Runs `f` on each driver the workers use (io_uring when the kernel has it, epoll).
    fn on_each_driver<F: Future<Output = ()>>(f: impl Fn() -> F) {
        forget_spare_timers();
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(f());
        if monoio::utils::detect_uring() {
            forget_spare_timers();
            let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .unwrap();
            rt.block_on(f());
        }
        forget_spare_timers();
    }

    /// Times a timed operation that never completes: it must end as elapsed, and within
    /// 5 s (a deadline that never fires fails the test instead of hanging it).
    async fn time_out_after(ms: u64) -> Duration {
        let t0 = std::time::Instant::now();
        let op = timed(Duration::from_millis(ms), std::future::pending::<()>());
        let r = monoio::time::timeout(Duration::from_secs(5), op)
            .await
            .expect("the deadline never fired");
        assert!(r.is_err());
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(ms), "{waited:?}");
        waited
    }

    #[test]
    fn a_deadline_ends_an_operation_that_never_completes() {
        on_each_driver(|| async {
            time_out_after(30).await;
            let r = timed(Duration::from_secs(5), async { 7 }).await;
            assert_eq!(r.ok(), Some(7));
        });
    }

    #[test]
    fn a_timer_reused_after_firing_waits_its_whole_new_deadline() {
        on_each_driver(|| async {
            let r = timed(Duration::from_millis(5), std::future::pending::<()>()).await;
            assert!(r.is_err());
            assert_eq!(spare_timers(), 1);
            monoio::time::sleep(Duration::from_millis(20)).await;
            // Reused, it must wait the whole new deadline, not report the old expiry.
            let r = timed(
                Duration::from_millis(300),
                monoio::time::sleep(Duration::from_millis(60)),
            )
            .await;
            assert!(r.is_ok(), "a fired spare timer cut a fresh deadline short");
            assert_eq!(spare_timers(), 1, "the timer was reused, not replaced");
            // A spare still registered (due in 20 ms) and moved forward: it must not fire
            // at its old expiry either.
            let mut op = Box::pin(timed(
                Duration::from_millis(20),
                std::future::pending::<()>(),
            ));
            let _ = op.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            drop(op);
            let r = timed(
                Duration::from_millis(300),
                monoio::time::sleep(Duration::from_millis(60)),
            )
            .await;
            assert!(r.is_ok(), "a spare timer fired at its old expiry");
            assert_eq!(spare_timers(), 1);
        });
    }

    /// Regression (a review): the spare timers a burst of connections left behind were
    /// kept for good, 49 MB in two workers after 4 500 slow clients, which `malloc_trim`
    /// could not return. Those no operation needed for a whole tick are freed.
    #[test]
    fn spare_timers_a_burst_left_are_freed_once_a_tick_passes_without_them() {
        on_each_driver(|| async {
            forget_spare_timers();
            trim_spare_timers();
            // A burst: 100 operations waiting at once, their timers then spare.
            let ops: Vec<_> = (0..100)
                .map(|_| Box::pin(timed(Duration::from_secs(5), std::future::pending::<()>())))
                .collect();
            drop(ops);
            assert_eq!(spare_timers(), 100);
            // Needed during this tick (the burst took every one): none freed yet.
            assert_eq!(trim_spare_timers(), 0);
            assert_eq!(spare_timers(), 100);
            // Ten in use at once during the next tick: the other 90 go.
            let ops: Vec<_> = (0..10)
                .map(|_| Box::pin(timed(Duration::from_secs(5), std::future::pending::<()>())))
                .collect();
            drop(ops);
            let freed = trim_spare_timers();
            assert_eq!(spare_timers(), 10);
            assert_eq!(freed, 90 * std::mem::size_of::<Sleep>());
            // A tick with none used: the rest go too.
            trim_spare_timers();
            assert_eq!(spare_timers(), 0);
        });
    }

    #[test]
    fn a_shorter_deadline_on_a_reused_timer_fires_on_time() {
        on_each_driver(|| async {
            // The spare timer was last armed an hour out, and polled...
            let mut long = Box::pin(timed(
                Duration::from_secs(3600),
                std::future::pending::<()>(),
            ));
            let _ = long.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            drop(long);
            // ...and a later, shorter deadline on it still fires when due.
            time_out_after(30).await;
            assert_eq!(spare_timers(), 1);
        });
    }

    #[test]
    fn a_reused_timer_wakes_the_task_that_uses_it_now() {
        on_each_driver(|| async {
            // Another task polls a timed operation and gives it up: its timer goes spare.
            monoio::spawn(async {
                let mut op = Box::pin(timed(
                    Duration::from_millis(20),
                    std::future::pending::<()>(),
                ));
                let _ = std::future::poll_fn(|cx| {
                    let _ = op.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
            })
            .await;
            assert_eq!(spare_timers(), 1);
            // This task's deadline, on the same timer, must wake this task.
            time_out_after(40).await;
            assert_eq!(spare_timers(), 1);
        });
    }

    /// A monoio stream connected to a plain one, its peer.
    async fn pair() -> (TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (peer, _) = l.accept().unwrap();
        (s, peer)
    }

    /// Shrinks a socket's send buffer, so that a large write is taken only in part.
    fn small_send_buffer(s: &TcpStream) {
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt on a live socket, with a pointer to a c_int of the right size.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 13 + seed) % 251) as u8).collect()
    }

    #[test]
    fn a_capped_read_takes_no_more_than_its_room_whatever_the_capacity() {
        on_each_driver(|| async {
            let (mut s, mut peer) = pair().await;
            let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            std::io::Write::write_all(&mut peer, &sent).unwrap();
            // A recycled buffer with far more spare capacity than the room asked for, and
            // bytes before `start` that were already consumed.
            let mut buf = Vec::with_capacity(128 * 1024);
            buf.extend_from_slice(b"old");
            let mut start = 3;
            let mut got = Vec::new();
            while got.len() < sent.len() {
                match read_at_most(
                    &mut s,
                    &mut buf,
                    &mut start,
                    1000,
                    Duration::from_secs(5),
                    None,
                )
                .await
                {
                    Read::Data(n) => {
                        assert!(n <= 1000, "read {n} bytes for a room of 1000");
                        assert_eq!(buf.len() - start, n);
                        got.extend_from_slice(&buf[start..]);
                        start = buf.len();
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, sent);
            assert!(
                buf.capacity() >= 128 * 1024,
                "the buffer was not reallocated"
            );
        });
    }

    #[test]
    fn a_gathered_write_sends_the_ranges_in_order_and_keeps_the_buffers() {
        on_each_driver(|| async {
            let (mut s, mut peer) = pair().await;
            let (mut a, mut b, mut c) = (b"head:".to_vec(), b"..body..".to_vec(), b"rest".to_vec());
            let bufs = [&mut a, &mut b, &mut c];
            write_gather(&mut s, bufs, [0..5, 2..6, 0..4], Duration::from_secs(5))
                .await
                .unwrap();
            // An empty part is left out.
            let mut none = Vec::new();
            let bufs = [&mut a, &mut none, &mut c];
            write_gather(&mut s, bufs, [0..5, 0..0, 1..4], Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(
                (&a[..], &b[..], &c[..]),
                (&b"head:"[..], &b"..body.."[..], &b"rest"[..])
            );
            let spare = SPARE_IOVECS.with(|s| s.borrow().len());
            assert_eq!(spare, 1, "the iovec box was not reused");
            // Read exactly that much: a dropped monoio stream is closed only when its
            // runtime runs again, which this blocking read would prevent.
            let mut got = [0u8; 21];
            std::io::Read::read_exact(&mut peer, &mut got).unwrap();
            assert_eq!(&got, b"head:bodyresthead:est");
        });
    }

    #[test]
    fn a_short_gathered_write_is_finished_part_by_part() {
        on_each_driver(|| async {
            let (mut s, peer) = pair().await;
            small_send_buffer(&s);
            let (mut a, mut b, mut c) = (
                pattern(300_000, 1),
                pattern(300_000, 2),
                pattern(300_000, 3),
            );
            let ranges = [10..250_000, 0..300_000, 5..299_999];
            let mut want = a[ranges[0].clone()].to_vec();
            want.extend_from_slice(&b[ranges[1].clone()]);
            want.extend_from_slice(&c[ranges[2].clone()]);
            let len = want.len();
            let reader = std::thread::spawn(move || {
                let mut peer = peer;
                let mut got = vec![0u8; len];
                std::io::Read::read_exact(&mut peer, &mut got).unwrap();
                got
            });
            let bufs = [&mut a, &mut b, &mut c];
            write_gather(&mut s, bufs, ranges, Duration::from_secs(10))
                .await
                .unwrap();
            let got = reader.join().unwrap();
            assert_eq!(got.len(), want.len());
            assert!(got == want, "the bytes arrived out of order");
        });
    }

    #[test]
    fn a_gathered_write_that_fails_keeps_its_buffers_for_a_resend() {
        on_each_driver(|| async {
            let (mut s, peer) = pair().await;
            // The peer resets the connection.
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer);
            monoio::time::sleep(Duration::from_millis(20)).await;
            let (mut a, mut b, mut c) = (b"head".to_vec(), b"body".to_vec(), b"rest".to_vec());
            let bufs = [&mut a, &mut b, &mut c];
            let r = write_gather(&mut s, bufs, [0..4, 0..4, 0..4], Duration::from_secs(5)).await;
            let kind = r
                .expect_err("a write to a reset connection succeeded")
                .kind();
            assert_ne!(kind, io::ErrorKind::TimedOut);
            assert_eq!(
                (&a[..], &b[..], &c[..]),
                (&b"head"[..], &b"body"[..], &b"rest"[..])
            );
        });
    }

    #[test]
    fn a_gathered_write_that_times_out_empties_its_buffers() {
        on_each_driver(|| async {
            let (mut s, _peer) = pair().await; // the peer never reads
            small_send_buffer(&s);
            let (mut a, mut b, mut c) =
                (vec![1u8; 1 << 20], vec![2u8; 1 << 20], vec![3u8; 1 << 20]);
            let bufs = [&mut a, &mut b, &mut c];
            let ranges = [0..1 << 20, 0..1 << 20, 0..1 << 20];
            let r = write_gather(&mut s, bufs, ranges, Duration::from_millis(100)).await;
            assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
            // The bytes may be half sent: nothing is left to resend by mistake.
            assert_eq!((a.len(), b.len(), c.len()), (0, 0, 0));
        });
    }

    struct Counted;
    impl Wake for Counted {
        fn wake(self: Arc<Self>) {}
    }

    /// Polls a timed operation that never completes once with `task`'s waker, then drops it.
    fn used_by(task: &Arc<Counted>, after: Duration) {
        let waker = Waker::from(task.clone());
        let mut op = Box::pin(timed(after, std::future::pending::<()>()));
        let polled = op.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending());
    }

    #[test]
    fn a_spare_timer_lets_go_of_the_last_task_when_reused_or_fired() {
        on_each_driver(|| async {
            // Reused: the next operation's timer replaces the old one and its waker.
            let task = Arc::new(Counted);
            used_by(&task, Duration::from_secs(60));
            assert_eq!(spare_timers(), 1);
            let r = timed(Duration::from_secs(5), async {}).await;
            assert!(r.is_ok());
            assert_eq!(Arc::strong_count(&task), 1, "a reused timer kept the waker");
            // Not reused: it lets go when it fires, one timeout later.
            let task = Arc::new(Counted);
            used_by(&task, Duration::from_millis(20));
            monoio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(
                Arc::strong_count(&task),
                1,
                "a fired spare timer kept the waker"
            );
        });
    }

    #[test]
    fn a_timed_operation_dropped_outside_its_runtime_does_not_panic() {
        // A task still alive when its runtime goes is dropped after the runtime's context
        // is gone: its timer must not need that context.
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        // Returned inside an `Option` so that the block is not mistaken for awaiting it.
        let op = rt.block_on(async {
            let mut op = Box::pin(timed(Duration::from_secs(60), std::future::pending::<()>()));
            let _ = std::future::poll_fn(|cx| {
                let _ = op.as_mut().poll(cx);
                Poll::Ready(())
            })
            .await;
            Some(op)
        });
        drop(op);
        drop(rt);
        forget_spare_timers();
    }

    /// Every connection waiting in the backlog is taken, one per call, close-on-exec and
    /// with the blocking mode asked for; then `None`, without waiting.
    #[test]
    fn accept_now_takes_what_waits_and_never_waits() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(accept_now(listener.as_raw_fd(), false).is_none());
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut peers = Vec::new();
        for nonblocking in [false, true, false] {
            let (s, peer) = accept_now(listener.as_raw_fd(), nonblocking)
                .expect("a connection waits")
                .unwrap();
            let fd = s.as_raw_fd();
            // SAFETY: fcntl reads the flags of a descriptor we own.
            let (fl, fdfl) = unsafe {
                (
                    libc::fcntl(fd, libc::F_GETFL),
                    libc::fcntl(fd, libc::F_GETFD),
                )
            };
            assert_eq!(fl & libc::O_NONBLOCK != 0, nonblocking);
            assert!(fdfl & libc::FD_CLOEXEC != 0);
            peers.push(peer);
        }
        let mut expected: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        expected.sort();
        peers.sort();
        assert_eq!(peers, expected);
        assert!(accept_now(listener.as_raw_fd(), false).is_none());
    }
}
