//! The governed query path from the attacker's side: tenants with the same table names and
//! canary values, and every trick that could make a masked value leak (WHERE, LIKE, min/max,
//! length, substr, CASE, ORDER/GROUP BY, CAST errors, joins, EXPLAIN, information_schema).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use moat_core::classification::Classification::{self, *};
use moat_core::ids::{Email, TenantId, UserId};
use moat_core::principal::{Principal, Scope};
use moat_core::role::Role;
use moat_query::ingest::{IngestLimits, csv_to_parquet};
use moat_query::mask::MaskRule;
use moat_query::policy::{ColumnMeta, MaskingPolicy, PiiCategory};
use moat_query::{Engine, EngineLimits, QueryOutput, TableSource};

const RAW_SSN: &str = "123-45-6789";
const RAW_EMAIL: &str = "canary.a@acme-secret.com";

fn table(dir: &Path, name: &str, csv: &str, meta: &[(&str, Option<Classification>, PiiCategory, &str)]) -> TableSource {
    let loc = dir.join(name);
    std::fs::create_dir_all(&loc).unwrap();
    let r = csv_to_parquet(csv.as_bytes(), &loc.join("part-0.parquet"), &BTreeMap::new(), &IngestLimits::default()).unwrap();
    let columns = r
        .schema
        .fields()
        .iter()
        .map(|f| {
            let (_, label, pii, entity) = meta.iter().find(|m| m.0 == f.name()).copied().unwrap_or((f.name(), None, PiiCategory::None, ""));
            ColumnMeta {
                name: f.name().clone(),
                classification: label,
                pii,
                entity: (!entity.is_empty()).then(|| entity.to_owned()),
                mask_override: None,
            }
        })
        .collect();
    TableSource { name: name.into(), location: loc, schema: r.schema, columns }
}

const CUSTOMER_META: &[(&str, Option<Classification>, PiiCategory, &str)] = &[
    ("id", Some(Public), PiiCategory::None, ""),
    ("name", Some(Confidential), PiiCategory::Direct, "person_name"),
    ("email", Some(Confidential), PiiCategory::Direct, "email"),
    ("ssn", Some(Restricted), PiiCategory::Direct, "ssn"),
    ("card", Some(Confidential), PiiCategory::Direct, "credit_card"),
    ("plan", Some(Internal), PiiCategory::None, ""),
    ("revenue", Some(Confidential), PiiCategory::None, ""),
    // zip: unclassified on purpose (counts as RESTRICTED)
];

struct World {
    _dir: tempfile::TempDir,
    a: Vec<TableSource>,
    b: Vec<TableSource>,
    ta: TenantId,
    tb: TenantId,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let a_csv = format!(
        "id,name,email,ssn,card,plan,revenue,zip\n1,Ann Canary,{RAW_EMAIL},{RAW_SSN},4242424242424242,pro,1000,02139\n2,Bob Stone,bob@acme.com,987-65-4321,5555555555554444,free,20,94107\n3,Ann Canary,ann2@acme.com,111-22-3333,4000056655665556,pro,300,94107\n"
    );
    let b_csv = "id,name,email,ssn,card,plan,revenue,zip\n1,Globex Canary,spy@globex-secret.com,999-99-9999,4111111111111111,ent,5,10001\n";
    let a_orders = "order_id,customer_name,amount\n10,Ann Canary,5\n11,Bob Stone,7\n";
    let (ta, tb) = (TenantId::new(), TenantId::new());
    let a = vec![
        table(&dir.path().join("a"), "customers", &a_csv, CUSTOMER_META),
        table(
            &dir.path().join("a"),
            "orders",
            a_orders,
            &[
                ("order_id", Some(Public), PiiCategory::None, ""),
                ("customer_name", Some(Confidential), PiiCategory::Direct, "person_name"),
                ("amount", Some(Internal), PiiCategory::None, ""),
            ],
        ),
    ];
    let b = vec![table(&dir.path().join("b"), "customers", b_csv, CUSTOMER_META)];
    World { _dir: dir, a, b, ta, tb }
}

fn who(t: TenantId, role: Role) -> Principal {
    Principal::for_tests(Scope::Tenant(t), UserId::new(), Email::parse("x@acme.example").unwrap(), role)
}

async fn q(engine: &Engine, p: &Principal, t: TenantId, tables: &[TableSource], sql: &str) -> Result<QueryOutput, moat_core::MoatError> {
    engine.execute(p, t, tables, &MaskingPolicy::default(), sql).await
}

/// All cells as strings, row-major.
fn cells(o: &QueryOutput) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let opts = FormatOptions::default().with_null("NULL");
    for b in &o.batches {
        let fmts: Vec<ArrayFormatter> = b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap()).collect();
        for r in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    rows
}

fn flat(o: &QueryOutput) -> String {
    format!("{:?}", cells(o))
}

#[tokio::test]
async fn three_roles_three_views() {
    let w = world();
    let e = Engine::new(EngineLimits::default());
    let sql = "SELECT * FROM customers ORDER BY id";
    let admin = q(&e, &who(w.ta, Role::Admin), w.ta, &w.a, sql).await.unwrap();
    assert!(flat(&admin).contains(RAW_SSN) && flat(&admin).contains(RAW_EMAIL));
    let editor = q(&e, &who(w.ta, Role::Editor), w.ta, &w.a, sql).await.unwrap();
    let row = &cells(&editor)[0];
    let names: Vec<&str> = editor.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "email", "ssn", "card", "plan", "revenue", "zip"]);
    assert_eq!(row[2], RAW_EMAIL, "editor clearance covers CONFIDENTIAL");
    assert_eq!(row[3], "****", "RESTRICTED without a grant");
    assert_eq!(row[7], "****", "unclassified counts as RESTRICTED");
    let viewer = q(&e, &who(w.ta, Role::Viewer), w.ta, &w.a, sql).await.unwrap();
    let names: Vec<&str> = viewer.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "email", "ssn", "card", "plan", "zip"], "business-confidential revenue is omitted");
    let row = &cells(&viewer)[0];
    assert_eq!(row[1], MaskRule::Hash16.apply("Ann Canary"));
    assert_eq!(row[2], "c***@***.com");
    assert_eq!(row[3], "****");
    assert_eq!(row[4], "************4242");
    assert_eq!(row[5], "pro");
    assert!(!flat(&viewer).contains("Canary") && !flat(&viewer).contains("6789"));
    let cls: Vec<(String, Classification, String)> =
        viewer.columns.iter().map(|c| (c.name.clone(), c.classification, c.masking.clone())).collect();
    assert!(cls.contains(&("ssn".into(), Restricted, "full".into())));
    assert!(cls.contains(&("plan".into(), Internal, "none".into())));
    assert!(cls.contains(&("email".into(), Confidential, "email_partial".into())));
    assert_eq!(viewer.columns_masked, ["customers.card", "customers.email", "customers.name", "customers.ssn", "customers.zip"]);
}

#[tokio::test]
async fn predicates_and_functions_only_see_masked_values() {
    let w = world();
    let e = Engine::new(EngineLimits::default());
    let v = who(w.ta, Role::Viewer);
    let one = |sql: String| {
        let (e, v, w) = (&e, &v, &w);
        async move { cells(&q(e, v, w.ta, &w.a, &sql).await.unwrap()) }
    };
    assert!(one(format!("SELECT id FROM customers WHERE ssn = '{RAW_SSN}'")).await.is_empty());
    assert!(one("SELECT id FROM customers WHERE ssn LIKE '%6789'".into()).await.is_empty());
    assert!(one("SELECT id FROM customers WHERE card LIKE '4242%'".into()).await.is_empty());
    assert!(one(format!("SELECT id FROM customers WHERE email = '{RAW_EMAIL}'")).await.is_empty());
    assert!(one("SELECT id FROM customers WHERE name = 'Ann Canary'".into()).await.is_empty());
    assert!(one("SELECT id FROM customers WHERE zip = '02139'".into()).await.is_empty());
    assert_eq!(one("SELECT min(ssn), max(ssn), min(card) FROM customers".into()).await, [["****", "****", "************4242"]]);
    assert_eq!(one("SELECT max(length(ssn)), max(substr(ssn, 1, 3)) FROM customers".into()).await, [["4", "***"]]);
    assert_eq!(one(format!("SELECT count(CASE WHEN ssn = '{RAW_SSN}' THEN 1 END) FROM customers")).await, [["0"]]);
    assert_eq!(one("SELECT count(DISTINCT ssn), count(*) FROM customers".into()).await, [["1", "3"]]);
    assert_eq!(one("SELECT ssn, count(*) FROM customers GROUP BY ssn ORDER BY ssn".into()).await, [["****", "3"]]);
    // ORDER BY a masked column orders the masks, not the raw values.
    let ordered = one("SELECT email FROM customers ORDER BY email".into()).await;
    assert!(ordered.iter().all(|r| r[0].contains("***@***.")));
    // A failing CAST names no raw value.
    let err = q(&e, &v, w.ta, &w.a, "SELECT CAST(ssn AS INT) FROM customers").await.unwrap_err();
    assert!(!err.message.contains("6789") && !err.message.contains("123-45"), "{}", err.message);
    let err = q(&e, &v, w.ta, &w.a, "SELECT CAST(card AS BIGINT) FROM customers").await.unwrap_err();
    assert!(!err.message.contains("4242424242424242"), "{}", err.message);
    // Revenue is omitted for the viewer: it does not exist, in SELECT or in WHERE.
    assert_eq!(q(&e, &v, w.ta, &w.a, "SELECT revenue FROM customers").await.unwrap_err().code, "query_error");
    assert_eq!(q(&e, &v, w.ta, &w.a, "SELECT id FROM customers WHERE revenue > 100").await.unwrap_err().code, "query_error");
}

#[tokio::test]
async fn hash_masks_join_across_tables() {
    let w = world();
    let e = Engine::new(EngineLimits::default());
    let v = who(w.ta, Role::Viewer);
    let o = q(
        &e,
        &v,
        w.ta,
        &w.a,
        "SELECT o.order_id, c.id FROM orders o JOIN customers c ON o.customer_name = c.name ORDER BY o.order_id, c.id",
    )
    .await
    .unwrap();
    assert_eq!(cells(&o), [["10", "1"], ["10", "3"], ["11", "2"]]);
    let cls = &o.columns;
    assert_eq!(cls[1].classification, Public);
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let w = world();
    let e = Engine::new(EngineLimits::default());
    let admin_b = who(w.tb, Role::Admin);
    for sql in [
        "SELECT * FROM customers",
        "SELECT * FROM moat.public.customers",
        "SELECT name FROM customers UNION ALL SELECT email FROM customers",
        "WITH c AS (SELECT * FROM customers) SELECT * FROM c",
        "SELECT (SELECT max(email) FROM customers) AS m",
    ] {
        let o = q(&e, &admin_b, w.tb, &w.b, sql).await.unwrap();
        let s = flat(&o);
        assert!(s.contains("Globex Canary") || s.contains("globex"), "{sql}: {s}");
        assert!(!s.contains("Ann") && !s.contains("acme"), "{sql}: {s}");
    }
    let tables =
        q(&e, &admin_b, w.tb, &w.b, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await.unwrap();
    assert_eq!(cells(&tables), [["customers"]], "orders belongs to tenant A");
    for sql in [
        "SELECT * FROM orders",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'file:///etc/passwd'",
        "SELECT * FROM datafusion.public.orders",
    ] {
        let err = q(&e, &admin_b, w.tb, &w.b, sql).await.unwrap_err();
        assert_eq!(err.code, "query_error", "{sql}");
        assert!(!err.message.contains("Ann") && !err.message.contains("acme"), "{sql}: {}", err.message);
    }
}

#[tokio::test]
async fn statements_and_explain_are_restricted() {
    let w = world();
    let e = Engine::new(EngineLimits::default());
    let v = who(w.ta, Role::Viewer);
    for sql in [
        "COPY customers TO '/tmp/x.csv'",
        "CREATE TABLE x AS SELECT * FROM customers",
        "INSERT INTO customers SELECT * FROM customers",
        "SET datafusion.execution.batch_size = 1",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/'",
    ] {
        assert_eq!(q(&e, &v, w.ta, &w.a, sql).await.unwrap_err().code, "statement_not_allowed", "{sql}");
    }
    assert_eq!(q(&e, &v, w.ta, &w.a, "EXPLAIN SELECT * FROM customers").await.unwrap_err().code, "explain_not_allowed");
    let admin = who(w.ta, Role::Admin);
    let plan = flat(&q(&e, &admin, w.ta, &w.a, "EXPLAIN SELECT id FROM customers WHERE ssn LIKE '%9'").await.unwrap());
    assert!(plan.contains("DataSourceExec") || plan.contains("ParquetExec"), "{plan}");
}

/// The physical plan never carries a predicate on a raw masked column into the scan.
#[tokio::test]
async fn no_raw_predicate_reaches_the_scan() {
    use datafusion::prelude::SessionContext;
    use moat_query::governed::GovernedTable;
    use moat_query::policy::{MaskDecision, decide};
    let w = world();
    let t = &w.a[0];
    let ctx = SessionContext::new();
    let url = datafusion::datasource::listing::ListingTableUrl::parse(format!("{}/", t.location.display())).unwrap();
    let opts = datafusion::datasource::listing::ListingOptions::new(std::sync::Arc::new(
        datafusion::datasource::file_format::parquet::ParquetFormat::default(),
    ))
    .with_file_extension(".parquet");
    let listing = datafusion::datasource::listing::ListingTable::try_new(
        datafusion::datasource::listing::ListingTableConfig::new(url).with_listing_options(opts).with_schema(t.schema.clone()),
    )
    .unwrap();
    let decisions: Vec<MaskDecision> = t.columns.iter().map(|c| decide(Role::Viewer, Internal, c, &MaskingPolicy::default())).collect();
    ctx.register_table("customers", std::sync::Arc::new(GovernedTable::new(std::sync::Arc::new(listing), &decisions))).unwrap();
    for pred in ["ssn = '123-45-6789'", "card LIKE '4242%'", "email > 'a'", "zip = '02139'"] {
        let df = ctx.sql(&format!("EXPLAIN SELECT id FROM customers WHERE {pred}")).await.unwrap();
        let batches = df.collect().await.unwrap();
        let text: String = batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |i| b.column(1).as_string::<i32>().value(i).to_owned()))
            .collect::<Vec<_>>()
            .join("\n");
        for line in text.lines().filter(|l| l.contains("DataSourceExec") || l.contains("predicate")) {
            let col = pred.split_whitespace().next().unwrap();
            // Any mention of the masked column next to a predicate must be inside a mask call.
            if let Some(i) = line.find("predicate=") {
                let p = &line[i..];
                assert!(!p.contains(&format!("{col}@")) || p.contains("moat_mask"), "raw predicate reached the scan: {line}");
                assert!(!p.contains("pruning_predicate") || !p.contains(&format!("{col}_min")), "pruning on a masked column: {line}");
            }
        }
    }
}

#[tokio::test]
async fn limits_have_codes() {
    let w = world();
    let v = who(w.ta, Role::Viewer);
    let e = Engine::new(EngineLimits { max_rows: 2, ..Default::default() });
    let o = q(&e, &v, w.ta, &w.a, "SELECT id FROM customers").await.unwrap();
    assert_eq!((o.row_count, o.truncated), (2, true));
    let o = q(&e, &v, w.ta, &w.a, "SELECT id FROM customers LIMIT 2").await.unwrap();
    assert_eq!((o.row_count, o.truncated), (2, false));
    let e = Engine::new(EngineLimits { timeout_ms: 200, ..Default::default() });
    let err = q(&e, &v, w.ta, &w.a, "SELECT count(*) FROM generate_series(1, 100000000000) a").await.unwrap_err();
    assert_eq!(err.code, "query_timeout");
    let e = Engine::new(EngineLimits { max_sql_bytes: 20, ..Default::default() });
    assert_eq!(q(&e, &v, w.ta, &w.a, "SELECT id, name, email FROM customers").await.unwrap_err().code, "query_too_long");
    let e = Engine::new(EngineLimits { memory_per_tenant_bytes: 256 * 1024, ..Default::default() });
    let err = q(&e, &v, w.ta, &w.a, "SELECT v % 1000000 AS k, count(*) FROM generate_series(1, 3000000) t(v) GROUP BY 1 ORDER BY 2 DESC")
        .await
        .unwrap_err();
    assert_eq!(err.code, "query_memory_limit", "{}", err.message);
    let e = std::sync::Arc::new(Engine::new(EngineLimits { max_concurrent_per_tenant: 1, timeout_ms: 3_000, ..Default::default() }));
    let slow = {
        let (e, v, a) = (e.clone(), v.clone(), w.a.clone());
        tokio::spawn(async move {
            e.execute(&v, w.ta, &a, &MaskingPolicy::default(), "SELECT count(*) FROM generate_series(1, 100000000000) a").await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(q(&e, &v, w.ta, &w.a, "SELECT 1").await.unwrap_err().code, "too_many_queries");
    assert_eq!(
        q(&e, &who(w.tb, Role::Viewer), w.tb, &w.b, "SELECT 1").await.map(|o| o.row_count).ok(),
        Some(1),
        "other tenants are not blocked"
    );
    assert_eq!(slow.await.unwrap().unwrap_err().code, "query_timeout");
}
