//! End-to-end tests: the built `gateway` binary, real backends on loopback, real HTTP.

mod access_log;
mod acme;
mod balancing;
mod cli;
mod failures;
mod grpc;
mod http_behaviour;
mod io_uring;
mod lifecycle;
mod limiter_integrity;
mod metrics;
mod plugin_sandbox;
mod plugins;
mod rate_limit;
mod redis_cluster;
mod reload;
mod routing;
mod scale_out;
mod status_page;
mod strict_http;
mod support;
mod tls;
