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

/// Refuses `.`/`..` segments (also as `%2e`), `\`, `%5c` and `%00` in a path.
fn path_is_safe(path: &str) -> bool {
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return false;
    }
    if b.contains(&b'%') {
        let lower = path.to_ascii_lowercase();
        if lower.contains("%5c") || lower.contains("%00") || lower.contains("%2f") {
            return false;
        }
        return lower
            .split('/')
            .all(|seg| !matches!(seg.replace("%2e", ".").as_str(), "." | ".."));
    }
    path.split('/').all(|seg| seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ] {
            assert_eq!(route(t), Err(RouteError::BadPath), "{t}");
        }
        // Dots inside names and in the query are fine.
        assert!(route("/v1/proxy/a/file.txt?p=../x").is_ok());
        assert!(route("/v1/proxy/a/.well-known/x").is_ok());
    }
}
