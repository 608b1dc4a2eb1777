//! The cluster thread's Redis connection, bounded: each request's replies must arrive whole
//! within one deadline and within fixed sizes, or the request fails and the link is dropped.
//!
//! `redis::Connection` bounds each socket read, not a reply: a server answering one byte
//! every 150 ms kept a command going for seconds, and one announcing a two-billion-element
//! array made the parser allocate until the process aborted. Here the bytes of a reply are
//! first framed by [`Scan`] (which checks the bounds as it goes and never allocates per
//! element), and only a reply that is whole and within them is handed to the `redis`
//! crate's parser. Commands and pipelines are still built with the `redis` crate:
//! [`Link`] implements its `ConnectionLike`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use redis::{
    ConnectionAddr, ConnectionInfo, ConnectionLike, ErrorKind, RedisError, RedisResult, Value,
};

/// Largest reply (one command's) in bytes. Ours are a few fields each.
pub const MAX_REPLY_BYTES: usize = 1 << 20;
/// Most values in one reply, nested ones included.
pub const MAX_VALUES: u64 = 1 << 16;
/// Deepest nesting of arrays in a reply (ours nest at most 2).
pub const MAX_DEPTH: usize = 8;
/// Longest line (a status, an error, a length).
pub const MAX_LINE: usize = 64 * 1024;

/// One connection to Redis.
pub struct Link {
    stream: TcpStream,
    /// Bytes read and not yet handed out.
    buf: Vec<u8>,
    db: i64,
    /// How long one request (a command, or a pipeline and all its replies) may take.
    deadline: Duration,
    /// False once a request failed: the stream may hold the rest of a reply.
    open: bool,
    /// Which of the last request's replies broke a size bound, counted from its first.
    over_at: Option<usize>,
    /// Largest reply taken, at most [`MAX_REPLY_BYTES`] (see [`Link::set_reply_limit`]).
    reply_limit: usize,
}

/// Whether `e` is a reply refused for a size bound: a string, an array or a whole reply
/// over the limit.
pub fn over_a_bound(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Parse && e.to_string().contains("over the size limit")
}

fn error(kind: ErrorKind, what: &'static str) -> RedisError {
    RedisError::from((kind, what))
}

impl Link {
    /// Connects to `info`'s TCP address (within `deadline`) and authenticates and selects
    /// its database, each within `deadline`.
    pub fn connect(info: &ConnectionInfo, deadline: Duration) -> RedisResult<Link> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(error(
                ErrorKind::InvalidClientConfig,
                "only redis://HOST:PORT is supported",
            ));
        };
        let mut last = None;
        let mut stream = None;
        for addr in (host.as_str(), *port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, deadline) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e.into()),
            (None, None) => return Err(error(ErrorKind::Io, "the host name resolved to nothing")),
        };
        stream.set_nodelay(true)?;
        let settings = info.redis_settings();
        let mut link = Link {
            stream,
            buf: Vec::new(),
            db: settings.db(),
            deadline,
            open: true,
            over_at: None,
            reply_limit: MAX_REPLY_BYTES,
        };
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password).query::<()>(&mut link)?;
        }
        if link.db != 0 {
            redis::cmd("SELECT").arg(link.db).query::<()>(&mut link)?;
        }
        Ok(link)
    }

    /// How long each later request may take.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// Largest reply each later request may take (at most [`MAX_REPLY_BYTES`]): one over it
    /// fails the request as over a size bound, before its bytes are read.
    pub fn set_reply_limit(&mut self, bytes: usize) {
        self.reply_limit = bytes.min(MAX_REPLY_BYTES);
    }

    /// Which reply of the last request (0: the first command's of a pipeline) failed it by
    /// breaking a size bound ([`over_a_bound`]); None if none did. The link is closed then.
    pub fn over_a_bound_at(&self) -> Option<usize> {
        self.over_at
    }

    /// Writes `bytes` and reads `count` replies, all before one deadline.
    fn request(&mut self, bytes: &[u8], count: usize) -> RedisResult<Vec<Value>> {
        self.over_at = None;
        if !self.open {
            return Err(error(ErrorKind::Io, "the link failed before"));
        }
        // Bytes nobody asked for (an extra reply slipped into the stream) would be read as
        // the answer to this request, and every later one shifted by one.
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        if !self.buf.is_empty() || !crate::io::is_quiet(fd) {
            self.open = false;
            // Said as what it is: a Redis that restarts closes the connection, which read
            // as a protocol error in the log (a review).
            return Err(match crate::io::peer(fd) {
                crate::io::Peer::Closed if self.buf.is_empty() => {
                    error(ErrorKind::Io, "Redis closed the connection")
                }
                crate::io::Peer::Reset if self.buf.is_empty() => {
                    error(ErrorKind::Io, "Redis reset the connection")
                }
                _ => error(ErrorKind::Parse, "Redis sent bytes nobody asked for"),
            });
        }
        let end = Instant::now() + self.deadline;
        let result = self.exchange(bytes, count, end);
        if result.is_err() {
            self.open = false;
        }
        result
    }

    fn exchange(&mut self, bytes: &[u8], count: usize, end: Instant) -> RedisResult<Vec<Value>> {
        self.stream.set_write_timeout(Some(left(end)?))?;
        self.stream.write_all(bytes)?;
        let mut replies = Vec::with_capacity(count.min(1024));
        while replies.len() < count {
            let len = match self.frame(end) {
                Ok(len) => len,
                Err(e) => {
                    if over_a_bound(&e) {
                        self.over_at = Some(replies.len());
                    }
                    return Err(e);
                }
            };
            let value = redis::parse_redis_value(&self.buf[..len]);
            self.buf.drain(..len);
            replies.push(value?);
        }
        Ok(replies)
    }

    /// Reads until `buf` starts with one whole reply within the bounds; its length.
    fn frame(&mut self, end: Instant) -> RedisResult<usize> {
        let mut scan = Scan {
            limit: self.reply_limit,
            ..Scan::default()
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match scan.step(&self.buf) {
                Ok(Some(len)) => return Ok(len),
                Ok(None) => {}
                Err(what) => return Err(error(ErrorKind::Parse, what)),
            }
            self.stream.set_read_timeout(Some(left(end)?))?;
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(error(ErrorKind::Io, "Redis closed the connection")),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(error(
                        ErrorKind::Io,
                        "Redis did not answer within the deadline",
                    ))
                }
                Err(e) => return Err(e.into()),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What is left until `end`; an error once it has passed.
fn left(end: Instant) -> RedisResult<Duration> {
    let d = end.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(error(
            ErrorKind::Io,
            "Redis did not answer within the deadline",
        ));
    }
    Ok(d)
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let mut v = self.request(cmd, 1)?;
        v.pop().ok_or_else(|| error(ErrorKind::Client, "no reply"))
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let mut v = self.request(cmd, offset + count)?;
        Ok(v.split_off(offset))
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

/// Frames one RESP2 reply at the start of a buffer, resumably and within the bounds above:
/// call [`Scan::step`] again with the same buffer, grown, after `Ok(None)`.
#[derive(Debug)]
struct Scan {
    /// Where the next unread value starts.
    pos: usize,
    /// Values still to come in each array being read, outermost first.
    open: Vec<u64>,
    /// Values seen so far.
    values: u64,
    /// Largest reply in bytes.
    limit: usize,
}

impl Default for Scan {
    fn default() -> Scan {
        Scan {
            pos: 0,
            open: Vec::new(),
            values: 0,
            limit: MAX_REPLY_BYTES,
        }
    }
}

impl Scan {
    /// `Ok(Some(len))` once `buf[..len]` is one whole reply, `Ok(None)` while more bytes are
    /// needed, `Err` for a reply that breaks the protocol or a bound.
    fn step(&mut self, buf: &[u8]) -> Result<Option<usize>, &'static str> {
        loop {
            let rest = &buf[self.pos..];
            let Some(eol) = memchr::memmem::find(&rest[..rest.len().min(MAX_LINE + 2)], b"\r\n")
            else {
                if rest.len() > MAX_LINE {
                    return Err("Redis sent a line over the limit");
                }
                if buf.len() > self.limit {
                    return Err("Redis sent a reply over the size limit");
                }
                return Ok(None);
            };
            let line = &rest[1..eol];
            let after = self.pos + eol + 2;
            self.values += 1;
            if self.values > MAX_VALUES {
                return Err("Redis sent a reply with too many values");
            }
            let next = match rest[0] {
                b'+' | b'-' => after,
                b':' => {
                    number(line)?;
                    after
                }
                b'$' => match number(line)? {
                    -1 => after,
                    n if n < 0 || n as u64 > self.limit as u64 => {
                        return Err("Redis sent a string over the size limit")
                    }
                    n => {
                        let end = after + n as usize + 2;
                        if end > self.limit {
                            return Err("Redis sent a reply over the size limit");
                        }
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err("Redis sent a string without its CRLF");
                        }
                        end
                    }
                },
                b'*' => match number(line)? {
                    -1 | 0 => after,
                    n if n < 0 || n as u64 > MAX_VALUES => {
                        return Err("Redis sent an array over the size limit")
                    }
                    n => {
                        if self.open.len() >= MAX_DEPTH {
                            return Err("Redis sent a reply nested too deeply");
                        }
                        self.open.push(n as u64);
                        self.pos = after;
                        continue;
                    }
                },
                _ => return Err("Redis sent a reply of an unknown type"),
            };
            if next > self.limit {
                return Err("Redis sent a reply over the size limit");
            }
            self.pos = next;
            // One value done: it completes the arrays it ends, innermost first.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// A RESP length or integer line.
fn number(line: &[u8]) -> Result<i64, &'static str> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("Redis sent a malformed number")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        Scan::default().step(bytes)
    }

    #[test]
    fn frames_whole_replies_and_waits_for_the_rest() {
        let cases: [&[u8]; 7] = [
            b"+OK\r\n",
            b"-ERR wrong\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*3\r\n$4\r\nopen\r\n$13\r\n1764600000000\r\n$-1\r\n",
            b"*2\r\n*2\r\n:1\r\n:2\r\n*0\r\n",
        ];
        for whole in cases {
            let mut tail = whole.to_vec();
            tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(frame(&tail), Ok(Some(whole.len())), "{whole:?}");
            // Every split: nothing until the last byte, then the same length, resumed.
            for cut in 0..whole.len() {
                let mut s = Scan::default();
                assert_eq!(s.step(&whole[..cut]), Ok(None), "{whole:?} cut at {cut}");
                assert_eq!(
                    s.step(whole),
                    Ok(Some(whole.len())),
                    "{whole:?} resumed at {cut}"
                );
            }
            assert!(redis::parse_redis_value(whole).is_ok());
        }
    }

    /// Regression: the `redis` crate's parser, fed `*2000000000`, allocated until the
    /// process aborted; a reply trickled a byte at a time kept a command going for seconds.
    #[test]
    fn refuses_what_breaks_a_bound_before_reading_it() {
        assert!(frame(b"*2000000000\r\n").is_err());
        assert!(frame(b"$2000000000\r\n").is_err());
        assert!(frame(b"*1\r\n".repeat(MAX_DEPTH + 1).as_slice()).is_err());
        assert!(frame(b"?what\r\n").is_err());
        assert!(frame(b":1x\r\n").is_err());
        assert!(frame(b"$3\r\nabcde\r\n").is_err());
        let long_line = [b"+".as_slice(), &vec![b'a'; MAX_LINE + 10]].concat();
        assert!(frame(&long_line).is_err());
        // Many small values: refused once past the count, however they are framed.
        let many = [
            format!("*{}\r\n", MAX_VALUES).into_bytes(),
            b":1\r\n".repeat(MAX_VALUES as usize),
        ]
        .concat();
        assert!(frame(&many).is_err());
        // Within the bounds, a large reply is fine.
        let big = [
            format!("${}\r\n", MAX_REPLY_BYTES - 64).into_bytes(),
            vec![b'x'; MAX_REPLY_BYTES - 64],
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(frame(&big), Ok(Some(big.len())));
    }

    /// A fake Redis on a thread: answers each read with `reply`, sent `pace` apart a byte
    /// at a time when `pace` is set.
    fn fake(reply: &'static [u8], pace: Option<Duration>) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut b = [0u8; 4096];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {
                let sent = match pace {
                    None => s.write_all(reply),
                    Some(p) => reply.iter().try_for_each(|c| {
                        std::thread::sleep(p);
                        s.write_all(&[*c])
                    }),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn link(addr: std::net::SocketAddr) -> Link {
        let info =
            redis::IntoConnectionInfo::into_connection_info(format!("redis://{addr}/0").as_str())
                .expect("url");
        Link::connect(&info, Duration::from_millis(250)).expect("connect")
    }

    /// A first `GET` on `con` that reads 1, then the error of a second, 50 ms later.
    fn second_get_fails(con: &mut Link) -> redis::RedisError {
        let get = |con: &mut Link| redis::cmd("GET").arg("k").query::<i64>(con);
        assert_eq!(get(con).expect("first"), 1);
        std::thread::sleep(Duration::from_millis(50));
        get(con).expect_err("the second must fail")
    }

    #[test]
    fn a_reply_must_arrive_whole_within_the_deadline() {
        let mut fast = link(fake(b"$4\r\nopen\r\n", None));
        let v: String = redis::cmd("GET").arg("k").query(&mut fast).expect("reply");
        assert_eq!(v, "open");
        // 11 bytes at 40 ms each: every read is quick, the reply is not.
        let mut slow = link(fake(b"$4\r\nopen\r\n", Some(Duration::from_millis(40))));
        let t = Instant::now();
        let r = redis::cmd("GET").arg("k").query::<String>(&mut slow);
        assert!(r.is_err(), "{r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
        assert!(!slow.is_open());
        // A hostile announcement is refused at once, nothing allocated for it.
        let mut hostile = link(fake(b"*2000000000\r\n", None));
        assert!(redis::cmd("GET")
            .arg("k")
            .query::<Vec<String>>(&mut hostile)
            .is_err());
        // An extra reply nobody asked for: caught before the next request, not read as its
        // answer (a review's fake Redis shifted every reply by one that way).
        let mut extra = link(fake(b":1\r\n:2\r\n", None));
        let e = second_get_fails(&mut extra);
        assert!(e.to_string().contains("nobody asked for"), "{e}");
        assert!(!extra.is_open());
        // A Redis that closed the connection (a restart) is said as that, not as a
        // protocol error (a review).
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            let _ = s.write_all(b":1\r\n");
        });
        let mut closed = link(addr);
        let e = second_get_fails(&mut closed);
        assert!(e.to_string().contains("Redis closed the connection"), "{e}");
        assert!(
            e.is_io_error() || e.is_connection_dropped(),
            "{:?}",
            e.kind()
        );
        // A server error is a reply: the link stays usable.
        let mut err = link(fake(b"-WRONGTYPE Operation against a key\r\n", None));
        assert!(redis::cmd("GET")
            .arg("k")
            .query::<String>(&mut err)
            .is_err());
        assert!(err.is_open());
    }

    /// The link names which reply of a pipeline broke a size bound, so that the caller can
    /// read that key alone another way (the fleet's records: `cluster::Node::read_fleet`).
    #[test]
    fn the_reply_over_a_bound_is_named() {
        let get3 = |con: &mut Link| {
            let mut pipe = redis::pipe();
            for k in ["a", "b", "c"] {
                pipe.cmd("GET").arg(k);
            }
            pipe.query::<Vec<redis::Value>>(con)
        };
        let big = format!("${}\r\n", MAX_REPLY_BYTES + 1).leak().as_bytes();
        let reply: &'static [u8] = [b":1\r\n:2\r\n".as_slice(), big].concat().leak();
        let mut con = link(fake(reply, None));
        let e = get3(&mut con).expect_err("over the limit");
        assert!(over_a_bound(&e), "{e}");
        assert_eq!(con.over_a_bound_at(), Some(2));
        assert!(!con.is_open());
        // Any other failure names none.
        assert!(get3(&mut con).is_err());
        assert_eq!(con.over_a_bound_at(), None);
        let mut fine = link(fake(b":1\r\n:2\r\n:3\r\n", None));
        assert_eq!(get3(&mut fine).expect("replies").len(), 3);
        assert_eq!(fine.over_a_bound_at(), None);
        // A tighter limit of the caller's: a string under the link's own is over it, and
        // refused from its length, as one over the link's is.
        let reply: &'static [u8] = b":1\r\n$300\r\n";
        let mut tight = link(fake(reply, None));
        tight.set_reply_limit(256);
        let e = get3(&mut tight).expect_err("over the caller's limit");
        assert!(over_a_bound(&e), "{e}");
        assert_eq!(tight.over_a_bound_at(), Some(1));
    }
}
