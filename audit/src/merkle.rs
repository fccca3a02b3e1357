//! The RFC 6962 / RFC 9162 §2.1 Merkle tree over Vellum's log: one leaf per
//! event, SHA-256, leaf prefix `0x00`, node prefix `0x01`.
//!
//! [`MerkleTree`] is the writer's append-only tree. It keeps the hash of every
//! complete, aligned subtree, so appending is O(1) amortized and every root,
//! inclusion proof and consistency proof for any past size costs O(log² n)
//! hashes at most, never O(n). [`verify_inclusion`] and
//! [`verify_consistency`] are the auditor's side, written step by step after
//! RFC 9162 §2.1.3.2 and §2.1.4.2. [`root_from_leaf_hashes`] is the plain
//! recursive MTH, kept as the oracle the tests compare against. The proof
//! walks run over any source of complete-subtree hashes (`Subtrees`), so
//! `crate::tiles` builds its proofs from tiles with the very same walk.

use crate::hash::{Hash, sha256, to_hex};

/// The longest proof any u64-sized tree can need: an inclusion proof has at
/// most 64 hashes, a consistency proof at most 65 (the extra seed hash).
/// Decoders refuse longer proofs before hashing anything.
pub const PROOF_HASHES_MAX: usize = 65;

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A leaf index at or beyond the tree size.
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// A tree size the tree has not reached.
    #[error("tree size {size} is beyond the {len} leaves of the tree")]
    SizeBeyondTree { size: u64, len: u64 },
    /// A consistency proof asked from a larger to a smaller tree.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    OldSizeAfterNew { old_size: u64, new_size: u64 },
    /// A consistency proof from the empty tree (RFC 9162 defines none).
    #[error("consistency proof from the empty tree is undefined")]
    OldSizeZero,
    /// A proof with more or fewer hashes than its sizes require.
    #[error("proof has {actual} hashes, tree sizes require {expected}")]
    WrongProofLength { expected: usize, actual: usize },
    /// The recomputed root differs from the expected root.
    #[error("computed root {computed} does not match expected root {expected}")]
    RootMismatch { expected: String, computed: String },
    /// The recomputed old root differs from the old root (consistency).
    #[error("computed old root {computed} does not match old root {expected}")]
    OldRootMismatch { expected: String, computed: String },
    /// A compact tree (`frontier`) was asked for a subtree it did not keep.
    #[error("subtree of height {height} at index {index} was not kept by the compact tree")]
    NotRetained { height: u32, index: u64 },
}

/// The RFC 6962 leaf hash: `SHA-256(0x00 || preimage)`.
pub fn leaf_hash(preimage: &[u8]) -> Hash {
    sha256(&[&[0x00], preimage])
}

/// The RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// The plain recursive MTH of RFC 9162 §2.1.1 over leaf hashes. O(n); the
/// oracle for tests and for auditors who recompute a whole tree.
pub fn root_from_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(
                &root_from_leaf_hashes(&leaves[..k]),
                &root_from_leaf_hashes(&leaves[k..]),
            )
        }
    }
}

/// The largest power of two strictly below `n` (RFC 9162's `k`), for n ≥ 2.
fn split_point(n: u64) -> u64 {
    assert!(n >= 2, "split point of a tree with {n} leaves");
    1u64 << (63 - (n - 1).leading_zeros())
}

/// An append-only RFC 6962 tree that can answer for any size it has had.
///
/// `levels[0]` holds the leaf hashes; `levels[h][i]` is the root of the
/// complete subtree over leaves `[i·2^h, (i+1)·2^h)`. Every subtree the RFC
/// recursion meets on its left side is complete and aligned, so each MTH of a
/// range is O(log n) lookups and node hashes.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hash at `index`, if the tree has it.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        let leaves = self.levels.first()?;
        leaves.get(usize::try_from(index).ok()?).copied()
    }

    /// The root of the complete subtree over leaves
    /// `[index·2^height, (index+1)·2^height)`, if the tree holds all of them
    /// (the tree stores every complete subtree, so this is one lookup).
    pub fn subtree(&self, height: u32, index: u64) -> Option<Hash> {
        let nodes = self.levels.get(usize::try_from(height).ok()?)?;
        nodes.get(usize::try_from(index).ok()?).copied()
    }

    /// Appends one leaf hash (already `leaf_hash`ed) and completes every
    /// subtree it closes. O(1) amortized.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut level = 0;
        let mut hash = leaf_hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let nodes = &self.levels[level];
            if !nodes.len().is_multiple_of(2) {
                return;
            }
            hash = node_hash(&nodes[nodes.len() - 2], &nodes[nodes.len() - 1]);
            level += 1;
        }
    }

    /// Drops every leaf at index `size` and above (a no-op when the tree is
    /// not larger), so the tree is exactly what it was at `size` leaves. The
    /// replication core needs it when a view change replaces uncommitted ops.
    pub fn truncate(&mut self, size: u64) {
        for (height, nodes) in self.levels.iter_mut().enumerate() {
            // A node of `height` is complete iff it ends at or before `size`.
            let keep = usize::try_from(size >> height).unwrap_or(usize::MAX);
            nodes.truncate(keep);
        }
        while self.levels.last().is_some_and(|nodes| nodes.is_empty()) {
            self.levels.pop();
        }
    }

    /// The root over all leaves.
    pub fn root(&self) -> Hash {
        self.root_at(self.len())
            .expect("the current length is always a size the tree has had")
    }

    /// The root the tree had when it held `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        let Ok(root) = root_of(&mut StoredSubtrees(&self.levels), size);
        Ok(root)
    }

    /// The RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of
    /// `size` leaves, from the leaf's sibling up to the root's child.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let Ok(proof) = inclusion_path(&mut StoredSubtrees(&self.levels), index, size);
        Ok(proof)
    }

    /// The RFC 9162 §2.1.4.1 consistency proof from `old_size` to `new_size`.
    /// Equal sizes give the empty proof.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new_size)?;
        check_consistency_sizes(old_size, new_size)?;
        let Ok(proof) = consistency_path(&mut StoredSubtrees(&self.levels), old_size, new_size);
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        let len = self.len();
        if size > len {
            return Err(ProofError::SizeBeyondTree { size, len });
        }
        Ok(())
    }
}

/// A source of the hashes of complete, aligned subtrees: all the RFC 9162
/// proof walks below need. The in-memory tree stores every one; a tiled log
/// (`crate::tiles`) reads them from tiles. One walk serves both, so a proof
/// from tiles cannot differ in shape from a proof from the tree.
pub(crate) trait Subtrees {
    /// Why a subtree hash could not be had.
    type Error;

    /// The root of the complete subtree over leaves
    /// `[index·2^height, (index+1)·2^height)`; the walks ask only for
    /// subtrees inside the tree size they were given.
    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, Self::Error>;

    /// MTH of leaves `[lo, hi)`, where `lo` is aligned as the RFC recursion
    /// guarantees: a multiple of the largest power of two not above `hi - lo`.
    fn range_hash(&mut self, lo: u64, hi: u64) -> Result<Hash, Self::Error> {
        assert!(hi > lo, "empty range [{lo}, {hi})");
        let n = hi - lo;
        if n.is_power_of_two() {
            let height = n.trailing_zeros();
            assert!(lo.is_multiple_of(n), "subtree [{lo}, {hi}) is not aligned");
            return self.subtree(height, lo >> height);
        }
        let k = split_point(n);
        let left = self.range_hash(lo, lo + k)?;
        let right = self.range_hash(lo + k, hi)?;
        Ok(node_hash(&left, &right))
    }
}

/// The subtrees [`MerkleTree`] stores: every complete one below its length.
struct StoredSubtrees<'a>(&'a [Vec<Hash>]);

impl Subtrees for StoredSubtrees<'_> {
    type Error = std::convert::Infallible;

    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, Self::Error> {
        let hash = usize::try_from(index)
            .ok()
            .and_then(|index| self.0.get(height as usize)?.get(index))
            .expect("callers check the size: every complete subtree below it is stored");
        Ok(*hash)
    }
}

/// The root of the tree of `size` leaves (the empty root for 0).
pub(crate) fn root_of<S: Subtrees>(tree: &mut S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    tree.range_hash(0, size)
}

/// The RFC 9162 §2.1.3.1 walk for `index < size` (the caller checks):
/// siblings collected root-first, returned leaf-first.
pub(crate) fn inclusion_path<S: Subtrees>(
    tree: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    assert!(
        index < size,
        "inclusion of leaf {index} in a tree of {size}"
    );
    let mut proof = Vec::new();
    let (mut lo, mut hi, mut m) = (0u64, size, index);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if m < k {
            proof.push(tree.range_hash(lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(tree.range_hash(lo, lo + k)?);
            lo += k;
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The RFC 9162 §2.1.4.1 SUBPROOF walk, unrolled, for sizes that passed
/// `check_consistency_sizes`; siblings collected root-first.
pub(crate) fn consistency_path<S: Subtrees>(
    tree: &mut S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, S::Error> {
    assert!(
        0 < old_size && old_size <= new_size,
        "consistency from {old_size} to {new_size}"
    );
    let mut proof = Vec::new();
    let (mut lo, mut hi, mut m, mut whole) = (0u64, new_size, old_size, true);
    while m != hi - lo {
        let k = split_point(hi - lo);
        if m <= k {
            proof.push(tree.range_hash(lo + k, hi)?);
            hi = lo + k;
        } else {
            proof.push(tree.range_hash(lo, lo + k)?);
            lo += k;
            m -= k;
            whole = false;
        }
    }
    if !whole {
        proof.push(tree.range_hash(lo, hi)?);
    }
    proof.reverse();
    Ok(proof)
}

pub(crate) fn check_consistency_sizes(old_size: u64, new_size: u64) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeAfterNew { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::OldSizeZero);
    }
    Ok(())
}

/// The number of hashes in an inclusion proof of `index` in a tree of `size`.
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    let border = (index >> inner).count_ones();
    (inner + border) as usize
}

/// The number of hashes in a consistency proof, for `0 < old < new`.
fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    let level = old_size.trailing_zeros();
    let index = (old_size - 1) >> level;
    let seed = usize::from(!old_size.is_power_of_two());
    seed + inclusion_proof_len(index, ((new_size - 1) >> level) + 1)
}

/// Verifies an inclusion proof per RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf_hash;
    let wrong_length = ProofError::WrongProofLength {
        expected,
        actual: proof.len(),
    };
    for p in proof {
        if sn == 0 {
            return Err(wrong_length);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(wrong_length);
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            expected: to_hex(root),
            computed: to_hex(&r),
        });
    }
    Ok(())
}

/// Verifies a consistency proof per RFC 9162 §2.1.4.2. Equal sizes need an
/// empty proof and equal roots; a zero or shrinking old size is an error.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    check_consistency_sizes(old_size, new_size)?;
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        if old_root != new_root {
            let (expected, computed) = (to_hex(new_root), to_hex(old_root));
            return Err(ProofError::RootMismatch { expected, computed });
        }
        return Ok(());
    }
    let expected = consistency_proof_len(old_size, new_size);
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let (fr, sr) = consistency_roots(old_size, new_size, old_root, proof).ok_or(
        ProofError::WrongProofLength {
            expected,
            actual: proof.len(),
        },
    )?;
    if fr != *old_root {
        let (expected, computed) = (to_hex(old_root), to_hex(&fr));
        return Err(ProofError::OldRootMismatch { expected, computed });
    }
    if sr != *new_root {
        let (expected, computed) = (to_hex(new_root), to_hex(&sr));
        return Err(ProofError::RootMismatch { expected, computed });
    }
    Ok(())
}

/// Steps 2–6 of RFC 9162 §2.1.4.2 on a proof of checked length: the old and
/// new roots the proof implies, or `None` if the path does not fit the sizes.
fn consistency_roots(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    proof: &[Hash],
) -> Option<(Hash, Hash)> {
    let seeded = old_size.is_power_of_two();
    let path: Vec<&Hash> = seeded
        .then_some(old_root)
        .into_iter()
        .chain(proof)
        .collect();
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (**path.first()?, **path.first()?);
    for c in &path[1..] {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some((fr, sr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Goal: a truncated tree has exactly the roots and proofs of the tree
    /// built from the kept leaves, and keeps growing correctly.
    #[test]
    fn truncate_matches_a_tree_of_the_kept_leaves() {
        let leaves: Vec<Hash> = (0u8..37).map(|i| leaf_hash(&[i])).collect();
        for size in [0u64, 1, 2, 3, 8, 13, 32, 36, 37, 40] {
            let mut tree = MerkleTree::new();
            leaves.iter().for_each(|l| tree.push(*l));
            tree.truncate(size);
            let kept = usize::try_from(size).expect("small").min(leaves.len());
            let mut fresh = MerkleTree::new();
            leaves[..kept].iter().for_each(|l| fresh.push(*l));
            assert_eq!(tree.len(), fresh.len(), "size {size}");
            assert_eq!(tree.root(), fresh.root(), "size {size}");
            tree.push(leaves[0]);
            fresh.push(leaves[0]);
            assert_eq!(tree.root(), fresh.root(), "regrown from {size}");
            assert_eq!(tree.levels, fresh.levels, "levels from {size}");
        }
    }

    // The RFC 6962 reference test data, from transparency-dev/merkle
    // (testonly/constants.go and proof/verify_test.go), itself taken from the
    // certificate-transparency reference implementation's merkle tree tests.
    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf index, tree size, proof) from proof/verify_test.go, whose leaf
    /// numbers are 1-based; converted to 0-based indices here.
    const INCLUSION: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    /// (old size, new size, proof) from proof/verify_test.go.
    const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test vectors are hex"))
            .collect()
    }

    fn hash(s: &str) -> Hash {
        unhex(s)
            .try_into()
            .expect("test vector hashes are 32 bytes")
    }

    fn hashes(list: &[&str]) -> Vec<Hash> {
        list.iter().map(|s| hash(s)).collect()
    }

    /// The height of a tree of `size` leaves.
    fn height(size: u64) -> u32 {
        64 - (size - 1).leading_zeros()
    }

    fn reference_tree() -> MerkleTree {
        let mut tree = MerkleTree::new();
        for input in LEAF_INPUTS {
            tree.push(leaf_hash(&unhex(input)));
        }
        tree
    }

    fn tree_of(size: u64) -> (MerkleTree, Vec<Hash>) {
        let mut tree = MerkleTree::new();
        let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        for leaf in &leaves {
            tree.push(*leaf);
        }
        (tree, leaves)
    }

    /// Goal: roots of the reference tree match the published RFC 6962 roots
    /// at every size, through both the tree and the oracle.
    #[test]
    fn reference_roots_match_published_vectors() {
        let tree = reference_tree();
        assert_eq!(
            to_hex(&empty_root()),
            to_hex(&tree.root_at(0).expect("size 0"))
        );
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let leaves: Vec<Hash> = (0..8).map(|i| tree.leaf(i).expect("leaf")).collect();
        for (size, root) in (1..=8u64).zip(ROOTS) {
            assert_eq!(
                to_hex(&tree.root_at(size).expect("size")),
                root,
                "size {size}"
            );
            assert_eq!(
                to_hex(&root_from_leaf_hashes(&leaves[..size as usize])),
                root
            );
        }
        assert_eq!(to_hex(&tree.root()), ROOTS[7]);
    }

    /// Goal: the tree produces exactly the published inclusion proofs, and
    /// they verify against the published roots.
    #[test]
    fn reference_inclusion_proofs_match_and_verify() {
        let tree = reference_tree();
        for (index, size, proof) in INCLUSION {
            let expected = hashes(proof);
            assert_eq!(tree.inclusion_proof(index, size).expect("proof"), expected);
            let leaf = leaf_hash(&unhex(LEAF_INPUTS[index as usize]));
            let root = hash(ROOTS[size as usize - 1]);
            verify_inclusion(&leaf, index, size, &expected, &root).expect("published proof");
        }
    }

    /// Goal: the tree produces exactly the published consistency proofs, and
    /// they verify against the published roots.
    #[test]
    fn reference_consistency_proofs_match_and_verify() {
        let tree = reference_tree();
        for (old, new, proof) in CONSISTENCY {
            let expected = hashes(proof);
            assert_eq!(tree.consistency_proof(old, new).expect("proof"), expected);
            let old_root = hash(ROOTS[old as usize - 1]);
            let new_root = hash(ROOTS[new as usize - 1]);
            verify_consistency(old, new, &old_root, &new_root, &expected).expect("published");
        }
    }

    /// Goal: bad arguments are typed errors, never panics.
    #[test]
    fn bad_arguments_are_errors() {
        let (tree, _) = tree_of(5);
        assert_eq!(
            tree.root_at(6),
            Err(ProofError::SizeBeyondTree { size: 6, len: 5 })
        );
        assert_eq!(
            tree.inclusion_proof(5, 5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert!(matches!(
            tree.inclusion_proof(0, 6),
            Err(ProofError::SizeBeyondTree { .. })
        ));
        assert_eq!(tree.consistency_proof(0, 3), Err(ProofError::OldSizeZero));
        assert!(matches!(
            tree.consistency_proof(4, 3),
            Err(ProofError::OldSizeAfterNew { .. })
        ));
        assert!(matches!(
            tree.consistency_proof(1, 9),
            Err(ProofError::SizeBeyondTree { .. })
        ));
        let root = tree.root();
        assert!(matches!(
            verify_inclusion(&root, 0, 0, &[], &root),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert_eq!(
            verify_consistency(0, 5, &root, &root, &[]),
            Err(ProofError::OldSizeZero)
        );
        assert!(verify_consistency(5, 5, &root, &root, &[]).is_ok());
        assert!(verify_consistency(5, 5, &root, &root, &[root]).is_err());
        assert_eq!(tree.leaf(5), None);
        assert!(MerkleTree::new().is_empty());
    }

    /// Goal: a 100k-leaf tree answers proofs for past sizes (without
    /// rehashing the tree) that verify, within PROOF_HASHES_MAX hashes.
    #[test]
    fn large_tree_answers_past_sizes() {
        let (tree, _) = tree_of(100_003);
        let proof = tree.inclusion_proof(77_777, 99_999).expect("proof");
        let root = tree.root_at(99_999).expect("root");
        verify_inclusion(
            &tree.leaf(77_777).expect("leaf"),
            77_777,
            99_999,
            &proof,
            &root,
        )
        .expect("verifies");
        let consistency = tree.consistency_proof(12_345, 100_003).expect("proof");
        verify_consistency(
            12_345,
            100_003,
            &tree.root_at(12_345).expect("root"),
            &tree.root(),
            &consistency,
        )
        .expect("verifies");
        assert!(proof.len() <= PROOF_HASHES_MAX && consistency.len() <= PROOF_HASHES_MAX);
    }

    proptest! {
        /// Goal: for any size, every inclusion proof verifies against
        /// root_at(size), which equals the oracle root.
        #[test]
        fn inclusion_proofs_verify(total in 1u64..300, size_seed in any::<u64>()) {
            let (tree, leaves) = tree_of(total);
            let size = 1 + size_seed % total;
            let root = tree.root_at(size).expect("size within tree");
            prop_assert_eq!(root, root_from_leaf_hashes(&leaves[..size as usize]));
            for index in 0..size {
                let proof = tree.inclusion_proof(index, size).expect("index within size");
                prop_assert_eq!(proof.len(), inclusion_proof_len(index, size));
                prop_assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &root).is_ok());
            }
        }

        /// Goal: consistency proofs verify for any old ≤ new.
        #[test]
        fn consistency_proofs_verify(total in 1u64..300, a in any::<u64>(), b in any::<u64>()) {
            let (tree, leaves) = tree_of(total);
            let new = 1 + a % total;
            let old = 1 + b % new;
            let proof = tree.consistency_proof(old, new).expect("sizes within tree");
            let old_root = root_from_leaf_hashes(&leaves[..old as usize]);
            let new_root = root_from_leaf_hashes(&leaves[..new as usize]);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());
        }

        /// Goal: any altered hash, index or size makes an inclusion proof fail.
        #[test]
        fn altered_inclusion_fails(size in 2u64..300, i in any::<u64>(), pick in any::<usize>(), bit in 0u8..8, other in any::<u64>()) {
            let (tree, leaves) = tree_of(size);
            let index = i % size;
            let root = tree.root();
            let proof = tree.inclusion_proof(index, size).expect("proof");
            let leaf = leaves[index as usize];
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let at = pick % bad.len();
                bad[at][pick % 32] ^= 1 << bit;
                prop_assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
                prop_assert!(verify_inclusion(&leaf, index, size, &proof[1..], &root).is_err());
            }
            let mut bad_leaf = leaf;
            bad_leaf[pick % 32] ^= 1 << bit;
            prop_assert!(verify_inclusion(&bad_leaf, index, size, &proof, &root).is_err());
            let mut bad_root = root;
            bad_root[pick % 32] ^= 1 << bit;
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &bad_root).is_err());
            let other_index = other % size;
            if other_index != index {
                prop_assert!(verify_inclusion(&leaf, other_index, size, &proof, &root).is_err());
            }
            // RFC 6962 paths bind the tree height, not the exact size (the
            // checkpoint signature binds the size): sizes of another height fail.
            let other_size = 1 + other % 600;
            if height(other_size) != height(size) {
                prop_assert!(verify_inclusion(&leaf, index, other_size, &proof, &root).is_err());
            }
            let mut longer = proof.clone();
            longer.push(root);
            prop_assert!(verify_inclusion(&leaf, index, size, &longer, &root).is_err());
        }

        /// Goal: any altered hash or size makes a consistency proof fail.
        #[test]
        fn altered_consistency_fails(new in 2u64..300, o in any::<u64>(), pick in any::<usize>(), bit in 0u8..8, other in any::<u64>()) {
            let (tree, _) = tree_of(new);
            let old = 1 + o % (new - 1);
            let proof = tree.consistency_proof(old, new).expect("proof");
            let old_root = tree.root_at(old).expect("old root");
            let new_root = tree.root();
            let mut bad = proof.clone();
            let at = pick % bad.len();
            bad[at][pick % 32] ^= 1 << bit;
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            let mut bad_old = old_root;
            bad_old[pick % 32] ^= 1 << bit;
            prop_assert!(verify_consistency(old, new, &bad_old, &new_root, &proof).is_err());
            let mut bad_new = new_root;
            bad_new[pick % 32] ^= 1 << bit;
            prop_assert!(verify_consistency(old, new, &old_root, &bad_new, &proof).is_err());
            let other_old = 1 + other % new;
            if other_old != old {
                prop_assert!(verify_consistency(other_old, new, &old_root, &new_root, &proof).is_err());
            }
            let other_new = old + other % 600;
            if height(other_new) != height(new) {
                prop_assert!(verify_consistency(old, other_new, &old_root, &new_root, &proof).is_err());
            }
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof[1..]).is_err());
        }
    }
}
