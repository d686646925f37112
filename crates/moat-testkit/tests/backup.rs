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
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{CUSTOMERS_A, CUSTOMERS_B, PASSWORD, Store, TestServer};

fn no_progress() -> backup::Progress {
    Box::new(|_, _| {})
}

async fn server() -> TestServer {
    // Backups cover the embedded store (PostgreSQL has its own tools: see the last test).
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

    // The good archive restores, and the restored table answers.
    let fresh = tempfile::tempdir().unwrap();
    backup::restore(&out, &key, &DataDir::new(fresh.path().join("data")), s.clock.now_s(), no_progress()).await.unwrap();
    let r = TestServer::start_in(fresh).await;
    let acme2 = r.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    let n = r.query(&acme2, "SELECT count(*) AS n FROM big").await;
    assert_eq!(n.body["rows"][0][0], 100_000, "{:?}", n.body);
}

#[tokio::test]
async fn a_postgresql_store_is_refused_with_what_to_use_instead() {
    if std::env::var("MOAT_TEST_PG").is_err() {
        eprintln!("MOAT_TEST_PG not set: skipped");
        return;
    }
    let s = TestServer::start_on(Store::Postgres, |_| {}, |s| s).await;
    let keys = tempfile::tempdir().unwrap();
    let (_, key) = key_in(keys.path());
    let out = keys.path().join("pg.backup");
    let e = backup::create(&data_dir(&s), &out, &key, s.clock.now_s(), no_progress()).await.unwrap_err();
    assert_eq!(e.code, "backup_unsupported_store");
    assert!(e.message.contains("pg_dump"), "{}", e.message);
    assert!(!out.exists());
}
