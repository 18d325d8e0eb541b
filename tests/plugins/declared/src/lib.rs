//! A gateway plugin (world `full-plugin-with-headers`) that shows what the
//! gateway passes it, for the gateway's tests of declared headers.
//!
//! * `headers`: the comma-separated names in `declared.headers` (default
//!   `x-api-key,X-Canary,x-missing`), as they are, so that a test can
//!   declare a bad name or too many.
//! * `client-key`: the values it was given, joined by `|` (`-` for none),
//!   then `;ua=` and what `request.header("user-agent")` answers: the
//!   header import still works beside the declared values.
//! * `select-backend`: the first value read as a backend index, else `none`.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// The allocator, panic handler and `cabi_realloc` (on wasm).
extern crate plugin_rt;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

wit_bindgen::generate!({
    world: "full-plugin-with-headers",
    path: "../../../wit",
});

use exports::gateway::plugin::{backend_select_with_headers, client_key_with_headers};
use gateway::plugin::host;
use gateway::plugin::types::{Backend, Request};

const HEADERS_KEY: &str = "declared.headers";
const DEFAULT_HEADERS: &str = "x-api-key,X-Canary,x-missing";

struct Declared;

fn names() -> Vec<String> {
    let list = host::config(HEADERS_KEY).unwrap_or_else(|| DEFAULT_HEADERS.to_string());
    list.split(',').map(|n| n.trim().to_string()).collect()
}

/// `a|-|c`: the values in order, `-` for none.
fn joined(values: &[Option<String>]) -> String {
    values
        .iter()
        .map(|v| v.as_deref().unwrap_or("-"))
        .collect::<Vec<_>>()
        .join("|")
}

impl client_key_with_headers::Guest for Declared {
    fn headers() -> Vec<String> {
        names()
    }

    fn client_key(req: &Request, values: Vec<Option<String>>) -> Option<String> {
        let agent = req.header("user-agent").unwrap_or_else(|| "-".to_string());
        Some(format!("{};ua={agent}", joined(&values)))
    }
}

impl backend_select_with_headers::Guest for Declared {
    fn headers() -> Vec<String> {
        names()
    }

    fn select_backend(_: &Request, values: Vec<Option<String>>, _: Vec<Backend>) -> Option<u32> {
        values.first()?.as_deref()?.trim().parse().ok()
    }
}

export!(Declared);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_marks_absent_values() {
        let values = [Some("a".to_string()), None, Some("c".to_string())];
        assert_eq!(joined(&values), "a|-|c");
        assert_eq!(joined(&[]), "");
    }
}
