//! Who a request is charged to. Every key carries its source — `ip:`,
//! `header:NAME:`, `plugin:` — so a header value that spells an address, or
//! a plugin answer that names a header key, can never reach another
//! source's bucket or per-client override.

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::fmt;
use std::hash::Hasher;
use std::net::{IpAddr, Ipv6Addr};

/// Longest key value (header value or plugin answer) that can name a client
/// of its own. Longer values are never known clients: they are charged as
/// `rate_limit.unknown_keys` says for an unknown key, and under `own` to the
/// client's address, so no client or plugin makes the limiter keep large keys.
pub const MAX_KEY_BYTES: usize = 256;

/// Where the client key comes from (`rate_limit.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    pub kind: KeyKind,
    /// IPv6 clients are grouped by this many leading bits (a /64 is one site).
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// The client address.
    Ip,
    /// A request header, such as an API key; requests without it are keyed by address.
    Header(HeaderName),
    /// A key plugin's answer; requests it gives no key are keyed by address.
    Plugin,
    /// The verified client certificate's subject (`tls.client_auth`);
    /// requests without one are keyed by address.
    TlsSubject,
    /// The verified client certificate's SHA-256 fingerprint.
    TlsFingerprint,
}

/// What `rate_limit.unknown_keys` does with a header or plugin key that has
/// no per-client row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKeys {
    /// Charge the request to the client address's bucket: inventing keys buys nothing.
    Ip,
    /// Give the key its own bucket with the default limits.
    Own,
    /// Refuse the request with 401.
    Reject,
}

/// A client key borrowed from the request (or from a stored client id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKey<'a> {
    /// An address; IPv6 masked to its prefix length (32 for IPv4).
    Ip(IpAddr, u8),
    /// A header's lower-case name and its value (surrounding blanks removed).
    Header(&'a str, &'a [u8]),
    /// A key plugin's answer.
    Plugin(&'a [u8]),
    /// A verified client certificate's subject or fingerprint.
    Tls(&'a [u8]),
}

impl<'a> ClientKey<'a> {
    /// The key for a client address: IPv4 as is, IPv6 masked to `ipv6_prefix` bits.
    pub fn address(ip: IpAddr, ipv6_prefix: u8) -> ClientKey<'static> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::Ip(IpAddr::V4(v4), 32),
            IpAddr::V6(v6) => {
                let prefix = ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
                ClientKey::Ip(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), prefix)
            }
        }
    }

    /// The request's `name` header as a key; `None` when absent or blank.
    pub fn header(name: &'a HeaderName, headers: &'a HeaderMap) -> Option<ClientKey<'a>> {
        let value = headers.get(name)?.as_bytes().trim_ascii();
        (!value.is_empty()).then_some(ClientKey::Header(name.as_str(), value))
    }

    /// The value a header or plugin key carries (empty for an address).
    fn value(&self) -> &'a [u8] {
        match self {
            ClientKey::Ip(..) => &[],
            ClientKey::Header(_, value) | ClientKey::Plugin(value) | ClientKey::Tls(value) => value,
        }
    }

    /// True when the value is too long to be anyone's key ([`MAX_KEY_BYTES`]).
    pub fn is_oversized(&self) -> bool {
        self.value().len() > MAX_KEY_BYTES
    }

    /// Feeds the key to a hasher. Every key starts with one word whose top
    /// byte tags its source (and, for a header, whose low bits give the
    /// name's length), so two different keys never feed the same sequence.
    /// An IPv4 address is that one word: on the request path a key is
    /// hashed once per request, and one `write_u64` is a fraction of a
    /// byte-slice write.
    #[inline]
    pub fn hash_into(&self, state: &mut impl Hasher) {
        const TAG: u32 = 56;
        match self {
            ClientKey::Ip(IpAddr::V4(v4), _) => {
                state.write_u64(4 << TAG | u64::from(u32::from(*v4)));
            }
            ClientKey::Ip(IpAddr::V6(v6), prefix) => {
                state.write_u64(6 << TAG | u64::from(*prefix));
                state.write_u128(u128::from(*v6));
            }
            ClientKey::Header(name, value) => {
                state.write_u64(u64::from(b'h') << TAG | name.len() as u64);
                state.write(name.as_bytes());
                state.write(value);
            }
            ClientKey::Plugin(value) => {
                state.write_u64(u64::from(b'p') << TAG);
                state.write(value);
            }
            ClientKey::Tls(value) => {
                state.write_u64(u64::from(b't') << TAG);
                state.write(value);
            }
        }
    }

    /// Appends the key as `ip:…`, `header:NAME:…` or `plugin:…`, the value's
    /// bytes unchanged (Redis keys are binary-safe).
    pub fn write_bytes(&self, out: &mut Vec<u8>) {
        match self {
            ClientKey::Ip(..) => out.extend_from_slice(self.to_string().as_bytes()),
            ClientKey::Header(name, value) => {
                out.extend_from_slice(b"header:");
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(value);
            }
            ClientKey::Plugin(value) => {
                out.extend_from_slice(b"plugin:");
                out.extend_from_slice(value);
            }
            ClientKey::Tls(value) => {
                out.extend_from_slice(b"tls:");
                out.extend_from_slice(value);
            }
        }
    }

    /// Reads a stored client id in its canonical form (see [`canonical_client_id`]).
    pub fn parse(id: &'a str) -> Result<ClientKey<'a>, String> {
        let (source, rest) = id
            .split_once(':')
            .ok_or_else(|| format!("client id {id:?} does not name its source"))?;
        match source {
            "ip" => parse_address(rest),
            "header" => {
                let (name, value) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("client id {id:?}: expected header:NAME:VALUE"))?;
                Ok(ClientKey::Header(name, value.as_bytes()))
            }
            "plugin" => Ok(ClientKey::Plugin(rest.as_bytes())),
            "tls" => Ok(ClientKey::Tls(rest.as_bytes())),
            other => Err(format!(
                "client id {id:?}: unknown source {other:?}; allowed: ip, header:NAME, plugin, tls"
            )),
        }
    }
}

/// `ip:203.0.113.7`, `ip:2001:db8:1:2::/64`, `header:x-api-key:abc`,
/// `plugin:tenant-a` (bytes that are not UTF-8 are shown replaced).
impl fmt::Display for ClientKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Ip(ip @ IpAddr::V4(_), _) => write!(f, "ip:{ip}"),
            ClientKey::Ip(ip, prefix) if *prefix >= 128 => write!(f, "ip:{ip}"),
            ClientKey::Ip(ip, prefix) => write!(f, "ip:{ip}/{prefix}"),
            ClientKey::Header(name, value) => {
                write!(f, "header:{name}:{}", String::from_utf8_lossy(value))
            }
            ClientKey::Plugin(value) => write!(f, "plugin:{}", String::from_utf8_lossy(value)),
            ClientKey::Tls(value) => write!(f, "tls:{}", String::from_utf8_lossy(value)),
        }
    }
}

/// `203.0.113.7`, `2001:db8::1` or `2001:db8:1:2::/64`.
fn parse_address(text: &str) -> Result<ClientKey<'static>, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        let prefix = if ip.to_canonical().is_ipv4() { 32 } else { 128 };
        return Ok(ClientKey::address(ip, prefix));
    }
    match text.parse::<IpNet>() {
        Ok(IpNet::V6(net)) => Ok(ClientKey::address(
            IpAddr::V6(net.network()),
            net.prefix_len(),
        )),
        Ok(IpNet::V4(net)) if net.prefix_len() == 32 => {
            Ok(ClientKey::Ip(IpAddr::V4(net.addr()), 32))
        }
        Ok(IpNet::V4(_)) => Err(format!(
            "{text:?}: IPv4 clients are single addresses, not networks"
        )),
        Err(_) => Err(format!("{text:?} is not an IP address")),
    }
}

/// A client id as the admin API, the CLI and the `clients` table hold it,
/// from what a user wrote:
///
/// - `ip:ADDR`, `header:NAME:VALUE`, `plugin:VALUE`: as written, with the
///   header name in lower case and an IPv6 address reduced to the network
///   clients are grouped by (`rate_limit.ipv6_prefix`);
/// - a bare IP address (or IPv6 network): `ip:ADDR`;
/// - any other bare value: a key of the configured source, `header:NAME:VALUE`
///   under `key: header:NAME` and `plugin:VALUE` under `key: plugin`; under
///   `key: ip` it is an error, since only addresses are clients there.
///
/// Values must be 1 to [`MAX_KEY_BYTES`] bytes without control characters.
pub fn canonical_client_id(input: &str, source: &KeySource) -> Result<String, String> {
    let input = input.trim();
    let prefixed = ["ip:", "header:", "plugin:", "tls:"]
        .iter()
        .any(|p| input.starts_with(p));
    let key = if prefixed {
        match ClientKey::parse(input)? {
            ClientKey::Ip(ip, _) => ClientKey::address(ip, source.ipv6_prefix),
            ClientKey::Header(name, value) => {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a valid header name"))?;
                return finish(ClientKey::Header(name.as_str(), value));
            }
            plugin => plugin,
        }
    } else if input.parse::<IpAddr>().is_ok() || input.parse::<IpNet>().is_ok() {
        match parse_address(input)? {
            ClientKey::Ip(ip, _) => ClientKey::address(ip, source.ipv6_prefix),
            other => other,
        }
    } else {
        match &source.kind {
            KeyKind::Header(name) => ClientKey::Header(name.as_str(), input.as_bytes()),
            KeyKind::Plugin => ClientKey::Plugin(input.as_bytes()),
            KeyKind::TlsSubject | KeyKind::TlsFingerprint => ClientKey::Tls(input.as_bytes()),
            KeyKind::Ip => {
                return Err(format!(
                    "{input:?} is not an IP address, and rate_limit.key is ip; \
                     name the source: ip:ADDRESS, header:NAME:VALUE or plugin:VALUE"
                ));
            }
        }
    };
    finish(key)
}

fn finish(key: ClientKey<'_>) -> Result<String, String> {
    let value = key.value();
    if let ClientKey::Header(..) | ClientKey::Plugin(_) = key {
        if value.trim_ascii().is_empty() {
            return Err("the key value must not be empty".into());
        }
        if value.len() > MAX_KEY_BYTES {
            return Err(format!(
                "the key value is longer than {MAX_KEY_BYTES} bytes"
            ));
        }
        if value.iter().any(u8::is_ascii_control) {
            return Err("the key value must not contain control characters".into());
        }
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(kind: KeyKind) -> KeySource {
        KeySource {
            kind,
            ipv6_prefix: 64,
        }
    }

    fn address(ip: &str) -> String {
        ClientKey::address(ip.parse().unwrap(), 64).to_string()
    }

    #[test]
    fn ipv4_is_the_address() {
        assert_eq!(address("203.0.113.7"), "ip:203.0.113.7");
        assert_eq!(address("::ffff:203.0.113.7"), "ip:203.0.113.7");
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        assert_eq!(address("2001:db8:1:2:aaaa::1"), "ip:2001:db8:1:2::/64");
        assert_eq!(
            ClientKey::address("2001:db8:1:2:aaaa::1".parse().unwrap(), 64),
            ClientKey::address("2001:db8:1:2:bbbb::9".parse().unwrap(), 64)
        );
        let full = ClientKey::address("2001:db8::1".parse().unwrap(), 128);
        assert_eq!(full.to_string(), "ip:2001:db8::1");
    }

    #[test]
    fn header_key_is_trimmed_and_blank_is_none() {
        let name = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        assert_eq!(ClientKey::header(&name, &h), None);
        h.insert("x-api-key", " key-123 ".parse().unwrap());
        assert_eq!(
            ClientKey::header(&name, &h),
            Some(ClientKey::Header("x-api-key", b"key-123"))
        );
        h.insert("x-api-key", "".parse().unwrap());
        assert_eq!(ClientKey::header(&name, &h), None);
    }

    #[test]
    fn sources_never_share_a_key() {
        let hash = |k: ClientKey| {
            let mut h = std::hash::DefaultHasher::new();
            k.hash_into(&mut h);
            h.finish()
        };
        let ip = ClientKey::address("127.0.0.5".parse().unwrap(), 64);
        let header = ClientKey::Header("x-api-key", b"127.0.0.5");
        let plugin = ClientKey::Plugin(b"127.0.0.5");
        let other_header = ClientKey::Header("x-api-ke", b"y127.0.0.5");
        let all = [hash(ip), hash(header), hash(plugin), hash(other_header)];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn stored_ids_parse_back_to_the_request_key() {
        let name = HeaderName::from_static("x-api-key");
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "abc".parse().unwrap());
        let from_request = ClientKey::header(&name, &h).unwrap();
        assert_eq!(
            ClientKey::parse("header:x-api-key:abc").unwrap(),
            from_request
        );
        assert_eq!(
            ClientKey::parse("ip:2001:db8:1:2::/64").unwrap(),
            ClientKey::address("2001:db8:1:2::77".parse().unwrap(), 64)
        );
        assert_eq!(
            ClientKey::parse("ip:10.0.0.1").unwrap(),
            ClientKey::address("10.0.0.1".parse().unwrap(), 64)
        );
        assert!(ClientKey::parse("10.0.0.1").is_err());
        assert!(ClientKey::parse("cookie:x").is_err());
    }

    #[test]
    fn bare_ids_take_the_configured_source() {
        let header = source(KeyKind::Header(HeaderName::from_static("x-api-key")));
        let plugin = source(KeyKind::Plugin);
        let ip = source(KeyKind::Ip);
        assert_eq!(
            canonical_client_id("alice", &header).unwrap(),
            "header:x-api-key:alice"
        );
        assert_eq!(
            canonical_client_id("alice", &plugin).unwrap(),
            "plugin:alice"
        );
        assert!(canonical_client_id("alice", &ip).is_err());
        assert!(canonical_client_id("10.0.0.0/8", &header).is_err());
        assert_eq!(
            canonical_client_id("2001:db8:1:2::/64", &ip).unwrap(),
            "ip:2001:db8:1:2::/64"
        );
        for s in [&header, &plugin, &ip] {
            assert_eq!(canonical_client_id("10.0.0.1", s).unwrap(), "ip:10.0.0.1");
            assert_eq!(
                canonical_client_id("2001:db8:1:2::9", s).unwrap(),
                "ip:2001:db8:1:2::/64"
            );
        }
    }

    #[test]
    fn prefixed_ids_are_normalised_and_checked() {
        let ip = source(KeyKind::Ip);
        assert_eq!(
            canonical_client_id("header:X-API-Key:abc", &ip).unwrap(),
            "header:x-api-key:abc"
        );
        assert_eq!(
            canonical_client_id("header:x-api-key:10.0.0.1", &ip).unwrap(),
            "header:x-api-key:10.0.0.1"
        );
        assert_eq!(
            canonical_client_id("ip:2001:db8:1:2::9", &ip).unwrap(),
            "ip:2001:db8:1:2::/64"
        );
        assert!(canonical_client_id("ip:10.0.0.0/8", &ip).is_err());
        assert!(canonical_client_id("ip:nope", &ip).is_err());
        assert!(canonical_client_id("header:bad name:x", &ip).is_err());
        assert!(canonical_client_id("plugin:", &ip).is_err());
        let long = format!("plugin:{}", "k".repeat(MAX_KEY_BYTES + 1));
        assert!(canonical_client_id(&long, &ip).is_err());
        let longest = format!("plugin:{}", "k".repeat(MAX_KEY_BYTES));
        assert!(canonical_client_id(&longest, &ip).is_ok());
    }

    #[test]
    fn oversized_values_are_flagged() {
        let long = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(ClientKey::Plugin(&long).is_oversized());
        assert!(!ClientKey::Plugin(&long[1..]).is_oversized());
        assert!(!ClientKey::address("10.0.0.1".parse().unwrap(), 64).is_oversized());
    }
}
