//! PII discovery on tables: rows are sampled (reservoir) while a table is imported, each column
//! of the sample goes through `moat_pii`'s scanner, and the proposals become the catalog's
//! labels for every column nobody has labelled by hand (`source: scanner`, with a confidence).
//! A manual label always wins and is never overwritten by a scan.

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use moat_core::clock::UnixSeconds;
use moat_pii::scan::Reservoir;
use moat_pii::{Category, Proposal, ScanOptions, k_anonymity, scan_column};
use moat_store::ColumnRecord;
use serde::{Deserialize, Serialize};

/// The `[scan]` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Scan every imported table and label its unlabelled columns.
    pub on_ingest: bool,
    /// Rows sampled per table.
    pub sample_rows: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self { on_ingest: true, sample_rows: 1_000 }
    }
}

impl ScanConfig {
    /// Scanner options at `now`.
    pub fn options(&self, now: UnixSeconds) -> ScanOptions {
        // Civil year from Unix time (days / 365.2425); exact enough to tell birth dates.
        let year = 1970 + now.max(0) / 31_556_952;
        ScanOptions { sample_rows: self.sample_rows.max(1), now_year: u16::try_from(year).unwrap_or(u16::MAX), ..ScanOptions::default() }
    }
}

/// Rows of a table, sampled uniformly as its batches stream by; cells as text.
pub struct TableSample {
    names: Vec<String>,
    rows: Reservoir<Vec<Option<String>>>,
}

impl TableSample {
    pub fn new(schema: &SchemaRef, capacity: usize, seed: u64) -> Self {
        Self { names: schema.fields().iter().map(|f| f.name().clone()).collect(), rows: Reservoir::new(capacity, seed) }
    }

    pub fn observe(&mut self, batch: &RecordBatch) {
        let options = FormatOptions::default();
        let formatters: Vec<Option<ArrayFormatter<'_>>> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok()).collect();
        for row in 0..batch.num_rows() {
            self.rows.offer_with(|| {
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| match f {
                        Some(f) if !c.is_null(row) => Some(f.value(row).to_string()),
                        _ => None,
                    })
                    .collect()
            });
        }
    }

    /// Scans every column of the sample.
    pub fn scan(&self, options: &ScanOptions) -> ScanReport {
        let rows = self.rows.items();
        let mut columns = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            let values: Vec<Option<&str>> = rows.iter().map(|r| r.get(i).and_then(|v| v.as_deref())).collect();
            columns.push(ColumnScan { name: name.clone(), proposal: scan_column(name, &values, options) });
        }
        let quasi: Vec<usize> =
            columns.iter().enumerate().filter(|(_, c)| c.proposal.category == Category::Quasi).map(|(i, _)| i).collect();
        let k = (!quasi.is_empty()).then(|| {
            let tuples: Vec<Vec<Option<&str>>> =
                rows.iter().map(|r| quasi.iter().map(|&i| r.get(i).and_then(|v| v.as_deref())).collect()).collect();
            k_anonymity(&tuples)
        });
        ScanReport {
            rows_sampled: rows.len(),
            rows_seen: self.rows.seen(),
            quasi_identifiers: quasi.iter().map(|&i| columns[i].name.clone()).collect(),
            k_anonymity: k,
            columns,
        }
    }
}

/// A proposal's confidence as shown and stored: two decimals.
fn confidence(p: &Proposal) -> f64 {
    (f64::from(p.confidence) * 100.0).round() / 100.0
}

#[derive(Debug, Clone)]
pub struct ColumnScan {
    pub name: String,
    pub proposal: Proposal,
}

/// What a scan found in a table.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub rows_sampled: usize,
    pub rows_seen: u64,
    pub columns: Vec<ColumnScan>,
    /// Columns proposed as quasi-identifiers, and the smallest group of sampled rows sharing
    /// one combination of their values (1 = someone in the sample is unique on them).
    pub quasi_identifiers: Vec<String>,
    pub k_anonymity: Option<usize>,
}

impl ScanReport {
    /// The catalog column a proposal makes (labels carry over from a manual label in the store).
    pub fn column_record(&self, name: &str, data_type: &str) -> ColumnRecord {
        match self.columns.iter().find(|c| c.name == name) {
            Some(c) => ColumnRecord {
                name: name.into(),
                data_type: data_type.into(),
                classification: Some(c.proposal.label.as_str().into()),
                pii: c.proposal.category.as_str().into(),
                entity: c.proposal.entity.map(|e| e.as_str().into()),
                confidence: Some(confidence(&c.proposal)),
                source: "scanner".into(),
                mask: None,
            },
            None => ColumnRecord::unclassified(name, data_type),
        }
    }

    /// The report as JSON (upload answers, scan answers, audit details).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows_sampled": self.rows_sampled,
            "rows_seen": self.rows_seen,
            "quasi_identifiers": self.quasi_identifiers,
            "k_anonymity": self.k_anonymity,
            "columns": self.columns.iter().map(|c| serde_json::json!({
                "name": c.name,
                "pii": c.proposal.category.as_str(),
                "entity": c.proposal.entity.map(|e| e.as_str()),
                "classification": c.proposal.label.as_str(),
                "confidence": confidence(&c.proposal),
                "reason": c.proposal.reason,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn samples_scan_and_k_anonymity() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("email", DataType::Utf8, true),
            Field::new("zip", DataType::Utf8, true),
        ]));
        let mut s = TableSample::new(&schema, 50, 7);
        for part in 0..4 {
            let ids: Vec<i64> = (0..100).map(|i| part * 100 + i).collect();
            let emails: Vec<Option<String>> = ids.iter().map(|i| (i % 10 != 0).then(|| format!("user{i}@example.com"))).collect();
            let zips: Vec<String> = ids.iter().map(|i| format!("{:05}", 10_000 + i % 7)).collect();
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(emails)), Arc::new(StringArray::from(zips))],
            )
            .expect("batch");
            s.observe(&b);
        }
        let r = s.scan(&ScanConfig::default().options(1_790_000_000));
        assert_eq!((r.rows_sampled, r.rows_seen), (50, 400));
        let by = |n: &str| r.columns.iter().find(|c| c.name == n).expect("column").proposal.clone();
        assert_eq!(by("email").entity, Some(moat_pii::Entity::Email));
        assert_eq!(by("zip").category, Category::Quasi);
        assert_eq!(by("id").category, Category::None);
        assert_eq!(r.quasi_identifiers, ["zip"]);
        assert!(r.k_anonymity.is_some_and(|k| k >= 1));
        let rec = r.column_record("email", "Utf8");
        assert_eq!((rec.source.as_str(), rec.classification.as_deref(), rec.pii.as_str()), ("scanner", Some("CONFIDENTIAL"), "direct"));
        assert_eq!(ScanConfig::default().options(1_790_000_000).now_year, 2026);
    }
}
