//! Throwaway PostgreSQL databases for tests: from a superuser URL (`MOAT_TEST_PG`), a fresh
//! database owned by an owner role, plus the runtime role moat should connect as (no
//! superuser, no BYPASSRLS) — the production shape, one database per test so tests run in
//! parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The roles every test database uses (cluster-wide, created once).
pub const OWNER_ROLE: &str = "moat_test_owner";
pub const APP_ROLE: &str = "moat_test_app";

/// Databases of runs older than this are dropped when a new one is made (a killed test run
/// cannot drop its own).
const STALE_AFTER_S: u64 = 6 * 3600;

pub struct TestDb {
    /// The superuser URL it was made from.
    pub base: String,
    pub name: String,
    /// The runtime role's URL (`store.url`).
    pub app_url: String,
    /// The owner role's URL (`store.admin_url`).
    pub admin_url: String,
}

/// The user of a `postgres://user@…` URL.
fn superuser_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('@').map_or("postgres", |(u, _)| u.split(':').next().unwrap_or(u))
}

/// `url` with its user and database replaced.
pub fn with_user_db(url: &str, user: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let query = tail.split_once('?').map(|(_, q)| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{user}@{host}/{db}{query}")
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn exec(conn: &mut PgConnection, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

impl TestDb {
    /// The test database URL from `MOAT_TEST_PG`, or `None` (the test is skipped).
    pub fn base_from_env() -> Option<String> {
        std::env::var("MOAT_TEST_PG").ok().filter(|s| !s.is_empty())
    }

    /// A fresh database (`moat_t_{unix time}_{random}`) owned by [`OWNER_ROLE`].
    pub async fn create(base: &str) -> Self {
        let mut conn = PgConnection::connect(base).await.expect("connect to MOAT_TEST_PG");
        // Production's shape: the owner may create the tenant roles; the runtime role inherits
        // none of them (PostgreSQL 15 knows that only per role). ALTER too: a role made by an
        // older run keeps its old attributes otherwise.
        for (role, attrs) in [
            (OWNER_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS CREATEROLE"),
            (APP_ROLE, "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT"),
        ] {
            exec(
                &mut conn,
                format!("DO $$ BEGIN CREATE ROLE {role} {attrs}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"),
            )
            .await;
            // Tests starting together may race on it ("tuple concurrently updated"): one wins,
            // and the store's own checks refuse a role that still lacks an attribute.
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE {role} {attrs}"))).execute(&mut conn).await;
        }
        let stale: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname LIKE 'moat\\_t\\_%'")
            .fetch_all(&mut conn)
            .await
            .expect("list databases");
        for db in stale {
            let made = db.split('_').nth(2).and_then(|t| t.parse::<u64>().ok()).unwrap_or(u64::MAX);
            if made.saturating_add(STALE_AFTER_S) < now_s() {
                drop_with_roles(&mut conn, base, &db).await;
            }
        }
        let name = format!("moat_t_{}_{}", now_s(), &uuid::Uuid::now_v7().simple().to_string()[20..]);
        exec(&mut conn, format!("CREATE DATABASE {name} OWNER {OWNER_ROLE}")).await;
        conn.close().await.ok();
        Self { base: base.to_owned(), app_url: with_user_db(base, APP_ROLE, &name), admin_url: with_user_db(base, OWNER_ROLE, &name), name }
    }

    /// The superuser URL pointed at this database.
    pub fn superuser_url(&self) -> String {
        with_user_db(&self.base, superuser_of(&self.base), &self.name)
    }

    /// Runs `statements` as someone with direct access to the database would: the superuser
    /// (row-level security does not bind it), triggers off for the session
    /// (`session_replication_role = replica`), schema `moat` first on the path. Panics on a
    /// failed statement.
    pub async fn attack(&self, statements: &[String]) {
        let mut conn = PgConnection::connect(&self.superuser_url()).await.expect("connect as the superuser");
        exec(&mut conn, "SET session_replication_role = replica; SET search_path = moat, public".to_owned()).await;
        for sql in statements {
            exec(&mut conn, sql.clone()).await;
        }
        conn.close().await.ok();
    }

    /// Drops the database and its tenants' roles (call at the end of a test; a crashed run's
    /// are dropped later).
    pub async fn drop_db(self) {
        if let Ok(mut conn) = PgConnection::connect(&self.base).await {
            drop_with_roles(&mut conn, &self.base, &self.name).await;
        }
    }
}

/// Drops database `db` and then the roles of the tenants it held (roles are cluster-wide).
async fn drop_with_roles(conn: &mut PgConnection, base: &str, db: &str) {
    let mut roles: Vec<String> = Vec::new();
    if let Ok(mut inner) = PgConnection::connect(&with_user_db(base, superuser_of(base), db)).await {
        roles = sqlx::query_scalar("SELECT 'moat_tenant_' || replace(id::text, '-', '') FROM moat.tenants")
            .fetch_all(&mut inner)
            .await
            .unwrap_or_default();
        inner.close().await.ok();
    }
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))).execute(&mut *conn).await;
    for role in roles {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}"))).execute(&mut *conn).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_take_the_user_and_database() {
        assert_eq!(super::with_user_db("postgres://postgres@127.0.0.1:5432/test", "a", "d"), "postgres://a@127.0.0.1:5432/d");
        assert_eq!(super::with_user_db("postgres://u:p@h/x?sslmode=disable", "a", "d"), "postgres://a@h/d?sslmode=disable");
        assert_eq!(super::with_user_db("postgresql://h:1", "a", "d"), "postgresql://a@h:1/d");
    }
}
