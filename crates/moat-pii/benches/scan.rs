//! Scanner speed: sampled cells classified per second on one core, over the labelled corpus
//! (seven locales, 1,000 rows per column by default; MOAT_BENCH_ROWS to change). Goal: at
//! least 1,000,000 cells/s per core. Baseline in the same run: one pass that only trims and
//! measures each cell (the floor of touching every value).
//! `cargo bench -p moat-pii --profile bench-fast --bench scan`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use moat_pii::corpus::corpus;
use moat_pii::{ScanOptions, scan_column};

fn main() {
    let rows: usize = std::env::var("MOAT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let columns = corpus(42, rows);
    let views: Vec<Vec<Option<&str>>> = columns.iter().map(|c| c.values.iter().map(|v| v.as_deref()).collect()).collect();
    let cells: usize = views.iter().map(|v| v.iter().flatten().count()).sum();
    let opts = ScanOptions::default();
    let mut best_scan = f64::INFINITY;
    let mut best_touch = f64::INFINITY;
    let mut sink = 0usize;
    for _ in 0..5 {
        let t = Instant::now();
        for v in &views {
            sink += v.iter().flatten().map(|s| s.trim().len()).sum::<usize>();
        }
        best_touch = best_touch.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (c, v) in columns.iter().zip(&views) {
            sink += scan_column(&c.name, v, &opts).reason.len();
        }
        best_scan = best_scan.min(t.elapsed().as_secs_f64());
    }
    let rate = cells as f64 / best_scan;
    println!("corpus: {} columns, {cells} non-NULL cells (checksum {sink})", columns.len());
    println!("touch every cell (baseline): {:>12.0} cells/s", cells as f64 / best_touch);
    println!("scan, one core:              {rate:>12.0} cells/s ({:.1}x the baseline's time)", best_scan / best_touch);
    println!("goal >= 1,000,000 cells/s per core -> {}", if rate >= 1e6 { "met" } else { "NOT met" });
}
