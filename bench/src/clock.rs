//! Monotonic nanosecond clock and a sub-millisecond sleep for open-loop pacing (timerfd read through io_uring).

use std::os::fd::FromRawFd;
use std::time::Duration;

/// Nanoseconds on CLOCK_MONOTONIC (the same clock timerfd and `std::time::Instant` use).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// A monoio `Instant` for a `now_ns()` timestamp.
pub fn to_instant(deadline_ns: u64) -> monoio::time::Instant {
    let now = now_ns();
    let base = monoio::time::Instant::now();
    if deadline_ns >= now {
        base + Duration::from_nanos(deadline_ns - now)
    } else {
        base.checked_sub(Duration::from_nanos(now - deadline_ns))
            .unwrap_or(base)
    }
}

/// Sleeps until an absolute `now_ns()` deadline.
///
/// monoio's timer wheel rounds every deadline up to the next millisecond, which in an open-loop
/// run would be charged to the server as latency. Under io_uring we therefore arm a per-connection
/// timerfd with an absolute deadline and read it through the ring (no thread blocks); under the
/// epoll fallback driver we use monoio's timer and accept its ~1 ms granularity.
pub struct Pacer {
    timer: Option<(monoio::fs::File, i32)>,
    buf: Option<Vec<u8>>,
}

impl Pacer {
    /// Create a pacer for the current runtime (call inside a monoio runtime).
    pub fn new() -> Pacer {
        let timer = if monoio::utils::is_legacy() {
            None
        } else {
            // SAFETY: plain syscall; the returned fd (if any) is owned by the File below.
            let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
            if fd < 0 {
                None
            } else {
                // SAFETY: `fd` is a fresh descriptor that nothing else owns.
                let std_file = unsafe { std::fs::File::from_raw_fd(fd) };
                monoio::fs::File::from_std(std_file).ok().map(|f| (f, fd))
            }
        };
        Pacer {
            timer,
            buf: Some(Vec::with_capacity(8)),
        }
    }

    /// Whether the precise (timerfd) path is in use.
    pub fn is_precise(&self) -> bool {
        self.timer.is_some()
    }

    /// Return once `now_ns() >= deadline_ns`. Never returns early.
    pub async fn sleep_until(&mut self, deadline_ns: u64) {
        if now_ns() >= deadline_ns {
            return;
        }
        if let (Some((file, fd)), Some(buf)) = (&self.timer, self.buf.take()) {
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
                },
            };
            // SAFETY: `fd` is the timerfd owned by `file`; `spec` is a valid itimerspec.
            let rc = unsafe {
                libc::timerfd_settime(*fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
            };
            if rc == 0 {
                let (res, buf) = file.read_at(buf, 0).await;
                self.buf = Some(buf);
                if res.is_ok() {
                    return;
                }
            } else {
                self.buf = Some(buf);
            }
            // Fall through to the coarse timer if the timerfd failed.
        }
        while now_ns() < deadline_ns {
            monoio::time::sleep_until(to_instant(deadline_ns)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_wakes_on_time() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut p = Pacer::new();
            let mut late = Vec::new();
            for i in 0..21u64 {
                let deadline = now_ns() + 300_000 + i * 10_000;
                p.sleep_until(deadline).await;
                let now = now_ns();
                assert!(now >= deadline, "woke early");
                late.push(now - deadline);
            }
            late.sort_unstable();
            let median = late[late.len() / 2];
            // monoio's timer wheel would round every deadline up to the next millisecond.
            if p.is_precise() {
                assert!(median < 400_000, "median lateness {median}ns");
            }
        });
    }
}
