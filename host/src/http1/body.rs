//! Decoding a response body off the bytes read so far: `Content-Length`,
//! chunked (with trailers) or until close, as a state machine the
//! connection's reader drives.

use super::chunked::{self, Chunk};
use super::client::WireError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;

/// The longest chunk-size line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section accepted.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    /// 101: the connection now belongs to an upgrade; the body reader stops.
    Upgraded,
    Done,
}

/// What the decoder made of the buffered bytes.
#[derive(Debug, PartialEq)]
pub enum Step {
    Data(Bytes),
    /// The trailer fields that end a chunked body.
    Trailers(HeaderMap),
    /// The state moved on; decode again.
    Again,
    /// Nothing to do until more bytes arrive.
    NeedMore,
    /// The body ended cleanly.
    End,
    /// The body is over for this reader (an upgraded connection).
    Stop,
    Fail(WireError),
}

/// Takes what it can of `buf` for the body in state `state`.
pub fn decode(state: &mut State, buf: &mut BytesMut) -> Step {
    let buffered = buf.len();
    match *state {
        State::Done => Step::End,
        State::Upgraded => Step::Stop,
        State::Length(left) | State::ChunkData(left) if buffered > 0 => {
            let n = buffered.min(usize::try_from(left).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = left - n as u64;
            *state = match *state {
                State::Length(_) if left == 0 => State::Done,
                State::Length(_) => State::Length(left),
                _ if left == 0 => State::ChunkEnd,
                _ => State::ChunkData(left),
            };
            Step::Data(data)
        }
        State::UntilClose if buffered > 0 => Step::Data(buf.split().freeze()),
        State::ChunkSize if buffered > 0 => match chunked::chunk_size(buf) {
            Ok(Chunk::Size { consumed, size }) => {
                let _ = buf.split_to(consumed);
                *state = if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                };
                Step::Again
            }
            Ok(Chunk::Partial) if buffered < MAX_CHUNK_LINE => Step::NeedMore,
            Ok(Chunk::Partial) | Err(_) => Step::Fail(WireError::BadChunk),
        },
        State::ChunkEnd if buffered >= 2 => {
            if &buf[..2] != b"\r\n" {
                return Step::Fail(WireError::BadChunk);
            }
            let _ = buf.split_to(2);
            *state = State::ChunkSize;
            Step::Again
        }
        State::Trailers if buffered >= 2 => {
            if &buf[..2] == b"\r\n" {
                let _ = buf.split_to(2);
                *state = State::Done;
                return Step::End;
            }
            match chunked::trailers(buf) {
                Ok(Some(trailers)) => {
                    *state = State::Done;
                    Step::Trailers(trailers)
                }
                Ok(None) if buffered < MAX_TRAILER_BYTES => Step::NeedMore,
                Ok(None) | Err(_) => Step::Fail(WireError::BadChunk),
            }
        }
        _ => Step::NeedMore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to the decoder in pieces of `step` bytes; returns the
    /// body and whether it ended cleanly.
    fn run(mut state: State, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), WireError> {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = wire.chunks(step);
        loop {
            match decode(&mut state, &mut buf) {
                Step::Data(data) => body.extend_from_slice(&data),
                Step::Trailers(trailers) => {
                    assert_eq!(trailers["x-trailer"], "1");
                    return Ok((body, true));
                }
                Step::Again => {}
                Step::End => return Ok((body, true)),
                Step::Stop => return Ok((body, false)),
                Step::Fail(error) => return Err(error),
                Step::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Ok((body, false)),
                },
            }
        }
    }

    const CHUNKED: &[u8] = b"5;ext=x\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        for step in 1..CHUNKED.len() {
            let (body, ended) = run(State::ChunkSize, CHUNKED, step).unwrap();
            assert_eq!(body, b"hello, world", "step {step}");
            assert!(ended, "step {step}");
        }
    }

    #[test]
    fn a_chunked_body_without_trailers_ends_at_the_blank_line() {
        let (body, ended) = run(State::ChunkSize, b"2\r\nhi\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!(body, b"hi");
        assert!(ended);
    }

    #[test]
    fn length_bodies_stop_at_the_length() {
        let (body, ended) = run(State::Length(5), b"hello", 2).unwrap();
        assert_eq!(body, b"hello");
        assert!(ended);
        let (body, ended) = run(State::Length(5), b"hel", 2).unwrap();
        assert_eq!(body, b"hel");
        assert!(!ended);
    }

    #[test]
    fn bad_chunks_are_errors() {
        for wire in [&b"zz\r\n"[..], b"3\r\nabcXY", b"3\r\nabc\r\n0\r\n"] {
            let result = run(State::ChunkSize, wire, 1);
            assert!(
                matches!(result, Err(WireError::BadChunk) | Ok((_, false))),
                "{wire:?}: {result:?}"
            );
        }
        assert!(run(State::ChunkSize, b"zz\r\n", 4).is_err());
        assert!(run(State::ChunkSize, b"3\r\nabcXY", 8).is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(run(State::ChunkSize, &long, long.len()).is_err());
    }

    #[test]
    fn until_close_passes_everything_through() {
        let (body, ended) = run(State::UntilClose, b"abcdef", 4).unwrap();
        assert_eq!(body, b"abcdef");
        assert!(!ended);
    }
}
