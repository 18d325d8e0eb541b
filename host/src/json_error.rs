//! The body of every answer the gateway writes itself, on the proxy and the
//! admin listener alike: `{"code": <status>, "message": "<text>"}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'a str,
}

/// `{"code": <status>, "message": "<text>"}` with `Content-Type: application/json`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(json_body(status, message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON error body: `{"code": <status>, "message": "<text>"}`.
pub fn json_body(status: StatusCode, message: &str) -> Bytes {
    let body = serde_json::to_vec(&ErrorBody {
        code: status.as_u16(),
        message,
    })
    .unwrap_or_default();
    Bytes::from(body)
}
