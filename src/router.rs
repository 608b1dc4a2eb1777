//! Routing: `/v1/proxy/{service}/{rest}?{query}` on the raw target, with no normalisation.
//!
//! We route on exactly the bytes we forward. Instead of normalising, anything a backend
//! might resolve differently from us is refused: dot segments (plain or percent-encoded),
//! backslashes and encoded NULs anywhere in the path, an empty first segment (`//host`),
//! and any service segment that is not a plain configured name. An encoded slash is
//! reported, for the service to allow or not.

use crate::config::valid_service_name;

pub const PREFIX: &str = "/v1/proxy/";

/// Why a target does not route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// Not under `/v1/proxy/` (404 `route_not_found`).
    NotFound,
    /// The service segment is not a valid service name (404 `service_not_found`).
    BadService,
    /// The rest of the path has a segment a backend could resolve upward (400).
    BadPath,
}

/// A routed request: the service name and what to append to the backend's path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub service: &'a [u8],
    /// Starts with `/` (possibly just `/`), or with `?` when the path was `/v1/proxy/svc?q`.
    pub rest: &'a str,
    /// The path holds an encoded `/` (`%2f`, in any encoding), safe otherwise: a 400
    /// unless the service has `encoded_slashes: true`.
    pub encoded_slash: bool,
}

pub fn route(target: &str) -> Result<Route<'_>, RouteError> {
    let Some(after) = target.strip_prefix(PREFIX) else {
        return Err(RouteError::NotFound);
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (service, rest) = after.split_at(end);
    if !valid_service_name(service.as_bytes()) {
        return Err(RouteError::BadService);
    }
    let path_end = rest.find('?').unwrap_or(rest.len());
    let encoded_slash = match judge_path(&rest[..path_end]) {
        Path::Unsafe => return Err(RouteError::BadPath),
        Path::Safe => false,
        Path::EncodedSlash => true,
    };
    Ok(Route {
        service: service.as_bytes(),
        rest,
        encoded_slash,
    })
}

/// What [`judge_path`] finds in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Safe,
    /// Safe but for an encoded `/`: its dot segments were judged with it as a separator, so
    /// a backend that decodes it before it resolves them finds none either.
    EncodedSlash,
    Unsafe,
}

/// Whether `path` is safe, with no encoded slash either (what a backend prefix must be).
pub(crate) fn path_is_safe(path: &str) -> bool {
    judge_path(path) == Path::Safe
}

/// Refuses, in a path: `\\`, `%5c`, `%00`; a `.` or `..` segment, also as `%2e`,
/// and also with path parameters (`..;x`: Tomcat, Spring and Jetty drop `;x` before they
/// resolve dot segments) or trailing blanks (`..%20`: Windows trims them). A path with
/// percent-encoding is judged by what it decodes to, decoded again while that changes it
/// (double, triple, partial double encoding: `%252e`, `%25252e`, `%%32%65`), at most
/// [`MAX_DECODES`] times (more is refused); and by its bytes: overlong UTF-8 of any
/// length (`%c0%ae`, `%e0%80%ae`, `%f0%80%80%ae`: decoders that accept it read `.`, `/`)
/// is refused, as is IIS's `%uXXXX`. An encoded `/` (`%2f`, `%252f`) is told apart: a
/// path that has one is judged with it decoded, as a separator.
pub(crate) fn judge_path(path: &str) -> Path {
    let b = path.as_bytes();
    let safe = |yes: bool| if yes { Path::Safe } else { Path::Unsafe };
    if b.contains(&b'\\') {
        return Path::Unsafe;
    }
    if !b.contains(&b'%') {
        return safe(!has_dot_segment(b) && !empty_first_segment(b));
    }
    // IIS's %uXXXX, in the path as sent or in any form it decodes to.
    let iis = |v: &[u8]| {
        v.windows(6).any(|w| {
            w[0] == b'%'
                && w[1].eq_ignore_ascii_case(&b'u')
                && w[2..].iter().all(u8::is_ascii_hexdigit)
        })
    };
    let mut bytes = b.to_vec();
    for round in 0..=MAX_DECODES {
        if iis(&bytes) {
            return Path::Unsafe;
        }
        match percent_decode(&bytes) {
            Some(_) if round == MAX_DECODES => return Path::Unsafe,
            Some(next) => bytes = next,
            None => break,
        }
    }
    if bytes.iter().any(|&c| matches!(c, 0 | b'\\'))
        || overlong_utf8(&bytes)
        || has_dot_segment(&bytes)
        || empty_first_segment(&bytes)
    {
        return Path::Unsafe;
    }
    let slashes = |v: &[u8]| v.iter().filter(|&&c| c == b'/').count();
    if slashes(&bytes) == slashes(b) {
        Path::Safe
    } else {
        Path::EncodedSlash
    }
}

/// Whether `b` starts with an empty segment followed by another: `//host/x`, also with
/// path parameters or blanks that a backend takes off (`/;x/host/x`, `/%20/host/x`). URL
/// parsers read `//host/x` as a network-path reference (RFC 3986 §4.2: Node's
/// `new URL(req.url, base)` takes `host` for the host), and a backend with no path prefix
/// would be sent one (two reviews). NGINX merges the slashes; we send the bytes we routed
/// on, so it is refused as the other tricks are. Deeper in the path (`/a//b`) it is no
/// host to anyone.
fn empty_first_segment(b: &[u8]) -> bool {
    let Some(rest) = b.strip_prefix(b"/") else {
        return false;
    };
    let Some(end) = memchr::memchr(b'/', rest) else {
        return false;
    };
    let seg = &rest[..end];
    let seg = &seg[..memchr::memchr(b';', seg).unwrap_or(seg.len())];
    trim_blanks_start(seg).is_empty()
}

/// How many times a path is percent-decoded at most to judge it (a path encoded more often
/// than that is refused).
const MAX_DECODES: usize = 4;

/// `b` with each `%XX` (two hex digits) decoded once, or None if it has none.
pub(crate) fn percent_decode(b: &[u8]) -> Option<Vec<u8>> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut changed = false;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                i += 3;
                changed = true;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// Whether `b` holds an overlong UTF-8 sequence, or the start of one: a lead byte before a
/// continuation byte (`80`–`BF`) that can only begin an overlong form or no valid one:
/// `C0`/`C1` (two bytes), `E0` before `80`–`9F` (three), `F0` before `80`–`8F` (four),
/// `F8`–`FF` (the old five- and six-byte forms). No encoder makes them; lenient decoders
/// read them as ASCII (`%c0%ae` as `.`). The same bytes before anything else are left
/// alone: Latin-1 names (`%C0la`, "Àla") are not UTF-8 at all.
fn overlong_utf8(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        let next = b.get(i + 1).copied().unwrap_or(0);
        let cont = (0x80..0xc0).contains(&next);
        (matches!(c, 0xc0 | 0xc1 | 0xf8..=0xff) && cont)
            || (c == 0xe0 && (0x80..0xa0).contains(&next))
            || (c == 0xf0 && (0x80..0x90).contains(&next))
    })
}

/// Whether a `/`-separated segment of `b` is `.` or `..`, alone or with path parameters,
/// and with any blanks around it. Only a segment whose first byte that is not a blank is a
/// dot can be one; most paths have few dots.
#[inline]
fn has_dot_segment(b: &[u8]) -> bool {
    memchr::memchr_iter(b'.', b).any(|at| {
        // The dots' end first: it rules out a file extension without looking back.
        dot_segment(&b[at..]) && {
            let before = &b[..at];
            let start = before.iter().rposition(|&c| c == b'/').map_or(0, |p| p + 1);
            trim_blanks_start(&before[start..]).is_empty()
        }
    })
}

/// Whether `s`, which starts with `.`, begins with a `.` or `..` segment: the dots end the
/// segment, or path parameters follow them (`..;x`), or blanks do (only a decoded path has
/// them): Windows trims trailing spaces and dots' blanks, Java's `String.trim` every byte up
/// to a space, Python's `str.strip` Unicode white space too (`..%0a`, `..%c2%a0`: a review).
fn dot_segment(s: &[u8]) -> bool {
    let rest = match s {
        [b'.', b'.', rest @ ..] => rest,
        [b'.', rest @ ..] => rest,
        _ => return false,
    };
    // `?` and `#` only come from decoding (`..%3f`): a backend that decodes, then splits
    // the path there again, sees `..`.
    matches!(
        trim_blanks_start(rest).first(),
        None | Some(b'/' | b';' | b'?' | b'#')
    )
}

/// `s` without the blanks it starts with, as `trim` and `strip` functions take them off:
/// bytes up to a space and DEL (Java's `String.trim`); every Unicode white space in UTF-8
/// (Python's `str.strip`, Go's `strings.TrimSpace`: NEL, NO-BREAK SPACE, OGHAM SPACE MARK,
/// U+2000 to U+200A, the line and paragraph separators, NARROW NO-BREAK SPACE, MEDIUM
/// MATHEMATICAL SPACE, IDEOGRAPHIC SPACE); ZERO WIDTH NO-BREAK SPACE (U+FEFF, which
/// JavaScript's `String.prototype.trim` takes off: a review's `..%ef%bb%bf` read as `..`)
/// and MONGOLIAN VOWEL SEPARATOR (U+180E, white space to engines before Unicode 6.3); and
/// NEL and NO-BREAK SPACE as Latin-1 bytes (`85`, `A0`: continuation bytes, which no UTF-8
/// segment starts with, nor has after a dot).
fn trim_blanks_start(mut s: &[u8]) -> &[u8] {
    loop {
        s = match s {
            [c, rest @ ..] if *c <= b' ' || matches!(*c, 0x7f | 0x85 | 0xa0) => rest,
            [0xc2, 0x85 | 0xa0, rest @ ..]
            | [0xef, 0xbb, 0xbf, rest @ ..]
            | [0xe1, 0xa0, 0x8e, rest @ ..]
            | [0xe1, 0x9a, 0x80, rest @ ..]
            | [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, rest @ ..]
            | [0xe2, 0x81, 0x9f, rest @ ..]
            | [0xe3, 0x80, 0x80, rest @ ..] => rest,
            _ => return s,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The scan over dots decides as the definition does: some `/`-separated segment
        /// whose part before `;` is `.` or `..`; or, after the leading `/`, a first one
        /// whose part before `;` is empty, with another after it.
        #[test]
        fn plain_paths_are_judged_by_their_segments(path in "[/.;ax]{0,12}") {
            let dotty = path
                .split('/')
                .any(|seg| matches!(seg.split(';').next(), Some("." | "..")));
            let hostlike = path.strip_prefix('/').is_some_and(|rest| {
                let mut segs = rest.split('/');
                segs.next().and_then(|s| s.split(';').next()) == Some("") && segs.next().is_some()
            });
            proptest::prop_assert_eq!(path_is_safe(&path), !(dotty || hostlike), "{:?}", path);
        }
    }

    #[test]
    fn routes_service_and_rest() {
        let r = route("/v1/proxy/user-service/a/b?x=1").unwrap();
        assert_eq!(r.service, b"user-service");
        assert_eq!(r.rest, "/a/b?x=1");
        assert_eq!(route("/v1/proxy/svc").unwrap().rest, "");
        assert_eq!(route("/v1/proxy/svc?q").unwrap().rest, "?q");
        assert_eq!(route("/v1/proxy/svc/").unwrap().rest, "/");
    }

    #[test]
    fn an_encoded_slash_is_reported_and_judged_as_a_separator() {
        for t in [
            "/v1/proxy/a/projects/group%2Fproject",
            "/v1/proxy/a/x%2fy/z",
            "/v1/proxy/a/x%252fy",
            "/v1/proxy/a/x%2F%2F",
            "/v1/proxy/a/x%2f..y",
        ] {
            assert!(route(t).is_ok_and(|r| r.encoded_slash), "{t}");
        }
        assert!(route("/v1/proxy/a/x/y?p=%2F").is_ok_and(|r| !r.encoded_slash));
        assert!(route("/v1/proxy/a/x%2").is_ok_and(|r| !r.encoded_slash));
        // Dot segments it would make, once decoded, are refused whatever the service allows.
        for t in [
            "/v1/proxy/a/x%2f..",
            "/v1/proxy/a/x%2F..%2Fy",
            "/v1/proxy/a/x%2F%2e%2e%2Fy",
            "/v1/proxy/a/x%252f..%252fy",
            "/v1/proxy/a/%2F.%2Fy",
            "/v1/proxy/a/x%2f..;p/y",
            "/v1/proxy/a/x%2f%5cy",
        ] {
            assert_eq!(route(t), Err(RouteError::BadPath), "{t}");
        }
        assert!(!path_is_safe("/a%2Fb"), "a backend prefix may not hold one");
    }

    #[test]
    fn refuses_tricks() {
        assert_eq!(route("/v2/x"), Err(RouteError::NotFound));
        // Regression (two reviews): `//evil.example/x` reached a backend with no path
        // prefix, and so did forms a backend reads so (path parameters, blanks, an encoded
        // slash, which `encoded_slashes: true` lets through otherwise).
        for t in [
            "/v1/proxy/a//evil.example/x",
            "/v1/proxy/a//",
            "/v1/proxy/a///x?q",
            "/v1/proxy/a/;/evil.example/x",
            "/v1/proxy/a/;x=1/evil.example/x",
            "/v1/proxy/a/%20/evil.example/x",
            "/v1/proxy/a/%2Fevil.example/x",
            "/v1/proxy/a/%2F/x",
            "/v1/proxy/a/%252F%252Fx",
            "/v1/proxy/a/%3B/x",
        ] {
            assert_eq!(route(t), Err(RouteError::BadPath), "{t}");
        }
        for (t, rest) in [
            ("/v1/proxy/a/x//y", "/x//y"),
            ("/v1/proxy/a/;jsessionid=1", "/;jsessionid=1"),
            ("/v1/proxy/a/x;p/y", "/x;p/y"),
            ("/v1/proxy/a?//x", "?//x"),
        ] {
            assert_eq!(route(t).map(|r| r.rest), Ok(rest), "{t}");
        }
        assert_eq!(route("/v1/proxy"), Err(RouteError::NotFound));
        for t in [
            "/v1/proxy/../admin",
            "/v1/proxy/%2e%2e/x",
            "/v1/proxy/a%2f..%2fb/x",
            "/v1/proxy//a",
            "/v1/proxy/A/",
            "/v1/proxy/a;x=1/",
            "/v1/proxy/a\\..\\b",
            "/v1/proxy/a%00/",
            "/v1/proxy/./x",
        ] {
            assert_eq!(route(t), Err(RouteError::BadService), "{t}");
        }
        for t in [
            "/v1/proxy/a/../../b",
            "/v1/proxy/a/x/%2E%2e/y",
            "/v1/proxy/a/.",
            "/v1/proxy/a/x\\y",
            "/v1/proxy/a/x%00",
            "/v1/proxy/a/x%2f..",
            // Path parameters on a dot segment (outside audit: Tomcat serves /pb/secret).
            "/v1/proxy/a/..;/pb/secret",
            "/v1/proxy/a/x/..;jsessionid=1/..;/admin",
            "/v1/proxy/a/.;x/y",
            "/v1/proxy/a/%2e%2e;x/y",
            // Double encoding, overlong UTF-8, IIS's %u.
            "/v1/proxy/a/%252e%252e/y",
            "/v1/proxy/a/x%252f..%252fy",
            "/v1/proxy/a/%c0%ae%c0%ae/y",
            "/v1/proxy/a/x%c0%afy",
            "/v1/proxy/a/%u002e%u002e/y",
            "/v1/proxy/a/x%255c",
            // A review's gaps: longer overlong forms, triple and partial double
            // encoding, dots Windows trims blanks after.
            "/v1/proxy/a/%e0%80%ae%e0%80%ae/y",
            "/v1/proxy/a/x%e0%80%afy",
            "/v1/proxy/a/%f0%80%80%ae%f0%80%80%ae/y",
            "/v1/proxy/a/x%c1%9cy",
            "/v1/proxy/a/%25252e%25252e/y",
            "/v1/proxy/a/%%32%65%%32%65/y",
            "/v1/proxy/a/%2%65%2%65/y",
            "/v1/proxy/a/..%20/y",
            "/v1/proxy/a/..%09/y",
            // A third review: %u in a decoded form, five- and six-byte overlong forms,
            // dots ended by a decoded ? or #.
            "/v1/proxy/a/%25u002e%25u002e/secret",
            "/v1/proxy/a/%%75002e%%75002e/secret",
            "/v1/proxy/a/%f8%80%80%80%ae%f8%80%80%80%ae/y",
            "/v1/proxy/a/%fc%80%80%80%80%ae/y",
            "/v1/proxy/a/..%3f/secret",
            "/v1/proxy/a/..%23/secret",
            "/v1/proxy/a/..%253f/secret",
            // Encoded more often than it is decoded: refused, whatever it hides.
            "/v1/proxy/a/x%25252525252e",
            // A fourth review: blanks that Java's trim or Python's strip take off, after
            // the dots or before them.
            "/v1/proxy/a/..%0a/secret",
            "/v1/proxy/a/..%0d/secret",
            "/v1/proxy/a/..%0b/secret",
            "/v1/proxy/a/..%0c/secret",
            "/v1/proxy/a/..%01/secret",
            "/v1/proxy/a/..%1f/secret",
            "/v1/proxy/a/..%7f/secret",
            "/v1/proxy/a/%20../secret",
            "/v1/proxy/a/%09%20..%20/secret",
            "/v1/proxy/a/..%c2%a0/secret",
            "/v1/proxy/a/%c2%a0../secret",
            "/v1/proxy/a/..%c2%85/secret",
            "/v1/proxy/a/%20./secret",
            // A re-review: Unicode spaces Python's strip and Go's TrimSpace take off, and
            // Latin-1 ones.
            "/v1/proxy/a/x/..%e3%80%80/secret",
            "/v1/proxy/a/%e3%80%80../secret",
            "/v1/proxy/a/..%e2%80%80/secret",
            "/v1/proxy/a/..%e2%80%8a/secret",
            "/v1/proxy/a/..%e2%80%af/secret",
            "/v1/proxy/a/..%e1%9a%80/secret",
            "/v1/proxy/a/..%e2%81%9f/secret",
            "/v1/proxy/a/..%e2%80%a8/secret",
            "/v1/proxy/a/..%e2%80%a9/secret",
            "/v1/proxy/a/..%a0/secret",
            "/v1/proxy/a/..%85/secret",
            "/v1/proxy/a/%a0../secret",
            // JavaScript's trim takes U+FEFF off, older engines U+180E (a review).
            "/v1/proxy/a/..%ef%bb%bf/secret",
            "/v1/proxy/a/%2e%2e%EF%BB%BF/admin",
            "/v1/proxy/a/%ef%bb%bf../secret",
            "/v1/proxy/a/..%e1%a0%8e/secret",
        ] {
            assert_eq!(route(t), Err(RouteError::BadPath), "{t}");
        }
        // Parameters and percent signs elsewhere are fine.
        assert!(route("/v1/proxy/a/x;v=1/y").is_ok());
        assert!(route("/v1/proxy/a/..x;/y").is_ok());
        assert!(route("/v1/proxy/a/100%25/y").is_ok());
        assert!(route("/v1/proxy/a/100%25use/y").is_ok());
        assert!(route("/v1/proxy/a/%2e%2ex/y").is_ok());
        // UTF-8 that is not overlong, and a lone percent sign, are fine.
        assert!(route("/v1/proxy/a/caf%c3%a9/%e2%82%ac/%f0%9f%98%80").is_ok());
        assert!(route("/v1/proxy/a/50%/x%zz").is_ok());
        assert!(route("/v1/proxy/a/..%20x/y").is_ok());
        assert!(route("/v1/proxy/a/%20x../y").is_ok());
        assert!(route("/v1/proxy/a/a%20../y").is_ok());
        assert!(route("/v1/proxy/a/..%c2%a3/y").is_ok());
        assert!(route("/v1/proxy/a/..%e2%80%8b/y").is_ok()); // ZERO WIDTH SPACE: not white space
        assert!(route("/v1/proxy/a/%e3%80%80x/y").is_ok());
        assert!(route("/v1/proxy/a/file.json").is_ok());
        // Latin-1 names (not UTF-8): refused only where they take the shape of an
        // overlong form.
        assert!(route("/v1/proxy/a/%C0la/voil%E0/%F6l/%FFx").is_ok());
        assert!(route("/v1/proxy/a/x%3fy/%23z").is_ok());
        // Dots inside names and in the query are fine.
        assert!(route("/v1/proxy/a/file.txt?p=../x").is_ok());
        assert!(route("/v1/proxy/a/.well-known/x").is_ok());
    }
}
