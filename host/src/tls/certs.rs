//! Certificate files: reading a PEM chain and its key into what rustls
//! serves, and checking them the way `validate` reports (pairing, dates,
//! names) before any of it reaches a listener.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate chain with its key, ready to serve, and what it says.
#[derive(Debug, Clone)]
pub struct Pair {
    pub key: Arc<CertifiedKey>,
    /// DNS names and addresses from subjectAltName, lower case.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

/// Reads `cert` (PEM chain, leaf first) and `key` (PEM private key) and
/// checks that they belong together and that the leaf is valid now.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Pair, String> {
    let chain = read_chain(cert)?;
    let private = PrivateKeyDer::from_pem_slice(&read_file(key)?)
        .map_err(|e| format!("{}: no private key read ({e})", key.display()))?;
    pair_from_der(chain, private, SystemTime::now())
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))
}

/// A pair from PEM text (certificates obtained by ACME).
pub fn pair_from_pem(chain: &str, key: &str) -> Result<Pair, String> {
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("private key: {e}"))?;
    pair_from_der(chain, key, SystemTime::now())
}

fn pair_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    now: SystemTime,
) -> Result<Pair, String> {
    let Some(leaf) = chain.first() else {
        return Err("no certificate in the file".to_owned());
    };
    let facts = inspect(leaf)?;
    if now < facts.not_before {
        return Err(format!(
            "certificate is not valid before {}",
            httpdate::fmt_http_date(facts.not_before)
        ));
    }
    if now > facts.not_after {
        return Err(format!(
            "certificate expired on {}",
            httpdate::fmt_http_date(facts.not_after)
        ));
    }
    if facts.names.is_empty() {
        return Err(
            "certificate names no host (no DNS name or address in subjectAltName), so no client can verify it"
                .to_owned(),
        );
    }
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| format!("certificate and key do not belong together ({e})"))?;
    Ok(Pair {
        key: Arc::new(certified),
        names: facts.names,
        not_after: facts.not_after,
    })
}

/// Reads every certificate in a PEM file.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(&read_file(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(chain)
}

/// The largest PEM file read (a CA bundle of every public root is ~220 KB).
const MAX_PEM_BYTES: u64 = 4 << 20;

/// A PEM file's bytes; a device or a file too large is refused rather than
/// read without end.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{}: larger than {} MiB, not a PEM file",
            path.display(),
            MAX_PEM_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// A root store holding every certificate in `path` (a CA bundle).
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_chain(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate ({e})", path.display()))?;
    }
    Ok(roots)
}

/// The crypto the gateway uses everywhere (ring).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

struct Facts {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
}

fn inspect(leaf: &CertificateDer<'_>) -> Result<Facts, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        let seconds = t.timestamp();
        if seconds < 0 {
            UNIX_EPOCH
        } else {
            UNIX_EPOCH + Duration::from_secs(seconds as u64)
        }
    };
    Ok(Facts {
        names,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair valid from the start of 2026 to the end of `until`.
    fn made(names: &[&str], until: i32) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn at(year: i32) -> SystemTime {
        let seconds = (year - 1970) as u64 * 365 * 86_400;
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn check(cert: &str, key: &str, now: SystemTime) -> Result<Pair, String> {
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        pair_from_der(chain, key, now)
    }

    #[test]
    fn a_matching_pair_serves_its_names() {
        let (cert, key) = made(&["a.test", "B.test"], 2026);
        let pair = check(&cert, &key, at(2026) + Duration::from_secs(30 * 86_400)).unwrap();
        assert_eq!(pair.names, ["a.test", "b.test"]);
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let (cert, _) = made(&["a.test"], 2026);
        let (_, other) = made(&["a.test"], 2026);
        let error = check(&cert, &other, at(2026) + Duration::from_secs(30 * 86_400)).unwrap_err();
        assert!(error.contains("do not belong together"), "{error}");
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let (cert, key) = made(&["a.test"], 2026);
        let error = check(&cert, &key, at(2028)).unwrap_err();
        assert!(error.contains("expired"), "{error}");
        let error = check(&cert, &key, at(2020)).unwrap_err();
        assert!(error.contains("not valid before"), "{error}");
    }

    #[test]
    fn an_endless_file_is_refused_not_read_for_ever() {
        let error = read_chain(Path::new("/dev/zero")).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
        let error = load_pair(Path::new("/nonexistent/a.pem"), Path::new("/dev/zero")).unwrap_err();
        assert!(error.contains("/nonexistent/a.pem"), "{error}");
    }

    #[test]
    fn a_certificate_without_names_is_refused() {
        let (cert, key) = made(&[], 2026);
        let error = check(&cert, &key, at(2026) + Duration::from_secs(30 * 86_400)).unwrap_err();
        assert!(error.contains("names no host"), "{error}");
    }
}
