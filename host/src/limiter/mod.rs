//! Per-client token buckets: a sharded map from client key to a lock-free
//! bucket, a ticker that drives refill and evicts idle clients, and the
//! per-client overrides loaded from the database.

mod bucket;
mod headers;
mod key;
pub mod shared;
pub mod sync;

pub use bucket::{Bucket, Limits, MAX_CAPACITY, MAX_REFILL, MIN_REFILL};
pub use headers::{apply_headers, rejection};
pub use key::{KeyBuf, KeySource, client_key};
pub use sync::spawn_sync;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Seconds until the next token (for `Retry-After`), at least 1.
    pub retry_after: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    pub limits: Limits,
    /// The client could not be tracked because `max_clients` was reached.
    pub overflow: bool,
}

/// Map hasher for keys that are already uniformly distributed 64-bit hashes.
type PreHashed = nohash_hasher::BuildNoHashHasher<u64>;

pub struct Limiter {
    /// Bucket per client, keyed by a seeded 64-bit hash of the client key.
    buckets: DashMap<u64, Bucket, PreHashed>,
    /// Seeded per process so clients cannot aim for each other's hash.
    hasher: foldhash::fast::RandomState,
    /// Refill clock: advanced by the ticker, read by every decision.
    tick: AtomicU64,
    /// Length of one tick.
    tick_micros: u64,
    /// Limits for clients without an override.
    default: Limits,
    /// Per-client overrides from the database, consulted when a bucket is created.
    overrides: ArcSwap<HashMap<String, Limits>>,
    /// Number of buckets, kept here because `DashMap::len` locks every shard.
    tracked: AtomicUsize,
    /// Most clients tracked at once; new clients beyond it are refused.
    max_clients: usize,
}

impl Limiter {
    pub fn new(default: Limits, refill_interval: Duration, max_clients: usize) -> Limiter {
        Limiter {
            buckets: DashMap::with_capacity_and_hasher_and_shard_amount(
                0,
                PreHashed::default(),
                64,
            ),
            hasher: foldhash::fast::RandomState::default(),
            tick: AtomicU64::new(0),
            tick_micros: (refill_interval.as_micros() as u64).max(1),
            default,
            overrides: ArcSwap::from_pointee(HashMap::new()),
            tracked: AtomicUsize::new(0),
            max_clients,
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Takes a token for `key`, or says why not.
    pub fn check(&self, key: &str) -> Decision {
        let hash = self.hash(key);
        let now = self.tick.load(Ordering::Relaxed);
        if let Some(bucket) = self.buckets.get(&hash) {
            return self.decide(bucket.take(now, self.tick_micros));
        }
        if self.tracked.load(Ordering::Relaxed) >= self.max_clients {
            return Decision {
                allowed: false,
                remaining: 0,
                retry_after: 1,
                reset: 1,
                limits: self.default,
                overflow: true,
            };
        }
        let limits = self
            .overrides
            .load()
            .get(key)
            .copied()
            .unwrap_or(self.default);
        let bucket = self.buckets.entry(hash).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::Relaxed);
            Bucket::new(limits, now)
        });
        self.decide(bucket.take(now, self.tick_micros))
    }

    fn decide(&self, taken: bucket::Taken) -> Decision {
        let limits = taken.limits;
        let full = u64::from(limits.capacity) * bucket::MILLI;
        let next = bucket::MILLI.saturating_sub(taken.remaining_milli);
        Decision {
            allowed: taken.allowed,
            remaining: taken.remaining_milli / bucket::MILLI,
            retry_after: limits.seconds_for(next),
            reset: if taken.remaining_milli >= full {
                0
            } else {
                limits.seconds_for(full - taken.remaining_milli)
            },
            limits,
            overflow: false,
        }
    }

    /// One refill tick: every bucket gains one interval's worth of tokens
    /// (applied by each bucket when next touched).
    pub fn tick(&self) {
        self.tick.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops buckets that are full again (idle clients) and settles the rest,
    /// so a bucket never falls more than one pass behind the clock. Returns
    /// how many were evicted.
    pub fn evict_idle(&self) -> usize {
        let now = self.tick.load(Ordering::Relaxed);
        let mut evicted = 0;
        self.buckets.retain(|_, bucket| {
            let full = bucket.settle(now, self.tick_micros);
            evicted += usize::from(full);
            !full
        });
        self.tracked.fetch_sub(evicted, Ordering::Relaxed);
        evicted
    }

    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// The limits `key` gets: its override, else the default.
    pub fn limits_for(&self, key: &str) -> Limits {
        self.overrides
            .load()
            .get(key)
            .copied()
            .unwrap_or(self.default)
    }

    pub fn default_limits(&self) -> Limits {
        self.default
    }

    /// Installs a new set of overrides and updates the live buckets whose
    /// limits changed (including those whose override was removed).
    pub fn apply_overrides(&self, next: HashMap<String, Limits>) -> usize {
        let next: HashMap<String, Limits> =
            next.into_iter().map(|(k, l)| (k, l.overriding())).collect();
        let previous = self.overrides.load_full();
        let mut changed = 0;
        for (key, limits) in &next {
            if previous.get(key) != Some(limits) {
                changed += 1;
                self.set_live(key, *limits);
            }
        }
        for key in previous.keys() {
            if !next.contains_key(key) {
                changed += 1;
                self.set_live(key, self.default);
            }
        }
        self.overrides.store(Arc::new(next));
        changed
    }

    /// Applies one change at once (admin API) without waiting for the next sync.
    pub fn apply_one(&self, key: &str, limits: Option<Limits>) {
        let mut next = (*self.overrides.load_full()).clone();
        match limits {
            Some(l) => next.insert(key.to_owned(), l),
            None => next.remove(key),
        };
        self.apply_overrides(next);
    }

    fn set_live(&self, key: &str, limits: Limits) {
        if let Some(bucket) = self.buckets.get(&self.hash(key)) {
            bucket.set_limits(limits);
        }
    }

    /// Drives refill and eviction until the returned task is aborted.
    pub fn spawn_ticker(
        self: &Arc<Self>,
        refill_interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let limiter = Arc::clone(self);
        // Eviction (which also settles every bucket) about once a second.
        let evict_every =
            (Duration::from_secs(1).as_micros() / refill_interval.as_micros().max(1)).max(1) as u64;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(refill_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            ticker.tick().await;
            let mut ticks = 0u64;
            loop {
                ticker.tick().await;
                limiter.tick();
                ticks += 1;
                if ticks.is_multiple_of(evict_every) {
                    let evicted = limiter.evict_idle();
                    if evicted > 0 {
                        tracing::debug!(
                            evicted,
                            tracked = limiter.tracked(),
                            "evicted idle clients"
                        );
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(capacity: i64, rate: f64, max: usize) -> Limiter {
        Limiter::new(
            Limits::new(capacity, rate).unwrap(),
            Duration::from_millis(100),
            max,
        )
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let l = limiter(2, 1.0, 100);
        assert!(l.check("a").allowed);
        assert!(l.check("a").allowed);
        assert!(!l.check("a").allowed);
        assert!(l.check("b").allowed);
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn denial_reports_retry_after_and_policy() {
        let l = limiter(1, 0.5, 100);
        let first = l.check("k");
        assert!(first.allowed);
        assert_eq!(first.remaining, 0);
        let denied = l.check("k");
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, 2);
        assert_eq!(denied.reset, 2);
    }

    #[test]
    fn idle_full_buckets_are_evicted() {
        let l = limiter(1, 10.0, 100);
        l.check("a");
        l.check("b");
        assert_eq!(l.evict_idle(), 0);
        l.tick();
        assert_eq!(l.evict_idle(), 2);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn new_clients_are_refused_at_the_cap() {
        let l = limiter(5, 1.0, 2);
        assert!(l.check("a").allowed);
        assert!(l.check("b").allowed);
        let third = l.check("c");
        assert!(!third.allowed && third.overflow);
        assert!(l.check("a").allowed, "tracked clients keep working");
    }

    #[test]
    fn overrides_apply_to_new_and_live_buckets() {
        let l = limiter(1, 1.0, 100);
        assert!(l.check("live").allowed);
        assert!(!l.check("live").allowed);
        let mut overrides = HashMap::new();
        overrides.insert("live".to_owned(), Limits::new(10, 10.0).unwrap());
        overrides.insert("fresh".to_owned(), Limits::new(3, 1.0).unwrap());
        assert_eq!(l.apply_overrides(overrides), 2);
        l.tick();
        let d = l.check("live");
        assert!(d.allowed, "raised override applies to the live bucket");
        assert!(d.limits.is_override);
        assert_eq!((0..5).filter(|_| l.check("fresh").allowed).count(), 3);
        l.apply_overrides(HashMap::new());
        assert_eq!(l.check("fresh").limits, l.default_limits());
    }
}
