//! Encryption at rest from the attacker's side: whoever can read or write the table files (a
//! copied disk, a shared bucket) but not the master key sees no value, and every change to a
//! file (a flipped byte, a file moved to another tenant or version, a plaintext file put in
//! its place) is refused with a clear error, never served as rows. Destroying a tenant's keys
//! leaves its files unreadable for good.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use moat_core::clock::Clock;
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{CUSTOMERS_A, CUSTOMERS_B, TestServer};

/// A server whose every query reads the files (no answer kept).
async fn server() -> TestServer {
    TestServer::start_with(|c| c.cache.result_ttl_s = 0).await
}

/// The Parquet file of a tenant's table on disk.
async fn file_of(s: &TestServer, slug: &str, table: &str) -> PathBuf {
    let t = s.state.stores.meta.tenant_by_slug(slug).await.unwrap().unwrap();
    let rec = s.state.stores.meta.table(t.id, table).await.unwrap().unwrap();
    assert_eq!(rec.dek_version, Some(1), "written under the tenant's first key");
    s.state.config.table_data_dir(&s.dir.path().join("data")).join(&rec.location).join("part-00000.parquet")
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn files_hold_no_plaintext_and_any_change_is_refused_not_served() {
    let s = server().await;
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    assert!(s.put_csv("/v1/tables/customers", &globex, CUSTOMERS_B).await.status.is_success());
    let sql = "SELECT * FROM customers ORDER BY id";
    let good = s.query(&acme, sql).await;
    assert_eq!(good.status, StatusCode::OK, "{:?}", good.body);
    assert!(good.body.to_string().contains("ann@acme-secret.com"), "the Admin reads raw values");

    // At rest: an encrypted footer, and not one value or column name in the clear.
    let path = file_of(&s, "acme", "customers").await;
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[bytes.len() - 4..], b"PARE", "encrypted footer");
    for canary in ["Ann Canary", "acme-secret", "123-45-6789", "ssn", "email"] {
        assert!(!contains(&bytes, canary), "{canary:?} in the clear");
    }

    let refused = |r: &moat_testkit::Resp, what: &str| {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {:?}", r.body);
        assert_eq!(r.code(), "data_integrity_error", "{what}: {:?}", r.body);
        assert!(r.body.get("rows").is_none(), "{what}: no rows");
        let text = r.body.to_string();
        assert!(!text.contains("Canary") && !text.contains("Globex Spy") && !text.contains(".parquet"), "{what}: {text}");
    };

    // A flipped byte in the data pages.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    refused(&s.query(&acme, sql).await, "flipped byte");

    // The other tenant's file in its place: another DEK, another path.
    let globex_file = std::fs::read(file_of(&s, "globex", "customers").await).unwrap();
    std::fs::write(&path, &globex_file).unwrap();
    refused(&s.query(&acme, sql).await, "another tenant's file");

    // A plaintext Parquet file put in its place (forged rows): refused, not read.
    let (_, plain) = moat_query::ingest::csv_to_parquet(
        "id,name,email,ssn,plan,revenue\n9,Forged,f@x.com,000-00-0000,pro,1\n".as_bytes(),
        Vec::new(),
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    std::fs::write(&path, &plain).unwrap();
    let forged = s.query(&acme, sql).await;
    refused(&forged, "plaintext file");
    assert!(!forged.body.to_string().contains("Forged"));

    // The file restored: served again; the other tenant was never affected.
    std::fs::write(&path, &bytes).unwrap();
    let back = s.query(&acme, sql).await;
    assert_eq!(back.status, StatusCode::OK, "{:?}", back.body);
    assert_eq!(back.body["rows"], good.body["rows"]);
    let g = s.query(&globex, sql).await;
    assert_eq!(g.status, StatusCode::OK, "{:?}", g.body);
    assert!(g.body.to_string().contains("Globex Spy"));
}

#[tokio::test]
async fn an_older_version_moved_over_the_current_one_is_refused() {
    let s = server().await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    let v1 = std::fs::read(file_of(&s, "acme", "customers").await).unwrap();
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_B).await.status.is_success());
    // Same tenant, same key, but written for another path: a replay of old data fails.
    let current = file_of(&s, "acme", "customers").await;
    std::fs::write(&current, &v1).unwrap();
    let r = s.query(&acme, "SELECT name FROM customers").await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "data_integrity_error"), "{:?}", r.body);
}

#[tokio::test]
async fn the_scanner_reads_encrypted_tables_and_deleting_the_tenant_shreds_its_keys() {
    let s = server().await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    // The scanner reads the table back through the same keys.
    let scan = s.post("/v1/tables/customers/scan", &acme, serde_json::json!({})).await;
    assert_eq!(scan.status, StatusCode::OK, "{:?}", scan.body);

    // The tenant's keys on record: wrapped, never the key itself.
    let t = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap();
    let keys = s.state.stores.meta.tenant_keys(t.id).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].version, keys[0].kek.as_str()), (1, "local:kek-0001"));
    assert_eq!(keys[0].wrapped.as_ref().unwrap().len(), 60);
    let created = s.audit_of(Some("acme")).await.into_iter().find(|r| r.action == "key.create").expect("key.create on the record");
    assert_eq!(created.details["dek_version"], 1);

    // Deleting the tenant is crypto-shredding: the wrapped key is erased, the tables and files
    // removed; a copy of a file taken before is unreadable for good.
    let path = file_of(&s, "acme", "customers").await;
    let copy = std::fs::read(&path).unwrap();
    let sa = s.super_admin().await;
    s.tenant_with_admin("beta").await;
    assert!(s.send(Method::POST, "/v1/tenants/beta/suspend", Some(&sa), None, None).await.status.is_success());
    let r = s.send(Method::DELETE, "/v1/tenants/acme", Some(&sa), None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "confirmation_required"), "{:?}", r.body);
    let r = s.send(Method::DELETE, "/v1/tenants/acme?confirm=globex", Some(&sa), None, None).await;
    assert_eq!(r.code(), "confirmation_required");
    assert!(s.state.stores.meta.tenant_keys(t.id).await.unwrap()[0].wrapped.is_some(), "nothing destroyed unconfirmed");
    let r = s.send(Method::DELETE, "/v1/tenants/acme?confirm=acme", Some(&sa), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        (r.body["status"].as_str(), r.body["keys_destroyed"].as_u64(), r.body["tables_deleted"].as_u64()),
        (Some("deleted"), Some(1), Some(1))
    );
    assert!(s.state.stores.meta.tenant_keys(t.id).await.unwrap().iter().all(|k| k.wrapped.is_none() && k.destroyed_at.is_some()));
    assert!(!path.exists(), "the files are removed");
    let q = s.query(&acme, "SELECT * FROM customers").await;
    assert!(!q.status.is_success() && !q.body.to_string().contains("Canary"), "{:?}", q.body);
    // Listed as deleted, not as merely suspended.
    let listed = s.get("/v1/tenants", &sa).await;
    let acme_row = listed.body["tenants"].as_array().unwrap().iter().find(|t| t["slug"] == "acme").unwrap().clone();
    assert_eq!((acme_row["status"].as_str(), acme_row["deleted_at"].as_i64()), (Some("deleted"), Some(s.clock.now_s())), "{acme_row:?}");
    assert_eq!(s.get("/v1/tenants/acme", &sa).await.body["status"], "deleted");
    let beta_row = listed.body["tenants"].as_array().unwrap().iter().find(|t| t["slug"] == "beta").unwrap().clone();
    assert!(beta_row["status"] == "suspended" && beta_row.get("deleted_at").is_none(), "merely suspended: {beta_row:?}");
    let resume = s.send(Method::POST, "/v1/tenants/acme/resume", Some(&sa), None, None).await;
    assert_eq!((resume.status, resume.code()), (StatusCode::CONFLICT, "tenant_deleted"), "{:?}", resume.body);
    assert_eq!(s.state.data_keys.keyring(t.id, &[1], s.clock.now_s()).await.unwrap_err().code, "tenant_keys_destroyed");
    // The copy, put back where it was, is refused: no key can open it any more.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &copy).unwrap();
    assert!(s.state.data_keys.keyring(t.id, &[], s.clock.now_s()).await.is_err(), "no new key for a deleted tenant");
    for trail in [None, Some("acme")] {
        let del = s.audit_of(trail).await.into_iter().find(|r| r.action == "tenant.delete").expect("tenant.delete on the record");
        assert_eq!(del.details["keys_destroyed"], 1);
    }
}
