//! Prometheus metrics. Handles for every route and backend are created when
//! the routes are built (at start and on reload) so the request path touches
//! only atomics, never a label lookup.

pub mod format;
pub mod limited;
mod process;

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
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    pool: String,
    backend: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    pool: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    pool: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    interface: &'static str,
    outcome: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles for one (route, backend) pair.
struct Handles {
    /// Responses by status class.
    responses: [Counter; 5],
    latency: Histogram,
    /// Response body bytes sent to clients.
    sent: Counter,
    /// Shared by every route to the backend's pool.
    failures: Counter,
}

/// One route's counters, created when the route is built so the request
/// path touches only atomics, never a label lookup. Index `backends.len()`
/// is "answered by the gateway itself".
pub struct RouteMetrics {
    handles: Box<[Handles]>,
    /// Request body bytes received from clients on this route.
    pub received: Counter,
}

impl RouteMetrics {
    fn handles(&self, backend: Option<usize>) -> &Handles {
        let last = self.handles.len() - 1;
        &self.handles[backend.unwrap_or(last).min(last)]
    }

    /// Counts one finished request that sent `bytes` of body.
    pub fn record(
        &self,
        backend: Option<usize>,
        status: StatusCode,
        elapsed: Duration,
        bytes: u64,
    ) {
        let handles = self.handles(backend);
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        handles.responses[class].inc();
        handles.latency.observe(elapsed.as_secs_f64());
        handles.sent.inc_by(bytes);
    }

    pub fn record_failure(&self, backend: usize) {
        self.handles(Some(backend)).failures.inc();
    }
}

/// A backend's live state for the gauges, sampled when `/metrics` is read.
pub struct BackendState<'a> {
    pub pool: &'a str,
    pub backend: &'a Backend,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    sent: Family<RouteLabels, Counter>,
    received: Family<RouteLabels, Counter>,
    failures: Family<BackendLabels, Counter>,
    healthy: Family<BackendLabels, Gauge>,
    in_flight: Family<BackendLabels, Gauge>,
    /// Label sets in use, so a reload can drop those of removed routes and backends.
    live: Mutex<HashSet<RouteLabels>>,
    /// Times a request moved on to another backend after a failed attempt.
    pub failovers: Counter,
    /// Rate-limit decisions: allowed, limited, overflow (client not tracked:
    /// `max_clients` reached), unknown_key (refused under `unknown_keys: reject`).
    decisions: [Counter; 4],
    tracked_clients: Gauge,
    limiter: Option<Arc<Limiter>>,
    /// 1 while the shared (Redis) limiter answers.
    shared_up: Gauge,
    shared: Option<Arc<SharedLimiter>>,
    plugin_calls: Family<PluginLabels, Counter>,
    /// Clients refused lately, for the status page.
    pub limited: limited::Limited,
}

impl Metrics {
    pub fn new(limiter: Option<Arc<Limiter>>, shared: Option<Arc<SharedLimiter>>) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::Process::new()));
        let registry = root.sub_registry_with_prefix("gateway");
        let sent = Family::<RouteLabels, Counter>::default();
        let received = Family::<RouteLabels, Counter>::default();
        registry.register(
            "received_bytes",
            "Request body bytes received from clients, by route and pool (backend \"none\")",
            received.clone(),
        );
        registry.register(
            "sent_bytes",
            "Response body bytes sent to clients, by route, pool and backend",
            sent.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let failures = Family::<BackendLabels, Counter>::default();
        let healthy = Family::<BackendLabels, Gauge>::default();
        let in_flight = Family::<BackendLabels, Gauge>::default();
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
            "Requests answered, by route, pool, backend (\"none\": answered by the gateway) and status class",
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
        let shared_up = Gauge::default();
        if let Some(shared) = &shared {
            registry.register(
                "ratelimit_shared_up",
                "1 while the shared (Redis) limiter answers, 0 while the failure policy applies",
                shared_up.clone(),
            );
            registry.register(
                "ratelimit_shared_calls",
                "Script calls sent to Redis; each takes the decisions a worker's concurrent requests asked for meanwhile",
                shared.calls(),
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
            registry: root,
            requests,
            latency,
            sent,
            received,
            failures,
            healthy,
            in_flight,
            live: Mutex::new(HashSet::new()),
            failovers,
            decisions,
            tracked_clients,
            limiter,
            shared_up,
            shared,
            plugin_calls,
            limited: limited::Limited::default(),
        }
    }

    /// Counters for `route`, which sends to `backends` of `pool` (route and
    /// pool `none`: requests no route took).
    pub fn route(&self, route: &str, pool: &str, backends: &[Arc<Backend>]) -> RouteMetrics {
        let names = backends
            .iter()
            .map(|b| b.name.as_str())
            .chain(std::iter::once("none"));
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let handles = names
            .map(|backend| {
                let labels = RouteLabels {
                    route: route.to_owned(),
                    pool: pool.to_owned(),
                    backend: backend.to_owned(),
                };
                let handles = Handles {
                    responses: CLASSES.map(|class| {
                        self.requests
                            .get_or_create(&RequestLabels {
                                route: labels.route.clone(),
                                pool: labels.pool.clone(),
                                backend: labels.backend.clone(),
                                class,
                            })
                            .clone()
                    }),
                    latency: self.latency.get_or_create(&labels).clone(),
                    sent: self.sent.get_or_create(&labels).clone(),
                    failures: self
                        .failures
                        .get_or_create(&BackendLabels {
                            pool: labels.pool.clone(),
                            backend: labels.backend.clone(),
                        })
                        .clone(),
                };
                live.insert(labels);
                handles
            })
            .collect();
        let received = self
            .received
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                pool: pool.to_owned(),
                backend: "none".to_owned(),
            })
            .clone();
        RouteMetrics { handles, received }
    }

    /// Drops the series of routes and backends a reload removed: every label
    /// set not in `keep` (those of the routes now served).
    pub fn retain(&self, keep: &HashSet<(String, String, String)>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let pools: HashSet<(&str, &str)> = keep
            .iter()
            .map(|(_, pool, backend)| (pool.as_str(), backend.as_str()))
            .collect();
        live.retain(|labels| {
            let key = (
                labels.route.clone(),
                labels.pool.clone(),
                labels.backend.clone(),
            );
            if keep.contains(&key) {
                return true;
            }
            for class in CLASSES {
                self.requests.remove(&RequestLabels {
                    route: labels.route.clone(),
                    pool: labels.pool.clone(),
                    backend: labels.backend.clone(),
                    class,
                });
            }
            self.latency.remove(labels);
            self.sent.remove(labels);
            self.received.remove(labels);
            if !pools.contains(&(labels.pool.as_str(), labels.backend.as_str())) {
                self.failures.remove(&BackendLabels {
                    pool: labels.pool.clone(),
                    backend: labels.backend.clone(),
                });
            }
            false
        });
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

    /// Prometheus text exposition, with the state of `backends` sampled now.
    /// The metrics in OpenMetrics (`openmetrics`) or Prometheus text format.
    pub fn render(&self, backends: &[BackendState<'_>], openmetrics: bool) -> String {
        self.healthy.clear();
        self.in_flight.clear();
        for state in backends {
            let labels = BackendLabels {
                pool: state.pool.to_owned(),
                backend: state.backend.name.clone(),
            };
            self.healthy
                .get_or_create(&labels)
                .set(i64::from(state.backend.is_healthy()));
            self.in_flight
                .get_or_create(&labels)
                .set(state.backend.in_flight() as i64);
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
        if openmetrics {
            out
        } else {
            format::to_prometheus(&out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::test_support::backends;

    #[test]
    fn renders_counts_per_route_backend_and_class_and_forgets_removed_routes() {
        let set = backends(&[1, 1]);
        let m = Metrics::new(None, None);
        let api = m.route("api", "web", &set);
        let none = m.route("none", "none", &[]);
        api.record(Some(1), StatusCode::OK, Duration::from_millis(3), 120);
        none.record(
            None,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(1),
            0,
        );
        set[0].set_healthy(false);
        let states: Vec<BackendState> = set
            .iter()
            .map(|b| BackendState {
                pool: "web",
                backend: b,
            })
            .collect();
        let text = m.render(&states, false);
        assert!(
            text.contains(
                r#"gateway_requests_total{route="api",pool="web",backend="http://127.0.0.1:9001",class="2xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gateway_requests_total{route="none",pool="none",backend="none",class="5xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"gateway_backend_healthy{pool="web",backend="http://127.0.0.1:9000"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gateway_sent_bytes_total{route="api",pool="web",backend="http://127.0.0.1:9001"} 120"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE gateway_sent_bytes_total counter"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        let openmetrics = m.render(&states, true);
        assert!(
            openmetrics.contains("# TYPE gateway_sent_bytes counter"),
            "{openmetrics}"
        );
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        let keep = HashSet::from([("none".to_owned(), "none".to_owned(), "none".to_owned())]);
        m.retain(&keep);
        let text = m.render(&[], false);
        assert!(!text.contains(r#"route="api""#), "{text}");
        assert!(text.contains(r#"route="none""#), "{text}");
    }
}
