//! Key rotation end to end: a tenant's data key rotates while queries keep answering the same
//! rows; the re-encryption is finished by the next check after an interruption; master-key
//! rotation re-wraps every data key so that the old master key can go; a server on an HSM
//! (SoftHSM2 via PKCS#11, when `MOAT_TEST_PKCS11` is set) does all of it without ever holding
//! its master key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use moat_core::clock::Clock;
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{CUSTOMERS_A, CUSTOMERS_B, TestServer, customers_csv};
use serde_json::{Value, json};

async fn server() -> TestServer {
    TestServer::start_with(|c| c.cache.result_ttl_s = 0).await
}

async fn post_empty(s: &TestServer, path: &str, auth: &str) -> moat_testkit::Resp {
    s.send(Method::POST, path, Some(auth), None, None).await
}

/// Waits until no table of the token's tenant is left under an older key.
async fn reencrypted(s: &TestServer, auth: &str, path: &str) -> Value {
    for _ in 0..400 {
        let v = s.get(path, auth).await;
        assert_eq!(v.status, StatusCode::OK, "{:?}", v.body);
        // The last table is swapped in a moment before the job records that it is done.
        if v.body["tables"]["pending"] == 0 && v.body["reencryption"]["state"] != "running" {
            return v.body;
        }
        assert_ne!(v.body["reencryption"]["state"], "failed", "{:?}", v.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("re-encryption did not finish");
}

fn file_bytes(s: &TestServer, location: &str) -> Vec<u8> {
    let path = s.state.config.table_data_dir(&s.dir.path().join("data")).join(location).join("part-00000.parquet");
    std::fs::read(path).unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn rotation_reencrypts_every_table_while_queries_keep_answering() {
    let s = Arc::new(server().await);
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    assert!(s.put_csv("/v1/tables/big", &acme, customers_csv(20_000)).await.status.is_success());
    assert!(s.put_csv("/v1/tables/customers", &globex, CUSTOMERS_B).await.status.is_success());
    let (_, analyst) = s.user(&acme, "acme", "ana@acme.example", "user").await;
    let sql = "SELECT * FROM big ORDER BY id";
    let expected = s.query(&acme, sql).await;
    assert_eq!(expected.status, StatusCode::OK, "{:?}", expected.body);
    let small = s.query(&acme, "SELECT * FROM customers ORDER BY id").await.body["rows"].clone();

    // Readers that never stop while the key rotates underneath them.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (s, acme, stop, answered, rows) = (s.clone(), acme.clone(), stop.clone(), answered.clone(), expected.body["rows"].clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = s.query(&acme, sql).await;
                assert_eq!(r.status, StatusCode::OK, "a query failed during rotation: {:?}", r.body);
                assert_eq!(r.body["rows"], rows, "a query saw other rows during rotation");
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Who may: an analyst may not; the tenant's Admin may; another tenant is out of reach.
    assert_eq!(post_empty(&s, "/v1/keys/rotate", &analyst).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.get("/v1/keys", &analyst).await.status, StatusCode::FORBIDDEN);
    assert_eq!(post_empty(&s, "/v1/keys/rotate?tenant=globex", &acme).await.code(), "tenant_not_found");
    let r = post_empty(&s, "/v1/keys/rotate", &acme).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    assert_eq!(
        (r.body["tenant"].as_str(), r.body["previous_version"].as_u64(), r.body["dek_version"].as_u64()),
        (Some("acme"), Some(1), Some(2))
    );
    assert_eq!(r.body["tables_pending"], 2);
    let done = reencrypted(&s, &acme, "/v1/keys").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(answered.load(Ordering::Relaxed) >= 3, "the readers ran throughout");

    assert_eq!(done["dek_version"], 2);
    assert_eq!(done["tables"], json!({"total": 2, "current": 2, "pending": 0}));
    assert_eq!(done["reencryption"]["state"], "done");
    assert_eq!(done["reencryption"]["tables_done"], 2);
    assert_eq!(done["reencryption"]["rows"], 20_002);
    assert_eq!(done["versions"].as_array().unwrap().len(), 2, "the old version stays (older copies), only the current wraps new files");
    assert!(!done.to_string().contains("wrapped"), "no key material in the answer");

    // On disk: the files now name DEK v2; the same rows, labels and version come back.
    let acme_id = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap().id;
    for name in ["customers", "big"] {
        let t = s.state.stores.meta.table(acme_id, name).await.unwrap().unwrap();
        assert_eq!((t.dek_version, t.version), (Some(2), 1), "{name}");
        let bytes = file_bytes(&s, &t.location);
        assert!(contains(&bytes, "moat1:2:") && !contains(&bytes, "Ann Canary"), "{name}: encrypted under v2");
    }
    assert_eq!(s.query(&acme, "SELECT * FROM customers ORDER BY id").await.body["rows"], small);
    // The other tenant was not touched.
    let globex_id = s.state.stores.meta.tenant_by_slug("globex").await.unwrap().unwrap().id;
    assert_eq!(s.state.stores.meta.tenant_keys(globex_id).await.unwrap().len(), 1);
    assert_eq!(s.state.stores.meta.table(globex_id, "customers").await.unwrap().unwrap().dek_version, Some(1));
    let g = s.get("/v1/keys", &globex).await.body;
    assert_eq!((g["tenant"].as_str(), g["dek_version"].as_u64()), (Some("globex"), Some(1)));

    // On the record: who rotated, and the re-encryption's figures.
    let trail = s.audit_of(Some("acme")).await;
    let rotated = trail.iter().find(|r| r.action == "key.rotate").expect("key.rotate");
    assert_eq!((rotated.details["dek_version"].as_u64(), rotated.details["reason"].as_str()), (Some(2), Some("manual")));
    let reenc = trail.iter().find(|r| r.action == "key.reencrypt").expect("key.reencrypt");
    assert_eq!((reenc.details["tables"].as_u64(), reenc.details["rows"].as_u64()), (Some(2), Some(20_002)));

    // The Super Admin names the tenant.
    let root = s.super_admin().await;
    assert_eq!(s.get("/v1/keys", &root).await.code(), "tenant_required");
    assert_eq!(s.get("/v1/keys?tenant=acme", &root).await.body["dek_version"], 2);
}

#[tokio::test]
async fn an_interrupted_reencryption_is_finished_by_the_next_check() {
    let s = Arc::new(server().await);
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    let expected = s.query(&acme, "SELECT * FROM customers ORDER BY id").await.body["rows"].clone();
    let t = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap();
    // The new key was made, then the process died before the job ran.
    assert_eq!(s.state.data_keys.rotate(t.id, s.clock.now_s()).await.unwrap(), (1, 2, true));
    let before = s.get("/v1/keys", &acme).await.body;
    assert_eq!(before["tables"]["pending"], 1);
    // Meanwhile: reads under the old key, new uploads under the new one.
    assert_eq!(s.query(&acme, "SELECT * FROM customers ORDER BY id").await.body["rows"], expected);
    assert!(s.put_csv("/v1/tables/fresh", &acme, CUSTOMERS_A).await.status.is_success());
    assert_eq!(s.state.stores.meta.table(t.id, "fresh").await.unwrap().unwrap().dek_version, Some(2));

    moat_server::rotation::check(&s.state).await.unwrap();
    let done = reencrypted(&s, &acme, "/v1/keys").await;
    assert_eq!(done["tables"], json!({"total": 2, "current": 2, "pending": 0}));
    assert_eq!(s.query(&acme, "SELECT * FROM customers ORDER BY id").await.body["rows"], expected);
    // A second check finds nothing to do and rotates nothing (the key is new).
    moat_server::rotation::check(&s.state).await.unwrap();
    assert_eq!(s.state.stores.meta.tenant_keys(t.id).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_schedule_rotates_a_key_once_it_is_old() {
    let s = Arc::new(
        TestServer::start_with(|c| {
            c.cache.result_ttl_s = 0;
            c.keys.rotation_days = 90;
        })
        .await,
    );
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    let k = s.get("/v1/keys", &acme).await.body;
    assert_eq!(k["rotation_days"], 90);
    let created = k["versions"][0]["created_at"].as_i64().unwrap();
    assert_eq!(k["next_rotation_at"].as_i64(), Some(created + 90 * 86_400));
    moat_server::rotation::check(&s.state).await.unwrap();
    assert_eq!(s.get("/v1/keys", &acme).await.body["dek_version"], 1, "not due yet");
    s.clock.advance_s(90 * 86_400);
    moat_server::rotation::check(&s.state).await.unwrap();
    // Three months on, the morning's token has expired.
    let acme = s.login(Some("acme"), "admin@acme.example", moat_testkit::PASSWORD).await;
    let done = reencrypted(&s, &acme, "/v1/keys").await;
    assert_eq!(done["dek_version"], 2);
    let rotated = s.audit_of(Some("acme")).await.into_iter().find(|r| r.action == "key.rotate").expect("key.rotate");
    assert_eq!(rotated.details["reason"], "schedule");
    assert_eq!(rotated.actor["via"], "key rotation schedule");
}

#[tokio::test]
async fn master_key_rotation_rewraps_every_data_key_and_the_old_master_key_can_go() {
    let s = server().await;
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    assert!(s.put_csv("/v1/tables/customers", &globex, CUSTOMERS_B).await.status.is_success());
    assert_eq!(post_empty(&s, "/v1/keys/rotate-master", &acme).await.status, StatusCode::FORBIDDEN, "a tenant Admin may not");
    let root = s.super_admin().await;
    let r = post_empty(&s, "/v1/keys/rotate-master", &root).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["kek"], "local:kek-0002");
    assert_eq!(r.body["keys_rewrapped"], 2);
    let k = s.get("/v1/keys", &acme).await.body;
    assert_eq!((k["master_key"].as_str(), k["keys_under_older_master_key"].as_u64()), (Some("local:kek-0002"), Some(0)));
    assert_eq!(k["tables"]["pending"], 0, "no file is rewritten");
    let platform = s.audit_of(None).await;
    let rec = platform.iter().find(|r| r.action == "key.rotate_master").expect("key.rotate_master");
    assert_eq!(rec.details["keys_rewrapped"], 2);

    // The old master key file removed: a fresh process (no cached keys) still opens every
    // tenant's data, since every DEK is wrapped under the new key.
    let data = moat_server::config::DataDir::new(s.dir.path().join("data"));
    std::fs::remove_file(data.kek_dir().join("kek-0001.key")).unwrap();
    let provider = moat_server::keyprovider::open(&data, &s.state.config.keys).unwrap();
    let fresh =
        moat_server::dek::DataKeys::new(provider, s.state.stores.meta.clone(), moat_server::bootstrap::platform_secret_key(&data).unwrap());
    for slug in ["acme", "globex"] {
        let t = s.state.stores.meta.tenant_by_slug(slug).await.unwrap().unwrap();
        assert_eq!(fresh.keyring(t.id, &[1], s.clock.now_s()).await.unwrap().current_version(), 1, "{slug}");
    }
    s.state.data_keys.forget(s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap().id);
    let q = s.query(&acme, "SELECT name FROM customers ORDER BY id").await;
    assert_eq!(q.status, StatusCode::OK, "{:?}", q.body);
}

fn s_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000
}

/// The PKCS#11 module, the name of the environment variable holding the user PIN of fresh
/// tokens, and the PIN: set by `.ci/run` (SoftHSM2).
fn pkcs11() -> Option<(String, String)> {
    let module = std::env::var("MOAT_TEST_PKCS11").ok().filter(|m| !m.is_empty())?;
    let pin = std::env::var("MOAT_TEST_PKCS11_PIN").ok().filter(|p| !p.is_empty())?;
    Some((module, pin))
}

#[tokio::test]
async fn a_server_on_an_hsm_encrypts_rotates_and_never_holds_its_master_key() {
    let Some((module, pin)) = pkcs11() else {
        eprintln!("MOAT_TEST_PKCS11 / MOAT_TEST_PKCS11_PIN not set: the HSM path is not exercised");
        return;
    };
    let token = format!("moat-{}-{}", std::process::id(), s_nanos());
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", &token, "--pin", &pin, "--so-pin", "moat-test-so"])
        .output()
        .expect("softhsm2-util");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = TestServer::start_with(|c| {
        c.cache.result_ttl_s = 0;
        c.keys.provider = "pkcs11".into();
        c.keys.pkcs11_module = module.clone();
        c.keys.pkcs11_token = token.clone();
        c.keys.pkcs11_pin_env = "MOAT_TEST_PKCS11_PIN".into();
    })
    .await;
    let acme = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    let q = s.query(&acme, "SELECT name FROM customers ORDER BY id").await;
    assert_eq!(q.status, StatusCode::OK, "{:?}", q.body);
    assert!(q.body.to_string().contains("Ann Canary"));
    let k = s.get("/v1/keys", &acme).await.body;
    assert_eq!((k["provider"].as_str(), k["master_key"].as_str()), (Some("pkcs11"), Some("pkcs11:moat-kek-0001")));
    // No master key file is used: the data dir's local key plays no part.
    let t = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap();
    assert_eq!(s.state.stores.meta.tenant_keys(t.id).await.unwrap()[0].kek, "pkcs11:moat-kek-0001");

    let root = s.super_admin().await;
    let r = post_empty(&s, "/v1/keys/rotate-master", &root).await;
    assert_eq!((r.status, r.body["kek"].as_str()), (StatusCode::OK, Some("pkcs11:moat-kek-0002")), "{:?}", r.body);
    assert_eq!(post_empty(&s, "/v1/keys/rotate", &acme).await.status, StatusCode::ACCEPTED);
    let done = reencrypted(&s, &acme, "/v1/keys").await;
    assert_eq!((done["dek_version"].as_u64(), done["master_key"].as_str()), (Some(2), Some("pkcs11:moat-kek-0002")));
    s.state.data_keys.forget(t.id);
    let again = s.query(&acme, "SELECT name FROM customers ORDER BY id").await;
    assert_eq!(again.body["rows"], q.body["rows"]);

    // A wrong PIN or an unknown token stops a server at start, with the reason.
    let mut cfg = s.state.config.clone();
    cfg.keys.pkcs11_token = "no-such-token".into();
    let data = moat_server::config::DataDir::new(s.dir.path().join("data"));
    assert_eq!(moat_server::keyprovider::open(&data, &cfg.keys).unwrap_err().code, "pkcs11_token_not_found");
    cfg.keys.pkcs11_pin_env = "MOAT_TEST_NO_SUCH_PIN_VARIABLE".into();
    assert_eq!(moat_server::keyprovider::open(&data, &cfg.keys).unwrap_err().code, "pkcs11_pin_missing");
}
