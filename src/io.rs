//! Owned-buffer socket I/O with deadlines, on monoio's rent-style API, and the split socket
//! that lets one task read and write the same connection at once.
//!
//! monoio takes buffers by value for the duration of an operation (io_uring writes into
//! them asynchronously). These helpers lend a connection's `Vec` to one read or write and
//! put it back. When a deadline fires the in-flight operation is dropped and its buffer
//! with it (the `Vec` is left empty, with fresh capacity); the caller then closes the
//! connection, which is the only safe thing to do with a socket that may have lost or
//! half-sent bytes (see design.md §6). A timeout is never mistaken for a closed peer.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;

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
    make_room(buf, start, min_free);
    let b = std::mem::take(buf);
    let (len, cap) = (b.len(), b.capacity());
    match monoio::time::timeout(deadline, stream.read(b.slice_mut(len..cap))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            read_result(res)
        }
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
    match monoio::time::timeout(deadline, stream.write_all(b.slice(from..to))).await {
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

/// True when nothing is waiting to be read on the socket (no data, no EOF, no error).
pub fn is_quiet(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte buffer we own; MSG_PEEK consumes nothing and MSG_DONTWAIT never
    // blocks. An invalid fd just reports an error (not quiet).
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}
