//! The routing state requests are served with: the compiled route table,
//! the backend pools and the rate-limit policies, built from a [`Config`].
//!
//! A reload builds a new [`Routing`] next to the running one and swaps it
//! in; requests in flight keep the one they started with. Building reuses
//! what did not change: a pool whose settings are the same keeps its
//! backends (health, counters) and probes, a policy that is the same keeps
//! its buckets. Plugins are loaded afresh with each build.

mod policy;
mod pool;

pub use policy::{Buckets, Policy};
pub use pool::PoolCore;

use crate::balancer::{self, BackendSelection};
use crate::config::{Config, ProxyConfig, RouteConfig, RouteLimit};
use crate::limiter::shared::SharedLimiter;
use crate::metrics::{BackendState, Metrics, RouteMetrics};
use crate::plugin::{Loader, Plugins};
use crate::routes::RouteTable;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// What a build needs besides the configuration.
pub struct Env {
    pub metrics: Arc<Metrics>,
    /// The top-level policy's buckets, made once at start (`None`: rate limiting off).
    pub top_level: Option<Arc<Buckets>>,
    /// Redis, when buckets are shared.
    pub shared: Option<Arc<SharedLimiter>>,
}

pub struct Routing {
    pub table: RouteTable,
    /// In the order written, as numbered by `table`.
    pub routes: Vec<Route>,
    pub pools: Vec<Pool>,
    /// Counters for requests no route took.
    pub unrouted: Arc<RouteMetrics>,
    pub proxy: ProxyConfig,
    pub access_log: bool,
    /// A failed plugin answers 500 instead of falling back.
    pub fail_closed: bool,
    pub plugins: Plugins,
    /// The configuration this was built from.
    pub config: Config,
}

/// A pool as this routing uses it.
pub struct Pool {
    pub core: Arc<PoolCore>,
    /// The pool's balancer (behind its plugin, if it has one).
    pub selection: Arc<dyn BackendSelection>,
}

pub struct Route {
    pub config: RouteConfig,
    /// Index into [`Routing::pools`].
    pub pool: usize,
    pub selection: Arc<dyn BackendSelection>,
    /// `None`: not limited.
    pub policy: Option<Arc<Policy>>,
    pub request_timeout: Duration,
    pub metrics: Arc<RouteMetrics>,
}

impl Routing {
    /// Builds the routing for `config`, keeping from `previous` the pools and
    /// policy buckets that did not change. Fails when a plugin does not load.
    pub fn build(
        config: &Config,
        previous: Option<&Routing>,
        env: &Env,
    ) -> Result<Routing, String> {
        let outcomes = |interface| env.metrics.plugin_outcomes(interface);
        let mut loader = Loader::new(&config.plugins, &outcomes);
        let mut pools = Vec::with_capacity(config.pools.len());
        for pool in &config.pools {
            let kept = previous.and_then(|p| p.pools.iter().find(|old| old.core.serves(pool)));
            let core = match kept {
                Some(old) => Arc::clone(&old.core),
                None => Arc::new(PoolCore::start(pool.clone())?),
            };
            let plugin = match &pool.balancer_plugin {
                Some(path) => Some(
                    loader
                        .select(path, &pool.name, backend_urls(&core))
                        .map_err(|e| format!("pools.{}: {e}", pool.name))?,
                ),
                None => None,
            };
            let selection = balancer::build(pool.algorithm, &core.backends, plugin);
            pools.push(Pool { core, selection });
        }

        let rl = &config.rate_limit;
        let top_level = match (&env.top_level, rl.enabled) {
            (Some(buckets), true) => Some(Arc::new(Policy {
                name: "default".to_owned(),
                buckets: Arc::clone(buckets),
                key: rl.key.clone(),
                unknown_keys: rl.unknown_keys,
                key_plugin: match &rl.key_plugin {
                    Some(path) => Some(
                        loader
                            .key(path)
                            .map_err(|e| format!("rate_limit.key_plugin: {e}"))?,
                    ),
                    None => None,
                },
            })),
            _ => None,
        };

        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let pool = &pools[route.pool];
            let selection = match &route.select_plugin {
                Some(path) => {
                    let plugin = loader
                        .select(path, pool.core.name(), backend_urls(&pool.core))
                        .map_err(|e| format!("route {}: {e}", route.name))?;
                    balancer::build(
                        pool.core.config.algorithm,
                        &pool.core.backends,
                        Some(plugin),
                    )
                }
                None => Arc::clone(&pool.selection),
            };
            let policy = match &route.limit {
                RouteLimit::Default => top_level.clone(),
                RouteLimit::Off => None,
                RouteLimit::Own(own) => {
                    let kept = previous.and_then(|p| {
                        p.policies()
                            .find(|old| old.buckets.made_for(own))
                            .map(|old| Arc::clone(&old.buckets))
                    });
                    let buckets = kept.unwrap_or_else(|| {
                        Arc::new(Buckets::for_route(own, rl, env.shared.as_deref()))
                    });
                    let key_plugin = match &own.key_plugin {
                        Some(path) => Some(
                            loader
                                .key(path)
                                .map_err(|e| format!("route {}: {e}", route.name))?,
                        ),
                        None => None,
                    };
                    Some(Arc::new(Policy {
                        name: own.name.clone(),
                        buckets,
                        key: own.key.clone(),
                        unknown_keys: own.unknown_keys,
                        key_plugin,
                    }))
                }
            };
            routes.push(Route {
                pool: route.pool,
                selection,
                policy,
                request_timeout: route
                    .request_timeout
                    .unwrap_or(pool.core.config.request_timeout),
                metrics: Arc::new(env.metrics.route(
                    &route.name,
                    pool.core.name(),
                    &pool.core.backends,
                )),
                config: route.clone(),
            });
        }
        Ok(Routing {
            table: RouteTable::new(config.routes.iter().map(|r| &r.matcher)),
            routes,
            pools,
            unrouted: Arc::new(env.metrics.route("none", "none", &[])),
            proxy: config.proxy.clone(),
            access_log: config.log.access,
            fail_closed: config.plugins.fail_closed,
            plugins: loader.finish(),
            config: config.clone(),
        })
    }

    /// Each route's own policy, once.
    fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.routes
            .iter()
            .filter(|r| matches!(r.config.limit, RouteLimit::Own(_)))
            .filter_map(|r| r.policy.as_ref())
    }

    /// The (route, pool, backend) label sets this routing counts under.
    pub fn label_sets(&self) -> HashSet<(String, String, String)> {
        let mut sets = HashSet::new();
        sets.insert(("none".to_owned(), "none".to_owned(), "none".to_owned()));
        for route in &self.routes {
            let pool = &self.pools[route.pool].core;
            let backends = pool
                .backends
                .iter()
                .map(|b| b.name.clone())
                .chain(std::iter::once("none".to_owned()));
            for backend in backends {
                sets.insert((route.config.name.clone(), pool.name().to_owned(), backend));
            }
        }
        sets
    }

    /// Every backend with its pool, for the gauges and the admin API.
    pub fn backend_states(&self) -> Vec<BackendState<'_>> {
        self.pools
            .iter()
            .flat_map(|pool| {
                pool.core.backends.iter().map(|backend| BackendState {
                    pool: pool.core.name(),
                    backend,
                })
            })
            .collect()
    }
}

fn backend_urls(pool: &PoolCore) -> Vec<String> {
    pool.config.backend_names()
}

/// Loads every plugin `config` names, as a build would, without starting
/// anything else (for `validate`).
pub fn load_plugins(config: &Config) -> Result<Plugins, String> {
    let outcomes = |_| crate::plugin::Outcomes::default();
    let mut loader = Loader::new(&config.plugins, &outcomes);
    for pool in &config.pools {
        if let Some(path) = &pool.balancer_plugin {
            loader
                .select(path, &pool.name, pool.backend_names())
                .map_err(|e| format!("pools.{}: {e}", pool.name))?;
        }
    }
    if let (true, Some(path)) = (config.rate_limit.enabled, &config.rate_limit.key_plugin) {
        loader
            .key(path)
            .map_err(|e| format!("rate_limit.key_plugin: {e}"))?;
    }
    for route in &config.routes {
        let pool = config.pool(route);
        if let Some(path) = &route.select_plugin {
            loader
                .select(path, &pool.name, pool.backend_names())
                .map_err(|e| format!("route {}: {e}", route.name))?;
        }
        if let RouteLimit::Own(own) = &route.limit
            && let Some(path) = &own.key_plugin
        {
            loader
                .key(path)
                .map_err(|e| format!("route {}: {e}", route.name))?;
        }
    }
    Ok(loader.finish())
}
