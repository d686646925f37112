//! Plain records passed in and out of the stores.

use moat_core::clock::UnixSeconds;
use moat_core::ids::{ApiKeyId, Email, SessionId, Slug, TenantId, UserId};
use moat_core::role::Role;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub slug: Slug,
    pub name: String,
    pub now: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    pub created_at: UnixSeconds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    Active,
    Disabled,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub tenant_id: Option<TenantId>,
    pub email: Email,
    pub role: Role,
    pub password_hash: String,
    pub now: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: UserId,
    pub tenant_id: Option<TenantId>,
    pub email: Email,
    pub role: Role,
    pub status: UserStatus,
    #[serde(skip)]
    pub password_hash: String,
    pub created_at: UnixSeconds,
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub tenant_id: Option<TenantId>,
    pub user_id: UserId,
    pub name: String,
    pub key_hash: String,
    /// A few leading characters of the secret, to tell keys apart in listings.
    pub display_hint: String,
    pub scopes: Vec<String>,
    pub now: UnixSeconds,
    pub expires_at: UnixSeconds,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub user_id: UserId,
    pub name: String,
    pub display_hint: String,
    pub scopes: Vec<String>,
    pub created_at: UnixSeconds,
    pub expires_at: UnixSeconds,
    pub last_used_at: Option<UnixSeconds>,
    pub revoked_at: Option<UnixSeconds>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: SessionId,
    pub tenant_id: Option<TenantId>,
    pub user_id: UserId,
    pub now: UnixSeconds,
    pub expires_at: UnixSeconds,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The state an access token is checked against at every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    pub session_live: bool,
    pub user_active: bool,
    pub tenant_active: bool,
    pub role: Role,
    pub email: Email,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    Rotated {
        session: SessionId,
        tenant_id: Option<TenantId>,
        user_id: UserId,
    },
    /// A rotated token was presented again: the family has been revoked.
    Reused {
        session: SessionId,
        tenant_id: Option<TenantId>,
        user_id: UserId,
    },
    /// Unknown, expired, or its session is revoked or expired.
    Invalid,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Substring search over action, resource, actor and details.
    pub q: Option<String>,
    pub limit: u32,
    /// Return records with seq greater than this (paging).
    pub after_seq: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub trail: String,
    pub ts_ms: i64,
    pub category: String,
    pub action: String,
    pub outcome: String,
    pub actor: serde_json::Value,
    pub resource: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    pub ok: bool,
    pub checked: u64,
    /// Hash of the last record checked.
    pub head: Option<String>,
    /// First bad sequence number and what is wrong with it.
    pub first_bad: Option<(i64, String)>,
}

/// One column of a catalogued table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnRecord {
    pub name: String,
    /// Arrow type, as DataFusion prints it (`Int64`, `Utf8`, …).
    #[serde(rename = "type")]
    pub data_type: String,
    /// `None` = unclassified (treated as RESTRICTED).
    pub classification: Option<String>,
    pub pii: String,
    pub entity: Option<String>,
    pub confidence: Option<f64>,
    /// `scanner`, `manual` or `default`.
    pub source: String,
    pub mask: Option<String>,
}

/// The label a column of a new table version gets, given the same-named column of the previous
/// version: a manual label always carries over (a scan never overwrites it); otherwise a fresh
/// scanner proposal wins, and without one the old label carries over if the type is unchanged.
pub fn carry_label(old: Option<&ColumnRecord>, new: &ColumnRecord) -> ColumnRecord {
    match old {
        Some(o) if o.source == "manual" || (new.source != "scanner" && o.data_type == new.data_type) => {
            ColumnRecord { name: new.name.clone(), data_type: new.data_type.clone(), ..o.clone() }
        }
        _ => new.clone(),
    }
}

impl ColumnRecord {
    /// A column nobody has classified yet.
    pub fn unclassified(name: &str, data_type: &str) -> Self {
        Self {
            name: name.into(),
            data_type: data_type.into(),
            classification: None,
            pii: "none".into(),
            entity: None,
            confidence: None,
            source: "default".into(),
            mask: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub domain: String,
    pub product: String,
    pub version: i64,
    #[serde(skip)]
    pub location: String,
    pub row_count: i64,
    pub bytes: i64,
    pub created_at: UnixSeconds,
    pub updated_at: UnixSeconds,
    pub columns: Vec<ColumnRecord>,
}

/// A new version of a table (create or replace).
#[derive(Debug, Clone)]
pub struct NewTableVersion {
    pub tenant_id: TenantId,
    pub name: String,
    pub domain: String,
    pub product: String,
    pub location: String,
    pub row_count: i64,
    pub bytes: i64,
    pub columns: Vec<ColumnRecord>,
    pub now: UnixSeconds,
}

/// A view: a named, saved read-only query of a tenant. It has no labels of its own: its columns
/// take the high-water mark of what they are computed from, at every use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub name: String,
    pub sql: String,
    pub description: String,
    pub created_by: String,
    pub version: i64,
    pub created_at: UnixSeconds,
    pub updated_at: UnixSeconds,
}

/// A view to create or replace.
#[derive(Debug, Clone)]
pub struct NewView {
    pub tenant_id: TenantId,
    pub name: String,
    pub sql: String,
    pub description: String,
    pub created_by: String,
    pub now: UnixSeconds,
}

/// A manual label for one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnLabel {
    pub classification: String,
    pub pii: Option<String>,
    pub entity: Option<String>,
    pub mask: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(source: &str, label: &str, data_type: &str) -> ColumnRecord {
        ColumnRecord { source: source.into(), classification: Some(label.into()), ..ColumnRecord::unclassified("c", data_type) }
    }

    #[test]
    fn manual_labels_survive_and_fresh_proposals_beat_old_automatic_ones() {
        let manual = col("manual", "PUBLIC", "Utf8");
        // A scan never overwrites a manual label, not even after a type change.
        assert_eq!(carry_label(Some(&manual), &col("scanner", "RESTRICTED", "Int64")).source, "manual");
        assert_eq!(carry_label(Some(&manual), &col("scanner", "RESTRICTED", "Int64")).data_type, "Int64");
        // A fresh proposal replaces an old one.
        let old = col("scanner", "INTERNAL", "Utf8");
        assert_eq!(carry_label(Some(&old), &col("scanner", "CONFIDENTIAL", "Utf8")).classification.as_deref(), Some("CONFIDENTIAL"));
        // Without a scan, the old label carries over only while the type is unchanged.
        let unscanned = ColumnRecord::unclassified("c", "Utf8");
        assert_eq!(carry_label(Some(&old), &unscanned).classification.as_deref(), Some("INTERNAL"));
        assert_eq!(carry_label(Some(&old), &ColumnRecord::unclassified("c", "Int64")).classification, None);
        assert_eq!(carry_label(None, &unscanned), unscanned);
    }
}
