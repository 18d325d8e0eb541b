//! Keep-alive HTTP/1.1 connections to the backends: one idle stack per backend.
//!
//! The gateway knows its backends up front, so a backend's index picks its
//! stack (no shared map keyed by authority), and it knows when a response
//! body has been read to the end, which is exactly when HTTP/1.1 allows the
//! next request on the connection: [`BackendBody`] hands it back then.

use super::backend_body::BackendBody;
use super::body::{BodySlot, BoxError};
use super::conn::{Conn, Failure, Outgoing, SendError, Stream};
use crate::http1::client::RequestFraming;
use crate::tls::backend::Connector;
use crate::uring;
use bytes::Bytes;
use http::{Response, Uri};
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Idle connections for every backend, indexed like the backends.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    slots: Box<[Slot]>,
    targets: Box<[Target]>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// For `https://` backends.
    tls: Option<Connector>,
}

/// Where one backend listens.
struct Target {
    host: String,
    port: u16,
    /// Speaks TLS (`https://`).
    tls: bool,
}

/// One backend's connections.
struct Slot {
    idle: Mutex<Vec<Idle>>,
    /// Signalled when a connection goes back on the idle stack.
    released: Notify,
    capacity: Arc<Capacity>,
}

/// How many connections to one backend are open or opening, against the caps.
struct Capacity {
    /// Open or opening, capped at `max_open` (`proxy.max_backend_connections`
    /// divided among the workers), so an overloaded backend is not also
    /// flooded with connections: beyond the cap requests wait for one.
    open: AtomicUsize,
    max_open: usize,
    /// Connects in progress, capped at [`MAX_CONNECTING`].
    connecting: AtomicUsize,
    /// Signalled when a connect ends or a connection closes: room for a connect.
    room: Notify,
}

/// One connection's place under its backend's cap, given back when the
/// connection (which carries it) is dropped.
pub struct Permit(Arc<Capacity>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.room.notify_one();
    }
}

/// Connects in progress per backend (and per worker). A burst of requests
/// that finds no idle connection opens connections this many at a time and
/// otherwise waits for one to come back, instead of sending the backend a
/// thousand SYNs at once and overflowing its accept queue.
const MAX_CONNECTING: usize = 32;

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One request for a backend, as the pool sends it (again, on a stale connection).
pub struct Sending<'a, B> {
    /// The encoded request head.
    pub head: Vec<u8>,
    pub body: &'a BodySlot<B>,
    /// The body is in `head` already; `body` is not read.
    pub inline: bool,
    pub framing: RequestFraming,
    pub head_request: bool,
    /// May go again on a fresh connection if a kept-alive one turns out closed.
    pub idempotent: bool,
}

impl Pool {
    /// A pool for backends at `urls` (`http://host:port`, or `https://`
    /// reached with `tls`).
    pub fn new(
        urls: impl IntoIterator<Item = Uri>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_open: usize,
        tls: Option<Connector>,
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
                port: url.port_u16().unwrap_or(match url.scheme_str() {
                    Some("https") => 443,
                    _ => 80,
                }),
                tls: url.scheme_str() == Some("https"),
            })
            .collect();
        Pool {
            shared: Arc::new(Shared {
                slots: targets
                    .iter()
                    .map(|_| Slot {
                        idle: Mutex::new(Vec::new()),
                        released: Notify::new(),
                        capacity: Arc::new(Capacity {
                            open: AtomicUsize::new(0),
                            max_open: max_open.max(1),
                            connecting: AtomicUsize::new(0),
                            room: Notify::new(),
                        }),
                    })
                    .collect(),
                targets,
                connect_timeout,
                idle_timeout,
                max_idle: 1024,
                tls,
            }),
        }
    }

    /// Returns a connection whose response was read to the end to its backend's stack.
    pub fn release(&self, index: usize, conn: Conn) {
        if !conn.buf.is_empty() || !conn.watch() {
            return;
        }
        let slot = &self.shared.slots[index];
        {
            let mut stack = lock(&slot.idle);
            if stack.len() >= self.shared.max_idle {
                return;
            }
            stack.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        slot.released.notify_one();
    }

    /// Sends a request to backend `index` and returns the response head with
    /// its body still on the connection.
    ///
    /// A kept-alive connection the backend closed before answering is not a
    /// failure for an idempotent request whose body can still be sent: the
    /// request goes again on another connection.
    pub async fn send<B>(
        &self,
        index: usize,
        request: Sending<'_, B>,
    ) -> Result<Response<BackendBody>, SendError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        loop {
            let (conn, reused) = self.acquire(index).await?;
            let outgoing = Outgoing {
                head: &request.head,
                body: (!request.inline && !request.body.is_empty()).then(|| request.body.attempt()),
                framing: request.framing,
                head_request: request.head_request,
            };
            match conn.exchange(outgoing).await {
                Ok((head, conn, reusable)) => {
                    let home = (head.keep_alive && reusable).then(|| (self.clone(), index));
                    let mut response = Response::new(BackendBody::new(conn, head.framing, home));
                    *response.status_mut() = head.status;
                    *response.headers_mut() = head.headers;
                    return Ok(response);
                }
                Err(Failure { error, stale: true })
                    if reused
                        && request.idempotent
                        && (request.inline || request.body.replayable()) =>
                {
                    tracing::debug!(%error, "kept-alive backend connection was closed; sending again");
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// An idle connection, or a new one; `true` when it was idle.
    ///
    /// While a new connection is being opened, a connection handed back in
    /// the meantime is taken instead (the new one joins the pool when
    /// ready), so a burst does not open a connection per request. At most
    /// [`MAX_CONNECTING`] connects run at once; beyond that a request waits
    /// for a connection to come back or a connect slot to free up.
    async fn acquire(&self, index: usize) -> Result<(Conn, bool), SendError> {
        let slot = &self.shared.slots[index];
        let mut connecting: Option<Connect> = None;
        loop {
            if let Some(conn) = self.checkout(index) {
                if let Some(connect) = connecting.take() {
                    self.pool_when_connected(index, connect);
                }
                return Ok((conn, true));
            }
            if connecting.is_none() {
                connecting = self.begin_connect(index);
            }
            let Some(connect) = connecting.as_mut() else {
                tokio::select! {
                    () = slot.released.notified() => {}
                    () = slot.capacity.room.notified() => {}
                }
                continue;
            };
            tokio::select! {
                connected = connect => return connected.map(|conn| (conn, false)),
                () = slot.released.notified() => {}
            }
        }
    }

    /// Starts opening a connection, unless [`MAX_CONNECTING`] already are
    /// or the backend's connections are at their cap.
    fn begin_connect(&self, index: usize) -> Option<Connect> {
        let capacity = &self.shared.slots[index].capacity;
        let below = |max: usize| move |n: usize| (n < max).then_some(n + 1);
        capacity
            .connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, below(MAX_CONNECTING))
            .ok()?;
        let opened = capacity.open.fetch_update(
            Ordering::AcqRel,
            Ordering::Acquire,
            below(capacity.max_open),
        );
        if opened.is_err() {
            capacity.connecting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = Permit(Arc::clone(capacity));
        let pool = self.clone();
        Some(Box::pin(async move {
            let connected = pool.connect(index).await;
            let capacity = &pool.shared.slots[index].capacity;
            capacity.connecting.fetch_sub(1, Ordering::AcqRel);
            capacity.room.notify_one();
            connected.map(|stream| Conn::new(stream, permit))
        }))
    }

    /// Lets a connect nobody waits for any more finish on its own; its
    /// connection goes to the pool.
    fn pool_when_connected(&self, index: usize, connect: Connect) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(conn) = connect.await {
                pool.release(index, conn);
            }
        });
    }

    /// The most recently used idle connection that is still open and fresh.
    fn checkout(&self, index: usize) -> Option<Conn> {
        let mut stack = lock(&self.shared.slots[index].idle);
        while let Some(mut idle) = stack.pop() {
            if idle.since.elapsed() < self.shared.idle_timeout && idle.conn.is_idle_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Opens a connection (and, to an `https://` backend, runs the
    /// handshake) within the connect timeout.
    async fn connect(&self, index: usize) -> Result<Stream, SendError> {
        let timeout = self.shared.connect_timeout;
        match tokio::time::timeout(timeout, self.open(index)).await {
            Ok(opened) => opened,
            Err(_) => Err(SendError::Connect(format!("timed out after {timeout:?}"))),
        }
    }

    async fn open(&self, index: usize) -> Result<Stream, SendError> {
        let target = &self.shared.targets[index];
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(SendError::connecting)?;
        stream
            .set_nodelay(true)
            .map_err(|e| SendError::Connect(e.to_string()))?;
        if !target.tls {
            if uring::active() {
                return uring::Stream::from_tokio(stream)
                    .map(Stream::Uring)
                    .map_err(|e| SendError::Connect(e.to_string()));
            }
            return Ok(Stream::Tcp(stream));
        }
        let Some(tls) = &self.shared.tls else {
            return Err(SendError::Connect(
                "no TLS client for an https:// backend".to_owned(),
            ));
        };
        match tls.connect(&target.host, stream).await {
            Ok(stream) => Ok(Stream::Tls(Box::new(stream))),
            Err(error) => Err(SendError::Connect(format!("TLS handshake: {error}"))),
        }
    }
}

/// A connection being opened (boxed: the cold path's future is large).
type Connect = Pin<Box<dyn Future<Output = Result<Conn, SendError>> + Send>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What a test backend does with a connection after an answer.
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        Serve,
        Close,
        /// Keep the connection open but read nothing more.
        Stall,
    }

    /// Decides what a test backend does with the bytes received so far on a
    /// connection: `Some((consumed, answer, then))` once a request is whole.
    type Script = fn(&[u8]) -> Option<(usize, Vec<u8>, Then)>;

    /// One request per blank line, answered `hello`; keeps the connection.
    fn hello(seen: &[u8]) -> Option<(usize, Vec<u8>, Then)> {
        let end = seen.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        Some((
            end,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_vec(),
            Then::Serve,
        ))
    }

    /// A backend on loopback running `script`; counts its connections.
    async fn backend(script: Script) -> (Uri, Arc<AtomicUsize>) {
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
                        while let Some((consumed, answer, then)) = script(&seen) {
                            seen.drain(..consumed);
                            if stream.write_all(&answer).await.is_err() || then == Then::Close {
                                return;
                            }
                            if then == Then::Stall {
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn pool(url: Uri) -> Pool {
        Pool::new(
            [url],
            Duration::from_secs(1),
            Duration::from_secs(60),
            1024,
            None,
        )
    }

    fn sending<'a, B>(
        head: &'static str,
        body: &'a BodySlot<B>,
        framing: RequestFraming,
    ) -> Sending<'a, B> {
        Sending {
            head: head.as_bytes().to_vec(),
            body,
            inline: false,
            framing,
            head_request: false,
            idempotent: true,
        }
    }

    const GET: &str = "GET / HTTP/1.1\r\nhost: backend\r\n\r\n";

    /// Sends a GET and reads the whole body (which releases the connection).
    async fn fetch(pool: &Pool) -> Result<Bytes, SendError> {
        let empty = BodySlot::new(Empty::<Bytes>::new());
        let response = pool
            .send(0, sending(GET, &empty, RequestFraming::None))
            .await?;
        Ok(response.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn a_body_read_to_the_end_frees_its_connection_for_the_next_request() {
        let (url, accepted) = backend(hello).await;
        let pool = pool(url);
        for _ in 0..10 {
            assert_eq!(&fetch(&pool).await.unwrap()[..], b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_early_closes_its_connection() {
        let (url, accepted) = backend(hello).await;
        let pool = pool(url);
        let empty = BodySlot::new(Empty::<Bytes>::new());
        for _ in 0..3 {
            let response = pool
                .send(0, sending(GET, &empty, RequestFraming::None))
                .await;
            drop(response.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_costs_no_error() {
        fn close_after_one(seen: &[u8]) -> Option<(usize, Vec<u8>, Then)> {
            hello(seen).map(|(n, answer, _)| (n, answer, Then::Close))
        }
        let (url, accepted) = backend(close_after_one).await;
        let pool = pool(url);
        for _ in 0..5 {
            assert_eq!(&fetch(&pool).await.unwrap()[..], b"hello");
            // Sometimes the close has been seen by now, sometimes not: both
            // paths (skipped at checkout, or the request sent again) must end
            // in a fresh connection, not an error.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_and_connection_close_is_obeyed() {
        fn chunked(seen: &[u8]) -> Option<(usize, Vec<u8>, Then)> {
            let (n, _, _) = hello(seen)?;
            let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
            Some((n, answer.to_vec(), Then::Serve))
        }
        let (url, accepted) = backend(chunked).await;
        let pool = pool(url);
        for _ in 0..3 {
            assert_eq!(&fetch(&pool).await.unwrap()[..], b"abcde");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        fn closing(seen: &[u8]) -> Option<(usize, Vec<u8>, Then)> {
            let (n, _, _) = hello(seen)?;
            let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
            Some((n, answer.to_vec(), Then::Serve))
        }
        let (url, accepted) = backend(closing).await;
        let pool = self::pool(url);
        for _ in 0..3 {
            assert_eq!(&fetch(&pool).await.unwrap()[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_chunked_upload_is_framed_on_the_wire() {
        /// Answers with the request's raw bytes once the last chunk is in.
        fn mirror(seen: &[u8]) -> Option<(usize, Vec<u8>, Then)> {
            let end = seen.windows(5).position(|w| w == b"0\r\n\r\n")? + 5;
            let mut answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {end}\r\n\r\n").into_bytes();
            answer.extend_from_slice(&seen[..end]);
            Some((end, answer, Then::Serve))
        }
        let (url, _) = backend(mirror).await;
        let pool = pool(url);
        let frames = Frames([&b"hello"[..], b", world"].map(Bytes::from_static).into());
        let slot = BodySlot::new(frames);
        let head = "POST /u HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
        let response = pool
            .send(0, sending(head, &slot, RequestFraming::Chunked))
            .await
            .unwrap();
        let wire = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            std::str::from_utf8(&wire).unwrap(),
            "POST /u HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
        );
    }

    /// A body of these data frames, of unknown length until it ends.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let next = self.get_mut().0.pop_front();
            std::task::Poll::Ready(next.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_upload_ends_is_relayed_at_once() {
        /// Refuses every request as soon as its head is in, and reads no body.
        fn refuse(seen: &[u8]) -> Option<(usize, Vec<u8>, Then)> {
            let (n, _, _) = hello(seen)?;
            let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig";
            Some((n, answer.to_vec(), Then::Stall))
        }
        let (url, accepted) = backend(refuse).await;
        let pool = pool(url);
        let big = BodySlot::new(Full::new(Bytes::from(vec![b'x'; 32 << 20])));
        let head = "POST /u HTTP/1.1\r\ncontent-length: 33554432\r\n\r\n";
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            pool.send(0, sending(head, &big, RequestFraming::Length(32 << 20))),
        )
        .await
        .expect("the answer must not wait for the upload")
        .unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(
            &response.into_body().collect().await.unwrap().to_bytes()[..],
            b"big"
        );
        // The connection is not reused: its request body was never finished.
        assert_eq!(&fetch(&pool).await.unwrap()[..3], b"big");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let error = fetch(&pool(url)).await.err().unwrap();
        assert!(error.is_connect(), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_shares_connections_and_caps_connects() {
        let (url, accepted) = backend(hello).await;
        let pool = pool(url);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let pool = pool.clone();
            tasks.spawn(async move { fetch(&pool).await.unwrap() });
        }
        while let Some(body) = tasks.join_next().await {
            assert_eq!(&body.unwrap()[..], b"hello");
        }
        assert!(accepted.load(Ordering::SeqCst) >= 1);
        assert_eq!(
            pool.shared.slots[0]
                .capacity
                .connecting
                .load(Ordering::SeqCst),
            0
        );
        assert_eq!(
            pool.shared.slots[0].capacity.open.load(Ordering::SeqCst),
            accepted.load(Ordering::SeqCst)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_backend_cap_wait_for_one() {
        let (url, accepted) = backend(hello).await;
        let pool = Pool::new(
            [url],
            Duration::from_secs(1),
            Duration::from_secs(60),
            3,
            None,
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let pool = pool.clone();
            tasks.spawn(async move { fetch(&pool).await.unwrap() });
        }
        while let Some(body) = tasks.join_next().await {
            assert_eq!(&body.unwrap()[..], b"hello");
        }
        assert!(accepted.load(Ordering::SeqCst) <= 3, "{accepted:?}");
        // A connection that closes makes room for a new one.
        let empty = BodySlot::new(Empty::<Bytes>::new());
        for _ in 0..5 {
            let response = pool
                .send(0, sending(GET, &empty, RequestFraming::None))
                .await;
            drop(response.unwrap());
        }
        assert!(pool.shared.slots[0].capacity.open.load(Ordering::SeqCst) <= 3);
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
        let pool = Pool::new(
            [url],
            Duration::from_millis(400),
            Duration::from_secs(60),
            1024,
            None,
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let pool = pool.clone();
            tasks.spawn(
                async move { tokio::time::timeout(Duration::from_secs(3), fetch(&pool)).await },
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let connecting = &pool.shared.slots[0].capacity.connecting;
        assert_eq!(connecting.load(Ordering::SeqCst), MAX_CONNECTING);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        drop(listener);
    }
}
