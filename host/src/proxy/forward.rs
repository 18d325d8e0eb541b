//! Sending a request to a backend, moving on to the next candidate when an
//! attempt fails in a way that is safe to retry.

use super::backend_body::BackendBody;
use super::body::BodySlot;
use super::conn::SendError;
use super::error::ProxyError;
use super::headers::{self, Forwarding};
use super::pool::Sending;
use super::upload::{self, Upload};
use super::{Proxy, WorkerPool};
use crate::balancer::{Ctx, InFlight, Tried};
use crate::health;
use crate::http1::client::{self as wire, RequestFraming};
use crate::routing::Route;
use http::request::Parts;
use http::{HeaderValue, Method, Response, Uri, header};

/// Where a request goes: the route's pool in this worker.
pub(super) struct Target<'a> {
    pub pool: &'a WorkerPool,
    pub route: &'a Route,
    /// A failed plugin answers 500 instead of falling back.
    pub fail_closed: bool,
}

impl Proxy {
    /// Walks the balancer's candidates until one answers with response
    /// headers. `in_flight` holds the backend being tried (and, after, the
    /// one that answered), so a request that ends early is logged with it.
    pub(super) async fn forward(
        &self,
        target: &Target<'_>,
        parts: &mut Parts,
        client: std::net::IpAddr,
        body: BodySlot<Upload>,
        forwarding: &Forwarding,
        in_flight: &mut Option<InFlight>,
    ) -> Result<Response<BackendBody>, ProxyError> {
        let mut tried = Tried::default();
        let mut last_error = ProxyError::NoHealthyBackend;
        let framing = wire::request_framing(
            parts.headers.contains_key(header::CONTENT_LENGTH),
            body.is_empty(),
            body.exact_len(),
        );
        let idempotent = is_idempotent(&parts.method);
        // A small body read already goes out in the same write as the head:
        // one send per request, and every attempt can send it again.
        let inline = match framing {
            RequestFraming::Length(n) => body
                .peek(Upload::inline)
                .filter(|data| data.len() as u64 == n),
            _ => None,
        };
        let backends = &target.pool.core.backends;
        let route = target.route;
        for attempt in 0..=target.pool.core.config.retries {
            let mut ctx = Ctx {
                head: parts,
                client,
                tls: forwarding.tls.as_ref(),
                plugin_failed: false,
            };
            let picked = route.selection.pick(backends, &tried, &mut ctx);
            if ctx.plugin_failed && target.fail_closed {
                return Err(ProxyError::PluginFailed);
            }
            let Some(index) = picked else {
                return Err(last_error);
            };
            let backend = &backends[index];
            if attempt > 0 {
                self.metrics.failovers.inc();
                tracing::debug!(backend = %backend.name, attempt, "retrying on next backend");
            }
            *in_flight = Some(backend.start());
            let sent = match &target.pool.multiplexed {
                Some(h2) => {
                    let sending = h2.send(index, parts, body.attempt(), forwarding);
                    tokio::time::timeout(route.request_timeout, sending).await
                }
                None => {
                    let mut head = target.pool.upstreams[index].encode(parts, framing, forwarding);
                    if let Some(data) = &inline {
                        head.extend_from_slice(data);
                    }
                    let request = Sending {
                        head,
                        body: &body,
                        inline: inline.is_some(),
                        framing,
                        head_request: parts.method == Method::HEAD,
                        idempotent,
                    };
                    let sending = target.pool.conns.send(index, request);
                    tokio::time::timeout(route.request_timeout, sending).await
                }
            };
            let error = match sent {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    backend.record_failure();
                    route.metrics.record_failure(index);
                    tracing::warn!(backend = %backend.name, timeout = ?route.request_timeout, "backend timed out");
                    return Err(ProxyError::GatewayTimeout);
                }
            };
            match &error {
                // The client's body failed: the client's fault, not the backend's.
                SendError::Body(cause) => {
                    let answer = upload::blame(cause.as_ref());
                    tracing::debug!(backend = %backend.name, error = %chain(&error), status = answer.status().as_u16(), "request body failed");
                    return Err(answer);
                }
                // The gateway's own shortage: this request fails, the backend is fine.
                SendError::Local(_) => {
                    tracing::warn!(backend = %backend.name, error = %error, "no local resources to reach a backend");
                    return Err(ProxyError::OutOfResources);
                }
                _ => {}
            }
            backend.record_failure();
            route.metrics.record_failure(index);
            tried.insert(index);
            let connect_failed = error.is_connect();
            if connect_failed {
                health::mark_down(backends, index, &chain(&error));
                last_error = ProxyError::NoHealthyBackend;
            } else {
                tracing::warn!(backend = %backend.name, error = %chain(&error), "backend failed mid-request");
                last_error = ProxyError::BadGateway;
            }
            let retry_safe = connect_failed || idempotent;
            if !(retry_safe && body.replayable()) {
                return Err(last_error);
            }
        }
        Err(last_error)
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

    /// The request head this backend receives: origin-form target
    /// (`prefix/path?query`), the client's fields and the forwarding ones,
    /// the body's framing.
    fn encode(&self, parts: &Parts, framing: RequestFraming, forwarding: &Forwarding) -> Vec<u8> {
        let mut head = Vec::with_capacity(512);
        wire::encode_request(
            &mut head,
            &parts.method,
            &self.prefix,
            &parts.uri,
            framing,
            |out| {
                headers::write_request_fields(
                    out,
                    &parts.headers,
                    forwarding,
                    self.authority.as_ref(),
                )
            },
        );
        head
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// An error and its causes on one line.
pub(super) fn chain(error: &dyn std::error::Error) -> String {
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

    fn target(upstream: &Upstream, uri: &str) -> String {
        let (parts, ()) = http::Request::get(uri).body(()).unwrap().into_parts();
        let forwarding = Forwarding {
            peer: "127.0.0.1".parse().unwrap(),
            trusted: false,
            authority: None,
            tls: None,
        };
        let head = upstream.encode(&parts, RequestFraming::None, &forwarding);
        let line = head.split(|&b| b == b'\r').next().unwrap();
        String::from_utf8(line.to_vec()).unwrap()
    }

    #[test]
    fn prefix_is_prepended_and_query_kept() {
        let up = Upstream::new(&"http://10.0.0.1:81/api".parse().unwrap());
        assert_eq!(target(&up, "/v1/x?q=1"), "GET /api/v1/x?q=1 HTTP/1.1");
        let up = Upstream::new(&"http://10.0.0.1:81".parse().unwrap());
        assert_eq!(target(&up, "/v1/x?q=1"), "GET /v1/x?q=1 HTTP/1.1");
        // Asterisk-form keeps its target and gets no prefix (only OPTIONS
        // passes the target check with it).
        assert_eq!(target(&up, "*"), "GET * HTTP/1.1");
        assert_eq!(
            target(&up, "http://client.example/a?b"),
            "GET /a?b HTTP/1.1"
        );
        let up = Upstream::new(&"http://10.0.0.1:81/api".parse().unwrap());
        assert_eq!(target(&up, "*"), "GET * HTTP/1.1");
        assert_eq!(target(&up, "/../admin"), "GET /api/admin HTTP/1.1");
        assert_eq!(
            target(&up, "/%2e%2e/admin?x=/../"),
            "GET /api/admin?x=/../ HTTP/1.1"
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
