//! The engine: one governed DataFusion session per query, scoped to the caller's tenant.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::ParamValues;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;
use futures::StreamExt;
use moat_core::classification::Classification;
use moat_core::ids::TenantId;
use moat_core::permission::Permission;
use moat_core::principal::Principal;
use moat_core::{ErrorKind, MoatError};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::crypto::{TenantKeyring, encrypted_format};
use crate::governed::GovernedTable;
use crate::lineage::lineage;
use crate::policy::{ColumnMeta, MaskDecision, MaskingPolicy, decide};
use crate::pool::{QUERY_LIMIT_MARK, QueryPool};
use crate::restrict::{self, QueryKind};
use crate::scrub::scrub;
use crate::storage::TableStorage;

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
    /// Memory one query may hold (within its tenant's).
    pub memory_per_query_bytes: usize,
    /// Sorts, aggregates and joins that outgrow their memory spill to disk, up to this much per
    /// tenant (0: no spilling; such queries fail with `query_memory_limit`).
    pub spill_per_tenant_bytes: u64,
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
            memory_per_query_bytes: 512 * 1024 * 1024,
            spill_per_tenant_bytes: 16 * 1024 * 1024 * 1024,
            max_concurrent_per_tenant: 8,
            target_partitions: std::thread::available_parallelism().map_or(2, usize::from).min(16),
        }
    }
}

/// One table of the caller's tenant, as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableSource {
    pub name: String,
    /// Object-store prefix of the current version's Parquet files (see [`TableStorage`]).
    pub location: String,
    /// The raw schema; `columns` is aligned with its fields.
    pub schema: SchemaRef,
    pub columns: Vec<ColumnMeta>,
    /// The raw table when it is not Parquet under `location` (a tenant's PostgreSQL relation):
    /// it is governed exactly like a Parquet table (wrapped in `GovernedTable`).
    pub provider: Option<Arc<dyn TableProvider>>,
    /// The tenant's keys when the files are encrypted ([`crate::crypto`]); `None`: plaintext.
    pub keys: Option<Arc<TenantKeyring>>,
}

/// A view of the caller's tenant: a saved read-only query. It is planned inside the caller's
/// session, over the same governed tables as the caller's own SQL, so it masks exactly as they
/// do; its columns' labels come from lineage (the high-water mark of what they read).
#[derive(Debug, Clone)]
pub struct ViewSource {
    pub name: String,
    pub sql: String,
}

/// How deep views may build on views.
pub const MAX_VIEW_DEPTH: usize = 8;

/// The engine's name for a session's one catalog (PostgreSQL clients see their database name).
const CATALOG: &str = "moat";

/// Gives `$1`, `$2`, … their values, knowing the types the plan infers for them (`None` where
/// it cannot): a PostgreSQL client's bound parameters.
pub type Binder<'a> = dyn Fn(&[Option<DataType>]) -> Result<ParamValues, MoatError> + Send + Sync + 'a;

/// One query as a client sent it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub sql: &'a str,
    /// A PostgreSQL client, connected to this database name: the statement is read in
    /// PostgreSQL's dialect with the idioms of psql, drivers and BI tools rewritten
    /// ([`restrict::check_postgres`]), and the session has a `pg_catalog` of the tenant's
    /// tables ([`crate::pgcompat`]).
    pub postgres: Option<&'a str>,
    /// Parameter values. They are bound into the logical plan as literals before it is
    /// optimised, so a parameter meets exactly what a literal would: masked values where the
    /// scan masks.
    pub bind: Option<&'a Binder<'a>>,
}

impl<'a> Request<'a> {
    /// SQL in DataFusion's dialect, without parameters (`POST /v1/query`, the CLI).
    pub fn sql(sql: &'a str) -> Self {
        Self { sql, postgres: None, bind: None }
    }
}

/// A planned statement's shape, without running it.
#[derive(Debug)]
pub struct Described {
    pub columns: Vec<OutputColumn>,
    pub schema: SchemaRef,
    /// The inferred type of `$1`, `$2`, … (`None` where the plan does not tell).
    pub params: Vec<Option<DataType>>,
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
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub row_count: usize,
    pub truncated: bool,
    pub tables_read: Vec<String>,
    /// `table.column` of every masked column the query read.
    pub columns_masked: Vec<String>,
    pub columns_read: Vec<String>,
    pub bytes: usize,
    pub kind: QueryKind,
    /// Time spent executing (producing batches).
    pub exec: Duration,
}

struct TenantSlot {
    pool: Arc<dyn MemoryPool>,
    running: Arc<Semaphore>,
    /// Spill files of the tenant's queries, under one size cap.
    disk: Arc<DiskManager>,
    /// File listings, Parquet footers and file statistics of the tenant's tables, shared by its
    /// queries so that planning does not re-read them. Keys are object paths, which carry the
    /// tenant and an immutable version, so an entry can never be stale or another tenant's.
    caches: CacheManagerConfig,
}

/// Bounds of a tenant's planning caches (least recently used entries go first).
const METADATA_CACHE_BYTES: usize = 16 * 1024 * 1024;
const STATISTICS_CACHE_BYTES: usize = 4 * 1024 * 1024;
const LIST_CACHE_BYTES: usize = 512 * 1024;

pub struct Engine {
    limits: EngineLimits,
    storage: TableStorage,
    /// Where spill files go (a directory per tenant below it); `None`: no spilling.
    spill_dir: Option<PathBuf>,
    tenants: Mutex<HashMap<TenantId, Arc<TenantSlot>>>,
}

fn df_error(e: DataFusionError) -> MoatError {
    match e {
        DataFusionError::ResourcesExhausted(m) if m.contains(QUERY_LIMIT_MARK) => query_memory_error(true),
        DataFusionError::ResourcesExhausted(_) => query_memory_error(false),
        DataFusionError::SQL(e, _) => MoatError::bad_request("syntax_error", scrub(&e.to_string())),
        DataFusionError::Plan(m) => MoatError::bad_request("query_error", scrub(&m)),
        DataFusionError::SchemaError(e, _) => MoatError::bad_request("query_error", scrub(&e.to_string())),
        DataFusionError::NotImplemented(m) => MoatError::bad_request("not_supported", scrub(&m)),
        DataFusionError::Execution(m) => MoatError::bad_request("query_error", scrub(&m)),
        // A table file that fails decryption or authentication: never rows, never the
        // library's words (they may quote file bytes).
        DataFusionError::ParquetError(e) if crate::crypto::is_integrity_failure(&e) => crate::crypto::integrity_error(),
        DataFusionError::ArrowError(e, _) if crate::crypto::is_integrity_message(&e.to_string()) => crate::crypto::integrity_error(),
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
        // One error shared by several partitions: its own kind when this is the last holder,
        // otherwise by what it says (memory stays a memory error).
        DataFusionError::Shared(inner) => match Arc::try_unwrap(inner) {
            Ok(e) => df_error(e),
            Err(shared) => match shared.as_ref() {
                DataFusionError::ResourcesExhausted(m) => df_error(DataFusionError::ResourcesExhausted(m.clone())),
                DataFusionError::External(e) if e.downcast_ref::<MoatError>().is_some() => {
                    e.downcast_ref::<MoatError>().cloned().unwrap_or_else(|| MoatError::internal("query_engine_error"))
                }
                other => df_error(DataFusionError::Execution(other.to_string())),
            },
        },
        // Errors raised inside table providers and functions come wrapped.
        DataFusionError::External(e) => match e.downcast::<DataFusionError>() {
            Ok(inner) => df_error(*inner),
            // A source's own error (a tenant's PostgreSQL relation): already in product terms,
            // and its message carries no values.
            Err(e) => match e.downcast::<MoatError>() {
                Ok(m) => *m,
                Err(e) => {
                    tracing::error!(error = %e, "query engine failure");
                    MoatError::internal("query_engine_error")
                }
            },
        },
        other => {
            tracing::error!(error = %other, "query engine failure");
            MoatError::internal("query_engine_error")
        }
    }
}

fn query_memory_error(own_cap: bool) -> MoatError {
    let msg = if own_cap {
        "the query needs more memory than one query may hold (query.memory_per_query_bytes); narrow it or aggregate"
    } else {
        "the tenant's running queries hold all of its memory (query.memory_per_tenant_bytes); narrow the query or try again shortly"
    };
    MoatError::invalid("query_memory_limit", msg)
}

fn timeout_error(limits: &EngineLimits) -> MoatError {
    MoatError::unavailable("query_timeout", format!("the query ran longer than {} ms and was stopped", limits.timeout_ms))
}

impl Engine {
    /// `spill_dir`: where queries that outgrow memory may spill (`None`: they fail instead).
    pub fn new(limits: EngineLimits, storage: TableStorage, spill_dir: Option<PathBuf>) -> Self {
        Self { limits, storage, spill_dir, tenants: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    pub fn storage(&self) -> &TableStorage {
        &self.storage
    }

    fn slot(&self, tenant: TenantId) -> Result<Arc<TenantSlot>, MoatError> {
        let mut t = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = t.get(&tenant) {
            return Ok(s.clone());
        }
        let mode = match &self.spill_dir {
            Some(dir) if self.limits.spill_per_tenant_bytes > 0 => {
                let dir = dir.join(tenant.to_string());
                std::fs::create_dir_all(&dir).map_err(|e| {
                    tracing::error!(path = %dir.display(), error = %e, "cannot create the spill directory");
                    MoatError::internal("storage_error")
                })?;
                DiskManagerMode::Directories(vec![dir])
            }
            _ => DiskManagerMode::Disabled,
        };
        let disk = DiskManagerBuilder::default()
            .with_mode(mode)
            .with_max_temp_directory_size(self.limits.spill_per_tenant_bytes)
            .build()
            .map_err(df_error)?;
        let bounds = CacheManagerConfig::default()
            .with_metadata_cache_limit(METADATA_CACHE_BYTES)
            .with_file_statistics_cache_limit(STATISTICS_CACHE_BYTES)
            .with_list_files_cache_limit(LIST_CACHE_BYTES);
        let made = CacheManager::try_new(&bounds).map_err(df_error)?;
        let caches = bounds
            .with_file_statistics_cache(made.get_file_statistic_cache())
            .with_list_files_cache(made.get_list_files_cache())
            .with_file_metadata_cache(Some(made.get_file_metadata_cache()));
        let slot = Arc::new(TenantSlot {
            pool: Arc::new(GreedyMemoryPool::new(self.limits.memory_per_tenant_bytes)),
            running: Arc::new(Semaphore::new(self.limits.max_concurrent_per_tenant)),
            disk: Arc::new(disk),
            caches,
        });
        t.insert(tenant, slot.clone());
        Ok(slot)
    }

    /// Runs `sql` for `principal` over `tables` (which must be the principal's tenant's tables:
    /// the caller resolves them from the tenant of the credential) and collects the result
    /// within the row and byte limits.
    pub async fn execute(
        &self,
        principal: &Principal,
        tenant: TenantId,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        sql: &str,
    ) -> Result<QueryOutput, MoatError> {
        self.start(principal, tenant, catalog, policy, sql).await?.collect().await
    }

    /// Plans `sql` as `principal` without running it: its result columns with their labels
    /// and masks (a view's columns, checked when it is saved).
    pub async fn describe(
        &self,
        principal: &Principal,
        tenant: TenantId,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        sql: &str,
    ) -> Result<Vec<OutputColumn>, MoatError> {
        let kind = restrict::check(sql, self.limits.max_sql_bytes, self.limits.max_depth, false)?;
        if kind != QueryKind::Select {
            return Err(MoatError::invalid("invalid_view", "a view is one SELECT, WITH or VALUES statement"));
        }
        Ok(self.describe_request(principal, tenant, catalog, policy, Request::sql(sql)).await?.columns)
    }

    /// Plans a client's statement as `principal` without running it: its result columns and
    /// the types of its parameters (a PostgreSQL client's Describe).
    pub async fn describe_request(
        &self,
        principal: &Principal,
        tenant: TenantId,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        request: Request<'_>,
    ) -> Result<Described, MoatError> {
        let (_, statement) = self.check(principal, request)?;
        let slot = self.slot(tenant)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.limits.timeout_ms);
        match tokio::time::timeout_at(deadline, self.prepare(principal, &slot, catalog, policy, request, statement)).await {
            Ok(p) => {
                let p = p?;
                let params = parameter_types(p.df.logical_plan())?;
                Ok(Described { columns: p.columns, schema: p.schema, params })
            }
            Err(_) => Err(timeout_error(&self.limits)),
        }
    }

    /// The statement's size, depth and kind, in the client's dialect.
    fn check(&self, principal: &Principal, request: Request<'_>) -> Result<(QueryKind, Option<Statement>), MoatError> {
        let may_explain = principal.has_permission(&Permission::new("query", "explain"));
        let (sql, max_bytes, max_depth) = (request.sql, self.limits.max_sql_bytes, self.limits.max_depth);
        match request.postgres {
            Some(_) => restrict::check_postgres(sql, max_bytes, max_depth, may_explain).map(|(k, s)| (k, Some(s))),
            None => restrict::check(sql, max_bytes, max_depth, may_explain).map(|k| (k, None)),
        }
    }

    /// Plans `sql` and starts it; the result is pulled batch by batch from the returned stream
    /// (which holds the tenant's concurrency slot until dropped and stops at the deadline).
    pub async fn start(
        &self,
        principal: &Principal,
        tenant: TenantId,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        sql: &str,
    ) -> Result<QueryStream, MoatError> {
        self.start_request(principal, tenant, catalog, policy, Request::sql(sql)).await
    }

    /// [`Engine::start`] for a client's request (its dialect, its parameters).
    pub async fn start_request(
        &self,
        principal: &Principal,
        tenant: TenantId,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        request: Request<'_>,
    ) -> Result<QueryStream, MoatError> {
        let checked = self.check(principal, request)?;
        let slot = self.slot(tenant)?;
        let permit = slot.running.clone().try_acquire_owned().map_err(|_| {
            MoatError::new(
                ErrorKind::TooManyRequests { retry_after_s: Some(1) },
                "too_many_queries",
                format!("the tenant already runs {} queries; try again shortly", self.limits.max_concurrent_per_tenant),
            )
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.limits.timeout_ms);
        match tokio::time::timeout_at(deadline, self.plan(principal, &slot, catalog, policy, request, checked)).await {
            Ok(Ok(mut q)) => {
                q.deadline = deadline;
                q._permit = Some(permit);
                Ok(q)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout_error(&self.limits)),
        }
    }

    async fn plan(
        &self,
        principal: &Principal,
        slot: &TenantSlot,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        request: Request<'_>,
        (kind, statement): (QueryKind, Option<Statement>),
    ) -> Result<QueryStream, MoatError> {
        let p = self.prepare(principal, slot, catalog, policy, request, statement).await?;
        let physical_started = Instant::now();
        let stream = p.df.execute_stream().await.map_err(df_error)?;
        let planning = PlanTimings { session: p.session, logical: p.logical, physical: physical_started.elapsed() };
        Ok(QueryStream {
            planning,
            columns: p.columns,
            schema: p.schema,
            tables_read: p.tables_read,
            columns_masked: p.columns_masked,
            columns_read: p.columns_read,
            params: p.params,
            repeatable: p.repeatable,
            kind,
            inner: stream,
            pool: p.pool,
            limits: self.limits.clone(),
            rows: 0,
            bytes: 0,
            truncated: false,
            done: false,
            deadline: tokio::time::Instant::now(),
            exec: Duration::ZERO,
            _permit: None,
        })
    }

    /// The governed session of one query, its logical plan (parameters bound) and its output
    /// classification. `statement`: a PostgreSQL client's statement, as checked and rewritten.
    async fn prepare(
        &self,
        principal: &Principal,
        slot: &TenantSlot,
        catalog: Catalog<'_>,
        policy: &MaskingPolicy,
        request: Request<'_>,
        statement: Option<Statement>,
    ) -> Result<Prepared, MoatError> {
        let tables = catalog.tables;
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_create_default_catalog_and_schema(true)
            .with_target_partitions(self.limits.target_partitions.max(1));
        // Filters that reach the Parquet scan (only ones on raw-visible columns: see
        // `GovernedTable::may_push`) are applied while decoding, so masks run on the surviving
        // rows only, and pages they rule out are skipped.
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        config.options_mut().sql_parser.recursion_limit =
            datafusion::config::ConfigNonZeroUsize::try_new(self.limits.max_depth.max(1)).map_err(df_error)?;
        let pool = Arc::new(QueryPool::new(slot.pool.clone(), self.limits.memory_per_query_bytes));
        let mut runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .with_object_store_registry(self.storage.registry())
            .with_cache_manager(slot.caches.clone());
        runtime.disk_manager = Some(slot.disk.clone());
        let started = Instant::now();
        let mut state =
            SessionStateBuilder::new().with_config(config).with_runtime_env(runtime.build_arc().map_err(df_error)?).with_default_features();
        if request.postgres.is_some() {
            state = state.with_type_planner(Arc::new(PgOidTypePlanner));
        }
        let ctx = SessionContext::new_with_state(state.build());
        if let Some(database) = request.postgres {
            crate::pgcompat::install(&ctx, CATALOG, database).map_err(df_error)?;
        }

        // Decisions per table and column; the session knows only these tables.
        let mut decisions: HashMap<(String, String), (Classification, MaskDecision)> = HashMap::new();
        for t in tables {
            let per_column: Vec<MaskDecision> =
                t.columns.iter().map(|c| decide(principal.role(), principal.clearance(), c, policy)).collect();
            for (c, d) in t.columns.iter().zip(&per_column) {
                decisions.insert((t.name.clone(), c.name.clone()), (c.label(), *d));
            }
            let raw: Arc<dyn TableProvider> = match &t.provider {
                Some(p) => p.clone(),
                None => {
                    let url = self.storage.listing_url(&t.location).map_err(df_error)?;
                    let format = match &t.keys {
                        Some(keys) => encrypted_format(&ctx.runtime_env(), keys.clone(), self.storage.store()),
                        None => ParquetFormat::default(),
                    };
                    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
                    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(t.schema.clone());
                    Arc::new(ListingTable::try_new(config).map_err(df_error)?.with_cache(slot.caches.file_statistics_cache.clone()))
                }
            };
            ctx.register_table(t.name.as_str(), Arc::new(GovernedTable::new(raw, &per_column))).map_err(df_error)?;
        }

        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let statement = match statement {
            Some(s) => DfStatement::Statement(Box::new(s)),
            None => parse(&ctx, request.sql)?,
        };
        if !catalog.views.is_empty() {
            let views: HashMap<&str, &ViewSource> = catalog.views.iter().map(|v| (v.name.as_str(), v)).collect();
            register_views(&ctx, &views, &statement, &mut Vec::new(), options).await?;
        }
        if request.postgres.is_some() && reads_pg_catalog(&ctx, &statement)? {
            crate::pgcompat::warm_oids(&ctx).await.map_err(df_error)?;
        }
        let session = started.elapsed();
        let plan = ctx.state().statement_to_plan(statement).await.map_err(df_error)?;
        options.verify_plan(&plan).map_err(df_error)?;
        let mut df = ctx.execute_logical_plan(plan).await.map_err(df_error)?;
        let mut params = Vec::new();
        if let Some(bind) = request.bind {
            let values = bind(&parameter_types(df.logical_plan())?)?;
            if let ParamValues::List(list) = &values {
                params = list.iter().map(|v| v.value.to_string()).collect();
            }
            df = df.with_param_values(values).map_err(df_error)?;
        }
        let logical = started.elapsed() - session;
        let sources = lineage(df.logical_plan());
        let repeatable = crate::lineage::repeatable(df.logical_plan());
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
                OutputColumn { name: field.name().clone(), data_type: type_name(field.data_type()), classification: label, masking }
            })
            .collect();

        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        Ok(Prepared {
            df,
            columns,
            schema,
            tables_read: tables_read.into_iter().collect(),
            columns_masked: columns_masked.into_iter().collect(),
            columns_read: columns_read.into_iter().collect(),
            params,
            repeatable,
            pool,
            session,
            logical,
        })
    }
}

/// What a query may name: the tables and views of the caller's tenant (the caller resolves
/// them from the tenant of the credential, never from the request).
#[derive(Debug, Clone, Copy)]
pub struct Catalog<'a> {
    pub tables: &'a [TableSource],
    pub views: &'a [ViewSource],
}

impl<'a> Catalog<'a> {
    pub fn tables(tables: &'a [TableSource]) -> Self {
        Self { tables, views: &[] }
    }
}

struct Prepared {
    df: datafusion::dataframe::DataFrame,
    columns: Vec<OutputColumn>,
    schema: SchemaRef,
    tables_read: Vec<String>,
    columns_masked: Vec<String>,
    columns_read: Vec<String>,
    params: Vec<String>,
    repeatable: bool,
    pool: Arc<QueryPool>,
    session: Duration,
    logical: Duration,
}

/// `sql` in the session's dialect.
fn parse(ctx: &SessionContext, sql: &str) -> Result<DfStatement, MoatError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    state.sql_to_statement(sql, &dialect).map_err(df_error)
}

/// Whether `statement` names a `pg_catalog` table.
fn reads_pg_catalog(ctx: &SessionContext, statement: &DfStatement) -> Result<bool, MoatError> {
    let references = ctx.state().resolve_table_references(statement).map_err(df_error)?;
    Ok(references.iter().any(|r| r.schema() == Some("pg_catalog") || r.table().starts_with("pg_")))
}

/// The inferred types of `$1` … `$n`, in order (`n` the highest placeholder the plan names).
fn parameter_types(plan: &datafusion::logical_expr::LogicalPlan) -> Result<Vec<Option<DataType>>, MoatError> {
    let mut types = plan.get_parameter_types().map_err(df_error)?;
    let n = types.keys().filter_map(|k| k.strip_prefix('$')?.parse::<usize>().ok()).max().unwrap_or(0);
    Ok((1..=n).map(|i| types.remove(&format!("${i}")).flatten()).collect())
}

/// Registers, in `ctx`, each view `statement` names (and the views those name, first), planned
/// over the governed tables already registered. `stack` holds the views being planned: a view
/// that names itself, directly or not, or views nested deeper than [`MAX_VIEW_DEPTH`], are
/// refused.
async fn register_views(
    ctx: &SessionContext,
    views: &HashMap<&str, &ViewSource>,
    statement: &DfStatement,
    stack: &mut Vec<String>,
    options: SQLOptions,
) -> Result<(), MoatError> {
    let references = ctx.state().resolve_table_references(statement).map_err(df_error)?;
    // A look at the catalog itself (information_schema, SHOW TABLES, pg_catalog) lists every
    // view that can be planned now; a broken one is left out rather than failing the listing.
    if stack.is_empty() && references.iter().any(|r| matches!(r.schema(), Some("information_schema" | "pg_catalog"))) {
        let mut all: Vec<&ViewSource> = views.values().copied().collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for view in all {
            let _ = register_view(ctx, views, view, &mut Vec::new(), options).await;
        }
        return Ok(());
    }
    for reference in references {
        if let Some(view) = views.get(reference.table()) {
            register_view(ctx, views, view, stack, options).await?;
        }
    }
    Ok(())
}

/// Registers `view` (unless it already is), after the views its SQL names.
async fn register_view(
    ctx: &SessionContext,
    views: &HashMap<&str, &ViewSource>,
    view: &ViewSource,
    stack: &mut Vec<String>,
    options: SQLOptions,
) -> Result<(), MoatError> {
    let name = view.name.as_str();
    if ctx.table_exist(name).map_err(df_error)? {
        return Ok(());
    }
    if stack.iter().any(|s| s == name) {
        return Err(MoatError::invalid("view_cycle", format!("view {name} reads itself (through {})", stack.join(" -> "))));
    }
    if stack.len() >= MAX_VIEW_DEPTH {
        return Err(MoatError::invalid("view_too_deep", format!("views may build on views at most {MAX_VIEW_DEPTH} deep")));
    }
    stack.push(name.to_owned());
    Box::pin(register_views(ctx, views, &parse(ctx, &view.sql)?, stack, options)).await?;
    stack.pop();
    let planned = ctx.sql_with_options(&view.sql, options).await.map_err(|e| {
        let mut e = df_error(e);
        e.message = format!("view {name}: {}", e.message);
        e
    })?;
    let provider = datafusion::datasource::ViewTable::new(planned.into_unoptimized_plan(), Some(view.sql.clone()));
    ctx.register_table(name, Arc::new(provider)).map_err(df_error)?;
    Ok(())
}

/// The type a client is told. String views are a layout of the engine (masked text is one), not
/// a type: they are reported as the text they hold.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8View => "Utf8".to_owned(),
        DataType::BinaryView => "Binary".to_owned(),
        t => t.to_string(),
    }
}

/// Where a query's planning time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanTimings {
    /// The session: configuration, runtime, catalog of the tenant's governed tables.
    pub session: Duration,
    /// Parsing, logical planning and optimisation.
    pub logical: Duration,
    /// Physical planning (file listing, statistics) and starting execution.
    pub physical: Duration,
}

/// A running query. Batches come out within the row and byte limits (`truncated` tells whether
/// more existed) and before the deadline.
pub struct QueryStream {
    pub columns: Vec<OutputColumn>,
    /// The result's Arrow schema (aligned with `columns`).
    pub schema: SchemaRef,
    pub tables_read: Vec<String>,
    pub columns_masked: Vec<String>,
    pub columns_read: Vec<String>,
    /// The bound parameter values, as text (for the audit record).
    pub params: Vec<String>,
    /// The same data gives the same answer (no `random()`, no `now()`: see
    /// [`crate::lineage::repeatable`]).
    pub repeatable: bool,
    pub kind: QueryKind,
    pub planning: PlanTimings,
    inner: SendableRecordBatchStream,
    pool: Arc<QueryPool>,
    limits: EngineLimits,
    rows: usize,
    bytes: usize,
    truncated: bool,
    done: bool,
    deadline: tokio::time::Instant,
    /// Time spent producing batches so far.
    exec: Duration,
    _permit: Option<OwnedSemaphorePermit>,
}

impl QueryStream {
    /// Time spent executing (producing batches) so far.
    pub fn exec_time(&self) -> Duration {
        self.exec
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }

    async fn pull(&mut self) -> Option<Result<RecordBatch, MoatError>> {
        let started = Instant::now();
        let next = match tokio::time::timeout_at(self.deadline, self.inner.next()).await {
            Ok(next) => next.map(|b| {
                b.map_err(|e| match df_error(e) {
                    e if e.code == "query_memory_limit" => query_memory_error(self.pool.capped()),
                    e => e,
                })
            }),
            Err(_) => Some(Err(timeout_error(&self.limits))),
        };
        self.exec += started.elapsed();
        next
    }

    /// The next non-empty batch, or `None` at the end (or at a limit).
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch, MoatError>> {
        while !self.done {
            let batch = match self.pull().await {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Some(Ok(b)) => b,
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let room = self.limits.max_rows - self.rows;
            let batch = if batch.num_rows() > room {
                self.truncated = true;
                batch.slice(0, room)
            } else {
                batch
            };
            // Sizes are estimated per row (a slice shares its parent's buffers).
            let per_row = batch.get_array_memory_size().div_ceil(batch.num_rows().max(1)).max(1);
            let room_bytes = self.limits.max_result_bytes.saturating_sub(self.bytes);
            let batch = if batch.num_rows() * per_row > room_bytes {
                self.truncated = true;
                self.done = true;
                batch.slice(0, room_bytes / per_row)
            } else {
                batch
            };
            self.rows += batch.num_rows();
            self.bytes += batch.num_rows() * per_row;
            if self.truncated || self.rows >= self.limits.max_rows {
                // At the row limit: say whether more existed, then stop reading.
                if !self.truncated {
                    self.truncated = loop {
                        match self.pull().await {
                            Some(Ok(b)) if b.num_rows() == 0 => continue,
                            Some(Ok(_)) => break true,
                            _ => break false,
                        }
                    };
                }
                self.done = true;
            }
            if batch.num_rows() > 0 {
                return Some(Ok(batch));
            }
        }
        None
    }

    /// The whole (limited) result in memory.
    pub async fn collect(mut self) -> Result<QueryOutput, MoatError> {
        let mut batches = Vec::new();
        while let Some(b) = self.next_batch().await {
            batches.push(b?);
        }
        tracing::debug!(rows = self.rows, bytes = self.bytes, exec_us = self.exec.as_micros() as u64, "query executed");
        Ok(QueryOutput {
            columns: self.columns,
            schema: self.schema,
            batches,
            row_count: self.rows,
            truncated: self.truncated,
            tables_read: self.tables_read,
            columns_masked: self.columns_masked,
            columns_read: self.columns_read,
            bytes: self.bytes,
            kind: self.kind,
            exec: self.exec,
        })
    }
}
