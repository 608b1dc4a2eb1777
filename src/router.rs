//! Routing: `/v1/proxy/{service}/{rest}?{query}` on the raw target, with no normalisation.
//!
//! We route on exactly the bytes we forward. Instead of normalising, anything a backend
//! might resolve differently from us is refused: dot segments (plain or percent-encoded),
//! backslashes and encoded NULs anywhere in the path, and any service segment that is not
//! a plain configured name.

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
    if !path_is_safe(&rest[..path_end]) {
        return Err(RouteError::BadPath);
    }
    Ok(Route {
        service: service.as_bytes(),
        rest,
    })
}

/// Refuses, in a path: `\`, `%5c`, `%2f`, `%00`; a `.` or `..` segment, also as `%2e`,
/// and also with path parameters (`..;x`: Tomcat, Spring and Jetty drop `;x` before they
/// resolve dot segments). Encodings that some backend decodes further are taken as what
/// they decode to: `%25` as `%` (double encoding), and the overlong UTF-8 forms `%c0%ae`
/// (`.`) and `%c0%af` (`/`); IIS's `%uXXXX` is refused outright.
fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return false;
    }
    if !b.contains(&b'%') {
        return !has_dot_segment(b);
    }
    let lower = path.to_ascii_lowercase().replace("%25", "%");
    if ["%5c", "%00", "%2f", "%c0%af"]
        .iter()
        .any(|bad| lower.contains(bad))
    {
        return false;
    }
    let iis = |at: usize| {
        let code = lower.as_bytes().get(at + 2..at + 6);
        code.is_some_and(|c| c.iter().all(u8::is_ascii_hexdigit))
    };
    if lower.match_indices("%u").any(|(at, _)| iis(at)) {
        return false;
    }
    let dots = lower.replace("%2e", ".").replace("%c0%ae", ".");
    !has_dot_segment(dots.as_bytes())
}

/// Whether a `/`-separated segment of `b` is `.` or `..`, alone or with path parameters.
/// Only a segment that starts with a dot can be one; most paths have few dots.
#[inline]
fn has_dot_segment(b: &[u8]) -> bool {
    memchr::memchr_iter(b'.', b).any(|at| (at == 0 || b[at - 1] == b'/') && dot_segment(&b[at..]))
}

/// Whether `s`, which starts with `.`, begins with a `.` or `..` segment: the dots end the
/// segment, or path parameters follow them (`..;x`).
fn dot_segment(s: &[u8]) -> bool {
    let rest = match s {
        [b'.', b'.', rest @ ..] => rest,
        [b'.', rest @ ..] => rest,
        _ => return false,
    };
    matches!(rest.first(), None | Some(b'/' | b';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The scan over dots decides as the definition does: some `/`-separated segment
        /// whose part before `;` is `.` or `..`.
        #[test]
        fn plain_paths_are_judged_by_their_segments(path in "[/.;ax]{0,12}") {
            let dotty = path
                .split('/')
                .any(|seg| matches!(seg.split(';').next(), Some("." | "..")));
            proptest::prop_assert_eq!(path_is_safe(&path), !dotty, "{:?}", path);
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
    fn refuses_tricks() {
        assert_eq!(route("/v2/x"), Err(RouteError::NotFound));
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
        ] {
            assert_eq!(route(t), Err(RouteError::BadPath), "{t}");
        }
        // Parameters and percent signs elsewhere are fine.
        assert!(route("/v1/proxy/a/x;v=1/y").is_ok());
        assert!(route("/v1/proxy/a/..x;/y").is_ok());
        assert!(route("/v1/proxy/a/100%25/y").is_ok());
        assert!(route("/v1/proxy/a/100%25use/y").is_ok());
        assert!(route("/v1/proxy/a/%2e%2ex/y").is_ok());
        // Dots inside names and in the query are fine.
        assert!(route("/v1/proxy/a/file.txt?p=../x").is_ok());
        assert!(route("/v1/proxy/a/.well-known/x").is_ok());
    }
}
