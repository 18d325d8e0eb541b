//! Per-client limits in a database: SQLite (embedded, the default) or
//! PostgreSQL, through one sqlx `Any` pool and one portable schema.

pub mod sync;

use crate::limiter::Limits;
use crate::redact::redact;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Channel on which PostgreSQL announces changes to the clients table.
pub const CHANGES_CHANNEL: &str = "gateway_clients";

/// PostgreSQL only: NOTIFY gateway_clients with the key on every change.
/// Gateways starting together against a new database would race on
/// `CREATE OR REPLACE FUNCTION` (a unique violation in `pg_proc`): the
/// advisory lock, held to the end of this batch's implicit transaction,
/// makes them take turns.
const NOTIFY_TRIGGER: &str = "
SELECT pg_advisory_xact_lock(7449354444534473009);
CREATE OR REPLACE FUNCTION gateway_clients_changed() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('gateway_clients', OLD.key);
  ELSE
    PERFORM pg_notify('gateway_clients', NEW.key);
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS gateway_clients_changed ON clients;
CREATE TRIGGER gateway_clients_changed AFTER INSERT OR UPDATE OR DELETE ON clients
  FOR EACH ROW EXECUTE FUNCTION gateway_clients_changed();
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("client {0:?} already exists")]
    Exists(String),
    #[error("client {0:?} not found")]
    NotFound(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}; allowed: sqlite://PATH or postgres://…")]
    Url(String),
}

/// One row of the `clients` table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub capacity: i64,
    pub refill_per_second: f64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl ClientRecord {
    pub fn limits(&self) -> Result<Limits, String> {
        Limits::new(self.capacity, self.refill_per_second)
    }
}

/// Cheap summary of the table: when it changes, something in the table changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fingerprint {
    rows: i64,
    last_update: i64,
    capacity_sum: i64,
    refill_sum: f64,
}

pub struct Store {
    pool: AnyPool,
    /// SQLite wants WAL mode so the CLI can write while the gateway reads.
    sqlite: bool,
    /// The full URL, for the PostgreSQL notification listener.
    url: String,
    /// The URL with any password removed, for logs.
    pub display: String,
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `SELECT` of every column, followed by the rest of the statement.
macro_rules! select_clients {
    ($rest:literal) => {
        concat!(
            "SELECT key, capacity, refill_per_second, created_at, updated_at FROM clients",
            $rest
        )
    };
}

fn record(row: &sqlx::any::AnyRow) -> Result<ClientRecord, sqlx::Error> {
    Ok(ClientRecord {
        client_id: row.try_get(0)?,
        capacity: row.try_get(1)?,
        refill_per_second: row.try_get(2)?,
        created_at: row.try_get(3)?,
        updated_at: row.try_get(4)?,
    })
}

impl Store {
    /// Connects (creating an SQLite file if needed) and runs the embedded migrations.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        let store = Self::lazy(url, timeout)?;
        store.prepare().await?;
        Ok(store)
    }

    /// A store that connects on first use; call [`Store::prepare`] before relying on it.
    pub fn lazy(url: &str, timeout: Duration) -> Result<Store, StoreError> {
        install_default_drivers();
        let url = if url.starts_with("sqlite:") {
            if url.contains("mode=") {
                url.to_owned()
            } else if url.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.to_owned()
        } else {
            return Err(StoreError::Url(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_lazy(&url)?;
        Ok(Store {
            sqlite: url.starts_with("sqlite:"),
            pool,
            display: redact(&url),
            url,
        })
    }

    /// Reaches the database and brings the schema up to date.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        if self.sqlite {
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&self.pool)
                .await?;
        }
        MIGRATOR.run(&self.pool).await?;
        if !self.sqlite {
            // Push changes to every gateway (LISTEN gateway_clients). Should it
            // fail, polling still finds every change.
            if let Err(error) = sqlx::raw_sql(NOTIFY_TRIGGER).execute(&self.pool).await {
                tracing::warn!(%error, "could not install the change-notification trigger; relying on polling");
            }
        }
        Ok(())
    }

    /// The PostgreSQL URL to LISTEN on; `None` for SQLite (polling only).
    pub fn notification_url(&self) -> Option<&str> {
        (!self.sqlite).then_some(self.url.as_str())
    }

    pub async fn list(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let rows = sqlx::query(select_clients!(" ORDER BY key"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
    }

    pub async fn get(&self, key: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query(select_clients!(" WHERE key = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    /// Inserts a new client; `Exists` if the key is taken.
    pub async fn create(&self, key: &str, limits: &Limits) -> Result<ClientRecord, StoreError> {
        let now = now_millis();
        let done = sqlx::query(
            "INSERT INTO clients (key, capacity, refill_per_second, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(i64::from(limits.capacity))
        .bind(limits.refill_per_second())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Exists(key.to_owned()));
        }
        self.must_get(key).await
    }

    /// Changes an existing client; `NotFound` if there is none.
    pub async fn update(&self, key: &str, limits: &Limits) -> Result<ClientRecord, StoreError> {
        let done = sqlx::query(
            "UPDATE clients SET capacity = $1, refill_per_second = $2, \
             updated_at = CASE WHEN updated_at >= $3 THEN updated_at + 1 ELSE $3 END WHERE key = $4",
        )
        .bind(i64::from(limits.capacity))
        .bind(limits.refill_per_second())
        .bind(now_millis())
        .bind(key)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        self.must_get(key).await
    }

    /// Creates or changes a client.
    pub async fn upsert(&self, key: &str, limits: &Limits) -> Result<ClientRecord, StoreError> {
        match self.update(key, limits).await {
            Err(StoreError::NotFound(_)) => match self.create(key, limits).await {
                Err(StoreError::Exists(_)) => self.update(key, limits).await,
                other => other,
            },
            other => other,
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM clients WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(key.to_owned()));
        }
        Ok(())
    }

    /// Renames every row for which `rename` gives a different key (the
    /// start-up migration of client ids to their canonical form); a row whose
    /// new key is taken keeps its old one. Returns what was renamed.
    pub async fn rename_clients(
        &self,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut renamed = Vec::new();
        for record in self.list().await? {
            let Some(to) = rename(&record.client_id).filter(|to| *to != record.client_id) else {
                continue;
            };
            let done = sqlx::query("UPDATE clients SET key = $1 WHERE key = $2")
                .bind(&to)
                .bind(&record.client_id)
                .execute(&self.pool)
                .await;
            match done {
                Ok(_) => renamed.push((record.client_id, to)),
                Err(error) => {
                    tracing::warn!(client = %record.client_id, to = %to, %error, "cannot rename per-client limit; keeping its old id")
                }
            }
        }
        Ok(renamed)
    }

    async fn must_get(&self, key: &str) -> Result<ClientRecord, StoreError> {
        self.get(key)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.to_owned()))
    }

    /// A summary that changes whenever a row is added, removed or changed.
    pub async fn fingerprint(&self) -> Result<Fingerprint, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*), CAST(COALESCE(MAX(updated_at), 0) AS BIGINT), \
             CAST(COALESCE(SUM(capacity), 0) AS BIGINT), \
             CAST(COALESCE(SUM(refill_per_second), 0) AS DOUBLE PRECISION) FROM clients",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Fingerprint {
            rows: row.try_get(0)?,
            last_update: row.try_get(1)?,
            capacity_sum: row.try_get(2)?,
            refill_sum: row.try_get(3)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(store: &Store) {
        let limits = Limits::new(10, 0.5).unwrap();
        let before = store.fingerprint().await.unwrap();
        let created = store.create("k1", &limits).await.unwrap();
        assert_eq!(created.capacity, 10);
        assert_eq!(created.refill_per_second, 0.5);
        assert!(matches!(
            store.create("k1", &limits).await,
            Err(StoreError::Exists(_))
        ));
        let after_create = store.fingerprint().await.unwrap();
        assert_ne!(before, after_create);
        let updated = store
            .update("k1", &Limits::new(20, 2.0).unwrap())
            .await
            .unwrap();
        assert_eq!(updated.capacity, 20);
        assert!(
            updated.updated_at > created.updated_at || updated.updated_at >= created.created_at
        );
        assert_ne!(after_create, store.fingerprint().await.unwrap());
        assert!(matches!(
            store.update("nope", &limits).await,
            Err(StoreError::NotFound(_))
        ));
        store.upsert("k2", &limits).await.unwrap();
        store
            .upsert("k2", &Limits::new(3, 1.0).unwrap())
            .await
            .unwrap();
        let all = store.list().await.unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].capacity, 3);
        store.delete("k1").await.unwrap();
        assert!(matches!(
            store.delete("k1").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.get("k1").await.unwrap(), None);
        store.create("ip:k3", &limits).await.unwrap();
        let renamed = store
            .rename_clients(|id| (!id.contains(':')).then(|| format!("ip:{id}")))
            .await
            .unwrap();
        assert_eq!(renamed, vec![("k2".to_owned(), "ip:k2".to_owned())]);
        store.create("k3", &limits).await.unwrap();
        let renamed = store
            .rename_clients(|id| (!id.contains(':')).then(|| format!("ip:{id}")))
            .await
            .unwrap();
        assert!(renamed.is_empty(), "a taken id is not overwritten");
        assert!(store.get("k3").await.unwrap().is_some());
        assert_eq!(store.get("ip:k3").await.unwrap().unwrap().capacity, 10);
    }

    #[tokio::test]
    async fn sqlite_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("limits.db").display());
        let store = Store::connect(&url, Duration::from_secs(5)).await.unwrap();
        exercise(&store).await;
        // Reopening runs the migrations again harmlessly and keeps the data.
        drop(store);
        let store = Store::connect(&url, Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn postgres_store_round_trip() {
        let Some(base) = crate::test_env::postgres() else {
            return;
        };
        let schema = crate::test_env::fresh_pg_schema(&base).await;
        let store = Store::connect(&schema, Duration::from_secs(5))
            .await
            .unwrap();
        exercise(&store).await;
    }

    /// Gateways started together (compose) prepare one new database at once.
    #[tokio::test]
    async fn postgres_gateways_preparing_a_new_database_together_all_install_the_trigger() {
        let Some(base) = crate::test_env::postgres() else {
            return;
        };
        let schema = crate::test_env::fresh_pg_schema(&base).await;
        let store = || Store::lazy(&schema, Duration::from_secs(5)).unwrap();
        let (a, b, c, d) = (store(), store(), store(), store());
        let prepare = |s: &Store| {
            let pool = s.pool.clone();
            async move {
                MIGRATOR.run(&pool).await?;
                sqlx::raw_sql(NOTIFY_TRIGGER).execute(&pool).await?;
                Ok::<(), StoreError>(())
            }
        };
        let outcomes = tokio::join!(prepare(&a), prepare(&b), prepare(&c), prepare(&d));
        for outcome in [outcomes.0, outcomes.1, outcomes.2, outcomes.3] {
            outcome.unwrap();
        }
    }
}
