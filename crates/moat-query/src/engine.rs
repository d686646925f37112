//! The engine: one governed DataFusion session per query, scoped to the caller's tenant.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use moat_core::classification::Classification;
use moat_core::ids::TenantId;
use moat_core::permission::Permission;
use moat_core::principal::Principal;
use moat_core::{ErrorKind, MoatError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::governed::GovernedTable;
use crate::lineage::lineage;
use crate::policy::{ColumnMeta, MaskDecision, MaskingPolicy, decide};
use crate::restrict::{self, QueryKind};
use crate::scrub::scrub;

/// Limits every query runs under. This is also the server's `[query]` config section, so each
/// limit has a config key (`MOAT_QUERY__<FIELD>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineLimits {
    /// Longest SQL text accepted.
    pub max_sql_bytes: usize,
    /// Deepest parser nesting accepted.
    pub max_depth: usize,
    /// Rows returned at most; more sets `truncated`.
    pub max_rows: usize,
    /// Result size held at most.
    pub max_result_bytes: usize,
    pub timeout_ms: u64,
    /// Memory all of a tenant's running queries may hold together.
    pub memory_per_tenant_bytes: usize,
    pub max_concurrent_per_tenant: usize,
    /// Parallelism of one query (default: the cores, at most 16).
    pub target_partitions: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_sql_bytes: 64 * 1024,
            max_depth: 64,
            max_rows: 100_000,
            max_result_bytes: 256 * 1024 * 1024,
            timeout_ms: 30_000,
            memory_per_tenant_bytes: 1024 * 1024 * 1024,
            max_concurrent_per_tenant: 8,
            target_partitions: std::thread::available_parallelism().map_or(2, usize::from).min(16),
        }
    }
}

/// One table of the caller's tenant, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableSource {
    pub name: String,
    /// Directory holding the current version's Parquet files.
    pub location: PathBuf,
    /// The raw schema; `columns` is aligned with its fields.
    pub schema: SchemaRef,
    pub columns: Vec<ColumnMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutputColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    /// High-water mark of the columns this one was computed from.
    pub classification: Classification,
    /// `none`, a mask name when it is one masked column, or `derived` when computed from masked
    /// columns.
    pub masking: String,
}

#[derive(Debug)]
pub struct QueryOutput {
    pub columns: Vec<OutputColumn>,
    pub batches: Vec<RecordBatch>,
    pub row_count: usize,
    pub truncated: bool,
    pub tables_read: Vec<String>,
    /// `table.column` of every masked column the query read.
    pub columns_masked: Vec<String>,
    pub columns_read: Vec<String>,
    pub bytes: usize,
    pub kind: QueryKind,
}

struct TenantSlot {
    pool: Arc<dyn MemoryPool>,
    running: Arc<Semaphore>,
}

pub struct Engine {
    limits: EngineLimits,
    tenants: Mutex<HashMap<TenantId, Arc<TenantSlot>>>,
}

fn df_error(e: DataFusionError) -> MoatError {
    match e {
        DataFusionError::ResourcesExhausted(_) => {
            MoatError::invalid("query_memory_limit", "the query needs more memory than the tenant's limit; narrow it or aggregate")
        }
        DataFusionError::SQL(e, _) => MoatError::bad_request("syntax_error", scrub(&e.to_string())),
        DataFusionError::Plan(m) => MoatError::bad_request("query_error", scrub(&m)),
        DataFusionError::SchemaError(e, _) => MoatError::bad_request("query_error", scrub(&e.to_string())),
        DataFusionError::NotImplemented(m) => MoatError::bad_request("not_supported", scrub(&m)),
        DataFusionError::Execution(m) => MoatError::bad_request("query_error", scrub(&m)),
        DataFusionError::ArrowError(e, _) => MoatError::bad_request("query_error", scrub(&e.to_string())),
        DataFusionError::Context(ctx, inner) => {
            let mut e = df_error(*inner);
            e.message = format!("{}: {}", scrub(&ctx), e.message);
            e
        }
        // The diagnostic's message is the short one ("table 'x' not found"); the code comes from
        // the wrapped error.
        DataFusionError::Diagnostic(diag, inner) => {
            let mut e = df_error(*inner);
            e.message = scrub(&diag.message);
            e
        }
        DataFusionError::Shared(inner) => df_error(DataFusionError::External(Box::new(inner))),
        other => {
            tracing::error!(error = %other, "query engine failure");
            MoatError::internal("query_engine_error")
        }
    }
}

impl Engine {
    pub fn new(limits: EngineLimits) -> Self {
        Self { limits, tenants: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    fn slot(&self, tenant: TenantId) -> Arc<TenantSlot> {
        let mut t = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        t.entry(tenant)
            .or_insert_with(|| {
                Arc::new(TenantSlot {
                    pool: Arc::new(GreedyMemoryPool::new(self.limits.memory_per_tenant_bytes)),
                    running: Arc::new(Semaphore::new(self.limits.max_concurrent_per_tenant)),
                })
            })
            .clone()
    }

    /// Runs `sql` for `principal` over `tables` (which must be the principal's tenant's tables:
    /// the caller resolves them from the tenant of the credential).
    pub async fn execute(
        &self,
        principal: &Principal,
        tenant: TenantId,
        tables: &[TableSource],
        policy: &MaskingPolicy,
        sql: &str,
    ) -> Result<QueryOutput, MoatError> {
        let may_explain = principal.has_permission(&Permission::new("query", "explain"));
        let kind = restrict::check(sql, self.limits.max_sql_bytes, self.limits.max_depth, may_explain)?;
        let slot = self.slot(tenant);
        let _permit = slot.running.clone().try_acquire_owned().map_err(|_| {
            MoatError::new(
                ErrorKind::TooManyRequests { retry_after_s: Some(1) },
                "too_many_queries",
                format!("the tenant already runs {} queries; try again shortly", self.limits.max_concurrent_per_tenant),
            )
        })?;
        let limit = Duration::from_millis(self.limits.timeout_ms);
        match tokio::time::timeout(limit, self.run(principal, &slot, tables, policy, sql, kind)).await {
            Ok(r) => r,
            Err(_) => Err(MoatError::unavailable(
                "query_timeout",
                format!("the query ran longer than {} ms and was stopped", self.limits.timeout_ms),
            )),
        }
    }

    async fn run(
        &self,
        principal: &Principal,
        slot: &TenantSlot,
        tables: &[TableSource],
        policy: &MaskingPolicy,
        sql: &str,
        kind: QueryKind,
    ) -> Result<QueryOutput, MoatError> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("moat", "public")
            .with_create_default_catalog_and_schema(true)
            .with_target_partitions(self.limits.target_partitions.max(1));
        config.options_mut().sql_parser.recursion_limit =
            datafusion::config::ConfigNonZeroUsize::try_new(self.limits.max_depth.max(1)).map_err(df_error)?;
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(slot.pool.clone()).build_arc().map_err(df_error)?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);

        // Decisions per table and column; the session knows only these tables.
        let mut decisions: HashMap<(String, String), (Classification, MaskDecision)> = HashMap::new();
        for t in tables {
            let per_column: Vec<MaskDecision> =
                t.columns.iter().map(|c| decide(principal.role(), principal.clearance(), c, policy)).collect();
            for (c, d) in t.columns.iter().zip(&per_column) {
                decisions.insert((t.name.clone(), c.name.clone()), (c.label(), *d));
            }
            let url = ListingTableUrl::parse(format!("{}/", t.location.display())).map_err(df_error)?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
            let listing = ListingTable::try_new(ListingTableConfig::new(url).with_listing_options(options).with_schema(t.schema.clone()))
                .map_err(df_error)?;
            ctx.register_table(t.name.as_str(), Arc::new(GovernedTable::new(Arc::new(listing), &per_column))).map_err(df_error)?;
        }

        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(sql, options).await.map_err(df_error)?;
        let sources = lineage(df.logical_plan());
        let mut tables_read = std::collections::BTreeSet::new();
        let mut columns_read = std::collections::BTreeSet::new();
        let mut columns_masked = std::collections::BTreeSet::new();
        let columns: Vec<OutputColumn> = df
            .schema()
            .fields()
            .iter()
            .zip(sources.iter().chain(std::iter::repeat(&Default::default())))
            .map(|(field, srcs)| {
                let mut label = Classification::Public;
                let mut masks = Vec::new();
                for (t, c) in srcs {
                    match decisions.get(&(t.clone(), c.clone())) {
                        Some((l, d)) => {
                            tables_read.insert(t.clone());
                            columns_read.insert(format!("{t}.{c}"));
                            label = label.max(*l);
                            if let MaskDecision::Mask(m) = d {
                                masks.push(*m);
                                columns_masked.insert(format!("{t}.{c}"));
                            }
                        }
                        // information_schema and the like: metadata of the tenant's own tables.
                        None => label = label.max(Classification::Internal),
                    }
                }
                let masking = match (masks.as_slice(), srcs.len()) {
                    ([], _) => "none".to_owned(),
                    ([m], 1) => m.as_str().to_owned(),
                    _ => "derived".to_owned(),
                };
                OutputColumn { name: field.name().clone(), data_type: field.data_type().to_string(), classification: label, masking }
            })
            .collect();

        let started = Instant::now();
        let mut stream = df.execute_stream().await.map_err(df_error)?;
        let (mut batches, mut rows, mut bytes, mut truncated) = (Vec::new(), 0usize, 0usize, false);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(df_error)?;
            let room = self.limits.max_rows - rows;
            let batch = if batch.num_rows() > room {
                truncated = true;
                batch.slice(0, room)
            } else {
                batch
            };
            let size = batch.get_array_memory_size();
            if bytes + size > self.limits.max_result_bytes {
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            bytes += size;
            if batch.num_rows() > 0 {
                batches.push(batch);
            }
            if truncated || rows >= self.limits.max_rows {
                // One more row would exceed the limit: stop reading and say so if more existed.
                if !truncated {
                    truncated = stream.next().await.is_some_and(|b| b.is_ok_and(|b| b.num_rows() > 0));
                }
                break;
            }
        }
        tracing::debug!(rows, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "query executed");
        Ok(QueryOutput {
            columns,
            batches,
            row_count: rows,
            truncated,
            tables_read: tables_read.into_iter().collect(),
            columns_masked: columns_masked.into_iter().collect(),
            columns_read: columns_read.into_iter().collect(),
            bytes,
            kind,
        })
    }
}
