//! The retention job: removes audit records whose retention has passed, whole sealed segments
//! at a time, behind a signed checkpoint that records the cut (the rules a verifier holds it
//! to are in [`moat_core::audit_retention`]).
//!
//! One run over a trail:
//! 1. the sealed part of the trail: whole segments up to the latest signed checkpoint that is
//!    stored and, when a sink is configured, published;
//! 2. per sealed segment and category whose retention has passed (its newest record in the
//!    segment is older than now − retention), not already named: the seqs still present;
//! 3. for each, an `audit.retention` record naming them is appended (durable when `append`
//!    returns) — before anything is removed;
//! 4. the run waits (up to `checkpoint_wait`) until a signed, published checkpoint covers those
//!    records, then carries out each prune in one transaction ([`AuditStore::prune`]).
//!
//! A crash anywhere leaves either nothing done, or retention records whose prunes are pending:
//! the next run finds them (named, not in `audit_prunes`) and finishes them. Nothing is removed
//! that a checkpointed retention record does not name.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use moat_core::audit::{Actor, AuditEvent, Category, Outcome, trail_tenant};
use moat_core::audit_retention::{RETENTION_ACTION, RetentionDetails, SeqRanges, segment_bounds};
use moat_core::clock::rfc3339_ms;
use moat_core::{MoatError, Result};
use serde::Serialize;

use crate::audit_log::{AuditLog, CheckpointKey, CheckpointSink};
use crate::{AuditFilter, AuditStore, Prune};

const DAY_MS: i64 = 86_400_000;

/// How long each category is kept in one trail, in days; a category not listed is kept forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionRules(pub BTreeMap<String, u32>);

/// One segment's records of one category, due or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentPrune {
    pub segment: u64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub category: String,
    pub records: u64,
    pub retention_days: u32,
    pub cutoff: String,
    /// The `audit.retention` record naming them (none in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_seq: Option<i64>,
}

/// What a run did (or, dry, would do) to one trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TrailRetention {
    pub trail: String,
    /// Records up to here are in sealed segments.
    pub sealed_through: i64,
    pub rules: RetentionRules,
    /// Removed in this run.
    pub pruned: Vec<SegmentPrune>,
    /// Due, not removed: a dry run, or no signed checkpoint covered the retention records in
    /// time (the next run finishes them).
    pub due: Vec<SegmentPrune>,
}

impl TrailRetention {
    pub fn records_pruned(&self) -> u64 {
        self.pruned.iter().map(|p| p.records).sum()
    }
}

/// Runs retention on trails of one store.
pub struct Retention<'a> {
    pub audit: &'a dyn AuditStore,
    pub log: &'a AuditLog,
    pub key: &'a CheckpointKey,
    pub sink: Option<&'a dyn CheckpointSink>,
    /// Records per segment (fixed for a deployment: changing it only changes which segments
    /// later runs consider).
    pub segment_records: u64,
    /// How long a run waits for a signed checkpoint over its retention records.
    pub checkpoint_wait: Duration,
}

/// A retention record already in the trail, with whether its prune is done.
struct Named {
    seq: i64,
    details: RetentionDetails,
}

impl Retention<'_> {
    /// Size of the latest checkpoint that is stored and (with a sink) published, verified.
    async fn checkpointed(&self, trail: &str) -> Result<u64> {
        let stored = self.audit.latest_checkpoint(trail).await?.map_or(0, |c| c.size);
        let Some(sink) = self.sink else { return Ok(stored) };
        let Some(note) = sink.latest(trail).await? else { return Ok(0) };
        let verifier = self.key.verifier(trail)?;
        let published =
            verifier.open(&note).ok().and_then(|t| moat_core::checkpoint::Checkpoint::parse_body(t).ok()).map(|c| c.size).ok_or_else(
                || MoatError::unavailable("checkpoint_invalid", format!("the published checkpoint of trail {trail} does not verify")),
            )?;
        Ok(stored.min(published))
    }

    /// The trail's retention records, oldest first.
    async fn named(&self, trail: &str) -> Result<Vec<Named>> {
        let tenant = trail_tenant(trail).ok_or_else(|| MoatError::internal("retention_trail"))?;
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let f = AuditFilter { action: Some(RETENTION_ACTION.into()), limit: 1_000, after_seq: Some(after), ..AuditFilter::default() };
            let page = self.audit.list(tenant, &f).await?;
            let Some(last) = page.last().map(|r| r.seq) else { break };
            for r in page {
                if r.action != RETENTION_ACTION || r.category != Category::System.as_str() {
                    continue;
                }
                let details: RetentionDetails = serde_json::from_value(r.details).map_err(|_| {
                    tracing::error!(trail, seq = r.seq, "a retention record does not parse");
                    MoatError::internal("retention_record")
                })?;
                out.push(Named { seq: r.seq, details });
            }
            after = last;
        }
        Ok(out)
    }

    /// One run over `trail` at `now_ms`; `dry_run` only reports what is due.
    pub async fn run(&self, trail: &str, rules: &RetentionRules, now_ms: i64, dry_run: bool) -> Result<TrailRetention> {
        let s = self.segment_records.max(1);
        let sealed_through = (self.checkpointed(trail).await? / s * s) as i64;
        let mut report = TrailRetention { trail: trail.to_owned(), sealed_through, rules: rules.clone(), ..TrailRetention::default() };
        let named = self.named(trail).await?;
        let done: HashSet<i64> = self.audit.prunes(trail).await?.into_iter().map(|p| p.retention_seq).collect();
        let already: HashSet<(i64, &str)> = named.iter().map(|n| (n.details.first_seq, n.details.category.as_str())).collect();
        // Retention records whose prune is not done yet (an earlier run stopped): finish them.
        let mut pending: Vec<(i64, RetentionDetails)> =
            named.iter().filter(|n| !done.contains(&n.seq)).map(|n| (n.seq, n.details.clone())).collect();
        let mut fresh = Vec::new();
        if sealed_through > 0 {
            for sc in self.audit.segment_categories(trail, sealed_through, s).await? {
                let Some(&days) = rules.0.get(&sc.category) else { continue };
                let cutoff_ms = now_ms.saturating_sub(i64::from(days) * DAY_MS);
                let (first, last) = segment_bounds(sc.segment, s);
                if sc.newest_ts_ms >= cutoff_ms || already.contains(&(first, sc.category.as_str())) {
                    continue;
                }
                let mut pruned = SeqRanges::new();
                for seq in self.audit.category_seqs(trail, first, last, &sc.category).await? {
                    pruned.push(seq);
                }
                if pruned.is_empty() {
                    continue;
                }
                fresh.push(RetentionDetails {
                    segment: sc.segment,
                    first_seq: first,
                    last_seq: last,
                    category: sc.category,
                    retention_days: days,
                    cutoff: rfc3339_ms(cutoff_ms),
                    count: pruned.count(),
                    pruned,
                });
            }
        }
        if dry_run {
            report.due =
                pending.iter().map(|(seq, d)| segment_prune(d, Some(*seq))).chain(fresh.iter().map(|d| segment_prune(d, None))).collect();
            return Ok(report);
        }
        let tenant = trail_tenant(trail).ok_or_else(|| MoatError::internal("retention_trail"))?;
        for d in fresh {
            let details = serde_json::to_value(&d).map_err(|_| MoatError::internal("retention_encode"))?;
            let e = AuditEvent::new(tenant, Category::System, RETENTION_ACTION, Actor::system("retention"), Outcome::Success)
                .resource(format!("audit:segment:{}", d.segment))
                .details(details);
            let at = self.log.append(e, now_ms).await?;
            pending.push((at.seq, d));
        }
        let Some(newest) = pending.iter().map(|(seq, _)| *seq).max() else { return Ok(report) };
        let covered = self.wait_for_checkpoint(trail, newest as u64).await?;
        for (seq, d) in pending {
            if seq as u64 > covered {
                report.due.push(segment_prune(&d, Some(seq)));
                continue;
            }
            let p = Prune {
                trail: trail.to_owned(),
                retention_seq: seq,
                segment: d.segment,
                first_seq: d.first_seq,
                last_seq: d.last_seq,
                category: d.category.clone(),
                count: d.count,
                ts_ms: now_ms,
            };
            let removed = self.audit.prune(&p).await?;
            tracing::info!(trail, segment = d.segment, category = %d.category, removed, retention_seq = seq, "audit records pruned");
            report.pruned.push(SegmentPrune { records: removed, ..segment_prune(&d, Some(seq)) });
        }
        Ok(report)
    }

    /// Waits until a signed checkpoint covering `seq` is stored and published; returns the
    /// size covered when it gives up (the caller prunes only what that covers).
    async fn wait_for_checkpoint(&self, trail: &str, seq: u64) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + self.checkpoint_wait;
        loop {
            let size = self.checkpointed(trail).await?;
            if size >= seq || tokio::time::Instant::now() >= deadline {
                if size < seq {
                    tracing::warn!(
                        trail,
                        seq,
                        checkpointed = size,
                        "no signed checkpoint covers the retention records yet; the next run prunes"
                    );
                }
                return Ok(size);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn segment_prune(d: &RetentionDetails, retention_seq: Option<i64>) -> SegmentPrune {
    SegmentPrune {
        segment: d.segment,
        first_seq: d.first_seq,
        last_seq: d.last_seq,
        category: d.category.clone(),
        records: d.count,
        retention_days: d.retention_days,
        cutoff: d.cutoff.clone(),
        retention_seq,
    }
}
