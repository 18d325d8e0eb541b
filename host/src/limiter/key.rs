//! Who a request is charged to: its client address, or a header such as an API key.

use http::{HeaderMap, HeaderName};
use std::fmt::Write;
use std::net::IpAddr;

/// Where the client key comes from (`rate_limit.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client address; IPv6 clients are grouped by `ipv6_prefix` bits (a /64 is one site).
    Ip { ipv6_prefix: u8 },
    /// A request header; requests without it fall back to the client address.
    Header { name: HeaderName, ipv6_prefix: u8 },
}

/// Stack space for a formatted address, so keying by IP allocates nothing.
pub struct KeyBuf {
    bytes: [u8; 64],
    len: usize,
}

impl Default for KeyBuf {
    fn default() -> Self {
        KeyBuf {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl Write for KeyBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl KeyBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// The key a request is limited under: the header value, else the address
/// (`203.0.113.7`, or `2001:db8:1:2::/64` for IPv6).
pub fn client_key<'a>(
    source: &KeySource,
    ip: IpAddr,
    headers: &'a HeaderMap,
    buf: &'a mut KeyBuf,
) -> &'a str {
    let prefix = match source {
        KeySource::Header { name, ipv6_prefix } => {
            if let Some(value) = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
            {
                return value;
            }
            *ipv6_prefix
        }
        KeySource::Ip { ipv6_prefix } => *ipv6_prefix,
    };
    buf.len = 0;
    let written = match ip.to_canonical() {
        IpAddr::V4(v4) => write!(buf, "{v4}"),
        IpAddr::V6(v6) if prefix >= 128 => write!(buf, "{v6}"),
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
            let net = std::net::Ipv6Addr::from(u128::from(v6) & mask);
            write!(buf, "{net}/{prefix}")
        }
    };
    if written.is_err() {
        buf.len = 0;
    }
    buf.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: &KeySource, ip: &str, headers: &HeaderMap) -> String {
        let mut buf = KeyBuf::default();
        client_key(source, ip.parse().unwrap(), headers, &mut buf).to_owned()
    }

    #[test]
    fn ipv4_is_the_address() {
        let s = KeySource::Ip { ipv6_prefix: 64 };
        assert_eq!(key(&s, "203.0.113.7", &HeaderMap::new()), "203.0.113.7");
        assert_eq!(
            key(&s, "::ffff:203.0.113.7", &HeaderMap::new()),
            "203.0.113.7"
        );
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let s = KeySource::Ip { ipv6_prefix: 64 };
        let a = key(&s, "2001:db8:1:2:aaaa::1", &HeaderMap::new());
        let b = key(&s, "2001:db8:1:2:bbbb::9", &HeaderMap::new());
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(a, b);
        let full = KeySource::Ip { ipv6_prefix: 128 };
        assert_eq!(key(&full, "2001:db8::1", &HeaderMap::new()), "2001:db8::1");
    }

    #[test]
    fn header_wins_and_falls_back_to_ip() {
        let s = KeySource::Header {
            name: HeaderName::from_static("x-api-key"),
            ipv6_prefix: 64,
        };
        let mut h = HeaderMap::new();
        assert_eq!(key(&s, "10.1.1.1", &h), "10.1.1.1");
        h.insert("x-api-key", " key-123 ".parse().unwrap());
        assert_eq!(key(&s, "10.1.1.1", &h), "key-123");
        h.insert("x-api-key", "".parse().unwrap());
        assert_eq!(key(&s, "10.1.1.1", &h), "10.1.1.1");
    }
}
