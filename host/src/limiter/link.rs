//! How the shared limiter reaches Redis: one server (`redis://…`) or a
//! Redis Cluster (`redis+cluster://host:port[,host:port…]`, seed nodes).
//!
//! Both are multiplexed connections that reconnect by themselves; concurrent
//! decisions share one connection per node and are written to it together.
//! Every decision touches exactly one key (its bucket), so in a cluster it
//! runs on the node that owns the key's slot; `MOVED` and `ASK` redirections
//! and slot-map refreshes are the `redis` crate's.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult, ScriptInvocation};
use std::time::Duration;

const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Where the buckets live, as written in `rate_limit.shared`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://`, `rediss://` or `redis+unix://`: one server.
    Single(String),
    /// Seed nodes of a cluster, each as a `redis://` URL.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads `rate_limit.shared`; the error says what is accepted.
    pub fn parse(url: &str) -> Result<Target, String> {
        let url = url.trim();
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return cluster_seeds(rest).map(Target::Cluster);
        }
        if ["redis://", "rediss://", "redis+unix://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Ok(Target::Single(url.to_owned()));
        }
        Err(format!(
            "unsupported shared store {url:?}; allowed: redis://HOST:PORT[/DB], \
             redis+cluster://HOST:PORT[,HOST:PORT…]"
        ))
    }
}

/// `[user:pass@]host:port,host:port…` → one `redis://` URL per seed, each
/// with the credentials.
fn cluster_seeds(rest: &str) -> Result<Vec<String>, String> {
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let mut seeds = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        let port = host
            .rsplit_once(':')
            .and_then(|(name, port)| (!name.is_empty()).then_some(port))
            .and_then(|port| port.parse::<u16>().ok());
        if port.is_none() || host.contains('/') {
            return Err(format!(
                "cluster seed {host:?} is not HOST:PORT (redis+cluster://HOST:PORT[,HOST:PORT…])"
            ));
        }
        seeds.push(match credentials {
            Some(credentials) => format!("redis://{credentials}@{host}"),
            None => format!("redis://{host}"),
        });
    }
    Ok(seeds)
}

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// Sets up the connection without waiting for Redis (it may be down at start).
    pub fn open(target: &Target, timeout: Duration) -> Result<Link, String> {
        let connect = timeout.max(Duration::from_millis(250));
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())
                    .map_err(|e| format!("invalid Redis URL: {e}"))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_lazy_with_config(client, config)
                    .map(Link::Single)
                    .map_err(|e| format!("cannot set up Redis connection: {e}"))
            }
            Target::Cluster(seeds) => {
                let client = ClusterClient::builder(seeds.iter().map(String::as_str))
                    // A decision waits `timeout` at most anyway; retrying
                    // longer only queues work behind a dead node.
                    .retries(2)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster seeds: {e}"))?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(timeout);
                Ok(Link::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ))
            }
        }
    }

    /// Runs `script` (EVALSHA, loaded again on NOSCRIPT) where its key lives.
    pub async fn invoke<T: FromRedisValue>(&self, script: &ScriptInvocation<'_>) -> RedisResult<T> {
        match self {
            Link::Single(connection) => script.invoke_async(&mut connection.clone()).await,
            Link::Cluster(connection) => script.invoke_async(&mut connection.clone()).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_or_cluster_seeds() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/2"),
            Ok(Target::Single("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            Target::parse("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001"),
            Ok(Target::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            Target::parse("redis+cluster://user:secret@[::1]:7000,[::1]:7001/"),
            Ok(Target::Cluster(vec![
                "redis://user:secret@[::1]:7000".into(),
                "redis://user:secret@[::1]:7001".into()
            ]))
        );
        for bad in [
            "memcached://x:1",
            "redis+cluster://",
            "redis+cluster://127.0.0.1",
            "redis+cluster://127.0.0.1:7000,",
            "redis+cluster://:7000",
            "redis+cluster://127.0.0.1:70000",
            "redis+cluster://127.0.0.1:7000/0",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
