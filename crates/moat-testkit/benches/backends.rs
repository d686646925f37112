//! Production backends against the embedded defaults, one run, same data: a governed query
//! with its durable audit record end to end over HTTP (a Viewer, three masked columns, a
//! selective query on a `MOAT_BENCH_ROWS`-row table; sequential latency and throughput with
//! `MOAT_BENCH_CLIENTS` clients), and tenants provisioned per second (each: the tenant row,
//! on PostgreSQL its schema and role, the isolation validation, four audit records). The
//! baseline is the embedded store (SQLite); PostgreSQL is the throwaway database of
//! `MOAT_TEST_PG`, made and dropped by the run.
//!
//! `MOAT_TEST_PG=postgres://postgres@127.0.0.1:5432/test cargo bench -p moat-testkit --profile bench-fast --bench backends`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use moat_testkit::bench::{Stats, row};
use moat_testkit::serde_json::json;
use moat_testkit::{PASSWORD, Store, TestServer};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Figures {
    query: Stats,
    queries_per_s: f64,
    tenants_per_s: f64,
    provision: Stats,
}

async fn measure(store: Store, rows: usize, n: usize, clients: usize, tenants: usize) -> Figures {
    // No result cache: every query runs (the throughput phase repeats the latency phase's SQL).
    let s = TestServer::start_on(
        store,
        |c| {
            c.ingest.body_limit_bytes = 1 << 34;
            c.cache.result_ttl_s = 0;
        },
        |s| s,
    )
    .await;
    let sa = s.super_admin().await;
    let mut provision = Vec::with_capacity(tenants);
    let t = Instant::now();
    for i in 0..tenants {
        let t = Instant::now();
        let r = s.post("/v1/tenants", &sa, json!({"slug": format!("bench-{i:05}"), "name": "Bench"})).await;
        assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
        provision.push(t.elapsed());
    }
    let tenants_per_s = tenants as f64 / t.elapsed().as_secs_f64();

    let admin = s.tenant_with_admin("acme").await;
    let r = s.put_csv("/v1/tables/t", &admin, moat_testkit::customers_csv(rows)).await;
    assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
    s.label_bench_customers(&admin, "t").await;
    s.post("/v1/users", &admin, json!({"email": "v@acme.example", "password": PASSWORD, "role": "viewer"})).await;
    let viewer = s.login(Some("acme"), "v@acme.example", PASSWORD).await;
    let sql = move |i: usize| format!("SELECT id, name, email, ssn, amount FROM t WHERE id = {}", (i * 7919) % rows);

    // Latency: one client, after a warm-up.
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let r = s.query(&viewer, &sql(i)).await;
        let took = t.elapsed();
        assert_eq!(r.body["row_count"], 1, "{:?}", r.body);
        if i >= n / 10 {
            lat.push(took);
        }
    }
    // Throughput: `clients` at once.
    let s = std::sync::Arc::new(s);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (s, viewer) = (s.clone(), viewer.clone());
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(clients) {
                let r = s.query(&viewer, &sql(i)).await;
                assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let queries_per_s = n as f64 / t.elapsed().as_secs_f64();
    Figures { query: Stats::of(lat), queries_per_s, tenants_per_s, provision: Stats::of(provision) }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if moat_store::pg_testing::TestDb::base_from_env().is_none() {
        println!("MOAT_TEST_PG is not set: nothing to compare the embedded store with (skipped)");
        return;
    }
    let (rows, n, clients, tenants) =
        (env("MOAT_BENCH_ROWS", 100_000), env("MOAT_BENCH_QUERIES", 1_000), env("MOAT_BENCH_CLIENTS", 4), env("MOAT_BENCH_TENANTS", 50));
    let embedded = measure(Store::Embedded, rows, n, clients, tenants).await;
    let postgres = measure(Store::Postgres, rows, n, clients, tenants).await;
    compare(
        &format!("governed query + durable audit record over HTTP ({rows} rows, a Viewer, 3 masked columns, {n} queries)"),
        (&embedded.query, &postgres.query),
        &format!("queries per second with {clients} clients"),
        (embedded.queries_per_s, postgres.queries_per_s),
    );
    compare(
        &format!("tenant provisioning ({tenants} tenants, each validated and audited)"),
        (&embedded.provision, &postgres.provision),
        "tenants per second",
        (embedded.tenants_per_s, postgres.tenants_per_s),
    );
}

/// One measurement on both stores: latency rows (embedded is the baseline) and a rate.
fn compare(title: &str, (embedded, postgres): (&Stats, &Stats), rate: &str, (e, p): (f64, f64)) {
    println!("{title}:");
    row("  embedded (SQLite)", embedded, embedded, "embedded");
    row("  PostgreSQL", postgres, embedded, "embedded");
    println!("  {rate}: embedded {e:.1}/s, PostgreSQL {p:.1}/s (ratio {:.2}x)", p / e);
}
