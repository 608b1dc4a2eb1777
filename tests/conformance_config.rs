//! Config robustness (regressions found while writing fuzz/fuzz_targets/config.rs):
//! `Config::parse` returns an error, never panics, and refuses durations the runtime
//! cannot add to `Instant::now()`.

use gateway::config::Config;

/// Regression: `parse_duration` multiplied minutes/hours without overflow checks
/// (`n * 60` panicked in debug builds and wrapped to a tiny timeout in release).
#[test]
fn huge_durations_are_errors_not_panics() {
    for v in [
        "307445734561825861m",
        "5124095576030432h",
        "18446744073709551615h",
    ] {
        let text = format!("timeouts: {{connect: {v}}}\nservices: {{a: [http://127.0.0.1:1]}}\n");
        let r = std::panic::catch_unwind(|| Config::parse(&text).is_err());
        assert_eq!(
            r.ok(),
            Some(true),
            "{v}: must be a config error, not a panic or a value"
        );
    }
}

#[test]
fn durations_up_to_a_day_parse() {
    let c = Config::parse("timeouts: {connect: 24h}\nservices: {a: [http://127.0.0.1:1]}\n")
        .expect("valid");
    assert_eq!(c.timeouts.connect.as_secs(), 24 * 3600);
    let e = Config::parse("timeouts: {connect: 25h}\nservices: {a: [http://127.0.0.1:1]}\n")
        .unwrap_err();
    assert!(
        e.to_string().contains("timeouts.connect") && e.to_string().contains("at most 24h"),
        "{e}"
    );
}

/// Regression: a duration the runtime cannot add to `Instant::now()` passed validation,
/// and the first request then panicked the worker (`Instant::now() + client_header`).
#[test]
fn absurd_durations_are_refused() {
    let text =
        "timeouts: {client_header: 18446744073709551615s}\nservices: {a: [http://127.0.0.1:1]}\n";
    assert!(Config::parse(text).is_err());
}
