//! Admin listener on its own thread, off the workers' hot path: `/healthz`, `/metrics`,
//! `/admin/backends`, `/admin/config`. Plain blocking I/O, one short request per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::breaker::{self, retry_after_ms, Snapshot as Word, CLOSED};
use crate::metrics::{self, WorkerMetrics};
use crate::state::{now_ms, Shared};

/// Binds `addr` and serves it on a new thread.
pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = handle(stream, &shared) {
                    log::debug!("admin: {e}");
                }
            }
        })?;
    log::info!("admin listening on {bound}");
    Ok(bound)
}

fn handle(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut tmp = [0u8; 1024];
    let path = loop {
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                if req.method != Some("GET") {
                    return respond(
                        &mut s,
                        405,
                        "application/json",
                        b"{\"error\":\"method_not_allowed\"}\n",
                    );
                }
                let p = req.path.unwrap_or("/");
                break p.split('?').next().unwrap_or("/").to_string();
            }
            Ok(httparse::Status::Partial) if buf.len() < 8192 => continue,
            _ => {
                return respond(
                    &mut s,
                    400,
                    "application/json",
                    b"{\"error\":\"bad_request\"}\n",
                )
            }
        }
    };
    match path.as_str() {
        "/healthz" => {
            let (status, body) = if shared.is_draining() {
                (503, json!({"status": "draining"}))
            } else {
                (
                    200,
                    json!({"status": "serving", "generation": shared.current.load().generation}),
                )
            };
            respond(
                &mut s,
                status,
                "application/json",
                body.to_string().as_bytes(),
            )
        }
        "/metrics" => {
            let text = render_metrics(shared);
            respond(
                &mut s,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
            )
        }
        "/admin/backends" => respond_json(&mut s, &backends(shared)),
        "/admin/config" => respond_json(&mut s, &config(shared)),
        _ => respond(
            &mut s,
            404,
            "application/json",
            b"{\"error\":\"not_found\"}\n",
        ),
    }
}

fn respond_json(s: &mut TcpStream, v: &Value) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    respond(s, 200, "application/json", &body)
}

fn respond(s: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    s.write_all(&out)
}

fn render_metrics(shared: &Shared) -> String {
    let snap = shared.current.load_full();
    let services = shared.service_names();
    let backends: Vec<(usize, String, String, u64)> = snap
        .services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(move |b| {
                // The gauge's values: 0 closed, 1 open (a probe backoff is open too), 2 half-open.
                let state = match Word::decode(breaker::Word::load(&**b.breaker)).state {
                    breaker::BACKOFF => breaker::OPEN,
                    other => other,
                };
                (b.slot, s.name.clone(), b.url.url.clone(), state)
            })
        })
        .collect();
    let workers = shared
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tables: Vec<&WorkerMetrics> = workers.iter().map(|w| &***w).collect();
    metrics::render(
        &tables,
        &metrics::Names {
            services: &services,
            backends: &backends,
            generation: snap.generation,
            reloads_ok: shared.reloads.ok.load(Ordering::Relaxed),
            reloads_failed: shared.reloads.failed.load(Ordering::Relaxed),
            last_reload_ok: shared
                .reloads
                .last_error
                .lock()
                .map(|e| e.is_empty())
                .unwrap_or(true),
            draining: shared.is_draining(),
            access_log_dropped: shared.access_log_dropped.load(Ordering::Relaxed),
        },
    )
}

/// Wall-clock time of a breaker-clock instant, as RFC 3339.
fn wall(ms: u64, now: u64) -> String {
    let ago = Duration::from_millis(now.saturating_sub(ms));
    crate::logging::timestamp(SystemTime::now() - ago)
}

fn backends(shared: &Shared) -> Value {
    let snap = shared.current.load_full();
    let workers = shared
        .workers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let total = |slot: usize, f: fn(&WorkerMetrics) -> &Box<[metrics::Counter]>| -> u64 {
        if slot >= metrics::MAX_SLOTS {
            return 0;
        }
        workers.iter().map(|w| f(w)[slot].get()).sum()
    };
    let now = now_ms();
    let services: Vec<Value> = snap
        .services
        .iter()
        .map(|s| {
            let backends: Vec<Value> = s
                .backends
                .iter()
                .map(|b| {
                    let word = breaker::Word::load(&**b.breaker);
                    let w = Word::decode(word);
                    // A circuit that never changed state has no transition time.
                    let changed = w.state != CLOSED || w.epoch != 0;
                    json!({
                        "url": b.url.url,
                        "state": w.state_name(),
                        "consecutive_failures": if w.state == CLOSED { w.count } else { 0 },
                        "last_transition": changed.then(|| wall(w.time_ms, now)),
                        "next_probe_in_ms": (w.state != CLOSED).then(|| retry_after_ms(word, now, &s.policy)),
                        "successes": total(b.slot, |m| &m.backend_success),
                        "failures": total(b.slot, |m| &m.backend_failure),
                        "transitions": total(b.slot, |m| &m.transitions),
                    })
                })
                .collect();
            json!({
                "name": s.name,
                "failure_threshold": s.settings.failure_threshold,
                "cooldown_ms": s.policy.cooldown_ms,
                "backends": backends,
            })
        })
        .collect();
    json!({"generation": snap.generation, "services": services})
}

fn config(shared: &Shared) -> Value {
    let snap = shared.current.load_full();
    let c = &snap.config;
    let d = |d: Duration| format!("{}ms", d.as_millis());
    let services: Vec<Value> = c
        .services
        .iter()
        .map(|s| {
            let failure_statuses: Vec<u16> = (500..600)
                .filter(|&st| s.breaker.is_failure_status(st))
                .collect();
            json!({
                "name": s.name,
                "backends": s.backends.iter().map(|b| b.url.clone()).collect::<Vec<_>>(),
                "breaker": {
                    "failure_threshold": s.breaker.failure_threshold,
                    "cooldown": d(s.breaker.cooldown),
                    "failure_statuses": failure_statuses,
                },
            })
        })
        .collect();
    let last_error = shared
        .reloads
        .last_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    json!({
        "generation": snap.generation,
        "last_reload_error": if last_error.is_empty() { Value::Null } else { Value::String(last_error) },
        "listen": c.listen.to_string(),
        "workers": c.workers,
        "pin_workers": c.pin_workers,
        "admin": c.admin.map(|a| a.to_string()),
        "access_log": match &c.access_log {
            crate::accesslog::Sink::Off => "off".to_string(),
            crate::accesslog::Sink::Stdout => "stdout".to_string(),
            crate::accesslog::Sink::File(p) => p.display().to_string(),
        },
        "timeouts": {
            "connect": d(c.timeouts.connect),
            "response": d(c.timeouts.response),
            "client_header": d(c.timeouts.client_header),
            "client_idle": d(c.timeouts.client_idle),
            "body": d(c.timeouts.body),
            "drain": d(c.timeouts.drain),
        },
        "limits": {
            "max_head_bytes": c.limits.max_head_bytes,
            "max_headers": c.limits.max_headers,
            "max_target_bytes": c.limits.max_target_bytes,
            "max_body_bytes": c.limits.max_body_bytes,
        },
        "pool": {
            "max_idle_per_backend": c.pool.max_idle_per_backend,
            "idle_timeout": d(c.pool.idle_timeout),
        },
        "services": services,
    })
}
