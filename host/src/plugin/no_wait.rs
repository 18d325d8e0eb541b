//! WASI's blocking I/O for plugins that are called synchronously.
//!
//! Plugin exports are called as plain functions (no fiber, no future): that
//! is most of what a call costs beyond the guest's own work. wasmtime-wasi's
//! synchronous bindings run each blocking operation (`blocking-write-and-
//! flush`, `poll`, dropping a stream, …) with Tokio's `Handle::block_on`,
//! which panics on a Tokio worker thread — where the gateway calls plugins.
//! A plugin must answer without waiting anyway, so these operations are
//! linked here instead: each polls its non-blocking form exactly once. What
//! plugins really use, stdout and stderr, is always ready and completes;
//! anything that would wait (a timer, stdin) fails the call as one that
//! waited, the same answer an asynchronous call polled once gives.

use super::state::PluginState;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::io::streams::{
    HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, DynPollable, Network, StreamError, StreamResult, TcpSocket,
    UdpSocket,
};

/// What a call that waited on a pollable fails with.
const BLOCKED: &str = "plugin waited for a timer or I/O; a plugin must answer without waiting";

/// Runs `future` to its first `Pending`: its answer, or the `BLOCKED` error.
fn once<F: Future>(future: F) -> wasmtime::Result<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => Ok(answer),
        Poll::Pending => Err(wasmtime::format_err!(BLOCKED)),
    }
}

/// `once` for operations that answer a `StreamResult`.
fn once_stream<T>(future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    once(future).map_err(StreamError::Trap)?
}

/// The store's resource table, seen through the non-waiting implementations.
pub struct NoWait<'a>(&'a mut ResourceTable);

struct Io;

impl HasData for Io {
    type Data<'a> = NoWait<'a>;
}

/// Replaces `wasi:io/poll` and `wasi:io/streams` in a linker that already
/// holds wasmtime-wasi's synchronous WASI, and the socket calls whose
/// synchronous versions block (see `deny_sockets`).
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<PluginState, Io>(linker, |s| NoWait(&mut s.table))?;
    streams::add_to_linker::<PluginState, Io>(linker, |s| NoWait(&mut s.table))?;
    deny_sockets(linker)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The WASI version wasmtime-wasi links (`wasi:sockets/tcp@…`).
const WASI_VERSION: &str = "0.2.12";

/// Plugins get no network (`PluginState` allows neither TCP nor UDP), so
/// binding, listening and creating a UDP socket answer `access-denied`, as
/// the asynchronous versions do under that policy; the synchronous ones
/// would first call `block_on` and panic on a worker thread.
fn deny_sockets(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    let denied = ErrorCode::AccessDenied;
    let mut tcp = linker.instance(&format!("wasi:sockets/tcp@{WASI_VERSION}"))?;
    tcp.func_wrap(
        "[method]tcp-socket.start-bind",
        move |_, _: (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Ok((Err::<(), _>(denied),))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.start-listen",
        move |_, _: (Resource<TcpSocket>,)| Ok((Err::<(), _>(denied),)),
    )?;
    let mut udp = linker.instance(&format!("wasi:sockets/udp-create-socket@{WASI_VERSION}"))?;
    udp.func_wrap("create-udp-socket", move |_, _: (IpAddressFamily,)| {
        Ok((Err::<Resource<UdpSocket>, _>(denied),))
    })?;
    Ok(())
}

impl poll::Host for NoWait<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        once(async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for NoWait<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        once(async_poll::HostPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        once(async_poll::HostPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NoWait<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NoWait<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        once(AsyncOutput::drop(self.0, stream))?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        once_stream(AsyncOutput::blocking_write_and_flush(self.0, stream, bytes))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        once_stream(AsyncOutput::blocking_write_zeroes_and_flush(
            self.0, stream, len,
        ))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        once_stream(AsyncOutput::blocking_flush(self.0, stream))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        once_stream(AsyncOutput::blocking_splice(self.0, dst, src, len))
    }
}

impl streams::HostInputStream for NoWait<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        once(AsyncInput::drop(self.0, stream))?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        once_stream(AsyncInput::blocking_read(self.0, stream, len))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        once_stream(AsyncInput::blocking_skip(self.0, stream, len))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}
