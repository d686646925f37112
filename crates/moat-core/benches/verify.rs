//! Offline verification of one audit trail on one core, without a store: what an auditor's
//! `moat audit verify --bundle` spends per record (issue #6 goal: ≥ 1M records/s per core).
//! Prints the whole rate (Merkle only, as with an export bundle and no audit key; and Merkle +
//! HMAC) and, beside it, each step's cost per record, measured in the same run.
//!
//! `cargo bench -p moat-core --bench verify --profile bench-fast`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use moat_core::audit::{AuditKeys, EntryFields, TrailMac, encode_entry};
use moat_core::audit_verify::{EntryView, TrailVerifier};
use moat_core::tlog::{Frontier, leaf_hash};

const RECORDS: i64 = 1_000_000;
const TRAIL: &str = "0192f0c4-5b7e-7cc1-9d1e-3f0a8b2c4d5e";

/// A query record as the governed path writes it (about 520 bytes).
fn entries() -> Vec<Vec<u8>> {
    let actor = serde_json::json!({"via": "session", "user_id": "0192f0c4-0000-7cc1-9d1e-3f0a8b2c4d5e", "role": "analyst",
                                   "email": "ann.analyst@acme.example"});
    (1..=RECORDS)
        .map(|seq| {
            let details = serde_json::json!({
                "sql": format!("SELECT name, email, ssn FROM customers WHERE id = {seq}"),
                "tables": ["customers"], "columns": ["email", "id", "name", "ssn"], "masked": ["email", "ssn"],
                "rows": 1, "bytes": 96, "duration_ms": 3, "via": "http"});
            encode_entry(&EntryFields {
                trail: TRAIL,
                seq,
                ts_ms: 1_764_000_000_000 + seq,
                event_id: &format!("0192f0c4-5b7e-7cc1-9d1e-{seq:012}"),
                category: "data_access",
                action: "query.execute",
                outcome: "success",
                actor: &actor,
                resource: Some("table:customers"),
                source_ip: Some("10.1.2.3"),
                user_agent: Some("moat-cli/0.1.0"),
                request_id: Some("0192f0c4-5b7e-7cc1-9d1e-3f0a8b2c4d5f"),
                details: &details,
            })
        })
        .collect()
}

/// Best of three passes over every record.
fn per_record(rows: usize, mut pass: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            pass();
            t.elapsed()
        })
        .min()
        .unwrap()
        / rows as u32
}

fn main() {
    let entries = entries();
    let keys = AuditKeys::new([7; 32]);
    let key = keys.trail_key(TRAIL);
    let macs: Vec<[u8; 32]> = entries.iter().map(|e| keys.hmac(TRAIL, e)).collect();
    let n = entries.len();
    let avg = entries.iter().map(Vec::len).sum::<usize>() / n;
    println!("{n} records of {avg} bytes on average, one core");

    for (label, hmac_key) in [("Merkle only", None), ("Merkle + HMAC", Some(key))] {
        let each = per_record(n, || {
            let mut v = TrailVerifier::new(TRAIL, hmac_key);
            for (i, (e, mac)) in entries.iter().zip(&macs).enumerate() {
                v.entry(&EntryView { seq: i as i64 + 1, entry: e, leaf_hash: None, hmac: Some(mac) }).unwrap();
            }
            black_box(v.finish().unwrap());
        });
        println!("verification, {label:<14} {:>10.0} records/s   ({each:.2?} per record)", 1.0 / each.as_secs_f64());
    }

    let leaf = per_record(n, || {
        for e in &entries {
            black_box(leaf_hash(black_box(e)));
        }
    });
    let mac = TrailMac::new(&key);
    let hmac = per_record(n, || {
        for e in &entries {
            black_box(mac.tag(black_box(e)));
        }
    });
    let leaves: Vec<_> = entries.iter().map(|e| leaf_hash(e)).collect();
    let frontier = per_record(n, || {
        let mut f = Frontier::new();
        for l in &leaves {
            f.append(*l, |_, _| {});
        }
        black_box(f.root());
    });
    let parse = per_record(n, || {
        for e in &entries {
            black_box(moat_core::audit_verify::entry_position(black_box(e)).unwrap());
        }
    });
    println!("  per record: leaf hash {leaf:.2?}, HMAC {hmac:.2?}, frontier {frontier:.2?}, position read {parse:.2?}");
    // Baselines, same run: validating the entry as JSON and nothing else (serde_json's
    // `IgnoredAny`: the floor of any JSON read), and an HMAC keyed at every tag (aws-lc's
    // one-shot `hmac::sign`, what `TrailMac` was before).
    let serde = per_record(n, || {
        for e in &entries {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(e)).unwrap());
        }
    });
    let aws_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let keyed_each = per_record(n, || {
        for e in &entries {
            black_box(aws_lc_rs::hmac::sign(&aws_key, black_box(e)));
        }
    });
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("  position read {parse:.2?} vs JSON validation alone {serde:.2?}: ratio {:.2}x", ratio(parse, serde));
    println!("  HMAC keyed once {hmac:.2?} vs aws-lc hmac::sign {keyed_each:.2?}: ratio {:.2}x", ratio(hmac, keyed_each));
}
