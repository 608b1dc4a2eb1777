//! Request IDs (`request_id: true`): one a trusted proxy sent, or one made here, unique per
//! process, worker and request, with no lock, no shared write and no allocation.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::h1;

/// The field that carries it, both ways.
pub const FIELD: &str = "x-request-id";
/// The longest ID taken from a trusted proxy (a UUID is 36 bytes).
pub const MAX_LEN: usize = 128;

/// One worker's ID maker: 32 hex digits, the high half fixed per process and worker, the
/// low half the worker's request count through a keyed permutation of 64-bit words (so
/// unique within the worker however many it makes, and no count of its traffic can be read
/// from it without the key).
pub struct Ids {
    high: u64,
    /// SipHash keys (the standard library's, random per process) for the permutation.
    key: RandomState,
    count: Cell<u64>,
}

/// An odd multiplier: multiplying by it modulo 2^64 is a bijection.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

impl Ids {
    /// The maker of worker `index`; the process's part is random, so two processes collide
    /// with odds of about 2^-64.
    pub fn new(index: usize) -> Ids {
        let key = RandomState::new();
        let mut h = key.build_hasher();
        h.write_u64(u64::MAX);
        Ids {
            // Distinct for distinct workers of one process.
            high: h.finish().wrapping_add((index as u64).wrapping_mul(SPREAD)),
            key,
            count: Cell::new(0),
        }
    }

    /// Appends a fresh ID to `out`.
    pub fn make(&self, out: &mut Vec<u8>) {
        let n = self.count.get();
        self.count.set(n.wrapping_add(1));
        push_hex(out, self.high);
        push_hex(out, self.permute(n));
    }

    /// Four Feistel rounds over 32-bit halves with SipHash as the round function (keyed,
    /// random per process): a permutation of 64-bit words (Luby-Rackoff), so distinct
    /// counts give distinct words, and without the key consecutive counts give unrelated
    /// ones (a review read the count back from the multiplication used before).
    fn permute(&self, n: u64) -> u64 {
        let (mut left, mut right) = ((n >> 32) as u32, n as u32);
        for round in 0..4u64 {
            let mut h = self.key.build_hasher();
            h.write_u64(round << 32 | u64::from(right));
            (left, right) = (right, left ^ h.finish() as u32);
        }
        u64::from(left) << 32 | u64::from(right)
    }
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
}

/// Puts the request's ID in `out`: the one a trusted proxy sent on a single line, if
/// [`acceptable`], else a fresh one (a client could otherwise pick IDs that collide with
/// others' in the logs).
pub fn choose(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], trusted: bool, ids: &Ids) {
    out.clear();
    if trusted {
        let mut lines = headers.iter().filter(|h| h1::name_is(h.name, FIELD));
        if let (Some(h), None) = (lines.next(), lines.next()) {
            let v = h1::trim_ows(h.value);
            if acceptable(v) {
                out.extend_from_slice(v);
                return;
            }
        }
    }
    ids.make(out);
}

/// Whether an ID a trusted proxy sent is kept: 1 to [`MAX_LEN`] bytes of letters, digits
/// and `-_.:+/=@` (UUIDs, hex, base64 and ULIDs pass; nothing that could break a log line,
/// a header or a JSON string does).
pub fn acceptable(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_LEN
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_never_repeat_within_or_across_workers() {
        let (a, b) = (Ids::new(0), Ids::new(1));
        let mut seen = std::collections::HashSet::new();
        for ids in [&a, &b] {
            for _ in 0..10_000 {
                let mut out = Vec::new();
                ids.make(&mut out);
                assert_eq!(out.len(), 32);
                assert!(out
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                assert!(seen.insert(out), "a repeated ID");
            }
        }
        // Consecutive counts give unrelated low halves: about half their bits differ, and
        // the difference between them is no constant step (the multiplication used before
        // differed by a multiple of one constant, which a review divided out).
        let fresh = Ids::new(0);
        let lows: Vec<u64> = (0..1000u64).map(|n| fresh.permute(n)).collect();
        let flipped: u32 = lows.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = f64::from(flipped) / 999.0;
        assert!((28.0..36.0).contains(&mean), "{mean} bits flip on average");
        let steps: std::collections::HashSet<u64> =
            lows.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(steps.len() > 990, "{} distinct steps", steps.len());
        // Keyed: another process (another key) gives other words for the same counts.
        let other = Ids::new(0);
        assert!(
            (0..1000u64)
                .filter(|&n| other.permute(n) == lows[n as usize])
                .count()
                < 2
        );
        let (mut x, mut y) = (Vec::new(), Vec::new());
        fresh.make(&mut x);
        fresh.make(&mut y);
        assert_eq!(x[..16], y[..16]);
    }

    #[test]
    fn only_plain_ids_of_a_bounded_length_are_taken_from_proxies() {
        for ok in [
            &b"0f8fad5b-d9cb-469f-a165-70867728950e"[..],
            b"01ARZ3NDEKTSV4RRFFQ69G5FAV",
            b"abc+/=",
            b"edge:1234@eu-west",
        ] {
            assert!(acceptable(ok), "{}", String::from_utf8_lossy(ok));
        }
        let long = vec![b'a'; MAX_LEN + 1];
        for bad in [
            &b""[..],
            b"a b",
            b"a\"b",
            b"a\\b",
            b"a,b",
            b"\xc3\xa9",
            &long,
        ] {
            assert!(!acceptable(bad), "{}", String::from_utf8_lossy(bad));
        }
        assert!(acceptable(&long[..MAX_LEN]));
    }
}
