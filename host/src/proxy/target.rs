//! The request target and `Host` (RFC 9112 §3.2–3.3), checked before any
//! backend sees a request, and the path's dot-segments resolved (RFC 3986
//! §5.2.4) before a backend's path prefix is put in front of it, so no
//! request leaves its prefix.

use super::error::ProxyError;
use http::uri::Authority;
use http::{HeaderMap, Method, Uri, Version, header};
use std::borrow::Cow;

/// Refuses a target or `Host` a strict HTTP/1.1 server refuses (400).
///
/// - origin-form (`/path`) and absolute-form (`http://a.test/x`, whose
///   authority then wins over `Host`) are served; asterisk-form (`*`) only
///   for `OPTIONS`; authority-form (`a.test:80`) only for `CONNECT`, which
///   the gateway does not serve;
/// - an HTTP/1.1 request needs exactly one `Host`, an HTTP/1.0 one at most
///   one, and a `Host` must be a valid authority without user info (or empty).
///
/// HTTP/2 requests carry `:authority` instead, checked by the h2 layer.
pub fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if uri.scheme().is_some() {
        match uri.authority() {
            Some(a) if !a.as_str().contains('@') => {}
            _ => return Err(ProxyError::BadRequest("bad absolute-form target")),
        }
    } else if uri.authority().is_some() {
        return Err(ProxyError::BadRequest(
            "authority-form target is only for CONNECT",
        ));
    } else if uri.path() == "*" {
        if *method != Method::OPTIONS {
            return Err(ProxyError::BadRequest(
                "asterisk-form target is only for OPTIONS",
            ));
        }
    } else if !uri.path().starts_with('/') {
        return Err(ProxyError::BadRequest("bad request target"));
    }
    if version >= Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => Err(ProxyError::BadRequest("missing Host")),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host")),
        (Some(host), None) => {
            let value = host.as_bytes();
            let valid = value.is_empty() || (!value.contains(&b'@') && is_authority(value));
            if valid {
                Ok(())
            } else {
                Err(ProxyError::BadRequest("invalid Host"))
            }
        }
    }
}

/// `host[:port]` with a numeric port (`Authority` alone takes `h:port`).
fn is_authority(value: &[u8]) -> bool {
    Authority::try_from(value).is_ok_and(|a| {
        let port = a.port().map_or(0, |p| p.as_str().len() + 1);
        a.host().len() + port == a.as_str().len()
    })
}

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
    use http::HeaderValue;

    fn check_raw(
        method: &str,
        target: &str,
        version: Version,
        hosts: &[&[u8]],
    ) -> Result<(), ProxyError> {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, HeaderValue::from_bytes(h).unwrap());
        }
        let uri: Uri = target.parse().unwrap();
        check(&method.parse().unwrap(), &uri, version, &headers)
    }

    #[test]
    fn host_is_required_once_and_valid() {
        let ok = |hosts: &[&[u8]]| check_raw("GET", "/", Version::HTTP_11, hosts).is_ok();
        assert!(ok(&[b"h.test"]));
        assert!(ok(&[b"h.test:8080"]));
        assert!(ok(&[b"[::1]:80"]));
        assert!(ok(&[b""]));
        assert!(!ok(&[]));
        assert!(!ok(&[b"a.test", b"b.test"]));
        assert!(!ok(&[b"h.test/x y"]));
        assert!(!ok(&[b"h.test/x"]));
        assert!(!ok(&[b"user@h.test"]));
        assert!(!ok(&[b"h.test:port"]));
        assert!(check_raw("GET", "/", Version::HTTP_10, &[]).is_ok());
        assert!(check_raw("GET", "/", Version::HTTP_10, &[b"a", b"b"]).is_err());
        assert!(check_raw("GET", "/", Version::HTTP_2, &[]).is_ok());
    }

    #[test]
    fn target_forms() {
        let h: &[&[u8]] = &[b"h.test"];
        assert!(check_raw("GET", "http://uri.test/abs", Version::HTTP_11, h).is_ok());
        assert!(check_raw("GET", "http://u@uri.test/abs", Version::HTTP_11, h).is_err());
        assert!(check_raw("OPTIONS", "*", Version::HTTP_11, h).is_ok());
        assert!(check_raw("GET", "*", Version::HTTP_11, h).is_err());
        assert!(check_raw("GET", "h.test:80", Version::HTTP_11, h).is_err());
    }

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
