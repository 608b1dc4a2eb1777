//! Request IDs (`request_id: true`): one a trusted proxy sent, or one made here, unique per
//! process, worker and request, with no lock, no shared write and no allocation.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use crate::h1;

/// The field that carries it, both ways.
pub const FIELD: &str = "x-request-id";
/// The longest ID taken from a trusted proxy (a UUID is 36 bytes).
pub const MAX_LEN: usize = 128;

/// One worker's ID maker: 32 hex digits, the high half fixed per process and worker, the
/// low half the worker's request count through a bijection of 64-bit words (so unique
/// within the worker however many it makes, and not a readable count of its traffic).
pub struct Ids {
    high: u64,
    mask: u64,
    count: Cell<u64>,
}

/// An odd multiplier: multiplying by it modulo 2^64 is a bijection.
const SPREAD: u64 = 0x9e37_79b9_7f4a_7c15;

impl Ids {
    /// The maker of worker `index`; the process's part is random (the standard library's
    /// per-process random keys), so two processes collide with odds of about 2^-64.
    pub fn new(index: usize) -> Ids {
        let random = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        Ids {
            // Distinct for distinct workers of one process.
            high: random(1).wrapping_add((index as u64).wrapping_mul(SPREAD)),
            mask: random(2),
            count: Cell::new(0),
        }
    }

    /// Appends a fresh ID to `out`.
    pub fn make(&self, out: &mut Vec<u8>) {
        let n = self.count.get();
        self.count.set(n.wrapping_add(1));
        let low = (n ^ self.mask).wrapping_mul(SPREAD);
        push_hex(out, self.high);
        push_hex(out, low);
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
        // Consecutive IDs do not read as a count: most digits of the low half change.
        let fresh = Ids::new(0);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        fresh.make(&mut x);
        fresh.make(&mut y);
        let changed = x[16..].iter().zip(&y[16..]).filter(|(a, b)| a != b).count();
        assert!(
            changed > 4,
            "{:?} {:?}",
            String::from_utf8_lossy(&x),
            String::from_utf8_lossy(&y)
        );
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
