//! Audit retention as the server runs it: the deployment's rules per category
//! (`audit.retention_*_days`), a tenant's own policy that can only lengthen them (a HIPAA tenant
//! keeps six years), and a run over every trail — on demand (`POST /v1/audit/prune`,
//! `moat audit prune`) and every `audit.retention_interval_s`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use moat_core::audit::{PLATFORM_TRAIL, trail_tenant};
use moat_core::{MoatError, Result};
use moat_store::retention::{Retention, RetentionRules, TrailRetention};
use serde::{Deserialize, Serialize};

use crate::config::AuditConfig;
use crate::state::AppState;

/// Tenant setting key of the tenant's retention policy.
pub const AUDIT_RETENTION_POLICY: &str = "audit_retention_policy";

/// The audit categories, in the order reports list them.
pub const CATEGORIES: [&str; 6] = ["auth", "authz", "data_access", "admin", "agent", "system"];

/// Longest retention that can be asked for (100 years); 0 means forever.
const MAX_DAYS: u32 = 36_500;

/// A tenant's audit retention: at least `min_days` for every category, and per category at
/// least `days[c]` (0 = forever). It can only lengthen the deployment's retention — a tenant
/// cannot shorten what the platform keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditRetentionPolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_days: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub days: BTreeMap<String, u32>,
}

impl AuditRetentionPolicy {
    /// Refuses unknown categories, values past 100 years and anything shorter than the
    /// deployment keeps.
    pub fn validate(&self, base: &AuditConfig) -> Result<()> {
        if self.min_days.is_some_and(|d| d > MAX_DAYS) {
            return Err(MoatError::invalid("invalid_policy", format!("min_days: at most {MAX_DAYS} (0 = forever)")));
        }
        for (c, &d) in &self.days {
            let Some(configured) = base.retention_days(c) else {
                return Err(MoatError::invalid("invalid_policy", format!("days.{c}: not a category (one of {})", CATEGORIES.join(", "))));
            };
            if d > MAX_DAYS {
                return Err(MoatError::invalid("invalid_policy", format!("days.{c}: at most {MAX_DAYS} (0 = forever)")));
            }
            if d != 0 && (configured == 0 || d < configured) {
                let kept = if configured == 0 { "forever".to_owned() } else { format!("{configured} days") };
                return Err(MoatError::invalid(
                    "retention_too_short",
                    format!(
                        "days.{c}: {d} days is shorter than this deployment keeps {c} records ({kept}); a tenant can only lengthen retention"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The rules for the tenant's trail: per category the longer of the deployment's and the
    /// tenant's retention; a category kept forever is left out.
    pub fn rules(&self, base: &AuditConfig) -> RetentionRules {
        let mut out = BTreeMap::new();
        for c in CATEGORIES {
            // 0 (forever) wins; otherwise the longest.
            let mut days = [base.retention_days(c), self.days.get(c).copied(), self.min_days].into_iter().flatten();
            let longest = days.try_fold(0u32, |acc, d| (d != 0).then(|| acc.max(d)));
            if let Some(d) = longest.filter(|d| *d > 0) {
                out.insert(c.to_owned(), d);
            }
        }
        RetentionRules(out)
    }
}

/// One trail's run, with the tenant's slug for people.
#[derive(Debug, Clone, Serialize)]
pub struct TrailRun {
    /// Tenant slug; `null` for the platform trail.
    pub tenant: Option<String>,
    #[serde(flatten)]
    pub run: TrailRetention,
}

/// A run over every trail.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionRun {
    pub dry_run: bool,
    pub at: String,
    pub segment_records: u64,
    pub records_pruned: u64,
    pub trails: Vec<TrailRun>,
}

/// Runs retention over every trail at the state's clock.
pub async fn run(st: &AppState, dry_run: bool) -> Result<RetentionRun> {
    let a = &st.config.audit;
    let now_ms = crate::state::now_ms(&*st.clock);
    let job = Retention {
        audit: &*st.stores.audit,
        log: &st.audit,
        key: &st.checkpoint_key,
        sink: st.checkpoint_sink.as_deref(),
        segment_records: a.retention_segment_records,
        checkpoint_wait: Duration::from_millis(a.checkpoint_interval_ms.saturating_mul(20).max(5_000)),
    };
    let slugs: BTreeMap<String, String> =
        st.stores.meta.list_tenants().await?.into_iter().map(|t| (t.id.to_string(), t.slug.as_str().to_owned())).collect();
    let mut trails = Vec::new();
    for (trail, _) in st.stores.audit.trail_heads().await? {
        let rules = match trail_tenant(&trail) {
            Some(Some(t)) => st.setting::<AuditRetentionPolicy>(t, AUDIT_RETENTION_POLICY).await?.rules(a),
            _ if trail == PLATFORM_TRAIL => AuditRetentionPolicy::default().rules(a),
            _ => continue,
        };
        let run = job.run(&trail, &rules, now_ms, dry_run).await?;
        trails.push(TrailRun { tenant: slugs.get(&trail).cloned(), run });
    }
    Ok(RetentionRun {
        dry_run,
        at: moat_core::clock::rfc3339_ms(now_ms),
        segment_records: a.retention_segment_records,
        records_pruned: trails.iter().map(|t| t.run.records_pruned()).sum(),
        trails,
    })
}

/// Runs retention every `audit.retention_interval_s` until the server closes.
pub fn spawn_periodic(st: Arc<AppState>) {
    let every = st.config.audit.retention_interval_s;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = st.closing.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(every)) => {}
            }
            match run(&st, false).await {
                Ok(r) if r.records_pruned > 0 => tracing::info!(records = r.records_pruned, "audit retention run"),
                Ok(_) => {}
                Err(e) => tracing::error!(code = e.code, "audit retention run failed; the next run retries"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_policy_only_lengthens_retention() {
        let base = AuditConfig::default();
        let hipaa = AuditRetentionPolicy { min_days: Some(2_190), days: BTreeMap::new() };
        hipaa.validate(&base).unwrap();
        let r = hipaa.rules(&base);
        assert_eq!(r.0.get("auth"), Some(&2_190));
        assert_eq!(r.0.get("data_access"), Some(&2_190));
        let default = AuditRetentionPolicy::default().rules(&base);
        assert_eq!((default.0.get("auth"), default.0.get("admin")), (Some(&90), Some(&1_095)));
        // Forever wins.
        let forever = AuditRetentionPolicy { min_days: None, days: [("auth".to_owned(), 0)].into() };
        forever.validate(&base).unwrap();
        assert!(!forever.rules(&base).0.contains_key("auth"));
        // Shorter than the deployment, an unknown category, absurd lengths: refused.
        let short = AuditRetentionPolicy { min_days: None, days: [("auth".to_owned(), 30)].into() };
        assert_eq!(short.validate(&base).unwrap_err().code, "retention_too_short");
        let unknown = AuditRetentionPolicy { min_days: None, days: [("billing".to_owned(), 400)].into() };
        assert_eq!(unknown.validate(&base).unwrap_err().code, "invalid_policy");
        let absurd = AuditRetentionPolicy { min_days: Some(40_000), days: BTreeMap::new() };
        assert_eq!(absurd.validate(&base).unwrap_err().code, "invalid_policy");
        // A deployment that keeps a category forever cannot be shortened either.
        let keep = AuditConfig { retention_auth_days: 0, ..AuditConfig::default() };
        assert_eq!(
            AuditRetentionPolicy { min_days: None, days: [("auth".to_owned(), 5_000)].into() }.validate(&keep).unwrap_err().code,
            "retention_too_short"
        );
    }
}
