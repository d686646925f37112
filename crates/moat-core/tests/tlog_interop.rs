//! The audit log's Merkle tree and checkpoints against implementations we did not write:
//! the transparency-dev RFC 6962 proof vectors (Go reference of Tessera and Sigstore), the
//! `ct-merkle` crate, and the `signed_note` crate (Cloudflare's port of Go's `sumdb/note`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use moat_core::checkpoint::{Checkpoint, NoteSigner, NoteVerifier};
use moat_core::tlog::{self, Frontier, Hash, NodeId, Span};
use serde::Deserialize;
use sha2::Sha256;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

fn vectors(kind: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testvectors/rfc6962-merkle/testdata").join(kind);
    let mut out = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("vector dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let v = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
                out.push((p, v));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    v.as_str().map(|s| STANDARD.decode(s).expect("base64")).unwrap_or_default()
}

fn proof(v: &serde_json::Value) -> Vec<Vec<u8>> {
    v.as_array().map(|a| a.iter().map(b64).collect()).unwrap_or_default()
}

#[derive(Deserialize)]
struct Common {
    desc: String,
    #[serde(rename = "wantErr")]
    want_err: bool,
}

#[test]
fn transparency_dev_inclusion_vectors() {
    let cases = vectors("inclusion");
    assert!(cases.len() > 50, "vectors present: {}", cases.len());
    let (mut ok, mut rejected) = (0, 0);
    for (path, v) in cases {
        let c: Common = serde_json::from_value(v.clone()).expect("case");
        let leaf = b64(&v["leafHash"]);
        let got = match <Hash>::try_from(leaf.as_slice()) {
            Ok(leaf) => tlog::verify_inclusion(
                v["leafIdx"].as_u64().expect("idx"),
                v["treeSize"].as_u64().expect("size"),
                &leaf,
                &proof(&v["proof"]),
                &b64(&v["root"]),
            ),
            Err(_) => Err(tlog::ProofError::BadHash(leaf.len())),
        };
        assert_eq!(got.is_err(), c.want_err, "{} ({}): {got:?}", path.display(), c.desc);
        if c.want_err { rejected += 1 } else { ok += 1 }
    }
    assert!(ok > 5 && rejected > 50, "accepted {ok}, rejected {rejected}");
}

#[test]
fn transparency_dev_consistency_vectors() {
    let cases = vectors("consistency");
    assert!(cases.len() > 50, "vectors present: {}", cases.len());
    let (mut ok, mut rejected) = (0, 0);
    for (path, v) in cases {
        let c: Common = serde_json::from_value(v.clone()).expect("case");
        let got = tlog::verify_consistency(
            v["size1"].as_u64().expect("size1"),
            v["size2"].as_u64().expect("size2"),
            &proof(&v["proof"]),
            &b64(&v["root1"]),
            &b64(&v["root2"]),
        );
        assert_eq!(got.is_err(), c.want_err, "{} ({}): {got:?}", path.display(), c.desc);
        if c.want_err { rejected += 1 } else { ok += 1 }
    }
    assert!(ok > 5 && rejected > 50, "accepted {ok}, rejected {rejected}");
}

/// A small deterministic generator (no rand dependency): xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn roots_and_proofs_equal_ct_merkle_over_random_trees() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..40 {
        let n = 1 + rng.below(700);
        let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
        let mut ours = Frontier::new();
        let mut nodes: HashMap<NodeId, Hash> = HashMap::new();
        let mut roots = Vec::new();
        for i in 0..n {
            let len = rng.below(64) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let leaf = tlog::leaf_hash(&data);
            nodes.insert(NodeId { level: 0, index: i }, leaf);
            ours.append(leaf, |id, h| {
                nodes.insert(id, h);
            });
            theirs.push(data);
            assert_eq!(ours.root().as_slice(), theirs.root().as_bytes().as_slice(), "root at size {}", i + 1);
            roots.push(ours.root());
        }
        let get = |id: NodeId| nodes.get(&id).copied();
        let assemble = |spans: Vec<Span>| -> Vec<u8> { spans.into_iter().flat_map(|s| tlog::span_hash(s, &get).expect("node")).collect() };
        for _ in 0..20 {
            let idx = rng.below(n);
            let ours_p = assemble(tlog::inclusion_ranges(idx, n).expect("range"));
            assert_eq!(ours_p, theirs.prove_inclusion(idx as usize).as_bytes(), "inclusion of {idx} in {n}");
            let old = 1 + rng.below(n);
            if old < n {
                let ours_c = assemble(tlog::consistency_ranges(old, n).expect("range"));
                assert_eq!(ours_c, theirs.prove_consistency((n - old) as usize).as_bytes(), "consistency {old} → {n}");
                let hashes: Vec<&[u8]> = ours_c.chunks(32).collect();
                tlog::verify_consistency(old, n, &hashes, &roots[old as usize - 1], &roots[n as usize - 1]).expect("consistent");
            }
        }
    }
}

#[test]
fn our_checkpoints_verify_with_signed_note() {
    let seed = [3u8; 32];
    let ours = NoteSigner::from_seed("moat.example/audit/0192f0c4-5b7e-7cc1-9d1e-3f0a8b2c4d5e", &seed).expect("signer");
    let cp = Checkpoint { origin: ours.name().to_owned(), size: 1042, root: [0x5a; 32], extensions: vec![] };
    let note = ours.sign(&cp.body()).expect("sign");

    let v = StandardVerifier::new(&ours.verifier().encode()).expect("their parser accepts our verifier key");
    let parsed = Note::from_bytes(note.as_bytes()).expect("their parser accepts our note");
    let list = VerifierList::new(vec![Box::new(v)]);
    let (verified, _) = parsed.verify(&list).expect("their verifier accepts our signature");
    assert_eq!(verified.len(), 1);
    assert_eq!(Checkpoint::parse_body(std::str::from_utf8(parsed.text()).expect("utf8")).expect("body"), cp);

    // And a tampered note fails with them too.
    let forged = note.replacen("\n1042\n", "\n1043\n", 1);
    let parsed = Note::from_bytes(forged.as_bytes()).expect("parses");
    let v = StandardVerifier::new(&ours.verifier().encode()).expect("vkey");
    assert!(parsed.verify(&VerifierList::new(vec![Box::new(v)])).is_err());
}

#[test]
fn their_notes_verify_with_ours() {
    let name = "witness.example/w1";
    let seed = [4u8; 32];
    let ours = NoteSigner::from_seed(name, &seed).expect("signer");
    let vkey = ours.verifier().encode();
    // Their private-key encoding of the same seed: PRIVATE+KEY+name+id+base64(0x01 ‖ seed).
    let id = vkey.split('+').nth(1).expect("id");
    let mut k = vec![1u8];
    k.extend_from_slice(&seed);
    let skey = format!("PRIVATE+KEY+{name}+{id}+{}", STANDARD.encode(k));
    let theirs = StandardSigner::new(&skey).expect("their signer");
    let body = format!("{name}\n7\n{}\n", STANDARD.encode([1u8; 32]));
    let mut n = Note::new(body.as_bytes(), &[]).expect("note");
    n.add_sigs(&[&theirs]).expect("sign");
    let text = String::from_utf8(n.to_bytes()).expect("utf8");
    assert_eq!(text, ours.sign(&body).expect("sign"), "Ed25519 is deterministic: identical notes");
    let opened = NoteVerifier::parse(&vkey).expect("vkey").open(&text).expect("ours verifies theirs");
    assert_eq!(Checkpoint::parse_body(opened).expect("body").size, 7);
}
