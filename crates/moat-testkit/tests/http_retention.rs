//! Audit retention through the API with a fake clock: 100 days pass, the Super Admin runs
//! retention, old sign-in records leave one tenant's trail (sealed segments only, each removal
//! named by a checkpointed `audit.retention` record), a HIPAA tenant keeps everything, and
//! every trail still verifies — live, and offline from an export in Rust and in Python.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use moat_core::audit_bundle::{BundleOptions, verify_bundle};
use moat_core::checkpoint::NoteVerifier;
use moat_core::clock::Clock;
use moat_testkit::{PASSWORD, TestServer};
use serde_json::{Value, json};

const DAY_S: i64 = 86_400;

/// The trail entry of a retention run for a tenant.
fn trail_of<'a>(run: &'a Value, slug: &str) -> &'a Value {
    run["trails"].as_array().unwrap().iter().find(|t| t["tenant"] == slug).unwrap_or_else(|| panic!("no trail of {slug}: {run}"))
}

fn sum_records(list: &Value) -> u64 {
    list.as_array().unwrap().iter().map(|p| p["records"].as_u64().unwrap()).sum()
}

#[tokio::test]
async fn retention_removes_old_records_behind_signed_checkpoints_and_the_trail_still_verifies() {
    let s = TestServer::start_with(|c| {
        c.audit.retention_segment_records = 4;
        c.audit.retention_interval_s = 0;
    })
    .await;
    let acme = s.tenant_with_admin("acme").await;
    let beta = s.tenant_with_admin("beta").await;

    // A tenant can lengthen retention (HIPAA: six years of everything), never shorten it.
    let r = s.send(reqwest::Method::PUT, "/v1/policies/audit-retention", Some(&beta), Some(json!({"min_days": 2190})), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s.send(reqwest::Method::PUT, "/v1/policies/audit-retention", Some(&acme), Some(json!({"days": {"auth": 30}})), None).await;
    assert_eq!((r.status.as_u16(), r.code()), (422, "retention_too_short"), "{:?}", r.body);
    assert_eq!(s.get("/v1/policies/audit-retention", &beta).await.body, json!({"min_days": 2190}));

    // History: sign-ins (auth) and user changes (admin) in both tenants.
    for slug in ["acme", "beta"] {
        for _ in 0..6 {
            s.login(Some(slug), &format!("admin@{slug}.example"), PASSWORD).await;
        }
    }
    for i in 0..3 {
        s.user(&acme, "acme", &format!("u{i}@acme.example"), "viewer").await;
    }
    s.checkpointed(&acme).await;
    s.checkpointed(&beta).await;

    // 100 days later (tokens have expired: sign in again).
    s.clock.advance_s(100 * DAY_S);
    let sa = s.super_admin().await;
    let acme = s.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    let beta = s.login(Some("beta"), "admin@beta.example", PASSWORD).await;
    s.checkpointed(&acme).await;

    // Only the Super Admin runs retention.
    let denied = s.post("/v1/audit/prune", &acme, json!(null)).await;
    assert_eq!(denied.status, 403, "{:?}", denied.body);

    let admin_before = s.get("/v1/audit/events?category=admin&limit=1000", &acme).await.body["events"].as_array().unwrap().len();
    let dry = s.post("/v1/audit/prune?dry_run=true", &sa, json!(null)).await;
    assert_eq!(dry.status, 200, "{:?}", dry.body);
    let due = &trail_of(&dry.body, "acme")["due"];
    assert!(sum_records(due) > 0, "{}", dry.body);
    assert!(due.as_array().unwrap().iter().all(|p| p["category"] == "auth" && p["retention_days"] == 90), "{due}");
    assert!(trail_of(&dry.body, "acme")["pruned"].as_array().unwrap().is_empty(), "a dry run removes nothing");
    assert!(trail_of(&dry.body, "beta")["due"].as_array().unwrap().is_empty(), "beta keeps six years: {}", dry.body);
    assert_eq!(trail_of(&dry.body, "beta")["rules"]["auth"], 2190);

    let run = s.post("/v1/audit/prune", &sa, json!(null)).await;
    assert_eq!(run.status, 200, "{:?}", run.body);
    let pruned = sum_records(&trail_of(&run.body, "acme")["pruned"]);
    assert!(pruned >= sum_records(due), "{}", run.body);
    assert_eq!(sum_records(&trail_of(&run.body, "beta")["pruned"]), 0);

    // Acme's trail verifies with the removals accounted for; the removed records are gone from
    // search; the admin records of the same period stay (three years).
    let v = s.get("/v1/audit/verify", &acme).await;
    assert_eq!((v.body["ok"].as_bool(), v.body["pruned"].as_u64()), (Some(true), Some(pruned)), "{:?}", v.body);
    let auth = s.get("/v1/audit/events?category=auth&limit=1000", &acme).await;
    let cutoff_ms = (s.clock.now_s() - 90 * DAY_S) * 1000;
    let sealed = trail_of(&run.body, "acme")["sealed_through"].as_i64().unwrap();
    let events = auth.body["events"].as_array().unwrap();
    let seqs = |old: bool| -> Vec<i64> {
        events.iter().filter(|e| (e["ts_ms"].as_i64().unwrap() < cutoff_ms) == old).map(|e| e["seq"].as_i64().unwrap()).collect()
    };
    let (old, recent) = (seqs(true), seqs(false));
    // A segment's sign-ins go together, once its newest one is past retention: an old sign-in
    // stays only beyond the sealed segments or beside a recent one in its segment.
    let segment = |seq: i64| (seq - 1) / 4;
    let kept: Vec<i64> = old.iter().copied().filter(|seq| *seq <= sealed && !recent.iter().any(|r| segment(*r) == segment(*seq))).collect();
    assert!(kept.is_empty(), "old sign-ins in sealed, expired segments are gone: {kept:?} (sealed through {sealed}; old {old:?})");
    let admin = s.get("/v1/audit/events?category=admin&limit=1000", &acme).await;
    assert_eq!(admin.body["events"].as_array().unwrap().len(), admin_before);
    let retention = s.get("/v1/audit/events?action=audit.retention&limit=1000", &acme).await;
    assert!(!retention.body["events"].as_array().unwrap().is_empty());
    assert_eq!(s.get("/v1/audit/verify", &beta).await.body["pruned"], 0);

    // A proof of a removed record still leads to the signed checkpoint.
    let proof = s.get("/v1/audit/proof/inclusion?seq=2", &acme).await;
    assert_eq!(proof.status, 200, "{:?}", proof.body);

    // Offline: the export carries the removed records as leaf hashes and verifies in Rust ...
    let cp = s.checkpointed(&acme).await;
    let bundle = s.http.get(format!("{}/v1/audit/export", s.base)).bearer_auth(&acme).send().await.unwrap().text().await.unwrap();
    assert!(bundle.contains("\"pruned\":true"));
    let trail = serde_json::from_str::<Value>(bundle.lines().next().unwrap()).unwrap()["trail"].as_str().unwrap().to_owned();
    let opts = BundleOptions {
        pinned_key: Some(NoteVerifier::parse(cp["verifier_key"].as_str().unwrap()).unwrap()),
        hmac_key: Some(s.state.audit_keys.trail_key(&trail)),
        extra_checkpoints: vec![],
    };
    let r = verify_bundle(bundle.as_bytes(), &opts, |_, _| {}).unwrap();
    assert!(r.ok && r.pruned == pruned, "{r:?}");
    // ... and a forged removal (a record turned into a leaf hash by hand) is named.
    let victim = bundle.lines().find(|l| l.contains("user.create")).unwrap();
    let v: Value = serde_json::from_str(victim).unwrap();
    let forged_line = json!({"seq": v["seq"], "pruned": true, "leaf_hash": v["leaf_hash"]}).to_string();
    let forged = bundle.replacen(victim, &forged_line, 1);
    let f = verify_bundle(forged.as_bytes(), &opts, |_, _| {}).unwrap();
    assert_eq!((f.ok, f.first_bad_seq), (false, v["seq"].as_i64()), "{f:?}");

    // ... and in Python, without moat's code.
    let Ok(python) = std::env::var("MOAT_TEST_PYTHON") else {
        eprintln!("skipped the Python verifier: set MOAT_TEST_PYTHON=python3 (with `cryptography` installed)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/verify_audit_bundle.py");
    for (name, text, ok) in [("bundle", &bundle, true), ("forged", &forged, false)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(&python)
            .arg(script)
            .arg(&path)
            .args(["--key", cp["verifier_key"].as_str().unwrap()])
            .args(["--hmac-key", &hex::encode(s.state.audit_keys.trail_key(&trail))])
            .output()
            .unwrap();
        let report: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("python: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(report["ok"].as_bool(), Some(ok), "{name}: {report}");
        if ok {
            assert_eq!((report["pruned"].as_u64(), report["root"].as_str()), (Some(pruned), r.root.as_deref()), "{report}");
        } else {
            assert_eq!(report["first_bad_seq"].as_i64(), v["seq"].as_i64(), "{report}");
        }
    }
}
