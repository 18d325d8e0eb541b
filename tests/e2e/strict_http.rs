//! Edge hardening over raw sockets (strict HTTP/1.1, honest blame, slow and
//! idle clients): what a
//! hostile client or a broken backend sends, and the exact bytes a backend
//! then receives.

use crate::support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that records every request head it receives, byte for byte,
/// reads the body its framing announces, and answers each request with
/// `answer`, keeping the connection open.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    /// The body of each request with a `Content-Length`, in order.
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start(answer: &'static [u8]) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (Arc::clone(&heads), Arc::clone(&connections));
        let read_bodies = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = Arc::clone(&seen);
                let read_bodies = Arc::clone(&read_bodies);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        let lower = head.to_ascii_lowercase();
                        if lower.contains("\r\ntransfer-encoding: chunked") {
                            if read_until(&mut stream, &mut buf, b"0\r\n\r\n")
                                .await
                                .is_none()
                            {
                                return;
                            }
                            buf.clear();
                        } else if let Some(n) = lower
                            .split("\r\ncontent-length: ")
                            .nth(1)
                            .and_then(|v| v.split("\r\n").next())
                            .and_then(|v| v.parse::<usize>().ok())
                        {
                            while buf.len() < n {
                                let mut chunk = [0u8; 4096];
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                                }
                            }
                            read_bodies.lock().unwrap().push(buf.drain(..n).collect());
                        }
                        seen.lock().unwrap().push(head);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder {
            addr,
            heads,
            bodies,
            connections,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    fn last(&self) -> String {
        self.heads().pop().expect("the backend got a request")
    }
}

/// Reads into `buf` until it holds `marker`; the index just past it.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, marker: &[u8]) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(marker.len()).position(|w| w == marker) {
            return Some(at + marker.len());
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn gateway_for(backend: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "backends:\n  - {backend}\nhealth_check:\n  enabled: false\n{extra}"
    ))
}

/// Sends raw bytes and reads the whole answer, until the gateway closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway closes")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn a_request_without_exactly_one_valid_host_is_refused() {
    let backend = Recorder::start(OK).await;
    let gw = gateway_for(&backend.url(""), "");
    for request in [
        &b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h.test/x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a@h.test\r\nConnection: close\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
        b"GET h.test:80 HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
        b"GET http://u@h.test/ HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    ] {
        let answer = exchange(gw.addr, request).await;
        assert_eq!(status_of(&answer), "400", "{answer}");
        assert!(answer.contains(r#"{"code":400,"message":"#), "{answer}");
    }
    assert!(backend.heads().is_empty(), "{:?}", backend.heads());
    // HTTP/1.0 has no Host requirement.
    let answer = exchange(gw.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&answer), "200", "{answer}");
}

#[tokio::test]
async fn absolute_form_wins_over_host_and_asterisk_is_only_for_options() {
    let backend = Recorder::start(OK).await;
    let gw = gateway_for(&backend.url(""), "");
    let answer = exchange(
        gw.addr,
        b"GET http://uri.test/abs?q=1 HTTP/1.1\r\nHost: host.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let head = backend.last();
    assert!(head.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: uri.test\r\n"), "{head}");
    assert!(!head.contains("host.test"), "{head}");

    let answer = exchange(
        gw.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(backend.last().starts_with("OPTIONS * HTTP/1.1\r\n"));
}

#[tokio::test]
async fn bad_names_are_refused_and_underscores_and_h2c_never_reach_a_backend() {
    let backend = Recorder::start(OK).await;
    let gw = gateway_for(&backend.url(""), "");
    let answer = exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nBad@Name: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "400", "{answer}");

    let answer = exchange(
        gw.addr,
        b"GET /u HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nX_Real_IP: 6.6.6.6\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let head = backend.last().to_ascii_lowercase();
    assert!(head.starts_with("get /u http/1.1\r\n"), "{head}");
    for absent in [
        "transfer_encoding",
        "x_real_ip",
        "upgrade",
        "h2c",
        "http2-settings",
    ] {
        assert!(
            !head.contains(absent),
            "{absent} reached the backend: {head}"
        );
    }
}

#[tokio::test]
async fn no_request_leaves_its_backend_prefix() {
    let backend = Recorder::start(OK).await;
    let gw = gateway_for(&backend.url("/api"), "");
    for (target, seen) in [
        ("/../admin", "/api/admin"),
        ("/%2e%2e/admin", "/api/admin"),
        ("/%2E%2e/%2e%2E/admin?x=/../", "/api/admin?x=/../"),
        ("/a/./b/../c", "/api/a/c"),
        ("/a/b/../../../..", "/api/"),
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let answer = exchange(gw.addr, request.as_bytes()).await;
        assert_eq!(status_of(&answer), "200", "{target}: {answer}");
        let head = backend.last();
        let expected = format!("GET {seen} HTTP/1.1\r\n");
        assert!(head.starts_with(&expected), "{target} became {head}");
    }
}

#[tokio::test]
async fn repeated_equal_lengths_from_a_backend_become_one_and_differing_ones_502() {
    let same = Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello").await;
    let gw = gateway_for(&same.url(""), "");
    let answer = exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert_eq!(lower.matches("content-length").count(), 1, "{answer}");
    assert!(lower.contains("\r\ncontent-length: 5\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");

    let differing =
        Recorder::start(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
            .await;
    let gw = gateway_for(&differing.url(""), "");
    let answer = exchange(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "502", "{answer}");
}

#[tokio::test]
async fn bad_chunk_lines_from_a_backend_get_502_and_the_connection_is_not_reused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\nb\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        let backend = Recorder::start(answer).await;
        let gw = gateway_for(&backend.url(""), "");
        for round in 1..=2 {
            let reply = exchange(
                gw.addr,
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(status_of(&reply), "502", "{reply}");
            assert!(!reply.contains("hello"), "{reply}");
            assert_eq!(backend.connections.load(Ordering::SeqCst), round, "reused");
        }
        let mut gw = gw;
        gw.wait_log(|l| l.contains("\"status\":502"), Duration::from_secs(5));
    }
}

/// Small uploads that arrive with their head are read by the gateway's own
/// codec: exact bytes to the backend, pipelined requests after a body
/// parsed from the right place, and a refused body (413, 429) consumed so
/// the connection goes on.
#[tokio::test]
async fn small_uploads_arriving_with_their_head_keep_the_connection_in_step() {
    let recorder = Recorder::start(OK).await;
    let gw = gateway_for(
        &recorder.url(""),
        "proxy:\n  max_body_bytes: 8\nrate_limit:\n  default:\n    capacity: 4\n    refill_per_second: 0.001\n",
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // One write: a body, a body that looks like a request, a bodiless GET,
    // an over-long body (413), then one more body.
    stream
        .write_all(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
              PUT /b HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\nGET /x H\
              GET /c HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n123456789\
              POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await
        .unwrap();
    let mut answers = Vec::new();
    let mut statuses = Vec::new();
    while statuses.len() < 5 {
        let end = tokio::time::timeout(
            Duration::from_secs(5),
            read_until(&mut stream, &mut answers, b"\r\n\r\n"),
        )
        .await
        .expect("five answers")
        .expect("the connection stays open");
        let head = String::from_utf8_lossy(&answers[..end]).to_ascii_lowercase();
        let length: usize = head
            .split("\r\ncontent-length: ")
            .nth(1)
            .and_then(|v| v.split("\r\n").next())
            .and_then(|v| v.parse().ok())
            .expect("every answer has a length");
        while answers.len() < end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed mid-answer");
            answers.extend_from_slice(&chunk[..n]);
        }
        statuses.push(head[9..12].to_owned());
        answers.drain(..end + length);
    }
    assert_eq!(statuses, ["200", "200", "200", "413", "429"]);
    let paths: Vec<String> = recorder
        .heads()
        .iter()
        .map(|h| h.split(' ').nth(1).unwrap_or("").to_owned())
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert_eq!(
        *recorder.bodies.lock().unwrap(),
        [b"hello".to_vec(), b"GET /x H".to_vec()]
    );
}

#[tokio::test]
async fn a_malformed_client_body_is_the_clients_fault() {
    let backend = TestBackend::start("b").await;
    let mut gw = Gateway::start(&config(&[&backend], ""));
    let answer = exchange(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
          ffffffffffffffffffff\r\nxx\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "400", "{answer}");
    assert!(answer.contains("Malformed request body"), "{answer}");
    let line = gw.wait_log(|l| l.contains("\"status\":400"), Duration::from_secs(5));
    assert!(line.contains("POST"), "{line}");

    // The backend is no worse for it: no failure counted, still in rotation.
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_backend_failures"))
        .collect();
    assert!(!failures.is_empty(), "{metrics}");
    assert!(failures.iter().all(|l| l.ends_with(" 0")), "{failures:?}");
    assert!(!gw.log_text().contains("backend_down"));
    let (status, _, _) = get(&client(), &gw.url("/")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_trickling_uploads_do_not_starve_the_pool() {
    let backend = TestBackend::start("b").await;
    let gw = Gateway::start(&config(
        &[&backend],
        "proxy:\n  client_body_timeout: 1s\n  max_backend_connections: 2\n",
    ));
    // Twenty clients trickle a small body a byte at a time.
    let mut tricklers = Vec::new();
    for _ in 0..20 {
        let addr = gw.addr;
        tricklers.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            for byte in b"abcdef" {
                tokio::time::sleep(Duration::from_millis(400)).await;
                stream.write_all(&[*byte]).await.unwrap();
            }
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile ordinary requests go through at once.
    let started = Instant::now();
    for _ in 0..5 {
        let (status, _, _) = get(&client(), &gw.url("/")).await;
        assert_eq!(status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    for trickler in tricklers {
        let answer = trickler.await.unwrap();
        assert_eq!(status_of(&answer), "200", "{answer}");
        assert!(answer.ends_with("\r\n\r\n6"), "{answer}");
    }

    // A body that stops arriving is answered 408 after the gap.
    let started = Instant::now();
    let answer = exchange(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert_eq!(status_of(&answer), "408", "{answer}");
    assert!(
        answer.contains(r#""message":"Client body timeout""#),
        "{answer}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Streamed bodies too.
    let answer = exchange(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), "408", "{answer}");
}

#[tokio::test]
async fn a_client_gone_before_its_answer_is_logged_499_with_its_backend() {
    let backend = TestBackend::start("slowpoke").await;
    let mut gw = Gateway::start(&config(&[&backend], ""));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    let line = gw.wait_log(|l| l.contains("\"status\":499"), Duration::from_secs(5));
    let name = format!("\"backend\":\"{}\"", backend.url());
    assert!(line.contains(&name), "{line}");
    let (_, _, metrics) = get(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            r#"gateway_requests_total{{route="default",pool="default",backend="{}",class="4xx"}} 1"#,
            backend.url()
        )),
        "{metrics}"
    );
}

/// The lowest descriptor number a process does not use: the number its
/// next socket would get.
fn lowest_free_fd(pid: u32) -> usize {
    let open: std::collections::HashSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap()
}

fn set_fd_limit(pid: u32, limit: usize) {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:"))
        .status()
        .expect("prlimit runs");
    assert!(status.success());
}

#[tokio::test]
async fn out_of_file_descriptors_fails_the_request_not_the_backend() {
    let backend = TestBackend::start("b").await;
    // No health probes: their connections would come and go and free descriptors.
    let mut gw = Gateway::start(&config(
        &[&backend],
        "proxy:\n  workers: 1\nhealth_check:\n  enabled: false\n",
    ));
    // Clients connected and accepted, nothing sent: no backend connection yet.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = gw.pid();
    set_fd_limit(pid, lowest_free_fd(pid));
    // Newer clients wait in the accept queue, and the failed accepts are logged once a second.
    let mut waiting = Vec::new();
    for _ in 0..20 {
        waiting.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every fd is taken: the connect to the backend fails with EMFILE.
    // (Answered with a close, the client's own descriptor is then free again.)
    let stream = &mut clients[0];
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), "503", "{answer}");
    assert!(
        answer.contains("Gateway out of local resources"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let accept_lines = gw.count_log(|l| l.contains("accept failed"));
    assert!(
        (1..=4).contains(&accept_lines),
        "{accept_lines} accept lines"
    );
    assert!(gw.log_text().contains("\"repeated\":"), "{}", gw.log_text());
    assert!(!gw.log_text().contains("backend_down"), "{}", gw.log_text());

    set_fd_limit(pid, 4096);
    drop((clients, waiting));
    let (status, _, body) = get(&client(), &gw.url("/")).await;
    assert_eq!(status, 200, "{body}");
    gw.wait_log(|l| l.contains("\"status\":200"), Duration::from_secs(5));
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test]
async fn an_idle_keep_alive_connection_costs_under_4_kib() {
    const CONNECTIONS: usize = 2000;
    let backend = TestBackend::start("b").await;
    let gw = Gateway::start(&config(
        &[&backend],
        "proxy:\n  workers: 1\nhealth_check:\n  enabled: false\n",
    ));
    // One request on each connection, then silence; 50 at a time.
    async fn one(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n\r\nb") {
            let mut chunk = [0u8; 512];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        stream
    }
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(one(gw.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = rss(gw.pid());
    for _ in 0..CONNECTIONS / 50 {
        let batch: Vec<_> = (0..50).map(|_| tokio::spawn(one(gw.addr))).collect();
        for task in batch {
            idle.push(task.await.unwrap());
        }
    }
    // Past the one-second linger every connection has given its buffers
    // back; the allocator returns the freed pages to the system within its
    // purge delay (mimalloc: seconds), which it checks as it works, so a
    // request now and then keeps the worker doing what a live one does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let per_connection = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, _, _) = get(&client(), &gw.url("/")).await;
        assert_eq!(status, 200);
        let per_connection = rss(gw.pid()).saturating_sub(before) / CONNECTIONS as u64;
        if per_connection <= 4096 || Instant::now() > deadline {
            break per_connection;
        }
    };
    eprintln!("{per_connection} bytes per idle connection");
    assert!(
        per_connection <= 4096,
        "{per_connection} bytes per idle connection"
    );
    // They are still served.
    let mut last = idle.pop().unwrap();
    last.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    last.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

/// The limiter's `RateLimit` fields are the gateway's alone, whichever side
/// serves the connection: the own codec writes them with the head, hyper
/// (HTTP/1.0, chunked uploads) gets them in the map; a backend's own
/// fields of those names never reach the client.
#[tokio::test]
async fn the_gateways_ratelimit_fields_replace_a_backends_on_every_path() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nRateLimit: \"backend\";r=1;t=1\r\n\
        RateLimit-Policy: \"backend\";q=1;w=1\r\nContent-Length: 2\r\n\r\nok";
    let recorder = Recorder::start(ANSWER).await;
    let gw = gateway_for(
        &recorder.url(""),
        "rate_limit:\n  default:\n    capacity: 100\n    refill_per_second: 1\n",
    );
    let requests: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          2\r\nhi\r\n0\r\n\r\n",
    ];
    for (sent, request) in requests.iter().enumerate() {
        let answer = exchange(gw.addr, request).await;
        let lower = answer.to_ascii_lowercase();
        assert_eq!(status_of(&answer), "200", "{answer}");
        assert_eq!(lower.matches("\r\nratelimit: ").count(), 1, "{answer}");
        assert_eq!(
            lower.matches("\r\nratelimit-policy: ").count(),
            1,
            "{answer}"
        );
        assert!(
            lower.contains("\r\nratelimit-policy: \"default\";q=100;w=100\r\n"),
            "{answer}"
        );
        let state = format!("\r\nratelimit: \"default\";r={};t=", 99 - sent);
        assert!(lower.contains(&state), "{state:?} in {answer}");
        assert!(!lower.contains("backend"), "{answer}");
    }
}
