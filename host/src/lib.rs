//! gateway: a programmable HTTP load balancer and rate limiter.

pub mod acme;
pub mod admin;
pub mod app;
pub mod balancer;
pub mod cli;
pub mod clients_cli;
pub mod config;
pub mod demo;
pub mod health;
pub mod http1;
pub mod json_error;
pub mod limiter;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod routes;
pub mod routing;
pub mod server;
pub mod store;
#[cfg(test)]
mod test_env;
pub mod tls;
pub mod uring;
pub mod workers;
