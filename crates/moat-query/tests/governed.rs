//! The governed query path from the attacker's side: tenants with the same table names and
//! canary values, and every trick that could make a masked value leak (WHERE, LIKE, min/max,
//! length, substr, CASE, ORDER/GROUP BY, CAST errors, joins, EXPLAIN, information_schema).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use datafusion::arrow::array::AsArray;
use moat_core::classification::Classification::{self, *};
use moat_core::role::Role;
use moat_query::mask::MaskRule;
use moat_query::policy::MaskingPolicy;
use moat_query::{Engine, EngineLimits};

#[tokio::test]
async fn three_roles_three_views() {
    let w = world().await;
    let e = w.engine(EngineLimits::default());
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
    let w = world().await;
    let e = w.engine(EngineLimits::default());
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
    let w = world().await;
    let e = w.engine(EngineLimits::default());
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
    let w = world().await;
    let e = w.engine(EngineLimits::default());
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
    let w = world().await;
    let e = w.engine(EngineLimits::default());
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
    let w = world().await;
    let t = &w.a[0];
    let rt =
        datafusion::execution::runtime_env::RuntimeEnvBuilder::new().with_object_store_registry(w.storage.registry()).build_arc().unwrap();
    let ctx = SessionContext::new_with_config_rt(datafusion::prelude::SessionConfig::new(), rt);
    let url = w.storage.listing_url(&t.location).unwrap();
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
    let scan_lines = |batches: Vec<datafusion::arrow::array::RecordBatch>| -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |i| b.column(1).as_string::<i32>().value(i).to_owned()))
            .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l.contains("DataSourceExec"))
            .collect()
    };
    // Masked columns alone, or beside a raw one in the same OR: nothing of them reaches the scan.
    for (pred, col) in [
        ("ssn = '123-45-6789'", "ssn"),
        ("card LIKE '4242%'", "card"),
        ("email > 'a'", "email"),
        ("zip = '02139'", "zip"),
        ("id = 1 OR ssn = '123-45-6789'", "ssn"),
        ("plan = 'pro' AND ssn = '123-45-6789'", "ssn"),
        ("length(ssn) = 11 AND id > 0", "ssn"),
        ("id IN (SELECT id FROM customers WHERE ssn = '123-45-6789')", "ssn"),
    ] {
        let df = ctx.sql(&format!("EXPLAIN SELECT id FROM customers WHERE {pred}")).await.unwrap();
        for line in scan_lines(df.collect().await.unwrap()) {
            // Any mention of the masked column next to a predicate must be inside a mask call.
            if let Some(i) = line.find("predicate=") {
                let p = &line[i..];
                assert!(!p.contains(&format!("{col}@")) || p.contains("moat_mask"), "raw predicate reached the scan: {line}");
                assert!(!p.contains(&format!("{col}_min")) && !p.contains(&format!("{col}_max")), "pruning on a masked column: {line}");
            }
        }
    }
    // A filter on columns the caller sees raw does reach the scan (row groups can be skipped by
    // it); in a conjunction, only that part goes down.
    for (pred, pushed) in [("id = 2", "id@"), ("plan = 'pro' AND ssn = '123-45-6789'", "plan@")] {
        let df = ctx.sql(&format!("EXPLAIN SELECT id FROM customers WHERE {pred}")).await.unwrap();
        let lines = scan_lines(df.collect().await.unwrap());
        assert!(lines.iter().any(|l| l.split("predicate=").nth(1).is_some_and(|p| p.contains(pushed))), "{pred}: {lines:?}");
    }
}

/// Which filters may run below the masks: only those reading raw-visible columns and nothing else.
#[test]
fn only_filters_on_raw_columns_may_go_below_the_masks() {
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::{length, random};
    use moat_query::governed::GovernedTable;
    use moat_query::mask::MaskRule;
    use moat_query::policy::MaskDecision;
    let schema = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new("id", datafusion::arrow::datatypes::DataType::Int64, true),
        datafusion::arrow::datatypes::Field::new("ssn", datafusion::arrow::datatypes::DataType::Utf8, true),
        datafusion::arrow::datatypes::Field::new("secret", datafusion::arrow::datatypes::DataType::Utf8, true),
    ]));
    let inner = std::sync::Arc::new(datafusion::datasource::empty::EmptyTable::new(schema));
    let t = GovernedTable::new(inner, &[MaskDecision::Raw, MaskDecision::Mask(MaskRule::LastFour), MaskDecision::Omit]);
    assert!(t.may_push(&col("id").eq(lit(1))));
    assert!(t.may_push(&col("customers.id").gt(lit(1)).and(col("id").lt(lit(9)))));
    for refused in [
        col("ssn").eq(lit("123-45-6789")),
        length(col("ssn")).eq(lit(11)),
        col("id").eq(lit(1)).or(col("ssn").like(lit("%6789"))),
        // An omitted column is not in the table at all; a filter naming it never goes down.
        col("secret").eq(lit("x")),
        // Nothing volatile, nothing without a column.
        random().lt(col("id")),
        lit(true),
    ] {
        assert!(!t.may_push(&refused), "{refused}");
    }
}

#[tokio::test]
async fn limits_have_codes() {
    let w = world().await;
    let v = who(w.ta, Role::Viewer);
    let e = w.engine(EngineLimits { max_rows: 2, ..Default::default() });
    let o = q(&e, &v, w.ta, &w.a, "SELECT id FROM customers").await.unwrap();
    assert_eq!((o.row_count, o.truncated), (2, true));
    let o = q(&e, &v, w.ta, &w.a, "SELECT id FROM customers LIMIT 2").await.unwrap();
    assert_eq!((o.row_count, o.truncated), (2, false));
    let e = w.engine(EngineLimits { max_result_bytes: 64 * 1024, ..Default::default() });
    let o = q(&e, &v, w.ta, &w.a, "SELECT v FROM generate_series(1, 1000000) t(v)").await.unwrap();
    assert!(o.truncated && o.row_count > 1000 && o.row_count < 9000 && o.bytes <= 64 * 1024, "{} rows, {} bytes", o.row_count, o.bytes);
    let e = w.engine(EngineLimits { timeout_ms: 200, ..Default::default() });
    let err = q(&e, &v, w.ta, &w.a, "SELECT count(*) FROM generate_series(1, 100000000000) a").await.unwrap_err();
    assert_eq!(err.code, "query_timeout");
    let e = w.engine(EngineLimits { max_sql_bytes: 20, ..Default::default() });
    assert_eq!(q(&e, &v, w.ta, &w.a, "SELECT id, name, email FROM customers").await.unwrap_err().code, "query_too_long");
    let e = w.engine(EngineLimits { memory_per_tenant_bytes: 256 * 1024, ..Default::default() });
    let err = q(&e, &v, w.ta, &w.a, "SELECT v % 1000000 AS k, count(*) FROM generate_series(1, 3000000) t(v) GROUP BY 1 ORDER BY 2 DESC")
        .await
        .unwrap_err();
    assert_eq!(err.code, "query_memory_limit", "{}", err.message);
    let e = std::sync::Arc::new(w.engine(EngineLimits { max_concurrent_per_tenant: 1, timeout_ms: 3_000, ..Default::default() }));
    let slow = {
        let (e, v, a) = (e.clone(), v.clone(), w.a.clone());
        tokio::spawn(async move {
            e.execute(
                &v,
                w.ta,
                moat_query::Catalog::tables(&a),
                &MaskingPolicy::default(),
                "SELECT count(*) FROM generate_series(1, 100000000000) a",
            )
            .await
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

#[tokio::test]
async fn one_query_cannot_take_its_tenant_budget_and_big_sorts_spill() {
    let w = world().await;
    let v = who(w.ta, Role::Viewer);
    let agg = "SELECT v % 1000000 AS k, count(*) FROM generate_series(1, 3000000) t(v) GROUP BY 1 ORDER BY 2 DESC";
    let e = w.engine(EngineLimits { memory_per_query_bytes: 256 * 1024, ..Default::default() });
    let err = q(&e, &v, w.ta, &w.a, agg).await.unwrap_err();
    assert_eq!(err.code, "query_memory_limit");
    assert!(err.message.contains("memory_per_query_bytes"), "{}", err.message);

    // A sort larger than a query's memory fails without a spill directory and spills with one.
    let sort = "SELECT max(r) FROM (SELECT row_number() OVER (ORDER BY v DESC) AS r FROM generate_series(1, 4000000) t(v))";
    let limits = EngineLimits { memory_per_query_bytes: 24 << 20, target_partitions: 1, ..Default::default() };
    let err = q(&w.engine(limits.clone()), &v, w.ta, &w.a, sort).await.unwrap_err();
    assert_eq!(err.code, "query_memory_limit", "{}", err.message);
    let spill = tempfile::tempdir().unwrap();
    let e = Engine::new(limits, w.storage.clone(), Some(spill.path().to_path_buf()));
    assert_eq!(cells(&q(&e, &v, w.ta, &w.a, sort).await.unwrap()), [["4000000"]]);
    let tenant_dir = spill.path().join(w.ta.to_string());
    assert!(tenant_dir.is_dir(), "spill files go to the tenant's own directory");
    let left: Vec<_> = walk(&tenant_dir);
    assert!(left.is_empty(), "spill files are removed after the query: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Views are saved queries planned in the caller's session: they mask exactly as the caller's
/// own SQL does, their columns carry the labels of what they read (never less), and they cannot
/// reach another tenant, themselves, or more than [`moat_query::engine::MAX_VIEW_DEPTH`] deep.
#[tokio::test]
async fn views_mask_like_their_tables_and_carry_their_labels() {
    use moat_query::{Catalog, ViewSource};
    let w = world().await;
    let e = w.engine(EngineLimits::default());
    let view = |name: &str, sql: &str| ViewSource { name: name.into(), sql: sql.into() };
    let views = vec![
        // Aliases and expressions must not launder a label.
        view("contacts", "SELECT id, email AS contact, upper(name) AS shout, plan, ssn FROM customers"),
        view("by_plan", "SELECT plan, count(*) AS n, max(ssn) AS top_ssn FROM contacts GROUP BY plan"),
        view("loop_a", "SELECT * FROM loop_b"),
        view("loop_b", "SELECT * FROM loop_a"),
    ];
    let cat = Catalog { tables: &w.a, views: &views };
    let policy = MaskingPolicy::default();
    let viewer = who(w.ta, Role::Viewer);
    let run = |sql: &'static str| {
        let (e, viewer, policy) = (&e, &viewer, &policy);
        async move { e.execute(viewer, w.ta, cat, policy, sql).await }
    };

    let out = run("SELECT * FROM contacts ORDER BY id").await.unwrap();
    let labels: Vec<(&str, Classification, &str)> =
        out.columns.iter().map(|c| (c.name.as_str(), c.classification, c.masking.as_str())).collect();
    assert_eq!(
        labels,
        [
            ("id", Public, "none"),
            ("contact", Confidential, "email_partial"),
            ("shout", Confidential, "hash16"),
            ("plan", Internal, "none"),
            ("ssn", Restricted, "full"),
        ]
    );
    assert!(!flat(&out).contains("Canary") && !flat(&out).contains(RAW_EMAIL) && !flat(&out).contains("6789"), "{}", flat(&out));
    assert_eq!(out.tables_read, ["customers"], "the audit names the tables behind the view");
    // Predicates through a view see masks, like any other.
    assert!(cells(&run("SELECT id FROM contacts WHERE ssn = '123-45-6789'").await.unwrap()).is_empty());
    assert!(cells(&run("SELECT id FROM contacts WHERE contact LIKE 'canary%'").await.unwrap()).is_empty());
    // A view on a view: the aggregate of a RESTRICTED column stays RESTRICTED.
    let agg = run("SELECT * FROM by_plan ORDER BY plan").await.unwrap();
    assert_eq!(agg.columns.iter().find(|c| c.name == "top_ssn").map(|c| c.classification), Some(Restricted));
    assert_eq!(cells(&agg), [["free", "1", "****"], ["pro", "2", "****"]]);
    // The Admin reads the same view raw.
    let admin = e.execute(&who(w.ta, Role::Admin), w.ta, cat, &policy, "SELECT contact FROM contacts WHERE id = 1").await.unwrap();
    assert_eq!(cells(&admin), [[RAW_EMAIL]]);
    // Describe: the labels without running anything.
    let cols = e.describe(&viewer, w.ta, cat, &policy, "SELECT contact, plan FROM contacts").await.unwrap();
    assert_eq!(cols.iter().map(|c| c.classification).collect::<Vec<_>>(), [Confidential, Internal]);
    assert_eq!(e.describe(&viewer, w.ta, cat, &policy, "EXPLAIN SELECT 1").await.unwrap_err().code, "explain_not_allowed");
    // A view that reads itself, directly or not.
    assert_eq!(run("SELECT * FROM loop_a").await.unwrap_err().code, "view_cycle");
    // The catalog lists the views that can be planned (the broken loop is left out).
    let listed = run("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
        .await
        .unwrap();
    assert_eq!(
        cells(&listed),
        [["by_plan", "VIEW"], ["contacts", "VIEW"], ["customers", "BASE TABLE"], ["orders", "BASE TABLE"]],
        "{}",
        flat(&listed)
    );
    // Nesting deeper than allowed.
    let mut deep: Vec<ViewSource> = (0..12).map(|i| view(&format!("v{i}"), &format!("SELECT * FROM v{}", i + 1))).collect();
    deep.push(view("v12", "SELECT id FROM customers"));
    let deep_cat = Catalog { tables: &w.a, views: &deep };
    assert_eq!(e.execute(&viewer, w.ta, deep_cat, &policy, "SELECT * FROM v0").await.unwrap_err().code, "view_too_deep");
    assert_eq!(cells(&e.execute(&viewer, w.ta, deep_cat, &policy, "SELECT count(*) FROM v6").await.unwrap()), [["3"]]);
    // Tenant B has no such view; a view of A's never runs over B's tables.
    let b_cat = Catalog { tables: &w.b, views: &[] };
    assert_eq!(e.execute(&who(w.tb, Role::Admin), w.tb, b_cat, &policy, "SELECT * FROM contacts").await.unwrap_err().code, "query_error");
    let same_view_in_b = Catalog { tables: &w.b, views: &views };
    let b = e.execute(&who(w.tb, Role::Admin), w.tb, same_view_in_b, &policy, "SELECT contact FROM contacts").await.unwrap();
    assert!(!flat(&b).contains("acme"), "a view's SQL names tables of the session it runs in: {}", flat(&b));
}
