//! PII discovery on tables: rows are sampled (reservoir) while a table is imported, or read back
//! from storage when a scan is asked for, each column of the sample goes through `moat_pii`'s
//! scanner, the tenant's classification policy maps each proposal to a label (and optionally a
//! mask), and the result becomes the catalog's label for every column nobody has labelled by hand
//! (`source: scanner`, with a confidence). A manual label always wins and is never overwritten.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use moat_core::MoatError;
use moat_core::classification::Classification;
use moat_core::clock::UnixSeconds;
use moat_pii::scan::Reservoir;
use moat_pii::{Category, Entity, Proposal, ScanOptions, k_anonymity, scan_column};
use moat_query::TableStorage;
use moat_query::mask::MaskRule;
use moat_store::{ColumnRecord, TableRecord, TenantRelations};
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

/// The most rows a scan may sample (a sample is held in memory as text).
pub const MAX_SAMPLE_ROWS: usize = 100_000;

impl ScanConfig {
    /// Scanner options at `now`.
    pub fn options(&self, now: UnixSeconds) -> ScanOptions {
        // Civil year from Unix time (days / 365.2425); exact enough to tell birth dates.
        let year = 1970 + now.max(0) / 31_556_952;
        ScanOptions {
            sample_rows: self.sample_rows.clamp(1, MAX_SAMPLE_ROWS),
            now_year: u16::try_from(year).unwrap_or(u16::MAX),
            ..ScanOptions::default()
        }
    }
}

/// A tenant's mapping from what the scanner finds to labels and masks
/// (`/v1/policies/classification`). Keys are an entity (`email`, `ssn`, `zip`, …) or a PII
/// category (`direct`, `quasi`, `derived`, `none`); an entity's rule wins over its category's.
/// Without a rule the contract's defaults hold: government and financial identifiers
/// RESTRICTED, other personal data CONFIDENTIAL, columns without personal data INTERNAL, and the
/// mask chosen by the column's kind at query time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassificationPolicy {
    pub labels: BTreeMap<String, Classification>,
    pub masks: BTreeMap<String, MaskRule>,
    /// Proposals the scanner is less sure of (0–1) are not applied: the column stays
    /// unclassified, which counts as RESTRICTED until someone labels it. 0 applies every one.
    pub min_confidence: f64,
}

impl ClassificationPolicy {
    pub const MAX_RULES: usize = 64;

    pub fn validate(&self) -> Result<(), MoatError> {
        let bad = |m: String| Err(MoatError::invalid("invalid_policy", m));
        if self.labels.len() + self.masks.len() > Self::MAX_RULES {
            return bad(format!("at most {} rules in labels and masks together", Self::MAX_RULES));
        }
        for key in self.labels.keys().chain(self.masks.keys()) {
            if Entity::parse(key).is_none() && Category::parse(key).is_none() {
                let entities: Vec<&str> = Entity::ALL.iter().map(|e| e.as_str()).collect();
                return bad(format!(
                    "{key:?} is neither a PII category (direct, quasi, derived, none) nor an entity ({})",
                    entities.join(", ")
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad("min_confidence must be between 0 and 1".into());
        }
        Ok(())
    }

    fn rule<T: Copy>(map: &BTreeMap<String, T>, p: &Proposal) -> Option<T> {
        p.entity.and_then(|e| map.get(e.as_str())).or_else(|| map.get(p.category.as_str())).copied()
    }

    /// The label a proposal becomes (`None`: left unclassified, below `min_confidence`).
    pub fn label(&self, p: &Proposal) -> Option<Classification> {
        (f64::from(p.confidence) >= self.min_confidence).then(|| Self::rule(&self.labels, p).unwrap_or(p.label))
    }

    /// The mask a proposal brings (`None`: the kind-based default at query time).
    pub fn mask(&self, p: &Proposal) -> Option<MaskRule> {
        Self::rule(&self.masks, p)
    }
}

/// What the scanner runs with: its options and the tenant's policy.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    pub options: ScanOptions,
    pub policy: ClassificationPolicy,
}

/// Rows of a table, sampled uniformly as its batches stream by; cells as text.
pub struct TableSample {
    names: Vec<String>,
    rows: Reservoir<Vec<Option<String>>>,
}

impl TableSample {
    pub fn new(schema: &SchemaRef, capacity: usize, seed: u64) -> Self {
        Self::with_names(schema.fields().iter().map(|f| f.name().clone()).collect(), capacity, seed)
    }

    pub fn with_names(names: Vec<String>, capacity: usize, seed: u64) -> Self {
        Self { names, rows: Reservoir::new(capacity, seed) }
    }

    /// Offers every row of `batch` to the sample (its columns in the sample's order).
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

    /// Scans every column of the sample and maps the proposals through the policy.
    pub fn scan(&self, scanner: &Scanner) -> ScanReport {
        let rows = self.rows.items();
        let mut columns = Vec::with_capacity(self.names.len());
        for (i, name) in self.names.iter().enumerate() {
            let values: Vec<Option<&str>> = rows.iter().map(|r| r.get(i).and_then(|v| v.as_deref())).collect();
            let proposal = scan_column(name, &values, &scanner.options);
            let (label, mask) = (scanner.policy.label(&proposal), scanner.policy.mask(&proposal));
            columns.push(ColumnScan { name: name.clone(), proposal, label, mask });
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

/// Reads a stored table version back and samples it, calling `progress` with the rows read so
/// far after each batch. The sample holds the catalog's columns in catalog order.
pub async fn sample_table(
    storage: &TableStorage,
    relations: Option<&Arc<dyn TenantRelations>>,
    table: &TableRecord,
    capacity: usize,
    seed: u64,
    keys: Option<Arc<moat_query::crypto::TenantKeyring>>,
    mut progress: impl FnMut(u64) + Send,
) -> moat_core::Result<TableSample> {
    let names: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
    let mut sample = TableSample::with_names(names.clone(), capacity, seed);
    if let Some(pg) = crate::pg_source::table_of(table, relations, std::time::Duration::from_secs(60)) {
        // A linked PostgreSQL relation: its first rows (a scan never reads a whole warehouse).
        let mut read = 0u64;
        for batch in pg?.sample_rows(crate::pg_source::SAMPLE_ROWS).await? {
            sample.observe(&batch);
            read += batch.num_rows() as u64;
            progress(read);
        }
        return Ok(sample);
    }
    let mut rows = storage.read_rows(&table.location, 8_192, keys).await?;
    let mut read = 0u64;
    while let Some(batch) = rows.next().await {
        let batch = batch.map_err(|e| moat_query::crypto::read_back_error(&table.name, &e))?;
        let schema = batch.schema();
        let indices =
            names.iter().map(|n| schema.index_of(n)).collect::<Result<Vec<usize>, _>>().map_err(|_| storage_mismatch(&table.name))?;
        let batch = batch.project(&indices).map_err(|_| storage_mismatch(&table.name))?;
        sample.observe(&batch);
        read += batch.num_rows() as u64;
        progress(read);
    }
    Ok(sample)
}

fn storage_mismatch(table: &str) -> MoatError {
    tracing::error!(table, "a table file does not have the catalog's columns");
    MoatError::internal("storage_error")
}

/// A proposal's confidence as shown and stored: two decimals.
fn confidence(p: &Proposal) -> f64 {
    (f64::from(p.confidence) * 100.0).round() / 100.0
}

#[derive(Debug, Clone)]
pub struct ColumnScan {
    pub name: String,
    pub proposal: Proposal,
    /// The label the policy makes of the proposal (`None`: below the policy's confidence).
    pub label: Option<Classification>,
    pub mask: Option<MaskRule>,
}

impl ColumnScan {
    /// What a reviewer should look at beside the label: quasi-identifiers re-identify people in
    /// combination (release them in aggregates or generalised), derived scores carry their
    /// inputs' sensitivity (review their lineage).
    pub fn review(&self) -> Option<&'static str> {
        match self.proposal.category {
            Category::Quasi => Some("aggregate_only"),
            Category::Derived => Some("lineage_review"),
            Category::Direct | Category::None => None,
        }
    }
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
    /// The catalog column a proposal makes (the store keeps a manual label instead). A proposal
    /// below the policy's confidence makes an unclassified column.
    pub fn column_record(&self, name: &str, data_type: &str) -> ColumnRecord {
        match self.columns.iter().find(|c| c.name == name) {
            Some(ColumnScan { proposal, label: Some(label), mask, .. }) => ColumnRecord {
                name: name.into(),
                data_type: data_type.into(),
                classification: Some(label.as_str().into()),
                pii: proposal.category.as_str().into(),
                entity: proposal.entity.map(|e| e.as_str().into()),
                confidence: Some(confidence(proposal)),
                source: "scanner".into(),
                mask: mask.map(|m| m.as_str().into()),
            },
            _ => ColumnRecord::unclassified(name, data_type),
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
                "classification": c.label.map(Classification::as_str),
                "mask": c.mask.map(MaskRule::as_str),
                "confidence": confidence(&c.proposal),
                "reason": c.proposal.reason,
                "review": c.review(),
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
        let mut scanner = Scanner { options: ScanConfig::default().options(1_790_000_000), ..Scanner::default() };
        let r = s.scan(&scanner);
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
        assert_eq!(r.columns.iter().find(|c| c.name == "zip").and_then(ColumnScan::review), Some("aggregate_only"));

        // The tenant's policy: an entity rule beats a category rule; unsure proposals stay
        // unclassified (RESTRICTED).
        scanner.policy.labels = BTreeMap::from([("direct".into(), Classification::Restricted), ("email".into(), Classification::Internal)]);
        scanner.policy.masks = BTreeMap::from([("quasi".into(), MaskRule::Full)]);
        let r = s.scan(&scanner);
        assert_eq!(r.column_record("email", "Utf8").classification.as_deref(), Some("INTERNAL"));
        assert_eq!(r.column_record("zip", "Utf8").mask.as_deref(), Some("full"));
        assert_eq!(r.column_record("id", "Int64").mask, None);
        scanner.policy.min_confidence = 1.0;
        let r = s.scan(&scanner);
        assert_eq!(r.column_record("email", "Utf8"), ColumnRecord::unclassified("email", "Utf8"));
    }

    #[test]
    fn policies_name_known_entities_and_categories() {
        let ok = ClassificationPolicy {
            labels: BTreeMap::from([("ssn".into(), Classification::Restricted), ("quasi".into(), Classification::Confidential)]),
            masks: BTreeMap::from([("person_name".into(), MaskRule::Redact)]),
            min_confidence: 0.6,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            ClassificationPolicy { labels: BTreeMap::from([("social".into(), Classification::Public)]), ..ok.clone() },
            ClassificationPolicy { masks: BTreeMap::from([("DIRECT".into(), MaskRule::Full)]), ..ok.clone() },
            ClassificationPolicy { min_confidence: 1.5, ..ok.clone() },
            ClassificationPolicy { min_confidence: f64::NAN, ..ok.clone() },
        ] {
            assert_eq!(bad.validate().unwrap_err().code, "invalid_policy", "{bad:?}");
        }
        let many = (0..65).map(|i| (format!("k{i}"), Classification::Public)).collect();
        assert!(ClassificationPolicy { labels: many, ..ClassificationPolicy::default() }.validate().is_err());
    }
}
