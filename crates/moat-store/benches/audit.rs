//! Audit log benchmarks (embedded SQLite, `synchronous=FULL`), each beside a baseline measured
//! in the same run:
//! - durable appends/s with Merkle + HMAC + group commit (concurrent writers through
//!   `AuditLog`) vs one transaction per event; ack latency p50/p99;
//! - time from ack until the record is in a signed checkpoint (p50/p99);
//! - offline verification rate (records/s on one core), with and without HMACs;
//! - inclusion proof size and time at `MOAT_BENCH_RECORDS` records (default 1,000,000);
//! - search at that size: "queries by analyst X on table Y in the last 90 days" (columns), the
//!   same with a full-text word, and a first page unfiltered as the baseline; and how long the
//!   first full-text search waits for the index (built off the commit path) to catch up.
//!
//! `cargo bench -p moat-store --profile bench-fast --bench audit`
//! Env: MOAT_BENCH_SECS (load duration, default 3), MOAT_BENCH_WRITERS (default 512),
//! MOAT_BENCH_RECORDS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
use moat_core::audit_verify::{EntryView, TrailVerifier};
use moat_core::bench::Stats;
use moat_core::ids::TenantId;
use moat_core::tlog;
use moat_store::audit_log::{AuditLog, AuditLogConfig, CheckpointKey, Checkpointer};
use moat_store::sqlite::SqliteStore;
use moat_store::{AuditStore, NewAuditEntry, Stores};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A query event: 50 analysts over 20 tables, so searches have something to select.
fn event(t: TenantId, i: u64) -> AuditEvent {
    let actor = Actor::anonymous(Some(&format!("analyst{}@acme.example", i % 50)));
    let mut e = AuditEvent::new(Some(t), Category::DataAccess, "query.execute", actor, Outcome::Success)
        .resource(format!("table:t{}", i % 20))
        .details(serde_json::json!({"sql": "SELECT name, email FROM customers WHERE id = $1", "rows": i % 100, "duration_ms": 3, "masked": ["email"]}));
    e.source_ip = Some("10.1.2.3".into());
    e.user_agent = Some("psql/16".into());
    e
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs = env("MOAT_BENCH_SECS", 3);
    let writers = env("MOAT_BENCH_WRITERS", 512);
    let records = env("MOAT_BENCH_RECORDS", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let stores = Stores::from_sqlite(SqliteStore::open(&dir.path().join("moat.db")).await.unwrap());
    let store: Arc<dyn AuditStore> = stores.audit.clone();
    let keys = AuditKeys::new([7; 32]);
    let tenant = TenantId::new();
    let trail = tenant.to_string();

    // Baseline: one transaction (one fsync) per event.
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(secs.min(2)) {
        let e = NewAuditEntry { event: event(tenant, n), ts_ms: now_ms(), event_id: uuid::Uuid::now_v7().to_string() };
        store.append_batch(&[e], &keys).await.unwrap();
        n += 1;
    }
    let single = n as f64 / t0.elapsed().as_secs_f64();
    println!("baseline: one transaction per event          {single:>10.0} appends/s");

    // Group commit through the writer, with the checkpointer running.
    let log = AuditLog::start(store.clone(), keys.clone(), AuditLogConfig::default());
    let key = CheckpointKey::new("bench.local", [8; 32]).unwrap();
    tokio::spawn(Checkpointer::new(store.clone(), key, None).run(log.clone(), Duration::from_millis(500), now_ms));
    let (before, batches_before) = log.stats();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut acks = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = log.append(event(tenant, w * 1_000_000 + i), now_ms()).await.unwrap();
                lat.push(t.elapsed());
                if i.is_multiple_of(50) {
                    acks.push((r.seq as u64, Instant::now()));
                }
                i += 1;
            }
            (lat, acks)
        }));
    }
    // Watch checkpoints: time from ack to the first checkpoint covering the record.
    let watcher = {
        let store = store.clone();
        let trail = trail.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(u64, Instant)> = Vec::new();
            let end = deadline + Duration::from_secs(3);
            while Instant::now() < end {
                if let Some(cp) = store.latest_checkpoint(&trail).await.unwrap() {
                    seen.push((cp.size, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let mut lat = Vec::new();
    let mut acks = Vec::new();
    for t in tasks {
        let (l, a) = t.await.unwrap();
        lat.extend(l);
        acks.extend(a);
    }
    let elapsed = t0.elapsed();
    let (after, batches_after) = log.stats();
    let appended = after - before;
    let rate = appended as f64 / elapsed.as_secs_f64();
    let s = Stats::of(lat);
    println!(
        "group commit, {writers} writers, Merkle+HMAC     {rate:>10.0} appends/s  ({:.1}x baseline; {:.0} events/transaction)  ack p50={:.2?} p99={:.2?}",
        rate / single,
        appended as f64 / (batches_after - batches_before).max(1) as f64,
        s.p50,
        s.p99
    );
    let seen = watcher.await.unwrap();
    let to_cp: Vec<Duration> = acks
        .iter()
        .filter_map(|(seq, at)| seen.iter().find(|(size, when)| size >= seq && when >= at).map(|(_, when)| *when - *at))
        .collect();
    if !to_cp.is_empty() {
        let c = Stats::of(to_cp);
        println!("ack → signed checkpoint (interval 500 ms)      p50={:.2?} p99={:.2?} (n={})", c.p50, c.p99, c.n);
    }

    // Offline verification of the trail, one core.
    let mut rows = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = store.entries(&trail, after_seq, 50_000).await.unwrap();
        let Some(last) = page.last().map(|e| e.seq) else { break };
        after_seq = last;
        rows.extend(page.into_iter().map(|e| (e.seq, e.entry, hex::decode(e.hmac).unwrap())));
    }
    for (label, key) in [("Merkle only", None), ("Merkle + HMAC", Some(keys.trail_key(&trail)))] {
        let t = Instant::now();
        let mut v = TrailVerifier::new(&trail, key);
        for (seq, entry, mac) in &rows {
            v.entry(&EntryView { seq: *seq, entry: entry.as_bytes(), leaf_hash: None, hmac: Some(mac) }).unwrap();
        }
        v.finish().unwrap();
        let el = t.elapsed();
        println!(
            "offline verification, {label:<14}         {:>10.0} records/s ({} records, one core)",
            rows.len() as f64 / el.as_secs_f64(),
            rows.len()
        );
    }

    // Proofs at `records` records: fill a second trail in large batches.
    let big = TenantId::new();
    let big_trail = big.to_string();
    let t = Instant::now();
    let mut i = 0;
    while i < records {
        let n = (records - i).min(4_096);
        let batch: Vec<NewAuditEntry> = (0..n)
            .map(|k| NewAuditEntry { event: event(big, i + k), ts_ms: now_ms(), event_id: uuid::Uuid::now_v7().to_string() })
            .collect();
        store.append_batch(&batch, &keys).await.unwrap();
        i += n;
    }
    println!("filled {records} records in large batches        {:>10.0} appends/s", records as f64 / t.elapsed().as_secs_f64());
    let head = store.trail_head(&big_trail).await.unwrap();
    let mut times = Vec::new();
    let mut size = 0;
    for k in 0..200u64 {
        let index = (k * 7_919 * 1_009) % head.size;
        let t = Instant::now();
        let spans = tlog::inclusion_ranges(index, head.size).unwrap();
        let mut ids = vec![tlog::NodeId { level: 0, index }];
        for sp in &spans {
            tlog::nodes_of(*sp, &mut ids);
        }
        let nodes = store.nodes(&big_trail, &ids).await.unwrap();
        let proof: Vec<tlog::Hash> = spans.iter().map(|sp| tlog::span_hash(*sp, &|id| nodes.get(&id).copied()).unwrap()).collect();
        times.push(t.elapsed());
        let leaf = nodes[&tlog::NodeId { level: 0, index }];
        tlog::verify_inclusion(index, head.size, &leaf, &proof, &head.root).unwrap();
        size = proof.len() * 32;
    }
    let p = Stats::of(times);
    println!("inclusion proof at {} records: {size} bytes, build p50={:.2?} p99={:.2?}", head.size, p.p50, p.p99);

    // Search at `records` records. The full-text index is caught up off the commit path; the
    // first full-text search waits for whatever it has not indexed yet.
    let t = Instant::now();
    store.list(Some(big), &moat_store::AuditFilter { q: Some("analyst1".into()), limit: 1, ..Default::default() }).await.unwrap();
    println!("first full-text search after the fill (index catch-up) {:.2?}", t.elapsed());
    let since = now_ms() - 90 * 86_400_000;
    let searches: [(&str, moat_store::AuditFilter); 3] = [
        ("first page, no filter (baseline)", moat_store::AuditFilter { limit: 100, ..Default::default() }),
        (
            "analyst X, table Y, action, 90 days",
            moat_store::AuditFilter {
                actor: Some("analyst7@acme.example".into()),
                action: Some("query".into()),
                resource: Some("table:t7".into()),
                from_ms: Some(since),
                limit: 100,
                ..Default::default()
            },
        ),
        (
            "full text \"analyst7 t7\", 90 days",
            moat_store::AuditFilter { q: Some("analyst7 t7".into()), from_ms: Some(since), limit: 100, ..Default::default() },
        ),
    ];
    let mut base = None;
    for (label, f) in searches {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..20 {
            let t = Instant::now();
            found = store.list(Some(big), &f).await.unwrap().len();
            times.push(t.elapsed());
        }
        let st = Stats::of(times);
        let ratio = base.map(|b: Duration| st.p50.as_secs_f64() / b.as_secs_f64().max(1e-9)).unwrap_or(1.0);
        base.get_or_insert(st.p50);
        println!("search at {records} records, {label:<36} {found:>4} hits  p50={:.2?} p99={:.2?} ({ratio:.1}x baseline)", st.p50, st.p99);
    }

    let leaf = tlog::leaf_hash(b"x");
    let proof = vec![[0u8; 32]; 20];
    let v = moat_core::bench::measure(10_000, || {
        let _ = std::hint::black_box(tlog::verify_inclusion(5, head.size, &leaf, &proof, &head.root));
    });
    println!("inclusion proof verification                   p50={:.2?}", v.p50);
}
