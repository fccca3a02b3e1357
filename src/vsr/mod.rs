//! The Viewstamped Replication core: one replica as a pure state machine
//! (DESIGN §2 P1/P4, §7; "Viewstamped Replication Revisited", Liskov and
//! Cowling 2012). Inputs (messages, ticks, completions of the shell's work)
//! go in; actions (sends, durable writes, replies) come out. No I/O, no
//! clock, no threads, no randomness of its own: the shell (tokio and files
//! in production, `crate::sim` in tests) executes the actions and feeds the
//! completions back. The same code runs in both.
//!
//! This file fixes the interface between the core and every shell. The
//! replica's logic lives in `replica.rs` and its helpers.

mod certify;
#[cfg(test)]
mod chaos_tests;
mod client_table;
mod journal;
mod normal;
mod recovery;
mod repair;
pub mod replica;
#[cfg(test)]
mod tests;
mod view_change;

use bytes::Bytes;
use vellum_audit::hash::Hash;
use vellum_audit::record::{OpHeader, Record};

pub use replica::Replica;

/// A replica's index in the cluster, `0..replica_count`.
pub type ReplicaIndex = u8;

/// Replicas in a cluster, at most (2f+1 with f <= 3).
pub const REPLICAS_MAX: usize = 7;

/// Static configuration of one replica. Every bound is named here.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster id (part of every header and of the checkpoint origin).
    pub cluster: u128,
    /// Replicas in the cluster: 2f+1, 1 <= n <= REPLICAS_MAX.
    pub replica_count: u8,
    /// This replica's index.
    pub replica: ReplicaIndex,
    /// Ops prepared but not yet committed, at most (the pipeline).
    pub pipeline_max: usize,
    /// Appends whose trail records one trail op carries, at most (so an
    /// atomic group holds at most this many appends and one trail op).
    pub group_appends_max: usize,
    /// Client requests queued at the primary behind a full pipeline, at most.
    pub request_queue_max: usize,
    /// Client sessions in the client table, at most.
    pub clients_max: usize,
    /// Headers carried in one DoViewChange / StartView / RecoveryResponse, at most.
    pub view_change_headers_max: usize,
    /// Ops a lagging replica asks for at once while repairing, at most.
    pub repair_requests_max: usize,
    /// Ticks between the primary's commit heartbeats.
    pub heartbeat_ticks: u64,
    /// Ticks without hearing from the primary before a backup starts a view change.
    pub view_change_timeout_ticks: u64,
    /// Ticks before a prepare is resent to backups that did not acknowledge it.
    pub prepare_retry_ticks: u64,
    /// Ticks before a repair or recovery request is resent.
    pub repair_retry_ticks: u64,
}

/// Uncommitted ops a replica of a real cluster keeps in flight, at most.
pub const CLUSTER_PIPELINE_MAX: usize = 256;

/// Ops a lagging replica of a real cluster asks its peers for at once, at
/// most (each answer is one op's record, as a prepare is).
pub const CLUSTER_REPAIR_REQUESTS_MAX: usize = 64;

impl Config {
    /// Defaults for a cluster of `replica_count` with this replica index.
    pub fn new(cluster: u128, replica_count: u8, replica: ReplicaIndex) -> Config {
        Config {
            cluster,
            replica_count,
            replica,
            pipeline_max: 32,
            group_appends_max: 256,
            request_queue_max: 256,
            clients_max: 1024,
            view_change_headers_max: 256,
            repair_requests_max: 16,
            heartbeat_ticks: 10,
            view_change_timeout_ticks: 50,
            prepare_retry_ticks: 20,
            repair_retry_ticks: 20,
        }
    }

    /// The configuration a replica of a real cluster runs with (and the
    /// simulator, so its seeds exercise the same bounds): a pipeline deep
    /// enough that 64 concurrent clients are not held to one round trip
    /// per 32 ops (each round trip is a group commit on a quorum), a
    /// request queue 64 clients never fill, and view change messages that
    /// carry every uncommitted header.
    pub fn for_cluster(cluster: u128, replica_count: u8, replica: ReplicaIndex) -> Config {
        let mut config = Config::new(cluster, replica_count, replica);
        config.pipeline_max = CLUSTER_PIPELINE_MAX;
        config.request_queue_max = 4 * CLUSTER_PIPELINE_MAX;
        config.view_change_headers_max = 2 * CLUSTER_PIPELINE_MAX;
        // A replica back from a crash catches up by repair; with 16 ops
        // asked at a time it caught up at about 700 ops/s, and the cluster
        // waited on it whenever it was needed for a quorum.
        config.repair_requests_max = CLUSTER_REPAIR_REQUESTS_MAX;
        config
    }

    /// f+1: the votes that make a quorum.
    pub fn quorum(&self) -> usize {
        usize::from(self.replica_count) / 2 + 1
    }
}

/// A client's request as the primary receives it. `events` are plaintext;
/// the core never encrypts (it has no keys and no randomness) — it asks the
/// shell to seal them with [`Action::Seal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client session (random per session, never 0).
    pub client: u128,
    /// The request number, increasing within the session. A retry reuses it.
    pub request: u64,
    /// The stream (ids below `StreamId::USER_MIN` are refused).
    pub stream: u64,
    /// Refuse unless the stream has exactly this many events.
    pub expected_offset: Option<u64>,
    /// The events, plaintext, 1..=EVENTS_PER_OP_MAX.
    pub events: Vec<Bytes>,
    /// The data key the shell computed `digest` under, and that seals the
    /// batch if it is prepared (copied into the header's `key_id`): so a
    /// retry's digest is computed under the key of the op it is compared
    /// with, on every replica. The core only copies it.
    pub key_id: u64,
    /// The shell's keyed digest of (stream, expected offset, events)
    /// (`crypto::request_digest`), kept in the op header and so in the
    /// client table. The core only compares bytes: all zero
    /// ([`DIGEST_UNKNOWN`]) means unknown and matches anything.
    pub digest: Hash,
    /// The access-trail record of this request, as a template the shell
    /// completes once the op's offsets are known. When set, the primary
    /// prepares the op inside an atomic group that a trail op (stream
    /// [`TRAIL_STREAM`], client [`TRAIL_CLIENT`]) closes: the append and
    /// its trail record commit together, in one round, or not at all.
    /// Opaque to the core.
    pub trail: Option<Bytes>,
    /// The events are encoded envelopes (`vellum_audit::envelope`): the
    /// core sets `FLAG_ENVELOPES` in the op header. Opaque otherwise.
    pub enveloped: bool,
}

/// The client session of the trail ops that close atomic groups. Reserved:
/// a request from this session is refused. The request number of such an
/// op is its op number, so it grows along the log.
pub const TRAIL_CLIENT: u128 = vellum_audit::record::TRAIL_CLIENT;
/// The system stream trail ops append to (the access trail).
pub const TRAIL_STREAM: u64 = vellum_audit::record::ACCESS_TRAIL_STREAM;

/// The request digest of a request or header that carries none.
pub const DIGEST_UNKNOWN: Hash = vellum_audit::record::REQUEST_DIGEST_UNKNOWN;

/// True when two request digests prove two different requests: both known
/// and unequal. An unknown digest (a version 1 header) matches any request.
pub fn digests_conflict(a: &Hash, b: &Hash) -> bool {
    *a != DIGEST_UNKNOWN && *b != DIGEST_UNKNOWN && a != b
}

/// What a committed request returns to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyBody {
    /// The op that carried the batch.
    pub op: u64,
    /// The view it committed in.
    pub view: u64,
    /// The stream.
    pub stream: u64,
    /// Stream offset of the first event.
    pub first_offset: u64,
    /// The stream's new length.
    pub next_offset: u64,
    /// Global position of the first event.
    pub first_position: u64,
    /// The commit certificate (signed checkpoint text, >= quorum signatures)
    /// covering the op.
    pub certificate: String,
}

/// A reply: committed, or refused before anything was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Committed on a quorum.
    Committed(ReplyBody),
    /// The stream's length was not the expected offset; nothing was written.
    WrongExpectedOffset {
        /// What the client expected.
        expected: u64,
        /// The stream's length.
        actual: u64,
    },
    /// The client session and request number name a request (committed or
    /// in flight) with another digest: the idempotency key was reused for a
    /// different request. Nothing was written; retrying will not help.
    IdempotencyKeyReused {
        /// The request number that was reused.
        request: u64,
    },
    /// Refused (bad stream, stale request number, ...); nothing was written.
    Refused(RequestRefusal),
}

/// Why the core refused a request before preparing it. Nothing was written
/// for any of them; the shell and the API map each kind to an answer (a
/// caller's mistake, or "retry" for a full queue or a lost primacy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestRefusal {
    /// Client id 0 and the trail ops' session ([`TRAIL_CLIENT`]) are reserved.
    #[error("client ids 0 and 2^128-1 are reserved")]
    ReservedClient,
    /// The stream is a system stream the request may not write.
    #[error("stream {stream} is reserved")]
    ReservedStream {
        /// The stream.
        stream: u64,
    },
    /// No events, or more than one op holds.
    #[error("{count} events, expected 1..={max}")]
    EventCount {
        /// Events in the request.
        count: usize,
        /// The most one op holds.
        max: u32,
    },
    /// One event is larger than an event may be.
    #[error("event {index} is larger than {max} bytes")]
    EventTooLarge {
        /// Index of the event in the request.
        index: usize,
        /// The largest event.
        max: usize,
    },
    /// The sealed batch would not fit one op body.
    #[error("batch of {bytes} bytes exceeds the op body limit")]
    BatchTooLarge {
        /// Sealed size of the batch.
        bytes: usize,
    },
    /// The request number is older than the session's latest one.
    #[error("request {request} is older than the session's latest request {latest}")]
    StaleRequest {
        /// The refused request number.
        request: u64,
        /// The session's latest request number.
        latest: u64,
    },
    /// The primary's request queue is full: retry later.
    #[error("request queue full")]
    QueueFull,
    /// The shell's sealed record did not match the op the core asked for
    /// (or the replica stopped being the primary meanwhile): retry.
    #[error("the sealed record does not match its op")]
    SealMismatch,
}

/// Replica-to-replica messages. Every message names the cluster, its sender
/// and the sender's view; the network layer authenticates the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Cluster id; a message of another cluster is dropped.
    pub cluster: u128,
    /// Sender.
    pub from: ReplicaIndex,
    /// The sender's view.
    pub view: u64,
    /// What it says.
    pub body: MessageBody,
}

/// The protocol's messages (VRR §4, §4.2 view change, §4.3 recovery, plus
/// repair). Names follow the paper.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "Prepare, the common message, holds its 256-byte header inline; boxing it would add an allocation to every prepare"
)]
pub enum MessageBody {
    /// Primary -> backups: an op to journal. `record.header.parent` must be
    /// the checksum of op-1's header (a backup refuses one that does not chain).
    /// `key` is wrapped key material for a stream's new data key: it travels
    /// beside the record and is stored in the key store, never in the log (P6).
    Prepare {
        record: Record,
        commit: u64,
        key: Option<Bytes>,
    },
    /// Backup -> primary: `op` (and every op before it) is durable here, and
    /// this replica computed the checkpoint (tree size, root, chain head) of
    /// op itself and signs it: `signature` is its Ed25519 signature over the
    /// checkpoint's signed-note text.
    PrepareOk {
        op: u64,
        checksum: Hash,
        signature: Vec<u8>,
    },
    /// Primary -> backups: heartbeat with the commit number and the newest
    /// certificate, so backups store certificates too.
    Commit {
        commit: u64,
        certificate: Option<String>,
    },
    /// VRR StartViewChange.
    StartViewChange,
    /// VRR DoViewChange: the sender's log suffix (every header it knows,
    /// each with what its disk holds for it), the last view in which its
    /// status was normal, its op and commit numbers, and `nack_from`: from
    /// that op up, the sender positively does not hold any op it does not
    /// list as [`Presence::Durable`] or [`Presence::Unsure`] (the nack;
    /// [`NACK_NONE`] when it nacks nothing). See `view_change.rs`.
    DoViewChange {
        log_view: u64,
        op: u64,
        commit: u64,
        nack_from: u64,
        headers: Vec<DvcHeader>,
    },
    /// VRR StartView: the new primary's log suffix and commit number.
    StartView {
        op: u64,
        commit: u64,
        headers: Vec<OpHeader>,
    },
    /// Repair: ask a peer for the op record with this number and checksum.
    RequestPrepare { op: u64, checksum: Hash },
    /// VRR Recovery with the recovering replica's nonce.
    Recovery { nonce: u64 },
    /// VRR RecoveryResponse; only the primary fills in headers. `op` is the
    /// primary's op, or another responder's durable prefix; `commit` is the
    /// responder's own. Every replica answers (only a normal primary with
    /// `is_primary`): zeros from every peer are how a replica with an empty
    /// disk learns that nothing was ever committed (a brand-new cluster).
    RecoveryResponse {
        nonce: u64,
        op: u64,
        commit: u64,
        headers: Vec<OpHeader>,
        is_primary: bool,
    },
}

/// The `nack_from` of a do_view_change whose sender nacks nothing (it
/// restarted and has not adopted a log since, so it cannot vouch for what
/// an earlier life of its disk acknowledged).
pub const NACK_NONE: u64 = u64::MAX;

/// What a do_view_change's sender holds for one header it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The record is durable here.
    Durable,
    /// The header is known, the record is not here and never was written
    /// here in this header's life: a nack (when at or above `nack_from`).
    Missing,
    /// The slot may hold the record: damaged (Faulty) or a write in
    /// flight. Never a nack: the op may have committed with this copy.
    Unsure,
}

/// One header of a do_view_change with its [`Presence`] at the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DvcHeader {
    /// The header the sender believes canonical for its op.
    pub header: OpHeader,
    /// What the sender's disk holds for it.
    pub presence: Presence,
}

/// Why the shell is asked to read a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPurpose {
    /// To send it to a peer that asked for it (repair).
    Repair { to: ReplicaIndex },
    /// To resend it to backups as primary.
    Retransmit,
}

/// What the core asks its shell to do. The shell executes actions in the
/// order given and reports completions as inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a message to one replica (best effort; may be lost).
    Send { to: ReplicaIndex, message: Message },
    /// Encrypt `events` for the op described by `header` (stream, offsets,
    /// key id chosen by the shell) and report [`Input::Sealed`].
    Seal {
        header: OpHeader,
        events: Vec<Bytes>,
        /// For a trail op closing an atomic group: the header of the op
        /// each event (a [`Request::trail`] template) records, in order, so
        /// the shell fills in stream and offsets. Empty otherwise.
        trail_for: Vec<OpHeader>,
    },
    /// Store the op record in its op's slot (and store `key` in the key
    /// store first, if any); report [`Input::WriteDone`] once it is fsynced.
    /// New ops are written in op order; a repair may fill an earlier slot
    /// (a gap, or a Faulty record, which the write replaces).
    Write { record: Record, key: Option<Bytes> },
    /// Discard every uncommitted op after `op` (a view change replaced
    /// them). Never names a committed op.
    Truncate { after_op: u64 },
    /// Read an op record; report [`Input::ReadDone`].
    Read {
        op: u64,
        checksum: Hash,
        purpose: ReadPurpose,
    },
    /// Durably store the replica's view state (its "superblock"); report
    /// [`Input::SaveDone`]. The core never sends a message that depends on
    /// this state before it is durable.
    Save { state: DurableState },
    /// Sign `body` (this replica's checkpoint after `op`, the signed-note
    /// body) with this replica's signing key and report [`Input::Signed`].
    /// The key may live in a token (I/O), so signing is the shell's work,
    /// never the core's: the core computes what to sign and waits.
    Sign { op: u64, body: String },
    /// `op` committed: store its certificate in the log and the index. The
    /// certificate passes typed and shared: every op of a batch names the
    /// same one, parsed once.
    Committed {
        op: u64,
        certificate: std::sync::Arc<vellum_audit::checkpoint::Certificate>,
    },
    /// Answer a client (the primary, after commit; any replica for a refusal
    /// or a retry answered from the client table).
    Reply {
        client: u128,
        request: u64,
        reply: Reply,
    },
}

/// The state a replica keeps beside its log so that it never goes back in
/// view across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurableState {
    /// The highest view this replica took part in.
    pub view: u64,
    /// The last view in which it was in normal status.
    pub log_view: u64,
    /// Its commit number (a lower bound: the log is the truth).
    pub commit: u64,
}

/// Inputs to the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// One unit of time passed.
    Tick,
    /// A message from a peer.
    Message(Message),
    /// A client request delivered to this replica.
    Request(Request),
    /// The shell sealed the events of an op: the complete record.
    Sealed { record: Record, key: Option<Bytes> },
    /// These records are durable: each `(op, checksum)` was fsynced. A
    /// shell reports the writes one group commit made durable together, so
    /// that a backup signs one prepare_ok (and a one-replica core one
    /// certificate) per batch, not per op.
    WriteDone { writes: Vec<(u64, Hash)> },
    /// A read finished; `None` when the record is missing or corrupt.
    ReadDone {
        op: u64,
        purpose: ReadPurpose,
        record: Option<Record>,
    },
    /// The durable state was saved.
    SaveDone { state: DurableState },
    /// The shell signed (`Some`) or could not sign (`None`: the signer
    /// failed) the checkpoint body of an [`Action::Sign`]. The core uses
    /// the signature only while its checkpoint after `op` is still `body`.
    Signed {
        op: u64,
        body: String,
        signature: Option<Vec<u8>>,
    },
}

/// What a replica recovered from its own disk when it starts.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The saved view state (default when the disk is new or wiped).
    pub state: DurableState,
    /// Every op header found in the log, in op order, with whether its
    /// record is intact. A damaged entry is `Faulty`: never treated as
    /// absent (protocol-aware recovery), repaired from peers.
    pub journal: Vec<JournalEntry>,
    /// Certificates found in the log: (op, text).
    pub certificates: Vec<(u64, String)>,
}

/// One op as the recovering replica's disk holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// An intact record (header and body checked): its header and leaf hashes.
    Intact { header: OpHeader, leaves: Vec<Hash> },
    /// The slot for `op` exists but its record is damaged or torn; the
    /// header may be unknown.
    Faulty { op: u64, header: Option<OpHeader> },
}

/// A replica's status (VRR §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Processing requests (primary) or prepares (backup).
    Normal,
    /// Taking part in a view change.
    ViewChange,
    /// Restarted (or wiped) and not yet caught up: it never votes.
    Recovering,
}

/// Deliberately broken behaviours, to prove the simulator's checkers bite.
/// Only built with the `sim-broken` feature; always `None` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Broken {
    /// Correct behaviour.
    #[default]
    None,
    /// The primary commits an op without waiting for a quorum of prepare_ok.
    CommitWithoutQuorum,
    /// A backup sends prepare_ok before its write is durable.
    AckBeforeFsync,
    /// The client table is ignored: a retried request executes again.
    SkipClientTable,
    /// A backup accepts a prepare whose parent does not chain.
    AcceptUnchained,
    /// The primary certifies an op inside an atomic group (so an append
    /// could commit without its trail record).
    CertifyInsideGroup,
}
