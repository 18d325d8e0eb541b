//! Per-client token buckets: a sharded map from client key to a lock-free
//! bucket, a ticker that drives refill and evicts idle clients, and the
//! per-client overrides loaded from the database.

mod batch;
mod bucket;
mod headers;
mod key;
mod link;
pub mod shared;

pub use bucket::{Bucket, Limits, MAX_CAPACITY, MAX_REFILL, MIN_REFILL};
pub use headers::{RateLimitFields, apply_headers, rejection};
pub use key::{ClientKey, KeyKind, KeySource, MAX_KEY_BYTES, UnknownKeys, canonical_client_id};
pub use link::Target as SharedTarget;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
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
    /// Limits for clients without an override ([`Limits`] packed; a reload may change them).
    default: AtomicU64,
    /// Per-client overrides from the database by key hash, consulted when a
    /// bucket is created and to tell known header and plugin keys from invented ones.
    overrides: ArcSwap<HashMap<u64, Limits, PreHashed>>,
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
            default: AtomicU64::new(default.pack()),
            overrides: ArcSwap::from_pointee(HashMap::default()),
            tracked: AtomicUsize::new(0),
            max_clients,
        }
    }

    #[inline]
    fn hash(&self, key: &ClientKey) -> u64 {
        let mut state = self.hasher.build_hasher();
        key.hash_into(&mut state);
        state.finish()
    }

    /// The bucket a request is charged to: a header or plugin key it
    /// `claimed` when that key has a per-client row (or `policy` is `own`),
    /// else its `address`; `None` when `policy` is `reject` and the claimed
    /// key is unknown. Over-long keys are never known and never get a bucket.
    pub fn charge<'k>(
        &self,
        claimed: Option<ClientKey<'k>>,
        address: ClientKey<'k>,
        policy: UnknownKeys,
    ) -> Option<ClientKey<'k>> {
        let Some(claimed) = claimed else {
            return Some(address);
        };
        if claimed.is_oversized() {
            return (policy != UnknownKeys::Reject).then_some(address);
        }
        // A certificate's identity was vouched for by the client CA: it
        // is never invented, so it always has a bucket of its own.
        if policy == UnknownKeys::Own
            || matches!(claimed, ClientKey::Tls(_))
            || self.is_known(&claimed)
        {
            return Some(claimed);
        }
        (policy == UnknownKeys::Ip).then_some(address)
    }

    /// True when `key` has a per-client override.
    pub fn is_known(&self, key: &ClientKey) -> bool {
        self.overrides.load().contains_key(&self.hash(key))
    }

    /// Takes a token for `key`, or says why not.
    pub fn check(&self, key: &ClientKey) -> Decision {
        self.check_cost(key, 1)
    }

    /// Takes `cost` tokens for `key`, or says why not.
    #[inline]
    pub fn check_cost(&self, key: &ClientKey, cost: u32) -> Decision {
        let hash = self.hash(key);
        if let Some(bucket) = self.buckets.get(&hash) {
            return self.decide(bucket.take_n(&self.tick, self.tick_micros, cost), cost);
        }
        if self.tracked.load(Ordering::Relaxed) >= self.max_clients {
            return Decision {
                allowed: false,
                remaining: 0,
                retry_after: 1,
                reset: 1,
                limits: self.default_limits(),
                overflow: true,
            };
        }
        let limits = self.limits_by_hash(hash);
        let bucket = self.buckets.entry(hash).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::Relaxed);
            Bucket::new(limits, self.tick.load(Ordering::Acquire))
        });
        self.decide(bucket.take_n(&self.tick, self.tick_micros, cost), cost)
    }

    fn decide(&self, taken: bucket::Taken, cost: u32) -> Decision {
        let limits = taken.limits;
        let full = u64::from(limits.capacity) * bucket::MILLI;
        let next = (u64::from(cost) * bucket::MILLI).saturating_sub(taken.remaining_milli);
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
        self.tick.fetch_add(1, Ordering::Release);
    }

    /// Drops buckets that are full again (idle clients) and settles the rest,
    /// so a bucket never falls more than one pass behind the clock. Returns
    /// how many were evicted.
    pub fn evict_idle(&self) -> usize {
        let mut evicted = 0;
        self.buckets.retain(|_, bucket| {
            let full = bucket.settle(&self.tick, self.tick_micros);
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
    pub fn limits_for(&self, key: &ClientKey) -> Limits {
        self.limits_by_hash(self.hash(key))
    }

    fn limits_by_hash(&self, hash: u64) -> Limits {
        self.overrides
            .load()
            .get(&hash)
            .copied()
            .unwrap_or_else(|| self.default_limits())
    }

    pub fn default_limits(&self) -> Limits {
        Limits::unpack(self.default.load(Ordering::Relaxed))
    }

    /// New limits for clients without an override (a reload changed
    /// `rate_limit.default`): new buckets get them, and live buckets on the
    /// old default take them at once (their tokens above a lowered capacity
    /// are dropped at the next touch).
    pub fn set_default(&self, limits: Limits) {
        let old = Limits::unpack(self.default.swap(limits.pack(), Ordering::Relaxed));
        if old == limits {
            return;
        }
        for bucket in self.buckets.iter() {
            if bucket.limits() == old {
                bucket.set_limits(limits);
            }
        }
    }

    /// Installs a new set of overrides, keyed by canonical client id
    /// (`ip:…`, `header:NAME:…`, `plugin:…`), and updates the live buckets
    /// whose limits changed (including those whose override was removed).
    /// Ids that do not parse are skipped.
    pub fn apply_overrides(&self, next: HashMap<String, Limits>) -> usize {
        let mut hashed = HashMap::<u64, Limits, PreHashed>::default();
        for (id, limits) in next {
            match ClientKey::parse(&id) {
                Ok(key) => {
                    hashed.insert(self.hash(&key), limits.overriding());
                }
                Err(reason) => tracing::warn!(client = %id, %reason, "ignoring per-client limit"),
            }
        }
        self.install(hashed)
    }

    fn install(&self, next: HashMap<u64, Limits, PreHashed>) -> usize {
        let previous = self.overrides.load_full();
        let mut changed = 0;
        for (hash, limits) in &next {
            if previous.get(hash) != Some(limits) {
                changed += 1;
                self.set_live(*hash, *limits);
            }
        }
        for hash in previous.keys() {
            if !next.contains_key(hash) {
                changed += 1;
                self.set_live(*hash, self.default_limits());
            }
        }
        self.overrides.store(Arc::new(next));
        changed
    }

    /// Applies one change at once (admin API) without waiting for the next
    /// sync; `id` is a canonical client id.
    pub fn apply_one(&self, id: &str, limits: Option<Limits>) -> Result<(), String> {
        let hash = self.hash(&ClientKey::parse(id)?);
        let mut next = (*self.overrides.load_full()).clone();
        match limits {
            Some(l) => next.insert(hash, l.overriding()),
            None => next.remove(&hash),
        };
        self.install(next);
        Ok(())
    }

    fn set_live(&self, hash: u64, limits: Limits) {
        if let Some(bucket) = self.buckets.get(&hash) {
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

    fn k(name: &str) -> ClientKey<'_> {
        ClientKey::Plugin(name.as_bytes())
    }

    fn limiter(capacity: i64, rate: f64, max: usize) -> Limiter {
        Limiter::new(
            Limits::new(capacity, rate).unwrap(),
            Duration::from_millis(100),
            max,
        )
    }

    #[test]
    fn a_new_default_applies_to_default_buckets_and_spares_overrides() {
        let l = limiter(2, 1.0, 100);
        l.apply_one("plugin:vip", Some(Limits::new(50, 1.0).unwrap()))
            .unwrap();
        assert!(l.check(&k("a")).allowed);
        assert!(l.check(&k("a")).allowed);
        assert!(!l.check(&k("a")).allowed, "a is empty");
        assert!(l.check(&k("vip")).allowed);
        l.set_default(Limits::new(5, 1.0).unwrap());
        let a = l.check(&k("a"));
        assert!(!a.allowed, "a keeps its 0 tokens");
        assert_eq!(a.limits.capacity, 5, "but has the new capacity");
        let fresh: Vec<bool> = (0..6).map(|_| l.check(&k("b")).allowed).collect();
        assert_eq!(fresh, [true, true, true, true, true, false]);
        assert_eq!(l.check(&k("vip")).limits.capacity, 50);
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let l = limiter(2, 1.0, 100);
        assert!(l.check(&k("a")).allowed);
        assert!(l.check(&k("a")).allowed);
        assert!(!l.check(&k("a")).allowed);
        assert!(l.check(&k("b")).allowed);
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn denial_reports_retry_after_and_policy() {
        let l = limiter(1, 0.5, 100);
        let first = l.check(&k("k"));
        assert!(first.allowed);
        assert_eq!(first.remaining, 0);
        let denied = l.check(&k("k"));
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, 2);
        assert_eq!(denied.reset, 2);
    }

    #[test]
    fn idle_full_buckets_are_evicted() {
        let l = limiter(1, 10.0, 100);
        l.check(&k("a"));
        l.check(&k("b"));
        assert_eq!(l.evict_idle(), 0);
        l.tick();
        assert_eq!(l.evict_idle(), 2);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn new_clients_are_refused_at_the_cap() {
        let l = limiter(5, 1.0, 2);
        assert!(l.check(&k("a")).allowed);
        assert!(l.check(&k("b")).allowed);
        let third = l.check(&k("c"));
        assert!(!third.allowed && third.overflow);
        assert!(l.check(&k("a")).allowed, "tracked clients keep working");
    }

    #[test]
    fn overrides_apply_to_new_and_live_buckets() {
        let l = limiter(1, 1.0, 100);
        assert!(l.check(&k("live")).allowed);
        assert!(!l.check(&k("live")).allowed);
        let mut overrides = HashMap::new();
        overrides.insert("plugin:live".to_owned(), Limits::new(10, 10.0).unwrap());
        overrides.insert("plugin:fresh".to_owned(), Limits::new(3, 1.0).unwrap());
        assert_eq!(l.apply_overrides(overrides), 2);
        l.tick();
        let d = l.check(&k("live"));
        assert!(d.allowed, "raised override applies to the live bucket");
        assert!(d.limits.is_override);
        assert_eq!((0..5).filter(|_| l.check(&k("fresh")).allowed).count(), 3);
        l.apply_overrides(HashMap::new());
        assert_eq!(l.check(&k("fresh")).limits, l.default_limits());
    }

    #[test]
    fn unknown_keys_are_charged_as_the_policy_says() {
        let l = limiter(3, 0.01, 100);
        let mut overrides = HashMap::new();
        overrides.insert(
            "header:x-api-key:known".to_owned(),
            Limits::new(5, 1.0).unwrap(),
        );
        l.apply_overrides(overrides);
        let address = ClientKey::address("127.0.0.4".parse().unwrap(), 64);
        let known = ClientKey::Header("x-api-key", b"known");
        let invented = ClientKey::Header("x-api-key", b"k0");
        let long = vec![b'k'; MAX_KEY_BYTES + 1];
        let oversized = ClientKey::Header("x-api-key", &long);
        for policy in [UnknownKeys::Ip, UnknownKeys::Own, UnknownKeys::Reject] {
            assert_eq!(l.charge(None, address, policy), Some(address));
            assert_eq!(l.charge(Some(known), address, policy), Some(known));
        }
        assert_eq!(
            l.charge(Some(invented), address, UnknownKeys::Ip),
            Some(address)
        );
        assert_eq!(
            l.charge(Some(invented), address, UnknownKeys::Own),
            Some(invented)
        );
        assert_eq!(l.charge(Some(invented), address, UnknownKeys::Reject), None);
        assert_eq!(
            l.charge(Some(oversized), address, UnknownKeys::Own),
            Some(address)
        );
        assert_eq!(
            l.charge(Some(oversized), address, UnknownKeys::Reject),
            None
        );
    }

    #[test]
    fn an_override_for_one_source_is_not_claimed_by_another() {
        let l = limiter(1, 0.01, 100);
        let mut overrides = HashMap::new();
        overrides.insert("ip:127.0.0.5".to_owned(), Limits::new(50, 1.0).unwrap());
        l.apply_overrides(overrides);
        let spoof = ClientKey::Header("x-api-key", b"127.0.0.5");
        assert!(!l.is_known(&spoof));
        assert!(!l.is_known(&ClientKey::Plugin(b"127.0.0.5")));
        assert!(l.is_known(&ClientKey::address("127.0.0.5".parse().unwrap(), 64)));
        assert_eq!(l.check(&spoof).limits, l.default_limits());
    }

    /// Several threads take from one bucket while the clock ticks as fast as
    /// it can and eviction passes run: whatever the interleaving, no more
    /// than `capacity + refill × elapsed` (+1 for the tick in progress) is
    /// ever granted.
    #[test]
    fn concurrent_takers_on_a_moving_clock_never_exceed_the_budget() {
        use std::sync::atomic::AtomicBool;
        // One token per 1 ms tick; the ticker runs far faster than real time.
        let (capacity, per_tick) = (50u64, 1u64);
        for run in 0..5 {
            let l = Arc::new(Limiter::new(
                Limits::new(capacity as i64, 1000.0).unwrap(),
                Duration::from_millis(1),
                100,
            ));
            let stop = Arc::new(AtomicBool::new(false));
            let ticker = {
                let (l, stop) = (Arc::clone(&l), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut ticks = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..50 {
                            std::hint::spin_loop();
                        }
                        l.tick();
                        ticks += 1;
                        if ticks.is_multiple_of(64) {
                            l.evict_idle();
                        }
                    }
                })
            };
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let (l, stop) = (Arc::clone(&l), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        let mut allowed = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            allowed += u64::from(l.check(&k("shared")).allowed);
                        }
                        allowed
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            let allowed: u64 = takers.into_iter().map(|t| t.join().unwrap()).sum();
            ticker.join().unwrap();
            let elapsed = l.tick.load(Ordering::Relaxed);
            let bound = capacity + per_tick * elapsed + 1;
            assert!(
                allowed <= bound,
                "run {run}: {allowed} allowed over {elapsed} ticks, bound {bound}"
            );
            assert!(allowed >= capacity, "run {run}: only {allowed} allowed");
        }
    }
}
