//! The cluster side of the replica shell: what a replica of 2f+1 does that
//! a cluster of one never needs. It sends the core's messages through an
//! [`Outbox`] (the network, `crate::net`), feeds it ticks and peers'
//! messages, reads records back for repair, sees writes through to
//! `WriteDone` on the replica loop (no caller waits for them), holds
//! writes that arrive ahead of a gap until the gap is filled (segments are
//! append-only and chained), and cuts uncommitted ops a view change
//! replaced (`storage::cut_after_op`).
//!
//! Data keys: a new stream's key travels beside its prepare, wrapped by the
//! KEK (`Prepare.key`). The shell attaches the key file to every prepare it
//! sends that lacks one, so a replica that gets an op by repair (or was
//! wiped) also gets the key to read it. Keys never enter the log (P6).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::hash::Hash;
use vellum_audit::record::Record;

use super::shell::PendingWrite;
use super::state::LogState;
use super::{LocalLog, LogError};
use crate::storage::{DamagedRecord, RecordLocation, Storage, cut_after_op};
use crate::vsr::{self, Input, Message, MessageBody, ReadPurpose, ReplicaIndex, Status};

/// Ops a replica holds in memory ahead of a gap in its log, at most; more
/// are dropped (the core repairs them again once the gap is filled).
pub const HELD_WRITES_MAX: usize = 4096;

/// Where the core's messages go: the network in production, a test double
/// in tests. `send` must never block (drop instead: VSR tolerates loss).
pub trait Outbox: Send + Sync + std::fmt::Debug {
    /// Sends `message` to replica `to`, best effort.
    fn send(&self, to: ReplicaIndex, message: Message);
}

/// An outbox that sends nothing (a read-only open of a replica's directory).
#[derive(Debug)]
pub(super) struct NoOutbox;

impl Outbox for NoOutbox {
    fn send(&self, _to: ReplicaIndex, _message: Message) {}
}

/// How a log runs as one replica of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterRole {
    /// Replicas in the cluster (2f+1).
    pub replica_count: u8,
    /// Where messages to peers go.
    pub outbox: Arc<dyn Outbox>,
    /// How long an append waits for its commit before the outcome is
    /// reported unknown (the caller retries with the same request).
    pub commit_wait_ms: u64,
}

/// A replica's status for health checks and request routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// Normal, view change or recovering.
    pub status: Status,
    /// This replica.
    pub replica: u8,
    /// Replicas in the cluster.
    pub replica_count: u8,
    /// The current view.
    pub view: u64,
    /// The primary of the view.
    pub primary: u8,
    /// True when this replica is the primary in normal status.
    pub is_primary: bool,
    /// Committed ops.
    pub commit: u64,
    /// Highest op in the journal.
    pub op: u64,
    /// Committed events (the position the next committed event gets).
    pub events: u64,
}

/// Who leads, as a replica last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// This replica.
    pub replica: u8,
    /// The primary of its view.
    pub primary: u8,
    /// The replica is in normal status (not in a view change or recovering).
    pub normal: bool,
    /// The replica is the primary, in normal status.
    pub is_primary: bool,
}

impl Role {
    fn pack(self) -> u32 {
        u32::from(self.replica)
            | (u32::from(self.primary) << 8)
            | (u32::from(self.normal) << 16)
            | (u32::from(self.is_primary) << 17)
    }

    fn unpack(bits: u32) -> Role {
        Role {
            replica: (bits & 0xff) as u8,
            primary: ((bits >> 8) & 0xff) as u8,
            normal: bits & (1 << 16) != 0,
            is_primary: bits & (1 << 17) != 0,
        }
    }
}

/// The core's configuration as replica `replica` of the role's cluster.
pub(super) fn core_config(
    cluster: u128,
    role: &ClusterRole,
    replica: u32,
) -> Result<vsr::Config, LogError> {
    let n = role.replica_count;
    if n == 0 || n.is_multiple_of(2) || usize::from(n) > vsr::REPLICAS_MAX {
        return Err(LogError::DataDir(format!(
            "a cluster needs an odd number of replicas up to {}, got {n}",
            vsr::REPLICAS_MAX
        )));
    }
    let index = u8::try_from(replica)
        .ok()
        .filter(|r| *r < n)
        .ok_or_else(|| {
            LogError::DataDir(format!(
                "vellum.json names replica {replica}, but the cluster has {n} replicas"
            ))
        })?;
    Ok(vsr::Config::for_cluster(cluster, n, index))
}

/// The cluster side's own state.
#[derive(Debug)]
pub(super) struct ClusterShell {
    pub(super) role: ClusterRole,
    /// Records ahead of a gap, by op (not durable: lost on a crash, like
    /// any unsynced write).
    held: Mutex<BTreeMap<u64, Record>>,
    /// Bumped by every cut: tickets of the store before it mean nothing.
    /// Read and written only under the storage lock.
    epoch: AtomicU64,
    /// Every op up to this was durable when the last cut reopened the store.
    recovered_through: AtomicU64,
    /// The newest certificate whose op this replica has not written yet.
    deferred: Mutex<Option<Arc<Certificate>>>,
    /// Durable op records found damaged when read for a peer (the core
    /// marks them faulty and fetches them): written back in place when the
    /// peer's copy arrives.
    rotten: Mutex<BTreeMap<u64, DamagedRecord>>,
    /// Wakes the replica loop after each group commit (installed on every
    /// store this replica opens, also after a cut or an in-place repair).
    durable_waker: std::sync::OnceLock<LoopWaker>,
}

/// The replica loop's waker, as the cluster shell keeps it.
struct LoopWaker(crate::storage::DurableWaker);

impl std::fmt::Debug for LoopWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoopWaker")
    }
}

impl ClusterShell {
    pub(super) fn new(role: ClusterRole) -> ClusterShell {
        ClusterShell {
            role,
            held: Mutex::new(BTreeMap::new()),
            epoch: AtomicU64::new(0),
            recovered_through: AtomicU64::new(0),
            deferred: Mutex::new(None),
            rotten: Mutex::new(BTreeMap::new()),
            durable_waker: std::sync::OnceLock::new(),
        }
    }

    fn rotten(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, DamagedRecord>> {
        self.rotten
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deferred_lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Certificate>>> {
        self.deferred
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `certificate` (if newer than the one kept) until its op is written.
    pub(super) fn defer_certificate(&self, certificate: Arc<Certificate>) {
        let mut deferred = self.deferred_lock();
        let newer = deferred
            .as_ref()
            .is_none_or(|d| d.checkpoint.size < certificate.checkpoint.size);
        if newer {
            *deferred = Some(certificate);
        }
    }

    pub(super) fn deferred_certificate(&self) -> Option<Arc<Certificate>> {
        self.deferred_lock().clone()
    }

    /// Forgets the kept certificate if it covers no more than `size`.
    pub(super) fn clear_deferred(&self, size: u64) {
        let mut deferred = self.deferred_lock();
        if deferred.as_ref().is_some_and(|d| d.checkpoint.size <= size) {
            *deferred = None;
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Record>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The commit number a replica of a cluster may serve reads up to after a
/// restart: what its saved state or its newest certificate says was
/// committed (its log may hold uncommitted ops beyond).
pub(super) fn recovered_commit(state: &LogState, saved_commit: u64) -> u64 {
    let certified = state.certificates.iter().map(|c| c.op).max().unwrap_or(0);
    saved_commit.max(certified).min(state.last_op())
}

impl LocalLog {
    fn cluster_side(&self) -> &ClusterShell {
        self.cluster_shell
            .as_ref()
            .expect("cluster actions come only from a cluster core")
    }

    /// One unit of time passed (the runtime calls this every tick).
    pub fn tick(&self) -> Result<(), LogError> {
        let mut core = self.core();
        self.execute(&mut core, Input::Tick)
    }

    /// A peer's message arrived (authenticated by the network layer).
    pub fn deliver(&self, message: Message) -> Result<(), LogError> {
        let mut core = self.core();
        self.execute(&mut core, Input::Message(message))
    }

    /// The replica's status.
    pub fn status(&self) -> NodeStatus {
        let core = self.core();
        let config = core.replica.config();
        let n = config.replica_count;
        let view = core.replica.view();
        let status = NodeStatus {
            status: core.replica.status(),
            replica: config.replica,
            replica_count: n,
            view,
            primary: u8::try_from(view % u64::from(n)).expect("below replica_count"),
            is_primary: core.replica.is_primary() && core.replica.status() == Status::Normal,
            commit: core.replica.commit(),
            op: core.replica.op(),
            events: 0,
        };
        drop(core);
        let state = self.lock();
        let events = state.op(state.commit).map_or(0, |info| info.tree_size);
        NodeStatus { events, ..status }
    }

    /// Records the core's role after a step (called with the core locked).
    pub(super) fn publish_role(&self, core: &super::shell::Core) {
        let replica = &core.replica;
        let n = replica.config().replica_count;
        let normal = replica.status() == Status::Normal;
        let role = Role {
            replica: replica.config().replica,
            primary: u8::try_from(replica.view() % u64::from(n)).expect("below replica_count"),
            normal,
            is_primary: normal && replica.is_primary(),
        };
        let before = self.role.swap(role.pack(), Ordering::SeqCst);
        let view_before = self.view.swap(replica.view(), Ordering::SeqCst);
        if view_before != replica.view() {
            // Every caller waiting for a reply gives up now (outcome
            // unknown: its client retries at the new primary) instead of
            // noticing at its next look (see `wait_reply`).
            self.exchange.wake_waiters();
        }
        if before != role.pack() || view_before != replica.view() {
            // One line per change of view or status (`VELLUM_LOG=info`), so
            // a replica's restarts and view changes can be timed from its log.
            tracing::info!(
                view = replica.view(),
                status = ?replica.status(),
                primary = role.primary,
                commit = replica.commit(),
                op = replica.op(),
                "replica role changed"
            );
        }
    }

    /// The core's role as of its last step, without taking any lock: what
    /// request routing needs on every request.
    pub fn role(&self) -> Role {
        Role::unpack(self.role.load(Ordering::SeqCst))
    }

    /// True when this log runs as a replica of a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster_shell.is_some()
    }

    /// Peers' messages, stepped one after another under one hold of the
    /// core (the replica loop hands over what its inbox held).
    pub fn deliver_all(&self, messages: Vec<Message>) -> Result<(), LogError> {
        let mut core = self.core();
        // In the normal case the prepares go first, under their own plug:
        // their records share one write + fdatasync, which starts before
        // the rest of the batch (a commit's certificate check costs two
        // signature verifications) instead of after it. Any order of
        // messages is one the network could have delivered; a batch that
        // holds a view change or recovery message keeps its order.
        let normal = messages.iter().all(|m| {
            matches!(
                m.body,
                MessageBody::Prepare { .. }
                    | MessageBody::PrepareOk { .. }
                    | MessageBody::Commit { .. }
                    | MessageBody::RequestPrepare { .. }
            )
        });
        let (first, rest): (Vec<Message>, Vec<Message>) = if normal {
            messages
                .into_iter()
                .partition(|m| matches!(m.body, MessageBody::Prepare { .. }))
        } else {
            (messages, Vec::new())
        };
        for group in [first, rest] {
            // Every record these messages bring shares one write + fdatasync.
            let _plug = self.storage.plug();
            for message in group {
                self.execute(&mut core, Input::Message(message))?;
            }
        }
        Ok(())
    }

    /// Sets what wakes the replica loop when a write becomes pending and
    /// after each group commit (it must not block: the replica sends a
    /// note to its own inbox).
    pub fn set_write_waker(&self, waker: crate::storage::DurableWaker) {
        let pending = Arc::clone(&waker);
        self.exchange.set_waker(Box::new(move || pending()));
        if let Some(cluster) = self.cluster_shell.as_ref()
            && cluster
                .durable_waker
                .set(LoopWaker(Arc::clone(&waker)))
                .is_ok()
        {
            self.storage.get().set_durable_waker(waker);
        }
    }

    /// Installs the loop's waker on a store this replica just opened.
    fn wake_loop_from(&self, storage: &Storage) {
        if let Some(waker) = self.cluster_side().durable_waker.get() {
            storage.set_durable_waker(Arc::clone(&waker.0));
        }
    }

    /// Reports every pending write that is durable now to the core, as one
    /// `WriteDone` for the batch, and keeps the rest pending (the replica
    /// loop calls it after each batch of inputs; it never waits: the store
    /// wakes the loop when its next group commit ends).
    pub fn complete_pending_writes(&self) -> Result<(), LogError> {
        let writes = self.exchange.take_writes();
        if writes.is_empty() {
            return Ok(());
        }
        // The store and its epoch, read together once for the batch.
        let (probe, epoch) = {
            let storage = self.storage.get();
            (storage.durable_probe(), self.cluster_side().epoch())
        };
        let mut durable = Vec::with_capacity(writes.len());
        let mut later = Vec::new();
        for write in writes {
            match self.durable_now(&write, &probe, epoch)? {
                Some(true) => durable.push((write.op, write.checksum)),
                Some(false) => {}
                None => later.push(write),
            }
        }
        self.exchange.return_writes(later);
        if !durable.is_empty() {
            let mut core = self.core();
            self.execute(&mut core, Input::WriteDone { writes: durable })?;
        }
        Ok(())
    }

    /// Whether one write is durable now in the store of `epoch` (`probe`):
    /// `Some(true)` yes, `Some(false)` a cut discarded it, `None` not yet.
    fn durable_now(
        &self,
        write: &PendingWrite,
        probe: &crate::storage::DurableProbe,
        epoch: u64,
    ) -> Result<Option<bool>, LogError> {
        let outcome = (write.epoch == epoch).then(|| probe.is_durable(write.ticket));
        match outcome {
            Some(Ok(true)) => Ok(Some(true)),
            Some(Ok(false)) => Ok(None),
            Some(Err(e)) => {
                self.poison(&LogError::Storage(e));
                Err(LogError::Poisoned("storage failed".to_string()))
            }
            // A cut reopened the store: ops it kept were flushed before it.
            None => Ok(Some(
                write.op <= self.cluster_side().recovered_through.load(Ordering::SeqCst)
                    && self
                        .lock()
                        .op(write.op)
                        .is_some_and(|i| i.checksum == write.checksum),
            )),
        }
    }

    /// `Action::Send`: a prepare without a key gets its stream's key file.
    pub(super) fn cluster_send(&self, to: ReplicaIndex, mut message: Message) {
        if let MessageBody::Prepare { record, key, .. } = &mut message.body
            && key.is_none()
            && record.header.event_count > 0
        {
            *key = self
                .keys
                .export_key(record.header.key_id)
                .ok()
                .flatten()
                .map(Bytes::from);
        }
        self.cluster_side().role.outbox.send(to, message);
    }

    /// `Action::Write` on a replica of a cluster: the next op goes to
    /// storage (then any held ops it unblocks); an op ahead of a gap is
    /// held; an op already durable with the same checksum is done at once.
    pub(super) fn cluster_write(
        &self,
        record: Record,
        key: Option<Bytes>,
        inputs: &mut VecDeque<Input>,
    ) -> Result<(), LogError> {
        if let Some(key) = key
            && let Err(error) = self.keys.import_key(&key)
        {
            // Reads of this stream fail here until a copy that unwraps
            // arrives; the log itself needs no key (P3).
            tracing::error!(%error, op = record.header.op, "could not store a peer's data key");
        }
        let op = record.header.op;
        let checksum = record.checksum();
        let (last, parent, damaged, pending) = {
            let state = self.lock();
            (
                state.last_op(),
                state.parent,
                state.damaged(op).is_some(),
                state.pending_location(op, &checksum).is_some(),
            )
        };
        if damaged {
            return self.repair_in_place(&record, inputs);
        }
        if pending {
            // On disk intact, after a damaged op: durable already.
            inputs.push_back(Input::WriteDone {
                writes: vec![(op, checksum)],
            });
            return Ok(());
        }
        if op <= last {
            let same = self.lock().op(op).is_some_and(|i| i.checksum == checksum);
            if same {
                self.restore_rotten(&record)?;
                inputs.push_back(Input::WriteDone {
                    writes: vec![(op, checksum)],
                });
            } else {
                tracing::warn!(
                    op,
                    last,
                    "dropped a write over a different durable op (no cut came first)"
                );
            }
            return Ok(());
        }
        if op > last + 1 {
            let mut held = self.cluster_side().held();
            if held.len() < HELD_WRITES_MAX || held.contains_key(&op) {
                held.insert(op, record);
            }
            return Ok(());
        }
        if last > 0 && record.header.parent != parent {
            tracing::warn!(op, "dropped a write that does not chain to the durable log");
            return Ok(());
        }
        self.write_next(record)?;
        self.drain_held()?;
        self.store_deferred_certificate()
    }

    /// A peer's copy of an op found damaged on open: written over the
    /// damaged bytes in place (the same bytes, checked against the checksum
    /// the chain names), then the store is reopened and the state rebuilt,
    /// now with the ops that waited behind it. A copy that does not fit is
    /// refused and logged; the op stays faulty.
    fn repair_in_place(
        &self,
        record: &Record,
        inputs: &mut VecDeque<Input>,
    ) -> Result<(), LogError> {
        let op = record.header.op;
        let checksum = record.checksum();
        let mut state = self.lock();
        let Some(damaged) = state.damaged(op).cloned() else {
            return Ok(());
        };
        let segments = self.dir.root().join(crate::storage::SEGMENTS_DIR);
        if let Err(error) = crate::storage::restore_record_check(&damaged, record) {
            tracing::error!(%error, op, "a peer's copy does not fit the damaged record; it stays faulty");
            return Ok(());
        }
        let mut slot = self.storage.close_for_rewrite()?;
        crate::storage::restore_record(&segments, &damaged, record)?;
        let (storage, recovery) =
            Storage::open(self.dir.root(), self.cluster, self.storage_config)?;
        let mut fresh = LogState::recover(&storage, self.cluster, &self.policy, &recovery)?;
        super::index_event_ids(&mut fresh, &storage, &self.keys, self.cluster)?;
        if fresh.pending.is_empty() {
            storage.resume_tree((fresh.tree.len(), fresh.tree.root()))?;
        }
        fresh.commit = recovered_commit(&fresh, state.commit);
        fresh.poisoned = state.poisoned.clone();
        fresh.copy_index_progress(&state);
        let kept = fresh.last_op();
        *state = fresh;
        self.wake_loop_from(&storage);
        *slot = Some(storage);
        let cluster = self.cluster_side();
        cluster.epoch.fetch_add(1, Ordering::SeqCst);
        cluster.recovered_through.store(kept, Ordering::SeqCst);
        drop(slot);
        drop(state);
        let mut writes: Vec<(u64, Hash)> = self
            .exchange
            .take_writes()
            .into_iter()
            .filter(|write| write.op <= kept)
            .map(|write| (write.op, write.checksum))
            .collect();
        writes.push((op, checksum));
        inputs.push_back(Input::WriteDone { writes });
        self.drain_held()?;
        self.store_deferred_certificate()
    }

    /// A durable record of the state that did not read back: once the
    /// store is flushed (it may only have been queued), a record that still
    /// fails is damaged. The core makes its slot faulty and fetches it.
    fn note_rotten(&self, op: u64, checksum: Hash, location: RecordLocation) {
        let storage = self.storage.get();
        if storage.flush().is_err()
            || storage
                .read(location)
                .is_ok_and(|r| r.checksum() == checksum)
        {
            return;
        }
        let file = self
            .dir
            .root()
            .join(crate::storage::SEGMENTS_DIR)
            .join(vellum_audit::segment::segment_file_name(location.segment));
        tracing::warn!(file = %file.display(), offset = location.offset, op, "an op record no longer reads back; it will be repaired from peers");
        self.cluster_side().rotten().insert(
            op,
            DamagedRecord {
                file,
                location,
                op,
                checksum,
                header: None,
                reason: "the record no longer reads back".to_string(),
            },
        );
    }

    /// Writes a peer's copy over a record found damaged on read, in place
    /// (the store keeps appending after it; this touches only its bytes).
    fn restore_rotten(&self, record: &Record) -> Result<(), LogError> {
        let op = record.header.op;
        let Some(damaged) = self.cluster_side().rotten().remove(&op) else {
            return Ok(());
        };
        let segments = self.dir.root().join(crate::storage::SEGMENTS_DIR);
        if let Err(error) = crate::storage::restore_record(&segments, &damaged, record) {
            tracing::error!(%error, op, "could not write a peer's copy over a damaged record");
            return Err(LogError::Storage(error));
        }
        Ok(())
    }

    fn write_next(&self, record: Record) -> Result<(), LogError> {
        let mut write = self.write(record)?;
        write.epoch = self.cluster_side().epoch();
        self.exchange.push_write(write);
        Ok(())
    }

    /// Writes held ops that now follow the log without a gap.
    fn drain_held(&self) -> Result<(), LogError> {
        loop {
            let (last, parent) = {
                let state = self.lock();
                (state.last_op(), state.parent)
            };
            let next = {
                let mut held = self.cluster_side().held();
                held.retain(|op, _| *op > last);
                held.remove(&(last + 1))
            };
            let Some(record) = next else {
                return Ok(());
            };
            if record.header.parent != parent {
                // It belonged to another history; the core repairs the slot.
                self.cluster_side().held().retain(|op, _| *op <= last);
                return Ok(());
            }
            self.write_next(record)?;
        }
    }

    /// `Action::Read`: the record for repair or retransmission.
    pub(super) fn cluster_read(
        &self,
        op: u64,
        checksum: Hash,
        purpose: ReadPurpose,
        inputs: &mut VecDeque<Input>,
    ) {
        let held = self
            .cluster_side()
            .held()
            .get(&op)
            .filter(|r| r.checksum() == checksum)
            .cloned();
        let record = held.or_else(|| {
            let location = {
                let state = self.lock();
                state
                    .op(op)
                    .filter(|i| i.checksum == checksum)
                    .and_then(|i| i.location)
                    .or_else(|| state.pending_location(op, &checksum))?
            };
            // A record still in the write queue is not in the file yet: the
            // core asks again later.
            let read = self
                .storage
                .get()
                .read(location)
                .ok()
                .filter(|r| r.checksum() == checksum);
            if read.is_none() {
                self.note_rotten(op, checksum, location);
            }
            read
        });
        inputs.push_back(Input::ReadDone {
            op,
            purpose,
            record,
        });
    }

    /// `Action::Truncate`: drops every op after `after_op` (never a
    /// committed one) from memory and disk.
    pub(super) fn cluster_truncate(
        &self,
        after_op: u64,
        inputs: &mut VecDeque<Input>,
    ) -> Result<(), LogError> {
        self.cluster_side().held().retain(|op, _| *op <= after_op);
        let mut state = self.lock();
        // The disk may hold ops beyond the state: those pending behind a
        // damaged op. They are cut like any other.
        if after_op >= state.disk_last_op() {
            return Ok(());
        }
        if after_op < state.commit {
            return Err(LogError::Corrupt(format!(
                "the core asked to cut after op {after_op}, below the commit {}",
                state.commit
            )));
        }
        let mut slot = self.storage.close_for_rewrite()?;
        cut_after_op(self.dir.root(), self.cluster, after_op)?;
        let mut config = self.storage_config;
        config.durable_op_floor = config.durable_op_floor.max(state.commit);
        let (storage, recovery) = Storage::open(self.dir.root(), self.cluster, config)?;
        let mut fresh = LogState::recover(&storage, self.cluster, &self.policy, &recovery)?;
        super::index_event_ids(&mut fresh, &storage, &self.keys, self.cluster)?;
        if fresh.pending.is_empty() {
            storage.resume_tree((fresh.tree.len(), fresh.tree.root()))?;
        }
        fresh.commit = state.commit;
        fresh.poisoned = state.poisoned.clone();
        fresh.copy_index_progress(&state);
        *state = fresh;
        self.wake_loop_from(&storage);
        *slot = Some(storage);
        let cluster = self.cluster_side();
        cluster.epoch.fetch_add(1, Ordering::SeqCst);
        cluster.recovered_through.store(after_op, Ordering::SeqCst);
        drop(slot);
        drop(state);
        // Writes of the old store that were kept are durable (flushed above).
        let kept: Vec<(u64, Hash)> = self
            .exchange
            .take_writes()
            .into_iter()
            .filter(|write| write.op <= after_op)
            .map(|write| (write.op, write.checksum))
            .collect();
        if !kept.is_empty() {
            inputs.push_back(Input::WriteDone { writes: kept });
        }
        Ok(())
    }
}
