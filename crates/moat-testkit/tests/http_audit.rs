//! The audit trail as a transparency log, from the auditor's side and the attacker's: signed
//! checkpoints that verify with nothing but the verifier key, proofs that lead to them, and a
//! tamper suite run by someone with write access to the database (triggers dropped) — every
//! tampering detected and named by `/v1/audit/verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use moat_core::checkpoint::{Checkpoint, NoteVerifier};
use moat_core::tlog;
use moat_testkit::TestServer;
use serde_json::{Value, json};

/// A tenant with some history, and its admin's token.
async fn history(s: &TestServer) -> String {
    let admin = s.tenant_with_admin("acme").await;
    for i in 0..6 {
        s.user(&admin, "acme", &format!("u{i}@acme.example"), "viewer").await;
    }
    admin
}

fn b64s(v: &Value) -> Vec<Vec<u8>> {
    v.as_array().unwrap().iter().map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap()).collect()
}

#[tokio::test]
async fn checkpoints_and_proofs_verify_with_the_public_key_alone() {
    let s = TestServer::start().await;
    let admin = history(&s).await;
    let cp = s.checkpointed(&admin).await;
    let verifier = NoteVerifier::parse(cp["verifier_key"].as_str().unwrap()).unwrap();
    let body = Checkpoint::parse_body(verifier.open(cp["note"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(body.origin, cp["origin"].as_str().unwrap());
    assert!(body.origin.starts_with("moat.local/audit/"), "{}", body.origin);
    assert_eq!(hex::encode(body.root), cp["root"].as_str().unwrap());

    // The published copy is the same note.
    let trail = body.origin.rsplit('/').next().unwrap().to_owned();
    let published = std::fs::read_to_string(s.dir.path().join("data/checkpoints").join(&trail).join("checkpoint")).unwrap();
    assert!(verifier.open(&published).is_ok());

    // Inclusion: record 3 (a user.create) is in the signed tree.
    let p = s.get("/v1/audit/proof/inclusion?seq=3", &admin).await;
    assert_eq!(p.status, 200, "{:?}", p.body);
    let note = p.body["checkpoint"]["note"].as_str().unwrap();
    let signed = Checkpoint::parse_body(verifier.open(note).unwrap()).unwrap();
    let events = s.get("/v1/audit/events?limit=3", &admin).await;
    let leaf: [u8; 32] = hex::decode(events.body["events"][2]["hash"].as_str().unwrap()).unwrap().try_into().unwrap();
    assert_eq!(hex::encode(leaf), p.body["leaf_hash"].as_str().unwrap());
    tlog::verify_inclusion(2, signed.size, &leaf, &b64s(&p.body["proof"]), &signed.root).expect("inclusion verifies");
    // Not for another leaf.
    assert!(tlog::verify_inclusion(3, signed.size, &leaf, &b64s(&p.body["proof"]), &signed.root).is_err());

    // Consistency: the log of 4 records is a prefix of the latest checkpoint.
    let old_root = {
        let r = s.get("/v1/audit/events?limit=4", &admin).await;
        let leaves: Vec<[u8; 32]> = r.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| hex::decode(e["hash"].as_str().unwrap()).unwrap().try_into().unwrap())
            .collect();
        tlog::root_of(&leaves)
    };
    let c = s.get("/v1/audit/proof/consistency?from=4", &admin).await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    let to = Checkpoint::parse_body(verifier.open(c.body["checkpoint"]["note"].as_str().unwrap()).unwrap()).unwrap();
    tlog::verify_consistency(4, to.size, &b64s(&c.body["proof"]), &old_root, &to.root).expect("consistent");

    // Bad requests are named errors.
    assert_eq!(s.get("/v1/audit/proof/inclusion?seq=0", &admin).await.code(), "not_in_checkpoint");
    assert_eq!(s.get("/v1/audit/proof/inclusion?seq=99999", &admin).await.code(), "not_in_checkpoint");
    assert_eq!(s.get("/v1/audit/proof/inclusion?seq=x", &admin).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/proof/consistency?from=0", &admin).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/proof/consistency?from=1&to=99999", &admin).await.code(), "no_checkpoint");

    // The verify report covers the HMACs and the checkpoints.
    let v = s.get("/v1/audit/verify", &admin).await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);
    assert_eq!(v.body["hmacs_checked"], v.body["checked"]);
    assert!(v.body["checkpoints_checked"].as_u64().unwrap() >= 2, "stored and published: {:?}", v.body);
    assert!(v.body["published_size"].as_u64().unwrap() >= 8);
    // And with progress lines.
    let r = s
        .http
        .get(format!("{}/v1/audit/verify", s.base))
        .bearer_auth(&admin)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["result"]["ok"], true, "{text}");
    assert!(text.lines().any(|l| l.contains("records_verified")), "{text}");
}

/// The trail after an attacker with database access ran `sql` (triggers dropped first; on
/// PostgreSQL as the superuser with triggers off). `tamper` gets the two tenants' trails and
/// whether the store is PostgreSQL (for the few statements whose dialect differs).
async fn verify_after(tamper: impl FnOnce(&str, &str, bool) -> Vec<String>) -> Value {
    let s = TestServer::start().await;
    let admin = history(&s).await;
    let other = s.tenant_with_admin("globex").await;
    s.checkpointed(&admin).await;
    s.checkpointed(&other).await;
    let tenant = |slug: &str| {
        let st = s.state.clone();
        let slug = slug.to_owned();
        async move { st.stores.meta.tenant_by_slug(&slug).await.unwrap().unwrap().id.to_string() }
    };
    let (a, b) = (tenant("acme").await, tenant("globex").await);
    if let Some(pg) = s.postgres() {
        pg.attack(&tamper(&a, &b, true)).await;
    } else {
        let db = s.dir.path().join("data/moat.db");
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        for t in ["audit_log_no_update", "audit_log_delete_only_by_retention", "audit_checkpoints_no_delete", "audit_trails_grow_only"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}"))).execute(&pool).await.unwrap();
        }
        for sql in tamper(&a, &b, false) {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        pool.close().await;
    }
    let v = s.get("/v1/audit/verify", &admin).await;
    if v.status == 503 {
        // A forged row sits where the next record goes: the writer cannot append, so the server
        // fails closed (even verifying is refused, being unrecordable) and says so on /readyz;
        // the operator verifies the store directly.
        assert_eq!(v.code(), "audit_unavailable");
        let ready = s.send(reqwest::Method::GET, "/readyz", None, None, None).await;
        assert_eq!(ready.body["checks"]["audit"], "unavailable", "{:?}", ready.body);
        let r = moat_server::http::audit::verify_trail(&s.state, &a, |_, _| {}).await.unwrap();
        return serde_json::to_value(r).unwrap();
    }
    assert_eq!(v.status, 200, "{:?}", v.body);
    v.body
}

/// SQL for the entry bytes with `from` replaced by `to`.
fn replace_in_entry(pg: bool, from: &str, to: &str) -> String {
    if pg {
        format!("convert_to(replace(convert_from(entry, 'UTF8'), '{from}', '{to}'), 'UTF8')")
    } else {
        format!("CAST(replace(CAST(entry AS TEXT), '{from}', '{to}') AS BLOB)")
    }
}

fn assert_broken(v: &Value, seq: Option<i64>, words: &str) {
    assert_eq!(v["ok"], false, "{v:?}");
    if let Some(seq) = seq {
        assert_eq!(v["first_bad_seq"], json!(seq), "{v:?}");
    }
    assert!(v["problem"].as_str().unwrap().contains(words), "{words:?} not in {v:?}");
}

#[tokio::test]
async fn an_edited_record_is_named() {
    let v = verify_after(|a, _, pg| {
        vec![format!(
            "UPDATE audit_log SET entry = {} WHERE trail = '{a}' AND seq = 3",
            replace_in_entry(pg, "\"category\":\"", "\"category\":\"x")
        )]
    })
    .await;
    assert_broken(&v, Some(3), "edited");
}

#[tokio::test]
async fn a_flipped_bit_is_named() {
    let v = verify_after(|a, _, pg| {
        vec![format!("UPDATE audit_log SET entry = {} WHERE trail = '{a}' AND seq = 2", replace_in_entry(pg, "\"seq\"", "\"sEq\""))]
    })
    .await;
    assert_broken(&v, Some(2), "edited");
}

#[tokio::test]
async fn an_edited_search_column_is_named() {
    let v = verify_after(|a, _, _| vec![format!("UPDATE audit_log SET action = 'auth.logout' WHERE trail = '{a}' AND seq = 3")]).await;
    assert_broken(&v, Some(3), "search columns");
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let v = verify_after(|a, _, _| vec![format!("DELETE FROM audit_log WHERE trail = '{a}' AND seq = 4")]).await;
    assert_broken(&v, Some(4), "missing");
}

#[tokio::test]
async fn reordered_records_are_named() {
    let v = verify_after(|a, _, _| {
        vec![
            format!("UPDATE audit_log SET seq = -1 WHERE trail = '{a}' AND seq = 2"),
            format!("UPDATE audit_log SET seq = 2 WHERE trail = '{a}' AND seq = 3"),
            format!("UPDATE audit_log SET seq = 3 WHERE trail = '{a}' AND seq = -1"),
        ]
    })
    .await;
    assert_broken(&v, Some(2), "reordered");
}

#[tokio::test]
async fn an_inserted_record_is_named() {
    let v = verify_after(|a, _, pg| {
        vec![
            format!("UPDATE audit_log SET seq = -(seq + 1) WHERE trail = '{a}' AND seq >= 3"),
            format!("UPDATE audit_log SET seq = -seq WHERE trail = '{a}' AND seq < 0"),
            format!(
                "INSERT INTO audit_log SELECT trail, 3, ts_ms, event_id || 'x', category, action, outcome, actor, resource, entry, leaf_hash, hmac{} FROM audit_log WHERE trail = '{a}' AND seq = 2",
                if pg { ", search" } else { "" }
            ),
        ]
    })
    .await;
    assert_broken(&v, Some(3), "reordered");
}

#[tokio::test]
async fn a_truncated_tail_is_named_even_with_the_stored_checkpoints_gone() {
    // The attacker removes the newest records and every stored checkpoint; the published
    // checkpoint, off the database, still covers them.
    let v = verify_after(|a, _, _| {
        vec![format!("DELETE FROM audit_log WHERE trail = '{a}' AND seq > 5"), format!("DELETE FROM audit_checkpoints WHERE trail = '{a}'")]
    })
    .await;
    assert_broken(&v, Some(6), "removed from the end");
}

#[tokio::test]
async fn records_swapped_between_tenants_are_named() {
    let v = verify_after(|a, b, _| {
        vec![
            format!("UPDATE audit_log SET trail = 'swap' WHERE trail = '{a}' AND seq = 1"),
            format!("UPDATE audit_log SET trail = '{a}' WHERE trail = '{b}' AND seq = 1"),
            format!("UPDATE audit_log SET trail = '{b}' WHERE trail = 'swap' AND seq = 1"),
        ]
    })
    .await;
    assert_broken(&v, Some(1), "moved between trails");
}

/// The export bundle: verified offline by moat's verifier with the pinned key, the trail's
/// HMAC key and the published checkpoint, and by an independent Python verifier (when
/// `MOAT_TEST_PYTHON` is set); a forged copy fails both, at the same record. Another tenant's
/// export holds none of this tenant's records.
#[tokio::test]
async fn an_export_verifies_offline_and_independently() {
    use moat_core::audit_bundle::{BundleHeader, BundleOptions, verify_bundle};
    let s = TestServer::start().await;
    let admin = history(&s).await;
    let other = s.tenant_with_admin("globex").await;
    let cp = s.checkpointed(&admin).await;
    let export = |token: String| {
        let req = s.http.get(format!("{}/v1/audit/export", s.base)).bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "application/x-ndjson");
            r.text().await.unwrap()
        }
    };
    let bundle = export(admin.clone()).await;
    let header: BundleHeader = serde_json::from_str(bundle.lines().next().unwrap()).unwrap();
    assert_eq!(header.verifier_key, cp["verifier_key"].as_str().unwrap());
    let published = std::fs::read_to_string(s.dir.path().join("data/checkpoints").join(&header.trail).join("checkpoint")).unwrap();
    let opts = || BundleOptions {
        pinned_key: Some(NoteVerifier::parse(cp["verifier_key"].as_str().unwrap()).unwrap()),
        hmac_key: Some(s.state.audit_keys.trail_key(&header.trail)),
        extra_checkpoints: vec![published.clone()],
    };
    let r = verify_bundle(bundle.as_bytes(), &opts(), |_, _| {}).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.checked, r.hmacs_checked), (header.size, header.size));
    assert!(r.checkpointed >= cp["size"].as_u64().unwrap() && r.checkpoints_checked >= 2, "{r:?}");
    // The bundle ends with its own export record.
    let last: Value = serde_json::from_str(bundle.lines().last().unwrap()).unwrap();
    assert!(last["entry"].as_str().unwrap().contains("\"action\":\"audit.export\""), "{last}");

    // A forged copy: one record's resource changed.
    let forged = bundle.replacen("user:", "usEr:", 1);
    let bad_seq = forged.lines().skip(1).find(|l| l.contains("usEr:")).map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].clone());
    let f = verify_bundle(forged.as_bytes(), &opts(), |_, _| {}).unwrap();
    assert!(!f.ok && f.problem.as_deref().unwrap().contains("edited"), "{f:?}");
    assert_eq!(bad_seq.and_then(|v| v.as_i64()), f.first_bad_seq);

    // Globex's bundle is globex's trail only.
    let theirs = export(other).await;
    assert!(!theirs.contains(&header.trail), "another tenant's export names acme's trail");

    // The same verdicts from code that is not moat's.
    let Ok(python) = std::env::var("MOAT_TEST_PYTHON") else {
        eprintln!("skipped the Python verifier: set MOAT_TEST_PYTHON=python3 (with `cryptography` installed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/verify_audit_bundle.py");
    let run = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::write(dir.path().join("published"), &published).unwrap();
        let out = std::process::Command::new(&python)
            .arg(script)
            .arg(&path)
            .args(["--key", cp["verifier_key"].as_str().unwrap()])
            .args(["--hmac-key", &hex::encode(s.state.audit_keys.trail_key(&header.trail))])
            .arg("--checkpoint")
            .arg(dir.path().join("published"))
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("python: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, py) = run("bundle.ndjson", &bundle);
    assert_eq!(code, Some(0), "{py}");
    assert_eq!(py["root"].as_str(), r.root.as_deref(), "same root from an independent implementation");
    assert_eq!((py["checked"].as_u64(), py["hmacs_checked"].as_u64()), (Some(r.checked), Some(r.checked)));
    let (code, py) = run("forged.ndjson", &forged);
    assert_eq!(code, Some(1), "{py}");
    assert_eq!(py["first_bad_seq"].as_i64(), f.first_bad_seq, "{py}");
    // A truncated copy (the last two records cut, header unchanged) fails in both.
    let truncated: String = bundle.lines().take(bundle.lines().count() - 2).map(|l| format!("{l}\n")).collect();
    let (code, py) = run("truncated.ndjson", &truncated);
    assert_eq!(code, Some(1), "{py}");
    assert!(!verify_bundle(truncated.as_bytes(), &opts(), |_, _| {}).unwrap().ok);
}

/// Fail closed: while the audit store cannot write, audited requests are refused with 503
/// `audit_unavailable` (a query's answer never leaves unrecorded) and `/readyz` says so; once it
/// can write again, service resumes and the trail still verifies.
#[tokio::test]
async fn an_unwritable_audit_store_refuses_requests_and_readyz_says_so() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    // The fault: every insert into the audit log fails (a full disk, a lost privilege).
    let (fault, repair) = if s.postgres().is_some() {
        (
            vec![
                "CREATE FUNCTION moat.audit_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$"
                    .to_owned(),
                "CREATE TRIGGER audit_fault BEFORE INSERT ON moat.audit_log FOR EACH ROW EXECUTE FUNCTION moat.audit_fault()".to_owned(),
            ],
            vec!["DROP TRIGGER audit_fault ON moat.audit_log".to_owned()],
        )
    } else {
        (
            vec!["CREATE TRIGGER audit_fault BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'injected fault'); END".to_owned()],
            vec!["DROP TRIGGER audit_fault".to_owned()],
        )
    };
    attack(&s, &fault).await;

    let q = s.query(&admin, "SELECT 4242 AS answer").await;
    assert_eq!((q.status.as_u16(), q.code()), (503, "audit_unavailable"), "{:?}", q.body);
    assert!(!q.body.to_string().contains("4242"), "no answer without its record: {:?}", q.body);
    let login = s.login_raw(Some("acme"), "admin@acme.example", moat_testkit::PASSWORD).await;
    assert_eq!((login.status.as_u16(), login.code()), (503, "audit_unavailable"), "{:?}", login.body);
    let ready = s.send(reqwest::Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status.as_u16(), 503);
    assert_eq!(ready.body["checks"]["audit"], "unavailable", "{:?}", ready.body);

    attack(&s, &repair).await;
    let q = s.query(&admin, "SELECT 4242 AS answer").await;
    assert_eq!(q.status.as_u16(), 200, "{:?}", q.body);
    let ready = s.send(reqwest::Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status.as_u16(), 200, "{:?}", ready.body);
    let v = s.get("/v1/audit/verify", &admin).await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);
}

/// Runs `statements` on the server's store directly, as someone with access to the database.
async fn attack(s: &TestServer, statements: &[String]) {
    if let Some(pg) = s.postgres() {
        return pg.attack(statements).await;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(s.dir.path().join("data/moat.db"));
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone())).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    pool.close().await;
}

/// A GET with a stated justification; the raw response.
async fn get_justified(s: &TestServer, path: &str, token: &str, why: &str) -> reqwest::Response {
    s.http.get(format!("{}{path}", s.base)).bearer_auth(token).header("x-moat-justification", why).send().await.unwrap()
}

async fn report(s: &TestServer, kind: &str, token: &str) -> moat_testkit::Resp {
    s.get(&format!("/v1/audit/reports/{kind}"), token).await
}

fn report_rows<'a>(r: &'a Value, key: &str, want: &str) -> Vec<&'a Value> {
    r["rows"].as_array().unwrap().iter().filter(|row| row[key] == want).collect()
}

/// The four auditor reports over a tenant's real history, in every format: what they answer,
/// that another tenant's history never shows, that stating a justification lands in them, and
/// that reading them is itself recorded.
#[tokio::test]
async fn reports_answer_the_auditors_questions_for_the_callers_tenant_only() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let other = s.tenant_with_admin("globex").await;
    let csv = "id,name,email\n1,Ann Lee,ann@x.example\n2,Bob Ray,bob@y.example\n3,Cy Ho,cy@z.example\n";
    assert!(s.put_csv("/v1/tables/customers", &admin, csv).await.status.is_success());
    assert!(s.put_csv("/v1/tables/customers", &other, csv).await.status.is_success());
    let (_, auditor) = s.user(&admin, "acme", "aud@acme.example", "auditor").await;
    let (_, analyst) = s.user(&admin, "acme", "ana@acme.example", "editor").await;
    let (_, viewer) = s.user(&admin, "acme", "vi@acme.example", "viewer").await;
    let (_, rival) = s.user(&other, "globex", "ana@globex.example", "editor").await;

    // An admin change with a justification; a justification that is too long is refused and
    // nothing happens.
    let create = |why: String| {
        s.http
            .post(format!("{}/v1/users", s.base))
            .bearer_auth(&admin)
            .header("x-moat-justification", why)
            .json(&json!({"email": "hire@acme.example", "password": moat_testkit::PASSWORD, "role": "viewer"}))
            .send()
    };
    let r = create("x".repeat(501)).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_justification");
    assert_eq!(create("JIRA-42 new hire".into()).await.unwrap().status(), 201);

    // Reads: one JSON answer, one CSV export with a justification; globex reads too.
    let json_answer = s.query(&analyst, "SELECT * FROM customers").await;
    assert_eq!(json_answer.status, 200);
    let masked: Vec<String> = json_answer.body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["masking"] != "none")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let exported = s
        .http
        .post(format!("{}/v1/query", s.base))
        .bearer_auth(&analyst)
        .header("accept", "text/csv")
        .header("x-moat-justification", "board pack")
        .json(&json!({"sql": "SELECT id, name FROM customers"}))
        .send()
        .await
        .unwrap();
    assert_eq!(exported.status(), 200);
    assert_eq!(exported.text().await.unwrap().lines().count(), 4);
    assert_eq!(s.query(&rival, "SELECT * FROM customers").await.status, 200);

    // Failures: twelve wrong passwords for the analyst (locked after five), a viewer knocking
    // on admin endpoints, and globex failures that acme's report must not show.
    for _ in 0..12 {
        assert!(s.login_raw(Some("acme"), "ana@acme.example", "wrong-password").await.status.is_client_error());
        s.login_raw(Some("globex"), "ana@globex.example", "wrong-password").await;
    }
    for _ in 0..5 {
        assert_eq!(s.get("/v1/users", &viewer).await.status, 403);
    }

    // access: streamed rows arrive with the query's end record, written as the stream ends.
    let mut access = Value::Null;
    for _ in 0..50 {
        access = report(&s, "access", &auditor).await.body;
        let ana = report_rows(&access, "actor", "ana@acme.example");
        if ana.iter().any(|r| r["object"] == "customers" && r["rows_returned"] == 6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ana: Vec<_> = report_rows(&access, "actor", "ana@acme.example").into_iter().filter(|r| r["object"] == "customers").collect();
    assert_eq!(ana.len(), 1, "{access}");
    assert_eq!(ana[0]["reads"], 2, "{access}");
    assert_eq!(ana[0]["rows_returned"], 6, "{access}");
    assert_eq!(ana[0]["role"], "editor");
    assert_eq!(ana[0]["source_ips"], "127.0.0.1");
    let mut listed: Vec<&str> = ana[0]["masked_columns"].as_str().unwrap().split(',').filter(|c| !c.is_empty()).collect();
    listed.sort_unstable();
    let mut want: Vec<&str> = masked.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(listed, want, "the columns the analyst saw masked");
    let admin_writes = report_rows(&access, "actor", "admin@acme.example");
    assert!(admin_writes.iter().any(|r| r["object"] == "customers" && r["writes"] == 1), "{access}");
    assert!(!access.to_string().contains("globex"), "another tenant's access in acme's report: {access}");
    assert!(access["through_seq"].as_i64().unwrap() > 0);

    // admin: the change with its justification, apart from the details.
    let admin_report = report(&s, "admin", &auditor).await.body;
    let hires: Vec<_> =
        report_rows(&admin_report, "action", "user.create").into_iter().filter(|r| r["justification"] == "JIRA-42 new hire").collect();
    assert_eq!(hires.len(), 1, "{admin_report}");
    assert_eq!(hires[0]["actor"], "admin@acme.example");
    assert!(!hires[0]["details"].as_str().unwrap().contains("JIRA"), "{admin_report}");
    assert!(!admin_report.to_string().contains("globex"), "{admin_report}");

    // failed: the guessing is named, the knocking too; globex's is not there.
    let failed = report(&s, "failed", &auditor).await.body;
    let guessed = report_rows(&failed, "actor", "ana@acme.example");
    assert_eq!(guessed.len(), 1, "{failed}");
    assert_eq!(guessed[0]["attempts"], 12, "{failed}");
    assert_eq!(guessed[0]["lockouts"], 1, "{failed}");
    let pattern = guessed[0]["pattern"].as_str().unwrap();
    assert!(pattern.contains("brute_force") && pattern.contains("lockout"), "{failed}");
    let knocks = report_rows(&failed, "actor", "vi@acme.example");
    assert_eq!(knocks[0]["denials"], 5, "{failed}");
    assert!(knocks[0]["pattern"].as_str().unwrap().contains("privilege_probing"), "{failed}");
    assert!(!failed.to_string().contains("globex"), "{failed}");

    // exports: the CSV result with its justification and size; the reports read so far.
    let exports = report(&s, "exports", &auditor).await.body;
    let files = report_rows(&exports, "format", "csv");
    assert_eq!(files.len(), 1, "{exports}");
    assert_eq!((&files[0]["rows"], &files[0]["status"], &files[0]["justification"]), (&json!(3), &json!("complete"), &json!("board pack")));
    assert_eq!(files[0]["actor"], "ana@acme.example");
    assert!(report_rows(&exports, "action", "audit.report").len() >= 3, "reports are exports too: {exports}");

    // CSV and Parquet: the same rows as JSON, with the coverage stated.
    let period = format!("from={}", access["from"].as_str().unwrap()).replace(':', "%3A");
    let json_rows = s.get(&format!("/v1/audit/reports/admin?{period}"), &auditor).await.body["rows"].as_array().unwrap().len();
    let r = get_justified(&s, &format!("/v1/audit/reports/admin?format=csv&{period}"), &auditor, "SOC 2 fieldwork").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let text = r.text().await.unwrap();
    assert!(text.starts_with("seq,at,actor,role,super_admin,action,resource,outcome,source_ip,justification,details\n"), "{text}");
    assert!(text.contains("JIRA-42 new hire"), "{text}");
    let r = s.http.get(format!("{}/v1/audit/reports/admin?format=parquet&{period}", s.base)).bearer_auth(&auditor).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/vnd.apache.parquet");
    let through = r.headers()["x-moat-report-through-seq"].to_str().unwrap().to_owned();
    let pq = r.bytes().await.unwrap();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq).unwrap();
    let kv = reader.metadata().file_metadata().key_value_metadata().unwrap().clone();
    assert!(kv.iter().any(|k| k.key == "moat.through_seq" && k.value.as_deref() == Some(through.as_str())), "{kv:?}");
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, json_rows);

    // Bad requests are named; a viewer is refused (and that is recorded); the Super Admin
    // reads acme's only when naming it.
    assert_eq!(s.get("/v1/audit/reports/salaries", &auditor).await.code(), "unknown_report");
    assert_eq!(s.get("/v1/audit/reports/admin?format=xml", &auditor).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/reports/admin?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", &auditor).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/reports/admin?from=yesterday", &auditor).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/reports/admin?colour=red", &auditor).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/reports/admin", &viewer).await.status, 403);
    assert_eq!(s.get("/v1/audit/reports/admin", &rival).await.status, 403);
    let sa = s.super_admin().await;
    assert_eq!(s.get("/v1/audit/reports/admin", &sa).await.code(), "tenant_required");
    let theirs = s.get("/v1/audit/reports/admin?tenant=acme", &sa).await;
    assert!(theirs.body.to_string().contains("JIRA-42"), "{:?}", theirs.body);

    // Every report read is in the trail, with its justification when one was given.
    let trail = s.audit_of(Some("acme")).await;
    let reads: Vec<_> = trail.iter().filter(|r| r.action == "audit.report").collect();
    assert!(reads.len() >= 8, "{}", reads.len());
    assert!(reads.iter().any(|r| r.details["format"] == "csv" && r.details["justification"] == "SOC 2 fieldwork"));
    assert!(reads.iter().any(|r| r.actor["super_admin"] == true));
    let denied: Vec<_> = trail.iter().filter(|r| r.action == "authz.denied").map(|r| r.resource.clone()).collect();
    assert!(denied.contains(&Some("GET /v1/audit/reports/admin".into())), "{denied:?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// An operator (or an attacker with the backups) puts an old, internally consistent copy of the
/// store back: every record, node, trail head and stored checkpoint agrees with every other, so
/// only a checkpoint kept outside the database can tell — and it does, naming the first record
/// the restored store lost.
#[tokio::test]
async fn a_restored_old_backup_is_named_by_the_published_checkpoint() {
    use moat_store::audit_log::{CheckpointSink, DirSink, verify_trail};
    let s = TestServer::start().await;
    if s.postgres().is_some() {
        // The attack is the same on PostgreSQL (pg_dump, later pg_restore); the verifier's side
        // is store-independent and runs here on SQLite's file copy.
        eprintln!("skipped on PostgreSQL: the restore is exercised on the embedded store");
        return;
    }
    let admin = history(&s).await;
    s.checkpointed(&admin).await;
    let data = s.dir.path().join("data");
    let backup = s.dir.path().join("backup.db");
    let pool = sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(data.join("moat.db"))).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO '{}'", backup.display()))).execute(&pool).await.unwrap();
    pool.close().await;
    for i in 0..3 {
        s.user(&admin, "acme", &format!("late{i}@acme.example"), "viewer").await;
    }
    let published = s.checkpointed(&admin).await;

    // The data dir as it is now (keys, published checkpoints), the old store put back.
    let restored = tempfile::tempdir().unwrap();
    let dir = moat_server::config::DataDir::new(restored.path().join("data"));
    copy_dir(&data, &dir.root);
    for stale in ["moat.db-wal", "moat.db-shm"] {
        let _ = std::fs::remove_file(dir.root.join(stale));
    }
    std::fs::copy(&backup, dir.root.join("moat.db")).unwrap();
    let cfg = moat_server::bootstrap::load_config(&dir).unwrap();
    let stores = moat_store::open_with(&cfg.store_url(&dir.root), cfg.store.admin_url.as_deref()).await.unwrap();
    let keys = moat_server::bootstrap::audit_keys(&dir).unwrap();
    let checkpoint_key = moat_server::bootstrap::checkpoint_key(&dir, &cfg).unwrap();
    let trail = published["trail"].as_str().unwrap();
    let head = stores.audit.trail_head(trail).await.unwrap();
    assert!(head.size < published["size"].as_u64().unwrap(), "the backup is older than the published checkpoint");

    // By itself the restored store is consistent: that is what makes a backup dangerous.
    let alone = verify_trail(&*stores.audit, &keys, &checkpoint_key, None, trail, |_, _| {}).await.unwrap();
    assert!(alone.ok, "{alone:?}");
    // Against the published checkpoint it is not.
    let sink = cfg.publish_dir(&dir.root).map(DirSink::new).unwrap();
    let r = verify_trail(&*stores.audit, &keys, &checkpoint_key, Some(&sink as &dyn CheckpointSink), trail, |_, _| {}).await.unwrap();
    let v = serde_json::to_value(&r).unwrap();
    assert_broken(&v, Some(head.size as i64 + 1), "removed from the end");
}

/// Reads NDJSON lines from a streamed answer until `enough` says so (or 10 s pass).
async fn read_lines(r: &mut reqwest::Response, buf: &mut String, lines: &mut Vec<Value>, enough: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !enough(lines) {
        let chunk = tokio::time::timeout_at(deadline, r.chunk()).await.expect("stream went quiet").unwrap().expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            lines.push(serde_json::from_str(&line).unwrap());
        }
    }
}

/// The trail as a stream for SIEM forwarders: bounded reads resume from a sequence number
/// without gaps or repeats, a live stream delivers new records as they commit and never another
/// tenant's, streams per tenant are capped, and shutting down ends them.
#[tokio::test]
async fn the_trail_streams_to_forwarders_in_order_and_live() {
    let s = TestServer::start_with(|c| c.audit.max_streams_per_tenant = 2).await;
    let admin = history(&s).await;
    let other = s.tenant_with_admin("globex").await;

    // Bounded: everything after 2, up to and including the stream's own record.
    let r = s.http.get(format!("{}/v1/audit/stream?after=2", s.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let seqs: Vec<i64> = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap()).collect();
    let last = *seqs.last().unwrap();
    assert_eq!(seqs, (3..=last).collect::<Vec<_>>(), "in order, no gaps");
    assert!(text.lines().last().unwrap().contains("\"audit.stream\""), "ends with its own record: {text}");
    // Resuming after the last one gives only what came since: the resumed stream's record.
    let again =
        s.http.get(format!("{}/v1/audit/stream?after={last}", s.base)).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    let again: Vec<Value> = again.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0]["seq"].as_i64(), again[0]["action"].as_str()), (Some(last + 1), Some("audit.stream")));
    // Filtered by category.
    let admin_only =
        s.http.get(format!("{}/v1/audit/stream?category=admin", s.base)).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    assert!(admin_only.lines().all(|l| l.contains("\"category\":\"admin\"")) && admin_only.lines().count() >= 7, "{admin_only}");

    // Live: records arrive as they commit; globex's never do.
    let mut live =
        s.http.get(format!("{}/v1/audit/stream?follow=true&after={}", s.base, last + 1)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let (mut buf, mut lines) = (String::new(), Vec::new());
    read_lines(&mut live, &mut buf, &mut lines, |l| l.iter().any(|e| e["action"] == "audit.stream")).await;
    s.user(&other, "globex", "late@globex.example", "viewer").await;
    s.user(&admin, "acme", "late@acme.example", "viewer").await;
    read_lines(&mut live, &mut buf, &mut lines, |l| l.iter().any(|e| e["details"]["email"] == "late@acme.example")).await;
    assert!(!lines.iter().any(|e| e.to_string().contains("globex")), "another tenant's record in the stream: {lines:?}");
    let seqs: Vec<i64> = lines.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Two live streams per tenant here: the third is refused; globex has its own.
    let second = s.http.get(format!("{}/v1/audit/stream?follow=true", s.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let third = s.get("/v1/audit/stream?follow=true", &admin).await;
    assert_eq!((third.status.as_u16(), third.code()), (429, "too_many_streams"));
    let theirs = s.http.get(format!("{}/v1/audit/stream?follow=true", s.base)).bearer_auth(&other).send().await.unwrap();
    assert_eq!(theirs.status(), 200);

    // Bad input is named; a viewer may not read the trail.
    assert_eq!(s.get("/v1/audit/stream?after=-1", &admin).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/stream?category=gossip", &admin).await.code(), "invalid_query");
    let (_, viewer) = s.user(&other, "globex", "v@globex.example", "viewer").await;
    assert_eq!(s.get("/v1/audit/stream", &viewer).await.status, 403);

    // Shutting down ends live streams (graceful shutdown does not wait for them).
    s.state.closing.cancel();
    let rest = tokio::time::timeout(Duration::from_secs(5), live.text()).await.expect("the live stream ended");
    assert!(rest.is_ok());
}
