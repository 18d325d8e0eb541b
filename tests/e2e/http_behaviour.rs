//! What crosses the proxy: headers, big bodies, upgrades, HTTP/2, bad requests, the admin API.

use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_added() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], ""));
    let client = client();
    let req = Request::get(gw.url("/headers"))
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("proxy-authorization", "Basic Zm9v")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(&client, req).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    for gone in ["x-private", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the backend: {seen}"
        );
    }
    assert_ne!(seen["connection"], "keep-alive, x-private");
    assert_eq!(seen["host"], "shop.example");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");

    // And on the way back.
    let (_, headers, body) = get(&client, &gw.url("/")).await;
    assert_eq!(body, "b");
    assert_eq!(headers["x-backend"], "b");
    for gone in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_up_and_down_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], "log:\n  access: false\n"));
    let client: hyper_util::client::legacy::Client<_, Pattern> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();

    let upload = Request::post(gw.url("/upload"))
        .body(Pattern::new(GIB))
        .unwrap();
    let response = client.request(upload).await.expect("upload");
    assert_eq!(response.status(), 200);
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received, GIB.to_string());

    let download = Request::get(gw.url(&format!("/download?bytes={GIB}")))
        .body(Pattern::new(0))
        .unwrap();
    let mut body = client
        .request(download)
        .await
        .expect("download")
        .into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        total += frame
            .expect("frame")
            .data_ref()
            .map_or(0, |d| d.len() as u64);
    }
    assert_eq!(total, GIB);

    let peak = gw.peak_rss();
    assert!(peak < 64 << 20, "gateway peak RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_oversized_body_gets_413_json() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], "proxy:\n  max_body_bytes: 1000\n"));
    let client = client();
    let big = Request::post(gw.url("/upload"))
        .body(Full::new(Bytes::from(vec![0u8; 5000])))
        .unwrap();
    let (status, headers, body) = send(&client, big).await;
    assert_eq!(status, 413);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"code":413,"message":"Request body too large"}"#);
    assert_eq!(b.hits(), 0);
    let small = Request::post(gw.url("/upload"))
        .body(Full::new(Bytes::from(vec![0u8; 900])))
        .unwrap();
    assert_eq!(send(&client, small).await.2, "900");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_gets_413() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], "proxy:\n  max_body_bytes: 1000\n"));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = "x".repeat(800);
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_head(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_heads_are_refused_and_service_goes_on() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], ""));

    let mut garbage = TcpStream::connect(gw.addr).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
        .await
        .unwrap();
    let answer = read_head(&mut garbage).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");

    let mut huge = TcpStream::connect(gw.addr).await.unwrap();
    let header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = huge.write_all(header.as_bytes()).await;
    let answer = read_head(&mut huge).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    let (status, _, body) = get(&client(), &gw.url("/")).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_tunnelled() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], ""));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    stream.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = vec![0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echoed, b"ping over the tunnel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], ""));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("http://h2.example{}", "/headers"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.expect("h2 request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["host"], "h2.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_the_token_except_for_probes_and_metrics() {
    let b = TestBackend::start("b").await;
    let gw = Gateway::start(&config(&[&b], ""));
    let client = client();
    let _ = get(&client, &gw.url("/")).await;
    let authed = |path: &str, token: &str| {
        Request::get(gw.admin_url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let (status, headers, body) = get(&client, &gw.admin_url("/backends")).await;
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/json");
    assert!(body.starts_with(r#"{"code":401,"#), "{body}");
    assert_eq!(send(&client, authed("/backends", "wrong")).await.0, 401);
    let (status, _, body) = send(&client, authed("/backends", "test-token")).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["url"], b.url());
    assert_eq!(list[0]["requests"], 1);
    assert_eq!(get(&client, &gw.admin_url("/healthz")).await.0, 200);
    assert_eq!(get(&client, &gw.admin_url("/readyz")).await.0, 200);
    let (status, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    let line = format!(
        r#"gateway_requests_total{{route="default",pool="default",backend="{}",class="2xx"}} 1"#,
        b.url()
    );
    assert!(metrics.contains(&line), "{metrics}");
    assert!(metrics.contains("gateway_request_duration_seconds_bucket"));
    assert!(metrics.contains("gateway_backend_healthy"));
    assert!(metrics.contains("gateway_backend_in_flight"));
}
