//! How the shared limiter reaches Redis: one server (`redis://…`) or a
//! Redis Cluster (`redis+cluster://host:port[,host:port…]`, seed nodes).
//!
//! Both are multiplexed connections that reconnect by themselves; each
//! thread that decides (each proxy worker) opens its own, so concurrent
//! decisions of a worker share one connection per node and are written to
//! it together, on the worker's own runtime.
//! Every decision touches exactly one key (its bucket), so in a cluster it
//! runs on the node that owns the key's slot; `MOVED` and `ASK` redirections
//! and slot-map refreshes are the `redis` crate's.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, RedisResult, ScriptInvocation};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// How to reach Redis; clones share one set of per-thread connections.
#[derive(Clone)]
pub struct Link {
    opener: Arc<Opener>,
}

enum Opener {
    Single {
        id: usize,
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        id: usize,
        client: ClusterClient,
        config: ClusterConfig,
    },
}

/// One thread's open connection for a [`Link`].
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

thread_local! {
    /// This thread's connections, by link id. Each proxy worker has its own
    /// so that the connection's driver task runs on the worker's runtime:
    /// decisions are written and their answers read without a hand-off to
    /// another thread, and the decisions of one worker's concurrent requests
    /// still go out together.
    static CONNECTIONS: RefCell<Vec<(usize, Connection)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

impl Link {
    /// Checks the target; connections are made on first use, one per
    /// thread, without waiting for Redis (it may be down at start).
    pub fn open(target: &Target, timeout: Duration) -> Result<Link, String> {
        let connect = timeout.max(Duration::from_millis(250));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let opener = match target {
            Target::Single(url) => Opener::Single {
                id,
                client: redis::Client::open(url.as_str())
                    .map_err(|e| format!("invalid Redis URL: {e}"))?,
                config: ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(timeout))
                    .set_max_delay(Duration::from_secs(2)),
            },
            Target::Cluster(seeds) => Opener::Cluster {
                id,
                client: ClusterClient::builder(seeds.iter().map(String::as_str))
                    // A decision waits `timeout` at most anyway; retrying
                    // longer only queues work behind a dead node.
                    .retries(2)
                    .build()
                    .map_err(|e| format!("invalid Redis Cluster seeds: {e}"))?,
                config: ClusterConfig::new()
                    .set_connection_timeout(connect)
                    .set_response_timeout(timeout),
            },
        };
        Ok(Link {
            opener: Arc::new(opener),
        })
    }

    /// A Redis Cluster, where one script call reaches one slot's keys only.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.opener, Opener::Cluster { .. })
    }

    /// Runs `script` (EVALSHA, loaded again on NOSCRIPT) where its key lives,
    /// on this thread's connection. Must be called inside a tokio runtime.
    pub async fn invoke<T: FromRedisValue>(&self, script: &ScriptInvocation<'_>) -> RedisResult<T> {
        match self.connection()? {
            Connection::Single(mut connection) => script.invoke_async(&mut connection).await,
            Connection::Cluster(mut connection) => script.invoke_async(&mut connection).await,
        }
    }

    /// This thread's connection, opened (lazily, on this thread's runtime)
    /// the first time the thread asks.
    fn connection(&self) -> RedisResult<Connection> {
        let id = self.opener.id();
        CONNECTIONS.with_borrow_mut(|connections| {
            if let Some((_, connection)) = connections.iter().find(|(own, _)| *own == id) {
                return Ok(connection.clone());
            }
            let connection = self.opener.connect()?;
            connections.push((id, connection.clone()));
            Ok(connection)
        })
    }
}

impl Opener {
    fn id(&self) -> usize {
        match self {
            Opener::Single { id, .. } | Opener::Cluster { id, .. } => *id,
        }
    }

    fn connect(&self) -> RedisResult<Connection> {
        Ok(match self {
            Opener::Single { client, config, .. } => Connection::Single(
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?,
            ),
            Opener::Cluster { client, config, .. } => {
                Connection::Cluster(client.get_pending_async_connection_with_config(config.clone()))
            }
        })
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
