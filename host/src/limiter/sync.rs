//! Keeps the limiter's overrides in step with the database: a cheap
//! fingerprint query on an interval, a full reload only when it changes.
//! While the database is unreachable the cached limits stay in force.

use super::{Limiter, Limits};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Loads every override once; errors name the rows that were skipped.
pub async fn load_overrides(
    store: &Store,
) -> Result<HashMap<String, Limits>, crate::store::StoreError> {
    let mut map = HashMap::new();
    for record in store.list().await? {
        match record.limits() {
            Ok(limits) => {
                map.insert(record.client_id, limits);
            }
            Err(reason) => {
                tracing::warn!(client = %record.client_id, %reason, "ignoring invalid row in clients table")
            }
        }
    }
    Ok(map)
}

/// Polls `store` every `interval` and applies changes to `limiter`.
pub fn spawn_sync(
    store: Arc<Store>,
    limiter: Arc<Limiter>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = None;
        let mut reachable = true;
        loop {
            ticker.tick().await;
            let outcome = async {
                let fingerprint = store.fingerprint().await?;
                if seen != Some(fingerprint) {
                    let overrides = load_overrides(&store).await?;
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
                Ok::<_, crate::store::StoreError>(())
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
