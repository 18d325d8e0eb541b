//! Response heads as a backend sends them: no panic, a head is taken off
//! the buffer whole, and what is relayed carries no framing of its own and
//! at most one `Content-Length`.
#![no_main]

use bytes::BytesMut;
use gateway::http1::client::{Framing, parse_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let mut buf = BytesMut::from(bytes);
    let Ok(Some(head)) = parse_response(&mut buf, head_request) else {
        return;
    };
    assert!(buf.len() < bytes.len(), "a head was consumed");
    assert!(head.headers.get_all("content-length").iter().count() <= 1);
    assert!(head.headers.get("transfer-encoding").is_none());
    if head.status != 101 && (head_request || head.status == 204 || head.status == 304) {
        assert!(matches!(head.framing, Framing::Empty), "{:?}", head.framing);
    }
    if matches!(head.framing, Framing::UntilClose | Framing::Upgrade) {
        assert!(
            !head.keep_alive,
            "a close-delimited body ends its connection"
        );
    }
});
