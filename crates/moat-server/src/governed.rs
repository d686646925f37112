//! The one governed query flow, whatever the protocol (`POST /v1/query`, the PostgreSQL wire
//! protocol): the tenant's catalog and masking policy, the engine's checks and limits, a refused
//! or failed query audited with its error code, the access recorded durably before any row
//! leaves, and a closing `query.end` record (rows, bytes, truncation, duration) when a streamed
//! result ends, fails or is abandoned. There is no second path to the data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::ids::TenantId;
use moat_core::principal::Principal;
use moat_core::{ErrorKind, MoatError};
use moat_query::{Catalog, Described, QueryStream, Request};
use serde_json::{Value, json};

use crate::http::extract::ClientInfo;
use crate::state::AppState;
use crate::tables;

/// Who runs a query and from where: writes its audit records. A query that ends before any
/// record is written (its client cancelled it or went away while it was planned or computed)
/// is recorded when the last handle is dropped: `query.execute`, failure, `query_canceled`.
#[derive(Clone)]
pub struct QueryAudit(Arc<AuditInner>);

pub struct AuditInner {
    st: Arc<AppState>,
    client: ClientInfo,
    actor: Actor,
    tenant: TenantId,
    query_id: String,
    started: Instant,
    /// What the record of a query abandoned before its first record says.
    asked: Value,
    recorded: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for QueryAudit {
    type Target = AuditInner;
    fn deref(&self) -> &AuditInner {
        &self.0
    }
}

impl QueryAudit {
    async fn record(&self, event: AuditEvent) -> Result<(), MoatError> {
        self.recorded.store(true, std::sync::atomic::Ordering::SeqCst);
        self.st.record(&self.client, event).await
    }
}

impl AuditInner {
    fn event(&self, action: &str, outcome: Outcome, details: Value) -> AuditEvent {
        AuditEvent::new(Some(self.tenant), Category::DataAccess, action, self.actor.clone(), outcome).resource("query").details(details)
    }
}

impl Drop for AuditInner {
    fn drop(&mut self) {
        if self.recorded.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut details = std::mem::take(&mut self.asked);
        details["error"] = json!("query_canceled");
        details["duration_ms"] = json!(self.started.elapsed().as_millis() as u64);
        let event = self.event("query.execute", Outcome::Failure, details);
        let (st, client) = (self.st.clone(), self.client.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            if let Err(e) = st.record(&client, event).await {
                tracing::error!(code = e.code, "could not record an abandoned query");
            }
        });
    }
}

fn outcome_of(e: &MoatError) -> Outcome {
    if matches!(e.kind, ErrorKind::Forbidden) { Outcome::Denied } else { Outcome::Failure }
}

/// A planned governed query: its stream has not produced a row yet.
pub struct Planned {
    pub query_id: String,
    pub stream: QueryStream,
    /// What the audit record of this query says so far (query id, SQL, format, tables and
    /// columns read, columns masked).
    pub details: Value,
    /// Time spent loading the tenant's catalog, and planning.
    pub catalog_time: Duration,
    pub plan_time: Duration,
    /// Writes this query's records.
    pub audit: QueryAudit,
    /// The result cache's key of this answer, when it may be cached (see `result_cache`).
    pub cache_key: Option<String>,
}

impl QueryAudit {
    fn new(st: &Arc<AppState>, client: &ClientInfo, principal: &Principal, tenant: TenantId, asked: &Value, query_id: String) -> Self {
        QueryAudit(Arc::new(AuditInner {
            st: st.clone(),
            client: client.clone(),
            actor: Actor::of(principal),
            tenant,
            query_id,
            started: Instant::now(),
            asked: asked.clone(),
            recorded: false.into(),
        }))
    }
}

/// The tenant's catalog as the engine sees it: its tables, views and masking policy.
async fn with_catalog<T>(
    st: &AppState,
    tenant: TenantId,
    f: impl AsyncFnOnce(Catalog<'_>, &moat_query::policy::MaskingPolicy) -> Result<T, MoatError>,
) -> Result<T, MoatError> {
    let (sources, views, policy) = st.query_catalog(tenant).await?;
    let views: Vec<_> = views.iter().map(tables::view_source).collect();
    f(Catalog { tables: &sources, views: &views }, &policy).await
}

/// Plans `request` for `principal` in `tenant` through the engine; a refusal is audited (with
/// its code) before it is returned. `format` names the answer's form in the audit record
/// ("json", "csv", "arrow", "pgwire").
pub async fn plan(
    st: &Arc<AppState>,
    client: &ClientInfo,
    principal: &Principal,
    tenant: TenantId,
    request: Request<'_>,
    format: &str,
) -> Result<Planned, MoatError> {
    let query_id = uuid::Uuid::now_v7().to_string();
    let mut details = json!({"query_id": query_id, "sql": request.sql, "format": format});
    let ctx = QueryAudit::new(st, client, principal, tenant, &details, query_id);
    let mut catalog_time = Duration::ZERO;
    let started = ctx.started;
    let mut cache_key = None;
    let planned = with_catalog(st, tenant, async |catalog, policy| {
        catalog_time = started.elapsed();
        let key = result_key(st, principal, &request);
        let stream = st.engine.start_request(principal, tenant, catalog, policy, request).await?;
        // `random()` or `now()`: the next run is another answer, so no key is worth making.
        cache_key = key.filter(|_| stream.repeatable).and_then(|material| digest(tenant, &catalog, policy, material));
        Ok(stream)
    })
    .await;
    let stream = match planned {
        Ok(s) => s,
        Err(e) => {
            refuse(&ctx, details, &e).await?;
            return Err(e);
        }
    };
    if !stream.params.is_empty() {
        // What a parameter held is part of what was asked, like a literal in the SQL text.
        details["params"] = json!(stream.params.iter().map(|p| clip(p, MAX_AUDITED_PARAM)).collect::<Vec<_>>());
    }
    details["tables"] = json!(stream.tables_read);
    details["columns"] = json!(stream.columns_read);
    details["columns_masked"] = json!(stream.columns_masked);
    let plan_time = ctx.started.elapsed().saturating_sub(catalog_time);
    Ok(Planned { query_id: ctx.query_id.clone(), stream, details, catalog_time, plan_time, audit: ctx, cache_key })
}

/// The result cache's key is a digest of everything the answer depends on (tenant, the
/// caller's role and clearance, the SQL, the row limit, and the whole catalog as planned:
/// tables with their version locations, columns and labels, views, masking policy). This is
/// the caller's part of it, or `None` when the answer may not be cached: no cache, a
/// PostgreSQL client (bound parameters, its own dialect). A catalog with a linked PostgreSQL
/// relation (its rows change without a new version) or a plan that is not repeatable
/// (`random()`, `now()`) is not cached either (see `digest` and `plan`).
fn result_key(st: &AppState, principal: &Principal, request: &Request<'_>) -> Option<String> {
    if !st.results.enabled() || request.postgres.is_some() || request.bind.is_some() {
        return None;
    }
    Some(format!("v1\n{:?}\n{:?}\n{}\n{}", principal.role(), principal.clearance(), st.engine.limits().max_rows, request.sql))
}

/// The key itself: the caller's part with the tenant's catalog as planned; `None` for a
/// catalog with a linked relation.
fn digest(tenant: TenantId, catalog: &Catalog<'_>, policy: &moat_query::policy::MaskingPolicy, caller: String) -> Option<String> {
    if catalog.tables.iter().any(|t| t.provider.is_some()) {
        return None;
    }
    let material = format!("{caller}\n{tenant}\n{:?}\n{:?}\n{:?}", catalog.tables, catalog.views, policy);
    Some(moat_core::secret::sha256_hex(material.as_bytes()))
}

/// How much of one parameter value an audit record keeps.
const MAX_AUDITED_PARAM: usize = 1024;

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Describes `request` for `principal` in `tenant` without running it (a PostgreSQL client's
/// Describe): the same catalog, masking and checks as [`plan`]. Nothing is read, so a
/// described statement is not recorded (its execution is); a refused one is, as a refused
/// query (a client does not execute what failed to describe).
pub async fn describe(
    st: &Arc<AppState>,
    client: &ClientInfo,
    principal: &Principal,
    tenant: TenantId,
    request: Request<'_>,
) -> Result<Described, MoatError> {
    let asked = json!({"query_id": uuid::Uuid::now_v7().to_string(), "sql": request.sql, "format": "pgwire", "phase": "describe"});
    let ctx = QueryAudit::new(st, client, principal, tenant, &asked, String::new());
    match with_catalog(st, tenant, async |catalog, policy| st.engine.describe_request(principal, tenant, catalog, policy, request).await)
        .await
    {
        Ok(d) => {
            ctx.recorded.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(d)
        }
        Err(e) => {
            refuse(&ctx, asked, &e).await?;
            Err(e)
        }
    }
}

async fn refuse(ctx: &QueryAudit, mut details: Value, e: &MoatError) -> Result<(), MoatError> {
    details["error"] = json!(e.code);
    details["duration_ms"] = json!(ctx.started.elapsed().as_millis() as u64);
    ctx.record(ctx.event("query.execute", outcome_of(e), details)).await
}

impl QueryAudit {
    /// Records a query that failed after planning (while collecting its answer).
    pub async fn refuse(&self, details: Value, e: &MoatError) -> Result<(), MoatError> {
        refuse(self, details, e).await
    }

    /// Records a collected answer's access, durably; only then may it be released.
    pub async fn record_success(&self, mut details: Value) -> Result<(), MoatError> {
        details["duration_ms"] = json!(self.started.elapsed().as_millis() as u64);
        self.record(self.event("query.execute", Outcome::Success, details)).await
    }
}

impl Planned {
    /// Starts a streamed answer: the first batch is computed (errors that show before the
    /// first row are refusals like any other), the access is recorded durably, then rows may
    /// flow through [`Streaming::next_batch`].
    pub async fn stream(mut self) -> Result<Streaming, MoatError> {
        let first = match self.stream.next_batch().await {
            Some(Err(e)) => {
                refuse(&self.audit, self.details, &e).await?;
                return Err(e);
            }
            Some(Ok(b)) => Some(b),
            None => None,
        };
        let mut details = self.details;
        details["streamed"] = json!(true);
        self.audit.record(self.audit.event("query.execute", Outcome::Success, details)).await?;
        Ok(Streaming { stream: self.stream, first, audit: self.audit, done: false })
    }
}

/// A streamed governed answer whose access is recorded; `query.end` is written exactly once:
/// at its end, at its first error, or (`client_disconnected`) when it is dropped unfinished.
pub struct Streaming {
    pub stream: QueryStream,
    first: Option<RecordBatch>,
    audit: QueryAudit,
    done: bool,
}

impl Streaming {
    /// The next batch; `None` at the end. The closing record is written before the last
    /// answer (end or error) is returned.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch, MoatError>> {
        if self.done {
            return None;
        }
        let batch = match self.first.take() {
            Some(b) => Some(Ok(b)),
            None => self.stream.next_batch().await,
        };
        match &batch {
            Some(Ok(_)) => {}
            Some(Err(e)) => self.finish(Some(e.code)).await,
            None => self.finish(None).await,
        }
        batch
    }

    /// Ends the answer early with `error` (an encoding failure, say) or normally (`None`).
    pub async fn finish(&mut self, error: Option<&'static str>) {
        if self.done {
            return;
        }
        self.done = true;
        let ev = self.end_event(error);
        if let Err(e) = self.audit.record(ev).await {
            tracing::error!(code = e.code, query_id = self.audit.query_id, "could not record the end of a streamed query");
        }
    }

    fn end_event(&self, error: Option<&'static str>) -> AuditEvent {
        let outcome = if error.is_some() { Outcome::Failure } else { Outcome::Success };
        let q = &self.stream;
        let mut d = json!({"query_id": self.audit.query_id, "rows": q.rows(), "bytes": q.bytes(), "truncated": q.truncated(),
                           "duration_ms": self.audit.started.elapsed().as_millis() as u64});
        if let Some(e) = error {
            d["error"] = json!(e);
        }
        self.audit.event("query.end", outcome, d)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The client went away mid-stream.
        let ev = self.end_event(Some("client_disconnected"));
        let audit = self.audit.clone();
        tokio::spawn(async move {
            if let Err(e) = audit.record(ev).await {
                tracing::error!(code = e.code, "could not record the end of a streamed query");
            }
        });
    }
}
