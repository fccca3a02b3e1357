//! The replica's in-memory picture of its op journal: one slot per op with
//! the header it believes canonical and what its disk holds for it, plus the
//! Merkle tree over the contiguous prefix of ops whose bodies it knows.
//!
//! The tree and the durable prefix are what a replica signs in prepare_ok
//! (P4): it may only vouch for ops it holds durably and whose root it
//! computed itself, so both are tracked here, beside the slots, and cut back
//! together whenever a slot's header is replaced.

use std::collections::BTreeMap;

use vellum_audit::checkpoint::Checkpoint;
use vellum_audit::hash::Hash;
use vellum_audit::leaf::record_leaf_hashes;
use vellum_audit::merkle::MerkleTree;
use vellum_audit::record::{OpHeader, Record, RecordKind, genesis_parent};
use vellum_audit::verify::chain_head_extension;

use super::{DvcHeader, Presence};

/// What the disk holds for an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// Nothing usable: the op must be fetched from a peer.
    Missing,
    /// The disk holds a damaged record (found at restart): never treated as
    /// absent, repaired from a peer.
    Faulty,
    /// A write was issued; not yet durable.
    Writing,
    /// Fsynced.
    Durable,
}

/// One op slot.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    /// The header this replica believes canonical, if known.
    pub header: Option<OpHeader>,
    /// What the disk holds.
    pub state: SlotState,
    /// Leaf hashes of the body, until they are folded into the tree.
    leaves: Option<Vec<Hash>>,
}

impl Slot {
    fn missing(header: Option<OpHeader>) -> Slot {
        Slot {
            header,
            state: SlotState::Missing,
            leaves: None,
        }
    }

    /// Whether the replica holds the body (durable or being written).
    pub fn has_body(&self) -> bool {
        matches!(self.state, SlotState::Writing | SlotState::Durable)
    }
}

/// The journal: slots for ops `1..=op()`.
#[derive(Debug, Clone)]
pub(super) struct Journal {
    cluster: u128,
    slots: Vec<Slot>,
    tree: MerkleTree,
    /// Ops `1..=tree_op` have their leaves in `tree`.
    tree_op: u64,
    /// Ops `1..=durable_op` are all durable.
    durable_op: u64,
    /// Stream lengths after ops `1..=tree_op`.
    streams: BTreeMap<u64, u64>,
}

/// Checks that `record` is a well-formed op record of `cluster` whose body
/// matches its header; returns its leaves.
pub(super) fn check_record(record: &Record, cluster: u128) -> Option<Vec<Hash>> {
    if record.header.kind != RecordKind::Op || record.check(cluster).is_err() {
        return None;
    }
    record_leaf_hashes(record, 0).ok()
}

impl Journal {
    /// An empty journal.
    pub fn new(cluster: u128) -> Journal {
        Journal {
            cluster,
            slots: Vec::new(),
            tree: MerkleTree::new(),
            tree_op: 0,
            durable_op: 0,
            streams: BTreeMap::new(),
        }
    }

    /// The highest op with a slot.
    pub fn op(&self) -> u64 {
        self.slots.len() as u64
    }

    /// Ops `1..=tree_op()` have known bodies and leaves in the tree.
    pub fn tree_op(&self) -> u64 {
        self.tree_op
    }

    /// Ops `1..=durable_op()` are durable here.
    pub fn durable_op(&self) -> u64 {
        self.durable_op
    }

    fn index(op: u64) -> Option<usize> {
        usize::try_from(op.checked_sub(1)?).ok()
    }

    /// The slot of `op`.
    pub fn slot(&self, op: u64) -> Option<&Slot> {
        self.slots.get(Self::index(op)?)
    }

    fn slot_mut(&mut self, op: u64) -> Option<&mut Slot> {
        let index = Self::index(op)?;
        self.slots.get_mut(index)
    }

    /// The header believed canonical for `op`.
    pub fn header(&self, op: u64) -> Option<&OpHeader> {
        self.slot(op)?.header.as_ref()
    }

    /// True when `op`'s header is known and it ends its atomic group (its
    /// group-continues flag is clear), so a certificate may name it.
    pub fn is_group_end(&self, op: u64) -> bool {
        self.header(op).is_some_and(|h| !h.group_continues())
    }

    /// The highest op at or below `op` that ends its atomic group; `None`
    /// when no known op does (or `op` is 0).
    pub fn group_end_at_or_below(&self, op: u64) -> Option<u64> {
        (1..=op).rev().find(|k| self.is_group_end(*k))
    }

    /// The state of `op`'s slot (`None` beyond the journal).
    pub fn state(&self, op: u64) -> Option<SlotState> {
        Some(self.slot(op)?.state)
    }

    /// The checksum op `op + 1` must carry as its parent, if known.
    pub fn parent_for(&self, op: u64) -> Option<Hash> {
        if op == 0 {
            return Some(genesis_parent(self.cluster));
        }
        self.header(op).map(OpHeader::checksum)
    }

    /// The checksum `op`'s record must have: its own header's, or the parent
    /// named by the next op's header.
    pub fn expected_checksum(&self, op: u64) -> Option<Hash> {
        if let Some(header) = self.header(op) {
            return Some(header.checksum());
        }
        self.header(op + 1).map(|next| next.parent)
    }

    /// The stream's length after every op whose body is known.
    pub fn stream_length(&self, stream: u64) -> u64 {
        self.streams.get(&stream).copied().unwrap_or(0)
    }

    /// The tree size after `op` (0 for op 0).
    pub fn tree_size(&self, op: u64) -> Option<u64> {
        if op == 0 {
            return Some(0);
        }
        self.header(op).map(|h| h.tree_size)
    }

    /// Adds empty slots up to `op`.
    pub fn extend_to(&mut self, op: u64) {
        while self.op() < op {
            self.slots.push(Slot::missing(None));
        }
    }

    /// Drops every slot above `op`.
    pub fn shorten_to(&mut self, op: u64) {
        if op >= self.op() {
            return;
        }
        self.cut_below(op + 1);
        self.slots
            .truncate(usize::try_from(op).expect("op is below the slot count"));
    }

    /// Marks every slot above `op` as missing (its disk record was
    /// discarded), keeping the headers.
    pub fn discard_bodies_after(&mut self, op: u64) {
        self.cut_below(op + 1);
        let start = usize::try_from(op).unwrap_or(usize::MAX);
        for slot in self.slots.iter_mut().skip(start) {
            slot.state = SlotState::Missing;
            slot.leaves = None;
        }
    }

    /// Sets the canonical header of `op` (extending the journal); a slot
    /// that held another header loses its body.
    pub fn set_header(&mut self, header: OpHeader) {
        let op = header.op;
        self.extend_to(op);
        let same = self.header(op).is_some_and(|h| *h == header);
        if same {
            return;
        }
        self.cut_below(op);
        let slot = self.slot_mut(op).expect("extended to op");
        let faulty = slot.state == SlotState::Faulty;
        *slot = Slot::missing(Some(header));
        if faulty {
            slot.state = SlotState::Faulty;
        }
    }

    /// Forgets `op`'s header and body: its record turned out stale (the op
    /// above does not chain to it). It is fetched again by checksum.
    pub fn forget(&mut self, op: u64) {
        self.cut_below(op);
        if let Some(slot) = self.slot_mut(op) {
            *slot = Slot::missing(None);
        }
    }

    /// Marks a slot as holding a damaged record (restart).
    pub fn set_faulty(&mut self, op: u64, header: Option<OpHeader>) {
        self.extend_to(op);
        self.cut_below(op);
        let slot = self.slot_mut(op).expect("extended to op");
        *slot = Slot {
            header,
            state: SlotState::Faulty,
            leaves: None,
        };
    }

    /// Stores a body for `op` (its header becomes canonical): `Writing` for a
    /// write just issued, `Durable` for one found intact on disk.
    pub fn fill(&mut self, header: OpHeader, leaves: Vec<Hash>, state: SlotState) {
        assert!(matches!(state, SlotState::Writing | SlotState::Durable));
        assert_eq!(
            header.tree_size - header.global_position,
            leaves.len() as u64,
            "leaf count of op {} does not match its header",
            header.op
        );
        self.set_header(header);
        let slot = self.slot_mut(header.op).expect("set_header extended it");
        slot.state = state;
        slot.leaves = Some(leaves);
        self.advance();
    }

    /// The write of `op` with `checksum` is durable. False when the slot no
    /// longer expects that write (a stale completion).
    pub fn mark_durable(&mut self, op: u64, checksum: &Hash) -> bool {
        let Some(slot) = self.slot_mut(op) else {
            return false;
        };
        let expected = slot.state == SlotState::Writing
            && slot.header.is_some_and(|h| h.checksum() == *checksum);
        if !expected {
            return false;
        }
        slot.state = SlotState::Durable;
        self.advance();
        true
    }

    /// Folds known leaves into the tree and advances the durable prefix.
    fn advance(&mut self) {
        while let Some(slot) = self.slots.get_mut(self.tree_op as usize) {
            let Some(header) = slot.header else { break };
            let Some(leaves) = slot.leaves.take() else {
                break;
            };
            for leaf in leaves {
                self.tree.push(leaf);
            }
            assert_eq!(
                self.tree.len(),
                header.tree_size,
                "tree size after op {}",
                header.op
            );
            self.streams.insert(
                header.stream,
                header.stream_offset + u64::from(header.event_count),
            );
            self.tree_op += 1;
        }
        while self
            .slots
            .get(self.durable_op as usize)
            .is_some_and(|s| s.state == SlotState::Durable)
        {
            self.durable_op += 1;
        }
        assert!(
            self.durable_op <= self.tree_op,
            "durable ops have known bodies"
        );
    }

    /// Cuts the tree and the durable prefix to end before `op`, giving the
    /// leaves of the cut ops back to their slots.
    fn cut_below(&mut self, op: u64) {
        let keep = op.saturating_sub(1);
        self.durable_op = self.durable_op.min(keep);
        if self.tree_op <= keep {
            return;
        }
        let size = self.tree_size(keep).expect("ops in the tree have headers");
        for cut in keep + 1..=self.tree_op {
            let header = *self.header(cut).expect("ops in the tree have headers");
            let leaves = (header.global_position..header.tree_size)
                .map(|i| self.tree.leaf(i).expect("the tree holds the op's leaves"))
                .collect();
            self.slot_mut(cut).expect("in the journal").leaves = Some(leaves);
        }
        self.tree.truncate(size);
        self.tree_op = keep;
        self.streams.clear();
        for prior in 1..=keep {
            let h = self.header(prior).expect("ops in the tree have headers");
            self.streams
                .insert(h.stream, h.stream_offset + u64::from(h.event_count));
        }
    }

    /// The checkpoint after `op`, if this replica knows every body up to it.
    pub fn checkpoint(&self, op: u64, origin: &str) -> Option<Checkpoint> {
        if op == 0 || op > self.tree_op {
            return None;
        }
        let header = self.header(op)?;
        let root = self.tree.root_at(header.tree_size).ok()?;
        Some(Checkpoint {
            origin: origin.to_owned(),
            size: header.tree_size,
            root,
            extensions: vec![chain_head_extension(op, &header.checksum())],
        })
    }

    /// The newest known headers, oldest first, at most `max` of them, each
    /// with what the disk holds for it: what a replica lists in a view
    /// change (a damaged or unwritten op is listed too, so that the new
    /// primary neither forgets an op a damaged copy may still vouch for nor
    /// waits for one that a quorum positively lacks).
    pub fn presence_suffix(&self, max: usize) -> Vec<DvcHeader> {
        let mut out: Vec<DvcHeader> = self
            .slots
            .iter()
            .rev()
            .filter_map(|s| {
                let presence = match s.state {
                    SlotState::Durable => Presence::Durable,
                    SlotState::Missing => Presence::Missing,
                    SlotState::Faulty | SlotState::Writing => Presence::Unsure,
                };
                Some(DvcHeader {
                    header: s.header?,
                    presence,
                })
            })
            .take(max)
            .collect();
        out.reverse();
        out
    }

    /// The highest op whose slot is damaged and whose header is unknown (0
    /// when none): a view change cannot name it, so it nacks nothing there.
    pub fn highest_headerless_faulty(&self) -> u64 {
        self.slots
            .iter()
            .rposition(|s| s.state == SlotState::Faulty && s.header.is_none())
            .map_or(0, |index| index as u64 + 1)
    }

    /// The newest known headers, oldest first, at most `max` of them (what
    /// a primary sends in start_view and recovery_response).
    pub fn suffix(&self, max: usize) -> Vec<OpHeader> {
        let mut out: Vec<OpHeader> = self
            .slots
            .iter()
            .rev()
            .filter_map(|s| s.header)
            .take(max)
            .collect();
        out.reverse();
        out
    }
}
