//! Request heads in, response heads out, for the proxy listener's own
//! HTTP/1.1 codec (RFC 9112). Pure functions over buffers, so every rule is
//! tested without a socket.
//!
//! The codec serves the common request shape itself: HTTP/1.1 without an
//! upgrade or `Expect`, and with no body or a small one of declared length
//! (one `Content-Length` of at most [`MAX_BODY`] bytes) that has already
//! arrived whole with its head. Anything else — chunked or large uploads,
//! repeated or odd lengths, a body still on its way — is
//! [`Parsed::HandOver`]: the connection goes, with its unread bytes, to
//! hyper's complete implementation (and its body timeouts).

use super::chunked::{chunk_header, encode_trailers};
use super::fields::field;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use std::mem::MaybeUninit;

/// More fields than this in one head get 431, as hyper does.
pub const MAX_FIELDS: usize = 100;

/// The largest body the codec reads itself (the proxy reads bodies up to
/// this size whole before choosing a backend in any case).
pub const MAX_BODY: u64 = 64 * 1024;

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

// Moved once per request and taken apart at once; boxing `Head` would cost
// an allocation per request instead.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// A request this codec serves; its head has been taken off the buffer.
    Request(Head),
    /// A request (or protocol) only hyper serves; the buffer is untouched.
    HandOver,
}

pub struct Head {
    pub request: Request<()>,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub trailers: bool,
    /// The body (`Content-Length` bytes), taken off the buffer after the head.
    pub body: Option<Bytes>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 431: the head is larger than allowed or has too many fields.
    TooLarge,
    /// 400, with the reason.
    Malformed(&'static str),
}

/// Reads one request head off the front of `buf`.
pub fn parse_request(buf: &mut BytesMut, max_head: usize) -> Result<Parsed, HeadError> {
    let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) if buf.starts_with(H2_PREFACE) => return Ok(Parsed::HandOver),
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.1 request")),
    };
    if parsed.version != Some(1) {
        // HTTP/1.0 keep-alive and close-delimited rules: hyper's.
        return Ok(Parsed::HandOver);
    }
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("bad method"))?;
    if method == Method::CONNECT {
        return Ok(Parsed::HandOver);
    }
    let base = buf.as_ptr() as usize;
    let target = parsed.path.unwrap_or_default();
    let target_start = target.as_ptr() as usize - base;
    let target_range = target_start..target_start + target.len();
    let mut close = false;
    let mut trailers = false;
    let mut length: Option<u64> = None;
    let mut kept = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Malformed("bad header name"))?;
        if name == header::CONTENT_LENGTH {
            // One plain decimal length, small enough; anything else
            // (repeats, signs, lists, large) by hyper's rules.
            match (length, decimal(h.value)) {
                (None, Some(n)) if n <= MAX_BODY => length = Some(n),
                _ => return Ok(Parsed::HandOver),
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Ok(Parsed::HandOver);
        } else if name == header::CONNECTION {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Ok(Parsed::HandOver);
                }
            }
        } else if name == header::TE {
            trailers |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        }
        let start = h.value.as_ptr() as usize - base;
        kept.push((name, start, start + h.value.len()));
    }
    let length = length.unwrap_or(0) as usize;
    if buf.len() - len < length {
        // The body is still on its way: hyper waits for it, under the
        // client body timeout.
        return Ok(Parsed::HandOver);
    }
    let head = buf.split_to(len).freeze();
    let body = (length > 0).then(|| buf.split_to(length).freeze());
    let uri = Uri::from_maybe_shared(head.slice(target_range))
        .map_err(|_| HeadError::Malformed("bad request target"))?;
    let mut headers = HeaderMap::with_capacity(kept.len());
    for (name, start, end) in kept {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| HeadError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(Parsed::Request(Head {
        request,
        close,
        trailers,
        body,
    }))
}

/// `1*DIGIT` (RFC 9110 §8.6) that fits a `u64`.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimit {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// Chooses the response framing: the response's own `Content-Length`, else
/// the body's known length, else chunked; the flag is true when the codec
/// must write the framing field itself.
pub fn delimit(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
    exact: Option<u64>,
) -> (Delimit, bool) {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return (Delimit::None, false);
    }
    if let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        return (Delimit::Length(declared), false);
    }
    match exact {
        Some(n) => (Delimit::Length(n), true),
        None => (Delimit::Chunked, true),
    }
}

/// Writes a response head: status line, the fields, those `more` writes
/// (head lines the caller keeps outside the map), then what the codec adds
/// (framing when `add_framing`, `Date` when missing, `Connection: close`).
pub fn encode_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    (delimit, add_framing): (Delimit, bool),
    close: bool,
    date: &[u8],
    more: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    more(out);
    if add_framing {
        match delimit {
            Delimit::Length(n) => {
                field(
                    out,
                    b"content-length",
                    itoa::Buffer::new().format(n).as_bytes(),
                );
            }
            Delimit::Chunked => field(out, b"transfer-encoding", b"chunked"),
            Delimit::None => {}
        }
    }
    if !headers.contains_key(header::DATE) {
        field(out, b"date", date);
    }
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// A chunk's size line.
pub fn chunk_start(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&chunk_header(len));
}

/// The last chunk, with trailers when the client accepts them.
pub fn chunked_end(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    encode_trailers(out, trailers.unwrap_or(&HeaderMap::new()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (Result<Parsed, HeadError>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse_request(&mut buf, 1024), buf)
    }

    fn served(bytes: &[u8]) -> (Head, BytesMut) {
        match parse(bytes) {
            (Ok(Parsed::Request(head)), rest) => (head, rest),
            (Ok(Parsed::Partial), _) => panic!("partial"),
            (Ok(Parsed::HandOver), _) => panic!("handed over"),
            (Err(error), _) => panic!("{error:?}"),
        }
    }

    fn handed_over(bytes: &[u8]) -> bool {
        let (parsed, rest) = parse(bytes);
        matches!(parsed, Ok(Parsed::HandOver)) && rest.as_ref() == bytes
    }

    #[test]
    fn a_bodiless_request_is_served_and_leaves_the_next_one_in_the_buffer() {
        let (head, rest) = served(
            b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-Two: 1\r\nx-two: 2\r\nTE: trailers\r\n\r\nGET /next",
        );
        let request = head.request;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a?b=c");
        assert_eq!(request.headers()["host"], "h");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert!(head.trailers);
        assert!(!head.close);
        assert_eq!(rest.as_ref(), b"GET /next");
    }

    #[test]
    fn connection_close_is_noticed_and_an_empty_length_is_no_body() {
        let (head, _) = served(
            b"DELETE http://h/x HTTP/1.1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(head.close);
        assert_eq!(head.request.uri().path(), "/x");
        assert_eq!(head.request.headers()["content-length"], "0");
    }

    #[test]
    fn what_the_codec_does_not_serve_is_handed_over_untouched() {
        assert!(handed_over(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(handed_over(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello"
        ));
        assert!(handed_over(
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(handed_over(
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(handed_over(
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(handed_over(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(handed_over(
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"
        ));
        assert!(handed_over(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    }

    #[test]
    fn a_small_body_that_has_arrived_is_served_with_its_head() {
        let (head, rest) = served(b"POST /in HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /next");
        assert_eq!(head.body.as_deref(), Some(&b"hello"[..]));
        assert_eq!(head.request.headers()["content-length"], "5");
        assert_eq!(rest.as_ref(), b"GET /next");
        let (head, rest) = served(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\nx");
        assert!(head.body.is_none());
        assert_eq!(rest.as_ref(), b"x");
        let large = MAX_BODY as usize;
        let mut whole = format!("PUT / HTTP/1.1\r\nContent-Length: {large}\r\n\r\n").into_bytes();
        whole.resize(whole.len() + large, b'a');
        let mut buf = BytesMut::from(&whole[..]);
        match parse_request(&mut buf, 1024) {
            Ok(Parsed::Request(head)) => assert_eq!(head.body.map(|b| b.len()), Some(large)),
            _ => panic!("a body of MAX_BODY bytes is served"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn bodies_the_codec_does_not_read_itself_are_handed_over_untouched() {
        for request in [
            // Still on its way.
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            // Repeated, even when equal; lists; signs; not digits; too long.
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
        ] {
            assert!(handed_over(request), "{}", String::from_utf8_lossy(request));
        }
        let over = MAX_BODY as usize + 1;
        let mut whole = format!("PUT / HTTP/1.1\r\nContent-Length: {over}\r\n\r\n").into_bytes();
        whole.resize(whole.len() + over, b'a');
        assert!(handed_over(&whole));
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: h\r\n").0,
            Ok(Parsed::Partial)
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
        assert_eq!(parse(big.as_bytes()).0.err(), Some(HeadError::TooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_FIELDS {
            many.push_str(&format!("a{i}: b\r\n"));
        }
        many.push_str("\r\n");
        let mut buf = BytesMut::from(many.as_bytes());
        assert_eq!(
            parse_request(&mut buf, 1 << 20).err(),
            Some(HeadError::TooLarge)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for garbage in [
            &b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert!(
                matches!(parse(garbage).0, Err(HeadError::Malformed(_))),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn framing_follows_the_status_the_method_and_the_body() {
        let none = HeaderMap::new();
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        let ok = StatusCode::OK;
        assert_eq!(
            delimit(ok, true, &declared, Some(0)),
            (Delimit::None, false)
        );
        assert_eq!(
            delimit(StatusCode::NO_CONTENT, false, &none, None),
            (Delimit::None, false)
        );
        assert_eq!(
            delimit(StatusCode::NOT_MODIFIED, false, &declared, Some(0)),
            (Delimit::None, false)
        );
        assert_eq!(
            delimit(ok, false, &declared, None),
            (Delimit::Length(7), false)
        );
        assert_eq!(
            delimit(ok, false, &none, Some(3)),
            (Delimit::Length(3), true)
        );
        assert_eq!(delimit(ok, false, &none, None), (Delimit::Chunked, true));
    }

    #[test]
    fn a_response_head_carries_framing_date_and_close() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        encode_response(
            &mut out,
            StatusCode::NOT_FOUND,
            &headers,
            (Delimit::Length(12), true),
            true,
            b"Sat, 28 Nov 2026 03:00:00 GMT",
            |out| out.extend_from_slice(b"x-late: 2\r\n"),
        );
        assert_eq!(
            out.as_slice(),
            &b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\nx-late: 2\r\ncontent-length: 12\r\ndate: Sat, 28 Nov 2026 03:00:00 GMT\r\nconnection: close\r\n\r\n"[..]
        );
        headers.insert(header::DATE, HeaderValue::from_static("then"));
        out.clear();
        encode_response(
            &mut out,
            StatusCode::OK,
            &headers,
            (Delimit::Chunked, true),
            false,
            b"now",
            |_| {},
        );
        assert_eq!(
            out.as_slice(),
            &b"HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: then\r\ntransfer-encoding: chunked\r\n\r\n"[..]
        );
    }

    #[test]
    fn chunks_and_trailers() {
        let mut out = Vec::new();
        chunk_start(&mut out, 255);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("9"));
        chunked_end(&mut out, Some(&trailers));
        assert_eq!(out.as_slice(), b"ff\r\n0\r\nx-sum: 9\r\n\r\n");
    }
}
