//! The export bundle: one trail's records and signed checkpoints in a file that an auditor
//! verifies offline — with `moat audit verify --bundle`, or with no moat code at all
//! (`tests/interop/verify_audit_bundle.py` follows `docs/audit-format.md`).
//!
//! NDJSON (UTF-8, one JSON object per line, `\n` after each):
//! 1. the header: `{"format":"moat-audit-bundle/v1","trail":…,"origin":…,"verifier_key":…,
//!    "size":N,"exported_at_ms":…}`;
//! 2. the trail's signed checkpoints of size ≤ N, by size: `{"checkpoint":"<C2SP signed note>"}`;
//! 3. the N records, seq 1..=N in order: `{"seq":1,"entry":"<canonical entry>",
//!    "leaf_hash":"<hex>","hmac":"<hex>"}`; a record removed by retention is its leaf hash
//!    alone, `{"seq":7,"pruned":true,"leaf_hash":"<hex>"}`, and a later `audit.retention`
//!    record covered by a signed checkpoint must name it.
//!
//! The header's verifier key is a convenience: a bundle is only as trustworthy as the key its
//! checkpoints are checked against, so an auditor pins the key they obtained out of band
//! (`moat audit checkpoint` at an earlier date, the deployment's published key) and the report
//! says whether it was pinned.

use std::borrow::Cow;
use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::audit_verify::{EntryView, Problem, TrailVerifier};
use crate::checkpoint::NoteVerifier;

/// The `format` of a version 1 bundle.
pub const BUNDLE_FORMAT: &str = "moat-audit-bundle/v1";

/// The first line of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    pub format: String,
    /// Tenant id or `platform`.
    pub trail: String,
    /// The log's origin (`{deployment}/audit/{trail}`), the key name of its checkpoints.
    pub origin: String,
    /// `name+keyid+base64(0x01 ‖ Ed25519 public key)`, as the server states it.
    pub verifier_key: String,
    /// Records in the bundle.
    pub size: u64,
    pub exported_at_ms: i64,
}

/// A checkpoint line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleCheckpoint {
    pub checkpoint: String,
}

/// A record line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub seq: i64,
    /// The canonical entry, exactly the bytes that were hashed.
    pub entry: String,
    /// Hex `SHA-256(0x00 ‖ entry)`.
    pub leaf_hash: String,
    /// Hex HMAC-SHA256 of the entry under the trail key.
    pub hmac: String,
}

/// The line of a record removed by retention: its leaf hash keeps the tree whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePruned {
    pub seq: i64,
    /// Always `true`.
    pub pruned: bool,
    pub leaf_hash: String,
}

/// What the auditor brings besides the bundle.
#[derive(Debug, Default)]
pub struct BundleOptions {
    /// The verifier key obtained out of band; without it the header's key is used.
    pub pinned_key: Option<NoteVerifier>,
    /// The trail's HMAC key (`moat audit hmac-key`), to check every record's HMAC.
    pub hmac_key: Option<[u8; 32]>,
    /// Checkpoints obtained elsewhere (the published one, a witness's): the bundle must agree.
    pub extra_checkpoints: Vec<String>,
}

/// The outcome of an offline verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReport {
    pub ok: bool,
    pub trail: String,
    pub origin: String,
    /// Whether the checkpoints were checked against a key the auditor supplied.
    pub key_pinned: bool,
    /// Records verified (all of them when `ok`).
    pub checked: u64,
    /// Hex Merkle root over the verified records (when `ok`).
    pub root: Option<String>,
    pub hmacs_checked: u64,
    pub checkpoints_checked: u64,
    /// Records covered by the largest signed checkpoint.
    pub checkpointed: u64,
    /// Records removed by retention (present as leaf hashes), all named by retention records.
    pub pruned: u64,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

/// A bundle that cannot be read as one at all (as opposed to one that fails verification).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] std::io::Error),
    #[error("the bundle's first line is not a {BUNDLE_FORMAT} header: {0}")]
    Header(String),
}

/// Any line after the header, parsed in one pass whatever its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow, default)]
    checkpoint: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<i64>,
    #[serde(borrow, default)]
    entry: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    leaf_hash: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    hmac: Option<Cow<'a, str>>,
    #[serde(default)]
    pruned: Option<bool>,
}

/// Reads and verifies a bundle. `progress(done, total)` is called every 65,536 records.
pub fn verify_bundle(
    mut input: impl BufRead,
    opts: &BundleOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<BundleReport, BundleError> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    let header: BundleHeader = serde_json::from_str(&line).map_err(|e| BundleError::Header(e.to_string()))?;
    if header.format != BUNDLE_FORMAT {
        return Err(BundleError::Header(format!("format {:?}", header.format)));
    }
    let bundled_key;
    let verifier = match &opts.pinned_key {
        Some(k) => k,
        None => {
            bundled_key = NoteVerifier::parse(&header.verifier_key).map_err(|e| BundleError::Header(format!("verifier_key: {e}")))?;
            &bundled_key
        }
    };
    let mut report = BundleReport {
        ok: false,
        trail: header.trail.clone(),
        origin: header.origin.clone(),
        key_pinned: opts.pinned_key.is_some(),
        checked: 0,
        root: None,
        hmacs_checked: 0,
        checkpoints_checked: 0,
        checkpointed: 0,
        pruned: 0,
        first_bad_seq: None,
        problem: None,
    };
    let fail = |mut r: BundleReport, checked: u64, p: Problem| -> Result<BundleReport, BundleError> {
        r.checked = checked;
        r.first_bad_seq = p.seq;
        r.problem = Some(p.what);
        Ok(r)
    };
    if verifier.name() != header.origin {
        let what = format!("the bundle is of log {:?} but the key is for {:?}", header.origin, verifier.name());
        return fail(report, 0, Problem { seq: None, what });
    }
    let mut v = TrailVerifier::new(&header.trail, opts.hmac_key);
    for note in &opts.extra_checkpoints {
        if let Err(p) = v.checkpoint(note, verifier) {
            return fail(report, 0, Problem { seq: p.seq, what: format!("supplied checkpoint: {}", p.what) });
        }
    }
    let mut line_no = 1u64;
    let (mut leaf, mut mac) = (Vec::with_capacity(32), Vec::with_capacity(32));
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        line_no += 1;
        let next = v.size() as i64 + 1;
        let Ok(l) = serde_json::from_str::<Line<'_>>(&line) else {
            return fail(report, v.size(), Problem { seq: Some(next), what: format!("line {line_no} is not a bundle line") });
        };
        match l {
            Line { checkpoint: Some(note), seq: None, entry: None, leaf_hash: None, hmac: None, pruned: None } => {
                if let Err(p) = v.checkpoint(&note, verifier) {
                    return fail(report, v.size(), Problem { seq: p.seq, what: format!("line {line_no}: {}", p.what) });
                }
            }
            Line { checkpoint: None, seq: Some(seq), entry: None, leaf_hash: Some(lh), hmac: None, pruned: Some(true) } => {
                leaf.clear();
                if !hex_into(&lh, &mut leaf) {
                    return fail(report, v.size(), Problem { seq: Some(seq), what: "the leaf hash is not hex".into() });
                }
                if let Err(p) = v.pruned(seq, &leaf) {
                    let checked = v.size();
                    return fail(report, checked, p);
                }
            }
            Line { checkpoint: None, seq: Some(seq), entry: Some(entry), leaf_hash: Some(lh), hmac: Some(h), pruned: None } => {
                leaf.clear();
                mac.clear();
                let hex_ok = hex_into(&lh, &mut leaf) && hex_into(&h, &mut mac);
                if !hex_ok {
                    return fail(report, v.size(), Problem { seq: Some(seq), what: "the leaf hash or HMAC is not hex".into() });
                }
                let view = EntryView { seq, entry: entry.as_bytes(), leaf_hash: Some(&leaf), hmac: Some(&mac) };
                if let Err(p) = v.entry(&view) {
                    let checked = v.size();
                    return fail(report, checked, p);
                }
                if v.size().is_multiple_of(65_536) {
                    progress(v.size(), header.size);
                }
            }
            _ => {
                return fail(
                    report,
                    v.size(),
                    Problem { seq: Some(next), what: format!("line {line_no} is neither a checkpoint nor a record") },
                );
            }
        }
    }
    let checked = v.size();
    progress(checked, header.size);
    let s = match v.finish() {
        Ok(s) => s,
        Err(p) => return fail(report, checked, p),
    };
    report.checked = s.size;
    report.hmacs_checked = s.hmacs_checked;
    report.checkpoints_checked = s.checkpoints_checked;
    report.checkpointed = s.checkpointed;
    report.pruned = s.pruned;
    if s.size != header.size {
        let what = format!("the header announces {} records but the bundle holds {} (records removed from the end)", header.size, s.size);
        return fail(report, checked, Problem { seq: Some(s.size.min(header.size) as i64 + 1), what });
    }
    report.ok = true;
    report.root = Some(hex::encode(s.root));
    Ok(report)
}

/// Decodes hex into `out` without allocating; false if it is not hex.
fn hex_into(s: &str, out: &mut Vec<u8>) -> bool {
    if !s.len().is_multiple_of(2) {
        return false;
    }
    out.resize(s.len() / 2, 0);
    hex::decode_to_slice(s, out).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditKeys, EntryFields, encode_entry, hmac_with};
    use crate::checkpoint::{Checkpoint, NoteSigner};
    use crate::tlog::{leaf_hash, root_of};

    const ORIGIN: &str = "moat.test/audit/platform";

    fn signer() -> NoteSigner {
        NoteSigner::from_seed(ORIGIN, &[7; 32]).unwrap()
    }

    fn entry(seq: i64, category: &str, action: &str, details: &serde_json::Value) -> Vec<u8> {
        encode_entry(&EntryFields {
            trail: "platform",
            seq,
            ts_ms: 1_000 + seq,
            event_id: &format!("e{seq}"),
            category,
            action,
            outcome: "success",
            actor: &serde_json::json!({"via": "system"}),
            resource: Some("tenant:acme"),
            source_ip: None,
            user_agent: None,
            request_id: None,
            details,
        })
    }

    /// A bundle of `n` records with checkpoints at `cps`, as lines.
    fn bundle(n: i64, cps: &[usize]) -> Vec<String> {
        let details = serde_json::json!({"sql": "SELECT \"x\" FROM t -- é\n"});
        bundle_of((1..=n).map(|seq| entry(seq, "admin", "tenant.create", &details)).collect(), cps)
    }

    fn bundle_of(entries: Vec<Vec<u8>>, cps: &[usize]) -> Vec<String> {
        let key = AuditKeys::new([3; 32]).trail_key("platform");
        let n = entries.len() as i64;
        let leaves: Vec<_> = entries.iter().map(|e| leaf_hash(e)).collect();
        let s = signer();
        let header = BundleHeader {
            format: BUNDLE_FORMAT.into(),
            trail: "platform".into(),
            origin: ORIGIN.into(),
            verifier_key: s.verifier().encode(),
            size: n as u64,
            exported_at_ms: 9,
        };
        let mut lines = vec![serde_json::to_string(&header).unwrap()];
        for &size in cps {
            let body = Checkpoint { origin: ORIGIN.into(), size: size as u64, root: root_of(&leaves[..size]), extensions: vec![] }.body();
            lines.push(serde_json::to_string(&BundleCheckpoint { checkpoint: s.sign(&body).unwrap() }).unwrap());
        }
        for (i, e) in entries.iter().enumerate() {
            let r = BundleRecord {
                seq: i as i64 + 1,
                entry: String::from_utf8(e.clone()).unwrap(),
                leaf_hash: hex::encode(leaves[i]),
                hmac: hex::encode(hmac_with(&key, e)),
            };
            lines.push(serde_json::to_string(&r).unwrap());
        }
        lines
    }

    fn verify(lines: &[String], opts: &BundleOptions) -> BundleReport {
        let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        verify_bundle(text.as_bytes(), opts, |_, _| {}).unwrap()
    }

    fn pinned() -> BundleOptions {
        BundleOptions {
            pinned_key: Some(signer().verifier()),
            hmac_key: Some(AuditKeys::new([3; 32]).trail_key("platform")),
            extra_checkpoints: vec![],
        }
    }

    #[test]
    fn an_intact_bundle_verifies() {
        let r = verify(&bundle(10, &[4, 10]), &pinned());
        assert!(r.ok, "{r:?}");
        assert_eq!((r.checked, r.hmacs_checked, r.checkpoints_checked, r.checkpointed), (10, 10, 2, 10));
        assert!(r.key_pinned);
        let unpinned = verify(&bundle(10, &[10]), &BundleOptions::default());
        assert!(unpinned.ok && !unpinned.key_pinned && unpinned.hmacs_checked == 0);
    }

    #[test]
    fn every_tampering_is_named() {
        let good = bundle(10, &[4, 10]);
        let mut cases: Vec<(&str, Vec<String>, Option<i64>)> = Vec::new();
        let mut edited = good.clone();
        edited[5] = edited[5].replace("tenant:acme", "tenant:acmf");
        cases.push(("edited", edited, Some(3)));
        let mut dropped = good.clone();
        dropped.remove(6);
        cases.push(("missing", dropped, Some(4)));
        let mut truncated = good.clone();
        truncated.truncate(10);
        cases.push(("removed from the end", truncated, Some(8)));
        let mut garbage = good.clone();
        garbage[4] = "{not json".into();
        cases.push(("not a bundle line", garbage, Some(2)));
        let mut forged_cp = good.clone();
        forged_cp[1] = forged_cp[1].replace("\\n4\\n", "\\n5\\n");
        cases.push(("checkpoint", forged_cp, None));
        for (what, lines, seq) in cases {
            let r = verify(&lines, &pinned());
            assert!(!r.ok, "{what}: {r:?}");
            assert!(r.problem.as_deref().unwrap_or("").contains(what), "{what}: {r:?}");
            assert_eq!(r.first_bad_seq, seq, "{what}: {r:?}");
        }
    }

    #[test]
    fn a_bundle_signed_by_another_key_fails_against_the_pinned_one() {
        let mut lines = bundle(3, &[3]);
        let other = NoteSigner::from_seed(ORIGIN, &[8; 32]).unwrap();
        let r = verify(&lines, &BundleOptions { pinned_key: Some(other.verifier()), ..BundleOptions::default() });
        assert!(!r.ok && r.problem.unwrap().contains("checkpoint"));
        // An HMAC key that is not the trail's names the first record.
        let r = verify(&lines, &BundleOptions { hmac_key: Some([0; 32]), ..BundleOptions::default() });
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(1)));
        // The header cannot be something else.
        lines[0] = "[]".into();
        let text = lines.join("\n");
        assert!(matches!(verify_bundle(text.as_bytes(), &BundleOptions::default(), |_, _| {}), Err(BundleError::Header(_))));
    }

    #[test]
    fn a_supplied_checkpoint_that_disagrees_is_a_split_view() {
        let lines = bundle(6, &[6]);
        // A witness holds a checkpoint of size 6 over different records.
        let other_root = root_of(&[[1; 32]; 6]);
        let body = Checkpoint { origin: ORIGIN.into(), size: 6, root: other_root, extensions: vec![] }.body();
        let opts = BundleOptions { extra_checkpoints: vec![signer().sign(&body).unwrap()], ..pinned() };
        let r = verify(&lines, &opts);
        assert!(!r.ok && r.problem.unwrap().contains("split view"));
        // One larger than the bundle: records were cut off.
        let body = Checkpoint { origin: ORIGIN.into(), size: 9, root: other_root, extensions: vec![] }.body();
        let opts = BundleOptions { extra_checkpoints: vec![signer().sign(&body).unwrap()], ..pinned() };
        let r = verify(&lines, &opts);
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(7)));
    }

    /// Ten records; record 8 is a retention record naming `named`; records `gone` are pruned
    /// (their lines replaced by leaf hashes); checkpoints at `cps`.
    fn pruned_bundle(named: &str, gone: &[i64], cps: &[usize]) -> Vec<String> {
        let details = serde_json::json!({"n": 1});
        let ranges = crate::audit_retention::SeqRanges::parse(named).unwrap();
        let retention = serde_json::json!({
            "segment": 0, "first_seq": 1, "last_seq": 4, "category": "auth", "retention_days": 90,
            "cutoff": "2026-01-01T00:00:00.000Z", "count": ranges.count(), "pruned": ranges,
        });
        let entries =
            (1..=10)
                .map(|seq| {
                    if seq == 8 { entry(seq, "system", "audit.retention", &retention) } else { entry(seq, "auth", "auth.login", &details) }
                })
                .collect();
        let mut lines = bundle_of(entries, cps);
        for &seq in gone {
            let i = lines.iter().position(|l| l.starts_with(&format!("{{\"seq\":{seq},"))).unwrap();
            let r: BundleRecord = serde_json::from_str(&lines[i]).unwrap();
            lines[i] = serde_json::to_string(&BundlePruned { seq, pruned: true, leaf_hash: r.leaf_hash }).unwrap();
        }
        lines
    }

    #[test]
    fn records_removed_by_retention_verify_only_when_a_checkpointed_retention_record_names_them() {
        let r = verify(&pruned_bundle("2-3", &[2, 3], &[4, 10]), &pinned());
        assert!(r.ok, "{r:?}");
        assert_eq!((r.checked, r.pruned, r.hmacs_checked), (10, 2, 8));
        // Removed but not named.
        let r = verify(&pruned_bundle("2-3", &[2, 3, 5], &[10]), &pinned());
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(5)), "{r:?}");
        assert!(r.problem.unwrap().contains("no retention record names it"));
        // Named by a retention record no signed checkpoint covers (written by someone without
        // the signing key).
        let r = verify(&pruned_bundle("2-3", &[2, 3], &[6]), &pinned());
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(2)), "{r:?}");
        assert!(r.problem.unwrap().contains("no signed checkpoint"));
        // A pruned leaf hash that was altered breaks the root.
        let mut lines = pruned_bundle("2-3", &[2, 3], &[10]);
        let i = 3; // header, one checkpoint, record 1, then record 2 (pruned)
        let mut p: BundlePruned = serde_json::from_str(&lines[i]).unwrap();
        p.leaf_hash = hex::encode([9u8; 32]);
        lines[i] = serde_json::to_string(&p).unwrap();
        let r = verify(&lines, &pinned());
        assert!(!r.ok && r.problem.unwrap().contains("history rewritten"), "{lines:?}");
        // A retention record that names itself or later records is a finding at its seq.
        let r = verify(&pruned_bundle("2-3,9", &[2, 3], &[10]), &pinned());
        assert_eq!((r.ok, r.first_bad_seq), (false, Some(8)), "{r:?}");
    }
}
