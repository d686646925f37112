//! Backups: `moat backup create` beside a serving server, `verify`, and `restore` onto another
//! machine's master key — the restored deployment answers the same queries, its audit trails
//! verify, and nothing after the backup comes back. From the attacker's side: an archive holds
//! no value in the clear, a changed, cut or foreign archive or a wrong key restores nothing
//! (and leaves no partial data dir), a non-empty target is never written, a crypto-shredded
//! tenant stays unreadable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use moat_core::clock::Clock;
use moat_server::backup;
use moat_server::config::DataDir;
use moat_store::pg_testing::TestDb;
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{CUSTOMERS_A, CUSTOMERS_B, PASSWORD, Store, TestServer};
use serde_json::json;

fn no_progress() -> backup::Progress {
    Box::new(|_, _| {})
}

async fn server() -> TestServer {
    TestServer::start_on(Store::Embedded, |c| c.cache.result_ttl_s = 0, |s| s).await
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn data_dir(s: &TestServer) -> DataDir {
    DataDir::new(s.dir.path().join("data"))
}

fn key_in(dir: &Path) -> (std::path::PathBuf, moat_core::backup::BackupKey) {
    let path = dir.join("backup.key");
    let key = backup::write_key_file(&path).unwrap();
    (path, key)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(false)
}

#[tokio::test]
async fn a_restore_answers_as_the_backup_did_under_a_new_master_key_with_its_trails_whole() {
    let s = server().await;
    let sa = s.super_admin().await;
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    assert!(s.put_csv("/v1/tables/customers", &acme, CUSTOMERS_A).await.status.is_success());
    assert!(s.put_csv("/v1/tables/customers", &globex, CUSTOMERS_B).await.status.is_success());
    let sql = "SELECT id, name, email, ssn FROM customers ORDER BY id";
    let before = s.query(&acme, sql).await;
    assert_eq!(before.status, StatusCode::OK, "{:?}", before.body);
    let globex_before = s.query(&globex, sql).await.body["rows"].clone();
    // A tenant deleted before the backup: its keys are destroyed, so no archive carries them.
    let gone = s.tenant_with_admin("gone").await;
    assert!(s.put_csv("/v1/tables/customers", &gone, CUSTOMERS_A).await.status.is_success());
    let r = s.send(Method::DELETE, "/v1/tenants/gone?confirm=gone", Some(&sa), None, None).await;
    assert!(r.status.is_success(), "{:?}", r.body);

    let keys = tempfile::tempdir().unwrap();
    let (_, key) = key_in(keys.path());
    let out = keys.path().join("moat-1.backup");
    let made = backup::create(&data_dir(&s), &out, &key, s.clock.now_s(), no_progress()).await.unwrap();
    let m = &made.manifest;
    let slugs: Vec<_> = m.tenants.iter().map(|t| (t.slug.as_str(), t.tables, t.data_keys)).collect();
    assert_eq!(slugs, [("acme", 1, 1), ("globex", 1, 1), ("gone", 0, 0)], "{m:?}");
    assert_eq!(m.key_fingerprint, key.fingerprint());
    assert!(m.files.iter().any(|f| f.name == "moat.db") && m.data_files() == 2, "{:?}", m.files);
    assert!(!m.files.iter().any(|f| f.name.starts_with("keys/master")), "never a master key: {:?}", m.files);
    assert!(m.trails["platform"] > 0);

    // Nothing of the tenants' in the clear in the archive.
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len() as u64, made.bytes);
    for canary in ["Ann Canary", "acme-secret", "123-45-6789", "Globex Spy", "admin@acme.example", "customers", "PAR1", "SQLite format"] {
        assert!(!contains(&bytes, canary), "{canary:?} in the clear");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // On the record, with the archive's digest; the source's trail still verifies.
    let rec = s.audit_of(None).await.into_iter().find(|r| r.action == "backup.create").expect("backup.create recorded");
    assert_eq!(rec.details["sha256"], made.sha256.as_str());
    assert_eq!(rec.details["key_fingerprint"], key.fingerprint().as_str());
    let v = moat_server::http::audit::verify_trail(&s.state, "platform", |_, _| {}).await.unwrap();
    assert!(v.ok && v.hmacs_checked > 0, "{v:?}");
    // The temporary links are gone.
    let tmp = data_dir(&s).root.join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with("backup-")), "{left:?}");

    // After the backup: a new table and a replaced one, which a restore must not carry.
    assert!(s.put_csv("/v1/tables/later", &acme, CUSTOMERS_A).await.status.is_success());
    assert!(s.put_csv("/v1/tables/customers", &globex, CUSTOMERS_A).await.status.is_success());

    assert_eq!(&backup::verify(&out, &key, no_progress()).await.unwrap(), m);

    // Onto another machine: its own, new master key.
    let other = tempfile::tempdir().unwrap();
    let target = DataDir::new(other.path().join("data"));
    let restored = backup::restore(&out, &key, &target, s.clock.now_s(), no_progress()).await.unwrap();
    assert_eq!(&restored, m);
    assert!(!target.root.join(".restoring").exists());
    let kek = |d: &DataDir| std::fs::read(d.kek_dir().join("kek-0001.key")).unwrap();
    assert_ne!(kek(&target), kek(&data_dir(&s)), "the target wraps under its own master key");
    let leftovers: Vec<_> =
        std::fs::read_dir(&target.root).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!leftovers.iter().any(|n| n.starts_with(".restoring")), "{leftovers:?}");

    let r = TestServer::start_in(other).await;
    let acme2 = r.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    let after = r.query(&acme2, sql).await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    assert_eq!(after.body["rows"], before.body["rows"], "the same answer");
    let globex2 = r.login(Some("globex"), "admin@globex.example", PASSWORD).await;
    assert_eq!(r.query(&globex2, sql).await.body["rows"], globex_before, "the version of the backup, not the later one");
    let later = r.query(&acme2, "SELECT * FROM later").await;
    assert_eq!((later.status, later.code()), (StatusCode::BAD_REQUEST, "query_error"), "not restored: {:?}", later.body);
    // The shredded tenant stays shredded.
    let gone_id = r.state.stores.meta.tenant_by_slug("gone").await.unwrap().unwrap().id;
    assert!(r.state.stores.meta.tenant_keys(gone_id).await.unwrap().iter().all(|k| k.wrapped.is_none()));
    let rl = r.login_raw(Some("gone"), "admin@gone.example", PASSWORD).await;
    assert!(!rl.status.is_success(), "{:?}", rl.body);

    // Every trail is whole and says it was restored.
    for slug in [None, Some("acme"), Some("globex")] {
        let restore = r.audit_of(slug).await.into_iter().find(|x| x.action == "backup.restore").expect("backup.restore recorded");
        assert_eq!(restore.details["key_fingerprint"], key.fingerprint().as_str());
        assert_eq!(restore.details["created_at"], m.created_at);
    }
    let v = moat_server::http::audit::verify_trail(&r.state, "platform", |_, _| {}).await.unwrap();
    assert!(v.ok && v.hmacs_checked > 0 && v.checkpoints_checked > 0, "the audit key and published checkpoints came along: {v:?}");
    for who in [&acme2, &globex2] {
        r.checkpointed(who).await;
        let v = r.get("/v1/audit/verify", who).await;
        assert_eq!(v.body["ok"], true, "{:?}", v.body);
    }
    // And it serves new writes under the new master key.
    assert!(r.put_csv("/v1/tables/fresh", &acme2, CUSTOMERS_B).await.status.is_success());
    assert_eq!(r.query(&acme2, "SELECT count(*) AS n FROM fresh").await.body["rows"][0][0], 1);
}

#[tokio::test]
async fn a_changed_cut_or_foreign_archive_or_a_wrong_key_restores_nothing() {
    let s = server().await;
    let acme = s.tenant_with_admin("acme").await;
    // Big enough for several segments, so that a late fault comes after files were unpacked.
    let csv = moat_testkit::customers_csv(100_000);
    assert!(s.put_csv("/v1/tables/big", &acme, csv).await.status.is_success());
    let keys = tempfile::tempdir().unwrap();
    let (key_path, key) = key_in(keys.path());
    let out = keys.path().join("a.backup");
    let made = backup::create(&data_dir(&s), &out, &key, s.clock.now_s(), no_progress()).await.unwrap();
    assert!(made.bytes > (1 << 20) + 4096, "more than one segment: {}", made.bytes);
    let good = std::fs::read(&out).unwrap();

    // The archive is never overwritten; a key file is never overwritten, nor read when others may.
    let e = backup::create(&data_dir(&s), &out, &key, s.clock.now_s(), no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_exists");
    assert_eq!(backup::write_key_file(&key_path).unwrap_err().code, "backup_key_exists");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let loose = keys.path().join("loose.key");
        std::fs::write(&loose, key.encode()).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(backup::read_key_file(&loose).unwrap_err().code, "backup_key_exposed");
    }
    assert_eq!(backup::read_key_file(&keys.path().join("none.key")).unwrap_err().code, "backup_key_missing");

    let restore_fails = |bytes: Vec<u8>, k: moat_core::backup::BackupKey, code: &'static str, what: &'static str| {
        let dir = keys.path().to_path_buf();
        async move {
            let file = dir.join(format!("{what}.backup").replace(' ', "-"));
            std::fs::write(&file, &bytes).unwrap();
            let e = backup::verify(&file, &k, no_progress()).await.unwrap_err();
            assert_eq!(e.code, code, "verify, {what}: {e}");
            // Into a directory that does not exist: it still does not afterwards.
            let fresh = tempfile::tempdir().unwrap();
            let target = DataDir::new(fresh.path().join("data"));
            let e = backup::restore(&file, &k, &target, 0, no_progress()).await.unwrap_err();
            assert_eq!(e.code, code, "restore, {what}: {e}");
            assert!(!target.root.exists(), "{what}: nothing left behind");
            // Into an empty directory: it stays empty.
            let empty = DataDir::new(fresh.path().join("empty"));
            std::fs::create_dir(&empty.root).unwrap();
            assert_eq!(backup::restore(&file, &k, &empty, 0, no_progress()).await.unwrap_err().code, code, "{what}");
            assert!(is_empty_dir(&empty.root), "{what}: the empty target stays empty");
        }
    };
    let n = good.len();
    let mut late = good.clone();
    late[n - 40] ^= 0x20;
    restore_fails(late, key.clone(), "backup_corrupt", "a byte flipped near the end").await;
    let mut early = good.clone();
    early[200] ^= 0x01;
    restore_fails(early, key.clone(), "backup_corrupt", "a byte flipped near the start").await;
    restore_fails(good[..n - 17].to_vec(), key.clone(), "backup_corrupt", "cut short").await;
    restore_fails(good[..(1 << 20) + 72 + 16].to_vec(), key.clone(), "backup_corrupt", "cut at a segment").await;
    restore_fails([&good[..], b"more"].concat(), key.clone(), "backup_corrupt", "bytes appended").await;
    restore_fails(good.clone(), moat_core::backup::BackupKey::generate().unwrap(), "backup_wrong_key", "another key").await;
    restore_fails(b"id,name\n1,a\n".repeat(10), key.clone(), "not_a_backup", "a foreign file").await;

    // A target that holds anything is never written.
    let busy = tempfile::tempdir().unwrap();
    std::fs::write(busy.path().join("precious.txt"), "mine").unwrap();
    let e = backup::restore(&out, &key, &DataDir::new(busy.path()), 0, no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_target_not_empty");
    assert_eq!(std::fs::read_dir(busy.path()).unwrap().count(), 1);
    // Nor is a running deployment's own data dir.
    let e = backup::restore(&out, &key, &data_dir(&s), 0, no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_target_not_empty");
    // An embedded store's archive does not load into PostgreSQL.
    let pg = backup::RestoreOptions {
        store_url: Some("postgres://app@127.0.0.1:1/none".into()),
        store_admin_url: Some("postgres://owner@127.0.0.1:1/none".into()),
    };
    let empty = tempfile::tempdir().unwrap();
    let e = backup::restore_with(&out, &key, &DataDir::new(empty.path()), &pg, 0, no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_store_mismatch", "{e}");
    assert!(is_empty_dir(empty.path()));

    // The good archive restores, and the restored table answers.
    let fresh = tempfile::tempdir().unwrap();
    backup::restore(&out, &key, &DataDir::new(fresh.path().join("data")), s.clock.now_s(), no_progress()).await.unwrap();
    let r = TestServer::start_in(fresh).await;
    let acme2 = r.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    let n = r.query(&acme2, "SELECT count(*) AS n FROM big").await;
    assert_eq!(n.body["rows"][0][0], 100_000, "{:?}", n.body);
}

/// A PostgreSQL store, with a tenant in a database of its own and a relation in that tenant's
/// schema: backed up while it serves, then restored after a disaster (the tenant's database
/// lost and made again, empty; the platform's restored into a new one) onto a new master key.
#[tokio::test]
async fn a_postgresql_store_with_a_tenant_database_comes_back_whole() {
    let Some(base) = TestDb::base_from_env() else {
        eprintln!("MOAT_TEST_PG not set: skipped");
        return;
    };
    let s = TestServer::start_on(Store::Postgres, |c| c.cache.result_ttl_s = 0, |s| s).await;
    let acme = s.tenant_with_admin("acme").await;
    let own = TestDb::create(&base).await;
    let sa = s.super_admin().await;
    let body = json!({"slug": "bigco", "name": "BigCo", "admin": {"email": "admin@bigco.example", "password": PASSWORD},
                      "database": {"url": own.app_url, "admin_url": own.admin_url}});
    assert_eq!(s.post("/v1/tenants", &sa, body).await.status, StatusCode::CREATED);
    let bigco = s.login(Some("bigco"), "admin@bigco.example", PASSWORD).await;
    let bigco_id = s.state.stores.meta.tenant_by_slug("bigco").await.unwrap().unwrap().id;
    for t in [&acme, &bigco] {
        assert!(s.put_csv("/v1/tables/customers", t, CUSTOMERS_A).await.status.is_success());
        s.label_customers(t).await;
    }
    let (_, viewer) = s.user(&bigco, "bigco", "vera@bigco.example", "viewer").await;
    let schema = format!("tenant_{}", bigco_id.0.simple());
    let (owner, conn) = tokio_postgres::connect(&own.admin_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    owner
        .batch_execute(&format!("CREATE TABLE {schema}.orders (id int4, amount int4); INSERT INTO {schema}.orders VALUES (1, 42)"))
        .await
        .unwrap();
    let r = s.send(Method::PUT, "/v1/tables/orders", Some(&bigco), Some(json!({"postgres": {"relation": "orders"}})), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let sql = "SELECT id, name, email, ssn FROM customers ORDER BY id";
    let acme_before = s.query(&acme, sql).await.body["rows"].clone();
    let viewer_before = s.query(&viewer, sql).await;
    assert_eq!(viewer_before.status, StatusCode::OK, "{:?}", viewer_before.body);

    let keys = tempfile::tempdir().unwrap();
    let (_, key) = key_in(keys.path());
    let out = keys.path().join("pg.backup");
    let made = backup::create(&data_dir(&s), &out, &key, s.clock.now_s(), no_progress()).await.unwrap();
    let m = &made.manifest;
    assert_eq!((m.format, m.store.as_str()), (2, "postgres"));
    let dbs: Vec<_> = m.databases.iter().map(|d| (d.name.as_str(), d.admin_url.as_deref())).collect();
    assert_eq!(dbs, [("platform", None), ("db1", Some(own.admin_url.as_str()))]);
    let platform_tables: Vec<_> = m.databases[0].dump.tables.iter().map(|t| t.table.as_str()).collect();
    for t in ["tenants", "users", "audit_log", "audit_nodes", "tenant_keys", "catalog_tables"] {
        assert!(platform_tables.contains(&t), "{t} in {platform_tables:?}");
    }
    assert!(!platform_tables.contains(&"schema_migrations"));
    let at = |t: &str| platform_tables.iter().position(|x| *x == t).unwrap();
    assert!(at("tenants") < at("users") && at("users") < at("sessions"), "loads after what its keys name: {platform_tables:?}");
    let slugs: Vec<_> = m.tenants.iter().map(|t| (t.slug.as_str(), t.tables, t.data_keys)).collect();
    assert_eq!(slugs, [("acme", 1, 1), ("bigco", 2, 1)], "{m:?}");
    assert_eq!(m.data_files(), 2, "the linked relation has no files: {:?}", m.files);
    assert!(m.not_carried.iter().any(|n| n.contains(&format!("{schema}.orders"))), "{:?}", m.not_carried);
    assert!(m.trails[&bigco_id.to_string()] > 0 && m.trails["platform"] > 0, "{:?}", m.trails);
    let bytes = std::fs::read(&out).unwrap();
    for canary in ["Ann Canary", "123-45-6789", "admin@acme.example", "admin@bigco.example", "customers", "PAR1"] {
        assert!(!contains(&bytes, canary), "{canary:?} in the clear");
    }
    let rec = s.audit_of(None).await.into_iter().find(|r| r.action == "backup.create").expect("backup.create recorded");
    assert_eq!((rec.details["sha256"].as_str(), rec.details["store"].as_str()), (Some(made.sha256.as_str()), Some("postgres")));
    assert_eq!(&backup::verify(&out, &key, no_progress()).await.unwrap(), m);

    // After the backup: not carried back.
    assert!(s.put_csv("/v1/tables/later", &acme, CUSTOMERS_A).await.status.is_success());

    // The archived configuration names the serving database, which holds moat data: refused,
    // and nothing is written.
    let refused = tempfile::tempdir().unwrap();
    let e = backup::restore(&out, &key, &DataDir::new(refused.path().join("data")), 0, no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_target_not_empty", "{e}");
    assert!(!refused.path().join("data").exists() || is_empty_dir(&refused.path().join("data")));

    // A new platform database, but bigco's still holds its data: refused as a whole, and the
    // new database is left without moat data (the restore below goes into it).
    let fresh = TestDb::create(&base).await;
    let opts = backup::RestoreOptions { store_url: Some(fresh.app_url.clone()), store_admin_url: Some(fresh.admin_url.clone()) };
    let e = backup::restore_with(&out, &key, &DataDir::new(refused.path().join("data")), &opts, 0, no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_target_not_empty", "{e}");
    assert!(e.message.contains("a tenant database"), "{e}");

    // The disaster: bigco's database is lost and made again, empty, under the same name; the
    // platform's comes back in the new database.
    let (su, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    su.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", own.name)).await.unwrap();
    su.batch_execute(&format!("CREATE DATABASE {} OWNER {}", own.name, moat_store::pg_testing::OWNER_ROLE)).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let target = DataDir::new(other.path().join("data"));
    let restored = backup::restore_with(&out, &key, &target, &opts, s.clock.now_s(), no_progress()).await.unwrap();
    assert_eq!(&restored, m);
    let toml = std::fs::read_to_string(target.config_file()).unwrap();
    assert!(toml.contains(&fresh.app_url) && toml.contains(&fresh.admin_url), "the restored configuration names the new database");
    assert!(toml.contains("# moat configuration"), "and keeps its comments");
    assert!(!target.root.join("moat.db").exists());

    // Once more into the database it now fills: refused, the data dir left empty.
    let again = tempfile::tempdir().unwrap();
    let e = backup::restore_with(&out, &key, &DataDir::new(again.path()), &opts, 0, no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_target_not_empty", "{e}");
    assert!(is_empty_dir(again.path()));

    let r = TestServer::start_in(other).await;
    let acme2 = r.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    assert_eq!(r.query(&acme2, sql).await.body["rows"], acme_before, "the same answer");
    let later = r.query(&acme2, "SELECT * FROM later").await;
    assert_eq!(later.code(), "query_error", "not restored: {:?}", later.body);
    let viewer2 = r.login(Some("bigco"), "vera@bigco.example", PASSWORD).await;
    let after = r.query(&viewer2, sql).await;
    assert_eq!(
        after.body["rows"], viewer_before.body["rows"],
        "the tenant database's catalog, labels and users came back: {:?}",
        after.body
    );
    // The relation of the tenant's schema was not carried: its schema is back, empty.
    let bigco2 = r.login(Some("bigco"), "admin@bigco.example", PASSWORD).await;
    let orders = r.query(&bigco2, "SELECT sum(amount) FROM orders").await;
    assert_eq!(orders.code(), "source_changed", "{:?}", orders.body);
    let v = moat_server::http::audit::verify_trail(&r.state, "platform", |_, _| {}).await.unwrap();
    assert!(v.ok && v.hmacs_checked > 0, "{v:?}");
    for who in [&acme2, &bigco2] {
        r.checkpointed(who).await;
        let v = r.get("/v1/audit/verify", who).await;
        assert_eq!(v.body["ok"], true, "{:?}", v.body);
    }
    for slug in [None, Some("acme"), Some("bigco")] {
        let rec = r.audit_of(slug).await.into_iter().find(|x| x.action == "backup.restore").expect("backup.restore recorded");
        assert_eq!(rec.details["store"], "postgres");
    }
    // The isolation the store enforces came back with it.
    let sa2 = r.super_admin().await;
    for slug in ["acme", "bigco"] {
        let v = r.post(&format!("/v1/tenants/{slug}/validate"), &sa2, json!({})).await;
        assert_eq!(v.body["passed"], true, "{slug}: {:?}", v.body);
    }
    assert!(r.put_csv("/v1/tables/fresh", &bigco2, CUSTOMERS_B).await.status.is_success());
    drop(r);
    fresh.drop_db().await;
    own.drop_db().await;
}
