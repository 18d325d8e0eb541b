//! Who the client is: the peer address, or, when the peer is a trusted proxy,
//! the right-most `X-Forwarded-For` entry that is not itself trusted.
//! An untrusted peer can never choose its own address by sending a header.

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
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        match parse_entry(entry) {
            Some(ip) => {
                current = ip;
                if !is_trusted(ip, trusted) {
                    return ip;
                }
            }
            // Garbage in the chain: stop at the last hop we could vouch for.
            None => return current,
        }
    }
    current
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Accepts `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    let (ip, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
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
    fn bracketed_ipv6_with_port() {
        let h = headers(&["[2001:db8::1]:443"]);
        assert_eq!(
            client_ip(ip("::1"), &h, &nets(&["::1/128"])),
            ip("2001:db8::1")
        );
    }
}
