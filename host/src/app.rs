//! Wiring: build the shared state from a [`Config`], start the listeners and
//! background tasks, and drain on SIGTERM/SIGINT.

use crate::acme;
use crate::admin::{Admin, Clients};
use crate::config::Config;
use crate::limiter::shared::{Budget, SharedLimiter};
use crate::limiter::{Limiter, canonical_client_id};
use crate::listen;
use crate::metrics::Metrics;
use crate::proxy::{Edge, Proxy};
use crate::reload::{Reloader, Source};
use crate::routing::{Buckets, Env, Routing};
use crate::server::{self, ConnLimits, Shutdown};
use crate::store::Store;
use crate::store::sync::{load_overrides, spawn_sync};
use crate::workers;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Runs the gateway until a termination signal, then drains and returns.
/// `source` is where a reload reads the configuration again.
pub async fn run(config: Config, source: Source) -> anyhow::Result<()> {
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
    let top_level = limiter.as_ref().map(|local| {
        Arc::new(Buckets::top_level(match &shared {
            Some(redis) => Budget::Shared {
                redis: Arc::clone(redis),
                local: Arc::clone(local),
            },
            None => Budget::Local(Arc::clone(local)),
        }))
    });
    let metrics = Arc::new(Metrics::new(limiter.clone(), shared.clone()));
    let env = Env {
        metrics: Arc::clone(&metrics),
        top_level,
        shared: shared.clone(),
    };
    let routing = Arc::new(Routing::build(&config, None, &env).map_err(|e| anyhow::anyhow!(e))?);
    for line in routing.plugins.describe() {
        tracing::info!(event = "plugin_loaded", "{line}");
    }
    let reloader = Arc::new(Reloader::new(source, env, Arc::clone(&routing)));
    reloader.spawn_plugin_watch();
    if config.reload.watch {
        reloader.spawn_watch(Duration::from_secs(1));
    }
    let workers = workers::count(config.proxy.workers);
    let clients = limiting.map(|(store, limiter)| Clients {
        store,
        limiter: Some(limiter),
        source: config.rate_limit.key.clone(),
    });
    let admin = Arc::new(Admin::new(
        Arc::clone(&reloader),
        Arc::clone(&metrics),
        config.admin.token.clone(),
        clients,
        shared,
    ));

    let listener = listen::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let challenges = config
        .tls
        .as_ref()
        .and_then(|t| t.acme.as_ref())
        .map(|_| Arc::new(acme::Challenges::default()));
    let https = match &config.tls {
        Some(tls) => {
            let server = tls.server().map_err(|problems| {
                let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
                anyhow::anyhow!(lines.join("\n"))
            })?;
            let bound = listen::bind(tls.listen)
                .with_context(|| format!("cannot listen on {} (tls.listen)", tls.listen))?;
            let server = Arc::new(server);
            reloader.serve_tls(Arc::clone(&server));
            reloader.spawn_certificate_watch(Duration::from_secs(1));
            if let (Some(acme), Some(challenges)) = (&tls.acme, &challenges) {
                acme::spawn(acme.clone(), Arc::clone(&server), Arc::clone(challenges));
            }
            Some(workers::Https {
                listener: Arc::new(bound.into_std()?),
                tls: server,
            })
        }
        None => None,
    };
    let admin_listener = listen::bind(config.admin.listen)
        .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
    let (stop, signal) = watch::channel(false);
    let (done, mut drained) = mpsc::channel::<()>(1);
    let shutdown = Shutdown { signal, done };

    let limits = ConnLimits {
        max_header_bytes: config.proxy.max_header_bytes,
        header_read_timeout: config.proxy.header_read_timeout,
    };
    let proxy_addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let https_addr = https.as_ref().and_then(|h| h.listener.local_addr().ok());
    let edge = Edge {
        https_port: https_addr.map(|a| a.port()),
        acme: challenges,
    };
    let make_proxy = || {
        Proxy::new(
            Arc::clone(&routing),
            Arc::clone(&metrics),
            workers,
            edge.clone(),
        )
    };
    let plan = workers::Plan {
        count: workers,
        io: config.proxy.io,
    };
    let proxies = workers::spawn(
        plan,
        listener.into_std()?,
        https.as_ref(),
        &reloader.rebind(),
        make_proxy,
        limits,
        &shutdown,
    )
    .context("cannot start the proxy workers")?;
    reloader.serve(proxies);
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
    let backends: usize = routing.pools.iter().map(|p| p.core.backends.len()).sum();
    let algorithm = match routing.pools.as_slice() {
        [pool] if pool.core.config.balancer_plugin.is_some() => "plugin",
        [pool] => pool.core.config.algorithm.name(),
        _ => "per pool",
    };
    tracing::info!(
        event = "listening",
        proxy = %proxy_addr,
        https = https_addr.map(tracing::field::display),
        workers,
        admin = %admin_addr,
        pools = routing.pools.len(),
        routes = routing.routes.len(),
        backends,
        algorithm,
        admin_token = config.admin.token.is_some(),
        "gateway started"
    );
    match (
        config.admin.token.as_deref(),
        crate::config::weak_token(config.admin.token.as_deref()),
    ) {
        (None, _) => tracing::warn!(
            event = "admin_token",
            "admin.token is not set: protected admin routes answer 401"
        ),
        (Some(_), Some(weakness)) => tracing::warn!(
            event = "admin_token",
            "the admin API is guarded by {weakness}; fine on loopback for a try-out, set a long random GATEWAY_ADMIN_TOKEN before anyone else can reach it"
        ),
        (Some(_), None) => {}
    }
    drop(routing);

    terminated(&reloader).await;
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

/// Resolves on SIGTERM or SIGINT; reloads the configuration on SIGHUP
/// (which never stops the gateway).
async fn terminated(reloader: &Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).ok();
        let hangups = async {
            match hangup.as_mut() {
                Some(hangup) => loop {
                    hangup.recv().await;
                    tracing::info!(event = "sighup", "SIGHUP: reloading the configuration");
                    // Reloads run one at a time; a failed one is logged by `reload`.
                    let reloader = Arc::clone(reloader);
                    tokio::spawn(async move { reloader.reload("sighup").await });
                },
                None => std::future::pending().await,
            }
        };
        let mut user1 = signal(SignalKind::user_defined1()).ok();
        let reopens = async {
            match user1.as_mut() {
                Some(user1) => loop {
                    user1.recv().await;
                    match crate::logging::reopen_access_file() {
                        Ok(()) => {
                            tracing::info!(event = "sigusr1", "SIGUSR1: access log file reopened")
                        }
                        Err(error) => {
                            tracing::error!(event = "sigusr1", %error, "SIGUSR1: cannot reopen the access log file; still writing the old one")
                        }
                    }
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
                    () = reopens => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
        let _ = tokio::signal::ctrl_c().await;
    }
}
