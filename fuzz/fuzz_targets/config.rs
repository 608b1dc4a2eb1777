//! Fuzz `Config::parse` on arbitrary UTF-8: errors are fine, panics are not. Inputs naming a
//! backend host that is not an IP literal are skipped, so the target never waits on DNS.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// True when every `http://` is followed by an IPv4 literal or a bracketed IPv6 literal
/// (and no YAML escape could spell another URL).
fn hosts_are_literals(text: &str) -> bool {
    !text.contains('\\')
        && text.match_indices("http://").all(|(i, m)| {
            let rest = &text[i + m.len()..];
            if let Some(v6) = rest.strip_prefix('[') {
                return v6
                    .split_once(']')
                    .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
            }
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse::<std::net::Ipv4Addr>().is_ok()
                && !rest[end..].starts_with(|c: char| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !hosts_are_literals(text) {
        return;
    }
    if let Ok(cfg) = gateway::config::Config::parse(text) {
        assert!(cfg.workers > 0);
        let _ = cfg.summary();
    }
});
