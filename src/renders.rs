//! Large admin answers: rendered once, shared by readers who ask within a second, budgeted.
//!
//! At 5 000 services `/admin/backends` is 18 MB and `/metrics` 12 MB, and a slow reader
//! holds its copy for up to the write deadline: 64 of them held a copy each (a scale
//! review). A reader who asks for an answer rendered less than [`SHARE_FOR`] ago that
//! another reader still holds gets that same copy; the large copies held at once are
//! bounded by a byte budget, past which the admin port answers 503 until one is written.
//! Small answers (up to [`LARGE`]) are neither shared nor counted: they are always fresh.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// An answer over this many bytes is large: shared, and counted against the budget.
pub const LARGE: usize = 1 << 20;
/// How old a large answer may be and still be handed to another reader.
pub const SHARE_FOR: Duration = Duration::from_secs(1);
/// The large answers held at once, in bytes: 14 distinct 18 MB answers.
pub const BUDGET: usize = 256 << 20;

/// A rendered answer: status, content type and body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The budget it is counted against (large answers only), given back on drop.
    counted: Option<Arc<AtomicUsize>>,
}

impl Answer {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Answer {
        Answer {
            status,
            content_type,
            body,
            counted: None,
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(held) = &self.counted {
            held.fetch_sub(self.body.len(), Ordering::Relaxed);
        }
    }
}

struct Recent {
    /// The request target it answers (path and query).
    target: String,
    at: Instant,
    answer: Weak<Answer>,
}

/// The large answers being written, by target.
pub struct Renders {
    recent: Mutex<Vec<Recent>>,
    held: Arc<AtomicUsize>,
    budget: usize,
}

impl Renders {
    pub fn new(budget: usize) -> Renders {
        Renders {
            recent: Mutex::new(Vec::new()),
            held: Arc::default(),
            budget,
        }
    }

    /// The answer to `target`: one rendered less than [`SHARE_FOR`] ago that a reader still
    /// holds, or else a new one from `render`. `None`: a new large answer would take the
    /// large answers held past the budget (answer 503).
    ///
    /// Rendered under the lock, so that readers who come together share one rendering
    /// rather than each making their own (rendering takes no client's time).
    pub fn get(&self, target: &str, render: impl FnOnce() -> Answer) -> Option<Arc<Answer>> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|r| r.at.elapsed() < SHARE_FOR && r.answer.strong_count() > 0);
        if let Some(shared) = recent
            .iter()
            .find(|r| r.target == target)
            .and_then(|r| r.answer.upgrade())
        {
            return Some(shared);
        }
        let mut answer = render();
        let len = answer.body.len();
        if len <= LARGE {
            return Some(Arc::new(answer));
        }
        let held = self.held.fetch_add(len, Ordering::Relaxed);
        answer.counted = Some(self.held.clone());
        if held + len > self.budget {
            return None; // dropped: given back at once
        }
        let answer = Arc::new(answer);
        recent.push(Recent {
            target: target.to_string(),
            at: Instant::now(),
            answer: Arc::downgrade(&answer),
        });
        Some(answer)
    }

    /// Bytes of large answers held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn sized(n: usize, renders: &Cell<u32>) -> Answer {
        renders.set(renders.get() + 1);
        Answer::new(200, "text/plain", vec![b'x'; n])
    }

    #[test]
    fn readers_of_a_large_answer_share_one_rendering_while_it_is_held() {
        let r = Renders::new(BUDGET);
        let n = Cell::new(0);
        let first = r.get("/metrics", || sized(LARGE + 1, &n)).unwrap();
        let second = r.get("/metrics", || sized(LARGE + 1, &n)).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!((n.get(), r.held()), (1, LARGE + 1));
        // Another target is another answer.
        let other = r.get("/admin/backends", || sized(LARGE + 2, &n)).unwrap();
        assert_eq!((n.get(), r.held()), (2, 2 * LARGE + 3));
        drop((first, second, other));
        assert_eq!(r.held(), 0);
        // Once nobody holds it, the next reader gets a fresh one.
        let _third = r.get("/metrics", || sized(LARGE + 1, &n)).unwrap();
        assert_eq!(n.get(), 3);
    }

    #[test]
    fn small_answers_are_always_fresh_and_never_counted() {
        let r = Renders::new(BUDGET);
        let n = Cell::new(0);
        let first = r.get("/metrics", || sized(LARGE, &n)).unwrap();
        let _second = r.get("/metrics", || sized(LARGE, &n)).unwrap();
        assert_eq!((n.get(), r.held()), (2, 0));
        drop(first);
    }

    #[test]
    fn a_large_answer_is_shared_for_a_second_at_most() {
        let r = Renders::new(BUDGET);
        let n = Cell::new(0);
        let _held = r.get("/metrics", || sized(LARGE + 1, &n)).unwrap();
        std::thread::sleep(SHARE_FOR + Duration::from_millis(50));
        let _fresh = r.get("/metrics", || sized(LARGE + 1, &n)).unwrap();
        assert_eq!((n.get(), r.held()), (2, 2 * (LARGE + 1)));
    }

    #[test]
    fn past_the_budget_a_new_large_answer_is_refused_until_one_is_written() {
        let r = Renders::new(3 * (LARGE + 1));
        let n = Cell::new(0);
        let held: Vec<_> = ["/a", "/b", "/c"]
            .into_iter()
            .map(|t| r.get(t, || sized(LARGE + 1, &n)).unwrap())
            .collect();
        assert!(r.get("/d", || sized(LARGE + 1, &n)).is_none());
        assert_eq!(r.held(), 3 * (LARGE + 1), "the refused one is given back");
        // What is held is still shared, and small answers still go out.
        assert!(r.get("/a", || sized(LARGE + 1, &n)).is_some());
        assert!(r.get("/d", || sized(10, &n)).is_some());
        drop(held);
        assert!(r.get("/d", || sized(LARGE + 1, &n)).is_some());
    }
}
