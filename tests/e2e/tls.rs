//! HTTPS: certificates by SNI, HTTP/2 by ALPN, `X-Forwarded-Proto`, the
//! redirect from the plain listener, certificates replaced while serving,
//! `https://` backends with a private CA, and client certificates as the
//! rate-limit identity. Every certificate is made by the test.

use crate::support::{Gateway, TestBackend};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A test CA, and a directory for the files it signs.
pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca: CertificateDer<'static>,
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            ca: cert.der().clone(),
            dir,
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A server certificate for `names`, written to `<file>.pem` and
    /// `<file>.key` (each replaced whole, by rename); returns it.
    pub fn server(&self, file: &str, names: &[&str]) -> CertificateDer<'static> {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        self.write(&format!("{file}.pem"), &cert.pem());
        self.write(&format!("{file}.key"), &key.serialize_pem());
        cert.der().clone()
    }

    /// The same, as rustls serves it (for test backends).
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }

    fn write(&self, file: &str, text: &str) {
        let temporary = self.path(&format!(".{file}.new"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, self.path(file)).unwrap();
    }

    /// A client trusting this CA, offering `alpn`, with an optional certificate.
    pub fn connector(
        &self,
        alpn: &[&[u8]],
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> TlsConnector {
        self.connector_sni(alpn, identity, true)
    }

    /// A client that sends SNI only when `sni` is set.
    pub fn connector_sni(
        &self,
        alpn: &[&[u8]],
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        sni: bool,
    ) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = sni;
        TlsConnector::from(Arc::new(config))
    }
}

/// A TLS connection to `addr` asking for `sni`.
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> TlsStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

pub fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 request on `stream`, the whole answer read (up to the
/// declared length: the connection stays open).
pub async fn exchange(stream: &mut TlsStream<TcpStream>, host: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    read_response(stream).await
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap_or(0);
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, format!("{head}\r\n\r\n{body}"));
            }
        }
        assert!(n > 0, "connection closed before a whole answer: {data:?}");
    }
}

fn tls_yaml(pki: &Pki, backends: &str, extra: &str) -> String {
    format!(
        r#"backends: [{backends}]
tls:
  listen: 127.0.0.1:0
  certificates:
    - {{cert: {a}.pem, key: {a}.key}}
    - {{cert: {b}.pem, key: {b}.key}}
{extra}"#,
        a = pki.path("a").display(),
        b = pki.path("b").display(),
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_the_backend_hears_https() {
    let backend = TestBackend::start("b1").await;
    let pki = Pki::new("sni CA");
    let a = pki.server("a", &["a.test"]);
    let b = pki.server("b", &["b.test", "*.c.test"]);
    let gw = Gateway::start(&tls_yaml(&pki, &backend.url(), ""));
    let https = gw.https.expect("https listener");
    for (sni, expected) in [("a.test", &a), ("b.test", &b), ("x.c.test", &b)] {
        let connector = pki.connector(&[b"http/1.1"], None);
        let stream = connect(&connector, https, sni).await;
        assert_eq!(&served_certificate(&stream), expected, "SNI {sni}");
    }
    // No SNI at all: the first certificate.
    let connector = pki.connector_sni(&[b"http/1.1"], None, false);
    let stream = connect(&connector, https, "a.test").await;
    assert_eq!(served_certificate(&stream), a);
    // Session resumption: a second connection from the same client resumes.
    let connector = pki.connector(&[b"http/1.1"], None);
    let mut first = connect(&connector, https, "a.test").await;
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // TLS 1.3 tickets come after the handshake, with the first answer.
    assert_eq!(exchange(&mut first, "a.test", "/").await.0, 200);
    drop(first);
    let mut stream = connect(&connector, https, "a.test").await;
    assert_eq!(
        stream.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let (status, answer) = exchange(&mut stream, "a.test", "/headers").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(r#""x-forwarded-proto":"https""#),
        "{answer}"
    );
    // Keep-alive: a second request on the same TLS connection.
    let (status, answer) = exchange(&mut stream, "a.test", "/hello").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("b1"), "{answer}");
    // A request with a body (the codec hands the connection to hyper
    // mid-stream, TLS and all), then another on the same connection.
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello world",
        )
        .await
        .unwrap();
    let (status, answer) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("\r\n\r\n11"), "{answer}");
    let (status, answer) = exchange(&mut stream, "a.test", "/after").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("x-path: /after"), "{answer}");
    // The plain listener keeps working beside it, as http.
    let (_, _, body) = crate::support::get(&crate::support::client(), &gw.url("/headers")).await;
    assert!(body.contains(r#""x-forwarded-proto":"http""#), "{body}");
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_served() {
    let backend = TestBackend::start("h2").await;
    let pki = Pki::new("h2 CA");
    pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    let gw = Gateway::start(&tls_yaml(&pki, &backend.url(), ""));
    let connector = pki.connector(&[b"h2", b"http/1.1"], None);
    let stream = connect(&connector, gw.https.unwrap(), "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("https://a.test/headers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(r#""x-forwarded-proto":"https""#), "{body}");
    // Several streams at once on the one connection, with bodies.
    let mut answers = Vec::new();
    for i in 0..8 {
        let request = http::Request::post("https://a.test/upload")
            .body(Full::new(Bytes::from(vec![b'x'; 1000 * (i + 1)])))
            .unwrap();
        answers.push(sender.send_request(request));
    }
    for (i, answer) in answers.into_iter().enumerate() {
        let response = answer.await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, (1000 * (i + 1)).to_string());
    }
}

#[tokio::test]
async fn redirect_http_sends_the_plain_listener_to_https() {
    let backend = TestBackend::start("r").await;
    let pki = Pki::new("redirect CA");
    pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    let gw = Gateway::start(&tls_yaml(&pki, &backend.url(), "  redirect_http: true\n"));
    let port = gw.https.unwrap().port();
    let mut plain = TcpStream::connect(gw.addr).await.unwrap();
    plain
        .write_all(b"POST /x/y?z=1 HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let (status, answer) = read_response(&mut plain).await;
    assert_eq!(status, 308, "{answer}");
    let location = format!("location: https://a.test:{port}/x/y?z=1");
    assert!(answer.to_ascii_lowercase().contains(&location), "{answer}");
    assert_eq!(backend.hits(), 0);
    // HTTPS itself is served, not redirected.
    let connector = pki.connector(&[b"http/1.1"], None);
    let mut stream = connect(&connector, gw.https.unwrap(), "a.test").await;
    let (status, _) = exchange(&mut stream, "a.test", "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn replaced_certificate_files_reach_new_handshakes_without_dropping_connections() {
    let backend = TestBackend::start("c").await;
    let pki = Pki::new("reload CA");
    let old = pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    let mut gw = Gateway::start(&tls_yaml(&pki, &backend.url(), ""));
    let https = gw.https.unwrap();
    let connector = pki.connector(&[b"http/1.1"], None);
    let mut kept = connect(&connector, https, "a.test").await;
    assert_eq!(served_certificate(&kept), old);
    assert_eq!(exchange(&mut kept, "a.test", "/").await.0, 200);

    let new = pki.server("a", &["a.test"]);
    gw.wait_log(
        |l| l.contains("certificates_loaded"),
        Duration::from_secs(10),
    );
    // A client without a session to resume (a resumed one is not sent the
    // certificate again).
    let connector = pki.connector(&[b"http/1.1"], None);
    let fresh = connect(&connector, https, "a.test").await;
    assert_eq!(served_certificate(&fresh), new);
    // The connection from before the change still serves requests.
    assert_eq!(exchange(&mut kept, "a.test", "/").await.0, 200);

    // A key that does not belong to the certificate: logged, the served
    // certificate stays.
    let other = pki.path("other");
    pki.server("other", &["a.test"]);
    std::fs::copy(other.with_extension("key"), pki.path("a.key")).unwrap();
    gw.wait_log(
        |l| l.contains("certificates_failed"),
        Duration::from_secs(10),
    );
    let connector = pki.connector(&[b"http/1.1"], None);
    let after = connect(&connector, https, "a.test").await;
    assert_eq!(served_certificate(&after), new);
}

#[tokio::test]
async fn https_backends_are_verified_against_the_configured_ca() {
    let private = Pki::new("backend CA");
    let stranger = Pki::new("unknown CA");
    let trusted = TestBackend::start_tls("trusted", private.server_config(&["localhost"])).await;
    let untrusted =
        TestBackend::start_tls("untrusted", stranger.server_config(&["localhost"])).await;
    let yaml = format!(
        r#"admin:
  token: test-token
proxy:
  backend_ca: {ca}
pools:
  good:
    backends: [https://localhost:{good}]
    health_check: {{interval: 200ms, unhealthy_threshold: 1}}
  bad:
    backends: [https://localhost:{bad}]
    health_check: {{interval: 200ms, unhealthy_threshold: 1}}
    retries: 0
  http2:
    backends: [https://localhost:{good}]
    protocol: h2
routes:
  - match: {{path_prefix: /bad}}
    pool: bad
  - match: {{path_prefix: /h2}}
    pool: http2
  - match: {{path_prefix: /}}
    pool: good
"#,
        ca = private.path("ca.pem").display(),
        good = trusted.addr.port(),
        bad = untrusted.addr.port(),
    );
    let gw = Gateway::start(&yaml);
    let client = crate::support::client();
    for _ in 0..3 {
        let (status, headers, body) = crate::support::get(&client, &gw.url("/hello")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "trusted");
        assert_eq!(headers["x-version"], "HTTP/1.1");
    }
    // The same backend over HTTP/2, negotiated by ALPN (`protocol: h2`).
    for _ in 0..3 {
        let (status, headers, body) = crate::support::get(&client, &gw.url("/h2/x")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-version"], "HTTP/2.0");
        assert_eq!(headers["x-path"], "/h2/x");
    }
    let (status, _, body) = crate::support::get(&client, &gw.url("/bad")).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert_eq!(untrusted.hits(), 0);
    // Health probes go over TLS too: the unverifiable backend is taken out,
    // the verified one stays in.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, body) = gw.admin_call("GET", "/backends").await;
    assert_eq!(status, 200);
    let backends: serde_json::Value = serde_json::from_str(&body).unwrap();
    let health = |port: u16| {
        backends
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["url"].as_str().unwrap().ends_with(&format!(":{port}")))
            .map(|b| b["healthy"].as_bool().unwrap())
            .unwrap()
    };
    assert!(health(trusted.addr.port()), "{body}");
    assert!(!health(untrusted.addr.port()), "{body}");
}

fn mtls_yaml(pki: &Pki, backend: &str, required: bool, extra: &str) -> String {
    tls_yaml(
        pki,
        backend,
        &format!(
            "  client_auth: {{ca: {}, required: {required}}}\n{extra}",
            pki.path("ca.pem").display()
        ),
    )
}

#[tokio::test]
async fn required_client_certificates_refuse_clients_without_one() {
    let backend = TestBackend::start("m").await;
    let pki = Pki::new("mtls CA");
    pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    let gw = Gateway::start(&mtls_yaml(&pki, &backend.url(), true, ""));
    let https = gw.https.unwrap();
    // Without a certificate: TLS 1.3 finishes the client's side of the
    // handshake, then the server's alert ends the connection unanswered.
    let anonymous = pki.connector(&[b"http/1.1"], None);
    let stream = TcpStream::connect(https).await.unwrap();
    let name = ServerName::try_from("a.test".to_owned()).unwrap();
    if let Ok(mut stream) = anonymous.connect(name, stream).await {
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await;
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    // A certificate from another CA is refused too.
    let stranger = Pki::new("other CA");
    let foreign = pki.connector(&[b"http/1.1"], Some(stranger.client("mallory")));
    let stream = TcpStream::connect(https).await.unwrap();
    let name = ServerName::try_from("a.test".to_owned()).unwrap();
    if let Ok(mut stream) = foreign.connect(name, stream).await {
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await;
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    assert_eq!(backend.hits(), 0);
    let alice = pki.connector(&[b"http/1.1"], Some(pki.client("alice")));
    let mut stream = connect(&alice, https, "a.test").await;
    assert_eq!(exchange(&mut stream, "a.test", "/").await.0, 200);
}

#[tokio::test]
async fn each_client_certificate_gets_its_own_bucket() {
    let backend = TestBackend::start("k").await;
    let pki = Pki::new("bucket CA");
    pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"rate_limit:
  key: tls_subject
  database: sqlite://{}/limits.db
  default: {{capacity: 2, refill_per_second: 0.001}}
"#,
        dir.path().display()
    );
    let gw = Gateway::start(&mtls_yaml(&pki, &backend.url(), false, &extra));
    let https = gw.https.unwrap();
    let alice = pki.connector(&[b"http/1.1"], Some(pki.client("alice")));
    let bob = pki.connector(&[b"http/1.1"], Some(pki.client("bob")));
    let anonymous = pki.connector(&[b"http/1.1"], None);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        // A new connection each time: the bucket follows the certificate,
        // not the connection.
        let mut stream = connect(&alice, https, "a.test").await;
        statuses.push(exchange(&mut stream, "a.test", "/").await.0);
    }
    assert_eq!(statuses, [200, 200, 429]);
    let mut stream = connect(&bob, https, "a.test").await;
    let (status, answer) = exchange(&mut stream, "a.test", "/").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#"ratelimit: "default";r=1;"#), "{answer}");
    // Optional client auth: no certificate is keyed by address, served.
    let mut stream = connect(&anonymous, https, "a.test").await;
    assert_eq!(exchange(&mut stream, "a.test", "/").await.0, 200);
}

/// The request view handed to plugins carries the verified subject
/// (`request.tls-subject`, WIT 0.1.1): a key plugin that keys by it gives
/// each certificate its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_plugins_see_the_verified_subject() {
    let backend = TestBackend::start("p").await;
    let pki = Pki::new("plugin CA");
    pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        r#"rate_limit:
  key: plugin
  key_plugin: {plugin}
  unknown_keys: own
  database: sqlite://{db}/limits.db
  default: {{capacity: 2, refill_per_second: 0.001}}
plugins:
  config: {{misbehave.key-mode: tls-subject}}
"#,
        plugin = crate::support::plugin("misbehave").display(),
        db = dir.path().display()
    );
    let gw = Gateway::start(&mtls_yaml(&pki, &backend.url(), true, &extra));
    let https = gw.https.unwrap();
    let alice = pki.connector(&[b"http/1.1"], Some(pki.client("alice")));
    let bob = pki.connector(&[b"http/1.1"], Some(pki.client("bob")));
    let mut statuses = Vec::new();
    for connector in [&alice, &alice, &alice, &bob] {
        let mut stream = connect(connector, https, "a.test").await;
        statuses.push(exchange(&mut stream, "a.test", "/").await.0);
    }
    assert_eq!(statuses, [200, 200, 429, 200]);
    let (_, _, metrics) =
        crate::support::get(&crate::support::client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"gateway_plugin_calls_total{interface="client-key",outcome="ok"} 4"#),
        "{metrics}"
    );
}

/// `validate` reads every certificate: a key from another pair is named
/// with the line of its entry, and nothing starts.
#[test]
fn validate_names_a_certificate_whose_key_does_not_match() {
    let pki = Pki::new("validate CA");
    pki.server("a", &["a.test"]);
    pki.server("b", &["b.test"]);
    std::fs::copy(pki.path("b.key"), pki.path("a.key")).unwrap();
    let file = pki.path("gateway.yaml");
    std::fs::write(&file, tls_yaml(&pki, "http://127.0.0.1:9", "")).unwrap();
    let (code, text) = crate::support::run_cli(&["validate", "-c", file.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains("5:1: tls.certificates[0]"),
        "the entry's line: {text}"
    );
    assert!(text.contains("do not belong together"), "{text}");
    assert!(!text.contains("tls.certificates[1]"), "{text}");
}
