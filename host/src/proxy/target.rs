//! The request target and `Host` (RFC 9112 §3.2–3.3), checked before any
//! backend sees a request. (Dot-segments are resolved when the target is
//! written for a backend: `http1::path`.)

use super::error::ProxyError;
use http::{HeaderMap, Method, Uri, Version, header};

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
            let valid = value.is_empty() || is_authority(value);
            if valid {
                Ok(())
            } else {
                Err(ProxyError::BadRequest("invalid Host"))
            }
        }
    }
}

/// `host[:port]` (RFC 3986 §3.2.2-3.2.3 without user info): a reg-name,
/// IPv4 address or bracketed IP literal, and an all-digit port. Checked
/// byte by byte: this runs on every request.
fn is_authority(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        Some(at) if value[at..].iter().all(|&b| b != b']') => (&value[..at], &value[at + 1..]),
        _ => (value, &b""[..]),
    };
    port.len() <= 5 && port.iter().all(u8::is_ascii_digit) && is_host(host)
}

fn is_host(host: &[u8]) -> bool {
    match host {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        }
        _ => !host.is_empty() && host.iter().all(|&b| REG_NAME[usize::from(b)]),
    }
}

/// The bytes of a reg-name or IPv4 address: unreserved, sub-delims and `%`.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    table
};

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
}
