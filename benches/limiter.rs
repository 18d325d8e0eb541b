//! Cost of one rate-limit decision: `gateway::limiter::Limiter::check` next to
//! governor's keyed limiter (`RateLimiter::dashmap`, GCRA over a `DashMap`), in
//! the same run so both see the same machine, plus the cost of the ticker's
//! periodic work.
//!
//! Why: `check` runs on every proxied request, so its cost (and how it holds up
//! when two threads share the limiter) is the limiter's whole overhead on the
//! request path; governor is the usual off-the-shelf choice, so it is the
//! yardstick. The ticker pass (`evict_idle`) touches every bucket once a
//! second, so its cost at 100k and 1M tracked clients bounds how many clients
//! one process can track without the ticker falling behind.
//!
//! Groups:
//! - `check_hot_key`: every request from one client (one shared bucket, the
//!   worst case for contention on two threads).
//! - `check_100k_keys`: 100 000 distinct clients, pre-generated and cycled
//!   through; the second thread starts half-way round so the threads do not
//!   walk the same keys in lock step.
//!
//! Each is run on 1 thread and on 2 threads (two std threads, each doing half
//! the iterations against one shared limiter; the time is wall time, so the
//! figure is the inverse of the combined throughput). Both limiters are
//! created with limits so large that every request is allowed (the allow path
//! is what is compared) and are pre-populated with every key first, so the
//! numbers are the steady state, not bucket creation. Every batch checks that
//! all of its requests were in fact allowed.
//!
//! - `ticker`: `evict_idle` over 100k and 1M buckets that are not full (one
//!   token taken from each after creation, and a refill rate too low to top
//!   them up during the run, so none is evicted and the pass stays the same
//!   size), with one `tick` before each pass so every bucket has refill to
//!   settle, as in production; and `tick` on its own.
//!
//! Run: `cargo bench -p gateway --bench limiter`.

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use gateway::limiter::{ClientKey, Limiter, Limits};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

/// Bucket size for both limiters: the largest ours accepts.
const CAPACITY: u32 = 1_000_000_000;
/// Distinct clients in the many-keys case.
const MANY_KEYS: usize = 100_000;

/// Client addresses (IPv4), all distinct: ours keys a client by its
/// address (`ClientKey::address`), governor by the `IpAddr`.
fn keys(count: usize) -> Vec<IpAddr> {
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i as u32)))
        .collect()
}

/// Ours with a bucket of `CAPACITY` tokens and a ticker that is never run on
/// its own: `OurSide::prepare` calls `tick` (1000 s = a whole bucket of refill)
/// between batches before the buckets could run dry.
fn ours() -> Limiter {
    let limits = Limits::new(i64::from(CAPACITY), 1_000_000.0).expect("valid limits");
    Limiter::new(limits, Duration::from_secs(1000), usize::MAX)
}

/// Governor with the same burst and one token a nanosecond, far faster than
/// any thread can spend them, so every check is allowed.
fn governor() -> DefaultKeyedRateLimiter<IpAddr> {
    let n = NonZeroU32::new(CAPACITY).expect("non-zero");
    RateLimiter::dashmap(Quota::per_second(n).allow_burst(n))
}

/// Tracks how many tokens the benchmark may have taken from one bucket of
/// ours since the last refill, and refills (outside the timed region) before
/// a batch could run it dry.
struct OurSide {
    limiter: Limiter,
    spent: u64,
}

impl OurSide {
    fn new(keys: &[IpAddr]) -> Self {
        let limiter = ours();
        for key in keys {
            assert!(limiter.check(&ClientKey::address(*key, 64)).allowed);
        }
        OurSide {
            limiter,
            spent: keys.len() as u64,
        }
    }

    /// Called before a batch of `iters` checks; `iters` bounds what any one
    /// bucket loses in it.
    fn prepare(&mut self, iters: u64) {
        if self.spent + iters > u64::from(CAPACITY) / 2 {
            self.limiter.tick();
            self.spent = 0;
        }
        self.spent += iters;
    }
}

/// `iters` checks cycling through `keys` from `start`; how many were allowed.
fn drive(
    check: &(impl Fn(&IpAddr) -> bool + Sync),
    keys: &[IpAddr],
    start: usize,
    iters: u64,
) -> u64 {
    let mut index = start;
    let mut allowed = 0;
    for _ in 0..iters {
        allowed += u64::from(check(black_box(&keys[index])));
        index += 1;
        if index == keys.len() {
            index = 0;
        }
    }
    allowed
}

fn one_thread(check: &(impl Fn(&IpAddr) -> bool + Sync), keys: &[IpAddr], iters: u64) -> Duration {
    let start = Instant::now();
    let allowed = drive(check, keys, 0, iters);
    let elapsed = start.elapsed();
    assert_eq!(allowed, iters, "every request must be allowed");
    elapsed
}

/// Wall time for two threads doing `iters` checks between them on one shared
/// limiter. The helper thread is spawned before the clock starts and both
/// start together at a barrier.
fn two_threads(check: &(impl Fn(&IpAddr) -> bool + Sync), keys: &[IpAddr], iters: u64) -> Duration {
    let theirs = iters / 2;
    let barrier = Barrier::new(2);
    thread::scope(|scope| {
        let helper = scope.spawn(|| {
            barrier.wait();
            drive(check, keys, keys.len() / 2, theirs)
        });
        barrier.wait();
        let start = Instant::now();
        let mine = drive(check, keys, 0, iters - theirs);
        let helped = helper.join().expect("helper thread panicked");
        let elapsed = start.elapsed();
        assert_eq!(mine + helped, iters, "every request must be allowed");
        elapsed
    })
}

/// Ours and governor on 1 and 2 threads, interleaved, over the same keys.
fn compare(group: &mut BenchmarkGroup<'_, WallTime>, keys: &[IpAddr]) {
    group.throughput(Throughput::Elements(1));
    let mut side = OurSide::new(keys);
    let theirs = governor();
    for key in keys {
        assert!(theirs.check_key(key).is_ok());
    }

    group.bench_function("ours/1_thread", |b| {
        b.iter_custom(|iters| {
            side.prepare(iters);
            let limiter = &side.limiter;
            one_thread(
                &|key: &IpAddr| limiter.check(&ClientKey::address(*key, 64)).allowed,
                keys,
                iters,
            )
        })
    });
    group.bench_function("governor/1_thread", |b| {
        b.iter_custom(|iters| {
            one_thread(&|key: &IpAddr| theirs.check_key(key).is_ok(), keys, iters)
        })
    });
    group.bench_function("ours/2_threads", |b| {
        b.iter_custom(|iters| {
            side.prepare(iters);
            let limiter = &side.limiter;
            two_threads(
                &|key: &IpAddr| limiter.check(&ClientKey::address(*key, 64)).allowed,
                keys,
                iters,
            )
        })
    });
    group.bench_function("governor/2_threads", |b| {
        b.iter_custom(|iters| {
            two_threads(&|key: &IpAddr| theirs.check_key(key).is_ok(), keys, iters)
        })
    });
}

fn check_hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_hot_key");
    compare(&mut group, &keys(1));
    group.finish();
}

fn check_many_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_100k_keys");
    compare(&mut group, &keys(MANY_KEYS));
    group.finish();
}

/// A limiter tracking `count` clients, none of them full: capacity 10, one
/// token taken from each, refilled at the lowest rate ours accepts
/// (0.001 token/s) on a 1 ms tick, so one token takes 1 000 000 ticks to come
/// back, far more than the passes a run makes.
fn partly_spent(count: usize) -> Limiter {
    let limits = Limits::new(10, 0.001).expect("valid limits");
    let limiter = Limiter::new(limits, Duration::from_millis(1), usize::MAX);
    for key in keys(count) {
        assert!(limiter.check(&ClientKey::address(key, 64)).allowed);
    }
    assert_eq!(limiter.tracked(), count);
    limiter
}

fn ticker(c: &mut Criterion) {
    let mut group = c.benchmark_group("ticker");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    for (name, count) in [("evict_idle/100k", 100_000), ("evict_idle/1M", 1_000_000)] {
        let limiter = partly_spent(count);
        group.bench_function(name, |b| {
            b.iter(|| {
                limiter.tick();
                let evicted = limiter.evict_idle();
                assert_eq!(evicted, 0, "no bucket may fill up during the run");
            })
        });
        assert_eq!(limiter.tracked(), count);
    }
    group.finish();

    // Its own limiter: hundreds of millions of ticks would refill the ones above.
    let limiter = partly_spent(1);
    c.bench_function("ticker/tick", |b| b.iter(|| black_box(&limiter).tick()));
}

criterion_group!(benches, check_hot_key, check_many_keys, ticker);
criterion_main!(benches);
