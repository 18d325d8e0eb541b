//! The request path: route → client address and rate limit → backend
//! choice → forward with retries → response and log.

mod backend_body;
mod body;
mod client_addr;
mod conn;
mod error;
mod exchange;
mod forward;
mod grpc;
mod headers;
mod multiplexed;
mod pool;
mod redirect;
mod request_id;
mod target;
mod upgrade;
mod upload;

pub use client_addr::client_ip;
pub use error::{ProxyError, client_closed};

use crate::acme::{self, Challenges};
use crate::config::Protocol;
use crate::limiter::shared::Verdict;
use crate::limiter::{self, ClientKey, KeyKind, RateLimitFields};
use crate::metrics::Metrics;
use crate::plugin::{KeyRole, Plugin, RequestView};
use crate::routes;
use crate::routing::{PoolCore, Routing};
use crate::server::{ClientBody, HeadFields, Peer};
use arc_swap::ArcSwap;
use backend_body::BackendBody;
use body::{BodySlot, ObservedBody};
use bytes::Bytes;
use exchange::Exchange;
use forward::Upstream;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{Either, Full};
use hyper::body::Body;
use multiplexed::Multiplexed;
use pool::Pool;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use upload::Upload;

/// What the client receives: a backend's streamed body or the gateway's own answer.
pub type ResponseBody = Either<ObservedBody<BackendBody, Exchange>, Full<Bytes>>;

/// One worker's proxy: the routing it serves with and its own connections
/// to the backends. Shared by the worker's connections through an `Arc`.
pub struct Proxy {
    current: ArcSwap<Generation>,
    metrics: Arc<Metrics>,
    /// Workers sharing each pool's connection cap.
    workers: usize,
    edge: Edge,
}

/// What the proxy answers for the listeners themselves rather than routes.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// The HTTPS listener's port, where `tls.redirect_http` sends clients.
    pub https_port: Option<u16>,
    /// Open ACME HTTP-01 challenges (`tls.acme`).
    pub acme: Option<Arc<Challenges>>,
}

/// A routing and this worker's connections for its pools.
struct Generation {
    routing: Arc<Routing>,
    /// Indexed like `routing.pools`.
    pools: Vec<WorkerPool>,
}

/// One pool's connections in one worker, and how each backend is addressed.
struct WorkerPool {
    core: Arc<PoolCore>,
    conns: Pool,
    /// HTTP/2 to the backends (`protocol: h2c | h2`) instead of `conns`.
    multiplexed: Option<Multiplexed>,
    /// Precomputed scheme/authority/prefix per backend.
    upstreams: Vec<Upstream>,
}

impl Proxy {
    /// A worker's proxy serving `routing`; it shares each pool's connection
    /// cap with `workers - 1` others.
    pub fn new(routing: Arc<Routing>, metrics: Arc<Metrics>, workers: usize, edge: Edge) -> Self {
        let generation = Generation::new(routing, None, workers);
        Proxy {
            current: ArcSwap::from_pointee(generation),
            metrics,
            workers,
            edge,
        }
    }

    /// Serves new requests with `routing`; requests in flight finish on the
    /// one they started with. Pools that stayed keep their connections.
    pub fn install(&self, routing: Arc<Routing>) {
        let previous = self.current.load_full();
        let next = Generation::new(routing, Some(&previous), self.workers);
        self.current.store(Arc::new(next));
    }

    /// Serves one client request: which route, who is it, may it pass, then forward.
    /// The future owns its `Arc` (no wrapper future around it to hold one,
    /// which cost a copy of this large future per request).
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<ClientBody>,
        peer: Peer,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let generation = self.current.load_full();
        let routing = &*generation.routing;
        let settings = &routing.proxy;
        let peer_ip = peer.addr.ip().to_canonical();
        let trusted = settings
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer_ip));
        let client = client_ip(peer_ip, request.headers(), &settings.trusted_proxies);
        let found = find_route(routing, &mut request);
        let route = match found {
            Ok(Some(index)) => Some(&routing.routes[index]),
            _ => None,
        };
        let mut exchange = Exchange {
            start,
            logged: routing
                .access_log
                .then(|| (request.method().clone(), request.uri().clone())),
            client,
            // Until an answer is decided: a client that goes away before
            // that is logged and counted as 499, as nginx does.
            status: client_closed(),
            backend: None,
            bytes: 0,
            metrics: Arc::clone(route.map_or(&routing.unrouted, |r| &r.metrics)),
            grpc: grpc::is_grpc(request.version(), request.headers()),
            id: request_id::take_or_make(request.headers_mut()),
            rate_limit: None,
        };
        if let Some(challenges) = &self.edge.acme
            && let Some(token) = request.uri().path().strip_prefix(acme::CHALLENGE_PREFIX)
            && let Some(answer) = challenges.answer(token)
        {
            return redirect::challenge_answer(answer, exchange);
        }
        if peer.tls.is_none()
            && let Some(port) = self.edge.https_port
            && routing.config.tls.as_ref().is_some_and(|t| t.redirect_http)
        {
            let error = match admissible(&request, None) {
                Ok(()) => return redirect::to_https(&request, port, exchange),
                Err(error) => error,
            };
            return local(error, exchange);
        }
        let Some(route) = route else {
            let error = match (admissible(&request, None), found) {
                (Err(error), _) => error,
                (Ok(()), Err(_)) => ProxyError::BadRequest("invalid percent-encoding in the path"),
                (Ok(()), Ok(_)) => ProxyError::NoRoute,
            };
            return local(error, exchange);
        };

        if let Some(policy) = &route.policy {
            let from_plugin = match &policy.key_plugin {
                Some(plugin) => match plugin_key(plugin, &mut request, client, peer.tls.as_ref()) {
                    Ok(key) => key,
                    Err(_) if routing.fail_closed => {
                        return local(ProxyError::PluginFailed, exchange);
                    }
                    Err(_) => None,
                },
                None => None,
            };
            let claimed = match (&from_plugin, &policy.key.kind) {
                (Some(key), _) => Some(ClientKey::Plugin(key.as_bytes())),
                (None, KeyKind::Header(name)) => ClientKey::header(name, request.headers()),
                (None, KeyKind::TlsSubject) => peer
                    .tls
                    .as_ref()
                    .and_then(|t| t.subject.as_deref())
                    .map(|s| ClientKey::Tls(s.as_bytes())),
                (None, KeyKind::TlsFingerprint) => peer
                    .tls
                    .as_ref()
                    .and_then(|t| t.fingerprint.as_deref())
                    .map(|s| ClientKey::Tls(s.as_bytes())),
                (None, _) => None,
            };
            let budget = &policy.buckets.budget;
            let address = ClientKey::address(client, policy.key.ipv6_prefix);
            let Some(key) = budget.local().charge(claimed, address, policy.unknown_keys) else {
                self.metrics.record_unknown_key();
                return local(ProxyError::UnknownApiKey, exchange);
            };
            let decision = match budget.check(&key, route.config.cost).await {
                Verdict::Decided(decision) => decision,
                Verdict::Unavailable => {
                    return local(ProxyError::LimiterUnavailable, exchange);
                }
            };
            self.metrics.record_decision(&decision);
            if !decision.allowed {
                tracing::debug!(client = %key, policy = %policy.name, overflow = decision.overflow, "rate limited");
                self.metrics
                    .limited
                    .record(&key.to_string(), &policy.name, start);
                exchange.status = StatusCode::TOO_MANY_REQUESTS;
                let mut response = limiter::rejection(&decision, &policy.name);
                if exchange.grpc {
                    response = grpc::convert(response, "Rate limit exceeded");
                }
                exchange.bytes = response.body().size_hint().exact().unwrap_or(0);
                response
                    .headers_mut()
                    .insert(request_id::X_REQUEST_ID.clone(), exchange.id.clone());
                return response.map(Either::Right);
            }
            exchange.rate_limit = RateLimitFields::new(&decision, &policy.name);
        }
        // Forwarding is written out here rather than in a function of its
        // own: an awaited function's future is moved into its caller's, and
        // this one (it holds the whole backend exchange) cost about 800
        // instructions a request in copies.
        let request_id = exchange.id.clone();
        let mut response = 'routed: {
            if let Err(error) = admissible(&request, route.config.max_body_bytes) {
                break 'routed local(error, exchange);
            }
            if let Some(prefix) = &route.config.strip_prefix
                && let Some(uri) = strip_prefix(request.uri(), prefix)
            {
                *request.uri_mut() = uri;
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
                tls: peer.tls.clone(),
            };
            let body = if body.is_end_stream() {
                BodySlot::new(Upload::Whole(None))
            } else {
                match Upload::prepare(
                    body,
                    route.config.max_body_bytes.unwrap_or(u64::MAX),
                    settings.client_body_timeout,
                    route.metrics.received.clone(),
                )
                .await
                {
                    Ok(body) => BodySlot::new(body),
                    Err(error) => break 'routed local(error, exchange),
                }
            };

            let target = forward::Target {
                pool: &generation.pools[route.pool],
                route,
                fail_closed: routing.fail_closed,
            };
            let forwarded = self
                .forward(
                    &target,
                    &mut parts,
                    client,
                    body,
                    &forwarding,
                    &mut exchange.backend,
                )
                .await;
            let response = match forwarded {
                Ok(response) => response,
                Err(error) => break 'routed local(error, exchange),
            };
            exchange.status = response.status();
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let (mut parts, body) = response.into_parts();
                if let Some(fields) = &exchange.rate_limit {
                    fields.insert(&mut parts.headers);
                }
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
            let mut response = response;
            if exchange.rate_limit.is_some() {
                // Written with the head (`HeadFields`): a backend's own go.
                RateLimitFields::clear(response.headers_mut());
            }
            response.map(|body| Either::Left(ObservedBody::new(body, exchange)))
        };
        response
            .headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), request_id);
        response
    }
}

impl Generation {
    fn new(routing: Arc<Routing>, previous: Option<&Generation>, workers: usize) -> Generation {
        let pools = routing
            .pools
            .iter()
            .map(|pool| {
                let kept = previous.and_then(|p| {
                    p.pools
                        .iter()
                        .find(|old| Arc::ptr_eq(&old.core, &pool.core))
                });
                let core = Arc::clone(&pool.core);
                let conns = match kept {
                    Some(old) => old.conns.clone(),
                    None => Pool::new(
                        core.backends.iter().map(|b| b.url.clone()),
                        core.config.connect_timeout,
                        Duration::from_secs(60),
                        core.config.max_connections.div_ceil(workers.max(1)),
                        core.tls.clone(),
                    ),
                };
                let multiplexed = match (kept, core.config.protocol) {
                    (Some(old), _) => old.multiplexed.clone(),
                    (None, Protocol::Http1) => None,
                    (None, Protocol::H2c | Protocol::H2) => Some(Multiplexed::new(
                        core.backends.iter().map(|b| b.url.clone()),
                        core.config.connect_timeout,
                        core.tls.as_ref(),
                    )),
                };
                WorkerPool {
                    multiplexed,
                    upstreams: core
                        .backends
                        .iter()
                        .map(|b| Upstream::new(&b.url))
                        .collect(),
                    conns,
                    core,
                }
            })
            .collect();
        Generation { routing, pools }
    }
}

/// The number of the route `request` takes. When the path the backend
/// will act on differs from the one sent (`/a/../b`, `/%62`, `//b`), the
/// request goes on with the former.
fn find_route(
    routing: &Routing,
    request: &mut Request<ClientBody>,
) -> Result<Option<usize>, routes::InvalidEscape> {
    let (found, normalized) = {
        let path = routes::match_path(request.uri().path())?;
        let host = match request.uri().authority() {
            Some(authority) => Some(authority.as_str().as_bytes()),
            None => request
                .headers()
                .get(header::HOST)
                .map(HeaderValue::as_bytes),
        };
        let found = routing.table.lookup(&routes::Request {
            host,
            path: &path,
            method: request.method(),
            headers: request.headers(),
        });
        match path {
            Cow::Owned(path) => (found, Some(path)),
            Cow::Borrowed(_) => (found, None),
        }
    };
    if let Some(path) = normalized
        && let Some(uri) = with_path(request.uri(), &path)
    {
        *request.uri_mut() = uri;
    }
    Ok(found)
}

/// `uri` with its path replaced (query kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// `uri` without the route's path `prefix` (`/v1/items` → `/items`, `/v1` → `/`).
fn strip_prefix(uri: &Uri, prefix: &str) -> Option<Uri> {
    let rest = uri.path().strip_prefix(prefix)?;
    let path = if rest.is_empty() { "/" } else { rest };
    with_path(uri, path)
}

/// Refuses requests the gateway will not forward, before any backend sees
/// them (`max_body`: the route's body limit).
fn admissible(request: &Request<ClientBody>, max_body: Option<u64>) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    target::check(
        request.method(),
        request.uri(),
        request.version(),
        request.headers(),
    )?;
    if let (Some(max), Some(declared)) = (max_body, request.body().size_hint().exact())
        && declared > max
    {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(())
}

/// Asks the key plugin for the request's client key; the headers are lent, not copied.
fn plugin_key(
    plugin: &Plugin<KeyRole>,
    request: &mut Request<ClientBody>,
    client: std::net::IpAddr,
    tls: Option<&Arc<crate::tls::Session>>,
) -> Result<Option<String>, crate::plugin::PluginFailure> {
    let mut view = Some(RequestView {
        method: request.method().clone(),
        uri: request.uri().clone(),
        headers: std::mem::take(request.headers_mut()),
        client,
        tls: tls.cloned(),
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
    let mut response = error.into_response();
    if exchange.grpc {
        response = grpc::convert(response, &error.to_string());
    }
    response
        .headers_mut()
        .insert(request_id::X_REQUEST_ID.clone(), exchange.id.clone());
    if let Some(fields) = exchange.rate_limit.take() {
        fields.insert(response.headers_mut());
    }
    exchange.bytes = response.body().size_hint().exact().unwrap_or(0);
    drop(exchange);
    response.map(Either::Right)
}

/// The limiter's fields of a relayed answer are written with its head.
impl HeadFields for ResponseBody {
    fn write_fields(&self, out: &mut Vec<u8>) {
        if let Some(fields) = rate_limit(self) {
            fields.write(out);
        }
    }

    fn insert_fields(&self, headers: &mut http::HeaderMap) {
        if let Some(fields) = rate_limit(self) {
            fields.insert(headers);
        }
    }
}

fn rate_limit(body: &ResponseBody) -> Option<&RateLimitFields> {
    match body {
        Either::Left(body) => body.finish()?.rate_limit.as_ref(),
        Either::Right(_) => None,
    }
}
