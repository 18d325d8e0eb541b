//! Reading the `sub` claim of a JWT **without verifying it**.
//!
//! Only the payload is decoded: the signature is not checked, the `alg`,
//! `exp`, `nbf`, `iss` and `aud` claims are ignored. This is enough to
//! spread rate limits over users when the tokens are verified elsewhere (or
//! when a forged `sub` only costs the forger their own rate limit); it is no
//! authentication.

use alloc::string::String;
use alloc::vec::Vec;

/// The `sub` claim of a JWS-compact JWT (`header.payload.signature`), if the
/// payload is a JSON object whose `sub` member is a non-empty string.
/// Nothing about the token is verified.
pub fn unverified_subject(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if header.is_empty() || parts.next().is_some() {
        // Not three parts (a JWE has five): not a token we can read.
        return None;
    }
    let payload = base64url_decode(payload)?;
    let json = core::str::from_utf8(&payload).ok()?;
    top_level_string(json, "sub").filter(|sub| !sub.is_empty())
}

/// Decodes unpadded base64url (RFC 4648 §5), the encoding of JWT parts;
/// padding (`=`, at most two) is tolerated.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let unpadded = s.trim_end_matches('=');
    let padding = s.len() - unpadded.len();
    if padding > 2 || (padding > 0 && !s.len().is_multiple_of(4)) || unpadded.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for c in unpadded.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // Truncation intended: the byte is the top 8 of the `bits + 8`
            // pending bits.
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The member `name` of the JSON object `json`, if `json` is one object
/// whose member `name` is a string. A duplicate `name` gives `None` (it is
/// ambiguous); nested objects are skipped, not searched.
///
/// A small parser, not a validator: it reads strings exactly (escapes,
/// surrogate pairs) and finds the end of every other value, which is what
/// extracting a member needs; some invalid JSON outside strings (e.g. a
/// number `01`) is accepted.
pub fn top_level_string(json: &str, name: &str) -> Option<String> {
    let mut p = Parser {
        b: json.as_bytes(),
        i: 0,
    };
    p.ws();
    p.expect(b'{')?;
    p.ws();
    // `None`: not seen; `Some(None)`: seen, not a string.
    let mut found: Option<Option<String>> = None;
    if p.peek() == Some(b'}') {
        p.i += 1;
    } else {
        loop {
            p.ws();
            p.expect(b'"')?;
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            if key == name {
                if found.is_some() {
                    return None;
                }
                found = Some(if p.peek() == Some(b'"') {
                    p.i += 1;
                    Some(p.string()?)
                } else {
                    p.skip_value()?;
                    None
                });
            } else {
                p.skip_value()?;
            }
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    if p.i != p.b.len() {
        return None;
    }
    found.flatten()
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// The rest of a string whose opening quote has been read, unescaped.
    fn string(&mut self) -> Option<String> {
        let mut out = String::new();
        loop {
            let start = self.i;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.i += 1;
            }
            // The run ends at an ASCII byte (or the end), so it is whole
            // UTF-8 characters of the `&str` we parse.
            out.push_str(core::str::from_utf8(self.b.get(start..self.i)?).ok()?);
            match self.next()? {
                b'"' => return Some(out),
                b'\\' => {}
                _ => return None, // a raw control character
            }
            let c = match self.next()? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => self.unicode_escape()?,
                _ => return None,
            };
            out.push(c);
        }
    }

    /// The character of a `\uXXXX` escape whose `\u` has been read,
    /// including a surrogate pair written as two escapes. A lone surrogate
    /// is not a character: `None`.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                self.expect(b'\\')?;
                self.expect(b'u')?;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return None;
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            _ => first,
        };
        char::from_u32(code)
    }

    fn hex4(&mut self) -> Option<u32> {
        let mut v = 0;
        for _ in 0..4 {
            v = (v << 4) | char::from(self.next()?).to_digit(16)?;
        }
        Some(v)
    }

    /// Moves past one value of any kind. Nested arrays and objects are
    /// walked with a depth counter, not recursion, so deep nesting cannot
    /// exhaust the stack.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                return self.string().map(drop);
            }
            b'{' | b'[' => {}
            _ => {
                // A number or `true`, `false`, `null`.
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
                {
                    self.i += 1;
                }
                return (self.i > start).then_some(());
            }
        }
        let mut depth: usize = 0;
        loop {
            match self.next()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    fn token(payload: &str) -> String {
        alloc::format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(payload.as_bytes())
        )
    }

    #[test]
    fn base64url() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(base64url_decode(&b64(&data)).as_deref(), Some(&data[..]));
        }
        assert_eq!(base64url_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64url_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("YQ="), None);
        assert_eq!(base64url_decode("Y==="), None);
        assert_eq!(base64url_decode("Y"), None);
        assert_eq!(base64url_decode("a+b/"), None);
        assert_eq!(base64url_decode("YW I"), None);
    }

    #[test]
    fn the_usual_jwt() {
        // jwt.io's example token.
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(unverified_subject(t).as_deref(), Some("1234567890"));
    }

    #[test]
    fn payloads() {
        let sub = |p: &str| unverified_subject(&token(p));
        assert_eq!(sub(r#"{"sub":"alice"}"#).as_deref(), Some("alice"));
        assert_eq!(
            sub(
                r#" { "iss" : "https://idp/", "aud":["a","b"], "sub" : "u-1" , "exp":1700000000 } "#
            )
            .as_deref(),
            Some("u-1")
        );
        // Nested objects and arrays, with quotes and brackets in strings.
        assert_eq!(
            sub(r#"{"ctx":{"sub":"inner","x":[1,{"y":"]}\""}]},"sub":"outer","n":null,"t":true,"f":-1.5e3}"#)
                .as_deref(),
            Some("outer")
        );
        // Escapes.
        assert_eq!(
            sub(r#"{"sub":"a\"b\\c\/d\u00e9\ud83d\ude00\n"}"#).as_deref(),
            Some("a\"b\\c/dé😀\n")
        );
        assert_eq!(sub(r#"{"sub":"grüße"}"#).as_deref(), Some("grüße"));
        // No usable `sub`.
        assert_eq!(sub(r#"{"name":"x"}"#), None);
        assert_eq!(sub(r#"{}"#), None);
        assert_eq!(sub(r#"{"sub":""}"#), None);
        assert_eq!(sub(r#"{"sub":42}"#), None);
        assert_eq!(sub(r#"{"sub":null}"#), None);
        assert_eq!(sub(r#"{"sub":"a","sub":"b"}"#), None);
        assert_eq!(sub(r#"{"sub":"\ud83d"}"#), None);
        assert_eq!(sub(r#"{"sub":"\x"}"#), None);
        assert_eq!(sub("{\"sub\":\"a\nb\"}"), None);
        assert_eq!(sub(r#"["sub","a"]"#), None);
        assert_eq!(sub(r#"{"sub":"a""#), None);
        assert_eq!(sub(r#"{"sub":"a"} x"#), None);
        assert_eq!(sub(r#"{"x":{"y":1}"#), None);
        assert_eq!(sub(r#"{"sub":"a",}"#), None);
        assert_eq!(sub("not json"), None);
        let deep = "[".repeat(100_000);
        assert_eq!(sub(&alloc::format!(r#"{{"sub":"a","x":{deep}}}"#)), None);
    }

    #[test]
    fn not_a_jwt() {
        assert_eq!(unverified_subject("opaque-token"), None);
        assert_eq!(unverified_subject("a.b"), None);
        assert_eq!(unverified_subject("a.b.c.d.e"), None);
        assert_eq!(unverified_subject(".e30."), None);
        assert_eq!(unverified_subject("e30.!!!.sig"), None);
        // Unsigned (`alg: none`) tokens have an empty signature: still read.
        let unsigned = alloc::format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"x"}"#));
        assert_eq!(unverified_subject(&unsigned), Some("x".to_string()));
    }
}
