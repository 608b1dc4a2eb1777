//! Large admin answers: rendered at most once a second per answer, shared, copies bounded.
//!
//! At 5 000 services `/admin/backends` is 17 MB and `/metrics` 12 MB, and a slow reader
//! holds its copy for up to the write deadline: 64 of them held a copy each (a scale
//! review), and every request rendered anew, the JSON tree of one `/admin/backends` alone
//! about 145 MB. Now, per answer (see `admin::answer_key`):
//! - a rendering is handed to every reader for [`SHARE_FOR`] after it began, and readers
//!   who come while it is being made wait for it rather than make their own;
//! - after that a new one is made, unless [`MAX_COPIES`] renderings are still held by slow
//!   readers: then the newest of them is handed out (older than a second, younger than the
//!   write deadline), so memory stays at most that many copies per answer and nobody is
//!   refused. A hostile review filled a byte budget shared by every answer with
//!   `/admin/backends` copies, and `/metrics` then went unanswered.
//!
//! An answer of at most [`LARGE`] bytes is handed only to the readers who waited for its
//! rendering: the next one gets a fresh answer.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// An answer over this many bytes is large: kept and shared for [`SHARE_FOR`].
pub const LARGE: usize = 1 << 20;
/// How long a large answer is handed to every reader, from when its rendering began.
pub const SHARE_FOR: Duration = Duration::from_secs(1);
/// Renderings of one answer alive at once, past which the newest is handed out again.
pub const MAX_COPIES: usize = 2;

/// A rendered answer: status, content type and body.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16, content_type: &'static str, body: Vec<u8>) -> Answer {
        Answer {
            status,
            content_type,
            body,
        }
    }
}

type Cell = Arc<OnceLock<Arc<Answer>>>;

/// One answer's renderings.
struct Slot {
    key: String,
    /// The one handed to every reader (or being made), and when it was begun; `None` once
    /// past [`SHARE_FOR`].
    current: Option<(Cell, Instant)>,
    /// Earlier ones, alive while a reader holds them; the newest last.
    older: Vec<Weak<Answer>>,
}

/// The renderings of large answers, by key.
#[derive(Default)]
pub struct Renders {
    slots: Mutex<Vec<Slot>>,
}

impl Renders {
    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer named `key`, from `render` or shared (see the module's comment). The lock
    /// is held only to look up; rendering happens outside it, once per answer at a time.
    pub fn get(&self, key: &str, render: impl FnOnce() -> Answer) -> Arc<Answer> {
        let cell = {
            let mut slots = self.lock();
            let now = Instant::now();
            for s in slots.iter_mut() {
                if let Some((cell, begun)) = &s.current {
                    if now.duration_since(*begun) >= SHARE_FOR {
                        if let Some(done) = cell.get() {
                            s.older.push(Arc::downgrade(done));
                            s.current = None;
                        }
                    }
                }
                s.older.retain(|w| w.strong_count() > 0);
            }
            slots.retain(|s| s.current.is_some() || !s.older.is_empty());
            let i = match slots.iter().position(|s| s.key == key) {
                Some(i) => i,
                None => {
                    slots.push(Slot {
                        key: key.to_string(),
                        current: None,
                        older: Vec::new(),
                    });
                    slots.len() - 1
                }
            };
            let s = &mut slots[i];
            match &s.current {
                Some((cell, _)) => cell.clone(),
                None => {
                    if s.older.len() >= MAX_COPIES {
                        if let Some(newest) = s.older.last().and_then(Weak::upgrade) {
                            return newest;
                        }
                    }
                    let cell = Cell::default();
                    s.current = Some((cell.clone(), now));
                    cell
                }
            }
        };
        let answer = cell.get_or_init(|| Arc::new(render())).clone();
        if answer.body.len() <= LARGE {
            // Not kept: the next reader gets a fresh one.
            let mut slots = self.lock();
            if let Some(s) = slots.iter_mut().find(|s| s.key == key) {
                if s.current
                    .as_ref()
                    .is_some_and(|(c, _)| Arc::ptr_eq(c, &cell))
                {
                    s.current = None;
                }
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn sized(n: usize, renders: &AtomicU32) -> Answer {
        renders.fetch_add(1, Ordering::Relaxed);
        Answer::new(200, "text/plain", vec![b'x'; n])
    }

    fn past_the_second() {
        std::thread::sleep(SHARE_FOR + Duration::from_millis(50));
    }

    #[test]
    fn a_large_answer_is_rendered_once_and_shared_for_a_second() {
        let r = Renders::default();
        let n = AtomicU32::new(0);
        let first = r.get("/metrics", || sized(LARGE + 1, &n));
        drop(first);
        // Kept for its second even with no reader: a loop of requests renders once.
        let second = r.get("/metrics", || sized(LARGE + 1, &n));
        assert_eq!(n.load(Ordering::Relaxed), 1);
        // Another answer is another rendering.
        let _other = r.get("/admin/backends", || sized(LARGE + 2, &n));
        assert_eq!(n.load(Ordering::Relaxed), 2);
        drop(second);
        past_the_second();
        let _third = r.get("/metrics", || sized(LARGE + 1, &n));
        assert_eq!(n.load(Ordering::Relaxed), 3, "a fresh one after its second");
    }

    #[test]
    fn small_answers_are_always_fresh() {
        let r = Renders::default();
        let n = AtomicU32::new(0);
        let first = r.get("/metrics", || sized(LARGE, &n));
        let _second = r.get("/metrics", || sized(LARGE, &n));
        assert_eq!(n.load(Ordering::Relaxed), 2);
        drop(first);
    }

    #[test]
    fn readers_who_come_during_a_rendering_wait_for_it() {
        let r = Arc::new(Renders::default());
        let n = Arc::new(AtomicU32::new(0));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (r, n) = (r.clone(), n.clone());
                std::thread::spawn(move || {
                    r.get("/metrics", || {
                        std::thread::sleep(Duration::from_millis(200));
                        sized(LARGE + 1, &n)
                    })
                })
            })
            .collect();
        let got: Vec<Arc<Answer>> = readers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(n.load(Ordering::Relaxed), 1);
        assert!(got.iter().all(|a| Arc::ptr_eq(a, &got[0])));
    }

    #[test]
    fn a_rendering_in_progress_holds_up_no_other_answer() {
        let r = Arc::new(Renders::default());
        let n = Arc::new(AtomicU32::new(0));
        let (started, go) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let slow = {
            let (r, n) = (r.clone(), n.clone());
            std::thread::spawn(move || {
                r.get("/admin/backends", || {
                    started.send(()).unwrap();
                    wait.recv().unwrap();
                    sized(LARGE + 1, &n)
                })
            })
        };
        go.recv().unwrap();
        // Answered while the other is still being rendered (it would deadlock otherwise).
        assert_eq!(r.get("/metrics", || sized(10, &n)).body.len(), 10);
        release.send(()).unwrap();
        assert_eq!(slow.join().unwrap().body.len(), LARGE + 1);
    }

    #[test]
    fn past_max_copies_held_the_newest_is_handed_out_again() {
        let r = Renders::default();
        let n = AtomicU32::new(0);
        // Slow readers hold two renderings, each past its second.
        let a = r.get("/metrics", || sized(LARGE + 1, &n));
        past_the_second();
        let b = r.get("/metrics", || sized(LARGE + 2, &n));
        assert_eq!(n.load(Ordering::Relaxed), 2);
        past_the_second();
        // A third reader gets the newest held one, not a third copy.
        let c = r.get("/metrics", || sized(LARGE + 3, &n));
        assert_eq!(n.load(Ordering::Relaxed), 2);
        assert!(Arc::ptr_eq(&b, &c));
        // Once the readers are done, a fresh one is made.
        drop((a, b, c));
        let d = r.get("/metrics", || sized(LARGE + 4, &n));
        assert_eq!((n.load(Ordering::Relaxed), d.body.len()), (3, LARGE + 4));
    }
}
