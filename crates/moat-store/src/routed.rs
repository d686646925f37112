//! Dedicated databases for enterprise tenants: the PostgreSQL store as a router.
//!
//! The platform's database (`store.url`) holds platform accounts, the platform audit trail,
//! sign-in lockouts and one row per tenant. A tenant provisioned with a database of its own
//! (`TenantDatabase`) keeps there everything else that is its: its users, sessions, refresh
//! tokens, API keys, settings, catalog, audit trail (Merkle nodes, checkpoints, prunes, event
//! cursors), its schema and role, and the relations it links as query sources. The platform's
//! row only routes to it.
//!
//! Every call names its tenant (or trail) and goes to that tenant's database, opened on first
//! use with a pool of its own ([`DEDICATED_POOL`] runtime connections per replica) and migrated
//! by its owner role. A tenant's route is fixed at provisioning (the runtime role may not
//! change it: see migration 3), so a replica caches it for good. Lookups that come before the
//! tenant is known — a presented API key or refresh token, by hash — ask the platform and then
//! every dedicated database at once (while one is down, a key no reachable database knows
//! answers 503, not 401: it may be that database's); trail listings (checkpointer, retention,
//! event forwarding) cover every database. One dedicated database being down refuses that tenant's requests (503
//! `store_unavailable`) and nobody else's: its trails are left out of listings until it is
//! back, and an audit batch commits per database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use moat_core::apikey::StoredKey;
use moat_core::audit::{AuditKeys, trail_tenant};
use moat_core::clock::UnixSeconds;
use moat_core::ids::{ApiKeyId, Email, SessionId, TenantId, UserId};
use moat_core::lockout::{FailureOutcome, LockoutPolicy, LockoutState};
use moat_core::role::Role;
use moat_core::tlog::{Hash, NodeId};
use moat_core::{MoatError, Result};

use crate::postgres::PgStore;
use crate::*;

/// Runtime connections per replica to each dedicated database (the platform's pool has 16).
pub const DEDICATED_POOL: u32 = 8;

/// The code of an audit append refused because a tenant's dedicated database could not take it:
/// that tenant's outage, which leaves the audit log (and `/readyz`) healthy for everyone else.
pub const TENANT_STORE_UNAVAILABLE: &str = "tenant_store_unavailable";

fn tenant_outage(e: MoatError) -> MoatError {
    tracing::warn!(code = e.code, "a dedicated tenant database refused audit records");
    MoatError::unavailable(TENANT_STORE_UNAVAILABLE, "the tenant's database cannot take audit records; try again")
}

pub struct RoutedStore {
    platform: Arc<PgStore>,
    /// Tenants whose route is known: `Some` = a dedicated database, `None` = the platform's.
    routes: RwLock<HashMap<TenantId, Option<Arc<PgStore>>>>,
    databases: tokio::sync::Mutex<Databases>,
}

/// Dedicated databases by runtime URL: those opened (tenants that share one share its pool),
/// and when an attempt to open one last failed.
#[derive(Default)]
struct Databases {
    open: HashMap<String, Arc<PgStore>>,
    failed: HashMap<String, (std::time::Instant, MoatError)>,
}

/// How long a database that could not be opened is not tried again (its callers get the same
/// error at once instead of each waiting on the connection).
const RETRY_OPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl RoutedStore {
    pub fn new(platform: PgStore) -> Self {
        Self { platform: Arc::new(platform), routes: RwLock::new(HashMap::new()), databases: tokio::sync::Mutex::new(Databases::default()) }
    }

    /// The platform's database.
    pub fn platform(&self) -> &PgStore {
        &self.platform
    }

    fn cached(&self, tenant: TenantId) -> Option<Option<Arc<PgStore>>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).get(&tenant).cloned()
    }

    /// The database of `tenant`: its own, or the platform's (also for a tenant that does not
    /// exist, whose scope reads nothing there).
    pub async fn store_of(&self, tenant: TenantId) -> Result<Arc<PgStore>> {
        if let Some(route) = self.cached(tenant) {
            return Ok(route.unwrap_or_else(|| self.platform.clone()));
        }
        let Some(record) = self.platform.tenant_by_id(tenant).await? else {
            return Ok(self.platform.clone());
        };
        let Some(db) = record.database else {
            self.routes.write().unwrap_or_else(|p| p.into_inner()).insert(tenant, None);
            return Ok(self.platform.clone());
        };
        let store = self
            .database(&db, |e| {
                tracing::error!(tenant = record.slug, code = e.code, message = %e.message, "cannot open the tenant's dedicated database");
                MoatError::unavailable("store_unavailable", format!("the database of tenant {} cannot be reached; try again", record.slug))
            })
            .await?;
        self.routes.write().unwrap_or_else(|p| p.into_inner()).insert(tenant, Some(store.clone()));
        Ok(store)
    }

    /// The store of a dedicated database, opened (and migrated) once; `failed` says why it
    /// could not be.
    async fn database(&self, db: &TenantDatabase, failed: impl FnOnce(MoatError) -> MoatError) -> Result<Arc<PgStore>> {
        let mut dbs = self.databases.lock().await;
        if let Some(s) = dbs.open.get(&db.url) {
            return Ok(s.clone());
        }
        if let Some((at, e)) = dbs.failed.get(&db.url)
            && at.elapsed() < RETRY_OPEN_AFTER
        {
            return Err(failed(e.clone()));
        }
        match PgStore::open_sized(&db.url, Some(&db.admin_url), DEDICATED_POOL).await {
            Ok(store) => {
                let store = Arc::new(store);
                dbs.failed.remove(&db.url);
                dbs.open.insert(db.url.clone(), store.clone());
                Ok(store)
            }
            Err(e) => {
                dbs.failed.insert(db.url.clone(), (std::time::Instant::now(), e.clone()));
                Err(failed(e))
            }
        }
    }

    async fn scope(&self, tenant: Option<TenantId>) -> Result<Arc<PgStore>> {
        match tenant {
            Some(t) => self.store_of(t).await,
            None => Ok(self.platform.clone()),
        }
    }

    /// The database of an audit trail (a tenant id, or `platform`).
    async fn trail(&self, trail: &str) -> Result<Arc<PgStore>> {
        self.scope(trail_tenant(trail).flatten()).await
    }

    /// Every dedicated database that can be reached now; one that cannot is logged and left
    /// out (its tenants' requests are refused meanwhile).
    async fn dedicated(&self) -> Result<Vec<Arc<PgStore>>> {
        let mut out: Vec<Arc<PgStore>> = Vec::new();
        for t in self.platform.routed_tenants().await? {
            match self.store_of(t.id).await {
                // Tenants may share a dedicated database (one pool, one store): ask it once.
                Ok(s) if !out.iter().any(|o| Arc::ptr_eq(o, &s)) => out.push(s),
                Ok(_) => {}
                Err(e) => tracing::warn!(tenant = %t.slug, code = e.code, "a dedicated tenant database cannot be reached; left out"),
            }
        }
        Ok(out)
    }

    /// The answer of the first dedicated database for which `ask` finds something, asking all
    /// at once; an error only when none found it and one of them failed.
    async fn find_dedicated<T, F, Fut>(&self, ask: F) -> Result<Option<T>>
    where
        F: Fn(Arc<PgStore>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let answers = futures::future::join_all(self.dedicated().await?.into_iter().map(ask)).await;
        let mut failure = None;
        for a in answers {
            match a {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(None), Err)
    }
}

#[async_trait]
impl MetaStore for RoutedStore {
    /// A tenant with a database of its own is provisioned there first (its row, schema, role and
    /// first Admin, in one transaction of that database), then routed from the platform's. A
    /// failure of the second step leaves a tenant no route reaches: provisioning again under
    /// another slug, or the same once freed, is safe.
    async fn create_tenant(&self, t: &NewTenant, first_admin: Option<&NewUser>) -> Result<TenantRecord> {
        let Some(db) = &t.database else { return self.platform.create_tenant(t, first_admin).await };
        if first_admin.is_some_and(|a| a.tenant_id != Some(t.id)) {
            return Err(MoatError::invalid("invalid_first_admin", "a tenant's first Admin must belong to that tenant"));
        }
        if self.platform.tenant_by_slug(t.slug.as_str()).await?.is_some() {
            return Err(MoatError::conflict("tenant_exists", format!("tenant {} already exists", t.slug)));
        }
        let store = self
            .database(db, |e| {
                MoatError::invalid("database_unreachable", format!("the tenant's database cannot be opened: {} ({})", e.message, e.code))
            })
            .await?;
        store.create_tenant(&NewTenant { database: None, ..t.clone() }, first_admin).await?;
        let record = self.platform.create_tenant(t, None).await?;
        self.routes.write().unwrap_or_else(|p| p.into_inner()).insert(t.id, Some(store));
        Ok(record)
    }

    async fn tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRecord>> {
        self.platform.tenant_by_slug(slug).await
    }

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<TenantRecord>> {
        self.platform.tenant_by_id(id).await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>> {
        self.platform.list_tenants().await
    }

    /// Both rows. The platform's first: sign-in and refresh read it, so a suspension holds for
    /// them at once; sessions and API keys read the tenant's own row, so the change is
    /// reported done only once that row has it too (else 503, and the caller tries again).
    async fn set_tenant_status(&self, id: TenantId, status: TenantStatus, now: UnixSeconds) -> Result<bool> {
        let found = self.platform.set_tenant_status(id, status, now).await?;
        let store = self.store_of(id).await?;
        if found && !Arc::ptr_eq(&store, &self.platform) {
            store.set_tenant_status(id, status, now).await?;
        }
        Ok(found)
    }

    async fn tenant_setting(&self, tenant: TenantId, key: &str) -> Result<Option<String>> {
        self.store_of(tenant).await?.tenant_setting(tenant, key).await
    }

    async fn set_tenant_setting(&self, tenant: TenantId, key: &str, value: &str, now: UnixSeconds) -> Result<bool> {
        self.store_of(tenant).await?.set_tenant_setting(tenant, key, value, now).await
    }

    async fn add_tenant_key(&self, k: &NewTenantKey) -> Result<bool> {
        self.store_of(k.tenant_id).await?.add_tenant_key(k).await
    }

    async fn tenant_keys(&self, tenant: TenantId) -> Result<Vec<TenantKeyRecord>> {
        self.store_of(tenant).await?.tenant_keys(tenant).await
    }

    async fn rewrap_tenant_key(&self, tenant: TenantId, version: u32, kek: &str, wrapped: &[u8]) -> Result<bool> {
        self.store_of(tenant).await?.rewrap_tenant_key(tenant, version, kek, wrapped).await
    }

    async fn shred_tenant_keys(&self, tenant: TenantId, now: UnixSeconds) -> Result<u64> {
        self.store_of(tenant).await?.shred_tenant_keys(tenant, now).await
    }

    async fn create_user(&self, u: &NewUser) -> Result<UserRecord> {
        self.scope(u.tenant_id).await?.create_user(u).await
    }

    async fn user_by_email(&self, tenant: Option<TenantId>, email: &Email) -> Result<Option<UserRecord>> {
        self.scope(tenant).await?.user_by_email(tenant, email).await
    }

    async fn user_by_id(&self, tenant: Option<TenantId>, id: UserId) -> Result<Option<UserRecord>> {
        self.scope(tenant).await?.user_by_id(tenant, id).await
    }

    async fn list_users(&self, tenant: Option<TenantId>) -> Result<Vec<UserRecord>> {
        self.scope(tenant).await?.list_users(tenant).await
    }

    async fn set_user_status(&self, tenant: Option<TenantId>, id: UserId, status: UserStatus, now: UnixSeconds) -> Result<bool> {
        self.scope(tenant).await?.set_user_status(tenant, id, status, now).await
    }

    async fn set_user_role(&self, tenant: TenantId, id: UserId, role: Role, now: UnixSeconds) -> Result<bool> {
        self.store_of(tenant).await?.set_user_role(tenant, id, role, now).await
    }

    async fn set_password(&self, tenant: Option<TenantId>, id: UserId, new_hash: &str, now: UnixSeconds) -> Result<bool> {
        self.scope(tenant).await?.set_password(tenant, id, new_hash, now).await
    }

    async fn set_mfa(&self, tenant: Option<TenantId>, id: UserId, change: MfaChange<'_>, now: UnixSeconds) -> Result<bool> {
        self.scope(tenant).await?.set_mfa(tenant, id, change, now).await
    }

    async fn password_history(&self, tenant: Option<TenantId>, id: UserId, n: usize) -> Result<Vec<String>> {
        self.scope(tenant).await?.password_history(tenant, id, n).await
    }

    // Lockout counters are keyed by the tenant slug as presented, before any tenant is known
    // (an unknown slug is counted too): they stay in the platform's database.
    async fn lockout_state(&self, scope_key: &str, email: &str) -> Result<LockoutState> {
        self.platform.lockout_state(scope_key, email).await
    }

    async fn record_login_failure(
        &self,
        scope_key: &str,
        email: &str,
        policy: &LockoutPolicy,
        now: UnixSeconds,
    ) -> Result<(FailureOutcome, LockoutState)> {
        self.platform.record_login_failure(scope_key, email, policy, now).await
    }

    async fn clear_lockout(&self, scope_key: &str, email: &str) -> Result<()> {
        self.platform.clear_lockout(scope_key, email).await
    }

    async fn create_api_key(&self, k: &NewApiKey) -> Result<ApiKeyRecord> {
        self.scope(k.tenant_id).await?.create_api_key(k).await
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<StoredKey>> {
        if let Some(k) = self.platform.api_key_by_hash(key_hash).await? {
            return Ok(Some(k));
        }
        self.find_dedicated(|s| async move { s.api_key_by_hash(key_hash).await }).await
    }

    async fn touch_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, now: UnixSeconds) -> Result<()> {
        self.scope(tenant).await?.touch_api_key(tenant, id, now).await
    }

    async fn list_api_keys(&self, tenant: Option<TenantId>, user: Option<UserId>) -> Result<Vec<ApiKeyRecord>> {
        self.scope(tenant).await?.list_api_keys(tenant, user).await
    }

    async fn revoke_api_key(&self, tenant: Option<TenantId>, id: ApiKeyId, user: Option<UserId>, now: UnixSeconds) -> Result<bool> {
        self.scope(tenant).await?.revoke_api_key(tenant, id, user, now).await
    }

    async fn put_table(&self, v: &NewTableVersion) -> Result<(TableRecord, Option<String>)> {
        self.store_of(v.tenant_id).await?.put_table(v).await
    }

    async fn list_tables(&self, tenant: TenantId) -> Result<Vec<TableRecord>> {
        self.store_of(tenant).await?.list_tables(tenant).await
    }

    async fn table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>> {
        self.store_of(tenant).await?.table(tenant, name).await
    }

    async fn delete_table(&self, tenant: TenantId, name: &str) -> Result<Option<TableRecord>> {
        self.store_of(tenant).await?.delete_table(tenant, name).await
    }

    async fn rekey_table(&self, r: &TableRekey) -> Result<bool> {
        self.store_of(r.tenant_id).await?.rekey_table(r).await
    }

    async fn apply_scan(&self, tenant: TenantId, table: &str, version: i64, columns: &[ColumnRecord]) -> Result<Option<TableRecord>> {
        self.store_of(tenant).await?.apply_scan(tenant, table, version, columns).await
    }

    async fn put_view(&self, v: &NewView) -> Result<ViewRecord> {
        self.store_of(v.tenant_id).await?.put_view(v).await
    }

    async fn list_views(&self, tenant: TenantId) -> Result<Vec<ViewRecord>> {
        self.store_of(tenant).await?.list_views(tenant).await
    }

    async fn delete_view(&self, tenant: TenantId, name: &str) -> Result<Option<ViewRecord>> {
        self.store_of(tenant).await?.delete_view(tenant, name).await
    }

    async fn set_column_label(&self, tenant: TenantId, table: &str, column: &str, label: &ColumnLabel) -> Result<Option<ColumnRecord>> {
        self.store_of(tenant).await?.set_column_label(tenant, table, column, label).await
    }

    /// The platform's database: one tenant's database being down is that tenant's outage, not
    /// a reason to take the replica out of the load balancer.
    async fn ping(&self) -> Result<()> {
        self.platform.ping().await
    }

    /// The checks of the tenant's own database, and for a dedicated tenant one more: the
    /// platform's database holds nothing of it but its route (no row, no schema).
    async fn validate_isolation(&self, tenant: TenantId) -> Result<IsolationReport> {
        let store = self.store_of(tenant).await?;
        let mut report = store.validate_isolation(tenant).await?;
        if !Arc::ptr_eq(&store, &self.platform) {
            let (rows, schema) = self.platform.traces_of(tenant).await?;
            report.check(
                "placement:dedicated_database",
                rows == 0 && !schema,
                format!(
                    "the tenant lives in its own database; the platform's holds {rows} of its rows besides its route, {}",
                    if schema { "and its schema" } else { "and no schema of it" }
                ),
            );
        }
        Ok(report)
    }
}

#[async_trait]
impl SessionStore for RoutedStore {
    async fn create_session(&self, s: &NewSession, refresh_hash: &str, refresh_expires_at: UnixSeconds) -> Result<()> {
        self.scope(s.tenant_id).await?.create_session(s, refresh_hash, refresh_expires_at).await
    }

    async fn session_auth_state(&self, tenant: Option<TenantId>, session: SessionId, user: UserId) -> Result<Option<AuthState>> {
        self.scope(tenant).await?.session_auth_state(tenant, session, user).await
    }

    async fn rotate_refresh(
        &self,
        presented_hash: &str,
        successor_hash: &str,
        successor_expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<RefreshOutcome> {
        let outcome = self.platform.rotate_refresh(presented_hash, successor_hash, successor_expires_at, now).await?;
        if outcome != RefreshOutcome::Invalid {
            return Ok(outcome);
        }
        // Only the database that holds the token changes anything.
        let found = self
            .find_dedicated(|s| async move {
                let o = s.rotate_refresh(presented_hash, successor_hash, successor_expires_at, now).await?;
                Ok((o != RefreshOutcome::Invalid).then_some(o))
            })
            .await?;
        Ok(found.unwrap_or(RefreshOutcome::Invalid))
    }

    async fn revoke_session(&self, tenant: Option<TenantId>, session: SessionId, reason: &str, now: UnixSeconds) -> Result<bool> {
        self.scope(tenant).await?.revoke_session(tenant, session, reason, now).await
    }

    async fn revoke_user_sessions(&self, tenant: Option<TenantId>, user: UserId, reason: &str, now: UnixSeconds) -> Result<u64> {
        self.scope(tenant).await?.revoke_user_sessions(tenant, user, reason, now).await
    }
}

#[async_trait]
impl AuditStore for RoutedStore {
    async fn append_batch(&self, batch: &[NewAuditEntry], keys: &AuditKeys) -> Result<Vec<Appended>> {
        self.append_each(batch, keys).await.into_iter().collect()
    }

    /// One transaction per database, all at once: a dedicated database that cannot write
    /// refuses its own tenant's records only.
    async fn append_each(&self, batch: &[NewAuditEntry], keys: &AuditKeys) -> Vec<Result<Appended>> {
        let mut groups: Vec<(Arc<PgStore>, Vec<usize>)> = Vec::new();
        let mut out: Vec<Option<Result<Appended>>> = vec![None; batch.len()];
        for (i, e) in batch.iter().enumerate() {
            match self.scope(e.event.tenant_id).await {
                Ok(s) => match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &s)) {
                    Some((_, idx)) => idx.push(i),
                    None => groups.push((s, vec![i])),
                },
                // Only a dedicated database is opened on the way.
                Err(err) => out[i] = Some(Err(tenant_outage(err))),
            }
        }
        let appended = futures::future::join_all(groups.iter().map(|(s, idx)| async move {
            let entries: Vec<NewAuditEntry> = idx.iter().map(|&i| batch[i].clone()).collect();
            s.append_each(&entries, keys).await
        }))
        .await;
        for ((s, idx), results) in groups.iter().zip(appended) {
            let dedicated = !Arc::ptr_eq(s, &self.platform);
            for (&i, r) in idx.iter().zip(results) {
                out[i] = Some(if dedicated { r.map_err(tenant_outage) } else { r });
            }
        }
        out.into_iter().map(|r| r.unwrap_or_else(|| Err(MoatError::internal("audit_append_lost")))).collect()
    }

    async fn list(&self, trail: Option<TenantId>, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.scope(trail).await?.list(trail, filter).await
    }

    async fn trail_head(&self, trail: &str) -> Result<TrailHead> {
        self.trail(trail).await?.trail_head(trail).await
    }

    /// The platform's trails and those of every dedicated database that answers.
    async fn trail_heads(&self) -> Result<Vec<(String, TrailHead)>> {
        let mut heads = self.platform.trail_heads().await?;
        for s in self.dedicated().await? {
            match s.trail_heads().await {
                Ok(h) => heads.extend(h),
                Err(e) => tracing::warn!(code = e.code, "a dedicated tenant database did not list its trails; left out"),
            }
        }
        Ok(heads)
    }

    async fn nodes(&self, trail: &str, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>> {
        self.trail(trail).await?.nodes(trail, ids).await
    }

    async fn entries(&self, trail: &str, after: i64, limit: u32) -> Result<Vec<StoredEntry>> {
        self.trail(trail).await?.entries(trail, after, limit).await
    }

    async fn put_checkpoint(&self, cp: &CheckpointRecord) -> Result<()> {
        self.trail(&cp.trail).await?.put_checkpoint(cp).await
    }

    async fn latest_checkpoint(&self, trail: &str) -> Result<Option<CheckpointRecord>> {
        self.trail(trail).await?.latest_checkpoint(trail).await
    }

    async fn checkpoints(&self, trail: &str, after_size: u64, limit: u32) -> Result<Vec<CheckpointRecord>> {
        self.trail(trail).await?.checkpoints(trail, after_size, limit).await
    }

    async fn segment_categories(&self, trail: &str, through_seq: i64, segment_records: u64) -> Result<Vec<SegmentCategory>> {
        self.trail(trail).await?.segment_categories(trail, through_seq, segment_records).await
    }

    async fn category_seqs(&self, trail: &str, first: i64, last: i64, category: &str) -> Result<Vec<i64>> {
        self.trail(trail).await?.category_seqs(trail, first, last, category).await
    }

    async fn prune(&self, p: &Prune) -> Result<u64> {
        self.trail(&p.trail).await?.prune(p).await
    }

    async fn prunes(&self, trail: &str) -> Result<Vec<Prune>> {
        self.trail(trail).await?.prunes(trail).await
    }

    async fn lease_cursor(&self, sink: &str, trail: &str, owner: &str, now_ms: i64, until_ms: i64, start: i64) -> Result<Option<i64>> {
        self.trail(trail).await?.lease_cursor(sink, trail, owner, now_ms, until_ms, start).await
    }

    async fn advance_cursor(&self, sink: &str, trail: &str, owner: &str, seq: i64) -> Result<bool> {
        self.trail(trail).await?.advance_cursor(sink, trail, owner, seq).await
    }

    async fn cursors(&self, sink: &str) -> Result<Vec<(String, i64)>> {
        let mut all = self.platform.cursors(sink).await?;
        for s in self.dedicated().await? {
            match s.cursors(sink).await {
                Ok(c) => all.extend(c),
                Err(e) => tracing::warn!(code = e.code, "a dedicated tenant database did not list its event cursors; left out"),
            }
        }
        Ok(all)
    }

    async fn import_legacy(&self, keys: &AuditKeys) -> Result<u64> {
        self.platform.import_legacy(keys).await
    }
}

#[async_trait]
impl TenantRelations for RoutedStore {
    async fn describe(&self, t: TenantId, relation: &str) -> Result<Option<RelationInfo>> {
        self.store_of(t).await?.describe(t, relation).await
    }

    async fn read(
        &self,
        t: TenantId,
        select: String,
        params: Vec<SqlValue>,
        timeout: std::time::Duration,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<sqlx::postgres::PgRow>>> {
        self.store_of(t).await?.read(t, select, params, timeout).await
    }
}
