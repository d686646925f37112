//! Precision, recall and F1 of the scanner per PII category on the labelled synthetic corpus
//! (seven locales, misleading names, near misses, NULLs). Fails below the floors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use moat_pii::corpus::corpus;
use moat_pii::{Category, ScanOptions, scan_column};

#[derive(Default, Debug)]
struct Counts {
    tp: usize,
    fp: usize,
    fn_: usize,
}

impl Counts {
    fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fp) as f64 }
    }
    fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fn_) as f64 }
    }
    fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
}

#[test]
fn scanner_meets_its_floors_on_the_corpus() {
    let opts = ScanOptions::default();
    let mut counts: std::collections::BTreeMap<Category, Counts> = Default::default();
    let mut misses = Vec::new();
    let mut entity_right = (0, 0);
    for seed in [1u64, 2, 3] {
        for col in corpus(seed, 300) {
            let values: Vec<Option<&str>> = col.values.iter().map(|v| v.as_deref()).collect();
            let got = scan_column(&col.name, &values, &opts);
            for c in [Category::Direct, Category::Quasi, Category::Derived] {
                let e = counts.entry(c).or_default();
                match (got.category == c, col.truth == c) {
                    (true, true) => e.tp += 1,
                    (true, false) => e.fp += 1,
                    (false, true) => e.fn_ += 1,
                    _ => {}
                }
            }
            if col.truth != Category::None && got.category == col.truth {
                entity_right.1 += 1;
                entity_right.0 += usize::from(got.entity == col.entity);
            }
            if got.category != col.truth {
                misses.push(format!(
                    "{}.{}: truth {:?}/{:?}, got {:?}/{:?} ({})",
                    col.table, col.name, col.truth, col.entity, got.category, got.entity, got.reason
                ));
            }
        }
    }
    println!("{:<8} {:>9} {:>7} {:>6}", "category", "precision", "recall", "F1");
    for (c, k) in &counts {
        println!("{:<8} {:>9.3} {:>7.3} {:>6.3}", c.as_str(), k.precision(), k.recall(), k.f1());
    }
    println!("entity right where the category is: {}/{}", entity_right.0, entity_right.1);
    for m in &misses {
        println!("miss: {m}");
    }
    let floor = |c: Category, f: f64| {
        let k = &counts[&c];
        assert!(k.f1() >= f, "{} F1 {:.3} below {f}; misses:\n{}", c.as_str(), k.f1(), misses.join("\n"));
    };
    floor(Category::Direct, 0.95);
    floor(Category::Quasi, 0.85);
    floor(Category::Derived, 0.85);
    assert!(entity_right.0 * 100 >= entity_right.1 * 95, "entities: {entity_right:?}");
}
