//! `gateway clients …`: the same store the admin API uses, driven from a shell.

use crate::admin::ClientView;
use crate::cli::{ClientsAction, ClientsArgs};
use crate::config::{self, Overrides};
use crate::limiter::{KeyKind, KeySource, Limits, canonical_client_id};
use crate::store::{Store, StoreError};
use std::time::Duration;

/// Where the limits live (`--database`, else the config file, else the
/// default) and the key source that client ids without a prefix belong to
/// (the config file's, else `ip`).
fn settings(args: &ClientsArgs) -> Result<(String, KeySource), String> {
    let path = args.config.path();
    let (database, source) = match std::fs::read_to_string(&path) {
        Ok(text) => config::parse(&text, &Overrides::default())
            .map(|c| (c.rate_limit.database, c.rate_limit.key))
            .map_err(|problems| {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                format!("{} is not valid:\n  {}", path.display(), list.join("\n  "))
            })?,
        Err(_) if !args.config.explicit() => {
            let Some(database) = args.database.clone() else {
                return Err(format!(
                    "no database named: {} does not exist; pass --database URL (or GATEWAY_DATABASE), or -c FILE whose rate_limit.database says where the limits are",
                    path.display()
                ));
            };
            let source = KeySource {
                kind: KeyKind::Ip,
                ipv6_prefix: 64,
            };
            return Ok((database, source));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    Ok((args.database.clone().unwrap_or(database), source))
}

/// A SQLite file must exist already: the gateway creates it, not a typo here.
fn existing(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Ok(());
    };
    let file = rest.split('?').next().unwrap_or(rest);
    if file.is_empty() || file.starts_with(':') || std::path::Path::new(file).exists() {
        return Ok(());
    }
    Err(format!(
        "database {url}: no such file ({file}); the gateway creates it when it first runs with it, or check --database"
    ))
}

/// Runs one action; the error text is for the user, the exit code is 1.
pub async fn run(args: ClientsArgs) -> Result<String, String> {
    let (url, source) = settings(&args)?;
    existing(&url)?;
    let id = |written: &str| {
        if written.trim().is_empty() {
            return Err("a client id must not be empty".to_owned());
        }
        canonical_client_id(written, &source)
    };
    let store = match Store::connect(&url, Duration::from_secs(5)).await {
        Ok(store) => store,
        Err(error) => {
            let reason = unreachable(&url).unwrap_or_else(|| error.to_string());
            return Err(format!("{}: {reason}", crate::redact::redact(&url)));
        }
    };
    match args.action {
        ClientsAction::List => {
            let list: Vec<ClientView> = store
                .list()
                .await
                .map_err(describe)?
                .into_iter()
                .map(ClientView::from)
                .collect();
            Ok(pretty(&list))
        }
        ClientsAction::Get { key } => {
            let key = id(&key)?;
            match store.get(&key).await.map_err(describe)? {
                Some(record) => Ok(pretty(&ClientView::from(record))),
                None => Err(format!("client {key:?} not found")),
            }
        }
        ClientsAction::Set {
            key,
            capacity,
            refill_per_second,
        } => {
            let key = id(&key)?;
            let limits = Limits::new(capacity, refill_per_second)?;
            let record = store.upsert(&key, &limits).await.map_err(describe)?;
            Ok(pretty(&ClientView::from(record)))
        }
        ClientsAction::Delete { key } => {
            let key = id(&key)?;
            store.delete(&key).await.map_err(describe)?;
            Ok(pretty(&serde_json::json!({ "deleted": key })))
        }
    }
}

/// Why a PostgreSQL server cannot be reached at all, said plainly (the
/// pool only reports that it timed out waiting for a connection).
fn unreachable(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let address = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .ok()?
        .next()?;
    match std::net::TcpStream::connect_timeout(&resolved, Duration::from_secs(2)) {
        Ok(_) => None,
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => Some(format!(
            "connection refused at {address}: is PostgreSQL running there?"
        )),
        Err(error) => Some(format!("cannot reach {address}: {error}")),
    }
}

fn describe(error: StoreError) -> String {
    error.to_string()
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}
