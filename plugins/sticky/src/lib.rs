//! Gateway plugin (world `select-plugin-with-headers`): sticky backends.
//!
//! A request's user key is the value of a header (`sticky.header`, default
//! `x-user`) or else of a cookie (`sticky.cookie`, default `session`). The
//! backend is chosen by rendezvous (highest-random-weight) hashing of the
//! key with each healthy backend's URL, so:
//!
//! * a user always gets the same backend, on every gateway (the hash is
//!   stable and unseeded);
//! * when a backend leaves rotation only its users move, spread over the
//!   others; when it comes back they return to it, and nobody else moves;
//! * backends get users in proportion to their weight.
//!
//! Without a key the plugin answers `none` and the gateway's built-in
//! balancer decides. The plugin names the user-key header once per
//! instance, and the gateway passes its value with every call; the `Cookie`
//! header is asked for only when that header is absent or blank.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::f64::consts::{LN_2, SQRT_2};

use plugin_rt::{OnceBox, hash, mix};

wit_bindgen::generate!({
    world: "select-plugin-with-headers",
    path: "../../wit",
});

use alloc::vec;
use exports::gateway::plugin::backend_select_with_headers::Guest;
use gateway::plugin::host;
use gateway::plugin::types::{Backend, Request};

/// Configuration key: the header that carries the user key.
const HEADER_KEY: &str = "sticky.header";
const DEFAULT_HEADER: &str = "x-user";
/// Configuration key: the cookie that carries the user key, if the header
/// does not.
const COOKIE_KEY: &str = "sticky.cookie";
const DEFAULT_COOKIE: &str = "session";

struct Config {
    header: String,
    cookie: String,
}

/// Read from the host once per instance.
static CONFIG: OnceBox<Config> = OnceBox::new();
/// The `hash` of each backend's URL, read from the host on the first request.
static URL_HASHES: OnceBox<Vec<u64>> = OnceBox::new();

struct Sticky;

fn config() -> &'static Config {
    CONFIG.get_or_init(|| Config {
        header: config_or(HEADER_KEY, DEFAULT_HEADER),
        cookie: config_or(COOKIE_KEY, DEFAULT_COOKIE),
    })
}

impl Guest for Sticky {
    /// The user-key header.
    fn headers() -> Vec<String> {
        vec![config().header.clone()]
    }

    fn select_backend(
        req: &Request,
        values: Vec<Option<String>>,
        backends: Vec<Backend>,
    ) -> Option<u32> {
        let config = config();
        let header = values.into_iter().next().flatten();
        let key = user_key_hash(header.as_deref(), || req.header("cookie"), &config.cookie)?;
        let cached = URL_HASHES.get_or_init(|| url_hashes(host::backend_count()));
        if cached.len() == backends.len() {
            rendezvous(key, &backends, cached)
        } else {
            // The host's list changed under this instance: ask again,
            // without caching (it may change back).
            let n = u32::try_from(backends.len()).ok()?;
            rendezvous(key, &backends, &url_hashes(n))
        }
    }
}

export!(Sticky);

fn config_or(key: &str, default: &str) -> String {
    host::config(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The `hash` of the URLs of backends `0..n`. A backend without one (which
/// the host should not allow) is hashed under a placeholder made from its
/// index.
fn url_hashes(n: u32) -> Vec<u64> {
    (0..n)
        .map(|i| hash(&host::backend_url(i).unwrap_or_else(|| format!("#{i}"))))
        .collect()
}

/// The `hash` of the request's user key: the user-key `header`'s value,
/// else cookie `cookie` of the `Cookie` header (read by `cookies` only
/// then); blank is absent.
fn user_key_hash(
    header: Option<&str>,
    cookies: impl FnOnce() -> Option<String>,
    cookie: &str,
) -> Option<u64> {
    if let Some(v) = header.map(str::trim).filter(|v| !v.is_empty()) {
        return Some(hash(v));
    }
    cookie_value(&cookies()?, cookie).map(hash)
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), without
/// the optional surrounding quotes (RFC 6265 §4.2.1). Names are
/// case-sensitive; the first non-empty value wins.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        if n.trim() != name {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty()).then_some(v)
    })
}

/// Weighted rendezvous hashing: of the healthy backends, the one with the
/// lowest `-ln(u) / weight`, where `u` in (0, 1] is the hash of the key
/// mixed with the backend URL's (`key` and `url_hashes` are `hash`es). Each backend's score depends only on the key and that
/// backend, so a backend leaving or joining moves only the keys it wins;
/// and the minimum of exponentials with rates `weight` falls on each
/// backend with probability proportional to its weight. Ties (which need
/// equal hashes) go to the lower index.
fn rendezvous(key: u64, backends: &[Backend], url_hashes: &[u64]) -> Option<u32> {
    let mut best: Option<(f64, usize)> = None;
    for (i, (backend, &url)) in backends.iter().zip(url_hashes).enumerate() {
        if !backend.healthy {
            continue;
        }
        let score = neg_ln(unit(mix(key, url))) / f64::from(backend.weight.max(1));
        if best.is_none_or(|(s, _)| score < s) {
            best = Some((score, i));
        }
    }
    u32::try_from(best?.1).ok()
}

/// The top 53 bits of `h` as a number in (0, 1].
fn unit(h: u64) -> f64 {
    // Exact: both values fit in f64's 53-bit mantissa.
    ((h >> 11) + 1) as f64 / (1u64 << 53) as f64
}

/// `-ln(u)` for `u` in (0, 1]. `core` has no logarithm, so: `u = m·2^e`
/// with `m` in [√½, √2), and `ln m = 2·atanh(s)` with `s = (m-1)/(m+1)`,
/// `|s| < 0.172`, whose series converges to f64 precision in 12 terms.
/// Only plain arithmetic, so every gateway computes the same bits.
fn neg_ln(u: f64) -> f64 {
    let bits = u.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT_2 {
        m /= 2.0;
        exp += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..12 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    -(f64::from(exp) * LN_2 + 2.0 * sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(spec: &[(bool, u32)]) -> Vec<Backend> {
        spec.iter()
            .map(|&(healthy, weight)| Backend {
                healthy,
                in_flight: 0,
                weight,
            })
            .collect()
    }

    #[test]
    fn the_header_then_the_cookie_then_none() {
        let cookies = || Some("a=1; session=u7".to_string());
        let unread = || -> Option<String> { panic!("Cookie read with a user header") };
        assert_eq!(
            user_key_hash(Some(" u1 "), unread, "session"),
            Some(hash("u1"))
        );
        assert_eq!(
            user_key_hash(Some("  "), cookies, "session"),
            Some(hash("u7"))
        );
        assert_eq!(user_key_hash(None, cookies, "session"), Some(hash("u7")));
        assert_eq!(user_key_hash(None, cookies, "other"), None);
        assert_eq!(user_key_hash(None, || None, "session"), None);
    }

    /// The URL hashes of `n` backends.
    fn urls(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash(&format!("http://10.0.0.{i}:8080")))
            .collect()
    }

    #[test]
    fn cookies() {
        let h = "a=1; session=abc; b=\"q\"";
        assert_eq!(cookie_value(h, "session"), Some("abc"));
        assert_eq!(cookie_value(h, "b"), Some("q"));
        assert_eq!(cookie_value(h, "a"), Some("1"));
        assert_eq!(cookie_value(h, "Session"), None);
        assert_eq!(cookie_value(h, "c"), None);
        assert_eq!(cookie_value("session=; session=x", "session"), Some("x"));
        assert_eq!(cookie_value("session", "session"), None);
        assert_eq!(cookie_value("", "session"), None);
        assert_eq!(cookie_value("s=a=b", "s"), Some("a=b"));
    }

    #[test]
    fn neg_ln_is_accurate() {
        for i in 1..=10_000u64 {
            let u = unit(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let want = -u.ln();
            assert!((neg_ln(u) - want).abs() <= 1e-12 * want.max(1.0), "{u}");
        }
        assert_eq!(neg_ln(1.0), 0.0);
        let tiny = unit(0);
        assert!((neg_ln(tiny) - 53.0 * LN_2).abs() < 1e-12);
    }

    #[test]
    fn none_without_healthy_backends() {
        assert_eq!(rendezvous(hash("u"), &[], &[]), None);
        assert_eq!(
            rendezvous(hash("u"), &backends(&[(false, 1), (false, 1)]), &urls(2)),
            None
        );
    }

    #[test]
    fn only_the_users_of_a_failed_backend_move() {
        let all = backends(&[(true, 1); 5]);
        let urls = urls(5);
        let mut per_backend = [0usize; 5];
        for user in 0..5_000 {
            let key = format!("user-{user}");
            let chosen = rendezvous(hash(&key), &all, &urls).unwrap();
            per_backend[chosen as usize] += 1;
            // Same answer every time.
            assert_eq!(rendezvous(hash(&key), &all, &urls), Some(chosen));
            // Take backend 2 out of rotation.
            let mut degraded = all.clone();
            degraded[2].healthy = false;
            let moved = rendezvous(hash(&key), &degraded, &urls).unwrap();
            if chosen == 2 {
                assert_ne!(moved, 2);
            } else {
                assert_eq!(moved, chosen);
            }
        }
        // Roughly even: 1,000 expected each.
        for n in per_backend {
            assert!((850..1150).contains(&n), "{per_backend:?}");
        }
    }

    #[test]
    fn weights_are_honoured() {
        let all = backends(&[(true, 1), (true, 3)]);
        let urls = urls(2);
        let heavy = (0..8_000)
            .filter(|u| rendezvous(hash(&format!("u{u}")), &all, &urls) == Some(1))
            .count();
        // 6,000 expected.
        assert!((5_800..6_200).contains(&heavy), "{heavy}");
    }
}
