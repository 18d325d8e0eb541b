//! Route matching: the ordered `routes:` list compiled once into indexes, so
//! a request is matched without scanning every route.
//!
//! The first route (in the order written) whose `match` holds wins. Routes
//! are grouped by host — exact hosts in a hash map, `*.suffix` wildcards in a
//! hash map by suffix, and routes without a host — and inside each group by
//! path in a segment tree (`/v1/items` is the node `v1` → `items`). A lookup
//! walks the tree of each group the request's host belongs to, collecting
//! candidate route numbers (each node keeps its routes sorted), and checks
//! methods and headers only on those candidates, smallest number first: the
//! work grows with the path's depth, not with the number of routes.
//!
//! Matching sees the path as the backend will: dot-segments resolved,
//! percent-encoded unreserved characters decoded and repeated slashes merged
//! ([`match_path`]), so `/api/../login` and `/%6cogin` cannot slip past a
//! strict `/login` route.

mod normalize;
mod shadow;

pub use normalize::{InvalidEscape, match_path};
pub use shadow::covers;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::collections::HashMap;

type Map<V> = HashMap<Box<[u8]>, V, foldhash::fast::FixedState>;

/// What a route requires of a request; `None`/empty: anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    pub host: Option<Host>,
    pub path: Option<PathRule>,
    /// Any of these methods (empty: every method).
    pub methods: Vec<Method>,
    /// Each of these fields present with exactly this value.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A host pattern, lower-cased, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, kept as its suffix `.example.com`: one or more
    /// labels in front of it (not `example.com` itself), as in nginx and Envoy.
    Wildcard(String),
}

impl Host {
    /// Parses `api.example.com` or `*.example.com` (case-insensitive, a
    /// trailing dot ignored); `None` when it is neither.
    pub fn parse(text: &str) -> Option<Host> {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return None;
        }
        Some(if wildcard {
            Host::Wildcard(format!(".{name}"))
        } else {
            Host::Exact(name.to_owned())
        })
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Exact(name) => f.write_str(name),
            Host::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A path rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    /// Whole segments: `/v1` matches `/v1`, `/v1/` and `/v1/x`, not `/v10`.
    /// Kept without a trailing slash (`/` is the empty prefix).
    Prefix(String),
    /// Exactly this path.
    Exact(String),
}

impl PathRule {
    /// A prefix as written (`/v1/` is the same as `/v1`).
    pub fn prefix(text: &str) -> PathRule {
        PathRule::Prefix(text.trim_end_matches('/').to_owned())
    }
}

/// The parts of a request a route looks at.
pub struct Request<'a> {
    /// `Host` or the target's authority, as received (port and case as sent).
    pub host: Option<&'a [u8]>,
    /// The path as [`match_path`] returns it.
    pub path: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

/// The compiled route list.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: Map<Paths>,
    wildcard: Map<Paths>,
    /// The lengths of the wildcard suffixes, so a host is only cut where one could match.
    suffix_lengths: Vec<usize>,
    any_host: Paths,
    /// Methods and headers per route, checked after host and path.
    rest: Vec<Rest>,
}

#[derive(Debug, Default)]
struct Rest {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Rest {
    #[inline]
    fn holds(&self, request: &Request<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(request.method))
            && self.headers.iter().all(|(name, value)| {
                request
                    .headers
                    .get_all(name)
                    .iter()
                    .any(|given| given == value)
            })
    }
}

/// The routes of one host group by path.
#[derive(Debug, Default)]
struct Paths {
    /// Prefix rules (and routes with no path rule, at the root).
    tree: Node,
    /// Exact-path rules.
    exact: Map<Vec<u32>>,
}

#[derive(Debug, Default)]
struct Node {
    /// Routes whose prefix ends here, ascending.
    routes: Vec<u32>,
    /// The next segments; few, so found by a scan that compares a packed
    /// head of each name before its bytes.
    children: Vec<Child>,
}

#[derive(Debug)]
struct Child {
    /// The segment's length and first eight bytes, packed.
    head: (usize, u64),
    name: Box<[u8]>,
    node: Node,
}

/// A segment's length and first eight bytes (zero-padded), compared before
/// the rest of its bytes.
fn head(segment: &[u8]) -> (usize, u64) {
    let word = segment
        .iter()
        .take(8)
        .enumerate()
        .fold(0u64, |word, (i, &b)| word | u64::from(b) << (8 * i));
    (segment.len(), word)
}

/// The first segment of `path` (up to the next `/` or the end) with its
/// [`head`], read in one pass.
#[inline]
fn next_segment(path: &[u8]) -> (&[u8], (usize, u64)) {
    let mut word = 0u64;
    let mut at = 0;
    while at < path.len() && path[at] != b'/' {
        if at < 8 {
            word |= u64::from(path[at]) << (8 * at);
        }
        at += 1;
    }
    (&path[..at], (at, word))
}

impl Node {
    #[inline]
    fn child(&self, segment: &[u8], wanted: (usize, u64)) -> Option<&Node> {
        self.children
            .iter()
            .find(|c| c.head == wanted && (segment.len() <= 8 || c.name[8..] == segment[8..]))
            .map(|c| &c.node)
    }

    fn child_mut(&mut self, segment: &[u8]) -> &mut Node {
        let at = match self.children.iter().position(|c| &*c.name == segment) {
            Some(at) => at,
            None => {
                self.children.push(Child {
                    head: head(segment),
                    name: segment.into(),
                    node: Node::default(),
                });
                self.children.len() - 1
            }
        };
        &mut self.children[at].node
    }
}

impl Paths {
    fn insert(&mut self, path: Option<&PathRule>, route: u32) {
        match path {
            Some(PathRule::Exact(path)) => self
                .exact
                .entry(path.as_bytes().into())
                .or_default()
                .push(route),
            Some(PathRule::Prefix(prefix)) => {
                let mut node = &mut self.tree;
                for segment in prefix.split('/').skip(1) {
                    node = node.child_mut(segment.as_bytes());
                }
                node.routes.push(route);
            }
            None => self.tree.routes.push(route),
        }
    }

    /// The first route below `best` whose path rule holds and whose methods
    /// and headers hold too.
    fn first(&self, request: &Request<'_>, rest: &[Rest], mut best: u32) -> u32 {
        if !self.exact.is_empty()
            && let Some(routes) = self.exact.get(request.path.as_bytes())
        {
            best = first_holding(routes, request, rest, best);
        }
        let mut node = &self.tree;
        if !node.routes.is_empty() {
            best = first_holding(&node.routes, request, rest, best);
        }
        // Segment by segment: `/v1/items` is `v1`, then `items`.
        let mut remaining = request.path.as_bytes().get(1..).unwrap_or_default();
        while !node.children.is_empty() {
            let (segment, wanted) = next_segment(remaining);
            match node.child(segment, wanted) {
                Some(child) => node = child,
                None => break,
            }
            if !node.routes.is_empty() {
                best = first_holding(&node.routes, request, rest, best);
            }
            match remaining.get(segment.len() + 1..) {
                Some(next) => remaining = next,
                None => break,
            }
        }
        best
    }
}

#[inline]
fn first_holding(routes: &[u32], request: &Request<'_>, rest: &[Rest], best: u32) -> u32 {
    for &route in routes {
        if route >= best {
            break;
        }
        if rest[route as usize].holds(request) {
            return route;
        }
    }
    best
}

impl RouteTable {
    /// Compiles routes in order: route `i` of the result is `matches[i]`.
    pub fn new<'a>(matches: impl IntoIterator<Item = &'a Match>) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, m) in matches.into_iter().enumerate() {
            let route = i as u32;
            let group = match &m.host {
                None => &mut table.any_host,
                Some(Host::Exact(name)) => table.exact.entry(name.as_bytes().into()).or_default(),
                Some(Host::Wildcard(suffix)) => {
                    if !table.suffix_lengths.contains(&suffix.len()) {
                        table.suffix_lengths.push(suffix.len());
                    }
                    table.wildcard.entry(suffix.as_bytes().into()).or_default()
                }
            };
            group.insert(m.path.as_ref(), route);
            table.rest.push(Rest {
                methods: m.methods.clone(),
                headers: m.headers.clone(),
            });
        }
        table
    }

    /// The number of the first route that matches `request`.
    pub fn lookup(&self, request: &Request<'_>) -> Option<usize> {
        let mut best = u32::MAX;
        if !self.exact.is_empty() || !self.wildcard.is_empty() {
            let mut buffer = [0u8; 256];
            if let Some(host) = request.host.and_then(|h| host_name(h, &mut buffer)) {
                if let Some(paths) = self.exact.get(host) {
                    best = paths.first(request, &self.rest, best);
                }
                // `a.b.example.com` is under `.b.example.com` and
                // `.example.com`: cut only where a wildcard's suffix could start.
                for &length in &self.suffix_lengths {
                    if host.len() > length
                        && host[host.len() - length] == b'.'
                        && let Some(paths) = self.wildcard.get(&host[host.len() - length..])
                    {
                        best = paths.first(request, &self.rest, best);
                    }
                }
            }
        }
        best = self.any_host.first(request, &self.rest, best);
        (best != u32::MAX).then_some(best as usize)
    }
}

/// The host of a `Host` value, lower-cased into `buffer`: port and one
/// trailing dot removed; `None` for an IP literal in brackets or a name
/// too long to be a DNS name.
fn host_name<'b>(raw: &[u8], buffer: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    if raw.first() == Some(&b'[') {
        return None;
    }
    let host = match raw.iter().rposition(|&b| b == b':') {
        Some(at) => &raw[..at],
        None => raw,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.len() > buffer.len() {
        return None;
    }
    let out = &mut buffer[..host.len()];
    for (o, b) in out.iter_mut().zip(host) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: Option<&str>, path: Option<PathRule>) -> Match {
        Match {
            host: host.map(|h| Host::parse(h).expect("host")),
            path,
            ..Match::default()
        }
    }

    fn find(
        table: &RouteTable,
        host: &str,
        path: &str,
        method: Method,
        headers: &HeaderMap,
    ) -> Option<usize> {
        table.lookup(&Request {
            host: Some(host.as_bytes()),
            path,
            method: &method,
            headers,
        })
    }

    #[test]
    fn first_match_in_written_order_across_host_groups() {
        let routes = [
            m(Some("api.example.com"), Some(PathRule::prefix("/v1"))),
            m(None, Some(PathRule::prefix("/login"))),
            m(Some("*.example.com"), None),
            m(None, Some(PathRule::Exact("/exact".into()))),
            m(None, None),
        ];
        let table = RouteTable::new(&routes);
        let h = HeaderMap::new();
        let get = |host, path| find(&table, host, path, Method::GET, &h);
        assert_eq!(get("api.example.com", "/v1"), Some(0));
        assert_eq!(get("API.Example.COM:8080", "/v1/items"), Some(0));
        assert_eq!(get("api.example.com.", "/v1/"), Some(0));
        assert_eq!(get("api.example.com", "/v10"), Some(2));
        assert_eq!(get("api.example.com", "/login/x"), Some(1));
        assert_eq!(get("a.b.example.com", "/exact"), Some(2));
        assert_eq!(get("example.com", "/exact"), Some(3));
        assert_eq!(get("example.com", "/exact/"), Some(4));
        assert_eq!(get("other.test", "/"), Some(4));
        assert_eq!(get("[::1]:80", "/v1"), Some(4));
    }

    #[test]
    fn methods_and_headers_must_all_hold() {
        let mut login = m(None, Some(PathRule::prefix("/login")));
        login.methods = vec![Method::POST];
        let mut canary = m(None, None);
        canary.headers = vec![(
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        )];
        let table = RouteTable::new(&[login, canary]);
        let mut h = HeaderMap::new();
        assert_eq!(find(&table, "h", "/login", Method::POST, &h), Some(0));
        assert_eq!(find(&table, "h", "/login", Method::GET, &h), None);
        h.insert("x-canary", HeaderValue::from_static("1"));
        assert_eq!(find(&table, "h", "/login", Method::GET, &h), Some(1));
        h.insert("x-canary", HeaderValue::from_static("2"));
        assert_eq!(find(&table, "h", "/", Method::GET, &h), None);
    }

    #[test]
    fn no_host_only_matches_host_free_routes() {
        let table = RouteTable::new(&[
            m(Some("a.test"), None),
            m(None, Some(PathRule::prefix("/"))),
        ]);
        let h = HeaderMap::new();
        let request = Request {
            host: None,
            path: "/x",
            method: &Method::GET,
            headers: &h,
        };
        assert_eq!(table.lookup(&request), Some(1));
    }

    #[test]
    fn hosts_parse_strictly() {
        assert_eq!(
            Host::parse("*.Example.com"),
            Some(Host::Wildcard(".example.com".into()))
        );
        assert_eq!(Host::parse("a.test."), Some(Host::Exact("a.test".into())));
        assert_eq!(Host::parse("a.*.test"), None);
        assert_eq!(Host::parse("a..test"), None);
        assert_eq!(Host::parse("a.test:80"), None);
        assert_eq!(Host::parse(""), None);
    }

    proptest::proptest! {
        /// The indexed lookup agrees with checking every route in order.
        #[test]
        fn index_agrees_with_a_linear_scan(
            routes in proptest::collection::vec((0..4usize, 0..6usize, 0..3usize), 1..12),
            host in 0..5usize,
            path in 0..8usize,
            post in proptest::bool::ANY,
        ) {
            const HOSTS: [Option<&str>; 4] = [None, Some("a.test"), Some("*.test"), Some("b.a.test")];
            const REQUEST_HOSTS: [&str; 5] = ["a.test", "b.a.test", "x.test", "other", "A.TEST:1"];
            const PREFIXES: [&str; 6] = ["/", "/v1", "/v1/x", "/v10", "/w", "/v1/x/y"];
            const PATHS: [&str; 8] = ["/", "/v1", "/v1/", "/v1/x", "/v10", "/v1/xy", "/w/v1", "/v1/x/y/z"];
            let matches: Vec<Match> = routes
                .iter()
                .map(|&(h, p, kind)| {
                    let path = match kind {
                        0 => None,
                        1 => Some(PathRule::prefix(PREFIXES[p])),
                        _ => Some(PathRule::Exact(PREFIXES[p].to_owned())),
                    };
                    let mut m = m(HOSTS[h], path);
                    if p % 2 == 1 {
                        m.methods = vec![Method::POST];
                    }
                    m
                })
                .collect();
            let table = RouteTable::new(&matches);
            let method = if post { Method::POST } else { Method::GET };
            let headers = HeaderMap::new();
            let request = Request {
                host: Some(REQUEST_HOSTS[host].as_bytes()),
                path: PATHS[path],
                method: &method,
                headers: &headers,
            };
            let linear = matches.iter().position(|m| holds_linearly(m, &request));
            proptest::prop_assert_eq!(table.lookup(&request), linear);
        }
    }

    fn holds_linearly(m: &Match, request: &Request<'_>) -> bool {
        let mut buffer = [0u8; 256];
        let host = request
            .host
            .and_then(|h| host_name(h, &mut buffer))
            .map(|h| std::str::from_utf8(h).unwrap());
        let host_ok = match (&m.host, host) {
            (None, _) => true,
            (Some(Host::Exact(name)), Some(host)) => name == host,
            (Some(Host::Wildcard(suffix)), Some(host)) => {
                host.ends_with(suffix.as_str()) && host.len() > suffix.len()
            }
            (Some(_), None) => false,
        };
        let path_ok = match &m.path {
            None => true,
            Some(PathRule::Exact(p)) => request.path == p,
            Some(PathRule::Prefix(p)) => request
                .path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        };
        host_ok && path_ok && (m.methods.is_empty() || m.methods.contains(request.method))
    }
}
