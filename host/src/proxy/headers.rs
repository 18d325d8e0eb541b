//! Header rewriting at the proxy boundary: hop-by-hop headers never cross it,
//! forwarding headers are added on the way in.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::net::IpAddr;

/// Headers that describe one connection rather than the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// True for a header that never crosses the proxy whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes `Connection`, every header it names, the fixed hop-by-hop set and `Proxy-*`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names instead of a
    // hash lookup per candidate.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.keys().any(|k| k.as_str().starts_with("proxy-")) {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
}

/// The `Upgrade` value of a request that asks to switch protocols (`Connection: upgrade`).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Prepares request headers for the backend.
///
/// `peer` is appended to `X-Forwarded-For`; `X-Forwarded-Proto`/`-Host` are
/// set unless a trusted proxy already set them. The client's `Host` stays.
pub fn prepare_request(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    host: Option<HeaderValue>,
    upgrade: Option<HeaderValue>,
) {
    let keep_te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_hop_by_hop(headers);
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }

    let forwarded_for = match join_values(headers, &X_FORWARDED_FOR) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.to_canonical())).ok(),
        None => Some(peer_value(peer)),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if !peer_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host);
        }
    }
}

/// `peer` as a header value. Requests on one connection share a peer, so
/// each thread remembers the last one instead of formatting it every time.
fn peer_value(peer: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, value)) if *ip == peer => value.clone(),
        _ => {
            let text = peer.to_canonical().to_string();
            let value = HeaderValue::from_maybe_shared(Bytes::from(text))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            *last = Some((peer, value.clone()));
            value
        }
    })
}

fn join_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_owned(), |mut acc, v| {
        acc.push_str(", ");
        acc.push_str(v);
        acc
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn forwarding_headers_are_appended_and_set() {
        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("host", "example.com")]);
        let host = h.get("host").cloned();
        prepare_request(&mut h, "9.9.9.9".parse().unwrap(), false, host, None);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 9.9.9.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["host"], "example.com");
    }

    #[test]
    fn peer_value_follows_the_peer() {
        for ip in [
            "9.9.9.9",
            "9.9.9.9",
            "::ffff:1.2.3.4",
            "2001:db8::1",
            "9.9.9.9",
        ] {
            let peer: IpAddr = ip.parse().unwrap();
            assert_eq!(peer_value(peer), peer.to_canonical().to_string().as_str());
        }
    }

    #[test]
    fn untrusted_peer_cannot_set_proto() {
        let mut h = map(&[("x-forwarded-proto", "https")]);
        prepare_request(&mut h, "9.9.9.9".parse().unwrap(), false, None, None);
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[("x-forwarded-proto", "https")]);
        prepare_request(&mut h, "10.0.0.1".parse().unwrap(), true, None, None);
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn upgrade_survives_when_requested() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let upgrade = requested_upgrade(&h);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        prepare_request(&mut h, "127.0.0.1".parse().unwrap(), false, None, upgrade);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut h = map(&[("te", "trailers")]);
        prepare_request(&mut h, "127.0.0.1".parse().unwrap(), false, None, None);
        assert_eq!(h["te"], "trailers");
    }
}
