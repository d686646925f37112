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

/// The migrations up to `version`, as an older build left a store.
const OLD_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_foundation.sql")),
    (2, include_str!("../migrations/sqlite/0002_tenant_password_policy.sql")),
    (3, include_str!("../migrations/sqlite/0003_catalog.sql")),
    (4, include_str!("../migrations/sqlite/0004_tenant_settings.sql")),
    (5, include_str!("../migrations/sqlite/0005_catalog_views.sql")),
];

/// A store file migrated only up to `version` (an older build's), open for raw writes.
async fn old_store(path: &std::path::Path, version: i64) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("pool");
    sqlx::query("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("t");
    for (v, sql) in OLD_MIGRATIONS.iter().filter(|(v, _)| *v <= version) {
        sqlx::raw_sql(*sql).execute(&pool).await.expect("migrate");
        sqlx::query("INSERT INTO schema_migrations VALUES (?, 'old', 0)").bind(v).execute(&pool).await.expect("record");
    }
    pool
}

#[tokio::test]
async fn conformance_on_sqlite() {
    let (_dir, s, _) = file_store().await;
    conformance::run_all(&s).await;
}

#[tokio::test]
async fn audit_rows_cannot_be_updated_or_deleted() {
    let (_dir, s, raw) = file_store().await;
    conformance::audit_log(&s).await;
    // A row in the kept v1 table (triggers fire per row).
    sqlx::query(
        "INSERT INTO audit_events_v1 (trail, seq, ts_ms, category, action, outcome, actor, resource, source_ip, user_agent, request_id, details, prev_hash, hash)
         VALUES ('platform', 1, 1, 'admin', 'x', 'success', '{}', NULL, NULL, NULL, NULL, '{}', 'p', 'h')",
    )
    .execute(raw.pool())
    .await
    .expect("v1 row");
    sqlx::query("INSERT INTO audit_prunes VALUES ('platform', 99, 0, 1, 4, 'auth', 0, 1)").execute(raw.pool()).await.expect("prune row");
    for sql in [
        "UPDATE audit_log SET outcome = 'success'",
        "UPDATE audit_nodes SET hash = x'00'",
        "DELETE FROM audit_nodes",
        "UPDATE audit_checkpoints SET note = 'forged'",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_trails",
        "UPDATE audit_events_v1 SET outcome = 'success'",
        "DELETE FROM audit_events_v1",
        "UPDATE audit_prunes SET count = 0",
        "DELETE FROM audit_prunes",
    ] {
        let e = sqlx::query(sql).execute(raw.pool()).await.expect_err(sql).to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    // Rows leave only by retention (a prune naming them, their leaf hash kept).
    let e = sqlx::query("DELETE FROM audit_log").execute(raw.pool()).await.expect_err("delete").to_string();
    assert!(e.contains("only by retention"), "{e}");
    let shrink = sqlx::query("UPDATE audit_trails SET size = size - 1").execute(raw.pool()).await;
    assert!(shrink.expect_err("shrink").to_string().contains("only grow"));
}

#[tokio::test]
async fn reopening_applies_migrations_once() {
    let (dir, _s, _) = file_store().await;
    let again = SqliteStore::open(&dir.path().join("moat.db")).await.expect("reopen");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations").fetch_one(again.pool()).await.expect("count");
    assert_eq!(n, 11, "each migration once");
}

/// A store created before tenant settings existed keeps its password policies.
#[tokio::test]
async fn migration_moves_password_policies_into_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let pool = old_store(&path, 2).await;
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

/// A store written before the transparency log keeps its trail: the v1 records are carried
/// into the log, in order, once.
#[tokio::test]
async fn v1_audit_trail_is_carried_into_the_log() {
    use moat_core::audit::AuditKeys;
    use moat_store::AuditStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let pool = old_store(&path, 5).await;
        for seq in 1..=3 {
            sqlx::query(
                "INSERT INTO audit_events (trail, seq, ts_ms, category, action, outcome, actor, resource, source_ip, user_agent, request_id, details, prev_hash, hash)
                 VALUES ('platform', ?, ?, 'admin', 'tenant.create', 'success', '{\"via\":\"cli\",\"super_admin\":false}', 'tenant:acme', NULL, NULL, NULL, '{\"n\":1}', 'x', 'y')",
            )
            .bind(seq)
            .bind(1_000 + seq)
            .execute(&pool)
            .await
            .expect("v1 row");
        }
        pool.close().await;
    }
    let store = SqliteStore::open(&path).await.expect("open migrates");
    let keys = AuditKeys::new([1; 32]);
    assert_eq!(store.import_legacy(&keys).await.expect("import"), 3);
    assert_eq!(store.import_legacy(&keys).await.expect("again"), 0, "once");
    let rows = store.entries("platform", 0, 10).await.expect("entries");
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let rec = moat_store::AuditRecord::from_entry(rows[2].entry.as_bytes(), &[]).expect("v2 entry");
    assert_eq!((rec.ts_ms, rec.action.as_str(), rec.details["n"].as_i64()), (1_003, "tenant.create", Some(1)));
    assert_eq!(store.trail_head("platform").await.expect("head").size, 3);
}

/// The full-text index lives beside the store and is not part of the log: deleted, it is
/// rebuilt from the records at the next search, which finds everything committed before it.
#[tokio::test]
async fn the_search_index_is_rebuilt_from_the_log() {
    use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
    use moat_store::{AuditFilter, AuditStore, NewAuditEntry};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moat.db");
    let keys = AuditKeys::new([1; 32]);
    let batch: Vec<NewAuditEntry> = (0..300)
        .map(|i| NewAuditEntry {
            event: AuditEvent::new(None, Category::Admin, "x.event", Actor::system("t"), Outcome::Success)
                .details(serde_json::json!({"word": format!("w{}", i % 3)})),
            ts_ms: 1_000 + i,
            event_id: uuid::Uuid::now_v7().to_string(),
        })
        .collect();
    let search = |w: &str| AuditFilter { q: Some(w.into()), limit: 1_000, ..AuditFilter::default() };
    {
        let s = SqliteStore::open(&path).await.expect("open");
        s.append_batch(&batch, &keys).await.expect("append");
        // Committed just now, found at once (the search catches the index up first).
        assert_eq!(s.list(None, &search("w1")).await.expect("search").len(), 100);
        s.pool().close().await;
    }
    for f in ["moat.db.search", "moat.db.search-wal", "moat.db.search-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let s = SqliteStore::open(&path).await.expect("reopen");
    let found = s.list(None, &search("w2")).await.expect("search");
    assert_eq!(found.len(), 100);
    assert!(found.windows(2).all(|w| w[0].seq < w[1].seq), "in seq order");
}

/// Two handles on one store (as `moat demo` holds while it serves) index and search the same
/// index file at once: each waits for the other's pass instead of failing with "database is
/// locked".
#[tokio::test]
async fn two_handles_index_and_search_at_once() {
    use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
    use moat_store::{AuditFilter, AuditStore, NewAuditEntry};
    let (_dir, s, raw) = file_store().await;
    let keys = AuditKeys::new([9; 32]);
    let search = |w: &str| AuditFilter { q: Some(w.into()), limit: 10_000, ..AuditFilter::default() };
    for round in 0..20i64 {
        let batch: Vec<NewAuditEntry> = (0..50)
            .map(|i| NewAuditEntry {
                event: AuditEvent::new(None, Category::Admin, "x.event", Actor::system("t"), Outcome::Success)
                    .details(serde_json::json!({"word": "shared"})),
                ts_ms: 1_000 + round * 100 + i,
                event_id: uuid::Uuid::now_v7().to_string(),
            })
            .collect();
        s.audit.append_batch(&batch, &keys).await.expect("append");
        let (fa, fb) = (search("shared"), search("shared"));
        let (a, b) = tokio::join!(s.audit.list(None, &fa), raw.list(None, &fb));
        let want = ((round + 1) * 50) as usize;
        assert_eq!(a.expect("first handle").len(), want, "round {round}");
        assert_eq!(b.expect("second handle").len(), want, "round {round}");
    }
}

/// Whoever writes the database directly cannot bring a destroyed tenant key back or remove
/// the record of its destruction.
#[tokio::test]
async fn a_destroyed_tenant_key_stays_destroyed() {
    let (_dir, s, raw) = file_store().await;
    let t = s
        .meta
        .create_tenant(
            &moat_store::NewTenant {
                id: moat_core::ids::TenantId::new(),
                slug: moat_core::ids::Slug::parse("keys").unwrap(),
                name: "K".into(),
                now: 1,
                database: None,
            },
            None,
        )
        .await
        .unwrap();
    let key = moat_store::NewTenantKey { tenant_id: t.id, version: 1, kek: "local:kek-0001".into(), wrapped: vec![7; 60], now: 1 };
    assert!(s.meta.add_tenant_key(&key).await.unwrap());
    assert_eq!(s.meta.shred_tenant_keys(t.id, 2).await.unwrap(), 1);
    for sql in [
        "UPDATE tenant_keys SET wrapped = x'07', destroyed_at = NULL",
        "UPDATE tenant_keys SET kek = 'local:kek-0002'",
        "DELETE FROM tenant_keys",
    ] {
        let e = sqlx::query(sql).execute(raw.pool()).await.expect_err(sql);
        assert!(e.to_string().contains("tenant key"), "{sql}: {e}");
    }
    let keys = s.meta.tenant_keys(t.id).await.unwrap();
    assert_eq!((keys.len(), keys[0].wrapped.is_none(), keys[0].destroyed_at), (1, true, Some(2)));
}
