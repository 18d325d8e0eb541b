//! Who a client certificate says the client is. Read once per connection,
//! after rustls has verified the chain against `tls.client_auth.ca`, and
//! shared by every request on the connection.

use rustls::pki_types::CertificateDer;
use std::fmt::Write;

/// What one TLS connection knows about its client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// The verified client certificate's subject, RFC 4514 style
    /// (`CN=alice,O=Example`); `None` without a client certificate.
    pub subject: Option<String>,
    /// SHA-256 of the verified client certificate, lower-case hex.
    pub fingerprint: Option<String>,
    /// The name the client asked for (SNI).
    pub server_name: Option<String>,
}

impl Session {
    /// The session of a connection whose client presented `chain` (leaf
    /// first; rustls has verified it) and asked for `server_name`.
    pub fn new(chain: Option<&[CertificateDer<'_>]>, server_name: Option<&str>) -> Session {
        let leaf = chain.and_then(|c| c.first());
        Session {
            subject: leaf.and_then(|leaf| subject(leaf)),
            fingerprint: leaf.map(|leaf| fingerprint(leaf)),
            server_name: server_name.map(str::to_owned),
        }
    }
}

/// The subject of `cert` as `CN=alice,O=Example` (most specific first, as
/// RFC 4514 writes it).
fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let mut parts = Vec::new();
    for rdn in parsed.subject().iter() {
        for attribute in rdn.iter() {
            let name = x509_parser::objects::oid2abbrev(
                attribute.attr_type(),
                x509_parser::objects::oid_registry(),
            )
            .map(str::to_owned)
            .unwrap_or_else(|_| attribute.attr_type().to_id_string());
            let value = attribute.as_str().ok()?;
            parts.push(format!("{name}={}", escape(value)));
        }
    }
    parts.reverse();
    Some(parts.join(","))
}

/// RFC 4514 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            let _ = write!(out, "\\{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    let mut out = String::with_capacity(64);
    for byte in digest.as_ref() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_and_fingerprint_of_a_client_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::OrganizationName, "Example, Inc");
        name.push(rcgen::DnType::CommonName, "alice");
        params.distinguished_name = name;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let session = Session::new(Some(std::slice::from_ref(&der)), Some("a.test"));
        assert_eq!(
            session.subject.as_deref(),
            Some("CN=alice,O=Example\\, Inc")
        );
        let fingerprint = session.fingerprint.unwrap();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Session::new(None, None), Session::default());
    }
}
