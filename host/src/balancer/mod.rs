//! Backend selection interfaces and algorithms.

mod backend;
mod least_requests;
mod plugin;
mod random;
mod round_robin;

pub use backend::{Backend, InFlight};
pub use least_requests::LeastRequests;
pub use plugin::{PluginSelection, backend_states};
pub use random::Random;
pub use round_robin::RoundRobin;

use crate::config::Algorithm;
use std::sync::Arc;

/// Backends already tried for one request; allocates only after a failure.
#[derive(Debug, Default)]
pub struct Tried(Vec<usize>);

impl Tried {
    pub fn contains(&self, index: usize) -> bool {
        self.0.contains(&index)
    }

    pub fn insert(&mut self, index: usize) {
        self.0.push(index);
    }
}

/// The request being balanced, for algorithms that look at it (plugins).
pub struct Ctx<'a> {
    /// Method, URI and headers (headers may be lent out and returned during a pick).
    pub head: &'a mut http::request::Parts,
    /// The client address as the proxy computed it.
    pub client: std::net::IpAddr,
    /// The TLS session the request came on, if any.
    pub tls: Option<&'a std::sync::Arc<crate::tls::Session>>,
    /// Set when a plugin failed during a pick (the caller may refuse the request).
    pub plugin_failed: bool,
}

/// A balancing algorithm: given the backends and those already tried for this
/// request, name the next one to try.
///
/// Callers walk candidates until one answers, so retrying on the next backend
/// is the same call again with the failed one added to `tried`.
pub trait BackendSelection: Send + Sync {
    /// A healthy backend not in `tried`, or `None` when none is left.
    fn pick(&self, backends: &[Arc<Backend>], tried: &Tried, ctx: &mut Ctx<'_>) -> Option<usize>;
}

/// Is this backend worth a try for the current request?
fn usable(backends: &[Arc<Backend>], tried: &Tried, index: usize) -> bool {
    backends[index].is_healthy() && !tried.contains(index)
}

/// Builds the configured algorithm for a backend set, behind the plugin if there is one.
pub fn build(
    algorithm: Algorithm,
    backends: &[Arc<Backend>],
    plugin: Option<Arc<crate::plugin::Plugin<crate::plugin::SelectRole>>>,
) -> Arc<dyn BackendSelection> {
    let builtin = builtin(algorithm, backends);
    match plugin {
        Some(plugin) => Arc::new(PluginSelection {
            plugin,
            fallback: builtin,
        }),
        None => builtin,
    }
}

fn builtin(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Arc<dyn BackendSelection> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
    match algorithm {
        Algorithm::RoundRobin => Arc::new(RoundRobin::new(&weights)),
        Algorithm::LeastRequests => Arc::new(LeastRequests::new()),
        Algorithm::Random => Arc::new(Random::new(&weights)),
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Backend;

    use super::Ctx;
    use std::sync::Arc;

    /// Runs `f` with a context for a bare `GET /`.
    pub fn with_ctx<T>(f: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        let (mut head, ()) = http::Request::new(()).into_parts();
        let mut ctx = Ctx {
            head: &mut head,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            tls: None,
            plugin_failed: false,
        };
        f(&mut ctx)
    }

    pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let url = format!("http://127.0.0.1:{}", 9000 + i)
                    .parse()
                    .expect("url");
                Arc::new(Backend::new(i, url, w))
            })
            .collect()
    }
}
