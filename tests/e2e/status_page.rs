//! The admin status page in a real browser (Debian's headless Chromium,
//! driven by tests/browser/status_page.py with selenium): it asks for the
//! token, shows the backends with their request rate and latency
//! sparklines rising under traffic, sees one go down and come back, lists the
//! client being refused, and creates and edits a per-client limit through
//! the admin API — which the test then reads back.

use crate::support::{Gateway, TestBackend, client, client_from, get};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

fn browser_installed() -> bool {
    let found = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new("/usr/bin/chromedriver").exists();
    if !found {
        assert!(
            std::env::var_os("GATEWAY_TEST_REQUIRE_SERVICES").is_none(),
            "chromium and chromium-driver are not installed but GATEWAY_TEST_REQUIRE_SERVICES is: refusing to skip"
        );
        eprintln!("SKIPPED: apt-get install chromium chromium-driver for the status page test");
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_health_and_edits_limits_in_a_browser() {
    if !browser_installed() {
        return;
    }
    let steady = TestBackend::start("steady").await;
    let flaky = TestBackend::start("flaky").await;
    let db = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"backends: [{steady}, {flaky}]
health_check: {{interval: 200ms, unhealthy_threshold: 1, healthy_threshold: 1}}
admin:
  token: test-token
rate_limit:
  database: sqlite://{db}/limits.db
  default: {{capacity: 3, refill_per_second: 0.01}}
"#,
        steady = steady.url(),
        flaky = flaky.url(),
        db = db.path().display(),
    );
    let gw = Gateway::start(&yaml);
    let http = client();
    let (status, headers, page) = get(&http, &gw.admin_url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    for _ in 0..5 {
        get(&http, &gw.url("/")).await;
    }

    let screenshot = std::env::var("GATEWAY_SCREENSHOT")
        .unwrap_or_else(|_| db.path().join("status.png").display().to_string());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/status_page.py");
    let mut browser = Command::new("python3")
        .arg(script)
        .args([&gw.admin_url(""), "test-token", &flaky.url(), &screenshot])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    let mut to_browser = browser.stdin.take().unwrap();
    let mut from_browser = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut expect = |step: &str| {
        let line = from_browser.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(
            line,
            step,
            "the browser stopped: {line} {:?}",
            from_browser.next()
        );
    };
    expect("LOGGED-IN");
    // Traffic the backends see: ten more clients (other loopback sources),
    // two requests each, inside their budget of 3.
    for last in 2..12u8 {
        let other = client_from(std::net::Ipv4Addr::new(127, 0, 0, last).into());
        for _ in 0..2 {
            assert_eq!(get(&other, &gw.url("/")).await.0, 200);
        }
    }
    writeln!(to_browser, "sent").unwrap();
    expect("SPARKED");
    let addr = flaky.stop().await;
    writeln!(to_browser, "stopped").unwrap();
    expect("SEEN-DOWN");
    let _flaky = TestBackend::start_on("flaky", addr).await;
    writeln!(to_browser, "started").unwrap();
    expect("SEEN-BACK");
    expect("LIMITED");
    expect("EDITED");
    expect("DONE");
    assert!(browser.wait().unwrap().success());

    let (status, body) = gw.admin_call("GET", "/clients/ip:10.9.8.7").await;
    assert_eq!(status, 200, "{body}");
    let client: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(client["capacity"], 77);
    assert_eq!(client["refill_per_second"], 4.0);
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
}
