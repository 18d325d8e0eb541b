//! Reading the file: environment expansion, YAML parsing with positions, overrides, validation.

use super::raw::RawConfig;
use super::{Config, Problem, env, sections, validate};
use std::path::{Path, PathBuf};

/// Values from command-line flags and `GATEWAY_*` variables; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub backends: Vec<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub io: Option<String>,
}

impl Overrides {
    /// True when the overrides alone describe a runnable gateway.
    pub fn has_backends(&self) -> bool {
        !self.backends.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file and nothing to run without one: a usage error.
    #[error("config file {0} not found; pass -c FILE, or --backend URL to run without a file")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in the configuration", .0.len())]
    Invalid(Vec<Problem>),
}

/// Parses configuration text; every problem found is returned.
pub fn parse(text: &str, over: &Overrides) -> Result<Config, Vec<Problem>> {
    let expanded = env::expand(text, |name| std::env::var(name).ok())?;
    let raw: RawConfig = if expanded.trim().is_empty() {
        RawConfig::default()
    } else {
        match serde_saphyr::from_str(&expanded) {
            Ok(raw) => raw,
            Err(error) => return Err(every_problem(&expanded, yaml_problem(&error), over)),
        }
    };
    validate::validate(&raw, over)
}

/// The problems of a file with a YAML error: the error in each broken
/// section, then the problems of the sections that read fine (except those
/// a broken section would explain: a broken `pools` leaves routes naming
/// pools that seem undefined).
fn every_problem(text: &str, first: Problem, over: &Overrides) -> Vec<Problem> {
    let Some(sections) = sections::parse(text) else {
        return vec![first];
    };
    let mut problems = sections.problems;
    if problems.is_empty() {
        // An error only the whole file has (e.g. a key given twice).
        return vec![first];
    }
    let routing = ["backends", "pools", "routes"];
    let explained = |p: &Problem| {
        sections.broken.iter().any(|key| {
            p.path == *key
                || p.path.starts_with(&format!("{key}."))
                || p.path.starts_with(&format!("{key}["))
                || (routing.contains(&key.as_str())
                    && routing.iter().any(|r| p.path.starts_with(r)))
        })
    };
    if let Err(more) = validate::validate(&sections.raw, over) {
        problems.extend(more.into_iter().filter(|p| !explained(p)));
    }
    problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
    problems
}

pub(super) fn yaml_problem(err: &serde_saphyr::Error) -> Problem {
    let message = err.without_snippet().to_string();
    let first = message.lines().next().unwrap_or("invalid YAML");
    // The position is reported separately; drop the parser's own " at line L, column C".
    let message = match first.rfind(" at line ") {
        Some(cut) => first[..cut].to_owned(),
        None => first.to_owned(),
    };
    match err.location().filter(|l| l.line() > 0) {
        Some(loc) => Problem::at(
            "(yaml)",
            loc.line() as usize,
            loc.column() as usize,
            message,
        ),
        None => Problem::new("(yaml)", message),
    }
}

/// Loads the configuration from `path`. When the file is absent and was not
/// named explicitly, the overrides alone are used if they name backends.
pub fn load(path: &Path, explicit: bool, over: &Overrides) -> Result<Config, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if explicit || !over.has_backends() {
                return Err(LoadError::Missing(path.to_owned()));
            }
            String::new()
        }
        Err(source) => {
            return Err(LoadError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(&text, over).map_err(LoadError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, LogFormat};
    use std::time::Duration;

    fn ok(text: &str) -> Config {
        parse(text, &Overrides::default()).expect("valid config")
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text, &Overrides::default()).expect_err("invalid config")
    }

    #[test]
    fn three_line_file_works_with_defaults() {
        let c = ok(
            "listen: 0.0.0.0:8080\nbackends:\n  - http://127.0.0.1:9001\n  - url: http://127.0.0.1:9002\n    weight: 2\n",
        );
        assert_eq!(c.pools[0].backends.len(), 2);
        assert_eq!(c.pools[0].backends[1].weight, 2);
        assert_eq!(c.pools[0].algorithm, Algorithm::RoundRobin);
        assert_eq!(c.proxy.retries, 2);
        assert_eq!(c.pools[0].health_check.interval, Duration::from_secs(5));
        assert_eq!(c.admin.listen.port(), 9091);
        assert_eq!(c.log.format, LogFormat::Pretty);
    }

    #[test]
    fn ports_listener_clashes_and_loops_are_refused() {
        let p = problems("backends: [http://127.0.0.1:99999]\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("invalid port"), "{p:?}");
        assert_eq!(p[0].line, Some(1));

        let p = problems(
            "listen: 127.0.0.1:8080\nadmin:\n  listen: 127.0.0.1:8080\nbackends: [http://127.0.0.1:9001]\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("same port as listen"), "{p:?}");
        let p = problems(
            "listen: 0.0.0.0:9091\nadmin:\n  listen: 127.0.0.1:9091\nbackends: [http://127.0.0.1:9001]\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");

        for backend in [
            "http://127.0.0.1:8080",
            "http://localhost:8080/api",
            "http://[::1]:8080",
        ] {
            let p = problems(&format!(
                "listen: 0.0.0.0:8080\nbackends: [\"{backend}\"]\n"
            ));
            assert!(
                p.len() == 1 && p[0].message.contains("the gateway's own listener"),
                "{backend}: {p:?}"
            );
        }
        // Other ports, other addresses and ephemeral ports are fine.
        ok(
            "listen: 127.0.0.1:8080\nbackends: [http://127.0.0.1:8081, http://127.0.0.2:8080, http://b.example:8080]\n",
        );
        ok(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nbackends: [http://127.0.0.1:9001]\n",
        );
    }

    #[test]
    fn workers_default_to_per_cpu_and_are_bounded() {
        let c = ok("backends: [http://a:1]\n");
        assert_eq!(c.proxy.workers, 0);
        let c = ok("backends: [http://a:1]\nproxy:\n  workers: 3\n");
        assert_eq!(c.proxy.workers, 3);
        let p = problems("backends: [http://a:1]\nproxy:\n  workers: 5000\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert_eq!(p[0].path, "proxy.workers", "{p:?}");
        assert!(p[0].message.contains("out of range"), "{p:?}");
    }

    #[test]
    fn io_defaults_to_epoll_and_names_its_choices() {
        use crate::config::IoMode;
        assert_eq!(ok("backends: [http://a:1]\n").proxy.io, IoMode::Epoll);
        let c = ok("backends: [http://a:1]\nproxy:\n  io: io_uring\n");
        assert_eq!(c.proxy.io, IoMode::IoUring);
        let p = problems("backends: [http://a:1]\nproxy:\n  io: uring\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].path.as_str(), p[0].line),
            ("proxy.io", Some(3)),
            "{p:?}"
        );
        assert!(p[0].message.contains("allowed: epoll, io_uring"), "{p:?}");
        let over = Overrides {
            io: Some("io_uring".into()),
            ..Overrides::default()
        };
        let c = parse("backends: [http://x:9]\nproxy:\n  io: epoll\n", &over).unwrap();
        assert_eq!(c.proxy.io, IoMode::IoUring);
    }

    #[test]
    fn backend_connections_default_to_512_and_are_bounded() {
        let c = ok("backends: [http://a:1]\n");
        assert_eq!(c.proxy.max_backend_connections, 512);
        let c = ok("backends: [http://a:1]\nproxy:\n  max_backend_connections: 8\n");
        assert_eq!(c.proxy.max_backend_connections, 8);
        let p = problems("backends: [http://a:1]\nproxy:\n  max_backend_connections: 0\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert_eq!(p[0].path, "proxy.max_backend_connections", "{p:?}");
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let p = problems("listen: 0.0.0.0:8080\nbackends: [http://a:1]\nbogus: 1\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].message.contains("bogus"), "{p:?}");
    }

    #[test]
    fn top_level_backends_are_the_default_pool_with_a_catch_all_route() {
        let c = ok("backends: [http://127.0.0.1:9001]\nproxy:\n  retries: 4\n");
        assert_eq!(c.pools.len(), 1);
        assert_eq!(c.pools[0].name, "default");
        assert_eq!(
            c.pools[0].retries, 4,
            "pools take their defaults from proxy"
        );
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].matcher, crate::routes::Match::default());
        assert_eq!(c.routes[0].limit, crate::config::RouteLimit::Default);
    }

    #[test]
    fn pools_and_routes_are_read_with_their_actions() {
        let c = ok(concat!(
            "rate_limit:\n  default: {capacity: 10, refill_per_second: 1}\n",
            "pools:\n  web:\n    backends: [http://127.0.0.1:9001]\n    retries: 0\n",
            "  api:\n    backends: [http://127.0.0.1:9002]\n    balancer: {algorithm: least_requests}\n",
            "routes:\n",
            "  - match: {host: API.test, path_prefix: /v1/, methods: [get]}\n    pool: api\n    strip_prefix: true\n",
            "    rate_limit: {key: header:X-Key, capacity: 5, refill_per_second: 0.5}\n",
            "  - match: {path: /report}\n    pool: web\n    cost: 10\n    request_timeout: 2s\n",
            "  - match: {}\n    pool: web\n    rate_limit: off\n",
        ));
        let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["api", "web"], "pools in name order");
        assert_eq!(c.pools[0].algorithm, Algorithm::LeastRequests);
        assert_eq!(c.pools[1].retries, 0);
        let api = &c.routes[0];
        assert_eq!(api.name, "GET api.test/v1/*");
        assert_eq!(api.pool, 0);
        assert_eq!(api.strip_prefix.as_deref(), Some("/v1"));
        let crate::config::RouteLimit::Own(policy) = &api.limit else {
            panic!("own policy expected: {:?}", api.limit);
        };
        assert_eq!(policy.name, "GET api.test/v1/*");
        assert_eq!(policy.limits.capacity, 5);
        assert_eq!(c.routes[1].cost, 10);
        assert_eq!(c.routes[1].request_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.routes[2].limit, crate::config::RouteLimit::Off);
    }

    #[test]
    fn a_route_policy_takes_what_it_does_not_say_from_the_top_level() {
        let c = ok(concat!(
            "rate_limit:\n  key: header:X-Key\n  unknown_keys: own\n",
            "  default: {capacity: 10, refill_per_second: 2}\n",
            "backends: [http://127.0.0.1:9001]\n",
            "routes:\n  - match: {}\n    pool: default\n    rate_limit: {capacity: 3}\n",
        ));
        let crate::config::RouteLimit::Own(policy) = &c.routes[0].limit else {
            panic!("own policy expected");
        };
        assert_eq!(policy.limits.capacity, 3);
        assert_eq!(policy.limits.refill_per_second(), 2.0);
        assert_eq!(policy.unknown_keys, crate::limiter::UnknownKeys::Own);
        assert!(matches!(&policy.key.kind, crate::limiter::KeyKind::Header(h) if h == "x-key"));
    }

    #[test]
    fn route_actions_that_cannot_work_are_refused() {
        let p = problems(concat!(
            "rate_limit:\n  default: {capacity: 10, refill_per_second: 1}\n",
            "pools:\n  web:\n    backends: [http://127.0.0.1:9001]\n",
            "routes:\n",
            "  - match: {path: /a}\n    pool: web\n    strip_prefix: true\n",
            "  - match: {path: /b}\n    pool: web\n    cost: 11\n",
            "  - match: {path: /c}\n    pool: web\n    key_plugin: k.wasm\n",
            "  - match: {path: /d, path_prefix: /d}\n    pool: web\n",
            "  - match: {path: /e, methods: [\"G T\"]}\n    pool: web\n",
            "  - name: x\n    match: {path: /f}\n    pool: web\n",
            "  - name: x\n    match: {path: /g}\n    pool: web\n",
        ));
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        for expected in [
            "strip_prefix needs match.path_prefix",
            "routes[1].cost: 11 is out of range; allowed: 1 to 10",
            "key_plugin needs the route's own rate_limit",
            "give path (exact) or path_prefix, not both",
            "invalid method",
            "route name \"x\" is used twice",
        ] {
            assert!(
                text.iter().any(|t| t.contains(expected)),
                "{expected:?} not in {text:#?}"
            );
        }
    }

    #[test]
    fn a_type_error_in_one_section_does_not_hide_the_others() {
        let p = problems(
            "listen: nope\nbackends:\n  - http://127.0.0.1:9001\nproxy:\n  retries: many\nhealth_check:\n  interval: [1]\nlog:\n  format: loud\n",
        );
        let lines: Vec<_> = p.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            lines,
            vec![
                ("listen", Some(1)),
                ("(yaml)", Some(5)),
                ("(yaml)", Some(7)),
                ("log.format", Some(9)),
            ],
            "{p:#?}"
        );
        // A broken pools section does not make every route's pool "undefined".
        let p =
            problems("pools:\n  api:\n    backends: 7\nroutes:\n  - match: {}\n    pool: api\n");
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p[0].line, Some(3));
    }

    #[test]
    fn every_semantic_problem_is_reported_with_position() {
        let p = problems(
            "listen: nope\nbackends:\n  - ftp://x:1\n  - url: http://b:2\n    weight: 0\nproxy:\n  connect_timeout: soon\n",
        );
        let lines: Vec<_> = p.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            lines,
            vec![
                ("listen", Some(1)),
                ("backends[0].url", Some(3)),
                ("backends[1].weight", Some(4)),
                ("proxy.connect_timeout", Some(7)),
            ]
        );
    }

    #[test]
    fn flags_override_the_file() {
        let over = Overrides {
            listen: Some("127.0.0.1:1".into()),
            backends: vec!["http://127.0.0.1:2".into()],
            log_format: Some("json".into()),
            ..Overrides::default()
        };
        let c = parse("listen: 0.0.0.0:8080\nbackends: [http://x:9]\n", &over).unwrap();
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.pools[0].backends.len(), 1);
        assert_eq!(c.pools[0].backends[0].url.port_u16(), Some(2));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn bad_flag_is_reported_by_flag_name() {
        let over = Overrides {
            listen: Some("nope".into()),
            ..Overrides::default()
        };
        let p = parse("backends: [http://x:9]\n", &over).unwrap_err();
        assert_eq!(p[0].path, "--listen");
        assert_eq!(p[0].line, None);
    }

    #[test]
    fn cidrs_and_bare_addresses_are_accepted() {
        let c = ok(
            "backends: [http://x:9]\nproxy:\n  trusted_proxies: [10.0.0.0/8, \"::1\", 192.168.1.7]\n",
        );
        assert_eq!(c.proxy.trusted_proxies.len(), 3);
    }

    #[test]
    fn alias_bomb_is_rejected_not_expanded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(!problems(&text).is_empty());
    }

    #[test]
    fn rate_limit_section_turns_limiting_on() {
        let off = ok("backends: [http://x:9]\n");
        assert!(!off.rate_limit.enabled);
        let on = ok(
            "backends: [http://x:9]\nrate_limit:\n  key: header:X-API-Key\n  default:\n    capacity: 5\n    refill_per_second: 0.5\n",
        );
        assert!(on.rate_limit.enabled);
        assert_eq!(on.rate_limit.default.capacity, 5);
        assert_eq!(on.rate_limit.default.refill_milli, 500);
        assert!(matches!(
            on.rate_limit.key.kind,
            crate::limiter::KeyKind::Header(_)
        ));
        assert_eq!(on.rate_limit.unknown_keys, crate::limiter::UnknownKeys::Ip);
        assert_eq!(on.rate_limit.database, "sqlite://gateway.db");
    }

    #[test]
    fn bad_rate_limit_values_are_located() {
        let p = problems(
            "backends: [http://x:9]\nrate_limit:\n  key: cookie\n  unknown_keys: maybe\n  default:\n    capacity: 0\n  database: mysql://x\n",
        );
        let lines: Vec<_> = p.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert_eq!(
            lines,
            vec![
                ("rate_limit.key", Some(3)),
                ("rate_limit.unknown_keys", Some(4)),
                ("rate_limit.default.capacity", Some(6)),
                ("rate_limit.database", Some(7)),
            ]
        );
    }

    #[test]
    fn missing_backends_is_explained() {
        let p = problems("listen: 0.0.0.0:8080\n");
        assert!(p[0].message.contains("no backends"));
    }
}
