//! `/metrics` in both exposition formats, read by the Prometheus Python
//! client's parsers (pip install -r tests/requirements.txt): Prometheus text
//! 0.0.4 by default, OpenMetrics when `Accept` asks for it; every family has
//! a type and its samples, process metrics included; `HEAD` answers too.

use crate::support::{Gateway, TestBackend, client, get, send};
use std::io::Write;
use std::process::{Command, Stdio};

fn parse(format: &str, body: &str) -> serde_json::Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/metrics/parse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(format)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser refused the body ({}):\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn metrics_parse_in_the_format_their_content_type_names() {
    let backend = TestBackend::start("m").await;
    let gw = Gateway::start(&crate::support::config(&[&backend], ""));
    let http = client();
    for _ in 0..3 {
        assert_eq!(get(&http, &gw.url("/hello")).await.0, 200);
    }
    let upload = http::Request::post(gw.url("/upload"))
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            5000
        ])))
        .unwrap();
    assert_eq!(send(&http, upload).await.2, "5000");
    let (status, headers, body) = get(&http, &gw.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let families = parse("prometheus", &body);
    for (name, family) in families.as_object().unwrap() {
        assert_ne!(family["type"], "unknown", "{name} has no type: {body}");
        assert!(
            !family["samples"].as_array().unwrap().is_empty()
                || name.starts_with("gateway_ratelimit")
                || name.starts_with("gateway_plugin")
                || name.starts_with("gateway_failovers"),
            "{name} lost its samples: {body}"
        );
    }
    let requests = &families["gateway_requests"];
    assert_eq!(requests["type"], "counter");
    let ok: f64 = requests["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[1]["class"] == "2xx")
        .map(|s| s[2].as_f64().unwrap())
        .sum();
    assert_eq!(ok, 4.0, "{body}");
    for process in [
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(families.get(process).is_some(), "{process} missing: {body}");
    }
    let received: f64 = families["gateway_received_bytes"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[2].as_f64().unwrap())
        .sum();
    assert_eq!(received, 5000.0, "{body}");
    let sent = &families["gateway_sent_bytes"]["samples"];
    assert!(
        sent.as_array()
            .unwrap()
            .iter()
            .any(|s| s[2].as_f64().unwrap() >= 3.0),
        "{body}"
    );

    let request = http::Request::get(gw.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text; version=1.0.0,text/plain;q=0.5",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&http, request).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let families = parse("openmetrics", &body);
    assert_eq!(families["gateway_requests"]["type"], "counter");

    let request = http::Request::head(gw.admin_url("/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(&http, request).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(body.is_empty());
}
