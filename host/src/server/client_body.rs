//! The body of a client's request as the proxy sees it: none at all or a
//! small one read whole with its head (the gateway's own HTTP/1.1 codec),
//! or hyper's streamed body (HTTP/2, and HTTP/1.1 uploads the codec hands
//! over: chunked, large, or not arrived yet).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pub enum ClientBody {
    Empty,
    /// All of a `Content-Length` body, read with the head.
    Whole(Bytes),
    Streamed(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match this {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Whole(_) => match std::mem::replace(this, ClientBody::Empty) {
                ClientBody::Whole(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                _ => Poll::Ready(None),
            },
            ClientBody::Streamed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Whole(data) => data.is_empty(),
            ClientBody::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Whole(data) => SizeHint::with_exact(data.len() as u64),
            ClientBody::Streamed(body) => body.size_hint(),
        }
    }
}
