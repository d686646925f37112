//! The application state shared by every request, and the one way to write an audit record.

use std::sync::Arc;

use moat_core::audit::{AuditEvent, AuditKeys};
use moat_core::authz::{Authorizer, RoleAuthorizer};
use moat_core::clock::{Clock, SystemClock};
use moat_core::lockout::LockoutPolicy;
use moat_core::password::PasswordPolicy;
use moat_core::token::KeySet;
use moat_core::{MoatError, Result};
use moat_query::TableStorage;
use moat_store::Stores;
use moat_store::audit_log::{AuditLog, AuditLogConfig, CheckpointKey, CheckpointSink, Checkpointer, DirSink};

use crate::config::{Config, DataDir};
use crate::http::extract::ClientInfo;
use crate::limiter::{FailureLimiter, MemoryLimiter, RedisLimiter};

/// Tenant setting keys.
pub const PASSWORD_POLICY: &str = "password_policy";
pub const MASKING_POLICY: &str = "masking_policy";
pub const CLASSIFICATION_POLICY: &str = "classification_policy";

pub struct AppState {
    pub config: Config,
    pub stores: Stores,
    pub keys: Arc<KeySet>,
    pub authorizer: Arc<dyn Authorizer>,
    pub clock: Arc<dyn Clock>,
    pub ip_limiter: Arc<dyn FailureLimiter>,
    pub lockout: LockoutPolicy,
    pub engine: Arc<moat_query::Engine>,
    /// The tenants' table files (an object store).
    pub tables: TableStorage,
    /// Where uploads wait while they are converted.
    pub spool_dir: std::path::PathBuf,
    /// The group-commit audit writer: the only way records are appended while serving.
    pub audit: AuditLog,
    /// HMAC keys of the trails (from the master key; never in the store).
    pub audit_keys: AuditKeys,
    /// Signs checkpoints; names each trail's log.
    pub checkpoint_key: CheckpointKey,
    /// Where checkpoints are published, if anywhere.
    pub checkpoint_sink: Option<Arc<dyn CheckpointSink>>,
    /// Cancelled when the server begins to shut down: long-lived answers (live audit streams)
    /// end so that graceful shutdown does not wait for them.
    pub closing: tokio_util::sync::CancellationToken,
    /// Live audit streams open per tenant (`audit.max_streams_per_tenant`).
    pub streams: StreamSlots,
    /// TLS acceptors for HTTP and pgwire (`[tls]`), when TLS is on.
    pub tls: Option<crate::tls::Tls>,
    /// Forwarding of audit records to NATS JetStream (`events.url`), when configured.
    pub events: Option<Arc<crate::events::ForwardStatus>>,
    /// Governed JSON answers kept for callers who would get the same masks (`cache.result_*`).
    pub results: crate::result_cache::ResultCache,
    /// The tenants' data-encryption keys (wrapped in the store, unwrapped here on demand).
    pub data_keys: Arc<crate::dek::DataKeys>,
    /// The master-key provider (`[keys]`), for master-key rotation.
    pub master_keys: Arc<dyn crate::keyprovider::MasterKeys>,
    /// Re-encryption jobs after data-key rotation (progress, one job per tenant here).
    pub rekey: Arc<crate::rotation::Rekeying>,
}

/// Counts live streams per tenant; a slot is given back when its guard drops.
#[derive(Debug, Default, Clone)]
pub struct StreamSlots(Arc<std::sync::Mutex<std::collections::HashMap<moat_core::ids::TenantId, usize>>>);

/// One open stream's slot.
#[derive(Debug)]
pub struct StreamSlot {
    slots: StreamSlots,
    tenant: moat_core::ids::TenantId,
}

impl StreamSlots {
    /// A slot for `tenant` if fewer than `max` are open.
    pub fn take(&self, tenant: moat_core::ids::TenantId, max: usize) -> Option<StreamSlot> {
        let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(tenant).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot { slots: self.clone(), tenant })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

impl AppState {
    /// Opens the data dir's store and keys.
    pub async fn open(dir: &DataDir, config: Config) -> Result<Self> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(dir: &DataDir, config: Config, clock: Arc<dyn Clock>) -> Result<Self> {
        let stores = moat_store::open_with(&config.store_url(&dir.root), config.store.admin_url.as_deref()).await?;
        Self::open_with_stores(dir, config, clock, stores).await
    }

    /// With stores opened by the caller (tests and benchmarks that run the same server over
    /// another backend or a wrapped one).
    pub async fn open_with_stores(dir: &DataDir, config: Config, clock: Arc<dyn Clock>, stores: Stores) -> Result<Self> {
        let keys = crate::bootstrap::load_keyset(dir, &config, clock.now_s())?;
        let tls = crate::tls::Tls::from_config(&config.tls, &dir.root)?;
        let lockout = LockoutPolicy { threshold: config.auth.lockout_threshold, stage_durations_s: config.auth.lockout_stages_s.clone() };
        let (limit, window) = (config.auth.ip_failure_limit, config.auth.ip_failure_window_s);
        let ip_limiter: Arc<dyn FailureLimiter> = match config.cache.url.as_str() {
            "" => Arc::new(MemoryLimiter::new(limit, window)),
            url => Arc::new(RedisLimiter::new(url, &config.cache.namespace, limit, window)?),
        };
        let tables = TableStorage::local(&config.table_data_dir(&dir.root))?;
        // Spill files and spooled uploads are temporary files that delete themselves; the
        // directories are private to the server's user.
        for tmp in [dir.spill_dir(), dir.spool_dir()] {
            crate::bootstrap::create_private_dir(&tmp)?;
        }
        let engine = Arc::new(moat_query::Engine::new(config.query.clone(), tables.clone(), Some(dir.spill_dir())));
        let audit_keys = crate::bootstrap::audit_keys(dir)?;
        let checkpoint_key = crate::bootstrap::checkpoint_key(dir, &config)?;
        let carried = stores.audit.import_legacy(&audit_keys).await?;
        if carried > 0 {
            tracing::info!(records = carried, "carried the v1 audit trail into the transparency log");
        }
        let a = &config.audit;
        let audit = AuditLog::start(
            stores.audit.clone(),
            audit_keys.clone(),
            AuditLogConfig { queue: a.queue, max_batch: a.max_batch, enqueue_timeout: std::time::Duration::from_secs(5) },
        );
        let mut checkpoint_sink = config.publish_dir(&dir.root).map(|d| Arc::new(DirSink::new(d)) as Arc<dyn CheckpointSink>);
        if !a.witness_url.is_empty() {
            let witness = moat_core::checkpoint::CosignatureVerifier::parse(&a.witness_key)
                .map_err(|_| MoatError::invalid("config_invalid", "audit.witness_key: not a cosignature key"))?;
            let sink =
                crate::witness::WitnessSink::new(&a.witness_url, witness, stores.audit.clone(), checkpoint_key.clone(), checkpoint_sink)?;
            checkpoint_sink = Some(Arc::new(sink));
        }
        let results = crate::result_cache::ResultCache::from_config(&config.cache)?;
        let master_keys = crate::keyprovider::open(dir, &config.keys)?;
        let data_keys =
            Arc::new(crate::dek::DataKeys::new(master_keys.clone(), stores.meta.clone(), crate::bootstrap::platform_secret_key(dir)?));
        let events = if config.events.url.is_empty() {
            None
        } else {
            Some(crate::events::Forwarder::start(&config.events, stores.audit.clone(), audit.clone()).await?)
        };
        let checkpointer = Checkpointer::new(stores.audit.clone(), checkpoint_key.clone(), checkpoint_sink.clone());
        let cp_clock = clock.clone();
        tokio::spawn(
            checkpointer.run(audit.clone(), std::time::Duration::from_millis(a.checkpoint_interval_ms), move || now_ms(&*cp_clock)),
        );
        Ok(Self {
            config,
            stores,
            keys: Arc::new(keys),
            authorizer: Arc::new(RoleAuthorizer),
            clock,
            ip_limiter,
            lockout,
            engine,
            tables,
            spool_dir: dir.spool_dir(),
            audit,
            audit_keys,
            checkpoint_key,
            checkpoint_sink,
            closing: tokio_util::sync::CancellationToken::new(),
            streams: StreamSlots::default(),
            tls,
            events,
            results,
            data_keys,
            master_keys,
            rekey: Arc::default(),
        })
    }

    /// The tenant's password policy (its own, else the default); platform accounts use the
    /// default.
    pub async fn password_policy(&self, tenant: Option<moat_core::ids::TenantId>) -> Result<PasswordPolicy> {
        match tenant {
            Some(t) => self.setting(t, PASSWORD_POLICY).await,
            None => Ok(PasswordPolicy::default()),
        }
    }

    /// The tenant's masking policy (no rules unless an Admin set some).
    pub async fn masking_policy(&self, tenant: moat_core::ids::TenantId) -> Result<moat_query::policy::MaskingPolicy> {
        self.setting(tenant, MASKING_POLICY).await
    }

    /// What a query of the tenant may name (its tables, as the engine sees them, and its views)
    /// and its masking policy, read together.
    pub async fn query_catalog(
        &self,
        tenant: moat_core::ids::TenantId,
    ) -> Result<(Vec<moat_query::TableSource>, Vec<moat_store::ViewRecord>, moat_query::policy::MaskingPolicy)> {
        let (tables, views, policy) =
            tokio::join!(self.stores.meta.list_tables(tenant), self.stores.meta.list_views(tenant), self.masking_policy(tenant));
        let tables = tables?;
        let timeout = std::time::Duration::from_millis(self.config.query.timeout_ms);
        let relations = self.stores.relations.as_ref();
        let keys = self.keys_for(tenant, &tables).await?;
        Ok((tables.iter().filter_map(|t| crate::tables::source_of(t, relations, timeout, keys.as_ref())).collect(), views?, policy?))
    }

    /// The tenant's keyring when any of `tables` is encrypted (holding every version they use).
    pub async fn keys_for(
        &self,
        tenant: moat_core::ids::TenantId,
        tables: &[moat_store::TableRecord],
    ) -> Result<Option<Arc<moat_query::crypto::TenantKeyring>>> {
        let needed: Vec<u32> = tables.iter().filter_map(|t| t.dek_version).collect();
        if needed.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.data_keys.keyring(tenant, &needed, self.clock.now_s()).await?))
    }

    /// The PII scanner as configured, with the tenant's classification policy; `sample_rows`
    /// overrides the configured sample size.
    pub async fn scanner(&self, tenant: moat_core::ids::TenantId, sample_rows: Option<usize>) -> Result<crate::scan::Scanner> {
        let mut config = self.config.scan.clone();
        if let Some(n) = sample_rows {
            config.sample_rows = n;
        }
        Ok(crate::scan::Scanner { options: config.options(self.clock.now_s()), policy: self.setting(tenant, CLASSIFICATION_POLICY).await? })
    }

    /// A typed tenant setting, or its default. A stored value that no longer parses is an
    /// error, not a silent default: a weaker policy must never appear by accident.
    pub async fn setting<T: serde::de::DeserializeOwned + Default>(&self, tenant: moat_core::ids::TenantId, key: &str) -> Result<T> {
        match self.stores.meta.tenant_setting(tenant, key).await? {
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                tracing::error!(key, error = %e, "stored tenant setting does not parse");
                MoatError::internal("corrupt_setting")
            }),
            None => Ok(T::default()),
        }
    }

    pub async fn set_setting<T: serde::Serialize>(&self, tenant: moat_core::ids::TenantId, key: &str, value: &T) -> Result<()> {
        let json = serde_json::to_string(value).map_err(|_| MoatError::internal("encode_setting"))?;
        if !self.stores.meta.set_tenant_setting(tenant, key, &json, self.clock.now_s()).await? {
            return Err(MoatError::not_found("tenant_not_found", "no such tenant"));
        }
        Ok(())
    }

    /// Appends an audit record stamped with the client. If the trail cannot be written the
    /// request is refused (503 `audit_unavailable`): nothing is served unrecorded.
    pub async fn record(&self, client: &ClientInfo, event: AuditEvent) -> Result<()> {
        match self.audit.append(client.stamp(event), now_ms(&*self.clock)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(code = e.code, "audit append failed; refusing the request");
                Err(MoatError::unavailable("audit_unavailable", "the audit trail cannot be written; the request was refused"))
            }
        }
    }
}

/// Record time: the clock's second and the system's millisecond within it.
pub fn now_ms(clock: &dyn Clock) -> i64 {
    clock.now_s() * 1000 + i64::from(subsec_ms())
}

/// Milliseconds within the current second, for ordering records inside one second. Taken from
/// the system clock even under a manual clock (only ordering, never a security decision).
fn subsec_ms() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0)
}
