//! Workers: one thread per core, each pinned, with its own monoio runtime, SO_REUSEPORT
//! listener, upstream pool and view of the config. Nothing here is shared between workers
//! except the `Arc<Shared>` they read.

use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::{FusionDriver, FusionRuntime, LegacyDriver, RuntimeBuilder};

use crate::accesslog;
use crate::state::Shared;
use crate::upgrade::{Handover, Inherited};
use crate::worker::Worker;

/// A started server: its address and worker threads.
pub struct Server {
    pub local_addr: SocketAddr,
    /// Where the admin API listens, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The access log's writer, to reopen the file on SIGHUP/SIGUSR1 (None when off).
    pub access_log: Option<accesslog::Writer>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Closed by [`Server::wake_for_drain`]: every worker reads the EOF at once.
    drain_signal: Option<UnixStream>,
    /// What `SIGUSR2` hands a new process (None if this program's path is unknown).
    handover: Option<Handover>,
    /// Set to end the admin acceptor once a new process took the admin socket over.
    admin_stop: Option<Arc<AtomicBool>>,
}

impl Server {
    /// Blocks until every worker thread ends.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// True once every worker has finished (after a drain).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Wakes every worker to see that the process is draining (set `Shared::draining`
    /// first): closing our end of the socket pair ends each worker's pending read of it.
    pub fn wake_for_drain(&mut self) {
        self.drain_signal = None;
        // The sockets close with the workers' listeners now, refusing new clients, unless
        // a new process holds them (an upgrade).
        if let Some(h) = &mut self.handover {
            h.release();
        }
    }

    /// `SIGUSR2`: starts a new process on the listening sockets (see [`crate::upgrade`]).
    pub fn upgrade(&self, shared: &Arc<Shared>) {
        match &self.handover {
            Some(h) => h.begin(shared),
            None => log::error!("upgrade: the path of this program is unknown; SIGUSR2 ignored"),
        }
    }

    /// A stop came before an upgrade's new process took over: it stops too.
    pub fn stop_upgrade(&self) {
        if let Some(h) = &self.handover {
            h.stop_child();
        }
    }

    /// Stops accepting on the admin port, which a new process serves now (an upgrade).
    pub fn stop_admin(&self) {
        if let Some(stop) = &self.admin_stop {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (`{key}`): {source}{hint}")]
    Bind {
        /// The config key of the address: `listen` or `admin`.
        key: &'static str,
        addr: SocketAddr,
        source: io::Error,
        hint: String,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error("cannot open the access log {path}: {source} (check `access_log`)")]
    AccessLog { path: String, source: io::Error },
    #[error("cannot write the pid file {path}: {source} (check --pid-file)")]
    PidFile { path: String, source: io::Error },
}

/// A bind failure for the address configured as `key`, with what to do about it.
pub fn bind_error(key: &'static str, addr: SocketAddr, source: io::Error) -> StartError {
    let hint = match source.kind() {
        io::ErrorKind::AddrInUse => format!(
            " (is another gateway or server already running on this port? stop it or change `{key}`; if nothing listens there, a connection may hold it as its local port, shown by `ss -tanp`: ports in /proc/sys/net/ipv4/ip_local_port_range are handed out that way)"
        ),
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            " (ports below 1024 need root or the CAP_NET_BIND_SERVICE capability, e.g. `setcap cap_net_bind_service=+ep` on the binary; or set `{key}` to a port from 1024 up)"
        ),
        io::ErrorKind::AddrNotAvailable => format!(
            " (no interface of this machine has that address: set `{key}` to one of its own, 0.0.0.0 for all, or 127.0.0.1)"
        ),
        _ => String::new(),
    };
    StartError::Bind {
        key,
        addr,
        source,
        hint,
    }
}

/// Connections a listener holds for the accept loop. The kernel caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4), so this asks for as deep a queue
/// as the machine allows, as Go does: a burst of connects beyond the backlog has its SYNs
/// dropped and retried only after 1 s, 3 s, 7 s.
const LISTEN_BACKLOG: i32 = 65_535;

/// `TCP_NOTSENT_LOWAT` of every client connection (accepted sockets inherit it from the
/// listener): the bytes the kernel holds for a client beyond what is in flight to it. By
/// default it holds up to the whole send buffer (4 MiB here) and lets the writer in again
/// only once a third of it has drained, so a client reading 20 KB/s looked stalled for
/// `timeouts.body` and was cut off, and every slow reader cost megabytes of kernel memory.
/// At 128 KiB the gateway sees a reader's progress every 64 KiB or so (a steady reader
/// needs about 2-3 x 64 KiB per `timeouts.body`; README, `min_body_rate`), and holds at
/// most that much unsent for it. 16 KiB (Cloudflare's value) cost 1.06-1.12x the CPU per 1 MiB
/// download on loopback; 128 KiB cost nothing measurable (0.92x, 0.97x; 5-round A/Bs
/// with `bench/floor/run.sh`, AMD EPYC VM). A spliced body raises it while it moves
/// (`splice.rs`).
pub const CLIENT_NOTSENT_LOWAT: libc::c_int = 128 * 1024;

/// One SO_REUSEPORT listener; the kernel spreads new connections across them.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if !crate::io::set_notsent_lowat(std::os::fd::AsRawFd::as_raw_fd(&s), CLIENT_NOTSENT_LOWAT) {
        log::warn!(
            "TCP_NOTSENT_LOWAT not set on {addr} ({}): slow readers of long responses are cut off sooner",
            io::Error::last_os_error()
        );
    }
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Binds `listen` and `admin` once and lets go, so that a port taken is said before
/// anything else starts (the cluster thread joins the fleet: see `lib::run`).
/// An address a process being upgraded handed over is in use, by it: not checked.
pub fn check_ports(
    config: &crate::config::Config,
    inherited: &Inherited,
) -> Result<(), StartError> {
    for (key, addr) in [("listen", Some(config.listen)), ("admin", config.admin)] {
        match addr {
            Some(addr) if !inherited.holds(addr) => port_free(key, addr)?,
            _ => {}
        }
    }
    Ok(())
}

/// What `--check` says of the `listen` and `admin` addresses, bound once and let go: an
/// address the gateway could never bind (not on this machine, a port below 1024 without
/// the capability) is an error; a port in use now is a note, not an error, since a running
/// gateway with this config holds its own, and keeps it across a reload (`SIGHUP`).
pub fn check_binds(config: &crate::config::Config) -> Result<Vec<String>, StartError> {
    let mut notes = Vec::new();
    for (key, addr) in [("listen", Some(config.listen)), ("admin", config.admin)] {
        let Some(addr) = addr else { continue };
        match port_free(key, addr) {
            Err(StartError::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
                notes.push(format!(
                    "{key}: {addr} is in use now, by this gateway if it runs with this config (it keeps the port across a reload, SIGHUP) or by another process (`ss -ltnp` names it): a start needs it free; an upgrade (SIGUSR2) takes it over"
                ));
            }
            other => other?,
        }
    }
    Ok(notes)
}

/// A plain bind of `addr` (the value of `key`), let go at once: the port is free. Port 0
/// is always free.
fn port_free(key: &'static str, addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() != 0 {
        std::net::TcpListener::bind(addr).map_err(|e| bind_error(key, addr, e))?;
    }
    Ok(())
}

/// Binds every worker's listener on this thread (so errors surface before anything
/// starts), or takes those a process being upgraded handed over (`inherited`), then starts
/// the workers.
pub fn start(shared: Arc<Shared>, inherited: &mut Inherited) -> Result<Server, StartError> {
    let config = shared.current.load().config.clone();
    let mut addr = config.listen;
    let mut listeners = inherited.take_listeners(addr, config.workers);
    if let Some(first) = listeners.first() {
        addr = first
            .local_addr()
            .map_err(|e| bind_error("listen", addr, e))?;
    } else {
        // SO_REUSEPORT would let us silently share the port with another running gateway:
        // a plain bind first proves the port is free.
        port_free("listen", addr)?;
    }
    let adopted = listeners.len();
    // More workers than the old process had: the others join its sockets' group.
    while listeners.len() < config.workers {
        let l = reuseport_listener(addr).map_err(|e| bind_error("listen", addr, e))?;
        // With port 0 the first bind picks the port; the others join it.
        addr = l.local_addr().map_err(|e| bind_error("listen", addr, e))?;
        listeners.push(l);
    }
    if adopted > 0 {
        if let Err(e) = crate::upgrade::steer_to_first(&listeners[0], listeners.len()) {
            log::warn!("upgrade: cannot keep new connections off the old process's other sockets ({e}); one arriving as it closes them may be reset");
        }
    }
    let log = accesslog::start(
        &config.access_log,
        &config.access_log_epoch,
        shared.access_log.clone(),
    )
    .map(Some)
    .map_err(|source| StartError::AccessLog {
        path: config.access_log.to_string(),
        source,
    })?;
    let admin = match config.admin {
        Some(admin) => Some(match inherited.take_admin(admin) {
            Some(l) => l,
            None => {
                std::net::TcpListener::bind(admin).map_err(|e| bind_error("admin", admin, e))?
            }
        }),
        None => None,
    };
    inherited.close_unused();
    // What a later upgrade hands over; without it (no path to this program) SIGUSR2 says so.
    let handover = crate::upgrade::program()
        .and_then(|exe| {
            let args = std::env::args_os().skip(1).collect();
            Handover::new(exe, args, &listeners, admin.as_ref())
        })
        .map_err(|e| log::warn!("upgrade (SIGUSR2) not available: {e}"))
        .ok();
    let (admin_addr, admin_stop) = match (config.admin, admin) {
        (Some(at), Some(l)) => {
            let (bound, stop) =
                crate::admin::start(l, shared.clone()).map_err(|e| bind_error("admin", at, e))?;
            (Some(bound), Some(stop))
        }
        _ => (None, None),
    };
    for w in start_warnings(&config) {
        log::warn!("{w}");
    }
    let cpus = allowed_cpus();
    let (drain_signal, drain_seen) = UnixStream::pair().map_err(StartError::Thread)?;
    let mut threads = Vec::with_capacity(listeners.len());
    let access_log = log.clone();
    for (index, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let log = log.clone();
        // Worker i on the i-th CPU the process was started with (`taskset`, a cpuset), not
        // on core i, which may be one the operator kept it off.
        let pin = config
            .pin_workers
            .then(|| cpus.get(index % cpus.len().max(1)).copied())
            .flatten();
        let drain = drain_seen.try_clone().map_err(StartError::Thread)?;
        let t = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || worker_main(index, pin, shared, listener, log, drain))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    Ok(Server {
        local_addr: addr,
        admin_addr,
        access_log,
        threads,
        drain_signal: Some(drain_signal),
        handover,
        admin_stop,
    })
}

/// The CPUs this process may run on (`sched_getaffinity` of the calling thread, as
/// `taskset` or a cgroup cpuset left it), in increasing order; empty if it cannot be read.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        log::warn!(
            "cannot read the CPUs this process may use: {}; pinning is off",
            io::Error::last_os_error()
        );
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the number of CPUs a `cpu_set_t` holds.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// `0-3,6` style, as in `/proc/PID/status`.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        out.push(if cpus[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", cpus[i])
        });
        i += 1;
    }
    out.join(",")
}

/// What is legal in `config` but likely a mistake on this machine: more workers than the
/// CPUs the process may run on, and a drain grace with no admin port for a load balancer
/// to see `/healthz` fail. Logged at start, printed by `--check` (which said nothing of
/// them: a review).
pub fn start_warnings(config: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    let cpus = allowed_cpus();
    if config.workers > cpus.len() && !cpus.is_empty() {
        out.push(format!(
            "workers: {} workers but this process may run on {} CPU(s) ({}): workers share cores; set `workers` to {} or 0",
            config.workers,
            cpus.len(),
            cpu_list(&cpus),
            cpus.len()
        ));
    }
    if let Some(admin) = config
        .admin
        .filter(|a| a.ip().to_canonical().is_unspecified())
    {
        // NGINX's stub_status and HAProxy's stats page are usually kept to localhost; this
        // one shows the config and the backends, and an operator review bound it to
        // 0.0.0.0 without a word. `[::ffff:0.0.0.0]` is every IPv4 interface too.
        out.push(format!(
            "admin: {admin} listens on every interface: /admin/config, /admin/backends and /metrics have no authentication; bind it to 127.0.0.1, or to a private address behind a firewall"
        ));
    }
    out.extend(
        config
            .admission
            .trusted_proxies
            .iter()
            .filter_map(|c| c.warning()),
    );
    // A backend that is this gateway (an operator review: a port typo passed in silence).
    // One whose path routes to another service is an alias, and fine; a loop is refused
    // by the config's validation.
    for svc in &config.services {
        for b in svc
            .backends
            .iter()
            .filter(|b| config.is_own_listener(b.addr))
        {
            if config.routes_to(b).is_none() {
                out.push(format!(
                    "services.{}: backend {} is this gateway's own `listen` address: its requests come back here under {}, which routes to no service (404); check the port, or give it the path /v1/proxy/NAME of the service it stands for",
                    svc.name,
                    b.url,
                    if b.path_prefix.is_empty() { "/" } else { &b.path_prefix },
                ));
            }
        }
    }
    // One server listed twice under two names (an operator review: `127.0.0.1:8001` and
    // `localhost:8001` passed in silence, a double share and two circuits for one
    // server). Only where the name cannot pick a virtual host: an IP literal or
    // `localhost` (two names of one ingress are two backends).
    for svc in &config.services {
        let plain = |b: &crate::config::BackendUrl| {
            let host = b.authority.rsplit_once(':').map_or(&*b.authority, |h| h.0);
            host.eq_ignore_ascii_case("localhost")
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok()
        };
        for (i, b) in svc.backends.iter().enumerate().filter(|(_, b)| plain(b)) {
            let first = svc.backends[..i]
                .iter()
                .find(|a| a.addr == b.addr && a.path_prefix == b.path_prefix && plain(a));
            if let Some(a) = first {
                out.push(format!(
                    "services.{}: backends {} and {} are one server ({}): it takes the shares of both and has two circuits; list it once (with a weight for a larger share)",
                    svc.name, a.url, b.url, b.addr
                ));
            }
        }
    }
    // A limit one address cannot reach refuses nothing (an operator review: said nothing).
    if let (Some(per), Some(max)) = (
        config.limits.max_connections_per_client,
        config.limits.max_connections,
    ) {
        if u64::from(per) >= max {
            out.push(format!(
                "limits.max_connections_per_client {per} is not below limits.max_connections {max}: it never refuses a connection"
            ));
        }
    }
    // An explicit field list without the ID (the default list ends with it): the ID goes
    // both ways but into no line, which an operator review found only in an aside.
    if config.request_id
        && config.access_log != crate::accesslog::Sink::Off
        && !config
            .access_log_fields
            .contains(&crate::accesslog::Field::RequestId)
    {
        out.push(
            "request_id is on, but access_log_fields leaves request_id out: requests and answers carry the ID, their access log lines do not; list it to log it".to_string(),
        );
    }
    if config.admin.is_none() && !config.timeouts.drain_grace.is_zero() {
        out.push(
            "timeouts.drain_grace is set but there is no `admin` port: nothing can see /healthz fail during the grace, so it only delays the drain".to_string(),
        );
    }
    // Idle clients are looked at once a second (an operator review set 1ms and was told
    // nothing).
    let idle = config.timeouts.client_idle;
    if idle < Duration::from_secs(1) {
        out.push(format!(
            "timeouts.client_idle: {} ms is checked once a second: an idle client connection is closed 1 to 2 s after its last request, not sooner",
            idle.as_millis()
        ));
    }
    out
}

type Runtime = FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<LegacyDriver>,
>;

/// io_uring with SINGLE_ISSUER + COOP_TASKRUN (no cross-core interrupt for a completion:
/// the kernel finishes it the next time the worker enters it; Linux 5.19+, see design.md
/// §7), then plain io_uring, then epoll. Returns the runtime and its name.
///
/// Not DEFER_TASKRUN, which finishes completions only when the worker waits for them: monoio
/// enters the kernel without waiting (to submit) as long as tasks are ready, so under load
/// the operations that complete at once kept a share of the connections going round while
/// the rest waited for the ring to run dry. At 10 000 connections 15–18% of them got ~1.6×
/// the others' responses in about half the runs, and the p99 doubled (`bench/c10k/run.sh`,
/// see the README's performance section); with COOP_TASKRUN every run was even, at the same
/// CPU per request there and at 1, 64 and 256 connections.
///
/// `GATEWAY_DRIVER` in the environment, for tests and comparisons: `epoll` skips io_uring
/// (the fallback a kernel without it, or a seccomp profile that forbids it, gets); `defer`
/// tries SINGLE_ISSUER + DEFER_TASKRUN first.
fn build_runtime() -> io::Result<(Runtime, &'static str)> {
    crate::io::forget_spare_timers();
    let driver = std::env::var_os("GATEWAY_DRIVER");
    if driver
        .as_ref()
        .is_some_and(|v| v != "epoll" && v != "defer")
    {
        // Like a `RUST_LOG` typo, one that is said (a review saw `bogus` ignored silently).
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            log::warn!(
                "GATEWAY_DRIVER={:?} is not a driver (epoll, defer): using io_uring",
                driver.as_deref().unwrap_or_default()
            )
        });
    }
    if driver.as_ref().is_some_and(|v| v == "epoll") {
        return RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|rt| (FusionRuntime::Legacy(rt), "epoll"));
    }
    let tuned: &[(bool, &'static str)] = if driver.as_ref().is_some_and(|v| v == "defer") {
        &[
            (true, "io_uring (single issuer, defer taskrun)"),
            (false, "io_uring (single issuer, coop taskrun)"),
        ]
    } else {
        &[(false, "io_uring (single issuer, coop taskrun)")]
    };
    for &(defer, name) in tuned {
        let mut urb = io_uring::IoUring::builder();
        urb.setup_single_issuer();
        if defer {
            urb.setup_defer_taskrun();
        } else {
            urb.setup_coop_taskrun();
        }
        let tuned = RuntimeBuilder::<FusionDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .uring_builder(urb)
            .build();
        match tuned {
            Ok(rt @ FusionRuntime::Uring(_)) => return Ok((rt, name)),
            Ok(rt) => return Ok((rt, "epoll")),
            Err(e) => log::debug!("{name} unavailable: {e}"),
        }
    }
    if let Ok(rt) = RuntimeBuilder::<FusionDriver>::new().enable_timer().build() {
        let name = if matches!(rt, FusionRuntime::Uring(_)) {
            "io_uring"
        } else {
            "epoll"
        };
        return Ok((rt, name));
    }
    RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()
        .map(|rt| (FusionRuntime::Legacy(rt), "epoll"))
}

fn worker_main(
    index: usize,
    pin: Option<usize>,
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    log: Option<accesslog::Writer>,
    drain_signal: UnixStream,
) {
    if let Some(core) = pin {
        if let Err(e) = monoio::utils::bind_to_cpu_set([core]) {
            log::warn!("worker {index}: cannot pin to core {core}: {e:?}; running unpinned");
        }
    }
    let (mut rt, driver) = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("worker {index}: cannot build a runtime: {e}");
            return;
        }
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
        let worker = Rc::new(Worker::new(index, shared, log));
        monoio::spawn(housekeeping(worker.clone()));
        worker.pipes.off.set(!worker.view().snapshot.config.splice);
        let uring = driver != "epoll";
        if let Some(spin) = worker.view().snapshot.config.busy_poll {
            log::info!("worker {index}: busy_poll {}us", spin.as_micros());
            let w = worker.clone();
            monoio::spawn(async move { w.busy_poll(spin, uring).await });
        }
        let canceller = monoio::io::Canceller::new();
        let handle = canceller.handle();
        monoio::spawn(cancel_on_drain(worker.clone(), canceller, drain_signal));
        loop {
            // At this worker's share of `limits.max_connections`, stop reading the
            // listener until a connection ends (see `Worker::make_room`).
            // A client it took from the backlog to count (`max_connections_per_client`) is
            // served now, with what it counted.
            if let Some((stream, peer, client)) =
                worker.make_room(listener.as_raw_fd(), !uring).await
            {
                match monoio::net::TcpStream::from_std(stream) {
                    Ok(stream) => serve_counted(&worker, stream, peer, client),
                    Err(e) => {
                        if let Some(held) = client {
                            worker.uncount_client(held);
                        }
                        log::warn!("worker {index}: cannot register a connection: {e}");
                    }
                }
                // It took the room: look again before accepting another.
                continue;
            }
            if worker.draining() {
                break;
            }
            match listener.cancelable_accept(handle.clone()).await {
                Ok((stream, peer)) => {
                    // One accepted as the drain began is served once, as the backlog is.
                    admit(&worker, stream, peer);
                    if worker.draining() {
                        break;
                    }
                    accept_waiting(&worker, listener.as_raw_fd(), !uring);
                }
                Err(_) if worker.draining() => break,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; soon when a
                    // descriptor is on its way back (the closing connection's task runs
                    // first), as the cap's eviction does (a re-review: one client a 50 ms).
                    let wait = if worker.accept_failed(&e) { 2 } else { 50 };
                    monoio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
        // Draining: new connections are refused from here on. Those already in the backlog
        // finished their handshake and may have sent a request: closing the listener would
        // reset them (an operator review saw uploads reset at every restart), so they are
        // taken and served once, past the connection cap.
        take_backlog(&worker, listener.as_raw_fd(), !uring);
        if worker.socket_left_behind() {
            // A socket the new process did not take closes with this one: handshakes
            // begun before it stopped sending clients here are taken first.
            let end = Instant::now() + crate::upgrade::LINGER;
            while Instant::now() < end {
                monoio::time::sleep(Duration::from_millis(20)).await;
                take_backlog(&worker, listener.as_raw_fd(), !uring);
            }
        }
        drop(listener);
        drain(&worker).await;
    });
}

/// How long the drain spares connections that went idle just before it (see [`drain`]); at
/// most half of `timeouts.drain`.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Most connections one turn of the accept loop takes: one through the ring, the rest
/// straight from the backlog. HAProxy takes 64 per turn of its poll loop, but a turn of
/// ours runs every ready task and lasts tens of ms under thousands of busy connections: at
/// 64 a burst of 3000 new clients took 1.1–3.8 s to get in at 5000 busy connections, at
/// 1024 (a few ms of accepts) 0.2–0.3 s (`bench/accept/run.sh`).
/// Also the most connections over their client's limit `Worker::make_room` resets in one
/// turn.
pub const ACCEPT_BATCH: usize = 1024;

/// Registers an accepted connection and starts serving it, unless its client holds
/// `limits.max_connections_per_client` already: then it is reset at once, which costs the
/// gateway no request and no `TIME_WAIT` (HAProxy's `tcp-request connection reject`).
fn admit(worker: &Rc<Worker>, stream: monoio::net::TcpStream, peer: SocketAddr) {
    worker.metrics.accepted.inc();
    let Ok(client) = worker.count_client(peer.ip()) else {
        crate::io::set_reset_on_close(stream.as_raw_fd());
        return;
    };
    serve_counted(worker, stream, peer, client);
}

/// Registers a connection accepted and counted towards its client's limit (`client`), and
/// starts serving it.
fn serve_counted(
    worker: &Rc<Worker>,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
    client: Option<crate::per_client::Held>,
) {
    let registration = worker.register(stream.as_raw_fd(), client);
    spawn_guarded(
        worker.index,
        peer,
        crate::conn::serve(worker.clone(), registration, stream, peer),
    );
}

/// When the drain begins: takes every connection waiting in the backlog (up to
/// [`ACCEPT_BATCH`]) to serve its first request.
fn take_backlog(worker: &Rc<Worker>, listener: RawFd, nonblocking: bool) {
    for _ in 0..ACCEPT_BATCH {
        match crate::io::accept_now(listener, nonblocking) {
            Some(Ok((stream, peer))) => match monoio::net::TcpStream::from_std(stream) {
                Ok(stream) => admit(worker, stream, peer),
                Err(_) => return,
            },
            None | Some(Err(_)) => return,
        }
    }
}

/// After an accept, takes the connections already waiting in the backlog (up to
/// [`ACCEPT_BATCH`] in all, and never past the worker's connection cap) with `accept4`
/// instead of one ring operation each. Each ring accept completes only in the next turn
/// of the event loop, and under load a turn runs every ready connection's task: with
/// 10 000 busy connections a worker took in a few dozen new ones per second, so a burst of
/// clients overflowed the backlog and waited for SYN retransmits. The cost when none
/// waits: one `accept4` that returns EAGAIN per ring accept.
fn accept_waiting(worker: &Rc<Worker>, listener: RawFd, nonblocking: bool) {
    for _ in 1..ACCEPT_BATCH {
        if worker.draining() || worker.open_connections() >= worker.connection_cap() {
            return;
        }
        match crate::io::accept_now(listener, nonblocking) {
            None => return,
            Some(Ok((stream, peer))) => match monoio::net::TcpStream::from_std(stream) {
                Ok(stream) => admit(worker, stream, peer),
                Err(e) => {
                    log::warn!("worker {}: cannot register a connection: {e}", worker.index);
                    return;
                }
            },
            // A client that gave up, or no descriptor left: the ring accept that comes
            // next meets it again and backs off if it lasts.
            Some(Err(e)) => {
                log::debug!("worker {}: accept: {e}", worker.index);
                return;
            }
        }
    }
}

/// Cancels the pending accept once the process starts draining. monoio cannot be woken
/// from another thread without its `sync` feature, so the worker waits in a read of its end
/// of a socket pair instead, which the control thread's [`Server::wake_for_drain`] ends
/// (EOF): no timer, no wake-up until then.
async fn cancel_on_drain(worker: Rc<Worker>, canceller: monoio::io::Canceller, drain: UnixStream) {
    if let Err(e) = until_closed(drain).await {
        log::warn!(
            "worker {}: cannot wait for the drain signal ({e}); checking every 100 ms",
            worker.index
        );
    }
    // The signal ends only once the flag is set; this loop is for the error case above.
    while !worker.draining() {
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
    canceller.cancel();
    worker.wake_acceptor();
}

/// Returns when the other end of `s` is closed.
async fn until_closed(s: UnixStream) -> io::Result<()> {
    use monoio::io::AsyncReadRent;
    s.set_nonblocking(true)?;
    let mut s = monoio::net::UnixStream::from_std(s)?;
    let mut buf = vec![0u8; 1];
    loop {
        let (r, b) = s.read(buf).await;
        buf = b;
        if r? == 0 {
            return Ok(());
        }
    }
}

/// Lets in-flight requests finish (each connection closes after its current response),
/// closes idle ones, and returns when none is left or the drain deadline passed.
///
/// A connection that went idle within the last second or two is closed only after
/// [`DRAIN_IDLE_GRACE`]: its client is likely between two requests, the next perhaps on its
/// way, and a request that comes meanwhile is answered with `Connection: close`, so the
/// client moves on without losing it. Closed at once, keep-alive clients sending back to
/// back lost the request they were sending, most of them (an operator review: 10 to 31 of
/// 32 clients per drain; NGINX closes them at once too, and HAProxy before 2.4 waited for
/// a last request as this does). One idle longer is closed at once. A connection that
/// goes idle later in the drain, after an answer sent keep-alive just before the signal
/// (`conn::serve`), is spared alike while it has been idle for under one to two seconds
/// (the worker's ticks), until the deadline is too near for that.
async fn drain(worker: &Worker) {
    let drain = worker.view().snapshot.config.timeouts.drain;
    let start = Instant::now();
    let deadline = start + drain;
    let grace_end = start + DRAIN_IDLE_GRACE.min(drain / 2);
    let spare_until = deadline - (3 * DRAIN_IDLE_GRACE).min(drain / 2);
    let recent = worker.tick().saturating_sub(1);
    loop {
        let now = Instant::now();
        let spare = if now < grace_end {
            Some(recent)
        } else if now < spare_until {
            Some(worker.tick().saturating_sub(1))
        } else {
            None
        };
        worker.close_idle(spare);
        if worker.open_connections() == 0 || Instant::now() >= deadline {
            break;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = worker.open_connections();
    if left > 0 {
        // What is still in flight is cut: logged (its task never finishes to write its own
        // line), and reset, never a clean end.
        worker.log_cut();
        worker.reset_open();
        log::warn!(
            "worker {}: drain deadline passed with {left} client {} open; resetting them",
            worker.index,
            crate::logging::plural(left as u64, "connection", "connections")
        );
    }
    worker.access.flush();
}

/// Spawns a connection task whose panic is logged and contained to that connection.
fn spawn_guarded(worker: usize, peer: SocketAddr, task: impl Future<Output = ()> + 'static) {
    // A plain future, not an `async` block around one: the block would keep room for the
    // captured task beside the running one, doubling every connection's task.
    monoio::spawn(Guarded {
        inner: task,
        worker,
        peer,
    });
}

/// Once a second, just after the wall clock's second turns: refresh the `Date` line, pick
/// up a reloaded config (closing pooled connections of removed backends, and showing a new
/// connection limit in the metrics), close expired idle upstream connections, start the
/// health checks due, free the spare buffers nothing needed, flush the access log.
async fn housekeeping(worker: Rc<Worker>) {
    loop {
        // Aligned to the second so `Date` is late by a timer's lag, not up to a second.
        monoio::time::sleep(crate::date::until_next_second()).await;
        worker.date.refresh();
        let view = worker.view();
        worker.close_expired_idle(view.snapshot.config.timeouts.client_idle);
        if !view.snapshot.config.ignore_client_abort {
            worker.watch_waiting();
        }
        drop(view);
        worker.watch_stalled();
        worker.end_accept_trouble();
        worker.say_tallied();
        // Sets the gauge: a reload's new limit used to show only after the next accept.
        worker.connection_cap();
        worker.pool.sweep(|_| true);
        worker.say_strays();
        crate::health::start_due(&worker, worker.tick());
        let freed = worker.trim_spares() + crate::io::trim_spare_timers();
        worker.trim_heap(freed);
        worker.access.flush();
        worker.say_unsaid_failures();
    }
}

/// Runs a connection's future, turning a panic inside it into a log line: one connection's
/// bug must not take down the worker and every other connection on its core.
struct Guarded<F> {
    inner: F,
    worker: usize,
    peer: SocketAddr,
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (worker, peer) = (self.worker, self.peer);
        // SAFETY: structural pinning; the inner future is never moved out of `self`.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.inner) };
        let poll = || crate::clock::poll_scope(|| inner.poll(cx));
        match std::panic::catch_unwind(AssertUnwindSafe(poll)) {
            Ok(p) => p,
            Err(panic) => {
                log::error!(
                    "worker {worker}: connection from {peer} panicked: {}",
                    panic_message(&panic)
                );
                Poll::Ready(())
            }
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
    fn cpu_lists_read_like_proc() {
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpu_list(&[1]), "1");
        assert_eq!(cpu_list(&[0, 2, 3]), "0,2-3");
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn bind_errors_name_the_key_and_the_fix() {
        let addr: SocketAddr = ([127, 0, 0, 1], 80).into();
        let e = bind_error("admin", addr, io::ErrorKind::AddrInUse.into()).to_string();
        assert!(e.contains("`admin`") && e.contains("change `admin`"), "{e}");
        let e = bind_error("listen", addr, io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(
            e.contains("below 1024")
                && e.contains("CAP_NET_BIND_SERVICE")
                && e.contains("`listen`"),
            "{e}"
        );
        let high: SocketAddr = ([127, 0, 0, 1], 8080).into();
        let e = bind_error("listen", high, io::ErrorKind::PermissionDenied.into()).to_string();
        assert!(!e.contains("below 1024"), "{e}");
    }

    /// The start warnings of the config `yaml` that say `what`.
    fn warnings_saying(yaml: &str, what: &str) -> Vec<String> {
        let c = crate::config::Config::parse(yaml).expect("valid");
        start_warnings(&c)
            .into_iter()
            .filter(|w| w.contains(what))
            .collect()
    }

    /// An operator review: with `request_id: true` and a field list without it, the ID was
    /// missing from the access log without a word.
    #[test]
    fn a_request_id_left_out_of_the_access_log_is_warned_of() {
        let said = "access_log_fields leaves request_id out";
        let base = "access_log: stdout\nservices:\n  a: [http://127.0.0.1:18001]\n";
        let w = warnings_saying(
            &format!("request_id: true\naccess_log_fields: [time, status]\n{base}"),
            said,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        for quiet in [
            format!("request_id: true\n{base}"),
            format!("request_id: true\naccess_log_fields: [time, request_id]\n{base}"),
            format!("access_log_fields: [time, status]\n{base}"),
            format!(
                "request_id: true\naccess_log_fields: [time]\n{}",
                base.replace("stdout", "off")
            ),
        ] {
            assert!(warnings_saying(&quiet, said).is_empty(), "{quiet}");
        }
    }

    /// Regression (an operator review): a backend on the gateway's own port passed
    /// `--check` without a word.
    #[test]
    fn a_backend_that_is_this_gateway_is_warned_of_unless_it_names_a_service() {
        let warned = |yaml: &str| warnings_saying(yaml, "own `listen` address");
        let w = warned("listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.1:18000]\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("services.a: backend http://127.0.0.1:18000 is this gateway's own `listen` address: its requests come back here under /, which routes to no service"),
            "{w:?}"
        );
        // Every interface: a loopback address on its port is this gateway too.
        let w = warned(
            "listen: 0.0.0.0:18000\nservices:\n  a: [http://127.0.0.2:18000/v1/proxy/nope]\n",
        );
        assert!(
            w.len() == 1 && w[0].contains("under /v1/proxy/nope"),
            "{w:?}"
        );
        // `[::]` takes IPv4 too.
        let w = warned("listen: \"[::]:18000\"\nservices:\n  a: [http://127.0.0.1:18000]\n");
        assert_eq!(w.len(), 1, "{w:?}");
        // An alias of another service, another port, another address, another family
        // (`0.0.0.0` does not take `[::1]`: a review): nothing to say.
        for yaml in [
            "listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.1:18000/v1/proxy/b]\n  b: [http://127.0.0.1:18001]\n",
            "listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.1:18001]\n",
            "listen: 127.0.0.1:18000\nservices:\n  a: [http://127.0.0.2:18000]\n",
            "listen: 127.0.0.1:0\nservices:\n  a: [http://127.0.0.1:18000]\n",
            "listen: 0.0.0.0:18000\nservices:\n  a: [\"http://[::1]:18000\"]\n",
        ] {
            assert!(warned(yaml).is_empty(), "{yaml}");
        }
    }

    /// Regression (an operator review): one server written two ways passed in silence.
    #[test]
    fn one_server_listed_twice_under_two_names_is_warned_of() {
        let warned = |yaml: &str| warnings_saying(yaml, "are one server");
        let w = warned("services:\n  a: [http://127.0.0.1:18001, http://localhost:18001]\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("services.a: backends http://127.0.0.1:18001 and http://localhost:18001 are one server (127.0.0.1:18001)"),
            "{w:?}"
        );
        // Another port, another prefix, another service: nothing to say.
        for yaml in [
            "services:\n  a: [http://127.0.0.1:18001, http://127.0.0.1:18002]\n",
            "services:\n  a: [http://127.0.0.1:18001/x, http://localhost:18001/y]\n",
            "services:\n  a: [http://127.0.0.1:18001]\n  b: [http://localhost:18001]\n",
        ] {
            assert!(warned(yaml).is_empty(), "{yaml}");
        }
    }

    #[test]
    fn a_panicking_connection_does_not_take_the_worker_down() {
        let (mut rt, _) = build_runtime().expect("runtime");
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
