//! Gateway plugin (world `key-plugin-with-headers`): the rate-limit key of a
//! request. It names the API-key header once per instance, and the gateway
//! passes its value with every call; `Authorization` is asked for only when
//! that header is absent or blank.
//!
//! 1. The value of the API-key header (`api-key.header`, default
//!    `x-api-key`), as is.
//! 2. Otherwise, with `Authorization: Bearer <JWT>`, `sub:` followed by the
//!    token's `sub` claim. **The token's signature is NOT checked**: anyone
//!    can mint a token with any `sub`. See README.md.
//! 3. Otherwise `none`: the gateway uses the client address.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// The allocator, panic handler and `cabi_realloc` (on wasm).
extern crate plugin_rt;

mod jwt;

use alloc::format;
use alloc::string::{String, ToString};

wit_bindgen::generate!({
    world: "key-plugin-with-headers",
    path: "../../wit",
});

use alloc::vec;
use alloc::vec::Vec;
use exports::gateway::plugin::client_key_with_headers::Guest;
use gateway::plugin::host;
use gateway::plugin::types::Request;

/// Configuration key: the header that carries the API key.
const HEADER_KEY: &str = "api-key.header";
const DEFAULT_HEADER: &str = "x-api-key";

struct ApiKey;

impl Guest for ApiKey {
    /// The API-key header.
    fn headers() -> Vec<String> {
        let header = host::config(HEADER_KEY)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_HEADER.to_string());
        vec![header]
    }

    fn client_key(req: &Request, values: Vec<Option<String>>) -> Option<String> {
        let api_key = values.into_iter().next().flatten();
        key(api_key.as_deref(), || req.header("authorization"))
    }
}

export!(ApiKey);

/// The key for a request with this API-key header value; `authorization`
/// reads the `Authorization` header, only if the API key is missing.
fn key(api_key: Option<&str>, authorization: impl FnOnce() -> Option<String>) -> Option<String> {
    if let Some(key) = api_key.and_then(non_empty) {
        return Some(key.to_string());
    }
    let sub = jwt::unverified_subject(bearer_token(&authorization()?)?)?;
    Some(format!("sub:{sub}"))
}

/// `s` without surrounding whitespace, if anything is left.
fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, RFC 9110 §11.1).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty() && !token.contains([' ', '\t'])).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer a b"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn the_api_key_then_the_token_subject_then_none() {
        let bearer = || Some("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJjYXJvbCJ9.".to_string());
        let unread = || -> Option<String> { panic!("Authorization read with an API key") };
        assert_eq!(key(Some(" k1 "), unread).as_deref(), Some("k1"));
        assert_eq!(key(Some("  "), bearer).as_deref(), Some("sub:carol"));
        assert_eq!(key(None, bearer).as_deref(), Some("sub:carol"));
        assert_eq!(key(None, || Some("Basic dXNlcjpwYXNz".to_string())), None);
        assert_eq!(key(None, || None), None);
    }

    #[test]
    fn blank_api_keys_are_ignored() {
        assert_eq!(non_empty("  k1 "), Some("k1"));
        assert_eq!(non_empty(" \t"), None);
    }
}
