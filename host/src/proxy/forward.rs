//! Sending a request to a backend, moving on to the next candidate when an
//! attempt fails in a way that is safe to retry.

use super::Proxy;
use super::body::{BodySlot, ReplayBody};
use super::error::ProxyError;
use crate::balancer::{Ctx, InFlight, Tried};
use crate::health;
use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
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
    ) -> Result<(Response<Incoming>, InFlight), ProxyError> {
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
            let sent =
                tokio::time::timeout(self.settings.request_timeout, self.client.request(request))
                    .await;
            let error = match sent {
                Ok(Ok(response)) => return Ok((response, in_flight)),
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
                health::mark_down(
                    &self.backends,
                    index,
                    &format!("connect failed: {}", chain(&error)),
                );
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
        *request.uri_mut() = self.upstreams[index].uri_for(&parts.uri);
        request
    }
}

/// How to reach one backend: its scheme and authority, and a path prefix.
pub struct Upstream {
    base: http::uri::Parts,
    prefix: String,
}

impl Upstream {
    pub fn new(url: &Uri) -> Self {
        let base = url.clone().into_parts();
        let prefix = url.path().trim_end_matches('/').to_owned();
        Upstream { base, prefix }
    }

    /// The backend URI for a client's request target.
    fn uri_for(&self, client: &Uri) -> Uri {
        let origin = client
            .path_and_query()
            .filter(|p| p.path().starts_with('/'));
        let mut parts = http::uri::Parts::default();
        parts.scheme = self.base.scheme.clone();
        parts.authority = self.base.authority.clone();
        parts.path_and_query = match origin {
            Some(pq) if self.prefix.is_empty() => Some(pq.clone()),
            Some(pq) => format!("{}{}", self.prefix, pq.as_str()).parse().ok(),
            None if self.prefix.is_empty() => None,
            None => format!("{}/", self.prefix).parse().ok(),
        };
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        Uri::from_parts(parts).unwrap_or_else(|_| client.clone())
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn exceeded_body_limit(error: &hyper_util::client::legacy::Error) -> bool {
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
            "http://10.0.0.1:81/api/v1/x?q=1"
        );
        let up = Upstream::new(&"http://10.0.0.1:81".parse().unwrap());
        assert_eq!(
            up.uri_for(&"/v1/x?q=1".parse().unwrap()).to_string(),
            "http://10.0.0.1:81/v1/x?q=1"
        );
        assert_eq!(
            up.uri_for(&"*".parse().unwrap()).to_string(),
            "http://10.0.0.1:81/"
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
