//! Request heads as a client sends them: the codec never panics, agrees
//! with httparse on where a head it serves ends, and serves only what it
//! may (no upgrade, no `Expect`, no chunking; a body only of one plain
//! length that has arrived whole; everything else handed over).
#![no_main]

use bytes::BytesMut;
use gateway::http1::server::{Parsed, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(parsed) = parse_request(&mut buf, 8192) else {
        return;
    };
    match parsed {
        Parsed::Partial | Parsed::HandOver => assert_eq!(&buf[..], data, "untouched"),
        Parsed::Request(head) => {
            let consumed = data.len() - buf.len();
            let body = head.body.as_ref().map_or(0, |b| b.len());
            assert!(consumed - body <= 8192);
            let mut fields = [httparse::EMPTY_HEADER; 100];
            let mut reference = httparse::Request::new(&mut fields);
            match reference.parse(data) {
                Ok(httparse::Status::Complete(len)) => {
                    assert_eq!(len, consumed - body);
                    assert_eq!(
                        head.body.as_deref().unwrap_or_default(),
                        &data[len..len + body]
                    );
                }
                other => panic!("served a head httparse reads as {other:?}"),
            }
            assert_eq!(reference.version, Some(1));
            let headers = head.request.headers();
            assert!(headers.get("transfer-encoding").is_none());
            assert!(headers.get("expect").is_none());
            assert!(headers.get("upgrade").is_none());
            let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
            assert!(lengths.len() <= 1, "repeated lengths are hyper's");
            let declared = lengths.first().map_or(0, |v| {
                std::str::from_utf8(v.as_bytes())
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
            assert_eq!(declared, body);
            assert!(body as u64 <= gateway::http1::server::MAX_BODY);
        }
    }
});
