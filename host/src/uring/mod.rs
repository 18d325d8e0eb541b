//! The io_uring I/O path (`proxy.io: io_uring`): each proxy worker owns a
//! ring, and its connections' reads and writes become ring operations
//! instead of `recv`/`send` system calls.
//!
//! With epoll every request costs its own system calls (a `recv` and a
//! `send` on each side); here a worker queues the operations of all its
//! connections and hands them to the kernel in one `io_uring_enter` when
//! its runtime has nothing left to run (tokio's `on_thread_park` hook),
//! then reaps what completed. Completions that arrive while the worker
//! sleeps wake it through the ring's file descriptor, which the runtime
//! watches like any socket. A connection is a [`Stream`]: tokio's
//! `AsyncRead`/`AsyncWrite` over buffers the operations own, so the HTTP/1.1
//! codec and the backend pool use it as they use a `TcpStream`.
//!
//! Ownership is what makes this safe: an operation in flight holds the
//! connection's state (its buffers and its file descriptor) until its
//! completion is reaped, so the kernel never writes into freed memory and a
//! descriptor number is never reused under a queued operation. A dropped
//! stream cancels its pending read; its queued writes finish first.

mod stream;

pub use stream::Stream;

use io_uring::{IoUring, opcode, squeue, types};
use slab::Slab;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use stream::Sock;
use tokio::io::unix::AsyncFd;

/// Submission queue entries per ring (completions: twice as many).
const ENTRIES: u32 = 1024;
/// Rounds of handling and submitting in one reap.
const MAX_PASSES: usize = 64;
/// The user data of operations whose completion nobody waits for (cancels).
const UNWATCHED: u64 = u64::MAX;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// What an operation in flight was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Recv,
    Send,
    Poll,
}

/// An operation in flight: its connection's state stays alive through it.
struct Op {
    sock: Arc<Mutex<Sock>>,
    kind: Kind,
}

/// A worker's ring and the operations in flight on it.
struct Driver {
    /// Tells this ring's operations from another worker's.
    id: u64,
    ring: IoUring,
    ops: Slab<Op>,
    /// Entries queued since the last `io_uring_enter`.
    unsubmitted: usize,
    /// Completions copied out of the queue before they are handled.
    reaped: Vec<(u64, i32)>,
    /// Connections written to since the last submission.
    pending_sends: Vec<Arc<Mutex<Sock>>>,
}

/// Sets up this thread's ring and the task that reaps its completions
/// while the worker sleeps. Call on a worker thread, inside its runtime;
/// the runtime must call [`before_park`] from its `on_thread_park` hook.
pub fn start() -> io::Result<()> {
    start_sized(ENTRIES)
}

/// [`start`] with a ring of `entries` submission entries.
fn start_sized(entries: u32) -> io::Result<()> {
    // Completions are handled when the worker next enters the kernel, not
    // by interrupting it (an inter-processor interrupt per completion cost
    // a fifth of the CPU time); kernels before 5.19 lack the flags.
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries)
        .or_else(|_| IoUring::new(entries))?;
    // The runtime watches a descriptor of its own for the ring, so it stays
    // open for as long as the watch does, whatever happens to the ring.
    // SAFETY: `RingFd` owns the descriptor and always returns it.
    let fd = unsafe {
        AsyncFd::register_with_interest(
            RingFd(ring_fd(&ring).try_clone_to_owned()?),
            tokio::io::Interest::READABLE,
        )
    }?;
    DRIVER.with(|driver| {
        *driver.borrow_mut() = Some(Driver {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ring,
            ops: Slab::with_capacity(256),
            unsubmitted: 0,
            reaped: Vec::with_capacity(256),
            pending_sends: Vec::with_capacity(256),
        });
    });
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            ready.clear_ready();
            with_driver(Driver::reap);
        }
    });
    Ok(())
}

/// Whether this thread has a ring (a worker started with `proxy.io: io_uring`).
pub fn active() -> bool {
    DRIVER.with(|driver| driver.try_borrow().is_ok_and(|d| d.is_some()))
}

/// The runtime is about to sleep: turn what its tasks wrote into `send`s,
/// hand the queued operations to the kernel and wake the tasks whose
/// operations have completed.
pub fn before_park() {
    with_driver(|driver| {
        driver.flush_sends();
        driver.submit();
        driver.reap();
    });
}

/// A descriptor of the ring, watched by the runtime.
struct RingFd(OwnedFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn ring_fd(ring: &IoUring) -> BorrowedFd<'_> {
    // SAFETY: the ring owns its descriptor and keeps it open while borrowed.
    unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) }
}

/// Runs `f` on this thread's driver; `None` off a worker with a ring.
fn with_driver<R>(f: impl FnOnce(&mut Driver) -> R) -> Option<R> {
    DRIVER.with(|driver| {
        let mut driver = driver.try_borrow_mut().ok()?;
        driver.as_mut().map(f)
    })
}

/// The error for a stream used on a thread without its ring.
fn no_ring() -> io::Error {
    io::Error::other("io_uring stream used off its worker thread")
}

/// Locks a connection's state (a panic elsewhere does not make it unusable).
fn lock(sock: &Mutex<Sock>) -> MutexGuard<'_, Sock> {
    sock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Driver {
    /// Queues `entry` for `sock`; the connection's state lives at least
    /// until the completion is reaped.
    fn push_entry(&mut self, sock: &Arc<Mutex<Sock>>, kind: Kind, entry: squeue::Entry) -> usize {
        let key = self.ops.insert(Op {
            sock: Arc::clone(sock),
            kind,
        });
        self.queue(entry.user_data(key as u64));
        key
    }

    /// Asks the kernel to cancel operation `key` (its completion then
    /// arrives as usual, with `ECANCELED` or its result).
    fn cancel(&mut self, key: usize) {
        self.queue(
            opcode::AsyncCancel::new(key as u64)
                .build()
                .user_data(UNWATCHED),
        );
    }

    fn queue(&mut self, entry: squeue::Entry) {
        // SAFETY: every buffer an entry points into belongs to the state of
        // a connection that `ops` keeps alive until the completion is
        // reaped, and is neither moved nor resized while it is in flight
        // (see `stream`).
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.unsubmitted += 1;
            return;
        }
        self.submit();
        // SAFETY: as above.
        if unsafe { self.ring.submission().push(&entry) }.is_ok() {
            self.unsubmitted += 1;
            return;
        }
        // The kernel takes no more entries (it failed to, and said so in
        // the log): the operation fails at the next reap, as if the kernel
        // had refused it, instead of this worker spinning here.
        let key = entry.get_user_data();
        if key != UNWATCHED {
            self.reaped.push((key, -libc::EAGAIN));
        }
    }

    /// Hands the queued entries to the kernel, and lets it run the work
    /// that posts completions if some is waiting, or move completions that
    /// overflowed a full queue back into it.
    fn submit(&mut self) {
        let sq = self.ring.submission();
        if self.unsubmitted == 0 && !sq.taskrun() && !sq.cq_overflow() {
            return;
        }
        drop(sq);
        loop {
            match self.ring.submit() {
                Ok(_) => break,
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: copy completions out
                    // (they are handled by the next reap), then retry.
                    self.reap_queue();
                }
                Err(error) => {
                    tracing::error!(%error, "io_uring submission failed");
                    break;
                }
            }
        }
        self.unsubmitted = 0;
    }

    /// Handles every completion in the queue, then submits what that queued.
    /// Completions of entries the submission ran at once (a `send`, a
    /// `recv` with data waiting) are handled in the same pass.
    fn reap(&mut self) {
        // Bounded, so that a kernel that keeps failing cannot hold the
        // worker here; what is left waits for the next pass.
        for _ in 0..MAX_PASSES {
            self.reap_queue();
            if self.reaped.is_empty()
                && self.unsubmitted == 0
                && !self.ring.submission().cq_overflow()
            {
                return;
            }
            self.handle_reaped();
            self.submit();
        }
    }

    fn reap_queue(&mut self) {
        self.reaped.extend(
            self.ring
                .completion()
                .map(|entry| (entry.user_data(), entry.result())),
        );
    }

    fn handle_reaped(&mut self) {
        let mut reaped = std::mem::take(&mut self.reaped);
        for (key, result) in reaped.drain(..) {
            if key == UNWATCHED {
                continue;
            }
            let Some(op) = self.ops.try_remove(key as usize) else {
                continue;
            };
            stream::complete(self, &op.sock, op.kind, result);
        }
        // Completions copied out while these were handled (to make room in
        // a full queue) wait for the next pass; none is lost.
        if self.reaped.is_empty() {
            self.reaped = reaped;
        }
    }
}

impl Drop for Driver {
    /// The kernel tears a ring down after its descriptor closes, possibly
    /// still writing into the buffers of reads in flight: those buffers are
    /// leaked rather than freed (this happens only when a worker ends).
    fn drop(&mut self) {
        std::mem::forget(std::mem::take(&mut self.ops));
    }
}

/// Builds a `recv` of up to `len` bytes into `buf`.
fn recv(fd: RawFd, buf: *mut u8, len: usize) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), buf, len as u32).build()
}

/// Builds a `send` of `len` bytes from `buf`.
fn send(fd: RawFd, buf: *const u8, len: usize) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), buf, len as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

/// Builds a wait for `fd` to become readable (or closed).
fn poll_readable(fd: RawFd) -> squeue::Entry {
    opcode::PollAdd::new(types::Fd(fd), (libc::POLLIN | libc::POLLRDHUP) as u32).build()
}
