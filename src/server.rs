//! Workers: one thread per core, each pinned, with its own monoio runtime, SO_REUSEPORT
//! listener, upstream pool and view of the config. Nothing here is shared between workers
//! except the `Arc<Shared>` they read.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::{FusionDriver, FusionRuntime, LegacyDriver, RuntimeBuilder};

use crate::balancer::View;
use crate::pool::Pool;
use crate::state::Shared;

/// Everything one worker owns. Only touched by its own thread.
pub struct Worker {
    pub index: usize,
    shared: Arc<Shared>,
    view: RefCell<Rc<View>>,
    pub pool: Pool,
}

impl Worker {
    fn new(index: usize, shared: Arc<Shared>) -> Worker {
        let snapshot = shared.current.load_full();
        let pool = Pool::new(
            snapshot.config.pool.max_idle_per_backend,
            snapshot.config.pool.idle_timeout,
        );
        Worker {
            index,
            view: RefCell::new(Rc::new(View::new(snapshot, index))),
            shared,
            pool,
        }
    }

    /// This worker's view of the current snapshot; rebuilt only when a reload stored a new
    /// one. A request keeps the view it started with until it ends.
    pub fn view(&self) -> Rc<View> {
        let current = self.shared.current.load();
        {
            let v = self.view.borrow();
            if Arc::ptr_eq(&v.snapshot, &current) {
                return v.clone();
            }
        }
        let fresh = Rc::new(View::new(arc_swap::Guard::into_inner(current), self.index));
        let slots = fresh.snapshot.slot_count();
        let live: Vec<bool> = {
            let mut live = vec![false; slots];
            for s in &fresh.snapshot.services {
                for b in &s.backends {
                    live[b.slot] = true;
                }
            }
            live
        };
        // Close idle connections of backends that left the config.
        self.pool
            .sweep(|slot| live.get(slot).copied().unwrap_or(false));
        *self.view.borrow_mut() = fresh.clone();
        fresh
    }
}

/// A started server: its address and worker threads.
pub struct Server {
    pub local_addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Blocks until every worker thread ends.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
}

fn bind_error(addr: SocketAddr, source: io::Error) -> StartError {
    let hint = if source.kind() == io::ErrorKind::AddrInUse {
        " (is another gateway or server already running on this port? stop it or change `listen`)"
    } else {
        ""
    };
    StartError::Bind { addr, source, hint }
}

/// One SO_REUSEPORT listener; the kernel spreads new connections across them.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Binds every worker's listener on this thread (so errors surface before anything
/// starts), then starts the workers.
pub fn start(shared: Arc<Shared>) -> Result<Server, StartError> {
    let config = shared.current.load().config.clone();
    let mut addr = config.listen;
    if addr.port() != 0 {
        // SO_REUSEPORT would let us silently share the port with another running gateway:
        // a plain bind first proves the port is free.
        std::net::TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
    }
    let mut listeners = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        let l = reuseport_listener(addr).map_err(|e| bind_error(addr, e))?;
        // With port 0 the first bind picks the port; the others join it.
        addr = l.local_addr().map_err(|e| bind_error(addr, e))?;
        listeners.push(l);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let pin = config.pin_workers.then_some(index % cores);
        let t = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || worker_main(index, pin, shared, listener))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    Ok(Server {
        local_addr: addr,
        threads,
    })
}

type Runtime = FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<LegacyDriver>,
>;

/// io_uring with SINGLE_ISSUER + COOP_TASKRUN (no cross-core interrupts for completions;
/// see design.md §7), then plain io_uring, then epoll.
fn build_runtime() -> io::Result<Runtime> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_single_issuer().setup_coop_taskrun();
    let tuned = RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .with_entries(1024)
        .uring_builder(urb)
        .build();
    if let Ok(rt) = tuned {
        return Ok(rt);
    }
    if let Ok(rt) = RuntimeBuilder::<FusionDriver>::new().enable_timer().build() {
        return Ok(rt);
    }
    RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .map(FusionRuntime::Legacy)
}

fn worker_main(
    index: usize,
    pin: Option<usize>,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
) {
    if let Some(core) = pin {
        if let Err(e) = monoio::utils::bind_to_cpu_set([core]) {
            log::warn!("worker {index}: cannot pin to core {core}: {e:?}; running unpinned");
        }
    }
    let mut rt = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("worker {index}: cannot build a runtime: {e}");
            return;
        }
    };
    let driver = match rt {
        FusionRuntime::Uring(_) => "io_uring",
        FusionRuntime::Legacy(_) => "epoll",
    };
    log::info!(
        "worker {index}: driver {driver}, {}",
        pin.map_or("not pinned".to_string(), |c| format!("pinned to core {c}"))
    );
    rt.block_on(async move {
        let listener = match monoio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("worker {index}: cannot register listener: {e}");
                return;
            }
        };
        let worker = Rc::new(Worker::new(index, shared));
        monoio::spawn(sweep_pool(worker.clone()));
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    spawn_guarded(
                        index,
                        peer,
                        crate::conn::serve(worker.clone(), stream, peer),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("worker {index}: accept failed: {e}");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// Spawns a connection task whose panic is logged and contained to that connection.
fn spawn_guarded(worker: usize, peer: SocketAddr, task: impl Future<Output = ()> + 'static) {
    monoio::spawn(async move {
        if let Err(panic) = CatchUnwind(task).await {
            log::error!(
                "worker {worker}: connection from {peer} panicked: {}",
                panic_message(&panic)
            );
        }
    });
}

/// Closes expired idle upstream connections once a second.
async fn sweep_pool(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        worker.pool.sweep(|_| true);
    }
}

/// Runs a future, turning a panic inside it into an `Err`: one connection's bug must not
/// take down the worker and every other connection on its core.
struct CatchUnwind<F>(F);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning; the inner future is never moved out of `self`.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_message(p: &Box<dyn Any + Send>) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_panicking_connection_does_not_take_the_worker_down() {
        let mut rt = build_runtime().expect("runtime");
        let after = Rc::new(Cell::new(0));
        let seen = after.clone();
        rt.block_on(async move {
            let peer: SocketAddr = ([127, 0, 0, 1], 9).into();
            // Silence the default hook's message for this deliberate panic.
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            spawn_guarded(0, peer, async { panic!("boom") });
            monoio::time::sleep(Duration::from_millis(10)).await;
            std::panic::set_hook(hook);
            let a = after.clone();
            spawn_guarded(0, peer, async move { a.set(a.get() + 1) });
            monoio::time::sleep(Duration::from_millis(10)).await;
        });
        assert_eq!(
            seen.get(),
            1,
            "the worker stopped running tasks after a panic"
        );
    }
}
