//! One client connection under the gateway's own HTTP/1.1 codec: read a
//! head, run the handler, write the response, repeat.
//!
//! hyper's server connection is general (any IO, any service, a state
//! machine that suits every use); on the proxy's hot path it was a third of
//! the instructions per request. This loop does only what an HTTP/1.1
//! request without a body or with a small one already read needs and hands the connection, unread bytes first, to
//! hyper when a request needs more (see `head`).

use super::refusal;
use super::rewind::Rewound;
use super::{
    ClientBody, ClientStream, ConnLimits, HeadFields, Peer, date, serve_with_hyper, stop_requested,
};
use crate::http1::server::{self as head, Delimit, Head, HeadError, Parsed};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Response bytes gathered before a write; bigger data is written as it is.
const GATHER: usize = 16 * 1024;
/// The read and write buffers' size while a request is in hand.
const BUFFER: usize = 8 * 1024;

/// How a connection's request loop ended.
enum End {
    /// Closed (by either side, on shutdown or after an error).
    Closed,
    /// A request the codec leaves to hyper; these bytes are unread.
    HandOver(BytesMut),
}

pub async fn serve_connection<S, H, F, B>(
    mut stream: S,
    peer: Peer,
    handler: H,
    limits: ConnLimits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    signal: watch::Receiver<bool>,
) where
    S: ClientStream,
    H: Fn(Request<ClientBody>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + HeadFields + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    match requests(&mut stream, &peer, &handler, limits, signal.clone()).await {
        End::Closed => {}
        End::HandOver(read) => {
            let io = TokioIo::new(Rewound::new(read, stream));
            let addr = peer.addr;
            let serve = move |request: Request<hyper::body::Incoming>| {
                handler(request.map(ClientBody::Streamed), peer.clone())
            };
            // Boxed: hyper's connection state would otherwise make every
            // connection's task as large as the rare handed-over one.
            Box::pin(serve_with_hyper(
                io,
                addr,
                serve,
                B::insert_fields,
                &builder,
                signal,
            ))
            .await;
        }
    }
}

/// How long a connection with nothing to read keeps its buffers and its
/// request state before it goes idle and gives them back.
const LINGER: Duration = Duration::from_secs(1);

/// How a busy phase ended.
enum Busy {
    Ended(End),
    /// No request for [`LINGER`]; the wait for the next head began then.
    Idle(Instant),
}

/// Serves a connection in two phases. Busy: buffers and the request's
/// future live on the heap while requests keep coming (one allocation per
/// spell of activity, none per request). Idle: after [`LINGER`] without a
/// request, the connection gives all that back and waits with nothing but
/// its socket and a timer, so an idle keep-alive connection costs little.
async fn requests<S, H, F, B>(
    stream: &mut S,
    peer: &Peer,
    handler: &H,
    limits: ConnLimits,
    signal: watch::Receiver<bool>,
) -> End
where
    S: ClientStream,
    H: Fn(Request<ClientBody>, Peer) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + HeadFields,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut waiting_since = Instant::now();
    loop {
        let busy = Box::pin(busy(stream, peer, handler, limits, &signal, waiting_since));
        match busy.await {
            Busy::Ended(end) => return end,
            Busy::Idle(since) => waiting_since = since,
        }
        // A head within `header_read_timeout` of starting to wait for it,
        // idle keep-alive time included.
        tokio::select! {
            biased;
            ready = stream.readable() => if ready.is_err() {
                return End::Closed;
            },
            () = tokio::time::sleep_until(waiting_since + limits.header_read_timeout) => {
                tracing::debug!(peer = %peer.addr, "no request head in time");
                return End::Closed;
            }
            () = stop_requested(signal.clone()) => return End::Closed,
        }
    }
}

/// Serves requests until the connection closes, is handed over, or has had
/// nothing to read for [`LINGER`]. The first head has been awaited since
/// `waiting_since`.
async fn busy<S, H, F, B>(
    stream: &mut S,
    peer: &Peer,
    handler: &H,
    limits: ConnLimits,
    signal: &watch::Receiver<bool>,
    waiting_since: Instant,
) -> Busy
where
    S: ClientStream,
    H: Fn(Request<ClientBody>, Peer) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + HeadFields,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut read = BytesMut::with_capacity(BUFFER);
    let mut out = Vec::with_capacity(BUFFER);
    let mut stop = pin!(stop_requested(signal.clone()));
    let mut deadline = pin!(tokio::time::sleep_until(waiting_since + LINGER));
    let mut first = Some(waiting_since);
    loop {
        // A head within `header_read_timeout` of starting to wait for it,
        // idle keep-alive time included; with nothing read for `LINGER`,
        // the connection goes idle instead.
        let mut waiting: Option<Instant> = None;
        let Head {
            request,
            close,
            trailers,
            body,
        } = loop {
            match head::parse_request(&mut read, limits.max_header_bytes) {
                Ok(Parsed::Request(head)) => break head,
                Ok(Parsed::HandOver) => return Busy::Ended(End::HandOver(read)),
                Ok(Parsed::Partial) => {}
                Err(error) => {
                    refuse(stream, &error).await;
                    return Busy::Ended(End::Closed);
                }
            }
            let since = *waiting.get_or_insert_with(|| {
                let since = first.take().unwrap_or_else(Instant::now);
                deadline
                    .as_mut()
                    .reset(since + LINGER.min(limits.header_read_timeout));
                since
            });
            // Room for a whole small request: one read short of its body
            // would hand the connection to hyper.
            if read.capacity() - read.len() < BUFFER / 2 {
                read.reserve(BUFFER);
            }
            tokio::select! {
                biased;
                result = stream.read_buf(&mut read) => match result {
                    Ok(0) | Err(_) => return Busy::Ended(End::Closed),
                    Ok(_) => {}
                },
                () = &mut deadline => {
                    let timeout = since + limits.header_read_timeout;
                    if Instant::now() >= timeout {
                        tracing::debug!(peer = %peer.addr, "no request head in time");
                        return Busy::Ended(End::Closed);
                    }
                    if read.is_empty() {
                        return Busy::Idle(since);
                    }
                    deadline.as_mut().reset(timeout);
                }
                () = &mut stop => return Busy::Ended(End::Closed),
            }
        };

        let head_request = request.method() == Method::HEAD;
        let body = body.map_or(ClientBody::Empty, ClientBody::Whole);
        let mut handling = pin!(handler(request.map(|()| body), peer.clone()));
        // While the request is in flight, a client that closes its side
        // cancels it, as with hyper (without half-close) and nginx: the
        // backend exchange is dropped with the future. Pipelined bytes are
        // kept for later, up to one head's worth.
        let response = loop {
            tokio::select! {
                biased;
                response = &mut handling => break response,
                result = stream.read_buf(&mut read), if read.len() < limits.max_header_bytes => {
                    match result {
                        Ok(0) | Err(_) => {
                            tracing::debug!(peer = %peer.addr, "client closed with its request in flight");
                            return Busy::Ended(End::Closed);
                        }
                        Ok(_) => {}
                    }
                }
            }
        };
        let close = close || *signal.borrow();
        let (parts, body) = response.into_parts();
        let delimit = head::delimit(
            parts.status,
            head_request,
            &parts.headers,
            body.size_hint().exact(),
        );
        date::with_now(|now| {
            head::encode_response(
                &mut out,
                parts.status,
                &parts.headers,
                delimit,
                close,
                now,
                |out| body.write_fields(out),
            );
        });
        let complete = write_body(stream, &mut out, body, delimit.0, trailers).await;
        if close || !complete {
            let _ = stream.shutdown().await;
            return Busy::Ended(End::Closed);
        }
    }
}

/// Answers a head the codec refuses (400 or 431, JSON) and closes.
async fn refuse<S: ClientStream>(stream: &mut S, error: &HeadError) {
    tracing::debug!(?error, "request head refused");
    let response = date::with_now(|now| refusal::refusal(error, now));
    let _ = stream.write_all(&response).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Streams `body` after the head already in `out`, framed by `delimit`.
/// A body that is ready at once leaves in the head's write. Returns whether
/// the message went out whole (otherwise the connection must close).
async fn write_body<S: ClientStream, B>(
    stream: &mut S,
    out: &mut Vec<u8>,
    body: B,
    delimit: Delimit,
    trailers_accepted: bool,
) -> bool
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut body = pin!(body);
    let mut flushed = false;
    let mut sent = 0u64;
    let mut trailers: Option<HeaderMap> = None;
    loop {
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flushed = true;
                if !flush(stream, out).await {
                    return false;
                }
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                tracing::debug!(%error, "response body failed");
                if !flushed && sent == 0 {
                    // Nothing of the answer has left: the client gets an
                    // honest 502 instead of a head with a cut body.
                    out.clear();
                    date::with_now(|now| {
                        out.extend(refusal::json_answer(
                            http::StatusCode::BAD_GATEWAY,
                            "Bad gateway: backend failed",
                            now,
                        ));
                    });
                }
                let _ = flush(stream, out).await;
                return false;
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(fields) = frame.into_trailers() {
                    trailers = Some(fields);
                }
                continue;
            }
        };
        match delimit {
            Delimit::None => continue,
            Delimit::Length(declared) => {
                let room = declared - sent;
                if data.len() as u64 > room {
                    data.truncate(room as usize);
                }
                sent += data.len() as u64;
                if !put(stream, out, data).await {
                    return false;
                }
            }
            Delimit::Chunked => {
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                head::chunk_start(out, data.len());
                if !put(stream, out, data).await {
                    return false;
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    let whole = match delimit {
        Delimit::Chunked => {
            head::chunked_end(out, trailers.as_ref().filter(|_| trailers_accepted));
            true
        }
        Delimit::Length(declared) => sent == declared,
        Delimit::None => true,
    };
    flush(stream, out).await && whole
}

/// Adds `data` to the gathered bytes, or writes both when it is large.
async fn put<S: ClientStream>(stream: &mut S, out: &mut Vec<u8>, data: Bytes) -> bool {
    if out.len() + data.len() <= GATHER {
        out.extend_from_slice(&data);
        return true;
    }
    flush(stream, out).await
        && stream.write_all(&data).await.is_ok()
        && stream.flush().await.is_ok()
}

/// Writes the gathered bytes (through TLS to the socket, too: a flush on
/// a TCP stream costs nothing).
async fn flush<S: ClientStream>(stream: &mut S, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let written = stream.write_all(out).await.is_ok() && stream.flush().await.is_ok();
    out.clear();
    written
}

#[cfg(test)]
mod tests {
    use super::super::{Shutdown, serve_proxy};
    use super::*;
    use http::{HeaderValue, StatusCode};
    use http_body::Frame;
    use http_body_util::{BodyExt, Full, combinators::BoxBody};
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    type TestBody = BoxBody<Bytes, Infallible>;

    impl HeadFields for TestBody {}

    /// Answers by path: `/chunked` streams two chunks and a trailer, `/echo`
    /// reports the body it read, `/nothing` is a 204; anything else is "hello".
    async fn handler(request: Request<ClientBody>, _peer: Peer) -> Response<TestBody> {
        let path = request.uri().path().to_owned();
        let version = format!("{:?}", request.version());
        match path.as_str() {
            "/chunked" => {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-sum", HeaderValue::from_static("9"));
                let frames = Frames(
                    [
                        Frame::data(Bytes::from_static(b"abc")),
                        Frame::data(Bytes::from_static(b"defgh")),
                        Frame::trailers(trailers),
                    ]
                    .into(),
                );
                Response::new(frames.boxed())
            }
            "/echo" => {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let text = format!("{version} read {}", body.len());
                Response::new(Full::new(Bytes::from(text)).boxed())
            }
            "/slow" => {
                let _flag = DropFlag(Arc::clone(&SLOW_DROPPED));
                tokio::time::sleep(Duration::from_secs(30)).await;
                Response::new(Full::new(Bytes::new()).boxed())
            }
            "/nothing" => {
                let mut response = Response::new(Full::new(Bytes::new()).boxed());
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            _ => Response::new(Full::new(Bytes::from_static(b"hello")).boxed()),
        }
    }

    static SLOW_DROPPED: std::sync::LazyLock<Arc<std::sync::atomic::AtomicBool>> =
        std::sync::LazyLock::new(Arc::default);

    /// Sets its flag when dropped.
    struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A body of unknown length.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    /// A codec-served listener with `timeout` as header read timeout; the
    /// sender stops it.
    async fn listener(timeout: Duration) -> (SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, signal) = watch::channel(false);
        let (done, _) = mpsc::channel(1);
        let limits = ConnLimits {
            max_header_bytes: 8192,
            header_read_timeout: timeout,
        };
        let (_, rebind) = watch::channel(None);
        tokio::spawn(serve_proxy(
            listener,
            rebind,
            handler,
            limits,
            crate::config::IoMode::Epoll,
            Shutdown { signal, done },
        ));
        (addr, stop)
    }

    /// Sends `request` and reads until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes")
            .unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn without_dates(text: &str) -> String {
        text.split("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (addr, _stop) = listener(Duration::from_secs(5)).await;
        let answer = exchange(
            addr,
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /nothing HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            without_dates(&answer),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
             HTTP/1.1 200 OK\r\n\r\n\
             HTTP/1.1 204 No Content\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        );
        assert_eq!(answer.matches("\r\ndate: ").count(), 4, "{answer}");
    }

    #[tokio::test]
    async fn a_streamed_body_is_chunked_with_trailers_for_those_who_accept_them() {
        let (addr, _stop) = listener(Duration::from_secs(5)).await;
        let plain = exchange(addr, b"GET /chunked HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert!(
            without_dates(&plain).ends_with(
                "transfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"
            ),
            "{plain}"
        );
        let with = exchange(
            addr,
            b"GET /chunked HTTP/1.1\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(with.ends_with("0\r\nx-sum: 9\r\n\r\n"), "{with}");
    }

    #[tokio::test]
    async fn a_request_with_a_body_hands_the_connection_to_hyper_mid_stream() {
        let (addr, _stop) = listener(Duration::from_secs(5)).await;
        let answer = exchange(
            addr,
            b"GET /first HTTP/1.1\r\n\r\n\
              POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody\
              POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n\
              GET /last HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        let bodies: Vec<&str> = answer
            .split("\r\n\r\n")
            .skip(1)
            .map(|b| b.split("HTTP/1.1 200").next().unwrap())
            .collect();
        assert_eq!(
            bodies,
            ["hello", "HTTP/1.1 read 4", "HTTP/1.1 read 2", "hello"],
            "{answer}"
        );
    }

    #[tokio::test]
    async fn refused_heads_get_json_and_a_close() {
        let (addr, _stop) = listener(Duration::from_secs(5)).await;
        let answer = exchange(addr, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with(r#"{"code":400,"message":"not an HTTP/1.1 request"}"#));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        let answer = exchange(addr, big.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[tokio::test]
    async fn a_silent_or_idle_client_is_closed_after_the_header_timeout() {
        let (addr, _stop) = listener(Duration::from_millis(200)).await;
        let started = std::time::Instant::now();
        assert_eq!(exchange(addr, b"").await, "");
        let answer = exchange(addr, b"GET / HTTP/1.1\r\n\r\nGET / HTT").await;
        assert!(answer.ends_with("hello"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections() {
        let (addr, stop) = listener(Duration::from_secs(30)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(answer[..n].ends_with(b"hello"));
        stop.send(true).unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("closed on shutdown");
        assert_eq!(closed.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_client_that_closes_cancels_its_request_in_flight() {
        let (addr, _stop) = listener(Duration::from_secs(5)).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!SLOW_DROPPED.load(std::sync::atomic::Ordering::SeqCst));
        drop(stream);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !SLOW_DROPPED.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "request not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
