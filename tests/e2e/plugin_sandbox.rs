//! The plugin sandbox seen from outside: the WASI a plugin gets (and does
//! not), its stdout and stderr in the gateway's log, panics told apart from
//! other traps, a budget that covers host calls, a bound on what a plugin
//! can hand the host, and `plugin check` / `validate` that run the plugin.

use crate::support::*;
use std::time::{Duration, Instant};

/// A gateway whose key and selection plugin is `wasm`, with `settings`
/// under `plugins:` (indented two spaces).
fn with_plugin(b: &TestBackend, wasm: &str, settings: &str) -> String {
    let w = plugin(wasm);
    // Each gateway its own database: tests run in parallel.
    let db = std::env::temp_dir().join(format!("gw-sandbox-{}.db", fastrand::u64(..)));
    config(
        &[b],
        &format!(
            "log:\n  access: false\nrate_limit:\n  key: plugin\n  key_plugin: {w}\n  unknown_keys: own\n  database: sqlite://{db}\n  default:\n    capacity: 1000\n    refill_per_second: 1000\nbalancer:\n  algorithm: plugin\n  plugin: {w}\nplugins:\n{settings}",
            w = w.display(),
            db = db.display()
        ),
    )
}

async fn get_keyed(client: &HttpClient, url: &str) -> (u16, String) {
    let (status, _, body) = send(client, request("GET", url, &[("x-api-key", "k")], "")).await;
    (status.as_u16(), body)
}

/// User + system CPU time of process `pid` so far (Linux `/proc`).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf with a constant name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn outcome(metrics: &str, interface: &str, outcome: &str) -> u64 {
    let prefix =
        format!(r#"gateway_plugin_calls_total{{interface="{interface}",outcome="{outcome}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_plugin_prints_reaches_the_log() {
    let b = TestBackend::start("b").await;
    let mut gw = Gateway::start(&with_plugin(
        &b,
        "wasi_guest",
        "  config:\n    guest.mode: print\n",
    ));
    assert_eq!(get_keyed(&client(), &gw.url("/")).await, (200, "b".into()));
    let out = gw.wait_log(
        |l| l.contains("wasi-guest: hello on stdout"),
        Duration::from_secs(5),
    );
    assert!(out.contains(r#""stream":"stdout""#), "{out}");
    let err = gw.wait_log(
        |l| l.contains("wasi-guest: a warning on stderr"),
        Duration::from_secs(5),
    );
    assert!(err.contains(r#""stream":"stderr""#), "{err}");
    assert!(err.contains("wasi_guest.wasm"), "names the plugin: {err}");
    let loaded = gw.wait_log(
        |l| l.contains(r#""event":"plugin_loaded""#) && l.contains("key plugin"),
        Duration::from_secs(5),
    );
    assert!(loaded.contains("client-key answered"), "{loaded}");
    let started = gw.wait_log(|l| l.contains("gateway started"), Duration::from_secs(5));
    assert!(started.contains(r#""algorithm":"plugin""#), "{started}");
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    assert_eq!(outcome(&metrics, "client-key", "ok"), 1, "{metrics}");
}

/// On a gateway worker (plugins are called synchronously there) a plugin
/// trying files, sockets (connect, bind, listen, UDP), clocks and random
/// gets answers, not a broken call: its key is used and counted `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reaching_for_files_and_sockets_is_answered_in_the_gateway() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&with_plugin(
        &b,
        "wasi_guest",
        "  config:\n    guest.mode: reach\n",
    ));
    let client = client();
    for _ in 0..2 {
        assert_eq!(get_keyed(&client, &gw.url("/")).await, (200, "b".into()));
    }
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert_eq!(outcome(&metrics, "client-key", "ok"), 2, "{metrics}");
    assert_eq!(outcome(&metrics, "backend-select", "ok"), 2, "{metrics}");
    for failed in ["trap", "panic", "timeout", "invalid"] {
        assert_eq!(outcome(&metrics, "client-key", failed), 0, "{metrics}");
        assert_eq!(outcome(&metrics, "backend-select", failed), 0, "{metrics}");
    }
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "no panic in the gateway: {log}");
}

/// A gateway with `wasm` (under `settings`) answering `n` keyed requests:
/// each still gets the backend's 200. Returns the first `plugin_failure`
/// log line and the metrics.
async fn failing(wasm: &str, settings: &str, n: usize) -> (String, String) {
    let b = TestBackend::start("b").await;
    let mut gw = Gateway::start(&with_plugin(&b, wasm, settings));
    let client = client();
    for _ in 0..n {
        assert_eq!(get_keyed(&client, &gw.url("/")).await, (200, "b".into()));
    }
    let line = gw.wait_log(
        |l| l.contains(r#""event":"plugin_failure""#),
        Duration::from_secs(5),
    );
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    (line, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_logged_with_its_message_and_counted_as_a_panic() {
    let (line, metrics) = failing("wasi_guest", "  config:\n    guest.mode: panic\n", 3).await;
    assert!(
        line.contains("plugin panicked") && line.contains("the configuration has no tenant table"),
        "{line}"
    );
    assert_eq!(outcome(&metrics, "client-key", "panic"), 3, "{metrics}");
    assert_eq!(outcome(&metrics, "backend-select", "panic"), 3, "{metrics}");
    assert_eq!(outcome(&metrics, "client-key", "trap"), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_trap_is_a_trap_not_a_panic() {
    // `misbehave` is no_std: its panic handler traps without a word.
    let (_, metrics) = failing("misbehave", "  config:\n    misbehave.key-mode: panic\n", 3).await;
    assert_eq!(outcome(&metrics, "client-key", "trap"), 3, "{metrics}");
    assert_eq!(outcome(&metrics, "client-key", "panic"), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_count_against_the_time_budget() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&with_plugin(
        &b,
        "misbehave",
        "  timeout: 20ms\n  config:\n    misbehave.key-mode: host-loop\n",
    ));
    let client = client();
    let cpu_before = cpu_time(gw.pid());
    for i in 0..10 {
        let started = Instant::now();
        assert_eq!(get_keyed(&client, &gw.url("/")).await, (200, "b".into()));
        let took = started.elapsed();
        // Wall time depends on how busy the machine is (the budget counts
        // the worker's CPU time); a plugin left to run would take seconds.
        assert!(
            took < Duration::from_millis(500),
            "request {i} took {took:?}: the plugin held the worker past plugins.timeout"
        );
    }
    // The budget itself: 10 calls of 20 ms CPU each, plus the requests.
    let used = cpu_time(gw.pid()) - cpu_before;
    assert!(
        used < Duration::from_millis(10 * 20 + 150),
        "the gateway used {used:?} of CPU for 10 requests with a 20 ms plugin budget"
    );
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert_eq!(outcome(&metrics, "client-key", "timeout"), 10, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_key_is_refused_before_it_is_copied() {
    let (line, metrics) = failing(
        "misbehave",
        "  memory_limit: 64MiB\n  timeout: 200ms\n  config:\n    misbehave.key-mode: big-key\n",
        3,
    )
    .await;
    assert!(line.contains("refused before copying"), "{line}");
    assert_eq!(outcome(&metrics, "client-key", "invalid"), 3, "{metrics}");
    assert_eq!(outcome(&metrics, "client-key", "ok"), 0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_answer_is_counted_once() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&with_plugin(
        &b,
        "misbehave",
        "  config:\n    misbehave.select-mode: bad-index\n",
    ));
    let client = client();
    for _ in 0..4 {
        assert_eq!(get_keyed(&client, &gw.url("/")).await.0, 200);
    }
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert_eq!(
        outcome(&metrics, "backend-select", "invalid"),
        4,
        "{metrics}"
    );
    assert_eq!(outcome(&metrics, "backend-select", "ok"), 0, "{metrics}");
    assert_eq!(outcome(&metrics, "client-key", "ok"), 4, "{metrics}");
}

/// A config file for `plugin check -c` with `plugins:` settings.
fn check_config(dir: &std::path::Path, settings: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!("backends: [http://127.0.0.1:9, http://127.0.0.1:10]\nplugins:\n{settings}"),
    )
    .unwrap();
    path
}

#[test]
fn plugin_check_runs_the_plugin_and_shows_what_it_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugin("wasi_guest");
    let wasm = wasm.to_str().unwrap();
    let cfg = check_config(
        dir.path(),
        "  config:\n    guest.mode: reach\n    guest.check: act\n",
    );
    let (code, out) = run_cli(&["plugin", "check", "-c", cfg.to_str().unwrap(), wasm]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "env=0 args=0 file=NotFound dir=NotFound net=PermissionDenied listen=PermissionDenied udp=PermissionDenied clock=true random=true"
        ),
        "deny by default, clocks and random allowed: {out}"
    );
    assert!(out.contains("backend-select answered none"), "{out}");

    // What the plugin prints is shown beside the verdict.
    let cfg = check_config(
        dir.path(),
        "  config:\n    guest.mode: print\n    guest.check: act\n",
    );
    let (code, out) = run_cli(&["plugin", "check", "-c", cfg.to_str().unwrap(), wasm]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("wasi-guest: hello on stdout"), "{out}");
    assert!(out.contains("wasi-guest: a warning on stderr"), "{out}");
}

#[test]
fn plugin_check_rejects_a_component_whose_calls_fail() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = plugin("wasi_guest");
    let wasm = wasm.to_str().unwrap();
    let cfg = check_config(
        dir.path(),
        "  config:\n    guest.mode: panic\n    guest.check: act\n",
    );
    let (code, out) = run_cli(&["plugin", "check", "-c", cfg.to_str().unwrap(), wasm]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rejected"), "{out}");
    assert!(
        out.contains("plugin panicked") && out.contains("the configuration has no tenant table"),
        "{out}"
    );

    let cfg = check_config(
        dir.path(),
        "  config:\n    guest.mode: sleep\n    guest.check: act\n",
    );
    let (code, out) = run_cli(&["plugin", "check", "-c", cfg.to_str().unwrap(), wasm]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("a plugin must answer without waiting"),
        "{out}"
    );

    let misbehave = plugin("misbehave");
    let cfg = check_config(
        dir.path(),
        "  timeout: 5ms\n  config:\n    misbehave.mode: loop\n    misbehave.check: misbehave\n",
    );
    let started = Instant::now();
    let (code, out) = run_cli(&[
        "plugin",
        "check",
        "-c",
        cfg.to_str().unwrap(),
        misbehave.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("ran out of its time budget"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");

    // The runtime's limits, not looser ones: one core instance is too few.
    let cfg = check_config(dir.path(), "  max_instances: 1\n");
    let (code, out) = run_cli(&["plugin", "check", "-c", cfg.to_str().unwrap(), wasm]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("raise plugins.max_instances (now 1)"), "{out}");
}

#[test]
fn validate_and_startup_name_the_loaded_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "backends: [http://127.0.0.1:9]\nbalancer:\n  algorithm: plugin\n  plugin: {}\n",
            plugin("sticky").display()
        ),
    )
    .unwrap();
    let (code, out) = run_cli(&["validate", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("plugin ") && out.contains("sticky.wasm"),
        "{out}"
    );
    assert!(!out.contains(", round_robin,"), "{out}");
    assert!(out.contains("select plugin"), "{out}");
    assert!(out.contains("backend-select chose backend 0 of 1"), "{out}");
}
