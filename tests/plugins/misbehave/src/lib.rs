//! A deliberately misbehaving gateway plugin (world `full-plugin`), for the
//! gateway's tests of its plugin sandbox.
//!
//! What each export does is its mode: `misbehave.key-mode` for
//! `client-key`, `misbehave.select-mode` for `select-backend`, each falling
//! back to `misbehave.mode`, then to `ok`.
//!
//! | mode        | `client-key`                | `select-backend` |
//! |-------------|-----------------------------|------------------|
//! | `ok`        | the `x-api-key` header      | `none`           |
//! | `loop`      | never returns               | never returns    |
//! | `panic`     | traps (panics)              | traps (panics)   |
//! | `alloc`     | allocates until it traps    | same             |
//! | `bad-index` | `"misbehave"`               | `9999`           |
//! | `log`       | logs 1,000 lines, then `ok` | same             |
//! | `host-loop` | calls `host.log` with 60 KB messages for ever | same |
//! | `big-key`   | a 10 MB key                 | `ok`             |
//! | `tls-subject` | the client certificate's subject (`request.tls-subject`) | `ok` |
//!
//! An unknown mode behaves as `ok`. The configuration is read on every call.
//! The gateway's own check call (`User-Agent: gateway-plugin-check`, made
//! when the plugin is loaded) is answered as `ok` unless `misbehave.check`
//! is `misbehave`, so the gateway starts and the tests see the misbehaviour
//! on real requests.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// The allocator, panic handler and `cabi_realloc` (on wasm).
extern crate plugin_rt;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::hint::black_box;

wit_bindgen::generate!({
    world: "full-plugin",
    path: "../../../wit",
});

use exports::gateway::plugin::backend_select;
use exports::gateway::plugin::client_key;
use gateway::plugin::host;
use gateway::plugin::types::{Backend, Request};

const MODE_KEY: &str = "misbehave.mode";
const KEY_MODE_KEY: &str = "misbehave.key-mode";
const SELECT_MODE_KEY: &str = "misbehave.select-mode";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Loop,
    Panic,
    Alloc,
    BadIndex,
    Log,
    HostLoop,
    BigKey,
    TlsSubject,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s.trim() {
            "loop" => Mode::Loop,
            "panic" => Mode::Panic,
            "alloc" => Mode::Alloc,
            "bad-index" => Mode::BadIndex,
            "log" => Mode::Log,
            "host-loop" => Mode::HostLoop,
            "big-key" => Mode::BigKey,
            "tls-subject" => Mode::TlsSubject,
            _ => Mode::Ok,
        }
    }

    /// The mode for one export: its own key, else `misbehave.mode`.
    fn read(own_key: &str, req: &Request) -> Mode {
        let set = |key: &str| host::config(key).filter(|v| !v.trim().is_empty());
        let checking = req.header("user-agent").as_deref() == Some("gateway-plugin-check");
        if checking && set("misbehave.check").as_deref() != Some("misbehave") {
            return Mode::Ok;
        }
        set(own_key)
            .or_else(|| set(MODE_KEY))
            .map_or(Mode::Ok, |v| Mode::parse(&v))
    }
}

struct Misbehave;

impl client_key::Guest for Misbehave {
    fn client_key(req: &Request) -> Option<String> {
        match Mode::read(KEY_MODE_KEY, req) {
            Mode::Ok => req.header("x-api-key"),
            Mode::HostLoop => host_loop(),
            Mode::BigKey => Some("k".repeat(10 << 20)),
            Mode::TlsSubject => req.tls_subject(),
            Mode::Log => {
                flood_log("client-key");
                req.header("x-api-key")
            }
            Mode::BadIndex => Some("misbehave".to_string()),
            Mode::Loop => spin(),
            Mode::Panic => panic!("misbehave: panic mode"),
            Mode::Alloc => hog(),
        }
    }
}

impl backend_select::Guest for Misbehave {
    fn select_backend(req: &Request, _backends: Vec<Backend>) -> Option<u32> {
        match Mode::read(SELECT_MODE_KEY, req) {
            Mode::Ok | Mode::BigKey | Mode::TlsSubject => None,
            Mode::HostLoop => host_loop(),
            Mode::Log => {
                flood_log("select-backend");
                None
            }
            Mode::BadIndex => Some(9999),
            Mode::Loop => spin(),
            Mode::Panic => panic!("misbehave: panic mode"),
            Mode::Alloc => hog(),
        }
    }
}

export!(Misbehave);

/// Writes more log lines than the host should let through.
fn flood_log(export: &str) {
    for i in 0..1000 {
        host::log(&format!("misbehave: {export} log line {i}"));
    }
}

/// Calls the host for ever: little WebAssembly work per call, much
/// host time (each 60 KB message is copied into the host).
fn host_loop() -> ! {
    let message = "x".repeat(60 * 1024);
    loop {
        host::log(black_box(&message));
    }
}

/// Runs for ever. `black_box` keeps the optimiser from proving the loop
/// does nothing.
fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates 1 MiB chunks, and writes to every page of each, until an
/// allocation fails (the host's memory cap), which traps.
fn hog() -> ! {
    const CHUNK: usize = 1 << 20;
    const PAGE: usize = 4096;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for page in chunk.chunks_mut(PAGE) {
            page[0] = black_box(1);
        }
        chunks.push(black_box(chunk));
        black_box(&mut chunks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("loop"), Mode::Loop);
        assert_eq!(Mode::parse(" panic "), Mode::Panic);
        assert_eq!(Mode::parse("alloc"), Mode::Alloc);
        assert_eq!(Mode::parse("bad-index"), Mode::BadIndex);
        assert_eq!(Mode::parse("log"), Mode::Log);
        assert_eq!(Mode::parse("host-loop"), Mode::HostLoop);
        assert_eq!(Mode::parse("big-key"), Mode::BigKey);
        assert_eq!(Mode::parse("ok"), Mode::Ok);
        assert_eq!(Mode::parse("whatever"), Mode::Ok);
    }
}
