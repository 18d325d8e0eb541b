//! The gateway's own answers to gRPC clients. A gRPC client reads the
//! outcome from `grpc-status`, not from the HTTP status, so an HTTP 429 or
//! 503 with a JSON body is only "unknown error" to it. The gateway answers
//! these clients as a gRPC server would: HTTP 200, a trailers-only response
//! (`grpc-status`, `grpc-message`), the other fields (`Retry-After`,
//! `RateLimit`) kept as metadata.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version, header};
use http_body_util::Full;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// True for a gRPC request (HTTP/2, `content-type: application/grpc…`).
pub fn is_grpc(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_2
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status code for the gateway's HTTP answer `status`.
pub fn code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 413 | 431 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 => 12,            // UNIMPLEMENTED
        408 | 504 => 4,       // DEADLINE_EXCEEDED
        429 => 8,             // RESOURCE_EXHAUSTED
        502 | 503 => 14,      // UNAVAILABLE
        _ => 13,              // INTERNAL
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
const MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

/// `response` (the gateway's own, with `message`) as a gRPC status.
pub fn convert(response: Response<Full<Bytes>>, message: &str) -> Response<Full<Bytes>> {
    let (mut parts, _) = response.into_parts();
    let code = code(parts.status);
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONNECTION);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(u16::from(code)));
    let encoded = utf8_percent_encode(message, MESSAGE).to_string();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        parts.headers.insert("grpc-message", value);
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_answers_become_grpc_statuses() {
        let mut response = crate::json_error::json_error(StatusCode::TOO_MANY_REQUESTS, "x");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(3));
        let converted = convert(response, "Rate limit exceeded: 100%");
        assert_eq!(converted.status(), 200);
        assert_eq!(converted.headers()["grpc-status"], "8");
        assert_eq!(
            converted.headers()["grpc-message"],
            "Rate limit exceeded: 100%25"
        );
        assert_eq!(converted.headers()["content-type"], "application/grpc");
        assert_eq!(converted.headers()["retry-after"], "3");
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(code(StatusCode::GATEWAY_TIMEOUT), 4);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(Version::HTTP_2, &headers));
        assert!(!is_grpc(Version::HTTP_11, &headers));
    }
}
