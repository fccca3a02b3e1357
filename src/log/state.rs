//! In-memory state of a replica's log, rebuilt from the segments on open:
//! the Merkle tree, the op table, stream heads and the certificates (the
//! client table lives in the VSR core). The log on disk is the only source of truth; this is a cache
//! of it that is checked against it while being rebuilt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use vellum_audit::checkpoint::Certificate;
use vellum_audit::hash::Hash;
use vellum_audit::leaf::{LeafPreimage, record_leaves};
use vellum_audit::merkle::MerkleTree;
use vellum_audit::policy::Policy;
use vellum_audit::record::{self, OpHeader, Record, RecordKind, SealBody};

use super::LogError;
use crate::index::{CommitRow, EventRow, IndexBatch, KeyRow};
use crate::storage::{DamagedRecord, RecordLocation, Recovery, Storage};

/// Events per index batch sent during catch-up, at most.
pub const INDEX_BATCH_EVENTS_MAX: usize = 10_000;
/// Events of ops a certificate sends to the index at once, at most: rows a
/// full queue kept back go with later certificates in slices of this size,
/// so the commit path never builds an unbounded batch.
pub const INDEX_FEED_EVENTS_MAX: usize = 10_000;

/// What the log knows about one op.
#[derive(Debug, Clone)]
pub struct OpInfo {
    pub op: u64,
    pub view: u64,
    pub stream: u64,
    pub stream_offset: u64,
    pub global_position: u64,
    pub event_count: u32,
    pub key_id: u64,
    pub tree_size: u64,
    pub checksum: Hash,
    pub timestamp_ns: u64,
    /// The whole header, for the core's journal on restart.
    pub header: OpHeader,
    /// Where the record is on disk, once it is durable.
    pub location: Option<RecordLocation>,
}

/// A certificate the log holds, by the commit number it certifies.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub op: u64,
    pub tree_size: u64,
    pub certificate: Arc<Certificate>,
    pub time_ns: u64,
}

/// An op a replica of a cluster holds on disk at or after its first damaged
/// op: known to its core, but not yet in this state, since its leaves cannot
/// go into the tree before the damaged op's. The state takes it in when the
/// damaged ops below it are repaired (the log is then rebuilt).
#[derive(Debug, Clone)]
pub enum PendingOp {
    /// Intact on disk: its header, leaf hashes and place.
    Intact {
        header: OpHeader,
        leaves: Vec<Hash>,
        location: RecordLocation,
    },
    /// Damaged on disk, to be repaired from peers.
    Damaged(DamagedRecord),
}

/// The cache of the log.
#[derive(Debug, Default)]
pub struct LogState {
    pub tree: MerkleTree,
    /// Checksum of the last op header (the next op's `parent`).
    pub parent: Hash,
    /// The highest durable op: in one replica, durable is committed.
    pub commit: u64,
    ops: Vec<OpInfo>,
    streams: HashMap<u64, Vec<u64>>,
    pub certificates: Vec<CertInfo>,
    pub poisoned: Option<String>,
    indexed_through_op: u64,
    /// The highest certificate whose commit row was sent to the index.
    indexed_certificate_op: u64,
    indexed_keys: HashSet<u64>,
    /// key id -> (stream, timestamp of the first op that used it): the
    /// key's row in the index, derived from the log so it is the same on
    /// every rebuild.
    key_first_use: HashMap<u64, (u64, u64)>,
    /// Ops from the first damaged op on (a replica of a cluster only; empty
    /// on a whole log): the state above ends right before the first one.
    pub pending: BTreeMap<u64, PendingOp>,
    /// The client-chosen event ids of the ops above (`event_ids`).
    pub ids: super::event_ids::EventIds,
}

impl LogState {
    /// Rebuilds the state from every recovered record, checking each
    /// certificate and seal root against the tree recomputed from the leaves.
    /// Signatures are checked against the pinned policy once, when a
    /// certificate is made or received; on open only the newest
    /// certificate's are checked again (it is the one receipts and proofs
    /// hand out), so open does not re-verify years of Ed25519 signatures.
    /// An older certificate record is trusted after its checksum, its place
    /// after the op it names, its size and its root check; `vellum verify`
    /// still checks every signature of every certificate.
    pub fn recover(
        storage: &Storage,
        cluster: u128,
        policy: &Policy,
        recovery: &Recovery,
    ) -> Result<LogState, LogError> {
        let mut state = LogState {
            parent: record::genesis_parent(cluster),
            ..LogState::default()
        };
        // Records after the first damaged op wait in `pending` until it is
        // repaired: their leaves, certificates and seals cannot be placed
        // or checked before the damaged op's leaves are known.
        let first_damaged = recovery.damaged.first().map_or(u64::MAX, |d| d.op);
        // The newest certificate record seen, and where: its signatures are
        // checked once the walk is done.
        let mut newest_certificate: Option<(u64, String)> = None;
        for damaged in &recovery.damaged {
            state
                .pending
                .insert(damaged.op, PendingOp::Damaged(damaged.clone()));
        }
        for (location, header) in &recovery.records {
            let at = |what: &str| {
                format!(
                    "segment {} byte {}: {what}",
                    location.segment, location.offset
                )
            };
            if header.op >= first_damaged {
                state.recover_pending(storage, header, *location, &at)?;
                continue;
            }
            match header.kind {
                RecordKind::Op => {
                    let record = storage.read(*location)?;
                    let leaves = record_leaves(&record, location.offset)
                        .map_err(|e| LogError::Corrupt(at(&e.to_string())))?;
                    if header.global_position != state.tree.len()
                        || header.tree_size
                            != header.global_position + u64::from(header.event_count)
                    {
                        return Err(LogError::Corrupt(at("global positions are not dense")));
                    }
                    if header.stream_offset != state.stream_len(header.stream) {
                        return Err(LogError::Corrupt(at("stream offsets are not dense")));
                    }
                    for leaf in &leaves {
                        state.tree.push(leaf.leaf_hash());
                    }
                    state.push_op(header, record.checksum(), Some(*location));
                    state.commit = header.op;
                }
                RecordKind::Certificate => {
                    let record = storage.read(*location)?;
                    state
                        .recover_certificate(header, &record)
                        .map_err(|e| LogError::Corrupt(at(&e)))?;
                    if newest_certificate
                        .as_ref()
                        .is_none_or(|(op, _)| header.op >= *op)
                    {
                        newest_certificate = Some((header.op, at("certificate")));
                    }
                }
                RecordKind::Seal => {
                    let record = storage.read(*location)?;
                    let seal = SealBody::decode(&record.body, location.offset)
                        .map_err(|e| LogError::Corrupt(at(&e.to_string())))?;
                    let root = state
                        .tree
                        .root_at(header.tree_size)
                        .map_err(|e| LogError::Corrupt(at(&e.to_string())))?;
                    if root != seal.tree_root {
                        return Err(LogError::Corrupt(at(
                            "the seal's merkle root does not match the events before it",
                        )));
                    }
                }
            }
        }
        if let (Some((_, at)), Some(certificate)) = (newest_certificate, state.latest_certificate())
        {
            certificate.verify(policy).map_err(|e| {
                LogError::Corrupt(format!(
                    "{at}: certificate does not verify under the trust policy: {e}"
                ))
            })?;
        }
        Ok(state)
    }

    /// A record at or after the first damaged op: an Op is kept pending
    /// with its leaves; a Certificate or Seal is checked when the log is
    /// rebuilt after the repair.
    fn recover_pending(
        &mut self,
        storage: &Storage,
        header: &OpHeader,
        location: RecordLocation,
        at: &dyn Fn(&str) -> String,
    ) -> Result<(), LogError> {
        if header.kind != RecordKind::Op {
            return Ok(());
        }
        let record = storage.read(location)?;
        let leaves = record_leaves(&record, location.offset)
            .map_err(|e| LogError::Corrupt(at(&e.to_string())))?
            .iter()
            .map(LeafPreimage::leaf_hash)
            .collect();
        self.pending.insert(
            header.op,
            PendingOp::Intact {
                header: *header,
                leaves,
                location,
            },
        );
        Ok(())
    }

    /// The last op the disk holds, pending ones included.
    pub fn disk_last_op(&self) -> u64 {
        self.pending
            .last_key_value()
            .map_or(self.last_op(), |(op, _)| *op)
    }

    /// The damaged record of `op`, if it waits for repair.
    pub fn damaged(&self, op: u64) -> Option<&DamagedRecord> {
        match self.pending.get(&op) {
            Some(PendingOp::Damaged(damaged)) => Some(damaged),
            _ => None,
        }
    }

    /// Where an intact pending op with this checksum lies.
    pub fn pending_location(&self, op: u64, checksum: &Hash) -> Option<RecordLocation> {
        match self.pending.get(&op) {
            Some(PendingOp::Intact {
                header, location, ..
            }) if header.checksum() == *checksum => Some(*location),
            _ => None,
        }
    }

    fn recover_certificate(&mut self, header: &OpHeader, record: &Record) -> Result<(), String> {
        let time_ns = header.timestamp_ns;
        let text = std::str::from_utf8(&record.body)
            .map_err(|_| "certificate body is not utf-8".to_string())?;
        let certificate = Certificate::parse(text).map_err(|e| e.to_string())?;
        let info = self
            .op(header.op)
            .ok_or("certificate for an op that is not in the log")?;
        if info.checksum != header.parent
            || info.tree_size != header.tree_size
            || certificate.checkpoint.size != header.tree_size
        {
            return Err("certificate does not match the op it names".to_string());
        }
        let root = self
            .tree
            .root_at(header.tree_size)
            .map_err(|e| e.to_string())?;
        if root != certificate.checkpoint.root {
            return Err("certificate root does not match the events before it".to_string());
        }
        self.add_certificate(header.op, header.tree_size, Arc::new(certificate), time_ns);
        Ok(())
    }

    /// The last op number (0 for an empty log).
    pub fn last_op(&self) -> u64 {
        self.ops.len() as u64
    }

    /// The op with number `op`.
    pub fn op(&self, op: u64) -> Option<&OpInfo> {
        let index = usize::try_from(op.checked_sub(1)?).ok()?;
        self.ops.get(index)
    }

    /// Takes over what `other` (the state before a cut) already sent to
    /// the index; the cut never touches committed, hence indexed, ops.
    pub fn copy_index_progress(&mut self, other: &LogState) {
        self.indexed_through_op = other.indexed_through_op.min(self.last_op());
        self.indexed_certificate_op = other.indexed_certificate_op;
        self.indexed_keys = other.indexed_keys.clone();
    }

    /// The number of events in a stream (committed or in flight).
    pub fn stream_len(&self, stream: u64) -> u64 {
        self.streams
            .get(&stream)
            .and_then(|ops| ops.last())
            .and_then(|&op| self.op(op))
            .map_or(0, |info| info.stream_offset + u64::from(info.event_count))
    }

    /// Adds an op (submitted, or recovered with its location).
    pub fn push_op(&mut self, header: &OpHeader, checksum: Hash, location: Option<RecordLocation>) {
        assert_eq!(header.op, self.last_op() + 1, "ops are added in order");
        self.ops.push(OpInfo {
            op: header.op,
            view: header.view,
            stream: header.stream,
            stream_offset: header.stream_offset,
            global_position: header.global_position,
            event_count: header.event_count,
            key_id: header.key_id,
            tree_size: header.tree_size,
            checksum,
            timestamp_ns: header.timestamp_ns,
            header: *header,
            location,
        });
        self.parent = checksum;
        self.key_first_use
            .entry(header.key_id)
            .or_insert((header.stream, header.timestamp_ns));
        self.streams
            .entry(header.stream)
            .or_default()
            .push(header.op);
    }

    /// The ops whose events carry envelopes (`FLAG_ENVELOPES`), in order.
    pub fn enveloped_ops(&self) -> Vec<OpInfo> {
        self.ops
            .iter()
            .filter(|info| info.header.has_envelopes())
            .cloned()
            .collect()
    }

    /// Adds a certificate (kept sorted by op).
    pub fn add_certificate(
        &mut self,
        op: u64,
        tree_size: u64,
        certificate: Arc<Certificate>,
        time_ns: u64,
    ) {
        if self.certificates.last().is_some_and(|c| c.op >= op) {
            return;
        }
        self.certificates.push(CertInfo {
            op,
            tree_size,
            certificate,
            time_ns,
        });
    }

    /// The first certificate that covers `op`.
    pub fn certificate_covering(&self, op: u64) -> Option<Arc<Certificate>> {
        let index = self.certificates.partition_point(|c| c.op < op);
        self.certificates
            .get(index)
            .map(|c| Arc::clone(&c.certificate))
    }

    /// Every op header, in op order.
    pub fn headers(&self) -> impl Iterator<Item = &OpHeader> {
        self.ops.iter().map(|info| &info.header)
    }

    /// Every certificate, as (certified op, text), in log order.
    pub fn certificate_texts(&self) -> Vec<(u64, String)> {
        self.certificates
            .iter()
            .map(|c| (c.op, c.certificate.encode()))
            .collect()
    }

    /// The op after which the tree has exactly `size` leaves.
    pub fn op_with_tree_size(&self, size: u64) -> Option<OpInfo> {
        let index = self.ops.partition_point(|info| info.tree_size < size);
        self.ops
            .get(index)
            .filter(|info| info.tree_size == size)
            .cloned()
    }

    /// The newest certificate.
    pub fn latest_certificate(&self) -> Option<Arc<Certificate>> {
        self.certificates.last().map(|c| Arc::clone(&c.certificate))
    }

    /// The certificate whose tree size is exactly `size`.
    pub fn certificate_at_size(&self, size: u64) -> Option<Arc<Certificate>> {
        let index = self.certificates.partition_point(|c| c.tree_size < size);
        self.certificates
            .get(index)
            .filter(|c| c.tree_size == size)
            .map(|c| Arc::clone(&c.certificate))
    }

    /// The header timestamp of the newest op of `stream` (committed or in
    /// flight), unix nanoseconds; None for a stream without events.
    pub fn stream_last_timestamp_ns(&self, stream: u64) -> Option<u64> {
        self.streams
            .get(&stream)
            .and_then(|ops| ops.last())
            .and_then(|&op| self.op(op))
            .map(|info| info.timestamp_ns)
    }

    /// The committed, durable ops of `stream` holding offsets `[from, from + max)`.
    pub fn stream_ops_from(&self, stream: u64, from: u64, max: u64) -> Vec<OpInfo> {
        let Some(ops) = self.streams.get(&stream) else {
            return Vec::new();
        };
        let start = ops.partition_point(|&op| {
            self.op(op)
                .is_some_and(|i| i.stream_offset + u64::from(i.event_count) <= from)
        });
        let end_offset = from.saturating_add(max);
        ops[start..]
            .iter()
            .map_while(|&op| {
                self.op(op).filter(|i| {
                    i.op <= self.commit && i.location.is_some() && i.stream_offset < end_offset
                })
            })
            .cloned()
            .collect()
    }

    /// The committed, durable ops holding global positions `[from, from + max)`.
    pub fn ops_from_position(&self, from: u64, max: u64) -> Vec<OpInfo> {
        let start = self.ops.partition_point(|i| i.tree_size <= from);
        let end = from.saturating_add(max);
        self.ops[start..]
            .iter()
            .take_while(|i| i.op <= self.commit && i.location.is_some() && i.global_position < end)
            .cloned()
            .collect()
    }

    /// The op holding global position `position`, if the state has it.
    pub fn op_at_position(&self, position: u64) -> Option<&OpInfo> {
        let index = self.ops.partition_point(|i| i.tree_size <= position);
        self.ops.get(index)
    }

    /// Committed events: the tree size at the commit.
    pub fn committed_events(&self) -> u64 {
        self.op(self.commit).map_or(0, |i| i.tree_size)
    }

    /// The committed op holding `offset` of `stream`, and the event's index in it.
    pub fn locate(&self, stream: u64, offset: u64) -> Option<(&OpInfo, u64)> {
        let info = self.stream_ops_from(stream, offset, 1).into_iter().next()?;
        let info = self.op(info.op)?;
        (offset >= info.stream_offset).then_some((info, offset - info.stream_offset))
    }

    /// Reads an event's leaf preimage back from storage.
    pub fn leaf_preimage(
        &self,
        storage: &Storage,
        info: &OpInfo,
        index_in_op: u64,
    ) -> Result<LeafPreimage, LogError> {
        let location = info.location.ok_or(LogError::NotDurable { op: info.op })?;
        let record = storage.read(location)?;
        let leaves = record_leaves(&record, location.offset)
            .map_err(|e| LogError::Corrupt(e.to_string()))?;
        let index = usize::try_from(index_in_op).expect("event index within an op is small");
        leaves
            .get(index)
            .cloned()
            .ok_or_else(|| LogError::Corrupt("event index beyond the op".to_string()))
    }

    /// What the durable log backs, for [`crate::index::Index::reconcile`].
    pub fn index_backing(&self) -> crate::index::Backing {
        crate::index::Backing {
            certified_through_op: self.certificates.iter().map(|c| c.op).max().unwrap_or(0),
            events: self.tree.len(),
            key_ids: self.key_first_use.keys().copied().collect(),
        }
    }

    /// The index rows not yet sent of the ops up to `commit`, at most about
    /// `events_max` events (whole ops), with the commit rows of every
    /// certificate whose op is now sent. What stays unsent (the queue was
    /// full, or the bound cut it) goes with a later call.
    pub fn index_batch_pending(&mut self, commit: u64, events_max: usize) -> IndexBatch {
        let first = self.indexed_through_op + 1;
        let mut last = self.indexed_through_op;
        let mut events = 0usize;
        while last < commit && events < events_max {
            let Some(info) = self.op(last + 1) else { break };
            events += info.event_count as usize;
            last += 1;
        }
        let mut batch = self.index_ops(first, last);
        self.indexed_through_op = self.indexed_through_op.max(last);
        let through = self.indexed_through_op;
        let after = self.indexed_certificate_op;
        let rows: Vec<CommitRow> = self
            .certificates
            .iter()
            .filter(|c| c.op > after && c.op <= through)
            .map(|c| commit_row(self.op(c.op).map_or(0, |i| i.view), c, c.time_ns))
            .collect();
        if let Some(row) = rows.last() {
            self.indexed_certificate_op = row.op;
        }
        batch.commits.extend(rows);
        batch
    }

    /// True when ops up to `commit` are not all sent to the index.
    pub fn index_pending(&self, commit: u64) -> bool {
        self.indexed_through_op < commit
            || self
                .certificates
                .iter()
                .any(|c| c.op > self.indexed_certificate_op && c.op <= commit)
    }

    /// Everything the index lacks, in bounded batches.
    pub fn index_catch_up(
        &mut self,
        last_position: Option<u64>,
        last_commit: Option<u64>,
    ) -> Vec<IndexBatch> {
        let first_op = match last_position {
            None => 1,
            Some(position) => {
                let after = position + 1;
                self.ops
                    .partition_point(|i| i.global_position + u64::from(i.event_count) <= after)
                    as u64
                    + 1
            }
        };
        let mut batches = Vec::new();
        let mut op = first_op;
        while op <= self.commit {
            let mut last = op;
            let mut events = 0usize;
            while last <= self.commit && events < INDEX_BATCH_EVENTS_MAX {
                events += self.op(last).map_or(0, |i| i.event_count as usize);
                last += 1;
            }
            let mut batch = self.index_ops(op, last - 1);
            batch
                .events
                .retain(|e| last_position.is_none_or(|p| e.position > p));
            batches.push(batch);
            op = last;
        }
        let commits: Vec<CommitRow> = self
            .certificates
            .iter()
            .filter(|c| last_commit.is_none_or(|l| c.op > l))
            .map(|c| commit_row(self.op(c.op).map_or(0, |i| i.view), c, c.time_ns))
            .collect();
        for chunk in commits.chunks(INDEX_BATCH_EVENTS_MAX) {
            batches.push(IndexBatch {
                events: Vec::new(),
                commits: chunk.to_vec(),
                keys: Vec::new(),
                access: Vec::new(),
            });
        }
        self.indexed_through_op = self.commit;
        self.indexed_certificate_op = self.certificates.iter().map(|c| c.op).max().unwrap_or(0);
        batches
    }

    fn index_ops(&mut self, first: u64, last: u64) -> IndexBatch {
        let mut batch = IndexBatch::default();
        for op in first..=last {
            let Some(info) = self.op(op).cloned() else {
                break;
            };
            let location = info.location.unwrap_or(RecordLocation {
                segment: 0,
                offset: 0,
                len: 0,
            });
            for i in 0..u64::from(info.event_count) {
                let position = info.global_position + i;
                batch.events.push(EventRow {
                    position,
                    stream: info.stream,
                    stream_offset: info.stream_offset + i,
                    op,
                    leaf_hash: self
                        .tree
                        .leaf(position)
                        .expect("every op's leaves are in the tree"),
                    segment: location.segment,
                    file_offset: location.offset,
                });
            }
            if self.indexed_keys.insert(info.key_id) {
                let (stream, created_ns) = self.key_first_use[&info.key_id];
                batch.keys.push(KeyRow {
                    key_id: info.key_id,
                    stream,
                    created_ns,
                    rotated_ns: None,
                    shredded_ns: None,
                });
            }
        }
        batch
    }
}

fn commit_row(view: u64, cert: &CertInfo, time_ns: u64) -> CommitRow {
    CommitRow {
        op: cert.op,
        view,
        tree_size: cert.tree_size,
        root: cert.certificate.checkpoint.root,
        time_ns,
        certificate: cert.certificate.encode(),
    }
}
