//! Turns the file as written (plus flag and environment overrides) into a
//! [`Config`], collecting every problem instead of stopping at the first.

use super::load::Overrides;
use super::raw::{RawBackend, RawBalancer, RawConfig, RawHealthCheck, RawRateLimit, S};
use super::{
    AdminConfig, Algorithm, BackendConfig, Config, HealthCheckConfig, IoMode, LogConfig, LogFormat,
    PoolConfig, Problem, ProxyConfig, RateLimitConfig, ReloadConfig,
};
use crate::limiter::shared::OnSharedFailure;
use crate::limiter::{KeyKind, KeySource, Limits, UnknownKeys};
use hyper::Uri;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A value to check: where it came from and what it says.
pub(super) struct Input<'a, T> {
    pub(super) path: String,
    pub(super) value: &'a T,
    pub(super) line: Option<usize>,
    pub(super) column: Option<usize>,
}

impl<T> Input<'_, T> {
    pub(super) fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            path: self.path.clone(),
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }
}

pub(super) fn spanned<'a, T>(path: impl Into<String>, s: &'a S<T>) -> Input<'a, T> {
    let line = s.referenced.line() as usize;
    let column = s.referenced.column() as usize;
    Input {
        path: path.into(),
        value: &s.value,
        line: (line > 0).then_some(line),
        column: (line > 0).then_some(column),
    }
}

fn flag<'a, T>(path: &str, value: &'a T) -> Input<'a, T> {
    Input {
        path: path.to_owned(),
        value,
        line: None,
        column: None,
    }
}

/// Picks the override if present, else the file's value.
fn pick<'a, T>(
    file_path: &str,
    file: Option<&'a S<T>>,
    override_name: &str,
    over: Option<&'a T>,
) -> Option<Input<'a, T>> {
    match (over, file) {
        (Some(v), _) => Some(flag(override_name, v)),
        (None, Some(s)) => Some(spanned(file_path, s)),
        (None, None) => None,
    }
}

#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn duration(
        &mut self,
        input: Option<Input<'_, String>>,
        default: Duration,
    ) -> Duration {
        let Some(input) = input else { return default };
        match humantime::parse_duration(input.value.trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problems
                    .push(input.problem("must be greater than zero"));
                default
            }
            Err(e) => {
                self.problems.push(input.problem(format!(
                    "invalid duration {:?} ({e}); allowed: a number and unit such as 250ms, 5s, 1m",
                    input.value
                )));
                default
            }
        }
    }

    fn socket_addr(&mut self, input: Option<Input<'_, String>>, default: SocketAddr) -> SocketAddr {
        let Some(input) = input else { return default };
        match input.value.trim().parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.problems.push(input.problem(format!(
                    "invalid listen address {:?}; allowed: IP:PORT such as 0.0.0.0:8080 or [::1]:8080",
                    input.value
                )));
                default
            }
        }
    }

    pub(super) fn int(
        &mut self,
        input: Option<Input<'_, i64>>,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        let Some(input) = input else { return default };
        let v = *input.value;
        if v < min || v > max {
            self.problems
                .push(input.problem(format!("{v} is out of range; allowed: {min} to {max}")));
            return default;
        }
        v
    }

    pub(super) fn backend_url(
        &mut self,
        input: &Input<'_, String>,
        listen: SocketAddr,
    ) -> Option<Uri> {
        let text = input.value.trim();
        let uri: Uri = match text.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.problems.push(input.problem(format!(
                    "invalid backend URL {text:?} ({e}); allowed: http://host:port[/path] or https://host:port[/path]"
                )));
                return None;
            }
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            self.problems.push(input.problem(format!(
                "backend URL {text:?} must start with http:// or https://"
            )));
            return None;
        }
        if uri.authority().is_none_or(|a| a.host().is_empty()) {
            self.problems
                .push(input.problem(format!("backend URL {text:?} has no host")));
            return None;
        }
        if uri.query().is_some() {
            self.problems
                .push(input.problem(format!("backend URL {text:?} must not have a query")));
            return None;
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        if port_out_of_range(authority) {
            self.problems.push(input.problem(format!(
                "backend URL {text:?} has an invalid port; allowed: 1 to 65535"
            )));
            return None;
        }
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        if reaches_listener(listen, uri.host().unwrap_or(""), port) {
            self.problems.push(input.problem(format!(
                "backend URL {text:?} is the gateway's own listener ({listen}): every request would loop back into the gateway"
            )));
            return None;
        }
        Some(uri)
    }

    fn cidr(&mut self, input: Input<'_, String>) -> Option<IpNet> {
        let text = input.value.trim();
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(net.trunc());
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(IpNet::from(ip));
        }
        self.problems.push(input.problem(format!(
            "invalid CIDR {text:?}; allowed: an address or network such as 10.0.0.0/8 or ::1"
        )));
        None
    }
}

pub fn validate(raw: &RawConfig, over: &Overrides) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();

    let listen = c.socket_addr(
        pick(
            "listen",
            raw.listen.as_ref(),
            "--listen",
            over.listen.as_ref(),
        ),
        SocketAddr::from(([0, 0, 0, 0], 8080)),
    );

    let mut backends = Vec::new();
    if !over.backends.is_empty() {
        for url in &over.backends {
            let input = flag("--backend", url);
            if let Some(url) = c.backend_url(&input, listen) {
                backends.push(BackendConfig { url, weight: 1 });
            }
        }
    } else if let Some(list) = &raw.backends {
        backends = backend_list(&mut c, list, "", listen);
    }
    let (algorithm, balancer_plugin) = balancer(&mut c, raw.balancer.as_ref(), "");
    let health_check = health_check(&mut c, raw.health_check.as_ref(), "");

    let px = raw.proxy.as_ref();
    let trusted_proxies = px
        .and_then(|p| p.trusted_proxies.as_ref())
        .map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| c.cidr(spanned(format!("proxy.trusted_proxies[{i}]"), s)))
                .collect()
        })
        .unwrap_or_default();
    let max_body = c.int(
        px.and_then(|p| p.max_body_bytes.as_ref())
            .map(|s| spanned("proxy.max_body_bytes", s)),
        0,
        i64::MAX,
        0,
    );
    let proxy = ProxyConfig {
        connect_timeout: c.duration(
            px.and_then(|p| p.connect_timeout.as_ref())
                .map(|s| spanned("proxy.connect_timeout", s)),
            Duration::from_secs(1),
        ),
        request_timeout: c.duration(
            px.and_then(|p| p.request_timeout.as_ref())
                .map(|s| spanned("proxy.request_timeout", s)),
            Duration::from_secs(30),
        ),
        retries: c.int(
            px.and_then(|p| p.retries.as_ref())
                .map(|s| spanned("proxy.retries", s)),
            0,
            10,
            2,
        ) as u32,
        trusted_proxies,
        max_body_bytes: (max_body > 0).then_some(max_body as u64),
        max_header_bytes: c.int(
            px.and_then(|p| p.max_header_bytes.as_ref())
                .map(|s| spanned("proxy.max_header_bytes", s)),
            8192,
            1 << 20,
            64 * 1024,
        ) as usize,
        header_read_timeout: c.duration(
            px.and_then(|p| p.header_read_timeout.as_ref())
                .map(|s| spanned("proxy.header_read_timeout", s)),
            Duration::from_secs(10),
        ),
        client_body_timeout: c.duration(
            px.and_then(|p| p.client_body_timeout.as_ref())
                .map(|s| spanned("proxy.client_body_timeout", s)),
            Duration::from_secs(60),
        ),
        drain_timeout: c.duration(
            px.and_then(|p| p.drain_timeout.as_ref())
                .map(|s| spanned("proxy.drain_timeout", s)),
            Duration::from_secs(30),
        ),
        workers: c.int(
            px.and_then(|p| p.workers.as_ref())
                .map(|s| spanned("proxy.workers", s)),
            0,
            1024,
            0,
        ) as usize,
        io: match pick(
            "proxy.io",
            px.and_then(|p| p.io.as_ref()),
            "--io",
            over.io.as_ref(),
        ) {
            None => IoMode::Epoll,
            Some(input) => match input.value.trim() {
                "epoll" => IoMode::Epoll,
                "io_uring" => IoMode::IoUring,
                other => {
                    c.problems.push(input.problem(format!(
                        "unknown I/O mode {other:?}; allowed: epoll, io_uring"
                    )));
                    IoMode::Epoll
                }
            },
        },
        max_backend_connections: c.int(
            px.and_then(|p| p.max_backend_connections.as_ref())
                .map(|s| spanned("proxy.max_backend_connections", s)),
            1,
            1_000_000,
            512,
        ) as usize,
        backend_ca: super::tls::backend_ca(&mut c, px.and_then(|p| p.backend_ca.as_ref())),
    };

    let ad = raw.admin.as_ref();
    let admin = AdminConfig {
        listen: c.socket_addr(
            pick(
                "admin.listen",
                ad.and_then(|a| a.listen.as_ref()),
                "GATEWAY_ADMIN_LISTEN",
                over.admin_listen.as_ref(),
            ),
            SocketAddr::from(([127, 0, 0, 1], 9091)),
        ),
        token: over
            .admin_token
            .clone()
            .or_else(|| ad.and_then(|a| a.token.as_ref()).map(|s| s.value.clone()))
            .filter(|t| !t.is_empty()),
    };

    let lg = raw.log.as_ref();
    let level = over
        .log_level
        .clone()
        .or_else(|| lg.and_then(|l| l.level.as_ref()).map(|s| s.value.clone()))
        .unwrap_or_else(|| "info".to_owned());
    let level = super::filter_directives(&level);
    let refused = match super::log_filter(&level) {
        Err(e) => Some(e.to_string()),
        Ok(_) => bare_target(&level)
            .map(|word| format!("{word:?} is neither a level nor TARGET=LEVEL, and as a target name it would silence every other log line")),
    };
    if let Some(reason) = refused {
        let input = match lg.and_then(|l| l.level.as_ref()) {
            Some(s) if over.log_level.is_none() => spanned("log.level", s),
            _ => flag("GATEWAY_LOG_LEVEL", &level),
        };
        c.problems.push(input.problem(format!(
            "invalid log level {level:?} ({reason}); allowed: error, warn, info, debug, trace, off or a filter like gateway=debug"
        )));
    }
    let format = match pick(
        "log.format",
        lg.and_then(|l| l.format.as_ref()),
        "--log-format",
        over.log_format.as_ref(),
    ) {
        None => LogFormat::Pretty,
        Some(input) => match input.value.as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                c.problems.push(input.problem(format!(
                    "unknown log format {other:?}; allowed: pretty, json"
                )));
                LogFormat::Pretty
            }
        },
    };
    let access_file = lg.and_then(|l| l.access_file.as_ref()).map(|s| {
        let path = std::path::PathBuf::from(s.value.trim());
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if parent.is_some_and(|p| !p.is_dir()) {
            c.problems.push(
                spanned("log.access_file", s)
                    .problem(format!("{}: its directory does not exist", path.display())),
            );
        }
        path
    });
    let log = LogConfig {
        level,
        format,
        access: lg.and_then(|l| l.access).unwrap_or(true),
        access_file,
    };

    if !admin.listen.ip().is_loopback()
        && let Some(weakness) = weak_token(admin.token.as_deref())
    {
        let problem = |message: String| match ad.and_then(|a| a.token.as_ref()) {
            Some(s) if over.admin_token.is_none() => spanned("admin.token", s).problem(message),
            _ => Problem::new("admin.token", message),
        };
        c.problems.push(problem(format!(
            "the admin API would listen on {} (not loopback) with {weakness}; anyone who reaches it could change limits: set a token of 16 or more random characters (GATEWAY_ADMIN_TOKEN), or listen on 127.0.0.1",
            admin.listen
        )));
    }
    if listeners_clash(listen, admin.listen) {
        c.problems.push(Problem::new(
            "admin.listen",
            format!(
                "admin.listen {} takes the same port as listen {listen}; give the admin API its own port",
                admin.listen
            ),
        ));
    }

    let tls = super::tls::tls(&mut c, raw.tls.as_ref(), listen, admin.listen);
    let rate_limit = rate_limit(&mut c, raw.rate_limit.as_ref());
    let plugins = plugins(&mut c, raw.plugins.as_ref());
    let default_pool = (!backends.is_empty()).then(|| PoolConfig {
        name: "default".to_owned(),
        backends,
        algorithm,
        balancer_plugin,
        health_check: health_check.clone(),
        connect_timeout: proxy.connect_timeout,
        request_timeout: proxy.request_timeout,
        retries: proxy.retries,
        max_connections: proxy.max_backend_connections,
        protocol: super::Protocol::Http1,
        backend_ca: proxy.backend_ca.clone(),
    });
    let (pools, routes) = super::routes::pools_and_routes(
        &mut c,
        raw,
        super::routes::Defaults {
            pool: default_pool,
            health_check: &health_check,
            proxy: &proxy,
            rate_limit: &rate_limit,
            listen,
        },
    );
    let has_client_auth = tls.as_ref().is_some_and(|t| t.client_auth.is_some());
    let keyed_by_certificate = std::iter::once(&rate_limit.key.kind)
        .chain(routes.iter().filter_map(|r| match &r.limit {
            super::RouteLimit::Own(policy) => Some(&policy.key.kind),
            _ => None,
        }))
        .any(|kind| matches!(kind, KeyKind::TlsSubject | KeyKind::TlsFingerprint));
    if keyed_by_certificate && !has_client_auth {
        c.problems.push(Problem::new(
            "rate_limit.key",
            "tls_subject and tls_fingerprint need client certificates: set tls.client_auth {ca, required}",
        ));
    }
    let reload = ReloadConfig {
        watch: raw.reload.as_ref().and_then(|r| r.watch).unwrap_or(false),
    };

    if c.problems.is_empty() {
        Ok(Config {
            rate_limit,
            plugins,
            listen,
            pools,
            routes,
            reload,
            proxy,
            admin,
            log,
            tls,
        })
    } else {
        let mut problems = c.problems;
        problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
        Err(problems)
    }
}

/// The token in the example configuration, which must never guard a real admin API.
pub const EXAMPLE_TOKEN: &str = "change-me";

/// Why `token` does not protect an admin API, if it does not.
pub fn weak_token(token: Option<&str>) -> Option<&'static str> {
    match token {
        None => Some("no admin.token"),
        Some(EXAMPLE_TOKEN) => Some("the example configuration's token"),
        Some(t) if t.chars().count() < 16 => Some("a token shorter than 16 characters"),
        Some(_) => None,
    }
}

/// The first directive of `filter` that is a bare word but no level
/// (`inof`): `tracing` reads it as a target enabled at every level, which
/// turns every other log line off — a typo that would pass unnoticed.
fn bare_target(filter: &str) -> Option<&str> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    filter.split(',').find(|directive| {
        !directive.contains(['=', '[', ':'])
            && !directive.bytes().all(|b| b.is_ascii_digit())
            && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive))
    })
}

/// A pool's `backends` list; `at` is the key path before `backends`.
pub(super) fn backend_list(
    c: &mut Checker,
    list: &[S<RawBackend>],
    at: &str,
    listen: SocketAddr,
) -> Vec<BackendConfig> {
    let mut backends = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let here = spanned(format!("{at}backends[{i}]"), entry);
        let url_input = Input {
            path: format!("{at}backends[{i}].url"),
            value: &entry.value.url,
            line: here.line,
            column: here.column,
        };
        let url = c.backend_url(&url_input, listen);
        let weight = match entry.value.weight {
            Some(w) if !(1..=1000).contains(&w) => {
                c.problems.push(Problem {
                    path: format!("{at}backends[{i}].weight"),
                    ..here.problem(format!("weight {w} is out of range; allowed: 1 to 1000"))
                });
                1
            }
            Some(w) => w as u32,
            None => 1,
        };
        if let Some(url) = url {
            backends.push(BackendConfig { url, weight });
        }
    }
    backends
}

/// A `balancer` section: the algorithm and, for `plugin`, the component.
pub(super) fn balancer(
    c: &mut Checker,
    balancer: Option<&RawBalancer>,
    at: &str,
) -> (Algorithm, Option<std::path::PathBuf>) {
    let builtin =
        |c: &mut Checker, input: Input<'_, String>, plugin_ok: bool| -> Option<Algorithm> {
            match input.value.as_str() {
                "round_robin" => Some(Algorithm::RoundRobin),
                "least_requests" => Some(Algorithm::LeastRequests),
                "random" => Some(Algorithm::Random),
                "plugin" if plugin_ok => None,
                other => {
                    let plugin = if plugin_ok { ", plugin" } else { "" };
                    c.problems.push(input.problem(format!(
                        "unknown algorithm {other:?}; allowed: {}{plugin}",
                        Algorithm::NAMES
                    )));
                    Some(Algorithm::RoundRobin)
                }
            }
        };
    let chosen = balancer
        .and_then(|b| b.algorithm.as_ref())
        .map(|s| builtin(c, spanned(format!("{at}balancer.algorithm"), s), true));
    let fallback = balancer
        .and_then(|b| b.fallback.as_ref())
        .and_then(|s| builtin(c, spanned(format!("{at}balancer.fallback"), s), false))
        .unwrap_or(Algorithm::RoundRobin);
    match chosen {
        None => (Algorithm::RoundRobin, None),
        Some(Some(algorithm)) => (algorithm, None),
        Some(None) => match balancer.and_then(|b| b.plugin.as_ref()) {
            Some(path) => (fallback, Some(std::path::PathBuf::from(path.value.trim()))),
            None => {
                c.problems.push(Problem::new(
                    format!("{at}balancer.plugin"),
                    format!("{at}balancer.algorithm is plugin but {at}balancer.plugin (path to a .wasm component) is missing"),
                ));
                (fallback, None)
            }
        },
    }
}

/// A `health_check` section with its defaults.
pub(super) fn health_check(
    c: &mut Checker,
    hc: Option<&RawHealthCheck>,
    at: &str,
) -> HealthCheckConfig {
    let hc_path = match hc.and_then(|h| h.path.as_ref()) {
        None => "/".to_owned(),
        Some(s) => {
            let input = spanned(format!("{at}health_check.path"), s);
            if input.value.starts_with('/') && input.value.parse::<Uri>().is_ok() {
                input.value.clone()
            } else {
                c.problems.push(input.problem(format!(
                    "invalid health check path {:?}; allowed: an absolute path such as /healthz",
                    input.value
                )));
                "/".to_owned()
            }
        }
    };
    HealthCheckConfig {
        enabled: hc.and_then(|h| h.enabled).unwrap_or(true),
        path: hc_path,
        interval: c.duration(
            hc.and_then(|h| h.interval.as_ref())
                .map(|s| spanned(format!("{at}health_check.interval"), s)),
            Duration::from_secs(5),
        ),
        timeout: c.duration(
            hc.and_then(|h| h.timeout.as_ref())
                .map(|s| spanned(format!("{at}health_check.timeout"), s)),
            Duration::from_secs(1),
        ),
        unhealthy_threshold: c.int(
            hc.and_then(|h| h.unhealthy_threshold.as_ref())
                .map(|s| spanned(format!("{at}health_check.unhealthy_threshold"), s)),
            1,
            100,
            3,
        ) as u32,
        healthy_threshold: c.int(
            hc.and_then(|h| h.healthy_threshold.as_ref())
                .map(|s| spanned(format!("{at}health_check.healthy_threshold"), s)),
            1,
            100,
            2,
        ) as u32,
    }
}

/// True when an authority (`host:port`) names a port that is not 1–65535
/// (`http::Uri` parses `:99999` and then reports no port at all).
fn port_out_of_range(authority: &str) -> bool {
    let Some((_, port)) = authority.rsplit_once(':') else {
        return false;
    };
    if port.contains(']') {
        return false; // the colon was inside a bracketed IPv6 address
    }
    !matches!(port.parse::<u16>(), Ok(p) if p > 0)
}

/// True when two listeners would take the same port on a shared address.
/// Port 0 (an ephemeral port) clashes with nothing.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// True when a backend at `host:port` is the gateway's own listener: the
/// same port on the listen address, or on loopback (`localhost` too) when
/// the gateway listens on loopback or on every address.
fn reaches_listener(listen: SocketAddr, host: &str, port: u16) -> bool {
    if listen.port() == 0 || port != listen.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Some(IpAddr::from([127, 0, 0, 1]))
    } else {
        host.parse::<IpAddr>().ok()
    };
    match ip {
        Some(ip) => {
            ip == listen.ip()
                || (listen.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
        }
        None => false,
    }
}

/// `rate_limit.key`: `ip`, `header:NAME` or `plugin` (default `ip`).
pub(super) fn key_kind(c: &mut Checker, raw: Option<&S<String>>, at: &str) -> KeyKind {
    let Some(s) = raw else {
        return KeyKind::Ip;
    };
    let input = spanned(at, s);
    let text = input.value.trim();
    match text.strip_prefix("header:") {
        _ if text == "ip" => KeyKind::Ip,
        _ if text == "plugin" => KeyKind::Plugin,
        _ if text == "tls_subject" => KeyKind::TlsSubject,
        _ if text == "tls_fingerprint" => KeyKind::TlsFingerprint,
        Some(name) => match http::HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(name) => KeyKind::Header(name),
            Err(_) => {
                c.problems
                    .push(input.problem(format!("{name:?} is not a valid header name")));
                KeyKind::Ip
            }
        },
        None => {
            c.problems.push(input.problem(format!(
                "unknown key source {text:?}; allowed: ip, header:NAME, plugin, tls_subject, tls_fingerprint"
            )));
            KeyKind::Ip
        }
    }
}

/// `rate_limit.unknown_keys`: `ip`, `own` or `reject` (default `ip`).
pub(super) fn unknown_keys(c: &mut Checker, raw: Option<&S<String>>, at: &str) -> UnknownKeys {
    let Some(s) = raw else {
        return UnknownKeys::Ip;
    };
    let input = spanned(at, s);
    match input.value.trim() {
        "ip" => UnknownKeys::Ip,
        "own" => UnknownKeys::Own,
        "reject" => UnknownKeys::Reject,
        other => {
            c.problems.push(input.problem(format!(
                "unknown policy {other:?}; allowed: ip, own, reject"
            )));
            UnknownKeys::Ip
        }
    }
}

fn rate_limit(c: &mut Checker, raw: Option<&RawRateLimit>) -> RateLimitConfig {
    let ipv6_prefix = c.int(
        raw.and_then(|r| r.ipv6_prefix.as_ref())
            .map(|s| spanned("rate_limit.ipv6_prefix", s)),
        1,
        128,
        64,
    ) as u8;
    let kind = key_kind(c, raw.and_then(|r| r.key.as_ref()), "rate_limit.key");
    let key = KeySource { kind, ipv6_prefix };
    let unknown_keys = unknown_keys(
        c,
        raw.and_then(|r| r.unknown_keys.as_ref()),
        "rate_limit.unknown_keys",
    );
    let fallback = Limits::new(100, 10.0).unwrap_or(Limits {
        capacity: 100,
        refill_milli: 10_000,
        is_override: false,
    });
    let default = match raw.and_then(|r| r.default.as_ref()) {
        None => fallback,
        Some(d) => {
            let capacity = d.capacity.as_ref().map_or(100, |s| s.value);
            let refill = d.refill_per_second.as_ref().map_or(10.0, |s| s.value);
            match Limits::new(capacity, refill) {
                Ok(limits) => limits,
                Err(reason) => {
                    let located = if reason.starts_with("capacity") {
                        d.capacity
                            .as_ref()
                            .map(|s| spanned("rate_limit.default.capacity", s).problem(&reason))
                    } else {
                        d.refill_per_second.as_ref().map(|s| {
                            spanned("rate_limit.default.refill_per_second", s).problem(&reason)
                        })
                    };
                    c.problems.push(
                        located.unwrap_or_else(|| Problem::new("rate_limit.default", reason)),
                    );
                    fallback
                }
            }
        }
    };
    let refill_interval = c.duration(
        raw.and_then(|r| r.refill_interval.as_ref())
            .map(|s| spanned("rate_limit.refill_interval", s)),
        Duration::from_millis(100),
    );
    if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&refill_interval) {
        let input = raw
            .and_then(|r| r.refill_interval.as_ref())
            .map(|s| spanned("rate_limit.refill_interval", s));
        if let Some(input) = input {
            c.problems.push(input.problem("must be from 1ms to 1m"));
        }
    }
    let database = match raw.and_then(|r| r.database.as_ref()) {
        None => "sqlite://gateway.db".to_owned(),
        Some(s) => {
            let input = spanned("rate_limit.database", s);
            let url = input.value.trim();
            let known = ["sqlite:", "postgres://", "postgresql://"];
            if !known.iter().any(|p| url.starts_with(p)) {
                c.problems.push(input.problem(format!(
                    "unsupported database URL {url:?}; allowed: sqlite://PATH or postgres://USER@HOST/DB"
                )));
            }
            url.to_owned()
        }
    };
    let wants_plugin = raw
        .and_then(|r| r.key.as_ref())
        .is_some_and(|k| k.value.trim() == "plugin");
    let key_plugin = match (wants_plugin, raw.and_then(|r| r.key_plugin.as_ref())) {
        (true, Some(path)) => Some(std::path::PathBuf::from(path.value.trim())),
        (true, None) => {
            c.problems.push(Problem::new(
                "rate_limit.key_plugin",
                "rate_limit.key is plugin but rate_limit.key_plugin (path to a .wasm component) is missing",
            ));
            None
        }
        (false, _) => None,
    };
    let shared = raw.and_then(|r| r.shared.as_ref()).map(|url| {
        let input = spanned("rate_limit.shared", url);
        let text = input.value.trim();
        if let Err(reason) = crate::limiter::SharedTarget::parse(text) {
            c.problems.push(input.problem(reason));
        }
        let on_failure = match raw.and_then(|r| r.on_shared_failure.as_ref()) {
            None => OnSharedFailure::Local,
            Some(s) => {
                let input = spanned("rate_limit.on_shared_failure", s);
                match input.value.trim() {
                    "local" => OnSharedFailure::Local,
                    "allow" => OnSharedFailure::Allow,
                    "deny" => OnSharedFailure::Deny,
                    other => {
                        c.problems.push(input.problem(format!(
                            "unknown policy {other:?}; allowed: local, allow, deny"
                        )));
                        OnSharedFailure::Local
                    }
                }
            }
        };
        super::SharedConfig {
            url: text.to_owned(),
            prefix: raw
                .and_then(|r| r.shared_prefix.as_ref())
                .map_or_else(|| "default".to_owned(), |s| s.value.trim().to_owned()),
            timeout: c.duration(
                raw.and_then(|r| r.shared_timeout.as_ref())
                    .map(|s| spanned("rate_limit.shared_timeout", s)),
                Duration::from_millis(50),
            ),
            on_failure,
        }
    });
    RateLimitConfig {
        shared,
        key_plugin,
        enabled: raw.is_some_and(|r| r.enabled.unwrap_or(true)),
        key,
        unknown_keys,
        default,
        refill_interval,
        max_clients: c.int(
            raw.and_then(|r| r.max_clients.as_ref())
                .map(|s| spanned("rate_limit.max_clients", s)),
            1,
            100_000_000,
            1_000_000,
        ) as usize,
        database,
        database_required: raw.and_then(|r| r.database_required).unwrap_or(true),
        sync_interval: c.duration(
            raw.and_then(|r| r.sync_interval.as_ref())
                .map(|s| spanned("rate_limit.sync_interval", s)),
            Duration::from_millis(500),
        ),
    }
}

/// `16MiB`, `512KiB`, `1GiB` or a number of bytes.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

fn plugins(c: &mut Checker, raw: Option<&super::raw::RawPlugins>) -> super::PluginsConfig {
    let memory_limit = match raw.and_then(|p| p.memory_limit.as_ref()) {
        None => super::PluginsConfig::DEFAULT_MEMORY_LIMIT,
        Some(s) => {
            let input = spanned("plugins.memory_limit", s);
            match parse_size(input.value) {
                Some(bytes) if (64 << 10..=4 << 30).contains(&bytes) => bytes,
                _ => {
                    c.problems.push(input.problem(format!(
                        "invalid memory limit {:?}; allowed: 64KiB to 4GiB, e.g. 16MiB",
                        input.value
                    )));
                    super::PluginsConfig::DEFAULT_MEMORY_LIMIT
                }
            }
        }
    };
    super::PluginsConfig {
        timeout: c.duration(
            raw.and_then(|p| p.timeout.as_ref())
                .map(|s| spanned("plugins.timeout", s)),
            super::PluginsConfig::DEFAULT_TIMEOUT,
        ),
        start_timeout: c.duration(
            raw.and_then(|p| p.start_timeout.as_ref())
                .map(|s| spanned("plugins.start_timeout", s)),
            super::PluginsConfig::DEFAULT_START_TIMEOUT,
        ),
        memory_limit,
        max_instances: c.int(
            raw.and_then(|p| p.max_instances.as_ref())
                .map(|s| spanned("plugins.max_instances", s)),
            1,
            10_000,
            super::PluginsConfig::DEFAULT_MAX_INSTANCES as i64,
        ) as usize,
        max_tables: c.int(
            raw.and_then(|p| p.max_tables.as_ref())
                .map(|s| spanned("plugins.max_tables", s)),
            1,
            10_000,
            super::PluginsConfig::DEFAULT_MAX_TABLES as i64,
        ) as usize,
        max_memories: c.int(
            raw.and_then(|p| p.max_memories.as_ref())
                .map(|s| spanned("plugins.max_memories", s)),
            1,
            10_000,
            super::PluginsConfig::DEFAULT_MAX_MEMORIES as i64,
        ) as usize,
        fail_closed: raw.and_then(|p| p.fail_closed).unwrap_or(false),
        config: raw
            .and_then(|p| p.config.clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default(),
        cache_dir: raw
            .and_then(|p| p.cache_dir.as_ref())
            .map(|s| std::path::PathBuf::from(s.value.trim()))
            .unwrap_or_else(super::default_cache_dir),
        reload: raw.and_then(|p| p.reload).unwrap_or(true),
    }
}
