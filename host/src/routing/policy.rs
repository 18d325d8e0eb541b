//! Rate-limit policies: the top-level `rate_limit` and each route's own.
//! A policy's buckets ([`Buckets`]) outlive a reload that leaves the
//! policy as it was, so a client at 0 tokens stays at 0.

use super::pool::Tasks;
use crate::config::{PolicyConfig, RateLimitConfig};
use crate::limiter::shared::{Budget, SharedLimiter};
use crate::limiter::{KeySource, Limiter, Limits, UnknownKeys};
use crate::plugin::{KeyRole, Plugin};
use std::sync::Arc;

/// What a route's requests are charged to.
pub struct Policy {
    /// Named in `RateLimit-Policy` (`default` for the top-level policy).
    pub name: String,
    pub buckets: Arc<Buckets>,
    pub key: KeySource,
    pub unknown_keys: UnknownKeys,
    pub key_plugin: Option<Arc<Plugin<KeyRole>>>,
}

/// A policy's token buckets, local or in Redis.
pub struct Buckets {
    pub budget: Budget,
    /// What the buckets were made for: a route policy's name, limits and
    /// key (`None`: the top-level policy, made once at start).
    made_for: Option<(String, Limits, KeySource, UnknownKeys)>,
    _ticker: Tasks,
}

impl Buckets {
    /// The top-level policy's buckets (its ticker and database sync are the app's).
    pub fn top_level(budget: Budget) -> Buckets {
        Buckets {
            budget,
            made_for: None,
            _ticker: Tasks(Vec::new()),
        }
    }

    /// Fresh buckets for a route's own policy, refilled on the top-level
    /// tick and shared through Redis when the top level is.
    pub fn for_route(
        policy: &PolicyConfig,
        top: &RateLimitConfig,
        shared: Option<&SharedLimiter>,
    ) -> Buckets {
        let local = Arc::new(Limiter::new(
            policy.limits,
            top.refill_interval,
            top.max_clients,
        ));
        let ticker = local.spawn_ticker(top.refill_interval);
        let budget = match shared {
            Some(redis) => Budget::Shared {
                redis: Arc::new(redis.for_policy(&policy.name)),
                local,
            },
            None => Budget::Local(local),
        };
        Buckets {
            budget,
            made_for: Some(identity(policy)),
            _ticker: Tasks(vec![ticker]),
        }
    }

    /// True when these buckets were made for `policy` as it is now written.
    pub fn made_for(&self, policy: &PolicyConfig) -> bool {
        self.made_for.as_ref() == Some(&identity(policy))
    }
}

fn identity(policy: &PolicyConfig) -> (String, Limits, KeySource, UnknownKeys) {
    (
        policy.name.clone(),
        policy.limits,
        policy.key.clone(),
        policy.unknown_keys,
    )
}
