//! Tables of a tenant: importing CSV or Parquet into a new version (the one ingest path, used by
//! the HTTP API and by `moat demo`), and turning catalog records into engine table sources.

use std::collections::BTreeMap;
use std::io::Read;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use moat_core::classification::Classification;
use moat_core::clock::UnixSeconds;
use moat_core::ids::TenantId;
use moat_core::{MoatError, Result};
use moat_query::crypto::TenantKeyring;
use moat_query::ingest::{IngestLimits, IngestReport, read_csv, read_parquet, write_parquet};
use moat_query::mask::MaskRule;
use moat_query::{ColumnMeta, PiiCategory, TableSource, TableStorage, ViewSource};
use moat_store::{ColumnRecord, NewTableVersion, Stores, TableRecord, TenantRelations, ViewRecord};

use crate::scan::{ScanReport, Scanner, TableSample};

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
    if (kind == "table" || kind == "view") && RESERVED_TABLES.contains(&s) {
        return Err(MoatError::invalid("invalid_name", format!("{kind} name {s:?} is reserved")));
    }
    Ok(())
}

/// The object-store prefix of a table: `{tenant_id}/{domain}/{product}/{table}`; each version
/// lives below it in `v{time}-{uuid}/`.
pub fn table_prefix(tenant: TenantId, domain: &str, product: &str, table: &str) -> String {
    format!("{tenant}/{domain}/{product}/{table}")
}

#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub tenant: TenantId,
    pub table: String,
    pub domain: String,
    pub product: String,
    pub type_overrides: BTreeMap<String, String>,
    pub now: UnixSeconds,
    /// Scan the imported rows for PII and label the columns nobody labelled by hand
    /// (`None`: leave them as they were, unclassified ones RESTRICTED).
    pub scan: Option<Scanner>,
    /// The tenant's keys: the file is encrypted under the current DEK (`None`: plaintext,
    /// for tests of the plaintext read path only).
    pub keys: Option<Arc<TenantKeyring>>,
}

/// An imported version, not yet in the catalog.
pub struct Imported {
    /// Object-store prefix of the version's files.
    pub prefix: String,
    pub report: IngestReport,
    pub scan: Option<ScanReport>,
}

/// What is uploaded.
pub enum Upload {
    Csv(Box<dyn Read + Send>),
    /// Parquet, spooled to a file (its index is at the end).
    Parquet(std::fs::File),
}

/// Imports an upload as the table's new version, written through the table store. Blocking:
/// call it from `spawn_blocking`. On error nothing of the new version remains and the previous
/// version stays current. Returns the new version's prefix.
pub fn import(storage: &TableStorage, req: &ImportRequest, upload: Upload, limits: &IngestLimits) -> Result<Imported> {
    check_identifier("table", &req.table)?;
    check_identifier("domain", &req.domain)?;
    check_identifier("product", &req.product)?;
    let prefix =
        format!("{}/v{}-{}", table_prefix(req.tenant, &req.domain, &req.product, &req.table), req.now, uuid::Uuid::now_v7().simple());
    let prepared = match upload {
        Upload::Csv(r) => read_csv(r, &req.type_overrides, limits)?,
        Upload::Parquet(f) => read_parquet(f, &req.type_overrides, limits)?,
    };
    // Rows are sampled on their way to the writer: one pass over the data.
    let mut sample = req.scan.as_ref().map(|o| TableSample::new(&prepared.schema, o.options.sample_rows, req.now.unsigned_abs()));
    let prepared = prepared.inspect(|b| {
        if let Some(s) = sample.as_mut() {
            s.observe(b);
        }
    });
    // On any error below the writer is dropped, which abandons the upload.
    let key = format!("{prefix}/part-00000.parquet");
    let encryption = req.keys.as_ref().map(|k| k.encryption_for(&key)).transpose()?;
    let (report, writer) = write_parquet(prepared, storage.writer(&key), limits, encryption)?;
    writer.finish()?;
    let scan = sample.zip(req.scan.as_ref()).map(|(s, o)| s.scan(o));
    Ok(Imported { prefix, report, scan })
}

/// [`import`] on a blocking thread.
pub async fn import_async(storage: TableStorage, req: ImportRequest, upload: Upload, limits: IngestLimits) -> Result<Imported> {
    tokio::task::spawn_blocking(move || import(&storage, &req, upload, &limits))
        .await
        .map_err(|_| MoatError::internal("ingest_task_failed"))?
}

/// Records an imported version in the catalog (with the scanner's proposals for columns not
/// labelled by hand); removes the superseded version's files after a grace period (queries
/// that already listed them finish first).
pub async fn commit_version(stores: &Stores, storage: &TableStorage, req: &ImportRequest, imported: &Imported) -> Result<TableRecord> {
    let Imported { prefix, report, scan } = imported;
    let columns = report
        .schema
        .fields()
        .iter()
        .map(|f| {
            let t = f.data_type().to_string();
            match scan {
                Some(s) => s.column_record(f.name(), &t),
                None => ColumnRecord::unclassified(f.name(), &t),
            }
        })
        .collect();
    let v = NewTableVersion {
        tenant_id: req.tenant,
        name: req.table.clone(),
        domain: req.domain.clone(),
        product: req.product.clone(),
        location: prefix.clone(),
        row_count: report.rows as i64,
        bytes: report.bytes_written as i64,
        columns,
        now: req.now,
        dek_version: req.keys.as_ref().map(|k| k.current_version()),
    };
    let (rec, previous) = match stores.meta.put_table(&v).await {
        Ok(r) => r,
        Err(e) => {
            let _ = storage.delete_prefix(prefix).await;
            return Err(e);
        }
    };
    if let Some(old) = previous.filter(|p| p.as_str() != v.location && crate::pg_source::relation_of(p).is_none()) {
        retire_later(storage.clone(), old);
    }
    Ok(rec)
}

/// Registers relation `relation` of the tenant's PostgreSQL schema as table `name` (a new
/// version when it exists): its columns as the tenant's role sees them, the scanner's proposals
/// for unlabelled ones when `scan.on_ingest` is on. A superseded Parquet version is retired.
pub async fn link_postgres(
    st: &crate::state::AppState,
    tenant: TenantId,
    name: &str,
    domain: &str,
    product: &str,
    relation: &str,
) -> Result<(TableRecord, Option<ScanReport>)> {
    let relations = st.stores.relations.clone().ok_or_else(crate::pg_source::unsupported)?;
    if relation.is_empty() || relation.len() > 63 || relation.chars().any(char::is_control) {
        return Err(MoatError::invalid("invalid_relation", "postgres.relation: 1 to 63 bytes, no control characters"));
    }
    let info = relations.describe(tenant, relation).await?.ok_or_else(|| {
        MoatError::not_found("relation_not_found", format!("no relation {relation:?} in the tenant's schema that its role can read"))
    })?;
    let now = st.clock.now_s();
    let types: Vec<String> = info.columns.iter().map(|c| crate::pg_source::arrow_type(c).to_string()).collect();
    let mut columns: Vec<ColumnRecord> = info.columns.iter().zip(&types).map(|(c, t)| ColumnRecord::unclassified(&c.name, t)).collect();
    let location = format!("{}{relation}", crate::pg_source::LOCATION_PREFIX);
    let mut scan = None;
    if st.config.scan.on_ingest {
        let scanner = st.scanner(tenant, None).await?;
        let probe = TableRecord {
            id: String::new(),
            tenant_id: tenant,
            name: name.to_owned(),
            domain: domain.to_owned(),
            product: product.to_owned(),
            version: 0,
            location: location.clone(),
            row_count: info.estimated_rows,
            bytes: 0,
            created_at: now,
            updated_at: now,
            columns: columns.clone(),
            dek_version: None,
        };
        let seed = now.unsigned_abs();
        let sample =
            crate::scan::sample_table(&st.tables, Some(&relations), &probe, scanner.options.sample_rows, seed, None, |_| {}).await?;
        let report = tokio::task::spawn_blocking(move || sample.scan(&scanner)).await.map_err(|_| MoatError::internal("scan_failed"))?;
        columns = info.columns.iter().zip(&types).map(|(c, t)| report.column_record(&c.name, t)).collect();
        scan = Some(report);
    }
    let v = NewTableVersion {
        tenant_id: tenant,
        name: name.to_owned(),
        domain: domain.to_owned(),
        product: product.to_owned(),
        location,
        row_count: info.estimated_rows,
        bytes: 0,
        columns,
        now,
        dek_version: None,
    };
    let (rec, previous) = st.stores.meta.put_table(&v).await?;
    if let Some(old) = previous.filter(|p| crate::pg_source::relation_of(p).is_none()) {
        retire_later(st.tables.clone(), old);
    }
    Ok((rec, scan))
}

/// Deletes a superseded version's files after 60 s.
pub fn retire_later(storage: TableStorage, prefix: String) {
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        if let Err(e) = storage.delete_prefix(&prefix).await {
            tracing::warn!(prefix, error = %e, "could not remove a superseded table version");
        }
    });
}

/// A view record as the engine sees it.
pub fn view_source(v: &ViewRecord) -> ViewSource {
    ViewSource { name: v.name.clone(), sql: v.sql.clone() }
}

/// The raw schema of a catalog record (types it cannot read as their text, nullable).
pub fn raw_schema(t: &TableRecord) -> SchemaRef {
    let fields: Vec<Field> =
        t.columns.iter().map(|c| Field::new(&c.name, DataType::from_str(&c.data_type).unwrap_or(DataType::Utf8), true)).collect();
    Arc::new(Schema::new(fields))
}

/// A catalog record as the engine sees it. Unknown labels, categories or masks fail closed:
/// RESTRICTED, direct PII, full mask. A linked PostgreSQL relation reads through `relations`
/// within `timeout`; without them (a store that has none) it is left out of the catalog.
/// `keys`: the tenant's keyring, given to tables whose files are encrypted.
pub fn source_of(
    t: &TableRecord,
    relations: Option<&Arc<dyn TenantRelations>>,
    timeout: std::time::Duration,
    keys: Option<&Arc<TenantKeyring>>,
) -> Option<TableSource> {
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
    let provider = match crate::pg_source::table_of(t, relations, timeout) {
        None => None,
        Some(Ok(pg)) => Some(Arc::new(crate::pg_source::PgTableProvider(Arc::new(pg))) as Arc<dyn datafusion::catalog::TableProvider>),
        Some(Err(_)) => return None,
    };
    let keys = if t.dek_version.is_some() { Some(keys?.clone()) } else { None };
    Some(TableSource { name: t.name.clone(), location: t.location.clone(), schema: raw_schema(t), columns, provider, keys })
}
