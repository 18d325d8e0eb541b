//! Sending a request to a backend, moving on to the next candidate when an
//! attempt fails in a way that is safe to retry.

use super::Proxy;
use super::body::{BodySlot, ReplayBody};
use super::error::ProxyError;
use super::pool::{Lease, SendError};
use crate::balancer::{Ctx, InFlight, Tried};
use crate::health;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::LengthLimitError;
use hyper::body::Incoming;
use std::error::Error as _;

pub type UpstreamBody = ReplayBody<http_body_util::Limited<Incoming>>;

impl Proxy {
    /// Walks the balancer's candidates until one answers with response headers.
    pub(super) async fn forward(
        &self,
        parts: &mut Parts,
        client: std::net::IpAddr,
        body: BodySlot<http_body_util::Limited<Incoming>>,
    ) -> Result<(Response<Incoming>, InFlight, Lease<UpstreamBody>), ProxyError> {
        let mut tried = Tried::default();
        let mut last_error = ProxyError::NoHealthyBackend;
        for attempt in 0..=self.settings.retries {
            let mut ctx = Ctx {
                head: parts,
                client,
                plugin_failed: false,
            };
            let picked = self.selection.pick(&self.backends, &tried, &mut ctx);
            if ctx.plugin_failed && self.plugin_fail_closed {
                return Err(ProxyError::PluginFailed);
            }
            let Some(index) = picked else {
                return Err(last_error);
            };
            let backend = &self.backends[index];
            if attempt > 0 {
                self.metrics.failovers.inc();
                tracing::debug!(backend = %backend.name, attempt, "retrying on next backend");
            }
            let request = self.upstream_request(parts, index, body.attempt());
            let in_flight = backend.start();
            let sent = tokio::time::timeout(
                self.settings.request_timeout,
                self.pool.send(index, request),
            )
            .await;
            let error = match sent {
                Ok(Ok((response, lease))) => return Ok((response, in_flight, lease)),
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    backend.record_failure();
                    self.metrics.record_failure(index);
                    tracing::warn!(backend = %backend.name, timeout = ?self.settings.request_timeout, "backend timed out");
                    return Err(ProxyError::GatewayTimeout);
                }
            };
            if exceeded_body_limit(&error) {
                return Err(ProxyError::BodyTooLarge);
            }
            backend.record_failure();
            self.metrics.record_failure(index);
            tried.insert(index);
            let connect_failed = error.is_connect();
            if connect_failed {
                health::mark_down(&self.backends, index, &chain(&error));
                last_error = ProxyError::NoHealthyBackend;
            } else {
                tracing::warn!(backend = %backend.name, error = %chain(&error), "backend failed mid-request");
                last_error = ProxyError::BadGateway;
            }
            let retry_safe = connect_failed || is_idempotent(&parts.method);
            if !(retry_safe && body.replayable()) {
                return Err(last_error);
            }
        }
        Err(last_error)
    }

    fn upstream_request(
        &self,
        parts: &Parts,
        index: usize,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = parts.headers.clone();
        let upstream = &self.upstreams[index];
        if let Some(authority) = &upstream.authority {
            request
                .headers_mut()
                .entry(http::header::HOST)
                .or_insert_with(|| authority.clone());
        }
        *request.uri_mut() = upstream.uri_for(&parts.uri);
        request
    }
}

/// How to address one backend: its authority, for requests without a `Host`,
/// and a path prefix.
pub struct Upstream {
    authority: Option<HeaderValue>,
    prefix: String,
}

impl Upstream {
    pub fn new(url: &Uri) -> Self {
        Upstream {
            authority: url
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            prefix: url.path().trim_end_matches('/').to_owned(),
        }
    }

    /// The origin-form target (`/path?query`) the backend receives.
    fn uri_for(&self, client: &Uri) -> Uri {
        let origin = client
            .path_and_query()
            .filter(|p| p.path().starts_with('/'));
        let path_and_query = match origin {
            Some(pq) if self.prefix.is_empty() => {
                if client.scheme().is_none() && client.authority().is_none() {
                    return client.clone();
                }
                pq.clone()
            }
            Some(pq) => PathAndQuery::try_from(format!("{}{}", self.prefix, pq.as_str()))
                .unwrap_or_else(|_| pq.clone()),
            None => PathAndQuery::try_from(format!("{}/", self.prefix))
                .unwrap_or_else(|_| PathAndQuery::from_static("/")),
        };
        Uri::from(path_and_query)
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn exceeded_body_limit(error: &SendError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_prepended_and_query_kept() {
        let up = Upstream::new(&"http://10.0.0.1:81/api".parse().unwrap());
        assert_eq!(
            up.uri_for(&"/v1/x?q=1".parse().unwrap()).to_string(),
            "/api/v1/x?q=1"
        );
        let up = Upstream::new(&"http://10.0.0.1:81".parse().unwrap());
        assert_eq!(
            up.uri_for(&"/v1/x?q=1".parse().unwrap()).to_string(),
            "/v1/x?q=1"
        );
        assert_eq!(up.uri_for(&"*".parse().unwrap()).to_string(), "/");
        assert_eq!(
            up.uri_for(&"http://client.example/a?b".parse().unwrap())
                .to_string(),
            "/a?b"
        );
    }

    #[test]
    fn only_safe_methods_are_idempotent() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
