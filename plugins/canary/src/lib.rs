//! Gateway plugin (world `select-plugin-with-headers`): a canary split.
//!
//! One backend (`canary.backend`) is the canary. A request goes to it when
//! it carries `X-Canary: 1`, or when its client key falls in the first
//! `canary.percent` of 100 hash buckets; the client key is the header
//! `canary.key-header` (default `x-user`), else the client address. So a
//! given user is consistently in or out of the canary, on every gateway.
//!
//! * A canary request gets the canary if it is healthy, else `none` (the
//!   built-in balancer).
//! * Any other request never gets the canary: it gets the healthy
//!   non-canary backend with the fewest requests in flight, ties broken by
//!   a hash of the client key and the backend (so that idle backends share
//!   the load), or `none` if there is no such backend.
//!
//! Without a usable `canary.backend` no request is a canary request, and
//! the plugin balances by fewest requests in flight over all backends.
//!
//! It names the two headers it reads once per instance (the key header and
//! `x-canary`); the gateway passes their values with every call.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use plugin_rt::{OnceBox, hash, mix};

wit_bindgen::generate!({
    world: "select-plugin-with-headers",
    path: "../../wit",
});

use alloc::vec;
use exports::gateway::plugin::backend_select_with_headers::Guest;
use gateway::plugin::host;
use gateway::plugin::types::{Backend, Request};

/// Configuration key: the canary, as a backend URL exactly as configured
/// (a trailing `/` aside) or as a backend index (0-based).
const BACKEND_KEY: &str = "canary.backend";
/// Configuration key: the percentage (integer, 0 to 100) of client keys
/// sent to the canary.
const PERCENT_KEY: &str = "canary.percent";
/// Configuration key: the header that carries the client key.
const KEY_HEADER_KEY: &str = "canary.key-header";
const DEFAULT_KEY_HEADER: &str = "x-user";
/// The header that asks for the canary, with the value `1`.
const FORCE_HEADER: &str = "x-canary";

struct Config {
    backend: Option<String>,
    percent: u64,
    key_header: String,
}

/// The backends as the host configured them.
struct Table {
    urls: Vec<String>,
    /// `hash` of each URL, mixed with the client key's to break ties.
    url_hashes: Vec<u64>,
    canary: Option<usize>,
}

/// Read from the host once per instance.
static CONFIG: OnceBox<Config> = OnceBox::new();
/// Built on the first request.
static TABLE: OnceBox<Table> = OnceBox::new();

struct Canary;

impl Guest for Canary {
    /// The key header, then `x-canary`.
    fn headers() -> Vec<String> {
        let config = CONFIG.get_or_init(read_config);
        vec![config.key_header.clone(), FORCE_HEADER.to_string()]
    }

    fn select_backend(
        req: &Request,
        values: Vec<Option<String>>,
        backends: Vec<Backend>,
    ) -> Option<u32> {
        let config = CONFIG.get_or_init(read_config);
        let cached = TABLE.get_or_init(|| table(config, host::backend_count()));
        let fresh;
        let table = if cached.urls.len() == backends.len() {
            cached
        } else {
            // The host's list changed under this instance: ask again,
            // without caching (it may change back).
            fresh = table(config, u32::try_from(backends.len()).ok()?);
            &fresh
        };
        let mut values = values.into_iter();
        let (key_header, force) = (values.next().flatten(), values.next().flatten());
        let key = match key_header.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => hash(v),
            _ => hash(&req.client_addr()),
        };
        let forced = force.is_some_and(|v| v.trim() == "1");
        choose(key, forced, config.percent, table, &backends)
    }
}

export!(Canary);

fn read_config() -> Config {
    let backend = host::config(BACKEND_KEY)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let percent = host::config(PERCENT_KEY).map_or(0, |v| parse_percent(&v));
    let key_header = host::config(KEY_HEADER_KEY)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_KEY_HEADER.to_string());
    Config {
        backend,
        percent,
        key_header,
    }
}

/// `"25"` or `"25%"`, clamped to 100; anything unreadable is 0.
fn parse_percent(v: &str) -> u64 {
    let v = v.trim();
    let v = v.strip_suffix('%').unwrap_or(v).trim_end();
    v.parse::<u64>().map_or(0, |p| p.min(100))
}

fn table(config: &Config, n: u32) -> Table {
    let urls: Vec<String> = (0..n)
        .map(|i| host::backend_url(i).unwrap_or_else(|| format!("#{i}")))
        .collect();
    let canary = config
        .backend
        .as_deref()
        .and_then(|spec| resolve_canary(spec, &urls));
    let url_hashes = urls.iter().map(|u| hash(u)).collect();
    Table {
        urls,
        url_hashes,
        canary,
    }
}

/// The index named by `spec`: a decimal index, or a URL, matched exactly
/// and then ignoring trailing slashes.
fn resolve_canary(spec: &str, urls: &[String]) -> Option<usize> {
    if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        let i = spec.parse::<usize>().ok()?;
        return (i < urls.len()).then_some(i);
    }
    urls.iter().position(|u| u == spec).or_else(|| {
        let spec = spec.trim_end_matches('/');
        urls.iter().position(|u| u.trim_end_matches('/') == spec)
    })
}

/// Whether the client whose key hashes to `key` is in the canary's share:
/// its bucket in `0..100` is below `percent`.
fn in_canary_share(key: u64, percent: u64) -> bool {
    percent > 0 && key % 100 < percent
}

/// `key` is the client key's `hash`.
fn choose(
    key: u64,
    forced: bool,
    percent: u64,
    table: &Table,
    backends: &[Backend],
) -> Option<u32> {
    if let Some(canary) = table.canary
        && (forced || in_canary_share(key, percent))
    {
        let healthy = backends.get(canary).is_some_and(|b| b.healthy);
        return if healthy {
            u32::try_from(canary).ok()
        } else {
            None
        };
    }
    least_in_flight(key, backends, &table.url_hashes, table.canary)
}

/// The healthy backend other than `exclude` with the fewest requests in
/// flight; among equals, the one whose URL's hash mixes highest with the
/// key's, then the lowest index.
fn least_in_flight(
    key: u64,
    backends: &[Backend],
    url_hashes: &[u64],
    exclude: Option<usize>,
) -> Option<u32> {
    let mut best: Option<(u32, u64, usize)> = None;
    for (i, (backend, &url)) in backends.iter().zip(url_hashes).enumerate() {
        if !backend.healthy || Some(i) == exclude {
            continue;
        }
        let tie = mix(key, url);
        let better = match best {
            None => true,
            Some((in_flight, best_tie, _)) => {
                backend.in_flight < in_flight || (backend.in_flight == in_flight && tie > best_tie)
            }
        };
        if better {
            best = Some((backend.in_flight, tie, i));
        }
    }
    u32::try_from(best?.2).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(spec: &[(bool, u32)]) -> Vec<Backend> {
        spec.iter()
            .map(|&(healthy, in_flight)| Backend {
                healthy,
                in_flight,
                weight: 1,
            })
            .collect()
    }

    fn table(n: usize, canary: Option<usize>) -> Table {
        let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:900{i}")).collect();
        Table {
            url_hashes: urls.iter().map(|u| hash(u)).collect(),
            urls,
            canary,
        }
    }

    /// [`choose`] for the client key `key`.
    fn choose_for(
        key: &str,
        forced: bool,
        percent: u64,
        table: &Table,
        backends: &[Backend],
    ) -> Option<u32> {
        choose(hash(key), forced, percent, table, backends)
    }

    #[test]
    fn percent_parsing() {
        assert_eq!(parse_percent("25"), 25);
        assert_eq!(parse_percent(" 7 % "), 7);
        assert_eq!(parse_percent("250"), 100);
        assert_eq!(parse_percent("-5"), 0);
        assert_eq!(parse_percent("12.5"), 0);
        assert_eq!(parse_percent(""), 0);
    }

    #[test]
    fn canary_by_url_or_index() {
        let urls = table(3, None).urls;
        assert_eq!(resolve_canary("2", &urls), Some(2));
        assert_eq!(resolve_canary("3", &urls), None);
        assert_eq!(resolve_canary("http://127.0.0.1:9001", &urls), Some(1));
        assert_eq!(resolve_canary("http://127.0.0.1:9001/", &urls), Some(1));
        assert_eq!(resolve_canary("http://127.0.0.1:9009", &urls), None);
        assert_eq!(resolve_canary("", &urls), None);
    }

    #[test]
    fn forced_requests_get_the_canary_if_healthy() {
        let t = table(3, Some(1));
        let all = backends(&[(true, 5), (true, 9), (true, 5)]);
        assert_eq!(choose_for("k", true, 0, &t, &all), Some(1));
        let down = backends(&[(true, 5), (false, 0), (true, 5)]);
        assert_eq!(choose_for("k", true, 0, &t, &down), None);
        // Without a canary, forcing means nothing.
        let t = table(3, None);
        assert_eq!(
            choose_for("k", true, 0, &t, &all),
            choose_for("k", false, 0, &t, &all)
        );
        assert_ne!(choose_for("k", true, 0, &t, &all), Some(1));
    }

    #[test]
    fn other_requests_never_get_the_canary() {
        let t = table(3, Some(0));
        // The canary is the least loaded; still not chosen.
        let all = backends(&[(true, 0), (true, 4), (true, 2)]);
        assert_eq!(choose_for("k", false, 0, &t, &all), Some(2));
        let only_canary = backends(&[(true, 0), (false, 0), (false, 0)]);
        assert_eq!(choose_for("k", false, 0, &t, &only_canary), None);
        for user in 0..1000 {
            let key = format!("u{user}");
            let idle = backends(&[(true, 0), (true, 0), (true, 0)]);
            assert_ne!(choose_for(&key, false, 0, &t, &idle), Some(0));
        }
    }

    #[test]
    fn ties_are_spread_by_key() {
        let t = table(4, Some(3));
        let idle = backends(&[(true, 0); 4]);
        let mut counts = [0usize; 4];
        for user in 0..3000 {
            let chosen = choose_for(&format!("u{user}"), false, 0, &t, &idle).unwrap();
            counts[chosen as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for n in &counts[..3] {
            assert!((850..1150).contains(n), "{counts:?}");
        }
    }

    #[test]
    fn the_share_follows_the_percentage() {
        let t = table(2, Some(1));
        let all = backends(&[(true, 0), (true, 0)]);
        for percent in [0, 10, 50, 100] {
            let canaries = (0..10_000)
                .filter(|u| {
                    choose_for(
                        &format!("10.0.{}.{}", u / 256, u % 256),
                        false,
                        percent,
                        &t,
                        &all,
                    ) == Some(1)
                })
                .count() as u64;
            let expected = percent * 100;
            assert!(canaries.abs_diff(expected) <= 200, "{percent}%: {canaries}");
        }
        // Stable per key.
        assert_eq!(
            in_canary_share(hash("alice"), 30),
            in_canary_share(hash("alice"), 30)
        );
    }
}
