//! The PostgreSQL backend (production): platform tables in schema `moat`, one schema
//! `tenant_{uuid}` per tenant for the tenant's own data, row-level security on every
//! tenant-scoped table as defence in depth.
//!
//! Roles. `store.url` is the runtime role: moat refuses to serve as a superuser or a role with
//! BYPASSRLS (`unsafe_store_role`), since either ignores every policy. `store.admin_url`
//! (required, another role, with CREATEROLE) is the owner role: it runs the migrations and
//! tenant provisioning and grants the runtime role what it needs — on the audit tables only
//! SELECT and INSERT (plus the guarded retention DELETE and the grow-only head UPDATE). The
//! runtime role owns nothing it queries.
//!
//! Tenant schemas. Each tenant gets schema `tenant_{uuid}` and a role `moat_tenant_{uuid}`
//! (no login, inherits nothing) that alone may use it. The runtime role holds no privilege on
//! any tenant schema; it is a member of every tenant role without inheriting
//! (`WITH INHERIT FALSE` on PostgreSQL 16+, a NOINHERIT runtime role on 15), so a tenant's
//! schema opens only inside a transaction that did `SET LOCAL ROLE` to that tenant's role —
//! and then no other tenant's schema and no platform table does.
//!
//! Scope. Every statement runs in a transaction that begins with
//! `set_config('app.tenant_id', …, true)` and `set_config('search_path', 'pg_catalog, moat', true)`
//! (SET LOCAL semantics: gone at commit, never leaking to the next user of the pooled
//! connection). The policies (migrations/postgres/0001) show a tenant scope its own rows only,
//! the `platform` scope every row, and a missing or malformed setting no row at all. Methods
//! that know the tenant run in its scope, so a statement that forgot its `tenant_id` filter
//! still reads nothing foreign; the few lookups that precede knowing the tenant (a tenant by
//! slug, an API key or refresh token by hash, lockout counters, the checkpointer's heads) run
//! in the platform scope. The audit writer sets each trail's scope before that trail's rows.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::apikey::{LAST_USED_GRANULARITY_S, StoredKey};
use moat_core::audit::{AuditKeys, TrailMac, trail_name};
use moat_core::audit_retention::RETENTION_ACTION;
use moat_core::clock::UnixSeconds;
use moat_core::ids::{ApiKeyId, Email, SessionId, TenantId, UserId};
use moat_core::lockout::{FailureOutcome, LockoutPolicy, LockoutState};
use moat_core::permission::Permission;
use moat_core::role::Role;
use moat_core::tlog::{Frontier, Hash, NodeId};
use moat_core::{MoatError, Result};
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::shared::{
    LEASE_CURSOR, audit_unavailable, checkpoint_record, column_record, corrupt, frontier_of, hash_of, like_escape, prune_record,
    retention_mismatch, seal_entry, search_words, segment_category, stored_entries, tenant_key_record,
};
use crate::sqlite_search::search_text;
use crate::*;

#[path = "pg_backup.rs"]
pub mod backup;
#[path = "pg_isolation.rs"]
mod isolation;
#[path = "pg_relations.rs"]
mod relations;

/// Migrations, applied in order, each once, by the owner role.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "foundation", include_str!("../migrations/postgres/0001_foundation.sql")),
    (2, "event_cursors", include_str!("../migrations/postgres/0002_event_cursors.sql")),
    (3, "tenant_databases", include_str!("../migrations/postgres/0003_tenant_databases.sql")),
    (4, "tenant_keys", include_str!("../migrations/postgres/0004_tenant_keys.sql")),
    (5, "user_mfa", include_str!("../migrations/postgres/0005_user_mfa.sql")),
];

/// Serialises migrations of replicas that start together (a constant key: "moat").
const MIGRATION_LOCK: i64 = 0x6d6f_6174;

/// What the runtime role may do, granted by the owner after the migrations. The audit tables
/// get no UPDATE (but the head's, which a trigger keeps growing) and DELETE only on the log,
/// where a trigger admits retention's removals alone.
const GRANTS: &[&str] = &[
    "GRANT USAGE ON SCHEMA moat TO {role}",
    // Status only: where a tenant's data lives is the owner's to say, at provisioning.
    "REVOKE UPDATE ON moat.tenants FROM {role}",
    "GRANT SELECT, UPDATE (status, updated_at) ON moat.tenants TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON moat.users, moat.login_lockout, moat.sessions, moat.refresh_tokens, moat.api_keys, \
     moat.tenant_settings, moat.catalog_tables, moat.catalog_columns, moat.catalog_views TO {role}",
    "GRANT SELECT, INSERT ON moat.password_history, moat.audit_log, moat.audit_nodes, moat.audit_checkpoints, moat.audit_prunes, \
     moat.audit_trails TO {role}",
    "GRANT UPDATE (size, frontier) ON moat.audit_trails TO {role}",
    "GRANT DELETE ON moat.audit_log TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON moat.event_cursors TO {role}",
    "GRANT SELECT, INSERT, UPDATE (kek, wrapped, destroyed_at) ON moat.tenant_keys TO {role}",
];

/// The scope setting of the platform (every row).
const PLATFORM: &str = "platform";

pub struct PgStore {
    /// The runtime role's pool.
    pool: PgPool,
    /// The owner role's pool: migrations and provisioning.
    admin: PgPool,
    /// The runtime role's name, for grants on new tenant schemas.
    app_role: String,
    /// PostgreSQL 16 or later: a membership grant can say it does not inherit.
    per_grant_inherit: bool,
}

/// `server_version_num` from which `GRANT … WITH INHERIT FALSE` exists.
const PER_GRANT_INHERIT: i32 = 160_000;

/// A key version as PostgreSQL's `integer` (versions count up from 1, one per rotation).
fn pg_version(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Maps a database error to a product error, logging the cause (never sent to the caller): a
/// database that cannot be reached is a 503, anything else ours (500).
fn db_err(e: sqlx::Error) -> MoatError {
    if unreachable(&e) {
        tracing::error!(error = %e, "store unreachable");
        return MoatError::unavailable("store_unavailable", "the metadata store cannot be reached; try again");
    }
    tracing::error!(error = %e, "store error");
    MoatError::internal("store_error")
}

fn unreachable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed)
}

fn conflict_or_db(e: sqlx::Error, code: &'static str, message: impl FnOnce() -> String) -> MoatError {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => MoatError::conflict(code, message()),
        other => db_err(other),
    }
}

/// The scope setting of a tenant-or-platform argument.
fn scope_of(t: Option<TenantId>) -> String {
    t.map_or_else(|| PLATFORM.to_owned(), |t| t.to_string())
}

fn uuid_of(t: Option<TenantId>) -> Option<Uuid> {
    t.map(|t| t.0)
}

/// A role name as an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema holding a tenant's own data.
pub fn tenant_schema(t: TenantId) -> String {
    format!("tenant_{}", t.0.simple())
}

/// The role that alone may use a tenant's schema (no login; the runtime role `SET ROLE`s to it).
pub fn tenant_role(t: TenantId) -> String {
    format!("moat_tenant_{}", t.0.simple())
}

/// Begins a transaction in `scope` (a tenant id, a trail name, or `platform`).
async fn begin_in(pool: &PgPool, scope: &str) -> std::result::Result<Transaction<'static, Postgres>, sqlx::Error> {
    begin_scoped(pool, "BEGIN", scope).await
}

/// [`begin_in`] with its own `BEGIN` statement (an isolation level, `READ ONLY`).
async fn begin_scoped(pool: &PgPool, begin: &'static str, scope: &str) -> std::result::Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin_with(begin).await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true), set_config('search_path', 'pg_catalog, moat', true)")
        .bind(scope)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn migrate(admin: &PgPool) -> Result<()> {
    let mut tx = admin.begin().await.map_err(db_err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(db_err)?;
    sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS moat;
         CREATE TABLE IF NOT EXISTS moat.schema_migrations (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    for (version, name, sql) in MIGRATIONS {
        let done: Option<i64> = sqlx::query_scalar("SELECT version FROM moat.schema_migrations WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.is_some() {
            continue;
        }
        tracing::info!(version, name, "applying store migration");
        sqlx::raw_sql(*sql).execute(&mut *tx).await.map_err(db_err)?;
        sqlx::query("INSERT INTO moat.schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

/// Grants the runtime role what it needs (idempotent).
async fn grant(admin: &PgPool, role: &str) -> Result<()> {
    let mut tx = admin.begin().await.map_err(db_err)?;
    for g in GRANTS {
        let sql = g.replace("{role}", &quote_ident(role));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await.map_err(db_err)?;
    }
    tx.commit().await.map_err(db_err)
}

async fn connect(url: &str, max: u32) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect(url)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot connect to the store");
            MoatError::unavailable("store_unavailable", format!("cannot connect to the PostgreSQL store: {}", connect_reason(&e)))
        })
}

/// Why a connection failed, without echoing the URL (it may hold a password).
fn connect_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Configuration(_) => "the URL is not a valid postgres:// URL".to_owned(),
        other => other.to_string(),
    }
}

impl PgStore {
    /// Connects as the runtime role (`url`), refuses an unsafe one, migrates and grants as the
    /// owner (`admin_url`, required and another role), and brings every tenant's role and
    /// schema to the current shape.
    pub async fn open(url: &str, admin_url: Option<&str>) -> Result<Self> {
        Self::open_sized(url, admin_url, 16).await
    }

    /// [`Self::open`] with at most `max_connections` runtime connections.
    pub async fn open_sized(url: &str, admin_url: Option<&str>, max_connections: u32) -> Result<Self> {
        let Some(admin_url) = admin_url else {
            return Err(MoatError::invalid(
                "store_owner_role",
                "store.admin_url is not set: a PostgreSQL store needs an owner role for migrations and provisioning, \
                 apart from the runtime role in store.url (which must own nothing it queries)",
            ));
        };
        let pool = connect(url, max_connections).await?;
        let row = sqlx::query(
            "SELECT current_user::text AS name, rolsuper, rolbypassrls, rolinherit, current_setting('server_version_num')::int AS version \
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await
        .map_err(db_err)?;
        let app_role: String = row.get("name");
        if row.get::<bool, _>("rolsuper") || row.get::<bool, _>("rolbypassrls") {
            return Err(MoatError::invalid(
                "unsafe_store_role",
                format!(
                    "store.url connects as {app_role:?}, a superuser or BYPASSRLS role that ignores row-level security; \
                     connect as a plain role and name the owner in store.admin_url"
                ),
            ));
        }
        let version: i32 = row.get("version");
        // Tenant schemas open only under SET ROLE to the tenant's role: the runtime role must
        // not inherit its memberships (PostgreSQL 16 says so per grant; 15 only per role).
        if version < PER_GRANT_INHERIT && row.get::<bool, _>("rolinherit") {
            return Err(MoatError::invalid(
                "unsafe_store_role",
                format!(
                    "store.url connects as {app_role:?}, which inherits the privileges of the roles granted to it; \
                     on PostgreSQL {} moat needs it NOINHERIT, so that a tenant's schema opens only under that tenant's role \
                     (ALTER ROLE {} NOINHERIT)",
                    version / 10_000,
                    quote_ident(&app_role)
                ),
            ));
        }
        let admin = connect(admin_url, 2).await?;
        let owner =
            sqlx::query("SELECT current_user::text AS name, rolsuper OR rolcreaterole AS can FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&admin)
                .await
                .map_err(db_err)?;
        let owner_role: String = owner.get("name");
        if owner_role == app_role {
            return Err(MoatError::invalid(
                "store_owner_role",
                format!("store.admin_url and store.url both connect as {app_role:?}: the runtime role must own nothing it queries"),
            ));
        }
        if !owner.get::<bool, _>("can") {
            return Err(MoatError::invalid(
                "store_owner_role",
                format!(
                    "store.admin_url connects as {owner_role:?}, which lacks CREATEROLE: moat makes one role per tenant schema \
                     (ALTER ROLE {} CREATEROLE)",
                    quote_ident(&owner_role)
                ),
            ));
        }
        migrate(&admin).await?;
        grant(&admin, &app_role).await?;
        let store = Self { pool, admin, app_role, per_grant_inherit: version >= PER_GRANT_INHERIT };
        store.reconcile_tenant_roles().await?;
        Ok(store)
    }

    /// Gives every tenant that lacks it its role, schema and grants, and takes back any
    /// privilege of the runtime role on a tenant schema (stores made before tenant roles
    /// existed granted it USAGE on all of them). Idempotent; touches only what is off.
    async fn reconcile_tenant_roles(&self) -> Result<()> {
        let mut tx = begin_in(&self.admin, PLATFORM).await.map_err(db_err)?;
        let off: Vec<Uuid> = sqlx::query_scalar(
            "SELECT t.id FROM tenants t \
             WHERE t.database_url IS NULL AND (NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'moat_tenant_' || replace(t.id::text, '-', '') \
                                 AND pg_has_role($1, r.oid, 'MEMBER')) \
                OR NOT EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = 'tenant_' || replace(t.id::text, '-', '') \
                                 AND NOT has_schema_privilege($1, n.oid, 'USAGE') AND NOT has_schema_privilege($1, n.oid, 'CREATE')))",
        )
        .bind(&self.app_role)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        for id in &off {
            tracing::info!(tenant = %id, "bringing the tenant's database role and schema up to date");
            for sql in self.tenant_ddl(TenantId(*id), true) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await.map_err(db_err)?;
            }
        }
        tx.commit().await.map_err(db_err)
    }

    /// The statements that give a tenant its schema and role: the role (no login, inherits
    /// nothing) may use the schema; the runtime role is a member that must `SET ROLE` to use
    /// it and holds nothing on the schema itself. `existing`: idempotent forms.
    fn tenant_ddl(&self, t: TenantId, existing: bool) -> Vec<String> {
        let schema = quote_ident(&tenant_schema(t));
        let role = quote_ident(&tenant_role(t));
        let app = quote_ident(&self.app_role);
        let no_inherit = if self.per_grant_inherit { " WITH INHERIT FALSE, SET TRUE" } else { "" };
        vec![
            if existing {
                format!("DO $$ BEGIN CREATE ROLE {role} NOLOGIN NOINHERIT; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
            } else {
                format!("CREATE ROLE {role} NOLOGIN NOINHERIT")
            },
            format!("CREATE SCHEMA {}{schema}", if existing { "IF NOT EXISTS " } else { "" }),
            format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC, {app}"),
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!("GRANT {role} TO {app}{no_inherit}"),
            // Tables the owner loads into the schema are readable by the tenant's role.
            format!("ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}"),
        ]
    }

    /// The tenants that live in a database of their own (their routing rows).
    pub(crate) async fn routed_tenants(&self) -> Result<Vec<TenantRecord>> {
        let mut tx = self.tx(PLATFORM).await?;
        let rows = sqlx::query("SELECT * FROM tenants WHERE database_url IS NOT NULL").fetch_all(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }

    /// The runtime role's pool (tests use it to try to break the policies).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn tx(&self, scope: &str) -> Result<Transaction<'static, Postgres>> {
        begin_in(&self.pool, scope).await.map_err(db_err)
    }

    async fn tenant_tx(&self, t: Option<TenantId>) -> Result<Transaction<'static, Postgres>> {
        self.tx(&scope_of(t)).await
    }
}

fn lockout_from_row(row: Option<PgRow>) -> LockoutState {
    row.map_or_else(LockoutState::default, |r| LockoutState {
        failures: r.get::<i64, _>("failures") as u32,
        stage: r.get::<i64, _>("stage") as u32,
        locked_until: r.get("locked_until"),
        admin_locked: r.get("admin_locked"),
    })
}

fn tenant_from_row(r: &PgRow) -> TenantRecord {
    let status: String = r.get("status");
    TenantRecord {
        id: TenantId(r.get("id")),
        slug: r.get("slug"),
        name: r.get("name"),
        status: if status == "active" { TenantStatus::Active } else { TenantStatus::Suspended },
        created_at: r.get("created_at"),
        database: r
            .get::<Option<String>, _>("database_url")
            .zip(r.get::<Option<String>, _>("database_admin_url"))
            .map(|(url, admin_url)| TenantDatabase { url, admin_url }),
    }
}

fn user_from_row(r: &PgRow) -> Result<UserRecord> {
    let email: String = r.get("email");
    let role: String = r.get("role");
    let status: String = r.get("status");
    Ok(UserRecord {
        id: UserId(r.get("id")),
        tenant_id: r.get::<Option<Uuid>, _>("tenant_id").map(TenantId),
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

fn key_from_row(r: &PgRow) -> Result<ApiKeyRecord> {
    let scopes: String = r.get("scopes");
    Ok(ApiKeyRecord {
        id: ApiKeyId(r.get("id")),
        user_id: UserId(r.get("user_id")),
        name: r.get("name"),
        display_hint: r.get("display_hint"),
        scopes: serde_json::from_str(&scopes).map_err(|_| corrupt("key scopes"))?,
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
    })
}

fn column_from_row(r: &PgRow) -> ColumnRecord {
    column_record!(r)
}

fn table_from_row(r: &PgRow, columns: Vec<ColumnRecord>) -> TableRecord {
    TableRecord {
        id: r.get("id"),
        tenant_id: TenantId(r.get("tenant_id")),
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
        // A version is positive (a CHECK on the key table; written from a u32 here).
        dek_version: r.get::<Option<i32>, _>("dek_version").and_then(|v| u32::try_from(v).ok()),
    }
}

fn view_from_row(r: &PgRow) -> ViewRecord {
    ViewRecord {
        id: r.get("id"),
        tenant_id: TenantId(r.get("tenant_id")),
        name: r.get("name"),
        sql: r.get("sql"),
        description: r.get("description"),
        created_by: r.get("created_by"),
        version: r.get("version"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

type Tx = Transaction<'static, Postgres>;

async fn load_columns(tx: &mut Tx, table_id: &str) -> Result<Vec<ColumnRecord>> {
    let rows = sqlx::query("SELECT * FROM catalog_columns WHERE table_id = $1 ORDER BY ordinal")
        .bind(table_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(db_err)?;
    Ok(rows.iter().map(column_from_row).collect())
}

async fn table_row(tx: &mut Tx, tenant: TenantId, name: &str, lock: bool) -> Result<Option<PgRow>> {
    let sql = if lock {
        "SELECT * FROM catalog_tables WHERE tenant_id = $1 AND name = $2 FOR UPDATE"
    } else {
        "SELECT * FROM catalog_tables WHERE tenant_id = $1 AND name = $2"
    };
    sqlx::query(sql).bind(tenant.0).bind(name).fetch_optional(&mut **tx).await.map_err(db_err)
}

/// Tables and views share one name space per tenant; the tenant's row is locked first so that
/// two writers of one name wait for each other.
async fn name_free_of(tx: &mut Tx, view: bool, tenant: TenantId, name: &str) -> Result<()> {
    sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE").bind(tenant.0).execute(&mut **tx).await.map_err(db_err)?;
    let (sql, what) = if view {
        ("SELECT 1 FROM catalog_views WHERE tenant_id = $1 AND name = $2", "a view")
    } else {
        ("SELECT 1 FROM catalog_tables WHERE tenant_id = $1 AND name = $2", "a table")
    };
    let taken = sqlx::query(sql).bind(tenant.0).bind(name).fetch_optional(&mut **tx).await.map_err(db_err)?.is_some();
    if taken {
        return Err(MoatError::conflict("name_taken", format!("{what} is already named {name:?}; tables and views share one name space")));
    }
    Ok(())
}

async fn insert_user(tx: &mut Tx, u: &NewUser) -> Result<UserRecord> {
    let res = sqlx::query(
        "INSERT INTO users (id, tenant_id, email, role, status, password_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'active', $5, $6, $6)",
    )
    .bind(u.id.0)
    .bind(uuid_of(u.tenant_id))
    .bind(u.email.as_str())
    .bind(u.role.as_str())
    .bind(&u.password_hash)
    .bind(u.now)
    .execute(&mut **tx)
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
impl MetaStore for PgStore {
    async fn create_tenant(&self, t: &NewTenant, first_admin: Option<&NewUser>) -> Result<TenantRecord> {
        // Provisioning is the owner's: the tenant row, its role and schema, the grants and the
        // first Admin in one transaction (DDL, roles included, is transactional here), so a
        // failure leaves nothing.
        //
        // A tenant with a database of its own gets only its routing row here: the router
        // (`routed::RoutedStore`) provisions it, and its first Admin, in that database.
        let mut tx = begin_in(&self.admin, PLATFORM).await.map_err(db_err)?;
        let res = sqlx::query(
            "INSERT INTO tenants (id, slug, name, status, created_at, updated_at, database_url, database_admin_url) \
             VALUES ($1, $2, $3, 'active', $4, $4, $5, $6)",
        )
        .bind(t.id.0)
        .bind(t.slug.as_str())
        .bind(&t.name)
        .bind(t.now)
        .bind(t.database.as_ref().map(|d| &d.url))
        .bind(t.database.as_ref().map(|d| &d.admin_url))
        .execute(&mut *tx)
        .await;
        res.map_err(|e| conflict_or_db(e, "tenant_exists", || format!("tenant {} already exists", t.slug)))?;
        if t.database.is_none() {
            for sql in self.tenant_ddl(t.id, false) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await.map_err(db_err)?;
            }
            if let Some(admin) = first_admin {
                insert_user(&mut tx, admin).await?;
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(t.record())
    }

    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>> {
        let mut tx = self.tx(PLATFORM).await?;
        let row = sqlx::query("SELECT * FROM tenants WHERE slug = $1").bind(slug).fetch_optional(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(row.as_ref().map(tenant_from_row))
    }

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
        let mut tx = self.tenant_tx(Some(id)).await?;
        let row = sqlx::query("SELECT * FROM tenants WHERE id = $1").bind(id.0).fetch_optional(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(row.as_ref().map(tenant_from_row))
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        let mut tx = self.tx(PLATFORM).await?;
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY slug").fetch_all(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }

    async fn set_tenant_status(&self, id: TenantId, status: TenantStatus, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tx(PLATFORM).await?;
        let r = sqlx::query("UPDATE tenants SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status.as_str())
            .bind(now)
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn tenant_setting(&self, tenant: TenantId, key: &str) -> Result<Option<String>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let v = sqlx::query_scalar("SELECT value FROM tenant_settings WHERE tenant_id = $1 AND key = $2")
            .bind(tenant.0)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(v)
    }

    async fn set_tenant_setting(&self, tenant: TenantId, key: &str, value: &str, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let r = sqlx::query(
            "INSERT INTO tenant_settings (tenant_id, key, value, updated_at) SELECT id, $1, $2, $3 FROM tenants WHERE id = $4
             ON CONFLICT (tenant_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value)
        .bind(now)
        .bind(tenant.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn add_tenant_key(&self, k: &NewTenantKey) -> Result<bool> {
        let mut tx = self.tenant_tx(Some(k.tenant_id)).await?;
        let r = sqlx::query(
            "INSERT INTO tenant_keys (tenant_id, version, kek, wrapped, created_at) SELECT id, $1, $2, $3, $4 FROM tenants WHERE id = $5
             ON CONFLICT (tenant_id, version) DO NOTHING",
        )
        .bind(pg_version(k.version))
        .bind(&k.kek)
        .bind(&k.wrapped)
        .bind(k.now)
        .bind(k.tenant_id.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn tenant_keys(&self, tenant: TenantId) -> Result<Vec<TenantKeyRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let rows = sqlx::query("SELECT * FROM tenant_keys WHERE tenant_id = $1 ORDER BY version")
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        rows.iter().map(|r| tenant_key_record!(r, tenant, i32)).collect()
    }

    async fn rewrap_tenant_key(&self, tenant: TenantId, version: u32, kek: &str, wrapped: &[u8]) -> Result<bool> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let r = sqlx::query("UPDATE tenant_keys SET kek = $1, wrapped = $2 WHERE tenant_id = $3 AND version = $4 AND destroyed_at IS NULL")
            .bind(kek)
            .bind(wrapped)
            .bind(tenant.0)
            .bind(pg_version(version))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn shred_tenant_keys(&self, tenant: TenantId, now: UnixSeconds) -> Result<u64> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let r = sqlx::query("UPDATE tenant_keys SET wrapped = NULL, destroyed_at = $1 WHERE tenant_id = $2 AND destroyed_at IS NULL")
            .bind(now)
            .bind(tenant.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected())
    }

    async fn create_user(&self, u: &NewUser) -> Result<UserRecord> {
        let mut tx = self.tenant_tx(u.tenant_id).await?;
        let rec = insert_user(&mut tx, u).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(rec)
    }

    async fn user_by_email(&self, tenant: Option<TenantId>, email: &Email) -> Result<Option<UserRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query("SELECT * FROM users WHERE tenant_id IS NOT DISTINCT FROM $1 AND email = $2")
            .bind(uuid_of(tenant))
            .bind(email.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_id(&self, tenant: Option<TenantId>, id: UserId) -> Result<Option<UserRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query("SELECT * FROM users WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2")
            .bind(uuid_of(tenant))
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self, tenant: Option<TenantId>) -> Result<Vec<UserRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query("SELECT * FROM users WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY email")
            .bind(uuid_of(tenant))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        rows.iter().map(user_from_row).collect()
    }

    async fn set_user_status(&self, tenant: Option<TenantId>, id: UserId, status: UserStatus, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let r = sqlx::query("UPDATE users SET status = $1, updated_at = $2 WHERE tenant_id IS NOT DISTINCT FROM $3 AND id = $4")
            .bind(status.as_str())
            .bind(now)
            .bind(uuid_of(tenant))
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_user_role(&self, tenant: TenantId, id: UserId, role: Role, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let r = sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
            .bind(role.as_str())
            .bind(now)
            .bind(tenant.0)
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_password(&self, tenant: Option<TenantId>, id: UserId, new_hash: &str, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let old: Option<String> =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2 FOR UPDATE")
                .bind(uuid_of(tenant))
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let Some(old) = old else { return Ok(false) };
        sqlx::query("INSERT INTO password_history (tenant_id, user_id, password_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(uuid_of(tenant))
            .bind(id.0)
            .bind(old)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(new_hash)
            .bind(now)
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    async fn set_mfa(&self, tenant: Option<TenantId>, id: UserId, change: MfaChange<'_>, now: UnixSeconds) -> Result<bool> {
        let (scope, id) = (uuid_of(tenant), id.0);
        let q = match change {
            MfaChange::Enroll { sealed } => sqlx::query(
                "UPDATE users SET mfa_secret = $1, mfa_enabled_at = NULL, mfa_last_step = NULL, updated_at = $2
                 WHERE tenant_id IS NOT DISTINCT FROM $3 AND id = $4 AND mfa_enabled_at IS NULL",
            )
            .bind(sealed)
            .bind(now)
            .bind(scope)
            .bind(id),
            MfaChange::Confirm { from, to, step } => sqlx::query(
                "UPDATE users SET mfa_secret = $1, mfa_enabled_at = $2, mfa_last_step = $3, updated_at = $2
                 WHERE tenant_id IS NOT DISTINCT FROM $4 AND id = $5 AND mfa_enabled_at IS NULL AND mfa_secret = $6",
            )
            .bind(to)
            .bind(now)
            .bind(step)
            .bind(scope)
            .bind(id)
            .bind(from),
            MfaChange::UseStep { step } => sqlx::query(
                "UPDATE users SET mfa_last_step = $1
                 WHERE tenant_id IS NOT DISTINCT FROM $2 AND id = $3 AND mfa_enabled_at IS NOT NULL
                   AND (mfa_last_step IS NULL OR mfa_last_step < $1)",
            )
            .bind(step)
            .bind(scope)
            .bind(id),
            MfaChange::Replace { from, to } => {
                sqlx::query("UPDATE users SET mfa_secret = $1 WHERE tenant_id IS NOT DISTINCT FROM $2 AND id = $3 AND mfa_secret = $4")
                    .bind(to)
                    .bind(scope)
                    .bind(id)
                    .bind(from)
            }
            MfaChange::Remove => sqlx::query(
                "UPDATE users SET mfa_secret = NULL, mfa_enabled_at = NULL, mfa_last_step = NULL, updated_at = $1
                 WHERE tenant_id IS NOT DISTINCT FROM $2 AND id = $3",
            )
            .bind(now)
            .bind(scope)
            .bind(id),
        };
        let mut tx = self.tenant_tx(tenant).await?;
        let n = q.execute(&mut *tx).await.map_err(db_err)?.rows_affected();
        tx.commit().await.map_err(db_err)?;
        Ok(n == 1)
    }

    async fn password_history(&self, tenant: Option<TenantId>, id: UserId, n: usize) -> Result<Vec<String>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT h FROM (
                 SELECT password_hash AS h, 0 AS k, 0::bigint AS at, 0::bigint AS id FROM users
                     WHERE tenant_id IS NOT DISTINCT FROM $1 AND id = $2
                 UNION ALL
                 SELECT p.password_hash, 1, p.created_at, p.id FROM password_history p JOIN users u ON u.id = p.user_id
                     WHERE u.tenant_id IS NOT DISTINCT FROM $1 AND p.user_id = $2
             ) AS all_hashes ORDER BY k, at DESC, id DESC LIMIT $3",
        )
        .bind(uuid_of(tenant))
        .bind(id.0)
        .bind(n as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows)
    }

    async fn lockout_state(&self, scope_key: &str, email: &str) -> Result<LockoutState> {
        let mut tx = self.tx(PLATFORM).await?;
        let row = sqlx::query("SELECT * FROM login_lockout WHERE scope_key = $1 AND email = $2")
            .bind(scope_key)
            .bind(email)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(lockout_from_row(row))
    }

    async fn record_login_failure(
        &self,
        scope_key: &str,
        email: &str,
        policy: &LockoutPolicy,
        now: UnixSeconds,
    ) -> Result<(FailureOutcome, LockoutState)> {
        let mut tx = self.tx(PLATFORM).await?;
        // The row exists and is locked before it is read: concurrent failures count one by one.
        sqlx::query(
            "INSERT INTO login_lockout (scope_key, email, failures, stage, locked_until, admin_locked, updated_at)
             VALUES ($1, $2, 0, 0, NULL, false, $3) ON CONFLICT DO NOTHING",
        )
        .bind(scope_key)
        .bind(email)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        let row = sqlx::query("SELECT * FROM login_lockout WHERE scope_key = $1 AND email = $2 FOR UPDATE")
            .bind(scope_key)
            .bind(email)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        let mut s = lockout_from_row(row);
        let outcome = policy.record_failure(&mut s, now);
        sqlx::query(
            "UPDATE login_lockout SET failures = $3, stage = $4, locked_until = $5, admin_locked = $6, updated_at = $7
             WHERE scope_key = $1 AND email = $2",
        )
        .bind(scope_key)
        .bind(email)
        .bind(i64::from(s.failures))
        .bind(i64::from(s.stage))
        .bind(s.locked_until)
        .bind(s.admin_locked)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok((outcome, s))
    }

    async fn clear_lockout(&self, scope_key: &str, email: &str) -> Result<()> {
        let mut tx = self.tx(PLATFORM).await?;
        sqlx::query("DELETE FROM login_lockout WHERE scope_key = $1 AND email = $2")
            .bind(scope_key)
            .bind(email)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn create_api_key(&self, k: &NewApiKey) -> Result<ApiKeyRecord> {
        let scopes = serde_json::to_string(&k.scopes).map_err(|_| MoatError::internal("encode_scopes"))?;
        let mut tx = self.tenant_tx(k.tenant_id).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, user_id, name, key_hash, display_hint, scopes, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(k.id.0)
        .bind(uuid_of(k.tenant_id))
        .bind(k.user_id.0)
        .bind(&k.name)
        .bind(&k.key_hash)
        .bind(&k.display_hint)
        .bind(scopes)
        .bind(k.now)
        .bind(k.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
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
        // Before the tenant is known: the platform scope, the key's own tenant checked in SQL.
        let mut tx = self.tx(PLATFORM).await?;
        let row = sqlx::query(
            "SELECT k.id, k.tenant_id, k.user_id, k.scopes, k.expires_at, k.revoked_at, k.last_used_at, u.email, u.role,
                    u.status AS user_status, t.status AS tenant_status
             FROM api_keys k JOIN users u ON u.id = k.user_id LEFT JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND u.tenant_id IS NOT DISTINCT FROM k.tenant_id",
        )
        .bind(key_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let scopes: String = r.get("scopes");
        let scopes: Vec<String> = serde_json::from_str(&scopes).map_err(|_| corrupt("key scopes"))?;
        let email: String = r.get("email");
        let role: String = r.get("role");
        let user_status: String = r.get("user_status");
        let tenant_status: Option<String> = r.get("tenant_status");
        let revoked_at: Option<i64> = r.get("revoked_at");
        Ok(Some(StoredKey {
            id: ApiKeyId(r.get("id")),
            tenant_id: r.get::<Option<Uuid>, _>("tenant_id").map(TenantId),
            user_id: UserId(r.get("user_id")),
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
        let mut tx = self.tenant_tx(tenant).await?;
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $1
             WHERE tenant_id IS NOT DISTINCT FROM $2 AND id = $3 AND (last_used_at IS NULL OR last_used_at < $4)",
        )
        .bind(now)
        .bind(uuid_of(tenant))
        .bind(id.0)
        .bind(now - LAST_USED_GRANULARITY_S)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn list_api_keys(&self, tenant: Option<TenantId>, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let rows = sqlx::query(
            "SELECT * FROM api_keys WHERE tenant_id IS NOT DISTINCT FROM $1 AND ($2::uuid IS NULL OR user_id = $2) ORDER BY created_at, id",
        )
        .bind(uuid_of(tenant))
        .bind(user.map(|u| u.0))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, user: Option<UserId>, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let r = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1)
             WHERE tenant_id IS NOT DISTINCT FROM $2 AND id = $3 AND ($4::uuid IS NULL OR user_id = $4)",
        )
        .bind(now)
        .bind(uuid_of(tenant))
        .bind(id.0)
        .bind(user.map(|u| u.0))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn put_table(&self, v: &NewTableVersion) -> Result<(TableRecord, Option<String>)> {
        let mut tx = self.tenant_tx(Some(v.tenant_id)).await?;
        name_free_of(&mut tx, true, v.tenant_id, &v.name).await?;
        let existing = table_row(&mut tx, v.tenant_id, &v.name, true).await?;
        let (id, version, created_at, previous, old_columns) = match &existing {
            Some(r) => {
                let id: String = r.get("id");
                let cols = load_columns(&mut tx, &id).await?;
                (id, r.get::<i64, _>("version") + 1, r.get::<i64, _>("created_at"), Some(r.get::<String, _>("location")), cols)
            }
            None => (Uuid::now_v7().to_string(), 1, v.now, None, Vec::new()),
        };
        let columns: Vec<ColumnRecord> = v.columns.iter().map(|c| carry_label(old_columns.iter().find(|o| o.name == c.name), c)).collect();
        sqlx::query(
            "INSERT INTO catalog_tables (id, tenant_id, name, domain, product, version, location, row_count, bytes, created_at, updated_at, dek_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET domain = excluded.domain, product = excluded.product, version = excluded.version,
                 location = excluded.location, row_count = excluded.row_count, bytes = excluded.bytes, updated_at = excluded.updated_at,
                 dek_version = excluded.dek_version",
        )
        .bind(&id)
        .bind(v.tenant_id.0)
        .bind(&v.name)
        .bind(&v.domain)
        .bind(&v.product)
        .bind(version)
        .bind(&v.location)
        .bind(v.row_count)
        .bind(v.bytes)
        .bind(created_at)
        .bind(v.now)
        .bind(v.dek_version.map(pg_version))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("DELETE FROM catalog_columns WHERE table_id = $1").bind(&id).execute(&mut *tx).await.map_err(db_err)?;
        if !columns.is_empty() {
            let mut q = sqlx::QueryBuilder::<Postgres>::new(
                "INSERT INTO catalog_columns (table_id, tenant_id, ordinal, name, data_type, classification, pii, entity, confidence, source, mask) ",
            );
            q.push_values(columns.iter().enumerate(), |mut b, (i, c)| {
                b.push_bind(&id)
                    .push_bind(v.tenant_id.0)
                    .push_bind(i as i64)
                    .push_bind(&c.name)
                    .push_bind(&c.data_type)
                    .push_bind(&c.classification)
                    .push_bind(&c.pii)
                    .push_bind(&c.entity)
                    .push_bind(c.confidence)
                    .push_bind(&c.source)
                    .push_bind(&c.mask);
            });
            q.build().execute(&mut *tx).await.map_err(db_err)?;
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
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let rows = sqlx::query("SELECT * FROM catalog_tables WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        let cols = sqlx::query("SELECT * FROM catalog_columns WHERE tenant_id = $1 ORDER BY table_id, ordinal")
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let mut by_table: HashMap<String, Vec<ColumnRecord>> = HashMap::new();
        for c in &cols {
            by_table.entry(c.get("table_id")).or_default().push(column_from_row(c));
        }
        Ok(rows
            .iter()
            .map(|r| {
                let id: String = r.get("id");
                table_from_row(r, by_table.remove(&id).unwrap_or_default())
            })
            .collect())
    }

    async fn table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let Some(r) = table_row(&mut tx, tenant, name, false).await? else { return Ok(None) };
        let cols = load_columns(&mut tx, &r.get::<String, _>("id")).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(table_from_row(&r, cols)))
    }

    async fn rekey_table(&self, r: &TableRekey) -> Result<bool> {
        let mut tx = self.tenant_tx(Some(r.tenant_id)).await?;
        let done = sqlx::query(
            "UPDATE catalog_tables SET location = $1, dek_version = $2, bytes = $3 WHERE tenant_id = $4 AND name = $5 AND location = $6",
        )
        .bind(&r.to_location)
        .bind(pg_version(r.dek_version))
        .bind(r.bytes)
        .bind(r.tenant_id.0)
        .bind(&r.name)
        .bind(&r.from_location)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let Some(r) = table_row(&mut tx, tenant, name, true).await? else { return Ok(None) };
        let id: String = r.get("id");
        let cols = load_columns(&mut tx, &id).await?;
        sqlx::query("DELETE FROM catalog_columns WHERE table_id = $1").bind(&id).execute(&mut *tx).await.map_err(db_err)?;
        sqlx::query("DELETE FROM catalog_tables WHERE id = $1 AND tenant_id = $2")
            .bind(&id)
            .bind(tenant.0)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(Some(table_from_row(&r, cols)))
    }

    async fn apply_scan(&self, tenant: TenantId, table: &str, version: i64, columns: &[ColumnRecord]) -> Result<Option<TableRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let Some(row) = table_row(&mut tx, tenant, table, true).await? else { return Ok(None) };
        if row.get::<i64, _>("version") != version {
            return Err(MoatError::conflict(
                "table_changed",
                format!("the table has a newer version than the scanned one ({version}); scan again"),
            ));
        }
        let id: String = row.get("id");
        for c in columns.iter().filter(|c| c.source != "manual") {
            sqlx::query(
                "UPDATE catalog_columns SET classification = $1, pii = $2, entity = $3, confidence = $4, source = $5, mask = $6
                 WHERE table_id = $7 AND name = $8 AND data_type = $9 AND source <> 'manual'",
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
        tx.commit().await.map_err(db_err)?;
        Ok(Some(table_from_row(&row, cols)))
    }

    async fn put_view(&self, v: &NewView) -> Result<ViewRecord> {
        let mut tx = self.tenant_tx(Some(v.tenant_id)).await?;
        name_free_of(&mut tx, false, v.tenant_id, &v.name).await?;
        let row = sqlx::query(
            "INSERT INTO catalog_views (id, tenant_id, name, sql, description, created_by, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7)
             ON CONFLICT (tenant_id, name) DO UPDATE SET sql = excluded.sql, description = excluded.description,
                 created_by = excluded.created_by, version = catalog_views.version + 1, updated_at = excluded.updated_at
             RETURNING *",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(v.tenant_id.0)
        .bind(&v.name)
        .bind(&v.sql)
        .bind(&v.description)
        .bind(&v.created_by)
        .bind(v.now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(view_from_row(&row))
    }

    async fn list_views(&self, tenant: TenantId) -> Result<Vec<ViewRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let rows = sqlx::query("SELECT * FROM catalog_views WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant.0)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(view_from_row).collect())
    }

    async fn delete_view(&self, tenant: TenantId, name: &str) -> Result<Option<ViewRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let row = sqlx::query("DELETE FROM catalog_views WHERE tenant_id = $1 AND name = $2 RETURNING *")
            .bind(tenant.0)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(row.as_ref().map(view_from_row))
    }

    async fn set_column_label(&self, tenant: TenantId, table: &str, column: &str, label: &ColumnLabel) -> Result<Option<ColumnRecord>> {
        let mut tx = self.tenant_tx(Some(tenant)).await?;
        let row = sqlx::query(
            "UPDATE catalog_columns SET classification = $1, pii = COALESCE($2, pii), entity = COALESCE($3, entity), mask = $4,
                 source = 'manual', confidence = NULL
             WHERE tenant_id = $6 AND name = $5 AND table_id = (SELECT id FROM catalog_tables WHERE tenant_id = $6 AND name = $7)
             RETURNING *",
        )
        .bind(&label.classification)
        .bind(&label.pii)
        .bind(&label.entity)
        .bind(&label.mask)
        .bind(column)
        .bind(tenant.0)
        .bind(table)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(row.as_ref().map(column_from_row))
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db_err)?;
        Ok(())
    }

    async fn validate_isolation(&self, tenant: TenantId) -> Result<IsolationReport> {
        self.isolation_report(tenant).await
    }
}

#[async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, s: &NewSession, refresh_hash: &str, refresh_expires_at: UnixSeconds) -> Result<()> {
        let mut tx = self.tenant_tx(s.tenant_id).await?;
        sqlx::query(
            "INSERT INTO sessions (id, tenant_id, user_id, created_at, expires_at, source_ip, user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(s.id.0)
        .bind(uuid_of(s.tenant_id))
        .bind(s.user_id.0)
        .bind(s.now)
        .bind(s.expires_at)
        .bind(&s.source_ip)
        .bind(&s.user_agent)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, tenant_id, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(refresh_hash)
            .bind(uuid_of(s.tenant_id))
            .bind(s.id.0)
            .bind(s.now)
            .bind(refresh_expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn session_auth_state(&self, tenant: Option<TenantId>, session: SessionId, user: UserId) -> Result<Option<AuthState>> {
        let mut tx = self.tenant_tx(tenant).await?;
        let row = sqlx::query(
            "SELECT s.revoked_at, u.status AS user_status, u.role, u.email, t.status AS tenant_status
             FROM sessions s JOIN users u ON u.id = s.user_id LEFT JOIN tenants t ON t.id = s.tenant_id
             WHERE s.tenant_id IS NOT DISTINCT FROM $1 AND s.id = $2 AND s.user_id = $3",
        )
        .bind(uuid_of(tenant))
        .bind(session.0)
        .bind(user.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
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
        // Before the tenant is known: the platform scope; the token row is locked, so two
        // rotations of one token serialise and the second sees it used.
        let mut tx = self.tx(PLATFORM).await?;
        let row = sqlx::query(
            "SELECT r.session_id, r.expires_at, r.used_at, s.revoked_at, s.expires_at AS session_expires_at, s.tenant_id, s.user_id
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE r.token_hash = $1 FOR UPDATE OF r, s",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(r) = row else { return Ok(RefreshOutcome::Invalid) };
        let session = SessionId(r.get("session_id"));
        let tenant_id = r.get::<Option<Uuid>, _>("tenant_id").map(TenantId);
        let user_id = UserId(r.get("user_id"));
        let used: Option<i64> = r.get("used_at");
        let revoked: Option<i64> = r.get("revoked_at");
        if used.is_some() {
            // RFC 9700 §4.14.2: a rotated refresh token came back — revoke the whole family.
            sqlx::query(
                "UPDATE sessions SET revoked_at = COALESCE(revoked_at, $1), revoke_reason = COALESCE(revoke_reason, 'refresh_reuse') WHERE id = $2",
            )
            .bind(now)
            .bind(session.0)
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
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2")
            .bind(now)
            .bind(presented_hash)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("INSERT INTO refresh_tokens (token_hash, tenant_id, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(successor_hash)
            .bind(uuid_of(tenant_id))
            .bind(session.0)
            .bind(now)
            .bind(successor_expires_at.min(session_expires))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(RefreshOutcome::Rotated { session, tenant_id, user_id })
    }

    async fn revoke_session(&self, tenant: Option<TenantId>, session: SessionId, reason: &str, now: UnixSeconds) -> Result<bool> {
        let mut tx = self.tenant_tx(tenant).await?;
        let r = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE tenant_id IS NOT DISTINCT FROM $3 AND id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(uuid_of(tenant))
        .bind(session.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn revoke_user_sessions(&self, tenant: Option<TenantId>, user: UserId, reason: &str, now: UnixSeconds) -> Result<u64> {
        let mut tx = self.tenant_tx(tenant).await?;
        let r = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2
             WHERE tenant_id IS NOT DISTINCT FROM $3 AND user_id = $4 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(uuid_of(tenant))
        .bind(user.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected())
    }
}

/// Rows per multi-row INSERT (13 parameters each, far below PostgreSQL's 65,535).
const INSERT_CHUNK: usize = 500;

fn record_from_row(r: &PgRow) -> Result<AuditRecord> {
    let entry: Vec<u8> = r.get("entry");
    let leaf: Vec<u8> = r.get("leaf_hash");
    AuditRecord::from_entry(&entry, &leaf).ok_or_else(|| corrupt("audit entry"))
}

fn checkpoint_from_row(r: &PgRow) -> CheckpointRecord {
    checkpoint_record!(r)
}

/// A trail's tree, locked for this transaction: the per-trail sequencer (appends from every
/// replica to one trail wait here, so they land in one order).
async fn lock_trail(tx: &mut Tx, trail: &str) -> Result<Frontier> {
    sqlx::query("INSERT INTO audit_trails (trail, size, frontier) VALUES ($1, 0, ''::bytea) ON CONFLICT DO NOTHING")
        .bind(trail)
        .execute(&mut **tx)
        .await
        .map_err(audit_unavailable)?;
    let row = sqlx::query("SELECT size, frontier FROM audit_trails WHERE trail = $1 FOR UPDATE")
        .bind(trail)
        .fetch_one(&mut **tx)
        .await
        .map_err(audit_unavailable)?;
    frontier_of(row.get("size"), &row.get::<Vec<u8>, _>("frontier"))
}

/// Sets the scope of the rest of the transaction.
async fn set_scope(tx: &mut Tx, scope: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)").bind(scope).execute(&mut **tx).await.map(|_| ())
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_batch(&self, batch: &[NewAuditEntry], keys: &AuditKeys) -> Result<Vec<Appended>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        // Trails in name order (two batches lock shared trails in one order: no deadlock);
        // within a trail, the batch's order.
        let mut by_trail: std::collections::BTreeMap<String, Vec<usize>> = std::collections::BTreeMap::new();
        for (i, n) in batch.iter().enumerate() {
            by_trail.entry(trail_name(n.event.tenant_id)).or_default().push(i);
        }
        let mut tx = begin_in(&self.pool, PLATFORM).await.map_err(audit_unavailable)?;
        let mut out: Vec<Option<Appended>> = vec![None; batch.len()];
        for (trail, idx) in &by_trail {
            set_scope(&mut tx, trail).await.map_err(audit_unavailable)?;
            let mut f = lock_trail(&mut tx, trail).await?;
            let mac_key = TrailMac::new(&keys.trail_key(trail));
            let mut nodes: Vec<(NodeId, Hash)> = Vec::new();
            let mut rows = Vec::with_capacity(idx.len());
            for &i in idx {
                let n = &batch[i];
                let sealed = seal_entry(trail, n, &mut f, &mac_key, |id, h| nodes.push((id, h)))?;
                out[i] = Some(Appended { trail: trail.clone(), seq: sealed.seq, leaf_hash: sealed.leaf });
                rows.push((n, sealed));
            }
            for chunk in rows.chunks(INSERT_CHUNK) {
                let mut q = sqlx::QueryBuilder::<Postgres>::new(
                    "INSERT INTO audit_log (trail, seq, ts_ms, event_id, category, action, outcome, actor, resource, entry, leaf_hash, hmac, search) ",
                );
                q.push_values(chunk, |mut b, (n, s)| {
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
                        .push_bind(s.mac.as_slice())
                        .push("to_tsvector('simple', ")
                        .push_bind_unseparated(search_text(&s.entry))
                        .push_unseparated(")");
                });
                q.build().execute(&mut *tx).await.map_err(audit_unavailable)?;
            }
            for chunk in nodes.chunks(INSERT_CHUNK) {
                let mut q = sqlx::QueryBuilder::<Postgres>::new("INSERT INTO audit_nodes (trail, level, idx, hash) ");
                q.push_values(chunk, |mut b, (id, h)| {
                    b.push_bind(trail).push_bind(i16::from(id.level)).push_bind(id.index as i64).push_bind(h.as_slice());
                });
                q.build().execute(&mut *tx).await.map_err(audit_unavailable)?;
            }
            sqlx::query("UPDATE audit_trails SET size = $1, frontier = $2 WHERE trail = $3")
                .bind(f.size() as i64)
                .bind(f.hashes().concat())
                .bind(trail)
                .execute(&mut *tx)
                .await
                .map_err(audit_unavailable)?;
        }
        tx.commit().await.map_err(audit_unavailable)?;
        out.into_iter().map(|a| a.ok_or_else(|| MoatError::internal("audit_append"))).collect()
    }

    async fn list(&self, trail: Option<TenantId>, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let trail = trail_name(trail);
        let limit = i64::from(f.limit.clamp(1, 10_000));
        let after = f.after_seq.unwrap_or(0).max(0);
        let mut q = sqlx::QueryBuilder::<Postgres>::new("SELECT entry, leaf_hash FROM audit_log WHERE trail = ");
        q.push_bind(trail.clone()).push(" AND seq > ").push_bind(after);
        if let Some(text) = &f.q {
            // Every word required (a phrase of its tokens, parsed like the entries); a trailing
            // `*` a prefix. Input is bound, never tsquery syntax.
            let words = search_words(text);
            if words.is_empty() {
                return Ok(vec![]);
            }
            for (word, prefix) in words {
                if prefix {
                    q.push(" AND search @@ to_tsquery('simple', ").push_bind(format!("'{}':*", word.replace('\'', "''"))).push(")");
                } else {
                    q.push(" AND search @@ phraseto_tsquery('simple', ").push_bind(word).push(")");
                }
            }
        }
        if let Some(actor) = &f.actor {
            q.push(" AND actor LIKE ").push_bind(format!("%{}%", like_escape(actor))).push(" ESCAPE '\\'");
        }
        if let Some(action) = &f.action {
            q.push(" AND (action = ").push_bind(action.clone());
            q.push(" OR (action >= ").push_bind(format!("{action}."));
            q.push(" AND action < ").push_bind(format!("{action}/")).push("))");
        }
        for (col, v) in [("category", &f.category), ("resource", &f.resource), ("outcome", &f.outcome)] {
            if let Some(v) = v {
                q.push(format_args!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        if let Some(from) = f.from_ms {
            q.push(" AND ts_ms >= ").push_bind(from);
        }
        if let Some(to) = f.to_ms {
            q.push(" AND ts_ms < ").push_bind(to);
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let mut tx = self.tx(&trail).await?;
        let rows = q.build().fetch_all(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn trail_head(&self, trail: &str) -> Result<TrailHead> {
        let mut tx = self.tx(trail).await?;
        let row = sqlx::query("SELECT size, frontier FROM audit_trails WHERE trail = $1")
            .bind(trail)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        let f = match row {
            Some(r) => frontier_of(r.get("size"), &r.get::<Vec<u8>, _>("frontier"))?,
            None => Frontier::new(),
        };
        Ok(TrailHead { size: f.size(), root: f.root() })
    }

    async fn trail_heads(&self) -> Result<Vec<(String, TrailHead)>> {
        let mut tx = self.tx(PLATFORM).await?;
        let rows =
            sqlx::query("SELECT trail, size, frontier FROM audit_trails ORDER BY trail").fetch_all(&mut *tx).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let f = frontier_of(r.get("size"), &r.get::<Vec<u8>, _>("frontier"))?;
                Ok((r.get("trail"), TrailHead { size: f.size(), root: f.root() }))
            })
            .collect()
    }

    async fn nodes(&self, trail: &str, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>> {
        let (leaves, mut inner): (Vec<&NodeId>, Vec<&NodeId>) = ids.iter().partition(|id| id.level == 0);
        let mut out = HashMap::with_capacity(ids.len());
        let mut tx = self.tx(trail).await?;
        if !leaves.is_empty() {
            let seqs: Vec<i64> = leaves.iter().map(|id| id.index as i64 + 1).collect();
            let rows = sqlx::query("SELECT seq, leaf_hash FROM audit_log WHERE trail = $1 AND seq = ANY($2)")
                .bind(trail)
                .bind(&seqs)
                .fetch_all(&mut *tx)
                .await
                .map_err(db_err)?;
            for r in rows {
                let id = NodeId { level: 0, index: (r.get::<i64, _>("seq") - 1) as u64 };
                out.insert(id, hash_of(&r.get::<Vec<u8>, _>("leaf_hash"))?);
            }
            // A record removed by retention left its leaf hash among the nodes (level 0).
            inner.extend(leaves.iter().filter(|id| !out.contains_key(id)));
        }
        if !inner.is_empty() {
            let levels: Vec<i16> = inner.iter().map(|id| i16::from(id.level)).collect();
            let idxs: Vec<i64> = inner.iter().map(|id| id.index as i64).collect();
            let rows = sqlx::query(
                "SELECT level, idx, hash FROM audit_nodes WHERE trail = $1
                 AND (level, idx) IN (SELECT * FROM unnest($2::smallint[], $3::bigint[]))",
            )
            .bind(trail)
            .bind(&levels)
            .bind(&idxs)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            for r in rows {
                let level = u8::try_from(r.get::<i16, _>("level")).map_err(|_| corrupt("audit node level"))?;
                out.insert(NodeId { level, index: r.get::<i64, _>("idx") as u64 }, hash_of(&r.get::<Vec<u8>, _>("hash"))?);
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn entries(&self, trail: &str, after: i64, limit: u32) -> Result<Vec<StoredEntry>> {
        let limit = i64::from(limit.clamp(1, 100_000));
        let mut tx = self.tx(trail).await?;
        // Present records and the leaf hashes of pruned ones, merged in seq order (a present row
        // sorts before a kept leaf of the same seq, which cannot both exist: one transaction).
        let rows = sqlx::query(
            "SELECT * FROM (
                 (SELECT seq, entry, leaf_hash, hmac, ts_ms, event_id, category, action, outcome, actor, resource
                  FROM audit_log WHERE trail = $1 AND seq > $2 ORDER BY seq LIMIT $3)
                 UNION ALL
                 (SELECT idx + 1, NULL::bytea, hash, NULL::bytea, NULL::bigint, NULL, NULL, NULL, NULL, NULL, NULL
                  FROM audit_nodes WHERE trail = $1 AND level = 0 AND idx >= $2 ORDER BY idx LIMIT $3)
             ) AS merged ORDER BY seq, entry IS NULL LIMIT $3",
        )
        .bind(trail)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(stored_entries!(rows))
    }

    async fn put_checkpoint(&self, cp: &CheckpointRecord) -> Result<()> {
        let mut tx = self.tx(&cp.trail).await?;
        sqlx::query("INSERT INTO audit_checkpoints (trail, size, ts_ms, note) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&cp.trail)
            .bind(cp.size as i64)
            .bind(cp.ts_ms)
            .bind(&cp.note)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn latest_checkpoint(&self, trail: &str) -> Result<Option<CheckpointRecord>> {
        let mut tx = self.tx(trail).await?;
        let row = sqlx::query("SELECT * FROM audit_checkpoints WHERE trail = $1 ORDER BY size DESC LIMIT 1")
            .bind(trail)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(row.as_ref().map(checkpoint_from_row))
    }

    async fn checkpoints(&self, trail: &str, after_size: u64, limit: u32) -> Result<Vec<CheckpointRecord>> {
        let mut tx = self.tx(trail).await?;
        let rows = sqlx::query("SELECT * FROM audit_checkpoints WHERE trail = $1 AND size > $2 ORDER BY size LIMIT $3")
            .bind(trail)
            .bind(after_size as i64)
            .bind(i64::from(limit.clamp(1, 100_000)))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(checkpoint_from_row).collect())
    }

    async fn segment_categories(&self, trail: &str, through_seq: i64, segment_records: u64) -> Result<Vec<SegmentCategory>> {
        let s = i64::try_from(segment_records.max(1)).map_err(|_| MoatError::internal("segment_size"))?;
        let mut tx = self.tx(trail).await?;
        let rows = sqlx::query(
            "SELECT (seq - 1) / $3 AS segment, category, count(*) AS records, max(ts_ms) AS newest
             FROM audit_log WHERE trail = $1 AND seq <= $2 AND action <> $4
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(trail)
        .bind(through_seq)
        .bind(s)
        .bind(RETENTION_ACTION)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(|r| segment_category!(r)).collect())
    }

    async fn category_seqs(&self, trail: &str, first: i64, last: i64, category: &str) -> Result<Vec<i64>> {
        let mut tx = self.tx(trail).await?;
        let seqs = sqlx::query_scalar(
            "SELECT seq FROM audit_log WHERE trail = $1 AND seq BETWEEN $2 AND $3 AND category = $4 AND action <> $5 ORDER BY seq",
        )
        .bind(trail)
        .bind(first)
        .bind(last)
        .bind(category)
        .bind(RETENTION_ACTION)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(seqs)
    }

    async fn prune(&self, p: &Prune) -> Result<u64> {
        let mut tx = self.tx(&p.trail).await?;
        // One prune of a trail at a time: the trail's head row is the lock.
        sqlx::query("SELECT 1 FROM audit_trails WHERE trail = $1 FOR UPDATE").bind(&p.trail).execute(&mut *tx).await.map_err(db_err)?;
        let done: Option<i64> = sqlx::query_scalar("SELECT count FROM audit_prunes WHERE trail = $1 AND retention_seq = $2")
            .bind(&p.trail)
            .bind(p.retention_seq)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        if done.is_some() {
            return Ok(0);
        }
        const COVERED: &str = "trail = $1 AND seq BETWEEN $2 AND $3 AND category = $4 AND action <> $5 AND seq < $6";
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
        Ok(present as u64)
    }

    async fn prunes(&self, trail: &str) -> Result<Vec<Prune>> {
        let mut tx = self.tx(trail).await?;
        let rows = sqlx::query("SELECT * FROM audit_prunes WHERE trail = $1 ORDER BY retention_seq")
            .bind(trail)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows.iter().map(|r| prune_record!(r)).collect())
    }

    async fn lease_cursor(&self, sink: &str, trail: &str, owner: &str, now_ms: i64, until_ms: i64, start: i64) -> Result<Option<i64>> {
        let mut tx = self.tx(trail).await?;
        let seq = sqlx::query_scalar(LEASE_CURSOR)
            .bind(sink)
            .bind(trail)
            .bind(start)
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(seq)
    }

    async fn advance_cursor(&self, sink: &str, trail: &str, owner: &str, seq: i64) -> Result<bool> {
        let mut tx = self.tx(trail).await?;
        let r = sqlx::query(
            "UPDATE event_cursors SET published_seq = greatest(published_seq, $1) WHERE sink = $2 AND trail = $3 AND lease_owner = $4",
        )
        .bind(seq)
        .bind(sink)
        .bind(trail)
        .bind(owner)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn cursors(&self, sink: &str) -> Result<Vec<(String, i64)>> {
        let mut tx = self.tx(PLATFORM).await?;
        let rows = sqlx::query_as("SELECT trail, published_seq FROM event_cursors WHERE sink = $1 ORDER BY trail")
            .bind(sink)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(rows)
    }
}
