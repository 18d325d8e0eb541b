//! A client's request body on its way to a backend.
//!
//! Two rules keep slow clients from holding backend connections: a body
//! must keep arriving (`proxy.client_body_timeout` bounds the gap between
//! two reads, as nginx's `client_body_timeout`), and a small body with a
//! declared length is read whole *before* a backend connection is taken, so
//! a client trickling a form post a byte a second waits on its own and holds
//! nothing of the pool (it can then also go to another backend after a
//! failed attempt). Larger and chunked bodies stream.
//!
//! Every way a body can fail is the client's doing and is told apart here:
//! too large (413), too slow (408), malformed framing (400), or the client
//! went away (499). None of them is a backend failure.

use super::body::BoxError;
use super::error::ProxyError;
use crate::server::ClientBody;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Bodies of at most this many declared bytes are read before a backend is chosen.
pub const BUFFERED_BYTES: u64 = 64 * 1024;

/// Bodies read whole of at most this many bytes are written to a backend
/// together with the request head: one copy, one send.
const INLINE_BYTES: usize = 16 * 1024;

/// The body as sent to backends: read already, or streamed from the client.
pub enum Upload {
    Whole(Option<Bytes>),
    /// Read as it is forwarded; its bytes counted in `received` as they come.
    Streamed(Limited<Paced<ClientBody>>, Counter),
}

impl Upload {
    /// Wraps the client's body under `max_bytes` and `gap`, and reads it
    /// whole when it is small and of declared length.
    /// `received` counts the body's bytes.
    pub async fn prepare(
        body: ClientBody,
        max_bytes: u64,
        gap: Duration,
        received: Counter,
    ) -> Result<Upload, ProxyError> {
        if let ClientBody::Whole(data) = body {
            // Read with its head by the codec: only the limit is left to check.
            if data.len() as u64 > max_bytes {
                return Err(ProxyError::BodyTooLarge);
            }
            received.inc_by(data.len() as u64);
            return Ok(Upload::Whole(Some(data)));
        }
        let declared = body.size_hint().exact();
        let empty = body.is_end_stream();
        let streamed = Limited::new(
            Paced::new(body, gap),
            usize::try_from(max_bytes).unwrap_or(usize::MAX),
        );
        match declared {
            _ if empty => Ok(Upload::Whole(None)),
            Some(n) if n <= BUFFERED_BYTES => {
                let whole = read_whole(streamed, n).await?;
                received.inc_by(whole.len() as u64);
                Ok(Upload::Whole(Some(whole)))
            }
            _ => Ok(Upload::Streamed(streamed, received)),
        }
    }
}

impl Upload {
    /// The body, when it was read whole and is small enough to go out in the
    /// head's write (a cheap reference-counted clone).
    pub fn inline(&self) -> Option<Bytes> {
        match self {
            Upload::Whole(Some(data)) if data.len() <= INLINE_BYTES => Some(data.clone()),
            _ => None,
        }
    }
}

async fn read_whole(
    mut body: Limited<Paced<ClientBody>>,
    declared: u64,
) -> Result<Bytes, ProxyError> {
    let mut whole = BytesMut::with_capacity(declared as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| blame(e.as_ref()))?;
        if let Some(data) = frame.data_ref() {
            whole.extend_from_slice(data);
        }
    }
    Ok(whole.freeze())
}

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Upload::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Upload::Streamed(body, received) => {
                let frame = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    received.inc_by(data.len() as u64);
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upload::Whole(data) => data.is_none(),
            Upload::Streamed(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upload::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Upload::Streamed(body, _) => body.size_hint(),
        }
    }
}

/// The client sent nothing of its body for `proxy.client_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("client body timeout")]
pub struct BodyTimeout;

/// A body that fails with [`BodyTimeout`] when the gap between two of its
/// frames grows past `gap`. The timer exists only once the body has had to
/// wait.
pub struct Paced<B> {
    inner: B,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<B> Paced<B> {
    pub fn new(inner: B, gap: Duration) -> Self {
        Paced {
            inner,
            gap,
            timer: None,
            armed: false,
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let gap = this.gap;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                if !this.armed {
                    timer.as_mut().reset(Instant::now() + gap);
                    this.armed = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whose fault a failed request body is, as the answer to give.
pub fn blame(error: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge;
        }
        if e.is::<BodyTimeout>() {
            return ProxyError::ClientBodyTimeout;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
            ) {
                return ProxyError::ClientClosed;
            }
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_closed())
        {
            return ProxyError::ClientClosed;
        }
        source = e.source();
    }
    ProxyError::BadRequestBody
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed frame by frame through a channel.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|d| d.map(|d| Ok(Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = Paced::new(Channel(rx), Duration::from_millis(300));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.send(Bytes::from_static(b"b")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            drop(tx);
        });
        // A pause shorter than the gap is fine; a longer one is not.
        assert!(body.frame().await.unwrap().is_ok());
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(blame(error.as_ref()), ProxyError::ClientBodyTimeout);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn body_errors_are_the_clients() {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(blame(&eof), ProxyError::ClientClosed);
        let bad = std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid chunk size line");
        assert_eq!(blame(&bad), ProxyError::BadRequestBody);
        let big = http_body_util::Full::new(Bytes::from_static(b"abc"));
        let error = Limited::new(big, 2).collect().await.unwrap_err();
        assert_eq!(blame(error.as_ref()), ProxyError::BodyTooLarge);
    }
}
