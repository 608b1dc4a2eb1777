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

/// Whether `answered`, a response's `X-Request-Id`, names another request than `sent` of
/// the same maker: both 32 hex digits with the same maker's half (this worker's, or a
/// trusted edge gateway's) and another count. A backend that echoes the ID it was sent
/// (Rails, Heroku's router, most request-ID middleware) then shows an answer given for
/// another request (out of turn, or stored by a cache in front of it), which HTTP/1.1
/// has no other way to tell; one that makes its own IDs cannot match the maker's half by
/// chance (odds 2^-64).
pub fn names_another(sent: &[u8], answered: &[u8]) -> bool {
    let made = |v: &[u8]| v.len() == 32 && v.iter().all(u8::is_ascii_hexdigit);
    made(sent)
        && made(answered)
        && sent[..16].eq_ignore_ascii_case(&answered[..16])
        && !sent[16..].eq_ignore_ascii_case(&answered[16..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_names_another_request_only_with_the_makers_half_and_another_count() {
        let ids = Ids::new(0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ids.make(&mut a);
        ids.make(&mut b);
        assert!(names_another(&a, &b));
        assert!(names_another(&a, &b.to_ascii_uppercase()));
        assert!(!names_another(&a, &a));
        assert!(!names_another(&a, &a.to_ascii_uppercase()));
        // Another worker's or process's, a UUID, a trusted proxy's own form: no telling.
        let mut other = Vec::new();
        Ids::new(1).make(&mut other);
        assert!(!names_another(&a, &other));
        for v in [
            &b"0f8fad5b-d9cb-469f-a165-70867728950e"[..],
            b"",
            b"abc",
            &b[..31],
        ] {
            assert!(!names_another(&a, v), "{v:?}");
            assert!(!names_another(v, &a), "{v:?}");
        }
    }

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
