//! Shadowed routes: a route that can never match because an earlier one
//! takes every request it would (reported by `validate`).

use super::{Host, Match, PathRule};

/// True when every request `later` matches is matched by `earlier` too.
pub fn covers(earlier: &Match, later: &Match) -> bool {
    host_covers(earlier.host.as_ref(), later.host.as_ref())
        && path_covers(earlier.path.as_ref(), later.path.as_ref())
        && (earlier.methods.is_empty()
            || (!later.methods.is_empty()
                && later.methods.iter().all(|m| earlier.methods.contains(m))))
        && earlier
            .headers
            .iter()
            .all(|field| later.headers.contains(field))
}

fn host_covers(earlier: Option<&Host>, later: Option<&Host>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(Host::Exact(a)), Some(Host::Exact(b))) => a == b,
        (Some(Host::Exact(_)), Some(Host::Wildcard(_))) => false,
        (Some(Host::Wildcard(suffix)), Some(Host::Exact(name))) => {
            name.ends_with(suffix.as_str()) && name.len() > suffix.len()
        }
        (Some(Host::Wildcard(a)), Some(Host::Wildcard(b))) => b.ends_with(a.as_str()),
    }
}

fn path_covers(earlier: Option<&PathRule>, later: Option<&PathRule>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(PathRule::Prefix(p)), _) if p.is_empty() => true,
        (Some(_), None) => false,
        (Some(PathRule::Exact(a)), Some(PathRule::Exact(b))) => a == b,
        (Some(PathRule::Exact(_)), Some(PathRule::Prefix(_))) => false,
        (Some(PathRule::Prefix(p)), Some(PathRule::Prefix(q) | PathRule::Exact(q))) => q
            .strip_prefix(p.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn m(host: Option<&str>, path: Option<PathRule>, methods: &[Method]) -> Match {
        Match {
            host: host.and_then(Host::parse),
            path,
            methods: methods.to_vec(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn broader_earlier_routes_shadow_narrower_later_ones() {
        let all = m(None, None, &[]);
        let v1 = m(None, Some(PathRule::prefix("/v1")), &[]);
        let v1x = m(
            Some("a.test"),
            Some(PathRule::prefix("/v1/x")),
            &[Method::GET],
        );
        let v10 = m(None, Some(PathRule::prefix("/v10")), &[]);
        let login_post = m(None, Some(PathRule::Exact("/v1".into())), &[Method::POST]);
        assert!(covers(&all, &v1));
        assert!(covers(&v1, &v1x));
        assert!(covers(&v1, &login_post));
        assert!(!covers(&v1, &v10));
        assert!(!covers(&v1x, &v1));
        assert!(!covers(&login_post, &v1));
        let wild = m(Some("*.test"), None, &[]);
        assert!(covers(&wild, &v1x));
        assert!(!covers(&wild, &v1));
        assert!(covers(
            &m(Some("*.test"), None, &[]),
            &m(Some("*.a.test"), None, &[])
        ));
        assert!(!covers(
            &m(Some("*.a.test"), None, &[]),
            &m(Some("*.test"), None, &[])
        ));
        let mut canary = m(None, None, &[]);
        canary.headers = vec![(
            http::HeaderName::from_static("x-canary"),
            http::HeaderValue::from_static("1"),
        )];
        assert!(!covers(&canary, &v1));
        assert!(covers(&all, &canary));
    }
}
