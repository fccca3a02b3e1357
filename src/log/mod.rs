//! The single write path of one replica: it turns a client batch into an
//! encrypted, hash-chained op record, makes it durable through `storage`,
//! extends the Merkle tree, signs the checkpoint (the commit certificate of a
//! one-replica cluster) and feeds the audit index.
//!
//! The next layer up (the VSR core) takes over op numbering, views and
//! quorum signatures; everything below `append` — record building, storage,
//! tree, certificates, index — is the replica's storage and stays this code.

mod cluster;
#[cfg(test)]
mod cluster_tests;
mod event_ids;
mod indexer;
mod persister;
mod sealed;
mod shell;
#[cfg(test)]
mod signing_tests;
mod state;
pub mod tiles;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use vellum_audit::checkpoint::{Certificate, Checkpoint, origin_for_cluster};
use vellum_audit::hash::Hash;
use vellum_audit::leaf::LeafPreimage;
use vellum_audit::note::NoteSigner;
use vellum_audit::policy::Policy;
use vellum_audit::proof::{ConsistencyProof, InclusionProof};
use vellum_audit::record::{self, OpHeader, Record, RecordKind};
use vellum_audit::tiles::{EntryBundleId, TileId, tile_from_tree};

use crate::crypto::{self, EventAad, KeyStore};
use crate::datadir::{DataDir, NodeMeta};
use crate::index::IndexTarget;
use crate::storage::{Storage, StorageConfig, StorageError};

pub use cluster::{ClusterRole, NodeStatus, Outbox, Role};
pub use indexer::{IndexStatus, error_chain};
pub use persister::LocalPersister;
pub use sealed::SealedOp;
use state::{LogState, OpInfo};

/// Events in one append, at most (a named bound, DESIGN "limits on everything").
pub const EVENTS_PER_APPEND_MAX: usize = record::EVENTS_PER_OP_MAX as usize;
/// Bytes of one event's payload, at most.
pub const EVENT_BYTES_MAX: usize = record::EVENT_BYTES_MAX;
/// Events returned by one read, at most.
pub const READ_EVENTS_MAX: u64 = 10_000;
/// Access-trail events with their global positions, in trail order.
pub type TrailEvents = Vec<(vellum_compliance::trail::AccessEvent, u64)>;
/// Events in one export bundle, at most.
pub const EXPORT_EVENTS_MAX: u64 = 10_000;
/// The file beside the log holding the VSR core's durable view state.
pub const VSR_STATE_FILE: &str = "vsr-state.json";

/// How to open a log.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Segment and group-commit bounds.
    pub storage: StorageConfig,
    /// The audit index; `None` means the SQLite file in the data directory.
    pub index_url: Option<String>,
    /// Do not open or feed the audit index (used by `index rebuild` and tools).
    pub without_index: bool,
    /// How long to wait for another process to release the data directory
    /// (0: fail at once with [`LogError::Busy`]).
    pub lock_wait_ms: u64,
    /// Run as one replica of a cluster (None: a cluster of one).
    pub cluster: Option<ClusterRole>,
    /// Keep the Merkle tree on disk as tlog-tiles (`<data>/tiles`),
    /// checked at open and written by the `vellum-tiles` thread, off the
    /// commit path. Off by default (see CHANGELOG.md for the measured
    /// cost); nothing reads them yet but `vellum verify` and the open check.
    pub tiles: bool,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The replicated core refused the request before anything was written.
    #[error("refused: {0}")]
    Refused(crate::vsr::RequestRefusal),
    /// The log is open read-only: nothing may be written.
    #[error("refused: the log is open read-only")]
    ReadOnly,
    /// A user append named a system stream.
    #[error(
        "refused: stream {stream} is reserved for vellum's system streams (user streams start at {})",
        crate::StreamId::USER_MIN
    )]
    ReservedStream {
        /// The stream.
        stream: u64,
    },
    /// An append without events.
    #[error("refused: an append needs at least one event")]
    NoEvents,
    /// An append with more events than one op holds.
    #[error("refused: {count} events in one append; at most {EVENTS_PER_APPEND_MAX}")]
    TooManyEvents {
        /// Events in the append.
        count: usize,
    },
    /// An event of an append with envelopes is not a valid envelope.
    #[error("refused: {0}")]
    BadEnvelope(String),
    /// An event id is already on the stream (at `offset`) or repeated in
    /// the batch (at index `first`), and the batch is not a resent op:
    /// nothing was written.
    #[error(
        "refused: {}",
        duplicate_event_id_text(*.stream, *.index, .id, *.offset, *.first)
    )]
    DuplicateEventId {
        /// The stream.
        stream: u64,
        /// The batch index of the event.
        index: usize,
        /// The id, canonical text.
        id: String,
        /// The offset of the stored event with that id.
        offset: Option<u64>,
        /// The earlier batch index with the same id.
        first: Option<usize>,
    },
    /// An event larger than [`EVENT_BYTES_MAX`].
    #[error("refused: event {index} has {bytes} bytes; at most {EVENT_BYTES_MAX}")]
    EventTooLarge {
        /// Index of the event in the append.
        index: usize,
        /// Its size.
        bytes: usize,
    },
    /// An export range that is empty, reversed or longer than [`EXPORT_EVENTS_MAX`].
    #[error("refused: an export covers 1 to {EXPORT_EVENTS_MAX} offsets, got [{from}, {to})")]
    ExportRange {
        /// First offset asked for.
        from: u64,
        /// One past the last offset asked for.
        to: u64,
    },
    /// An export ends beyond the stream's committed events.
    #[error(
        "refused: stream {stream} has {committed} committed events; an export must end at or before that (to = {to})"
    )]
    ExportBeyondStream {
        /// The stream.
        stream: u64,
        /// Its committed events.
        committed: u64,
        /// The export's end.
        to: u64,
    },
    /// Nothing is certified yet, so nothing can be proved or exported.
    #[error("refused: nothing is certified yet")]
    NothingCertified,
    /// The stream has no committed event at that offset.
    #[error("refused: stream {stream} has no committed event at offset {offset}")]
    NoSuchEvent {
        /// The stream.
        stream: u64,
        /// The offset.
        offset: u64,
    },
    /// The event is committed but no certificate covers it yet.
    #[error(
        "refused: stream {stream} offset {offset} is not covered by a certificate yet; \
         open the log read-write once (e.g. vellum append) to certify the tail"
    )]
    NotCertifiedYet {
        /// The stream.
        stream: u64,
        /// The offset.
        offset: u64,
    },
    /// No certificate has that tree size (None: no certificate at all).
    #[error("refused: no certificate at that tree size")]
    NoCertificateAtSize {
        /// The tree size asked for.
        size: Option<u64>,
    },
    /// A tlog tile or entry bundle that no tree up to the newest
    /// certificate's size has (size 0: nothing is certified yet).
    #[error("refused: {path} is not in the tree of any checkpoint up to size {size}")]
    TileBeyondCheckpoint {
        /// The tile's or bundle's path (`tile/...`).
        path: String,
        /// The newest certificate's tree size.
        size: u64,
    },
    /// A consistency proof's older size is 0 or beyond the newer one.
    #[error(
        "refused: --from-size must be between 1 and the newer tree size {new_size}, got {old_size}"
    )]
    ConsistencyRange {
        /// The older tree size asked for.
        old_size: u64,
        /// The newer tree size.
        new_size: u64,
    },
    /// The op is committed but its record is not written yet.
    #[error("refused: op {op} is not durable yet")]
    NotDurable {
        /// The op.
        op: u64,
    },
    /// A cluster replica's data directory opened read-write outside the cluster.
    #[error(
        "refused: this data directory is replica {replica} of a {replicas}-replica cluster: write through the \
         cluster (vellum start / the client API), or open it read-only"
    )]
    ClusterReplica {
        /// This replica.
        replica: u32,
        /// Replicas in the cluster.
        replicas: usize,
    },
    /// The stream's length is not what the caller expected.
    #[error(
        "wrong expected offset on stream {stream}: expected {expected}, the stream has {actual} events"
    )]
    WrongExpectedOffset {
        /// The stream.
        stream: u64,
        /// What the caller expected.
        expected: u64,
        /// The stream's real length.
        actual: u64,
    },
    /// The idempotency key (client session and request number) names
    /// another request, committed or in flight: nothing was written, and a
    /// retry will not help.
    #[error(
        "idempotency key reused: request number {request} of this client session already names a different request (another stream, expected offset or events); nothing was written to stream {stream}"
    )]
    IdempotencyKeyReused {
        /// The stream of the refused request.
        stream: u64,
        /// The reused request number.
        request: u64,
    },
    /// The stream has no events.
    #[error("unknown stream {0}: it has no events")]
    UnknownStream(u64),
    /// Storage failed; the log handle may be poisoned.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The operating system's random source failed (an internal fault,
    /// never the caller's mistake).
    #[error("random source: {0}")]
    Randomness(String),
    /// Key store or encryption failed.
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    /// The data directory is not usable.
    #[error("data directory: {0}")]
    DataDir(String),
    /// The log contradicts itself (a corruption the storage scan did not catch).
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// The outcome is unknown (the op may or may not commit); retrying
    /// with the same client request is safe.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// Another process has the data directory open.
    #[error("{0}")]
    Busy(String),
    /// A previous failure poisoned this handle; reopen to continue.
    #[error("log handle poisoned by an earlier failure: {0}")]
    Poisoned(String),
}

/// What an append returns: where the batch landed and the certificate that covers it.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stream appended to.
    pub stream: u64,
    /// The stream offset of the first event of the batch.
    pub first_offset: u64,
    /// The stream's new length (the `Offset` of `persist_blocking`).
    pub next_offset: u64,
    /// Global position (Merkle leaf index) of the first event.
    pub first_position: u64,
    /// Number of events.
    pub count: u64,
    /// The op that carries the batch.
    pub op: u64,
    /// The commit certificate covering the op (a signed checkpoint).
    pub certificate: Arc<Certificate>,
    /// True when this was a retry answered from the client table (nothing written).
    pub duplicate: bool,
    /// The salts and leaf preimages kept from sealing the op, when this
    /// replica sealed it for this caller: [`receipt`] builds from them
    /// instead of reading the record back.
    pub sealed: Option<Arc<SealedOp>>,
}

/// An idempotency key: a client session and its request number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientRequest {
    /// The client session id (random per session).
    pub client: u128,
    /// The request number, increasing within the session.
    pub request: u64,
}

/// A decrypted event as read back.
#[derive(Debug, Clone)]
pub struct ReadEvent {
    /// Stream offset.
    pub offset: u64,
    /// Global position.
    pub position: u64,
    /// The event's plaintext, byte for byte as appended: the payload, or
    /// with `enveloped` the encoded envelope (fields and payload; decode
    /// with `vellum_audit::envelope::Envelope::decode`). The commitment
    /// covers exactly these bytes.
    pub payload: Bytes,
    /// The op carries envelopes (`FLAG_ENVELOPES`): `payload` is one.
    pub enveloped: bool,
    /// The salt of the leaf's commitment to the payload (from inside the
    /// ciphertext): with it, a reader checks that a proof is about this
    /// payload (`vellum proof check`).
    pub salt: [u8; 32],
}

/// What recovery on open found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenReport {
    /// Op records recovered.
    pub ops: u64,
    /// Events recovered.
    pub events: u64,
    /// Segment files.
    pub segments: u64,
    /// A torn tail that was truncated, as "file at offset (n bytes)".
    pub torn_tail: Option<String>,
    /// Certificates found in the log.
    pub certificates: u64,
    /// True when the last op had no certificate and one was signed on open.
    pub recertified: bool,
    /// The tile store checked against the newest certificate, and the
    /// tiles written again from the log.
    pub tiles: tiles::TilesOnOpen,
}

/// One replica's log: storage + keys + tree + certificates + index feed.
#[derive(Debug)]
pub struct LocalLog {
    dir: DataDir,
    meta: NodeMeta,
    cluster: u128,
    storage: StorageCell,
    /// How storage was opened (a cut reopens it the same way).
    storage_config: StorageConfig,
    keys: KeyStore,
    signer: crypto::ReplicaSigner,
    /// Checkpoint signatures `signer` failed to make (the core asked, the
    /// key did not sign): `vellum_signing_failures_total`.
    signing_failures: AtomicU64,
    policy: Policy,
    state: Mutex<LogState>,
    /// The `vellum-tiles` thread writing the tree as tlog-tiles on disk
    /// (None: tiles off, read-only, or waiting for the next open). Its
    /// queue's lock is taken after the state lock and held for no I/O.
    tiles: Option<tiles::TileWriter>,
    indexer: Option<indexer::Indexer>,
    /// Opened with `StorageConfig::read_only`: nothing is written.
    read_only: bool,
    /// The one-replica VSR core every append goes through.
    core: Mutex<shell::Core>,
    /// Client sessions lent to callers that bring none.
    sessions: shell::Sessions,
    /// Replies and pending writes handed from the core to waiting callers.
    exchange: shell::Exchange,
    /// Salts and leaf preimages of sealed ops, until their callers take them.
    sealed: sealed::SealedOps,
    /// The cluster side of the shell (None on a cluster of one).
    cluster_shell: Option<cluster::ClusterShell>,
    /// The core's role as of its last step ([`LocalLog::role`]), so request
    /// routing never waits for the core's lock.
    role: std::sync::atomic::AtomicU32,
    /// The core's view as of its last step, published with `role`, so a
    /// caller waiting for its reply sees a view change without taking the
    /// core's lock.
    view: std::sync::atomic::AtomicU64,
    /// Called after each commit the core reports (the replica's key-custody
    /// applier: it must not block).
    commit_waker: std::sync::OnceLock<CommitWaker>,
    /// Held for the life of the handle: one writer per data directory.
    _lock: crate::datadir::DirLock,
}

/// What a commit wakes (see [`LocalLog::set_commit_waker`]).
struct CommitWaker(crate::storage::DurableWaker);

impl std::fmt::Debug for CommitWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitWaker")
    }
}

/// The storage handle, swappable: cutting uncommitted ops (a view change)
/// closes the store, shortens the files and opens it again. Lock order:
/// the state lock before this one.
#[derive(Debug)]
struct StorageCell(RwLock<Option<Storage>>);

/// A shared borrow of the open storage.
struct StorageRef<'a>(RwLockReadGuard<'a, Option<Storage>>);

impl std::ops::Deref for StorageRef<'_> {
    type Target = Storage;
    fn deref(&self) -> &Storage {
        self.0
            .as_ref()
            .expect("storage is absent only inside a cut, which holds the write lock")
    }
}

impl StorageCell {
    fn new(storage: Storage) -> StorageCell {
        StorageCell(RwLock::new(Some(storage)))
    }

    fn get(&self) -> StorageRef<'_> {
        StorageRef(
            self.0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Flushes and closes the store so its files can be rewritten (a cut,
    /// a repair in place); the caller reopens it into the returned slot,
    /// which keeps every reader out meanwhile.
    fn close_for_rewrite(
        &self,
    ) -> Result<std::sync::RwLockWriteGuard<'_, Option<Storage>>, LogError> {
        self.get().flush()?;
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = slot.take() {
            old.close()?;
        }
        Ok(slot)
    }

    /// Holds back the open store's writer (see `Storage::plug`); None
    /// when no store is open.
    fn plug(&self) -> Option<crate::storage::Plug> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(Storage::plug)
    }

    fn take(&self) -> Option<Storage> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The tile store of `dir` checked against the newest certificate of a
/// freshly recovered state (and, unless read-only, its right edge rewritten
/// from the tree where it is missing, torn or different). With a damaged
/// op waiting for repair the tree ends early: the check, and every tile
/// write, wait for an open of the whole log.
fn open_tiles(
    dir: &DataDir,
    state: &LogState,
    read_only: bool,
) -> (tiles::TileStore, tiles::TilesOnOpen) {
    let mut store = tiles::TileStore::new(dir.tiles(), read_only);
    if !state.pending.is_empty() {
        let report = tiles::TilesOnOpen {
            problem: Some("not checked: damaged ops wait for repair".to_string()),
            ..tiles::TilesOnOpen::default()
        };
        return (store, report);
    }
    let certified = state
        .latest_certificate()
        .map(|c| (c.checkpoint.size, c.checkpoint.root));
    let report = store.open_check(&state.tree, certified);
    if let Some(problem) = &report.problem {
        tracing::warn!(
            problem,
            rewritten = report.rewritten_count,
            "tiles did not match the log; rewritten from it"
        );
    }
    (store, report)
}

/// The newest certificate's tree size (0: nothing is certified).
fn certified_size(state: &LogState) -> u64 {
    state
        .latest_certificate()
        .map_or(0, |certificate| certificate.checkpoint.size)
}

/// The preimages read for a bundle starting at leaf `from` must be exactly
/// the tree's leaves there: a mismatch is the log contradicting its tree.
fn check_bundle_leaves(
    preimages: &[LeafPreimage],
    leaf_hashes: &[Hash],
    from: u64,
) -> Result<(), LogError> {
    if preimages.len() != leaf_hashes.len() {
        return Err(LogError::Corrupt(format!(
            "{} leaf preimages read for {} leaves from position {from}",
            preimages.len(),
            leaf_hashes.len()
        )));
    }
    for ((position, preimage), hash) in (from..).zip(preimages).zip(leaf_hashes) {
        if preimage.global_position != position || preimage.leaf_hash() != *hash {
            return Err(LogError::Corrupt(format!(
                "the leaf preimage at position {position} does not hash to the tree's leaf"
            )));
        }
    }
    Ok(())
}

/// The words of a duplicate event id refusal, for the log's error and the
/// API's (one text in both).
pub fn duplicate_event_id_text(
    stream: u64,
    index: usize,
    id: &str,
    offset: Option<u64>,
    first: Option<usize>,
) -> String {
    let why = match (offset, first) {
        (Some(offset), _) => format!("which the stream already holds at offset {offset}"),
        (None, Some(first)) => format!("as event {first} of this batch does"),
        (None, None) => "which the stream already holds".to_string(),
    };
    format!("event {index} has id {id}, {why}; nothing was written to stream {stream}")
}

/// Wall-clock time in unix nanoseconds (the shell's clock, never the core's).
pub fn now_ns() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

impl LocalLog {
    /// Opens an initialized data directory: recovers storage, rebuilds the
    /// tree and stream heads from the log, signs a certificate if the last op
    /// lacks one, and brings the index up to date.
    pub fn open(data_dir: &Path, options: LogOptions) -> Result<(LocalLog, OpenReport), LogError> {
        let dir = DataDir::new(data_dir);
        // Refused before waiting for the lock; read again under it.
        NodeMeta::load(&dir).map_err(|e| LogError::DataDir(e.to_string()))?;
        let lock = dir.lock(options.lock_wait_ms).map_err(|e| match e {
            crate::datadir::LockError::Busy { .. } => LogError::Busy(e.to_string()),
            other => LogError::DataDir(other.to_string()),
        })?;
        // Read again under the lock: a KEK rotation may have replaced it.
        let meta = NodeMeta::load(&dir).map_err(|e| LogError::DataDir(e.to_string()))?;
        let (meta, rotation) = match options.storage.read_only {
            // A read-only open never writes; an interrupted rotation makes
            // the key store refuse to open, which says what to do.
            true => (meta, crypto::Recovery::Nothing),
            false => meta.recover_kek_rotation(&dir)?,
        };
        if rotation != crypto::Recovery::Nothing {
            tracing::warn!(
                ?rotation,
                "recovered an interrupted key-encryption key rotation"
            );
        }
        if !options.storage.read_only {
            // Before the signing key and policy are read: an interrupted
            // signing-key rotation leaves the old key or the new one.
            let signing = dir.recover_signing_rotation()?;
            if signing != crypto::SigningRecovery::Nothing {
                tracing::warn!(?signing, "recovered an interrupted signing-key rotation");
            }
        }
        let cluster = meta.cluster_id().map_err(LogError::DataDir)?;
        let policy = load_policy(&dir.policy())?;
        let kek = crypto::open_kek(meta.kek.as_ref(), &dir.kek())?;
        let keys = KeyStore::open(&dir.keys(), kek, meta.writer_id())?;
        let signer = crypto::open_signer(meta.signing.as_ref(), &dir.signing_key(), &meta.name)?;
        let read_only = options.storage.read_only;
        // A bad index URL is refused even when this open does not use the
        // index (read-only), so a typo never goes unnoticed.
        let target = match options.without_index {
            true => None,
            false => Some(
                IndexTarget::parse(options.index_url.as_deref(), dir.root())
                    .map_err(|e| LogError::DataDir(e.to_string()))?,
            ),
        };
        let indexer = match target {
            Some(target) if !read_only => Some(indexer::Indexer::start(target, cluster)?),
            _ => None,
        };
        // The index remembers the highest certified commit: recovery may not
        // call anything at or below it a torn tail (that would silently drop
        // an acknowledged event). A lagging index only lowers the floor.
        let mut storage_config = options.storage;
        // The index holds a certificate's row only once its record was
        // durable, so that record must still be in the log: a "torn" tail
        // that would take it is damage, not an unfinished write.
        if let Some(certified) = indexer.as_ref().and_then(|i| i.status().last_commit) {
            storage_config.durable_op_floor = storage_config.durable_op_floor.max(certified);
            storage_config.durable_certificate_floor =
                storage_config.durable_certificate_floor.max(certified);
        }
        // A replica of a cluster repairs a damaged op below its tail from
        // its peers; a lone replica has none, so any damage fails its open.
        storage_config.tolerate_damaged_ops = options.cluster.is_some() && !read_only;
        let (storage, recovery) = Storage::open(dir.root(), cluster, storage_config)?;
        let torn_tail = recovery.torn_tail.as_ref().map(|t| {
            format!(
                "{} at byte {} ({} bytes {})",
                t.file.display(),
                t.offset,
                t.bytes,
                if read_only {
                    "left in place: read-only"
                } else {
                    "truncated"
                }
            )
        });
        let mut state = LogState::recover(&storage, cluster, &policy, &recovery)?;
        if !read_only {
            index_event_ids(&mut state, &storage, &keys, cluster)?;
        }
        // With a damaged op the tree ends before it: storage learns the
        // whole tree once the repair rebuilt the state.
        if !read_only && state.pending.is_empty() {
            storage.resume_tree((state.tree.len(), state.tree.root()))?;
        }
        let (tile_writer, tiles) = match options.tiles {
            true => {
                let (store, report) = open_tiles(&dir, &state, read_only);
                (tiles::TileWriter::start(store, &state.tree), report)
            }
            false => (None, tiles::TilesOnOpen::default()),
        };
        let mut report = OpenReport {
            ops: state.last_op(),
            events: state.tree.len(),
            segments: recovery.segments,
            torn_tail,
            certificates: state.certificates.len() as u64,
            recertified: false,
            tiles,
        };
        // Before the core commits anything: drop index rows the durable log
        // does not back (an index written before rows waited for their
        // certificate record), so the catch-up below can write the log's.
        // With a damaged op, the state ends before it while the disk holds
        // more: rows of the ops after it are backed (they are restored, not
        // lost), so nothing is dropped until a whole open.
        if let Some(indexer) = indexer.as_ref().filter(|_| state.pending.is_empty()) {
            indexer.reconcile(state.index_backing());
        }
        let durable = shell::load_state(&dir.root().join(VSR_STATE_FILE))?;
        // The saved commit is a lower bound the log must reach: beyond it,
        // the log lost committed ops or the file was edited. Refuse rather
        // than wait forever for ops that will never come.
        if durable.commit > state.disk_last_op() {
            return Err(LogError::Corrupt(format!(
                "{} says op {} committed but the log ends at op {}",
                dir.root().join(VSR_STATE_FILE).display(),
                durable.commit,
                state.disk_last_op()
            )));
        }
        if options.cluster.is_some() {
            state.commit = cluster::recovered_commit(&state, durable.commit);
        }
        let core_config = core_config_for(cluster, &options, &meta, &policy)?;
        check_signer_pinned(signer.as_ref(), &policy, core_config.replica, &meta, &dir)?;
        let (replica, first_actions) = crate::vsr::Replica::new(
            core_config,
            &signer.verifier(),
            policy.clone(),
            shell::recovered(&state, durable),
            recovery_nonce()?,
            crate::vsr::Broken::None,
        );
        let log = LocalLog {
            dir,
            meta,
            cluster,
            storage: StorageCell::new(storage),
            keys,
            signer,
            signing_failures: AtomicU64::new(0),
            policy,
            state: Mutex::new(state),
            tiles: tile_writer,
            storage_config,
            cluster_shell: options.cluster.clone().map(cluster::ClusterShell::new),
            role: std::sync::atomic::AtomicU32::new(0),
            view: std::sync::atomic::AtomicU64::new(0),
            commit_waker: std::sync::OnceLock::new(),
            indexer,
            read_only,
            core: Mutex::new(shell::Core::new(replica)),
            sessions: shell::Sessions::default(),
            exchange: shell::Exchange::default(),
            sealed: sealed::SealedOps::default(),
            _lock: lock,
        };
        if !read_only {
            let mut core = log
                .core
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log.run(&mut core, first_actions)?;
            log.publish_role(&core);
            drop(core);
            // A replica of a cluster never certifies alone: its tail may be
            // uncommitted, and one signature is no quorum.
            if log.cluster_shell.is_none() {
                log.certify_tail()?;
            }
            // The core commits a durable tail on its own when it recovers;
            // either way, a certificate signed during open is reported.
            report.recertified = log.lock().certificates.len() as u64 > report.certificates;
            log.catch_up_index()?;
            // A replica alone commits its own signing-key announcements
            // here (a replica of a cluster through the server, which
            // relays them to the primary: `server::rotations`).
            if log.cluster_shell.is_none() {
                log.announce_signing_rotations();
            }
        }
        Ok((log, report))
    }

    /// Commits in the access trail the signing-key rotations of this
    /// replica whose announcement is not in the log yet
    /// (`crypto::pending_signing_announcements`), then marks them logged.
    /// A failure is logged and leaves them pending for the next open: the
    /// log stays usable, and `vellum verify` names a pinned rotation the
    /// log lacks.
    fn announce_signing_rotations(&self) {
        let keys = self.dir.keys();
        let announce = || -> Result<usize, String> {
            let pending =
                crate::crypto::pending_signing_announcements(&keys).map_err(|e| e.to_string())?;
            if pending.is_empty() {
                return Ok(0);
            }
            let principal = self.signer.name().to_string();
            let events = pending
                .iter()
                .map(|rotation| {
                    vellum_audit::key_history::check_announcement(&self.policy, rotation)
                        .map_err(|e| format!("{}: {e}", rotation.to_line()))?;
                    let event = vellum_compliance::trail::signing_key_rotated_event(
                        &principal,
                        now_ns(),
                        &rotation.to_line(),
                    );
                    Ok(Bytes::from(event.to_payload()))
                })
                .collect::<Result<Vec<Bytes>, String>>()?;
            self.append_trail(&events).map_err(|e| e.to_string())?;
            crate::crypto::signing_announcements_logged(&keys, pending.len())
                .map_err(|e| e.to_string())?;
            Ok(pending.len())
        };
        match announce() {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(count, "recorded signing-key rotations in the access trail")
            }
            Err(why) => {
                tracing::error!(%why, "signing-key rotations not recorded in the access trail; they stay pending until the next open")
            }
        }
    }

    fn storage_read_only(&self) -> bool {
        self.read_only
    }

    /// The data directory.
    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    /// The node metadata.
    pub fn meta(&self) -> &NodeMeta {
        &self.meta
    }

    /// The cluster id.
    pub fn cluster(&self) -> u128 {
        self.cluster
    }

    /// The pinned trust policy of this data directory.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The tree size the stored tiles are written up to (None: no tile
    /// writer runs: tiles off, read-only, or waiting for the next open).
    pub fn tiles_written(&self) -> Option<u64> {
        self.tiles.as_ref().map(tiles::TileWriter::written_size)
    }

    /// Holds the tile writer back before its next write while the guard
    /// lives, as a stalled disk would (None: no tile writer runs). Appends
    /// go on meanwhile: nothing on the commit path waits for tiles.
    pub fn hold_tiles(&self) -> Option<tiles::TilesHeld<'_>> {
        self.tiles.as_ref().map(tiles::TileWriter::hold)
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A panic while holding the lock is a bug that already stopped the
        // write path; recovering the guard lets reads report it instead of
        // cascading panics.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `events` to `stream` durably and returns where they landed.
    pub fn append(
        &self,
        stream: u64,
        events: &[Bytes],
        expected_offset: Option<u64>,
        client: Option<ClientRequest>,
    ) -> Result<Appended, LogError> {
        self.append_recorded(stream, events, expected_offset, client, None, false)
    }

    /// Appends like [`LocalLog::append`]; with `trail` (an access-trail
    /// event's payload, its stream and offsets filled in once known), the
    /// append and that trail record commit in one atomic group: neither
    /// without the other, in one consensus round.
    pub fn append_recorded(
        &self,
        stream: u64,
        events: &[Bytes],
        expected_offset: Option<u64>,
        client: Option<ClientRequest>,
        trail: Option<Bytes>,
        enveloped: bool,
    ) -> Result<Appended, LogError> {
        validate_batch(stream, events, enveloped)?;
        if self.storage_read_only() {
            return Err(LogError::ReadOnly);
        }
        self.append_through_core(stream, events, expected_offset, client, trail, enveloped)
    }

    /// Returns a certificate covering `op`, signing a new checkpoint at the
    /// current commit if the latest one does not cover it. One signature
    /// covers every op made durable by the same group commit.
    fn certify(&self, op: u64) -> Result<Arc<Certificate>, LogError> {
        let mut state = self.lock();
        if let Some(cert) = state.certificate_covering(op) {
            return Ok(cert);
        }
        let commit = state.commit;
        assert!(
            commit >= op,
            "op {op} is durable, so the commit number {commit} covers it"
        );
        let info = state
            .op(commit)
            .expect("the committed op is in the log")
            .clone();
        let root = state
            .tree
            .root_at(info.tree_size)
            .expect("the committed tree size is within the tree");
        // The signed chain head binds every op header field (view, client,
        // request, timestamp, key id) to the certificate, not just the
        // leaves; the certificate's time is the certified op's own
        // timestamp, so signing the same commit again (after a crash lost
        // the certificate record) gives byte-identical text.
        let checkpoint = Checkpoint {
            origin: origin_for_cluster(self.cluster),
            size: info.tree_size,
            root,
            extensions: vec![vellum_audit::verify::chain_head_extension(
                info.op,
                &info.checksum,
            )],
        };
        let certificate = Arc::new(
            Certificate::sign(checkpoint, &[self.signer.as_ref()])
                .map_err(|e| LogError::Corrupt(format!("signing the checkpoint failed: {e}")))?,
        );
        self.store_certificate(&mut state, info, Arc::clone(&certificate))?;
        Ok(certificate)
    }

    /// Keeps a certificate of the op `info`: in memory, in the log (a
    /// certificate record riding along with the next group commit; if a
    /// crash loses it, open signs the tail again) and in the index.
    fn store_certificate(
        &self,
        state: &mut LogState,
        info: OpInfo,
        certificate: Arc<Certificate>,
    ) -> Result<(), LogError> {
        let commit = info.op;
        // The record and the index row carry the same time, so a rebuilt
        // index equals the live one.
        let time_ns = info.timestamp_ns;
        let cert_record = certificate_record(self.cluster, &info, &certificate, time_ns);
        // The certificate record rides along with the next group commit; if
        // it is lost in a crash, open() signs the tail again.
        let tree_after = (state.tree.len(), state.tree.root());
        let storage = self.storage.get();
        let ticket = match storage.submit_lazy(cert_record, tree_after) {
            Ok(ticket) => ticket,
            Err(e) => {
                state.poisoned = Some(e.to_string());
                self.exchange.wake_waiters();
                return Err(e.into());
            }
        };
        state.add_certificate(commit, info.tree_size, certificate, time_ns);
        // The tiles of this size are written by their thread once its
        // record is durable: never a leaf the log lacks. Only the new leaf
        // hashes are copied here; no tile I/O runs under this lock.
        if let Some(tiles) = &self.tiles {
            tiles.certified(&state.tree, info.tree_size, ticket, storage.durable_probe());
        }
        if let Some(indexer) = &self.indexer {
            // Never blocks: with the queue full the rows stay in the log
            // (the index is behind) and a later certificate sends them.
            if !indexer.has_room() {
                indexer.note_deferred();
                return Ok(());
            }
            let mut batch = state.index_batch_pending(commit, state::INDEX_FEED_EVENTS_MAX);
            self.add_access_rows_with(&storage, state, &mut batch);
            // The rows wait for the certificate record (and so every op
            // record before it) to be durable: the index never holds a
            // certificate a crash could still take from the log.
            let gate = indexer::DurableGate {
                probe: storage.durable_probe(),
                ticket,
            };
            indexer.send_gated(batch, Some(gate));
        }
        Ok(())
    }

    /// Sends the index every row a full queue kept back, waiting for room
    /// (for `close`, after storage was flushed: every certificate record
    /// is durable, so no gate is needed).
    fn drain_index_backlog(&self) {
        let Some(indexer) = &self.indexer else {
            return;
        };
        let mut state = self.lock();
        let certified = state.certificates.iter().map(|c| c.op).max().unwrap_or(0);
        while state.index_pending(certified) {
            let mut batch = state.index_batch_pending(certified, state::INDEX_FEED_EVENTS_MAX);
            self.add_access_rows(&state, &mut batch);
            indexer.send_waiting(batch);
        }
    }

    /// Test hook: while stalled, the index thread takes nothing off its
    /// queue, as if the index could not keep up; appends go on committing.
    #[doc(hidden)]
    pub fn set_index_stalled(&self, stalled: bool) {
        if let Some(indexer) = &self.indexer {
            indexer.set_stalled(stalled);
        }
    }

    /// Signs a certificate for the last op if the log does not hold one.
    fn certify_tail(&self) -> Result<bool, LogError> {
        let last = self.lock().last_op();
        if last == 0 || self.lock().certificate_covering(last).is_some() {
            return Ok(false);
        }
        self.certify(last)?;
        self.storage.get().flush()?;
        Ok(true)
    }

    /// Sends the index everything it lacks, then waits until it has it.
    fn catch_up_index(&self) -> Result<(), LogError> {
        let Some(indexer) = &self.indexer else {
            return Ok(());
        };
        let status = indexer.status();
        let mut state = self.lock();
        for mut batch in state.index_catch_up(status.last_position, status.last_commit) {
            self.add_access_rows(&state, &mut batch);
            indexer.send_waiting(batch);
        }
        drop(state);
        indexer.flush();
        Ok(())
    }

    /// Every index row of the ops covered by a certificate in the log (and
    /// the certificates), in bounded batches: what a rebuilt index holds.
    fn certified_index_batches(&self) -> Vec<crate::index::IndexBatch> {
        let mut state = self.lock();
        let commit = state.commit;
        let certified = state.certificates.iter().map(|c| c.op).max().unwrap_or(0);
        // A replica's tail after its last certificate may be uncommitted.
        state.commit = commit.min(certified);
        let mut batches = state.index_catch_up(None, None);
        state.commit = commit;
        for batch in &mut batches {
            self.add_access_rows(&state, batch);
        }
        batches
    }

    /// Appends access-trail events (P7) to the system stream
    /// [`vellum_compliance::trail::ACCESS_TRAIL_STREAM`] through the core,
    /// like any append; only the replica itself writes there.
    pub fn append_trail(&self, events: &[Bytes]) -> Result<Appended, LogError> {
        validate_events(events)?;
        if self.storage_read_only() {
            return Err(LogError::ReadOnly);
        }
        let stream = vellum_compliance::trail::ACCESS_TRAIL_STREAM;
        self.append_through_core(stream, events, None, None, None, false)
    }

    /// Appends key-custody events (P6: shred, legal hold, retention) to
    /// the system stream [`vellum_compliance::custody::KEY_CUSTODY_STREAM`]
    /// through the core, like any append, with `expected_offset` (the
    /// custody state the caller decided on); only the replica writes there.
    pub fn append_custody(
        &self,
        events: &[Bytes],
        expected_offset: u64,
    ) -> Result<Appended, LogError> {
        let stream = vellum_compliance::custody::KEY_CUSTODY_STREAM;
        self.append_system(stream, events, expected_offset)
    }

    /// Appends consumer-group events (persistent subscriptions) to the
    /// system stream [`vellum_compliance::groups::CONSUMER_GROUPS_STREAM`]
    /// through the core, with `expected_offset` (the group state the
    /// caller decided on); only the replica writes there.
    pub fn append_groups(
        &self,
        events: &[Bytes],
        expected_offset: u64,
    ) -> Result<Appended, LogError> {
        let stream = vellum_compliance::groups::CONSUMER_GROUPS_STREAM;
        self.append_system(stream, events, expected_offset)
    }

    /// Appends events of a system stream the replica itself decides on
    /// (custody, consumer groups) at `expected_offset`, no trail record.
    fn append_system(
        &self,
        stream: u64,
        events: &[Bytes],
        expected_offset: u64,
    ) -> Result<Appended, LogError> {
        validate_events(events)?;
        if self.storage_read_only() {
            return Err(LogError::ReadOnly);
        }
        self.append_through_core(stream, events, Some(expected_offset), None, None, false)
    }

    /// Destroys every data key of `stream` in this replica's key store,
    /// durably (a committed shred: see `replica::custody`). Idempotent.
    pub fn shred_stream_keys(&self, stream: u64) -> Result<Vec<u64>, LogError> {
        Ok(self.keys.shred_stream(stream)?)
    }

    /// When the newest event of `stream` was appended (its op header's
    /// time, unix nanoseconds); None for a stream without events.
    pub fn stream_last_event_ns(&self, stream: u64) -> Option<u64> {
        self.lock().stream_last_timestamp_ns(stream)
    }

    /// Sets what is called after each commit of an op of the key-custody
    /// stream (it must not block). Other commits do not call it: at
    /// thousands of commits a second each call woke a thread for nothing.
    pub fn set_commit_waker(&self, waker: crate::storage::DurableWaker) {
        let _ = self.commit_waker.set(CommitWaker(waker));
    }

    /// Tells the commit waker, if any, that a key-custody op committed.
    fn wake_on_commit(&self) {
        if let Some(CommitWaker(waker)) = self.commit_waker.get() {
            waker();
        }
    }

    /// Reads up to `max` committed events of the global log from position
    /// `from`, decrypted: (stream, event) in position order. Events of a
    /// shredded stream are left out (their keys are gone; the positions
    /// stay in the tree and proofs) and do not count toward `max`: the
    /// read goes on past them, so a page is empty only at the log's end.
    pub fn read_log(&self, from: u64, max: u64) -> Result<Vec<(u64, ReadEvent)>, LogError> {
        let max = max.min(READ_EVENTS_MAX);
        let mut out = Vec::new();
        let mut position = from;
        // Each round moves `position` past at least one op, so the rounds
        // end at the log's end at the latest.
        while (out.len() as u64) < max {
            let ops = self.lock().ops_from_position(position, max);
            let Some(end) = ops.last().map(|info| info.tree_size) else {
                break;
            };
            for info in ops {
                let first = position.saturating_sub(info.global_position);
                let events = match self.decrypt_op(&info) {
                    Err(LogError::Crypto(crypto::CryptoError::Shredded { .. })) => continue,
                    other => other?,
                };
                for event in events
                    .into_iter()
                    .skip(usize::try_from(first).unwrap_or(usize::MAX))
                {
                    if out.len() as u64 >= max {
                        break;
                    }
                    out.push((info.stream, event));
                }
            }
            assert!(end > position, "a round of the global read moves forward");
            position = end;
        }
        Ok(out)
    }

    /// Storage fdatasyncs since open.
    pub fn storage_syncs(&self) -> u64 {
        self.storage.get().stats().syncs
    }

    /// Checkpoint signatures the signing key failed to make since open.
    pub fn signing_failures(&self) -> u64 {
        self.signing_failures.load(Ordering::Relaxed)
    }

    /// The committed events of `stream` with offsets in `[from, to)` for an
    /// export bundle: plaintext, commitment salt and an inclusion proof of
    /// each against one certificate (returned too). At most
    /// [`EXPORT_EVENTS_MAX`] events.
    pub fn export_events(
        &self,
        stream: u64,
        from: u64,
        to: u64,
    ) -> Result<(Vec<vellum_compliance::bundle::ExportedEvent>, String), LogError> {
        self.export_events_at(stream, from, to, None)
    }

    /// [`LocalLog::export_events`] against the certificate of tree size
    /// `size` (`None`: the latest), e.g. one a witness cosigned.
    pub fn export_events_at(
        &self,
        stream: u64,
        from: u64,
        to: u64,
        size: Option<u64>,
    ) -> Result<(Vec<vellum_compliance::bundle::ExportedEvent>, String), LogError> {
        if to <= from || to - from > EXPORT_EVENTS_MAX {
            return Err(LogError::ExportRange { from, to });
        }
        let state = self.lock();
        let certificate = match size {
            None => state.latest_certificate(),
            Some(size) => state.certificate_at_size(size),
        }
        .ok_or(LogError::NothingCertified)?;
        let size = certificate.checkpoint.size;
        let ops = state.stream_ops_from(stream, from, to - from);
        if ops.is_empty() {
            return Err(LogError::UnknownStream(stream));
        }
        let committed_to = ops
            .last()
            .map_or(0, |i| i.stream_offset + u64::from(i.event_count));
        if committed_to < to {
            return Err(LogError::ExportBeyondStream {
                stream,
                committed: committed_to,
                to,
            });
        }
        let mut out = Vec::new();
        for info in ops {
            let location = info
                .location
                .ok_or_else(|| LogError::Corrupt(format!("op {} is not durable", info.op)))?;
            let record = self.storage.get().read(location)?;
            let preimages = vellum_audit::leaf::record_leaves(&record, location.offset)
                .map_err(|e| LogError::Corrupt(e.to_string()))?;
            let events = self.decrypt_op(&info)?;
            for (event, preimage) in events.into_iter().zip(preimages) {
                if event.offset < from || event.offset >= to || event.position >= size {
                    continue;
                }
                let hashes = state
                    .tree
                    .inclusion_proof(event.position, size)
                    .map_err(|e| LogError::Corrupt(format!("inclusion proof: {e}")))?;
                let proof = InclusionProof {
                    extra: Some(preimage.encode().to_vec()),
                    index: event.position,
                    hashes,
                    checkpoint: (*certificate).clone(),
                };
                out.push(vellum_compliance::bundle::ExportedEvent {
                    stream,
                    offset: event.offset,
                    position: event.position,
                    op: info.op,
                    plaintext: event.payload.to_vec(),
                    salt: event.salt,
                    proof: proof.encode(),
                });
            }
        }
        // An older certificate may not cover the whole range.
        if out.len() as u64 != to - from {
            let offset = from + out.len() as u64;
            return Err(LogError::NotCertifiedYet { stream, offset });
        }
        Ok((out, certificate.encode()))
    }

    /// Up to `max` access-trail events from stream offset `from`, only
    /// those at global positions below `end` (parsed, with positions), and
    /// the offset the next page starts at (`None`: no more below `end`).
    /// Memory is one page, whatever the trail's length.
    pub fn trail_page(
        &self,
        from: u64,
        end: u64,
        max: u64,
    ) -> Result<(TrailEvents, Option<u64>), LogError> {
        let stream = vellum_compliance::trail::ACCESS_TRAIL_STREAM;
        let page = match self.read(stream, from, max.clamp(1, READ_EVENTS_MAX)) {
            Ok(page) => page,
            Err(LogError::UnknownStream(_)) => return Ok((Vec::new(), None)),
            Err(other) => return Err(other),
        };
        let mut out = Vec::with_capacity(page.len());
        for event in page.iter().take_while(|e| e.position < end) {
            let parsed = vellum_compliance::trail::AccessEvent::from_payload(&event.payload)
                .map_err(|e| {
                    LogError::Corrupt(format!(
                        "access-trail event at position {} does not parse: {e}",
                        event.position
                    ))
                })?;
            out.push((parsed, event.position));
        }
        let next = match page.last() {
            Some(last) if out.len() == page.len() => Some(last.offset + 1),
            _ => None,
        };
        Ok((out, next))
    }

    /// Every committed access-trail event with its global position, read
    /// a page at a time (tests and small trails; exports page themselves).
    pub fn trail_events(&self) -> Result<TrailEvents, LogError> {
        let mut out = Vec::new();
        let mut from = Some(0);
        while let Some(offset) = from {
            let (page, next) = self.trail_page(offset, u64::MAX, READ_EVENTS_MAX)?;
            out.extend(page);
            from = next;
        }
        Ok(out)
    }

    /// This replica's checkpoint signer (it also signs export manifests).
    pub fn signer(&self) -> &dyn NoteSigner {
        self.signer.as_ref()
    }

    /// Committed events (the position the next committed event will get).
    pub fn committed_events(&self) -> u64 {
        self.lock().committed_events()
    }

    /// Projects the access-trail events among `batch`'s event rows into
    /// access rows (decrypted here: the indexer has no keys). A trail event
    /// that cannot be read is logged and left out; `vellum verify` reports
    /// the missing row.
    fn add_access_rows(&self, state: &LogState, batch: &mut crate::index::IndexBatch) {
        self.add_access_rows_with(&self.storage.get(), state, batch);
    }

    /// [`LocalLog::add_access_rows`] through a storage borrow the caller holds.
    fn add_access_rows_with(
        &self,
        storage: &Storage,
        state: &LogState,
        batch: &mut crate::index::IndexBatch,
    ) {
        let trail = vellum_compliance::trail::ACCESS_TRAIL_STREAM;
        let mut ops: Vec<u64> = batch
            .events
            .iter()
            .filter(|e| e.stream == trail)
            .map(|e| e.op)
            .collect();
        ops.dedup();
        for op in ops {
            let Some(info) = state.op(op).cloned() else {
                continue;
            };
            // A backup may learn a commit before its own write of the op
            // reached the file: flush, then read.
            let decrypted = self.decrypt_op_in(storage, &info).or_else(|_| {
                storage.flush()?;
                self.decrypt_op_in(storage, &info)
            });
            match decrypted {
                Ok(events) => batch.access.extend(events.iter().map(access_row)),
                Err(error) => {
                    tracing::error!(%error, op, "cannot read an access-trail op for the index");
                }
            }
        }
    }

    /// Every event of one committed op, decrypted, with its commitment salt.
    fn decrypt_op(&self, info: &OpInfo) -> Result<Vec<ReadEvent>, LogError> {
        self.decrypt_op_in(&self.storage.get(), info)
    }

    /// [`LocalLog::decrypt_op`] through a storage borrow the caller holds.
    fn decrypt_op_in(&self, storage: &Storage, info: &OpInfo) -> Result<Vec<ReadEvent>, LogError> {
        let location = info
            .location
            .ok_or_else(|| LogError::Corrupt(format!("op {} is not durable", info.op)))?;
        let record = storage.read(location)?;
        let frames =
            record::decode_events(&record.body, record.header.event_count, location.offset)
                .map_err(|e| LogError::Corrupt(e.to_string()))?;
        let dek = self
            .keys
            .key(info.key_id)?
            .ok_or(crypto::CryptoError::KeyNotFound(info.key_id))?;
        let mut out = Vec::with_capacity(frames.len());
        for (i, frame) in (0u64..).zip(frames.iter()) {
            let aad = EventAad {
                cluster: self.cluster,
                stream: info.stream,
                stream_offset: info.stream_offset + i,
                key_id: info.key_id,
            };
            let opened = crypto::open_event(&dek, &frame.nonce, &aad, frame.sealed)?;
            out.push(ReadEvent {
                offset: info.stream_offset + i,
                position: info.global_position + i,
                payload: Bytes::copy_from_slice(&opened.payload),
                salt: opened.salt,
                enveloped: record.header.has_envelopes(),
            });
        }
        Ok(out)
    }

    /// Reads up to `max` events of `stream` from offset `from`, decrypted.
    /// Only committed events are returned.
    pub fn read(&self, stream: u64, from: u64, max: u64) -> Result<Vec<ReadEvent>, LogError> {
        let max = max.min(READ_EVENTS_MAX);
        let ops = {
            let state = self.lock();
            if state.stream_len(stream) == 0 {
                return Err(LogError::UnknownStream(stream));
            }
            state.stream_ops_from(stream, from, max)
        };
        let mut out = Vec::new();
        for info in ops {
            let location = info
                .location
                .expect("stream_ops_from returns committed ops only");
            let record = self.storage.get().read(location)?;
            let frames =
                record::decode_events(&record.body, record.header.event_count, location.offset)
                    .map_err(|e| LogError::Corrupt(e.to_string()))?;
            let dek = self
                .keys
                .key(info.key_id)?
                .ok_or(crypto::CryptoError::KeyNotFound(info.key_id))?;
            for (i, frame) in frames.iter().enumerate() {
                let offset = info.stream_offset + i as u64;
                if offset < from || out.len() as u64 >= max {
                    continue;
                }
                let aad = EventAad {
                    cluster: self.cluster,
                    stream,
                    stream_offset: offset,
                    key_id: info.key_id,
                };
                let opened = crypto::open_event(&dek, &frame.nonce, &aad, frame.sealed)?;
                out.push(ReadEvent {
                    offset,
                    position: info.global_position + i as u64,
                    payload: Bytes::copy_from_slice(&opened.payload),
                    salt: opened.salt,
                    enveloped: record.header.has_envelopes(),
                });
            }
        }
        Ok(out)
    }

    /// The inclusion proof of one event against the latest certificate, in
    /// `c2sp.org/tlog-proof@v1` form with the leaf preimage as `extra`.
    pub fn inclusion_proof(&self, stream: u64, offset: u64) -> Result<InclusionProof, LogError> {
        self.inclusion_proof_at(stream, offset, None)
    }

    /// The inclusion proof of one event against the certificate of tree
    /// size `size` (`None`: the latest), e.g. one a witness cosigned.
    pub fn inclusion_proof_at(
        &self,
        stream: u64,
        offset: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, LogError> {
        let state = self.lock();
        let (info, index_in_op) = state
            .locate(stream, offset)
            .ok_or(LogError::NoSuchEvent { stream, offset })?;
        let position = info.global_position + index_in_op;
        // In a read-only open the tail may lack its certificate (a crash lost
        // it and nothing may be written to sign it again).
        let certificate = match size {
            None => state.latest_certificate(),
            Some(size) => state.certificate_at_size(size),
        };
        let certificate = certificate
            .filter(|c| c.checkpoint.size > position)
            .ok_or(LogError::NotCertifiedYet { stream, offset })?;
        let preimage = state.leaf_preimage(&self.storage.get(), info, index_in_op)?;
        let hashes = state
            .tree
            .inclusion_proof(position, certificate.checkpoint.size)
            .map_err(|e| LogError::Corrupt(format!("inclusion proof: {e}")))?;
        Ok(InclusionProof {
            extra: Some(preimage.encode().to_vec()),
            index: position,
            hashes,
            checkpoint: (*certificate).clone(),
        })
    }

    /// A consistency proof from `old_size` to `new_size` (default: the latest certificate).
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: Option<u64>,
    ) -> Result<ConsistencyProof, LogError> {
        let state = self.lock();
        let certificate = match new_size {
            None => state.latest_certificate(),
            Some(size) => state.certificate_at_size(size),
        }
        .ok_or(LogError::NoCertificateAtSize { size: new_size })?;
        let new_size = certificate.checkpoint.size;
        if old_size == 0 || old_size > new_size {
            return Err(LogError::ConsistencyRange { old_size, new_size });
        }
        let hashes = state
            .tree
            .consistency_proof(old_size, new_size)
            .map_err(|e| LogError::Corrupt(format!("consistency proof: {e}")))?;
        Ok(ConsistencyProof {
            old_size,
            new_size,
            hashes,
            checkpoint: (*certificate).clone(),
        })
    }

    /// The hashes of tlog tile `tile` of the tree of the newest certificate,
    /// or of an older tree size it fits ([`TileId::fits`]: a partial tile
    /// of an earlier checkpoint), from the in-memory tree; the log is not
    /// read.
    pub fn tile_hashes(&self, tile: TileId) -> Result<Vec<Hash>, LogError> {
        let state = self.lock();
        let size = certified_size(&state);
        if !tile.fits(size) {
            return Err(LogError::TileBeyondCheckpoint {
                path: tile.path(),
                size,
            });
        }
        tile_from_tree(&state.tree, tile).ok_or_else(|| {
            LogError::Corrupt(format!(
                "the tree lacks hashes of {tile}, below the certified size {size}"
            ))
        })
    }

    /// The leaf preimages of tlog entry bundle `bundle` (certified as
    /// [`LocalLog::tile_hashes`] is), read from the records of the ops
    /// holding them (at most 256), each checked against the tree's leaf hash.
    pub fn entry_bundle(&self, bundle: EntryBundleId) -> Result<Vec<LeafPreimage>, LogError> {
        let tile = bundle.tile();
        let (ops, leaf_hashes, (from, to)) = {
            let state = self.lock();
            let size = certified_size(&state);
            let range = tile
                .leaf_range()
                .filter(|_| tile.fits(size))
                .ok_or_else(|| LogError::TileBeyondCheckpoint {
                    path: bundle.path(),
                    size,
                })?;
            let hashes = tile_from_tree(&state.tree, tile).ok_or_else(|| {
                LogError::Corrupt(format!("the tree lacks the leaves of {bundle}"))
            })?;
            let ops = state.ops_from_position(range.0, range.1 - range.0);
            // `ops_from_position` stops before an op not yet durable here.
            let covered = ops.last().map_or(range.0, |info| info.tree_size);
            if covered < range.1 {
                let op = state
                    .op_at_position(covered)
                    .map_or(state.commit, |info| info.op);
                return Err(LogError::NotDurable { op });
            }
            (ops, hashes, range)
        };
        let storage = self.storage.get();
        let mut preimages = Vec::with_capacity(leaf_hashes.len());
        for info in ops {
            let location = info.location.ok_or(LogError::NotDurable { op: info.op })?;
            let record = storage.read(location)?;
            let leaves = vellum_audit::leaf::record_leaves(&record, location.offset)
                .map_err(|e| LogError::Corrupt(e.to_string()))?;
            preimages.extend(
                leaves
                    .into_iter()
                    .filter(|leaf| (from..to).contains(&leaf.global_position)),
            );
        }
        check_bundle_leaves(&preimages, &leaf_hashes, from)?;
        Ok(preimages)
    }

    /// The latest commit certificate, if any op was committed.
    pub fn latest_certificate(&self) -> Option<Arc<Certificate>> {
        self.lock().latest_certificate()
    }

    /// The Merkle root at `size` (for tests and tools).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.lock().tree.root_at(size).ok()
    }

    /// The index's state as the indexer last saw it.
    pub fn index_status(&self) -> Option<IndexStatus> {
        self.indexer.as_ref().map(indexer::Indexer::status)
    }

    /// Flushes storage and the index, then closes both.
    pub fn close(mut self) -> Result<(), LogError> {
        self.storage.get().flush()?;
        // Every certificate record is durable now: its tiles can follow.
        if let Some(tiles) = self.tiles.take() {
            tiles.drain();
        }
        if !self.read_only {
            self.set_index_stalled(false);
            self.drain_index_backlog();
        }
        if let Some(indexer) = self.indexer {
            if let Some(error) = indexer.status().error {
                tracing::warn!(%error, "the audit index is behind the log; it catches up on the next open");
            }
            indexer.shutdown();
        }
        if let Some(storage) = self.storage.take() {
            storage.close()?;
        }
        Ok(())
    }
}

/// The index row of one access-trail event. A payload that is not a trail
/// event still gets a row (action "unreadable") so the row count matches
/// the log and verify can point at it.
fn access_row(event: &ReadEvent) -> crate::index::AccessRow {
    use vellum_compliance::trail::AccessEvent;
    let text = String::from_utf8_lossy(&event.payload).into_owned();
    let parsed = AccessEvent::from_payload(&event.payload).ok();
    crate::index::AccessRow {
        time_ns: parsed.as_ref().map_or(0, |e| e.time_ns),
        principal: parsed
            .as_ref()
            .map_or_else(String::new, |e| e.principal.clone()),
        role: parsed.as_ref().map_or_else(String::new, |e| e.role.clone()),
        action: parsed
            .as_ref()
            .map_or("unreadable", |e| e.action.as_str())
            .to_string(),
        stream: parsed.as_ref().and_then(|e| e.stream),
        offset_from: parsed.as_ref().and_then(|e| e.from),
        offset_to: parsed.as_ref().and_then(|e| e.to),
        purpose: parsed.as_ref().and_then(|e| e.purpose.clone()),
        outcome: parsed
            .as_ref()
            .map_or_else(|| "unreadable".to_string(), |e| e.outcome.clone()),
        remote_addr: parsed.as_ref().and_then(|e| e.remote.clone()),
        position: Some(event.position),
        payload: Some(text),
        salt: Some(event.salt),
    }
}

/// The core's configuration for this open. A data directory of a replica
/// of a larger cluster (its policy pins more than one key) may be opened
/// alone only read-only (for `read`, `proof`, tools): writing to it outside
/// the cluster would fork the log.
fn core_config_for(
    cluster: u128,
    options: &LogOptions,
    meta: &NodeMeta,
    policy: &Policy,
) -> Result<crate::vsr::Config, LogError> {
    if let Some(role) = &options.cluster {
        return cluster::core_config(cluster, role, meta.replica);
    }
    let replicas = policy.verifiers.len();
    if replicas <= 1 {
        return Ok(shell::local_config(cluster));
    }
    if !options.storage.read_only {
        return Err(LogError::ClusterReplica {
            replica: meta.replica,
            replicas,
        });
    }
    let count = u8::try_from(replicas)
        .map_err(|_| LogError::DataDir(format!("the policy pins {replicas} keys")))?;
    let role_less = cluster::ClusterRole {
        replica_count: count,
        outbox: Arc::new(cluster::NoOutbox),
        commit_wait_ms: 0,
    };
    cluster::core_config(cluster, &role_less, meta.replica)
}

/// Refuses a signing key the policy does not pin for this replica (a token
/// key under another label, a swapped key file) with an error naming both
/// keys: the core would otherwise stop on its own check of the same.
fn check_signer_pinned(
    signer: &dyn NoteSigner,
    policy: &Policy,
    replica: crate::vsr::ReplicaIndex,
    meta: &NodeMeta,
    dir: &DataDir,
) -> Result<(), LogError> {
    // The index the core signs as (0 for a one-key policy, whatever
    // vellum.json says); after a pinned rotation its newest key.
    let pinned = policy.verifier_at(usize::from(replica), u64::MAX);
    let own = signer.verifier();
    if pinned == Some(&own) {
        return Ok(());
    }
    Err(LogError::DataDir(format!(
        "the signing key ({}, {}) is not the key {} pins for replica {replica} ({})",
        crypto::describe_signer(meta.signing.as_ref(), &dir.signing_key()),
        own.to_vkey(),
        dir.policy().display(),
        pinned.map_or_else(|| "none".to_string(), |v| v.to_vkey()),
    )))
}

/// A random nonce for the core's recovery protocol (the core has no randomness).
fn recovery_nonce() -> Result<u64, LogError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| LogError::DataDir(format!("no randomness: {e}")))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Rebuilds the event id index of a freshly recovered state: every op with
/// envelopes is read and decrypted once (see `event_ids`). An op of a
/// shredded stream, or whose key this replica lacks, has no readable ids
/// (its stream takes no appends, or its reads fail alike).
fn index_event_ids(
    state: &mut LogState,
    storage: &Storage,
    keys: &KeyStore,
    cluster: u128,
) -> Result<(), LogError> {
    for info in state.enveloped_ops() {
        let Some(location) = info.location else {
            continue;
        };
        let dek = match keys.key(info.key_id) {
            Ok(Some(dek)) => dek,
            Ok(None) | Err(crypto::CryptoError::Shredded { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let record = storage.read(location)?;
        state
            .ids
            .add_record(cluster, &record, &dek, location.offset)
            .map_err(|e| LogError::Corrupt(format!("event ids of op {}: {e}", info.op)))?;
    }
    Ok(())
}

/// Checks a batch before anything is encrypted or written. With
/// `enveloped`, each event is an encoded envelope (`vellum_audit::envelope`)
/// whose payload keeps the usual limit.
fn validate_batch(stream: u64, events: &[Bytes], enveloped: bool) -> Result<(), LogError> {
    if enveloped {
        validate_envelopes(events)?;
    } else {
        validate_events(events)?;
    }
    if stream < crate::StreamId::USER_MIN {
        return Err(LogError::ReservedStream { stream });
    }
    Ok(())
}

/// [`validate_events`] for a batch of encoded envelopes.
fn validate_envelopes(events: &[Bytes]) -> Result<(), LogError> {
    if events.is_empty() {
        return Err(LogError::NoEvents);
    }
    if events.len() > EVENTS_PER_APPEND_MAX {
        return Err(LogError::TooManyEvents {
            count: events.len(),
        });
    }
    for (index, event) in events.iter().enumerate() {
        let envelope = vellum_audit::envelope::Envelope::decode(event)
            .map_err(|e| LogError::BadEnvelope(format!("event {index}: {e}")))?;
        if envelope.payload.len() > EVENT_BYTES_MAX {
            return Err(LogError::EventTooLarge {
                index,
                bytes: envelope.payload.len(),
            });
        }
    }
    Ok(())
}

/// The checks of a batch that hold for every stream, system ones included.
fn validate_events(events: &[Bytes]) -> Result<(), LogError> {
    if events.is_empty() {
        return Err(LogError::NoEvents);
    }
    if events.len() > EVENTS_PER_APPEND_MAX {
        return Err(LogError::TooManyEvents {
            count: events.len(),
        });
    }
    if let Some((i, e)) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() > EVENT_BYTES_MAX)
    {
        return Err(LogError::EventTooLarge {
            index: i,
            bytes: e.len(),
        });
    }
    Ok(())
}

/// The certificate record that follows the ops it certifies in the log.
fn certificate_record(
    cluster: u128,
    info: &OpInfo,
    certificate: &Certificate,
    time_ns: u64,
) -> Record {
    let header = OpHeader {
        parent: info.checksum,
        body_checksum: vellum_audit::hash::ZERO_HASH,
        kind: RecordKind::Certificate,
        cluster,
        view: info.view,
        op: info.op,
        commit: 0,
        client_id: 0,
        request: 0,
        timestamp_ns: time_ns,
        stream: 0,
        stream_offset: 0,
        global_position: 0,
        event_count: 0,
        body_size: 0,
        key_id: 0,
        tree_size: info.tree_size,
        flags: 0,
        version: record::VERSION,
        request_digest: record::REQUEST_DIGEST_UNKNOWN,
    };
    Record::new(header, certificate.encode().into_bytes())
}

/// Reads and parses the trust policy file.
pub fn load_policy(path: &Path) -> Result<Policy, LogError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        LogError::DataDir(format!(
            "{}: cannot read the trust policy: {e}",
            path.display()
        ))
    })?;
    Policy::parse(&text).map_err(|e| LogError::DataDir(format!("{}: {e}", path.display())))
}

/// Drops the index's projection rows and rebuilds them from the log
/// (`vellum index rebuild`). Access and verification rows are kept.
pub fn rebuild_index(
    data_dir: &Path,
    index_url: Option<&str>,
) -> Result<crate::index::IndexCounts, LogError> {
    let dir = DataDir::new(data_dir);
    let meta = NodeMeta::load(&dir).map_err(|e| LogError::DataDir(e.to_string()))?;
    let cluster = meta.cluster_id().map_err(LogError::DataDir)?;
    let target =
        IndexTarget::parse(index_url, dir.root()).map_err(|e| LogError::DataDir(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LogError::DataDir(format!("cannot start a runtime: {e}")))?;
    let index_error = |e: crate::index::IndexError| {
        LogError::DataDir(format!("audit index: {}", error_chain(&e)))
    };
    let replicas = load_policy(&dir.policy())?.verifiers.len();
    if replicas > 1 {
        return runtime.block_on(rebuild_replica_index(data_dir, &target, cluster));
    }
    // The certificates the index saw durable bound what the open may call a
    // torn tail, as in a normal open (an unreadable index gives no floor).
    let certified = runtime.block_on(async {
        let index = crate::index::Index::open(&target, cluster).await.ok()?;
        let last = index.last_commit().await.ok().flatten().map(|c| c.op);
        index.close().await;
        last
    });
    // Open the log first (keys, policy, segments) so a directory that cannot
    // be opened is refused with its index left as it was.
    let without = LogOptions {
        without_index: true,
        storage: StorageConfig {
            durable_op_floor: certified.unwrap_or(0),
            durable_certificate_floor: certified.unwrap_or(0),
            ..StorageConfig::default()
        },
        ..LogOptions::default()
    };
    LocalLog::open(data_dir, without)?.0.close()?;
    runtime.block_on(async {
        let index = crate::index::Index::open(&target, cluster)
            .await
            .map_err(index_error)?;
        index.clear().await.map_err(index_error)?;
        index.close().await;
        Ok::<(), LogError>(())
    })?;
    let options = LogOptions {
        index_url: index_url.map(str::to_string),
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(data_dir, options)?;
    if let Some(error) = log.index_status().and_then(|s| s.error) {
        return Err(LogError::DataDir(format!(
            "audit index rebuild failed: {error}"
        )));
    }
    log.close()?;
    runtime.block_on(async {
        let index = crate::index::Index::open(&target, cluster)
            .await
            .map_err(index_error)?;
        let counts = index.counts().await.map_err(index_error)?;
        index.close().await;
        Ok(counts)
    })
}

/// Rebuilds the index of a stopped replica of a larger cluster. The log is
/// opened read-only (nothing in the data directory changes but the index;
/// a running replica holds the directory's lock, so this is refused as
/// busy), and every op covered by a certificate in the log is indexed; the
/// replica indexes later ops itself when it starts.
async fn rebuild_replica_index(
    data_dir: &Path,
    target: &IndexTarget,
    cluster: u128,
) -> Result<crate::index::IndexCounts, LogError> {
    let index_error = |e: crate::index::IndexError| {
        LogError::DataDir(format!("audit index: {}", error_chain(&e)))
    };
    let options = LogOptions {
        without_index: true,
        storage: StorageConfig {
            read_only: true,
            ..StorageConfig::default()
        },
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(data_dir, options)?;
    let batches = log.certified_index_batches();
    let index = crate::index::Index::open(target, cluster)
        .await
        .map_err(index_error)?;
    let result = async {
        index.clear().await?;
        for batch in &batches {
            index.apply(batch).await?;
        }
        index.counts().await
    }
    .await;
    index.close().await;
    log.close()?;
    result.map_err(index_error)
}

/// What an append proves: offsets, positions, the commit certificate and an
/// inclusion proof (`c2sp.org/tlog-proof@v1`) of each event against it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Receipt {
    /// The stream.
    pub stream: u64,
    /// Stream offset of the first event.
    pub first_offset: u64,
    /// The stream's new length.
    pub next_offset: u64,
    /// Global position of the first event.
    pub first_position: u64,
    /// The op carrying the batch.
    pub op: u64,
    /// The commit certificate (signed checkpoint text).
    pub certificate: String,
    /// One inclusion proof per event, in batch order.
    pub proofs: Vec<String>,
    /// Each event's commitment salt, standard base64, in batch order.
    pub salts: Vec<String>,
}

/// Builds the receipt of an append: from the salts and leaf preimages
/// kept from sealing when the append carries them (and they are of the op
/// the log holds), else from one read and decryption of the op record (a
/// retry answered from the client table, or an op another replica sealed).
pub fn receipt(log: &LocalLog, appended: &Appended) -> Result<Receipt, LogError> {
    let state = log.lock();
    let info = state
        .op(appended.op)
        .ok_or_else(|| LogError::Corrupt("receipt for an unknown op".to_string()))?;
    let in_hand = appended.sealed.as_ref().filter(|sealed| {
        sealed.op == info.op
            && sealed.checksum == info.checksum
            && sealed.preimages.len() == info.event_count as usize
    });
    let (preimages, salts) = match in_hand {
        Some(sealed) => (sealed.preimages.clone(), sealed.salts.clone()),
        None => read_receipt_material(log, info)?,
    };
    let size = appended.certificate.checkpoint.size;
    let mut proofs = Vec::with_capacity(preimages.len());
    for (i, preimage) in (0u64..).zip(&preimages) {
        let hashes = state
            .tree
            .inclusion_proof(appended.first_position + i, size)
            .map_err(|e| LogError::Corrupt(format!("inclusion proof: {e}")))?;
        let proof = InclusionProof {
            extra: Some(preimage.encode().to_vec()),
            index: appended.first_position + i,
            hashes,
            checkpoint: (*appended.certificate).clone(),
        };
        proofs.push(proof.encode());
    }
    Ok(Receipt {
        stream: appended.stream,
        first_offset: appended.first_offset,
        next_offset: appended.next_offset,
        first_position: appended.first_position,
        op: appended.op,
        certificate: appended.certificate.encode(),
        proofs,
        salts: salts.iter().map(|salt| BASE64.encode(salt)).collect(),
    })
}

/// The leaf preimages and salts of a durable op, read back from its record.
fn read_receipt_material(
    log: &LocalLog,
    info: &OpInfo,
) -> Result<(Vec<vellum_audit::leaf::LeafPreimage>, Vec<[u8; 32]>), LogError> {
    let location = info
        .location
        .ok_or_else(|| LogError::Corrupt("receipt for an op that is not durable".to_string()))?;
    // One read of the op record gives every event's leaf preimage.
    let record = log.storage.get().read(location)?;
    let preimages = vellum_audit::leaf::record_leaves(&record, location.offset)
        .map_err(|e| LogError::Corrupt(e.to_string()))?;
    // The salts come from the sealed events themselves, so the receipt ties
    // each proof to the payload: commitment = SHA-256(tag || salt || payload).
    let salts = log.decrypt_op(info)?.iter().map(|e| e.salt).collect();
    Ok((preimages, salts))
}
