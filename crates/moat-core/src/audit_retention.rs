//! Retention: the only way records leave the audit log, and how a verifier tells it from
//! tampering.
//!
//! A trail is cut into fixed **segments** of `segment_records` sequence numbers (segment `k`
//! holds seq `k·S+1 ..= (k+1)·S`). A segment is **sealed** once a signed checkpoint covers its
//! last record. Retention removes, from one sealed segment, every record of one category whose
//! retention has passed (the segment's newest record of that category is older than the
//! cutoff) — never an `audit.retention` record itself. Before anything is removed, an
//! `audit.retention` record (category `system`) is appended that names the segment, the
//! category, the cutoff and the exact sequence numbers ([`RetentionDetails::pruned`], a
//! [`SeqRanges`] text like `"4097-4100,4105"`), and the prune waits until a signed checkpoint
//! covers that record. The removed records' leaf hashes stay in the store, so every root, every
//! older checkpoint and every proof still verifies.
//!
//! A verifier therefore accepts a missing record only as a *pruned leaf* (its leaf hash without
//! its entry) that an `audit.retention` record of the same trail names, where that record comes
//! after it and is itself covered by a verified signed checkpoint: whoever removes a record
//! without the checkpoint signing key cannot justify the gap.

use serde::{Deserialize, Serialize};

/// The action of a retention record.
pub const RETENTION_ACTION: &str = "audit.retention";

/// Most ranges one retention record may name (a segment of 65,536 records alternating between
/// two categories needs 32,768).
pub const MAX_RANGES: usize = 65_536;

/// Sorted, disjoint, non-adjacent ranges of sequence numbers; text form `"1-5,7,9-12"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(Vec<(i64, i64)>);

impl SeqRanges {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds `seq`, which must be larger than every seq already in (false otherwise).
    pub fn push(&mut self, seq: i64) -> bool {
        match self.0.last_mut() {
            Some((_, end)) if seq <= *end => false,
            Some((_, end)) if seq == *end + 1 => {
                *end = seq;
                true
            }
            _ => {
                self.0.push((seq, seq));
                true
            }
        }
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(i64, i64)] {
        &self.0
    }

    /// How many sequence numbers.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| (b - a + 1) as u64).sum()
    }

    pub fn first(&self) -> Option<i64> {
        self.0.first().map(|r| r.0)
    }

    pub fn last(&self) -> Option<i64> {
        self.0.last().map(|r| r.1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the text form strictly: ascending, positive, disjoint, at most [`MAX_RANGES`].
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = Self::new();
        if s.is_empty() {
            return Some(out);
        }
        for part in s.split(',') {
            if out.0.len() >= MAX_RANGES {
                return None;
            }
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (parse_seq(a)?, parse_seq(b)?),
                None => {
                    let a = parse_seq(part)?;
                    (a, a)
                }
            };
            if b < a || out.last().is_some_and(|l| a <= l + 1) {
                return None;
            }
            out.0.push((a, b));
        }
        Some(out)
    }
}

fn parse_seq(s: &str) -> Option<i64> {
    // Digits only: no sign, no spaces, no leading zeros.
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok().filter(|n| *n >= 1)
}

impl std::fmt::Display for SeqRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b { write!(f, "{a}")? } else { write!(f, "{a}-{b}")? }
        }
        Ok(())
    }
}

impl Serialize for SeqRanges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SeqRanges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| serde::de::Error::custom("not an ascending list of sequence ranges like \"1-5,7\""))
    }
}

/// The `details` of an `audit.retention` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDetails {
    /// Segment number (0-based).
    pub segment: u64,
    /// The segment's first and last sequence numbers.
    pub first_seq: i64,
    pub last_seq: i64,
    /// The category removed.
    pub category: String,
    /// The retention that applied, in days.
    pub retention_days: u32,
    /// Records older than this (RFC 3339, UTC) were due.
    pub cutoff: String,
    /// Exactly the sequence numbers removed.
    pub pruned: SeqRanges,
    /// How many (the count of `pruned`).
    pub count: u64,
}

/// Segment `k` of size `s`: its first and last seq.
pub fn segment_bounds(k: u64, s: u64) -> (i64, i64) {
    ((k * s + 1) as i64, ((k + 1) * s) as i64)
}

/// What a verifier collects about pruned leaves and retention records, and checks at the end.
#[derive(Debug, Default)]
pub struct PruneLedger {
    /// Seqs present only as leaf hashes, ascending.
    pruned: SeqRanges,
    /// Per retention record: its seq and the ranges it names.
    named: Vec<(i64, SeqRanges)>,
}

/// Why a pruned leaf is not justified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unjustified {
    pub seq: i64,
    pub what: String,
}

impl PruneLedger {
    /// A leaf without its entry at `seq` (seqs arrive ascending).
    pub fn pruned(&mut self, seq: i64) {
        self.pruned.push(seq);
    }

    /// A verified retention record at `seq` naming `ranges`; every named seq must precede it.
    pub fn named(&mut self, seq: i64, ranges: SeqRanges) -> Result<(), String> {
        if ranges.last().is_some_and(|l| l >= seq) {
            return Err(format!("the retention record names record {} at or after itself", ranges.last().unwrap_or(0)));
        }
        self.named.push((seq, ranges));
        Ok(())
    }

    /// How many leaves were pruned.
    pub fn count(&self) -> u64 {
        self.pruned.count()
    }

    /// Every pruned leaf must be named by a retention record at seq ≤ `checkpointed` (the
    /// largest verified signed checkpoint). Names the first one that is not.
    pub fn check(&self, checkpointed: u64) -> Result<(), Unjustified> {
        let covered = |limit: i64| {
            let mut all: Vec<(i64, i64)> =
                self.named.iter().filter(|(s, _)| *s <= limit).flat_map(|(_, r)| r.ranges().iter().copied()).collect();
            all.sort_unstable();
            all
        };
        let first_gap = |cover: &[(i64, i64)]| -> Option<i64> {
            // Both lists ascending; `reach` = every seq ≤ reach is covered so far.
            let mut i = 0;
            let mut reach = 0i64;
            for &(a, b) in self.pruned.ranges() {
                let mut need = a;
                while need <= b {
                    if need <= reach {
                        need = reach + 1;
                        continue;
                    }
                    while i < cover.len() && cover[i].0 <= need {
                        reach = reach.max(cover[i].1);
                        i += 1;
                    }
                    if need > reach {
                        return Some(need);
                    }
                }
            }
            None
        };
        let limit = i64::try_from(checkpointed).unwrap_or(i64::MAX);
        let Some(seq) = first_gap(&covered(limit)) else { return Ok(()) };
        let what = match first_gap(&covered(i64::MAX)) {
            Some(s) if s == seq => format!("record {seq} was removed but no retention record names it"),
            _ => format!("record {seq} was removed by a retention record that no signed checkpoint covers"),
        };
        Err(Unjustified { seq, what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(s: &str) -> SeqRanges {
        SeqRanges::parse(s).expect(s)
    }

    #[test]
    fn ranges_round_trip_and_reject_what_is_not_ascending() {
        let mut r = SeqRanges::new();
        for s in [1, 2, 3, 5, 7, 8] {
            assert!(r.push(s));
        }
        assert!(!r.push(8));
        assert_eq!(r.to_string(), "1-3,5,7-8");
        assert_eq!((r.count(), r.first(), r.last()), (6, Some(1), Some(8)));
        assert_eq!(ranges("1-3,5,7-8"), r);
        assert_eq!(ranges(""), SeqRanges::new());
        for bad in ["0", "3-1", "1-3,3", "1-3,4", "5,2", "-1", "1,,2", "01", "1-", " 1", "99999999999999999999", "a"] {
            assert!(SeqRanges::parse(bad).is_none(), "{bad}");
        }
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"1-3,5,7-8\"");
        assert_eq!(serde_json::from_str::<SeqRanges>(&json).unwrap(), r);
        assert!(serde_json::from_str::<SeqRanges>("\"2,1\"").is_err());
    }

    #[test]
    fn a_pruned_leaf_needs_a_checkpointed_retention_record_naming_it() {
        let mut l = PruneLedger::default();
        for s in [2, 3, 4, 7] {
            l.pruned(s);
        }
        // Nothing names them.
        assert_eq!(l.check(100).unwrap_err().seq, 2);
        l.named(20, ranges("2-3")).unwrap();
        l.named(30, ranges("4,7")).unwrap();
        assert!(l.check(30).is_ok());
        // The second record is beyond the signed checkpoint.
        let e = l.check(25).unwrap_err();
        assert_eq!(e.seq, 4);
        assert!(e.what.contains("no signed checkpoint"), "{e:?}");
        // A record naming itself or a later one is refused.
        assert!(l.named(5, ranges("5")).is_err());
        let mut l = PruneLedger::default();
        l.pruned(9);
        l.named(20, ranges("1-8")).unwrap();
        assert!(l.check(20).unwrap_err().what.contains("no retention record names it"));
    }
}
