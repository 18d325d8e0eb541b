//! The client side towards `https://` backends: verified against the
//! system's roots, or only against `proxy.backend_ca` when it is set (a
//! private CA should not be widened to every public one), with the
//! backend's host name as SNI and for the name check.

use super::certs;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How connections to one pool's `https://` backends are made.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    connector: TlsConnector,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// Trusting `roots` (the system's when `None`), offering `alpn`.
    pub fn new(roots: Option<Arc<RootCertStore>>, alpn: &[&[u8]]) -> Result<Connector, String> {
        let roots = match roots {
            Some(roots) => roots,
            None => system_roots()?,
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(certs::provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        Ok(Connector {
            connector: TlsConnector::from(Arc::clone(&config)),
            config,
        })
    }

    /// The client configuration, for hyper's connector (health probes, HTTP/2).
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// Runs the handshake on `stream` for `host` (a name or an address).
    pub async fn connect(
        &self,
        host: &str,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, stream).await
    }
}

/// The system's trusted roots, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted roots found on this system ({} errors); set proxy.backend_ca",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}
