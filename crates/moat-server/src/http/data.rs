//! `/v1/tables/*` and `/v1/query`: ingest, catalog, classification, and the governed query.
//! A query's answer is released only after its audit record is durable; refused queries are
//! audited too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::classification::Classification;
use moat_core::{ErrorKind, MoatError};
use moat_query::PlanTimings;
use moat_query::engine::OutputColumn;
use moat_query::ingest::IngestLimits;
use moat_query::mask::MaskRule;
use moat_query::policy::PiiCategory;
use moat_store::{ColumnLabel, ColumnRecord, TableRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiResult;
use super::extract::{Authorized, JsonBody, QueryParams, act};
use crate::governed;
use crate::state::AppState;
use crate::tables::{self, ImportRequest, Upload};

fn table_not_found() -> MoatError {
    MoatError::not_found("table_not_found", "no such table")
}

/// The API view of a table: unclassified columns show as RESTRICTED with source `default`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TableView {
    pub name: String,
    pub domain: String,
    pub product: String,
    pub version: i64,
    pub row_count: i64,
    pub bytes: i64,
    pub updated_at: i64,
    pub columns: Vec<ColumnView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ColumnView {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub classification: String,
    pub pii: String,
    pub entity: Option<String>,
    pub confidence: Option<f64>,
    pub source: String,
    pub mask: Option<String>,
}

fn column_view(c: &ColumnRecord) -> ColumnView {
    ColumnView {
        name: c.name.clone(),
        data_type: c.data_type.clone(),
        classification: Classification::parse_or_restricted(c.classification.as_deref()).to_string(),
        pii: c.pii.clone(),
        entity: c.entity.clone(),
        confidence: c.confidence,
        source: c.source.clone(),
        mask: c.mask.clone(),
    }
}

fn view(t: &TableRecord) -> TableView {
    TableView {
        name: t.name.clone(),
        domain: t.domain.clone(),
        product: t.product.clone(),
        version: t.version,
        row_count: t.row_count,
        bytes: t.bytes,
        updated_at: t.updated_at,
        columns: t.columns.iter().map(column_view).collect(),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TableList {
    pub tables: Vec<TableView>,
}

pub async fn list_tables(State(st): State<Arc<AppState>>, auth: Authorized<act::TableRead>) -> ApiResult<Json<TableList>> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let tables = st.stores.meta.list_tables(tenant).await?;
    Ok(Json(TableList { tables: tables.iter().map(view).collect() }))
}

pub async fn get_table(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableRead>,
    Path(name): Path<String>,
) -> ApiResult<Json<TableView>> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let t = st.stores.meta.table(tenant, &name).await?.ok_or_else(table_not_found)?;
    Ok(Json(view(&t)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTableQuery {
    pub domain: Option<String>,
    pub product: Option<String>,
    /// Type overrides: `zip:text,id:int`.
    pub types: Option<String>,
    pub tenant: Option<String>,
}

fn parse_overrides(s: Option<&str>) -> Result<BTreeMap<String, String>, MoatError> {
    let mut out = BTreeMap::new();
    for part in s.unwrap_or("").split(',').filter(|p| !p.trim().is_empty()) {
        let (col, ty) =
            part.split_once(':').ok_or_else(|| MoatError::bad_request("invalid_query", format!("types: {part:?} is not column:type")))?;
        out.insert(col.trim().to_owned(), ty.trim().to_owned());
    }
    Ok(out)
}

const PARQUET: &str = "application/vnd.apache.parquet";

/// The request's media type, lowercase, without parameters.
fn content_type(headers: &HeaderMap) -> String {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The upload's format from its Content-Type.
fn upload_format(headers: &HeaderMap) -> Result<bool, MoatError> {
    match content_type(headers).as_str() {
        "text/csv" => Ok(false),
        PARQUET | "application/x-parquet" => Ok(true),
        _ => Err(MoatError::bad_request(
            "unsupported_media_type",
            format!("send the table as Content-Type: text/csv (with a header row) or {PARQUET}, or link a relation with application/json"),
        )),
    }
}

/// Creates or replaces a table from a CSV or Parquet body, streamed into a new Parquet version.
pub async fn put_table(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableWrite>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<PutTableQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    if content_type(&headers) == "application/json" {
        return link_table(&st, &auth, tenant, name, q, body).await;
    }
    let parquet = upload_format(&headers)?;
    let req = ImportRequest {
        tenant,
        table: name.clone(),
        domain: q.domain.unwrap_or_else(|| "default".into()),
        product: q.product.unwrap_or_else(|| "default".into()),
        type_overrides: parse_overrides(q.types.as_deref())?,
        now: st.clock.now_s(),
        scan: if st.config.scan.on_ingest { Some(st.scanner(tenant, None).await?) } else { None },
        keys: Some(st.data_keys.keyring(tenant, &[], st.clock.now_s()).await?),
    };
    tables::check_identifier("table", &req.table)?;
    tables::check_identifier("domain", &req.domain)?;
    tables::check_identifier("product", &req.product)?;
    let started = Instant::now();

    // The body, counted against its limit as it arrives.
    let limit = st.config.ingest.body_limit_bytes;
    let over = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (o, s) = (over.clone(), seen.clone());
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if s.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64 > limit {
            o.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("body over its limit"));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let limits = IngestLimits { max_columns: st.config.ingest.max_columns, ..IngestLimits::default() };
    let imported = if parquet {
        match spool(&st.spool_dir, stream).await {
            Ok(file) => tables::import_async(st.tables.clone(), req.clone(), Upload::Parquet(file), limits).await,
            Err(e) => Err(e),
        }
    } else {
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        tables::import_async(st.tables.clone(), req.clone(), Upload::Csv(Box::new(reader)), limits).await
    };
    let imported = match imported {
        Ok(v) => v,
        Err(e) => {
            let e = if over.load(Ordering::Relaxed) {
                MoatError::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    format!("the upload is over ingest.body_limit_bytes ({limit} bytes)"),
                )
            } else {
                e
            };
            let ev = AuditEvent::new(Some(tenant), Category::DataAccess, "table.write", Actor::of(&auth.principal), Outcome::Failure)
                .resource(format!("table:{name}"))
                .details(json!({"error": e.code, "format": if parquet { "parquet" } else { "csv" }, "bytes_received": seen.load(Ordering::Relaxed)}));
            st.record(&auth.client, ev).await?;
            return Err(e.into());
        }
    };
    let rec = tables::commit_version(&st.stores, &st.tables, &req, &imported).await?;
    let report = &imported.report;
    let renamed: Vec<Value> = report.renamed.iter().map(|(from, to)| json!({"from": from, "to": to})).collect();
    let scan = imported.scan.as_ref().map(|s| s.to_json());
    let ev = AuditEvent::new(Some(tenant), Category::DataAccess, "table.write", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("table:{name}"))
        .details(json!({"version": rec.version, "format": if parquet { "parquet" } else { "csv" }, "rows": report.rows, "bytes": report.bytes_written, "received_bytes": seen.load(Ordering::Relaxed), "duration_ms": started.elapsed().as_millis() as u64, "renamed": renamed, "scan": scan}));
    st.record(&auth.client, ev).await?;
    let status = if rec.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    let mut body = serde_json::to_value(view(&rec)).map_err(|_| MoatError::internal("encode"))?;
    body["renamed"] = Value::Array(renamed);
    if let Some(scan) = scan {
        body["scan"] = scan;
    }
    Ok((status, Json(body)).into_response())
}

/// `PUT /v1/tables/{t}` with a JSON body: the table is a relation of the tenant's own
/// PostgreSQL schema, read in place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    pub postgres: LinkPostgres,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkPostgres {
    /// A table or view of schema `tenant_{uuid}` (unqualified: only that schema is searched).
    pub relation: String,
}

/// Registers (or refreshes) a table that reads a relation of the tenant's own PostgreSQL
/// schema: its columns as the tenant's role sees them, scanned for PII like an upload.
async fn link_table(
    st: &AppState,
    auth: &Authorized<act::TableWrite>,
    tenant: moat_core::ids::TenantId,
    name: String,
    q: PutTableQuery,
    body: Body,
) -> ApiResult<Response> {
    let limit = st.config.limits.json_body_limit_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| MoatError::new(ErrorKind::PayloadTooLarge, "body_too_large", "request body is over its limit"))?;
    let link: LinkRequest = serde_json::from_slice(&bytes).map_err(|e| MoatError::bad_request("malformed_json", e.to_string()))?;
    let domain = q.domain.unwrap_or_else(|| "default".into());
    let product = q.product.unwrap_or_else(|| "default".into());
    tables::check_identifier("table", &name)?;
    tables::check_identifier("domain", &domain)?;
    tables::check_identifier("product", &product)?;
    let relation = link.postgres.relation;
    let outcome = tables::link_postgres(st, tenant, &name, &domain, &product, &relation).await;
    let (rec, scan) = match outcome {
        Ok(v) => v,
        Err(e) => {
            let ev = AuditEvent::new(Some(tenant), Category::DataAccess, "table.write", Actor::of(&auth.principal), Outcome::Failure)
                .resource(format!("table:{name}"))
                .details(json!({"error": e.code, "source": "postgres", "relation": relation}));
            st.record(&auth.client, ev).await?;
            return Err(e.into());
        }
    };
    let scan = scan.as_ref().map(crate::scan::ScanReport::to_json);
    let ev = AuditEvent::new(Some(tenant), Category::DataAccess, "table.write", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("table:{name}"))
        .details(json!({"version": rec.version, "source": "postgres", "relation": relation, "columns": rec.columns.len(), "scan": scan}));
    st.record(&auth.client, ev).await?;
    let status = if rec.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    let mut body = serde_json::to_value(view(&rec)).map_err(|_| MoatError::internal("encode"))?;
    if let Some(scan) = scan {
        body["scan"] = scan;
    }
    Ok((status, Json(body)).into_response())
}

/// Writes the body to an anonymous temporary file (gone when closed) and rewinds it.
async fn spool(
    dir: &std::path::Path,
    mut stream: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
) -> Result<std::fs::File, MoatError> {
    use tokio::io::{AsyncSeekExt, AsyncWriteExt};
    let spool_err = |e: std::io::Error| {
        tracing::error!(error = %e, "cannot spool an upload");
        MoatError::internal("storage_error")
    };
    let file = tempfile::tempfile_in(dir).map_err(spool_err)?;
    let mut w = tokio::fs::File::from_std(file);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| MoatError::bad_request("read_failed", format!("cannot read the body: {e}")))?;
        w.write_all(&chunk).await.map_err(spool_err)?;
    }
    w.flush().await.map_err(spool_err)?;
    w.rewind().await.map_err(spool_err)?;
    Ok(w.into_std().await)
}

pub async fn delete_table(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableDelete>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let t = st.stores.meta.delete_table(tenant, &name).await?.ok_or_else(table_not_found)?;
    // A linked relation stays where it is: only moat's registration of it goes.
    if crate::pg_source::relation_of(&t.location).is_none() {
        tables::retire_later(st.tables.clone(), t.location.clone());
    }
    let ev = AuditEvent::new(Some(tenant), Category::Admin, "table.delete", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("table:{name}"))
        .details(json!({"version": t.version, "rows": t.row_count}));
    st.record(&auth.client, ev).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    pub classification: String,
    pub pii: Option<String>,
    pub entity: Option<String>,
    pub mask: Option<String>,
}

/// A manual label: it always wins over the scanner and survives re-uploads.
pub async fn classify_column(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableClassify>,
    Path((table, column)): Path<(String, String)>,
    JsonBody(req): JsonBody<LabelRequest>,
) -> ApiResult<Json<ColumnView>> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let label = Classification::parse(&req.classification).ok_or_else(|| {
        MoatError::invalid("invalid_classification", "classification must be PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED")
    })?;
    if let Some(p) = &req.pii
        && PiiCategory::parse(p).is_none()
    {
        return Err(MoatError::invalid("invalid_pii", "pii must be direct, quasi, derived or none").into());
    }
    if let Some(m) = &req.mask
        && MaskRule::parse(m).is_none()
    {
        return Err(MoatError::invalid("invalid_mask", "mask must be hash16, last_four, redact, email_partial, full or omit").into());
    }
    if req.entity.as_ref().is_some_and(|e| e.is_empty() || e.len() > 64) {
        return Err(MoatError::invalid("invalid_entity", "entity must be 1 to 64 characters").into());
    }
    let before = st.stores.meta.table(tenant, &table).await?.ok_or_else(table_not_found)?;
    let old = before
        .columns
        .iter()
        .find(|c| c.name == column)
        .cloned()
        .ok_or_else(|| MoatError::not_found("column_not_found", "no such column"))?;
    let cl = ColumnLabel { classification: label.to_string(), pii: req.pii.clone(), entity: req.entity.clone(), mask: req.mask.clone() };
    let new = st.stores.meta.set_column_label(tenant, &table, &column, &cl).await?.ok_or_else(table_not_found)?;
    let ev = AuditEvent::new(Some(tenant), Category::Admin, "classification.change", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("column:{table}.{column}"))
        .details(json!({"from": column_view(&old), "to": column_view(&new)}));
    st.record(&auth.client, ev).await?;
    Ok(Json(column_view(&new)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// Report the proposals without changing any label.
    #[serde(default)]
    pub dry_run: bool,
    /// Rows to sample (default `scan.sample_rows`, at most 100,000).
    pub sample_rows: Option<usize>,
    pub tenant: Option<String>,
}

/// Runs the PII scanner on a table now (Admin): reads the current version back from storage,
/// samples it, and (unless `dry_run`) gives every column not labelled by hand the label the
/// tenant's classification policy makes of the scanner's proposal. Manual labels stay; the
/// scan and every label it changed are audited. With `Accept: application/x-ndjson` the answer
/// streams `{"progress": {rows_read, rows_total}}` lines while the table is read, then one
/// `{"result": …}` or `{"error": {code, message}}` line.
pub async fn scan_table(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableClassify>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<ScanQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    if let Some(n) = q.sample_rows
        && !(1..=crate::scan::MAX_SAMPLE_ROWS).contains(&n)
    {
        return Err(MoatError::invalid("invalid_sample_rows", format!("sample_rows must be 1 to {}", crate::scan::MAX_SAMPLE_ROWS)).into());
    }
    let table = st.stores.meta.table(tenant, &name).await?.ok_or_else(table_not_found)?;
    let scanner = st.scanner(tenant, q.sample_rows).await?;
    if !super::ndjson::wanted(&headers) {
        return Ok(Json(run_scan(&st, &auth, table, scanner, q.dry_run, |_| {}).await?).into_response());
    }
    Ok(super::ndjson::respond(move |progress| async move {
        let total = table.row_count;
        let mut last = Instant::now();
        let report = |read: u64| {
            // A line at most every 200 ms.
            if last.elapsed() >= Duration::from_millis(200) {
                last = Instant::now();
                progress.send(json!({"rows_read": read, "rows_total": total}));
            }
        };
        match run_scan(&st, &auth, table, scanner, q.dry_run, report).await {
            Ok(v) => json!({"result": v}),
            Err(e) => super::error::error_body(e.code, &e.message),
        }
    }))
}

/// Samples, scans, applies (unless `dry_run`) and audits; the answer of [`scan_table`].
async fn run_scan<A: super::extract::Action>(
    st: &AppState,
    auth: &Authorized<A>,
    table: TableRecord,
    scanner: crate::scan::Scanner,
    dry_run: bool,
    progress: impl FnMut(u64) + Send,
) -> Result<Value, MoatError> {
    let started = Instant::now();
    let tenant = table.tenant_id;
    let resource = format!("table:{}", table.name);
    let seed = st.clock.now_s().unsigned_abs() ^ table.version.unsigned_abs();
    let scanned = async {
        let keys = st.keys_for(tenant, std::slice::from_ref(&table)).await?;
        let sample =
            crate::scan::sample_table(&st.tables, st.stores.relations.as_ref(), &table, scanner.options.sample_rows, seed, keys, progress)
                .await?;
        let report = tokio::task::spawn_blocking(move || sample.scan(&scanner)).await.map_err(|_| MoatError::internal("scan_failed"))?;
        let after = if dry_run {
            table.clone()
        } else {
            let proposals: Vec<ColumnRecord> = table.columns.iter().map(|c| report.column_record(&c.name, &c.data_type)).collect();
            st.stores.meta.apply_scan(tenant, &table.name, table.version, &proposals).await?.ok_or_else(table_not_found)?
        };
        Ok::<_, MoatError>((report, after))
    };
    let (report, after) = match scanned.await {
        Ok(v) => v,
        Err(e) => {
            let ev = AuditEvent::new(Some(tenant), Category::Admin, "classification.scan", Actor::of(&auth.principal), Outcome::Failure)
                .resource(resource)
                .details(json!({"version": table.version, "dry_run": dry_run, "error": e.code}));
            st.record(&auth.client, ev).await?;
            return Err(e);
        }
    };
    let changes: Vec<Value> = after
        .columns
        .iter()
        .filter_map(|new| {
            let old = table.columns.iter().find(|c| c.name == new.name)?;
            (old != new).then(|| json!({"column": new.name, "from": column_view(old), "to": column_view(new)}))
        })
        .collect();
    let ev = AuditEvent::new(Some(tenant), Category::Admin, "classification.scan", Actor::of(&auth.principal), Outcome::Success)
        .resource(resource)
        .details(json!({
            "version": table.version, "dry_run": dry_run, "rows_sampled": report.rows_sampled, "rows_seen": report.rows_seen,
            "k_anonymity": report.k_anonymity, "changes": changes, "duration_ms": started.elapsed().as_millis() as u64,
        }));
    st.record(&auth.client, ev).await?;
    let mut body = report.to_json();
    if let Some(cols) = body["columns"].as_array_mut() {
        for c in cols {
            let label = after.columns.iter().find(|a| Some(a.name.as_str()) == c["name"].as_str()).map(column_view);
            c["catalog"] = serde_json::to_value(label).unwrap_or(Value::Null);
        }
    }
    body["table"] = json!(table.name);
    body["version"] = json!(table.version);
    body["dry_run"] = json!(dry_run);
    body["changes"] = Value::Array(changes);
    Ok(body)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub sql: String,
}

/// JSON values for a column: numbers stay numbers; other types print as text.
fn json_cells(col: &dyn Array, out: &mut [Vec<Value>]) -> Result<(), MoatError> {
    macro_rules! prim {
        ($t:ty) => {{
            let a = col.as_primitive::<$t>();
            for (i, row) in out.iter_mut().enumerate() {
                row.push(if a.is_null(i) { Value::Null } else { json!(a.value(i)) });
            }
        }};
    }
    match col.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Boolean => {
            let a = col.as_boolean();
            for (i, row) in out.iter_mut().enumerate() {
                row.push(if a.is_null(i) { Value::Null } else { Value::Bool(a.value(i)) });
            }
        }
        DataType::Null => out.iter_mut().for_each(|r| r.push(Value::Null)),
        _ => {
            let f = ArrayFormatter::try_new(col, &FormatOptions::default()).map_err(|_| MoatError::internal("encode_result"))?;
            for (i, row) in out.iter_mut().enumerate() {
                row.push(if col.is_null(i) { Value::Null } else { Value::String(f.value(i).to_string()) });
            }
        }
    }
    Ok(())
}

fn rows_json(batches: &[RecordBatch]) -> Result<Vec<Vec<Value>>, MoatError> {
    let mut rows = Vec::new();
    for b in batches {
        let mut part: Vec<Vec<Value>> = (0..b.num_rows()).map(|_| Vec::with_capacity(b.num_columns())).collect();
        for c in b.columns() {
            json_cells(c.as_ref(), &mut part)?;
        }
        rows.extend(part);
    }
    Ok(rows)
}

/// How a result is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultFormat {
    Json,
    Csv,
    Arrow,
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

impl ResultFormat {
    fn from_accept(headers: &HeaderMap) -> Self {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains("text/csv") {
            Self::Csv
        } else if accept.contains(ARROW_STREAM) {
            Self::Arrow
        } else {
            Self::Json
        }
    }

    /// As audit records name it (`details.format`); `csv` and `arrow` are exports.
    fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Arrow => "arrow",
        }
    }
}

/// Encodes batches of a streamed result, chunk by chunk.
enum Encoder {
    Csv { header: bool },
    Arrow(Box<datafusion::arrow::ipc::writer::StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: ResultFormat, schema: &datafusion::arrow::datatypes::Schema) -> Result<Self, MoatError> {
        match format {
            ResultFormat::Arrow => Ok(Self::Arrow(Box::new(
                datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)
                    .map_err(|_| MoatError::internal("encode_result"))?,
            ))),
            _ => Ok(Self::Csv { header: true }),
        }
    }

    fn batch(&mut self, b: &RecordBatch) -> Result<Vec<u8>, MoatError> {
        match self {
            Self::Csv { header } => {
                let mut w = arrow_csv::WriterBuilder::new().with_header(*header).build(Vec::new());
                *header = false;
                w.write(b).map_err(|_| MoatError::internal("encode_result"))?;
                Ok(w.into_inner())
            }
            Self::Arrow(w) => {
                w.write(b).map_err(|_| MoatError::internal("encode_result"))?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    /// What is left to send at the end (the Arrow end-of-stream marker; a CSV header when there
    /// were no rows).
    fn finish(&mut self, schema: &datafusion::arrow::datatypes::SchemaRef) -> Result<Vec<u8>, MoatError> {
        match self {
            Self::Csv { header: true } => {
                let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(Vec::new());
                w.write(&RecordBatch::new_empty(schema.clone())).map_err(|_| MoatError::internal("encode_result"))?;
                Ok(w.into_inner())
            }
            Self::Csv { .. } => Ok(Vec::new()),
            Self::Arrow(w) => {
                w.finish().map_err(|_| MoatError::internal("encode_result"))?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct QueryResponse {
    columns: Vec<OutputColumn>,
    rows: Vec<Vec<Value>>,
    row_count: usize,
    truncated: bool,
    query_id: String,
    /// The high-water mark of the result's columns: the label of the result as a whole (and of
    /// any export made of it).
    classification: Classification,
}

/// The label of a whole result: its most sensitive column (PUBLIC when it has none).
fn high_water(columns: &[OutputColumn]) -> Classification {
    columns.iter().map(|c| c.classification).max().unwrap_or(Classification::Public)
}

/// Metadata keys that carry labels inside exported Arrow data, so that the label travels with
/// the file: `moat.classification` on the schema (the high-water mark) and on each field, and
/// `moat.masking` on each field.
pub const ARROW_CLASSIFICATION_KEY: &str = "moat.classification";
pub const ARROW_MASKING_KEY: &str = "moat.masking";

fn labelled_schema(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    columns: &[OutputColumn],
    whole: Classification,
) -> datafusion::arrow::datatypes::Schema {
    let fields: Vec<datafusion::arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(f, c)| {
            let mut meta = f.metadata().clone();
            meta.insert(ARROW_CLASSIFICATION_KEY.into(), c.classification.to_string());
            meta.insert(ARROW_MASKING_KEY.into(), c.masking.clone());
            f.as_ref().clone().with_metadata(meta)
        })
        .collect();
    let mut meta = schema.metadata().clone();
    meta.insert(ARROW_CLASSIFICATION_KEY.into(), whole.to_string());
    datafusion::arrow::datatypes::Schema::new_with_metadata(fields, meta)
}

fn set_headers(resp: &mut Response, pairs: &[(&'static str, String)]) {
    let h = resp.headers_mut();
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
}

/// `Server-Timing` (W3C): where the time of a query went, in milliseconds: `catalog` (tables and
/// policy), `plan` (restrictions, masking decisions, planning; split into `session`, `logical`
/// and `physical`), `exec`, `audit` (the durable record).
fn server_timing(catalog: Duration, plan: Duration, planning: PlanTimings, exec: Duration, audit: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "catalog;dur={:.3}, plan;dur={:.3}, session;dur={:.3}, logical;dur={:.3}, physical;dur={:.3}, exec;dur={:.3}, audit;dur={:.3}",
        ms(catalog),
        ms(plan),
        ms(planning.session),
        ms(planning.logical),
        ms(planning.physical),
        ms(exec),
        ms(audit)
    )
}

/// `POST /v1/query`, through the one governed flow ([`crate::governed`]). JSON answers are
/// collected (within the row and byte limits) and released after their audit record is
/// durable. CSV and Arrow answers stream: the first batch is computed, the access is recorded
/// durably, then rows flow; a second record (`query.end`) adds rows, bytes, truncation and
/// duration when the stream ends, is cut off, or fails.
pub async fn query(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::QueryExecute>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<QueryRequest>,
) -> ApiResult<Response> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let format = ResultFormat::from_accept(&headers);
    let planned = governed::plan(&st, &auth.client, &auth.principal, tenant, moat_query::Request::sql(&req.sql), format.as_str()).await?;
    let query_id = planned.query_id.clone();

    if format == ResultFormat::Json {
        let governed::Planned { stream, mut details, audit, catalog_time, plan_time, cache_key, .. } = planned;
        let lookup = match &cache_key {
            Some(key) => st.results.get(tenant, key).await,
            None => crate::result_cache::Lookup::Miss,
        };
        if let crate::result_cache::Lookup::Hit(cached) = &lookup
            && let Ok(mut body) = serde_json::from_slice::<Value>(cached)
        {
            // Planned (the tables exist, the caller may read them) and recorded like any query.
            drop(stream);
            details["rows"] = body["row_count"].clone();
            details["truncated"] = body["truncated"].clone();
            details["cache"] = json!("hit");
            audit.record_success(details).await?;
            body["query_id"] = json!(query_id);
            let headers = [
                ("x-moat-query-id", query_id.clone()),
                ("x-moat-classification", body["classification"].as_str().unwrap_or_default().to_owned()),
                ("x-moat-row-count", body["row_count"].to_string()),
                ("x-moat-truncated", body["truncated"].to_string()),
                ("x-moat-cache", "hit".into()),
            ];
            let mut resp = Json(body).into_response();
            set_headers(&mut resp, &headers);
            return Ok(resp);
        }
        let planning = stream.planning;
        let out = match stream.collect().await {
            Ok(o) => o,
            Err(e) => {
                audit.refuse(details, &e).await?;
                return Err(e.into());
            }
        };
        details["rows"] = json!(out.row_count);
        details["bytes"] = json!(out.bytes);
        details["truncated"] = json!(out.truncated);
        // Durable before anything is released.
        let audit_started = Instant::now();
        audit.record_success(details).await?;
        let timing = server_timing(catalog_time, plan_time, planning, out.exec, audit_started.elapsed());
        let (row_count, truncated) = (out.row_count, out.truncated);
        let classification = high_water(&out.columns);
        let body = QueryResponse {
            rows: rows_json(&out.batches)?,
            columns: out.columns,
            row_count,
            truncated,
            query_id: query_id.clone(),
            classification,
        };
        let cache = match (&cache_key, &lookup) {
            (None, _) => "off",
            (Some(_), crate::result_cache::Lookup::Unavailable) => "unavailable",
            (Some(key), _) => {
                if let Ok(bytes) = serde_json::to_vec(&body) {
                    st.results.put(tenant, key, bytes).await;
                }
                "miss"
            }
        };
        let mut resp = Json(body).into_response();
        set_headers(
            &mut resp,
            &[
                ("x-moat-query-id", query_id),
                ("x-moat-classification", classification.to_string()),
                ("x-moat-row-count", row_count.to_string()),
                ("x-moat-truncated", truncated.to_string()),
                ("x-moat-cache", cache.into()),
                ("server-timing", timing),
            ],
        );
        return Ok(resp);
    }

    let streaming = planned.stream().await?;
    let columns_header = serde_json::to_string(&streaming.stream.columns).unwrap_or_default();
    let classification = high_water(&streaming.stream.columns);
    let encoder = Encoder::new(format, &labelled_schema(&streaming.stream.schema, &streaming.stream.columns, classification))?;
    let body = futures::stream::unfold(Some((streaming, encoder)), |state| async move {
        let (mut s, mut encoder) = state?;
        let chunk = match s.next_batch().await {
            Some(Ok(b)) => encoder.batch(&b),
            // Cut the response short: a client must not take a partial result as whole.
            Some(Err(e)) => return Some((Err(std::io::Error::other(e.message)), None)),
            None => {
                let tail = encoder.finish(&s.stream.schema);
                return Some((tail.map(bytes::Bytes::from).map_err(|e| std::io::Error::other(e.message)), None));
            }
        };
        match chunk {
            Ok(c) => Some((Ok(bytes::Bytes::from(c)), Some((s, encoder)))),
            Err(e) => {
                s.finish(Some(e.code)).await;
                Some((Err(std::io::Error::other(e.message)), None))
            }
        }
    });
    let ctype = if format == ResultFormat::Csv { "text/csv; charset=utf-8" } else { ARROW_STREAM };
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], Body::from_stream(body)).into_response();
    set_headers(
        &mut resp,
        &[
            ("x-moat-query-id", query_id),
            ("x-moat-streamed", "true".into()),
            ("x-moat-row-limit", st.engine.limits().max_rows.to_string()),
            ("x-moat-columns", columns_header),
            ("x-moat-classification", classification.to_string()),
        ],
    );
    Ok(resp)
}
