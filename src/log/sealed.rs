//! What sealing an op leaves in hand for its receipt: each event's leaf
//! preimage and commitment salt, kept from the seal until the caller's reply
//! so the receipt is built without reading the record back from disk and
//! decrypting it.
//!
//! The shell records the salts when it seals an op and the leaf preimages
//! when it writes it (it computes them there for the tree anyway); the
//! caller takes both with its reply ([`super::Appended::sealed`]). Each entry
//! names the checksum of the record it came from: the receipt uses it only
//! for the op the log holds under that checksum (a view change may replace
//! an uncommitted op), and otherwise reads the op as before. Entries whose
//! caller never comes (it gave up, or the op was replaced) are dropped
//! oldest first beyond [`SEALED_OPS_MAX`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vellum_audit::hash::Hash;
use vellum_audit::leaf::LeafPreimage;

/// Ops whose sealed material waits for its caller, at most.
pub const SEALED_OPS_MAX: usize = 4096;

/// One op's material for its receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedOp {
    /// The op number.
    pub op: u64,
    /// The checksum of the op record the material came from.
    pub checksum: Hash,
    /// Each event's commitment salt, in batch order.
    pub salts: Vec<[u8; 32]>,
    /// Each event's leaf preimage, in batch order.
    pub preimages: Vec<LeafPreimage>,
}

/// Sealed material by op, waiting for the callers.
#[derive(Debug, Default)]
pub struct SealedOps {
    inner: Mutex<BTreeMap<u64, SealedOp>>,
}

impl SealedOps {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, SealedOp>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps the salts of the op record `checksum` just sealed.
    pub fn put_salts(&self, op: u64, checksum: Hash, salts: Vec<[u8; 32]>) {
        let mut inner = self.lock();
        inner.insert(
            op,
            SealedOp {
                op,
                checksum,
                salts,
                preimages: Vec::new(),
            },
        );
        while inner.len() > SEALED_OPS_MAX {
            inner.pop_first();
        }
    }

    /// Adds the leaf preimages of the op record `checksum` being written,
    /// if its salts are kept (this replica sealed that same record).
    pub fn put_preimages(&self, op: u64, checksum: Hash, preimages: &[LeafPreimage]) {
        if let Some(entry) = self.lock().get_mut(&op)
            && entry.checksum == checksum
        {
            entry.preimages = preimages.to_vec();
        }
    }

    /// Takes the complete material of `op` (salts and preimages of one
    /// record), if any.
    pub fn take(&self, op: u64) -> Option<Arc<SealedOp>> {
        let entry = self.lock().remove(&op)?;
        let complete = !entry.salts.is_empty() && entry.salts.len() == entry.preimages.len();
        complete.then(|| Arc::new(entry))
    }

    /// Ops held (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(op: u64, i: u64) -> LeafPreimage {
        LeafPreimage {
            global_position: i,
            stream: 1,
            stream_offset: i,
            op,
            ciphertext_hash: [1; 32],
            commitment: [2; 32],
        }
    }

    #[test]
    fn material_is_taken_once_and_only_for_the_same_record() {
        let ops = SealedOps::default();
        ops.put_salts(1, [7; 32], vec![[3; 32]]);
        // Preimages of another record under the same op number are ignored.
        ops.put_preimages(1, [8; 32], &[leaf(1, 0)]);
        assert_eq!(ops.take(1), None, "salts without preimages are not enough");
        ops.put_salts(2, [9; 32], vec![[3; 32], [4; 32]]);
        ops.put_preimages(2, [9; 32], &[leaf(2, 0), leaf(2, 1)]);
        let taken = ops.take(2).expect("complete material");
        assert_eq!(taken.salts.len(), 2);
        assert_eq!(taken.preimages[1], leaf(2, 1));
        assert_eq!(ops.take(2), None, "taken once");
    }

    #[test]
    fn entries_beyond_the_bound_drop_oldest_first() {
        let ops = SealedOps::default();
        for op in 1..=(SEALED_OPS_MAX as u64 + 10) {
            ops.put_salts(op, [0; 32], vec![[0; 32]]);
        }
        assert_eq!(ops.len(), SEALED_OPS_MAX);
        ops.put_preimages(1, [0; 32], &[leaf(1, 0)]);
        assert_eq!(ops.take(1), None, "the oldest entry was dropped");
        let last = SEALED_OPS_MAX as u64 + 10;
        ops.put_preimages(last, [0; 32], &[leaf(last, 0)]);
        assert!(ops.take(last).is_some());
    }
}
