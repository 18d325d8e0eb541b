//! The client address behind trusted proxies: whatever bytes arrive in
//! `X-Forwarded-For`, no panic; an untrusted peer is always the client; and
//! the answer is the peer or an address written in the header.
#![no_main]

use gateway::proxy::client_ip;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append("x-forwarded-for", value);
        }
    }
    let peer: IpAddr = [127, 0, 0, 1 + (flags & 3)].into();
    let trusted: Vec<ipnet::IpNet> = match flags >> 2 & 3 {
        0 => vec![],
        1 => vec!["127.0.0.1/32".parse().unwrap()],
        2 => vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ],
        _ => vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
    };
    let client = client_ip(peer, &headers, &trusted);
    if !trusted.iter().any(|n| n.contains(&peer)) {
        assert_eq!(client, peer);
    }
    if client != peer {
        // Some entry spells the client: `ip`, `[ip]`, `[ip]:port`, `v4:port`.
        let spells = |entry: &str| {
            let bare = entry
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(ip, _)| ip);
            let v4 = entry.rsplit_once(':').map(|(ip, _)| ip);
            [Some(entry), bare, v4]
                .into_iter()
                .flatten()
                .filter_map(|text| text.parse::<IpAddr>().ok())
                .any(|ip| ip.to_canonical() == client)
        };
        let written = headers.get_all("x-forwarded-for").iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .filter_map(|e| std::str::from_utf8(e.trim_ascii()).ok())
                .any(spells)
        });
        assert!(written, "{client} is not in the header");
    }
});
