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
}

/// Runs `gateway --check` on `yaml`: the exit code and stdout + stderr.
fn check(yaml: &str) -> (Option<i32>, String) {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "gateway-cli-check-{}-{}.yaml",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, yaml).unwrap();
    let out = gateway()
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
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

#[test]
fn unknown_arguments_are_usage_errors() {
    let out = gateway().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    let out = gateway().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gateway "));
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
        text.contains("services.a") && text.contains("lines 2 and 4"),
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
