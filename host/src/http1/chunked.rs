//! Chunked transfer coding (RFC 9112 §7.1): chunk-size lines read strictly,
//! chunk headers written, trailer sections read and written.

use super::client::WireError;
use super::fields::field;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// One step of reading a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Need more bytes.
    Partial,
    /// This many bytes of `buf` were consumed; the data that follows is `size` bytes.
    Size { consumed: usize, size: u64 },
}

/// Parses a chunk-size line at the front of `buf` (RFC 9112 §7.1:
/// `1*HEXDIG *chunk-ext CRLF`; extensions are skipped). Stricter than
/// httparse's: an empty size, a size over 64 bits, a control byte in an
/// extension or a line not ended by CRLF (a bare LF) is an error, since a
/// peer that frames differently could smuggle a message past us.
pub fn chunk_size(buf: &[u8]) -> Result<Chunk, WireError> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == buf.len() {
        return if digits > 16 {
            Err(WireError::BadChunk)
        } else {
            Ok(Chunk::Partial)
        };
    }
    if digits == 0 || digits > 16 {
        return Err(WireError::BadChunk);
    }
    let size = buf[..digits]
        .iter()
        .fold(0u64, |n, &b| (n << 4) | u64::from(hex_value(b)));
    let mut at = digits;
    while matches!(buf.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    match buf.get(at) {
        None => return Ok(Chunk::Partial),
        Some(b'\r' | b';') => {}
        Some(_) => return Err(WireError::BadChunk),
    }
    while let Some(&b) = buf.get(at) {
        if b == b'\r' {
            return match buf.get(at + 1) {
                None => Ok(Chunk::Partial),
                Some(b'\n') => Ok(Chunk::Size {
                    consumed: at + 2,
                    size,
                }),
                Some(_) => Err(WireError::BadChunk),
            };
        }
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            return Err(WireError::BadChunk);
        }
        at += 1;
    }
    Ok(Chunk::Partial)
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The trailer section at the front of `buf` (after the last chunk), taken
/// off; `None` while incomplete.
pub fn trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, WireError> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(WireError::BadChunk),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| WireError::BadChunk)?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| WireError::BadChunk)?;
        trailers.append(name, value);
    }
    let _ = buf.split_to(len);
    Ok(Some(trailers))
}

/// Writes trailer fields and the blank line that ends a chunked body.
pub fn encode_trailers(out: &mut Vec<u8>, trailers: &HeaderMap) {
    for (name, value) in trailers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// A chunk header for `len` bytes of data.
pub fn chunk_header(len: usize) -> Bytes {
    Bytes::from(format!("{len:x}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_parse_with_extensions() {
        assert_eq!(
            chunk_size(b"1a;ext=1\r\nxyz").unwrap(),
            Chunk::Size {
                consumed: 10,
                size: 26
            }
        );
        assert_eq!(chunk_size(b"1a").unwrap(), Chunk::Partial);
        assert_eq!(chunk_size(b"1a;x").unwrap(), Chunk::Partial);
        assert_eq!(chunk_size(b"1a\r").unwrap(), Chunk::Partial);
        assert_eq!(
            chunk_size(b"0 ; a=\"b c\"\r\n").unwrap(),
            Chunk::Size {
                consumed: 13,
                size: 0
            }
        );
        assert_eq!(
            chunk_size(b"FFFFFFFFFFFFFFFF\r\n").unwrap(),
            Chunk::Size {
                consumed: 18,
                size: u64::MAX
            }
        );
        assert!(chunk_size(b"zz\r\n").is_err());
    }

    #[test]
    fn chunk_size_lines_that_could_smuggle_are_refused() {
        for line in [
            &b"\r\n"[..],
            b";ext\r\n",
            b"5\n",
            b"5;ext\nhello",
            b"5;a\x01b\r\n",
            b"5\rX",
            b"5 x\r\n",
            b"10000000000000000\r\n",
            b"10000000000000000",
        ] {
            assert!(chunk_size(line).is_err(), "{line:?}");
        }
        assert_eq!(&chunk_header(255)[..], b"ff\r\n");
    }
}
