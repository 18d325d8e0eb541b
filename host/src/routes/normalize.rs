//! The path routes are matched against: the one the backend will act on.

use crate::http1::path::remove_dot_segments;
use std::borrow::Cow;

/// `path` with percent-encoded unreserved characters decoded (RFC 3986
/// §6.2.2.2: `%6C` is `l`), repeated slashes merged and dot-segments
/// resolved. Borrowed when nothing changes, which is the common case.
///
/// A `%` that starts no escape (`%zz`, `%%36%63`) is an error, answered
/// 400 (as nginx does): a path with one has no single meaning — a backend
/// that decodes what is left after `/%zz/..` is removed could see a path
/// the route never did.
pub fn match_path(path: &str) -> Result<Cow<'_, str>, InvalidEscape> {
    let bytes = path.as_bytes();
    let plain =
        !bytes.iter().any(|&b| b == b'%' || b == b'.') && !bytes.windows(2).any(|w| w == b"//");
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    let valid = bytes.iter().enumerate().all(|(at, &b)| {
        b != b'%'
            || bytes
                .get(at + 1..at + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !valid {
        return Err(InvalidEscape);
    }
    let mut out = String::with_capacity(path.len());
    let mut at = 0;
    while at < bytes.len() {
        let b = bytes[at];
        if b == b'%'
            && let Some(decoded) = bytes.get(at + 1..at + 3).and_then(unreserved)
        {
            out.push(decoded);
            at += 3;
            continue;
        }
        if b == b'/' && out.ends_with('/') {
            at += 1;
            continue;
        }
        // Anything else (reserved escapes included) is copied as it is.
        let len = utf8_len(b);
        out.push_str(&path[at..at + len]);
        at += len;
    }
    Ok(match remove_dot_segments(&out) {
        Cow::Borrowed(_) if out == path => Cow::Borrowed(path),
        Cow::Borrowed(_) => Cow::Owned(out),
        Cow::Owned(resolved) => Cow::Owned(resolved),
    })
}

/// A `%` in a path that is not followed by two hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidEscape;

/// The unreserved character two hex digits encode, if they encode one.
fn unreserved(hex: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(hex).ok()?;
    let value = u8::from_str_radix(text, 16).ok()?;
    (value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~'))
        .then_some(char::from(value))
}

/// Bytes in the UTF-8 sequence that starts with `first` (1 for anything
/// that does not start a longer one; `path` is a `str`, so sequences are whole).
fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_s_path_is_matched() {
        for (path, expect) in [
            ("/v1/items", "/v1/items"),
            ("/api/../login", "/login"),
            ("/%6cogin", "/login"),
            ("/%6C%6F%67%69%6E", "/login"),
            ("//login", "/login"),
            ("/a//b///c", "/a/b/c"),
            ("/%2e%2e/login", "/login"),
            ("/a%2Fb", "/a%2Fb"),
            ("/caf\u{e9}/x", "/caf\u{e9}/x"),
            ("/app.js", "/app.js"),
        ] {
            assert_eq!(match_path(path).unwrap(), expect, "{path}");
        }
        assert!(matches!(match_path("/app.js"), Ok(Cow::Borrowed(_))));
        assert!(matches!(match_path("/a/b"), Ok(Cow::Borrowed(_))));
        // Found by the route_path fuzz target: `%pi` is removed with its
        // segment, and `%66` would then be decoded by the backend.
        for invalid in ["/%zz", "/%4", "/%%36%63", "/%pi/../%66copi6vv", "/a%"] {
            assert_eq!(match_path(invalid), Err(InvalidEscape), "{invalid}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_stays_absolute(path in "/[a-z%2eE6cC/.\u{e9}]{0,24}") {
            if let Ok(matched) = match_path(&path) {
                proptest::prop_assert!(matched.starts_with('/'));
                proptest::prop_assert!(!matched.contains("//"));
                proptest::prop_assert_eq!(match_path(&matched).unwrap(), matched.clone());
            }
        }
    }
}
