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
use moat_query::{Catalog, QueryStream};
use serde_json::{Value, json};

use crate::http::extract::ClientInfo;
use crate::state::AppState;
use crate::tables;

/// Who runs a query and from where: writes its audit records.
#[derive(Clone)]
pub struct QueryAudit {
    st: Arc<AppState>,
    client: ClientInfo,
    actor: Actor,
    tenant: TenantId,
    query_id: String,
    started: Instant,
}

impl QueryAudit {
    async fn record(&self, event: AuditEvent) -> Result<(), MoatError> {
        self.st.record(&self.client, event).await
    }

    fn event(&self, action: &str, outcome: Outcome, details: Value) -> AuditEvent {
        AuditEvent::new(Some(self.tenant), Category::DataAccess, action, self.actor.clone(), outcome).resource("query").details(details)
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
}

/// Plans `sql` for `principal` in `tenant` through the engine; a refusal is audited (with its
/// code) before it is returned. `format` names the answer's form in the audit record ("json",
/// "csv", "arrow", "pgwire").
pub async fn plan(
    st: &Arc<AppState>,
    client: &ClientInfo,
    principal: &Principal,
    tenant: TenantId,
    sql: &str,
    format: &str,
) -> Result<Planned, MoatError> {
    let ctx = QueryAudit {
        st: st.clone(),
        client: client.clone(),
        actor: Actor::of(principal),
        tenant,
        query_id: uuid::Uuid::now_v7().to_string(),
        started: Instant::now(),
    };
    let mut details = json!({"query_id": ctx.query_id, "sql": sql, "format": format});
    let (sources, views, policy) = st.query_catalog(tenant).await?;
    let views: Vec<_> = views.iter().map(tables::view_source).collect();
    let catalog_time = ctx.started.elapsed();
    let stream = match st.engine.start(principal, tenant, Catalog { tables: &sources, views: &views }, &policy, sql).await {
        Ok(s) => s,
        Err(e) => {
            refuse(&ctx, details, &e).await?;
            return Err(e);
        }
    };
    details["tables"] = json!(stream.tables_read);
    details["columns"] = json!(stream.columns_read);
    details["columns_masked"] = json!(stream.columns_masked);
    let plan_time = ctx.started.elapsed() - catalog_time;
    Ok(Planned { query_id: ctx.query_id.clone(), stream, details, catalog_time, plan_time, audit: ctx })
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
