//! Backend health: passive marking from failed requests and active probes
//! that take backends out and bring them back. Transitions are logged once.

use crate::balancer::Backend;
use crate::config::HealthCheckConfig;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;

/// Takes a backend out of rotation after a failed request (passive check).
pub fn mark_down(backends: &[Arc<Backend>], index: usize, reason: &str) {
    if backends[index].set_healthy(false) {
        let remaining = backends.iter().filter(|b| b.is_healthy()).count();
        tracing::warn!(
            event = "backend_down",
            backend = %backends[index].name,
            reason,
            healthy_remaining = remaining,
            "backend marked down; failing over to the remaining healthy backends"
        );
    }
}

fn mark_up(backend: &Backend, reason: &str) {
    if backend.set_healthy(true) {
        tracing::info!(event = "backend_up", backend = %backend.name, reason, "backend back in rotation");
    }
}

/// Probes every backend on an interval until `shutdown` fires.
pub struct HealthChecker {
    backends: Arc<[Arc<Backend>]>,
    config: HealthCheckConfig,
    client: Prober,
}

/// hyper's client for the probes: TLS-capable when the pool has `https://` backends.
enum Prober {
    Plain(Client<HttpConnector, Empty<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Empty<Bytes>>),
}

impl HealthChecker {
    /// Probes for `backends`; `tls` verifies `https://` ones (plain ones
    /// need none).
    pub fn new(
        backends: Arc<[Arc<Backend>]>,
        config: HealthCheckConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_max_idle_per_host(1);
        let client = match tls {
            Some(tls) => {
                connector.enforce_http(false);
                let mut config = (*tls).clone();
                // hyper's connector offers ALPN itself (HTTP/1.1 here).
                config.alpn_protocols.clear();
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(connector);
                Prober::Tls(builder.build(connector))
            }
            None => Prober::Plain(builder.build(connector)),
        };
        HealthChecker {
            backends,
            config,
            client,
        }
    }

    /// Starts one probing task per backend; they run until aborted (when
    /// the pool is dropped, after a reload that removed or changed it).
    pub fn spawn(self) -> Vec<tokio::task::JoinHandle<()>> {
        let checker = Arc::new(self);
        (0..checker.backends.len())
            .map(|index| {
                let checker = Arc::clone(&checker);
                tokio::spawn(async move { checker.watch(index).await })
            })
            .collect()
    }

    async fn watch(&self, index: usize) {
        let backend = &self.backends[index];
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.config.enabled {
            // No probes: a passively failed backend gets traffic again after one interval.
            loop {
                ticker.tick().await;
                if !backend.is_healthy() {
                    ticker.tick().await;
                    mark_up(
                        backend,
                        "retry after health_check.interval (active checks disabled)",
                    );
                }
            }
        }
        let (mut successes, mut failures) = (0u32, 0u32);
        loop {
            ticker.tick().await;
            match self.probe(backend).await {
                Ok(()) => {
                    failures = 0;
                    successes = successes.saturating_add(1);
                    if successes >= self.config.healthy_threshold {
                        mark_up(backend, "health check passed");
                    }
                }
                Err(reason) => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    tracing::debug!(backend = %backend.name, %reason, "health check failed");
                    if failures >= self.config.unhealthy_threshold {
                        mark_down(
                            &self.backends,
                            index,
                            &format!("health check failed: {reason}"),
                        );
                    }
                }
            }
        }
    }

    async fn probe(&self, backend: &Backend) -> Result<(), String> {
        let uri = format!("{}{}", backend.name, self.config.path);
        let request = Request::get(uri)
            .header(http::header::USER_AGENT, "gateway-health-check")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let answer = async {
            match &self.client {
                Prober::Plain(client) => client.request(request).await,
                Prober::Tls(client) => client.request(request).await,
            }
        };
        match tokio::time::timeout(self.config.timeout, answer).await {
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(response)) if is_good(response.status()) => Ok(()),
            Ok(Ok(response)) => Err(format!("status {}", response.status())),
        }
    }
}

/// 2xx and 3xx count as healthy, as in HAProxy.
fn is_good(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}
