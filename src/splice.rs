//! Moves a long Content-Length body from one socket to the other inside the kernel
//! (socket → pipe → socket with splice(2)), so its bytes are never copied through us.
//!
//! Only a body that goes out exactly as it came in is spliced: a Content-Length body, not
//! re-encoded, with nothing of it already read into a buffer. Every splice into the pipe
//! asks for at most the bytes the body still has, so the next message on the connection is
//! never taken; the pipe is handed to the next body only when it is empty, and a transfer
//! that ends any other way (an error, a timeout, the future dropped) closes it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::io::{ReadHalf, WriteHalf};
use crate::relay::{Late, Owed, Pace, Side};

/// Bodies with at least this much still to come are spliced; shorter ones are read and
/// written (a pipe and readiness polls cost more than they save below this).
pub const MIN_SPLICE: u64 = 64 * 1024;

const PIPE_SIZE: usize = 256 * 1024;

/// Pipes a worker keeps for the next bodies; more are closed.
pub const MAX_SPARE: usize = 16;

/// A worker's empty pipes, and whether it splices at all (`splice`, bound at start).
#[derive(Default)]
pub struct Pipes {
    spare: std::cell::RefCell<Vec<Pipe>>,
    pub off: std::cell::Cell<bool>,
}

/// Both ends of a non-blocking pipe.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success, which we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETPIPE_SZ on the pipe just made; a failure leaves the default size.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        // SAFETY: both descriptors were just created and are owned by nothing else.
        Ok(unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }
}

/// A pipe lent to one transfer. It goes back to the spares only if it is empty (`held` is
/// 0) when dropped; otherwise it is closed with whatever it holds.
struct Lease<'a> {
    pipes: &'a Pipes,
    pipe: Option<Pipe>,
    held: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let mut spare = self.pipes.spare.borrow_mut();
            if self.held == 0 && spare.len() < MAX_SPARE {
                spare.push(pipe);
            }
        }
    }
}

/// Why a splice transfer ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum SpliceError {
    /// Reading failed (a reset).
    Src,
    /// The sender closed before the end.
    SrcClosed,
    /// The sender sent nothing for the timeout.
    SrcTimeout,
    /// Writing failed or timed out.
    Dst,
}

impl Pipes {
    /// Whether this worker splices at all (`splice: true`).
    pub fn on(&self) -> bool {
        !self.off.get()
    }

    fn lease(&self) -> io::Result<Lease<'_>> {
        let pipe = match self.spare.borrow_mut().pop() {
            Some(p) => p,
            None => Pipe::new()?,
        };
        Ok(Lease {
            pipes: self,
            pipe: Some(pipe),
            held: 0,
        })
    }

    /// Moves exactly `len` bytes from `src` to `dst`, calling `progress` after each part
    /// written; every wait for either side is bounded by `timeout`, and `hold` may stretch
    /// the waits on `src` (see [`crate::io::timed_held`]). `owed`, when given, holds
    /// while the pipe holds bytes taken from `src` that `dst` has not got. Err(None) when no pipe
    /// could be had (nothing was moved: the caller copies instead).
    #[allow(clippy::too_many_arguments)]
    pub async fn transfer(
        &self,
        src: &mut ReadHalf,
        dst: &mut WriteHalf,
        len: u64,
        timeout: Duration,
        hold: Option<&crate::io::Hold>,
        pace: &mut Pace,
        owed: Option<&Owed>,
        mut progress: impl FnMut(u64),
    ) -> Result<(), Option<SpliceError>> {
        let mut lease = self.lease().map_err(|_| None)?;
        let (pr, pw) = match &lease.pipe {
            Some(p) => (p.r.as_raw_fd(), p.w.as_raw_fd()),
            None => return Err(None),
        };
        // SAFETY: a shared borrow of the stream behind each half, only for its descriptor
        // and for readiness polls, which take the stream by `&`.
        let (sin, sout) = unsafe { (&*src.0.get(), &*dst.0.get()) };
        let (sfd, dfd) = (sin.as_raw_fd(), sout.as_raw_fd());
        // splice(2) on a socket waits (for bytes, for room) unless the socket itself is
        // non-blocking, whatever its flags say; io_uring operations on the sockets are not
        // affected (they never block the thread either way).
        set_nonblocking(sfd);
        set_nonblocking(dfd);
        // Into a client's socket, the kernel may hold more unsent while the body is spliced
        // (see [`SPLICE_NOTSENT_LOWAT`]); the usual mark is back once the transfer ends.
        let _lowat = pace.client_at(Side::Dst).then(|| RaisedLowat::new(dfd));
        let mut left = len;
        while left > 0 {
            // Fill: at most what the body still has, so nothing after it is taken.
            let n = loop {
                match splice(sfd, pw, left.min(usize::MAX as u64) as usize) {
                    Ok(0) => return Err(Some(SpliceError::SrcClosed)),
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut wait = timeout;
                        // A readiness wait takes no bytes: stretched, it is simply redone.
                        loop {
                            match paced(pace, Side::Src, wait, sin.readable(false)).await {
                                Ok(Ok(())) => break,
                                Ok(Err(_)) => return Err(Some(SpliceError::Src)),
                                Err(Late) => match crate::io::held_for(hold, timeout) {
                                    Some(more) => wait = more,
                                    None => return Err(Some(SpliceError::SrcTimeout)),
                                },
                            }
                        }
                    }
                    Err(_) => return Err(Some(SpliceError::Src)),
                }
            };
            lease.held += n;
            pace.note_bytes(Side::Src, n);
            if let Some(o) = owed {
                o.hold();
            }
            left -= n as u64;
            // Drain: everything in the pipe goes to `dst`.
            while lease.held > 0 {
                match splice(pr, dfd, lease.held) {
                    Ok(0) => return Err(Some(SpliceError::Dst)),
                    Ok(m) => {
                        lease.held -= m;
                        pace.note_bytes(Side::Dst, m);
                        progress(m as u64);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match paced(pace, Side::Dst, timeout, sout.writable(false)).await {
                            Ok(Ok(())) => {}
                            _ => return Err(Some(SpliceError::Dst)),
                        }
                    }
                    Err(_) => return Err(Some(SpliceError::Dst)),
                }
            }
            if let Some(o) = owed {
                o.release();
            }
        }
        Ok(())
    }
}

/// `TCP_NOTSENT_LOWAT` of a client's socket while a body is spliced into it. At the usual
/// 128 KiB (`server.rs`) each wake-up moves at most 64 KiB, through a readiness poll and a
/// splice(2) from user space, where a copying write waits inside the ring: spliced 1 MiB
/// downloads cost 1.3-1.6x the CPU per MiB of the same build without the mark. At 512 KiB
/// they cost 0.83x what they did at 128 KiB (per round 0.72-0.88x, 5 rounds, Intel Xeon
/// VM, family 6 model 207), 1 MiB measured the same, and the kernel still wakes the relay
/// for a slow reader every 256 KiB sent (half the mark): a reader on a slow network must
/// take that much per `timeouts.body` (README, `min_body_rate`).
const SPLICE_NOTSENT_LOWAT: libc::c_int = 512 * 1024;

/// The client socket's raised low-water mark for unsent bytes, put back on drop.
struct RaisedLowat(RawFd);

impl RaisedLowat {
    fn new(fd: RawFd) -> RaisedLowat {
        crate::io::set_notsent_lowat(fd, SPLICE_NOTSENT_LOWAT);
        RaisedLowat(fd)
    }
}

impl Drop for RaisedLowat {
    fn drop(&mut self) {
        crate::io::set_notsent_lowat(self.0, crate::server::CLIENT_NOTSENT_LOWAT);
    }
}

/// One non-blocking splice(2) of up to `len` bytes from `from` to `to`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain splice between descriptors the caller keeps open; no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn set_nonblocking(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: FIONBIO on a live socket the caller owns, with a pointer to an int.
    unsafe { libc::ioctl(fd, libc::FIONBIO, &on) };
}

/// Waits for a socket to be ready on `side` within `timeout`, or less when the client at
/// that side is short of pace, and counts the wait.
async fn paced<F: std::future::Future<Output = io::Result<()>>>(
    pace: &mut Pace,
    side: Side,
    timeout: Duration,
    ready: F,
) -> Result<io::Result<()>, Late> {
    let (limit, since) = pace.wait(side, timeout)?;
    let r = crate::io::timed(limit, ready).await;
    if let Some(since) = since {
        pace.note(since, 0);
    }
    r.map_err(|_| Late)
}
