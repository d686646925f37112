//! The RFC 6962 / RFC 9162 Merkle tree of a transparency log: leaf and node hashing, the
//! append-only frontier that yields the root after every append, and inclusion and consistency
//! proofs — both how to assemble them from stored nodes and how to verify them.
//!
//! Pure: no IO. A store keeps every completed node (`NodeId` → hash) as it appends; proofs are
//! assembled from those nodes in `O(log n)` lookups ([`inclusion_ranges`] /
//! [`consistency_ranges`] name the subtrees a proof needs, [`nodes_of`] the stored nodes each
//! subtree hash is computed from). Verification needs only the proof, the leaf and the roots.
//!
//! Hashes: `leaf = SHA-256(0x00 ‖ data)`, `node = SHA-256(0x01 ‖ left ‖ right)`, the root of the
//! empty tree `SHA-256("")`. Tested against the transparency-dev vectors and the `ct-merkle` crate.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Why a proof does not verify. Messages are for auditors: they say what is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("the older tree ({size1} leaves) is larger than the newer one ({size2})")]
    SizesReversed { size1: u64, size2: u64 },
    #[error("a consistency proof from the empty tree proves nothing")]
    EmptyOldTree,
    #[error("the proof has {got} hashes where {want} are needed")]
    WrongLength { got: usize, want: usize },
    #[error("a proof element is {0} bytes, not 32")]
    BadHash(usize),
    #[error("the proof leads to a different root")]
    RootMismatch,
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the tree with no leaves.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// A perfect subtree: leaves `[index << level, (index + 1) << level)`. Level 0 is a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u8,
    pub index: u64,
}

/// A half-open range of leaves `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

/// Largest power of two strictly below `n` (`n ≥ 2`): where RFC 6962 splits a tree of `n`.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves, largest first: all a
/// writer needs to keep to append and to compute the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a stored frontier; `None` if the number of hashes does not fit `size`.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Option<Self> {
        (hashes.len() == size.count_ones() as usize).then_some(Self { size, hashes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends a leaf hash; `completed` is told every node (level ≥ 1) the append completes, so
    /// a store can keep it for proofs.
    pub fn append(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, Hash)) {
        let index = self.size;
        self.hashes.push(leaf);
        // Appending leaf i completes one node per trailing one bit of i.
        for level in 1..=index.trailing_ones() {
            let (Some(right), Some(left)) = (self.hashes.pop(), self.hashes.pop()) else { break };
            let h = node_hash(&left, &right);
            completed(NodeId { level: level as u8, index: index >> level }, h);
            self.hashes.push(h);
        }
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.hashes.iter().rev();
        let Some(last) = it.next() else { return empty_root() };
        it.fold(*last, |acc, h| node_hash(h, &acc))
    }
}

/// The subtrees whose hashes make up the inclusion proof of leaf `index` in a tree of `size`,
/// in proof order (RFC 6962 §2.1.1 `PATH`).
pub fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<Span>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index, 0, size, &mut out);
    Ok(out)
}

fn path(m: u64, a: u64, b: u64, out: &mut Vec<Span>) {
    if b - a <= 1 {
        return;
    }
    let k = split(b - a);
    if m < a + k {
        path(m, a, a + k, out);
        out.push(Span { start: a + k, end: b });
    } else {
        path(m, a + k, b, out);
        out.push(Span { start: a, end: a + k });
    }
}

/// The subtrees whose hashes make up the consistency proof from `size1` to `size2`
/// (RFC 6962 §2.1.2 `PROOF`); empty when the sizes are equal or `size1` is 0.
pub fn consistency_ranges(size1: u64, size2: u64) -> Result<Vec<Span>, ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    let mut out = Vec::new();
    if size1 > 0 && size1 < size2 {
        subproof(size1, 0, size2, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: u64, a: u64, b: u64, whole: bool, out: &mut Vec<Span>) {
    if m == b {
        if !whole {
            out.push(Span { start: a, end: b });
        }
        return;
    }
    let k = split(b - a);
    if m <= a + k {
        subproof(m, a, a + k, whole, out);
        out.push(Span { start: a + k, end: b });
    } else {
        subproof(m, a + k, b, false, out);
        out.push(Span { start: a, end: a + k });
    }
}

/// The stored nodes the hash of `span` is computed from (its perfect subtrees, left to right).
pub fn nodes_of(span: Span, out: &mut Vec<NodeId>) {
    let n = span.end - span.start;
    if n == 0 {
        return;
    }
    if n.is_power_of_two() && span.start.is_multiple_of(n) {
        out.push(NodeId { level: n.trailing_zeros() as u8, index: span.start / n });
        return;
    }
    // n ≥ 2 here: a single leaf is a perfect, aligned subtree.
    let k = split(n);
    nodes_of(Span { start: span.start, end: span.start + k }, out);
    nodes_of(Span { start: span.start + k, end: span.end }, out);
}

/// The hash of `span` (RFC 6962 `MTH`) from stored nodes; `None` if a node is missing.
pub fn span_hash(span: Span, node: &impl Fn(NodeId) -> Option<Hash>) -> Option<Hash> {
    let n = span.end - span.start;
    if n == 0 {
        return Some(empty_root());
    }
    if n.is_power_of_two() && span.start.is_multiple_of(n) {
        return node(NodeId { level: n.trailing_zeros() as u8, index: span.start / n });
    }
    // n ≥ 2 here: a single leaf is a perfect, aligned subtree.
    let k = split(n);
    let left = span_hash(Span { start: span.start, end: span.start + k }, node)?;
    let right = span_hash(Span { start: span.start + k, end: span.end }, node)?;
    Some(node_hash(&left, &right))
}

fn as_hash(b: &[u8]) -> Result<Hash, ProofError> {
    b.try_into().map_err(|_| ProofError::BadHash(b.len()))
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[impl AsRef<[u8]>], root: &[u8]) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength { got: proof.len(), want });
    }
    let (mut f, mut s, mut r) = (index, size - 1, *leaf);
    for p in proof {
        let p = as_hash(p.as_ref())?;
        if f & 1 == 1 || f == s {
            r = node_hash(&p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, &p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 || r.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Number of hashes in an inclusion proof (the path's length).
/// `index < size`: the levels below the point where the leaf's path and the tree's right edge
/// part, plus one hash per left neighbour above it.
fn inclusion_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = if inner >= 64 { 0 } else { (index >> inner).count_ones() };
    (inner + border) as usize
}

/// Verifies that the tree of `size1` leaves with root `root1` is a prefix of the tree of `size2`
/// leaves with root `root2` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(size1: u64, size2: u64, proof: &[impl AsRef<[u8]>], root1: &[u8], root2: &[u8]) -> Result<(), ProofError> {
    if size1 > size2 {
        return Err(ProofError::SizesReversed { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength { got: proof.len(), want: 0 });
        }
        return if root1 == root2 { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    let want = consistency_ranges(size1, size2)?.len();
    if proof.len() != want {
        return Err(ProofError::WrongLength { got: proof.len(), want });
    }
    let root1h = as_hash(root1).map_err(|_| ProofError::RootMismatch)?;
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        path.push(root1h);
    }
    for p in proof {
        path.push(as_hash(p.as_ref())?);
    }
    let (mut f, mut s) = (size1 - 1, size2 - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let Some((first, rest)) = path.split_first() else { return Err(ProofError::WrongLength { got: 0, want: 1 }) };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::WrongLength { got: proof.len(), want });
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 || fr != root1h || sr.as_slice() != root2 {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Root of a whole list of leaf hashes, straight from the definition (for tests and offline
/// verification of a full export, where every leaf is at hand).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A store in a map: every node the frontier completes, plus the leaves.
    fn build(n: u64) -> (Frontier, HashMap<NodeId, Hash>, Vec<Hash>) {
        let mut f = Frontier::new();
        let mut nodes = HashMap::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let l = leaf_hash(format!("leaf {i}").as_bytes());
            leaves.push(l);
            nodes.insert(NodeId { level: 0, index: i }, l);
            f.append(l, |id, h| {
                nodes.insert(id, h);
            });
        }
        (f, nodes, leaves)
    }

    fn proof(spans: &[Span], nodes: &HashMap<NodeId, Hash>) -> Vec<Hash> {
        spans.iter().map(|s| span_hash(*s, &|id| nodes.get(&id).copied()).expect("node stored")).collect()
    }

    #[test]
    fn frontier_root_matches_definition_at_every_size() {
        let mut f = Frontier::new();
        let mut leaves = Vec::new();
        assert_eq!(f.root(), empty_root());
        for i in 0..200u32 {
            let l = leaf_hash(&i.to_be_bytes());
            leaves.push(l);
            f.append(l, |_, _| {});
            assert_eq!(f.root(), root_of(&leaves), "size {}", i + 1);
            assert_eq!(f.hashes().len(), (i + 1).count_ones() as usize);
        }
        let again = Frontier::from_parts(f.size(), f.hashes().to_vec()).expect("fits");
        assert_eq!(again.root(), f.root());
        assert!(Frontier::from_parts(3, vec![[0; 32]]).is_none());
    }

    #[test]
    fn proofs_from_stored_nodes_verify_and_only_for_the_right_leaf() {
        let (_, nodes, leaves) = build(67);
        for size in 1..=67u64 {
            let root = root_of(&leaves[..size as usize]);
            for index in 0..size {
                let p = proof(&inclusion_ranges(index, size).expect("in range"), &nodes);
                verify_inclusion(index, size, &leaves[index as usize], &p, &root).expect("verifies");
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(verify_inclusion(index, size, &leaves[other as usize], &p, &root).is_err());
                    assert!(verify_inclusion(other, size, &leaves[index as usize], &p, &root).is_err());
                }
            }
            for size1 in 1..=size {
                let p = proof(&consistency_ranges(size1, size).expect("ordered"), &nodes);
                let root1 = root_of(&leaves[..size1 as usize]);
                verify_consistency(size1, size, &p, &root1, &root).expect("consistent");
                if size1 < size {
                    let forked = root_of(&leaves[1..=size1 as usize]);
                    assert_eq!(verify_consistency(size1, size, &p, &forked, &root), Err(ProofError::RootMismatch));
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        assert!(matches!(inclusion_ranges(5, 5), Err(ProofError::IndexOutOfRange { .. })));
        assert!(matches!(consistency_ranges(6, 5), Err(ProofError::SizesReversed { .. })));
        let none: [Hash; 0] = [];
        assert_eq!(verify_consistency(0, 3, &none, &[], &[]), Err(ProofError::EmptyOldTree));
        assert!(verify_inclusion(0, 2, &[0; 32], &[[0u8; 31]], &[0; 32]).is_err());
        assert!(verify_inclusion(u64::MAX - 1, u64::MAX, &[0; 32], &none, &[0; 32]).is_err());
        assert!(verify_consistency(1, u64::MAX, &none, &[0; 32], &[0; 32]).is_err());
    }
}
