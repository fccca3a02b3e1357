//! The Merkle tree as its compact frontier, for verification in bounded
//! memory.
//!
//! A full [`MerkleTree`](crate::merkle::MerkleTree) keeps every leaf and
//! every complete subtree (about 64 bytes per event). A verifier that reads
//! the log once, front to back, needs far less: the root of the tree at
//! its current size is a fold of the complete subtrees on its right edge
//! (one per set bit of the size, at most 64 hashes), and a consistency
//! proof from one earlier size `m` needs only the frontier at `m`, the
//! frontier at the newer size and the complete subtrees beside the path of
//! leaf `m`, which [`PathNodes`] keeps as they complete (at most two per
//! height). Memory is independent of the number of leaves.

use std::collections::BTreeMap;

use crate::hash::Hash;
use crate::merkle::{self, ProofError, Subtrees, node_hash};

/// The complete subtrees on the right edge of a tree of `len` leaves: one
/// per set bit of `len`, highest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    len: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the tree has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one leaf hash. `completed` sees the leaf (height 0) and
    /// every subtree it completes, as `(height, index, hash)`.
    pub fn push_with(&mut self, leaf_hash: Hash, mut completed: impl FnMut(u32, u64, &Hash)) {
        let mut hash = leaf_hash;
        let mut height = 0u32;
        completed(0, self.len, &hash);
        while self.len >> height & 1 == 1 {
            let left = self.nodes.pop().expect("a set bit of len has its node");
            hash = node_hash(&left, &hash);
            height += 1;
            completed(height, ((self.len + 1) >> height) - 1, &hash);
        }
        self.nodes.push(hash);
        self.len += 1;
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf_hash: Hash) {
        self.push_with(leaf_hash, |_, _, _| {});
    }

    /// The RFC 6962 root (the empty root for no leaves).
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return merkle::empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// A frontier from its nodes, highest first (as [`Frontier::nodes`]
    /// gives them): exactly one per set bit of `len`. The nodes come from
    /// wherever the caller kept them (an earlier report); only a check of
    /// [`Frontier::root`] against a signed root makes them trustworthy.
    pub fn from_nodes(len: u64, nodes: Vec<Hash>) -> Result<Frontier, FrontierError> {
        let expected = len.count_ones() as usize;
        if nodes.len() != expected {
            return Err(FrontierError::NodeCount {
                len,
                expected,
                found: nodes.len(),
            });
        }
        Ok(Frontier { len, nodes })
    }

    /// The frontier of a tree of `len` leaves from any source of its
    /// complete subtrees (`None` when the source lacks one).
    pub fn from_subtrees(
        len: u64,
        mut subtree: impl FnMut(u32, u64) -> Option<Hash>,
    ) -> Option<Frontier> {
        let nodes = (0..64u32)
            .rev()
            .filter(|h| len >> h & 1 == 1)
            .map(|h| subtree(h, (len >> h) - 1))
            .collect::<Option<Vec<Hash>>>()?;
        Some(Frontier { len, nodes })
    }

    /// The nodes, highest first: the complete subtree of each set bit of
    /// the size.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The complete subtrees of the frontier as `(height, index, hash)`.
    fn subtrees(&self) -> impl Iterator<Item = (u32, u64, Hash)> + '_ {
        let heights = (0..64u32).rev().filter(move |h| self.len >> h & 1 == 1);
        heights
            .zip(self.nodes.iter())
            .map(move |(h, hash)| (h, (self.len >> h) - 1, *hash))
    }
}

/// Why kept frontier nodes do not make a frontier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    /// A frontier of `len` leaves has one node per set bit of `len`.
    #[error("a frontier of {len} leaves has {expected} nodes, found {found}")]
    NodeCount {
        len: u64,
        expected: usize,
        found: usize,
    },
}

/// The complete subtrees beside the path of leaf `size` (the first leaf
/// after a kept tree of `size` leaves): with the frontiers at `size` and at
/// a newer size they answer the consistency proof between the two.
#[derive(Debug, Clone)]
pub struct PathNodes {
    size: u64,
    nodes: BTreeMap<(u32, u64), Hash>,
}

impl PathNodes {
    /// Keeps the nodes a consistency proof from `size` will need.
    pub fn new(size: u64) -> PathNodes {
        PathNodes {
            size,
            nodes: BTreeMap::new(),
        }
    }

    /// Offers a completed subtree; keeps it if it is beside the path (at
    /// most two per height, so at most 128 in all).
    pub fn offer(&mut self, height: u32, index: u64, hash: &Hash) {
        let on_path = self.size >> height;
        if index == on_path || Some(index) == on_path.checked_add(1) {
            self.nodes.insert((height, index), *hash);
        }
    }

    /// The number of nodes kept.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Subtrees from a few frontiers and path nodes; a subtree none of them
/// holds is an error (the caller asked for a proof it did not prepare).
struct Sparse(BTreeMap<(u32, u64), Hash>);

impl Subtrees for Sparse {
    type Error = ProofError;

    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, ProofError> {
        self.0
            .get(&(height, index))
            .copied()
            .ok_or(ProofError::NotRetained { height, index })
    }
}

/// The RFC 9162 consistency proof from `old` to `new` (frontiers of the
/// same log, `old` no larger), with `path` the nodes kept beside leaf
/// `old.len()` while the log grew from one to the other.
pub fn consistency_proof(
    old: &Frontier,
    new: &Frontier,
    path: &PathNodes,
) -> Result<Vec<Hash>, ProofError> {
    merkle::check_consistency_sizes(old.len(), new.len())?;
    let mut nodes = path.nodes.clone();
    for (height, index, hash) in old.subtrees().chain(new.subtrees()) {
        nodes.insert((height, index), hash);
    }
    merkle::consistency_path(&mut Sparse(nodes), old.len(), new.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MerkleTree, leaf_hash};
    use proptest::prelude::*;

    fn leaf(i: u64) -> Hash {
        leaf_hash(&i.to_le_bytes())
    }

    /// Goal: the frontier's root equals the full tree's root at every size.
    #[test]
    fn frontier_root_equals_tree_root() {
        let mut tree = MerkleTree::new();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), tree.root());
        for i in 0..300 {
            tree.push(leaf(i));
            frontier.push(leaf(i));
            assert_eq!(frontier.root(), tree.root(), "size {}", i + 1);
            assert_eq!(frontier.len(), tree.len());
            assert!(frontier.nodes.len() <= 64);
        }
    }

    /// Goal: completed subtrees are reported with the tree's own (height, index).
    #[test]
    fn completed_subtrees_are_the_trees() {
        let mut tree = MerkleTree::new();
        let mut frontier = Frontier::new();
        for i in 0..70 {
            tree.push(leaf(i));
            let mut seen = Vec::new();
            frontier.push_with(leaf(i), |h, index, hash| seen.push((h, index, *hash)));
            for (h, index, hash) in seen {
                assert_eq!(tree.subtree(h, index), Some(hash), "h {h} index {index}");
            }
        }
    }

    /// Goal: a frontier rebuilt from its nodes, or from the full tree's
    /// subtrees, is the same frontier; a wrong node count is refused.
    #[test]
    fn frontier_round_trips_through_its_nodes() {
        let mut tree = MerkleTree::new();
        let mut frontier = Frontier::new();
        for i in 0..130 {
            tree.push(leaf(i));
            frontier.push(leaf(i));
            let len = frontier.len();
            let again = Frontier::from_nodes(len, frontier.nodes().to_vec()).expect("nodes");
            assert_eq!(again, frontier);
            let from_tree = Frontier::from_subtrees(len, |h, index| tree.subtree(h, index));
            assert_eq!(from_tree.as_ref(), Some(&frontier), "size {len}");
            let mut short = frontier.nodes().to_vec();
            short.pop();
            assert!(Frontier::from_nodes(len, short).is_err());
        }
    }

    proptest! {
        /// Goal: a consistency proof from kept frontiers and path nodes equals
        /// the full tree's proof for any sizes 0 < m <= n.
        #[test]
        fn sparse_consistency_equals_tree(m in 1u64..600, extra in 0u64..600) {
            let n = m + extra;
            let mut tree = MerkleTree::new();
            let mut frontier = Frontier::new();
            let mut path = PathNodes::new(m);
            let mut at_m = None;
            for i in 0..n {
                tree.push(leaf(i));
                frontier.push_with(leaf(i), |h, index, hash| path.offer(h, index, hash));
                if frontier.len() == m {
                    at_m = Some(frontier.clone());
                }
            }
            let at_m = at_m.expect("m <= n");
            prop_assert!(path.len() <= 128);
            let proof = consistency_proof(&at_m, &frontier, &path).expect("proof");
            prop_assert_eq!(proof, tree.consistency_proof(m, n).expect("tree proof"));
            prop_assert_eq!(at_m.root(), tree.root_at(m).expect("root"));
        }
    }
}
