//! Header rewriting at the proxy boundary: hop-by-hop headers never cross it,
//! forwarding headers are added on the way in.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::net::IpAddr;

use crate::http1::fields::{self, HOP_BY_HOP, is_hop_by_hop};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes `Connection`, every header it names, the fixed hop-by-hop set and `Proxy-*`.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // h2c is a protocol between the client and the gateway, never the backend's.
    headers
        .get(header::UPGRADE)
        .filter(|v| {
            asks && !v
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
        })
        .cloned()
}

/// Drops the hop-by-hop fields a request arrived with, keeping
/// `TE: trailers` and re-adding `Connection: upgrade` + `Upgrade` for an
/// upgrade, and returns the upgrade an HTTP/1.1 client asked for. Most
/// requests carry no such field: one pass over the names settles that,
/// instead of a hash lookup per candidate.
pub fn strip_request(headers: &mut HeaderMap, http11: bool) -> Option<HeaderValue> {
    if !headers.keys().any(is_hop_by_hop) {
        return None;
    }
    let upgrade = requested_upgrade(headers).filter(|_| http11);
    let keep_te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_hop_by_hop(headers);
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade.clone());
    }
    upgrade
}

/// How a request reached the gateway, for the fields the backend gets.
pub struct Forwarding {
    pub peer: IpAddr,
    /// The peer is a trusted proxy: the `X-Forwarded-Proto`/`-Host` it sent stand.
    pub trusted: bool,
    /// The target's authority (HTTP/2 `:authority`, absolute-form URI), for
    /// a request without `Host`.
    pub authority: Option<HeaderValue>,
    /// The client's TLS session: it came over HTTPS (`X-Forwarded-Proto: https`).
    pub tls: Option<std::sync::Arc<crate::tls::Session>>,
}

/// Writes the request's fields for the backend as HTTP/1.1 field lines.
///
/// The client's fields go as they are, except the framing fields (the
/// body's framing is written from the body), fields whose name has an
/// underscore (dropped, as nginx does, so no backend reads
/// `Transfer_Encoding` as `Transfer-Encoding`) and the forwarding fields:
/// the peer is appended to `X-Forwarded-For`; `X-Forwarded-Proto`/`-Host`
/// are set unless a trusted proxy already set them. `Host` is the target's
/// authority when the request had one (absolute-form or HTTP/2
/// `:authority`: RFC 9112 §3.2.2), else the client's, else `fallback_host`.
/// Written here rather than inserted into the header map: inserting three
/// fields made the map grow and rehash on every request.
pub fn write_request_fields(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    forwarding: &Forwarding,
    fallback_host: Option<&HeaderValue>,
) {
    let mut host = None;
    let mut prior_for = Vec::new();
    let (mut proto_kept, mut host_kept) = (false, false);
    let target_host = forwarding.authority.as_ref();
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name.as_str().bytes().any(|b| b == b'_')
        {
            continue;
        } else if name == header::HOST {
            host = Some(value);
            if target_host.is_some() {
                continue;
            }
        } else if name == X_FORWARDED_FOR {
            prior_for.push(value);
            continue;
        } else if name == X_FORWARDED_PROTO {
            if !forwarding.trusted {
                continue;
            }
            proto_kept = true;
        } else if name == X_FORWARDED_HOST {
            if !forwarding.trusted {
                continue;
            }
            host_kept = true;
        }
        fields::field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let forwarded_host = target_host.or(host);
    if (host.is_none() || target_host.is_some())
        && let Some(host) = forwarded_host.or(fallback_host)
    {
        fields::field(out, b"host", host.as_bytes());
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for prior in prior_for {
        out.extend_from_slice(prior.as_bytes());
        out.extend_from_slice(b", ");
    }
    write_peer(out, forwarding.peer);
    out.extend_from_slice(b"\r\n");
    if !proto_kept {
        let proto: &[u8] = if forwarding.tls.is_some() {
            b"https"
        } else {
            b"http"
        };
        fields::field(out, b"x-forwarded-proto", proto);
    }
    if !host_kept && let Some(host) = forwarded_host {
        fields::field(out, b"x-forwarded-host", host.as_bytes());
    }
}

/// The fields [`write_request_fields`] writes, set in `headers` for a
/// backend hyper speaks HTTP/2 to: no framing fields (HTTP/2 frames the
/// body itself), no names with an underscore, `X-Forwarded-For` appended
/// to, `X-Forwarded-Proto`/`-Host` set unless a trusted proxy set them.
pub fn set_request_fields(headers: &mut HeaderMap, forwarding: &Forwarding) {
    headers.remove(header::TRANSFER_ENCODING);
    if headers.keys().any(|k| k.as_str().contains('_')) {
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for name in underscored {
            headers.remove(name);
        }
    }
    let host = forwarding
        .authority
        .clone()
        .or_else(|| headers.get(header::HOST).cloned());
    let mut chain = Vec::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        chain.extend_from_slice(prior.as_bytes());
        chain.extend_from_slice(b", ");
    }
    write_peer(&mut chain, forwarding.peer);
    if let Ok(value) = HeaderValue::from_bytes(&chain) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if !(forwarding.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if forwarding.tls.is_some() {
            "https"
        } else {
            "http"
        };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !(forwarding.trusted && headers.contains_key(&X_FORWARDED_HOST))
        && let Some(host) = host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

/// Appends `peer` in text. Requests on one connection share a peer, so each
/// thread remembers the last one instead of formatting it every time.
fn write_peer(out: &mut Vec<u8>, peer: IpAddr) {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, String)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((ip, text)) if *ip == peer => out.extend_from_slice(text.as_bytes()),
        _ => {
            let text = peer.to_canonical().to_string();
            out.extend_from_slice(text.as_bytes());
            *last = Some((peer, text));
        }
    })
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

    /// The field lines written for `headers` from `peer`.
    fn written(
        headers: &HeaderMap,
        peer: &str,
        trusted: bool,
        authority: Option<&'static str>,
    ) -> Vec<String> {
        let forwarding = Forwarding {
            peer: peer.parse().unwrap(),
            trusted,
            authority: authority.map(HeaderValue::from_static),
            tls: (peer == "10.9.9.9").then(Default::default),
        };
        let mut out = Vec::new();
        let fallback = HeaderValue::from_static("backend:81");
        write_request_fields(&mut out, headers, &forwarding, Some(&fallback));
        String::from_utf8(out)
            .unwrap()
            .split_terminator("\r\n")
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn forwarding_fields_are_appended_and_set() {
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("host", "example.com"),
            ("x-forwarded-for", "2.2.2.2"),
            ("content-length", "5"),
            ("x-other", "o"),
        ]);
        assert_eq!(
            written(&h, "9.9.9.9", false, None),
            [
                "host: example.com",
                "x-other: o",
                "x-forwarded-for: 1.1.1.1, 2.2.2.2, 9.9.9.9",
                "x-forwarded-proto: http",
                "x-forwarded-host: example.com",
            ]
        );
    }

    #[test]
    fn without_host_the_authority_then_the_backend_is_used() {
        let h = map(&[]);
        assert_eq!(
            written(&h, "::ffff:1.2.3.4", false, Some("client.example")),
            [
                "host: client.example",
                "x-forwarded-for: 1.2.3.4",
                "x-forwarded-proto: http",
                "x-forwarded-host: client.example",
            ]
        );
        assert_eq!(
            written(&h, "2001:db8::1", false, None),
            [
                "host: backend:81",
                "x-forwarded-for: 2001:db8::1",
                "x-forwarded-proto: http"
            ]
        );
    }

    #[test]
    fn peer_text_follows_the_peer() {
        for ip in [
            "9.9.9.9",
            "9.9.9.9",
            "::ffff:1.2.3.4",
            "2001:db8::1",
            "9.9.9.9",
        ] {
            let peer: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_peer(&mut out, peer);
            assert_eq!(out, peer.to_canonical().to_string().as_bytes());
        }
    }

    #[test]
    fn untrusted_peer_cannot_set_proto_or_host() {
        let h = map(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("host", "h"),
        ]);
        let lines = written(&h, "9.9.9.9", false, None);
        assert!(
            lines.contains(&"x-forwarded-proto: http".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"x-forwarded-host: h".to_owned()),
            "{lines:?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("https") || l.contains("evil"))
        );
        let lines = written(&h, "10.0.0.1", true, None);
        assert!(
            lines.contains(&"x-forwarded-proto: https".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"x-forwarded-host: evil".to_owned()),
            "{lines:?}"
        );
        assert!(!lines.contains(&"x-forwarded-proto: http".to_owned()));
        assert!(!lines.contains(&"x-forwarded-host: h".to_owned()));
    }

    #[test]
    fn upgrade_survives_when_requested() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let upgrade = strip_request(&mut h, true);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(strip_request(&mut h, false).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn te_trailers_is_kept() {
        let mut h = map(&[("te", "trailers")]);
        assert!(strip_request(&mut h, true).is_none());
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn underscored_names_are_dropped() {
        let h = map(&[
            ("transfer_encoding", "chunked"),
            ("x_user", "u"),
            ("x-user", "v"),
        ]);
        let lines = written(&h, "9.9.9.9", false, None);
        assert!(lines.contains(&"x-user: v".to_owned()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains('_')), "{lines:?}");
    }

    #[test]
    fn the_targets_authority_wins_over_host() {
        let h = map(&[("host", "host.test")]);
        let lines = written(&h, "9.9.9.9", false, Some("uri.test"));
        assert!(lines.contains(&"host: uri.test".to_owned()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("host.test")), "{lines:?}");
    }

    #[test]
    fn http2_backends_get_the_same_forwarding_fields() {
        let mut h = map(&[
            ("host", "client.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("transfer-encoding", "chunked"),
            ("x_secret", "1"),
            ("te", "trailers"),
        ]);
        let forwarding = Forwarding {
            peer: "9.9.9.9".parse().unwrap(),
            trusted: false,
            authority: None,
            tls: None,
        };
        set_request_fields(&mut h, &forwarding);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 9.9.9.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "client.example");
        assert_eq!(h["te"], "trailers");
        assert!(!h.contains_key("transfer-encoding") && !h.contains_key("x_secret"));
    }

    #[test]
    fn a_client_over_tls_is_forwarded_as_https() {
        let lines = written(&HeaderMap::new(), "10.9.9.9", false, None);
        assert!(
            lines.contains(&"x-forwarded-proto: https".to_owned()),
            "{lines:?}"
        );
    }

    #[test]
    fn h2c_upgrades_are_never_forwarded() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ]);
        assert!(strip_request(&mut h, true).is_none());
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[("upgrade", "h2c"), ("http2-settings", "AAMA")]);
        assert!(strip_request(&mut h, true).is_none());
        assert!(h.is_empty(), "{h:?}");
    }
}
