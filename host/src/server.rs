//! Accepting connections and serving HTTP/1.1 and HTTP/2 (h2c) on them, with
//! graceful shutdown: a watch channel tells every connection to finish its
//! in-flight requests; each connection task holds an mpsc sender, so the
//! receiver learns when the last one is gone.

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Limits applied to every client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
}

/// Tells connections to stop and learns when they have.
pub struct Shutdown {
    /// Becomes `true` once: stop accepting, finish what is in flight.
    pub signal: watch::Receiver<bool>,
    /// Dropped by each task when it ends.
    pub done: mpsc::Sender<()>,
}

impl Clone for Shutdown {
    fn clone(&self) -> Self {
        Shutdown {
            signal: self.signal.clone(),
            done: self.done.clone(),
        }
    }
}

/// Serves `handler` on every connection accepted from `listener` until shutdown.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    handler: H,
    limits: ConnLimits,
    shutdown: Shutdown,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop_requested(shutdown.signal.clone()) => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                // Boxed once here, the request's future (kilobytes: the proxy's
                // whole request path) is not copied again on its way into hyper.
                let response = Box::pin(handler(request, peer));
                async move { Ok::<_, Infallible>(response.await) }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop_requested(shutdown.signal.clone()) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(shutdown.done);
        });
    }
}

/// Resolves once shutdown has been requested (immediately if it already was).
async fn stop_requested(mut signal: watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}
