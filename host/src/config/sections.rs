//! After a YAML error: the file read again one top-level section at a time,
//! so one run reports a type error in every broken section (and the
//! problems of the sections that read fine), not only the first.
//!
//! Each section is parsed from a copy of the file in which every other
//! line is blank, so line numbers stay those of the file. Files whose top
//! level is not a block mapping (`{...}` on one line) are left to the
//! first error alone.

use super::Problem;
use super::load::yaml_problem;
use super::raw::RawConfig;

/// The sections that read fine, merged; the problems of those that did not;
/// and the keys of those.
pub(super) struct Sections {
    pub raw: RawConfig,
    pub problems: Vec<Problem>,
    pub broken: Vec<String>,
}

/// `None` when the file has no top-level block keys to split at.
pub(super) fn parse(text: &str) -> Option<Sections> {
    let lines: Vec<&str> = text.lines().collect();
    let starts: Vec<(usize, &str)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, line)| top_level_key(line).map(|key| (i, key)))
        .collect();
    if starts.is_empty() {
        return None;
    }
    let mut sections = Sections {
        raw: RawConfig::default(),
        problems: Vec::new(),
        broken: Vec::new(),
    };
    for (n, &(start, key)) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(lines.len(), |&(next, _)| next);
        let masked: String = lines
            .iter()
            .enumerate()
            .map(|(i, line)| if (start..end).contains(&i) { *line } else { "" })
            .collect::<Vec<_>>()
            .join("\n");
        match serde_saphyr::from_str::<RawConfig>(&masked) {
            Ok(raw) => sections.raw.merge(raw),
            Err(error) => {
                sections.problems.push(yaml_problem(&error));
                sections.broken.push(key.to_owned());
            }
        }
    }
    Some(sections)
}

/// `key` for a line `key:` or `key: value` at column 0.
fn top_level_key(line: &str) -> Option<&str> {
    let first = line.chars().next()?;
    if first.is_whitespace() || matches!(first, '#' | '-' | '{' | '[' | '"' | '\'') {
        return None;
    }
    let (key, _) = line.split_once(':')?;
    let key = key.trim_end();
    key.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(key)
}

impl RawConfig {
    /// Takes every section `other` has.
    fn merge(&mut self, other: RawConfig) {
        let RawConfig {
            listen,
            backends,
            balancer,
            health_check,
            proxy,
            admin,
            log,
            rate_limit,
            plugins,
            pools,
            routes,
            reload,
            tls,
        } = other;
        self.listen = self.listen.take().or(listen);
        self.backends = self.backends.take().or(backends);
        self.balancer = self.balancer.take().or(balancer);
        self.health_check = self.health_check.take().or(health_check);
        self.proxy = self.proxy.take().or(proxy);
        self.admin = self.admin.take().or(admin);
        self.log = self.log.take().or(log);
        self.rate_limit = self.rate_limit.take().or(rate_limit);
        self.plugins = self.plugins.take().or(plugins);
        self.pools = self.pools.take().or(pools);
        self.routes = self.routes.take().or(routes);
        self.reload = self.reload.take().or(reload);
        self.tls = self.tls.take().or(tls);
    }
}
