//! One client connection: read a request head within its deadline, route it, hand it to the
//! proxy, and loop for the next one (keep-alive and pipelining, answered in order).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balancer::View;
use crate::error::GatewayError;
use crate::h1::{self, Framing, HeadLimits};
use crate::io::{self, Read};
use crate::proxy::{self, Request};
use crate::server::Worker;

/// Initial size of each connection's buffers; they grow only for big heads.
const BUF_SIZE: usize = 8 * 1024;

/// A client connection and the buffers its requests reuse (no per-request allocation).
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes read from the client; `buf[start..]` is not yet consumed.
    pub buf: Vec<u8>,
    pub start: usize,
    /// Bytes to write to the client.
    pub out: Vec<u8>,
    /// The request as sent upstream (kept until the response head arrives, for one retry).
    pub up_out: Vec<u8>,
    /// The part of the request body that arrived with the head, already re-framed.
    pub up_body: Vec<u8>,
    /// Forwarded header lines of the current request, framing included, ending in CRLF CRLF.
    pub fwd: Vec<u8>,
    /// What to append to the backend's path prefix (starts with `/`).
    pub path: Vec<u8>,
    /// The current request's service segment, for error bodies.
    pub service: Vec<u8>,
    /// Bytes read from the backend; `ubuf[ustart..]` is not yet consumed.
    pub ubuf: Vec<u8>,
    pub ustart: usize,
}

/// What the next bytes on the connection amount to.
enum Next {
    Forward(Request),
    /// Answer with this error; keep the connection if the request was complete and framed.
    Reject {
        err: GatewayError,
        keep_alive: bool,
        with_service: bool,
    },
    Close,
}

impl Conn {
    fn new(stream: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            stream,
            peer,
            buf: Vec::with_capacity(BUF_SIZE),
            start: 0,
            out: Vec::with_capacity(BUF_SIZE),
            up_out: Vec::with_capacity(BUF_SIZE),
            up_body: Vec::with_capacity(BUF_SIZE),
            fwd: Vec::with_capacity(1024),
            path: Vec::with_capacity(256),
            service: Vec::with_capacity(64),
            ubuf: Vec::with_capacity(BUF_SIZE),
            ustart: 0,
        }
    }

    /// Sends a gateway-made error response. Returns false if the client is gone.
    pub async fn reply(
        &mut self,
        err: GatewayError,
        with_service: bool,
        retry_after: Option<u64>,
        close: bool,
        timeout: Duration,
    ) -> bool {
        self.out.clear();
        let service = with_service.then_some(&self.service[..]);
        err.write_response(&mut self.out, service, retry_after, close);
        let ok = io::write_all(&mut self.stream, &mut self.out, timeout)
            .await
            .is_ok();
        self.out.clear();
        ok
    }
}

/// Serves one client connection until it closes, errs or times out.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut c = Conn::new(stream, peer);
    loop {
        let view = worker.view();
        match next_request(&mut c, &view).await {
            Next::Forward(req) => {
                if !proxy::forward(&worker, &view, &mut c, req).await {
                    return;
                }
            }
            Next::Reject {
                err,
                keep_alive,
                with_service,
            } => {
                let timeout = view.snapshot.config.timeouts.body;
                if !c.reply(err, with_service, None, !keep_alive, timeout).await || !keep_alive {
                    return;
                }
            }
            Next::Close => return,
        }
    }
}

/// Reads until a complete head is buffered, then parses, routes and prepares it.
async fn next_request(c: &mut Conn, view: &View) -> Next {
    let cfg = &view.snapshot.config;
    let limits = HeadLimits {
        max_head_bytes: cfg.limits.max_head_bytes,
        max_headers: cfg.limits.max_headers,
        max_target_bytes: cfg.limits.max_target_bytes,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        if c.start < c.buf.len() {
            deadline.get_or_insert_with(|| Instant::now() + cfg.timeouts.client_header);
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            match h1::parse_request(&c.buf[c.start..], &mut headers, &limits) {
                Ok(Some(parsed)) => {
                    let head_len = parsed.head_len;
                    let info = parsed.info;
                    let result = proxy::prepare(
                        &parsed,
                        view,
                        c.peer,
                        &mut c.fwd,
                        &mut c.path,
                        &mut c.service,
                    );
                    c.start += head_len;
                    return match result {
                        Ok(svc) => Next::Forward(Request { info, svc }),
                        Err(err) => Next::Reject {
                            err,
                            // Safe to go on only if no body is left unread.
                            keep_alive: info.keep_alive && info.framing == Framing::None,
                            with_service: err == GatewayError::ServiceNotFound
                                && !c.service.is_empty(),
                        },
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    return Next::Reject {
                        err: e.into(),
                        keep_alive: false,
                        with_service: false,
                    }
                }
            }
        }
        let wait = match deadline {
            None => cfg.timeouts.client_idle,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        match io::read_more(&mut c.stream, &mut c.buf, &mut c.start, BUF_SIZE / 2, wait).await {
            Read::Data(_) => {}
            Read::Timeout if deadline.is_some() => {
                return Next::Reject {
                    err: GatewayError::RequestTimeout,
                    keep_alive: false,
                    with_service: false,
                }
            }
            Read::Timeout | Read::Eof | Read::Err(_) => return Next::Close,
        }
    }
}
