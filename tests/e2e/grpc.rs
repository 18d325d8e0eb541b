//! gRPC through the gateway with a real gRPC server and client (grpcio):
//! HTTP/2 to the backend (`protocol: h2c`), trailers and `grpc-status`
//! passed through, server streaming, and the gateway's own refusals (rate
//! limit, no backend) as gRPC statuses a client understands.

use crate::support::{Gateway, dead_addr};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/grpc/echo.py")
}

/// The Python gRPC echo server; killed when dropped.
struct EchoServer {
    child: Child,
    port: u16,
}

impl EchoServer {
    fn start() -> EchoServer {
        let mut child = Command::new("python3")
            .arg(script())
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| {
                panic!(
                    "gRPC server did not start (pip install -r tests/requirements.txt): {line:?}"
                )
            })
            .parse()
            .unwrap();
        EchoServer { child, port }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One call through `target`: the client's JSON report.
fn call(target: std::net::SocketAddr, method: &str, payload: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(script())
        .args(["call", &target.to_string(), method, payload])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "no report from the gRPC client: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_passes_end_to_end_and_refusals_are_grpc_statuses() {
    let server = EchoServer::start();
    let dead = dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"rate_limit:
  database: sqlite://{db}/limits.db
  default: {{capacity: 1000, refill_per_second: 1000}}
pools:
  echo:
    backends: [http://127.0.0.1:{port}]
    protocol: h2c
  gone:
    backends: [http://{dead}]
    protocol: h2c
    health_check: {{interval: 1h}}
    retries: 0
routes:
  - match: {{path: /test.Echo/Stream}}
    pool: echo
    rate_limit: {{capacity: 2, refill_per_second: 0.001}}
  - match: {{path: /test.Echo/Gone}}
    pool: gone
  - match: {{path_prefix: /test.Echo}}
    pool: echo
"#,
        db = dir.path().display(),
        port = server.port,
    );
    let gw = Gateway::start(&yaml);
    let addr = gw.addr;
    let report = tokio::task::spawn_blocking(move || {
        [
            call(addr, "Say", "hello"),
            call(addr, "Fail", "no such thing"),
            call(addr, "Stream", "s"),
            call(addr, "Stream", "s"),
            call(addr, "Stream", "s"),
            call(addr, "Gone", "x"),
        ]
    })
    .await
    .unwrap();
    let [say, fail, stream, _, limited, gone] = report;
    assert_eq!(say["code"], "OK", "{say}");
    assert_eq!(say["reply"], "echo:hello");
    assert_eq!(
        say["trailers"]["x-served-by"], "echo",
        "trailers pass: {say}"
    );
    assert_eq!(fail["code"], "NOT_FOUND", "{fail}");
    assert_eq!(fail["details"], "no such thing");
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["reply"], "s0|s1|s2");
    assert_eq!(limited["code"], "RESOURCE_EXHAUSTED", "{limited}");
    assert_eq!(limited["details"], "Rate limit exceeded");
    assert_eq!(gone["code"], "UNAVAILABLE", "{gone}");
}
