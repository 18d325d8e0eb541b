//! Test fixtures: the real `gateway` binary started with a YAML file, real
//! HTTP backends on loopback, and a small HTTP client.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// A running gateway process; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTPS listener, when the file has `tls`.
    pub https: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the binary with `yaml` (listen and admin addresses are forced to
    /// ephemeral loopback ports) and waits until it listens.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with(yaml, &[])
    }

    pub fn start_with(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::launch(yaml, env, true)
    }

    /// Starts with the proxy address the file's `listen` gives (a reload
    /// can then move it).
    pub fn start_listening_as_written(yaml: &str) -> Gateway {
        Self::launch(yaml, &[], false)
    }

    fn launch(yaml: &str, env: &[(&str, &str)], ephemeral_listen: bool) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut command = Command::new(BIN);
        command.args(["run", "-c"]).arg(&path);
        if ephemeral_listen {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start gateway");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut gateway = Gateway {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: None,
            logs,
            _dir: dir,
        };
        let started = gateway.wait_log(
            |l| l.contains(r#""event":"listening""#),
            Duration::from_secs(20),
        );
        let started: serde_json::Value = serde_json::from_str(&started).expect("json log line");
        gateway.addr = started["proxy"].as_str().unwrap().parse().unwrap();
        gateway.admin = started["admin"].as_str().unwrap().parse().unwrap();
        gateway.https = started["https"].as_str().map(|a| a.parse().unwrap());
        gateway
    }

    /// Waits for a log line matching `pred`; panics with the log on timeout.
    pub fn wait_log(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited with {status}; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "log line not seen in time; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count_log(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.logs.lock().unwrap().iter().filter(|l| pred(l)).count()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A protected admin call with the tests' token (`test-token`): status and body.
    pub async fn admin_call(&self, method: &str, path: &str) -> (u16, String) {
        let (status, _, body) = send(
            &client(),
            request(
                method,
                &self.admin_url(path),
                &[("authorization", "Bearer test-token")],
                "",
            ),
        )
        .await;
        (status.as_u16(), body)
    }

    /// The configuration file the gateway was started with (a reload reads it again).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("gateway.yaml")
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test backend on loopback that answers with its name and counts hits
/// (health-check probes are not counted).
///
/// Routes: `/headers` echoes request headers as JSON; `/slow?ms=N` waits;
/// `/upload` counts the request body; `/download?bytes=N` streams N bytes;
/// `/upgrade` switches protocols and echoes bytes; `/status?code=N`;
/// anything else answers the backend's name.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a specific address (to revive a backend that was stopped).
    /// The accept queue is as deep as a production server's (nginx asks
    /// for 511, Go for `somaxconn`), not `TcpListener::bind`'s 128: the
    /// backend runs in the test process, which is busy being 4,000 clients
    /// in some tests, and a full queue would drop the gateway's connects.
    pub async fn start_on(name: &str, addr: SocketAddr) -> TestBackend {
        let listener = gateway::listen::bind(addr).expect("bind backend");
        Self::serve(name, listener, None)
    }

    /// A backend that speaks HTTPS (HTTP/1.1) with `tls`.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> TestBackend {
        let listener = gateway::listen::bind("127.0.0.1:0".parse().unwrap()).expect("bind backend");
        Self::serve(name, listener, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn serve(
        name: &str,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let backend_name = name.to_owned();
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => break,
                };
                let name = backend_name.clone();
                let hits = Arc::clone(&counter);
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let probe = req
                            .headers()
                            .get("user-agent")
                            .is_some_and(|ua| ua == "gateway-health-check");
                        if !probe {
                            hits.fetch_add(1, Ordering::SeqCst);
                        }
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(route(&name, req).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            // HTTP/1.1 or HTTP/2, as the client chose by ALPN.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
            // Dropping the set aborts every open connection: the backend is really gone.
            connections.abort_all();
        });
        TestBackend {
            name: name.to_owned(),
            addr,
            hits,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection.
    pub async fn stop(mut self) -> SocketAddr {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.addr
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type TestBody = http_body_util::Either<Full<Bytes>, Pattern>;

fn query_num(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn route(name: &str, mut req: Request<Incoming>) -> Response<TestBody> {
    let text = |s: String| Response::new(http_body_util::Either::Left(Full::new(Bytes::from(s))));
    match req.uri().path() {
        "/headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            text(serde_json::Value::Object(map).to_string())
        }
        "/slow" => {
            let ms = query_num(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(name.to_owned())
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            text(total.to_string())
        }
        "/download" => {
            let bytes = query_num(&req, "bytes").unwrap_or(0);
            Response::new(http_body_util::Either::Right(Pattern::new(bytes)))
        }
        "/status" => {
            let code = query_num(&req, "code").unwrap_or(200) as u16;
            let mut r = text(name.to_owned());
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            r
        }
        "/upgrade" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = text(String::new());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r
        }
        _ => {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let path = http::HeaderValue::from_str(path).unwrap();
            let mut r = text(name.to_owned());
            let version = format!("{:?}", req.version());
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            r.headers_mut().insert("x-path", path);
            r.headers_mut()
                .insert("x-version", version.parse().unwrap());
            r.headers_mut()
                .insert("connection", "x-internal".parse().unwrap());
            r.headers_mut()
                .insert("x-internal", "secret".parse().unwrap());
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            r.headers_mut()
                .insert("proxy-authenticate", "basic".parse().unwrap());
            r
        }
    }
}

/// A body of `remaining` bytes produced in 64 KiB chunks without allocating per chunk.
pub struct Pattern {
    remaining: u64,
    chunk: Bytes,
}

impl Pattern {
    pub fn new(bytes: u64) -> Self {
        Pattern {
            remaining: bytes,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address
/// is this host), so one test can play several client addresses.
pub fn client_from(source: std::net::IpAddr) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(source));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A GET; returns status, headers and body text.
pub async fn get(client: &HttpClient, url: &str) -> (StatusCode, http::HeaderMap, String) {
    send(
        client,
        Request::get(url).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

pub async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String) {
    let response = client.request(req).await.expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// YAML for a gateway in front of `backends`, plus `extra` top-level sections.
pub fn config(backends: &[&TestBackend], extra: &str) -> String {
    let mut yaml = String::from("backends:\n");
    for b in backends {
        yaml.push_str(&format!("  - {}\n", b.url()));
    }
    yaml.push_str("admin:\n  token: test-token\n");
    yaml.push_str(extra);
    yaml
}

/// A loopback address with nothing listening on it.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A backend that accepts connections and closes them without answering.
pub async fn rude_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            });
        }
    });
    addr
}

/// PostgreSQL for tests from `GATEWAY_TEST_POSTGRES`; without it the test
/// says loudly that it skipped (and fails when `GATEWAY_TEST_REQUIRE_SERVICES` is set).
pub fn postgres() -> Option<String> {
    match std::env::var("GATEWAY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("GATEWAY_TEST_REQUIRE_SERVICES").is_none(),
                "GATEWAY_TEST_POSTGRES is not set but GATEWAY_TEST_REQUIRE_SERVICES is: refusing to skip"
            );
            eprintln!("SKIPPED: GATEWAY_TEST_POSTGRES is not set; this test needs PostgreSQL");
            None
        }
    }
}

/// A database URL whose connections see a new, empty schema.
pub async fn fresh_pg(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("gw_e2e_{}", fastrand::u64(..));
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// A request with headers, empty body.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// Runs `gateway` with arguments; returns exit code and combined output.
pub fn run_cli(args: &[&str]) -> (Option<i32>, String) {
    run_cli_in(args, &std::env::temp_dir())
}

/// Runs `gateway` in `dir` (where a default `gateway.yaml` would be looked for).
pub fn run_cli_in(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("GATEWAY_CONFIG")
        .env_remove("GATEWAY_DATABASE")
        .output()
        .expect("run gateway");
    (out.status.code(), printed(&out))
}

/// What a finished command wrote, stdout then stderr.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds the example plugins (and the test plugin) from source once per
/// test run; returns the path of the component `name` (e.g. `sticky`).
pub fn plugin(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = BUILT.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(root.join("plugins/Cargo.toml"))
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!(
            "building the plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{e}"
        );
    }
    root.join(format!("plugins/target/wasm32-wasip2/release/{name}.wasm"))
}

/// Builds a plugin written in another language once per test run, with
/// `command` run in `dir` (relative to the repository) writing `out`.
fn foreign_plugin(
    out: &str,
    dir: &str,
    program: &str,
    args: &[&str],
    missing: &str,
) -> std::path::PathBuf {
    static BUILT: Mutex<Vec<(String, Result<(), String>)>> = Mutex::new(Vec::new());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(out);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|(o, _)| o == out) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let result = match Command::new(program)
            .args(args)
            .arg(&path)
            .current_dir(root.join(dir))
            .output()
        {
            Err(e) => Err(format!("cannot run {program} ({e}); {missing}")),
            // `plugin check` compiles the component into the gateway's
            // cache, so a gateway started with it later is up at once.
            Ok(o) if o.status.success() => match Command::new(BIN)
                .args(["plugin", "check"])
                .arg(&path)
                .output()
            {
                Ok(c) if c.status.success() => Ok(()),
                Ok(c) => Err(String::from_utf8_lossy(&c.stdout).into_owned()),
                Err(e) => Err(format!("cannot run the gateway: {e}")),
            },
            Ok(o) => Err(format!(
                "{program} failed:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )),
        };
        built.push((out.to_owned(), result));
    }
    let failed = built
        .iter()
        .find(|(o, _)| o == out)
        .and_then(|(_, r)| r.clone().err());
    drop(built);
    if let Some(e) = failed {
        panic!("building {out} failed: {e}");
    }
    path
}

/// The Python example (`plugins/python/<name>/app.py`, world `world`),
/// built with componentize-py.
pub fn python_plugin(name: &str, world: &str) -> std::path::PathBuf {
    foreign_plugin(
        &format!("plugins/target/python/{name}.wasm"),
        &format!("plugins/python/{name}"),
        "componentize-py",
        &[
            "-d",
            "../../../wit",
            "-w",
            world,
            "componentize",
            "app",
            "-o",
        ],
        "install it with `pip install -r plugins/python/requirements.txt`",
    )
}

/// The JavaScript example (`plugins/javascript/<name>/<name>.js`, world
/// `world`), built with componentize-js.
pub fn javascript_plugin(name: &str, world: &str) -> std::path::PathBuf {
    let source = format!("{name}/{name}.js");
    foreign_plugin(
        &format!("plugins/target/javascript/{name}.wasm"),
        "plugins/javascript",
        "node_modules/.bin/componentize-js",
        &[&source, "--wit", "../../wit", "--world-name", world, "-o"],
        "install it with `npm ci --prefix plugins/javascript`",
    )
}

/// The status of a GET of `/` through `gw` with `X-API-Key: key`.
pub async fn call_with_api_key(client: &HttpClient, gw: &Gateway, key: &str) -> u16 {
    send(
        client,
        request("GET", &gw.url("/"), &[("x-api-key", key)], ""),
    )
    .await
    .0
    .as_u16()
}

/// Redis for tests from `GATEWAY_TEST_REDIS`; skips loudly without it (fails
/// when `GATEWAY_TEST_REQUIRE_SERVICES` is set).
pub fn redis_url() -> Option<String> {
    match std::env::var("GATEWAY_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("GATEWAY_TEST_REQUIRE_SERVICES").is_none(),
                "GATEWAY_TEST_REDIS is not set but GATEWAY_TEST_REQUIRE_SERVICES is: refusing to skip"
            );
            eprintln!("SKIPPED: GATEWAY_TEST_REDIS is not set; this test needs Redis");
            None
        }
    }
}

/// A private `redis-server` on its own loopback port, for outage tests; killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for outage tests");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private nginx (Debian's package) on a loopback port, proxying to
/// `upstream` and appending the client to `X-Forwarded-For` as a usual
/// front proxy does. `None` (loudly) when nginx is not installed, which
/// fails under `GATEWAY_TEST_REQUIRE_SERVICES`.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(upstream: SocketAddr) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("GATEWAY_TEST_REQUIRE_SERVICES").is_none(),
                "nginx is not installed but GATEWAY_TEST_REQUIRE_SERVICES is: refusing to skip"
            );
            eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://{upstream};\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nginx {
            child,
            addr,
            _dir: dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
