//! Verifying one audit trail from its records and checkpoints alone — what the server's
//! `/v1/audit/verify`, `moat audit verify` (live or offline on an export) and any auditor run.
//!
//! Streaming: checkpoints first ([`TrailVerifier::checkpoint`]), then every entry in order
//! ([`TrailVerifier::entry`]), then [`TrailVerifier::finish`]. Each entry's leaf hash is
//! recomputed from its bytes, its HMAC checked when the trail key is at hand, its fields
//! checked against its position; the Merkle root is recomputed as entries arrive and compared
//! with every signed checkpoint at its size. A checkpoint larger than the log means records
//! were cut off the end; a root that differs means the history was rewritten (a split view).
//! The first problem stops verification and names the sequence number.
//!
//! A record removed by retention arrives as its leaf hash alone ([`TrailVerifier::pruned`]); it
//! is accepted only if a later `audit.retention` record of the trail names it and a verified
//! signed checkpoint covers that record ([`crate::audit_retention`]), checked at
//! [`TrailVerifier::finish`].

use std::collections::BTreeMap;

use crate::audit::TrailMac;
use crate::audit_retention::{PruneLedger, RETENTION_ACTION, RetentionDetails};
use crate::checkpoint::{Checkpoint, NoteVerifier};
use crate::secret::ct_eq;
use crate::tlog::{Frontier, Hash, leaf_hash};

/// What is wrong, and where (`seq` is `None` for problems of the trail as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub seq: Option<i64>,
    pub what: String,
}

impl Problem {
    fn at(seq: i64, what: impl Into<String>) -> Self {
        Self { seq: Some(seq), what: what.into() }
    }
    fn trail(what: impl Into<String>) -> Self {
        Self { seq: None, what: what.into() }
    }
}

/// One stored entry as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a> {
    pub seq: i64,
    pub entry: &'a [u8],
    /// The leaf hash the store claims, if it keeps one.
    pub leaf_hash: Option<&'a [u8]>,
    pub hmac: Option<&'a [u8]>,
}

/// What a verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub size: u64,
    pub root: Hash,
    pub hmacs_checked: u64,
    pub checkpoints_checked: u64,
    /// Size of the largest checkpoint verified.
    pub checkpointed: u64,
    /// Records present only as leaf hashes, removed by retention.
    pub pruned: u64,
}

/// What binds an entry to its place: the fields the verifier reads of every record.
#[derive(Debug, serde::Deserialize)]
pub struct Position<'a> {
    pub v: u32,
    #[serde(borrow)]
    pub trail: std::borrow::Cow<'a, str>,
    pub seq: i64,
    #[serde(borrow)]
    pub category: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub action: std::borrow::Cow<'a, str>,
}

/// Reads an entry's [`Position`]; `None` if the entry is not a well-formed record. (Measured
/// against this and slower or no faster: a hand-written single-pass validating reader, and
/// `&str` fields in place of `Cow`; `benches/verify.rs` prints the cost per record.)
pub fn entry_position(entry: &[u8]) -> Option<Position<'_>> {
    serde_json::from_slice(entry).ok()
}

/// The details of a retention record, read only for those.
#[derive(serde::Deserialize)]
struct RetentionEntry {
    details: RetentionDetails,
}

pub struct TrailVerifier {
    trail: String,
    hmac_key: Option<TrailMac>,
    frontier: Frontier,
    /// Checkpoint roots by size, signatures already verified.
    checkpoints: BTreeMap<u64, Hash>,
    checkpoints_checked: u64,
    hmacs_checked: u64,
    ledger: PruneLedger,
}

impl TrailVerifier {
    pub fn new(trail: &str, hmac_key: Option<[u8; 32]>) -> Self {
        Self {
            trail: trail.to_owned(),
            hmac_key: hmac_key.as_ref().map(TrailMac::new),
            frontier: Frontier::new(),
            checkpoints: BTreeMap::new(),
            checkpoints_checked: 0,
            hmacs_checked: 0,
            ledger: PruneLedger::default(),
        }
    }

    /// Adds a signed checkpoint (before the entries): its signature must verify under
    /// `verifier` and its origin be the verifier's name. Two checkpoints of one size with
    /// different roots are a split view.
    pub fn checkpoint(&mut self, note: &str, verifier: &NoteVerifier) -> Result<(), Problem> {
        let text = verifier.open(note).map_err(|e| Problem::trail(format!("checkpoint: {e}")))?;
        let cp = Checkpoint::parse_body(text).map_err(|e| Problem::trail(format!("checkpoint: {e}")))?;
        if cp.origin != verifier.name() {
            return Err(Problem::trail(format!("checkpoint of another log ({})", cp.origin)));
        }
        if self.frontier.size() > 0 {
            return Err(Problem::trail("checkpoints must be added before the entries"));
        }
        if let Some(prev) = self.checkpoints.insert(cp.size, cp.root)
            && prev != cp.root
        {
            return Err(Problem::trail(format!("two signed checkpoints of size {} with different roots (split view)", cp.size)));
        }
        if cp.size == 0 && cp.root != crate::tlog::empty_root() {
            return Err(Problem::trail("a checkpoint of the empty log with a non-empty root"));
        }
        self.checkpoints_checked += 1;
        Ok(())
    }

    /// Whether `seq` is the next record.
    fn next_is(&self, seq: i64) -> Result<(), Problem> {
        let want = self.frontier.size() as i64 + 1;
        if seq == want {
            return Ok(());
        }
        Err(Problem::at(
            want,
            if seq > want { format!("record {want} is missing (next is {seq})") } else { format!("record {seq} out of order") },
        ))
    }

    /// Appends a leaf and compares the root with a checkpoint of the new size.
    fn grow(&mut self, seq: i64, leaf: Hash) -> Result<(), Problem> {
        self.frontier.append(leaf, |_, _| {});
        if let Some(root) = self.checkpoints.get(&self.frontier.size())
            && *root != self.frontier.root()
        {
            return Err(Problem::at(
                seq,
                format!("the log's root at size {} differs from the signed checkpoint (history rewritten)", self.frontier.size()),
            ));
        }
        Ok(())
    }

    /// The next record was removed by retention: only its leaf hash is left. Justified (or not)
    /// at [`Self::finish`].
    pub fn pruned(&mut self, seq: i64, leaf_hash: &[u8]) -> Result<(), Problem> {
        self.next_is(seq)?;
        let leaf: Hash = leaf_hash.try_into().map_err(|_| Problem::at(seq, "the pruned record's leaf hash is not 32 bytes"))?;
        self.ledger.pruned(seq);
        self.grow(seq, leaf)
    }

    /// Checks the next entry.
    pub fn entry(&mut self, e: &EntryView<'_>) -> Result<(), Problem> {
        self.next_is(e.seq)?;
        let leaf = leaf_hash(e.entry);
        if let Some(stored) = e.leaf_hash
            && !ct_eq(stored, &leaf)
        {
            return Err(Problem::at(e.seq, "the entry does not hash to its stored leaf hash (the record was edited)"));
        }
        let pos = entry_position(e.entry).ok_or_else(|| Problem::at(e.seq, "the entry is not a well-formed audit record"))?;
        if pos.v != crate::audit::ENTRY_VERSION {
            return Err(Problem::at(e.seq, format!("unknown entry version {}", pos.v)));
        }
        if pos.trail != self.trail {
            return Err(Problem::at(e.seq, format!("the entry belongs to trail {} (moved between trails)", pos.trail)));
        }
        if pos.seq != e.seq {
            return Err(Problem::at(e.seq, format!("the entry says it is record {} (records reordered)", pos.seq)));
        }
        if let Some(key) = &self.hmac_key {
            let Some(mac) = e.hmac else { return Err(Problem::at(e.seq, "no HMAC")) };
            if !ct_eq(mac, &key.tag(e.entry)) {
                return Err(Problem::at(e.seq, "HMAC does not match (written without the audit key)"));
            }
            self.hmacs_checked += 1;
        }
        if pos.action == RETENTION_ACTION && pos.category == "system" {
            let r: RetentionEntry = serde_json::from_slice(e.entry)
                .map_err(|err| Problem::at(e.seq, format!("a retention record whose details do not parse: {err}")))?;
            if r.details.pruned.count() != r.details.count {
                return Err(Problem::at(e.seq, "a retention record whose count differs from the records it names"));
            }
            self.ledger.named(e.seq, r.details.pruned).map_err(|what| Problem::at(e.seq, what))?;
        }
        self.grow(e.seq, leaf)
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Ends the trail: every checkpoint must lie within it, every pruned record be named by a
    /// checkpointed retention record.
    pub fn finish(self) -> Result<Summary, Problem> {
        let size = self.frontier.size();
        if let Some((&largest, _)) = self.checkpoints.last_key_value()
            && largest > size
        {
            return Err(Problem::at(
                size as i64 + 1,
                format!("a signed checkpoint covers {largest} records but the log holds {size} (records removed from the end)"),
            ));
        }
        let checkpointed = self.checkpoints.last_key_value().map_or(0, |(s, _)| *s);
        self.ledger.check(checkpointed).map_err(|u| Problem::at(u.seq, u.what))?;
        Ok(Summary {
            size,
            root: self.frontier.root(),
            hmacs_checked: self.hmacs_checked,
            checkpoints_checked: self.checkpoints_checked,
            checkpointed,
            pruned: self.ledger.count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditKeys, EntryFields, encode_entry};
    use crate::checkpoint::NoteSigner;
    use crate::tlog::root_of;

    fn entries(trail: &str, n: i64) -> Vec<Vec<u8>> {
        let actor = serde_json::json!({"via": "system"});
        let details = serde_json::json!({"i": 1});
        (1..=n)
            .map(|seq| {
                encode_entry(&EntryFields {
                    trail,
                    seq,
                    ts_ms: 1_000 + seq,
                    event_id: &format!("e{seq}"),
                    category: "system",
                    action: "test.event",
                    outcome: "success",
                    actor: &actor,
                    resource: None,
                    source_ip: None,
                    user_agent: None,
                    request_id: None,
                    details: &details,
                })
            })
            .collect()
    }

    struct Log {
        entries: Vec<Vec<u8>>,
        macs: Vec<[u8; 32]>,
        key: [u8; 32],
        signer: NoteSigner,
    }

    fn log(n: i64) -> Log {
        let keys = AuditKeys::new([5; 32]);
        let entries = entries("t1", n);
        let macs = entries.iter().map(|e| keys.hmac("t1", e)).collect();
        Log { entries, macs, key: keys.trail_key("t1"), signer: NoteSigner::from_seed("moat.test/audit/t1", &[6; 32]).expect("signer") }
    }

    impl Log {
        fn checkpoint(&self, size: usize) -> String {
            let leaves: Vec<Hash> = self.entries[..size].iter().map(|e| leaf_hash(e)).collect();
            let cp = Checkpoint { origin: self.signer.name().into(), size: size as u64, root: root_of(&leaves), extensions: vec![] };
            self.signer.sign(&cp.body()).expect("sign")
        }
        fn verify(&self, checkpoints: &[String], rows: &[(i64, &[u8], &[u8; 32])]) -> Result<Summary, Problem> {
            let mut v = TrailVerifier::new("t1", Some(self.key));
            for c in checkpoints {
                v.checkpoint(c, &self.signer.verifier())?;
            }
            for (seq, entry, mac) in rows {
                let leaf = leaf_hash(entry);
                v.entry(&EntryView { seq: *seq, entry, leaf_hash: Some(&leaf), hmac: Some(mac.as_slice()) })?;
            }
            v.finish()
        }
        fn rows(&self) -> Vec<(i64, &[u8], &[u8; 32])> {
            self.entries.iter().zip(&self.macs).enumerate().map(|(i, (e, m))| (i as i64 + 1, e.as_slice(), m)).collect()
        }
    }

    #[test]
    fn an_intact_log_verifies() {
        let l = log(10);
        let s = l.verify(&[l.checkpoint(4), l.checkpoint(10)], &l.rows()).expect("intact");
        assert_eq!((s.size, s.hmacs_checked, s.checkpoints_checked, s.checkpointed), (10, 10, 2, 10));
    }

    #[test]
    fn every_tampering_is_named() {
        let l = log(10);
        let cps = [l.checkpoint(10)];
        // Deleted record.
        let mut rows = l.rows();
        rows.remove(4);
        assert_eq!(l.verify(&cps, &rows).expect_err("gap").seq, Some(5));
        // Reordered records.
        let mut rows = l.rows();
        rows.swap(2, 3);
        assert!(l.verify(&cps, &rows).is_err());
        // Truncated tail.
        let rows = l.rows()[..7].to_vec();
        let e = l.verify(&cps, &rows).expect_err("truncated");
        assert!(e.what.contains("removed from the end"), "{e:?}");
        // Edited entry with a recomputed leaf hash but no audit key: the HMAC catches it.
        let edited = String::from_utf8(l.entries[2].clone()).expect("utf8").replace("test.event", "test.evenT").into_bytes();
        let mut rows = l.rows();
        rows[2].1 = &edited;
        let e = l.verify(&[], &rows).expect_err("edited");
        assert_eq!(e.seq, Some(3));
        assert!(e.what.contains("HMAC"), "{e:?}");
        // Rewritten history with valid HMACs (an insider with the key) against a checkpoint.
        let mut other = log(10);
        other.entries[1] = String::from_utf8(entries("t1", 10)[1].clone()).expect("utf8").replace("\"i\":1", "\"i\":2").into_bytes();
        other.macs[1] = AuditKeys::new([5; 32]).hmac("t1", &other.entries[1]);
        let e = other.verify(&cps, &other.rows()).expect_err("rewritten");
        assert!(e.what.contains("history rewritten"), "{e:?}");
        // A record from another trail.
        let foreign = entries("t2", 1);
        let mut rows = l.rows();
        let mac = AuditKeys::new([5; 32]).hmac("t1", &foreign[0]);
        rows[0] = (1, &foreign[0], &mac);
        assert!(l.verify(&[], &rows).expect_err("foreign").what.contains("moved between trails"));
        // A forged checkpoint.
        let forged = l.checkpoint(10).replacen("\n10\n", "\n11\n", 1);
        assert!(l.verify(&[forged], &l.rows()).expect_err("forged").what.contains("signature"));
        // Split view: two signed checkpoints of one size.
        let mut fork = log(10);
        fork.entries[0] = entries("t1", 2)[1].clone();
        let e = l.verify(&[l.checkpoint(10), fork.checkpoint(10)], &l.rows()).expect_err("split");
        assert!(e.what.contains("split view"), "{e:?}");
    }
}
