//! `tls:` (the HTTPS listener, its certificates, client certificates and
//! ACME) and `proxy.backend_ca`. Certificate files are read and checked
//! here, so `validate` and a reload report a bad pair with its line before
//! anything is served with it.

use super::raw::{RawAcme, RawTls, S};
use super::validate::{Checker, spanned};
use super::{Problem, TlsConfig};
use crate::tls::certs::{self, Pair};
use crate::tls::{ClientAuth, TlsServer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One `tls.certificates` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where it was written, for problems found when it is read again.
    pub line: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthConfig {
    /// CA bundle client certificates must chain to.
    pub ca: PathBuf,
    /// Refuse handshakes without a valid client certificate.
    pub required: bool,
}

/// `tls.acme`: certificates obtained and renewed automatically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: Option<String>,
    pub domains: Vec<String>,
    /// Account and certificates kept here between runs.
    pub cache: PathBuf,
    /// Trust this CA (PEM) for the directory's own HTTPS (a private or test CA).
    pub directory_ca: Option<PathBuf>,
    /// Renew when a certificate has less than this left.
    pub renew_before: Duration,
}

impl TlsConfig {
    /// Reads every certificate and the client CA; every problem found.
    pub fn load(&self) -> Result<(Vec<Pair>, Option<ClientAuth>), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut pairs = Vec::new();
        for (i, entry) in self.certificates.iter().enumerate() {
            match certs::load_pair(&entry.cert, &entry.key) {
                Ok(pair) => pairs.push(pair),
                Err(message) => problems.push(Problem {
                    path: format!("tls.certificates[{i}]"),
                    line: entry.line,
                    column: entry.line.map(|_| 1),
                    message,
                }),
            }
        }
        let client_auth = match &self.client_auth {
            Some(auth) => match certs::read_roots(&auth.ca) {
                Ok(roots) => Some(ClientAuth {
                    roots: Arc::new(roots),
                    required: auth.required,
                }),
                Err(message) => {
                    problems.push(Problem::new("tls.client_auth.ca", message));
                    None
                }
            },
            None => None,
        };
        if problems.is_empty() {
            Ok((pairs, client_auth))
        } else {
            Err(problems)
        }
    }

    /// The HTTPS listener's TLS side, from the files as they are now.
    pub fn server(&self) -> Result<TlsServer, Vec<Problem>> {
        let (pairs, client_auth) = self.load()?;
        TlsServer::new(pairs, client_auth).map_err(|e| vec![Problem::new("tls", e)])
    }

    /// Every file whose change should reload the certificates.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .collect();
        files.extend(self.client_auth.as_ref().map(|a| a.ca.clone()));
        files
    }
}

/// The `tls` section; `None` when absent.
pub(super) fn tls(
    c: &mut Checker,
    raw: Option<&RawTls>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Option<TlsConfig> {
    let raw = raw?;
    let https = match &raw.listen {
        Some(s) => {
            let input = spanned("tls.listen", s);
            match input.value.trim().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    c.problems.push(input.problem(format!(
                        "invalid listen address {:?}; allowed: IP:PORT such as 0.0.0.0:8443",
                        input.value
                    )));
                    SocketAddr::from(([0, 0, 0, 0], 8443))
                }
            }
        }
        None => SocketAddr::from(([0, 0, 0, 0], 8443)),
    };
    for (other, name) in [(listen, "listen"), (admin, "admin.listen")] {
        if https.port() != 0 && https.port() == other.port() && shares_address(https, other) {
            c.problems.push(Problem::new(
                "tls.listen",
                format!("tls.listen {https} takes the same port as {name} {other}"),
            ));
        }
    }
    let certificates: Vec<CertificateConfig> = raw
        .certificates
        .iter()
        .flatten()
        .map(|entry: &S<_>| {
            let line = entry.referenced.line() as usize;
            CertificateConfig {
                cert: PathBuf::from(entry.value.cert.trim()),
                key: PathBuf::from(entry.value.key.trim()),
                line: (line > 0).then_some(line),
            }
        })
        .collect();
    let acme = raw.acme.as_ref().and_then(|s| acme(c, s));
    if certificates.is_empty() && acme.is_none() {
        c.problems.push(Problem::new(
            "tls.certificates",
            "the HTTPS listener needs a certificate: list {cert, key} pairs under tls.certificates, or set tls.acme",
        ));
    }
    let client_auth = raw.client_auth.as_ref().map(|s| ClientAuthConfig {
        ca: PathBuf::from(s.value.ca.trim()),
        required: s.value.required.unwrap_or(false),
    });
    let config = TlsConfig {
        listen: https,
        certificates,
        redirect_http: raw.redirect_http.unwrap_or(false),
        client_auth,
        acme,
    };
    if let Err(problems) = config.load() {
        let client_auth_line = raw.client_auth.as_ref().map(|s| {
            let input = spanned("tls.client_auth", s);
            (input.line, input.column)
        });
        for mut problem in problems {
            if problem.path == "tls.client_auth.ca"
                && let Some((line, column)) = client_auth_line
            {
                problem.line = line;
                problem.column = column;
            }
            c.problems.push(problem);
        }
    }
    Some(config)
}

fn shares_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

fn acme(c: &mut Checker, raw: &S<RawAcme>) -> Option<AcmeConfig> {
    let whole = spanned("tls.acme", raw);
    let raw = &raw.value;
    let Some(directory) = &raw.directory else {
        c.problems.push(whole.problem(
            "tls.acme needs directory: the CA's ACME directory URL (https://acme-v02.api.letsencrypt.org/directory)",
        ));
        return None;
    };
    let directory_input = spanned("tls.acme.directory", directory);
    if !directory.value.trim().starts_with("https://") {
        c.problems
            .push(directory_input.problem("the ACME directory must be an https:// URL"));
    }
    let mut domains = Vec::new();
    for (i, domain) in raw.domains.iter().flatten().enumerate() {
        let input = spanned(format!("tls.acme.domains[{i}]"), domain);
        let name = domain.value.trim().to_ascii_lowercase();
        if rustls::pki_types::DnsName::try_from(name.as_str()).is_err()
            || name.parse::<std::net::IpAddr>().is_ok()
        {
            c.problems
                .push(input.problem(format!("{name:?} is not a DNS name")));
        } else {
            domains.push(name);
        }
    }
    if raw.domains.as_ref().is_none_or(Vec::is_empty) {
        c.problems
            .push(whole.problem("tls.acme needs domains: the names to obtain a certificate for"));
    }
    let contact = raw.contact.as_ref().map(|s| s.value.trim().to_owned());
    if let (Some(text), Some(s)) = (&contact, &raw.contact)
        && !text.starts_with("mailto:")
    {
        c.problems
            .push(spanned("tls.acme.contact", s).problem("contact must be a mailto: URL"));
    }
    let renew_before = c.duration(
        raw.renew_before
            .as_ref()
            .map(|s| spanned("tls.acme.renew_before", s)),
        Duration::from_secs(30 * 86_400),
    );
    Some(AcmeConfig {
        directory: directory.value.trim().to_owned(),
        contact,
        domains,
        cache: raw
            .cache
            .as_ref()
            .map(|s| PathBuf::from(s.value.trim()))
            .unwrap_or_else(default_acme_cache),
        directory_ca: raw
            .directory_ca
            .as_ref()
            .map(|s| PathBuf::from(s.value.trim())),
        renew_before,
    })
}

/// `$XDG_DATA_HOME/gateway/acme`, else `~/.local/share/gateway/acme`.
fn default_acme_cache() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("gateway")
        .join("acme")
}

/// `proxy.backend_ca`: the CA bundle `https://` backends are verified against.
pub(super) fn backend_ca(c: &mut Checker, raw: Option<&S<String>>) -> Option<PathBuf> {
    let s = raw?;
    let path = PathBuf::from(s.value.trim());
    if let Err(message) = certs::read_roots(&path) {
        c.problems
            .push(spanned("proxy.backend_ca", s).problem(message));
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::super::{Overrides, Protocol, parse};
    use super::*;

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, &Overrides::default()).expect_err("invalid config")
    }

    /// A self-signed pair for `names` written to `dir/<file>.pem|.key`.
    fn pair(dir: &std::path::Path, file: &str, names: &[&str]) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    #[test]
    fn certificates_are_read_and_every_bad_one_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        pair(dir.path(), "good", &["a.test"]);
        pair(dir.path(), "other", &["b.test"]);
        let text = format!(
            "backends: [http://127.0.0.1:9]\ntls:\n  listen: 127.0.0.1:0\n  certificates:\n    - {{cert: {d}/good.pem, key: {d}/good.key}}\n    - {{cert: {d}/good.pem, key: {d}/other.key}}\n    - {{cert: {d}/missing.pem, key: {d}/good.key}}\n"
        );
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, "tls.certificates[1]");
        assert_eq!(found[0].line, Some(6));
        assert!(
            found[0].message.contains("do not belong together"),
            "{found:?}"
        );
        assert_eq!(found[1].path, "tls.certificates[2]");
        assert_eq!(found[1].line, Some(7));
        assert!(found[1].message.contains("missing.pem"), "{found:?}");

        let text = format!(
            "backends: [http://127.0.0.1:9]\ntls:\n  certificates:\n    - {{cert: {d}/good.pem, key: {d}/good.key}}\n  client_auth: {{ca: {d}/good.pem, required: true}}\n  redirect_http: true\n"
        );
        let config = parse(&text, &Overrides::default()).unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.listen.port(), 8443);
        assert!(tls.redirect_http);
        assert!(tls.client_auth.unwrap().required);
    }

    #[test]
    fn a_listener_without_certificates_and_keys_without_client_auth_are_refused() {
        let found = problems("backends: [http://127.0.0.1:9]\ntls:\n  listen: 127.0.0.1:8443\n");
        assert!(
            found.iter().any(|p| p.path == "tls.certificates"),
            "{found:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        pair(dir.path(), "good", &["a.test"]);
        let found = problems(&format!(
            "backends: [http://127.0.0.1:9]\nrate_limit:\n  key: tls_subject\ntls:\n  certificates: [{{cert: {d}/good.pem, key: {d}/good.key}}]\n"
        ));
        assert!(
            found
                .iter()
                .any(|p| p.path == "rate_limit.key" && p.message.contains("client_auth")),
            "{found:?}"
        );
        let found = problems(&format!(
            "backends: [http://127.0.0.1:9]\ntls:\n  listen: 0.0.0.0:8080\n  certificates: [{{cert: {d}/good.pem, key: {d}/good.key}}]\n"
        ));
        assert!(found.iter().any(|p| p.path == "tls.listen"), "{found:?}");
    }

    #[test]
    fn acme_needs_a_directory_and_dns_names() {
        let found = problems(
            "backends: [http://127.0.0.1:9]\ntls:\n  acme:\n    directory: http://ca.test/dir\n    contact: ops@example.com\n    domains: [\"bad name\", 10.0.0.1]\n",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"tls.acme.directory"), "{found:?}");
        assert!(paths.contains(&"tls.acme.contact"), "{found:?}");
        assert!(paths.contains(&"tls.acme.domains[0]"), "{found:?}");
        assert!(paths.contains(&"tls.acme.domains[1]"), "{found:?}");
        let config = parse(
            "backends: [http://127.0.0.1:9]\ntls:\n  acme:\n    directory: https://ca.test/dir\n    domains: [Example.COM]\n    cache: /tmp/acme\n",
            &Overrides::default(),
        )
        .unwrap();
        let acme = config.tls.unwrap().acme.unwrap();
        assert_eq!(acme.domains, ["example.com"]);
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn https_backends_and_pool_protocols() {
        let config = parse(
            "pools:\n  a:\n    backends: [https://api.test, \"https://10.0.0.1:8443/v1\"]\n    protocol: h2\n  b:\n    backends: [http://127.0.0.1:9]\n    protocol: h2c\nroutes:\n  - {match: {path_prefix: /a}, pool: a}\n  - {match: {path_prefix: /}, pool: b}\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.pools[0].protocol, Protocol::H2);
        assert_eq!(config.pools[1].protocol, Protocol::H2c);
        let found = problems(
            "pools:\n  a:\n    backends: [http://127.0.0.1:9]\n    protocol: h2\n  b:\n    backends: [https://b.test]\n    protocol: h3\nroutes:\n  - {match: {path_prefix: /a}, pool: a}\n  - {match: {path_prefix: /}, pool: b}\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.path == "pools.a.protocol" && p.message.contains("https://")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.path == "pools.b.protocol" && p.message.contains("h3")),
            "{found:?}"
        );
        let found = problems("backends: [ftp://x.test]\n");
        assert!(
            found[0].message.contains("http:// or https://"),
            "{found:?}"
        );
    }
}
