//! Key rotation: a tenant's next data key (DEK) and the background re-encryption of its tables
//! under it; the schedule (`keys.rotation_days`); master-key rotation, which re-wraps DEKs
//! and touches no file.
//!
//! Re-encryption's work list is held by the catalog, not by the job: every Parquet table whose
//! `dek_version` is not the tenant's current one (plaintext tables written before encryption at
//! rest included). A replica leases a tenant's list (sink `rekey` of the store's leases) and
//! copies each table's current files into a new version encrypted under the current DEK, then
//! swaps it in with `rekey_table`, which succeeds only while the table is still at the copied
//! version: an upload or delete that came in meanwhile wins and the copy is discarded.
//! Queries read whichever files the catalog names under whichever key it names, so they keep
//! working throughout, and a superseded version's files stay for a grace period so that
//! queries already reading them finish. A crash leaves the list shorter; the next check (at
//! start and every `keys.rotation_check_interval_s`) finishes it. The lease only saves double
//! work: two replicas copying one table both write a copy, one swap wins. The tenant's
//! accounts' second factors are sealed again under the new key too (`mfa::reseal_stale`, each
//! a compare-and-swap), after its tables.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::ids::TenantId;
use moat_core::{MoatError, Result};
use moat_query::ingest::{IngestLimits, Prepared, write_parquet};
use moat_store::{TableRecord, TableRekey, TenantStatus};
use serde::Serialize;

use crate::http::extract::ClientInfo;
use crate::state::AppState;

/// The lease name of re-encryption in the store's lease table.
const LEASE_SINK: &str = "rekey";
/// How long a replica holds a tenant's re-encryption; renewed after every table.
const LEASE_MS: i64 = 10 * 60 * 1000;
/// Rows per batch while copying.
const COPY_BATCH_ROWS: usize = 8_192;

/// A tenant's re-encryption as this replica last ran or is running it.
#[derive(Debug, Clone, Serialize)]
pub struct RekeyProgress {
    pub dek_version: u32,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    pub tables_total: u64,
    pub tables_done: u64,
    /// Replaced or deleted while being copied (nothing left to re-encrypt).
    pub tables_skipped: u64,
    pub rows: u64,
    pub bytes_written: u64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// Megabytes written per second so far.
    pub mb_per_s: f64,
    /// The error code that stopped it (the next check resumes).
    pub error: Option<String>,
}

/// Re-encryption jobs of this replica.
pub struct Rekeying {
    owner: String,
    progress: Mutex<HashMap<TenantId, RekeyProgress>>,
    running: Mutex<HashSet<TenantId>>,
}

impl Default for Rekeying {
    fn default() -> Self {
        Self {
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7().simple()),
            progress: Mutex::new(HashMap::new()),
            running: Mutex::new(HashSet::new()),
        }
    }
}

impl std::fmt::Debug for Rekeying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rekeying").field("owner", &self.owner).finish_non_exhaustive()
    }
}

impl Rekeying {
    pub fn progress(&self, tenant: TenantId) -> Option<RekeyProgress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).get(&tenant).cloned()
    }

    fn update(&self, tenant: TenantId, f: impl FnOnce(&mut RekeyProgress)) {
        if let Some(p) = self.progress.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&tenant) {
            f(p);
        }
    }

    /// Marks the tenant's job as running here; `false` if it already is.
    fn claim(&self, tenant: TenantId) -> bool {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant)
    }

    fn release(&self, tenant: TenantId) {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
    }
}

/// Whether a table's files are ours to re-encrypt (not a linked PostgreSQL relation) and not
/// under the current key yet.
fn pending(t: &TableRecord, current: u32) -> bool {
    crate::pg_source::relation_of(&t.location).is_none() && t.dek_version != Some(current)
}

/// What `rotate` did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    pub tenant: String,
    pub previous_version: u32,
    pub dek_version: u32,
    pub tables_pending: u64,
}

/// Makes the tenant's next DEK version, audits it (`key.rotate`) and starts re-encrypting its
/// tables in the background.
pub async fn rotate(st: &Arc<AppState>, tenant: TenantId, actor: Actor, client: &ClientInfo, reason: &str) -> Result<Rotated> {
    let t = st.stores.meta.tenant_by_id(tenant).await?.ok_or_else(|| MoatError::not_found("tenant_not_found", "no such tenant"))?;
    let (previous, current, made) = st.data_keys.rotate(tenant, st.clock.now_s()).await?;
    let tables_pending = st.stores.meta.list_tables(tenant).await?.iter().filter(|t| pending(t, current)).count() as u64;
    // A replica that lost the race to make this version leaves the record to the winner.
    if made {
        let event = AuditEvent::new(Some(tenant), Category::Admin, "key.rotate", actor, Outcome::Success)
            .resource(format!("tenant:{}", t.slug))
            .details(serde_json::json!({
                "previous_version": previous, "dek_version": current, "kek": st.data_keys.provider().current_kek(),
                "tables_pending": tables_pending, "reason": reason,
            }));
        st.record(client, event).await?;
    }
    spawn_reencrypt(st.clone(), tenant);
    Ok(Rotated { tenant: t.slug.as_str().to_owned(), previous_version: previous, dek_version: current, tables_pending })
}

/// Re-encrypts the tenant's pending tables on a background task (if no job of this replica
/// is at it already).
pub fn spawn_reencrypt(st: Arc<AppState>, tenant: TenantId) {
    tokio::spawn(async move {
        if let Err(e) = reencrypt(&st, tenant).await {
            tracing::error!(%tenant, code = e.code, "re-encryption stopped; the next check resumes it");
        }
    });
}

/// Re-encrypts every pending table of the tenant under its current DEK. `Ok(false)` when
/// another job (here or on another replica) holds the tenant.
pub async fn reencrypt(st: &AppState, tenant: TenantId) -> Result<bool> {
    if !st.rekey.claim(tenant) {
        return Ok(false);
    }
    let out = reencrypt_claimed(st, tenant).await;
    st.rekey.release(tenant);
    if let Err(e) = &out {
        let now = st.clock.now_s();
        st.rekey.update(tenant, |p| {
            p.state = "failed";
            p.error = Some(e.code.to_owned());
            p.finished_at = Some(now);
        });
    }
    out
}

async fn lease(st: &AppState, tenant: TenantId, hold: bool) -> Result<bool> {
    let now = crate::state::now_ms(&*st.clock);
    let until = if hold { now + LEASE_MS } else { now };
    Ok(st.stores.audit.lease_cursor(LEASE_SINK, &tenant.to_string(), &st.rekey.owner, now, until, 0).await?.is_some())
}

async fn reencrypt_claimed(st: &AppState, tenant: TenantId) -> Result<bool> {
    if !lease(st, tenant, true).await? {
        return Ok(false);
    }
    let keys = st.data_keys.keyring(tenant, &[], st.clock.now_s()).await?;
    let current = keys.current_version();
    let work: Vec<TableRecord> = st.stores.meta.list_tables(tenant).await?.into_iter().filter(|t| pending(t, current)).collect();
    let started = Instant::now();
    st.rekey.progress.lock().unwrap_or_else(|p| p.into_inner()).insert(
        tenant,
        RekeyProgress {
            dek_version: current,
            state: "running",
            tables_total: work.len() as u64,
            tables_done: 0,
            tables_skipped: 0,
            rows: 0,
            bytes_written: 0,
            started_at: st.clock.now_s(),
            finished_at: None,
            mb_per_s: 0.0,
            error: None,
        },
    );
    let mut bytes = 0u64;
    let mut rows = 0u64;
    let mut skipped = 0u64;
    for (i, t) in work.iter().enumerate() {
        let copied = copy_table(st, t, keys.clone()).await?;
        let swapped = st
            .stores
            .meta
            .rekey_table(&TableRekey {
                tenant_id: tenant,
                name: t.name.clone(),
                from_location: t.location.clone(),
                to_location: copied.prefix.clone(),
                dek_version: current,
                bytes: copied.bytes as i64,
            })
            .await;
        match swapped {
            Ok(true) => crate::tables::retire_later(st.tables.clone(), t.location.clone()),
            Ok(false) => {
                skipped += 1;
                let _ = st.tables.delete_prefix(&copied.prefix).await;
            }
            Err(e) => {
                let _ = st.tables.delete_prefix(&copied.prefix).await;
                return Err(e);
            }
        }
        bytes += copied.bytes;
        rows += copied.rows;
        let rate = bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3);
        st.rekey.update(tenant, |p| {
            p.tables_done = i as u64 + 1;
            p.tables_skipped = skipped;
            p.rows = rows;
            p.bytes_written = bytes;
            p.mb_per_s = (rate * 10.0).round() / 10.0;
        });
        tracing::info!(%tenant, table = t.name, done = i + 1, of = work.len(), mb_per_s = rate, "re-encrypted a table");
        lease(st, tenant, true).await?;
    }
    let secrets = crate::mfa::reseal_stale(st, tenant).await?;
    let now = st.clock.now_s();
    st.rekey.update(tenant, |p| {
        p.state = "done";
        p.finished_at = Some(now);
    });
    if !work.is_empty() || secrets > 0 {
        let details = serde_json::json!({
            "dek_version": current, "tables": work.len(), "tables_skipped": skipped, "rows": rows, "bytes_written": bytes,
            "secrets_resealed": secrets, "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        let event = AuditEvent::new(Some(tenant), Category::System, "key.reencrypt", Actor::system("key rotation"), Outcome::Success)
            .resource("tables")
            .details(details);
        st.record(&ClientInfo::default(), event).await?;
    }
    lease(st, tenant, false).await?;
    Ok(true)
}

struct Copied {
    prefix: String,
    rows: u64,
    bytes: u64,
}

/// Writes the table's current rows as a new version encrypted under the keyring's current
/// DEK; the catalog does not name it yet.
async fn copy_table(st: &AppState, t: &TableRecord, keys: Arc<moat_query::crypto::TenantKeyring>) -> Result<Copied> {
    let read_keys = t.dek_version.is_some().then(|| keys.clone());
    let mut stream = st.tables.read_rows(&t.location, COPY_BATCH_ROWS, read_keys).await?;
    let base = crate::tables::table_prefix(t.tenant_id, &t.domain, &t.product, &t.name);
    let prefix = format!("{base}/v{}-{}", st.clock.now_s(), uuid::Uuid::now_v7().simple());
    let key = format!("{prefix}/part-00000.parquet");
    let encryption = keys.encryption_for(&key)?;
    let limits = IngestLimits { max_columns: st.config.ingest.max_columns, ..IngestLimits::default() };
    let storage = st.tables.clone();
    let name = t.name.clone();
    let handle = tokio::runtime::Handle::current();
    let written = tokio::task::spawn_blocking(move || {
        let schema = stream.schema();
        let batches = std::iter::from_fn(move || {
            handle.block_on(stream.next()).map(|b| b.map_err(|e| moat_query::crypto::read_back_error(&name, &e)))
        });
        let (report, writer) = write_parquet(Prepared::from_batches(schema, batches), storage.writer(&key), &limits, Some(encryption))?;
        writer.finish()?;
        Ok::<_, MoatError>(report)
    })
    .await
    .map_err(|_| MoatError::internal("rekey_task_failed"))?;
    match written {
        Ok(r) => Ok(Copied { prefix, rows: r.rows, bytes: r.bytes_written }),
        Err(e) => {
            let _ = st.tables.delete_prefix(&prefix).await;
            Err(e)
        }
    }
}

/// One look for due work: tenants whose current DEK is older than `keys.rotation_days` are
/// rotated; every tenant with tables not under its current key is re-encrypted.
pub async fn check(st: &Arc<AppState>) -> Result<()> {
    let now = st.clock.now_s();
    let max_age = i64::from(st.config.keys.rotation_days) * 86_400;
    for t in st.stores.meta.list_tenants().await? {
        if t.status != TenantStatus::Active {
            continue;
        }
        let keys = st.stores.meta.tenant_keys(t.id).await?;
        let Some(newest) = keys.iter().filter(|k| k.wrapped.is_some()).max_by_key(|k| k.version) else { continue };
        if max_age > 0 && now - newest.created_at >= max_age {
            rotate(st, t.id, Actor::system("key rotation schedule"), &ClientInfo::default(), "schedule").await?;
            continue;
        }
        let current = newest.version;
        if st.stores.meta.list_tables(t.id).await?.iter().any(|tb| pending(tb, current))
            || !crate::mfa::stale(st, t.id, current).await?.is_empty()
        {
            spawn_reencrypt(st.clone(), t.id);
        }
    }
    Ok(())
}

/// Looks for due work shortly after start (finishing what a crash interrupted) and then every
/// `keys.rotation_check_interval_s`.
pub fn spawn_periodic(st: Arc<AppState>) {
    let every = Duration::from_secs(st.config.keys.rotation_check_interval_s);
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(5).min(every);
        loop {
            tokio::select! {
                () = st.closing.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = every;
            if let Err(e) = check(&st).await {
                tracing::error!(code = e.code, "key rotation check failed; the next check retries");
            }
        }
    });
}

/// What `rotate_master` did.
#[derive(Debug, Clone, Serialize)]
pub struct MasterRotated {
    pub kek: String,
    pub tenants: u64,
    pub keys_rewrapped: u64,
}

/// Master-key rotation: a new master key in the provider, then every tenant's DEKs re-wrapped
/// under it. Files are not touched. Audited in the platform trail (`key.rotate_master`).
pub async fn rotate_master(st: &AppState, actor: Actor, client: &ClientInfo) -> Result<MasterRotated> {
    let provider = st.master_keys.clone();
    let kek =
        tokio::task::spawn_blocking(move || provider.add_master_key()).await.map_err(|_| MoatError::internal("key_task_failed"))??;
    let mut tenants = 0;
    let mut rewrapped = 0;
    for t in st.stores.meta.list_tenants().await? {
        rewrapped += st.data_keys.rewrap(t.id).await?;
        tenants += 1;
    }
    let out = MasterRotated { kek, tenants, keys_rewrapped: rewrapped };
    let event = AuditEvent::new(None, Category::Admin, "key.rotate_master", actor, Outcome::Success)
        .resource(format!("kek:{}", out.kek))
        .details(serde_json::json!({"tenants": tenants, "keys_rewrapped": rewrapped}));
    st.record(client, event).await?;
    Ok(out)
}
