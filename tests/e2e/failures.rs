//! Dead, slow and broken backends are ridden out; what cannot be answered gets clear JSON.

use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::time::Duration;

fn is_down_event(line: &str) -> bool {
    line.contains(r#""event":"backend_down""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_costs_clients_no_errors() {
    let a = TestBackend::start("a").await;
    let c = TestBackend::start("c").await;
    let dead = dead_addr().await;
    let yaml = format!(
        "backends:\n  - {}\n  - http://{dead}\n  - {}\nhealth_check:\n  interval: 1h\nadmin:\n  token: test-token\n",
        a.url(),
        c.url()
    );
    let mut gw = Gateway::start(&yaml);
    let client = client();
    for _ in 0..30 {
        let (status, _, body) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 200);
        assert!(body == "a" || body == "c", "{body}");
    }
    gw.wait_log(is_down_event, Duration::from_secs(2));
    assert_eq!(
        gw.count_log(is_down_event),
        1,
        "down transition logged more than once"
    );
    let (_, _, backends) = send(
        &client,
        Request::get(gw.admin_url("/backends"))
            .header("authorization", "Bearer test-token")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    let backends: serde_json::Value = serde_json::from_str(&backends).unwrap();
    assert_eq!(backends[1]["healthy"], false, "{backends}");
    assert_eq!(backends[0]["healthy"], true, "{backends}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_gives_503_json() {
    let yaml = format!(
        "backends:\n  - http://{}\n  - http://{}\n",
        dead_addr().await,
        dead_addr().await
    );
    let gw = Gateway::start(&yaml);
    let client = client();
    for _ in 0..3 {
        let (status, headers, body) = get(&client, &gw.url("/x")).await;
        assert_eq!(status, 503);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body, r#"{"code":503,"message":"No healthy backend"}"#);
    }
    let (status, _, _) = get(&client, &gw.admin_url("/readyz")).await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revived_backend_gets_traffic_again() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let yaml = config(
        &[&a, &b],
        "health_check:\n  interval: 100ms\n  timeout: 100ms\n  unhealthy_threshold: 2\n  healthy_threshold: 2\n",
    );
    let mut gw = Gateway::start(&yaml);
    let client = client();
    let b_addr = b.stop().await;
    gw.wait_log(is_down_event, Duration::from_secs(5));
    for _ in 0..6 {
        let (status, _, body) = get(&client, &gw.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    }
    let b = TestBackend::start_on("b", b_addr).await;
    gw.wait_log(
        |l| l.contains(r#""event":"backend_up""#),
        Duration::from_secs(5),
    );
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(&client, &gw.url("/")).await.2);
    }
    assert!(
        bodies.iter().any(|x| x == "b"),
        "revived backend got nothing: {bodies:?}"
    );
    assert!(b.hits() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gives_504_json() {
    let slow = TestBackend::start("slow").await;
    let gw = Gateway::start(&config(&[&slow], "proxy:\n  request_timeout: 300ms\n"));
    let started = std::time::Instant::now();
    let (status, headers, body) = get(&client(), &gw.url("/slow?ms=3000")).await;
    assert_eq!(status, 504);
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.starts_with(r#"{"code":504,"message":"#), "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A gateway over a backend that reads a request and hangs up, then a
/// good one (answers "good"); no health checks in between.
async fn rude_then_good() -> (Gateway, TestBackend) {
    let rude = rude_backend().await;
    let good = TestBackend::start("good").await;
    let yaml = format!(
        "backends:\n  - http://{rude}\n  - {}\nhealth_check:\n  interval: 1h\n",
        good.url()
    );
    (Gateway::start(&yaml), good)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_backend_retries_idempotent_requests_only() {
    let (gw, _good) = rude_then_good().await;
    let client = client();
    // Every request meets the rude backend first (each pick advances the
    // rotation once, each request makes two picks): a GET moves on...
    for _ in 0..2 {
        let (status, _, body) = get(&client, &gw.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "good"));
    }
    // ...a POST, whose body the rude backend may have consumed, does not.
    let post = Request::post(gw.url("/upload"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (status, _, body) = send(&client, post).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body,
        r#"{"code":502,"message":"Bad gateway: backend failed"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_idempotent_upload_is_sent_again_after_a_mid_request_failure() {
    // A small body read whole goes out with the head, and stays with the
    // gateway: a PUT (idempotent) whose backend read it and hung up goes to
    // the next backend with the same bytes, as a GET would.
    let (gw, _good) = rude_then_good().await;
    let client = client();
    for size in [1usize, 700, 16 * 1024] {
        let put = Request::put(gw.url("/upload"))
            .body(Full::new(Bytes::from(vec![b'p'; size])))
            .unwrap();
        let (status, _, received) = send(&client, put).await;
        assert_eq!((status.as_u16(), received), (200, size.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_to_a_dead_backend_is_replayed_on_the_next() {
    let good = TestBackend::start("good").await;
    let yaml = format!(
        "backends:\n  - http://{}\n  - {}\nhealth_check:\n  interval: 1h\n",
        dead_addr().await,
        good.url()
    );
    let gw = Gateway::start(&yaml);
    let body = Bytes::from(vec![7u8; 1 << 20]);
    let post = Request::post(gw.url("/upload"))
        .body(Full::new(body))
        .unwrap();
    let (status, _, received) = send(&client(), post).await;
    assert_eq!(status, 200);
    assert_eq!(received, (1u64 << 20).to_string());
}
