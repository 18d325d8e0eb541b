//! Gateway plugin (world `key-plugin`): the rate-limit key of a request.
//!
//! 1. The value of the API-key header (`api-key.header`, default
//!    `x-api-key`), as is.
//! 2. Otherwise, with `Authorization: Bearer <JWT>`, `sub:` followed by the
//!    token's `sub` claim. **The token's signature is NOT checked**: anyone
//!    can mint a token with any `sub`. See README.md.
//! 3. Otherwise `none`: the gateway uses the client address.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod jwt;

use alloc::format;
use alloc::string::{String, ToString};

use plugin_rt::OnceBox;

wit_bindgen::generate!({
    world: "key-plugin",
    path: "../../wit",
});

use exports::gateway::plugin::client_key::Guest;
use gateway::plugin::host;
use gateway::plugin::types::Request;

/// Configuration key: the header that carries the API key.
const HEADER_KEY: &str = "api-key.header";
const DEFAULT_HEADER: &str = "x-api-key";

/// The header name, read from the host once per instance.
static HEADER: OnceBox<String> = OnceBox::new();

struct ApiKey;

impl Guest for ApiKey {
    fn client_key(req: &Request) -> Option<String> {
        let header = HEADER.get_or_init(|| {
            host::config(HEADER_KEY)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_HEADER.to_string())
        });
        if let Some(key) = req.header(header).as_deref().and_then(non_empty) {
            return Some(key.to_string());
        }
        let authorization = req.header("authorization")?;
        let sub = jwt::unverified_subject(bearer_token(&authorization)?)?;
        Some(format!("sub:{sub}"))
    }
}

export!(ApiKey);

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
    fn blank_api_keys_are_ignored() {
        assert_eq!(non_empty("  k1 "), Some("k1"));
        assert_eq!(non_empty(" \t"), None);
    }
}
