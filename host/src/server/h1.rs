//! One client connection under the gateway's own HTTP/1.1 codec: read a
//! head, run the handler, write the response, repeat.
//!
//! hyper's server connection is general (any IO, any service, a state
//! machine that suits every use); on the proxy's hot path it was a third of
//! the instructions per request. This loop does only what a bodiless
//! HTTP/1.1 request needs and hands the connection, unread bytes first, to
//! hyper when a request needs more (see `head`).

use super::head::{self, Delimit, Head, HeadError, Parsed};
use super::rewind::Rewound;
use super::{ClientBody, ConnLimits, date, serve_with_hyper, stop_requested};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// Response bytes gathered before a write; bigger data is written as it is.
const GATHER: usize = 16 * 1024;

/// How a connection's request loop ended.
enum End {
    /// Closed (by either side, on shutdown or after an error).
    Closed,
    /// A request the codec leaves to hyper; these bytes are unread.
    HandOver(BytesMut),
}

pub async fn serve_connection<H, F, B>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: H,
    limits: ConnLimits,
    builder: Arc<auto::Builder<TokioExecutor>>,
    signal: watch::Receiver<bool>,
) where
    H: Fn(Request<ClientBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    match requests(&mut stream, peer, &handler, limits, signal.clone()).await {
        End::Closed => {}
        End::HandOver(read) => {
            let io = TokioIo::new(Rewound::new(read, stream));
            let serve = move |request: Request<hyper::body::Incoming>| {
                handler(request.map(ClientBody::Streamed), peer)
            };
            serve_with_hyper(io, peer, serve, &builder, signal).await;
        }
    }
}

async fn requests<H, F, B>(
    stream: &mut TcpStream,
    peer: SocketAddr,
    handler: &H,
    limits: ConnLimits,
    signal: watch::Receiver<bool>,
) -> End
where
    H: Fn(Request<ClientBody>, SocketAddr) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut read = BytesMut::with_capacity(8 * 1024);
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut stop = pin!(stop_requested(signal.clone()));
    let mut deadline = pin!(tokio::time::sleep(limits.header_read_timeout));
    loop {
        // A head within `header_read_timeout` of starting to wait for it,
        // idle keep-alive time included.
        let mut waiting = false;
        let Head {
            request,
            close,
            trailers,
        } = loop {
            match head::parse_request(&mut read, limits.max_header_bytes) {
                Ok(Parsed::Request(head)) => break head,
                Ok(Parsed::HandOver) => return End::HandOver(read),
                Ok(Parsed::Partial) => {}
                Err(error) => {
                    refuse(stream, &error).await;
                    return End::Closed;
                }
            }
            if !waiting {
                waiting = true;
                deadline
                    .as_mut()
                    .reset(Instant::now() + limits.header_read_timeout);
            }
            if read.capacity() - read.len() < 1024 {
                read.reserve(8 * 1024);
            }
            tokio::select! {
                biased;
                result = stream.read_buf(&mut read) => match result {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {}
                },
                () = &mut deadline => {
                    tracing::debug!(%peer, "no request head in time");
                    return End::Closed;
                }
                () = &mut stop => return End::Closed,
            }
        };

        let head_request = request.method() == Method::HEAD;
        let response = handler(request.map(|()| ClientBody::Empty), peer).await;
        let close = close || *signal.borrow();
        let (parts, body) = response.into_parts();
        let delimit = head::delimit(
            parts.status,
            head_request,
            &parts.headers,
            body.size_hint().exact(),
        );
        date::with_now(|now| {
            head::encode_response(&mut out, parts.status, &parts.headers, delimit, close, now);
        });
        let complete = write_body(stream, &mut out, body, delimit.0, trailers).await;
        if close || !complete {
            let _ = stream.shutdown().await;
            return End::Closed;
        }
    }
}

/// Answers a head the codec refuses (400 or 431, JSON) and closes.
async fn refuse(stream: &mut TcpStream, error: &HeadError) {
    tracing::debug!(?error, "request head refused");
    let response = date::with_now(|now| head::refusal(error, now));
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// Streams `body` after the head already in `out`, framed by `delimit`.
/// A body that is ready at once leaves in the head's write. Returns whether
/// the message went out whole (otherwise the connection must close).
async fn write_body<B>(
    stream: &mut TcpStream,
    out: &mut BytesMut,
    body: B,
    delimit: Delimit,
    trailers_accepted: bool,
) -> bool
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut body = pin!(body);
    let mut sent = 0u64;
    let mut trailers: Option<HeaderMap> = None;
    loop {
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
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
async fn put(stream: &mut TcpStream, out: &mut BytesMut, data: Bytes) -> bool {
    if out.len() + data.len() <= GATHER {
        out.extend_from_slice(&data);
        return true;
    }
    flush(stream, out).await && stream.write_all(&data).await.is_ok()
}

/// Writes the gathered bytes.
async fn flush(stream: &mut TcpStream, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let written = stream.write_all(out).await.is_ok();
    out.clear();
    written
}
