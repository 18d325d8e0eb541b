//! Keep-alive HTTP/1.1 connections to the backends: one idle stack per backend.
//!
//! hyper-util's pooled client hashes the authority into a shared map under a
//! mutex and spawns a task per request to learn when the connection is idle
//! again. The gateway knows its backends up front and knows when a response
//! body has been read to the end, which is exactly when HTTP/1.1 allows the
//! next request on the connection, so it does both itself: a backend's index
//! picks its stack, and the response body hands the connection back.

use super::body::BoxError;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Why a request never got response headers from a backend.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: nothing reached the backend.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The exchange failed on an open connection.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// Idle connections for every backend, indexed like the backends.
pub struct Pool<B> {
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    slots: Box<[Slot<B>]>,
    targets: Box<[Target]>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// Where one backend listens.
struct Target {
    host: String,
    port: u16,
}

/// One backend's connections.
struct Slot<B> {
    idle: Mutex<Vec<Idle<B>>>,
    /// Connects in progress, capped at [`MAX_CONNECTING`].
    connecting: AtomicUsize,
    /// Signalled when a connection goes back on the idle stack.
    released: Notify,
    /// Signalled when a connect ends, for requests waiting for a connect slot.
    connect_ended: Notify,
}

/// Connects in progress per backend (and per worker). A burst of requests
/// that finds no idle connection opens connections this many at a time and
/// otherwise waits for one to come back, instead of sending the backend a
/// thousand SYNs at once and overflowing its accept queue.
const MAX_CONNECTING: usize = 32;

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A connection lent to one request; [`Lease::release`] gives it back.
pub struct Lease<B> {
    sender: http1::SendRequest<B>,
    index: usize,
    pool: Pool<B>,
}

impl<B> Lease<B> {
    /// Returns the connection to its backend's stack, for the next request.
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let slot = &self.pool.shared.slots[self.index];
        {
            let mut stack = lock(&slot.idle);
            if stack.len() >= self.pool.shared.max_idle {
                return;
            }
            stack.push(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
        slot.released.notify_one();
    }
}

impl<B> Pool<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// A pool for backends at `urls` (`http://host:port`).
    pub fn new(
        urls: impl IntoIterator<Item = Uri>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let targets: Box<[Target]> = urls
            .into_iter()
            .map(|url| Target {
                host: url
                    .host()
                    .unwrap_or("127.0.0.1")
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port: url.port_u16().unwrap_or(80),
            })
            .collect();
        Pool {
            shared: Arc::new(Shared {
                slots: targets
                    .iter()
                    .map(|_| Slot {
                        idle: Mutex::new(Vec::new()),
                        connecting: AtomicUsize::new(0),
                        released: Notify::new(),
                        connect_ended: Notify::new(),
                    })
                    .collect(),
                targets,
                connect_timeout,
                idle_timeout,
                max_idle: 1024,
            }),
        }
    }

    /// Sends `request` to backend `index` on an idle connection, or a new one.
    ///
    /// A pooled connection that turns out to be closed (the backend timed it
    /// out while idle) is not a failure: the request, never written, goes on
    /// the next idle connection or a fresh one. While a new connection is
    /// being opened, a connection handed back in the meantime is taken
    /// instead (the new one joins the pool when ready), so a burst does not
    /// open a connection per request. At most [`MAX_CONNECTING`] connects
    /// run at once; beyond that a request waits for a connection to come back
    /// or a connect slot to free up.
    pub async fn send(
        &self,
        index: usize,
        mut request: Request<B>,
    ) -> Result<(Response<Incoming>, Lease<B>), SendError> {
        let slot = &self.shared.slots[index];
        let mut connecting: Option<Connect<B>> = None;
        loop {
            if let Some(mut sender) = self.checkout(index) {
                if let Some(connect) = connecting.take() {
                    self.pool_when_connected(index, connect);
                }
                if sender.ready().await.is_err() {
                    continue;
                }
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok((response, self.lease(sender, index))),
                    Err(mut failed) => match failed.take_message() {
                        Some(unsent) => {
                            request = unsent;
                            continue;
                        }
                        None => return Err(SendError::Http(failed.into_error())),
                    },
                }
            }
            if connecting.is_none() {
                connecting = self.begin_connect(index);
            }
            let Some(connect) = connecting.as_mut() else {
                tokio::select! {
                    () = slot.released.notified() => {}
                    () = slot.connect_ended.notified() => {}
                }
                continue;
            };
            tokio::select! {
                connected = connect => {
                    let mut sender = connected?;
                    let response = sender.send_request(request).await?;
                    return Ok((response, self.lease(sender, index)));
                }
                () = slot.released.notified() => {}
            }
        }
    }

    /// Starts opening a connection, unless [`MAX_CONNECTING`] already are.
    fn begin_connect(&self, index: usize) -> Option<Connect<B>> {
        let slot = &self.shared.slots[index];
        slot.connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CONNECTING).then_some(n + 1)
            })
            .ok()?;
        let pool = self.clone();
        Some(Box::pin(async move {
            let connected = pool.connect(index).await;
            let slot = &pool.shared.slots[index];
            slot.connecting.fetch_sub(1, Ordering::AcqRel);
            slot.connect_ended.notify_one();
            connected
        }))
    }

    /// Lets a connect nobody waits for any more finish on its own; its
    /// connection goes to the pool.
    fn pool_when_connected(&self, index: usize, connect: Connect<B>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(sender) = connect.await {
                pool.lease(sender, index).release();
            }
        });
    }

    fn lease(&self, sender: http1::SendRequest<B>, index: usize) -> Lease<B> {
        Lease {
            sender,
            index,
            pool: self.clone(),
        }
    }

    /// The most recently used idle connection that is still open and fresh.
    fn checkout(&self, index: usize) -> Option<http1::SendRequest<B>> {
        let mut stack = lock(&self.shared.slots[index].idle);
        while let Some(idle) = stack.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < self.shared.idle_timeout {
                return Some(idle.sender);
            }
        }
        None
    }

    /// Opens a connection and runs its HTTP/1.1 state machine on its own task.
    async fn connect(&self, index: usize) -> Result<http1::SendRequest<B>, SendError> {
        let target = &self.shared.targets[index];
        let connecting = TcpStream::connect((target.host.as_str(), target.port));
        let stream = match tokio::time::timeout(self.shared.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(SendError::Connect(error.to_string())),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "timed out after {:?}",
                    self.shared.connect_timeout
                )));
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A connection being opened (boxed: the cold path's future is large).
type Connect<B> = Pin<Box<dyn Future<Output = Result<http1::SendRequest<B>, SendError>> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type Body = Empty<Bytes>;

    /// A backend that answers every request with `hello` and counts its
    /// connections; with `close_after_first`, it closes each connection right
    /// after the first answer (as a backend's idle timeout would).
    async fn backend(close_after_first: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                            if close_after_first {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn pool(url: Uri) -> Pool<Body> {
        Pool::new([url], Duration::from_secs(1), Duration::from_secs(60))
    }

    fn get() -> Request<Body> {
        Request::builder()
            .uri("/")
            .header("host", "backend")
            .body(Empty::new())
            .unwrap()
    }

    /// Sends one request and reads the body; returns it and the lease.
    async fn fetch(pool: &Pool<Body>) -> (Bytes, Lease<Body>) {
        let (response, lease) = pool.send(0, get()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (body, lease)
    }

    #[tokio::test]
    async fn a_released_connection_carries_the_next_request() {
        let (url, accepted) = backend(false).await;
        let pool = pool(url);
        for _ in 0..10 {
            let (body, lease) = fetch(&pool).await;
            assert_eq!(&body[..], b"hello");
            lease.release();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_not_released_is_not_reused() {
        let (url, accepted) = backend(false).await;
        let pool = pool(url);
        for _ in 0..3 {
            let (_, lease) = fetch(&pool).await;
            drop(lease);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_costs_no_error() {
        let (url, accepted) = backend(true).await;
        let pool = pool(url);
        for _ in 0..5 {
            let (body, lease) = fetch(&pool).await;
            assert_eq!(&body[..], b"hello");
            lease.release();
            // Sometimes the close has been seen by now, sometimes not: both
            // paths (skipped at checkout, or the unsent request moved on)
            // must end in a fresh connection, not an error.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let error = pool(url).send(0, get()).await.err().unwrap();
        assert!(error.is_connect(), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_shares_connections_and_caps_connects() {
        let (url, accepted) = backend(false).await;
        let pool = pool(url);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let pool = pool.clone();
            tasks.spawn(async move {
                let (body, lease) = fetch(&pool).await;
                lease.release();
                body
            });
        }
        while let Some(body) = tasks.join_next().await {
            assert_eq!(&body.unwrap()[..], b"hello");
        }
        assert!(accepted.load(Ordering::SeqCst) >= 1);
        assert_eq!(pool.shared.slots[0].connecting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn connects_beyond_the_cap_wait_their_turn() {
        // A backend whose accept queue is full: further SYNs go unanswered,
        // so connects hang until the connect timeout.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let pool = Pool::<Body>::new([url], Duration::from_millis(400), Duration::from_secs(60));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let pool = pool.clone();
            tasks.spawn(async move {
                tokio::time::timeout(Duration::from_secs(3), pool.send(0, get())).await
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let connecting = &pool.shared.slots[0].connecting;
        assert_eq!(connecting.load(Ordering::SeqCst), MAX_CONNECTING);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        drop(listener);
    }
}
