//! Owned-buffer socket I/O with deadlines, on monoio's rent-style API.
//!
//! monoio takes buffers by value for the duration of an operation (io_uring writes into
//! them asynchronously). These helpers lend a connection's `Vec` to one read or write and
//! put it back. When a deadline fires the in-flight operation is dropped and its buffer
//! with it; the caller then closes the connection, which is the only safe thing to do
//! with a socket that may have lost bytes (see design.md §6).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

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
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: &mut usize,
    min_free: usize,
    deadline: Duration,
) -> Read {
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
    let b = std::mem::take(buf);
    let (len, cap) = (b.len(), b.capacity());
    match monoio::time::timeout(deadline, stream.read(b.slice_mut(len..cap))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            match res {
                Ok(0) => Read::Eof,
                Ok(n) => Read::Data(n),
                Err(e) => Read::Err(e),
            }
        }
        Err(_) => Read::Timeout,
    }
}

/// Writes all of `out`; `out` keeps its contents (a caller may need to resend them).
pub async fn write_all(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    deadline: Duration,
) -> io::Result<()> {
    let b = std::mem::take(out);
    match monoio::time::timeout(deadline, stream.write_all(b)).await {
        Ok((res, b)) => {
            *out = b;
            res.map(|_| ())
        }
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Writes `buf[range]` without copying it.
pub async fn write_range(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    deadline: Duration,
) -> io::Result<()> {
    let b = std::mem::take(buf);
    match monoio::time::timeout(deadline, stream.write_all(b.slice(from..to))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ())
        }
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")),
    }
}

/// Makes the coming close send RST instead of FIN, so the peer sees an aborted message
/// rather than a clean end of a close-delimited body.
pub fn set_reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`; the option value is a plain struct of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// True when nothing is waiting to be read on the socket (no data, no EOF, no error).
pub fn is_quiet(fd: std::os::fd::RawFd) -> bool {
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
