//! The admin listener: the status page, health, readiness, metrics (open);
//! backends, routes, limited clients, reload and per-client limits (bearer
//! token; the page asks for it and reads those).

mod clients;

pub use clients::{ClientView, Clients};

mod routes;

use crate::json_error::json_error;
use crate::limiter::shared::SharedLimiter;
use crate::metrics::{Metrics, format};
use crate::reload::Reloader;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct Admin {
    /// The routing being served, and reloads.
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    /// Expected bearer token; `None` closes every protected route.
    token: Option<String>,
    /// Per-client limits; `None` when rate limiting is off.
    clients: Option<Clients>,
    /// The Redis limiter, reported in `/readyz`.
    shared: Option<Arc<SharedLimiter>>,
}

impl Admin {
    pub fn new(
        reloader: Arc<Reloader>,
        metrics: Arc<Metrics>,
        token: Option<String>,
        clients: Option<Clients>,
        shared: Option<Arc<SharedLimiter>>,
    ) -> Self {
        Admin {
            reloader,
            metrics,
            token,
            clients,
            shared,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::GET, "/healthz") => {
                json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET | &Method::HEAD, "/") => status_page(),
            (&Method::GET | &Method::HEAD, "/metrics") => {
                let routing = self.reloader.current();
                let accept = request
                    .headers()
                    .get(header::ACCEPT)
                    .map(HeaderValue::as_bytes);
                let openmetrics = format::wants_openmetrics(accept);
                let text = self.metrics.render(&routing.backend_states(), openmetrics);
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(if openmetrics {
                        format::OPENMETRICS
                    } else {
                        format::PROMETHEUS
                    }),
                );
                response
            }
            _ if !self.authorized(&request) => {
                let mut response =
                    json_error(StatusCode::UNAUTHORIZED, "Missing or invalid bearer token");
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            (&Method::GET, "/backends") => {
                json(StatusCode::OK, &routes::backends(&self.reloader.current()))
            }
            (&Method::GET, "/routes") => {
                json(StatusCode::OK, &routes::routes(&self.reloader.current()))
            }
            (&Method::GET, "/limited") => json(
                StatusCode::OK,
                &self.metrics.limited.top(20, std::time::Instant::now()),
            ),
            (&Method::POST, "/reload") => match self.reloader.reload("admin").await {
                Ok(reloaded) => json(
                    StatusCode::OK,
                    &serde_json::json!({"status": "reloaded", "reloaded": reloaded}),
                ),
                Err(problems) => json(StatusCode::BAD_REQUEST, &routes::problems(&problems)),
            },
            (_, "/clients") => self.clients(request, None).await,
            (_, p) if p.starts_with("/clients/") => {
                let raw = &p["/clients/".len()..];
                let key = percent_encoding::percent_decode_str(raw)
                    .decode_utf8_lossy()
                    .into_owned();
                self.clients(request, Some(key)).await
            }
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/backends" | "/routes" | "/reload"
                | "/limited",
            ) => json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
            _ => json_error(StatusCode::NOT_FOUND, "Not found"),
        }
    }

    async fn clients(
        &self,
        request: Request<Incoming>,
        key: Option<String>,
    ) -> Response<Full<Bytes>> {
        match &self.clients {
            Some(clients) => clients.handle(request, key).await,
            None => json_error(
                StatusCode::NOT_FOUND,
                "Rate limiting is not configured (add a rate_limit section)",
            ),
        }
    }

    fn readiness(&self) -> Response<Full<Bytes>> {
        let routing = self.reloader.current();
        let backends = routing.backend_states();
        let healthy = backends.iter().filter(|b| b.backend.is_healthy()).count();
        let status = if healthy > 0 {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut body = serde_json::json!({
            "ready": healthy > 0,
            "healthy_backends": healthy,
            "backends": backends.len(),
        });
        if let Some(shared) = &self.shared {
            body["shared_limiter"] = serde_json::json!({
                "up": shared.is_up(),
                "on_failure": shared.policy().name(),
            });
        }
        json(status, &body)
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(expected) = &self.token else {
            return false;
        };
        let Some(given) = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        bool::from(given.trim().as_bytes().ct_eq(expected.as_bytes()))
    }
}

pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The status page: one HTML file with its CSS and script inside, compiled
/// into the binary; it reads the admin API with the token it asks for.
const STATUS_PAGE: &str = include_str!("status.html");

fn status_page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Nothing from elsewhere: the page's own inline script and style, and
    // requests to this listener only.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
