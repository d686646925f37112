//! `/v1/auth/mfa*`: an account's own second factor (status, enrolment, confirmation, turning it
//! off), enrolment by password when the tenant requires a factor the account lacks, an
//! Admin's reset of another account's factor, and the tenant's MFA policy. Every change is
//! audited; no secret is ever in a record.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::lockout::LockDecision;
use moat_core::principal::{Credential, Principal};
use moat_core::{ErrorKind, MoatError};
use moat_store::{MfaChange, UserRecord};
use serde::{Deserialize, Serialize};

use super::auth::{Second, invalid_credentials, password_login};
use super::error::ApiResult;
use super::extract::{Authenticated, Authorized, ClientInfo, JsonBody, act};
use crate::mfa::{Accepted, Enrolment, MFA_POLICY, MfaPolicy};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize)]
pub struct MfaStatus {
    /// `off`, `pending` (enrolled, not confirmed yet) or `on`.
    pub status: String,
    pub enabled_at: Option<i64>,
    /// Unused recovery codes (when on).
    pub recovery_codes_left: Option<usize>,
    /// Whether the tenant's policy requires a factor of this account.
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    pub code: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Confirmed {
    pub status: String,
    /// Shown once: each signs in once in place of a code (a lost device).
    pub recovery_codes: Vec<String>,
}

fn own_event(p: &Principal, action: &str) -> AuditEvent {
    AuditEvent::new(p.tenant_id(), Category::Admin, action, Actor::of(p), Outcome::Success).resource(format!("user:{}", p.user_id()))
}

/// The caller's own account, for changes a login session may make (not an API key: a key
/// must not be able to turn off or replace the factor that guards the account).
async fn own_account(st: &AppState, p: &Principal) -> Result<UserRecord, MoatError> {
    if !matches!(p.credential(), Credential::Session(_)) {
        return Err(MoatError::forbidden(
            "session_required",
            "a second factor can only be changed from a login session, not with an API key",
        ));
    }
    st.stores.meta.user_by_id(p.tenant_id(), p.user_id()).await?.ok_or_else(invalid_credentials)
}

async fn required(st: &AppState, u: &UserRecord) -> Result<bool, MoatError> {
    Ok(match u.tenant_id {
        Some(t) => st.setting::<MfaPolicy>(t, MFA_POLICY).await?.requires(u.role),
        None => false,
    })
}

async fn slug_of(st: &AppState, u: &UserRecord) -> Result<Option<String>, MoatError> {
    Ok(match u.tenant_id {
        Some(t) => Some(st.stores.meta.tenant_by_id(t).await?.ok_or_else(invalid_credentials)?.slug),
        None => None,
    })
}

pub async fn status(State(st): State<Arc<AppState>>, Authenticated(p): Authenticated) -> ApiResult<Json<MfaStatus>> {
    let u = st.stores.meta.user_by_id(p.tenant_id(), p.user_id()).await?.ok_or_else(invalid_credentials)?;
    let recovery_codes_left = match &u.mfa {
        Some(m) if m.enabled() => Some(crate::mfa::open(&st, &u, &m.sealed).await?.recovery_codes_left()),
        _ => None,
    };
    Ok(Json(MfaStatus {
        status: match &u.mfa {
            None => "off",
            Some(m) if m.enabled() => "on",
            Some(_) => "pending",
        }
        .into(),
        enabled_at: u.mfa.as_ref().and_then(|m| m.enabled_at),
        recovery_codes_left,
        required: required(&st, &u).await?,
    }))
}

/// Enrols a new factor for the caller (pending until confirmed; a pending one is replaced).
pub async fn enroll(State(st): State<Arc<AppState>>, client: ClientInfo, Authenticated(p): Authenticated) -> ApiResult<Json<Enrolment>> {
    let u = own_account(&st, &p).await?;
    let out = crate::mfa::enroll(&st, &u, slug_of(&st, &u).await?.as_deref()).await?;
    st.record(&client, own_event(&p, "user.mfa_enroll")).await?;
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordEnroll {
    pub tenant: Option<String>,
    pub email: String,
    pub password: String,
}

/// Enrolment by password, for an account whose tenant requires a factor it does not have yet
/// (it cannot sign in to enrol): the password is checked exactly as at sign-in (limiter,
/// lockout, audit); an enabled factor is never replaced this way.
pub async fn enroll_with_password(
    State(st): State<Arc<AppState>>,
    client: ClientInfo,
    JsonBody(req): JsonBody<PasswordEnroll>,
) -> ApiResult<Json<Enrolment>> {
    let ok = password_login(&st, &client, req.tenant.as_deref(), &req.email, &req.password, Second::Enrolling, "password").await?;
    let out = crate::mfa::enroll(&st, &ok.user, req.tenant.as_deref().map(str::trim)).await?;
    let e = AuditEvent::new(ok.trail, Category::Admin, "user.mfa_enroll", ok.actor(), Outcome::Success)
        .resource(format!("user:{}", ok.user.id))
        .details(serde_json::json!({"via": "password"}));
    st.record(&client, e).await?;
    Ok(Json(out))
}

/// Confirms the caller's pending factor with a code from the app; answers the recovery codes.
pub async fn confirm(
    State(st): State<Arc<AppState>>,
    client: ClientInfo,
    Authenticated(p): Authenticated,
    JsonBody(req): JsonBody<CodeBody>,
) -> ApiResult<Json<Confirmed>> {
    let u = own_account(&st, &p).await?;
    let mfa = match &u.mfa {
        None => return Err(not_enrolled().into()),
        Some(m) if m.enabled() => return Err(crate::mfa::already_enabled().into()),
        Some(m) => m,
    };
    match crate::mfa::accept(&st, &u, mfa, &req.code).await? {
        Ok(Accepted::Confirmed { recovery_codes }) => {
            st.record(&client, own_event(&p, "user.mfa_enable")).await?;
            Ok(Json(Confirmed { status: "on".into(), recovery_codes }))
        }
        _ => Err(MoatError::invalid("invalid_mfa_code", "the code is wrong or expired; enter the one the app shows now").into()),
    }
}

fn not_enrolled() -> MoatError {
    MoatError::not_found("mfa_not_enrolled", "this account has no second factor (enrol one with POST /v1/auth/mfa)")
}

/// Turns the caller's factor off. An enabled factor needs a code (TOTP or recovery) to go:
/// wrong codes count towards the account's lockout, so a stolen session cannot guess its way
/// to removing the factor.
pub async fn disable(
    State(st): State<Arc<AppState>>,
    client: ClientInfo,
    Authenticated(p): Authenticated,
    JsonBody(req): JsonBody<CodeBody>,
) -> ApiResult<Json<MfaStatus>> {
    let u = own_account(&st, &p).await?;
    let Some(mfa) = &u.mfa else { return Err(not_enrolled().into()) };
    if mfa.enabled() {
        gate(&st, &client, &p, &u, &req.code, "user.mfa_disable").await?;
    }
    st.stores.meta.set_mfa(u.tenant_id, u.id, MfaChange::Remove, st.clock.now_s()).await?;
    st.record(&client, own_event(&p, "user.mfa_disable")).await?;
    Ok(Json(MfaStatus { status: "off".into(), enabled_at: None, recovery_codes_left: None, required: required(&st, &u).await? }))
}

/// Replaces the caller's recovery codes with ten new ones (the old ones stop working), given a
/// current code: for an account that has used some, or fears they were seen.
pub async fn new_recovery_codes(
    State(st): State<Arc<AppState>>,
    client: ClientInfo,
    Authenticated(p): Authenticated,
    JsonBody(req): JsonBody<CodeBody>,
) -> ApiResult<Json<Confirmed>> {
    let u = own_account(&st, &p).await?;
    if !u.mfa.as_ref().is_some_and(|m| m.enabled()) {
        return Err(not_enrolled().into());
    }
    gate(&st, &client, &p, &u, &req.code, "user.mfa_recovery_codes").await?;
    // Read again: a recovery code given as the gate's code was used up meanwhile.
    let now = st.clock.now_s();
    let current = st.stores.meta.user_by_id(u.tenant_id, u.id).await?.and_then(|u| u.mfa).ok_or_else(not_enrolled)?;
    let mut secret = crate::mfa::open(&st, &u, &current.sealed).await?;
    let recovery_codes = secret.new_recovery_codes()?;
    let to = crate::mfa::seal(&st, &u, &secret).await?;
    if !st.stores.meta.set_mfa(u.tenant_id, u.id, MfaChange::Replace { from: &current.sealed, to: &to }, now).await? {
        return Err(
            MoatError::conflict("mfa_changed", "the second factor changed meanwhile (another sign-in used a code); try again").into()
        );
    }
    st.record(&client, own_event(&p, "user.mfa_recovery_codes")).await?;
    Ok(Json(Confirmed { status: "on".into(), recovery_codes }))
}

/// The code a change to the caller's enabled factor needs: the account's lockout is checked
/// first; a wrong or replayed code counts towards it and is recorded (`action`, failure); a
/// good one clears the counters, as a sign-in does.
async fn gate(st: &AppState, client: &ClientInfo, p: &Principal, u: &UserRecord, code: &str, action: &str) -> Result<(), MoatError> {
    let mfa = u.mfa.as_ref().ok_or_else(not_enrolled)?;
    let now = st.clock.now_s();
    let scope_key = slug_of(st, u).await?.unwrap_or_else(|| "platform".to_owned());
    let email = u.email.as_str();
    let lock = st.stores.meta.lockout_state(&scope_key, email).await?;
    if !matches!(st.lockout.check(&lock, now), LockDecision::Open) {
        return Err(MoatError::new(
            ErrorKind::TooManyRequests { retry_after_s: None },
            "account_locked",
            "too many wrong codes; try again later or ask an administrator",
        ));
    }
    match crate::mfa::accept(st, u, mfa, code).await? {
        Ok(_) => st.stores.meta.clear_lockout(&scope_key, email).await,
        Err(rejected) => {
            st.stores.meta.record_login_failure(&scope_key, email, &st.lockout, now).await?;
            let e = AuditEvent::new(p.tenant_id(), Category::Auth, action, Actor::of(p), Outcome::Failure)
                .resource(format!("user:{}", u.id))
                .details(serde_json::json!({"reason": rejected.reason()}));
            st.record(client, e).await?;
            Err(crate::mfa::invalid_code())
        }
    }
}

/// An Admin removes another account's factor (a lost device without recovery codes): the
/// account signs in with its password again (and must enrol anew where the policy requires),
/// and its sessions end.
pub async fn reset(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserUpdate>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserRecord>> {
    let u = super::admin::find_user(&st, auth.tenant, &id).await?;
    if u.role.rank() > auth.principal.role().rank() {
        return Err(MoatError::forbidden("role_escalation", "you cannot change an account above your own role").into());
    }
    if u.mfa.is_none() {
        return Err(not_enrolled().into());
    }
    let now = st.clock.now_s();
    st.stores.meta.set_mfa(auth.tenant, u.id, MfaChange::Remove, now).await?;
    let ended = st.stores.sessions.revoke_user_sessions(auth.tenant, u.id, "mfa_reset", now).await?;
    let e = AuditEvent::new(auth.tenant, Category::Admin, "user.mfa_reset", Actor::of(&auth.principal), Outcome::Success)
        .resource(format!("user:{}", u.id))
        .details(serde_json::json!({"email": u.email, "sessions_ended": ended}));
    st.record(&auth.client, e).await?;
    Ok(Json(UserRecord { mfa: None, ..u }))
}

pub async fn get_policy(State(st): State<Arc<AppState>>, auth: Authorized<act::PolicyRead>) -> ApiResult<Json<MfaPolicy>> {
    let tenant = auth.tenant.ok_or_else(super::admin::tenant_not_found)?;
    Ok(Json(st.setting(tenant, MFA_POLICY).await?))
}

/// Replaces the tenant's MFA policy (`{"required_for": "optional" | "admins" | "everyone"}`).
/// Accounts it newly covers are asked to enrol at their next sign-in; sessions already open
/// stay.
pub async fn set_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyUpdate>,
    JsonBody(policy): JsonBody<MfaPolicy>,
) -> ApiResult<Json<MfaPolicy>> {
    super::admin::replace_policy(&st, &auth, MFA_POLICY, "mfa", policy).await
}
