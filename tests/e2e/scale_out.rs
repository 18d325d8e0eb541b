//! Several gateways, one budget per client: buckets in Redis, limit changes
//! pushed through PostgreSQL, and what happens when Redis goes away.

use crate::support::*;
use std::time::{Duration, Instant};

/// Two gateways sharing `redis`, each with two workers (so each with two
/// Redis connections of its own). Unless `extra` sets it, `shared_timeout`
/// is generous: these tests check exact counts across gateways, and on a
/// loaded test machine the 50 ms default can expire and fall back to a
/// local bucket (which the outage tests below cover on purpose).
fn shared_yaml(b: &TestBackend, redis: &str, prefix: &str, db: &str, extra: &str) -> String {
    let timeout = if extra.contains("shared_timeout") {
        ""
    } else {
        "  shared_timeout: 5s\n"
    };
    format!(
        "backends:\n  - {}\nadmin:\n  token: test-token\nlog:\n  access: false\nproxy:\n  workers: 2\nrate_limit:\n  key: header:X-API-Key\n  unknown_keys: own\n  database: {db}\n  shared: {redis}\n  shared_prefix: {prefix}\n{timeout}{extra}",
        b.url()
    )
}

fn prefix() -> String {
    format!("test{}", fastrand::u64(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_alternating_between_two_gateways_gets_its_capacity_once() {
    let Some(redis) = redis_url() else { return };
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", db.path().join("l.db").display());
    let yaml = shared_yaml(
        &b,
        &redis,
        &prefix(),
        &sqlite,
        "  default:\n    capacity: 10\n    refill_per_second: 0.001\n",
    );
    let (one, two) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let client = client();
    let mut allowed = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &one } else { &two };
        if call_with_api_key(&client, gw, "roaming").await == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_parallel_clients_across_two_gateways_never_exceed_capacity() {
    let Some(redis) = redis_url() else { return };
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", db.path().join("l.db").display());
    let yaml = shared_yaml(
        &b,
        &redis,
        &prefix(),
        &sqlite,
        "  default:\n    capacity: 5\n    refill_per_second: 0.001\n",
    );
    let gateways = std::sync::Arc::new((Gateway::start(&yaml), Gateway::start(&yaml)));
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..20 {
        for r in 0..16 {
            let client = client.clone();
            let gateways = std::sync::Arc::clone(&gateways);
            tasks.spawn(async move {
                let gw = if r % 2 == 0 { &gateways.0 } else { &gateways.1 };
                (
                    c,
                    call_with_api_key(&client, gw, &format!("parallel-{c}")).await,
                )
            });
        }
    }
    let mut allowed = [0u32; 20];
    while let Some(done) = tasks.join_next().await {
        let (c, status) = done.unwrap();
        assert!(status == 200 || status == 429, "status {status}");
        if status == 200 {
            allowed[c] += 1;
        }
    }
    assert!(allowed.iter().all(|&n| n == 5), "{allowed:?}");
    // Every decision went through a script call, several per call under
    // this load; the metric counts the calls.
    let mut calls = 0.0;
    for gw in [&gateways.0, &gateways.1] {
        let (status, body) = gw.admin_call("GET", "/metrics").await;
        assert_eq!(status, 200);
        calls += body
            .lines()
            .find_map(|l| l.strip_prefix("gateway_ratelimit_shared_calls_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no shared calls counter in {body}"));
    }
    assert!(
        (1.0..=320.0).contains(&calls),
        "{calls} calls for 320 decisions"
    );
}

/// Redis dies mid-run; `policy` decides; no request waits past the timeout.
async fn outage(policy: &str) -> (Vec<u16>, Gateway, PrivateRedis, TestBackend) {
    let mut redis = PrivateRedis::start();
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", db.path().join("l.db").display());
    let yaml = shared_yaml(
        &b,
        &redis.url(),
        "outage",
        &sqlite,
        &format!(
            "  shared_timeout: 50ms\n  on_shared_failure: {policy}\n  default:\n    capacity: 3\n    refill_per_second: 0.001\n"
        ),
    );
    let mut gw = Gateway::start(&yaml);
    let client = client();
    assert_eq!(
        call_with_api_key(&client, &gw, "k").await,
        200,
        "through Redis first"
    );
    redis.kill();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        statuses.push(call_with_api_key(&client, &gw, "k").await);
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "request hung for {:?}",
            started.elapsed()
        );
    }
    gw.wait_log(
        |l| l.contains(r#""event":"shared_limiter_down""#),
        Duration::from_secs(2),
    );
    assert_eq!(
        gw.count_log(|l| l.contains(r#""event":"shared_limiter_down""#)),
        1
    );
    let (_, _, ready) = get(&client, &gw.admin_url("/readyz")).await;
    assert!(ready.contains(r#""up":false"#), "{ready}");
    (statuses, gw, redis, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_policy_local_uses_a_local_bucket_and_recovers() {
    let (statuses, mut gw, mut redis, _b) = outage("local").await;
    // A fresh local bucket of capacity 3.
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    redis.restart();
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The restarted Redis is empty: the client's budget starts again there.
    loop {
        let status = call_with_api_key(&client, &gw, "k").await;
        if gw.count_log(|l| l.contains(r#""event":"shared_limiter_up""#)) == 1 {
            assert_eq!(status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "never went back to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, ready) = get(&client, &gw.admin_url("/readyz")).await;
    assert!(ready.contains(r#""up":true"#), "{ready}");
    gw.wait_log(|l| l.contains("shared_limiter_up"), Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_policy_allow_lets_requests_through() {
    let (statuses, _gw, _redis, _b) = outage("allow").await;
    assert_eq!(statuses, vec![200; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_with_policy_deny_answers_503() {
    let (statuses, gw, _redis, _b) = outage("deny").await;
    assert_eq!(statuses, vec![503; 5]);
    let (status, _, body) = send(
        &client(),
        request("GET", &gw.url("/"), &[("x-api-key", "k")], ""),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"code":503,"message":"Rate limiter unavailable"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_changed_on_one_gateway_is_enforced_by_the_other_within_a_second() {
    let Some(base) = postgres() else { return };
    let database = fresh_pg(&base).await;
    let b = TestBackend::start("b").await;
    // Polling every 30 s: only the NOTIFY can deliver the change in time.
    let yaml = format!(
        "backends:\n  - {}\nadmin:\n  token: test-token\nlog:\n  access: false\nproxy:\n  workers: 2\nrate_limit:\n  key: header:X-API-Key\n  database: {database}\n  sync_interval: 30s\n  default:\n    capacity: 1\n    refill_per_second: 0.001\n",
        b.url()
    );
    let (one, two) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let client = client();
    assert_eq!(call_with_api_key(&client, &two, "pushed").await, 200);
    assert_eq!(call_with_api_key(&client, &two, "pushed").await, 429);
    // Let both finish their first sync and open their LISTEN connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let create = request(
        "POST",
        &one.admin_url("/clients"),
        &[("authorization", "Bearer test-token")],
        r#"{"client_id":"pushed","capacity":100,"refill_per_second":100}"#,
    );
    assert_eq!(send(&client, create).await.0, 201);
    let changed = Instant::now();
    loop {
        if call_with_api_key(&client, &two, "pushed").await == 200 {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the other gateway did not apply the change within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
