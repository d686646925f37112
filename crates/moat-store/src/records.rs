//! Plain records passed in and out of the stores.

use moat_core::audit::AuditEvent;
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
    /// A database of its own (enterprise tenants); `None`: the platform's.
    pub database: Option<TenantDatabase>,
}

impl NewTenant {
    /// The record of the tenant just created from this: active, placed where it says.
    pub fn record(&self) -> TenantRecord {
        TenantRecord {
            id: self.id,
            slug: self.slug.to_string(),
            name: self.name.clone(),
            status: TenantStatus::Active,
            created_at: self.now,
            database: self.database.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    pub created_at: UnixSeconds,
    /// Where its metadata, audit trail and relations live when not in the platform's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<TenantDatabase>,
}

/// A tenant's dedicated PostgreSQL database: the runtime role's URL and the owner role's (who
/// migrates it and provisions the tenant there), as `store.url` and `store.admin_url` are for
/// the platform's. Neither may carry a password: they are kept in the platform's database, so
/// passwords come from the environment of every replica (`PGPASSFILE` or `~/.pgpass`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantDatabase {
    pub url: String,
    pub admin_url: String,
}

impl TenantDatabase {
    /// Checks both URLs: `postgres://` or `postgresql://`, a host and a database, no password.
    pub fn parse(url: &str, admin_url: &str) -> moat_core::Result<Self> {
        for (field, u) in [("database.url", url), ("database.admin_url", admin_url)] {
            check_database_url(field, u)?;
        }
        if url == admin_url {
            return Err(moat_core::MoatError::invalid(
                "store_owner_role",
                "database.admin_url and database.url are the same: the runtime role must own nothing it queries",
            ));
        }
        Ok(Self { url: url.to_owned(), admin_url: admin_url.to_owned() })
    }
}

fn check_database_url(field: &str, u: &str) -> moat_core::Result<()> {
    let invalid = |why: &str| moat_core::MoatError::invalid("invalid_database_url", format!("{field}: {why}"));
    let Some(rest) = u.strip_prefix("postgres://").or_else(|| u.strip_prefix("postgresql://")) else {
        return Err(invalid("not a postgres:// URL"));
    };
    if u.len() > 1024 || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("over 1024 characters, or holds spaces or control characters"));
    }
    let (authority, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    if host.is_empty() || path.is_empty() {
        return Err(invalid("name a host and a database (postgres://ROLE@HOST[:PORT]/DATABASE)"));
    }
    if userinfo.contains(':') || query.split('&').any(|kv| kv.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("password"))) {
        return Err(moat_core::MoatError::invalid(
            "database_url_has_password",
            format!("{field} holds a password; it would be kept in the platform's database: put it in PGPASSFILE or ~/.pgpass instead"),
        ));
    }
    Ok(())
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
    /// The second factor; shown as `"mfa": "off" | "pending" | "on"`, never its bytes.
    #[serde(rename = "mfa", serialize_with = "mfa_state", skip_deserializing)]
    pub mfa: Option<UserMfa>,
}

/// An account's second factor as stored: sealed, never in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMfa {
    /// A `moat_core::mfa::MfaSecret` sealed under the tenant's data key
    /// (`moat_core::keys::seal_secret`; the platform's own key for platform accounts).
    pub sealed: Vec<u8>,
    /// When it was confirmed with a code; `None` while pending (not asked for at sign-in).
    pub enabled_at: Option<UnixSeconds>,
    /// The last TOTP step accepted: no code of it or of an older step is accepted again.
    pub last_step: Option<i64>,
}

impl UserMfa {
    pub fn enabled(&self) -> bool {
        self.enabled_at.is_some()
    }
}

fn mfa_state<S: serde::Serializer>(mfa: &Option<UserMfa>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match mfa {
        None => "off",
        Some(m) if m.enabled() => "on",
        Some(_) => "pending",
    })
}

/// A change to an account's second factor. Each is one conditional update (a compare-and-swap):
/// `set_mfa` answers `false` when its condition no longer holds.
#[derive(Debug, Clone, Copy)]
pub enum MfaChange<'a> {
    /// A new pending factor, replacing a pending one; `false` while one is enabled.
    Enroll { sealed: &'a [u8] },
    /// Enables the pending factor `from` as `to` (now holding recovery codes), accepting TOTP
    /// step `step`; `false` if the pending factor is no longer `from`.
    Confirm { from: &'a [u8], to: &'a [u8], step: i64 },
    /// Records an accepted TOTP step of the enabled factor; `false` if that step or a newer
    /// one was accepted already (a replay, or two sign-ins racing with one code).
    UseStep { step: i64 },
    /// Replaces the sealed factor (a recovery code used up, a reseal under a new data key);
    /// `false` if it is no longer `from`.
    Replace { from: &'a [u8], to: &'a [u8] },
    /// Removes the factor, pending or enabled; `false` if the account does not exist.
    Remove,
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
    /// Substring of the actor (its email, id or channel).
    pub actor: Option<String>,
    pub category: Option<String>,
    /// An action or an action prefix (`query` matches `query.run`).
    pub action: Option<String>,
    pub resource: Option<String>,
    pub outcome: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Full-text search: words that must all occur in the entry (any field); `word*` for a prefix.
    pub q: Option<String>,
    pub limit: u32,
    /// Return records with seq greater than this (paging).
    pub after_seq: Option<i64>,
}

/// An event on its way into the log: the writer stamps the time and a unique id.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub event: AuditEvent,
    pub ts_ms: i64,
    /// UUIDv7, unique across trails: consumers of the event stream dedupe by it.
    pub event_id: String,
}

/// What an append answers: where the record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub trail: String,
    pub seq: i64,
    pub leaf_hash: moat_core::tlog::Hash,
}

/// A record as read back: the fields of its canonical entry, plus its leaf hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub trail: String,
    pub ts_ms: i64,
    pub event_id: String,
    pub category: String,
    pub action: String,
    pub outcome: String,
    pub actor: serde_json::Value,
    pub resource: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    /// Hex SHA-256 Merkle leaf hash of the entry.
    pub hash: String,
}

impl AuditRecord {
    /// The record a canonical entry encodes; `None` if the bytes are not a v2 entry.
    pub fn from_entry(entry: &[u8], leaf_hash: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct E {
            v: u32,
            trail: String,
            seq: i64,
            ts_ms: i64,
            event_id: String,
            category: String,
            action: String,
            outcome: String,
            actor: serde_json::Value,
            resource: Option<String>,
            source_ip: Option<String>,
            user_agent: Option<String>,
            request_id: Option<String>,
            details: serde_json::Value,
        }
        let e: E = serde_json::from_slice(entry).ok()?;
        (e.v == moat_core::audit::ENTRY_VERSION).then(|| Self {
            seq: e.seq,
            trail: e.trail,
            ts_ms: e.ts_ms,
            event_id: e.event_id,
            category: e.category,
            action: e.action,
            outcome: e.outcome,
            actor: e.actor,
            resource: e.resource,
            source_ip: e.source_ip,
            user_agent: e.user_agent,
            request_id: e.request_id,
            details: e.details,
            hash: hex::encode(leaf_hash),
        })
    }
}

/// One stored row of the log, as verification reads it: the committed bytes, what the store
/// says about them, and the index columns search uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub seq: i64,
    /// The canonical entry (UTF-8 JSON).
    pub entry: String,
    /// Hex leaf hash as stored.
    pub leaf_hash: String,
    /// Hex HMAC-SHA256 under the trail key.
    pub hmac: String,
    /// Index columns (absent in an export, where only the entry counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexColumns>,
    /// Removed by retention: only `seq` and `leaf_hash` are left (`entry` and `hmac` empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pruned: bool,
}

/// One category's records in one sealed segment of a trail, for retention planning
/// (`audit.retention` records are never counted: they are never removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCategory {
    pub segment: u64,
    pub category: String,
    pub records: u64,
    /// Time of the newest of them.
    pub newest_ts_ms: i64,
}

/// A prune: the records of `category` in seq `first_seq ..= last_seq` (one segment) that the
/// `audit.retention` record at `retention_seq` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prune {
    pub trail: String,
    pub retention_seq: i64,
    pub segment: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub category: String,
    /// Records named (and removed).
    pub count: u64,
    pub ts_ms: i64,
}

/// The columns a store keeps beside an entry for search; verification checks they agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexColumns {
    pub ts_ms: i64,
    pub event_id: String,
    pub category: String,
    pub action: String,
    pub outcome: String,
    pub actor: String,
    pub resource: Option<String>,
}

/// Size and root of a trail's tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailHead {
    pub size: u64,
    pub root: moat_core::tlog::Hash,
}

/// A signed checkpoint as stored and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub trail: String,
    pub size: u64,
    pub ts_ms: i64,
    /// The C2SP signed note.
    pub note: String,
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
    /// The tenant DEK version its files are encrypted under; `None`: plaintext (written before
    /// encryption at rest, or linked from PostgreSQL).
    #[serde(skip)]
    pub dek_version: Option<u32>,
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
    /// The DEK version its files were encrypted under (`None`: plaintext).
    pub dek_version: Option<u32>,
}

/// A table's current files re-encrypted under another DEK version ([`crate::MetaStore::rekey_table`]).
#[derive(Debug, Clone)]
pub struct TableRekey {
    pub tenant_id: TenantId,
    pub name: String,
    pub from_location: String,
    pub to_location: String,
    pub dek_version: u32,
    pub bytes: i64,
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

/// One check of [`crate::MetaStore::validate_isolation`]: what was tried and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationCheck {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// What a tenant's isolation validation found. `enforced_by` says which layer the checks
/// exercised: the database's own roles and policies, or moat's scoped queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationReport {
    pub backend: String,
    pub enforced_by: String,
    pub checks: Vec<IsolationCheck>,
}

impl IsolationReport {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    pub fn failed(&self) -> impl Iterator<Item = &IsolationCheck> {
        self.checks.iter().filter(|c| !c.passed)
    }

    pub(crate) fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.checks.push(IsolationCheck { name: name.to_owned(), passed, detail: detail.into() });
    }
}

/// A relation of a tenant's own schema, as its role sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationInfo {
    pub columns: Vec<RelationColumn>,
    /// The database's estimate (`pg_class.reltuples`; 0 before the first ANALYZE).
    pub estimated_rows: i64,
}

/// A column of a tenant relation: its type as the database names it (`int4`, `text`,
/// `numeric`, …) with a numeric column's declared precision and scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_name: String,
    pub precision: Option<i32>,
    pub scale: Option<i32>,
}

/// A value bound to a `$n` placeholder of a read.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Int(i64),
    Bool(bool),
    Text(String),
}

/// A tenant's data-encryption key as the store keeps it: wrapped by a master key that the
/// store never holds. Once shredded, the wrapped bytes are gone and the row only records when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyRecord {
    pub tenant_id: TenantId,
    pub version: u32,
    /// The master key that wrapped it (e.g. `local:kek-0001`).
    pub kek: String,
    /// `None` once destroyed (crypto-shredding).
    pub wrapped: Option<Vec<u8>>,
    pub created_at: UnixSeconds,
    pub destroyed_at: Option<UnixSeconds>,
}

/// A new DEK version of a tenant, wrapped.
#[derive(Debug, Clone)]
pub struct NewTenantKey {
    pub tenant_id: TenantId,
    pub version: u32,
    pub kek: String,
    pub wrapped: Vec<u8>,
    pub now: UnixSeconds,
}
