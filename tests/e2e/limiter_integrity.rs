//! The limiter's promise from outside: no bucket grants more than
//! `capacity + refill × t`, whatever the workers do; no client reaches
//! another's bucket through a header value, an invented key or a byte in
//! `X-Forwarded-For`.

use crate::support::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const AUTH: (&str, &str) = ("authorization", "Bearer test-token");

fn limited(b: &TestBackend, db: &tempfile::TempDir, rate_limit: &str) -> String {
    format!(
        "backends:\n  - {}\nadmin:\n  token: test-token\nlog:\n  access: false\nrate_limit:\n  database: sqlite://{}\n  sync_interval: 200ms\n{rate_limit}",
        b.url(),
        db.path().join("limits.db").display()
    )
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Sends `request` over one keep-alive connection until `stop`; counts the
/// 200 answers (any other status but 429 fails the test).
fn hammer(addr: SocketAddr, request: &'static [u8], stop: &AtomicBool) -> u64 {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut allowed = 0;
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        writer.write_all(request).expect("send");
        line.clear();
        reader.read_line(&mut line).expect("status line");
        let status = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("content-length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        match status.as_str() {
            "200" => allowed += 1,
            "429" => {}
            other => panic!("unexpected status {other}"),
        }
    }
    allowed
}

/// Reproduction 1: two workers and a 1 ms tick used to grant one bucket
/// about twice its budget (a stale tick read as a full refill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_overshoot_one_bucket() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "proxy:\n  workers: 2\n{}",
        limited(
            &b,
            &db,
            "  key: header:X-Key\n  refill_interval: 1ms\n  default:\n    capacity: 50\n    refill_per_second: 5\n",
        )
    ));
    let addr = gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                hammer(
                    addr,
                    b"GET / HTTP/1.1\r\nHost: t\r\nX-Key: shared\r\n\r\n",
                    &stop,
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let allowed: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 50.0 + 5.0 * elapsed + 1.0;
    assert!(
        allowed as f64 <= bound,
        "{allowed} allowed in {elapsed:.2} s, bound {bound:.1}"
    );
    assert!(allowed >= 50, "only {allowed} allowed");
}

/// Reproduction 2: a header value that spells an address drew on that
/// address's bucket, and could claim its per-client override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_value_never_reaches_an_address_bucket() {
    let b = TestBackend::start("b").await;
    for policy in ["ip", "own"] {
        let db = tempfile::tempdir().unwrap();
        let gw = Gateway::start(&limited(
            &b,
            &db,
            &format!(
                "  key: header:X-API-Key\n  unknown_keys: {policy}\n  default:\n    capacity: 3\n    refill_per_second: 0.01\n"
            ),
        ));
        let attacker = client_from(ip("127.0.0.4"));
        let victim = client_from(ip("127.0.0.5"));
        let spoof = || request("GET", &gw.url("/"), &[("x-api-key", "127.0.0.5")], "");
        for _ in 0..3 {
            assert_eq!(send(&attacker, spoof()).await.0, 200, "{policy}");
        }
        assert_eq!(
            get(&victim, &gw.url("/")).await.0,
            200,
            "{policy}: 127.0.0.5 was charged for 127.0.0.4's header"
        );

        // An override for the address is not claimed by the header value.
        let create = request(
            "POST",
            &gw.admin_url("/clients"),
            &[AUTH],
            r#"{"client_id":"127.0.0.8","capacity":40,"refill_per_second":1}"#,
        );
        let (status, _, body) = send(&client(), create).await;
        assert_eq!(status, 201, "{body}");
        assert!(body.contains(r#""client_id":"ip:127.0.0.8""#), "{body}");
        let claim = request("GET", &gw.url("/"), &[("x-api-key", "127.0.0.8")], "");
        let (_, headers, _) = send(&client_from(ip("127.0.0.9")), claim).await;
        assert_eq!(
            headers["ratelimit-policy"], "\"default\";q=3;w=300",
            "{policy}"
        );
        let (_, headers, _) = get(&client_from(ip("127.0.0.8")), &gw.url("/")).await;
        assert_eq!(headers["ratelimit-policy"], "\"client\";q=40;w=40");
    }
}

/// Reproduction 3: rotating invented API keys bought a fresh bucket each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_keys_buy_nothing() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&limited(
        &b,
        &db,
        "  key: header:X-API-Key\n  default:\n    capacity: 3\n    refill_per_second: 0.01\n",
    ));
    let client = client();
    let mut statuses = Vec::new();
    for i in 0..6 {
        let key = format!("k{i}");
        let (status, _, _) = send(
            &client,
            request("GET", &gw.url("/"), &[("x-api-key", &key)], ""),
        )
        .await;
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429]);
    // A key with a row has its own budget.
    let create = request(
        "POST",
        &gw.admin_url("/clients"),
        &[AUTH],
        r#"{"client_id":"known","capacity":2,"refill_per_second":0.01}"#,
    );
    let (status, _, body) = send(&client, create).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(r#""client_id":"header:x-api-key:known""#),
        "{body}"
    );
    let as_known = || request("GET", &gw.url("/"), &[("x-api-key", "known")], "");
    assert_eq!(send(&client, as_known()).await.0, 200);
    assert_eq!(send(&client, as_known()).await.0, 200);
    assert_eq!(send(&client, as_known()).await.0, 429);
    // A key too long to be anyone's is charged to the address as well.
    let long = "x".repeat(300);
    let (status, _, _) = send(
        &client,
        request("GET", &gw.url("/"), &[("x-api-key", &long)], ""),
    )
    .await;
    assert_eq!(status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_reject_answers_401() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&limited(
        &b,
        &db,
        "  key: header:X-API-Key\n  unknown_keys: reject\n  default:\n    capacity: 3\n    refill_per_second: 0.01\n",
    ));
    let client = client();
    let (status, headers, body) = send(
        &client,
        request("GET", &gw.url("/"), &[("x-api-key", "k0")], ""),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"code":401,"message":"Unknown API key"}"#);
    assert_eq!(b.hits(), 0);
    let create = request(
        "POST",
        &gw.admin_url("/clients"),
        &[AUTH],
        r#"{"client_id":"header:X-API-Key:k0","capacity":5,"refill_per_second":1}"#,
    );
    assert_eq!(send(&client, create).await.0, 201);
    let (status, headers, _) = send(
        &client,
        request("GET", &gw.url("/"), &[("x-api-key", "k0")], ""),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["ratelimit-policy"], "\"client\";q=5;w=5");
    // No key at all is not an unknown key: the address's bucket.
    assert_eq!(get(&client, &gw.url("/")).await.0, 200);
    let (_, _, metrics) = get(&client, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"gateway_ratelimit_decisions_total{outcome="unknown_key"} 1"#),
        "{metrics}"
    );
}

/// Reproduction 4: behind a trusted nginx, one byte the client put in its
/// `X-Forwarded-For` made the gateway key it as nginx itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_byte_in_forwarded_for_does_not_move_the_client() {
    let b = TestBackend::start("b").await;
    let db = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "proxy:\n  trusted_proxies: [127.0.0.1/32]\n{}",
        limited(
            &b,
            &db,
            "  default:\n    capacity: 2\n    refill_per_second: 0.01\n",
        )
    ));
    let Some(nginx) = Nginx::start(gw.addr) else {
        return;
    };
    let behind = client_from(ip("127.0.0.4"));
    let garbage = || {
        let mut r = request("GET", &nginx.url("/"), &[], "");
        r.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        r
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send(&behind, garbage()).await.0.as_u16());
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429],
        "127.0.0.4 keeps its own bucket"
    );
    // nginx's own address (and so everyone behind it without a usable
    // header) was not charged.
    assert_eq!(get(&client(), &gw.url("/")).await.0, 200);
    assert_eq!(get(&client(), &gw.url("/")).await.0, 200);

    // The same bytes crafted by hand from the trusted address.
    let crafted = || {
        let mut r = request("GET", &gw.url("/"), &[], "");
        r.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"1.2.3.4\xfe, 127.0.0.6").unwrap(),
        );
        r
    };
    let trusted = client();
    assert_eq!(send(&trusted, crafted()).await.0, 200);
    assert_eq!(send(&trusted, crafted()).await.0, 200);
    assert_eq!(send(&trusted, crafted()).await.0, 429);
    assert_eq!(
        get(&client_from(ip("127.0.0.7")), &gw.url("/")).await.0,
        200
    );
}
