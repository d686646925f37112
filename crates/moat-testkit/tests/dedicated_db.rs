//! Enterprise tenants in a database of their own (`POST /v1/tenants` with `database`): moat
//! routes the tenant's metadata, audit trail and relations there, with its own pool; the
//! platform's database keeps only the tenant's route; that database going down is that
//! tenant's outage alone. Runs when `MOAT_TEST_PG` is set (each database a throwaway one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use moat_store::pg_testing::TestDb;
use moat_testkit::fault::{CutProxy, upstream_of};
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{CUSTOMERS_A, PASSWORD, Resp, Store, TestServer};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

async fn create(s: &TestServer, slug: &str, database: Value) -> Resp {
    let sa = s.super_admin().await;
    let body = json!({"slug": slug, "name": slug, "admin": {"email": format!("admin@{slug}.example"), "password": PASSWORD}, "database": database});
    s.post("/v1/tenants", &sa, body).await
}

async fn dedicated(s: &TestServer, slug: &str, db: &TestDb) -> String {
    let r = create(s, slug, json!({"url": db.app_url, "admin_url": db.admin_url})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    s.login(Some(slug), &format!("admin@{slug}.example"), PASSWORD).await
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn count(db: &tokio_postgres::Client, query: &str, tenant: &str) -> i64 {
    db.query_one(query, &[&tenant]).await.unwrap().get(0)
}

macro_rules! pg_or_skip {
    () => {
        match TestDb::base_from_env() {
            Some(base) => base,
            None => {
                eprintln!("MOAT_TEST_PG not set: skipped");
                return;
            }
        }
    };
}

#[tokio::test]
async fn a_dedicated_tenant_lives_in_its_own_database() {
    let base = pg_or_skip!();
    let s = TestServer::start_on(Store::Postgres, |_| {}, |st| st).await;
    let own = TestDb::create(&base).await;
    let acme = s.tenant_with_admin("acme").await;
    let bigco = dedicated(&s, "bigco", &own).await;
    let bigco_id = s.state.stores.meta.tenant_by_slug("bigco").await.unwrap().unwrap().id;

    // Everything a tenant does works as it does for a tenant in the platform's database.
    for t in [&acme, &bigco] {
        assert!(s.put_csv("/v1/tables/customers", t, CUSTOMERS_A).await.status.is_success());
        s.label_customers(t).await;
    }
    let (_, viewer) = s.user(&bigco, "bigco", "vera@bigco.example", "viewer").await;
    let r = s.query(&viewer, "SELECT name, ssn FROM customers ORDER BY id").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(!r.body.to_string().contains("123-45-6789"), "masked in a dedicated database too: {:?}", r.body);
    let key = s.post("/v1/api-keys", &bigco, json!({"name": "ci", "scopes": ["query:execute"]})).await;
    let key = key.body["key"].as_str().unwrap().to_owned();
    let r = s.query(&key, "SELECT count(*) AS n FROM customers").await;
    assert_eq!(r.body["rows"][0][0], 2, "an API key is found in the tenant's database: {:?}", r.body);
    let login = s.login_raw(Some("bigco"), "admin@bigco.example", PASSWORD).await;
    let cookie = format!("moat_refresh={}", login.refresh_cookie().unwrap());
    let refreshed = s.send(Method::POST, "/v1/auth/refresh", None, None, Some(&cookie)).await;
    assert_eq!(refreshed.status, StatusCode::OK, "a refresh token is found in the tenant's database: {:?}", refreshed.body);

    // A relation of the tenant's schema in its own database is a query source.
    let owner = sql(&own.admin_url).await;
    let schema = format!("tenant_{}", bigco_id.0.simple());
    owner
        .batch_execute(&format!("CREATE TABLE {schema}.orders (id int4, amount int4); INSERT INTO {schema}.orders VALUES (1, 10), (2, 32)"))
        .await
        .unwrap();
    let r = s.send(Method::PUT, "/v1/tables/orders", Some(&bigco), Some(json!({"postgres": {"relation": "orders"}})), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    s.label_in(&bigco, "orders", "amount", "PUBLIC", "none", None).await;
    assert_eq!(s.query(&bigco, "SELECT sum(amount) AS s FROM orders").await.body["rows"][0][0], 42);

    // Provisioning validated it, and so does a validation now, with the placement check.
    let sa = s.super_admin().await;
    let v = s.post("/v1/tenants/bigco/validate", &sa, json!({})).await;
    assert_eq!(v.body["passed"], true, "{:?}", v.body);
    assert!(v.body["checks"].as_array().unwrap().iter().any(|c| c["name"] == "placement:dedicated_database" && c["passed"] == true));
    let tenants = s.get("/v1/tenants", &sa).await;
    let listed = |slug: &str| tenants.body["tenants"].as_array().unwrap().iter().find(|t| t["slug"] == slug).unwrap().clone();
    assert_eq!(listed("bigco")["database"]["url"], own.app_url.as_str());
    assert!(listed("acme").get("database").is_none());

    // Its audit trail is in its database, checkpointed and verifiable like any other.
    s.checkpointed(&bigco).await;
    let v = s.get("/v1/audit/verify", &bigco).await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);

    // Looked at from outside moat: the platform's database holds the route and nothing else.
    let platform = sql(&s.postgres().unwrap().superuser_url()).await;
    let theirs = sql(&own.superuser_url()).await;
    let id = bigco_id.to_string();
    for (q, what) in [
        ("SELECT count(*) FROM moat.users WHERE tenant_id::text = $1", "users"),
        ("SELECT count(*) FROM moat.catalog_tables WHERE tenant_id::text = $1", "tables"),
        ("SELECT count(*) FROM moat.audit_log WHERE trail = $1", "audit records"),
        ("SELECT count(*) FROM moat.sessions WHERE tenant_id::text = $1", "sessions"),
        ("SELECT count(*) FROM moat.api_keys WHERE tenant_id::text = $1", "API keys"),
    ] {
        assert_eq!(count(&platform, q, &id).await, 0, "the platform's database holds the tenant's {what}");
        assert!(count(&theirs, q, &id).await > 0, "the tenant's database lacks its {what}");
    }
    assert_eq!(count(&platform, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", &schema).await, 0);
    assert_eq!(count(&platform, "SELECT count(*) FROM moat.tenants WHERE id::text = $1 AND database_url IS NOT NULL", &id).await, 1);
    // The other tenant's rows stay in the platform's database, and none reach the tenant's.
    let acme_id = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap().id.to_string();
    assert!(count(&platform, "SELECT count(*) FROM moat.audit_log WHERE trail = $1", &acme_id).await > 0);
    assert_eq!(count(&theirs, "SELECT count(*) FROM moat.tenants WHERE id::text = $1", &acme_id).await, 0);

    // Suspending reaches the tenant's database: its sessions stop at once.
    assert_eq!(s.post("/v1/tenants/bigco/suspend", &sa, json!({})).await.body["status"], "suspended");
    assert_eq!(s.get("/v1/tables", &bigco).await.code(), "tenant_suspended");
    assert_eq!(s.post("/v1/tenants/bigco/resume", &sa, json!({})).await.body["status"], "active");
    assert_eq!(s.get("/v1/tables", &bigco).await.status, StatusCode::OK);
    own.drop_db().await;
}

#[tokio::test]
async fn a_dedicated_database_going_down_is_that_tenants_outage_alone() {
    let base = pg_or_skip!();
    let own = TestDb::create(&base).await;
    let proxy = Arc::new(CutProxy::start(&upstream_of(&own.app_url, 5432)).await);
    let s = TestServer::start_on(Store::Postgres, |_| {}, |st| st).await;
    let acme = s.tenant_with_admin("acme").await;
    let r = create(&s, "bigco", json!({"url": proxy.route(&own.app_url), "admin_url": proxy.route(&own.admin_url)})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let bigco = s.login(Some("bigco"), "admin@bigco.example", PASSWORD).await;
    for t in [&acme, &bigco] {
        assert!(s.put_csv("/v1/tables/customers", t, CUSTOMERS_A).await.status.is_success());
    }

    proxy.cut();
    let r = s.query(&bigco, "SELECT count(*) AS n FROM customers").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(!r.body.to_string().contains("127.0.0.1"), "no database address in the answer: {:?}", r.body);
    for _ in 0..5 {
        let r = s.query(&acme, "SELECT count(*) AS n FROM customers").await;
        assert_eq!(r.status, StatusCode::OK, "the other tenant is served: {:?}", r.body);
    }
    let ready = s.send(Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "one tenant's database does not take the replica out: {:?}", ready.body);
    // Sign-ins of others, and their API keys (looked up across databases), still work.
    s.login(Some("acme"), "admin@acme.example", PASSWORD).await;

    proxy.restore();
    let mut back = false;
    for _ in 0..50 {
        if s.query(&bigco, "SELECT count(*) AS n FROM customers").await.status == StatusCode::OK {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "the tenant is served again once its database is back");
    for t in [&acme, &bigco] {
        let v = s.get("/v1/audit/verify", t).await;
        assert_eq!(v.body["ok"], true, "{:?}", v.body);
    }
    drop(s);
    own.drop_db().await;
}

#[tokio::test]
async fn a_dedicated_database_is_refused_with_a_clear_error() {
    // The embedded store keeps every tenant in its one file.
    let s = TestServer::start_on(Store::Embedded, |_| {}, |st| st).await;
    let r = create(&s, "bigco", json!({"url": "postgres://app@127.0.0.1/bigco", "admin_url": "postgres://owner@127.0.0.1/bigco"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "dedicated_database_unsupported"), "{:?}", r.body);
    for (database, status, code) in [
        (
            json!({"url": "postgres://app:hunter2@127.0.0.1/x", "admin_url": "postgres://owner@127.0.0.1/x"}),
            422,
            "database_url_has_password",
        ),
        (json!({"url": "file:///etc/passwd", "admin_url": "postgres://owner@127.0.0.1/x"}), 422, "invalid_database_url"),
        (json!({"url": "postgres://app@127.0.0.1/x"}), 400, "invalid_body"),
    ] {
        let r = create(&s, "bigco", database).await;
        assert_eq!((r.status.as_u16(), r.code()), (status, code), "{:?}", r.body);
        assert!(!r.body.to_string().contains("hunter2"), "{:?}", r.body);
    }
    let sa = s.super_admin().await;
    assert!(s.get("/v1/tenants", &sa).await.body["tenants"].as_array().unwrap().iter().all(|t| t["slug"] != "bigco"), "nothing created");
}
