//! Helpers for the benchmarks in `benches/`: percentiles and one printed line per measurement,
//! always beside a baseline measured in the same run.

use std::time::{Duration, Instant};

pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub n: usize,
}

impl Stats {
    /// Percentiles of `samples` (at least one).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len();
        Self { p50: samples[n / 2], p99: samples[((n * 99) / 100).min(n - 1)], n }
    }
}

/// Times `f` `n` times individually (after a warm-up) and returns percentiles.
pub fn measure(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..n.min(1000) / 10 {
        f();
    }
    Stats::of(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Prints a measurement beside its baseline and their p50 ratio.
pub fn row(name: &str, s: &Stats, base: &Stats, base_name: &str) {
    let ratio = s.p50.as_secs_f64() / base.p50.as_secs_f64();
    println!(
        "{name:<34} n={:<6} p50={:>10.2?} p99={:>10.2?}   baseline {base_name}: p50={:>10.2?}  ratio {ratio:.2}x",
        s.n, s.p50, s.p99, base.p50
    );
}
