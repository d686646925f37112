//! Per-client-IP failure counting against password spraying. Behind a trait: the in-process
//! default serves one replica; the Redis backend (shared by all replicas) plugs in here.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use moat_core::clock::UnixSeconds;

#[async_trait]
pub trait FailureLimiter: Send + Sync {
    /// `Some(retry_after_s)` while `key` is over its limit.
    async fn blocked(&self, key: &str, now: UnixSeconds) -> Option<u64>;
    async fn record_failure(&self, key: &str, now: UnixSeconds);
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
    async fn blocked(&self, key: &str, now: UnixSeconds) -> Option<u64> {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match w.get(key) {
            Some(&(start, n)) if n >= self.limit && now < start + self.window_s as i64 => Some((start + self.window_s as i64 - now) as u64),
            None if w.len() >= self.max_keys => Some(self.window_s),
            _ => None,
        }
    }

    async fn record_failure(&self, key: &str, now: UnixSeconds) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= self.max_keys {
            let window = self.window_s as i64;
            w.retain(|_, (start, _)| now < *start + window);
        }
        if w.len() >= self.max_keys && !w.contains_key(key) {
            return;
        }
        let e = w.entry(key.to_owned()).or_insert((now, 0));
        if now >= e.0 + self.window_s as i64 {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn window_blocks_then_resets() {
        let l = MemoryLimiter::new(3, 60);
        for _ in 0..3 {
            assert_eq!(l.blocked("ip", 100).await, None);
            l.record_failure("ip", 100).await;
        }
        assert_eq!(l.blocked("ip", 110).await, Some(50));
        assert_eq!(l.blocked("other", 110).await, None);
        assert_eq!(l.blocked("ip", 160).await, None);
    }
}
