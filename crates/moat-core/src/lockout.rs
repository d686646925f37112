//! Progressive lockout as a pure state machine: 5 failures → locked 5 min, 5 more → 15 min,
//! 5 more → locked until an admin unlocks. Counted per (tenant, email) whether or not the
//! account exists, so an attacker cannot tell the two apart by how lockout behaves.

use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures that trigger the next stage.
    pub threshold: u32,
    /// Lock duration per stage; one stage past the last means "until an admin unlocks".
    pub stage_durations_s: Vec<u64>,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        Self { threshold: 5, stage_durations_s: vec![300, 900] }
    }
}

/// Stored per (tenant, email).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockoutState {
    /// Failures since the last lock (or success).
    pub failures: u32,
    /// How many locks have happened since the last success or unlock.
    pub stage: u32,
    /// While `now < locked_until`, logins are refused without checking the password.
    pub locked_until: Option<UnixSeconds>,
    /// Set after the last timed stage: only an admin unlock clears it.
    pub admin_locked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockDecision {
    Open,
    Locked { retry_after_s: u64 },
    LockedUntilAdminUnlock,
}

/// What a failure did, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    LockedFor { seconds: u64 },
    LockedUntilAdminUnlock,
}

impl LockoutPolicy {
    pub fn check(&self, s: &LockoutState, now: UnixSeconds) -> LockDecision {
        if s.admin_locked {
            return LockDecision::LockedUntilAdminUnlock;
        }
        match s.locked_until {
            Some(until) if now < until => LockDecision::Locked { retry_after_s: (until - now) as u64 },
            _ => LockDecision::Open,
        }
    }

    pub fn record_failure(&self, s: &mut LockoutState, now: UnixSeconds) -> FailureOutcome {
        s.failures = s.failures.saturating_add(1);
        if s.failures < self.threshold {
            return FailureOutcome::Counted;
        }
        s.failures = 0;
        let stage = s.stage as usize;
        s.stage = s.stage.saturating_add(1);
        match self.stage_durations_s.get(stage) {
            Some(&secs) => {
                s.locked_until = Some(now + secs as i64);
                FailureOutcome::LockedFor { seconds: secs }
            }
            None => {
                s.admin_locked = true;
                s.locked_until = None;
                FailureOutcome::LockedUntilAdminUnlock
            }
        }
    }

    /// A successful login or an admin unlock starts afresh.
    pub fn reset(&self, s: &mut LockoutState) {
        *s = LockoutState::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progression_5_15_admin() {
        let p = LockoutPolicy::default();
        let mut s = LockoutState::default();
        let mut now = 1_000;
        for _ in 0..4 {
            assert_eq!(p.record_failure(&mut s, now), FailureOutcome::Counted);
        }
        assert_eq!(p.record_failure(&mut s, now), FailureOutcome::LockedFor { seconds: 300 });
        assert_eq!(p.check(&s, now + 10), LockDecision::Locked { retry_after_s: 290 });
        now += 300;
        assert_eq!(p.check(&s, now), LockDecision::Open);
        for _ in 0..4 {
            p.record_failure(&mut s, now);
        }
        assert_eq!(p.record_failure(&mut s, now), FailureOutcome::LockedFor { seconds: 900 });
        now += 900;
        for _ in 0..4 {
            p.record_failure(&mut s, now);
        }
        assert_eq!(p.record_failure(&mut s, now), FailureOutcome::LockedUntilAdminUnlock);
        assert_eq!(p.check(&s, now + 10 * 365 * 86_400), LockDecision::LockedUntilAdminUnlock);
        p.reset(&mut s);
        assert_eq!(p.check(&s, now), LockDecision::Open);
    }
}
