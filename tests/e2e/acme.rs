//! ACME end to end against Debian's `pebble` (an RFC 8555 test CA on
//! loopback, with `pebble-challtestsrv` as its DNS: every name is
//! 127.0.0.1): the gateway obtains a certificate by HTTP-01 on its plain
//! listener, serves it on HTTPS, and after a restart serves it from the
//! cache without asking the CA.

use crate::support::{Gateway, TestBackend};
use crate::tls::{Pki, connect, exchange, served_certificate};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A child process killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn installed(binary: &str) -> bool {
    let found = ["/usr/bin", "/usr/local/bin"]
        .iter()
        .any(|dir| std::path::Path::new(dir).join(binary).exists());
    if !found {
        assert!(
            std::env::var_os("GATEWAY_TEST_REQUIRE_SERVICES").is_none(),
            "{binary} is not installed (apt-get install pebble) but GATEWAY_TEST_REQUIRE_SERVICES is: refusing to skip"
        );
        eprintln!("SKIPPED: {binary} is not installed (apt-get install pebble)");
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_is_obtained_from_pebble_and_served_from_the_cache_after_a_restart() {
    if !installed("pebble") || !installed("pebble-challtestsrv") {
        return;
    }
    let pki = Pki::new("pebble's own TLS");
    pki.server("pebble", &["127.0.0.1", "localhost"]);
    let dns = free_port();
    let _dns = Daemon(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv"),
    );
    let http_port = free_port();
    let directory: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = serde_json::json!({"pebble": {
        "listenAddress": directory.to_string(),
        "managementListenAddress": management.to_string(),
        "certificate": pki.path("pebble.pem"),
        "privateKey": pki.path("pebble.key"),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(pki.path("pebble.json"), config.to_string()).unwrap();
    let _pebble = Daemon(
        Command::new("pebble")
            .arg("-config")
            .arg(pki.path("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble"),
    );
    wait_listening(directory);
    wait_listening(management);

    let backend = TestBackend::start("acme").await;
    let cache = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"listen: 127.0.0.1:{http_port}
backends: [{backend}]
tls:
  listen: 127.0.0.1:0
  redirect_http: true
  acme:
    directory: https://{directory}/dir
    directory_ca: {ca}
    contact: mailto:ops@gw.test
    domains: [gw.test, www.gw.test]
    cache: {cache}
"#,
        backend = backend.url(),
        ca = pki.path("ca.pem").display(),
        cache = cache.path().display(),
    );
    let mut gw = Gateway::start_listening_as_written(&yaml);
    gw.wait_log(
        |l| l.contains("certificate_obtained"),
        Duration::from_secs(90),
    );

    // Pebble's root (new every run), from its management API.
    let to_pebble = pki.connector(&[b"http/1.1"], None);
    let mut stream = connect(&to_pebble, management, "localhost").await;
    let (status, answer) = exchange(&mut stream, "localhost", "/roots/0").await;
    assert_eq!(status, 200, "{answer}");
    let pem = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
    let root = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

    let https = gw.https.unwrap();
    let mut stream = connect(&connector, https, "www.gw.test").await;
    let obtained = served_certificate(&stream);
    let (status, answer) = exchange(&mut stream, "www.gw.test", "/").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("acme"), "{answer}");
    assert!(cache.path().join("gw.test.crt").exists());

    // A restart serves the cached certificate at once, asking the CA nothing.
    drop(gw);
    let mut gw = Gateway::start_listening_as_written(&yaml);
    gw.wait_log(|l| l.contains("acme_cached"), Duration::from_secs(10));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
            roots
        })
        .with_no_client_auth(),
    ));
    let stream = connect(&connector, gw.https.unwrap(), "gw.test").await;
    assert_eq!(served_certificate(&stream), obtained);
    assert_eq!(gw.count_log(|l| l.contains("certificate_obtained")), 0);

    // Renewal: with more than the certificate's lifetime as `renew_before`,
    // the cached one is served at once and replaced by a new one.
    drop(gw);
    let renewing = yaml.replace("    cache:", "    renew_before: 100000d\n    cache:");
    let mut gw = Gateway::start_listening_as_written(&renewing);
    gw.wait_log(|l| l.contains("acme_renewing"), Duration::from_secs(10));
    gw.wait_log(
        |l| l.contains("certificate_obtained"),
        Duration::from_secs(90),
    );
    let stream = connect(&connector, gw.https.unwrap(), "gw.test").await;
    assert_ne!(
        served_certificate(&stream),
        obtained,
        "a renewed certificate"
    );
    // Due again at once (renew_before outlasts the certificate): not renewed
    // in a loop against the CA.
    gw.wait_log(
        |l| l.contains("acme_renew_before_too_long"),
        Duration::from_secs(10),
    );
    assert_eq!(gw.count_log(|l| l.contains("certificate_obtained")), 1);
}
