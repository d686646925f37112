//! `/v1/auth/*`: login, refresh (rotation with reuse detection), logout, whoami, password
//! change. Every outcome, good or bad, is audited.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::ids::{Email, SessionId, TenantId, UserId};
use moat_core::lockout::{FailureOutcome, LockDecision};
use moat_core::password::{verify_dummy, verify_password};
use moat_core::principal::{Credential, Principal, Scope};
use moat_core::role::Role;
use moat_core::token::{ACCESS_TTL_S, AccessGrant};
use moat_core::{ErrorKind, MoatError, secret};
use moat_store::{NewSession, RefreshOutcome, TenantStatus, UserMfa, UserRecord, UserStatus};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::extract::{Authenticated, ClientInfo, JsonBody};
use crate::mfa::{Accepted, MFA_POLICY, MfaPolicy};
use crate::state::AppState;

pub const REFRESH_COOKIE: &str = "moat_refresh";
/// Longer passwords are refused before hashing (argon2 work must stay bounded).
const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Tenant slug; absent for the platform Super Admin.
    pub tenant: Option<String>,
    pub email: String,
    pub password: String,
    pub mfa_code: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    /// Shown once, when this sign-in's code confirmed a new second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
    /// How many recovery codes remain, when this sign-in used one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_codes_left: Option<usize>,
}

/// The one answer to every failed password sign-in, whatever failed.
pub fn invalid_credentials() -> MoatError {
    MoatError::unauthenticated("invalid_credentials", "invalid tenant, email or password")
}

fn refresh_cookie(token: &str, max_age_s: i64) -> HeaderValue {
    let v = format!("{REFRESH_COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/v1/auth; Max-Age={max_age_s}");
    // Tokens are base64url: always a valid header value.
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn token_response(access: String, cookie: HeaderValue, factor: Option<&Accepted>) -> Response {
    let body = TokenResponse {
        access_token: access,
        token_type: "Bearer".into(),
        expires_in: ACCESS_TTL_S,
        recovery_codes: match factor {
            Some(Accepted::Confirmed { recovery_codes }) => Some(recovery_codes.clone()),
            _ => None,
        },
        recovery_codes_left: match factor {
            Some(Accepted::Recovery { left }) => Some(*left),
            _ => None,
        },
    };
    let mut resp = (StatusCode::OK, Json(body)).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    resp
}

/// Runs argon2 off the async workers.
async fn check_password(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || match stored {
        Some(h) if password.len() <= MAX_PASSWORD_BYTES => verify_password(&password, &h),
        _ => {
            verify_dummy(&password[..password.len().min(MAX_PASSWORD_BYTES)]);
            false
        }
    })
    .await
    .unwrap_or(false)
}

pub async fn login(State(st): State<Arc<AppState>>, client: ClientInfo, JsonBody(req): JsonBody<LoginRequest>) -> ApiResult<Response> {
    let second = Second::Code(req.mfa_code.as_deref());
    let ok = password_login(&st, &client, req.tenant.as_deref(), &req.email, &req.password, second, "password").await?;
    let (access, cookie) = start_session(&st, &client, ok.scope, ok.user.id, &ok.user.email, ok.user.role).await?;
    let factor = match &ok.factor {
        None => serde_json::json!({"mfa": "none"}),
        Some(Accepted::Totp) => serde_json::json!({"mfa": "totp"}),
        Some(Accepted::Recovery { left }) => serde_json::json!({"mfa": "recovery_code", "recovery_codes_left": left}),
        Some(Accepted::Confirmed { .. }) => serde_json::json!({"mfa": "totp", "confirmed": true}),
    };
    let e = AuditEvent::new(ok.trail, Category::Auth, "auth.login", ok.actor(), Outcome::Success)
        .resource(format!("user:{}", ok.user.id))
        .details(factor);
    st.record(&client, e).await?;
    if matches!(ok.factor, Some(Accepted::Confirmed { .. })) {
        let e = AuditEvent::new(ok.trail, Category::Admin, "user.mfa_enable", ok.actor(), Outcome::Success)
            .resource(format!("user:{}", ok.user.id));
        st.record(&client, e).await?;
    }
    Ok(token_response(access, cookie, ok.factor.as_ref()))
}

/// What sign-in asks beyond the password.
#[derive(Debug, Clone, Copy)]
pub enum Second<'a> {
    /// The code the caller gave, if any: required when the account has a factor enabled (or
    /// its tenant's policy requires one); a pending factor is confirmed by it.
    Code(Option<&'a str>),
    /// Enrolment by password (`POST /v1/auth/mfa/enroll`, when the tenant requires a factor
    /// the account does not have yet): no code is asked; enrolment itself refuses to replace
    /// an enabled factor.
    Enrolling,
}

/// A password sign-in that passed every check (the caller records its success).
pub struct PasswordLogin {
    pub user: UserRecord,
    pub trail: Option<TenantId>,
    pub scope: Scope,
    /// How the second factor was given, when one was.
    pub factor: Option<Accepted>,
    via: &'static str,
}

impl PasswordLogin {
    pub fn actor(&self) -> Actor {
        Actor { via: self.via.into(), ..actor_for(self.user.id, &self.user.email, self.user.role, self.scope) }
    }
}

/// Checks a password sign-in exactly as `POST /v1/auth/login` does, whatever the protocol
/// (`via`: "password" for HTTP, "pgwire" for the PostgreSQL wire protocol): the per-address
/// limiter, lockout before the password, one answer for every failure (`invalid_credentials`),
/// and every attempt, failure and lockout audited. Then the second factor (`second`): a
/// missing code is refused without counting; a wrong or replayed one counts like a wrong
/// password.
pub async fn password_login(
    st: &AppState,
    client: &ClientInfo,
    tenant_slug: Option<&str>,
    email: &str,
    password: &str,
    second: Second<'_>,
    via: &'static str,
) -> Result<PasswordLogin, MoatError> {
    let now = st.clock.now_s();
    let ip_key = format!("login-ip:{}", client.ip.as_deref().unwrap_or("unknown"));
    let scope_key = tenant_slug.map_or_else(|| "platform".to_owned(), |t| t.trim().to_ascii_lowercase());
    let email_key: String = email.trim().to_lowercase().chars().take(320).collect();
    let attempt = Attempt { ip_key: &ip_key, scope_key: &scope_key, email_key: &email_key, via };

    let blocked = match st.ip_limiter.blocked(&ip_key, now).await {
        Ok(blocked) => blocked,
        // The limiter cannot tell (Redis down): refused, fail closed, and on the record.
        Err(e) => {
            st.record(client, attempt.event(Outcome::Denied, e.code, None)).await?;
            return Err(e);
        }
    };
    if let Some(retry) = blocked {
        st.record(client, attempt.event(Outcome::Denied, "ip_rate_limited", None)).await?;
        return Err(MoatError::new(
            ErrorKind::TooManyRequests { retry_after_s: Some(retry) },
            "rate_limited",
            "too many failed logins from this address; try later",
        ));
    }
    let tenant = match tenant_slug {
        Some(_) => st.stores.meta.tenant_by_slug(&scope_key).await?,
        None => None,
    };
    let trail = tenant.as_ref().map(|t| t.id);
    // Lockout is checked before the password: a locked account answers without revealing
    // whether the password was right. Counters exist for unknown accounts too.
    let lock = st.stores.meta.lockout_state(&scope_key, &email_key).await?;
    let retry_after_s = match st.lockout.check(&lock, now) {
        LockDecision::Open => None,
        LockDecision::Locked { retry_after_s } => Some(Some(retry_after_s)),
        LockDecision::LockedUntilAdminUnlock => Some(None),
    };
    if let Some(retry_after_s) = retry_after_s {
        st.record(client, attempt.event(Outcome::Denied, "locked", trail)).await?;
        let msg = if retry_after_s.is_some() {
            "too many failed logins; try again later"
        } else {
            "too many failed logins; an administrator must unlock the account"
        };
        return Err(MoatError::new(ErrorKind::TooManyRequests { retry_after_s }, "account_locked", msg));
    }

    let parsed = Email::parse(email).ok();
    let tenant_active = tenant_slug.is_none() || tenant.as_ref().is_some_and(|t| t.status == TenantStatus::Active);
    let user = match (&parsed, tenant_active, tenant_slug.is_some() == tenant.is_some()) {
        (Some(e), true, true) => st.stores.meta.user_by_email(trail, e).await?,
        _ => None,
    };
    let password_ok = check_password(password.to_owned(), user.as_ref().map(|u| u.password_hash.clone())).await;
    let reason = match (&user, password_ok) {
        _ if tenant_slug.is_some() && tenant.is_none() => Some("unknown_tenant"),
        _ if !tenant_active => Some("tenant_suspended"),
        (None, _) => Some("unknown_user"),
        (Some(_), false) => Some("bad_password"),
        (Some(u), true) if u.status != UserStatus::Active => Some("account_disabled"),
        (Some(_), true) => None,
    };
    let Some(user) = user.filter(|_| reason.is_none()) else {
        attempt.count_failure(st, client, reason.unwrap_or("unknown"), trail, now).await?;
        return Err(invalid_credentials());
    };

    let factor = match second {
        Second::Enrolling => None,
        Second::Code(code) => match second_factor(st, &user, trail, code, via).await {
            Ok(factor) => factor,
            Err(Refused::Uncounted(reason, e)) => {
                st.record(client, attempt.event(Outcome::Failure, reason, trail)).await?;
                return Err(e);
            }
            Err(Refused::Counted(rejected)) => {
                attempt.count_failure(st, client, rejected.reason(), trail, now).await?;
                return Err(crate::mfa::invalid_code());
            }
        },
    };
    st.stores.meta.clear_lockout(&scope_key, &email_key).await?;
    let scope = trail.map_or(Scope::Platform, Scope::Tenant);
    Ok(PasswordLogin { user, trail, scope, factor, via })
}

/// One sign-in attempt's keys, for its audit records and failure counters.
struct Attempt<'a> {
    ip_key: &'a str,
    scope_key: &'a str,
    email_key: &'a str,
    via: &'static str,
}

impl Attempt<'_> {
    fn event(&self, outcome: Outcome, reason: &str, trail: Option<TenantId>) -> AuditEvent {
        AuditEvent::new(trail, Category::Auth, "auth.login", Actor::anonymous(Some(self.email_key)), outcome)
            .resource(format!("tenant:{}", self.scope_key))
            .details(serde_json::json!({"reason": reason, "via": self.via}))
    }

    /// Counts a failed attempt (address limiter, account lockout) and records it, and the
    /// lockout it caused.
    async fn count_failure(
        &self,
        st: &AppState,
        client: &ClientInfo,
        reason: &str,
        trail: Option<TenantId>,
        now: i64,
    ) -> Result<(), MoatError> {
        let counted = st.ip_limiter.record_failure(self.ip_key, now).await;
        let (outcome, _) = st.stores.meta.record_login_failure(self.scope_key, self.email_key, &st.lockout, now).await?;
        st.record(client, self.event(Outcome::Failure, reason, trail)).await?;
        if !matches!(outcome, FailureOutcome::Counted) {
            let details = match outcome {
                FailureOutcome::LockedFor { seconds } => serde_json::json!({"locked_for_s": seconds}),
                _ => serde_json::json!({"locked_until": "admin_unlock"}),
            };
            let e = AuditEvent::new(trail, Category::Auth, "auth.lockout", Actor::anonymous(Some(self.email_key)), Outcome::Success)
                .resource(format!("tenant:{}", self.scope_key))
                .details(details);
            st.record(client, e).await?;
        }
        // A failure the shared limiter could not count refuses like a limiter that cannot answer.
        counted
    }
}

/// Why the second factor did not let a sign-in through.
enum Refused {
    /// No code where one is needed, or a factor that cannot be read: recorded, not counted.
    Uncounted(&'static str, MoatError),
    /// A wrong or replayed code: counted like a wrong password.
    Counted(crate::mfa::Rejected),
}

/// The second factor of a sign-in whose password was right.
async fn second_factor(
    st: &AppState,
    user: &UserRecord,
    trail: Option<TenantId>,
    code: Option<&str>,
    via: &'static str,
) -> Result<Option<Accepted>, Refused> {
    let uncounted = |e: MoatError| Refused::Uncounted(e.code, e);
    let enabled = user.mfa.as_ref().is_some_and(UserMfa::enabled);
    let required = match trail {
        Some(t) => st.setting::<MfaPolicy>(t, MFA_POLICY).await.map_err(uncounted)?.requires(user.role),
        None => false,
    };
    if via == "pgwire" && (enabled || required) {
        return Err(uncounted(MoatError::unauthenticated(
            "mfa_required",
            "this account signs in with a second factor, which the PostgreSQL protocol cannot ask for: \
             use an API key as the password (moat key create)",
        )));
    }
    match (code.map(str::trim).filter(|c| !c.is_empty()), &user.mfa) {
        (None, _) if enabled => Err(uncounted(MoatError::unauthenticated(
            "mfa_required",
            "this account needs the code from its authenticator app (mfa_code), or a recovery code",
        ))),
        (None, _) if required => Err(uncounted(enrollment_required())),
        (None, _) => Ok(None),
        (Some(_), None) => Err(uncounted(MoatError::unauthenticated(
            "mfa_not_enrolled",
            "this account has no second factor; sign in without mfa_code, or enrol one (POST /v1/auth/mfa)",
        ))),
        (Some(code), Some(mfa)) => match crate::mfa::accept(st, user, mfa, code).await {
            Ok(Ok(accepted)) => Ok(Some(accepted)),
            Ok(Err(rejected)) => Err(Refused::Counted(rejected)),
            // A factor that cannot be read (its keys destroyed, the store down): fail closed.
            Err(e) => Err(uncounted(e)),
        },
    }
}

pub fn enrollment_required() -> MoatError {
    MoatError::unauthenticated(
        "mfa_enrollment_required",
        "your tenant requires a second factor for this account: enrol one with POST /v1/auth/mfa/enroll \
         (tenant, email, password), then sign in with its code as mfa_code (`moat login` walks you through it)",
    )
}

fn actor_for(user_id: UserId, email: &Email, role: Role, scope: Scope) -> Actor {
    Actor {
        user_id: Some(user_id),
        email: Some(email.to_string()),
        role: Some(role.as_str().into()),
        via: "password".into(),
        super_admin: scope == Scope::Platform,
    }
}

async fn start_session(
    st: &AppState,
    client: &ClientInfo,
    scope: Scope,
    user_id: UserId,
    email: &Email,
    role: Role,
) -> Result<(String, HeaderValue), MoatError> {
    let (session_id, refresh) = open_session(st, client, scope, user_id).await?;
    let (access, _) = st.keys.issue(&AccessGrant { scope, user_id, email: email.clone(), role, session_id }, st.clock.now_s())?;
    Ok((access, refresh_cookie(&refresh, st.config.auth.refresh_ttl_s)))
}

/// Stores a new session (at most `auth.session_max_s` long) and returns it with its refresh
/// token. A PostgreSQL wire connection holds a session too, and never sees its refresh token:
/// ending the session (logout everywhere, a disabled user, a suspended tenant) ends the
/// connection's access at its next statement.
pub async fn open_session(st: &AppState, client: &ClientInfo, scope: Scope, user_id: UserId) -> Result<(SessionId, String), MoatError> {
    let now = st.clock.now_s();
    let session_id = SessionId::new();
    let refresh = secret::random_token()?;
    let ns = NewSession {
        id: session_id,
        tenant_id: match scope {
            Scope::Tenant(t) => Some(t),
            Scope::Platform => None,
        },
        user_id,
        now,
        expires_at: now + st.config.auth.session_max_s,
        source_ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
    };
    st.stores.sessions.create_session(&ns, &secret::sha256_hex(refresh.as_bytes()), now + st.config.auth.refresh_ttl_s).await?;
    Ok((session_id, refresh))
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

pub async fn refresh(State(st): State<Arc<AppState>>, client: ClientInfo, headers: HeaderMap) -> ApiResult<Response> {
    let now = st.clock.now_s();
    let presented = cookie_value(&headers, REFRESH_COOKIE)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .ok_or_else(|| MoatError::unauthenticated("missing_refresh_token", "the moat_refresh cookie is missing"))?;
    let successor = secret::random_token()?;
    let outcome = st
        .stores
        .sessions
        .rotate_refresh(
            &secret::sha256_hex(presented.as_bytes()),
            &secret::sha256_hex(successor.as_bytes()),
            now + st.config.auth.refresh_ttl_s,
            now,
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated { session, tenant_id, user_id } => {
            let user = st.stores.meta.user_by_id(tenant_id, user_id).await?;
            let tenant_ok = match tenant_id {
                Some(t) => st.stores.meta.tenant_by_id(t).await?.is_some_and(|t| t.status == TenantStatus::Active),
                None => true,
            };
            let Some(user) = user.filter(|u| u.status == UserStatus::Active && tenant_ok) else {
                st.stores.sessions.revoke_session(tenant_id, session, "account_inactive", now).await?;
                return Err(MoatError::unauthenticated("invalid_refresh_token", "the refresh token is invalid or expired").into());
            };
            let scope = tenant_id.map_or(Scope::Platform, Scope::Tenant);
            let (access, _) =
                st.keys.issue(&AccessGrant { scope, user_id, email: user.email.clone(), role: user.role, session_id: session }, now)?;
            let e = AuditEvent::new(
                tenant_id,
                Category::Auth,
                "auth.refresh",
                actor_for(user_id, &user.email, user.role, scope),
                Outcome::Success,
            )
            .resource(format!("session:{session}"));
            st.record(&client, e).await?;
            Ok(token_response(access, refresh_cookie(&successor, st.config.auth.refresh_ttl_s), None))
        }
        RefreshOutcome::Reused { session, tenant_id, user_id } => {
            let mut actor = Actor::anonymous(None);
            actor.user_id = Some(user_id);
            let e = AuditEvent::new(tenant_id, Category::Auth, "auth.refresh_reuse", actor, Outcome::Denied)
                .resource(format!("session:{session}"))
                .details(serde_json::json!({"action_taken": "session_revoked"}));
            st.record(&client, e).await?;
            let mut resp = ApiError(MoatError::unauthenticated(
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked",
            ))
            .into_response();
            resp.headers_mut().insert(header::SET_COOKIE, refresh_cookie("", 0));
            Ok(resp)
        }
        RefreshOutcome::Invalid => {
            Err(MoatError::unauthenticated("invalid_refresh_token", "the refresh token is invalid or expired").into())
        }
    }
}

pub async fn logout(State(st): State<Arc<AppState>>, client: ClientInfo, Authenticated(p): Authenticated) -> ApiResult<Response> {
    let Credential::Session(sid) = p.credential() else {
        return Err(MoatError::bad_request("not_a_session", "API keys are not sessions; revoke a key with DELETE /v1/api-keys/{id}").into());
    };
    st.stores.sessions.revoke_session(p.tenant_id(), sid, "logout", st.clock.now_s()).await?;
    let e =
        AuditEvent::new(p.tenant_id(), Category::Auth, "auth.logout", Actor::of(&p), Outcome::Success).resource(format!("session:{sid}"));
    st.record(&client, e).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, refresh_cookie("", 0));
    Ok(resp)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WhoAmI {
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    /// `null` for the platform Super Admin.
    pub tenant: Option<TenantRef>,
    pub credential: String,
    pub clearance: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TenantRef {
    pub id: TenantId,
    pub slug: String,
}

pub async fn whoami(State(st): State<Arc<AppState>>, Authenticated(p): Authenticated) -> ApiResult<Json<WhoAmI>> {
    let tenant = match p.tenant_id() {
        Some(t) => st.stores.meta.tenant_by_id(t).await?.map(|t| TenantRef { id: t.id, slug: t.slug }),
        None => None,
    };
    let permissions = match p.key_scopes() {
        Some(s) => s.iter().map(ToString::to_string).collect(),
        None => p.role().grants().iter().map(ToString::to_string).collect(),
    };
    Ok(Json(WhoAmI {
        user_id: p.user_id(),
        email: p.email().to_string(),
        role: p.role(),
        tenant,
        credential: match p.credential() {
            Credential::Session(_) => "session".into(),
            Credential::ApiKey(_) => "api_key".into(),
        },
        clearance: p.clearance().to_string(),
        permissions,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the caller's own password: checks the current one, the policy and the history,
/// then ends every session of the account.
pub async fn change_password(
    State(st): State<Arc<AppState>>,
    client: ClientInfo,
    Authenticated(p): Authenticated,
    JsonBody(req): JsonBody<PasswordChange>,
) -> ApiResult<StatusCode> {
    if !matches!(p.credential(), Credential::Session(_)) {
        return Err(
            MoatError::forbidden("session_required", "passwords can only be changed from a login session, not with an API key").into()
        );
    }
    let user = st.stores.meta.user_by_id(p.tenant_id(), p.user_id()).await?.ok_or_else(invalid_credentials)?;
    if !check_password(req.current_password.clone(), Some(user.password_hash.clone())).await {
        return Err(MoatError::invalid("invalid_current_password", "current_password is wrong").into());
    }
    set_new_password(&st, &p, &req.new_password).await?;
    st.stores.sessions.revoke_user_sessions(p.tenant_id(), p.user_id(), "password_changed", st.clock.now_s()).await?;
    let e = AuditEvent::new(p.tenant_id(), Category::Admin, "user.password_change", Actor::of(&p), Outcome::Success)
        .resource(format!("user:{}", p.user_id()));
    st.record(&client, e).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_new_password(st: &AppState, p: &Principal, new_password: &str) -> Result<(), MoatError> {
    let local = p.email().as_str().split('@').next();
    let policy = st.password_policy(p.tenant_id()).await?;
    policy.check(new_password, local)?;
    // The current password always counts, whatever the history setting.
    let history = st.stores.meta.password_history(p.tenant_id(), p.user_id(), policy.history.max(1)).await?;
    let pw = new_password.to_owned();
    let reused = tokio::task::spawn_blocking(move || history.iter().any(|h| verify_password(&pw, h))).await.unwrap_or(true);
    if reused {
        return Err(MoatError::invalid(
            "password_reused",
            format!("new_password was used recently; the last {} passwords cannot be reused", policy.history.max(1)),
        ));
    }
    let hash = hash_blocking(new_password.to_owned()).await?;
    st.stores.meta.set_password(p.tenant_id(), p.user_id(), &hash, st.clock.now_s()).await?;
    Ok(())
}

/// argon2id off the async workers.
pub async fn hash_blocking(password: String) -> Result<String, MoatError> {
    tokio::task::spawn_blocking(move || moat_core::password::hash_password(&password))
        .await
        .map_err(|_| MoatError::internal("hash_task_failed"))?
}
