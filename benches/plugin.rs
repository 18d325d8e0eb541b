//! Cost of the plugin calls on the request path, against the built-in
//! behaviour measured in the same run: client key + backend choice for a
//! request with 10 headers and 8 backends.
//!
//! Built-in: IP key + round-robin. Plugins: the `api-key` example computes
//! the key, the `sticky` example chooses the backend (rendezvous hashing).
//! The example plugins are built from source first.

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::balancer::{Backend, Ctx, Tried, build};
use gateway::config::{Algorithm, PluginsConfig};
use gateway::limiter::ClientKey;
use gateway::plugin::{
    KeyRole, Outcomes, Plugin, RequestView, Sandbox, SelectRole, Shared, engine,
};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn build_plugins() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the example plugins failed");
    root.join("plugins/target/wasm32-wasip2/release")
}

fn request_head() -> http::request::Parts {
    let mut builder = http::Request::get("/api/v1/items?page=2");
    for (k, v) in [
        ("host", "shop.example"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("x-api-key", "key-1234567890"),
        ("x-user", "user-42"),
        ("x-request-id", "8f14e45f-ceea-467f-a0e6-7a6c1d1b5f2e"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-forwarded-for", "203.0.113.7"),
    ] {
        builder = builder.header(k, v);
    }
    builder.body(()).expect("request").into_parts().0
}

fn backends() -> Vec<Arc<Backend>> {
    (0..8)
        .map(|i| {
            let url = format!("http://10.0.0.{i}:8080").parse().expect("url");
            Arc::new(Backend::new(i, url, 1))
        })
        .collect()
}

fn per_request(c: &mut Criterion) {
    let dir = build_plugins();
    let set = backends();
    let client: IpAddr = "203.0.113.7".parse().expect("ip");
    let engine = engine().expect("engine");
    let sandbox = Sandbox {
        cache_dir: None,
        ..Sandbox::from_config(&PluginsConfig::default())
    };
    let shared = Arc::new(Shared::new(
        Default::default(),
        set.iter().map(|b| b.name.clone()).collect(),
    ));
    let key_plugin = Plugin::<KeyRole>::load(
        &engine,
        &dir.join("api_key.wasm"),
        sandbox.clone(),
        Arc::clone(&shared),
        Outcomes::default(),
    )
    .expect("api_key plugin");
    let select_plugin = Arc::new(
        Plugin::<SelectRole>::load(
            &engine,
            &dir.join("sticky.wasm"),
            sandbox,
            shared,
            Outcomes::default(),
        )
        .expect("sticky plugin"),
    );
    let builtin = build(Algorithm::RoundRobin, &set, None);
    let plugged = build(Algorithm::RoundRobin, &set, Some(select_plugin));
    let tried = Tried::default();

    let mut group = c.benchmark_group("request_decisions");
    let mut head = request_head();
    group.bench_function("builtin_key_and_round_robin", |b| {
        b.iter(|| {
            let key = ClientKey::address(client, 64);
            let mut ctx = Ctx {
                head: &mut head,
                client,
                plugin_failed: false,
            };
            black_box((key, builtin.pick(&set, &tried, &mut ctx)))
        })
    });
    group.bench_function("plugin_key_and_plugin_select", |b| {
        b.iter(|| {
            let mut view = Some(RequestView {
                method: head.method.clone(),
                uri: head.uri.clone(),
                headers: std::mem::take(&mut head.headers),
                client,
            });
            let key = key_plugin
                .client_key(&mut view)
                .expect("key")
                .map(|k| k.len());
            if let Some(view) = view {
                head.headers = view.headers;
            }
            let mut ctx = Ctx {
                head: &mut head,
                client,
                plugin_failed: false,
            };
            let chosen = plugged.pick(&set, &tried, &mut ctx);
            assert!(!ctx.plugin_failed);
            black_box((key, chosen))
        })
    });
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
