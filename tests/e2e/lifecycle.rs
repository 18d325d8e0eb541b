//! Starting and stopping: graceful drain on SIGTERM.

use crate::support::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_slow_request_finish_and_exits_zero() {
    let b = TestBackend::start("b").await;
    let mut gw = Gateway::start(&config(&[&b], ""));
    let client = client();
    let slow = {
        let client = client.clone();
        let url = gw.url("/slow?ms=1500");
        tokio::spawn(async move { get(&client, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "b"));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(gw.log_text().contains(r#""event":"drained""#));
    assert!(
        tokio::net::TcpStream::connect(gw.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_bounded_by_the_drain_timeout() {
    let b = TestBackend::start("b").await;
    let mut gw = Gateway::start(&config(&[&b], "proxy:\n  drain_timeout: 300ms\n"));
    let client = client();
    let url = gw.url("/slow?ms=10000");
    let _stuck = tokio::spawn(async move {
        client
            .request(http::Request::get(url).body(Default::default()).unwrap())
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(gw.log_text().contains(r#""event":"drain_timeout""#));
}

/// `kill -HUP`, sent out of habit to reload, never stops the gateway (it
/// used to exit 129 when no plugin was configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_stop_the_gateway() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], ""));
    for sent in 1..=3 {
        gw.signal("HUP");
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while gw.count_log(|l| l.contains(r#""event":"sighup""#)) < sent {
            assert!(
                std::time::Instant::now() < until,
                "SIGHUP {sent} not logged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, _, body) = get(&client(), &gw.url("/")).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "b"),
        "still serving"
    );
}
