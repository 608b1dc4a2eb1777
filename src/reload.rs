//! SIGHUP: validate the file, keep what cannot change without a restart, build and store
//! one new snapshot, and say in one line what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::breaker::{Snapshot as Word, CLOSED};
use crate::config::{BackendUrl, Config, ConfigError};
use crate::state::Shared;

/// What a reload (or `--check`) changed, relative to the running config.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub generation: u64,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    pub services_kept: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
    /// Backends whose host name now resolves to another address: new slot, fresh breaker.
    pub backends_readdressed: usize,
    /// Backends that stay, and so keep their breaker state.
    pub breakers_carried: usize,
    /// Of those, the ones not CLOSED right now.
    pub breakers_carried_open: usize,
    /// Keys whose new value only applies after a restart.
    pub ignored_until_restart: Vec<&'static str>,
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.generation > 0 {
            write!(f, "generation {}: ", self.generation)?;
        }
        write!(
            f,
            "services +[{}] -[{}] ={}; backends +{} -{} ={}; breakers carried over: {} ({} not closed)",
            self.services_added.join(","),
            self.services_removed.join(","),
            self.services_kept,
            self.backends_added,
            self.backends_removed,
            self.breakers_carried,
            self.breakers_carried,
            self.breakers_carried_open,
        )?;
        if self.backends_readdressed > 0 {
            write!(
                f,
                "; re-resolved to a new address: {}",
                self.backends_readdressed
            )?;
        }
        if !self.ignored_until_restart.is_empty() {
            write!(
                f,
                "; changed but ignored until restart: {}",
                self.ignored_until_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Compares two configs by service name and (service, URL).
pub fn diff(old: Option<&Config>, new: &Config) -> Changes {
    let names = |c: Option<&Config>| -> BTreeSet<String> {
        c.map(|c| c.services.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    };
    let pairs = |c: Option<&Config>| -> BTreeMap<(String, String), SocketAddr> {
        c.map(|c| {
            c.services
                .iter()
                .flat_map(|s| {
                    s.backends
                        .iter()
                        .map(|b| ((s.name.clone(), b.url.clone()), b.addr))
                })
                .collect()
        })
        .unwrap_or_default()
    };
    let (old_names, new_names) = (names(old), names(Some(new)));
    let (old_pairs, new_pairs) = (pairs(old), pairs(Some(new)));
    let readdressed = new_pairs
        .iter()
        .filter(|(k, addr)| old_pairs.get(*k).is_some_and(|old| old != *addr))
        .count();
    let mut ignored = Vec::new();
    if let Some(old) = old {
        if old.listen != new.listen {
            ignored.push("listen");
        }
        if old.workers != new.workers {
            ignored.push("workers");
        }
        if old.pin_workers != new.pin_workers {
            ignored.push("pin_workers");
        }
        if old.admin != new.admin {
            ignored.push("admin");
        }
        if old.access_log != new.access_log {
            ignored.push("access_log");
        }
        if old.cluster != new.cluster {
            ignored.push("cluster");
        }
    }
    Changes {
        generation: 0,
        services_added: new_names.difference(&old_names).cloned().collect(),
        services_removed: old_names.difference(&new_names).cloned().collect(),
        services_kept: new_names.intersection(&old_names).count(),
        backends_added: new_pairs
            .keys()
            .filter(|k| !old_pairs.contains_key(*k))
            .count(),
        backends_removed: old_pairs
            .keys()
            .filter(|k| !new_pairs.contains_key(*k))
            .count(),
        backends_readdressed: readdressed,
        breakers_carried: new_pairs
            .keys()
            .filter(|k| old_pairs.contains_key(*k))
            .count()
            - readdressed,
        breakers_carried_open: 0,
        ignored_until_restart: ignored,
    }
}

/// Loads `path` and, if it is valid, makes it the running config. On error nothing
/// changes and the error is returned (and remembered for `/metrics` and `/admin/config`).
pub fn reload(shared: &Shared, path: &Path) -> Result<Changes, ConfigError> {
    let _control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
    let result = Config::load(path).map(|mut new| {
        let old = shared.current.load_full();
        let mut changes = diff(Some(&old.config), &new);
        // Settings bound at start stay as they are until a restart.
        new.listen = old.config.listen;
        new.workers = old.config.workers;
        new.pin_workers = old.config.pin_workers;
        new.admin = old.config.admin;
        new.access_log = old.config.access_log.clone();
        let (generation, _) = shared.install(new);
        changes.generation = generation;
        let snap = shared.current.load();
        changes.breakers_carried_open = snap
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
            .filter(|(s, b)| {
                old.service(s.name.as_bytes())
                    .is_some_and(|os| os.backends.iter().any(|ob| ob.url.url == b.url.url))
            })
            .filter(|(_, b)| Word::decode(crate::breaker::Word::load(&**b.breaker)).state != CLOSED)
            .count();
        changes
    });
    let mut last = shared
        .reloads
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match &result {
        Ok(_) => {
            shared.reloads.ok.fetch_add(1, Ordering::Relaxed);
            last.clear();
        }
        Err(e) => {
            shared.reloads.failed.fetch_add(1, Ordering::Relaxed);
            *last = e.to_string();
        }
    }
    result
}

/// `dns_refresh`: resolves every backend host name of the running config again and, if any
/// now resolves to another address, installs a snapshot with the new addresses (each such
/// backend gets a new pool slot and a fresh breaker, as on a SIGHUP). Lookups happen before
/// the control lock is taken; a name that fails to resolve keeps its address. Returns the
/// number of backends whose address changed.
pub fn refresh_dns(
    shared: &Shared,
    resolve: impl Fn(&BackendUrl) -> Result<SocketAddr, String>,
) -> usize {
    let before = shared.current.load_full();
    let mut found: BTreeMap<(String, String), SocketAddr> = BTreeMap::new();
    for s in &before.config.services {
        for b in &s.backends {
            match resolve(b) {
                Ok(addr) => {
                    found.insert((s.name.clone(), b.url.clone()), addr);
                }
                Err(e) => log::warn!("dns: {} {}: {e}; keeping {}", s.name, b.url, b.addr),
            }
        }
    }
    let _control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
    // The running config may have been reloaded meanwhile: apply to the current one.
    let mut config = shared.current.load().config.clone();
    let mut changed = 0;
    for s in &mut config.services {
        for b in &mut s.backends {
            if let Some(&addr) = found.get(&(s.name.clone(), b.url.clone())) {
                if addr != b.addr {
                    log::info!(
                        "dns: {} {} now resolves to {addr} (was {})",
                        s.name,
                        b.url,
                        b.addr
                    );
                    b.addr = addr;
                    changed += 1;
                }
            }
        }
    }
    if changed > 0 {
        let (generation, _) = shared.install(config);
        log::info!("dns: generation {generation}: re-resolved to a new address: {changed}");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker;

    #[test]
    fn reload_keeps_breakers_reports_changes_and_survives_a_broken_file() {
        let dir = std::env::temp_dir().join(format!("gateway-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        let v1 = "listen: 127.0.0.1:0\nservices:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2]\n  b: [http://127.0.0.1:3]\n";
        let shared = Shared::new(Config::parse(v1).unwrap());
        // Open a's first backend.
        let snap = shared.current.load_full();
        let a = snap.service(b"a").unwrap();
        for _ in 0..a.policy.threshold {
            let t = breaker::admit(&**a.backends[0].breaker, 0, &a.policy).unwrap();
            breaker::failure(&**a.backends[0].breaker, t, 0, &a.policy);
        }
        std::fs::write(
            &path,
            "listen: 127.0.0.1:9\nservices:\n  a: [http://127.0.0.1:1, http://127.0.0.1:4]\n  c: [http://127.0.0.1:5]\n",
        )
        .unwrap();
        let ch = reload(&shared, &path).unwrap();
        assert_eq!(ch.generation, 2);
        assert_eq!(ch.services_added, ["c"]);
        assert_eq!(ch.services_removed, ["b"]);
        assert_eq!(
            (ch.backends_added, ch.backends_removed, ch.breakers_carried),
            (2, 2, 1)
        );
        assert_eq!(ch.breakers_carried_open, 1);
        assert_eq!(ch.ignored_until_restart, ["listen"]);
        let line = ch.to_string();
        assert!(
            line.contains("services +[c] -[b]") && line.contains("ignored until restart: listen"),
            "{line}"
        );
        let now = shared.current.load_full();
        assert_eq!(
            now.config.listen.port(),
            0,
            "listen changed without a restart"
        );
        let a2 = now.service(b"a").unwrap();
        assert!(
            breaker::admit(&**a2.backends[0].breaker, 1, &a2.policy).is_none(),
            "breaker reset by reload"
        );

        std::fs::write(
            &path,
            "services:\n  a: [http://127.0.0.1:1]\n  typo_key: 3\n",
        )
        .unwrap();
        let err = reload(&shared, &path).unwrap_err();
        assert!(err.to_string().contains("typo_key"), "{err}");
        assert_eq!(
            shared.current.load().generation,
            2,
            "a broken file replaced the config"
        );
        assert_eq!(shared.reloads.failed.load(Ordering::Relaxed), 1);
        assert!(!shared.reloads.last_error.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dns_refresh_installs_new_addresses_only_when_they_change() {
        let text = "services:\n  a: [http://127.0.0.1:1, http://127.0.0.1:2]\n";
        let shared = Shared::new(Config::parse(text).unwrap());
        let slot = |s: &Shared, i: usize| s.current.load().service(b"a").unwrap().backends[i].slot;
        let (slot0, slot1) = (slot(&shared, 0), slot(&shared, 1));
        // Same answers: nothing is installed.
        assert_eq!(refresh_dns(&shared, |b| Ok(b.addr)), 0);
        assert_eq!(shared.current.load().generation, 1);
        // The first name moves; the second fails to resolve and keeps its address.
        let moved: SocketAddr = "127.0.0.9:1".parse().unwrap();
        let n = refresh_dns(&shared, |b| {
            if b.url.ends_with(":1") {
                Ok(moved)
            } else {
                Err("no such host".into())
            }
        });
        assert_eq!(n, 1);
        let snap = shared.current.load();
        assert_eq!(snap.generation, 2);
        let a = snap.service(b"a").unwrap();
        assert_eq!(a.backends[0].url.addr, moved);
        assert_ne!(
            a.backends[0].slot, slot0,
            "pooled connections to the old address would be reused"
        );
        assert_eq!(a.backends[1].slot, slot1);
        assert_eq!(
            a.backends[1].url.addr,
            "127.0.0.1:2".parse::<SocketAddr>().unwrap()
        );
    }
}
