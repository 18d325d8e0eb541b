//! Proving a plugin works before it serves: each export is called once with
//! a synthetic request under the runtime's own limits. `gateway plugin
//! check`, `gateway validate`, startup and hot reload all go through here,
//! so a component whose calls trap never reaches traffic.

use super::roles::{BackendState, KeyRole, SelectRole};
use super::runner::{Plugin, PluginFailure};
use super::state::RequestView;
use http::{HeaderMap, HeaderValue, Method, Uri};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

/// The request every check uses: a GET with the headers the example
/// plugins read (an API key, a bearer token, a cookie, a canary flag).
pub fn synthetic_request() -> RequestView {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "plugin-check.test"),
        ("user-agent", "gateway-plugin-check"),
        ("x-api-key", "plugin-check-key"),
        (
            "authorization",
            "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJwbHVnaW4tY2hlY2sifQ.",
        ),
        ("cookie", "session=plugin-check"),
        ("x-canary", "1"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    RequestView {
        method: Method::GET,
        uri: Uri::from_static("/plugin-check/items?id=1"),
        headers,
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        tls: Some(Arc::new(crate::tls::Session {
            subject: Some("CN=plugin-check,O=Example".to_owned()),
            fingerprint: None,
            server_name: Some("plugin-check.example".to_owned()),
        })),
    }
}

/// Healthy, idle backends of weight 1 standing in for the `count`
/// configured ones.
fn synthetic_backends(count: usize) -> Vec<BackendState> {
    let idle = BackendState {
        healthy: true,
        in_flight: 0,
        weight: 1,
    };
    vec![idle; count]
}

/// What one probe call answered, for people.
fn timed<T>(call: impl FnOnce() -> Result<T, PluginFailure>) -> Result<(T, f64), PluginFailure> {
    let start = Instant::now();
    let answer = call()?;
    Ok((answer, start.elapsed().as_secs_f64() * 1000.0))
}

/// Calls `client-key` once with the synthetic request.
pub fn probe_key(plugin: &Plugin<KeyRole>) -> Result<String, PluginFailure> {
    let mut view = Some(synthetic_request());
    let (key, ms) = timed(|| plugin.client_key(&mut view))?;
    Ok(match key {
        Some(key) => format!("client-key answered {key:?} in {ms:.2} ms"),
        None => format!("client-key answered none (the built-in key) in {ms:.2} ms"),
    })
}

/// Calls `select-backend` once with the synthetic request and `urls` as
/// healthy, idle backends.
pub fn probe_select(plugin: &Plugin<SelectRole>, urls: &[String]) -> Result<String, PluginFailure> {
    let backends = synthetic_backends(urls.len());
    let mut view = Some(synthetic_request());
    let (chosen, ms) = timed(|| plugin.select(&mut view, &backends))?;
    Ok(match chosen {
        Some(i) => format!(
            "backend-select chose backend {i} of {} in {ms:.2} ms",
            backends.len()
        ),
        None => format!("backend-select answered none (the built-in balancer) in {ms:.2} ms"),
    })
}
