//! Tables of a tenant's own PostgreSQL schema as query sources (`PUT /v1/tables/{t}` with
//! `{"postgres": {"relation": …}}`), read through the same governed path as Parquet tables.
//!
//! [`PgTable`] is the *raw* table under `GovernedTable`: the masks sit above it, so it only ever
//! receives the filters `GovernedTable::may_push` lets down — ones that read columns the caller
//! sees raw — and of those it sends to PostgreSQL only what it can state with the same meaning
//! there ([`pushable`]): comparisons of integer and boolean columns with literals, equality and
//! `IN` of text columns, `IS [NOT] NULL`, and `AND`/`OR` of those. Everything else (and
//! everything on a masked column, always) is evaluated by the engine above the masks; a pushed
//! filter stays there too (`Inexact`), so pushing only saves work. Values are bound as
//! parameters, identifiers quoted; reads run as the tenant's role in read-only transactions
//! (`moat_store::TenantRelations`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    RecordBatch, RecordBatchOptions, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;
use moat_core::ids::TenantId;
use moat_core::{MoatError, Result};
use moat_store::{RelationColumn, SqlValue, TableRecord, TenantRelations};
use sqlx::Row;
use sqlx::postgres::PgRow;

/// Where a linked table's catalog record points: `postgres:{relation}`.
pub const LOCATION_PREFIX: &str = "postgres:";

/// Rows per record batch.
const BATCH_ROWS: usize = 8_192;

/// Rows a PII scan of a linked table reads (its first ones).
pub const SAMPLE_ROWS: usize = 100_000;

/// The relation a catalog location names, if it is a linked PostgreSQL table.
pub fn relation_of(location: &str) -> Option<&str> {
    location.strip_prefix(LOCATION_PREFIX)
}

/// Linked tables need a store with tenant relations.
pub fn unsupported() -> MoatError {
    MoatError::invalid(
        "source_unsupported",
        "tables of the tenant's own PostgreSQL schema need the PostgreSQL store (store.url = \"postgres://…\")",
    )
}

/// The raw table of a linked catalog record (`None`: the record is not linked).
pub fn table_of(t: &TableRecord, relations: Option<&Arc<dyn TenantRelations>>, timeout: Duration) -> Option<Result<PgTable>> {
    let relation = relation_of(&t.location)?;
    Some(match relations {
        Some(source) => Ok(PgTable::new(source.clone(), t.tenant_id, relation, crate::tables::raw_schema(t), timeout)),
        None => Err(unsupported()),
    })
}

/// How a column is read and what it becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    /// Read as PostgreSQL's text of the value (`::text`): text itself, and any type without a
    /// closer Arrow type (uuid, json, unconstrained numeric, arrays, …).
    Text,
    Decimal(u8, i8),
    /// Days since 1970-01-01; infinite dates read as NULL.
    Date,
    /// Microseconds since the epoch (UTC when `true`); infinite timestamps read as NULL.
    Timestamp(bool),
}

/// The Arrow type a relation column is read as.
pub fn arrow_type(c: &RelationColumn) -> DataType {
    let kind = match c.type_name.as_str() {
        "int2" => Kind::I16,
        "int4" => Kind::I32,
        "int8" => Kind::I64,
        "float4" => Kind::F32,
        "float8" => Kind::F64,
        "bool" => Kind::Bool,
        "date" => Kind::Date,
        "timestamp" => Kind::Timestamp(false),
        "timestamptz" => Kind::Timestamp(true),
        "numeric" => match (c.precision, c.scale) {
            (Some(p @ 1..=38), Some(s @ 0..=38)) if s <= p => Kind::Decimal(p as u8, s as i8),
            _ => Kind::Text,
        },
        _ => Kind::Text,
    };
    data_type(kind)
}

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::I16 => DataType::Int16,
        Kind::I32 => DataType::Int32,
        Kind::I64 => DataType::Int64,
        Kind::F32 => DataType::Float32,
        Kind::F64 => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::Text => DataType::Utf8,
        Kind::Decimal(p, s) => DataType::Decimal128(p, s),
        Kind::Date => DataType::Date32,
        Kind::Timestamp(utc) => DataType::Timestamp(TimeUnit::Microsecond, utc.then(|| "UTC".into())),
    }
}

/// The kind a catalog column's Arrow type is read as (anything unexpected: its text).
fn kind_of(t: &DataType) -> Kind {
    match t {
        DataType::Int16 => Kind::I16,
        DataType::Int32 => Kind::I32,
        DataType::Int64 => Kind::I64,
        DataType::Float32 => Kind::F32,
        DataType::Float64 => Kind::F64,
        DataType::Boolean => Kind::Bool,
        DataType::Decimal128(p, s) => Kind::Decimal(*p, *s),
        DataType::Date32 => Kind::Date,
        DataType::Timestamp(TimeUnit::Microsecond, tz) => Kind::Timestamp(tz.is_some()),
        _ => Kind::Text,
    }
}

/// An identifier, quoted for PostgreSQL.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The select-list expression that reads column `q` (quoted) as `kind`.
fn read_expr(q: &str, kind: Kind) -> String {
    match kind {
        Kind::I16 | Kind::I32 | Kind::I64 | Kind::F32 | Kind::F64 | Kind::Bool => q.to_owned(),
        Kind::Text | Kind::Decimal(..) => format!("{q}::text"),
        Kind::Date => format!("CASE WHEN isfinite({q}) THEN {q} - DATE '1970-01-01' END"),
        Kind::Timestamp(_) => format!("CASE WHEN isfinite({q}) THEN (extract(epoch FROM {q}) * 1000000)::int8 END"),
    }
}

/// A linked relation of the tenant's schema as the engine's raw table.
pub struct PgTable {
    tenant: TenantId,
    /// `tenant_{uuid}.relation`, quoted.
    relation: String,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    source: Arc<dyn TenantRelations>,
    timeout: Duration,
}

impl fmt::Debug for PgTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTable").field("relation", &self.relation).finish_non_exhaustive()
    }
}

impl PgTable {
    /// `schema` is the catalog's raw schema of the table (as registered).
    pub fn new(source: Arc<dyn TenantRelations>, tenant: TenantId, relation: &str, schema: SchemaRef, timeout: Duration) -> Self {
        let kinds = schema.fields().iter().map(|f| kind_of(f.data_type())).collect();
        let relation = format!("{}.{}", quote(&moat_store::postgres::tenant_schema(tenant)), quote(relation));
        Self { tenant, relation, schema, kinds, source, timeout }
    }

    /// The statement that reads `columns` (indices) of the rows that `filters` may keep.
    fn select(&self, columns: &[usize], filters: &[Expr], limit: Option<usize>) -> (String, Vec<SqlValue>) {
        let list: Vec<String> = columns
            .iter()
            .map(|&i| {
                let q = quote(self.schema.field(i).name());
                format!("{} AS {q}", read_expr(&q, self.kinds[i]))
            })
            .collect();
        let mut sql = format!("SELECT {} FROM {}", list.join(", "), self.relation);
        let mut params = Vec::new();
        let conditions: Vec<String> =
            filters.iter().flat_map(|f| split_conjunction(f)).filter_map(|f| self.condition(f, &mut params)).collect();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(n) = limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        (sql, params)
    }

    /// `filter` as a PostgreSQL condition with the same meaning, or `None` (it then runs only
    /// in the engine). Parameters it needs are pushed to `params` only when all of it translates.
    fn condition(&self, filter: &Expr, params: &mut Vec<SqlValue>) -> Option<String> {
        let mut mine = Vec::new();
        let sql = self.translate(filter, &mut mine, params.len())?;
        params.extend(mine);
        Some(sql)
    }

    fn translate(&self, e: &Expr, params: &mut Vec<SqlValue>, base: usize) -> Option<String> {
        let bind = |v: SqlValue, params: &mut Vec<SqlValue>| {
            params.push(v);
            format!("${}", base + params.len())
        };
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op: op @ (Operator::And | Operator::Or), right }) => {
                let l = self.translate(left, params, base)?;
                let r = self.translate(right, params, base)?;
                Some(format!("({l} {} {r})", if *op == Operator::And { "AND" } else { "OR" }))
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (col, op, value) = match (self.column(left), self.column(right)) {
                    (Some(c), None) => (c, *op, literal(right)?),
                    (None, Some(c)) => (c, op.swap()?, literal(left)?),
                    _ => return None,
                };
                let symbol = pushable(self.kinds[col], op, &value)?;
                let q = quote(self.schema.field(col).name());
                let target = if self.kinds[col] == Kind::Text { format!("{q}::text") } else { q };
                Some(format!("{target} {symbol} {}", bind(value, params)))
            }
            Expr::IsNull(inner) => Some(format!("{} IS NULL", quote(self.schema.field(self.column(inner)?).name()))),
            Expr::IsNotNull(inner) => Some(format!("{} IS NOT NULL", quote(self.schema.field(self.column(inner)?).name()))),
            Expr::InList(list) if !list.negated && !list.list.is_empty() => {
                let col = self.column(&list.expr)?;
                let mut items = Vec::with_capacity(list.list.len());
                for item in &list.list {
                    let value = literal(item)?;
                    pushable(self.kinds[col], Operator::Eq, &value)?;
                    items.push(bind(value, params));
                }
                let q = quote(self.schema.field(col).name());
                let target = if self.kinds[col] == Kind::Text { format!("{q}::text") } else { q };
                Some(format!("{target} IN ({})", items.join(", ")))
            }
            _ => None,
        }
    }

    /// The column `e` reads as it is (or widened: an integer cast to a wider integer).
    fn column(&self, e: &Expr) -> Option<usize> {
        match e {
            Expr::Column(c) => self.schema.index_of(&c.name).ok(),
            Expr::Cast(cast) if matches!(cast.field.data_type(), DataType::Int32 | DataType::Int64) => {
                let i = self.column(&cast.expr)?;
                matches!(self.kinds[i], Kind::I16 | Kind::I32 | Kind::I64).then_some(i)
            }
            _ => None,
        }
    }

    /// Reads the rows `select` names as record batches of `schema`.
    fn stream(&self, schema: SchemaRef, kinds: Vec<Kind>, select: String, params: Vec<SqlValue>) -> SendableRecordBatchStream {
        let (source, tenant, timeout) = (self.source.clone(), self.tenant, self.timeout);
        let out = schema.clone();
        let batches = futures::stream::once(async move { source.read(tenant, select, params, timeout).await })
            .map(move |rows| {
                let (schema, kinds) = (schema.clone(), kinds.clone());
                match rows {
                    Ok(rx) => futures::stream::unfold(Some(rx), move |rx| {
                        let (schema, kinds) = (schema.clone(), kinds.clone());
                        async move {
                            let mut rx = rx?;
                            let mut rows = Vec::with_capacity(BATCH_ROWS);
                            while rows.len() < BATCH_ROWS {
                                match rx.recv().await {
                                    Some(Ok(row)) => rows.push(row),
                                    Some(Err(e)) => return Some((Err(external(e)), None)),
                                    None => break,
                                }
                            }
                            if rows.is_empty() {
                                return None;
                            }
                            let done = rows.len() < BATCH_ROWS;
                            Some((to_batch(&schema, &kinds, &rows), (!done).then_some(rx)))
                        }
                    })
                    .boxed(),
                    Err(e) => futures::stream::once(async move { Err(external(e)) }).boxed(),
                }
            })
            .flatten();
        Box::pin(RecordBatchStreamAdapter::new(out, batches))
    }

    /// Up to `limit` rows of every column, for a PII scan.
    pub async fn sample_rows(&self, limit: usize) -> Result<Vec<RecordBatch>> {
        use futures::TryStreamExt;
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let (sql, params) = self.select(&all, &[], Some(limit));
        self.stream(self.schema.clone(), self.kinds.clone(), sql, params).try_collect().await.map_err(|e| match e {
            DataFusionError::External(inner) => match inner.downcast::<MoatError>() {
                Ok(m) => *m,
                Err(_) => MoatError::internal("source_error"),
            },
            _ => MoatError::internal("source_error"),
        })
    }
}

fn external(e: MoatError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A literal as a bound value, when it has one PostgreSQL reads the same way.
fn literal(e: &Expr) -> Option<SqlValue> {
    let Expr::Literal(v, _) = e else { return None };
    Some(match v {
        ScalarValue::Int8(Some(n)) => SqlValue::Int(i64::from(*n)),
        ScalarValue::Int16(Some(n)) => SqlValue::Int(i64::from(*n)),
        ScalarValue::Int32(Some(n)) => SqlValue::Int(i64::from(*n)),
        ScalarValue::Int64(Some(n)) => SqlValue::Int(*n),
        ScalarValue::UInt8(Some(n)) => SqlValue::Int(i64::from(*n)),
        ScalarValue::UInt16(Some(n)) => SqlValue::Int(i64::from(*n)),
        ScalarValue::UInt32(Some(n)) => SqlValue::Int(i64::from(*n)),
        ScalarValue::Boolean(Some(b)) => SqlValue::Bool(*b),
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => SqlValue::Text(s.clone()),
        _ => return None,
    })
}

/// The PostgreSQL operator for `column op value` when it means exactly what the engine means:
/// any comparison of integers or booleans; only `=` of text (PostgreSQL orders text by its
/// collation, and a non-deterministic collation may call different strings equal, which only
/// widens `=`). Floats, decimals, dates and timestamps are left to the engine (signed zeros,
/// text-read decimals).
fn pushable(kind: Kind, op: Operator, value: &SqlValue) -> Option<&'static str> {
    let symbol = match op {
        Operator::Eq => "=",
        Operator::NotEq => "<>",
        Operator::Lt => "<",
        Operator::LtEq => "<=",
        Operator::Gt => ">",
        Operator::GtEq => ">=",
        _ => return None,
    };
    match (kind, value) {
        (Kind::I16 | Kind::I32 | Kind::I64, SqlValue::Int(_)) | (Kind::Bool, SqlValue::Bool(_)) => Some(symbol),
        (Kind::Text, SqlValue::Text(_)) if op == Operator::Eq => Some(symbol),
        _ => None,
    }
}

/// Rows as one record batch of `schema` (the columns in `kinds`' order).
fn to_batch(schema: &SchemaRef, kinds: &[Kind], rows: &[PgRow]) -> DfResult<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        columns.push(column(*kind, i, rows).map_err(|e| {
            tracing::warn!(column = schema.field(i).name(), error = %e, "a source value could not be read");
            external(MoatError::conflict(
                "source_changed",
                format!("column {:?} no longer reads as registered; register the table again", schema.field(i).name()),
            ))
        })?);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

macro_rules! build {
    ($builder:ty, $rust:ty, $i:expr, $rows:expr) => {{
        let mut b = <$builder>::with_capacity($rows.len());
        for r in $rows {
            b.append_option(r.try_get::<Option<$rust>, _>($i)?);
        }
        Arc::new(b.finish()) as ArrayRef
    }};
}

fn column(kind: Kind, i: usize, rows: &[PgRow]) -> std::result::Result<ArrayRef, sqlx::Error> {
    Ok(match kind {
        Kind::I16 => build!(Int16Builder, i16, i, rows),
        Kind::I32 => build!(Int32Builder, i32, i, rows),
        Kind::Date => build!(Date32Builder, i32, i, rows),
        Kind::I64 => build!(Int64Builder, i64, i, rows),
        Kind::F32 => build!(Float32Builder, f32, i, rows),
        Kind::F64 => build!(Float64Builder, f64, i, rows),
        Kind::Bool => build!(BooleanBuilder, bool, i, rows),
        Kind::Text => {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_option(r.try_get::<Option<&str>, _>(i)?);
            }
            Arc::new(b.finish())
        }
        Kind::Timestamp(utc) => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len());
            for r in rows {
                b.append_option(r.try_get::<Option<i64>, _>(i)?);
            }
            let a = b.finish();
            Arc::new(if utc { a.with_timezone("UTC") } else { a })
        }
        Kind::Decimal(p, s) => {
            let mut b = Decimal128Builder::with_capacity(rows.len());
            for r in rows {
                let text: Option<String> = r.try_get(i)?;
                let v = match text {
                    Some(t) => Some(decimal(&t, s).ok_or_else(|| sqlx::Error::Decode(format!("not a decimal of scale {s}").into()))?),
                    None => None,
                };
                b.append_option(v);
            }
            Arc::new(b.finish().with_precision_and_scale(p, s).map_err(|e| sqlx::Error::Decode(Box::new(e)))?)
        }
    })
}

/// PostgreSQL's text of a numeric (`-12.50`) as an integer of `scale` decimal places.
fn decimal(text: &str, scale: i8) -> Option<i128> {
    let (neg, digits) = text.strip_prefix('-').map_or((false, text), |d| (true, d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = usize::try_from(scale).ok()?;
    if int.is_empty() || frac.len() > scale || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i128 = 0;
    for b in int.bytes().chain(frac.bytes()).chain(std::iter::repeat_n(b'0', scale - frac.len())) {
        v = v.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

#[derive(Debug)]
struct Partition {
    table: Arc<PgTable>,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    select: String,
    params: Vec<SqlValue>,
}

impl PartitionStream for Partition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        self.table.stream(self.schema.clone(), self.kinds.clone(), self.select.clone(), self.params.clone())
    }
}

/// A cheap handle the engine registers (the table itself is shared with its partitions).
#[derive(Debug, Clone)]
pub struct PgTableProvider(pub Arc<PgTable>);

#[async_trait]
impl TableProvider for PgTableProvider {
    fn schema(&self) -> SchemaRef {
        self.0.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.0.translate(f, &mut Vec::new(), 0).is_some() {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let t = &self.0;
        let columns: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..t.schema.fields().len()).collect());
        let fields: Vec<Field> = columns.iter().map(|&i| t.schema.field(i).clone()).collect();
        let schema = Arc::new(Schema::new(fields));
        let kinds = columns.iter().map(|&i| t.kinds[i]).collect();
        // A limit is exact only on unfiltered rows (a filter may also run above).
        let limit = if filters.is_empty() { limit } else { None };
        let (select, params) = t.select(&columns, filters, limit);
        let partition = Partition { table: t.clone(), schema: schema.clone(), kinds, select, params };
        Ok(Arc::new(StreamingTableExec::try_new(schema, vec![Arc::new(partition)], None, [], false, None)?))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use datafusion::prelude::{cast, col, lit};

    use super::*;

    /// A source that is never read: these tests look at the statements only.
    struct NoSource;

    #[async_trait]
    impl TenantRelations for NoSource {
        async fn describe(&self, _: TenantId, _: &str) -> Result<Option<moat_store::RelationInfo>> {
            Ok(None)
        }
        async fn read(&self, _: TenantId, _: String, _: Vec<SqlValue>, _: Duration) -> Result<tokio::sync::mpsc::Receiver<Result<PgRow>>> {
            Err(MoatError::internal("not_read"))
        }
    }

    fn orders() -> PgTable {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("customer", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
            Field::new("vip", DataType::Boolean, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new("small", DataType::Int16, true),
        ]);
        PgTable::new(Arc::new(NoSource), TenantId(uuid::Uuid::nil()), "orders", Arc::new(schema), Duration::from_secs(1))
    }

    fn sql_of(filters: &[Expr]) -> (String, Vec<SqlValue>) {
        let (sql, params) = orders().select(&[0], filters, None);
        let from = "SELECT \"id\" AS \"id\" FROM \"tenant_00000000000000000000000000000000\".\"orders\"";
        (sql.strip_prefix(from).unwrap_or_else(|| panic!("{sql}")).trim().to_owned(), params)
    }

    #[test]
    fn only_filters_with_the_same_meaning_in_postgresql_are_sent() {
        let (sql, params) = sql_of(&[col("id").gt_eq(lit(2)).and(col("score").lt(lit(1.0)))]);
        assert_eq!((sql.as_str(), params), ("WHERE \"id\" >= $1", vec![SqlValue::Int(2)]), "a float comparison stays in the engine");
        let (sql, params) = sql_of(&[col("vip").is_null().or(col("id").in_list(vec![lit(1), lit(2)], false))]);
        assert_eq!(sql, "WHERE (\"vip\" IS NULL OR \"id\" IN ($1, $2))");
        assert_eq!(params, vec![SqlValue::Int(1), SqlValue::Int(2)]);
        let (sql, params) = sql_of(&[col("customer").eq(lit("Ann")), col("customer").lt(lit("b")), lit(2).lt(col("id"))]);
        assert_eq!(sql, "WHERE \"customer\"::text = $1 AND \"id\" > $2", "text equality and a flipped comparison; no text order");
        assert_eq!(params, vec![SqlValue::Text("Ann".into()), SqlValue::Int(2)]);
        for kept in [
            col("id").eq(lit(1)).or(col("score").lt(lit(1.0))),
            col("amount").lt(lit(ScalarValue::Decimal128(Some(0), 10, 2))),
            col("customer").not_eq(lit("Ann")),
            col("customer").like(lit("A%")),
            col("id").in_list(vec![lit(1)], true),
            !col("vip"),
        ] {
            assert_eq!(sql_of(std::slice::from_ref(&kept)).0, "", "{kept} stays in the engine");
        }
        let (sql, _) = sql_of(&[cast(col("small"), DataType::Int64).eq(lit(5_i64))]);
        assert_eq!(sql, "WHERE \"small\" = $1", "a widened integer is the column");
        assert_eq!(orders().select(&[0], &[], Some(5)).0.rsplit(' ').next(), Some("5"));
    }

    #[test]
    fn catalog_types_read_back_as_registered() {
        for kind in [
            Kind::I16,
            Kind::I32,
            Kind::I64,
            Kind::F32,
            Kind::F64,
            Kind::Bool,
            Kind::Text,
            Kind::Decimal(12, 2),
            Kind::Date,
            Kind::Timestamp(false),
            Kind::Timestamp(true),
        ] {
            let stored = data_type(kind).to_string();
            assert_eq!(kind_of(&DataType::from_str(&stored).unwrap()), kind, "{stored}");
        }
        let numeric = |p, s| RelationColumn { name: "n".into(), type_name: "numeric".into(), precision: p, scale: s };
        assert_eq!(arrow_type(&numeric(Some(10), Some(2))), DataType::Decimal128(10, 2));
        assert_eq!(arrow_type(&numeric(None, None)), DataType::Utf8, "unconstrained numeric reads as its exact text");
        assert_eq!(arrow_type(&numeric(Some(50), Some(2))), DataType::Utf8);
    }

    #[test]
    fn decimals_read_exactly() {
        assert_eq!(decimal("12.50", 2), Some(1250));
        assert_eq!(decimal("-0.07", 2), Some(-7));
        assert_eq!(decimal("3", 2), Some(300));
        assert_eq!(decimal("1.234", 2), None);
        assert_eq!(decimal("NaN", 2), None);
        assert_eq!(decimal("", 2), None);
    }
}
