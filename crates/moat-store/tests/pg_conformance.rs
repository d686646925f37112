//! The conformance suite on PostgreSQL, and the guarantees that are PostgreSQL's own: roles
//! (moat refuses a superuser or BYPASSRLS role), row-level security that holds when moat's own
//! filters are bypassed on purpose, append-only audit tables, one sequencer per trail across
//! replicas. Runs when `MOAT_TEST_PG` names a superuser URL (CI sets it); each test makes its
//! own database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
use moat_core::ids::{Email, Slug, TenantId, UserId};
use moat_core::role::Role;
use moat_store::pg_testing::TestDb;
use moat_store::postgres::{PgStore, tenant_role, tenant_schema};
use moat_store::{NewAuditEntry, NewTenant, NewUser, Stores, TenantDatabase, conformance};
use sqlx::{Connection, Row};

const NOW: i64 = 1_800_000_000;

macro_rules! pg_or_skip {
    () => {
        match TestDb::base_from_env() {
            Some(base) => TestDb::create(&base).await,
            None => {
                eprintln!("MOAT_TEST_PG not set: skipped");
                return;
            }
        }
    };
}

async fn store(db: &TestDb) -> PgStore {
    PgStore::open(&db.app_url, Some(&db.admin_url)).await.expect("open the PostgreSQL store")
}

fn entry(t: TenantId, i: i64) -> NewAuditEntry {
    let e = AuditEvent::new(Some(t), Category::DataAccess, "query.execute", Actor::system("test"), Outcome::Success)
        .resource(format!("table:canary_{i}"));
    NewAuditEntry { event: e, ts_ms: NOW * 1000 + i, event_id: uuid::Uuid::now_v7().to_string() }
}

async fn two_tenants(s: &PgStore) -> (TenantId, TenantId) {
    let mut ids = Vec::new();
    for slug in ["acme", "globex"] {
        let id = TenantId::new();
        let admin = NewUser {
            id: UserId::new(),
            tenant_id: Some(id),
            email: Email::parse(&format!("admin@{slug}.example")).unwrap(),
            role: Role::Admin,
            password_hash: "$argon2id$fake".into(),
            now: NOW,
        };
        use moat_store::MetaStore;
        s.create_tenant(&NewTenant { id, slug: Slug::parse(slug).unwrap(), name: slug.into(), now: NOW, database: None }, Some(&admin))
            .await
            .unwrap();
        ids.push(id);
    }
    (ids[0], ids[1])
}

#[tokio::test]
async fn conformance_on_postgres() {
    let db = pg_or_skip!();
    let s = Stores::from_backend(store(&db).await);
    conformance::run_all(&s).await;
    // A second replica on the same database migrates nothing and serves the same rows.
    let again = Stores::from_backend(store(&db).await);
    assert!(!again.meta.list_tenants().await.unwrap().is_empty());
    db.drop_db().await;
}

/// The same suite with every tenant it makes living in a database of its own: the router
/// sends each call to the tenant's database, finds keys and refresh tokens by hash across
/// databases, lists trails of both; and the platform's database holds nothing of those tenants
/// but their routing rows.
#[tokio::test]
async fn conformance_with_tenants_in_a_dedicated_database() {
    let platform = pg_or_skip!();
    let dedicated = TestDb::create(&platform.base).await;
    let s = moat_store::open_with(&platform.app_url, Some(&platform.admin_url)).await.unwrap();
    let db = TenantDatabase::parse(&dedicated.app_url, &dedicated.admin_url).unwrap();
    conformance::run_all_dedicated(&s, db.clone()).await;

    let tenants = s.meta.list_tenants().await.unwrap();
    assert!(tenants.len() > 5 && tenants.iter().all(|t| t.database.as_ref() == Some(&db)), "{tenants:?}");
    let count = |url: String, sql: &'static str| async move {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
        n
    };
    for (sql, what) in [
        ("SELECT count(*) FROM moat.users WHERE tenant_id IS NOT NULL", "tenant users"),
        ("SELECT count(*) FROM moat.api_keys WHERE tenant_id IS NOT NULL", "tenant API keys"),
        ("SELECT count(*) FROM moat.sessions WHERE tenant_id IS NOT NULL", "tenant sessions"),
        ("SELECT count(*) FROM moat.catalog_tables", "catalog tables"),
        ("SELECT count(*) FROM moat.audit_log WHERE trail <> 'platform'", "tenant audit records"),
        ("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'", "tenant schemas"),
    ] {
        assert_eq!(count(platform.superuser_url(), sql).await, 0, "the platform's database holds {what}");
        let there = count(dedicated.superuser_url(), sql).await;
        assert!(there > 0 || what == "tenant API keys" || what == "tenant sessions", "the dedicated database holds no {what}");
    }
    // The routing rows carry no password, and the runtime role may not move a tenant.
    let mut app = sqlx::PgConnection::connect(&platform.app_url).await.unwrap();
    let moved =
        sqlx::raw_sql("SET app.tenant_id = 'platform'; UPDATE moat.tenants SET database_url = 'postgres://evil@attacker.example/x'")
            .execute(&mut app)
            .await;
    assert!(moved.unwrap_err().to_string().contains("permission denied"), "only the owner routes tenants");
    // A replica that starts later finds the routes and the dedicated trails.
    let again = moat_store::open_with(&platform.app_url, Some(&platform.admin_url)).await.unwrap();
    let heads = again.audit.trail_heads().await.unwrap();
    assert!(heads.iter().any(|(t, _)| tenants.iter().any(|x| x.id.to_string() == *t)), "{heads:?}");
    let t = &tenants[0];
    assert_eq!(again.meta.validate_isolation(t.id).await.unwrap().failed().count(), 0);
    dedicated.drop_db().await;
    platform.drop_db().await;
}

#[tokio::test]
async fn a_dedicated_database_must_be_reachable_and_passwordless() {
    let platform = pg_or_skip!();
    let s = moat_store::open_with(&platform.app_url, Some(&platform.admin_url)).await.unwrap();
    let new =
        |slug: &str, database| NewTenant { id: TenantId::new(), slug: Slug::parse(slug).unwrap(), name: "x".into(), now: NOW, database };
    let err = TenantDatabase::parse("postgres://app:secret@127.0.0.1/x", "postgres://owner@127.0.0.1/x").unwrap_err();
    assert_eq!(err.code, "database_url_has_password");
    assert!(!err.message.contains("secret"), "{}", err.message);
    assert_eq!(TenantDatabase::parse("postgres://app@h/x?password=s", "postgres://o@h/x").unwrap_err().code, "database_url_has_password");
    assert_eq!(TenantDatabase::parse("mysql://app@h/x", "postgres://o@h/x").unwrap_err().code, "invalid_database_url");
    assert_eq!(TenantDatabase::parse("postgres://app@h", "postgres://o@h/x").unwrap_err().code, "invalid_database_url");
    assert_eq!(TenantDatabase::parse("postgres://app@h/x", "postgres://app@h/x").unwrap_err().code, "store_owner_role");
    // Nothing listens there: refused, and the slug stays free.
    let nowhere = TenantDatabase::parse("postgres://app@127.0.0.1:1/x", "postgres://owner@127.0.0.1:1/x").unwrap();
    let err = s.meta.create_tenant(&new("bigco", Some(nowhere)), None).await.unwrap_err();
    assert_eq!(err.code, "database_unreachable", "{err:?}");
    assert!(s.meta.tenant_by_slug("bigco").await.unwrap().is_none());
    s.meta.create_tenant(&new("bigco", None), None).await.unwrap();
    // A slug is taken across databases.
    let dedicated = TestDb::create(&platform.base).await;
    let dup =
        s.meta.create_tenant(&new("bigco", Some(TenantDatabase::parse(&dedicated.app_url, &dedicated.admin_url).unwrap())), None).await;
    assert_eq!(dup.unwrap_err().code, "tenant_exists");
    dedicated.drop_db().await;
    platform.drop_db().await;
}

#[tokio::test]
async fn a_superuser_or_bypassrls_role_is_refused() {
    let db = pg_or_skip!();
    let err = PgStore::open(&db.superuser_url(), Some(&db.admin_url)).await.err().expect("a superuser is refused");
    assert_eq!(err.code, "unsafe_store_role");
    assert!(err.message.contains("BYPASSRLS"), "{}", err.message);
    db.drop_db().await;
}

#[tokio::test]
async fn the_owner_must_be_another_role_and_the_runtime_role_must_not_inherit() {
    let db = pg_or_skip!();
    // No owner, or the runtime role as its own owner: it would own what it queries.
    for admin in [None, Some(db.app_url.as_str())] {
        let err = PgStore::open(&db.app_url, admin).await.err().expect("refused");
        assert_eq!(err.code, "store_owner_role", "{admin:?}: {}", err.message);
    }
    // On PostgreSQL 15 a runtime role that inherits would hold every tenant role's schema.
    let mut su = sqlx::PgConnection::connect(&db.superuser_url()).await.unwrap();
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&mut su).await.unwrap();
    let _ = sqlx::raw_sql("CREATE ROLE moat_test_inheriting LOGIN INHERIT").execute(&mut su).await;
    let url = moat_store::pg_testing::with_user_db(&db.base, "moat_test_inheriting", &db.name);
    let opened = PgStore::open(&url, Some(&db.admin_url)).await;
    if version < 160_000 {
        let err = opened.err().expect("an inheriting runtime role is refused on PostgreSQL 15");
        assert_eq!(err.code, "unsafe_store_role");
        assert!(err.message.contains("NOINHERIT"), "{}", err.message);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn row_level_security_holds_when_moats_filters_are_bypassed() {
    let db = pg_or_skip!();
    let s = store(&db).await;
    let (a, b) = two_tenants(&s).await;
    use moat_store::AuditStore;
    s.append_batch(&[entry(a, 1), entry(b, 2)], &AuditKeys::new([7; 32])).await.unwrap();

    // Raw SQL as the runtime role, without any WHERE tenant_id: what each scope sees.
    let mut conn = sqlx::PgConnection::connect(&db.app_url).await.unwrap();
    let count = async |conn: &mut sqlx::PgConnection, scope: Option<&str>, table: &str| -> i64 {
        let mut tx = conn.begin().await.unwrap();
        if let Some(scope) = scope {
            sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(scope).execute(&mut *tx).await.unwrap();
        }
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM moat.{table}"))).fetch_one(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        n
    };
    for table in ["tenants", "users", "audit_log", "audit_trails", "audit_nodes"] {
        assert_eq!(count(&mut conn, None, table).await, 0, "{table}: no setting, no rows");
        for garbage in ["", "acme", "' OR true --", "00000000-0000-0000-0000-00000000000g", &a.to_string().to_uppercase()] {
            assert_eq!(count(&mut conn, Some(garbage), table).await, 0, "{table}: setting {garbage:?} sees nothing");
        }
        assert_eq!(count(&mut conn, Some(&TenantId::new().to_string()), table).await, 0, "{table}: an unknown tenant sees nothing");
    }
    // Each tenant sees exactly its own.
    for t in [a, b] {
        let t = t.to_string();
        assert_eq!(count(&mut conn, Some(&t), "users").await, 1);
        assert_eq!(count(&mut conn, Some(&t), "tenants").await, 1);
        assert_eq!(count(&mut conn, Some(&t), "audit_log").await, 1);
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(&t).execute(&mut *tx).await.unwrap();
        let resources: Vec<String> = sqlx::query_scalar("SELECT resource FROM moat.audit_log").fetch_all(&mut *tx).await.unwrap();
        let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM moat.users").fetch_all(&mut *tx).await.unwrap();
        tx.rollback().await.unwrap();
        let mine = if t == a.to_string() { ("table:canary_1", "admin@acme.example") } else { ("table:canary_2", "admin@globex.example") };
        assert_eq!((resources, emails), (vec![mine.0.to_owned()], vec![mine.1.to_owned()]));
    }
    // A tenant scope cannot write another tenant's rows, nor move its own.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(a.to_string()).execute(&mut *tx).await.unwrap();
    let err = sqlx::query("INSERT INTO moat.users (id, tenant_id, email, role, status, password_hash, created_at, updated_at) VALUES ($1, $2, 'x@y.example', 'admin', 'active', 'h', 0, 0)")
        .bind(uuid::Uuid::now_v7())
        .bind(b.0)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(a.to_string()).execute(&mut *tx).await.unwrap();
    let moved = sqlx::query("UPDATE moat.users SET tenant_id = $1").bind(b.0).execute(&mut *tx).await;
    assert!(moved.unwrap_err().to_string().contains("row-level security"));
    tx.rollback().await.unwrap();
    // The setting ends with its transaction: the pooled connection's next user starts clean.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(a.to_string()).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&mut conn, None, "users").await, 0);

    // The runtime role cannot lift the policies, rewrite the audit trail, or read another
    // tenant's schema.
    for sql in [
        "ALTER TABLE moat.users DISABLE ROW LEVEL SECURITY".to_owned(),
        "ALTER TABLE moat.users NO FORCE ROW LEVEL SECURITY".to_owned(),
        "DROP POLICY tenant_scope ON moat.users".to_owned(),
        "UPDATE moat.audit_log SET outcome = 'success'".to_owned(),
        "DELETE FROM moat.audit_nodes".to_owned(),
        "TRUNCATE moat.audit_log".to_owned(),
        "UPDATE moat.audit_trails SET size = 0".to_owned(),
        "SET ROLE moat_test_owner".to_owned(),
        format!("CREATE TABLE {}.stolen (x int)", tenant_schema(b)),
    ] {
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', 'platform', true)").execute(&mut *tx).await.unwrap();
        let r = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *tx).await;
        assert!(r.is_err(), "{sql} must fail for the runtime role");
        tx.rollback().await.unwrap();
    }
    // Audit rows survive even the owner: the triggers hold whatever the role.
    let mut owner = sqlx::PgConnection::connect(&db.admin_url).await.unwrap();
    let mut tx = owner.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.tenant_id', 'platform', true)").execute(&mut *tx).await.unwrap();
    let r = sqlx::query("DELETE FROM moat.audit_log").execute(&mut *tx).await;
    assert!(r.unwrap_err().to_string().contains("only by retention"));
    tx.rollback().await.unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn provisioning_makes_a_schema_per_tenant_and_a_failure_leaves_nothing() {
    let db = pg_or_skip!();
    let s = store(&db).await;
    let (a, _) = two_tenants(&s).await;
    let mut conn = sqlx::PgConnection::connect(&db.app_url).await.unwrap();
    let schemas: Vec<String> = sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(schemas.len(), 2);
    assert!(schemas.contains(&tenant_schema(a)));
    // A duplicate slug fails as a whole: no second schema, no user.
    use moat_store::MetaStore;
    let id = TenantId::new();
    let err = s
        .create_tenant(&NewTenant { id, slug: Slug::parse("acme").unwrap(), name: "dup".into(), now: NOW, database: None }, None)
        .await
        .unwrap_err();
    assert_eq!(err.code, "tenant_exists");
    let row = sqlx::query("SELECT count(*) AS n FROM pg_namespace WHERE nspname = $1")
        .bind(tenant_schema(id))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 0);
    let roles: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname = $1").bind(tenant_role(id)).fetch_one(&mut conn).await.unwrap();
    assert_eq!(roles, 0, "the tenant's role went with the failed transaction");
    db.drop_db().await;
}

/// Runs `sql` as the superuser on the test database (the misconfigurations validation must catch).
async fn as_superuser(db: &TestDb, sql: &str) {
    let mut su = sqlx::PgConnection::connect(&db.superuser_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut su).await.unwrap();
}

fn failed(r: &moat_store::IsolationReport) -> Vec<String> {
    r.failed().map(|c| c.name.clone()).collect()
}

#[tokio::test]
async fn validation_proves_isolation_and_names_each_break() {
    use moat_store::{AuditStore, MetaStore};
    let db = pg_or_skip!();
    let s = store(&db).await;
    let (a, b) = two_tenants(&s).await;
    s.append_batch(&[entry(a, 1), entry(b, 2), entry(b, 3)], &AuditKeys::new([7; 32])).await.unwrap();
    for t in [a, b] {
        let r = s.validate_isolation(t).await.unwrap();
        assert!(r.passed(), "{r:#?}");
        let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
        for want in [
            "own_tenant_visible",
            "rows:users",
            "rows:audit_log",
            "rows:no_scope",
            "runtime_role",
            "tenant_role:own_schema",
            "attempt:other_schema",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
    }
    let users = s.validate_isolation(a).await.unwrap().checks.into_iter().find(|c| c.name == "rows:users").unwrap();
    assert!(users.detail.contains("0 of 1 rows"), "the foreign row exists and is not visible: {}", users.detail);

    // Each misconfiguration is caught by name.
    let (sa, sb) = (tenant_schema(a), tenant_schema(b));
    let ra = tenant_role(a);
    as_superuser(&db, &format!("GRANT USAGE ON SCHEMA {sb} TO {ra}")).await;
    let r = s.validate_isolation(a).await.unwrap();
    assert_eq!(failed(&r), ["tenant_role:other_schemas", "attempt:other_schema"], "{r:#?}");
    as_superuser(&db, &format!("REVOKE USAGE ON SCHEMA {sb} FROM {ra}")).await;

    as_superuser(&db, &format!("GRANT USAGE ON SCHEMA {sa} TO moat_test_app")).await;
    assert_eq!(failed(&s.validate_isolation(b).await.unwrap()), ["runtime_role:tenant_schemas"]);
    // A restart takes the stray privilege back.
    let s = store(&db).await;
    assert!(s.validate_isolation(b).await.unwrap().passed());

    as_superuser(&db, "ALTER POLICY tenant_scope ON moat.users USING (true)").await;
    let r = s.validate_isolation(a).await.unwrap();
    assert_eq!(failed(&r), ["rows:users", "rows:no_scope"], "{r:#?}");
    as_superuser(&db, "ALTER POLICY tenant_scope ON moat.users USING (moat.platform_scope() OR tenant_id = moat.current_tenant())").await;

    as_superuser(&db, "ALTER TABLE moat.api_keys NO FORCE ROW LEVEL SECURITY").await;
    assert_eq!(failed(&s.validate_isolation(a).await.unwrap()), ["rows:api_keys"]);
    as_superuser(&db, "ALTER TABLE moat.api_keys FORCE ROW LEVEL SECURITY").await;

    // A table privilege alone: the catalog says so, the real read still fails on the schema.
    as_superuser(&db, &format!("GRANT SELECT ON moat.users TO {ra}")).await;
    assert_eq!(failed(&s.validate_isolation(a).await.unwrap()), ["tenant_role:platform_tables"]);
    as_superuser(&db, &format!("GRANT USAGE ON SCHEMA moat TO {ra}")).await;
    assert_eq!(failed(&s.validate_isolation(a).await.unwrap()), ["tenant_role:platform_tables", "attempt:platform_table"]);
    db.drop_db().await;
}

#[tokio::test]
async fn replicas_append_to_one_trail_in_one_order() {
    let db = pg_or_skip!();
    let (r1, r2) = (store(&db).await, store(&db).await);
    let (a, _) = two_tenants(&r1).await;
    let keys = AuditKeys::new([3; 32]);
    let stores = [Stores::from_backend(r1), Stores::from_backend(r2)];
    let mut tasks = Vec::new();
    for (n, s) in stores.iter().enumerate() {
        for k in 0..4 {
            let (s, keys) = (s.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    s.audit.append_batch(&[entry(a, (n * 1000 + k * 100 + i) as i64)], &keys).await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 80 appends from two replicas: seq 1..=80 without gaps, and the tree verifies.
    let trail = a.to_string();
    let entries = stores[0].audit.entries(&trail, 0, 1000).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=80).collect::<Vec<_>>());
    let mut v = moat_core::audit_verify::TrailVerifier::new(&trail, Some(keys.trail_key(&trail)));
    for e in &entries {
        let (leaf, mac) = (hex::decode(&e.leaf_hash).unwrap(), hex::decode(&e.hmac).unwrap());
        v.entry(&moat_core::audit_verify::EntryView { seq: e.seq, entry: e.entry.as_bytes(), leaf_hash: Some(&leaf), hmac: Some(&mac) })
            .unwrap();
    }
    assert_eq!(v.finish().unwrap().root, stores[1].audit.trail_head(&trail).await.unwrap().root);
    db.drop_db().await;
}
