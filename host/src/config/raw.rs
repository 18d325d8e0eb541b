//! The configuration file exactly as written: every value keeps its line and
//! column so that validation can point at it.

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A value and where it was written (`None` location: it came from a flag or
/// an environment override).
pub type S<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<S<String>>,
    pub backends: Option<Vec<S<RawBackend>>>,
    pub balancer: Option<RawBalancer>,
    pub health_check: Option<RawHealthCheck>,
    pub proxy: Option<RawProxy>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    pub rate_limit: Option<RawRateLimit>,
    pub plugins: Option<RawPlugins>,
    /// Named backend pools (ordered by name).
    pub pools: Option<std::collections::BTreeMap<String, RawPool>>,
    pub routes: Option<Vec<S<RawRoute>>>,
    pub reload: Option<RawReload>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub listen: Option<S<String>>,
    pub certificates: Option<Vec<S<RawCertificate>>>,
    pub redirect_http: Option<bool>,
    pub client_auth: Option<S<RawClientAuth>>,
    pub acme: Option<S<RawAcme>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca: String,
    pub required: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Option<S<String>>,
    pub contact: Option<S<String>>,
    pub domains: Option<Vec<S<String>>>,
    pub cache: Option<S<String>>,
    pub directory_ca: Option<S<String>>,
    pub renew_before: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub backends: Option<Vec<S<RawBackend>>>,
    pub balancer: Option<RawBalancer>,
    pub health_check: Option<RawHealthCheck>,
    pub connect_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub retries: Option<S<i64>>,
    pub max_connections: Option<S<i64>>,
    pub protocol: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<S<String>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub pool: Option<S<String>>,
    pub strip_prefix: Option<bool>,
    pub request_timeout: Option<S<String>>,
    pub max_body_bytes: Option<S<i64>>,
    pub rate_limit: Option<RawRouteLimit>,
    pub cost: Option<S<i64>>,
    pub key_plugin: Option<S<String>>,
    pub select_plugin: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub path: Option<S<String>>,
    pub methods: Option<Vec<S<String>>>,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// A route's `rate_limit`: `off` (or `false`), or a policy of its own.
#[derive(Debug)]
pub enum RawRouteLimit {
    Off,
    Policy(Box<RawPolicy>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: Option<S<String>>,
    pub key: Option<S<String>>,
    pub key_plugin: Option<S<String>>,
    pub unknown_keys: Option<S<String>>,
    pub ipv6_prefix: Option<S<i64>>,
    pub capacity: Option<S<i64>>,
    pub refill_per_second: Option<S<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    pub timeout: Option<S<String>>,
    pub start_timeout: Option<S<String>>,
    pub memory_limit: Option<S<String>>,
    pub max_instances: Option<S<i64>>,
    pub max_tables: Option<S<i64>>,
    pub max_memories: Option<S<i64>>,
    pub fail_closed: Option<bool>,
    pub config: Option<std::collections::BTreeMap<String, String>>,
    pub cache_dir: Option<S<String>>,
    pub reload: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub enabled: Option<bool>,
    pub key: Option<S<String>>,
    pub key_plugin: Option<S<String>>,
    pub unknown_keys: Option<S<String>>,
    pub ipv6_prefix: Option<S<i64>>,
    pub default: Option<RawLimits>,
    pub refill_interval: Option<S<String>>,
    pub max_clients: Option<S<i64>>,
    pub database: Option<S<String>>,
    pub database_required: Option<bool>,
    pub sync_interval: Option<S<String>>,
    pub shared: Option<S<String>>,
    pub shared_prefix: Option<S<String>>,
    pub shared_timeout: Option<S<String>>,
    pub on_shared_failure: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub capacity: Option<S<i64>>,
    pub refill_per_second: Option<S<f64>>,
}

/// A backend is either a bare URL or `{url, weight}`.
#[derive(Debug)]
pub struct RawBackend {
    pub url: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBalancer {
    pub algorithm: Option<S<String>>,
    pub plugin: Option<S<String>>,
    pub fallback: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub enabled: Option<bool>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub unhealthy_threshold: Option<S<i64>>,
    pub healthy_threshold: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub connect_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub retries: Option<S<i64>>,
    pub trusted_proxies: Option<Vec<S<String>>>,
    pub max_body_bytes: Option<S<i64>>,
    pub max_header_bytes: Option<S<i64>>,
    pub header_read_timeout: Option<S<String>>,
    pub client_body_timeout: Option<S<String>>,
    pub drain_timeout: Option<S<String>>,
    pub workers: Option<S<i64>>,
    pub io: Option<S<String>>,
    pub max_backend_connections: Option<S<i64>>,
    pub backend_ca: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<S<String>>,
    pub format: Option<S<String>>,
    pub access: Option<bool>,
    pub access_file: Option<S<String>>,
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BackendVisitor;

        impl<'de> Visitor<'de> for BackendVisitor {
            type Value = RawBackend;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a URL string or a map {url, weight}")
            }

            fn visit_str<E: de::Error>(self, url: &str) -> Result<RawBackend, E> {
                Ok(RawBackend {
                    url: url.to_owned(),
                    weight: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBackend, A::Error> {
                let mut url = None;
                let mut weight = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "url" => url = Some(map.next_value::<String>()?),
                        "weight" => weight = Some(map.next_value::<i64>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["url", "weight"]));
                        }
                    }
                }
                let url = url.ok_or_else(|| de::Error::missing_field("url"))?;
                Ok(RawBackend { url, weight })
            }
        }

        deserializer.deserialize_any(BackendVisitor)
    }
}

impl<'de> Deserialize<'de> for RawRouteLimit {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;

        impl<'de> Visitor<'de> for LimitVisitor {
            type Value = RawRouteLimit;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("off, or a map {key, capacity, refill_per_second}")
            }

            fn visit_str<E: de::Error>(self, word: &str) -> Result<RawRouteLimit, E> {
                match word.trim() {
                    "off" => Ok(RawRouteLimit::Off),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_bool<E: de::Error>(self, on: bool) -> Result<RawRouteLimit, E> {
                if on {
                    Err(E::invalid_value(de::Unexpected::Bool(true), &self))
                } else {
                    Ok(RawRouteLimit::Off)
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRouteLimit, A::Error> {
                RawPolicy::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|policy| RawRouteLimit::Policy(Box::new(policy)))
            }
        }

        deserializer.deserialize_any(LimitVisitor)
    }
}
