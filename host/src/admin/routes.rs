//! The admin views of the routing: `/backends` (every backend, pool by
//! pool), `/routes` (routes in order, then pools), and a reload's problems.

use crate::config::{Problem, RouteLimit};
use crate::limiter::KeyKind;
use crate::routes::PathRule;
use crate::routing::Routing;
use serde::Serialize;

#[derive(Serialize)]
pub struct BackendView<'a> {
    pool: &'a str,
    url: &'a str,
    weight: u32,
    healthy: bool,
    in_flight: u64,
    requests: u64,
    failures: u64,
    /// Time spent on finished requests, microseconds: latency is its
    /// change over the change in `requests`.
    busy_micros: u64,
}

pub fn backends(routing: &Routing) -> Vec<BackendView<'_>> {
    routing
        .backend_states()
        .into_iter()
        .map(|state| {
            let b = state.backend;
            BackendView {
                pool: state.pool,
                url: &b.name,
                weight: b.weight,
                healthy: b.is_healthy(),
                in_flight: b.in_flight(),
                requests: b.requests(),
                failures: b.failures(),
                busy_micros: b.busy_micros(),
            }
        })
        .collect()
}

pub fn routes(routing: &Routing) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = routing
        .routes
        .iter()
        .map(|route| {
            let c = &route.config;
            let m = &c.matcher;
            let (path_prefix, path) = match &m.path {
                Some(PathRule::Prefix(p)) => (Some(if p.is_empty() { "/" } else { p.as_str() }), None),
                Some(PathRule::Exact(p)) => (None, Some(p.as_str())),
                None => (None, None),
            };
            let headers: serde_json::Map<String, serde_json::Value> = m
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into(),
                    )
                })
                .collect();
            let policy = match (&c.limit, &route.policy) {
                (RouteLimit::Off, _) | (_, None) => serde_json::Value::String("off".into()),
                (_, Some(policy)) => serde_json::json!({
                    "name": policy.name,
                    "capacity": policy.buckets.budget.local().default_limits().capacity,
                    "refill_per_second": policy.buckets.budget.local().default_limits().refill_per_second(),
                    "key": key_name(&policy.key.kind),
                }),
            };
            serde_json::json!({
                "name": c.name,
                "match": {
                    "host": m.host.as_ref().map(ToString::to_string),
                    "path_prefix": path_prefix,
                    "path": path,
                    "methods": m.methods.iter().map(http::Method::as_str).collect::<Vec<_>>(),
                    "headers": headers,
                },
                "pool": routing.pools[route.pool].core.name(),
                "strip_prefix": c.strip_prefix.is_some(),
                "rate_limit": policy,
                "cost": c.cost,
            })
        })
        .collect();
    let pools: Vec<serde_json::Value> = routing
        .pools
        .iter()
        .map(|pool| {
            let c = &pool.core.config;
            serde_json::json!({
                "name": c.name,
                "balancer": match &c.balancer_plugin {
                    Some(plugin) => format!("plugin {} (fallback {})", plugin.display(), c.algorithm.name()),
                    None => c.algorithm.name().to_owned(),
                },
                "backends": pool.core.backends.iter().map(|b| serde_json::json!({
                    "url": b.name,
                    "weight": b.weight,
                    "healthy": b.is_healthy(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({"routes": routes, "pools": pools})
}

fn key_name(kind: &KeyKind) -> String {
    match kind {
        KeyKind::Ip => "ip".to_owned(),
        KeyKind::Header(name) => format!("header:{name}"),
        KeyKind::Plugin => "plugin".to_owned(),
        KeyKind::TlsSubject => "tls_subject".to_owned(),
        KeyKind::TlsFingerprint => "tls_fingerprint".to_owned(),
    }
}

/// A refused reload's answer: `{"code":400,"message":…,"problems":[…]}`.
pub fn problems(problems: &[Problem]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "path": p.path,
                "line": p.line,
                "column": p.column,
                "message": p.message,
            })
        })
        .collect();
    serde_json::json!({
        "code": 400,
        "message": format!("Configuration not reloaded: {} problem(s); the running configuration stays", problems.len()),
        "problems": list,
    })
}
