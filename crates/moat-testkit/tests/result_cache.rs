//! The result cache from the attacker's side: an answer is served again only to a caller who
//! would get the same masks from the same table versions of the same tenant; every hit is
//! planned and audited; in Redis every key is tenant-prefixed with a TTL, and Redis going away
//! never refuses a query.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use moat_testkit::fault::{CutProxy, upstream_of};
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{CUSTOMERS_A, CUSTOMERS_B, Resp, TestServer};
use serde_json::json;

const SQL: &str = "SELECT id, name, email, ssn FROM customers ORDER BY id";

fn cache(r: &Resp) -> String {
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.header("x-moat-cache").unwrap_or_default()
}

#[tokio::test]
async fn answers_are_shared_only_by_callers_who_would_get_the_same_masks() {
    let s = TestServer::start().await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    s.label_customers(&acme).await;
    let (_, viewer) = s.user(&acme, "acme", "vera@acme.example", "viewer").await;
    let (viewer2_id, viewer2) = s.user(&acme, "acme", "val@acme.example", "viewer").await;

    let first = s.query(&viewer, SQL).await;
    assert_eq!(cache(&first), "miss");
    let again = s.query(&viewer2, SQL).await;
    assert_eq!(cache(&again), "hit", "another viewer gets the same masks");
    assert_eq!(again.body["rows"], first.body["rows"]);
    assert_ne!(again.body["query_id"], first.body["query_id"]);
    assert!(!again.body.to_string().contains("123-45-6789"), "{:?}", again.body);
    // Every hit is on the record like any query.
    let hits = s.audit_of(Some("acme")).await.into_iter().filter(|r| r.action == "query.execute" && r.details["cache"] == "hit").count();
    assert_eq!(hits, 1);

    // Another role: other masks, its own answer.
    let raw = s.query(&acme, SQL).await;
    assert_eq!(cache(&raw), "miss");
    assert!(raw.body.to_string().contains("123-45-6789"));
    assert!(!s.query(&viewer, SQL).await.body.to_string().contains("123-45-6789"), "the admin's answer never reaches a viewer");

    // A label change, a masking policy, a new version: each a new answer.
    s.label(&acme, "ssn", "PUBLIC", "none", None).await;
    let relabelled = s.query(&viewer, SQL).await;
    assert_eq!(cache(&relabelled), "miss");
    assert!(relabelled.body.to_string().contains("123-45-6789"), "the new label applies at once");
    s.label(&acme, "ssn", "RESTRICTED", "direct", Some("ssn")).await;
    let r = s.send(Method::PUT, "/v1/policies/masking", Some(&acme), Some(json!({"rules": {"viewer:CONFIDENTIAL": "full"}})), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let full = s.query(&viewer, SQL).await;
    assert_eq!(cache(&full), "miss");
    assert!(!full.body.to_string().contains("acme.com"), "the policy applies at once: {:?}", full.body);
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_B).await.status.is_success());
    let replaced = s.query(&acme, SQL).await;
    assert_eq!(cache(&replaced), "miss");
    assert!(replaced.body.to_string().contains("Globex Spy") && !replaced.body.to_string().contains("Ann Canary"));

    // Another tenant with the same table and SQL never gets acme's answer.
    let globex = s.tenant_with_admin("globex").await;
    assert!(s.put_csv("/v1/tables/customers", &globex, CUSTOMERS_A.replace("Ann Canary", "Gina Globex")).await.status.is_success());
    s.query(&acme, SQL).await;
    let theirs = s.query(&globex, SQL).await;
    assert_eq!(cache(&theirs), "miss");
    assert!(theirs.body.to_string().contains("Gina Globex") && !theirs.body.to_string().contains("Globex Spy"));

    // A hit is planned first: a disabled caller or a deleted table is refused, not served.
    s.query(&viewer, SQL).await;
    assert_eq!(s.query(&viewer2, SQL).await.header("x-moat-cache").as_deref(), Some("hit"));
    let r = s.send(Method::POST, &format!("/v1/users/{viewer2_id}/disable"), Some(&acme), None, None).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    assert_eq!(s.query(&viewer2, SQL).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.send(Method::DELETE, "/v1/tables/customers", Some(&acme), None, None).await.status, StatusCode::NO_CONTENT);
    assert_ne!(s.query(&viewer, SQL).await.status, StatusCode::OK);
}

#[tokio::test]
async fn answers_that_change_from_run_to_run_are_not_kept() {
    let s = TestServer::start().await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    let r = s.send(Method::PUT, "/v1/views/recent", Some(&acme), Some(json!({"sql": "SELECT id, now() AS at FROM customers"})), None).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    for sql in [
        "SELECT id, random() AS r FROM customers",
        "SELECT id FROM customers WHERE now() > TIMESTAMP '2000-01-01'",
        "SELECT count(*) FROM customers WHERE id IN (SELECT id FROM customers WHERE uuid() <> '')",
        "SELECT current_date AS d",
        "SELECT * FROM recent",
    ] {
        for _ in 0..2 {
            assert_eq!(cache(&s.query(&acme, sql).await), "off", "{sql}");
        }
    }
    assert_eq!(cache(&s.query(&acme, "SELECT upper(name) AS n FROM customers").await), "miss");
}

#[tokio::test]
async fn the_cache_can_be_turned_off() {
    let s = TestServer::start_with(|c| c.cache.result_ttl_s = 0).await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    for _ in 0..2 {
        assert_eq!(cache(&s.query(&acme, SQL).await), "off");
    }
}

/// Runs when `MOAT_TEST_REDIS` is set.
#[tokio::test]
async fn in_redis_keys_are_tenant_prefixed_with_a_ttl_and_an_outage_fails_open() {
    let Ok(url) = std::env::var("MOAT_TEST_REDIS") else {
        eprintln!("MOAT_TEST_REDIS not set: skipped");
        return;
    };
    let proxy = Arc::new(CutProxy::start(&upstream_of(&url, 6379)).await);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let (p, namespace) = (proxy.clone(), format!("moat-rc-{}-{nanos}", std::process::id()));
    let ns = namespace.clone();
    let s = TestServer::start_with(move |c| {
        c.cache.url = p.route(&url);
        c.cache.namespace = ns;
        c.cache.result_ttl_s = 30;
    })
    .await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    assert_eq!(cache(&s.query(&acme, SQL).await), "miss");
    assert_eq!(cache(&s.query(&acme, SQL).await), "hit");

    let tenant = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap().id;
    let client = redis::Client::open(std::env::var("MOAT_TEST_REDIS").unwrap()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    for key in &keys {
        assert!(key.starts_with(&format!("{namespace}:t:{tenant}:rc:")), "{key}");
        let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap();
        assert!((1..=30).contains(&ttl), "{key}: TTL {ttl}");
    }

    proxy.cut();
    let r = s.query(&acme, SQL).await;
    assert_eq!(cache(&r), "unavailable", "Redis down: the answer is computed, never refused");
    assert!(r.body.to_string().contains("Ann Canary"));
    proxy.restore();
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
}
