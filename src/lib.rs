//! # gateway — a thread-per-core io_uring HTTP/1.1 reverse proxy
//!
//! ## Layout, in the order a request meets it
//! - [`server`]: worker threads, one pinned monoio runtime and SO_REUSEPORT listener each
//! - [`worker`]: one worker's context (config view, pool, buffers, open connections)
//! - [`conn`]: one client connection: head deadline, keep-alive, pipelining
//! - [`downstream`]: the client's side of the wire, gateway-made replies, lingering close
//! - [`h1`]: HTTP/1.1 parsing and framing decisions, chunked coding
//! - [`reqid`]: the request's `X-Request-Id` (`request_id: true`)
//! - [`rewrite`]: routing and the heads as the other side sees them
//! - [`router`]: `/v1/proxy/{service}/{rest}` on the raw target
//! - [`admission`]: rate and concurrency limits, before a backend is picked
//! - [`exchange`]: one trip to a backend, phase by phase, the outcome settled in one place
//! - [`balancer`]: per-worker round-robin that skips open circuits
//! - [`breaker`]: the packed per-backend circuit breaker word
//! - [`pool`]: per-worker idle upstream connections, checked clean when handed out
//! - [`health`]: active health checks: settings, each backend's state, the probe
//! - [`relay`]: bodies streamed and re-framed
//! - [`tunnel`]: a WebSocket after the backend's `101`, bytes relayed both ways
//! - [`splice`]: long bodies moved socket to socket in the kernel (`splice: true`)
//! - [`error`]: the responses the gateway makes itself
//! - [`date`]: the `Date` header line, formatted once a second per worker
//! - [`io`]: split sockets, owned-buffer reads and writes with deadlines
//! - [`clock`]: the monotonic clock, read once per poll of a connection's task
//! - [`fdlimit`]: the descriptor limit raised at start, and the client connections it allows
//!
//! Control path: [`config`] (file → validated `Config`) → [`state`] (snapshot + breaker
//! registry behind one `ArcSwap`), [`reload`] (SIGHUP: diff, validate, swap). Side:
//! [`accesslog`], [`metrics`] and [`admin`] (what operators read), [`logging`], [`redact`]
//! (no credentials in messages),
//! [`procstat`] (the process's CPU, memory and start time for `/metrics`), [`upgrade`]
//! (SIGUSR2: a new process takes the listening sockets over),
//! [`cluster`] (a thread that shares circuit state with other instances through Redis; never
//! on the request path).

// Lint policy: never unwrap on the request path (network input must not panic a worker),
// and say why every unsafe block is sound.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod accesslog;
pub mod admin;
pub mod admission;
pub mod balancer;
pub mod boxes;
pub mod breaker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod date;
pub mod downstream;
pub mod error;
pub mod exchange;
pub mod fdlimit;
pub mod h1;
pub mod health;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod per_client;
pub mod pool;
pub mod procstat;
pub mod redact;
pub mod redis_link;
pub mod relay;
pub mod reload;
pub mod renders;
pub mod reqid;
pub mod rewrite;
pub mod router;
pub mod server;
pub mod splice;
pub mod state;
pub mod tunnel;
pub mod upgrade;
pub mod worker;

/// The version and the commit it was built from (`unknown` outside a git checkout), as
/// `--version`, the start line and `gateway_build_info` give them: `0.1.0 (5ac01d6fa3b2)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GATEWAY_COMMIT"), ")");

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::iterator::Signals;

pub use config::Config;
pub use state::Shared;

/// Starts the gateway on `config` (read from `path`, re-read on SIGHUP; the access log is
/// reopened on SIGHUP and SIGUSR1) and runs until SIGTERM/SIGINT and a graceful drain. A
/// second SIGTERM/SIGINT exits at once.
pub fn run(
    config: Config,
    path: PathBuf,
    pid_file: Option<PathBuf>,
) -> Result<(), server::StartError> {
    // Signals first, so that none arriving during startup takes the default action.
    // SIGQUIT drains like SIGTERM (NGINX's graceful shutdown) and SIGUSR2 upgrades in place
    // (NGINX's binary upgrade; HAProxy's master-worker re-executes itself on it too): left
    // to their defaults, an operator's habit from either killed every connection at once
    // (an operator review). SIGWINCH is the upgrade thread's word that the new process
    // serves.
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH])
        .map_err(server::StartError::Thread)?;
    // The listening sockets of a process being upgraded, if it started this one.
    let mut inherited = upgrade::Inherited::from_env();
    // Before anything opens descriptors or reads the limit (`Shared::fd_limit`).
    let fds = fdlimit::raise();
    let shared = Shared::new(config);
    if let Some(circuits) = inherited.breakers() {
        let (taken, not_closed) = shared.import_breakers(&circuits);
        log::info!("upgrade: breakers carried over: {taken} ({not_closed} not closed)");
    }
    // The ports before the fleet: an instance that cannot listen must not join it, not even
    // for its heartbeat's lifetime (an operator review saw its peers count it for 5 s).
    if let Err(e) = server::check_ports(&shared.current.load().config, &inherited) {
        return cannot_serve(&mut inherited, e);
    }
    // With `cluster:`, the fleet's circuit states are read before anything is served.
    let fleet = match cluster::start(&shared) {
        Ok(f) => f,
        Err(e) => return cannot_serve(&mut inherited, server::StartError::Thread(e)),
    };
    let mut server = match server::start(shared.clone(), &mut inherited) {
        Ok(s) => s,
        Err(e) => {
            // What failed after the fleet was joined leaves it at once.
            shared.draining.store(true, Ordering::SeqCst);
            wait_for_fleet_exit(fleet, &shared);
            return cannot_serve(&mut inherited, e);
        }
    };
    let started = (|| {
        start_dns_refresh(shared.clone()).map_err(server::StartError::Thread)?;
        let reloads = Reloader::start(shared.clone(), path, server.access_log.clone())
            .map_err(server::StartError::Thread)?;
        // Written once serving, so that its presence says so (`--pid-file`).
        let pid_file = match pid_file {
            Some(p) => Some(PidFile::write(p)?),
            None => None,
        };
        Ok((reloads, pid_file))
    })();
    let (reloads, pid_file) = match started {
        Ok(s) => s,
        Err(e) => {
            // The workers accept already (from sockets an upgrade shares with the old
            // process, too): the clients they took are served before the exit, not reset
            // with it (a review).
            if inherited.parent.is_some() {
                // Health checks go to the old process alone (this one's would say draining).
                shared.served_elsewhere();
                server.stop_admin();
            }
            shared.stopping.store(true, Ordering::SeqCst);
            shared.draining.store(true, Ordering::SeqCst);
            server.wake_for_drain();
            let drain = shared.current.load().config.timeouts.drain;
            let deadline = Instant::now() + drain + Duration::from_secs(1);
            while !server.finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            wait_for_fleet_exit(fleet, &shared);
            return cannot_serve(&mut inherited, e);
        }
    };
    log_startup(&shared, &server, fds);
    if let Some(old) = inherited.parent {
        log::info!("upgrade: took the listening sockets over from process {old}, which drains now");
        inherited.serving();
    }
    let mut stopped_by = SIGTERM;
    for sig in signals.forever() {
        if !on_signal(sig, &reloads, &server, &shared) {
            stopped_by = sig;
            break;
        }
    }
    // SIGWINCH ends the loop only once a new process serves (an upgrade). A stop concerns
    // this process alone if the new one took over first (its SIGWINCH still on its way),
    // and stops the new one too otherwise: one compare-and-swap each side decides which.
    shared.stopping.store(true, Ordering::SeqCst);
    let handed_over = stopped_by == SIGWINCH || !shared.refuse_handover();
    if handed_over {
        // Health checks go to the new process from now on; this one answers none.
        server.stop_admin();
    } else {
        // A stop: an upgrade's new process that had not taken over yet stops as well.
        server.stop_upgrade();
    }
    // No grace once handed over: the new process serves the address, no balancer need
    // move away from it.
    let grace = match handed_over {
        true => Duration::ZERO,
        false => shared.current.load().config.timeouts.drain_grace,
    };
    if !grace.is_zero() {
        log::info!("stopping: /healthz answers 503; serving as usual for {} (timeouts.drain_grace), then draining (signal again to exit now)", config::duration_text(grace));
        let end = Instant::now() + grace;
        while Instant::now() < end {
            stopping_signals(
                &mut signals,
                &reloads,
                &server,
                &shared,
                "without draining",
                pid_file.as_ref(),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let drain = shared.current.load().config.timeouts.drain;
    log::info!(
        "draining: {}; in-flight requests have up to {} (signal again to exit now)",
        match handed_over {
            true => "new connections go to the new process",
            false => "no new connections",
        },
        config::duration_text(drain)
    );
    shared.draining.store(true, Ordering::SeqCst);
    server.wake_for_drain();
    let deadline = Instant::now() + drain + Duration::from_secs(1);
    while !server.finished() && Instant::now() < deadline {
        let what = "without waiting for in-flight requests";
        stopping_signals(
            &mut signals,
            &reloads,
            &server,
            &shared,
            what,
            pid_file.as_ref(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last lines, those of requests the deadline cut among them, are written before the
    // writer thread goes with the process.
    if let Some(log) = &server.access_log {
        if !log.sync(Duration::from_secs(1)) {
            // A writer stuck on a pipe nobody reads or a dead disk: what it still holds goes
            // with the process, and says so (a review saw it lost silently).
            log::warn!(
                "access log: the writer did not catch up within 1 s; lines it still held are lost"
            );
        }
    }
    // The cluster thread leaves the fleet's list of instances as the drain begins (so that a
    // restart's new name is not counted twice towards `open_quorum`), or once a probe of
    // this instance's has ended: give it the time one round and one request to Redis take.
    wait_for_fleet_exit(fleet, &shared);
    match shared.cut_at_drain.load(Ordering::Relaxed) {
        0 => log::info!("drained; exiting"),
        cut => log::warn!(
            "exiting: the drain deadline (timeouts.drain {}) cut {cut} client {} short, reset",
            config::duration_text(drain),
            logging::plural(cut as u64, "connection", "connections")
        ),
    }
    Ok(())
}

/// `--pid-file`: this process's ID, written once it serves and removed as it exits (if the
/// file still names it), so that `kill -USR1 $(cat FILE)` or systemd's `PIDFile=` reach
/// this gateway alone: logrotate's `kill -USR1 $(pidof gateway)` signalled every gateway on
/// the host (an operator review).
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: PathBuf) -> Result<PidFile, server::StartError> {
        // Written whole under another name, then renamed: a reader never sees half of it.
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let written = std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => Ok(PidFile(path)),
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                Err(server::StartError::PidFile {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }

    fn remove(&self) {
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A start that failed: an upgrade's old process is told why, for its log and
/// `/admin/config` (see [`upgrade::Inherited::cannot_serve`]).
fn cannot_serve(
    inherited: &mut upgrade::Inherited,
    e: server::StartError,
) -> Result<(), server::StartError> {
    inherited.cannot_serve(&e.to_string());
    Err(e)
}

/// Acts on one signal; false for SIGTERM/SIGINT/SIGQUIT (stop), and for SIGWINCH once a new
/// process took the sockets over (drain). SIGHUP asks for a reload; it and SIGUSR1 reopen
/// the access log (after a rotation moved it). SIGUSR2 starts an upgrade.
fn on_signal(sig: i32, reloads: &Reloader, server: &server::Server, shared: &Arc<Shared>) -> bool {
    match sig {
        SIGHUP => reloads.ask(),
        SIGUSR1 => {}
        SIGUSR2 => {
            server.upgrade(shared);
            return true;
        }
        // A terminal's resize too: nothing unless the upgrade thread set the flag.
        SIGWINCH => return !shared.handed_over(),
        _ => return false,
    }
    if let Some(log) = &server.access_log {
        log.reopen();
    }
    true
}

/// The signals that arrived while stopping: SIGHUP and SIGUSR1 act as usual (a drain grace
/// or a drain can be long, and a log rotated meanwhile must still be reopened); a second
/// SIGTERM/SIGINT exits at once, every connection reset so that no answer it cuts, a
/// close-delimited body above all, can look complete to its client.
fn stopping_signals(
    signals: &mut Signals,
    reloads: &Reloader,
    server: &server::Server,
    shared: &Arc<Shared>,
    what: &str,
    pid_file: Option<&PidFile>,
) {
    let pending: Vec<i32> = signals.pending().collect();
    // SIGWINCH (an upgrade that ended while stopping, a terminal's resize) is no stop.
    for sig in pending.into_iter().filter(|&s| s != SIGWINCH) {
        if !on_signal(sig, reloads, server, shared) {
            let n = io::reset_every_connection();
            // Client and backend connections alike (an operator's review read the count
            // as clients, twice what it had open).
            log::warn!(
                "second signal: exiting {what} ({n} {} reset, client and backend)",
                logging::plural(n as u64, "connection", "connections")
            );
            if let Some(p) = pid_file {
                p.remove();
            }
            std::process::exit(1);
        }
    }
}

/// Tells the cluster thread that the workers are done (a probe the drain deadline cut has
/// no outcome to wait for), and gives it the time one round and one request to Redis take
/// to leave the fleet's list of instances.
fn wait_for_fleet_exit(fleet: Option<std::thread::JoinHandle<()>>, shared: &Shared) {
    shared.served_out.store(true, Ordering::SeqCst);
    if let Some(fleet) = fleet {
        let end = Instant::now() + Duration::from_millis(600);
        while !fleet.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `dns_refresh`: a thread that re-resolves backend host names at the configured interval
/// (read again each round, so a SIGHUP can turn it on, off or change it). Every second it
/// also gives services and backends without metric series ids that have them, once a
/// reload's parked ids are free ([`reload::rehome_ids`]), drops the snapshots a reload
/// replaced once no worker holds them ([`Shared::bury_retired`]), and trims the heap when
/// a worker asks ([`Shared::trim_heap_if_asked`]).
fn start_dns_refresh(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("dns-refresh".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                let every = shared.current.load().config.dns_refresh;
                let next = every.map_or(Duration::MAX, |e| e.saturating_sub(last.elapsed()));
                std::thread::sleep(next.clamp(Duration::from_millis(10), Duration::from_secs(1)));
                shared.bury_retired();
                shared.trim_heap_if_asked();
                if shared.is_draining() {
                    continue;
                }
                reload::rehome_ids(&shared);
                let every = shared.current.load().config.dns_refresh;
                if every.is_some_and(|e| last.elapsed() >= e) {
                    last = Instant::now();
                    reload::refresh_dns(&shared, config::BackendUrl::resolve);
                }
            }
        })
        .map(|_| ())
}

/// Reloads run on a thread of their own, so that the signal loop never waits for one: a
/// reload reads a file (which can be slow: a pipe, a network mount, a deeply nested YAML
/// document) and looks up every backend name, and a SIGTERM sent meanwhile used to wait for
/// it, the instance answering `/healthz` as serving all that time (a review: 5–7 s).
struct Reloader(std::sync::mpsc::SyncSender<()>);

impl Reloader {
    fn start(
        shared: Arc<Shared>,
        path: PathBuf,
        log: Option<accesslog::Writer>,
    ) -> std::io::Result<Reloader> {
        // One reload waiting behind the running one is enough: it reads the newest file.
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for () in asked {
                    on_sighup(&shared, &path, log.as_ref());
                }
            })?;
        Ok(Reloader(ask))
    }

    fn ask(&self) {
        // Full: a reload is already waiting, and will read the file as it is now.
        let _ = self.0.try_send(());
    }
}

fn on_sighup(shared: &Shared, path: &Path, log: Option<&accesslog::Writer>) {
    let before = shared.current.load().config.limits.max_connections;
    match reload::reload(shared, path, log) {
        Ok(changes) => {
            log::info!("reload: {changes}");
            // A new connection cap the descriptor limit cannot carry is warned about as at
            // start (an operator review saw it applied with an info line only).
            let config = &shared.current.load().config;
            if config.limits.max_connections != before {
                if let (_, Some(w)) = fdlimit::budget(config, shared.fd_limit) {
                    log::warn!("reload: {w}");
                }
            }
            // Also said on its own at `warn`: inside the long info line it was easy to miss
            // (an operator review).
            if !changes.ignored_until_restart.is_empty() {
                log::warn!(
                    "reload: changed in the file, effective only at a restart or an upgrade (SIGUSR2): {}; the running values stay",
                    changes.ignored_until_restart.join(", ")
                );
            }
        }
        // A line for the failure and one for each error, each whole on its own line and
        // saying what it is (an operator review read nine errors on one line of over
        // 1 KB, where `--check` lists them one per line).
        Err(e) => {
            let generation = shared.current.load().generation;
            let all = match e {
                config::ConfigError::Several(all) => all,
                e => vec![e],
            };
            let n: usize = all.iter().map(config::ConfigError::count).sum();
            let errors = if n == 1 { "error" } else { "errors" };
            log::error!("reload failed, still serving generation {generation}: {n} {errors}");
            for e in all {
                log::error!(
                    "reload failed: {}",
                    logging::one_line(&e.to_string(), usize::MAX)
                );
            }
        }
    }
}

fn log_startup(
    shared: &Arc<Shared>,
    server: &server::Server,
    fds: std::io::Result<fdlimit::Raised>,
) {
    let addr = server.local_addr;
    let snap = shared.current.load();
    log::info!("gateway {VERSION} listening on {addr}");
    for line in snap.config.summary().lines() {
        log::info!("{line}");
    }
    log_connection_budget(shared, &snap.config, fds);
    // stdout says where we listen (scripts and tests read the bound addresses from it);
    // everything else goes to the log on stderr. With `access_log: stdout` the addresses
    // go to stderr, so stdout is the access log alone (a log shipper parsing it as JSON
    // lines choked on them). Nobody reading it is no reason to stop (`println!` panicked
    // on a closed pipe).
    let mut out = format!("listening on {addr}\n");
    if let Some(admin) = server.admin_addr {
        out += &format!("admin on {admin}\n");
    }
    let _ = if matches!(snap.config.access_log, accesslog::Sink::Stdout) {
        let mut stderr = std::io::stderr().lock();
        stderr
            .write_all(out.as_bytes())
            .and_then(|()| stderr.flush())
    } else {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
    };
}

/// Says how many client connections the process accepts and what that rests on, and warns
/// when a `limits.max_connections` set by hand outgrows the descriptor limit.
fn log_connection_budget(shared: &Shared, config: &Config, fds: std::io::Result<fdlimit::Raised>) {
    let limit = match fds {
        Ok(r) if r.now > r.before => format!("{} (raised from {})", r.now, r.before),
        Ok(r) => r.now.to_string(),
        Err(e) => format!("{} (could not raise it: {e})", shared.fd_limit),
    };
    let (line, warning) = fdlimit::budget(config, shared.fd_limit);
    log::info!("descriptors: limit {limit}; {line}");
    if let Some(w) = warning {
        log::warn!("{w}");
    }
}
