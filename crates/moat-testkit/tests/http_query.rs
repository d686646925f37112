//! The governed query path over HTTP: ingest, catalog, classification, three roles' views,
//! tenants with the same table names, limits, and the audit record of every query.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::serde_json::{Value, json};
use moat_testkit::{Resp, TestServer};

use moat_testkit::{CUSTOMERS_A as CSV_A, CUSTOMERS_B as CSV_B};

/// Tenant `acme` with the labelled `customers` table; tokens of its admin, an editor and a viewer.
async fn acme_with_roles() -> (TestServer, String, String, String) {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    s.put_csv("/v1/tables/customers", &admin, CSV_A).await;
    s.label_customers(&admin).await;
    let (_, editor) = s.user(&admin, "acme", "e@acme.example", "editor").await;
    let (_, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    (s, admin, editor, viewer)
}

fn col<'a>(r: &'a Resp, name: &str) -> &'a Value {
    r.body["columns"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn ingest_catalog_and_atomic_replace() {
    // Without the scanner, to see what an unlabelled column is.
    let s = TestServer::start_with(|c| c.scan.on_ingest = false).await;
    let admin = s.tenant_with_admin("acme").await;
    let r = s.put_csv("/v1/tables/customers?domain=sales&product=crm", &admin, CSV_A).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!((r.body["version"].as_i64(), r.body["row_count"].as_i64()), (Some(1), Some(2)));
    let list = s.get("/v1/tables", &admin).await;
    let t = &list.body["tables"][0];
    assert_eq!((t["name"].as_str(), t["domain"].as_str(), t["product"].as_str()), (Some("customers"), Some("sales"), Some("crm")));
    let ssn = t["columns"].as_array().unwrap().iter().find(|c| c["name"] == "ssn").unwrap();
    assert_eq!(
        (ssn["classification"].as_str(), ssn["source"].as_str(), ssn["type"].as_str()),
        (Some("RESTRICTED"), Some("default"), Some("Utf8")),
        "unclassified = RESTRICTED"
    );
    // A broken replacement leaves version 1 in place.
    let bad = s.put_csv("/v1/tables/customers", &admin, "id,name\n1,x\n2\n").await;
    assert_eq!((bad.status, bad.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_csv"));
    assert!(bad.body["error"]["message"].as_str().unwrap().contains("line"), "{:?}", bad.body);
    let q = s.query(&admin, "SELECT count(*) AS n FROM customers").await;
    assert_eq!(q.body["rows"][0][0], 2);
    // A good replacement is version 2; a manual label survives it.
    s.label(&admin, "ssn", "RESTRICTED", "direct", Some("ssn")).await;
    let r = s.put_csv("/v1/tables/customers", &admin, format!("{CSV_A}3,Cy Doe,cy@acme.com,111-22-3333,pro,9\n")).await;
    assert_eq!((r.status, r.body["version"].as_i64()), (StatusCode::OK, Some(2)));
    assert_eq!(s.query(&admin, "SELECT count(*) FROM customers").await.body["rows"][0][0], 3);
    let t = s.get("/v1/tables/customers", &admin).await;
    let ssn = t.body["columns"].as_array().unwrap().iter().find(|c| c["name"] == "ssn").unwrap();
    assert_eq!(ssn["source"], "manual");
    // Bad input.
    for (path, body, code) in [
        ("/v1/tables/Bad-Name", CSV_A, "invalid_name"),
        ("/v1/tables/information_schema", CSV_A, "invalid_name"),
        ("/v1/tables/t?domain=..%2Fetc", CSV_A, "invalid_name"),
        ("/v1/tables/t", "", "empty_csv"),
        ("/v1/tables/t", "a,b\n", "no_rows"),
        ("/v1/tables/t", "a,a\n1,2\n", "invalid_header"),
        ("/v1/tables/t?types=a:money", "a\n1\n", "invalid_type"),
    ] {
        let r = s.put_csv(path, &admin, body).await;
        assert_eq!(r.code(), code, "{path} {body:?}: {:?}", r.body);
    }
    // JSON is a link to a PostgreSQL relation: anything else in it is named.
    let r = s.send(Method::PUT, "/v1/tables/t", Some(&admin), Some(json!({"a": 1})), None).await;
    assert_eq!(r.code(), "malformed_json");
    assert!(r.body["error"]["message"].as_str().unwrap_or_default().contains("`a`"), "{:?}", r.body);
    let r = s.put_body("/v1/tables/t", &admin, "text/plain", "a\n1\n").await;
    assert_eq!(r.code(), "unsupported_media_type");
    assert_eq!(s.get("/v1/tables/t", &admin).await.status, StatusCode::NOT_FOUND, "failed uploads leave nothing");
    assert_eq!(s.send(Method::DELETE, "/v1/tables/customers", Some(&admin), None, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.query(&admin, "SELECT * FROM customers").await.code(), "query_error");
}

#[tokio::test]
async fn upload_limit_is_413() {
    let s = TestServer::start_with(|c| c.ingest.body_limit_bytes = 4096).await;
    let admin = s.tenant_with_admin("acme").await;
    let mut big = String::from("id,v\n");
    for i in 0..2000 {
        big.push_str(&format!("{i},value-{i}\n"));
    }
    let r = s.put_csv("/v1/tables/big", &admin, big).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    assert_eq!(s.get("/v1/tables/big", &admin).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn who_may_write_classify_and_query() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    s.put_csv("/v1/tables/customers", &admin, CSV_A).await;
    let (_, editor) = s.user(&admin, "acme", "e@acme.example", "editor").await;
    let (_, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    let (_, auditor) = s.user(&admin, "acme", "a@acme.example", "auditor").await;
    assert_eq!(s.put_csv("/v1/tables/mine", &editor, CSV_A).await.status, StatusCode::CREATED, "Editor+ writes");
    assert_eq!(s.put_csv("/v1/tables/mine", &viewer, CSV_A).await.status, StatusCode::FORBIDDEN);
    let r = s.send(Method::PUT, "/v1/tables/customers/columns/ssn", Some(&editor), Some(json!({"classification": "PUBLIC"})), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only Admins classify");
    assert_eq!(s.query(&auditor, "SELECT 1").await.status, StatusCode::FORBIDDEN, "auditors read no data");
    assert_eq!(s.get("/v1/tables", &auditor).await.status, StatusCode::FORBIDDEN);
    for (body, code) in [
        (json!({"classification": "SECRET"}), "invalid_classification"),
        (json!({"classification": "PUBLIC", "pii": "maybe"}), "invalid_pii"),
        (json!({"classification": "PUBLIC", "mask": "blur"}), "invalid_mask"),
    ] {
        assert_eq!(s.send(Method::PUT, "/v1/tables/customers/columns/ssn", Some(&admin), Some(body), None).await.code(), code);
    }
    assert_eq!(
        s.send(Method::PUT, "/v1/tables/customers/columns/nope", Some(&admin), Some(json!({"classification": "PUBLIC"})), None)
            .await
            .code(),
        "column_not_found"
    );
    let r = s
        .send(
            Method::PUT,
            "/v1/tables/customers/columns/ssn",
            Some(&admin),
            Some(json!({"classification": "RESTRICTED", "pii": "direct", "entity": "ssn"})),
            None,
        )
        .await;
    assert_eq!((r.status, r.body["source"].as_str()), (StatusCode::OK, Some("manual")));
    let rec = s.audit_of(Some("acme")).await.into_iter().find(|e| e.action == "classification.change").unwrap();
    assert_eq!(
        (rec.details["from"]["classification"].as_str(), rec.details["to"]["classification"].as_str()),
        (Some("RESTRICTED"), Some("RESTRICTED"))
    );
    // Accepting the scanner's proposal by hand is a change of source, and audited as one.
    assert_eq!((rec.details["from"]["source"].as_str(), rec.details["to"]["source"].as_str()), (Some("scanner"), Some("manual")));
}

#[tokio::test]
async fn three_roles_see_three_views_and_nothing_leaks() {
    let (s, admin, editor, viewer) = acme_with_roles().await;
    let sql = "SELECT * FROM customers ORDER BY id";
    let a = s.query(&admin, sql).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["rows"][0], json!([1, "Ann Canary", "ann@acme-secret.com", "123-45-6789", "pro", 100]));
    let e = s.query(&editor, sql).await;
    assert_eq!(e.body["rows"][0], json!([1, "Ann Canary", "ann@acme-secret.com", "****", "pro", 100]));
    let v = s.query(&viewer, sql).await;
    let names: Vec<&str> = v.body["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["id", "name", "email", "ssn", "plan"], "revenue omitted");
    assert_eq!(v.body["rows"][0][2], "a***@***.com");
    assert_eq!(v.body["rows"][0][3], "****");
    assert_eq!(col(&v, "ssn")["classification"], "RESTRICTED");
    assert_eq!(col(&v, "ssn")["masking"], "full");
    assert_eq!(col(&v, "plan")["masking"], "none");
    let text = v.body.to_string();
    for secret in ["Ann Canary", "ann@acme-secret.com", "123-45-6789", "6789"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    for probe in [
        "SELECT id FROM customers WHERE ssn = '123-45-6789'",
        "SELECT id FROM customers WHERE name = 'Ann Canary'",
        "SELECT id FROM customers WHERE email LIKE 'ann@%'",
    ] {
        let r = s.query(&viewer, probe).await;
        assert_eq!(r.body["row_count"], 0, "{probe}");
    }
    let err = s.query(&viewer, "SELECT CAST(ssn AS INT) FROM customers").await;
    assert!(!err.body.to_string().contains("6789"), "{:?}", err.body);
    assert_eq!(s.query(&viewer, "EXPLAIN SELECT * FROM customers").await.code(), "explain_not_allowed");
    // CSV and Arrow answers carry the same governed data, streamed.
    let csv = s.query_as(&viewer, sql, "text/csv").await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(csv.headers()["x-moat-streamed"], "true");
    assert!(csv.headers().get("x-moat-columns").is_some());
    assert_eq!(csv.headers()["x-moat-classification"], "RESTRICTED", "an export is labelled by its most sensitive column");
    let body = csv.text().await.unwrap();
    assert!(body.starts_with("id,name,email,ssn,plan\n") && !body.contains("6789"), "{body}");
    let arrow = s.query_as(&viewer, sql, "application/vnd.apache.arrow.stream").await;
    assert_eq!(arrow.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let batches = arrow_batches(arrow.bytes().await.unwrap().to_vec());
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["id", "name", "email", "ssn", "plan"]);
    // The labels travel inside the Arrow data itself.
    let schema = batches[0].schema();
    assert_eq!(schema.metadata()["moat.classification"], "RESTRICTED");
    let ssn = schema.field_with_name("ssn").unwrap();
    assert_eq!((ssn.metadata()["moat.classification"].as_str(), ssn.metadata()["moat.masking"].as_str()), ("RESTRICTED", "full"));
    assert_eq!(schema.field_with_name("plan").unwrap().metadata()["moat.classification"], "INTERNAL");
    // An empty result is a valid stream too.
    let none = s.query_as(&viewer, "SELECT id FROM customers WHERE id < 0", "application/vnd.apache.arrow.stream").await;
    assert!(arrow_batches(none.bytes().await.unwrap().to_vec()).iter().all(|b| b.num_rows() == 0));
    let none = s.query_as(&viewer, "SELECT id, plan FROM customers WHERE id < 0", "text/csv").await;
    assert_eq!(none.text().await.unwrap(), "id,plan\n");
}

fn arrow_batches(bytes: Vec<u8>) -> Vec<datafusion::arrow::record_batch::RecordBatch> {
    let r = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    r.collect::<Result<Vec<_>, _>>().unwrap()
}

fn parquet_bytes(batch: &datafusion::arrow::record_batch::RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    out
}

const PARQUET: &str = "application/vnd.apache.parquet";

#[tokio::test]
async fn parquet_uploads_are_governed_like_csv() {
    use datafusion::arrow::array::{Float64Array, Int32Array, StringArray};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;
    // Without the scanner, to see what unlabelled columns are.
    let s = TestServer::start_with(|c| c.scan.on_ingest = false).await;
    let admin = s.tenant_with_admin("acme").await;
    let batch = RecordBatch::try_from_iter(vec![
        ("ID", Arc::new(Int32Array::from(vec![1, 2])) as _),
        ("SSN", Arc::new(StringArray::from(vec!["123-45-6789", "987-65-4321"])) as _),
        ("score", Arc::new(Float64Array::from(vec![0.5, 0.25])) as _),
    ])
    .unwrap();
    let r = s.put_body("/v1/tables/scores?domain=risk&product=model", &admin, PARQUET, parquet_bytes(&batch)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["row_count"], 2);
    assert_eq!(r.body["renamed"], json!([{"from": "ID", "to": "id"}, {"from": "SSN", "to": "ssn"}]));
    let types: Vec<&str> = r.body["columns"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Int32", "Utf8", "Float64"]);
    // Unclassified columns are RESTRICTED for everyone below Admin.
    let (_, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    let v = s.query(&viewer, "SELECT id, ssn FROM scores ORDER BY id").await;
    assert_eq!(v.body["rows"], json!([["****", "****"], ["****", "****"]]));
    assert_eq!(s.query(&admin, "SELECT sum(score) FROM scores").await.body["rows"][0][0], 0.75);
    // Bad Parquet never replaces the good version.
    let mut cut = parquet_bytes(&batch);
    cut.truncate(cut.len() / 2);
    for (body, code) in [(cut, "invalid_parquet"), (b"id,ssn\n1,2\n".to_vec(), "invalid_parquet"), (Vec::new(), "empty_parquet")] {
        let r = s.put_body("/v1/tables/scores?domain=risk&product=model", &admin, PARQUET, body).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{:?}", r.body);
    }
    let r = s.put_body("/v1/tables/scores?types=ssn:int&domain=risk&product=model", &admin, PARQUET, parquet_bytes(&batch)).await;
    assert_eq!(r.code(), "type_mismatch");
    assert!(!r.body.to_string().contains("6789"), "{:?}", r.body);
    assert_eq!(s.query(&admin, "SELECT count(*) FROM scores").await.body["rows"][0][0], 2);
    let t = s.get("/v1/tables/scores", &admin).await;
    assert_eq!(t.body["version"], 1);
    let r = s.put_body("/v1/tables/scores", &admin, "application/octet-stream", b"x".to_vec()).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "unsupported_media_type"));
    let failed = s.audit_of(Some("acme")).await.into_iter().filter(|e| e.action == "table.write" && e.outcome == "failure").count();
    assert_eq!(failed, 4, "failed uploads are audited");
}

#[tokio::test]
async fn big_results_stream_within_the_row_limit() {
    let s = TestServer::start_with(|c| c.query.max_rows = 25_000).await;
    let admin = s.tenant_with_admin("acme").await;
    let mut csv = String::from("id,v\n");
    for i in 0..30_000 {
        csv.push_str(&format!("{i},value-{i}\n"));
    }
    assert_eq!(s.put_csv("/v1/tables/big", &admin, csv).await.status, StatusCode::CREATED);
    let r = s.query_as(&admin, "SELECT id, v FROM big WHERE id < 20000 ORDER BY id", "text/csv").await;
    assert_eq!(r.headers()["x-moat-row-limit"], "25000");
    let text = r.text().await.unwrap();
    assert_eq!(text.lines().count(), 20_001);
    assert_eq!(text.lines().last(), Some("19999,value-19999"));
    let r = s.query_as(&admin, "SELECT id FROM big", "application/vnd.apache.arrow.stream").await;
    let rows: usize = arrow_batches(r.bytes().await.unwrap().to_vec()).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 25_000, "stops at query.max_rows");
    // Two records per streamed query: the access before any row left, and its end.
    let trail = s.audit_of(Some("acme")).await;
    let starts: Vec<_> = trail.iter().filter(|e| e.action == "query.execute").collect();
    let ends: Vec<_> = trail.iter().filter(|e| e.action == "query.end").collect();
    assert_eq!((starts.len(), ends.len()), (2, 2));
    assert!(starts.iter().all(|e| e.details["streamed"] == true && e.details["tables"] == json!(["big"])));
    assert_eq!((ends[0].details["rows"].as_u64(), ends[0].details["truncated"].as_bool()), (Some(20_000), Some(false)));
    assert_eq!((ends[1].details["rows"].as_u64(), ends[1].details["truncated"].as_bool()), (Some(25_000), Some(true)));
    assert!(ends[0].seq > starts[0].seq);
    // An error before the first row is a proper error response, not a cut stream.
    let r = s.query_as(&admin, "SELECT CAST(v AS INT) FROM big", "text/csv").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("query_error"));
}

#[tokio::test]
async fn tenants_with_the_same_tables_never_meet() {
    let s = TestServer::start().await;
    let a = s.tenant_with_admin("acme").await;
    let b = s.tenant_with_admin("globex").await;
    s.put_csv("/v1/tables/customers", &a, CSV_A).await;
    s.put_csv("/v1/tables/customers", &b, CSV_B).await;
    s.put_csv("/v1/tables/orders", &a, "order_id,amount\n1,5\n").await;
    for sql in [
        "SELECT * FROM customers",
        "SELECT * FROM moat.public.customers",
        "SELECT name FROM customers UNION SELECT email FROM customers",
        "SELECT table_name FROM information_schema.tables",
    ] {
        let r = s.query(&b, sql).await;
        let text = r.body.to_string();
        assert!(!text.contains("acme") && !text.contains("Ann") && !text.contains("orders"), "{sql}: {text}");
    }
    let r = s.query(&b, "SELECT * FROM orders").await;
    assert_eq!(r.code(), "query_error");
    assert!(!r.body.to_string().contains("amount"));
    let r = s.post("/v1/query?tenant=globex", &a, json!({"sql": "SELECT 1"})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The Super Admin reads a tenant only by naming it, and it is audited there.
    let sa = s.super_admin().await;
    assert_eq!(s.query(&sa, "SELECT 1").await.code(), "tenant_required");
    let r = s.post("/v1/query?tenant=globex", &sa, json!({"sql": "SELECT email FROM customers"})).await;
    assert_eq!(r.body["rows"][0][0], "spy@globex-secret.com");
    let rec = s.audit_of(Some("globex")).await.into_iter().rev().find(|e| e.action == "query.execute").unwrap();
    assert_eq!(rec.actor["super_admin"], true);
}

#[tokio::test]
async fn every_query_is_audited_refused_ones_too() {
    let (s, _, _, viewer) = acme_with_roles().await;
    s.query(&viewer, "SELECT id, ssn FROM customers").await;
    assert_eq!(s.query(&viewer, "DELETE FROM customers").await.code(), "statement_not_allowed");
    assert_eq!(s.query(&viewer, "SELECT nope FROM customers").await.code(), "query_error");
    assert_eq!(s.query(&viewer, "").await.code(), "empty_query");
    let recs: Vec<_> = s.audit_of(Some("acme")).await.into_iter().filter(|e| e.action == "query.execute").collect();
    assert_eq!(recs.len(), 4);
    let ok = &recs[0];
    assert_eq!(ok.outcome, "success");
    assert_eq!(ok.details["sql"], "SELECT id, ssn FROM customers");
    assert_eq!(ok.details["tables"], json!(["customers"]));
    assert_eq!(ok.details["columns_masked"], json!(["customers.ssn"]));
    assert_eq!(ok.details["rows"], 2);
    assert!(ok.details["duration_ms"].is_u64() && ok.details["query_id"].is_string());
    assert_eq!((recs[1].outcome.as_str(), recs[1].details["error"].as_str()), ("denied", Some("statement_not_allowed")));
    assert_eq!((recs[2].outcome.as_str(), recs[2].details["error"].as_str()), ("failure", Some("query_error")));
    assert!(!s.audit_of(Some("acme")).await.iter().any(|e| e.details.to_string().contains("123-45-6789")), "no data values in the trail");
}

#[tokio::test]
async fn query_limits_answer_with_codes() {
    let s = TestServer::start_with(|c| {
        c.query.max_rows = 1;
        c.query.max_sql_bytes = 200;
    })
    .await;
    let admin = s.tenant_with_admin("acme").await;
    s.put_csv("/v1/tables/customers", &admin, CSV_A).await;
    let r = s.query(&admin, "SELECT id FROM customers").await;
    assert_eq!((r.body["row_count"].as_u64(), r.body["truncated"].as_bool()), (Some(1), Some(true)));
    let long = format!("SELECT id FROM customers WHERE name <> '{}'", "x".repeat(300));
    assert_eq!(s.query(&admin, &long).await.code(), "query_too_long");
    assert_eq!(s.query(&admin, "SELECT 1; SELECT 2").await.code(), "multiple_statements");
}

#[tokio::test]
async fn a_tenant_masking_policy_changes_masks_never_unmasks() {
    let (s, admin, editor, viewer) = acme_with_roles().await;
    assert_eq!(s.get("/v1/policies/masking", &admin).await.body, json!({"rules": {}}));
    let r = s.send(Method::PUT, "/v1/policies/masking", Some(&admin), Some(json!({"rules": {"viewer:CONFIDENTIAL": "full"}})), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let v = s.query(&viewer, "SELECT name, email FROM customers ORDER BY id").await;
    assert_eq!(v.body["rows"][0], json!(["****", "****"]));
    assert_eq!(col(&v, "email")["masking"], "full");
    let e = s.query(&editor, "SELECT email FROM customers ORDER BY id").await;
    assert_eq!(e.body["rows"][0][0], "ann@acme-secret.com", "other roles unaffected");
    // A rule can never unmask: rules at or below a role's clearance are refused.
    for (rules, code) in [
        (json!({"viewer:INTERNAL": "full"}), "invalid_policy"),
        (json!({"admin:RESTRICTED": "full"}), "invalid_policy"),
        (json!({"viewer": "full"}), "invalid_policy"),
    ] {
        assert_eq!(
            s.send(Method::PUT, "/v1/policies/masking", Some(&admin), Some(json!({"rules": rules})), None).await.code(),
            code,
            "{rules}"
        );
    }
    assert_eq!(
        s.send(Method::PUT, "/v1/policies/masking", Some(&admin), Some(json!({"rules": {"viewer:CONFIDENTIAL": "raw"}})), None)
            .await
            .code(),
        "invalid_body"
    );
    assert_eq!(
        s.send(Method::PUT, "/v1/policies/masking", Some(&editor), Some(json!({"rules": {}})), None).await.status,
        StatusCode::FORBIDDEN
    );
    let rec = s.audit_of(Some("acme")).await.into_iter().find(|e| e.action == "policy.masking_update").unwrap();
    assert_eq!(rec.details["to"]["rules"]["viewer:CONFIDENTIAL"], "full");
}

/// Uploads are classified by the scanner; a manual label always wins, also over a re-scan of a
/// replacement; the scan is in the upload's answer and its audit record.
#[tokio::test]
async fn uploads_are_classified_by_the_scanner_and_manual_labels_win() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (_, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    let first = ["Jane", "John", "Maria", "Ahmed", "Olivia", "Lucas", "Emma", "Noah"];
    let last = ["Smith", "Garcia", "Müller", "Rossi", "Dubois", "Khan", "Jansen", "Brown"];
    let mut csv = String::from("customer_id,full_name,contact,ssn,zip,plan\n");
    for i in 0..60usize {
        let (f, l) = (first[i % 8], last[(i * 3 + i / 8) % 8]);
        csv.push_str(&format!(
            "{i},{f} {l},{}.{}{i}@example.com,{:03}-{:02}-{:04},{:05},{}\n",
            f.to_lowercase(),
            l.to_lowercase(),
            101 + i * 7,
            1 + i % 98,
            1000 + i,
            2100 + i % 13,
            ["free", "pro", "team"][i % 3]
        ));
    }
    let r = s.put_csv("/v1/tables/customers", &admin, csv.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["scan"]["rows_sampled"], 60);
    assert_eq!(r.body["scan"]["quasi_identifiers"], json!(["zip"]));
    let t = s.get("/v1/tables/customers", &admin).await;
    let c = |name: &str| col(&t, name).clone();
    // `contact` says nothing; its values are e-mail addresses.
    for (name, label, pii, entity) in [
        ("contact", "CONFIDENTIAL", "direct", Some("email")),
        ("full_name", "CONFIDENTIAL", "direct", Some("person_name")),
        ("ssn", "RESTRICTED", "direct", Some("ssn")),
        ("zip", "CONFIDENTIAL", "quasi", Some("zip")),
        ("plan", "INTERNAL", "none", None),
    ] {
        let got = c(name);
        assert_eq!(
            (got["classification"].as_str(), got["pii"].as_str(), got["entity"].as_str(), got["source"].as_str()),
            (Some(label), Some(pii), entity, Some("scanner")),
            "{name}: {got}"
        );
        assert!(got["confidence"].as_f64().is_some_and(|x| x > 0.5 && x <= 1.0), "{name}: {got}");
    }
    // The Viewer sees what the scanner's labels mask.
    let q = s.query(&viewer, "SELECT contact, ssn, plan FROM customers WHERE customer_id = 1").await;
    assert_eq!(q.body["rows"][0][0], "j***@***.com", "{:?}", q.body);
    assert_eq!(q.body["rows"][0][1], "****", "RESTRICTED without a grant: full mask");
    assert_eq!(q.body["rows"][0][2], "pro");
    // A manual label survives the re-scan of a replacement.
    s.label(&admin, "plan", "CONFIDENTIAL", "none", None).await;
    let r = s.put_csv("/v1/tables/customers", &admin, csv).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let t = s.get("/v1/tables/customers", &admin).await;
    assert_eq!((col(&t, "plan")["classification"].as_str(), col(&t, "plan")["source"].as_str()), (Some("CONFIDENTIAL"), Some("manual")));
    assert_eq!(col(&t, "contact")["source"], "scanner");
    let rec = s.audit_of(Some("acme")).await.into_iter().rev().find(|e| e.action == "table.write").unwrap();
    assert!(rec.details["scan"]["columns"].as_array().is_some_and(|c| c.len() == 6), "{:?}", rec.details);
}

/// A CSV whose columns the scanner recognises by their values alone.
fn people_csv(rows: usize) -> String {
    let first = ["Jane", "John", "Maria", "Ahmed", "Olivia", "Lucas", "Emma", "Noah"];
    let last = ["Smith", "Garcia", "Müller", "Rossi", "Dubois", "Khan", "Jansen", "Brown"];
    let mut csv = String::from("ref,col_7,notes,plan\n");
    for i in 0..rows {
        let (f, l) = (first[i % 8], last[(i * 3 + i / 8) % 8]);
        csv.push_str(&format!("{i},{}.{}{i}@example.com,{f} {l},{}\n", f.to_lowercase(), l.to_lowercase(), ["free", "pro"][i % 2]));
    }
    csv
}

#[tokio::test]
async fn on_demand_scans_label_unlabelled_columns_keep_manual_ones_and_are_audited() {
    // Uploads are not scanned here: the on-demand scan does the labelling.
    let s = TestServer::start_with(|c| c.scan.on_ingest = false).await;
    let admin = s.tenant_with_admin("acme").await;
    let other = s.tenant_with_admin("globex").await;
    let (_, editor) = s.user(&admin, "acme", "e@acme.example", "editor").await;
    assert_eq!(s.put_csv("/v1/tables/customers", &admin, people_csv(200)).await.status, StatusCode::CREATED);
    s.label(&admin, "notes", "PUBLIC", "none", None).await;

    // A dry run proposes and changes nothing.
    let r = s.post("/v1/tables/customers/scan?dry_run=true", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!((r.body["rows_seen"].as_u64(), r.body["dry_run"].as_bool()), (Some(200), Some(true)));
    assert_eq!(col(&r, "col_7")["entity"], "email");
    assert_eq!(col(&r, "col_7")["catalog"]["source"], "default", "nothing applied");
    assert_eq!(r.body["changes"], json!([]));
    let t = s.get("/v1/tables/customers", &admin).await;
    assert_eq!(col(&t, "col_7")["classification"], "RESTRICTED", "still unclassified");

    // The scan: the values decide (misleading names), the manual label stays.
    let r = s.post("/v1/tables/customers/scan", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(col(&r, "notes")["entity"], "person_name", "the scanner's proposal is reported");
    assert_eq!(
        (col(&r, "notes")["catalog"]["classification"].as_str(), col(&r, "notes")["catalog"]["source"].as_str()),
        (Some("PUBLIC"), Some("manual"))
    );
    let t = s.get("/v1/tables/customers", &admin).await;
    assert_eq!((col(&t, "col_7")["classification"].as_str(), col(&t, "col_7")["source"].as_str()), (Some("CONFIDENTIAL"), Some("scanner")));
    assert_eq!((col(&t, "notes")["classification"].as_str(), col(&t, "notes")["source"].as_str()), (Some("PUBLIC"), Some("manual")));
    assert_eq!(col(&t, "plan")["classification"], "INTERNAL");
    let rec = s.audit_of(Some("acme")).await.into_iter().rev().find(|e| e.action == "classification.scan").unwrap();
    let changed: Vec<&str> = rec.details["changes"].as_array().unwrap().iter().filter_map(|c| c["column"].as_str()).collect();
    assert_eq!(changed, ["ref", "col_7", "plan"], "{:?}", rec.details);
    assert_eq!(rec.details["changes"][1]["from"]["classification"], "RESTRICTED");

    // The tenant's policy maps e-mails to RESTRICTED with a mask of its choice; a re-scan applies it.
    let p = json!({"labels": {"email": "RESTRICTED", "quasi": "CONFIDENTIAL"}, "masks": {"email": "hash16"}, "min_confidence": 0.0});
    let r = s.send(Method::PUT, "/v1/policies/classification", Some(&admin), Some(p.clone()), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(s.get("/v1/policies/classification", &admin).await.body, p);
    let r = s.post("/v1/tables/customers/scan", &admin, json!({})).await;
    assert_eq!((col(&r, "col_7")["classification"].as_str(), col(&r, "col_7")["mask"].as_str()), (Some("RESTRICTED"), Some("hash16")));
    let t = s.get("/v1/tables/customers", &admin).await;
    assert_eq!((col(&t, "col_7")["classification"].as_str(), col(&t, "col_7")["mask"].as_str()), (Some("RESTRICTED"), Some("hash16")));
    assert!(s.audit_of(Some("acme")).await.iter().any(|e| e.action == "policy.classification_update"));

    // A policy that names nothing known is refused.
    for bad in [json!({"labels": {"social": "PUBLIC"}}), json!({"min_confidence": 2}), json!({"masks": {"email": "rot13"}})] {
        let r = s.send(Method::PUT, "/v1/policies/classification", Some(&admin), Some(bad.clone()), None).await;
        assert!(r.status.is_client_error(), "{bad}: {:?}", r.body);
    }

    // Streaming progress: NDJSON lines end with the result.
    let resp = s
        .http
        .post(format!("{}/v1/tables/customers/scan?sample_rows=50", s.base))
        .bearer_auth(&admin)
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let last: Value = serde_json_last_line(&text);
    assert_eq!(last["result"]["rows_sampled"], 50, "{text}");

    // Who may scan what: not an Editor, not another tenant's table, not nonsense sizes.
    assert_eq!(s.post("/v1/tables/customers/scan", &editor, json!({})).await.status, StatusCode::FORBIDDEN);
    let r = s.post("/v1/tables/customers/scan", &other, json!({})).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "table_not_found"));
    for q in ["sample_rows=0", "sample_rows=100001", "sample_rows=x", "dry_run=maybe", "force=1"] {
        let r = s.post(&format!("/v1/tables/customers/scan?{q}"), &admin, json!({})).await;
        assert!(r.status.is_client_error() && !r.code().is_empty(), "{q}: {:?}", r.body);
    }
}

fn serde_json_last_line(text: &str) -> Value {
    moat_testkit::serde_json::from_str(text.lines().last().unwrap_or("")).unwrap()
}

#[tokio::test]
async fn views_are_saved_queries_that_mask_and_label_like_their_tables() {
    let (s, admin, editor, viewer) = acme_with_roles().await;
    let other = s.tenant_with_admin("globex").await;
    s.put_csv("/v1/tables/customers", &other, CSV_B).await;
    let put = |token: &str, name: &str, body: Value| {
        let (s, token, name) = (&s, token.to_owned(), name.to_owned());
        async move { s.send(Method::PUT, &format!("/v1/views/{name}"), Some(&token), Some(body), None).await }
    };
    // An Editor saves a view; its columns carry the labels of what they read.
    let r = put(
        &editor,
        "contacts",
        json!({"sql": "SELECT id, email AS contact, upper(name) AS who, plan FROM customers;", "description": "who to call"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["classification"], "CONFIDENTIAL");
    assert_eq!(col(&r, "who")["classification"], "CONFIDENTIAL", "a function of a name is as sensitive as the name");
    assert_eq!(col(&r, "plan")["classification"], "INTERNAL");
    // The Viewer queries it and sees masks, exactly as on the table.
    let q = s.query(&viewer, "SELECT contact, who, plan FROM contacts WHERE id = 1").await;
    assert_eq!(q.status, StatusCode::OK, "{:?}", q.body);
    assert_eq!(q.body["rows"][0][0], "a***@***.com");
    assert!(!q.body.to_string().contains("Canary") && !q.body.to_string().contains("acme-secret"), "{:?}", q.body);
    assert_eq!(q.body["classification"], "CONFIDENTIAL");
    assert_eq!(s.query(&viewer, "SELECT id FROM contacts WHERE contact = 'ann@acme-secret.com'").await.body["row_count"], 0);
    let rec = s.audit_of(Some("acme")).await.into_iter().rev().find(|e| e.action == "query.execute").unwrap();
    assert_eq!(rec.details["tables"], json!(["customers"]), "{:?}", rec.details);
    // Raising a table's label raises every view built on it, at once.
    s.label(&admin, "plan", "RESTRICTED", "none", None).await;
    let v = s.get("/v1/views/contacts", &viewer).await;
    assert_eq!((col(&v, "plan")["classification"].as_str(), v.body["classification"].as_str()), (Some("RESTRICTED"), Some("RESTRICTED")));
    assert_eq!(s.query(&viewer, "SELECT plan FROM contacts WHERE id = 1").await.body["rows"][0][0], "****");
    // Views of views; a cycle is refused when it is saved.
    assert_eq!(put(&editor, "contacts_pro", json!({"sql": "SELECT * FROM contacts WHERE id > 1"})).await.status, StatusCode::CREATED);
    let r = put(&editor, "contacts", json!({"sql": "SELECT * FROM contacts_pro"})).await;
    assert_eq!(r.code(), "view_cycle", "{:?}", r.body);
    assert_eq!(s.get("/v1/views/contacts", &admin).await.body["version"], 1, "a refused replace changes nothing");
    // Bad views: not read-only, broken SQL, bad names, a name a table has.
    for (name, body, code) in [
        ("bad", json!({"sql": "DELETE FROM customers"}), "statement_not_allowed"),
        ("bad", json!({"sql": "SELECT nope FROM customers"}), "query_error"),
        ("bad", json!({"sql": "SELECT 1; SELECT 2"}), "multiple_statements"),
        ("bad", json!({"sql": ""}), "empty_query"),
        ("Bad-Name", json!({"sql": "SELECT 1"}), "invalid_name"),
        ("pg_catalog", json!({"sql": "SELECT 1"}), "invalid_name"),
        ("customers", json!({"sql": "SELECT 1"}), "name_taken"),
        ("bad", json!({"sql": "SELECT 1", "extra": 1}), "invalid_body"),
    ] {
        let r = put(&editor, name, body.clone()).await;
        assert_eq!(r.code(), code, "{name} {body}: {:?}", r.body);
    }
    // An upload may not take a view's name.
    assert_eq!(s.put_csv("/v1/tables/contacts", &admin, CSV_A).await.code(), "name_taken");
    // Who may do what: a Viewer reads views but does not write them.
    assert_eq!(put(&viewer, "mine", json!({"sql": "SELECT 1"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.get("/v1/views", &viewer).await.body["views"].as_array().map(Vec::len), Some(2));
    // Another tenant sees none of them, and a view never crosses tenants.
    assert_eq!(s.get("/v1/views", &other).await.body["views"], json!([]));
    assert_eq!(s.get("/v1/views/contacts", &other).await.code(), "view_not_found");
    assert_eq!(s.query(&other, "SELECT * FROM contacts").await.code(), "query_error");
    assert_eq!(s.send(Method::DELETE, "/v1/views/contacts", Some(&other), None, None).await.code(), "view_not_found");
    // A view whose table is gone reports why instead of failing the listing.
    assert_eq!(s.send(Method::DELETE, "/v1/views/contacts_pro", Some(&admin), None, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.send(Method::DELETE, "/v1/tables/customers", Some(&admin), None, None).await.status, StatusCode::NO_CONTENT);
    let list = s.get("/v1/views", &admin).await;
    assert_eq!(list.body["views"][0]["error"]["code"], "query_error", "{:?}", list.body);
    let trail = s.audit_of(Some("acme")).await;
    for action in ["view.write", "view.delete"] {
        assert!(trail.iter().any(|e| e.action == action), "{action}");
    }
}
