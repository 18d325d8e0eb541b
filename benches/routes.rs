//! Cost of one route lookup (`RouteTable::lookup`) with 1, 10 and 100
//! routes, for a request that takes the last route written.
//!
//! Why: a lookup runs on every request, so adding routes must not make
//! every request slower. The table is shaped like a real gateway's: routes
//! spread over ten exact hosts, a wildcard host and host-free routes, with
//! path prefixes two segments deep and some method and header conditions.
//! The request (`GET api-9.example.com/v9/items/42`) matches the last
//! route, so a linear scan would check every route first; the compiled
//! table walks one host group's path tree. The target is under 100 ns.
//!
//! Run: `cargo bench -p gateway --bench routes`.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::routes::{Host, Match, PathRule, Request, RouteTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::hint::black_box;

/// `n` routes; the last one matches the benchmark's request.
fn routes(n: usize) -> Vec<Match> {
    let mut routes: Vec<Match> = (0..n.saturating_sub(1))
        .map(|i| {
            let host = match i % 4 {
                0 => None,
                1 => Host::parse("*.internal.example.com"),
                _ => Host::parse(&format!("api-{}.example.com", i % 10)),
            };
            let mut m = Match {
                host,
                path: Some(PathRule::prefix(&format!("/v{}/r{i}", i % 10))),
                ..Match::default()
            };
            if i % 3 == 0 {
                m.methods = vec![Method::POST];
            }
            if i % 5 == 0 {
                m.headers = vec![(
                    HeaderName::from_static("x-canary"),
                    HeaderValue::from_static("1"),
                )];
            }
            m
        })
        .collect();
    routes.push(Match {
        host: Host::parse("api-9.example.com"),
        path: Some(PathRule::prefix("/v9/items")),
        methods: vec![Method::GET],
        headers: Vec::new(),
    });
    routes
}

fn lookup(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let method = Method::GET;
    let mut group = c.benchmark_group("route_lookup");
    for n in [1, 10, 100] {
        let list = routes(n);
        let table = RouteTable::new(&list);
        let request = Request {
            host: Some(b"api-9.example.com:8080"),
            path: "/v9/items/42",
            method: &method,
            headers: &headers,
        };
        assert_eq!(table.lookup(&request), Some(n - 1));
        group.bench_function(format!("{n}_routes"), |b| {
            b.iter(|| black_box(&table).lookup(black_box(&request)))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
