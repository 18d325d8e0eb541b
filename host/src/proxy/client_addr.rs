//! Who the client is: the peer address, or, when the peer is a trusted proxy,
//! the right-most `X-Forwarded-For` entry that is not itself trusted.
//! An untrusted peer can never choose its own address by sending a header.
//!
//! The fields are read as bytes, entry by entry: a client behind a trusted
//! proxy that appends to its line can put any byte in its own part of the
//! list, and that must spoil only its own entries, not the ones the trusted
//! proxies wrote after them.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The client's address as the rest of the gateway sees it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut current = peer;
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|field| field.as_bytes().rsplit(|b| *b == b','));
    for entry in entries {
        match parse_entry(entry) {
            Some(ip) => {
                current = ip;
                if !is_trusted(ip, trusted) {
                    return ip;
                }
            }
            // An entry that is no address: the hop that wrote it cannot be
            // vouched for, so the client is the last address the trusted
            // chain vouched for.
            None => return current,
        }
    }
    current
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Accepts `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`, with blanks around.
/// A port after an IPv6 address only in brackets: `0:::0` is no address
/// (read as `0::` port 0 it was, until the fuzzer found it).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry.trim_ascii()).ok()?;
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        let h = headers(&["1.2.3.4"]);
        assert_eq!(
            client_ip(ip("9.9.9.9"), &h, &nets(&["10.0.0.0/8"])),
            ip("9.9.9.9")
        );
        assert_eq!(client_ip(ip("9.9.9.9"), &h, &[]), ip("9.9.9.9"));
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_entry() {
        let h = headers(&["6.6.6.6, 1.2.3.4, 10.0.0.5"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn multiple_header_lines_are_one_list() {
        let h = headers(&["6.6.6.6", "1.2.3.4:5678"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn garbage_stops_at_last_trusted_hop() {
        let h = headers(&["1.2.3.4, bogus, 10.0.0.7"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn ipv4_mapped_peer_is_normalised() {
        assert_eq!(
            client_ip(ip("::ffff:1.2.3.4"), &HeaderMap::new(), &[]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn a_port_after_unbracketed_ipv6_is_no_address() {
        assert_eq!(parse_entry(b"0:::0"), None);
        assert_eq!(parse_entry(b"2001:db8::1:80"), Some(ip("2001:db8::1:80")));
        assert_eq!(parse_entry(b"1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_entry(b"[::1]:80"), Some(ip("::1")));
    }

    #[test]
    fn bracketed_ipv6_with_port() {
        let h = headers(&["[2001:db8::1]:443"]);
        assert_eq!(
            client_ip(ip("::1"), &h, &nets(&["::1/128"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn a_bad_byte_spoils_only_its_own_entry() {
        let trusted = nets(&["127.0.0.1/32"]);
        // nginx appended the client's address to what the client sent.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff, 127.0.0.4").unwrap(),
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.4"));
        // The client's own field is unreadable, the proxy's is separate.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.2.3.4\xfe").unwrap(),
        );
        h.append("x-forwarded-for", "127.0.0.5".parse().unwrap());
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.5"));
    }

    #[test]
    fn garbage_written_by_a_trusted_hop_stops_at_that_hop() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"9.9.9.9, \xff").unwrap(),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
    }

    proptest::proptest! {
        /// Whatever bytes a client puts in its own part of the list, the
        /// address the trusted proxy appended after them is the client.
        #[test]
        fn client_bytes_never_move_the_client(
            sent in proptest::collection::vec(
                proptest::prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, proptest::strategy::Just(b'\t')],
                0..64,
            ),
            last in 1u8..255,
        ) {
            let mut value = sent.clone();
            value.extend_from_slice(format!(", 192.0.2.{last}").as_bytes());
            let mut h = HeaderMap::new();
            h.append("x-forwarded-for", http::HeaderValue::from_bytes(&value).unwrap());
            let client = client_ip(ip("127.0.0.1"), &h, &nets(&["127.0.0.1/32"]));
            proptest::prop_assert_eq!(client, IpAddr::from([192, 0, 2, last]));
        }
    }
}
