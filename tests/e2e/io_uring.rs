//! `proxy.io: io_uring`: the same requests over the ring path, with raw
//! sockets where a connection's life is what is tested. (CI also runs the
//! whole end-to-end suite once more with `GATEWAY_IO=io_uring`.)

use crate::support::*;
use http::Request;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RING: &str = "proxy:\n  io: io_uring\n  workers: 2\n";

/// Reads one response with a `Content-Length` body; returns its text.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return String::from_utf8_lossy(&buf[..end + 4 + length]).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_rotate_exactly_and_big_bodies_cross_whole_both_ways() {
    let backends = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let gw = Gateway::start(&config(&backends.iter().collect::<Vec<_>>(), RING));
    let client = client();
    let mut seen = Vec::new();
    for _ in 0..30 {
        let (status, _, body) = get(&client, &gw.url("/")).await;
        assert_eq!(status, 200);
        seen.push(body);
    }
    for i in 3..30 {
        assert_eq!(seen[i], seen[i - 3], "rotation broken: {seen:?}");
    }
    let upload = Request::post(gw.url("/upload"))
        .body(Full::from(vec![7u8; 3_000_000]))
        .unwrap();
    let (status, _, counted) = send(&client, upload).await;
    assert_eq!((status.as_u16(), counted.as_str()), (200, "3000000"));
    let (status, _, body) = get(&client, &gw.url("/download?bytes=5000000")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 5_000_000);
    assert!(
        body.bytes().all(|b| b == b'x'),
        "the download's bytes changed"
    );
}

/// A backend that answers one request per connection and closes the
/// connection a little later, without saying so in the answer.
async fn closing_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_never_used() {
    let (backend, connections) = closing_backend().await;
    let gw = Gateway::start(&format!(
        "backends: [http://{backend}]\nhealth_check:\n  enabled: false\nproxy:\n  io: io_uring\n  workers: 1\n  retries: 0\n"
    ));
    let client = client();
    for i in 0..6 {
        let (status, _, body) = get(&client, &gw.url("/")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "ok"), "request {i}");
        // Long enough for the backend's close to reach the idle connection.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        6,
        "one connection per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_serves_again_then_times_out() {
    let backend = TestBackend::start("a").await;
    let gw = Gateway::start(&config(
        &[&backend],
        "proxy:\n  io: io_uring\n  header_read_timeout: 3s\n",
    ));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("\r\n\r\na"));
    // Past the second after which a connection gives its buffers back and
    // waits on a readiness poll.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(request).await.unwrap();
    assert!(read_response(&mut stream).await.ends_with("\r\n\r\na"));
    let idle = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "closed after {waited:?}, header_read_timeout is 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_head_gets_its_400_whole_before_the_close() {
    let backend = TestBackend::start("a").await;
    let gw = Gateway::start(&config(&[&backend], RING));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.ends_with(r#""message":"not an HTTP/1.1 request"}"#),
        "{answer}"
    );
    assert_eq!(backend.hits(), 0);
}

#[test]
fn an_unknown_io_mode_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(
        &path,
        "backends: [http://127.0.0.1:9]\nproxy:\n  io: uring\n",
    )
    .unwrap();
    let (code, out) = run_cli(&["validate", "-c", path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(":3:"), "{out}");
    assert!(
        out.contains("proxy.io") && out.contains("allowed: epoll, io_uring"),
        "{out}"
    );
}
