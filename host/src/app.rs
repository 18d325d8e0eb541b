//! Wiring: build the shared state from a [`Config`], start the listeners and
//! background tasks, and drain on SIGTERM/SIGINT.

use crate::admin::Admin;
use crate::balancer::{self, Backend};
use crate::config::Config;
use crate::health::HealthChecker;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::{self, ConnLimits, Shutdown};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Runs the gateway until a termination signal, then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let backends: Arc<[Arc<Backend>]> = config
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| Arc::new(Backend::new(i, b.url.clone(), b.weight)))
        .collect();
    let selection = balancer::build(config.algorithm, &backends);
    let metrics = Arc::new(Metrics::new(&backends));
    let proxy = Arc::new(Proxy::new(
        &config,
        Arc::clone(&backends),
        selection,
        Arc::clone(&metrics),
    ));
    let admin = Arc::new(Admin::new(
        Arc::clone(&backends),
        Arc::clone(&metrics),
        config.admin.token.clone(),
    ));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
    tracing::info!(
        event = "listening",
        proxy = %listener.local_addr()?,
        admin = %admin_listener.local_addr()?,
        backends = backends.len(),
        algorithm = config.algorithm.name(),
        admin_token = config.admin.token.is_some(),
        "gateway started"
    );
    if config.admin.token.is_none() {
        tracing::warn!("admin.token is not set: protected admin routes answer 401");
    }

    let (stop, signal) = watch::channel(false);
    let (done, mut drained) = mpsc::channel::<()>(1);
    let shutdown = Shutdown { signal, done };
    HealthChecker::new(Arc::clone(&backends), config.health_check.clone())
        .spawn(shutdown.signal.clone());

    let limits = ConnLimits {
        max_header_bytes: config.proxy.max_header_bytes,
        header_read_timeout: config.proxy.header_read_timeout,
    };
    tokio::spawn(server::serve(
        listener,
        move |request, peer| {
            let proxy = Arc::clone(&proxy);
            async move { proxy.handle(request, peer).await }
        },
        limits,
        shutdown.clone(),
    ));
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

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
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
