//! Tables of a tenant: importing CSV into a new version (the one ingest path, used by the HTTP
//! API and by `moat demo`), and turning catalog records into engine table sources.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use moat_core::classification::Classification;
use moat_core::clock::UnixSeconds;
use moat_core::ids::TenantId;
use moat_core::{MoatError, Result};
use moat_query::ingest::{IngestLimits, IngestReport, csv_to_parquet};
use moat_query::mask::MaskRule;
use moat_query::{ColumnMeta, PiiCategory, TableSource};
use moat_store::{ColumnRecord, NewTableVersion, Stores, TableRecord};

/// Names SQL tools reserve; a table may not take them.
const RESERVED_TABLES: &[&str] = &["information_schema", "pg_catalog", "public", "moat", "datafusion", "select", "table", "from", "where"];

/// Table, domain and product names: `^[a-z_][a-z0-9_]{0,62}$`, so they are plain SQL identifiers
/// and safe path segments.
pub fn check_identifier(kind: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(MoatError::invalid("invalid_name", format!("{kind} {s:?} must match ^[a-z_][a-z0-9_]{{0,62}}$")));
    }
    if kind == "table" && RESERVED_TABLES.contains(&s) {
        return Err(MoatError::invalid("invalid_name", format!("table name {s:?} is reserved")));
    }
    Ok(())
}

/// Where the table's files live: `{data}/{tenant_id}/{domain}/{product}/{table}/`.
pub fn table_dir(root: &Path, tenant: TenantId, domain: &str, product: &str, table: &str) -> PathBuf {
    root.join(tenant.to_string()).join(domain).join(product).join(table)
}

pub struct ImportRequest<'a> {
    pub tenant: TenantId,
    pub table: &'a str,
    pub domain: &'a str,
    pub product: &'a str,
    pub type_overrides: BTreeMap<String, String>,
    pub now: UnixSeconds,
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> MoatError {
    tracing::error!(path = %p.display(), error = %e, "{what}");
    MoatError::internal("storage_error")
}

/// Imports CSV as the table's new version. Blocking (run it off the async workers). On error
/// the half-written version is removed and the previous version stays current.
pub fn import_csv(root: &Path, req: &ImportRequest<'_>, input: impl Read, limits: &IngestLimits) -> Result<(PathBuf, IngestReport)> {
    check_identifier("table", req.table)?;
    check_identifier("domain", req.domain)?;
    check_identifier("product", req.product)?;
    let dir =
        table_dir(root, req.tenant, req.domain, req.product, req.table).join(format!("v{}-{}", req.now, uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create table directory", &dir, e))?;
    match csv_to_parquet(input, &dir.join("part-00000.parquet"), &req.type_overrides, limits) {
        Ok(report) => Ok((dir, report)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Records an imported version in the catalog; removes the superseded version's files after a
/// grace period (queries that already listed them finish first).
pub async fn commit_version(stores: &Stores, req: &ImportRequest<'_>, dir: &Path, report: &IngestReport) -> Result<TableRecord> {
    let columns = report.schema.fields().iter().map(|f| ColumnRecord::unclassified(f.name(), &f.data_type().to_string())).collect();
    let v = NewTableVersion {
        tenant_id: req.tenant,
        name: req.table.to_owned(),
        domain: req.domain.to_owned(),
        product: req.product.to_owned(),
        location: dir.display().to_string(),
        row_count: report.rows as i64,
        bytes: report.bytes_written as i64,
        columns,
        now: req.now,
    };
    let (rec, previous) = match stores.meta.put_table(&v).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
    };
    if let Some(old) = previous.filter(|p| p.as_str() != v.location) {
        retire_later(PathBuf::from(old));
    }
    Ok(rec)
}

/// Deletes a superseded directory after 60 s.
pub fn retire_later(dir: PathBuf) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove a superseded table version");
        }
    });
}

/// A catalog record as the engine sees it. Unknown labels, categories or masks fail closed:
/// RESTRICTED, direct PII, full mask.
pub fn source_of(t: &TableRecord) -> TableSource {
    let fields: Vec<Field> =
        t.columns.iter().map(|c| Field::new(&c.name, DataType::from_str(&c.data_type).unwrap_or(DataType::Utf8), true)).collect();
    let columns = t
        .columns
        .iter()
        .map(|c| ColumnMeta {
            name: c.name.clone(),
            classification: c.classification.as_deref().and_then(Classification::parse),
            pii: PiiCategory::parse(&c.pii).unwrap_or(PiiCategory::Direct),
            entity: c.entity.clone(),
            mask_override: c.mask.as_deref().map(|m| MaskRule::parse(m).unwrap_or(MaskRule::Full)),
        })
        .collect();
    TableSource { name: t.name.clone(), location: PathBuf::from(&t.location), schema: Arc::new(Schema::new(fields)), columns }
}
