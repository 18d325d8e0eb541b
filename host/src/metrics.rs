//! Prometheus metrics. Handles for every backend are created up front so the
//! request path touches only atomics, never a label lookup.

use crate::balancer::Backend;
use crate::limiter::shared::SharedLimiter;
use crate::limiter::{Decision, Limiter};
use crate::plugin::Outcomes;
use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    backend: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Per-backend handles; index `backends.len()` is "answered by the gateway itself".
struct Handles {
    /// Responses by status class.
    responses: [Counter; 5],
    latency: Histogram,
    failures: Counter,
}

pub struct Metrics {
    registry: Registry,
    handles: Vec<Handles>,
    healthy: Vec<Gauge>,
    in_flight: Vec<Gauge>,
    /// Times a request moved on to another backend after a failed attempt.
    pub failovers: Counter,
    backends: Vec<Arc<Backend>>,
    /// Rate-limit decisions: allowed, limited, overflow (client not tracked:
    /// `max_clients` reached), unknown_key (refused under `unknown_keys: reject`).
    decisions: [Counter; 4],
    tracked_clients: Gauge,
    limiter: Option<Arc<Limiter>>,
    /// 1 while the shared (Redis) limiter answers.
    shared_up: Gauge,
    shared: Option<Arc<SharedLimiter>>,
    plugin_calls: Family<PluginLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    interface: &'static str,
    outcome: &'static str,
}

impl Metrics {
    pub fn new(
        backends: &[Arc<Backend>],
        limiter: Option<Arc<Limiter>>,
        shared: Option<Arc<SharedLimiter>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<BackendLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let failures = Family::<BackendLabel, Counter>::default();
        let healthy = Family::<BackendLabel, Gauge>::default();
        let in_flight = Family::<BackendLabel, Gauge>::default();
        let failovers = Counter::default();
        let decisions = Family::<OutcomeLabel, Counter>::default();
        let tracked_clients = Gauge::default();
        registry.register(
            "ratelimit_decisions",
            "Rate-limit decisions by outcome",
            decisions.clone(),
        );
        registry.register(
            "ratelimit_tracked_clients",
            "Clients with a live token bucket",
            tracked_clients.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by backend (\"none\": answered by the gateway) and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response body finished",
            latency.clone(),
        );
        registry.register(
            "backend_failures",
            "Attempts on a backend that failed (connect, timeout, broken response)",
            failures.clone(),
        );
        registry.register(
            "backend_healthy",
            "1 when the backend is in rotation",
            healthy.clone(),
        );
        registry.register(
            "backend_in_flight",
            "Requests currently being served by the backend",
            in_flight.clone(),
        );
        registry.register(
            "failovers",
            "Requests retried on another backend",
            failovers.clone(),
        );

        let names = backends
            .iter()
            .map(|b| b.name.clone())
            .chain(std::iter::once("none".to_owned()));
        let handles = names
            .map(|name| Handles {
                responses: CLASSES.map(|class| {
                    requests
                        .get_or_create(&RequestLabels {
                            backend: name.clone(),
                            class,
                        })
                        .clone()
                }),
                latency: latency
                    .get_or_create(&BackendLabel {
                        backend: name.clone(),
                    })
                    .clone(),
                failures: failures
                    .get_or_create(&BackendLabel { backend: name })
                    .clone(),
            })
            .collect();
        let gauge = |family: &Family<BackendLabel, Gauge>| -> Vec<Gauge> {
            backends
                .iter()
                .map(|b| {
                    family
                        .get_or_create(&BackendLabel {
                            backend: b.name.clone(),
                        })
                        .clone()
                })
                .collect()
        };
        let shared_up = Gauge::default();
        if shared.is_some() {
            registry.register(
                "ratelimit_shared_up",
                "1 while the shared (Redis) limiter answers, 0 while the failure policy applies",
                shared_up.clone(),
            );
        }
        let plugin_calls = Family::<PluginLabels, Counter>::default();
        registry.register(
            "plugin_calls",
            "Plugin calls by interface and outcome (ok, timeout, trap, invalid)",
            plugin_calls.clone(),
        );
        let decisions = ["allowed", "limited", "overflow", "unknown_key"]
            .map(|outcome| decisions.get_or_create(&OutcomeLabel { outcome }).clone());
        Metrics {
            shared_up,
            shared,
            plugin_calls,
            decisions,
            tracked_clients,
            limiter,
            healthy: gauge(&healthy),
            in_flight: gauge(&in_flight),
            registry,
            handles,
            failovers,
            backends: backends.to_vec(),
        }
    }

    fn handles(&self, backend: Option<usize>) -> &Handles {
        let index = backend.unwrap_or(self.handles.len() - 1);
        &self.handles[index.min(self.handles.len() - 1)]
    }

    /// Counts one finished request.
    pub fn record(&self, backend: Option<usize>, status: StatusCode, elapsed: Duration) {
        let handles = self.handles(backend);
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        handles.responses[class].inc();
        handles.latency.observe(elapsed.as_secs_f64());
    }

    pub fn record_decision(&self, decision: &Decision) {
        let index = match (decision.allowed, decision.overflow) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        self.decisions[index].inc();
    }

    /// Counts a request refused for an unknown API key.
    pub fn record_unknown_key(&self) {
        self.decisions[3].inc();
    }

    /// Counters a plugin of `interface` reports its call outcomes to.
    pub fn plugin_outcomes(&self, interface: &'static str) -> Outcomes {
        let counter = |outcome| {
            self.plugin_calls
                .get_or_create(&PluginLabels { interface, outcome })
                .clone()
        };
        Outcomes {
            ok: counter("ok"),
            timeout: counter("timeout"),
            panic: counter("panic"),
            trap: counter("trap"),
            invalid: counter("invalid"),
        }
    }

    pub fn record_failure(&self, backend: usize) {
        self.handles(Some(backend)).failures.inc();
    }

    /// Prometheus text exposition, with live backend state sampled now.
    pub fn render(&self) -> String {
        for (i, b) in self.backends.iter().enumerate() {
            self.healthy[i].set(i64::from(b.is_healthy()));
            self.in_flight[i].set(b.in_flight() as i64);
        }
        if let Some(limiter) = &self.limiter {
            self.tracked_clients.set(limiter.tracked() as i64);
        }
        if let Some(shared) = &self.shared {
            self.shared_up.set(i64::from(shared.is_up()));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::backends;

    #[test]
    fn renders_counts_per_backend_and_class() {
        let set = backends(&[1, 1]);
        let m = Metrics::new(&set, None, None);
        m.record(Some(1), StatusCode::OK, Duration::from_millis(3));
        m.record(
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(1),
        );
        set[0].set_healthy(false);
        let text = m.render();
        assert!(
            text.contains(
                r#"gateway_requests_total{backend="http://127.0.0.1:9001",class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_requests_total{backend="none",class="5xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_backend_healthy{backend="http://127.0.0.1:9000"} 0"#),
            "{text}"
        );
    }
}
