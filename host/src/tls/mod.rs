//! TLS with rustls (ring): the HTTPS listener's certificates and client
//! verification, what a client certificate says about its client, and the
//! client side used towards `https://` backends.
//!
//! Nothing here reads the configuration types: callers hand in paths and
//! loaded pairs, so `config` can use [`certs`] to check files without the
//! two modules importing each other.

pub mod backend;
pub mod certs;
mod identity;
mod resolver;

pub use identity::Session;

use arc_swap::ArcSwap;
use certs::Pair;
use resolver::{CertSet, Resolver};
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::sync::{Arc, Mutex};
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered to clients, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Client certificates asked for on the HTTPS listener.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub roots: Arc<RootCertStore>,
    /// Refuse handshakes without a valid client certificate.
    pub required: bool,
}

/// The HTTPS listener's TLS side: what a new handshake is served with.
/// Certificates and client verification change in place on reload; session
/// tickets and the resumption cache survive it.
pub struct TlsServer {
    resolver: Arc<Resolver>,
    config: ArcSwap<ServerConfig>,
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    sources: Mutex<Sources>,
}

/// Where the served certificates come from.
#[derive(Default)]
struct Sources {
    /// `tls.certificates`, in order.
    files: Vec<Pair>,
    /// Obtained by ACME.
    acme: Vec<Pair>,
}

impl Sources {
    fn set(&self) -> Option<CertSet> {
        let all: Vec<Pair> = self.files.iter().chain(&self.acme).cloned().collect();
        CertSet::new(&all)
    }
}

impl TlsServer {
    /// A server with `files` (possibly none while ACME has yet to obtain
    /// one: handshakes then fail until it has).
    pub fn new(files: Vec<Pair>, client_auth: Option<ClientAuth>) -> Result<TlsServer, String> {
        let sources = Sources {
            files,
            acme: Vec::new(),
        };
        let resolver = Arc::new(Resolver::new(sources.set()));
        let sessions: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(64 * 1024);
        let ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("cannot make a session ticket key ({e})"))?;
        let config = server_config(&resolver, client_auth.as_ref(), &sessions, &ticketer)?;
        Ok(TlsServer {
            resolver,
            config: ArcSwap::from_pointee(config),
            sessions,
            ticketer,
            sources: Mutex::new(sources),
        })
    }

    /// An acceptor for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// New handshakes get `files` and `client_auth` (a reload read them).
    pub fn update(&self, files: Vec<Pair>, client_auth: Option<&ClientAuth>) -> Result<(), String> {
        let config = server_config(&self.resolver, client_auth, &self.sessions, &self.ticketer)?;
        let mut sources = lock(&self.sources);
        sources.files = files;
        self.resolver.replace(sources.set());
        self.config.store(Arc::new(config));
        Ok(())
    }

    /// New handshakes get the certificates in `files` (their files changed).
    pub fn replace_files(&self, files: Vec<Pair>) {
        let mut sources = lock(&self.sources);
        sources.files = files;
        self.resolver.replace(sources.set());
    }

    /// New handshakes get `pairs` beside the configured certificates (ACME
    /// obtained or renewed them).
    pub fn replace_acme(&self, pairs: Vec<Pair>) {
        let mut sources = lock(&self.sources);
        sources.acme = pairs;
        self.resolver.replace(sources.set());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn server_config(
    resolver: &Arc<Resolver>,
    client_auth: Option<&ClientAuth>,
    sessions: &Arc<dyn StoresServerSessions>,
    ticketer: &Arc<dyn ProducesTickets>,
) -> Result<ServerConfig, String> {
    let provider = Arc::new(certs::provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client_auth {
        Some(auth) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::clone(&auth.roots), provider);
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls.client_auth.ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::clone(resolver) as _);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::clone(sessions);
    config.ticketer = Arc::clone(ticketer);
    Ok(config)
}
