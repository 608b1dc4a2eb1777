//! Keeps credentials out of what the gateway prints: the userinfo of a URL becomes `***`.
//!
//! Backend URLs with userinfo (`http://user:pass@host`) are not supported and are refused,
//! but the refusal used to quote the URL whole, to the log and to the unauthenticated
//! `/admin/config`. Every log line, every config error shown by `/admin/config` and
//! `--check`, goes through [`userinfo`].

use std::borrow::Cow;

/// `text` with the userinfo of every URL in it replaced by `***`:
/// `"http://user:pass@host:1/x"` becomes `"http://***@host:1/x"`.
///
/// A URL is a word: it runs to the next whitespace or unescaped `"`. If it holds an `@`,
/// everything from its `://` to its last `@` is userinfo. That over-redacts a URL with `@`
/// in its path rather than leak a password containing `/`, `?` or `#`. A word without
/// `://` (a URL mistyped as `redis:/:pw@h`, `user:pw@h` or `//:pw@h`) is masked too when
/// what comes before its last `@` holds a `:` or a `/`, keeping only a leading `scheme:/`
/// or slashes (such words went out whole: a review). `me@example.com` is left alone.
pub fn userinfo(text: &str) -> Cow<'_, str> {
    if !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut start = 0;
    for j in 0..=b.len() {
        let ends = j == b.len()
            || b[j].is_ascii_whitespace()
            || (b[j] == b'"' && (j == 0 || b[j - 1] != b'\\'));
        if !ends {
            continue;
        }
        // Word boundaries are ASCII bytes: the slices below fall on char boundaries.
        let word = &text[start..j];
        match masked(word) {
            Some(m) => {
                out.push_str(&m);
                changed = true;
            }
            None => out.push_str(word),
        }
        if j < b.len() {
            out.push_str(&text[j..=j]);
        }
        start = j + 1;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// `url`, taken whole as one URL (spaces and all), with its userinfo masked: for a URL
/// quoted back whole, where [`userinfo`] would take a password with a space in it for two
/// words and let its first half out (a review).
pub fn url(url: &str) -> Cow<'_, str> {
    masked(url).map_or(Cow::Borrowed(url), Cow::Owned)
}

/// The word with its userinfo masked, or `None` if it has none.
fn masked(word: &str) -> Option<String> {
    let at = word.rfind('@')?;
    let before = &word[..at];
    let keep = match before.find("://") {
        Some(k) => k + 3,
        None if before.contains([':', '/']) => scheme_and_slashes(before),
        None => return None,
    };
    Some(format!("{}***{}", &before[..keep], &word[at..]))
}

/// The length of a leading `scheme:` followed by one or more `/`, or of leading `/`s; 0
/// when there is neither (`user:pw` keeps nothing).
fn scheme_and_slashes(s: &str) -> usize {
    let slashes = |from: usize| s[from..].bytes().take_while(|&c| c == b'/').count();
    let scheme = s
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-'))
        .count();
    if scheme > 0 && s.as_bytes().get(scheme) == Some(&b':') {
        let n = slashes(scheme + 1);
        if n > 0 {
            return scheme + 1 + n;
        }
    }
    slashes(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_replaced_and_nothing_else() {
        for (input, want) in [
            (
                r#"services.a[0]: "http://user:secret@10.0.0.1:8001/api": write it as http://HOST:PORT"#,
                r#"services.a[0]: "http://***@10.0.0.1:8001/api": write it as http://HOST:PORT"#,
            ),
            ("http://token@h", "http://***@h"),
            ("http://u:p/a?b#c@h:1/x", "http://***@h:1/x"),
            (
                r#""http://u:p\"q@h" and "http://v:w@i""#,
                r#""http://***@h" and "http://***@i""#,
            ),
            (
                "two http://a:b@h1 http://c:d@h2.",
                "two http://***@h1 http://***@h2.",
            ),
            (
                "no credentials: http://127.0.0.1:8001/x",
                "no credentials: http://127.0.0.1:8001/x",
            ),
            (
                "mail me@example.com about http://h:1",
                "mail me@example.com about http://h:1",
            ),
            ("", ""),
            // Mistyped URLs quoted back by a refusal (a review saw them go out whole).
            (
                r#"cluster.redis: "redis:/:topsecretpw@127.0.0.1:27379/0" is not"#,
                r#"cluster.redis: "redis:/***@127.0.0.1:27379/0" is not"#,
            ),
            ("user:secretpw@127.0.0.1:27379", "***@127.0.0.1:27379"),
            ("//:secretpw@h:1", "//***@h:1"),
            ("\"http:/user:backendpw@h:1/x\"", "\"http:/***@h:1/x\""),
            ("htp://user:pw@h", "htp://***@h"),
            (
                "write to ops@example.com or me@x",
                "write to ops@example.com or me@x",
            ),
            ("caf\u{e9} u:p@h \u{e9}", "caf\u{e9} ***@h \u{e9}"),
        ] {
            assert_eq!(userinfo(input), want, "{input}");
        }
        assert!(matches!(userinfo("http://h:1/x"), Cow::Borrowed(_)));
    }
}
