//! moat-store: persistence behind traits.
//!
//! Three traits split by concern — [`MetaStore`] (tenants, users, API keys, lockout),
//! [`SessionStore`] (login sessions and refresh-token families) and [`AuditStore`] (the
//! append-only transparency log, fed by the group-commit writer in [`audit_log`]). [`sqlite::SqliteStore`] is the embedded default; the PostgreSQL backend
//! implements the same traits and must pass the same [`conformance`] suite.
//!
//! Every tenant-scoped method takes the tenant explicitly and filters by it: a caller cannot
//! ask for "user X" without saying in which tenant, so a wrong id from another tenant reads as
//! absent.

pub mod audit_log;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod isolation;
#[cfg(any(test, feature = "conformance"))]
pub mod pg_testing;
pub mod postgres;
mod records;
pub mod retention;
pub mod routed;
mod shared;
pub mod sqlite;
mod sqlite_search;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use moat_core::Result;
use moat_core::apikey::StoredKey;
use moat_core::audit::AuditKeys;
use moat_core::clock::UnixSeconds;
use moat_core::ids::{ApiKeyId, Email, SessionId, Slug, TenantId, UserId};
use moat_core::lockout::{FailureOutcome, LockoutPolicy, LockoutState};
use moat_core::role::Role;
use moat_core::tlog::{Hash, NodeId};

pub use records::*;

#[async_trait]
pub trait MetaStore: Send + Sync {
    // --- tenants (platform scope) ---
    /// Creates the tenant and, when given, its first Admin in one transaction: a failure
    /// leaves nothing half-created.
    async fn create_tenant(&self, t: &NewTenant, first_admin: Option<&NewUser>) -> Result<TenantRecord>;
    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>>;
    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>>;
    async fn list_tenants(&self) -> Result<Vec<TenantRecord>>;
    async fn set_tenant_status(&self, id: TenantId, status: TenantStatus, now: UnixSeconds) -> Result<bool>;
    /// A tenant setting (a JSON document by key, e.g. `password_policy`); `None` = the default.
    async fn tenant_setting(&self, tenant: TenantId, key: &str) -> Result<Option<String>>;
    /// Stores a setting; `false` if the tenant does not exist.
    async fn set_tenant_setting(&self, tenant: TenantId, key: &str, value: &str, now: UnixSeconds) -> Result<bool>;

    // --- tenant keys (wrapped DEKs; see moat_core::keys) ---
    /// Adds DEK version `k.version`; `false` if the tenant already has that version (another
    /// replica made it first: read the keys again) or does not exist.
    async fn add_tenant_key(&self, k: &NewTenantKey) -> Result<bool>;
    /// Every DEK version of a tenant, oldest first, destroyed ones included.
    async fn tenant_keys(&self, tenant: TenantId) -> Result<Vec<TenantKeyRecord>>;
    /// Replaces a version's wrapped bytes (master-key rotation); `false` if it does not exist
    /// or was destroyed.
    async fn rewrap_tenant_key(&self, tenant: TenantId, version: u32, kek: &str, wrapped: &[u8]) -> Result<bool>;
    /// Crypto-shredding: erases the wrapped bytes of every version of the tenant's DEK (the
    /// rows stay, recording when); returns how many were erased.
    async fn shred_tenant_keys(&self, tenant: TenantId, now: UnixSeconds) -> Result<u64>;

    // --- users (tenant-scoped; `None` = platform accounts) ---
    async fn create_user(&self, u: &NewUser) -> Result<UserRecord>;
    async fn user_by_email(&self, tenant: Option<TenantId>, email: &Email) -> Result<Option<UserRecord>>;
    async fn user_by_id(&self, tenant: Option<TenantId>, id: UserId) -> Result<Option<UserRecord>>;
    async fn list_users(&self, tenant: Option<TenantId>) -> Result<Vec<UserRecord>>;
    async fn set_user_status(&self, tenant: Option<TenantId>, id: UserId, status: UserStatus, now: UnixSeconds) -> Result<bool>;
    async fn set_user_role(&self, tenant: TenantId, id: UserId, role: Role, now: UnixSeconds) -> Result<bool>;
    /// Replaces the password hash and pushes the old one into the history.
    async fn set_password(&self, tenant: Option<TenantId>, id: UserId, new_hash: &str, now: UnixSeconds) -> Result<bool>;
    /// Changes the account's second factor (see [`MfaChange`] for each change's condition).
    async fn set_mfa(&self, tenant: Option<TenantId>, id: UserId, change: MfaChange<'_>, now: UnixSeconds) -> Result<bool>;
    /// The current hash followed by up to `n - 1` previous ones, newest first.
    async fn password_history(&self, tenant: Option<TenantId>, id: UserId, n: usize) -> Result<Vec<String>>;

    // --- lockout, keyed by (tenant slug as presented or "platform", e-mail) ---
    async fn lockout_state(&self, scope_key: &str, email: &str) -> Result<LockoutState>;
    /// Atomically counts one failure under `policy`.
    async fn record_login_failure(
        &self,
        scope_key: &str,
        email: &str,
        policy: &LockoutPolicy,
        now: UnixSeconds,
    ) -> Result<(FailureOutcome, LockoutState)>;
    async fn clear_lockout(&self, scope_key: &str, email: &str) -> Result<()>;

    // --- API keys ---
    async fn create_api_key(&self, k: &NewApiKey) -> Result<ApiKeyRecord>;
    /// Looks a presented key up by its hash, with the owner's current role and status.
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<StoredKey>>;
    async fn touch_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, now: UnixSeconds) -> Result<()>;
    /// Keys of one tenant; of one user when `user` is given.
    async fn list_api_keys(&self, tenant: Option<TenantId>, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>>;
    async fn revoke_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, user: Option<UserId>, now: UnixSeconds) -> Result<bool>;

    // --- catalog (tenant-scoped) ---
    /// Creates the table or makes `v` its current version, in one transaction. Labels of columns
    /// that keep their name and type carry over (a manual label is never lost to a re-upload).
    /// `name_taken` (409) if a view has the name.
    /// Returns the new record and the previous version's location, if any.
    async fn put_table(&self, v: &NewTableVersion) -> Result<(TableRecord, Option<String>)>;
    async fn list_tables(&self, tenant: TenantId) -> Result<Vec<TableRecord>>;
    async fn table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>>;
    /// Removes the table from the catalog; returns it (for its files) if it existed.
    async fn delete_table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>>;
    /// Points a table at a re-encrypted copy of its current files (data-key rotation): its
    /// location, DEK version and size change, nothing else (same rows, version and labels).
    /// `false` when it is no longer at `from_location` (replaced or deleted meanwhile: the
    /// copy is to be discarded).
    async fn rekey_table(&self, r: &TableRekey) -> Result<bool>;
    /// Applies a scan of version `version` of a table: each listed column not labelled by hand
    /// takes the listed label (a scanner proposal, or unclassified when the scanner was unsure);
    /// manual labels stay. One transaction. `Ok(None)` if
    /// the table does not exist; `table_changed` (409) if it is no longer at `version` (the scan
    /// read an older version: scan again).
    async fn apply_scan(&self, tenant: TenantId, table: &str, version: i64, columns: &[ColumnRecord]) -> Result<Option<TableRecord>>;
    /// Creates a view or replaces its SQL (version + 1). `name_taken` (409) if a table has the
    /// name: tables and views share one namespace.
    async fn put_view(&self, v: &NewView) -> Result<ViewRecord>;
    async fn list_views(&self, tenant: TenantId) -> Result<Vec<ViewRecord>>;
    /// Removes a view; returns it if it existed.
    async fn delete_view(&self, tenant: TenantId, name: &str) -> Result<Option<ViewRecord>>;
    /// Sets a manual label; `Ok(None)` if the table or column does not exist.
    async fn set_column_label(&self, tenant: TenantId, table: &str, column: &str, label: &ColumnLabel) -> Result<Option<ColumnRecord>>;

    /// Liveness of the store, for `/readyz`.
    async fn ping(&self) -> Result<()>;

    /// Tries, from `tenant`'s scope, to read what belongs to every other tenant (rows, audit
    /// trails and, on PostgreSQL, schemas, as the runtime role with raw SQL, bypassing moat's
    /// own filters) and reports each attempt. Provisioning runs it; so does
    /// `moat tenant validate`. Store errors are errors; a failed check is a report.
    async fn validate_isolation(&self, tenant: TenantId) -> Result<IsolationReport>;
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn create_session(&self, s: &NewSession, refresh_hash: &str, refresh_expires_at: UnixSeconds) -> Result<()>;
    /// Everything needed to accept an access token, in one lookup.
    async fn session_auth_state(&self, tenant: Option<TenantId>, session: SessionId, user: UserId) -> Result<Option<AuthState>>;
    /// Rotates a refresh token: marks the presented one used and stores its successor, or
    /// reports reuse (and revokes the whole family) if it had been used before.
    async fn rotate_refresh(
        &self,
        presented_hash: &str,
        successor_hash: &str,
        successor_expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<RefreshOutcome>;
    async fn revoke_session(&self, tenant: Option<TenantId>, session: SessionId, reason: &str, now: UnixSeconds) -> Result<bool>;
    /// Revokes every live session of a user (disable, password change).
    async fn revoke_user_sessions(&self, tenant: Option<TenantId>, user: UserId, reason: &str, now: UnixSeconds) -> Result<u64>;
}

/// The audit trail: one transparency log per trail (a tenant, or `platform`). Appends come
/// from the group-commit writer ([`audit_log::AuditLog`]); everything else reads.
/// A tenant's own relations in the store's database (PostgreSQL: schema `tenant_{uuid}`), read
/// as the tenant's role in read-only transactions. Only the PostgreSQL store has them.
#[async_trait]
pub trait TenantRelations: Send + Sync {
    /// The relation's columns as the tenant's role sees them; `None` when it sees no such
    /// relation in the tenant's schema.
    async fn describe(&self, t: TenantId, relation: &str) -> Result<Option<RelationInfo>>;
    /// Streams the rows of `select` — one SELECT over the tenant's schema, built from quoted
    /// identifiers with `$n` placeholders for `params` — as the tenant's role, read-only, within
    /// `timeout`. A failure arrives in place of a row; dropping the receiver stops the read.
    async fn read(
        &self,
        t: TenantId,
        select: String,
        params: Vec<SqlValue>,
        timeout: std::time::Duration,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<sqlx::postgres::PgRow>>>;
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends a batch in one transaction: each entry gets the next sequence number of its
    /// trail, its canonical bytes, leaf hash and HMAC under `keys`; the trails' Merkle nodes and
    /// frontiers move with them. All or nothing; durable when this returns.
    async fn append_batch(&self, batch: &[NewAuditEntry], keys: &AuditKeys) -> Result<Vec<Appended>>;
    /// Appends a batch whose entries may live in several databases (a tenant's dedicated one:
    /// `routed`): one result per entry, all or nothing per database. One database: the
    /// batch's outcome for every entry.
    async fn append_each(&self, batch: &[NewAuditEntry], keys: &AuditKeys) -> Vec<Result<Appended>> {
        match self.append_batch(batch, keys).await {
            Ok(done) if done.len() == batch.len() => done.into_iter().map(Ok).collect(),
            Ok(_) => batch.iter().map(|_| Err(moat_core::MoatError::internal("audit_append_mismatch"))).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    /// Search, oldest first.
    async fn list(&self, trail: Option<TenantId>, filter: &AuditFilter) -> Result<Vec<AuditRecord>>;
    /// Size and root of a trail as the store keeps them (empty tree if it has no records).
    async fn trail_head(&self, trail: &str) -> Result<TrailHead>;
    /// Every trail with its head, for the checkpointer.
    async fn trail_heads(&self) -> Result<Vec<(String, TrailHead)>>;
    /// Stored hashes of the given nodes (level 0 = leaves); missing ones are left out.
    async fn nodes(&self, trail: &str, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>>;
    /// Rows with `seq > after`, in order, at most `limit`; a record removed by retention is a
    /// row with `pruned` set and its leaf hash.
    async fn entries(&self, trail: &str, after: i64, limit: u32) -> Result<Vec<StoredEntry>>;
    /// Records a signed checkpoint (idempotent for the same trail and size).
    async fn put_checkpoint(&self, cp: &CheckpointRecord) -> Result<()>;
    async fn latest_checkpoint(&self, trail: &str) -> Result<Option<CheckpointRecord>>;
    /// Checkpoints with `size > after_size`, oldest first, at most `limit`.
    async fn checkpoints(&self, trail: &str, after_size: u64, limit: u32) -> Result<Vec<CheckpointRecord>>;
    /// Per sealed segment (seq ≤ `through_seq`, `segment_records` per segment) and category:
    /// the records still present, for retention planning.
    async fn segment_categories(&self, trail: &str, through_seq: i64, segment_records: u64) -> Result<Vec<SegmentCategory>>;
    /// The seqs of the records of `category` still present in `first ..= last` (never those of
    /// `audit.retention` records), ascending.
    async fn category_seqs(&self, trail: &str, first: i64, last: i64, category: &str) -> Result<Vec<i64>>;
    /// Carries out a prune in one transaction: records it, keeps the leaf hashes of the
    /// records it removes, removes them and their search entries. `retention_mismatch` if the
    /// records present are not exactly `count` (nothing is removed then); removing records
    /// already gone is a no-op that returns 0.
    async fn prune(&self, p: &Prune) -> Result<u64>;
    /// Prunes carried out on a trail, oldest first.
    async fn prunes(&self, trail: &str) -> Result<Vec<Prune>>;

    // --- event forwarding (bookkeeping beside the log, not part of it) ---
    /// Leases `trail`'s cursor in event sink `sink` to `owner` until `until_ms` when the lease
    /// is `owner`'s already, expired (before `now_ms`) or the cursor is new (it then starts at
    /// `start`); the last seq published, or `None` while another owner holds the lease.
    async fn lease_cursor(&self, sink: &str, trail: &str, owner: &str, now_ms: i64, until_ms: i64, start: i64) -> Result<Option<i64>>;
    /// Moves `owner`'s cursor forward to `seq` (never back); false when `owner` no longer
    /// holds the lease (nothing changes then).
    async fn advance_cursor(&self, sink: &str, trail: &str, owner: &str, seq: i64) -> Result<bool>;
    /// Every cursor of `sink`: (trail, last seq published).
    async fn cursors(&self, sink: &str) -> Result<Vec<(String, i64)>>;
    /// Carries records of an older trail format into the log (once, at start-up); how many.
    async fn import_legacy(&self, _keys: &AuditKeys) -> Result<u64> {
        Ok(0)
    }
}

/// The backends a server runs on.
#[derive(Clone)]
pub struct Stores {
    pub meta: Arc<dyn MetaStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub audit: Arc<dyn AuditStore>,
    /// Tenants' own relations as query sources (PostgreSQL only).
    pub relations: Option<Arc<dyn TenantRelations>>,
}

impl Stores {
    /// One backend serving all three traits.
    pub fn from_backend<B: MetaStore + SessionStore + AuditStore + 'static>(b: B) -> Self {
        let b = Arc::new(b);
        Self { meta: b.clone(), sessions: b.clone(), audit: b, relations: None }
    }

    pub fn from_sqlite(s: sqlite::SqliteStore) -> Self {
        Self::from_backend(s)
    }
}

/// Opens the store named by a URL (`sqlite://path`, `postgres://…`).
pub async fn open(url: &str) -> Result<Stores> {
    open_with(url, None).await
}

/// Opens the store named by a URL; on PostgreSQL, `admin_url` names the owner role that
/// migrates (the runtime role otherwise).
pub async fn open_with(url: &str, admin_url: Option<&str>) -> Result<Stores> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Stores::from_sqlite(sqlite::SqliteStore::open(std::path::Path::new(path)).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // Tenants with a database of their own are routed there (`routed`).
        let pg = Arc::new(routed::RoutedStore::new(postgres::PgStore::open(url, admin_url).await?));
        return Ok(Stores { meta: pg.clone(), sessions: pg.clone(), audit: pg.clone(), relations: Some(pg) });
    }
    Err(moat_core::MoatError::invalid(
        "unsupported_store",
        format!("store.url: unsupported scheme in {:?} (sqlite:// or postgres://)", url.split("://").next().unwrap_or("")),
    ))
}

/// Helper for slugs already validated at the edge.
pub fn slug_str(s: &Slug) -> &str {
    s.as_str()
}
