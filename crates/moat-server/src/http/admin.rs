//! Tenants (Super Admin), users (tenant Admin), API keys (everyone, their own). Each change is
//! audited in the trail of the tenant it touched; Super Admin actions are marked as such.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use moat_core::apikey;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::ids::{ApiKeyId, Email, Slug, TenantId, UserId};
use moat_core::password::PasswordPolicy;
use moat_core::permission::Permission;
use moat_core::principal::Principal;
use moat_core::role::Role;
use moat_core::{ErrorKind, MoatError};
use moat_query::policy::MaskingPolicy;
use moat_store::{
    ApiKeyRecord, IsolationReport, NewApiKey, NewTenant, NewUser, TenantDatabase, TenantRecord, TenantStatus, UserRecord, UserStatus,
};
use serde::{Deserialize, Serialize};

use super::auth::hash_blocking;
use super::error::ApiResult;
use super::extract::{Authorized, ClientInfo, JsonBody, QueryParams, act};
use crate::retention::AuditRetentionPolicy;
use crate::scan::ClassificationPolicy;
use crate::state::AppState;

fn admin_event(tenant: Option<TenantId>, p: &Principal, action: &str, resource: String) -> AuditEvent {
    AuditEvent::new(tenant, Category::Admin, action, Actor::of(p), Outcome::Success).resource(resource)
}

fn check_name(field: &str, v: &str, max: usize) -> Result<String, MoatError> {
    let t = v.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(MoatError::invalid("invalid_name", format!("{field} must be 1 to {max} printable characters")));
    }
    Ok(t.to_owned())
}

// ---------------------------------------------------------------- tenants

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub slug: String,
    pub name: String,
    pub admin: Option<AdminSpec>,
    /// A PostgreSQL database of the tenant's own (enterprise tenants): its metadata, audit
    /// trail and relations live there, not in the platform's database.
    pub database: Option<DatabaseSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    /// The runtime role's URL (no password: PGPASSFILE or ~/.pgpass on every replica).
    pub url: String,
    /// The owner role's URL: migrates the database and provisions the tenant there.
    pub admin_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSpec {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
}

pub async fn create_tenant(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TenantCreate>,
    JsonBody(req): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let slug = Slug::parse(&req.slug)?;
    let name = check_name("name", &req.name, 200)?;
    let database = req.database.as_ref().map(|d| TenantDatabase::parse(&d.url, &d.admin_url)).transpose()?;
    let now = st.clock.now_s();
    let id = TenantId::new();
    let admin = match &req.admin {
        Some(a) => {
            let email = Email::parse(&a.email)?;
            st.password_policy(None).await?.check(&a.password, email.as_str().split('@').next())?;
            let password_hash = hash_blocking(a.password.clone()).await?;
            Some(NewUser { id: UserId::new(), tenant_id: Some(id), email, role: Role::Admin, password_hash, now })
        }
        None => None,
    };
    let t = st.stores.meta.create_tenant(&NewTenant { id, slug: slug.clone(), name, now, database }, admin.as_ref()).await?;
    let p = &auth.principal;
    let resource = format!("tenant:{}", t.slug);
    let placement = if t.database.is_some() { "dedicated_database" } else { "platform_database" };
    st.record(
        &auth.client,
        admin_event(None, p, "tenant.create", resource.clone()).details(serde_json::json!({"tenant_id": t.id, "placement": placement})),
    )
    .await?;
    st.record(&auth.client, admin_event(Some(t.id), p, "tenant.create", resource)).await?;
    // Its first data key, wrapped by the master key: every file it writes is encrypted.
    let ring = st.data_keys.keyring(t.id, &[], now).await?;
    let kek = st.data_keys.provider().current_kek();
    let e = admin_event(Some(t.id), p, "key.create", format!("tenant:{}", t.slug))
        .details(serde_json::json!({"dek_version": ring.current_version(), "kek": kek}));
    st.record(&auth.client, e).await?;
    if let Some(a) = &admin {
        let e = admin_event(Some(t.id), p, "user.create", format!("user:{}", a.id))
            .details(serde_json::json!({"email": a.email, "role": "admin"}));
        st.record(&auth.client, e).await?;
    }
    // Provisioning proves the new tenant is isolated before anyone uses it; a tenant that
    // fails is suspended (fail closed) until the database is fixed and it validates.
    let v = validate(&st, &auth.client, p, &t).await?;
    if !v.passed {
        st.stores.meta.set_tenant_status(t.id, TenantStatus::Suspended, st.clock.now_s()).await?;
        let resource = format!("tenant:{}", t.slug);
        let details = serde_json::json!({"reason": "isolation validation failed"});
        st.record(&auth.client, admin_event(None, p, "tenant.suspend", resource.clone()).details(details.clone())).await?;
        st.record(&auth.client, admin_event(Some(t.id), p, "tenant.suspend", resource).details(details)).await?;
        return Err(isolation_failed(&t.slug, &v.report, "was created but is suspended").into());
    }
    Ok((StatusCode::CREATED, Json(Created { id: t.id.to_string(), slug: Some(t.slug) })))
}

/// The outcome of a tenant's isolation validation (`POST /v1/tenants/{slug}/validate`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Validation {
    pub tenant: String,
    pub slug: String,
    pub passed: bool,
    #[serde(flatten)]
    pub report: IsolationReport,
}

/// Runs the store's isolation checks for `t` and audits the result (platform and tenant trail).
async fn validate(st: &AppState, client: &ClientInfo, p: &Principal, t: &TenantRecord) -> ApiResult<Validation> {
    let report = st.stores.meta.validate_isolation(t.id).await?;
    let passed = report.passed();
    let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
    let outcome = if passed { Outcome::Success } else { Outcome::Failure };
    let details = serde_json::json!({"backend": report.backend, "checks": report.checks.len(), "failed": failed});
    for trail in [None, Some(t.id)] {
        let e = AuditEvent::new(trail, Category::Admin, "tenant.validate", Actor::of(p), outcome)
            .resource(format!("tenant:{}", t.slug))
            .details(details.clone());
        st.record(client, e).await?;
    }
    if !passed {
        tracing::error!(tenant = %t.slug, failed = ?failed, "tenant isolation validation failed");
    }
    Ok(Validation { tenant: t.id.to_string(), slug: t.slug.clone(), passed, report })
}

/// The error of a tenant that did not validate: names the failed checks (never data).
fn isolation_failed(slug: &str, r: &IsolationReport, state: &str) -> MoatError {
    let failed: Vec<String> = r.failed().map(|c| format!("{} ({})", c.name, c.detail)).collect();
    MoatError::new(
        ErrorKind::Internal,
        "isolation_failed",
        format!(
            "tenant {slug} {state}: isolation validation failed: {}; fix the database roles and policies, \
             then `moat tenant validate {slug}` and `moat tenant resume {slug}`",
            failed.join("; ")
        ),
    )
}

pub async fn validate_tenant(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TenantRead>,
    Path(slug): Path<String>,
) -> ApiResult<Json<Validation>> {
    let t = st.stores.meta.tenant_by_slug(&slug).await?.ok_or_else(tenant_not_found)?;
    Ok(Json(validate(&st, &auth.client, &auth.principal, &t).await?))
}

#[derive(Debug, Serialize)]
pub struct TenantList {
    pub tenants: Vec<serde_json::Value>,
}

/// A tenant as listed: a deleted one (suspended for good, its keys destroyed) shows status
/// `deleted` and when (`deleted_at`), not `suspended`.
async fn tenant_view(st: &AppState, t: TenantRecord) -> Result<serde_json::Value, MoatError> {
    let deleted_at = match t.status {
        TenantStatus::Suspended => st
            .stores
            .meta
            .tenant_setting(t.id, DELETED)
            .await?
            .map(|v| serde_json::from_str::<serde_json::Value>(&v).ok().and_then(|v| v["at"].as_i64())),
        TenantStatus::Active => None,
    };
    let mut v = serde_json::to_value(&t).map_err(|_| MoatError::internal("encode"))?;
    if let (Some(o), Some(at)) = (v.as_object_mut(), deleted_at) {
        o.insert("status".into(), serde_json::json!("deleted"));
        o.insert("deleted_at".into(), serde_json::json!(at));
    }
    Ok(v)
}

pub async fn list_tenants(State(st): State<Arc<AppState>>, _auth: Authorized<act::TenantRead>) -> ApiResult<Json<TenantList>> {
    let mut tenants = Vec::new();
    for t in st.stores.meta.list_tenants().await? {
        tenants.push(tenant_view(&st, t).await?);
    }
    Ok(Json(TenantList { tenants }))
}

pub async fn get_tenant(
    State(st): State<Arc<AppState>>,
    _auth: Authorized<act::TenantRead>,
    Path(slug): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = st.stores.meta.tenant_by_slug(&slug).await?.ok_or_else(tenant_not_found)?;
    Ok(Json(tenant_view(&st, t).await?))
}

pub(super) fn tenant_not_found() -> MoatError {
    MoatError::not_found("tenant_not_found", "no such tenant")
}

async fn set_tenant_status(
    st: &AppState,
    auth: &Authorized<act::TenantUpdate>,
    slug: &str,
    status: TenantStatus,
) -> ApiResult<Json<TenantRecord>> {
    let t = st.stores.meta.tenant_by_slug(slug).await?.ok_or_else(tenant_not_found)?;
    if status == TenantStatus::Active {
        if st.stores.meta.tenant_setting(t.id, DELETED).await?.is_some() {
            return Err(MoatError::conflict("tenant_deleted", format!("tenant {} was deleted; its data keys are destroyed", t.slug)).into());
        }
        // A tenant comes back only if it is isolated (provisioning suspends one that is not).
        let v = validate(st, &auth.client, &auth.principal, &t).await?;
        if !v.passed {
            return Err(isolation_failed(&t.slug, &v.report, "stays suspended").into());
        }
    }
    st.stores.meta.set_tenant_status(t.id, status, st.clock.now_s()).await?;
    let action = if status == TenantStatus::Suspended { "tenant.suspend" } else { "tenant.resume" };
    let resource = format!("tenant:{}", t.slug);
    st.record(&auth.client, admin_event(None, &auth.principal, action, resource.clone())).await?;
    st.record(&auth.client, admin_event(Some(t.id), &auth.principal, action, resource)).await?;
    Ok(Json(TenantRecord { status, ..t }))
}

/// A deleted tenant's marker (a tenant setting): it stays suspended for good.
pub const DELETED: &str = "deleted";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenant {
    /// The tenant's slug again: deletion cannot be undone.
    pub confirm: Option<String>,
}

/// `DELETE /v1/tenants/{slug}?confirm={slug}`: suspends the tenant, destroys its data keys
/// (crypto-shredding: its files, and every copy of them, become unreadable), removes its
/// tables and their files, and marks it deleted so it can never be resumed. Its audit trail
/// stays (retention decides), as do its users' records for the trail's sake; nobody can sign
/// in. Audited in both trails with what was destroyed.
pub async fn delete_tenant(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TenantUpdate>,
    Path(slug): Path<String>,
    QueryParams(q): QueryParams<DeleteTenant>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = st.stores.meta.tenant_by_slug(&slug).await?.ok_or_else(|| MoatError::not_found("tenant_not_found", "no such tenant"))?;
    if q.confirm.as_deref() != Some(t.slug.as_str()) {
        return Err(MoatError::invalid(
            "confirmation_required",
            format!("deleting a tenant destroys its data for good: repeat its slug as ?confirm={}", t.slug),
        )
        .into());
    }
    let now = st.clock.now_s();
    st.stores.meta.set_tenant_status(t.id, TenantStatus::Suspended, now).await?;
    st.stores.meta.set_tenant_setting(t.id, DELETED, &serde_json::json!({"at": now}).to_string(), now).await?;
    let keys_destroyed = st.data_keys.shred(t.id, now).await?;
    let mut tables = 0u64;
    for table in st.stores.meta.list_tables(t.id).await? {
        if st.stores.meta.delete_table(t.id, &table.name).await?.is_some() {
            tables += 1;
        }
    }
    // The files are unreadable already; removing them only frees the space.
    let files = match st.tables.delete_prefix(&t.id.to_string()).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(tenant = %t.slug, code = e.code, "could not remove a deleted tenant's files");
            0
        }
    };
    let details = serde_json::json!({"keys_destroyed": keys_destroyed, "tables_deleted": tables, "files_removed": files});
    let resource = format!("tenant:{}", t.slug);
    st.record(&auth.client, admin_event(None, &auth.principal, "tenant.delete", resource.clone()).details(details.clone())).await?;
    st.record(&auth.client, admin_event(Some(t.id), &auth.principal, "tenant.delete", resource).details(details.clone())).await?;
    let mut out = serde_json::json!({"slug": t.slug, "id": t.id, "status": "deleted"});
    if let (Some(o), Some(d)) = (out.as_object_mut(), details.as_object()) {
        o.extend(d.clone());
    }
    Ok(Json(out))
}

pub async fn suspend_tenant(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TenantUpdate>,
    Path(slug): Path<String>,
) -> ApiResult<Json<TenantRecord>> {
    set_tenant_status(&st, &auth, &slug, TenantStatus::Suspended).await
}

pub async fn resume_tenant(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::TenantUpdate>,
    Path(slug): Path<String>,
) -> ApiResult<Json<TenantRecord>> {
    set_tenant_status(&st, &auth, &slug, TenantStatus::Active).await
}

// ---------------------------------------------------------------- users

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub password: String,
    pub role: String,
}

/// Refuses handing out a role above the caller's own, and the platform role inside a tenant.
fn grantable(caller: &Principal, role_name: &str) -> Result<Role, MoatError> {
    let role = Role::parse(role_name)?;
    if role == Role::SuperAdmin {
        return Err(MoatError::invalid("invalid_role", "role super_admin exists only on the platform; use `moat superadmin create`"));
    }
    if role.rank() > caller.role().rank() {
        return Err(MoatError::forbidden("role_escalation", format!("you cannot grant the {role} role")));
    }
    Ok(role)
}

pub async fn create_user(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserCreate>,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let tenant = auth.tenant;
    let email = Email::parse(&req.email)?;
    let role = grantable(&auth.principal, &req.role)?;
    st.password_policy(tenant).await?.check(&req.password, email.as_str().split('@').next())?;
    let now = st.clock.now_s();
    let password_hash = hash_blocking(req.password.clone()).await?;
    let u = st.stores.meta.create_user(&NewUser { id: UserId::new(), tenant_id: tenant, email, role, password_hash, now }).await?;
    let e = admin_event(tenant, &auth.principal, "user.create", format!("user:{}", u.id))
        .details(serde_json::json!({"email": u.email, "role": role}));
    st.record(&auth.client, e).await?;
    Ok((StatusCode::CREATED, Json(Created { id: u.id.to_string(), slug: None })))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UserList {
    pub users: Vec<UserRecord>,
}

pub async fn list_users(State(st): State<Arc<AppState>>, auth: Authorized<act::UserRead>) -> ApiResult<Json<UserList>> {
    Ok(Json(UserList { users: st.stores.meta.list_users(auth.tenant).await? }))
}

fn user_not_found() -> MoatError {
    MoatError::not_found("user_not_found", "no such user")
}

/// A user of the action's tenant, or 404 (also for ids of other tenants and malformed ids).
pub(super) async fn find_user(st: &AppState, tenant: Option<TenantId>, id: &str) -> Result<UserRecord, MoatError> {
    let id = UserId::parse(id).ok_or_else(user_not_found)?;
    st.stores.meta.user_by_id(tenant, id).await?.ok_or_else(user_not_found)
}

pub async fn get_user(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserRead>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserRecord>> {
    Ok(Json(find_user(&st, auth.tenant, &id).await?))
}

async fn set_user_status(st: &AppState, auth: &Authorized<act::UserUpdate>, id: &str, status: UserStatus) -> ApiResult<Json<UserRecord>> {
    let u = find_user(st, auth.tenant, id).await?;
    if u.id == auth.principal.user_id() && status == UserStatus::Disabled {
        return Err(MoatError::invalid("cannot_disable_self", "you cannot disable your own account").into());
    }
    if u.role.rank() > auth.principal.role().rank() {
        return Err(MoatError::forbidden("role_escalation", "you cannot change an account above your own role").into());
    }
    let now = st.clock.now_s();
    st.stores.meta.set_user_status(auth.tenant, u.id, status, now).await?;
    if status == UserStatus::Disabled {
        st.stores.sessions.revoke_user_sessions(auth.tenant, u.id, "account_disabled", now).await?;
    }
    let action = if status == UserStatus::Disabled { "user.disable" } else { "user.enable" };
    st.record(&auth.client, admin_event(auth.tenant, &auth.principal, action, format!("user:{}", u.id))).await?;
    Ok(Json(UserRecord { status, ..u }))
}

pub async fn disable_user(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserUpdate>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserRecord>> {
    set_user_status(&st, &auth, &id, UserStatus::Disabled).await
}

pub async fn enable_user(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserUpdate>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserRecord>> {
    set_user_status(&st, &auth, &id, UserStatus::Active).await
}

/// Clears the user's lockout counters (the only way out of the last lockout stage).
pub async fn unlock_user(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserUpdate>,
    Path(id): Path<String>,
) -> ApiResult<Json<UserRecord>> {
    let u = find_user(&st, auth.tenant, &id).await?;
    let scope_key = match auth.tenant {
        Some(t) => st.stores.meta.tenant_by_id(t).await?.ok_or_else(tenant_not_found)?.slug,
        None => "platform".to_owned(),
    };
    st.stores.meta.clear_lockout(&scope_key, u.email.as_str()).await?;
    st.record(&auth.client, admin_event(auth.tenant, &auth.principal, "user.unlock", format!("user:{}", u.id))).await?;
    Ok(Json(u))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: String,
}

pub async fn set_user_role(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::UserUpdate>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SetRole>,
) -> ApiResult<Json<UserRecord>> {
    let u = find_user(&st, auth.tenant, &id).await?;
    let role = grantable(&auth.principal, &req.role)?;
    if u.id == auth.principal.user_id() {
        return Err(MoatError::invalid("cannot_change_own_role", "you cannot change your own role").into());
    }
    if u.role.rank() > auth.principal.role().rank() {
        return Err(MoatError::forbidden("role_escalation", "you cannot change an account above your own role").into());
    }
    let tenant = auth.tenant.ok_or_else(|| MoatError::invalid("invalid_role", "platform accounts have no tenant role"))?;
    st.stores.meta.set_user_role(tenant, u.id, role, st.clock.now_s()).await?;
    let e = admin_event(auth.tenant, &auth.principal, "user.role_change", format!("user:{}", u.id))
        .details(serde_json::json!({"from": u.role, "to": role}));
    st.record(&auth.client, e).await?;
    Ok(Json(UserRecord { role, ..u }))
}

// ---------------------------------------------------------------- API keys

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedKey {
    pub id: ApiKeyId,
    /// Shown once; only its hash is stored.
    pub key: String,
    pub expires_at: i64,
    pub scopes: Vec<String>,
}

pub async fn create_key(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::KeyCreate>,
    JsonBody(req): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let name = check_name("name", &req.name, 100)?;
    let scopes = apikey::validate_scopes(&req.scopes, &auth.principal)?;
    let days = apikey::validate_expiry_days(req.expires_in_days)?;
    let (key, key_hash) = apikey::generate()?;
    let now = st.clock.now_s();
    let scopes: Vec<String> = scopes.iter().map(ToString::to_string).collect();
    let rec = st
        .stores
        .meta
        .create_api_key(&NewApiKey {
            id: ApiKeyId::new(),
            tenant_id: auth.tenant,
            user_id: auth.principal.user_id(),
            name,
            key_hash,
            display_hint: key[apikey::PREFIX.len()..apikey::PREFIX.len() + 4].to_owned(),
            scopes: scopes.clone(),
            now,
            expires_at: now + i64::from(days) * 86_400,
        })
        .await?;
    let e = admin_event(auth.tenant, &auth.principal, "key.create", format!("api_key:{}", rec.id))
        .details(serde_json::json!({"name": rec.name, "scopes": scopes, "expires_at": rec.expires_at}));
    st.record(&auth.client, e).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { id: rec.id, key, expires_at: rec.expires_at, scopes })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyListQuery {
    /// Every key of the tenant (needs `key:manage`).
    #[serde(default)]
    pub all: bool,
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<ApiKeyRecord>,
}

/// `None` = every key of the tenant; `Some(me)` = only mine. Managing others' keys is
/// `key:manage`.
fn key_owner_filter(p: &Principal, all: bool) -> Result<Option<UserId>, MoatError> {
    if !all {
        return Ok(Some(p.user_id()));
    }
    if p.has_permission(&Permission::new("key", "manage")) {
        Ok(None)
    } else {
        Err(MoatError::forbidden("forbidden", "permission key:manage is required"))
    }
}

pub async fn list_keys(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::KeyRead>,
    QueryParams(q): QueryParams<KeyListQuery>,
) -> ApiResult<Json<KeyList>> {
    let owner = key_owner_filter(&auth.principal, q.all)?;
    Ok(Json(KeyList { keys: st.stores.meta.list_api_keys(auth.tenant, owner).await? }))
}

pub async fn revoke_key(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::KeyRevoke>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let not_found = || MoatError::not_found("key_not_found", "no such API key");
    let id = ApiKeyId::parse(&id).ok_or_else(not_found)?;
    // Own keys first; an admin with key:manage may revoke anyone's in the tenant.
    let mut done = st.stores.meta.revoke_api_key(auth.tenant, id, Some(auth.principal.user_id()), st.clock.now_s()).await?;
    if !done && auth.principal.has_permission(&Permission::new("key", "manage")) {
        done = st.stores.meta.revoke_api_key(auth.tenant, id, None, st.clock.now_s()).await?;
    }
    if !done {
        return Err(not_found().into());
    }
    st.record(&auth.client, admin_event(auth.tenant, &auth.principal, "key.revoke", format!("api_key:{id}"))).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- policies

pub async fn get_password_policy(State(st): State<Arc<AppState>>, auth: Authorized<act::PolicyRead>) -> ApiResult<Json<PasswordPolicy>> {
    Ok(Json(st.password_policy(auth.tenant).await?))
}

/// Replaces the tenant's password policy. Fields left out keep the default; existing passwords
/// are not re-checked (the policy applies at the next change).
pub async fn set_password_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyUpdate>,
    JsonBody(policy): JsonBody<PasswordPolicy>,
) -> ApiResult<Json<PasswordPolicy>> {
    policy.validate()?;
    replace_policy(&st, &auth, crate::state::PASSWORD_POLICY, "password", policy).await
}

/// Stores a tenant policy (a setting) and audits the change, old and new documents in one
/// `policy.{name}_update` record.
pub(super) async fn replace_policy<T: Serialize + serde::de::DeserializeOwned + Default>(
    st: &AppState,
    auth: &Authorized<act::PolicyUpdate>,
    key: &str,
    name: &str,
    policy: T,
) -> ApiResult<Json<T>> {
    let tenant = auth.tenant.ok_or_else(tenant_not_found)?;
    let before: T = st.setting(tenant, key).await?;
    st.set_setting(tenant, key, &policy).await?;
    let e = admin_event(Some(tenant), &auth.principal, &format!("policy.{name}_update"), format!("policy:{name}"))
        .details(serde_json::json!({"from": before, "to": policy}));
    st.record(&auth.client, e).await?;
    Ok(Json(policy))
}

pub async fn get_masking_policy(State(st): State<Arc<AppState>>, auth: Authorized<act::PolicyRead>) -> ApiResult<Json<MaskingPolicy>> {
    let tenant = auth.tenant.ok_or_else(tenant_not_found)?;
    Ok(Json(st.masking_policy(tenant).await?))
}

/// Replaces the tenant's masking policy: another mask per (role, label). Rules only apply above
/// a role's clearance, so a policy can change how data is masked, never unmask it.
pub async fn set_masking_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyUpdate>,
    JsonBody(policy): JsonBody<MaskingPolicy>,
) -> ApiResult<Json<MaskingPolicy>> {
    policy.validate()?;
    replace_policy(&st, &auth, crate::state::MASKING_POLICY, "masking", policy).await
}

pub async fn get_classification_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyRead>,
) -> ApiResult<Json<ClassificationPolicy>> {
    let tenant = auth.tenant.ok_or_else(tenant_not_found)?;
    Ok(Json(st.setting(tenant, crate::state::CLASSIFICATION_POLICY).await?))
}

/// Replaces the tenant's classification policy: the label (and mask) the scanner's proposals
/// become, per entity or PII category, and the confidence below which a proposal is not
/// applied. It applies to the next scan (`POST /v1/tables/{t}/scan` re-labels existing tables);
/// manual labels are never touched.
pub async fn set_classification_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyUpdate>,
    JsonBody(policy): JsonBody<ClassificationPolicy>,
) -> ApiResult<Json<ClassificationPolicy>> {
    policy.validate()?;
    replace_policy(&st, &auth, crate::state::CLASSIFICATION_POLICY, "classification", policy).await
}

pub async fn get_retention_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyRead>,
) -> ApiResult<Json<AuditRetentionPolicy>> {
    let tenant = auth.tenant.ok_or_else(tenant_not_found)?;
    Ok(Json(st.setting(tenant, crate::retention::AUDIT_RETENTION_POLICY).await?))
}

/// Replaces the tenant's audit retention policy (`{"min_days": 2190}` for six years of
/// everything; `{"days": {"auth": 365}}` per category; 0 = forever). It can only lengthen what
/// the deployment keeps: a shorter value is refused (`retention_too_short`).
pub async fn set_retention_policy(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::PolicyUpdate>,
    JsonBody(policy): JsonBody<AuditRetentionPolicy>,
) -> ApiResult<Json<AuditRetentionPolicy>> {
    policy.validate(&st.config.audit)?;
    replace_policy(&st, &auth, crate::retention::AUDIT_RETENTION_POLICY, "audit_retention", policy).await
}
