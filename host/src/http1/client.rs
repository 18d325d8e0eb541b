//! HTTP/1.1 towards the backends, as bytes: the request head the gateway
//! writes and the response head it reads.
//!
//! The gateway already holds the client's parsed request, so it writes the
//! backend's request head straight from it (no second header map, no
//! per-connection task and channel as a general-purpose client needs), and it
//! reads the response head with `httparse` into the `http` types the client
//! side of hyper serves. Message framing follows RFC 9112 §6.

use super::fields::{field, is_hop_by_hop};
use super::path::remove_dot_segments;
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// The most header fields a backend response may carry.
const MAX_HEADERS: usize = 100;
/// Fields the proxy adds to a response: `X-Request-Id`, `RateLimit`,
/// `RateLimit-Policy`.
const ADDED_FIELDS: usize = 3;

/// How the request body travels to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body and no `Content-Length` to repeat.
    None,
    Length(u64),
    Chunked,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// The body runs until the backend closes the connection.
    UntilClose,
    /// 101: the connection now speaks another protocol.
    Upgrade,
}

/// Why a backend's response head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("malformed chunked body")]
    BadChunk,
}

/// A response head read off a backend connection.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this body is read.
    pub keep_alive: bool,
}

/// Writes the request head for the backend: the request line (`prefix`
/// before the client's path), the fields `write_fields` writes, and the
/// framing field for the body.
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &Method,
    prefix: &str,
    uri: &Uri,
    framing: RequestFraming,
    write_fields: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match uri.path_and_query() {
        // Asterisk-form (`OPTIONS *`, the only method that gets here with it).
        Some(pq) if pq.path() == "*" => out.push(b'*'),
        Some(pq) if pq.path().starts_with('/') => {
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(remove_dot_segments(pq.path()).as_bytes());
            if let Some(query) = pq.query() {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        _ => {
            out.extend_from_slice(prefix.as_bytes());
            out.push(b'/');
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_fields(out);
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            let mut digits = itoa::Buffer::new();
            field(out, b"content-length", digits.format(n).as_bytes());
        }
        RequestFraming::Chunked => field(out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Takes a complete response head off the front of `buf`, skipping interim
/// 1xx responses (except 101); `None` while the head is incomplete.
pub fn parse_response(
    buf: &mut BytesMut,
    request_was_head: bool,
) -> Result<Option<ResponseHead>, WireError> {
    loop {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(WireError::Malformed("too many header fields"));
            }
            Err(_) => return Err(WireError::Malformed("not an HTTP/1.x response")),
        };
        let code = parsed.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| WireError::Malformed("bad status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            let _ = buf.split_to(len);
            continue;
        }
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // One pass over the fields: framing and reuse facts are read off the
        // raw bytes, hop-by-hop fields are left out (they describe the
        // backend connection, not the message), and the names of the rest
        // are kept for after the head is frozen, when the values become
        // slices of it instead of copies.
        let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
        let base = buf.as_ptr() as usize;
        let mut facts = Facts::default();
        let mut fields = Vec::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| WireError::Malformed("bad header name"))?;
            facts.observe(&name, h.value)?;
            let connection_field = name == header::CONNECTION || name == header::UPGRADE;
            if is_hop_by_hop(&name) && !(upgrade && connection_field) {
                continue;
            }
            let start = h.value.as_ptr() as usize - base;
            fields.push((name, start, start + h.value.len()));
        }
        let head = buf.split_to(len).freeze();
        // Room for the fields the gateway adds (request id, RateLimit),
        // so adding them never grows and rehashes the map.
        let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_FIELDS);
        for (name, start, end) in fields {
            let value = HeaderValue::from_maybe_shared(head.slice(start..end))
                .map_err(|_| WireError::Malformed("bad header value"))?;
            headers.append(name, value);
        }
        for name in &facts.named {
            headers.remove(name);
        }
        let both = facts.transfer_encoding.is_some() && facts.length.is_some();
        if facts.transfer_encoding.is_some() {
            // The body is decoded here and framed anew for the client: a
            // length sent alongside chunking must not reach it.
            headers.remove(header::CONTENT_LENGTH);
        } else if let (Some(length), true) = (facts.length, facts.length_repeated) {
            // RFC 9110 §8.6: identical repeats (`5, 5`) are one length.
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        let framing = facts.framing(status, request_was_head);
        // RFC 9112 §6.3: a length beside chunking may be an attempt to
        // desync; the message is relayed by its chunking, the connection
        // is not trusted with another.
        let keep_alive = framing != Framing::UntilClose
            && framing != Framing::Upgrade
            && !both
            && facts.keeps_alive(version);
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// What a response head says about framing and connection reuse.
#[derive(Default)]
struct Facts {
    length: Option<u64>,
    /// `Content-Length` came as a list or in several fields (all equal, or
    /// `observe` failed): the one value is written back alone.
    length_repeated: bool,
    /// `Some(true)` when the last transfer coding is chunked.
    transfer_encoding: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// Fields named in `Connection`, to be removed.
    named: Vec<HeaderName>,
}

impl Facts {
    fn observe(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), WireError> {
        if *name == header::CONTENT_LENGTH {
            self.length_repeated |= self.length.is_some() || value.contains(&b',');
            for part in value.split(|&b| b == b',') {
                let n = std::str::from_utf8(part)
                    .ok()
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or(WireError::Malformed("bad content-length"))?;
                if self.length.is_some_and(|seen| seen != n) {
                    return Err(WireError::Malformed("conflicting content-length"));
                }
                self.length = Some(n);
            }
        } else if *name == header::TRANSFER_ENCODING {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.transfer_encoding = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if *name == header::CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !token.eq_ignore_ascii_case(b"upgrade")
                    && let Ok(named) = HeaderName::from_bytes(token)
                {
                    self.named.push(named);
                }
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.3, for responses.
    fn framing(&self, status: StatusCode, request_was_head: bool) -> Framing {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Framing::Upgrade;
        }
        if request_was_head
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Framing::Empty;
        }
        match (self.transfer_encoding, self.length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
        }
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when told `keep-alive`.
    fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }
}

/// The request's `Content-Length`-or-chunked decision, for a body of this shape.
pub fn request_framing(has_length_header: bool, empty: bool, exact: Option<u64>) -> RequestFraming {
    match exact {
        _ if empty && !has_length_header => RequestFraming::None,
        Some(n) => RequestFraming::Length(n),
        None => RequestFraming::Chunked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, request_was_head: bool) -> Result<Option<ResponseHead>, WireError> {
        parse_response(&mut BytesMut::from(raw), request_was_head)
    }

    fn complete(raw: &str) -> ResponseHead {
        head(raw, false).unwrap().unwrap()
    }

    #[test]
    fn request_head_is_line_fields_framing() {
        let uri: Uri = "http://client.example/p?q=1".parse().unwrap();
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::POST,
            "/api",
            &uri,
            RequestFraming::Length(5),
            |out| {
                field(out, b"x-a", b"1");
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /api/p?q=1 HTTP/1.1\r\nx-a: 1\r\ncontent-length: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::OPTIONS,
            "/api",
            &"*".parse().unwrap(),
            RequestFraming::Chunked,
            |_| {},
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "OPTIONS * HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_follows_the_body() {
        assert_eq!(request_framing(false, true, Some(0)), RequestFraming::None);
        assert_eq!(
            request_framing(true, true, Some(0)),
            RequestFraming::Length(0)
        );
        assert_eq!(
            request_framing(true, false, Some(7)),
            RequestFraming::Length(7)
        );
        assert_eq!(request_framing(false, false, None), RequestFraming::Chunked);
    }

    #[test]
    fn response_head_is_parsed_and_split_off() {
        let mut buf =
            BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: two\r\n\r\nhello");
        let head = parse_response(&mut buf, false).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["x-b"], "two");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", false)
                .unwrap()
                .is_none()
        );
        assert!(head("", false).unwrap().is_none());
    }

    #[test]
    fn interim_responses_are_skipped_but_101_is_not() {
        let h = complete("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.status, 204);
        assert_eq!(h.framing, Framing::Empty);
        let h = complete("HTTP/1.1 101 Switching\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n");
        assert_eq!(h.framing, Framing::Upgrade);
        assert!(!h.keep_alive);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |raw: &str| complete(raw).framing;
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"),
            Framing::Chunked
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Framing::UntilClose
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Framing::UntilClose);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Framing::Empty
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n"),
            Framing::Length(4)
        );
        assert_eq!(
            f("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Framing::Empty
        );
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.headers["content-length"], "9");
    }

    #[test]
    fn repeated_lengths_become_one_and_conflicts_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        ] {
            let h = complete(raw);
            let lengths: Vec<_> = h.headers.get_all("content-length").iter().collect();
            assert_eq!(lengths, ["5"], "{raw}");
            assert_eq!(h.framing, Framing::Length(5));
        }
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n",
        ] {
            assert!(head(raw, false).is_err(), "{raw}");
        }
        let both =
            complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(both.headers.get("content-length").is_none());
        assert!(
            !both.keep_alive,
            "a length beside chunking ends the connection"
        );
    }

    #[test]
    fn bad_lengths_and_garbage_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
        ] {
            assert!(head(raw, false).is_err(), "{raw:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            head(&raw, false).unwrap_err(),
            WireError::Malformed("too many header fields")
        );
    }

    #[test]
    fn hop_by_hop_fields_stay_behind() {
        let h = complete(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: timeout=5\r\n\
             X-Secret: 1\r\nProxy-Foo: 2\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\
             Trailer: x\r\nUpgrade: h2c\r\nX-Keep: yes\r\n\r\n",
        );
        assert_eq!(h.headers.len(), 1, "{:?}", h.headers);
        assert_eq!(h.headers["x-keep"], "yes");
        assert_eq!(h.framing, Framing::Chunked);
        let h = complete("HTTP/1.1 101 Switching\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
        assert_eq!(h.headers["upgrade"], "echo");
        assert_eq!(h.headers["connection"], "upgrade");
    }

    #[test]
    fn connection_reuse_follows_version_and_connection() {
        let k = |raw: &str| complete(raw).keep_alive;
        assert!(k("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(!k(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(!k("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(k(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(!k("HTTP/1.1 200 OK\r\n\r\n"));
    }
}
