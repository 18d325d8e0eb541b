//! WebAssembly plugins, built from source, driving the real gateway: client
//! keys for the limiter, sticky and canary backend choice, and a sandbox that
//! survives plugins that loop, panic, hog memory or answer nonsense.

use crate::support::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

fn yaml_for(backends: &[&TestBackend], extra: &str) -> String {
    let mut yaml = String::from("backends:\n");
    for b in backends {
        yaml.push_str(&format!("  - {}\n", b.url()));
    }
    yaml.push_str("admin:\n  token: test-token\nlog:\n  access: false\nhealth_check:\n  interval: 100ms\n  timeout: 100ms\n  unhealthy_threshold: 1\n");
    yaml.push_str(extra);
    yaml
}

async fn get_as(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = send(client, request("GET", url, headers, "")).await;
    (status.as_u16(), body)
}

/// A gateway keyed by the api-key plugin `wasm` (`plugins:` gets
/// `settings`), capacity 2: two requests per API key pass, the third is
/// 429, for each key apart. Returns the gateway and a client, with the
/// backend and the database directory to keep while the gateway runs.
async fn keys_get_their_own_buckets(
    wasm: &std::path::Path,
    settings: &str,
) -> (Gateway, HttpClient, (TestBackend, tempfile::TempDir)) {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let yaml = yaml_for(
        &[&b],
        &format!(
            "rate_limit:\n  key: plugin\n  unknown_keys: own\n  key_plugin: {}\n  database: sqlite://{}\n  default:\n    capacity: 2\n    refill_per_second: 0.01\nplugins:\n{settings}",
            wasm.display(),
            db.path().join("l.db").display()
        ),
    );
    let gw = Gateway::start(&yaml);
    let client = client();
    let mut seen = Vec::new();
    for key in ["alpha", "alpha", "alpha", "beta", "beta", "beta"] {
        seen.push(get_as(&client, &gw.url("/"), &[("x-api-key", key)]).await.0);
    }
    assert_eq!(seen, vec![200, 200, 429, 200, 200, 429]);
    (gw, client, (b, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_plugin_gives_each_key_its_own_bucket() {
    let (gw, client, _keep) = keys_get_their_own_buckets(&plugin("api_key"), "").await;
    // Without the header the plugin declines and the client IP is the key.
    assert_eq!(get_as(&client, &gw.url("/"), &[]).await.0, 200);
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"gateway_plugin_calls_total{interface="client-key",outcome="ok"} 7"#),
        "{metrics}"
    );
}

/// A plugin built against the package's first version
/// (`gateway:plugin@0.1.0`, before `request.tls-subject`) loads and works
/// in today's gateway without a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_the_0_1_0_world_still_works() {
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/plugins/compat/api-key-0.1.0.wasm");
    let (gw, client, _keep) = keys_get_their_own_buckets(&old, "").await;
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"gateway_plugin_calls_total{interface="client-key",outcome="ok"} 6"#),
        "{metrics}"
    );
}

/// A plugin key that spells an address (taken from a header the client
/// controls) is a `plugin:` key, never that address's bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_key_never_reaches_an_address_bucket() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let yaml = yaml_for(
        &[&b],
        &format!(
            "rate_limit:\n  key: plugin\n  unknown_keys: own\n  key_plugin: {}\n  database: sqlite://{}\n  default:\n    capacity: 2\n    refill_per_second: 0.01\n",
            plugin("api_key").display(),
            db.path().join("l.db").display()
        ),
    );
    let gw = Gateway::start(&yaml);
    let attacker = client_from("127.0.0.4".parse().unwrap());
    for _ in 0..2 {
        assert_eq!(
            get_as(&attacker, &gw.url("/"), &[("x-api-key", "127.0.0.5")])
                .await
                .0,
            200
        );
    }
    let victim = client_from("127.0.0.5".parse().unwrap());
    assert_eq!(get_as(&victim, &gw.url("/"), &[]).await.0, 200);
    assert_eq!(get_as(&victim, &gw.url("/"), &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_plugin_keeps_a_user_on_one_backend_until_it_dies() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let yaml = yaml_for(
        &refs,
        &format!(
            "balancer:\n  algorithm: plugin\n  plugin: {}\n",
            plugin("sticky").display()
        ),
    );
    let mut gw = Gateway::start(&yaml);
    let client = client();
    let mut home: HashMap<String, String> = HashMap::new();
    for user in 0..30 {
        let user = format!("user-{user}");
        let mut seen = HashSet::new();
        for _ in 0..5 {
            let (status, body) = get_as(&client, &gw.url("/"), &[("x-user", &user)]).await;
            assert_eq!(status, 200);
            seen.insert(body);
        }
        assert_eq!(seen.len(), 1, "{user} moved between backends: {seen:?}");
        home.insert(user, seen.into_iter().next().unwrap());
    }
    let used: HashSet<&String> = home.values().collect();
    assert!(used.len() >= 2, "30 users all on one backend: {used:?}");

    // Kill one backend: only its users move, the others stay.
    let [a, b, c] = backends;
    let victim = a.name.clone();
    let _ = a.stop().await;
    gw.wait_log(
        |l| l.contains(r#""event":"backend_down""#),
        Duration::from_secs(5),
    );
    for (user, was) in &home {
        let (status, now) = get_as(&client, &gw.url("/"), &[("x-user", user)]).await;
        assert_eq!(status, 200);
        if *was == victim {
            assert_ne!(now, victim);
        } else {
            assert_eq!(&now, was, "{user} moved although its backend is alive");
        }
    }
    drop((b, c));
}

/// A canary plugin (`wasm`, under `settings` in `plugins:`) in front of two
/// stable backends and a canary: `X-Canary: 1` always reaches the canary,
/// unmarked users are spread over both stable backends and never reach it.
/// Returns the gateway's metrics.
async fn canary_splits_by_header(wasm: &std::path::Path, settings: &str) -> String {
    let stable1 = TestBackend::start("stable1").await;
    let stable2 = TestBackend::start("stable2").await;
    let canary = TestBackend::start("canary").await;
    let yaml = yaml_for(
        &[&stable1, &stable2, &canary],
        &format!(
            "balancer:\n  algorithm: plugin\n  plugin: {}\nplugins:\n{settings}  config:\n    canary.backend: \"{}\"\n",
            wasm.display(),
            canary.url()
        ),
    );
    let gw = Gateway::start(&yaml);
    let client = client();
    for _ in 0..10 {
        assert_eq!(
            get_as(&client, &gw.url("/"), &[("x-canary", "1")]).await.1,
            "canary"
        );
    }
    let mut stable = HashSet::new();
    for i in 0..20 {
        let (status, body) = get_as(&client, &gw.url("/"), &[("x-user", &format!("u{i}"))]).await;
        assert_eq!(status, 200);
        assert_ne!(body, "canary", "unmarked traffic reached the canary");
        stable.insert(body);
    }
    assert_eq!(stable.len(), 2, "{stable:?}");
    get(&client, &gw.admin_url("/metrics")).await.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_plugin_splits_by_header() {
    canary_splits_by_header(&plugin("canary"), "").await;
}

/// A plugin that names its headers once (the `-with-headers` interfaces,
/// WIT 0.1.2) gets their first values with each call, in its order, `none`
/// for an absent one, and can still ask for any other header.
#[test]
fn declared_headers_come_with_the_call() {
    let (code, out) = run_cli(&["plugin", "check", plugin("declared").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("implements client-key-with-headers, backend-select-with-headers"),
        "{out}"
    );
    assert!(
        out.contains(r#"client-key answered "plugin-check-key|1|-;ua=gateway-plugin-check""#),
        "{out}"
    );
}

/// What a plugin declares is checked when it loads: a name that is not a
/// header name, or more than 16, and it is refused with the reason.
#[test]
fn a_bad_header_declaration_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let many = (0..17)
        .map(|i| format!("x-h{i}"))
        .collect::<Vec<_>>()
        .join(",");
    for (names, reason) in [
        (
            "x-ok, bad name",
            r#"`headers` named "bad name", not a header name"#,
        ),
        (many.as_str(), "`headers` named 17 headers (at most 16)"),
    ] {
        let yaml = dir.path().join("gateway.yaml");
        std::fs::write(
            &yaml,
            format!(
                "backends: [http://127.0.0.1:9]\nbalancer:\n  algorithm: plugin\n  plugin: {}\nplugins:\n  config:\n    declared.headers: \"{names}\"\n",
                plugin("declared").display()
            ),
        )
        .unwrap();
        let (code, out) = run_cli(&["validate", "-c", yaml.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(reason), "{out}");
    }
}

/// Over HTTP: the declared `X-Backend` header's value picks the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_header_picks_the_backend() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let refs: Vec<&TestBackend> = backends.iter().collect();
    let yaml = yaml_for(
        &refs,
        &format!(
            "balancer:\n  algorithm: plugin\n  plugin: {}\nplugins:\n  config:\n    declared.headers: X-Backend\n",
            plugin("declared").display()
        ),
    );
    let gw = Gateway::start(&yaml);
    let client = client();
    for _ in 0..5 {
        assert_eq!(
            get_as(&client, &gw.url("/"), &[("x-backend", "2")]).await.1,
            "c"
        );
        assert_eq!(
            get_as(&client, &gw.url("/"), &[("X-BACKEND", "0")]).await.1,
            "a"
        );
    }
    // Without it the plugin answers none: the built-in round-robin.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(get_as(&client, &gw.url("/"), &[]).await.1);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics
            .contains(r#"gateway_plugin_calls_total{interface="backend-select",outcome="ok"} 16"#),
        "{metrics}"
    );
}

/// A gateway whose key and selection plugin misbehaves in `mode`.
fn misbehaving(b: &TestBackend, mode: &str, extra: &str) -> String {
    let wasm = plugin("misbehave");
    let db = std::env::temp_dir().join(format!("gw-misbehave-{}.db", fastrand::u64(..)));
    yaml_for(
        &[b],
        &format!(
            "rate_limit:\n  key: plugin\n  key_plugin: {w}\n  database: sqlite://{db}\n  default:\n    capacity: 1000\n    refill_per_second: 1000\nbalancer:\n  algorithm: plugin\n  plugin: {w}\nplugins:\n  timeout: 20ms\n  memory_limit: 8MiB\n  config:\n    misbehave.mode: {mode}\n{extra}",
            w = wasm.display(),
            db = db.display()
        ),
    )
}

async fn survives(mode: &str, outcome: &str) {
    let b = TestBackend::start("b").await;
    let mut gw = Gateway::start(&misbehaving(&b, mode, ""));
    let client = client();
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = get_as(&client, &gw.url("/"), &[("x-api-key", "k")]).await;
        assert_eq!((status, body.as_str()), (200, "b"), "mode {mode}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "mode {mode}: request took {:?} (plugin timeout 20ms)",
            started.elapsed()
        );
    }
    gw.wait_log(
        |l| l.contains(r#""event":"plugin_failure""#),
        Duration::from_secs(2),
    );
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    for interface in ["client-key", "backend-select"] {
        let line = format!(
            r#"gateway_plugin_calls_total{{interface="{interface}",outcome="{outcome}"}} 5"#
        );
        assert!(
            metrics.contains(&line),
            "mode {mode}: missing {line}\n{metrics}"
        );
    }
    let (status, _, _) = get(&client, &gw.admin_url("/healthz")).await;
    assert_eq!(status, 200);
    let failures = gw.count_log(|l| l.contains(r#""event":"plugin_failure""#));
    assert!(
        failures <= 4,
        "failures flood the log: {failures} lines for 10 failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_loops_forever_is_cut_off() {
    survives("loop", "timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_panics_is_contained() {
    survives("panic", "trap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_allocates_without_bound_is_contained() {
    survives("alloc", "trap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_names_a_bad_backend_falls_back() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&misbehaving(&b, "bad-index", ""));
    let client = client();
    for _ in 0..3 {
        assert_eq!(
            get_as(&client, &gw.url("/"), &[]).await,
            (200, "b".to_owned())
        );
    }
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(
            r#"gateway_plugin_calls_total{interface="backend-select",outcome="invalid"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_answers_500_json() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&misbehaving(&b, "panic", "  fail_closed: true\n"));
    let (status, headers, body) = get(&client(), &gw.url("/")).await;
    assert_eq!(status, 500);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"code":500,"message":"Plugin failed"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_plugin_under_load_drops_no_request() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("select.wasm");
    std::fs::copy(plugin("sticky"), &live).unwrap();
    let yaml = yaml_for(
        &[&a, &b],
        &format!(
            "balancer:\n  algorithm: plugin\n  plugin: {}\n",
            live.display()
        ),
    );
    let mut gw = Gateway::start(&yaml);
    let client = client();
    let url = gw.url("/");
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let until = Instant::now() + Duration::from_secs(4);
            let mut i = 0;
            while Instant::now() < until {
                i += 1;
                let user = format!("u{}", i % 50);
                statuses.push(
                    get_as(&client, &url, &[("x-user", &user), ("x-canary", "1")])
                        .await
                        .0,
                );
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A broken file is refused and the running version keeps serving...
    std::fs::write(&live, b"\0asm garbage").unwrap();
    gw.wait_log(
        |l| l.contains(r#""event":"plugin_reload_failed""#),
        Duration::from_secs(5),
    );
    // ...and a good new version (the canary plugin) takes over.
    let staging = dir.path().join("next.wasm");
    std::fs::copy(plugin("canary"), &staging).unwrap();
    std::fs::rename(&staging, &live).unwrap();
    gw.wait_log(
        |l| l.contains(r#""event":"plugin_reloaded""#),
        Duration::from_secs(5),
    );
    let statuses = load.await.unwrap();
    assert!(statuses.len() > 50, "too little load: {}", statuses.len());
    assert!(
        statuses.iter().all(|&s| s == 200),
        "failed requests during reload: {:?}",
        statuses.iter().filter(|&&s| s != 200).count()
    );
}

#[test]
fn plugin_check_reports_interfaces_and_rejections() {
    let (code, out) = run_cli(&["plugin", "check", plugin("misbehave").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("client-key, backend-select"), "{out}");
    let (code, out) = run_cli(&["plugin", "check", plugin("sticky").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("implements backend-select"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let (code, out) = run_cli(&["plugin", "check", core.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("core WebAssembly module, not a component"),
        "{out}"
    );
    let text = dir.path().join("x.wasm");
    std::fs::write(&text, b"hello").unwrap();
    let (code, out) = run_cli(&["plugin", "check", text.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not a WebAssembly file"), "{out}");
}

#[test]
fn validate_loads_configured_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "backends: [http://127.0.0.1:9]\nbalancer:\n  algorithm: plugin\n  plugin: {}\n",
            plugin("sticky").display()
        ),
    )
    .unwrap();
    let (code, out) = run_cli(&["validate", "-c", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    // A key-only plugin cannot choose backends.
    let wrong = dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        format!(
            "backends: [http://127.0.0.1:9]\nbalancer:\n  algorithm: plugin\n  plugin: {}\n",
            plugin("api_key").display()
        ),
    )
    .unwrap();
    let (code, out) = run_cli(&["validate", "-c", wrong.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("does not export gateway:plugin/backend-select"),
        "{out}"
    );
}

/// The Python example (componentize-py) keys requests like the Rust one:
/// each API key its own bucket, a JWT's `sub` claim, else the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_api_key_plugin_keys_requests() {
    let wasm = python_plugin("api-key", "key-plugin");
    let (gw, client, _keep) = keys_get_their_own_buckets(&wasm, "  timeout: 50ms\n").await;
    // {"sub":"carol"}: its own bucket, apart from the address's.
    let bearer = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJjYXJvbCJ9.";
    let mut carol = Vec::new();
    for _ in 0..3 {
        carol.push(
            get_as(&client, &gw.url("/"), &[("authorization", bearer)])
                .await
                .0,
        );
    }
    assert_eq!(carol, vec![200, 200, 429]);
    assert_eq!(get_as(&client, &gw.url("/"), &[]).await.0, 200);
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"gateway_plugin_calls_total{interface="client-key",outcome="ok"} 10"#),
        "{metrics}"
    );
}

/// The JavaScript example (componentize-js) splits traffic like the Rust
/// canary: `X-Canary: 1` to the canary, everyone else spread over the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_canary_plugin_splits_by_header() {
    let wasm = javascript_plugin("canary", "select-plugin");
    let metrics = canary_splits_by_header(&wasm, "  timeout: 50ms\n").await;
    assert!(
        metrics
            .contains(r#"gateway_plugin_calls_total{interface="backend-select",outcome="ok"} 30"#),
        "{metrics}"
    );
}

/// The example plugins' own unit tests (cookie parsing, the stable hash,
/// rendezvous and canary rules) run natively here, so they are part of the
/// gateway's test run like everything else.
#[test]
fn the_example_plugins_pass_their_own_unit_tests() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("run cargo test for the plugins");
    let printed = printed(&out);
    assert!(out.status.success(), "{printed}");
    for test in [
        "hash_is_stable",
        "only_the_users_of_a_failed_backend_move",
        "forced_requests_get_the_canary_if_healthy",
    ] {
        assert!(
            printed.contains(&format!("{test} ... ok")),
            "{test} did not run:\n{printed}"
        );
    }
}
