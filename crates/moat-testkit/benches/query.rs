//! Governance overhead of a query over HTTP: a selective query on an unmasked key of a 1M-row
//! table (MOAT_BENCH_ROWS to change), end to end through `POST /v1/query` as a Viewer for whom
//! three columns are masked. The server reports where the time went (`Server-Timing`); the
//! overhead is the client-side latency minus execution. Baseline in the same run: `GET /healthz`
//! (the HTTP floor). Goal: overhead ≤ 300 µs p50.
//!
//! `cargo bench -p moat-testkit --profile bench-fast --bench query`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use moat_testkit::bench::{Stats, row};
use moat_testkit::reqwest::Method;
use moat_testkit::serde_json::json;
use moat_testkit::{PASSWORD, TestServer};

fn timing(header: &str, name: &str) -> Duration {
    header
        .split(',')
        .find_map(|p| p.trim().strip_prefix(name)?.strip_prefix(";dur=")?.parse::<f64>().ok())
        .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1e3))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows: usize = std::env::var("MOAT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let n: usize = std::env::var("MOAT_BENCH_QUERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let s = TestServer::start_with(|c| c.ingest.body_limit_bytes = 1 << 34).await;
    let admin = s.tenant_with_admin("acme").await;
    let csv = moat_testkit::customers_csv(rows);
    let t = Instant::now();
    let r = s.put_csv("/v1/tables/t", &admin, csv).await;
    assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
    println!("table: {rows} rows imported over HTTP in {:.1} s", t.elapsed().as_secs_f64());
    for (col, label, pii, entity) in [
        ("id", "PUBLIC", "none", None),
        ("name", "CONFIDENTIAL", "direct", Some("person_name")),
        ("email", "CONFIDENTIAL", "direct", Some("email")),
        ("ssn", "CONFIDENTIAL", "direct", Some("ssn")),
        ("amount", "INTERNAL", "none", None),
    ] {
        s.label_in(&admin, "t", col, label, pii, entity).await;
    }
    s.post("/v1/users", &admin, json!({"email": "v@acme.example", "password": PASSWORD, "role": "viewer"})).await;
    let viewer = s.login(Some("acme"), "v@acme.example", PASSWORD).await;

    let mut healthz = Vec::with_capacity(n);
    let (mut total, mut exec, mut overhead) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut catalog, mut plan, mut audit) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut session, mut logical, mut physical) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let t = Instant::now();
        s.send(Method::GET, "/healthz", None, None, None).await;
        let h = t.elapsed();
        let key = (i * 7919) % rows;
        let t = Instant::now();
        let resp = s
            .http
            .post(format!("{}/v1/query", s.base))
            .bearer_auth(&viewer)
            .json(&json!({"sql": format!("SELECT id, name, email, ssn, amount FROM t WHERE id = {key}")}))
            .send()
            .await
            .unwrap();
        let st = resp.headers().get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body: moat_testkit::serde_json::Value = resp.json().await.unwrap();
        let elapsed = t.elapsed();
        assert_eq!(body["row_count"], 1, "{body}");
        if i < n / 10 {
            continue; // warm-up
        }
        healthz.push(h);
        let e = timing(&st, "exec");
        total.push(elapsed);
        exec.push(e);
        overhead.push(elapsed.saturating_sub(e));
        catalog.push(timing(&st, "catalog"));
        plan.push(timing(&st, "plan"));
        audit.push(timing(&st, "audit"));
        session.push(timing(&st, "session"));
        logical.push(timing(&st, "logical"));
        physical.push(timing(&st, "physical"));
    }
    let base = Stats::of(healthz);
    println!("selective query on an unmasked key, {rows} rows, as a Viewer (3 masked columns), {n} queries:");
    row("end to end over HTTP", &Stats::of(total), &base, "GET /healthz");
    row("  execution (DataFusion)", &Stats::of(exec), &base, "GET /healthz");
    let o = Stats::of(overhead);
    row("  governance overhead (all but exec)", &o, &base, "GET /healthz");
    row("    of which catalog + policy", &Stats::of(catalog), &base, "GET /healthz");
    row("    of which restrict + mask + plan", &Stats::of(plan), &base, "GET /healthz");
    row("      session + governed catalog", &Stats::of(session), &base, "GET /healthz");
    row("      parse + logical plan", &Stats::of(logical), &base, "GET /healthz");
    row("      physical plan + start", &Stats::of(physical), &base, "GET /healthz");
    row("    of which durable audit record", &Stats::of(audit), &base, "GET /healthz");
    println!("  goal: governance overhead p50 <= 300 us -> {}", if o.p50 <= Duration::from_micros(300) { "met" } else { "NOT met" });
}
