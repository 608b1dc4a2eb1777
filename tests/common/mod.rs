//! Test harness: real gateway and mock-backend processes on ephemeral ports, a raw-socket
//! HTTP/1.1 client, and a recording backend that shows exactly what reached it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process stopped (by its own PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// Config file of a gateway, removed on drop.
    pub config: Option<std::path::PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.config {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts `cmd` and waits for its `listening on ADDR` line.
fn start(cmd: Command) -> (Child, SocketAddr) {
    let (child, addr, _) = start_with(cmd, false, Stdio::inherit());
    (child, addr)
}

/// Starts `cmd`, reads `listening on ADDR` and, if asked, `admin on ADDR`.
fn start_with(
    mut cmd: Command,
    admin: bool,
    stderr: Stdio,
) -> (Child, SocketAddr, Option<SocketAddr>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut read = |prefix: &str| -> SocketAddr {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read startup line");
        line.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
            .parse()
            .expect("address")
    };
    let addr = read("listening on ");
    let admin = admin.then(|| read("admin on "));
    // Keep draining stdout so that later output never hits a closed pipe.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    (child, addr, admin)
}

pub fn mock_backend() -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mock-backend"));
    cmd.arg("0");
    let (child, addr) = start(cmd);
    Proc {
        child,
        addr,
        config: None,
    }
}

static CONFIG_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A gateway with its admin API (the config must say `admin: 127.0.0.1:0`).
pub struct AdminGateway {
    pub proc: Proc,
    pub admin: SocketAddr,
}

/// Writes `yaml` to a fresh temp file.
pub fn write_config(yaml: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "gateway-test-{}-{}.yaml",
        std::process::id(),
        CONFIG_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// Starts a gateway with an admin listener on the config at `path`.
pub fn gateway_at(path: &std::path::Path) -> AdminGateway {
    start_admin_gateway(gateway_command(path), path)
}

/// [`gateway_at`] with extra environment variables (e.g. `GATEWAY_DRIVER=epoll`).
pub fn gateway_at_with_env(path: &std::path::Path, env: &[(&str, &str)]) -> AdminGateway {
    let mut cmd = gateway_command(path);
    cmd.envs(env.iter().copied());
    start_admin_gateway(cmd, path)
}

fn gateway_command(path: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.arg("--config").arg(path).env("RUST_LOG", "warn");
    cmd
}

/// [`gateway_at`] with its log (stderr, at `RUST_LOG=info`) going to the file `log`.
pub fn gateway_at_logging_to(path: &std::path::Path, log: &std::path::Path) -> AdminGateway {
    let mut cmd = gateway_command(path);
    cmd.env("RUST_LOG", "info");
    let file = std::fs::File::create(log).expect("log file");
    start_admin_gateway_to(cmd, path, Stdio::from(file))
}

/// [`gateway_at_logging_to`] with `--pid-file pid` and extra environment variables.
pub fn gateway_at_with_pid_file(
    path: &std::path::Path,
    pid: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> AdminGateway {
    let program = std::path::Path::new(env!("CARGO_BIN_EXE_gateway"));
    program_at_with_pid_file(program, path, pid, log, env)
}

/// [`gateway_at_with_pid_file`], the gateway started as `program` (a link to it, say).
pub fn program_at_with_pid_file(
    program: &std::path::Path,
    path: &std::path::Path,
    pid: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, &str)],
) -> AdminGateway {
    let mut cmd = Command::new(program);
    cmd.arg("--config").arg(path).arg("--pid-file").arg(pid);
    cmd.env("RUST_LOG", "info");
    cmd.envs(env.iter().copied());
    let file = std::fs::File::create(log).expect("log file");
    start_admin_gateway_to(cmd, path, Stdio::from(file))
}

fn start_admin_gateway(cmd: Command, path: &std::path::Path) -> AdminGateway {
    start_admin_gateway_to(cmd, path, Stdio::inherit())
}

fn start_admin_gateway_to(cmd: Command, path: &std::path::Path, stderr: Stdio) -> AdminGateway {
    let (child, addr, admin) = start_with(cmd, true, stderr);
    AdminGateway {
        proc: Proc {
            child,
            addr,
            config: Some(path.to_path_buf()),
        },
        admin: admin.expect("admin address"),
    }
}

/// [`gateway_at`], started with its soft and hard limits on open descriptors set to these.
pub fn gateway_at_with_fd_limit(path: &std::path::Path, soft: u64, hard: u64) -> AdminGateway {
    start_admin_gateway(fd_limited(gateway_command(path), soft, hard), path)
}

/// [`gateway_at_with_fd_limit`] with its log going to the file `log`, as
/// [`gateway_at_logging_to`].
pub fn gateway_at_with_fd_limit_logging_to(
    path: &std::path::Path,
    soft: u64,
    hard: u64,
    log: &std::path::Path,
) -> AdminGateway {
    let mut cmd = fd_limited(gateway_command(path), soft, hard);
    cmd.env("RUST_LOG", "info");
    let file = std::fs::File::create(log).expect("log file");
    start_admin_gateway_to(cmd, path, Stdio::from(file))
}

fn fd_limited(mut cmd: Command, soft: u64, hard: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The exit status of `child` once it exits, counting `within` from `since`; panics with
/// `what` if it is still running then.
/// Waits (up to 10 s from `since`) for a gateway told to stop, and checks it exited 0.
pub fn exits_cleanly(child: &mut Child, since: Instant) {
    let status = exit_status(
        child,
        since,
        Duration::from_secs(10),
        "gateway did not exit",
    );
    assert_eq!(status.code(), Some(0));
}

pub fn exit_status(
    child: &mut Child,
    since: Instant,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(since.elapsed() < within, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    let r = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(r, 0, "kill failed");
}

/// Starts a gateway on `yaml` (which should say `listen: 127.0.0.1:0`).
pub fn gateway(yaml: &str) -> Proc {
    gateway_with_env(yaml, &[])
}

/// [`gateway`] with extra environment variables (e.g. `GATEWAY_DRIVER=epoll`).
pub fn gateway_with_env(yaml: &str, env: &[(&str, &str)]) -> Proc {
    let path = write_config(yaml);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.arg("--config").arg(&path).env("RUST_LOG", "warn");
    cmd.envs(env.iter().copied());
    let (child, addr) = start(cmd);
    Proc {
        child,
        addr,
        config: Some(path),
    }
}

/// A gateway config with sensible test defaults and the given services block.
pub fn config(workers: usize, extra: &str, services: &str) -> String {
    format!("listen: 127.0.0.1:0\nworkers: {workers}\npin_workers: false\n{extra}\nservices:\n{services}")
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The echo's received headers as (lowercase name, value) pairs.
    pub fn echoed_headers(&self) -> Vec<(String, String)> {
        self.json()["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap_or_default().to_ascii_lowercase(),
                    h[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.echoed_headers()
            .into_iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v)
            .collect()
    }
}

/// A raw keep-alive client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"))
    }

    fn over(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2, to be another client IP).
    pub fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Client {
        Client::try_connect_from(local, addr).expect("connect")
    }

    /// [`Client::connect_from`], with the connect's error: a server that resets a
    /// connection as it accepts it may do so before a loaded client's `connect` returns.
    pub fn try_connect_from(local: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<Client> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        sock.bind(&SocketAddr::new(local, 0).into()).expect("bind");
        sock.connect(&addr.into())?;
        Ok(Client::over(sock.into()))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads one response; `head` says whether it answers a HEAD request.
    pub fn read_response_to(&mut self, head: bool) -> Response {
        self.try_read_response(head)
            .expect("connection closed before a complete response")
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Like `read_response`, but `Err` with the bytes seen if the connection ends first.
    pub fn try_read_response(&mut self, head: bool) -> Result<Response, Vec<u8>> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let status = r.code.unwrap_or(0);
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                let get = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let body = if head || status < 200 || status == 204 || status == 304 {
                    Vec::new()
                } else if get("transfer-encoding").is_some() {
                    self.read_chunked()?
                } else if let Some(cl) = get("content-length") {
                    let cl: usize = cl.trim().parse().expect("content-length");
                    while self.buf.len() < cl {
                        if self.fill() == 0 {
                            return Err(std::mem::take(&mut self.buf));
                        }
                    }
                    self.buf.drain(..cl).collect()
                } else {
                    while self.fill() > 0 {}
                    std::mem::take(&mut self.buf)
                };
                return Ok(Response {
                    status,
                    headers,
                    body,
                });
            }
            if self.fill() == 0 {
                return Err(std::mem::take(&mut self.buf));
            }
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if self.fill() == 0 {
                    return Err(body);
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if self.fill() == 0 {
                    return Err(body);
                }
            }
            if size == 0 {
                // No trailers expected from the gateway.
                assert_eq!(&self.buf[..2], b"\r\n", "gateway sent trailers");
                self.buf.drain(..2);
                return Ok(body);
            }
            body.extend_from_slice(&self.buf[..size]);
            assert_eq!(&self.buf[size..size + 2], b"\r\n");
            self.buf.drain(..size + 2);
        }
    }

    /// True when the peer closed (EOF or reset) within `wait`, with nothing more sent.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut tmp = [0u8; 1024];
        let r = match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => panic!(
                "unexpected bytes after response: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        r
    }

    /// Reads until the peer ends the connection: `Ok(bytes)` on a clean FIN, `Err(bytes)`
    /// on a reset.
    pub fn read_until_end(&mut self) -> Result<Vec<u8>, Vec<u8>> {
        let mut tmp = [0u8; 65536];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(std::mem::take(&mut self.buf))
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.read_response_to(raw.starts_with("HEAD "))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n"))
}

/// The Prometheus text of the admin API at `admin`.
pub fn metrics(admin: SocketAddr) -> String {
    String::from_utf8_lossy(&get(admin, "/metrics").body).into_owned()
}

/// The value of the sample `series` (`name{labels}`) in `text`, if exported.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `raw` on `n` new connections at once, one thread each; join the handles for the
/// responses.
pub fn spawn_requests(
    addr: SocketAddr,
    n: usize,
    raw: &'static [u8],
) -> Vec<std::thread::JoinHandle<Response>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(raw);
                c.read_response()
            })
        })
        .collect()
}

/// How the recording backend answers.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Answer each request head with these bytes.
    Reply(Vec<u8>),
    /// Answer the first request of each connection with these bytes; close on the
    /// second without answering (a backend that dropped a keep-alive connection just as
    /// the next request was sent on it).
    OnePerConnection(Vec<u8>),
    /// Read but never answer.
    Hang,
    /// Answer each request head with these bytes after this long (a slow endpoint).
    Delayed(Duration, Vec<u8>),
}

/// A backend that records every byte it receives and answers as told.
pub struct Recorder {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<u8>>>,
    pub requests: Arc<AtomicUsize>,
    pub mode: Arc<Mutex<Mode>>,
    /// Connections the gateway closed (EOF seen by the backend).
    pub closed: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn start(mode: Mode) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let r = Recorder {
            addr,
            connections: Arc::default(),
            received: Arc::default(),
            requests: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            closed: Arc::default(),
        };
        let (conns, received, requests, mode, closed) = (
            r.connections.clone(),
            r.received.clone(),
            r.requests.clone(),
            r.mode.clone(),
            r.closed.clone(),
        );
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                conns.fetch_add(1, Ordering::SeqCst);
                let (received, requests, mode, closed) = (
                    received.clone(),
                    requests.clone(),
                    mode.clone(),
                    closed.clone(),
                );
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut served = 0usize;
                    let mut tmp = [0u8; 65536];
                    while let Ok(n) = s.read(&mut tmp) {
                        if n == 0 {
                            closed.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        received.lock().unwrap().extend_from_slice(&tmp[..n]);
                        pending.extend_from_slice(&tmp[..n]);
                        // Bodyless requests only: one head = one request.
                        while let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..p + 4);
                            requests.fetch_add(1, Ordering::SeqCst);
                            let m = mode.lock().unwrap().clone();
                            match m {
                                Mode::Reply(bytes) => {
                                    if s.write_all(&bytes).is_err() {
                                        return;
                                    }
                                }
                                Mode::OnePerConnection(bytes) => {
                                    served += 1;
                                    if served > 1 || s.write_all(&bytes).is_err() {
                                        return;
                                    }
                                }
                                Mode::Hang => {}
                                Mode::Delayed(wait, bytes) => {
                                    std::thread::sleep(wait);
                                    if s.write_all(&bytes).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        r
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

pub fn reply(status: u16) -> Mode {
    Mode::Reply(reply_bytes(status))
}

/// The response [`reply`] sends.
pub fn reply_bytes(status: u16) -> Vec<u8> {
    let body = format!("{{\"status\":{status}}}");
    format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A port whose listener completes no more handshakes: its accept queue (backlog 0) is
/// full, so the kernel drops new SYNs and a connect to it times out. Lives as long as the
/// value.
pub struct Unanswered {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

pub fn unanswered_port() -> Unanswered {
    use std::os::fd::AsRawFd;
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen(2) again on our own socket, only to shrink its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0, "listen");
    let addr = l.local_addr().expect("addr");
    let queued = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
        "the accept queue is not full"
    );
    Unanswered {
        addr,
        _listener: l,
        _queued: queued,
    }
}

/// Polls `f` until it is true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// True for an RFC 9110 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn is_imf_fixdate(v: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = v.as_bytes();
    let num = |r: std::ops::Range<usize>, max: u32| {
        b[r.clone()].iter().all(u8::is_ascii_digit) && v[r].parse::<u32>().is_ok_and(|n| n <= max)
    };
    v.is_ascii()
        && b.len() == 29
        && DAYS.contains(&&v[0..3])
        && &v[3..5] == ", "
        && num(5..7, 31)
        && b[7] == b' '
        && MONTHS.contains(&&v[8..11])
        && b[11] == b' '
        && num(12..16, 9999)
        && b[16] == b' '
        && num(17..19, 23)
        && b[19] == b':'
        && num(20..22, 59)
        && b[22] == b':'
        && num(23..25, 60)
        && &v[25..] == " GMT"
}

/// Every `Date` value of a response (there must be exactly one, an IMF-fixdate).
pub fn date_problem(r: &Response) -> Option<String> {
    let dates: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
        .map(|(_, v)| v.as_str())
        .collect();
    match dates[..] {
        [d] if is_imf_fixdate(d) => None,
        _ => Some(format!("Date fields {dates:?}, want one IMF-fixdate")),
    }
}

/// Resident memory of process `pid`, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Closes `c` with a reset (`SO_LINGER` 0), as a client that gives up does.
pub fn reset(c: Client) {
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
}

/// Waits up to 10 s for the access log at `log` to have a line containing `needle`, then
/// removes the file; returns the whole text and that line's fields.
pub fn logged_line(log: &std::path::Path, needle: &str) -> (String, Vec<String>) {
    let mut text = String::new();
    let logged = eventually(Duration::from_secs(10), || {
        text = std::fs::read_to_string(log).unwrap_or_default();
        text.contains(needle)
    });
    let _ = std::fs::remove_file(log);
    assert!(logged, "no line: {text}");
    let line = text.lines().find(|l| l.contains(needle)).unwrap_or("");
    let fields = line.split(' ').map(str::to_string).collect();
    (text, fields)
}

/// Waits up to 10 s for the access log at `log` to have `n` lines, then removes the file;
/// returns its text.
pub fn logged_lines(log: &std::path::Path, n: usize) -> String {
    let mut text = String::new();
    let logged = eventually(Duration::from_secs(10), || {
        text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines().count() == n
    });
    let _ = std::fs::remove_file(log);
    assert!(logged, "not {n} lines: {text}");
    text
}

/// The circuit state `/admin/backends` shows for the backend at `addr`.
pub fn circuit(admin: SocketAddr, addr: SocketAddr) -> String {
    let url = format!("http://{addr}");
    let v = get(admin, "/admin/backends").json();
    v["services"]
        .as_array()
        .expect("services")
        .iter()
        .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["url"] == url.as_str())
        .and_then(|b| b["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{url} not in /admin/backends"))
}
