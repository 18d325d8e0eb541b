//! The gateway's own complete answers on the codec-served connection: a
//! head it refuses (400, 431), or a backend body that broke before any of
//! it left (502). JSON like every answer the gateway writes, and the
//! connection closes after them.

use crate::http1::server::{Delimit, HeadError, encode_response};
use crate::json_error::json_body;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

/// The gateway's own answer to a head it refuses, as a complete response.
pub fn refusal(error: &HeadError, date: &[u8]) -> Vec<u8> {
    let (status, message) = match error {
        HeadError::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ),
        HeadError::Malformed(reason) => (StatusCode::BAD_REQUEST, *reason),
    };
    json_answer(status, message, date)
}

/// A whole JSON error response that closes the connection.
pub fn json_answer(status: StatusCode, message: &str, date: &[u8]) -> Vec<u8> {
    let body = json_body(status, message);
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut out = Vec::new();
    encode_response(
        &mut out,
        status,
        &headers,
        (Delimit::Length(body.len() as u64), true),
        true,
        date,
        |_| {},
    );
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_json() {
        let answer = refusal(&HeadError::TooLarge, b"d");
        let text = std::str::from_utf8(&answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("content-type: application/json\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with(r#"{"code":431,"message":"request head too large"}"#));
        let answer = refusal(&HeadError::Malformed("bad method"), b"d");
        assert!(answer.ends_with(br#"{"code":400,"message":"bad method"}"#));
    }
}
