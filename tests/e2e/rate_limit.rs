//! Per-client token buckets seen from outside: 429s, headers, refill, live
//! limit changes through the admin API and the CLI, SQLite and PostgreSQL.

use crate::support::*;
use std::time::{Duration, Instant};

fn limited(backend: &TestBackend, database: &str, extra: &str) -> String {
    format!(
        "backends:\n  - {}\nadmin:\n  token: test-token\nlog:\n  access: false\nrate_limit:\n  database: {database}\n  refill_interval: 50ms\n  sync_interval: 200ms\n{extra}",
        backend.url()
    )
}

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("limits.db").display())
}

const AUTH: (&str, &str) = ("authorization", "Bearer test-token");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_then_429_with_exact_body_and_headers() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&limited(
        &b,
        &sqlite(&db),
        "  default:\n    capacity: 3\n    refill_per_second: 0.01\n",
    ));
    let client = client();
    for left in [2, 1, 0] {
        let (status, headers, _) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=3;w=300");
        let state = headers["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!("\"default\";r={left};t=")),
            "{state}"
        );
    }
    let (status, headers, body) = get(&client, &gw.url("/")).await;
    assert_eq!(status, 429);
    assert_eq!(body, r#"{"code":429,"message":"Rate limit exceeded"}"#);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["retry-after"], "100");
    assert_eq!(headers["ratelimit-policy"], "\"default\";q=3;w=300");
    assert_eq!(headers["ratelimit"], "\"default\";r=0;t=100");
    assert_eq!(b.hits(), 3, "rejected requests must not reach the backend");
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"gateway_ratelimit_decisions_total{outcome="limited"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_ratelimit_decisions_total{outcome="allowed"} 3"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_back_at_the_refill_rate() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    // 5 tokens per second: one every 200 ms.
    let gw = Gateway::start(&limited(
        &b,
        &sqlite(&db),
        "  default:\n    capacity: 2\n    refill_per_second: 5\n",
    ));
    let client = client();
    assert_eq!(get(&client, &gw.url("/")).await.0, 200);
    assert_eq!(get(&client, &gw.url("/")).await.0, 200);
    let empty_at = Instant::now();
    assert_eq!(get(&client, &gw.url("/")).await.0, 429);
    // Poll until the next token arrives; it must take about 200 ms.
    loop {
        let status = get(&client, &gw.url("/")).await.0;
        if status == 200 {
            break;
        }
        assert!(
            empty_at.elapsed() < Duration::from_millis(600),
            "no token after 600 ms"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = empty_at.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "token came back too soon: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_forwarded_for_does_not_buy_a_fresh_bucket() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&limited(
        &b,
        &sqlite(&db),
        "  default:\n    capacity: 2\n    refill_per_second: 0.01\n",
    ));
    let client = client();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let xff = format!("198.51.100.{i}");
        let (status, _, _) = send(
            &client,
            request("GET", &gw.url("/"), &[("x-forwarded-for", &xff)], ""),
        )
        .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_in_parallel_each_get_exactly_their_capacity() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&limited(
        &b,
        &sqlite(&db),
        "  key: header:X-API-Key\n  unknown_keys: own\n  default:\n    capacity: 7\n    refill_per_second: 0.001\n",
    ));
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..200 {
        for _ in 0..20 {
            let client = client.clone();
            let url = gw.url("/");
            tasks.spawn(async move {
                let key = format!("client-{c}");
                let (status, _, _) =
                    send(&client, request("GET", &url, &[("x-api-key", &key)], "")).await;
                (c, status.as_u16())
            });
        }
    }
    let mut allowed = vec![0u32; 200];
    while let Some(result) = tasks.join_next().await {
        let (c, status) = result.unwrap();
        match status {
            200 => allowed[c] += 1,
            429 => {}
            other => panic!("unexpected status {other}\n{}", gw.log_text()),
        }
    }
    assert!(allowed.iter().all(|&n| n == 7), "{allowed:?}");
    assert_eq!(b.hits(), 200 * 7);
}

/// Sets `key` to capacity 5 through the admin API and checks it applies live.
async fn admin_change_applies_live(database: String) {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&limited(
        &b,
        &database,
        "  key: header:X-API-Key\n  default:\n    capacity: 2\n    refill_per_second: 0.01\n",
    ));
    let client = client();
    let as_key = |key: &'static str| request("GET", &gw.url("/"), &[("x-api-key", key)], "");
    assert_eq!(send(&client, as_key("vip")).await.0, 200);
    assert_eq!(send(&client, as_key("vip")).await.0, 200);
    assert_eq!(send(&client, as_key("vip")).await.0, 429);

    let create = request(
        "POST",
        &gw.admin_url("/clients"),
        &[AUTH, ("content-type", "application/json")],
        r#"{"client_id":"vip","capacity":50,"refill_per_second":100}"#,
    );
    let (status, _, body) = send(&client, create).await;
    assert_eq!(status, 201, "{body}");
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["capacity"], 50);
    assert!(record["created_at"].as_str().unwrap().ends_with('Z'));
    tokio::time::sleep(Duration::from_millis(120)).await;
    let (status, headers, _) = send(&client, as_key("vip")).await;
    assert_eq!(status, 200, "raised limit did not apply to the live bucket");
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"client\";q=50")
    );

    // Lower it again: PUT applies too.
    let update = request(
        "PUT",
        &gw.admin_url("/clients/vip"),
        &[AUTH],
        r#"{"capacity":1,"refill_per_second":0.01}"#,
    );
    assert_eq!(send(&client, update).await.0, 200);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(send(&client, as_key("vip")).await.0.as_u16());
        }
        v
    };
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() <= 1,
        "{statuses:?}"
    );

    let (status, _, body) = send(
        &client,
        request("GET", &gw.admin_url("/clients/vip"), &[AUTH], ""),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""capacity":1"#), "{body}");
    let (_, _, list) = send(
        &client,
        request("GET", &gw.admin_url("/clients"), &[AUTH], ""),
    )
    .await;
    assert!(list.contains("vip"));
    assert_eq!(
        send(
            &client,
            request("DELETE", &gw.admin_url("/clients/vip"), &[AUTH], "")
        )
        .await
        .0,
        204
    );
    assert_eq!(
        send(
            &client,
            request("DELETE", &gw.admin_url("/clients/vip"), &[AUTH], "")
        )
        .await
        .0,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_change_applies_live_with_sqlite() {
    let db = tempfile::tempdir().unwrap();
    admin_change_applies_live(sqlite(&db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_change_applies_live_with_postgres() {
    let Some(base) = postgres() else { return };
    admin_change_applies_live(fresh_pg(&base).await).await;
}

/// A limit set with `gateway clients set` (another process) reaches the running gateway within a second.
async fn cli_change_applies_live(database: String) {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&limited(
        &b,
        &database,
        "  key: header:X-API-Key\n  default:\n    capacity: 1\n    refill_per_second: 0.01\n",
    ));
    let client = client();
    let as_key = || request("GET", &gw.url("/"), &[("x-api-key", "cli-user")], "");
    assert_eq!(send(&client, as_key()).await.0, 200);
    assert_eq!(send(&client, as_key()).await.0, 429);
    // A bare name needs the configured key source, which `--database`
    // alone does not give; the id names it.
    let (code, out) = run_cli(&[
        "clients",
        "--database",
        &database,
        "set",
        "cli-user",
        "--capacity",
        "10",
        "--refill-per-second",
        "100",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("header:NAME:VALUE"), "{out}");
    let (code, out) = run_cli(&[
        "clients",
        "--database",
        &database,
        "set",
        "header:X-API-Key:cli-user",
        "--capacity",
        "10",
        "--refill-per-second",
        "100",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let changed_at = Instant::now();
    loop {
        if send(&client, as_key()).await.0 == 200 {
            break;
        }
        assert!(
            changed_at.elapsed() < Duration::from_secs(1),
            "CLI change not applied within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = "header:x-api-key:cli-user";
    let (code, out) = run_cli(&["clients", "--database", &database, "get", id]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(r#""capacity": 10"#), "{out}");
    let (code, _) = run_cli(&["clients", "--database", &database, "delete", id]);
    assert_eq!(code, Some(0));
    let (code, out) = run_cli(&["clients", "--database", &database, "get", id]);
    assert_eq!(code, Some(1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_change_applies_live_with_sqlite() {
    let db = tempfile::tempdir().unwrap();
    cli_change_applies_live(sqlite(&db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_change_applies_live_with_postgres() {
    let Some(base) = postgres() else { return };
    cli_change_applies_live(fresh_pg(&base).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_survive_a_restart() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let yaml = limited(
        &b,
        &sqlite(&db),
        "  key: header:X-API-Key\n  default:\n    capacity: 1\n    refill_per_second: 0.01\n",
    );
    let client = client();
    {
        let gw = Gateway::start(&yaml);
        let create = request(
            "POST",
            &gw.admin_url("/clients"),
            &[AUTH],
            r#"{"client_id":"kept","capacity":4,"refill_per_second":0.01}"#,
        );
        assert_eq!(send(&client, create).await.0, 201);
    }
    let gw = Gateway::start(&yaml);
    let mut allowed = 0;
    for _ in 0..6 {
        if send(
            &client,
            request("GET", &gw.url("/"), &[("x-api-key", "kept")], ""),
        )
        .await
        .0 == 200
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_clients_validates_input() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&limited(&b, &sqlite(&db), "  key: header:X-API-Key\n"));
    let client = client();
    let post = |body: &str| request("POST", &gw.admin_url("/clients"), &[AUTH], body);
    for (body, reason) in [
        ("{not json", "Invalid JSON"),
        (
            r#"{"client_id":"a","capacity":1,"refill_per_second":1,"extra":1}"#,
            "unknown field",
        ),
        (
            r#"{"client_id":"a","capacity":0,"refill_per_second":1}"#,
            "capacity",
        ),
        (
            r#"{"client_id":"a","capacity":-3,"refill_per_second":1}"#,
            "capacity",
        ),
        (
            r#"{"client_id":"a","capacity":5,"refill_per_second":0}"#,
            "refill_per_second",
        ),
        (
            r#"{"client_id":"a","capacity":5,"refill_per_second":-1}"#,
            "refill_per_second",
        ),
        (
            r#"{"client_id":"a","capacity":1e12,"refill_per_second":1}"#,
            "capacity",
        ),
        (
            r#"{"client_id":"","capacity":5,"refill_per_second":1}"#,
            "client_id",
        ),
        (r#"{"capacity":5,"refill_per_second":1}"#, "client_id"),
        (
            r#"{"client_id":"header:bad name:a","capacity":5,"refill_per_second":1}"#,
            "client_id",
        ),
        (
            r#"{"client_id":"header:x-api-key:","capacity":5,"refill_per_second":1}"#,
            "client_id",
        ),
        (
            r#"{"client_id":"ip:10.0.0.0/8","capacity":5,"refill_per_second":1}"#,
            "client_id",
        ),
    ] {
        let (status, headers, text) = send(&client, post(body)).await;
        assert_eq!(status, 400, "{body} -> {text}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(text.contains(reason), "{body} -> {text}");
    }
    assert_eq!(
        send(
            &client,
            post(r#"{"client_id":"a","capacity":5,"refill_per_second":1}"#)
        )
        .await
        .0,
        201
    );
    assert_eq!(
        send(
            &client,
            post(r#"{"client_id":"a","capacity":5,"refill_per_second":1}"#)
        )
        .await
        .0,
        409
    );
    let put = request(
        "PUT",
        &gw.admin_url("/clients/ghost"),
        &[AUTH],
        r#"{"capacity":5,"refill_per_second":1}"#,
    );
    assert_eq!(send(&client, put).await.0, 404);
    assert_eq!(
        send(
            &client,
            request("GET", &gw.admin_url("/clients/ghost"), &[AUTH], "")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        send(&client, request("GET", &gw.admin_url("/clients"), &[], ""))
            .await
            .0,
        401
    );
    // Keys with '/' (IPv6 prefixes) travel percent-encoded.
    let v6 = request(
        "POST",
        &gw.admin_url("/clients"),
        &[AUTH],
        r#"{"client_id":"2001:db8::/64","capacity":5,"refill_per_second":1}"#,
    );
    let (status, _, body) = send(&client, v6).await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""client_id":"ip:2001:db8::/64""#), "{body}");
    // The same client, named with its source and by an address inside the /64.
    for path in ["/clients/ip:2001:db8::%2F64", "/clients/2001:db8::77"] {
        let (status, _, body) =
            send(&client, request("GET", &gw.admin_url(path), &[AUTH], "")).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(
        send(
            &client,
            request(
                "GET",
                &gw.admin_url("/clients/2001:db8::%2F64"),
                &[AUTH],
                ""
            )
        )
        .await
        .0,
        200
    );
}

#[test]
fn unreachable_database_at_start_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    std::fs::write(
        &path,
        "backends: [http://127.0.0.1:9]\nrate_limit:\n  database: postgres://nobody@127.0.0.1:1/none\n",
    )
    .unwrap();
    let (code, out) = run_cli(&[
        "run",
        "-c",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rate_limit.database"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_database_down_at_start_serves_default_limits() {
    let b = TestBackend::start("b").await;
    let mut gw = Gateway::start(&limited(
        &b,
        "postgres://nobody@127.0.0.1:1/none",
        "  database_required: false\n  default:\n    capacity: 2\n    refill_per_second: 0.01\n",
    ));
    gw.wait_log(
        |l| l.contains(r#""event":"database_down""#),
        Duration::from_secs(5),
    );
    let client = client();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(&client, &gw.url("/")).await.0.as_u16());
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 429]);
    let (status, _, _) = send(
        &client,
        request("GET", &gw.admin_url("/clients"), &[AUTH], ""),
    )
    .await;
    assert_eq!(status, 503);
}
