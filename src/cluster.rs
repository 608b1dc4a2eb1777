//! Several instances, one view: the `cluster:` config section (Redis URL, key prefix, quorum).
//!
//! Absent, the gateway runs alone exactly as before. The thread that shares circuit state
//! through Redis follows in the next change.

use serde::Deserialize;

use crate::config::ConfigError;

pub const DEFAULT_NAME: &str = "gateway";
pub const DEFAULT_OPEN_QUORUM: u32 = 1;

/// `cluster:` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://HOST[:PORT][/DB]`.
    pub redis: String,
    /// Key prefix: several fleets can share one Redis.
    pub name: String,
    /// Distinct instances that must have opened a circuit within one cooldown before the
    /// whole fleet treats it as open.
    pub open_quorum: u32,
}

/// `cluster:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    redis: Option<String>,
    name: Option<String>,
    open_quorum: Option<u32>,
}

/// Checks a `cluster:` section (no network: the URL is only parsed).
pub fn validate(raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
    let bad = |key: &str, message: String| ConfigError::Invalid {
        key: format!("cluster.{key}"),
        message,
    };
    let redis = raw.redis.ok_or_else(|| {
        bad(
            "redis",
            "is missing: write the Redis URL, e.g. redis://127.0.0.1:6379/0".into(),
        )
    })?;
    if !redis.starts_with("redis://") {
        return Err(bad(
            "redis",
            format!("{redis:?} is not a redis:// URL: write e.g. redis://127.0.0.1:6379/0"),
        ));
    }
    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(redis.as_str()) {
        return Err(bad(
            "redis",
            format!("{redis:?}: {e}: write e.g. redis://127.0.0.1:6379/0"),
        ));
    }
    let name = raw.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(
            "name",
            format!("{name:?}: use 1-64 characters of A-Z a-z 0-9 _ -, e.g. gateway"),
        ));
    }
    let open_quorum = raw.open_quorum.unwrap_or(DEFAULT_OPEN_QUORUM);
    if open_quorum == 0 {
        return Err(bad(
            "open_quorum",
            "0: use 1 (any instance opens the fleet's circuit) or more".into(),
        ));
    }
    Ok(ClusterConfig {
        redis,
        name,
        open_quorum,
    })
}

/// A Redis URL fit for logs and the admin API: user and password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> Result<ClusterConfig, String> {
        let raw: RawCluster = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        validate(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = raw("redis: redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(c.name, DEFAULT_NAME);
        assert_eq!(c.open_quorum, 1);
        for (yaml, key) in [
            ("name: x", "cluster.redis"),
            ("redis: http://127.0.0.1:6379", "cluster.redis"),
            ("redis: redis://127.0.0.1:6379\nname: ''", "cluster.name"),
            ("redis: redis://127.0.0.1:6379\nname: a.b", "cluster.name"),
            (
                "redis: redis://127.0.0.1:6379\nopen_quorum: 0",
                "cluster.open_quorum",
            ),
        ] {
            let e = raw(yaml).unwrap_err();
            assert!(e.starts_with(key), "{yaml:?}: {e}");
        }
        assert!(raw("redis: redis://h:1\ncolour: red")
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn the_password_is_not_shown() {
        assert_eq!(
            redact("redis://user:secret@127.0.0.1:6379/0"),
            "redis://***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
