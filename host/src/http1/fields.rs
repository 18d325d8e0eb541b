//! Header fields as bytes: writing one, and which ones describe a
//! connection rather than the message (RFC 9110 §7.6.1) and so never cross
//! the proxy.

use http::header::{self, HeaderName};

/// Headers that describe one connection rather than the message (RFC 9110 §7.6.1).
pub static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True for a header that never crosses the proxy whatever `Connection` says.
/// Matched on the name's text (a length switch, then one compare), which
/// is cheaper than comparing with each of [`HOP_BY_HOP`] for every field.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "http2-settings"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) || name.as_str().starts_with("proxy-")
}

/// Writes one field line.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
