//! `/v1/audit/*`: search, verify, checkpoints and proofs of the caller's tenant trail (Admin,
//! Auditor). Reading and verifying the trail is itself recorded.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine;
use futures::StreamExt;
use moat_core::MoatError;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome, trail_name};
use moat_core::tlog;
use moat_store::audit_log::VerifyReport;
use moat_store::{AuditFilter, AuditRecord};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::ApiResult;
use super::extract::{Authorized, QueryParams, act};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub actor: Option<String>,
    pub category: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub resource: Option<String>,
    /// RFC 3339 or Unix milliseconds.
    pub from: Option<String>,
    pub to: Option<String>,
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub after: Option<i64>,
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

fn parse_time(field: &str, v: &str) -> Result<i64, MoatError> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    OffsetDateTime::parse(v, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| MoatError::bad_request("invalid_query", format!("{field}: expected RFC 3339 time or Unix milliseconds")))
}

/// A filter word that names one of an enum's values (`category`, `outcome`).
fn parse_word<T: serde::de::DeserializeOwned>(field: &str, v: &str, one_of: &str) -> Result<T, MoatError> {
    serde_json::from_value::<T>(serde_json::Value::String(v.to_owned()))
        .map_err(|_| MoatError::bad_request("invalid_query", format!("{field}: one of {one_of}")))
}

fn parse_category(c: &str) -> Result<Category, MoatError> {
    parse_word("category", c, "auth, authz, data_access, admin, agent, system")
}

/// The record of a read of the caller's trail (search, report, stream, export).
fn trail_read(tenant: Option<moat_core::ids::TenantId>, p: &moat_core::principal::Principal, action: &str, resource: &str) -> AuditEvent {
    AuditEvent::new(tenant, Category::DataAccess, action, Actor::of(p), Outcome::Success).resource(resource)
}

/// A downloadable answer: its type and the file name it is saved under.
fn attachment(body: axum::body::Body, content_type: &'static str, filename: &str) -> axum::response::Response {
    let mut resp = axum::response::Response::new(body);
    let h = resp.headers_mut();
    h.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(content_type));
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// A trail read page by page in sequence order through `AuditStore::list`: bounded (stops after
/// `until`) or open-ended (an empty page = nothing new yet).
struct TrailReader {
    tenant: Option<moat_core::ids::TenantId>,
    filter: AuditFilter,
    until: Option<i64>,
    done: bool,
}

impl TrailReader {
    fn new(tenant: Option<moat_core::ids::TenantId>, filter: AuditFilter, until: Option<i64>) -> Self {
        Self { tenant, filter, until, done: false }
    }

    /// The last seq read (where a reader resumes).
    fn after(&self) -> i64 {
        self.filter.after_seq.unwrap_or(0)
    }

    /// The next page; `None` once a bounded read is complete.
    async fn next(&mut self, audit: &dyn moat_store::AuditStore) -> moat_core::Result<Option<Vec<AuditRecord>>> {
        if self.done {
            return Ok(None);
        }
        let mut page = audit.list(self.tenant, &self.filter).await?;
        if let Some(until) = self.until {
            let full = page.len() == self.filter.limit as usize;
            if !full || page.last().is_some_and(|r| r.seq > until) {
                page.retain(|r| r.seq <= until);
                self.done = true;
            }
        }
        if let Some(last) = page.last() {
            self.filter.after_seq = Some(last.seq);
        }
        Ok(Some(page))
    }
}

pub async fn events(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditRead>,
    QueryParams(q): QueryParams<EventQuery>,
) -> ApiResult<Json<EventPage>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(MoatError::bad_request("invalid_query", "limit: must be between 1 and 1000").into());
    }
    let too_long = [&q.actor, &q.action, &q.resource, &q.q].iter().any(|v| v.as_ref().is_some_and(|s| s.len() > 256));
    if too_long {
        return Err(MoatError::bad_request("invalid_query", "filters may be at most 256 characters").into());
    }
    let category = q.category.as_deref().map(parse_category);
    let outcome = q.outcome.as_deref().map(|o| parse_word::<Outcome>("outcome", o, "success, failure, denied"));
    let filter = AuditFilter {
        actor: q.actor.clone(),
        category: category.transpose()?.map(|c| c.as_str().to_owned()),
        outcome: outcome.transpose()?.map(|o| o.as_str().to_owned()),
        action: q.action.clone(),
        resource: q.resource.clone(),
        from_ms: q.from.as_deref().map(|v| parse_time("from", v)).transpose()?,
        to_ms: q.to.as_deref().map(|v| parse_time("to", v)).transpose()?,
        q: q.q.clone(),
        limit,
        after_seq: q.after,
    };
    let events = st.stores.audit.list(auth.tenant, &filter).await?;
    let next_after = (events.len() == limit as usize).then(|| events.last().map(|e| e.seq)).flatten();
    let e = trail_read(auth.tenant, &auth.principal, "audit.read", "audit:events").details(serde_json::json!({
        "actor": q.actor, "category": q.category, "action": q.action, "resource": q.resource, "outcome": q.outcome,
        "from": q.from, "to": q.to, "q": q.q, "returned": events.len()
    }));
    st.record(&auth.client, e).await?;
    Ok(Json(EventPage { events, next_after }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneQuery {
    /// Only report what is due.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/audit/prune`: runs retention over every trail now (Super Admin). Each removal is
/// named by an `audit.retention` record in its trail, covered by a signed checkpoint before
/// anything goes; who ran it is recorded in the platform trail first.
pub async fn prune(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditPrune>,
    QueryParams(q): QueryParams<PruneQuery>,
) -> ApiResult<Json<crate::retention::RetentionRun>> {
    let e = AuditEvent::new(None, Category::Admin, "audit.prune", Actor::of(&auth.principal), Outcome::Success)
        .resource("audit:retention")
        .details(serde_json::json!({"dry_run": q.dry_run}));
    st.record(&auth.client, e).await?;
    Ok(Json(crate::retention::run(&st, q.dry_run).await?))
}

/// Verifies one trail of this server's store against its keys and published checkpoint.
pub async fn verify_trail(st: &AppState, trail: &str, progress: impl FnMut(u64, u64)) -> moat_core::Result<VerifyReport> {
    let sink = st.checkpoint_sink.as_deref();
    moat_store::audit_log::verify_trail(&*st.stores.audit, &st.audit_keys, &st.checkpoint_key, sink, trail, progress).await
}

pub async fn verify(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditVerify>,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    let trail = trail_name(auth.tenant);
    if !super::ndjson::wanted(&headers) {
        let r = verify_trail(&st, &trail, |_, _| {}).await?;
        record_verify(&st, &auth, &r).await?;
        return Ok(Json(r).into_response());
    }
    Ok(super::ndjson::respond(move |progress| async move {
        let report = |done: u64, total: u64| progress.send(serde_json::json!({"records_verified": done, "records_total": total}));
        let r = match verify_trail(&st, &trail, report).await {
            Ok(r) => r,
            Err(e) => return super::error::error_body(e.code, &e.message),
        };
        match record_verify(&st, &auth, &r).await {
            Ok(()) => serde_json::json!({"result": r}),
            Err(e) => super::error::error_body(e.code, &e.message),
        }
    }))
}

async fn record_verify(st: &AppState, auth: &Authorized<act::AuditVerify>, r: &VerifyReport) -> moat_core::Result<()> {
    let e = AuditEvent::new(
        auth.tenant,
        Category::DataAccess,
        "audit.verify",
        Actor::of(&auth.principal),
        if r.ok { Outcome::Success } else { Outcome::Failure },
    )
    .resource("audit:log")
    .details(serde_json::json!({"checked": r.checked, "ok": r.ok, "first_bad_seq": r.first_bad_seq, "problem": r.problem}));
    st.record(&auth.client, e).await
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointView {
    pub trail: String,
    pub origin: String,
    /// The verifier key to pin: `name+keyid+base64(0x01 ‖ public key)`.
    pub verifier_key: String,
    pub size: u64,
    /// Hex root.
    pub root: String,
    /// The C2SP signed note.
    pub note: String,
}

fn checkpoint_view(st: &AppState, cp: &moat_store::CheckpointRecord) -> moat_core::Result<CheckpointView> {
    let verifier = st.checkpoint_key.verifier(&cp.trail)?;
    let body = verifier.open(&cp.note).map_err(|_| MoatError::internal("checkpoint_unverifiable"))?;
    let parsed = moat_core::checkpoint::Checkpoint::parse_body(body).map_err(|_| MoatError::internal("checkpoint_unparsable"))?;
    Ok(CheckpointView {
        trail: cp.trail.clone(),
        origin: verifier.name().to_owned(),
        verifier_key: verifier.encode(),
        size: cp.size,
        root: hex::encode(parsed.root),
        note: cp.note.clone(),
    })
}

async fn latest_checkpoint(st: &AppState, trail: &str) -> moat_core::Result<moat_store::CheckpointRecord> {
    st.stores.audit.latest_checkpoint(trail).await?.ok_or_else(|| {
        MoatError::not_found("no_checkpoint", "the trail has no signed checkpoint yet (one is made within a second of the first record)")
    })
}

/// `GET /v1/audit/checkpoint`: the latest signed checkpoint of the caller's trail.
pub async fn checkpoint(State(st): State<Arc<AppState>>, auth: Authorized<act::AuditRead>) -> ApiResult<Json<CheckpointView>> {
    let trail = trail_name(auth.tenant);
    let cp = latest_checkpoint(&st, &trail).await?;
    Ok(Json(checkpoint_view(&st, &cp)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The record's sequence number (leaf index + 1).
    pub seq: i64,
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InclusionProofView {
    pub seq: i64,
    pub leaf_index: u64,
    /// Hex leaf hash of the record's entry.
    pub leaf_hash: String,
    /// Base64 hashes, RFC 9162 order.
    pub proof: Vec<String>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: CheckpointView,
}

/// Hashes of `spans` in base64, read from the store's nodes in one pass.
async fn span_hashes(st: &AppState, trail: &str, spans: &[tlog::Span]) -> moat_core::Result<Vec<String>> {
    let hashes = moat_store::audit_log::span_hashes(&*st.stores.audit, trail, spans).await?;
    Ok(hashes.iter().map(|h| base64::engine::general_purpose::STANDARD.encode(h)).collect())
}

/// `GET /v1/audit/proof/inclusion?seq=N`: that record is in the latest signed checkpoint.
pub async fn inclusion(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditRead>,
    QueryParams(q): QueryParams<InclusionQuery>,
) -> ApiResult<Json<InclusionProofView>> {
    let trail = trail_name(auth.tenant);
    let cp = latest_checkpoint(&st, &trail).await?;
    if q.seq < 1 || q.seq as u64 > cp.size {
        return Err(MoatError::not_found(
            "not_in_checkpoint",
            format!("seq: record {} is not in the latest checkpoint (size {}); records are checkpointed within a second", q.seq, cp.size),
        )
        .into());
    }
    let index = q.seq as u64 - 1;
    let spans = tlog::inclusion_ranges(index, cp.size).map_err(|e| MoatError::bad_request("invalid_query", e.to_string()))?;
    let proof = span_hashes(&st, &trail, &spans).await?;
    let leaf = st.stores.audit.nodes(&trail, &[tlog::NodeId { level: 0, index }]).await?;
    let leaf_hash = leaf.values().next().map(hex::encode).ok_or_else(|| MoatError::internal("audit_leaf_missing"))?;
    Ok(Json(InclusionProofView { seq: q.seq, leaf_index: index, leaf_hash, proof, checkpoint: checkpoint_view(&st, &cp)? }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// Size of the older tree (a checkpoint you hold).
    pub from: u64,
    /// Size of the newer tree; the latest checkpoint's when absent.
    pub to: Option<u64>,
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ConsistencyProofView {
    pub from: u64,
    pub to: u64,
    pub proof: Vec<String>,
    /// The signed checkpoint of size `to`.
    pub checkpoint: CheckpointView,
}

/// `GET /v1/audit/proof/consistency?from=N[&to=M]`: the log of size N is a prefix of size M.
pub async fn consistency(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditRead>,
    QueryParams(q): QueryParams<ConsistencyQuery>,
) -> ApiResult<Json<ConsistencyProofView>> {
    let trail = trail_name(auth.tenant);
    let cp = match q.to {
        None => latest_checkpoint(&st, &trail).await?,
        Some(to) => st
            .stores
            .audit
            .checkpoints(&trail, to.saturating_sub(1), 1)
            .await?
            .into_iter()
            .find(|c| c.size == to)
            .ok_or_else(|| MoatError::not_found("no_checkpoint", format!("to: no signed checkpoint of size {to}")))?,
    };
    if q.from == 0 || q.from > cp.size {
        return Err(MoatError::bad_request("invalid_query", format!("from: must be between 1 and {}", cp.size)).into());
    }
    let spans = tlog::consistency_ranges(q.from, cp.size).map_err(|e| MoatError::bad_request("invalid_query", e.to_string()))?;
    let proof = span_hashes(&st, &trail, &spans).await?;
    Ok(Json(ConsistencyProofView { from: q.from, to: cp.size, proof, checkpoint: checkpoint_view(&st, &cp)? }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Start of the period (RFC 3339 or Unix milliseconds; default: 30 days before `to`).
    pub from: Option<String>,
    /// End of the period, exclusive (default: everything recorded so far).
    pub to: Option<String>,
    /// json (default), csv or parquet.
    pub format: Option<String>,
    pub tenant: Option<String>,
}

/// Default report period.
const REPORT_DEFAULT_PERIOD_MS: i64 = 30 * 24 * 3600 * 1000;
/// Records read per page while building a report.
const REPORT_PAGE: u32 = 10_000;

/// `GET /v1/audit/reports/{access|admin|failed|exports}?from&to&format=json|csv|parquet`: a
/// report over the caller's trail for a period, covering records up to the trail's size when it
/// was asked for (`through_seq`). Recorded (`audit.report`) before it is released.
pub async fn report(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditRead>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    QueryParams(q): QueryParams<ReportQuery>,
) -> ApiResult<axum::response::Response> {
    use crate::report::{ReportBuilder, ReportFormat, ReportKind, ReportMeta};
    let kind = ReportKind::parse(&kind)
        .ok_or_else(|| MoatError::not_found("unknown_report", format!("no report {kind:?}; one of access, admin, failed, exports")))?;
    let format = q.format.as_deref().unwrap_or("json");
    let format = ReportFormat::parse(format)
        .ok_or_else(|| MoatError::bad_request("invalid_query", format!("format: {format:?} is not one of json, csv, parquet")))?;
    let now = crate::state::now_ms(&*st.clock);
    // Without `to`, everything up to the trail's size now (`through_seq`), whatever its stamp.
    let to_given = q.to.as_deref().map(|v| parse_time("to", v)).transpose()?;
    let to_ms = to_given.unwrap_or(now);
    let from_ms = q.from.as_deref().map(|v| parse_time("from", v)).transpose()?.unwrap_or(to_ms - REPORT_DEFAULT_PERIOD_MS);
    if from_ms >= to_ms {
        return Err(MoatError::bad_request("invalid_query", "from: must be before to").into());
    }
    let trail = trail_name(auth.tenant);
    let through_seq = st.stores.audit.trail_head(&trail).await?.size as i64;
    let mut builder = ReportBuilder::new(kind, st.config.audit.report_max_rows);
    let filter = AuditFilter {
        category: kind.category().map(str::to_owned),
        from_ms: Some(from_ms),
        to_ms: to_given,
        limit: REPORT_PAGE,
        ..AuditFilter::default()
    };
    let mut reader = TrailReader::new(auth.tenant, filter, Some(through_seq));
    while let Some(page) = reader.next(&*st.stores.audit).await? {
        for r in &page {
            builder.add(r)?;
        }
    }
    let meta = ReportMeta { kind, trail, from_ms, to_ms, generated_at_ms: now, through_seq, records_read: builder.records() };
    let rows = builder.finish();
    let body = match format {
        ReportFormat::Json => {
            serde_json::to_vec(&crate::report::to_json(&meta, &rows)).map_err(|_| MoatError::internal("report_encoding"))?
        }
        ReportFormat::Csv => crate::report::to_csv(&meta, &rows)?,
        ReportFormat::Parquet => crate::report::to_parquet(&meta, &rows)?,
    };
    // Durable before the report leaves.
    let e =
        trail_read(auth.tenant, &auth.principal, "audit.report", &format!("audit:report:{}", kind.as_str())).details(serde_json::json!({
            "report": kind.as_str(), "format": format.as_str(), "from": crate::report::rfc3339_ms(from_ms),
            "to": crate::report::rfc3339_ms(to_ms), "through_seq": through_seq, "rows": rows.len(), "bytes": body.len()
        }));
    st.record(&auth.client, e).await?;
    let name = format!("audit-{}-{through_seq}.{}", kind.as_str(), format.as_str());
    let mut resp = attachment(axum::body::Body::from(body), format.content_type(), &name);
    resp.headers_mut().insert("x-moat-report-through-seq", axum::http::HeaderValue::from(through_seq));
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Records after this sequence number (default 0: from the first).
    pub after: Option<i64>,
    /// Only this category.
    pub category: Option<String>,
    /// Stay open: records follow as they are committed, a heartbeat line after quiet spells.
    pub follow: Option<bool>,
    pub tenant: Option<String>,
}

/// Records per store read of a stream.
const STREAM_PAGE: u32 = 1_000;
/// A live stream also looks at the store this often: records committed by other replicas
/// (whose commits this process's bus does not see).
const STREAM_POLL: std::time::Duration = std::time::Duration::from_secs(1);
/// A live stream says it is alive after this much quiet (and so learns that a reader left).
const STREAM_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// Where a stream stands.
struct Tail {
    st: Arc<AppState>,
    trail: String,
    /// Bounded at the trail's size when asked, unless following.
    reader: TrailReader,
    bus: tokio::sync::broadcast::Receiver<Arc<[moat_store::audit_log::TrailGrew]>>,
    quiet_since: tokio::time::Instant,
    done: bool,
    /// Held while the stream is open.
    _slot: Option<crate::state::StreamSlot>,
}

impl Tail {
    /// The next lines to send: records, a heartbeat, or nothing more.
    async fn next_chunk(&mut self) -> Option<Result<String, std::io::Error>> {
        loop {
            if self.done {
                return None;
            }
            let page = match self.reader.next(&*self.st.stores.audit).await {
                Ok(Some(p)) => p,
                Ok(None) => return None,
                Err(e) => {
                    // The status is sent; the reader resumes from its last seq.
                    tracing::error!(code = e.code, trail = %self.trail, "audit stream broke off");
                    self.done = true;
                    return Some(Err(std::io::Error::other(e.code)));
                }
            };
            if !page.is_empty() {
                self.quiet_since = tokio::time::Instant::now();
                return Some(Ok(page.iter().map(line_of).collect()));
            }
            if self.reader.until.is_some() {
                // A bounded read that is complete: the next call ends the stream.
                continue;
            }
            tokio::select! {
                () = self.st.closing.cancelled() => {
                    self.done = true;
                    return None;
                }
                () = grew(&mut self.bus, &self.trail) => {}
                () = tokio::time::sleep(STREAM_POLL) => {}
            }
            if self.quiet_since.elapsed() >= STREAM_HEARTBEAT {
                self.quiet_since = tokio::time::Instant::now();
                return Some(Ok(line_of(&serde_json::json!({"heartbeat": {"after": self.reader.after()}}))));
            }
        }
    }
}

/// Resolves when `trail` has grown (or notices were missed: the reader looks at the store).
async fn grew(bus: &mut tokio::sync::broadcast::Receiver<Arc<[moat_store::audit_log::TrailGrew]>>, trail: &str) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match bus.recv().await {
            Ok(g) if g.iter().any(|g| g.trail == trail) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// `GET /v1/audit/stream?after=N[&category=C][&follow=true]`: the trail's records after N as
/// NDJSON, one record per line in sequence order (the same objects as `/v1/audit/events`).
/// Without `follow` it ends at the trail's size when asked (its own `audit.stream` record
/// included); with it, it stays open and sends records as they commit (woken by the in-process
/// bus, and looking at the store every second for other replicas' commits), with a
/// `{"heartbeat": {"after": N}}` line after 15 s of quiet. Delivery is at least once: a reader
/// resumes with `after` = the last seq it processed and may dedupe by `event_id`.
pub async fn stream(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::AuditRead>,
    QueryParams(q): QueryParams<StreamQuery>,
) -> ApiResult<axum::response::Response> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(MoatError::bad_request("invalid_query", "after: must be a sequence number, 0 or more").into());
    }
    let category = q.category.as_deref().map(parse_category).transpose()?;
    let follow = q.follow.unwrap_or(false);
    let tenant = auth.tenant.ok_or_else(|| MoatError::bad_request("tenant_required", "name the tenant whose trail to stream"))?;
    let max = st.config.audit.max_streams_per_tenant;
    let slot = if follow {
        Some(st.streams.take(tenant, max).ok_or_else(|| {
            MoatError::new(
                moat_core::error::ErrorKind::TooManyRequests { retry_after_s: None },
                "too_many_streams",
                format!("this tenant already has {max} live audit streams open (audit.max_streams_per_tenant)"),
            )
        })?)
    } else {
        None
    };
    let e = trail_read(auth.tenant, &auth.principal, "audit.stream", "audit:log")
        .details(serde_json::json!({"after": after, "category": q.category, "follow": follow}));
    st.record(&auth.client, e).await?;
    // Subscribed before the first read: a commit between that read and the wait still wakes it.
    let bus = st.audit.subscribe();
    let trail = trail_name(auth.tenant);
    let until = if follow { None } else { Some(st.stores.audit.trail_head(&trail).await?.size as i64) };
    let filter = AuditFilter {
        category: category.map(|c| c.as_str().to_owned()),
        limit: STREAM_PAGE,
        after_seq: Some(after),
        ..AuditFilter::default()
    };
    let tail = Tail {
        trail,
        reader: TrailReader::new(auth.tenant, filter, until),
        bus,
        quiet_since: tokio::time::Instant::now(),
        done: false,
        _slot: slot,
        st,
    };
    let body = futures::stream::unfold(tail, |mut t| async move { t.next_chunk().await.map(|chunk| (chunk, t)) });
    let mut resp = axum::response::Response::new(axum::body::Body::from_stream(body));
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(super::ndjson::NDJSON));
    Ok(resp)
}

/// Records per page of an export.
const EXPORT_PAGE: u32 = 10_000;

/// Where an export stream stands.
enum ExportAt {
    Checkpoints { after: u64 },
    Records { after: i64 },
    Done,
}

/// `GET /v1/audit/export`: the trail as an export bundle (`moat-audit-bundle/v1` NDJSON: header,
/// signed checkpoints, records), streamed page by page, for offline verification.
pub async fn export(State(st): State<Arc<AppState>>, auth: Authorized<act::AuditRead>) -> ApiResult<axum::response::Response> {
    use moat_core::audit_bundle::{BUNDLE_FORMAT, BundleCheckpoint, BundleHeader, BundlePruned, BundleRecord};
    let trail = trail_name(auth.tenant);
    let verifier = st.checkpoint_key.verifier(&trail)?;
    // Recorded before the first byte leaves (an export that cannot be audited is refused), and
    // before the head is read: the bundle ends with its own export record.
    let e = trail_read(auth.tenant, &auth.principal, "audit.export", "audit:log").details(serde_json::json!({"format": BUNDLE_FORMAT}));
    st.record(&auth.client, e).await?;
    let head = st.stores.audit.trail_head(&trail).await?;
    let header = BundleHeader {
        format: BUNDLE_FORMAT.to_owned(),
        trail: trail.clone(),
        origin: verifier.name().to_owned(),
        verifier_key: verifier.encode(),
        size: head.size,
        exported_at_ms: crate::state::now_ms(&*st.clock),
    };
    let first = line_of(&header);
    let size = head.size;
    let pages = futures::stream::unfold((ExportAt::Checkpoints { after: 0 }, st, trail), move |(at, st, trail)| async move {
        let audit = &st.stores.audit;
        let (chunk, next) = match at {
            ExportAt::Done => return None,
            ExportAt::Checkpoints { after } => match audit.checkpoints(&trail, after, EXPORT_PAGE).await {
                Err(e) => (Err(e), ExportAt::Done),
                Ok(page) => {
                    let page: Vec<_> = page.into_iter().filter(|c| c.size <= size).collect();
                    let next = match page.last() {
                        Some(c) if c.size < size => ExportAt::Checkpoints { after: c.size },
                        _ => ExportAt::Records { after: 0 },
                    };
                    (Ok(page.iter().map(|c| line_of(&BundleCheckpoint { checkpoint: c.note.clone() })).collect::<String>()), next)
                }
            },
            ExportAt::Records { after } => match audit.entries(&trail, after, EXPORT_PAGE).await {
                Err(e) => (Err(e), ExportAt::Done),
                Ok(page) => {
                    let page: Vec<_> = page.into_iter().filter(|e| e.seq as u64 <= size).collect();
                    let next = match page.last() {
                        Some(e) if (e.seq as u64) < size => ExportAt::Records { after: e.seq },
                        _ => ExportAt::Done,
                    };
                    let lines = page
                        .into_iter()
                        .map(|e| match e.pruned {
                            true => line_of(&BundlePruned { seq: e.seq, pruned: true, leaf_hash: e.leaf_hash }),
                            false => line_of(&BundleRecord { seq: e.seq, entry: e.entry, leaf_hash: e.leaf_hash, hmac: e.hmac }),
                        })
                        .collect::<String>();
                    (Ok(lines), next)
                }
            },
        };
        let chunk = chunk.map_err(|e| {
            // The status is sent; a broken-off bundle fails verification ("removed from the end").
            tracing::error!(code = e.code, trail = %trail, "audit export broke off");
            std::io::Error::other(e.code)
        });
        Some((chunk, (next, st, trail)))
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(pages);
    Ok(attachment(axum::body::Body::from_stream(body), super::ndjson::NDJSON, &format!("audit-{}-{size}.ndjson", header.trail)))
}

/// One NDJSON line.
fn line_of(v: &impl Serialize) -> String {
    // Serialising these plain structs cannot fail; an empty line would fail verification.
    let mut s = serde_json::to_string(v).unwrap_or_default();
    s.push('\n');
    s
}
