//! Whoami-style echo backends, so a fresh machine can watch the gateway balance traffic.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

/// One echo backend: answers every request with who it is and what it saw.
pub struct EchoBackend {
    /// Shown in every answer (`demo-1`, `demo-2`, ...).
    name: String,
    /// Requests answered so far.
    served: AtomicU64,
}

impl EchoBackend {
    pub fn new(name: String) -> Self {
        EchoBackend {
            name,
            served: AtomicU64::new(0),
        }
    }

    pub async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let (parts, body) = request.into_parts();
        // Read (and discard) the upload so clients see a complete exchange.
        let received = match body.collect().await {
            Ok(collected) => collected.to_bytes().len(),
            Err(_) => 0,
        };
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let answer = serde_json::json!({
            "backend": self.name,
            "served": served,
            "method": parts.method.as_str(),
            "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            "peer": peer.to_string(),
            "body_bytes": received,
            "headers": headers,
        });
        let mut text = serde_json::to_vec_pretty(&answer).unwrap_or_default();
        text.push(b'\n');
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = StatusCode::OK;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// Binds `count` echo backends on consecutive loopback ports from `base_port`.
pub async fn bind(
    count: u16,
    base_port: u16,
) -> anyhow::Result<Vec<(TcpListener, Arc<EchoBackend>)>> {
    let mut bound = Vec::new();
    for i in 0..count {
        let addr = SocketAddr::from(([127, 0, 0, 1], base_port + i));
        let listener = crate::listen::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot bind demo backend on {addr}: {e}"))?;
        bound.push((
            listener,
            Arc::new(EchoBackend::new(format!("demo-{}", i + 1))),
        ));
    }
    Ok(bound)
}
