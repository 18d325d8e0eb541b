//! Wiring: build the shared state from a [`Config`], start the listeners and
//! background tasks, and drain on SIGTERM/SIGINT.

use crate::admin::{Admin, Clients};
use crate::balancer::{self, Backend};
use crate::config::Config;
use crate::health::HealthChecker;
use crate::limiter::shared::{Budget, SharedLimiter};
use crate::limiter::sync::load_overrides;
use crate::limiter::{Limiter, canonical_client_id, spawn_sync};
use crate::listen;
use crate::metrics::Metrics;
use crate::plugin::Plugins;
use crate::proxy::Proxy;
use crate::server::{self, ConnLimits, Shutdown};
use crate::store::Store;
use crate::workers;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Runs the gateway until a termination signal, then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let backends: Arc<[Arc<Backend>]> = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Arc::new(Backend::new(i, b.url.clone(), b.weight)))
        .collect();
    let limiting = rate_limiting(&config).await?;
    let limiter = limiting.as_ref().map(|(_, limiter)| Arc::clone(limiter));
    let shared = match (&config.rate_limit.shared, config.rate_limit.enabled) {
        (Some(shared), true) => Some(Arc::new(
            SharedLimiter::new(
                &shared.url,
                &shared.prefix,
                shared.timeout,
                shared.on_failure,
            )
            .map_err(|e| anyhow::anyhow!("rate_limit.shared: {e}"))?,
        )),
        _ => None,
    };
    let budget = limiter.as_ref().map(|local| {
        Arc::new(match &shared {
            Some(redis) => Budget::Shared {
                redis: Arc::clone(redis),
                local: Arc::clone(local),
            },
            None => Budget::Local(Arc::clone(local)),
        })
    });
    let metrics = Arc::new(Metrics::new(&backends, limiter.clone(), shared.clone()));
    let plugins = Plugins::load(&config, &|interface| metrics.plugin_outcomes(interface))
        .map_err(|e| anyhow::anyhow!("plugin: {e}"))?;
    for line in plugins.describe() {
        tracing::info!(event = "plugin_loaded", "{line}");
    }
    if config.plugins.reload {
        plugins.spawn_reloader();
    }
    let selection = balancer::build(config.algorithm, &backends, plugins.select.clone());
    let workers = workers::count(config.proxy.workers);
    // Each worker has its own pool, so each gets its share of the cap.
    let connections = config.proxy.max_backend_connections.div_ceil(workers);
    let make_proxy = || {
        Proxy::new(
            &config,
            connections,
            Arc::clone(&backends),
            Arc::clone(&selection),
            Arc::clone(&metrics),
            budget.clone(),
            &plugins,
        )
    };
    let clients = limiting.map(|(store, limiter)| Clients {
        store,
        limiter: Some(limiter),
        source: config.rate_limit.key.clone(),
    });
    let admin = Arc::new(Admin::new(
        Arc::clone(&backends),
        Arc::clone(&metrics),
        config.admin.token.clone(),
        clients,
        shared,
    ));

    let listener = listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin_listener = listen::bind(config.admin.listen)
        .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
    let (stop, signal) = watch::channel(false);
    let (done, mut drained) = mpsc::channel::<()>(1);
    let shutdown = Shutdown { signal, done };
    HealthChecker::new(Arc::clone(&backends), config.health_check.clone())
        .spawn(shutdown.signal.clone());

    let limits = ConnLimits {
        max_header_bytes: config.proxy.max_header_bytes,
        header_read_timeout: config.proxy.header_read_timeout,
    };
    let proxy_addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    workers::spawn(workers, listener.into_std()?, make_proxy, limits, &shutdown)
        .context("cannot start the proxy workers")?;
    tokio::spawn(server::serve(
        admin_listener,
        move |request, _peer| {
            let admin = Arc::clone(&admin);
            async move { admin.handle(request).await }
        },
        limits,
        shutdown.clone(),
    ));
    drop(shutdown);
    tracing::info!(
        event = "listening",
        proxy = %proxy_addr,
        workers,
        admin = %admin_addr,
        backends = backends.len(),
        algorithm = if plugins.select.is_some() { "plugin" } else { config.algorithm.name() },
        admin_token = config.admin.token.is_some(),
        "gateway started"
    );
    if config.admin.token.is_none() {
        tracing::warn!("admin.token is not set: protected admin routes answer 401");
    }

    terminated().await;
    tracing::info!(event = "shutdown", drain_timeout = ?config.proxy.drain_timeout, "stopping: no new connections, draining in-flight requests");
    let _ = stop.send(true);
    match tokio::time::timeout(config.proxy.drain_timeout, drained.recv()).await {
        Ok(_) => tracing::info!(event = "drained", "all connections finished"),
        Err(_) => tracing::warn!(
            event = "drain_timeout",
            "drain timeout reached; closing remaining connections"
        ),
    }
    Ok(())
}

/// Opens the limits database and starts the limiter with its ticker and sync
/// task; `None` when rate limiting is off.
async fn rate_limiting(config: &Config) -> anyhow::Result<Option<(Arc<Store>, Arc<Limiter>)>> {
    let rl = &config.rate_limit;
    if !rl.enabled {
        return Ok(None);
    }
    let limiter = Arc::new(Limiter::new(rl.default, rl.refill_interval, rl.max_clients));
    let store = Arc::new(Store::lazy(&rl.database, Duration::from_secs(2))?);
    match store.prepare().await {
        Ok(()) => {
            // Rows written before client ids named their source get one now.
            let renamed = store
                .rename_clients(|id| canonical_client_id(id, &rl.key).ok())
                .await?;
            for (from, to) in renamed {
                tracing::info!(event = "client_renamed", from = %from, to = %to, "per-client limit now names its key source");
            }
            limiter.apply_overrides(load_overrides(&store, &rl.key).await?);
        }
        Err(error) if rl.database_required => {
            anyhow::bail!(
                "rate_limit.database {}: {error} (set rate_limit.database_required: false to start with default limits)",
                store.display
            );
        }
        Err(error) => {
            tracing::warn!(event = "database_down", database = %store.display, %error, "limits database unavailable at start; serving default limits until it is reachable");
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                while store.prepare().await.is_err() {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
    }
    limiter.spawn_ticker(rl.refill_interval);
    spawn_sync(
        Arc::clone(&store),
        Arc::clone(&limiter),
        rl.key.clone(),
        rl.sync_interval,
    );
    tracing::info!(
        event = "rate_limit",
        database = %store.display,
        capacity = rl.default.capacity,
        refill_per_second = rl.default.refill_per_second(),
        "rate limiting on"
    );
    Ok(Some((store, limiter)))
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // SIGHUP must never stop the gateway (operators send it out of
        // habit to reload): it reloads plugins (see `Plugins::spawn_reloader`);
        // here it is only taken and said to change nothing else.
        let mut hangup = signal(SignalKind::hangup()).ok();
        let hangups = async {
            match hangup.as_mut() {
                Some(hangup) => loop {
                    hangup.recv().await;
                    tracing::warn!(
                        event = "sighup",
                        "SIGHUP: plugins are reloaded; the configuration file is not (restart to apply it)"
                    );
                },
                None => std::future::pending().await,
            }
        };
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                    () = hangups => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
