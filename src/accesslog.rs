//! Access log: one line per request, formatted into a per-worker buffer and handed in
//! batches to a writer thread, so a request never waits on log I/O.
//!
//! Line format (space-separated, `-` for an absent field):
//! `time client method target service backend status bytes upstream_s total_s error`
//! e.g. `2026-11-28T06:01:02.345Z 127.0.0.1 GET /v1/proxy/users/1 users http://127.0.0.1:8001 200 412 0.000310 0.000402 -`.
//! If the writer falls behind by more than [`MAX_PENDING`] batches, batches are dropped and
//! counted rather than blocking a worker.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
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

/// A worker flushes its buffer once it holds this much (and once a second).
const FLUSH_BYTES: usize = 32 * 1024;
/// Batches queued to the writer before new ones are dropped.
pub const MAX_PENDING: usize = 256;

/// The writer side, shared by all workers.
#[derive(Clone)]
pub struct Writer {
    tx: SyncSender<Vec<u8>>,
    pub dropped: Arc<AtomicU64>,
}

/// Starts the writer thread for `sink`; `None` when the log is off.
/// `dropped` counts batches given up because the writer fell behind (exported in /metrics).
pub fn start(sink: &Sink, dropped: Arc<AtomicU64>) -> std::io::Result<Option<Writer>> {
    let mut out: Box<dyn Write + Send> = match sink {
        Sink::Off => return Ok(None),
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
    };
    let (tx, rx): (SyncSender<Vec<u8>>, Receiver<Vec<u8>>) = mpsc::sync_channel(MAX_PENDING);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            for batch in rx {
                if out.write_all(&batch).and_then(|_| out.flush()).is_err() {
                    log::warn!("access log: write failed; lines lost");
                }
            }
        })?;
    Ok(Some(Writer { tx, dropped }))
}

/// One request, as logged.
pub struct Entry<'a> {
    pub client: std::net::IpAddr,
    pub method: &'a str,
    pub target: &'a [u8],
    pub service: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub status: u16,
    pub bytes: u64,
    pub upstream_us: Option<u64>,
    pub total_us: u64,
    pub error: Option<&'static str>,
}

/// A worker's buffer.
pub struct AccessLog {
    writer: Option<Writer>,
    buf: RefCell<Vec<u8>>,
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second seen.
    second: Cell<(u64, [u8; 19])>,
}

impl AccessLog {
    pub fn new(writer: Option<Writer>) -> AccessLog {
        AccessLog {
            writer,
            buf: RefCell::new(Vec::new()),
            second: Cell::new((u64::MAX, [0; 19])),
        }
    }

    pub fn enabled(&self) -> bool {
        self.writer.is_some()
    }

    pub fn record(&self, e: &Entry<'_>) {
        if self.writer.is_none() {
            return;
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
        b.extend_from_slice(&text);
        let _ = write!(b, ".{millis:03}Z {} {} ", e.client, e.method);
        b.extend_from_slice(e.target);
        let _ = write!(
            b,
            " {} {} {} {} ",
            e.service.unwrap_or("-"),
            e.backend.unwrap_or("-"),
            e.status,
            e.bytes
        );
        match e.upstream_us {
            Some(us) => {
                let _ = write!(b, "{}.{:06}", us / 1_000_000, us % 1_000_000);
            }
            None => b.push(b'-'),
        }
        let _ = writeln!(
            b,
            " {}.{:06} {}",
            e.total_us / 1_000_000,
            e.total_us % 1_000_000,
            e.error.unwrap_or("-")
        );
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
        match w.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                w.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_file_with_every_field() {
        let path = std::env::temp_dir().join(format!("gateway-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let w = start(&Sink::File(path.clone()), Arc::default()).unwrap();
        let log = AccessLog::new(w);
        log.record(&Entry {
            client: [10, 0, 0, 1].into(),
            method: "GET",
            target: b"/v1/proxy/svc/a?b=1",
            service: Some("svc"),
            backend: Some("http://127.0.0.1:1"),
            status: 200,
            bytes: 42,
            upstream_us: Some(1_500),
            total_us: 2_000_001,
            error: None,
        });
        log.flush();
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&path);
        let fields: Vec<&str> = text.trim_end().split(' ').collect();
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
}
