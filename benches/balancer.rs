//! Cost of one backend pick (`BackendSelection::pick`) for each balancing
//! algorithm over 8 healthy backends, none tried yet: round_robin,
//! least_requests and random with equal weights, and round_robin and random
//! with unequal weights (1..=8).
//!
//! Why: a pick runs on every proxied request (and again on every retry), so
//! it should cost a few nanoseconds whatever the algorithm; this shows what
//! each one costs and what weights add (a longer precomputed cycle for
//! round_robin, a binary search for random). Single-threaded: round_robin
//! and least_requests share one atomic counter per balancer, so these are the
//! uncontended figures. The request context passed to `pick` is a bare
//! `GET /` from 127.0.0.1, built once; the built-in algorithms ignore it.
//!
//! Run: `cargo bench -p gateway --bench balancer`.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::balancer::{Backend, Ctx, Tried, build};
use gateway::config::Algorithm;
use std::hint::black_box;
use std::sync::Arc;

const BACKENDS: usize = 8;

fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
    weights
        .iter()
        .enumerate()
        .map(|(index, &weight)| {
            let url = format!("http://127.0.0.1:{}", 9000 + index)
                .parse()
                .expect("valid url");
            Arc::new(Backend::new(index, url, weight))
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let equal = backends(&[1; BACKENDS]);
    let weighted = backends(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let cases = [
        ("round_robin", Algorithm::RoundRobin, &equal),
        ("least_requests", Algorithm::LeastRequests, &equal),
        ("random", Algorithm::Random, &equal),
        ("round_robin_weighted", Algorithm::RoundRobin, &weighted),
        ("random_weighted", Algorithm::Random, &weighted),
    ];
    let tried = Tried::default();
    let (mut head, ()) = http::Request::new(()).into_parts();
    let mut ctx = Ctx {
        head: &mut head,
        client: std::net::IpAddr::from([127, 0, 0, 1]),
        tls: None,
        plugin_failed: false,
    };
    let mut group = c.benchmark_group("balancer_pick");
    for (name, algorithm, set) in cases {
        let selection = build(algorithm, set, None);
        group.bench_function(name, |b| {
            b.iter(|| selection.pick(black_box(set), black_box(&tried), black_box(&mut ctx)))
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
