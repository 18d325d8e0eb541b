//! The request path: client address → backend choice → forward with retries → response and log.

mod backend_body;
mod body;
mod client_addr;
mod conn;
mod error;
mod exchange;
mod forward;
mod headers;
mod pool;
mod target;
mod upgrade;
mod upload;

pub use client_addr::client_ip;
pub use error::{ProxyError, client_closed};

use crate::balancer::{Backend, BackendSelection};
use crate::config::{Config, ProxyConfig};
use crate::limiter::shared::{Budget, Verdict};
use crate::limiter::{self, ClientKey, KeyKind, KeySource, UnknownKeys};
use crate::metrics::Metrics;
use crate::plugin::{KeyRole, Plugin, Plugins, RequestView};
use crate::server::ClientBody;
use backend_body::BackendBody;
use body::{BodySlot, ObservedBody};
use bytes::Bytes;
use exchange::Exchange;
use forward::Upstream;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;
use pool::Pool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use upload::Upload;

/// What the client receives: a backend's streamed body or the gateway's own answer.
pub type ResponseBody = Either<ObservedBody<BackendBody, Exchange>, Full<Bytes>>;

/// Shared by every connection; cheap to reach through an `Arc`.
pub struct Proxy {
    /// The configured backends, in order; indices are stable.
    backends: Arc<[Arc<Backend>]>,
    /// The balancing algorithm.
    selection: Arc<dyn BackendSelection>,
    /// Pooled keep-alive HTTP/1.1 connections to all backends.
    pool: Pool,
    /// Precomputed scheme/authority/prefix per backend.
    upstreams: Vec<Upstream>,
    settings: ProxyConfig,
    metrics: Arc<Metrics>,
    access_log: bool,
    /// Per-client token buckets (local or in Redis), when `rate_limit` is on.
    limiter: Option<Arc<Budget>>,
    /// What a client is, for the limiter.
    key_source: KeySource,
    /// What a header or plugin key without a per-client row is charged to.
    unknown_keys: UnknownKeys,
    /// Computes client keys (`rate_limit.key: plugin`).
    key_plugin: Option<Arc<Plugin<KeyRole>>>,
    /// A failed plugin answers 500 instead of falling back.
    plugin_fail_closed: bool,
}

impl Proxy {
    /// A proxy with its own backend pool of at most `connections` per backend.
    pub fn new(
        config: &Config,
        connections: usize,
        backends: Arc<[Arc<Backend>]>,
        selection: Arc<dyn BackendSelection>,
        metrics: Arc<Metrics>,
        limiter: Option<Arc<Budget>>,
        plugins: &Plugins,
    ) -> Self {
        let pool = Pool::new(
            backends.iter().map(|b| b.url.clone()),
            config.proxy.connect_timeout,
            std::time::Duration::from_secs(60),
            connections,
        );
        Proxy {
            upstreams: backends.iter().map(|b| Upstream::new(&b.url)).collect(),
            backends,
            selection,
            pool,
            settings: config.proxy.clone(),
            metrics,
            access_log: config.log.access,
            limiter,
            key_source: config.rate_limit.key.clone(),
            unknown_keys: config.rate_limit.unknown_keys,
            key_plugin: plugins.key.clone(),
            plugin_fail_closed: plugins.fail_closed,
        }
    }

    /// Serves one client request: who is it, may it pass, then forward.
    /// The future owns its `Arc` (no wrapper future around it to hold one,
    /// which cost a copy of this large future per request).
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<ClientBody>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let peer_ip = peer.ip().to_canonical();
        let trusted = self
            .settings
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer_ip));
        let client = client_ip(peer_ip, request.headers(), &self.settings.trusted_proxies);
        let mut exchange = Exchange {
            start,
            logged: self
                .access_log
                .then(|| (request.method().clone(), request.uri().clone())),
            client,
            // Until an answer is decided: a client that goes away before
            // that is logged and counted as 499, as nginx does.
            status: client_closed(),
            backend: None,
            bytes: 0,
            metrics: Arc::clone(&self.metrics),
        };

        let decision = match &self.limiter {
            Some(limiter) => {
                let from_plugin = match &self.key_plugin {
                    Some(plugin) => match plugin_key(plugin, &mut request, client) {
                        Ok(key) => key,
                        Err(_) if self.plugin_fail_closed => {
                            return local(ProxyError::PluginFailed, exchange);
                        }
                        Err(_) => None,
                    },
                    None => None,
                };
                let claimed = match (&from_plugin, &self.key_source.kind) {
                    (Some(key), _) => Some(ClientKey::Plugin(key.as_bytes())),
                    (None, KeyKind::Header(name)) => ClientKey::header(name, request.headers()),
                    (None, _) => None,
                };
                let address = ClientKey::address(client, self.key_source.ipv6_prefix);
                let Some(key) = limiter.local().charge(claimed, address, self.unknown_keys) else {
                    self.metrics.record_unknown_key();
                    return local(ProxyError::UnknownApiKey, exchange);
                };
                let decision = match limiter.check(&key).await {
                    Verdict::Decided(decision) => decision,
                    Verdict::Unavailable => {
                        return local(ProxyError::LimiterUnavailable, exchange);
                    }
                };
                self.metrics.record_decision(&decision);
                if !decision.allowed {
                    tracing::debug!(client = %key, overflow = decision.overflow, "rate limited");
                    exchange.status = StatusCode::TOO_MANY_REQUESTS;
                    drop(exchange);
                    return limiter::rejection(&decision).map(Either::Right);
                }
                Some(decision)
            }
            None => None,
        };
        // Forwarding is written out here rather than in a function of its
        // own: an awaited function's future is moved into its caller's, and
        // this one (it holds the whole backend exchange) cost about 800
        // instructions a request in copies.
        let mut response = 'routed: {
            if let Err(error) = self.admissible(&request) {
                break 'routed local(error, exchange);
            }
            let http11 = request.version() == Version::HTTP_11;
            let upgrade = headers::strip_request(request.headers_mut(), http11);
            let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));

            let (mut parts, body) = request.into_parts();
            let forwarding = headers::Forwarding {
                peer: peer_ip,
                trusted,
                authority: parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            };
            let body = if body.is_end_stream() {
                BodySlot::new(Upload::Whole(None))
            } else {
                match Upload::prepare(
                    body,
                    self.settings.max_body_bytes.unwrap_or(u64::MAX),
                    self.settings.client_body_timeout,
                )
                .await
                {
                    Ok(body) => BodySlot::new(body),
                    Err(error) => break 'routed local(error, exchange),
                }
            };

            let forwarded = self
                .forward(&mut parts, client, body, &forwarding, &mut exchange.backend)
                .await;
            let response = match forwarded {
                Ok(response) => response,
                Err(error) => break 'routed local(error, exchange),
            };
            exchange.status = response.status();
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let (parts, body) = response.into_parts();
                if let (Some(client_upgrade), Some(backend), Some(in_flight)) = (
                    client_upgrade,
                    body.into_upgraded(),
                    exchange.backend.take(),
                ) {
                    upgrade::tunnel(client_upgrade, backend, in_flight);
                    break 'routed Response::from_parts(
                        parts,
                        Either::Right(Full::new(Bytes::new())),
                    );
                }
                // A 101 nobody asked for cannot be relayed over this connection.
                break 'routed local(ProxyError::BadGateway, exchange);
            }
            response.map(|body| Either::Left(ObservedBody::new(body, exchange)))
        };
        if let Some(decision) = &decision {
            limiter::apply_headers(response.headers_mut(), decision);
        }
        response
    }

    /// Refuses requests the gateway will not forward, before any backend sees them.
    fn admissible(&self, request: &Request<ClientBody>) -> Result<(), ProxyError> {
        if request.method() == Method::CONNECT {
            return Err(ProxyError::BadRequest("CONNECT is not supported"));
        }
        target::check(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
        )?;
        if let (Some(max), Some(declared)) = (
            self.settings.max_body_bytes,
            request.body().size_hint().exact(),
        ) && declared > max
        {
            return Err(ProxyError::BodyTooLarge);
        }
        Ok(())
    }
}

/// Asks the key plugin for the request's client key; the headers are lent, not copied.
fn plugin_key(
    plugin: &Plugin<KeyRole>,
    request: &mut Request<ClientBody>,
    client: std::net::IpAddr,
) -> Result<Option<String>, crate::plugin::PluginFailure> {
    let mut view = Some(RequestView {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: std::mem::take(request.headers_mut()),
        client,
    });
    let key = plugin.client_key(&mut view);
    if let Some(view) = view {
        *request.headers_mut() = view.headers;
    }
    key
}

/// The gateway's own answer, counted and logged like any other.
fn local(error: ProxyError, mut exchange: Exchange) -> Response<ResponseBody> {
    exchange.status = error.status();
    let response = error.into_response();
    exchange.bytes = response.body().size_hint().exact().unwrap_or(0);
    drop(exchange);
    response.map(Either::Right)
}
