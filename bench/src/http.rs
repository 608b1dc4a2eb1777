//! HTTP/1.1 request encoding and incremental response framing (head, then Content-Length / chunked / close-delimited body).

use std::fmt;

/// Maximum number of response headers we accept.
const MAX_HEADERS: usize = 64;

/// Build the complete request bytes (head and body) once, so each request is one write.
pub fn build_request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body_size: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body_size);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let wants_length = body_size > 0 || matches!(method, "POST" | "PUT" | "PATCH");
    if wants_length && !has("content-length") {
        out.extend_from_slice(format!("Content-Length: {body_size}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.resize(out.len() + body_size, b'x');
    out
}

/// Why a response could not be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// httparse rejected the head.
    Head(httparse::Error),
    /// The head did not fit in the read buffer.
    HeadTooLarge,
    /// Content-Length missing digits, duplicated with different values, or too large.
    BadContentLength,
    /// Malformed chunked encoding.
    BadChunk(&'static str),
    /// Bytes arrived after a complete response although no request was outstanding.
    TrailingData,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Head(e) => write!(f, "invalid response head: {e}"),
            FrameError::HeadTooLarge => write!(f, "response head too large"),
            FrameError::BadContentLength => write!(f, "invalid Content-Length"),
            FrameError::BadChunk(why) => write!(f, "invalid chunked body: {why}"),
            FrameError::TrailingData => write!(f, "unexpected bytes after response"),
        }
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the buffer taken by the head (status line, headers, blank line).
    pub len: usize,
    /// Whether the connection may be reused after this response.
    pub keep_alive: bool,
    /// How the body is delimited.
    pub body: BodyDecoder,
}

impl Head {
    /// 1xx responses other than 101 are interim: a final response follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parse a response head from the start of `buf`. `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, FrameError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf).map_err(FrameError::Head)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut keep_alive = !http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value)?;
            if content_length.is_some_and(|old| old != v) {
                return Err(FrameError::BadContentLength);
            }
            content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
            // Only the last coding decides whether the body is chunked.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
                .unwrap_or(false);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyDecoder::Length(0)
    } else if has_te {
        if chunked {
            BodyDecoder::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            })
        } else {
            BodyDecoder::UntilClose
        }
    } else if let Some(n) = content_length {
        BodyDecoder::Length(n)
    } else {
        BodyDecoder::UntilClose
    };
    if matches!(body, BodyDecoder::UntilClose) {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        len,
        keep_alive,
        body,
    }))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_content_length(v: &[u8]) -> Result<u64, FrameError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 {
        return Err(FrameError::BadContentLength);
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + u64::from(b - b'0'))
        } else {
            Err(FrameError::BadContentLength)
        }
    })
}

/// Chunked-body parser state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Reading the hex chunk size.
    Size { value: u64, digits: u8 },
    /// Skipping a chunk extension up to the line end.
    Ext { value: u64 },
    /// Saw CR after the size line; expecting LF.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { left: u64 },
    /// Expecting the CR (or LF) after chunk data.
    DataEnd,
    /// Expecting the LF after chunk data.
    DataEndLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Saw CR of the final blank line; expecting LF.
    FinalLf,
}

/// Incremental body framing: feed it bytes, it says when the body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDecoder {
    /// `n` body bytes are still expected.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked(Chunk),
    /// Body ends when the server closes the connection.
    UntilClose,
}

impl BodyDecoder {
    /// Consume body bytes. Returns `Some(n)` when the body ended after `n` bytes of `data`,
    /// `None` when all of `data` was body and more is expected.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, FrameError> {
        match self {
            BodyDecoder::Length(left) => {
                let avail = data.len() as u64;
                if avail >= *left {
                    let n = *left as usize;
                    *left = 0;
                    Ok(Some(n))
                } else {
                    *left -= avail;
                    Ok(None)
                }
            }
            BodyDecoder::UntilClose => Ok(None),
            BodyDecoder::Chunked(state) => feed_chunked(state, data),
        }
    }

    /// True when the body is already complete without reading anything.
    pub fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Length(0))
    }

    /// Whether end-of-stream legitimately terminates this body.
    pub fn ends_at_eof(&self) -> bool {
        matches!(self, BodyDecoder::UntilClose)
    }
}

fn feed_chunked(state: &mut Chunk, data: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        *state = match *state {
            Chunk::Size { value, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 15 {
                        return Err(FrameError::BadChunk("chunk size too large"));
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    Chunk::Size {
                        value: value * 16 + u64::from(d),
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err(FrameError::BadChunk("missing chunk size")),
                b';' | b' ' | b'\t' => Chunk::Ext { value },
                b'\r' => Chunk::SizeLf { value },
                b'\n' => after_size_line(value),
                _ => return Err(FrameError::BadChunk("bad chunk size")),
            },
            Chunk::Ext { value } => match b {
                b'\n' => after_size_line(value),
                _ => Chunk::Ext { value },
            },
            Chunk::SizeLf { value } => match b {
                b'\n' => after_size_line(value),
                _ => return Err(FrameError::BadChunk("expected LF after chunk size")),
            },
            Chunk::Data { left } => {
                let take = (left as usize).min(data.len() - i);
                i += take;
                let left = left - take as u64;
                *state = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data { left }
                };
                continue;
            }
            Chunk::DataEnd => match b {
                b'\r' => Chunk::DataEndLf,
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(FrameError::BadChunk("expected CRLF after chunk data")),
            },
            Chunk::DataEndLf => match b {
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(FrameError::BadChunk("expected LF after chunk data")),
            },
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::FinalLf,
                b'\n' => return Ok(Some(i + 1)),
                _ => Chunk::Trailer,
            },
            Chunk::Trailer => match b {
                b'\n' => Chunk::TrailerStart,
                _ => Chunk::Trailer,
            },
            Chunk::FinalLf => match b {
                b'\n' => return Ok(Some(i + 1)),
                _ => return Err(FrameError::BadChunk("expected LF after last chunk")),
            },
        };
        i += 1;
    }
    Ok(None)
}

fn after_size_line(value: u64) -> Chunk {
    if value == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data { left: value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame a whole response delivered in the given pieces; returns (status, body bytes, leftover).
    fn frame(pieces: &[&[u8]]) -> Result<(u16, u64, usize), FrameError> {
        let mut head_buf = Vec::new();
        let mut iter = pieces.iter();
        let (head, rest) = loop {
            let Some(p) = iter.next() else {
                panic!("head never completed");
            };
            head_buf.extend_from_slice(p);
            if let Some(h) = parse_head(&head_buf, false)? {
                let rest = head_buf[h.len..].to_vec();
                break (h, rest);
            }
        };
        let mut body = head.body.clone();
        let mut body_bytes = 0u64;
        if body.is_done() {
            return Ok((head.status, 0, rest.len()));
        }
        let mut feed = |d: &[u8]| -> Result<Option<usize>, FrameError> {
            let r = body.feed(d)?;
            body_bytes += r.unwrap_or(d.len()) as u64;
            Ok(r)
        };
        if let Some(n) = feed(&rest)? {
            return Ok((head.status, body_bytes, rest.len() - n));
        }
        for p in iter.by_ref() {
            if let Some(n) = feed(p)? {
                return Ok((head.status, body_bytes, p.len() - n));
            }
        }
        panic!("body never completed");
    }

    #[test]
    fn content_length_in_one_piece() {
        let r = frame(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"]).unwrap();
        assert_eq!(r, (200, 5, 0));
    }

    #[test]
    fn content_length_split_everywhere() {
        let full = b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\nX: y\r\n\r\nhello world";
        for cut1 in 1..full.len() {
            for cut2 in cut1..full.len() {
                let r = frame(&[&full[..cut1], &full[cut1..cut2], &full[cut2..]]).unwrap();
                assert_eq!(r, (201, 11, 0), "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn chunked_split_everywhere() {
        let full: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: a\r\n\r\n";
        for cut1 in 1..full.len() {
            for cut2 in cut1..full.len() {
                let r = frame(&[&full[..cut1], &full[cut1..cut2], &full[cut2..]]).unwrap();
                assert_eq!(r.0, 200);
                assert_eq!(r.2, 0, "cuts {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn chunked_counts_data_and_framing() {
        let mut d = BodyDecoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
        });
        let body = b"A\r\n0123456789\r\n0\r\n\r\nNEXT";
        assert_eq!(d.feed(body).unwrap(), Some(body.len() - 4));
    }

    #[test]
    fn chunked_rejects_garbage() {
        let mut d = BodyDecoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
        });
        assert!(d.feed(b"zz\r\n").is_err());
        let mut d = BodyDecoder::Chunked(Chunk::Size {
            value: 0,
            digits: 0,
        });
        assert!(d.feed(b"2\r\nabX").is_err());
    }

    #[test]
    fn no_body_statuses_and_head() {
        let h = parse_head(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.body.is_done());
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(h.body.is_done());
        let h = parse_head(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(h.is_interim());
    }

    #[test]
    fn close_delimited_and_keep_alive_rules() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(h.body.ends_at_eof());
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
        let h = parse_head(
            b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, 503);
        assert!(!h.keep_alive);
    }

    #[test]
    fn bad_content_length() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(raw, false).unwrap_err(),
                FrameError::BadContentLength
            );
        }
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        assert!(matches!(
            parse_head(b"HTXP/1.1 200 OK\r\n\r\n", false),
            Err(FrameError::Head(_))
        ));
    }

    #[test]
    fn request_bytes() {
        let req = build_request(
            "POST",
            "127.0.0.1:8000",
            "/a?b=c",
            &[("X-Test".into(), "1".into())],
            3,
        );
        assert_eq!(
            req,
            b"POST /a?b=c HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nX-Test: 1\r\nContent-Length: 3\r\n\r\nxxx"
        );
        let req = build_request("GET", "h", "/", &[("host".into(), "other".into())], 0);
        assert_eq!(req, b"GET / HTTP/1.1\r\nhost: other\r\n\r\n");
    }
}
