//! `pgbench` against moat's PostgreSQL wire protocol and against the same data loaded in a
//! real PostgreSQL, same script, same clients, one run: what the governed path (tenant
//! catalog, masking at the scan, durable audit record before the answer) costs next to a plain
//! database. The script is a selective lookup by key as a Viewer (three masked columns).
//!
//! `cargo bench -p moat-testkit --profile bench-fast --bench pgwire`
//! Needs `pgbench` and `psql` on PATH and a PostgreSQL at MOAT_BENCH_PG (default: MOAT_TEST_PG,
//! else postgres://postgres@127.0.0.1:5432/test); the table `moat_bench_customers` is
//! (re)created there. Env: MOAT_BENCH_ROWS (default 100,000), MOAT_BENCH_CLIENTS (default 8),
//! MOAT_BENCH_SECS (default 10), MOAT_BENCH_MODE (pgbench -M: simple, extended or prepared;
//! default: each of them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use moat_testkit::serde_json::json;
use moat_testkit::{PASSWORD, TestServer};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs pgbench and returns its transactions per second (excluding connection time).
fn pgbench(conn: &str, password: &str, script: &std::path::Path, mode: &str, clients: u64, secs: u64) -> f64 {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-M", mode, "-f"]).arg(script).args(["-c", &clients.to_string(), "-j", &clients.min(4).to_string()]);
    // The connection string goes where pgbench takes the database name.
    cmd.args(["-T", &secs.to_string(), conn]);
    let out = cmd.env("PGPASSWORD", password).output().expect("pgbench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = ").and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no tps in pgbench output: {stdout}"))
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql").args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("psql runs");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if Command::new("pgbench").arg("--version").output().is_err() {
        println!("pgbench is not installed (Debian: postgresql-client); skipped");
        return;
    }
    let rows = env("MOAT_BENCH_ROWS", 100_000) as usize;
    let clients = env("MOAT_BENCH_CLIENTS", 8);
    let secs = env("MOAT_BENCH_SECS", 10);
    let pg_url = std::env::var("MOAT_BENCH_PG")
        .or_else(|_| std::env::var("MOAT_TEST_PG"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let modes: Vec<String> = match std::env::var("MOAT_BENCH_MODE") {
        Ok(m) => vec![m],
        Err(_) => ["simple", "extended", "prepared"].map(str::to_owned).to_vec(),
    };

    let dir = tempfile::tempdir().unwrap();
    let csv = moat_testkit::customers_csv(rows);
    let csv_path = dir.path().join("customers.csv");
    std::fs::write(&csv_path, &csv).unwrap();

    // moat: the table classified as in the audit overhead bench, queried by a Viewer.
    let s = TestServer::start_with(|c| c.ingest.body_limit_bytes = 1 << 34).await;
    let admin = s.tenant_with_admin("acme").await;
    assert_eq!(s.put_csv("/v1/tables/moat_bench_customers", &admin, csv).await.status.as_u16(), 201);
    s.label_bench_customers(&admin, "moat_bench_customers").await;
    s.post("/v1/users", &admin, json!({"email": "v@acme.example", "password": PASSWORD, "role": "viewer"})).await;

    // PostgreSQL: the same rows, with a primary key (what a DBA would give this lookup).
    psql(
        &pg_url,
        "DROP TABLE IF EXISTS moat_bench_customers; \
         CREATE TABLE moat_bench_customers (id bigint PRIMARY KEY, name text, email text, ssn text, amount double precision)",
    );
    psql(&pg_url, &format!("\\copy moat_bench_customers FROM '{}' CSV HEADER", csv_path.display()));
    psql(&pg_url, "ANALYZE moat_bench_customers");

    let script = dir.path().join("lookup.sql");
    std::fs::write(
        &script,
        format!("\\set k random(0, {})\nSELECT id, name, email, ssn, amount FROM moat_bench_customers WHERE id = :k;\n", rows - 1),
    )
    .unwrap();
    let moat_conn = format!("host={} port={} user=v@acme.example dbname=acme", s.pg.ip(), s.pg.port());
    let pg_conn = pg_url.clone();

    println!("pgbench lookup by key, {rows} rows, {clients} clients, {secs} s per run:");
    for mode in &modes {
        // Warm both, then measure back to back (pgbench is a separate process; the server
        // shares this one's runtime).
        let run = |conn: &str, pw: &str, secs: u64| {
            let (conn, pw, script, mode) = (conn.to_owned(), pw.to_owned(), script.clone(), mode.clone());
            tokio::task::spawn_blocking(move || pgbench(&conn, &pw, &script, &mode, clients, secs))
        };
        run(&moat_conn, PASSWORD, 1).await.unwrap();
        run(&pg_conn, "", 1).await.unwrap();
        let moat = run(&moat_conn, PASSWORD, secs).await.unwrap();
        let postgres = run(&pg_conn, "", secs).await.unwrap();
        println!(
            "  -M {mode:<8}  PostgreSQL {postgres:>9.0} tps   moat (governed, audited) {moat:>8.0} tps   ratio {:.3}",
            moat / postgres
        );
    }
    psql(&pg_url, "DROP TABLE IF EXISTS moat_bench_customers");
}
