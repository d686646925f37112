//! What the backends share: the sealing of an audit entry (its canonical bytes, leaf hash,
//! HMAC and the tree nodes it completes), hash and frontier decoding, search input parsing.

use moat_core::audit::{EntryFields, TrailMac, encode_entry};
use moat_core::tlog::{Frontier, Hash, NodeId, leaf_hash};
use moat_core::{MoatError, Result};

use crate::NewAuditEntry;

pub(crate) fn corrupt(what: &str) -> MoatError {
    tracing::error!(what, "corrupt row in store");
    MoatError::internal("store_corrupt")
}

/// An audit append that failed: the request is refused (fail closed), the cause logged.
pub(crate) fn audit_unavailable(e: sqlx::Error) -> MoatError {
    tracing::error!(error = %e, "audit append failed");
    MoatError::unavailable("audit_unavailable", "the audit trail cannot be written; the request was refused")
}

pub(crate) fn hash_of(b: &[u8]) -> Result<Hash> {
    b.try_into().map_err(|_| corrupt("audit hash"))
}

pub(crate) fn frontier_of(size: i64, bytes: &[u8]) -> Result<Frontier> {
    let hashes = bytes.chunks(32).map(hash_of).collect::<Result<Vec<_>>>()?;
    Frontier::from_parts(size as u64, hashes).ok_or_else(|| corrupt("audit frontier"))
}

pub(crate) fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// The words of a search text, each with whether it ends in `*` (a prefix); words without a
/// letter or digit are dropped (nothing searchable in them).
pub(crate) fn search_words(text: &str) -> Vec<(String, bool)> {
    text.split_whitespace()
        .filter_map(|w| {
            let (word, prefix) = match w.strip_suffix('*') {
                Some(w) => (w, true),
                None => (w, false),
            };
            word.chars().any(char::is_alphanumeric).then(|| (word.to_owned(), prefix))
        })
        .collect()
}

/// An audit entry ready to be written: its place in the trail and its integrity values.
pub(crate) struct Sealed {
    pub seq: i64,
    /// The actor as JSON, for search.
    pub actor: String,
    pub entry: Vec<u8>,
    pub leaf: Hash,
    pub mac: [u8; 32],
}

/// Gives `n` the next sequence number of `trail` (whose tree is `f`), encodes it canonically,
/// hashes and MACs it, and appends its leaf, reporting the nodes it completes to `node`.
pub(crate) fn seal_entry(
    trail: &str,
    n: &NewAuditEntry,
    f: &mut Frontier,
    mac_key: &TrailMac,
    node: impl FnMut(NodeId, Hash),
) -> Result<Sealed> {
    let e = &n.event;
    let actor = serde_json::to_value(&e.actor).map_err(|_| MoatError::internal("encode_actor"))?;
    let seq = f.size() as i64 + 1;
    let entry = encode_entry(&EntryFields {
        trail,
        seq,
        ts_ms: n.ts_ms,
        event_id: &n.event_id,
        category: e.category.as_str(),
        action: &e.action,
        outcome: e.outcome.as_str(),
        actor: &actor,
        resource: e.resource.as_deref(),
        source_ip: e.source_ip.as_deref(),
        user_agent: e.user_agent.as_deref(),
        request_id: e.request_id.as_deref(),
        details: &e.details,
    });
    let leaf = leaf_hash(&entry);
    let mac = mac_key.tag(&entry);
    f.append(leaf, node);
    Ok(Sealed { seq, actor: actor.to_string(), entry, leaf, mac })
}

/// The message of a prune whose named count does not match the records present.
pub(crate) fn retention_mismatch(p: &crate::Prune, present: i64) -> MoatError {
    tracing::error!(trail = %p.trail, retention_seq = p.retention_seq, present, named = p.count, "retention mismatch");
    MoatError::conflict(
        "retention_mismatch",
        format!("the retention record at seq {} names {} records but {present} are present; nothing was removed", p.retention_seq, p.count),
    )
}

// Rows of either backend as records: the columns carry the same names and (as far as these
// fields go) the same types in both schemas, so one mapping serves both row types.

macro_rules! column_record {
    ($r:expr) => {
        $crate::ColumnRecord {
            name: $r.get("name"),
            data_type: $r.get("data_type"),
            classification: $r.get("classification"),
            pii: $r.get("pii"),
            entity: $r.get("entity"),
            confidence: $r.get("confidence"),
            source: $r.get("source"),
            mask: $r.get("mask"),
        }
    };
}

macro_rules! checkpoint_record {
    ($r:expr) => {
        $crate::CheckpointRecord {
            trail: $r.get("trail"),
            size: $r.get::<i64, _>("size") as u64,
            ts_ms: $r.get("ts_ms"),
            note: $r.get("note"),
        }
    };
}

/// A `tenant_keys` row of tenant `$tenant`; `$version` is the stored version's integer type
/// (SQLite INTEGER, PostgreSQL integer). A version that is not a positive 32-bit number is a
/// corrupt row.
macro_rules! tenant_key_record {
    ($r:expr, $tenant:expr, $version:ty) => {
        u32::try_from($r.get::<$version, _>("version")).map_err(|_| $crate::shared::corrupt("tenant key version")).map(|version| {
            $crate::TenantKeyRecord {
                tenant_id: $tenant,
                version,
                kek: $r.get("kek"),
                wrapped: $r.get("wrapped"),
                created_at: $r.get("created_at"),
                destroyed_at: $r.get("destroyed_at"),
            }
        })
    };
}

macro_rules! prune_record {
    ($r:expr) => {
        $crate::Prune {
            trail: $r.get("trail"),
            retention_seq: $r.get("retention_seq"),
            segment: $r.get::<i64, _>("segment") as u64,
            first_seq: $r.get("first_seq"),
            last_seq: $r.get("last_seq"),
            category: $r.get("category"),
            count: $r.get::<i64, _>("count") as u64,
            ts_ms: $r.get("ts_ms"),
        }
    };
}

macro_rules! segment_category {
    ($r:expr) => {
        $crate::SegmentCategory {
            segment: $r.get::<i64, _>("segment") as u64,
            category: $r.get("category"),
            records: $r.get::<i64, _>("records") as u64,
            newest_ts_ms: $r.get("newest"),
        }
    };
}

/// Present records and kept leaves of pruned ones (`entry` NULL), in seq order, as stored
/// entries; a seq that has both (it cannot: a prune is one transaction) shows as the record.
macro_rules! stored_entries {
    ($rows:expr) => {{
        let mut out: Vec<$crate::StoredEntry> = Vec::with_capacity($rows.len());
        for r in $rows.iter() {
            let seq: i64 = r.get("seq");
            let leaf_hash = hex::encode(r.get::<Vec<u8>, _>("leaf_hash"));
            let present = r.get::<Option<Vec<u8>>, _>("entry");
            if let Some(last) = out.last()
                && last.seq == seq
            {
                if present.is_none() {
                    continue;
                }
                out.pop();
            }
            let Some(entry) = present else {
                out.push($crate::StoredEntry { seq, entry: String::new(), leaf_hash, hmac: String::new(), index: None, pruned: true });
                continue;
            };
            out.push($crate::StoredEntry {
                seq,
                // Not UTF-8 is a finding for the verifier, not a read error.
                entry: String::from_utf8_lossy(&entry).into_owned(),
                leaf_hash,
                hmac: hex::encode(r.get::<Vec<u8>, _>("hmac")),
                index: Some($crate::IndexColumns {
                    ts_ms: r.get("ts_ms"),
                    event_id: r.get("event_id"),
                    category: r.get("category"),
                    action: r.get("action"),
                    outcome: r.get("outcome"),
                    actor: r.get("actor"),
                    resource: r.get("resource"),
                }),
                pruned: false,
            });
        }
        out
    }};
}

pub(crate) use {checkpoint_record, column_record, prune_record, segment_category, stored_entries, tenant_key_record};

/// Takes or renews a trail's forwarding lease. One text for both dialects: SQLite reads `$n` as
/// named parameters numbered by first appearance, which here is `$1` … `$6` in order.
/// Binds: sink, trail, start, owner, until_ms, now_ms. No row when another owner holds it.
pub(crate) const LEASE_CURSOR: &str = "INSERT INTO event_cursors (sink, trail, published_seq, lease_owner, lease_until_ms) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (sink, trail) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until_ms = excluded.lease_until_ms \
     WHERE event_cursors.lease_owner = excluded.lease_owner OR event_cursors.lease_until_ms < $6 \
     RETURNING published_seq";
