//! Several gateway processes sharing circuit state through a real `redis-server`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Long enough for anything that should happen within a few hundred ms on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` on a free loopback port, without persistence, killed (by PID) on drop.
struct Redis {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Redis {
    fn start() -> Redis {
        Redis::on(free_port())
    }

    fn on(port: u16) -> Redis {
        Redis::with(port, &[])
    }

    /// A Redis on `port` with extra command-line settings (e.g. `--requirepass`).
    fn with(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need a real Redis; \
                     install it (apt-get install -y redis-server, as .ci/run does)"
                )
            });
        let r = Redis { child, port };
        assert!(
            eventually(WAIT, || r.ping()),
            "redis-server did not answer on port {port}"
        );
        r
    }

    /// Sends `commands` (RESP inline, one per line) and returns what came back once `until`
    /// has.
    fn send(&self, commands: &str, until: &str) -> String {
        send_to(self.port, commands, until)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        // `+PONG`, or `-NOAUTH` from one that wants a password: up either way.
        let mut buf = [0u8; 5];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG" || &buf == b"-NOAU")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to the server.
    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fleet member: admin on, the given breaker and quorum, one service `svc` on `backend`.
fn member(
    redis: &Redis,
    fleet: &str,
    quorum: u32,
    breaker: &str,
    backend: SocketAddr,
) -> AdminGateway {
    gateway_at(&member_config(redis, fleet, quorum, breaker, backend))
}

/// `n` [`member`]s, each in touch with Redis.
fn fleet_of(
    n: usize,
    redis: &Redis,
    fleet: &str,
    quorum: u32,
    breaker: &str,
    backend: SocketAddr,
) -> Vec<AdminGateway> {
    let members: Vec<AdminGateway> = (0..n)
        .map(|_| member(redis, fleet, quorum, breaker, backend))
        .collect();
    assert!(eventually(WAIT, || members.iter().all(cluster_up)));
    members
}

/// [`member`]'s config file.
fn member_config(
    redis: &Redis,
    fleet: &str,
    quorum: u32,
    breaker: &str,
    backend: SocketAddr,
) -> std::path::PathBuf {
    member_config_at(&redis.url(), fleet, quorum, breaker, backend)
}

/// [`member_config`] for the Redis at `url`, which need not be up.
fn member_config_at(
    url: &str,
    fleet: &str,
    quorum: u32,
    breaker: &str,
    backend: SocketAddr,
) -> std::path::PathBuf {
    write_config(&config(
        2,
        &format!(
            "admin: 127.0.0.1:0\nbreaker: {breaker}\ntimeouts: {{response: 2s}}\n\
             cluster: {{redis: {url}, name: {fleet}, open_quorum: {quorum}}}"
        ),
        &format!("  svc: [http://{backend}]\n"),
    ))
}

fn fleet_name(test: &str) -> String {
    format!("t{}-{test}", std::process::id())
}

fn status(g: &AdminGateway) -> u16 {
    get(g.proc.addr, "/v1/proxy/svc/x").status
}

/// The backend's state and source as `/admin/backends` shows them.
fn backend(g: &AdminGateway) -> (String, String) {
    let v = get(g.admin, "/admin/backends").json();
    let b = &v["services"][0]["backends"][0];
    (
        b["state"].as_str().unwrap_or_default().to_string(),
        b["source"].as_str().unwrap_or_default().to_string(),
    )
}

fn cluster(g: &AdminGateway) -> serde_json::Value {
    get(g.admin, "/admin/cluster").json()
}

fn metrics(g: &AdminGateway) -> String {
    get(g.admin, "/metrics").text()
}

/// [`Redis::send`] to the Redis on `port`.
fn send_to(port: u16, commands: &str, until: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("redis");
    // Long enough for the heavy scripts some tests load Redis with on a busy machine (a
    // 500 000-member one outlasted 2 s beside other work).
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(commands.as_bytes()).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "{:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn cluster_up(g: &AdminGateway) -> bool {
    cluster(g)["redis"]["state"] == "up"
}

/// This host's clock in unix ms (Redis's is the same host's).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// The state of the fleet's record at `key`: `open`, `closed` or `none`, read in one line.
fn record_state(redis: &Redis, key: &str) -> &'static str {
    let said = redis.send(
        &format!(
            "EVAL \"local s = redis.call('HGET', KEYS[1], 'state') if s == 'open' then return 1 elseif s == 'closed' then return 2 end return 0\" 1 {key}\r\n"
        ),
        "\r\n",
    );
    match said.trim() {
        ":1" => "open",
        ":2" => "closed",
        _ => "none",
    }
}

/// Writes a backend's fleet record as a stray writer (or a Redis that lost its data) would.
fn write_record(redis: &Redis, key: &str, state: &str, at: &str, instance: &str) {
    let said = redis.send(
        &format!("HSET {key} state {state} at {at} instance {instance}\r\n"),
        "\r\n",
    );
    assert!(said.starts_with(':'), "{said}");
}

/// A gateway's log file in the temp directory, removed on drop (declared before the
/// gateway, so that the gateway stops first).
struct LogFile {
    path: std::path::PathBuf,
}

impl LogFile {
    fn new(tag: &str) -> LogFile {
        let name = format!("gateway-cluster-{}-{tag}.log", std::process::id());
        LogFile {
            path: std::env::temp_dir().join(name),
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Lines that contain `what`.
    fn count(&self, what: &str) -> usize {
        self.text().lines().filter(|l| l.contains(what)).count()
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `n` requests to `g`, each expected to reach the backend and fail.
fn fail(g: &AdminGateway, n: usize) {
    for _ in 0..n {
        assert_eq!(status(g), 500, "request did not reach the failing backend");
    }
}

/// Whether `g` answers 200 within `wait`, asked every 50 ms (a probe once its cooldown ends).
fn answers_within(g: &AdminGateway, wait: Duration) -> bool {
    eventually(wait, || {
        let ok = status(g) == 200;
        std::thread::sleep(Duration::from_millis(50));
        ok
    })
}

/// Whether `g`'s one backend opens again once `rec` fails, sending requests while closed.
fn opens_again(g: &AdminGateway, rec: &Recorder) -> bool {
    rec.set(reply(500));
    eventually(WAIT, || {
        if backend(g).0 == "closed" {
            let _ = status(g);
        }
        backend(g).0 == "open"
    })
}

/// An instance of fleet `name` with `workers` workers and its admin port, whose breakers
/// open after 2 failures for 30 s, serving `services` (the config's lines under
/// `services:`).
fn fleet_member(redis: &Redis, name: &str, workers: usize, services: &str) -> AdminGateway {
    gateway_at(&fleet_member_config(redis, name, workers, services))
}

fn fleet_member_config(
    redis: &Redis,
    name: &str,
    workers: usize,
    services: &str,
) -> std::path::PathBuf {
    write_config(&config(
        workers,
        &format!(
            "admin: 127.0.0.1:0\nbreaker: {{failure_threshold: 2, cooldown: 30s}}\n\
             cluster: {{redis: {}, name: {name}}}",
            redis.url()
        ),
        services,
    ))
}

/// The state `/admin/backends` shows for `service`'s first backend.
fn state_in(g: &AdminGateway, service: &str) -> String {
    let v = get(g.admin, "/admin/backends").json();
    let s = v["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service).cloned())
        .unwrap_or_default();
    s["backends"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_open_circuit_reaches_every_instance_and_admin_says_whence() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("propagate");
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let a = member(&redis, &name, 1, breaker, rec.addr);
    // b's log: it says which instance opened the circuit it follows.
    let log = std::env::temp_dir().join(format!("gateway-cluster-{}-b.log", std::process::id()));
    let b = gateway_at_logging_to(&member_config(&redis, &name, 1, breaker, rec.addr), &log);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    fail(&a, 2);
    assert_eq!(
        status(&a),
        503,
        "circuit did not open on the failing instance"
    );
    // Watch through the admin API, so that the watching sends nothing to the backend.
    assert!(
        eventually(WAIT, || backend(&b).0 == "open"),
        "the open circuit never reached the other instance"
    );
    assert_eq!(status(&b), 503);
    assert_eq!(rec.requests(), 2, "the other instance still sent requests");
    assert_eq!(backend(&a), ("open".into(), "local".into()));
    assert_eq!(backend(&b), ("open".into(), "remote".into()));
    let ca = cluster(&a);
    let cb = cluster(&b);
    assert_eq!(ca["enabled"], true);
    assert_ne!(ca["instance"], cb["instance"]);
    assert!(eventually(WAIT, || cluster(&a)["peers"]
        .as_array()
        .is_some_and(|p| p.contains(&cb["instance"]))));
    assert!(cb["last_sync"].is_string(), "{cb}");
    let text = metrics(&a);
    assert!(text.contains("gateway_cluster_up 1"), "{text}");
    let said = format!(
        "breaker: svc http://{} opened by instance {} (through the cluster)",
        rec.addr,
        ca["instance"].as_str().unwrap_or("?")
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(logged.contains(&said), "{said} not in {logged}");
    // A review: breaker records never expired, and those of renamed services and moved
    // backends piled up in Redis for good. Each lasts two days from its last transition.
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    let ttl = redis.send(&format!("PTTL {key}\r\n"), "\r\n");
    let ms: i64 = ttl.trim().trim_start_matches(':').parse().unwrap_or(-1);
    assert!(
        (172_000_000..=172_800_000).contains(&ms),
        "{key}: PTTL {ttl:?}"
    );
}

/// Steady GETs to every instance of a fleet, two clients each, until [`Load::end`].
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn on(fleet: &[AdminGateway]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let threads = fleet
            .iter()
            .flat_map(|g| [g.proc.addr, g.proc.addr])
            .map(|addr| {
                let (stop, sent) = (stop.clone(), sent.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = get(addr, "/v1/proxy/svc/x");
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads,
        }
    }

    /// Stops the clients; how many requests they sent.
    fn end(mut self) -> usize {
        self.stop_clients();
        self.sent.load(Ordering::Relaxed)
    }

    fn stop_clients(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A test that fails with its load running stops the load too.
impl Drop for Load {
    fn drop(&mut self) {
        self.stop_clients();
    }
}

#[test]
fn one_probe_per_cooldown_across_the_fleet_under_load() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("probe");
    let breaker = "{failure_threshold: 2, cooldown: 2s}";
    let fleet = fleet_of(3, &redis, &name, 1, breaker, rec.addr);
    fail(&fleet[0], 2);
    assert!(eventually(WAIT, || fleet.iter().all(|g| status(g) == 503)));
    let opened = rec.requests();
    // Every instance under steady load, for the cooldown and well into the next one.
    let load = Load::on(&fleet);
    let probed = eventually(WAIT, || rec.requests() > opened);
    // The probe failed: every instance re-opened with a fresh 2 s cooldown. Keep the load on
    // for a while inside that cooldown: no second probe may come.
    std::thread::sleep(Duration::from_millis(700));
    let sent = load.end();
    assert!(probed, "no probe reached the backend");
    assert_eq!(
        rec.requests() - opened,
        1,
        "probes reaching the backend while {sent} requests were sent",
    );
    // A successful probe closes the circuit everywhere.
    rec.set(reply(200));
    // Traffic on every instance each round (an instance without requests cannot probe).
    assert!(
        eventually(WAIT, || fleet.iter().map(status).collect::<Vec<_>>()
            == [200; 3]),
        "the fleet did not close after a successful probe"
    );
}

/// A fleet review (2026-12-05): with the probe lease's key lost while its probe ran (a
/// `volatile-*` eviction policy evicts keys with an expiry first; here deleted), a second
/// instance took the lease and probed beside the first, 1.3–1.6 s into a 2 s probe. The
/// backend's record says who probes until when, and the lease is not handed out again.
#[test]
fn a_lost_probe_lease_lets_no_second_probe_beside_a_running_one() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("lost-lease");
    let breaker = "{failure_threshold: 2, cooldown: 2s}";
    let fleet = fleet_of(3, &redis, &name, 1, breaker, rec.addr);
    fail(&fleet[0], 2);
    assert!(eventually(WAIT, || fleet.iter().all(|g| status(g) == 503)));
    // Every probe now takes the whole 2 s response timeout.
    rec.set(Mode::Hang);
    let opened = rec.requests();
    let load = Load::on(&fleet);
    let probed = eventually(WAIT, || rec.requests() > opened);
    let lease = format!("{name}:breaker:svc:http://{}:probe", rec.addr);
    let deleted = redis.send(&format!("DEL {lease}\r\n"), "\r\n");
    // Well inside the probe's 2 s, several rounds of every instance's cluster thread.
    std::thread::sleep(Duration::from_millis(1500));
    let during = rec.requests() - opened;
    load.end();
    assert!(probed, "no probe reached the backend");
    assert_eq!(deleted, ":1\r\n", "the lease was not where it should be");
    assert_eq!(during, 1, "probes reaching the backend while the first ran");
}

/// Opens `fleet`'s circuit on `rec`, makes `rec` hang, and puts every instance under load
/// until one probes: that instance's index, `rec`'s count of requests before the probe,
/// and the load.
fn hanging_probe_under_load(fleet: &[AdminGateway], rec: &Recorder) -> (usize, usize, Load) {
    fail(&fleet[0], 2);
    assert!(eventually(WAIT, || fleet.iter().all(|g| status(g) == 503)));
    rec.set(Mode::Hang);
    let opened = rec.requests();
    let load = Load::on(fleet);
    let probed = eventually(WAIT, || rec.requests() > opened);
    let probing = eventually(WAIT, || fleet.iter().any(|g| backend(g).0 == "half_open"));
    let prober = fleet.iter().position(|g| backend(g).0 == "half_open");
    let prober = prober.filter(|_| probed && probing);
    let prober = prober.unwrap_or_else(|| {
        panic!("no probe reached the backend, or no instance shows it (probed: {probed})")
    });
    (prober, opened, load)
}

/// A fleet review (2026-12-05): SIGTERM to the instance whose probe ran under the fleet's
/// lease took it out of the list of instances at once, which frees its lease, and another
/// instance probed beside the first (1.2 s of overlap); the first probe's outcome never
/// reached the fleet. A draining instance now stays in the list, its lease held, until its
/// probe ends, and publishes the outcome before it leaves.
#[test]
fn a_draining_instance_keeps_its_probe_to_itself_and_publishes_its_outcome() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("drain-probe");
    let breaker = "{failure_threshold: 2, cooldown: 2s}";
    let mut fleet = fleet_of(3, &redis, &name, 1, breaker, rec.addr);
    // Every probe now takes the whole 2 s response timeout.
    let (prober, opened, load) = hanging_probe_under_load(&fleet, &rec);
    let id = cluster(&fleet[prober])["instance"]
        .as_str()
        .map(String::from)
        .expect("an instance name");
    let stopped_at = unix_ms();
    signal(&fleet[prober].proc.child, libc::SIGTERM);
    // Well inside the probe's 2 s, many rounds of the other instances' cluster threads.
    std::thread::sleep(Duration::from_millis(1200));
    let during = rec.requests() - opened;
    let sent = load.end();
    assert_eq!(
        during, 1,
        "probes reaching the backend while the draining instance's ran ({sent} requests sent)"
    );
    // The probe timed out: the draining instance re-opened the fleet's circuit, said so in
    // Redis, and only then left.
    let child = &mut fleet[prober].proc.child;
    exit_status(
        child,
        Instant::now(),
        WAIT,
        "the draining instance did not exit",
    );
    let hash = format!("{name}:breaker:svc:http://{}", rec.addr);
    let said = redis.send(&format!("HMGET {hash} state at instance\r\n"), "\r\n$");
    let said = said + &redis.send("PING\r\n", "+PONG");
    let fields: Vec<&str> = said
        .split("\r\n")
        .filter(|l| !l.starts_with(['*', '$', '+']) && !l.is_empty())
        .collect();
    let at = fields
        .get(1)
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        fields.first() == Some(&"open") && at > stopped_at && fields.get(2) == Some(&id.as_str()),
        "the probe's outcome is not the fleet's: {said:?} (the prober {id}, stopped at {stopped_at})"
    );
    let others: Vec<_> = (0..fleet.len()).filter(|&i| i != prober).collect();
    let peers = || cluster(&fleet[others[0]])["peers"].to_string();
    assert!(eventually(WAIT, || !peers().contains(&id)), "{}", peers());
    fleet.remove(prober);
}

/// A re-review (2026-12-05): a probe that the drain deadline cut kept the draining
/// instance's cluster thread waiting for its outcome until the process exited, still in the
/// list of instances and holding the lease, so no instance probed until its heartbeat had
/// lapsed, 6 s later. A drain that is over gives the lease back and leaves at once.
#[test]
fn a_probe_the_drain_deadline_cuts_gives_its_lease_back() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("drain-cut");
    let member = || {
        gateway_at(&write_config(&config(
            2,
            &format!(
                "admin: 127.0.0.1:0\nbreaker: {{failure_threshold: 2, cooldown: 2s}}\n\
                 timeouts: {{response: 20s, drain: 1s}}\n\
                 cluster: {{redis: {}, name: {name}}}",
                redis.url()
            ),
            &format!("  svc: [http://{}]\n", rec.addr),
        )))
    };
    let mut fleet: Vec<AdminGateway> = (0..3).map(|_| member()).collect();
    assert!(eventually(WAIT, || fleet.iter().all(cluster_up)));
    // The probe outlasts the drain deadline.
    let (prober, opened, load) = hanging_probe_under_load(&fleet, &rec);
    signal(&fleet[prober].proc.child, libc::SIGTERM);
    let child = &mut fleet[prober].proc.child;
    exit_status(
        child,
        Instant::now(),
        WAIT,
        "the draining instance did not exit",
    );
    let gone = Instant::now();
    // The next probe comes from another instance, well before the 5 s a heartbeat takes to
    // lapse.
    let next = eventually(Duration::from_secs(3), || rec.requests() - opened >= 2);
    let waited = gone.elapsed();
    load.end();
    assert!(next, "no next probe {waited:?} after the prober left");
    fleet.remove(prober);
}

/// A review: an instance without requests for a backend won the fleet's probe lease as
/// often as one with them, held it unused for its 3 s grant, and asked again on equal
/// terms, so with three idle instances of four the one with traffic got its first answer
/// 6 to 21 s past the fleet's cooldown. Only an instance with traffic asks now.
#[test]
fn the_instance_with_traffic_gets_the_fleets_probe() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("probe-traffic");
    let breaker = "{failure_threshold: 2, cooldown: 2s}";
    let fleet = fleet_of(4, &redis, &name, 1, breaker, rec.addr);
    let busy = &fleet[3];
    // Two rounds: an idle instance would win the first race three times in four.
    for round in 0..2 {
        rec.set(reply(500));
        fail(&fleet[0], 2);
        let opened = Instant::now();
        assert!(eventually(WAIT, || backend(busy).0 == "open"), "{round}");
        rec.set(reply(200));
        // Only `busy` has traffic: its first answer comes when the 2 s cooldown ends, not
        // a 3 s grant of an idle instance's later.
        let answered = answers_within(busy, Duration::from_secs(15));
        let took = opened.elapsed();
        assert!(
            answered && took < Duration::from_millis(4500),
            "round {round}: first answer after {took:?}"
        );
        assert!(
            eventually(WAIT, || fleet.iter().all(|g| backend(g).0 == "closed")),
            "round {round}: the fleet did not close"
        );
    }
}

#[test]
fn the_fleet_opens_once_the_quorum_of_instances_has_opened() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("quorum");
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let fleet = fleet_of(3, &redis, &name, 2, breaker, rec.addr);
    // One instance with a bad path of its own opens locally only.
    fail(&fleet[0], 2);
    assert_eq!(status(&fleet[0]), 503);
    // Give the cluster threads many rounds to (wrongly) propagate it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        backend(&fleet[2]).0,
        "closed",
        "one instance opened the fleet"
    );
    fail(&fleet[1], 2);
    let before = rec.requests();
    assert!(
        eventually(WAIT, || backend(&fleet[2]).0 == "open"),
        "two instances did not open the fleet"
    );
    assert_eq!(status(&fleet[2]), 503);
    assert_eq!(rec.requests(), before);
    assert_eq!(backend(&fleet[2]).1, "remote");
}

/// Regression (a fleet review): an instance whose own probe began before the quorum opened
/// the fleet (its circuit had opened on its own, below the quorum) closed the fleet's
/// circuit for every instance when the probe's answer came, and they failed again. A close
/// now counts as of its probe's admission.
#[test]
fn a_probe_begun_before_the_fleet_opened_does_not_close_it() {
    probe_begun_before_the_fleet_opened(false);
}

/// The same with an upload as the probe: each part of its body that goes up renews the
/// probe's lease, which moves its word's time on, and the close was stamped with the last
/// renewal, after the fleet's open (a re-review).
#[test]
fn an_upload_probe_begun_before_the_fleet_opened_does_not_close_it() {
    probe_begun_before_the_fleet_opened(true);
}

fn probe_begun_before_the_fleet_opened(upload: bool) {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name(if upload { "old-upload" } else { "old-probe" });
    let breaker = "{failure_threshold: 2, cooldown: 1s}";
    let fleet = fleet_of(3, &redis, &name, 2, breaker, rec.addr);
    // C alone: its own circuit opens, below the quorum.
    fail(&fleet[2], 2);
    assert_eq!(backend(&fleet[2]), ("open".into(), "local".into()));
    // An upload may probe a second after a request with its body in hand may.
    std::thread::sleep(Duration::from_millis(if upload { 2100 } else { 1100 }));
    // Its probe goes out after the cooldown and is answered late, with a success.
    rec.set(Mode::Delayed(Duration::from_millis(1500), reply_bytes(200)));
    let before = rec.requests();
    let c = fleet[2].proc.addr;
    let probe = std::thread::spawn(move || {
        if !upload {
            return get(c, "/v1/proxy/svc/x").status;
        }
        let mut client = Client::connect(c);
        client.send(b"POST /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\nContent-Length: 10\r\n\r\n");
        // Well within the second a probe's client may keep it waiting before it hands the
        // probe back (at 100 ms a byte, the last came just as it did).
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(50));
            client.send(b"x");
        }
        client.read_response().status
    });
    assert!(eventually(WAIT, || rec.requests() > before), "no probe");
    rec.set(reply(500));
    // Meanwhile A and B fail: the quorum opens the fleet.
    fail(&fleet[0], 2);
    fail(&fleet[1], 2);
    assert!(eventually(WAIT, || backend(&fleet[0]).0 == "open"
        && backend(&fleet[1]).0 == "open"));
    assert_eq!(probe.join().ok(), Some(200), "the probe's own answer");
    // C's late success is its own: the fleet's circuit stays open for A and B.
    std::thread::sleep(Duration::from_millis(300));
    for g in &fleet[..2] {
        assert_eq!(backend(g).0, "open", "an old probe closed the fleet");
    }
    assert_eq!(backend(&fleet[2]).0, "closed");
}

/// Three members of fleet `test` (quorum 1, threshold 2, cooldown 1 s) whose backend
/// fails; the first opens the fleet's circuit, then Redis is paused (`SIGSTOP`, its data
/// kept) until the first two see it gone. `redis.signal("-CONT")` resumes it.
fn opened_then_redis_paused(test: &str) -> (Redis, Recorder, Vec<AdminGateway>) {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name(test);
    let breaker = "{failure_threshold: 2, cooldown: 1s}";
    let fleet = fleet_of(3, &redis, &name, 1, breaker, rec.addr);
    fail(&fleet[0], 2);
    assert!(eventually(WAIT, || fleet
        .iter()
        .all(|g| backend(g).0 == "open")));
    redis.signal("-STOP");
    assert!(eventually(WAIT, || fleet[..2]
        .iter()
        .all(|g| !cluster_up(g))));
    (redis, rec, fleet)
}

/// Regression (a re-review of the fix above, which let only the lease's holder close a fleet
/// open): instances that closed their circuits on their own while Redis was away (they
/// decide alone then, with no lease to hold) could no longer close the fleet's when it
/// came back, and an idle instance kept refusing the healthy backend. Their closes, begun
/// after the fleet's open, are newer, and win as the README says.
#[test]
fn closes_made_while_redis_was_away_close_the_fleet_when_it_returns() {
    // Redis stops answering, its data kept; the backend recovers, and A and B, which have
    // traffic, probe and close on their own. C has none.
    let (redis, rec, fleet) = opened_then_redis_paused("outage-close");
    rec.set(reply(200));
    for g in &fleet[..2] {
        assert!(eventually(WAIT, || status(g) == 200), "{:?}", backend(g));
    }
    redis.signal("-CONT");
    // Back: the closes are newer than the open, and close it for C too.
    assert!(
        eventually(WAIT, || backend(&fleet[2]).0 == "closed"),
        "the idle instance kept the fleet's open: {:?}",
        backend(&fleet[2])
    );
    assert_eq!(status(&fleet[2]), 200);
}

/// Regression (a re-review of the close's stamp): a quick probe the cluster thread never saw
/// running was stamped with the earliest its circuit allowed one, the fleet's open plus a
/// cooldown, however long the circuit had sat open since; another instance's reopen made
/// in between then beat it, and the healthy backend was refused again. The stamp is now the
/// last scan that found no probe running.
#[test]
fn a_quick_probe_after_a_long_open_closes_the_fleet_over_an_older_reopen() {
    let (redis, rec, fleet) = opened_then_redis_paused("quick-probe");
    // B probes on its own while the backend still fails: its circuit reopens, twice.
    for _ in 0..2 {
        assert!(
            eventually(WAIT, || status(&fleet[1]) == 500),
            "B never probed: {:?}",
            backend(&fleet[1])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The backend recovers; A, open since the fleet's open, probes at once and closes.
    rec.set(reply(200));
    assert_eq!(status(&fleet[0]), 200, "{:?}", backend(&fleet[0]));
    redis.signal("-CONT");
    // A's close is newer than B's reopens: it closes the fleet, C included, and A stays.
    assert!(
        eventually(WAIT, || backend(&fleet[2]).0 == "closed"),
        "C kept an open: {:?}",
        backend(&fleet[2])
    );
    assert_eq!(backend(&fleet[0]).0, "closed");
    assert_eq!(status(&fleet[2]), 200);
}

/// Regression (a fleet review): with a quorum above one, a Redis restarted empty (or
/// flushed) lost every open circuit for good: an instance's own open, republished, was
/// under the quorum, and those following the fleet had none of their own. An instance
/// started then served the failing backend. Instances that keep a fleet open now put its
/// record back.
#[test]
fn a_fleet_open_survives_a_redis_that_lost_its_data() {
    let mut redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("lost-open");
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let fleet = fleet_of(3, &redis, &name, 2, breaker, rec.addr);
    fail(&fleet[0], 2);
    fail(&fleet[1], 2);
    assert!(eventually(WAIT, || backend(&fleet[2]).0 == "open"));
    let state = |r: &Redis| record_state(r, &key);
    let put_back = |r: &Redis| eventually(WAIT, || state(r) == "open");
    // Flushed under a running fleet, then restarted empty.
    assert!(redis.send("FLUSHALL\r\n", "\r\n").starts_with("+OK"));
    assert!(
        put_back(&redis),
        "not put back after FLUSHALL: {}",
        state(&redis)
    );
    let port = redis.port;
    redis.stop();
    let redis = Redis::on(port);
    assert!(
        put_back(&redis),
        "not put back after a restart: {}",
        state(&redis)
    );
    // An instance started now finds the circuit open, and sends the backend nothing.
    let before = rec.requests();
    let late = member(&redis, &name, 2, breaker, rec.addr);
    assert_eq!(status(&late), 503);
    assert_eq!(
        rec.requests(),
        before,
        "the new instance hit the failing backend"
    );
    for g in &fleet {
        assert_eq!(backend(g).0, "open");
    }
}

/// Regression (a fleet review): a restarted instance has a new name, and its old name's open
/// still counted towards the quorum, so the restarted one opened the fleet alone when its
/// path failed again. Only instances with a live heartbeat count now, and a draining one
/// leaves the list at once; a killed one counts until its heartbeat lapses (5 s).
#[test]
fn a_restarted_or_killed_instance_is_not_counted_twice_towards_the_quorum() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("requorum");
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let b = member(&redis, &name, 2, breaker, rec.addr);
    for how in ["drained", "killed"] {
        let a = member(&redis, &name, 2, breaker, rec.addr);
        assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
        fail(&a, 2);
        assert_eq!(status(&a), 503, "{how}");
        if how == "drained" {
            // Gone from the list well before its heartbeat (5 s) would lapse.
            let id = cluster(&a)["instance"].clone();
            assert!(id.is_string(), "{id}");
            let listed = || {
                cluster(&b)["peers"]
                    .as_array()
                    .is_some_and(|p| p.contains(&id))
            };
            assert!(eventually(WAIT, listed));
            let drained = std::time::Instant::now();
            signal(&a.proc.child, libc::SIGTERM);
            assert!(eventually(WAIT, || !listed()), "{}", cluster(&b));
            assert!(
                drained.elapsed() < Duration::from_secs(3),
                "left after {:?}",
                drained.elapsed()
            );
        } else {
            signal(&a.proc.child, libc::SIGKILL);
            std::thread::sleep(Duration::from_millis(5500));
        }
        drop(a);
        let again = member(&redis, &name, 2, breaker, rec.addr);
        assert!(eventually(WAIT, || cluster_up(&again)));
        fail(&again, 2);
        assert_eq!(status(&again), 503, "{how}");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(backend(&b).0, "closed", "{how}: one path opened the fleet");
        drop(again);
        // Its open counts while its heartbeat lasts: let it lapse for the next round.
        std::thread::sleep(Duration::from_millis(5500));
    }
    // Two live instances still open it.
    let a = member(&redis, &name, 2, breaker, rec.addr);
    let c = member(&redis, &name, 2, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&c)));
    fail(&a, 2);
    fail(&c, 2);
    assert!(
        eventually(WAIT, || backend(&b).0 == "open"),
        "two did not open it"
    );
}

#[test]
fn without_redis_every_instance_serves_and_decides_alone_then_merges() {
    let mut redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("outage");
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let a = member(&redis, &name, 1, breaker, rec.addr);
    let b = member(&redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    assert!(eventually(WAIT, || !cluster(&a)["peers"]
        .as_array()
        .is_none_or(|p| p.is_empty())));
    let port = redis.port;
    redis.stop();
    // Both keep serving, and say that Redis is gone.
    for g in [&a, &b] {
        assert_eq!(status(g), 200);
    }
    assert!(eventually(WAIT, || !cluster_up(&a) && !cluster_up(&b)));
    // With Redis gone, no peer is known (the list used to stay as it was).
    assert_eq!(cluster(&a)["peers"], serde_json::json!([]));
    let text = metrics(&a);
    assert!(text.contains("gateway_cluster_up 0"), "{text}");
    // Local breakers still work, each on its own.
    rec.set(reply(500));
    fail(&a, 2);
    assert_eq!(status(&a), 503);
    fail(&b, 1);
    // Redis returns (empty): A republishes its open circuit and B merges it.
    let _back = Redis::on(port);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    // Watched through the admin API: a request to B would count as B's own second failure.
    assert!(
        eventually(WAIT, || backend(&b) == ("open".into(), "remote".into())),
        "the open circuit was not merged after Redis returned"
    );
    assert_eq!(status(&b), 503);
}

#[test]
fn a_restarted_instance_starts_with_the_fleets_open_circuit() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("restart");
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let a = member(&redis, &name, 1, breaker, rec.addr);
    let b = member(&redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    fail(&a, 2);
    assert!(eventually(WAIT, || backend(&b).0 == "open"));
    drop(b);
    let before = rec.requests();
    let b = member(&redis, &name, 1, breaker, rec.addr);
    // The very first request after the restart already finds the circuit open.
    assert_eq!(status(&b), 503);
    assert_eq!(
        rec.requests(),
        before,
        "the restarted instance hit the backend"
    );
    assert_eq!(backend(&b), ("open".into(), "remote".into()));
}

/// An operator review: an instance started while the fleet had a circuit open took the
/// open as made at its own start (its clock could not go back further), and refused a
/// recovered backend for a whole cooldown more (19 s where the fleet's ended at 10 s).
#[test]
fn an_instance_started_late_in_a_fleets_cooldown_probes_when_it_ends() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("late-start");
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    // Opened by another instance 27 s of a 30 s cooldown ago.
    let opened = unix_ms() - 27_000;
    write_record(&redis, &key, "open", &opened.to_string(), "gone");
    let a = member(
        &redis,
        &name,
        1,
        "{failure_threshold: 2, cooldown: 30s}",
        rec.addr,
    );
    assert!(eventually(WAIT, || cluster_up(&a)));
    let v = get(a.admin, "/admin/backends").json();
    let b = &v["services"][0]["backends"][0];
    assert_eq!(b["state"], "open", "{v}");
    let next = b["next_probe_in_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(next <= 3_000, "the cooldown began at the start: {v}");
    // The probe goes through when the fleet's cooldown ends, and closes the circuit.
    assert!(
        eventually(Duration::from_secs(10), || status(&a) == 200),
        "still refused: {:?}",
        backend(&a)
    );
}

/// One instance of fleet `test` (quorum 1, cooldown 30 s) in front of a healthy backend,
/// synced with `redis`.
fn lone_member(redis: &Redis, test: &str) -> (Recorder, String, AdminGateway) {
    let rec = Recorder::start(reply(200));
    let name = fleet_name(test);
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let a = member(redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a)));
    (rec, name, a)
}

#[test]
fn a_stalled_redis_never_stalls_a_request() {
    let redis = Redis::start();
    let (rec, _name, a) = lone_member(&redis, "stall");
    // SIGSTOP: connections stay open but nothing is answered (the worst case for a client).
    signal(&redis.child, libc::SIGSTOP);
    for _ in 0..20 {
        assert_eq!(status(&a), 200);
    }
    assert!(eventually(WAIT, || !cluster_up(&a)));
    rec.set(reply(500));
    fail(&a, 2);
    assert_eq!(status(&a), 503, "the local breaker did not open");
    signal(&redis.child, libc::SIGCONT);
    assert!(eventually(WAIT, || cluster_up(&a)));
}

#[test]
fn without_cluster_config_there_is_no_cluster() {
    let rec = Recorder::start(reply(200));
    let g = gateway_at(&write_config(&config(
        1,
        "admin: 127.0.0.1:0",
        &format!("  svc: [http://{}]\n", rec.addr),
    )));
    assert_eq!(cluster(&g)["enabled"], false);
    assert_eq!(backend(&g).1, "local");
    assert!(!metrics(&g).contains("gateway_cluster_up"));
}

/// A `scope: cluster` budget of 100/s, burst 10, shared by two instances under uneven load
/// (three clients on one, one on the other) for 3 s: together they admit
/// `burst + rate × T`, within 5% (the documented slack is one 50 ms slice per instance),
/// and the backend sees exactly the admitted requests. With Redis gone each instance
/// falls back to the limit on its own.
#[test]
fn a_fleet_budget_is_shared_under_uneven_load() {
    let mut redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("budget");
    let start = |redis: &Redis| {
        gateway_at(&write_config(&config(
            2,
            &format!(
                "admin: 127.0.0.1:0\ncluster: {{redis: {}, name: {name}}}",
                redis.url()
            ),
            &format!(
                "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 100/s, burst: 10, scope: cluster}}\n",
                rec.addr
            ),
        )))
    };
    let a = start(&redis);
    let b = start(&redis);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    std::thread::sleep(Duration::from_millis(300)); // the first slices are taken
    let admitted = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let t0 = std::time::Instant::now();
    let run = Duration::from_secs(3);
    let threads: Vec<_> = [a.proc.addr, a.proc.addr, a.proc.addr, b.proc.addr]
        .into_iter()
        .map(|addr| {
            let (admitted, limited) = (admitted.clone(), limited.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while t0.elapsed() < run {
                    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
                    match c.read_response().status {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        s => panic!("unexpected status {s}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let want = 10.0 + 100.0 * secs;
    let got = admitted.load(Ordering::SeqCst) as f64;
    println!("fleet budget: admitted {got} in {secs:.2} s (expected {want:.0})");
    assert!(
        (got - want).abs() <= 0.05 * want,
        "admitted {got} in {secs:.2} s, expected {want:.0} ± 5% ({} answered 429)",
        limited.load(Ordering::SeqCst)
    );
    assert!(limited.load(Ordering::SeqCst) > 0);
    assert_eq!(
        rec.requests() as f64,
        got,
        "a refused request reached the backend"
    );
    // Redis gone: each instance limits on its own, and keeps serving.
    redis.stop();
    assert!(eventually(WAIT, || !cluster_up(&a) && !cluster_up(&b)));
    std::thread::sleep(Duration::from_millis(200)); // the local budgets refill
    for g in [&a, &b] {
        assert_eq!(get(g.proc.addr, "/v1/proxy/svc/x").status, 200);
    }
}

#[test]
fn uploads_alone_still_get_the_fleet_probe() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("uploads");
    let breaker = "{failure_threshold: 1, cooldown: 3s}";
    let fleet = fleet_of(2, &redis, &name, 1, breaker, rec.addr);
    fail(&fleet[0], 1);
    assert!(eventually(WAIT, || fleet.iter().all(|g| status(g) == 503)));
    rec.set(reply(200));
    // From now on only uploads whose body follows the head: never in hand when a backend
    // is picked, so each may probe only once the circuit has been due a while.
    let started = Instant::now();
    let mut answers = Vec::new();
    let recovered = loop {
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
        let g = &fleet[answers.len() % 2];
        let mut c = Client::connect(g.proc.addr);
        c.send(
            b"POST /v1/proxy/svc/up HTTP/1.1\r\nHost: gw\r\ncontent-length: 20\r\n\r\n0123456789",
        );
        std::thread::sleep(Duration::from_millis(50));
        c.send(b"0123456789");
        let status = c.try_read_response(false).map(|r| r.status).unwrap_or(0);
        answers.push(status);
        if status == 200 {
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        recovered,
        "no upload probed in 20 s (cooldown 3 s): {answers:?}"
    );
}

/// The cluster thread speaks to Redis through its own bounded link (`redis_link.rs`),
/// which does the handshake itself: a password and a database number must still work.
#[test]
fn a_fleet_behind_a_password_and_a_database_number_shares_its_circuits() {
    let port = free_port();
    let redis = Redis::with(port, &["--requirepass", "s3cret"]);
    let rec = Recorder::start(reply(500));
    let name = fleet_name("auth");
    let member = || {
        gateway_at(&write_config(&config(
            2,
            &format!(
                "admin: 127.0.0.1:0\nbreaker: {{failure_threshold: 2, cooldown: 30s}}\n\
                 cluster: {{redis: \"redis://:s3cret@127.0.0.1:{port}/3\", name: {name}}}"
            ),
            &format!("  svc: [http://{}]\n", rec.addr),
        )))
    };
    let (a, b) = (member(), member());
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    // /admin/config shows the cluster section, the password masked.
    let shown = get(a.admin, "/admin/config").json();
    assert_eq!(
        shown["cluster"]["redis"],
        format!("redis://***@127.0.0.1:{port}/3"),
        "{shown}"
    );
    assert_eq!(shown["timeouts"]["response"], "30s", "{shown}");
    assert_eq!(shown["dns_refresh"], "off", "{shown}");
    fail(&a, 2);
    assert!(
        eventually(WAIT, || backend(&b) == ("open".into(), "remote".into())),
        "the open circuit never reached the other instance"
    );
    // Written to database 3, not 0.
    let text = redis.send(
        "AUTH s3cret\r\nSELECT 3\r\nDBSIZE\r\nSELECT 0\r\nDBSIZE\r\n",
        ":0\r\n",
    );
    assert!(
        text.starts_with("+OK\r\n+OK\r\n:") && !text.starts_with("+OK\r\n+OK\r\n:0\r\n"),
        "{text}"
    );
}

/// Regression (a fleet review): a password changed under a running fleet showed in the log
/// only as the dropped connection that came first ("unreachable (... closed the
/// connection)"); every reconnect then failed with WRONGPASS, which was never said. A new
/// kind of failure during an outage is said once.
/// Regression (an operator review): started with Redis out of reach, the start line said
/// "0 circuit(s) open in the fleet", a count nobody knew.
#[test]
fn started_without_redis_the_start_line_claims_no_count() {
    let rec = Recorder::start(reply(200));
    let log = LogFile::new("nocount");
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let breaker = "{failure_threshold: 5, cooldown: 30s}";
    let path = member_config_at(&url, &fleet_name("nocount"), 1, breaker, rec.addr);
    let g = gateway_at_logging_to(&path, &log.path);
    assert!(
        eventually(WAIT, || log
            .count("unreachable, deciding locally until it answers")
            == 1),
        "{}",
        log.text()
    );
    assert_eq!(
        log.count("circuit(s) open in the fleet"),
        0,
        "{}",
        log.text()
    );
    assert_eq!(status(&g), 200);
}

/// Regression (an operator review): an instance that joined or left the fleet was known to
/// `/admin/cluster` alone; the log said nothing.
#[test]
fn instances_joining_and_leaving_the_fleet_are_said_in_the_log() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("peers");
    let breaker = "{failure_threshold: 5, cooldown: 30s}";
    let log = LogFile::new("peers");
    let a = gateway_at_logging_to(
        &member_config(&redis, &name, 1, breaker, rec.addr),
        &log.path,
    );
    assert!(eventually(WAIT, || cluster_up(&a)));
    let b = member(&redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&b)));
    let id = cluster(&b)["instance"].as_str().map(String::from);
    let id = id.expect("an instance name");
    let joined = format!("cluster: {id} joined the fleet; 1 other instance(s) now");
    assert!(
        eventually(WAIT, || log.count(&joined) == 1),
        "{}",
        log.text()
    );
    // Regression (a review): after an outage longer than the peers' TTL, the first
    // heartbeat's list lacked the instances that had not beaten again yet, and each was
    // said to have left the fleet, then to have joined it a second later.
    signal(&redis.child, libc::SIGSTOP);
    assert!(eventually(WAIT, || !cluster_up(&a)));
    std::thread::sleep(Duration::from_secs(6));
    signal(&redis.child, libc::SIGCONT);
    assert!(
        eventually(WAIT, || log.count("is back after") == 1),
        "{}",
        log.text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(log.count("left the fleet"), 0, "{}", log.text());
    signal(&b.proc.child, libc::SIGKILL);
    let left = format!("cluster: {id} left the fleet; 0 other instance(s) now");
    assert!(eventually(WAIT, || log.count(&left) == 1), "{}", log.text());
    assert_eq!(log.count("joined the fleet"), 1, "{}", log.text());
    drop(b);
}

/// An operator review: an instance that could not listen (its port taken) had joined the
/// fleet before it tried, and its peers counted it, and shared their budgets with it, for
/// the 5 s its heartbeat lasted. The ports are tried first now.
#[test]
fn an_instance_that_cannot_listen_never_joins_the_fleet() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("no-listen");
    let breaker = "{failure_threshold: 5, cooldown: 30s}";
    let log = LogFile::new("no-listen");
    let a = gateway_at_logging_to(
        &member_config(&redis, &name, 1, breaker, rec.addr),
        &log.path,
    );
    assert!(eventually(WAIT, || cluster_up(&a)));
    let text = std::fs::read_to_string(member_config(&redis, &name, 1, breaker, rec.addr))
        .expect("config");
    let taken = text.replace("listen: 127.0.0.1:0", &format!("listen: {}", a.proc.addr));
    assert_ne!(taken, text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(write_config(&taken))
        .output()
        .expect("run gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    // Heartbeats are read every round (under a second apart): two seconds see any join.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(log.count("joined the fleet"), 0, "{}", log.text());
    assert_eq!(
        cluster(&a)["peers"],
        serde_json::json!([]),
        "{}",
        cluster(&a)
    );
}

/// An instance `ghost-peer` of fleet `name` beats now, as a heartbeat would.
fn ghost_beats(redis: &Redis, name: &str) {
    redis.send(
        &format!("ZADD {name}:instances {} ghost-peer\r\n", unix_ms()),
        ":",
    );
}

/// What [`haunted_member`] starts.
struct Haunted {
    a: AdminGateway,
    log: LogFile,
    redis: Redis,
    name: String,
    _rec: Recorder,
}

/// The log line of `ghost-peer` joining a fleet.
const GHOST_JOINED: &str = "cluster: ghost-peer joined the fleet";

/// A one-worker fleet member logging to its own file, up, with `ghost-peer` beaten once
/// and said to have joined.
fn haunted_member(test: &str) -> Haunted {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name(test);
    let log = LogFile::new(test);
    let a = gateway_at_logging_to(
        &member_config(
            &redis,
            &name,
            1,
            "{failure_threshold: 5, cooldown: 30s}",
            rec.addr,
        ),
        &log.path,
    );
    assert!(eventually(WAIT, || cluster_up(&a)));
    ghost_beats(&redis, &name);
    assert!(
        eventually(WAIT, || log.count(GHOST_JOINED) == 1),
        "{}",
        log.text()
    );
    Haunted {
        a,
        log,
        redis,
        name,
        _rec: rec,
    }
}

/// Regression (a re-review): a Redis restarted empty and back within a second has lost the
/// list of instances, and the first heartbeat after it said the others had left the fleet
/// (they joined again a second later). Here the other instance is one the test beats for.
#[test]
fn a_redis_restarted_empty_does_not_make_the_others_leave_the_fleet() {
    let Haunted {
        a: _a,
        log,
        redis,
        name,
        _rec,
    } = haunted_member("restart");
    let beat = |r: &Redis| ghost_beats(r, &name);
    let port = redis.port;
    drop(redis);
    let redis = Redis::on(port);
    assert!(
        eventually(WAIT, || log.count("is back after") == 1),
        "{}",
        log.text()
    );
    // The ghost beats again once the instance has (its first list had no ghost), and on.
    for _ in 0..12 {
        beat(&redis);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(log.count("left the fleet"), 0, "{}", log.text());
    assert_eq!(log.count(GHOST_JOINED), 1, "{}", log.text());
}

/// Regression (a review): a `FLUSHALL` with no outage took the list of instances away,
/// and each instance's next heartbeat found itself alone: both said the other left the
/// fleet, counted it out of the budgets' shares, and said it joined again once it beat.
/// A list found gone is now settled as after an outage: those known are kept until they
/// have had a peers' TTL to beat again.
#[test]
fn a_flushed_list_of_instances_does_not_make_the_others_leave_the_fleet() {
    let Haunted {
        a,
        log,
        redis,
        name,
        _rec,
    } = haunted_member("flushed");
    let beat = || ghost_beats(&redis, &name);
    assert!(redis.send("FLUSHALL\r\n", "\r\n").starts_with("+OK"));
    // The instance beats (once a second) with the ghost gone from the list, then the
    // ghost beats again, and on.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        cluster(&a)["peers"].to_string().contains("ghost-peer"),
        "counted out: {}",
        cluster(&a)
    );
    for _ in 0..12 {
        beat();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(log.count("left the fleet"), 0, "{}", log.text());
    assert_eq!(log.count(GHOST_JOINED), 1, "{}", log.text());
}

/// Regression (a re-review of the mend above): with the list flushed every 0.5 s, each
/// loss began the settling again, and an instance that had stopped beating stayed a peer,
/// unsaid, for as long as the flushing went on. One missing for a peers' TTL has left.
#[test]
fn an_instance_gone_while_the_list_keeps_being_flushed_is_said_to_leave() {
    let Haunted {
        a,
        log,
        redis,
        _rec,
        ..
    } = haunted_member("flushing");
    // The ghost beats no more; the list is flushed every 400 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (stop, port) = (stop.clone(), redis.port);
        std::thread::spawn(move || {
            let mut con = TcpStream::connect(("127.0.0.1", port)).expect("redis");
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                con.write_all(b"FLUSHALL\r\n").expect("flush");
                let _ = con.read(&mut buf).expect("reply");
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    let left = eventually(Duration::from_secs(10), || {
        log.count("cluster: ghost-peer left the fleet") == 1
    });
    let peers = cluster(&a)["peers"].to_string();
    stop.store(true, Ordering::Relaxed);
    flusher.join().expect("flusher");
    assert!(
        left,
        "never said to leave while the flushing went on: {}",
        log.text()
    );
    assert!(!peers.contains("ghost-peer"), "still a peer: {peers}");
    assert_eq!(log.count(GHOST_JOINED), 1, "{}", log.text());
}

#[test]
fn a_password_changed_under_the_fleet_is_said_in_the_log() {
    let port = free_port();
    let redis = Redis::with(port, &["--requirepass", "s3cret"]);
    let rec = Recorder::start(reply(200));
    let name = fleet_name("repass");
    let log =
        std::env::temp_dir().join(format!("gateway-cluster-{}-repass.log", std::process::id()));
    let g = gateway_at_logging_to(
        &write_config(&config(
            1,
            &format!("admin: 127.0.0.1:0\ncluster: {{redis: \"redis://:s3cret@127.0.0.1:{port}\", name: {name}}}"),
            &format!("  svc: [http://{}]\n", rec.addr),
        )),
        &log,
    );
    assert!(eventually(WAIT, || cluster_up(&g)));
    let said = redis.send(
        "AUTH s3cret\r\nCONFIG SET requirepass n3w\r\nCLIENT KILL TYPE normal SKIPME yes\r\n",
        ":",
    );
    assert!(said.starts_with("+OK\r\n+OK\r\n:"), "{said}");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        eventually(WAIT, || text().contains("still unreachable, now:")
            && text().contains("WRONGPASS")),
        "{}",
        text()
    );
    assert_eq!(text().matches("still unreachable").count(), 1, "{}", text());
    // Said as this instance's own setting, not Redis's health; and without the crate's
    // ` - Io` after the dropped connection that came first.
    assert!(
        text().contains("check the user, password and database number in cluster.redis"),
        "{}",
        text()
    );
    assert!(!text().contains(" - Io"), "{}", text());
    assert!(!cluster_up(&g));
    drop(g);
    let _ = std::fs::remove_file(&log);
}

/// Regression: a fleet record stamped ten minutes ahead (an instance whose clock runs fast,
/// simulated by writing it) kept every instance's circuit open, with no probe, for those ten
/// minutes, and outranked every real transition in Redis. Now it counts from now, and the
/// probe's close replaces it.
#[test]
fn an_open_stamped_in_the_future_lasts_one_cooldown() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("future");
    let a = member(
        &redis,
        &name,
        1,
        "{failure_threshold: 2, cooldown: 1s}",
        rec.addr,
    );
    assert!(eventually(WAIT, || cluster_up(&a)));
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    let future = unix_ms() + 600_000;
    write_record(&redis, &key, "open", &future.to_string(), "fast");
    assert!(
        eventually(WAIT, || backend(&a).0 == "open"),
        "the record was not applied"
    );
    // One cooldown later the probe goes through, closes the circuit, and the close wins.
    assert!(
        eventually(Duration::from_secs(5), || status(&a) == 200),
        "still refused: {:?}",
        backend(&a)
    );
    assert!(eventually(WAIT, || redis
        .send(&format!("HGET {key} state\r\n"), "\r\n")
        .contains("closed")));
}

/// Regression: a record older than the transition an instance last took from the fleet
/// (what a Redis restarted without its data holds once an instance that missed the newer
/// transition republishes its own, or a stray writer's) reopened the instance's closed
/// circuit for a cooldown, refusing a healthy backend.
#[test]
fn a_stale_record_does_not_undo_a_newer_transition() {
    let redis = Redis::start();
    let (rec, name, a) = lone_member(&redis, "stale");
    let now = unix_ms();
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    let write = |state: &str, at: u64, who: &str| {
        write_record(&redis, &key, state, &at.to_string(), who);
    };
    write("open", now - 3_000, "b");
    assert!(eventually(WAIT, || backend(&a) == ("open".into(), "remote".into())));
    assert_eq!(status(&a), 503);
    write("closed", now - 1_000, "c");
    assert!(eventually(WAIT, || backend(&a).0 == "closed"));
    // The older open, as a Redis that lost its data would hold it.
    write("open", now - 2_000, "b");
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(backend(&a).0, "closed", "the stale open was applied");
        assert_eq!(status(&a), 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    // The thread kept reading the fleet all along: it saw the record and passed it over,
    // and put the newer one back for instances that never saw it (a re-review: an older
    // open put back after Redis lost its data outranked the fleet's close for them).
    let ago = cluster(&a)["last_sync_ms_ago"].as_u64();
    assert!(ago.is_some_and(|ms| ms < 500), "{:?}", cluster(&a));
    assert_eq!(
        record_state(&redis, &key),
        "closed",
        "the newer close not put back"
    );
    // A newer transition still counts.
    write("open", now + 1_000, "d");
    assert!(eventually(WAIT, || backend(&a).0 == "open"));
}

/// Regression: a Redis (or anything posing as one) that announced a two-billion-element
/// array made the `redis` crate's parser allocate until the process aborted, taking the
/// traffic with it, while `/admin/cluster` still said `up`. The reply is now refused as it
/// is framed; the instance goes `down` and serves on, deciding locally.
#[test]
fn a_hostile_redis_reply_neither_grows_memory_nor_stops_the_gateway() {
    let fake = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = fake.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in fake.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {
                    // Announce a huge array, then trickle elements forever.
                    if s.write_all(b"*2000000000\r\n").is_err() {
                        return;
                    }
                    for _ in 0..200 {
                        if s.write_all(&b":1\r\n".repeat(1000)).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let rec = Recorder::start(reply(200));
    let g = gateway_at(&write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\ncluster: {{redis: redis://127.0.0.1:{port}/0, name: {}}}",
            fleet_name("hostile")
        ),
        &format!("  svc: [http://{}]\n", rec.addr),
    )));
    let rss =
        |g: &AdminGateway| sample(&metrics(g), "process_resident_memory_bytes").unwrap_or(0.0);
    let before = rss(&g);
    let end = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < end {
        assert_eq!(status(&g), 200);
        assert!(!cluster_up(&g), "{}", cluster(&g));
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss(&g);
    assert!(
        after < before + 64.0 * 1024.0 * 1024.0,
        "resident memory grew from {before} to {after}"
    );
}

/// A TCP proxy in front of Redis that holds each reply chunk `delay` before passing it on:
/// a Redis that answers, slowly.
fn slow_redis(redis: &Redis, delay: Duration) -> u16 {
    flapping_redis(redis, delay, None, None)
}

/// [`slow_redis`], slow only every other `every` (from when it starts) when given, and
/// never after `calm_after`.
fn flapping_redis(
    redis: &Redis,
    delay: Duration,
    every: Option<Duration>,
    calm_after: Option<Duration>,
) -> u16 {
    let started = Instant::now();
    let slow_now = move || {
        let t = started.elapsed();
        calm_after.is_none_or(|c| t < c)
            && every.is_none_or(|e| (t.as_millis() / e.as_millis().max(1)) % 2 == 1)
    };
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let target = redis.port;
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let (mut c_in, mut s_out) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    if slow_now() {
                        std::thread::sleep(delay);
                    }
                    if c_out.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A one-worker fleet member on the Redis at `port`, its service `svc` on `backend` under
/// `limit`.
fn limited_member(port: u16, test: &str, limit: &str, backend: SocketAddr) -> AdminGateway {
    gateway_at(&write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\ncluster: {{redis: redis://127.0.0.1:{port}/0, name: {}}}",
            fleet_name(test)
        ),
        &format!("  svc:\n    backends: [http://{backend}]\n    rate_limit: {limit}\n"),
    )))
}

/// Requests sent one after another on one connection for `run`: how many were admitted
/// (200; a 429 waits a millisecond), and the seconds it took.
fn admitted_within(addr: SocketAddr, run: Duration) -> (usize, f64) {
    let t0 = Instant::now();
    let mut c = Client::connect(addr);
    let mut admitted = 0usize;
    while t0.elapsed() < run {
        c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
        match c.read_response().status {
            200 => admitted += 1,
            429 => std::thread::sleep(Duration::from_millis(1)),
            s => panic!("unexpected status {s}"),
        }
    }
    (admitted, t0.elapsed().as_secs_f64())
}

/// A fleet member with `rate_limit_headers: true` and `svc` limited to `limit`.
fn headers_member(redis: &Redis, test: &str, limit: &str, backend: SocketAddr) -> AdminGateway {
    gateway_at(&write_config(&config(
        1,
        &format!(
            "admin: 127.0.0.1:0\nrate_limit_headers: true\ncluster: {{redis: redis://127.0.0.1:{}/0, name: {}}}",
            redis.port,
            fleet_name(test)
        ),
        &format!("  svc:\n    backends: [http://{backend}]\n    rate_limit: {limit}\n"),
    )))
}

/// The `r` of a `RateLimit` field.
fn remaining(r: &Response) -> Option<u64> {
    r.header("ratelimit")?
        .split(';')
        .find_map(|p| p.strip_prefix("r="))?
        .parse()
        .ok()
}

/// Regression (a review): at a low rate a slice (50 ms of it) was one request, so an
/// instance could admit no two requests within a top-up round: a client sending pairs of
/// requests at a third of a 20/s budget, burst 10, had every second one refused. A slice
/// now holds at least this instance's share of half the burst. And `r` promises only what
/// this instance admits at once: counting what the fleet had left too (tried first), a
/// second review sent `r` requests at once and had half of them refused.
#[test]
fn pairs_well_under_a_low_fleet_rate_are_all_admitted_and_r_requests_at_once_too() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let limit = "{rate: 20/s, burst: 10, scope: cluster}";
    let (a, b) = (
        headers_member(&redis, "pairs", limit, rec.addr),
        headers_member(&redis, "pairs", limit, rec.addr),
    );
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    assert!(eventually(WAIT, || cluster(&a)["peers"]
        .as_array()
        .is_some_and(|p| p.len() == 1)));
    std::thread::sleep(Duration::from_millis(300)); // the first slices are taken
    let mut conns = [Client::connect(a.proc.addr), Client::connect(a.proc.addr)];
    let mut statuses = Vec::new();
    for _ in 0..10 {
        for c in &mut conns {
            c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
        }
        for c in &mut conns {
            statuses.push(c.read_response().status);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // What one answer says is left, sent at once, is admitted whole.
    let mut c = Client::connect(a.proc.addr);
    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
    let first = c.read_response();
    assert_eq!(first.status, 200);
    let left = remaining(&first).expect("a RateLimit field");
    let burst = "GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n".repeat(left as usize);
    c.send(burst.as_bytes());
    let answers: Vec<u16> = (0..left).map(|_| c.read_response().status).collect();
    assert!(answers.iter().all(|&s| s == 200), "r={left}: {answers:?}");
}

/// Regression (a review): an instance took its first slices before its first heartbeat,
/// counting itself alone, so each instance started took half the burst and held it: three
/// started 1.2 s apart held 1.5 bursts between them, and a burst reaching all three
/// admitted 2.5 times the budget's. The heartbeat now comes first, and an instance that
/// hears of more instances lets go of what it holds past its new share.
#[test]
fn instances_of_a_fleet_hold_their_share_of_the_burst_not_half_each() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let limit = "{rate: 1/s, burst: 40, scope: cluster}";
    let a = headers_member(&redis, "share", limit, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a)));
    let held = |g: &AdminGateway| {
        let c = cluster(g);
        let b = &c["budgets"][0];
        (
            b["held"].as_u64(),
            b["slice"].as_u64(),
            b["instances"].as_u64(),
        )
    };
    // Alone, it holds half the burst.
    assert!(
        eventually(WAIT, || held(&a) == (Some(20), Some(20), Some(1))),
        "{:?}",
        held(&a)
    );
    let b = headers_member(&redis, "share", limit, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&b)));
    // Each of two: a quarter, the first once its heartbeat has heard of the second.
    for g in [&b, &a] {
        assert!(
            eventually(WAIT, || held(g) == (Some(10), Some(10), Some(2))),
            "{:?}",
            held(g)
        );
    }
}

/// Regression: slices of a fleet budget covered a fixed 50 ms, and the cluster thread tops
/// the allowance up once per tick: with Redis answering in 60 ms, one instance admitted
/// about a third of a 100/s budget (a review measured 336 of 510 for two), and at 200 ms
/// an eighth, while the instance reported the cluster up. A slice now covers twice the
/// time between top-ups.
#[test]
fn a_slow_redis_does_not_starve_a_fleet_budget() {
    let redis = Redis::start();
    let port = slow_redis(&redis, Duration::from_millis(60));
    let rec = Recorder::start(reply(200));
    let g = limited_member(
        port,
        "slow",
        "{rate: 100/s, burst: 50, scope: cluster}",
        rec.addr,
    );
    assert!(eventually(WAIT, || cluster_up(&g)));
    std::thread::sleep(Duration::from_millis(500)); // the first slices are taken
    let (admitted, secs) = admitted_within(g.proc.addr, Duration::from_secs(3));
    let most = 50.0 + 100.0 * secs;
    println!("slow redis: admitted {admitted} in {secs:.2} s, at most {most:.0}");
    assert!(cluster_up(&g), "{}", cluster(&g));
    // What the fleet's word allows, less what a slow top-up leaves unused at the edges.
    assert!(
        admitted as f64 >= 0.75 * most,
        "admitted {admitted} in {secs:.2} s, the budget allows {most:.0}"
    );
}

/// One top-up grants at most the burst: a burst smaller than what the rate asks for
/// between two top-ups starves a fleet budget while Redis counts as up (a review: burst 10
/// at 100/s admitted a fifth of the budget at 240 ms per round). The instance says so, and
/// what burst would do.
#[test]
fn a_fleet_budget_too_small_for_a_slow_redis_is_reported() {
    let redis = Redis::start();
    let port = slow_redis(&redis, Duration::from_millis(90));
    let rec = Recorder::start(reply(200));
    let log =
        std::env::temp_dir().join(format!("gateway-cluster-{}-starve.log", std::process::id()));
    let g = gateway_at_logging_to(
        &write_config(&config(
            1,
            &format!(
                "admin: 127.0.0.1:0\ncluster: {{redis: redis://127.0.0.1:{port}/0, name: {}}}",
                fleet_name("starve")
            ),
            &format!(
                "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 100/s, burst: 10, scope: cluster}}\n",
                rec.addr
            ),
        )),
        &log,
    );
    let mut text = String::new();
    let said = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("fleet budget svc:100:1:10: a round with Redis takes about")
            && text.contains("admits less than its rate")
    });
    assert!(cluster_up(&g), "{}", cluster(&g));
    // Said once while Redis stays as slow (it flapped: said again, and "keeps up again",
    // about once a second, whenever a round without the heartbeat came in quicker).
    std::thread::sleep(Duration::from_secs(4));
    text = std::fs::read_to_string(&log).unwrap_or_default();
    drop(g);
    let _ = std::fs::remove_file(&log);
    assert!(said, "{text}");
    assert_eq!(
        text.matches("admits less than its rate").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("keeps up again"), "{text}");
}

/// Regression: one key of the wrong type under the fleet's prefix (another application's,
/// say) made Redis answer WRONGTYPE, which failed every round: the instance went down for
/// every circuit and budget and flapped. Now only what uses that key is decided locally;
/// a list of instances of the wrong type leaves the instances without known peers.
#[test]
fn a_key_of_the_wrong_type_takes_out_only_what_uses_it() {
    let redis = Redis::start();
    let other = Recorder::start(reply(200));
    let rec = Recorder::start(reply(500));
    let name = fleet_name("wrongtype");
    let said = redis.send(
        &format!(
            "SET {name}:breaker:other:http://{} not-a-hash\r\n",
            other.addr
        ),
        "\r\n",
    );
    assert!(said.starts_with("+OK"), "{said}");
    // And the fleet's list of instances (a review: every heartbeat failed, and so took the
    // whole fleet out of sharing).
    let said = redis.send(&format!("SET {name}:instances garbage\r\n"), "\r\n");
    assert!(said.starts_with("+OK"), "{said}");
    let services = format!(
        "  other: [http://{}]\n  svc: [http://{}]\n",
        other.addr, rec.addr
    );
    let member = || fleet_member(&redis, &name, 2, &services);
    let (a, b) = (member(), member());
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    fail(&a, 2);
    assert!(
        eventually(WAIT, || state_in(&b, "svc") == "open"),
        "the open circuit never reached the other instance"
    );
    assert!(cluster_up(&a) && cluster_up(&b), "{}", cluster(&a));
    assert_eq!(get(b.proc.addr, "/v1/proxy/other/x").status, 200);
}

/// Regression (a review): a Redis that refused this instance everything (a user stripped
/// of every key, or out of memory) was said as an outage, but also blamed every key it
/// touched in a line of its own ("holds what cannot be used"). Such a Redis is now one
/// outage and no key; a key of the wrong type is still said, once.
#[test]
fn a_redis_that_refuses_everything_blames_no_key() {
    let redis = Redis::start();
    let said = redis.send("ACL SETUSER gw on >pw ~* &* +@all\r\n", "\r\n");
    assert!(said.starts_with("+OK"), "{said}");
    let (rec, other) = (Recorder::start(reply(200)), Recorder::start(reply(200)));
    let name = fleet_name("refused");
    let wrong = format!("{name}:breaker:other:http://{}", other.addr);
    let said = redis.send(&format!("SET {wrong} not-a-hash\r\n"), "\r\n");
    assert!(said.starts_with("+OK"), "{said}");
    let log = LogFile::new("refused");
    let g = gateway_at_logging_to(
        &write_config(&config(
            1,
            &format!(
                "admin: 127.0.0.1:0\ncluster: {{redis: \"redis://gw:pw@127.0.0.1:{}/0\", name: {name}}}",
                redis.port
            ),
            &format!(
                "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 1000/s, burst: 100, scope: cluster}}\n  other: [http://{}]\n",
                rec.addr, other.addr
            ),
        )),
        &log.path,
    );
    let (text, count) = (|| log.text(), |what: &str| log.count(what));
    assert!(eventually(WAIT, || cluster_up(&g)));
    assert!(eventually(WAIT, || count("Redis key") == 1), "{}", text());
    assert!(
        text().contains(&format!(
            "Redis key {wrong} (or one beside it) holds what cannot be used (WRONGTYPE Operation"
        )),
        "{}",
        text()
    );
    let refuse = |how: &str, undo: &str, why: &str| {
        let said = redis.send(&format!("{how}\r\n"), "\r\n");
        assert!(said.starts_with("+OK"), "{said}");
        assert!(eventually(WAIT, || !cluster_up(&g)), "{}", text());
        // Rounds go on failing alike for a while (reconnects, heartbeats).
        std::thread::sleep(Duration::from_millis(1500));
        for _ in 0..20 {
            assert_eq!(status(&g), 200);
        }
        assert!(
            text()
                .lines()
                .any(|l| l.contains("unreachable (") && l.contains(why)),
            "{}",
            text()
        );
        assert_eq!(count("Redis key"), 1, "a key was blamed:\n{}", text());
        let said = redis.send(&format!("{undo}\r\n"), "\r\n");
        assert!(said.starts_with("+OK"), "{said}");
        assert!(eventually(WAIT, || cluster_up(&g)), "{}", text());
    };
    refuse("ACL SETUSER gw resetkeys", "ACL SETUSER gw ~*", "NOPERM");
    refuse("CONFIG SET maxmemory 1", "CONFIG SET maxmemory 0", "OOM");
    assert_eq!(count("is back after"), 2, "{}", text());
    assert_eq!(count("Redis key"), 1, "{}", text());
}

/// Regression (a review): one 2 MB name in the fleet's list of instances, or 70 000 names,
/// made every heartbeat's reply too large to take, and every instance left the fleet for as
/// long as a stray writer kept them there. The heartbeat now returns at most 1024 names of
/// at most 64 bytes.
#[test]
fn an_oversized_list_of_instances_takes_no_instance_out() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("oversized");
    // Stamped 4.5 s ahead of Redis's clock: within the peers' TTL (5 s) for about 9.5 s.
    let script = "local t = redis.call('TIME') \
        local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + 4500 \
        redis.call('ZADD', KEYS[1], at, string.rep('x', 2000000)) \
        for i = 1, 70000 do redis.call('ZADD', KEYS[1], at, 'ghost' .. i) end \
        return redis.call('ZCARD', KEYS[1])";
    // Written again every second, as a stray writer would keep it there.
    let command = format!("EVAL \"{script}\" 1 {name}:instances\r\n");
    let said = redis.send(&command, "\r\n");
    assert!(said.starts_with(":70001"), "{said}");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, port) = (stop.clone(), redis.port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                send_to(port, &command, "\r\n");
            }
        })
    };
    let services = format!("  svc: [http://{}]\n", rec.addr);
    let member = || fleet_member(&redis, &name, 1, &services);
    let (a, b) = (member(), member());
    assert!(
        eventually(WAIT, || cluster_up(&a) && cluster_up(&b)),
        "{}",
        cluster(&a)
    );
    fail(&a, 2);
    // Seen through the cluster alone: b sends no request of its own.
    assert!(
        eventually(WAIT, || state_in(&b, "svc") == "open"),
        "the open circuit never reached the other instance: {}",
        cluster(&b)
    );
    assert!(cluster_up(&a) && cluster_up(&b), "{}", cluster(&a));
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
}

/// Regression (a review): a stray writer's 2 MB field in one backend's fleet record made
/// every round's reply too large to take, so every instance left the fleet, for every
/// circuit and budget, until the record expired two days later; and 500 000 opens stamped
/// far ahead in a backend's set made every publish outlast its deadline, for good. Now the
/// round that meets a record too large asks again at once with that record read through a
/// script that bounds its fields (the others stay a bare `HMGET`: the script costs Redis
/// about 4 times as much), so that such a record is its circuit's alone, decided locally,
/// and no round fails (until late on 2026-12-05 one did, and every record was read bounded until a
/// restart); the record is read bare again once it is back within bounds. A publish drops
/// the opens stamped ahead and reads at most 1 025.
#[test]
fn junk_in_one_fleet_record_takes_out_only_its_circuit() {
    let redis = Redis::start();
    let (rec, other) = (Recorder::start(reply(500)), Recorder::start(reply(200)));
    let name = fleet_name("junk");
    let opens = format!("{name}:breaker:svc:http://{}:opens", rec.addr);
    let script =
        "for i = 1, 500000 do redis.call('ZADD', KEYS[1], 9999999999999, 'ghost' .. i) end \
        return redis.call('ZCARD', KEYS[1])";
    let said = redis.send(&format!("EVAL \"{script}\" 1 {opens}\r\n"), "\r\n");
    assert!(said.starts_with(":500000"), "{said}");
    // Eleven records to junk at once: each used to cost the round a reconnect and a
    // second ask within one deadline, which 15 outlasted (a re-review).
    let junked: Vec<String> = std::iter::once("other".to_string())
        .chain((0..10).map(|i| format!("more{i}")))
        .collect();
    let mut services = format!("  svc: [http://{}]\n", rec.addr);
    for s in &junked {
        services += &format!("  {s}: [http://{}]\n", other.addr);
    }
    let (log_a, log_b) = (LogFile::new("junk-a"), LogFile::new("junk-b"));
    let member = |log: &LogFile| {
        gateway_at_logging_to(&fleet_member_config(&redis, &name, 1, &services), &log.path)
    };
    let (a, b) = (member(&log_a), member(&log_b));
    assert!(
        eventually(WAIT, || cluster_up(&a) && cluster_up(&b)),
        "{}",
        cluster(&a)
    );
    // Over half a second: how many bare reads and how many scripts Redis ran.
    let calls = |command: &str| -> u64 {
        let stats = redis.send("INFO commandstats\r\n", "\r\n\r\n");
        stats
            .split(&format!("cmdstat_{command}:calls="))
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let half_second = || {
        let (hmget, eval) = (calls("hmget"), calls("eval"));
        std::thread::sleep(Duration::from_millis(500));
        (calls("hmget") - hmget, calls("eval") - eval)
    };
    // Two instances, twelve records each, a round every 20 ms: about 1 200 reads, and one
    // heartbeat script per instance and second.
    let (reads, scripts) = half_second();
    assert!(
        reads >= 20 && scripts < 20,
        "{reads} reads, {scripts} scripts"
    );
    let keys: Vec<String> = junked
        .iter()
        .map(|s| format!("{name}:breaker:{s}:http://{}", other.addr))
        .collect();
    // All at once, so that one round meets them all: made once, then copied (made in the
    // script that puts them in place, they stalled Redis past a round's deadline by
    // themselves).
    let made = format!("{name}:junk");
    let said = redis.send(
        &format!(
            "EVAL \"return redis.call('HSET', KEYS[1], 'instance', string.rep('x', 2000000))\" 1 {made}\r\n"
        ),
        "\r\n",
    );
    assert!(said.starts_with(":1"), "{said}");
    let said = redis.send(
        &format!(
            "EVAL \"for _, k in ipairs(KEYS) do redis.call('COPY', ARGV[1], k, 'REPLACE') end return #KEYS\" {} {} {made}\r\n",
            keys.len(),
            keys.join(" ")
        ),
        "\r\n",
    );
    assert_eq!(said, ":11\r\n");
    let over = "came back over the size limit";
    assert!(
        eventually(WAIT, || log_a.count(over) == 11 && log_b.count(over) == 11),
        "the records too large are not said: {}",
        log_a.text()
    );
    // One record read bounded, the other bare, and no round failed for it.
    let (reads, scripts) = half_second();
    assert!(
        reads >= 20 && scripts >= 20,
        "{reads} reads, {scripts} scripts"
    );
    for log in [&log_a, &log_b] {
        assert_eq!(log.count("unreachable"), 0, "{}", log.text());
    }
    assert!(cluster_up(&a) && cluster_up(&b), "{}", cluster(&a));
    fail(&a, 2);
    // Seen through the cluster alone: b sends no request to svc.
    assert!(
        eventually(WAIT, || state_in(&b, "svc") == "open"),
        "the open circuit never reached the other instance: {}",
        cluster(&b)
    );
    assert!(
        eventually(WAIT, || cluster_up(&a) && cluster_up(&b)),
        "{}",
        cluster(&a)
    );
    assert_eq!(get(b.proc.addr, "/v1/proxy/other/x").status, 200);
    // What was stamped ahead is gone; a's open is what is left.
    let said = redis.send(&format!("ZCARD {opens}\r\n"), "\r\n");
    assert!(said.starts_with(":1\r"), "{said}");
    // The junk gone, the records are read bare again.
    let said = redis.send(&format!("DEL {}\r\n", keys.join(" ")), "\r\n");
    assert_eq!(said, ":11\r\n");
    assert!(
        eventually(WAIT, || log_a.count("is within bounds again") == 11),
        "{}",
        log_a.text()
    );
    assert!(
        eventually(WAIT, || half_second().1 < 20),
        "records are still read bounded"
    );
    for log in [&log_a, &log_b] {
        assert_eq!(log.count("unreachable"), 0, "{}", log.text());
    }
}

/// A re-review (2026-12-05): records with fields just under the link's 1 MiB limit were read
/// whole every round (fifty of 1 MB cost each instance a third of a core, and with Redis
/// busy took every instance out of the fleet), and a 100-byte `instance` was applied from a
/// record read bare but refused from one read through the script. The round that reads the
/// records takes replies of at most 1 KiB, and a field over 64 bytes is refused either way.
#[test]
fn records_under_the_links_limit_but_over_their_own_are_read_bounded_too() {
    let redis = Redis::start();
    let (rec, other) = (Recorder::start(reply(200)), Recorder::start(reply(200)));
    let name = fleet_name("junk-small");
    let services = format!(
        "  svc: [http://{}]\n  other: [http://{}]\n",
        rec.addr, other.addr
    );
    let log = LogFile::new("junk-small");
    let a = gateway_at_logging_to(&fleet_member_config(&redis, &name, 1, &services), &log.path);
    assert!(eventually(WAIT, || cluster_up(&a)), "{}", cluster(&a));
    let big = format!("{name}:breaker:other:http://{}", other.addr);
    let said = redis.send(
        &format!(
            "EVAL \"return redis.call('HSET', KEYS[1], 'instance', string.rep('x', 1000000))\" 1 {big}\r\n"
        ),
        "\r\n",
    );
    assert!(said.starts_with(":1"), "{said}");
    let over = "the fleet's record of other";
    assert!(
        eventually(WAIT, || log.count(over) == 1),
        "a record of 1 MB is not read bounded: {}",
        log.text()
    );
    // An open stamped now, naming an instance of 100 bytes: no instance's, read bare or not.
    let small = format!("{name}:breaker:svc:http://{}", rec.addr);
    let now = unix_ms().to_string();
    write_record(&redis, &small, "open", &now, &"y".repeat(100));
    assert!(
        eventually(WAIT, || log.count("the fleet's record of svc") == 1),
        "{}",
        log.text()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state_in(&a, "svc"), "closed", "{}", log.text());
    assert_eq!(get(a.proc.addr, "/v1/proxy/svc/x").status, 200);
    assert_eq!(log.count("unreachable"), 0, "{}", log.text());
    assert!(cluster_up(&a), "{}", cluster(&a));
}

/// Regression: under equal overload, a fleet budget went mostly to the instance whose
/// rounds came first after tokens accrued (a review: 64 against 454 requests, in three runs
/// of four). Rounds are jittered now, and the split is even within noise.
#[test]
fn a_contended_fleet_budget_is_split_about_evenly() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("fair");
    let start = || {
        gateway_at(&write_config(&config(
            1,
            &format!(
                "admin: 127.0.0.1:0\ncluster: {{redis: {}, name: {name}}}",
                redis.url()
            ),
            &format!(
                "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 100/s, burst: 10, scope: cluster}}\n",
                rec.addr
            ),
        )))
    };
    let (a, b) = (start(), start());
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    let t0 = std::time::Instant::now();
    let run = Duration::from_secs(3);
    let threads: Vec<_> = [a.proc.addr, b.proc.addr]
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut admitted = 0usize;
                while t0.elapsed() < run {
                    c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
                    match c.read_response().status {
                        200 => admitted += 1,
                        429 => std::thread::sleep(Duration::from_millis(2)),
                        s => panic!("unexpected status {s}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let got: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = (got[0] + got[1]) as f64;
    println!("contended fleet budget: admitted {got:?}");
    assert!(total > 250.0, "admitted {got:?}");
    for n in &got {
        assert!(
            *n as f64 >= 0.4 * total,
            "admitted {got:?}: one instance starved"
        );
    }
}

/// Regression (a review): Redis flapping between answering at once and too slowly (300 ms,
/// over the 250 ms deadline) switched a fleet budget between the fleet's allowance and the
/// service's own word, and each switch to the word handed out a whole fresh burst: 1.45×
/// the limit on one instance. The word now starts with what the allowance still held.
#[test]
fn a_flapping_redis_does_not_lift_a_fleet_budget() {
    let redis = Redis::start();
    let port = flapping_redis(
        &redis,
        Duration::from_millis(300),
        Some(Duration::from_millis(600)),
        None,
    );
    let rec = Recorder::start(reply(200));
    let g = limited_member(
        port,
        "flap",
        "{rate: 20/s, burst: 10, scope: cluster}",
        rec.addr,
    );
    assert!(eventually(WAIT, || cluster_up(&g)));
    let (admitted, secs) = admitted_within(g.proc.addr, Duration::from_secs(5));
    // The burst, the rate, and a slice unused at each end.
    let most = 10.0 + 20.0 * secs + 2.0 * 10.0;
    println!("flapping redis: admitted {admitted} in {secs:.2} s, at most {most:.0}");
    assert!(
        admitted as f64 <= most,
        "admitted {admitted} in {secs:.2} s, the fleet's budget allows {most:.0}"
    );
}

/// Regression (a review): a Redis that stalled on and off (busy scripts of 300 ms, 20 ms
/// apart) logged "unreachable" and "back" about 1.3 times a second, and flipped
/// `gateway_cluster_up` with them. An outage now ends after 2 s of whole rounds: one
/// warning while it stalls on and off, one "back" once it has been steady.
#[test]
fn a_redis_that_stalls_on_and_off_is_one_outage_in_the_log() {
    let redis = Redis::start();
    let flapping = Duration::from_secs(6);
    let port = flapping_redis(
        &redis,
        Duration::from_millis(300),
        Some(Duration::from_millis(600)),
        Some(flapping),
    );
    let started = Instant::now();
    let rec = Recorder::start(reply(200));
    let log = LogFile::new("flap");
    let g = gateway_at_logging_to(
        &member_config_at(
            &format!("redis://127.0.0.1:{port}/0"),
            &fleet_name("flaplog"),
            1,
            "{failure_threshold: 2, cooldown: 30s}",
            rec.addr,
        ),
        &log.path,
    );
    let (text, count) = (|| log.text(), |what: &str| log.count(what));
    let mut up_seen = 0;
    while started.elapsed() < flapping - Duration::from_millis(200) {
        up_seen += usize::from(cluster_up(&g));
        assert_eq!(status(&g), 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (down, back) = (count("unreachable ("), count("is back"));
    assert!(
        down <= 1 && back == 0,
        "{down} outages, {back} returns:\n{}",
        text()
    );
    assert!(count("still unreachable") <= 1, "{}", text());
    assert!(
        up_seen <= 12,
        "up in {up_seen} of the ~58 checks while flapping"
    );
    // Steady again: back, said once, with how long the outage lasted.
    assert!(eventually(WAIT, || cluster_up(&g)), "{}", text());
    assert_eq!(count("is back after"), 1, "{}", text());
}

/// Regression: what a stray writer leaves in a fleet budget's key broke the budget. `nan`
/// turned the limit off on every instance for good (a review: about 7900 admitted per 5 s
/// against 510, even after the key was deleted); `abc` took the whole instance out of the
/// fleet (the script failed the round); a TAT an hour ahead, or `inf`, starved the fleet
/// with `Retry-After: 3597`. Each is now no record of the budget, which starts afresh, and
/// the instance stays up.
#[test]
fn garbage_in_a_fleet_budgets_key_neither_lifts_nor_starves_the_limit() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(200));
    let name = fleet_name("poison");
    let g = gateway_at(&write_config(&config(
        2,
        &format!(
            "admin: 127.0.0.1:0\ncluster: {{redis: {}, name: {name}}}",
            redis.url()
        ),
        &format!(
            "  svc:\n    backends: [http://{}]\n    rate_limit: {{rate: 100/s, burst: 10, scope: cluster}}\n",
            rec.addr
        ),
    )));
    assert!(eventually(WAIT, || cluster_up(&g)));
    let key = format!("{name}:ratelimit:svc:100:1:10");
    let hour_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros()
        + 3_600_000_000;
    // The last is a hash: Redis refuses the script for it (WRONGTYPE), and the limit applies
    // per instance (it starved the service instead: 1 of 301 admitted in 5 s).
    for poison in ["nan", "abc", "inf", &hour_ahead.to_string(), "hash"] {
        if poison == "hash" {
            // In one step: the instance's next top-up would write the key between two.
            let said = redis.send(
                &format!(
                    "EVAL \"redis.call('DEL', KEYS[1]) return redis.call('HSET', KEYS[1], 'a', 'b')\" 1 {key}\r\n"
                ),
                "\r\n",
            );
            assert!(said.starts_with(":1"), "{said}");
        } else {
            let said = redis.send(&format!("SET {key} {poison}\r\n"), "\r\n");
            assert!(said.starts_with("+OK"), "{said}");
        }
        let t0 = std::time::Instant::now();
        let (mut admitted, mut sent) = (0usize, 0usize);
        let mut c = Client::connect(g.proc.addr);
        while t0.elapsed() < Duration::from_millis(1500) {
            sent += 1;
            c.send(b"GET /v1/proxy/svc/x HTTP/1.1\r\nHost: g\r\n\r\n");
            match c.read_response().status {
                200 => admitted += 1,
                429 => {}
                s => panic!("{poison}: unexpected status {s}"),
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // At most: the burst, a fresh one when the poison is found, the rate, and a slice
        // of slack. At least half the rate, or half of what was asked on a machine too
        // loaded to ask that much: starved, it admitted 1 of 301; the floor was 0.8 of the
        // rate once, and a CI machine under three reviews' load admitted 111 for 120.
        let low = (100.0 * secs).min(sent as f64) * 0.5;
        let high = 2.0 * 10.0 + 100.0 * secs * 1.15 + 10.0;
        assert!(
            (low..=high).contains(&(admitted as f64)),
            "{poison}: admitted {admitted} of {sent} in {secs:.2} s, expected {low:.0} to {high:.0}"
        );
        assert!(cluster_up(&g), "{poison}: {}", cluster(&g));
    }
}

/// Regression: a probe lease written without an expiry (a stray writer) kept the fleet's
/// open circuit from ever being probed (a review: no probe and not one 200 in 45 s with a
/// 2 s cooldown), and one with a day's expiry for that day (another review). A lease
/// without an expiry, or held by an instance without a heartbeat, is taken as free.
#[test]
fn a_forged_probe_lease_does_not_keep_a_circuit_open() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("lease");
    let a = member(
        &redis,
        &name,
        1,
        "{failure_threshold: 2, cooldown: 1s}",
        rec.addr,
    );
    assert!(eventually(WAIT, || cluster_up(&a)));
    fail(&a, 2);
    assert!(eventually(WAIT, || backend(&a).0 == "open"));
    let lease = format!("{name}:breaker:svc:http://{}:probe", rec.addr);
    // Without an expiry; then with a day's, by an instance with no heartbeat (it held the
    // circuit open without a probe for that day).
    for (forged, beat) in [
        ("evil", ""),
        ("ghost PX 86400000", ""),
        // A heartbeat for the ghost, forged ten years ahead (a re-review).
        (
            "ghost PX 86400000",
            "ZADD {name}:instances 2000000000000 ghost",
        ),
    ] {
        assert!(opens_again(&a, &rec));
        // The heartbeat first: a lease without one is taken over at once.
        if !beat.is_empty() {
            let said = redis.send(&format!("{}\r\n", beat.replace("{name}", &name)), "\r\n");
            assert!(said.starts_with(':'), "{said}");
        }
        let said = redis.send(&format!("SET {lease} {forged}\r\n"), "\r\n");
        assert!(said.starts_with("+OK"), "{said}");
        rec.set(reply(200));
        assert!(
            eventually(Duration::from_secs(8), || status(&a) == 200),
            "{forged}: never probed: {:?}",
            backend(&a)
        );
        assert!(cluster_up(&a));
    }
}

/// A review of the probe mark (2026-12-05): a `probe`/`probe_until` written by hand into
/// a backend's record, naming a live instance with a day's term, refused every other
/// instance the lease for that day (the named one had no traffic to probe with). A term
/// past the longest lease an instance takes is no instance's.
#[test]
fn a_forged_probe_mark_does_not_keep_a_circuit_open() {
    probes_past_a_forgery("mark", |redis, hash, named| {
        let until = unix_ms() + 86_400_000;
        let said = redis.send(
            &format!("HSET {hash} probe {named} probe_until {until}\r\nDEL {hash}:probe\r\n"),
            "\r\n:",
        );
        assert!(said.starts_with(':'), "{said}");
    });
}

/// A fleet of two whose first instance opened the circuit of `svc`; `forge` is given the
/// backend's record key and the idle instance's name, then the backend heals: the first
/// instance, alone with traffic, must probe once its cooldown ends.
fn probes_past_a_forgery(test: &str, forge: impl FnOnce(&Redis, &str, &str)) {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name(test);
    let breaker = "{failure_threshold: 2, cooldown: 1s}";
    let fleet = fleet_of(2, &redis, &name, 1, breaker, rec.addr);
    let (a, idle) = (&fleet[0], &fleet[1]);
    fail(a, 2);
    assert!(eventually(WAIT, || backend(a).0 == "open"));
    let named = cluster(idle)["instance"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!named.is_empty());
    forge(
        &redis,
        &format!("{name}:breaker:svc:http://{}", rec.addr),
        &named,
    );
    rec.set(reply(200));
    assert!(
        answers_within(a, Duration::from_secs(8)),
        "{test}: never probed past the forgery: {:?}",
        backend(a)
    );
}

/// Regression (a review): a forged probe lease naming a live instance that has no traffic
/// to probe with, written with a ten-minute expiry, kept every other instance from probing
/// the fleet's open circuit for those ten minutes (503s for 14 s of 14 with a 4 s
/// cooldown). A lease whose term runs past the longest one an instance takes is free.
#[test]
fn a_forged_lease_naming_a_live_instance_lasts_no_longer_than_a_lease() {
    probes_past_a_forgery("longlease", |redis, hash, named| {
        let said = redis.send(&format!("SET {hash}:probe {named} PX 600000\r\n"), "\r\n");
        assert!(said.starts_with("+OK"), "{said}");
    });
}

/// Regression (a review): a fleet record whose `at` Lua reads as a number but the gateway
/// does not read as a stamp (`inf`, `1e15`, a decimal a few seconds ahead) made the lease
/// script refuse every lease (the record looked newer than any the instances knew) and the
/// restore script refuse to mend it: no instance probed the open circuit until the field
/// was removed. Such an `at` is no stamp to every script, as `nan` already was to one.
#[test]
fn a_record_stamped_with_what_is_no_stamp_does_not_stop_probes() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("nostamp");
    let breaker = "{failure_threshold: 2, cooldown: 1s}";
    let a = member(&redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a)));
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    let soon = format!("{}.5", unix_ms() + 8000);
    for at in ["inf", "1e15", soon.as_str()] {
        assert!(opens_again(&a, &rec));
        // Once the open is in the record: the forged stamp replaces it.
        assert!(eventually(WAIT, || redis
            .send(&format!("HGET {key} state\r\n"), "\r\n")
            .contains("open")));
        let said = redis.send(&format!("HSET {key} at {at}\r\n"), "\r\n");
        assert!(said.starts_with(':'), "{said}");
        rec.set(reply(200));
        assert!(
            answers_within(&a, Duration::from_secs(8)),
            "{at}: never probed: {:?}",
            backend(&a)
        );
        assert!(cluster_up(&a), "{at}: {}", cluster(&a));
    }
}

/// Regression (a review): a breaker record stamped `at nan` (a stray writer) stopped the
/// fleet sharing that backend: the publish script compares `at > nan`, false for every
/// transition, so none was ever written again, and nothing was said.
#[test]
fn a_breaker_record_stamped_nan_does_not_stop_sharing() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("nan");
    let breaker = "{failure_threshold: 2, cooldown: 30s}";
    let a = member(&redis, &name, 1, breaker, rec.addr);
    let b = member(&redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&b)));
    let key = format!("{name}:breaker:svc:http://{}", rec.addr);
    write_record(&redis, &key, "closed", "nan", "x");
    fail(&a, 2);
    assert!(
        eventually(WAIT, || backend(&b) == ("open".into(), "remote".into())),
        "the open did not reach the other instance: {:?}",
        backend(&b)
    );
}

/// Regression (a re-review): an instance that started with Redis away and its clock an hour
/// fast stamped its own open and close by that clock; once Redis came, the clock was
/// corrected but the stamps were not, and the close, an hour "ahead", outranked the other
/// instance's later open: it kept sending traffic to the backend the fleet had opened.
/// Stamps are now kept on the breakers' clock and turned into fleet time when used.
#[test]
fn stamps_made_before_the_fleet_clock_was_known_follow_its_correction() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let rec = Recorder::start(reply(500));
    let name = fleet_name("late");
    let breaker = "{failure_threshold: 2, cooldown: 1s}";
    let fast = with_clock_ahead(
        &member_config_at(&url, &name, 1, breaker, rec.addr),
        3_600_000,
    );
    // Alone: it opens, and a cooldown later closes, on its own.
    fail(&fast, 2);
    rec.set(reply(200));
    assert!(
        eventually(WAIT, || status(&fast) == 200),
        "{:?}",
        backend(&fast)
    );
    let redis = Redis::on(port);
    let other = member(&redis, &name, 1, breaker, rec.addr);
    assert!(eventually(WAIT, || cluster_up(&fast) && cluster_up(&other)));
    rec.set(reply(500));
    fail(&other, 2);
    assert!(
        eventually(WAIT, || backend(&fast) == ("open".into(), "remote".into())),
        "the fast instance ignored the fleet's open: {:?}",
        backend(&fast)
    );
}

/// A gateway on `config` whose wall clock (`CLOCK_REALTIME`) runs `ms` ahead, through
/// [`clock_shim`]; the library is removed once the process has loaded it.
fn with_clock_ahead(config: &std::path::Path, ms: u64) -> AdminGateway {
    let shim = clock_shim();
    let path = shim.to_string_lossy().into_owned();
    let g = gateway_at_with_env(
        config,
        &[("LD_PRELOAD", &path), ("CLOCK_SKEW_MS", &ms.to_string())],
    );
    let _ = std::fs::remove_dir_all(shim.parent().unwrap_or(&shim));
    g
}

/// An `LD_PRELOAD` library that moves `CLOCK_REALTIME` by `CLOCK_SKEW_MS` milliseconds, built
/// with the C compiler the Rust toolchain links with.
fn clock_shim() -> std::path::PathBuf {
    const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    const char *skew = getenv("CLOCK_SKEW_MS");
    if (r == 0 && skew && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = ts->tv_sec * 1000000000LL + ts->tv_nsec + atoll(skew) * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}
"#;
    // One directory per call: tests run side by side, and each removes its own.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gateway-clock-shim-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("shim dir");
    let (src, lib) = (dir.join("skew.c"), dir.join("skew.so"));
    std::fs::write(&src, SHIM).expect("shim source");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc (the C compiler Rust links with) must be installed");
    assert!(built.success(), "the clock shim did not build");
    lib
}

/// Regression (a review of the fleet): each instance stamped its transitions with its own
/// wall clock. One whose clock ran a minute fast stamped a close a minute ahead, and then
/// ignored the other instances' real opens as older than its own close, sending traffic to
/// a backend the fleet had opened; its heartbeat, a minute ahead too, trimmed the others
/// out of its peers. The fleet's clock is now Redis's.
#[test]
fn an_instance_whose_clock_runs_fast_still_follows_the_fleet() {
    let redis = Redis::start();
    let rec = Recorder::start(reply(500));
    let name = fleet_name("skew");
    let breaker = "{failure_threshold: 2, cooldown: 1s}";
    let a = member(&redis, &name, 1, breaker, rec.addr);
    let fast = with_clock_ahead(&member_config(&redis, &name, 1, breaker, rec.addr), 60_000);
    assert!(eventually(WAIT, || cluster_up(&a) && cluster_up(&fast)));
    // The shim works: the instance id starts with the process's wall clock, in hex.
    let id = cluster(&fast)["instance"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let started = u64::from_str_radix(id.split('-').next().unwrap_or(""), 16).unwrap_or(0);
    let now = unix_ms();
    assert!(started > now + 50_000, "the clock shim did not move {id}");
    // A heartbeat written ten minutes ahead of Redis's clock is a stray writer's.
    let said = redis.send(
        &format!("ZADD {name}:instances {} forged\r\n", now + 600_000),
        ":",
    );
    assert!(said.starts_with(':'), "{said}");
    let ida = cluster(&a)["instance"].clone();
    for (g, other) in [(&fast, &ida), (&a, &serde_json::json!(id))] {
        assert!(
            eventually(WAIT, || cluster(g)["peers"]
                .as_array()
                .is_some_and(|p| p.contains(other))),
            "an instance does not list the other: {}",
            cluster(g)
        );
        assert_eq!(cluster(g)["peers"].as_array().map(Vec::len), Some(1));
    }
    // The fast instance opens and, a cooldown later, closes: both stamped by its clock.
    fail(&fast, 2);
    assert!(eventually(WAIT, || backend(&a).0 == "open"));
    rec.set(reply(200));
    assert!(
        eventually(WAIT, || status(&fast) == 200 && status(&a) == 200),
        "the fleet did not close: {:?} {:?}",
        backend(&fast),
        backend(&a)
    );
    // The other instance opens now: the fast one must follow.
    rec.set(reply(500));
    fail(&a, 2);
    assert!(
        eventually(WAIT, || backend(&fast).0 == "open"),
        "the fast instance ignored the fleet's open: {:?}",
        backend(&fast)
    );
    assert_eq!(backend(&fast).1, "remote");
}
