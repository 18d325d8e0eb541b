//! Requests are spread over backends as the algorithm promises.

use crate::support::*;
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_exactly_over_three_backends() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let gw = Gateway::start(&config(&backends.iter().collect::<Vec<_>>(), ""));
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..12 {
        let (status, _, body) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 200);
        seen.push(body);
    }
    // Each backend gets every third request, in a fixed order.
    for i in 3..12 {
        assert_eq!(seen[i], seen[i - 3], "rotation broken: {seen:?}");
    }
    let mut first_three = seen[..3].to_vec();
    first_three.sort();
    assert_eq!(first_three, vec!["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_scale_the_share() {
    let heavy = TestBackend::start("heavy").await;
    let light = TestBackend::start("light").await;
    let yaml = format!(
        "backends:\n  - url: {}\n    weight: 3\n  - {}\n",
        heavy.url(),
        light.url()
    );
    let gw = Gateway::start(&yaml);
    let client = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let (_, _, body) = get(&client, &gw.url("/")).await;
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!(counts["heavy"], 30, "{counts:?}");
    assert_eq!(counts["light"], 10, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_avoids_the_busy_backend() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(
        &[&a, &b],
        "balancer:\n  algorithm: least_requests\n",
    ));
    let client = client();
    // Keep one slow request in flight; it lands on one backend.
    let slow = {
        let client = client.clone();
        let url = gw.url("/slow?ms=1500");
        tokio::spawn(async move { get(&client, &url).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let busy = if a.hits() == 1 { "a" } else { "b" };
    for _ in 0..10 {
        let (_, _, body) = get(&client, &gw.url("/")).await;
        assert_ne!(body, busy, "a request went to the backend that was busy");
    }
    let (status, _, _) = slow.await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_all_succeed() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let gw = Gateway::start(&config(
        &backends.iter().collect::<Vec<_>>(),
        "log:\n  access: false\n",
    ));
    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let client = client.clone();
        let url = gw.url(&format!("/slow?ms=50&i={i}"));
        tasks.spawn(async move { get(&client, &url).await.0 });
    }
    let mut ok = 0;
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
        ok += 1;
    }
    assert_eq!(ok, 1000);
    let total: u64 = backends.iter().map(|b| b.hits()).sum();
    assert_eq!(total, 1000);
    for b in &backends {
        assert!(
            (300..=367).contains(&b.hits()),
            "uneven spread: {} got {}",
            b.name,
            b.hits()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_listener_and_one_rotation() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let gw = Gateway::start(&config(
        &backends.iter().collect::<Vec<_>>(),
        "proxy:\n  workers: 4\nlog:\n  access: false\n",
    ));
    assert_eq!(gw.count_log(|l| l.contains(r#""workers":4"#)), 1);
    let threads = std::fs::read_dir(format!("/proc/{}/task", gw.child.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("gateway-worker-"))
        .count();
    assert_eq!(threads, 4);

    let client = client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..600 {
        let client = client.clone();
        let url = gw.url(&format!("/slow?ms=20&i={i}"));
        tasks.spawn(async move { get(&client, &url).await.0 });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    // The round-robin position is shared by the workers: the rotation stays
    // exact however the connections were spread over them.
    for b in &backends {
        assert_eq!(b.hits(), 200, "{} got {}", b.name, b.hits());
    }
}
