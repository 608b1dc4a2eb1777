//! The monotonic clock as connection tasks read it: once per poll, not once per use.
//!
//! A request reads the time about ten times (its start, each timed read and write, the
//! backend's answer, the breaker's verdict, its end), and on a VM each read of the vDSO
//! clock costs tens of nanoseconds. Between two reads inside one poll of a connection's
//! task no I/O can complete (that needs the task to return to the runtime), so the time
//! the poll began stands for all of them. [`poll_scope`] wraps each poll of a connection's
//! task; [`now`] reads the clock on its first use in the scope and returns that reading
//! after (see [`USES`]). Outside a scope (other tasks, other threads) [`now`] reads the
//! clock every time.
//!
//! The reading is late by no more than the poll has run so far: microseconds of work, so
//! deadlines set from it are early by that much (timeouts are milliseconds and more), and
//! durations measured with it are off by that much at most. On the epoll driver an
//! operation can complete inside a poll, so one poll may serve several pipelined requests:
//! a reading serves [`USES`] reads at most, then the clock is read again.

use std::cell::Cell;
use std::time::Instant;

/// Reads one reading serves in a scope (a request makes about ten in all, over three to
/// five polls).
pub const USES: u32 = 8;

#[derive(Clone, Copy)]
enum Scope {
    /// Not inside a connection task's poll: every [`now`] reads the clock.
    Off,
    /// Inside one, the clock not read yet.
    Unread,
    /// Inside one, read at this instant, which has served this many reads.
    Read(Instant, u32),
}

thread_local! {
    static SCOPE: Cell<Scope> = const { Cell::new(Scope::Off) };
}

/// The monotonic clock: within a [`poll_scope`], the instant of its first reading there.
#[inline]
pub fn now() -> Instant {
    SCOPE.with(|s| match s.get() {
        Scope::Read(t, n) if n < USES => {
            s.set(Scope::Read(t, n + 1));
            t
        }
        Scope::Off => Instant::now(),
        Scope::Unread | Scope::Read(..) => {
            let t = Instant::now();
            s.set(Scope::Read(t, 1));
            t
        }
    })
}

/// Runs `poll` (one poll of a task that does only a bounded amount of work between two
/// awaits) with each reading of the clock serving up to [`USES`] calls of [`now`]. The
/// scope ends when `poll` returns or unwinds.
#[inline]
pub fn poll_scope<R>(poll: impl FnOnce() -> R) -> R {
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            let _ = SCOPE.try_with(|s| s.set(Scope::Off));
        }
    }
    SCOPE.with(|s| s.set(Scope::Unread));
    let _end = End;
    poll()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_reading_per_scope_and_a_fresh_one_outside() {
        let (a, b) = poll_scope(|| {
            let a = now();
            std::thread::sleep(Duration::from_millis(5));
            (a, now())
        });
        assert_eq!(a, b, "a second read in the scope must reuse the first");
        let outside = now();
        assert!(
            outside >= a + Duration::from_millis(5),
            "outside a scope the clock is read"
        );
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > outside, "outside a scope every read is fresh");
        // A new scope reads again.
        let c = poll_scope(now);
        assert!(c > outside);
    }

    #[test]
    fn a_long_scope_reads_again_after_its_uses() {
        poll_scope(|| {
            let first = now();
            for _ in 1..USES {
                assert_eq!(now(), first);
            }
            std::thread::sleep(Duration::from_millis(2));
            let again = now();
            assert!(again > first, "a reading served more than {USES} reads");
            assert_eq!(now(), again);
        });
    }

    #[test]
    fn a_scope_that_unwinds_ends() {
        let r = std::panic::catch_unwind(|| poll_scope(|| -> () { panic!("inside") }));
        assert!(r.is_err());
        let first = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() > first, "the scope outlived its poll");
    }
}
