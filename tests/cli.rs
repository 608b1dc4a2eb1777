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

#[test]
fn check_rejects_a_broken_config_naming_key_value_and_fix() {
    let path = std::env::temp_dir().join(format!("gateway-cli-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "timeouts: {connect: soon}\nservices:\n  a: [http://127.0.0.1:1]\n",
    )
    .unwrap();
    let out = gateway()
        .arg("--check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
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
