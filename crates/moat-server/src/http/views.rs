//! `/v1/views`: views are named, saved read-only queries of a tenant, queryable like tables
//! (`SELECT … FROM my_view`). A view stores SQL only, never data or labels: every use plans it
//! in the caller's governed session (so it masks exactly as the caller's own SQL would) and its
//! columns take the high-water mark of the columns they are computed from, as labelled *now*.
//! A derived artefact is therefore never less sensitive than its inputs, and a label raised on a
//! table reaches every view built on it at once.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use moat_core::MoatError;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::classification::Classification;
use moat_query::engine::OutputColumn;
use moat_query::policy::MaskingPolicy;
use moat_query::{Catalog, ViewSource};
use moat_store::{NewView, ViewRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiResult;
use super::extract::{Action, Authorized, JsonBody, act};
use crate::state::AppState;
use crate::tables::{check_identifier, view_source};

/// Longest description kept with a view.
const MAX_DESCRIPTION_CHARS: usize = 1_024;

fn view_not_found() -> MoatError {
    MoatError::not_found("view_not_found", "no such view")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewRequest {
    pub sql: String,
    #[serde(default)]
    pub description: String,
}

/// A view as the caller sees it: its columns with their derived labels and the caller's masks.
#[derive(Debug, Serialize)]
pub struct ViewAnswer {
    pub name: String,
    pub sql: String,
    pub description: String,
    pub version: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The high-water mark of the view's columns: what an export of it is labelled.
    pub classification: Option<Classification>,
    pub columns: Vec<OutputColumn>,
    /// Why the view cannot be planned now (a table it reads was dropped or changed).
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct ViewList {
    pub views: Vec<ViewAnswer>,
}

/// Plans `SELECT * FROM <name>` as the caller: the view's columns with their labels and masks.
async fn describe<A: Action>(
    st: &AppState,
    auth: &Authorized<A>,
    catalog: Catalog<'_>,
    policy: &MaskingPolicy,
    name: &str,
) -> Result<Vec<OutputColumn>, MoatError> {
    let tenant = auth.tenant.ok_or_else(view_not_found)?;
    st.engine.describe(&auth.principal, tenant, catalog, policy, &format!("SELECT * FROM {name}")).await
}

fn answer(v: ViewRecord, described: Result<Vec<OutputColumn>, MoatError>) -> ViewAnswer {
    let (columns, error) = match described {
        Ok(c) => (c, None),
        Err(e) => (Vec::new(), Some(json!({"code": e.code, "message": e.message}))),
    };
    ViewAnswer {
        classification: columns.iter().map(|c| c.classification).max(),
        name: v.name,
        sql: v.sql,
        description: v.description,
        version: v.version,
        created_by: v.created_by,
        created_at: v.created_at,
        updated_at: v.updated_at,
        columns,
        error,
    }
}

/// Every view, each described over one read of the tenant's catalog.
pub async fn list_views(State(st): State<Arc<AppState>>, auth: Authorized<act::TableRead>) -> ApiResult<Json<ViewList>> {
    let tenant = auth.tenant.ok_or_else(view_not_found)?;
    let (tables, records, policy) = st.query_catalog(tenant).await?;
    let all: Vec<ViewSource> = records.iter().map(view_source).collect();
    let catalog = Catalog { tables: &tables, views: &all };
    let mut views = Vec::with_capacity(records.len());
    for v in records {
        let described = describe(&st, &auth, catalog, &policy, &v.name).await;
        views.push(answer(v, described));
    }
    Ok(Json(ViewList { views }))
}

pub async fn get_view(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableRead>,
    Path(name): Path<String>,
) -> ApiResult<Json<ViewAnswer>> {
    let tenant = auth.tenant.ok_or_else(view_not_found)?;
    let (tables, records, policy) = st.query_catalog(tenant).await?;
    let all: Vec<ViewSource> = records.iter().map(view_source).collect();
    let v = records.into_iter().find(|v| v.name == name).ok_or_else(view_not_found)?;
    let described = describe(&st, &auth, Catalog { tables: &tables, views: &all }, &policy, &v.name).await;
    Ok(Json(answer(v, described)))
}

/// Creates or replaces a view. The SQL must be one read-only statement that plans now, as the
/// caller, over the tenant's tables and views (no cycle, within the nesting limit).
pub async fn put_view(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableWrite>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ViewRequest>,
) -> ApiResult<Response> {
    let tenant = auth.tenant.ok_or_else(view_not_found)?;
    check_identifier("view", &name)?;
    if req.description.chars().count() > MAX_DESCRIPTION_CHARS || req.description.chars().any(|c| c.is_control() && c != '\n') {
        return Err(MoatError::invalid(
            "invalid_description",
            format!("description must be at most {MAX_DESCRIPTION_CHARS} printable characters"),
        )
        .into());
    }
    let sql = req.sql.trim().trim_end_matches(';').trim().to_owned();
    if sql.is_empty() {
        return Err(MoatError::bad_request("empty_query", "a view needs its SQL").into());
    }
    let (tables, existing, policy) = st.query_catalog(tenant).await?;
    let mut candidate: Vec<ViewSource> = existing.iter().filter(|v| v.name != name).map(view_source).collect();
    candidate.push(ViewSource { name: name.clone(), sql: sql.clone() });
    // The SQL alone first (its own errors), then through the name (cycles through other views).
    let catalog = Catalog { tables: &tables, views: &candidate };
    let checked = match st.engine.describe(&auth.principal, tenant, catalog, &policy, &sql).await {
        Ok(_) => describe(&st, &auth, catalog, &policy, &name).await,
        Err(e) => Err(e),
    };
    let columns = match checked {
        Ok(c) => c,
        Err(e) => {
            let ev = AuditEvent::new(Some(tenant), Category::Admin, "view.write", Actor::of(&auth.principal), Outcome::Failure)
                .resource(format!("view:{name}"))
                .details(json!({"sql": sql, "error": e.code}));
            st.record(&auth.client, ev).await?;
            return Err(e.into());
        }
    };
    let rec = st
        .stores
        .meta
        .put_view(&NewView {
            tenant_id: tenant,
            name: name.clone(),
            sql: sql.clone(),
            description: req.description.clone(),
            created_by: auth.principal.user_id().to_string(),
            now: st.clock.now_s(),
        })
        .await?;
    let labels: serde_json::Map<String, serde_json::Value> =
        columns.iter().map(|c| (c.name.clone(), json!(c.classification.as_str()))).collect();
    let ev = AuditEvent::new(Some(tenant), Category::Admin, "view.write", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("view:{name}"))
        .details(json!({"version": rec.version, "sql": sql, "columns": labels}));
    st.record(&auth.client, ev).await?;
    let status = if rec.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(answer(rec, Ok(columns)))).into_response())
}

pub async fn delete_view(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TableDelete>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let tenant = auth.tenant.ok_or_else(view_not_found)?;
    let v = st.stores.meta.delete_view(tenant, &name).await?.ok_or_else(view_not_found)?;
    let ev = AuditEvent::new(Some(tenant), Category::Admin, "view.delete", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("view:{name}"))
        .details(json!({"version": v.version, "sql": v.sql}));
    st.record(&auth.client, ev).await?;
    Ok(StatusCode::NO_CONTENT)
}
