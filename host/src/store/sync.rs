//! Keeps the limiter's overrides in step with the database: a cheap
//! fingerprint query on an interval, a full reload only when it changes.
//! While the database is unreachable the cached limits stay in force.

use super::{CHANGES_CHANNEL, Store, StoreError};
use crate::limiter::{KeySource, Limiter, Limits, canonical_client_id};
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Loads every override once, by canonical client id (a row written
/// before ids named their source is read as [`canonical_client_id`] says);
/// errors name the rows that were skipped.
pub async fn load_overrides(
    store: &Store,
    source: &KeySource,
) -> Result<HashMap<String, Limits>, StoreError> {
    let mut map = HashMap::new();
    for record in store.list().await? {
        let limits = record
            .limits()
            .and_then(|limits| Ok((canonical_client_id(&record.client_id, source)?, limits)));
        match limits {
            Ok((id, limits)) => {
                map.insert(id, limits);
            }
            Err(reason) => {
                tracing::warn!(client = %record.client_id, %reason, "ignoring invalid row in clients table")
            }
        }
    }
    Ok(map)
}

/// Keeps a PostgreSQL `LISTEN` open and pokes `changed` on every notification;
/// reconnects with backoff when the connection drops.
fn spawn_listener(url: String, changed: Arc<Notify>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        loop {
            match PgListener::connect(&url).await {
                Ok(mut listener) => match listener.listen(CHANGES_CHANNEL).await {
                    Ok(()) => {
                        backoff = Duration::from_millis(250);
                        // A notification missed while disconnected is covered: catch up now.
                        changed.notify_one();
                        while listener.recv().await.is_ok() {
                            changed.notify_one();
                        }
                        tracing::warn!(
                            event = "notify_lost",
                            "change notifications lost; polling until they are back"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "LISTEN failed; polling only"),
                },
                Err(error) => tracing::debug!(%error, "notification connection failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}

/// Polls `store` every `interval` (and at once on a PostgreSQL notification)
/// and applies changes to `limiter`.
pub fn spawn_sync(
    store: Arc<Store>,
    limiter: Arc<Limiter>,
    source: KeySource,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    let changed = Arc::new(Notify::new());
    if let Some(url) = store.notification_url() {
        spawn_listener(url.to_owned(), Arc::clone(&changed));
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = None;
        let mut reachable = true;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = changed.notified() => {}
            }
            let outcome = async {
                let fingerprint = store.fingerprint().await?;
                if seen != Some(fingerprint) {
                    let overrides = load_overrides(&store, &source).await?;
                    let changed = limiter.apply_overrides(overrides);
                    if seen.is_some() && changed > 0 {
                        tracing::info!(
                            event = "limits_reloaded",
                            changed,
                            "per-client limits changed in the database"
                        );
                    }
                    seen = Some(fingerprint);
                }
                Ok::<_, StoreError>(())
            }
            .await;
            match (outcome, reachable) {
                (Ok(()), false) => {
                    reachable = true;
                    tracing::info!(event = "database_up", database = %store.display, "database reachable again");
                }
                (Err(error), true) => {
                    reachable = false;
                    tracing::warn!(event = "database_down", database = %store.display, %error, "database unreachable; serving with cached limits");
                }
                _ => {}
            }
        }
    })
}
