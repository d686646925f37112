//! The HTTP API: routes, and the layers every request passes (request id, panic guard,
//! timeout, body limit, `Cache-Control: no-store`, tracing).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod data;
pub mod error;
pub mod extract;
pub mod keys;
mod meta;
pub mod mfa;
pub mod ndjson;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use moat_core::MoatError;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use error::ApiError;

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.json_body_limit_bytes;
    let timeout_ms = state.config.limits.request_timeout_ms;
    let ingest_timeout_ms = state.config.ingest.timeout_ms;
    // HTTPS answers tell browsers to come back over HTTPS only.
    let hsts = (state.tls.is_some() && state.config.tls.hsts_max_age_s > 0)
        .then(|| HeaderValue::from_str(&format!("max-age={}", state.config.tls.hsts_max_age_s)).ok())
        .flatten();
    let v1 = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/whoami", get(auth::whoami))
        .route("/auth/password", put(auth::change_password))
        .route("/auth/mfa", get(mfa::status).post(mfa::enroll))
        .route("/auth/mfa/enroll", post(mfa::enroll_with_password))
        .route("/auth/mfa/confirm", post(mfa::confirm))
        .route("/auth/mfa/disable", post(mfa::disable))
        .route("/auth/mfa/recovery-codes", post(mfa::new_recovery_codes))
        .route("/tenants", post(admin::create_tenant).get(admin::list_tenants))
        .route("/tenants/{slug}", get(admin::get_tenant).delete(admin::delete_tenant))
        .route("/tenants/{slug}/suspend", post(admin::suspend_tenant))
        .route("/tenants/{slug}/resume", post(admin::resume_tenant))
        .route("/tenants/{slug}/validate", post(admin::validate_tenant))
        .route("/users", post(admin::create_user).get(admin::list_users))
        .route("/users/{id}", get(admin::get_user))
        .route("/users/{id}/disable", post(admin::disable_user))
        .route("/users/{id}/enable", post(admin::enable_user))
        .route("/users/{id}/unlock", post(admin::unlock_user))
        .route("/users/{id}/role", put(admin::set_user_role))
        .route("/users/{id}/mfa", axum::routing::delete(mfa::reset))
        .route("/api-keys", post(admin::create_key).get(admin::list_keys))
        .route("/api-keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/tables", get(data::list_tables))
        .route("/tables/{table}", get(data::get_table).put(data::put_table).delete(data::delete_table))
        .route("/tables/{table}/columns/{column}", put(data::classify_column))
        .route("/tables/{table}/scan", post(data::scan_table))
        .route("/views", get(views::list_views))
        .route("/views/{view}", get(views::get_view).put(views::put_view).delete(views::delete_view))
        .route("/query", post(data::query))
        .route("/policies/password", get(admin::get_password_policy).put(admin::set_password_policy))
        .route("/policies/mfa", get(mfa::get_policy).put(mfa::set_policy))
        .route("/policies/masking", get(admin::get_masking_policy).put(admin::set_masking_policy))
        .route("/policies/classification", get(admin::get_classification_policy).put(admin::set_classification_policy))
        .route("/audit/events", get(audit::events))
        .route("/audit/verify", get(audit::verify))
        .route("/audit/checkpoint", get(audit::checkpoint))
        .route("/audit/export", get(audit::export))
        .route("/audit/reports/{kind}", get(audit::report))
        .route("/audit/stream", get(audit::stream))
        .route("/audit/prune", post(audit::prune))
        .route("/policies/audit-retention", get(admin::get_retention_policy).put(admin::set_retention_policy))
        .route("/audit/proof/inclusion", get(audit::inclusion))
        .route("/audit/proof/consistency", get(audit::consistency))
        .route("/keys", get(keys::status))
        .route("/keys/rotate", post(keys::rotate))
        .route("/keys/rotate-master", post(keys::rotate_master))
        .route("/openapi.json", get(meta::openapi));
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/.well-known/jwks.json", get(meta::jwks))
        .nest("/v1", v1)
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |req: Request, next| {
            // Table uploads stream gigabytes: they run under their own, longer deadline.
            let limit = if is_table_upload(&req) { ingest_timeout_ms } else { timeout_ms };
            deadline(Duration::from_millis(limit), req, next)
        }))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::STRICT_TRANSPORT_SECURITY, hsts))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// `PUT /v1/tables/{table}` (not its columns).
fn is_table_upload(req: &Request) -> bool {
    req.method() == axum::http::Method::PUT
        && req.uri().path().strip_prefix("/v1/tables/").is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// Whole-request deadline (`limits.request_timeout_ms`; `ingest.timeout_ms` for uploads).
async fn deadline(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError(MoatError::unavailable("request_timeout", format!("the request took longer than {} ms", limit.as_millis())))
            .into_response(),
    }
}

/// A panic is a bug: answer a generic 500 (no message, no backtrace) and log it.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError(MoatError::internal("internal")).into_response()
}

#[derive(Clone, Copy)]
struct NewRequestId;

impl MakeRequestId for NewRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string()).ok().map(RequestId::new)
    }
}

/// Serves until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    crate::retention::spawn_periodic(state.clone());
    crate::rotation::spawn_periodic(state.clone());
    let tls = state.tls.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let shutdown = async move {
        shutdown.await;
        // Live streams end now; other requests finish first.
        closing.cancel();
    };
    match tls {
        // `tap_io` gives the TLS listener axum's `ConnectInfo<SocketAddr>`.
        Some(tls) => {
            use axum::serve::ListenerExt;
            let listener = crate::tls::TlsListener::new(listener, tls.http)?.tap_io(|_| {});
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_deadline_answers_503_with_a_code() {
        let app: Router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/fast", get(|| async { "ok" }))
            .layer(middleware::from_fn(|req, next| deadline(Duration::from_millis(100), req, next)));
        let resp = app.clone().oneshot(axum::http::Request::get("/slow").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(resp.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], "request_timeout");
        let resp = app.oneshot(axum::http::Request::get("/fast").body(Body::empty()).expect("request")).await.expect("response");
        assert_eq!(resp.status(), axum::http::StatusCode::OK);
    }

    #[test]
    fn only_table_uploads_get_the_ingest_deadline() {
        let req = |m: &str, p: &str| axum::http::Request::builder().method(m).uri(p).body(Body::empty()).expect("request");
        assert!(is_table_upload(&req("PUT", "/v1/tables/customers?domain=sales")));
        for (m, p) in
            [("GET", "/v1/tables/customers"), ("PUT", "/v1/tables/customers/columns/ssn"), ("PUT", "/v1/tables/"), ("PUT", "/v1/users/x")]
        {
            assert!(!is_table_upload(&req(m, p)), "{m} {p}");
        }
    }
}
