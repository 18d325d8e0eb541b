//! Configuration: parsed once into typed, validated values; nothing downstream re-checks strings.

mod env;
mod load;
mod raw;
mod routes;
mod sections;
mod tls;
mod validate;

pub use tls::{AcmeConfig, CertificateConfig, ClientAuthConfig};

pub use load::{LoadError, Overrides, load, parse};
pub use validate::weak_token;

/// A log filter (`log.level`, `RUST_LOG`) with each comma-separated
/// directive trimmed and the empty ones dropped. tracing-subscriber 0.3
/// reads a directive's characters from its trimmed text but slices the
/// untrimmed one with those positions, and panics on a directive that
/// starts with blanks (found by the config fuzz target); trimmed first, the
/// two agree.
/// The log filter for `filter`: its directives trimmed, and field values
/// in span directives (`[span{field=value}]`) matched as plain text, not
/// compiled as regular expressions (a crafted pattern took over 2 GB to
/// compile; found by the config fuzz target).
pub fn log_filter(
    filter: &str,
) -> Result<tracing_subscriber::EnvFilter, tracing_subscriber::filter::ParseError> {
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(filter_directives(filter))
}

pub fn filter_directives(filter: &str) -> String {
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

use crate::limiter::shared::OnSharedFailure;
use crate::limiter::{KeySource, Limits, UnknownKeys};
use hyper::Uri;
use ipnet::IpNet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the gateway needs to run, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the proxy listener.
    pub listen: SocketAddr,
    /// Backend pools by name (`default`: the top-level `backends`).
    pub pools: Vec<PoolConfig>,
    /// Routes in the order written; the first that matches wins.
    pub routes: Vec<RouteConfig>,
    pub reload: ReloadConfig,
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub rate_limit: RateLimitConfig,
    pub plugins: PluginsConfig,
    /// The HTTPS listener; `None` without a `tls` section.
    pub tls: Option<TlsConfig>,
}

/// `tls`: the HTTPS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    /// Served by SNI; the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// The plain listener answers 308 to https.
    pub redirect_http: bool,
    pub client_auth: Option<ClientAuthConfig>,
    pub acme: Option<AcmeConfig>,
}

#[derive(Debug, Clone, Default)]
pub struct ReloadConfig {
    /// Reload when the configuration file changes.
    pub watch: bool,
}

/// One backend pool: its backends and how they are balanced, probed and reached.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    /// Upstream servers, in the order written.
    pub backends: Vec<BackendConfig>,
    /// How a backend is chosen for each request.
    pub algorithm: Algorithm,
    /// The backend-selection plugin (`balancer.algorithm: plugin`); `algorithm` is then its fallback.
    pub balancer_plugin: Option<PathBuf>,
    pub health_check: HealthCheckConfig,
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the response headers arrive.
    pub request_timeout: Duration,
    /// Further backends tried after a failed attempt.
    pub retries: u32,
    /// Connections (open or opening) to one backend, over all workers.
    pub max_connections: usize,
    /// What the pool speaks to its backends.
    pub protocol: Protocol,
    /// `proxy.backend_ca`: verifies `https://` backends (else the system's roots).
    pub backend_ca: Option<PathBuf>,
}

/// A pool's protocol towards its backends (`protocol:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 without TLS (prior knowledge).
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN.
    H2,
}

impl Protocol {
    pub const NAMES: &'static str = "http1, h2c, h2";

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
        }
    }
}

impl PoolConfig {
    /// The backends' URLs as written for people (no trailing `/`), as
    /// plugins, logs and metrics name them.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends
            .iter()
            .map(|b| b.url.to_string().trim_end_matches('/').to_owned())
            .collect()
    }
}

impl Config {
    /// The pool a route sends to.
    pub fn pool(&self, route: &RouteConfig) -> &PoolConfig {
        &self.pools[route.pool]
    }
}

/// One route: what it matches and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// For logs, metrics and `/routes` (`name:`, else made from the match).
    pub name: String,
    pub matcher: crate::routes::Match,
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// The path prefix taken off before forwarding (`strip_prefix: true`).
    pub strip_prefix: Option<String>,
    /// Overrides the pool's request timeout.
    pub request_timeout: Option<Duration>,
    /// Largest request body; `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    pub limit: RouteLimit,
    /// Tokens one request takes.
    pub cost: u32,
    /// Chooses the backend for this route's requests instead of the pool's balancer.
    pub select_plugin: Option<PathBuf>,
}

/// Which rate-limit policy a route's requests are charged to.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteLimit {
    /// The top-level `rate_limit` (none when it is off).
    Default,
    Off,
    Own(PolicyConfig),
}

/// A route's own rate-limit policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Named in `RateLimit-Policy` and in Redis keys.
    pub name: String,
    pub key: KeySource,
    pub unknown_keys: UnknownKeys,
    pub key_plugin: Option<PathBuf>,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct PluginsConfig {
    /// Budget per call: the worker thread's CPU time, host calls included.
    pub timeout: Duration,
    /// The same budget for starting a new instance (language runtimes
    /// initialise their heap then).
    pub start_timeout: Duration,
    /// Linear memory cap per plugin instance, bytes.
    pub memory_limit: usize,
    /// Core instances, tables and linear memories one plugin instance may
    /// create (a componentize-py component has about 20 instances).
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_memories: usize,
    /// A failed plugin call answers 500 instead of falling back to the built-in behaviour.
    pub fail_closed: bool,
    /// Key/value settings readable by plugins through `host.config`.
    pub config: std::collections::HashMap<String, String>,
    /// Where compiled plugins are cached.
    pub cache_dir: PathBuf,
    /// Watch plugin files and load replacements.
    pub reload: bool,
}

impl PluginsConfig {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5);
    pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(1);
    pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
    pub const DEFAULT_MAX_INSTANCES: usize = 64;
    pub const DEFAULT_MAX_TABLES: usize = 64;
    pub const DEFAULT_MAX_MEMORIES: usize = 16;
}

/// Default place for compiled plugin artifacts (`plugins.cache_dir`):
/// `$XDG_CACHE_HOME/gateway/plugins`, else under `~/.cache`.
fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("gateway")
        .join("plugins")
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            timeout: Self::DEFAULT_TIMEOUT,
            start_timeout: Self::DEFAULT_START_TIMEOUT,
            memory_limit: Self::DEFAULT_MEMORY_LIMIT,
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            max_tables: Self::DEFAULT_MAX_TABLES,
            max_memories: Self::DEFAULT_MAX_MEMORIES,
            fail_closed: false,
            config: Default::default(),
            cache_dir: default_cache_dir(),
            reload: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// On when the `rate_limit` section is present (unless `enabled: false`).
    pub enabled: bool,
    /// What a client is.
    pub key: KeySource,
    /// What a header or plugin key without a per-client row is charged to.
    pub unknown_keys: UnknownKeys,
    /// Client-key plugin (`key: plugin`); the address is the fallback key.
    pub key_plugin: Option<PathBuf>,
    /// Limits for clients without a database override.
    pub default: Limits,
    /// Refill tick.
    pub refill_interval: Duration,
    /// Most clients tracked at once.
    pub max_clients: usize,
    /// `sqlite://…` or `postgres://…` holding per-client overrides.
    pub database: String,
    /// Refuse to start when the database is unreachable (else start with defaults).
    pub database_required: bool,
    /// How often the database is checked for changed limits.
    pub sync_interval: Duration,
    /// Redis holding the buckets shared by several gateways.
    pub shared: Option<SharedConfig>,
}

#[derive(Debug, Clone)]
pub struct SharedConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Namespace inside Redis: keys are `gateway:{prefix}:bucket:<client>`.
    pub prefix: String,
    /// Longest wait for Redis per decision.
    pub timeout: Duration,
    pub on_failure: OnSharedFailure,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// `http://host:port` plus an optional path prefix.
    pub url: Uri,
    /// Share of requests relative to the other backends (≥ 1).
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequests,
    Random,
}

impl Algorithm {
    pub const NAMES: &'static str = "round_robin, least_requests, random";

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastRequests => "least_requests",
            Algorithm::Random => "random",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Active probes on; when off, a passively failed backend is retried after `interval`.
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed probes that take a backend out.
    pub unhealthy_threshold: u32,
    /// Consecutive good probes that bring it back.
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the response headers arrive.
    pub request_timeout: Duration,
    /// Further backends tried after a failed attempt.
    pub retries: u32,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest accepted request body; `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// A client must send its whole request head within this time.
    pub header_read_timeout: Duration,
    /// Longest gap allowed between two reads of a request body (408 after it).
    pub client_body_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// Threads serving the proxy listener; 0: one per CPU the process may use.
    pub workers: usize,
    /// How the workers do plain-TCP I/O (`proxy.io`).
    pub io: IoMode,
    /// Connections (open or opening) to one backend, over all workers.
    pub max_backend_connections: usize,
    /// CA bundle for `https://` backends (else the system's roots).
    pub backend_ca: Option<PathBuf>,
}

/// How the proxy workers do their plain-TCP I/O (`proxy.io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// tokio's readiness-based sockets: `recv`/`send` after `epoll_wait`.
    #[default]
    Epoll,
    /// A ring per worker (see [`crate::uring`]): client and backend reads
    /// and writes queued and submitted together.
    IoUring,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for the protected routes; `None` leaves them closed (401).
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `gateway=debug`.
    pub level: String,
    pub format: LogFormat,
    /// One event per request at info level.
    pub access: bool,
    /// Access lines go to this file (reopened on SIGUSR1) instead of the log.
    pub access_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// One thing wrong with a configuration, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path (`backends[1].weight`) or the flag it came from.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    pub fn at(
        path: impl Into<String>,
        line: usize,
        column: usize,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            line: Some(line),
            column: Some(column),
            ..Problem::new(path, message)
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "{}:{}: {}: {}", line, column, self.path, self.message)
            }
            _ => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn directives_with_blanks_are_trimmed_and_parse_without_panicking() {
        assert_eq!(
            filter_directives(" info ,\t gateway=debug,,"),
            "info,gateway=debug"
        );
        let found = "iiiiii\t\t,\t\t0:fr~@\t\t\t,\t0:fr~@,he19\t0:fr~@,h\t,\t0:fr~@";
        assert!(log_filter(found).is_ok());
        // A span-field pattern is text, not a regular expression to compile.
        let pattern = format!(
            "e[d%kend[8e[[{{[[d%kend {}!aX-KBy)V=V{}",
            "V".repeat(200),
            ".".repeat(50)
        );
        let _ = log_filter(&pattern);
        let parsed = parse(
            &format!("backends: [http://127.0.0.1:1]\nlog:\n  level: \"{found}\"\n"),
            &Overrides::default(),
        );
        // Parsed without a panic; refused, since `iiiiii` is no level.
        let problems = parsed.expect_err("a bare word is no level");
        assert!(
            problems[0].message.contains("neither a level"),
            "{problems:?}"
        );
        let config = parse(
            "backends: [http://127.0.0.1:1]\nlog:\n  level: \" warn , gateway=debug\"\n",
            &Overrides::default(),
        )
        .expect("blank-padded directives are a valid filter");
        assert_eq!(config.log.level, "warn,gateway=debug");
    }

    #[test]
    fn a_misspelt_level_is_refused_instead_of_silencing_the_log() {
        for bad in ["inof", "info,debgu", "gateway"] {
            let text = format!("backends: [http://127.0.0.1:1]\nlog:\n  level: {bad}\n");
            let problems = parse(&text, &Overrides::default()).expect_err(bad);
            assert_eq!(problems[0].path, "log.level");
            assert_eq!(problems[0].line, Some(3), "{problems:?}");
        }
        for good in [
            "info",
            "WARN",
            "off",
            "info,gateway::proxy=trace",
            "gateway=debug",
            "[span]=info",
        ] {
            let text = format!("backends: [http://127.0.0.1:1]\nlog:\n  level: \"{good}\"\n");
            assert!(parse(&text, &Overrides::default()).is_ok(), "{good}");
        }
    }
}
