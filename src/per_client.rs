//! Open client connections counted per address over every worker, for
//! `limits.max_connections_per_client` (NGINX's `limit_conn` by address).
//!
//! The count is a count-min sketch: two rows of counters, each address hashed (with a key
//! chosen at start, so clients cannot aim at one another's counters) to one counter in
//! each row, and its count the smaller of the two. Addresses that share both counters
//! count together, never apart: a client may be refused a little early, never let past
//! the limit. With 2^15 counters a row, a client shares both with one of 1 000 others
//! busy at once about once in 1 000 tries. The table is touched when a connection is
//! accepted and when it ends, never per request, and takes no lock. IPv6 clients count
//! by their /64, which is one subscriber's network (a host picks any address in it).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// Counters per row.
const ROW: usize = 1 << 15;

/// The table, shared by every worker (in [`crate::state::Shared`]).
pub struct PerClient {
    /// Two rows of [`ROW`] counters, one after the other.
    counts: Box<[AtomicU32]>,
    hasher: std::collections::hash_map::RandomState,
}

/// A connection refused: its client holds `limits.max_connections_per_client` already.
#[derive(Debug)]
pub struct Refused;

/// The two counters one accepted connection holds; given back with [`PerClient::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held([u32; 2]);

impl Default for PerClient {
    fn default() -> Self {
        PerClient {
            counts: (0..2 * ROW).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl PerClient {
    /// Counts a connection from `ip` if its client has fewer than `limit` open; `None`
    /// (and nothing counted) if it has `limit` already.
    pub fn enter(&self, ip: IpAddr, limit: u32) -> Option<Held> {
        let held = self.counters(ip);
        let [a, b] = held
            .0
            .map(|i| self.counts[i as usize].fetch_add(1, Ordering::Relaxed));
        if a.min(b) >= limit {
            self.leave(held);
            return None;
        }
        Some(held)
    }

    /// Gives back what [`PerClient::enter`] counted.
    pub fn leave(&self, held: Held) {
        for i in held.0 {
            self.counts[i as usize].fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections counted for `ip`'s client now (at least its own).
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let [a, b] = self
            .counters(ip)
            .0
            .map(|i| self.counts[i as usize].load(Ordering::Relaxed));
        a.min(b)
    }

    /// `ip`'s counters: one in each row.
    fn counters(&self, ip: IpAddr) -> Held {
        let h = self.hasher.hash_one(client(ip));
        let first = (h as usize) % ROW;
        let second = ROW + ((h >> 32) as usize) % ROW;
        Held([first as u32, second as u32])
    }
}

/// What a client is counted as: an IPv4 address (also one written as IPv4-mapped IPv6),
/// or an IPv6 address's /64.
fn client(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            // Tagged above every IPv4 value, so no /64 is taken for an IPv4 address.
            None => (u128::from(v6) >> 64) | (1 << 64),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_its_limit_and_one_more_when_one_ends() {
        let t = PerClient::default();
        let held: Vec<Held> = (0..3)
            .map(|_| t.enter(ip("10.0.0.1"), 3).expect("within the limit"))
            .collect();
        assert_eq!(t.enter(ip("10.0.0.1"), 3), None);
        // A refusal counts nothing.
        assert_eq!(t.open(ip("10.0.0.1")), 3);
        // Another client is not held back by it.
        let other = t.enter(ip("10.0.0.2"), 3).expect("another client");
        t.leave(held[0]);
        let again = t.enter(ip("10.0.0.1"), 3).expect("room again");
        assert_eq!(t.open(ip("10.0.0.1")), 3);
        for h in [held[1], held[2], again, other] {
            t.leave(h);
        }
        assert!(t.counts.iter().all(|c| c.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t = PerClient::default();
        let a = t.enter(ip("2001:db8:1:2::1"), 2).unwrap();
        let b = t.enter(ip("2001:db8:1:2:ffff::9"), 2).unwrap();
        assert_eq!(t.enter(ip("2001:db8:1:2::77"), 2), None);
        assert!(t.enter(ip("2001:db8:1:3::1"), 2).is_some());
        let c = t.enter(ip("192.0.2.7"), 1).unwrap();
        assert_eq!(t.enter(ip("::ffff:192.0.2.7"), 1), None);
        for h in [a, b, c] {
            t.leave(h);
        }
        assert_eq!(t.open(ip("2001:db8:1:2::1")), 0);
    }

    #[test]
    fn addresses_count_apart_unless_both_counters_are_shared() {
        // 5 000 clients at their limit of 1: each of them is refused its second connection,
        // and a client whose two counters are both taken by others is rare.
        let t = PerClient::default();
        let clients: Vec<IpAddr> = (0..5_000u32)
            .map(|i| IpAddr::V4((0x0a00_0000 + i).into()))
            .collect();
        let mut refused_first = 0;
        for &c in &clients {
            if t.enter(c, 1).is_none() {
                refused_first += 1;
            }
        }
        for &c in &clients {
            assert_eq!(t.enter(c, 1), None, "{c} got past its limit");
        }
        // Expected about 5 000 × (5 000 / 32 768)² ≈ 116; bounded well above.
        assert!(
            refused_first < 400,
            "{refused_first} refused their first connection"
        );
    }
}
