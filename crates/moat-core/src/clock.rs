//! Time as a dependency: production reads the system clock, tests drive a manual one (lockout
//! progression, token expiry) without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub type UnixSeconds = i64;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_s(&self) -> UnixSeconds;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_s(&self) -> UnixSeconds {
        // A clock before 1970 is a broken host; 0 keeps every expiry check failing closed.
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests, fake-clock integration tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start_s: UnixSeconds) -> Self {
        Self(Arc::new(AtomicI64::new(start_s)))
    }
    pub fn advance_s(&self, by_s: i64) {
        self.0.fetch_add(by_s, Ordering::SeqCst);
    }
    pub fn set_s(&self, to_s: UnixSeconds) {
        self.0.store(to_s, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_s(&self) -> UnixSeconds {
        self.0.load(Ordering::SeqCst)
    }
}
