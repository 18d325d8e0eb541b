//! Cost of the plugin calls on the request path, against the built-in
//! behaviour measured in the same run: client key + backend choice for a
//! request with 10 headers and 8 backends.
//!
//! Built-in: IP key + round-robin. Plugins: the `api-key` example computes
//! the key, the `sticky` example chooses the backend (rendezvous hashing).
//! The example plugins are built from source first.
//!
//! `per_language`: the same key (api-key) and choice (canary) in each
//! language the examples come in — Rust, Python (componentize-py) and
//! JavaScript (componentize-js) — so users can choose. Needs the toolchains
//! (`pip install -r plugins/python/requirements.txt`, `npm ci --prefix
//! plugins/javascript`).

use criterion::{Criterion, criterion_group, criterion_main};
use gateway::balancer::{Backend, Ctx, Tried, backend_states, build};
use gateway::config::{Algorithm, PluginsConfig};
use gateway::limiter::ClientKey;
use gateway::plugin::{
    KeyRole, Outcomes, Plugin, RequestView, Sandbox, SelectRole, Shared, engine,
};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// Builds `out` by running `program args… out` in `dir` (under the repository).
fn build_foreign(dir: &str, program: &str, args: &[&str], out: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(out);
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    let status = std::process::Command::new(program)
        .args(args)
        .arg(&path)
        .current_dir(root.join(dir))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} failed");
    path
}

/// Runs `call` with the request lent as a plugin's view (the headers moved,
/// not copied, as the proxy does), then takes the headers back.
fn lent<T>(
    head: &mut http::request::Parts,
    client: IpAddr,
    call: impl FnOnce(&mut Option<RequestView>) -> T,
) -> T {
    let mut view = Some(RequestView {
        method: head.method.clone(),
        uri: head.uri.clone(),
        headers: std::mem::take(&mut head.headers),
        client,
        tls: None,
    });
    let answer = call(&mut view);
    if let Some(view) = view {
        head.headers = view.headers;
    }
    answer
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
                tls: None,
                plugin_failed: false,
            };
            black_box((key, builtin.pick(&set, &tried, &mut ctx)))
        })
    });
    group.bench_function("plugin_key_and_plugin_select", |b| {
        b.iter(|| {
            let key = lent(&mut head, client, |view| {
                key_plugin.client_key(view).expect("key").map(|k| k.len())
            });
            let mut ctx = Ctx {
                head: &mut head,
                client,
                tls: None,
                plugin_failed: false,
            };
            let chosen = plugged.pick(&set, &tried, &mut ctx);
            assert!(!ctx.plugin_failed);
            black_box((key, chosen))
        })
    });
    group.finish();
}

/// One plugin instance pool for `wasm` in `role`, under the default limits
/// but `timeout`.
fn load<R: gateway::plugin::Role>(
    wasm: &Path,
    config: &[(&str, &str)],
    timeout: Duration,
) -> Plugin<R> {
    let set = backends();
    let shared = Arc::new(Shared::new(
        config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        set.iter().map(|b| b.name.clone()).collect(),
    ));
    let sandbox = Sandbox::from_config(&PluginsConfig {
        timeout,
        ..PluginsConfig::default()
    });
    Plugin::<R>::load(
        &engine().expect("engine"),
        wasm,
        sandbox,
        shared,
        Outcomes::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn python_api_key() -> PathBuf {
    build_foreign(
        "plugins/python/api-key",
        "componentize-py",
        &[
            "-d",
            "../../../wit",
            "-w",
            "key-plugin",
            "componentize",
            "app",
            "-o",
        ],
        "plugins/target/python/api-key.wasm",
    )
}

fn javascript_canary() -> PathBuf {
    build_foreign(
        "plugins/javascript",
        "node_modules/.bin/componentize-js",
        &[
            "canary/canary.js",
            "--wit",
            "../../wit",
            "--world-name",
            "select-plugin",
            "-o",
        ],
        "plugins/target/javascript/canary.wasm",
    )
}

/// A benchmark's name, how to build its component, and its call budget.
type Candidate<'a> = (&'a str, Box<dyn Fn() -> PathBuf + 'a>, Duration);

/// Each plugin is built and loaded on its benchmark's first run, so a run
/// filtered to some benchmarks (`-- per_language/key/rust`, under callgrind
/// say) does not build or start the others.
fn per_language(c: &mut Criterion) {
    let rust = build_plugins();
    let set = backends();
    let canary = [("canary.backend", "http://10.0.0.7:8080")];
    let client: IpAddr = "203.0.113.7".parse().expect("ip");
    let mut head = request_head();
    let mut group = c.benchmark_group("per_language");

    group.bench_function("key/builtin", |b| {
        b.iter(|| black_box(ClientKey::address(client, 64)))
    });
    // The timeouts the README recommends per language: a garbage-collected
    // runtime's occasional collection takes milliseconds.
    let fast = PluginsConfig::default().timeout;
    let collected = Duration::from_millis(50);
    let keys: [Candidate; 2] = [
        ("key/rust", Box::new(|| rust.join("api_key.wasm")), fast),
        ("key/python", Box::new(python_api_key), collected),
    ];
    for (name, wasm, timeout) in keys {
        let plugin = OnceLock::new();
        group.bench_function(name, |b| {
            let plugin = plugin.get_or_init(|| load::<KeyRole>(&wasm(), &[], timeout));
            b.iter(|| {
                black_box(lent(&mut head, client, |view| {
                    plugin.client_key(view).expect("key")
                }))
            })
        });
    }

    let tried = Tried::default();
    let builtin = build(Algorithm::RoundRobin, &set, None);
    group.bench_function("select/builtin", |b| {
        b.iter(|| {
            let mut ctx = Ctx {
                head: &mut head,
                client,
                tls: None,
                plugin_failed: false,
            };
            black_box(builtin.pick(&set, &tried, &mut ctx))
        })
    });
    let selects: [Candidate; 2] = [
        ("select/rust", Box::new(|| rust.join("canary.wasm")), fast),
        ("select/javascript", Box::new(javascript_canary), collected),
    ];
    for (name, wasm, timeout) in selects {
        let plugin = OnceLock::new();
        group.bench_function(name, |b| {
            let plugin = plugin.get_or_init(|| load::<SelectRole>(&wasm(), &canary, timeout));
            b.iter(|| {
                black_box(lent(&mut head, client, |view| {
                    plugin
                        .select(view, &backend_states(&set))
                        .unwrap_or_else(|e| panic!("{name}: {e}"))
                }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request, per_language);
criterion_main!(benches);
