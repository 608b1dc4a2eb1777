//! Heap slots for the per-request futures, recycled by each worker: no allocation per request.
//!
//! A connection's task boxes the big steps of a request (the exchange, replies) so that an
//! idle connection's task stays small (see `conn.rs`). A plain `Box` would cost one
//! allocation and one free per request; [`BoxPool::pin`] takes a block of the right layout
//! from the worker's free list instead and gives it back when the future is dropped.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per layout; more are freed.
const MAX_FREE: usize = 256;

/// One worker's free blocks, by layout (a handful of distinct futures use it).
#[derive(Default)]
pub struct BoxPool {
    free: RefCell<Vec<(Layout, Vec<NonNull<u8>>)>>,
}

impl BoxPool {
    /// Moves `f` into a recycled block (or a new one) and pins it there.
    pub fn pin<F: Future>(&self, f: F) -> PoolBox<'_, F> {
        self.pin_with(|| f)
    }

    /// Builds the future `make` returns straight in a recycled block (or a new one) and
    /// pins it there. Inlined, the compiler builds it in place: a future built first and
    /// then moved in is copied whole, its unused state included (the exchange's: 2.8 KB).
    #[inline(always)]
    pub fn pin_with<F: Future>(&self, make: impl FnOnce() -> F) -> PoolBox<'_, F> {
        let layout = Layout::new::<F>();
        let ptr: NonNull<F> = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            match self.take(layout) {
                Some(p) => p.cast(),
                None => {
                    // SAFETY: the layout has a non-zero size.
                    let p = unsafe { alloc::alloc(layout) };
                    match NonNull::new(p) {
                        Some(p) => p.cast(),
                        None => alloc::handle_alloc_error(layout),
                    }
                }
            }
        };
        // SAFETY: `ptr` is valid for writes of one `F` (fresh or recycled with F's layout,
        // or dangling for a zero-sized F) and holds nothing to drop.
        unsafe { ptr.as_ptr().write(make()) };
        PoolBox { ptr, pool: self }
    }

    fn take(&self, layout: Layout) -> Option<NonNull<u8>> {
        let mut free = self.free.borrow_mut();
        free.iter_mut()
            .find(|(l, _)| *l == layout)
            .and_then(|(_, blocks)| blocks.pop())
    }

    fn give(&self, layout: Layout, block: NonNull<u8>) {
        let mut free = self.free.borrow_mut();
        let i = match free.iter().position(|(l, _)| *l == layout) {
            Some(i) => i,
            None => {
                free.push((layout, Vec::with_capacity(MAX_FREE)));
                free.len() - 1
            }
        };
        let blocks = &mut free[i].1;
        if blocks.len() < MAX_FREE {
            blocks.push(block);
        } else {
            // SAFETY: allocated with this layout by `pin` and no longer used.
            unsafe { alloc::dealloc(block.as_ptr(), layout) };
        }
    }
}

impl Drop for BoxPool {
    fn drop(&mut self) {
        for (layout, blocks) in self.free.get_mut().drain(..) {
            for b in blocks {
                // SAFETY: every free block was allocated with its layout and is unused.
                unsafe { alloc::dealloc(b.as_ptr(), layout) };
            }
        }
    }
}

/// A future in a block of a [`BoxPool`]; the block goes back to the pool on drop.
pub struct PoolBox<'a, F: Future> {
    ptr: NonNull<F>,
    pool: &'a BoxPool,
}

impl<F: Future> Future for PoolBox<'_, F> {
    type Output = F::Output;

    // Always inlined: whether the compiler inlined it into the connection's poll hung on the
    // size of the boxed exchange, and one field more in it (954b124) cost 140 instructions
    // per GET when it stopped (callgrind, 15 088 against 14 950; 14 975 with this).
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future lives at `ptr` until this box is dropped and never moves (only
        // the box, a pointer, does), so pinning it there is sound.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for PoolBox<'_, F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: `ptr` holds a live `F` written by `pin`, dropped exactly once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() != 0 {
            self.pool.give(layout, self.ptr.cast());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn blocks_are_reused_and_futures_dropped_once() {
        let pool = BoxPool::default();
        let drops = Rc::new(std::cell::Cell::new(0));
        struct Noisy(Rc<std::cell::Cell<u32>>, [u8; 100]);
        impl Drop for Noisy {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let mut seen = Vec::new();
        for i in 0..3u32 {
            let n = Noisy(drops.clone(), [i as u8; 100]);
            let b = pool.pin(async move {
                let n = n;
                u32::from(n.1[0]) + 1
            });
            seen.push(b.ptr.cast::<u8>());
            assert_eq!(monoio_free_block_on(b), i + 1);
        }
        assert_eq!(drops.get(), 3);
        assert!(
            seen.iter().all(|p| *p == seen[0]),
            "the block was not reused"
        );
        // Dropped without being polled: the future (and what it owns) is dropped too.
        let b = pool.pin({
            let n = Noisy(drops.clone(), [0; 100]);
            async move { n.1.len() }
        });
        drop(b);
        assert_eq!(drops.get(), 4);
    }

    /// Polls a future that never waits to completion.
    fn monoio_free_block_on<F: Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future waited"),
        }
    }
}
