//! What the client API needs from the replica it runs beside. The server
//! only talks to this trait, so it is tested against a fake and the real
//! replica (`crate::replica`) implements it. Every method may block (disk,
//! waiting for a commit): the server calls them on blocking threads.
//!
//! Each operation has its own error type ([`AppendError`], [`ReadError`],
//! [`ProofError`], [`ExportError`], [`TrailError`], [`TlogError`]) whose variants carry
//! typed fields; a message is only their `Display`. Faults of the replica
//! itself are [`InternalFault`] in every one of them (500, never a 4xx), and
//! states where retrying is safe are [`Unavailable`] (503).

use bytes::Bytes;

use vellum_audit::hash::Hash;
use vellum_audit::leaf::LeafPreimage;
use vellum_audit::tiles::{EntryBundleId, TileId};
use vellum_compliance::custody::{CustodyAction, CustodyRefusal};
use vellum_compliance::trail::AccessEvent;

use crate::api::{AppendReceipt, ConsistencyAnswer, Health, LogEvent};

/// A fault inside this replica, never the caller's doing: the server answers
/// 500 (`storage`) for every one, whatever operation met it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} failed on this replica: {detail}")]
pub struct InternalFault {
    /// What failed.
    pub kind: FaultKind,
    /// What the failing layer said, for the log and the operator only:
    /// nothing maps or branches on it.
    pub detail: String,
}

impl InternalFault {
    /// A fault of `kind`, described by `detail`.
    pub fn new(kind: FaultKind, detail: impl std::fmt::Display) -> InternalFault {
        InternalFault {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// Which part of the replica failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FaultKind {
    /// Storage (read, write, sync) or a poisoned log handle.
    #[error("storage")]
    Storage,
    /// The key store or encryption.
    #[error("encryption")]
    Crypto,
    /// The operating system's random source.
    #[error("the random source")]
    Randomness,
    /// The log contradicts itself.
    #[error("the log's consistency")]
    Corruption,
    /// Building or signing an export bundle from the replica's own log.
    #[error("building the export bundle")]
    Bundle,
    /// The log refused a request the replica built itself, or answered
    /// an operation with an outcome it cannot have: a bug in the replica.
    #[error("the replica's own call to its log")]
    Unexpected,
}

/// Why the node could not serve a call now, through no fault of the caller
/// and without a fault of its own: the server answers 503 (`unavailable`),
/// and retrying elsewhere or later is safe (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// This replica is not the primary (the server forwards requests a
    /// backup gets; this answers one that lost the primacy meanwhile).
    #[error("replica {replica} is not the primary (primary is {primary:?})")]
    NotPrimary {
        /// This replica.
        replica: u8,
        /// The primary it believes in, if in normal status.
        primary: Option<u8>,
    },
    /// The primary's request queue is full.
    #[error("the primary's request queue is full")]
    QueueFull,
    /// The log is open read-only.
    #[error("the log is open read-only")]
    ReadOnly,
    /// An event is committed but not yet written or certified here.
    #[error("op {op} is committed but not durable on this replica yet")]
    NotDurable {
        /// The op.
        op: u64,
    },
    /// Too many access-trail events wait for the next batch.
    #[error("{queued} access-trail events are already waiting")]
    TrailQueueFull {
        /// The bound that was reached.
        queued: usize,
    },
    /// The access-trail batch did not commit within the wait bound.
    #[error("the access could not be recorded in the trail within {waited_ms} ms")]
    TrailTimeout {
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// A backup could not get its access-trail records committed through
    /// the primary (no primary known, not reachable, or it refused).
    #[error("the primary did not confirm the access-trail record: {detail}")]
    TrailRelay {
        /// What went wrong (for humans only).
        detail: String,
    },
    /// The committed prefix this replica serves reads from did not reach
    /// the position the caller asked for within the wait bound.
    #[error(
        "this replica's committed prefix ends at position {served}, the request asked for at least {asked} (waited {waited_ms} ms)"
    )]
    PositionNotReached {
        /// The caller's `min_position`.
        asked: u64,
        /// The end of the prefix this replica serves.
        served: u64,
        /// How long the request waited.
        waited_ms: u64,
    },
    /// The data directory is busy or not usable right now.
    #[error("the data directory is not usable: {detail}")]
    DataDir {
        /// What the log said (for humans only).
        detail: String,
    },
}

/// Why an append failed. [`AppendError::Indeterminate`] is the one outcome
/// after which the batch may or may not have been written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The stream is reserved for vellum's system streams: 422 `refused`.
    #[error(
        "stream {stream} is reserved for vellum's system streams (user streams start at {})",
        crate::StreamId::USER_MIN
    )]
    ReservedStream {
        /// The stream.
        stream: u64,
    },
    /// The batch does not fit the log's limits: 422 `refused`.
    #[error("{0}")]
    Batch(BatchRefusal),
    /// The request number is older than the session's latest: 422 `refused`.
    #[error("request {request} is older than the session's latest request {latest}")]
    StaleRequest {
        /// The refused request number.
        request: u64,
        /// The session's latest request number.
        latest: u64,
    },
    /// The stream's length was not the expected offset; nothing was
    /// written: 409 `wrong_expected_offset`.
    #[error("stream {stream} has {actual} events, the request expected {expected}")]
    WrongExpectedOffset {
        /// The stream.
        stream: u64,
        /// What the caller expected.
        expected: u64,
        /// The stream's length.
        actual: u64,
    },
    /// The stream was shredded (or a shred of it is being committed):
    /// nothing was written: 410 `shredded`.
    #[error("{0}")]
    Shredded(Shredded),
    /// The idempotency key (client session, request number) already names
    /// a different request; nothing was written, retrying will not help:
    /// 422 `idempotency_key_reused`.
    #[error(
        "idempotency key reused: request number {request} of this client session already names a different request (another stream, expected offset or events); nothing was written to stream {stream}"
    )]
    IdempotencyKeyReused {
        /// The stream of the refused request.
        stream: u64,
        /// The reused request number.
        request: u64,
    },
    /// An event id is already on the stream (at `offset`) or repeated in
    /// the batch (at index `first`), and the batch is not a resend of the
    /// op holding it; nothing was written: 409 `duplicate_event_id`.
    #[error(
        "{}",
        crate::log::duplicate_event_id_text(*.stream, *.index, .id, *.offset, *.first)
    )]
    DuplicateEventId {
        /// The stream.
        stream: u64,
        /// The batch index of the event.
        index: usize,
        /// The id, canonical UUID text.
        id: String,
        /// The offset of the stored event with that id.
        offset: Option<u64>,
        /// The earlier batch index with that id.
        first: Option<usize>,
    },
    /// An event is not a valid envelope: 422 `invalid_envelope`.
    #[error("invalid envelope: {detail}")]
    InvalidEnvelope {
        /// What is wrong, and where.
        detail: String,
    },
    /// Not served now; nothing was written: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The outcome is unknown (view change, timeout): retry with the same
    /// key: 503 `indeterminate`.
    #[error("outcome unknown: {reason}; retry with the same idempotency key")]
    Indeterminate {
        /// What made it unknown (for humans only).
        reason: String,
    },
    /// A fault inside the replica (storage, encryption, the random
    /// source): 500 `storage`, never a 4xx.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// How a batch breaks the log's limits (the API checks the same limits
/// first and answers 400; these reach the node only from other callers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchRefusal {
    /// No events.
    #[error("an append needs at least one event")]
    NoEvents,
    /// More events than one op holds.
    #[error("{count} events in one append; at most {max}")]
    TooManyEvents {
        /// Events in the append.
        count: usize,
        /// The most one append holds.
        max: usize,
    },
    /// An event above the size limit.
    #[error("event {index} is larger than {max} bytes")]
    EventTooLarge {
        /// Index of the event.
        index: usize,
        /// The largest event.
        max: usize,
    },
    /// The sealed batch does not fit one op.
    #[error("the batch is {bytes} bytes sealed, more than one op holds")]
    TooLarge {
        /// Sealed bytes.
        bytes: usize,
    },
}

/// Why a read of a stream or of the global log failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The stream has no committed events: 404 `not_found`.
    #[error("stream {stream} has no committed events")]
    UnknownStream {
        /// The stream.
        stream: u64,
    },
    /// The stream's data keys were destroyed: 410 `shredded`.
    #[error("{0}")]
    Shredded(Shredded),
    /// Not served now: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A fault inside the replica: 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// Why an inclusion or consistency proof could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// No committed event at that place: 404 `not_found`.
    #[error("stream {stream} has no committed event at offset {offset}")]
    NoSuchEvent {
        /// The stream.
        stream: u64,
        /// The offset.
        offset: u64,
    },
    /// The event is committed but no certificate covers it yet: 404
    /// `not_found` (ask again once the next certificate is signed).
    #[error("stream {stream} offset {offset} is not covered by a certificate yet")]
    NotCertifiedYet {
        /// The stream.
        stream: u64,
        /// The offset.
        offset: u64,
    },
    /// No certificate of that tree size (None: none at all): 422 `refused`.
    #[error("no certificate at tree size {}", size.map_or("(latest)".to_string(), |s| s.to_string()))]
    NoCertificate {
        /// The tree size asked for.
        size: Option<u64>,
    },
    /// The older tree size is 0 or beyond the newer one: 422 `refused`.
    #[error("from: tree size {from} must be between 1 and the newer tree size {to}")]
    ConsistencyRange {
        /// The older size asked for.
        from: u64,
        /// The newer size.
        to: u64,
    },
    /// Not served now: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A fault inside the replica: 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// Why an export bundle could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The stream has no committed events: 404 `not_found`.
    #[error("stream {stream} has no committed events")]
    UnknownStream {
        /// The stream.
        stream: u64,
    },
    /// The range is empty, reversed or longer than one bundle holds: 422 `refused`.
    #[error("an export covers 1 to {max} offsets, got [{from}, {to})")]
    Range {
        /// First offset asked for.
        from: u64,
        /// One past the last offset asked for.
        to: u64,
        /// The most one export covers.
        max: u64,
    },
    /// The range ends beyond the stream's committed events: 422 `refused`.
    #[error(
        "stream {stream} has {committed} committed events; an export must end at or before that (to = {to})"
    )]
    BeyondStream {
        /// The stream.
        stream: u64,
        /// Its committed events.
        committed: u64,
        /// The export's end.
        to: u64,
    },
    /// Nothing is certified yet: 422 `refused`.
    #[error("nothing is certified yet")]
    NothingCertified,
    /// The stream's data keys were destroyed: 410 `shredded`.
    #[error("{0}")]
    Shredded(Shredded),
    /// Not served now: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A fault inside the replica (also a bundle that failed to build from
    /// the replica's own log): 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// Why the access trail could not be recorded or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrailError {
    /// Not served now: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The trail op's outcome is unknown: 503 `indeterminate`.
    #[error("outcome unknown: {reason}")]
    Indeterminate {
        /// What made it unknown (for humans only).
        reason: String,
    },
    /// A fault inside the replica: 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// Why a tlog tile or entry bundle (C2SP tlog-tiles) could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    /// No tree up to the newest certificate's size has it (size 0: nothing
    /// is certified yet): 404 `not_found`.
    #[error("{path} is not in the tree of any checkpoint up to size {size}")]
    BeyondCheckpoint {
        /// The path asked for (`tile/...`).
        path: String,
        /// The newest certificate's tree size.
        size: u64,
    },
    /// Not served now: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A fault inside the replica: 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// A stream whose data keys are destroyed (crypto-shredding, P6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .position {
    Some(p) => format!("stream {} was shredded at log position {p}: its data keys are destroyed", .stream),
    None => format!("stream {} is being shredded: its data keys are being destroyed", .stream),
})]
pub struct Shredded {
    /// The stream.
    pub stream: u64,
    /// Global position of the committed shred event (None: the shred is
    /// being committed, or the keys are gone and its event not applied yet).
    pub position: Option<u64>,
}

/// A key-custody request (shred, legal hold, its release, retention) as
/// the server hands it to the node, reason already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyCall {
    /// What.
    pub action: CustodyAction,
    /// The stream.
    pub stream: u64,
    /// Why (not blank, at most `CUSTODY_REASON_BYTES_MAX` bytes).
    pub reason: String,
    /// For `retain`: the new floor in unix milliseconds.
    pub retain_until_ms: Option<u64>,
    /// Who asked.
    pub principal: String,
    /// Its role.
    pub role: String,
}

/// A committed custody event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyDone {
    /// Global position of the custody event.
    pub position: u64,
    /// The op that holds it.
    pub op: u64,
    /// For a shred: the data keys this replica destroyed.
    pub keys_destroyed: u64,
}

/// Why a custody request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustodyError {
    /// Refused by a rule (system stream, shredded, hold, retention);
    /// nothing was written: 409 (410 for a shredded stream, 422 for a
    /// system stream).
    #[error(transparent)]
    Refused(#[from] CustodyRefusal),
    /// Not served now; nothing was written: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The outcome is unknown: 503 `indeterminate` (look at the log).
    #[error("outcome unknown: {reason}")]
    Indeterminate {
        /// What made it unknown (for humans only).
        reason: String,
    },
    /// A fault inside the replica: 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// An append as the server hands it to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCall {
    /// The stream.
    pub stream: u64,
    /// The payloads; with `enveloped`, each event's encoded envelope
    /// (`vellum_audit::envelope`).
    pub events: Vec<Bytes>,
    /// The events are encoded envelopes (some event carries a field).
    pub enveloped: bool,
    /// Optimistic concurrency check.
    pub expected_offset: Option<u64>,
    /// (client session, request number); None: the node picks a fresh one.
    pub idempotency: Option<(u128, u64)>,
    /// The access-trail event of this append (its payload), stream and
    /// offsets filled in by the replica: it commits in the same atomic
    /// group as the events, in the same round. `None`: the caller records
    /// the access itself.
    pub trail: Option<Bytes>,
}

/// Who leads, as the node last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRole {
    /// This replica.
    pub replica: u8,
    /// This replica is the primary in normal status.
    pub is_primary: bool,
    /// The primary it believes in, when in normal status.
    pub primary: Option<u8>,
}

/// Most access-trail events one [`Node::trail_page`] returns: what an
/// access-trail export holds in memory at a time (a trail event is a few
/// hundred bytes, so a page is well under a MiB).
pub const TRAIL_PAGE_EVENTS_MAX: u64 = 1_000;

/// See [`Node::trail_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailSnapshot {
    /// This replica's key name (an export names it as its source).
    pub source: String,
    /// The global position the export stops before.
    pub end: u64,
}

/// See [`Node::trail_page`].
#[derive(Debug, Clone, Default)]
pub struct TrailPage {
    /// Trail events with their global positions, in trail order.
    pub events: Vec<(AccessEvent, u64)>,
    /// The stream offset the next page starts at; `None`: nothing more
    /// below `end`.
    pub next: Option<u64>,
}

/// An export as the server hands it to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCall {
    /// The stream.
    pub stream: u64,
    /// First offset.
    pub from: u64,
    /// One past the last offset.
    pub to: u64,
    /// Who asked (written into the manifest).
    pub principal: String,
    /// Why.
    pub purpose: Option<String>,
}

/// What `/metrics` shows of one outside witness the primary feeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessMetrics {
    /// The witness's key name.
    pub name: String,
    /// Gauge: the tree size of the newest kept cosignature (0: none).
    pub cosigned_size: u64,
    /// Cosignatures verified and kept since start.
    pub cosignatures: u64,
    /// Rounds that ended without a cosignature (down, refused, rejected).
    pub failures: u64,
    /// Answers this replica refused: malformed, a size above the cluster's
    /// newest certificate, or a cosignature that does not verify under the
    /// pinned key.
    pub rejected: u64,
}

/// Counters for `/metrics` (monotonic unless named as a gauge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// Gauge: committed ops.
    pub commit: u64,
    /// Gauge: highest op in the journal.
    pub op: u64,
    /// Gauge: view.
    pub view: u64,
    /// Gauge: committed events (tree size).
    pub events: u64,
    /// Replica messages sent / received / dropped (bad frame, unknown peer, full queue).
    pub messages_sent: u64,
    /// See above.
    pub messages_received: u64,
    /// See above.
    pub frames_dropped: u64,
    /// Storage fdatasyncs since start.
    pub syncs: u64,
    /// Checkpoint signatures the signing key failed to make since start.
    pub signing_failures: u64,
    /// Custody events applied by this replica, by action (from the log:
    /// every replica counts the same once caught up).
    pub shreds: u64,
    /// See above.
    pub holds: u64,
    /// See above.
    pub releases: u64,
    /// See above.
    pub retentions: u64,
    /// Custody requests this replica refused by a rule.
    pub custody_refused: u64,
    /// The outside witnesses this replica feeds (when primary).
    pub witnesses: Vec<WitnessMetrics>,
}

/// The replica as the client API sees it.
pub trait Node: Send + Sync + std::fmt::Debug + 'static {
    /// Status for `/v1/health`.
    fn health(&self) -> Health;
    /// Who leads, for routing every request; must be cheap (no waiting).
    fn role(&self) -> NodeRole {
        let health = self.health();
        NodeRole {
            replica: health.replica,
            is_primary: health.is_primary,
            primary: (health.status == "normal").then_some(health.primary),
        }
    }
    /// Appends through consensus; returns after commit with the receipt.
    fn append(&self, call: AppendCall) -> Result<AppendReceipt, AppendError>;
    /// Up to `max` committed events of `stream` from offset `from`.
    fn read_stream(&self, stream: u64, from: u64, max: u64) -> Result<Vec<LogEvent>, ReadError>;
    /// Up to `max` committed events of the global log from position `from`.
    fn read_log(&self, from: u64, max: u64) -> Result<Vec<LogEvent>, ReadError>;
    /// Committed events (the position the next event will get), for
    /// subscriptions: they poll this or wait with [`Node::wait_events`].
    fn committed_events(&self) -> u64;
    /// Blocks until more than `seen` events are committed or `timeout_ms`
    /// passes; returns the committed event count.
    fn wait_events(&self, seen: u64, timeout_ms: u64) -> u64;
    /// The `tlog-proof@v1` text of one event against the latest certificate.
    fn proof(&self, stream: u64, offset: u64) -> Result<String, ProofError>;
    /// Consistency proof from `from` to `to` (None: the latest certificate).
    fn consistency(&self, from: u64, to: Option<u64>) -> Result<ConsistencyAnswer, ProofError>;
    /// The latest certificate: (tree size, text).
    fn certificate(&self) -> Option<(u64, String)>;
    /// The hashes of tlog tile `tile` of the tree of the latest certificate,
    /// or of an older tree size it fits (a partial tile of an earlier
    /// checkpoint); from memory, without reading the log.
    fn tlog_tile(&self, tile: TileId) -> Result<Vec<Hash>, TlogError>;
    /// The leaf preimages of tlog entry bundle `bundle`, in position order,
    /// certified as for [`Node::tlog_tile`].
    fn tlog_entries(&self, bundle: EntryBundleId) -> Result<Vec<LeafPreimage>, TlogError>;
    /// Counters for `/metrics`.
    fn metrics(&self) -> NodeMetrics;
    /// An export bundle of `stream` offsets `[from, to)`, built and signed
    /// by this replica: the bundle's files (name, bytes).
    fn export_events(&self, call: ExportCall) -> Result<Vec<(String, Vec<u8>)>, ExportError>;
    /// Where an access-trail export reads up to: this replica's key name
    /// and the global position of the next event to commit now, so an
    /// export holds the trail as committed when it was asked for, however
    /// long it takes to send.
    fn trail_snapshot(&self) -> Result<TrailSnapshot, TrailError>;
    /// One page of the access trail (at most [`TRAIL_PAGE_EVENTS_MAX`]
    /// events) from stream offset `from`, only events at global positions
    /// below `end`, in trail order, with where the next page starts.
    fn trail_page(&self, from: u64, end: u64) -> Result<TrailPage, TrailError>;
    /// Records access-trail events (P7) in the replicated system stream and
    /// returns once they are committed (a read is answered only after
    /// this). Concurrent callers are batched into one op.
    fn record_access(&self, events: Vec<AccessEvent>) -> Result<(), TrailError>;
    /// The signing-key name of replica `replica` in this replica's trust
    /// policy (what its trail records name it by). Default: unknown.
    fn replica_key_name(&self, replica: u8) -> Option<String> {
        let _ = replica;
        None
    }
    /// Access-trail events of key-encryption key rotations made while this
    /// replica was stopped (`vellum keys rotate-kek`), not yet recorded;
    /// oldest first. Default: none.
    fn pending_kek_rotations(&self) -> Result<Vec<AccessEvent>, TrailError> {
        Ok(Vec::new())
    }
    /// Forgets the first `recorded` pending rotation events: their trail
    /// records are committed.
    fn kek_rotations_recorded(&self, recorded: usize) -> Result<(), TrailError> {
        let _ = recorded;
        Ok(())
    }
    /// Access-trail events (`signing_key_rotated`) of the signing-key
    /// rotations this replica made while stopped (`vellum keys
    /// rotate-signing`) whose announcement is not yet committed; oldest
    /// first. Default: none.
    fn pending_signing_rotations(&self) -> Result<Vec<AccessEvent>, TrailError> {
        Ok(Vec::new())
    }
    /// Marks the first `recorded` pending signing-key rotation events as
    /// committed.
    fn signing_rotations_recorded(&self, recorded: usize) -> Result<(), TrailError> {
        let _ = recorded;
        Ok(())
    }
    /// Whether replica `replica` may have `event` (a `signing_key_rotated`
    /// event it relayed) committed: its principal is that replica's key
    /// name, and its `detail` is a rotation of that replica that this
    /// replica's policy pins as is or accepts as the next one
    /// (`vellum_audit::key_history::check_announcement`). Default: refused.
    fn check_signing_rotation(&self, replica: u8, event: &AccessEvent) -> Result<(), String> {
        let _ = (replica, event);
        Err("this node checks no signing-key rotations".to_string())
    }
    /// Decides a key-custody request (P6) and, if allowed, commits its
    /// event in the key-custody stream; a committed shred has destroyed
    /// this replica's keys of the stream when this returns.
    fn custody(&self, call: CustodyCall) -> Result<CustodyDone, CustodyError> {
        let _ = call;
        Err(CustodyError::Internal(InternalFault::new(
            FaultKind::Unexpected,
            "this node keeps no key custody",
        )))
    }
    /// A consumer-group call (persistent subscriptions,
    /// `crate::server::groups`): the primary decides and commits group
    /// events in their system stream and leases events to consumers.
    fn group(
        &self,
        call: crate::server::groups::GroupCall,
    ) -> Result<crate::server::groups::GroupAnswer, crate::server::groups::GroupError> {
        let _ = call;
        Err(crate::server::groups::GroupError::Internal(
            InternalFault::new(FaultKind::Unexpected, "this node keeps no consumer groups"),
        ))
    }
}
