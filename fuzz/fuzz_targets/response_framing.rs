//! Differential: the framing the gateway's client reads off a response
//! head, against RFC 9112 §6.3 applied to httparse's reading of the same
//! bytes (hyper's rules, strict about lengths: every `Content-Length`
//! value must be digits and all must agree). They must agree on whether
//! the head is complete, refused, and how its body is delimited.
#![no_main]

use bytes::BytesMut;
use gateway::http1::client::{Framing, parse_response};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Decision {
    Partial,
    Refused,
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
    Upgrade,
}

fn reference(mut bytes: &[u8], head_request: bool) -> Decision {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut response = httparse::Response::new(&mut fields);
        let len = match response.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Decision::Partial,
            Err(_) => return Decision::Refused,
        };
        let code = response.code.unwrap_or(0);
        if !(100..=999).contains(&code) {
            return Decision::Refused;
        }
        if (100..200).contains(&code) && code != 101 {
            bytes = &bytes[len..];
            continue;
        }
        if response
            .headers
            .iter()
            .any(|h| http::HeaderName::from_bytes(h.name.as_bytes()).is_err())
        {
            return Decision::Refused;
        }
        let mut length: Option<u64> = None;
        let mut chunked: Option<bool> = None;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                for part in h.value.split(|&b| b == b',') {
                    let text = part.trim_ascii();
                    let Some(n) = (!text.is_empty() && text.iter().all(u8::is_ascii_digit))
                        .then(|| std::str::from_utf8(text).ok()?.parse::<u64>().ok())
                        .flatten()
                    else {
                        return Decision::Refused;
                    };
                    if length.is_some_and(|seen| seen != n) {
                        return Decision::Refused;
                    }
                    length = Some(n);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
        }
        if response
            .headers
            .iter()
            .any(|h| http::HeaderValue::from_bytes(h.value).is_err())
        {
            return Decision::Refused;
        }
        return if code == 101 {
            Decision::Upgrade
        } else if head_request || code == 204 || code == 304 {
            Decision::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Decision::Chunked,
                (Some(false), _) | (None, None) => Decision::UntilClose,
                (None, Some(0)) => Decision::Empty,
                (None, Some(n)) => Decision::Length(n),
            }
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let ours = match parse_response(&mut BytesMut::from(bytes), head_request) {
        Ok(None) => Decision::Partial,
        Err(_) => Decision::Refused,
        Ok(Some(head)) => match head.framing {
            Framing::Empty => Decision::Empty,
            Framing::Length(n) => Decision::Length(n),
            Framing::Chunked => Decision::Chunked,
            Framing::UntilClose => Decision::UntilClose,
            Framing::Upgrade => Decision::Upgrade,
        },
    };
    assert_eq!(
        ours,
        reference(bytes, head_request),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
});
