//! A backend pool's live part: its backends with their health and counters,
//! and the tasks that probe them. A reload keeps it while the pool's
//! settings stay the same, so health state and (in each worker) pooled
//! connections survive.

use crate::balancer::Backend;
use crate::config::PoolConfig;
use crate::health::HealthChecker;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub struct PoolCore {
    pub config: PoolConfig,
    /// In the order written; indices are stable while the pool lives.
    pub backends: Arc<[Arc<Backend>]>,
    _probes: Tasks,
}

impl PoolCore {
    /// The pool's backends, healthy until shown otherwise, with probes started.
    pub fn start(config: PoolConfig) -> PoolCore {
        let backends: Arc<[Arc<Backend>]> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Arc::new(Backend::new(i, b.url.clone(), b.weight)))
            .collect();
        let probes = HealthChecker::new(Arc::clone(&backends), config.health_check.clone()).spawn();
        PoolCore {
            config,
            backends,
            _probes: Tasks(probes),
        }
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
