//! Cost of a shared (Redis) rate-limit decision, against the local bucket
//! measured in the same run.
//!
//! Why: with `rate_limit.shared` every request waits for Redis. The
//! decisions of a worker's concurrent requests go out together, as one call
//! of a script that takes them all, so under load the cost per decision is
//! far below one round trip. This shows both sides:
//!
//! - `one_at_a_time`: a decision only starts when the previous one is
//!   answered — one full round trip each (an idle gateway).
//! - `concurrent/N`: N requests in flight on one single-threaded runtime, as
//!   on a busy worker (64 = the connections `benches/proxy.sh` opens); the
//!   time is per decision.
//! - `local`: the same decision from the in-process bucket.
//!
//! After each Redis case it prints how many decisions shared a script call
//! (the worker batches the decisions its concurrent requests ask for).
//!
//! 1,000 distinct clients are cycled through with buckets too large to run
//! dry, so every decision is allowed (checked) and the path is the steady
//! state. Needs a Redis server: `GATEWAY_TEST_REDIS`, default
//! `redis://127.0.0.1:6379` (the keys go under `gateway:bench-…:`).
//!
//! Run: `cargo bench -p gateway --bench redis`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway::limiter::shared::{OnSharedFailure, SharedLimiter};
use gateway::limiter::{ClientKey, Limiter, Limits};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: u32 = 1_000;

fn limits() -> Limits {
    Limits::new(1_000_000_000, 1_000_000.0).expect("valid limits")
}

fn client(i: u64) -> ClientKey<'static> {
    let n = u32::try_from(i % u64::from(CLIENTS)).expect("small");
    ClientKey::address(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n)), 64)
}

/// Decisions asked for, to report how many shared each script call.
static DECISIONS: AtomicU64 = AtomicU64::new(0);

/// `count` decisions cycling through the clients from `start`; panics on a
/// refusal or an unanswered call, which would make the figure meaningless.
async fn decide(redis: &SharedLimiter, start: u64, count: u64) {
    DECISIONS.fetch_add(count, Ordering::Relaxed);
    for i in start..start + count {
        let decision = redis
            .check(&client(i), limits(), 1)
            .await
            .unwrap_or_else(|e| panic!("Redis did not answer: {e}"));
        assert!(decision.allowed, "bucket ran dry");
    }
}

fn shared(c: &mut Criterion) {
    let url =
        std::env::var("GATEWAY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = format!("bench-{}", std::process::id());
    let redis = Arc::new(
        SharedLimiter::new(&url, &prefix, Duration::from_secs(2), OnSharedFailure::Deny)
            .expect("Redis URL"),
    );
    // Loads the script and opens the connection outside the timed region.
    runtime.block_on(decide(&redis, 0, u64::from(CLIENTS)));

    let calls = redis.calls();
    let mark = || (DECISIONS.load(Ordering::Relaxed), calls.get());
    let report = |name: &str, (decisions, sent): (u64, u64)| {
        let (now_decisions, now_sent) = mark();
        let (decisions, sent) = (now_decisions - decisions, now_sent - sent);
        eprintln!(
            "{name}: {decisions} decisions in {sent} script calls ({:.1} per call)",
            decisions as f64 / sent.max(1) as f64
        );
    };

    let mut group = c.benchmark_group("shared_decision");
    group.throughput(Throughput::Elements(1));
    let before = mark();
    group.bench_function("one_at_a_time", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            runtime.block_on(decide(&redis, 0, iters));
            started.elapsed()
        })
    });
    report("one_at_a_time", before);
    for in_flight in [8u64, 64] {
        let before = mark();
        group.bench_function(format!("concurrent/{in_flight}"), |b| {
            b.iter_custom(|iters| {
                let each = iters.div_ceil(in_flight);
                let started = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..in_flight)
                        .map(|task| {
                            let redis = Arc::clone(&redis);
                            tokio::spawn(async move { decide(&redis, task * each, each).await })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("decision task");
                    }
                });
                // Per decision asked for, rounding up each task's share.
                started
                    .elapsed()
                    .mul_f64(iters as f64 / (each * in_flight) as f64)
            })
        });
        report(&format!("concurrent/{in_flight}"), before);
    }
    let local = Limiter::new(limits(), Duration::from_secs(1000), usize::MAX);
    let mut i = 0u64;
    group.bench_function("local", |b| {
        b.iter(|| {
            i += 1;
            black_box(local.check(&client(i)).allowed)
        })
    });
    group.finish();
}

criterion_group!(benches, shared);
criterion_main!(benches);
