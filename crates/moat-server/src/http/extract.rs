//! Request extractors. `Authorized<A>` is the only way a handler gets a principal it may act
//! for: it verifies the credential, resolves the target tenant (from the credential; only the
//! Super Admin may name one with `?tenant=`), asks the [`Authorizer`], and audits denials.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::authz::Target;
use moat_core::ids::{SessionId, TenantId, UserId};
use moat_core::permission::Permission;
use moat_core::principal::{Principal, Scope};
use moat_core::role::Role;
use moat_core::{MoatError, apikey};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::state::AppState;

/// Who is on the other end, for audit records and rate limits.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Why the caller is doing this (`X-Moat-Justification`), recorded in `details.justification`
    /// of every audit record of the request; the admin-actions report shows it.
    pub justification: Option<String>,
}

/// The header a caller states a business justification in.
pub const JUSTIFICATION_HEADER: &str = "x-moat-justification";
/// Longest justification accepted, in characters.
pub const MAX_JUSTIFICATION_CHARS: usize = 500;

/// A justification as given: UTF-8 text of printable characters, at most
/// [`MAX_JUSTIFICATION_CHARS`]; blank is absent.
pub fn parse_justification(raw: &[u8]) -> Result<Option<String>, MoatError> {
    let bad = || {
        MoatError::bad_request(
            "invalid_justification",
            format!("{JUSTIFICATION_HEADER}: must be UTF-8 text of at most {MAX_JUSTIFICATION_CHARS} printable characters"),
        )
    };
    let text = std::str::from_utf8(raw).map_err(|_| bad())?.trim();
    if text.chars().count() > MAX_JUSTIFICATION_CHARS || text.chars().any(char::is_control) {
        return Err(bad());
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

impl ClientInfo {
    pub fn from_parts(parts: &Parts) -> Result<Self, MoatError> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let header_str = |name| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(|s| s.chars().take(512).collect::<String>());
        let justification = match parts.headers.get(JUSTIFICATION_HEADER) {
            Some(v) => parse_justification(v.as_bytes())?,
            None => None,
        };
        Ok(Self {
            ip,
            user_agent: header_str(header::USER_AGENT),
            request_id: header_str(header::HeaderName::from_static("x-request-id")),
            justification,
        })
    }

    /// Stamps an event with where it came from and why.
    pub fn stamp(&self, mut e: AuditEvent) -> AuditEvent {
        e.source_ip = self.ip.clone();
        e.user_agent = self.user_agent.clone();
        e.request_id = self.request_id.clone();
        if let Some(j) = &self.justification {
            let why = serde_json::Value::String(j.clone());
            match &mut e.details {
                serde_json::Value::Object(m) => {
                    m.insert("justification".into(), why);
                }
                serde_json::Value::Null => e.details = serde_json::json!({ "justification": why }),
                other => e.details = serde_json::json!({ "value": other.take(), "justification": why }),
            }
        }
        e
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts)?)
    }
}

/// JSON body whose errors follow the contract: 400 naming the field, 413 over the limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<serde_json::Value>::from_request(req, state).await {
            // Every body of the API is an object: serde would read a struct from an array too
            // (`[]` as a policy of defaults), so anything else is refused here.
            Ok(axum::Json(v)) if !v.is_object() => {
                Err(ApiError(MoatError::bad_request("invalid_body", "the request body must be a JSON object")))
            }
            Ok(axum::Json(v)) => {
                serde_json::from_value(v).map(Self).map_err(|e| ApiError(MoatError::bad_request("invalid_body", e.to_string())))
            }
            Err(rej) => {
                let status = rej.status();
                let text = rej.body_text();
                // axum's text starts with a generic sentence; keep the part naming the field.
                let detail = text.split_once(": ").map_or(text.as_str(), |(_, d)| d).to_owned();
                Err(ApiError(match status {
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        MoatError::new(moat_core::ErrorKind::PayloadTooLarge, "body_too_large", "request body is over its limit")
                    }
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                        MoatError::bad_request("unsupported_media_type", "expected Content-Type: application/json")
                    }
                    StatusCode::UNPROCESSABLE_ENTITY => MoatError::bad_request("invalid_body", detail),
                    _ => MoatError::bad_request("malformed_json", detail),
                }))
            }
        }
    }
}

/// Query string whose errors follow the contract (400 naming the parameter).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rej) => {
                let text = rej.body_text();
                let detail = text.split_once(": ").map_or(text.as_str(), |(_, d)| d).to_owned();
                Err(ApiError(MoatError::bad_request("invalid_query", detail)))
            }
        }
    }
}

/// Reads the bearer credential and turns it into a principal. 401 for anything missing, bad,
/// expired or revoked; 403 for a valid credential of a suspended tenant.
pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, MoatError> {
    let raw = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| MoatError::unauthenticated("missing_credentials", "an Authorization: Bearer header is required"))?;
    let raw = raw.to_str().map_err(|_| MoatError::unauthenticated("invalid_token", "the access token is invalid"))?;
    let cred = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| MoatError::unauthenticated("missing_credentials", "an Authorization: Bearer header is required"))?;
    if cred.starts_with(apikey::PREFIX) {
        return api_key_principal(state, cred).await;
    }
    let verified = state.keys.verify(cred, state.clock.now_s())?;
    let role = live_session_role(state, verified.scope().tenant_id(), verified.session_id(), verified.user_id()).await?;
    verified.into_principal(role)
}

/// The principal of an API key (a bearer header's, or a PostgreSQL wire password's). Every
/// refusal reads alike (`invalid_api_key`).
pub async fn api_key_principal(state: &AppState, cred: &str) -> Result<Principal, MoatError> {
    if !apikey::looks_valid(cred) {
        return Err(apikey::invalid_api_key());
    }
    let now = state.clock.now_s();
    let stored = state.stores.meta.api_key_by_hash(&apikey::hash(cred)).await?.ok_or_else(apikey::invalid_api_key)?;
    let (id, tenant, touch) = (stored.id, stored.tenant_id, stored.needs_touch(now));
    let p = apikey::principal_for_key(stored, now)?;
    if touch {
        state.stores.meta.touch_api_key(tenant, id, now).await?;
    }
    Ok(p)
}

/// The user's current role, if the session is live, the user active and the tenant not
/// suspended (checked at every request and every PostgreSQL statement: a revoked session, a
/// disabled user or a suspended tenant ends access at once).
pub async fn live_session_role(state: &AppState, tenant: Option<TenantId>, session: SessionId, user: UserId) -> Result<Role, MoatError> {
    let st = state
        .stores
        .sessions
        .session_auth_state(tenant, session, user)
        .await?
        .ok_or_else(|| MoatError::unauthenticated("invalid_token", "the access token is invalid"))?;
    if !st.session_live {
        return Err(MoatError::unauthenticated("session_revoked", "the session has ended; log in again"));
    }
    if !st.user_active {
        return Err(MoatError::unauthenticated("account_disabled", "the account is disabled"));
    }
    if !st.tenant_active {
        return Err(MoatError::forbidden("tenant_suspended", "the tenant is suspended"));
    }
    Ok(st.role)
}

/// Any authenticated caller (whoami, logout).
pub struct Authenticated(pub Principal);

impl FromRequestParts<Arc<AppState>> for Authenticated {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        Ok(Self(authenticate(state, parts).await?))
    }
}

/// Whether an action is aimed at the platform or at one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Platform,
    Tenant,
    /// The caller's own scope (its API keys): its tenant, or the platform for the Super Admin.
    Own,
}

/// A protected action: which permission it needs and what it is aimed at.
pub trait Action: Send + Sync + 'static {
    const PERMISSION: Permission;
    const TARGET: TargetKind;
}

macro_rules! actions {
    ($($name:ident => $res:literal : $act:literal @ $target:ident;)*) => {
        $(
            pub struct $name;
            impl Action for $name {
                const PERMISSION: Permission = Permission::new($res, $act);
                const TARGET: TargetKind = TargetKind::$target;
            }
        )*
    };
}

/// Every protected action of the HTTP API. Handlers name one of these in their signature.
pub mod act {
    use super::*;
    actions! {
        TenantCreate => "tenant":"create" @ Platform;
        TenantRead => "tenant":"read" @ Platform;
        TenantUpdate => "tenant":"update" @ Platform;
        UserCreate => "user":"create" @ Tenant;
        UserRead => "user":"read" @ Tenant;
        UserUpdate => "user":"update" @ Tenant;
        KeyCreate => "key":"create" @ Own;
        KeyRead => "key":"read" @ Own;
        KeyRevoke => "key":"revoke" @ Own;
        AuditRead => "audit":"read" @ Tenant;
        AuditVerify => "audit":"verify" @ Tenant;
        AuditPrune => "audit":"prune" @ Platform;
        TableRead => "table":"read" @ Tenant;
        TableWrite => "table":"write" @ Tenant;
        TableDelete => "table":"delete" @ Tenant;
        TableClassify => "table":"classify" @ Tenant;
        QueryExecute => "query":"execute" @ Tenant;
        PolicyRead => "policy":"read" @ Tenant;
        PolicyUpdate => "policy":"update" @ Tenant;
        EncryptionRead => "encryption":"read" @ Tenant;
        EncryptionRotate => "encryption":"rotate" @ Tenant;
        EncryptionRotateMaster => "encryption":"rotate_master" @ Platform;
    }
}

/// A principal allowed to perform `A`, with the tenant it acts in (`None` for platform
/// actions). Denials are audited in the trail of the tenant they were aimed at.
pub struct Authorized<A: Action> {
    pub principal: Principal,
    pub tenant: Option<TenantId>,
    pub client: ClientInfo,
    _action: PhantomData<A>,
}

#[derive(serde::Deserialize)]
struct TenantParam {
    tenant: Option<String>,
}

impl<A: Action> FromRequestParts<Arc<AppState>> for Authorized<A> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let client = ClientInfo::from_parts(parts)?;
        let principal = authenticate(state, parts).await?;
        let param = parts.uri.query().and_then(serde_urlencoded_tenant).map(|t| t.to_ascii_lowercase());
        let tenant = resolve_tenant(state, &principal, A::TARGET, param.as_deref()).await?;
        let target = tenant.map_or(Target::Platform, Target::Tenant);
        if let Err(denial) = state.authorizer.authorize(&principal, &A::PERMISSION, target) {
            let trail = tenant.or(principal.tenant_id());
            let event = AuditEvent::new(trail, Category::Authz, "authz.denied", Actor::of(&principal), Outcome::Denied)
                .resource(format!("{} {}", parts.method, original_path(parts)))
                .details(serde_json::json!({"permission": A::PERMISSION.to_string(), "code": denial.code}));
            state.record(&client, event).await?;
            return Err(ApiError(denial));
        }
        Ok(Self { principal, tenant, client, _action: PhantomData })
    }
}

/// The path as the client sent it (nested routers strip their prefix from `uri`).
fn original_path(parts: &Parts) -> String {
    parts.extensions.get::<axum::extract::OriginalUri>().map_or_else(|| parts.uri.path().to_owned(), |u| u.0.path().to_owned())
}

fn serde_urlencoded_tenant(q: &str) -> Option<String> {
    axum::extract::Query::<TenantParam>::try_from_uri(&format!("/?{q}").parse().ok()?).ok()?.0.tenant
}

/// The tenant an action is aimed at. Tenant principals: their own, always (a `?tenant=` naming
/// another tenant reads as not found). The Super Admin: the tenant named by `?tenant=`.
async fn resolve_tenant(state: &AppState, p: &Principal, kind: TargetKind, param: Option<&str>) -> Result<Option<TenantId>, MoatError> {
    match kind {
        TargetKind::Platform => return Ok(None),
        TargetKind::Own => return Ok(p.tenant_id()),
        TargetKind::Tenant => {}
    }
    match p.scope() {
        Scope::Tenant(own) => {
            if let Some(slug) = param {
                let named = state.stores.meta.tenant_by_slug(slug).await?;
                if named.map(|t| t.id) != Some(own) {
                    return Err(MoatError::not_found("tenant_not_found", "no such tenant"));
                }
            }
            Ok(Some(own))
        }
        Scope::Platform => {
            let slug = param.ok_or_else(|| {
                MoatError::bad_request("tenant_required", "a Super Admin must name the tenant to act in with ?tenant=<slug>")
            })?;
            let t =
                state.stores.meta.tenant_by_slug(slug).await?.ok_or_else(|| MoatError::not_found("tenant_not_found", "no such tenant"))?;
            Ok(Some(t.id))
        }
    }
}
