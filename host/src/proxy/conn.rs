//! One keep-alive connection to a backend, and one request/response exchange
//! on it: write the request (head, then the streamed body), read the
//! response head. The response body is read later by [`super::backend_body`].
//!
//! The exchange runs in the request's own task. Reading the response head
//! and writing the request body go on at the same time, so a backend that
//! answers before it has read the whole upload (an early 413, an echo that
//! streams back) is relayed at once; the rest of the upload then finishes on
//! a task of its own and the connection is not reused.

use super::body::BoxError;
use super::pool::Permit;
use crate::http1::chunked::{chunk_header, encode_trailers};
use crate::http1::client::{self as wire, RequestFraming, ResponseHead, WireError};
use crate::uring;
use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

/// The largest response head accepted from a backend.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Room made in the read buffer before each read.
pub const READ_SIZE: usize = 16 * 1024;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened: nothing reached the backend.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The gateway could not even try: out of file descriptors, memory or
    /// ephemeral ports. Says nothing about the backend.
    #[error("local resources exhausted: {0}")]
    Local(io::Error),
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before a whole response head.
    #[error("backend closed the connection before answering")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] WireError),
    /// The request body could not be read (too large, client gone).
    #[error("request body failed")]
    Body(#[source] BoxError),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    /// A connect error: the gateway's own shortage, or the backend's failure.
    pub fn connecting(error: io::Error) -> SendError {
        const EMFILE: i32 = 24;
        const ENFILE: i32 = 23;
        const ENOMEM: i32 = 12;
        const ENOBUFS: i32 = 105;
        const EADDRNOTAVAIL: i32 = 99;
        match error.raw_os_error() {
            Some(EMFILE | ENFILE | ENOMEM | ENOBUFS | EADDRNOTAVAIL) => SendError::Local(error),
            _ => SendError::Connect(error.to_string()),
        }
    }
}

/// A connection to a backend: TCP, TLS over it (`https://` backends), or
/// TCP through the worker's io_uring ring (`proxy.io: io_uring`).
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Uring(uring::Stream),
}

impl Stream {
    fn split(self) -> (ReadSide, WriteSide) {
        match self {
            Stream::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (Either::Left(read), Either::Left(write))
            }
            stream => {
                let (read, write) = tokio::io::split(stream);
                (Either::Right(read), Either::Right(write))
            }
        }
    }

    fn reunite(read: ReadSide, write: WriteSide) -> Option<Stream> {
        match (read, write) {
            (Either::Left(read), Either::Left(write)) => read.reunite(write).ok().map(Stream::Tcp),
            (Either::Right(read), Either::Right(write)) => {
                read.is_pair_of(&write).then(|| read.unsplit(write))
            }
            _ => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Uring(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Uring(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Uring(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Uring(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// The read side of a connection whose upload another task is writing
/// (TCP's owned half, or a shared one for TLS and io_uring).
pub type ReadSide = Either<OwnedReadHalf, ReadHalf<Stream>>;

/// The write side, while an upload is being written.
pub type WriteSide = Either<OwnedWriteHalf, WriteHalf<Stream>>;

/// The connection, whole; or only its read side while the rest of an
/// upload is still being written by another task.
pub enum Io {
    Whole(Stream),
    Read(ReadSide),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Whole(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Read(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

/// A connection and the bytes read from it that nobody has used yet.
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
    /// Its place under the backend's connection cap, for as long as it lives.
    pub permit: Permit,
}

/// What to send: the encoded head, and the body when there is one.
pub struct Outgoing<'a, B> {
    pub head: &'a [u8],
    pub body: Option<B>,
    pub framing: RequestFraming,
    /// The request was HEAD: the response has no body whatever it declares.
    pub head_request: bool,
}

impl Conn {
    pub fn new(stream: Stream, permit: Permit) -> Self {
        Conn {
            io: Io::Whole(stream),
            buf: BytesMut::new(),
            permit,
        }
    }

    /// Readies a connection going back to the pool: on io_uring, its next
    /// read starts now, so [`is_idle_usable`](Conn::is_idle_usable) learns
    /// of a close without a system call. False if it cannot be kept.
    pub fn watch(&self) -> bool {
        match &self.io {
            Io::Whole(Stream::Uring(stream)) => stream.watch().is_ok(),
            _ => true,
        }
    }

    /// True if an idle connection can carry a request: the backend has
    /// neither closed it nor sent anything unasked. Costs no system call
    /// unless the socket was reported readable.
    pub fn is_idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let stream = match &mut self.io {
            Io::Whole(Stream::Tcp(stream)) => stream,
            // TLS: records that carry no data (session tickets) are taken
            // in here; anything else (data, close_notify, EOF) retires it.
            Io::Whole(Stream::Tls(stream)) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                return Pin::new(stream).poll_read(&mut cx, &mut buf).is_pending();
            }
            // io_uring: a read has been waiting since the connection came
            // back to the pool (`watch`); it is still waiting, empty-handed.
            Io::Whole(Stream::Uring(stream)) => return stream.is_quiet(),
            Io::Read(_) => return false,
        };
        match stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Sends the request and reads the response head. On success the
    /// connection comes back positioned at the response body; `false` in the
    /// second place means the upload is still running and the connection must
    /// not carry another request.
    pub async fn exchange<B>(
        mut self,
        outgoing: Outgoing<'_, B>,
    ) -> Result<(ResponseHead, Conn, bool), Failure>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let Outgoing {
            head,
            body,
            framing,
            head_request,
        } = outgoing;
        let Some(body) = body else {
            let written = match &mut self.io {
                Io::Whole(Stream::Tcp(stream)) => stream.write_all(head).await,
                Io::Whole(Stream::Uring(stream)) => stream.write_all(head).await,
                Io::Whole(Stream::Tls(stream)) => match stream.write_all(head).await {
                    Ok(()) => stream.flush().await,
                    Err(error) => Err(error),
                },
                Io::Read(_) => return Err(Failure::fresh(SendError::Closed)),
            };
            if let Err(error) = written {
                return Err(Failure::fresh(error.into()));
            }
            let response = read_head(&mut self.io, &mut self.buf, head_request).await;
            return response.map(|h| (h, self, true));
        };
        let Conn {
            io: Io::Whole(stream),
            mut buf,
            permit,
        } = self
        else {
            return Err(Failure::fresh(SendError::Closed));
        };
        let (read, write) = stream.split();
        let mut io = Io::Read(read);
        let mut upload = Box::pin(upload(write, head.to_vec(), body, framing));
        let mut uploaded = None;
        let response = loop {
            tokio::select! {
                done = &mut upload, if uploaded.is_none() => match done {
                    Ok(write) => uploaded = Some(write),
                    Err(error) => return Err(Failure { error, stale: false }),
                },
                response = read_head(&mut io, &mut buf, head_request) => break response?,
            }
        };
        let (io, finished) = match uploaded {
            Some(write) => {
                let Io::Read(read) = io else {
                    return Err(Failure::fresh(SendError::Closed));
                };
                match Stream::reunite(read, write) {
                    Some(stream) => (Io::Whole(stream), true),
                    None => return Err(Failure::fresh(SendError::Closed)),
                }
            }
            None => {
                tokio::spawn(async move {
                    if let Err(error) = upload.await {
                        tracing::debug!(%error, "upload after an early response failed");
                    }
                });
                (io, false)
            }
        };
        let conn = Conn { io, buf, permit };
        Ok((response, conn, finished))
    }
}

/// A failed exchange; `stale` when it failed before the backend sent a
/// byte, as on a kept-alive connection the backend had just closed.
#[derive(Debug)]
pub struct Failure {
    pub error: SendError,
    pub stale: bool,
}

impl Failure {
    fn fresh(error: SendError) -> Self {
        let stale = matches!(error, SendError::Io(_) | SendError::Closed);
        Failure { error, stale }
    }
}

/// Reads until `buf` holds a whole response head and takes it off.
async fn read_head(
    io: &mut Io,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<ResponseHead, Failure> {
    loop {
        if !buf.is_empty() {
            match wire::parse_response(buf, head_request) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(error) => return Err(Failure::fresh(error.into())),
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(Failure::fresh(
                    WireError::HeadTooLarge(MAX_HEAD_BYTES).into(),
                ));
            }
        }
        buf.reserve(READ_SIZE);
        let stale = buf.is_empty();
        match io.read_buf(buf).await {
            Ok(0) => {
                return Err(Failure {
                    error: SendError::Closed,
                    stale,
                });
            }
            Ok(_) => {}
            Err(error) => {
                return Err(Failure {
                    error: error.into(),
                    stale,
                });
            }
        }
    }
}

/// Writes the head and the body, framed as announced; gives the write half back.
async fn upload<B>(
    mut write: WriteSide,
    head: Vec<u8>,
    mut body: B,
    framing: RequestFraming,
) -> Result<WriteSide, SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    write.write_all(&head).await?;
    let mut sent = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SendError::Body(e.into()))?;
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            RequestFraming::Chunked => {
                let mut chunk = chunk_header(data.len()).chain(data).chain(&b"\r\n"[..]);
                write.write_all_buf(&mut chunk).await?;
            }
            RequestFraming::Length(n) if sent > n => {
                return Err(SendError::Body("request body longer than declared".into()));
            }
            _ => write.write_all_buf(&mut data).await?,
        }
    }
    match framing {
        RequestFraming::Chunked => {
            let mut end = b"0\r\n".to_vec();
            encode_trailers(&mut end, &trailers.unwrap_or_default());
            write.write_all(&end).await?;
        }
        RequestFraming::Length(n) if sent != n => {
            return Err(SendError::Body("request body shorter than declared".into()));
        }
        _ => {}
    }
    write.flush().await?;
    Ok(write)
}
