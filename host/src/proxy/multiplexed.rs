//! HTTP/2 to a pool's backends (`protocol: h2c` over TCP, `h2` by ALPN over
//! TLS): hyper's client, which keeps one connection per backend (per
//! worker) and multiplexes every request on it. gRPC needs this: its
//! trailers (`grpc-status`) and full-duplex streams pass through as they are.

use super::backend_body::BackendBody;
use super::body::ReplayBody;
use super::conn::SendError;
use super::forward::chain;
use super::headers::{self, Forwarding};
use super::upload::Upload;
use crate::tls::backend::Connector;
use http::request::Parts;
use http::{Request, Response, Uri, Version};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::Duration;

type Body = ReplayBody<Upload>;

/// A pool's HTTP/2 connections in one worker.
#[derive(Clone)]
pub struct Multiplexed {
    client: H2Client,
    /// `scheme://authority/prefix` per backend, without a trailing `/`.
    bases: Arc<[String]>,
}

#[derive(Clone)]
enum H2Client {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<HttpsConnector<HttpConnector>, Body>),
}

impl Multiplexed {
    /// For backends at `urls`; `tls` (with ALPN `h2`) for `https://` ones.
    pub fn new(
        urls: impl IntoIterator<Item = Uri>,
        connect_timeout: Duration,
        tls: Option<&Connector>,
    ) -> Self {
        let bases = urls
            .into_iter()
            .map(|url| {
                let scheme = url.scheme_str().unwrap_or("http");
                let authority = url.authority().map_or("", |a| a.as_str());
                format!("{scheme}://{authority}{}", url.path().trim_end_matches('/'))
            })
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_while_idle(false);
        let client = match tls {
            Some(tls) => {
                connector.enforce_http(false);
                let mut config = (*tls.config()).clone();
                // hyper's connector offers ALPN itself (`h2` only here).
                config.alpn_protocols.clear();
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_http2()
                    .wrap_connector(connector);
                H2Client::Tls(builder.build(connector))
            }
            None => H2Client::Plain(builder.build(connector)),
        };
        Multiplexed { client, bases }
    }

    /// Sends the request to backend `index` and waits for its response head.
    pub async fn send(
        &self,
        index: usize,
        parts: &Parts,
        body: Body,
        forwarding: &Forwarding,
    ) -> Result<Response<BackendBody>, SendError> {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = format!("{}{target}", self.bases[index])
            .parse()
            .map_err(|e| SendError::Io(std::io::Error::other(e)))?;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        let headers = request.headers_mut();
        headers.clone_from(&parts.headers);
        headers::set_request_fields(headers, forwarding);
        let answer = match &self.client {
            H2Client::Plain(client) => client.request(request).await,
            H2Client::Tls(client) => client.request(request).await,
        };
        match answer {
            Ok(response) => Ok(response.map(BackendBody::Multiplexed)),
            Err(error) if error.is_connect() => Err(SendError::Connect(chain(&error))),
            Err(error) => Err(SendError::Io(std::io::Error::other(chain(&error)))),
        }
    }
}
