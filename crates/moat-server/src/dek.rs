//! The tenants' data-encryption keys: made at provisioning (or on first use for tenants made
//! before encryption at rest), wrapped by the key provider's master key, kept wrapped in the
//! store, unwrapped into a short-lived in-process keyring per tenant. See `moat_core::keys`
//! for the hierarchy and `moat_query::crypto` for the files.
//!
//! Secrets of accounts (second factors) are sealed under the same keys: a tenant account's
//! under its tenant's current DEK, a platform account's under the platform secret key, which
//! is derived from the deployment's `master.key` (the platform has no DEK) and, like the DEKs,
//! never stored in the database.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moat_core::clock::UnixSeconds;
use moat_core::ids::TenantId;
use moat_core::keys::{KeyProvider, SecretKey, Zeroizing, dek_context, open_secret, seal_secret};
use moat_core::{MoatError, Result};
use moat_query::crypto::TenantKeyring;
use moat_store::{MetaStore, NewTenantKey, TenantKeyRecord};

/// How long an unwrapped keyring is reused before the store is read again: a key destroyed or
/// added on another replica is seen within this.
const KEYRING_TTL: Duration = Duration::from_secs(30);

/// The error of a tenant whose keys were destroyed: its data is gone for good.
pub fn shredded() -> MoatError {
    MoatError::not_found("tenant_keys_destroyed", "the tenant's data keys were destroyed (the tenant was deleted); its data cannot be read")
}

pub struct DataKeys {
    provider: Arc<dyn KeyProvider>,
    meta: Arc<dyn MetaStore>,
    /// Seals platform accounts' secrets (version 0 in their sealed form).
    platform: SecretKey,
    cache: Mutex<HashMap<TenantId, (Instant, Arc<TenantKeyring>)>>,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeys").field("provider", &self.provider).finish_non_exhaustive()
    }
}

impl DataKeys {
    /// `platform`: the key platform accounts' secrets are sealed under
    /// (`bootstrap::platform_secret_key`).
    pub fn new(provider: Arc<dyn KeyProvider>, meta: Arc<dyn MetaStore>, platform: SecretKey) -> Self {
        Self { provider, meta, platform, cache: Mutex::new(HashMap::new()) }
    }

    /// Seals a secret of an account of `tenant` (of the platform when `None`) under the
    /// tenant's current DEK (the platform secret key), bound to `context`.
    pub async fn seal(&self, tenant: Option<TenantId>, context: &[u8], plain: &[u8], now: UnixSeconds) -> Result<Vec<u8>> {
        match tenant {
            Some(t) => self.keyring(t, &[], now).await?.seal(context, plain),
            None => seal_secret(&self.platform, 0, context, plain),
        }
    }

    /// Opens a secret sealed by [`Self::seal`] (under any DEK version the tenant still has).
    /// A tenant whose keys were destroyed answers `tenant_keys_destroyed`: its secrets are
    /// gone with its data.
    pub async fn open(&self, tenant: Option<TenantId>, context: &[u8], sealed: &[u8], now: UnixSeconds) -> Result<Zeroizing<Vec<u8>>> {
        match tenant {
            Some(t) => {
                let version = moat_core::keys::sealed_version(sealed).ok_or_else(moat_core::keys::unsealable)?;
                self.keyring(t, &[version], now).await?.open(context, sealed)
            }
            None => open_secret(&self.platform, context, sealed),
        }
    }

    /// The DEK version new secrets of the tenant are sealed under.
    pub async fn current_version(&self, tenant: TenantId, now: UnixSeconds) -> Result<u32> {
        Ok(self.keyring(tenant, &[], now).await?.current_version())
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The tenant's keyring, holding at least the DEK versions in `needed` (a table written
    /// under a version this replica has not seen yet makes it read the store again). Makes the
    /// tenant's first DEK if it has none.
    pub async fn keyring(&self, tenant: TenantId, needed: &[u32], now: UnixSeconds) -> Result<Arc<TenantKeyring>> {
        if let Some(k) = self.cached(tenant).filter(|k| needed.iter().all(|v| k.has_version(*v))) {
            return Ok(k);
        }
        let ring = Arc::new(self.load(tenant, now).await?);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant, (Instant::now(), ring.clone()));
        Ok(ring)
    }

    /// Drops the cached keyring (after a rotation or destruction on this replica).
    pub fn forget(&self, tenant: TenantId) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&tenant);
    }

    /// Crypto-shredding: erases every wrapped DEK of the tenant and forgets the keyring.
    pub async fn shred(&self, tenant: TenantId, now: UnixSeconds) -> Result<u64> {
        let n = self.meta.shred_tenant_keys(tenant, now).await?;
        self.forget(tenant);
        Ok(n)
    }

    /// Makes the tenant's next DEK version (rotation); returns (previous, current, whether this
    /// call made it). Replicas rotating at the same moment make the same version: one insert
    /// wins, both report it.
    pub async fn rotate(&self, tenant: TenantId, now: UnixSeconds) -> Result<(u32, u32, bool)> {
        let records = self.meta.tenant_keys(tenant).await?;
        if !records.is_empty() && records.iter().all(|r| r.wrapped.is_none()) {
            return Err(shredded());
        }
        let previous = records.iter().map(|r| r.version).max().unwrap_or(0);
        let made = self.add_version(tenant, previous + 1, now).await?;
        self.forget(tenant);
        Ok((previous, previous + 1, made))
    }

    /// Master-key rotation for one tenant: every live DEK not wrapped under the provider's
    /// current master key is unwrapped and wrapped again under it (the DEKs, and so the files,
    /// stay the same). Returns how many were re-wrapped.
    pub async fn rewrap(&self, tenant: TenantId) -> Result<u64> {
        let current = self.provider.current_kek();
        let stale: Vec<TenantKeyRecord> =
            self.meta.tenant_keys(tenant).await?.into_iter().filter(|r| r.wrapped.is_some() && r.kek != current).collect();
        if stale.is_empty() {
            return Ok(0);
        }
        let provider = self.provider.clone();
        let rewrapped = tokio::task::spawn_blocking(move || {
            let kek = provider.current_kek();
            stale
                .iter()
                .map(|r| {
                    let ctx = dek_context(tenant, r.version);
                    let dek = provider.unwrap(&r.kek, r.wrapped.as_deref().unwrap_or_default(), &ctx)?;
                    Ok((r.version, kek.clone(), provider.wrap(&dek, &ctx)?))
                })
                .collect::<Result<Vec<(u32, String, Vec<u8>)>>>()
        })
        .await
        .map_err(|_| MoatError::internal("key_task_failed"))??;
        let mut n = 0;
        for (version, kek, wrapped) in rewrapped {
            if self.meta.rewrap_tenant_key(tenant, version, &kek, &wrapped).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn cached(&self, tenant: TenantId) -> Option<Arc<TenantKeyring>> {
        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&tenant).filter(|(at, _)| at.elapsed() < KEYRING_TTL).map(|(_, k)| k.clone())
    }

    async fn load(&self, tenant: TenantId, now: UnixSeconds) -> Result<TenantKeyring> {
        let mut records = self.meta.tenant_keys(tenant).await?;
        if records.is_empty() {
            self.add_version(tenant, 1, now).await?;
            records = self.meta.tenant_keys(tenant).await?;
        }
        let live: Vec<TenantKeyRecord> = records.into_iter().filter(|r| r.wrapped.is_some()).collect();
        let current = live.iter().map(|r| r.version).max().ok_or_else(shredded)?;
        let provider = self.provider.clone();
        let keys = tokio::task::spawn_blocking(move || {
            live.iter()
                .map(|r| {
                    let wrapped = r.wrapped.as_deref().unwrap_or_default();
                    provider.unwrap(&r.kek, wrapped, &dek_context(tenant, r.version)).map(|k| (r.version, k))
                })
                .collect::<Result<BTreeMap<u32, SecretKey>>>()
        })
        .await
        .map_err(|_| MoatError::internal("key_task_failed"))??;
        TenantKeyring::new(tenant, keys, current)
    }

    /// Makes DEK `version` of the tenant; `false` when another replica made it first.
    async fn add_version(&self, tenant: TenantId, version: u32, now: UnixSeconds) -> Result<bool> {
        let provider = self.provider.clone();
        let (kek, wrapped) = tokio::task::spawn_blocking(move || -> Result<(String, Vec<u8>)> {
            let dek = SecretKey::generate()?;
            Ok((provider.current_kek(), provider.wrap(&dek, &dek_context(tenant, version))?))
        })
        .await
        .map_err(|_| MoatError::internal("key_task_failed"))??;
        self.meta.add_tenant_key(&NewTenantKey { tenant_id: tenant, version, kek, wrapped, now }).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use moat_core::ids::Slug;
    use moat_core::keys::{KEY_LEN, LocalKek, LocalKeyProvider};
    use moat_store::NewTenant;

    use super::*;

    fn platform() -> SecretKey {
        SecretKey::from_bytes([0x50; KEY_LEN])
    }

    fn provider(byte: u8) -> Arc<dyn KeyProvider> {
        let kek = LocalKek { id: "local:kek-0001".into(), key: SecretKey::from_bytes([byte; KEY_LEN]) };
        Arc::new(LocalKeyProvider::new(vec![kek]).unwrap())
    }

    #[tokio::test]
    async fn keys_are_made_once_and_open_only_under_their_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let stores = moat_store::open(&format!("sqlite://{}", dir.path().join("m.db").display())).await.unwrap();
        let t = stores
            .meta
            .create_tenant(
                &NewTenant { id: TenantId::new(), slug: Slug::parse("acme").unwrap(), name: "A".into(), now: 1, database: None },
                None,
            )
            .await
            .unwrap();
        let keys = DataKeys::new(provider(1), stores.meta.clone(), platform());
        let ring = keys.keyring(t.id, &[], 1).await.unwrap();
        assert_eq!(ring.current_version(), 1);
        // Another replica (its own cache) reads the same key rather than making another.
        let replica = DataKeys::new(provider(1), stores.meta.clone(), platform());
        let other = replica.keyring(t.id, &[1], 1).await.unwrap();
        assert_eq!(other.current_version(), 1);
        assert_eq!(stores.meta.tenant_keys(t.id).await.unwrap().len(), 1);
        // A version this replica has not seen sends it back to the store, which has none.
        assert!(!replica.keyring(t.id, &[2], 1).await.unwrap().has_version(2));

        // The wrong master key (a key file from another deployment): a clear refusal.
        let wrong = DataKeys::new(provider(2), stores.meta.clone(), platform());
        assert_eq!(wrong.keyring(t.id, &[], 1).await.unwrap_err().code, "key_unwrap_failed");

        // Rotation: one new version, whoever asks; the replica that cached v1 finds v2 when a
        // table names it, and still opens v1.
        assert_eq!(keys.rotate(t.id, 2).await.unwrap(), (1, 2, true));
        assert_eq!(replica.keyring(t.id, &[], 2).await.unwrap().current_version(), 1, "cached for a while");
        let seen = replica.keyring(t.id, &[2], 2).await.unwrap();
        assert!(seen.has_version(1) && seen.current_version() == 2);
        // Master-key rotation: every DEK re-wrapped under the new key, the same DEKs after.
        let old = LocalKek { id: "local:kek-0001".into(), key: SecretKey::from_bytes([1; KEY_LEN]) };
        let new = LocalKek { id: "local:kek-0002".into(), key: SecretKey::from_bytes([9; KEY_LEN]) };
        let both = DataKeys::new(Arc::new(LocalKeyProvider::new(vec![old, new.clone()]).unwrap()), stores.meta.clone(), platform());
        assert_eq!(both.rewrap(t.id).await.unwrap(), 2);
        assert_eq!(both.rewrap(t.id).await.unwrap(), 0, "nothing left under the old key");
        let only_new = DataKeys::new(Arc::new(LocalKeyProvider::new(vec![new]).unwrap()), stores.meta.clone(), platform());
        let after = only_new.keyring(t.id, &[1, 2], 3).await.unwrap();
        assert!(after.has_version(1) && after.has_version(2));
        assert_eq!(keys.keyring(t.id, &[1, 2], 3).await.unwrap_err().code, "master_key_missing", "the old provider alone cannot");

        // Shredded: nobody gets the keys again, not even a replica that had them cached.
        assert_eq!(keys.shred(t.id, 5).await.unwrap(), 2);
        assert_eq!(keys.keyring(t.id, &[], 6).await.unwrap_err().code, "tenant_keys_destroyed");
        assert_eq!(replica.keyring(t.id, &[3], 6).await.unwrap_err().code, "tenant_keys_destroyed");
        assert_eq!(keys.rotate(t.id, 7).await.unwrap_err().code, "tenant_keys_destroyed", "no new key for a deleted tenant");
    }
}
