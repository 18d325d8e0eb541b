//! A TCP connection whose reads and writes go through the worker's ring.
//!
//! At most one `recv`, one `send` and one readiness poll are in flight per
//! connection. A read copies out of the buffer the last `recv` filled and
//! queues the next `recv` when that buffer is empty. A write copies into
//! the send buffer and returns at once; everything written to a connection
//! before the worker next submits leaves in one `send` (a request head and
//! its body, a response head and its first bytes: one segment, not two).
//! Bytes written while a `send` is in flight wait in a second buffer, up to
//! [`MAX_QUEUED`]; the driver sends the rest of a short `send` itself. A
//! `send` error is reported by the next write, flush or shutdown.

use super::{Driver, Kind, lock, no_ring, with_driver};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bounds of a `recv`: a read asks for what its reader has room for,
/// within them. (A fixed 16 KiB for every read left an idle client
/// connection costing half as much again in resident memory, through what
/// the allocator kept of the freed buffers.) The floor matters because a
/// `recv` stays posted after its reader gives up (the codec's read while a
/// request is in flight): the next request lands in it, and one cut short
/// would send that request to hyper.
const MAX_READ: usize = 16 * 1024;
const MIN_READ: usize = 4 * 1024;
/// What a pooled connection's waiting read asks for: a response head.
const WATCH_READ: usize = 4 * 1024;
/// Bytes a writer may queue behind a `send` in flight before it waits.
const MAX_QUEUED: usize = 64 * 1024;

/// An operation in flight: its key in the ring that runs it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    key: usize,
    ring: u64,
}

/// A connection's state, shared by its [`Stream`] and its operations.
pub(super) struct Sock {
    fd: OwnedFd,
    /// What the last `recv` filled; `read[read_pos..]` is unread.
    read: Vec<u8>,
    read_pos: usize,
    recv: Option<InFlight>,
    /// A cancel of the `recv` was asked for (an idle connection gives its
    /// buffer back).
    cancelling: bool,
    eof: bool,
    read_error: Option<i32>,
    poll: Option<InFlight>,
    poll_ready: bool,
    read_waker: Option<Waker>,
    /// Being sent: `write[written..]` has not gone out yet.
    write: Vec<u8>,
    written: usize,
    /// Written while a `send` was in flight; sent after it.
    next: Vec<u8>,
    /// A `send` is in flight (`write` must not change).
    sending: bool,
    /// `write` holds bytes for the worker's next submission, which sends
    /// everything written until then in one `send`.
    send_pending: bool,
    write_error: Option<i32>,
    write_waker: Option<Waker>,
}

impl Sock {
    fn buffered(&self) -> bool {
        self.read_pos < self.read.len()
    }

    fn wake_reader(&mut self) {
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }
}

/// Keeps `slot` holding a waker that wakes `cx`'s task.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A connection served through the worker's ring.
pub struct Stream {
    sock: Arc<Mutex<Sock>>,
}

impl Stream {
    /// Takes over a connected socket (it must not be registered with the
    /// runtime's epoll any more: see [`Stream::from_tokio`]).
    pub fn new(fd: OwnedFd) -> Stream {
        Stream {
            sock: Arc::new(Mutex::new(Sock {
                fd,
                read: Vec::new(),
                read_pos: 0,
                recv: None,
                cancelling: false,
                eof: false,
                read_error: None,
                poll: None,
                poll_ready: false,
                read_waker: None,
                write: Vec::new(),
                written: 0,
                next: Vec::new(),
                sending: false,
                send_pending: false,
                write_error: None,
                write_waker: None,
            })),
        }
    }

    /// Takes a tokio socket off the runtime's epoll and over to the ring.
    pub fn from_tokio(stream: tokio::net::TcpStream) -> io::Result<Stream> {
        Ok(Stream::new(OwnedFd::from(stream.into_std()?)))
    }

    /// Resolves when the connection has something to read (or has closed).
    /// An idle connection waits with a readiness poll and no buffers.
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut s = lock(&self.sock);
            if s.buffered() || s.eof || s.read_error.is_some() {
                return Poll::Ready(Ok(()));
            }
            if std::mem::take(&mut s.poll_ready) {
                return Poll::Ready(Ok(()));
            }
            match s.recv {
                Some(recv) if !s.cancelling => {
                    s.cancelling = true;
                    with_driver(|d| d.cancel_on(recv)).ok_or_else(no_ring)?;
                }
                Some(_) => {}
                None => {
                    s.read = Vec::new();
                    if !s.sending && !s.send_pending {
                        s.write = Vec::new();
                        s.next = Vec::new();
                    }
                    if s.poll.is_none() {
                        let fd = s.fd.as_raw_fd();
                        s.poll = Some(
                            with_driver(|d| {
                                d.push(&self.sock, Kind::Poll, super::poll_readable(fd))
                            })
                            .ok_or_else(no_ring)?,
                        );
                    }
                }
            }
            register(&mut s.read_waker, cx);
            Poll::Pending
        })
    }

    /// Starts the next read now, so that the connection learns at once if
    /// the peer closes it or sends something (a pooled backend connection).
    pub fn watch(&self) -> io::Result<()> {
        let mut s = lock(&self.sock);
        if s.buffered() || s.eof || s.read_error.is_some() || s.recv.is_some() {
            return Ok(());
        }
        start_recv(&self.sock, &mut s, WATCH_READ)
    }

    /// True if a [`watched`](Stream::watch) connection has had nothing from
    /// its peer: no bytes, no close, no error.
    pub fn is_quiet(&self) -> bool {
        let s = lock(&self.sock);
        s.recv.is_some() && !s.cancelling && !s.buffered() && s.write_error.is_none()
    }
}

impl Driver {
    /// Queues an entry like `push`, returning where it runs.
    fn push(
        &mut self,
        sock: &Arc<Mutex<Sock>>,
        kind: Kind,
        entry: io_uring::squeue::Entry,
    ) -> InFlight {
        InFlight {
            key: self.push_entry(sock, kind, entry),
            ring: self.id,
        }
    }

    /// Cancels `op` if it runs on this ring (a connection never changes
    /// threads; one that did keeps its read until the peer ends it).
    fn cancel_on(&mut self, op: InFlight) {
        if op.ring == self.id {
            self.cancel(op.key);
        }
    }

    /// Queues one `send` for each connection written to since the last
    /// submission.
    pub(super) fn flush_sends(&mut self) {
        let mut socks = std::mem::take(&mut self.pending_sends);
        for sock in socks.drain(..) {
            let mut s = lock(&sock);
            if std::mem::take(&mut s.send_pending) && s.write_error.is_none() && !s.write.is_empty()
            {
                queue_send(self, &sock, &mut s);
            }
        }
        self.pending_sends = socks;
    }
}

/// Queues a `recv` of up to `want` bytes (within the bounds above) into the
/// connection's read buffer, which is empty.
fn start_recv(sock: &Arc<Mutex<Sock>>, s: &mut Sock, want: usize) -> io::Result<()> {
    let want = want.clamp(MIN_READ, MAX_READ);
    if s.read.capacity() < want || s.read.capacity() > 2 * want {
        s.read = Vec::with_capacity(want);
    }
    s.read.clear();
    s.read_pos = 0;
    let (buf, len, fd) = (s.read.as_mut_ptr(), s.read.capacity(), s.fd.as_raw_fd());
    s.recv = Some(
        with_driver(|d| d.push(sock, Kind::Recv, super::recv(fd, buf, len))).ok_or_else(no_ring)?,
    );
    Ok(())
}

/// Queues a `send` of what is left in the connection's send buffer.
fn queue_send(driver: &mut Driver, sock: &Arc<Mutex<Sock>>, s: &mut Sock) {
    let rest = &s.write[s.written..];
    let len = rest.len().min(u32::MAX as usize);
    let entry = super::send(s.fd.as_raw_fd(), rest.as_ptr(), len);
    driver.push(sock, Kind::Send, entry);
    s.sending = true;
}

/// Records the completion of a `kind` operation on `sock`.
pub(super) fn complete(driver: &mut Driver, sock: &Arc<Mutex<Sock>>, kind: Kind, result: i32) {
    let mut s = lock(sock);
    match kind {
        Kind::Recv => {
            s.recv = None;
            s.cancelling = false;
            match result {
                n if n > 0 => {
                    // SAFETY: the kernel wrote `n` bytes (at most the
                    // capacity it was given) at the start of the buffer.
                    unsafe { s.read.set_len(n as usize) };
                    s.read_pos = 0;
                }
                0 => s.eof = true,
                n if n == -libc::ECANCELED => {}
                n => s.read_error = Some(-n),
            }
            s.wake_reader();
        }
        Kind::Poll => {
            s.poll = None;
            s.poll_ready = true;
            s.wake_reader();
        }
        Kind::Send => {
            if result <= 0 {
                s.write_error = Some(if result == 0 { libc::EPIPE } else { -result });
                s.sending = false;
                s.write = Vec::new();
                s.next = Vec::new();
                s.written = 0;
            } else {
                s.written += result as usize;
                if s.written < s.write.len() {
                    queue_send(driver, sock, &mut s);
                } else {
                    s.write.clear();
                    s.written = 0;
                    let s = &mut *s;
                    std::mem::swap(&mut s.write, &mut s.next);
                    if s.write.is_empty() {
                        s.sending = false;
                    } else {
                        queue_send(driver, sock, s);
                    }
                }
            }
            s.wake_writer();
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = lock(&self.sock);
        if s.buffered() {
            let n = (s.read.len() - s.read_pos).min(buf.remaining());
            let at = s.read_pos;
            buf.put_slice(&s.read[at..at + n]);
            s.read_pos += n;
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = s.read_error.take() {
            return Poll::Ready(Err(io::Error::from_raw_os_error(error)));
        }
        if s.eof {
            return Poll::Ready(Ok(()));
        }
        if s.recv.is_none() {
            start_recv(&self.sock, &mut s, buf.remaining())?;
        }
        register(&mut s.read_waker, cx);
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut s = lock(&self.sock);
        if let Some(error) = s.write_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(error)));
        }
        if s.sending {
            let room = MAX_QUEUED.saturating_sub(s.next.len());
            if room == 0 {
                register(&mut s.write_waker, cx);
                return Poll::Pending;
            }
            let n = data.len().min(room);
            s.next.extend_from_slice(&data[..n]);
            return Poll::Ready(Ok(n));
        }
        // No `send` uses the buffer yet: what is written until the worker
        // next submits goes out together.
        let room = MAX_QUEUED.saturating_sub(s.write.len());
        if room == 0 {
            register(&mut s.write_waker, cx);
            return Poll::Pending;
        }
        let n = data.len().min(room);
        s.write.extend_from_slice(&data[..n]);
        if !s.send_pending {
            s.send_pending = true;
            with_driver(|d| d.pending_sends.push(Arc::clone(&self.sock))).ok_or_else(no_ring)?;
        }
        Poll::Ready(Ok(n))
    }

    /// The bytes are queued for the kernel (they go at the worker's next
    /// submission); an earlier `send`'s failure is reported here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.sock).write_error {
            Some(error) => Poll::Ready(Err(io::Error::from_raw_os_error(error))),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Waits for every queued byte to be sent, then ends the sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.sock);
        if let Some(error) = s.write_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(error)));
        }
        if s.sending || s.send_pending {
            register(&mut s.write_waker, cx);
            return Poll::Pending;
        }
        // SAFETY: a plain system call on a descriptor this state owns.
        if unsafe { libc::shutdown(s.fd.as_raw_fd(), libc::SHUT_WR) } == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::last_os_error()))
        }
    }
}

impl Drop for Stream {
    /// Cancels the read and the poll in flight; queued writes still go out,
    /// and the descriptor closes when the last operation completes.
    fn drop(&mut self) {
        let s = lock(&self.sock);
        let pending = [s.recv, s.poll];
        with_driver(|d| {
            for op in pending.into_iter().flatten() {
                d.cancel_on(op);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Runs `test` on a runtime that drives a ring, as a worker does.
    fn on_a_ring<F: Future<Output = ()>>(test: F) {
        on_a_ring_of(super::super::ENTRIES, test);
    }

    /// The same with a ring of `entries` submission entries.
    fn on_a_ring_of<F: Future<Output = ()>>(entries: u32, test: F) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(super::super::before_park)
            .build()
            .unwrap();
        runtime.block_on(async {
            super::super::start_sized(entries).expect("io_uring is available");
            test.await;
        });
    }

    /// A connected pair: the ring's end and a plain tokio peer.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, listener.accept());
        (
            Stream::from_tokio(accepted.unwrap().0).unwrap(),
            peer.unwrap(),
        )
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_megabyte_each_way_arrives_whole_and_in_order() {
        on_a_ring(async {
            let (mut ring, mut peer) = pair().await;
            let data = pattern(1 << 20);
            let sent = data.clone();
            let writer = async {
                for piece in sent.chunks(100_000) {
                    ring.write_all(piece).await.unwrap();
                }
                ring.flush().await.unwrap();
                let mut back = vec![0; sent.len()];
                ring.read_exact(&mut back).await.unwrap();
                back
            };
            let echo = async {
                let mut got = vec![0; data.len()];
                peer.read_exact(&mut got).await.unwrap();
                peer.write_all(&got).await.unwrap();
                got
            };
            let (back, got) = tokio::join!(writer, echo);
            assert!(got == data, "the peer got other bytes");
            assert!(back == data, "the ring read other bytes");
        });
    }

    #[test]
    fn a_ring_far_smaller_than_the_traffic_loses_and_reorders_nothing() {
        // Two submission entries (four completions) for twelve connections,
        // each with a read and writes in flight: entries are submitted
        // mid-queue and completions overflow the queue, again and again.
        on_a_ring_of(2, async {
            let mut exchanges = Vec::new();
            for i in 0..12u8 {
                let (mut ring, mut peer) = pair().await;
                exchanges.push(async move {
                    let data: Vec<u8> = pattern(40_000).iter().map(|b| b ^ i).collect();
                    let sent = data.clone();
                    let ours = async {
                        for piece in sent.chunks(3_000) {
                            ring.write_all(piece).await.unwrap();
                        }
                        let mut back = vec![0; sent.len()];
                        ring.read_exact(&mut back).await.unwrap();
                        back
                    };
                    let theirs = async {
                        let mut got = vec![0; data.len()];
                        peer.read_exact(&mut got).await.unwrap();
                        peer.write_all(&got).await.unwrap();
                    };
                    let (back, ()) = tokio::join!(ours, theirs);
                    assert!(back == data, "connection {i} got other bytes back");
                });
            }
            let all = futures_join_all(exchanges);
            tokio::time::timeout(Duration::from_secs(20), all)
                .await
                .expect("every exchange finishes");
        });
    }

    /// Runs the futures concurrently on this task.
    async fn futures_join_all<F: Future<Output = ()>>(futures: Vec<F>) {
        let mut set: Vec<_> = futures.into_iter().map(Box::pin).collect();
        std::future::poll_fn(|cx| {
            set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
            if set.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    #[test]
    fn a_closed_peer_reads_as_the_end_and_ends_an_idle_wait() {
        on_a_ring(async {
            let (mut ring, mut peer) = pair().await;
            peer.write_all(b"last").await.unwrap();
            drop(peer);
            ring.readable().await.unwrap();
            let mut all = Vec::new();
            ring.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, b"last");
            let mut more = [0u8; 4];
            assert_eq!(
                ring.read(&mut more).await.unwrap(),
                0,
                "the end stays the end"
            );
        });
    }

    #[test]
    fn an_idle_wait_ends_when_a_request_comes_and_loses_no_byte() {
        on_a_ring(async {
            let (mut ring, mut peer) = pair().await;
            let idle = tokio::time::timeout(Duration::from_millis(100), ring.readable()).await;
            assert!(idle.is_err(), "nothing was sent yet");
            peer.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), ring.readable())
                .await
                .expect("readable once bytes came")
                .unwrap();
            let mut head = [0u8; 18];
            ring.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"GET / HTTP/1.1\r\n\r\n");
        });
    }

    #[test]
    fn a_read_cut_short_by_an_idle_wait_loses_no_byte() {
        on_a_ring(async {
            let (mut ring, mut peer) = pair().await;
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(50), ring.read(&mut byte)).await;
            assert!(read.is_err(), "nothing was sent yet");
            // The read in flight is cancelled for the idle wait; bytes that
            // race the cancel are kept.
            let wait = async {
                tokio::time::timeout(Duration::from_secs(5), ring.readable())
                    .await
                    .expect("readable once bytes came")
                    .unwrap();
            };
            let send = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                peer.write_all(b"xyz").await.unwrap();
            };
            tokio::join!(wait, send);
            let mut got = [0u8; 3];
            ring.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"xyz");
        });
    }

    #[test]
    fn dropping_the_stream_sends_what_was_written_then_closes() {
        on_a_ring(async {
            let (mut ring, mut peer) = pair().await;
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(20), ring.read(&mut byte)).await;
            assert!(read.is_err(), "a read is left in flight");
            let reply = pattern(300_000);
            ring.write_all(&reply).await.unwrap();
            drop(ring);
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut got))
                .await
                .expect("the connection closes")
                .unwrap();
            assert!(got == reply, "{} of {} bytes", got.len(), reply.len());
        });
    }

    #[test]
    fn a_watched_connection_learns_its_peer_closed() {
        on_a_ring(async {
            let (quiet, _peer) = pair().await;
            let (closed, peer) = pair().await;
            let (chatty, mut talker) = pair().await;
            for stream in [&quiet, &closed, &chatty] {
                stream.watch().unwrap();
            }
            drop(peer);
            talker.write_all(b"unasked").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(quiet.is_quiet());
            assert!(!closed.is_quiet(), "the close was seen");
            assert!(!chatty.is_quiet(), "the unasked bytes were seen");
        });
    }

    #[test]
    fn a_stream_off_its_ring_fails_instead_of_hanging() {
        let (ring, _peer) = {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(pair())
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut ring = ring;
        let mut byte = [0u8; 1];
        let error = runtime.block_on(ring.read(&mut byte)).unwrap_err();
        assert!(
            error.to_string().contains("off its worker thread"),
            "{error}"
        );
    }
}
