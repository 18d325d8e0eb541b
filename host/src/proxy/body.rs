//! Body wrappers on the proxy path: a request body that can be handed to the
//! next backend if the first never read it, and a response body that reports
//! when it is finished.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a request body waits until an attempt first reads it.
///
/// A connect failure happens before hyper polls the body, so the body is
/// still in the slot and the request can go to another backend unchanged.
pub struct BodySlot<B> {
    slot: Arc<Mutex<Option<B>>>,
    end_stream: bool,
    hint: SizeHint,
}

impl<B: Body> BodySlot<B> {
    pub fn new(body: B) -> Self {
        BodySlot {
            end_stream: body.is_end_stream(),
            hint: body.size_hint(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// A body for one attempt; it takes the real body out of the slot on first read.
    pub fn attempt(&self) -> ReplayBody<B> {
        ReplayBody {
            slot: Arc::clone(&self.slot),
            active: None,
            end_stream: self.end_stream,
            hint: self.hint,
        }
    }

    /// True when there is no body to send.
    pub fn is_empty(&self) -> bool {
        self.end_stream
    }

    /// The body's length, when known before it is read.
    pub fn exact_len(&self) -> Option<u64> {
        self.hint.exact()
    }

    /// True while another attempt can send the whole body: it is empty, or no attempt has read it.
    pub fn replayable(&self) -> bool {
        self.end_stream || lock(&self.slot).is_some()
    }

    /// `look` at the body while no attempt has taken it.
    pub fn peek<T>(&self, look: impl FnOnce(&B) -> Option<T>) -> Option<T> {
        lock(&self.slot).as_ref().and_then(look)
    }
}

fn lock<B>(slot: &Mutex<Option<B>>) -> std::sync::MutexGuard<'_, Option<B>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The request body as sent on one attempt.
pub struct ReplayBody<B> {
    slot: Arc<Mutex<Option<B>>>,
    active: Option<B>,
    end_stream: bool,
    hint: SizeHint,
}

impl<B> Body for ReplayBody<B>
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
        if this.end_stream {
            return Poll::Ready(None);
        }
        if this.active.is_none() {
            this.active = lock(&this.slot).take();
        }
        match this.active.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(Some(Err(
                "request body already consumed by an earlier attempt".into(),
            ))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end_stream || self.active.as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Counts a response body's bytes; dropping it means the exchange is over.
pub trait Finish: Send {
    fn add_bytes(&mut self, n: usize);
    /// The body failed (the backend broke its framing or went away).
    fn failed(&mut self);
}

/// A response body that counts bytes and drops its `F` when done (or abandoned).
pub struct ObservedBody<B, F> {
    inner: B,
    finish: Option<F>,
}

impl<B, F> ObservedBody<B, F> {
    pub fn new(inner: B, finish: F) -> Self {
        ObservedBody {
            inner,
            finish: Some(finish),
        }
    }

    /// What is told when the body is done, until then.
    pub fn finish(&self) -> Option<&F> {
        self.finish.as_ref()
    }
}

impl<B, F> Body for ObservedBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: Finish + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(finish)) = (frame.data_ref(), this.finish.as_mut()) {
                    finish.add_bytes(data.len());
                }
                if this.inner.is_end_stream() {
                    this.finish = None;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut finish) = this.finish.take() {
                    finish.failed();
                }
            }
            Poll::Ready(None) => this.finish = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn unread_body_can_be_sent_again() {
        let slot = BodySlot::new(Full::new(Bytes::from_static(b"hello")));
        let first = slot.attempt();
        drop(first);
        assert!(slot.replayable());
        let body = slot.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert!(!slot.replayable());
        assert!(slot.attempt().collect().await.is_err());
    }

    #[tokio::test]
    async fn empty_body_is_always_replayable() {
        let slot = BodySlot::new(Full::new(Bytes::new()));
        let _ = slot.attempt().collect().await.unwrap();
        assert!(slot.replayable());
    }

    struct Count(Arc<AtomicUsize>);
    impl Finish for Count {
        fn add_bytes(&mut self, n: usize) {
            self.0.fetch_add(n, Ordering::SeqCst);
        }
        fn failed(&mut self) {
            self.0.fetch_add(100, Ordering::SeqCst);
        }
    }
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1000, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn observed_body_counts_and_finishes_once() {
        let seen = Arc::new(AtomicUsize::new(0));
        let body = ObservedBody::new(Full::new(Bytes::from_static(b"abcd")), Count(seen.clone()));
        let _ = body.collect().await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 1004);
    }
}
