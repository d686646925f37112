//! The embedded SQLite backend: one file in the data dir, WAL journal, `synchronous=FULL` so a
//! committed write (an acknowledged audit record, a created user) survives a crash.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::apikey::{LAST_USED_GRANULARITY_S, StoredKey};
use moat_core::audit::{Actor, AuditEvent, AuditKeys, TrailMac, trail_name, trail_tenant};
use moat_core::audit_retention::RETENTION_ACTION;
use moat_core::clock::UnixSeconds;
use moat_core::ids::{ApiKeyId, Email, SessionId, TenantId, UserId};
use moat_core::lockout::{FailureOutcome, LockoutPolicy, LockoutState};
use moat_core::permission::Permission;
use moat_core::role::Role;
use moat_core::tlog::{Frontier, Hash, NodeId};
use moat_core::{MoatError, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::shared::{
    LEASE_CURSOR, audit_unavailable, checkpoint_record, column_record, corrupt, frontier_of, hash_of, like_escape, prune_record,
    retention_mismatch, seal_entry, search_words, segment_category, stored_entries, tenant_key_record,
};
use crate::sqlite_search::{SearchIndex, search_rowid};
use crate::*;

/// Migrations, applied in order, each once, inside a transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "foundation", include_str!("../migrations/sqlite/0001_foundation.sql")),
    (2, "tenant_password_policy", include_str!("../migrations/sqlite/0002_tenant_password_policy.sql")),
    (3, "catalog", include_str!("../migrations/sqlite/0003_catalog.sql")),
    (4, "tenant_settings", include_str!("../migrations/sqlite/0004_tenant_settings.sql")),
    (5, "catalog_views", include_str!("../migrations/sqlite/0005_catalog_views.sql")),
    (6, "audit_tlog", include_str!("../migrations/sqlite/0006_audit_tlog.sql")),
    (7, "audit_retention", include_str!("../migrations/sqlite/0007_audit_retention.sql")),
    (8, "audit_search_apart", include_str!("../migrations/sqlite/0008_audit_search_apart.sql")),
    (9, "event_cursors", include_str!("../migrations/sqlite/0009_event_cursors.sql")),
    (10, "tenant_keys", include_str!("../migrations/sqlite/0010_tenant_keys.sql")),
    (11, "user_mfa", include_str!("../migrations/sqlite/0011_user_mfa.sql")),
];

pub struct SqliteStore {
    pool: SqlitePool,
    /// The audit log's full-text index, in a file of its own.
    search: SearchIndex,
}

/// Maps a database error to a product error, logging the cause (never sent to the caller).
fn db_err(e: sqlx::Error) -> MoatError {
    tracing::error!(error = %e, "store error");
    MoatError::internal("store_error")
}

/// A unique-constraint violation is the caller's duplicate (409); anything else is ours.
fn conflict_or_db(e: sqlx::Error, code: &'static str, message: impl FnOnce() -> String) -> MoatError {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => MoatError::conflict(code, message()),
        other => db_err(other),
    }
}

fn platform_key(t: Option<TenantId>) -> String {
    t.map_or_else(|| "platform".to_owned(), |t| t.to_string())
}

/// How often the background task copies the WAL back into the database.
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database (PASSIVE: never blocks a writer or a reader),
/// until the pool closes. Once everything is copied, the next commit starts the WAL over, so it
/// stays small.
async fn wal_checkpoints(pool: SqlitePool) {
    while !pool.is_closed() {
        tokio::time::sleep(WAL_CHECKPOINT_EVERY).await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await
    .map_err(db_err)?;
    for (version, name, sql) in MIGRATIONS {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let done: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(db_err)?;
        sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, strftime('%s','now'))")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
    }
    Ok(())
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // The WAL is copied back into the database by a background task, not by whichever
            // commit happens to cross the threshold (that commit would wait for the copy and its
            // fsync: the audit writer's p99).
            .pragma("wal_autocheckpoint", "0");
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(|e| MoatError::unavailable("store_unavailable", format!("cannot open the store at {}: {e}", path.display())))?;
        migrate(&pool).await?;
        tokio::spawn(wal_checkpoints(pool.clone()));
        let search = SearchIndex::open(path).await?;
        search.spawn();
        Ok(Self { pool, search })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Writes a consistent copy of the database to `dest` (a new file) while writers go on:
    /// `VACUUM INTO` reads one snapshot. The full-text index is not copied (it is rebuilt
    /// from the log).
    pub async fn snapshot_into(&self, dest: &Path) -> Result<()> {
        let dest = dest.to_str().ok_or_else(|| MoatError::invalid("bad_path", format!("{}: not UTF-8", dest.display())))?;
        sqlx::query("VACUUM INTO ?").bind(dest).execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    /// Copies the WAL back and closes the database, leaving one self-contained file (a
    /// snapshot that is about to be archived or moved into place).
    pub async fn close(self) -> Result<()> {
        self.search.pool().close().await;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await.map_err(db_err)?;
        self.pool.close().await;
        Ok(())
    }
}

const LOCKOUT_SELECT: &str = "SELECT failures, stage, locked_until, admin_locked FROM login_lockout WHERE scope_key = ? AND email = ?";

/// A lockout row, or the fresh state when there is none.
fn lockout_from_row(row: Option<SqliteRow>) -> LockoutState {
    row.map_or_else(LockoutState::default, |r| LockoutState {
        failures: r.get::<i64, _>("failures") as u32,
        stage: r.get::<i64, _>("stage") as u32,
        locked_until: r.get("locked_until"),
        admin_locked: r.get::<i64, _>("admin_locked") != 0,
    })
}

/// A nullable tenant-id column (`NULL` = platform).
fn opt_tenant(v: Option<String>, what: &str) -> Result<Option<TenantId>> {
    v.map(|t| TenantId::parse(&t).ok_or_else(|| corrupt(what))).transpose()
}

fn column_from_row(r: &SqliteRow) -> ColumnRecord {
    column_record!(r)
}

async fn load_columns(conn: &mut sqlx::SqliteConnection, table_id: &str) -> Result<Vec<ColumnRecord>> {
    let rows = sqlx::query("SELECT * FROM catalog_columns WHERE table_id = ? ORDER BY ordinal")
        .bind(table_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(column_from_row).collect())
}

/// The catalog row of a tenant's table, by name.
async fn table_row(conn: &mut sqlx::SqliteConnection, tenant: TenantId, name: &str) -> Result<Option<SqliteRow>> {
    sqlx::query("SELECT * FROM catalog_tables WHERE tenant_id = ? AND name = ?")
        .bind(tenant.to_string())
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)
}

fn view_from_row(r: &SqliteRow) -> Result<ViewRecord> {
    let tenant: String = r.get("tenant_id");
    Ok(ViewRecord {
        id: r.get("id"),
        tenant_id: TenantId::parse(&tenant).ok_or_else(|| corrupt("view tenant"))?,
        name: r.get("name"),
        sql: r.get("sql"),
        description: r.get("description"),
        created_by: r.get("created_by"),
        version: r.get("version"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    })
}

/// The catalog objects that share one name space per tenant.
#[derive(Clone, Copy)]
enum Named {
    Table,
    View,
}

/// Tables and views share one name space per tenant: `name_taken` if a `kind` already has
/// `name`. Call inside the writing transaction.
async fn name_free_of(conn: &mut sqlx::SqliteConnection, kind: Named, tenant: TenantId, name: &str) -> Result<()> {
    let (sql, what) = match kind {
        Named::Table => ("SELECT 1 FROM catalog_tables WHERE tenant_id = ? AND name = ?", "a table"),
        Named::View => ("SELECT 1 FROM catalog_views WHERE tenant_id = ? AND name = ?", "a view"),
    };
    let taken = sqlx::query(sql).bind(tenant.to_string()).bind(name).fetch_optional(&mut *conn).await.map_err(db_err)?.is_some();
    if taken {
        return Err(MoatError::conflict("name_taken", format!("{what} is already named {name:?}; tables and views share one name space")));
    }
    Ok(())
}

fn table_from_row(r: &SqliteRow, columns: Vec<ColumnRecord>) -> Result<TableRecord> {
    let tenant: String = r.get("tenant_id");
    Ok(TableRecord {
        id: r.get("id"),
        tenant_id: TenantId::parse(&tenant).ok_or_else(|| corrupt("table tenant"))?,
        name: r.get("name"),
        domain: r.get("domain"),
        product: r.get("product"),
        version: r.get("version"),
        location: r.get("location"),
        row_count: r.get("row_count"),
        bytes: r.get("bytes"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        columns,
        dek_version: dek_version(r.get("dek_version"))?,
    })
}

fn dek_version(v: Option<i64>) -> Result<Option<u32>> {
    v.map(|v| u32::try_from(v).map_err(|_| corrupt("table key version"))).transpose()
}

fn tenant_from_row(r: &SqliteRow) -> Result<TenantRecord> {
    let id: String = r.get("id");
    let status: String = r.get("status");
    Ok(TenantRecord {
        id: TenantId::parse(&id).ok_or_else(|| corrupt("tenant id"))?,
        slug: r.get("slug"),
        name: r.get("name"),
        status: if status == "active" { TenantStatus::Active } else { TenantStatus::Suspended },
        created_at: r.get("created_at"),
        database: None,
    })
}

fn user_from_row(r: &SqliteRow) -> Result<UserRecord> {
    let id: String = r.get("id");
    let tenant: Option<String> = r.get("tenant_id");
    let email: String = r.get("email");
    let role: String = r.get("role");
    let status: String = r.get("status");
    Ok(UserRecord {
        id: UserId::parse(&id).ok_or_else(|| corrupt("user id"))?,
        tenant_id: opt_tenant(tenant, "user tenant")?,
        email: Email::parse(&email).map_err(|_| corrupt("user email"))?,
        role: Role::parse(&role).map_err(|_| corrupt("user role"))?,
        status: if status == "active" { UserStatus::Active } else { UserStatus::Disabled },
        password_hash: r.get("password_hash"),
        created_at: r.get("created_at"),
        mfa: r.get::<Option<Vec<u8>>, _>("mfa_secret").map(|sealed| UserMfa {
            sealed,
            enabled_at: r.get("mfa_enabled_at"),
            last_step: r.get("mfa_last_step"),
        }),
    })
}

fn key_from_row(r: &SqliteRow) -> Result<ApiKeyRecord> {
    let id: String = r.get("id");
    let user: String = r.get("user_id");
    let scopes: String = r.get("scopes");
    Ok(ApiKeyRecord {
        id: ApiKeyId::parse(&id).ok_or_else(|| corrupt("key id"))?,
        user_id: UserId::parse(&user).ok_or_else(|| corrupt("key user"))?,
        name: r.get("name"),
        display_hint: r.get("display_hint"),
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("key scopes"))?,
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
    })
}

async fn insert_user(conn: &mut sqlx::SqliteConnection, u: &NewUser) -> Result<UserRecord> {
    let res = sqlx::query(
        "INSERT INTO users (id, tenant_id, email, role, status, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
    )
    .bind(u.id.to_string())
    .bind(u.tenant_id.map(|t| t.to_string()))
    .bind(u.email.as_str())
    .bind(u.role.as_str())
    .bind(&u.password_hash)
    .bind(u.now)
    .bind(u.now)
    .execute(&mut *conn)
    .await;
    res.map_err(|e| conflict_or_db(e, "user_exists", || format!("a user with email {} already exists", u.email)))?;
    Ok(UserRecord {
        id: u.id,
        tenant_id: u.tenant_id,
        email: u.email.clone(),
        role: u.role,
        status: UserStatus::Active,
        password_hash: u.password_hash.clone(),
        created_at: u.now,
        mfa: None,
    })
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn create_tenant(&self, t: &NewTenant, first_admin: Option<&NewUser>) -> Result<TenantRecord> {
        if t.database.is_some() {
            return Err(MoatError::invalid(
                "dedicated_database_unsupported",
                "a tenant database of its own needs the PostgreSQL store (store.url = \"postgres://…\"); the embedded store keeps every tenant in its one file",
            ));
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let res = sqlx::query("INSERT INTO tenants (id, slug, name, status, created_at, updated_at) VALUES (?, ?, ?, 'active', ?, ?)")
            .bind(t.id.to_string())
            .bind(t.slug.as_str())
            .bind(&t.name)
            .bind(t.now)
            .bind(t.now)
            .execute(&mut *tx)
            .await;
        res.map_err(|e| conflict_or_db(e, "tenant_exists", || format!("tenant {} already exists", t.slug)))?;
        if let Some(admin) = first_admin {
            insert_user(&mut tx, admin).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(t.record())
    }

    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>> {
        let row = sqlx::query("SELECT * FROM tenants WHERE slug = ?").bind(slug).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
        let row =
            sqlx::query("SELECT * FROM tenants WHERE id = ?").bind(id.to_string()).fetch_optional(&self.pool).await.map_err(db_err)?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY slug").fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(tenant_from_row).collect()
    }

    async fn set_tenant_status(&self, id: TenantId, status: TenantStatus, now: UnixSeconds) -> Result<bool> {
        let r = sqlx::query("UPDATE tenants SET status = ?, updated_at = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(now)
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn tenant_setting(&self, tenant: TenantId, key: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT value FROM tenant_settings WHERE tenant_id = ? AND key = ?")
            .bind(tenant.to_string())
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn set_tenant_setting(&self, tenant: TenantId, key: &str, value: &str, now: UnixSeconds) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO tenant_settings (tenant_id, key, value, updated_at) SELECT id, ?, ?, ? FROM tenants WHERE id = ?
             ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .bind(now)
        .bind(tenant.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn add_tenant_key(&self, k: &NewTenantKey) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO tenant_keys (tenant_id, version, kek, wrapped, created_at) SELECT id, ?, ?, ?, ? FROM tenants WHERE id = ?
             ON CONFLICT (tenant_id, version) DO NOTHING",
        )
        .bind(i64::from(k.version))
        .bind(&k.kek)
        .bind(&k.wrapped)
        .bind(k.now)
        .bind(k.tenant_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn tenant_keys(&self, tenant: TenantId) -> Result<Vec<TenantKeyRecord>> {
        let rows = sqlx::query("SELECT * FROM tenant_keys WHERE tenant_id = ? ORDER BY version")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(|r| tenant_key_record!(r, tenant, i64)).collect()
    }

    async fn rewrap_tenant_key(&self, tenant: TenantId, version: u32, kek: &str, wrapped: &[u8]) -> Result<bool> {
        let r = sqlx::query("UPDATE tenant_keys SET kek = ?, wrapped = ? WHERE tenant_id = ? AND version = ? AND destroyed_at IS NULL")
            .bind(kek)
            .bind(wrapped)
            .bind(tenant.to_string())
            .bind(i64::from(version))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn shred_tenant_keys(&self, tenant: TenantId, now: UnixSeconds) -> Result<u64> {
        let r = sqlx::query("UPDATE tenant_keys SET wrapped = NULL, destroyed_at = ? WHERE tenant_id = ? AND destroyed_at IS NULL")
            .bind(now)
            .bind(tenant.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected())
    }

    async fn create_user(&self, u: &NewUser) -> Result<UserRecord> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        insert_user(&mut conn, u).await
    }

    async fn user_by_email(&self, tenant: Option<TenantId>, email: &Email) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE COALESCE(tenant_id, 'platform') = ? AND email = ?")
            .bind(platform_key(tenant))
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, tenant: Option<TenantId>, id: UserId) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE COALESCE(tenant_id, 'platform') = ? AND id = ?")
            .bind(platform_key(tenant))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, tenant: Option<TenantId>) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query("SELECT * FROM users WHERE COALESCE(tenant_id, 'platform') = ? ORDER BY email")
            .bind(platform_key(tenant))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_user_status(&self, tenant: Option<TenantId>, id: UserId, status: UserStatus, now: UnixSeconds) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET status = ?, updated_at = ? WHERE COALESCE(tenant_id, 'platform') = ? AND id = ?")
            .bind(status.as_str())
            .bind(now)
            .bind(platform_key(tenant))
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_user_role(&self, tenant: TenantId, id: UserId, role: Role, now: UnixSeconds) -> Result<bool> {
        let r = sqlx::query("UPDATE users SET role = ?, updated_at = ? WHERE tenant_id = ? AND id = ?")
            .bind(role.as_str())
            .bind(now)
            .bind(tenant.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_password(&self, tenant: Option<TenantId>, id: UserId, new_hash: &str, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let old: Option<String> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE COALESCE(tenant_id, 'platform') = ? AND id = ?")
                .bind(platform_key(tenant))
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(old) = old else { return Ok(false) };
        sqlx::query("INSERT INTO password_history (user_id, password_hash, created_at) VALUES (?, ?, ?)")
            .bind(id.to_string())
            .bind(old)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?")
            .bind(new_hash)
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn set_mfa(&self, tenant: Option<TenantId>, id: UserId, change: MfaChange<'_>, now: UnixSeconds) -> Result<bool> {
        let (scope, id) = (platform_key(tenant), id.to_string());
        let q = match change {
            MfaChange::Enroll { sealed } => sqlx::query(
                "UPDATE users SET mfa_secret = ?, mfa_enabled_at = NULL, mfa_last_step = NULL, updated_at = ?
                 WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND mfa_enabled_at IS NULL",
            )
            .bind(sealed)
            .bind(now)
            .bind(scope)
            .bind(id),
            MfaChange::Confirm { from, to, step } => sqlx::query(
                "UPDATE users SET mfa_secret = ?, mfa_enabled_at = ?, mfa_last_step = ?, updated_at = ?
                 WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND mfa_enabled_at IS NULL AND mfa_secret = ?",
            )
            .bind(to)
            .bind(now)
            .bind(step)
            .bind(now)
            .bind(scope)
            .bind(id)
            .bind(from),
            MfaChange::UseStep { step } => sqlx::query(
                "UPDATE users SET mfa_last_step = ?
                 WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND mfa_enabled_at IS NOT NULL
                   AND (mfa_last_step IS NULL OR mfa_last_step < ?)",
            )
            .bind(step)
            .bind(scope)
            .bind(id)
            .bind(step),
            MfaChange::Replace { from, to } => {
                sqlx::query("UPDATE users SET mfa_secret = ? WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND mfa_secret = ?")
                    .bind(to)
                    .bind(scope)
                    .bind(id)
                    .bind(from)
            }
            MfaChange::Remove => sqlx::query(
                "UPDATE users SET mfa_secret = NULL, mfa_enabled_at = NULL, mfa_last_step = NULL, updated_at = ?
                 WHERE COALESCE(tenant_id, 'platform') = ? AND id = ?",
            )
            .bind(now)
            .bind(scope)
            .bind(id),
        };
        Ok(q.execute(&self.pool).await.map_err(db_err)?.rows_affected() == 1)
    }

    async fn password_history(&self, tenant: Option<TenantId>, id: UserId, n: usize) -> Result<Vec<String>> {
        let mut out: Vec<String> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE COALESCE(tenant_id, 'platform') = ? AND id = ?")
                .bind(platform_key(tenant))
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        if out.is_empty() {
            return Ok(out);
        }
        let older: Vec<String> =
            sqlx::query_scalar("SELECT password_hash FROM password_history WHERE user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?")
                .bind(id.to_string())
                .bind(n.saturating_sub(1) as i64)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
        out.extend(older);
        out.truncate(n);
        Ok(out)
    }

    async fn lockout_state(&self, scope_key: &str, email: &str) -> Result<LockoutState> {
        let row = sqlx::query(LOCKOUT_SELECT).bind(scope_key).bind(email).fetch_optional(&self.pool).await.map_err(db_err)?;
        Ok(lockout_from_row(row))
    }

    async fn record_login_failure(
        &self,
        scope_key: &str,
        email: &str,
        policy: &LockoutPolicy,
        now: UnixSeconds,
    ) -> Result<(FailureOutcome, LockoutState)> {
        // IMMEDIATE takes the write lock up front: concurrent failures are counted one by one.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let row = sqlx::query(LOCKOUT_SELECT).bind(scope_key).bind(email).fetch_optional(&mut *tx).await.map_err(db_err)?;
        let mut s = lockout_from_row(row);
        let outcome = policy.record_failure(&mut s, now);
        sqlx::query(
            "INSERT INTO login_lockout (scope_key, email, failures, stage, locked_until, admin_locked, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (scope_key, email) DO UPDATE SET failures = excluded.failures, stage = excluded.stage,
             locked_until = excluded.locked_until, admin_locked = excluded.admin_locked, updated_at = excluded.updated_at",
        )
        .bind(scope_key)
        .bind(email)
        .bind(s.failures as i64)
        .bind(s.stage as i64)
        .bind(s.locked_until)
        .bind(s.admin_locked as i64)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok((outcome, s))
    }

    async fn clear_lockout(&self, scope_key: &str, email: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_lockout WHERE scope_key = ? AND email = ?")
            .bind(scope_key)
            .bind(email)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn create_api_key(&self, k: &NewApiKey) -> Result<ApiKeyRecord> {
        let scopes = serde_json::to_string(&k.scopes).map_err(|_| MoatError::internal("encode_scopes"))?;
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, user_id, name, key_hash, display_hint, scopes, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(k.id.to_string())
        .bind(k.tenant_id.map(|t| t.to_string()))
        .bind(k.user_id.to_string())
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(&k.display_hint)
        .bind(scopes)
        .bind(k.now)
        .bind(k.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(ApiKeyRecord {
            id: k.id,
            user_id: k.user_id,
            name: k.name.clone(),
            display_hint: k.display_hint.clone(),
            scopes: k.scopes.clone(),
            created_at: k.now,
            expires_at: k.expires_at,
            last_used_at: None,
            revoked_at: None,
        })
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<StoredKey>> {
        let row = sqlx::query(
            "SELECT k.id, k.tenant_id, k.user_id, k.scopes, k.expires_at, k.revoked_at, k.last_used_at, u.email, u.role, u.status AS user_status,
                    t.status AS tenant_status
             FROM api_keys k JOIN users u ON u.id = k.user_id LEFT JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = ? AND COALESCE(u.tenant_id, 'platform') = COALESCE(k.tenant_id, 'platform')",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let id: String = r.get("id");
        let tenant: Option<String> = r.get("tenant_id");
        let user: String = r.get("user_id");
        let scopes: String = r.get("scopes");
        let scopes: Vec<String> = serde_json::from_str(&scopes).map_err(|_| corrupt("key scopes"))?;
        let email: String = r.get("email");
        let role: String = r.get("role");
        let user_status: String = r.get("user_status");
        let tenant_status: Option<String> = r.get("tenant_status");
        let revoked_at: Option<i64> = r.get("revoked_at");
        Ok(Some(StoredKey {
            id: ApiKeyId::parse(&id).ok_or_else(|| corrupt("key id"))?,
            tenant_id: opt_tenant(tenant, "key tenant")?,
            user_id: UserId::parse(&user).ok_or_else(|| corrupt("key user"))?,
            email: Email::parse(&email).map_err(|_| corrupt("key email"))?,
            role: Role::parse(&role).map_err(|_| corrupt("key role"))?,
            // A scope that no longer parses is dropped: the key loses power, never gains it.
            scopes: scopes.iter().filter_map(|s| Permission::parse(s).ok()).collect(),
            expires_at: r.get("expires_at"),
            revoked: revoked_at.is_some(),
            user_active: user_status == "active",
            tenant_active: tenant_status.as_deref().is_none_or(|s| s == "active"),
            last_used_at: r.get("last_used_at"),
        }))
    }

    async fn touch_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, now: UnixSeconds) -> Result<()> {
        // At most one write a minute per key: last-used is coarse, requests stay read-only.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = ? WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        )
        .bind(now)
        .bind(platform_key(tenant))
        .bind(id.to_string())
            .bind(now - LAST_USED_GRANULARITY_S)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn list_api_keys(&self, tenant: Option<TenantId>, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE COALESCE(tenant_id, 'platform') = ? AND (? IS NULL OR user_id = ?) ORDER BY created_at, id",
        )
        .bind(platform_key(tenant))
        .bind(user.map(|u| u.to_string()))
        .bind(user.map(|u| u.to_string()))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, user: Option<UserId>, now: UnixSeconds) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND (? IS NULL OR user_id = ?)",
        )
        .bind(now)
        .bind(platform_key(tenant))
        .bind(id.to_string())
        .bind(user.map(|u| u.to_string()))
        .bind(user.map(|u| u.to_string()))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_table(&self, v: &NewTableVersion) -> Result<(TableRecord, Option<String>)> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let existing = table_row(&mut tx, v.tenant_id, &v.name).await?;
        if existing.is_none() {
            name_free_of(&mut tx, Named::View, v.tenant_id, &v.name).await?;
        }
        let (id, version, created_at, previous, old_columns) = match &existing {
            Some(r) => {
                let id: String = r.get("id");
                let cols = load_columns(&mut tx, &id).await?;
                (id, r.get::<i64, _>("version") + 1, r.get::<i64, _>("created_at"), Some(r.get::<String, _>("location")), cols)
            }
            None => (uuid::Uuid::now_v7().to_string(), 1, v.now, None, Vec::new()),
        };
        let columns: Vec<ColumnRecord> = v.columns.iter().map(|c| carry_label(old_columns.iter().find(|o| o.name == c.name), c)).collect();
        if existing.is_some() {
            sqlx::query("UPDATE catalog_tables SET domain = ?, product = ?, version = ?, location = ?, row_count = ?, bytes = ?, updated_at = ?, dek_version = ? WHERE id = ?")
                .bind(&v.domain)
                .bind(&v.product)
                .bind(version)
                .bind(&v.location)
                .bind(v.row_count)
                .bind(v.bytes)
                .bind(v.now)
                .bind(v.dek_version.map(i64::from))
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query("DELETE FROM catalog_columns WHERE table_id = ?").bind(&id).execute(&mut *tx).await.map_err(db_err)?;
        } else {
            sqlx::query(
                "INSERT INTO catalog_tables (id, tenant_id, name, domain, product, version, location, row_count, bytes, created_at, updated_at, dek_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(v.tenant_id.to_string())
            .bind(&v.name)
            .bind(&v.domain)
            .bind(&v.product)
            .bind(version)
            .bind(&v.location)
            .bind(v.row_count)
            .bind(v.bytes)
            .bind(v.now)
            .bind(v.now)
            .bind(v.dek_version.map(i64::from))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        for (i, c) in columns.iter().enumerate() {
            sqlx::query(
                "INSERT INTO catalog_columns (table_id, ordinal, name, data_type, classification, pii, entity, confidence, source, mask) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&id)
            .bind(i as i64)
            .bind(&c.name)
            .bind(&c.data_type)
            .bind(&c.classification)
            .bind(&c.pii)
            .bind(&c.entity)
            .bind(c.confidence)
            .bind(&c.source)
            .bind(&c.mask)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        let rec = TableRecord {
            id,
            tenant_id: v.tenant_id,
            name: v.name.clone(),
            domain: v.domain.clone(),
            product: v.product.clone(),
            version,
            location: v.location.clone(),
            row_count: v.row_count,
            bytes: v.bytes,
            created_at,
            updated_at: v.now,
            columns,
            dek_version: v.dek_version,
        };
        Ok((rec, previous))
    }

    async fn list_tables(&self, tenant: TenantId) -> Result<Vec<TableRecord>> {
        // Two queries whatever the number of tables (this runs before every query), read in one
        // transaction so tables and columns agree.
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let rows = sqlx::query("SELECT * FROM catalog_tables WHERE tenant_id = ? ORDER BY name")
            .bind(tenant.to_string())
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let cols = sqlx::query(
            "SELECT c.* FROM catalog_columns c JOIN catalog_tables t ON t.id = c.table_id WHERE t.tenant_id = ? ORDER BY c.table_id, c.ordinal",
        )
        .bind(tenant.to_string())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut by_table: std::collections::HashMap<String, Vec<ColumnRecord>> = std::collections::HashMap::new();
        for c in &cols {
            by_table.entry(c.get("table_id")).or_default().push(column_from_row(c));
        }
        rows.iter()
            .map(|r| {
                let id: String = r.get("id");
                table_from_row(r, by_table.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    async fn table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>> {
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        let row = table_row(&mut conn, tenant, name).await?;
        let Some(r) = row else { return Ok(None) };
        let id: String = r.get("id");
        let cols = load_columns(&mut conn, &id).await?;
        Ok(Some(table_from_row(&r, cols)?))
    }

    async fn rekey_table(&self, r: &TableRekey) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE catalog_tables SET location = ?, dek_version = ?, bytes = ? WHERE tenant_id = ? AND name = ? AND location = ?",
        )
        .bind(&r.to_location)
        .bind(i64::from(r.dek_version))
        .bind(r.bytes)
        .bind(r.tenant_id.to_string())
        .bind(&r.name)
        .bind(&r.from_location)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>> {
        let Some(t) = self.table(tenant, name).await? else { return Ok(None) };
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        sqlx::query("DELETE FROM catalog_columns WHERE table_id = ?").bind(&t.id).execute(&mut *tx).await.map_err(db_err)?;
        let r = sqlx::query("DELETE FROM catalog_tables WHERE id = ? AND tenant_id = ?")
            .bind(&t.id)
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok((r.rows_affected() == 1).then_some(t))
    }

    async fn apply_scan(&self, tenant: TenantId, table: &str, version: i64, columns: &[ColumnRecord]) -> Result<Option<TableRecord>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let Some(row) = table_row(&mut tx, tenant, table).await? else {
            return Ok(None);
        };
        if row.get::<i64, _>("version") != version {
            return Err(MoatError::conflict(
                "table_changed",
                format!("the table has a newer version than the scanned one ({version}); scan again"),
            ));
        }
        let id: String = row.get("id");
        for c in columns.iter().filter(|c| c.source != "manual") {
            sqlx::query(
                "UPDATE catalog_columns SET classification = ?, pii = ?, entity = ?, confidence = ?, source = ?, mask = ?
                 WHERE table_id = ? AND name = ? AND data_type = ? AND source <> 'manual'",
            )
            .bind(&c.classification)
            .bind(&c.pii)
            .bind(&c.entity)
            .bind(c.confidence)
            .bind(&c.source)
            .bind(&c.mask)
            .bind(&id)
            .bind(&c.name)
            .bind(&c.data_type)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        let cols = load_columns(&mut tx, &id).await?;
        let rec = table_from_row(&row, cols)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(rec))
    }

    async fn put_view(&self, v: &NewView) -> Result<ViewRecord> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        name_free_of(&mut tx, Named::Table, v.tenant_id, &v.name).await?;
        let existing = sqlx::query("SELECT id, version, created_at FROM catalog_views WHERE tenant_id = ? AND name = ?")
            .bind(v.tenant_id.to_string())
            .bind(&v.name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let (id, version, created_at) = match &existing {
            Some(r) => (r.get::<String, _>("id"), r.get::<i64, _>("version") + 1, r.get::<i64, _>("created_at")),
            None => (uuid::Uuid::now_v7().to_string(), 1, v.now),
        };
        sqlx::query(
            "INSERT INTO catalog_views (id, tenant_id, name, sql, description, created_by, version, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET sql = excluded.sql, description = excluded.description, created_by = excluded.created_by,
                 version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(&id)
        .bind(v.tenant_id.to_string())
        .bind(&v.name)
        .bind(&v.sql)
        .bind(&v.description)
        .bind(&v.created_by)
        .bind(version)
        .bind(created_at)
        .bind(v.now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(ViewRecord {
            id,
            tenant_id: v.tenant_id,
            name: v.name.clone(),
            sql: v.sql.clone(),
            description: v.description.clone(),
            created_by: v.created_by.clone(),
            version,
            created_at,
            updated_at: v.now,
        })
    }

    async fn list_views(&self, tenant: TenantId) -> Result<Vec<ViewRecord>> {
        let rows = sqlx::query("SELECT * FROM catalog_views WHERE tenant_id = ? ORDER BY name")
            .bind(tenant.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(view_from_row).collect()
    }

    async fn delete_view(&self, tenant: TenantId, name: &str) -> Result<Option<ViewRecord>> {
        let row = sqlx::query("DELETE FROM catalog_views WHERE tenant_id = ? AND name = ? RETURNING *")
            .bind(tenant.to_string())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(view_from_row).transpose()
    }

    async fn set_column_label(&self, tenant: TenantId, table: &str, column: &str, label: &ColumnLabel) -> Result<Option<ColumnRecord>> {
        let r = sqlx::query(
            "UPDATE catalog_columns SET classification = ?, pii = COALESCE(?, pii), entity = COALESCE(?, entity), mask = ?, source = 'manual', confidence = NULL
             WHERE name = ? AND table_id = (SELECT id FROM catalog_tables WHERE tenant_id = ? AND name = ?)",
        )
        .bind(&label.classification)
        .bind(&label.pii)
        .bind(&label.entity)
        .bind(&label.mask)
        .bind(column)
        .bind(tenant.to_string())
        .bind(table)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        if r.rows_affected() != 1 {
            return Ok(None);
        }
        Ok(self.table(tenant, table).await?.and_then(|t| t.columns.into_iter().find(|c| c.name == column)))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    async fn validate_isolation(&self, tenant: TenantId) -> Result<IsolationReport> {
        crate::isolation::application_checks(self, tenant).await
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(&self, s: &NewSession, refresh_hash: &str, refresh_expires_at: UnixSeconds) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, user_id, created_at, expires_at, source_ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.to_string())
        .bind(s.tenant_id.map(|t| t.to_string()))
        .bind(s.user_id.to_string())
        .bind(s.now)
        .bind(s.expires_at)
        .bind(&s.source_ip)
        .bind(&s.user_agent)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(refresh_hash)
            .bind(s.id.to_string())
            .bind(s.now)
            .bind(refresh_expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn session_auth_state(&self, tenant: Option<TenantId>, session: SessionId, user: UserId) -> Result<Option<AuthState>> {
        let row = sqlx::query(
            "SELECT s.revoked_at, s.expires_at, u.status AS user_status, u.role, u.email, t.status AS tenant_status
             FROM sessions s JOIN users u ON u.id = s.user_id LEFT JOIN tenants t ON t.id = s.tenant_id
             WHERE COALESCE(s.tenant_id, 'platform') = ? AND s.id = ? AND s.user_id = ?",
        )
        .bind(platform_key(tenant))
        .bind(session.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let revoked: Option<i64> = r.get("revoked_at");
        let role: String = r.get("role");
        let email: String = r.get("email");
        let user_status: String = r.get("user_status");
        let tenant_status: Option<String> = r.get("tenant_status");
        Ok(Some(AuthState {
            session_live: revoked.is_none(),
            user_active: user_status == "active",
            tenant_active: tenant_status.as_deref().is_none_or(|s| s == "active"),
            role: Role::parse(&role).map_err(|_| corrupt("user role"))?,
            email: Email::parse(&email).map_err(|_| corrupt("user email"))?,
        }))
    }

    async fn rotate_refresh(
        &self,
        presented_hash: &str,
        successor_hash: &str,
        successor_expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<RefreshOutcome> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let row = sqlx::query(
            "SELECT r.session_id, r.expires_at, r.used_at, s.revoked_at, s.expires_at AS session_expires_at, s.tenant_id, s.user_id
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = ?",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(RefreshOutcome::Invalid) };
        let sid: String = r.get("session_id");
        let session = SessionId::parse(&sid).ok_or_else(|| corrupt("session id"))?;
        let tenant: Option<String> = r.get("tenant_id");
        let tenant_id = opt_tenant(tenant, "session tenant")?;
        let user: String = r.get("user_id");
        let user_id = UserId::parse(&user).ok_or_else(|| corrupt("session user"))?;
        let used: Option<i64> = r.get("used_at");
        let revoked: Option<i64> = r.get("revoked_at");
        if used.is_some() {
            // RFC 9700 §4.14.2: a rotated refresh token came back — someone holds a copy.
            // Revoke the whole family, whether or not it was already revoked.
            sqlx::query("UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?), revoke_reason = COALESCE(revoke_reason, 'refresh_reuse') WHERE id = ?")
                .bind(now)
                .bind(&sid)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            return Ok(RefreshOutcome::Reused { session, tenant_id, user_id });
        }
        let expires: i64 = r.get("expires_at");
        let session_expires: i64 = r.get("session_expires_at");
        if revoked.is_some() || now >= expires || now >= session_expires {
            return Ok(RefreshOutcome::Invalid);
        }
        let marked = sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL")
            .bind(now)
            .bind(presented_hash)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if marked.rows_affected() != 1 {
            return Ok(RefreshOutcome::Invalid);
        }
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(successor_hash)
            .bind(&sid)
            .bind(now)
            .bind(successor_expires_at.min(session_expires))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(RefreshOutcome::Rotated { session, tenant_id, user_id })
    }

    async fn revoke_session(&self, tenant: Option<TenantId>, session: SessionId, reason: &str, now: UnixSeconds) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE COALESCE(tenant_id, 'platform') = ? AND id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(platform_key(tenant))
            .bind(session.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn revoke_user_sessions(&self, tenant: Option<TenantId>, user: UserId, reason: &str, now: UnixSeconds) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE COALESCE(tenant_id, 'platform') = ? AND user_id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(platform_key(tenant))
            .bind(user.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected())
    }
}

/// Rows per multi-row INSERT (12 parameters each, far below SQLite's limit).
const INSERT_CHUNK: usize = 200;

/// A search text as an FTS5 query that cannot be anything else: each word a quoted phrase
/// (tokenised like the index), all required; a trailing `*` keeps its prefix meaning. `None`
/// when nothing searchable is left.
fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = search_words(text)
        .into_iter()
        .map(|(word, prefix)| format!("\"{}\"{}", word.replace('"', "\"\""), if prefix { "*" } else { "" }))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" AND "))
}

/// A trail's tree, inside an append transaction; a new trail is numbered here (its search
/// index rowid range).
async fn trail_state(tx: &mut sqlx::SqliteConnection, trail: &str) -> Result<Frontier> {
    let row = sqlx::query("SELECT size, frontier FROM audit_trails WHERE trail = ?")
        .bind(trail)
        .fetch_optional(&mut *tx)
        .await
        .map_err(audit_unavailable)?;
    if let Some(r) = row {
        return frontier_of(r.get("size"), &r.get::<Vec<u8>, _>("frontier"));
    }
    sqlx::query(
        "INSERT INTO audit_trails (trail, num, size, frontier)
         VALUES (?, (SELECT coalesce(max(num), 0) + 1 FROM audit_trails), 0, x'')",
    )
    .bind(trail)
    .execute(&mut *tx)
    .await
    .map_err(audit_unavailable)?;
    Ok(Frontier::new())
}

fn record_from_row(r: &SqliteRow) -> Result<AuditRecord> {
    let entry: Vec<u8> = r.get("entry");
    let leaf: Vec<u8> = r.get("leaf_hash");
    AuditRecord::from_entry(&entry, &leaf).ok_or_else(|| corrupt("audit entry"))
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_batch(&self, batch: &[NewAuditEntry], keys: &AuditKeys) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(audit_unavailable)?;
        // Per trail: its tree as it grows through the batch, and its HMAC key (derived once per
        // batch, not per record). The search index catches up on its own, off this commit.
        let mut trails: HashMap<String, (Frontier, TrailMac)> = HashMap::new();
        let mut nodes: Vec<(String, NodeId, Hash)> = Vec::new();
        let mut rows = Vec::with_capacity(batch.len());
        let mut out = Vec::with_capacity(batch.len());
        for n in batch {
            let trail = trail_name(n.event.tenant_id);
            if !trails.contains_key(&trail) {
                let f = trail_state(&mut tx, &trail).await?;
                trails.insert(trail.clone(), (f, TrailMac::new(&keys.trail_key(&trail))));
            }
            let Some((f, mac_key)) = trails.get_mut(&trail) else { continue };
            let sealed = seal_entry(&trail, n, f, mac_key, |id, h| nodes.push((trail.clone(), id, h)))?;
            out.push(Appended { trail: trail.clone(), seq: sealed.seq, leaf_hash: sealed.leaf });
            rows.push((trail, n, sealed));
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_log (trail, seq, ts_ms, event_id, category, action, outcome, actor, resource, entry, leaf_hash, hmac) ",
            );
            q.push_values(chunk, |mut b, (trail, n, s)| {
                b.push_bind(trail)
                    .push_bind(s.seq)
                    .push_bind(n.ts_ms)
                    .push_bind(&n.event_id)
                    .push_bind(n.event.category.as_str())
                    .push_bind(&n.event.action)
                    .push_bind(n.event.outcome.as_str())
                    .push_bind(&s.actor)
                    .push_bind(&n.event.resource)
                    .push_bind(&s.entry)
                    .push_bind(s.leaf.as_slice())
                    .push_bind(s.mac.as_slice());
            });
            q.build().execute(&mut *tx).await.map_err(audit_unavailable)?;
        }
        for chunk in nodes.chunks(INSERT_CHUNK) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO audit_nodes (trail, level, idx, hash) ");
            q.push_values(chunk, |mut b, (trail, id, h)| {
                b.push_bind(trail).push_bind(i64::from(id.level)).push_bind(id.index as i64).push_bind(h.as_slice());
            });
            q.build().execute(&mut *tx).await.map_err(audit_unavailable)?;
        }
        for (trail, (f, _)) in &trails {
            sqlx::query("UPDATE audit_trails SET size = ?, frontier = ? WHERE trail = ?")
                .bind(f.size() as i64)
                .bind(f.hashes().concat())
                .bind(trail)
                .execute(&mut *tx)
                .await
                .map_err(audit_unavailable)?;
        }
        tx.commit().await.map_err(audit_unavailable)?;
        Ok(out)
    }

    async fn list(&self, trail: Option<TenantId>, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let trail = trail_name(trail);
        let limit = i64::from(f.limit.clamp(1, 10_000));
        let after = f.after_seq.unwrap_or(0).max(0);
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT l.entry, l.leaf_hash FROM ");
        if let Some(text) = &f.q {
            // Full text: the index (its own file, the log attached as `log`), caught up first so
            // that every record committed before this search is in it; the trail's rowid range,
            // read in order, joined to the log.
            let Some(matching) = fts_query(text) else { return Ok(vec![]) };
            self.search.catch_up(Some(&trail)).await?;
            let num: Option<i64> = sqlx::query_scalar("SELECT num FROM audit_trails WHERE trail = ?")
                .bind(&trail)
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
            let Some(num) = num else { return Ok(vec![]) };
            let base = search_rowid(num, 0);
            q.push("audit_search JOIN log.audit_log l ON l.trail = ").push_bind(trail.clone());
            q.push(" AND l.seq = audit_search.rowid - ").push_bind(base);
            q.push(" WHERE audit_search MATCH ").push_bind(matching);
            q.push(" AND audit_search.rowid > ").push_bind(base + after);
            q.push(" AND audit_search.rowid < ").push_bind(search_rowid(num + 1, 0));
        } else {
            q.push("audit_log l WHERE l.trail = ").push_bind(trail.clone()).push(" AND l.seq > ").push_bind(after);
        }
        if let Some(actor) = &f.actor {
            q.push(" AND l.actor LIKE ").push_bind(format!("%{}%", like_escape(actor))).push(" ESCAPE '\\'");
        }
        if let Some(action) = &f.action {
            // The action or anything below it (`query` → `query.run`): `query.` ≤ a < `query/`,
            // a range the (trail, action, seq) index serves.
            q.push(" AND (l.action = ").push_bind(action.clone());
            q.push(" OR (l.action >= ").push_bind(format!("{action}."));
            q.push(" AND l.action < ").push_bind(format!("{action}/")).push("))");
        }
        for (col, v) in [("l.category", &f.category), ("l.resource", &f.resource), ("l.outcome", &f.outcome)] {
            if let Some(v) = v {
                q.push(format_args!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        if let Some(from) = f.from_ms {
            q.push(" AND l.ts_ms >= ").push_bind(from);
        }
        if let Some(to) = f.to_ms {
            q.push(" AND l.ts_ms < ").push_bind(to);
        }
        q.push(if f.q.is_some() { " ORDER BY audit_search.rowid" } else { " ORDER BY l.seq" });
        q.push(" LIMIT ").push_bind(limit);
        let pool = if f.q.is_some() { self.search.pool() } else { &self.pool };
        let rows = q.build().fetch_all(pool).await.map_err(db_err)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn trail_head(&self, trail: &str) -> Result<TrailHead> {
        let row = sqlx::query("SELECT size, frontier FROM audit_trails WHERE trail = ?")
            .bind(trail)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let f = match row {
            Some(r) => frontier_of(r.get("size"), &r.get::<Vec<u8>, _>("frontier"))?,
            None => Frontier::new(),
        };
        Ok(TrailHead { size: f.size(), root: f.root() })
    }

    async fn trail_heads(&self) -> Result<Vec<(String, TrailHead)>> {
        let rows =
            sqlx::query("SELECT trail, size, frontier FROM audit_trails ORDER BY trail").fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let f = frontier_of(r.get("size"), &r.get::<Vec<u8>, _>("frontier"))?;
                Ok((r.get("trail"), TrailHead { size: f.size(), root: f.root() }))
            })
            .collect()
    }

    async fn nodes(&self, trail: &str, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>> {
        // Leaves are the rows' own hashes (or, once pruned, stored nodes); inner nodes are stored. One query each, whatever
        // the proof size (a proof has at most 2 log2(n) nodes, far below the parameter limit).
        let (leaves, mut inner): (Vec<&NodeId>, Vec<&NodeId>) = ids.iter().partition(|id| id.level == 0);
        let mut out = HashMap::with_capacity(ids.len());
        if !leaves.is_empty() {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT seq, leaf_hash FROM audit_log WHERE trail = ");
            q.push_bind(trail).push(" AND seq IN (");
            let mut sep = q.separated(", ");
            for id in &leaves {
                sep.push_bind(id.index as i64 + 1);
            }
            q.push(")");
            for r in q.build().fetch_all(&self.pool).await.map_err(db_err)? {
                let id = NodeId { level: 0, index: (r.get::<i64, _>("seq") - 1) as u64 };
                out.insert(id, hash_of(&r.get::<Vec<u8>, _>("leaf_hash"))?);
            }
            // A record removed by retention left its leaf hash among the nodes (level 0).
            inner.extend(leaves.iter().filter(|id| !out.contains_key(id)));
        }
        if !inner.is_empty() {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT level, idx, hash FROM audit_nodes WHERE trail = ");
            q.push_bind(trail).push(" AND (level, idx) IN (VALUES ");
            let mut sep = q.separated(", ");
            for id in &inner {
                sep.push("(").push_bind_unseparated(i64::from(id.level)).push_unseparated(", ");
                sep.push_bind_unseparated(id.index as i64).push_unseparated(")");
            }
            q.push(")");
            for r in q.build().fetch_all(&self.pool).await.map_err(db_err)? {
                let level = u8::try_from(r.get::<i64, _>("level")).map_err(|_| corrupt("audit node level"))?;
                let id = NodeId { level, index: r.get::<i64, _>("idx") as u64 };
                out.insert(id, hash_of(&r.get::<Vec<u8>, _>("hash"))?);
            }
        }
        Ok(out)
    }

    async fn entries(&self, trail: &str, after: i64, limit: u32) -> Result<Vec<StoredEntry>> {
        // Present records and the leaf hashes of pruned ones, merged in seq order.
        let limit = i64::from(limit.clamp(1, 100_000));
        let rows = sqlx::query(
            "SELECT * FROM (SELECT seq, entry, leaf_hash, hmac, ts_ms, event_id, category, action, outcome, actor, resource
                  FROM audit_log WHERE trail = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3)
             UNION ALL
             SELECT * FROM (SELECT idx + 1, NULL, hash, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
                  FROM audit_nodes WHERE trail = ?1 AND level = 0 AND idx >= ?2 ORDER BY idx LIMIT ?3)
             ORDER BY seq LIMIT ?3",
        )
        .bind(trail)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(stored_entries!(rows))
    }

    async fn segment_categories(&self, trail: &str, through_seq: i64, segment_records: u64) -> Result<Vec<SegmentCategory>> {
        let s = i64::try_from(segment_records.max(1)).map_err(|_| MoatError::internal("segment_size"))?;
        let rows = sqlx::query(
            "SELECT (seq - 1) / ?3 AS segment, category, count(*) AS records, max(ts_ms) AS newest
             FROM audit_log WHERE trail = ?1 AND seq <= ?2 AND action <> ?4
             GROUP BY segment, category ORDER BY segment, category",
        )
        .bind(trail)
        .bind(through_seq)
        .bind(s)
        .bind(RETENTION_ACTION)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(rows.iter().map(|r| segment_category!(r)).collect())
    }

    async fn category_seqs(&self, trail: &str, first: i64, last: i64, category: &str) -> Result<Vec<i64>> {
        sqlx::query_scalar(
            "SELECT seq FROM audit_log WHERE trail = ? AND seq BETWEEN ? AND ? AND category = ? AND action <> ? ORDER BY seq",
        )
        .bind(trail)
        .bind(first)
        .bind(last)
        .bind(category)
        .bind(RETENTION_ACTION)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)
    }

    async fn prune(&self, p: &Prune) -> Result<u64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)?;
        let done: Option<i64> = sqlx::query_scalar("SELECT count FROM audit_prunes WHERE trail = ? AND retention_seq = ?")
            .bind(&p.trail)
            .bind(p.retention_seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.is_some() {
            return Ok(0);
        }
        // The rows this prune covers: one predicate for counting, keeping and removing.
        const COVERED: &str = "trail = ?1 AND seq BETWEEN ?2 AND ?3 AND category = ?4 AND action <> ?5 AND seq < ?6";
        // Statements built from constants only (no input in the text).
        let bind = |q: String| {
            sqlx::query(sqlx::AssertSqlSafe(q))
                .bind(&p.trail)
                .bind(p.first_seq)
                .bind(p.last_seq)
                .bind(&p.category)
                .bind(RETENTION_ACTION)
                .bind(p.retention_seq)
        };
        let present: i64 =
            bind(format!("SELECT count(*) AS n FROM audit_log WHERE {COVERED}")).fetch_one(&mut *tx).await.map_err(db_err)?.get("n");
        if present != 0 && present as u64 != p.count {
            return Err(retention_mismatch(p, present));
        }
        sqlx::query(
            "INSERT INTO audit_prunes (trail, retention_seq, segment, first_seq, last_seq, category, count, ts_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.trail)
        .bind(p.retention_seq)
        .bind(p.segment as i64)
        .bind(p.first_seq)
        .bind(p.last_seq)
        .bind(&p.category)
        .bind(present)
        .bind(p.ts_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if present > 0 {
            let keep = format!(
                "INSERT INTO audit_nodes (trail, level, idx, hash) SELECT trail, 0, seq - 1, leaf_hash FROM audit_log WHERE {COVERED}"
            );
            bind(keep).execute(&mut *tx).await.map_err(db_err)?;
            bind(format!("DELETE FROM audit_log WHERE {COVERED}")).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        // The removed records leave the search index now (the indexer would within its period).
        if present > 0
            && let Err(e) = self.search.catch_up(Some(&p.trail)).await
        {
            tracing::warn!(code = e.code, "the search index forgets the pruned records at its next pass");
        }
        Ok(present as u64)
    }

    async fn prunes(&self, trail: &str) -> Result<Vec<Prune>> {
        let rows = sqlx::query("SELECT * FROM audit_prunes WHERE trail = ? ORDER BY retention_seq")
            .bind(trail)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| prune_record!(r)).collect())
    }

    async fn lease_cursor(&self, sink: &str, trail: &str, owner: &str, now_ms: i64, until_ms: i64, start: i64) -> Result<Option<i64>> {
        sqlx::query_scalar(LEASE_CURSOR)
            .bind(sink)
            .bind(trail)
            .bind(start)
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn advance_cursor(&self, sink: &str, trail: &str, owner: &str, seq: i64) -> Result<bool> {
        let r =
            sqlx::query("UPDATE event_cursors SET published_seq = max(published_seq, ?) WHERE sink = ? AND trail = ? AND lease_owner = ?")
                .bind(seq)
                .bind(sink)
                .bind(trail)
                .bind(owner)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn cursors(&self, sink: &str) -> Result<Vec<(String, i64)>> {
        sqlx::query_as("SELECT trail, published_seq FROM event_cursors WHERE sink = ? ORDER BY trail")
            .bind(sink)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    async fn put_checkpoint(&self, cp: &CheckpointRecord) -> Result<()> {
        sqlx::query("INSERT INTO audit_checkpoints (trail, size, ts_ms, note) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING")
            .bind(&cp.trail)
            .bind(cp.size as i64)
            .bind(cp.ts_ms)
            .bind(&cp.note)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn latest_checkpoint(&self, trail: &str) -> Result<Option<CheckpointRecord>> {
        let row = sqlx::query("SELECT * FROM audit_checkpoints WHERE trail = ? ORDER BY size DESC LIMIT 1")
            .bind(trail)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(row.as_ref().map(checkpoint_from_row))
    }

    async fn import_legacy(&self, keys: &AuditKeys) -> Result<u64> {
        self.import_v1(keys).await
    }

    async fn checkpoints(&self, trail: &str, after_size: u64, limit: u32) -> Result<Vec<CheckpointRecord>> {
        let rows = sqlx::query("SELECT * FROM audit_checkpoints WHERE trail = ? AND size > ? ORDER BY size LIMIT ?")
            .bind(trail)
            .bind(after_size as i64)
            .bind(i64::from(limit.clamp(1, 100_000)))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(rows.iter().map(checkpoint_from_row).collect())
    }
}

impl SqliteStore {
    /// Carries the records of the v1 hash-chained trail (before migration 6) into the log, each
    /// trail in one transaction, in their order, once. Returns how many were carried.
    async fn import_v1(&self, keys: &AuditKeys) -> Result<u64> {
        let trails: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT trail FROM audit_events_v1 WHERE trail NOT IN (SELECT trail FROM audit_trails) ORDER BY trail",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        let mut carried = 0;
        for trail in trails {
            let rows = sqlx::query("SELECT * FROM audit_events_v1 WHERE trail = ? ORDER BY seq")
                .bind(&trail)
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            let tenant = trail_tenant(&trail).ok_or_else(|| corrupt("v1 audit trail"))?;
            let mut batch = Vec::with_capacity(rows.len());
            for r in &rows {
                let text = |c: &str| serde_json::Value::String(r.get::<String, _>(c));
                let json =
                    |c: &str| serde_json::from_str::<serde_json::Value>(&r.get::<String, _>(c)).map_err(|_| corrupt("v1 audit json"));
                let event = AuditEvent {
                    tenant_id: tenant,
                    category: serde_json::from_value(text("category")).map_err(|_| corrupt("v1 audit category"))?,
                    action: r.get("action"),
                    actor: serde_json::from_value::<Actor>(json("actor")?).map_err(|_| corrupt("v1 audit actor"))?,
                    resource: r.get("resource"),
                    outcome: serde_json::from_value(text("outcome")).map_err(|_| corrupt("v1 audit outcome"))?,
                    source_ip: r.get("source_ip"),
                    user_agent: r.get("user_agent"),
                    request_id: r.get("request_id"),
                    details: json("details")?,
                };
                let seq: i64 = r.get("seq");
                batch.push(NewAuditEntry { event, ts_ms: r.get("ts_ms"), event_id: format!("v1-{trail}-{seq}") });
            }
            carried += self.append_batch(&batch, keys).await?.len() as u64;
        }
        Ok(carried)
    }
}

fn checkpoint_from_row(r: &SqliteRow) -> CheckpointRecord {
    checkpoint_record!(r)
}
