//! `/v1/audit/*`: search and verify the caller's tenant trail (Admin, Auditor). Reading the
//! trail is itself recorded.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use moat_core::MoatError;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
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
    pub action: Option<String>,
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
    let filter = AuditFilter {
        actor: q.actor.clone(),
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
    let e = AuditEvent::new(auth.tenant, Category::DataAccess, "audit.read", Actor::of(&auth.principal), Outcome::Success)
        .resource("audit:events")
        .details(serde_json::json!({"actor": q.actor, "action": q.action, "resource": q.resource, "q": q.q, "returned": events.len()}));
    st.record(&auth.client, e).await?;
    Ok(Json(EventPage { events, next_after }))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub checked: u64,
    pub head: Option<String>,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

pub async fn verify(State(st): State<Arc<AppState>>, auth: Authorized<act::AuditVerify>) -> ApiResult<Json<VerifyReport>> {
    let r = st.stores.audit.verify_chain(auth.tenant).await?;
    let e = AuditEvent::new(
        auth.tenant,
        Category::DataAccess,
        "audit.verify",
        Actor::of(&auth.principal),
        if r.ok { Outcome::Success } else { Outcome::Failure },
    )
    .resource("audit:chain")
    .details(serde_json::json!({"checked": r.checked, "ok": r.ok}));
    st.record(&auth.client, e).await?;
    let (first_bad_seq, problem) = r.first_bad.map_or((None, None), |(s, p)| (Some(s), Some(p)));
    Ok(Json(VerifyReport { ok: r.ok, checked: r.checked, head: r.head, first_bad_seq, problem }))
}
