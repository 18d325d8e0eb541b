//! A gateway plugin (world `full-plugin`) written with `std`, for the
//! gateway's tests of the WASI it gives plugins. `guest.mode` in
//! `plugins.config` says what both exports do:
//!
//! | mode     | does                                                        |
//! |----------|-------------------------------------------------------------|
//! | `print`  | prints a line to stdout and one to stderr, then answers     |
//! | `panic`  | panics with a message                                       |
//! | `reach`  | tries the environment, arguments, a file, a socket, the clock and random; the key says what it got |
//! | `sleep`  | sleeps 1 ms (waits on a WASI pollable)                      |
//!
//! Without a mode it answers like `print` but prints nothing. The gateway's
//! own check call (`User-Agent: gateway-plugin-check`) gets no mode unless
//! `guest.check` is `act`, so a gateway can start with a plugin that fails
//! on real requests. Answers:
//! `client-key` gives the `x-api-key` header (or a description, in
//! `reach`), `select-backend` gives none.

use std::io::Write;

wit_bindgen::generate!({
    world: "full-plugin",
    path: "../../../wit",
});

use exports::gateway::plugin::backend_select;
use exports::gateway::plugin::client_key;
use gateway::plugin::host;
use gateway::plugin::types::{Backend, Request};

/// What the plugin can reach, as `name=outcome` pairs.
fn reach() -> String {
    let env = std::env::vars().count();
    let args = std::env::args().count();
    let file = match std::fs::read("/etc/passwd") {
        Ok(_) => "read".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let dir = match std::fs::read_dir(".") {
        Ok(_) => "listed".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let net = match std::net::TcpStream::connect("127.0.0.1:9") {
        Ok(_) => "connected".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let listen = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(_) => "listening".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let udp = match std::net::UdpSocket::bind("127.0.0.1:0") {
        Ok(_) => "bound".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let random = {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(1u8) != RandomState::new().hash_one(1u8)
    };
    format!(
        "env={env} args={args} file={file} dir={dir} net={net} listen={listen} udp={udp} clock={} random={random}",
        clock > 1_700_000_000
    )
}

/// Does what the mode says; `Some(answer)` replaces the usual answer.
fn act(req: &Request) -> Option<String> {
    let checking = req.header("user-agent").as_deref() == Some("gateway-plugin-check");
    if checking && host::config("guest.check").as_deref() != Some("act") {
        return None;
    }
    match host::config("guest.mode").as_deref().map(str::trim) {
        Some("print") => {
            println!("wasi-guest: hello on stdout");
            let _ = writeln!(std::io::stderr(), "wasi-guest: a warning on stderr");
            None
        }
        Some("panic") => panic!("wasi-guest: the configuration has no tenant table"),
        Some("reach") => Some(reach()),
        Some("sleep") => {
            std::thread::sleep(std::time::Duration::from_millis(1));
            None
        }
        _ => None,
    }
}

struct Guest;

impl client_key::Guest for Guest {
    fn client_key(req: &Request) -> Option<String> {
        act(req).or_else(|| req.header("x-api-key"))
    }
}

impl backend_select::Guest for Guest {
    fn select_backend(req: &Request, _backends: Vec<Backend>) -> Option<u32> {
        act(req);
        None
    }
}

export!(Guest);
