//! Chunked coding both ways. Decoding: arbitrary bytes fed to the body
//! decoder in arbitrary pieces never panic and decode the same however they
//! are split. Encoding: arbitrary data cut into chunks and written with the
//! codec's chunk headers and trailer writer decodes back to the same data.
#![no_main]

use bytes::{BufMut, BytesMut};
use gateway::http1::body::{State, Step, decode};
use gateway::http1::chunked::{chunk_header, encode_trailers};
use libfuzzer_sys::fuzz_target;

/// Decoded data and whether the body ended cleanly (`None`: refused).
fn run(wire: &[u8], step: usize) -> Option<(Vec<u8>, bool)> {
    let mut state = State::ChunkSize;
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut pieces = wire.chunks(step.max(1));
    loop {
        match decode(&mut state, &mut buf) {
            Step::Data(data) => body.extend_from_slice(&data),
            Step::Again => {}
            Step::Trailers(_) | Step::End => return Some((body, true)),
            Step::Stop => return Some((body, false)),
            Step::Fail(_) => return None,
            Step::NeedMore => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => return Some((body, false)),
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // Decoding arbitrary bytes: split-independent.
    let whole = run(rest, rest.len());
    let split = run(rest, usize::from(flags % 7) + 1);
    match (&whole, &split) {
        (Some((a, true)), Some((b, true))) => assert_eq!(a, b),
        (None, Some((_, true))) | (Some((_, true)), None) => {
            panic!("split changed the verdict: {whole:?} vs {split:?}")
        }
        _ => {}
    }
    // Encoding then decoding: the data comes back.
    let mut wire = BytesMut::new();
    for chunk in rest.chunks(usize::from(flags) + 1) {
        wire.put_slice(&chunk_header(chunk.len()));
        wire.put_slice(chunk);
        wire.put_slice(b"\r\n");
    }
    let mut end = b"0\r\n".to_vec();
    let mut trailers = http::HeaderMap::new();
    if flags & 1 == 1 {
        trailers.insert("x-trailer", http::HeaderValue::from_static("1"));
    }
    encode_trailers(&mut end, &trailers);
    wire.put_slice(&end);
    let decoded = run(&wire, usize::from(flags % 13) + 1);
    assert_eq!(decoded, Some((rest.to_vec(), true)));
});
