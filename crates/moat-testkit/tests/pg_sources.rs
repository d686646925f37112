//! Tables of a tenant's own PostgreSQL schema as query sources (`PUT /v1/tables/{t}` with
//! `{"postgres": {"relation": …}}`): governed like Parquet tables (masks at the scan, tenant-only
//! catalog, audit), read as the tenant's database role, so that neither moat's SQL nor a
//! relation name can reach another tenant's schema. Runs when `MOAT_TEST_PG` is set (each server
//! on a throwaway database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{Store, TestServer, customers_csv};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

async fn owner(s: &TestServer) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&s.postgres().unwrap().admin_url, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn schema_of(s: &TestServer, slug: &str) -> String {
    format!("tenant_{}", s.state.stores.meta.tenant_by_slug(slug).await.unwrap().unwrap().id.0.simple())
}

/// Loads an `orders` relation into the tenant's schema as the owner (as an operator's ETL would).
async fn load_orders(db: &tokio_postgres::Client, schema: &str, canary: &str) {
    db.batch_execute(&format!(
        "CREATE TABLE {schema}.orders (id int4, customer text, ssn text, amount numeric(10,2), placed date, at timestamptz, score float8, vip bool);
         INSERT INTO {schema}.orders VALUES
           (1, '{canary} One', '123-45-6789', 12.50, '2026-01-02', '2026-01-02 03:04:05+00', 0.5, true),
           (2, 'Bob Stone', '987-65-4321', -0.07, NULL, NULL, NULL, false),
           (3, 'Cy Young', '555-12-3456', 1000.00, 'infinity', 'infinity', 2.25, NULL);"
    ))
    .await
    .unwrap();
}

async fn link(s: &TestServer, token: &str, table: &str, relation: &str) -> moat_testkit::Resp {
    s.send(Method::PUT, &format!("/v1/tables/{table}"), Some(token), Some(json!({"postgres": {"relation": relation}})), None).await
}

fn rows(r: &moat_testkit::Resp) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body["rows"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_tenants_own_relation_is_governed_like_its_parquet_tables() {
    if std::env::var("MOAT_TEST_PG").is_err() {
        eprintln!("MOAT_TEST_PG not set: skipped");
        return;
    }
    let s = TestServer::start_on(Store::Postgres, |_| {}, |st| st).await;
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    let (acme_schema, globex_schema) = (schema_of(&s, "acme").await, schema_of(&s, "globex").await);
    let db = owner(&s).await;
    load_orders(&db, &acme_schema, "ACME-CANARY").await;
    load_orders(&db, &globex_schema, "GLOBEX-CANARY").await;

    // Registration reads the columns as the tenant's role sees them, with their types.
    let r = link(&s, &acme, "orders", "orders").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let types: Vec<(String, String)> = r.body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c["type"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(types[0], ("id".into(), "Int32".into()), "{types:?}");
    assert_eq!(types[3], ("amount".into(), "Decimal128(10, 2)".into()), "{types:?}");
    for (col, class, pii, entity) in [
        ("id", "PUBLIC", "none", None),
        ("customer", "CONFIDENTIAL", "direct", Some("person_name")),
        ("ssn", "RESTRICTED", "direct", Some("ssn")),
        ("amount", "INTERNAL", "none", None),
        ("placed", "INTERNAL", "none", None),
        ("at", "INTERNAL", "none", None),
        ("score", "INTERNAL", "none", None),
        ("vip", "INTERNAL", "none", None),
    ] {
        s.label_in(&acme, "orders", col, class, pii, entity).await;
    }

    // The admin reads every type as PostgreSQL holds it (infinite dates read as NULL).
    let all = rows(
        &s.query(&acme, "SELECT id, customer, ssn, amount, CAST(placed AS VARCHAR) AS placed, vip, score FROM orders ORDER BY id").await,
    );
    assert_eq!(all.len(), 3);
    assert_eq!(all[0][1], "ACME-CANARY One");
    assert_eq!(all[0][3].to_string().trim_matches('"'), "12.50", "{all:?}");
    assert_eq!(all[1][3].to_string().trim_matches('"'), "-0.07", "{all:?}");
    assert_eq!(all[0][4], "2026-01-02");
    assert_eq!(all[2][4], Value::Null, "infinity reads as NULL");
    let sum = rows(&s.query(&acme, "SELECT sum(amount) AS total, count(*) AS n, count(at) AS at FROM orders").await);
    assert_eq!(sum[0][0].to_string().trim_matches('"'), "1012.43", "{sum:?}");
    assert_eq!((sum[0][1].clone(), sum[0][2].clone()), (json!(3), json!(1)));

    // A view counts only when the tenant's role decides what it reads.
    db.batch_execute(&format!(
        "CREATE VIEW {acme_schema}.peek AS SELECT * FROM {globex_schema}.orders;
         CREATE VIEW {acme_schema}.big_orders WITH (security_invoker = true) AS SELECT id, amount FROM {acme_schema}.orders WHERE amount > 100;
         GRANT SELECT ON {acme_schema}.peek, {acme_schema}.big_orders TO moat_tenant_{}",
        &acme_schema["tenant_".len()..]
    ))
    .await
    .unwrap();
    let r = link(&s, &acme, "peek", "peek").await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "view_not_security_invoker"), "{:?}", r.body);
    assert_eq!(link(&s, &acme, "big_orders", "big_orders").await.status, StatusCode::CREATED);
    assert_eq!(rows(&s.query(&acme, "SELECT count(*) FROM big_orders").await)[0][0], json!(1));

    // A viewer sees masks, and a predicate on the raw value finds nothing.
    let (_, viewer) = s.user(&acme, "acme", "vera@acme.example", "viewer").await;
    let masked = rows(&s.query(&viewer, "SELECT * FROM orders ORDER BY id").await);
    assert!(!json!(masked).to_string().contains("123-45-6789"), "{masked:?}");
    for sql in [
        "SELECT count(*) FROM orders WHERE ssn = '123-45-6789'",
        "SELECT count(*) FROM orders WHERE ssn LIKE '123%'",
        "SELECT count(*) FROM orders WHERE customer = 'ACME-CANARY One'",
    ] {
        assert_eq!(rows(&s.query(&viewer, sql).await)[0][0], json!(0), "{sql}");
    }
    // Filters on raw columns still answer exactly (pushed to PostgreSQL or not).
    for (sql, n) in [
        ("SELECT count(*) FROM orders WHERE id >= 2", 2),
        ("SELECT count(*) FROM orders WHERE vip", 1),
        ("SELECT count(*) FROM orders WHERE vip IS NULL OR id IN (1, 2)", 3),
        ("SELECT count(*) FROM orders WHERE score < 1", 1),
        ("SELECT count(*) FROM orders WHERE id = 2 AND amount < 0", 1),
    ] {
        assert_eq!(rows(&s.query(&viewer, sql).await)[0][0], json!(n), "{sql}");
    }
    // One governed path: a relation joins a Parquet table of the same tenant.
    assert!(s.put_csv("/v1/tables/customers", &acme, customers_csv(5)).await.status.is_success());
    let joined = rows(&s.query(&acme, "SELECT count(*) FROM orders o JOIN customers c ON o.id = c.id").await);
    assert_eq!(joined[0][0], json!(3));

    // Another tenant: its own relation of the same name, never acme's, whatever it names.
    assert_eq!(link(&s, &globex, "orders", "orders").await.status, StatusCode::CREATED);
    let theirs = rows(&s.query(&globex, "SELECT customer FROM orders").await);
    assert!(!json!(theirs).to_string().contains("ACME") && json!(theirs).to_string().contains("GLOBEX"), "{theirs:?}");
    for relation in
        [format!("{acme_schema}.orders"), format!("{acme_schema}\".\"orders"), "pg_authid".into(), "orders\"; DROP TABLE orders; --".into()]
    {
        let r = link(&s, &globex, "stolen", &relation).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "relation_not_found"), "{relation}: {:?}", r.body);
        assert!(!r.body.to_string().contains("ACME"), "{:?}", r.body);
    }
    for sql in [format!("SELECT * FROM {acme_schema}.orders"), format!("SELECT * FROM \"{acme_schema}\".orders")] {
        let r = s.query(&globex, &sql).await;
        assert_ne!(r.status, StatusCode::OK, "{sql}: {:?}", r.body);
        assert!(!r.body.to_string().contains("ACME"), "{:?}", r.body);
    }

    // The database decides what the tenant's role reads: take its grant away and reads fail.
    db.batch_execute(&format!("REVOKE SELECT ON {acme_schema}.orders FROM moat_tenant_{}", &acme_schema["tenant_".len()..])).await.unwrap();
    let r = s.query(&acme, "SELECT count(*) FROM orders").await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "source_denied"), "{:?}", r.body);

    // Registrations and reads are on the record; deleting the table leaves the relation alone.
    let audit = s.audit_of(Some("acme")).await;
    let linked = audit.iter().find(|r| r.action == "table.write" && r.outcome == "success").unwrap();
    assert_eq!((linked.details["source"].as_str(), linked.details["relation"].as_str()), (Some("postgres"), Some("orders")));
    assert_eq!(s.send(Method::DELETE, "/v1/tables/orders", Some(&acme), None, None).await.status, StatusCode::NO_CONTENT);
    let left: i64 = db.query_one(&format!("SELECT count(*) FROM {acme_schema}.orders"), &[]).await.unwrap().get(0);
    assert_eq!(left, 3);
}

#[tokio::test]
async fn linking_needs_the_postgresql_store_and_a_well_formed_request() {
    let s = TestServer::start_on(Store::Embedded, |_| {}, |st| st).await;
    let admin = s.tenant_with_admin("acme").await;
    let r = link(&s, &admin, "orders", "orders").await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "source_unsupported"), "{:?}", r.body);
    let r = s.send(Method::PUT, "/v1/tables/orders", Some(&admin), Some(json!({"postgres": {"table": "x"}})), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "malformed_json"), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("table"), "{:?}", r.body);
    let audit = s.audit_of(Some("acme")).await;
    assert!(audit.iter().any(|r| r.action == "table.write" && r.outcome == "failure"), "a refused registration is recorded");
}
