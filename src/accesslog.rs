//! Access log: one line per request, formatted into a per-worker buffer and handed in
//! batches to a writer thread, so a request never waits on log I/O.
//!
//! Line format (space-separated, `-` for an absent field), by default
//! `time client method target service backend status bytes upstream_s total_s error`, and
//! with `request_id: true` the request ID last; `access_log_fields` chooses others
//! ([`Field`]).
//! e.g. `2026-11-28T06:01:02.345Z 127.0.0.1 GET /v1/proxy/users/1 users http://127.0.0.1:8001 200 412 0.000310 0.000402 -`.
//! If the writer falls behind by more than [`MAX_PENDING`] batches, batches are dropped and
//! counted rather than blocking a worker.
//!
//! Rotation: [`Writer::reopen`] (on SIGHUP and SIGUSR1) makes the writer thread open the
//! path again, creating it if it was moved away; a file truncated in place (`copytruncate`)
//! needs nothing, as it is opened for appending. A failed write or reopen is counted
//! ([`Counters::errors`]) and warned about once per run of failures. A reload that names
//! another file, stdout or `off` hands the writer the new one, opened first
//! ([`Writer::switch`]); the writer thread runs while the log is off too, so that a reload
//! may turn it on.
//!
//! Every line goes where it was meant to when it was formatted, as NGINX's workers write
//! to the file of their own config and flush their buffers before a reopen: a batch is
//! tagged with the sink epoch of the config it was formatted by (a request that began
//! before a reload is logged by its own config, in its format) and with the count of
//! reopens asked for by then, and the writer keeps the last few outputs open to route
//! it ([`KEPT_OUTPUTS`]; a file a reopen replaced for [`REPLACED_FOR`]). Until 2026-12-05
//! a worker's held lines and the lines of requests in flight went to whatever the writer
//! had by then: text lines in a new JSON file after a reload (an operator review), lines
//! from before a SIGUSR1 in the file opened after it.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    Off,
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Off => f.write_str("off"),
            Sink::Stdout => f.write_str("stdout"),
            Sink::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A worker flushes its buffer once it holds this much (and once a second).
const FLUSH_BYTES: usize = 32 * 1024;
/// Batches queued to the writer before new ones are dropped.
pub const MAX_PENDING: usize = 256;
/// Outputs the writer keeps open at most, the current one and those before it (other
/// sinks a reload replaced while requests of their configs are in flight, files a reopen
/// replaced), for lines formatted before the change that reach it after; a batch for one
/// older than these is dropped and counted.
const KEPT_OUTPUTS: usize = 64;

/// Which sink a config's lines go to: 0 at start, one more at each reload that names
/// another sink (`Config::access_log_epoch`, set by `reload.rs`, never read from the file).
/// Every config of one epoch shares its token, so the writer knows when none is left
/// (no request of one in flight, no worker holding one) and closes that epoch's file.
#[derive(Debug, Clone, Default)]
pub struct Epoch {
    n: u64,
    alive: Arc<()>,
}

impl Epoch {
    /// The epoch a reload that names another sink begins.
    pub fn next(&self) -> Epoch {
        Epoch {
            n: self.n + 1,
            alive: Arc::new(()),
        }
    }

    pub fn number(&self) -> u64 {
        self.n
    }
}

/// Epochs are told apart by their number alone.
impl PartialEq for Epoch {
    fn eq(&self, other: &Epoch) -> bool {
        self.n == other.n
    }
}

/// What the access log counts, exported in /metrics; shared with the admin threads.
#[derive(Debug, Default)]
pub struct Counters {
    /// Batches given up because the writer fell behind (or their sink had long been
    /// replaced).
    pub dropped: AtomicU64,
    /// Batches that failed to be written, and reopens that failed.
    pub errors: AtomicU64,
}

/// Where the writer thread writes, and the path to reopen (none for stdout).
type Output = (Box<dyn Write + Send>, Option<PathBuf>);

/// Which output a batch's lines are for: the sink epoch of the config that formatted
/// them ([`Epoch`]), and the reopens asked for when the first was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Tag {
    epoch: u64,
    turn: u64,
}

/// What the writer thread is handed.
enum Msg {
    /// Lines to write (empty: only a wake-up, to reopen).
    Batch(Tag, Vec<u8>),
    /// Answered once everything queued before it is written.
    Sync(mpsc::Sender<()>),
    /// Lines of this sink epoch go to this from now on (a reload named another file);
    /// `None`: the log is off.
    Switch(u64, std::sync::Weak<()>, Option<Output>),
}

/// One output the writer thread keeps, and the lines it takes: those of its epoch
/// formatted at or after its turn (and before the next output's of that epoch).
struct Open {
    tag: Tag,
    out: Option<Output>,
    /// Whether a config of its epoch is still alive ([`Epoch`]).
    alive: std::sync::Weak<()>,
    /// When it is closed: [`REPLACED_FOR`] after a reopen replaced it, or after the last
    /// config of its epoch went. A file kept open would keep its disk space after
    /// logrotate (or an operator) removes it (a review: a file a reload replaced was held
    /// for good).
    until: Option<std::time::Instant>,
}

/// How long an output no longer current stays open for lines formatted for it that are
/// still on their way: those a worker holds come within about a second.
const REPLACED_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// The writer thread's outputs: newest last, the current one being the last.
struct Outputs {
    kept: std::collections::VecDeque<Open>,
    /// Reopens done (the count asked for when the last was).
    turn: u64,
}

impl Outputs {
    /// Adds `open` as the current output; past [`KEPT_OUTPUTS`], closes first those no
    /// line is still owed to (replaced by a reopen, or of an epoch no config is left
    /// of), oldest first, and only then the oldest (a review: each SIGHUP's reopen added
    /// one, and a request in flight across nine quick reloads lost its line).
    fn keep(&mut self, open: Open) {
        self.kept.push_back(open);
        while self.kept.len() > KEPT_OUTPUTS {
            let current = self.kept.len() - 1;
            let done = self
                .kept
                .iter()
                .take(current)
                .position(|o| o.until.is_some() || o.alive.strong_count() == 0);
            self.kept.remove(done.unwrap_or(0));
        }
    }

    /// Lines of `epoch` (alive while `alive` is) go to `to` from now on.
    fn switch(&mut self, epoch: u64, alive: std::sync::Weak<()>, to: Option<Output>) {
        let now = match &to {
            None => "off".to_string(),
            Some((_, None)) => "now writing to stdout".to_string(),
            Some((_, Some(p))) => format!("now writing to {}", p.display()),
        };
        // Every line of a new epoch is formatted after this, whatever reopens came before.
        let tag = Tag { epoch, turn: 0 };
        self.keep(Open {
            tag,
            out: to,
            alive,
            until: None,
        });
        log::info!("access log: {now}");
    }

    /// Opens the current file again if reopens were asked for since the last; false if
    /// that failed (the file open before stays).
    fn reopen(&mut self, asked: u64) -> bool {
        if asked == self.turn {
            return true;
        }
        self.turn = asked;
        let Some(current) = self.kept.back_mut() else {
            return true;
        };
        let (epoch, alive) = (current.tag.epoch, current.alive.clone());
        let Some(p) = current.out.as_ref().and_then(|(_, p)| p.clone()) else {
            return true;
        };
        match open(&p) {
            Ok(f) => {
                current.until = Some(std::time::Instant::now() + REPLACED_FOR);
                let turn = self.turn;
                self.keep(Open {
                    tag: Tag { epoch, turn },
                    out: Some((Box::new(f), Some(p.clone()))),
                    alive,
                    until: None,
                });
                // Said as what it is: a reopen for rotation, which every SIGHUP makes whatever its
                // reload does (an operator review read it, after a failed reload, as part of
                // that reload having happened).
                log::info!(
                    "access log: reopened {} (every SIGHUP and SIGUSR1 reopen it, for log rotation)",
                    p.display()
                );
                true
            }
            Err(e) => {
                log::error!(
                    "access log: cannot reopen {}: {e}; still writing to the file open before",
                    p.display()
                );
                false
            }
        }
    }

    /// Closes the outputs whose time is up, and gives those of an epoch no config is left
    /// of theirs (never the current one).
    fn sweep(&mut self) {
        let now = std::time::Instant::now();
        let last = self.kept.len().saturating_sub(1);
        for (i, o) in self.kept.iter_mut().enumerate() {
            if i < last && o.until.is_none() && o.alive.strong_count() == 0 {
                o.until = Some(now + REPLACED_FOR);
            }
        }
        self.kept.retain(|o| o.until.is_none_or(|t| t > now));
    }

    /// Where a batch goes: the newest output of its epoch opened no later than its turn,
    /// or, once that is closed, the newest of its epoch; none once its epoch's are gone.
    fn route(&mut self, tag: Tag) -> Option<&mut Open> {
        let at = self
            .kept
            .iter()
            .rposition(|o| o.tag.epoch == tag.epoch && o.tag.turn <= tag.turn)
            .or_else(|| self.kept.iter().rposition(|o| o.tag.epoch == tag.epoch))?;
        self.kept.get_mut(at)
    }
}

/// The writer side, shared by all workers (and the signal thread, to reopen).
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    /// Reopens asked for ([`Writer::reopen`]); the writer thread reopens before its next
    /// write, and lines formatted before the count moved go to the file open before.
    turns: Arc<AtomicU64>,
}

impl Writer {
    /// Asks the writer thread to open the file again (after a rotation moved it away);
    /// returns at once. A no-op for stdout.
    pub fn reopen(&self) {
        self.turns.fetch_add(1, Ordering::Release);
        // An empty batch wakes the thread now; if the queue is full, it sees the count
        // before writing the next batch anyway.
        let _ = self.tx.try_send(Msg::Batch(Tag::default(), Vec::new()));
    }

    /// Waits (at most `within`) until every line handed over so far is written: at exit,
    /// so that the last lines (those of requests the drain deadline cut, say) are not lost
    /// with the writer thread.
    pub fn sync(&self, within: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + within;
        let (ack, done) = mpsc::channel();
        if !self.hand(Msg::Sync(ack), end) {
            return false;
        }
        let left = end.saturating_duration_since(std::time::Instant::now());
        done.recv_timeout(left).is_ok()
    }

    /// A reload named another sink (a file, stdout or `off`) for the configs of `epoch`:
    /// the new one is opened here, so that one that cannot be opened fails the reload,
    /// and the writer takes it after the lines already queued. Lines formatted by an
    /// earlier config (held by a worker, or of a request in flight, a request that began
    /// before a reload to `off` included) still go to that config's sink.
    pub fn switch(&self, sink: &Sink, epoch: &Epoch) -> std::io::Result<()> {
        let output = open_sink(sink)?;
        let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let msg = Msg::Switch(epoch.n, Arc::downgrade(&epoch.alive), output);
        if self.hand(msg, end) {
            Ok(())
        } else {
            // The old sink stays, and so does the config that names it (a review's failed
            // switch to `off` left the log silently off with stdout still configured).
            Err(std::io::Error::other(
                "the access log writer did not take it within 1 s (stuck on its current file?)",
            ))
        }
    }

    /// Queues `msg`, waiting for room until `end` at most (never longer, even with a
    /// writer stuck on a dead disk); false if it could not.
    fn hand(&self, mut msg: Msg, end: std::time::Instant) -> bool {
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => return true,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < end => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
    }
}

/// Opens `path` for appending, never waiting: a FIFO nobody reads is an error (`ENXIO`)
/// rather than an open that blocks the reload holding the control lock for good (a
/// review). Writes block as usual afterwards, on the writer thread.
fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| missing_dir_named(path, e))?;
    let fd = f.as_raw_fd();
    // SAFETY: `f` owns `fd`, valid for the duration of the call.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above; only O_NONBLOCK is cleared.
    let set = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// `e`, or, when it is that `path`'s directory does not exist, an error that says so: "No
/// such file or directory" did not say which was missing (an operator review).
pub fn missing_dir_named(path: &Path, e: std::io::Error) -> std::io::Error {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    match dir {
        Some(d) if e.kind() == std::io::ErrorKind::NotFound && !d.is_dir() => std::io::Error::new(
            e.kind(),
            format!("its directory {} does not exist", d.display()),
        ),
        _ => e,
    }
}

/// Opens what `sink` names; `None` when it is off.
fn open_sink(sink: &Sink) -> std::io::Result<Option<Output>> {
    Ok(match sink {
        Sink::Off => None,
        Sink::Stdout => Some((Box::new(std::io::stdout()), None)),
        Sink::File(p) => Some((Box::new(open(p)?), Some(p.clone()))),
    })
}

/// Starts the writer thread for `sink`, the sink of the configs of `epoch`; idle while it
/// is `off`.
pub fn start(sink: &Sink, epoch: &Epoch, counters: Arc<Counters>) -> std::io::Result<Writer> {
    let first = open_sink(sink)?;
    let alive = Arc::downgrade(&epoch.alive);
    let tag = Tag {
        epoch: epoch.n,
        turn: 0,
    };
    let (tx, rx): (SyncSender<Msg>, Receiver<Msg>) = mpsc::sync_channel(MAX_PENDING);
    let turns = Arc::new(AtomicU64::new(0));
    let writer = Writer {
        tx,
        counters: counters.clone(),
        turns: turns.clone(),
    };
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            let mut outputs = Outputs {
                kept: std::collections::VecDeque::from([Open {
                    tag,
                    out: first,
                    alive,
                    until: None,
                }]),
                turn: 0,
            };
            let mut failing = false;
            loop {
                let msg = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(msg) => msg,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        outputs.sweep();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let (tag, batch) = match msg {
                    Msg::Batch(tag, b) => (tag, b),
                    Msg::Sync(ack) => {
                        let _ = ack.send(());
                        continue;
                    }
                    Msg::Switch(epoch, alive, to) => {
                        outputs.switch(epoch, alive, to);
                        failing = false;
                        continue;
                    }
                };
                // Reopens asked for up to now: at least the batch's, which was read
                // before the batch was handed over.
                if !outputs.reopen(turns.load(Ordering::Acquire)) {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                outputs.sweep();
                if batch.is_empty() {
                    continue;
                }
                let Some(to) = outputs.route(tag) else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                // Lines of a config whose log was off go nowhere.
                let Some((out, _)) = to.out.as_mut() else {
                    continue;
                };
                match out.write_all(&batch).and_then(|_| out.flush()) {
                    Err(e) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        if !failing {
                            log::warn!("access log: write failed: {e}; lines are lost until a write succeeds (counted in gateway_access_log_errors_total)");
                        }
                        failing = true;
                    }
                    Ok(()) if failing => {
                        log::info!("access log: writing again");
                        failing = false;
                    }
                    Ok(()) => {}
                }
            }
        })?;
    Ok(writer)
}

/// One request, as logged.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub target: &'a [u8],
    pub service: Option<&'a str>,
    pub backend: Option<&'a str>,
    /// Backends tried before `backend`, in order: the field lists them all, comma-separated
    /// (NGINX's `$upstream_addr`).
    pub earlier: [Option<&'a str>; 2],
    pub status: u16,
    pub bytes: u64,
    pub upstream_us: Option<u64>,
    pub total_us: u64,
    /// Written as its code, with the rule it names for a 400 or a bad response
    /// (`bad_request:unsafe_path`).
    pub error: Option<crate::error::GatewayError>,
    /// Cut by the drain deadline: the error field reads `drain_deadline`; status and bytes
    /// are those of the answer cut short; with status 0 (no final head had gone) the status
    /// is unknown (`-`), and so are the bytes when none went (interim responses may have).
    pub drained: bool,
    /// The body was cut short after the head went out: the error field reads
    /// `response_cut_short` (unless a gateway error says more).
    pub truncated: bool,
    /// With `request_id: true`: the request's ID (empty for a head that was refused before
    /// it had one).
    pub request_id: Option<&'a [u8]>,
    /// The connection's peer (address and port), whoever `client` names.
    pub peer: Option<std::net::SocketAddr>,
    /// The request's protocol and, when the fields ask for them, its `Host`, `User-Agent`
    /// and `Referer`.
    pub kept: Option<&'a Kept>,
}

/// A field of a line (`access_log_fields`), in the order the list gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Time,
    Client,
    Peer,
    Method,
    Target,
    Protocol,
    Host,
    UserAgent,
    Referer,
    Service,
    Backend,
    Status,
    Bytes,
    UpstreamSeconds,
    TotalSeconds,
    Error,
    RequestId,
}

impl Field {
    pub const ALL: [Field; 17] = [
        Field::Time,
        Field::Client,
        Field::Peer,
        Field::Method,
        Field::Target,
        Field::Protocol,
        Field::Host,
        Field::UserAgent,
        Field::Referer,
        Field::Service,
        Field::Backend,
        Field::Status,
        Field::Bytes,
        Field::UpstreamSeconds,
        Field::TotalSeconds,
        Field::Error,
        Field::RequestId,
    ];

    /// The line's fields when `access_log_fields` is not set (and `request_id` last with
    /// `request_id: true`).
    pub const DEFAULT: [Field; 11] = [
        Field::Time,
        Field::Client,
        Field::Method,
        Field::Target,
        Field::Service,
        Field::Backend,
        Field::Status,
        Field::Bytes,
        Field::UpstreamSeconds,
        Field::TotalSeconds,
        Field::Error,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Time => "time",
            Field::Client => "client",
            Field::Peer => "peer",
            Field::Method => "method",
            Field::Target => "target",
            Field::Protocol => "protocol",
            Field::Host => "host",
            Field::UserAgent => "user_agent",
            Field::Referer => "referer",
            Field::Service => "service",
            Field::Backend => "backend",
            Field::Status => "status",
            Field::Bytes => "bytes",
            Field::UpstreamSeconds => "upstream_seconds",
            Field::TotalSeconds => "total_seconds",
            Field::Error => "error",
            Field::RequestId => "request_id",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the field is a request header [`Kept`] for the line.
    pub fn is_kept(self) -> bool {
        matches!(self, Field::Host | Field::UserAgent | Field::Referer)
    }
}

/// The longest value of a [`Kept`] field logged: what is longer is cut there (at a
/// character boundary) and ends in `...`.
pub const MAX_KEPT: usize = 1024;

/// What a line may show of a request's head beyond its request line, kept while the
/// request runs: its HTTP/1.x minor version, and the headers the fields name (`Host`,
/// `User-Agent`, `Referer`; the first of each) in one buffer of the connection's, reused
/// request after request.
#[derive(Debug, Default)]
pub struct Kept {
    /// Once the head parsed.
    pub minor: Option<u8>,
    buf: Vec<u8>,
    spans: [Option<(u32, u32)>; 3],
}

impl Kept {
    const NAMES: [&'static str; 3] = ["host", "user-agent", "referer"];

    /// Keeps the values of `headers` that [`Kept::get`] gives.
    pub fn keep(&mut self, headers: &[httparse::Header<'_>]) {
        self.buf.clear();
        self.spans = [None; 3];
        for h in headers {
            let Some(i) = Kept::NAMES
                .iter()
                .position(|n| crate::h1::name_is(h.name, n))
            else {
                continue;
            };
            if self.spans[i].is_some() {
                continue;
            }
            let v = crate::h1::trim_ows(h.value);
            let start = self.buf.len();
            if v.len() > MAX_KEPT {
                // Not inside a UTF-8 character (at most 3 bytes back; bytes that are not
                // UTF-8 are cut where they stand: a review's 2 000 continuation bytes were
                // logged as `...` alone): a line stays valid UTF-8 where the value was.
                let mut end = MAX_KEPT;
                while end > MAX_KEPT - 3 && v[end] & 0xc0 == 0x80 {
                    end -= 1;
                }
                if v[end] & 0xc0 == 0x80 {
                    end = MAX_KEPT;
                }
                self.buf.extend_from_slice(&v[..end]);
                self.buf.extend_from_slice(b"...");
            } else {
                self.buf.extend_from_slice(v);
            }
            self.spans[i] = Some((start as u32, self.buf.len() as u32));
        }
    }

    pub fn clear(&mut self) {
        self.minor = None;
        self.buf.clear();
        self.spans = [None; 3];
    }

    fn get(&self, field: Field) -> Option<&[u8]> {
        let i = match field {
            Field::Host => 0,
            Field::UserAgent => 1,
            Field::Referer => 2,
            _ => return None,
        };
        let (a, b) = self.spans[i]?;
        self.buf.get(a as usize..b as usize)
    }
}

/// A worker's buffer.
pub struct AccessLog {
    writer: Option<Writer>,
    buf: RefCell<Vec<u8>>,
    /// Which output the buffer's lines are for.
    tag: Cell<Tag>,
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second seen.
    second: Cell<(u64, [u8; 19])>,
}

impl AccessLog {
    pub fn new(writer: Option<Writer>) -> AccessLog {
        AccessLog {
            writer,
            buf: RefCell::new(Vec::new()),
            tag: Cell::new(Tag::default()),
            second: Cell::new((u64::MAX, [0; 19])),
        }
    }

    /// Whether a request under a config whose log is `sink` is logged: by that config,
    /// not by whatever a reload made of the log since (a review: a request in flight
    /// across a reload to `off` lost its line).
    pub fn wanted(&self, sink: &Sink) -> bool {
        self.writer.is_some() && *sink != Sink::Off
    }

    /// Formats `e` as a line of `format` with `fields` into the worker's buffer, for the
    /// sink of the configs of `epoch` (the config that gave the format).
    pub fn record(&self, e: &Entry<'_>, format: Format, fields: &[Field], epoch: &Epoch) {
        let Some(w) = self.writer.as_ref() else {
            return;
        };
        let tag = Tag {
            epoch: epoch.n,
            turn: w.turns.load(Ordering::Relaxed),
        };
        if tag != self.tag.get() {
            // Lines for another output are handed over on their own first.
            self.flush();
            self.tag.set(tag);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, millis) = (now.as_secs(), now.subsec_millis());
        let (cached, mut text) = self.second.get();
        if cached != secs {
            let full = crate::logging::timestamp(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            text.copy_from_slice(&full.as_bytes()[..19]);
            self.second.set((secs, text));
        }
        let mut b = self.buf.borrow_mut();
        line(&mut b, format, fields, &text, millis, e);
        if b.len() >= FLUSH_BYTES {
            drop(b);
            self.flush();
        }
    }

    /// Hands the buffered lines to the writer thread without waiting.
    pub fn flush(&self) {
        let Some(w) = &self.writer else { return };
        let batch = std::mem::take(&mut *self.buf.borrow_mut());
        if batch.is_empty() {
            return;
        }
        match w.tx.try_send(Msg::Batch(self.tag.get(), batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                w.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How lines are written (`access_log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Space-separated fields, `-` for an absent one.
    #[default]
    Text,
    /// One JSON object per line, `null` for an absent field.
    Json,
}

/// The error field's text: a gateway error (with the rule it names), or what cut the
/// request; None when the request ended well.
fn error_text(e: &Entry<'_>, out: &mut Vec<u8>) -> bool {
    match e.error {
        _ if e.drained => out.extend_from_slice(b"drain_deadline"),
        None if e.truncated => out.extend_from_slice(b"response_cut_short"),
        Some(err) => {
            out.extend_from_slice(err.code().as_bytes());
            if let Some(d) = err.detail() {
                out.push(b':');
                out.extend_from_slice(d.as_bytes());
            }
        }
        None => return false,
    }
    true
}

fn push_seconds(b: &mut Vec<u8>, us: u64) {
    let _ = write!(b, "{}.{:06}", us / 1_000_000, us % 1_000_000);
}

/// One line of `fields`: space-separated with `-` for an absent field, or one JSON
/// object with `null` for it, keyed by the fields' names.
fn line(
    b: &mut Vec<u8>,
    format: Format,
    fields: &[Field],
    second: &[u8; 19],
    millis: u32,
    e: &Entry<'_>,
) {
    let json = format == Format::Json;
    if json {
        b.push(b'{');
    }
    for (i, &f) in fields.iter().enumerate() {
        if i > 0 {
            b.push(if json { b',' } else { b' ' });
        }
        if json {
            b.push(b'"');
            b.extend_from_slice(f.name().as_bytes());
            b.extend_from_slice(b"\":");
        }
        field(b, json, f, second, millis, e);
    }
    if json {
        b.push(b'}');
    }
    b.push(b'\n');
}

/// One field's value: in a text line as it is, `-` when absent (a header quoted and
/// escaped, as NGINX's combined format has it); in a JSON line as a JSON value.
fn field(b: &mut Vec<u8>, json: bool, f: Field, second: &[u8; 19], millis: u32, e: &Entry<'_>) {
    // A plain value, `-`/`null` when absent; strings quoted and escaped in JSON.
    fn text(b: &mut Vec<u8>, json: bool, v: Option<&[u8]>) {
        match (json, v) {
            (true, v) => json_str(b, v),
            (false, Some(v)) => b.extend_from_slice(v),
            (false, None) => b.push(b'-'),
        }
    }
    fn number(b: &mut Vec<u8>, json: bool, v: Option<u64>) {
        match v {
            Some(n) => {
                let _ = write!(b, "{n}");
            }
            None => b.extend_from_slice(if json { b"null" } else { b"-" }),
        }
    }
    // A value written with `Display` (an address), quoted in JSON.
    fn shown(b: &mut Vec<u8>, json: bool, v: Option<impl std::fmt::Display>) {
        match v {
            Some(v) if json => {
                let _ = write!(b, "\"{v}\"");
            }
            Some(v) => {
                let _ = write!(b, "{v}");
            }
            None => text(b, json, None),
        }
    }
    fn seconds(b: &mut Vec<u8>, json: bool, us: Option<u64>) {
        match us {
            Some(us) => push_seconds(b, us),
            None => b.extend_from_slice(if json { b"null" } else { b"-" }),
        }
    }
    // Cut by the drain deadline before a final head went: status (and bytes, when none
    // went) are unknown.
    let unknown_status = e.drained && e.status == 0;
    match f {
        Field::Time => {
            if json {
                b.push(b'"');
            }
            b.extend_from_slice(second);
            let _ = write!(b, ".{millis:03}Z");
            if json {
                b.push(b'"');
            }
        }
        Field::Client => shown(b, json, Some(e.client)),
        Field::Peer => shown(b, json, e.peer),
        Field::Method => text(b, json, Some(e.method.as_bytes()).filter(|m| *m != b"-")),
        Field::Target => text(b, json, Some(e.target).filter(|t| *t != b"-")),
        Field::Protocol => text(
            b,
            json,
            e.kept.and_then(|k| k.minor).map(|m| {
                if m == 0 {
                    &b"HTTP/1.0"[..]
                } else {
                    b"HTTP/1.1"
                }
            }),
        ),
        // The parser let only a valid `Host` through (no space, quote or control byte);
        // escaped all the same, so that no value can split a text line's fields.
        Field::Host => match (json, e.kept.and_then(|k| k.get(f))) {
            (false, Some(v)) => escape(b, v, false),
            (_, v) => text(b, json, v),
        },
        Field::UserAgent | Field::Referer => match (json, e.kept.and_then(|k| k.get(f))) {
            (true, v) => json_str(b, v),
            (false, v) => {
                b.push(b'"');
                match v {
                    Some(v) => escape(b, v, true),
                    None => b.push(b'-'),
                }
                b.push(b'"');
            }
        },
        Field::Service => text(b, json, e.service.map(str::as_bytes)),
        Field::Backend => match e.backend {
            Some(last) => {
                // Every backend tried, comma-separated, in one field.
                let put = |b: &mut Vec<u8>, u: &str| match json {
                    true => json_escape(b, u.as_bytes()),
                    false => b.extend_from_slice(u.as_bytes()),
                };
                if json {
                    b.push(b'"');
                }
                for u in e.earlier.iter().flatten() {
                    put(b, u);
                    b.push(b',');
                }
                put(b, last);
                if json {
                    b.push(b'"');
                }
            }
            None => text(b, json, None),
        },
        Field::Status => number(b, json, (!unknown_status).then_some(e.status.into())),
        Field::Bytes => number(
            b,
            json,
            (!(unknown_status && e.bytes == 0)).then_some(e.bytes),
        ),
        Field::UpstreamSeconds => seconds(b, json, e.upstream_us),
        Field::TotalSeconds => seconds(b, json, Some(e.total_us)),
        Field::Error => {
            let mark = b.len();
            if json {
                b.push(b'"');
            }
            if error_text(e, b) {
                if json {
                    b.push(b'"'); // codes and rules are plain ASCII words
                }
            } else {
                b.truncate(mark);
                text(b, json, None);
            }
        }
        Field::RequestId => text(b, json, e.request_id.filter(|id| !id.is_empty())),
    }
}

/// `v` for a text line: `"` and `\\` escaped with a backslash, control bytes, bytes
/// above 0x7E and, unless the field is `quoted`, a space as `\xHH` (NGINX's escaping of
/// its log variables), so that a value never ends its field or its line.
fn escape(b: &mut Vec<u8>, v: &[u8], quoted: bool) {
    for &c in v {
        match c {
            b'"' | b'\\' => {
                b.push(b'\\');
                b.push(c);
            }
            0x21..=0x7e => b.push(c),
            b' ' if quoted => b.push(c),
            _ => {
                let _ = write!(b, "\\x{c:02X}");
            }
        }
    }
}

/// A JSON string of `v` (`null` for None): `"`, `\\` and control bytes escaped; UTF-8
/// kept as it is when `v` is valid UTF-8 (a target may carry raw UTF-8: httparse takes
/// bytes above 0x7F), otherwise each byte above 0x7F escaped as `\u00XX`, so a line is
/// always valid JSON.
fn json_str(b: &mut Vec<u8>, v: Option<&[u8]>) {
    let Some(v) = v else {
        b.extend_from_slice(b"null");
        return;
    };
    b.push(b'"');
    json_escape(b, v);
    b.push(b'"');
}

/// `v` escaped for inside a JSON string (see [`json_str`]).
fn json_escape(b: &mut Vec<u8>, v: &[u8]) {
    let utf8 = std::str::from_utf8(v).is_ok();
    for &c in v {
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            0x20..=0x7e => b.push(c),
            0x80.. if utf8 => b.push(c),
            _ => {
                let _ = write!(b, "\\u{:04x}", c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A served request's entry, every field present.
    fn served(target: &'static [u8]) -> Entry<'static> {
        Entry {
            client: [10, 0, 0, 1].into(),
            method: "GET",
            target,
            service: Some("svc"),
            backend: Some("http://127.0.0.1:1"),
            earlier: [None; 2],
            status: 200,
            bytes: 42,
            upstream_us: Some(1_500),
            total_us: 2_000_001,
            error: None,
            drained: false,
            truncated: false,
            request_id: None,
            peer: None,
            kept: None,
        }
    }

    /// The default fields, and `request_id` when the entry has one (as the config makes
    /// them with `request_id: true`).
    fn fields_for(e: &Entry<'_>) -> Vec<Field> {
        let mut f = Field::DEFAULT.to_vec();
        if e.request_id.is_some() {
            f.push(Field::RequestId);
        }
        f
    }

    /// The file's text once it holds `n` lines (or after a second), the file removed.
    fn lines_of(path: &Path, n: usize) -> String {
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() == n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(path);
        text
    }

    /// An operator review: a request moved on from a backend that refused its connection
    /// was logged with the last backend alone. The field lists every backend tried, in
    /// order, as NGINX's `$upstream_addr` does (without its spaces, which split fields).
    #[test]
    fn a_request_that_moved_on_lists_every_backend_it_tried() {
        let e = Entry {
            earlier: [Some("http://127.0.0.1:2"), Some("http://127.0.0.1:3")],
            ..served(b"/v1/proxy/svc/a")
        };
        let mut text = Vec::new();
        line(
            &mut text,
            Format::Text,
            &Field::DEFAULT,
            b"2026-12-04T00:00:00",
            0,
            &e,
        );
        let text = String::from_utf8(text).unwrap();
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
        assert_eq!(
            fields[5], "http://127.0.0.1:2,http://127.0.0.1:3,http://127.0.0.1:1",
            "{text}"
        );
        assert_eq!(fields.len(), 11, "{text}");
        let one = Entry {
            earlier: [Some("http://127.0.0.1:2"), None],
            ..e
        };
        let mut json = Vec::new();
        line(
            &mut json,
            Format::Json,
            &Field::DEFAULT,
            b"2026-12-04T00:00:00",
            0,
            &one,
        );
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["backend"], "http://127.0.0.1:2,http://127.0.0.1:1", "{v}");
    }

    /// A kept header is the first of its name, trimmed, and cut at [`MAX_KEPT`] bytes on a
    /// character boundary (a client may send 60 KiB of User-Agent on every request).
    #[test]
    fn kept_headers_are_the_first_of_each_trimmed_and_cut_at_a_character() {
        let long = format!("{}\u{e9}tail", "a".repeat(MAX_KEPT - 1));
        let headers = [
            httparse::Header {
                name: "User-Agent",
                value: long.as_bytes(),
            },
            httparse::Header {
                name: "user-agent",
                value: b"second",
            },
            httparse::Header {
                name: "HOST",
                value: b" h.example \t",
            },
            httparse::Header {
                name: "x-referer",
                value: b"no",
            },
        ];
        let mut k = Kept::default();
        k.keep(&headers);
        let ua = k.get(Field::UserAgent).unwrap_or_default();
        assert_eq!(ua, format!("{}...", "a".repeat(MAX_KEPT - 1)).as_bytes());
        assert_eq!(k.get(Field::Host), Some(&b"h.example"[..]));
        assert_eq!(k.get(Field::Referer), None);
        k.clear();
        assert_eq!((k.get(Field::Host), k.minor), (None, None));
        let junk = vec![0x80u8; 2000];
        k.keep(&[httparse::Header {
            name: "user-agent",
            value: &junk,
        }]);
        assert_eq!(k.get(Field::UserAgent).map(<[u8]>::len), Some(MAX_KEPT + 3));
        // Escaped in a text line: quotes, backslashes, control and non-ASCII bytes.
        let mut b = Vec::new();
        escape(&mut b, b"a \"b\" \\ \x01\xff", true);
        assert_eq!(b, br#"a \"b\" \\ \x01\xFF"#);
        b.clear();
        escape(&mut b, b"h x", false);
        assert_eq!(b, br#"h\x20x"#);
    }

    #[test]
    fn lines_reach_the_file_with_every_field() {
        let path = std::env::temp_dir().join(format!("gateway-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let w = start(&Sink::File(path.clone()), &Epoch::default(), Arc::default()).unwrap();
        let log = AccessLog::new(Some(w));
        // Without `request_id`, then with an ID, then with none yet (a refused head).
        for request_id in [None, Some(&b"4bf92f3577b34da6"[..]), Some(&b""[..])] {
            let e = Entry {
                request_id,
                ..served(b"/v1/proxy/svc/a?b=1")
            };
            log.record(&e, Format::Text, &fields_for(&e), &Epoch::default());
        }
        log.flush();
        let text = lines_of(&path, 3);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // The same fields after the time (which may differ by a millisecond), then the ID.
        let after_time = |l: &str| l.split_once(' ').map(|(_, rest)| rest.to_string());
        let first = after_time(lines[0]).unwrap_or_default();
        assert_eq!(
            after_time(lines[1]),
            Some(format!("{first} 4bf92f3577b34da6")),
            "{text}"
        );
        assert_eq!(after_time(lines[2]), Some(format!("{first} -")), "{text}");
        let fields: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(fields.len(), 11, "{text}");
        assert!(fields[0].ends_with('Z') && fields[0].len() == 24, "{text}");
        assert_eq!(
            &fields[1..],
            [
                "10.0.0.1",
                "GET",
                "/v1/proxy/svc/a?b=1",
                "svc",
                "http://127.0.0.1:1",
                "200",
                "42",
                "0.001500",
                "2.000001",
                "-"
            ]
        );
    }

    #[test]
    fn json_lines_parse_with_every_field_and_null_for_what_is_absent() {
        use crate::error::GatewayError;
        let path =
            std::env::temp_dir().join(format!("gateway-access-json-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let w = start(&Sink::File(path.clone()), &Epoch::default(), Arc::default()).unwrap();
        let log = AccessLog::new(Some(w));
        let base = served(b"/v1/proxy/svc/a?q=\"x\"\\y\x01\xff");
        let entries = [
            base,
            Entry {
                request_id: Some(b"4bf92f35"),
                truncated: true,
                ..base
            },
            Entry {
                method: "-",
                target: b"-",
                service: None,
                backend: None,
                status: 400,
                upstream_us: None,
                error: Some(GatewayError::BadRequest("missing_host")),
                request_id: Some(b""),
                ..base
            },
            Entry {
                drained: true,
                status: 0,
                bytes: 0,
                upstream_us: None,
                ..base
            },
            Entry {
                drained: true,
                ..base
            },
            Entry {
                target: "/v1/proxy/svc/caf\u{e9}\u{2028}".as_bytes(),
                ..base
            },
        ];
        for e in &entries {
            log.record(e, Format::Json, &fields_for(e), &Epoch::default());
        }
        log.flush();
        let text = lines_of(&path, entries.len());
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 6, "{text}");
        // Valid UTF-8 stays itself (invalid bytes, as in the first target, are escaped).
        assert_eq!(lines[5]["target"], "/v1/proxy/svc/caf\u{e9}\u{2028}");
        let time = lines[0]["time"].as_str().unwrap_or_default();
        assert!(time.ends_with('Z') && time.len() == 24, "{text}");
        let mut first = lines[0].clone();
        first.as_object_mut().map(|o| o.remove("time"));
        assert_eq!(
            first,
            serde_json::json!({
                "client": "10.0.0.1", "method": "GET",
                "target": "/v1/proxy/svc/a?q=\"x\"\\y\u{1}\u{ff}",
                "service": "svc", "backend": "http://127.0.0.1:1", "status": 200, "bytes": 42,
                "upstream_seconds": 0.0015, "total_seconds": 2.000001, "error": null
            })
        );
        assert_eq!(
            (&lines[1]["error"], &lines[1]["request_id"]),
            (
                &serde_json::json!("response_cut_short"),
                &serde_json::json!("4bf92f35")
            )
        );
        let refused = &lines[2];
        for field in [
            "method",
            "target",
            "service",
            "backend",
            "upstream_seconds",
            "request_id",
        ] {
            assert!(refused[field].is_null(), "{field}: {refused}");
        }
        assert_eq!(refused["error"], "bad_request:missing_host");
        assert_eq!(refused["status"], 400);
        let cut = &lines[3];
        assert!(cut["status"].is_null() && cut["bytes"].is_null(), "{cut}");
        assert_eq!(cut["error"], "drain_deadline");
        assert!(cut.get("request_id").is_none(), "{cut}");
        // Cut mid-body: what had gone.
        let cut = &lines[4];
        assert_eq!((&cut["status"], &cut["bytes"]), (&200.into(), &42.into()));
        assert_eq!(cut["error"], "drain_deadline");
    }

    /// An empty directory of this test run's own, named after `name`.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The file's text, empty if there is none.
    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_default()
    }

    fn plain(target: &'static [u8]) -> Entry<'static> {
        Entry {
            client: [10, 0, 0, 1].into(),
            method: "GET",
            target,
            service: None,
            backend: None,
            earlier: [None; 2],
            status: 200,
            bytes: 0,
            upstream_us: None,
            total_us: 1,
            error: None,
            drained: false,
            truncated: false,
            request_id: None,
            peer: None,
            kept: None,
        }
    }

    /// A review: lines held by a worker while the log went from one file to `off` and on
    /// to another were written to the other (they were then dropped; since 2026-12-05 they
    /// go to the file they were meant for); a switch that failed (the writer stuck on a
    /// stalled pipe) left the log off with the old sink still configured; and a FIFO
    /// nobody reads blocked the reload that named it, and every reload after, for good.
    #[test]
    fn lines_held_across_off_go_to_their_own_file_a_failed_switch_changes_nothing_and_a_fifo_never_blocks(
    ) {
        let dir = fresh_dir("gateway-access-off");
        let (a, b) = (dir.join("a.log"), dir.join("b.log"));
        let e0 = Epoch::default();
        let (e1, e2) = (e0.next(), e0.next().next());
        let w = start(&Sink::File(a.clone()), &e0, Arc::default()).unwrap();
        let log = AccessLog::new(Some(w.clone()));
        log.record(&plain(b"/held"), Format::Text, &Field::DEFAULT, &e0);
        w.switch(&Sink::Off, &e1).unwrap();
        assert!(!log.wanted(&Sink::Off) && log.wanted(&Sink::File(a.clone())));
        w.switch(&Sink::File(b.clone()), &e2).unwrap();
        log.record(&plain(b"/after"), Format::Text, &Field::DEFAULT, &e2);
        log.flush();
        assert!(w.sync(std::time::Duration::from_secs(5)));
        assert!(read(&b).contains("/after"), "{}", read(&b));
        assert!(!read(&b).contains("/held"), "{}", read(&b));
        assert!(read(&a).contains("/held"), "{}", read(&a));

        // A writer that takes nothing: the switch to `off` fails and the log stays on.
        let (tx, _rx) = mpsc::sync_channel(0);
        let stuck = Writer {
            tx,
            counters: Arc::default(),
            turns: Arc::default(),
        };
        assert!(stuck.switch(&Sink::Off, &e1).is_err());

        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = w.switch(&Sink::File(fifo), &e2.next()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `Writer::sync` answers only once every batch handed over before it is written: the
    /// process relies on it at exit, or its last lines (those the drain deadline cut among
    /// them) went with the writer thread.
    #[test]
    fn sync_returns_once_everything_before_it_is_written() {
        let path =
            std::env::temp_dir().join(format!("gateway-access-sync-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let w = start(&Sink::File(path.clone()), &Epoch::default(), Arc::default()).unwrap();
        let log = AccessLog::new(Some(w.clone()));
        for i in 0..2000u64 {
            log.record(
                &Entry {
                    client: [10, 0, 0, 1].into(),
                    method: "GET",
                    target: b"/v1/proxy/svc/a",
                    service: Some("svc"),
                    backend: None,
                    earlier: [None; 2],
                    status: 200,
                    bytes: i,
                    upstream_us: None,
                    total_us: 1,
                    error: None,
                    drained: i % 2 == 0,
                    truncated: i % 3 == 0,
                    request_id: None,
                    peer: None,
                    kept: None,
                },
                Format::Text,
                &Field::DEFAULT,
                &Epoch::default(),
            );
        }
        log.flush();
        assert!(w.sync(std::time::Duration::from_secs(5)));
        // No waiting: every line is in the file already.
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text.lines().count(), 2000);
        assert!(text.lines().all(|l| l.split(' ').count() == 11), "{text}");
    }

    /// An operator review: a reload from a text file to a JSON one put the text lines of
    /// requests in flight and of the workers' buffers into the JSON file (and the other
    /// way round). Each line now goes to the sink of the config that formatted it, and a
    /// worker's buffer never mixes lines for two outputs.
    #[test]
    fn lines_go_to_the_sink_of_the_config_that_formatted_them() {
        let dir = fresh_dir("gateway-access-epoch");
        let (a, b) = (dir.join("a.log"), dir.join("b.json"));
        let e0 = Epoch::default();
        let e1 = e0.next();
        let w = start(&Sink::File(a.clone()), &e0, Arc::default()).unwrap();
        let log = AccessLog::new(Some(w.clone()));
        log.record(&plain(b"/held"), Format::Text, &Field::DEFAULT, &e0);
        w.switch(&Sink::File(b.clone()), &e1).unwrap();
        // A new request's line, then one of a request that began before the reload, then
        // another new one, all in one worker's buffer time.
        log.record(&plain(b"/new-1"), Format::Json, &Field::DEFAULT, &e1);
        log.record(&plain(b"/in-flight"), Format::Text, &Field::DEFAULT, &e0);
        log.record(&plain(b"/new-2"), Format::Json, &Field::DEFAULT, &e1);
        log.flush();
        assert!(w.sync(std::time::Duration::from_secs(5)));
        let (text, json) = (read(&a), read(&b));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.contains("/held") && text.contains("/in-flight"),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.starts_with('{')), "{text}");
        assert_eq!(json.lines().count(), 2, "{json}");
        assert!(json.contains("/new-1") && json.contains("/new-2"), "{json}");
        for l in json.lines() {
            assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "{l}");
        }
    }

    /// An operator review: after `mv access.log access.log.1` and SIGUSR1, a line logged
    /// before the signal (still in a worker's buffer) went to the new `access.log`.
    /// NGINX's workers flush their buffers into the old file before they reopen; here a
    /// line goes to the file open when it was formatted.
    #[test]
    fn lines_formatted_before_a_reopen_go_to_the_file_moved_away() {
        let dir = fresh_dir("gateway-access-turn");
        let (a, moved) = (dir.join("access.log"), dir.join("access.log.1"));
        let e0 = Epoch::default();
        let w = start(&Sink::File(a.clone()), &e0, Arc::default()).unwrap();
        let log = AccessLog::new(Some(w.clone()));
        log.record(&plain(b"/before"), Format::Text, &Field::DEFAULT, &e0);
        std::fs::rename(&a, &moved).unwrap();
        w.reopen();
        log.record(&plain(b"/after"), Format::Text, &Field::DEFAULT, &e0);
        log.flush();
        assert!(w.sync(std::time::Duration::from_secs(5)));
        let (old, new) = (read(&moved), read(&a));
        assert!(old.contains("/before") && !old.contains("/after"), "{old}");
        assert!(new.contains("/after") && !new.contains("/before"), "{new}");
        // And the moved file is let go of soon after, or a rotated log removed by
        // logrotate would keep its disk space.
        let holds = |p: &Path| {
            std::fs::read_dir("/proc/self/fd")
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == p))
        };
        assert!(holds(&moved));
        let end = std::time::Instant::now() + REPLACED_FOR + std::time::Duration::from_secs(5);
        while holds(&moved) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!holds(&moved), "the moved file is still open");
        assert!(holds(&a));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A review: past the outputs kept, the oldest was closed even when its epoch still
    /// had a request in flight and newer ones were owed nothing: a request in flight
    /// across nine quick reloads lost its line. Those owed nothing go first.
    #[test]
    fn outputs_owed_nothing_are_closed_before_one_a_request_still_needs() {
        let held = Epoch::default();
        let sink = |_| -> Option<Output> { Some((Box::new(std::io::sink()), None)) };
        let mut outputs = Outputs {
            kept: std::collections::VecDeque::new(),
            turn: 0,
        };
        outputs.switch(0, Arc::downgrade(&held.alive), sink(0));
        for n in 1..=(KEPT_OUTPUTS as u64 * 2) {
            // Each a config already gone (its token dropped), as after quick reloads.
            let gone = Epoch {
                n,
                alive: Arc::new(()),
            };
            outputs.switch(n, Arc::downgrade(&gone.alive), sink(n));
        }
        assert_eq!(outputs.kept.len(), KEPT_OUTPUTS);
        let tag = Tag { epoch: 0, turn: 0 };
        assert!(
            outputs.route(tag).is_some(),
            "the held epoch's output was closed"
        );
        let last = KEPT_OUTPUTS as u64 * 2;
        assert!(outputs
            .route(Tag {
                epoch: last,
                turn: 0
            })
            .is_some());
    }
}
