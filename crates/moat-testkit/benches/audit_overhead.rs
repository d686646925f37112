//! What the durable audit trail costs the query path, in throughput: concurrent clients run the
//! same governed query (a selective lookup as a Viewer, three columns masked) against two
//! servers in one run — one with the real audit log (group commit, fsync, Merkle, HMAC,
//! checkpoints, search index), one whose audit store accepts every record at no cost (the
//! baseline: "audit off", which the product itself never offers). Goal: overhead ≤ 5 %
//! (pgaudit's range is 2–20 %).
//!
//! `cargo bench -p moat-testkit --profile bench-fast --bench audit_overhead`
//! Env: MOAT_BENCH_ROWS (table size, default 100,000), MOAT_BENCH_CLIENTS (default 16),
//! MOAT_BENCH_SECS (per server and round, default 5), MOAT_BENCH_ROUNDS (default 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moat_core::Result;
use moat_core::audit::{AuditKeys, trail_name};
use moat_core::tlog::{Hash, NodeId};
use moat_store::{
    Appended, AuditFilter, AuditRecord, AuditStore, CheckpointRecord, NewAuditEntry, Prune, SegmentCategory, StoredEntry, Stores, TrailHead,
};
use moat_testkit::serde_json::json;
use moat_testkit::{PASSWORD, TestServer};

/// Accepts every record at no cost (numbers it, writes nothing); reads go to the real store.
struct NoCostAudit {
    inner: Arc<dyn AuditStore>,
    seq: AtomicI64,
}

#[async_trait]
impl AuditStore for NoCostAudit {
    async fn append_batch(&self, batch: &[NewAuditEntry], _keys: &AuditKeys) -> Result<Vec<Appended>> {
        Ok(batch
            .iter()
            .map(|n| Appended {
                trail: trail_name(n.event.tenant_id),
                seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
                leaf_hash: [0; 32],
            })
            .collect())
    }
    async fn list(&self, trail: Option<moat_core::ids::TenantId>, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.inner.list(trail, f).await
    }
    async fn trail_head(&self, trail: &str) -> Result<TrailHead> {
        self.inner.trail_head(trail).await
    }
    async fn trail_heads(&self) -> Result<Vec<(String, TrailHead)>> {
        self.inner.trail_heads().await
    }
    async fn nodes(&self, trail: &str, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>> {
        self.inner.nodes(trail, ids).await
    }
    async fn entries(&self, trail: &str, after: i64, limit: u32) -> Result<Vec<StoredEntry>> {
        self.inner.entries(trail, after, limit).await
    }
    async fn put_checkpoint(&self, cp: &CheckpointRecord) -> Result<()> {
        self.inner.put_checkpoint(cp).await
    }
    async fn latest_checkpoint(&self, trail: &str) -> Result<Option<CheckpointRecord>> {
        self.inner.latest_checkpoint(trail).await
    }
    async fn checkpoints(&self, trail: &str, after_size: u64, limit: u32) -> Result<Vec<CheckpointRecord>> {
        self.inner.checkpoints(trail, after_size, limit).await
    }
    async fn segment_categories(&self, trail: &str, through_seq: i64, segment_records: u64) -> Result<Vec<SegmentCategory>> {
        self.inner.segment_categories(trail, through_seq, segment_records).await
    }
    async fn category_seqs(&self, trail: &str, first: i64, last: i64, category: &str) -> Result<Vec<i64>> {
        self.inner.category_seqs(trail, first, last, category).await
    }
    async fn prune(&self, p: &Prune) -> Result<u64> {
        self.inner.prune(p).await
    }
    async fn prunes(&self, trail: &str) -> Result<Vec<Prune>> {
        self.inner.prunes(trail).await
    }
    async fn lease_cursor(&self, sink: &str, trail: &str, owner: &str, now_ms: i64, until_ms: i64, start: i64) -> Result<Option<i64>> {
        self.inner.lease_cursor(sink, trail, owner, now_ms, until_ms, start).await
    }
    async fn advance_cursor(&self, sink: &str, trail: &str, owner: &str, seq: i64) -> Result<bool> {
        self.inner.advance_cursor(sink, trail, owner, seq).await
    }
    async fn cursors(&self, sink: &str) -> Result<Vec<(String, i64)>> {
        self.inner.cursors(sink).await
    }
}

/// A server with the customers-like table and a Viewer's token.
async fn server(rows: usize, no_cost_audit: bool) -> (TestServer, String) {
    let s = TestServer::start_with_stores(
        |c| {
            c.ingest.body_limit_bytes = 1 << 34;
            // The load, not the tenant's concurrency cap, decides (MOAT_BENCH_CLIENTS may be large).
            c.query.max_concurrent_per_tenant = 4096;
            // Every query runs: later rounds repeat the first round's SQL.
            c.cache.result_ttl_s = 0;
        },
        |stores| match no_cost_audit {
            true => Stores { audit: Arc::new(NoCostAudit { inner: stores.audit.clone(), seq: AtomicI64::new(1_000_000) }), ..stores },
            false => stores,
        },
    )
    .await;
    let admin = s.tenant_with_admin("acme").await;
    assert_eq!(s.put_csv("/v1/tables/t", &admin, moat_testkit::customers_csv(rows)).await.status.as_u16(), 201);
    s.label_bench_customers(&admin, "t").await;
    s.post("/v1/users", &admin, json!({"email": "v@acme.example", "password": PASSWORD, "role": "viewer"})).await;
    let viewer = s.login(Some("acme"), "v@acme.example", PASSWORD).await;
    (s, viewer)
}

/// Queries/s with `clients` concurrent clients for `secs`.
async fn load(s: &TestServer, token: &str, rows: usize, clients: usize, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, token, done) = (s.http.clone(), format!("{}/v1/query", s.base), token.to_owned(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = c;
            while Instant::now() < deadline {
                let key = (i * 7919) % rows;
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"sql": format!("SELECT id, name, email, ssn, amount FROM t WHERE id = {key}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                r.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                i += clients;
            }
        }));
    }
    let t = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows = env("MOAT_BENCH_ROWS", 100_000) as usize;
    let clients = env("MOAT_BENCH_CLIENTS", 16) as usize;
    let secs = env("MOAT_BENCH_SECS", 5);
    let rounds = env("MOAT_BENCH_ROUNDS", 3);
    let (real, real_token) = server(rows, false).await;
    let (free, free_token) = server(rows, true).await;
    // Warm both (plans, pages, connections), then alternate so drift hits both alike.
    load(&real, &real_token, rows, clients, 1).await;
    load(&free, &free_token, rows, clients, 1).await;
    let (mut with_audit, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with_audit.push(load(&real, &real_token, rows, clients, secs).await);
        without.push(load(&free, &free_token, rows, clients, secs).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut with_audit), median(&mut without));
    println!("governed query, {rows} rows, Viewer, {clients} clients, median of {rounds} x {secs} s:");
    println!("  baseline: audit store at no cost            {b:>8.0} queries/s");
    println!("  durable audit log (group commit, fsync)     {a:>8.0} queries/s  ({:.3}x baseline)", a / b);
    let overhead = (1.0 - a / b) * 100.0;
    println!("  audit throughput overhead {overhead:.1} % -> goal <= 5 %: {}", if overhead <= 5.0 { "met" } else { "NOT met" });
}
