//! `/v1/tables/*` and `/v1/query`: ingest, catalog, classification, and the governed query.
//! A query's answer is released only after its audit record is durable; refused queries are
//! audited too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
use moat_query::engine::OutputColumn;
use moat_query::ingest::IngestLimits;
use moat_query::mask::MaskRule;
use moat_query::policy::PiiCategory;
use moat_store::{ColumnLabel, ColumnRecord, TableRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::ApiResult;
use super::extract::{Authorized, JsonBody, QueryParams, act};
use crate::state::AppState;
use crate::tables::{self, ImportRequest};

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

/// Creates or replaces a table from a CSV body, streamed to Parquet.
pub async fn put_table(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableWrite>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<PutTableQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ctype.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv")) {
        return Err(MoatError::bad_request("unsupported_media_type", "send the table as Content-Type: text/csv with a header row").into());
    }
    let domain = q.domain.unwrap_or_else(|| "default".into());
    let product = q.product.unwrap_or_else(|| "default".into());
    tables::check_identifier("table", &name)?;
    tables::check_identifier("domain", &domain)?;
    tables::check_identifier("product", &product)?;
    let overrides = parse_overrides(q.types.as_deref())?;
    let now = st.clock.now_s();
    let started = Instant::now();

    // Stream the body into the blocking CSV reader, counting bytes against the limit.
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
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let root = st.table_root.clone();
    let limits = IngestLimits { max_columns: st.config.ingest.max_columns, ..IngestLimits::default() };
    let (t, d, p, ov) = (name.clone(), domain.clone(), product.clone(), overrides.clone());
    let imported = tokio::task::spawn_blocking(move || {
        let req = ImportRequest { tenant, table: &t, domain: &d, product: &p, type_overrides: ov, now };
        tables::import_csv(&root, &req, reader, &limits)
    })
    .await
    .map_err(|_| MoatError::internal("ingest_task_failed"))?;
    let (dir, report) = match imported {
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
                .details(json!({"error": e.code, "bytes_received": seen.load(Ordering::Relaxed)}));
            st.record(&auth.client, ev).await?;
            return Err(e.into());
        }
    };
    let req = ImportRequest { tenant, table: &name, domain: &domain, product: &product, type_overrides: overrides, now };
    let rec = tables::commit_version(&st.stores, &req, &dir, &report).await?;
    let renamed: Vec<Value> = report.renamed.iter().map(|(from, to)| json!({"from": from, "to": to})).collect();
    let ev = AuditEvent::new(Some(tenant), Category::DataAccess, "table.write", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("table:{name}"))
        .details(json!({"version": rec.version, "rows": report.rows, "bytes": report.bytes_written, "received_bytes": seen.load(Ordering::Relaxed), "duration_ms": started.elapsed().as_millis() as u64, "renamed": renamed}));
    st.record(&auth.client, ev).await?;
    let status = if rec.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    let mut body = serde_json::to_value(view(&rec)).map_err(|_| MoatError::internal("encode"))?;
    body["renamed"] = Value::Array(renamed);
    Ok((status, Json(body)).into_response())
}

pub async fn delete_table(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableDelete>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let t = st.stores.meta.delete_table(tenant, &name).await?.ok_or_else(table_not_found)?;
    tables::retire_later(tables::table_dir(&st.table_root, tenant, &t.domain, &t.product, &t.name));
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

fn csv_body(batches: &[RecordBatch]) -> Result<Vec<u8>, MoatError> {
    let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(Vec::new());
    for b in batches {
        w.write(b).map_err(|_| MoatError::internal("encode_result"))?;
    }
    Ok(w.into_inner())
}

fn arrow_body(batches: &[RecordBatch], schema: &datafusion::arrow::datatypes::Schema) -> Result<Vec<u8>, MoatError> {
    let mut w =
        datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema).map_err(|_| MoatError::internal("encode_result"))?;
    for b in batches {
        w.write(b).map_err(|_| MoatError::internal("encode_result"))?;
    }
    w.into_inner().map_err(|_| MoatError::internal("encode_result"))
}

#[derive(Debug, Serialize)]
struct QueryResponse {
    columns: Vec<OutputColumn>,
    rows: Vec<Vec<Value>>,
    row_count: usize,
    truncated: bool,
    query_id: String,
}

pub async fn query(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::QueryExecute>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<QueryRequest>,
) -> ApiResult<Response> {
    let tenant = auth.tenant.ok_or_else(table_not_found)?;
    let query_id = uuid::Uuid::now_v7().to_string();
    let started = Instant::now();
    let sources: Vec<_> = st.stores.meta.list_tables(tenant).await?.iter().map(tables::source_of).collect();
    let policy = st.masking_policy(tenant).await?;
    let result = st.engine.execute(&auth.principal, tenant, &sources, &policy, &req.sql).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let (outcome, details) = match &result {
        Ok(o) => (
            Outcome::Success,
            json!({"query_id": query_id, "sql": req.sql, "tables": o.tables_read, "columns": o.columns_read, "columns_masked": o.columns_masked,
                   "rows": o.row_count, "bytes": o.bytes, "truncated": o.truncated, "duration_ms": duration_ms}),
        ),
        Err(e) => (
            if matches!(e.kind, ErrorKind::Forbidden) { Outcome::Denied } else { Outcome::Failure },
            json!({"query_id": query_id, "sql": req.sql, "error": e.code, "duration_ms": duration_ms}),
        ),
    };
    let ev = AuditEvent::new(Some(tenant), Category::DataAccess, "query.execute", Actor::of(&auth.principal), outcome)
        .resource("query")
        .details(details);
    // Durable before anything is released.
    st.record(&auth.client, ev).await?;
    let out = result?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let columns_header = serde_json::to_string(&out.columns).unwrap_or_default();
    let mut resp = if accept.contains("text/csv") {
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/csv; charset=utf-8")], csv_body(&out.batches)?).into_response()
    } else if accept.contains("application/vnd.apache.arrow.stream") {
        let schema = out.batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")], arrow_body(&out.batches, &schema)?)
            .into_response()
    } else {
        let body = QueryResponse {
            rows: rows_json(&out.batches)?,
            columns: out.columns,
            row_count: out.row_count,
            truncated: out.truncated,
            query_id: query_id.clone(),
        };
        Json(body).into_response()
    };
    let h = resp.headers_mut();
    for (k, v) in
        [("x-moat-query-id", query_id), ("x-moat-row-count", out.row_count.to_string()), ("x-moat-truncated", out.truncated.to_string())]
    {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    if !accept.contains("application/json")
        && let Ok(v) = HeaderValue::from_str(&columns_header)
    {
        h.insert("x-moat-columns", v);
    }
    Ok(resp)
}
