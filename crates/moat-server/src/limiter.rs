//! Per-client-IP failure counting against password spraying. Behind a trait: the in-process
//! default ([`MemoryLimiter`]) serves one replica; [`RedisLimiter`] (`cache.url`) shares the
//! counts among all replicas behind a load balancer, so an attacker cannot spread guesses over
//! them. Both fail closed: a limiter that cannot answer refuses the sign-in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::MoatError;
use moat_core::clock::UnixSeconds;

#[async_trait]
pub trait FailureLimiter: Send + Sync {
    /// `Some(retry_after_s)` while `key` is over its limit; an error when the limiter cannot
    /// tell (the caller refuses the sign-in: fail closed).
    async fn blocked(&self, key: &str, now: UnixSeconds) -> Result<Option<u64>, MoatError>;
    async fn record_failure(&self, key: &str, now: UnixSeconds) -> Result<(), MoatError>;
}

/// Fixed windows in memory, bounded in size: when full, expired windows are dropped first and,
/// if still full, new keys are counted as blocked (fail closed under a flood of addresses).
pub struct MemoryLimiter {
    limit: u32,
    window_s: u64,
    max_keys: usize,
    windows: Mutex<HashMap<String, (UnixSeconds, u32)>>,
}

impl MemoryLimiter {
    pub fn new(limit: u32, window_s: u64) -> Self {
        Self { limit, window_s, max_keys: 100_000, windows: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl FailureLimiter for MemoryLimiter {
    async fn blocked(&self, key: &str, now: UnixSeconds) -> Result<Option<u64>, MoatError> {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match w.get(key) {
            Some(&(start, n)) if n >= self.limit && now < start + self.window_s as i64 => Some((start + self.window_s as i64 - now) as u64),
            None if w.len() >= self.max_keys => Some(self.window_s),
            _ => None,
        })
    }

    async fn record_failure(&self, key: &str, now: UnixSeconds) -> Result<(), MoatError> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= self.max_keys {
            let window = self.window_s as i64;
            w.retain(|_, (start, _)| now < *start + window);
        }
        if w.len() >= self.max_keys && !w.contains_key(key) {
            return Ok(());
        }
        let e = w.entry(key.to_owned()).or_insert((now, 0));
        if now >= e.0 + self.window_s as i64 {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
        Ok(())
    }
}

/// Longest a Redis call may take before the sign-in is refused (a hung Redis must not hang
/// sign-ins).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Counts one failure: the window starts at the first failure and its key expires with it, so
/// the same fixed window as [`MemoryLimiter`], on Redis's clock, for every replica at once.
const COUNT_FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n";

/// Fixed windows in Redis, shared by every replica that names the same `cache.url` and
/// `cache.namespace`. Keys are `{namespace}:p:{key}` (`p:` for platform-wide state, before any
/// tenant is known; tenant state is keyed `t:{tenant_id}:`) and always carry a TTL.
pub struct RedisLimiter {
    limit: u32,
    window_s: u64,
    prefix: String,
    client: redis::Client,
    /// Connected on first use (and again after a failed attempt), so that a server starts
    /// while Redis is down and refuses sign-ins until it is back.
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    count: redis::Script,
}

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://[user:password@]host[:port][/db]`); nothing
    /// is connected yet. A URL Redis cannot parse is a configuration error naming `cache.url`.
    pub fn new(url: &str, namespace: &str, limit: u32, window_s: u64) -> Result<Self, MoatError> {
        let client = redis::Client::open(url)
            .map_err(|e| MoatError::invalid("config_invalid", format!("cache.url: not a Redis URL ({})", e.category())))?;
        Ok(Self {
            limit,
            window_s,
            prefix: format!("{namespace}:p:"),
            client,
            conn: tokio::sync::OnceCell::new(),
            count: redis::Script::new(COUNT_FAILURE),
        })
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, MoatError> {
        redis_connection(&self.client, &self.conn).await.map_err(unavailable)
    }
}

/// The connection in `cell`, made on first use (and again after a failed attempt) with short
/// timeouts: a server starts while Redis is down, and a call never waits long on it.
pub(crate) async fn redis_connection(
    client: &redis::Client,
    cell: &tokio::sync::OnceCell<redis::aio::ConnectionManager>,
) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
    let connect = || {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        client.get_connection_manager_with_config(config)
    };
    cell.get_or_try_init(connect).await.cloned()
}

/// Redis could not answer: sign-ins are refused (503) until it can. The log names the cause
/// (never the URL, which may carry a password).
fn unavailable(e: redis::RedisError) -> MoatError {
    tracing::warn!(error = %e, "Redis (cache.url) did not answer; sign-ins are refused until it does");
    MoatError::unavailable(
        "cache_unavailable",
        "the shared security state (Redis, cache.url) cannot be reached; sign-ins are refused until it is back",
    )
}

#[async_trait]
impl FailureLimiter for RedisLimiter {
    async fn blocked(&self, key: &str, _now: UnixSeconds) -> Result<Option<u64>, MoatError> {
        let key = format!("{}{key}", self.prefix);
        let mut conn = self.conn().await?;
        let (count, ttl): (Option<u64>, i64) = redis::pipe().get(&key).ttl(&key).query_async(&mut conn).await.map_err(unavailable)?;
        Ok(match count {
            // A key without a TTL (-1) is never left behind by this limiter; count it blocked
            // for a whole window rather than forever.
            Some(n) if n >= u64::from(self.limit) => Some(if ttl > 0 { ttl as u64 } else { self.window_s }),
            _ => None,
        })
    }

    async fn record_failure(&self, key: &str, _now: UnixSeconds) -> Result<(), MoatError> {
        let key = format!("{}{key}", self.prefix);
        let mut conn = self.conn().await?;
        let _: i64 = self.count.key(&key).arg(self.window_s.max(1)).invoke_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn window_blocks_then_resets() {
        let l = MemoryLimiter::new(3, 60);
        for _ in 0..3 {
            assert_eq!(l.blocked("ip", 100).await.ok(), Some(None));
            assert!(l.record_failure("ip", 100).await.is_ok());
        }
        assert_eq!(l.blocked("ip", 110).await.ok(), Some(Some(50)));
        assert_eq!(l.blocked("other", 110).await.ok(), Some(None));
        assert_eq!(l.blocked("ip", 160).await.ok(), Some(None));
    }
}
