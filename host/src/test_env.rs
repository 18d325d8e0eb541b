//! Real services for tests: PostgreSQL from `GATEWAY_TEST_POSTGRES`, Redis
//! from `GATEWAY_TEST_REDIS`. Without
//! it a test says loudly that it skipped; with `GATEWAY_TEST_REQUIRE_SERVICES`
//! set (as CI does) a missing service fails the test instead.

/// The PostgreSQL base URL, or `None` (after saying so) when not configured.
pub fn postgres() -> Option<String> {
    service("GATEWAY_TEST_POSTGRES")
}

/// The Redis URL, or `None` (after saying so) when not configured.
pub fn redis() -> Option<String> {
    service("GATEWAY_TEST_REDIS")
}

fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("GATEWAY_TEST_REQUIRE_SERVICES").is_none(),
                "{var} is not set but GATEWAY_TEST_REQUIRE_SERVICES is: refusing to skip"
            );
            eprintln!("SKIPPED: {var} is not set; this test needs the real service");
            None
        }
    }
}

/// A URL whose connections use a new, empty schema (so parallel tests never meet).
pub async fn fresh_pg_schema(base: &str) -> String {
    use sqlx::Connection;
    let schema = format!("gw_test_{}", fastrand::u64(..));
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connect to GATEWAY_TEST_POSTGRES");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}
