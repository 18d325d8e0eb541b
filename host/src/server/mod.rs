//! Accepting connections and serving HTTP/1.1 and HTTP/2 (h2c) on them, with
//! graceful shutdown: a watch channel tells every connection to finish its
//! in-flight requests; each connection task holds an mpsc sender, so the
//! receiver learns when the last one is gone.
//!
//! The admin listener is served by hyper alone ([`serve`]). The proxy
//! listener ([`serve_proxy`]) runs the gateway's own HTTP/1.1 codec (`h1`)
//! for the common requests and hands a connection to hyper for the rest.
//! The HTTPS listener ([`serve_tls`]) does the same after the handshake,
//! unless the client chose HTTP/2 by ALPN: hyper serves that.

mod client_body;
mod date;
mod h1;
mod refusal;
mod rewind;

pub use client_body::ClientBody;

use http::{HeaderMap, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::config::IoMode;
use crate::tls::{Session, TlsServer};
use crate::uring;

/// Who is at the other end of a client connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The TLS session, on the HTTPS listener.
    pub tls: Option<Arc<Session>>,
}

impl Peer {
    /// A peer on the plain listener.
    pub fn plain(addr: SocketAddr) -> Peer {
        Peer { addr, tls: None }
    }
}

/// A client connection the HTTP/1.1 codec serves: TCP, TLS over it, or TCP
/// through the worker's io_uring ring.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves when the connection has something to read, or has closed:
    /// what an idle connection waits on.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_;
}

impl ClientStream for TcpStream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        self.get_ref().0.readable()
    }
}

impl ClientStream for uring::Stream {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        uring::Stream::readable(self)
    }
}

/// Response fields that travel with the body rather than in the response's
/// header map: the codec writes them after the map's own fields, straight
/// into its output; connections hyper serves get them inserted into the map
/// before the head goes out. The rate limiter's fields, on every allowed
/// response, take this way: as two more map entries (insert, encode, drop)
/// they cost more than the limiter's decision itself.
pub trait HeadFields {
    /// Writes the fields as head lines (`name: value\r\n`).
    fn write_fields(&self, _out: &mut Vec<u8>) {}
    /// Inserts the fields into `headers`, replacing any of the same names.
    fn insert_fields(&self, _headers: &mut HeaderMap) {}
}

/// Hands the proxy listener a new socket to accept from (a reload changed
/// `listen`); connections accepted from the old one finish there.
pub type Rebind = watch::Receiver<Option<Arc<std::net::TcpListener>>>;

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

/// Serves `handler` with hyper on every connection accepted from `listener`
/// until shutdown.
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
    let builder = Arc::new(hyper_builder(limits));
    accept(listener, shutdown, None, move |stream, peer, signal| {
        let handler = handler.clone();
        let builder = Arc::clone(&builder);
        async move {
            let serve = move |request| handler(request, peer);
            serve_with_hyper(
                TokioIo::new(stream),
                peer,
                serve,
                no_fields,
                &builder,
                signal,
            )
            .await;
        }
    })
    .await;
}

/// Serves the proxy's `handler` on every connection accepted from
/// `listener` until shutdown: HTTP/1.1 with the gateway's own codec, handed
/// to hyper for HTTP/2 and for requests the codec leaves to it.
pub async fn serve_proxy<H, F, B>(
    listener: TcpListener,
    rebind: Rebind,
    handler: H,
    limits: ConnLimits,
    io: IoMode,
    shutdown: Shutdown,
) where
    H: Fn(Request<ClientBody>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + HeadFields + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let builder = Arc::new(hyper_builder(limits));
    accept(
        listener,
        shutdown,
        Some(rebind),
        move |stream, peer, signal| {
            let handler = handler.clone();
            let builder = Arc::clone(&builder);
            async move {
                let peer = Peer::plain(peer);
                if io == IoMode::Epoll {
                    h1::serve_connection(stream, peer, handler, limits, builder, signal).await;
                    return;
                }
                match uring::Stream::from_tokio(stream) {
                    Ok(stream) => {
                        h1::serve_connection(stream, peer, handler, limits, builder, signal).await;
                    }
                    Err(error) => {
                        tracing::debug!(peer = %peer.addr, %error, "cannot hand the connection to io_uring");
                    }
                }
            }
        },
    )
    .await;
}

/// Serves the proxy's `handler` on the HTTPS listener: a handshake with
/// what `tls` serves now (within `header_read_timeout`), then HTTP/2 with
/// hyper when the client chose it by ALPN, else HTTP/1.1 as on the plain
/// listener.
pub async fn serve_tls<H, F, B>(
    listener: TcpListener,
    tls: Arc<TlsServer>,
    handler: H,
    limits: ConnLimits,
    shutdown: Shutdown,
) where
    H: Fn(Request<ClientBody>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + HeadFields + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let builder = Arc::new(hyper_builder(limits));
    accept(listener, shutdown, None, move |stream, addr, signal| {
        let acceptor = tls.acceptor();
        let handler = handler.clone();
        let builder = Arc::clone(&builder);
        async move {
            let handshake =
                tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %addr, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake not finished in time");
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let h2 = session.alpn_protocol() == Some(b"h2");
            let peer = Peer {
                addr,
                tls: Some(Arc::new(Session::new(
                    session.peer_certificates(),
                    session.server_name(),
                ))),
            };
            if h2 {
                let serve = move |request: Request<Incoming>| {
                    handler(request.map(ClientBody::Streamed), peer.clone())
                };
                serve_with_hyper(
                    TokioIo::new(stream),
                    addr,
                    serve,
                    B::insert_fields,
                    &builder,
                    signal,
                )
                .await;
            } else {
                h1::serve_connection(stream, peer, handler, limits, builder, signal).await;
            }
        }
    })
    .await;
}

fn hyper_builder(limits: ConnLimits) -> auto::Builder<TokioExecutor> {
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
    builder
}

/// Accepts until shutdown and runs `connection` for each connection on a
/// task of its own, which holds a `done` sender until it ends.
async fn accept<C, F>(
    mut listener: TcpListener,
    shutdown: Shutdown,
    mut rebind: Option<Rebind>,
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut failures = FailureLog::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop_requested(shutdown.signal.clone()) => break,
            Some(next) = next_listener(&mut rebind) => {
                listener = next;
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of
                // spinning, and say so once a second, not once per attempt.
                if let Some(repeated) = failures.count(std::time::Instant::now()) {
                    tracing::warn!(%error, repeated, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let done = shutdown.done.clone();
        let task = connection(stream, peer, shutdown.signal.clone());
        tokio::spawn(async move {
            task.await;
            drop(done);
        });
    }
}

/// The next socket a reload hands over (pending forever without `rebind`).
async fn next_listener(rebind: &mut Option<Rebind>) -> Option<TcpListener> {
    let Some(receiver) = rebind.as_mut() else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *rebind = None;
        return None;
    }
    let shared = receiver.borrow_and_update().clone()?;
    match shared.try_clone().and_then(TcpListener::from_std) {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::error!(%error, "cannot take over the new listening socket; still accepting on the old one");
            None
        }
    }
}

/// Counts repeated failures and lets one log line through a second.
#[derive(Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
    unreported: u64,
}

impl FailureLog {
    /// Counts a failure at `now`; returns how many to report (this one
    /// included) when a line is due.
    fn count(&mut self, now: std::time::Instant) -> Option<u64> {
        self.unreported += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// Runs hyper on one connection until it ends; on shutdown, hyper finishes
/// the request in flight and closes.
/// A response body with no fields beside its head's (`serve_with_hyper`'s
/// `fields` for the admin listener).
fn no_fields<B>(_: &B, _: &mut HeaderMap) {}

/// Serves one connection with hyper; `fields` puts a response's
/// [`HeadFields`] into its header map.
async fn serve_with_hyper<I, H, F, B>(
    io: TokioIo<I>,
    peer: SocketAddr,
    handler: H,
    fields: fn(&B, &mut HeaderMap),
    builder: &auto::Builder<TokioExecutor>,
    signal: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = service_fn(move |request| {
        // Boxed once here, the request's future (kilobytes: the proxy's
        // whole request path) is not copied again on its way into hyper.
        let response = Box::pin(handler(request));
        async move {
            let (mut parts, body) = response.await.into_parts();
            fields(&body, &mut parts.headers);
            Ok::<_, Infallible>(Response::from_parts(parts, body))
        }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop_requested(signal) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Resolves once shutdown has been requested (immediately if it already was).
async fn stop_requested(mut signal: watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_are_reported_once_a_second_with_their_count() {
        let mut log = FailureLog::default();
        let start = std::time::Instant::now();
        assert_eq!(log.count(start), Some(1));
        for ms in 1..40 {
            assert_eq!(log.count(start + Duration::from_millis(ms * 25)), None);
        }
        assert_eq!(log.count(start + Duration::from_millis(1000)), Some(40));
        assert_eq!(log.count(start + Duration::from_millis(1001)), None);
    }
}
