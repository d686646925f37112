//! Health, readiness, JWKS, the OpenAPI document, and JSON answers for unknown routes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use moat_core::{ErrorKind, MoatError};

use super::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "alive"}))
}

/// 200 when every dependency answers; 503 naming the one that does not.
/// Ready when the store answers and the audit trail is being written (a server that cannot
/// record refuses requests, so a load balancer should send them elsewhere).
pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let store = st.stores.meta.ping().await.is_ok();
    let audit = st.audit.is_healthy();
    // Forwarding never makes the server unready: events wait in the audit store.
    let events = st.events.as_ref().map_or_else(|| "in-process".to_owned(), |e| e.describe());
    let checks = serde_json::json!({
        "store": if store { "ok" } else { "unreachable" },
        "audit": if audit { "ok" } else { "unavailable" },
        "events": events,
    });
    if store && audit {
        Json(serde_json::json!({"status": "ready", "checks": checks})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "not_ready", "checks": checks}))).into_response()
    }
}

pub async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    let mut r = Json(st.keys.jwks()).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

pub async fn not_found() -> ApiError {
    ApiError(MoatError::not_found("route_not_found", "no such route"))
}

pub async fn method_not_allowed() -> Response {
    let mut r = ApiError(MoatError::new(ErrorKind::BadRequest, "method_not_allowed", "method not allowed on this route")).into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
