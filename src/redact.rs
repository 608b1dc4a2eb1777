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
/// A URL runs from its `://` to the next whitespace or unescaped `"`; if it holds an `@`,
/// everything from `://` to its last `@` is userinfo. That over-redacts a URL with `@` in
/// its path rather than leak a password containing `/`, `?` or `#`.
pub fn userinfo(text: &str) -> Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let b = after.as_bytes();
        let end = (0..b.len())
            .find(|&j| {
                b[j].is_ascii_whitespace() || (b[j] == b'"' && (j == 0 || b[j - 1] != b'\\'))
            })
            .unwrap_or(b.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
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
        ] {
            assert_eq!(userinfo(input), want, "{input}");
        }
        assert!(matches!(userinfo("http://h:1/x"), Cow::Borrowed(_)));
    }
}
