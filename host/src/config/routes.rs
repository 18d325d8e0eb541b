//! `pools:` and `routes:`, checked together: a route must name a pool that
//! exists, every pool must be used, and no route may be hidden behind an
//! earlier one. The top-level `backends` are the pool `default` and, when
//! no `routes:` are written, one catch-all route to it.

use super::raw::{RawConfig, RawMatch, RawPolicy, RawRoute, RawRouteLimit, S};
use super::validate::{
    Checker, backend_list, balancer, health_check, key_kind, spanned, unknown_keys,
};
use super::{
    HealthCheckConfig, PolicyConfig, PoolConfig, Problem, ProxyConfig, RateLimitConfig,
    RouteConfig, RouteLimit,
};
use crate::limiter::{KeyKind, KeySource, Limits};
use crate::routes::{Host, Match, PathRule, covers};
use http::{HeaderName, HeaderValue, Method};
use std::net::SocketAddr;
use std::path::PathBuf;

/// What pools and routes inherit from the rest of the file.
pub(super) struct Defaults<'a> {
    /// The top-level `backends` as the pool `default`, if any.
    pub pool: Option<PoolConfig>,
    /// A pool without `health_check` uses the top-level one.
    pub health_check: &'a HealthCheckConfig,
    pub proxy: &'a ProxyConfig,
    pub rate_limit: &'a RateLimitConfig,
    pub listen: SocketAddr,
}

pub(super) fn pools_and_routes(
    c: &mut Checker,
    raw: &RawConfig,
    defaults: Defaults<'_>,
) -> (Vec<PoolConfig>, Vec<RouteConfig>) {
    let mut pools: Vec<PoolConfig> = defaults.pool.clone().into_iter().collect();
    for (name, pool) in raw.pools.iter().flatten() {
        let at = format!("pools.{name}.");
        if !valid_name(name) {
            c.problems.push(Problem::new(
                format!("pools.{name}"),
                format!("invalid pool name {name:?}; allowed: letters, digits, '-', '_' and '.'"),
            ));
        }
        if pools.iter().any(|p| &p.name == name) {
            c.problems.push(Problem::new(
                format!("pools.{name}"),
                "the top-level backends are the pool named default; define its backends in one place",
            ));
            continue;
        }
        let backends = match &pool.backends {
            Some(list) if !list.is_empty() => backend_list(c, list, &at, defaults.listen),
            _ => {
                c.problems.push(Problem::new(
                    format!("{at}backends"),
                    "a pool needs at least one backend (http://host:port)",
                ));
                Vec::new()
            }
        };
        let (algorithm, balancer_plugin) = balancer(c, pool.balancer.as_ref(), &at);
        let health_check = match &pool.health_check {
            Some(hc) => health_check(c, Some(hc), &at),
            None => defaults.health_check.clone(),
        };
        let proxy = defaults.proxy;
        let protocol = protocol(c, pool.protocol.as_ref(), &at, &backends);
        pools.push(PoolConfig {
            name: name.clone(),
            backends,
            algorithm,
            balancer_plugin,
            health_check,
            connect_timeout: c.duration(
                pool.connect_timeout
                    .as_ref()
                    .map(|s| spanned(format!("{at}connect_timeout"), s)),
                proxy.connect_timeout,
            ),
            request_timeout: c.duration(
                pool.request_timeout
                    .as_ref()
                    .map(|s| spanned(format!("{at}request_timeout"), s)),
                proxy.request_timeout,
            ),
            retries: c.int(
                pool.retries
                    .as_ref()
                    .map(|s| spanned(format!("{at}retries"), s)),
                0,
                10,
                i64::from(proxy.retries),
            ) as u32,
            max_connections: c.int(
                pool.max_connections
                    .as_ref()
                    .map(|s| spanned(format!("{at}max_connections"), s)),
                1,
                1_000_000,
                proxy.max_backend_connections as i64,
            ) as usize,
            protocol,
            backend_ca: proxy.backend_ca.clone(),
        });
    }
    if pools.is_empty() {
        if !c.problems.iter().any(|p| p.path.starts_with("backends")) {
            c.problems.push(Problem::new(
                "backends",
                "no backends configured; list at least one http://host:port (or pass --backend), or define pools",
            ));
        }
        return (pools, Vec::new());
    }

    let routes = match &raw.routes {
        None => {
            if pools[0].name != "default" {
                c.problems.push(Problem::new(
                    "routes",
                    "pools are defined but no routes send requests to them; add routes: with match and pool",
                ));
                return (pools, Vec::new());
            }
            vec![RouteConfig {
                name: "default".to_owned(),
                matcher: Match::default(),
                pool: 0,
                strip_prefix: None,
                request_timeout: None,
                max_body_bytes: defaults.proxy.max_body_bytes,
                limit: RouteLimit::Default,
                cost: 1,
                select_plugin: None,
            }]
        }
        Some(list) => {
            // Each route as far as it could be read, and whether it is clean:
            // a broken route still counts as using its pool but takes no
            // part in the shadowing check.
            let read: Vec<(Option<RouteConfig>, bool)> = list
                .iter()
                .enumerate()
                .map(|(i, raw)| route(c, i, raw, &pools, &defaults))
                .collect();
            for (index, pool) in pools.iter().enumerate() {
                let used = read
                    .iter()
                    .any(|(r, _)| r.as_ref().is_some_and(|r| r.pool == index));
                if !used {
                    c.problems.push(Problem::new(
                        format!("pools.{}", pool.name),
                        format!(
                            "no route sends requests to pool {}; route to it or remove it",
                            pool.name
                        ),
                    ));
                }
            }
            let mut read: Vec<(usize, RouteConfig, bool)> = read
                .into_iter()
                .enumerate()
                .filter_map(|(i, (r, clean))| r.map(|r| (i, r, clean)))
                .collect();
            dedupe_names(list, &mut read);
            check_names(c, list, &read);
            let clean: Vec<(usize, &RouteConfig)> = read
                .iter()
                .filter(|(_, _, clean)| *clean)
                .map(|(i, r, _)| (*i, r))
                .collect();
            check_order(c, list, &clean);
            let routes: Vec<RouteConfig> = read.into_iter().map(|(_, r, _)| r).collect();
            routes
        }
    };
    (pools, routes)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// One route as far as it can be read (`None` without a known pool), and
/// whether it was read without problems.
fn route(
    c: &mut Checker,
    i: usize,
    raw: &S<RawRoute>,
    pools: &[PoolConfig],
    defaults: &Defaults<'_>,
) -> (Option<RouteConfig>, bool) {
    let at = format!("routes[{i}]");
    let here = spanned(at.clone(), raw);
    let route = &raw.value;
    let before = c.problems.len();
    let matcher = match &route.matcher {
        Some(m) => matcher(c, m, &at),
        None => {
            c.problems
                .push(here.problem("a route needs match: (use match: {} for every request)"));
            Match::default()
        }
    };
    let pool = match &route.pool {
        None => {
            c.problems
                .push(here.problem("a route needs pool: (the pool its requests go to)"));
            None
        }
        Some(name) => {
            let input = spanned(format!("{at}.pool"), name);
            let found = pools.iter().position(|p| p.name == name.value.trim());
            if found.is_none() {
                let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                c.problems.push(input.problem(format!(
                    "no pool named {:?}; defined: {}",
                    name.value.trim(),
                    known.join(", ")
                )));
            }
            found
        }
    };
    let strip_prefix = match (route.strip_prefix, &matcher.path) {
        (Some(true), Some(PathRule::Prefix(prefix))) => Some(prefix.clone()),
        (Some(true), _) => {
            c.problems.push(here.problem(format!(
                "{at}.strip_prefix needs match.path_prefix (the prefix to take off)"
            )));
            None
        }
        _ => None,
    };
    let request_timeout = route.request_timeout.as_ref().map(|s| {
        c.duration(
            Some(spanned(format!("{at}.request_timeout"), s)),
            defaults.proxy.request_timeout,
        )
    });
    let max_body_bytes = match &route.max_body_bytes {
        None => defaults.proxy.max_body_bytes,
        Some(s) => {
            let max = c.int(
                Some(spanned(format!("{at}.max_body_bytes"), s)),
                0,
                i64::MAX,
                0,
            );
            (max > 0).then_some(max as u64)
        }
    };
    let name = route.name.as_ref().map(|s| s.value.trim().to_owned());
    let fallback_name = name.clone().unwrap_or_else(|| describe(&matcher));
    let limit = match &route.rate_limit {
        None => RouteLimit::Default,
        Some(RawRouteLimit::Off) => RouteLimit::Off,
        Some(RawRouteLimit::Policy(policy)) => RouteLimit::Own(own_policy(
            c,
            policy,
            route.key_plugin.as_ref(),
            &format!("{at}.rate_limit"),
            &fallback_name,
            defaults.rate_limit,
        )),
    };
    if let (Some(key_plugin), false) = (&route.key_plugin, matches!(limit, RouteLimit::Own(_))) {
        c.problems
            .push(spanned(format!("{at}.key_plugin"), key_plugin).problem(
                "key_plugin needs the route's own rate_limit (the policy whose clients it names)",
            ));
    }
    let capacity = match &limit {
        RouteLimit::Own(policy) => Some(policy.limits.capacity),
        RouteLimit::Default if defaults.rate_limit.enabled => {
            Some(defaults.rate_limit.default.capacity)
        }
        _ => None,
    };
    let cost = match &route.cost {
        None => 1,
        Some(s) => {
            let input = spanned(format!("{at}.cost"), s);
            let max = capacity.map_or(1_000_000, i64::from);
            if capacity.is_none() {
                c.problems.push(input.problem(
                    "cost needs a rate limit on the route (its own rate_limit, or the top-level one)",
                ));
            }
            c.int(Some(input), 1, max, 1) as u32
        }
    };
    let select_plugin = route
        .select_plugin
        .as_ref()
        .map(|s| PathBuf::from(s.value.trim()));
    let clean = c.problems.len() == before;
    let route = pool.map(|pool| RouteConfig {
        name: fallback_name,
        matcher,
        pool,
        strip_prefix,
        request_timeout,
        max_body_bytes,
        limit,
        cost,
        select_plugin,
    });
    (route, clean)
}

fn matcher(c: &mut Checker, raw: &RawMatch, at: &str) -> Match {
    let host = raw.host.as_ref().and_then(|s| {
        let host = Host::parse(&s.value);
        if host.is_none() {
            c.problems.push(spanned(format!("{at}.match.host"), s).problem(format!(
                "invalid host {:?}; allowed: a name such as api.example.com or *.example.com (no port)",
                s.value
            )));
        }
        host
    });
    let path = |c: &mut Checker, s: &S<String>, key: &str| -> Option<String> {
        let text = s.value.trim();
        let normalized = text.starts_with('/')
            && text
                .parse::<http::uri::PathAndQuery>()
                .is_ok_and(|p| p.query().is_none());
        match normalized.then(|| crate::routes::match_path(text)) {
            Some(Ok(path)) => Some(path.into_owned()),
            _ => {
                c.problems
                    .push(spanned(format!("{at}.match.{key}"), s).problem(format!(
                        "invalid path {text:?}; allowed: an absolute path such as /v1 (no query, %XX escapes only)"
                    )));
                None
            }
        }
    };
    let path = match (&raw.path_prefix, &raw.path) {
        (Some(_), Some(s)) => {
            c.problems.push(
                spanned(format!("{at}.match.path"), s)
                    .problem("give path (exact) or path_prefix, not both"),
            );
            None
        }
        (Some(s), None) => path(c, s, "path_prefix").map(|p| PathRule::prefix(&p)),
        (None, Some(s)) => path(c, s, "path").map(PathRule::Exact),
        (None, None) => None,
    };
    let methods = raw
        .methods
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| {
            let text = s.value.trim().to_ascii_uppercase();
            match Method::from_bytes(text.as_bytes()) {
                Ok(method) if !text.is_empty() => Some(method),
                _ => {
                    c.problems.push(
                        spanned(format!("{at}.match.methods[{i}]"), s)
                            .problem(format!("invalid method {:?}", s.value)),
                    );
                    None
                }
            }
        })
        .collect();
    let headers = raw
        .headers
        .iter()
        .flatten()
        .filter_map(|(name, value)| {
            let parsed = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value),
            );
            match parsed {
                (Ok(name), Ok(value)) => Some((name, value)),
                _ => {
                    c.problems.push(Problem::new(
                        format!("{at}.match.headers.{name}"),
                        format!("invalid header {name:?}: {value:?}"),
                    ));
                    None
                }
            }
        })
        .collect();
    Match {
        host,
        path,
        methods,
        headers,
    }
}

/// A route's own policy: its key, capacity and refill; the rest as the top level.
fn own_policy(
    c: &mut Checker,
    raw: &RawPolicy,
    route_key_plugin: Option<&S<String>>,
    at: &str,
    route_name: &str,
    top: &RateLimitConfig,
) -> PolicyConfig {
    // What is not written is the top-level policy's (key, limits, unknown keys).
    let key_plugin = raw
        .key_plugin
        .as_ref()
        .or(route_key_plugin)
        .map(|s| PathBuf::from(s.value.trim()));
    let kind = match (&raw.key, &key_plugin) {
        (None, Some(_)) => KeyKind::Plugin,
        (None, None) => top.key.kind.clone(),
        (Some(key), _) => key_kind(c, Some(key), &format!("{at}.key")),
    };
    let key_plugin = match (&kind, key_plugin) {
        (KeyKind::Plugin, None) => top.key_plugin.clone(),
        (_, plugin) => plugin,
    };
    if kind == KeyKind::Plugin && key_plugin.is_none() {
        c.problems.push(Problem::new(
            format!("{at}.key_plugin"),
            format!("{at}.key is plugin but no key_plugin (path to a .wasm component) is given"),
        ));
    }
    let ipv6_prefix = c.int(
        raw.ipv6_prefix
            .as_ref()
            .map(|s| spanned(format!("{at}.ipv6_prefix"), s)),
        1,
        128,
        i64::from(top.key.ipv6_prefix),
    ) as u8;
    let capacity = raw
        .capacity
        .as_ref()
        .map_or(i64::from(top.default.capacity), |s| s.value);
    let refill = raw
        .refill_per_second
        .as_ref()
        .map_or(top.default.refill_per_second(), |s| s.value);
    let limits = match Limits::new(capacity, refill) {
        Ok(limits) => limits,
        Err(reason) => {
            let located = if reason.starts_with("capacity") {
                raw.capacity
                    .as_ref()
                    .map(|s| spanned(format!("{at}.capacity"), s).problem(&reason))
            } else {
                raw.refill_per_second
                    .as_ref()
                    .map(|s| spanned(format!("{at}.refill_per_second"), s).problem(&reason))
            };
            c.problems
                .push(located.unwrap_or_else(|| Problem::new(at, reason)));
            top.default
        }
    };
    let name = match &raw.name {
        Some(s) => {
            let name = s.value.trim().to_owned();
            if !valid_name(&name) || name == "default" || name == "client" {
                c.problems.push(spanned(format!("{at}.name"), s).problem(format!(
                    "invalid policy name {name:?}; allowed: letters, digits, '-', '_' and '.' (not default or client)"
                )));
            }
            name
        }
        None => route_name.to_owned(),
    };
    PolicyConfig {
        name,
        key: KeySource { kind, ipv6_prefix },
        unknown_keys: match &raw.unknown_keys {
            Some(s) => unknown_keys(c, Some(s), &format!("{at}.unknown_keys")),
            None => top.unknown_keys,
        },
        key_plugin,
        limits,
    }
}

/// A name for a route written without one: its host and path.
fn describe(m: &Match) -> String {
    let host = m.host.as_ref().map(ToString::to_string);
    let path = match &m.path {
        Some(PathRule::Prefix(p)) if p.is_empty() => None,
        Some(PathRule::Prefix(p)) => Some(format!("{p}/*")),
        Some(PathRule::Exact(p)) => Some(p.clone()),
        None => None,
    };
    let methods: Vec<&str> = m.methods.iter().map(Method::as_str).collect();
    let mut name = match (host, path) {
        (Some(h), Some(p)) => format!("{h}{p}"),
        (Some(h), None) => h,
        (None, Some(p)) => p,
        (None, None) => "*".to_owned(),
    };
    if !methods.is_empty() {
        name = format!("{} {name}", methods.join(","));
    }
    name
}

/// Routes that can never match: an earlier route takes all their requests.
/// `routes` are the routes read cleanly, with their positions.
fn check_order(c: &mut Checker, raw: &[S<RawRoute>], routes: &[(usize, &RouteConfig)]) {
    for (at, (j, later)) in routes.iter().enumerate() {
        let shadow = routes[..at]
            .iter()
            .find(|(_, earlier)| covers(&earlier.matcher, &later.matcher));
        if let Some((i, earlier)) = shadow {
            c.problems.push(spanned(format!("routes[{j}]"), &raw[*j]).problem(format!(
                "route {:?} can never match: routes[{i}] ({:?}) comes first and matches every request it would; move it above or narrow the earlier one",
                later.name, earlier.name
            )));
        }
    }
}

/// Route names (and so metric labels) and policy names are unique.
/// `routes` are the routes read, with their positions.
fn check_names(c: &mut Checker, raw: &[S<RawRoute>], routes: &[(usize, RouteConfig, bool)]) {
    for (at, (j, route, _)) in routes.iter().enumerate() {
        let j = *j;
        let earlier = &routes[..at];
        if earlier.iter().any(|(_, r, _)| r.name == route.name) {
            c.problems.push(
                spanned(format!("routes[{j}].name"), &raw[j])
                    .problem(format!("route name {:?} is used twice", route.name)),
            );
        }
        if let RouteLimit::Own(policy) = &route.limit {
            let twice = earlier
                .iter()
                .any(|(_, r, _)| matches!(&r.limit, RouteLimit::Own(p) if p.name == policy.name));
            if twice {
                c.problems
                    .push(spanned(format!("routes[{j}].rate_limit"), &raw[j]).problem(
                    format!(
                        "policy name {:?} is used twice; give each route's rate_limit its own name",
                        policy.name
                    ),
                ));
            }
        }
    }
}

/// Unnamed routes whose made-up names repeat get `#N` (their 1-based
/// position), and so do the policies named after them.
fn dedupe_names(raw: &[S<RawRoute>], routes: &mut [(usize, RouteConfig, bool)]) {
    for at in 0..routes.len() {
        let (j, route, _) = &routes[at];
        let repeated = routes[..at].iter().any(|(_, r, _)| r.name == route.name);
        if !repeated || raw[*j].value.name.is_some() {
            continue;
        }
        let name = format!("{}#{}", route.name, j + 1);
        let route = &mut routes[at].1;
        if let RouteLimit::Own(policy) = &mut route.limit
            && policy.name == route.name
        {
            policy.name = name.clone();
        }
        route.name = name;
    }
}

/// A pool's `protocol`: `http1` (default), `h2c` (plain backends only) or
/// `h2` (`https://` backends only: HTTP/2 is negotiated by ALPN).
fn protocol(
    c: &mut Checker,
    raw: Option<&S<String>>,
    at: &str,
    backends: &[super::BackendConfig],
) -> super::Protocol {
    use super::Protocol;
    let Some(s) = raw else {
        return Protocol::Http1;
    };
    let input = spanned(format!("{at}protocol"), s);
    let protocol = match input.value.trim() {
        "http1" => Protocol::Http1,
        "h2c" => Protocol::H2c,
        "h2" => Protocol::H2,
        other => {
            c.problems.push(input.problem(format!(
                "unknown protocol {other:?}; allowed: {}",
                Protocol::NAMES
            )));
            return Protocol::Http1;
        }
    };
    let wants_tls = protocol == Protocol::H2;
    for backend in backends {
        let tls = backend.url.scheme_str() == Some("https");
        if protocol != Protocol::Http1 && tls != wants_tls {
            c.problems.push(input.problem(format!(
                "protocol {} needs {} backends; {} is not",
                protocol.name(),
                if wants_tls { "https://" } else { "http://" },
                backend.url
            )));
            break;
        }
    }
    protocol
}
