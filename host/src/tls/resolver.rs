//! Which certificate a handshake gets: the one whose names match the
//! client's SNI (exact, then `*.` wildcard one label deep, as browsers
//! check), else the first configured. The set is swapped whole when
//! certificates are reloaded, so a handshake sees the old set or the new one.

use super::certs::Pair;
use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates being served, by name.
#[derive(Debug)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// A set from `pairs` in the order configured (the first is the
    /// default; a name in two certificates goes to the first). `None` when
    /// there is no pair.
    pub fn new(pairs: &[Pair]) -> Option<CertSet> {
        let default = Arc::clone(&pairs.first()?.key);
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for pair in pairs {
            for name in &pair.names {
                let map = match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()),
                    None => exact.entry(name.clone()),
                };
                map.or_insert_with(|| Arc::clone(&pair.key));
            }
        }
        Some(CertSet {
            exact,
            wildcard,
            default,
        })
    }

    /// The certificate for SNI `name` (any case, a trailing dot allowed).
    pub fn pick(&self, name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

/// The resolver rustls asks on every handshake. Without a set (ACME has
/// not obtained a certificate yet) handshakes are refused.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwapOption<CertSet>,
}

impl Resolver {
    pub fn new(set: Option<CertSet>) -> Self {
        Resolver {
            current: ArcSwapOption::from(set.map(Arc::new)),
        }
    }

    /// New handshakes get `set`; connections already up keep theirs.
    pub fn replace(&self, set: Option<CertSet>) {
        self.current.store(set.map(Arc::new));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.load();
        Some(Arc::clone(current.as_ref()?.pick(hello.server_name())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::pair_from_pem;

    fn pair(names: &[&str]) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        pair_from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let first = pair(&["a.test"]);
        let wild = pair(&["*.b.test"]);
        let exact = pair(&["x.b.test", "c.test"]);
        let set = CertSet::new(&[first.clone(), wild.clone(), exact.clone()]).unwrap();
        assert!(Arc::ptr_eq(set.pick(Some("A.TEST.")), &first.key));
        assert!(Arc::ptr_eq(set.pick(Some("y.b.test")), &wild.key));
        assert!(Arc::ptr_eq(set.pick(Some("x.b.test")), &exact.key));
        assert!(Arc::ptr_eq(set.pick(Some("c.test")), &exact.key));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(set.pick(Some("z.y.b.test")), &first.key));
        assert!(Arc::ptr_eq(set.pick(Some("b.test")), &first.key));
        assert!(Arc::ptr_eq(set.pick(None), &first.key));
    }

    #[test]
    fn a_name_in_two_certificates_goes_to_the_first() {
        let one = pair(&["a.test"]);
        let two = pair(&["a.test"]);
        let set = CertSet::new(&[one.clone(), two]).unwrap();
        assert!(Arc::ptr_eq(set.pick(Some("a.test")), &one.key));
        assert!(CertSet::new(&[]).is_none());
    }
}
