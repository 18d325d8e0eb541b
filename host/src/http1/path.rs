//! Dot-segment removal (RFC 3986 §5.2.4) on request paths, so a path prefix
//! put in front of them cannot be left by `..`, spelled plainly or
//! percent-encoded.

use std::borrow::Cow;

/// What a path segment is after decoding `%2e`: `.`, `..` or neither.
fn dots(segment: &str) -> Option<usize> {
    let bytes = segment.as_bytes();
    let mut count = 0;
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'.' {
            at += 1;
        } else if bytes[at..].len() >= 3
            && bytes[at] == b'%'
            && bytes[at + 1] == b'2'
            && bytes[at + 2].eq_ignore_ascii_case(&b'e')
        {
            at += 3;
        } else {
            return None;
        }
        count += 1;
    }
    (1..=2).contains(&count).then_some(count)
}

/// RFC 3986 §5.2.4 `remove_dot_segments` on an absolute path, where `.`
/// and `..` may also be percent-encoded (`%2e%2E`). `..` above the root
/// stays at the root. Paths without such a segment are returned as they are.
pub fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    // Most paths have no '.' or '%' at all: one pass over the bytes settles it.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return Cow::Borrowed(path);
    }
    let segments = || path.split('/').skip(1);
    if !segments().any(|s| dots(s).is_some()) {
        return Cow::Borrowed(path);
    }
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_slash = false;
    for segment in segments() {
        match dots(segment) {
            Some(1) => ends_in_slash = true,
            Some(_) => {
                kept.pop();
                ends_in_slash = true;
            }
            None => {
                kept.push(segment);
                ends_in_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_slash || kept.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        for (path, expect) in [
            ("/a/b", "/a/b"),
            ("/../admin", "/admin"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E./admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a/../../../b", "/b"),
            ("/a//b/../c", "/a//c"),
            ("/app.js", "/app.js"),
            ("/.well-known/x", "/.well-known/x"),
            ("/...", "/..."),
            ("/%2e%2f", "/%2e%2f"),
        ] {
            assert_eq!(remove_dot_segments(path), expect, "{path}");
        }
        assert!(matches!(remove_dot_segments("/a/b.c"), Cow::Borrowed(_)));
    }

    proptest::proptest! {
        /// Whatever the path, the result has no dot-segment left and starts
        /// with '/', so a prefix put in front of it is never left.
        #[test]
        fn no_dot_segment_survives(segments in proptest::collection::vec(
            proptest::prop_oneof!["\\.", "\\.\\.", "%2[eE]", "%2[eE]%2[eE]", "\\.%2e", "[a-z.]{0,3}"],
            0..8,
        )) {
            let path = format!("/{}", segments.join("/"));
            let resolved = remove_dot_segments(&path);
            proptest::prop_assert!(resolved.starts_with('/'));
            proptest::prop_assert!(resolved.split('/').skip(1).all(|s| dots(s).is_none()), "{} -> {}", path, resolved);
        }
    }
}
