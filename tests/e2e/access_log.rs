//! The access log, line by line: the request id (kept from the client or
//! made, sent to the backend, returned), the backend also on 502 and 504,
//! 499 for a client that went away, the real size of the gateway's own
//! answers, durations in milliseconds with at most three decimals.

use crate::support::{Gateway, TestBackend, client, rude_backend, send};
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn access_lines(gw: &Gateway, path: &str) -> Vec<serde_json::Value> {
    gw.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "access" && l["path"].as_str() == Some(path))
        .collect()
}

fn get(url: String, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn access_lines_carry_the_request_id_backend_status_and_size() {
    let b = TestBackend::start("b").await;
    let rude = rude_backend().await;
    let db = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"backends: [{b}]
admin:
  token: test-token
log:
  level: info
rate_limit:
  database: sqlite://{db}/limits.db
  default: {{capacity: 1000, refill_per_second: 1000}}
pools:
  rude:
    backends: [http://{rude}]
    retries: 0
    health_check: {{interval: 1h}}
  slow:
    backends: [{b}]
    request_timeout: 200ms
    health_check: {{interval: 1h}}
routes:
  - match: {{path_prefix: /rude}}
    pool: rude
  - match: {{path_prefix: /slow, headers: {{x-timeout: "1"}}}}
    pool: slow
  - match: {{path_prefix: /limited}}
    pool: default
    rate_limit: {{capacity: 1, refill_per_second: 0.001}}
  - match: {{path_prefix: /}}
    pool: default
"#,
        b = b.url(),
        db = db.path().display(),
    );
    let mut gw = Gateway::start(&yaml);
    let http = client();

    // The client's id is kept, returned and logged.
    let (status, headers, _) =
        send(&http, get(gw.url("/mine"), &[("x-request-id", "trace-42")])).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "trace-42");
    // Without one the gateway makes one; the backend sees the same.
    let (_, headers, body) = send(&http, get(gw.url("/headers"), &[])).await;
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-request-id"], id.as_str());

    let (status, headers, _) = send(&http, get(gw.url("/rude"), &[])).await;
    assert_eq!(status, 502);
    assert!(headers.contains_key("x-request-id"));
    let (status, _, _) = send(&http, get(gw.url("/slow?ms=1000"), &[("x-timeout", "1")])).await;
    assert_eq!(status, 504);
    assert_eq!(send(&http, get(gw.url("/limited"), &[])).await.0, 200);
    let (status, headers, body) = send(&http, get(gw.url("/limited"), &[])).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("x-request-id"));
    let refusal_size = body.len() as u64;

    // A client that goes away before its answer: 499.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    raw.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(raw);
    gw.wait_log(
        |l| l.contains(r#""target":"access""#) && l.contains(r#""status":499"#),
        Duration::from_secs(5),
    );

    let mine = &access_lines(&gw, "/mine")[0];
    assert_eq!(mine["request_id"], "trace-42", "{mine}");
    assert_eq!(mine["backend"], b.url().as_str(), "{mine}");
    let ms = mine["duration_ms"].as_f64().expect("a number");
    let text = mine["duration_ms"].to_string();
    assert!(
        text.split_once('.')
            .is_none_or(|(_, decimals)| decimals.len() <= 3),
        "{text}"
    );
    assert!(ms > 0.0);
    assert_eq!(access_lines(&gw, "/headers")[0]["request_id"], id.as_str());
    let rude_line = &access_lines(&gw, "/rude")[0];
    assert_eq!(rude_line["status"], 502);
    assert_eq!(
        rude_line["backend"],
        format!("http://{rude}").as_str(),
        "{rude_line}"
    );
    let slow = &access_lines(&gw, "/slow?ms=1000")[0];
    assert_eq!(slow["status"], 504);
    assert_eq!(slow["backend"], b.url().as_str(), "{slow}");
    let limited = access_lines(&gw, "/limited");
    assert_eq!(limited[1]["status"], 429);
    assert_eq!(limited[1]["bytes"], refusal_size, "{}", limited[1]);
    assert!(refusal_size > 0);
    let gone = &access_lines(&gw, "/slow?ms=3000")[0];
    assert_eq!(gone["status"], 499);
    assert_eq!(gone["backend"], b.url().as_str(), "{gone}");
}

/// `log.access_file`: access lines go to the file, not the log; after a
/// logrotate-style move, SIGUSR1 makes the gateway write a new file.
#[tokio::test]
async fn the_access_file_is_reopened_on_sigusr1() {
    let b = TestBackend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let yaml = format!(
        "backends: [{}]\nlog:\n  access_file: {}\n",
        b.url(),
        file.display()
    );
    let mut gw = Gateway::start(&yaml);
    let http = client();
    assert_eq!(send(&http, get(gw.url("/before"), &[])).await.0, 200);
    let wait_for = |path: &std::path::Path, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{needle} not in {}: {text}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let text = wait_for(&file, "/before");
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], 200);
    assert!(
        access_lines(&gw, "/before").is_empty(),
        "not in the main log too"
    );

    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    gw.signal("USR1");
    gw.wait_log(|l| l.contains("sigusr1"), Duration::from_secs(5));
    assert_eq!(send(&http, get(gw.url("/after"), &[])).await.0, 200);
    wait_for(&file, "/after");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");
}
