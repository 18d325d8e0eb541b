//! HTTP/1.1 as bytes, for both sides of the proxy (RFC 9110/9112): request
//! heads read from clients and written to backends, response heads read
//! from backends and written to clients, message framing, chunked coding,
//! dot-segment removal. Functions and state machines over buffers, no
//! sockets and no tasks, so every rule is tested (and fuzzed) without I/O;
//! the downstream server (`server`) and the upstream client (`proxy`'s pool,
//! connection and response body) drive it, as Pingora keeps
//! `protocols/http/v1` apart from its I/O.

pub mod body;
pub mod chunked;
pub mod client;
pub mod fields;
pub mod path;
pub mod server;
