//! Encryption keys: a tenant's data-key versions and re-encryption progress, data-key rotation
//! (tenant Admin or Super Admin), master-key rotation (Super Admin). No key material is ever
//! returned: only versions, master-key ids and dates.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use moat_core::MoatError;
use moat_core::audit::Actor;
use serde_json::{Value, json};

use super::error::ApiResult;
use super::extract::{Authorized, act};
use crate::rotation::{MasterRotated, Rotated};
use crate::state::AppState;

fn tenant_of<A: super::extract::Action>(auth: &Authorized<A>) -> Result<moat_core::ids::TenantId, MoatError> {
    auth.tenant.ok_or_else(|| MoatError::bad_request("tenant_required", "name the tenant with ?tenant=<slug>"))
}

/// `GET /v1/keys`: the tenant's data keys, how many tables are under the current one, and the
/// re-encryption this replica last ran.
pub async fn status(State(st): State<Arc<AppState>>, auth: Authorized<act::EncryptionRead>) -> ApiResult<Json<Value>> {
    let tenant = tenant_of(&auth)?;
    let t = st.stores.meta.tenant_by_id(tenant).await?.ok_or_else(|| MoatError::not_found("tenant_not_found", "no such tenant"))?;
    let keys = st.stores.meta.tenant_keys(tenant).await?;
    let live = keys.iter().filter(|k| k.wrapped.is_some());
    let current = live.clone().max_by_key(|k| k.version);
    let dek_version = current.map(|k| k.version);
    let days = i64::from(st.config.keys.rotation_days);
    let next_rotation_at = current.filter(|_| days > 0).map(|k| k.created_at + days * 86_400);
    let master = st.data_keys.provider().current_kek();
    let tables: Vec<_> =
        st.stores.meta.list_tables(tenant).await?.into_iter().filter(|t| crate::pg_source::relation_of(&t.location).is_none()).collect();
    let under_current = tables.iter().filter(|t| t.dek_version.is_some() && t.dek_version == dek_version).count();
    let versions: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({
                "version": k.version, "master_key": k.kek, "created_at": k.created_at,
                "destroyed_at": k.destroyed_at, "current": Some(k.version) == dek_version,
            })
        })
        .collect();
    Ok(Json(json!({
        "tenant": t.slug,
        "provider": st.config.keys.provider,
        "master_key": master,
        "dek_version": dek_version,
        "versions": versions,
        "keys_under_older_master_key": live.filter(|k| k.kek != master).count(),
        "rotation_days": st.config.keys.rotation_days,
        "next_rotation_at": next_rotation_at,
        "tables": {"total": tables.len(), "current": under_current, "pending": tables.len() - under_current},
        "reencryption": st.rekey.progress(tenant),
    })))
}

/// `POST /v1/keys/rotate`: the tenant's next data key; its tables are re-encrypted in the
/// background (progress in `GET /v1/keys`), queries keep working throughout.
pub async fn rotate(State(st): State<Arc<AppState>>, auth: Authorized<act::EncryptionRotate>) -> ApiResult<(StatusCode, Json<Rotated>)> {
    let tenant = tenant_of(&auth)?;
    let out = crate::rotation::rotate(&st, tenant, Actor::of(&auth.principal), &auth.client, "manual").await?;
    Ok((StatusCode::ACCEPTED, Json(out)))
}

/// `POST /v1/keys/rotate-master`: a new master key in the provider; every tenant's data keys
/// are re-wrapped under it (no file is touched). Older master keys can be retired afterwards.
pub async fn rotate_master(
    State(st): State<Arc<AppState>>,
    auth: Authorized<act::EncryptionRotateMaster>,
) -> ApiResult<Json<MasterRotated>> {
    Ok(Json(crate::rotation::rotate_master(&st, Actor::of(&auth.principal), &auth.client).await?))
}
