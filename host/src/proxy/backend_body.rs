//! A backend's response body, decoded straight off its connection as the
//! client reads it (Content-Length, chunked, or until close). Read to the
//! end on a connection that may be kept, it hands the connection back to the
//! pool at once; dropped early, it closes it. From an HTTP/2 backend it is
//! hyper's stream body instead.

use super::body::BoxError;
use super::conn::{Conn, Io, READ_SIZE, Stream};
use super::pool::{Permit, Pool};
use crate::http1::body::{State, Step, decode};
use crate::http1::client::Framing;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pub enum BackendBody {
    /// Off an HTTP/1.1 connection, by the gateway's codec.
    Wire(WireBody),
    /// An HTTP/2 stream's body, by hyper.
    Multiplexed(hyper::body::Incoming),
}

pub struct WireBody {
    /// `None` once the body is over.
    conn: Option<Conn>,
    state: State,
    /// Where the connection goes back when the body ends cleanly.
    home: Option<(Pool, usize)>,
}

impl BackendBody {
    /// A body framed as `framing`; `home` is set when the connection may be reused.
    pub fn new(conn: Conn, framing: Framing, home: Option<(Pool, usize)>) -> Self {
        BackendBody::Wire(WireBody::new(conn, framing, home))
    }

    /// After a 101: the raw connection, whatever the backend already sent
    /// past the head, and the connection's place under the backend's cap.
    pub fn into_upgraded(self) -> Option<(Stream, BytesMut, Permit)> {
        match self {
            BackendBody::Wire(body) => body.into_upgraded(),
            BackendBody::Multiplexed(_) => None,
        }
    }
}

impl WireBody {
    fn new(conn: Conn, framing: Framing, home: Option<(Pool, usize)>) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
            Framing::Upgrade => State::Upgraded,
        };
        let mut body = WireBody {
            conn: Some(conn),
            state,
            home,
        };
        if state == State::Done {
            body.finish();
        }
        body
    }

    fn into_upgraded(mut self) -> Option<(Stream, BytesMut, Permit)> {
        if self.state != State::Upgraded {
            return None;
        }
        match self.conn.take()? {
            Conn {
                io: Io::Whole(stream),
                buf,
                permit,
            } => Some((stream, buf, permit)),
            Conn {
                io: Io::Read(_), ..
            } => None,
        }
    }

    /// The body ended cleanly: the connection goes home if it may.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else { return };
        if let Some((pool, index)) = self.home.take() {
            pool.release(index, conn);
        }
    }
}

fn closed_early() -> BoxError {
    "backend closed the connection in the middle of the body".into()
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            BackendBody::Wire(body) => Pin::new(body).poll_frame(cx),
            BackendBody::Multiplexed(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Wire(body) => body.is_end_stream(),
            BackendBody::Multiplexed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Wire(body) => body.size_hint(),
            BackendBody::Multiplexed(body) => body.size_hint(),
        }
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match decode(&mut this.state, &mut conn.buf) {
                Step::Data(data) => {
                    if this.state == State::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::Again => continue,
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::Stop => return Poll::Ready(None),
                Step::Fail(error) => return Poll::Ready(Some(Err(error.into()))),
                Step::NeedMore => {}
            }
            conn.buf.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            ));
            match read {
                Ok(0) if this.state == State::UntilClose => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(closed_early()))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgraded)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done | State::Upgraded => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
