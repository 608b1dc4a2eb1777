//! HTTP/1.1 message syntax and framing (RFC 9112): request and response heads, chunked coding.
//!
//! Everything here is synchronous and allocation-free: it looks at bytes already read and
//! decides what they mean. Every ambiguity is an error, never a guess: the caller turns a
//! request error into a 4xx and closes, a response error into a 502.

use std::mem::MaybeUninit;

/// Most header lines we accept in one message (the `headers` array lives on the stack).
pub const MAX_HEADERS: usize = 128;

/// Room for the headers of one head, left uninitialised: the parser writes the ones it
/// finds (initialising all 128 would cost 4 KiB of stores per head parsed).
pub type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Empty [`HeaderSlots`].
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// The request methods the gateway forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Option<Method> {
        Some(match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
        }
    }

    /// RFC 9110 §9.2.2: only these may be retried automatically.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a request head was refused. Each maps to one status in `error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed or ambiguous; the static string says which rule (400).
    Bad(&'static str),
    /// A method we know but do not forward: TRACE, CONNECT (405).
    MethodNotAllowed,
    /// A method we do not know (any other token, `FOO` or `get`; RFC 9110 §9.1) (501).
    NotImplemented,
    /// Request target longer than the limit (414).
    UriTooLong,
    /// Header section bigger than the limit or too many fields (431).
    HeadersTooLarge,
    /// An `Expect` other than `100-continue` (417).
    Expectation,
    /// A well-formed request line of another major version, `HTTP/2.0` (505).
    VersionNotSupported,
}

/// The first line of `buf`, without its line ending.
fn first_line(buf: &[u8]) -> &[u8] {
    let line = &buf[..memchr::memchr(b'\n', buf).unwrap_or(buf.len())];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether the request line in `buf` is well formed but for its version, which is
/// `HTTP/D.D` with a major version other than 1 (`HTTP/2.0`, `HTTP/3.0`): RFC 9110 §15.6.6
/// answers that 505, as NGINX does. Anything else wrong with the version is a 400.
fn other_major_version(buf: &[u8]) -> bool {
    let Some([method, target, version]) = three_words(buf) else {
        return false;
    };
    let token = |v: &[u8]| !v.is_empty() && v.iter().all(|&c| c.is_ascii_graphic());
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && *major != b'1' && minor.is_ascii_digit())
        && token(method)
        && token(target)
}

/// Whether the request line in `buf` is three words, the last `HTTP/` and more: then what
/// the parser refused after the target is the version.
fn version_is_wrong(buf: &[u8]) -> bool {
    three_words(buf).is_some_and(|[_, _, version]| version.starts_with(b"HTTP/"))
}

/// The request line in `buf` as its three space-separated words, if it is three.
fn three_words(buf: &[u8]) -> Option<[&[u8]; 3]> {
    let mut parts = first_line(buf).split(|&c| c == b' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(c), None) => Some([a, b, c]),
        _ => None,
    }
}

/// RFC 9112 §2.3: a request of a later minor version of HTTP/1 (`HTTP/1.2` to `HTTP/1.9`)
/// is read as one of the highest we implement, 1.1, as NGINX does (it was a 400, which
/// httparse's refusal gave). Rewrites the version of a complete request line in `buf` in
/// place and says whether it did; anything else in the line is left for the parser.
pub fn later_minor_as_1_1(buf: &mut [u8]) -> bool {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let Some(nl) = memchr::memchr(b'\n', &buf[start..]) else {
        return false;
    };
    match &mut buf[start..start + nl] {
        [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor @ b'2'..=b'9', b'\r'] => {
            *minor = b'1';
            true
        }
        _ => false,
    }
}

/// RFC 9110 §2.5: a response of a later minor version of HTTP/1 (`HTTP/1.2` to `HTTP/1.9`)
/// is read as 1.1 too, as NGINX does (it was a 502 `malformed_response`, a review).
/// Rewrites the version at the start of `buf` in place once its 8 bytes are in hand, so
/// a head split anywhere is read alike; what follows is left for the parser.
pub fn later_minor_response_as_1_1(buf: &mut [u8]) {
    if let [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor @ b'2'..=b'9', ..] = buf {
        *minor = b'1';
    }
}

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_target_bytes: usize,
}

/// Validated facts about a request head; the header lines stay in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// A WebSocket handshake (RFC 6455 §4.1): an HTTP/1.1 GET without a body whose one
    /// `Upgrade` field says `websocket` and whose `Connection` lists `upgrade`. Forwarded as
    /// one only to a service with `websocket: true` (`rewrite::prepare` clears it otherwise).
    pub upgrade: bool,
}

/// True for bytes that may appear in a field name (RFC 9110 `tchar`).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The method and target of a request line that is whole and plainly formed: a token of at
/// most 32 bytes, a target of visible ASCII, `HTTP/1.0` or `HTTP/1.1`, single spaces; an
/// absolute-form target reduced to its path, as for a request served. What the access log
/// and the service's counts can say about a head [`parse_request`] refused; None for
/// anything less plain (never logged raw).
pub fn request_line(buf: &[u8]) -> Option<(&[u8], &str)> {
    let end = memchr::memmem::find(buf, b"\r\n")?;
    let mut parts = buf[..end].split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let plain = parts.next().is_none()
        && (1..=32).contains(&method.len())
        && method.iter().all(|&b| is_tchar(b))
        && !target.is_empty()
        && target.iter().all(|b| (0x21..=0x7e).contains(b))
        && matches!(version, b"HTTP/1.0" | b"HTTP/1.1");
    if !plain {
        return None;
    }
    let target = std::str::from_utf8(target).ok()?;
    let path = split_target(target, Method::Get).map_or(target, |(path, _)| path);
    Some((method, path))
}

/// Every line ending in a head must be CRLF: a bare CR or a bare LF is refused (httparse
/// accepts bare LF, which lets two parsers disagree about where a header ends).
pub fn has_bare_cr_or_lf(head: &[u8]) -> bool {
    // Every CR must be followed by LF and every LF preceded by CR, so a head has neither
    // bare one exactly when, for each pair of neighbouring bytes, "the first is CR" equals
    // "the second is LF" (and it neither starts with LF nor ends with CR). One branch-free
    // pass the compiler vectorises: a search per line ending cost ~10x more per head.
    let pairs = head.iter().zip(head.iter().skip(1));
    let mismatch = pairs.fold(false, |bad, (&a, &b)| bad | ((a == b'\r') != (b == b'\n')));
    mismatch || head.first() == Some(&b'\n') || head.last() == Some(&b'\r')
}

/// Parses a decimal Content-Length value: `1*DIGIT`, no sign, no spaces, fits u64.
///
/// Leading zeros are valid digits (`0000000000000000000000000001` is 1) and do not count
/// toward overflow; any value above `u64::MAX` is refused by checked arithmetic, whatever
/// its length.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Trims optional whitespace (SP / HTAB) at both ends.
pub fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Splits a comma-separated field value into trimmed, non-empty elements.
pub fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Folds every Content-Length line (and comma-separated element) into one value.
/// Identical duplicates collapse; any difference or invalid element is an error.
fn fold_content_length(acc: &mut Option<u64>, value: &[u8]) -> Result<(), ()> {
    let mut any = false;
    for part in value.split(|&b| b == b',') {
        let n = parse_content_length(trim_ows(part)).ok_or(())?;
        any = true;
        match *acc {
            Some(prev) if prev != n => return Err(()),
            _ => *acc = Some(n),
        }
    }
    if any {
        Ok(())
    } else {
        Err(())
    }
}

/// Checks a Host value (or an absolute-form authority): `uri-host [ ":" port ]` with no
/// userinfo, path, list or spaces. The host is a bracketed IPv6 literal or a non-empty
/// name of letters, digits and `-._~!$&'()*+;=` (no `%`: a percent-encoded name such as
/// `h%2f` is no name any resolver knows, and a backend that builds URLs from
/// `X-Forwarded-Host` would decode it); the port, if any, at most 65535. RFC 9110 §4.2.1:
/// an http URI with an empty host is invalid (`:80` was accepted until 2026-12-01, as were
/// `h:99999` and `h%2f`: a review).
pub fn valid_host(v: &[u8]) -> bool {
    const NAME_BYTES: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = (i as u8).is_ascii_alphanumeric();
            i += 1;
        }
        let extra = b"-._~!$&'()*+;=";
        let mut j = 0;
        while j < extra.len() {
            t[extra[j] as usize] = true;
            j += 1;
        }
        t
    };
    // One pass over the name (this runs for every request).
    let port = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        // An IPv6 address, parsed (a review found `[:]` and `[....:]` accepted).
        let literal = std::str::from_utf8(&v[1..end]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        &v[end + 1..]
    } else {
        let mut i = 0;
        while i < v.len() && NAME_BYTES[v[i] as usize] {
            i += 1;
        }
        if i == 0 {
            return false;
        }
        &v[i..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] if digits.len() <= 5 => {
            let mut n = 0u32;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return false;
                }
                n = n * 10 + u32::from(d - b'0');
            }
            n <= 65535
        }
        _ => false,
    }
}

/// Framing-relevant header names, compared case-insensitively.
pub fn name_is(name: &str, want: &str) -> bool {
    name.eq_ignore_ascii_case(want)
}

/// Result of parsing a request head.
pub struct ParsedRequest<'h, 'b> {
    pub info: RequestInfo,
    /// Length of the head in bytes, including the final CRLF CRLF.
    pub head_len: usize,
    /// The raw request target (origin-form; absolute-form already reduced to its path), or
    /// `*` for `OPTIONS *`.
    pub target: &'b str,
    /// The Host header (or absolute-form authority), if any.
    pub host: Option<&'b [u8]>,
    pub headers: &'h [httparse::Header<'b>],
    /// The raw head; every header slice points into it.
    pub head: &'b [u8],
}

/// Whether `bytes` begin with a whole request head that [`parse_request`] takes under
/// `limits`: a pipelined request the client has sent in full, which a client that
/// half-closed behind it still waits to have answered. A head that would be refused (its
/// syntax, its limits, its `Host` or framing) is no request to wait for (a re-review:
/// plain `httparse` took a bare-LF head, a missing `Host` or 101 fields over a limit of
/// 100 for one).
pub fn holds_request_head(bytes: &[u8], limits: &HeadLimits) -> bool {
    // No head ends without an empty line: most partial bytes need no parse.
    let ends = |pat: &[u8]| memchr::memmem::find(bytes, pat).is_some();
    if !ends(b"\n\r\n") && !ends(b"\n\n") {
        return false;
    }
    let mut slots = header_slots();
    matches!(parse_request(bytes, &mut slots, limits), Ok(Some(_)))
}

/// Parses and validates a request head at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and the limits are not yet exceeded).
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    limits: &HeadLimits,
) -> Result<Option<ParsedRequest<'h, 'b>>, RequestError> {
    let mut req = httparse::Request::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, headers);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // Before the head is complete, tell a too-long target apart from a too-long head,
            // the same way however the head is split: a target known to be too long is 414
            // as soon as it is known, as in a complete head (a hostile-client review saw 431
            // or 414 for one head, depending on the split).
            if req.path.is_some_and(|t| t.len() > limits.max_target_bytes) {
                return Err(RequestError::UriTooLong);
            }
            let line_too_long = first_line_len(buf) > limits.max_target_bytes + 32;
            if req.path.is_none() && (line_too_long || buf.len() >= limits.max_head_bytes) {
                // Still in the method, no known method is that long: 501, as a short
                // unknown one gets (it was 414). Nothing but empty lines so far is no
                // method at all (a hostile-client review got a 501 for 100 KB of CRLFs).
                let empty = |b: &u8| *b == b'\r' || *b == b'\n';
                return Err(if req.method.is_none() && buf.iter().all(empty) {
                    RequestError::Bad("malformed_request_line")
                } else if req.method.is_none() {
                    RequestError::NotImplemented
                } else {
                    RequestError::UriTooLong
                });
            }
            if buf.len() >= limits.max_head_bytes {
                return Err(RequestError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadersTooLarge),
        Err(httparse::Error::Version) => {
            return Err(if other_major_version(buf) {
                RequestError::VersionNotSupported
            } else {
                RequestError::Bad("invalid_version")
            })
        }
        // httparse fills in the method before it parses the target: a token error after it
        // is a byte the target may not hold (a control, DEL or non-ASCII byte).
        Err(httparse::Error::Token) if req.method.is_some() => {
            return Err(RequestError::Bad("invalid_target"))
        }
        // A line that is one word (`garbage`) is no request line at all: an operator
        // review was told its method was invalid.
        Err(httparse::Error::Token) if !first_line(buf).contains(&b' ') => {
            return Err(RequestError::Bad("malformed_request_line"))
        }
        Err(httparse::Error::Token) => return Err(RequestError::Bad("invalid_method")),
        Err(httparse::Error::HeaderName) => return Err(RequestError::Bad("invalid_header_name")),
        Err(httparse::Error::HeaderValue) => return Err(RequestError::Bad("invalid_header_value")),
        // `HTTP/1.10`, `HTTP/1.1x`: httparse reads `HTTP/1.1` and finds no line end after it.
        // The version is what is wrong (an operator review was told the line was malformed).
        Err(httparse::Error::NewLine) if version_is_wrong(buf) => {
            return Err(RequestError::Bad("invalid_version"))
        }
        Err(_) => return Err(RequestError::Bad("malformed_request_line")),
    };
    // An over-long target is 414 whether or not the head arrived in one read.
    if req.path.is_some_and(|t| t.len() > limits.max_target_bytes) {
        return Err(RequestError::UriTooLong);
    }
    if head_len > limits.max_head_bytes {
        return Err(RequestError::HeadersTooLarge);
    }
    let head = &buf[..head_len];
    if has_bare_cr_or_lf(skip_leading_crlf(head)) {
        return Err(RequestError::Bad("bare_cr_or_lf"));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Bad("malformed_request_line"));
    };
    if req.headers.len() > limits.max_headers {
        return Err(RequestError::HeadersTooLarge);
    }
    if target.len() > limits.max_target_bytes {
        return Err(RequestError::UriTooLong);
    }
    // httparse has checked that the method is a token. Methods are case-sensitive, so
    // `get` is not GET but a method we do not know, like any other unregistered token.
    let method = match Method::from_bytes(method.as_bytes()) {
        Some(m) => m,
        None if matches!(method, "TRACE" | "CONNECT") => {
            return Err(RequestError::MethodNotAllowed)
        }
        None => return Err(RequestError::NotImplemented),
    };
    let mut host: Option<&[u8]> = None;
    let mut host_count = 0usize;
    let mut content_length: Option<u64> = None;
    let mut saw_cl = false;
    let mut saw_te = false;
    let mut te_ok = true;
    let mut te_count = 0usize;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut options = 0usize;
    let mut expect_continue = false;
    let mut upgrade_option = false;
    let mut upgrade_fields = 0usize;
    let mut websocket = false;
    // httparse has already refused field names that are not tokens and values with
    // control characters (NUL, CR, LF, ...): the conformance corpus holds it to that.
    for h in req.headers.iter() {
        let name = h.name;
        match name.len() {
            4 if name_is(name, "host") => {
                host_count += 1;
                host = Some(trim_ows(h.value));
            }
            14 if name_is(name, "content-length") => {
                saw_cl = true;
                if fold_content_length(&mut content_length, h.value).is_err() {
                    return Err(RequestError::Bad("invalid_content_length"));
                }
            }
            17 if name_is(name, "transfer-encoding") => {
                saw_te = true;
                for coding in h.value.split(|&b| b == b',') {
                    te_count += 1;
                    if !trim_ows(coding).eq_ignore_ascii_case(b"chunked") {
                        te_ok = false;
                    }
                }
            }
            10 if name_is(name, "connection") => {
                for opt in list_elements(h.value) {
                    if closes(opt) {
                        close = true;
                    } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    } else {
                        upgrade_option |= opt.eq_ignore_ascii_case(b"upgrade");
                        options += 1;
                        if options > MAX_CONNECTION_OPTIONS {
                            return Err(RequestError::Bad(TOO_MANY_CONNECTION_OPTIONS));
                        }
                    }
                }
            }
            7 if name_is(name, "upgrade") => {
                upgrade_fields += 1;
                websocket = trim_ows(h.value).eq_ignore_ascii_case(b"websocket");
            }
            6 if name_is(name, "expect") => {
                if trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(RequestError::Expectation);
                }
            }
            _ => {}
        }
    }
    // Framing (RFC 9112 §6.1, §6.3): exactly one unambiguous way to find the body's end.
    let framing = if saw_te {
        if saw_cl {
            return Err(RequestError::Bad("content_length_and_transfer_encoding"));
        }
        if minor == 0 {
            return Err(RequestError::Bad("transfer_encoding_in_http10"));
        }
        if !te_ok || te_count != 1 {
            return Err(RequestError::Bad("unsupported_transfer_encoding"));
        }
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    // Request target: origin-form, absolute-form reduced to its path (RFC 9112 §3.2), or
    // `*` for OPTIONS.
    let (target, authority) = split_target(target, method)?;
    if minor == 1 {
        if host_count != 1 {
            return Err(RequestError::Bad(if host_count == 0 {
                "missing_host"
            } else {
                "duplicate_host"
            }));
        }
    } else if host_count > 1 {
        return Err(RequestError::Bad("duplicate_host"));
    }
    if let Some(h) = host {
        if !valid_host(h) {
            return Err(RequestError::Bad("invalid_host"));
        }
    }
    let host = authority.or(host);
    let keep_alive = if minor == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    Ok(Some(ParsedRequest {
        info: RequestInfo {
            method,
            minor,
            framing,
            keep_alive,
            expect_continue: expect_continue && minor == 1 && framing != Framing::None,
            upgrade: websocket
                && upgrade_fields == 1
                && upgrade_option
                && method == Method::Get
                && minor == 1
                && framing == Framing::None,
        },
        head_len,
        target,
        host,
        headers: req.headers,
        head: &buf[..head_len],
    }))
}

fn skip_leading_crlf(head: &[u8]) -> &[u8] {
    head.strip_prefix(b"\r\n").unwrap_or(head)
}

fn first_line_len(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len())
}

/// Reduces the target to origin-form; returns it with the absolute-form authority, if any.
/// The asterisk-form `*` is passed on as it is, for OPTIONS only (RFC 9112 §3.2.4): the
/// caller answers it itself, as it concerns the gateway and no backend.
fn split_target(target: &str, method: Method) -> Result<(&str, Option<&[u8]>), RequestError> {
    if target.contains('#') {
        return Err(RequestError::Bad("fragment_in_target"));
    }
    if target.starts_with('/') || (target == "*" && method == Method::Options) {
        return Ok((target, None));
    }
    let lower_has = |p: &str| {
        target.len() >= p.len() && target.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    let rest = if lower_has("http://") {
        &target[7..]
    } else if lower_has("https://") {
        &target[8..]
    } else {
        // authority-form (CONNECT) and asterisk-form with another method: we are a gateway,
        // not a forward proxy.
        return Err(RequestError::Bad("unsupported_target_form"));
    };
    let slash = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    if authority.is_empty() || !valid_host(authority.as_bytes()) || authority.contains('@') {
        return Err(RequestError::Bad("invalid_host"));
    }
    if !path.starts_with('/') {
        return Err(RequestError::Bad("unsupported_target_form"));
    }
    Ok((path, Some(authority.as_bytes())))
}

/// Facts about a response head from a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseInfo {
    pub status: u16,
    pub minor: u8,
    pub framing: Framing,
    /// The backend allows reusing this connection afterwards.
    pub reusable: bool,
    pub head_len: usize,
}

/// Why a backend's response head was refused (all become 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseError(pub &'static str);

pub struct ParsedResponse<'h, 'b> {
    pub info: ResponseInfo,
    /// The validated Content-Length, if one was sent (kept for HEAD and 304 responses).
    pub content_length: Option<u64>,
    pub reason: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    /// The raw head; every header slice points into it.
    pub head: &'b [u8],
}

/// A trailer section over [`MAX_TRAILERS`].
pub const TRAILERS_TOO_LARGE: &str = "trailers_too_large";
/// A response head over `limits.max_head_bytes`.
pub const RESPONSE_HEAD_TOO_LARGE: &str = "response_head_too_large";
/// A response head with more fields than we have slots for ([`MAX_HEADERS`]).
pub const TOO_MANY_RESPONSE_HEADERS: &str = "too_many_response_headers";

/// Parses a backend's response head; `head_request` says whether the request was HEAD.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderSlots<'b>,
    head_request: bool,
    max_head_bytes: usize,
) -> Result<Option<ParsedResponse<'h, 'b>>, ResponseError> {
    let mut res = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response_with_uninit_headers(&mut res, buf, headers)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head_bytes => {
            return Err(ResponseError(RESPONSE_HEAD_TOO_LARGE))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError(TOO_MANY_RESPONSE_HEADERS))
        }
        Err(_) => return Err(ResponseError("malformed_response")),
    };
    if head_len > max_head_bytes {
        return Err(ResponseError(RESPONSE_HEAD_TOO_LARGE));
    }
    if has_bare_cr_or_lf(&buf[..head_len]) {
        return Err(ResponseError("bare_cr_or_lf"));
    }
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(ResponseError("malformed_response"));
    };
    // RFC 9110 §15: every valid status code is within 100 to 599.
    if !(100..=599).contains(&status) {
        return Err(ResponseError("invalid_status"));
    }
    let mut content_length = None;
    let mut saw_cl = false;
    let mut saw_te = false;
    let mut te_ok = true;
    let mut te_count = 0usize;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut options = 0usize;
    for h in res.headers.iter() {
        let name = h.name;
        if name_is(name, "content-length") {
            saw_cl = true;
            if fold_content_length(&mut content_length, h.value).is_err() {
                return Err(ResponseError("invalid_content_length"));
            }
        } else if name_is(name, "transfer-encoding") {
            saw_te = true;
            for coding in h.value.split(|&b| b == b',') {
                te_count += 1;
                if !trim_ows(coding).eq_ignore_ascii_case(b"chunked") {
                    te_ok = false;
                }
            }
        } else if name_is(name, "connection") {
            for opt in list_elements(h.value) {
                if closes(opt) {
                    close = true;
                } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else {
                    options += 1;
                    if options > MAX_CONNECTION_OPTIONS {
                        return Err(ResponseError(TOO_MANY_CONNECTION_OPTIONS));
                    }
                }
            }
        }
    }
    let bodyless = head_request || status < 200 || status == 204 || status == 304;
    // A response with both is response splitting (RFC 9112 §11.1): never guess.
    if saw_cl && saw_te {
        return Err(ResponseError("content_length_and_transfer_encoding"));
    }
    if saw_te && (!te_ok || te_count != 1) {
        return Err(ResponseError("unsupported_transfer_encoding"));
    }
    let framing = if bodyless {
        Framing::None
    } else if saw_te {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // An HTTP/1.0 message with Transfer-Encoding has faulty framing: relay it, then close
    // (RFC 9112 §6.1).
    let reusable = framing != Framing::UntilClose
        && !close
        && (minor == 1 || keep_alive_token)
        && !(minor == 0 && saw_te)
        && status != 101;
    Ok(Some(ParsedResponse {
        info: ResponseInfo {
            status,
            minor,
            framing,
            reusable,
            head_len,
        },
        content_length,
        reason: res.reason.unwrap_or(""),
        headers: res.headers,
        head: &buf[..head_len],
    }))
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) and the framing fields we always rewrite ourselves.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "content-length",
    ];
    HOP.iter()
        .any(|h| name.len() == h.len() && name_is(name, h))
}

/// Fields, besides the `X-Forwarded-*` ones the gateway writes, in which frameworks read an
/// edge proxy's word on the client's scheme, host, port, address or URL: Rack takes
/// `X-Forwarded-Ssl: on` and `X-Forwarded-Scheme` for the scheme, Spring takes `Forwarded`
/// before any `X-Forwarded-*` field, Werkzeug and Spring `X-Forwarded-Port`, Symfony and
/// IIS's URL Rewrite `X-Original-URL` for the path to route. From a client they would undo
/// the fields the gateway writes (a review: `Forwarded: host=evil` and `X-Forwarded-Port`
/// rewrote the origin a backend built its links from), so only a peer in `trusted_proxies`
/// may send them. Traefik removes its `X-Forwarded-*` and `X-Real-Ip` from untrusted
/// clients alike.
pub fn is_edge_field(name: &str) -> bool {
    EDGE_FIELDS
        .iter()
        .any(|e| name.len() == e.len() && name_is(name, e))
}

/// The fields [`is_edge_field`] names, in lower case.
const EDGE_FIELDS: [&str; 19] = [
    "forwarded",
    "x-forwarded-port",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-url-scheme",
    "front-end-https",
    // The client's address as other edges name it (Rails' `remote_ip` reads `Client-IP`;
    // Akamai's and Cloudflare's, IIS ARR's), and its TLS certificate as an edge hands it
    // on (Envoy's `X-Forwarded-Client-Cert`, which Envoy itself sanitises from untrusted
    // clients; ASP.NET Core's `X-ARR-ClientCert`): identity claims (a re-review).
    "client-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-arr-ssl",
    "x-arr-clientcert",
    "x-forwarded-client-cert",
];

/// True for a field name with `_` that, read with `_` as `-`, is a framing, hop-by-hop or
/// routing field (`Transfer_Encoding`, `Content_Length`, `Proxy_Authorization`, ...).
///
/// CGI and WSGI backends turn both `-` and `_` into `_` (`HTTP_TRANSFER_ENCODING`), so they
/// would act on such a field as if it were the real one, which we removed or rewrote. Only
/// names with a `-` can have an alias, but the list is the full set we control.
pub fn is_underscore_alias(name: &str) -> bool {
    const CONTROLLED: [&str; 14] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "host",
        "proxy-authorization",
        // The forwarding fields the gateway writes (a review: `X_Forwarded_Proto` reached
        // backends beside ours).
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-prefix",
    ];
    // Most names have no `_`: one short scan and done. The fields only a trusted proxy
    // may send are controlled too.
    memchr::memchr(b'_', name.as_bytes()).is_some()
        && CONTROLLED
            .iter()
            .chain(&EDGE_FIELDS)
            .any(|c| name_is_cgi(name, c))
}

/// Whether `name` is `want` as a CGI or WSGI backend reads it: any case, `_` and `-` alike
/// (`want` is lower case).
pub fn name_is_cgi(name: &str, want: &str) -> bool {
    let dash = |c: u8| c == b'-' || c == b'_';
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(a, b)| a.to_ascii_lowercase() == b || (dash(a) && dash(b)))
}

/// Most names one head's `Connection` fields may list besides `close` and `keep-alive`:
/// a request with more is a 400, a response a 502 ([`TOO_MANY_CONNECTION_OPTIONS`]).
/// Real heads list one or two (`Upgrade`, `TE`, `HTTP2-Settings`); without a bound, one
/// head of thousands of names made every field's check cost a search, 13× the work on an
/// ordinary head of the same size (`cargo bench --bench hot_path -- hostile`).
pub const MAX_CONNECTION_OPTIONS: usize = 16;
/// A head whose `Connection` fields list more than [`MAX_CONNECTION_OPTIONS`] names.
pub const TOO_MANY_CONNECTION_OPTIONS: &str = "too_many_connection_options";

/// Names listed in the `Connection` fields of a head (the per-message hop-by-hop set).
///
/// Heads come here parsed, so there are at most [`MAX_CONNECTION_OPTIONS`]: kept inline,
/// no allocation, searched in turn.
pub struct ConnectionOptions<'h, 'b> {
    names: [&'b [u8]; MAX_CONNECTION_OPTIONS],
    len: usize,
    /// Set when the fields list more names than a parsed head can: then every lookup
    /// reads them all again (slow, but never wrong; the parsers keep this from happening).
    unbounded: Option<&'h [httparse::Header<'b>]>,
}

impl<'h, 'b> ConnectionOptions<'h, 'b> {
    pub fn collect(headers: &'h [httparse::Header<'b>]) -> Self {
        let mut me = ConnectionOptions {
            names: [&[][..]; MAX_CONNECTION_OPTIONS],
            len: 0,
            unbounded: None,
        };
        for opt in Self::listed(headers) {
            if me.len == MAX_CONNECTION_OPTIONS {
                me.unbounded = Some(headers);
                break;
            }
            me.names[me.len] = opt;
            me.len += 1;
        }
        me
    }

    fn listed(headers: &'h [httparse::Header<'b>]) -> impl Iterator<Item = &'b [u8]> + 'h {
        headers
            .iter()
            .filter(|h| name_is(h.name, "connection"))
            .flat_map(|h| list_elements(h.value))
            .filter(|opt| !is_close_or_keep_alive(opt))
    }

    /// True when `name` must not be forwarded because `Connection` names it.
    pub fn names(&self, name: &str) -> bool {
        let name = name.as_bytes();
        match self.unbounded {
            None => self.names[..self.len]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name)),
            Some(headers) => Self::listed(headers).any(|n| n.eq_ignore_ascii_case(name)),
        }
    }
}

fn is_close_or_keep_alive(opt: &[u8]) -> bool {
    closes(opt) || opt.eq_ignore_ascii_case(b"keep-alive")
}

/// A `Connection` element that closes the connection after this message: `close`, or one
/// that is no token (`close x`, `keep-alive;q=1`): what its sender meant is unclear, and
/// closing is the reading that is always safe (NGINX takes any value containing `close`;
/// until 2026-12-04 such an element was taken for an option and the connection kept).
fn closes(opt: &[u8]) -> bool {
    opt.eq_ignore_ascii_case(b"close") || !opt.iter().all(|&b| is_tchar(b))
}

/// Appends `n` in decimal without allocating.
pub fn push_dec(out: &mut Vec<u8>, n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    let mut v = n;
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Appends one chunk (`size CRLF data CRLF`) in our own chunked encoding.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_hex(out: &mut Vec<u8>, n: usize) {
    let mut tmp = [0u8; 16];
    let i = tmp.len() - hex_width(n);
    write_hex(&mut tmp[i..], n);
    out.extend_from_slice(&tmp[i..]);
}

/// Digits of `n` in hexadecimal, without leading zeros (1 for 0).
fn hex_width(n: usize) -> usize {
    (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize
}

/// Writes `n` in hexadecimal into all of `dst`.
fn write_hex(dst: &mut [u8], mut n: usize) {
    for d in dst.iter_mut().rev() {
        *d = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
}

/// Re-chunks decoded data so that small spans in a row go out as one chunk: a body sent
/// in chunks of one byte is not forwarded as one, so the framing we write, and what the
/// receiver parses, stays small whatever the sender chose. Spans of [`RUN_LIMIT`] bytes
/// or more go out as their own chunk, as they came. Call [`ChunkRun::close`] before `out`
/// is sent.
#[derive(Default)]
pub struct ChunkRun {
    /// The chunk still open for more small spans: where its size line starts in `out`, and
    /// its data so far. The line is written when the chunk closes.
    open: Option<(usize, usize)>,
}

/// Largest chunk [`ChunkRun`] builds from small spans: its size fits [`RUN_DIGITS`].
const RUN_LIMIT: usize = 0xfff;
const RUN_DIGITS: usize = 3;

impl ChunkRun {
    /// Appends `data` to `out`, to the open chunk if it still fits.
    pub fn push(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match &mut self.open {
            Some((_, len)) if *len + data.len() <= RUN_LIMIT => {
                *len += data.len();
                extend_small(out, data);
            }
            _ => {
                self.close(out);
                if data.len() < RUN_LIMIT {
                    // Room for the size line; `close` fills it in.
                    self.open = Some((out.len(), data.len()));
                    out.extend_from_slice(b"000\r\n");
                    extend_small(out, data);
                } else {
                    push_chunk(out, data);
                }
            }
        }
    }

    /// Ends the open chunk: its size, without leading zeros, and the CRLF after its data.
    pub fn close(&mut self, out: &mut Vec<u8>) {
        let Some((at, len)) = self.open.take() else {
            return;
        };
        let width = hex_width(len);
        if width < RUN_DIGITS {
            // A chunk under 256 bytes: move it up to its shorter size line.
            out.copy_within(at + RUN_DIGITS.., at + width);
            out.truncate(out.len() - (RUN_DIGITS - width));
        }
        write_hex(&mut out[at..at + width], len);
        out.extend_from_slice(b"\r\n");
    }
}

/// `out.extend_from_slice(data)`, without a call to `memcpy` for a span of a few bytes
/// (most of the cost of a body sent a byte per chunk).
fn extend_small(out: &mut Vec<u8>, data: &[u8]) {
    if data.len() <= 16 {
        out.reserve(data.len());
        for &b in data {
            out.push(b);
        }
    } else {
        out.extend_from_slice(data);
    }
}

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size; `any` once at least one was seen.
    Size {
        any: bool,
    },
    /// In the rest of the chunk-size line (whitespace and extensions), until CR.
    Ext(Ext),
    /// Saw CR after the size line; need LF.
    SizeLf,
    /// Inside chunk data, this many bytes left.
    Data,
    /// After data; need CR then LF.
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field name, before its colon.
    TrailerName,
    /// Inside a trailer field value, until CR.
    TrailerValue,
    /// Saw CR at the end of a trailer line.
    TrailerLf,
    /// Saw CR on an empty line: need the final LF.
    EndLf,
    Done,
}

/// Where a chunk-size line is in
/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`,
/// `chunk-ext-val = token / quoted-string` (RFC 9112 §7.1.1). Extensions are dropped, but
/// only well-formed ones: a recipient that reads `5;a="x` differently from us (where does
/// the quoted string end?) must never get a body we framed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Whitespace after the size or a value: only more whitespace or `;` may follow.
    Bws,
    /// After `;`: optional whitespace, then a name (an empty name is refused).
    PreName,
    Name,
    /// Whitespace after a name: `=` or `;` must follow.
    AfterName,
    /// After `=`: optional whitespace, then a token or a quoted string.
    PreValue,
    Token,
    Quoted,
    /// After a backslash inside a quoted string.
    QuotedPair,
    /// After the closing quote.
    AfterQuoted,
}

impl Ext {
    /// The state after byte `b`, or `None` if `b` is not allowed here.
    fn step(self, b: u8) -> Option<ChunkState> {
        use Ext::*;
        let ws = b == b' ' || b == b'\t';
        let next = match (self, b) {
            (Quoted, b'"') => AfterQuoted,
            (Quoted, b'\\') => QuotedPair,
            (Quoted, _) if ws || b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80 => Quoted,
            (QuotedPair, _) if ws || (0x21..=0x7e).contains(&b) || b >= 0x80 => Quoted,
            // CR, LF, NUL and other controls never belong in a quoted string: `5;a="x` CRLF
            // is an unterminated string, not the end of the line.
            (Quoted | QuotedPair, _) => return None,
            // The line ends only after a name or a value, never after `;`, `=` or BWS.
            (Name | Token | AfterQuoted, b'\r') => return Some(ChunkState::SizeLf),
            (Bws | Name | AfterName | Token | AfterQuoted, b';') => PreName,
            (Name | AfterName, b'=') => PreValue,
            (Bws | PreName | AfterName | PreValue, _) if ws => self,
            (Name, _) if ws => AfterName,
            (Token | AfterQuoted, _) if ws => Bws,
            (PreName | Name, _) if is_tchar(b) => Name,
            (PreValue | Token, _) if is_tchar(b) => Token,
            (PreValue, b'"') => Quoted,
            _ => return None,
        };
        Some(ChunkState::Ext(next))
    }
}

/// Incremental chunked-coding decoder: feed it bytes split anywhere, it yields data spans.
///
/// Extensions are validated and dropped; trailers are validated, bounded and dropped.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    line_len: usize,
    trailer_bytes: usize,
    total: u64,
    /// Framing bytes beyond what the chunks so far are allowed (see [`MAX_EXCESS`]).
    excess: u64,
}

/// Longest chunk-size line (size, leading zeros included, + extensions) we accept.
const MAX_CHUNK_LINE: usize = 4096;
/// Framing a chunked body may carry beyond its allowance, the rule Go's `net/http` adopted
/// for CVE-2023-39326: each chunk may spend 16 bytes plus twice its size on framing (its
/// size line, extensions and CRLFs); what a body spends beyond that accumulates (never
/// below 0), and more than this is refused. Chunks of one byte pass (5 bytes of framing);
/// a body that is mostly extensions, whose wire bytes would otherwise be unbounded by
/// `max_body_bytes` (4 KiB of size line per byte of data), does not.
const MAX_EXCESS: u64 = 16 * 1024;
/// A chunked body whose framing exceeds its allowance by more than [`MAX_EXCESS`].
pub const CHUNK_OVERHEAD_TOO_LARGE: &str = "chunk_overhead_too_large";
/// Most trailer bytes we read (and drop).
const MAX_TRAILERS: usize = 16 * 1024;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { any: false },
            size: 0,
            line_len: 0,
            trailer_bytes: 0,
            total: 0,
            excess: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decoded body bytes so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Decodes from `input`, calling `data` for each span of body bytes. Returns how many
    /// input bytes were consumed; it stops right after the final CRLF, so whatever follows
    /// (a pipelined message) is left unconsumed.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size { any } => {
                    self.count_line_byte()?;
                    i += 1;
                    let v = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        b'\r' if any => {
                            self.state = ChunkState::SizeLf;
                            continue;
                        }
                        b';' if any => {
                            self.state = ChunkState::Ext(Ext::PreName);
                            continue;
                        }
                        // BWS before `;` (RFC 9112 §7.1.1); it must lead to an extension.
                        b' ' | b'\t' if any => {
                            self.state = ChunkState::Ext(Ext::Bws);
                            continue;
                        }
                        _ => return Err(ChunkError("invalid_chunk_size")),
                    };
                    // Leading zeros leave the size at 0 and so never overflow; a 17th
                    // significant digit always does.
                    if self.size > u64::MAX >> 4 {
                        return Err(ChunkError("chunk_size_overflow"));
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    self.state = ChunkState::Size { any: true };
                }
                ChunkState::Ext(ext) => {
                    self.count_line_byte()?;
                    i += 1;
                    self.state = ext.step(b).ok_or(ChunkError("invalid_chunk_extension"))?;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare_cr_in_chunk_line"));
                    }
                    i += 1;
                    // The line as counted (its CR included), its LF and the CRLF after
                    // the data, against 16 bytes plus twice the data.
                    self.excess = (self.excess + self.line_len as u64 + 3)
                        .saturating_sub(self.size.saturating_mul(2).saturating_add(16));
                    if self.excess > MAX_EXCESS {
                        return Err(ChunkError(CHUNK_OVERHEAD_TOO_LARGE));
                    }
                    self.line_len = 0;
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.total = self
                            .total
                            .checked_add(self.size)
                            .ok_or(ChunkError("chunk_size_overflow"))?;
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    data(&input[i..i + take]);
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("missing_crlf_after_chunk"));
                    }
                    self.state = ChunkState::DataLf;
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("missing_crlf_after_chunk"));
                    }
                    self.state = ChunkState::Size { any: false };
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    match b {
                        b'\r' => self.state = ChunkState::EndLf,
                        b'\n' => return Err(ChunkError("bare_lf_in_trailer")),
                        _ if is_tchar(b) => self.state = ChunkState::TrailerName,
                        _ => return Err(ChunkError("invalid_trailer")),
                    }
                    self.count_trailer()?;
                }
                ChunkState::TrailerName => {
                    i += 1;
                    match b {
                        b':' => self.state = ChunkState::TrailerValue,
                        _ if is_tchar(b) => {}
                        // A line with no colon is no field at all; dropping it silently
                        // would accept what another parser may read differently.
                        b'\r' => return Err(ChunkError("trailer_without_colon")),
                        _ => return Err(ChunkError("invalid_trailer")),
                    }
                    self.count_trailer()?;
                }
                ChunkState::TrailerValue => {
                    i += 1;
                    match b {
                        b'\r' => self.state = ChunkState::TrailerLf,
                        // The same rule httparse applies to header values: no controls but HTAB.
                        b'\t' => {}
                        0..=0x1f | 0x7f => return Err(ChunkError("invalid_trailer")),
                        _ => {}
                    }
                    self.count_trailer()?;
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare_cr_in_trailer"));
                    }
                    i += 1;
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("bare_cr_in_trailer"));
                    }
                    i += 1;
                    self.state = ChunkState::Done;
                    return Ok(i);
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }

    /// Counts one byte of a chunk-size line against [`MAX_CHUNK_LINE`].
    fn count_line_byte(&mut self) -> Result<(), ChunkError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            return Err(ChunkError("chunk_line_too_long"));
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(ChunkError(TRAILERS_TOO_LARGE));
        }
        Ok(())
    }
}

/// Where the search for the end of a request head stopped, so that a head arriving in
/// many small pieces is scanned once in all, not once per piece (a 29 KB head sent two bytes
/// at a time used to be re-parsed from its start 14 500 times).
///
/// [`HeadScan::ready`] says when calling [`parse_request`] can decide something: the head
/// is complete (an empty line arrived), the request line just completed (so a bad one is
/// refused at once), or a limit is reached (414 / 431). Between those, parsing could only
/// say "more bytes needed".
#[derive(Debug, Default, Clone, Copy)]
pub struct HeadScan {
    /// Bytes of the pending head already searched.
    scanned: usize,
    /// Where the line being searched began (only needed until the request line is found).
    line_start: usize,
    first_line_done: bool,
    /// Where a response's field line is (see [`HeadScan::ready_response`]).
    field: Field,
    /// The last byte was a CR (a response's: only an LF may follow it).
    cr: bool,
    /// Bytes examined in all (for tests and benchmarks).
    pub work: u64,
}

/// Where a response's field line is, byte by byte.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// At its start.
    #[default]
    Start,
    /// In the name.
    Name,
    /// In spaces after the name (which responses may have before the colon).
    Spaces,
    /// Past the colon.
    Value,
}

impl HeadScan {
    /// Looks at the bytes of `head` (the unconsumed buffer) not seen before.
    pub fn ready(&mut self, head: &[u8], limits: &HeadLimits) -> bool {
        let from = self.scanned.min(head.len());
        self.scanned = head.len();
        self.work += (head.len() - from) as u64;
        let mut decide = false;
        for nl in memchr::memchr_iter(b'\n', &head[from..]).map(|p| from + p) {
            if !self.first_line_done {
                // Leading empty lines before the request line are skipped by the parser.
                let line = &head[self.line_start.min(nl)..nl];
                self.line_start = nl + 1;
                if !line.iter().all(|&b| b == b'\r') {
                    self.first_line_done = true;
                    decide = true;
                }
                continue;
            }
            // An empty line: LF after LF, or after CR LF (bare-LF forms are refused later).
            let ends = nl >= 1 && head[nl - 1] == b'\n'
                || nl >= 2 && head[nl - 1] == b'\r' && head[nl - 2] == b'\n';
            if ends {
                return true;
            }
        }
        // A request line that cannot be one from its first byte on (a TLS handshake sent to
        // the plain port begins with 0x16) is refused at once: it waited for the 408 (an
        // operator review: 10 s).
        // So is one after a bare CR (`\r\x16`): a leading empty line must be CR LF, and an LF
        // there would have ended that line above.
        let hopeless = !self.first_line_done
            && match head.get(self.line_start..).unwrap_or_default() {
                [b'\r', _, ..] => true,
                [b, ..] => *b != b'\r' && *b != b'\n' && !is_tchar(*b),
                [] => false,
            };
        decide
            || hopeless
            || head.len() >= limits.max_head_bytes
            || !self.first_line_done && head.len() > limits.max_target_bytes + 32
    }

    /// [`HeadScan::ready`] for a response head, before [`parse_response`]: while the status
    /// line is short and unfinished, always (the parser judges its version and code as
    /// they come); then when the status line completes, a byte arrives that a well-formed
    /// field line cannot have where it stands (a control character, a CR not before an LF,
    /// a name without a colon, a fold), an empty line arrives, or `max_head` is reached.
    /// So a bad head is refused as soon as the byte that makes it bad arrives, as when
    /// every read was parsed, and a backend that sends its head a byte at a time costs one
    /// pass over it, as a client does (a 60 KB head trickled took a second of a worker's
    /// time, parsed again on every read).
    pub fn ready_response(&mut self, head: &[u8], max_head: usize) -> bool {
        /// A status line is short; past this, an unfinished one waits for its LF.
        const SHORT_STATUS_LINE: usize = 256;
        let from = self.scanned.min(head.len());
        self.scanned = head.len();
        self.work += (head.len() - from) as u64;
        let mut decide = false;
        for (at, &b) in head.iter().enumerate().skip(from) {
            if b == b'\n' {
                let line = &head[self.line_start.min(at)..at];
                self.line_start = at + 1;
                let empty = line.is_empty() || line == b"\r";
                let field = std::mem::take(&mut self.field);
                self.cr = false;
                if !self.first_line_done {
                    // Leading empty lines before the status line are skipped by the parser.
                    self.first_line_done = !empty;
                    decide |= !empty;
                } else if empty {
                    return true;
                } else {
                    decide |= field != Field::Value;
                }
                continue;
            }
            if std::mem::take(&mut self.cr) {
                decide = true; // a CR not followed by an LF
            }
            if b == b'\r' {
                self.cr = true;
                continue;
            }
            if !self.first_line_done {
                decide |= b < b' ' && b != b'\t' || b == 0x7f;
                continue;
            }
            let blank = b == b' ' || b == b'\t';
            self.field = match (self.field, b) {
                (Field::Start | Field::Name, _) if is_tchar(b) => Field::Name,
                (Field::Name | Field::Spaces, b':') => Field::Value,
                (Field::Name | Field::Spaces, _) if blank => Field::Spaces,
                (Field::Value, _) if blank || (b'!'..=b'~').contains(&b) || b >= 0x80 => {
                    Field::Value
                }
                (field, _) => {
                    decide = true; // a fold, a bad name byte, a control character
                    field
                }
            };
        }
        let hopeless = !self.first_line_done
            && head
                .get(self.line_start..)
                .and_then(|l| l.first())
                .is_some_and(|&b| b != b'\r' && b != b'\n' && !is_tchar(b));
        decide
            || hopeless
            || !self.first_line_done && head.len() <= SHORT_STATUS_LINE
            || head.len() >= max_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_pipelined_head_is_told_from_a_part_of_one() {
        let whole: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
        ];
        let limits = HeadLimits {
            max_head_bytes: 4096,
            max_headers: 4,
            max_target_bytes: 1024,
        };
        for b in whole {
            assert!(
                holds_request_head(b, &limits),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        let not: &[&[u8]] = &[
            b"",
            b"G",
            b"\r\n",
            b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"x\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            // What the gateway would refuse: bare LF, no Host, a bad length, over a limit.
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: zz\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
        ];
        for b in not {
            assert!(
                !holds_request_head(b, &limits),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        let long = [
            b"GET / HTTP/1.1\r\nHost: a\r\nX: ",
            &[b'x'; 4096][..],
            b"\r\n\r\n",
        ]
        .concat();
        assert!(!holds_request_head(&long, &limits), "over max_head_bytes");
    }

    #[test]
    fn a_response_of_a_later_minor_version_is_read_as_1_1_however_it_is_split() {
        let raw = b"HTTP/1.2 200 OK\r\ncontent-length: 2\r\n\r\nok";
        for split in 0..raw.len() {
            // The bytes come in two reads; each read is rewritten before it is parsed.
            let mut buf = raw[..split].to_vec();
            later_minor_response_as_1_1(&mut buf);
            buf.extend_from_slice(&raw[split..]);
            later_minor_response_as_1_1(&mut buf);
            let mut h = header_slots();
            let r = parse_response(&buf, &mut h, false, 8192).unwrap().unwrap();
            assert_eq!((r.info.status, r.info.minor), (200, 1), "split at {split}");
        }
        for other in [
            &b"HTTP/1.23 200 OK\r\n\r\n"[..],
            b"HTTP/2.2 200 OK\r\n\r\n",
            b"HTTP/1.x 200 OK\r\n\r\n",
        ] {
            let mut buf = other.to_vec();
            later_minor_response_as_1_1(&mut buf);
            let mut h = header_slots();
            assert!(
                parse_response(&buf, &mut h, false, 8192).is_err(),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_later_minor_version_is_rewritten_as_1_1_and_nothing_else_is() {
        for (line, after) in [
            (
                "GET / HTTP/1.2\r\nHost: a\r\n",
                Some("GET / HTTP/1.1\r\nHost: a\r\n"),
            ),
            (
                "\r\n\r\nGET / HTTP/1.9\r\n",
                Some("\r\n\r\nGET / HTTP/1.1\r\n"),
            ),
            ("GET / HTTP/1.2", None),
            ("GET / HTTP/1.2\n", None),
            ("GET / HTTP/1.10\r\n", None),
            ("GET / HTTP/2.2\r\n", None),
            ("GET / HTTP/1.0\r\n", None),
            ("GET / HTTP/1.1\r\n", None),
            ("GET /HTTP/1.2\r\n", None),
            ("", None),
        ] {
            let mut buf = line.as_bytes().to_vec();
            let done = later_minor_as_1_1(&mut buf);
            assert_eq!(done, after.is_some(), "{line:?}");
            assert_eq!(buf, after.unwrap_or(line).as_bytes(), "{line:?}");
        }
    }

    #[test]
    fn only_a_well_formed_line_of_another_major_version_is_505() {
        for line in [
            "GET / HTTP/2.0\r\n",
            "GET /x HTTP/3.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/0.9\r\n",
            "GET / HTTP/2.0",
        ] {
            assert!(other_major_version(line.as_bytes()), "{line:?}");
        }
        for line in [
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.2\r\n",
            "GET / HTTP/11.1\r\n",
            "GET / HTTP/2\r\n",
            "GET / http/2.0\r\n",
            "GET / x HTTP/2.0\r\n",
            "GET  / HTTP/2.0\r\n",
            "GET / HTTP/2.0 \r\n",
            "GET /\x01 HTTP/2.0\r\n",
            "HTTP/2.0\r\n",
        ] {
            assert!(!other_major_version(line.as_bytes()), "{line:?}");
        }
    }

    /// The definition `has_bare_cr_or_lf` must agree with: every CR followed by LF, every
    /// LF preceded by CR.
    fn bare_cr_or_lf_by_definition(head: &[u8]) -> bool {
        head.iter().enumerate().any(|(i, &b)| match b {
            b'\n' => i == 0 || head[i - 1] != b'\r',
            b'\r' => head.get(i + 1) != Some(&b'\n'),
            _ => false,
        })
    }

    proptest::proptest! {
        #[test]
        fn bare_cr_or_lf_agrees_with_its_definition(
            head in proptest::collection::vec(
                proptest::sample::select(vec![b'\r', b'\n', b'a', b':', b' ']),
                0..64,
            )
        ) {
            proptest::prop_assert_eq!(has_bare_cr_or_lf(&head), bare_cr_or_lf_by_definition(&head));
        }
    }

    #[test]
    fn bare_cr_or_lf_at_the_edges() {
        for (head, bare) in [
            (&b""[..], false),
            (b"\r\n", false),
            (b"\n", true),
            (b"\r", true),
            (b"a\r", true),
            (b"\na", true),
            (b"\r\r\n", true),
            (b"a: b\r\n\r\n", false),
            (b"a: b\n\r\n", true),
        ] {
            assert_eq!(has_bare_cr_or_lf(head), bare, "{head:?}");
            assert_eq!(bare_cr_or_lf_by_definition(head), bare, "{head:?}");
        }
    }

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 8192,
        max_headers: 64,
        max_target_bytes: 2048,
    };

    fn parse(raw: &[u8]) -> Result<Option<RequestInfo>, RequestError> {
        let mut h = header_slots();
        parse_request(raw, &mut h, &LIMITS).map(|o| o.map(|p| p.info))
    }

    /// What the connection would decide for `raw` arriving `piece` bytes at a time: it
    /// reads at most `max_head_bytes` and parses whenever [`HeadScan::ready`] says so.
    fn parse_in_pieces(raw: &[u8], piece: usize) -> Result<Option<RequestInfo>, RequestError> {
        let raw = &raw[..raw.len().min(LIMITS.max_head_bytes)];
        let mut scan = HeadScan::default();
        let mut end = 0;
        while end < raw.len() {
            end = (end + piece).min(raw.len());
            if scan.ready(&raw[..end], &LIMITS) {
                let mut h = header_slots();
                if let Some(done) = parse_request(&raw[..end], &mut h, &LIMITS).transpose() {
                    return done.map(|p| Some(p.info));
                }
            }
        }
        Ok(None)
    }

    fn bad(raw: &[u8]) -> &'static str {
        match parse(raw) {
            Err(RequestError::Bad(why)) => why,
            other => panic!(
                "expected 400 for {:?}, got {other:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn simple_get_is_keep_alive_without_body() {
        let info = parse(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(info.method, Method::Get);
        assert_eq!(info.framing, Framing::None);
        assert!(info.keep_alive);
    }

    #[test]
    fn partial_head_needs_more() {
        assert_eq!(parse(b"GET /a HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
    }

    #[test]
    fn smuggling_vectors_are_refused() {
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "content_length_and_transfer_encoding"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            "invalid_content_length"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n"),
            "invalid_content_length"
        );
        for v in [
            "+3",
            "-0",
            "0x10",
            "1_0",
            "3 4",
            "\x0c3",
            "",
            "99999999999999999999",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n");
            assert!(parse(raw.as_bytes()).is_err(), "CL {v:?} accepted");
        }
        for te in [
            "gzip",
            "chunked, gzip",
            "chunked, chunked",
            "identity",
            "",
            "\x08chunked",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert!(parse(raw.as_bytes()).is_err(), "TE {te:?} accepted");
        }
        assert_eq!(
            bad(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "transfer_encoding_in_http10"
        );
    }

    #[test]
    fn identical_duplicate_content_lengths_collapse() {
        let info =
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(info.framing, Framing::Length(5));
    }

    #[test]
    fn syntax_vectors_are_refused() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").is_err());
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n").is_err());
        assert_eq!(bad(b"GET / HTTP/1.1\nHost: x\n\n"), "bare_cr_or_lf");
        assert!(parse(b"gET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
        assert!(parse(b"GET / HTP/1.1\r\nHost: x\r\n\r\n").is_err());
        assert!(parse(b"GET / HTTP/1.32\r\nHost: x\r\n\r\n").is_err());
        assert_eq!(
            bad(b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n"),
            "fragment_in_target"
        );
        assert_eq!(bad(b"GET / HTTP/1.1\r\n\r\n"), "missing_host");
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
            "duplicate_host"
        );
        assert_eq!(bad(b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"), "invalid_host");
        // An empty host, a port no socket has, a percent-encoded name, a bare IPv6 address
        // (a review: all were forwarded as X-Forwarded-Host).
        for host in [
            ":80",
            "h:99999",
            "h%2f",
            "a:b",
            "::1",
            "[]",
            "[::1",
            "[::1]x",
            "[a.b]",
            "a,b",
            "h:-1",
            "[:]",
            "[....:]",
            "[1:2:3:4:5:6:7:8:9:10:11]",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(bad(req.as_bytes()), "invalid_host", "{host}");
            let req = format!("GET http://{host}/v1/proxy/a/x HTTP/1.1\r\nHost: g\r\n\r\n");
            assert_eq!(bad(req.as_bytes()), "invalid_host", "absolute-form {host}");
        }
        for host in [
            "h",
            "h:",
            "h:65535",
            "127.0.0.1:0",
            "[::1]",
            "[::1]:8080",
            "[::ffff:1.2.3.4]",
            "a-b.c_d~e",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let mut headers = header_slots();
            assert!(
                parse_request(req.as_bytes(), &mut headers, &LIMITS).is_ok(),
                "{host}"
            );
        }
        assert_eq!(
            parse(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(RequestError::MethodNotAllowed)
        );
        assert_eq!(
            bad(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            "unsupported_target_form"
        );
    }

    #[test]
    fn options_asterisk_is_parsed_for_the_gateway_to_answer() {
        let mut h = header_slots();
        let p = parse_request(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &mut h, &LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!((p.info.method, p.target), (Method::Options, "*"));
        // Still a request like any other: Host rules apply.
        assert_eq!(bad(b"OPTIONS * HTTP/1.1\r\n\r\n"), "missing_host");
        for m in ["GET", "HEAD", "POST", "DELETE"] {
            let raw = format!("{m} * HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(bad(raw.as_bytes()), "unsupported_target_form", "{m} *");
        }
    }

    #[test]
    fn unknown_methods_are_501_known_unforwarded_ones_405() {
        for m in [
            "FOO", "get", "gET", "PROPFIND", "M-SEARCH", "Get", "TRACEX", "connect",
        ] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                parse(raw.as_bytes()),
                Err(RequestError::NotImplemented),
                "{m}"
            );
        }
        for m in ["TRACE", "CONNECT"] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                parse(raw.as_bytes()),
                Err(RequestError::MethodNotAllowed),
                "{m}"
            );
        }
        // Not a token at all: still a syntax error.
        assert_eq!(bad(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), "invalid_method");
        assert_eq!(bad(b"garbage\r\n\r\n"), "malformed_request_line");
        assert_eq!(bad(b"gar(bage\r\n\r\n"), "malformed_request_line");
        // A version that is wrong past what the parser read as one (an operator review:
        // `HTTP/1.10` was a malformed request line).
        for v in ["HTTP/1.10", "HTTP/1.1x", "HTTP/1.11"] {
            let raw = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_eq!(bad(raw.as_bytes()), "invalid_version", "{v}");
        }
        assert_eq!(
            bad(b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n"),
            "malformed_request_line"
        );
        // A byte the target may not hold is named as such, not as the method.
        assert_eq!(
            bad(b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid_target"
        );
        assert_eq!(
            bad(b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid_target"
        );
    }

    #[test]
    fn content_length_leading_zeros_do_not_count_toward_overflow() {
        assert_eq!(
            parse_content_length(b"0000000000000000000000000001"),
            Some(1)
        );
        assert_eq!(parse_content_length(&[b'0'; 300]), Some(0));
        assert_eq!(
            parse_content_length(b"00000018446744073709551615"),
            Some(u64::MAX)
        );
        for v in [
            &b"18446744073709551616"[..],
            b"000018446744073709551616",
            b"99999999999999999999",
            b"",
            b"0x1",
        ] {
            assert_eq!(
                parse_content_length(v),
                None,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        let info = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0000000000000000000000000001\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(info.framing, Framing::Length(1));
    }

    #[test]
    fn underscore_aliases_of_controlled_fields_are_recognised() {
        for n in [
            "Transfer_Encoding",
            "content_length",
            "CONTENT_LENGTH",
            "Keep_Alive",
            "Proxy_Connection",
            "proxy_authorization",
            "X_Forwarded_Proto",
            "x_forwarded_for",
            "X-Forwarded_Host",
            "Content-Length_".trim_end_matches('_'),
        ]
        .iter()
        .filter(|n| n.contains('_'))
        {
            assert!(is_underscore_alias(n), "{n}");
        }
        for n in [
            "Transfer-Encoding", // the real one is handled as hop-by-hop, not here
            "X_Custom",
            "content__length",
            "Content_Length_",
            "Transfer_Encodin",
            "_te",
            "Host",
            "X_Request_Id", // only with `request_id: true`, in `rewrite::prepare`
        ] {
            assert!(!is_underscore_alias(n), "{n}");
        }
        assert!(name_is_cgi("X_Api_KEY", "x-api-key") && name_is_cgi("x-api-key", "x-api-key"));
        assert!(!name_is_cgi("x-api-keys", "x-api-key") && !name_is_cgi("x_api", "x-api-key"));
    }

    #[test]
    fn limits_map_to_their_statuses() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
        assert_eq!(parse(long.as_bytes()), Err(RequestError::UriTooLong));
        // A complete head whose target alone exceeds the head limit is still 414.
        let huge = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(huge.as_bytes()), Err(RequestError::UriTooLong));
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nA: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(parse(big.as_bytes()), Err(RequestError::HeadersTooLarge));
        // A target just over its limit in a head over its own: 414 for every split.
        let both = format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\nA: {}\r\n\r\n",
            "a".repeat(2048),
            "b".repeat(6200)
        );
        assert!(both.len() > LIMITS.max_head_bytes);
        for piece in [1, 100, 1000, 3000, both.len()] {
            assert_eq!(
                parse_in_pieces(both.as_bytes(), piece),
                Err(RequestError::UriTooLong),
                "pieces of {piece}"
            );
        }
        // Only empty lines, past the limit: no method at all, a 400.
        let crlfs = "\r\n".repeat(LIMITS.max_head_bytes);
        for piece in [1000, crlfs.len()] {
            assert_eq!(
                parse_in_pieces(crlfs.as_bytes(), piece),
                Err(RequestError::Bad("malformed_request_line")),
                "pieces of {piece}"
            );
        }
        // A method longer than any known is 501 however long, not 414.
        for len in [3000, 9000] {
            let method = format!("{} / HTTP/1.1\r\nHost: x\r\n\r\n", "M".repeat(len));
            for piece in [1000, method.len()] {
                assert_eq!(
                    parse_in_pieces(method.as_bytes(), piece),
                    Err(RequestError::NotImplemented),
                    "a method of {len} bytes in pieces of {piece}"
                );
            }
        }
        let many: String = (0..70).map(|i| format!("H{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(parse(raw.as_bytes()), Err(RequestError::HeadersTooLarge));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
            Err(RequestError::Expectation)
        );
    }

    #[test]
    fn absolute_form_uses_its_authority() {
        let mut h = header_slots();
        let p = parse_request(
            b"GET http://gw.example/v1/x?q HTTP/1.1\r\nHost: other\r\n\r\n",
            &mut h,
            &LIMITS,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.target, "/v1/x?q");
        assert_eq!(p.host, Some(&b"gw.example"[..]));
    }

    #[test]
    fn a_connection_element_that_is_no_token_closes() {
        for value in [
            "close x",
            "keep-alive x",
            "x, close y",
            "keep-alive;q=1",
            "\"close\"",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: {value}\r\n\r\n");
            let req = parse(raw.as_bytes()).unwrap().unwrap();
            assert!(!req.keep_alive, "request, {value}");
            let raw =
                format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: {value}\r\n\r\n");
            let mut h = header_slots();
            let res = parse_response(raw.as_bytes(), &mut h, false, 8192)
                .unwrap()
                .unwrap();
            assert!(!res.info.reusable, "response, {value}");
        }
        // Tokens stay options, and the connection is kept.
        let req = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-opt, keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(req.keep_alive);
    }

    #[test]
    fn http10_keep_alive_only_when_asked() {
        let a = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!a.keep_alive);
        let b = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(b.keep_alive);
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let n = d.decode(input, |s| out.extend_from_slice(s))?;
        assert!(
            d.is_done(),
            "not done after {:?}",
            String::from_utf8_lossy(input)
        );
        Ok((out, n))
    }

    #[test]
    fn chunked_decodes_and_stops_at_the_end() {
        let (body, n) =
            decode_all(b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\nGET").unwrap();
        assert_eq!(body, b"hello!");
        assert_eq!(n, 35);
    }

    #[test]
    fn chunked_same_result_for_every_split() {
        let input = b"a\r\n0123456789\r\n3;x\r\nabc\r\n0\r\n\r\n";
        for split in 0..input.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let a = d
                .decode(&input[..split], |s| out.extend_from_slice(s))
                .unwrap();
            assert_eq!(a, split);
            d.decode(&input[split..], |s| out.extend_from_slice(s))
                .unwrap();
            assert!(d.is_done());
            assert_eq!(out, b"0123456789abc");
        }
    }

    #[test]
    fn chunked_rejects_bad_sizes_and_terminators() {
        for v in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"_\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
            b";\r\n",
            b"FFFFFFFFFFFFFFFF0\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"0\n\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"3;a\0b\r\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(v).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    /// Decodes `input` whole and split at every point: all must agree (verdict and body).
    fn decode_every_split(input: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let whole = decode_all(input).map(|(body, _)| body);
        for split in 0..=input.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let r = d
                .decode(&input[..split], |s| out.extend_from_slice(s))
                .and_then(|_| d.decode(&input[split..], |s| out.extend_from_slice(s)));
            let got = r.map(|_| out);
            match (&whole, &got) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {split}"),
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "split at {split} of {:?}: {whole:?} vs {got:?}",
                    String::from_utf8_lossy(input)
                ),
            }
        }
        whole
    }

    #[test]
    fn small_spans_go_out_as_few_chunks_without_leading_zeros() {
        // 10 000 spans of one byte, then one of 5000 and a few more small ones.
        let mut spans: Vec<Vec<u8>> = (0..10_000).map(|i| vec![b'a' + (i % 26) as u8]).collect();
        spans.push(vec![b'L'; 5000]);
        spans.extend((0..300).map(|i| vec![b'0' + (i % 10) as u8; 1 + i % 3]));
        let mut run = ChunkRun::default();
        let mut out = Vec::new();
        for s in &spans {
            run.push(&mut out, s);
        }
        run.close(&mut out);
        out.extend_from_slice(LAST_CHUNK);
        let (body, used) = decode_all(&out).expect("our own chunked encoding decodes");
        assert_eq!(used, out.len());
        assert_eq!(body, spans.concat());
        // Chunks as we wrote them: sizes without leading zeros, none of the small spans
        // alone, none over the run limit unless it came that way.
        let mut sizes = Vec::new();
        let mut rest = &out[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let line = &rest[..eol];
            assert!(
                line == b"0" || line[0] != b'0',
                "leading zero in {:?}",
                String::from_utf8_lossy(line)
            );
            let n = usize::from_str_radix(std::str::from_utf8(line).unwrap(), 16).unwrap();
            sizes.push(n);
            if n == 0 {
                break;
            }
            rest = &rest[eol + 2 + n + 2..];
        }
        assert_eq!(sizes, vec![4095, 4095, 1810, 5000, 600, 0]);
        // Runs of every size up to the limit: short ones get short size lines.
        for n in [1, 15, 16, 255, 256, 4094, 4095, 4096] {
            let mut run = ChunkRun::default();
            let mut out = Vec::new();
            for _ in 0..n {
                run.push(&mut out, b"z");
            }
            run.close(&mut out);
            run.close(&mut out); // nothing left open
            out.extend_from_slice(LAST_CHUNK);
            assert_eq!(decode_all(&out).map(|(b, _)| b), Ok(vec![b'z'; n]), "{n}");
            let first = format!("{:x}\r\n", n.min(RUN_LIMIT));
            assert!(out.starts_with(first.as_bytes()), "{n}");
        }
    }

    #[test]
    fn framing_beyond_its_allowance_is_refused() {
        // One-byte chunks (5 bytes of framing each) pass, however many.
        let mut ok = b"1\r\nx\r\n".repeat(50_000);
        ok.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decode_all(&ok).map(|(b, _)| b.len()), Ok(50_000));
        // So do extensions as long as the data they come with allows.
        let mut ok = format!("40;{}\r\n{}\r\n", "e".repeat(100), "x".repeat(64)).repeat(1000);
        ok.push_str("0\r\n\r\n");
        assert!(decode_all(ok.as_bytes()).is_ok());
        // Long extensions on one-byte chunks: refused after about 16 KiB of excess.
        let one = format!("1;{}\r\nx\r\n", "e".repeat(100));
        let mut bad = one.repeat(1000);
        bad.push_str("0\r\n\r\n");
        assert_eq!(
            decode_all(bad.as_bytes()).err(),
            Some(ChunkError(CHUNK_OVERHEAD_TOO_LARGE))
        );
        let mut d = ChunkedDecoder::new();
        let mut refused_at = None;
        for k in 0..1000 {
            if d.decode(one.as_bytes(), |_| {}).is_err() {
                refused_at = Some(k);
                break;
            }
        }
        // Each such chunk is 106 bytes of framing over an allowance of 18.
        assert_eq!(refused_at, Some((16 * 1024) / (106 - 18)));
    }

    #[test]
    fn chunk_extensions_follow_the_grammar() {
        for ok in [
            &b"5;a=b\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=\"q\\\"x\"\r\nhello\r\n0\r\n\r\n",
            b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
            b"5\t;a=b\r\nhello\r\n0\r\n\r\n",
            b"5; a = b ;c\r\nhello\r\n0\r\n\r\n",
            b"5;a;b=\"\";c=\"x y\"\r\nhello\r\n0;z\r\n\r\n",
            b"5;a=\"\\\\\" ;b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"caf\xe9\"\r\nhello\r\n0\r\n\r\n",
            b"5;!#$%&'*+-.^_`|~=x\r\nhello\r\n0\r\n\r\n",
        ] {
            let body = decode_every_split(ok)
                .unwrap_or_else(|e| panic!("{:?} refused: {e:?}", String::from_utf8_lossy(ok)));
            assert_eq!(body, b"hello");
        }
        for (bad, why) in [
            (&b"5;\r\nhello\r\n0\r\n\r\n"[..], "invalid_chunk_extension"),
            (b"5;a=\"x\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (
                b"5;a=\"x\\\r\nhello\r\n0\r\n\r\n",
                "invalid_chunk_extension",
            ),
            (b"5; \r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5;=b\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5;a=\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5;a=b=c\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5;a b\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (
                b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n",
                "invalid_chunk_extension",
            ),
            (b"5;a=b \r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5;;a\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5;[a]\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (
                b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n",
                "invalid_chunk_extension",
            ),
            (b"5 \r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"5 x\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
            (b"0;\r\n\r\n", "invalid_chunk_extension"),
        ] {
            assert_eq!(
                decode_every_split(bad),
                Err(ChunkError(why)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_sizes_take_leading_zeros_without_overflowing() {
        let body =
            decode_every_split(b"000000000000000000000005\r\nhello\r\n0000000000000000000\r\n\r\n")
                .unwrap();
        assert_eq!(body, b"hello");
        let zeros = format!("{}5\r\nhello\r\n0\r\n\r\n", "0".repeat(4000));
        assert_eq!(decode_all(zeros.as_bytes()).unwrap().0, b"hello");
        // Real overflow is still refused, leading zeros or not.
        for v in [
            &b"10000000000000000\r\n"[..],
            b"00000000FFFFFFFFFFFFFFFF0\r\n",
        ] {
            assert_eq!(
                decode_every_split(v),
                Err(ChunkError("chunk_size_overflow")),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        // The line stays bounded.
        let endless = format!("{}5\r\n", "0".repeat(5000));
        assert_eq!(
            decode_all(endless.as_bytes()),
            Err(ChunkError("chunk_line_too_long"))
        );
        let mut d = ChunkedDecoder::new();
        d.decode(b"0000FFFFFFFFFFFFFFFF\r\n", |_| {}).unwrap();
        assert_eq!(d.size, u64::MAX);
    }

    #[test]
    fn trailer_lines_need_a_colon() {
        assert_eq!(
            decode_every_split(b"5\r\nhello\r\n0\r\nNoColon\r\n\r\n"),
            Err(ChunkError("trailer_without_colon"))
        );
        for bad in [
            &b"0\r\nX-T : 1\r\n\r\n"[..],
            b"0\r\nX-T: a\x01b\r\n\r\n",
            b"0\r\nX-T: a\x7fb\r\n\r\n",
            b"0\r\nX-T: 1\r\nNoColon\r\n\r\n",
        ] {
            assert!(
                decode_every_split(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for ok in [
            &b"0\r\nX-T: 1\r\n\r\n"[..],
            b"0\r\nX-T:\r\n\r\n",
            b"0\r\nX-T: a\tb \xff\r\nY:z\r\n\r\n",
        ] {
            assert_eq!(decode_every_split(ok).unwrap(), b"");
        }
    }

    #[test]
    fn large_chunk_sizes_are_not_truncated() {
        let mut d = ChunkedDecoder::new();
        let mut got = 0usize;
        d.decode(b"100000005\r\nhello", |s| got += s.len()).unwrap();
        assert_eq!(got, 5);
        assert!(!d.is_done());
        assert_eq!(d.total(), 0x1_0000_0005);
    }

    #[test]
    fn response_framing() {
        let mut h = header_slots();
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            &mut h,
            false,
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.info.framing, Framing::Length(3));
        assert!(r.info.reusable);
        let mut h = header_slots();
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", &mut h, false, 8192)
            .unwrap()
            .unwrap();
        assert_eq!(r.info.framing, Framing::UntilClose);
        assert!(!r.info.reusable);
        let mut h = header_slots();
        let r = parse_response(
            b"HTTP/1.1 204 No\r\nContent-Length: 3\r\n\r\n",
            &mut h,
            false,
            8192,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.info.framing, Framing::None);
        let mut h = header_slots();
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut h,
            false,
            8192
        )
        .is_err());
        let mut h = header_slots();
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            &mut h,
            false,
            8192
        )
        .is_err());
    }

    #[test]
    fn an_http_1_0_response_with_transfer_encoding_is_relayed_but_not_reused() {
        let mut h = header_slots();
        let raw =
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";
        let r = parse_response(raw, &mut h, false, 8192).unwrap().unwrap();
        assert_eq!(r.info.framing, Framing::Chunked);
        assert!(!r.info.reusable, "RFC 9112 §6.1: close after it");
        let mut h = header_slots();
        let raw = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
        assert!(
            parse_response(raw, &mut h, false, 8192)
                .unwrap()
                .unwrap()
                .info
                .reusable
        );
    }

    #[test]
    fn status_codes_outside_100_to_599_are_refused() {
        for (code, ok) in [
            ("100", true),
            ("599", true),
            ("600", false),
            ("999", false),
            ("099", false),
        ] {
            let raw = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            let mut h = header_slots();
            let got = parse_response(raw.as_bytes(), &mut h, false, 8192);
            assert_eq!(got.is_ok(), ok, "{code}: {:?}", got.err());
        }
    }

    #[test]
    fn connection_options_are_honoured_up_to_the_bound_and_refused_past_it() {
        let names: Vec<String> = (1..=MAX_CONNECTION_OPTIONS)
            .map(|i| format!("o{i}"))
            .collect();
        // `close` and `keep-alive` do not count; the names may spread over several lines.
        let (first, last) = names.split_at(MAX_CONNECTION_OPTIONS - 1);
        let raw = format!(
            "HTTP/1.1 200 OK\r\nConnection: close, keep-alive, {}\r\nConnection: {}\r\n\r\n",
            first.join(", "),
            last.join(", ")
        );
        let mut h = header_slots();
        let p = parse_response(raw.as_bytes(), &mut h, false, 8192)
            .unwrap()
            .unwrap();
        let opts = ConnectionOptions::collect(p.headers);
        for n in &names {
            assert!(opts.names(n), "{n} not recognised");
            assert!(opts.names(&n.to_uppercase()), "{n} in capitals");
        }
        for kept in [
            "content-type",
            "authorization",
            "user-agent",
            "o17",
            "close",
        ] {
            assert!(!opts.names(kept), "{kept} would be dropped");
        }
        // One more name: a 502 for a response, a 400 for a request.
        let over = raw.replace("\r\n\r\n", ", one-more\r\n\r\n");
        let mut h = header_slots();
        assert_eq!(
            parse_response(over.as_bytes(), &mut h, false, 8192).err(),
            Some(ResponseError(TOO_MANY_CONNECTION_OPTIONS))
        );
        let request = over.replace("HTTP/1.1 200 OK", "GET / HTTP/1.1\r\nHost: a");
        assert!(matches!(
            parse(request.as_bytes()),
            Err(RequestError::Bad(TOO_MANY_CONNECTION_OPTIONS))
        ));
        let at_bound = raw.replace("HTTP/1.1 200 OK", "GET / HTTP/1.1\r\nHost: a");
        assert!(matches!(parse(at_bound.as_bytes()), Ok(Some(_))));
        // Headers that never went through a parser: past the bound, still exactly the names.
        let fields: Vec<String> = (0..=MAX_CONNECTION_OPTIONS)
            .map(|i| format!("x{i}"))
            .collect();
        let value = fields.join(",");
        let hs = [httparse::Header {
            name: "Connection",
            value: value.as_bytes(),
        }];
        let opts = ConnectionOptions::collect(&hs);
        assert!(fields.iter().all(|f| opts.names(f)));
        assert!(!opts.names("content-type") && !opts.names("x17x"));
    }

    #[test]
    fn head_scan_is_linear_however_the_head_is_split() {
        let limits = HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 128,
            max_target_bytes: 8192,
        };
        let mut head = b"GET /v1/proxy/a/b HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..100 {
            head.extend_from_slice(format!("x-pad-{i}: {}\r\n", "v".repeat(270)).as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() > 28_000);
        for piece in [1usize, 2, 7, 1000, head.len()] {
            let mut scan = HeadScan::default();
            let (mut parses, mut complete) = (0, false);
            let mut end = 0;
            while end < head.len() {
                end = (end + piece).min(head.len());
                if scan.ready(&head[..end], &limits) {
                    parses += 1;
                    let mut h = header_slots();
                    complete = parse_request(&head[..end], &mut h, &limits)
                        .expect("valid head")
                        .is_some();
                }
            }
            assert!(complete, "piece {piece}: never parsed whole");
            assert_eq!(scan.work, head.len() as u64, "piece {piece}: bytes scanned");
            // Once when the request line completes, once when the head does.
            assert!(parses <= 2, "piece {piece}: parsed {parses} times");
        }
    }

    /// A backend's head trickled in pieces is searched once and parsed a few times, not
    /// once per piece (a 60 KB head sent a byte at a time took a second of a worker's
    /// time); a bad byte and the head limit are still judged as soon as they arrive (a
    /// review: a bad byte with no line end after it waited for `timeouts.response`).
    #[test]
    fn a_response_head_in_many_pieces_is_parsed_when_it_can_be_judged() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            head.extend_from_slice(format!("x-pad-{i}: {}\r\n", "v".repeat(270)).as_bytes());
        }
        head.extend_from_slice(b"content-length: 0\r\n\r\n");
        let max = 32 * 1024;
        for piece in [1usize, 2, 7, 1000, head.len()] {
            let mut scan = HeadScan::default();
            let (mut parses, mut status) = (0, None);
            let mut end = 0;
            while end < head.len() {
                end = (end + piece).min(head.len());
                if scan.ready_response(&head[..end], max) {
                    parses += 1;
                    let mut h = header_slots();
                    status = parse_response(&head[..end], &mut h, false, max)
                        .expect("valid head")
                        .map(|r| r.info.status);
                }
            }
            assert_eq!(status, Some(200), "piece {piece}: never parsed whole");
            assert_eq!(scan.work, head.len() as u64, "piece {piece}: bytes scanned");
            // Once per piece of the status line (17 bytes), then once at the head's end.
            let most = 17usize.div_ceil(piece) + 1;
            assert!(parses <= most, "piece {piece}: parsed {parses} times");
        }
        // A short, unfinished status line is the parser's to judge, byte by byte.
        let mut scan = HeadScan::default();
        assert!(scan.ready_response(b"HTTP/2", 1024));
        let mut scan = HeadScan::default();
        let long_reason = format!("HTTP/1.1 200 {}", "a".repeat(300));
        assert!(scan.ready_response(&long_reason.as_bytes()[..200], 1024));
        assert!(!scan.ready_response(long_reason.as_bytes(), 1024));
        assert!(scan.ready_response(format!("{long_reason}\x01").as_bytes(), 1024));
        // Then each byte that a well-formed field line cannot have where it stands.
        let status = "HTTP/1.1 200 OK\r\n";
        let mut scan = HeadScan::default();
        assert!(
            scan.ready_response(status.as_bytes(), 1024),
            "the status line"
        );
        let plain = format!("{status}x-a: 1\r\nSet-Cookie : a=b; Path=/\t\u{e9}\r\nx");
        for end in status.len() + 1..=plain.len() {
            let mut scan = HeadScan::default();
            let _ = scan.ready_response(status.as_bytes(), 1024);
            assert!(
                !scan.ready_response(&plain.as_bytes()[..end], 1024),
                "plain up to {end}: {:?}",
                &plain[..end]
            );
        }
        for bad in [
            "no colon\r\n",
            ": 1",
            "x y: 1",
            "x(y: 1",
            " folded",
            "x: a\x00",
            "x: a\x7f",
            "x: a\rb",
            "x\rx",
        ] {
            let mut scan = HeadScan::default();
            let _ = scan.ready_response(status.as_bytes(), 1024);
            let got = format!("{status}{bad}");
            assert!(scan.ready_response(got.as_bytes(), 1024), "{bad:?}");
        }
        let mut scan = HeadScan::default();
        assert!(
            scan.ready_response(b"\x16\x03\x03\x00", 1024),
            "a TLS answer is hopeless at once"
        );
        let mut scan = HeadScan::default();
        let big = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(1100));
        assert!(scan.ready_response(&big.as_bytes()[..20], 1024));
        assert!(!scan.ready_response(&big.as_bytes()[..1000], 1024));
        assert!(scan.ready_response(big.as_bytes(), 1024), "over the limit");
    }

    #[test]
    fn head_scan_hands_over_bad_request_lines_and_limits_at_once() {
        let limits = HeadLimits {
            max_head_bytes: 1024,
            max_headers: 128,
            max_target_bytes: 100,
        };
        let mut scan = HeadScan::default();
        assert!(
            !scan.ready(b"\r\n", &limits),
            "a leading empty line decides nothing"
        );
        assert!(
            scan.ready(b"\r\ngET / HTTP/1.1\r\n", &limits),
            "the request line is judged"
        );
        let mut scan = HeadScan::default();
        let long = format!("GET /{}", "a".repeat(200));
        assert!(
            scan.ready(long.as_bytes(), &limits),
            "an over-long target is judged early"
        );
        let mut scan = HeadScan::default();
        let big = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(1100));
        assert!(scan.ready(&big.as_bytes()[..20], &limits));
        assert!(
            scan.ready(big.as_bytes(), &limits),
            "over the head limit: 431 now"
        );
        // A TLS handshake on the plain port: no request line starts with 0x16.
        let hello = b"\x16\x03\x01\x00\xc8\x01\x00";
        let mut scan = HeadScan::default();
        assert!(
            scan.ready(hello, &limits),
            "a hopeless first byte is judged"
        );
        assert!(parse_request(hello, &mut header_slots(), &limits).is_err());
        let mut scan = HeadScan::default();
        assert!(scan.ready(b"\r\n\x16", &limits), "after an empty line too");
        for bare_cr in [&b"\r\x16\x03"[..], b"\r\n\rG", b"\rGET / HTTP/1.1"] {
            let mut scan = HeadScan::default();
            assert!(scan.ready(bare_cr, &limits), "a bare CR: {bare_cr:?}");
            assert!(parse_request(bare_cr, &mut header_slots(), &limits).is_err());
        }
        let mut scan = HeadScan::default();
        assert!(
            !scan.ready(b"\r", &limits),
            "a CR alone decides nothing yet"
        );
        assert!(!scan.ready(b"\r\n\r", &limits));
        let mut scan = HeadScan::default();
        assert!(
            !scan.ready(b"G", &limits),
            "a method's first byte decides nothing"
        );
        let mut scan = HeadScan::default();
        assert!(scan.ready(b"GET / HTTP/1.1\nHost: a\n", &limits));
        assert!(
            scan.ready(b"GET / HTTP/1.1\nHost: a\n\n", &limits),
            "bare-LF ends count"
        );
    }
}
