//! Per-worker pool of idle keep-alive connections to backends: no locks, most recent first.
//!
//! Only connections whose last exchange ended cleanly (framed response fully read, no
//! extra bytes, backend did not ask to close) are put back. Idle connections expire after
//! `pool.idle_timeout`, chosen shorter than common backend keep-alive timeouts so that the
//! gateway, not the backend, is the one that closes them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::metrics::WorkerCell;

/// Connections idle at least this long are peeked before reuse. Under load a connection
/// is back in use within microseconds of its last response, where a close or stray bytes
/// from the backend are all but impossible, so the syscall (~1.3 µs, the largest
/// user-visible cost on the request path in the profile) is spent only where it matters:
/// on connections the backend may have closed while they sat idle.
const PEEK_AFTER: Duration = Duration::from_millis(1);

struct Idle {
    stream: TcpStream,
    since: Instant,
}

pub struct Pool {
    /// Indexed by backend slot (see `state::Backend::slot`).
    slots: RefCell<Vec<VecDeque<Idle>>>,
    max_idle: Cell<usize>,
    idle_timeout: Cell<Duration>,
    /// Idle connections over all slots, mirrored into the metrics gauge.
    total: Cell<usize>,
    metrics: Arc<WorkerCell>,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration, metrics: Arc<WorkerCell>) -> Pool {
        Pool {
            slots: RefCell::new(Vec::new()),
            max_idle: Cell::new(max_idle),
            idle_timeout: Cell::new(idle_timeout),
            total: Cell::new(0),
            metrics,
        }
    }

    /// Applies reloaded pool settings.
    pub fn configure(&self, max_idle: usize, idle_timeout: Duration) {
        self.max_idle.set(max_idle);
        self.idle_timeout.set(idle_timeout);
    }

    fn recount(&self, slots: &[VecDeque<Idle>]) {
        let n = slots.iter().map(VecDeque::len).sum();
        self.total.set(n);
        self.metrics.pool_idle.set(n as u64);
    }

    /// The most recently used live connection to `slot`, if any.
    ///
    /// A connection idle for [`PEEK_AFTER`] or more is peeked first and dropped if it became
    /// readable: either the backend closed it, or it sent bytes nobody asked for (which must
    /// never be read as the answer to the next request).
    pub fn take(&self, slot: usize) -> Option<TcpStream> {
        let mut slots = self.slots.borrow_mut();
        let q = slots.get_mut(slot)?;
        if q.is_empty() {
            return None;
        }
        let mut found = None;
        while let Some(idle) = q.pop_back() {
            let idle_for = idle.since.elapsed();
            if idle_for >= self.idle_timeout.get() {
                // The newest is expired, so all older ones are too.
                q.clear();
                break;
            }
            if idle_for < PEEK_AFTER || crate::io::is_quiet(idle.stream.as_raw_fd()) {
                found = Some(idle.stream);
                break;
            }
        }
        self.recount(&slots);
        found
    }

    /// Returns a connection whose exchange finished cleanly.
    pub fn put(&self, slot: usize, stream: TcpStream) {
        if self.max_idle.get() == 0 {
            return;
        }
        let mut slots = self.slots.borrow_mut();
        if slots.len() <= slot {
            slots.resize_with(slot + 1, VecDeque::new);
        }
        let q = &mut slots[slot];
        while q.len() >= self.max_idle.get() {
            q.pop_front(); // evict the least recently used
            self.total.set(self.total.get() - 1);
        }
        q.push_back(Idle {
            stream,
            since: Instant::now(),
        });
        self.total.set(self.total.get() + 1);
        self.metrics.pool_idle.set(self.total.get() as u64);
    }

    /// Closes expired connections and those of backends `keep` no longer wants.
    pub fn sweep(&self, keep: impl Fn(usize) -> bool) {
        let mut slots = self.slots.borrow_mut();
        let timeout = self.idle_timeout.get();
        for (slot, q) in slots.iter_mut().enumerate() {
            if !keep(slot) {
                q.clear();
            } else {
                q.retain(|i| i.since.elapsed() < timeout);
            }
        }
        self.recount(&slots);
    }

    /// Idle connections held for `slot`.
    pub fn idle(&self, slot: usize) -> usize {
        self.slots.borrow().get(slot).map_or(0, VecDeque::len)
    }
}
