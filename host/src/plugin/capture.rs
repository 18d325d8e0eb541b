//! A plugin's stdout and stderr, captured into the gateway's log.
//!
//! Language runtimes print: a Rust panic message, a Python traceback, a
//! JavaScript `console.log`. A plugin has no terminal, so what it writes is
//! kept per instance and, after each call, turned into log lines (at most
//! `MAX_LINE` bytes each, rate-limited with `host.log`). The stderr text of
//! a failed call also names the failure: a trap after the plugin wrote to
//! stderr is a panic, and its message is what the plugin printed.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Longest line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 1024;

/// Most bytes held between two drains (per stream); more is dropped.
const MAX_HELD: usize = 16 * 1024;

/// Which of the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Default)]
struct Held {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// What one instance wrote and nobody has read yet. Shared between the
/// instance's WASI context (which writes) and the runner (which drains).
#[derive(Clone, Default)]
pub struct Capture {
    held: Arc<Mutex<Held>>,
}

impl Capture {
    /// The writer for `stream`, to give to the WASI context.
    pub fn writer(&self, stream: Stream) -> Writer {
        Writer {
            capture: self.clone(),
            stream,
        }
    }

    fn append(&self, stream: Stream, bytes: &[u8]) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let buffer = match stream {
            Stream::Stdout => &mut held.stdout,
            Stream::Stderr => &mut held.stderr,
        };
        let room = MAX_HELD.saturating_sub(buffer.len());
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Takes everything written since the last drain, as lines (without the
    /// line end; a last line without one counts too), each cut at `MAX_LINE`
    /// bytes and made valid UTF-8.
    pub fn drain(&self) -> Vec<(Stream, String)> {
        let (stdout, stderr) = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.stdout.is_empty() && held.stderr.is_empty() {
                return Vec::new();
            }
            (
                std::mem::take(&mut held.stdout),
                std::mem::take(&mut held.stderr),
            )
        };
        let mut lines = Vec::new();
        for (stream, bytes) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
            for line in bytes.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let line = &line[..line.len().min(MAX_LINE)];
                lines.push((stream, String::from_utf8_lossy(line).into_owned()));
            }
        }
        lines
    }
}

/// One stream of one instance, as the WASI context sees it.
#[derive(Clone)]
pub struct Writer {
    capture: Capture,
    stream: Stream,
}

impl IsTerminal for Writer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Writer {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Writer {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.capture.append(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always ready: the capture never blocks (it drops what does not fit).
        Ok(MAX_HELD)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Writer {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.append(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_lines_per_stream_cut_and_bounded() {
        let capture = Capture::default();
        let mut out = capture.writer(Stream::Stdout);
        let mut err = capture.writer(Stream::Stderr);
        out.write(Bytes::from_static(b"hello\nwor")).unwrap();
        out.write(Bytes::from_static(b"ld\r\n\n")).unwrap();
        err.write(Bytes::from(vec![b'x'; 3000])).unwrap();
        err.write(Bytes::from_static(b"\n\xffpanicked at src/lib.rs"))
            .unwrap();
        let lines = capture.drain();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], (Stream::Stdout, "hello".to_owned()));
        assert_eq!(lines[1], (Stream::Stdout, "world".to_owned()));
        assert_eq!(lines[2].1.len(), MAX_LINE);
        assert_eq!(
            lines[3],
            (Stream::Stderr, "\u{fffd}panicked at src/lib.rs".to_owned())
        );
        assert!(capture.drain().is_empty());
        err.write(Bytes::from(vec![b'y'; 3 * MAX_HELD])).unwrap();
        let held: usize = capture.drain().iter().map(|(_, l)| l.len()).sum();
        assert_eq!(held, MAX_LINE, "one long line, cut");
    }
}
