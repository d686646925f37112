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
    assert_eq!(n, 3);
}
