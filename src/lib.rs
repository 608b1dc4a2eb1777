//! # gateway — a thread-per-core io_uring HTTP/1.1 reverse proxy
//!
//! ## Layout, in the order a request meets it
//! - [`server`]: worker threads, one pinned monoio runtime and SO_REUSEPORT listener each
//! - [`conn`]: one client connection: head deadline, keep-alive, pipelining
//! - [`h1`]: HTTP/1.1 parsing and framing decisions, chunked coding
//! - [`router`]: `/v1/proxy/{service}/{rest}` on the raw target
//! - [`balancer`]: per-worker round-robin that skips open circuits
//! - [`breaker`]: the packed per-backend circuit breaker word
//! - [`pool`]: per-worker idle upstream connections
//! - [`proxy`]: forward, stream both bodies, classify the outcome
//! - [`error`]: the responses the gateway makes itself
//! - [`io`]: owned-buffer socket reads and writes with deadlines
//!
//! Control path: [`config`] (file → validated `Config`) → [`state`] (snapshot + breaker
//! registry behind one `ArcSwap`). Side: [`logging`].

pub mod balancer;
pub mod breaker;
pub mod config;
pub mod conn;
pub mod error;
pub mod h1;
pub mod io;
pub mod logging;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod server;
pub mod state;

use std::sync::Arc;

pub use config::Config;
pub use state::Shared;

/// Starts the gateway on `config` and blocks while it runs.
pub fn run(config: Config) -> Result<(), server::StartError> {
    let shared = Shared::new(config);
    let server = server::start(shared.clone())?;
    log_startup(&shared, server.local_addr);
    server.join();
    Ok(())
}

fn log_startup(shared: &Arc<Shared>, addr: std::net::SocketAddr) {
    let snap = shared.current.load();
    log::info!("gateway {} listening on {addr}", env!("CARGO_PKG_VERSION"));
    for line in snap.config.summary().lines() {
        log::info!("{line}");
    }
    // The one line on stdout: scripts and tests read the bound address from it.
    println!("listening on {addr}");
}
