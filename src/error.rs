//! Responses the gateway makes itself: one small `Copy` kind per row of the error contract.
//!
//! Each kind has a status, a stable `error` code for the JSON body (and, later, metrics and
//! the access log) and says whether it counts against the backend's breaker. The one
//! gateway-made answer that is no error, to `OPTIONS *`, is here too.

use crate::date::LINE_LEN;
use crate::h1::{push_dec, RequestError};
use crate::router::RouteError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    /// 400: malformed or ambiguous request; the detail names the rule.
    BadRequest(&'static str),
    /// 404: path not under `/v1/proxy/`.
    RouteNotFound,
    /// 404: unknown or invalid service name.
    ServiceNotFound,
    /// 405: a method we know but do not forward (TRACE, CONNECT).
    MethodNotAllowed,
    /// 408: the request head did not arrive in time.
    RequestTimeout,
    /// 413: body over `limits.max_body_bytes`.
    BodyTooLarge,
    /// 414: target over `limits.max_target_bytes`.
    UriTooLong,
    /// 417: an expectation other than 100-continue.
    ExpectationFailed,
    /// 431: header section over the limits.
    HeadersTooLarge,
    /// 501: a method we do not know (RFC 9110 §9.1).
    NotImplemented,
    /// 505: a request line of another major version (`HTTP/2.0`).
    VersionNotSupported,
    /// 429: over the service's rate limit.
    RateLimited,
    /// 503: the service is at `max_in_flight`.
    Overloaded,
    /// 502: connect refused or reset.
    ConnectFailed,
    /// 502: backend closed or reset before a complete response head.
    BackendClosed,
    /// 502: backend sent something that is not a valid HTTP/1.1 response head.
    BadResponse(&'static str),
    /// 503: every backend of the service has an open circuit.
    NoBackend,
    /// 504: connecting to the backend timed out.
    ConnectTimeout,
    /// 504: the response head did not arrive in time.
    ResponseTimeout,
    /// 499 (NGINX's): the client closed its connection while the gateway waited for the
    /// backend's answer; the wait was given up. Never sent (nobody is left to read it), only
    /// logged and counted; no verdict on the backend.
    ClientClosed,
}

impl GatewayError {
    /// One of each kind, in `index` order (for metrics).
    pub const ALL: [GatewayError; 20] = [
        GatewayError::BadRequest(""),
        GatewayError::RouteNotFound,
        GatewayError::ServiceNotFound,
        GatewayError::MethodNotAllowed,
        GatewayError::RequestTimeout,
        GatewayError::BodyTooLarge,
        GatewayError::UriTooLong,
        GatewayError::ExpectationFailed,
        GatewayError::HeadersTooLarge,
        GatewayError::NotImplemented,
        GatewayError::ConnectFailed,
        GatewayError::BackendClosed,
        GatewayError::BadResponse(""),
        GatewayError::NoBackend,
        GatewayError::ConnectTimeout,
        GatewayError::ResponseTimeout,
        GatewayError::RateLimited,
        GatewayError::Overloaded,
        GatewayError::ClientClosed,
        GatewayError::VersionNotSupported,
    ];

    /// Position of this kind in [`GatewayError::ALL`].
    pub fn index(self) -> usize {
        use GatewayError::*;
        match self {
            BadRequest(_) => 0,
            RouteNotFound => 1,
            ServiceNotFound => 2,
            MethodNotAllowed => 3,
            RequestTimeout => 4,
            BodyTooLarge => 5,
            UriTooLong => 6,
            ExpectationFailed => 7,
            HeadersTooLarge => 8,
            NotImplemented => 9,
            ConnectFailed => 10,
            BackendClosed => 11,
            BadResponse(_) => 12,
            NoBackend => 13,
            ConnectTimeout => 14,
            ResponseTimeout => 15,
            RateLimited => 16,
            Overloaded => 17,
            ClientClosed => 18,
            VersionNotSupported => 19,
        }
    }

    pub fn status(self) -> u16 {
        use GatewayError::*;
        match self {
            BadRequest(_) => 400,
            RouteNotFound | ServiceNotFound => 404,
            MethodNotAllowed => 405,
            RequestTimeout => 408,
            BodyTooLarge => 413,
            UriTooLong => 414,
            ExpectationFailed => 417,
            HeadersTooLarge => 431,
            NotImplemented => 501,
            VersionNotSupported => 505,
            RateLimited => 429,
            ConnectFailed | BackendClosed | BadResponse(_) => 502,
            NoBackend | Overloaded => 503,
            ConnectTimeout | ResponseTimeout => 504,
            ClientClosed => 499,
        }
    }

    /// The stable `error` code of the JSON body.
    /// The rule a 400 or a 502 `backend_bad_response` names, if any.
    pub fn detail(self) -> Option<&'static str> {
        match self {
            GatewayError::BadRequest(d) | GatewayError::BadResponse(d) if !d.is_empty() => Some(d),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        use GatewayError::*;
        match self {
            BadRequest(_) => "bad_request",
            RouteNotFound => "route_not_found",
            ServiceNotFound => "service_not_found",
            MethodNotAllowed => "method_not_allowed",
            RequestTimeout => "request_timeout",
            BodyTooLarge => "body_too_large",
            UriTooLong => "uri_too_long",
            ExpectationFailed => "expectation_failed",
            HeadersTooLarge => "headers_too_large",
            NotImplemented => "not_implemented",
            VersionNotSupported => "http_version_not_supported",
            ConnectFailed => "backend_connect_failed",
            BackendClosed => "backend_closed",
            BadResponse(_) => "backend_bad_response",
            NoBackend => "no_backend_available",
            ConnectTimeout => "backend_connect_timeout",
            ResponseTimeout => "backend_timeout",
            RateLimited => "rate_limited",
            Overloaded => "overloaded",
            ClientClosed => "client_closed_request",
        }
    }

    fn reason(self) -> &'static str {
        match self.status() {
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            413 => "Content Too Large",
            414 => "URI Too Long",
            417 => "Expectation Failed",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            505 => "HTTP Version Not Supported",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            499 => "Client Closed Request",
            _ => "Gateway Timeout",
        }
    }

    /// True for outcomes that count as a backend failure for its breaker.
    pub fn is_backend_failure(self) -> bool {
        matches!(self.status(), 502 | 504)
    }

    /// Writes the complete response (head and JSON body) into `out`.
    ///
    /// `date` is the worker's current `date: ...` line; `service` is included when known to
    /// be a valid name; `extra` adds `Retry-After` and other header lines; `close` adds
    /// `Connection: close`; `head` (a HEAD request) keeps the `Content-Length` but leaves
    /// the body out.
    pub fn write_response(
        self,
        out: &mut Vec<u8>,
        date: &[u8; LINE_LEN],
        service: Option<&[u8]>,
        extra: Extra<'_>,
        close: bool,
        head: bool,
    ) {
        let (svc_open, svc, svc_close): (&[u8], &[u8], &[u8]) = match service {
            Some(s) => (b",\"service\":\"", s, b"\""),
            None => (b"", b"", b""),
        };
        let (detail_open, detail, detail_close): (&[u8], &[u8], &[u8]) = match self {
            GatewayError::BadRequest(d) | GatewayError::BadResponse(d) => {
                (b",\"detail\":\"", d.as_bytes(), b"\"")
            }
            _ => (b"", b"", b""),
        };
        let body: [&[u8]; 9] = [
            b"{\"error\":\"",
            self.code().as_bytes(),
            b"\"",
            svc_open,
            svc,
            svc_close,
            detail_open,
            detail,
            detail_close,
        ];
        let body_len = body.iter().map(|p| p.len()).sum::<usize>() + 2;
        let status = self.status();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_dec(out, u64::from(status));
        out.push(b' ');
        out.extend_from_slice(self.reason().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(date);
        out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
        push_dec(out, body_len as u64);
        out.extend_from_slice(b"\r\n");
        if let Some(secs) = extra.retry_after {
            out.extend_from_slice(b"retry-after: ");
            push_dec(out, secs);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(extra.fields);
        if self == GatewayError::MethodNotAllowed {
            out.extend_from_slice(ALLOW);
        }
        crate::rewrite::end_response_head(out, !close, extra.minor);
        if head {
            return;
        }
        for piece in body {
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Header lines a gateway-made response may carry beyond the fixed ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// `Retry-After` in seconds (503, 429).
    pub retry_after: Option<u64>,
    /// Whole lines, each ending in CRLF (the RateLimit fields of a 429).
    pub fields: &'a [u8],
    /// The request's HTTP minor version: a 1.0 connection closes unless the answer says
    /// `Connection: keep-alive`, which is said when it stays (RFC 9112 §9.3).
    pub minor: u8,
}

impl Extra<'_> {
    pub const NONE: Extra<'static> = Extra {
        retry_after: None,
        fields: b"",
        minor: 1,
    };

    pub fn retry_after(secs: u64) -> Extra<'static> {
        Extra {
            retry_after: Some(secs),
            fields: b"",
            minor: 1,
        }
    }
}

/// The methods we forward, as the `Allow` line of a 405 and of the answer to `OPTIONS *`.
pub const ALLOW: &[u8] = b"allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n";

/// Writes the head of the answer to `OPTIONS *` (RFC 9112 §3.2.4: a question about the
/// server itself, which we answer rather than pick a backend for): `204 No Content` with
/// `Allow`, and no body and so no `Content-Length` (RFC 9110 §8.6). The caller ends it with
/// the connection field and the blank line (`rewrite::end_response_head`).
pub fn write_options_head(out: &mut Vec<u8>, date: &[u8; LINE_LEN]) {
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
    out.extend_from_slice(date);
    out.extend_from_slice(ALLOW);
}

impl From<RequestError> for GatewayError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Bad(why) => GatewayError::BadRequest(why),
            RequestError::MethodNotAllowed => GatewayError::MethodNotAllowed,
            RequestError::NotImplemented => GatewayError::NotImplemented,
            RequestError::UriTooLong => GatewayError::UriTooLong,
            RequestError::HeadersTooLarge => GatewayError::HeadersTooLarge,
            RequestError::Expectation => GatewayError::ExpectationFailed,
            RequestError::VersionNotSupported => GatewayError::VersionNotSupported,
        }
    }
}

impl From<RouteError> for GatewayError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotFound => GatewayError::RouteNotFound,
            RouteError::BadService => GatewayError::ServiceNotFound,
            RouteError::BadPath => GatewayError::BadRequest("unsafe_path"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; LINE_LEN] = b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n";

    #[test]
    fn head_responses_keep_the_length_but_carry_no_body() {
        let (mut get, mut head) = (Vec::new(), Vec::new());
        GatewayError::ServiceNotFound.write_response(
            &mut get,
            DATE,
            Some(b"x"),
            Extra::NONE,
            false,
            false,
        );
        GatewayError::ServiceNotFound.write_response(
            &mut head,
            DATE,
            Some(b"x"),
            Extra::NONE,
            false,
            true,
        );
        let get = String::from_utf8(get).unwrap();
        let (get_head, _) = get.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!("{get_head}\r\n\r\n")
        );
    }

    #[test]
    fn all_is_in_index_order() {
        for (i, e) in GatewayError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }

    #[test]
    fn json_body_and_head() {
        let mut out = b"prefix".to_vec();
        GatewayError::NoBackend.write_response(
            &mut out,
            DATE,
            Some(b"users"),
            Extra::retry_after(7),
            false,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        let body = "{\"error\":\"no_backend_available\",\"service\":\"users\"}\n";
        assert!(
            text.starts_with("prefixHTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 7\r\n"));
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(text.ends_with(&format!("\r\n\r\n{body}")));
    }

    #[test]
    fn every_kind_carries_one_date_after_the_status_line() {
        for e in GatewayError::ALL {
            for head in [false, true] {
                let mut out = Vec::new();
                e.write_response(&mut out, DATE, None, Extra::retry_after(1), true, head);
                let text = String::from_utf8(out).unwrap();
                let mut lines = text.split("\r\n");
                assert!(lines.next().unwrap().starts_with("HTTP/1.1 "));
                assert_eq!(lines.next(), Some("date: Sun, 06 Nov 1994 08:49:37 GMT"));
                assert_eq!(text.matches("date: ").count(), 1, "{text}");
            }
        }
    }

    #[test]
    fn unknown_method_is_501_not_implemented() {
        let e = GatewayError::from(RequestError::NotImplemented);
        assert_eq!((e.status(), e.code()), (501, "not_implemented"));
        assert!(!e.is_backend_failure());
        let mut out = Vec::new();
        e.write_response(&mut out, DATE, None, Extra::NONE, true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
            "{text}"
        );
        assert!(!text.contains("allow:"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n{\"error\":\"not_implemented\"}\n"),
            "{text}"
        );
        let mut out = Vec::new();
        GatewayError::MethodNotAllowed.write_response(
            &mut out,
            DATE,
            None,
            Extra::NONE,
            true,
            false,
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("\r\nallow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n"));
    }

    #[test]
    fn options_asterisk_head() {
        let mut out = Vec::new();
        write_options_head(&mut out, DATE);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nallow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS\r\n"
        );
    }

    #[test]
    fn detail_and_close() {
        let mut out = Vec::new();
        GatewayError::BadRequest("missing_host").write_response(
            &mut out,
            DATE,
            None,
            Extra::NONE,
            true,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("{\"error\":\"bad_request\",\"detail\":\"missing_host\"}\n"));
    }
}
