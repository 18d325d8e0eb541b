//! `X-Request-Id`: one id per request, in the access log line, sent to the
//! backend and returned to the client, so one request can be followed
//! through every log it touches. A client's own id is kept when it is a
//! sane one (1–128 visible ASCII characters); otherwise the gateway makes a
//! random 128-bit one.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
const MAX_LEN: usize = 128;

/// The request's id: the client's, or a new one, which is set in `headers`
/// (so the backend gets it either way).
pub fn take_or_make(headers: &mut HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(id), None) = (sent.next(), sent.next())
        && acceptable(id.as_bytes())
    {
        return id.clone();
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

fn acceptable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(|b| b.is_ascii_graphic())
}

/// 32 lower-case hex digits.
fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut text = [0u8; 32];
    for digit in text.iter_mut().rev() {
        *digit = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(take_or_make(&mut headers), "abc-123");
        for bad in ["", "has space", &"x".repeat(129)] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = take_or_make(&mut headers);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert_eq!(headers[&X_REQUEST_ID], id);
        }
        let mut headers = HeaderMap::new();
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("two"));
        let id = take_or_make(&mut headers);
        assert_eq!(id.len(), 32);
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);
        let a = take_or_make(&mut HeaderMap::new());
        let b = take_or_make(&mut HeaderMap::new());
        assert_ne!(a, b);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }
}
