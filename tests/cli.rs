//! The command line: `--check` on the shipped and on broken configs, usage errors, and a
//! clear refusal to share a port with another running server.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

#[test]
fn check_accepts_the_shipped_config_and_prints_a_summary() {
    let out = gateway()
        .args([
            "--check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"));
    assert!(
        text.contains("service user-service -> [http://localhost:8001, http://localhost:8002]"),
        "{text}"
    );
    assert!(
        text.contains("service payment-service -> [http://localhost:8003]"),
        "{text}"
    );
    // Totals, where a new user's review read a diff from nothing (`services +2 ... -0 =0`).
    assert!(text.contains("\n2 services, 3 backends\n"), "{text}");
    assert!(!text.contains("-0 =0"), "{text}");
}

/// `breaker: 1 failures` (a new user's review): the count takes its number.
#[test]
fn check_counts_in_words_that_agree() {
    let (code, text) =
        check("breaker: {failure_threshold: 1}\nservices:\n  a: [http://127.0.0.1:1]\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("(breaker: 1 failure, cooldown"), "{text}");
    assert!(text.contains("\n1 service, 1 backend\n"), "{text}");
}

/// A scale review: at 5 000 services, 80% of them got no series of their own, said only in
/// the log at start; `--check` said nothing. It warns now, past either table's size.
#[test]
fn check_warns_when_metrics_cannot_count_every_service_and_backend() {
    let services = |n: usize, per: usize| {
        let mut y = String::from("services:\n");
        for i in 0..n {
            let urls: Vec<String> = (0..per)
                .map(|j| format!("http://127.0.0.1:{}", 1 + j))
                .collect();
            y += &format!("  s{i}: [{}]\n", urls.join(", "));
        }
        y
    };
    for (yaml, warned) in [
        (services(1024, 4), false),
        (services(1025, 1), true),
        (services(400, 11), true),
    ] {
        let (code, text) = check(&yaml);
        assert_eq!(code, Some(0), "{text}");
        // The first 100 services are listed, the rest counted (2.2 MB at 5 000 before).
        let listed = text.lines().filter(|l| l.starts_with("service ")).count();
        assert_eq!(listed, 100, "{text:.2000}");
        assert!(
            text.contains(" more services (all of them in /admin/config)"),
            "{text:.2000}"
        );
        let says = text.contains("warning: metrics:")
            && text.contains("gateway_metric_ids_exhausted_total");
        assert_eq!(says, warned, "{}", text.lines().last().unwrap_or_default());
    }
}

#[test]
fn check_says_how_many_connections_the_descriptor_limit_allows() {
    let svc = "services:\n  a: [http://127.0.0.1:1]\n";
    let (code, text) = check(&format!("workers: 1\n{svc}"));
    assert_eq!(code, Some(0), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("descriptors: "))
        .unwrap_or_else(|| panic!("no descriptors line: {text}"));
    assert!(line.contains("limits.max_connections: auto"), "{line}");
    assert!(!text.contains("warning:"), "{text}");
    // One more than the limit here allows is accepted, with a warning. (`--check` runs
    // with this process's limits: the child inherits them.)
    let allowed =
        gateway::fdlimit::auto_max_connections(gateway::fdlimit::would_run_with(), 1, false);
    let n = allowed + 1;
    let (code, text) = check(&format!(
        "workers: 1\nlimits: {{max_connections: {n}}}\n{svc}"
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("accepting up to {n} client connections")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "warning: limits.max_connections {n} needs about {} descriptors",
            2 * n
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("past {allowed} connections")),
        "{text}"
    );
}

/// Writes `yaml` to a fresh temp file.
fn temp_config(yaml: &str) -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "gateway-cli-{}-{}.yaml",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs `gateway --check` on `yaml`: the exit code and stdout + stderr.
fn check(yaml: &str) -> (Option<i32>, String) {
    let path = temp_config(yaml);
    let r = check_file(&path);
    let _ = std::fs::remove_file(&path);
    r
}

/// Runs `gateway --check` on the file at `path`: the exit code and stdout + stderr.
fn check_file(path: &std::path::Path) -> (Option<i32>, String) {
    let out = gateway()
        .arg("--check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn check_rejects_a_broken_config_naming_key_value_and_fix() {
    let (code, err) = check("timeouts: {connect: soon}\nservices:\n  a: [http://127.0.0.1:1]\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("timeouts.connect") && err.contains("\"soon\"") && err.contains("500ms"),
        "{err}"
    );

    let out = gateway()
        .args(["--check", "--config", "/nonexistent/config.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/config.yaml"));
}

/// Regression (an operator review): an error in a value named the key but not the file,
/// at start and in a reload's log line; an empty file was said to have no services; `1.5s`
/// was said to have a wrong unit.
#[test]
fn check_names_the_file_an_empty_file_and_a_fraction() {
    let path = temp_config("timeouts: {connect: 1.5s}\nservices:\n  a: [http://127.0.0.1:1]\n");
    let (code, err) = check_file(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(1));
    let want = format!(
        "{}: line 1: timeouts.connect: invalid duration \"1.5s\": fractions",
        path.display()
    );
    assert!(err.contains(&want) && err.contains("1500ms"), "{err}");
    for empty in ["", "\n# nothing yet\n\n", "---\n", "--- # c\n"] {
        let (code, err) = check(empty);
        assert_eq!(code, Some(1), "{empty:?}");
        assert!(err.contains("the file is empty"), "{empty:?}: {err}");
    }
    let (code, err) = check("{}\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("no services configured") && !err.contains("empty"),
        "{err}"
    );
}

/// `-t` checks, as NGINX's and HAProxy's do (an operator review had it refused).
#[test]
fn dash_t_checks_as_nginx_does() {
    let path = temp_config(SVC);
    let out = gateway().arg("-t").arg("-c").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
}

/// An unknown argument is said first, with the command's forms in two lines and where the
/// rest is: the whole 14-line help after it buried the error (an operator review,
/// 2026-12-06).
#[test]
fn unknown_arguments_are_usage_errors() {
    let out = gateway().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains(r#"unknown argument "--frobnicate""#),
        "{err}"
    );
    assert!(
        lines[1].starts_with("usage: gateway [--config PATH]"),
        "{err}"
    );
    assert!(lines[2].contains("gateway --help"), "{err}");
}

/// `--help` (and `-h`) goes to stdout, exits 0, and names every signal the gateway acts on
/// (an operator review: SIGUSR2 and SIGQUIT were missing, and an operator's habit from
/// NGINX sends them).
#[test]
fn help_names_every_signal_the_gateway_acts_on() {
    for flag in ["--help", "-h"] {
        let out = gateway().arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("usage: gateway"), "{said}");
        for sig in [
            "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2",
        ] {
            assert!(said.contains(sig), "{flag} does not name {sig}: {said}");
        }
        for option in ["--config", "--pid-file", "--check", "--version", "RUST_LOG"] {
            assert!(
                said.contains(option),
                "{flag} does not name {option}: {said}"
            );
        }
    }
}

/// `--version` names the commit (an operator review could not tell that a binary
/// predated a change): `gateway 0.1.0 (5ac01d6fa3b2)`, the same as `gateway_build_info`.
#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let out = gateway().arg("--version").output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(head.status.success(), "the tests run from a git checkout");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    assert_eq!(
        said,
        format!("gateway {} ({head})\n", env!("CARGO_PKG_VERSION"))
    );
}

/// Regression (an operator review): `--config=PATH` was refused as an unknown argument, and
/// of two `--config` the last silently won.
#[test]
fn config_takes_the_equals_form_once() {
    let path = temp_config("services:\n  a: [http://127.0.0.1:1]\n");
    let out = gateway()
        .arg("--check")
        .arg(format!("--config={}", path.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = gateway()
        .args(["--check", "-c"])
        .arg(&path)
        .arg("--config")
        .arg("/nonexistent.yaml")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config given twice"));
}

/// `gateway --check config.yaml` was answered `unknown argument "config.yaml"` and the
/// usage, which a new user had to read twice: the error now says how it is written.
#[test]
fn a_bare_path_is_answered_with_how_to_give_it() {
    let out = gateway().args(["--check", "my.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"unknown argument "my.yaml": a config file is given as --config my.yaml"#),
        "{err}"
    );
}

#[test]
fn refuses_to_share_a_port_with_a_running_server() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = std::env::temp_dir().join(format!("gateway-cli-port-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!("listen: {addr}\nworkers: 1\nservices:\n  a: [http://127.0.0.1:1]\n"),
    )
    .unwrap();
    let out = gateway().arg("--config").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("another"),
        "{err}"
    );
}

/// Regressions: a service given twice silently lost the first one's backends, and a
/// CR/LF in a backend path was accepted (and sent in request heads).
#[test]
fn check_rejects_a_service_defined_twice_and_a_crlf_in_a_backend_path() {
    let (code, text) = check("services:\n  a: [http://127.0.0.1:1]\n  b: [http://127.0.0.1:2]\n  a: [http://127.0.0.1:3]\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("line 4: services.a: is defined twice (first on line 2)"),
        "{text}"
    );
    let (code, text) = check("services:\n  a: [\"http://127.0.0.1:1/x\\r\\nX-Evil: 1\"]\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("services.a[0]") && text.contains("0x0d"),
        "{text}"
    );
    let (code, text) = check("services:\n  a: [\"http://[::1]:8001/\", \"http://[::1]:8002\"]\n");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("service a -> [http://[::1]:8001, http://[::1]:8002]"),
        "{text}"
    );
}

/// Runs the gateway on `yaml` until it exits by itself (a startup error) or, once it says
/// where it listens, until SIGTERM ends it: the exit code and stderr.
fn run_until_ready(yaml: &str, env: &[(&str, &str)], wrap: &[&str]) -> (Option<i32>, String) {
    use std::io::{BufRead, Read};
    let path = temp_config(yaml);
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_gateway"));
            c
        }
        None => gateway(),
    };
    cmd.arg("--config")
        .arg(&path)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    if stdout.read_line(&mut line).unwrap_or(0) > 0 {
        assert!(line.starts_with("listening on"), "{line}");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&path);
    (status.code(), err)
}

const SVC: &str = "services:\n  a: [http://127.0.0.1:1]\n";

#[test]
fn check_rejects_admin_on_the_listen_port() {
    for (listen, admin) in [
        ("127.0.0.1:8000", "127.0.0.1:8000"),
        ("0.0.0.0:8000", "127.0.0.1:8000"),
        ("127.0.0.1:8000", "0.0.0.0:8000"),
        ("\"[::ffff:0.0.0.0]:8000\"", "127.0.0.1:8000"),
        ("127.0.0.1:8000", "\"[::ffff:127.0.0.1]:8000\""),
    ] {
        let (code, text) = check(&format!("listen: {listen}\nadmin: {admin}\n{SVC}"));
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains("admin: ") && text.contains("`listen`"),
            "{text}"
        );
    }
    let (code, text) = check(&format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{SVC}"));
    assert_eq!(code, Some(0), "port 0 twice is two ports: {text}");
}

/// `--check` binds `listen` and `admin` once (an operator review: a port in use passed):
/// an address the gateway could never bind fails it, naming the key; a port in use now
/// only gets a note, since the gateway running with this config holds it.
#[test]
fn check_binds_the_ports_and_notes_one_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, text) = check(&format!("listen: 127.0.0.1:0\nadmin: {addr}\n{SVC}"));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("note: admin: {addr} is in use now, by this gateway if it runs with this config (it keeps the port across a reload, SIGHUP) or by another process (`ss -ltnp` names it): a start needs it free; an upgrade (SIGUSR2) takes it over")),
        "{text}"
    );
    let (code, text) = check(&format!("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n{SVC}"));
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("note:"), "{text}");
    // TEST-NET-1: on no machine's interfaces.
    let (code, text) = check(&format!("listen: 192.0.2.1:8080\n{SVC}"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("valid, but cannot listen on 192.0.2.1:8080 (`listen`)")
            && text.contains("no interface of this machine has that address"),
        "{text}"
    );
}

/// Regression: a taken admin port was reported as `listen`'s problem.
#[test]
fn a_taken_admin_port_names_admin() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = run_until_ready(
        &format!("listen: 127.0.0.1:0\nadmin: {addr}\nworkers: 1\n{SVC}"),
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} (`admin`)"))
            && err.contains("change `admin`"),
        "{err}"
    );
    // A line of the log's own form, time, level and process first (an operator review:
    // the one line that stopped a start had neither).
    let line = err.lines().find(|l| l.contains("cannot listen on"));
    let fields: Vec<&str> = line.unwrap_or_default().split_whitespace().collect();
    let pid = fields
        .get(2)
        .and_then(|p| p.strip_prefix('[')?.strip_suffix(']'));
    assert!(
        fields.len() > 4
            && fields[0].ends_with('Z')
            && fields[1] == "ERROR"
            && pid.is_some_and(|p| p.parse::<u32>().is_ok())
            && fields[3] == "gateway:",
        "{err}"
    );
}

/// A port below 1024 without the right to bind it says so (run as `nobody` when we are
/// root; skipped where unprivileged processes may bind low ports).
#[test]
fn a_privileged_port_says_why_it_is_refused() {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    if start <= 81 {
        eprintln!("skipped: unprivileged processes may bind port 81 here");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let wrap: &[&str] = if root {
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
    } else {
        &[]
    };
    let (code, err) = run_until_ready(
        &format!("listen: 127.0.0.1:81\nworkers: 1\n{SVC}"),
        &[],
        wrap,
    );
    // A missing or failing setpriv (util-linux, which `.ci/run` installs) fails the test.
    assert!(
        !(root && err.contains("setpriv")),
        "cannot drop privileges with setpriv: {err}"
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("(`listen`)")
            && err.contains("below 1024")
            && err.contains("CAP_NET_BIND_SERVICE"),
        "{err}"
    );
}

/// `--check` opens the access log as the gateway would (without truncating it), and the
/// error names the path, at `--check` and at start.
#[test]
fn the_access_log_is_checked_and_named() {
    let bad = "/nonexistent-gateway-dir/access.log";
    let (code, text) = check(&format!("access_log: {bad}\n{SVC}"));
    assert_eq!(code, Some(1), "{text}");
    // Which part is missing (an operator review had only "No such file or directory").
    let why = "its directory /nonexistent-gateway-dir does not exist";
    assert!(
        text.contains(&format!("cannot open the access log {bad}: {why}")),
        "{text}"
    );
    // Named after the file, as every other config error is.
    assert!(
        text.starts_with("gateway: invalid config: /") && text.contains(".yaml: "),
        "{text}"
    );
    let (code, err) = run_until_ready(
        &format!("listen: 127.0.0.1:0\nworkers: 1\naccess_log: {bad}\n{SVC}"),
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot open the access log {bad}: {why}")),
        "{err}"
    );

    let dir = std::env::temp_dir();
    let existing = dir.join(format!("gateway-cli-log-{}.log", std::process::id()));
    std::fs::write(&existing, "kept\n").unwrap();
    let missing = dir.join(format!("gateway-cli-log-{}-new.log", std::process::id()));
    for path in [&existing, &missing] {
        let (code, text) = check(&format!("access_log: {}\n{SVC}", path.display()));
        assert_eq!(code, Some(0), "{text}");
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "kept\n");
    assert!(!missing.exists(), "--check created the log file");
    let _ = std::fs::remove_file(&existing);
}

#[test]
fn rust_log_problems_are_reported_and_module_filters_work() {
    let out = gateway()
        .args([
            "--check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml"),
        ])
        .env("RUST_LOG", "verbose,gatway=debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RUST_LOG: unknown level \"verbose\""), "{err}");
    assert!(err.contains("\"gatway=debug\" names no module"), "{err}");

    // Only gateway::server speaks at info: its worker lines, not the startup summary.
    let (code, err) = run_until_ready(
        &format!("listen: 127.0.0.1:0\nworkers: 1\npin_workers: false\n{SVC}"),
        &[("RUST_LOG", "error,gateway::server=info")],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("gateway::server: worker 0: driver"), "{err}");
    assert!(!err.contains("service a ->"), "{err}");

    // An unknown GATEWAY_DRIVER is said once, not ignored (a review).
    let (code, err) = run_until_ready(
        &format!("listen: 127.0.0.1:0\nworkers: 2\npin_workers: false\n{SVC}"),
        &[("GATEWAY_DRIVER", "bogus")],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        err.matches("GATEWAY_DRIVER=\"bogus\" is not a driver (epoll, defer): using io_uring")
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn check_validates_the_cluster_section_without_contacting_redis() {
    let path =
        std::env::temp_dir().join(format!("gateway-cli-cluster-{}.yaml", std::process::id()));
    let check = |cluster: &str| {
        std::fs::write(
            &path,
            format!("cluster: {cluster}\nservices:\n  a: [http://127.0.0.1:1]\n"),
        )
        .unwrap();
        gateway()
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    // Port 1: nothing listens there, and --check must not try.
    let ok = check("{redis: redis://127.0.0.1:1/0, name: edge-eu, open_quorum: 2}");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("cluster edge-eu on redis://127.0.0.1:1/0 (open quorum 2)"),
        "{text}"
    );
    for (bad, key) in [
        ("{redis: http://127.0.0.1:6379}", "cluster.redis"),
        (
            "{redis: redis://127.0.0.1:6379, name: 'a b'}",
            "cluster.name",
        ),
        (
            "{redis: redis://127.0.0.1:6379, open_quorum: 0}",
            "cluster.open_quorum",
        ),
    ] {
        let out = check(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains(key), "{bad}: {err}");
    }
    let _ = std::fs::remove_file(&path);
}

/// Regression: `--check` said nothing of what the start warns about (an operator review):
/// more workers than the CPUs the process may use, and a drain grace that no load balancer
/// can see because there is no admin port.
#[test]
fn check_warns_as_the_start_does() {
    let svc = "services:\n  a: [http://127.0.0.1:1]\n";
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (code, text) = check(&format!(
        "workers: {}\ntimeouts: {{drain_grace: 5s}}\n{svc}",
        cpus + 1
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("warning: workers:"), "{text}");
    assert!(
        text.contains("warning: timeouts.drain_grace is set but there is no `admin` port"),
        "{text}"
    );
    let (_, text) = check(&format!(
        "workers: 1\nadmin: 127.0.0.1:0\ntimeouts: {{drain_grace: 5s}}\n{svc}"
    ));
    assert!(!text.contains("warning:"), "{text}");
    // A per-client limit no client can reach.
    let (code, text) = check(&format!(
        "workers: 1\nlimits: {{max_connections: 3, max_connections_per_client: 5}}\n{svc}"
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(
            "warning: limits.max_connections_per_client 5 is not below limits.max_connections 3"
        ),
        "{text}"
    );
    // An admin API on every interface (an operator review: no word of it).
    let (code, text) = check(&format!("workers: 1\nadmin: 0.0.0.0:9901\n{svc}"));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: admin: 0.0.0.0:9901 listens on every interface"),
        "{text}"
    );
    // Every IPv4 interface, written as an IPv4-mapped IPv6 address (a review: no warning).
    let (code, text) = check(&format!(
        "workers: 1\nadmin: \"[::ffff:0.0.0.0]:9901\"\n{svc}"
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: admin: [::ffff:0.0.0.0]:9901 listens on every interface"),
        "{text}"
    );
    // Trusted proxies are listed, and one trusting every address, or written with host
    // bits past its prefix, is warned of (an operator review: no word of either).
    let (code, text) = check(&format!(
        "workers: 1\ntrusted_proxies: [0.0.0.0/0, 10.0.0.1/8, 192.168.1.7]\n{svc}"
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("trusted proxies: 0.0.0.0/0, 10.0.0.1/8, 192.168.1.7/32"),
        "{text}"
    );
    assert!(
        text.contains("warning: trusted_proxies: 0.0.0.0/0 trusts every IPv4 address"),
        "{text}"
    );
    assert!(
        text.contains("warning: trusted_proxies: 10.0.0.1/8 has address bits past its prefix"),
        "{text}"
    );
    assert!(!text.contains("192.168.1.7/32 has"), "{text}");
    // An idle timeout below the once-a-second look (an operator review: 1ms, no word).
    let (code, text) = check(&format!(
        "workers: 1\ntimeouts: {{client_idle: 1ms}}\n{svc}"
    ));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: timeouts.client_idle: 1 ms is checked once a second"),
        "{text}"
    );
}

/// A stdout whose reader has gone: the write end of a pipe with its read end closed.
fn closed_stdout() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills both descriptors, which we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: each descriptor is fresh from pipe(2) and owned once.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    writer.into()
}

#[test]
fn a_closed_stdout_neither_fails_check_nor_stops_the_gateway() {
    // `gateway --check | head -1` and `gateway | true` panicked (exit 101) writing to
    // stdout once its reader had gone.
    let path = temp_config(SVC);
    let out = gateway()
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .stdout(closed_stdout())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_file(&path);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = temp_config(&format!("listen: 127.0.0.1:{port}\nworkers: 1\n{SVC}"));
    let mut child = gateway()
        .arg("--config")
        .arg(&path)
        .stdout(closed_stdout())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the gateway ended before it listened"
        );
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // It got past printing its addresses and still serves.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(child.try_wait().unwrap().is_none(), "the gateway stopped");
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_file(&path);
}

/// A review: a password in a URL mistyped without `://` (`redis:/:pw@h`, `user:pw@h`)
/// was quoted whole by the refusal, to stderr, the log and `/admin/config`.
#[test]
fn a_password_in_a_mistyped_url_is_not_printed() {
    for yaml in [
        format!("cluster:\n  redis: 'redis:/:topsecretpw@127.0.0.1:6379/0'\n{SVC}"),
        format!("cluster:\n  redis: 'user:topsecretpw@127.0.0.1:6379'\n{SVC}"),
        "services:\n  a: ['http:/user:topsecretpw@127.0.0.1:1']\n".to_string(),
    ] {
        let (code, text) = check(&yaml);
        assert_eq!(code, Some(1), "{text}");
        assert!(!text.contains("topsecretpw"), "{text}");
        assert!(text.contains("***@127.0.0.1"), "{text}");
    }
}

/// A missing default `config.yaml` is said with `--config`; a file named with `--config`
/// that is missing is not (an operator review: a failed reload of a file named with it
/// said to name the file with `--config`; a reload says what `Config::load` says, as here).
#[test]
fn a_missing_default_config_names_the_flag_and_a_named_one_does_not() {
    let empty = std::env::temp_dir().join(format!("gateway-cli-{}-empty", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = gateway()
        .arg("--check")
        .current_dir(&empty)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot read config.yaml")
            && text.contains("(no --config given: name the file with --config PATH)"),
        "{text}"
    );
    let named = empty.join("absent.yaml");
    let (code, text) = check_file(&named);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("cannot read") && !text.contains("--config"),
        "{text}"
    );
    let _ = std::fs::remove_dir(&empty);
}

/// `--pid-file` (an operator review: the README's logrotate line, `kill -USR1 $(pidof
/// gateway)`, signalled every gateway on the host): the file names the gateway once it
/// listens, and goes as it exits; a path it cannot write stops the start, naming it.
#[test]
fn the_pid_file_names_the_serving_process_and_goes_with_it() {
    use std::io::BufRead;
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let path = temp_config(&format!(
        "listen: 127.0.0.1:0\nworkers: 1\npin_workers: false\n{SVC}"
    ));
    let pid_path = std::env::temp_dir().join(format!("gateway-cli-{}.pid", std::process::id()));
    let _ = std::fs::remove_file(&pid_path);
    let mut child = Child(
        gateway()
            .arg("--config")
            .arg(&path)
            .arg(format!("--pid-file={}", pid_path.display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let written = std::fs::read_to_string(&pid_path).unwrap_or_default();
    assert_eq!(written, format!("{}\n", child.0.id()));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!pid_path.exists(), "left behind");

    let out = gateway()
        .arg("--config")
        .arg(&path)
        .args(["--pid-file", "/nonexistent-dir/gateway.pid"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot write the pid file /nonexistent-dir/gateway.pid"),
        "{err}"
    );
}

/// Regression (an operator review): `--check` said only the first error. Every service's
/// error is listed, one per line under the file's name.
#[test]
fn check_lists_every_services_error() {
    let (code, text) = check("services:\n  a: [ftp://x]\n  b: [http://127.0.0.1:1, http://127.0.0.1:1]\n  c: [http://127.0.0.1:2]\n");
    assert_eq!(code, Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("gateway: invalid config: ") && lines[0].ends_with(".yaml: 2 errors:"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("  line 2: services.a[0]: \"ftp://x\" is not an http URL"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("  line 3: services.b[1]: \"http://127.0.0.1:1\" is listed twice"),
        "{text}"
    );
}
