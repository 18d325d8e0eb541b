//! Buckets in Redis, so several gateways enforce one budget per client.
//!
//! A Lua script (EVALSHA; the `redis` crate loads it again on NOSCRIPT)
//! runs the same token bucket as the local limiter: milli-tokens, refill
//! from the Redis server's clock (`TIME`), so gateways with skewed clocks
//! agree. A worker's concurrent decisions share one call (see `batch`). Each bucket key expires once the bucket would be full again,
//! so idle clients cost Redis nothing. When Redis is slow or down, the
//! configured policy decides: a local bucket, allow, or deny.

use super::batch::{Ask, Batcher};
use super::link::{Link, Target};
use super::{ClientKey, Decision, Limiter, Limits, bucket::MILLI};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What to do when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSharedFailure {
    /// Decide with this gateway's own bucket for the client.
    Local,
    /// Let the request through.
    Allow,
    /// Refuse the request with 503.
    Deny,
}

impl OnSharedFailure {
    pub fn name(self) -> &'static str {
        match self {
            OnSharedFailure::Local => "local",
            OnSharedFailure::Allow => "allow",
            OnSharedFailure::Deny => "deny",
        }
    }
}

pub struct SharedLimiter {
    /// Decisions in Redis, batched per worker over multiplexed connections
    /// that reconnect by themselves.
    redis: Batcher,
    /// `gateway:{prefix}:bucket:`, followed in each Redis key by the client
    /// key with its source (`ip:…`, `header:NAME:…`, `plugin:…`).
    namespace: String,
    /// Longest wait for Redis per decision.
    timeout: Duration,
    policy: OnSharedFailure,
    /// Whether the last call reached Redis; flips are logged once.
    up: AtomicBool,
    /// Redis URL without password, for logs.
    display: String,
}

impl SharedLimiter {
    /// Sets up the connection without waiting for Redis (it may be down at start).
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        policy: OnSharedFailure,
    ) -> Result<Self, String> {
        let link = Link::open(&Target::parse(url)?, timeout)?;
        Ok(SharedLimiter {
            redis: Batcher::new(link, timeout),
            namespace: format!("gateway:{prefix}:bucket:"),
            timeout,
            policy,
            up: AtomicBool::new(true),
            display: crate::redact::redact(url),
        })
    }

    /// The same Redis and settings for a route's own policy: its buckets
    /// under `gateway:{prefix}:policy:{name}:bucket:`.
    pub fn for_policy(&self, name: &str) -> SharedLimiter {
        let base = self.namespace.trim_end_matches("bucket:");
        SharedLimiter {
            redis: self.redis.clone(),
            namespace: format!("{base}policy:{name}:bucket:"),
            timeout: self.timeout,
            policy: self.policy,
            up: AtomicBool::new(self.is_up()),
            display: self.display.clone(),
        }
    }

    /// Counts the script calls sent to Redis (several decisions each under load).
    pub fn calls(&self) -> prometheus_client::metrics::counter::Counter {
        self.redis.calls()
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn policy(&self) -> OnSharedFailure {
        self.policy
    }

    /// One decision for `key` under `limits`, from Redis; `Err` when Redis
    /// did not answer in time (the caller applies the failure policy).
    pub async fn check(
        &self,
        key: &ClientKey<'_>,
        limits: Limits,
        cost: u32,
    ) -> Result<Decision, String> {
        let mut name = Vec::with_capacity(self.namespace.len() + 64);
        name.extend_from_slice(self.namespace.as_bytes());
        key.write_bytes(&mut name);
        let ask = Ask {
            key: name,
            capacity: limits.capacity,
            refill_milli: limits.refill_milli.max(1),
            cost_milli: u64::from(cost) * MILLI,
        };
        let answer = tokio::time::timeout(self.timeout, self.redis.decide(ask)).await;
        let outcome = match answer {
            Ok(Ok((allowed, left))) => Ok(decision(allowed, left.max(0) as u64, limits, cost)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        self.note(&outcome);
        outcome
    }

    fn note(&self, outcome: &Result<Decision, String>) {
        let ok = outcome.is_ok();
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            match outcome {
                Ok(_) => {
                    tracing::info!(event = "shared_limiter_up", redis = %self.display, "shared limiter reachable again; budgets shared through Redis")
                }
                Err(error) => {
                    tracing::warn!(event = "shared_limiter_down", redis = %self.display, %error, policy = self.policy.name(), "shared limiter unavailable; applying on_shared_failure policy")
                }
            }
        }
    }
}

fn decision(allowed: bool, remaining_milli: u64, limits: Limits, cost: u32) -> Decision {
    let full = u64::from(limits.capacity) * MILLI;
    Decision {
        allowed,
        remaining: remaining_milli / MILLI,
        retry_after: limits.seconds_for((u64::from(cost) * MILLI).saturating_sub(remaining_milli)),
        reset: if remaining_milli >= full {
            0
        } else {
            limits.seconds_for(full - remaining_milli)
        },
        limits,
        overflow: false,
    }
}

/// The request path's view: local buckets, or Redis with a fallback.
pub enum Budget {
    Local(Arc<Limiter>),
    Shared {
        redis: Arc<SharedLimiter>,
        /// Overrides and, under `on_shared_failure: local`, the fallback buckets.
        local: Arc<Limiter>,
    },
}

/// A decision, or "the limiter itself is unavailable" (policy `deny`).
pub enum Verdict {
    Decided(Decision),
    Unavailable,
}

impl Budget {
    pub fn local(&self) -> &Arc<Limiter> {
        match self {
            Budget::Local(l) | Budget::Shared { local: l, .. } => l,
        }
    }

    /// Takes `cost` tokens for `key`.
    pub async fn check(&self, key: &ClientKey<'_>, cost: u32) -> Verdict {
        match self {
            Budget::Local(limiter) => Verdict::Decided(limiter.check_cost(key, cost)),
            Budget::Shared { redis, local } => {
                let limits = local.limits_for(key);
                // Boxed: the Redis round trip's future is kilobytes, and
                // every request's future would otherwise carry (and move) it.
                match Box::pin(redis.check(key, limits, cost)).await {
                    Ok(decision) => Verdict::Decided(decision),
                    Err(_) => match redis.policy() {
                        OnSharedFailure::Local => Verdict::Decided(local.check_cost(key, cost)),
                        OnSharedFailure::Allow => Verdict::Decided(decision(
                            true,
                            u64::from(limits.capacity) * MILLI,
                            limits,
                            cost,
                        )),
                        OnSharedFailure::Deny => Verdict::Unavailable,
                    },
                }
            }
        }
    }
}
