//! A backend pool's live part: its backends with their health and counters,
//! and the tasks that probe them. A reload keeps it while the pool's
//! settings stay the same, so health state and (in each worker) pooled
//! connections survive.

use crate::balancer::Backend;
use crate::config::PoolConfig;
use crate::health::HealthChecker;
use crate::tls::backend::Connector;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub struct PoolCore {
    pub config: PoolConfig,
    /// In the order written; indices are stable while the pool lives.
    pub backends: Arc<[Arc<Backend>]>,
    /// How `https://` backends are reached (`None`: the pool has none).
    pub tls: Option<Connector>,
    _probes: Tasks,
}

impl PoolCore {
    /// The pool's backends, healthy until shown otherwise, with probes
    /// started. Fails when `https://` backends cannot be verified (no CA).
    pub fn start(config: PoolConfig) -> Result<PoolCore, String> {
        let backends: Arc<[Arc<Backend>]> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Arc::new(Backend::new(i, b.url.clone(), b.weight)))
            .collect();
        let tls = match config
            .backends
            .iter()
            .any(|b| b.url.scheme_str() == Some("https"))
        {
            true => Some(connector(&config).map_err(|e| format!("pool {}: {e}", config.name))?),
            false => None,
        };
        let probes = HealthChecker::new(
            Arc::clone(&backends),
            config.health_check.clone(),
            tls.as_ref().map(Connector::config),
        )
        .spawn();
        Ok(PoolCore {
            config,
            backends,
            tls,
            _probes: Tasks(probes),
        })
    }

    /// True when `config` describes this pool exactly, so it can stay.
    pub fn serves(&self, config: &PoolConfig) -> bool {
        self.config == *config
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// Background tasks that end with their owner.
pub struct Tasks(pub Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The TLS client for a pool's `https://` backends: `backend_ca` or the
/// system's roots; ALPN offers HTTP/2 only to an `h2` pool.
fn connector(config: &PoolConfig) -> Result<Connector, String> {
    let roots = match &config.backend_ca {
        Some(path) => Some(Arc::new(crate::tls::certs::read_roots(path)?)),
        None => None,
    };
    let alpn: &[&[u8]] = match config.protocol {
        crate::config::Protocol::H2 => &[b"h2"],
        _ => &[b"http/1.1"],
    };
    Connector::new(roots, alpn)
}
