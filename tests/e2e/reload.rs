//! Live reload: SIGHUP, `POST /reload` and `reload.watch` apply a changed
//! file without dropping a request; an invalid file changes nothing.

use crate::support::{Gateway, TestBackend, client, get, request};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token";

/// Generation `i` of a file: the `main` pool's backends change, a route's
/// path changes, `/limited` and its policy stay as they are.
fn generation(
    db: &std::path::Path,
    i: usize,
    backends: &[TestBackend],
    dead: std::net::SocketAddr,
) -> String {
    let main: Vec<String> = match i % 3 {
        0 => vec![backends[0].url()],
        1 => vec![backends[0].url(), backends[1].url()],
        _ => vec![backends[1].url(), backends[2].url()],
    };
    format!(
        r#"admin:
  token: {TOKEN}
rate_limit:
  database: sqlite://{}/limits.db
  default: {{capacity: 100000, refill_per_second: 100000}}
pools:
  main:
    backends: [{}]
  side:
    backends: [{}]
  dead:
    backends: [http://{dead}]
    health_check: {{interval: 1h}}
routes:
  - match: {{path_prefix: /dead}}
    pool: dead
    rate_limit: off
  - match: {{path_prefix: /stream}}
    pool: main
    rate_limit: off
  - name: limited
    match: {{path_prefix: /limited}}
    pool: side
    rate_limit: {{capacity: 2, refill_per_second: 0.001}}
  - match: {{path_prefix: /gen{i}}}
    pool: side
"#,
        db.display(),
        main.join(", "),
        backends[2].url()
    )
}

async fn admin_reload(gw: &Gateway) -> (u16, String) {
    gw.admin_call("POST", "/reload").await
}

fn reloaded(gw: &Gateway) -> usize {
    gw.count_log(|l| l.contains(r#""event":"reloaded""#))
}

async fn wait_reloads(gw: &Gateway, count: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while reloaded(gw) < count {
        assert!(
            Instant::now() < until,
            "reload {count} not logged:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_reloads_under_load_drop_no_request_and_keep_buckets() {
    let backends = vec![
        TestBackend::start("b0").await,
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
    ];
    let db = tempfile::tempdir().unwrap();
    let dead = crate::support::dead_addr().await;
    let gw = Gateway::start(&generation(db.path(), 0, &backends, dead));
    // A backend marked down (passively: its connect fails), in a pool no reload changes.
    assert_eq!(get(&client(), &gw.url("/dead")).await.0, 503);
    // A client at 0 tokens on /limited.
    for expected in [200, 200, 429] {
        assert_eq!(
            get(&client(), &gw.url("/limited")).await.0.as_u16(),
            expected
        );
    }

    // A steady stream over keep-alive connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut streams = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let url = gw.url("/stream");
        streams.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                let answer = client.request(request("GET", &url, &[], "")).await;
                match answer {
                    Ok(response) if response.status() == 200 => {
                        use http_body_util::BodyExt;
                        match response.into_body().collect().await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut applied = 0;
    for i in 1..=50 {
        if i == 25 {
            std::fs::write(gw.config_path(), "pools:\n  main:\n    backends: [http://127.0.0.1:1]\nroutes:\n  - match: {}\n    pool: elsewhere\n").unwrap();
            let (status, body) = admin_reload(&gw).await;
            assert_eq!(status, 400, "{body}");
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["code"], 400);
            let problems = answer["problems"].as_array().unwrap();
            assert!(
                problems.iter().any(|p| p["message"]
                    .as_str()
                    .unwrap()
                    .contains("no pool named \"elsewhere\"")),
                "{body}"
            );
            assert_eq!(problems[0]["line"], 6, "{body}");
            continue;
        }
        std::fs::write(gw.config_path(), generation(db.path(), i, &backends, dead)).unwrap();
        applied += 1;
        if i % 2 == 0 {
            let (status, body) = admin_reload(&gw).await;
            assert_eq!(status, 200, "{body}");
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                answer["reloaded"]["pools_kept"].as_u64().unwrap() >= 2,
                "{body}"
            );
        } else {
            gw.signal("HUP");
        }
        wait_reloads(&gw, applied).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for stream in streams {
        stream.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} answered, {failed} failed");
    assert!(ok > 200, "only {ok} requests went through");

    // The last generation is live, the invalid file was logged and ignored,
    // and the /limited client is still at 0.
    assert_eq!(get(&client(), &gw.url("/gen50")).await.0, 200);
    assert_eq!(get(&client(), &gw.url("/gen49")).await.0, 404);
    assert!(gw.count_log(|l| l.contains(r#""event":"reload_failed""#)) >= 1);
    let (status, headers, _) = get(&client(), &gw.url("/limited")).await;
    assert_eq!(
        status, 429,
        "buckets of an unchanged policy survive reloads: {headers:?}"
    );
    // Unchanged pools kept their backends: the dead one is still down (no
    // probe ran: 1h interval) and side's request count went on.
    let (_, body) = gw.admin_call("GET", "/backends").await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let of = |pool: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["pool"] == pool)
            .cloned()
            .unwrap()
    };
    assert_eq!(of("dead")["healthy"], false, "{body}");
    assert_eq!(
        of("side")["requests"],
        3,
        "2 to /limited, 1 to /gen50: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_file_is_reloaded_when_it_changes() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let yaml =
        |backend: &TestBackend| format!("backends: [{}]\nreload:\n  watch: true\n", backend.url());
    let gw = Gateway::start(&yaml(&a));
    assert_eq!(get(&client(), &gw.url("/")).await.2, "a");
    std::fs::write(gw.config_path(), yaml(&b)).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while get(&client(), &gw.url("/")).await.2 != "b" {
        assert!(
            Instant::now() < until,
            "file change not applied:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.count_log(|l| l.contains(r#""trigger":"watch""#)) >= 1);
}

/// A free loopback port (bound and released; the test binds it next).
async fn free_port() -> u16 {
    crate::support::dead_addr().await.port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_listen_address_is_bound_and_old_connections_finish() {
    let b = TestBackend::start("b").await;
    let (first, second) = (free_port().await, free_port().await);
    // The kept connection must outlive a slow reload on a busy machine: an
    // idle keep-alive connection is closed after header_read_timeout.
    let yaml = |port: u16| {
        format!(
            "listen: 127.0.0.1:{port}\nbackends: [{}]\nadmin:\n  token: {TOKEN}\nproxy:\n  header_read_timeout: 60s\n",
            b.url()
        )
    };
    let gw = Gateway::start_listening_as_written(&yaml(first));
    assert_eq!(gw.addr.port(), first);
    // A keep-alive connection made before the move.
    let kept = client();
    let old = format!("http://127.0.0.1:{first}/");
    assert_eq!(get(&kept, &old).await.2, "b");

    std::fs::write(gw.config_path(), yaml(second)).unwrap();
    let (status, _, _) = crate::support::send(
        &client(),
        request("POST", &gw.admin_url("/reload"), &[], ""),
    )
    .await;
    assert_eq!(status, 401, "a reload needs the token");
    let (status, body) = admin_reload(&gw).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["reloaded"]["listen"], format!("127.0.0.1:{second}"));
    assert_eq!(
        get(&client(), &format!("http://127.0.0.1:{second}/"))
            .await
            .2,
        "b"
    );
    // The old connection still works; new connections to the old port are refused.
    assert_eq!(get(&kept, &old).await.2, "b");
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", first)).await;
    assert!(refused.is_err(), "old port still accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_default_limits_apply_to_new_and_live_clients() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let yaml = |capacity: u32| {
        format!(
            "backends: [{}]\nadmin:\n  token: {TOKEN}\nrate_limit:\n  database: sqlite://{}/l.db\n  default: {{capacity: {capacity}, refill_per_second: 0.001}}\n",
            b.url(),
            db.path().display()
        )
    };
    let gw = Gateway::start(&yaml(2));
    let first = crate::support::client_from("127.0.0.1".parse().unwrap());
    for expected in [200, 200, 429] {
        assert_eq!(get(&first, &gw.url("/")).await.0.as_u16(), expected);
    }
    std::fs::write(gw.config_path(), yaml(4)).unwrap();
    let (status, body) = admin_reload(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("rate_limit.default"),
        "applied, not deferred: {body}"
    );
    let (status, headers, _) = get(&first, &gw.url("/")).await;
    assert_eq!(status, 429, "the empty bucket stays empty");
    assert!(
        headers["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("q=4"),
        "{headers:?}"
    );
    let second = crate::support::client_from("127.0.0.2".parse().unwrap());
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(get(&second, &gw.url("/")).await.0.as_u16());
    }
    assert_eq!(seen, [200, 200, 200, 200, 429]);
}
