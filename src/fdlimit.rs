//! The descriptor budget: the soft `RLIMIT_NOFILE` raised to the hard limit at start, and
//! the number of client connections that budget allows.
//!
//! A proxied connection costs two descriptors (the client's, and the upstream connection
//! its request holds), four with `splice` (a pipe per body in flight). Accepting clients
//! until `accept` fails would leave none for the upstream side: every connect would fail
//! with EMFILE, a 503 for each request. So each worker stops accepting at its share of
//! `limits.max_connections`, by default what the limit leaves after a reserve, halved (as
//! HAProxy derives `maxconn` from `ulimit -n`).

use std::io;

/// Descriptors kept for everything that is not a client connection: stdio, the access log,
/// the cluster's Redis connection, DNS lookups (64), and the admin API's connections (two
/// each: the socket and the handle that can shut it down).
const RESERVED: u64 = 64 + 2 * crate::admin::MAX_CONNECTIONS as u64;
/// Per worker: its listener, its ring, the drain signal.
const PER_WORKER: u64 = 8;

/// The soft limit on open descriptors before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at the kernel's `nr_open`,
/// above which the call fails), as NGINX's `worker_rlimit_nofile` and HAProxy do. The soft
/// limit is often 1024 for compatibility with `select(2)`, which we never use.
pub fn raise() -> io::Result<Raised> {
    let mut lim = get()?;
    let before = lim.rlim_cur;
    let target = raised_to(&lim);
    if target > lim.rlim_cur {
        lim.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we pass; RLIMIT_NOFILE is a valid resource.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(Raised {
        before,
        now: current(),
    })
}

/// The soft limit [`raise`] sets from `lim`: the hard one, at most the kernel's `nr_open`.
fn raised_to(lim: &libc::rlimit) -> u64 {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    lim.rlim_max.min(ceiling).max(lim.rlim_cur)
}

/// The limit a gateway started from this process would run with (after [`raise`]), for
/// `--check`; `u64::MAX` if unreadable.
pub fn would_run_with() -> u64 {
    get().map_or(u64::MAX, |l| raised_to(&l))
}

/// What the process accepts under `config` with `fd_limit` descriptors, in one line, and
/// a warning when a `limits.max_connections` set by hand outgrows them.
pub fn budget(config: &crate::Config, fd_limit: u64) -> (String, Option<String>) {
    let allowed = auto_max_connections(fd_limit, config.workers, config.splice);
    let max = max_connections(config, fd_limit);
    let line = format!(
        "accepting up to {max} client connections ({} per worker; limits.max_connections: {}){}",
        per_worker(max, config.workers),
        config
            .limits
            .max_connections
            .map_or("auto".to_string(), |n| n.to_string()),
        config
            .limits
            .max_connections_per_client
            .map_or(String::new(), |n| format!(
                ", at most {n} from one client address (limits.max_connections_per_client)"
            )),
    );
    let warning = if max > allowed {
        Some(format!(
            "limits.max_connections {max} needs about {} descriptors but the limit is {fd_limit}: past {allowed} connections, requests may get 503 overloaded (raise `ulimit -n`, or lower limits.max_connections)",
            max.saturating_mul(per_connection(config.splice)),
        ))
    } else if config.limits.max_connections.is_none() && max < FEW_CONNECTIONS {
        // `auto` under a small descriptor limit: said only as the info line above, an
        // operator review's `ulimit -n 200` ran with one client connection unwarned.
        Some(format!(
            "the descriptor limit {fd_limit} leaves room for only {max} client connections (limits.max_connections: auto): raise `ulimit -n` (LimitNOFILE= under systemd)"
        ))
    } else {
        None
    };
    (line, warning)
}

/// Below this many client connections, `auto` is warned about.
const FEW_CONNECTIONS: u64 = 256;

/// The soft limit on open descriptors now (`u64::MAX` if unlimited or unreadable).
pub fn current() -> u64 {
    get().map_or(u64::MAX, |l| l.rlim_cur)
}

/// Descriptors open now (entries of `/proc/self/fd`, less the one reading it).
pub fn open() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; RLIMIT_NOFILE is a valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// Descriptors one proxied client connection may hold at once.
pub fn per_connection(splice: bool) -> u64 {
    if splice {
        4
    } else {
        2
    }
}

/// The descriptors left for connections (client, upstream, pipes) once the reserve is
/// taken from `fd_limit`.
fn for_connections(fd_limit: u64, workers: usize, splice: bool) -> u64 {
    let workers = workers.max(1) as u64;
    let mut reserve = RESERVED + PER_WORKER * workers;
    if splice {
        reserve += 2 * crate::splice::MAX_SPARE as u64 * workers;
    }
    fd_limit.saturating_sub(reserve)
}

/// The client connections `fd_limit` descriptors carry without an upstream connect running
/// out of them: at least one per worker.
pub fn auto_max_connections(fd_limit: u64, workers: usize, splice: bool) -> u64 {
    let n = for_connections(fd_limit, workers, splice) / per_connection(splice);
    n.max(workers.max(1) as u64)
}

/// Client connections the whole process accepts at once under `config`: the setting, or
/// what `fd_limit` allows.
pub fn max_connections(config: &crate::Config, fd_limit: u64) -> u64 {
    config
        .limits
        .max_connections
        .unwrap_or_else(|| auto_max_connections(fd_limit, config.workers, config.splice))
}

/// One worker's share of the descriptors left for connections: what its client
/// connections, its upstream connections (active and idle) and its pipes may hold
/// together. Idle upstream connections are pooled only within it (`Worker::may_pool`).
pub fn worker_descriptors(fd_limit: u64, workers: usize, splice: bool) -> usize {
    per_worker(for_connections(fd_limit, workers, splice), workers)
}

/// One worker's share of `total`: connections are spread over workers by the kernel's
/// SO_REUSEPORT hash, and a share per worker needs no counter shared between cores.
pub fn per_worker(total: u64, workers: usize) -> usize {
    let share = total / workers.max(1) as u64;
    usize::try_from(share).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_budgeted_two_descriptors_after_the_reserve() {
        // 20 000 descriptors, two workers: 64 + 2 x 64 (admin) + 2 x 8 reserved, the rest
        // halved.
        assert_eq!(auto_max_connections(20_000, 2, false), 9_896);
        // splice: a pipe per body in flight too, and the workers' spare pipes reserved.
        assert_eq!(
            auto_max_connections(20_000, 2, true),
            (20_000 - 208 - 2 * 2 * crate::splice::MAX_SPARE as u64) / 4
        );
        // A limit below the reserve still lets every worker accept one client.
        assert_eq!(auto_max_connections(50, 4, false), 4);
        assert_eq!(
            auto_max_connections(u64::MAX, 1, false),
            (u64::MAX - 200) / 2
        );
    }

    #[test]
    fn a_worker_gets_an_equal_share_of_the_descriptors_left_for_connections() {
        assert_eq!(worker_descriptors(20_000, 1, false), 20_000 - 200);
        assert_eq!(worker_descriptors(20_000, 2, false), (20_000 - 208) / 2);
        assert_eq!(
            worker_descriptors(20_000, 2, true),
            (20_000 - 208 - 2 * 2 * crate::splice::MAX_SPARE) / 2
        );
        assert_eq!(worker_descriptors(100, 1, false), 1);
    }

    #[test]
    fn the_share_of_a_worker_is_at_least_one() {
        assert_eq!(per_worker(9_896, 2), 4_948);
        assert_eq!(per_worker(5, 2), 2);
        assert_eq!(per_worker(1, 4), 1);
        assert_eq!(per_worker(u64::MAX, 1), usize::MAX);
    }

    #[test]
    fn a_small_automatic_connection_limit_is_warned_about() {
        let svc = "services:\n  s: [http://127.0.0.1:1]\n";
        let auto = crate::Config::parse(&format!("workers: 1\n{svc}")).unwrap();
        let (_, warning) = budget(&auto, 200);
        let w = warning.expect("a warning");
        assert!(
            w.contains("leaves room for only") && w.contains("ulimit -n"),
            "{w}"
        );
        assert_eq!(budget(&auto, 20_000).1, None);
        // Set by hand below the limit: the operator's choice, not warned about.
        let set = crate::Config::parse(&format!(
            "workers: 1\nlimits: {{max_connections: 10}}\n{svc}"
        ))
        .unwrap();
        assert_eq!(budget(&set, 20_000).1, None);
    }

    #[test]
    fn raising_never_lowers_the_soft_limit() {
        let before = current();
        let r = raise().expect("getrlimit/setrlimit on ourselves");
        assert_eq!(r.before, before);
        assert!(r.now >= r.before);
        let lim = get().expect("getrlimit");
        assert_eq!(r.now, lim.rlim_cur);
    }
}
