//! The conformance suite on the embedded SQLite backend, plus SQLite-specific guarantees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use moat_store::sqlite::SqliteStore;
use moat_store::{Stores, conformance};

async fn file_store() -> (tempfile::TempDir, Stores, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moat.db");
    let stores = Stores::from_sqlite(SqliteStore::open(&path).await.expect("open"));
    let raw = SqliteStore::open(&path).await.expect("second handle");
    (dir, stores, raw)
}

#[tokio::test]
async fn conformance_on_sqlite() {
    let (_dir, s, _) = file_store().await;
    conformance::run_all(&s).await;
}

#[tokio::test]
async fn audit_rows_cannot_be_updated_or_deleted() {
    let (_dir, s, raw) = file_store().await;
    conformance::audit_chain(&s).await;
    let upd = sqlx::query("UPDATE audit_events SET outcome = 'success'").execute(raw.pool()).await;
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = sqlx::query("DELETE FROM audit_events").execute(raw.pool()).await;
    assert!(del.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test]
async fn reopening_applies_migrations_once() {
    let (dir, _s, _) = file_store().await;
    let again = SqliteStore::open(&dir.path().join("moat.db")).await.expect("reopen");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations").fetch_one(again.pool()).await.expect("count");
    assert_eq!(n, 5);
}

/// A store created before tenant settings existed keeps its password policies.
#[tokio::test]
async fn migration_moves_password_policies_into_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("pool");
        sqlx::query("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .expect("t");
        for (v, sql) in [
            (1, include_str!("../migrations/sqlite/0001_foundation.sql")),
            (2, include_str!("../migrations/sqlite/0002_tenant_password_policy.sql")),
        ] {
            sqlx::raw_sql(sql).execute(&pool).await.expect("migrate");
            sqlx::query("INSERT INTO schema_migrations VALUES (?, 'old', 0)").bind(v).execute(&pool).await.expect("record");
        }
        sqlx::query("INSERT INTO tenants (id, slug, name, status, created_at, updated_at, password_policy) VALUES ('0192f0c2-0000-7000-8000-000000000001', 'old', 'Old', 'active', 1, 1, '{\"min_chars\":20}')")
            .execute(&pool)
            .await
            .expect("tenant");
        pool.close().await;
    }
    let s = SqliteStore::open(&path).await.expect("upgrade");
    let t = moat_core::ids::TenantId::parse("0192f0c2-0000-7000-8000-000000000001").expect("id");
    use moat_store::MetaStore;
    assert_eq!(s.tenant_setting(t, "password_policy").await.expect("read").as_deref(), Some("{\"min_chars\":20}"));
}
