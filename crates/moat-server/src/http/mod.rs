//! The HTTP API: routes, and the layers every request passes (request id, panic guard,
//! timeout, body limit, `Cache-Control: no-store`, tracing).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
mod meta;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
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
    let v1 = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/whoami", get(auth::whoami))
        .route("/auth/password", put(auth::change_password))
        .route("/tenants", post(admin::create_tenant).get(admin::list_tenants))
        .route("/tenants/{slug}", get(admin::get_tenant))
        .route("/tenants/{slug}/suspend", post(admin::suspend_tenant))
        .route("/tenants/{slug}/resume", post(admin::resume_tenant))
        .route("/users", post(admin::create_user).get(admin::list_users))
        .route("/users/{id}", get(admin::get_user))
        .route("/users/{id}/disable", post(admin::disable_user))
        .route("/users/{id}/enable", post(admin::enable_user))
        .route("/users/{id}/unlock", post(admin::unlock_user))
        .route("/users/{id}/role", put(admin::set_user_role))
        .route("/api-keys", post(admin::create_key).get(admin::list_keys))
        .route("/api-keys/{id}", axum::routing::delete(admin::revoke_key))
        .route("/audit/events", get(audit::events))
        .route("/audit/verify", get(audit::verify))
        .route("/openapi.json", get(meta::openapi));
    Router::new()
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/.well-known/jwks.json", get(meta::jwks))
        .nest("/v1", v1)
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff")))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(NewRequestId))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// Whole-request deadline (`limits.request_timeout_ms`).
async fn deadline(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = Duration::from_millis(st.config.limits.request_timeout_ms);
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
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
