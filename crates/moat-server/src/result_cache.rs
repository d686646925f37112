//! The result cache: a governed JSON answer kept for `cache.result_ttl_s` seconds, so that a
//! dashboard's repeated query is answered without running it again.
//!
//! The key is a SHA-256 of everything the answer depends on — the tenant, the caller's role and
//! clearance (which decide the masks), the SQL, the row limit, and the tenant's whole catalog as
//! planned (every table's version location, columns and labels, views, masking policy) — so a
//! new upload, a label change or a policy change is a different key, and two callers share an
//! answer only when they would get the same masks. Queries reading a linked PostgreSQL relation
//! are never cached (its rows change without a new version), nor are those whose answer changes
//! from one run to the next (`random()`, `now()`, `current_date`). A hit is still planned (so the
//! tables must still exist and the caller may still read them) and audited like any query
//! (`details.cache = "hit"`) before the answer leaves.
//!
//! In-process by default (bounded by `cache.result_max_bytes`, oldest first); in Redis when
//! `cache.url` is set, under `{namespace}:t:{tenant_id}:rc:{key}` with the TTL on every key.
//! Redis being down never refuses a query: the cache fails open (the answer is computed and says
//! `x-moat-cache: unavailable`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use moat_core::ids::TenantId;

use crate::config::CacheConfig;

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// The shared cache did not answer: compute, and say so.
    Unavailable,
}

pub enum ResultCache {
    Off,
    Local(Local),
    Redis(Shared),
}

impl ResultCache {
    pub fn from_config(c: &CacheConfig) -> Result<Self, moat_core::MoatError> {
        if c.result_ttl_s == 0 {
            return Ok(Self::Off);
        }
        let ttl = Duration::from_secs(c.result_ttl_s);
        if c.url.is_empty() {
            return Ok(Self::Local(Local {
                ttl,
                max_bytes: c.result_max_bytes,
                total_bytes: c.result_local_max_bytes,
                inner: Mutex::new(LocalInner::default()),
            }));
        }
        let client = redis::Client::open(c.url.as_str())
            .map_err(|e| moat_core::MoatError::invalid("config_invalid", format!("cache.url: not a Redis URL ({})", e.category())))?;
        Ok(Self::Redis(Shared {
            client,
            conn: tokio::sync::OnceCell::new(),
            namespace: c.namespace.clone(),
            ttl,
            max_bytes: c.result_max_bytes,
        }))
    }

    pub fn enabled(&self) -> bool {
        !matches!(self, Self::Off)
    }

    pub async fn get(&self, tenant: TenantId, key: &str) -> Lookup {
        match self {
            Self::Off => Lookup::Miss,
            Self::Local(l) => l.get(tenant, key),
            Self::Redis(r) => r.get(tenant, key).await,
        }
    }

    /// Keeps `body` unless it is over the size limit; failures are logged, never raised.
    pub async fn put(&self, tenant: TenantId, key: &str, body: Vec<u8>) {
        match self {
            Self::Off => {}
            Self::Local(l) => l.put(tenant, key, body),
            Self::Redis(r) => r.put(tenant, key, body).await,
        }
    }
}

#[derive(Default)]
pub struct LocalInner {
    entries: HashMap<String, (Instant, Vec<u8>)>,
    order: VecDeque<String>,
    bytes: usize,
}

pub struct Local {
    ttl: Duration,
    /// The largest answer kept, and all of them together.
    max_bytes: usize,
    total_bytes: usize,
    inner: Mutex<LocalInner>,
}

impl Local {
    fn get(&self, tenant: TenantId, key: &str) -> Lookup {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.entries.get(&format!("{tenant}:{key}")) {
            Some((until, body)) if *until > Instant::now() => Lookup::Hit(body.clone()),
            _ => Lookup::Miss,
        }
    }

    fn put(&self, tenant: TenantId, key: &str, body: Vec<u8>) {
        if body.len() > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("{tenant}:{key}");
        inner.bytes += body.len();
        if let Some((_, old)) = inner.entries.insert(key.clone(), (Instant::now() + self.ttl, body)) {
            inner.bytes -= old.len();
            inner.order.retain(|k| *k != key);
        }
        inner.order.push_back(key);
        // Oldest first until the whole cache fits its bound again.
        while inner.bytes > self.total_bytes {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some((_, old)) = inner.entries.remove(&oldest) {
                inner.bytes -= old.len();
            }
        }
    }
}

pub struct Shared {
    client: redis::Client,
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    namespace: String,
    ttl: Duration,
    max_bytes: usize,
}

impl Shared {
    fn key(&self, tenant: TenantId, key: &str) -> String {
        format!("{}:t:{tenant}:rc:{key}", self.namespace)
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        crate::limiter::redis_connection(&self.client, &self.conn).await
    }

    async fn get(&self, tenant: TenantId, key: &str) -> Lookup {
        let got: Result<Option<Vec<u8>>, _> = async {
            let mut conn = self.conn().await?;
            redis::cmd("GET").arg(self.key(tenant, key)).query_async(&mut conn).await
        }
        .await;
        match got {
            Ok(Some(body)) => Lookup::Hit(body),
            Ok(None) => Lookup::Miss,
            Err(e) => {
                tracing::warn!(error = %e, "the result cache (Redis, cache.url) did not answer; queries run without it");
                Lookup::Unavailable
            }
        }
    }

    async fn put(&self, tenant: TenantId, key: &str, body: Vec<u8>) {
        if body.len() > self.max_bytes {
            return;
        }
        let put: Result<(), _> = async {
            let mut conn = self.conn().await?;
            redis::cmd("SET").arg(self.key(tenant, key)).arg(body).arg("EX").arg(self.ttl.as_secs().max(1)).query_async(&mut conn).await
        }
        .await;
        if let Err(e) = put {
            tracing::warn!(error = %e, "could not keep a result in the cache (Redis, cache.url)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_cache_expires_and_stays_within_its_bound() {
        let cfg = CacheConfig { result_ttl_s: 60, result_max_bytes: 10, result_local_max_bytes: 11, ..CacheConfig::default() };
        let ResultCache::Local(mut c) = ResultCache::from_config(&cfg).unwrap() else { panic!("local") };
        let (a, b) = (TenantId::new(), TenantId::new());
        c.put(a, "k", vec![1; 6]);
        assert!(matches!(c.get(a, "k"), Lookup::Hit(v) if v == vec![1; 6]));
        assert!(matches!(c.get(b, "k"), Lookup::Miss), "another tenant's key is another entry");
        c.put(a, "k2", vec![2; 6]);
        assert!(matches!(c.get(a, "k"), Lookup::Miss), "the oldest went to make room");
        c.put(a, "big", vec![3; 11]);
        assert!(matches!(c.get(a, "big"), Lookup::Miss), "over the bound: not kept");
        c.ttl = Duration::ZERO;
        c.put(a, "k3", vec![4]);
        assert!(matches!(c.get(a, "k3"), Lookup::Miss), "expired");
    }
}
